//! A running pod: the six supervised actors wired together.
//!
//! [`Pod::start`] must be called inside a running actix system (e.g. from
//! `#[actix::main]` or `actix_web::main`). Step handlers run on a runtime of their
//! own (a dedicated thread pool), so a slow or CPU-bound handler never stalls the
//! actors. [`Pod::shutdown`] is the graceful path: stop claiming, release the
//! claimed steps waiting for a slot (claim-ahead), let running steps finish within
//! the grace period, release the rest without spending a retry, write the
//! remaining outcomes, and send a final `down` heartbeat.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::actors::claimer::{ClaimerActor, ClaimerConfig};
use crate::actors::executor::{ExecutorConfig, ExecutorPool, SetClaimer};
use crate::actors::heartbeat::{HeartbeatActor, HeartbeatConfig};
use crate::actors::leader::{LeaderConfig, LeaderElector};
use crate::actors::recovery::{RecoveryActor, RecoveryConfig, RecoveryError, RunRecovery};
use crate::actors::storage::*;
use crate::handler::HandlerRegistry;
use crate::ledger::{Ledger, RecoverySummary};
use crate::messages::{ClaimTrigger, ClaimTriggered};
use crate::queue::{QueueInfo, QueueSettings};
use crate::records::{PodRecord, QueueStats};
use crate::search::{BulkAction, SearchPage, SearchParams, StepFilter};
use crate::state::PodState;
use crate::step::{NewStep, Step, StepId};
use crate::store::{Backoff, CancelOutcome, Inserted, PageParams, RetryOutcome, Store, StoreError};
use crate::supervision::RestartBudget;

/// Most steps one bulk store call changes (each chunk is its own transaction).
pub const BULK_CHUNK: usize = 500;

/// Most candidate rows [`Pod::matching_steps`] reads to find a filter's
/// matches: the bound on what "everything matching this filter" costs.
pub const MATCH_SCAN_LIMIT: u64 = 20_000;

/// What [`Pod::matching_steps`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Matching {
    /// The matching steps, newest first.
    pub ids: Vec<StepId>,
    /// True when these are all the matches; false when a bound stopped the
    /// walk first.
    pub complete: bool,
}

mod config;
mod shutdown;

pub use config::PodConfig;
pub use shutdown::{ShutdownReport, SHUTDOWN_STORE_WAIT};

/// Why a pod could not start.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The handler runtime could not be started.
    #[error("cannot start the handler runtime: {0}")]
    Runtime(String),
    /// The configuration is invalid: every problem, one per entry.
    #[error("invalid pod configuration:\n  - {}", .0.join("\n  - "))]
    Config(Vec<String>),
}

struct HandlerRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl HandlerRuntime {
    fn start(threads: usize) -> Result<HandlerRuntime, PodError> {
        let (htx, hrx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("fleet-q-handlers".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads.max(1))
                    .thread_name("fleet-q-handler")
                    .enable_all()
                    .build();
                match rt {
                    Ok(rt) => {
                        let _ = htx.send(Ok(rt.handle().clone()));
                        rt.block_on(async {
                            let _ = stop_rx.await;
                        });
                        // Running handlers are abandoned here (their leases were
                        // released by the shutdown that stopped us).
                        rt.shutdown_background();
                    }
                    Err(e) => {
                        let _ = htx.send(Err(e.to_string()));
                    }
                }
            })
            .map_err(|e| PodError::Runtime(e.to_string()))?;
        let handle = hrx
            .recv()
            .map_err(|e| PodError::Runtime(e.to_string()))?
            .map_err(PodError::Runtime)?;
        Ok(HandlerRuntime {
            handle,
            stop: Some(stop_tx),
        })
    }
}

impl Drop for HandlerRuntime {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A running pod.
pub struct Pod {
    cfg: PodConfig,
    state: Arc<PodState>,
    storage: Addr<StorageActor>,
    heartbeat: Addr<HeartbeatActor>,
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    leader: Addr<LeaderElector>,
    claimer: Addr<ClaimerActor>,
    executor: Addr<ExecutorPool>,
    recovery: Addr<RecoveryActor>,
    ledger: Ledger,
    store: Arc<dyn Store>,
    /// Queues seen to exist (queues are never deleted), so that with
    /// `create_queues` off a submit to a known queue costs no extra read.
    known_queues: std::sync::Mutex<std::collections::HashSet<String>>,
    /// When `known_queues` was last refreshed from the store: at most once a
    /// second, so a client sending unknown names cannot turn each request
    /// into a store read.
    queues_read_at: std::sync::Mutex<Option<std::time::Instant>>,
    _handlers_rt: Arc<HandlerRuntime>,
}

impl Pod {
    /// Starts a pod on `store` (schema already initialised) running `handlers`.
    pub fn start(
        cfg: PodConfig,
        store: Arc<dyn Store>,
        handlers: HandlerRegistry,
    ) -> Result<Pod, PodError> {
        cfg.validate()?;
        crate::metrics::register_all();
        crate::metrics::allow_type_labels(handlers.types().iter().map(String::as_str));
        let state = Arc::new(
            PodState::new(
                cfg.pod_id.clone(),
                cfg.max_capacity,
                cfg.restart_budget,
                crate::quiet::Quiet::new(cfg.idle_poll_max, &cfg.pod_id, cfg.heartbeat_interval),
            )
            .with_claim_ahead(cfg.claim_ahead),
        );
        let ledger = Ledger::open_or_memory(cfg.ledger_path.as_deref(), cfg.recovery_cycles_kept);
        let rt = Arc::new(HandlerRuntime::start(cfg.handler_threads)?);

        let storage_cfg = cfg.storage_config();
        let (s, st) = (store.clone(), state.clone());
        let storage = Supervisor::start(move |_| StorageActor::new(s, storage_cfg, st));

        let (st, sa, h, handle) = (
            state.clone(),
            storage.clone(),
            handlers.clone(),
            rt.handle.clone(),
        );
        let exec_cfg = cfg.executor_config();
        let executor = Supervisor::start(move |_| ExecutorPool::new(exec_cfg, st, sa, h, handle));

        let (st, sa, ex) = (state.clone(), storage.clone(), executor.clone());
        let claimer_cfg = cfg.claimer_config();
        let claimer = Supervisor::start(move |_| ClaimerActor::new(claimer_cfg, st, sa, ex));
        executor.do_send(SetClaimer(claimer.clone().recipient()));

        let (st, sa, lg) = (state.clone(), storage.clone(), ledger.clone());
        let recovery_cfg = cfg.recovery_config();
        let cl = claimer.clone();
        let recovery = Supervisor::start(move |_| {
            RecoveryActor::new(recovery_cfg, st, sa, lg).with_claimer(cl.recipient())
        });

        let (st, sa, rec) = (state.clone(), storage.clone(), recovery.clone());
        let leader_cfg = cfg.leader_config();
        let leader = Supervisor::start(move |_| {
            LeaderElector::new(leader_cfg, st, sa, vec![rec.recipient()])
        });

        let (st, sa) = (state.clone(), storage.clone());
        let subs = vec![claimer.clone().recipient(), leader.clone().recipient()];
        let hb_cfg = cfg.heartbeat_config();
        let heartbeat = Supervisor::start(move |_| HeartbeatActor::new(hb_cfg, st, sa, subs));
        claimer.do_send(crate::actors::claimer::SetQuietPeers {
            heartbeat: heartbeat.clone().recipient(),
            subscribers: vec![
                heartbeat.clone().recipient(),
                leader.clone().recipient(),
                recovery.clone().recipient(),
                storage.clone().recipient(),
            ],
        });

        tracing::info!(pod_id = %cfg.pod_id, max_capacity = cfg.max_capacity, handlers = %handlers.types().join(","), "pod started");
        Ok(Pod {
            cfg,
            state,
            storage,
            heartbeat,
            leader,
            claimer,
            executor,
            recovery,
            ledger,
            store,
            known_queues: Default::default(),
            queues_read_at: Default::default(),
            _handlers_rt: rt,
        })
    }

    /// Shared state (health, leadership, capacity).
    pub fn state(&self) -> &Arc<PodState> {
        &self.state
    }

    /// The settings the pod runs with.
    pub fn config(&self) -> &PodConfig {
        &self.cfg
    }

    /// Cancels a pending step.
    pub async fn cancel_step(&self, id: StepId) -> Result<CancelOutcome, StoreError> {
        self.storage
            .send(CancelStep(id))
            .await
            .map_err(Self::storage_down)?
    }

    /// Puts a failed step back to pending with a fresh retry budget.
    pub async fn retry_step(&self, id: StepId) -> Result<RetryOutcome, StoreError> {
        self.storage
            .send(RetryStep(id))
            .await
            .map_err(Self::storage_down)?
    }

    /// Every queue with its settings and live counts.
    pub async fn queues(&self) -> Result<Vec<QueueInfo>, StoreError> {
        self.storage
            .send(ListQueues)
            .await
            .map_err(Self::storage_down)?
    }

    /// Creates or replaces a queue's settings (every pod obeys them from its
    /// next claim).
    pub async fn put_queue(&self, settings: QueueSettings) -> Result<QueueSettings, StoreError> {
        let name = settings.name.clone();
        let stored = self
            .storage
            .send(PutQueue(settings))
            .await
            .map_err(Self::storage_down)??;
        self.known_queues.lock().expect("known queues").insert(name);
        Ok(stored)
    }

    /// Runs a schedule operation through the StorageActor (its retry and
    /// metrics); writes tell the leader part of this pod to look again.
    async fn schedule_call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(Arc<dyn Store>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let r = self
            .storage
            .send(crate::actors::storage::StoreCall {
                op,
                f: Box::new(move |s| Box::pin(f(s))),
            })
            .await
            .map_err(Self::storage_down)?;
        if r.is_ok() && !matches!(op, "schedules_list" | "schedule_get") {
            self.recovery
                .do_send(crate::actors::recovery::SchedulesChanged);
        }
        r
    }

    /// Every schedule.
    pub async fn schedules(&self) -> Result<Vec<crate::schedule::Schedule>, StoreError> {
        self.schedule_call(
            "schedules_list",
            |s| async move { s.schedules_list().await },
        )
        .await
    }

    /// One schedule, by id or name.
    pub async fn schedule(
        &self,
        key: &str,
    ) -> Result<Option<crate::schedule::Schedule>, StoreError> {
        let key = key.to_string();
        self.schedule_call("schedule_get", move |s| {
            let key = key.clone();
            async move { s.schedule_get(&key).await }
        })
        .await
    }

    /// Creates or replaces a schedule by name.
    pub async fn put_schedule(
        &self,
        spec: crate::schedule::ScheduleSpec,
    ) -> Result<crate::schedule::Schedule, StoreError> {
        self.schedule_call("schedule_put", move |s| {
            let spec = spec.clone();
            async move { s.schedule_put(spec).await }
        })
        .await
    }

    /// Deletes a schedule; false when there was none.
    pub async fn delete_schedule(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_string();
        self.schedule_call("schedule_delete", move |s| {
            let key = key.clone();
            async move { s.schedule_delete(&key).await }
        })
        .await
    }

    /// Pauses or resumes a schedule.
    pub async fn set_schedule_paused(
        &self,
        key: &str,
        paused: bool,
    ) -> Result<Option<crate::schedule::Schedule>, StoreError> {
        let key = key.to_string();
        self.schedule_call("schedule_pause", move |s| {
            let key = key.clone();
            async move { s.schedule_pause(&key, paused).await }
        })
        .await
    }

    /// Fires a schedule's step now, once (not retried: a retry could submit
    /// twice); `None` when there is no such schedule.
    pub async fn trigger_schedule(&self, key: &str) -> Result<Option<StepId>, StoreError> {
        let r = crate::schedule::trigger(self.store.as_ref(), key).await;
        if matches!(r, Ok(Some(_))) {
            self.claimer
                .do_send(ClaimTriggered(crate::messages::ClaimTrigger::Submitted));
            self.recovery
                .do_send(crate::actors::recovery::SchedulesChanged);
        }
        r
    }

    /// Pauses or resumes a queue, keeping its other settings (a queue that
    /// does not exist yet is created).
    pub async fn set_queue_paused(&self, name: &str, paused: bool) -> Result<(), StoreError> {
        self.storage
            .send(PauseQueue(name.to_string(), paused))
            .await
            .map_err(Self::storage_down)??;
        self.known_queues
            .lock()
            .expect("known queues")
            .insert(name.to_string());
        Ok(())
    }

    /// The queues among `names` a submit may not use: with `create_queues`
    /// on, none; else those that do not exist (one store read, only when a
    /// name has not been seen to exist before, and at most once a second;
    /// queues made through this pod are known at once).
    pub async fn refused_queues(&self, names: &[&str]) -> Result<Vec<String>, StoreError> {
        if self.cfg.create_queues {
            return Ok(Vec::new());
        }
        let unseen = |known: &std::collections::HashSet<String>| -> Vec<String> {
            let mut v: Vec<String> = names
                .iter()
                .filter(|n| !known.contains(**n))
                .map(|n| n.to_string())
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let missing = unseen(&self.known_queues.lock().expect("known queues"));
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        {
            let mut at = self.queues_read_at.lock().expect("queues read at");
            if at.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Ok(missing);
            }
            *at = Some(std::time::Instant::now());
        }
        let all = self.queues().await?;
        let mut known = self.known_queues.lock().expect("known queues");
        known.extend(all.into_iter().map(|q| q.settings.name));
        Ok(unseen(&known))
    }

    /// A page of a step search (see [`crate::search`]): at most
    /// `params.scan_limit` candidate rows read.
    pub async fn search_steps(&self, params: SearchParams) -> Result<SearchPage, StoreError> {
        self.storage
            .send(SearchSteps(params))
            .await
            .map_err(Self::storage_down)?
    }

    /// Applies `action` to the given steps that are in the status it applies
    /// to, [`BULK_CHUNK`] steps per store call; returns the ids changed. Retried
    /// steps wake this pod's claimer.
    pub async fn bulk_steps(
        &self,
        action: BulkAction,
        ids: Vec<StepId>,
    ) -> Result<Vec<StepId>, StoreError> {
        let mut changed = Vec::new();
        for chunk in ids.chunks(BULK_CHUNK) {
            changed.extend(
                self.storage
                    .send(BulkSteps(action, chunk.to_vec()))
                    .await
                    .map_err(Self::storage_down)??,
            );
        }
        if action == BulkAction::Retry && !changed.is_empty() {
            self.claimer
                .do_send(ClaimTriggered(ClaimTrigger::Submitted));
        }
        Ok(changed)
    }

    /// The steps `action` would change among those matching `filter`: the
    /// filter narrowed to the status the action applies to, followed newest
    /// first until `max` are found or [`MATCH_SCAN_LIMIT`] candidate rows were
    /// read. `complete` is false when either bound stopped the walk (say "at
    /// least"), true when every match was found.
    pub async fn matching_steps(
        &self,
        action: BulkAction,
        filter: StepFilter,
        max: usize,
    ) -> Result<Matching, StoreError> {
        let filter = StepFilter {
            status: Some(action.applies_to()),
            ..filter
        };
        let mut ids = Vec::new();
        let mut before = None;
        let mut scanned = 0u64;
        loop {
            let page = self
                .search_steps(SearchParams {
                    filter: filter.clone(),
                    before,
                    limit: (max - ids.len()).clamp(1, 1000) as u32,
                    scan_limit: 10_000,
                })
                .await?;
            scanned += page.scanned;
            ids.extend(page.steps.iter().map(|s| s.step_id));
            match page.next {
                None => {
                    return Ok(Matching {
                        ids,
                        complete: true,
                    })
                }
                Some(_) if ids.len() >= max || scanned >= MATCH_SCAN_LIMIT => {
                    return Ok(Matching {
                        ids,
                        complete: false,
                    })
                }
                next => before = next,
            }
        }
    }

    /// A page of failed steps, by id.
    pub async fn failed_steps(&self, page: PageParams) -> Result<Vec<Step>, StoreError> {
        self.storage
            .send(ListFailed(page))
            .await
            .map_err(Self::storage_down)?
    }

    /// Statements this process sent to the store so far, by operation (a
    /// counter read: no store call).
    pub fn statements_by_op(&self) -> Vec<(&'static str, u64)> {
        self.store.statements_by_op()
    }

    /// Whether statistics come from the shared row ([`Store::shares_stats`]).
    pub fn shares_stats(&self) -> bool {
        self.store.shares_stats()
    }

    fn storage_down(e: MailboxError) -> StoreError {
        StoreError::transient("storage", format!("storage actor unavailable: {e}"))
    }

    /// Submits steps; wakes this pod's claimer so an idle pod starts them at once.
    pub async fn submit(&self, steps: Vec<NewStep>) -> Result<Vec<Inserted>, StoreError> {
        let r = self
            .storage
            .send(Submit(steps))
            .await
            .map_err(Self::storage_down)??;
        if r.iter().any(|i| i.created) {
            self.claimer
                .do_send(ClaimTriggered(ClaimTrigger::Submitted));
        }
        Ok(r)
    }

    /// One step.
    pub async fn step(&self, id: StepId) -> Result<Option<Step>, StoreError> {
        self.storage
            .send(GetStep(id))
            .await
            .map_err(Self::storage_down)?
    }

    /// Queue statistics.
    pub async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        self.storage
            .send(GetQueueStats)
            .await
            .map_err(Self::storage_down)?
    }

    /// Every pod row with the store's time of reading.
    pub async fn pods(
        &self,
    ) -> Result<(Vec<PodRecord>, chrono::DateTime<chrono::Utc>), StoreError> {
        self.storage
            .send(ListPods)
            .await
            .map_err(Self::storage_down)?
    }

    /// Pod rows for display (`/admin/queue`, `/metrics`): on shared-stats
    /// backends, the rows the last leader check read (no statement); elsewhere a
    /// fresh read.
    pub async fn pods_recent(
        &self,
    ) -> Result<(Vec<PodRecord>, chrono::DateTime<chrono::Utc>), StoreError> {
        if self.store.shares_stats() {
            if let Some(seen) = self.state.pods_seen() {
                return Ok(seen);
            }
        }
        self.pods().await
    }

    /// Runs a recovery cycle now (leader only).
    pub async fn run_recovery(&self, dry_run: bool) -> Result<RecoverySummary, RecoveryError> {
        self.recovery
            .send(RunRecovery { dry_run })
            .await
            .map_err(|e| RecoveryError::Failed(e.to_string()))?
    }

    /// Recent recovery cycles from the ledger, newest first.
    pub async fn recovery_history(&self, limit: usize) -> Result<Vec<RecoverySummary>, String> {
        self.ledger.recent(limit).await
    }

    /// Makes this pod's heartbeats fail for `d`. Only with feature `failpoints`
    /// (test builds); otherwise returns false.
    pub fn inject_heartbeat_failure(&self, d: Duration) -> bool {
        #[cfg(feature = "failpoints")]
        {
            self.state.inject_heartbeat_failure(d);
            true
        }
        #[cfg(not(feature = "failpoints"))]
        {
            let _ = d;
            false
        }
    }

    /// Injects a fault into the named actor. Only with feature `failpoints` (test
    /// builds); otherwise, and for an unknown actor name, returns false.
    #[cfg(not(feature = "failpoints"))]
    pub fn inject_fault(&self, _actor: &str, _kind: crate::supervision::FaultKind) -> bool {
        false
    }

    /// Injects a fault into the named actor. Only with feature `failpoints` (test
    /// builds); otherwise, and for an unknown actor name, returns false.
    #[cfg(feature = "failpoints")]
    pub fn inject_fault(&self, actor: &str, kind: crate::supervision::FaultKind) -> bool {
        use crate::supervision::{InjectFault, SupervisedActor};
        let m = InjectFault(kind);
        match actor {
            StorageActor::NAME => self.storage.do_send(m),
            HeartbeatActor::NAME => self.heartbeat.do_send(m),
            LeaderElector::NAME => self.leader.do_send(m),
            ClaimerActor::NAME => self.claimer.do_send(m),
            ExecutorPool::NAME => self.executor.do_send(m),
            RecoveryActor::NAME => self.recovery.do_send(m),
            _ => return false,
        }
        true
    }
}
