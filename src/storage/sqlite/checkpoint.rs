//! The WAL checkpointer: copies committed pages from the WAL into the database
//! file on its own thread and connection, so the writer rarely does.
//!
//! Why: by default SQLite checkpoints inside the commit that takes the WAL past
//! 1,000 pages, on the committing connection: our one writer thread. Measured
//! while the leader pruned a million rows (`cargo bench --bench history`), those
//! commits took 5–15 ms instead of under one, and every submit queued behind
//! them waited as long. Here the writer's connection has automatic checkpoints
//! off, and this thread runs a `PASSIVE` checkpoint (which never blocks readers
//! or the writer) whenever the writer committed since the last look, at most
//! every [`PERIOD`].
//!
//! **Keeping the WAL bounded.** SQLite restarts the WAL from its beginning only
//! when a write transaction begins with every frame already checkpointed. Under
//! steady writes (pruning a backlog commits every millisecond) some commit
//! always lands during a checkpoint taken here, so that never happens: measured
//! while pruning a million rows, the WAL grew to 100,000 frames (400 MB) and
//! the file stayed that size afterwards. So once the WAL holds
//! `SqliteOptions::wal_restart_bytes` (256 MiB by default), this thread checkpoints again until the frames added
//! during one pass are few ([`HANDOFF_FRAMES`]), then hands the last pass to
//! the writer itself ([`Writer::checkpoint_blocking`], a job the writer runs
//! alone, before its next group): with nothing written
//! between that checkpoint and the writer's next transaction, the WAL
//! restarts, and `journal_size_limit` (set on the writer) truncates the file
//! back to [`WAL_LIMIT_BYTES`].
//!
//! A reader elsewhere holding an old snapshot (another process, or the
//! `sqlite3` shell in a transaction) keeps the WAL from restarting whatever
//! this thread does: a hand-off that cannot checkpoint every frame backs off
//! ([`HANDOFF_BACKOFF`], doubling to [`MAX_HANDOFF_BACKOFF`]) instead of
//! repeating every period, and the WAL restarts once the reader lets go.
//!
//! The hand-off costs the writer a checkpoint with its two syncs: 5–15 ms on
//! the benchmark machine, which a submit arriving then waits for. Restarting
//! at 32 MiB instead (every ~0.4 s while pruning flat out) raised the submit
//! p999 while pruning from ~4 ms to 11–15 ms and the p99 with it; at 256 MiB it
//! happens every few seconds of a flat-out prune and never in normal running,
//! where the WAL restarts on its own between writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::writer::Writer;

/// How often the checkpointer looks for new commits.
pub(crate) const PERIOD: Duration = Duration::from_millis(100);

/// New frames in one checkpoint pass small enough to leave to the writer
/// (a fraction of a millisecond to copy).
const HANDOFF_FRAMES: i64 = 64;

/// Passes that chase a busy writer before handing off anyway.
const MAX_CHASE: usize = 8;

/// The size a restarted WAL file is truncated back to.
pub(crate) const WAL_LIMIT_BYTES: i64 = 64 << 20;

/// The `journal_size_limit` for a store restarting its WAL past
/// `restart_bytes`: [`WAL_LIMIT_BYTES`], or the threshold if that is lower.
pub(crate) fn wal_limit(restart_bytes: u64) -> i64 {
    i64::try_from(restart_bytes)
        .unwrap_or(i64::MAX)
        .min(WAL_LIMIT_BYTES)
}

/// The first pause before another hand-off when the last one did not make the
/// WAL restart (another process's reader or writer can hold it back);
/// each further miss doubles it, up to [`MAX_HANDOFF_BACKOFF`]. So a WAL that
/// cannot restart costs the writer one short checkpoint a minute, not one per
/// [`PERIOD`].
const HANDOFF_BACKOFF: Duration = Duration::from_secs(1);
const MAX_HANDOFF_BACKOFF: Duration = Duration::from_secs(60);

/// A `PASSIVE` checkpoint of `conn`'s database: the WAL's frames and how many
/// of them are now in the database file.
pub(crate) fn passive(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

/// Keeps the checkpointer thread alive; dropping it stops the thread.
pub(crate) struct Checkpointer {
    _stop: mpsc::Sender<()>,
}

impl Checkpointer {
    /// Starts checkpointing the database `conn` is open on; `commits` counts the
    /// writer's commits and `writer` takes the hand-off passes. The writer's
    /// connection must have automatic checkpoints off.
    pub(crate) fn start(
        conn: Connection,
        commits: Arc<AtomicU64>,
        writer: Writer,
        restart_bytes: u64,
    ) -> std::io::Result<Self> {
        let page: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap_or(4096);
        let restart_frames = i64::try_from(restart_bytes).unwrap_or(i64::MAX) / page.max(512);
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("fleet-q-sqlite-checkpoint".into())
            .spawn(move || {
                let mut seen = commits.load(Ordering::Relaxed);
                // After a hand-off that could not checkpoint every frame:
                // when it ran, and how long to wait before the next.
                let mut backoff: Option<(Instant, Duration)> = None;
                // Ends when the store (and with it the sender) is gone.
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(PERIOD) {
                    let now = commits.load(Ordering::Relaxed);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    match passive(&conn) {
                        Ok((frames, _)) if frames >= restart_frames.max(1) => {
                            if let Some((at, wait)) = backoff {
                                if at.elapsed() < wait {
                                    continue;
                                }
                            }
                            backoff = if restart(&conn, &writer, frames) {
                                None
                            } else {
                                let wait = backoff.map_or(HANDOFF_BACKOFF, |(_, w)| {
                                    (w * 2).min(MAX_HANDOFF_BACKOFF)
                                });
                                Some((Instant::now(), wait))
                            };
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "WAL checkpoint failed; retrying after the next commit")
                        }
                    }
                }
                // A last full pass so a clean shutdown leaves little WAL behind.
                let _ = passive(&conn);
            })?;
        Ok(Checkpointer { _stop: tx })
    }
}

/// Chases the writer until a pass finds few new frames, then has the writer
/// run the last pass itself, so its next transaction restarts the WAL. False
/// when the writer's pass could not checkpoint every frame (a reader in
/// another process still needs them), so the WAL cannot restart yet.
fn restart(conn: &Connection, writer: &Writer, mut frames: i64) -> bool {
    for _ in 0..MAX_CHASE {
        match passive(conn) {
            // Fewer frames than before: the WAL restarted meanwhile.
            Ok((now, _)) if now < frames => return true,
            Ok((now, _)) => {
                let fresh = now - frames;
                frames = now;
                if fresh <= HANDOFF_FRAMES {
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "WAL checkpoint failed; retrying after the next commit");
                return false;
            }
        }
    }
    match writer.checkpoint_blocking() {
        Ok((log, done)) => done >= log,
        Err(e) => {
            tracing::debug!(error = %e, "the writer's WAL checkpoint failed; retrying later");
            false
        }
    }
}
