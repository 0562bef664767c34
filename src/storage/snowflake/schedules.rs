//! Schedules (`fleet_q_actors::schedule`) on Snowflake: the `SCHEDULES` table,
//! at most `MAX_SCHEDULES` rows. Standard tables enforce no UNIQUE key, so a
//! schedule is written by `MERGE … ON name` (DML on one table runs one
//! statement at a time, so two pods loading the same settings file make one
//! row), and a fire's uniqueness comes from its step's idempotency key.
//! Reads tolerate duplicate names anyway: the first row of a name wins.
//!
//! Cost: the leader's `schedules_due` is one `SELECT` over `SCHEDULES` (with
//! the store's clock in the same statement); a fire adds the step insert and
//! one `UPDATE`. Nothing here reads STEP_TRACKER.

use super::*;

use fleet_q_actors::schedule::{
    first_run, from_ms, new_id, recent_json, timing_changed, DueSchedules, Schedule,
    ScheduleAdvance, ScheduleRow, ScheduleSpec, MAX_SCHEDULES,
};

const COLS: &str = "s.id AS id, s.name AS name, s.cron AS cron, s.every_seconds AS every_seconds, \
     s.time_zone AS time_zone, s.step AS step, s.paused AS paused, s.catch_up AS catch_up, \
     s.catch_up_max AS catch_up_max, s.overlap AS overlap, s.next_run_at AS next_run_at, \
     s.last_fired_at AS last_fired_at, s.recent AS recent, s.fires AS fires, s.skipped AS skipped";

fn row_of(r: &Row) -> Option<ScheduleRow> {
    Some(ScheduleRow {
        id: r.text("id")?,
        name: r.text("name")?,
        cron: r.text("cron"),
        every_seconds: r.int("every_seconds"),
        time_zone: r.text("time_zone").unwrap_or_else(|| "UTC".into()),
        step: r.text("step")?,
        paused: matches!(
            r.text("paused").as_deref(),
            Some("true" | "TRUE" | "True" | "1")
        ),
        catch_up: r.text("catch_up").unwrap_or_default(),
        catch_up_max: r.int("catch_up_max").unwrap_or(100),
        overlap: r.text("overlap").unwrap_or_default(),
        next_run_at: r.int("next_run_at"),
        last_fired_at: r.int("last_fired_at"),
        recent: r.text("recent").unwrap_or_else(|| "[]".into()),
        fires: r.int("fires").unwrap_or(0),
        skipped: r.int("skipped").unwrap_or(0),
    })
}

fn decode(op: &'static str, rows: &[Row]) -> Result<Vec<Schedule>, StoreError> {
    let mut out: Vec<Schedule> = Vec::new();
    for r in rows {
        let Some(row) = row_of(r) else { continue };
        if out.iter().any(|s| s.spec.name == row.name) {
            continue;
        }
        out.push(row.into_schedule().map_err(|e| StoreError::fatal(op, e))?);
    }
    Ok(out)
}

fn opt_int(v: Option<i64>) -> String {
    v.map_or_else(|| "CAST(NULL AS NUMBER)".to_string(), sql::int)
}

fn opt_text(v: Option<&str>) -> String {
    v.map_or_else(|| "CAST(NULL AS VARCHAR)".to_string(), sql::text)
}

impl SnowflakeStore {
    pub(super) async fn schedules_read(
        &self,
        op: &'static str,
        key: Option<&str>,
    ) -> Result<Vec<Schedule>, StoreError> {
        let filter = key.map_or(String::new(), |k| {
            let k = sql::text(k);
            format!("WHERE s.id = {k} OR s.name = {k}")
        });
        let rows = self
            .exec(
                op,
                &format!(
                    "SELECT {COLS} FROM SCHEDULES s {filter} ORDER BY s.name, s.created_ms LIMIT {}",
                    MAX_SCHEDULES * 2
                ),
            )
            .await?;
        let mut all = decode(op, &rows)?;
        if let Some(k) = key {
            // An id match wins over a name match.
            all.sort_by_key(|s| s.id != k);
        }
        Ok(all)
    }

    pub(super) async fn schedule_upsert(&self, spec: ScheduleSpec) -> Result<Schedule, StoreError> {
        let op = "schedule_put";
        let problems = spec.problems();
        if !problems.is_empty() {
            return Err(StoreError::fatal(op, problems.join("; ")));
        }
        let now = self.now().await?;
        let all = self.schedules_read(op, None).await?;
        let old = all.iter().find(|s| s.spec.name == spec.name);
        if old.is_none() && all.len() >= MAX_SCHEDULES {
            return Err(StoreError::fatal(
                op,
                format!("a store holds at most {MAX_SCHEDULES} schedules"),
            ));
        }
        let (id, next) = match old {
            Some(o) => {
                let resumed = o.spec.paused && !spec.paused;
                let next = if timing_changed(&o.spec, &spec) || resumed {
                    first_run(&spec, now)
                } else {
                    o.next_run_at
                };
                (o.id.clone(), next)
            }
            None => (new_id(), first_run(&spec, now)),
        };
        let r = ScheduleRow::of_spec(&id, &spec);
        let now_ms = now.timestamp_millis();
        // The source row's columns, in the order of `src`.
        let values = [
            sql::text(&r.id),
            sql::text(&r.name),
            opt_text(r.cron.as_deref()),
            opt_int(r.every_seconds),
            sql::text(&r.time_zone),
            sql::text(&r.step),
            if r.paused { "TRUE" } else { "FALSE" }.to_string(),
            sql::text(&r.catch_up),
            sql::int(r.catch_up_max),
            sql::text(&r.overlap),
            opt_int(next.map(|t| t.timestamp_millis())),
            sql::int(now_ms),
        ];
        let src = "id, name, cron, every_seconds, time_zone, step, paused, catch_up, \
                   catch_up_max, overlap, next_run_at, now_ms";
        let select = src
            .split(", ")
            .zip(&values)
            .map(|(c, v)| format!("{v} AS {c}"))
            .collect::<Vec<_>>()
            .join(", ");
        self.exec(
            op,
            &format!(
                "MERGE INTO SCHEDULES USING (SELECT {select}) v ON SCHEDULES.name = v.name \
                 WHEN MATCHED THEN UPDATE SET cron = v.cron, every_seconds = v.every_seconds, \
                   time_zone = v.time_zone, step = v.step, paused = v.paused, catch_up = v.catch_up, \
                   catch_up_max = v.catch_up_max, overlap = v.overlap, next_run_at = v.next_run_at, \
                   updated_ms = v.now_ms \
                 WHEN NOT MATCHED THEN INSERT (id, name, cron, every_seconds, time_zone, step, paused, \
                   catch_up, catch_up_max, overlap, next_run_at, last_fired_at, recent, fires, skipped, \
                   created_ms, updated_ms) VALUES (v.id, v.name, v.cron, v.every_seconds, v.time_zone, \
                   v.step, v.paused, v.catch_up, v.catch_up_max, v.overlap, v.next_run_at, NULL, '[]', \
                   0, 0, v.now_ms, v.now_ms)"
            ),
        )
        .await?;
        self.schedules_read(op, Some(&spec.name))
            .await?
            .into_iter()
            .find(|s| s.spec.name == spec.name)
            .ok_or_else(|| StoreError::fatal(op, "the schedule was deleted as it was written"))
    }

    pub(super) async fn schedule_remove(&self, key: &str) -> Result<bool, StoreError> {
        let k = sql::text(key);
        let rows = self
            .exec(
                "schedule_delete",
                &format!("DELETE FROM SCHEDULES WHERE id = {k} OR name = {k}"),
            )
            .await?;
        Ok(affected(&rows) > 0)
    }

    pub(super) async fn schedule_set_paused(
        &self,
        key: &str,
        paused: bool,
    ) -> Result<Option<Schedule>, StoreError> {
        let op = "schedule_pause";
        let Some(s) = self.schedules_read(op, Some(key)).await?.into_iter().next() else {
            return Ok(None);
        };
        let next = if s.spec.paused && !paused {
            first_run(&s.spec, self.now().await?)
        } else {
            s.next_run_at
        };
        self.exec(
            op,
            &format!(
                "UPDATE SCHEDULES SET paused = {}, next_run_at = {}, \
                 updated_ms = DATE_PART(EPOCH_MILLISECOND, SYSDATE()) WHERE id = {}",
                if paused { "TRUE" } else { "FALSE" },
                opt_int(next.map(|t| t.timestamp_millis())),
                sql::text(&s.id)
            ),
        )
        .await?;
        Ok(self
            .schedules_read(op, Some(&s.id))
            .await?
            .into_iter()
            .next())
    }

    /// One statement: the store's clock and every schedule not paused (the
    /// clock comes from a one-row source, so it arrives with no schedule too).
    pub(super) async fn schedules_due_at(
        &self,
        at: Option<DateTime<Utc>>,
    ) -> Result<DueSchedules, StoreError> {
        let op = "schedules_due";
        let rows = self
            .exec(
                op,
                &format!(
                    "SELECT n.now_ms AS now_ms, {COLS} FROM \
                     (SELECT DATE_PART(EPOCH_MILLISECOND, SYSDATE()) AS now_ms) n \
                     LEFT JOIN SCHEDULES s ON s.paused = FALSE AND s.next_run_at IS NOT NULL \
                     ORDER BY s.next_run_at LIMIT {}",
                    MAX_SCHEDULES * 2
                ),
            )
            .await?;
        let clock = rows
            .first()
            .and_then(|r| r.int("now_ms"))
            .ok_or_else(|| bad(op, "store time"))?;
        let now_ms = at.map_or(clock, |t| t.timestamp_millis());
        let now = from_ms(now_ms).ok_or_else(|| bad(op, "store time"))?;
        let all = decode(op, &rows)?;
        let mut due = Vec::new();
        let mut next_due: Option<DateTime<Utc>> = None;
        for s in all {
            match s.next_run_at {
                Some(t) if t <= now => due.push(s),
                Some(t) => next_due = Some(next_due.map_or(t, |n| n.min(t))),
                None => {}
            }
        }
        Ok(DueSchedules { now, due, next_due })
    }

    pub(super) async fn schedule_cas(&self, a: &ScheduleAdvance) -> Result<bool, StoreError> {
        let ms = |t: Option<DateTime<Utc>>| opt_int(t.map(|t| t.timestamp_millis()));
        let expected = match a.expected_next {
            Some(t) => format!("next_run_at = {}", sql::int(t.timestamp_millis())),
            None => "next_run_at IS NULL".into(),
        };
        let rows = self
            .exec(
                "schedule_advance",
                &format!(
                    "UPDATE SCHEDULES SET next_run_at = {next}, recent = {recent}, \
                     fires = fires + {fired}, skipped = skipped + {skipped}, \
                     last_fired_at = COALESCE({at}, last_fired_at), \
                     updated_ms = DATE_PART(EPOCH_MILLISECOND, SYSDATE()) \
                     WHERE id = {id} AND {expected}",
                    next = ms(a.next_run_at),
                    recent = sql::text(&recent_json(&a.recent)),
                    fired = sql::int(a.fired.min(i64::MAX as u64) as i64),
                    skipped = sql::int(a.skipped.min(i64::MAX as u64) as i64),
                    at = ms(a.fired_at),
                    id = sql::text(&a.id),
                ),
            )
            .await?;
        Ok(affected(&rows) > 0)
    }
}
