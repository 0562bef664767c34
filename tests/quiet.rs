//! Idle-quiet mode (`fleet_q_actors::quiet`, `FLEET_Q_IDLE_POLL_MAX_SECONDS`)
//! with real pod processes: an idle fleet goes quiet and declares its longer
//! heartbeat, stays ready, wakes for a local submit at once on the pod that
//! took it, leaves the rest to the other pods' next wake, and goes quiet
//! again; on the Snowflake emulator, three quiet pods leave the store silent
//! for more than five minutes, measured by the emulator's statement times.

#[path = "support/emulator.rs"]
mod emulator;
mod support;

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_q_actors::{StepStatus, Store};
use serde_json::{json, Value};
use support::*;

fn quiet(p: &PodProc) -> bool {
    p.health().is_some_and(|h| h["quiet"] == json!(true))
}

fn wait_all_quiet(pods: &[PodProc], limit: Duration) {
    wait_for("every pod to go quiet", limit, || {
        pods.iter().all(quiet).then_some(())
    });
}

/// Three SQLite pods named `{prefix}{i}` with a 12 s wake period and
/// capacity 1 each, once all are quiet.
fn quiet_sqlite_fleet(prefix: &str) -> (tempfile::TempDir, Vec<PodProc>) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let env = [
        ("FLEET_Q_IDLE_POLL_MAX_SECONDS", "12".to_string()),
        ("FLEET_Q_MAX_PARALLELISM", "1".to_string()),
        ("FLEET_Q_CAPACITY_THRESHOLD", "1".to_string()),
    ];
    let pods: Vec<PodProc> = (0..3)
        .map(|i| PodProc::start(dir.path(), &db, &format!("{prefix}{i}"), &env))
        .collect();
    wait_all_quiet(&pods, Duration::from_secs(60));
    (dir, pods)
}

/// Three SQLite pods with a 12 s wake period (capacity 1 each).
#[test]
fn an_idle_fleet_goes_quiet_and_wakes_for_work() {
    let (dir, pods) = quiet_sqlite_fleet("q");
    let obs = Observer::open(&dir.path().join("q.db"));
    let c = client();

    // Each row declares the wake period and 2 x 12 + 3 s as its dead-after.
    let rows = obs.block(obs.store.pods_list()).unwrap();
    for p in &pods {
        let row = rows.iter().find(|r| r.pod_id == p.id).expect("pod row");
        assert_eq!(
            row.heartbeat_interval,
            Some(Duration::from_secs(12)),
            "{row:?}"
        );
        assert_eq!(row.dead_after, Some(Duration::from_secs(27)), "{row:?}");
    }
    // Readiness follows the declared interval: still ready long after the
    // normal window (2 x 1 s + 5 s) without a write.
    wait_for(
        "a quiet pod to stay ready past the normal window",
        Duration::from_secs(30),
        || {
            let (code, body) = get_json(&c, &pods[0], "/ready");
            assert_eq!(code, 200, "a quiet pod must stay ready: {body}");
            (body["store_last_write_ok_seconds_ago"].as_f64()? > 8.0).then_some(())
        },
    );
    // Nobody presumed anybody dead meanwhile.
    let rows = obs.block(obs.store.pods_list()).unwrap();
    assert!(
        rows.iter()
            .all(|r| r.status == fleet_q_actors::PodStatus::Up),
        "{rows:?}"
    );

    // A submit to a quiet pod starts there at once, after it declared the
    // normal interval again.
    let id = submit(&c, &pods[1], json!({"type": "sleep", "args": {"ms": 5000}}));
    let running = wait_for("the step to start", Duration::from_secs(10), || {
        let s = obs.step(&id);
        (s.status != StepStatus::Pending).then_some(s)
    });
    assert_eq!(running.claimed_by.as_deref(), Some(pods[1].id.as_str()));
    let started = running.started_ts.expect("a claimed step has a start time");
    let waited = (started - running.created_ts).to_std().unwrap_or_default();
    assert!(
        waited < Duration::from_secs(6),
        "the step waited {waited:?}: it should start at once, not at a wake"
    );
    let rows = obs.block(obs.store.pods_list()).unwrap();
    let row = rows.iter().find(|r| r.pod_id == pods[1].id).unwrap();
    assert_eq!(
        row.heartbeat_interval,
        Some(Duration::from_secs(1)),
        "a pod running work declares the normal interval: {row:?}"
    );
    assert!(!quiet(&pods[1]));
    obs.wait_completed(&id, Duration::from_secs(30));
    wait_all_quiet(&pods, Duration::from_secs(60));

    // More work than the woken pod can run: the other pods take the rest at
    // their next wake.
    let ids: Vec<String> = (0..3)
        // Each runs longer than the period, so the others must wake for them.
        .map(|_| {
            submit(
                &c,
                &pods[2],
                json!({"type": "sleep", "args": {"ms": 20000}}),
            )
        })
        .collect();
    let claimers: HashSet<String> = ids
        .iter()
        .map(|id| {
            obs.wait_completed(id, Duration::from_secs(120))
                .claimed_by
                .unwrap_or_default()
        })
        .collect();
    assert!(
        claimers.len() >= 2,
        "the other pods should have woken for the rest: {claimers:?}"
    );
    wait_all_quiet(&pods, Duration::from_secs(60));
    assert!(pods
        .iter()
        .all(|p| p.health().unwrap()["heartbeat_healthy"] == json!(true)));
}

/// A pod that wakes for a submit and dies while running it: the quiet
/// leader's next wake finds the claim, it wakes, marks the pod down and
/// requeues the step, which completes elsewhere.
#[test]
fn a_dead_pods_claim_is_recovered_while_the_leader_is_quiet() {
    let (dir, mut pods) = quiet_sqlite_fleet("k");
    let obs = Observer::open(&dir.path().join("q.db"));
    let c = client();
    let victim = wait_for("a leader", Duration::from_secs(30), || {
        pods.iter().position(|p| p.is_leader()).map(|l| (l + 1) % 3)
    });
    let id = submit(
        &c,
        &pods[victim],
        json!({"type": "sleep", "args": {"ms": 30000}}),
    );
    wait_for(
        "the step to run on the pod that took it",
        Duration::from_secs(10),
        || {
            let s = obs.step(&id);
            (s.status == StepStatus::Claimed).then_some(())
        },
    );
    let dead = pods[victim].id.clone();
    pods[victim].kill9();
    let done = wait_for(
        "the step to be recovered and run again",
        Duration::from_secs(90),
        || {
            let s = obs.step(&id);
            (s.status == StepStatus::Claimed && s.claimed_by.as_deref() != Some(dead.as_str()))
                .then_some(s)
        },
    );
    assert_eq!(done.attempt, 2, "{done:?}");
    let rows = obs.block(obs.store.pods_list()).unwrap();
    let row = rows.iter().find(|r| r.pod_id == dead).unwrap();
    assert_eq!(row.status, fleet_q_actors::PodStatus::Down, "{row:?}");
}

/// Store time (Unix seconds) now.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A wake period from 330 to 420 s whose next wake instant is 60 to 150 s
/// away, so the test sees a first quiet wake soon after the pods go quiet
/// (wakes are multiples of the period since the Unix epoch).
fn period_with_a_wake_soon() -> u64 {
    let now = unix_now();
    (330..=420u64)
        .min_by_key(|p| {
            let until = *p as f64 - now % *p as f64;
            if until >= 60.0 {
                until as u64
            } else {
                until as u64 + p
            }
        })
        .unwrap()
}

fn arrivals(port: u16, since: f64) -> Vec<f64> {
    let v = emulator::debug_stats(port, since);
    v["arrivals"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .collect()
}

/// Three pods on the Snowflake emulator at the production cadence (claims
/// every 5 s, heartbeats every 30 s, leader checks every 60 s): once idle,
/// the fleet sends no statement for more than five minutes at a stretch, so
/// a warehouse with `AUTO_SUSPEND = 300` suspends. Then a submit still
/// starts at once on the pod that took it. About eight minutes.
#[test]
fn a_quiet_fleet_leaves_the_warehouse_silent_for_five_minutes() {
    let Some(py) = emulator::python_or_skip() else {
        return;
    };
    let emu = emulator::Emulator::start(&py);
    let period = period_with_a_wake_soon();
    let dir = tempfile::tempdir().unwrap();
    let mut env = emu.env();
    for (k, v) in [
        ("FLEET_Q_HEARTBEAT_INTERVAL_SECONDS", "30"),
        ("FLEET_Q_DEAD_POD_THRESHOLD_SECONDS", "180"),
        ("FLEET_Q_LEADER_CHECK_INTERVAL_SECONDS", "60"),
        ("FLEET_Q_RECOVERY_INTERVAL_SECONDS", "300"),
        ("FLEET_Q_CLAIM_INTERVAL_SECONDS", "5"),
    ] {
        env.push((k, v.to_string()));
    }
    env.push(("FLEET_Q_IDLE_POLL_MAX_SECONDS", period.to_string()));
    let pods: Vec<PodProc> = (0..3)
        .map(|i| {
            PodProc::start(
                dir.path(),
                &dir.path().join("unused.db"),
                &format!("s{i}"),
                &env,
            )
        })
        .collect();
    let c = client();
    wait_all_quiet(&pods, Duration::from_secs(120));
    let quiet_at = unix_now();
    // The first wake after going quiet, then the next: the gap between the
    // two bursts is the silence.
    let first_wake = ((quiet_at / period as f64).floor() + 1.0) * period as f64;
    let second_wake = first_wake + period as f64;
    let window = (period as f64 / 12.0).min(30.0);
    wait_for(
        "the second quiet wake",
        Duration::from_secs(2 * period + 60),
        || {
            let a = arrivals(emu.port, second_wake);
            // The whole second burst: past the window, with statements in it.
            (unix_now() > second_wake + window + 10.0 && !a.is_empty()).then_some(())
        },
    );
    let times = arrivals(emu.port, quiet_at);
    let (mut longest, mut at) = (0.0f64, 0.0f64);
    for w in times.windows(2) {
        if w[1] - w[0] > longest {
            (longest, at) = (w[1] - w[0], w[0]);
        }
    }
    let per_wake = times
        .iter()
        .filter(|t| **t >= second_wake && **t < second_wake + window + 15.0)
        .count();
    eprintln!(
        "period {period} s: {} statements since the fleet went quiet, {per_wake} at the second wake; longest silence {longest:.1} s from {at:.1}",
        times.len()
    );
    assert!(
        longest >= 300.0,
        "the fleet was never silent for 5 minutes (longest {longest:.1} s): {times:?}"
    );
    // Every statement after quiet fell in a wake's window (the pods' wake
    // offsets are under `window`; a burst lasts a few seconds).
    for t in &times {
        let into = t % period as f64;
        assert!(
            into < window + 15.0 || *t < first_wake,
            "a statement at {t:.1} was {into:.1} s into the period, outside the wake window"
        );
    }
    for p in &pods {
        assert_eq!(p.health().unwrap()["heartbeat_healthy"], json!(true));
    }

    // Still a queue: a submit starts at once on the pod that took it.
    let id = submit(&c, &pods[2], json!({"type": "noop"}));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = fleet_q::storage::snowflake::SnowflakeStore::open(
        &emu.settings(),
        fleet_q_actors::Backoff::default(),
    )
    .unwrap();
    let step = wait_for("the step to complete", Duration::from_secs(60), || {
        let s = rt
            .block_on(store.step_get(id.parse().unwrap()))
            .unwrap()
            .unwrap();
        (s.status == StepStatus::Completed).then_some(s)
    });
    assert_eq!(step.claimed_by.as_deref(), Some(pods[2].id.as_str()));
    let rows = rt.block_on(store.pods_list()).unwrap();
    assert!(
        rows.iter()
            .all(|r| r.status == fleet_q_actors::PodStatus::Up),
        "{rows:?}"
    );
}
