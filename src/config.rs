//! Settings: defaults < optional TOML file (`--config`) < `FLEET_Q_*` environment.
//!
//! Everything is parsed once, at start-up, into typed [`Settings`]; every problem is
//! collected and reported together ([`ConfigError`]), so a user fixes a broken
//! deployment in one round. Secrets ([`Secret`]) never print.
//!
//! [`KEYS`] is the one list of settings: parsing, `fleet-q config`, the README's
//! table (checked by a test) and the deployment checks all read it.
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

/// One documented setting.
#[derive(Clone, Copy, Debug)]
pub struct KeyDoc {
    /// Key in the TOML file; the environment variable is `FLEET_Q_` + upper case.
    pub key: &'static str,
    /// Default as text; empty when unset by default.
    pub default: &'static str,
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

macro_rules! keys {
    ($( $key:literal, $default:literal, $secret:literal, $doc:literal; )*) => {
        /// Every setting fleet-q reads, in documentation order.
        pub const KEYS: &[KeyDoc] = &[ $( KeyDoc { key: $key, default: $default, secret: $secret, doc: $doc } ),* ];
    };
}

keys! {
    "storage_mode", "sqlite", false, "`sqlite` (embedded, one file) or `snowflake`";
    "sqlite_db_path", "./fleet-q.db", false, "SQLite database file, shared by the pods of one machine";
    "api_host", "0.0.0.0", false, "address the HTTP API binds";
    "api_port", "8000", false, "HTTP port (0 picks a free port)";
    "pod_id", "", false, "prefix of this process's id (1-100 of A-Z a-z 0-9 . _ -); each process adds an incarnation suffix of start time and randomness (default prefix: host name)";
    "max_parallelism", "10", false, "steps one pod may run at once, 1 to 10000";
    "capacity_threshold", "0.8", false, "(0, 1]; max capacity = floor(parallelism x threshold), at least 1";
    "heartbeat_interval_seconds", "30", false, "heartbeat period, at least 1";
    "claim_interval_seconds", "5", false, "idle claim period, at least 1 (busy pods claim at once)";
    "claim_batch_size", "100", false, "most steps claimed at once, 1 to 10000";
    "recovery_interval_seconds", "300", false, "leader's recovery period, at least 1";
    "stats_interval_seconds", "15", false, "Snowflake: how often the leader computes queue statistics into a shared row and the other pods read it, 1 to 3600 (requests for statistics send no statement)";
    "reconcile_interval_seconds", "60", false, "each pod's self-reconciliation period: claims the store says it holds but it never received, older than one period, are released (0: off)";
    "dead_pod_threshold_seconds", "180", false, "a pod is dead after this long without a heartbeat; more than 2 x heartbeat interval";
    "leader_check_interval_seconds", "60", false, "leader election period, at least 1";
    "actor_restart_limit", "5", false, "actor restarts allowed per window across the pod; past it the pod exits (code 70) for the orchestrator to replace";
    "actor_restart_window_seconds", "30", false, "the restart budget's window, 1 to 3600";
    "log_level", "INFO", false, "TRACE, DEBUG, INFO, WARN or ERROR";
    "log_format", "", false, "`json` or `console`; default: `console` when stdout is a terminal, else `json` (containers)";
    "default_max_attempts", "5", false, "attempts of a store call on transient errors, at least 1";
    "default_base_delay_ms", "100", false, "first retry delay (store calls and step retries), at least 1";
    "default_max_delay_ms", "30000", false, "cap on any retry delay, at least the base delay";
    "snowflake_account", "", false, "account identifier (required in snowflake mode)";
    "snowflake_user", "", false, "user (required in snowflake mode)";
    "snowflake_password", "", true, "password (or use a private key)";
    "snowflake_database", "", false, "database (required in snowflake mode)";
    "snowflake_schema", "PUBLIC", false, "schema";
    "snowflake_warehouse", "COMPUTE_WH", false, "warehouse";
    "snowflake_role", "", false, "role; default: the user's default role";
    "snowflake_private_key_path", "", false, "PEM file with the key-pair authentication private key";
    "snowflake_private_key", "", true, "the private key PEM itself (instead of a path)";
    "snowflake_connection_pool_size", "10", false, "sessions kept open, 1 to 100";
    "snowflake_connection_timeout", "30", false, "seconds to connect or answer, at least 1";
    "snowflake_host", "", false, "endpoint host override (proxies, PrivateLink, tests)";
    "snowflake_port", "443", false, "endpoint port";
    "snowflake_protocol", "https", false, "`https` or `http`";
    "admin_token", "", true, "when set, admin routes require `Authorization: Bearer <token>`";
    "http_handlers", "", false, "`type=url,...`: step types run by POSTing to a URL";
    "step_timeout_seconds", "300", false, "handler timeout unless the step sets its own, 1 to 86400";
    "shutdown_grace_seconds", "20", false, "time in-flight steps get to finish on SIGTERM, 0 to 3600";
    "retention_seconds", "604800", false, "finished steps are pruned after this, at least 60";
    "prune_batch_size", "500", false, "finished steps deleted per prune chunk by the leader, 1 to 100000 (chunks run back to back while rows are waiting)";
    "prune_interval_seconds", "10", false, "longest pause between prune passes, 1 to 3600 (a full chunk is followed at once; an idle store is asked once per interval)";
    "ledger_path", "", false, "recovery ledger (ephemeral SQLite); default: fleet-q-ledger-<pod id>.db in the temp dir; `:memory:` keeps it in memory";
    "max_payload_bytes", "1048576", false, "HTTP request body limit, 1024 to 67108864";
    "http_body_timeout_seconds", "10", false, "a request body must arrive within this (else 408 and the connection closes), 1 to 3600";
    "http_max_connections", "1024", false, "open HTTP connections past which requests get 503 (probes excepted), 16 to 100000";
    "http_max_result_bytes", "65536", false, "largest response the `http` handler stores as a step's result (larger fails the step), 1024 to 16777216";
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
            .map(|k| (k.env(), self.value_of(k.key)))
            .collect()
    }

    fn value_of(&self, key: &str) -> String {
        fn opt<T: fmt::Display>(v: &Option<T>) -> String {
            v.as_ref().map(ToString::to_string).unwrap_or_default()
        }
        let secs = |d: Duration| d.as_secs().to_string();
        let millis = |d: Duration| d.as_millis().to_string();
        let sf = &self.snowflake;
        match key {
            "storage_mode" => format!("{:?}", self.storage_mode).to_ascii_lowercase(),
            "sqlite_db_path" => self.sqlite_db_path.display().to_string(),
            "api_host" => self.api_host.clone(),
            "api_port" => self.api_port.to_string(),
            "pod_id" => self.pod_id.clone(),
            "max_parallelism" => self.max_parallelism.to_string(),
            "capacity_threshold" => self.capacity_threshold.to_string(),
            "heartbeat_interval_seconds" => secs(self.heartbeat_interval),
            "claim_interval_seconds" => secs(self.claim_interval),
            "claim_batch_size" => self.claim_batch_size.to_string(),
            "ledger_path" => self
                .ledger_path
                .as_ref()
                .map_or(":memory:".to_string(), |p| p.display().to_string()),
            "recovery_interval_seconds" => secs(self.recovery_interval),
            "reconcile_interval_seconds" => secs(self.reconcile_interval),
            "stats_interval_seconds" => secs(self.stats_interval),
            "dead_pod_threshold_seconds" => secs(self.dead_pod_threshold),
            "leader_check_interval_seconds" => secs(self.leader_check_interval),
            "actor_restart_limit" => self.actor_restart_limit.to_string(),
            "actor_restart_window_seconds" => secs(self.actor_restart_window),
            "log_level" => self.log_level.clone(),
            "log_format" => format!("{:?}", self.log_format).to_ascii_lowercase(),
            "default_max_attempts" => self.default_max_attempts.to_string(),
            "default_base_delay_ms" => millis(self.default_base_delay),
            "default_max_delay_ms" => millis(self.default_max_delay),
            "snowflake_account" => sf.account.clone(),
            "snowflake_user" => sf.user.clone(),
            "snowflake_password" => opt(&sf.password),
            "snowflake_database" => sf.database.clone(),
            "snowflake_schema" => sf.schema.clone(),
            "snowflake_warehouse" => sf.warehouse.clone(),
            "snowflake_role" => opt(&sf.role),
            "snowflake_private_key_path" => opt(&sf.private_key_path.as_ref().map(|p| p.display())),
            "snowflake_private_key" => opt(&sf.private_key),
            "snowflake_connection_pool_size" => sf.pool_size.to_string(),
            "snowflake_connection_timeout" => secs(sf.connection_timeout),
            "snowflake_host" => opt(&sf.host),
            "snowflake_port" => sf.port.to_string(),
            "snowflake_protocol" => sf.protocol.clone(),
            "admin_token" => opt(&self.admin_token),
            "http_handlers" => self
                .http_handlers
                .iter()
                .map(|(t, u)| format!("{t}={u}"))
                .collect::<Vec<_>>()
                .join(","),
            "step_timeout_seconds" => secs(self.step_timeout),
            "shutdown_grace_seconds" => secs(self.shutdown_grace),
            "retention_seconds" => secs(self.retention),
            "prune_batch_size" => self.prune_batch_size.to_string(),
            "prune_interval_seconds" => secs(self.prune_interval),
            "max_payload_bytes" => self.max_payload_bytes.to_string(),
            "http_body_timeout_seconds" => secs(self.http_body_timeout),
            "http_max_connections" => self.http_max_connections.to_string(),
            "http_max_result_bytes" => self.http_max_result_bytes.to_string(),
            other => unreachable!("setting {other} is in KEYS but not printed"),
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
    fn doc(key: &str) -> &'static KeyDoc {
        KEYS.iter()
            .find(|d| d.key == key)
            .expect("every parsed key is documented in KEYS")
    }

    /// The raw text for `key`, or its default.
    fn text(&self, key: &str) -> String {
        self.raw
            .get(key)
            .map(|(v, _)| v.trim().to_string())
            .unwrap_or_else(|| Self::doc(key).default.to_string())
    }

    fn opt(&self, key: &str) -> Option<String> {
        Some(self.text(key)).filter(|s| !s.is_empty())
    }

    fn problem(&mut self, key: &str, msg: impl fmt::Display) {
        let d = Self::doc(key);
        let shown = if d.secret {
            String::new()
        } else {
            format!(" (got {:?})", crate::api::truncate(&self.text(key), 100))
        };
        self.problems.push(format!("{}: {msg}{shown}", d.env()));
    }

    fn num<T>(&mut self, key: &str, min: T, max: T) -> T
    where
        T: std::str::FromStr + PartialOrd + Copy + fmt::Display,
    {
        let default: T = Self::doc(key)
            .default
            .parse()
            .ok()
            .expect("numeric defaults parse");
        match self.text(key).parse::<T>() {
            Ok(v) if v >= min && v <= max => v,
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

    fn secs(&mut self, key: &str, min: u64, max: u64) -> Duration {
        Duration::from_secs(self.num(key, min, max))
    }

    fn choice(&mut self, key: &str, options: &[&'static str]) -> &'static str {
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
    let storage_mode = match p.choice("storage_mode", &["sqlite", "snowflake"]) {
        "snowflake" => StorageMode::Snowflake,
        _ => StorageMode::Sqlite,
    };
    let sqlite_db_path = PathBuf::from(p.text("sqlite_db_path"));
    if sqlite_db_path.as_os_str().is_empty() {
        p.problem("sqlite_db_path", "must not be empty");
    }
    let api_host = p.text("api_host");
    if api_host.parse::<std::net::IpAddr>().is_err() && api_host != "localhost" {
        p.problem("api_host", "must be an IP address or localhost");
    }
    let api_port = p.num::<u16>("api_port", 0, 65535);
    // Every process gets its own identity: a configured id is a prefix, to which an
    // incarnation suffix is added. A restarted container (same pod name) must not
    // take over the row of its previous run, or the steps that run held would stay
    // claimed by a "live" pod forever instead of being recovered.
    let prefix = match p.opt("pod_id") {
        Some(prefix) => {
            if !valid_pod_prefix(&prefix) {
                p.problem(
                    "pod_id",
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
    let max_parallelism = p.num::<u32>("max_parallelism", 1, 10_000);
    let capacity_threshold = match p.text("capacity_threshold").parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => v,
        _ => {
            p.problem(
                "capacity_threshold",
                "must be a number above 0 and at most 1",
            );
            0.8
        }
    };
    let heartbeat_interval = p.secs("heartbeat_interval_seconds", 1, 86_400);
    let claim_interval = p.secs("claim_interval_seconds", 1, 86_400);
    let claim_batch_size = p.num::<u32>("claim_batch_size", 1, 10_000);
    let recovery_interval = p.secs("recovery_interval_seconds", 1, 86_400);
    let reconcile_interval = p.secs("reconcile_interval_seconds", 0, 86_400);
    let stats_interval = p.secs("stats_interval_seconds", 1, 3600);
    let dead_pod_threshold = p.secs("dead_pod_threshold_seconds", 1, 86_400);
    if dead_pod_threshold <= heartbeat_interval * 2 {
        p.problem(
            "dead_pod_threshold_seconds",
            format!(
                "must be more than twice the heartbeat interval ({}s), or live pods would be declared dead",
                heartbeat_interval.as_secs()
            ),
        );
    }
    let leader_check_interval = p.secs("leader_check_interval_seconds", 1, 86_400);
    let actor_restart_limit = p.num::<u32>("actor_restart_limit", 0, 10_000);
    let actor_restart_window = p.secs("actor_restart_window_seconds", 1, 3600);
    let log_level = p
        .choice(
            "log_level",
            &["info", "trace", "debug", "warn", "warning", "error"],
        )
        .replace("warning", "warn")
        .to_ascii_uppercase();
    let log_format = match p.opt("log_format") {
        // A person at a terminal reads lines; a container's log collector parses JSON.
        None if std::io::IsTerminal::is_terminal(&std::io::stdout()) => LogFormat::Console,
        None => LogFormat::Json,
        Some(_) => match p.choice("log_format", &["json", "console"]) {
            "console" => LogFormat::Console,
            _ => LogFormat::Json,
        },
    };
    let default_max_attempts = p.num::<u32>("default_max_attempts", 1, 100);
    let base = p.num::<u64>("default_base_delay_ms", 1, 3_600_000);
    let max = p.num::<u64>("default_max_delay_ms", 1, 3_600_000);
    if max < base {
        p.problem(
            "default_max_delay_ms",
            format!("must be at least FLEET_Q_DEFAULT_BASE_DELAY_MS ({base})"),
        );
    }

    let snowflake = SnowflakeSettings {
        account: p.text("snowflake_account"),
        user: p.text("snowflake_user"),
        password: p.opt("snowflake_password").map(Secret::new),
        database: p.text("snowflake_database"),
        schema: p.text("snowflake_schema"),
        warehouse: p.text("snowflake_warehouse"),
        role: p.opt("snowflake_role"),
        private_key_path: p.opt("snowflake_private_key_path").map(PathBuf::from),
        private_key: p.opt("snowflake_private_key").map(Secret::new),
        pool_size: p.num::<u32>("snowflake_connection_pool_size", 1, 100),
        connection_timeout: p.secs("snowflake_connection_timeout", 1, 3600),
        host: p.opt("snowflake_host"),
        port: p.num::<u16>("snowflake_port", 1, 65535),
        protocol: p
            .choice("snowflake_protocol", &["https", "http"])
            .to_string(),
    };
    if storage_mode == StorageMode::Snowflake {
        for key in ["snowflake_account", "snowflake_user", "snowflake_database"] {
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
                p.problem("snowflake_private_key_path", "is not a readable file");
            }
        }
        for key in [
            "snowflake_database",
            "snowflake_schema",
            "snowflake_warehouse",
            "snowflake_role",
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

    let admin_token = p.raw.get("admin_token").map(|(v, _)| v.clone());
    let admin_token = match admin_token {
        Some(t) if t.trim().is_empty() => {
            p.problem("admin_token", "must not be blank when set");
            None
        }
        Some(t) => Some(Secret::new(t)),
        None => None,
    };

    let mut http_handlers = BTreeMap::new();
    if let Some(spec) = p.opt("http_handlers") {
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
                            "http_handlers",
                            format!("type `{}` is listed twice", t.trim()),
                        );
                    }
                }
                _ => p.problem(
                    "http_handlers",
                    format!("`{part}` is not `type=http(s)://host/path`"),
                ),
            }
        }
    }
    let step_timeout = p.secs("step_timeout_seconds", 1, 86_400);
    let shutdown_grace = p.secs("shutdown_grace_seconds", 0, 3600);
    let retention = p.secs("retention_seconds", 60, 10 * 365 * 86_400);
    let prune_batch_size = p.num::<u32>("prune_batch_size", 1, 100_000);
    let prune_interval = p.secs("prune_interval_seconds", 1, 3600);
    let max_payload_bytes = p.num::<usize>("max_payload_bytes", 1024, 64 * 1024 * 1024);
    let http_body_timeout = p.secs("http_body_timeout_seconds", 1, 3600);
    let http_max_connections = p.num::<usize>("http_max_connections", 16, 100_000);
    let http_max_result_bytes = p.num::<usize>("http_max_result_bytes", 1024, 16 * 1024 * 1024);
    let ledger_path = match p.opt("ledger_path").as_deref() {
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
