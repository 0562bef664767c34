//! RecoveryActor: the leader's janitor.
//!
//! While this pod leads, every recovery interval (and on demand) it runs a cycle:
//! 1. pods whose heartbeat is older than the dead threshold (store time) are marked
//!    `down`, fenced on staleness at write time;
//! 2. steps `claimed` by any down, dead or unknown pod, including pods marked down
//!    in earlier cycles, are found and staged in the local ledger (a DLQ table per
//!    cycle);
//! 3. they are requeued (retries left) or failed for good (none left) by fenced
//!    batch updates: a second leader doing the same changes nothing;
//! 4. the summary is recorded in the ledger and logged.
//!
//! A dry run computes and stages without writing to the store.
//!
//! Retention runs beside the cycles, on its own cadence (see `Prune`): while
//! this pod leads, finished steps past the retention are deleted in chunks of
//! `prune_batch` rows, one store call each, the next chunk at once while chunks
//! come back full, and after a pause sized to the expiry rate otherwise.
//! Why not in the cycle: a cycle every 300 s pruning 10,000 rows removed at most
//! 33 rows/s, so any fleet finishing faster grew its table without bound; and a
//! big delete holds the store's writer, where small chunks let submits and
//! claims in between.
//!
//! While the pod is quiet (`crate::quiet`) the cycle, the prune passes and
//! the schedule checks run at wakes only (a prune pass still runs its full
//! chunks back to back, and a schedule still fires at its tick); when the pod
//! wakes up, a cycle runs at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::jittered;
use super::storage::*;
use crate::ledger::{Ledger, RecoverySummary};
use crate::messages::{LeadershipChanged, QuietChanged};
use crate::quiet::Gate;
use crate::records::PodStatus;
use crate::state::PodState;
use crate::step::StepStatus;
use crate::store::*;
use crate::supervision::{guarded, SupervisedActor};

use std::sync::LazyLock;

use prometheus::IntCounterVec;

mod cycle;
use cycle::*;
mod firing;
pub use firing::SchedulesChanged;

static CYCLES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    crate::metrics::counter_vec(
        "fleet_q_recovery_cycles_total",
        "Recovery cycles run by this process, by outcome (ok, dry_run, failed).",
        &["outcome"],
    )
});
static RECOVERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    crate::metrics::counter_vec(
        "fleet_q_recovery_steps_total",
        "Orphaned steps handled by recovery: requeued, terminal (no retries left) or skipped (already moved on).",
        &["action"],
    )
});
static FAILING: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    crate::metrics::gauge(
        "fleet_q_recovery_consecutive_failures",
        "Recovery cycles in a row that failed on this pod (0 after a cycle succeeds).",
    )
});
static PRUNED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    crate::metrics::counter(
        "fleet_q_pruned_steps_total",
        "Finished steps deleted past the retention by this pod (while it leads).",
    )
});
static PRUNE_LAG: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    crate::metrics::gauge(
        "fleet_q_retention_lag_seconds",
        "How long retention has been behind: seconds since a prune chunk last came back short \
         (0 when caught up, or when this pod does not lead).",
    )
});
static DEAD: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    crate::metrics::counter(
        "fleet_q_recovery_dead_pods_total",
        "Pods found dead by recovery.",
    )
});

/// Forces registration of this module's metrics (so `/metrics` lists them at 0).
pub fn register_metrics() {
    for o in ["ok", "dry_run", "failed"] {
        let _ = CYCLES.get_metric_with_label_values(&[o]);
    }
    for a in ["requeued", "terminal", "skipped"] {
        let _ = RECOVERED.get_metric_with_label_values(&[a]);
    }
    LazyLock::force(&DEAD);
    LazyLock::force(&FAILING);
    LazyLock::force(&PRUNED);
    LazyLock::force(&PRUNE_LAG);
    firing::register_metrics();
}

fn count_cycle(r: &Result<RecoverySummary, RecoveryError>) {
    match r {
        Ok(s) if s.dry_run => CYCLES.with_label_values(&["dry_run"]).inc(),
        Ok(s) => {
            CYCLES.with_label_values(&["ok"]).inc();
            RECOVERED
                .with_label_values(&["requeued"])
                .inc_by(s.steps_requeued as u64);
            RECOVERED
                .with_label_values(&["terminal"])
                .inc_by(s.steps_marked_terminal as u64);
            RECOVERED
                .with_label_values(&["skipped"])
                .inc_by(s.steps_skipped as u64);
            DEAD.inc_by(s.dead_pods_found as u64);
        }
        Err(_) => CYCLES.with_label_values(&["failed"]).inc(),
    }
}

/// RecoveryActor settings.
#[derive(Clone, Debug)]
pub struct RecoveryConfig {
    /// Period while leading (default 300 s, `FLEET_Q_RECOVERY_INTERVAL_SECONDS`).
    pub interval: Duration,
    /// Liveness threshold (default 180 s).
    pub dead_threshold: Duration,
    /// Finished steps older than this are pruned (default 7 days).
    pub retention: Duration,
    /// Most orphans handled per cycle (default 10,000; the rest next cycle).
    pub orphan_batch: u32,
    /// Rows deleted per prune chunk (default 500): small enough that a chunk
    /// holds the store's writer for a few milliseconds.
    pub prune_batch: u32,
    /// The longest pause between prune passes (default 10 s). A full chunk is
    /// followed at once; after a pass ends with a short chunk, the next starts
    /// when half a chunk should have expired at the rate the last pass saw (see
    /// `prune_pause`), and never later than this.
    pub prune_interval: Duration,
    /// Backoff for requeued orphans (the step retry backoff).
    pub backoff: Backoff,
    /// How often the leader re-reads the schedules when none is due sooner
    /// (default 10 s, `FLEET_Q_SCHEDULE_CHECK_SECONDS`); see `firing`.
    pub schedule_check: Duration,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            interval: crate::defaults::RECOVERY_INTERVAL,
            dead_threshold: crate::defaults::DEAD_POD_THRESHOLD,
            retention: crate::defaults::RETENTION,
            orphan_batch: 10_000,
            prune_batch: crate::defaults::PRUNE_BATCH,
            prune_interval: crate::defaults::PRUNE_INTERVAL,
            backoff: Backoff::default(),
            schedule_check: crate::defaults::SCHEDULE_CHECK,
        }
    }
}

impl RecoveryConfig {
    /// Adds a line to `problems` for each value this actor cannot run with.
    pub(crate) fn validate(&self, problems: &mut Vec<String>) {
        if self.interval.is_zero() {
            problems.push("recovery: interval must be above zero".into());
        }
        if self.dead_threshold.is_zero() {
            problems.push("recovery: dead_threshold must be above zero".into());
        }
        if self.retention.is_zero() {
            problems.push("recovery: retention must be above zero".into());
        }
        if self.orphan_batch == 0 {
            problems.push("recovery: orphan_batch must be at least 1".into());
        }
        if self.prune_batch == 0 {
            problems.push("recovery: prune_batch must be at least 1".into());
        }
        if self.prune_interval.is_zero() {
            problems.push("recovery: prune_interval must be above zero".into());
        }
        if self.schedule_check.is_zero() {
            problems.push("recovery: schedule_check must be above zero".into());
        }
        self.backoff.validate("recovery: backoff", problems);
    }
}

/// Why a requested cycle did not run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    /// Only the leader recovers.
    #[error("this pod is not the leader; recovery runs on the leader")]
    NotLeader,
    /// A cycle is running now.
    #[error("a recovery cycle is already running")]
    AlreadyRunning,
    /// The cycle failed part-way (store or ledger).
    #[error("recovery cycle failed: {0}")]
    Failed(String),
}

/// The actor.
pub struct RecoveryActor {
    cfg: RecoveryConfig,
    state: Arc<PodState>,
    storage: Addr<StorageActor>,
    ledger: Ledger,
    is_leader: bool,
    running: bool,
    timer: Option<SpawnHandle>,
    /// The pending [`Prune`] tick, and whether a chunk is in flight.
    prune_timer: Option<SpawnHandle>,
    pruning: bool,
    /// When a prune chunk last came back short (retention caught up).
    caught_up: Option<Instant>,
    /// The pause before the current prune pass, and the rows the pass has
    /// deleted so far (see [`prune_pause`]).
    prune_wait: Duration,
    pass_rows: u64,
    /// Rows pruned since the last cycle summary took the count.
    pruned_since_cycle: Arc<std::sync::atomic::AtomicU64>,
    /// The pending schedule fire pass, whether one is in flight, and whether
    /// another was asked for meanwhile.
    fire_timer: Option<SpawnHandle>,
    firing: bool,
    fire_again: bool,
    /// This pod's claimer, woken when a fire made steps, so they can start
    /// here at once rather than at the next claim poll.
    claimer: Option<Recipient<crate::messages::ClaimTriggered>>,
    /// Quiet-mode gates of the cycle, the prune passes and the schedule
    /// checks; whether the last prune chunk was full; when the next schedule
    /// tick is due.
    cycle_gate: Gate,
    prune_gate: Gate,
    fire_gate: Gate,
    prune_more: bool,
    fire_due_at: Option<Instant>,
}

impl RecoveryActor {
    /// A recovery actor writing its ledger to `ledger`.
    pub fn new(
        cfg: RecoveryConfig,
        state: Arc<PodState>,
        storage: Addr<StorageActor>,
        ledger: Ledger,
    ) -> Self {
        RecoveryActor {
            cfg,
            state,
            storage,
            ledger,
            is_leader: false,
            running: false,
            timer: None,
            prune_timer: None,
            pruning: false,
            caught_up: None,
            prune_wait: Duration::ZERO,
            pass_rows: 0,
            pruned_since_cycle: Arc::default(),
            fire_timer: None,
            firing: false,
            fire_again: false,
            claimer: None,
            cycle_gate: Gate::default(),
            prune_gate: Gate::default(),
            fire_gate: Gate::default(),
            prune_more: false,
            fire_due_at: None,
        }
    }

    /// Wakes `claimer` after fires that made steps.
    pub fn with_claimer(mut self, claimer: Recipient<crate::messages::ClaimTriggered>) -> Self {
        self.claimer = Some(claimer);
        self
    }

    fn schedule_prune(&mut self, ctx: &mut Context<Self>, after: Duration) {
        if let Some(t) = self.prune_timer.take() {
            ctx.cancel_future(t);
        }
        self.prune_timer = Some(ctx.notify_later(Prune, after));
    }

    fn stop_pruning(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.prune_timer.take() {
            ctx.cancel_future(t);
        }
        self.caught_up = None;
        self.pass_rows = 0;
        PRUNE_LAG.set(0);
    }

    /// Deletes one chunk, then schedules the next by how full it was.
    fn prune_chunk(&mut self, ctx: &mut Context<Self>) {
        if !self.is_leader || self.pruning {
            return;
        }
        self.pruning = true;
        // Lag counts from the first chunk this pod runs as leader.
        self.caught_up.get_or_insert_with(Instant::now);
        let limit = self.cfg.prune_batch.max(1);
        let params = PruneParams {
            retention: self.cfg.retention,
            limit,
        };
        self.storage
            .send(PruneSteps(params))
            .into_actor(self)
            .map(move |res, act, ctx| {
                guarded(act, ctx, move |act, ctx| {
                    act.pruning = false;
                    if !act.is_leader {
                        return;
                    }
                    let pause = match res {
                        Ok(Ok(n)) => {
                            PRUNED.inc_by(n);
                            act.pruned_since_cycle
                                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                            if n < u64::from(limit) {
                                act.caught_up = Some(Instant::now());
                            }
                            let behind = match act.caught_up {
                                Some(t) if n >= u64::from(limit) => t.elapsed().as_secs(),
                                _ => 0,
                            };
                            PRUNE_LAG.set(behind as i64);
                            act.pass_rows += n;
                            act.prune_more = n >= u64::from(limit);
                            if n >= u64::from(limit) {
                                Duration::ZERO // more are waiting
                            } else {
                                let pass = std::mem::take(&mut act.pass_rows);
                                act.prune_wait = prune_pause(
                                    act.prune_wait,
                                    act.cfg.prune_interval,
                                    pass,
                                    limit,
                                );
                                act.prune_wait
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "pruning finished steps failed; trying again later");
                            act.cfg.prune_interval
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "pruning finished steps: storage unavailable");
                            act.cfg.prune_interval
                        }
                    };
                    let pause = if pause.is_zero() {
                        pause
                    } else {
                        act.state.quiet.wait(pause)
                    };
                    act.schedule_prune(ctx, pause);
                });
            })
            .spawn(ctx);
    }

    fn schedule(&mut self, ctx: &mut Context<Self>, after: Duration) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.timer = Some(ctx.notify_later(Cycle, after));
    }

    fn start_cycle(
        &mut self,
        ctx: &mut Context<Self>,
        dry_run: bool,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<RecoverySummary, RecoveryError>>, RecoveryError>
    {
        if !self.is_leader {
            return Err(RecoveryError::NotLeader);
        }
        if self.running {
            return Err(RecoveryError::AlreadyRunning);
        }
        self.running = true;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let fut = run_cycle(
            self.cfg.clone(),
            self.state.pod_id(),
            self.storage.clone(),
            self.ledger.clone(),
            dry_run,
            self.pruned_since_cycle.clone(),
        );
        fut.into_actor(self)
            .map(move |res, act, ctx| {
                guarded(act, ctx, move |act, ctx| {
                    act.running = false;
                    count_cycle(&res);
                    match &res {
                        Ok(s) if !s.dry_run => act.state.recovery_result(Ok(())),
                        Err(RecoveryError::Failed(e)) => act.state.recovery_result(Err(e.clone())),
                        _ => {}
                    }
                    FAILING.set(i64::from(act.state.recovery_failures().0));
                    if let Err(e) = &res {
                        tracing::warn!(error = %e, "recovery cycle failed");
                    }
                    let _ = tx.send(res);
                    if act.is_leader {
                        let next = act.state.quiet.wait(jittered(act.cfg.interval, 0.1));
                        act.schedule(ctx, next);
                    }
                });
            })
            .spawn(ctx);
        Ok(rx)
    }
}

/// The pause before the next prune pass, after a pass that deleted `pass_rows`
/// rows (its full chunks and the short one that ended it) following a pause of
/// `last`: the rows that gathered during `last` give the rate at which steps
/// expire, and the next pause is the time half a chunk takes to gather at that
/// rate, within [`MIN_PRUNE_PAUSE`] and `interval`. A pass that found nothing
/// doubles the pause, so an idle store is asked once per `interval`. At a
/// steady finish rate the backlog between passes stays near half a chunk.
/// (A pause proportional to the last chunk's emptiness did not work: after a
/// burst of full chunks the last one is often nearly empty, so the next look
/// came a whole interval later, with an interval's worth of rows waiting.)
fn prune_pause(last: Duration, interval: Duration, pass_rows: u64, limit: u32) -> Duration {
    let (lo, hi) = (MIN_PRUNE_PAUSE, interval.max(MIN_PRUNE_PAUSE));
    let last = last.clamp(lo, hi);
    let next = if pass_rows == 0 {
        last * 2
    } else {
        last.mul_f64(f64::from(limit.max(1)) / 2.0 / pass_rows as f64)
    };
    next.clamp(lo, hi)
}

/// The shortest pause after a short prune chunk.
const MIN_PRUNE_PAUSE: Duration = Duration::from_millis(50);

impl Actor for RecoveryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.state.actor_started(Self::NAME);
        self.running = false;
        self.timer = None;
        self.pruning = false;
        self.prune_timer = None;
        self.fire_timer = None;
        self.firing = false;
        // After a restart, pick leadership up again from the shared state.
        self.is_leader = self.state.is_leader();
        if self.is_leader {
            self.schedule(ctx, Duration::ZERO);
            self.schedule_prune(ctx, Duration::ZERO);
            self.schedule_fire(ctx, Duration::ZERO);
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.state.actor_stopped(Self::NAME);
    }
}

impl Supervised for RecoveryActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.running = false;
        self.timer = None;
        self.pruning = false;
        self.prune_timer = None;
        self.fire_timer = None;
        self.firing = false;
    }
}

impl SupervisedActor for RecoveryActor {
    const NAME: &'static str = "recovery";
    fn pod_state(&self) -> &Arc<PodState> {
        &self.state
    }
}

crate::impl_inject_fault!(RecoveryActor);

/// The periodic tick.
#[derive(Message)]
#[rtype(result = "()")]
struct Cycle;

impl Handler<Cycle> for RecoveryActor {
    type Result = ();
    fn handle(&mut self, _: Cycle, ctx: &mut Context<Self>) {
        self.timer = None;
        guarded(self, ctx, |act, ctx| {
            if !act.cycle_gate.open(&act.state.quiet) {
                let next = act.state.quiet.wait(act.cfg.interval);
                return act.schedule(ctx, next);
            }
            if let Err(e) = act.start_cycle(ctx, false) {
                tracing::debug!(error = %e, "scheduled recovery cycle skipped");
            }
        });
    }
}

impl Handler<LeadershipChanged> for RecoveryActor {
    type Result = ();
    fn handle(&mut self, msg: LeadershipChanged, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, ctx| {
            let became = msg.is_leader && !act.is_leader;
            act.is_leader = msg.is_leader;
            if became {
                // A new leader recovers at once: the old one may have died with work.
                act.schedule(ctx, Duration::ZERO);
                act.schedule_prune(ctx, Duration::ZERO);
                act.schedule_fire(ctx, Duration::ZERO);
            } else if !msg.is_leader {
                if let Some(t) = act.timer.take() {
                    ctx.cancel_future(t);
                }
                act.stop_pruning(ctx);
                act.stop_firing(ctx);
            }
        });
    }
}

/// The next prune chunk is due.
#[derive(Message)]
#[rtype(result = "()")]
struct Prune;

impl Handler<Prune> for RecoveryActor {
    type Result = ();
    fn handle(&mut self, _: Prune, ctx: &mut Context<Self>) {
        self.prune_timer = None;
        guarded(self, ctx, |act, ctx| {
            // A pass that is deleting full chunks goes on; a new pass waits
            // for a wake while quiet.
            if !std::mem::take(&mut act.prune_more) && !act.prune_gate.open(&act.state.quiet) {
                let next = act.state.quiet.wait(act.cfg.prune_interval);
                return act.schedule_prune(ctx, next);
            }
            act.prune_chunk(ctx)
        });
    }
}

impl Handler<QuietChanged> for RecoveryActor {
    type Result = ();
    fn handle(&mut self, msg: QuietChanged, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, ctx| {
            act.cycle_gate = Gate::default();
            act.prune_gate = Gate::default();
            act.fire_gate = Gate::default();
            if !act.is_leader {
                return;
            }
            if msg.quiet {
                // What ran just now counts for the wake in progress; the
                // timers move to the next wake.
                let q = &act.state.quiet;
                let _ = (
                    act.cycle_gate.open(q),
                    act.prune_gate.open(q),
                    act.fire_gate.open(q),
                );
                if !act.running {
                    let next = q.wait(act.cfg.interval);
                    act.schedule(ctx, next);
                }
                if !act.pruning && !act.prune_more {
                    let next = act.state.quiet.wait(act.cfg.prune_interval);
                    act.schedule_prune(ctx, next);
                }
                if !act.firing {
                    let next = act.fire_wait(act.cfg.schedule_check);
                    act.schedule_fire(ctx, next);
                }
            } else {
                // Awake: someone has work; a dead pod's claims are found now.
                act.schedule(ctx, Duration::ZERO);
                act.schedule_prune(ctx, Duration::ZERO);
                act.schedule_fire(ctx, Duration::ZERO);
            }
        });
    }
}

/// Run a cycle now (the admin API). `dry_run` computes and stages only.
#[derive(Message)]
#[rtype(result = "Result<RecoverySummary, RecoveryError>")]
pub struct RunRecovery {
    /// Compute and report without writing to the store.
    pub dry_run: bool,
}

impl Handler<RunRecovery> for RecoveryActor {
    type Result = ResponseFuture<Result<RecoverySummary, RecoveryError>>;
    fn handle(&mut self, msg: RunRecovery, ctx: &mut Context<Self>) -> Self::Result {
        let started = guarded(self, ctx, |act, ctx| act.start_cycle(ctx, msg.dry_run));
        Box::pin(async move {
            match started {
                Some(Ok(rx)) => rx.await.unwrap_or_else(|_| {
                    Err(RecoveryError::Failed("the cycle was interrupted".into()))
                }),
                Some(Err(e)) => Err(e),
                None => Err(RecoveryError::Failed("the recovery actor faulted".into())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::PodRecord;
    use chrono::DateTime;

    fn pod(id: &str, age_s: u64, status: PodStatus) -> PodRecord {
        PodRecord {
            pod_id: id.into(),
            birth_ts: DateTime::from_timestamp(1, 0).unwrap(),
            last_heartbeat_ts: DateTime::from_timestamp(1, 0).unwrap(),
            status,
            capacity_in_use: 0,
            max_capacity: 1,
            meta: serde_json::Value::Null,
            heartbeat_age: Duration::from_secs(age_s),
            heartbeat_interval: None,
            dead_after: None,
        }
    }

    #[test]
    fn dead_pods_are_stale_up_pods_other_than_me() {
        let t = Duration::from_secs(10);
        let pods = vec![
            pod("stale", 11, PodStatus::Up),
            pod("fresh", 1, PodStatus::Up),
            pod("already-down", 50, PodStatus::Down),
            pod("me", 60, PodStatus::Up),
        ];
        assert_eq!(dead_pods(&pods, "me", t), vec!["stale".to_string()]);
    }

    #[test]
    fn the_prune_pause_follows_the_backlog() {
        let i = Duration::from_secs(10);
        let ms = Duration::from_millis;
        // Nothing expired: back off to the interval.
        assert_eq!(prune_pause(ms(400), i, 0, 500), ms(800));
        assert_eq!(prune_pause(i, i, 0, 500), i);
        // 2,000 rows gathered in 10 s (200/s): half a chunk takes 1.25 s.
        assert_eq!(prune_pause(i, i, 2000, 500), ms(1250));
        assert_eq!(prune_pause(ms(100), i, 5000, 500), MIN_PRUNE_PAUSE);
        // A steady 1,000 rows/s with 500-row chunks: from an idle start, the
        // rows gathered per pass settle near half a chunk.
        let mut pause = i;
        let mut gathered = 0;
        for _ in 0..10 {
            gathered = (1000.0 * pause.as_secs_f64()) as u64;
            pause = prune_pause(pause, i, gathered, 500);
        }
        assert!(
            (200..=300).contains(&gathered),
            "{gathered} rows per pass at {pause:?}"
        );
    }

    #[test]
    fn errors_say_what_happened() {
        assert!(RecoveryError::NotLeader
            .to_string()
            .contains("not the leader"));
        assert!(RecoveryError::AlreadyRunning
            .to_string()
            .contains("already running"));
    }
}
