//! The Snowflake protocol peer for the Snowflake benches: installed by
//! tests/snowflake/setup.sh into a virtualenv under the target dir, started on a
//! free port with the given options (see `tests/snowflake/emulator.py --help`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fleet_q::config::{Secret, SnowflakeSettings};

/// A running emulator started with `args`, and its port. Kill the child when done.
pub fn start(args: &[&str]) -> (Child, u16) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fakesnow-venv");
    let ok = Command::new("bash")
        .arg(root.join("tests/snowflake/setup.sh"))
        .arg(&venv)
        .status()
        .unwrap()
        .success();
    assert!(ok, "setup.sh failed");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(venv.join("bin/python"))
        .arg(root.join("tests/snowflake/emulator.py"))
        .args(["--port", &port.to_string()])
        .args(args)
        .env("PYTHONWARNINGS", "ignore")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20)); // poll interval: the emulator starting
    }
    (child, port)
}

/// Store settings for the emulator on `port`, with `pool_size` sessions.
pub fn settings(port: u16, pool_size: u32, connection_timeout: Duration) -> SnowflakeSettings {
    SnowflakeSettings {
        account: "bench".into(),
        user: "bench".into(),
        password: Some(Secret::new("x")),
        database: "FLEETQ".into(),
        schema: "PUBLIC".into(),
        warehouse: "COMPUTE_WH".into(),
        role: None,
        private_key_path: None,
        private_key: None,
        pool_size,
        connection_timeout,
        host: Some("127.0.0.1".into()),
        port,
        protocol: "http".into(),
    }
}
