//! Step search and bulk actions (see `fleet_q_actors::search` for the bounded
//! window). Client text reaches SQL only base64-encoded ([`sql::text`]).
//!
//! A search is two statements: the ids of the matches in the window (with the
//! window's size, oldest id and match count, proving the answer whole), then
//! those steps through [`SnowflakeStore::read_steps_checked`]. Snowflake has no
//! indexes: the window's `ORDER BY step_id DESC LIMIT n` is served by
//! micro-partition pruning on the time-ordered ids, and the narrowing by status
//! and created range is what keeps old partitions unread.

use super::*;

fn at_ms(ms: i64) -> String {
    format!("DATEADD(millisecond, {ms}, TO_TIMESTAMP_NTZ('1970-01-01 00:00:00'))")
}

/// The candidate rows of the window (`c` in the statement).
fn candidates(p: &SearchParams) -> String {
    let f = &p.filter;
    if let Some(id) = f.step_id {
        return format!("step_id = {}", sql::id(id));
    }
    if let Some(k) = &f.idempotency_key {
        return format!("idempotency_key = {}", sql::text(k));
    }
    let mut cond = vec!["TRUE".to_string()];
    if let Some(s @ (StepStatus::Pending | StepStatus::Claimed | StepStatus::Failed)) = f.status {
        cond.push(format!("status = {}", sql::text(&s.to_string())));
    }
    let (upper, lower) = p.id_range();
    if let Some(u) = upper {
        cond.push(format!("step_id < {}", sql::id(u)));
    }
    if let Some(l) = lower {
        cond.push(format!("step_id >= {}", sql::id(l)));
    }
    cond.join(" AND ")
}

/// The filters tested on each candidate (`c`).
fn filters(f: &StepFilter) -> String {
    let mut cond = vec!["TRUE".to_string()];
    if let Some(s) = f.status {
        cond.push(format!("c.status = {}", sql::text(&s.to_string())));
    }
    if let Some(t) = &f.step_type {
        cond.push(format!("c.step_type = {}", sql::text(t)));
    }
    if let Some(q) = &f.queue {
        cond.push(format!("COALESCE(c.queue, 'default') = {}", sql::text(q)));
    }
    if let Some(p) = f.priority {
        cond.push(format!("c.priority = {}", sql::int(p.into())));
    }
    if let Some(t) = f.created_from {
        cond.push(format!("c.created_ts >= {}", at_ms(t.timestamp_millis())));
    }
    if let Some(t) = f.created_to {
        cond.push(format!("c.created_ts < {}", at_ms(t.timestamp_millis())));
    }
    if let Some(t) = &f.text {
        let t = sql::text(t);
        cond.push(format!(
            "(POSITION({t} IN c.payload) > 0 OR POSITION({t} IN COALESCE(c.last_error, '')) > 0)"
        ));
    }
    cond.join(" AND ")
}

impl SnowflakeStore {
    pub(super) async fn search(&self, p: SearchParams) -> Result<SearchPage, StoreError> {
        let op = "steps_search";
        let scan = p
            .scan_limit
            .clamp(1, fleet_q_actors::search::MAX_SCAN_LIMIT);
        let window = format!(
            "SELECT * FROM STEP_TRACKER WHERE {} ORDER BY step_id DESC LIMIT {scan}",
            candidates(&p)
        );
        let filt = filters(&p.filter);
        let want = p.limit + 1;
        let rows = self
            .exec(
                op,
                &format!(
                    "SELECT m.step_id AS step_id, w.total_rows AS total_rows, w.oldest AS oldest, \
                     w.matched AS matched FROM \
                     (SELECT COUNT(*) AS total_rows, MIN(c.step_id) AS oldest, \
                      SUM(CASE WHEN {filt} THEN 1 ELSE 0 END) AS matched FROM ({window}) c) w \
                     LEFT JOIN (SELECT c.step_id AS step_id FROM ({window}) c WHERE {filt} \
                      ORDER BY c.step_id DESC LIMIT {want}) m ON TRUE"
                ),
            )
            .await?;
        let first = rows
            .first()
            .ok_or_else(|| StoreError::transient(op, "the search's answer was lost"))?;
        let scanned = first.int("total_rows").unwrap_or(0).max(0) as u64;
        let matched = first.int("matched").unwrap_or(0).max(0) as u64;
        let oldest = first.text("oldest").and_then(|s| s.parse::<StepId>().ok());
        let mut ids: Vec<StepId> = rows
            .iter()
            .filter_map(|r| r.text("step_id").and_then(|s| s.parse().ok()))
            .collect();
        if (ids.len() as u64) < matched.min(u64::from(want)) {
            return Err(StoreError::transient(
                op,
                "part of the search's answer was lost",
            ));
        }
        ids.sort_by_key(|id| std::cmp::Reverse(*id));
        let single = p.filter.step_id.is_some() || p.filter.idempotency_key.is_some();
        let next = if ids.len() > p.limit as usize {
            ids.truncate(p.limit as usize);
            ids.last().copied()
        } else if !single && scanned >= u64::from(scan) {
            oldest
        } else {
            None
        };
        let mut steps = if ids.is_empty() {
            Vec::new()
        } else {
            let list: Vec<String> = ids.iter().map(|id| sql::id(*id)).collect();
            self.read_steps_checked(
                op,
                &format!("s.step_id IN ({})", list.join(", ")),
                ids.len() as u32,
            )
            .await?
        };
        steps.sort_by_key(|s| std::cmp::Reverse(s.step_id));
        Ok(SearchPage {
            steps,
            next,
            scanned,
        })
    }

    /// One UPDATE per chunk of ids, tagged with a token; the read-back of the
    /// token says which rows it changed.
    pub(super) async fn bulk(
        &self,
        action: BulkAction,
        ids: Vec<StepId>,
    ) -> Result<Vec<StepId>, StoreError> {
        let op = "steps_bulk";
        let set = match action {
            BulkAction::Retry => {
                "status = 'pending', retry_count = 0, claimed_by = NULL, run_at = SYSDATE()"
            }
            BulkAction::Cancel => "status = 'cancelled'",
        };
        let from = sql::text(&action.applies_to().to_string());
        let mut changed = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let token = uuid::Uuid::now_v7();
            let list: Vec<String> = chunk.iter().map(|id| sql::id(*id)).collect();
            let first = self
                .exec(
                    op,
                    &format!(
                        "UPDATE STEP_TRACKER SET {set}, last_update_ts = SYSDATE(), op_token = {tok} \
                         WHERE step_id IN ({ids}) AND status = {from}",
                        tok = sql::token(&token),
                        ids = list.join(", ")
                    ),
                )
                .await;
            if let Err(e) = &first {
                if !e.outcome_unknown() {
                    return Err(e.clone());
                }
            }
            let by_token = format!("s.op_token = {}", sql::token(&token));
            let rows = self
                .read_back(op, || {
                    self.read_checked(op, "step_id AS step_id", &by_token, chunk.len() as u32)
                })
                .await?;
            if rows.is_empty() {
                first?;
            }
            changed.extend(
                rows.iter()
                    .filter_map(|r| r.text("step_id").and_then(|s| s.parse::<StepId>().ok())),
            );
        }
        Ok(changed)
    }
}
