//! Step search and bulk actions (see `fleet_q_actors::search` for the bounded
//! window). Every value a client gives is a bound parameter.

use super::*;

/// The candidate rows of a search, newest first, at most `?scan` of them:
/// `FROM STEP_TRACKER <index> WHERE <cond>` (see the module docs of
/// `fleet_q_actors::search`). A status filter is written as a literal (it is
/// one of five fixed words, never client text) so that SQLite can prove the
/// partial index's condition, and the index is named: left to itself the
/// planner walks the primary key backwards to avoid a sort, and a filter on a
/// few pending rows then reads the whole table.
fn candidates(p: &SearchParams, args: &mut Vec<SqlValue>) -> String {
    let f = &p.filter;
    if let Some(id) = f.step_id {
        args.push(id_val(id));
        return "STEP_TRACKER WHERE step_id = ?".into();
    }
    if let Some(k) = &f.idempotency_key {
        args.push(SqlValue::Text(k.clone()));
        return "STEP_TRACKER WHERE idempotency_key = ?".into();
    }
    let mut cond = Vec::new();
    let from = match f.status {
        // Live rows only: every live row of that status, sorted.
        Some(s @ (StepStatus::Pending | StepStatus::Claimed)) => {
            cond.push(format!("status = '{s}' AND {LIVE}"));
            "STEP_TRACKER INDEXED BY step_tracker_live_q"
        }
        // Failed rows only, in id order.
        Some(StepStatus::Failed) => {
            cond.push("status = 'failed'".to_string());
            "STEP_TRACKER INDEXED BY step_tracker_failed"
        }
        _ => "STEP_TRACKER",
    };
    let (upper, lower) = p.id_range();
    if let Some(u) = upper {
        cond.push("step_id < ?".into());
        args.push(id_val(u));
    }
    if let Some(l) = lower {
        cond.push("step_id >= ?".into());
        args.push(id_val(l));
    }
    if cond.is_empty() {
        cond.push("1 = 1".into());
    }
    format!("{from} WHERE {}", cond.join(" AND "))
}

/// The filters tested on each candidate.
fn filters(f: &StepFilter, args: &mut Vec<SqlValue>) -> String {
    let mut cond = vec!["1 = 1".to_string()];
    if let Some(s) = f.status {
        cond.push("status = ?".into());
        args.push(SqlValue::Text(s.to_string()));
    }
    if let Some(t) = &f.step_type {
        cond.push("step_type = ?".into());
        args.push(SqlValue::Text(t.clone()));
    }
    if let Some(q) = &f.queue {
        cond.push("queue = ?".into());
        args.push(SqlValue::Text(q.clone()));
    }
    if let Some(p) = f.priority {
        cond.push("priority = ?".into());
        args.push(SqlValue::Integer(p.into()));
    }
    if let Some(t) = f.created_from {
        cond.push("created_ts >= ?".into());
        args.push(SqlValue::Integer(t.timestamp_millis()));
    }
    if let Some(t) = f.created_to {
        cond.push("created_ts < ?".into());
        args.push(SqlValue::Integer(t.timestamp_millis()));
    }
    if let Some(t) = &f.text {
        // instr: a plain substring test, no LIKE wildcards to escape.
        cond.push("(instr(payload, ?) > 0 OR instr(COALESCE(last_error, ''), ?) > 0)".into());
        args.push(SqlValue::Text(t.clone()));
        args.push(SqlValue::Text(t.clone()));
    }
    cond.join(" AND ")
}

/// Runs a search on one connection: the matches of the window, then the
/// window's size and oldest id (an index-only walk of the same rows) for the
/// cursor.
pub(super) fn search(c: &Connection, p: &SearchParams) -> rusqlite::Result<SearchPage> {
    let scan = p
        .scan_limit
        .clamp(1, fleet_q_actors::search::MAX_SCAN_LIMIT);
    let mut cand_args = Vec::new();
    let cand = candidates(p, &mut cand_args);
    let mut filter_args = Vec::new();
    let filt = filters(&p.filter, &mut filter_args);
    // A subquery with LIMIT under an outer WHERE is not flattened: SQLite reads
    // the window, then filters it.
    let sql = format!(
        "SELECT {STEP_COLS} FROM (SELECT * FROM {cand} ORDER BY step_id DESC LIMIT ?) \
         WHERE {filt} ORDER BY step_id DESC LIMIT ?"
    );
    let mut args = cand_args.clone();
    args.push(SqlValue::Integer(scan.into()));
    args.extend(filter_args);
    args.push(SqlValue::Integer(i64::from(p.limit) + 1));
    let mut st = c.prepare_cached(&sql)?;
    let mut steps: Vec<Step> = st
        .query_map(rusqlite::params_from_iter(args), step_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    let mut window = cand_args;
    window.push(SqlValue::Integer(scan.into()));
    let (scanned, oldest): (i64, Option<Vec<u8>>) = c
        .prepare_cached(&format!(
            "SELECT COUNT(*), MIN(step_id) FROM (SELECT step_id FROM {cand} \
             ORDER BY step_id DESC LIMIT ?)"
        ))?
        .query_row(rusqlite::params_from_iter(window), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let single = p.filter.step_id.is_some() || p.filter.idempotency_key.is_some();
    let next = if steps.len() > p.limit as usize {
        steps.truncate(p.limit as usize);
        steps.last().map(|s| s.step_id)
    } else if !single && scanned >= i64::from(scan) {
        oldest.and_then(|b| <[u8; 16]>::try_from(b).ok().map(StepId::from_bytes))
    } else {
        None
    };
    Ok(SearchPage {
        steps,
        next,
        scanned: scanned.max(0) as u64,
    })
}

/// Applies a bulk action in one write transaction, each step by the same
/// statement as its single-step form, with the step totals kept.
pub(super) fn bulk(
    c: &Connection,
    now: i64,
    totals: &mut Totals,
    action: BulkAction,
    ids: &[StepId],
) -> Result<Vec<StepId>, StoreError> {
    let op = "steps_bulk";
    let sql = match action {
        BulkAction::Retry => {
            "UPDATE STEP_TRACKER SET status = 'pending', retry_count = 0, claimed_by = NULL, \
             run_at = ?1, last_update_ts = ?1 WHERE step_id = ?2 AND status = 'failed' \
             RETURNING step_type"
        }
        BulkAction::Cancel => {
            "UPDATE STEP_TRACKER SET status = 'cancelled', last_update_ts = ?1 \
             WHERE step_id = ?2 AND status = 'pending' RETURNING step_type"
        }
    };
    let to = match action {
        BulkAction::Retry => StepStatus::Pending,
        BulkAction::Cancel => StepStatus::Cancelled,
    };
    let mut st = c.prepare_cached(sql).map_err(|e| map_err(op, e))?;
    let mut changed = Vec::new();
    for id in ids {
        let t: Option<String> = st
            .query_row(params![now, id_val(*id)], |r| r.get(0))
            .optional()
            .map_err(|e| map_err(op, e))?;
        if let Some(t) = t {
            totals.moved(&t, action.applies_to(), to, 1);
            changed.push(*id);
        }
    }
    Ok(changed)
}
