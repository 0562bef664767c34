//! Queues on Snowflake (`fleet_q_actors::queue`): the claim's eligibility and
//! fairness in its one `UPDATE`, queue rows made on first use, and the
//! settings. Queue names are validated (`A-Z a-z 0-9 . _ -`) and still reach
//! SQL only through [`sql::text`].

use super::*;

use fleet_q_actors::queue::{QueueInfo, QueueSettings, MAX_QUEUES, RATE_HORIZON_SECS};

/// The queue settings a claim reads, grouped by name so that duplicate rows
/// (Snowflake enforces no key) can never duplicate a step.
const SETTINGS: &str = "(SELECT name AS name, MAX(CASE WHEN paused THEN 1 ELSE 0 END) AS paused, \
     MIN(max_concurrency) AS mc, MIN(rate_per_second) AS rate, \
     MIN(COALESCE(burst, GREATEST(1, CEIL(rate_per_second)))) AS burst \
     FROM QUEUES GROUP BY name)";

/// The claim's source of step ids: due pending steps of unpaused queues (of
/// `only`, when given), numbered within each queue in claim order, cut to each
/// queue's room under `max_concurrency` (its claimed steps counted in the same
/// statement) and under its rate bucket (derived from its starts of the last
/// [`RATE_HORIZON_SECS`] seconds, see `fleet_q_actors::queue::bucket_tokens`),
/// then taken first-of-every-queue, second-of-every-queue, … up to `limit`.
/// The `UPDATE` holds the table's lock while it runs, so no other claim counts
/// the same room or spends the same tokens.
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
             q.mc AS mc, COALESCE(r.n, 0) AS running, \
             CASE WHEN q.rate IS NULL THEN NULL \
               ELSE FLOOR(LEAST(q.burst, COALESCE(t.tokens, q.burst)) + 0.000001) END AS allow \
           FROM STEP_TRACKER s \
           LEFT JOIN {SETTINGS} q ON q.name = COALESCE(s.queue, 'default') \
           LEFT JOIN (SELECT COALESCE(queue, 'default') AS rq, COUNT(*) AS n FROM STEP_TRACKER \
                      WHERE status = 'claimed' GROUP BY COALESCE(queue, 'default')) r \
             ON r.rq = COALESCE(s.queue, 'default') \
           LEFT JOIN (SELECT h.tq AS tq, \
                        MIN(h.b + h.rate * DATEDIFF(millisecond, h.st, SYSDATE()) / 1000.0 - h.k) AS tokens \
                      FROM (SELECT COALESCE(s2.queue, 'default') AS tq, s2.started_ts AS st, \
                              q2.rate AS rate, q2.burst AS b, \
                              ROW_NUMBER() OVER (PARTITION BY COALESCE(s2.queue, 'default') ORDER BY s2.started_ts DESC) AS k \
                            FROM STEP_TRACKER s2 JOIN {SETTINGS} q2 ON q2.name = COALESCE(s2.queue, 'default') \
                            WHERE q2.rate IS NOT NULL \
                              AND s2.started_ts >= DATEADD(second, -{RATE_HORIZON_SECS}, SYSDATE())) h \
                      GROUP BY h.tq) t \
             ON t.tq = COALESCE(s.queue, 'default') \
           WHERE s.status = 'pending' AND s.run_at <= SYSDATE() \
             AND COALESCE(q.paused, 0) = 0{subset}) e \
         WHERE (e.mc IS NULL OR e.rn <= e.mc - e.running) AND (e.allow IS NULL OR e.rn <= e.allow) \
         ORDER BY e.rn, e.pr DESC, e.ct, e.sid LIMIT {limit}) c"
    )
}

impl SnowflakeStore {
    /// The idle probe (`Store::steps_idle_probe`): one `SELECT` over the live
    /// rows (pending and claimed; Snowflake prunes micro-partitions by
    /// status), never history. The one-row anchor makes an empty table
    /// still answer a row with the store time.
    pub(super) async fn idle_probe(&self) -> Result<fleet_q_actors::quiet::IdleProbe, StoreError> {
        let op = "steps_idle_probe";
        let live = "s.status = 'pending' AND COALESCE(q.paused, 0) = 0";
        let rows = self
            .exec(
                op,
                &format!(
                    "SELECT SUM(CASE WHEN s.status = 'claimed' THEN 1 ELSE 0 END) AS claimed, \
                       SUM(CASE WHEN {live} AND s.run_at <= SYSDATE() THEN 1 ELSE 0 END) AS due_now, \
                       MIN(CASE WHEN {live} AND s.run_at > SYSDATE() \
                         THEN DATE_PART(EPOCH_MILLISECOND, s.run_at) END) AS next_due_ms, \
                       MAX(a.anchor) AS now_ms \
                     FROM (SELECT DATE_PART(EPOCH_MILLISECOND, SYSDATE()) AS anchor) a \
                     LEFT JOIN STEP_TRACKER s ON s.status IN ('pending', 'claimed') \
                     LEFT JOIN {SETTINGS} q ON q.name = COALESCE(s.queue, 'default')"
                ),
            )
            .await?;
        let r = rows.first().ok_or_else(|| bad(op, "no row"))?;
        Ok(fleet_q_actors::quiet::IdleProbe {
            claimed: r.int("claimed").unwrap_or(0).max(0) as u64,
            due_now: r.int("due_now").unwrap_or(0) > 0,
            next_due: r.int("next_due_ms").map(ts),
            now: ts(r.int("now_ms").ok_or_else(|| bad(op, "store time"))?),
        })
    }

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
    /// counts the live rows by queue and the rows started in the last minute
    /// (`started_ts` is written by the claims, so the partitions holding
    /// recent starts are the recently rewritten ones and the rest are pruned).
    pub(super) async fn list_queues(&self) -> Result<Vec<QueueInfo>, StoreError> {
        let op = "queues_list";
        let rows = self
            .exec(
                op,
                "SELECT q.name AS name, q.paused AS paused, q.max_concurrency AS mc, \
                 q.rate_per_second AS rate, q.burst AS burst, q.max_retries AS mr, \
                 q.timeout_ms AS t, q.backoff_ms AS b, q.backoff_max_ms AS bm, \
                 COALESCE(l.pending, 0) AS pending, COALESCE(l.claimed, 0) AS claimed, \
                 COALESCE(m.n, 0) AS started \
                 FROM QUEUES q LEFT JOIN (SELECT COALESCE(queue, 'default') AS lq, \
                   SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) AS pending, \
                   SUM(CASE WHEN status = 'claimed' THEN 1 ELSE 0 END) AS claimed \
                   FROM STEP_TRACKER WHERE status IN ('pending', 'claimed') \
                   GROUP BY COALESCE(queue, 'default')) l ON l.lq = q.name \
                 LEFT JOIN (SELECT COALESCE(queue, 'default') AS mq, COUNT(*) AS n FROM STEP_TRACKER \
                   WHERE started_ts >= DATEADD(second, -60, SYSDATE()) \
                   GROUP BY COALESCE(queue, 'default')) m ON m.mq = q.name \
                 ORDER BY q.name",
            )
            .await?;
        let dur = |v: Option<i64>| v.map(|m| Duration::from_millis(m.max(0) as u64));
        let mut out: Vec<QueueInfo> = Vec::new();
        for r in &rows {
            let paused = match r.text("paused").as_deref() {
                Some("true" | "TRUE" | "True" | "1") => true,
                Some(_) | None => false,
            };
            let name = r.text("name").ok_or_else(|| bad(op, "queue name"))?;
            // Duplicate rows of one name (no key on Snowflake): the first wins.
            if out.last().is_some_and(|q| q.settings.name == name) {
                continue;
            }
            out.push(QueueInfo {
                settings: QueueSettings {
                    name,
                    paused,
                    max_concurrency: r.int("mc").map(|m| m.max(0) as u32),
                    rate_per_second: r.text("rate").and_then(|t| t.parse::<f64>().ok()),
                    burst: r.int("burst").map(|m| m.max(0) as u32),
                    max_retries: r.int("mr").map(|m| m.max(0) as u32),
                    timeout: dur(r.int("t")),
                    backoff: dur(r.int("b")),
                    backoff_max: dur(r.int("bm")),
                },
                pending: r.int("pending").unwrap_or(0).max(0) as u64,
                claimed: r.int("claimed").unwrap_or(0).max(0) as u64,
                started_last_minute: r.int("started").unwrap_or(0).max(0) as u64,
            });
        }
        Ok(out)
    }

    async fn ensure_known(&self, op: &'static str, name: &str) -> Result<(), StoreError> {
        let known = self
            .known_queues
            .lock()
            .expect("known queues")
            .contains(name);
        if !known {
            self.ensure_queues(&[name])
                .await
                .map_err(|e| StoreError { operation: op, ..e })?;
        }
        Ok(())
    }

    /// Upserts a queue's settings (a `MERGE` when the queue is new, then one
    /// `UPDATE`).
    pub(super) async fn put_queue(&self, s: &QueueSettings) -> Result<(), StoreError> {
        let op = "queue_put";
        self.ensure_known(op, &s.name).await?;
        let null = "CAST(NULL AS NUMBER)".to_string();
        let int = |v: Option<i64>| v.map_or(null.clone(), sql::int);
        let ms_of =
            |d: Option<Duration>| int(d.map(|d| d.as_millis().min(i64::MAX as u128) as i64));
        let rate = s
            .rate_per_second
            .filter(|r| r.is_finite())
            .map_or("CAST(NULL AS FLOAT)".to_string(), |r| {
                format!("CAST({r:?} AS FLOAT)")
            });
        self.exec(
            op,
            &format!(
                "UPDATE QUEUES SET paused = {paused}, max_concurrency = {mc}, \
                 rate_per_second = {rate}, burst = {burst}, max_retries = {mr}, \
                 timeout_ms = {t}, backoff_ms = {b}, backoff_max_ms = {bm}, updated_ts = SYSDATE() \
                 WHERE name = {name}",
                paused = if s.paused { "TRUE" } else { "FALSE" },
                mc = int(s.max_concurrency.map(i64::from)),
                burst = int(s.burst.map(i64::from)),
                mr = int(s.max_retries.map(i64::from)),
                t = ms_of(s.timeout),
                b = ms_of(s.backoff),
                bm = ms_of(s.backoff_max),
                name = sql::text(&s.name),
            ),
        )
        .await?;
        Ok(())
    }

    /// Pauses or resumes one queue: one `UPDATE` of that column alone.
    pub(super) async fn pause_queue(&self, name: &str, paused: bool) -> Result<(), StoreError> {
        let op = "queue_pause";
        self.ensure_known(op, name).await?;
        self.exec(
            op,
            &format!(
                "UPDATE QUEUES SET paused = {}, updated_ts = SYSDATE() WHERE name = {}",
                if paused { "TRUE" } else { "FALSE" },
                sql::text(name),
            ),
        )
        .await?;
        Ok(())
    }
}
