//! Fenced updates (every transition out of `claimed` names its lease) and the
//! helpers finishes, cancels and retries share.

use super::*;

/// Runs one fenced UPDATE per lease. `variants` are tried in order, each a
/// statement and the status a matching row ends in; the first that changes the row
/// wins, and a lease no variant matches is rejected. Plain `execute` with the change
/// count: RETURNING would build an ephemeral table per row.
pub(super) fn fenced_update(
    conn: &Connection,
    op: &'static str,
    variants: &[(&str, StepStatus)],
    leases: impl Iterator<Item = (Lease, Vec<SqlValue>, usize)>,
) -> Result<FencedReport, StoreError> {
    let mut prepared = Vec::with_capacity(variants.len());
    for (sql, status) in variants {
        prepared.push((
            conn.prepare_cached(sql).map_err(|e| map_err(op, e))?,
            *status,
        ));
    }
    let mut report = FencedReport::default();
    for (lease, mut values, first_variant) in leases {
        values.push(id_val(lease.step_id));
        values.push(SqlValue::Text(lease.pod_id.clone()));
        values.push(SqlValue::Integer(lease.attempt.into()));
        let mut applied = None;
        for (st, status) in prepared.iter_mut().skip(first_variant) {
            let n = st
                .execute(rusqlite::params_from_iter(values.iter()))
                .map_err(|e| map_err(op, e))?;
            if n == 1 {
                applied = Some(*status);
                break;
            }
        }
        match applied {
            Some(status) => report.applied.push((lease.step_id, status)),
            None => report.rejected.push(lease),
        }
    }
    Ok(report)
}

/// The partial-index condition of `step_tracker_live_q`, repeated verbatim in the
/// queries that use it: SQLite uses a partial index only when the query's WHERE
/// contains the index's terms, and cannot infer `IN (…)` from `= 'pending'`.
pub(super) const LIVE: &str = "status IN ('pending', 'claimed')";

/// The fence every transition out of `claimed` carries; the three last
/// parameters are the lease.
pub(super) const FENCE: &str =
    "step_id = ? AND claimed_by = ? AND attempt = ? AND status = 'claimed'";

/// Completes a chunk of leases in one fenced statement; the rows it returns are
/// the leases that held, the rest were fenced out. The unary `+` on `status` keeps
/// the planner on the primary key: otherwise it may drive the join from
/// `step_tracker_live_q (status = 'claimed')` and compare every claimed row with every
/// VALUES row (measured: 20× slower).
pub(super) fn complete_chunk(
    c: &Connection,
    now: i64,
    chunk: &[(Lease, String)],
) -> Result<FencedReport, StoreError> {
    let op = "steps_finish";
    let sql = format!(
        "UPDATE STEP_TRACKER SET status = 'completed', last_update_ts = ?1, result = v.column4, last_error = NULL \
         FROM (VALUES {}) AS v \
         WHERE STEP_TRACKER.step_id = v.column1 AND STEP_TRACKER.claimed_by = v.column2 \
         AND STEP_TRACKER.attempt = v.column3 AND +STEP_TRACKER.status = 'claimed' \
         RETURNING STEP_TRACKER.step_id",
        vec!["(?, ?, ?, ?)"; chunk.len()].join(", ")
    );
    let mut values = Vec::with_capacity(1 + chunk.len() * 4);
    values.push(SqlValue::Integer(now));
    for (lease, result) in chunk {
        values.extend([
            id_val(lease.step_id),
            SqlValue::Text(lease.pod_id.clone()),
            SqlValue::Integer(lease.attempt.into()),
            SqlValue::Text(result.clone()),
        ]);
    }
    let mut st = c.prepare_cached(&sql).map_err(|e| map_err(op, e))?;
    let done: HashSet<StepId> = st
        .query_map(rusqlite::params_from_iter(values), |r| id_at(r, 0))
        .and_then(|rows| rows.collect())
        .map_err(|e| map_err(op, e))?;
    let mut report = FencedReport::default();
    for (lease, _) in chunk {
        if done.contains(&lease.step_id) {
            report.applied.push((lease.step_id, StepStatus::Completed));
        } else {
            report.rejected.push(lease.clone());
        }
    }
    Ok(report)
}

/// Adds a type's finished counts from its STEP_TOTALS row `[rows, failed,
/// cancelled]` to `by`, which already holds its live counts.
pub(super) fn add_finished(by: &mut StatusCounts, d: [i64; 3]) {
    let live = (by.pending + by.claimed) as i64;
    by.failed += d[1].max(0) as u64;
    by.cancelled += d[2].max(0) as u64;
    by.completed += (d[0] - live - d[1] - d[2]).max(0) as u64;
}

/// The type of the step `id` (which exists: the caller just changed it).
pub(super) fn step_type_of(
    c: &Connection,
    op: &'static str,
    id: SqlValue,
) -> Result<String, StoreError> {
    c.prepare_cached("SELECT step_type FROM STEP_TRACKER WHERE step_id = ?1")
        .and_then(|mut st| st.query_row([id], |r| r.get(0)))
        .map_err(|e| map_err(op, e))
}

pub(super) fn current_status(
    c: &Connection,
    op: &'static str,
    id: &SqlValue,
) -> Result<Option<StepStatus>, StoreError> {
    let s: Option<String> = c
        .prepare_cached("SELECT status FROM STEP_TRACKER WHERE step_id = ?1")
        .and_then(|mut st| st.query_row([id], |r| r.get(0)).optional())
        .map_err(|e| map_err(op, e))?;
    s.map(|s| {
        s.parse()
            .map_err(|e| StoreError::fatal(op, format!("stored status: {e}")))
    })
    .transpose()
}
