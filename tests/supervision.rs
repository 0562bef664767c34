//! Fault isolation per actor, in real pod processes, with fault injection compiled
//! into the test build (`failpoints`): a panic or fatal error restarts that actor,
//! not the pod; the pod keeps serving and completing steps; restart counts show in
//! `/health`; past the restart budget the pod exits non-zero and a surviving pod
//! recovers its steps.

mod support;

use std::time::Duration;

use fleet_q_actors::StepStatus;
use serde_json::json;
use support::*;

const ACTORS: [&str; 6] = fleet_q_actors::actors::ACTOR_NAMES;

fn inject(c: &reqwest::blocking::Client, pod: &PodProc, actor: &str, kind: &str) {
    let r = c
        .post(pod.url(&format!("/debug/fault/{actor}/{kind}")))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "inject {kind} into {actor}");
}

fn restarts(pod: &PodProc, actor: &str) -> Option<(u64, String)> {
    let h = pod.health()?;
    let a = &h["actors"][actor];
    Some((a["restarts"].as_u64()?, a["state"].as_str()?.to_string()))
}

#[test]
fn every_actor_restarts_after_a_panic_or_fatal_error_and_the_pod_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.db");
    // Twelve faults follow: raise the budget so they do not end the pod.
    let pod = PodProc::start(
        dir.path(),
        &db,
        "solo",
        &[("FLEET_Q_ACTOR_RESTART_LIMIT", "100".into())],
    );
    let c = client();
    let obs = Observer::open(&db);
    for (round, kind) in ["panic", "fatal"].into_iter().enumerate() {
        for actor in ACTORS {
            inject(&c, &pod, actor, kind);
            wait_for(
                &format!("{actor} to restart after a {kind}"),
                Duration::from_secs(10),
                || {
                    let (n, state) = restarts(&pod, actor)?;
                    (n == round as u64 + 1 && state == "running").then_some(())
                },
            );
            // Still serving and completing steps.
            let id = submit(&c, &pod, json!({"type": "noop"}));
            wait_for(
                &format!("a step to complete after {actor} restarted"),
                Duration::from_secs(15),
                || (obs.step(&id).status == StepStatus::Completed).then_some(()),
            );
        }
    }
    let h = pod.health().unwrap();
    assert_eq!(h["status"], json!("healthy"));
    assert_eq!(
        h["is_leader"],
        json!(true),
        "leadership restored after restarts"
    );
    let fault = h["actors"]["storage"]["last_fault"].as_str().unwrap();
    assert_eq!(fault, "injected fatal error");
}

#[test]
fn past_the_restart_budget_the_pod_exits_and_a_survivor_recovers_its_steps() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.db");
    let rec = Recorder::start();
    let env = vec![("FLEET_Q_HTTP_HANDLERS", format!("rec={}", rec.url))];
    let survivor = PodProc::start(dir.path(), &db, "survivor", &env);
    let mut doomed = PodProc::start(dir.path(), &db, "doomed", &env);
    let c = client();
    // The doomed pod takes long steps through its own submits.
    let ids: Vec<String> = (0..3)
        .map(|_| {
            submit(
                &c,
                &doomed,
                json!({"type": "rec", "args": {"sleep_ms": 60000}}),
            )
        })
        .collect();
    wait_for(
        "the doomed pod to hold steps",
        Duration::from_secs(20),
        || {
            let held = rec.calls().iter().filter(|c| c.pod_id == doomed.id).count();
            (held >= 1).then_some(())
        },
    );
    // Default budget: 5 restarts in 30 s. The sixth fault ends the pod, which may
    // exit before it finishes answering that request.
    for _ in 0..5 {
        inject(&c, &doomed, "claimer", "panic");
    }
    let last = c
        .post(doomed.url("/debug/fault/claimer/panic"))
        .send()
        .map(|r| r.status().as_u16());
    assert!(
        matches!(last, Ok(202) | Err(_)),
        "the sixth fault was refused: {last:?}"
    );
    let status = doomed.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(70), "log:\n{}", doomed.log_text());
    // The survivor presumes it dead and recovers what it held.
    let obs = Observer::open(&db);
    wait_for(
        "the survivor to run the doomed pod's steps",
        Duration::from_secs(30),
        || {
            let execs = rec.executions();
            ids.iter()
                .all(|id| {
                    execs
                        .get(id)
                        .is_some_and(|v| v.iter().any(|c| c.pod_id == survivor.id))
                })
                .then_some(())
        },
    );
    for id in &ids {
        let s = obs.step(id);
        assert_eq!(s.claimed_by.as_deref(), Some(survivor.id.as_str()), "{s:?}");
    }
    drop(survivor);
}
