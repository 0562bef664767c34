//! Noticing that the database file, its WAL or its shared-memory index was
//! deleted or replaced under a running pod.
//!
//! **The database file.** SQLite keeps writing to the file it opened, so after
//! `rm fleet-q.db` (or a restore that swaps the file) a pod would go on
//! accepting steps into an unlinked inode that no other pod, and no restart,
//! will ever see.
//!
//! **The WAL (`<file>-wal`) and the index (`<file>-shm`).** Deleting them
//! "to clean up" is a common mistake, and it loses data. The pod's open
//! connections keep using the unlinked files, but the next connection anyone
//! opens (another pod, the `sqlite3` shell, a restart, or this pod's own read
//! pool growing) creates new, empty ones:
//! - commits still in the deleted WAL are gone;
//! - a connection that opens the new empty WAL can rebuild the index from it,
//!   after which checkpoints copy nothing;
//! - two processes with two different indexes no longer share locks.
//!
//! Tried before this check existed: a pod whose WAL was deleted went on
//! answering 201, and after it stopped the file held nothing it had accepted.
//!
//! **The check.** The store records the device and inode of all three files
//! once every connection it keeps (the writer, the checkpointer and its
//! helper, the reader pool) has opened them: SQLite opens a connection's WAL
//! by path at its first read, so a kept connection whose first read came
//! after a deletion would create a new, empty WAL itself. (Found as a flaky
//! test: the helper's first pass, at the pod's first commits, could land
//! after the deletion and create the file again.) It compares them with what the paths name now:
//! - before every heartbeat and every submit;
//! - at most every [`RECHECK_MS`] before other writes;
//! - before the read pool opens a connection.
//!
//! A check is one `stat` per file, so three per submit call: about 2 µs
//! each on the benchmark VM, against a submit p50 of ~100 µs. It scans
//! nothing, whatever the table holds.
//!
//! **Once a path no longer names its file:**
//! - every write fails with a fatal error (the API answers 503, `/ready` goes
//!   unready) until the pod is restarted;
//! - the read pool opens no new connection (it would create the new empty WAL);
//! - reads still answer from connections already open;
//! - the checkpointer runs no more passes ([`FileIdentity::is_lost`]).
//!
//! **The rescue.** When the WAL or the index was lost but neither was created
//! again (so no other connection has opened the database since), the writer's
//! connection, which still holds both, checkpoints every committed frame into
//! the database file ([`FileIdentity::take_rescue`]), trying again while a
//! pass the checkpointer's helper had started holds the checkpoint lock. A
//! restart then loses nothing. If a new WAL or index already exists, another connection has
//! opened the database with it, and copying our frames into the file could
//! corrupt what that connection sees. Nothing is copied then, and the log says
//! what could not be saved.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;

use fleet_q_actors::StoreError;

use super::writer::clock_ms;

/// Longest time between two checks before writes other than heartbeats.
pub const RECHECK_MS: i64 = 250;

/// One watched file: what it is, its path, and its identity at open.
struct Watched {
    what: &'static str,
    /// The database file itself (the others are its WAL and index).
    database: bool,
    path: PathBuf,
    id: Option<(u64, u64)>,
}

/// The identity of the opened database file, its WAL and its index.
pub(crate) struct FileIdentity {
    files: Vec<Watched>,
    last_check_ms: AtomicI64,
    lost: Mutex<Option<String>>,
    /// Set when a loss of the WAL or the index may be rescued (see the module
    /// docs); taken once.
    rescue: AtomicBool,
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

/// `path` with `suffix` appended to its file name (`-wal`, `-shm`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_os_string();
    p.push(suffix);
    PathBuf::from(p)
}

impl FileIdentity {
    /// Records what `path`, `path-wal` and `path-shm` name now. Call it once the
    /// database is open in WAL mode, which creates the other two. A file missing
    /// then is not watched.
    pub(crate) fn of(path: &Path) -> FileIdentity {
        let files = [
            ("database file", path.to_path_buf()),
            ("WAL file", with_suffix(path, "-wal")),
            ("WAL index file", with_suffix(path, "-shm")),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (what, path))| Watched {
            what,
            database: i == 0,
            id: file_id(&path).ok(),
            path,
        })
        .collect();
        FileIdentity {
            files,
            last_check_ms: AtomicI64::new(clock_ms()),
            lost: Mutex::new(None),
            rescue: AtomicBool::new(false),
        }
    }

    /// Fails when a path no longer names the opened file. `force` checks now;
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
        // Every file's state now: a lost one and whether its path is free.
        let mut why = Vec::new();
        let mut database_lost = false;
        let mut recreated = false;
        for f in &self.files {
            let Some(id) = f.id else { continue };
            let problem = match file_id(&f.path) {
                Ok(now_id) if now_id == id => continue,
                Ok(_) => {
                    recreated = true;
                    "was replaced by another file"
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "was deleted",
                Err(_) => {
                    recreated = true; // unknown: do not touch it
                    "cannot be checked"
                }
            };
            database_lost |= f.database;
            why.push(format!("the {} {} {problem}", f.what, f.path.display()));
        }
        if why.is_empty() {
            return Ok(());
        }
        let why = format!(
            "{}; writes are refused until the pod restarts",
            why.join(", ")
        );
        tracing::error!(error = %why, "an SQLite file is gone from its path");
        let mut lost = self.lost.lock().expect("identity lock");
        if lost.is_none() {
            *lost = Some(why.clone());
            if !database_lost && !recreated {
                self.rescue.store(true, Ordering::Relaxed);
            } else if !database_lost {
                tracing::error!(
                    "another connection opened the database after its WAL or index was \
                     deleted: commits not yet checkpointed cannot be saved safely"
                );
            }
        }
        Err(StoreError::fatal(op, why))
    }

    /// True once a check found a path no longer naming its file: the
    /// checkpointer's passes stop then (the rescue, if any, is the writer's).
    /// A lock and no `stat`: a look at what the writer's checks found.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.lock().expect("identity lock").is_some()
    }

    /// True once, after a loss of the WAL or the index that the writer's
    /// connection can still rescue by a checkpoint (see the module docs).
    pub(crate) fn take_rescue(&self) -> bool {
        self.rescue.swap(false, Ordering::Relaxed)
    }

    /// Checks before opening a new connection, which would create a new,
    /// empty WAL if the old one was deleted.
    pub(crate) fn check_before_open(&self) -> Result<(), StoreError> {
        self.check("open", true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three plain files standing in for a database, its WAL and its index,
    /// held open as a pod's connections hold them (so a deleted one keeps its
    /// inode number, and a file created in its place gets another).
    fn files(dir: &Path) -> (PathBuf, Vec<std::fs::File>) {
        let db = dir.join("x.db");
        let open = [
            db.clone(),
            with_suffix(&db, "-wal"),
            with_suffix(&db, "-shm"),
        ]
        .into_iter()
        .map(|p| {
            std::fs::write(&p, b"x").expect("write");
            std::fs::File::open(&p).expect("open")
        })
        .collect();
        (db, open)
    }

    #[test]
    fn a_deleted_wal_is_refused_and_rescued_once_unless_recreated() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (db, _open) = files(dir.path());
        let id = FileIdentity::of(&db);
        id.check("steps_insert", true).expect("all three in place");
        std::fs::remove_file(with_suffix(&db, "-wal")).expect("rm");
        let e = id.check("steps_insert", true).expect_err("refused");
        assert!(
            e.message.contains("WAL file") && e.message.contains("was deleted"),
            "{e}"
        );
        assert!(id.take_rescue(), "nobody opened a new WAL: rescue");
        assert!(!id.take_rescue(), "once");
        // The loss is permanent, even once a file of that name exists again.
        std::fs::write(with_suffix(&db, "-wal"), b"x").expect("write");
        assert!(id.check("pod_heartbeat", true).is_err());
        assert!(id.check_before_open().is_err());

        let dir = tempfile::tempdir().expect("temp dir");
        let (db, _open) = files(dir.path());
        let id = FileIdentity::of(&db);
        std::fs::remove_file(with_suffix(&db, "-shm")).expect("rm");
        std::fs::write(with_suffix(&db, "-shm"), b"y").expect("a new index");
        let e = id.check_before_open().expect_err("refused");
        assert!(e.message.contains("was replaced"), "{e}");
        assert!(
            !id.take_rescue(),
            "another connection may use the new index"
        );

        let dir = tempfile::tempdir().expect("temp dir");
        let (db, _open) = files(dir.path());
        let id = FileIdentity::of(&db);
        std::fs::remove_file(&db).expect("rm");
        assert!(id.check("steps_insert", true).is_err());
        assert!(!id.take_rescue(), "no file to rescue into");
    }
}
