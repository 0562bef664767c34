//! The WAL checkpointer: copies committed pages from the WAL into the database
//! file on its own thread and connection, so the writer never does.
//!
//! Why: by default SQLite checkpoints inside the commit that takes the WAL past
//! 1,000 pages, on the committing connection: our one writer thread. Measured
//! while the leader pruned a million rows (`cargo bench --bench history`), those
//! commits took 5–15 ms instead of under one, and every submit queued behind
//! them waited as long. Here the writer's connection has automatic checkpoints
//! off, and this thread runs a `PASSIVE` checkpoint (which never blocks readers
//! or the writer) whenever the writer committed since the last look, at most
//! every [`PERIOD`]. SQLite restarts the WAL from its beginning once a
//! checkpoint has copied all of it, so the file stays small.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rusqlite::Connection;

/// How often the checkpointer looks for new commits.
pub(crate) const PERIOD: Duration = Duration::from_millis(100);

/// Keeps the checkpointer thread alive; dropping it stops the thread.
pub(crate) struct Checkpointer {
    _stop: mpsc::Sender<()>,
}

impl Checkpointer {
    /// Starts checkpointing the database `conn` is open on; `commits` counts the
    /// writer's commits. The writer's own connection must have automatic
    /// checkpoints turned off by the caller once this returned.
    pub(crate) fn start(conn: Connection, commits: Arc<AtomicU64>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("fleet-q-sqlite-checkpoint".into())
            .spawn(move || {
                let mut seen = commits.load(Ordering::Relaxed);
                // Ends when the store (and with it the sender) is gone.
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(PERIOD) {
                    let now = commits.load(Ordering::Relaxed);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::debug!(error = %e, "WAL checkpoint failed; retrying after the next commit");
                    }
                }
                // A last full pass so a clean shutdown leaves little WAL behind.
                let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            })?;
        Ok(Checkpointer { _stop: tx })
    }
}
