//! State shared between a pod's actors and its HTTP side, read without a message
//! round trip (liveness must answer even when an actor is busy or restarting).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde::Serialize;

use crate::step::StepId;
use crate::store::Lease;
use crate::supervision::{ActorState, ActorStatus, RestartBudget, RestartWindow};

/// The current leadership term as this pod last saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Term {
    /// The leader.
    pub pod_id: String,
    /// Its birth time (terms are `(pod_id, birth_ts)`).
    pub birth_ts: DateTime<Utc>,
}

/// A step running on this pod.
#[derive(Clone, Debug)]
pub struct InFlight {
    /// Its lease.
    pub lease: Lease,
    /// Step type.
    pub step_type: String,
    /// When the handler started.
    pub started: Instant,
    /// Retries this step has left.
    pub retries_left: u32,
    /// Retries spent before this run.
    pub retry_count: u32,
}

/// What the pod last heard from its store's writes (readiness means "can write").
#[derive(Debug, Default)]
struct StoreHealth {
    last_write_ok: Option<Instant>,
    write_error: Option<String>,
}

/// What a pod knows about itself.
#[derive(Debug)]
pub struct PodState {
    base_pod_id: String,
    pod_id: RwLock<String>,
    incarnation: RwLock<String>,
    generation: AtomicU32,
    max_capacity: u32,
    /// Claimed steps this pod may hold beyond `max_capacity`, waiting on the pod
    /// for a slot (see [`crate::actors::executor`], "Claim-ahead").
    claim_ahead: u32,
    /// Steps held: reserved when steps are claimed (running or waiting for a
    /// slot), released by the executor when their outcome is handed to
    /// storage or they are given back.
    in_flight: AtomicU32,
    /// Steps running now, by id.
    pub running: DashMap<StepId, InFlight>,
    /// Claimed steps waiting on this pod for a slot (claim-ahead), by id: held
    /// by this pod, so self-reconciliation leaves them alone.
    pub waiting: DashMap<StepId, Lease>,
    is_leader: AtomicBool,
    leader: RwLock<Option<Term>>,
    last_election_check: RwLock<Option<DateTime<Utc>>>,
    heartbeat_healthy: AtomicBool,
    shutting_down: AtomicBool,
    store: Mutex<StoreHealth>,
    started: Instant,
    actors: DashMap<&'static str, ActorStatus>,
    restarts: Mutex<RestartWindow>,
    budget_exhausted: AtomicBool,
    fenced_results: AtomicU64,
    throughput: Mutex<crate::throughput::Throughput>,
    recovery: Mutex<(u32, Option<String>)>,
    /// On shared-stats backends: the statistics last read or published.
    shared_stats: RwLock<Option<crate::records::QueueStats>>,
    /// The pod rows of the last leader check, with the store time they were read.
    pods_seen: RwLock<Option<(Vec<crate::records::PodRecord>, DateTime<Utc>)>>,
    /// Idle-quiet mode and its wake clock (see [`crate::quiet`]).
    pub quiet: crate::quiet::Quiet,
    /// Heartbeats fail until then (fault injection, test builds only).
    #[cfg(feature = "failpoints")]
    heartbeat_fail_until: Mutex<Option<Instant>>,
}

impl PodState {
    /// State for a pod called `pod_id` that runs up to `max_capacity` steps at once.
    pub(crate) fn new(
        pod_id: impl Into<String>,
        max_capacity: u32,
        budget: RestartBudget,
        quiet: crate::quiet::Quiet,
    ) -> Self {
        let pod_id = pod_id.into();
        PodState {
            base_pod_id: pod_id.clone(),
            pod_id: RwLock::new(pod_id),
            incarnation: RwLock::new(uuid::Uuid::now_v7().simple().to_string()),
            generation: AtomicU32::new(0),
            max_capacity: max_capacity.max(1),
            claim_ahead: 0,
            in_flight: AtomicU32::new(0),
            running: DashMap::new(),
            waiting: DashMap::new(),
            is_leader: AtomicBool::new(false),
            leader: RwLock::new(None),
            last_election_check: RwLock::new(None),
            heartbeat_healthy: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            store: Mutex::new(StoreHealth::default()),
            started: Instant::now(),
            actors: DashMap::new(),
            restarts: Mutex::new(RestartWindow::new(budget)),
            budget_exhausted: AtomicBool::new(false),
            fenced_results: AtomicU64::new(0),
            throughput: Mutex::new(Default::default()),
            recovery: Mutex::new((0, None)),
            shared_stats: RwLock::new(None),
            pods_seen: RwLock::new(None),
            quiet,
            #[cfg(feature = "failpoints")]
            heartbeat_fail_until: Mutex::new(None),
        }
    }

    /// The pod's current identity.
    pub fn pod_id(&self) -> String {
        self.pod_id.read().expect("pod id lock").clone()
    }

    /// Takes a new identity after being presumed dead: the configured id with a
    /// generation suffix. Returns the new id.
    pub(crate) fn rejoin(&self) -> String {
        let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let id = format!("{}-r{g}", self.base_pod_id);
        *self.pod_id.write().expect("pod id lock") = id.clone();
        *self.incarnation.write().expect("incarnation lock") =
            uuid::Uuid::now_v7().simple().to_string();
        self.heartbeat_healthy.store(false, Ordering::SeqCst);
        self.set_leader(false, None);
        id
    }

    /// A random token naming this run of the current pod id: written with every
    /// heartbeat, so the store can tell a new run of the same id from the old one.
    pub fn incarnation(&self) -> String {
        self.incarnation.read().expect("incarnation lock").clone()
    }

    /// How many times this process rejoined under a new identity.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Steps this pod runs at once.
    pub fn max_capacity(&self) -> u32 {
        self.max_capacity
    }

    /// Sets how many claimed steps may wait beyond capacity (before start).
    pub(crate) fn with_claim_ahead(mut self, n: u32) -> Self {
        self.claim_ahead = n;
        self
    }

    /// Claimed steps this pod may hold beyond its capacity.
    pub fn claim_ahead(&self) -> u32 {
        self.claim_ahead
    }

    /// Steps held: running, waiting for a slot, or claimed and on their way to
    /// the executor.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Steps running now (at most [`Self::max_capacity`]).
    pub fn running_count(&self) -> u32 {
        self.running.len() as u32
    }

    /// How many more steps a claim may take: capacity plus claim-ahead, less
    /// the steps held.
    pub fn claim_room(&self) -> u32 {
        (self.max_capacity + self.claim_ahead).saturating_sub(self.in_flight())
    }

    pub(crate) fn reserve(&self, n: u32) {
        self.in_flight.fetch_add(n, Ordering::SeqCst);
    }

    pub(crate) fn release_slots(&self, n: u32) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// Whether this pod currently acts as leader.
    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::SeqCst)
    }

    /// The leader this pod last saw.
    pub fn leader(&self) -> Option<Term> {
        self.leader.read().expect("leader lock").clone()
    }

    /// Store time of the last election check.
    pub fn last_election_check(&self) -> Option<DateTime<Utc>> {
        *self.last_election_check.read().expect("election lock")
    }

    pub(crate) fn set_leader(&self, is_leader: bool, leader: Option<Term>) {
        self.is_leader.store(is_leader, Ordering::SeqCst);
        *self.leader.write().expect("leader lock") = leader;
    }

    pub(crate) fn set_election_check(&self, at: DateTime<Utc>) {
        *self.last_election_check.write().expect("election lock") = Some(at);
    }

    /// On shared-stats backends, the statistics this pod last read or published.
    pub fn shared_stats(&self) -> Option<crate::records::QueueStats> {
        self.shared_stats.read().expect("stats lock").clone()
    }

    pub(crate) fn set_shared_stats(&self, s: crate::records::QueueStats) {
        *self.shared_stats.write().expect("stats lock") = Some(s);
    }

    /// The pod rows the last leader check read, and the store time of reading.
    pub fn pods_seen(&self) -> Option<(Vec<crate::records::PodRecord>, DateTime<Utc>)> {
        self.pods_seen.read().expect("pods lock").clone()
    }

    pub(crate) fn set_pods_seen(&self, pods: Vec<crate::records::PodRecord>, at: DateTime<Utc>) {
        *self.pods_seen.write().expect("pods lock") = Some((pods, at));
    }

    /// Whether this pod's own heartbeat is current.
    pub fn heartbeat_healthy(&self) -> bool {
        self.heartbeat_healthy.load(Ordering::SeqCst)
    }

    pub(crate) fn set_heartbeat_healthy(&self, healthy: bool) {
        self.heartbeat_healthy.store(healthy, Ordering::SeqCst);
    }

    /// True once graceful shutdown began.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Records a store call's outcome. Only writes count: readiness means "can
    /// write" (heartbeats are writes), and a successful read during a write outage
    /// must not make the pod look ready. Reads are ignored here.
    pub(crate) fn store_result(&self, write: bool, ok: Result<(), String>) {
        if !write {
            return;
        }
        let mut h = self.store.lock().expect("store lock");
        match ok {
            Ok(()) => {
                h.last_write_ok = Some(Instant::now());
                h.write_error = None;
            }
            Err(e) => h.write_error = Some(e),
        }
    }

    /// Time since a write last succeeded, if one ever did.
    pub fn store_write_ok_age(&self) -> Option<Duration> {
        self.store
            .lock()
            .expect("store lock")
            .last_write_ok
            .map(|t| t.elapsed())
    }

    /// The last write error since the last successful write.
    pub fn store_write_error(&self) -> Option<String> {
        self.store.lock().expect("store lock").write_error.clone()
    }

    /// Time since the pod started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Results rejected by fencing since start.
    pub fn fenced_results(&self) -> u64 {
        self.fenced_results.load(Ordering::Relaxed)
    }

    pub(crate) fn add_fenced(&self, n: u64) {
        self.fenced_results.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a finished run the store accepted in this minute's bucket (see
    /// [`crate::throughput`]).
    pub(crate) fn record_finished(&self, kind: crate::throughput::Finished) {
        self.throughput.lock().expect("throughput").record(
            crate::throughput::now_minute(),
            kind,
            1,
        );
    }

    /// This pod's runs per minute over the last hour.
    pub fn throughput(&self) -> crate::throughput::Series {
        self.throughput
            .lock()
            .expect("throughput")
            .series(crate::throughput::now_minute())
    }

    /// The heartbeat `meta`: `base` plus this pod's throughput buckets and its
    /// fenced-result count, so every pod can show the fleet's.
    pub(crate) fn heartbeat_meta(&self, base: &serde_json::Value) -> serde_json::Value {
        let mut meta = self
            .throughput
            .lock()
            .expect("throughput")
            .into_meta(base, crate::throughput::now_minute());
        meta["fenced_results"] = self.fenced_results().into();
        meta
    }

    /// Makes this pod's heartbeats fail for `d` (fault injection, test builds).
    #[cfg(feature = "failpoints")]
    pub(crate) fn inject_heartbeat_failure(&self, d: Duration) {
        *self.heartbeat_fail_until.lock().expect("failpoint lock") = Some(Instant::now() + d);
    }

    #[cfg(feature = "failpoints")]
    pub(crate) fn heartbeat_failure_injected(&self) -> bool {
        self.heartbeat_fail_until
            .lock()
            .expect("failpoint lock")
            .is_some_and(|t| Instant::now() < t)
    }

    pub(crate) fn recovery_result(&self, r: Result<(), String>) {
        let mut g = self.recovery.lock().expect("recovery lock");
        match r {
            Ok(()) => *g = (0, None),
            Err(e) => *g = (g.0 + 1, Some(e)),
        }
    }

    /// Recovery cycles in a row that failed on this pod, and the last error (both
    /// reset by a successful cycle).
    pub fn recovery_failures(&self) -> (u32, Option<String>) {
        self.recovery.lock().expect("recovery lock").clone()
    }

    /// Each actor's state and restart count, by name.
    pub fn actors(&self) -> Vec<(&'static str, ActorStatus)> {
        let mut v: Vec<_> = self
            .actors
            .iter()
            .map(|e| (*e.key(), e.value().clone()))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    pub(crate) fn actor_started(&self, name: &'static str) {
        self.actors
            .entry(name)
            .and_modify(|s| s.state = ActorState::Running)
            .or_insert(ActorStatus {
                state: ActorState::Running,
                restarts: 0,
                last_fault: None,
            });
    }

    pub(crate) fn actor_stopped(&self, name: &'static str) {
        if let Some(mut s) = self.actors.get_mut(name) {
            if s.state != ActorState::Restarting {
                s.state = ActorState::Stopped;
            }
        }
    }

    /// Records a fault of actor `name`; when the pod-wide restart budget is
    /// exceeded, stops the actix system with [`crate::supervision::EXIT_RESTART_BUDGET`].
    pub(crate) fn record_fault(&self, name: &'static str, why: String) {
        crate::supervision::RESTARTS
            .with_label_values(&[name])
            .inc();
        {
            let mut s = self.actors.entry(name).or_insert(ActorStatus {
                state: ActorState::Running,
                restarts: 0,
                last_fault: None,
            });
            s.state = ActorState::Restarting;
            s.restarts += 1;
            s.last_fault = Some(why);
        }
        let within = self
            .restarts
            .lock()
            .expect("restart window lock")
            .record(Instant::now());
        if !within && !self.budget_exhausted.swap(true, Ordering::SeqCst) {
            tracing::error!(
                actor = name,
                "restart budget exhausted; stopping the pod so the orchestrator replaces it"
            );
            if let Some(sys) = actix::System::try_current() {
                sys.stop_with_code(crate::supervision::EXIT_RESTART_BUDGET);
            }
        }
    }

    /// True once the restart budget was exhausted.
    pub fn budget_exhausted(&self) -> bool {
        self.budget_exhausted.load(Ordering::SeqCst)
    }
}
