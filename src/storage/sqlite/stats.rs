//! Statistics: live rows through the live index, finished counts from
//! STEP_TOTALS; nothing here scans history.

use super::*;

impl SqliteStore {
    pub(super) async fn count_stats(&self) -> Result<QueueStats, StoreError> {
        self.read("queue_stats", move |c, now| {
            let mut stats = QueueStats {
                as_of: Some(ts(now)),
                ..Default::default()
            };
            // Live rows through the live index (it holds nothing else); one read
            // transaction with the totals below, so the two agree.
            c.execute_batch("BEGIN")?;
            let out = (|| {
                let mut st = c.prepare_cached(&format!(
                    "SELECT status, step_type, priority, queue, COUNT(*), \
                     MIN(CASE WHEN status = 'pending' AND run_at <= ?1 THEN run_at END) \
                     FROM STEP_TRACKER INDEXED BY step_tracker_live_q WHERE {LIVE} \
                     GROUP BY status, step_type, priority, queue"
                ))?;
                let mut rows = st.query([now])?;
                let mut oldest: Option<i64> = None;
                let mut by_prio: BTreeMap<i32, u64> = BTreeMap::new();
                while let Some(r) = rows.next()? {
                    let status: String = r.get(0)?;
                    let status: StepStatus = status.parse().map_err(|e| bad_row("status", e))?;
                    let t: String = r.get(1)?;
                    let prio: i32 = r.get(2)?;
                    let queue: String = r.get(3)?;
                    let n: i64 = r.get(4)?;
                    let n = n.max(0) as u64;
                    stats.counts.add(status, n);
                    stats.by_type.entry(t).or_default().add(status, n);
                    stats.by_queue.entry(queue).or_default().add(status, n);
                    if status == StepStatus::Pending {
                        *by_prio.entry(prio).or_default() += n;
                    }
                    if let Some(due) = r.get::<_, Option<i64>>(5)? {
                        oldest = Some(oldest.map_or(due, |o| o.min(due)));
                    }
                }
                stats.pending_by_priority = by_prio;
                stats.oldest_pending_age =
                    oldest.map(|o| Duration::from_millis(now.saturating_sub(o).max(0) as u64));
                // Finished rows from STEP_TOTALS: completed is what is neither live
                // nor failed nor cancelled. Fleet-wide from the row of every type;
                // by type for the largest types only, the rest summed.
                let all: [i64; 3] = c
                    .prepare_cached(
                        "SELECT row_count, failed, cancelled FROM STEP_TOTALS WHERE step_type = ?1",
                    )?
                    .query_row([totals::ALL], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?]))
                    .optional()?
                    .unwrap_or_default();
                let live_total = (stats.counts.pending + stats.counts.claimed) as i64;
                let fleet = [
                    (StepStatus::Failed, all[1]),
                    (StepStatus::Cancelled, all[2]),
                    (StepStatus::Completed, all[0] - live_total - all[1] - all[2]),
                ];
                for (status, n) in fleet {
                    stats.counts.add(status, n.max(0) as u64);
                }
                let mut st = c.prepare_cached(
                    "SELECT step_type, row_count, failed, cancelled FROM STEP_TOTALS \
                     INDEXED BY step_totals_by_size WHERE step_type <> ?1 \
                     ORDER BY row_count DESC LIMIT ?2",
                )?;
                let mut rows = st.query(params![totals::ALL, STATS_TYPES as i64])?;
                let mut listed_sum = [0i64; 3];
                let mut listed = HashSet::new();
                while let Some(r) = rows.next()? {
                    let t: String = r.get(0)?;
                    let d: [i64; 3] = [r.get(1)?, r.get(2)?, r.get(3)?];
                    for i in 0..3 {
                        listed_sum[i] += d[i];
                    }
                    let by = stats.by_type.entry(t.clone()).or_default();
                    add_finished(by, d);
                    listed.insert(t);
                }
                // Types beyond the largest: their finished rows, summed.
                let rest: [i64; 3] = std::array::from_fn(|i| all[i] - listed_sum[i]);
                if rest.iter().any(|n| *n > 0) {
                    // `rest` counts the live rows of those types too; their live
                    // counts stay under their own names.
                    let live_unlisted: i64 = stats
                        .by_type
                        .iter()
                        .filter(|(t, _)| !listed.contains(*t))
                        .map(|(_, by)| (by.pending + by.claimed) as i64)
                        .sum();
                    let other = stats.by_type.entry(OTHER_TYPES.to_string()).or_default();
                    other.failed += rest[1].max(0) as u64;
                    other.cancelled += rest[2].max(0) as u64;
                    other.completed += (rest[0] - live_unlisted - rest[1] - rest[2]).max(0) as u64;
                }
                stats.fold_types();
                Ok(())
            })();
            // A connection must go back to the pool outside any transaction, or
            // its next reader would see this snapshot.
            if c.execute_batch("COMMIT").is_err() {
                c.execute_batch("ROLLBACK")?;
            }
            out.map(|()| stats)
        })
        .await
    }
}
