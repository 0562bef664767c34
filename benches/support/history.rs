//! Shared by the history-size benches: a SQLite file filled with finished
//! steps, and a release `fleet-q serve` process on it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Writes `n` finished steps (98 % completed, 2 % failed with an error, five
/// step types, ~100-byte payloads, created one to three days ago, ids in time
/// order) straight into STEP_TRACKER, and drops STEP_TOTALS so the store's
/// backfill counts them once, as an upgrade would.
pub fn fill(db: &Path, n: usize) {
    let c = rusqlite::Connection::open(db).expect("open");
    c.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF")
        .expect("pragmas");
    let now = chrono::Utc::now().timestamp_millis();
    let (start, span) = (now - 3 * 86_400_000, 2 * 86_400_000i64);
    let types = ["email", "resize", "report", "sync", "noop"];
    let payload = |i: usize, t: &str| {
        format!(
            r#"{{"type":"{t}","args":{{"user":{i},"note":"history row for the bench"}},"metadata":{{}}}}"#
        )
    };
    let mut i = 0;
    while i < n {
        let tx = c.unchecked_transaction().expect("tx");
        {
            let mut st = tx
                .prepare(
                    "INSERT INTO STEP_TRACKER (step_id, status, claimed_by, last_update_ts, payload, \
                     retry_count, priority, created_ts, max_retries, attempt, run_at, idempotency_key, \
                     last_error, result, timeout_ms, step_type) \
                     VALUES (?1, ?2, 'old-pod', ?3, ?4, 0, 0, ?3, 3, 1, ?3, NULL, ?5, 'null', NULL, ?6)",
                )
                .expect("prepare");
            for _ in 0..100_000.min(n - i) {
                // Ids in time order, as UUIDv7 minted at creation would be.
                let ts = start + (span * i as i64) / n.max(1) as i64;
                let id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
                    uuid::NoContext,
                    (ts / 1000) as u64,
                    ((ts % 1000) * 1_000_000) as u32,
                ));
                let t = types[i % types.len()];
                let failed = i % 50 == 0;
                st.execute(rusqlite::params![
                    id.as_bytes().to_vec(),
                    if failed { "failed" } else { "completed" },
                    ts,
                    payload(i, t),
                    failed.then_some("handler said no"),
                    t,
                ])
                .expect("insert");
                i += 1;
            }
        }
        tx.commit().expect("commit");
    }
    c.execute_batch("DROP TABLE IF EXISTS STEP_TOTALS")
        .expect("drop totals");
}

pub fn fleet_q_bin() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("fleet-q");
    bin.exists().then_some(bin)
}

/// A `fleet-q serve` process on `db`, ready; with `env` on top.
pub fn spawn_pod(
    db: &Path,
    dir: &Path,
    env: &[(&str, &str)],
) -> Option<(std::process::Child, u16, reqwest::blocking::Client)> {
    let bin = fleet_q_bin()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .env("FLEET_Q_SQLITE_DB_PATH", db)
        .env("FLEET_Q_POD_ID", "bench")
        .env("FLEET_Q_LEDGER_PATH", dir.join("bench-ledger.db"))
        .env("FLEET_Q_CLAIM_INTERVAL_SECONDS", "1")
        .env("FLEET_Q_LOG_LEVEL", "WARN")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().ok()?;
    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while c
        .get(format!("http://127.0.0.1:{port}/ready"))
        .send()
        .map_or(true, |r| !r.status().is_success())
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100)); // poll interval
    }
    Some((child, port, c))
}
