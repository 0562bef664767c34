//! StorageActor: the one door to the database.
//!
//! Every store call of the pod goes through it, so retries, readiness bookkeeping
//! and fencing accounting live in one place. Calls run as futures off the actor's
//! thread (the store itself keeps blocking work off async threads); transient
//! errors are retried with capped exponential backoff. Step outcomes arrive as
//! fire-and-forget [`FinishStep`] events and are written in groups: whatever
//! accumulated while the previous group was being written goes out in the next
//! `steps_finish` call. Outcomes are kept (and retried) until the store accepts
//! them, across actor restarts, so none is lost while the pod lives.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use tokio::sync::oneshot;

use crate::records::{PodRecord, QueueStats};
use crate::retry::RetryPolicy;
use crate::search::{BulkAction, SearchPage, SearchParams};
use crate::state::PodState;
use crate::step::{NewStep, Step, StepId};
use crate::store::*;
use crate::supervision::{guarded, SupervisedActor};

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};

use crate::metrics;

mod messages;
pub(crate) use messages::*;

static SUBMITTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "fleet_q_steps_submitted_total",
        "Steps accepted (new, not deduplicated), by type.",
        &["type"],
    )
});
static RECONCILED: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::counter(
        "fleet_q_reconciled_claims_total",
        "Claims this pod held in the store but never received (lost claim answers), released by self-reconciliation.",
    )
});
static CLAIMED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "fleet_q_steps_claimed_total",
        "Steps claimed by this process, by type.",
        &["type"],
    )
});
static CLAIM_BATCH: LazyLock<Histogram> = LazyLock::new(|| {
    metrics::histogram(
        "fleet_q_claim_batch_size",
        "Steps returned per claim.",
        vec![
            0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0,
        ],
    )
});
static STORE_CALLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "fleet_q_store_calls_total",
        "Store calls by operation and outcome (ok, transient, fatal).",
        &["op", "outcome"],
    )
});
static STORE_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    metrics::histogram_vec(
        "fleet_q_store_latency_seconds",
        "Store call latency by operation (one attempt).",
        &["op"],
        metrics::latency_buckets(),
    )
});
static FENCED: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::counter(
        "fleet_q_fenced_results_total",
        "Step results rejected by fencing: the step had moved on (this pod was presumed dead or lost the lease).",
    )
});

/// Whether operation `op` writes to the store (readiness follows writes only).
fn is_write(op: &str) -> bool {
    !matches!(
        op,
        "pods_list"
            | "steps_idle_probe"
            | "step_get"
            | "queue_stats"
            | "steps_orphaned"
            | "steps_failed_list"
            | "steps_search"
            | "queues_list"
            | "schedules_list"
            | "schedule_get"
            | "schedules_due"
            // A fire pass is a read of SCHEDULES that may write; it is not
            // a sign the store takes writes (readiness is judged by writes).
            | "schedules_fire"
            | "stats_shared"
    )
}

/// Records one store call's latency and outcome.
fn observe<T>(op: &'static str, started: std::time::Instant, r: &Result<T, StoreError>) {
    STORE_LATENCY
        .with_label_values(&[op])
        .observe(started.elapsed().as_secs_f64());
    let outcome = match r {
        Ok(_) => "ok",
        Err(e) if e.is_transient() => "transient",
        Err(_) => "fatal",
    };
    STORE_CALLS.with_label_values(&[op, outcome]).inc();
}

/// Forces registration of this module's metrics (so `/metrics` lists them at 0).
pub fn register_metrics() {
    LazyLock::force(&SUBMITTED);
    LazyLock::force(&CLAIMED);
    LazyLock::force(&CLAIM_BATCH);
    LazyLock::force(&STORE_CALLS);
    LazyLock::force(&STORE_LATENCY);
    LazyLock::force(&FENCED);
    LazyLock::force(&RECONCILED);
}

/// StorageActor settings.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// How a failed store call is retried: the one retry layer of the engine
    /// (see [`crate::retry`]).
    pub retry: RetryPolicy,
    /// Step retry backoff applied by the store to retryable failures.
    pub step_backoff: Backoff,
    /// Most outcomes written in one call (default 512).
    pub finish_batch: usize,
    /// The queues this pod claims from (`None`: every queue;
    /// `FLEET_Q_QUEUES`).
    pub queues: Option<Vec<String>>,
    /// Self-reconciliation period (default 60 s; `None`: off). Each period the
    /// pod reads the claims the store says it holds and releases, fenced and
    /// without spending a retry, those it is neither running nor finishing and
    /// that are older than one period: claims whose answer never reached it (a
    /// lost reply, a claim the server committed after the client gave up). A
    /// live pod's strays are invisible to recovery, which only requeues the
    /// claims of dead pods.
    pub reconcile_interval: Option<Duration>,
    /// On shared-stats backends ([`Store::shares_stats`]), how often the leader
    /// publishes statistics and every other pod reads them (default 15 s,
    /// `FLEET_Q_STATS_INTERVAL_SECONDS`). Requests for statistics are answered
    /// from the last copy and send no statement.
    pub stats_interval: Duration,
    /// How old a finish must be, by store time, before the leader's statistics
    /// count it (default 60 s): longer than any statement may run, so no finish
    /// commits behind the watermark already passed. `fleet-q serve` uses the
    /// Snowflake connection timeout (statements are cancelled at half of it).
    pub stats_lag: Duration,
    /// How long an outcome may wait for others to share its `steps_finish`
    /// (default 0: written at once; `FLEET_Q_FINISH_LINGER_MS`). On Snowflake
    /// every finish statement takes the table lock, so a short linger turns
    /// many small groups into a few larger ones. A full group
    /// (`finish_batch`), a flush request and shutdown never wait.
    pub finish_linger: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            retry: RetryPolicy::default(),
            step_backoff: Backoff::default(),
            finish_batch: 512,
            queues: None,
            reconcile_interval: Some(crate::defaults::RECONCILE_INTERVAL),
            stats_interval: crate::defaults::STATS_INTERVAL,
            stats_lag: crate::defaults::STATS_LAG,
            finish_linger: Duration::ZERO,
        }
    }
}

impl StorageConfig {
    /// Adds a line to `problems` for each value this actor cannot run with.
    pub(crate) fn validate(&self, problems: &mut Vec<String>) {
        self.retry.validate("storage: retry", problems);
        if let Some(q) = &self.queues {
            if q.is_empty() {
                problems.push(
                    "storage: queues must name at least one queue (None: every queue)".into(),
                );
            }
            for name in q {
                if let Some(why) = crate::queue::name_problem(name) {
                    problems.push(format!("storage: queue {name:?} {why}"));
                }
            }
        }
        if self.finish_batch == 0 {
            problems.push("storage: finish_batch must be at least 1".into());
        }
        if self.reconcile_interval.is_some_and(|d| d.is_zero()) {
            problems
                .push("storage: reconcile_interval must be above zero (None turns it off)".into());
        }
        if self.stats_interval.is_zero() {
            problems.push("storage: stats_interval must be above zero".into());
        }
        self.step_backoff
            .validate("storage: step_backoff", problems);
    }
}

/// The actor.
pub struct StorageActor {
    store: Arc<dyn Store>,
    cfg: StorageConfig,
    state: Arc<PodState>,
    pending: Vec<Finish>,
    /// The group being written; put back if the actor restarts mid-write.
    writing: Option<Vec<Finish>>,
    flushing: bool,
    failures: u32,
    flushed_waiters: Vec<oneshot::Sender<()>>,
    /// When the oldest outcome not yet written arrived, and the pending
    /// linger timer (see [`StorageConfig::finish_linger`]).
    pending_since: Option<std::time::Instant>,
    linger_timer: Option<SpawnHandle>,
    /// How each outcome not yet written is to be counted once accepted.
    counted_as: std::collections::HashMap<StepId, (String, &'static str)>,
    /// A reconciliation is under way.
    reconciling: bool,
    /// A shared-stats refresh is under way.
    refreshing_stats: bool,
    /// The next shared-stats refresh, and its quiet-mode gate.
    stats_timer: Option<SpawnHandle>,
    stats_gate: crate::quiet::Gate,
}

impl StorageActor {
    /// A storage actor over `store`.
    pub fn new(store: Arc<dyn Store>, cfg: StorageConfig, state: Arc<PodState>) -> Self {
        StorageActor {
            store,
            cfg,
            state,
            pending: Vec::new(),
            writing: None,
            flushing: false,
            failures: 0,
            flushed_waiters: Vec::new(),
            pending_since: None,
            linger_timer: None,
            reconciling: false,
            refreshing_stats: false,
            stats_timer: None,
            stats_gate: crate::quiet::Gate::default(),
            counted_as: std::collections::HashMap::new(),
        }
    }

    /// Shared-stats backends: the leader publishes statistics, every other pod
    /// reads what was published; either way the copy in [`PodState`] is what
    /// requests for statistics get.
    /// Arms the next shared-stats refresh: every stats interval, and while
    /// the pod is quiet (`crate::quiet`) at wakes only.
    fn arm_stats(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.stats_timer.take() {
            ctx.cancel_future(t);
        }
        let wait = self.state.quiet.wait(self.cfg.stats_interval);
        self.stats_timer = Some(ctx.run_later(wait, |act, ctx| {
            act.stats_timer = None;
            if act.stats_gate.open(&act.state.quiet) {
                act.refresh_stats(ctx);
            }
            act.arm_stats(ctx);
        }));
    }

    fn refresh_stats(&mut self, ctx: &mut Context<Self>) {
        if self.refreshing_stats {
            return;
        }
        self.refreshing_stats = true;
        let fut: ResponseFuture<Result<Option<QueueStats>, StoreError>> = if self.state.is_leader()
        {
            let params = StatsParams {
                pod_id: self.state.pod_id(),
                lag: self.cfg.stats_lag,
            };
            let f = self.call("stats_publish", move |s| {
                let params = params.clone();
                async move { s.stats_publish(params).await }
            });
            Box::pin(async move { f.await.map(Some) })
        } else {
            self.call("stats_shared", |s| async move { s.stats_shared().await })
        };
        ctx.spawn(fut.into_actor(self).map(|res, act, _| {
            act.refreshing_stats = false;
            match res {
                Ok(Some(stats)) => act.state.set_shared_stats(stats),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not refresh the shared queue statistics")
                }
            }
        }));
    }

    /// Runs `f` against the store under the retry policy (the engine's one
    /// retry layer), recording every attempt in the store metrics and the pod's
    /// store health.
    fn call<T, F, Fut>(&self, op: &'static str, f: F) -> ResponseFuture<Result<T, StoreError>>
    where
        T: 'static,
        F: Fn(Arc<dyn Store>) -> Fut + 'static,
        Fut: Future<Output = Result<T, StoreError>> + 'static,
    {
        let store = self.store.clone();
        let state = self.state.clone();
        let retry = self.cfg.retry;
        Box::pin(async move {
            let t0 = std::cell::Cell::new(std::time::Instant::now());
            retry
                .run_observed(
                    op,
                    || {
                        t0.set(std::time::Instant::now());
                        f(store.clone())
                    },
                    |r| {
                        observe(op, t0.get(), r);
                        state.store_result(
                            is_write(op),
                            r.as_ref().map(|_| ()).map_err(|e| e.to_string()),
                        );
                    },
                )
                .await
        })
    }

    /// Releases the claims this pod holds in the store but neither runs nor is
    /// finishing, once they are older than `grace` by store time (see
    /// [`StorageConfig::reconcile_interval`]). Reads live rows only (this pod's
    /// claims).
    fn reconcile(&mut self, grace: Duration, ctx: &mut Context<Self>) {
        if self.reconciling {
            return;
        }
        self.reconciling = true;
        let store = self.store.clone();
        let pod_id = self.state.pod_id();
        let fut = async move {
            let t0 = std::time::Instant::now();
            let r = store.steps_held(&pod_id, 10_000).await;
            observe("steps_held", t0, &r);
            r
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.reconciling = false;
            let (held, now) = match res {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read this pod's claims to reconcile them");
                    return;
                }
            };
            let busy: std::collections::HashSet<StepId> = act
                .pending
                .iter()
                .chain(act.writing.iter().flatten())
                .map(|f| f.lease.step_id)
                .collect();
            let strays: Vec<Lease> = held
                .into_iter()
                .filter(|h| {
                    // `waiting` before `running`: a step moves from the first
                    // to the second, entering one before leaving the other.
                    !act.state.waiting.contains_key(&h.lease.step_id)
                        && !act.state.running.contains_key(&h.lease.step_id)
                        && !busy.contains(&h.lease.step_id)
                        && (now - h.claimed_at).to_std().unwrap_or_default() > grace
                })
                .map(|h| h.lease)
                .collect();
            if strays.is_empty() {
                return;
            }
            tracing::warn!(
                steps = strays.len(),
                ids = %strays.iter().take(20).map(|l| l.step_id.to_string()).collect::<Vec<_>>().join(","),
                "releasing claims this pod holds in the store but never received (lost claim answers)"
            );
            RECONCILED.inc_by(strays.len() as u64);
            let store = act.store.clone();
            ctx.spawn(
                async move {
                    let t0 = std::time::Instant::now();
                    let r = store.steps_release(strays).await;
                    observe("steps_release", t0, &r);
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "could not release stray claims; the next reconciliation retries");
                    }
                }
                .into_actor(act),
            );
        }));
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing {
            return;
        }
        if self.pending.is_empty() {
            for w in self.flushed_waiters.drain(..) {
                let _ = w.send(());
            }
            return;
        }
        let linger = self.cfg.finish_linger;
        if !linger.is_zero()
            && self.flushed_waiters.is_empty()
            && self.pending.len() < self.cfg.finish_batch.max(1)
            && !self.state.shutting_down()
        {
            let since = *self
                .pending_since
                .get_or_insert_with(std::time::Instant::now);
            let waited = since.elapsed();
            if waited < linger {
                if self.linger_timer.is_none() {
                    self.linger_timer = Some(ctx.run_later(linger - waited, |act, ctx| {
                        act.linger_timer = None;
                        act.flush(ctx);
                    }));
                }
                return;
            }
        }
        if let Some(t) = self.linger_timer.take() {
            ctx.cancel_future(t);
        }
        let n = self.pending.len().min(self.cfg.finish_batch.max(1));
        let batch: Vec<Finish> = self.pending.drain(..n).collect();
        self.pending_since = (!self.pending.is_empty()).then(std::time::Instant::now);
        self.flushing = true;
        self.writing = Some(batch.clone());
        let store = self.store.clone();
        let backoff = self.cfg.step_backoff;
        let fut = async move {
            let t0 = std::time::Instant::now();
            let r = store
                .steps_finish(FinishParams {
                    finishes: batch,
                    backoff,
                })
                .await;
            observe("steps_finish", t0, &r);
            r
        };
        ctx.spawn(
            std::panic::AssertUnwindSafe(fut)
                .catch_unwind()
                .into_actor(self)
                .map(move |res, act, ctx| {
                    guarded(act, ctx, move |act, ctx| {
                        act.flushing = false;
                        let retry = act.writing.take().unwrap_or_default();
                        match res {
                            Ok(Ok(report)) => {
                                act.failures = 0;
                                act.state.store_result(true, Ok(()));
                                for (id, _) in &report.applied {
                                    if let Some((t, kind)) = act.counted_as.remove(id) {
                                        if let Some(k) = crate::throughput::Finished::from_label(kind) {
                                            act.state.record_finished(k);
                                        }
                                        super::executor::OUTCOMES
                                            .with_label_values(&[metrics::type_label(&t), kind])
                                            .inc();
                                    }
                                }
                                for l in &report.rejected {
                                    act.counted_as.remove(&l.step_id);
                                }
                                if !report.rejected.is_empty() {
                                    act.state.add_fenced(report.rejected.len() as u64);
                                    FENCED.inc_by(report.rejected.len() as u64);
                                    for l in &report.rejected {
                                        tracing::warn!(
                                            step_id = %l.step_id, attempt = l.attempt, pod_id = %l.pod_id,
                                            "result rejected by fencing: the step moved on (this pod was presumed dead or lost the lease)"
                                        );
                                    }
                                }
                                act.flush(ctx);
                            }
                            Ok(Err(e)) => {
                                act.state.store_result(true, Err(e.to_string()));
                                // Keep the outcomes and try again later: they are the
                                // only record of work done.
                                act.pending.splice(0..0, retry);
                                act.failures += 1;
                                let delay = act.cfg.retry.delay_after(act.failures, rand::random());
                                tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "writing step outcomes failed; will retry");
                                ctx.run_later(delay, |act, ctx| act.flush(ctx));
                            }
                            Err(p) => {
                                act.pending.splice(0..0, retry);
                                let why = format!(
                                    "panic while writing outcomes: {}",
                                    crate::supervision::panic_message(p.as_ref())
                                );
                                act.fault(ctx, why);
                            }
                        }
                    });
                }),
        );
    }
}

impl Handler<crate::messages::QuietChanged> for StorageActor {
    type Result = ();
    fn handle(&mut self, msg: crate::messages::QuietChanged, ctx: &mut Context<Self>) {
        if !self.store.shares_stats() {
            return;
        }
        self.stats_gate = crate::quiet::Gate::default();
        if msg.quiet {
            let _ = self.stats_gate.open(&self.state.quiet);
        } else {
            self.refresh_stats(ctx);
        }
        self.arm_stats(ctx);
    }
}

impl Actor for StorageActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        self.state.actor_started(Self::NAME);
        self.flushing = false;
        self.reconciling = false;
        // A linger timer of the previous incarnation died with its context.
        self.linger_timer = None;
        if !self.pending.is_empty() {
            self.flush(ctx);
        }
        if let Some(every) = self.cfg.reconcile_interval {
            ctx.run_interval(every, move |act, ctx| {
                // A quiet pod holds no claims (it went quiet with none
                // anywhere, and claims only after waking).
                if !act.state.quiet.is_quiet() {
                    act.reconcile(every, ctx)
                }
            });
        }
        self.refreshing_stats = false;
        self.stats_timer = None;
        if self.store.shares_stats() {
            self.refresh_stats(ctx);
            self.arm_stats(ctx);
        }
        // Outcomes kept across a restart are written now.
        self.flush(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.state.actor_stopped(Self::NAME);
    }
}

impl Supervised for StorageActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // `pending` survives on purpose. A group that was being written when the
        // actor faulted is put back and written again: fencing makes that safe (a
        // second completion of the same lease is rejected, never applied twice).
        if let Some(batch) = self.writing.take() {
            self.pending.splice(0..0, batch);
        }
        self.flushing = false;
    }
}

impl SupervisedActor for StorageActor {
    const NAME: &'static str = "storage";
    fn pod_state(&self) -> &Arc<PodState> {
        &self.state
    }
}

crate::impl_inject_fault!(StorageActor);
