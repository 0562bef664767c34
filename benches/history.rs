//! The embedded store against history size: what stats, claims, submits and
//! pruning cost when STEP_TRACKER holds 0, 1 M or 10 M finished steps.
//!
//! For each size `N` (`FLEET_Q_BENCH_HISTORY`, default `0,1000000`; BENCHMARKS.md
//! uses `0,1000000,10000000`), a fresh SQLite file gets `N` finished steps (98 %
//! completed, 2 % failed, five step types, ~100-byte payloads, finished one to
//! three days ago), written straight into the table and counted once by the
//! store's STEP_TOTALS backfill, as an upgrade would. Then, through the real store:
//!
//! - `stats`: `queue_stats` + `pods_list`, which is what one uncached
//!   `/admin/queue` or `/metrics` refresh costs (p50, p99 over 40 calls);
//! - `claim+complete`: 20,000 pending steps claimed and completed 100 at a time;
//! - `pipeline`: insert + claim + complete in batches of 100;
//! - `submit`: one-step inserts, one after another (p50, p99 of 2,000);
//! - `rss`: peak RSS (VmHWM) of a `fleet-q serve` process on that file after 40
//!   `/admin/queue` and `/metrics` calls (each past the 2 s cache) and 2,000 `noop`
//!   steps run (needs `cargo build --release` first);
//! - `before`: the full `GROUP BY` stats ran before STEP_TOTALS (p50, max of 5);
//! - `prune`: every history row deleted in chunks of 500
//!   (`FLEET_Q_BENCH_PRUNE_BATCH`) back to back, as the
//!   leader's pruner does when behind: rows/s and chunk p50/p99, with one-step
//!   submits, one per millisecond, running at the same time (their p99, beside
//!   the p99 of the same paced submits with no pruning).
//!
//! With `FLEET_Q_BENCH_STEADY=RATE,SECONDS` it runs only `steady`: a pod with a
//! 60 s retention finishing `RATE` steps/s for `SECONDS`, sampling the table size
//! every 5 s (the bound: 60 s × rate + one prune chunk).
//!
//! Run: `cargo build --release && cargo bench --bench history`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_q::storage::sqlite::{SqliteOptions, SqliteStore};
use fleet_q_actors::{NewStep, PruneParams, Store};

#[path = "support/store.rs"]
mod support;
use support::{claim_complete, noop_steps};
#[path = "support/history.rs"]
mod history;
use history::{fill, spawn_pod};

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Writes `n` finished steps, finished one to three days ago, into the file's
/// STEP_TRACKER, then drops STEP_TOTALS so the store's next `schema_init`
/// counts them (the upgrade path).
/// Peak RSS in KiB of a pod serving `db`, after stats calls and 2,000 steps.
fn pod_rss(db: &Path, dir: &Path) -> Option<u64> {
    let (mut child, port, c) = spawn_pod(db, dir, &[])?;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    for i in 0..20 {
        let _ = c.get(url("/admin/queue")).send();
        let _ = c.get(url("/metrics")).send();
        if i % 5 == 4 {
            std::thread::sleep(Duration::from_millis(2100)); // past the 2 s stats cache
        }
    }
    for _ in 0..2 {
        let body = serde_json::json!({"steps": (0..1000).map(|i| serde_json::json!({"type": "noop", "args": {"i": i}})).collect::<Vec<_>>()});
        let _ = c.post(url("/submit/batch")).json(&body).send();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v: serde_json::Value = c
            .get(url("/admin/queue"))
            .send()
            .ok()
            .and_then(|r| r.json().ok())
            .unwrap_or_default();
        let live =
            v["pending_steps"].as_u64().unwrap_or(1) + v["claimed_steps"].as_u64().unwrap_or(1);
        if live == 0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500)); // poll interval
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok());
    let _ = child.kill();
    let _ = child.wait();
    hwm
}

fn run(n: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("history.db");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    {
        let s = SqliteStore::open(&db, SqliteOptions::default()).expect("open");
        rt.block_on(s.schema_init()).expect("schema");
    }
    let t = Instant::now();
    fill(&db, n);
    let filled = t.elapsed();
    let store = Arc::new(SqliteStore::open(&db, SqliteOptions::default()).expect("open"));
    let t = Instant::now();
    rt.block_on(store.schema_init()).expect("schema + backfill");
    let backfill = t.elapsed();
    let stats = rt.block_on(store.queue_stats()).expect("stats");
    assert_eq!(stats.counts.total(), n as u64, "{stats:?}");

    // Stats, as an uncached /admin/queue or /metrics refresh.
    let mut lat = Vec::new();
    for _ in 0..40 {
        let t = Instant::now();
        rt.block_on(async {
            store.queue_stats().await.expect("stats");
            store.pods_list().await.expect("pods");
        });
        lat.push(ms(t.elapsed()));
    }
    let (stats_p50, stats_p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    // The statement stats ran before STEP_TOTALS (a GROUP BY over every row), for
    // the before/after table.
    let legacy = {
        let c = rusqlite::Connection::open(&db).expect("open");
        let mut v = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let mut st = c
                .prepare_cached(
                    "SELECT status, step_type, priority, COUNT(*), \
                     MIN(CASE WHEN status = 'pending' AND run_at <= ?1 THEN run_at END) \
                     FROM STEP_TRACKER GROUP BY status, step_type, priority",
                )
                .expect("prepare");
            let rows: Vec<i64> = st
                .query_map([0i64], |r| r.get(3))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            assert!(rows.iter().sum::<i64>() as usize == n);
            v.push(ms(t.elapsed()));
        }
        v
    };
    let (legacy_p50, legacy_max) = (pct(&mut legacy.clone(), 0.5), pct(&mut legacy.clone(), 1.0));

    // Claim + complete 20,000 pending steps, 100 at a time.
    rt.block_on(async {
        for _ in 0..20 {
            store.steps_insert(noop_steps(1000)).await.expect("insert");
        }
    });
    let t = Instant::now();
    let mut done = 0;
    while done < 20_000 {
        let k = rt.block_on(claim_complete(&store, 100));
        assert!(k > 0);
        done += k;
    }
    let claim_rate = done as f64 / t.elapsed().as_secs_f64();

    // Insert + claim + complete, batches of 100.
    let batches: Vec<Vec<NewStep>> = (0..100).map(|_| noop_steps(100)).collect();
    let t = Instant::now();
    rt.block_on(async {
        for b in batches {
            store.steps_insert(b).await.expect("insert");
            assert_eq!(claim_complete(&store, 100).await, 100);
        }
    });
    let pipeline_rate = 10_000.0 / t.elapsed().as_secs_f64();

    // One-step submits.
    let submit = |k: usize| {
        let mut v = Vec::with_capacity(k);
        let one: Vec<Vec<NewStep>> = (0..k).map(|_| noop_steps(1)).collect();
        for s in one {
            let t = Instant::now();
            rt.block_on(store.steps_insert(s)).expect("insert");
            v.push(ms(t.elapsed()));
        }
        v
    };
    let mut idle = submit(2000);
    let (submit_p50, submit_p99) = (pct(&mut idle, 0.5), pct(&mut idle, 0.99));

    // The same submits at the pace they keep while pruning runs: the baseline
    // for "submit p99 while pruning" (a paced submit finds the writer parked,
    // which costs more than a back-to-back one).
    let mut paced = paced_submits(&store, rt.handle(), &AtomicBool::new(false), 2000);
    let paced_p99 = pct(&mut paced, 0.99);

    let rss = pod_rss(&db, dir.path());

    // Prune everything old, in chunks, while submits go on.
    let stop = Arc::new(AtomicBool::new(false));
    let submitter = {
        let (store, stop) = (store.clone(), stop.clone());
        let handle = rt.handle().clone();
        std::thread::spawn(move || paced_submits(&store, &handle, &stop, usize::MAX))
    };
    let chunk: u32 = std::env::var("FLEET_Q_BENCH_PRUNE_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    // One prune chunk: history is a day or more old, the bench's own steps new.
    let prune_chunk = |limit: u32| {
        rt.block_on(store.steps_prune(PruneParams {
            retention: Duration::from_secs(3600),
            limit,
        }))
        .expect("prune")
    };
    let mut chunks = Vec::new();
    let t = Instant::now();
    let mut pruned = 0u64;
    loop {
        let c0 = Instant::now();
        let k = prune_chunk(chunk);
        chunks.push(ms(c0.elapsed()));
        pruned += k;
        if k < u64::from(chunk) {
            break;
        }
    }
    let prune_time = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    // What a caught-up pruner costs the writer each time it looks.
    let mut idle_prune: Vec<f64> = (0..10)
        .map(|_| {
            let c0 = Instant::now();
            assert_eq!(prune_chunk(chunk), 0);
            ms(c0.elapsed())
        })
        .collect();
    let mut during = submitter.join().expect("submitter");
    assert_eq!(pruned, n as u64, "every history row is pruned");
    let prune_rate = pruned as f64 / prune_time.as_secs_f64().max(1e-9);
    let after = rt.block_on(store.queue_stats()).expect("stats");
    // The bench's own steps remain: claimed, pipelined, submitted, and the 2,000
    // the pod ran when it measured RSS.
    let pod_steps = if rss.is_some() { 2000 } else { 0 };
    assert_eq!(
        after.counts.total(),
        20_000 + 10_000 + 2000 + paced.len() as u64 + pod_steps + during.len() as u64,
        "stats after pruning: {after:?}"
    );

    println!(
        "history {n:>9}: fill {:.1}s, backfill {:.2}s | stats p50 {stats_p50:.2} ms p99 {stats_p99:.2} ms \
         (before: full GROUP BY p50 {legacy_p50:.1} ms max {legacy_max:.1} ms) \
         | claim+complete {claim_rate:.0}/s | pipeline(100) {pipeline_rate:.0}/s \
         | submit p50 {submit_p50:.3} ms p99 {submit_p99:.3} ms \
         | rss {} | prune ({chunk}-row chunks) {prune_rate:.0} rows/s, chunk p50 {:.2} ms p99 {:.2} ms (p90 {:.2}, last {:.2}), caught-up look p50 {:.2} ms, \
         submit p99 while pruning {:.3} ms (p50 {:.3}, p90 {:.3}, p999 {:.3}; {} submits; paced, no pruning: p99 {paced_p99:.3} ms)",
        filled.as_secs_f64(),
        backfill.as_secs_f64(),
        rss.map_or("n/a (cargo build --release first)".to_string(), |k| format!(
            "{:.1} MiB",
            k as f64 / 1024.0
        )),
        pct(&mut chunks, 0.5),
        pct(&mut chunks, 0.99),
        pct(&mut chunks, 0.9),
        chunks.last().copied().unwrap_or_default(),
        pct(&mut idle_prune, 0.5),
        pct(&mut during, 0.99),
        pct(&mut during, 0.5),
        pct(&mut during, 0.9),
        pct(&mut during, 0.999),
        during.len(),
    );
}

/// One-step submits, each followed by a millisecond's pause (a steady trickle),
/// until `stop` or `max` of them: their latencies in ms.
fn paced_submits(
    store: &SqliteStore,
    handle: &tokio::runtime::Handle,
    stop: &AtomicBool,
    max: usize,
) -> Vec<f64> {
    let mut v = Vec::new();
    while !stop.load(Ordering::Relaxed) && v.len() < max {
        let s = noop_steps(1);
        let t = Instant::now();
        handle.block_on(store.steps_insert(s)).expect("insert");
        v.push(ms(t.elapsed()));
        std::thread::sleep(Duration::from_millis(1));
    }
    v
}

/// A pod with a 60 s retention (the minimum) runs `rate` `noop` steps/s for
/// `secs`; the table's finished and live rows are sampled every 5 s. Prints the
/// most finished rows held after the first retention period and the bound they
/// must stay under.
fn steady(rate: u64, secs: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("steady.db");
    let Some((mut child, port, c)) = spawn_pod(
        &db,
        dir.path(),
        &[
            ("FLEET_Q_RETENTION_SECONDS", "60"),
            ("FLEET_Q_MAX_PARALLELISM", "500"),
            ("FLEET_Q_CLAIM_BATCH_SIZE", "500"),
        ],
    ) else {
        println!("steady: n/a (cargo build --release first)");
        return;
    };
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let per_tick = (rate / 10).max(1);
    let body = serde_json::json!({"steps": (0..per_tick).map(|i| serde_json::json!({"type": "noop", "args": {"i": i}})).collect::<Vec<_>>()});
    let t0 = Instant::now();
    let mut next_sample = Duration::from_secs(5);
    let mut samples = Vec::new();
    let mut tick = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) {
        // Paced by the clock: 10 batches a second.
        let due = Duration::from_millis(100 * tick);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        tick += 1;
        let r = c
            .post(url("/submit/batch"))
            .json(&body)
            .send()
            .expect("submit");
        assert!(r.status().is_success(), "{}", r.status());
        if t0.elapsed() >= next_sample {
            next_sample += Duration::from_secs(5);
            let v: serde_json::Value = c
                .get(url("/admin/queue"))
                .send()
                .and_then(|r| r.json())
                .expect("queue");
            let count =
                |keys: &[&str]| -> u64 { keys.iter().map(|k| v[*k].as_u64().unwrap_or(0)).sum() };
            let finished = count(&["completed_steps", "failed_steps", "cancelled_steps"]);
            let live = count(&["pending_steps", "claimed_steps"]);
            samples.push((t0.elapsed().as_secs(), finished, live));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let after: Vec<u64> = samples
        .iter()
        .filter(|(t, _, _)| *t >= 75)
        .map(|(_, n, _)| *n)
        .collect();
    let max = after.iter().copied().max().unwrap_or(0);
    let submitted = tick * per_tick;
    println!(
        "steady: {rate} steps/s for {secs} s ({submitted} submitted), retention 60 s: \
         most finished rows held after 75 s {max}; bound 60 x rate + one chunk = {} rows; samples (s, finished, live) {samples:?}",
        60 * rate + 500
    );
}

fn main() {
    if let Some((rate, secs)) = std::env::var("FLEET_Q_BENCH_STEADY").ok().and_then(|v| {
        let (r, s) = v.split_once(',')?;
        Some((r.trim().parse().ok()?, s.trim().parse().ok()?))
    }) {
        steady(rate, secs);
        return;
    }
    // `cargo bench` passes `--bench`; a filter argument other than ours is ignored.
    let sizes: Vec<usize> = std::env::var("FLEET_Q_BENCH_HISTORY")
        .unwrap_or_else(|_| "0,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for n in sizes {
        run(n);
    }
}
