//! Settings parsing, validation and printing.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Sources {
    Sources {
        file: None,
        env: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn the_engine_accepts_what_the_settings_accept() {
    // Settings validation is at least as strict as the engine's own checks:
    // a configuration `fleet-q serve` accepts never fails `Pod::start`.
    let s = load(&env(&[])).unwrap();
    crate::serve::pod_config(&s).validate().unwrap();
    let s = load(&env(&[
        ("FLEET_Q_HEARTBEAT_INTERVAL_SECONDS", "1"),
        ("FLEET_Q_DEAD_POD_THRESHOLD_SECONDS", "3"),
        ("FLEET_Q_DEFAULT_BASE_DELAY_MS", "1"),
        ("FLEET_Q_DEFAULT_MAX_DELAY_MS", "1"),
        ("FLEET_Q_CLAIM_BATCH_SIZE", "1"),
        ("FLEET_Q_PRUNE_BATCH_SIZE", "1"),
        ("FLEET_Q_RECONCILE_INTERVAL_SECONDS", "0"),
    ]))
    .unwrap();
    crate::serve::pod_config(&s).validate().unwrap();
}

#[test]
fn every_declared_default_fits_its_kind() {
    for (i, k) in KEYS.iter().enumerate() {
        assert_eq!(k.id as usize, i, "{} is out of order", k.key);
        assert_eq!(k.id.doc().key, k.key);
        match k.kind {
            Kind::Int { min, max } | Kind::Seconds { min, max } => {
                let v: u64 = k.default.parse().expect(k.key);
                assert!(
                    (min..=max).contains(&v),
                    "{}: {v} not in {min}..={max}",
                    k.key
                );
            }
            Kind::OneOf(options) => assert!(
                k.default.is_empty() || options.contains(&k.default.to_ascii_lowercase().as_str()),
                "{}: {} is not one of {options:?}",
                k.key,
                k.default
            ),
            Kind::Number => {
                k.default.parse::<f64>().expect(k.key);
            }
            Kind::Text => {}
        }
    }
}

#[test]
fn defaults_are_valid_and_documented() {
    let s = load(&env(&[])).unwrap();
    assert_eq!(s.storage_mode, StorageMode::Sqlite);
    assert_eq!(s.sqlite_db_path, PathBuf::from("./fleet-q.db"));
    assert_eq!(s.api_port, 8000);
    assert_eq!(s.max_parallelism, 10);
    assert_eq!(s.max_capacity(), 8);
    assert_eq!(s.heartbeat_interval, Duration::from_secs(30));
    assert_eq!(s.dead_pod_threshold, Duration::from_secs(180));
    assert_eq!(s.log_level, "INFO");
    assert_eq!(s.log_format, LogFormat::Json);
    assert_eq!(s.retention, Duration::from_secs(604_800));
    assert_eq!(s.max_payload_bytes, 1_048_576);
    assert!(s.admin_token.is_none());
    assert!(!s.pod_id.is_empty());
}

/// The documented defaults (the settings table) are the engine's own
/// (`fleet_q_actors::defaults`), so code that embeds the engine gets what
/// `fleet-q serve` gets.
#[test]
fn documented_defaults_are_the_engines() {
    use fleet_q_actors::defaults as d;
    let s = load(&env(&[])).unwrap();
    assert_eq!(s.heartbeat_interval, d::HEARTBEAT_INTERVAL);
    assert_eq!(s.dead_pod_threshold, d::DEAD_POD_THRESHOLD);
    assert_eq!(s.claim_interval, d::CLAIM_INTERVAL);
    assert_eq!(s.claim_batch_size, d::CLAIM_BATCH);
    assert_eq!(s.leader_check_interval, d::LEADER_CHECK_INTERVAL);
    assert_eq!(s.recovery_interval, d::RECOVERY_INTERVAL);
    assert_eq!(s.reconcile_interval, d::RECONCILE_INTERVAL);
    assert_eq!(s.stats_interval, d::STATS_INTERVAL);
    assert_eq!(s.step_timeout, d::STEP_TIMEOUT);
    assert_eq!(s.shutdown_grace, d::SHUTDOWN_GRACE);
    assert_eq!(s.retention, d::RETENTION);
    assert_eq!(s.prune_batch_size, d::PRUNE_BATCH);
    assert_eq!(s.prune_interval, d::PRUNE_INTERVAL);
    assert_eq!(s.default_max_attempts, d::STORE_MAX_ATTEMPTS);
    assert_eq!(s.default_base_delay, d::BASE_DELAY);
    assert_eq!(s.default_max_delay, d::MAX_DELAY);
    assert_eq!(s.default_retry_budget, d::STORE_RETRY_BUDGET);
    assert_eq!(s.store_retry().budget, d::STORE_RETRY_BUDGET);
    let pod = fleet_q_actors::PodConfig::default();
    assert_eq!(
        (
            pod.heartbeat_interval,
            pod.dead_pod_threshold,
            pod.retention
        ),
        (s.heartbeat_interval, s.dead_pod_threshold, s.retention)
    );
}

#[test]
fn every_problem_is_listed_at_once() {
    let e = load(&env(&[
        ("FLEET_Q_STORAGE_MODE", "postgres"),
        ("FLEET_Q_MAX_PARALLELISM", "0"),
        ("FLEET_Q_CAPACITY_THRESHOLD", "1.5"),
        ("FLEET_Q_HEARTBEAT_INTERVAL_SECONDS", "abc"),
        ("FLEET_Q_LOG_FORMAT", "xml"),
        ("FLEET_Q_HTTP_HANDLERS", "email=ftp://x"),
    ]))
    .unwrap_err();
    let text = e.to_string();
    for var in [
        "FLEET_Q_STORAGE_MODE",
        "FLEET_Q_MAX_PARALLELISM",
        "FLEET_Q_CAPACITY_THRESHOLD",
        "FLEET_Q_HEARTBEAT_INTERVAL_SECONDS",
        "FLEET_Q_LOG_FORMAT",
        "FLEET_Q_HTTP_HANDLERS",
    ] {
        assert!(text.contains(var), "{var} missing from:\n{text}");
    }
    assert_eq!(e.0.len(), 6, "{text}");
}

#[test]
fn dead_threshold_must_exceed_two_heartbeats() {
    let e = load(&env(&[
        ("FLEET_Q_HEARTBEAT_INTERVAL_SECONDS", "10"),
        ("FLEET_Q_DEAD_POD_THRESHOLD_SECONDS", "20"),
    ]))
    .unwrap_err();
    assert!(e.0[0].starts_with("FLEET_Q_DEAD_POD_THRESHOLD_SECONDS"));
    assert!(load(&env(&[
        ("FLEET_Q_HEARTBEAT_INTERVAL_SECONDS", "10"),
        ("FLEET_Q_DEAD_POD_THRESHOLD_SECONDS", "21"),
    ]))
    .is_ok());
}

#[test]
fn snowflake_mode_requires_credentials_and_never_echoes_secrets() {
    let e = load(&env(&[("FLEET_Q_STORAGE_MODE", "snowflake")])).unwrap_err();
    let text = e.to_string();
    for var in [
        "FLEET_Q_SNOWFLAKE_ACCOUNT",
        "FLEET_Q_SNOWFLAKE_USER",
        "FLEET_Q_SNOWFLAKE_DATABASE",
        "FLEET_Q_SNOWFLAKE_PASSWORD",
    ] {
        assert!(text.contains(var), "{var} missing from:\n{text}");
    }
    let e = load(&env(&[
        ("FLEET_Q_STORAGE_MODE", "snowflake"),
        ("FLEET_Q_SNOWFLAKE_ACCOUNT", "acme"),
        ("FLEET_Q_SNOWFLAKE_USER", "u"),
        ("FLEET_Q_SNOWFLAKE_DATABASE", "db; drop"),
        ("FLEET_Q_SNOWFLAKE_PASSWORD", "hunter2-secret"),
        ("FLEET_Q_SNOWFLAKE_PRIVATE_KEY", "-----BEGIN key-secret"),
    ]))
    .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("FLEET_Q_SNOWFLAKE_DATABASE"));
    assert!(text.contains("set only one"));
    assert!(
        !text.contains("hunter2") && !text.contains("key-secret"),
        "{text}"
    );
}

#[test]
fn secrets_are_redacted_in_every_printed_form() {
    let s = load(&env(&[
        ("FLEET_Q_ADMIN_TOKEN", "tok-very-secret"),
        ("FLEET_Q_SNOWFLAKE_PASSWORD", "pw-very-secret"),
    ]))
    .unwrap();
    assert_eq!(s.admin_token.as_ref().unwrap().expose(), "tok-very-secret");
    let printed = format!(
        "{s:?} {} {:?}",
        serde_json::to_string(&s).unwrap(),
        s.entries()
    );
    assert!(!printed.contains("very-secret"), "{printed}");
    let entries: HashMap<String, String> = s.entries().into_iter().collect();
    assert_eq!(entries["FLEET_Q_ADMIN_TOKEN"], "<redacted>");
    assert_eq!(entries["FLEET_Q_SNOWFLAKE_PRIVATE_KEY"], "");
    assert_eq!(entries["FLEET_Q_MAX_PARALLELISM"], "10");
    assert_eq!(entries["FLEET_Q_HEARTBEAT_INTERVAL_SECONDS"], "30");
    assert_eq!(entries["FLEET_Q_DEFAULT_BASE_DELAY_MS"], "100");
    assert_eq!(entries["FLEET_Q_STORAGE_MODE"], "sqlite");
    assert_eq!(entries["FLEET_Q_SNOWFLAKE_CONNECTION_POOL_SIZE"], "10");
    assert_eq!(entries.len(), KEYS.len());
}

#[test]
fn file_is_overridden_by_env_and_unknown_file_keys_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet-q.toml");
    std::fs::write(
        &path,
        "max_parallelism = 20\ncapacity_threshold = 0.5\nlog_format = \"console\"\n",
    )
    .unwrap();
    let mut src = env(&[
        ("FLEET_Q_MAX_PARALLELISM", "40"),
        // Kubernetes service links share the prefix: ignored.
        ("FLEET_Q_SERVICE_PORT", "tcp://10.0.0.1:80"),
    ]);
    src.file = Some(path.clone());
    let s = load(&src).unwrap();
    assert_eq!(s.max_parallelism, 40);
    assert_eq!(s.capacity_threshold, 0.5);
    assert_eq!(s.log_format, LogFormat::Console);
    assert_eq!(s.max_capacity(), 20);

    std::fs::write(&path, "max_paralelism = 20\n").unwrap();
    let e = load(&src).unwrap_err();
    assert!(e.to_string().contains("unknown setting `max_paralelism`"));
    src.file = Some(dir.path().join("missing.toml"));
    assert!(load(&src).is_err());
}

#[test]
fn http_handlers_parse() {
    let s = load(&env(&[(
        "FLEET_Q_HTTP_HANDLERS",
        "email=http://mailer:8080/steps, resize=https://img/x",
    )]))
    .unwrap();
    assert_eq!(s.http_handlers["email"], "http://mailer:8080/steps");
    assert_eq!(s.http_handlers["resize"], "https://img/x");
    assert!(load(&env(&[("FLEET_Q_HTTP_HANDLERS", "a=http://x,a=http://y")])).is_err());
}

#[test]
fn capacity_is_at_least_one() {
    let s = load(&env(&[
        ("FLEET_Q_MAX_PARALLELISM", "1"),
        ("FLEET_Q_CAPACITY_THRESHOLD", "0.1"),
    ]))
    .unwrap();
    assert_eq!(s.max_capacity(), 1);
}

#[test]
fn idle_quiet_mode_is_off_on_sqlite_and_on_for_snowflake_unless_set() {
    let s = load(&env(&[])).unwrap();
    assert_eq!(s.idle_poll_max, None, "off on SQLite by default");
    let s = load(&env(&[("FLEET_Q_IDLE_POLL_MAX_SECONDS", "600")])).unwrap();
    assert_eq!(s.idle_poll_max, Some(Duration::from_secs(600)));
    assert_eq!(s.value_of(Key::IdlePollMaxSeconds), "600");
    crate::serve::pod_config(&s).validate().unwrap();
    let snow = [
        ("FLEET_Q_STORAGE_MODE", "snowflake"),
        ("FLEET_Q_SNOWFLAKE_ACCOUNT", "a"),
        ("FLEET_Q_SNOWFLAKE_USER", "u"),
        ("FLEET_Q_SNOWFLAKE_PASSWORD", "p"),
        ("FLEET_Q_SNOWFLAKE_DATABASE", "d"),
    ];
    let s = load(&env(&snow)).unwrap();
    assert_eq!(s.idle_poll_max, Some(Duration::from_secs(360)));
    let mut off = snow.to_vec();
    off.push(("FLEET_Q_IDLE_POLL_MAX_SECONDS", "off"));
    let s = load(&env(&off)).unwrap();
    assert_eq!(s.idle_poll_max, None);
    assert_eq!(s.value_of(Key::IdlePollMaxSeconds), "off");
    // Every bad value is listed with the others.
    for bad in ["0", "5", "soon", "100000"] {
        let problems = load(&env(&[
            ("FLEET_Q_IDLE_POLL_MAX_SECONDS", bad),
            ("FLEET_Q_CLAIM_INTERVAL_SECONDS", "20"),
            ("FLEET_Q_MAX_PARALLELISM", "0"),
        ]))
        .unwrap_err()
        .0;
        assert!(
            problems.iter().any(|p| p.contains("IDLE_POLL_MAX")) && problems.len() >= 2,
            "{bad}: {problems:?}"
        );
    }
}

#[test]
fn claim_ahead_and_min_free_resolve_auto_by_store_and_refuse_bad_values() {
    let s = load(&env(&[("FLEET_Q_MAX_PARALLELISM", "20")])).unwrap();
    assert_eq!((s.claim_ahead, s.claim_min_free), (0, 1), "SQLite: off");
    let snowflake = [
        ("FLEET_Q_STORAGE_MODE", "snowflake"),
        ("FLEET_Q_SNOWFLAKE_ACCOUNT", "acme"),
        ("FLEET_Q_SNOWFLAKE_USER", "u"),
        ("FLEET_Q_SNOWFLAKE_DATABASE", "db"),
        ("FLEET_Q_SNOWFLAKE_PASSWORD", "pw"),
        ("FLEET_Q_MAX_PARALLELISM", "20"),
    ];
    let s = load(&env(&snowflake)).unwrap();
    // 20 x 0.8 = 16 slots: claim-ahead 16, min free the larger of 8 and 16.
    assert_eq!((s.claim_ahead, s.claim_min_free), (16, 16));
    let mut off = snowflake.to_vec();
    off.push(("FLEET_Q_CLAIM_AHEAD", "0"));
    let s = load(&env(&off)).unwrap();
    assert_eq!((s.claim_ahead, s.claim_min_free), (0, 8));
    assert_eq!(
        s.entries()
            .iter()
            .find(|e| e.0 == "FLEET_Q_CLAIM_AHEAD")
            .unwrap()
            .1,
        "0"
    );
    for bad in ["-1", "10001", "lots"] {
        let e = load(&env(&[("FLEET_Q_CLAIM_AHEAD", bad)])).unwrap_err();
        assert!(e.to_string().contains("FLEET_Q_CLAIM_AHEAD"), "{bad}: {e}");
        assert_eq!(e.0.len(), 1, "{e}");
    }
    let s = load(&env(&[("FLEET_Q_CLAIM_AHEAD", "5")])).unwrap();
    assert_eq!(crate::serve::pod_config(&s).claim_ahead, 5);
}
