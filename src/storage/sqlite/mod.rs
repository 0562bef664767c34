//! The embedded store: one SQLite file, shared by every pod on the machine.
//!
//! - WAL journal, so readers never block the writer and vice versa;
//!   `synchronous = NORMAL`, which in WAL mode survives a process crash (SIGKILL)
//!   without losing committed transactions; an OS crash or power cut may lose the
//!   last few commits.
//! - A busy timeout, so processes sharing the file wait for each other's write
//!   lock instead of failing; a wait longer than that is a transient error.
//! - All writes go through one group-commit writer thread ([`writer`]); reads use a
//!   small pool of connections on tokio's blocking pool. No SQLite call ever runs
//!   on an async or actor thread.
//! - Times are stored as INTEGER milliseconds since the Unix epoch (UTC), read from
//!   this machine's clock inside the write transaction: for a local file that is
//!   the store's clock, common to every process that shares it.

mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fleet_q_actors::*;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use writer::{clock_ms, Writer};

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
}

struct ReaderPool {
    path: PathBuf,
    busy_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(c) = self.idle.lock().expect("reader pool lock").pop() {
            return Ok(c);
        }
        let c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| map_err("open", e))?;
        c.busy_timeout(self.busy_timeout)
            .map_err(|e| map_err("open", e))?;
        c.execute_batch("PRAGMA query_only = ON")
            .map_err(|e| map_err("open", e))?;
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

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS STEP_TRACKER (
    step_id         TEXT    NOT NULL PRIMARY KEY,
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
CREATE INDEX IF NOT EXISTS step_tracker_claim_order
    ON STEP_TRACKER (priority DESC, created_ts, step_id) WHERE status = 'pending';
CREATE UNIQUE INDEX IF NOT EXISTS step_tracker_idempotency_key
    ON STEP_TRACKER (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS step_tracker_claimed_by
    ON STEP_TRACKER (claimed_by) WHERE status = 'claimed';
CREATE INDEX IF NOT EXISTS step_tracker_failed
    ON STEP_TRACKER (step_id) WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS step_tracker_finished
    ON STEP_TRACKER (last_update_ts) WHERE status IN ('completed', 'failed', 'cancelled');
CREATE TABLE IF NOT EXISTS POD_HEALTH (
    pod_id            TEXT    NOT NULL PRIMARY KEY,
    birth_ts          INTEGER NOT NULL,
    last_heartbeat_ts INTEGER NOT NULL,
    status            TEXT    NOT NULL,
    capacity_in_use   INTEGER NOT NULL DEFAULT 0,
    max_capacity      INTEGER NOT NULL DEFAULT 0,
    meta              TEXT    NOT NULL DEFAULT '{}'
);
";

const STEP_COLS: &str = "step_id, status, claimed_by, last_update_ts, payload, retry_count, \
     priority, created_ts, max_retries, attempt, run_at, idempotency_key, last_error, result, \
     timeout_ms";

const POD_COLS: &str =
    "pod_id, birth_ts, last_heartbeat_ts, status, capacity_in_use, max_capacity, meta";

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

fn step_from_row(r: &Row<'_>) -> rusqlite::Result<Step> {
    let id: String = r.get(0)?;
    let status: String = r.get(1)?;
    let payload: String = r.get(4)?;
    let result: Option<String> = r.get(13)?;
    Ok(Step {
        step_id: id.parse().map_err(|e| bad_row("step_id", e))?,
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
        let conn = Connection::open(&path).map_err(|e| map_err("open", e))?;
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
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF;")
            .map_err(|e| map_err("open", e))?;
        let statements = Arc::new(AtomicU64::new(0));
        let writer = Writer::start(conn, statements.clone(), options.queue.max(1));
        Ok(SqliteStore {
            readers: Arc::new(ReaderPool {
                path: path.clone(),
                busy_timeout: options.busy_timeout,
                max_idle: options.readers.max(1),
                idle: Mutex::new(Vec::new()),
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
        let stmts = self.statements.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let r = f(&conn, clock_ms()).map_err(|e| map_err(op, e));
            stmts.fetch_add(1, Ordering::Relaxed);
            pool.give_back(conn);
            r
        })
        .await
        .map_err(|e| StoreError::fatal(op, format!("read task failed: {e}")))?
    }
}

fn count(stmts: &AtomicU64, n: u64) {
    stmts.fetch_add(n, Ordering::Relaxed);
}

fn fenced_update(
    conn: &Connection,
    op: &'static str,
    sql: &str,
    leases: impl Iterator<Item = (Lease, Vec<SqlValue>)>,
    stmts: &AtomicU64,
) -> Result<FencedReport, StoreError> {
    let mut st = conn.prepare_cached(sql).map_err(|e| map_err(op, e))?;
    let mut report = FencedReport::default();
    for (lease, mut values) in leases {
        values.push(SqlValue::Text(lease.step_id.to_string()));
        values.push(SqlValue::Text(lease.pod_id.clone()));
        values.push(SqlValue::Integer(lease.attempt.into()));
        let status: Option<String> = st
            .query_row(rusqlite::params_from_iter(values), |r| r.get(0))
            .optional()
            .map_err(|e| map_err(op, e))?;
        count(stmts, 1);
        match status {
            Some(s) => report.applied.push((
                lease.step_id,
                s.parse()
                    .map_err(|e| StoreError::fatal(op, format!("stored status: {e}")))?,
            )),
            None => report.rejected.push(lease),
        }
    }
    Ok(report)
}

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
            .write("schema_init", |c, _, stmts| {
                c.execute_batch(SCHEMA)
                    .map_err(|e| map_err("schema_init", e))?;
                count(stmts, 1);
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
            .write("steps_insert", move |c, now, stmts| {
                let op = "steps_insert";
                let mut ins = c
                    .prepare_cached(
                        "INSERT INTO STEP_TRACKER (step_id, status, last_update_ts, payload, \
                         priority, created_ts, max_retries, run_at, idempotency_key, timeout_ms, \
                         step_type) VALUES (?1, 'pending', ?2, ?3, ?4, ?2, ?5, ?6, ?7, ?8, ?9) \
                         ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
                    )
                    .map_err(|e| map_err(op, e))?;
                let mut out = Vec::with_capacity(steps.len());
                for s in &steps {
                    let id = s.step_id().to_string();
                    let timeout = s.timeout().map(ms);
                    let n = ins
                        .execute(params![
                            id,
                            now,
                            s.payload_json(),
                            s.priority(),
                            s.max_retries(),
                            run_at_ms(s.run_at(), now),
                            s.idempotency_key(),
                            timeout,
                            s.payload().step_type,
                        ])
                        .map_err(|e| map_err(op, e))?;
                    count(stmts, 1);
                    if n == 1 {
                        out.push(Inserted {
                            step_id: s.step_id(),
                            created: true,
                        });
                        continue;
                    }
                    let existing: String = c
                        .prepare_cached(
                            "SELECT step_id FROM STEP_TRACKER WHERE idempotency_key = ?1",
                        )
                        .and_then(|mut q| q.query_row([s.idempotency_key()], |r| r.get(0)))
                        .map_err(|e| map_err(op, e))?;
                    count(stmts, 1);
                    out.push(Inserted {
                        step_id: existing
                            .parse()
                            .map_err(|e| StoreError::fatal(op, format!("stored step_id: {e}")))?,
                        created: false,
                    });
                }
                Ok(out)
            })
            .await
    }

    async fn steps_claim(&self, p: ClaimParams) -> Result<Vec<Step>, StoreError> {
        if p.limit == 0 {
            return Ok(Vec::new());
        }
        self.writer
            .write("steps_claim", move |c, now, stmts| {
                let sql = format!(
                    "UPDATE STEP_TRACKER SET status = 'claimed', claimed_by = ?1, \
                     attempt = attempt + 1, last_update_ts = ?2 \
                     WHERE step_id IN (SELECT step_id FROM STEP_TRACKER \
                       WHERE status = 'pending' AND run_at <= ?2 \
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
                count(stmts, 1);
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
            .write("steps_finish", move |c, now, stmts| {
                let op = "steps_finish";
                let b = p.backoff;
                let mut report = FencedReport::default();
                let (mut completes, mut fails) = (Vec::new(), Vec::new());
                for (f, u) in p.finishes.into_iter().zip(jitter) {
                    match f.outcome {
                        Outcome::Complete { result } => completes.push((
                            f.lease,
                            vec![
                                SqlValue::Integer(now),
                                SqlValue::Text(result.to_string()),
                            ],
                        )),
                        Outcome::Fail { error, retryable } => {
                            let cut = (b.jitter.clamp(0.0, 1.0) * u).clamp(0.0, 1.0);
                            fails.push((
                                f.lease,
                                vec![
                                    SqlValue::Integer(now),
                                    SqlValue::Text(error),
                                    SqlValue::Integer(retryable.into()),
                                    SqlValue::Integer(ms(b.base)),
                                    SqlValue::Integer(ms(b.max)),
                                    SqlValue::Real(cut),
                                ],
                            ))
                        }
                    }
                }
                if !completes.is_empty() {
                    let r = fenced_update(
                        c,
                        op,
                        &format!(
                            "UPDATE STEP_TRACKER SET status = 'completed', last_update_ts = ?, \
                             result = ? WHERE {FENCE} RETURNING status"
                        ),
                        completes.into_iter(),
                        stmts,
                    )?;
                    report.applied.extend(r.applied);
                    report.rejected.extend(r.rejected);
                }
                if !fails.is_empty() {
                    // ?3 retryable; retries left when retry_count < max_retries.
                    // Backoff: min(max, base * 2^retry_count), less the jitter cut.
                    let retry = "(?3 AND retry_count < max_retries)";
                    let sql = format!(
                        "UPDATE STEP_TRACKER SET \
                           status = CASE WHEN {retry} THEN 'pending' ELSE 'failed' END, \
                           run_at = CASE WHEN {retry} THEN ?1 + CAST(MIN(?5, ?4 * (1 << MIN(retry_count, 30))) * (1.0 - ?6) AS INTEGER) ELSE run_at END, \
                           claimed_by = CASE WHEN {retry} THEN NULL ELSE claimed_by END, \
                           retry_count = CASE WHEN {retry} THEN retry_count + 1 ELSE retry_count END, \
                           last_update_ts = ?1, last_error = ?2 \
                         WHERE step_id = ?7 AND claimed_by = ?8 AND attempt = ?9 AND status = 'claimed' \
                         RETURNING status"
                    );
                    let r = fenced_update(c, op, &sql, fails.into_iter(), stmts)?;
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
            .write("steps_release", move |c, now, stmts| {
                fenced_update(
                    c,
                    "steps_release",
                    &format!(
                        "UPDATE STEP_TRACKER SET status = 'pending', claimed_by = NULL, \
                         run_at = ?, last_update_ts = ? WHERE {FENCE} RETURNING status"
                    ),
                    leases
                        .into_iter()
                        .map(|l| (l, vec![SqlValue::Integer(now), SqlValue::Integer(now)])),
                    stmts,
                )
            })
            .await
    }

    async fn step_cancel(&self, step_id: StepId) -> Result<CancelOutcome, StoreError> {
        self.writer
            .write("step_cancel", move |c, now, stmts| {
                let op = "step_cancel";
                let id = step_id.to_string();
                let n = c
                    .prepare_cached(
                        "UPDATE STEP_TRACKER SET status = 'cancelled', last_update_ts = ?1 \
                         WHERE step_id = ?2 AND status = 'pending'",
                    )
                    .and_then(|mut st| st.execute(params![now, id]))
                    .map_err(|e| map_err(op, e))?;
                count(stmts, 1);
                if n == 1 {
                    return Ok(CancelOutcome::Cancelled);
                }
                let status = current_status(c, op, &id, stmts)?;
                Ok(status.map_or(CancelOutcome::NotFound, CancelOutcome::NotPending))
            })
            .await
    }

    async fn step_get(&self, step_id: StepId) -> Result<Option<Step>, StoreError> {
        self.read("step_get", move |c, _| {
            c.prepare_cached(&format!(
                "SELECT {STEP_COLS} FROM STEP_TRACKER WHERE step_id = ?1"
            ))?
            .query_row([step_id.to_string()], step_from_row)
            .optional()
        })
        .await
    }

    async fn step_retry(&self, step_id: StepId) -> Result<RetryOutcome, StoreError> {
        self.writer
            .write("step_retry", move |c, now, stmts| {
                let op = "step_retry";
                let id = step_id.to_string();
                let n = c
                    .prepare_cached(
                        "UPDATE STEP_TRACKER SET status = 'pending', retry_count = 0, \
                         claimed_by = NULL, run_at = ?1, last_update_ts = ?1 \
                         WHERE step_id = ?2 AND status = 'failed'",
                    )
                    .and_then(|mut st| st.execute(params![now, id]))
                    .map_err(|e| map_err(op, e))?;
                count(stmts, 1);
                if n == 1 {
                    return Ok(RetryOutcome::Requeued);
                }
                let status = current_status(c, op, &id, stmts)?;
                Ok(status.map_or(RetryOutcome::NotFound, RetryOutcome::NotFailed))
            })
            .await
    }

    async fn steps_failed_list(&self, p: PageParams) -> Result<Vec<Step>, StoreError> {
        self.read("steps_failed_list", move |c, _| {
            let after = p.after.map(|a| a.to_string()).unwrap_or_default();
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
        self.writer
            .write("steps_prune", move |c, now, stmts| {
                let n = c
                    .prepare_cached(
                        "DELETE FROM STEP_TRACKER WHERE step_id IN (SELECT step_id FROM STEP_TRACKER \
                         WHERE status IN ('completed', 'failed', 'cancelled') \
                         AND last_update_ts < ?1 LIMIT ?2)",
                    )
                    .and_then(|mut st| {
                        st.execute(params![now.saturating_sub(ms(p.retention)), p.limit])
                    })
                    .map_err(|e| map_err("steps_prune", e))?;
                count(stmts, 1);
                Ok(n as u64)
            })
            .await
    }

    async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        self.read("queue_stats", move |c, now| {
            let mut stats = QueueStats {
                as_of: Some(ts(now)),
                ..Default::default()
            };
            let mut st = c.prepare_cached(
                "SELECT status, step_type, priority, COUNT(*), \
                 MIN(CASE WHEN status = 'pending' AND run_at <= ?1 THEN run_at END) \
                 FROM STEP_TRACKER GROUP BY status, step_type, priority",
            )?;
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
            Ok(stats)
        })
        .await
    }

    async fn pod_heartbeat(&self, p: HeartbeatParams) -> Result<PodRecord, StoreError> {
        self.writer
            .write("pod_heartbeat", move |c, now, stmts| {
                let op = "pod_heartbeat";
                let meta = p.meta.to_string();
                let n = c
                    .prepare_cached(
                        "INSERT INTO POD_HEALTH (pod_id, birth_ts, last_heartbeat_ts, status, \
                         capacity_in_use, max_capacity, meta) VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6) \
                         ON CONFLICT (pod_id) DO UPDATE SET \
                           last_heartbeat_ts = excluded.last_heartbeat_ts, status = excluded.status, \
                           capacity_in_use = excluded.capacity_in_use, \
                           max_capacity = excluded.max_capacity, meta = excluded.meta \
                         WHERE POD_HEALTH.status = 'up'",
                    )
                    .and_then(|mut st| {
                        st.execute(params![
                            p.pod_id,
                            now,
                            p.status.as_str(),
                            p.capacity_in_use,
                            p.max_capacity,
                            meta
                        ])
                    })
                    .map_err(|e| map_err(op, e))?;
                let _ = n;
                count(stmts, 2);
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
            .write("pods_mark_down", move |c, now, stmts| {
                let mut st = c
                    .prepare_cached(
                        "UPDATE POD_HEALTH SET status = 'down' \
                         WHERE pod_id = ?1 AND status = 'up' AND last_heartbeat_ts <= ?2",
                    )
                    .map_err(|e| map_err("pods_mark_down", e))?;
                let cutoff = now.saturating_sub(ms(p.dead_threshold));
                let mut marked = Vec::new();
                for id in p.pod_ids {
                    let n = st
                        .execute(params![id, cutoff])
                        .map_err(|e| map_err("pods_mark_down", e))?;
                    count(stmts, 1);
                    if n == 1 {
                        marked.push(id);
                    }
                }
                Ok(marked)
            })
            .await
    }

    async fn steps_orphaned(&self, p: OrphanParams) -> Result<Vec<Step>, StoreError> {
        self.read("steps_orphaned", move |c, now| {
            // Alive means up with a heartbeat younger than the threshold.
            let mut st = c.prepare_cached(&format!(
                "SELECT {STEP_COLS} FROM STEP_TRACKER s WHERE s.status = 'claimed' AND NOT EXISTS \
                 (SELECT 1 FROM POD_HEALTH p WHERE p.pod_id = s.claimed_by AND p.status = 'up' \
                  AND p.last_heartbeat_ts > ?1) ORDER BY s.step_id LIMIT ?2"
            ))?;
            let cutoff = now.saturating_sub(ms(p.dead_threshold));
            let rows = st.query_map(params![cutoff, p.limit], step_from_row)?;
            rows.collect()
        })
        .await
    }

    fn statement_count(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }
}

fn current_status(
    c: &Connection,
    op: &'static str,
    id: &str,
    stmts: &AtomicU64,
) -> Result<Option<StepStatus>, StoreError> {
    let s: Option<String> = c
        .prepare_cached("SELECT status FROM STEP_TRACKER WHERE step_id = ?1")
        .and_then(|mut st| st.query_row([id], |r| r.get(0)).optional())
        .map_err(|e| map_err(op, e))?;
    count(stmts, 1);
    s.map(|s| {
        s.parse()
            .map_err(|e| StoreError::fatal(op, format!("stored status: {e}")))
    })
    .transpose()
}
