//! The recovery ledger: the pod-local "ephemeral SQLite" of the seed guide.
//!
//! Each recovery cycle stages the orphaned steps it found in its own DLQ table
//! (`dlq_<n>`) before acting on them, and records a summary row. The last N cycles
//! are kept for `/admin/recovery`; older DLQ tables are dropped. The ledger is
//! local to the pod and disposable: losing it loses history, never work (the steps
//! themselves live in the shared store).
//!
//! A ledger that cannot be written never stops recovery: a file that cannot be
//! opened (read-only, immutable, on a full disk) is replaced by an in-memory ledger
//! at start, and a write that fails mid-run is logged and counted
//! (`fleet_q_recovery_ledger_errors_total`) while the cycle goes on. The last
//! summaries are also kept in memory, so `/admin/recovery` answers either way.
//!
//! Files: a pod holds an advisory lock (`flock`) on its ledger file while it runs
//! and deletes the file (with its `-wal` and `-shm`) on graceful shutdown. At start
//! it deletes other `fleet-q-ledger-*.db` files in the same directory that no
//! running pod holds, the leftovers of pods that were killed.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::step::{Step, StepId};

/// What one recovery cycle found and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecoverySummary {
    /// Identifies the cycle (and its DLQ table).
    pub cycle_id: String,
    /// The pod that ran it.
    pub leader_pod: String,
    /// When it started (store time).
    pub started_at: Option<DateTime<Utc>>,
    /// Computed and reported only; nothing written to the store.
    pub dry_run: bool,
    /// Pods judged dead (stale heartbeat) in this cycle.
    pub dead_pods: Vec<String>,
    /// `dead_pods.len()`.
    pub dead_pods_found: usize,
    /// Claimed steps held by down, dead or unknown pods.
    pub orphaned_steps_found: usize,
    /// Orphans put back to pending.
    pub steps_requeued: usize,
    /// Orphans failed for good (no retries left).
    pub steps_marked_terminal: usize,
    /// Orphans that had already moved on (another leader acted first).
    pub steps_skipped: usize,
    /// Requeued step ids.
    pub requeued_steps: Vec<StepId>,
    /// Failed step ids.
    pub terminal_steps: Vec<StepId>,
    /// Finished steps pruned past retention.
    pub steps_pruned: u64,
    /// Wall time of the cycle.
    pub duration_ms: u64,
    /// The error that ended the cycle early, if any.
    pub error: Option<String>,
}

static LEDGER_ERRORS: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    crate::metrics::counter_vec(
        "fleet_q_recovery_ledger_errors_total",
        "Recovery ledger operations that failed (open, stage, record); recovery went on without the audit record.",
        &["op"],
    )
});

/// Forces registration of this module's metrics (so `/metrics` lists them at 0).
pub fn register_metrics() {
    for op in ["open", "stage", "record"] {
        let _ = LEDGER_ERRORS.get_metric_with_label_values(&[op]);
    }
}

/// Counts a ledger failure of `op` (`open`, `stage`, `record`).
pub fn count_error(op: &'static str) {
    LEDGER_ERRORS.with_label_values(&[op]).inc();
}

/// The name prefix of default ledger files, swept when stale.
pub const FILE_PREFIX: &str = "fleet-q-ledger-";

/// The ledger database.
#[derive(Clone)]
pub struct Ledger {
    conn: Arc<Mutex<Connection>>,
    keep: usize,
    /// The last `keep` summaries, newest last: answers when the file cannot.
    memory: Arc<Mutex<VecDeque<RecoverySummary>>>,
    /// The file and the lock held on it while the pod runs (`None` in memory).
    file: Option<Arc<(PathBuf, std::fs::File)>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("keep", &self.keep)
            .field("file", &self.file.as_ref().map(|f| f.0.clone()))
            .finish()
    }
}

fn err(e: rusqlite::Error) -> String {
    format!("recovery ledger: {e}")
}

const LEDGER_DDL: &str = "PRAGMA journal_mode = WAL;
     PRAGMA busy_timeout = 5000;
     CREATE TABLE IF NOT EXISTS recovery_cycles (
         seq        INTEGER PRIMARY KEY AUTOINCREMENT,
         cycle_id   TEXT NOT NULL UNIQUE,
         summary    TEXT NOT NULL
     );";

/// The files SQLite keeps for the database at `path`.
fn sqlite_files(path: &Path) -> [PathBuf; 3] {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    [path.to_path_buf(), wal.into(), shm.into()]
}

impl Ledger {
    /// Opens the ledger at `path` (in memory when `None`), keeping `keep` cycles.
    /// Fails only when the file cannot be used; see [`Ledger::open_or_memory`].
    pub fn open(path: Option<&Path>, keep: usize) -> Result<Ledger, String> {
        let (conn, file) = match path {
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        format!("recovery ledger: cannot create {}: {e}", dir.display())
                    })?;
                }
                let lock = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(p)
                    .map_err(|e| format!("recovery ledger: cannot open {}: {e}", p.display()))?;
                lock.try_lock().map_err(|e| {
                    format!(
                        "recovery ledger: {} is in use by another process ({e})",
                        p.display()
                    )
                })?;
                let conn = Connection::open(p).map_err(err)?;
                (conn, Some(Arc::new((p.to_path_buf(), lock))))
            }
            None => (Connection::open_in_memory().map_err(err)?, None),
        };
        conn.execute_batch(LEDGER_DDL).map_err(err)?;
        Ok(Ledger {
            conn: Arc::new(Mutex::new(conn)),
            keep: keep.max(1),
            memory: Arc::new(Mutex::new(VecDeque::new())),
            file,
        })
    }

    /// Opens the ledger at `path`; when that fails, logs and counts the failure and
    /// keeps the ledger in memory instead, so recovery never depends on the disk.
    pub fn open_or_memory(path: Option<&Path>, keep: usize) -> Ledger {
        if let Some(dir) = path.and_then(Path::parent) {
            sweep_stale(dir, path);
        }
        match Ledger::open(path, keep) {
            Ok(l) => l,
            Err(e) => {
                count_error("open");
                tracing::error!(error = %e, "the recovery ledger file cannot be used; keeping the ledger in memory (recovery is unaffected)");
                Ledger::open(None, keep).expect("an in-memory SQLite database opens")
            }
        }
    }

    /// The ledger's file, when it has one.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.0.as_path())
    }

    /// Deletes the ledger's files (graceful shutdown: the ledger is scratch).
    pub fn remove_files(&self) {
        if let Some(f) = &self.file {
            for p in sqlite_files(&f.0) {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn
                .lock()
                .map_err(|_| "recovery ledger lock poisoned".to_string())?;
            f(&mut c)
        })
        .await
        .map_err(|e| format!("recovery ledger task failed: {e}"))?
    }

    /// Starts cycle `cycle_id`: creates its DLQ table and stages `orphans` in it.
    /// Returns the table's sequence number.
    pub async fn stage(&self, cycle_id: String, orphans: Vec<Step>) -> Result<i64, String> {
        self.blocking(move |c| {
            let tx = c.transaction().map_err(err)?;
            tx.execute(
                "INSERT INTO recovery_cycles (cycle_id, summary) VALUES (?1, '{}')",
                [&cycle_id],
            )
            .map_err(err)?;
            let seq = tx.last_insert_rowid();
            // The table name is built from an integer we generated, never input.
            tx.execute_batch(&format!(
                "CREATE TABLE dlq_{seq} (step_id TEXT PRIMARY KEY, claimed_by TEXT, attempt INTEGER,
                   retry_count INTEGER, max_retries INTEGER, step_type TEXT, decision TEXT)"
            ))
            .map_err(err)?;
            {
                let mut st = tx
                    .prepare(&format!(
                        "INSERT OR REPLACE INTO dlq_{seq} VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                    ))
                    .map_err(err)?;
                for s in &orphans {
                    let decision = if s.retry_count < s.max_retries {
                        "requeue"
                    } else {
                        "fail"
                    };
                    st.execute(params![
                        s.step_id.to_string(),
                        s.claimed_by,
                        s.attempt,
                        s.retry_count,
                        s.max_retries,
                        s.step_type(),
                        decision
                    ])
                    .map_err(err)?;
                }
            }
            tx.commit().map_err(err)?;
            Ok(seq)
        })
        .await
    }

    /// Records the summary of a cycle and drops cycles beyond the kept number. The
    /// summary is kept in memory even when the file cannot be written.
    pub async fn record(&self, summary: RecoverySummary) -> Result<(), String> {
        {
            let mut m = self.memory.lock().expect("ledger memory lock");
            m.retain(|s| s.cycle_id != summary.cycle_id);
            m.push_back(summary.clone());
            while m.len() > self.keep {
                m.pop_front();
            }
        }
        let keep = self.keep as i64;
        self.blocking(move |c| {
            let text = serde_json::to_string(&summary).map_err(|e| e.to_string())?;
            let n = c
                .execute(
                    "UPDATE recovery_cycles SET summary = ?2 WHERE cycle_id = ?1",
                    params![summary.cycle_id, text],
                )
                .map_err(err)?;
            if n == 0 {
                c.execute(
                    "INSERT INTO recovery_cycles (cycle_id, summary) VALUES (?1, ?2)",
                    params![summary.cycle_id, text],
                )
                .map_err(err)?;
            }
            let old: Vec<i64> = {
                let mut st = c
                    .prepare("SELECT seq FROM recovery_cycles ORDER BY seq DESC LIMIT -1 OFFSET ?1")
                    .map_err(err)?;
                let rows = st.query_map([keep], |r| r.get(0)).map_err(err)?;
                rows.collect::<Result<_, _>>().map_err(err)?
            };
            for seq in old {
                c.execute_batch(&format!("DROP TABLE IF EXISTS dlq_{seq}"))
                    .map_err(err)?;
                c.execute("DELETE FROM recovery_cycles WHERE seq = ?1", [seq])
                    .map_err(err)?;
            }
            Ok(())
        })
        .await
    }

    /// The most recent cycles, newest first: from the file, or from memory when
    /// the file cannot be read.
    pub async fn recent(&self, limit: usize) -> Result<Vec<RecoverySummary>, String> {
        let from_file = self.recent_in_file(limit).await;
        match from_file {
            Ok(v) if !v.is_empty() => Ok(v),
            other => {
                if let Err(e) = other {
                    tracing::warn!(error = %e, "reading the recovery ledger; answering from memory");
                }
                let m = self.memory.lock().expect("ledger memory lock");
                Ok(m.iter().rev().take(limit).cloned().collect())
            }
        }
    }

    async fn recent_in_file(&self, limit: usize) -> Result<Vec<RecoverySummary>, String> {
        self.blocking(move |c| {
            let mut st = c
                .prepare("SELECT summary FROM recovery_cycles ORDER BY seq DESC LIMIT ?1")
                .map_err(err)?;
            let rows = st
                .query_map([limit as i64], |r| r.get::<_, String>(0))
                .map_err(err)?;
            let mut out = Vec::new();
            for r in rows {
                let text = r.map_err(err)?;
                if let Ok(s) = serde_json::from_str(&text) {
                    out.push(s);
                }
            }
            Ok(out)
        })
        .await
    }

    /// The staged rows of one cycle: `(step_id, claimed_by, decision)`.
    pub async fn staged(&self, cycle_id: String) -> Result<Vec<(String, String, String)>, String> {
        self.blocking(move |c| {
            let seq: Option<i64> = c
                .query_row(
                    "SELECT seq FROM recovery_cycles WHERE cycle_id = ?1",
                    [&cycle_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(err)?;
            let Some(seq) = seq else { return Ok(Vec::new()) };
            let mut st = c
                .prepare(&format!(
                    "SELECT step_id, COALESCE(claimed_by, ''), decision FROM dlq_{seq} ORDER BY step_id"
                ))
                .map_err(err)?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(err)?;
            rows.collect::<Result<_, _>>().map_err(err)
        })
        .await
    }
}

/// Deletes `fleet-q-ledger-*.db` files (and their `-wal`, `-shm`) in `dir` that no
/// running pod holds (a pod holds a lock on its ledger file while it runs), except
/// `keep`. Best effort: anything that cannot be checked is left alone.
pub fn sweep_stale(dir: &Path, keep: Option<&Path>) {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with(FILE_PREFIX) && name.ends_with(".db")) {
            continue;
        }
        let path = e.path();
        if keep.is_some_and(|k| k.file_name() == path.file_name()) {
            continue;
        }
        let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        else {
            continue;
        };
        if f.try_lock().is_ok() {
            for p in sqlite_files(&path) {
                let _ = std::fs::remove_file(p);
            }
            tracing::info!(file = %path.display(), "removed a stale recovery ledger left by a stopped pod");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_only_the_last_cycles() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(Some(&dir.path().join("ledger.db")), 3).unwrap();
        for i in 0..5 {
            let id = format!("c{i}");
            ledger.stage(id.clone(), vec![]).await.unwrap();
            ledger
                .record(RecoverySummary {
                    cycle_id: id,
                    steps_requeued: i,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let recent = ledger.recent(10).await.unwrap();
        let ids: Vec<&str> = recent.iter().map(|s| s.cycle_id.as_str()).collect();
        assert_eq!(ids, ["c4", "c3", "c2"]);
        assert!(ledger.staged("c0".into()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn stale_files_are_swept_and_held_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let held = dir.path().join(format!("{FILE_PREFIX}live.db"));
        let live = Ledger::open(Some(&held), 3).unwrap();
        let stale = dir.path().join(format!("{FILE_PREFIX}dead.db"));
        drop(Ledger::open(Some(&stale), 3).unwrap());
        std::fs::write(dir.path().join(format!("{FILE_PREFIX}dead.db-wal")), b"x").unwrap();
        let other = dir.path().join("unrelated.db");
        std::fs::write(&other, b"x").unwrap();
        sweep_stale(dir.path(), None);
        assert!(held.exists(), "a held ledger stays");
        assert!(!stale.exists(), "a stale ledger goes");
        assert!(!dir
            .path()
            .join(format!("{FILE_PREFIX}dead.db-wal"))
            .exists());
        assert!(other.exists(), "only ledger files are touched");
        live.remove_files();
        assert!(!held.exists(), "shutdown removes the pod's own file");
    }

    #[tokio::test]
    async fn an_unusable_file_falls_back_to_memory() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: it cannot be opened as a database.
        let path = dir.path().join("ledger.db");
        std::fs::create_dir(&path).unwrap();
        let ledger = Ledger::open_or_memory(Some(&path), 3);
        assert!(ledger.path().is_none(), "fell back to memory");
        ledger.stage("c1".into(), vec![]).await.unwrap();
        ledger
            .record(RecoverySummary {
                cycle_id: "c1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(ledger.recent(5).await.unwrap()[0].cycle_id, "c1");
    }
}
