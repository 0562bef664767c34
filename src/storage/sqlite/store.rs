//! The [`Store`] implementation.

use super::*;

use fleet_q_actors::schedule::{DueSchedules, Schedule, ScheduleAdvance, ScheduleSpec};

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn schema_init(&self) -> Result<(), StoreError> {
        self.writer
            .write("schema_init", |c, _| {
                // A file made before STEP_TOTALS existed gets it filled once, in
                // this transaction, from the steps it holds.
                let had_totals: bool = c
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' \
                         AND name = 'STEP_TOTALS')",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(|e| map_err("schema_init", e))?;
                c.execute_batch(SCHEMA)
                    .map_err(|e| map_err("schema_init", e))?;
                if !had_totals {
                    c.execute_batch(totals::BACKFILL)
                        .map_err(|e| map_err("schema_init", e))?;
                }
                c.execute_batch(totals::ENSURE_ALL)
                    .map_err(|e| map_err("schema_init", e))?;
                for (table, added) in [
                    ("POD_HEALTH", &POD_HEALTH_ADDED[..]),
                    ("STEP_TRACKER", &STEP_TRACKER_ADDED[..]),
                    ("QUEUES", &QUEUES_ADDED[..]),
                ] {
                    let have: Vec<String> = c
                        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
                        .and_then(|mut st| {
                            st.query_map([], |r| r.get(0))?
                                .collect::<rusqlite::Result<_>>()
                        })
                        .map_err(|e| map_err("schema_init", e))?;
                    for (col, ty) in added {
                        if !have.iter().any(|h| h.eq_ignore_ascii_case(col)) {
                            c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {col} {ty}"))
                                .map_err(|e| map_err("schema_init", e))?;
                        }
                    }
                }
                c.execute_batch(AFTER_COLUMNS)
                    .map_err(|e| map_err("schema_init", e))?;
                Ok(())
            })
            .await
    }

    async fn now(&self) -> Result<DateTime<Utc>, StoreError> {
        Ok(ts(clock_ms()))
    }

    async fn steps_insert(&self, steps: Vec<NewStep>) -> Result<Vec<Inserted>, StoreError> {
        if steps.is_empty() {
            return Ok(Vec::new());
        }
        let known = self.known_queues.clone();
        let (inserted, made) = self
            .writer
            .write_counted("steps_insert", move |c, now, totals| {
                let op = "steps_insert";
                let mut out: Vec<Option<Inserted>> = vec![None; steps.len()];
                // Steps without a key go in multi-row statements; keyed steps one at a
                // time, since each needs its own dedupe answer.
                let (keyed, plain): (Vec<usize>, Vec<usize>) =
                    (0..steps.len()).partition(|i| steps[*i].idempotency_key().is_some());
                let mut queues: Vec<&str> = steps.iter().map(|s| s.queue()).collect();
                queues.sort_unstable();
                queues.dedup();
                let made = claim::ensure_queues(c, &known, queues.iter().copied())?;
                let defaults = claim::defaults(c, &queues)?;
                let of = |s: &NewStep| defaults.get(s.queue()).copied().unwrap_or_default();
                for (start, len) in pow2_chunks(plain.len()) {
                    let rows = &plain[start..start + len];
                    let sql = format!(
                        "INSERT INTO STEP_TRACKER ({INSERT_COLS}) VALUES {}",
                        vec![INSERT_ROW; len].join(", ")
                    );
                    let mut st = c.prepare_cached(&sql).map_err(|e| map_err(op, e))?;
                    let mut values = Vec::with_capacity(len * INSERT_PARAMS);
                    for &i in rows {
                        push_insert_values(&mut values, &steps[i], now, of(&steps[i]));
                    }
                    st.execute(rusqlite::params_from_iter(values))
                        .map_err(|e| map_err(op, e))?;
                    for &i in rows {
                        totals.rows(&steps[i].payload().step_type, StepStatus::Pending, 1);
                        out[i] = Some(Inserted {
                            step_id: steps[i].step_id(),
                            created: true,
                        });
                    }
                }
                for i in keyed {
                    let s = &steps[i];
                    let mut values = Vec::with_capacity(INSERT_PARAMS);
                    push_insert_values(&mut values, s, now, of(s));
                    let n = c
                        .prepare_cached(&format!(
                            "INSERT INTO STEP_TRACKER ({INSERT_COLS}) VALUES {INSERT_ROW} \
                             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL \
                             DO NOTHING"
                        ))
                        .and_then(|mut st| st.execute(rusqlite::params_from_iter(values)))
                        .map_err(|e| map_err(op, e))?;
                    let step_id = if n == 1 {
                        totals.rows(&s.payload().step_type, StepStatus::Pending, 1);
                        s.step_id()
                    } else {
                        let existing = c
                            .prepare_cached(
                                "SELECT step_id FROM STEP_TRACKER WHERE idempotency_key = ?1",
                            )
                            .and_then(|mut q| q.query_row([s.idempotency_key()], |r| id_at(r, 0)))
                            .map_err(|e| map_err(op, e))?;
                        existing
                    };
                    out[i] = Some(Inserted {
                        step_id,
                        created: n == 1,
                    });
                }
                Ok((
                    out.into_iter()
                        .map(|o| o.expect("every step answered"))
                        .collect::<Vec<_>>(),
                    made,
                ))
            })
            .await?;
        // Remembered only once committed: a queue row that a failed
        // transaction rolled back is made again by the next insert.
        if !made.is_empty() {
            self.known_queues.lock().expect("known queues").extend(made);
        }
        Ok(inserted)
    }

    async fn steps_claim(&self, p: ClaimParams) -> Result<Vec<Step>, StoreError> {
        Ok(self.steps_claim_paced(p).await?.steps)
    }

    async fn steps_claim_paced(&self, p: ClaimParams) -> Result<Claimed, StoreError> {
        if p.limit == 0 {
            return Ok(Claimed::default());
        }
        let start = self.claim_turn.fetch_add(1, Ordering::Relaxed);
        self.writer
            .write("steps_claim", move |c, now| claim::claim(c, now, &p, start))
            .await
    }

    async fn steps_idle_probe(&self) -> Result<fleet_q_actors::quiet::IdleProbe, StoreError> {
        // Live rows only, through the live index: claimed rows (counted up to
        // 100), then pending rows of unpaused queues.
        self.read("steps_idle_probe", move |c, now| {
            c.prepare_cached(&format!(
                "SELECT \
                   (SELECT COUNT(*) FROM (SELECT 1 FROM STEP_TRACKER INDEXED BY step_tracker_live_q \
                      WHERE status = 'claimed' AND {LIVE} LIMIT 100)), \
                   EXISTS (SELECT 1 FROM STEP_TRACKER INDEXED BY step_tracker_live_q \
                      WHERE status = 'pending' AND {LIVE} AND run_at <= ?1 \
                        AND queue NOT IN (SELECT name FROM QUEUES WHERE paused <> 0)), \
                   (SELECT MIN(run_at) FROM STEP_TRACKER INDEXED BY step_tracker_live_q \
                      WHERE status = 'pending' AND {LIVE} AND run_at > ?1 \
                        AND queue NOT IN (SELECT name FROM QUEUES WHERE paused <> 0))"
            ))?
            .query_row([now], |r| {
                Ok(fleet_q_actors::quiet::IdleProbe {
                    claimed: r.get::<_, i64>(0)?.max(0) as u64,
                    due_now: r.get::<_, i64>(1)? != 0,
                    next_due: r.get::<_, Option<i64>>(2)?.map(ts),
                    now: ts(now),
                })
            })
        })
        .await
    }

    async fn steps_finish(&self, p: FinishParams) -> Result<FencedReport, StoreError> {
        if p.finishes.is_empty() {
            return Ok(FencedReport::default());
        }
        let jitter: Vec<f64> = p.finishes.iter().map(|_| rand::random::<f64>()).collect();
        self.writer
            .write_counted("steps_finish", move |c, now, totals| {
                let op = "steps_finish";
                let b = p.backoff;
                let mut report = FencedReport::default();
                let (mut completes, mut fails) = (Vec::new(), Vec::new());
                for (f, u) in p.finishes.into_iter().zip(jitter) {
                    match f.outcome {
                        Outcome::Complete { result } => {
                            completes.push((f.lease, result.to_string()))
                        }
                        Outcome::Fail { error, retryable } => {
                            let cut = (b.jitter.clamp(0.0, 1.0) * u).clamp(0.0, 1.0);
                            fails.push((
                                f.lease,
                                vec![
                                    SqlValue::Integer(now),
                                    SqlValue::Text(error),
                                    SqlValue::Integer(ms(b.base)),
                                    SqlValue::Integer(ms(b.max)),
                                    SqlValue::Real(cut),
                                ],
                                // Terminal errors skip the retry variant.
                                usize::from(!retryable),
                            ))
                        }
                    }
                }
                for (start, len) in pow2_chunks(completes.len()) {
                    let chunk = &completes[start..start + len];
                    let r = complete_chunk(c, now, chunk)?;
                    report.applied.extend(r.applied);
                    report.rejected.extend(r.rejected);
                }
                if !fails.is_empty() {
                    // Retry while retries remain: back to pending with
                    // run_at = now + min(max, base * 2^retry_count), less the jitter cut
                    // (base and max: the step's queue's when it was submitted with
                    // them, else the pod's).
                    let retry = "UPDATE STEP_TRACKER SET status = 'pending', claimed_by = NULL, \
                         run_at = ?1 + CAST(MIN(COALESCE(backoff_max_ms, ?4), \
                           COALESCE(backoff_ms, ?3) * (1 << MIN(retry_count, 30))) * (1.0 - ?5) AS INTEGER), \
                         retry_count = retry_count + 1, last_update_ts = ?1, last_error = ?2 \
                         WHERE step_id = ?6 AND claimed_by = ?7 AND attempt = ?8 \
                         AND status = 'claimed' AND retry_count < max_retries";
                    // Same parameters; ?3..?5 (backoff) are unused here, which SQLite
                    // allows since it counts parameters by the highest index.
                    let terminal = "UPDATE STEP_TRACKER SET status = 'failed', last_update_ts = ?1, \
                         last_error = ?2 WHERE step_id = ?6 AND claimed_by = ?7 AND attempt = ?8 \
                         AND status = 'claimed'";
                    let r = fenced_update(
                        c,
                        op,
                        &[(retry, StepStatus::Pending), (terminal, StepStatus::Failed)],
                        fails.into_iter(),
                    )?;
                    // Terminal failures are the rare path: their types are read
                    // back one by one.
                    for (id, status) in &r.applied {
                        if *status == StepStatus::Failed {
                            let t = step_type_of(c, op, id_val(*id))?;
                            totals.moved(&t, StepStatus::Claimed, StepStatus::Failed, 1);
                        }
                    }
                    report.applied.extend(r.applied);
                    report.rejected.extend(r.rejected);
                }
                Ok(report)
            })
            .await
    }

    async fn steps_release(&self, leases: Vec<Lease>) -> Result<FencedReport, StoreError> {
        if leases.is_empty() {
            return Ok(FencedReport::default());
        }
        self.writer
            .write("steps_release", move |c, now| {
                let sql = format!(
                    "UPDATE STEP_TRACKER SET status = 'pending', claimed_by = NULL, \
                     run_at = ?, last_update_ts = ? WHERE {FENCE}"
                );
                fenced_update(
                    c,
                    "steps_release",
                    &[(&sql, StepStatus::Pending)],
                    leases
                        .into_iter()
                        .map(|l| (l, vec![SqlValue::Integer(now), SqlValue::Integer(now)], 0)),
                )
            })
            .await
    }

    async fn step_cancel(&self, step_id: StepId) -> Result<CancelOutcome, StoreError> {
        self.writer
            .write_counted("step_cancel", move |c, now, totals| {
                let op = "step_cancel";
                let id = id_val(step_id);
                let t: Option<String> = c
                    .prepare_cached(
                        "UPDATE STEP_TRACKER SET status = 'cancelled', last_update_ts = ?1 \
                         WHERE step_id = ?2 AND status = 'pending' RETURNING step_type",
                    )
                    .and_then(|mut st| st.query_row(params![now, id], |r| r.get(0)).optional())
                    .map_err(|e| map_err(op, e))?;
                if let Some(t) = t {
                    totals.moved(&t, StepStatus::Pending, StepStatus::Cancelled, 1);
                    return Ok(CancelOutcome::Cancelled);
                }
                let status = current_status(c, op, &id)?;
                Ok(status.map_or(CancelOutcome::NotFound, CancelOutcome::NotPending))
            })
            .await
    }

    async fn step_get(&self, step_id: StepId) -> Result<Option<Step>, StoreError> {
        self.read("step_get", move |c, _| {
            c.prepare_cached(&format!(
                "SELECT {STEP_COLS} FROM STEP_TRACKER WHERE step_id = ?1"
            ))?
            .query_row([id_val(step_id)], step_from_row)
            .optional()
        })
        .await
    }

    async fn step_retry(&self, step_id: StepId) -> Result<RetryOutcome, StoreError> {
        self.writer
            .write_counted("step_retry", move |c, now, totals| {
                let op = "step_retry";
                let id = id_val(step_id);
                let t: Option<String> = c
                    .prepare_cached(
                        "UPDATE STEP_TRACKER SET status = 'pending', retry_count = 0, \
                         claimed_by = NULL, run_at = ?1, last_update_ts = ?1 \
                         WHERE step_id = ?2 AND status = 'failed' RETURNING step_type",
                    )
                    .and_then(|mut st| st.query_row(params![now, id], |r| r.get(0)).optional())
                    .map_err(|e| map_err(op, e))?;
                if let Some(t) = t {
                    totals.moved(&t, StepStatus::Failed, StepStatus::Pending, 1);
                    return Ok(RetryOutcome::Requeued);
                }
                let status = current_status(c, op, &id)?;
                Ok(status.map_or(RetryOutcome::NotFound, RetryOutcome::NotFailed))
            })
            .await
    }

    async fn steps_failed_list(&self, p: PageParams) -> Result<Vec<Step>, StoreError> {
        self.read("steps_failed_list", move |c, _| {
            // An empty blob sorts before every id.
            let after = p.after.map_or(SqlValue::Blob(Vec::new()), id_val);
            let mut st = c.prepare_cached(&format!(
                "SELECT {STEP_COLS} FROM STEP_TRACKER WHERE status = 'failed' AND step_id > ?1 \
                 ORDER BY step_id LIMIT ?2"
            ))?;
            let rows = st.query_map(params![after, p.limit], step_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn queues_list(&self) -> Result<Vec<QueueInfo>, StoreError> {
        self.read("queues_list", claim::list).await
    }

    async fn queue_put(&self, settings: QueueSettings) -> Result<QueueSettings, StoreError> {
        if let Some(why) = settings.problem() {
            return Err(StoreError::fatal("queue_put", why));
        }
        let s = settings.clone();
        self.writer
            .write("queue_put", move |c, now| claim::put(c, now, &s))
            .await?;
        Ok(settings)
    }

    async fn queue_pause(&self, name: &str, paused: bool) -> Result<(), StoreError> {
        if let Some(why) = fleet_q_actors::queue::name_problem(name) {
            return Err(StoreError::fatal(
                "queue_pause",
                format!("queue name {why}"),
            ));
        }
        let name = name.to_string();
        self.writer
            .write("queue_pause", move |c, now| {
                claim::pause(c, now, &name, paused)
            })
            .await
    }

    async fn schedules_list(&self) -> Result<Vec<Schedule>, StoreError> {
        let rows = self
            .read("schedules_list", |c, _| schedules::list(c))
            .await?;
        schedules::decode_all("schedules_list", rows)
    }

    async fn schedule_get(&self, key: &str) -> Result<Option<Schedule>, StoreError> {
        let key = key.to_string();
        let row = self
            .read("schedule_get", move |c, _| schedules::get(c, &key))
            .await?;
        schedules::decode_one("schedule_get", row)
    }

    async fn schedule_put(&self, spec: ScheduleSpec) -> Result<Schedule, StoreError> {
        let problems = spec.problems();
        if !problems.is_empty() {
            return Err(StoreError::fatal("schedule_put", problems.join("; ")));
        }
        self.writer
            .write("schedule_put", move |c, now| schedules::put(c, now, &spec))
            .await
    }

    async fn schedule_delete(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_string();
        self.writer
            .write("schedule_delete", move |c, _| schedules::delete(c, &key))
            .await
    }

    async fn schedule_pause(
        &self,
        key: &str,
        paused: bool,
    ) -> Result<Option<Schedule>, StoreError> {
        let key = key.to_string();
        self.writer
            .write("schedule_pause", move |c, now| {
                schedules::pause(c, now, &key, paused)
            })
            .await
    }

    async fn schedules_due(&self, now: Option<DateTime<Utc>>) -> Result<DueSchedules, StoreError> {
        let (rows, next, at) = self
            .read("schedules_due", move |c, clock| {
                let at = now.map_or(clock, |t| t.timestamp_millis());
                let (rows, next) = schedules::due(c, at)?;
                Ok((rows, next, at))
            })
            .await?;
        schedules::due_schedules(rows, next, at)
    }

    async fn schedule_advance(&self, a: ScheduleAdvance) -> Result<bool, StoreError> {
        self.writer
            .write("schedule_advance", move |c, now| {
                schedules::advance(c, now, &a)
            })
            .await
    }

    async fn steps_search(&self, p: SearchParams) -> Result<SearchPage, StoreError> {
        if !p.filter.problems().is_empty() {
            return Err(StoreError::fatal(
                "steps_search",
                p.filter.problems().join("; "),
            ));
        }
        self.read("steps_search", move |c, _| search::search(c, &p))
            .await
    }

    async fn steps_bulk(
        &self,
        action: BulkAction,
        step_ids: Vec<StepId>,
    ) -> Result<Vec<StepId>, StoreError> {
        if step_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.writer
            .write_counted("steps_bulk", move |c, now, totals| {
                search::bulk(c, now, totals, action, &step_ids)
            })
            .await
    }

    async fn steps_prune(&self, p: PruneParams) -> Result<u64, StoreError> {
        // A chunk of `p.limit` rows is deleted in slices, each a background
        // job of the writer: it runs alone, only when no submit, claim or
        // other write is queued, and yields to one sent while it runs (its
        // statement is interrupted and rolled back; see `writer`). So a write
        // waits for microseconds, not for a slice. The slice size adapts
        // (`prune::next_slice`): doubling while slices complete, halving when
        // one yields, and at the floor a slice runs to its end, so pruning
        // progresses however busy the writer is. Each slice resumes after the
        // last id the previous one deleted.
        let mut total = 0u64;
        let mut after: Vec<u8> = Vec::new(); // below every id
        loop {
            let size = self.prune_size.load(Ordering::Relaxed);
            let want = (u64::from(p.limit) - total).min(size);
            if want == 0 {
                return Ok(total);
            }
            let from = after.clone();
            let slice = move |c: &Connection, now: i64, totals: &mut Totals| {
                prune_slice(c, now, totals, p.retention, want, from)
            };
            // A slice at the floor does not yield: it always finishes.
            let outcome = self
                .writer
                .write_background("steps_prune", size > SLICE_MIN, slice)
                .await;
            let (n, last) = match outcome {
                Ok(done) => {
                    self.prune_size
                        .store(next_slice(size, false), Ordering::Relaxed);
                    done
                }
                Err(e) if yielded(&e) => {
                    self.prune_size
                        .store(next_slice(size, true), Ordering::Relaxed);
                    continue; // nothing was deleted: the same rows, fewer of them
                }
                Err(e) => return Err(e),
            };
            total += n;
            if n < want {
                return Ok(total); // nothing more has expired
            }
            after = last;
        }
    }

    async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        self.count_stats().await
    }

    async fn pod_heartbeat(&self, p: HeartbeatParams) -> Result<PodRecord, StoreError> {
        self.writer
            .write("pod_heartbeat", move |c, now| {
                let op = "pod_heartbeat";
                let meta = p.meta.to_string();
                let n = c
                    .prepare_cached(
                        "INSERT INTO POD_HEALTH (pod_id, birth_ts, last_heartbeat_ts, status, \
                         capacity_in_use, max_capacity, meta, incarnation, heartbeat_interval_ms, \
                         dead_after_ms) VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                         ON CONFLICT (pod_id) DO UPDATE SET \
                           birth_ts = CASE WHEN POD_HEALTH.incarnation IS excluded.incarnation \
                             THEN POD_HEALTH.birth_ts ELSE excluded.birth_ts END, \
                           last_heartbeat_ts = excluded.last_heartbeat_ts, status = excluded.status, \
                           capacity_in_use = excluded.capacity_in_use, \
                           max_capacity = excluded.max_capacity, meta = excluded.meta, \
                           incarnation = excluded.incarnation, \
                           heartbeat_interval_ms = excluded.heartbeat_interval_ms, \
                           dead_after_ms = excluded.dead_after_ms \
                         WHERE POD_HEALTH.status = 'up'",
                    )
                    .and_then(|mut st| {
                        st.execute(params![
                            p.pod_id,
                            now,
                            p.status.as_str(),
                            p.capacity_in_use,
                            p.max_capacity,
                            meta,
                            p.incarnation,
                            p.heartbeat_interval.map(ms),
                            p.dead_after.map(ms),
                        ])
                    })
                    .map_err(|e| map_err(op, e))?;
                let _ = n;
                c.prepare_cached(&format!("SELECT {POD_COLS} FROM POD_HEALTH WHERE pod_id = ?1"))
                    .and_then(|mut st| st.query_row([&p.pod_id], |r| pod_from_row(r, now)))
                    .map_err(|e| map_err(op, e))
            })
            .await
    }

    async fn pods_list(&self) -> Result<Vec<PodRecord>, StoreError> {
        self.read("pods_list", |c, now| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {POD_COLS} FROM POD_HEALTH ORDER BY birth_ts, pod_id"
            ))?;
            let rows = st.query_map([], |r| pod_from_row(r, now))?;
            rows.collect()
        })
        .await
    }

    async fn pods_mark_down(&self, p: MarkDownParams) -> Result<Vec<String>, StoreError> {
        self.writer
            .write("pods_mark_down", move |c, now| {
                let mut st = c
                    .prepare_cached(
                        "UPDATE POD_HEALTH SET status = 'down', capacity_in_use = 0 \
                         WHERE pod_id = ?1 AND status = 'up' \
                           AND last_heartbeat_ts <= ?2 - COALESCE(dead_after_ms, ?3)",
                    )
                    .map_err(|e| map_err("pods_mark_down", e))?;
                let default = ms(p.dead_threshold);
                let mut marked = Vec::new();
                for id in p.pod_ids {
                    let n = st
                        .execute(params![id, now, default])
                        .map_err(|e| map_err("pods_mark_down", e))?;
                    if n == 1 {
                        marked.push(id);
                    }
                }
                Ok(marked)
            })
            .await
    }

    async fn steps_orphaned(&self, p: OrphanParams) -> Result<Vec<Step>, StoreError> {
        self.read("steps_orphaned", move |c, _now| {
            // A claim is held while its holder's row is up and is the incarnation
            // that made the claim (born no later than it). Heartbeat age is judged
            // only by pods_mark_down (see the trait's docs).
            let mut st = c.prepare_cached(&format!(
                "SELECT {STEP_COLS} FROM STEP_TRACKER s WHERE s.status = 'claimed' AND s.{LIVE} AND NOT EXISTS \
                 (SELECT 1 FROM POD_HEALTH p WHERE p.pod_id = s.claimed_by AND p.status = 'up' \
                  AND p.birth_ts <= s.last_update_ts \
                  AND p.pod_id NOT IN (SELECT value FROM json_each(?2))) ORDER BY s.step_id LIMIT ?1"
            ))?;
            let presumed = serde_json::to_string(&p.presumed_down).unwrap_or_else(|_| "[]".into());
            let rows = st.query_map(params![p.limit, presumed], step_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn steps_held(
        &self,
        pod_id: &str,
        limit: u32,
    ) -> Result<(Vec<HeldStep>, DateTime<Utc>), StoreError> {
        let pod_id = pod_id.to_string();
        self.read("steps_held", move |c, now| {
            let mut st = c.prepare_cached(&format!(
                "SELECT step_id, claimed_by, attempt, last_update_ts FROM STEP_TRACKER \
                 WHERE status = 'claimed' AND {LIVE} AND claimed_by = ?1 ORDER BY last_update_ts LIMIT ?2"
            ))?;
            let rows = st.query_map(params![pod_id, limit], |r| {
                Ok(HeldStep {
                    lease: Lease {
                        step_id: id_at(r, 0)?,
                        pod_id: r.get(1)?,
                        attempt: r.get(2)?,
                    },
                    claimed_at: ts(r.get(3)?),
                })
            })?;
            Ok((rows.collect::<rusqlite::Result<Vec<_>>>()?, ts(now)))
        })
        .await
    }

    fn statement_count(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }
}
