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

mod keys;
mod parse;
#[cfg(test)]
mod tests;

pub use keys::{Key, KeyDoc, Kind, KEYS};
use parse::{build, read_file, Parser};
pub use parse::{incarnation_id, valid_pod_prefix, MAX_POD_PREFIX};

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
    /// Claimed steps held beyond capacity (`auto` resolved).
    pub claim_ahead: u32,
    /// Free slots before a finished step wakes a claim (`auto` resolved).
    pub claim_min_free: u32,
    /// How long an outcome may wait to share a write (`auto` resolved).
    pub finish_linger: Duration,
    /// Idle-quiet mode's wake period (`auto` resolved; `None`: off).
    pub idle_poll_max: Option<Duration>,
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
    /// No store call starts a retry past this (since its first attempt).
    pub default_retry_budget: Duration,
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
    /// How often the leader re-reads the schedules when none is due sooner.
    pub schedule_check: Duration,
    /// Schedules declared in the settings file (`[[schedules]]`), upserted by
    /// name when the pod starts.
    pub schedules: Vec<fleet_q_actors::schedule::ScheduleSpec>,
    /// HTTP body limit.
    pub max_payload_bytes: usize,
    /// Time a request body has to arrive.
    pub http_body_timeout: Duration,
    /// Open connections past which requests are refused (probes excepted).
    pub http_max_connections: usize,
    /// Largest response body the `http` handler stores as a result.
    pub http_max_result_bytes: usize,
    /// The queues this pod claims from (`None`: every queue).
    pub queues: Option<Vec<String>>,
    /// A submit may create a queue that does not exist.
    pub create_queues: bool,
    /// Serve the dashboard.
    pub ui: bool,
    /// The dashboard shows no actions and refuses them.
    pub ui_read_only: bool,
    /// Recovery ledger file; `None` keeps it in memory.
    pub ledger_path: Option<PathBuf>,
}

fn on_off(b: bool) -> String {
    if b { "on" } else { "off" }.to_string()
}

impl Settings {
    /// How failed store calls are retried: built here once from
    /// `FLEET_Q_DEFAULT_MAX_ATTEMPTS`, `_BASE_DELAY_MS`, `_MAX_DELAY_MS` and
    /// `_RETRY_BUDGET_SECONDS`, and applied in one layer
    /// (`fleet_q_actors::retry`).
    pub fn store_retry(&self) -> fleet_q_actors::RetryPolicy {
        fleet_q_actors::RetryPolicy::new(
            self.default_max_attempts,
            self.default_base_delay,
            self.default_max_delay,
        )
        .with_budget(self.default_retry_budget)
    }

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
            Key::ClaimAhead => self.claim_ahead.to_string(),
            Key::ClaimMinFree => self.claim_min_free.to_string(),
            Key::FinishLingerMs => self.finish_linger.as_millis().to_string(),
            Key::IdlePollMaxSeconds => self.idle_poll_max.map_or("off".to_string(), secs),
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
            Key::DefaultRetryBudgetSeconds => secs(self.default_retry_budget),
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
            Key::ScheduleCheckSeconds => secs(self.schedule_check),
            Key::MaxPayloadBytes => self.max_payload_bytes.to_string(),
            Key::HttpBodyTimeoutSeconds => secs(self.http_body_timeout),
            Key::HttpMaxConnections => self.http_max_connections.to_string(),
            Key::HttpMaxResultBytes => self.http_max_result_bytes.to_string(),
            Key::Queues => self
                .queues
                .as_ref()
                .map(|q| q.join(","))
                .unwrap_or_default(),
            Key::CreateQueues => on_off(self.create_queues),
            Key::Ui => on_off(self.ui),
            Key::UiReadOnly => on_off(self.ui_read_only),
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
    let mut schedules = Vec::new();
    if let Some(path) = &sources.file {
        match read_file(path) {
            Ok((values, declared)) => {
                problems.extend(
                    parse::schedule_problems(&declared)
                        .into_iter()
                        .map(|p| format!("{}: {p}", path.display())),
                );
                schedules = declared;
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
    let mut settings = build(&mut p);
    settings.schedules = schedules;
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigError(problems))
    }
}
