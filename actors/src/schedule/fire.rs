//! Firing: the leader's pass over the due schedules, and manual triggers.
//! See the parent module for why two firers at once are harmless.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{plan, tick_key, Fire, Overlap, Schedule, RECENT_FIRES};
use crate::step::{StepId, StepStatus};
use crate::store::{Store, StoreError};

/// Parameters of [`fire_due`].
#[derive(Clone, Copy, Debug)]
pub struct FireParams {
    /// The time to fire at (`None`: the store's clock). Tests pass a later time
    /// to see catch-up without waiting.
    pub now: Option<DateTime<Utc>>,
    /// Ticks at most this old are on time (see the module docs).
    pub grace: Duration,
}

/// What one [`fire_due`] pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FireReport {
    /// Steps made or found per fired tick: `(schedule name, tick, step, made
    /// now)`; `made now` is false when an earlier fire of the tick made it.
    pub fired: Vec<(String, DateTime<Utc>, StepId, bool)>,
    /// Ticks skipped, per schedule name.
    pub skipped: Vec<(String, u64)>,
    /// Lag between each tick and its fire, in seconds.
    pub lags: Vec<f64>,
    /// Schedules whose advance lost the compare-and-set (another leader
    /// fired them).
    pub lost: u32,
    /// The earliest `next_run_at` among the schedules (after this pass),
    /// and the store time it was read at.
    pub next_due: Option<DateTime<Utc>>,
    /// The time the pass fired at.
    pub now: Option<DateTime<Utc>>,
}

/// Fires every due schedule (the leader calls this; see the module docs for
/// why two callers at once are harmless).
pub async fn fire_due(store: &dyn Store, p: FireParams) -> Result<FireReport, StoreError> {
    let due = store.schedules_due(p.now).await?;
    let now = due.now;
    let mut report = FireReport {
        now: Some(now),
        next_due: due.next_due,
        ..FireReport::default()
    };
    for s in due.due {
        let Some(next) = s.next_run_at else { continue };
        let timing = match s.spec.timing() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(schedule = %s.spec.name, error = %e, "schedule cannot be fired");
                continue;
            }
        };
        let mut pl = plan(
            &timing,
            s.spec.catch_up,
            s.spec.catch_up_max,
            next,
            now,
            p.grace,
        );
        if s.spec.overlap == Overlap::Skip && !pl.fire.is_empty() {
            let live = match s.recent.first() {
                Some(f) => store.step_get(f.step_id).await?.is_some_and(|st| {
                    matches!(st.status, StepStatus::Pending | StepStatus::Claimed)
                }),
                None => false,
            };
            let keep = usize::from(!live);
            let drop = pl.fire.len() - keep;
            pl.skipped += drop as u64;
            pl.fire.drain(..drop);
        }
        let mut steps = Vec::with_capacity(pl.fire.len());
        for tick in &pl.fire {
            match s.spec.step.new_step(tick_key(&s.id, *tick)) {
                Ok(st) => steps.push(st),
                Err(e) => {
                    tracing::warn!(schedule = %s.spec.name, error = %e, "schedule's step is not valid");
                }
            }
        }
        if steps.len() != pl.fire.len() {
            continue;
        }
        let inserted = if steps.is_empty() {
            Vec::new()
        } else {
            store.steps_insert(steps).await?
        };
        let mut recent: Vec<Fire> = pl
            .fire
            .iter()
            .zip(&inserted)
            .rev()
            .map(|(tick, ins)| Fire {
                tick: *tick,
                step_id: ins.step_id,
                manual: false,
            })
            .collect();
        recent.extend(s.recent.iter().cloned());
        recent.truncate(RECENT_FIRES);
        let won = store
            .schedule_advance(ScheduleAdvance {
                id: s.id.clone(),
                expected_next: s.next_run_at,
                next_run_at: pl.next_run_at,
                recent,
                fired: pl.fire.len() as u64,
                skipped: pl.skipped,
                fired_at: (!pl.fire.is_empty()).then_some(now),
            })
            .await?;
        if !won {
            report.lost += 1;
            continue;
        }
        for (tick, ins) in pl.fire.iter().zip(&inserted) {
            report
                .fired
                .push((s.spec.name.clone(), *tick, ins.step_id, ins.created));
            report
                .lags
                .push((now - *tick).num_milliseconds().max(0) as f64 / 1000.0);
        }
        if pl.skipped > 0 {
            report.skipped.push((s.spec.name.clone(), pl.skipped));
        }
        if let Some(n) = pl.next_run_at {
            report.next_due = Some(report.next_due.map_or(n, |d| d.min(n)));
        }
    }
    Ok(report)
}

/// Submits a schedule's step now, once, outside its ticks (`POST
/// …/trigger`), and records it among the schedule's recent fires. Answers the
/// step's id, or `None` when there is no such schedule.
pub async fn trigger(store: &dyn Store, id: &str) -> Result<Option<StepId>, StoreError> {
    let Some(s) = store.schedule_get(id).await? else {
        return Ok(None);
    };
    let step = s
        .spec
        .step
        .new_step(format!("schedule:{}:trigger:{}", s.id, StepId::generate()))
        .map_err(|e| StoreError::fatal("schedule_trigger", e.to_string()))?;
    let step_id = store.steps_insert(vec![step]).await?[0].step_id;
    let now = store.now().await?;
    // Recorded with a compare-and-set like a fire; a fire racing it wins and
    // the trigger is recorded on the next try.
    let mut s = s;
    for _ in 0..5 {
        let mut recent = vec![Fire {
            tick: now,
            step_id,
            manual: true,
        }];
        recent.extend(s.recent.iter().cloned());
        recent.truncate(RECENT_FIRES);
        let won = store
            .schedule_advance(ScheduleAdvance {
                id: s.id.clone(),
                expected_next: s.next_run_at,
                next_run_at: s.next_run_at,
                recent,
                fired: 1,
                skipped: 0,
                fired_at: Some(now),
            })
            .await?;
        if won {
            break;
        }
        match store.schedule_get(&s.id).await? {
            Some(again) => s = again,
            None => break,
        }
    }
    Ok(Some(step_id))
}

/// What [`Store::schedules_due`] answers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DueSchedules {
    /// The time judged by (the store's clock, or the time asked for).
    pub now: DateTime<Utc>,
    /// Schedules not paused whose `next_run_at` is at or before `now`.
    pub due: Vec<Schedule>,
    /// The earliest `next_run_at` of the schedules not paused and not due.
    pub next_due: Option<DateTime<Utc>>,
}

/// Parameters of [`Store::schedule_advance`]: a compare-and-set on
/// `next_run_at`.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleAdvance {
    /// The schedule.
    pub id: String,
    /// The `next_run_at` read before firing; nothing changes unless it still
    /// holds.
    pub expected_next: Option<DateTime<Utc>>,
    /// The new `next_run_at`.
    pub next_run_at: Option<DateTime<Utc>>,
    /// The new recent fires, newest first.
    pub recent: Vec<Fire>,
    /// Added to the fire count.
    pub fired: u64,
    /// Added to the skipped count.
    pub skipped: u64,
    /// The new `last_fired_at`, when it fired.
    pub fired_at: Option<DateTime<Utc>>,
}
