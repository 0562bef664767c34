//! Queues on Snowflake (`fleet_q_actors::queue`): the claim's eligibility and
//! fairness in its one `UPDATE`, queue rows made on first use, and the
//! settings. Queue names are validated (`A-Z a-z 0-9 . _ -`) and still reach
//! SQL only through [`sql::text`].

use super::*;

use fleet_q_actors::queue::{QueueInfo, QueueSettings, MAX_QUEUES};

/// The claim's source of step ids: due pending steps of unpaused queues (of
/// `only`, when given), numbered within each queue in claim order, cut to each
/// queue's room under `max_concurrency` (its claimed steps counted in the same
/// statement), then taken first-of-every-queue, second-of-every-queue, … up to
/// `limit`. The `UPDATE` holds the table's lock while it runs, so no other
/// claim counts the same room.
pub(super) fn claim_source(only: Option<&[String]>, limit: u32) -> String {
    let subset = match only {
        Some(names) if !names.is_empty() => format!(
            " AND s.queue IN ({})",
            names
                .iter()
                .map(|n| sql::text(n))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(_) => " AND FALSE".to_string(),
        None => String::new(),
    };
    format!(
        "(SELECT e.sid AS sid FROM (\
           SELECT s.step_id AS sid, s.priority AS pr, s.created_ts AS ct, \
             ROW_NUMBER() OVER (PARTITION BY COALESCE(s.queue, 'default') ORDER BY s.priority DESC, s.created_ts, s.step_id) AS rn, \
             q.max_concurrency AS mc, COALESCE(r.n, 0) AS running \
           FROM STEP_TRACKER s \
           LEFT JOIN QUEUES q ON q.name = COALESCE(s.queue, 'default') \
           LEFT JOIN (SELECT COALESCE(queue, 'default') AS rq, COUNT(*) AS n FROM STEP_TRACKER \
                      WHERE status = 'claimed' GROUP BY COALESCE(queue, 'default')) r \
             ON r.rq = COALESCE(s.queue, 'default') \
           WHERE s.status = 'pending' AND s.run_at <= SYSDATE() \
             AND COALESCE(q.paused, FALSE) = FALSE{subset}) e \
         WHERE e.mc IS NULL OR e.rn <= e.mc - e.running \
         ORDER BY e.rn, e.pr DESC, e.ct, e.sid LIMIT {limit}) c"
    )
}

impl SnowflakeStore {
    /// Makes a row for each queue in `names` this store has not seen yet
    /// (one `MERGE`, only when a new name shows up), refusing to go past
    /// [`MAX_QUEUES`].
    pub(super) async fn ensure_queues(&self, names: &[&str]) -> Result<(), StoreError> {
        let op = "steps_insert";
        let new: Vec<&str> = {
            let known = self.known_queues.lock().expect("known queues");
            names
                .iter()
                .copied()
                .filter(|n| !known.contains(*n))
                .collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        let rows = self.exec(op, "SELECT COUNT(*) AS n FROM QUEUES").await?;
        let have = rows.first().and_then(|r| r.int("n")).unwrap_or(0).max(0) as usize;
        if have + new.len() > MAX_QUEUES {
            // Some may exist already: count precisely before refusing.
            let list: Vec<String> = new.iter().map(|n| sql::text(n)).collect();
            let rows = self
                .exec(
                    op,
                    &format!(
                        "SELECT COUNT(*) AS n FROM QUEUES WHERE name IN ({})",
                        list.join(", ")
                    ),
                )
                .await?;
            let existing = rows.first().and_then(|r| r.int("n")).unwrap_or(0).max(0) as usize;
            if have + new.len() - existing > MAX_QUEUES {
                return Err(StoreError::fatal(
                    op,
                    format!("a store holds at most {MAX_QUEUES} queues"),
                ));
            }
        }
        let values: Vec<String> = new
            .iter()
            .map(|n| format!("({})", sql::b64_lit(n)))
            .collect();
        self.exec(
            op,
            &format!(
                "MERGE INTO QUEUES USING (SELECT BASE64_DECODE_STRING(column1) AS name FROM VALUES {}) v \
                 ON QUEUES.name = v.name WHEN NOT MATCHED THEN \
                 INSERT (name, paused, max_concurrency, updated_ts) VALUES (v.name, FALSE, NULL, SYSDATE())",
                values.join(", ")
            ),
        )
        .await?;
        let mut known = self.known_queues.lock().expect("known queues");
        known.extend(new.iter().map(|n| n.to_string()));
        Ok(())
    }

    /// Every queue with its settings and live counts: one statement, which
    /// counts the live rows by queue.
    pub(super) async fn list_queues(&self) -> Result<Vec<QueueInfo>, StoreError> {
        let op = "queues_list";
        let rows = self
            .exec(
                op,
                "SELECT q.name AS name, q.paused AS paused, q.max_concurrency AS mc, \
                 COALESCE(l.pending, 0) AS pending, COALESCE(l.claimed, 0) AS claimed \
                 FROM QUEUES q LEFT JOIN (SELECT COALESCE(queue, 'default') AS lq, \
                   SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) AS pending, \
                   SUM(CASE WHEN status = 'claimed' THEN 1 ELSE 0 END) AS claimed \
                   FROM STEP_TRACKER WHERE status IN ('pending', 'claimed') \
                   GROUP BY COALESCE(queue, 'default')) l ON l.lq = q.name \
                 ORDER BY q.name",
            )
            .await?;
        rows.iter()
            .map(|r| {
                let paused = match r.text("paused").as_deref() {
                    Some("true" | "TRUE" | "True" | "1") => true,
                    Some(_) | None => false,
                };
                Ok(QueueInfo {
                    settings: QueueSettings {
                        name: r.text("name").ok_or_else(|| bad(op, "queue name"))?,
                        paused,
                        max_concurrency: r.int("mc").map(|m| m.max(0) as u32),
                    },
                    pending: r.int("pending").unwrap_or(0).max(0) as u64,
                    claimed: r.int("claimed").unwrap_or(0).max(0) as u64,
                })
            })
            .collect()
    }

    /// Upserts a queue's settings (one `MERGE`).
    pub(super) async fn put_queue(&self, s: &QueueSettings) -> Result<(), StoreError> {
        let op = "queue_put";
        let known = self
            .known_queues
            .lock()
            .expect("known queues")
            .contains(&s.name);
        if !known {
            self.ensure_queues(&[s.name.as_str()])
                .await
                .map_err(|e| StoreError { operation: op, ..e })?;
        }
        let mc = s
            .max_concurrency
            .map_or("CAST(NULL AS NUMBER)".to_string(), |m| sql::int(m.into()));
        self.exec(
            op,
            &format!(
                "UPDATE QUEUES SET paused = {paused}, max_concurrency = {mc}, updated_ts = SYSDATE() \
                 WHERE name = {name}",
                paused = if s.paused { "TRUE" } else { "FALSE" },
                name = sql::text(&s.name),
            ),
        )
        .await?;
        Ok(())
    }
}
