//! Execution semantics of one pod, in process, on a real SQLite file: a panicking
//! handler, a handler timeout, an unknown type, retries with backoff to exactly
//! `max_retries`, the `http` handler against a live service (2xx / 4xx / 5xx), and a
//! pod started from user code with user handlers.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fleet_q::storage::sqlite::{SqliteOptions, SqliteStore};
use fleet_q_actors::*;
use serde_json::{json, Value};
use support::Recorder;

struct Panics;
#[async_trait]
impl StepHandler for Panics {
    async fn run(&self, _: StepContext) -> Result<Value, HandlerError> {
        panic!("handler bug")
    }
}

struct Slow;
#[async_trait]
impl StepHandler for Slow {
    async fn run(&self, _: StepContext) -> Result<Value, HandlerError> {
        // Never finishes: only the pod's timeout can end it.
        std::future::pending().await
    }
}

#[derive(Default, Clone)]
struct AlwaysFails {
    runs: Arc<Mutex<Vec<(Instant, u32, String)>>>,
}
#[async_trait]
impl StepHandler for AlwaysFails {
    async fn run(&self, ctx: StepContext) -> Result<Value, HandlerError> {
        self.runs
            .lock()
            .unwrap()
            .push((Instant::now(), ctx.attempt, ctx.idempotency_key.clone()));
        Err(HandlerError::retryable(format!(
            "attempt {} failed",
            ctx.attempt
        )))
    }
}

struct Counts(Arc<AtomicU32>);
#[async_trait]
impl StepHandler for Counts {
    async fn run(&self, ctx: StepContext) -> Result<Value, HandlerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(json!({ "attempt": ctx.attempt, "key": ctx.idempotency_key }))
    }
}

fn config(dir: &std::path::Path) -> PodConfig {
    PodConfig {
        pod_id: "test-pod".into(),
        max_capacity: 4,
        heartbeat_interval: Duration::from_secs(1),
        claim_interval: Duration::from_millis(100),
        leader_check_interval: Duration::from_secs(1),
        recovery_interval: Duration::from_secs(1),
        dead_pod_threshold: Duration::from_secs(3),
        step_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(1),
        step_backoff: Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(400),
            jitter: 0.5,
        },
        ledger_path: Some(dir.join("ledger.db")),
        ..Default::default()
    }
}

fn spec(t: &str, f: impl FnOnce(&mut StepSpec)) -> NewStep {
    let mut s = StepSpec {
        step_type: t.into(),
        ..Default::default()
    };
    f(&mut s);
    NewStep::new(s).unwrap()
}

/// Runs `body` against a fresh pod inside an actix system.
fn with_pod<F, Fut>(handlers: HandlerRegistry, body: F)
where
    F: FnOnce(Arc<Pod>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    with_pod_cfg(|_| {}, handlers, body)
}

/// [`with_pod`] with the configuration adjusted by `tune`.
fn with_pod_cfg<F, Fut>(tune: impl FnOnce(&mut PodConfig), handlers: HandlerRegistry, body: F)
where
    F: FnOnce(Arc<Pod>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    tune(&mut cfg);
    actix_rt::System::new().block_on(async move {
        let store = SqliteStore::open(dir.path().join("pod.db"), SqliteOptions::default()).unwrap();
        store.schema_init().await.unwrap();
        let pod = Arc::new(Pod::start(cfg, Arc::new(store), handlers).unwrap());
        body(pod.clone()).await;
        pod.shutdown().await;
    });
}

async fn wait_step(pod: &Pod, id: StepId, what: &str, done: impl Fn(&Step) -> bool) -> Step {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = pod.step(id).await.unwrap() {
            if done(&s) {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix_rt::time::sleep(Duration::from_millis(20)).await; // poll interval
    }
}

async fn submit_one(pod: &Pod, s: NewStep) -> StepId {
    pod.submit(vec![s]).await.unwrap()[0].step_id
}

#[test]
fn a_panicking_handler_fails_its_step_only() {
    let count = Arc::new(AtomicU32::new(0));
    let mut h = HandlerRegistry::new();
    h.register("panics", Panics)
        .register("ok", Counts(count.clone()));
    with_pod(h, |pod| async move {
        let bad = submit_one(&pod, spec("panics", |s| s.max_retries = Some(1))).await;
        let good = submit_one(&pod, spec("ok", |_| {})).await;
        let s = wait_step(&pod, bad, "the panicking step to fail", |s| {
            s.status == StepStatus::Failed
        })
        .await;
        assert_eq!(
            s.retry_count, 1,
            "a panic is retried like any retryable error"
        );
        assert!(s
            .last_error
            .unwrap()
            .contains("handler panicked: handler bug"));
        wait_step(&pod, good, "the good step", |s| {
            s.status == StepStatus::Completed
        })
        .await;
        // The executor actor itself never faulted.
        let actors = pod.state().actors();
        let exec = actors
            .iter()
            .find(|(n, _)| *n == fleet_q_actors::actors::EXECUTOR)
            .unwrap();
        assert_eq!(exec.1.restarts, 0);
    });
}

#[test]
fn a_handler_past_its_timeout_is_cancelled_and_retried_or_failed() {
    let mut h = HandlerRegistry::new();
    h.register("slow", Slow);
    with_pod(h, |pod| async move {
        let t0 = Instant::now();
        let id = submit_one(
            &pod,
            spec("slow", |s| {
                s.timeout = Some(Duration::from_millis(200));
                s.max_retries = Some(1);
            }),
        )
        .await;
        let s = wait_step(&pod, id, "the slow step to fail", |s| {
            s.status == StepStatus::Failed
        })
        .await;
        assert_eq!(s.retry_count, 1);
        assert!(s.last_error.unwrap().contains("timed out after 0.200s"));
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the never-ending handler was cancelled"
        );
        assert_eq!(pod.state().in_flight(), 0, "slots freed");
    });
}

#[test]
fn an_unknown_type_fails_terminally_with_a_clear_error() {
    with_pod(HandlerRegistry::new(), |pod| async move {
        let id = submit_one(&pod, spec("no-such-type", |s| s.max_retries = Some(5))).await;
        let s = wait_step(&pod, id, "the step to fail", |s| {
            s.status == StepStatus::Failed
        })
        .await;
        assert_eq!(s.retry_count, 0, "terminal: no retries spent");
        assert_eq!(
            s.last_error.as_deref(),
            Some("no handler is registered for step type \"no-such-type\" (registered: )")
        );
    });
}

#[test]
fn retries_back_off_and_stop_after_exactly_max_retries() {
    let fails = AlwaysFails::default();
    let runs = fails.runs.clone();
    let mut h = HandlerRegistry::new();
    h.register("fails", fails);
    // Two seconds between idle claims: the executor's wake-up when a backoff has
    // passed starts retries sooner, and the idle tick catches a wake-up that raced
    // the store write of the retry (so the test cannot hang on that race).
    let tune = |c: &mut PodConfig| c.claim_interval = Duration::from_secs(2);
    with_pod_cfg(tune, h, |pod| async move {
        let id = submit_one(&pod, spec("fails", |s| s.max_retries = Some(3))).await;
        let s = wait_step(&pod, id, "the step to fail", |s| {
            s.status == StepStatus::Failed
        })
        .await;
        assert_eq!(s.retry_count, 3);
        assert_eq!(s.last_error.as_deref(), Some("attempt 4 failed"));
        let runs = runs.lock().unwrap().clone();
        assert_eq!(runs.len(), 4, "one run plus exactly three retries");
        assert_eq!(runs.iter().map(|r| r.1).collect::<Vec<_>>(), [1, 2, 3, 4]);
        // The key handlers get is the same on every attempt.
        assert!(runs.iter().all(|r| r.2 == runs[0].2));
        // Backoff base 100 ms doubling, capped at 400 ms, minus up to half of
        // jitter: gaps of at least 50, 100, 200 ms.
        for (n, w) in runs.windows(2).enumerate() {
            let gap = w[1].0 - w[0].0;
            let min = Duration::from_millis(100 * (1 << n)).min(Duration::from_millis(400)) / 2;
            assert!(
                gap >= min,
                "retry {n}: gap {gap:?} shorter than the backoff {min:?}"
            );
        }
    });
}

#[test]
fn the_http_handler_maps_2xx_4xx_and_5xx() {
    let rec = Recorder::start();
    let h = fleet_q::handlers::builtin(
        &BTreeMap::from([("remote".to_string(), rec.url.clone())]),
        64 * 1024,
    );
    with_pod(h, |pod| async move {
        let ok = submit_one(
            &pod,
            spec("remote", |s| {
                s.args = Some(json!({"n": 1}));
                s.idempotency_key = Some("order-7".into());
            }),
        )
        .await;
        let bad = submit_one(
            &pod,
            spec("remote", |s| {
                s.args = Some(json!({"status": 422}));
                s.max_retries = Some(3);
            }),
        )
        .await;
        let down = submit_one(
            &pod,
            spec("remote", |s| {
                s.args = Some(json!({"status": 503}));
                s.max_retries = Some(2);
            }),
        )
        .await;
        let s = wait_step(&pod, ok, "2xx to complete", |s| {
            s.status == StepStatus::Completed
        })
        .await;
        let result = s.result.unwrap();
        assert_eq!(result["pod"], json!("test-pod"));
        assert_eq!(result["echo"], json!({"n": 1}));
        let s = wait_step(&pod, bad, "4xx to fail", |s| s.status == StepStatus::Failed).await;
        assert_eq!(s.retry_count, 0, "4xx is terminal");
        assert!(s.last_error.unwrap().contains("422"));
        let s = wait_step(&pod, down, "5xx to fail after retries", |s| {
            s.status == StepStatus::Failed
        })
        .await;
        assert_eq!(s.retry_count, 2, "5xx is retried");
        assert!(s.last_error.unwrap().contains("503"));
        let execs = rec.executions();
        assert_eq!(execs[&ok.to_string()].len(), 1);
        assert_eq!(execs[&bad.to_string()].len(), 1);
        let attempts: Vec<u32> = execs[&down.to_string()].iter().map(|c| c.attempt).collect();
        assert_eq!(attempts, [1, 2, 3]);
    });
}

/// The `http` handler stores at most the configured result size (a larger answer
/// fails the step terminally, unread past the limit) and follows no redirect (a
/// 3xx fails the step and names where it pointed).
#[test]
fn the_http_handler_caps_results_and_follows_no_redirect() {
    let rec = Recorder::start();
    let h = fleet_q::handlers::builtin(
        &BTreeMap::from([("remote".to_string(), rec.url.clone())]),
        4096,
    );
    let elsewhere = format!("{}/elsewhere", rec.url);
    with_pod(h, move |pod| async move {
        let small = submit_one(
            &pod,
            spec("remote", |s| s.args = Some(json!({"big_body_bytes": 4000}))),
        )
        .await;
        let big = submit_one(
            &pod,
            spec("remote", |s| {
                s.args = Some(json!({"big_body_bytes": 20_000_000}));
                s.max_retries = Some(2);
            }),
        )
        .await;
        let moved = submit_one(
            &pod,
            spec("remote", |s| {
                s.args = Some(json!({"redirect_to": elsewhere}));
                s.max_retries = Some(2);
            }),
        )
        .await;
        let s = wait_step(&pod, small, "a result under the cap to complete", |s| {
            s.status == StepStatus::Completed
        })
        .await;
        assert_eq!(s.result.unwrap().as_str().map(str::len), Some(4000));
        let s = wait_step(&pod, big, "an oversized answer to fail", |s| {
            s.status == StepStatus::Failed
        })
        .await;
        assert_eq!(s.retry_count, 0, "an oversized answer is terminal");
        assert!(s.result.is_none());
        let e = s.last_error.unwrap();
        assert!(e.contains("over 4096 bytes"), "{e}");
        let s = wait_step(&pod, moved, "a redirect to fail", |s| {
            s.status == StepStatus::Failed
        })
        .await;
        assert_eq!(s.retry_count, 0, "a redirect is terminal");
        let e = s.last_error.unwrap();
        assert!(e.contains("307") && e.contains("/elsewhere"), "{e}");
        // The redirect was not followed: the service saw one call per step.
        let execs = rec.executions();
        assert_eq!(execs[&moved.to_string()].len(), 1);
    });
}

#[test]
fn an_unreachable_http_service_is_retried() {
    let port = support::free_port(); // nothing listens here
    let h = fleet_q::handlers::builtin(
        &BTreeMap::from([("remote".to_string(), format!("http://127.0.0.1:{port}/run"))]),
        64 * 1024,
    );
    with_pod(h, |pod| async move {
        let id = submit_one(&pod, spec("remote", |s| s.max_retries = Some(1))).await;
        let s = wait_step(&pod, id, "the step to fail", |s| {
            s.status == StepStatus::Failed
        })
        .await;
        assert_eq!(s.retry_count, 1);
        assert!(s.last_error.unwrap().contains("could not connect"));
    });
}

#[test]
fn a_local_submit_wakes_an_idle_pod() {
    let count = Arc::new(AtomicU32::new(0));
    let mut h = HandlerRegistry::new();
    h.register("ok", Counts(count.clone()));
    // With an hour between idle claims, only the wake-up on submit can start the
    // steps below.
    let tune = |c: &mut PodConfig| c.claim_interval = Duration::from_secs(3600);
    with_pod_cfg(tune, h, |pod| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pod.state().heartbeat_healthy() {
            assert!(Instant::now() < deadline, "no first heartbeat");
            actix_rt::time::sleep(Duration::from_millis(10)).await; // poll interval
        }
        for _ in 0..5 {
            let id = submit_one(&pod, spec("ok", |_| {})).await;
            wait_step(&pod, id, "completion", |s| {
                s.status == StepStatus::Completed
            })
            .await;
        }
        assert_eq!(count.load(Ordering::SeqCst), 5);
    });
}

#[test]
fn recovery_dry_run_reports_without_writing_then_a_real_cycle_requeues() {
    let count = Arc::new(AtomicU32::new(0));
    let mut h = HandlerRegistry::new();
    h.register("ok", Counts(count.clone()));
    // Long intervals: only the recovery cycles this test asks for run (after the
    // one a new leader runs at once), and the pod claims only when a local submit
    // wakes it, so the ghost below surely claims both steps.
    let tune = |c: &mut PodConfig| {
        c.recovery_interval = Duration::from_secs(3600);
        c.claim_interval = Duration::from_secs(3600);
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dead.db");
    let db2 = db.clone();
    with_pod_cfg_on(tune, h, db, move |pod| async move {
        wait_leader(&pod).await;
        // Another "pod" (a second handle on the file) claims two steps, then dies:
        // its row says down, so its claims are orphans.
        let other = SqliteStore::open(&db2, SqliteOptions::default()).unwrap();
        other
            .steps_insert(vec![
                spec("ok", |_| {}),
                spec("ok", |s| s.max_retries = Some(0)),
            ])
            .await
            .unwrap();
        let held: Vec<StepId> = other
            .steps_claim(ClaimParams {
                pod_id: "ghost".into(),
                limit: 10,
                queues: None,
            })
            .await
            .unwrap()
            .iter()
            .map(|s| s.step_id)
            .collect();
        assert_eq!(held.len(), 2);
        other
            .pod_heartbeat(HeartbeatParams {
                pod_id: "ghost".into(),
                status: PodStatus::Down,
                capacity_in_use: 0,
                max_capacity: 1,
                meta: Value::Null,
                ..Default::default()
            })
            .await
            .unwrap();
        let dry = recover(&pod, true).await;
        assert!(dry.dry_run);
        assert_eq!(dry.orphaned_steps_found, held.len());
        for id in &held {
            let s = pod.step(*id).await.unwrap().unwrap();
            assert_eq!(s.status, StepStatus::Claimed, "a dry run writes nothing");
            assert_eq!(s.claimed_by.as_deref(), Some("ghost"));
        }
        let real = recover(&pod, false).await;
        assert!(!real.dry_run);
        assert_eq!(real.orphaned_steps_found, held.len());
        assert_eq!((real.steps_requeued, real.steps_marked_terminal), (1, 1));
        // The requeued step is due after its backoff; this pod's claimer only
        // runs when woken here, so wake it (local submits) until the step ran.
        let requeued = real.requeued_steps[0];
        let deadline = Instant::now() + Duration::from_secs(15);
        while !pod
            .step(requeued)
            .await
            .unwrap()
            .unwrap()
            .status
            .is_terminal()
        {
            assert!(Instant::now() < deadline, "the requeued step never ran");
            submit_one(&pod, spec("ok", |_| {})).await;
            actix_rt::time::sleep(Duration::from_millis(50)).await; // poll interval
        }
        for id in &held {
            let s = wait_step(&pod, *id, "the recovered step to finish", |s| {
                s.status.is_terminal()
            })
            .await;
            if s.max_retries == 0 {
                assert_eq!(
                    s.status,
                    StepStatus::Failed,
                    "no retries left: failed for good"
                );
                assert!(s.last_error.unwrap().contains("ghost presumed dead"));
            } else {
                assert_eq!(
                    s.status,
                    StepStatus::Completed,
                    "requeued and run by the live pod"
                );
            }
        }
        let history = pod.recovery_history(10).await.unwrap();
        assert_eq!(history[0].cycle_id, real.cycle_id);
        assert_eq!(history[1].cycle_id, dry.cycle_id);
    });
}

/// A claim whose answer never reached the pod (here: made in the pod's name by
/// another handle on the file, as a claim the server committed after the client
/// gave up would be) is invisible to recovery, since its holder is alive. The
/// pod's self-reconciliation finds it, releases it without spending a retry, and
/// the step then runs.
#[test]
fn a_claim_the_pod_never_received_is_released_by_reconciliation_and_runs() {
    let count = Arc::new(AtomicU32::new(0));
    let mut h = HandlerRegistry::new();
    h.register("ok", Counts(count.clone()));
    // The pod claims only when a local submit wakes it, so the stray below is
    // surely the one claim it holds but never received.
    let tune = |c: &mut PodConfig| {
        c.claim_interval = Duration::from_secs(3600);
        c.reconcile_interval = Some(Duration::from_secs(1));
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stray.db");
    let db2 = db.clone();
    with_pod_cfg_on(tune, h, db, move |pod| async move {
        // Past start-up (whose first claim tick could take the step itself).
        wait_leader(&pod).await;
        let other = SqliteStore::open(&db2, SqliteOptions::default()).unwrap();
        let stray = spec("ok", |_| {});
        let id = stray.step_id();
        other.steps_insert(vec![stray]).await.unwrap();
        let me = pod.state().pod_id();
        let got = other
            .steps_claim(ClaimParams {
                pod_id: me.clone(),
                limit: 1,
                queues: None,
            })
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "claimed in the pod's name");
        // Released (pending again, no retry spent), then claimed for real once a
        // local submit wakes the claimer, and run.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = pod.step(id).await.unwrap().unwrap();
            if s.status == StepStatus::Completed {
                assert_eq!(s.retry_count, 0, "a release spends no retry");
                assert_eq!(
                    s.attempt, 2,
                    "claimed once in the lost answer, once for real"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the stray claim was never released and run: {s:?}"
            );
            if s.status == StepStatus::Pending {
                submit_one(&pod, spec("ok", |_| {})).await;
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await; // poll interval
        }
        let metrics = fleet_q_actors::metrics::render();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("fleet_q_reconciled_claims_total ") && !l.ends_with(" 0")),
            "counted"
        );
    });
}

/// Waits (with a deadline) until `pod` leads.
async fn wait_leader(pod: &Pod) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !pod.state().is_leader() {
        assert!(Instant::now() < deadline, "the pod never led");
        actix_rt::time::sleep(Duration::from_millis(10)).await; // poll interval
    }
}

/// Runs a recovery cycle, waiting while another (the new leader's own first
/// cycle, say) is still running.
async fn recover(pod: &Pod, dry_run: bool) -> RecoverySummary {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match pod.run_recovery(dry_run).await {
            Ok(s) => return s,
            Err(fleet_q_actors::RecoveryError::AlreadyRunning) => {
                assert!(Instant::now() < deadline, "a recovery cycle never finished");
                actix_rt::time::sleep(Duration::from_millis(20)).await; // poll interval
            }
            Err(e) => panic!("recovery failed: {e}"),
        }
    }
}

/// [`with_pod_cfg`] on a given database file.
fn with_pod_cfg_on<F, Fut>(
    tune: impl FnOnce(&mut PodConfig),
    handlers: HandlerRegistry,
    db: std::path::PathBuf,
    body: F,
) where
    F: FnOnce(Arc<Pod>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    tune(&mut cfg);
    actix_rt::System::new().block_on(async move {
        let store = SqliteStore::open(&db, SqliteOptions::default()).unwrap();
        store.schema_init().await.unwrap();
        let pod = Arc::new(Pod::start(cfg, Arc::new(store), handlers).unwrap());
        body(pod.clone()).await;
        pod.shutdown().await;
    });
}

/// The leader prunes finished steps older than the retention, and leaves live
/// and recent ones alone; recovery summaries report the count. (The setting's floor is 60 s; the
/// engine takes any retention, which lets this test use one second.)
#[test]
fn retention_prunes_old_finished_steps() {
    let mut h = HandlerRegistry::new();
    h.register("ok", Counts(Arc::new(AtomicU32::new(0))));
    let tune = |c: &mut PodConfig| {
        c.retention = Duration::from_secs(1);
        c.prune_interval = Duration::from_secs(1);
    };
    with_pod_cfg(tune, h, |pod| async move {
        let done = submit_one(&pod, spec("ok", |_| {})).await;
        wait_step(&pod, done, "the step to complete", |s| {
            s.status == StepStatus::Completed
        })
        .await;
        let waiting = submit_one(
            &pod,
            spec("ok", |s| s.run_at = RunAt::After(Duration::from_secs(3600))),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while pod.step(done).await.unwrap().is_some() {
            assert!(
                Instant::now() < deadline,
                "the finished step was never pruned"
            );
            tokio::time::sleep(Duration::from_millis(100)).await; // poll interval
        }
        let s = pod
            .step(waiting)
            .await
            .unwrap()
            .expect("a pending step is kept");
        assert_eq!(s.status, StepStatus::Pending);
        // Pruning runs beside the cycles: the next cycle reports what was pruned
        // since the one before.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match pod.run_recovery(false).await {
                Ok(_) => break,
                Err(e) => assert!(Instant::now() < deadline, "no recovery cycle ran: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await; // poll interval
        }
        let cycles = pod.recovery_history(50).await.unwrap();
        assert!(
            cycles.iter().map(|c| c.steps_pruned).sum::<u64>() >= 1,
            "the recovery summaries count the prune: {cycles:?}"
        );
    });
}

/// Retention keeps up under load: 6,000 finished steps past the retention are
/// pruned in many small chunks while new steps are submitted and run; every new
/// step completes, every old one goes, and the counts match what the table holds.
#[test]
fn pruning_runs_in_chunks_while_steps_are_submitted_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("prune-load.db");
    // History: 6,000 finished steps.
    actix_rt::System::new().block_on(async {
        let store = SqliteStore::open(&db, SqliteOptions::default()).unwrap();
        store.schema_init().await.unwrap();
        for _ in 0..6 {
            store
                .steps_insert((0..1000).map(|_| spec("ok", |_| {})).collect())
                .await
                .unwrap();
            let claimed = store
                .steps_claim(ClaimParams {
                    pod_id: "old".into(),
                    limit: 1000,
                    queues: None,
                })
                .await
                .unwrap();
            let finishes = claimed
                .iter()
                .map(|s| Finish {
                    lease: Lease::of(s).unwrap(),
                    outcome: Outcome::Complete { result: json!(1) },
                })
                .collect();
            store
                .steps_finish(FinishParams {
                    finishes,
                    backoff: Backoff::default(),
                })
                .await
                .unwrap();
        }
        assert_eq!(store.queue_stats().await.unwrap().counts.completed, 6000);
    });
    let runs = Arc::new(AtomicU32::new(0));
    let mut h = HandlerRegistry::new();
    h.register("ok", Counts(runs.clone()));
    let tune = |c: &mut PodConfig| {
        c.retention = Duration::from_secs(1);
        c.prune_batch = 100;
        c.prune_interval = Duration::from_secs(1);
    };
    with_pod_cfg_on(tune, h, db, |pod| async move {
        // Submit while the pruner works through 60 chunks.
        // Each batch goes in once the one before it has run, so the submits
        // and the runs interleave with the pruning rather than arrive at once.
        let mut fresh = Vec::new();
        for batch in 1..=20 {
            let ids = pod
                .submit((0..10).map(|_| spec("ok", |_| {})).collect())
                .await
                .expect("a submit is accepted while pruning");
            fresh.extend(ids.into_iter().map(|i| i.step_id));
            let deadline = Instant::now() + Duration::from_secs(60);
            while runs.load(Ordering::SeqCst) < batch * 10 {
                assert!(
                    Instant::now() < deadline,
                    "batch {batch} did not run within 60 s while pruning"
                );
                actix_rt::time::sleep(Duration::from_millis(5)).await; // poll interval
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let stats = loop {
            let s = pod.queue_stats().await.unwrap();
            // The fresh steps may themselves be pruned a second after finishing.
            if s.counts.pending + s.counts.claimed == 0 && s.counts.total() <= 200 {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "history was not pruned while steps ran: {:?}",
                s.counts
            );
            actix_rt::time::sleep(Duration::from_millis(50)).await; // poll interval
        };
        assert_eq!(stats.counts.failed + stats.counts.cancelled, 0);
        assert_eq!(runs.load(Ordering::SeqCst), 200, "every new step ran once");
        for id in &fresh {
            if let Some(s) = pod.step(*id).await.unwrap() {
                assert_eq!(s.status, StepStatus::Completed);
            }
        }
        let summary = recover(&pod, false).await;
        let pruned: u64 = pod
            .recovery_history(50)
            .await
            .unwrap()
            .iter()
            .map(|c| c.steps_pruned)
            .sum::<u64>();
        assert!(
            pruned >= 6000,
            "the cycles report every pruned step: {pruned} ({summary:?})"
        );
    });
}
