//! Several OS processes on one SQLite file: every step is claimed exactly once.
//!
//! The test binary re-executes itself as the worker processes (`claim_worker`
//! does nothing unless `FLEET_Q_TEST_WORKER_DB` is set), so the workers are real
//! processes with their own writer threads and connections, sharing only the file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_q::storage::sqlite::{SqliteOptions, SqliteStore};
use fleet_q_actors::{
    ClaimParams, Finish, FinishParams, Lease, NewStep, Outcome, StepSpec, StepStatus, Store,
};

const STEPS: usize = 3000;
const WORKERS: usize = 3;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5)); // poll interval
    }
}

/// The worker body, run in a child process: wait for the start signal, then claim
/// and complete batches until the queue is empty, recording every claimed id.
#[test]
#[ignore = "the worker entry point, run only as a child process of three_processes_on_one_file_claim_every_step_exactly_once"]
fn claim_worker() {
    let db = std::env::var("FLEET_Q_TEST_WORKER_DB")
        .expect("claim_worker runs only as a worker process (FLEET_Q_TEST_WORKER_DB)");
    let out = PathBuf::from(std::env::var("FLEET_Q_TEST_WORKER_OUT").unwrap());
    let go = PathBuf::from(std::env::var("FLEET_Q_TEST_WORKER_GO").unwrap());
    let pod = std::env::var("FLEET_Q_TEST_WORKER_POD").unwrap();
    wait_until("the start signal", Duration::from_secs(30), || go.exists());
    runtime().block_on(async {
        let store = SqliteStore::open(&db, SqliteOptions::default()).unwrap();
        let mut claimed = Vec::new();
        loop {
            let batch = store
                .steps_claim(ClaimParams {
                    pod_id: pod.clone(),
                    limit: 10,
                    queues: None,
                })
                .await
                .expect("claim");
            if batch.is_empty() {
                break;
            }
            let finishes = batch
                .iter()
                .map(|s| Finish {
                    lease: Lease::of(s).unwrap(),
                    outcome: Outcome::Complete {
                        result: serde_json::json!({ "by": pod }),
                    },
                })
                .collect();
            let r = store
                .steps_finish(FinishParams {
                    finishes,
                    backoff: Default::default(),
                })
                .await
                .expect("finish");
            assert!(r.rejected.is_empty(), "own fresh leases rejected");
            claimed.extend(batch.iter().map(|s| s.step_id.to_string()));
        }
        std::fs::write(&out, claimed.join("\n")).unwrap();
    });
}

fn spawn_worker(db: &Path, dir: &Path, i: usize) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "claim_worker",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FLEET_Q_TEST_WORKER_DB", db)
        .env(
            "FLEET_Q_TEST_WORKER_OUT",
            dir.join(format!("worker-{i}.txt")),
        )
        .env("FLEET_Q_TEST_WORKER_GO", dir.join("go"))
        .env("FLEET_Q_TEST_WORKER_POD", format!("pod-{i}"))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn worker process")
}

#[test]
fn three_processes_on_one_file_claim_every_step_exactly_once() {
    if std::env::var("FLEET_Q_TEST_WORKER_DB").is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let rt = runtime();
    let store = Arc::new(SqliteStore::open(&db, SqliteOptions::default()).unwrap());
    let ids: HashSet<String> = rt.block_on(async {
        store.schema_init().await.unwrap();
        let mut ids = HashSet::new();
        for chunk in 0..(STEPS / 100) {
            let steps: Vec<NewStep> = (0..100)
                .map(|i| {
                    NewStep::new(StepSpec {
                        step_type: "noop".into(),
                        priority: Some(((chunk * 100 + i) % 7) as i32),
                        ..Default::default()
                    })
                    .unwrap()
                })
                .collect();
            for r in store.steps_insert(steps).await.unwrap() {
                ids.insert(r.step_id.to_string());
            }
        }
        ids
    });
    assert_eq!(ids.len(), STEPS);

    let mut children: Vec<Child> = (0..WORKERS)
        .map(|i| spawn_worker(&db, dir.path(), i))
        .collect();
    std::fs::write(dir.path().join("go"), "go").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    for c in &mut children {
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                assert!(status.success(), "worker failed: {status}");
                break;
            }
            if Instant::now() > deadline {
                for c in &mut children {
                    let _ = c.kill();
                }
                panic!("workers did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(20)); // poll interval
        }
    }

    let mut seen = HashSet::new();
    let mut per_worker = Vec::new();
    for i in 0..WORKERS {
        let text = std::fs::read_to_string(dir.path().join(format!("worker-{i}.txt"))).unwrap();
        let mine: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        per_worker.push(mine.len());
        for id in mine {
            assert!(seen.insert(id.to_string()), "step {id} claimed twice");
        }
    }
    assert_eq!(seen, ids, "every step claimed exactly once");
    // Contention was real: more than one process did work.
    assert!(
        per_worker.iter().filter(|n| **n > 0).count() >= 2,
        "only one worker claimed anything: {per_worker:?}"
    );
    let stats = rt.block_on(store.queue_stats()).unwrap();
    assert_eq!(stats.counts.completed, STEPS as u64);
    assert_eq!(stats.counts.total(), STEPS as u64);
    for id in ids.iter().take(20) {
        let s = rt
            .block_on(store.step_get(id.parse().unwrap()))
            .unwrap()
            .unwrap();
        assert_eq!((s.status, s.attempt), (StepStatus::Completed, 1));
    }
}
