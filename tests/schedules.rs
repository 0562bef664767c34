//! Schedules with real pod processes on one SQLite file: every tick fires
//! exactly once while the leader is SIGKILLed twice; `overlap: skip` keeps at
//! most one run live; schedules declared in the settings file are loaded by
//! every pod as one; the API and CLI operate them.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// A settings file declaring `body` (TOML) in `dir`.
fn settings_file(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("fleet-q.toml");
    std::fs::write(&p, body).unwrap();
    p
}

fn start(dir: &Path, db: &Path, name: &str, config: &Path, env: &[(&str, String)]) -> PodProc {
    let config = config.to_path_buf();
    PodProc::start_with(dir, db, name, env, move |cmd| {
        cmd.arg("--config").arg(&config);
    })
}

/// `(tick ms, status)` of every step a schedule fired, read from the file.
fn fired(db: &Path, id: &str) -> Vec<(i64, String)> {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut st = c
        .prepare(
            "SELECT idempotency_key, status FROM STEP_TRACKER \
             WHERE idempotency_key LIKE ?1 ORDER BY idempotency_key",
        )
        .unwrap();
    let rows = st
        .query_map([format!("schedule:{id}:%")], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .unwrap();
    let mut out: Vec<(i64, String)> = rows
        .map(|r| {
            let (k, s) = r.unwrap();
            (k.rsplit(':').next().unwrap().parse().unwrap(), s)
        })
        .collect();
    out.sort();
    out
}

fn row_count(db: &Path) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.query_row("SELECT COUNT(*) FROM STEP_TRACKER", [], |r| r.get(0))
        .unwrap()
}

fn schedule(c: &reqwest::blocking::Client, pod: &PodProc, name: &str) -> Value {
    let (code, v) = get_json(c, pod, &format!("/admin/schedules/{name}"));
    assert_eq!(code, 200, "{v}");
    v
}

fn leader_index(pods: &[PodProc]) -> Option<usize> {
    pods.iter().position(|p| p.is_leader())
}

/// A schedule every second for about 20 s, every pod carrying it in its
/// settings file; the leader is SIGKILLed twice (and restarted). With
/// `catch_up: all`, the ticks of each failover gap fire late but fire, so
/// every tick from the first to the last has exactly one step: no duplicate
/// from a dying or zombie leader, no tick lost.
#[test]
fn every_tick_fires_exactly_once_across_two_leader_kills() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let cfg = settings_file(
        dir.path(),
        r#"
[[schedules]]
name = "every-second"
every_seconds = 1
catch_up = "all"
[schedules.step]
type = "noop"
metadata = { from = "schedule" }
"#,
    );
    let mut pods: Vec<PodProc> = (0..3)
        .map(|i| start(dir.path(), &db, &format!("sch{i}"), &cfg, &[]))
        .collect();
    let c = client();
    let id = schedule(&c, &pods[0], "every-second")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let count = || fired(&db, &id).len();
    wait_for("first fires", Duration::from_secs(30), || {
        (count() >= 3).then_some(())
    });
    for round in 0..2 {
        let leader = wait_for("a leader", Duration::from_secs(30), || leader_index(&pods));
        let before = count();
        let name = pods[leader].name.clone();
        pods[leader].kill9();
        // Another pod takes over (dead threshold 3 s) and fires again.
        wait_for("a new leader", Duration::from_secs(30), || {
            pods.iter()
                .enumerate()
                .any(|(i, p)| i != leader && p.is_leader())
                .then_some(())
        });
        wait_for("fires after the failover", Duration::from_secs(30), || {
            (count() >= before + 4).then_some(())
        });
        pods[leader] = start(dir.path(), &db, &name, &cfg, &[]);
        eprintln!("round {round}: {} steps fired", count());
    }
    // Run for 20 ticks at least, then stop the schedule and let the fired
    // steps finish.
    wait_for("20 ticks", Duration::from_secs(60), || {
        (count() >= 20).then_some(())
    });
    let r = c
        .post(pods[0].url("/admin/schedules/every-second/pause"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let ticks = wait_for("every fired step done", Duration::from_secs(60), || {
        let f = fired(&db, &id);
        f.iter().all(|(_, s)| s == "completed").then_some(f)
    });
    let ms: Vec<i64> = ticks.iter().map(|(t, _)| *t).collect();
    assert!(ms.len() >= 20, "{} ticks fired", ms.len());
    for w in ms.windows(2) {
        assert_eq!(
            w[1] - w[0],
            1000,
            "ticks {} and {}: a tick lost or repeated",
            w[0],
            w[1]
        );
    }
    assert_eq!(
        row_count(&db),
        ms.len() as i64,
        "every step in the store is one tick's"
    );
    let s = schedule(&c, &pods[1], "every-second");
    assert_eq!(s["fires"], json!(ms.len()), "{s}");
    assert_eq!(s["paused"], json!(true));
}

/// `overlap: skip` with a 3 s step every second: sampled at every poll, never
/// more than one run pending or running; ticks in between are skipped and
/// counted.
#[test]
fn overlap_skip_keeps_at_most_one_run_live() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let cfg = settings_file(
        dir.path(),
        r#"
[[schedules]]
name = "slow"
every_seconds = 1
overlap = "skip"
[schedules.step]
type = "sleep"
args = { ms = 3000 }
"#,
    );
    let pod = start(dir.path(), &db, "ov", &cfg, &[]);
    let c = client();
    let id = schedule(&c, &pod, "slow")["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Sampled at every poll until the schedule has fired twice and skipped
    // four ticks: never more than one run live.
    let mut most = 0;
    let s = wait_for("two fires and four skips", Duration::from_secs(60), || {
        let live = fired(&db, &id)
            .iter()
            .filter(|(_, s)| s == "pending" || s == "claimed")
            .count();
        most = most.max(live);
        assert!(live <= 1, "{live} runs live at once");
        let s = schedule(&c, &pod, "slow");
        (s["fires"].as_u64()? >= 2 && s["skipped"].as_u64()? >= 4).then_some(s)
    });
    assert_eq!(most, 1, "the schedule ran");
    assert!(s["fires"].as_u64().unwrap() >= 2, "{s}");
    assert!(s["skipped"].as_u64().unwrap() >= 4, "{s}");
    // The leader's metrics count the same fires and skips, and each fire's lag.
    let metric = |name: &str| -> f64 {
        let text = c.get(pod.url("/metrics")).send().unwrap().text().unwrap();
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("/metrics lacks {name}"))
    };
    let fires = metric("fleet_q_schedule_fires_total{schedule=\"slow\"}");
    let skipped = metric("fleet_q_schedule_skipped_ticks_total{schedule=\"slow\"}");
    let lags = metric("fleet_q_schedule_fire_lag_seconds_count");
    let s = schedule(&c, &pod, "slow");
    assert!(
        fires >= 2.0 && fires <= s["fires"].as_f64().unwrap(),
        "fires metric {fires}, schedule {s}"
    );
    assert!(skipped >= 4.0 && skipped <= s["skipped"].as_f64().unwrap());
    assert!(lags >= fires, "one lag per fire: {lags} for {fires}");
}

/// Two pods loading the same file make one schedule; the API creates,
/// refuses, replaces, pauses, triggers and deletes; the CLI lists and
/// triggers.
#[test]
fn schedules_are_loaded_once_and_operated_through_the_api_and_cli() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let cfg = settings_file(
        dir.path(),
        r#"
[[schedules]]
name = "nightly"
cron = "30 2 * * *"
time_zone = "America/New_York"
[schedules.step]
type = "noop"
"#,
    );
    let a = start(dir.path(), &db, "api-a", &cfg, &[]);
    let b = start(dir.path(), &db, "api-b", &cfg, &[]);
    let c = client();
    let (code, list) = get_json(&c, &b, "/admin/schedules");
    assert_eq!(code, 200);
    let all = list["schedules"].as_array().unwrap();
    assert_eq!(all.len(), 1, "{list}");
    let nightly = &all[0];
    assert_eq!(nightly["upcoming"].as_array().unwrap().len(), 5);
    let next: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(nightly["next_run_at"].clone()).unwrap();
    let local = next.with_timezone(&chrono_tz::America::New_York);
    assert!(
        matches!(
            local.format("%H:%M").to_string().as_str(),
            "02:30" | "03:00"
        ),
        "{local}"
    );
    // Create; the same name again is a conflict; a bad body lists every problem.
    let body = json!({"name": "often", "every_seconds": 3600, "step": {"type": "noop"}});
    let r = c
        .post(a.url("/admin/schedules"))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .post(a.url("/admin/schedules"))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 409);
    let bad = json!({"name": "bad name", "cron": "* *", "every_seconds": 5,
        "time_zone": "Mars/Base", "catch_up": "most", "step": {"type": ""}});
    let r = c.post(a.url("/admin/schedules")).json(&bad).send().unwrap();
    assert_eq!(r.status(), 400);
    let detail = r.json::<Value>().unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    for want in [
        "name:",
        "not both",
        "cron:",
        "time_zone:",
        "catch_up",
        "step.",
    ] {
        assert!(detail.contains(want), "{want} missing: {detail}");
    }
    assert_eq!(
        get_json(&c, &a, "/admin/schedules").1["schedules"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "the bad schedule changed nothing"
    );
    // Replace keeps the id; pause and resume; trigger runs the step now.
    let id = schedule(&c, &a, "often")["id"].clone();
    let r = c
        .put(b.url("/admin/schedules/often"))
        .json(&json!({"every_seconds": 3600, "step": {"type": "noop", "priority": 9}}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(
        (v["id"].clone(), v["step"]["priority"].clone()),
        (id, json!(9))
    );
    let r = c
        .post(b.url("/admin/schedules/often/pause"))
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap()["paused"], json!(true));
    let r = c
        .post(a.url("/admin/schedules/often/resume"))
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap()["paused"], json!(false));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-q"))
        .args(["schedule", "trigger", "often", "--url", &a.url("")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let step_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let obs = Observer::open(&db);
    obs.wait_completed(&step_id, Duration::from_secs(30));
    let s = schedule(&c, &b, "often");
    assert_eq!(s["recent"][0]["step_id"], json!(step_id));
    assert_eq!(s["recent"][0]["manual"], json!(true));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-q"))
        .args(["schedules", "--url", &b.url("")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("nightly") && text.contains("often"), "{text}");
    // Delete; then it is gone.
    let r = c.delete(a.url("/admin/schedules/often")).send().unwrap();
    assert_eq!(r.status(), 200);
    let r = c.delete(a.url("/admin/schedules/often")).send().unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(get_json(&c, &b, "/admin/schedules/often").0, 404);
    // A bad schedule in the settings file stops a pod from starting.
    let bad_cfg = dir.path().join("bad.toml");
    std::fs::write(
        &bad_cfg,
        "[[schedules]]\nname = \"x\"\ncron = \"61 * * * *\"\n[schedules.step]\ntype = \"noop\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-q"))
        .args(["serve", "--port", "0", "--config"])
        .arg(&bad_cfg)
        .env("FLEET_Q_SQLITE_DB_PATH", dir.path().join("other.db"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("schedules[0]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fired step starts on the leader at once when it has a free slot: the
/// fire wakes its claimer. With a claim interval of an hour, the only way a
/// fired step can start here is that wake-up.
#[test]
fn a_fired_step_starts_on_the_leader_without_waiting_for_a_claim_poll() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let cfg = settings_file(
        dir.path(),
        r#"
[[schedules]]
name = "wake"
every_seconds = 1
[schedules.step]
type = "noop"
"#,
    );
    let pod = start(
        dir.path(),
        &db,
        "wake",
        &cfg,
        &[("FLEET_Q_CLAIM_INTERVAL_SECONDS", "3600".into())],
    );
    let c = client();
    let id = schedule(&c, &pod, "wake")["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for("fired steps completed", Duration::from_secs(30), || {
        let done = fired(&db, &id)
            .iter()
            .filter(|(_, s)| s == "completed")
            .count();
        (done >= 3).then_some(())
    });
}
