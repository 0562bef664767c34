//! Statistics: the leader's shared stats row (`FLEET_STATS`), read by every
//! pod, and the direct count a non-sharing caller gets.

use super::*;

impl SnowflakeStore {
    /// Live counts from the rows still pending or claimed; finished counts
    /// advanced over the rows whose last update falls between the previous
    /// watermark and `now - lag`, so each statement reads live rows and new
    /// finishes only (micro-partitions of old finished rows are pruned by their
    /// `status` and `last_update_ts` ranges). The first publish counts every
    /// finished row once. The row is written by a `MERGE` that only moves the
    /// watermark forward, so a deposed leader publishing late changes nothing.
    pub(super) async fn publish_stats(&self, p: StatsParams) -> Result<QueueStats, StoreError> {
        let op = "stats_publish";
        let prev = self
            .exec(
                op,
                "SELECT watermark_ms AS wm, body AS body FROM FLEET_STATS WHERE name = 'queue' \
                 ORDER BY watermark_ms DESC LIMIT 1",
            )
            .await?;
        let (from, mut shared) = match prev.first() {
            Some(r) => (
                r.int("wm").ok_or_else(|| bad(op, "watermark"))?,
                serde_json::from_str::<SharedStats>(&r.text("body").unwrap_or_default())
                    .map_err(|_| bad(op, "statistics"))?,
            ),
            None => (0, SharedStats::default()),
        };
        let lag = ms(p.lag);
        let rows = self
            .exec(
                op,
                &format!(
                    "SELECT 'live' AS part, status AS status, step_type AS step_type, priority AS priority, \
                       COALESCE(queue, 'default') AS queue, COUNT(*) AS n, \
                       MIN(CASE WHEN status = 'pending' AND run_at <= SYSDATE() THEN DATE_PART(EPOCH_MILLISECOND, run_at) END) AS ms \
                     FROM STEP_TRACKER WHERE status IN ('pending', 'claimed') \
                     GROUP BY status, step_type, priority, COALESCE(queue, 'default') \
                     UNION ALL \
                     SELECT 'done' AS part, status AS status, step_type AS step_type, 0 AS priority, \
                       CAST(NULL AS VARCHAR) AS queue, COUNT(*) AS n, \
                       CAST(NULL AS NUMBER(19,0)) AS ms \
                     FROM STEP_TRACKER WHERE status IN ('completed', 'failed', 'cancelled') \
                       AND last_update_ts > DATEADD(millisecond, {from}, TO_TIMESTAMP_NTZ('1970-01-01 00:00:00')) \
                       AND last_update_ts <= DATEADD(millisecond, {neg_lag}, SYSDATE()) \
                     GROUP BY status, step_type \
                     UNION ALL \
                     SELECT 'now' AS part, NULL AS status, NULL AS step_type, 0 AS priority, \
                       CAST(NULL AS VARCHAR) AS queue, 0 AS n, \
                       DATE_PART(EPOCH_MILLISECOND, SYSDATE()) AS ms",
                    from = sql::int(from),
                    neg_lag = sql::int(-lag),
                ),
            )
            .await?;
        let now = rows
            .iter()
            .find(|r| r.text("part").as_deref() == Some("now"))
            .and_then(|r| r.int("ms"))
            .ok_or_else(|| bad(op, "store time"))?;
        let mut stats = QueueStats {
            as_of: Some(ts(now)),
            ..Default::default()
        };
        let mut oldest: Option<i64> = None;
        for r in &rows {
            let part = r.text("part").unwrap_or_default();
            if part == "now" {
                continue;
            }
            let status: StepStatus = r
                .text("status")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(op, "status"))?;
            let t = r.text("step_type").unwrap_or_default();
            let n = r.int("n").unwrap_or(0).max(0) as u64;
            if part == "done" {
                let slot = match status {
                    StepStatus::Completed => 0,
                    StepStatus::Failed => 1,
                    _ => 2,
                };
                shared.finished.entry(t).or_default()[slot] += n;
                continue;
            }
            stats.counts.add(status, n);
            stats.by_type.entry(t).or_default().add(status, n);
            stats
                .by_queue
                .entry(r.text("queue").unwrap_or_else(|| "default".into()))
                .or_default()
                .add(status, n);
            if status == StepStatus::Pending {
                *stats
                    .pending_by_priority
                    .entry(r.int("priority").unwrap_or(0) as i32)
                    .or_default() += n;
            }
            if let Some(o) = r.int("ms") {
                oldest = Some(oldest.map_or(o, |x: i64| x.min(o)));
            }
        }
        stats.oldest_pending_age =
            oldest.map(|o| Duration::from_millis(now.saturating_sub(o).max(0) as u64));
        for (t, [c, f, x]) in &shared.finished {
            let by = stats.by_type.entry(t.clone()).or_default();
            for (status, n) in [
                (StepStatus::Completed, *c),
                (StepStatus::Failed, *f),
                (StepStatus::Cancelled, *x),
            ] {
                by.add(status, n);
                stats.counts.add(status, n);
            }
        }
        // Clients choose step types: keep the row's size bounded.
        fold_types(
            &mut shared.finished,
            STATS_TYPES,
            |k| k.iter().sum(),
            |a, b| {
                for i in 0..3 {
                    a[i] += b[i];
                }
            },
        );
        stats.fold_types();
        shared.stats = stats.clone();
        let body = serde_json::to_string(&shared)
            .map_err(|e| StoreError::fatal(op, format!("encoding statistics: {e}")))?;
        let watermark = now - lag;
        if watermark > from {
            self.exec(
                op,
                &format!(
                    "MERGE INTO FLEET_STATS USING (SELECT 'queue' AS name, {wm} AS wm, {by} AS by, {body} AS body) s \
                     ON FLEET_STATS.name = s.name \
                     WHEN MATCHED AND FLEET_STATS.watermark_ms < s.wm THEN UPDATE SET \
                       watermark_ms = s.wm, computed_at = SYSDATE(), computed_by = s.by, body = s.body \
                     WHEN NOT MATCHED THEN INSERT (name, watermark_ms, computed_at, computed_by, body) \
                       VALUES (s.name, s.wm, SYSDATE(), s.by, s.body)",
                    wm = sql::int(watermark),
                    by = sql::text(&p.pod_id),
                    body = sql::text(&body),
                ),
            )
            .await?;
        }
        Ok(stats)
    }

    pub(super) async fn shared_stats(&self) -> Result<Option<QueueStats>, StoreError> {
        let op = "stats_shared";
        let rows = self
            .exec(
                op,
                "SELECT body AS body FROM FLEET_STATS WHERE name = 'queue' \
                 ORDER BY watermark_ms DESC LIMIT 1",
            )
            .await?;
        rows.first()
            .map(|r| {
                serde_json::from_str::<SharedStats>(&r.text("body").unwrap_or_default())
                    .map(|s| s.stats)
                    .map_err(|_| bad(op, "statistics"))
            })
            .transpose()
    }

    pub(super) async fn count_stats(&self) -> Result<QueueStats, StoreError> {
        let op = "queue_stats";
        let rows = self
            .exec(
                op,
                "SELECT status AS status, step_type AS step_type, priority AS priority, \
                 COALESCE(queue, 'default') AS queue, COUNT(*) AS n, \
                 MIN(CASE WHEN status = 'pending' AND run_at <= SYSDATE() THEN DATE_PART(EPOCH_MILLISECOND, run_at) END) AS oldest_ms, \
                 MAX(DATE_PART(EPOCH_MILLISECOND, SYSDATE())) AS now_ms \
                 FROM STEP_TRACKER GROUP BY status, step_type, priority, COALESCE(queue, 'default')",
            )
            .await?;
        let now = match rows.first().and_then(|r| r.int("now_ms")) {
            Some(n) => n,
            None => self.now().await?.timestamp_millis(),
        };
        let mut stats = QueueStats {
            as_of: Some(ts(now)),
            ..Default::default()
        };
        let mut by_prio: BTreeMap<i32, u64> = BTreeMap::new();
        let mut oldest: Option<i64> = None;
        for r in &rows {
            let status: StepStatus = r
                .text("status")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(op, "status"))?;
            let n = r.int("n").unwrap_or(0).max(0) as u64;
            stats.counts.add(status, n);
            stats
                .by_type
                .entry(r.text("step_type").unwrap_or_default())
                .or_default()
                .add(status, n);
            if matches!(status, StepStatus::Pending | StepStatus::Claimed) {
                stats
                    .by_queue
                    .entry(r.text("queue").unwrap_or_else(|| "default".into()))
                    .or_default()
                    .add(status, n);
            }
            if status == StepStatus::Pending {
                *by_prio
                    .entry(r.int("priority").unwrap_or(0) as i32)
                    .or_default() += n;
            }
            if let Some(o) = r.int("oldest_ms") {
                oldest = Some(oldest.map_or(o, |x: i64| x.min(o)));
            }
        }
        stats.pending_by_priority = by_prio;
        stats.oldest_pending_age =
            oldest.map(|o| Duration::from_millis(now.saturating_sub(o).max(0) as u64));
        Ok(stats)
    }
}
