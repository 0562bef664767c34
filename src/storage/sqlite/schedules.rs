//! Schedules (`fleet_q_actors::schedule`): the `SCHEDULES` table. It holds at
//! most `MAX_SCHEDULES` rows, so every statement here reads a small table and
//! none touches STEP_TRACKER.

use super::*;

use fleet_q_actors::schedule::{
    first_run, new_id, recent_json, timing_changed, DueSchedules, Schedule, ScheduleAdvance,
    ScheduleRow, ScheduleSpec, MAX_SCHEDULES,
};

const COLS: &str = "id, name, cron, every_seconds, time_zone, step, paused, catch_up, \
     catch_up_max, overlap, next_run_at, last_fired_at, recent, fires, skipped";

/// Most due schedules one fire pass reads (the rest come next pass).
const DUE_BATCH: i64 = 100;

fn from_row(r: &Row<'_>) -> rusqlite::Result<ScheduleRow> {
    Ok(ScheduleRow {
        id: r.get(0)?,
        name: r.get(1)?,
        cron: r.get(2)?,
        every_seconds: r.get(3)?,
        time_zone: r.get(4)?,
        step: r.get(5)?,
        paused: r.get::<_, i64>(6)? != 0,
        catch_up: r.get(7)?,
        catch_up_max: r.get(8)?,
        overlap: r.get(9)?,
        next_run_at: r.get(10)?,
        last_fired_at: r.get(11)?,
        recent: r.get(12)?,
        fires: r.get(13)?,
        skipped: r.get(14)?,
    })
}

fn decode(op: &'static str, rows: Vec<ScheduleRow>) -> Result<Vec<Schedule>, StoreError> {
    rows.into_iter()
        .map(|r| r.into_schedule().map_err(|e| StoreError::fatal(op, e)))
        .collect()
}

fn query(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
) -> rusqlite::Result<Vec<ScheduleRow>> {
    let mut st = c.prepare_cached(sql)?;
    let rows = st.query_map(p, from_row)?;
    rows.collect()
}

pub(super) fn list(c: &Connection) -> rusqlite::Result<Vec<ScheduleRow>> {
    query(
        c,
        &format!("SELECT {COLS} FROM SCHEDULES ORDER BY name LIMIT {MAX_SCHEDULES}"),
        [],
    )
}

pub(super) fn get(c: &Connection, key: &str) -> rusqlite::Result<Option<ScheduleRow>> {
    Ok(query(
        c,
        &format!(
            "SELECT {COLS} FROM SCHEDULES WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1"
        ),
        [key],
    )?
    .into_iter()
    .next())
}

pub(super) fn decode_one(
    op: &'static str,
    r: Option<ScheduleRow>,
) -> Result<Option<Schedule>, StoreError> {
    Ok(decode(op, r.into_iter().collect())?.pop())
}

pub(super) fn decode_all(
    op: &'static str,
    r: Vec<ScheduleRow>,
) -> Result<Vec<Schedule>, StoreError> {
    decode(op, r)
}

/// Creates or replaces by name (see `Store::schedule_put`), in one write
/// transaction, so two pods loading the same settings file cannot make two.
pub(super) fn put(c: &Connection, now: i64, spec: &ScheduleSpec) -> Result<Schedule, StoreError> {
    let op = "schedule_put";
    let err = |e| map_err(op, e);
    let now_t = fleet_q_actors::schedule::from_ms(now).unwrap_or_else(Utc::now);
    let old = get(c, &spec.name).map_err(err)?;
    let old = decode_one(op, old.filter(|r| r.name == spec.name))?;
    let (id, next) = match &old {
        Some(o) => {
            let resumed = o.spec.paused && !spec.paused;
            let next = if timing_changed(&o.spec, spec) || resumed {
                first_run(spec, now_t)
            } else {
                o.next_run_at
            };
            (o.id.clone(), next)
        }
        None => {
            let n: i64 = c
                .query_row("SELECT COUNT(*) FROM SCHEDULES", [], |r| r.get(0))
                .map_err(err)?;
            if n as usize >= MAX_SCHEDULES {
                return Err(StoreError::fatal(
                    op,
                    format!("a store holds at most {MAX_SCHEDULES} schedules"),
                ));
            }
            (new_id(), first_run(spec, now_t))
        }
    };
    let row = ScheduleRow::of_spec(&id, spec);
    // One upsert by name: a new schedule's row, or the spec columns and
    // `next_run_at` of the existing one (its id, history and creation kept).
    c.prepare_cached(
        "INSERT INTO SCHEDULES (id, name, cron, every_seconds, time_zone, step, paused, \
         catch_up, catch_up_max, overlap, next_run_at, created_ts, updated_ts) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12) \
         ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, \
         every_seconds = excluded.every_seconds, time_zone = excluded.time_zone, \
         step = excluded.step, paused = excluded.paused, catch_up = excluded.catch_up, \
         catch_up_max = excluded.catch_up_max, overlap = excluded.overlap, \
         next_run_at = excluded.next_run_at, updated_ts = excluded.updated_ts",
    )
    .and_then(|mut st| {
        st.execute(params![
            id,
            row.name,
            row.cron,
            row.every_seconds,
            row.time_zone,
            row.step,
            row.paused,
            row.catch_up,
            row.catch_up_max,
            row.overlap,
            next.map(|t| t.timestamp_millis()),
            now
        ])
    })
    .map_err(err)?;
    decode_one(op, get(c, &id).map_err(err)?)?
        .ok_or_else(|| StoreError::fatal(op, "the schedule vanished in its own transaction"))
}

pub(super) fn delete(c: &Connection, key: &str) -> Result<bool, StoreError> {
    let n = c
        .prepare_cached("DELETE FROM SCHEDULES WHERE id = ?1 OR name = ?1")
        .and_then(|mut st| st.execute([key]))
        .map_err(|e| map_err("schedule_delete", e))?;
    Ok(n > 0)
}

pub(super) fn pause(
    c: &Connection,
    now: i64,
    key: &str,
    paused: bool,
) -> Result<Option<Schedule>, StoreError> {
    let op = "schedule_pause";
    let err = |e| map_err(op, e);
    let Some(s) = decode_one(op, get(c, key).map_err(err)?)? else {
        return Ok(None);
    };
    let next = if s.spec.paused && !paused {
        first_run(
            &s.spec,
            fleet_q_actors::schedule::from_ms(now).unwrap_or_else(Utc::now),
        )
    } else {
        s.next_run_at
    };
    c.prepare_cached(
        "UPDATE SCHEDULES SET paused = ?2, next_run_at = ?3, updated_ts = ?4 WHERE id = ?1",
    )
    .and_then(|mut st| {
        st.execute(params![
            s.id,
            paused,
            next.map(|t| t.timestamp_millis()),
            now
        ])
    })
    .map_err(err)?;
    decode_one(op, get(c, &s.id).map_err(err)?)
}

pub(super) fn due(c: &Connection, now: i64) -> rusqlite::Result<(Vec<ScheduleRow>, Option<i64>)> {
    let due = query(
        c,
        &format!(
            "SELECT {COLS} FROM SCHEDULES WHERE paused = 0 AND next_run_at <= ?1 \
             ORDER BY next_run_at LIMIT {DUE_BATCH}"
        ),
        [now],
    )?;
    let next: Option<i64> = c
        .prepare_cached(
            "SELECT MIN(next_run_at) FROM SCHEDULES WHERE paused = 0 AND next_run_at > ?1",
        )?
        .query_row([now], |r| r.get(0))?;
    Ok((due, next))
}

pub(super) fn due_schedules(
    rows: Vec<ScheduleRow>,
    next: Option<i64>,
    now: i64,
) -> Result<DueSchedules, StoreError> {
    let op = "schedules_due";
    Ok(DueSchedules {
        now: fleet_q_actors::schedule::from_ms(now)
            .ok_or_else(|| StoreError::fatal(op, "store time out of range"))?,
        due: decode(op, rows)?,
        next_due: next.and_then(fleet_q_actors::schedule::from_ms),
    })
}

pub(super) fn advance(c: &Connection, now: i64, a: &ScheduleAdvance) -> Result<bool, StoreError> {
    let ms = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_millis());
    let n = c
        .prepare_cached(
            "UPDATE SCHEDULES SET next_run_at = ?3, recent = ?4, fires = fires + ?5, \
             skipped = skipped + ?6, last_fired_at = COALESCE(?7, last_fired_at), updated_ts = ?8 \
             WHERE id = ?1 AND next_run_at IS ?2",
        )
        .and_then(|mut st| {
            st.execute(params![
                a.id,
                ms(a.expected_next),
                ms(a.next_run_at),
                recent_json(&a.recent),
                a.fired.min(i64::MAX as u64) as i64,
                a.skipped.min(i64::MAX as u64) as i64,
                ms(a.fired_at),
                now
            ])
        })
        .map_err(|e| map_err("schedule_advance", e))?;
    Ok(n > 0)
}
