//! ExecutorPool: runs claimed steps.
//!
//! Each step runs as its own task on a dedicated multi-threaded runtime (never on
//! an actor's thread), under its timeout (the step's own, else the pod default),
//! with panics caught: a handler that panics, errs or times out fails or retries
//! that step only. Outcomes go to the StorageActor as events (written in groups);
//! the slot is freed and the claimer woken at once. On shutdown it drains: running
//! steps get the grace period, the rest are cancelled and their leases returned for
//! release.
//!
//! # Claim-ahead
//!
//! A pod may hold up to `claim_ahead` claimed steps beyond its capacity
//! (`PodConfig::claim_ahead`, `FLEET_Q_CLAIM_AHEAD`). Steps that find no free
//! slot wait here, in claim order, and start the moment a slot frees, with no
//! claim round trip in between. On Snowflake a claim is two statements behind
//! the table lock and takes hundreds of milliseconds; without claim-ahead a
//! pod either claims for every few freed slots or leaves slots idle while a
//! larger claim is in flight. With it, claims are larger and rarer and the
//! slots stay busy.
//!
//! Waiting steps are claimed in the store (`status = 'claimed'` by this pod):
//! - they count against a queue's `max_concurrency`, and another pod cannot
//!   take them while they wait (the cost for long steps: a step can wait up to
//!   `claim_ahead / capacity` step durations on a busy pod while another pod
//!   has a free slot);
//! - self-reconciliation treats them as held ([`PodState::waiting`]);
//! - a waiting step never starts while this pod's heartbeat is unhealthy, nor
//!   under an identity the pod has since left (rejoined after being marked
//!   down): it is given back instead, or, under a left identity, left to
//!   recovery, which already requeued it;
//! - on shutdown they are given back first ([`TakeWaiting`]), before running
//!   steps get their grace, so other pods start them at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::FutureExt;
use tokio::sync::oneshot;

use super::storage::{FinishStep, StorageActor};
use crate::handler::{HandlerRegistry, StepContext, StepHandler};
use crate::messages::{ClaimTrigger, ClaimTriggered};
use crate::state::{InFlight, PodState};
use crate::step::{Step, StepId};
use crate::store::{Finish, Lease, Outcome};
use crate::supervision::{guarded, panic_message, SupervisedActor};

use std::sync::LazyLock;

use prometheus::{HistogramVec, IntCounterVec, IntGauge};

use crate::metrics;

pub(crate) static OUTCOMES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "fleet_q_steps_finished_total",
        "Step runs finished on this process and accepted by the store, by type and outcome: completed, failed (terminal) or retried. Results rejected by fencing are counted only in fleet_q_fenced_results_total.",
        &["type", "outcome"],
    )
});
static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    metrics::histogram_vec(
        "fleet_q_step_duration_seconds",
        "Handler run time by type.",
        &["type"],
        metrics::latency_buckets(),
    )
});
static WAIT: LazyLock<HistogramVec> = LazyLock::new(|| {
    metrics::histogram_vec(
        "fleet_q_step_start_latency_seconds",
        "From when a step became due (its submit time, unless delayed or backing off) to its start, by type.",
        &["type"],
        metrics::latency_buckets(),
    )
});
static IN_USE: LazyLock<IntGauge> = LazyLock::new(|| {
    metrics::gauge(
        "fleet_q_capacity_in_use",
        "Steps running now on this process.",
    )
});
static WAITING: LazyLock<IntGauge> = LazyLock::new(|| {
    metrics::gauge(
        "fleet_q_steps_waiting_local",
        "Claimed steps waiting on this process for a free slot (claim-ahead, FLEET_Q_CLAIM_AHEAD).",
    )
});
static MAX: LazyLock<IntGauge> = LazyLock::new(|| {
    metrics::gauge(
        "fleet_q_capacity_max",
        "Steps this process may run at once.",
    )
});

/// Forces registration of this module's metrics (so `/metrics` lists them at 0).
pub fn register_metrics() {
    for t in ["completed", "failed", "retried"] {
        let _ = OUTCOMES.get_metric_with_label_values(&["noop", t]);
    }
    LazyLock::force(&DURATION);
    LazyLock::force(&WAIT);
    LazyLock::force(&IN_USE);
    LazyLock::force(&WAITING);
    LazyLock::force(&MAX);
}

/// ExecutorPool settings.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// Timeout for steps that set none (default 300 s, `FLEET_Q_STEP_TIMEOUT_SECONDS`).
    pub default_timeout: Duration,
    /// The step retry backoff (as the store applies it): after a retryable failure
    /// the claimer is woken when the retry becomes due, instead of at its next idle
    /// tick.
    pub backoff: crate::store::Backoff,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            default_timeout: crate::defaults::STEP_TIMEOUT,
            backoff: crate::store::Backoff::default(),
        }
    }
}

impl ExecutorConfig {
    /// Adds a line to `problems` for each value this actor cannot run with.
    pub(crate) fn validate(&self, problems: &mut Vec<String>) {
        if self.default_timeout < std::time::Duration::from_millis(1) {
            problems.push("executor: default_timeout must be at least 1 ms".into());
        }
        self.backoff.validate("executor: backoff", problems);
    }
}

/// The actor.
pub struct ExecutorPool {
    cfg: ExecutorConfig,
    state: Arc<PodState>,
    storage: Addr<StorageActor>,
    claimer: Option<Recipient<ClaimTriggered>>,
    handlers: HandlerRegistry,
    runtime: tokio::runtime::Handle,
    tasks: HashMap<StepId, tokio::task::AbortHandle>,
    idle_waiters: Vec<oneshot::Sender<()>>,
    /// Claimed steps waiting for a slot, in claim order (claim-ahead).
    waiting: VecDeque<Step>,
}

impl ExecutorPool {
    /// An executor running handlers on `runtime`.
    pub fn new(
        cfg: ExecutorConfig,
        state: Arc<PodState>,
        storage: Addr<StorageActor>,
        handlers: HandlerRegistry,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        ExecutorPool {
            cfg,
            state,
            storage,
            claimer: None,
            handlers,
            runtime,
            tasks: HashMap::new(),
            idle_waiters: Vec::new(),
            waiting: VecDeque::new(),
        }
    }

    /// Starts `step` if a slot is free and none waits before it; else it waits.
    fn accept(&mut self, step: Step, ctx: &mut Context<Self>) {
        if self.waiting.is_empty() && self.state.running_count() < self.state.max_capacity() {
            return self.start_step(step, ctx);
        }
        let Some(lease) = Lease::of(&step) else {
            self.state.release_slots(1);
            return;
        };
        self.state.waiting.insert(lease.step_id, lease);
        self.waiting.push_back(step);
        WAITING.set(self.waiting.len() as i64);
    }

    /// Starts waiting steps while slots are free. A waiting step claimed under
    /// an identity this pod has left is dropped (recovery requeued it when that
    /// identity was marked down); while the heartbeat is unhealthy every
    /// waiting step is given back instead of started. During shutdown nothing
    /// starts: [`TakeWaiting`] and [`Drain`] give the steps back.
    fn start_waiting(&mut self, ctx: &mut Context<Self>) {
        if self.state.shutting_down() {
            return;
        }
        if !self.waiting.is_empty() && !self.state.heartbeat_healthy() {
            let leases = self.take_waiting();
            if !leases.is_empty() {
                tracing::warn!(
                    steps = leases.len(),
                    "heartbeat unhealthy: giving back the claimed steps waiting for a slot"
                );
                self.storage.do_send(super::storage::ReleaseSteps(leases));
            }
            return;
        }
        let me = self.state.pod_id();
        while self.state.running_count() < self.state.max_capacity() {
            let Some(step) = self.waiting.pop_front() else {
                break;
            };
            let id = step.step_id;
            if step.claimed_by.as_deref() != Some(me.as_str()) {
                tracing::warn!(step_id = %id, claimed_by = ?step.claimed_by, pod_id = %me,
                    "dropping a waiting step claimed under an identity this pod has left; recovery requeued it");
                self.state.waiting.remove(&id);
                self.state.release_slots(1);
                continue;
            }
            // Into `running` before out of `waiting`: self-reconciliation
            // checks `waiting` first, so it always finds the step in one.
            self.start_step(step, ctx);
            self.state.waiting.remove(&id);
        }
        WAITING.set(self.waiting.len() as i64);
    }

    /// Removes every waiting step, frees its slot and returns its lease (to be
    /// released without spending a retry).
    fn take_waiting(&mut self) -> Vec<Lease> {
        let mut leases = Vec::with_capacity(self.waiting.len());
        for step in self.waiting.drain(..) {
            if let Some((_, lease)) = self.state.waiting.remove(&step.step_id) {
                leases.push(lease);
            }
        }
        self.state.waiting.clear();
        self.state.release_slots(leases.len() as u32);
        WAITING.set(0);
        leases
    }

    fn start_step(&mut self, step: Step, ctx: &mut Context<Self>) {
        let Some(lease) = Lease::of(&step) else {
            self.state.release_slots(1);
            return;
        };
        let timeout = step
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.cfg.default_timeout);
        let sctx = StepContext {
            attempt: step.attempt,
            idempotency_key: step.handler_idempotency_key(),
            pod_id: lease.pod_id.clone(),
            timeout,
            step,
        };
        let step_type = sctx.step.step_type().to_string();
        let due = sctx.step.run_at.max(sctx.step.created_ts);
        let waited = (chrono::Utc::now() - due).to_std().unwrap_or_default();
        WAIT.with_label_values(&[metrics::type_label(&step_type)])
            .observe(waited.as_secs_f64());
        self.state.running.insert(
            lease.step_id,
            InFlight {
                lease: lease.clone(),
                step_type: step_type.clone(),
                started: Instant::now(),
                retries_left: sctx.step.max_retries.saturating_sub(sctx.step.retry_count),
                retry_count: sctx.step.retry_count,
            },
        );
        let handler = self.handlers.get(&step_type);
        let known = self.handlers.types();
        let addr = ctx.address();
        let step_id = lease.step_id;
        let task = self.runtime.spawn(async move {
            let outcome = run_handler(handler, sctx, &known).await;
            addr.do_send(StepDone { lease, outcome });
        });
        self.tasks.insert(step_id, task.abort_handle());
        IN_USE.set(i64::from(self.state.running_count()));
    }

    fn done(&mut self, lease: Lease, outcome: Outcome, ctx: &mut Context<Self>) {
        self.tasks.remove(&lease.step_id);
        let removed = self.state.running.remove(&lease.step_id);
        let mut outcome_kind = None;
        if let Some((_, f)) = &removed {
            let took = f.started.elapsed();
            DURATION
                .with_label_values(&[metrics::type_label(&f.step_type)])
                .observe(took.as_secs_f64());
            let kind = match &outcome {
                Outcome::Complete { .. } => "completed",
                Outcome::Fail {
                    retryable: true, ..
                } if f.retries_left > 0 => "retried",
                Outcome::Fail { .. } => "failed",
            };
            // Counted by storage once the store accepted the outcome: a result
            // rejected by fencing is not a completion.
            outcome_kind = Some((f.step_type.clone(), kind));
            match &outcome {
                Outcome::Complete { .. } => {
                    tracing::debug!(pod_id = %lease.pod_id, step_id = %lease.step_id, attempt = lease.attempt, step_type = %f.step_type, took_ms = took.as_millis() as u64, "step completed")
                }
                Outcome::Fail { error, retryable } => {
                    tracing::info!(pod_id = %lease.pod_id, step_id = %lease.step_id, attempt = lease.attempt, step_type = %f.step_type, took_ms = took.as_millis() as u64, retryable, %error, "step failed");
                    if *retryable && f.retries_left > 0 {
                        // Wake the claimer when the retry is due (jitter only makes
                        // it due earlier), so a short backoff is not stretched to the
                        // idle claim interval.
                        let due = self.cfg.backoff.delay(f.retry_count) + Duration::from_millis(5);
                        ctx.run_later(due, |act, _| {
                            if let Some(c) = &act.claimer {
                                c.do_send(ClaimTriggered(ClaimTrigger::SlotFreed));
                            }
                        });
                    }
                }
            }
        }
        // A step no longer in the registry was abandoned at shutdown (its lease
        // released); its late outcome is dropped rather than written.
        if removed.is_some() {
            self.storage.do_send(FinishStep {
                finish: Finish { lease, outcome },
                counted_as: outcome_kind,
            });
            self.state.release_slots(1);
            self.start_waiting(ctx);
            if let Some(c) = &self.claimer {
                c.do_send(ClaimTriggered(ClaimTrigger::SlotFreed));
            }
        }
        IN_USE.set(i64::from(self.state.running_count()));
        if self.state.running.is_empty() {
            for w in self.idle_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
}

/// Runs one attempt and turns every way it can end into an [`Outcome`].
async fn run_handler(
    handler: Option<Arc<dyn StepHandler>>,
    ctx: StepContext,
    known: &[String],
) -> Outcome {
    let Some(handler) = handler else {
        return Outcome::Fail {
            error: format!(
                "no handler is registered for step type {:?} (registered: {})",
                ctx.step.step_type(),
                known.join(", ")
            ),
            retryable: false,
        };
    };
    let timeout = ctx.timeout;
    let run = std::panic::AssertUnwindSafe(handler.run(ctx)).catch_unwind();
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(Ok(result))) => Outcome::Complete { result },
        Ok(Ok(Err(e))) => Outcome::Fail {
            error: e.message,
            retryable: e.retryable,
        },
        Ok(Err(p)) => Outcome::Fail {
            error: format!("handler panicked: {}", panic_message(p.as_ref())),
            retryable: true,
        },
        Err(_) => Outcome::Fail {
            error: format!("handler timed out after {:.3}s", timeout.as_secs_f64()),
            retryable: true,
        },
    }
}

impl Actor for ExecutorPool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        self.state.actor_started(Self::NAME);
        MAX.set(i64::from(self.state.max_capacity()));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.state.actor_stopped(Self::NAME);
    }
}

impl Supervised for ExecutorPool {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Running handler tasks live on their own runtime and report to this same
        // address, so they survive the restart; nothing to reset.
    }
}

impl SupervisedActor for ExecutorPool {
    const NAME: &'static str = "executor";
    fn pod_state(&self) -> &Arc<PodState> {
        &self.state
    }
}

crate::impl_inject_fault!(ExecutorPool);

/// Tells the executor whom to wake when a slot frees.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetClaimer(pub Recipient<ClaimTriggered>);

impl Handler<SetClaimer> for ExecutorPool {
    type Result = ();
    fn handle(&mut self, msg: SetClaimer, _: &mut Context<Self>) {
        self.claimer = Some(msg.0);
    }
}

/// Run these claimed steps (their slots are already reserved).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunSteps(pub Vec<Step>);

impl Handler<RunSteps> for ExecutorPool {
    type Result = ();
    fn handle(&mut self, msg: RunSteps, ctx: &mut Context<Self>) {
        let mut steps = msg.0.into_iter();
        let started = guarded(self, ctx, |act, ctx| {
            for step in steps.by_ref() {
                act.accept(step, ctx);
            }
        });
        if started.is_none() {
            // The steps not started stay claimed by this pod; their slots are freed
            // and recovery requeues them if this pod dies. Release them now instead.
            let leases: Vec<Lease> = steps.filter_map(|s| Lease::of(&s)).collect();
            self.state.release_slots(leases.len() as u32);
            if !leases.is_empty() {
                self.storage.do_send(super::storage::ReleaseSteps(leases));
            }
        }
    }
}

/// A step's handler finished (sent from the handler runtime).
#[derive(Message)]
#[rtype(result = "()")]
struct StepDone {
    lease: Lease,
    outcome: Outcome,
}

impl Handler<StepDone> for ExecutorPool {
    type Result = ();
    fn handle(&mut self, msg: StepDone, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, ctx| act.done(msg.lease, msg.outcome, ctx));
    }
}

/// Takes every claimed step waiting for a slot (claim-ahead) and returns their
/// leases, to be released at once. Sent at shutdown, after claiming stopped and
/// before [`Drain`], so other pods start them while running steps finish.
#[derive(Message)]
#[rtype(result = "Vec<Lease>")]
pub struct TakeWaiting;

impl Handler<TakeWaiting> for ExecutorPool {
    type Result = Vec<Lease>;
    fn handle(&mut self, _: TakeWaiting, _: &mut Context<Self>) -> Vec<Lease> {
        self.take_waiting()
    }
}

/// Waits up to `grace` for running steps to finish, then cancels the rest and
/// returns their leases, with those of any step still waiting for a slot (to
/// be released without spending a retry).
#[derive(Message)]
#[rtype(result = "Vec<Lease>")]
pub struct Drain {
    /// How long running steps get.
    pub grace: Duration,
}

impl Handler<Drain> for ExecutorPool {
    type Result = ResponseActFuture<Self, Vec<Lease>>;
    fn handle(&mut self, msg: Drain, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        if self.state.running.is_empty() {
            let _ = tx.send(());
        } else {
            self.idle_waiters.push(tx);
        }
        let wait = async move {
            let _ = tokio::time::timeout(msg.grace, rx).await;
        };
        Box::pin(wait.into_actor(self).map(|_, act, _| {
            // Steps a claim delivered after TakeWaiting.
            let mut leases = act.take_waiting();
            let ids: Vec<StepId> = act.state.running.iter().map(|e| *e.key()).collect();
            for id in ids {
                if let Some((_, f)) = act.state.running.remove(&id) {
                    if let Some(t) = act.tasks.remove(&id) {
                        t.abort();
                    }
                    act.state.release_slots(1);
                    leases.push(f.lease);
                }
            }
            leases
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::HandlerError;
    use crate::step::{NewStep, StepSpec, StepStatus};
    use async_trait::async_trait;
    use serde_json::{json, Value};

    fn ctx(timeout: Duration) -> StepContext {
        let ns = NewStep::new(StepSpec {
            step_type: "t".into(),
            ..Default::default()
        })
        .unwrap();
        let now = chrono::Utc::now();
        let step = Step {
            step_id: ns.step_id(),
            status: StepStatus::Claimed,
            claimed_by: Some("p".into()),
            last_update_ts: now,
            payload: ns.payload().clone(),
            retry_count: 0,
            priority: 0,
            created_ts: now,
            max_retries: 3,
            attempt: 1,
            run_at: now,
            idempotency_key: None,
            last_error: None,
            result: None,
            timeout_ms: None,
            queue: "default".into(),
            started_ts: Some(now),
        };
        StepContext {
            attempt: 1,
            idempotency_key: step.handler_idempotency_key(),
            pod_id: "p".into(),
            timeout,
            step,
        }
    }

    struct Fixed(Result<Value, HandlerError>);
    #[async_trait]
    impl StepHandler for Fixed {
        async fn run(&self, _: StepContext) -> Result<Value, HandlerError> {
            self.0.clone()
        }
    }

    struct Panics;
    #[async_trait]
    impl StepHandler for Panics {
        async fn run(&self, _: StepContext) -> Result<Value, HandlerError> {
            panic!("oops")
        }
    }

    struct Hangs;
    #[async_trait]
    impl StepHandler for Hangs {
        async fn run(&self, _: StepContext) -> Result<Value, HandlerError> {
            std::future::pending().await
        }
    }

    async fn run(h: impl StepHandler) -> Outcome {
        let h: Arc<dyn StepHandler> = Arc::new(h);
        run_handler(Some(h), ctx(Duration::from_millis(50)), &[]).await
    }

    #[tokio::test]
    async fn every_ending_of_a_handler_becomes_an_outcome() {
        assert_eq!(
            run(Fixed(Ok(json!(1)))).await,
            Outcome::Complete { result: json!(1) }
        );
        assert_eq!(
            run(Fixed(Err(HandlerError::terminal("bad")))).await,
            Outcome::Fail {
                error: "bad".into(),
                retryable: false
            }
        );
        assert_eq!(
            run(Fixed(Err(HandlerError::retryable("later")))).await,
            Outcome::Fail {
                error: "later".into(),
                retryable: true
            }
        );
        assert_eq!(
            run(Panics).await,
            Outcome::Fail {
                error: "handler panicked: oops".into(),
                retryable: true
            }
        );
        assert_eq!(
            run(Hangs).await,
            Outcome::Fail {
                error: "handler timed out after 0.050s".into(),
                retryable: true
            }
        );
        let unknown =
            run_handler(None, ctx(Duration::from_secs(1)), &["a".into(), "b".into()]).await;
        assert_eq!(
            unknown,
            Outcome::Fail {
                error: "no handler is registered for step type \"t\" (registered: a, b)".into(),
                retryable: false
            }
        );
    }
}
