//! The recovery ledger: the pod-local "ephemeral SQLite" of the seed guide.
//!
//! Each recovery cycle stages the orphaned steps it found in its own DLQ table
//! (`dlq_<n>`) before acting on them, and records a summary row. The last N cycles
//! are kept for `/admin/recovery`; older DLQ tables are dropped. The ledger is
//! local to the pod and disposable: losing it loses history, never work (the steps
//! themselves live in the shared store).

use std::path::Path;
use std::sync::{Arc, Mutex};

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

/// The ledger database.
#[derive(Clone)]
pub struct Ledger {
    conn: Arc<Mutex<Connection>>,
    keep: usize,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("keep", &self.keep).finish()
    }
}

fn err(e: rusqlite::Error) -> String {
    format!("recovery ledger: {e}")
}

impl Ledger {
    /// Opens the ledger at `path` (in memory when `None`), keeping `keep` cycles.
    pub fn open(path: Option<&Path>, keep: usize) -> Result<Ledger, String> {
        let conn = match path {
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        format!("recovery ledger: cannot create {}: {e}", dir.display())
                    })?;
                }
                Connection::open(p).map_err(err)?
            }
            None => Connection::open_in_memory().map_err(err)?,
        };
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS recovery_cycles (
                 seq        INTEGER PRIMARY KEY AUTOINCREMENT,
                 cycle_id   TEXT NOT NULL UNIQUE,
                 summary    TEXT NOT NULL
             );",
        )
        .map_err(err)?;
        Ok(Ledger {
            conn: Arc::new(Mutex::new(conn)),
            keep: keep.max(1),
        })
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

    /// Records the summary of a cycle and drops cycles beyond the kept number.
    pub async fn record(&self, summary: RecoverySummary) -> Result<(), String> {
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

    /// The most recent cycles, newest first.
    pub async fn recent(&self, limit: usize) -> Result<Vec<RecoverySummary>, String> {
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
}
