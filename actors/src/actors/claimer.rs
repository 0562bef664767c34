//! ClaimerActor: decides when this pod takes work.
//!
//! It claims `min(room, batch)` steps, where the room is the pod's free slots
//! plus its claim-ahead room (`PodState::claim_room`: capacity + claim-ahead −
//! steps held; see the executor's "Claim-ahead"); while batches come back full it claims
//! again at once (a busy pod drains a backlog at store speed), otherwise it waits the
//! claim interval. A local submit or a freed slot wakes it early, so an idle pod
//! starts a locally submitted step within milliseconds. When the store says a
//! rate-limited queue ran dry in the claim (`Store::steps_claim_paced`), it claims
//! again when that queue's next token is due (never sooner than [`MIN_PACE`]),
//! so a rate-limited queue is served at its rate, not at one burst per interval. It never claims while this
//! pod's heartbeat is unhealthy (failing, stale, or rejoining after being marked
//! down) or during shutdown. At most one claim is in flight at a time.
//!
//! It also decides when the pod goes quiet and wakes up (`crate::quiet`):
//! after [`crate::quiet::PROBE_AFTER_EMPTY`] empty claims with nothing
//! running it asks the store whether the fleet is idle; if so the pod goes
//! quiet and every actor is told ([`QuietChanged`]). While quiet it probes at
//! each wake instead of claiming. Anything that wants a claim (a local
//! submit, a fire, a probe that found work, a due step) first rouses the
//! heartbeat ([`Rouse`]) and claims once the normal interval is declared.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::executor::ExecutorPool;
use super::jittered;
use super::storage::{ClaimSteps, StorageActor};
use crate::messages::{ClaimTriggered, HeartbeatHealthChanged, QuietChanged, Rouse};
use crate::quiet::{Gate, IdleProbe, PROBE_AFTER_EMPTY};
use crate::state::PodState;
use crate::supervision::{guarded, SupervisedActor};

/// The shortest wait a pacing hint can ask for: at high rates a claim then takes
/// several tokens at once instead of one claim per token.
pub const MIN_PACE: Duration = Duration::from_millis(25);

/// ClaimerActor settings.
#[derive(Clone, Debug)]
pub struct ClaimerConfig {
    /// Idle period between claims (default 5 s, `FLEET_Q_CLAIM_INTERVAL_SECONDS`).
    pub interval: Duration,
    /// Most steps per claim (default 100, `FLEET_Q_CLAIM_BATCH_SIZE`).
    pub batch: u32,
    /// Room (free slots plus claim-ahead room) that must be free before a
    /// freed slot wakes a claim (default 1, `FLEET_Q_CLAIM_MIN_FREE`), unless
    /// nothing is held. Above 1 it is
    /// hysteresis: claims wait until several slots are free and take them
    /// together, so a busy pod sends fewer, larger claims (on Snowflake each
    /// claim is two statements behind the table lock). A local submit, the
    /// idle tick and a full batch still claim at once.
    pub min_free: u32,
}

impl Default for ClaimerConfig {
    fn default() -> Self {
        ClaimerConfig {
            interval: crate::defaults::CLAIM_INTERVAL,
            batch: crate::defaults::CLAIM_BATCH,
            min_free: 1,
        }
    }
}

impl ClaimerConfig {
    /// Adds a line to `problems` for each value this actor cannot run with.
    pub(crate) fn validate(&self, problems: &mut Vec<String>) {
        if self.interval.is_zero() {
            problems.push("claimer: interval must be above zero".into());
        }
        if self.batch == 0 {
            problems.push("claimer: batch must be at least 1".into());
        }
    }
}

/// The actor.
pub struct ClaimerActor {
    cfg: ClaimerConfig,
    state: Arc<PodState>,
    storage: Addr<StorageActor>,
    executor: Addr<ExecutorPool>,
    claiming: bool,
    again: bool,
    /// Slots freed while a claim was in flight (claim again only if enough
    /// are free; see [`slot_claim_due`]).
    slot_again: bool,
    /// The claim linger's timer (see [`CLAIM_LINGER`]).
    linger: Option<SpawnHandle>,
    timer: Option<SpawnHandle>,
    /// Quiet mode: who is told, and the state of this claimer's part.
    peers: Option<SetQuietPeers>,
    /// Empty claims in a row with nothing running, and how many make a probe.
    empty_streak: u32,
    probe_every: u32,
    probing: bool,
    rousing: bool,
    /// Set on going quiet, cleared once a normal heartbeat landed: no claim
    /// before that.
    needs_rouse: bool,
    /// The earliest pending step not yet due that the last probe saw.
    next_due: Option<std::time::Instant>,
    gate: Gate,
}

impl ClaimerActor {
    /// A claimer feeding `executor`.
    pub fn new(
        cfg: ClaimerConfig,
        state: Arc<PodState>,
        storage: Addr<StorageActor>,
        executor: Addr<ExecutorPool>,
    ) -> Self {
        ClaimerActor {
            cfg,
            state,
            storage,
            executor,
            claiming: false,
            again: false,
            slot_again: false,
            linger: None,
            timer: None,
            peers: None,
            empty_streak: 0,
            probe_every: PROBE_AFTER_EMPTY,
            probing: false,
            rousing: false,
            needs_rouse: false,
            next_due: None,
            gate: Gate::default(),
        }
    }

    /// A claim for freed slots: now, or after the claim in flight.
    fn slot_claim(&mut self, ctx: &mut Context<Self>) {
        if self.claiming || self.probing || self.rousing {
            self.slot_again = true;
        } else {
            self.try_claim(ctx);
        }
    }

    /// Tells every subscriber that quiet mode changed, when it did.
    fn set_quiet(&mut self, quiet: bool) {
        if self.state.quiet.set(quiet) {
            tracing::info!(quiet, "quiet mode changed");
            QUIET.set(i64::from(quiet));
            self.gate = Gate::default();
            if let Some(p) = &self.peers {
                for s in &p.subscribers {
                    s.do_send(QuietChanged { quiet });
                }
            }
        }
    }

    /// The wait before the next tick while quiet: the next wake, or sooner
    /// when a step the last probe saw falls due.
    fn quiet_wait(&self) -> Duration {
        let w = self.state.quiet.wait(self.cfg.interval);
        match self.next_due {
            Some(t) => w.min(t.saturating_duration_since(std::time::Instant::now())),
            None => w,
        }
    }

    /// A tick: claims while active; while quiet, probes at a wake, rouses when
    /// a step it knows of falls due, and otherwise waits.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if !self.state.quiet.is_quiet() {
            return self.try_claim(ctx);
        }
        if self.claiming || self.probing || self.rousing || self.state.shutting_down() {
            return;
        }
        if self
            .next_due
            .is_some_and(|t| t <= std::time::Instant::now())
        {
            return self.rouse(ctx);
        }
        if self.gate.open(&self.state.quiet) {
            return self.probe(ctx);
        }
        let wait = self.quiet_wait();
        self.schedule(ctx, wait);
    }

    /// Asks the store whether the fleet is idle; goes quiet, stays quiet or
    /// rouses by the answer.
    fn probe(&mut self, ctx: &mut Context<Self>) {
        self.probing = true;
        let call = crate::actors::storage::StoreCall {
            op: "steps_idle_probe",
            f: Box::new(|s| Box::pin(async move { s.steps_idle_probe().await })),
        };
        self.storage
            .send(call)
            .into_actor(self)
            .map(move |res, act, ctx| {
                guarded(act, ctx, move |act, ctx| {
                    act.probing = false;
                    let res: Result<IdleProbe, String> = match res {
                        Ok(Ok(p)) => Ok(p),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    act.after_probe(ctx, res);
                });
            })
            .spawn(ctx);
    }

    fn after_probe(&mut self, ctx: &mut Context<Self>, res: Result<IdleProbe, String>) {
        let quiet = self.state.quiet.is_quiet();
        let wanted = std::mem::take(&mut self.again);
        match res {
            Ok(p) => {
                self.state.quiet.observe_store_time(p.now);
                if wanted || !p.idle() {
                    tracing::debug!(claimed = p.claimed, due_now = p.due_now, "idle probe: work");
                    if quiet || wanted {
                        return self.try_claim(ctx);
                    }
                    // Other pods are busy: ask less often, down to once per
                    // wake period.
                    let cap = self
                        .state
                        .quiet
                        .period()
                        .map_or(1, |p| {
                            (p.as_secs_f64() / self.cfg.interval.as_secs_f64()).ceil() as u32
                        })
                        .max(PROBE_AFTER_EMPTY);
                    self.probe_every = (self.probe_every * 2).min(cap);
                    self.empty_streak = 0;
                    let idle = jittered(self.cfg.interval, 0.1);
                    return self.schedule(ctx, idle);
                }
                self.next_due = p.until_next_due().map(|d| std::time::Instant::now() + d);
                self.empty_streak = 0;
                self.probe_every = PROBE_AFTER_EMPTY;
                if !quiet && self.state.in_flight() == 0 && !self.state.shutting_down() {
                    self.needs_rouse = true;
                    self.set_quiet(true);
                    // The wake in progress counts as served.
                    let _ = self.gate.open(&self.state.quiet);
                }
                let wait = if self.state.quiet.is_quiet() {
                    self.quiet_wait()
                } else {
                    jittered(self.cfg.interval, 0.1)
                };
                self.schedule(ctx, wait);
            }
            Err(e) => {
                tracing::warn!(error = %e, "idle probe failed");
                if wanted {
                    return self.try_claim(ctx);
                }
                let wait = if quiet {
                    self.quiet_wait()
                } else {
                    jittered(self.cfg.interval, 0.1)
                };
                self.schedule(ctx, wait);
            }
        }
    }

    /// Leaves quiet: tells the actors, waits for a heartbeat declaring the
    /// normal interval, then claims.
    fn rouse(&mut self, ctx: &mut Context<Self>) {
        self.set_quiet(false);
        self.next_due = None;
        let Some(hb) = self.peers.as_ref().map(|p| p.heartbeat.clone()) else {
            self.needs_rouse = false;
            return self.try_claim(ctx);
        };
        self.rousing = true;
        hb.send(Rouse)
            .into_actor(self)
            .map(move |res, act, ctx| {
                guarded(act, ctx, move |act, ctx| {
                    act.rousing = false;
                    match res {
                        Ok(Ok(())) => {
                            act.needs_rouse = false;
                            act.again = false;
                            act.try_claim(ctx);
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "waking up: the heartbeat failed; not claiming yet");
                            act.schedule(ctx, act.cfg.interval.min(ROUSE_RETRY));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "waking up: heartbeat unavailable; not claiming yet");
                            act.schedule(ctx, act.cfg.interval.min(ROUSE_RETRY));
                        }
                    }
                });
            })
            .spawn(ctx);
    }

    fn schedule(&mut self, ctx: &mut Context<Self>, after: Duration) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.timer = Some(ctx.notify_later(Tick, after));
    }

    fn try_claim(&mut self, ctx: &mut Context<Self>) {
        if self.claiming || self.probing || self.rousing {
            self.again = true;
            return;
        }
        let idle = jittered(self.cfg.interval, 0.1);
        if self.state.shutting_down() {
            return;
        }
        if self.state.quiet.is_quiet() || self.needs_rouse {
            return self.rouse(ctx);
        }
        if !self.state.heartbeat_healthy() {
            // Woken again by HeartbeatHealthChanged when the heartbeat recovers.
            self.schedule(ctx, idle);
            return;
        }
        let Some(limit) = claim_limit(self.state.claim_room(), self.cfg.batch) else {
            // No free slot: woken by SlotFreed; the tick is a safety net.
            self.schedule(ctx, idle);
            return;
        };
        let pod_id = self.state.pod_id();
        self.claiming = true;
        self.storage
            .send(ClaimSteps {
                pod_id,
                limit,
                deliver_to: self.executor.clone().recipient(),
            })
            .into_actor(self)
            .map(move |res, act, ctx| {
                guarded(act, ctx, move |act, ctx| {
                    act.claiming = false;
                    match res {
                        Ok(Ok((claimed, pace))) => {
                            let full = claimed == limit;
                            if claimed > 0 {
                                tracing::debug!(claimed, limit, ?pace, "claimed steps");
                                act.empty_streak = 0;
                                act.probe_every = PROBE_AFTER_EMPTY;
                            } else if act.state.in_flight() == 0 && pace.is_none() {
                                act.empty_streak += 1;
                            }
                            let wanted = std::mem::take(&mut act.again);
                            let slots = std::mem::take(&mut act.slot_again) || full;
                            let enough = slot_claim_due(
                                act.state.claim_room(),
                                act.state.in_flight(),
                                act.cfg.min_free,
                            );
                            if wanted || (slots && act.state.claim_room() > 0 && enough) {
                                act.try_claim(ctx);
                            } else if act.state.quiet.period().is_some()
                                && act.empty_streak >= act.probe_every
                            {
                                act.probe(ctx);
                            } else {
                                let idle = jittered(act.cfg.interval, 0.1);
                                act.schedule(ctx, next_wait(idle, pace));
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "claim failed");
                            act.again = false;
                            act.schedule(ctx, jittered(act.cfg.interval, 0.1));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "claim: storage unavailable");
                            act.again = false;
                            act.schedule(ctx, jittered(act.cfg.interval, 0.1));
                        }
                    }
                });
            })
            .spawn(ctx);
    }
}

/// With claim hysteresis on (`min_free` above 1), how long a claim that
/// enough freed slots made due waits for more to free while steps still run.
/// Short steps free their slots within milliseconds of each other; without
/// it, a claim fires at `min_free` free slots, the rest free while it is in
/// flight, and every batch is split in two claims. It costs a step at most
/// this much of a free slot's time.
pub const CLAIM_LINGER: Duration = Duration::from_millis(25);

/// The pause before trying to wake up again after a heartbeat failed.
const ROUSE_RETRY: Duration = Duration::from_secs(1);

static QUIET: std::sync::LazyLock<prometheus::IntGauge> = std::sync::LazyLock::new(|| {
    crate::metrics::gauge(
        "fleet_q_quiet",
        "1 while this pod is quiet: the fleet was idle, and it talks to the store only at wakes (see FLEET_Q_IDLE_POLL_MAX_SECONDS).",
    )
});

/// Forces registration of this module's metrics (so `/metrics` lists them at 0).
pub fn register_metrics() {
    std::sync::LazyLock::force(&QUIET);
}

/// How many steps to ask for: `min(room, batch)`, or `None` with no room.
fn claim_limit(free: u32, batch: u32) -> Option<u32> {
    (free > 0).then(|| free.min(batch.max(1)))
}

/// Whether a freed slot should wake a claim: when at least `min_free` of room
/// is free (capped by capacity + claim-ahead), or when nothing is held.
fn slot_claim_due(free: u32, in_flight: u32, min_free: u32) -> bool {
    in_flight == 0 || free >= min_free.min(free + in_flight).max(1)
}

/// How long to wait after a claim that was not full: the idle interval, or
/// sooner when a rate-limited queue's next token is due (at least [`MIN_PACE`]).
fn next_wait(idle: Duration, pace: Option<Duration>) -> Duration {
    match pace {
        Some(p) => idle.min(p.max(MIN_PACE)),
        None => idle,
    }
}

impl Actor for ClaimerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        self.state.actor_started(Self::NAME);
        self.claiming = false;
        self.probing = false;
        self.rousing = false;
        self.linger = None;
        self.timer = None;
        self.tick(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.state.actor_stopped(Self::NAME);
    }
}

impl Supervised for ClaimerActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // A claim in flight when the actor faulted still delivers its steps: the
        // StorageActor hands them to the executor itself.
        self.claiming = false;
        self.probing = false;
        self.rousing = false;
        self.linger = None;
        self.timer = None;
    }
}

impl SupervisedActor for ClaimerActor {
    const NAME: &'static str = "claimer";
    fn pod_state(&self) -> &Arc<PodState> {
        &self.state
    }
}

crate::impl_inject_fault!(ClaimerActor);

/// The periodic tick.
#[derive(Message)]
#[rtype(result = "()")]
struct Tick;

impl Handler<Tick> for ClaimerActor {
    type Result = ();
    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) {
        self.timer = None;
        guarded(self, ctx, |act, ctx| act.tick(ctx));
    }
}

impl Handler<ClaimTriggered> for ClaimerActor {
    type Result = ();
    fn handle(&mut self, msg: ClaimTriggered, ctx: &mut Context<Self>) {
        if msg.0 == crate::messages::ClaimTrigger::SlotFreed
            && (self.state.quiet.is_quiet()
                || !slot_claim_due(
                    self.state.claim_room(),
                    self.state.in_flight(),
                    self.cfg.min_free,
                ))
        {
            return;
        }
        if msg.0 == crate::messages::ClaimTrigger::Submitted {
            // A submit or a fire wants a claim even at an empty streak.
            self.empty_streak = 0;
            guarded(self, ctx, |act, ctx| act.try_claim(ctx));
            return;
        }
        guarded(self, ctx, |act, ctx| {
            if act.state.in_flight() == 0 {
                if let Some(t) = act.linger.take() {
                    ctx.cancel_future(t);
                }
                return act.slot_claim(ctx);
            }
            if act.cfg.min_free > 1 {
                if act.linger.is_none() {
                    act.linger = Some(ctx.notify_later(LingerEnd, CLAIM_LINGER));
                }
                return;
            }
            act.slot_claim(ctx)
        });
    }
}

/// The claim linger ended.
#[derive(Message)]
#[rtype(result = "()")]
struct LingerEnd;

impl Handler<LingerEnd> for ClaimerActor {
    type Result = ();
    fn handle(&mut self, _: LingerEnd, ctx: &mut Context<Self>) {
        self.linger = None;
        guarded(self, ctx, |act, ctx| act.slot_claim(ctx));
    }
}

impl Handler<HeartbeatHealthChanged> for ClaimerActor {
    type Result = ();
    fn handle(&mut self, msg: HeartbeatHealthChanged, ctx: &mut Context<Self>) {
        if msg.healthy {
            guarded(self, ctx, |act, ctx| act.tick(ctx));
        }
    }
}

/// Who hears of quiet mode: the heartbeat (roused before a claim) and every
/// actor with periodic store calls. Sent once by [`crate::Pod::start`], after
/// the actors the claimer starts before exist.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct SetQuietPeers {
    /// The heartbeat, which declares the normal interval on [`Rouse`].
    pub heartbeat: Recipient<Rouse>,
    /// Told of every change.
    pub subscribers: Vec<Recipient<QuietChanged>>,
}

impl Handler<SetQuietPeers> for ClaimerActor {
    type Result = ();
    fn handle(&mut self, msg: SetQuietPeers, _: &mut Context<Self>) {
        self.peers = Some(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::{claim_limit, next_wait, slot_claim_due, MIN_PACE};
    use std::time::Duration;

    #[test]
    fn claims_the_smaller_of_free_slots_and_batch() {
        assert_eq!(claim_limit(0, 100), None);
        assert_eq!(claim_limit(8, 100), Some(8));
        assert_eq!(claim_limit(800, 100), Some(100));
        assert_eq!(claim_limit(5, 0), Some(1), "a zero batch still claims one");
    }

    #[test]
    fn a_pacing_hint_shortens_the_wait_but_never_below_the_floor() {
        let idle = Duration::from_secs(5);
        assert_eq!(next_wait(idle, None), idle);
        let ms = Duration::from_millis;
        assert_eq!(next_wait(idle, Some(ms(50))), ms(50));
        assert_eq!(next_wait(idle, Some(ms(1))), MIN_PACE);
        assert_eq!(next_wait(idle, Some(Duration::from_secs(60))), idle);
    }

    #[test]
    fn freed_slots_wake_a_claim_once_enough_are_free() {
        assert!(slot_claim_due(1, 7, 1), "default: every freed slot");
        assert!(!slot_claim_due(3, 13, 8), "hysteresis: wait for 8 free");
        assert!(slot_claim_due(8, 8, 8));
        assert!(slot_claim_due(2, 0, 8), "nothing runs: claim");
        assert!(!slot_claim_due(4, 4, 100), "capped by capacity: 8 here");
        assert!(slot_claim_due(4, 0, 0), "0 means 1");
    }
}
