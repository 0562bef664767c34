//! The store conformance suite against the embedded SQLite store: each case gets a
//! fresh database file in its own temp dir, opened twice (two independent writers,
//! as two pod processes would have).

use std::sync::Arc;

use fleet_q::storage::sqlite::{SqliteOptions, SqliteStore};
use fleet_q_actors::testkit::Harness;
use fleet_q_actors::Store;

async fn open() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fleet-q.db");
    let a = SqliteStore::open(&path, SqliteOptions::default()).expect("open a");
    a.schema_init().await.expect("schema a");
    let b = SqliteStore::open(&path, SqliteOptions::default()).expect("open b");
    b.schema_init().await.expect("schema b");
    Harness {
        a: Arc::new(a),
        b: Arc::new(b),
        guard: Box::new(dir),
        lacks: Vec::new(),
    }
}

fleet_q_actors::conformance_suite!(open);

/// A runtime for one test: current-thread, or with two workers where
/// submitters must run beside the store's callers.
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let mut b = if workers > 1 {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().unwrap()
}

/// Claims up to `limit` steps as pod `p` and finishes them: the first
/// `failing` fail for good, the rest complete. Returns what was claimed.
async fn claim_and_finish(
    s: &SqliteStore,
    limit: u32,
    failing: usize,
) -> Vec<fleet_q_actors::Step> {
    let claimed = s
        .steps_claim(fleet_q_actors::ClaimParams {
            pod_id: "p".into(),
            limit,
            queues: None,
        })
        .await
        .unwrap();
    s.steps_finish(fleet_q_actors::testkit::finishes(&claimed, failing))
        .await
        .unwrap();
    claimed
}

/// A file written before STEP_TOTALS existed gets it filled once from the steps
/// it holds, so stats are right from the first call after an upgrade.
#[test]
fn an_older_file_gets_its_totals_from_its_steps() {
    use fleet_q_actors::{NewStep, StepSpec};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet-q.db");
    let rt = runtime(1);
    rt.block_on(async {
        let s = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        s.schema_init().await.unwrap();
        let steps = (0..10)
            .map(|i| {
                NewStep::new(StepSpec {
                    step_type: if i % 2 == 0 { "even" } else { "odd" }.into(),
                    max_retries: Some(0),
                    ..Default::default()
                })
                .unwrap()
            })
            .collect();
        s.steps_insert(steps).await.unwrap();
        claim_and_finish(&s, 4, 1).await;
        let before = s.queue_stats().await.unwrap();
        assert_eq!(
            (
                before.counts.pending,
                before.counts.completed,
                before.counts.failed
            ),
            (6, 3, 1)
        );
        drop(s);
        // What an older version left behind: the steps, no totals.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("DROP TABLE STEP_TOTALS").unwrap();
        drop(c);
        let s = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        s.schema_init().await.unwrap();
        let after = s.queue_stats().await.unwrap();
        assert_eq!(after.counts, before.counts);
        assert_eq!(after.by_type, before.by_type);
        assert_eq!(
            after.by_type["odd"].pending + after.by_type["even"].pending,
            6
        );
        // A second start does not count them again.
        s.schema_init().await.unwrap();
        assert_eq!(s.queue_stats().await.unwrap().counts, before.counts);
    });
}

/// Clients choose step types: with more types than statistics keep by name, the
/// counts stay exact, `by_type` stays bounded, and the types beyond it are summed
/// under one name.
#[test]
fn statistics_stay_bounded_and_exact_with_more_types_than_they_list() {
    use fleet_q_actors::{NewStep, StatusCounts, StepSpec, OTHER_TYPES, STATS_TYPES};
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(1);
    rt.block_on(async {
        let s = SqliteStore::open(dir.path().join("types.db"), SqliteOptions::default()).unwrap();
        s.schema_init().await.unwrap();
        let n = STATS_TYPES + 200;
        let steps: Vec<NewStep> = (0..n)
            .map(|i| {
                NewStep::new(StepSpec {
                    step_type: format!("type-{i}"),
                    ..Default::default()
                })
                .unwrap()
            })
            .collect();
        s.steps_insert(steps).await.unwrap();
        claim_and_finish(&s, 600, 100).await;
        let stats = s.queue_stats().await.unwrap();
        let want = StatusCounts {
            pending: (n - 600) as u64,
            completed: 500,
            failed: 100,
            ..Default::default()
        };
        assert_eq!(stats.counts, want);
        assert!(
            stats.by_type.len() <= STATS_TYPES,
            "{}",
            stats.by_type.len()
        );
        assert!(stats.by_type.contains_key(OTHER_TYPES));
        let mut sum = StatusCounts::default();
        for c in stats.by_type.values() {
            sum.merge(c);
        }
        assert_eq!(sum, want, "by_type sums to the counts");
    });
}

/// Statements are counted by the connection itself (SQLite's profile hook),
/// on the writer and on every reader: a write transaction is at least BEGIN,
/// its statement and COMMIT; a read at least its query.
#[test]
fn statements_are_counted_by_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(1);
    rt.block_on(async {
        let s = SqliteStore::open(dir.path().join("fleet-q.db"), SqliteOptions::default()).unwrap();
        s.schema_init().await.unwrap();
        let before = s.statement_count();
        let step = fleet_q_actors::NewStep::new(fleet_q_actors::StepSpec {
            step_type: "noop".into(),
            ..Default::default()
        })
        .unwrap();
        let id = s.steps_insert(vec![step]).await.unwrap()[0].step_id;
        let after_insert = s.statement_count();
        assert!(after_insert >= before + 3, "{before} -> {after_insert}");
        s.step_get(id).await.unwrap().unwrap();
        assert!(s.statement_count() > after_insert);
    });
}

/// Pruning yields to writes (its slices are interrupted and retried smaller):
/// with submits arriving back to back the whole time, a prune still deletes
/// every expired row, exactly once, steps over the live rows between them,
/// and the totals stay exact.
#[test]
fn pruning_completes_and_counts_exactly_under_a_stream_of_writes() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    use fleet_q_actors::testkit::steps;
    use fleet_q_actors::{NewStep, PruneParams, StatusCounts, StepSpec};
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(2);
    rt.block_on(async {
        let s = Arc::new(
            SqliteStore::open(dir.path().join("prune.db"), SqliteOptions::default()).unwrap(),
        );
        s.schema_init().await.unwrap();
        for _ in 0..6 {
            // One step in six stays pending (a lower priority keeps it out of
            // the claim): live rows between the expired ones, in id order.
            let batch = (0..600)
                .map(|i| {
                    NewStep::new(StepSpec {
                        step_type: "old".into(),
                        priority: Some(if i % 6 == 5 { -1 } else { 0 }),
                        ..Default::default()
                    })
                    .unwrap()
                })
                .collect();
            s.steps_insert(batch).await.unwrap();
            assert_eq!(claim_and_finish(&s, 500, 20).await.len(), 500);
        }
        // Wait, by the store's clock, until every finished row is past a
        // 100 ms retention.
        let retention = Duration::from_millis(100);
        let finished_at = s.now().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while (s.now().await.unwrap() - finished_at)
            .to_std()
            .unwrap_or_default()
            <= retention * 2
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the store clock moves"
            );
            tokio::time::sleep(Duration::from_millis(10)).await; // poll interval
        }
        // Submits back to back, from before the prune starts until it ended.
        let stop = Arc::new(AtomicBool::new(false));
        let submitted = Arc::new(AtomicU64::new(0));
        let submitter = {
            let (s, stop, submitted) = (s.clone(), stop.clone(), submitted.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    s.steps_insert(steps("new", 1)).await.unwrap();
                    submitted.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        while submitted.load(Ordering::Relaxed) < 20 {
            tokio::task::yield_now().await;
        }
        let mut pruned = 0;
        loop {
            let n = s
                .steps_prune(PruneParams {
                    retention,
                    limit: 700,
                })
                .await
                .unwrap();
            pruned += n;
            if n < 700 {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        submitter.await.unwrap();
        assert_eq!(pruned, 3000, "every expired row, once");
        let stats = s.queue_stats().await.unwrap();
        assert_eq!(
            stats.counts,
            StatusCounts {
                pending: 600 + submitted.load(Ordering::Relaxed),
                ..Default::default()
            },
            "only the live steps remain, counted exactly"
        );
    });
}

/// The WAL file stays bounded under writes that never pause. SQLite restarts
/// the WAL only when a transaction begins with every frame checkpointed, which
/// a checkpointer on another thread never sees while commits keep landing
/// during its passes; past `wal_restart_bytes` the checkpointer hands its last
/// pass to the writer so the WAL restarts; once writes pause, the file is cut
/// back to the threshold.
#[test]
fn the_wal_stays_bounded_under_writes_that_never_pause() {
    // Without the hand-off this WAL grew to 178 MB here; with it the peak
    // is the 1 MiB threshold plus the writes of one checkpoint period and
    // the chase (29 MB here, at ~70 MB/s of WAL).
    let peak = wal_peak_under_writes(1 << 20, false);
    assert!(peak <= 48 << 20, "WAL peaked at {peak} bytes");
}

/// The WAL stays bounded when other work saturates every CPU. Routine
/// checkpoint passes run at idle CPU priority and so are starved here; the
/// restart that bounds the WAL is run by the checkpointer's own thread, at
/// normal priority, which learns the WAL's size from the file itself.
#[test]
fn the_wal_stays_bounded_while_other_work_saturates_the_cpus() {
    let hogs = CpuHogs::start(2 * std::thread::available_parallelism().map_or(2, |n| n.get()));
    let peak = wal_peak_under_writes(1 << 20, false);
    drop(hogs);
    assert!(peak <= 48 << 20, "WAL peaked at {peak} bytes");
}

/// Threads that spin at normal priority until dropped.
struct CpuHogs {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHogs {
    fn start(n: usize) -> CpuHogs {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        CpuHogs { stop, threads }
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Routine checkpoint passes run on a thread in the `SCHED_IDLE` policy, so a
/// woken request thread never waits for one (see the checkpoint module).
/// Read from `/proc`, as an operator would see it.
#[cfg(target_os = "linux")]
#[test]
fn routine_checkpoints_run_at_idle_cpu_priority() {
    const SCHED_IDLE: &str = "5";
    let dir = tempfile::tempdir().unwrap();
    let _store = SqliteStore::open(dir.path().join("idle.db"), SqliteOptions::default()).unwrap();
    // The scheduling policy of each thread of this process named `name`
    // (field 41 of its stat; the name, field 2, is in parentheses).
    let policies = |name: &str| -> Vec<String> {
        let mut out = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            if let Some((_, rest)) = stat.rsplit_once(')') {
                if let Some(policy) = rest.split_whitespace().nth(38) {
                    out.push(policy.to_string());
                }
            }
        }
        out
    };
    // Tests running alongside open stores too: each helper lowers its own
    // priority as it starts, so wait until every one has.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let seen = policies("fq-sqlite-ckpt");
        if !seen.is_empty() && seen.iter().all(|p| p == SCHED_IDLE) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the checkpoint helper threads' policies: {seen:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10)); // poll interval
    }
}

/// A reader in another process that holds a snapshot keeps the WAL from
/// restarting: writes go on regardless (the hand-off backs off instead of
/// repeating every period), and once the reader lets go the file is cut back.
#[test]
fn a_reader_holding_the_wal_back_does_not_stop_writes_or_the_cut_back() {
    wal_peak_under_writes(1 << 20, true);
}

/// Writes ~64 MiB of WAL with eight submitters back to back, on a store whose
/// WAL restarts past `restart` bytes, with another connection holding a read
/// snapshot meanwhile if `hold_reader`; then checks that the file is cut back
/// once writes pause. Returns the WAL file's largest size seen.
fn wal_peak_under_writes(restart: u64, hold_reader: bool) -> u64 {
    use fleet_q_actors::{NewStep, StepSpec};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.db");
    let wal = dir.path().join("wal.db-wal");
    let rt = runtime(2);
    rt.block_on(async {
        let options = SqliteOptions {
            wal_restart_bytes: restart,
            ..SqliteOptions::default()
        };
        let s = Arc::new(SqliteStore::open(&path, options).unwrap());
        s.schema_init().await.unwrap();
        s.steps_insert(fleet_q_actors::testkit::steps("small", 1))
            .await
            .unwrap();
        let reader = hold_reader.then(|| {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch("BEGIN").unwrap();
            let n: i64 = c
                .query_row("SELECT count(*) FROM STEP_TRACKER", [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 1, "the reader's snapshot");
            c
        });
        let padding = "x".repeat(2000);
        // Eight submitters keep the writer's queue from ever emptying.
        let submitters: Vec<_> = (0..8)
            .map(|_| {
                let (s, padding) = (s.clone(), padding.clone());
                tokio::spawn(async move {
                    let big = || {
                        NewStep::new(StepSpec {
                            step_type: "big".into(),
                            args: Some(serde_json::json!({ "padding": padding })),
                            ..Default::default()
                        })
                        .unwrap()
                    };
                    for _ in 0..625 {
                        s.steps_insert(vec![big(), big()]).await.unwrap();
                    }
                })
            })
            .collect();
        let mut peak = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !submitters.iter().all(|t| t.is_finished()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the submitters finish"
            );
            peak = peak.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
            tokio::time::sleep(std::time::Duration::from_millis(5)).await; // poll interval
        }
        for t in submitters {
            t.await.unwrap();
        }
        let stats = s.queue_stats().await.unwrap();
        assert_eq!(stats.counts.pending, 10_001, "every submit kept");
        drop(reader);
        let peak = peak.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        // Once writes pause, the WAL restarts and the file is cut back to the
        // threshold (journal_size_limit): the disk it took comes back.
        let limit = restart.min(64 << 20);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            s.steps_insert(fleet_q_actors::testkit::steps("small", 1))
                .await
                .unwrap();
            let now = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
            if now <= limit + (64 << 10) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL file is cut back to {limit} bytes; it is {now}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await; // poll interval
        }
        peak
    })
}
