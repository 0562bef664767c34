//! Pods on the Snowflake backend, through the local protocol peer: a SIGKILL,
//! a leader paused past its lease, a store outage and a stall, chaos, and
//! `fleet-q bench --store snowflake`. Every step completes, none is lost, and a
//! step runs successfully twice only when its earlier run was on a killed pod.

#[path = "support/emulator.rs"]
mod emulator;
#[path = "support/relay.rs"]
mod relay;
mod support;

use std::collections::HashSet;
use std::time::Duration;

use fleet_q::storage::snowflake::SnowflakeStore;
use fleet_q_actors::Store;
use serde_json::{json, Value};
use support::*;

/// Pods on one emulator, their step service, and what a test needs to restart them.
struct Fleet {
    emu: emulator::Emulator,
    rec: Recorder,
    dir: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
    pods: Vec<PodProc>,
}

impl Fleet {
    /// `n` pods named `{prefix}-{i}` on `emu`, running `rec` steps, with `extra` settings.
    fn start(
        emu: emulator::Emulator,
        prefix: &str,
        n: usize,
        extra: &[(&'static str, &str)],
    ) -> Fleet {
        let rec = Recorder::start();
        let dir = tempfile::tempdir().unwrap();
        let mut env = emu.env();
        env.push(("FLEET_Q_HTTP_HANDLERS", format!("rec={}", rec.url)));
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let pods = (0..n)
            .map(|i| {
                PodProc::start(
                    dir.path(),
                    &dir.path().join("unused.db"),
                    &format!("{prefix}-{i}"),
                    &env,
                )
            })
            .collect();
        Fleet {
            emu,
            rec,
            dir,
            env,
            pods,
        }
    }

    fn unused_db(&self) -> std::path::PathBuf {
        self.dir.path().join("unused.db")
    }

    /// A store handle for observing the fleet's state.
    fn observer(&self) -> (tokio::runtime::Runtime, SnowflakeStore) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        (
            rt,
            SnowflakeStore::open(&self.emu.settings(), fleet_q_actors::Backoff::default()).unwrap(),
        )
    }

    /// Waits until `n` steps completed; returns the stats. On timeout it says
    /// what the store holds and ends with the tail of every pod's log.
    fn wait_completed(&self, n: u64, limit: Duration) -> fleet_q_actors::QueueStats {
        let (rt, store) = self.observer();
        let deadline = std::time::Instant::now() + limit;
        loop {
            let last = match rt.block_on(store.queue_stats()) {
                Ok(s) if s.counts.completed == n => return s,
                Ok(s) => format!("{:?}", s.counts),
                Err(e) => format!("stats failed: {e}"),
            };
            if std::time::Instant::now() >= deadline {
                let logs: String = self.pods.iter().map(|p| log_tail(&p.log, 25)).collect();
                panic!(
                    "timed out after {limit:?} waiting for {n} completed steps; last seen: {last}\n{logs}"
                );
            }
            std::thread::sleep(Duration::from_millis(50)); // poll interval
        }
    }
}

// The emulator runs one statement at a time: heartbeats get more slack.
const SLACK: (&str, &str) = ("FLEET_Q_DEAD_POD_THRESHOLD_SECONDS", "6");

#[test]
fn three_pods_on_snowflake_survive_a_sigkill_and_lose_nothing() {
    let Some(py) = emulator::python_or_skip() else {
        return;
    };
    let mut f = Fleet::start(emulator::Emulator::start(&py), "sf", 3, &[SLACK]);
    let leader = wait_for("a leader", Duration::from_secs(30), || {
        (0..3).find(|i| f.pods[*i].is_leader())
    });
    let c = client();
    let bodies: Vec<Value> = (0..1000)
        .map(|i| json!({"type": "rec", "args": {"i": i, "sleep_ms": 20}, "max_retries": 5}))
        .collect();
    let ids = submit_batches(&c, &f.pods[leader], &bodies, 250);
    let victim = (0..3).find(|i| *i != leader).unwrap();
    wait_for("the victim to hold steps", Duration::from_secs(60), || {
        (f.pods[victim].health()?["current_capacity"].as_u64()? > 0).then_some(())
    });
    let killed: HashSet<String> = [f.pods[victim].id.clone()].into();
    f.pods[victim].kill9();
    let stats = f.wait_completed(1000, Duration::from_secs(240));
    assert_eq!(stats.counts.total(), 1000, "{stats:?}");
    // A pod starved on a loaded machine may be presumed dead and rejoin without
    // being killed: its earlier runs may legitimately repeat too.
    let rejoined = rejoined_processes(&f.pods);
    assert_duplicates_only_from_lost_pods(&f.rec, &ids, &killed, &rejoined);
}

/// The emulator stops for about 10 s and comes back: pods stay up, submits get
/// 503 meanwhile, sessions log in again, and every step completes.
#[test]
fn a_snowflake_outage_is_survived_and_loses_nothing() {
    let Some(py) = emulator::python_or_skip() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let emu = emulator::Emulator::start_on(&py, port, Some(data.path().to_path_buf()));
    let mut f = Fleet::start(emu, "so", 2, &LOSS_SETTINGS);
    survives_losing_the_store(&mut f, "so", |f| f.emu.stop(), |f| f.emu.restart());
}

/// The Snowflake server stalls for about 10 s: connections and requests are
/// taken and nothing is answered (a hung server, a load balancer whose backend
/// died), where an outage refuses connections at once. Every statement waits
/// its timeout with its outcome unknown, finishes sent into the stall are lost,
/// and callers queue behind stalled sessions. With five attempts allowed, a
/// submit makes one: it failed slowly, past the retry budget. What was sent
/// into the stall is never delivered (the relay drops it), so the submit that
/// got 503 made no step.
#[test]
fn a_stalled_snowflake_server_is_survived_and_loses_nothing() {
    let Some(py) = emulator::python_or_skip() else {
        return;
    };
    let emu = emulator::Emulator::start(&py);
    let relay = relay::Relay::start(emu.port);
    let relay_port = relay.port.to_string();
    let mut settings = LOSS_SETTINGS.to_vec();
    settings.push(("FLEET_Q_SNOWFLAKE_PORT", &relay_port));
    // Five attempts per call, as by default, and a 1 s retry budget: an
    // attempt that takes its whole 5 s timeout to fail is not retried.
    settings.push(("FLEET_Q_DEFAULT_MAX_ATTEMPTS", "5"));
    settings.push(("FLEET_Q_DEFAULT_RETRY_BUDGET_SECONDS", "1"));
    let mut f = Fleet::start(emu, "st", 2, &settings);
    survives_losing_the_store(&mut f, "st", |_| relay.stall(), |_| relay.resume());
}

/// SIGTERM while the Snowflake server stalls: the pod still exits 0 within its
/// grace plus `SHUTDOWN_STORE_WAIT` (4 s) plus 5 s for HTTP requests in
/// flight, rather than waiting out its retry budget on each release and on
/// its final heartbeat (before the bound it had not exited after 20 s). What it could not
/// release or report, recovery requeues once another pod leads: every step
/// completes, and only the stopped pod's runs are repeated.
#[test]
fn sigterm_during_a_stall_exits_within_its_grace_and_loses_nothing() {
    let Some(py) = emulator::python_or_skip() else {
        return;
    };
    let emu = emulator::Emulator::start(&py);
    let emu_port = emu.port.to_string();
    let relay = relay::Relay::start(emu.port);
    let relay_port = relay.port.to_string();
    // Pod 0 reaches the server through the relay, pod 1 directly.
    let mut f = Fleet::start(
        emu,
        "tst",
        1,
        &[
            SLACK,
            ("FLEET_Q_SHUTDOWN_GRACE_SECONDS", "2"),
            ("FLEET_Q_SNOWFLAKE_CONNECTION_TIMEOUT", "5"),
            ("FLEET_Q_SNOWFLAKE_PORT", &relay_port),
        ],
    );
    let mut direct = f.env.clone();
    direct.push(("FLEET_Q_SNOWFLAKE_PORT", emu_port));
    let other = PodProc::start(f.dir.path(), &f.unused_db(), "tst-1", &direct);
    f.pods.push(other);
    let c = client();
    let bodies: Vec<Value> = (0..40)
        .map(|i| json!({"type": "rec", "args": {"i": i, "sleep_ms": 4000}, "idempotency_key": format!("tst-{i}"), "max_retries": 5}))
        .collect();
    let ids = submit_keyed_batches(&c, &f.pods[0], &bodies, 20, Duration::from_secs(120));
    wait_for("pod 0 to run steps", Duration::from_secs(60), || {
        (f.pods[0].health()?["current_capacity"].as_u64()? > 0).then_some(())
    });

    relay.stall();
    f.pods[0].term();
    let status = f.pods[0].wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", log_tail(&f.pods[0].log, 30));
    let log = f.pods[0].log_text();
    assert!(
        log.contains("no final heartbeat"),
        "{}",
        log_tail(&f.pods[0].log, 30)
    );

    let stats = f.wait_completed(40, Duration::from_secs(240));
    assert_eq!(stats.counts.total(), 40, "{stats:?}");
    let stopped: HashSet<String> = [f.pods[0].id.clone()].into();
    let rejoined = rejoined_processes(&f.pods);
    assert_duplicates_only_from_lost_pods(&f.rec, &ids, &stopped, &rejoined);
}

/// The leader paused past its lease (SIGSTOP) on the production store: the
/// other pod presumes it dead, takes over leadership and recovers the step the
/// paused leader was running, and runs it again. On resume the old leader's
/// late result is fenced (the re-run's result stands), it learns it was marked
/// down and rejoins as `<id>-r1`, younger than the new leader, so leadership
/// stays where it went; work submitted to it afterwards runs.
#[test]
fn a_paused_leader_on_snowflake_is_replaced_and_its_late_result_fenced() {
    let Some(py) = emulator::python_or_skip() else {
        return;
    };
    let one_at_a_time = [
        SLACK,
        ("FLEET_Q_MAX_PARALLELISM", "1"),
        ("FLEET_Q_CAPACITY_THRESHOLD", "1"),
    ];
    let mut f = Fleet::start(emulator::Emulator::start(&py), "pz", 1, &one_at_a_time);
    wait_for("the first pod to lead", Duration::from_secs(30), || {
        f.pods[0].is_leader().then_some(())
    });
    let next = PodProc::start(f.dir.path(), &f.unused_db(), "pz-1", &f.env);
    f.pods.push(next);
    let (paused, next) = (&f.pods[0], &f.pods[1]);
    let c = client();
    let (id, first) = a_step_run_by(&c, &f.rec, paused);
    paused.stop();
    wait_for("the other pod to lead", Duration::from_secs(60), || {
        next.is_leader().then_some(())
    });
    let rerun = wait_for(
        "the paused leader's step to run again",
        Duration::from_secs(60),
        || {
            let calls = f.rec.executions().get(&id).cloned()?;
            calls.iter().find(|c| c.pod_id == next.id).cloned()
        },
    );
    assert!(rerun.attempt > first.attempt);
    let (rt, store) = f.observer();
    // The observer's runtime runs only during its calls, so a pooled
    // connection the emulator closed while idle can fail one: read again.
    let get = |id: &str| {
        wait_for("the step to read", Duration::from_secs(30), || {
            rt.block_on(store.step_get(id.parse().unwrap())).ok()?
        })
    };
    let step = || get(&id);
    wait_for("the re-run to complete", Duration::from_secs(60), || {
        (step().status == fleet_q_actors::StepStatus::Completed).then_some(())
    });

    paused.cont();
    let h = rejoined_after_a_fenced_result(paused, Duration::from_secs(60));
    assert_eq!(h["is_leader"], json!(false), "{h}");
    assert_eq!(h["generation"], json!(1), "{h}");
    assert!(
        next.is_leader(),
        "leadership stays with the pod that took it"
    );
    let s = step();
    assert_eq!(s.status, fleet_q_actors::StepStatus::Completed);
    assert_eq!(s.attempt, rerun.attempt);
    assert_eq!(
        s.result.as_ref().unwrap()["pod"],
        json!(next.id),
        "the re-run's result stands"
    );
    let rows = wait_for("the pods to read", Duration::from_secs(30), || {
        rt.block_on(store.pods_list()).ok()
    });
    let old = rows.iter().find(|p| p.pod_id == paused.id).unwrap();
    assert_eq!(old.status, fleet_q_actors::PodStatus::Down);
    assert_eq!(
        old.capacity_in_use, 0,
        "a pod marked down reports nothing running"
    );
    let rejoined = rows
        .iter()
        .find(|p| p.pod_id == format!("{}-r1", paused.id))
        .unwrap();
    assert_eq!(rejoined.status, fleet_q_actors::PodStatus::Up);
    let taker = rows.iter().find(|p| p.pod_id == next.id).unwrap();
    assert!(
        rejoined.birth_ts > taker.birth_ts,
        "the rejoined pod is younger than the leader, so the eldest-live rule keeps it out"
    );
    // The paused pod's late result was counted as fenced, never as a completion.
    assert_late_result_fenced(&c, paused);
    // Work submitted to the rejoined pod still runs.
    let late = submit(&c, paused, json!({"type": "rec", "args": {}}));
    wait_for("the late step to complete", Duration::from_secs(60), || {
        (get(&late).status == fleet_q_actors::StepStatus::Completed).then_some(())
    });
}

/// Settings for losing the store: the dead threshold outlasts the loss, one
/// store attempt per call (`FLEET_Q_DEFAULT_MAX_ATTEMPTS=1`), a 5 s timeout.
const LOSS_SETTINGS: [(&str, &str); 3] = [
    ("FLEET_Q_DEAD_POD_THRESHOLD_SECONDS", "30"),
    ("FLEET_Q_DEFAULT_MAX_ATTEMPTS", "1"),
    ("FLEET_Q_SNOWFLAKE_CONNECTION_TIMEOUT", "5"),
];

/// With steps running on two pods, `lose` takes the store away for about 10 s
/// and `restore` brings it back. Meanwhile pods stay up and answer `/health`,
/// a submit gets 503 (not a hang: one attempt is at most three timeouts, see
/// README "A server that stops answering"), and readiness fails. Afterwards
/// submits work, readiness returns, and all 201 steps complete, each run
/// successfully once (no pod was presumed dead), though finishes were refused
/// or lost meanwhile.
fn survives_losing_the_store(
    f: &mut Fleet,
    prefix: &str,
    lose: impl FnOnce(&mut Fleet),
    restore: impl FnOnce(&mut Fleet),
) {
    let c = client();
    let bodies: Vec<Value> = (0..200)
        .map(|i| json!({"type": "rec", "args": {"i": i, "sleep_ms": 20}, "idempotency_key": format!("{prefix}-{i}")}))
        .collect();
    // One store attempt per call and a short timeout: on a loaded machine a
    // large batch can outlast it every time, so the steps go in small keyed
    // batches, each resent on 503.
    let ids = submit_keyed_batches(&c, &f.pods[0], &bodies, 25, Duration::from_secs(120));
    // Work is running when the store goes away.
    wait_for("steps to be running", Duration::from_secs(60), || {
        (!f.rec.calls().is_empty()).then_some(())
    });

    lose(f);
    let lost_at = std::time::Instant::now();
    let patient = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let failed_inserts = || {
        let text = c
            .get(f.pods[1].url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        metric(
            &text,
            r#"fleet_q_store_calls_total{op="steps_insert",outcome="transient"}"#,
        )
    };
    // Scrapes answer within Prometheus' scrape timeout whatever the store
    // does (a pod that has not yet read the statistics asks the store, and
    // waits at most 2 s for it); the gauges keep their last values.
    let scrape = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for p in &f.pods {
        let r = scrape
            .get(p.url("/metrics"))
            .send()
            .expect("a scrape answers within 5 s");
        assert_eq!(r.status().as_u16(), 200);
    }
    let before = failed_inserts();
    let r = patient
        .post(f.pods[1].url("/submit"))
        .json(&json!({"type": "rec", "idempotency_key": format!("{prefix}-during")}))
        .send()
        .expect("a submit while the store is away is answered");
    assert_eq!(r.status().as_u16(), 503);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error_type"], json!("database_error"));
    // One attempt: one allowed (the outage), or one that failed slowly,
    // past the retry budget (the stall).
    assert_eq!(
        failed_inserts() - before,
        1.0,
        "store attempts of that submit\n{}",
        log_tail(&f.pods[1].log, 30)
    );
    for p in &f.pods {
        assert_eq!(
            c.get(p.url("/health")).send().unwrap().status().as_u16(),
            200
        );
    }
    wait_for("readiness to fail", Duration::from_secs(60), || {
        all_ready(&c, &f.pods, false).then_some(())
    });
    // The store stays away for 10 s in all: poll the clock rather than sleep.
    wait_for(
        "the loss to have lasted 10 s",
        Duration::from_secs(60),
        || (lost_at.elapsed() >= Duration::from_secs(10)).then_some(()),
    );
    restore(f);

    wait_for("submits to work again", Duration::from_secs(60), || {
        (c.post(f.pods[1].url("/submit"))
            .json(&json!({"type": "rec", "idempotency_key": format!("{prefix}-after")}))
            .send()
            .ok()?
            .status()
            .as_u16()
            == 201)
            .then_some(())
    });
    wait_for("readiness to return", Duration::from_secs(60), || {
        all_ready(&c, &f.pods, true).then_some(())
    });
    let stats = f.wait_completed(201, Duration::from_secs(180));
    assert_eq!(
        stats.counts.total(),
        201,
        "nothing lost, nothing extra: {stats:?}"
    );
    // No pod died and the dead threshold outlasts the loss: each step ran once.
    let execs = f.rec.executions();
    for id in &ids {
        let ok = execs
            .get(id)
            .map_or(0, |c| c.iter().filter(|c| c.ok).count());
        assert_eq!(ok, 1, "step {id} ran {ok} times successfully");
    }
    for p in &f.pods {
        assert!(
            p.health().is_some(),
            "{} died while the store was away",
            p.name
        );
        let log = p.log_text();
        assert!(!log.contains("panicked"), "{} panicked", p.name);
        assert!(
            !log.contains("not-a-real-password"),
            "{} logged the Snowflake password",
            p.name
        );
    }
}

/// Chaos at a smaller scale on the emulator: SIGKILLs and restarts with the SQLite
/// chaos test's kill loop (a third of the kills aimed at the leader, and at
/// least one kill of the leader in every run), while steps are outstanding.
#[test]
fn snowflake_chaos_loses_nothing() {
    let Some(py) = emulator::python_or_skip() else {
        return;
    };
    let mut f = Fleet::start(emulator::Emulator::start(&py), "sc", 3, &[SLACK]);
    let c = client();
    let bodies: Vec<Value> = (0..600)
        .map(|i| json!({"type": "rec", "args": {"i": i, "sleep_ms": 10, "fail_first": i % 5 / 4}, "max_retries": 5}))
        .collect();
    let ids = submit_batches(&c, &f.pods[0], &bodies, 200);
    let mut killed = HashSet::new();
    let (dir, db, env) = (f.dir.path().to_path_buf(), f.unused_db(), f.env.clone());
    let mut leader_kills = 0;
    for round in 0..4 {
        // The next kill after another 40-80 executions (of 720 or more: 600
        // steps and a retry of every fifth), so every kill meets work.
        fault_after(40, || Some(f.rec.calls().len() as u64));
        let leader = (0..3).find(|i| f.pods[*i].is_leader());
        // The last round kills the leader if no earlier round did.
        let victim = match leader {
            Some(l) if rand::random::<u8>().is_multiple_of(3) => l,
            Some(l) if round == 3 && leader_kills == 0 => l,
            _ => (rand::random::<u32>() % 3) as usize,
        };
        leader_kills += usize::from(leader == Some(victim));
        kill_and_restart(&mut f.pods, victim, &dir, &db, &env, &mut killed);
    }
    assert!(leader_kills >= 1, "the leader was never killed");
    let stats = f.wait_completed(600, Duration::from_secs(240));
    assert_eq!(stats.counts.total(), 600, "{stats:?}");
    // A pod starved on a loaded machine may be presumed dead and rejoin without
    // being killed: its earlier runs may legitimately repeat too.
    let rejoined = rejoined_processes(&f.pods);
    assert_duplicates_only_from_lost_pods(&f.rec, &ids, &killed, &rejoined);
}

/// `fleet-q bench --store snowflake` starts pods on the configured account (here
/// the emulator) and verifies every step.
#[test]
fn fleet_q_bench_runs_on_snowflake() {
    let Some(py) = emulator::python_or_skip() else {
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

/// The leader computes queue statistics into the shared row and every pod
/// serves `/admin/queue` and `/metrics` from its copy: scraping a non-leader
/// sends no statement, however often it is scraped, and its counts are the
/// fleet's.
#[test]
fn a_non_leader_answers_scrapes_without_a_statement() {
    let Some(py) = emulator::python_or_skip() else {
        return;
    };
    let f = Fleet::start(
        emulator::Emulator::start(&py),
        "ss",
        2,
        &[
            SLACK,
            ("FLEET_Q_STATS_INTERVAL_SECONDS", "2"),
            ("FLEET_Q_SNOWFLAKE_CONNECTION_TIMEOUT", "4"),
            // Leader checks read POD_HEALTH too: rare here, so any pods_list a
            // scrape caused would show.
            ("FLEET_Q_LEADER_CHECK_INTERVAL_SECONDS", "30"),
        ],
    );
    let leader = wait_for("a leader", Duration::from_secs(60), || {
        (0..2).find(|i| f.pods[*i].is_leader())
    });
    let other = &f.pods[1 - leader];
    let c = client();
    let bodies: Vec<Value> = (0..40)
        .map(|i| json!({"type": "rec", "args": {"i": i}}))
        .collect();
    submit_batches(&c, other, &bodies, 40);
    // The non-leader's counts come from the leader's publishes: finishes show
    // once older than the lag (the connection timeout, 4 s here).
    wait_for(
        "the non-leader to report every step completed",
        Duration::from_secs(120),
        || {
            let v: Value = c.get(other.url("/admin/queue")).send().ok()?.json().ok()?;
            (v["completed_steps"] == json!(40) && v["pending_steps"] == json!(0)).then_some(())
        },
    );
    let calls = |op: &str| {
        let text = c.get(other.url("/metrics")).send().unwrap().text().unwrap();
        text.lines()
            .filter(|l| l.starts_with(&format!("fleet_q_store_calls_total{{op=\"{op}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = (
        calls("queue_stats"),
        calls("pods_list"),
        calls("stats_shared"),
    );
    let t0 = std::time::Instant::now();
    let mut scrapes = 0;
    // Scrape back to back until the pod has read the shared row three more
    // times (its 2 s refresh), so the scrapes span several refreshes.
    wait_for(
        "three refreshes of the shared statistics",
        Duration::from_secs(60),
        || {
            let q = c.get(other.url("/admin/queue")).send().unwrap();
            assert_eq!(q.status().as_u16(), 200);
            let m = c.get(other.url("/metrics")).send().unwrap().text().unwrap();
            assert!(m.contains("fleet_q_pending_steps"));
            scrapes += 2;
            (calls("stats_shared") >= before.2 + 3.0).then_some(())
        },
    );
    let elapsed = t0.elapsed().as_secs_f64();
    let after = (
        calls("queue_stats"),
        calls("pods_list"),
        calls("stats_shared"),
    );
    assert_eq!(after.0, before.0, "a scrape counted steps itself");
    // Background work only: the stats refresh every 2 s and a leader check at
    // most every 30 s, whatever the scrapes did.
    assert!(
        after.2 - before.2 <= elapsed / 2.0 + 2.0,
        "stats_shared read {} times in {elapsed:.1} s",
        after.2 - before.2
    );
    assert!(
        after.1 - before.1 <= 1.0,
        "pods_list read {} times in {elapsed:.1} s of {scrapes} scrapes",
        after.1 - before.1
    );
}

/// Twelve pods on the warehouse model: each statement compiles for 10-30 ms
/// and executes for 20-60 ms, DML on a table runs one statement at a time, and
/// at most 4 statements may wait for a table's lock (Snowflake's limit is 20;
/// lowered so that twelve pods on this machine overflow it as thirty would).
/// Newcomers are aborted with 000625, and the pods retry them as transient
/// (with jitter). Every step completes, and a step runs twice only when its
/// earlier run was on a pod presumed dead; the emulator counts the aborts.
#[test]
fn twelve_pods_on_the_warehouse_model_survive_lock_wait_aborts() {
    let Some(py) = emulator::python_or_skip() else {
        return;
    };
    let emu = emulator::Emulator::start_with_args(
        &py,
        &[
            "--compile-ms",
            "20:10",
            "--latency-ms",
            "40:20",
            "--lock-waiters-limit",
            "4",
        ],
    );
    let port = emu.port;
    let f = Fleet::start(
        emu,
        "lw",
        12,
        &[
            ("FLEET_Q_DEAD_POD_THRESHOLD_SECONDS", "20"),
            ("FLEET_Q_HEARTBEAT_INTERVAL_SECONDS", "2"),
            ("FLEET_Q_MAX_PARALLELISM", "5"),
        ],
    );
    let c = client();
    let bodies: Vec<Value> = (0..360)
        .map(|i| json!({"type": "rec", "args": {"i": i, "sleep_ms": 20}, "max_retries": 5}))
        .collect();
    // Submitted through every pod, so inserts race claims and finishes.
    let mut ids = Vec::new();
    for (k, chunk) in bodies.chunks(30).enumerate() {
        ids.extend(submit_batches(&c, &f.pods[k % 12], chunk, 30));
    }
    let stats = f.wait_completed(360, Duration::from_secs(300));
    assert_eq!(stats.counts.total(), 360, "{stats:?}");
    let rejoined = rejoined_processes(&f.pods);
    assert_duplicates_only_from_lost_pods(&f.rec, &ids, &HashSet::new(), &rejoined);
    let model = emulator::debug_stats(port, 0.0);
    eprintln!(
        "statements {}, lock-wait aborts {}, most waiters {}",
        model["statements"], model["lock_aborts"], model["max_waiters"]
    );
    assert!(
        model["lock_aborts"].as_u64().unwrap() > 0,
        "the model never overflowed a lock queue: {}",
        model["max_waiters"]
    );
}
