//! The store conformance suite against the Snowflake backend, through the
//! production client (`snowflake-api`) talking to a local Snowflake protocol peer
//! (fakesnow, see tests/snowflake/). Each case gets a fresh emulator and two store
//! handles (two session pools), as two pods would have.

#[path = "support/emulator.rs"]
mod emulator;

use std::sync::Arc;
use std::time::Duration;

use fleet_q::storage::snowflake::SnowflakeStore;
use fleet_q_actors::testkit::Harness;
use fleet_q_actors::Store;

/// The cases skip only when python3 is missing (and say so); .ci/run installs it.
fn skip() -> Option<String> {
    emulator::python()
        .is_none()
        .then(|| "python3 is missing, so the Snowflake protocol peer cannot run".to_string())
}

async fn open() -> Harness {
    let py = emulator::python().expect("checked by skip()");
    let emu = emulator::Emulator::start(&py);
    let s = emu.settings();
    let d = Duration::from_millis(50);
    let a = SnowflakeStore::open(&s, 5, d, d * 10).expect("open a");
    a.schema_init().await.expect("schema a");
    let b = SnowflakeStore::open(&s, 5, d, d * 10).expect("open b");
    b.schema_init().await.expect("schema b");
    Harness {
        a: Arc::new(a),
        b: Arc::new(b),
        guard: Box::new(emu),
        lacks: Vec::new(),
    }
}

fleet_q_actors::conformance_suite!(open, skip = skip);

fn fleet_q(env: &[(&str, String)], args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-q"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Key-pair authentication, end to end: settings → PEM file → JWT login → queries.
/// The emulator verifies the JWT against the public key registered for the user
/// (as Snowflake does), so this proves sign-in: the right key gets a session, a
/// wrong key is refused.
#[test]
fn key_pair_authentication_and_fleet_q_check_and_schema() {
    let Some(py) = emulator::python() else {
        eprintln!("skipped: python3 is missing, so the Snowflake protocol peer cannot run");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Two key pairs: the user's (its public half registered) and a stranger's.
    let keygen = |name: &str| {
        let private = dir.path().join(format!("{name}.p8"));
        let public = dir.path().join(format!("{name}.pub"));
        let ok = std::process::Command::new(&py)
            .args([
                "-c",
                "import sys\nfrom cryptography.hazmat.primitives.asymmetric import rsa\n\
                 from cryptography.hazmat.primitives import serialization as s\n\
                 k = rsa.generate_private_key(public_exponent=65537, key_size=2048)\n\
                 open(sys.argv[1], 'wb').write(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))\n\
                 open(sys.argv[2], 'wb').write(k.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))",
            ])
            .arg(&private)
            .arg(&public)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        (private, public)
    };
    let (key, public) = keygen("user");
    let (wrong_key, _) = keygen("stranger");
    let emu = emulator::Emulator::start_with_keys(&py, vec![("fleetq".into(), public)]);
    let key_env = |k: &std::path::Path| -> Vec<(&str, String)> {
        let mut env: Vec<(&str, String)> = emu
            .env()
            .into_iter()
            .filter(|(k, _)| *k != "FLEET_Q_SNOWFLAKE_PASSWORD")
            .collect();
        env.push((
            "FLEET_Q_SNOWFLAKE_PRIVATE_KEY_PATH",
            k.display().to_string(),
        ));
        env
    };
    // A key whose public half is not registered is refused at sign-in.
    let out = fleet_q(&key_env(&wrong_key), &["check"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong key signed in:\n{text}");
    assert!(text.contains("JWT") || text.contains("390144"), "{text}");
    let env = key_env(&key);
    let out = fleet_q(&env, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("store: snowflake account fleetq-test database FLEETQ.PUBLIC"),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok")).count(),
        5,
        "{text}"
    );
    // The key itself never shows in output.
    let pem = std::fs::read_to_string(&key).unwrap();
    let body_line = pem.lines().nth(1).unwrap();
    assert!(!text.contains(body_line));

    let out = fleet_q(&env, &["schema"]);
    let ddl = String::from_utf8(out.stdout).unwrap();
    assert!(
        ddl.contains("CREATE TABLE IF NOT EXISTS STEP_TRACKER") && ddl.contains("TIMESTAMP_NTZ")
    );
    assert!(
        !ddl.contains("PRIMARY KEY"),
        "Snowflake does not enforce keys; none declared"
    );
}
