//! Noticing that the database file was deleted or replaced under a running pod.
//!
//! SQLite keeps writing to the file it opened, so after `rm fleet-q.db` (or a
//! restore that swaps the file) a pod would go on accepting steps into an unlinked
//! inode that no other pod, and no restart, will ever see. The store records the
//! file's device and inode at open and compares them with what the path names now:
//! before every heartbeat and every submit, and at most every [`RECHECK_MS`] before
//! other writes.
//! Once the path no longer names the open file, every write fails with a fatal
//! error (the API answers 503, `/ready` goes unready) until the pod is restarted
//! and opens the file the path names now. Reads still answer from the open file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use fleet_q_actors::StoreError;

use super::writer::clock_ms;

/// Longest time between two checks before writes other than heartbeats.
pub const RECHECK_MS: i64 = 250;

/// The identity of the opened database file.
pub(crate) struct FileIdentity {
    path: PathBuf,
    id: Option<(u64, u64)>,
    last_check_ms: AtomicI64,
    lost: Mutex<Option<String>>,
}

#[cfg(unix)]
fn file_id(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(path: &Path) -> std::io::Result<(u64, u64)> {
    std::fs::metadata(path).map(|_| (0, 0))
}

impl FileIdentity {
    /// Records what `path` names now (call right after opening it).
    pub(crate) fn of(path: &Path) -> FileIdentity {
        FileIdentity {
            path: path.to_path_buf(),
            id: file_id(path).ok(),
            last_check_ms: AtomicI64::new(clock_ms()),
            lost: Mutex::new(None),
        }
    }

    /// Fails when the path no longer names the opened file. `force` checks now;
    /// otherwise at most every [`RECHECK_MS`]. A loss is permanent for this store.
    pub(crate) fn check(&self, op: &'static str, force: bool) -> Result<(), StoreError> {
        if let Some(why) = self.lost.lock().expect("identity lock").clone() {
            return Err(StoreError::fatal(op, why));
        }
        let now = clock_ms();
        let last = self.last_check_ms.load(Ordering::Relaxed);
        if !force && now.saturating_sub(last) < RECHECK_MS {
            return Ok(());
        }
        self.last_check_ms.store(now, Ordering::Relaxed);
        let why = match (file_id(&self.path), self.id) {
            (Ok(now_id), Some(id)) if now_id == id => return Ok(()),
            (Ok(_), _) => format!(
                "the database file {} was replaced by another file; restart the pod to use it",
                self.path.display()
            ),
            (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => format!(
                "the database file {} was deleted; writes are refused until the pod restarts",
                self.path.display()
            ),
            (Err(e), _) => format!(
                "the database file {} cannot be checked: {e}",
                self.path.display()
            ),
        };
        tracing::error!(error = %why, "the SQLite database file is gone from its path");
        *self.lost.lock().expect("identity lock") = Some(why.clone());
        Err(StoreError::fatal(op, why))
    }
}
