//! Inserting steps: chunked multi-row `INSERT … SELECT … WHERE NOT EXISTS` by
//! step id and idempotency key, so a retried insert is idempotent.

use super::*;

impl SnowflakeStore {
    pub(super) async fn insert_steps(
        &self,
        steps: Vec<NewStep>,
    ) -> Result<Vec<Inserted>, StoreError> {
        let op = "steps_insert";
        if steps.is_empty() {
            return Ok(Vec::new());
        }
        let mut queues: Vec<&str> = steps.iter().map(|s| s.queue()).collect();
        queues.sort_unstable();
        queues.dedup();
        self.ensure_queues(&queues).await?;
        // Within one call, a repeated key goes to its first step.
        let mut first_of_key: HashMap<&str, usize> = HashMap::new();
        let mut unique = Vec::new();
        for (i, s) in steps.iter().enumerate() {
            match s.idempotency_key() {
                Some(k) if first_of_key.contains_key(k) => {}
                Some(k) => {
                    first_of_key.insert(k, i);
                    unique.push(i);
                }
                None => unique.push(i),
            }
        }
        // Chunks bounded by rows and by statement text (base64 payloads grow by 4/3):
        // Snowflake limits the size of a statement's text.
        // Keyed steps go in MERGE statements (which take the table lock, so two
        // concurrent submits of one key cannot both insert: Snowflake enforces no
        // UNIQUE constraint, and its INSERTs run in parallel on snapshots); the
        // rest in plain INSERTs, which do not wait for the lock.
        let (keyed, plain): (Vec<usize>, Vec<usize>) = unique
            .iter()
            .partition(|&&i| steps[i].idempotency_key().is_some());
        let mut chunks: Vec<(bool, Vec<usize>)> = Vec::new();
        for (is_keyed, group) in [(true, keyed), (false, plain)] {
            let lens = group
                .iter()
                .map(|&i| steps[i].payload_json().len() * 4 / 3 + 256);
            for c in chunk_by_size(&group, lens, CHUNK, MAX_STATEMENT_TEXT) {
                chunks.push((is_keyed, c));
            }
        }
        for (is_keyed, chunk) in &chunks {
            let values: Vec<String> = chunk
                .iter()
                .map(|&i| {
                    let s = &steps[i];
                    let (delay, at) = match s.run_at() {
                        RunAt::Now => (0, "CAST(NULL AS NUMBER)".to_string()),
                        RunAt::After(d) => (ms(d), "CAST(NULL AS NUMBER)".to_string()),
                        RunAt::At(t) => (0, sql::int(t.timestamp_millis())),
                    };
                    format!(
                        "({}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
                        sql::id(s.step_id()),
                        sql::b64_lit(s.payload_json()),
                        sql::int(s.priority().into()),
                        s.max_retries()
                            .map_or("CAST(NULL AS NUMBER)".to_string(), |m| {
                                sql::int(m.into())
                            }),
                        sql::int(delay),
                        at,
                        sql::b64_opt(s.idempotency_key()),
                        s.timeout()
                            .map_or("CAST(NULL AS NUMBER)".to_string(), |t| sql::int(ms(t))),
                        sql::b64_lit(&s.payload().step_type),
                        sql::b64_lit(s.queue()),
                    )
                })
                .collect();
            let cols = "step_id, status, last_update_ts, payload, retry_count, priority, \
                 created_ts, max_retries, attempt, run_at, idempotency_key, timeout_ms, step_type, queue, \
                 backoff_ms, backoff_max_ms";
            // Values are decoded and computed in the source, so the inserted row
            // names plain columns only (fakesnow's MERGE rewrite sees only those).
            let row = "v.sid, 'pending', SYSDATE(), v.p, 0, v.prio, SYSDATE(), v.mr, 0, v.run_at, v.k, v.t, v.ty, v.q, v.b, v.bm";
            // A step without its own max_retries or timeout takes its queue's
            // defaults, and its queue's backoff (`fleet_q_actors::queue`). The
            // queue settings are grouped by name, so even duplicate QUEUES rows
            // (Snowflake enforces no key) can never duplicate a step.
            let source = format!(
                "(SELECT x.sid AS sid, x.p AS p, x.prio AS prio, \
                   COALESCE(x.mr, d.mr, {default_mr}) AS mr, x.run_at AS run_at, x.k AS k, \
                   COALESCE(x.t, d.t) AS t, x.ty AS ty, x.q AS q, d.b AS b, d.bm AS bm \
                 FROM (SELECT column1 AS sid, BASE64_DECODE_STRING(column2) AS p, column3 AS prio, column4 AS mr, \
                 CASE WHEN column6 IS NULL THEN DATEADD(millisecond, column5, SYSDATE()) \
                      ELSE DATEADD(millisecond, column6, CAST('1970-01-01 00:00:00' AS TIMESTAMP_NTZ)) END AS run_at, \
                 BASE64_DECODE_STRING(column7) AS k, column8 AS t, BASE64_DECODE_STRING(column9) AS ty, \
                 BASE64_DECODE_STRING(column10) AS q \
                 FROM VALUES {values}) x \
                 LEFT JOIN (SELECT name AS dq, MIN(max_retries) AS mr, MIN(timeout_ms) AS t, \
                   MIN(backoff_ms) AS b, MIN(backoff_max_ms) AS bm FROM QUEUES GROUP BY name) d \
                 ON d.dq = x.q) v",
                default_mr = fleet_q_actors::step::DEFAULT_MAX_RETRIES,
                values = values.join(", ")
            );
            // Both forms match on the step id too, so a resent statement never
            // adds a second row.
            let stmt = if *is_keyed {
                format!(
                    "MERGE INTO STEP_TRACKER USING {source} \
                     ON STEP_TRACKER.step_id = v.sid OR STEP_TRACKER.idempotency_key = v.k \
                     WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({row})"
                )
            } else {
                format!(
                    "INSERT INTO STEP_TRACKER ({cols}) SELECT {row} FROM {source} \
                     WHERE NOT EXISTS (SELECT 1 FROM STEP_TRACKER s WHERE s.step_id = v.sid)"
                )
            };
            self.exec(op, &stmt).await?;
        }
        // Which step holds each key now (ours, or one inserted earlier).
        let mut by_key: HashMap<String, StepId> = HashMap::new();
        if !first_of_key.is_empty() {
            let keys: Vec<&str> = first_of_key.keys().copied().collect();
            for chunk in keys.chunks(CHUNK) {
                let list: Vec<String> = chunk.iter().map(|k| sql::text(k)).collect();
                let rows = self
                    .exec(
                        op,
                        &format!(
                            "SELECT step_id AS step_id, idempotency_key AS k FROM STEP_TRACKER \
                             WHERE idempotency_key IN ({}) ORDER BY created_ts, step_id",
                            list.join(", ")
                        ),
                    )
                    .await?;
                // Should duplicates ever exist (rows written by an older version),
                // the oldest step holds the key, for every caller alike.
                for r in rows {
                    if let (Some(id), Some(k)) =
                        (r.text("step_id").and_then(|s| s.parse().ok()), r.text("k"))
                    {
                        by_key.entry(k).or_insert(id);
                    }
                }
            }
        }
        steps
            .iter()
            .enumerate()
            .map(|(i, s)| match s.idempotency_key() {
                None => Ok(Inserted {
                    step_id: s.step_id(),
                    created: true,
                }),
                Some(k) => {
                    let id = *by_key
                        .get(k)
                        .ok_or_else(|| StoreError::fatal(op, "inserted step not found"))?;
                    Ok(Inserted {
                        step_id: id,
                        created: id == s.step_id() && first_of_key.get(k) == Some(&i),
                    })
                }
            })
            .collect()
    }
}
