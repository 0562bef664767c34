//! Documentation and command line stay true to the code: every setting is in the
//! README with its default, the example settings file loads, and `fleet-q config`
//! validates, lists every problem, and never prints a secret.

use std::collections::HashMap;
use std::process::Command;

use fleet_q::config::{self, Sources, KEYS};

fn root(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn readme_documents_every_setting_with_its_default() {
    let readme = std::fs::read_to_string(root("README.md")).unwrap();
    for k in KEYS {
        let default = if k.default.is_empty() {
            "—".to_string()
        } else {
            format!("`{}`", k.default)
        };
        let row = format!("| `{}` | {} |", k.env(), default);
        assert!(
            readme.contains(&row),
            "README lacks the row starting {row:?}"
        );
    }
}

#[test]
fn example_settings_file_loads() {
    let s = config::load(&Sources {
        file: Some(root("deploy/fleet-q.example.toml")),
        env: HashMap::new(),
    })
    .unwrap();
    assert_eq!(s.max_parallelism, 20);
    assert_eq!(s.max_capacity(), 16);
    assert_eq!(s.schedules.len(), 1, "the example schedule");
    let nightly = &s.schedules[0];
    assert_eq!(nightly.name, "nightly-report");
    assert_eq!(nightly.step.queue.as_deref(), Some("reports"));
    assert!(nightly.problems().is_empty(), "{:?}", nightly.problems());
}

fn fleet_q(env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleet-q"));
    cmd.args(args);
    // A clean environment: only what the test sets (plus PATH for the runtime).
    cmd.env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run fleet-q")
}

#[test]
fn config_prints_effective_settings_with_secrets_redacted() {
    let out = fleet_q(
        &[
            ("FLEET_Q_MAX_PARALLELISM", "32"),
            ("FLEET_Q_ADMIN_TOKEN", "s3cret-admin-token"),
            ("FLEET_Q_SNOWFLAKE_PASSWORD", "s3cret-password"),
        ],
        &["config"],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("FLEET_Q_MAX_PARALLELISM=32\n"), "{text}");
    assert!(text.contains("FLEET_Q_ADMIN_TOKEN=<redacted>\n"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    assert_eq!(text.lines().count(), KEYS.len());

    let out = fleet_q(
        &[("FLEET_Q_ADMIN_TOKEN", "s3cret-admin-token")],
        &["config", "--json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["FLEET_Q_ADMIN_TOKEN"], "<redacted>");
    assert_eq!(v["FLEET_Q_STORAGE_MODE"], "sqlite");
}

#[test]
fn config_lists_every_problem_and_exits_non_zero() {
    let out = fleet_q(
        &[
            ("FLEET_Q_MAX_PARALLELISM", "many"),
            ("FLEET_Q_LOG_LEVEL", "LOUD"),
            ("FLEET_Q_STORAGE_MODE", "snowflake"),
            ("FLEET_Q_SNOWFLAKE_PASSWORD", "s3cret-password"),
        ],
        &["config"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    for var in [
        "FLEET_Q_MAX_PARALLELISM",
        "FLEET_Q_LOG_LEVEL",
        "FLEET_Q_SNOWFLAKE_ACCOUNT",
        "FLEET_Q_SNOWFLAKE_USER",
        "FLEET_Q_SNOWFLAKE_DATABASE",
    ] {
        assert!(err.contains(var), "{var} missing from:\n{err}");
    }
    assert!(!err.contains("s3cret"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn config_file_flag_is_read_and_validated() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.toml");
    std::fs::write(&file, "max_parallelism = 7\nbogus_key = 1\n").unwrap();
    let out = fleet_q(&[], &["--config", file.to_str().unwrap(), "config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown setting `bogus_key`"));
    std::fs::write(&file, "max_parallelism = 7\n").unwrap();
    let out = fleet_q(&[], &["--config", file.to_str().unwrap(), "config"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("FLEET_Q_MAX_PARALLELISM=7\n"));
}

#[test]
fn serve_with_zero_configuration_uses_the_embedded_default_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // No FLEET_Q_* variables at all; only the port is chosen (8000 may be taken).
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleet-q"))
        .args(["serve", "--port", &port.to_string()])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TMPDIR", dir.path())
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/health");
    let c = reqwest::blocking::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let health: serde_json::Value = loop {
        if let Ok(r) = c.get(&url).send() {
            break r.json().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pod never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(20)); // poll interval
    };
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["max_capacity"], 8, "10 x 0.8");
    assert!(
        dir.path().join("fleet-q.db").exists(),
        "./fleet-q.db is the default store"
    );
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20)); // poll interval
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn check_reports_each_step_and_schema_prints_or_applies_the_ddl() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let db = db.to_str().unwrap();
    let out = fleet_q(&[("FLEET_Q_SQLITE_DB_PATH", db)], &["check"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    for check in [
        "settings",
        "connect and schema",
        "store clock",
        "read STEP_TRACKER",
        "read POD_HEALTH",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok") && l.contains(check)),
            "{check} missing:\n{text}"
        );
    }
    // The smoke test runs every statement shape on a scratch file and leaves the
    // configured file as it was.
    let out = fleet_q(&[("FLEET_Q_SQLITE_DB_PATH", db)], &["check", "--smoke"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    for shape in fleet_q::smoke::SHAPES {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok") && l.contains(&format!("smoke: {shape}"))),
            "{shape} missing:\n{text}"
        );
    }
    let out = fleet_q(
        &[("FLEET_Q_SQLITE_DB_PATH", "/proc/no/such/dir/x.db")],
        &["check", "--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["checks"][1]["ok"], false);

    let out = fleet_q(&[], &["schema"]);
    let ddl = String::from_utf8(out.stdout).unwrap();
    assert!(ddl.contains("CREATE TABLE IF NOT EXISTS STEP_TRACKER") && ddl.contains("POD_HEALTH"));
    let fresh = dir.path().join("fresh.db");
    let out = fleet_q(
        &[("FLEET_Q_SQLITE_DB_PATH", fresh.to_str().unwrap())],
        &["schema", "--apply"],
    );
    assert!(out.status.success());
    assert!(fresh.exists());
}

#[test]
fn bench_drives_pods_and_verifies_every_step() {
    // Pods it starts itself (two on one file), batched submits, a priority mix.
    let out = fleet_q(
        &[],
        &[
            "bench",
            "--pods",
            "2",
            "--steps",
            "300",
            "--batch",
            "50",
            "--concurrency",
            "3",
            "--priorities",
            "0,5,-2",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{v}");
    assert_eq!(v["submitted"], 300);
    assert_eq!(v["terminal"], 300);
    assert_eq!(v["not_terminal"], serde_json::json!([]));
    assert_eq!(v["submit_errors"], 0);
    assert_eq!(v["pods"], 2);
    assert_eq!(v["pod_memory"].as_array().unwrap().len(), 2);
    assert!(v["pod_memory"][0]["peak_rss_mib"].as_f64().unwrap() > 1.0);
    assert!(v["store_statements_per_1000_steps"].as_f64().unwrap() > 0.0);
    assert!(v["submit_to_complete_ms"]["p99"].is_number());
    assert!(v["submit_to_start_ms_at_most"]["p50"].is_number());
    // The headline is the drain rate by store time; the verification is apart.
    let drain = v["drain_rate_per_s"].as_f64().unwrap();
    let drain_secs = v["drain_secs"].as_f64().unwrap();
    assert!((drain * drain_secs - 300.0).abs() < 1.0, "{v}");
    assert!(v["verify_secs"].as_f64().unwrap() >= 0.0);

    // Single submits, sleep steps, human output.
    let out = fleet_q(
        &[],
        &[
            "bench",
            "--steps",
            "40",
            "--batch",
            "1",
            "--type",
            "sleep",
            "--sleep-ms",
            "5",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("40 sleep steps") && text.contains("40 terminal") && text.contains("drained"),
        "{text}"
    );
}
