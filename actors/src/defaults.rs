//! Every default of the engine, declared once: the actor configs, [`PodConfig`]
//! and (checked by a test in the binary's `config` module) the documented
//! settings all take their defaults from here.
//!
//! [`PodConfig`]: crate::PodConfig

use std::time::Duration;

/// Heartbeat period (`FLEET_Q_HEARTBEAT_INTERVAL_SECONDS`).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// A pod is presumed dead after this long without a heartbeat
/// (`FLEET_Q_DEAD_POD_THRESHOLD_SECONDS`).
pub const DEAD_POD_THRESHOLD: Duration = Duration::from_secs(180);
/// Idle claim period (`FLEET_Q_CLAIM_INTERVAL_SECONDS`).
pub const CLAIM_INTERVAL: Duration = Duration::from_secs(5);
/// Most steps claimed at once (`FLEET_Q_CLAIM_BATCH_SIZE`).
pub const CLAIM_BATCH: u32 = 100;
/// Leader election period (`FLEET_Q_LEADER_CHECK_INTERVAL_SECONDS`).
pub const LEADER_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// The leader's recovery period (`FLEET_Q_RECOVERY_INTERVAL_SECONDS`).
pub const RECOVERY_INTERVAL: Duration = Duration::from_secs(300);
/// Self-reconciliation period (`FLEET_Q_RECONCILE_INTERVAL_SECONDS`).
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(60);
/// Shared statistics period (`FLEET_Q_STATS_INTERVAL_SECONDS`).
pub const STATS_INTERVAL: Duration = Duration::from_secs(15);
/// How old a finish must be before shared statistics count it (`fleet-q serve`
/// uses `FLEET_Q_SNOWFLAKE_CONNECTION_TIMEOUT`).
pub const STATS_LAG: Duration = Duration::from_secs(60);
/// Handler timeout unless the step sets one (`FLEET_Q_STEP_TIMEOUT_SECONDS`).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// Time running steps get on shutdown (`FLEET_Q_SHUTDOWN_GRACE_SECONDS`).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// Finished steps are pruned after this (`FLEET_Q_RETENTION_SECONDS`).
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Rows per prune chunk (`FLEET_Q_PRUNE_BATCH_SIZE`).
pub const PRUNE_BATCH: u32 = 500;
/// Longest pause between prune passes (`FLEET_Q_PRUNE_INTERVAL_SECONDS`).
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(10);
/// How often the leader re-reads the schedules when none is due sooner
/// (`FLEET_Q_SCHEDULE_CHECK_SECONDS`).
pub const SCHEDULE_CHECK: Duration = Duration::from_secs(10);
/// Store call attempts on transient errors (`FLEET_Q_DEFAULT_MAX_ATTEMPTS`).
pub const STORE_MAX_ATTEMPTS: u32 = 5;
/// No store call starts a retry once this long has passed since its first
/// attempt began (`FLEET_Q_DEFAULT_RETRY_BUDGET_SECONDS`).
pub const STORE_RETRY_BUDGET: Duration = Duration::from_secs(30);
/// First retry delay (`FLEET_Q_DEFAULT_BASE_DELAY_MS`).
pub const BASE_DELAY: Duration = Duration::from_millis(100);
/// Cap on retry delays (`FLEET_Q_DEFAULT_MAX_DELAY_MS`).
pub const MAX_DELAY: Duration = Duration::from_secs(30);
