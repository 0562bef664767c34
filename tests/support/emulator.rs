//! The Snowflake protocol peer for tests: fakesnow behind `tests/snowflake/
//! emulator.py`, installed into a virtualenv by `tests/snowflake/setup.sh`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fleet_q::config::{Secret, SnowflakeSettings};

/// Set to `1` (as `.ci/run` does) to make a missing emulator fail the run instead
/// of skipping the Snowflake tests.
pub const REQUIRE: &str = "FLEET_Q_REQUIRE_SNOWFLAKE";

/// The virtualenv's python, after installing it once per test binary; `None` (with
/// the reason on stderr) only when this machine has no python3. With
/// `FLEET_Q_REQUIRE_SNOWFLAKE=1` a missing python3 panics instead: a run that
/// requires the Snowflake tests cannot pass by skipping them.
///
/// A failed install is remembered: the first test reports it (setup.sh prints
/// pip's error and the free space) and every later test in the binary fails at
/// once with the same message instead of running pip again.
pub fn python() -> Option<PathBuf> {
    static PY: OnceLock<Result<Option<PathBuf>, String>> = OnceLock::new();
    let found = PY.get_or_init(|| {
        if Command::new("python3").arg("--version").output().is_err() {
            if std::env::var(REQUIRE).as_deref() == Ok("1") {
                return Err(format!(
                    "{REQUIRE}=1 but python3 is missing: the Snowflake protocol peer cannot run"
                ));
            }
            eprintln!("skipping Snowflake cases: python3 is missing (install it to run them; .ci/run does)");
            return Ok(None);
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fakesnow-venv");
        match Command::new("bash")
            .arg(root.join("tests/snowflake/setup.sh"))
            .arg(&venv)
            .status()
        {
            Ok(status) if status.success() => Ok(Some(venv.join("bin/python"))),
            Ok(status) => Err(format!(
                "tests/snowflake/setup.sh failed ({status}); its stderr above says why"
            )),
            Err(e) => Err(format!("could not run tests/snowflake/setup.sh: {e}")),
        }
    });
    match found {
        Ok(py) => py.clone(),
        Err(why) => panic!("{why}"),
    }
}

const MISSING: &str = "python3 is missing, so the Snowflake protocol peer cannot run";

/// Why the Snowflake cases cannot run on this machine (for the conformance
/// suite's `skip`), or `None` when they can; .ci/run installs python3.
pub fn skip() -> Option<String> {
    python().is_none().then(|| MISSING.to_string())
}

/// [`python`], saying on stderr that the calling test is skipped when there is
/// none.
pub fn python_or_skip() -> Option<PathBuf> {
    let py = python();
    if py.is_none() {
        eprintln!("skipped: {MISSING}");
    }
    py
}

/// A running emulator; killed on drop.
pub struct Emulator {
    pub port: u16,
    child: Option<Child>,
    python: PathBuf,
    db_path: Option<PathBuf>,
    /// `(user, public key PEM file)` registered for key-pair sign-in.
    rsa_keys: Vec<(String, PathBuf)>,
    /// More command-line options (see `tests/snowflake/emulator.py --help`).
    args: Vec<String>,
}

impl Emulator {
    /// An emulator with its data in memory.
    pub fn start(python: &std::path::Path) -> Emulator {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(python, port, None)
    }

    /// An emulator on `port`, keeping its data under `db_path` when given (so it
    /// survives [`Emulator::stop`] and [`Emulator::restart`]).
    pub fn start_on(python: &std::path::Path, port: u16, db_path: Option<PathBuf>) -> Emulator {
        Self::start_with(python, port, db_path, Vec::new(), Vec::new())
    }

    /// An in-memory emulator started with more options, e.g.
    /// `--insert-commit-delay-ms 300` or `--default-autocommit false`.
    pub fn start_with_args(python: &std::path::Path, args: &[&str]) -> Emulator {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let args = args.iter().map(|a| a.to_string()).collect();
        Self::start_with(python, port, None, Vec::new(), args)
    }

    /// An emulator with `rsa_keys` (`(user, public key PEM file)`) registered for
    /// key-pair sign-in: JWT logins are verified against them.
    pub fn start_with_keys(python: &std::path::Path, rsa_keys: Vec<(String, PathBuf)>) -> Emulator {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_with(python, port, None, rsa_keys, Vec::new())
    }

    fn start_with(
        python: &std::path::Path,
        port: u16,
        db_path: Option<PathBuf>,
        rsa_keys: Vec<(String, PathBuf)>,
        args: Vec<String>,
    ) -> Emulator {
        let mut e = Emulator {
            port,
            child: None,
            python: python.to_path_buf(),
            db_path,
            rsa_keys,
            args,
        };
        e.restart();
        e
    }

    /// Starts (again) on the same port and data.
    pub fn restart(&mut self) {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut cmd = Command::new(&self.python);
        cmd.arg(root.join("tests/snowflake/emulator.py"))
            .args(["--port", &self.port.to_string()])
            .env("PYTHONWARNINGS", "ignore")
            .stdout(Stdio::null());
        if let Some(d) = &self.db_path {
            cmd.arg("--db-path").arg(d);
        }
        cmd.args(&self.args);
        for (user, pem) in &self.rsa_keys {
            cmd.arg("--rsa-public-key")
                .arg(format!("{user}={}", pem.display()));
        }
        self.child = Some(cmd.spawn().expect("start the emulator"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the emulator did not start");
            std::thread::sleep(Duration::from_millis(20)); // poll interval
        }
    }

    /// Stops the emulator (SIGTERM, then waits): the store is unreachable.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Settings pointing the production client at this emulator.
    pub fn settings(&self) -> SnowflakeSettings {
        SnowflakeSettings {
            account: "fleetq-test".into(),
            user: "fleetq".into(),
            password: Some(Secret::new("not-a-real-password")),
            database: "FLEETQ".into(),
            schema: "PUBLIC".into(),
            warehouse: "COMPUTE_WH".into(),
            role: None,
            private_key_path: None,
            private_key: None,
            pool_size: 4,
            connection_timeout: Duration::from_secs(30),
            host: Some("127.0.0.1".into()),
            port: self.port,
            protocol: "http".into(),
        }
    }

    /// The same settings as `FLEET_Q_*` variables, for pod processes. Quiet
    /// mode (on by default on Snowflake) is off: these pods are tested at
    /// the active cadence, and `tests/quiet.rs` (which turns it on again)
    /// tests quiet mode.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("FLEET_Q_IDLE_POLL_MAX_SECONDS", "off".into()),
            ("FLEET_Q_STORAGE_MODE", "snowflake".into()),
            ("FLEET_Q_SNOWFLAKE_ACCOUNT", "fleetq-test".into()),
            ("FLEET_Q_SNOWFLAKE_USER", "fleetq".into()),
            ("FLEET_Q_SNOWFLAKE_PASSWORD", "not-a-real-password".into()),
            ("FLEET_Q_SNOWFLAKE_DATABASE", "FLEETQ".into()),
            ("FLEET_Q_SNOWFLAKE_HOST", "127.0.0.1".into()),
            ("FLEET_Q_SNOWFLAKE_PORT", self.port.to_string()),
            ("FLEET_Q_SNOWFLAKE_PROTOCOL", "http".into()),
        ]
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A conformance harness on `emu`: two store handles (two session pools, as
/// two pods would have), each with the schema initialised.
pub async fn harness(emu: Emulator) -> fleet_q_actors::testkit::Harness {
    use fleet_q::storage::snowflake::SnowflakeStore;
    use fleet_q_actors::Store;
    let s = emu.settings();
    let a = SnowflakeStore::open(&s, fleet_q_actors::Backoff::default()).expect("open a");
    a.schema_init().await.expect("schema a");
    let b = SnowflakeStore::open(&s, fleet_q_actors::Backoff::default()).expect("open b");
    b.schema_init().await.expect("schema b");
    fleet_q_actors::testkit::Harness {
        a: std::sync::Arc::new(a),
        b: std::sync::Arc::new(b),
        guard: Box::new(emu),
        lacks: Vec::new(),
    }
}

/// The emulator's `GET /debug/stats` (statement counts, lock-wait aborts,
/// lock-held seconds, arrival times since `since`, Unix s).
pub fn debug_stats(port: u16, since: f64) -> serde_json::Value {
    reqwest::blocking::get(format!("http://127.0.0.1:{port}/debug/stats?since={since}"))
        .and_then(|r| r.json())
        .expect("GET /debug/stats")
}
