//! The embedded store: one SQLite file, shared by every pod on the machine.
//!
//! - WAL journal, so readers never block the writer and vice versa;
//!   `synchronous = NORMAL`, which in WAL mode survives a process crash (SIGKILL)
//!   without losing committed transactions; an OS crash or power cut may lose the
//!   last few commits.
//! - A busy timeout, so processes sharing the file wait for each other's write
//!   lock instead of failing; a wait longer than that is a transient error.
//! - All writes go through one group-commit writer thread (`writer`); reads use a
//!   small pool of connections on tokio's blocking pool. No SQLite call ever runs
//!   on an async or actor thread.
//! - Times are stored as INTEGER milliseconds since the Unix epoch (UTC), read from
//!   this machine's clock inside the write transaction: for a local file that is
//!   the store's clock, common to every process that shares it.

mod writer;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fleet_q_actors::*;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use totals::Totals;
use writer::{clock_ms, Writer};

mod checkpoint;
mod identity;
mod totals;

/// Settings of the embedded store.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// How long to wait for another process's write lock before a transient error.
    pub busy_timeout: Duration,
    /// Read connections kept open.
    pub readers: usize,
    /// Write jobs that may wait for the writer before callers are made to wait.
    pub queue: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(5),
            readers: 4,
            queue: 4096,
        }
    }
}

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    path: PathBuf,
    writer: Writer,
    readers: Arc<ReaderPool>,
    statements: Arc<AtomicU64>,
    /// Stops the checkpoint thread when the store goes.
    _checkpointer: Option<checkpoint::Checkpointer>,
}

struct ReaderPool {
    path: PathBuf,
    busy_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Connection>>,
    statements: Arc<AtomicU64>,
}

impl ReaderPool {
    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(c) = self.idle.lock().expect("reader pool lock").pop() {
            return Ok(c);
        }
        let mut c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| map_err("open", e))?;
        c.busy_timeout(self.busy_timeout)
            .map_err(|e| map_err("open", e))?;
        c.execute_batch("PRAGMA query_only = ON")
            .map_err(|e| map_err("open", e))?;
        count_statements(&mut c, self.statements.clone());
        Ok(c)
    }

    fn give_back(&self, c: Connection) {
        let mut idle = self.idle.lock().expect("reader pool lock");
        if idle.len() < self.max_idle {
            idle.push(c);
        }
    }
}

/// Maps a SQLite error to a store error: lock contention is transient, the rest
/// fatal. The message is SQLite's, which names objects but never holds SQL text
/// or values.
pub(crate) fn map_err(op: &'static str, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::*;
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, DatabaseBusy | DatabaseLocked | SystemIoFailure) =>
        {
            StoreError::transient(op, format!("database busy: {e}"))
        }
        _ => StoreError::fatal(op, e.to_string()),
    }
}

/// The DDL `schema_init` runs (idempotent), as `fleet-q schema` prints it.
pub fn schema_ddl() -> &'static str {
    SCHEMA
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS STEP_TRACKER (
    step_id         BLOB    NOT NULL PRIMARY KEY, -- UUIDv7 bytes; hex(step_id) to read
    status          TEXT    NOT NULL,
    claimed_by      TEXT,
    last_update_ts  INTEGER NOT NULL,
    payload         TEXT    NOT NULL,
    retry_count     INTEGER NOT NULL DEFAULT 0,
    priority        INTEGER NOT NULL DEFAULT 0,
    created_ts      INTEGER NOT NULL,
    max_retries     INTEGER NOT NULL,
    attempt         INTEGER NOT NULL DEFAULT 0,
    run_at          INTEGER NOT NULL,
    idempotency_key TEXT,
    last_error      TEXT,
    result          TEXT,
    timeout_ms      INTEGER,
    step_type       TEXT    NOT NULL
);
-- One index serves claims (status = 'pending', in claim order) and orphan
-- detection (status = 'claimed'): a step moves within it instead of between two.
CREATE INDEX IF NOT EXISTS step_tracker_live
    ON STEP_TRACKER (status, priority DESC, created_ts, step_id)
    WHERE status IN ('pending', 'claimed');
CREATE UNIQUE INDEX IF NOT EXISTS step_tracker_idempotency_key
    ON STEP_TRACKER (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- Failed steps are few: this index costs nothing on the success path.
CREATE INDEX IF NOT EXISTS step_tracker_failed
    ON STEP_TRACKER (step_id) WHERE status = 'failed';
-- Per step type: rows held in STEP_TRACKER, and how many are failed and
-- cancelled. Kept in the transaction of each insert, terminal failure, cancel,
-- manual retry and prune, so stats never scan history (README, Statistics).
CREATE TABLE IF NOT EXISTS STEP_TOTALS (
    step_type TEXT    NOT NULL PRIMARY KEY,
    row_count INTEGER NOT NULL DEFAULT 0,
    failed    INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0
);
-- Statistics read the largest types only (clients choose types).
CREATE INDEX IF NOT EXISTS step_totals_by_size ON STEP_TOTALS (row_count DESC);
CREATE TABLE IF NOT EXISTS POD_HEALTH (
    pod_id            TEXT    NOT NULL PRIMARY KEY,
    birth_ts          INTEGER NOT NULL,
    last_heartbeat_ts INTEGER NOT NULL,
    status            TEXT    NOT NULL,
    capacity_in_use   INTEGER NOT NULL DEFAULT 0,
    max_capacity      INTEGER NOT NULL DEFAULT 0,
    meta              TEXT    NOT NULL DEFAULT '{}',
    incarnation       TEXT,
    heartbeat_interval_ms INTEGER,
    dead_after_ms     INTEGER
);
";

/// Columns added to POD_HEALTH after its first release: `schema_init` adds each
/// one a table created by an older version lacks (SQLite has no
/// `ADD COLUMN IF NOT EXISTS`).
const POD_HEALTH_ADDED: [(&str, &str); 3] = [
    ("incarnation", "TEXT"),
    ("heartbeat_interval_ms", "INTEGER"),
    ("dead_after_ms", "INTEGER"),
];

const STEP_COLS: &str = "step_id, status, claimed_by, last_update_ts, payload, retry_count, \
     priority, created_ts, max_retries, attempt, run_at, idempotency_key, last_error, result, \
     timeout_ms";

const POD_COLS: &str = "pod_id, birth_ts, last_heartbeat_ts, status, capacity_in_use, \
     max_capacity, meta, heartbeat_interval_ms, dead_after_ms";

fn ts(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn bad_row(what: &str, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("stored {what} is invalid: {e}").into(),
    )
}

/// Step ids are stored as the UUID's 16 bytes: less than half the size of the
/// text form in the table and in every index, and still in creation order.
fn id_val(id: StepId) -> SqlValue {
    SqlValue::Blob(id.as_bytes().to_vec())
}

/// The smallest id that could be minted at `ms` (Unix milliseconds): a UUIDv7
/// starts with its 48-bit big-endian timestamp.
fn id_floor(ms: i64) -> SqlValue {
    let mut bytes = vec![0u8; 16];
    bytes[..6].copy_from_slice(&ms.max(0).to_be_bytes()[2..]);
    SqlValue::Blob(bytes)
}

fn id_at(r: &Row<'_>, idx: usize) -> rusqlite::Result<StepId> {
    let bytes: Vec<u8> = r.get(idx)?;
    let arr: [u8; 16] = bytes
        .try_into()
        .map_err(|_| bad_row("step_id", "not 16 bytes"))?;
    Ok(StepId::from_bytes(arr))
}

fn step_from_row(r: &Row<'_>) -> rusqlite::Result<Step> {
    let status: String = r.get(1)?;
    let payload: String = r.get(4)?;
    let result: Option<String> = r.get(13)?;
    Ok(Step {
        step_id: id_at(r, 0)?,
        status: status.parse().map_err(|e| bad_row("status", e))?,
        claimed_by: r.get(2)?,
        last_update_ts: ts(r.get(3)?),
        payload: serde_json::from_str(&payload).map_err(|e| bad_row("payload", e))?,
        retry_count: r.get(5)?,
        priority: r.get(6)?,
        created_ts: ts(r.get(7)?),
        max_retries: r.get(8)?,
        attempt: r.get(9)?,
        run_at: ts(r.get(10)?),
        idempotency_key: r.get(11)?,
        last_error: r.get(12)?,
        result: result
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| bad_row("result", e))?,
        timeout_ms: r.get::<_, Option<i64>>(14)?.map(|t| t.max(0) as u64),
    })
}

fn pod_from_row(r: &Row<'_>, now: i64) -> rusqlite::Result<PodRecord> {
    let status: String = r.get(3)?;
    let meta: String = r.get(6)?;
    let last: i64 = r.get(2)?;
    Ok(PodRecord {
        pod_id: r.get(0)?,
        birth_ts: ts(r.get(1)?),
        last_heartbeat_ts: ts(last),
        status: status.parse().map_err(|e| bad_row("pod status", e))?,
        capacity_in_use: r.get(4)?,
        max_capacity: r.get(5)?,
        meta: serde_json::from_str(&meta).unwrap_or(serde_json::Value::Null),
        heartbeat_age: Duration::from_millis(now.saturating_sub(last).max(0) as u64),
        heartbeat_interval: r
            .get::<_, Option<i64>>(7)?
            .map(|v| Duration::from_millis(v.max(0) as u64)),
        dead_after: r
            .get::<_, Option<i64>>(8)?
            .map(|v| Duration::from_millis(v.max(0) as u64)),
    })
}

fn run_at_ms(run_at: RunAt, now: i64) -> i64 {
    match run_at {
        RunAt::Now => now,
        RunAt::After(d) => now.saturating_add(ms(d)),
        // A time in the past simply means "due now"; keep it so ordering by age holds.
        RunAt::At(at) => at.timestamp_millis(),
    }
}

const INSERT_COLS: &str = "step_id, status, last_update_ts, payload, priority, created_ts, \
     max_retries, run_at, idempotency_key, timeout_ms, step_type";
const INSERT_ROW: &str = "(?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?)";
const INSERT_PARAMS: usize = 10;

fn push_insert_values(values: &mut Vec<SqlValue>, s: &NewStep, now: i64) {
    values.extend([
        id_val(s.step_id()),
        SqlValue::Integer(now),
        SqlValue::Text(s.payload_json().to_string()),
        SqlValue::Integer(s.priority().into()),
        SqlValue::Integer(now),
        SqlValue::Integer(s.max_retries().into()),
        SqlValue::Integer(run_at_ms(s.run_at(), now)),
        s.idempotency_key()
            .map_or(SqlValue::Null, |k| SqlValue::Text(k.to_string())),
        s.timeout()
            .map_or(SqlValue::Null, |t| SqlValue::Integer(ms(t))),
        SqlValue::Text(s.payload().step_type.clone()),
    ]);
}

/// Splits `n` rows into chunks of at most [`MAX_CHUNK`], each a power of two, so
/// multi-row statements come in a handful of shapes the statement cache keeps.
fn pow2_chunks(n: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let left = n - start;
        let len = if left >= MAX_CHUNK {
            MAX_CHUNK
        } else {
            1 << (usize::BITS - 1 - left.leading_zeros())
        };
        out.push((start, len));
        start += len;
    }
    out
}

/// Largest multi-row statement (rows); × 10 parameters stays far below SQLite's
/// 32,766-parameter limit.
const MAX_CHUNK: usize = 128;

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and starts its writer.
    /// Call [`Store::schema_init`] before use.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::fatal("open", format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let mut conn = Connection::open(&path).map_err(|e| map_err("open", e))?;
        // Multi-row statements come in up to eight shapes per operation.
        conn.set_prepared_statement_cache_capacity(64);
        conn.busy_timeout(options.busy_timeout)
            .map_err(|e| map_err("open", e))?;
        // journal_mode needs the write lock briefly; the busy timeout covers races
        // between processes opening the same new file.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| map_err("open", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::fatal(
                "open",
                format!(
                    "{} does not support WAL (journal mode {mode})",
                    path.display()
                ),
            ));
        }
        // temp_store: RETURNING and multi-row VALUES materialise small ephemeral
        // tables; keep them in memory. cache_size: 16 MiB of pages for the writer.
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF; \
             PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16384;",
        )
        .map_err(|e| map_err("open", e))?;
        let statements = Arc::new(AtomicU64::new(0));
        let identity = Arc::new(identity::FileIdentity::of(&path));
        // Checkpoints run on their own thread (see [`checkpoint`]); if that
        // cannot start, the writer keeps SQLite's automatic checkpoints.
        let commits = Arc::new(AtomicU64::new(0));
        let checkpointer = Connection::open(&path)
            .and_then(|c| c.busy_timeout(options.busy_timeout).map(|()| c))
            .ok()
            .and_then(|c| checkpoint::Checkpointer::start(c, commits.clone()).ok());
        if checkpointer.is_some() {
            conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
                .map_err(|e| map_err("open", e))?;
        }
        count_statements(&mut conn, statements.clone());
        let writer = Writer::start(conn, commits, options.queue.max(1), identity);
        Ok(SqliteStore {
            _checkpointer: checkpointer,
            readers: Arc::new(ReaderPool {
                path: path.clone(),
                busy_timeout: options.busy_timeout,
                max_idle: options.readers.max(1),
                idle: Mutex::new(Vec::new()),
                statements: statements.clone(),
            }),
            path,
            writer,
            statements,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn read<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, i64) -> rusqlite::Result<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let r = f(&conn, clock_ms()).map_err(|e| map_err(op, e));
            pool.give_back(conn);
            r
        })
        .await
        .map_err(|e| StoreError::fatal(op, format!("read task failed: {e}")))?
    }
}

/// Rows one prune slice deletes: ~0.15 ms of writer time here (BENCHMARKS.md,
/// History), the most a write waits behind pruning.
const PRUNE_SLICE: u64 = 64;

/// One prune slice: deletes up to `want` expired rows in step id order, after
/// the id `after`. Returns the rows deleted and the last id deleted (where the
/// next slice resumes).
fn prune_slice(
    c: &Connection,
    now: i64,
    totals: &mut Totals,
    retention: Duration,
    want: u64,
    after: Vec<u8>,
) -> Result<(u64, Vec<u8>), StoreError> {
    let op = "steps_prune";
    let cutoff = now.saturating_sub(ms(retention));
    // Ids are UUIDv7, minted before their row is written, so a step last
    // updated before `cutoff` has an id below the floor of `cutoff`: the
    // primary key bounds the scan to old rows, with no extra index on the
    // hot path. Every process on the file mints ids and reads store time
    // from the same machine clock; the minute of slack covers a clock
    // stepped back. It is kept small because every chunk that finds
    // nothing more to delete scans the rows between the oldest live one
    // and the floor: with an hour of slack, a caught-up pruner read an
    // hour of finished rows each time, holding the writer for 100 ms
    // and more at a few hundred steps/s. Resuming after the last deleted id
    // steps over live rows below the floor once per chunk, not per slice.
    let floor = id_floor(cutoff.saturating_add(60_000));
    let mut st = c
        .prepare_cached(
            "DELETE FROM STEP_TRACKER WHERE rowid IN (SELECT rowid FROM STEP_TRACKER \
             WHERE step_id < ?1 AND step_id > ?4 \
             AND status IN ('completed', 'failed', 'cancelled') \
             AND last_update_ts < ?2 ORDER BY step_id LIMIT ?3) \
             RETURNING step_type, status, step_id",
        )
        .map_err(|e| map_err(op, e))?;
    let mut rows = st
        .query(params![
            floor,
            cutoff,
            want as i64,
            SqlValue::Blob(after.clone())
        ])
        .map_err(|e| map_err(op, e))?;
    let (mut n, mut last) = (0u64, after);
    // Rows come back in deletion order, mostly runs of one type.
    let mut run: Option<(String, String, i64)> = None;
    let mut flush = |run: Option<(String, String, i64)>| -> Result<(), StoreError> {
        if let Some((t, status, k)) = run {
            let status: StepStatus = status
                .parse()
                .map_err(|e| StoreError::fatal(op, format!("stored status: {e}")))?;
            totals.rows(&t, status, -k);
        }
        Ok(())
    };
    while let Some(r) = rows.next().map_err(|e| map_err(op, e))? {
        let t: String = r.get(0).map_err(|e| map_err(op, e))?;
        let status: String = r.get(1).map_err(|e| map_err(op, e))?;
        let id: Vec<u8> = r.get(2).map_err(|e| map_err(op, e))?;
        n += 1;
        if id > last {
            last = id;
        }
        match &mut run {
            Some((rt, rs, k)) if *rt == t && *rs == status => *k += 1,
            _ => flush(run.replace((t, status, 1)))?,
        }
    }
    flush(run)?;
    Ok((n, last))
}

/// Counts every statement `conn` runs into `statements`, from SQLite's own
/// profile hook (one event per statement run to completion), so no call site
/// counts by hand and none can be missed. Installed after a connection's setup
/// pragmas, which are not counted.
fn count_statements(conn: &mut Connection, statements: Arc<AtomicU64>) {
    conn.trace_v2(
        rusqlite::trace::TraceEventCodes::SQLITE_TRACE_PROFILE,
        Some(move |_: rusqlite::trace::TraceEvent<'_>| {
            statements.fetch_add(1, Ordering::Relaxed);
        }),
    )
    .ok();
}

/// Runs one fenced UPDATE per lease. `variants` are tried in order, each a
/// statement and the status a matching row ends in; the first that changes the row
/// wins, and a lease no variant matches is rejected. Plain `execute` with the change
/// count: RETURNING would build an ephemeral table per row.
fn fenced_update(
    conn: &Connection,
    op: &'static str,
    variants: &[(&str, StepStatus)],
    leases: impl Iterator<Item = (Lease, Vec<SqlValue>, usize)>,
) -> Result<FencedReport, StoreError> {
    let mut prepared = Vec::with_capacity(variants.len());
    for (sql, status) in variants {
        prepared.push((
            conn.prepare_cached(sql).map_err(|e| map_err(op, e))?,
            *status,
        ));
    }
    let mut report = FencedReport::default();
    for (lease, mut values, first_variant) in leases {
        values.push(id_val(lease.step_id));
        values.push(SqlValue::Text(lease.pod_id.clone()));
        values.push(SqlValue::Integer(lease.attempt.into()));
        let mut applied = None;
        for (st, status) in prepared.iter_mut().skip(first_variant) {
            let n = st
                .execute(rusqlite::params_from_iter(values.iter()))
                .map_err(|e| map_err(op, e))?;
            if n == 1 {
                applied = Some(*status);
                break;
            }
        }
        match applied {
            Some(status) => report.applied.push((lease.step_id, status)),
            None => report.rejected.push(lease),
        }
    }
    Ok(report)
}

/// The partial-index condition of `step_tracker_live`, repeated verbatim in the
/// queries that use it: SQLite uses a partial index only when the query's WHERE
/// contains the index's terms, and cannot infer `IN (…)` from `= 'pending'`.
const LIVE: &str = "status IN ('pending', 'claimed')";

/// The fence every transition out of `claimed` carries; the three last
/// parameters are the lease.
const FENCE: &str = "step_id = ? AND claimed_by = ? AND attempt = ? AND status = 'claimed'";

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn schema_init(&self) -> Result<(), StoreError> {
        self.writer
            .write("schema_init", |c, _| {
                // A file made before STEP_TOTALS existed gets it filled once, in
                // this transaction, from the steps it holds.
                let had_totals: bool = c
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' \
                         AND name = 'STEP_TOTALS')",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(|e| map_err("schema_init", e))?;
                c.execute_batch(SCHEMA)
                    .map_err(|e| map_err("schema_init", e))?;
                if !had_totals {
                    c.execute_batch(totals::BACKFILL)
                        .map_err(|e| map_err("schema_init", e))?;
                }
                c.execute_batch(totals::ENSURE_ALL)
                    .map_err(|e| map_err("schema_init", e))?;
                let have: Vec<String> = c
                    .prepare("SELECT name FROM pragma_table_info('POD_HEALTH')")
                    .and_then(|mut st| {
                        st.query_map([], |r| r.get(0))?
                            .collect::<rusqlite::Result<_>>()
                    })
                    .map_err(|e| map_err("schema_init", e))?;
                for (col, ty) in POD_HEALTH_ADDED {
                    if !have.iter().any(|h| h.eq_ignore_ascii_case(col)) {
                        c.execute_batch(&format!("ALTER TABLE POD_HEALTH ADD COLUMN {col} {ty}"))
                            .map_err(|e| map_err("schema_init", e))?;
                    }
                }
                Ok(())
            })
            .await
    }

    async fn now(&self) -> Result<DateTime<Utc>, StoreError> {
        Ok(ts(clock_ms()))
    }

    async fn steps_insert(&self, steps: Vec<NewStep>) -> Result<Vec<Inserted>, StoreError> {
        if steps.is_empty() {
            return Ok(Vec::new());
        }
        self.writer
            .write_counted("steps_insert", move |c, now, totals| {
                let op = "steps_insert";
                let mut out: Vec<Option<Inserted>> = vec![None; steps.len()];
                // Steps without a key go in multi-row statements; keyed steps one at a
                // time, since each needs its own dedupe answer.
                let (keyed, plain): (Vec<usize>, Vec<usize>) =
                    (0..steps.len()).partition(|i| steps[*i].idempotency_key().is_some());
                for (start, len) in pow2_chunks(plain.len()) {
                    let rows = &plain[start..start + len];
                    let sql = format!(
                        "INSERT INTO STEP_TRACKER ({INSERT_COLS}) VALUES {}",
                        vec![INSERT_ROW; len].join(", ")
                    );
                    let mut st = c.prepare_cached(&sql).map_err(|e| map_err(op, e))?;
                    let mut values = Vec::with_capacity(len * INSERT_PARAMS);
                    for &i in rows {
                        push_insert_values(&mut values, &steps[i], now);
                    }
                    st.execute(rusqlite::params_from_iter(values))
                        .map_err(|e| map_err(op, e))?;
                    for &i in rows {
                        totals.rows(&steps[i].payload().step_type, StepStatus::Pending, 1);
                        out[i] = Some(Inserted {
                            step_id: steps[i].step_id(),
                            created: true,
                        });
                    }
                }
                for i in keyed {
                    let s = &steps[i];
                    let mut values = Vec::with_capacity(INSERT_PARAMS);
                    push_insert_values(&mut values, s, now);
                    let n = c
                        .prepare_cached(&format!(
                            "INSERT INTO STEP_TRACKER ({INSERT_COLS}) VALUES {INSERT_ROW} \
                             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL \
                             DO NOTHING"
                        ))
                        .and_then(|mut st| st.execute(rusqlite::params_from_iter(values)))
                        .map_err(|e| map_err(op, e))?;
                    let step_id = if n == 1 {
                        totals.rows(&s.payload().step_type, StepStatus::Pending, 1);
                        s.step_id()
                    } else {
                        let existing = c
                            .prepare_cached(
                                "SELECT step_id FROM STEP_TRACKER WHERE idempotency_key = ?1",
                            )
                            .and_then(|mut q| q.query_row([s.idempotency_key()], |r| id_at(r, 0)))
                            .map_err(|e| map_err(op, e))?;
                        existing
                    };
                    out[i] = Some(Inserted {
                        step_id,
                        created: n == 1,
                    });
                }
                Ok(out
                    .into_iter()
                    .map(|o| o.expect("every step answered"))
                    .collect())
            })
            .await
    }

    async fn steps_claim(&self, p: ClaimParams) -> Result<Vec<Step>, StoreError> {
        if p.limit == 0 {
            return Ok(Vec::new());
        }
        self.writer
            .write("steps_claim", move |c, now| {
                let sql = format!(
                    "UPDATE STEP_TRACKER SET status = 'claimed', claimed_by = ?1, \
                     attempt = attempt + 1, last_update_ts = ?2 \
                     WHERE rowid IN (SELECT rowid FROM STEP_TRACKER \
                       WHERE status = 'pending' AND {LIVE} AND run_at <= ?2 \
                       ORDER BY priority DESC, created_ts, step_id LIMIT ?3) \
                     RETURNING {STEP_COLS}"
                );
                let mut st = c
                    .prepare_cached(&sql)
                    .map_err(|e| map_err("steps_claim", e))?;
                let mut steps = st
                    .query_map(params![p.pod_id, now, p.limit], step_from_row)
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                    .map_err(|e| map_err("steps_claim", e))?;
                // RETURNING order is unspecified: hand steps back in claim order.
                steps.sort_by(|a, b| {
                    (b.priority, a.created_ts, a.step_id).cmp(&(
                        a.priority,
                        b.created_ts,
                        b.step_id,
                    ))
                });
                Ok(steps)
            })
            .await
    }

    async fn steps_finish(&self, p: FinishParams) -> Result<FencedReport, StoreError> {
        if p.finishes.is_empty() {
            return Ok(FencedReport::default());
        }
        let jitter: Vec<f64> = p.finishes.iter().map(|_| rand::random::<f64>()).collect();
        self.writer
            .write_counted("steps_finish", move |c, now, totals| {
                let op = "steps_finish";
                let b = p.backoff;
                let mut report = FencedReport::default();
                let (mut completes, mut fails) = (Vec::new(), Vec::new());
                for (f, u) in p.finishes.into_iter().zip(jitter) {
                    match f.outcome {
                        Outcome::Complete { result } => {
                            completes.push((f.lease, result.to_string()))
                        }
                        Outcome::Fail { error, retryable } => {
                            let cut = (b.jitter.clamp(0.0, 1.0) * u).clamp(0.0, 1.0);
                            fails.push((
                                f.lease,
                                vec![
                                    SqlValue::Integer(now),
                                    SqlValue::Text(error),
                                    SqlValue::Integer(ms(b.base)),
                                    SqlValue::Integer(ms(b.max)),
                                    SqlValue::Real(cut),
                                ],
                                // Terminal errors skip the retry variant.
                                usize::from(!retryable),
                            ))
                        }
                    }
                }
                for (start, len) in pow2_chunks(completes.len()) {
                    let chunk = &completes[start..start + len];
                    let r = complete_chunk(c, now, chunk)?;
                    report.applied.extend(r.applied);
                    report.rejected.extend(r.rejected);
                }
                if !fails.is_empty() {
                    // Retry while retries remain: back to pending with
                    // run_at = now + min(max, base * 2^retry_count), less the jitter cut.
                    let retry = "UPDATE STEP_TRACKER SET status = 'pending', claimed_by = NULL, \
                         run_at = ?1 + CAST(MIN(?4, ?3 * (1 << MIN(retry_count, 30))) * (1.0 - ?5) AS INTEGER), \
                         retry_count = retry_count + 1, last_update_ts = ?1, last_error = ?2 \
                         WHERE step_id = ?6 AND claimed_by = ?7 AND attempt = ?8 \
                         AND status = 'claimed' AND retry_count < max_retries";
                    // Same parameters; ?3..?5 (backoff) are unused here, which SQLite
                    // allows since it counts parameters by the highest index.
                    let terminal = "UPDATE STEP_TRACKER SET status = 'failed', last_update_ts = ?1, \
                         last_error = ?2 WHERE step_id = ?6 AND claimed_by = ?7 AND attempt = ?8 \
                         AND status = 'claimed'";
                    let r = fenced_update(
                        c,
                        op,
                        &[(retry, StepStatus::Pending), (terminal, StepStatus::Failed)],
                        fails.into_iter(),
                    )?;
                    // Terminal failures are the rare path: their types are read
                    // back one by one.
                    for (id, status) in &r.applied {
                        if *status == StepStatus::Failed {
                            let t = step_type_of(c, op, id_val(*id))?;
                            totals.moved(&t, StepStatus::Claimed, StepStatus::Failed, 1);
                        }
                    }
                    report.applied.extend(r.applied);
                    report.rejected.extend(r.rejected);
                }
                Ok(report)
            })
            .await
    }

    async fn steps_release(&self, leases: Vec<Lease>) -> Result<FencedReport, StoreError> {
        if leases.is_empty() {
            return Ok(FencedReport::default());
        }
        self.writer
            .write("steps_release", move |c, now| {
                let sql = format!(
                    "UPDATE STEP_TRACKER SET status = 'pending', claimed_by = NULL, \
                     run_at = ?, last_update_ts = ? WHERE {FENCE}"
                );
                fenced_update(
                    c,
                    "steps_release",
                    &[(&sql, StepStatus::Pending)],
                    leases
                        .into_iter()
                        .map(|l| (l, vec![SqlValue::Integer(now), SqlValue::Integer(now)], 0)),
                )
            })
            .await
    }

    async fn step_cancel(&self, step_id: StepId) -> Result<CancelOutcome, StoreError> {
        self.writer
            .write_counted("step_cancel", move |c, now, totals| {
                let op = "step_cancel";
                let id = id_val(step_id);
                let t: Option<String> = c
                    .prepare_cached(
                        "UPDATE STEP_TRACKER SET status = 'cancelled', last_update_ts = ?1 \
                         WHERE step_id = ?2 AND status = 'pending' RETURNING step_type",
                    )
                    .and_then(|mut st| st.query_row(params![now, id], |r| r.get(0)).optional())
                    .map_err(|e| map_err(op, e))?;
                if let Some(t) = t {
                    totals.moved(&t, StepStatus::Pending, StepStatus::Cancelled, 1);
                    return Ok(CancelOutcome::Cancelled);
                }
                let status = current_status(c, op, &id)?;
                Ok(status.map_or(CancelOutcome::NotFound, CancelOutcome::NotPending))
            })
            .await
    }

    async fn step_get(&self, step_id: StepId) -> Result<Option<Step>, StoreError> {
        self.read("step_get", move |c, _| {
            c.prepare_cached(&format!(
                "SELECT {STEP_COLS} FROM STEP_TRACKER WHERE step_id = ?1"
            ))?
            .query_row([id_val(step_id)], step_from_row)
            .optional()
        })
        .await
    }

    async fn step_retry(&self, step_id: StepId) -> Result<RetryOutcome, StoreError> {
        self.writer
            .write_counted("step_retry", move |c, now, totals| {
                let op = "step_retry";
                let id = id_val(step_id);
                let t: Option<String> = c
                    .prepare_cached(
                        "UPDATE STEP_TRACKER SET status = 'pending', retry_count = 0, \
                         claimed_by = NULL, run_at = ?1, last_update_ts = ?1 \
                         WHERE step_id = ?2 AND status = 'failed' RETURNING step_type",
                    )
                    .and_then(|mut st| st.query_row(params![now, id], |r| r.get(0)).optional())
                    .map_err(|e| map_err(op, e))?;
                if let Some(t) = t {
                    totals.moved(&t, StepStatus::Failed, StepStatus::Pending, 1);
                    return Ok(RetryOutcome::Requeued);
                }
                let status = current_status(c, op, &id)?;
                Ok(status.map_or(RetryOutcome::NotFound, RetryOutcome::NotFailed))
            })
            .await
    }

    async fn steps_failed_list(&self, p: PageParams) -> Result<Vec<Step>, StoreError> {
        self.read("steps_failed_list", move |c, _| {
            // An empty blob sorts before every id.
            let after = p.after.map_or(SqlValue::Blob(Vec::new()), id_val);
            let mut st = c.prepare_cached(&format!(
                "SELECT {STEP_COLS} FROM STEP_TRACKER WHERE status = 'failed' AND step_id > ?1 \
                 ORDER BY step_id LIMIT ?2"
            ))?;
            let rows = st.query_map(params![after, p.limit], step_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn steps_prune(&self, p: PruneParams) -> Result<u64, StoreError> {
        // A chunk of `p.limit` rows is deleted in slices of at most PRUNE_SLICE
        // rows, each a background job of the writer: it runs alone, only when
        // no submit, claim or other write is queued, so one of those waits for
        // at most one slice (~0.1 ms), never for a chunk. Each slice resumes
        // after the last id the previous one deleted.
        let mut total = 0u64;
        let mut after: Vec<u8> = Vec::new(); // below every id
        loop {
            let want = (u64::from(p.limit) - total).min(PRUNE_SLICE);
            if want == 0 {
                return Ok(total);
            }
            let from = std::mem::take(&mut after);
            let (n, last) = self
                .writer
                .write_background("steps_prune", move |c, now, totals| {
                    prune_slice(c, now, totals, p.retention, want, from)
                })
                .await?;
            total += n;
            if n < want {
                return Ok(total); // nothing more has expired
            }
            after = last;
        }
    }

    async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        self.read("queue_stats", move |c, now| {
            let mut stats = QueueStats {
                as_of: Some(ts(now)),
                ..Default::default()
            };
            // Live rows through the live index (it holds nothing else); one read
            // transaction with the totals below, so the two agree.
            c.execute_batch("BEGIN")?;
            let out = (|| {
                let mut st = c.prepare_cached(&format!(
                    "SELECT status, step_type, priority, COUNT(*), \
                     MIN(CASE WHEN status = 'pending' AND run_at <= ?1 THEN run_at END) \
                     FROM STEP_TRACKER INDEXED BY step_tracker_live WHERE {LIVE} \
                     GROUP BY status, step_type, priority"
                ))?;
                let mut rows = st.query([now])?;
                let mut oldest: Option<i64> = None;
                let mut by_prio: BTreeMap<i32, u64> = BTreeMap::new();
                while let Some(r) = rows.next()? {
                    let status: String = r.get(0)?;
                    let status: StepStatus = status.parse().map_err(|e| bad_row("status", e))?;
                    let t: String = r.get(1)?;
                    let prio: i32 = r.get(2)?;
                    let n: i64 = r.get(3)?;
                    let n = n.max(0) as u64;
                    stats.counts.add(status, n);
                    stats.by_type.entry(t).or_default().add(status, n);
                    if status == StepStatus::Pending {
                        *by_prio.entry(prio).or_default() += n;
                    }
                    if let Some(due) = r.get::<_, Option<i64>>(4)? {
                        oldest = Some(oldest.map_or(due, |o| o.min(due)));
                    }
                }
                stats.pending_by_priority = by_prio;
                stats.oldest_pending_age =
                    oldest.map(|o| Duration::from_millis(now.saturating_sub(o).max(0) as u64));
                // Finished rows from STEP_TOTALS: completed is what is neither live
                // nor failed nor cancelled. Fleet-wide from the row of every type;
                // by type for the largest types only, the rest summed.
                let all: [i64; 3] = c
                    .prepare_cached(
                        "SELECT row_count, failed, cancelled FROM STEP_TOTALS WHERE step_type = ?1",
                    )?
                    .query_row([totals::ALL], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?]))
                    .optional()?
                    .unwrap_or_default();
                let live_total = (stats.counts.pending + stats.counts.claimed) as i64;
                let fleet = [
                    (StepStatus::Failed, all[1]),
                    (StepStatus::Cancelled, all[2]),
                    (StepStatus::Completed, all[0] - live_total - all[1] - all[2]),
                ];
                for (status, n) in fleet {
                    stats.counts.add(status, n.max(0) as u64);
                }
                let mut st = c.prepare_cached(
                    "SELECT step_type, row_count, failed, cancelled FROM STEP_TOTALS \
                     INDEXED BY step_totals_by_size WHERE step_type <> ?1 \
                     ORDER BY row_count DESC LIMIT ?2",
                )?;
                let mut rows = st.query(params![totals::ALL, STATS_TYPES as i64])?;
                let mut listed_sum = [0i64; 3];
                let mut listed = HashSet::new();
                while let Some(r) = rows.next()? {
                    let t: String = r.get(0)?;
                    let d: [i64; 3] = [r.get(1)?, r.get(2)?, r.get(3)?];
                    for i in 0..3 {
                        listed_sum[i] += d[i];
                    }
                    let by = stats.by_type.entry(t.clone()).or_default();
                    add_finished(by, d);
                    listed.insert(t);
                }
                // Types beyond the largest: their finished rows, summed.
                let rest: [i64; 3] = std::array::from_fn(|i| all[i] - listed_sum[i]);
                if rest.iter().any(|n| *n > 0) {
                    // `rest` counts the live rows of those types too; their live
                    // counts stay under their own names.
                    let live_unlisted: i64 = stats
                        .by_type
                        .iter()
                        .filter(|(t, _)| !listed.contains(*t))
                        .map(|(_, by)| (by.pending + by.claimed) as i64)
                        .sum();
                    let other = stats.by_type.entry(OTHER_TYPES.to_string()).or_default();
                    other.failed += rest[1].max(0) as u64;
                    other.cancelled += rest[2].max(0) as u64;
                    other.completed += (rest[0] - live_unlisted - rest[1] - rest[2]).max(0) as u64;
                }
                stats.fold_types();
                Ok(())
            })();
            // A connection must go back to the pool outside any transaction, or
            // its next reader would see this snapshot.
            if c.execute_batch("COMMIT").is_err() {
                c.execute_batch("ROLLBACK")?;
            }
            out.map(|()| stats)
        })
        .await
    }

    async fn pod_heartbeat(&self, p: HeartbeatParams) -> Result<PodRecord, StoreError> {
        self.writer
            .write("pod_heartbeat", move |c, now| {
                let op = "pod_heartbeat";
                let meta = p.meta.to_string();
                let n = c
                    .prepare_cached(
                        "INSERT INTO POD_HEALTH (pod_id, birth_ts, last_heartbeat_ts, status, \
                         capacity_in_use, max_capacity, meta, incarnation, heartbeat_interval_ms, \
                         dead_after_ms) VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                         ON CONFLICT (pod_id) DO UPDATE SET \
                           birth_ts = CASE WHEN POD_HEALTH.incarnation IS excluded.incarnation \
                             THEN POD_HEALTH.birth_ts ELSE excluded.birth_ts END, \
                           last_heartbeat_ts = excluded.last_heartbeat_ts, status = excluded.status, \
                           capacity_in_use = excluded.capacity_in_use, \
                           max_capacity = excluded.max_capacity, meta = excluded.meta, \
                           incarnation = excluded.incarnation, \
                           heartbeat_interval_ms = excluded.heartbeat_interval_ms, \
                           dead_after_ms = excluded.dead_after_ms \
                         WHERE POD_HEALTH.status = 'up'",
                    )
                    .and_then(|mut st| {
                        st.execute(params![
                            p.pod_id,
                            now,
                            p.status.as_str(),
                            p.capacity_in_use,
                            p.max_capacity,
                            meta,
                            p.incarnation,
                            p.heartbeat_interval.map(ms),
                            p.dead_after.map(ms),
                        ])
                    })
                    .map_err(|e| map_err(op, e))?;
                let _ = n;
                c.prepare_cached(&format!("SELECT {POD_COLS} FROM POD_HEALTH WHERE pod_id = ?1"))
                    .and_then(|mut st| st.query_row([&p.pod_id], |r| pod_from_row(r, now)))
                    .map_err(|e| map_err(op, e))
            })
            .await
    }

    async fn pods_list(&self) -> Result<Vec<PodRecord>, StoreError> {
        self.read("pods_list", |c, now| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {POD_COLS} FROM POD_HEALTH ORDER BY birth_ts, pod_id"
            ))?;
            let rows = st.query_map([], |r| pod_from_row(r, now))?;
            rows.collect()
        })
        .await
    }

    async fn pods_mark_down(&self, p: MarkDownParams) -> Result<Vec<String>, StoreError> {
        self.writer
            .write("pods_mark_down", move |c, now| {
                let mut st = c
                    .prepare_cached(
                        "UPDATE POD_HEALTH SET status = 'down', capacity_in_use = 0 \
                         WHERE pod_id = ?1 AND status = 'up' \
                           AND last_heartbeat_ts <= ?2 - COALESCE(dead_after_ms, ?3)",
                    )
                    .map_err(|e| map_err("pods_mark_down", e))?;
                let default = ms(p.dead_threshold);
                let mut marked = Vec::new();
                for id in p.pod_ids {
                    let n = st
                        .execute(params![id, now, default])
                        .map_err(|e| map_err("pods_mark_down", e))?;
                    if n == 1 {
                        marked.push(id);
                    }
                }
                Ok(marked)
            })
            .await
    }

    async fn steps_orphaned(&self, p: OrphanParams) -> Result<Vec<Step>, StoreError> {
        self.read("steps_orphaned", move |c, _now| {
            // A claim is held while its holder's row is up and is the incarnation
            // that made the claim (born no later than it). Heartbeat age is judged
            // only by pods_mark_down (see the trait's docs).
            let mut st = c.prepare_cached(&format!(
                "SELECT {STEP_COLS} FROM STEP_TRACKER s WHERE s.status = 'claimed' AND s.{LIVE} AND NOT EXISTS \
                 (SELECT 1 FROM POD_HEALTH p WHERE p.pod_id = s.claimed_by AND p.status = 'up' \
                  AND p.birth_ts <= s.last_update_ts \
                  AND p.pod_id NOT IN (SELECT value FROM json_each(?2))) ORDER BY s.step_id LIMIT ?1"
            ))?;
            let presumed = serde_json::to_string(&p.presumed_down).unwrap_or_else(|_| "[]".into());
            let rows = st.query_map(params![p.limit, presumed], step_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn steps_held(
        &self,
        pod_id: &str,
        limit: u32,
    ) -> Result<(Vec<HeldStep>, DateTime<Utc>), StoreError> {
        let pod_id = pod_id.to_string();
        self.read("steps_held", move |c, now| {
            let mut st = c.prepare_cached(&format!(
                "SELECT step_id, claimed_by, attempt, last_update_ts FROM STEP_TRACKER \
                 WHERE status = 'claimed' AND {LIVE} AND claimed_by = ?1 ORDER BY last_update_ts LIMIT ?2"
            ))?;
            let rows = st.query_map(params![pod_id, limit], |r| {
                Ok(HeldStep {
                    lease: Lease {
                        step_id: id_at(r, 0)?,
                        pod_id: r.get(1)?,
                        attempt: r.get(2)?,
                    },
                    claimed_at: ts(r.get(3)?),
                })
            })?;
            Ok((rows.collect::<rusqlite::Result<Vec<_>>>()?, ts(now)))
        })
        .await
    }

    fn statement_count(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }
}

/// Completes a chunk of leases in one fenced statement; the rows it returns are
/// the leases that held, the rest were fenced out. The unary `+` on `status` keeps
/// the planner on the primary key: otherwise it may drive the join from
/// `step_tracker_live (status = 'claimed')` and compare every claimed row with every
/// VALUES row (measured: 20× slower).
fn complete_chunk(
    c: &Connection,
    now: i64,
    chunk: &[(Lease, String)],
) -> Result<FencedReport, StoreError> {
    let op = "steps_finish";
    let sql = format!(
        "UPDATE STEP_TRACKER SET status = 'completed', last_update_ts = ?1, result = v.column4, last_error = NULL \
         FROM (VALUES {}) AS v \
         WHERE STEP_TRACKER.step_id = v.column1 AND STEP_TRACKER.claimed_by = v.column2 \
         AND STEP_TRACKER.attempt = v.column3 AND +STEP_TRACKER.status = 'claimed' \
         RETURNING STEP_TRACKER.step_id",
        vec!["(?, ?, ?, ?)"; chunk.len()].join(", ")
    );
    let mut values = Vec::with_capacity(1 + chunk.len() * 4);
    values.push(SqlValue::Integer(now));
    for (lease, result) in chunk {
        values.extend([
            id_val(lease.step_id),
            SqlValue::Text(lease.pod_id.clone()),
            SqlValue::Integer(lease.attempt.into()),
            SqlValue::Text(result.clone()),
        ]);
    }
    let mut st = c.prepare_cached(&sql).map_err(|e| map_err(op, e))?;
    let done: HashSet<StepId> = st
        .query_map(rusqlite::params_from_iter(values), |r| id_at(r, 0))
        .and_then(|rows| rows.collect())
        .map_err(|e| map_err(op, e))?;
    let mut report = FencedReport::default();
    for (lease, _) in chunk {
        if done.contains(&lease.step_id) {
            report.applied.push((lease.step_id, StepStatus::Completed));
        } else {
            report.rejected.push(lease.clone());
        }
    }
    Ok(report)
}

/// Adds a type's finished counts from its STEP_TOTALS row `[rows, failed,
/// cancelled]` to `by`, which already holds its live counts.
fn add_finished(by: &mut StatusCounts, d: [i64; 3]) {
    let live = (by.pending + by.claimed) as i64;
    by.failed += d[1].max(0) as u64;
    by.cancelled += d[2].max(0) as u64;
    by.completed += (d[0] - live - d[1] - d[2]).max(0) as u64;
}

/// The type of the step `id` (which exists: the caller just changed it).
fn step_type_of(c: &Connection, op: &'static str, id: SqlValue) -> Result<String, StoreError> {
    c.prepare_cached("SELECT step_type FROM STEP_TRACKER WHERE step_id = ?1")
        .and_then(|mut st| st.query_row([id], |r| r.get(0)))
        .map_err(|e| map_err(op, e))
}

fn current_status(
    c: &Connection,
    op: &'static str,
    id: &SqlValue,
) -> Result<Option<StepStatus>, StoreError> {
    let s: Option<String> = c
        .prepare_cached("SELECT status FROM STEP_TRACKER WHERE step_id = ?1")
        .and_then(|mut st| st.query_row([id], |r| r.get(0)).optional())
        .map_err(|e| map_err(op, e))?;
    s.map(|s| {
        s.parse()
            .map_err(|e| StoreError::fatal(op, format!("stored status: {e}")))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::{id_floor, id_val, pow2_chunks};
    use fleet_q_actors::StepId;
    use rusqlite::types::Value;

    #[test]
    fn id_floor_orders_below_ids_minted_at_or_after_it() {
        let id = StepId::generate();
        let ms = id.as_uuid().get_timestamp().unwrap().to_unix();
        let ms = (ms.0 * 1000 + u64::from(ms.1) / 1_000_000) as i64;
        let (Value::Blob(floor), Value::Blob(idb)) = (id_floor(ms), id_val(id)) else {
            unreachable!()
        };
        assert!(floor <= idb);
        let Value::Blob(later) = id_floor(ms + 1) else {
            unreachable!()
        };
        assert!(idb < later);
    }

    #[test]
    fn chunks_are_powers_of_two_covering_every_row() {
        assert!(pow2_chunks(0).is_empty());
        assert_eq!(pow2_chunks(1), vec![(0, 1)]);
        assert_eq!(pow2_chunks(100), vec![(0, 64), (64, 32), (96, 4)]);
        assert_eq!(
            pow2_chunks(300),
            vec![(0, 128), (128, 128), (256, 32), (288, 8), (296, 4)]
        );
        for n in 0..600 {
            let c = pow2_chunks(n);
            assert_eq!(c.iter().map(|(_, l)| l).sum::<usize>(), n);
            assert!(c.iter().all(|(_, l)| l.is_power_of_two() && *l <= 128));
        }
    }
}
