//! [`PodConfig`]: everything a pod needs to know, its validation (each actor
//! checks its own part), and the actor configurations built from it.

use super::*;
use crate::retry::RetryPolicy;

/// Everything a pod needs to know. Defaults match the documented settings.
#[derive(Clone, Debug)]
pub struct PodConfig {
    /// This process's id (unique per process).
    pub pod_id: String,
    /// Steps run at once: `floor(max_parallelism × capacity_threshold)`, ≥ 1.
    pub max_capacity: u32,
    /// Most steps per claim.
    pub claim_batch: u32,
    /// Claimed steps the pod may hold beyond `max_capacity`, waiting for a
    /// slot (default 0); see `executor`, "Claim-ahead".
    pub claim_ahead: u32,
    /// Free slots before a finished step wakes a claim; see
    /// `claimer::ClaimerConfig::min_free`.
    pub claim_min_free: u32,
    /// How long an outcome may wait to share a write; see
    /// `storage::StorageConfig::finish_linger`.
    pub finish_linger: Duration,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// Idle-quiet mode's wake period (`None`: off, the default); see
    /// [`crate::quiet`].
    pub idle_poll_max: Option<Duration>,
    /// Idle claim period.
    pub claim_interval: Duration,
    /// Leader check period.
    pub leader_check_interval: Duration,
    /// Recovery period (leader only).
    pub recovery_interval: Duration,
    /// Self-reconciliation period (`None`: off); see
    /// `storage::StorageConfig::reconcile_interval`.
    pub reconcile_interval: Option<Duration>,
    /// Shared-stats period; see
    /// `storage::StorageConfig::stats_interval`.
    pub stats_interval: Duration,
    /// See `storage::StorageConfig::stats_lag`.
    pub stats_lag: Duration,
    /// Liveness threshold.
    pub dead_pod_threshold: Duration,
    /// Default handler timeout.
    pub step_timeout: Duration,
    /// Time running steps get on shutdown.
    pub shutdown_grace: Duration,
    /// Finished steps are pruned after this.
    pub retention: Duration,
    /// Rows per prune chunk; see `recovery::RecoveryConfig::prune_batch`.
    pub prune_batch: u32,
    /// Longest pause between prune chunks; see
    /// `recovery::RecoveryConfig::prune_interval`.
    pub prune_interval: Duration,
    /// How often the leader re-reads the schedules when none is due sooner;
    /// see `recovery::RecoveryConfig::schedule_check`.
    pub schedule_check: Duration,
    /// Step retry backoff.
    pub step_backoff: Backoff,
    /// How failed store calls are retried (the engine's one retry layer).
    pub store_retry: RetryPolicy,
    /// The queues this pod claims from (`None`: every queue).
    pub queues: Option<Vec<String>>,
    /// Whether a submit may create a queue that does not exist yet (`false`:
    /// such a submit is refused; see [`crate::queue`]).
    pub create_queues: bool,
    /// Recovery ledger file (`None`: in memory).
    pub ledger_path: Option<PathBuf>,
    /// Recovery cycles kept in the ledger.
    pub recovery_cycles_kept: usize,
    /// Actor restart budget.
    pub restart_budget: RestartBudget,
    /// Threads of the handler runtime.
    pub handler_threads: usize,
    /// JSON written with each heartbeat.
    pub meta: serde_json::Value,
}

impl Default for PodConfig {
    fn default() -> Self {
        PodConfig {
            pod_id: format!("pod-{}", uuid::Uuid::now_v7().simple()),
            max_capacity: 8,
            claim_batch: crate::defaults::CLAIM_BATCH,
            claim_ahead: 0,
            claim_min_free: 1,
            finish_linger: Duration::ZERO,
            heartbeat_interval: crate::defaults::HEARTBEAT_INTERVAL,
            idle_poll_max: None,
            claim_interval: crate::defaults::CLAIM_INTERVAL,
            leader_check_interval: crate::defaults::LEADER_CHECK_INTERVAL,
            recovery_interval: crate::defaults::RECOVERY_INTERVAL,
            reconcile_interval: Some(crate::defaults::RECONCILE_INTERVAL),
            stats_interval: crate::defaults::STATS_INTERVAL,
            stats_lag: crate::defaults::STATS_LAG,
            dead_pod_threshold: crate::defaults::DEAD_POD_THRESHOLD,
            step_timeout: crate::defaults::STEP_TIMEOUT,
            shutdown_grace: crate::defaults::SHUTDOWN_GRACE,
            retention: crate::defaults::RETENTION,
            prune_batch: crate::defaults::PRUNE_BATCH,
            prune_interval: crate::defaults::PRUNE_INTERVAL,
            schedule_check: crate::defaults::SCHEDULE_CHECK,
            step_backoff: Backoff::default(),
            store_retry: RetryPolicy::default(),
            queues: None,
            create_queues: true,
            ledger_path: None,
            recovery_cycles_kept: 20,
            restart_budget: RestartBudget::default(),
            handler_threads: 2,
            meta: serde_json::Value::Null,
        }
    }
}

impl PodConfig {
    /// Every problem that would keep a pod from running with this
    /// configuration, checked by each actor's own config (the same checks
    /// `fleet-q serve` gets; [`Pod::start`] refuses an invalid configuration).
    pub fn validate(&self) -> Result<(), PodError> {
        let mut problems = Vec::new();
        if self.pod_id.trim().is_empty() {
            problems.push("pod_id must not be empty".into());
        }
        if self.max_capacity == 0 {
            problems.push("max_capacity must be at least 1".into());
        }
        if self.claim_ahead > 10_000 {
            problems.push(format!(
                "claim_ahead ({}) must be at most 10000",
                self.claim_ahead
            ));
        }
        if self.handler_threads == 0 {
            problems.push("handler_threads must be at least 1".into());
        }
        if let Some(p) = self.idle_poll_max {
            if p < self.claim_interval || p < Duration::from_secs(1) {
                problems.push(format!(
                    "quiet: idle_poll_max ({p:?}) must be at least 1 s and at least the claim interval ({:?})",
                    self.claim_interval
                ));
            }
        }
        if self.restart_budget.window.is_zero() {
            problems.push("restart_budget: window must be above zero".into());
        }
        self.storage_config().validate(&mut problems);
        self.executor_config().validate(&mut problems);
        self.claimer_config().validate(&mut problems);
        self.recovery_config().validate(&mut problems);
        self.leader_config().validate(&mut problems);
        self.heartbeat_config().validate(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PodError::Config(problems))
        }
    }

    pub(super) fn storage_config(&self) -> StorageConfig {
        StorageConfig {
            retry: self.store_retry,
            queues: self.queues.clone(),
            step_backoff: self.step_backoff,
            reconcile_interval: self.reconcile_interval,
            stats_interval: self.stats_interval,
            stats_lag: self.stats_lag,
            finish_linger: self.finish_linger,
            ..Default::default()
        }
    }

    pub(super) fn executor_config(&self) -> ExecutorConfig {
        ExecutorConfig {
            default_timeout: self.step_timeout,
            backoff: self.step_backoff,
        }
    }

    pub(super) fn claimer_config(&self) -> ClaimerConfig {
        ClaimerConfig {
            interval: self.claim_interval,
            batch: self.claim_batch,
            min_free: self.claim_min_free,
        }
    }

    pub(super) fn recovery_config(&self) -> RecoveryConfig {
        RecoveryConfig {
            interval: self.recovery_interval,
            dead_threshold: self.dead_pod_threshold,
            retention: self.retention,
            prune_batch: self.prune_batch,
            prune_interval: self.prune_interval,
            schedule_check: self.schedule_check,
            backoff: self.step_backoff,
            ..Default::default()
        }
    }

    pub(super) fn leader_config(&self) -> LeaderConfig {
        LeaderConfig {
            check_interval: self.leader_check_interval,
            dead_threshold: self.dead_pod_threshold,
        }
    }

    pub(super) fn heartbeat_config(&self) -> HeartbeatConfig {
        HeartbeatConfig {
            interval: self.heartbeat_interval,
            dead_threshold: self.dead_pod_threshold,
            meta: self.meta.clone(),
        }
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn the_default_configuration_is_valid() {
        PodConfig::default().validate().unwrap();
    }

    #[test]
    fn every_problem_is_listed_by_the_actor_that_has_it() {
        let cfg = PodConfig {
            max_capacity: 0,
            claim_batch: 0,
            heartbeat_interval: Duration::from_secs(30),
            dead_pod_threshold: Duration::from_secs(60),
            store_retry: RetryPolicy::new(0, Duration::from_secs(2), Duration::from_secs(1)),
            prune_batch: 0,
            ..PodConfig::default()
        };
        let Err(PodError::Config(problems)) = cfg.validate() else {
            panic!("an invalid configuration passed")
        };
        for want in [
            "max_capacity",
            "claimer: batch",
            "heartbeat: dead_threshold",
            "storage: retry: max_attempts",
            "storage: retry: max (1s) must be at least base (2s)",
            "recovery: prune_batch",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(want)),
                "{want} missing from {problems:?}"
            );
        }
        assert_eq!(problems.len(), 6, "{problems:?}");
    }
}
