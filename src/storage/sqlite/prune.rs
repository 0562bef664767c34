//! Retention: deleting expired rows in slices the writer runs only when no
//! other write waits, and abandons the moment one is sent.

use super::*;

/// The largest prune slice, in rows: a few milliseconds of writer time, which
/// no write waits for (a slice yields to it), so it is bounded by what one
/// slice's commit adds to a write that arrives during it (its WAL pages), and
/// by the work thrown away when a slice yields late in its run.
pub(super) const SLICE_MAX: u64 = 512;

/// The smallest prune slice, in rows (~0.05 ms here): one of this size is not
/// interrupted, so pruning moves on even when writes arrive faster than any
/// larger slice can finish between them.
pub(super) const SLICE_MIN: u64 = 16;

/// The next slice size after one of `size` rows completed or yielded: double
/// while slices complete (up to [`SLICE_MAX`]), halve when one yielded (down to
/// [`SLICE_MIN`]). So slices settle at what fits in the writer's idle gaps.
pub(super) fn next_slice(size: u64, yielded: bool) -> u64 {
    if yielded {
        (size / 2).max(SLICE_MIN)
    } else {
        size.saturating_mul(2).clamp(SLICE_MIN, SLICE_MAX)
    }
}

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
