//! Retention: deleting expired rows in slices the writer runs only when no
//! other write waits.

use super::*;

/// Rows one prune slice deletes: ~0.15 ms of writer time here (BENCHMARKS.md,
/// History), the most a write waits behind pruning.
pub(super) const PRUNE_SLICE: u64 = 64;

/// One prune slice: deletes up to `want` expired rows in step id order, after
/// the id `after`. Returns the rows deleted and the last id deleted (where the
/// next slice resumes).
pub(super) fn prune_slice(
    c: &Connection,
    now: i64,
    totals: &mut Totals,
    retention: Duration,
    want: u64,
    after: Vec<u8>,
) -> Result<(u64, Vec<u8>), StoreError> {
    let op = "steps_prune";
    let cutoff = now.saturating_sub(ms(retention));
    // Ids are UUIDv7, minted before their row is written, so a step last
    // updated before `cutoff` has an id below the floor of `cutoff`: the
    // primary key bounds the scan to old rows, with no extra index on the
    // hot path. Every process on the file mints ids and reads store time
    // from the same machine clock; the minute of slack covers a clock
    // stepped back. It is kept small because every chunk that finds
    // nothing more to delete scans the rows between the oldest live one
    // and the floor: with an hour of slack, a caught-up pruner read an
    // hour of finished rows each time, holding the writer for 100 ms
    // and more at a few hundred steps/s. Resuming after the last deleted id
    // steps over live rows below the floor once per chunk, not per slice.
    let floor = id_floor(cutoff.saturating_add(60_000));
    let mut st = c
        .prepare_cached(
            "DELETE FROM STEP_TRACKER WHERE rowid IN (SELECT rowid FROM STEP_TRACKER \
             WHERE step_id < ?1 AND step_id > ?4 \
             AND status IN ('completed', 'failed', 'cancelled') \
             AND last_update_ts < ?2 ORDER BY step_id LIMIT ?3) \
             RETURNING step_type, status, step_id",
        )
        .map_err(|e| map_err(op, e))?;
    let mut rows = st
        .query(params![
            floor,
            cutoff,
            want as i64,
            SqlValue::Blob(after.clone())
        ])
        .map_err(|e| map_err(op, e))?;
    let (mut n, mut last) = (0u64, after);
    // Rows come back in deletion order, mostly runs of one type.
    let mut run: Option<(String, String, i64)> = None;
    let mut flush = |run: Option<(String, String, i64)>| -> Result<(), StoreError> {
        if let Some((t, status, k)) = run {
            let status: StepStatus = status
                .parse()
                .map_err(|e| StoreError::fatal(op, format!("stored status: {e}")))?;
            totals.rows(&t, status, -k);
        }
        Ok(())
    };
    while let Some(r) = rows.next().map_err(|e| map_err(op, e))? {
        let t: String = r.get(0).map_err(|e| map_err(op, e))?;
        let status: String = r.get(1).map_err(|e| map_err(op, e))?;
        let id: Vec<u8> = r.get(2).map_err(|e| map_err(op, e))?;
        n += 1;
        if id > last {
            last = id;
        }
        match &mut run {
            Some((rt, rs, k)) if *rt == t && *rs == status => *k += 1,
            _ => flush(run.replace((t, status, 1)))?,
        }
    }
    flush(run)?;
    Ok((n, last))
}
