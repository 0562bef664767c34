//! Dashboard and search pages against history size: how long each page of a
//! real `fleet-q serve` takes to answer when STEP_TRACKER holds `N` finished
//! steps (`FLEET_Q_BENCH_HISTORY`, default `1000000`; BENCHMARKS.md uses
//! `10000000`), plus 1,000 pending and 200 failed steps of its own.
//!
//! Each page is fetched 20 times over loopback (p50, p99, max in ms); the
//! Overview's statistics are cached for 2 s, so its first fetch after the cache
//! expired is reported apart (`uncached`). The search pages cover: the newest
//! page, a type filter, a text filter that matches nothing (the worst case: one
//! full window of 10,000 rows read), a text filter that matches, status
//! `failed`, an old created range (the id range narrows it), an id, and a
//! bulk-retry dry run by filter (up to 20,000 candidate rows).
//!
//! Run: `cargo build --release && cargo bench --bench dashboard`.

use std::time::{Duration, Instant};

#[path = "support/history.rs"]
mod history;
use history::{fill, spawn_pod};

use fleet_q::storage::sqlite::{SqliteOptions, SqliteStore};
use fleet_q_actors::Store;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let sizes: Vec<usize> = std::env::var("FLEET_Q_BENCH_HISTORY")
        .unwrap_or_else(|_| "1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for n in sizes {
        run(n);
    }
}

fn run(n: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("history.db");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    {
        let s = SqliteStore::open(&db, SqliteOptions::default()).expect("open");
        rt.block_on(s.schema_init()).expect("schema");
    }
    let t = Instant::now();
    fill(&db, n);
    {
        let s = SqliteStore::open(&db, SqliteOptions::default()).expect("open");
        rt.block_on(s.schema_init()).expect("backfill");
    }
    eprintln!("filled {n} rows in {:.0?}", t.elapsed());
    // A pod that runs nothing (no handler for these types), so the pending
    // and failed steps stay as submitted.
    let Some((mut child, port, c)) = spawn_pod(&db, dir.path(), &[]) else {
        eprintln!("SKIPPED: build the release binary first (cargo build --release)");
        return;
    };
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let steps: Vec<serde_json::Value> = (0..1000)
        .map(|i| serde_json::json!({"type": "later", "args": {"i": i}, "delay_seconds": 86400}))
        .collect();
    c.post(url("/submit/batch"))
        .json(&serde_json::json!({ "steps": steps }))
        .send()
        .expect("submit");
    let failing: Vec<serde_json::Value> = (0..200)
        .map(|i| serde_json::json!({"type": "unregistered", "args": {"i": i}, "max_retries": 0}))
        .collect();
    c.post(url("/submit/batch"))
        .json(&serde_json::json!({ "steps": failing }))
        .send()
        .expect("submit");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v: serde_json::Value = c.get(url("/admin/queue")).send().unwrap().json().unwrap();
        if v["failed_steps"].as_u64() >= Some((n / 50 + 200) as u64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failing steps never failed: {v}"
        );
        std::thread::sleep(Duration::from_millis(200)); // poll interval
    }
    let some_id = {
        let v: serde_json::Value = c
            .get(url("/admin/steps?status=pending&limit=1"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["steps"][0]["step_id"].as_str().unwrap().to_string()
    };
    let pages: Vec<(&str, String)> = vec![
        ("overview (cached)", "/ui".into()),
        ("overview live part", "/ui/live/overview".into()),
        ("steps: newest 50", "/ui/steps".into()),
        ("steps: type filter", "/ui/steps?type=email".into()),
        (
            "steps: text, no match (full window)",
            "/ui/steps?text=no-such-text".into(),
        ),
        ("steps: text, matches", "/ui/steps?text=history+row".into()),
        ("steps: status failed", "/ui/steps?status=failed".into()),
        ("steps: status pending", "/ui/steps?status=pending".into()),
        ("steps: created 2 days ago", {
            let from = (chrono::Utc::now() - chrono::Duration::hours(50)).format("%Y-%m-%dT%H:%M");
            let to = (chrono::Utc::now() - chrono::Duration::hours(49)).format("%Y-%m-%dT%H:%M");
            format!("/ui/steps?created_from={from}&created_to={to}")
        }),
        ("step detail", format!("/ui/steps/{some_id}")),
        ("failed (groups of newest 1000)", "/ui/failed".into()),
        ("fleet", "/ui/fleet".into()),
        (
            "GET /admin/steps?type=email",
            "/admin/steps?type=email".into(),
        ),
    ];
    println!("\n## {n} finished rows (+1,000 pending, 200 failed)\n");
    println!("| page | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|");
    for (name, path) in &pages {
        let mut v = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let r = c.get(url(path)).send().expect("page");
            assert!(r.status().is_success(), "{path}: {}", r.status());
            let _ = r.bytes();
            v.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let max = pct(&mut v, 1.0);
        println!(
            "| {name} | {:.1} | {:.1} | {max:.1} |",
            pct(&mut v, 0.5),
            pct(&mut v, 0.99)
        );
    }
    // The overview past its 2 s statistics cache.
    let mut v = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(2100)); // past the 2 s stats cache
        let t = Instant::now();
        let _ = c.get(url("/ui")).send().unwrap().bytes();
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let max = pct(&mut v, 1.0);
    println!(
        "| overview (uncached) | {:.1} | – | {max:.1} |",
        pct(&mut v, 0.5)
    );
    // A bulk dry run by filter: counts what a bulk retry would change.
    let mut v = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r: serde_json::Value = c
            .post(url("/admin/steps/bulk"))
            .json(&serde_json::json!({"action": "retry", "filter": {"type": "unregistered"}, "dry_run": true}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(r["matched"], 200, "{r}");
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let max = pct(&mut v, 1.0);
    println!(
        "| bulk retry dry run by filter (failed index) | {:.1} | – | {max:.1} |",
        pct(&mut v, 0.5)
    );
    let _ = child.kill();
    let _ = child.wait();
}
