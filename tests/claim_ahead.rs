//! Claim-ahead (`PodConfig::claim_ahead`, `FLEET_Q_CLAIM_AHEAD`), in process on
//! a real SQLite file: a pod holds claimed steps beyond its capacity, runs no
//! more than its capacity at once, keeps the waiting steps through
//! self-reconciliation, gives them back at once on shutdown, and never starts
//! one while its heartbeat is unhealthy or under an identity it has left; and a `fleet-q serve` process takes
//! the setting from `FLEET_Q_CLAIM_AHEAD` and reports the waiting steps.

mod support;

use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fleet_q::storage::sqlite::{SqliteOptions, SqliteStore};
use fleet_q_actors::testkit::steps;
use fleet_q_actors::*;
use serde_json::{json, Value};
use support::{client, wait_for, Observer, PodProc};
use tokio::sync::watch;

/// Blocks every run until the gate opens; counts starts and the most runs at
/// once.
struct Gate {
    open: watch::Receiver<bool>,
    now: Arc<AtomicU32>,
    most: Arc<AtomicU32>,
    starts: Arc<AtomicU32>,
    runs: Runs,
}

/// Every run's `(step, attempt, pod)`.
type Runs = Arc<std::sync::Mutex<Vec<(StepId, u32, String)>>>;

#[async_trait]
impl StepHandler for Gate {
    async fn run(&self, ctx: StepContext) -> Result<Value, HandlerError> {
        self.runs
            .lock()
            .unwrap()
            .push((ctx.step.step_id, ctx.attempt, ctx.pod_id.clone()));
        self.starts.fetch_add(1, Ordering::SeqCst);
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        let mut open = self.open.clone();
        let _ = open.wait_for(|o| *o).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(Value::Null)
    }
}

/// The gate's controls and counters.
struct Gated {
    open: watch::Sender<bool>,
    most: Arc<AtomicU32>,
    starts: Arc<AtomicU32>,
    runs: Runs,
}

fn gated() -> (HandlerRegistry, Gated) {
    let (tx, rx) = watch::channel(false);
    let (now, most, starts) = (Arc::default(), Arc::default(), Arc::default());
    let runs: Runs = Arc::default();
    let mut h = HandlerRegistry::new();
    h.register(
        "gate",
        Gate {
            open: rx,
            now,
            most: Arc::clone(&most),
            starts: Arc::clone(&starts),
            runs: Arc::clone(&runs),
        },
    );
    (
        h,
        Gated {
            open: tx,
            most,
            starts,
            runs,
        },
    )
}

fn config(dir: &std::path::Path, capacity: u32, ahead: u32) -> PodConfig {
    PodConfig {
        pod_id: "ahead".into(),
        max_capacity: capacity,
        claim_ahead: ahead,
        heartbeat_interval: Duration::from_secs(1),
        claim_interval: Duration::from_millis(100),
        leader_check_interval: Duration::from_secs(1),
        dead_pod_threshold: Duration::from_secs(30),
        reconcile_interval: None,
        shutdown_grace: Duration::from_secs(30),
        ledger_path: Some(dir.join("ledger.db")),
        ..Default::default()
    }
}

/// Polls `check` until it yields, failing the test after `limit`.
async fn until<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix_rt::time::sleep(Duration::from_millis(10)).await; // poll interval
    }
}

/// How many steps `pod_id` holds claimed, by the store.
async fn held(store: &SqliteStore, pod_id: &str) -> usize {
    store.steps_held(pod_id, 1000).await.unwrap().0.len()
}

/// Successful calls of a store operation made through this process's pods.
fn store_calls(op: &str) -> u64 {
    let prefix = format!("fleet_q_store_calls_total{{op=\"{op}\",outcome=\"ok\"}} ");
    fleet_q_actors::metrics::render()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0)
}

/// A pod started on a fresh SQLite file, with gate steps submitted through it
/// and held.
struct Holding {
    store: Arc<SqliteStore>,
    pod: Rc<Pod>,
    ids: Vec<StepId>,
    /// The pod's id when it claimed them.
    me: String,
}

/// Starts a pod on `db`, submits `n` gate steps and waits until it holds
/// `held` of them, `waiting` of those waiting for a slot.
async fn start_holding(
    db: &std::path::Path,
    cfg: PodConfig,
    h: HandlerRegistry,
    n: usize,
    (held_n, waiting): (usize, usize),
) -> Holding {
    let store = Arc::new(SqliteStore::open(db, SqliteOptions::default()).unwrap());
    store.schema_init().await.unwrap();
    let pod = Rc::new(Pod::start(cfg, store.clone(), h).unwrap());
    let ids: Vec<StepId> = pod
        .submit(steps("gate", n))
        .await
        .unwrap()
        .iter()
        .map(|i| i.step_id)
        .collect();
    let me = pod.state().pod_id();
    until("the steps to be held", Duration::from_secs(20), || async {
        (held(&store, &me).await == held_n && pod.state().waiting.len() == waiting).then_some(())
    })
    .await;
    Holding {
        store,
        pod,
        ids,
        me,
    }
}

#[test]
fn a_pod_holds_steps_beyond_its_capacity_runs_at_most_its_capacity_and_reconciliation_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ahead.db");
    let (h, gate) = gated();
    let mut cfg = config(dir.path(), 2, 3);
    // The only test here that reconciles: the steps_held count below is its.
    cfg.reconcile_interval = Some(Duration::from_millis(200));
    actix_rt::System::new().block_on(async move {
        // Capacity 2 + claim-ahead 3: five claimed, two running, three waiting.
        let Holding {
            store,
            pod,
            ids,
            me,
        } = start_holding(&db, cfg, h, 8, (5, 3)).await;
        assert_eq!(pod.state().running_count(), 2);
        assert_eq!(pod.state().in_flight(), 5);
        assert_eq!(store.queue_stats().await.unwrap().counts.pending, 3);
        // Reconciliation runs (three times, so past its one-period grace) and
        // releases none of the waiting steps: they are held, not strays.
        let before = store_calls("steps_held");
        until("three reconciliations", Duration::from_secs(20), || async {
            (store_calls("steps_held") >= before + 3).then_some(())
        })
        .await;
        assert_eq!(held(&store, &me).await, 5, "nothing was released");
        gate.open.send(true).unwrap();
        until(
            "every step to complete",
            Duration::from_secs(30),
            || async { (store.queue_stats().await.unwrap().counts.completed == 8).then_some(()) },
        )
        .await;
        assert!(
            gate.most.load(Ordering::SeqCst) <= 2,
            "ran {} at once on 2 slots",
            gate.most.load(Ordering::SeqCst)
        );
        for id in ids {
            let s = store.step_get(id).await.unwrap().unwrap();
            assert_eq!(s.attempt, 1, "claimed once, never released: {s:?}");
        }
        assert_eq!(gate.starts.load(Ordering::SeqCst), 8);
        assert_eq!(pod.state().waiting.len(), 0);
        pod.shutdown().await;
    });
}

#[test]
fn shutdown_gives_waiting_steps_back_before_the_running_ones_finish() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("drain.db");
    let (h, gate) = gated();
    let cfg = config(dir.path(), 1, 2);
    actix_rt::System::new().block_on(async move {
        let Holding { store, pod, me, .. } = start_holding(&db, cfg, h, 3, (3, 2)).await;
        let stopping = {
            let pod = pod.clone();
            actix_rt::spawn(async move { pod.shutdown().await })
        };
        // The two waiting steps are pending again while the running one
        // still runs (the grace is 30 s and its gate is shut).
        until(
            "the waiting steps to be pending",
            Duration::from_secs(20),
            || async { (store.queue_stats().await.unwrap().counts.pending == 2).then_some(()) },
        )
        .await;
        assert_eq!(held(&store, &me).await, 1, "the running step is still held");
        assert!(!stopping.is_finished());
        gate.open.send(true).unwrap();
        let report = stopping.await.unwrap();
        assert_eq!(report.released_waiting, 2);
        assert_eq!(report.released, 0, "the running step finished in its grace");
        let stats = store.queue_stats().await.unwrap().counts;
        assert_eq!((stats.completed, stats.pending), (1, 2));
        assert_eq!(
            gate.starts.load(Ordering::SeqCst),
            1,
            "waiting steps never ran"
        );
    });
}

#[test]
fn waiting_steps_never_start_while_the_heartbeat_is_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("unhealthy.db");
    let (h, gate) = gated();
    let cfg = config(dir.path(), 1, 2);
    actix_rt::System::new().block_on(async move {
        let Holding {
            store, pod, ids, ..
        } = start_holding(&db, cfg, h, 3, (3, 2)).await;
        assert!(pod.inject_heartbeat_failure(Duration::from_secs(3600)));
        until("the heartbeat to fail", Duration::from_secs(20), || async {
            (!pod.state().heartbeat_healthy()).then_some(())
        })
        .await;
        // The running step finishes and frees its slot: the waiting steps are
        // given back, not started.
        gate.open.send(true).unwrap();
        until(
            "the waiting steps to be given back",
            Duration::from_secs(20),
            || async {
                let c = store.queue_stats().await.unwrap().counts;
                (c.completed == 1 && c.pending == 2).then_some(())
            },
        )
        .await;
        assert_eq!(gate.starts.load(Ordering::SeqCst), 1);
        assert_eq!(pod.state().waiting.len(), 0);
        assert_eq!(pod.state().in_flight(), 0);
        // Healthy again: they are claimed again and run.
        pod.inject_heartbeat_failure(Duration::ZERO);
        until(
            "every step to complete",
            Duration::from_secs(30),
            || async { (store.queue_stats().await.unwrap().counts.completed == 3).then_some(()) },
        )
        .await;
        let mut attempts: Vec<u32> = Vec::new();
        for id in ids {
            let s = store.step_get(id).await.unwrap().unwrap();
            assert_eq!(s.retry_count, 0, "giving back spends no retry: {s:?}");
            attempts.push(s.attempt);
        }
        attempts.sort();
        assert_eq!(
            attempts,
            vec![1, 2, 2],
            "the two given back were claimed again"
        );
        pod.shutdown().await;
    });
}

/// A pod marked down while steps wait on it (as recovery does to a pod paused
/// past its lease) rejoins under a new identity; the steps that waited under
/// the old one were requeued, so they are dropped, never started on the old
/// lease, and run once under the new identity.
#[test]
fn waiting_steps_of_an_identity_the_pod_left_are_dropped_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rejoin.db");
    let (h, gate) = gated();
    let cfg = config(dir.path(), 1, 2);
    let db2 = db.clone();
    actix_rt::System::new().block_on(async move {
        let Holding {
            store,
            pod,
            ids,
            me: old,
        } = start_holding(&db, cfg, h, 3, (3, 2)).await;
        // What a leader's recovery cycle writes for a pod it found dead: the
        // pod is down and its claims are pending again, a retry spent.
        let c = rusqlite::Connection::open(&db2).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute(
            "UPDATE POD_HEALTH SET status = 'down', capacity_in_use = 0 WHERE pod_id = ?1",
            [&old],
        )
        .unwrap();
        let requeued = c
            .execute(
                "UPDATE STEP_TRACKER SET status = 'pending', claimed_by = NULL, \
                 retry_count = retry_count + 1 WHERE claimed_by = ?1",
                [&old],
            )
            .unwrap();
        assert_eq!(requeued, 3);
        until(
            "the pod to rejoin, healthy",
            Duration::from_secs(20),
            || async {
                (pod.state().generation() == 1 && pod.state().heartbeat_healthy()).then_some(())
            },
        )
        .await;
        let new = pod.state().pod_id();
        assert_ne!(new, old);
        // The old running step finishes (its result is fenced); its slot goes
        // to no waiting step of the old identity.
        gate.open.send(true).unwrap();
        until(
            "every step to complete",
            Duration::from_secs(30),
            || async { (store.queue_stats().await.unwrap().counts.completed == 3).then_some(()) },
        )
        .await;
        let runs = gate.runs.lock().unwrap().clone();
        let under_old: Vec<_> = runs.iter().filter(|r| r.2 == old).collect();
        assert_eq!(
            under_old.len(),
            1,
            "only the running step ran as {old}: {runs:?}"
        );
        for id in &ids {
            let s = store.step_get(*id).await.unwrap().unwrap();
            assert_eq!(s.claimed_by.as_deref(), Some(new.as_str()), "{s:?}");
            let mine: Vec<_> = runs.iter().filter(|r| r.0 == *id && r.2 == new).collect();
            assert_eq!(mine.len(), 1, "each step ran once as {new}: {runs:?}");
        }
        assert_eq!(runs.len(), 4);
        assert_eq!(pod.state().fenced_results(), 1, "the old run's result");
        pod.shutdown().await;
    });
}

/// `fleet-q serve` with `FLEET_Q_CLAIM_AHEAD=2` on one slot: `/metrics` and
/// `/health` show one step running and two waiting, and SIGTERM gives all
/// three back (the waiting two first) without spending a retry.
#[test]
fn a_served_pod_takes_claim_ahead_from_the_environment_and_reports_waiting_steps() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("served.db");
    let env = [
        ("FLEET_Q_CLAIM_AHEAD", "2".to_string()),
        ("FLEET_Q_MAX_PARALLELISM", "1".to_string()),
        ("FLEET_Q_CAPACITY_THRESHOLD", "1".to_string()),
        ("FLEET_Q_SHUTDOWN_GRACE_SECONDS", "1".to_string()),
    ];
    let mut pod = PodProc::start(dir.path(), &db, "served", &env);
    pod.wait_healthy();
    let c = client();
    let ids: Vec<String> = (0..3)
        .map(|_| support::submit(&c, &pod, json!({"type": "sleep", "args": {"ms": 600_000}})))
        .collect();
    wait_for("one running, two waiting", Duration::from_secs(30), || {
        let m = c.get(pod.url("/metrics")).send().ok()?.text().ok()?;
        let has = |line: &str| m.lines().any(|l| l == line);
        (has("fleet_q_steps_waiting_local 2") && has("fleet_q_capacity_in_use 1")).then_some(())
    });
    let health = pod.health().unwrap();
    assert_eq!(health["current_capacity"], json!(1), "{health}");
    let obs = Observer::open(&db);
    assert_eq!(obs.stats().counts.claimed, 3, "all three are claimed");
    pod.term();
    assert!(pod.wait_exit(Duration::from_secs(30)).success());
    let log = pod.log_text();
    let stopped = log
        .lines()
        .find(|l| l.contains("\"message\":\"stopped\""))
        .unwrap_or_else(|| panic!("no stop line in:\n{log}"));
    let line: Value = serde_json::from_str(stopped).unwrap();
    // JSON logs carry each event's fields at the top level.
    assert_eq!(
        (&line["released_waiting"], &line["released"]),
        (&json!(2), &json!(1)),
        "{stopped}"
    );
    for id in &ids {
        let s = obs.step(id);
        assert_eq!(s.status, StepStatus::Pending, "{s:?}");
        assert_eq!(s.retry_count, 0, "giving back spends no retry: {s:?}");
    }
}
