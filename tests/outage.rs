//! A 10-second store outage on SQLite: another process holds the database's
//! write lock (`BEGIN IMMEDIATE`, exclusive among writers; in WAL mode readers
//! go on), so every write of the pods waits and fails. Pods stay up and `/health` stays alive, `/ready` fails, submits get
//! 503 `database_error`, nothing panics; afterwards work resumes and nothing
//! submitted before the outage is lost.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

#[test]
fn a_ten_second_sqlite_outage_is_survived_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outage.db");
    let rec = Recorder::start();
    let env = vec![
        ("FLEET_Q_HTTP_HANDLERS", format!("rec={}", rec.url)),
        ("FLEET_Q_DEFAULT_MAX_ATTEMPTS", "1".to_string()),
    ];
    let mut pods: Vec<PodProc> = (0..2)
        .map(|i| PodProc::start(dir.path(), &db, &format!("o{i}"), &env))
        .collect();
    let c = client();
    let steps: Vec<Value> = (0..300)
        .map(|i| json!({"type": "rec", "args": {"i": i, "sleep_ms": 30}}))
        .collect();
    let r = c
        .post(pods[0].url("/submit/batch"))
        .json(&json!({ "steps": steps }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);

    // Another process takes the write lock and holds it for 10 s.
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n\
             c.execute('BEGIN IMMEDIATE')\n\
             print('locked', flush=True)\n\
             time.sleep(10)\n\
             c.execute('COMMIT')",
        ])
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the lock holder");
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
    }
    let locked_at = Instant::now();

    // During the outage: submits fail cleanly, liveness holds, readiness fails.
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
        let h = c.get(p.url("/health")).send().unwrap();
        assert_eq!(
            h.status().as_u16(),
            200,
            "liveness does not depend on the store"
        );
    }
    wait_for(
        "readiness to fail during the outage",
        Duration::from_secs(30),
        || all_ready(&c, &pods, false).then_some(()),
    );
    assert!(holder.wait().unwrap().success());
    assert!(
        locked_at.elapsed() >= Duration::from_secs(9),
        "the outage lasted about 10 s"
    );

    // Afterwards: the pods are the same processes, ready again, and all work done.
    for p in &mut pods {
        assert!(
            p.child.try_wait().unwrap().is_none(),
            "{} exited during the outage",
            p.name
        );
    }
    wait_for("readiness to return", Duration::from_secs(60), || {
        all_ready(&c, &pods, true).then_some(())
    });
    let r = c
        .post(pods[1].url("/submit"))
        .json(&json!({"type": "rec"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "submits work again");
    let obs = Observer::open(&db);
    let stats = obs.wait_all_terminal(301, Duration::from_secs(120));
    assert_eq!(stats.counts.completed, 301, "nothing lost: {stats:?}");
    for p in &pods {
        assert!(
            !p.log_text().contains("panicked"),
            "{} panicked:\n{}",
            p.name,
            p.log_text()
        );
    }
}
