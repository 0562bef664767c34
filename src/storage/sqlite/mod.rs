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
//!
//! Layout: `connection` (open, reader pool, statement counting), `writer` (the
//! group-commit thread), `checkpoint`, `identity` (a deleted or replaced file, WAL or index),
//! `schema`, `rows` (row mapping, insert chunks), `fenced` (lease-checked
//! updates), `totals` (STEP_TOTALS), `stats`, `prune`, and `store` (the `Store`
//! impl).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fleet_q_actors::*;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

mod checkpoint;
mod claim;
mod connection;
mod fenced;
mod identity;
mod prune;
mod rows;
mod schedules;
mod schema;
mod search;
mod stats;
mod store;
#[cfg(test)]
mod tests;
mod totals;
mod writer;

use connection::*;
use fenced::*;
use prune::*;
use rows::*;
pub use schema::schema_ddl;
use schema::*;
use totals::Totals;
use writer::{clock_ms, yielded, Writer};

/// Settings of the embedded store.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// How long to wait for another process's write lock before a transient error.
    pub busy_timeout: Duration,
    /// Read connections kept open.
    pub readers: usize,
    /// Write jobs that may wait for the writer before callers are made to wait.
    pub queue: usize,
    /// WAL size past which the checkpointer makes the WAL restart, even if
    /// that costs the writer one short checkpoint of its own (see
    /// `checkpoint`). Writes that never pause (a large prune backlog) would
    /// otherwise grow the WAL file without bound.
    pub wal_restart_bytes: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(5),
            readers: 4,
            queue: 4096,
            wal_restart_bytes: 256 << 20,
        }
    }
}

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    path: PathBuf,
    writer: Writer,
    readers: Arc<ReaderPool>,
    statements: Arc<AtomicU64>,
    /// Which eligible queue a claim serves first (rotates per claim).
    claim_turn: AtomicUsize,
    /// Rows the next prune slice tries (see `prune`): grows while slices
    /// complete, halves when one yields to a write.
    prune_size: AtomicU64,
    /// Queue names known to have a row (see `claim::ensure_queues`).
    known_queues: Arc<Mutex<HashSet<String>>>,
    /// Stops the checkpoint thread when the store goes.
    _checkpointer: Option<checkpoint::Checkpointer>,
}

/// How the message of a store error for a full disk begins (see [`disk_full`]).
const DISK_FULL: &str = "disk full";

/// True when `e` is the SQLite store's error for a full disk: the API then
/// says so instead of pointing at the logs.
pub fn disk_full(e: &StoreError) -> bool {
    e.is_transient() && e.message.starts_with(DISK_FULL)
}

/// Maps a SQLite error to a store error: lock contention and a full disk are
/// transient, the rest fatal. The message is SQLite's, which names objects but
/// never holds SQL text or values.
///
/// A full disk (`SQLITE_FULL`) is transient because freeing space is all it
/// takes, and a failed commit stored nothing: SQLite rolls the transaction
/// back, so the store's retries and the client's resend are safe. Small
/// writes can still fit in the WAL file's existing length while larger ones
/// fail (README, "The embedded store").
pub(crate) fn map_err(op: &'static str, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::*;
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, DatabaseBusy | DatabaseLocked | SystemIoFailure) =>
        {
            StoreError::transient(op, format!("database busy: {e}"))
        }
        rusqlite::Error::SqliteFailure(f, _) if f.code == DiskFull => {
            StoreError::transient(op, format!("{DISK_FULL}: {e}"))
        }
        // Only the writer's progress handler interrupts statements, and only
        // a yielding job's (see `writer`).
        rusqlite::Error::SqliteFailure(f, _) if f.code == OperationInterrupted => {
            StoreError::transient(op, writer::YIELDED)
        }
        _ => StoreError::fatal(op, e.to_string()),
    }
}
