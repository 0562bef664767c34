//! Settings: defaults < optional TOML file (`--config`) < `FLEET_Q_*` environment.
//!
//! Everything is parsed once, at start-up, into typed [`Settings`]; every problem is
//! collected and reported together ([`ConfigError`]), so a user fixes a broken
//! deployment in one round. Secrets ([`Secret`]) never print.
//!
//! Each setting is declared once, in the `keys!` table: name, default, [`Kind`]
//! (with the range the parser enforces), secrecy and doc line. From it come
//! [`KEYS`] (parsing, `fleet-q config --describe`, the README's table, checked by
//! a test, and the deployment checks) and [`Key`], which the parser and
//! [`Settings::entries`] match on exhaustively: a setting that is declared but
//! not parsed or printed, or a misspelt one, does not compile.
//!
//! Unknown keys in the TOML file are errors (they are typos). Unknown `FLEET_Q_*`
//! environment variables are ignored: Kubernetes injects service-link variables
//! such as `FLEET_Q_SERVICE_PORT` for a Service named `fleet-q-service`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// Prefix of every environment variable fleet-q reads.
pub const ENV_PREFIX: &str = "FLEET_Q_";

/// How a setting's text is read and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Text, checked by the setting's own rule if it has one.
    Text,
    /// A whole number in `min..=max`.
    Int {
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// Whole seconds in `min..=max`.
    Seconds {
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A decimal number, checked by the setting's own rule.
    Number,
    /// One of these words (any case).
    OneOf(&'static [&'static str]),
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Text => f.write_str("text"),
            Kind::Int { min, max } => write!(f, "integer {min} to {max}"),
            Kind::Seconds { min, max } => write!(f, "seconds {min} to {max}"),
            Kind::Number => f.write_str("number"),
            Kind::OneOf(options) => write!(f, "one of {}", options.join(", ")),
        }
    }
}

/// One documented setting.
#[derive(Clone, Copy, Debug)]
pub struct KeyDoc {
    /// Which setting (the parser and printer use this, so a misspelt setting
    /// does not compile).
    pub id: Key,
    /// Key in the TOML file; the environment variable is `FLEET_Q_` + upper case.
    pub key: &'static str,
    /// Default as text; empty when unset by default.
    pub default: &'static str,
    /// How its value is read, with the allowed range.
    pub kind: Kind,
    /// Never printed.
    pub secret: bool,
    /// What it does and what it accepts.
    pub doc: &'static str,
}

impl KeyDoc {
    /// The environment variable name.
    pub fn env(&self) -> String {
        format!("{ENV_PREFIX}{}", self.key.to_ascii_uppercase())
    }
}

/// Declares every setting once: its [`Key`], its name, default, [`Kind`]
/// (with the range the parser enforces), whether it is secret, and its doc
/// line. [`KEYS`] (parsing, `fleet-q config`, the README check, the deployment
/// checks) and [`Key`] (which the parser and [`Settings::entries`] match on
/// exhaustively) both come from here.
macro_rules! keys {
    ($( $id:ident $key:literal = $default:literal, $kind:expr, $secret:literal, $doc:literal; )*) => {
        /// A setting, by name in code.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Key {
            $(
                #[doc = concat!("`", $key, "` (`FLEET_Q_` + upper case); its doc line is in [`KEYS`].")]
                $id,
            )*
        }

        /// Every setting fleet-q reads, in documentation order (the order of
        /// [`Key`]).
        pub const KEYS: &[KeyDoc] = &[ $( KeyDoc { id: Key::$id, key: $key, default: $default, kind: { use Kind::*; $kind }, secret: $secret, doc: $doc } ),* ];
    };
}

impl Key {
    /// This setting's declaration.
    pub fn doc(self) -> &'static KeyDoc {
        &KEYS[self as usize]
    }
}

keys! {
    StorageMode "storage_mode" = "sqlite", OneOf(&["sqlite", "snowflake"]), false, "`sqlite` (embedded, one file) or `snowflake`";
    SqliteDbPath "sqlite_db_path" = "./fleet-q.db", Text, false, "SQLite database file, shared by the pods of one machine";
    ApiHost "api_host" = "0.0.0.0", Text, false, "address the HTTP API binds";
    ApiPort "api_port" = "8000", Int { min: 0, max: 65535 }, false, "HTTP port (0 picks a free port)";
    PodId "pod_id" = "", Text, false, "prefix of this process's id (1-100 of A-Z a-z 0-9 . _ -); each process adds an incarnation suffix of start time and randomness (default prefix: host name)";
    MaxParallelism "max_parallelism" = "10", Int { min: 1, max: 10_000 }, false, "steps one pod may run at once, 1 to 10000";
    CapacityThreshold "capacity_threshold" = "0.8", Number, false, "(0, 1]; max capacity = floor(parallelism x threshold), at least 1";
    HeartbeatIntervalSeconds "heartbeat_interval_seconds" = "30", Seconds { min: 1, max: 86_400 }, false, "heartbeat period, at least 1";
    ClaimIntervalSeconds "claim_interval_seconds" = "5", Seconds { min: 1, max: 86_400 }, false, "idle claim period, at least 1 (busy pods claim at once)";
    ClaimBatchSize "claim_batch_size" = "100", Int { min: 1, max: 10_000 }, false, "most steps claimed at once, 1 to 10000";
    RecoveryIntervalSeconds "recovery_interval_seconds" = "300", Seconds { min: 1, max: 86_400 }, false, "leader's recovery period, at least 1";
    StatsIntervalSeconds "stats_interval_seconds" = "15", Seconds { min: 1, max: 3600 }, false, "Snowflake: how often the leader computes queue statistics into a shared row and the other pods read it, 1 to 3600 (requests for statistics send no statement)";
    ReconcileIntervalSeconds "reconcile_interval_seconds" = "60", Seconds { min: 0, max: 86_400 }, false, "each pod's self-reconciliation period: claims the store says it holds but it never received, older than one period, are released (0: off)";
    DeadPodThresholdSeconds "dead_pod_threshold_seconds" = "180", Seconds { min: 1, max: 86_400 }, false, "a pod is dead after this long without a heartbeat; more than 2 x heartbeat interval";
    LeaderCheckIntervalSeconds "leader_check_interval_seconds" = "60", Seconds { min: 1, max: 86_400 }, false, "leader election period, at least 1";
    ActorRestartLimit "actor_restart_limit" = "5", Int { min: 0, max: 10_000 }, false, "actor restarts allowed per window across the pod; past it the pod exits (code 70) for the orchestrator to replace";
    ActorRestartWindowSeconds "actor_restart_window_seconds" = "30", Seconds { min: 1, max: 3600 }, false, "the restart budget's window, 1 to 3600";
    LogLevel "log_level" = "INFO", OneOf(&["info", "trace", "debug", "warn", "warning", "error"]), false, "TRACE, DEBUG, INFO, WARN or ERROR";
    LogFormat "log_format" = "", OneOf(&["json", "console"]), false, "`json` or `console`; default: `console` when stdout is a terminal, else `json` (containers)";
    DefaultMaxAttempts "default_max_attempts" = "5", Int { min: 1, max: 100 }, false, "attempts of a store call on transient errors, at least 1";
    DefaultBaseDelayMs "default_base_delay_ms" = "100", Int { min: 1, max: 3_600_000 }, false, "first retry delay (store calls and step retries), at least 1";
    DefaultMaxDelayMs "default_max_delay_ms" = "30000", Int { min: 1, max: 3_600_000 }, false, "cap on any retry delay, at least the base delay";
    SnowflakeAccount "snowflake_account" = "", Text, false, "account identifier (required in snowflake mode)";
    SnowflakeUser "snowflake_user" = "", Text, false, "user (required in snowflake mode)";
    SnowflakePassword "snowflake_password" = "", Text, true, "password (or use a private key)";
    SnowflakeDatabase "snowflake_database" = "", Text, false, "database (required in snowflake mode)";
    SnowflakeSchema "snowflake_schema" = "PUBLIC", Text, false, "schema";
    SnowflakeWarehouse "snowflake_warehouse" = "COMPUTE_WH", Text, false, "warehouse";
    SnowflakeRole "snowflake_role" = "", Text, false, "role; default: the user's default role";
    SnowflakePrivateKeyPath "snowflake_private_key_path" = "", Text, false, "PEM file with the key-pair authentication private key";
    SnowflakePrivateKey "snowflake_private_key" = "", Text, true, "the private key PEM itself (instead of a path)";
    SnowflakeConnectionPoolSize "snowflake_connection_pool_size" = "10", Int { min: 1, max: 100 }, false, "sessions kept open, 1 to 100";
    SnowflakeConnectionTimeout "snowflake_connection_timeout" = "30", Seconds { min: 1, max: 3600 }, false, "seconds to connect or answer, at least 1";
    SnowflakeHost "snowflake_host" = "", Text, false, "endpoint host override (proxies, PrivateLink, tests)";
    SnowflakePort "snowflake_port" = "443", Int { min: 1, max: 65535 }, false, "endpoint port";
    SnowflakeProtocol "snowflake_protocol" = "https", OneOf(&["https", "http"]), false, "`https` or `http`";
    AdminToken "admin_token" = "", Text, true, "when set, admin routes require `Authorization: Bearer <token>`";
    HttpHandlers "http_handlers" = "", Text, false, "`type=url,...`: step types run by POSTing to a URL";
    StepTimeoutSeconds "step_timeout_seconds" = "300", Seconds { min: 1, max: 86_400 }, false, "handler timeout unless the step sets its own, 1 to 86400";
    ShutdownGraceSeconds "shutdown_grace_seconds" = "20", Seconds { min: 0, max: 3600 }, false, "time in-flight steps get to finish on SIGTERM, 0 to 3600";
    RetentionSeconds "retention_seconds" = "604800", Seconds { min: 60, max: 10 * 365 * 86_400 }, false, "finished steps are pruned after this, at least 60";
    PruneBatchSize "prune_batch_size" = "500", Int { min: 1, max: 100_000 }, false, "finished steps deleted per prune chunk by the leader, 1 to 100000 (chunks run back to back while rows are waiting)";
    PruneIntervalSeconds "prune_interval_seconds" = "10", Seconds { min: 1, max: 3600 }, false, "longest pause between prune passes, 1 to 3600 (a full chunk is followed at once; an idle store is asked once per interval)";
    LedgerPath "ledger_path" = "", Text, false, "recovery ledger (ephemeral SQLite); default: fleet-q-ledger-<pod id>.db in the temp dir; `:memory:` keeps it in memory";
    MaxPayloadBytes "max_payload_bytes" = "1048576", Int { min: 1024, max: 64 * 1024 * 1024 }, false, "HTTP request body limit, 1024 to 67108864";
    HttpBodyTimeoutSeconds "http_body_timeout_seconds" = "10", Seconds { min: 1, max: 3600 }, false, "a request body must arrive within this (else 408 and the connection closes), 1 to 3600";
    HttpMaxConnections "http_max_connections" = "1024", Int { min: 16, max: 100_000 }, false, "open HTTP connections past which requests get 503 (probes excepted), 16 to 100000";
    HttpMaxResultBytes "http_max_result_bytes" = "65536", Int { min: 1024, max: 16 * 1024 * 1024 }, false, "largest response the `http` handler stores as a step's result (larger fails the step), 1024 to 16777216";
}

pub use crate::secret::Secret;

/// Which store backs the fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageMode {
    /// The embedded single-file store.
    Sqlite,
    /// Snowflake (production).
    Snowflake,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (the seed's default).
    Json,
    /// Human-readable lines.
    Console,
}

/// The Snowflake part of the settings is the store's own options struct: the
/// store takes [`crate::storage::snowflake::SnowflakeOptions`] and imports nothing from this module, and
/// this module fills it from `FLEET_Q_SNOWFLAKE_*`.
pub use crate::storage::snowflake::SnowflakeOptions as SnowflakeSettings;

/// The validated, typed settings of one pod.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Settings {
    /// Backend.
    pub storage_mode: StorageMode,
    /// SQLite file.
    pub sqlite_db_path: PathBuf,
    /// Bind address.
    pub api_host: String,
    /// Bind port.
    pub api_port: u16,
    /// This pod's id.
    pub pod_id: String,
    /// Parallelism.
    pub max_parallelism: u32,
    /// Fraction of parallelism used.
    pub capacity_threshold: f64,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// Idle claim period.
    pub claim_interval: Duration,
    /// Most steps per claim.
    pub claim_batch_size: u32,
    /// Recovery period.
    pub recovery_interval: Duration,
    /// Self-reconciliation period (zero: off).
    pub reconcile_interval: Duration,
    /// Shared statistics period (Snowflake).
    pub stats_interval: Duration,
    /// Dead pod threshold.
    pub dead_pod_threshold: Duration,
    /// Leader check period.
    pub leader_check_interval: Duration,
    /// Actor restarts allowed per window.
    pub actor_restart_limit: u32,
    /// The restart budget's window.
    pub actor_restart_window: Duration,
    /// Log level (upper case).
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Store call attempts on transient errors.
    pub default_max_attempts: u32,
    /// Base retry delay.
    pub default_base_delay: Duration,
    /// Max retry delay.
    pub default_max_delay: Duration,
    /// Snowflake settings (validated only in snowflake mode).
    pub snowflake: SnowflakeSettings,
    /// Admin bearer token.
    pub admin_token: Option<Secret>,
    /// Step type → URL for the `http` handler.
    pub http_handlers: BTreeMap<String, String>,
    /// Default step timeout.
    pub step_timeout: Duration,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Retention of finished steps.
    pub retention: Duration,
    /// Rows per prune chunk.
    pub prune_batch_size: u32,
    /// Longest pause between prune chunks.
    pub prune_interval: Duration,
    /// HTTP body limit.
    pub max_payload_bytes: usize,
    /// Time a request body has to arrive.
    pub http_body_timeout: Duration,
    /// Open connections past which requests are refused (probes excepted).
    pub http_max_connections: usize,
    /// Largest response body the `http` handler stores as a result.
    pub http_max_result_bytes: usize,
    /// Recovery ledger file; `None` keeps it in memory.
    pub ledger_path: Option<PathBuf>,
}

impl Settings {
    /// Steps this pod runs at once: `floor(max_parallelism × capacity_threshold)`,
    /// at least 1.
    pub fn max_capacity(&self) -> u32 {
        ((self.max_parallelism as f64 * self.capacity_threshold).floor() as u32).max(1)
    }

    /// The effective settings as `(ENV_NAME, value)` in [`KEYS`] order, secrets
    /// shown only as `<redacted>`.
    pub fn entries(&self) -> Vec<(String, String)> {
        KEYS.iter()
            .map(|k| (k.env(), self.value_of(k.id)))
            .collect()
    }

    fn value_of(&self, key: Key) -> String {
        fn opt<T: fmt::Display>(v: &Option<T>) -> String {
            v.as_ref().map(ToString::to_string).unwrap_or_default()
        }
        let secs = |d: Duration| d.as_secs().to_string();
        let millis = |d: Duration| d.as_millis().to_string();
        let sf = &self.snowflake;
        match key {
            Key::StorageMode => format!("{:?}", self.storage_mode).to_ascii_lowercase(),
            Key::SqliteDbPath => self.sqlite_db_path.display().to_string(),
            Key::ApiHost => self.api_host.clone(),
            Key::ApiPort => self.api_port.to_string(),
            Key::PodId => self.pod_id.clone(),
            Key::MaxParallelism => self.max_parallelism.to_string(),
            Key::CapacityThreshold => self.capacity_threshold.to_string(),
            Key::HeartbeatIntervalSeconds => secs(self.heartbeat_interval),
            Key::ClaimIntervalSeconds => secs(self.claim_interval),
            Key::ClaimBatchSize => self.claim_batch_size.to_string(),
            Key::LedgerPath => self
                .ledger_path
                .as_ref()
                .map_or(":memory:".to_string(), |p| p.display().to_string()),
            Key::RecoveryIntervalSeconds => secs(self.recovery_interval),
            Key::ReconcileIntervalSeconds => secs(self.reconcile_interval),
            Key::StatsIntervalSeconds => secs(self.stats_interval),
            Key::DeadPodThresholdSeconds => secs(self.dead_pod_threshold),
            Key::LeaderCheckIntervalSeconds => secs(self.leader_check_interval),
            Key::ActorRestartLimit => self.actor_restart_limit.to_string(),
            Key::ActorRestartWindowSeconds => secs(self.actor_restart_window),
            Key::LogLevel => self.log_level.clone(),
            Key::LogFormat => format!("{:?}", self.log_format).to_ascii_lowercase(),
            Key::DefaultMaxAttempts => self.default_max_attempts.to_string(),
            Key::DefaultBaseDelayMs => millis(self.default_base_delay),
            Key::DefaultMaxDelayMs => millis(self.default_max_delay),
            Key::SnowflakeAccount => sf.account.clone(),
            Key::SnowflakeUser => sf.user.clone(),
            Key::SnowflakePassword => opt(&sf.password),
            Key::SnowflakeDatabase => sf.database.clone(),
            Key::SnowflakeSchema => sf.schema.clone(),
            Key::SnowflakeWarehouse => sf.warehouse.clone(),
            Key::SnowflakeRole => opt(&sf.role),
            Key::SnowflakePrivateKeyPath => opt(&sf.private_key_path.as_ref().map(|p| p.display())),
            Key::SnowflakePrivateKey => opt(&sf.private_key),
            Key::SnowflakeConnectionPoolSize => sf.pool_size.to_string(),
            Key::SnowflakeConnectionTimeout => secs(sf.connection_timeout),
            Key::SnowflakeHost => opt(&sf.host),
            Key::SnowflakePort => sf.port.to_string(),
            Key::SnowflakeProtocol => sf.protocol.clone(),
            Key::AdminToken => opt(&self.admin_token),
            Key::HttpHandlers => self
                .http_handlers
                .iter()
                .map(|(t, u)| format!("{t}={u}"))
                .collect::<Vec<_>>()
                .join(","),
            Key::StepTimeoutSeconds => secs(self.step_timeout),
            Key::ShutdownGraceSeconds => secs(self.shutdown_grace),
            Key::RetentionSeconds => secs(self.retention),
            Key::PruneBatchSize => self.prune_batch_size.to_string(),
            Key::PruneIntervalSeconds => secs(self.prune_interval),
            Key::MaxPayloadBytes => self.max_payload_bytes.to_string(),
            Key::HttpBodyTimeoutSeconds => secs(self.http_body_timeout),
            Key::HttpMaxConnections => self.http_max_connections.to_string(),
            Key::HttpMaxResultBytes => self.http_max_result_bytes.to_string(),
        }
    }
}

/// Every problem found in the settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration ({} problem{}):\n  - {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// Where raw values come from.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// Optional TOML file.
    pub file: Option<PathBuf>,
    /// Environment (name → value); usually `std::env::vars()`.
    pub env: HashMap<String, String>,
}

impl Sources {
    /// The process environment and an optional file.
    pub fn from_process(file: Option<&Path>) -> Sources {
        Sources {
            file: file.map(Path::to_path_buf),
            env: std::env::vars().collect(),
        }
    }
}

/// Loads and validates settings from `sources`, listing every problem at once.
pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
    let mut problems = Vec::new();
    let mut raw: HashMap<String, (String, &'static str)> = HashMap::new();
    if let Some(path) = &sources.file {
        match read_file(path) {
            Ok(values) => {
                for (k, v) in values {
                    if KEYS.iter().any(|d| d.key == k) {
                        raw.insert(k, (v, "file"));
                    } else {
                        problems.push(format!(
                            "{}: unknown setting `{k}` (see `fleet-q config --help` for the list)",
                            path.display()
                        ));
                    }
                }
            }
            Err(e) => problems.push(e),
        }
    }
    for d in KEYS {
        if let Some(v) = sources.env.get(&d.env()) {
            raw.insert(d.key.to_string(), (v.clone(), "env"));
        }
    }
    let mut p = Parser {
        raw,
        problems: &mut problems,
    };
    let settings = build(&mut p);
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigError(problems))
    }
}

fn read_file(path: &Path) -> Result<Vec<(String, String)>, String> {
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
    for (k, v) in table {
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
    Ok(out)
}

struct Parser<'a> {
    raw: HashMap<String, (String, &'static str)>,
    problems: &'a mut Vec<String>,
}

impl Parser<'_> {
    /// The raw text for `key`, or its default.
    fn text(&self, key: Key) -> String {
        let d = key.doc();
        self.raw
            .get(d.key)
            .map(|(v, _)| v.trim().to_string())
            .unwrap_or_else(|| d.default.to_string())
    }

    fn opt(&self, key: Key) -> Option<String> {
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

fn default_pod_prefix() -> String {
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

fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && s.len() <= 255
}

fn build(p: &mut Parser<'_>) -> Settings {
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
    let max_payload_bytes = p.num::<usize>(Key::MaxPayloadBytes);
    let http_body_timeout = p.secs(Key::HttpBodyTimeoutSeconds);
    let http_max_connections = p.num::<usize>(Key::HttpMaxConnections);
    let http_max_result_bytes = p.num::<usize>(Key::HttpMaxResultBytes);
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
        snowflake,
        admin_token,
        http_handlers,
        step_timeout,
        shutdown_grace,
        retention,
        prune_batch_size,
        prune_interval,
        max_payload_bytes,
        http_body_timeout,
        http_max_connections,
        http_max_result_bytes,
        ledger_path,
    }
}

#[cfg(test)]
mod tests {
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
                    k.default.is_empty()
                        || options.contains(&k.default.to_ascii_lowercase().as_str()),
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
}
