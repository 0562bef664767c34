//! The declaration of every setting (the `keys!` table) and what it generates:
//! [`Key`], [`KEYS`], and each setting's [`Kind`].

use super::*;

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
    ClaimAhead "claim_ahead" = "auto", Text, false, "claimed steps a pod may hold beyond its capacity, waiting on the pod for a slot (fewer, larger claims; slots refill without a claim round trip), 0 to 10000, or `auto`: 0 on SQLite, the pod's capacity on Snowflake; waiting steps count as claimed and are given back on shutdown";
    ClaimMinFree "claim_min_free" = "auto", Text, false, "room (free slots plus claim-ahead room) that must be free before a finished step wakes a claim (fewer, larger claims), 1 to 10000, or `auto`: 1 on SQLite, on Snowflake the larger of half the pod's capacity and the claim-ahead; a local submit and an idle pod claim at once";
    FinishLingerMs "finish_linger_ms" = "auto", Text, false, "how long a step's outcome may wait to be written with others, 0 to 10000 ms, or `auto`: 0 on SQLite, 200 on Snowflake (each write takes the table lock)";
    IdlePollMaxSeconds "idle_poll_max_seconds" = "auto", Text, false, "idle-quiet mode: when no step is pending, claimed or due, pods talk to the store only at wakes this many seconds apart, aligned across the fleet, so the warehouse can suspend; 10 to 86400 and at least the claim interval, `off`, or `auto`: off on SQLite, 360 on Snowflake";
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
    DefaultRetryBudgetSeconds "default_retry_budget_seconds" = "30", Seconds { min: 1, max: 3600 }, false, "no store call starts a retry once this long has passed since its first attempt began, 1 to 3600";
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
    ScheduleCheckSeconds "schedule_check_seconds" = "10", Seconds { min: 1, max: 3600 }, false, "how often the leader re-reads the schedules when none is due sooner (a schedule changed through another pod is seen within this), 1 to 3600";
    LedgerPath "ledger_path" = "", Text, false, "recovery ledger (ephemeral SQLite); default: fleet-q-ledger-<pod id>.db in the temp dir; `:memory:` keeps it in memory";
    MaxPayloadBytes "max_payload_bytes" = "1048576", Int { min: 1024, max: 64 * 1024 * 1024 }, false, "HTTP request body limit, 1024 to 67108864";
    HttpBodyTimeoutSeconds "http_body_timeout_seconds" = "10", Seconds { min: 1, max: 3600 }, false, "a request body must arrive within this (else 408 and the connection closes), 1 to 3600";
    HttpMaxConnections "http_max_connections" = "1024", Int { min: 16, max: 100_000 }, false, "open HTTP connections past which requests get 503 (probes excepted), 16 to 100000";
    HttpMaxResultBytes "http_max_result_bytes" = "65536", Int { min: 1024, max: 16 * 1024 * 1024 }, false, "largest response the `http` handler stores as a step's result (larger fails the step), 1024 to 16777216";
    Queues "queues" = "", Text, false, "comma-separated queues this pod claims from (e.g. `gpu,batch`); empty: every queue";
    CreateQueues "create_queues" = "on", OneOf(&["on", "off"]), false, "`on`: a submit to a queue that does not exist creates it with the defaults; `off`: such a submit is refused (400) and queues are made by `PUT /admin/queues/{name}`";
    Ui "ui" = "on", OneOf(&["on", "off"]), false, "`on` serves the web dashboard at `/ui` (`/` redirects there); `off` leaves both unrouted";
    UiReadOnly "ui_read_only" = "off", OneOf(&["on", "off"]), false, "`on` hides the dashboard's actions and the server refuses them";
}
