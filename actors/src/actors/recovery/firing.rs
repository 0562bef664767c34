//! The leader fires schedules (`crate::schedule`).
//!
//! While this pod leads, it reads the due schedules and fires them
//! ([`crate::schedule::fire_due`], through the StorageActor). It reads again
//! when the earliest `next_run_at` it saw comes (mapped from store time to
//! this pod's clock by the offset seen at the read), at once when a schedule
//! was changed through this pod's API ([`SchedulesChanged`]), and otherwise
//! every `schedule_check` (default 10 s), which is how it learns of schedules
//! changed through other pods. So an idle schedule costs one small read of
//! `SCHEDULES` per `schedule_check`, and a due one is fired within
//! milliseconds of its tick.
//!
//! A pass that made steps wakes this pod's claimer, so a fired step starts on
//! the leader at once when it has a free slot (other pods find it at their
//! next claim).
//!
//! While the pod is quiet (`crate::quiet`) the periodic check runs at wakes
//! only; a schedule still fires at its tick (a due schedule is work).
//!
//! Ticks up to `schedule_check` + 5 s old count as on time (the grace of
//! `crate::schedule::FireParams`), so a schedule made through another pod,
//! seen only at the next check, is not mistaken for one missed in downtime.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use actix::prelude::*;
use prometheus::{Histogram, IntCounterVec};

use super::RecoveryActor;
use crate::actors::storage::StoreCall;
use crate::schedule::{fire_due, FireParams, FireReport};
use crate::supervision::guarded;

static FIRES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    crate::metrics::counter_vec(
        "fleet_q_schedule_fires_total",
        "Steps fired by schedules while this pod led, by schedule name (at most MAX_SCHEDULES names).",
        &["schedule"],
    )
});
static SKIPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    crate::metrics::counter_vec(
        "fleet_q_schedule_skipped_ticks_total",
        "Ticks skipped by a schedule's catch-up or overlap policy, by schedule name.",
        &["schedule"],
    )
});
static LAG: LazyLock<Histogram> = LazyLock::new(|| {
    crate::metrics::histogram(
        "fleet_q_schedule_fire_lag_seconds",
        "Time from a schedule's tick to its fire (store time).",
        vec![
            0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 3600.0,
        ],
    )
});

/// Forces registration of this module's metrics.
pub fn register_metrics() {
    LazyLock::force(&LAG);
    LazyLock::force(&FIRES);
    LazyLock::force(&SKIPPED);
}

/// Extra grace beyond the check period for a tick to count as on time.
const GRACE_SLACK: Duration = Duration::from_secs(5);

/// The shortest pause between two fire passes (a schedule every second still
/// gets one pass per tick).
const MIN_PASS_GAP: Duration = Duration::from_millis(20);

impl RecoveryActor {
    pub(super) fn schedule_fire(&mut self, ctx: &mut Context<Self>, after: Duration) {
        if let Some(t) = self.fire_timer.take() {
            ctx.cancel_future(t);
        }
        self.fire_timer = Some(ctx.notify_later(FireSchedules, after));
    }

    /// The wait before the next pass: `check`, no later than the next wake
    /// while quiet, and no later than the next tick the last pass saw.
    pub(super) fn fire_wait(&self, check: Duration) -> Duration {
        let w = self.state.quiet.wait(check);
        match self.fire_due_at {
            Some(t) => w.min(t.saturating_duration_since(Instant::now())),
            None => w,
        }
    }

    pub(super) fn stop_firing(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.fire_timer.take() {
            ctx.cancel_future(t);
        }
    }

    /// One pass: read the due schedules and fire them, then sleep until the
    /// next one is due or the check period ends.
    fn fire_pass(&mut self, ctx: &mut Context<Self>) {
        if !self.is_leader {
            return;
        }
        if self.firing {
            self.fire_again = true;
            return;
        }
        self.firing = true;
        let grace = self.cfg.schedule_check + GRACE_SLACK;
        let call = StoreCall {
            op: "schedules_fire",
            f: Box::new(move |s| {
                Box::pin(async move { fire_due(s.as_ref(), FireParams { now: None, grace }).await })
            }),
        };
        let sent = Instant::now();
        self.storage
            .send(call)
            .into_actor(self)
            .map(move |res, act, ctx| {
                guarded(act, ctx, move |act, ctx| {
                    act.firing = false;
                    if !act.is_leader {
                        return;
                    }
                    let check = act.cfg.schedule_check;
                    let wait = match res {
                        Ok(Ok(report)) => {
                            record(&report);
                            if report.fired.iter().any(|f| f.3) {
                                if let Some(c) = &act.claimer {
                                    c.do_send(crate::messages::ClaimTriggered(
                                        crate::messages::ClaimTrigger::Submitted,
                                    ));
                                }
                            }
                            let next = until_next(&report, sent);
                            act.fire_due_at = next.map(|d| Instant::now() + d);
                            act.fire_wait(check)
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "firing schedules failed; trying again");
                            Duration::from_secs(1).min(check)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "firing schedules: storage unavailable");
                            Duration::from_secs(1).min(check)
                        }
                    };
                    let wait = if std::mem::take(&mut act.fire_again) {
                        // Asked for during the pass: due now, quiet or not.
                        act.fire_due_at = Some(Instant::now());
                        Duration::ZERO
                    } else {
                        wait
                    };
                    act.schedule_fire(ctx, wait.max(MIN_PASS_GAP));
                });
            })
            .spawn(ctx);
    }
}

/// How long from now until the earliest next tick the pass saw (store time,
/// mapped onto this pod's clock from when the pass was sent).
fn until_next(report: &FireReport, sent: Instant) -> Option<Duration> {
    let (next, now) = (report.next_due?, report.now?);
    let ahead = (next - now).to_std().unwrap_or(Duration::ZERO);
    Some(ahead.saturating_sub(sent.elapsed()))
}

fn record(report: &FireReport) {
    for (name, tick, step, made) in &report.fired {
        FIRES.with_label_values(&[name]).inc();
        tracing::info!(schedule = %name, %tick, step_id = %step, made, "schedule fired");
    }
    for lag in &report.lags {
        LAG.observe(*lag);
    }
    for (name, n) in &report.skipped {
        SKIPPED.with_label_values(&[name]).inc_by(*n);
        tracing::info!(schedule = %name, skipped = n, "schedule skipped ticks");
    }
    if report.lost > 0 {
        tracing::info!(
            lost = report.lost,
            "another leader fired some schedules first"
        );
    }
}

/// The next fire pass is due.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct FireSchedules;

impl Handler<FireSchedules> for RecoveryActor {
    type Result = ();
    fn handle(&mut self, _: FireSchedules, ctx: &mut Context<Self>) {
        self.fire_timer = None;
        guarded(self, ctx, |act, ctx| {
            let tick_due = act
                .fire_due_at
                .is_some_and(|t| t <= Instant::now() + MIN_PASS_GAP);
            if !tick_due && !act.fire_gate.open(&act.state.quiet) {
                let next = act.fire_wait(act.cfg.schedule_check);
                return act.schedule_fire(ctx, next.max(MIN_PASS_GAP));
            }
            act.fire_pass(ctx)
        });
    }
}

/// A schedule was made, changed or deleted through this pod: the leader reads
/// the schedules again now instead of at its next check.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SchedulesChanged;

impl Handler<SchedulesChanged> for RecoveryActor {
    type Result = ();
    fn handle(&mut self, _: SchedulesChanged, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, ctx| {
            if act.is_leader {
                act.fire_pass(ctx);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn the_next_pass_waits_for_the_earliest_tick() {
        let now = Utc.timestamp_millis_opt(1_000_000).unwrap();
        let report = FireReport {
            now: Some(now),
            next_due: Some(now + chrono::Duration::milliseconds(1500)),
            ..FireReport::default()
        };
        let d = until_next(&report, Instant::now()).unwrap();
        assert!(d <= Duration::from_millis(1500) && d > Duration::from_millis(1000));
        let none = FireReport {
            now: Some(now),
            ..FireReport::default()
        };
        assert_eq!(until_next(&none, Instant::now()), None);
    }
}
