//! The StorageActor's messages, each above its handler: one per store operation
//! the pod needs, and [`FinishStep`] / [`Flush`] for the write-behind outcomes.

use super::*;
use crate::queue::{QueueInfo, QueueSettings};

/// Insert steps (client submits).
#[derive(Message)]
#[rtype(result = "Result<Vec<Inserted>, StoreError>")]
pub struct Submit(pub Vec<NewStep>);

impl Handler<Submit> for StorageActor {
    type Result = ResponseFuture<Result<Vec<Inserted>, StoreError>>;
    fn handle(&mut self, msg: Submit, _: &mut Context<Self>) -> Self::Result {
        let types: Vec<String> = msg
            .0
            .iter()
            .map(|s| s.payload().step_type.clone())
            .collect();
        let steps = Arc::new(msg.0);
        let call = self.call("steps_insert", move |s| {
            let steps = steps.clone();
            async move { s.steps_insert(steps.as_ref().clone()).await }
        });
        Box::pin(async move {
            let r = call.await?;
            for (ins, t) in r.iter().zip(&types) {
                if ins.created {
                    SUBMITTED.with_label_values(&[metrics::type_label(t)]).inc();
                }
            }
            Ok(r)
        })
    }
}

/// Claim up to `limit` steps for `pod_id` and hand them to `deliver_to`; answers
/// how many were claimed, and the store's pacing hint
/// ([`crate::store::Claimed::next_token_in`]). Delivery happens here, not in the
/// claimer, so a claimer restarting mid-claim cannot strand claimed steps.
#[derive(Message)]
#[rtype(result = "Result<(u32, Option<std::time::Duration>), StoreError>")]
pub struct ClaimSteps {
    /// Claiming pod.
    pub pod_id: String,
    /// At most this many.
    pub limit: u32,
    /// Where claimed steps go (the executor); their slots are reserved first.
    pub deliver_to: Recipient<crate::actors::executor::RunSteps>,
}

impl Handler<ClaimSteps> for StorageActor {
    type Result = ResponseFuture<Result<(u32, Option<std::time::Duration>), StoreError>>;
    fn handle(&mut self, msg: ClaimSteps, _: &mut Context<Self>) -> Self::Result {
        // No retry loop for claims: the claimer tries again at its next tick.
        let store = self.store.clone();
        let state = self.state.clone();
        let queues = self.cfg.queues.clone();
        Box::pin(async move {
            let t0 = std::time::Instant::now();
            let r = store
                .steps_claim_paced(ClaimParams {
                    pod_id: msg.pod_id,
                    limit: msg.limit,
                    queues,
                })
                .await;
            observe("steps_claim", t0, &r);
            state.store_result(true, r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            let crate::store::Claimed {
                steps,
                next_token_in,
            } = r?;
            let n = steps.len() as u32;
            CLAIM_BATCH.observe(f64::from(n));
            for s in &steps {
                CLAIMED
                    .with_label_values(&[metrics::type_label(s.step_type())])
                    .inc();
            }
            if n > 0 {
                state.reserve(n);
                msg.deliver_to
                    .do_send(crate::actors::executor::RunSteps(steps));
            }
            Ok((n, next_token_in))
        })
    }
}

/// A step's outcome, written with the next group (an event: nobody waits for it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FinishStep {
    /// The outcome.
    pub finish: Finish,
    /// `(step type, outcome kind)` to count in `fleet_q_steps_finished_total` once
    /// the store accepts the outcome; a result fenced out is not counted there.
    pub counted_as: Option<(String, &'static str)>,
}

impl Handler<FinishStep> for StorageActor {
    type Result = ();
    fn handle(&mut self, msg: FinishStep, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, ctx| {
            if let Some(c) = msg.counted_as {
                act.counted_as.insert(msg.finish.lease.step_id, c);
            }
            act.pending.push(msg.finish);
            act.flush(ctx);
        });
    }
}

/// Resolves once every outcome received so far has been written.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<Flush> for StorageActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.flushed_waiters.push(tx);
        self.flush(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// Return claimed steps to pending without spending a retry.
#[derive(Message)]
#[rtype(result = "Result<FencedReport, StoreError>")]
pub struct ReleaseSteps(pub Vec<Lease>);

impl Handler<ReleaseSteps> for StorageActor {
    type Result = ResponseFuture<Result<FencedReport, StoreError>>;
    fn handle(&mut self, msg: ReleaseSteps, _: &mut Context<Self>) -> Self::Result {
        let leases = Arc::new(msg.0);
        self.call("steps_release", move |s| {
            let leases = leases.clone();
            async move { s.steps_release(leases.as_ref().clone()).await }
        })
    }
}

/// Upsert this pod's heartbeat row.
#[derive(Message)]
#[rtype(result = "Result<PodRecord, StoreError>")]
pub struct SendHeartbeat(pub HeartbeatParams);

impl Handler<SendHeartbeat> for StorageActor {
    type Result = ResponseFuture<Result<PodRecord, StoreError>>;
    fn handle(&mut self, msg: SendHeartbeat, _: &mut Context<Self>) -> Self::Result {
        let p = Arc::new(msg.0);
        self.call("pod_heartbeat", move |s| {
            let p = p.clone();
            async move { s.pod_heartbeat(p.as_ref().clone()).await }
        })
    }
}

/// Every pod row, with the store's time of reading.
#[derive(Message)]
#[rtype(result = "Result<(Vec<PodRecord>, DateTime<Utc>), StoreError>")]
pub struct ListPods;

impl Handler<ListPods> for StorageActor {
    type Result = ResponseFuture<Result<(Vec<PodRecord>, DateTime<Utc>), StoreError>>;
    fn handle(&mut self, _: ListPods, _: &mut Context<Self>) -> Self::Result {
        self.call("pods_list", |s| async move {
            let pods = s.pods_list().await?;
            let now = s.now().await?;
            Ok((pods, now))
        })
    }
}

/// One step.
#[derive(Message)]
#[rtype(result = "Result<Option<Step>, StoreError>")]
pub struct GetStep(pub StepId);

impl Handler<GetStep> for StorageActor {
    type Result = ResponseFuture<Result<Option<Step>, StoreError>>;
    fn handle(&mut self, msg: GetStep, _: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        self.call("step_get", move |s| async move { s.step_get(id).await })
    }
}

/// Cancel a pending step (the admin API).
#[derive(Message)]
#[rtype(result = "Result<CancelOutcome, StoreError>")]
pub struct CancelStep(pub StepId);

impl Handler<CancelStep> for StorageActor {
    type Result = ResponseFuture<Result<CancelOutcome, StoreError>>;
    fn handle(&mut self, msg: CancelStep, _: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        self.call(
            "step_cancel",
            move |s| async move { s.step_cancel(id).await },
        )
    }
}

/// Put a failed step back to pending (the admin API).
#[derive(Message)]
#[rtype(result = "Result<RetryOutcome, StoreError>")]
pub struct RetryStep(pub StepId);

impl Handler<RetryStep> for StorageActor {
    type Result = ResponseFuture<Result<RetryOutcome, StoreError>>;
    fn handle(&mut self, msg: RetryStep, _: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        self.call("step_retry", move |s| async move { s.step_retry(id).await })
    }
}

/// A page of failed steps (the admin API).
#[derive(Message)]
#[rtype(result = "Result<Vec<Step>, StoreError>")]
pub struct ListFailed(pub PageParams);

impl Handler<ListFailed> for StorageActor {
    type Result = ResponseFuture<Result<Vec<Step>, StoreError>>;
    fn handle(&mut self, msg: ListFailed, _: &mut Context<Self>) -> Self::Result {
        let p = msg.0;
        self.call("steps_failed_list", move |s| {
            let p = p.clone();
            async move { s.steps_failed_list(p).await }
        })
    }
}

/// Every queue with its settings and live counts.
#[derive(Message)]
#[rtype(result = "Result<Vec<QueueInfo>, StoreError>")]
pub struct ListQueues;

impl Handler<ListQueues> for StorageActor {
    type Result = ResponseFuture<Result<Vec<QueueInfo>, StoreError>>;
    fn handle(&mut self, _: ListQueues, _: &mut Context<Self>) -> Self::Result {
        self.call("queues_list", |s| async move { s.queues_list().await })
    }
}

/// Creates or replaces a queue's settings.
#[derive(Message)]
#[rtype(result = "Result<QueueSettings, StoreError>")]
pub struct PutQueue(pub QueueSettings);

impl Handler<PutQueue> for StorageActor {
    type Result = ResponseFuture<Result<QueueSettings, StoreError>>;
    fn handle(&mut self, msg: PutQueue, _: &mut Context<Self>) -> Self::Result {
        let q = msg.0;
        self.call("queue_put", move |s| {
            let q = q.clone();
            async move { s.queue_put(q).await }
        })
    }
}

/// Pauses or resumes a queue.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct PauseQueue(pub String, pub bool);

impl Handler<PauseQueue> for StorageActor {
    type Result = ResponseFuture<Result<(), StoreError>>;
    fn handle(&mut self, msg: PauseQueue, _: &mut Context<Self>) -> Self::Result {
        let (name, paused) = (msg.0, msg.1);
        self.call("queue_pause", move |s| {
            let name = name.clone();
            async move { s.queue_pause(&name, paused).await }
        })
    }
}

/// A page of a step search (the admin API and the dashboard).
#[derive(Message)]
#[rtype(result = "Result<SearchPage, StoreError>")]
pub struct SearchSteps(pub SearchParams);

impl Handler<SearchSteps> for StorageActor {
    type Result = ResponseFuture<Result<SearchPage, StoreError>>;
    fn handle(&mut self, msg: SearchSteps, _: &mut Context<Self>) -> Self::Result {
        let p = msg.0;
        self.call("steps_search", move |s| {
            let p = p.clone();
            async move { s.steps_search(p).await }
        })
    }
}

/// A bulk retry or cancel of the given steps.
#[derive(Message)]
#[rtype(result = "Result<Vec<StepId>, StoreError>")]
pub struct BulkSteps(pub BulkAction, pub Vec<StepId>);

impl Handler<BulkSteps> for StorageActor {
    type Result = ResponseFuture<Result<Vec<StepId>, StoreError>>;
    fn handle(&mut self, msg: BulkSteps, _: &mut Context<Self>) -> Self::Result {
        let (action, ids) = (msg.0, msg.1);
        // A retry of the whole list is safe: a step already changed no longer
        // has the status the action applies to.
        self.call("steps_bulk", move |s| {
            let ids = ids.clone();
            async move { s.steps_bulk(action, ids).await }
        })
    }
}

/// Queue statistics.
#[derive(Message)]
#[rtype(result = "Result<QueueStats, StoreError>")]
pub struct GetQueueStats;

impl Handler<GetQueueStats> for StorageActor {
    type Result = ResponseFuture<Result<QueueStats, StoreError>>;
    fn handle(&mut self, _: GetQueueStats, _: &mut Context<Self>) -> Self::Result {
        if !self.store.shares_stats() {
            return self.call("queue_stats", |s| async move { s.queue_stats().await });
        }
        if let Some(stats) = self.state.shared_stats() {
            return Box::pin(async move { Ok(stats) });
        }
        // Nothing read yet (the pod just started): read the shared row once, and
        // count directly only while no leader has published.
        let state = self.state.clone();
        let shared = self.call("stats_shared", |s| async move { s.stats_shared().await });
        let direct = self.call("queue_stats", |s| async move { s.queue_stats().await });
        Box::pin(async move {
            let stats = match shared.await? {
                Some(s) => s,
                None => direct.await?,
            };
            state.set_shared_stats(stats.clone());
            Ok(stats)
        })
    }
}

/// Mark stale pods down (recovery).
#[derive(Message)]
#[rtype(result = "Result<Vec<String>, StoreError>")]
pub struct MarkPodsDown(pub MarkDownParams);

impl Handler<MarkPodsDown> for StorageActor {
    type Result = ResponseFuture<Result<Vec<String>, StoreError>>;
    fn handle(&mut self, msg: MarkPodsDown, _: &mut Context<Self>) -> Self::Result {
        let p = Arc::new(msg.0);
        self.call("pods_mark_down", move |s| {
            let p = p.clone();
            async move { s.pods_mark_down(p.as_ref().clone()).await }
        })
    }
}

/// Steps claimed by down, dead or unknown pods (recovery).
#[derive(Message)]
#[rtype(result = "Result<Vec<Step>, StoreError>")]
pub struct FindOrphans(pub OrphanParams);

impl Handler<FindOrphans> for StorageActor {
    type Result = ResponseFuture<Result<Vec<Step>, StoreError>>;
    fn handle(&mut self, msg: FindOrphans, _: &mut Context<Self>) -> Self::Result {
        let p = msg.0;
        self.call("steps_orphaned", move |s| {
            let p = p.clone();
            async move { s.steps_orphaned(p).await }
        })
    }
}

/// Requeue or fail orphans, fenced (recovery).
#[derive(Message)]
#[rtype(result = "Result<FencedReport, StoreError>")]
pub struct RequeueOrphans(pub RequeueParams);

impl Handler<RequeueOrphans> for StorageActor {
    type Result = ResponseFuture<Result<FencedReport, StoreError>>;
    fn handle(&mut self, msg: RequeueOrphans, _: &mut Context<Self>) -> Self::Result {
        let p = Arc::new(msg.0);
        self.call("steps_requeue_orphaned", move |s| {
            let p = p.clone();
            async move { s.steps_requeue_orphaned(p.as_ref().clone()).await }
        })
    }
}

/// Delete finished steps past retention (recovery).
#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct PruneSteps(pub PruneParams);

impl Handler<PruneSteps> for StorageActor {
    type Result = ResponseFuture<Result<u64, StoreError>>;
    fn handle(&mut self, msg: PruneSteps, _: &mut Context<Self>) -> Self::Result {
        let p = msg.0;
        self.call(
            "steps_prune",
            move |s| async move { s.steps_prune(p).await },
        )
    }
}

/// A store call for the pod's schedule operations (the admin API and the
/// leader's fires), run with the StorageActor's retry and metrics like every
/// other. `f` must be safe to repeat: every schedule operation is (puts are
/// by name, fires by idempotency key and compare-and-set).
pub struct StoreCall<T> {
    /// The operation's name (metrics, logs, read or write).
    pub op: &'static str,
    /// The call.
    #[allow(clippy::type_complexity)]
    pub f: Box<
        dyn Fn(Arc<dyn Store>) -> futures_util::future::BoxFuture<'static, Result<T, StoreError>>
            + Send,
    >,
}

impl<T: 'static> Message for StoreCall<T> {
    type Result = Result<T, StoreError>;
}

impl<T: 'static> Handler<StoreCall<T>> for StorageActor {
    type Result = ResponseFuture<Result<T, StoreError>>;
    fn handle(&mut self, msg: StoreCall<T>, _: &mut Context<Self>) -> Self::Result {
        let f = msg.f;
        self.call(msg.op, f)
    }
}
