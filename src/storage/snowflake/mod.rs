//! The Snowflake store, on `snowflake-api` 0.14.
//!
//! - **Sessions.** A pool of `FLEET_Q_SNOWFLAKE_CONNECTION_POOL_SIZE` sessions, one
//!   statement at a time each, every call bounded by
//!   `FLEET_Q_SNOWFLAKE_CONNECTION_TIMEOUT`. Transient failures (network, HTTP 5xx,
//!   lock waits, timeouts) are retried with backoff here; fatal ones (auth, missing
//!   objects, SQL errors) are reported at once. The HTTP client carries no retrying
//!   middleware, so no error is hidden from this policy.
//! - **Endpoint override.** `snowflake-api` always builds
//!   `https://{account}.snowflakecomputing.com/…`; a middleware rewrites scheme,
//!   host and port when `FLEET_Q_SNOWFLAKE_HOST` / `_PORT` / `_PROTOCOL` are set
//!   (proxies, PrivateLink, tests).
//! - **SQL safety.** No bind parameters exist: every value goes through [`sql`].
//! - **Uniqueness.** Snowflake does not enforce primary keys on standard tables, so
//!   inserts are `INSERT … SELECT … WHERE NOT EXISTS` (by step id and idempotency
//!   key) and heartbeats are one `MERGE`; a retried insert is therefore idempotent.
//! - **Statement economy.** Standard tables lock the whole table per DML statement,
//!   so work is batched: a claim is one `UPDATE … WHERE step_id IN (SELECT … LIMIT
//!   n)` tagged with a token plus one `SELECT` by token; a group of finishes is one
//!   `UPDATE … FROM (VALUES …)` plus one `SELECT` by token; an insert batch is one
//!   statement. Tokens are reused when a statement is retried, so a retry after a
//!   lost answer still reports what the first attempt did.
//! - **Time.** Timestamps are written with `SYSDATE()` (UTC) and read back as epoch
//!   milliseconds (`DATE_PART(EPOCH_MILLISECOND, …)`), so only integers and text
//!   cross the Arrow boundary.

pub mod sql;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fleet_q_actors::*;
use snowflake_api::{
    AuthArgs, AuthType, CertificateArgs, PasswordArgs, QueryResult, SnowflakeApi,
    SnowflakeApiBuilder, SnowflakeApiError,
};

use crate::config::SnowflakeSettings;

/// Tables, as `fleet-q schema` prints them. Column names are the seed's plus the
/// design's; no primary keys (Snowflake would not enforce them).
/// Statements that bring a table created by an earlier version up to date come
/// last; each is idempotent, so `schema_init` runs them all every time.
pub const DDL: [&str; 6] = [
    "CREATE TABLE IF NOT EXISTS STEP_TRACKER (
    step_id         VARCHAR(36)   NOT NULL,
    status          VARCHAR(16)   NOT NULL,
    claimed_by      VARCHAR,
    last_update_ts  TIMESTAMP_NTZ NOT NULL,
    payload         VARCHAR       NOT NULL,
    retry_count     NUMBER(10,0)  NOT NULL,
    priority        NUMBER(10,0)  NOT NULL,
    created_ts      TIMESTAMP_NTZ NOT NULL,
    max_retries     NUMBER(10,0)  NOT NULL,
    attempt         NUMBER(10,0)  NOT NULL,
    run_at          TIMESTAMP_NTZ NOT NULL,
    idempotency_key VARCHAR,
    last_error      VARCHAR,
    result          VARCHAR,
    timeout_ms      NUMBER(19,0),
    step_type       VARCHAR       NOT NULL,
    op_token        VARCHAR
)",
    "CREATE TABLE IF NOT EXISTS POD_HEALTH (
    pod_id            VARCHAR       NOT NULL,
    birth_ts          TIMESTAMP_NTZ NOT NULL,
    last_heartbeat_ts TIMESTAMP_NTZ NOT NULL,
    status            VARCHAR(8)    NOT NULL,
    capacity_in_use   NUMBER(10,0)  NOT NULL,
    max_capacity      NUMBER(10,0)  NOT NULL,
    meta              VARCHAR,
    incarnation       VARCHAR,
    heartbeat_interval_ms NUMBER(19,0),
    dead_after_ms     NUMBER(19,0)
)",
    "ALTER TABLE POD_HEALTH ADD COLUMN IF NOT EXISTS incarnation VARCHAR",
    "ALTER TABLE POD_HEALTH ADD COLUMN IF NOT EXISTS heartbeat_interval_ms NUMBER(19,0)",
    "ALTER TABLE POD_HEALTH ADD COLUMN IF NOT EXISTS dead_after_ms NUMBER(19,0)",
    // The queue statistics the leader publishes and every pod reads (one row,
    // name 'queue'): see `stats_publish`.
    "CREATE TABLE IF NOT EXISTS FLEET_STATS (
    name          VARCHAR       NOT NULL,
    watermark_ms  NUMBER(19,0)  NOT NULL,
    computed_at   TIMESTAMP_NTZ NOT NULL,
    computed_by   VARCHAR,
    body          VARCHAR       NOT NULL
)",
];

/// What the shared statistics row holds: the statistics themselves, and the
/// finishes counted so far by step type (`[completed, failed, cancelled]`),
/// which the next publish advances.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SharedStats {
    finished: BTreeMap<String, [u64; 3]>,
    stats: QueueStats,
}

const STEP_COLS: &str = "step_id AS step_id, status AS status, claimed_by AS claimed_by, \
     DATE_PART(EPOCH_MILLISECOND, last_update_ts) AS last_update_ms, payload AS payload, \
     retry_count AS retry_count, priority AS priority, \
     DATE_PART(EPOCH_MILLISECOND, created_ts) AS created_ms, max_retries AS max_retries, \
     attempt AS attempt, DATE_PART(EPOCH_MILLISECOND, run_at) AS run_at_ms, \
     idempotency_key AS idempotency_key, last_error AS last_error, result AS result, \
     timeout_ms AS timeout_ms";

const POD_COLS: &str = "pod_id AS pod_id, DATE_PART(EPOCH_MILLISECOND, birth_ts) AS birth_ms, \
     DATE_PART(EPOCH_MILLISECOND, last_heartbeat_ts) AS last_ms, status AS status, \
     capacity_in_use AS capacity_in_use, max_capacity AS max_capacity, meta AS meta, \
     heartbeat_interval_ms AS heartbeat_interval_ms, dead_after_ms AS dead_after_ms, \
     DATE_PART(EPOCH_MILLISECOND, SYSDATE()) AS now_ms";

/// How long a claim keeps trying to read back what it claimed.
const CLAIM_READ_BACK_LIMIT: Duration = Duration::from_secs(600);

/// Most rows per multi-row statement.
const CHUNK: usize = 500;

/// Target size of one insert statement's text. A single step larger than this
/// still goes in one statement of its own.
const MAX_STATEMENT_TEXT: usize = 512 * 1024;

/// Splits `items` into runs of at most `max_rows` items whose `lens` add up to at
/// most `max_bytes`; an item larger than `max_bytes` gets a run of its own.
fn chunk_by_size<T: Copy>(
    items: &[T],
    lens: impl IntoIterator<Item = usize>,
    max_rows: usize,
    max_bytes: usize,
) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut size = 0usize;
    for (&item, len) in items.iter().zip(lens) {
        match out.last_mut() {
            Some(c) if c.len() < max_rows && size + len <= max_bytes => {
                c.push(item);
                size += len;
            }
            _ => {
                out.push(vec![item]);
                size = len;
            }
        }
    }
    out
}

/// One decoded cell.
#[derive(Clone, Debug, PartialEq)]
enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

/// One row, by upper-cased column name.
#[derive(Debug, Default)]
struct Row(HashMap<String, Cell>);

impl Row {
    fn cell(&self, name: &str) -> &Cell {
        self.0
            .get(&name.to_ascii_uppercase())
            .unwrap_or(&Cell::Null)
    }
    fn int(&self, name: &str) -> Option<i64> {
        match self.cell(name) {
            Cell::Int(i) => Some(*i),
            Cell::Float(f) => Some(*f as i64),
            Cell::Text(t) => t.trim().parse().ok(),
            Cell::Null => None,
        }
    }
    fn text(&self, name: &str) -> Option<String> {
        match self.cell(name) {
            Cell::Text(t) => Some(t.clone()),
            Cell::Int(i) => Some(i.to_string()),
            Cell::Float(f) => Some(f.to_string()),
            Cell::Null => None,
        }
    }
}

fn decode_batch(b: &RecordBatch, out: &mut Vec<Row>) -> Result<(), String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    let schema = b.schema();
    let mut rows: Vec<Row> = (0..b.num_rows()).map(|_| Row::default()).collect();
    for (ci, field) in schema.fields().iter().enumerate() {
        let col = b.column(ci);
        let name = field.name().to_ascii_uppercase();
        for (ri, row) in rows.iter_mut().enumerate() {
            let cell = if col.is_null(ri) {
                Cell::Null
            } else {
                match col.data_type() {
                    DataType::Int8 => Cell::Int(col.as_primitive::<Int8Type>().value(ri).into()),
                    DataType::Int16 => Cell::Int(col.as_primitive::<Int16Type>().value(ri).into()),
                    DataType::Int32 => Cell::Int(col.as_primitive::<Int32Type>().value(ri).into()),
                    DataType::Int64 => Cell::Int(col.as_primitive::<Int64Type>().value(ri)),
                    DataType::UInt8 => Cell::Int(col.as_primitive::<UInt8Type>().value(ri).into()),
                    DataType::UInt16 => {
                        Cell::Int(col.as_primitive::<UInt16Type>().value(ri).into())
                    }
                    DataType::UInt32 => {
                        Cell::Int(col.as_primitive::<UInt32Type>().value(ri).into())
                    }
                    DataType::UInt64 => {
                        Cell::Int(col.as_primitive::<UInt64Type>().value(ri) as i64)
                    }
                    DataType::Float32 => {
                        Cell::Float(col.as_primitive::<Float32Type>().value(ri).into())
                    }
                    DataType::Float64 => Cell::Float(col.as_primitive::<Float64Type>().value(ri)),
                    DataType::Decimal128(_, scale) => {
                        let v = col.as_primitive::<Decimal128Type>().value(ri);
                        if *scale == 0 {
                            Cell::Int(v as i64)
                        } else {
                            Cell::Float(v as f64 / 10f64.powi(i32::from(*scale)))
                        }
                    }
                    DataType::Boolean => Cell::Int(col.as_boolean().value(ri).into()),
                    DataType::Utf8 => Cell::Text(col.as_string::<i32>().value(ri).to_string()),
                    DataType::LargeUtf8 => Cell::Text(col.as_string::<i64>().value(ri).to_string()),
                    other => return Err(format!("column {name}: unsupported Arrow type {other}")),
                }
            };
            row.0.insert(name.clone(), cell);
        }
    }
    out.extend(rows);
    Ok(())
}

fn decode(op: &'static str, r: QueryResult) -> Result<Vec<Row>, StoreError> {
    let mut out = Vec::new();
    match r {
        QueryResult::Empty => {}
        QueryResult::Arrow(batches) => {
            for b in &batches {
                decode_batch(b, &mut out).map_err(|e| StoreError::fatal(op, e))?;
            }
        }
        QueryResult::Json(j) => {
            let names: Vec<String> = j
                .schema
                .iter()
                .map(|f| f.name.to_ascii_uppercase())
                .collect();
            for r in j.value.as_array().into_iter().flatten() {
                let mut row = Row::default();
                for (i, v) in r.as_array().into_iter().flatten().enumerate() {
                    let name = names
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("COLUMN{}", i + 1));
                    let cell = match v {
                        serde_json::Value::Null => Cell::Null,
                        serde_json::Value::String(s) => Cell::Text(s.clone()),
                        other => Cell::Text(other.to_string()),
                    };
                    row.0.insert(name, cell);
                }
                out.push(row);
            }
        }
    }
    Ok(out)
}

/// The number of rows a DML statement reports (first column of its result).
fn affected(rows: &[Row]) -> u64 {
    rows.first()
        .and_then(|r| {
            r.0.iter()
                .filter(|(k, _)| k.starts_with("NUMBER OF ROWS") || k.starts_with("COLUMN1"))
                .chain(r.0.iter())
                .find_map(|(_, v)| match v {
                    Cell::Int(i) => Some(*i as u64),
                    Cell::Text(t) => t.trim().parse().ok(),
                    _ => None,
                })
        })
        .unwrap_or(0)
}

fn ts(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn bad(op: &'static str, what: &str) -> StoreError {
    StoreError::fatal(op, format!("stored {what} is invalid"))
}

fn step_from_row(op: &'static str, r: &Row) -> Result<Step, StoreError> {
    let int = |n: &str| r.int(n).ok_or_else(|| bad(op, n));
    let payload: Payload =
        serde_json::from_str(&r.text("payload").ok_or_else(|| bad(op, "payload"))?)
            .map_err(|_| bad(op, "payload"))?;
    Ok(Step {
        step_id: r
            .text("step_id")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(op, "step_id"))?,
        status: r
            .text("status")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(op, "status"))?,
        claimed_by: r.text("claimed_by"),
        last_update_ts: ts(int("last_update_ms")?),
        payload,
        retry_count: int("retry_count")? as u32,
        priority: int("priority")? as i32,
        created_ts: ts(int("created_ms")?),
        max_retries: int("max_retries")? as u32,
        attempt: int("attempt")? as u32,
        run_at: ts(int("run_at_ms")?),
        idempotency_key: r.text("idempotency_key"),
        last_error: r.text("last_error"),
        result: r
            .text("result")
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|_| bad(op, "result"))?,
        timeout_ms: r.int("timeout_ms").map(|t| t.max(0) as u64),
    })
}

/// An optional duration as a SQL integer of milliseconds, or NULL.
fn opt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "NULL".to_string(), |d| ms(d).to_string())
}

fn pod_from_row(op: &'static str, r: &Row) -> Result<PodRecord, StoreError> {
    let now = r.int("now_ms").ok_or_else(|| bad(op, "now"))?;
    let last = r
        .int("last_ms")
        .ok_or_else(|| bad(op, "last_heartbeat_ts"))?;
    Ok(PodRecord {
        pod_id: r.text("pod_id").ok_or_else(|| bad(op, "pod_id"))?,
        birth_ts: ts(r.int("birth_ms").ok_or_else(|| bad(op, "birth_ts"))?),
        last_heartbeat_ts: ts(last),
        status: r
            .text("status")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(op, "pod status"))?,
        capacity_in_use: r.int("capacity_in_use").unwrap_or(0) as u32,
        max_capacity: r.int("max_capacity").unwrap_or(0) as u32,
        meta: r
            .text("meta")
            .and_then(|m| serde_json::from_str(&m).ok())
            .unwrap_or(serde_json::Value::Null),
        heartbeat_age: Duration::from_millis(now.saturating_sub(last).max(0) as u64),
        heartbeat_interval: r
            .int("heartbeat_interval_ms")
            .map(|v| Duration::from_millis(v.max(0) as u64)),
        dead_after: r
            .int("dead_after_ms")
            .map(|v| Duration::from_millis(v.max(0) as u64)),
    })
}

/// The VALUES columns of a failed outcome (error cut to [`MAX_ERROR_BYTES`]).
fn failure_row(error: &str, retryable: bool, b: &Backoff) -> String {
    let cut = (b.jitter.clamp(0.0, 1.0) * rand::random::<f64>()).clamp(0.0, 1.0);
    format!(
        ", 0, {}, CAST(NULL AS VARCHAR), {}, {}",
        u8::from(retryable),
        sql::b64_lit(&cut_to(error, MAX_ERROR_BYTES)),
        sql::float(cut)
    )
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Rewrites `https://{account}.snowflakecomputing.com` to the configured endpoint.
/// Only requests to the account's own host are rewritten: result chunks live on
/// cloud storage (their URLs name another host) and must be fetched from there.
struct Endpoint {
    account_host: String,
    scheme: String,
    host: String,
    port: u16,
}

impl Endpoint {
    fn rewrite(&self, url: &mut reqwest::Url) {
        if !url
            .host_str()
            .is_some_and(|h| h.eq_ignore_ascii_case(&self.account_host))
        {
            return;
        }
        let _ = url.set_scheme(&self.scheme);
        let _ = url.set_host(Some(&self.host));
        let _ = url.set_port(Some(self.port));
    }
}

#[async_trait]
impl reqwest_middleware::Middleware for Endpoint {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        self.rewrite(req.url_mut());
        next.run(req, extensions).await
    }
}

/// Codes meaning the server no longer knows the session (login again).
const SESSION_LOST: [&str; 4] = ["390104", "390111", "390112", "390114"];

fn session_lost(e: &SnowflakeApiError) -> bool {
    matches!(e, SnowflakeApiError::ApiError(code, _) if SESSION_LOST.contains(&code.as_str()))
}

/// True when the request surely never reached the server (no connection was
/// made), so resending it cannot run it twice.
fn never_sent(e: &SnowflakeApiError) -> bool {
    use snowflake_api::connection::ConnectionError as C;
    match e {
        SnowflakeApiError::RequestError(C::RequestError(r)) => r.is_connect() || r.is_builder(),
        SnowflakeApiError::RequestError(C::RequestMiddlewareError(
            reqwest_middleware::Error::Reqwest(r),
        )) => r.is_connect() || r.is_builder(),
        SnowflakeApiError::RequestError(C::UrlParsing(_) | C::InvalidHeader(_)) => true,
        _ => false,
    }
}

/// Classifies a client error: network, server and lock-wait failures are
/// transient; authentication and SQL errors are fatal.
fn classify(op: &'static str, e: SnowflakeApiError) -> StoreError {
    use SnowflakeApiError as E;
    match &e {
        E::RequestError(_)
        | E::EmptyResponse
        | E::BrokenResponse
        | E::UnexpectedResponse
        | E::TokioTaskJoinError(_) => {
            let err = StoreError::transient(op, format!("Snowflake unavailable: {e}"));
            if never_sent(&e) {
                err
            } else {
                err.with_unknown_outcome()
            }
        }
        // 000625/000630: lock wait; 000604/000605: statement cancelled/timed out;
        // session lost or expired (a new session is made before the retry).
        E::ApiError(code, _)
            if ["000625", "000630", "000604", "000605", "261000"].contains(&code.as_str())
                || SESSION_LOST.contains(&code.as_str()) =>
        {
            StoreError::transient(op, format!("Snowflake error {code}: {e}"))
        }
        E::AuthError(_) => StoreError::fatal(op, format!("Snowflake authentication failed: {e}")),
        _ => StoreError::fatal(op, e.to_string()),
    }
}

/// One pooled session; `configured` once [`SnowflakeStore::session_parameters`]
/// ran on it (again after every re-login).
struct Session {
    api: SnowflakeApi,
    configured: bool,
}

/// The Snowflake implementation of [`Store`].
pub struct SnowflakeStore {
    settings: SnowflakeSettings,
    key_pem: Option<String>,
    sessions: Vec<tokio::sync::Mutex<Session>>,
    next: AtomicUsize,
    statements: AtomicU64,
    by_op: std::sync::Mutex<BTreeMap<&'static str, u64>>,
    timeout: Duration,
    attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
}

impl SnowflakeStore {
    /// Builds the session pool (sessions log in on their first statement).
    pub fn open(
        s: &SnowflakeSettings,
        attempts: u32,
        base_delay: Duration,
        max_delay: Duration,
    ) -> Result<SnowflakeStore, StoreError> {
        let key_pem = match (&s.password, &s.private_key, &s.private_key_path) {
            (Some(_), _, _) => None,
            (None, Some(k), _) => Some(k.expose().to_string()),
            (None, None, Some(path)) => Some(std::fs::read_to_string(path).map_err(|e| {
                StoreError::fatal(
                    "open",
                    format!("cannot read the private key {}: {e}", path.display()),
                )
            })?),
            (None, None, None) => {
                return Err(StoreError::fatal(
                    "open",
                    "no Snowflake password or private key configured",
                ))
            }
        };
        let mut store = SnowflakeStore {
            settings: s.clone(),
            key_pem,
            sessions: Vec::new(),
            next: AtomicUsize::new(0),
            statements: AtomicU64::new(0),
            by_op: std::sync::Mutex::new(BTreeMap::new()),
            timeout: s.connection_timeout,
            attempts: attempts.max(1),
            base_delay,
            max_delay,
        };
        for _ in 0..s.pool_size.max(1) {
            let api = store.session()?;
            store.sessions.push(tokio::sync::Mutex::new(Session {
                api,
                configured: false,
            }));
        }
        Ok(store)
    }

    /// A new session (it logs in on its first statement).
    fn session(&self) -> Result<SnowflakeApi, StoreError> {
        let s = &self.settings;
        let http = reqwest::Client::builder()
            .connect_timeout(s.connection_timeout)
            .user_agent(concat!("fleet-q/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StoreError::fatal("open", e.to_string()))?;
        let mut client = reqwest_middleware::ClientBuilder::new(http);
        if let Some(host) = &s.host {
            client = client.with(Endpoint {
                account_host: format!("{}.snowflakecomputing.com", s.account),
                scheme: s.protocol.clone(),
                host: host.clone(),
                port: s.port,
            });
        }
        let auth_type = match (&s.password, &self.key_pem) {
            (Some(p), _) => AuthType::Password(PasswordArgs {
                password: p.expose().to_string(),
            }),
            (None, Some(pem)) => AuthType::Certificate(CertificateArgs {
                private_key_pem: pem.clone(),
            }),
            (None, None) => return Err(StoreError::fatal("open", "no Snowflake credentials")),
        };
        let auth = AuthArgs {
            account_identifier: s.account.clone(),
            warehouse: Some(s.warehouse.clone()),
            database: Some(s.database.clone()),
            schema: Some(s.schema.clone()),
            username: s.user.clone(),
            role: s.role.clone(),
            auth_type,
        };
        SnowflakeApiBuilder::new(auth)
            .with_client(client.build())
            .build()
            .map_err(|e| StoreError::fatal("open", e.to_string()))
    }

    /// The server-side limit, in whole seconds, on each statement's running time,
    /// on its time queued for the warehouse, and on its wait for a lock: below
    /// half the client's timeout, so by the time the client gives up on a
    /// statement the server has given up on it too (Snowflake's defaults would
    /// let a detached statement run, or wait for a lock, for hours).
    pub fn server_timeout_secs(&self) -> u64 {
        (self.timeout.as_secs() / 2).saturating_sub(1).max(1)
    }

    /// The longest a statement can live on the server after it was sent: queued
    /// plus running, plus a second of slack.
    fn server_bound(&self) -> Duration {
        Duration::from_secs(2 * self.server_timeout_secs() + 1)
    }

    /// What every session sets before its first statement, so nothing an
    /// administrator set as a user or account default changes fleet-q's meaning:
    /// `AUTOCOMMIT` off would roll back every write when the session ends; the
    /// timestamp parameters change how `SYSDATE()` values and literals are read;
    /// the timeouts make the server give up before the client does.
    pub fn session_parameters(&self) -> Vec<(&'static str, String)> {
        let t = self.server_timeout_secs().to_string();
        vec![
            ("AUTOCOMMIT", "TRUE".into()),
            ("TIMEZONE", "'UTC'".into()),
            ("TIMESTAMP_INPUT_FORMAT", "'AUTO'".into()),
            ("TIMESTAMP_TYPE_MAPPING", "'TIMESTAMP_NTZ'".into()),
            ("QUOTED_IDENTIFIERS_IGNORE_CASE", "FALSE".into()),
            ("STATEMENT_TIMEOUT_IN_SECONDS", t.clone()),
            ("STATEMENT_QUEUED_TIMEOUT_IN_SECONDS", t.clone()),
            ("LOCK_TIMEOUT", t),
        ]
    }

    /// Runs one administrative statement outside the [`Store`] contract (`fleet-q
    /// check --smoke` creates and drops its scratch schema); returns the rows read.
    pub async fn admin(&self, sql_text: &str) -> Result<usize, StoreError> {
        Ok(self.exec("admin", sql_text).await?.len())
    }

    /// Columns of fleet-q's tables that carry a collation (`TABLE.COLUMN (collation)`):
    /// a `DEFAULT_DDL_COLLATION` set when the tables were created changes how
    /// step ids, statuses and keys compare. fleet-q expects none.
    pub async fn collated_columns(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .exec(
                "collated_columns",
                "SELECT table_name AS t, column_name AS c, collation_name AS k FROM information_schema.columns \
                 WHERE table_schema = CURRENT_SCHEMA() AND table_name IN ('STEP_TRACKER', 'POD_HEALTH') \
                 AND collation_name IS NOT NULL AND collation_name <> ''",
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                format!(
                    "{}.{} ({})",
                    r.text("t").unwrap_or_default(),
                    r.text("c").unwrap_or_default(),
                    r.text("k").unwrap_or_default()
                )
            })
            .collect())
    }

    /// [`Self::session_report`] as one line, `NAME=value` separated by spaces.
    pub async fn session_report_line(&self) -> Result<String, StoreError> {
        Ok(self
            .session_report()
            .await?
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "))
    }

    /// Reads back the session parameters fleet-q sets ([`Self::session_parameters`])
    /// with `SHOW PARAMETERS IN SESSION`: `(name, value)` for each, or an error
    /// naming every parameter whose value differs from the one set.
    pub async fn session_report(&self) -> Result<Vec<(String, String)>, StoreError> {
        let op = "session_report";
        let rows = self.exec(op, "SHOW PARAMETERS IN SESSION").await?;
        let mut seen: HashMap<String, String> = HashMap::new();
        for r in &rows {
            if let (Some(k), Some(v)) = (r.text("key"), r.text("value")) {
                seen.insert(k.to_ascii_uppercase(), v);
            }
        }
        let mut out = Vec::new();
        let mut wrong = Vec::new();
        for (name, want) in self.session_parameters() {
            let want = want.trim_matches('\'');
            match seen.get(name) {
                Some(v) if v.eq_ignore_ascii_case(want) => out.push((name.to_string(), v.clone())),
                Some(v) => wrong.push(format!("{name} is {v}, not {want}")),
                None => wrong.push(format!("{name} is not reported")),
            }
        }
        if wrong.is_empty() {
            Ok(out)
        } else {
            Err(StoreError::fatal(op, wrong.join("; ")))
        }
    }

    /// Runs one statement on a free session, retrying transient failures. A write
    /// whose outcome is unknown (no answer) is resent, or its failure reported,
    /// only once the server's own timeouts guarantee the first copy is no longer
    /// running, so two copies of one write never run at once, whoever resends.
    async fn exec(&self, op: &'static str, sql: &str) -> Result<Vec<Row>, StoreError> {
        let read = sql.trim_start().starts_with("SELECT");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = std::time::Instant::now();
            let r = self.exec_once(op, sql).await;
            match r {
                Err(e) if e.is_transient() && attempt < self.attempts => {
                    let b = Backoff {
                        base: self.base_delay,
                        max: self.max_delay,
                        jitter: 0.5,
                    };
                    let mut wait = b.jittered(attempt - 1, rand::random());
                    if !read && e.outcome_unknown() {
                        wait = wait.max(self.server_bound().saturating_sub(sent.elapsed()));
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(e) if !read && e.outcome_unknown() => {
                    // Whoever retries this write next (the storage actor, a claim
                    // reading back its token) must not meet the first copy still
                    // running: report the failure only once the server's own
                    // timeouts have ended it.
                    tokio::time::sleep(self.server_bound().saturating_sub(sent.elapsed())).await;
                    return Err(e);
                }
                other => return other,
            }
        }
    }

    /// One statement, no retry.
    async fn exec_once(&self, op: &'static str, sql: &str) -> Result<Vec<Row>, StoreError> {
        let n = self.sessions.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut guard = match (0..n).find_map(|i| self.sessions[(start + i) % n].try_lock().ok()) {
            Some(g) => g,
            None => self.sessions[start].lock().await,
        };
        if !guard.configured {
            let set: Vec<String> = self
                .session_parameters()
                .into_iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect();
            let stmt = format!("ALTER SESSION SET {}", set.join(", "));
            self.run_on(&mut guard, "session_init", &stmt).await?;
            guard.configured = true;
        }
        self.run_on(&mut guard, op, sql).await
    }

    async fn run_on(
        &self,
        session: &mut Session,
        op: &'static str,
        sql: &str,
    ) -> Result<Vec<Row>, StoreError> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        *self
            .by_op
            .lock()
            .expect("statement counts")
            .entry(op)
            .or_default() += 1;
        let r = tokio::time::timeout(self.timeout, session.api.exec(sql))
            .await
            .map_err(|_| {
                StoreError::transient(op, format!("no answer within {:?}", self.timeout))
                    .with_unknown_outcome()
            })?;
        match r {
            Ok(r) => decode(op, r),
            Err(e) => {
                if session_lost(&e) {
                    // The server dropped the session (restart, expiry): log in again
                    // on the next statement; the retry loop runs it.
                    tracing::warn!(op, "Snowflake session lost; opening a new one");
                    *session = Session {
                        api: self.session()?,
                        configured: false,
                    };
                }
                Err(classify(op, e))
            }
        }
    }

    /// Steps matching `cond` (on `STEP_TRACKER s`), in step-id order, at most
    /// `limit`, with their count proven (see [`Self::read_checked`]).
    async fn read_steps_checked(
        &self,
        op: &'static str,
        cond: &str,
        limit: u32,
    ) -> Result<Vec<Step>, StoreError> {
        self.read_checked(op, STEP_COLS, cond, limit)
            .await?
            .iter()
            .map(|r| step_from_row(op, r))
            .collect()
    }

    /// Rows of `cols` (which must include `step_id AS step_id`) for the steps
    /// matching `cond` (on `STEP_TRACKER s`), in step-id order, at most `limit`,
    /// with their count proven. `snowflake-api` 0.14 answers "no rows" when a
    /// chunked result's first part is empty, and puts the inline part last, so
    /// each read is one statement that always returns at least one row: the
    /// count of matching rows, joined with the rows themselves (none: one row of
    /// NULLs). An empty answer, or fewer rows than counted, means the client lost
    /// part of the result: it is read again in keyset pages small enough to come
    /// back whole (halved down to one row). Still short at one row: a transient
    /// error, never a silently shorter answer.
    async fn read_checked(
        &self,
        op: &'static str,
        cols: &str,
        cond: &str,
        limit: u32,
    ) -> Result<Vec<Row>, StoreError> {
        let query = |extra: &str, n: u32| {
            format!(
                "SELECT t.*, c.total_rows AS total_rows FROM \
                 (SELECT COUNT(*) AS total_rows FROM (SELECT 1 AS one FROM STEP_TRACKER s WHERE {cond}{extra} LIMIT {n}) x) c \
                 LEFT JOIN (SELECT {cols} FROM STEP_TRACKER s WHERE {cond}{extra} ORDER BY s.step_id LIMIT {n}) t ON TRUE"
            )
        };
        let id_of = |r: &Row| r.text("step_id").unwrap_or_default();
        // One read and the number of rows it should have returned (`None`: the
        // answer was lost whole).
        let read = |extra: String, n: u32| async move {
            let rows = self.exec(op, &query(&extra, n)).await?;
            let expected = match rows.first() {
                None => None,
                Some(r) => Some(
                    r.int("total_rows")
                        .ok_or_else(|| bad(op, "row count"))?
                        .max(0) as usize,
                ),
            };
            let mut rows: Vec<Row> = rows
                .into_iter()
                .filter(|r| r.text("step_id").is_some())
                .collect();
            rows.sort_by_key(|r| id_of(r));
            Ok::<_, StoreError>((rows, expected))
        };
        let (rows, expected) = read(String::new(), limit).await?;
        if expected.is_some_and(|e| rows.len() >= e) {
            return Ok(rows);
        }
        let expected = expected.unwrap_or(limit as usize);
        tracing::warn!(
            op,
            expected,
            got = rows.len(),
            "a result came back short (a chunked result the client lost); reading it again in pages"
        );
        let mut out: Vec<Row> = Vec::new();
        let mut page = 16u32;
        while out.len() < expected {
            let want = page.min((expected - out.len()) as u32);
            let extra = out.last().map_or(String::new(), |l| {
                format!(" AND s.step_id > {}", sql::text(&id_of(l)))
            });
            let (got, due) = read(extra, want).await?;
            if let Some(due) = due.filter(|d| got.len() >= *d) {
                let done = due < want as usize;
                out.extend(got);
                if done {
                    break; // fewer rows remain than were expected at first
                }
            } else if page > 1 {
                page /= 2;
            } else {
                return Err(StoreError::transient(
                    op,
                    "a one-row result came back empty (the client lost a chunked result)",
                ));
            }
        }
        Ok(out)
    }

    async fn read_steps(&self, op: &'static str, sql: &str) -> Result<Vec<Step>, StoreError> {
        self.exec(op, sql)
            .await?
            .iter()
            .map(|r| step_from_row(op, r))
            .collect()
    }

    /// Applies a fenced `UPDATE … FROM (VALUES …) v` tagged with a token, then
    /// reads back which leases held. Rows go in statements bounded by rows and by
    /// text size. A statement that fails fatally (not a transient error) is split
    /// until the rows that fail alone are found: the others land, and the failing
    /// ones are returned apart (with their error) for the caller to settle.
    async fn fenced(
        &self,
        op: &'static str,
        set: &str,
        cols: &str,
        rows: Vec<(Lease, String)>,
    ) -> Result<(FencedReport, Vec<(Lease, StoreError)>), StoreError> {
        let mut report = FencedReport::default();
        let mut refused = Vec::new();
        let idx: Vec<usize> = (0..rows.len()).collect();
        let lens = rows
            .iter()
            .map(|(l, extra)| extra.len() + l.pod_id.len() * 4 / 3 + 96);
        let mut todo: Vec<Vec<usize>> = chunk_by_size(&idx, lens, CHUNK, MAX_STATEMENT_TEXT);
        todo.reverse();
        while let Some(chunk) = todo.pop() {
            let part: Vec<&(Lease, String)> = chunk.iter().map(|&i| &rows[i]).collect();
            match self.fenced_chunk(op, set, cols, &part).await {
                Ok((applied, rejected)) => {
                    report.applied.extend(applied);
                    report.rejected.extend(rejected);
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) if chunk.len() == 1 => refused.push((rows[chunk[0]].0.clone(), e)),
                Err(_) => {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    todo.push(b.to_vec());
                    todo.push(a.to_vec());
                }
            }
        }
        Ok((report, refused))
    }

    async fn fenced_chunk(
        &self,
        op: &'static str,
        set: &str,
        cols: &str,
        chunk: &[&(Lease, String)],
    ) -> Result<(Vec<(StepId, StepStatus)>, Vec<Lease>), StoreError> {
        let token = uuid::Uuid::now_v7();
        let values: Vec<String> = chunk
            .iter()
            .map(|(l, extra)| {
                format!(
                    "({}, {}, {}{})",
                    sql::id(l.step_id),
                    sql::b64_lit(&l.pod_id),
                    sql::int(l.attempt.into()),
                    extra
                )
            })
            .collect();
        let stmt = format!(
            "UPDATE STEP_TRACKER SET {set}, last_update_ts = SYSDATE(), op_token = {tok} \
             FROM (SELECT column1 AS sid, column2 AS pod, column3 AS att{cols} FROM VALUES {v}) v \
             WHERE STEP_TRACKER.step_id = v.sid AND STEP_TRACKER.claimed_by = BASE64_DECODE_STRING(v.pod) \
             AND STEP_TRACKER.attempt = v.att AND STEP_TRACKER.status = 'claimed'",
            tok = sql::token(&token),
            v = values.join(", ")
        );
        // The token makes a retried UPDATE report what an earlier attempt did.
        let first = self.exec(op, &stmt).await;
        if let Err(e) = &first {
            if !e.is_transient() {
                return Err(e.clone());
            }
        }
        let applied = self
            .read_checked(
                op,
                "step_id AS step_id, status AS status",
                &format!("s.op_token = {}", sql::token(&token)),
                chunk.len() as u32,
            )
            .await?;
        if applied.is_empty() {
            first?;
        }
        let mut got: HashMap<String, StepStatus> = HashMap::new();
        for r in &applied {
            if let (Some(id), Some(st)) = (
                r.text("step_id"),
                r.text("status").and_then(|s| s.parse().ok()),
            ) {
                got.insert(id, st);
            }
        }
        let mut ok = Vec::new();
        let mut rejected = Vec::new();
        for (l, _) in chunk {
            match got.get(&l.step_id.to_string()) {
                Some(st) => ok.push((l.step_id, *st)),
                None => rejected.push(l.clone()),
            }
        }
        Ok((ok, rejected))
    }

    /// [`Self::fenced`] for statements whose rows carry nothing but their lease:
    /// a row refused alone (it cannot be, short of a bug) is logged and reported
    /// as not applied.
    async fn fenced_leases(
        &self,
        op: &'static str,
        set: &str,
        leases: Vec<Lease>,
    ) -> Result<FencedReport, StoreError> {
        let (mut report, refused) = self
            .fenced(
                op,
                set,
                "",
                leases.into_iter().map(|l| (l, String::new())).collect(),
            )
            .await?;
        for (lease, e) in refused {
            tracing::error!(op, step_id = %lease.step_id, error = %e, "the store refused this row; left as it was");
            report.rejected.push(lease);
        }
        Ok(report)
    }
}

/// Longest error text stored with a step (bytes); longer ones are cut.
pub const MAX_ERROR_BYTES: usize = 64 * 1024;

/// Largest result stored with a step (bytes of JSON): Snowflake advises statement
/// text under 1 MB, and a result travels base64-encoded in one. A larger result
/// fails the step (not retried) with an error saying so.
pub const MAX_RESULT_BYTES: usize = 512 * 1024;

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
fn cut_to(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[async_trait]
impl Store for SnowflakeStore {
    fn backend(&self) -> &'static str {
        "snowflake"
    }

    async fn schema_init(&self) -> Result<(), StoreError> {
        for ddl in DDL {
            self.exec("schema_init", ddl).await?;
        }
        Ok(())
    }

    async fn now(&self) -> Result<DateTime<Utc>, StoreError> {
        let rows = self
            .exec(
                "now",
                "SELECT DATE_PART(EPOCH_MILLISECOND, SYSDATE()) AS now_ms",
            )
            .await?;
        rows.first()
            .and_then(|r| r.int("now_ms"))
            .map(ts)
            .ok_or_else(|| bad("now", "store time"))
    }

    async fn steps_insert(&self, steps: Vec<NewStep>) -> Result<Vec<Inserted>, StoreError> {
        let op = "steps_insert";
        if steps.is_empty() {
            return Ok(Vec::new());
        }
        // Within one call, a repeated key goes to its first step.
        let mut first_of_key: HashMap<&str, usize> = HashMap::new();
        let mut unique = Vec::new();
        for (i, s) in steps.iter().enumerate() {
            match s.idempotency_key() {
                Some(k) if first_of_key.contains_key(k) => {}
                Some(k) => {
                    first_of_key.insert(k, i);
                    unique.push(i);
                }
                None => unique.push(i),
            }
        }
        // Chunks bounded by rows and by statement text (base64 payloads grow by 4/3):
        // Snowflake limits the size of a statement's text.
        // Keyed steps go in MERGE statements (which take the table lock, so two
        // concurrent submits of one key cannot both insert: Snowflake enforces no
        // UNIQUE constraint, and its INSERTs run in parallel on snapshots); the
        // rest in plain INSERTs, which do not wait for the lock.
        let (keyed, plain): (Vec<usize>, Vec<usize>) = unique
            .iter()
            .partition(|&&i| steps[i].idempotency_key().is_some());
        let mut chunks: Vec<(bool, Vec<usize>)> = Vec::new();
        for (is_keyed, group) in [(true, keyed), (false, plain)] {
            let lens = group
                .iter()
                .map(|&i| steps[i].payload_json().len() * 4 / 3 + 256);
            for c in chunk_by_size(&group, lens, CHUNK, MAX_STATEMENT_TEXT) {
                chunks.push((is_keyed, c));
            }
        }
        for (is_keyed, chunk) in &chunks {
            let values: Vec<String> = chunk
                .iter()
                .map(|&i| {
                    let s = &steps[i];
                    let (delay, at) = match s.run_at() {
                        RunAt::Now => (0, "CAST(NULL AS NUMBER)".to_string()),
                        RunAt::After(d) => (ms(d), "CAST(NULL AS NUMBER)".to_string()),
                        RunAt::At(t) => (0, sql::int(t.timestamp_millis())),
                    };
                    format!(
                        "({}, {}, {}, {}, {}, {}, {}, {}, {})",
                        sql::id(s.step_id()),
                        sql::b64_lit(s.payload_json()),
                        sql::int(s.priority().into()),
                        sql::int(s.max_retries().into()),
                        sql::int(delay),
                        at,
                        sql::b64_opt(s.idempotency_key()),
                        s.timeout()
                            .map_or("CAST(NULL AS NUMBER)".to_string(), |t| sql::int(ms(t))),
                        sql::b64_lit(&s.payload().step_type),
                    )
                })
                .collect();
            let cols = "step_id, status, last_update_ts, payload, retry_count, priority, \
                 created_ts, max_retries, attempt, run_at, idempotency_key, timeout_ms, step_type";
            // Values are decoded and computed in the source, so the inserted row
            // names plain columns only (fakesnow's MERGE rewrite sees only those).
            let row = "v.sid, 'pending', SYSDATE(), v.p, 0, v.prio, SYSDATE(), v.mr, 0, v.run_at, v.k, v.t, v.ty";
            let source = format!(
                "(SELECT column1 AS sid, BASE64_DECODE_STRING(column2) AS p, column3 AS prio, column4 AS mr, \
                 CASE WHEN column6 IS NULL THEN DATEADD(millisecond, column5, SYSDATE()) \
                      ELSE DATEADD(millisecond, column6, CAST('1970-01-01 00:00:00' AS TIMESTAMP_NTZ)) END AS run_at, \
                 BASE64_DECODE_STRING(column7) AS k, column8 AS t, BASE64_DECODE_STRING(column9) AS ty \
                 FROM VALUES {}) v",
                values.join(", ")
            );
            // Both forms match on the step id too, so a resent statement never
            // adds a second row.
            let stmt = if *is_keyed {
                format!(
                    "MERGE INTO STEP_TRACKER USING {source} \
                     ON STEP_TRACKER.step_id = v.sid OR STEP_TRACKER.idempotency_key = v.k \
                     WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({row})"
                )
            } else {
                format!(
                    "INSERT INTO STEP_TRACKER ({cols}) SELECT {row} FROM {source} \
                     WHERE NOT EXISTS (SELECT 1 FROM STEP_TRACKER s WHERE s.step_id = v.sid)"
                )
            };
            self.exec(op, &stmt).await?;
        }
        // Which step holds each key now (ours, or one inserted earlier).
        let mut by_key: HashMap<String, StepId> = HashMap::new();
        if !first_of_key.is_empty() {
            let keys: Vec<&str> = first_of_key.keys().copied().collect();
            for chunk in keys.chunks(CHUNK) {
                let list: Vec<String> = chunk.iter().map(|k| sql::text(k)).collect();
                let rows = self
                    .exec(
                        op,
                        &format!(
                            "SELECT step_id AS step_id, idempotency_key AS k FROM STEP_TRACKER \
                             WHERE idempotency_key IN ({}) ORDER BY created_ts, step_id",
                            list.join(", ")
                        ),
                    )
                    .await?;
                // Should duplicates ever exist (rows written by an older version),
                // the oldest step holds the key, for every caller alike.
                for r in rows {
                    if let (Some(id), Some(k)) =
                        (r.text("step_id").and_then(|s| s.parse().ok()), r.text("k"))
                    {
                        by_key.entry(k).or_insert(id);
                    }
                }
            }
        }
        steps
            .iter()
            .enumerate()
            .map(|(i, s)| match s.idempotency_key() {
                None => Ok(Inserted {
                    step_id: s.step_id(),
                    created: true,
                }),
                Some(k) => {
                    let id = *by_key
                        .get(k)
                        .ok_or_else(|| StoreError::fatal(op, "inserted step not found"))?;
                    Ok(Inserted {
                        step_id: id,
                        created: id == s.step_id() && first_of_key.get(k) == Some(&i),
                    })
                }
            })
            .collect()
    }

    async fn steps_claim(&self, p: ClaimParams) -> Result<Vec<Step>, StoreError> {
        let op = "steps_claim";
        if p.limit == 0 {
            return Ok(Vec::new());
        }
        let token = uuid::Uuid::now_v7();
        let update = format!(
            "UPDATE STEP_TRACKER SET status = 'claimed', claimed_by = {pod}, attempt = STEP_TRACKER.attempt + 1, \
             last_update_ts = SYSDATE(), op_token = {tok} \
             FROM (SELECT step_id AS sid FROM STEP_TRACKER WHERE status = 'pending' AND run_at <= SYSDATE() \
             ORDER BY priority DESC, created_ts, step_id LIMIT {n}) c \
             WHERE STEP_TRACKER.step_id = c.sid AND STEP_TRACKER.status = 'pending'",
            pod = sql::text(&p.pod_id),
            tok = sql::token(&token),
            n = p.limit
        );
        // Read back by token even when the UPDATE's answer was lost, and keep
        // trying through an outage: a claim that committed must reach its claimer,
        // or its steps would stay claimed by a live pod that never runs them.
        // An UPDATE whose answer was lost is reported only once the server's own
        // timeouts have ended it (see `exec`), so a claim cannot commit after the
        // read-back below and strand its steps.
        let first = self.exec(op, &update).await;
        let by_token = format!("s.op_token = {}", sql::token(&token));
        let deadline = std::time::Instant::now() + CLAIM_READ_BACK_LIMIT;
        let mut delay = self.base_delay;
        let mut steps = loop {
            match self.read_steps_checked(op, &by_token, p.limit).await {
                Ok(s) => break s,
                Err(e) if e.is_transient() && std::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "claim read-back failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.max_delay);
                }
                Err(e) => return Err(e),
            }
        };
        if steps.is_empty() {
            first?;
        }
        steps.sort_by(|a, b| {
            (b.priority, a.created_ts, a.step_id).cmp(&(a.priority, b.created_ts, b.step_id))
        });
        Ok(steps)
    }

    async fn steps_finish(&self, p: FinishParams) -> Result<FencedReport, StoreError> {
        if p.finishes.is_empty() {
            return Ok(FencedReport::default());
        }
        let b = p.backoff;
        let row = |outcome: Outcome| -> String {
            match outcome {
                Outcome::Complete { result } => {
                    let text = result.to_string();
                    if text.len() > MAX_RESULT_BYTES {
                        return failure_row(
                            &format!(
                                "the result ({} bytes) exceeds the store's limit of {MAX_RESULT_BYTES} bytes",
                                text.len()
                            ),
                            false,
                            &b,
                        );
                    }
                    format!(
                        ", 1, 0, {}, CAST(NULL AS VARCHAR), 0.0",
                        sql::b64_lit(&text)
                    )
                }
                Outcome::Fail { error, retryable } => failure_row(&error, retryable, &b),
            }
        };
        let rows: Vec<(Lease, String)> = p
            .finishes
            .into_iter()
            .map(|f| (f.lease, row(f.outcome)))
            .collect();
        let retry = "(v.ok = 0 AND v.retryable = 1 AND STEP_TRACKER.retry_count < STEP_TRACKER.max_retries)";
        let set = format!(
            "status = CASE WHEN v.ok = 1 THEN 'completed' WHEN {retry} THEN 'pending' ELSE 'failed' END, \
             result = CASE WHEN v.ok = 1 THEN BASE64_DECODE_STRING(v.res) ELSE STEP_TRACKER.result END, \
             last_error = CASE WHEN v.ok = 1 THEN NULL ELSE BASE64_DECODE_STRING(v.err) END, \
             claimed_by = CASE WHEN {retry} THEN NULL ELSE STEP_TRACKER.claimed_by END, \
             run_at = CASE WHEN {retry} THEN DATEADD(millisecond, CAST(LEAST({max}, {base} * POWER(2, LEAST(STEP_TRACKER.retry_count, 30))) * (1.0 - v.cut) AS INTEGER), SYSDATE()) ELSE STEP_TRACKER.run_at END, \
             retry_count = CASE WHEN {retry} THEN STEP_TRACKER.retry_count + 1 ELSE STEP_TRACKER.retry_count END",
            max = ms(b.max),
            base = ms(b.base)
        );
        let cols =
            ", column4 AS ok, column5 AS retryable, column6 AS res, column7 AS err, column8 AS cut";
        let (mut report, refused) = self.fenced("steps_finish", &set, cols, rows).await?;
        if refused.is_empty() {
            return Ok(report);
        }
        // A row the store refuses alone must not hold the others back, nor stay
        // claimed forever: it is failed (not retried) with the store's reason.
        let again: Vec<(Lease, String)> = refused
            .iter()
            .map(|(lease, e)| {
                tracing::error!(step_id = %lease.step_id, error = %e,
                    "the store refused this step's outcome; failing the step");
                let why = format!("the store refused this step's outcome: {}", e.message);
                (lease.clone(), failure_row(&why, false, &b))
            })
            .collect();
        let (second, still) = self.fenced("steps_finish", &set, cols, again).await?;
        report.applied.extend(second.applied);
        report.rejected.extend(second.rejected);
        report.rejected.extend(still.into_iter().map(|(l, _)| l));
        Ok(report)
    }

    async fn steps_release(&self, leases: Vec<Lease>) -> Result<FencedReport, StoreError> {
        if leases.is_empty() {
            return Ok(FencedReport::default());
        }
        self.fenced_leases(
            "steps_release",
            "status = 'pending', claimed_by = NULL, run_at = SYSDATE()",
            leases,
        )
        .await
    }

    async fn step_cancel(&self, step_id: StepId) -> Result<CancelOutcome, StoreError> {
        let op = "step_cancel";
        let rows = self
            .exec(
                op,
                &format!(
                    "UPDATE STEP_TRACKER SET status = 'cancelled', last_update_ts = SYSDATE() \
                     WHERE step_id = {} AND status = 'pending'",
                    sql::id(step_id)
                ),
            )
            .await?;
        if affected(&rows) > 0 {
            return Ok(CancelOutcome::Cancelled);
        }
        Ok(match self.step_get(step_id).await? {
            None => CancelOutcome::NotFound,
            Some(s) => CancelOutcome::NotPending(s.status),
        })
    }

    async fn step_get(&self, step_id: StepId) -> Result<Option<Step>, StoreError> {
        Ok(self
            .read_steps(
                "step_get",
                &format!(
                    "SELECT {STEP_COLS} FROM STEP_TRACKER WHERE step_id = {} LIMIT 1",
                    sql::id(step_id)
                ),
            )
            .await?
            .pop())
    }

    async fn step_retry(&self, step_id: StepId) -> Result<RetryOutcome, StoreError> {
        let rows = self
            .exec(
                "step_retry",
                &format!(
                    "UPDATE STEP_TRACKER SET status = 'pending', retry_count = 0, claimed_by = NULL, \
                     run_at = SYSDATE(), last_update_ts = SYSDATE() WHERE step_id = {} AND status = 'failed'",
                    sql::id(step_id)
                ),
            )
            .await?;
        if affected(&rows) > 0 {
            return Ok(RetryOutcome::Requeued);
        }
        Ok(match self.step_get(step_id).await? {
            None => RetryOutcome::NotFound,
            Some(s) => RetryOutcome::NotFailed(s.status),
        })
    }

    async fn steps_failed_list(&self, p: PageParams) -> Result<Vec<Step>, StoreError> {
        let after = p.after.map_or("''".to_string(), sql::id);
        self.read_steps_checked(
            "steps_failed_list",
            &format!("s.status = 'failed' AND s.step_id > {after}"),
            p.limit,
        )
        .await
    }

    async fn steps_prune(&self, p: PruneParams) -> Result<u64, StoreError> {
        let rows = self
            .exec(
                "steps_prune",
                &format!(
                    "DELETE FROM STEP_TRACKER USING (SELECT step_id AS sid FROM STEP_TRACKER \
                     WHERE status IN ('completed', 'failed', 'cancelled') \
                     AND last_update_ts < DATEADD(millisecond, {cut}, SYSDATE()) LIMIT {n}) c \
                     WHERE STEP_TRACKER.step_id = c.sid AND STEP_TRACKER.status IN ('completed', 'failed', 'cancelled') \
                     AND STEP_TRACKER.last_update_ts < DATEADD(millisecond, {cut}, SYSDATE())",
                    cut = -ms(p.retention),
                    n = p.limit
                ),
            )
            .await?;
        Ok(affected(&rows))
    }

    fn shares_stats(&self) -> bool {
        true
    }

    /// Live counts from the rows still pending or claimed; finished counts
    /// advanced over the rows whose last update falls between the previous
    /// watermark and `now - lag`, so each statement reads live rows and new
    /// finishes only (micro-partitions of old finished rows are pruned by their
    /// `status` and `last_update_ts` ranges). The first publish counts every
    /// finished row once. The row is written by a `MERGE` that only moves the
    /// watermark forward, so a deposed leader publishing late changes nothing.
    async fn stats_publish(&self, p: StatsParams) -> Result<QueueStats, StoreError> {
        let op = "stats_publish";
        let prev = self
            .exec(
                op,
                "SELECT watermark_ms AS wm, body AS body FROM FLEET_STATS WHERE name = 'queue' \
                 ORDER BY watermark_ms DESC LIMIT 1",
            )
            .await?;
        let (from, mut shared) = match prev.first() {
            Some(r) => (
                r.int("wm").ok_or_else(|| bad(op, "watermark"))?,
                serde_json::from_str::<SharedStats>(&r.text("body").unwrap_or_default())
                    .map_err(|_| bad(op, "statistics"))?,
            ),
            None => (0, SharedStats::default()),
        };
        let lag = ms(p.lag);
        let rows = self
            .exec(
                op,
                &format!(
                    "SELECT 'live' AS part, status AS status, step_type AS step_type, priority AS priority, \
                       COUNT(*) AS n, \
                       MIN(CASE WHEN status = 'pending' AND run_at <= SYSDATE() THEN DATE_PART(EPOCH_MILLISECOND, run_at) END) AS ms \
                     FROM STEP_TRACKER WHERE status IN ('pending', 'claimed') GROUP BY status, step_type, priority \
                     UNION ALL \
                     SELECT 'done' AS part, status AS status, step_type AS step_type, 0 AS priority, COUNT(*) AS n, \
                       CAST(NULL AS NUMBER(19,0)) AS ms \
                     FROM STEP_TRACKER WHERE status IN ('completed', 'failed', 'cancelled') \
                       AND last_update_ts > DATEADD(millisecond, {from}, TO_TIMESTAMP_NTZ('1970-01-01 00:00:00')) \
                       AND last_update_ts <= DATEADD(millisecond, {neg_lag}, SYSDATE()) \
                     GROUP BY status, step_type \
                     UNION ALL \
                     SELECT 'now' AS part, NULL AS status, NULL AS step_type, 0 AS priority, 0 AS n, \
                       DATE_PART(EPOCH_MILLISECOND, SYSDATE()) AS ms",
                    from = sql::int(from),
                    neg_lag = sql::int(-lag),
                ),
            )
            .await?;
        let now = rows
            .iter()
            .find(|r| r.text("part").as_deref() == Some("now"))
            .and_then(|r| r.int("ms"))
            .ok_or_else(|| bad(op, "store time"))?;
        let mut stats = QueueStats {
            as_of: Some(ts(now)),
            ..Default::default()
        };
        let mut oldest: Option<i64> = None;
        for r in &rows {
            let part = r.text("part").unwrap_or_default();
            if part == "now" {
                continue;
            }
            let status: StepStatus = r
                .text("status")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(op, "status"))?;
            let t = r.text("step_type").unwrap_or_default();
            let n = r.int("n").unwrap_or(0).max(0) as u64;
            if part == "done" {
                let slot = match status {
                    StepStatus::Completed => 0,
                    StepStatus::Failed => 1,
                    _ => 2,
                };
                shared.finished.entry(t).or_default()[slot] += n;
                continue;
            }
            stats.counts.add(status, n);
            stats.by_type.entry(t).or_default().add(status, n);
            if status == StepStatus::Pending {
                *stats
                    .pending_by_priority
                    .entry(r.int("priority").unwrap_or(0) as i32)
                    .or_default() += n;
            }
            if let Some(o) = r.int("ms") {
                oldest = Some(oldest.map_or(o, |x: i64| x.min(o)));
            }
        }
        stats.oldest_pending_age =
            oldest.map(|o| Duration::from_millis(now.saturating_sub(o).max(0) as u64));
        for (t, [c, f, x]) in &shared.finished {
            let by = stats.by_type.entry(t.clone()).or_default();
            for (status, n) in [
                (StepStatus::Completed, *c),
                (StepStatus::Failed, *f),
                (StepStatus::Cancelled, *x),
            ] {
                by.add(status, n);
                stats.counts.add(status, n);
            }
        }
        // Clients choose step types: keep the row's size bounded.
        fold_types(
            &mut shared.finished,
            STATS_TYPES,
            |k| k.iter().sum(),
            |a, b| {
                for i in 0..3 {
                    a[i] += b[i];
                }
            },
        );
        stats.fold_types();
        shared.stats = stats.clone();
        let body = serde_json::to_string(&shared)
            .map_err(|e| StoreError::fatal(op, format!("encoding statistics: {e}")))?;
        let watermark = now - lag;
        if watermark > from {
            self.exec(
                op,
                &format!(
                    "MERGE INTO FLEET_STATS USING (SELECT 'queue' AS name, {wm} AS wm, {by} AS by, {body} AS body) s \
                     ON FLEET_STATS.name = s.name \
                     WHEN MATCHED AND FLEET_STATS.watermark_ms < s.wm THEN UPDATE SET \
                       watermark_ms = s.wm, computed_at = SYSDATE(), computed_by = s.by, body = s.body \
                     WHEN NOT MATCHED THEN INSERT (name, watermark_ms, computed_at, computed_by, body) \
                       VALUES (s.name, s.wm, SYSDATE(), s.by, s.body)",
                    wm = sql::int(watermark),
                    by = sql::text(&p.pod_id),
                    body = sql::text(&body),
                ),
            )
            .await?;
        }
        Ok(stats)
    }

    async fn stats_shared(&self) -> Result<Option<QueueStats>, StoreError> {
        let op = "stats_shared";
        let rows = self
            .exec(
                op,
                "SELECT body AS body FROM FLEET_STATS WHERE name = 'queue' \
                 ORDER BY watermark_ms DESC LIMIT 1",
            )
            .await?;
        rows.first()
            .map(|r| {
                serde_json::from_str::<SharedStats>(&r.text("body").unwrap_or_default())
                    .map(|s| s.stats)
                    .map_err(|_| bad(op, "statistics"))
            })
            .transpose()
    }

    async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        let op = "queue_stats";
        let rows = self
            .exec(
                op,
                "SELECT status AS status, step_type AS step_type, priority AS priority, COUNT(*) AS n, \
                 MIN(CASE WHEN status = 'pending' AND run_at <= SYSDATE() THEN DATE_PART(EPOCH_MILLISECOND, run_at) END) AS oldest_ms, \
                 MAX(DATE_PART(EPOCH_MILLISECOND, SYSDATE())) AS now_ms \
                 FROM STEP_TRACKER GROUP BY status, step_type, priority",
            )
            .await?;
        let now = match rows.first().and_then(|r| r.int("now_ms")) {
            Some(n) => n,
            None => self.now().await?.timestamp_millis(),
        };
        let mut stats = QueueStats {
            as_of: Some(ts(now)),
            ..Default::default()
        };
        let mut by_prio: BTreeMap<i32, u64> = BTreeMap::new();
        let mut oldest: Option<i64> = None;
        for r in &rows {
            let status: StepStatus = r
                .text("status")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(op, "status"))?;
            let n = r.int("n").unwrap_or(0).max(0) as u64;
            stats.counts.add(status, n);
            stats
                .by_type
                .entry(r.text("step_type").unwrap_or_default())
                .or_default()
                .add(status, n);
            if status == StepStatus::Pending {
                *by_prio
                    .entry(r.int("priority").unwrap_or(0) as i32)
                    .or_default() += n;
            }
            if let Some(o) = r.int("oldest_ms") {
                oldest = Some(oldest.map_or(o, |x: i64| x.min(o)));
            }
        }
        stats.pending_by_priority = by_prio;
        stats.oldest_pending_age =
            oldest.map(|o| Duration::from_millis(now.saturating_sub(o).max(0) as u64));
        Ok(stats)
    }

    async fn pod_heartbeat(&self, p: HeartbeatParams) -> Result<PodRecord, StoreError> {
        let op = "pod_heartbeat";
        let stmt = format!(
            "MERGE INTO POD_HEALTH USING (SELECT {pod} AS pod_id, '{status}' AS status, {cap} AS cap, {max} AS maxc, {meta} AS meta, \
               {inc} AS inc, {hb} AS hb, {dead} AS dead) s \
             ON POD_HEALTH.pod_id = s.pod_id \
             WHEN MATCHED AND POD_HEALTH.status = 'up' THEN UPDATE SET \
               birth_ts = CASE WHEN POD_HEALTH.incarnation IS NOT DISTINCT FROM s.inc THEN POD_HEALTH.birth_ts ELSE SYSDATE() END, \
               last_heartbeat_ts = SYSDATE(), status = s.status, capacity_in_use = s.cap, max_capacity = s.maxc, meta = s.meta, \
               incarnation = s.inc, heartbeat_interval_ms = s.hb, dead_after_ms = s.dead \
             WHEN NOT MATCHED THEN INSERT (pod_id, birth_ts, last_heartbeat_ts, status, capacity_in_use, max_capacity, meta, \
               incarnation, heartbeat_interval_ms, dead_after_ms) \
               VALUES (s.pod_id, SYSDATE(), SYSDATE(), s.status, s.cap, s.maxc, s.meta, s.inc, s.hb, s.dead)",
            pod = sql::text(&p.pod_id),
            status = p.status.as_str(),
            cap = p.capacity_in_use,
            max = p.max_capacity,
            meta = sql::text(&p.meta.to_string()),
            inc = sql::text(&p.incarnation),
            hb = opt_ms(p.heartbeat_interval),
            dead = opt_ms(p.dead_after),
        );
        self.exec(op, &stmt).await?;
        let rows = self
            .exec(
                op,
                &format!(
                    "SELECT {POD_COLS} FROM POD_HEALTH WHERE pod_id = {} LIMIT 1",
                    sql::text(&p.pod_id)
                ),
            )
            .await?;
        rows.first()
            .map(|r| pod_from_row(op, r))
            .unwrap_or_else(|| Err(StoreError::fatal(op, "heartbeat row not found after MERGE")))
    }

    async fn pods_list(&self) -> Result<Vec<PodRecord>, StoreError> {
        let op = "pods_list";
        self.exec(
            op,
            &format!("SELECT {POD_COLS} FROM POD_HEALTH ORDER BY birth_ts, pod_id"),
        )
        .await?
        .iter()
        .map(|r| pod_from_row(op, r))
        .collect::<Result<Vec<_>, _>>()
        .map(|mut pods| {
            // A chunked result arrives out of order (snowflake-api 0.14 puts the
            // inline part last): order again.
            pods.sort_by(|a, b| (a.birth_ts, &a.pod_id).cmp(&(b.birth_ts, &b.pod_id)));
            pods
        })
    }

    async fn pods_mark_down(&self, p: MarkDownParams) -> Result<Vec<String>, StoreError> {
        let op = "pods_mark_down";
        if p.pod_ids.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = p.pod_ids.iter().map(|id| sql::text(id)).collect();
        let cond = format!(
            "pod_id IN ({}) AND status = 'up' \
             AND last_heartbeat_ts <= DATEADD(millisecond, -COALESCE(dead_after_ms, {}), SYSDATE())",
            list.join(", "),
            ms(p.dead_threshold)
        );
        let candidates = self
            .exec(
                op,
                &format!("SELECT pod_id AS pod_id FROM POD_HEALTH WHERE {cond}"),
            )
            .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        self.exec(
            op,
            &format!("UPDATE POD_HEALTH SET status = 'down', capacity_in_use = 0 WHERE {cond}"),
        )
        .await?;
        let wanted: HashSet<&String> = p.pod_ids.iter().collect();
        Ok(candidates
            .iter()
            .filter_map(|r| r.text("pod_id"))
            .filter(|id| wanted.contains(id))
            .collect())
    }

    async fn steps_orphaned(&self, p: OrphanParams) -> Result<Vec<Step>, StoreError> {
        self.read_steps_checked(
            "steps_orphaned",
            &format!(
                "s.status = 'claimed' AND NOT EXISTS \
                 (SELECT 1 FROM POD_HEALTH p WHERE p.pod_id = s.claimed_by AND p.status = 'up' \
                  AND p.birth_ts <= s.last_update_ts{})",
                if p.presumed_down.is_empty() {
                    String::new()
                } else {
                    let list: Vec<String> =
                        p.presumed_down.iter().map(|id| sql::text(id)).collect();
                    format!(" AND p.pod_id NOT IN ({})", list.join(", "))
                },
            ),
            p.limit,
        )
        .await
    }

    async fn steps_held(
        &self,
        pod_id: &str,
        limit: u32,
    ) -> Result<(Vec<HeldStep>, DateTime<Utc>), StoreError> {
        let op = "steps_held";
        let rows = self
            .exec(
                op,
                &format!(
                    "SELECT step_id AS step_id, claimed_by AS claimed_by, attempt AS attempt, \
                     DATE_PART(EPOCH_MILLISECOND, last_update_ts) AS claimed_ms, \
                     DATE_PART(EPOCH_MILLISECOND, SYSDATE()) AS now_ms FROM STEP_TRACKER \
                     WHERE status = 'claimed' AND claimed_by = {} ORDER BY last_update_ts LIMIT {limit}",
                    sql::text(pod_id)
                ),
            )
            .await?;
        let mut held = Vec::with_capacity(rows.len());
        let mut now = None;
        for r in &rows {
            now = now.or(r.int("now_ms"));
            held.push(HeldStep {
                lease: Lease {
                    step_id: r
                        .text("step_id")
                        .and_then(|t| t.parse().ok())
                        .ok_or_else(|| bad(op, "step_id"))?,
                    pod_id: r.text("claimed_by").ok_or_else(|| bad(op, "claimed_by"))?,
                    attempt: r.int("attempt").ok_or_else(|| bad(op, "attempt"))? as u32,
                },
                claimed_at: ts(r
                    .int("claimed_ms")
                    .ok_or_else(|| bad(op, "last_update_ts"))?),
            });
        }
        let now = match now {
            Some(n) => ts(n),
            None => self.now().await?,
        };
        Ok((held, now))
    }

    fn statement_count(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    fn statements_by_op(&self) -> Vec<(&'static str, u64)> {
        let m = self.by_op.lock().expect("statement counts");
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_override_rewrites_only_the_account_host() {
        let e = Endpoint {
            account_host: "acme-prod.snowflakecomputing.com".into(),
            scheme: "http".into(),
            host: "127.0.0.1".into(),
            port: 8080,
        };
        let mut api: reqwest::Url =
            "https://ACME-PROD.snowflakecomputing.com/queries/v1/query-request?x=1"
                .parse()
                .unwrap();
        e.rewrite(&mut api);
        assert_eq!(
            api.as_str(),
            "http://127.0.0.1:8080/queries/v1/query-request?x=1"
        );
        let chunk = "https://sfc-eu-ds1.s3.amazonaws.com/results/0/main/data_0_0_1?sig=abc";
        let mut url: reqwest::Url = chunk.parse().unwrap();
        e.rewrite(&mut url);
        assert_eq!(
            url.as_str(),
            chunk,
            "result chunks are fetched from cloud storage"
        );
    }

    #[test]
    fn statements_are_chunked_by_rows_and_bytes() {
        let items: Vec<usize> = (0..7).collect();
        let lens = [10, 10, 100, 10, 10, 10, 10];
        let c = chunk_by_size(&items, lens, 3, 50);
        assert_eq!(c, vec![vec![0, 1], vec![2], vec![3, 4, 5], vec![6]]);
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        let s = "é".repeat(100);
        let cut = cut_to(&s, 51);
        assert!(cut.len() <= 51 && cut.ends_with('…'));
        assert_eq!(cut_to("short", 51), "short");
    }

    #[test]
    fn errors_are_classified_for_the_retry_policy() {
        let api = |code: &str| SnowflakeApiError::ApiError(code.into(), "m".into());
        for code in ["000625", "000630", "390104", "390114"] {
            assert!(classify("op", api(code)).is_transient(), "{code}");
        }
        assert!(session_lost(&api("390104")) && !session_lost(&api("000625")));
        assert!(
            !classify("op", api("002003")).is_transient(),
            "missing object is fatal"
        );
        assert!(classify("op", SnowflakeApiError::EmptyResponse).is_transient());
    }

    #[test]
    fn arrow_integers_of_any_width_and_decimals_decode() {
        use arrow_array::{Decimal128Array, Int16Array, Int8Array, StringArray};
        use std::sync::Arc;
        let batch = RecordBatch::try_from_iter(vec![
            (
                "A",
                Arc::new(Int8Array::from(vec![Some(7), None])) as Arc<dyn Array>,
            ),
            (
                "B",
                Arc::new(Int16Array::from(vec![300, -2])) as Arc<dyn Array>,
            ),
            (
                "C",
                Arc::new(
                    Decimal128Array::from(vec![12_345i128, 1])
                        .with_precision_and_scale(38, 0)
                        .unwrap(),
                ) as Arc<dyn Array>,
            ),
            (
                "D",
                Arc::new(StringArray::from(vec!["x", "y"])) as Arc<dyn Array>,
            ),
        ])
        .unwrap();
        let mut rows = Vec::new();
        decode_batch(&batch, &mut rows).unwrap();
        assert_eq!(rows[0].int("a"), Some(7));
        assert_eq!(rows[1].int("a"), None);
        assert_eq!(rows[0].int("b"), Some(300));
        assert_eq!(rows[0].int("c"), Some(12_345));
        assert_eq!(rows[1].text("d").as_deref(), Some("y"));
    }
}
