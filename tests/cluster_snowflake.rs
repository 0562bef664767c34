//! Pods on the Snowflake backend (through the local protocol peer): three pod
//! processes process 1,000 steps while one is SIGKILLed; every step completes,
//! none is lost, and only steps the killed pod held may run twice.

#[path = "support/emulator.rs"]
mod emulator;
mod support;

use std::sync::Arc;
use std::time::Duration;

use fleet_q::storage::snowflake::SnowflakeStore;
use fleet_q_actors::Store;
use serde_json::{json, Value};
use support::*;

#[test]
fn three_pods_on_snowflake_survive_a_sigkill_and_lose_nothing() {
    let Some(py) = emulator::python() else {
        println!("skipped: python3 is missing, so the Snowflake protocol peer cannot run");
        return;
    };
    let emu = emulator::Emulator::start(&py);
    let rec = Recorder::start();
    let dir = tempfile::tempdir().unwrap();
    let mut env = emu.env();
    env.push(("FLEET_Q_HTTP_HANDLERS", format!("rec={}", rec.url)));
    // The emulator runs one statement at a time: leave heartbeats more slack.
    env.push(("FLEET_Q_DEAD_POD_THRESHOLD_SECONDS", "6".into()));
    let mut pods: Vec<PodProc> = (0..3)
        .map(|i| {
            PodProc::start(
                dir.path(),
                &dir.path().join("unused.db"),
                &format!("sf-{i}"),
                &env,
            )
        })
        .collect();
    let leader = wait_for("a leader", Duration::from_secs(30), || {
        (0..3).find(|i| pods[*i].is_leader())
    });
    let c = client();
    let steps: Vec<Value> = (0..1000)
        .map(|i| json!({"type": "rec", "args": {"i": i, "sleep_ms": 20}, "max_retries": 5}))
        .collect();
    let mut ids = Vec::new();
    for chunk in steps.chunks(250) {
        let r = c
            .post(pods[leader].url("/submit/batch"))
            .json(&json!({ "steps": chunk }))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let v: Value = r.json().unwrap();
        ids.extend(
            v["step_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string()),
        );
    }
    let victim = (0..3).find(|i| *i != leader).unwrap();
    let victim_name = pods[victim].id.clone();
    wait_for("the victim to hold steps", Duration::from_secs(60), || {
        (pods[victim].health()?["current_capacity"].as_u64()? > 0).then_some(())
    });
    pods[victim].kill9();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let d = Duration::from_millis(50);
    let store = Arc::new(SnowflakeStore::open(&emu.settings(), 5, d, d * 10).unwrap());
    let stats = wait_for("every step to complete", Duration::from_secs(240), || {
        let s = rt.block_on(store.queue_stats()).ok()?;
        (s.counts.completed == 1000).then_some(s)
    });
    assert_eq!(stats.counts.total(), 1000, "{stats:?}");
    let execs = rec.executions();
    for id in &ids {
        let calls = execs
            .get(id)
            .unwrap_or_else(|| panic!("step {id} never ran"));
        for c in &calls[..calls.len() - 1] {
            assert_eq!(
                c.pod_id, victim_name,
                "step {id} re-ran though its earlier run was on a live pod"
            );
        }
    }
}
