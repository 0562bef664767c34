//! The [`Store`] implementation: each method one or two statements (see the
//! statement economy in the module docs of [`super`]); inserts and statistics
//! live in [`super::insert`] and [`super::stats`].

use super::*;

use fleet_q_actors::schedule::{DueSchedules, Schedule, ScheduleAdvance, ScheduleSpec};

#[async_trait]
impl Store for SnowflakeStore {
    fn backend(&self) -> &'static str {
        "snowflake"
    }

    async fn schema_init(&self) -> Result<(), StoreError> {
        // DDL runs alone on Snowflake (each statement takes its own locks and
        // costs a round trip), so statements whose table or column is already
        // there are skipped, judged by one read of the schema's columns. Should
        // that read fail, every statement runs: each is idempotent.
        let have = self
            .exec(
                "schema_init",
                "SELECT table_name AS t, column_name AS c FROM information_schema.columns \
                 WHERE table_schema = CURRENT_SCHEMA()",
            )
            .await
            .ok()
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| {
                        Some((r.text("t")?.to_uppercase(), r.text("c")?.to_uppercase()))
                    })
                    .collect::<HashSet<(String, String)>>()
            });
        for ddl in DDL {
            if have.as_ref().is_some_and(|h| schema::applied(ddl, h)) {
                continue;
            }
            self.exec("schema_init", ddl).await?;
        }
        Ok(())
    }

    async fn now(&self) -> Result<DateTime<Utc>, StoreError> {
        let rows = self
            .exec(
                "now",
                "SELECT DATE_PART(EPOCH_MILLISECOND, SYSDATE()) AS now_ms",
            )
            .await?;
        rows.first()
            .and_then(|r| r.int("now_ms"))
            .map(ts)
            .ok_or_else(|| bad("now", "store time"))
    }

    async fn steps_insert(&self, steps: Vec<NewStep>) -> Result<Vec<Inserted>, StoreError> {
        self.insert_steps(steps).await
    }

    async fn schedules_list(&self) -> Result<Vec<Schedule>, StoreError> {
        self.schedules_read("schedules_list", None).await
    }

    async fn schedule_get(&self, key: &str) -> Result<Option<Schedule>, StoreError> {
        Ok(self
            .schedules_read("schedule_get", Some(key))
            .await?
            .into_iter()
            .next())
    }

    async fn schedule_put(&self, spec: ScheduleSpec) -> Result<Schedule, StoreError> {
        self.schedule_upsert(spec).await
    }

    async fn schedule_delete(&self, key: &str) -> Result<bool, StoreError> {
        self.schedule_remove(key).await
    }

    async fn schedule_pause(
        &self,
        key: &str,
        paused: bool,
    ) -> Result<Option<Schedule>, StoreError> {
        self.schedule_set_paused(key, paused).await
    }

    async fn schedules_due(&self, now: Option<DateTime<Utc>>) -> Result<DueSchedules, StoreError> {
        self.schedules_due_at(now).await
    }

    async fn schedule_advance(&self, a: ScheduleAdvance) -> Result<bool, StoreError> {
        self.schedule_cas(&a).await
    }

    async fn steps_claim(&self, p: ClaimParams) -> Result<Vec<Step>, StoreError> {
        let op = "steps_claim";
        if p.limit == 0 {
            return Ok(Vec::new());
        }
        let token = uuid::Uuid::now_v7();
        let update = format!(
            "UPDATE STEP_TRACKER SET status = 'claimed', claimed_by = {pod}, attempt = STEP_TRACKER.attempt + 1, \
             last_update_ts = SYSDATE(), started_ts = SYSDATE(), op_token = {tok} \
             FROM {source} \
             WHERE STEP_TRACKER.step_id = c.sid AND STEP_TRACKER.status = 'pending'",
            pod = sql::text(&p.pod_id),
            tok = sql::token(&token),
            source = queues::claim_source(p.queues.as_deref(), p.limit)
        );
        // Read back by token even when the UPDATE's answer was lost, and keep
        // trying through an outage: a claim that committed must reach its claimer,
        // or its steps would stay claimed by a live pod that never runs them.
        // An UPDATE whose answer was lost is reported only once the server's own
        // timeouts have ended it (see `exec`), so a claim cannot commit after the
        // read-back below and strand its steps.
        let first = self.exec(op, &update).await;
        if let Err(e) = &first {
            if !e.outcome_unknown() {
                // Refused or never sent: nothing was claimed.
                return Err(e.clone());
            }
        }
        if first
            .as_ref()
            .is_ok_and(|rows| rows_reported(rows) == Some(0))
        {
            // Answered: nothing was due. No read-back (an idle poll is one
            // statement).
            return Ok(Vec::new());
        }
        let by_token = format!("s.op_token = {}", sql::token(&token));
        let mut steps = self
            .read_back(op, || self.read_steps_checked(op, &by_token, p.limit))
            .await?;
        if steps.is_empty() {
            first?;
        }
        steps.sort_by(|a, b| {
            (b.priority, a.created_ts, a.step_id).cmp(&(a.priority, b.created_ts, b.step_id))
        });
        Ok(steps)
    }

    async fn steps_idle_probe(&self) -> Result<fleet_q_actors::quiet::IdleProbe, StoreError> {
        self.idle_probe().await
    }

    async fn steps_finish(&self, p: FinishParams) -> Result<FencedReport, StoreError> {
        if p.finishes.is_empty() {
            return Ok(FencedReport::default());
        }
        let b = p.backoff;
        // Each row, and whether it completes its step (only completions and
        // terminal failures leave the statement no choice of status).
        let row = |outcome: Outcome| -> (String, bool) {
            match outcome {
                Outcome::Complete { result } => {
                    let text = result.to_string();
                    if text.len() > MAX_RESULT_BYTES {
                        let failed = failure_row(
                            &format!(
                                "the result ({} bytes) exceeds the store's limit of {MAX_RESULT_BYTES} bytes",
                                text.len()
                            ),
                            false,
                            &b,
                        );
                        return (failed, false);
                    }
                    let ok = format!(
                        ", 1, 0, {}, CAST(NULL AS VARCHAR), 0.0",
                        sql::b64_lit(&text)
                    );
                    (ok, true)
                }
                Outcome::Fail { error, retryable } => (failure_row(&error, retryable, &b), false),
            }
        };
        // A group of completions alone: its answer's row count proves it
        // (see `fenced_chunk`), with no read-back.
        let mut all_complete = true;
        let rows: Vec<(Lease, String)> = p
            .finishes
            .into_iter()
            .map(|f| {
                let (text, completes) = row(f.outcome);
                all_complete &= completes;
                (f.lease, text)
            })
            .collect();
        let retry = "(v.ok = 0 AND v.retryable = 1 AND STEP_TRACKER.retry_count < STEP_TRACKER.max_retries)";
        let set = format!(
            "status = CASE WHEN v.ok = 1 THEN 'completed' WHEN {retry} THEN 'pending' ELSE 'failed' END, \
             result = CASE WHEN v.ok = 1 THEN BASE64_DECODE_STRING(v.res) ELSE STEP_TRACKER.result END, \
             last_error = CASE WHEN v.ok = 1 THEN NULL ELSE BASE64_DECODE_STRING(v.err) END, \
             claimed_by = CASE WHEN {retry} THEN NULL ELSE STEP_TRACKER.claimed_by END, \
             run_at = CASE WHEN {retry} THEN DATEADD(millisecond, CAST(LEAST(COALESCE(STEP_TRACKER.backoff_max_ms, {max}), COALESCE(STEP_TRACKER.backoff_ms, {base}) * POWER(2, LEAST(STEP_TRACKER.retry_count, 30))) * (1.0 - v.cut) AS INTEGER), SYSDATE()) ELSE STEP_TRACKER.run_at END, \
             retry_count = CASE WHEN {retry} THEN STEP_TRACKER.retry_count + 1 ELSE STEP_TRACKER.retry_count END",
            max = ms(b.max),
            base = ms(b.base)
        );
        let cols =
            ", column4 AS ok, column5 AS retryable, column6 AS res, column7 AS err, column8 AS cut";
        let (mut report, refused) = self
            .fenced(
                "steps_finish",
                &set,
                cols,
                rows,
                all_complete.then_some(StepStatus::Completed),
            )
            .await?;
        if refused.is_empty() {
            return Ok(report);
        }
        // A row the store refuses alone must not hold the others back, nor stay
        // claimed forever: it is failed (not retried) with the store's reason.
        let again: Vec<(Lease, String)> = refused
            .iter()
            .map(|(lease, e)| {
                tracing::error!(step_id = %lease.step_id, error = %e,
                    "the store refused this step's outcome; failing the step");
                let why = format!("the store refused this step's outcome: {}", e.message);
                (lease.clone(), failure_row(&why, false, &b))
            })
            .collect();
        let (second, still) = self
            .fenced("steps_finish", &set, cols, again, Some(StepStatus::Failed))
            .await?;
        report.applied.extend(second.applied);
        report.rejected.extend(second.rejected);
        report.rejected.extend(still.into_iter().map(|(l, _)| l));
        Ok(report)
    }

    async fn steps_release(&self, leases: Vec<Lease>) -> Result<FencedReport, StoreError> {
        if leases.is_empty() {
            return Ok(FencedReport::default());
        }
        self.fenced_leases(
            "steps_release",
            "status = 'pending', claimed_by = NULL, run_at = SYSDATE()",
            leases,
            Some(StepStatus::Pending),
        )
        .await
    }

    async fn step_cancel(&self, step_id: StepId) -> Result<CancelOutcome, StoreError> {
        let op = "step_cancel";
        let rows = self
            .exec(
                op,
                &format!(
                    "UPDATE STEP_TRACKER SET status = 'cancelled', last_update_ts = SYSDATE() \
                     WHERE step_id = {} AND status = 'pending'",
                    sql::id(step_id)
                ),
            )
            .await?;
        if affected(&rows) > 0 {
            return Ok(CancelOutcome::Cancelled);
        }
        Ok(match self.step_get(step_id).await? {
            None => CancelOutcome::NotFound,
            Some(s) => CancelOutcome::NotPending(s.status),
        })
    }

    async fn step_get(&self, step_id: StepId) -> Result<Option<Step>, StoreError> {
        Ok(self
            .read_steps(
                "step_get",
                &format!(
                    "SELECT {STEP_COLS} FROM STEP_TRACKER WHERE step_id = {} LIMIT 1",
                    sql::id(step_id)
                ),
            )
            .await?
            .pop())
    }

    async fn step_retry(&self, step_id: StepId) -> Result<RetryOutcome, StoreError> {
        let rows = self
            .exec(
                "step_retry",
                &format!(
                    "UPDATE STEP_TRACKER SET status = 'pending', retry_count = 0, claimed_by = NULL, \
                     run_at = SYSDATE(), last_update_ts = SYSDATE() WHERE step_id = {} AND status = 'failed'",
                    sql::id(step_id)
                ),
            )
            .await?;
        if affected(&rows) > 0 {
            return Ok(RetryOutcome::Requeued);
        }
        Ok(match self.step_get(step_id).await? {
            None => RetryOutcome::NotFound,
            Some(s) => RetryOutcome::NotFailed(s.status),
        })
    }

    async fn steps_failed_list(&self, p: PageParams) -> Result<Vec<Step>, StoreError> {
        let after = p.after.map_or("''".to_string(), sql::id);
        self.read_steps_checked(
            "steps_failed_list",
            &format!("s.status = 'failed' AND s.step_id > {after}"),
            p.limit,
        )
        .await
    }

    async fn queues_list(&self) -> Result<Vec<QueueInfo>, StoreError> {
        self.list_queues().await
    }

    async fn queue_put(&self, settings: QueueSettings) -> Result<QueueSettings, StoreError> {
        if let Some(why) = settings.problem() {
            return Err(StoreError::fatal("queue_put", why));
        }
        self.put_queue(&settings).await?;
        Ok(settings)
    }

    async fn queue_pause(&self, name: &str, paused: bool) -> Result<(), StoreError> {
        if let Some(why) = fleet_q_actors::queue::name_problem(name) {
            return Err(StoreError::fatal(
                "queue_pause",
                format!("queue name {why}"),
            ));
        }
        self.pause_queue(name, paused).await
    }

    async fn steps_search(&self, p: SearchParams) -> Result<SearchPage, StoreError> {
        if !p.filter.problems().is_empty() {
            return Err(StoreError::fatal(
                "steps_search",
                p.filter.problems().join("; "),
            ));
        }
        self.search(p).await
    }

    async fn steps_bulk(
        &self,
        action: BulkAction,
        step_ids: Vec<StepId>,
    ) -> Result<Vec<StepId>, StoreError> {
        self.bulk(action, step_ids).await
    }

    async fn steps_prune(&self, p: PruneParams) -> Result<u64, StoreError> {
        let rows = self
            .exec(
                "steps_prune",
                &format!(
                    "DELETE FROM STEP_TRACKER USING (SELECT step_id AS sid FROM STEP_TRACKER \
                     WHERE status IN ('completed', 'failed', 'cancelled') \
                     AND last_update_ts < DATEADD(millisecond, {cut}, SYSDATE()) LIMIT {n}) c \
                     WHERE STEP_TRACKER.step_id = c.sid AND STEP_TRACKER.status IN ('completed', 'failed', 'cancelled') \
                     AND STEP_TRACKER.last_update_ts < DATEADD(millisecond, {cut}, SYSDATE())",
                    cut = -ms(p.retention),
                    n = p.limit
                ),
            )
            .await?;
        Ok(affected(&rows))
    }

    fn shares_stats(&self) -> bool {
        true
    }

    async fn stats_publish(&self, p: StatsParams) -> Result<QueueStats, StoreError> {
        self.publish_stats(p).await
    }

    async fn stats_shared(&self) -> Result<Option<QueueStats>, StoreError> {
        self.shared_stats().await
    }

    async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        self.count_stats().await
    }

    async fn pod_heartbeat(&self, p: HeartbeatParams) -> Result<PodRecord, StoreError> {
        let op = "pod_heartbeat";
        let stmt = format!(
            "MERGE INTO POD_HEALTH USING (SELECT {pod} AS pod_id, '{status}' AS status, {cap} AS cap, {max} AS maxc, {meta} AS meta, \
               {inc} AS inc, {hb} AS hb, {dead} AS dead) s \
             ON POD_HEALTH.pod_id = s.pod_id \
             WHEN MATCHED AND POD_HEALTH.status = 'up' THEN UPDATE SET \
               birth_ts = CASE WHEN POD_HEALTH.incarnation IS NOT DISTINCT FROM s.inc THEN POD_HEALTH.birth_ts ELSE SYSDATE() END, \
               last_heartbeat_ts = SYSDATE(), status = s.status, capacity_in_use = s.cap, max_capacity = s.maxc, meta = s.meta, \
               incarnation = s.inc, heartbeat_interval_ms = s.hb, dead_after_ms = s.dead \
             WHEN NOT MATCHED THEN INSERT (pod_id, birth_ts, last_heartbeat_ts, status, capacity_in_use, max_capacity, meta, \
               incarnation, heartbeat_interval_ms, dead_after_ms) \
               VALUES (s.pod_id, SYSDATE(), SYSDATE(), s.status, s.cap, s.maxc, s.meta, s.inc, s.hb, s.dead)",
            pod = sql::text(&p.pod_id),
            status = p.status.as_str(),
            cap = p.capacity_in_use,
            max = p.max_capacity,
            meta = sql::text(&p.meta.to_string()),
            inc = sql::text(&p.incarnation),
            hb = opt_ms(p.heartbeat_interval),
            dead = opt_ms(p.dead_after),
        );
        self.exec(op, &stmt).await?;
        let rows = self
            .exec(
                op,
                &format!(
                    "SELECT {POD_COLS} FROM POD_HEALTH WHERE pod_id = {} LIMIT 1",
                    sql::text(&p.pod_id)
                ),
            )
            .await?;
        rows.first()
            .map(|r| pod_from_row(op, r))
            .unwrap_or_else(|| Err(StoreError::fatal(op, "heartbeat row not found after MERGE")))
    }

    async fn pods_list(&self) -> Result<Vec<PodRecord>, StoreError> {
        let op = "pods_list";
        self.exec(
            op,
            &format!("SELECT {POD_COLS} FROM POD_HEALTH ORDER BY birth_ts, pod_id"),
        )
        .await?
        .iter()
        .map(|r| pod_from_row(op, r))
        .collect::<Result<Vec<_>, _>>()
        .map(|mut pods| {
            // A chunked result arrives out of order (snowflake-api 0.14 puts the
            // inline part last): order again.
            pods.sort_by(|a, b| (a.birth_ts, &a.pod_id).cmp(&(b.birth_ts, &b.pod_id)));
            pods
        })
    }

    async fn pods_mark_down(&self, p: MarkDownParams) -> Result<Vec<String>, StoreError> {
        let op = "pods_mark_down";
        if p.pod_ids.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = p.pod_ids.iter().map(|id| sql::text(id)).collect();
        let cond = format!(
            "pod_id IN ({}) AND status = 'up' \
             AND last_heartbeat_ts <= DATEADD(millisecond, -COALESCE(dead_after_ms, {}), SYSDATE())",
            list.join(", "),
            ms(p.dead_threshold)
        );
        let candidates = self
            .exec(
                op,
                &format!("SELECT pod_id AS pod_id FROM POD_HEALTH WHERE {cond}"),
            )
            .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        self.exec(
            op,
            &format!("UPDATE POD_HEALTH SET status = 'down', capacity_in_use = 0 WHERE {cond}"),
        )
        .await?;
        let wanted: HashSet<&String> = p.pod_ids.iter().collect();
        Ok(candidates
            .iter()
            .filter_map(|r| r.text("pod_id"))
            .filter(|id| wanted.contains(id))
            .collect())
    }

    async fn steps_orphaned(&self, p: OrphanParams) -> Result<Vec<Step>, StoreError> {
        self.read_steps_checked(
            "steps_orphaned",
            &format!(
                "s.status = 'claimed' AND NOT EXISTS \
                 (SELECT 1 FROM POD_HEALTH p WHERE p.pod_id = s.claimed_by AND p.status = 'up' \
                  AND p.birth_ts <= s.last_update_ts{})",
                if p.presumed_down.is_empty() {
                    String::new()
                } else {
                    let list: Vec<String> =
                        p.presumed_down.iter().map(|id| sql::text(id)).collect();
                    format!(" AND p.pod_id NOT IN ({})", list.join(", "))
                },
            ),
            p.limit,
        )
        .await
    }

    async fn steps_held(
        &self,
        pod_id: &str,
        limit: u32,
    ) -> Result<(Vec<HeldStep>, DateTime<Utc>), StoreError> {
        let op = "steps_held";
        let rows = self
            .exec(
                op,
                &format!(
                    "SELECT step_id AS step_id, claimed_by AS claimed_by, attempt AS attempt, \
                     DATE_PART(EPOCH_MILLISECOND, last_update_ts) AS claimed_ms, \
                     DATE_PART(EPOCH_MILLISECOND, SYSDATE()) AS now_ms FROM STEP_TRACKER \
                     WHERE status = 'claimed' AND claimed_by = {} ORDER BY last_update_ts LIMIT {limit}",
                    sql::text(pod_id)
                ),
            )
            .await?;
        let mut held = Vec::with_capacity(rows.len());
        let mut now = None;
        for r in &rows {
            now = now.or(r.int("now_ms"));
            held.push(HeldStep {
                lease: Lease {
                    step_id: r
                        .text("step_id")
                        .and_then(|t| t.parse().ok())
                        .ok_or_else(|| bad(op, "step_id"))?,
                    pod_id: r.text("claimed_by").ok_or_else(|| bad(op, "claimed_by"))?,
                    attempt: r.int("attempt").ok_or_else(|| bad(op, "attempt"))? as u32,
                },
                claimed_at: ts(r
                    .int("claimed_ms")
                    .ok_or_else(|| bad(op, "last_update_ts"))?),
            });
        }
        let now = match now {
            Some(n) => ts(n),
            None => self.now().await?,
        };
        Ok((held, now))
    }

    fn statement_count(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    fn statements_by_op(&self) -> Vec<(&'static str, u64)> {
        let m = self.by_op.lock().expect("statement counts");
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }
}
