//! Reads whose row count is proven (claims and finishes read back by token) and
//! the fenced updates finishes and releases are made of.

use super::*;

impl SnowflakeStore {
    /// Steps matching `cond` (on `STEP_TRACKER s`), in step-id order, at most
    /// `limit`, with their count proven (see [`Self::read_checked`]).
    pub(super) async fn read_steps_checked(
        &self,
        op: &'static str,
        cond: &str,
        limit: u32,
    ) -> Result<Vec<Step>, StoreError> {
        self.read_checked(op, STEP_COLS, cond, limit)
            .await?
            .iter()
            .map(|r| step_from_row(op, r))
            .collect()
    }

    /// Rows of `cols` (which must include `step_id AS step_id`) for the steps
    /// matching `cond` (on `STEP_TRACKER s`), in step-id order, at most `limit`,
    /// with their count proven. `snowflake-api` 0.14 answers "no rows" when a
    /// chunked result's first part is empty, and puts the inline part last, so
    /// each read is one statement that always returns at least one row: the
    /// count of matching rows, joined with the rows themselves (none: one row of
    /// NULLs). An empty answer, or fewer rows than counted, means the client lost
    /// part of the result: it is read again in keyset pages small enough to come
    /// back whole (halved down to one row). Still short at one row: a transient
    /// error, never a silently shorter answer.
    pub(super) async fn read_checked(
        &self,
        op: &'static str,
        cols: &str,
        cond: &str,
        limit: u32,
    ) -> Result<Vec<Row>, StoreError> {
        let query = |extra: &str, n: u32| {
            format!(
                "SELECT t.*, c.total_rows AS total_rows FROM \
                 (SELECT COUNT(*) AS total_rows FROM (SELECT 1 AS one FROM STEP_TRACKER s WHERE {cond}{extra} LIMIT {n}) x) c \
                 LEFT JOIN (SELECT {cols} FROM STEP_TRACKER s WHERE {cond}{extra} ORDER BY s.step_id LIMIT {n}) t ON TRUE"
            )
        };
        let id_of = |r: &Row| r.text("step_id").unwrap_or_default();
        // One read and the number of rows it should have returned (`None`: the
        // answer was lost whole).
        let read = |extra: String, n: u32| async move {
            let rows = self.exec(op, &query(&extra, n)).await?;
            let expected = match rows.first() {
                None => None,
                Some(r) => Some(
                    r.int("total_rows")
                        .ok_or_else(|| bad(op, "row count"))?
                        .max(0) as usize,
                ),
            };
            let mut rows: Vec<Row> = rows
                .into_iter()
                .filter(|r| r.text("step_id").is_some())
                .collect();
            rows.sort_by_key(|r| id_of(r));
            Ok::<_, StoreError>((rows, expected))
        };
        let (rows, expected) = read(String::new(), limit).await?;
        if expected.is_some_and(|e| rows.len() >= e) {
            return Ok(rows);
        }
        let expected = expected.unwrap_or(limit as usize);
        tracing::warn!(
            op,
            expected,
            got = rows.len(),
            "a result came back short (a chunked result the client lost); reading it again in pages"
        );
        let mut out: Vec<Row> = Vec::new();
        let mut page = 16u32;
        while out.len() < expected {
            let want = page.min((expected - out.len()) as u32);
            let extra = out.last().map_or(String::new(), |l| {
                format!(" AND s.step_id > {}", sql::text(&id_of(l)))
            });
            let (got, due) = read(extra, want).await?;
            if let Some(due) = due.filter(|d| got.len() >= *d) {
                let done = due < want as usize;
                out.extend(got);
                if done {
                    break; // fewer rows remain than were expected at first
                }
            } else if page > 1 {
                page /= 2;
            } else {
                return Err(StoreError::transient(
                    op,
                    "a one-row result came back empty (the client lost a chunked result)",
                ));
            }
        }
        Ok(out)
    }

    pub(super) async fn read_steps(
        &self,
        op: &'static str,
        sql: &str,
    ) -> Result<Vec<Step>, StoreError> {
        self.exec(op, sql)
            .await?
            .iter()
            .map(|r| step_from_row(op, r))
            .collect()
    }

    /// Applies a fenced `UPDATE … FROM (VALUES …) v` tagged with a token, then
    /// reads back which leases held. Rows go in statements bounded by rows and by
    /// text size. A statement that fails fatally (not a transient error) is split
    /// until the rows that fail alone are found: the others land, and the failing
    /// ones are returned apart (with their error) for the caller to settle.
    pub(super) async fn fenced(
        &self,
        op: &'static str,
        set: &str,
        cols: &str,
        rows: Vec<(Lease, String)>,
        known: Option<StepStatus>,
    ) -> Result<(FencedReport, Vec<(Lease, StoreError)>), StoreError> {
        let mut report = FencedReport::default();
        let mut refused = Vec::new();
        let idx: Vec<usize> = (0..rows.len()).collect();
        let lens = rows
            .iter()
            .map(|(l, extra)| extra.len() + l.pod_id.len() * 4 / 3 + 96);
        let mut todo: Vec<Vec<usize>> = chunk_by_size(&idx, lens, CHUNK, MAX_STATEMENT_TEXT);
        todo.reverse();
        while let Some(chunk) = todo.pop() {
            let part: Vec<&(Lease, String)> = chunk.iter().map(|&i| &rows[i]).collect();
            match self.fenced_chunk(op, set, cols, &part, known).await {
                Ok((applied, rejected)) => {
                    report.applied.extend(applied);
                    report.rejected.extend(rejected);
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) if chunk.len() == 1 => refused.push((rows[chunk[0]].0.clone(), e)),
                Err(_) => {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    todo.push(b.to_vec());
                    todo.push(a.to_vec());
                }
            }
        }
        Ok((report, refused))
    }

    /// One fenced `UPDATE` and, unless its answer proves the outcome, the
    /// read-back by token. `known` is the status every applied row takes when
    /// the statement decides it alone (completions, releases): then an answer
    /// reporting as many rows updated as the chunk has distinct steps proves
    /// every lease held, and the read-back is skipped (one statement per
    /// finish group instead of two).
    pub(super) async fn fenced_chunk(
        &self,
        op: &'static str,
        set: &str,
        cols: &str,
        chunk: &[&(Lease, String)],
        known: Option<StepStatus>,
    ) -> Result<(Vec<(StepId, StepStatus)>, Vec<Lease>), StoreError> {
        let token = uuid::Uuid::now_v7();
        let values: Vec<String> = chunk
            .iter()
            .map(|(l, extra)| {
                format!(
                    "({}, {}, {}{})",
                    sql::id(l.step_id),
                    sql::b64_lit(&l.pod_id),
                    sql::int(l.attempt.into()),
                    extra
                )
            })
            .collect();
        let stmt = format!(
            "UPDATE STEP_TRACKER SET {set}, last_update_ts = SYSDATE(), op_token = {tok} \
             FROM (SELECT column1 AS sid, column2 AS pod, column3 AS att{cols} FROM VALUES {v}) v \
             WHERE STEP_TRACKER.step_id = v.sid AND STEP_TRACKER.claimed_by = BASE64_DECODE_STRING(v.pod) \
             AND STEP_TRACKER.attempt = v.att AND STEP_TRACKER.status = 'claimed'",
            tok = sql::token(&token),
            v = values.join(", ")
        );
        // The token tags the rows this UPDATE changed: the read-back below learns
        // what it did even when its answer was lost.
        let first = self.exec(op, &stmt).await;
        if let Err(e) = &first {
            if !e.outcome_unknown() {
                // Refused or never sent: nothing changed.
                return Err(e.clone());
            }
        }
        if let (Ok(rows), Some(status)) = (&first, known) {
            let distinct: std::collections::HashSet<StepId> =
                chunk.iter().map(|(l, _)| l.step_id).collect();
            if distinct.len() == chunk.len() && rows_reported(rows) == Some(chunk.len() as u64) {
                return Ok((
                    chunk.iter().map(|(l, _)| (l.step_id, status)).collect(),
                    Vec::new(),
                ));
            }
        }
        let by_token = format!("s.op_token = {}", sql::token(&token));
        let applied = self
            .read_back(op, || {
                self.read_checked(
                    op,
                    "step_id AS step_id, status AS status",
                    &by_token,
                    chunk.len() as u32,
                )
            })
            .await?;
        if applied.is_empty() {
            first?;
        }
        let mut got: HashMap<String, StepStatus> = HashMap::new();
        for r in &applied {
            if let (Some(id), Some(st)) = (
                r.text("step_id"),
                r.text("status").and_then(|s| s.parse().ok()),
            ) {
                got.insert(id, st);
            }
        }
        let mut ok = Vec::new();
        let mut rejected = Vec::new();
        for (l, _) in chunk {
            match got.get(&l.step_id.to_string()) {
                Some(st) => ok.push((l.step_id, *st)),
                None => rejected.push(l.clone()),
            }
        }
        Ok((ok, rejected))
    }

    /// [`Self::fenced`] for statements whose rows carry nothing but their lease:
    /// a row refused alone (it cannot be, short of a bug) is logged and reported
    /// as not applied.
    pub(super) async fn fenced_leases(
        &self,
        op: &'static str,
        set: &str,
        leases: Vec<Lease>,
        known: Option<StepStatus>,
    ) -> Result<FencedReport, StoreError> {
        let (mut report, refused) = self
            .fenced(
                op,
                set,
                "",
                leases.into_iter().map(|l| (l, String::new())).collect(),
                known,
            )
            .await?;
        for (lease, e) in refused {
            tracing::error!(op, step_id = %lease.step_id, error = %e, "the store refused this row; left as it was");
            report.rejected.push(lease);
        }
        Ok(report)
    }
}
