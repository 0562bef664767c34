//! Reading the sources (file, environment) and building typed [`Settings`],
//! collecting every problem.

use super::*;
use fleet_q_actors::schedule::ScheduleSpec;

/// The plain settings of a TOML file, and the schedules it declares
/// (`[[schedules]]` tables, each a `ScheduleSpec`).
pub(super) fn read_file(path: &Path) -> Result<FileSettings, String> {
    let cfg = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .build()
        .map_err(|e| {
            format!(
                "{}: cannot read the configuration file: {e}",
                path.display()
            )
        })?;
    let table: HashMap<String, config::Value> = cfg
        .try_deserialize()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    let mut schedules = Vec::new();
    for (k, v) in table {
        if k.eq_ignore_ascii_case("schedules") {
            schedules = v
                .try_deserialize::<Vec<ScheduleSpec>>()
                .map_err(|e| format!("{}: schedules: {e}", path.display()))?;
            continue;
        }
        let text = match v.kind {
            config::ValueKind::Table(_) | config::ValueKind::Array(_) => {
                return Err(format!(
                    "{}: `{k}` must be a plain value, not a table or array",
                    path.display()
                ))
            }
            _ => v.to_string(),
        };
        out.push((k.to_ascii_lowercase(), text));
    }
    Ok((out, schedules))
}

/// What [`read_file`] reads.
pub(super) type FileSettings = (Vec<(String, String)>, Vec<ScheduleSpec>);

/// Every problem of the declared schedules (each named), and duplicate names.
pub(super) fn schedule_problems(schedules: &[ScheduleSpec]) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, s) in schedules.iter().enumerate() {
        for p in s.problems() {
            out.push(format!("schedules[{i}] ({:?}): {p}", s.name));
        }
        if !seen.insert(s.name.as_str()) {
            out.push(format!(
                "schedules[{i}]: the name {:?} is declared twice",
                s.name
            ));
        }
    }
    if schedules.len() > fleet_q_actors::schedule::MAX_SCHEDULES {
        out.push(format!(
            "schedules: at most {} may be declared",
            fleet_q_actors::schedule::MAX_SCHEDULES
        ));
    }
    out
}

pub(super) struct Parser<'a> {
    pub(super) raw: HashMap<String, (String, &'static str)>,
    pub(super) problems: &'a mut Vec<String>,
}

impl Parser<'_> {
    /// The raw text for `key`, or its default.
    pub(super) fn text(&self, key: Key) -> String {
        let d = key.doc();
        self.raw
            .get(d.key)
            .map(|(v, _)| v.trim().to_string())
            .unwrap_or_else(|| d.default.to_string())
    }

    pub(super) fn opt(&self, key: Key) -> Option<String> {
        Some(self.text(key)).filter(|s| !s.is_empty())
    }

    fn problem(&mut self, key: Key, msg: impl fmt::Display) {
        let d = key.doc();
        let shown = if d.secret {
            String::new()
        } else {
            format!(" (got {:?})", crate::api::truncate(&self.text(key), 100))
        };
        self.problems.push(format!("{}: {msg}{shown}", d.env()));
    }

    /// A whole number within the range its declaration gives.
    fn num<T>(&mut self, key: Key) -> T
    where
        T: std::str::FromStr + TryFrom<u64> + Copy,
    {
        let d = key.doc();
        let (Kind::Int { min, max } | Kind::Seconds { min, max }) = d.kind else {
            unreachable!("{} is declared {}, not a whole number", d.key, d.kind)
        };
        let in_type = |v: u64| T::try_from(v).ok();
        let default = d
            .default
            .parse::<u64>()
            .ok()
            .and_then(in_type)
            .expect("numeric defaults parse and fit");
        match self.text(key).parse::<u64>() {
            Ok(v) if (min..=max).contains(&v) => in_type(v).unwrap_or(default),
            Ok(_) => {
                self.problem(key, format!("must be between {min} and {max}"));
                default
            }
            Err(_) => {
                self.problem(key, "must be a whole number");
                default
            }
        }
    }

    fn secs(&mut self, key: Key) -> Duration {
        Duration::from_secs(self.num(key))
    }

    /// One of the words its declaration lists.
    fn choice(&mut self, key: Key) -> &'static str {
        let Kind::OneOf(options) = key.doc().kind else {
            unreachable!("{} is not declared as a choice", key.doc().key)
        };
        let t = self.text(key).to_ascii_lowercase();
        match options.iter().find(|o| **o == t) {
            Some(o) => o,
            None => {
                self.problem(key, format!("must be one of {}", options.join(", ")));
                options[0]
            }
        }
    }
}

pub(super) fn default_pod_prefix() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    // A host name is outside our control: keep what a pod id may hold.
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(MAX_POD_PREFIX)
        .collect();
    let host = host.trim_start_matches('.').to_string();
    if host.is_empty() {
        "fleet-q".into()
    } else {
        host
    }
}

/// Longest configured pod id prefix.
pub const MAX_POD_PREFIX: usize = 100;

/// Whether `prefix` may start a pod id: 1 to [`MAX_POD_PREFIX`] characters from
/// `A-Z a-z 0-9 . _ -`, not starting with `.` (so no `..`, no `/`, nothing a file
/// name built from it, such as the default ledger path, could escape through).
pub fn valid_pod_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= MAX_POD_PREFIX
        && !prefix.starts_with('.')
        && !prefix.contains("..")
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// This process's pod id: `prefix`, then an incarnation suffix made of the start
/// time in milliseconds (hex) and 32 random bits. Two processes collide only when
/// they start in the same millisecond and draw the same 32 bits, so a restarted
/// container never takes over its predecessor's row (the store also tells runs of
/// one id apart by an incarnation token; see `HeartbeatParams::incarnation`).
pub fn incarnation_id(prefix: &str) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!("{prefix}-{ms:x}{:08x}", rand::random::<u32>())
}

pub(super) fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && s.len() <= 255
}

pub(super) fn build(p: &mut Parser<'_>) -> Settings {
    let storage_mode = match p.choice(Key::StorageMode) {
        "snowflake" => StorageMode::Snowflake,
        _ => StorageMode::Sqlite,
    };
    let sqlite_db_path = PathBuf::from(p.text(Key::SqliteDbPath));
    if sqlite_db_path.as_os_str().is_empty() {
        p.problem(Key::SqliteDbPath, "must not be empty");
    }
    let api_host = p.text(Key::ApiHost);
    if api_host.parse::<std::net::IpAddr>().is_err() && api_host != "localhost" {
        p.problem(Key::ApiHost, "must be an IP address or localhost");
    }
    let api_port = p.num::<u16>(Key::ApiPort);
    // Every process gets its own identity: a configured id is a prefix, to which an
    // incarnation suffix is added. A restarted container (same pod name) must not
    // take over the row of its previous run, or the steps that run held would stay
    // claimed by a "live" pod forever instead of being recovered.
    let prefix = match p.opt(Key::PodId) {
        Some(prefix) => {
            if !valid_pod_prefix(&prefix) {
                p.problem(Key::PodId,
                    format!(
                        "must be 1 to {MAX_POD_PREFIX} characters of A-Z, a-z, 0-9, '.', '_' and '-', not starting with '.' and without '..'"
                    ),
                );
            }
            prefix
        }
        None => default_pod_prefix(),
    };
    let pod_id = incarnation_id(&prefix);
    let max_parallelism = p.num::<u32>(Key::MaxParallelism);
    let capacity_threshold = match p.text(Key::CapacityThreshold).parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => v,
        _ => {
            p.problem(
                Key::CapacityThreshold,
                "must be a number above 0 and at most 1",
            );
            0.8
        }
    };
    let heartbeat_interval = p.secs(Key::HeartbeatIntervalSeconds);
    let claim_interval = p.secs(Key::ClaimIntervalSeconds);
    let claim_batch_size = p.num::<u32>(Key::ClaimBatchSize);
    let snowflake_mode = p.text(Key::StorageMode) == "snowflake";
    let capacity = ((f64::from(max_parallelism) * capacity_threshold).floor() as u32).max(1);
    let claim_ahead = match p.text(Key::ClaimAhead).as_str() {
        "auto" if snowflake_mode => capacity,
        "auto" => 0,
        raw => match raw.parse::<u32>() {
            Ok(n) if n <= 10_000 => n,
            _ => {
                p.problem(
                    Key::ClaimAhead,
                    "must be `auto` or a whole number from 0 to 10000",
                );
                0
            }
        },
    };
    let claim_min_free = match p.text(Key::ClaimMinFree).as_str() {
        "auto" if snowflake_mode => capacity.div_ceil(2).max(claim_ahead),
        "auto" => 1,
        raw => match raw.parse::<u32>() {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => {
                p.problem(
                    Key::ClaimMinFree,
                    "must be `auto` or a whole number from 1 to 10000",
                );
                1
            }
        },
    };
    let finish_linger = match p.text(Key::FinishLingerMs).as_str() {
        "auto" if snowflake_mode => Duration::from_millis(200),
        "auto" => Duration::ZERO,
        raw => match raw.parse::<u64>() {
            Ok(n) if n <= 10_000 => Duration::from_millis(n),
            _ => {
                p.problem(
                    Key::FinishLingerMs,
                    "must be `auto` or a whole number of ms from 0 to 10000",
                );
                Duration::ZERO
            }
        },
    };
    let idle_poll_max = match p.text(Key::IdlePollMaxSeconds).as_str() {
        "auto" if snowflake_mode => Some(Duration::from_secs(360)),
        "auto" | "off" => None,
        raw => match raw.parse::<u64>() {
            Ok(n) if (10..=86_400).contains(&n) && Duration::from_secs(n) >= claim_interval => {
                Some(Duration::from_secs(n))
            }
            _ => {
                p.problem(
                    Key::IdlePollMaxSeconds,
                    "must be `auto`, `off`, or a whole number of seconds from 10 to 86400 and at least the claim interval",
                );
                None
            }
        },
    };
    let recovery_interval = p.secs(Key::RecoveryIntervalSeconds);
    let reconcile_interval = p.secs(Key::ReconcileIntervalSeconds);
    let stats_interval = p.secs(Key::StatsIntervalSeconds);
    let dead_pod_threshold = p.secs(Key::DeadPodThresholdSeconds);
    if dead_pod_threshold <= heartbeat_interval * 2 {
        p.problem(Key::DeadPodThresholdSeconds,
            format!(
                "must be more than twice the heartbeat interval ({}s), or live pods would be declared dead",
                heartbeat_interval.as_secs()
            ),
        );
    }
    let leader_check_interval = p.secs(Key::LeaderCheckIntervalSeconds);
    let actor_restart_limit = p.num::<u32>(Key::ActorRestartLimit);
    let actor_restart_window = p.secs(Key::ActorRestartWindowSeconds);
    let log_level = p
        .choice(Key::LogLevel)
        .replace("warning", "warn")
        .to_ascii_uppercase();
    let log_format = match p.opt(Key::LogFormat) {
        // A person at a terminal reads lines; a container's log collector parses JSON.
        None if std::io::IsTerminal::is_terminal(&std::io::stdout()) => LogFormat::Console,
        None => LogFormat::Json,
        Some(_) => match p.choice(Key::LogFormat) {
            "console" => LogFormat::Console,
            _ => LogFormat::Json,
        },
    };
    let default_max_attempts = p.num::<u32>(Key::DefaultMaxAttempts);
    let base = p.num::<u64>(Key::DefaultBaseDelayMs);
    let max = p.num::<u64>(Key::DefaultMaxDelayMs);
    if max < base {
        p.problem(
            Key::DefaultMaxDelayMs,
            format!("must be at least FLEET_Q_DEFAULT_BASE_DELAY_MS ({base})"),
        );
    }

    let snowflake = SnowflakeSettings {
        account: p.text(Key::SnowflakeAccount),
        user: p.text(Key::SnowflakeUser),
        password: p.opt(Key::SnowflakePassword).map(Secret::new),
        database: p.text(Key::SnowflakeDatabase),
        schema: p.text(Key::SnowflakeSchema),
        warehouse: p.text(Key::SnowflakeWarehouse),
        role: p.opt(Key::SnowflakeRole),
        private_key_path: p.opt(Key::SnowflakePrivateKeyPath).map(PathBuf::from),
        private_key: p.opt(Key::SnowflakePrivateKey).map(Secret::new),
        pool_size: p.num::<u32>(Key::SnowflakeConnectionPoolSize),
        connection_timeout: p.secs(Key::SnowflakeConnectionTimeout),
        host: p.opt(Key::SnowflakeHost),
        port: p.num::<u16>(Key::SnowflakePort),
        protocol: p.choice(Key::SnowflakeProtocol).to_string(),
    };
    if storage_mode == StorageMode::Snowflake {
        for key in [
            Key::SnowflakeAccount,
            Key::SnowflakeUser,
            Key::SnowflakeDatabase,
        ] {
            if p.opt(key).is_none() {
                p.problem(key, "is required when FLEET_Q_STORAGE_MODE=snowflake");
            }
        }
        let auths = [
            snowflake.password.is_some(),
            snowflake.private_key.is_some(),
            snowflake.private_key_path.is_some(),
        ];
        match auths.iter().filter(|a| **a).count() {
            0 => p.problems.push(
                "FLEET_Q_SNOWFLAKE_PASSWORD, FLEET_Q_SNOWFLAKE_PRIVATE_KEY or \
                 FLEET_Q_SNOWFLAKE_PRIVATE_KEY_PATH: one is required in snowflake mode"
                    .into(),
            ),
            1 => {}
            _ => p.problems.push(
                "FLEET_Q_SNOWFLAKE_PASSWORD, FLEET_Q_SNOWFLAKE_PRIVATE_KEY and \
                 FLEET_Q_SNOWFLAKE_PRIVATE_KEY_PATH: set only one"
                    .into(),
            ),
        }
        if let Some(path) = &snowflake.private_key_path {
            if !path.is_file() {
                p.problem(Key::SnowflakePrivateKeyPath, "is not a readable file");
            }
        }
        for key in [
            Key::SnowflakeDatabase,
            Key::SnowflakeSchema,
            Key::SnowflakeWarehouse,
            Key::SnowflakeRole,
        ] {
            if let Some(v) = p.opt(key) {
                if !valid_identifier(&v) {
                    p.problem(
                        key,
                        "must be a plain identifier: a letter or _, then letters, digits, _ or $",
                    );
                }
            }
        }
    }

    let admin_token = p.raw.get(Key::AdminToken.doc().key).map(|(v, _)| v.clone());
    let admin_token = match admin_token {
        Some(t) if t.trim().is_empty() => {
            p.problem(Key::AdminToken, "must not be blank when set");
            None
        }
        Some(t) => Some(Secret::new(t)),
        None => None,
    };

    let mut http_handlers = BTreeMap::new();
    if let Some(spec) = p.opt(Key::HttpHandlers) {
        for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match part.split_once('=') {
                Some((t, url))
                    if !t.trim().is_empty()
                        && (url.trim().starts_with("http://")
                            || url.trim().starts_with("https://")) =>
                {
                    if http_handlers
                        .insert(t.trim().to_string(), url.trim().to_string())
                        .is_some()
                    {
                        p.problem(
                            Key::HttpHandlers,
                            format!("type `{}` is listed twice", t.trim()),
                        );
                    }
                }
                _ => p.problem(
                    Key::HttpHandlers,
                    format!("`{part}` is not `type=http(s)://host/path`"),
                ),
            }
        }
    }
    let step_timeout = p.secs(Key::StepTimeoutSeconds);
    let shutdown_grace = p.secs(Key::ShutdownGraceSeconds);
    let retention = p.secs(Key::RetentionSeconds);
    let prune_batch_size = p.num::<u32>(Key::PruneBatchSize);
    let prune_interval = p.secs(Key::PruneIntervalSeconds);
    let schedule_check = p.secs(Key::ScheduleCheckSeconds);
    let max_payload_bytes = p.num::<usize>(Key::MaxPayloadBytes);
    let http_body_timeout = p.secs(Key::HttpBodyTimeoutSeconds);
    let http_max_connections = p.num::<usize>(Key::HttpMaxConnections);
    let http_max_result_bytes = p.num::<usize>(Key::HttpMaxResultBytes);
    let queues = p.opt(Key::Queues).map(|raw| {
        let names: Vec<String> = raw
            .split(',')
            .map(|q| q.trim().to_string())
            .filter(|q| !q.is_empty())
            .collect();
        for q in &names {
            if let Some(why) = fleet_q_actors::queue::name_problem(q) {
                p.problem(Key::Queues, format!("queue {q:?} {why}"));
            }
        }
        if names.is_empty() {
            p.problem(Key::Queues, "must name at least one queue when set");
        }
        names
    });
    let create_queues = p.choice(Key::CreateQueues) == "on";
    let ui = p.choice(Key::Ui) == "on";
    let ui_read_only = p.choice(Key::UiReadOnly) == "on";
    let ledger_path = match p.opt(Key::LedgerPath).as_deref() {
        Some(":memory:") => None,
        Some(path) => Some(PathBuf::from(path)),
        None => Some(std::env::temp_dir().join(format!("fleet-q-ledger-{pod_id}.db"))),
    };

    Settings {
        storage_mode,
        sqlite_db_path,
        api_host,
        api_port,
        pod_id,
        max_parallelism,
        capacity_threshold,
        heartbeat_interval,
        claim_interval,
        claim_batch_size,
        claim_ahead,
        claim_min_free,
        finish_linger,
        idle_poll_max,
        recovery_interval,
        reconcile_interval,
        stats_interval,
        dead_pod_threshold,
        leader_check_interval,
        actor_restart_limit,
        actor_restart_window,
        log_level,
        log_format,
        default_max_attempts,
        default_base_delay: Duration::from_millis(base),
        default_max_delay: Duration::from_millis(max),
        default_retry_budget: p.secs(Key::DefaultRetryBudgetSeconds),
        snowflake,
        admin_token,
        http_handlers,
        step_timeout,
        shutdown_grace,
        retention,
        prune_batch_size,
        prune_interval,
        schedule_check,
        schedules: Vec::new(),
        max_payload_bytes,
        http_body_timeout,
        http_max_connections,
        http_max_result_bytes,
        queues,
        create_queues,
        ui,
        ui_read_only,
        ledger_path,
    }
}
