//! HeartbeatActor: owns this pod's POD_HEALTH row.
//!
//! Every heartbeat interval it upserts the row with the capacity in use. Its health
//! (last beat succeeded and is younger than half the dead-pod threshold) gates
//! claiming and leadership: a pod whose heartbeat fails or goes stale may soon be
//! declared dead by the leader, so it must stop taking work before that happens.
//! If the store answers that this pod is `down` (it was presumed dead, e.g. after a
//! long pause), the pod takes a new identity and beats again under it: work done
//! under the old identity is rejected by fencing.
//!
//! While the pod is quiet (`crate::quiet`) it beats only at wakes and its row
//! declares the wake period as its interval and a longer dead-after, by which
//! the leader judges it. Leaving quiet ([`Rouse`]) it declares the normal
//! interval again before the pod may claim.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::jittered;
use super::storage::{SendHeartbeat, StorageActor};
use crate::messages::{HeartbeatHealthChanged, QuietChanged, Rouse};
use crate::quiet::Gate;
use crate::records::PodStatus;
use crate::state::PodState;
use crate::store::{HeartbeatParams, StoreError};
use crate::supervision::{guarded, SupervisedActor};

/// HeartbeatActor settings.
#[derive(Clone, Debug)]
pub struct HeartbeatConfig {
    /// Period (default 30 s, `FLEET_Q_HEARTBEAT_INTERVAL_SECONDS`).
    pub interval: Duration,
    /// A pod is dead after this long without a heartbeat (default 180 s). This pod
    /// counts itself unhealthy after half of it.
    pub dead_threshold: Duration,
    /// Free-form JSON written with each beat (version, host, API address).
    pub meta: serde_json::Value,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval: crate::defaults::HEARTBEAT_INTERVAL,
            dead_threshold: crate::defaults::DEAD_POD_THRESHOLD,
            meta: serde_json::Value::Null,
        }
    }
}

impl HeartbeatConfig {
    /// Adds a line to `problems` for each value this actor cannot run with.
    pub(crate) fn validate(&self, problems: &mut Vec<String>) {
        if self.interval.is_zero() {
            problems.push("heartbeat: interval must be above zero".into());
        }
        if self.dead_threshold <= self.interval * 2 {
            problems.push(format!(
                "heartbeat: dead_threshold ({:?}) must be more than twice the interval ({:?}), or live pods would be declared dead",
                self.dead_threshold, self.interval
            ));
        }
    }
}

/// Retry period while the heartbeat is unhealthy.
const UNHEALTHY_RETRY: Duration = Duration::from_secs(1);

/// The actor.
pub struct HeartbeatActor {
    cfg: HeartbeatConfig,
    state: Arc<PodState>,
    storage: Addr<StorageActor>,
    subscribers: Vec<Recipient<HeartbeatHealthChanged>>,
    last_ok: Option<Instant>,
    beating: bool,
    /// Another beat was asked for while one was in flight.
    again: bool,
    timer: Option<SpawnHandle>,
    /// Whether the row may declare the quiet interval: set when a quiet beat
    /// is sent, cleared when a normal beat has landed.
    declared_quiet: bool,
    /// The dead-after the last successful beat declared (staleness is judged
    /// against it).
    declared_dead_after: Duration,
    /// [`Rouse`] callers waiting for a normal beat to land.
    waiters: Vec<tokio::sync::oneshot::Sender<Result<(), StoreError>>>,
    gate: Gate,
}

impl HeartbeatActor {
    /// A heartbeat actor telling `subscribers` about health changes.
    pub fn new(
        cfg: HeartbeatConfig,
        state: Arc<PodState>,
        storage: Addr<StorageActor>,
        subscribers: Vec<Recipient<HeartbeatHealthChanged>>,
    ) -> Self {
        let declared_dead_after = crate::records::dead_after(cfg.interval, cfg.dead_threshold);
        HeartbeatActor {
            cfg,
            state,
            storage,
            subscribers,
            last_ok: None,
            beating: false,
            again: false,
            timer: None,
            declared_quiet: false,
            declared_dead_after,
            waiters: Vec::new(),
            gate: Gate::default(),
        }
    }

    fn set_health(&mut self, healthy: bool) {
        if self.state.heartbeat_healthy() != healthy {
            self.state.set_heartbeat_healthy(healthy);
            tracing::info!(healthy, pod_id = %self.state.pod_id(), "own heartbeat health changed");
            for s in &self.subscribers {
                s.do_send(HeartbeatHealthChanged { healthy });
            }
        }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>, after: Duration) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.timer = Some(ctx.notify_later(Beat, after));
    }

    /// What this beat declares: the normal interval and dead-after, or the
    /// quiet ones while the pod is quiet.
    fn declaration(&self, quiet: bool) -> (Duration, Duration) {
        match self.state.quiet.period() {
            Some(p) if quiet => (
                p,
                crate::quiet::quiet_dead_after(p, self.cfg.dead_threshold),
            ),
            _ => (
                self.cfg.interval,
                crate::records::dead_after(self.cfg.interval, self.cfg.dead_threshold),
            ),
        }
    }

    fn answer_waiters(&mut self, r: Result<(), StoreError>) {
        for w in self.waiters.drain(..) {
            let _ = w.send(r.clone());
        }
    }

    fn beat(&mut self, ctx: &mut Context<Self>) {
        if self.beating {
            self.again = true;
            return;
        }
        if is_stale(self.last_ok, Instant::now(), self.declared_dead_after) {
            self.set_health(false);
        }
        #[cfg(feature = "failpoints")]
        if self.state.heartbeat_failure_injected() {
            // As a heartbeat write that failed (test builds only).
            tracing::warn!("heartbeat failed (injected)");
            self.set_health(false);
            self.answer_waiters(Err(StoreError::transient(
                "pod_heartbeat",
                "heartbeat failed (injected)",
            )));
            let next = self.cfg.interval.min(UNHEALTHY_RETRY);
            self.schedule(ctx, next);
            return;
        }
        self.beating = true;
        let quiet = self.state.quiet.is_quiet();
        if quiet {
            self.declared_quiet = true;
        }
        let (interval, dead_after) = self.declaration(quiet);
        let params = HeartbeatParams {
            pod_id: self.state.pod_id(),
            status: PodStatus::Up,
            capacity_in_use: self.state.running_count(),
            max_capacity: self.state.max_capacity(),
            meta: self.state.heartbeat_meta(&self.cfg.meta),
            incarnation: self.state.incarnation(),
            heartbeat_interval: Some(interval),
            dead_after: Some(dead_after),
        };
        let asked_for = params.pod_id.clone();
        self.storage
            .send(SendHeartbeat(params))
            .into_actor(self)
            .map(move |res, act, ctx| {
                guarded(act, ctx, move |act, ctx| {
                    act.beating = false;
                    let res = res.unwrap_or_else(|e| {
                        Err(StoreError::transient("pod_heartbeat", e.to_string()))
                    });
                    match res {
                        Ok(rec) if rec.status == PodStatus::Down && rec.pod_id == asked_for => {
                            let new_id = act.state.rejoin();
                            tracing::warn!(
                                old_pod_id = %asked_for, new_pod_id = %new_id,
                                "this pod was marked down (presumed dead); rejoining under a new identity"
                            );
                            act.last_ok = None;
                            act.set_health(false);
                            act.schedule(ctx, Duration::ZERO);
                        }
                        Ok(_) => {
                            act.last_ok = Some(Instant::now());
                            act.declared_dead_after = dead_after;
                            act.state.quiet.set_declared_interval(interval);
                            act.set_health(true);
                            if !quiet {
                                act.declared_quiet = false;
                                act.answer_waiters(Ok(()));
                            }
                            if std::mem::take(&mut act.again)
                                || act.state.quiet.is_quiet() != quiet
                                || (!act.waiters.is_empty() && !act.state.quiet.is_quiet())
                            {
                                act.schedule(ctx, Duration::ZERO);
                            } else {
                                let next = act.state.quiet.wait(jittered(act.cfg.interval, 0.1));
                                act.schedule(ctx, next);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "heartbeat failed");
                            act.again = false;
                            act.answer_waiters(Err(e.clone()));
                            act.set_health(false);
                            let next = act.cfg.interval.min(UNHEALTHY_RETRY);
                            act.schedule(ctx, next);
                        }
                    }
                });
            })
            .spawn(ctx);
    }
}

/// Stale: the last successful beat is older than half the dead threshold, so the
/// leader may soon presume this pod dead. (No beat yet is "not healthy yet", which
/// the actor starts as, not stale.)
fn is_stale(last_ok: Option<Instant>, now: Instant, dead_threshold: Duration) -> bool {
    last_ok.is_some_and(|t| now.saturating_duration_since(t) > dead_threshold / 2)
}

impl Actor for HeartbeatActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.state.actor_started(Self::NAME);
        self.beating = false;
        self.again = false;
        self.timer = None;
        self.beat(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.state.actor_stopped(Self::NAME);
    }
}

impl Supervised for HeartbeatActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.beating = false;
        self.again = false;
        self.timer = None;
        // Waiters see the restart as a failed beat and try again.
        self.waiters.clear();
    }
}

impl SupervisedActor for HeartbeatActor {
    const NAME: &'static str = "heartbeat";
    fn pod_state(&self) -> &Arc<PodState> {
        &self.state
    }
}

crate::impl_inject_fault!(HeartbeatActor);

/// The periodic tick.
#[derive(Message)]
#[rtype(result = "()")]
struct Beat;

impl Handler<Beat> for HeartbeatActor {
    type Result = ();
    fn handle(&mut self, _: Beat, ctx: &mut Context<Self>) {
        self.timer = None;
        guarded(self, ctx, |act, ctx| {
            // Quiet and already declared so: beat only at a wake.
            let quiet = act.state.quiet.is_quiet();
            if quiet && act.declared_quiet && !act.gate.open(&act.state.quiet) {
                let next = act.state.quiet.wait(act.cfg.interval);
                act.schedule(ctx, next);
                return;
            }
            act.beat(ctx)
        });
    }
}

impl Handler<QuietChanged> for HeartbeatActor {
    type Result = ();
    fn handle(&mut self, _: QuietChanged, ctx: &mut Context<Self>) {
        // Declare the new interval at once.
        self.gate = Gate::default();
        guarded(self, ctx, |act, ctx| act.beat(ctx));
    }
}

impl Handler<Rouse> for HeartbeatActor {
    type Result = ResponseFuture<Result<(), StoreError>>;
    fn handle(&mut self, _: Rouse, ctx: &mut Context<Self>) -> Self::Result {
        if !self.declared_quiet {
            return Box::pin(async { Ok(()) });
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiters.push(tx);
        guarded(self, ctx, |act, ctx| act.beat(ctx));
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(StoreError::transient(
                    "pod_heartbeat",
                    "the heartbeat actor restarted",
                ))
            })
        })
    }
}

/// The last heartbeat of a graceful shutdown: the row is marked `down` so the
/// leader does not wait for the dead-pod threshold.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct FinalHeartbeat;

impl Handler<FinalHeartbeat> for HeartbeatActor {
    type Result = ResponseFuture<Result<(), StoreError>>;
    fn handle(&mut self, _: FinalHeartbeat, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.set_health(false);
        let params = HeartbeatParams {
            pod_id: self.state.pod_id(),
            status: PodStatus::Down,
            capacity_in_use: 0,
            max_capacity: self.state.max_capacity(),
            meta: self.state.heartbeat_meta(&self.cfg.meta),
            incarnation: self.state.incarnation(),
            heartbeat_interval: Some(self.cfg.interval),
            dead_after: Some(crate::records::dead_after(
                self.cfg.interval,
                self.cfg.dead_threshold,
            )),
        };
        let storage = self.storage.clone();
        Box::pin(async move {
            storage
                .send(SendHeartbeat(params))
                .await
                .map_err(|e| StoreError::transient("pod_heartbeat", e.to_string()))?
                .map(|_| ())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_after_half_the_dead_threshold() {
        let t = Instant::now();
        let dead = Duration::from_secs(180);
        assert!(!is_stale(None, t, dead));
        assert!(!is_stale(Some(t), t + Duration::from_secs(90), dead));
        assert!(is_stale(Some(t), t + Duration::from_secs(91), dead));
    }
}
