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

fn observer(emu: &emulator::Emulator) -> (tokio::runtime::Runtime, SnowflakeStore) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let d = Duration::from_millis(50);
    (
        rt,
        SnowflakeStore::open(&emu.settings(), 5, d, d * 10).unwrap(),
    )
}

/// The emulator stops for about 10 s and comes back: pods stay up, submits get
/// 503 meanwhile, sessions log in again, and every step completes.
#[test]
fn a_snowflake_outage_is_survived_and_loses_nothing() {
    let Some(py) = emulator::python() else {
        println!("skipped: python3 is missing, so the Snowflake protocol peer cannot run");
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut emu = emulator::Emulator::start_on(&py, port, Some(data.path().to_path_buf()));
    let rec = Recorder::start();
    let dir = tempfile::tempdir().unwrap();
    let mut env = emu.env();
    env.push(("FLEET_Q_HTTP_HANDLERS", format!("rec={}", rec.url)));
    env.push(("FLEET_Q_DEAD_POD_THRESHOLD_SECONDS", "30".into()));
    env.push(("FLEET_Q_DEFAULT_MAX_ATTEMPTS", "1".into()));
    env.push(("FLEET_Q_SNOWFLAKE_CONNECTION_TIMEOUT", "5".into()));
    let pods: Vec<PodProc> = (0..2)
        .map(|i| {
            PodProc::start(
                dir.path(),
                &dir.path().join("unused.db"),
                &format!("so-{i}"),
                &env,
            )
        })
        .collect();
    let c = client();
    let steps: Vec<Value> = (0..200)
        .map(|i| json!({"type": "rec", "args": {"i": i, "sleep_ms": 20}}))
        .collect();
    let r = c
        .post(pods[0].url("/submit/batch"))
        .json(&json!({ "steps": steps }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);

    emu.stop();
    let down_at = std::time::Instant::now();
    let slow = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let r = slow
        .post(pods[1].url("/submit"))
        .json(&json!({"type": "rec"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error_type"], json!("database_error"));
    for p in &pods {
        assert_eq!(
            c.get(p.url("/health")).send().unwrap().status().as_u16(),
            200
        );
    }
    wait_for("readiness to fail", Duration::from_secs(30), || {
        pods.iter()
            .all(|p| {
                c.get(p.url("/ready"))
                    .send()
                    .map(|r| r.status().as_u16() == 503)
                    .unwrap_or(false)
            })
            .then_some(())
    });
    // Keep the store away for about 10 s in all (the fault schedule).
    if let Some(rest) = Duration::from_secs(10).checked_sub(down_at.elapsed()) {
        std::thread::sleep(rest);
    }
    emu.restart();

    wait_for("submits to work again", Duration::from_secs(60), || {
        (c.post(pods[1].url("/submit"))
            .json(&json!({"type": "rec"}))
            .send()
            .ok()?
            .status()
            .as_u16()
            == 201)
            .then_some(())
    });
    let (rt, store) = observer(&emu);
    let stats = wait_for("every step to complete", Duration::from_secs(180), || {
        let s = rt.block_on(store.queue_stats()).ok()?;
        (s.counts.completed == 201).then_some(s)
    });
    assert_eq!(stats.counts.total(), 201, "nothing lost: {stats:?}");
    for p in &pods {
        assert!(p.health().is_some(), "{} died during the outage", p.name);
        assert!(!p.log_text().contains("panicked"), "{} panicked", p.name);
    }
}

/// Chaos at a smaller scale on the emulator: random SIGKILLs and restarts.
#[test]
fn snowflake_chaos_loses_nothing() {
    let Some(py) = emulator::python() else {
        println!("skipped: python3 is missing, so the Snowflake protocol peer cannot run");
        return;
    };
    let emu = emulator::Emulator::start(&py);
    let rec = Recorder::start();
    let dir = tempfile::tempdir().unwrap();
    let mut env = emu.env();
    env.push(("FLEET_Q_HTTP_HANDLERS", format!("rec={}", rec.url)));
    env.push(("FLEET_Q_DEAD_POD_THRESHOLD_SECONDS", "6".into()));
    let mut pods: Vec<PodProc> = (0..3)
        .map(|i| {
            PodProc::start(
                dir.path(),
                &dir.path().join("unused.db"),
                &format!("sc-{i}"),
                &env,
            )
        })
        .collect();
    let c = client();
    let steps: Vec<Value> = (0..600)
        .map(|i| json!({"type": "rec", "args": {"i": i, "sleep_ms": 10, "fail_first": i % 5 / 4}, "max_retries": 5}))
        .collect();
    let mut ids = Vec::new();
    for chunk in steps.chunks(200) {
        let r = c
            .post(pods[0].url("/submit/batch"))
            .json(&json!({ "steps": chunk }))
            .send()
            .unwrap();
        let v: Value = r.json().unwrap();
        ids.extend(
            v["step_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string()),
        );
    }
    let mut killed = std::collections::HashSet::new();
    for _ in 0..4 {
        // The fault schedule itself, not a wait on state.
        std::thread::sleep(Duration::from_millis(1000 + rand::random::<u64>() % 2000));
        let victim = (rand::random::<u32>() % 3) as usize;
        killed.insert(pods[victim].id.clone());
        pods[victim].kill9();
        let name = pods[victim].name.clone();
        pods[victim] = PodProc::start(dir.path(), &dir.path().join("unused.db"), &name, &env);
    }
    let (rt, store) = observer(&emu);
    let stats = wait_for("every step to complete", Duration::from_secs(240), || {
        let s = rt.block_on(store.queue_stats()).ok()?;
        (s.counts.completed == 600).then_some(s)
    });
    assert_eq!(stats.counts.total(), 600, "{stats:?}");
    let execs = rec.executions();
    for id in &ids {
        let ok: Vec<&Call> = execs[id].iter().filter(|c| c.ok).collect();
        assert!(!ok.is_empty(), "step {id} never succeeded");
        for c in &ok[..ok.len() - 1] {
            assert!(
                killed.contains(&c.pod_id),
                "step {id} succeeded twice; earlier on live {}",
                c.pod_id
            );
        }
    }
}

/// `fleet-q bench --store snowflake` starts pods on the configured account (here
/// the emulator) and verifies every step.
#[test]
fn fleet_q_bench_runs_on_snowflake() {
    let Some(py) = emulator::python() else {
        println!("skipped: python3 is missing, so the Snowflake protocol peer cannot run");
        return;
    };
    let emu = emulator::Emulator::start(&py);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-q"));
    cmd.args([
        "bench",
        "--store",
        "snowflake",
        "--pods",
        "2",
        "--steps",
        "100",
        "--batch",
        "50",
        "--json",
    ])
    .args(["--max-parallelism", "100", "--claim-batch", "100"]);
    for (k, v) in emu.env() {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{v}");
    assert_eq!(v["target"], json!("snowflake"));
    assert_eq!(v["terminal"], json!(100));
    assert_eq!(v["not_terminal"], json!([]));
    assert!(v["store_statements_per_1000_steps"].as_f64().unwrap() > 0.0);
}
