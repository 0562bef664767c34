//! Queues with real pod processes on one SQLite file: a queue's concurrency
//! limit holds across the fleet, a paused queue starts nothing (recovered
//! steps included) until resumed, a busy queue does not starve a small one,
//! and a queue is served by whichever pod serves it. The CLI drives pause and
//! resume.

mod support;

use std::time::Duration;

use fleet_q_actors::Store;
use serde_json::{json, Value};
use support::*;

fn queue_claimed(obs: &Observer, name: &str) -> u64 {
    obs.block(obs.store.queues_list())
        .unwrap()
        .into_iter()
        .find(|q| q.settings.name == name)
        .map_or(0, |q| q.claimed)
}

fn put_queue(c: &reqwest::blocking::Client, pod: &PodProc, name: &str, body: Value) -> Value {
    let r = c
        .put(pod.url(&format!("/admin/queues/{name}")))
        .json(&body)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().unwrap()
}

fn cli(pod: &PodProc, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-q"))
        .args(args)
        .args(["--url", &pod.url("")])
        .env_remove("FLEET_Q_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn three_pods_never_hold_more_than_a_queues_max_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let pods: Vec<PodProc> = (0..3)
        .map(|i| {
            PodProc::start(
                dir.path(),
                &db,
                &format!("mc{i}"),
                &[("FLEET_Q_MAX_PARALLELISM", "10".into())],
            )
        })
        .collect();
    let c = client();
    let v = put_queue(&c, &pods[0], "q", json!({"max_concurrency": 5}));
    assert_eq!(v["max_concurrency"], 5);
    let bodies = (0..200)
        .map(|_| json!({"type": "sleep", "args": {"ms": 40}, "queue": "q"}))
        .collect();
    submit_many(&pods[1], bodies, 4);
    let obs = Observer::open(&db);
    // Sampled at every poll until all are done: never more than 5 claimed.
    let mut most = 0;
    wait_for(
        "all 200 steps of q to complete",
        Duration::from_secs(120),
        || {
            let claimed = queue_claimed(&obs, "q");
            most = most.max(claimed);
            assert!(claimed <= 5, "{claimed} steps of q claimed at once");
            (obs.stats().counts.completed == 200).then_some(())
        },
    );
    assert!(
        most >= 2,
        "the limit was reached by several pods at once (most {most})"
    );
}

/// 3 pods, a queue at 20 steps/s with a burst of 5, 400 `noop` steps. By the
/// steps' start stamps (the store's clock, the same one the bucket uses), no
/// window holds more starts than the bucket allows: for the i-th to the j-th
/// start, `j - i + 1 <= 5 + 20 * (t_j - t_i)`. The run therefore spans at least
/// (400 - 5) / 20 = 19.75 s. The pods run at the production claim interval (5 s):
/// without the store's pacing hint they would start 5 steps each per interval,
/// 3/s, and take over two minutes; with it the run takes about 20 s (the bound
/// below leaves a 2x margin for a loaded machine).
#[test]
fn a_rate_limited_queue_starts_no_faster_than_its_bucket_across_three_pods() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let pods: Vec<PodProc> = (0..3)
        .map(|i| {
            PodProc::start(
                dir.path(),
                &db,
                &format!("rate{i}"),
                &[("FLEET_Q_CLAIM_INTERVAL_SECONDS", "5".into())],
            )
        })
        .collect();
    let c = client();
    let v = put_queue(
        &c,
        &pods[0],
        "r",
        json!({"rate_per_second": 20.0, "burst": 5}),
    );
    assert_eq!(
        (v["rate_per_second"].as_f64(), v["burst"].as_u64()),
        (Some(20.0), Some(5))
    );
    let bodies = (0..400)
        .map(|_| json!({"type": "noop", "queue": "r"}))
        .collect();
    let ids = submit_many(&pods[1], bodies, 4);
    let obs = Observer::open(&db);
    obs.wait_all_terminal(400, Duration::from_secs(120));
    let mut starts: Vec<i64> = ids
        .iter()
        .map(|id| {
            let s = obs.step(id);
            assert_eq!(s.status, fleet_q_actors::StepStatus::Completed, "{id}");
            assert_eq!(s.attempt, 1, "{id} ran once");
            s.started_ts.expect("started").timestamp_millis()
        })
        .collect();
    starts.sort_unstable();
    for i in 0..starts.len() {
        for j in i..starts.len() {
            let n = (j - i + 1) as f64;
            let allowed = 5.0 + 20.0 * (starts[j] - starts[i]) as f64 / 1000.0;
            assert!(
                n <= allowed + 1e-6,
                "{n} starts in {} ms (from the {i}th), the bucket allows {allowed}",
                starts[j] - starts[i]
            );
        }
    }
    let span = (starts[399] - starts[0]) as f64 / 1000.0;
    assert!(span >= 19.7, "400 starts in {span:.2} s");
    assert!(
        span <= 40.0,
        "400 starts took {span:.2} s: the pods did not claim at the queue's rate"
    );
    let by_pod: std::collections::HashSet<String> = ids
        .iter()
        .filter_map(|id| obs.step(id).claimed_by)
        .collect();
    assert!(
        by_pod.len() >= 2,
        "several pods shared the queue: {by_pod:?}"
    );
}

#[test]
fn a_paused_queue_starts_nothing_even_after_recovery_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let c = client();
    // A pod that serves only `q` takes long steps, then dies.
    let mut doomed = PodProc::start(dir.path(), &db, "doomed", &[("FLEET_Q_QUEUES", "q".into())]);
    let obs = Observer::open(&db);
    let long: Vec<String> = (0..3)
        .map(|_| {
            submit(
                &c,
                &doomed,
                json!({"type": "sleep", "args": {"ms": 600000}, "queue": "q", "max_retries": 3}),
            )
        })
        .collect();
    wait_for("the doomed pod to claim", Duration::from_secs(20), || {
        long.iter()
            .all(|id| obs.step(id).status == fleet_q_actors::StepStatus::Claimed)
            .then_some(())
    });
    let survivor = PodProc::start(dir.path(), &db, "survivor", &[]);
    let paused = cli(&survivor, &["pause", "q"]);
    assert!(paused.contains("paused"), "{paused}");
    let more: Vec<String> = (0..10)
        .map(|_| submit(&c, &survivor, json!({"type": "noop", "queue": "q"})))
        .collect();
    doomed.kill9();
    // Recovery requeues the dead pod's steps; they stay pending while paused.
    wait_for(
        "recovery to requeue the dead pod's steps",
        Duration::from_secs(30),
        || {
            long.iter()
                .all(|id| {
                    let s = obs.step(id);
                    s.status == fleet_q_actors::StepStatus::Pending && s.retry_count == 1
                })
                .then_some(())
        },
    );
    // Steps of another queue, submitted after, complete: the survivor claims
    // while q is paused, and takes none of q.
    let marker: Vec<String> = (0..5)
        .map(|_| submit(&c, &survivor, json!({"type": "noop"})))
        .collect();
    for id in &marker {
        obs.wait_completed(id, Duration::from_secs(30));
    }
    wait_for("two more claim rounds", Duration::from_secs(10), || {
        let before = obs.stats().counts.completed;
        let id = submit(&c, &survivor, json!({"type": "noop"}));
        obs.wait_completed(&id, Duration::from_secs(10));
        (obs.stats().counts.completed > before).then_some(())
    });
    for id in more.iter().chain(&long) {
        let s = obs.step(id);
        assert_eq!(
            s.status,
            fleet_q_actors::StepStatus::Pending,
            "{id} started while paused"
        );
    }
    let listed = cli(&survivor, &["queues"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("q ") && l.contains("paused")),
        "{listed}"
    );
    // Resumed: the short ones run (the long ones start too).
    cli(&survivor, &["resume", "q"]);
    for id in &more {
        obs.wait_completed(id, Duration::from_secs(30));
    }
    wait_for(
        "the requeued steps to start",
        Duration::from_secs(30),
        || {
            long.iter()
                .all(|id| obs.step(id).attempt == 2)
                .then_some(())
        },
    );
}

#[test]
fn a_small_queue_is_not_starved_by_a_busy_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let pod = PodProc::start(
        dir.path(),
        &db,
        "fair",
        &[("FLEET_Q_MAX_PARALLELISM", "10".into())],
    );
    let c = client();
    // Long enough that the busy queue stays busy however slowly the submits
    // go: 8 slots (10 x 0.8) x 5 steps/s each.
    let big = (0..3000)
        .map(|_| json!({"type": "sleep", "args": {"ms": 200}, "queue": "big"}))
        .collect();
    submit_many(&pod, big, 4);
    let obs = Observer::open(&db);
    let small: Vec<String> = (0..10)
        .map(|_| submit(&c, &pod, json!({"type": "noop", "queue": "small"})))
        .collect();
    for id in &small {
        obs.wait_completed(id, Duration::from_secs(30));
    }
    let left = obs
        .block(obs.store.queues_list())
        .unwrap()
        .into_iter()
        .find(|q| q.settings.name == "big")
        .unwrap()
        .pending;
    assert!(
        left > 1000,
        "the small queue ran while the big one still had {left} waiting"
    );
}

#[test]
fn a_step_in_a_queue_another_pod_serves_runs_there() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let cpu = PodProc::start(
        dir.path(),
        &db,
        "cpu",
        &[("FLEET_Q_QUEUES", "cpu,default".into())],
    );
    let gpu = PodProc::start(dir.path(), &db, "gpu", &[("FLEET_Q_QUEUES", "gpu".into())]);
    let c = client();
    let obs = Observer::open(&db);
    let ids: Vec<String> = (0..5)
        .map(|_| submit(&c, &cpu, json!({"type": "noop", "queue": "gpu"})))
        .collect();
    for id in &ids {
        let s = obs.wait_completed(id, Duration::from_secs(30));
        assert_eq!(
            s.claimed_by.as_deref(),
            Some(gpu.id.as_str()),
            "only the gpu pod serves gpu"
        );
        assert_eq!(s.queue, "gpu");
    }
    let v: Value = c
        .get(cpu.url(&format!("/status/{}", ids[0])))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["queue"], "gpu", "/status shows the queue");
    // A bad queue name is refused with every problem listed, and a bad subset
    // setting stops a pod from starting.
    let r = c
        .post(cpu.url("/submit"))
        .json(&json!({"type": "noop", "queue": "no spaces"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-q"))
        .args(["serve", "--port", "0"])
        .env("FLEET_Q_SQLITE_DB_PATH", dir.path().join("other.db"))
        .env("FLEET_Q_QUEUES", "ok,not ok")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("FLEET_Q_QUEUES"));
}

#[test]
fn with_queue_creation_off_a_submit_to_an_unknown_queue_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let pod = PodProc::start(
        dir.path(),
        &db,
        "strict",
        &[("FLEET_Q_CREATE_QUEUES", "off".into())],
    );
    let c = client();
    let obs = Observer::open(&db);
    // The default queue exists; a queue made by PUT is accepted.
    submit(&c, &pod, json!({"type": "noop"}));
    put_queue(&c, &pod, "made", json!({"max_retries": 1}));
    let id = submit(&c, &pod, json!({"type": "noop", "queue": "made"}));
    assert_eq!(obs.step(&id).max_retries, 1, "the queue's default applies");
    let before = obs.stats().counts;
    for (path, body) in [
        ("/submit", json!({"type": "noop", "queue": "typo"})),
        (
            "/submit/batch",
            json!({"steps": [{"type": "noop", "queue": "made"}, {"type": "noop", "queue": "typo"}]}),
        ),
    ] {
        let r = c.post(pod.url(path)).json(&body).send().unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let v: Value = r.json().unwrap();
        assert!(
            v.to_string().contains("typo") && v.to_string().contains("FLEET_Q_CREATE_QUEUES"),
            "{v}"
        );
    }
    let after = obs.stats().counts;
    assert_eq!(
        before.pending + before.claimed + before.completed,
        after.pending + after.claimed + after.completed,
        "nothing was stored"
    );
    let names: Vec<String> = obs
        .block(obs.store.queues_list())
        .unwrap()
        .into_iter()
        .map(|q| q.settings.name)
        .collect();
    assert!(!names.contains(&"typo".to_string()), "{names:?}");
}
