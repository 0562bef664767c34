//! Pod processes sharing one SQLite file: exactly-once processing, SIGKILL of a
//! worker and of the leader, graceful SIGTERM, a zombie (SIGSTOP) pod whose
//! late results are fenced, and a leader paused past its lease. Steps run through the `http` handler against a
//! recording service, so every execution is observed.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use fleet_q_actors::{PodStatus, StepStatus, Store};
use serde_json::{json, Value};
use support::*;

fn rec_env(rec: &Recorder) -> Vec<(&'static str, String)> {
    vec![("FLEET_Q_HTTP_HANDLERS", format!("rec={}", rec.url))]
}

#[test]
fn three_pods_process_ten_thousand_steps_each_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.db");
    let rec = Recorder::start();
    let env = rec_env(&rec);
    let pods: Vec<PodProc> = (0..3)
        .map(|i| PodProc::start(dir.path(), &db, &format!("pod-{i}"), &env))
        .collect();
    let n = 10_000;
    let bodies: Vec<Value> = (0..n)
        .map(|i| json!({ "type": "rec", "args": { "i": i }, "priority": i % 5 }))
        .collect();
    // Submit through all three pods.
    let mut ids = Vec::new();
    for (k, chunk) in bodies.chunks(n / 3 + 1).enumerate() {
        ids.extend(submit_many(&pods[k], chunk.to_vec(), 4));
    }
    assert_eq!(ids.len(), n);
    let obs = Observer::open(&db);
    let stats = obs.wait_all_terminal(n as u64, Duration::from_secs(240));
    assert_eq!(stats.counts.completed, n as u64, "{stats:?}");
    let execs = rec.executions();
    let want: HashSet<&String> = ids.iter().collect();
    assert_eq!(execs.len(), n, "every step executed");
    for (id, calls) in &execs {
        assert!(want.contains(id), "unknown step {id} executed");
        assert_eq!(calls.len(), 1, "step {id} executed {} times", calls.len());
    }
    // The work was shared.
    let mut by_pod = std::collections::HashMap::<String, usize>::new();
    for calls in execs.values() {
        *by_pod.entry(calls[0].pod_id.clone()).or_default() += 1;
    }
    assert_eq!(by_pod.len(), 3, "every pod ran steps: {by_pod:?}");
}

/// Waits for a pod other than `not` to lead; returns its index.
fn wait_new_leader(pods: &[PodProc], not: &[usize], limit: Duration) -> usize {
    wait_for("a new leader", limit, || {
        (0..pods.len()).find(|i| !not.contains(i) && pods[*i].is_leader())
    })
}

#[test]
fn sigkill_of_a_worker_and_of_the_leader_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.db");
    let rec = Recorder::start();
    let env = rec_env(&rec);
    let mut pods: Vec<PodProc> = Vec::new();
    for i in 0..3 {
        pods.push(PodProc::start(dir.path(), &db, &format!("pod-{i}"), &env));
    }
    let leader = wait_for("a leader", Duration::from_secs(15), || {
        (0..3).find(|i| pods[*i].is_leader())
    });
    let n = 600;
    let bodies: Vec<Value> = (0..n)
        // Long enough (600 × 300 ms over 24 slots: about 8 s of work) that the
        // victim still holds steps after the submits, on a loaded machine too.
        .map(|i| json!({ "type": "rec", "args": { "i": i, "sleep_ms": 300 }, "max_retries": 5 }))
        .collect();
    let ids = submit_many(&pods[(leader + 1) % 3], bodies, 4);
    let obs = Observer::open(&db);

    // Kill a worker while it holds steps.
    let victim = (0..3).find(|i| *i != leader).unwrap();
    let victim_name = pods[victim].id.clone();
    wait_for("the victim to hold steps", Duration::from_secs(30), || {
        let h = pods[victim].health()?;
        (h["current_capacity"].as_u64()? > 0).then_some(())
    });
    pods[victim].kill9();

    // Then kill the leader; another pod must take over within the bound:
    // dead threshold (3 s) + one leader check (1 s), plus slack for a busy machine.
    let old_leader_name = pods[leader].id.clone();
    pods[leader].kill9();
    let new_leader = wait_new_leader(&pods, &[victim, leader], Duration::from_secs(15));
    assert!(pods[new_leader].is_leader());

    let stats = obs.wait_all_terminal(n as u64, Duration::from_secs(180));
    assert_eq!(stats.counts.completed, n as u64, "{stats:?}");
    let execs = rec.executions();
    for id in &ids {
        let calls = execs
            .get(id)
            .unwrap_or_else(|| panic!("step {id} never ran"));
        if calls.len() > 1 {
            // Only steps held by a killed pod may run twice: every execution but
            // the last was on a killed pod.
            for c in &calls[..calls.len() - 1] {
                assert!(
                    c.pod_id == victim_name || c.pod_id == old_leader_name,
                    "step {id} re-ran though its earlier run was on live pod {}",
                    c.pod_id
                );
            }
        }
        assert_eq!(obs.step(id).status, StepStatus::Completed);
    }
    // Both dead pods were marked down by the new leader.
    let pods_rows = obs.block(obs.store.pods_list()).unwrap();
    for name in [&victim_name, &old_leader_name] {
        let row = pods_rows.iter().find(|p| &p.pod_id == name).unwrap();
        assert_eq!(row.status, PodStatus::Down, "{name} not marked down");
    }
}

#[test]
fn sigterm_finishes_running_steps_releases_the_rest_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.db");
    let rec = Recorder::start();
    let mut env = rec_env(&rec);
    env.push(("FLEET_Q_MAX_PARALLELISM", "4".into()));
    env.push(("FLEET_Q_CAPACITY_THRESHOLD", "1".into()));
    env.push(("FLEET_Q_SHUTDOWN_GRACE_SECONDS", "2".into()));
    let mut pod = PodProc::start(dir.path(), &db, "solo", &env);
    let c = client();
    let short: Vec<String> = (0..2)
        .map(|_| submit(&c, &pod, json!({"type": "rec", "args": {"sleep_ms": 500}})))
        .collect();
    let long: Vec<String> = (0..2)
        .map(|_| {
            submit(
                &c,
                &pod,
                json!({"type": "rec", "args": {"sleep_ms": 60000}}),
            )
        })
        .collect();
    wait_for("all four steps to run", Duration::from_secs(20), || {
        (rec.calls().len() == 4).then_some(())
    });
    pod.term();
    let status = pod.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "log:\n{}", pod.log_text());
    let obs = Observer::open(&db);
    for id in &short {
        assert_eq!(obs.step(id).status, StepStatus::Completed);
    }
    for id in &long {
        let s = obs.step(id);
        assert_eq!(s.status, StepStatus::Pending, "released");
        assert_eq!(s.retry_count, 0, "no retry spent");
        assert!(s.claimed_by.is_none());
    }
    let rows = obs.block(obs.store.pods_list()).unwrap();
    assert_eq!(
        rows[0].status,
        PodStatus::Down,
        "final heartbeat marks the pod down"
    );
}

#[test]
fn a_zombie_pod_is_fenced_and_rejoins_under_a_new_identity() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.db");
    let rec = Recorder::start();
    let env = rec_env(&rec);
    // The eldest pod leads; the zombie is the younger one.
    let leader = PodProc::start(dir.path(), &db, "elder", &env);
    wait_for("elder to lead", Duration::from_secs(15), || {
        leader.is_leader().then_some(())
    });
    let mut zenv = env.clone();
    zenv.push(("FLEET_Q_MAX_PARALLELISM", "1".into()));
    zenv.push(("FLEET_Q_CAPACITY_THRESHOLD", "1".into()));
    let zombie = PodProc::start(dir.path(), &db, "zombie", &zenv);
    let c = client();
    let (id, first) = a_step_run_by(&c, &rec, &zombie);
    zombie.stop();
    // The elder presumes it dead (3 s), requeues the step and runs it again.
    let rerun = wait_for(
        "the step to run again elsewhere",
        Duration::from_secs(30),
        || {
            let calls = rec.executions().get(&id).cloned()?;
            calls.iter().find(|c| c.pod_id == leader.id).cloned()
        },
    );
    assert!(rerun.attempt > first.attempt);
    let obs = Observer::open(&db);
    wait_for("the re-run to complete", Duration::from_secs(30), || {
        (obs.step(&id).status == StepStatus::Completed).then_some(())
    });
    zombie.cont();
    // The zombie's late result is rejected by fencing, and it rejoins.
    let h = rejoined_after_a_fenced_result(&zombie, Duration::from_secs(30));
    assert_eq!(h["generation"], json!(1));
    let s = obs.step(&id);
    assert_eq!(s.status, StepStatus::Completed);
    assert_eq!(
        s.result.as_ref().unwrap()["pod"],
        json!(leader.id),
        "the re-run's result stands"
    );
    assert_eq!(s.last_error, None, "the success cleared the recovery note");
    // The zombie counts its late result as fenced, never as a completion.
    assert_late_result_fenced(&client(), &zombie);
    assert_eq!(s.attempt, rerun.attempt);
    let rows = obs.block(obs.store.pods_list()).unwrap();
    let old = rows.iter().find(|p| p.pod_id == zombie.id).unwrap();
    assert_eq!(old.status, PodStatus::Down);
    assert_eq!(
        old.capacity_in_use, 0,
        "a pod marked down reports nothing running"
    );
    let new = rows
        .iter()
        .find(|p| p.pod_id == format!("{}-r1", zombie.id))
        .unwrap();
    assert_eq!(new.status, PodStatus::Up);
    assert!(new.birth_ts > old.birth_ts);
}

/// The leader paused past its lease (SIGSTOP): the next eldest pod takes over
/// and recovers the step the paused leader held. On resume the old leader's
/// late result is fenced, it learns it was marked down and rejoins under a new
/// identity, younger than the new leader, so leadership does not move back.
#[test]
fn a_paused_leader_is_replaced_and_does_not_take_leadership_back_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.db");
    let rec = Recorder::start();
    let env = rec_env(&rec);
    let mut lenv = env.clone();
    lenv.push(("FLEET_Q_MAX_PARALLELISM", "1".into()));
    lenv.push(("FLEET_Q_CAPACITY_THRESHOLD", "1".into()));
    let leader = PodProc::start(dir.path(), &db, "paused", &lenv);
    wait_for("the first pod to lead", Duration::from_secs(15), || {
        leader.is_leader().then_some(())
    });
    let next = PodProc::start(dir.path(), &db, "next", &env);
    let c = client();
    let (id, first) = a_step_run_by(&c, &rec, &leader);
    leader.stop();
    wait_for("the next pod to lead", Duration::from_secs(30), || {
        next.is_leader().then_some(())
    });
    let rerun = wait_for(
        "the paused leader's step to run again",
        Duration::from_secs(30),
        || {
            let calls = rec.executions().get(&id).cloned()?;
            calls.iter().find(|c| c.pod_id == next.id).cloned()
        },
    );
    assert!(rerun.attempt > first.attempt);
    let obs = Observer::open(&db);
    wait_for("the re-run to complete", Duration::from_secs(30), || {
        (obs.step(&id).status == StepStatus::Completed).then_some(())
    });
    leader.cont();
    let h = rejoined_after_a_fenced_result(&leader, Duration::from_secs(30));
    assert_eq!(h["is_leader"], json!(false), "{h}");
    assert!(
        next.is_leader(),
        "leadership stays with the pod that took it"
    );
    let s = obs.step(&id);
    assert_eq!(s.status, StepStatus::Completed);
    assert_eq!(s.attempt, rerun.attempt);
    assert_eq!(
        s.result.as_ref().unwrap()["pod"],
        json!(next.id),
        "the re-run's result stands"
    );
    let rows = obs.block(obs.store.pods_list()).unwrap();
    let old = rows.iter().find(|p| p.pod_id == leader.id).unwrap();
    assert_eq!(old.status, PodStatus::Down);
    let rejoined = rows
        .iter()
        .find(|p| p.pod_id == format!("{}-r1", leader.id))
        .unwrap();
    let taker = rows.iter().find(|p| p.pod_id == next.id).unwrap();
    assert!(
        rejoined.birth_ts > taker.birth_ts,
        "the rejoined pod is younger than the leader, so the eldest-live rule keeps it out"
    );
    // Work submitted to the rejoined pod still runs.
    let late = submit(&c, &leader, json!({"type": "rec", "args": {}}));
    obs.wait_completed(&late, Duration::from_secs(30));
}
