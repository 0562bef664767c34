//! The `Store` contract: the only surface through which fleet-q touches its database.
//!
//! Every backend (SQLite in `fleet-q`'s `storage::sqlite`, Snowflake later) implements
//! this trait, and every backend runs the same conformance suite
//! ([`crate::testkit`], feature `testkit`). Method names are noun-then-verb.
//!
//! # Rules every implementation keeps
//! - **Store time.** Every timestamp written or compared (`created_ts`, `run_at`,
//!   heartbeats, ages) comes from the store's clock, never a pod's; pods disagree
//!   about time, the store is the one clock they share.
//! - **Fencing.** Every transition out of `claimed` is conditioned on the [`Lease`]
//!   `(step_id, claimed_by, attempt)` and `status = 'claimed'`. A transition whose
//!   lease no longer matches changes nothing and is reported back as rejected, so a
//!   pod presumed dead can never overwrite work that has moved on.
//! - **Retries.** A retryable failure with retries left goes back to `pending` with
//!   `retry_count + 1` and `run_at = now + backoff`; otherwise the step is `failed`
//!   with its error kept. Exactly `max_retries` retries happen, no fewer.
//! - **Atomic claims.** Two claimers never get the same step for the same attempt.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::queue::{QueueInfo, QueueSettings};
use crate::records::{PodRecord, PodStatus, QueueStats};
use crate::schedule::{DueSchedules, Schedule, ScheduleAdvance, ScheduleSpec};
use crate::search::{BulkAction, SearchPage, SearchParams};
use crate::step::{NewStep, Step, StepId, StepStatus};

/// Whether retrying the same call later may succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Busy or locked database, network failure, timeout, server 5xx: retry later.
    Transient,
    /// Misconfiguration, missing objects, authentication, corrupt rows: retrying the
    /// same call will fail the same way.
    Fatal,
}

/// A failed store call, saying what was being attempted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("store {operation} failed ({kind:?}): {message}")]
pub struct StoreError {
    /// Transient or fatal.
    pub kind: StoreErrorKind,
    /// The store method that failed (e.g. `steps_claim`).
    pub operation: &'static str,
    /// What went wrong; never contains SQL text or secrets.
    pub message: String,
    /// The call may have taken effect though no answer came (a timeout, a
    /// dropped connection): a write must not be resent while its first copy may
    /// still run.
    pub outcome_unknown: bool,
}

impl StoreError {
    /// A transient failure of `operation`.
    pub fn transient(operation: &'static str, message: impl Into<String>) -> Self {
        StoreError {
            kind: StoreErrorKind::Transient,
            operation,
            message: message.into(),
            outcome_unknown: false,
        }
    }

    /// A fatal failure of `operation`.
    pub fn fatal(operation: &'static str, message: impl Into<String>) -> Self {
        StoreError {
            kind: StoreErrorKind::Fatal,
            operation,
            message: message.into(),
            outcome_unknown: false,
        }
    }

    /// True when the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        self.kind == StoreErrorKind::Transient
    }

    /// Marks that the call may have taken effect (see [`StoreError::outcome_unknown`]).
    pub fn with_unknown_outcome(mut self) -> Self {
        self.outcome_unknown = true;
        self
    }

    /// True when the call may have taken effect though it failed.
    pub fn outcome_unknown(&self) -> bool {
        self.outcome_unknown
    }
}

/// The fencing triple: which pod holds which attempt of a step.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    /// The step.
    pub step_id: StepId,
    /// The pod that claimed it.
    pub pod_id: String,
    /// The attempt it claimed.
    pub attempt: u32,
}

impl Lease {
    /// The lease a claimed step carries; `None` when the step is not claimed.
    pub fn of(step: &Step) -> Option<Lease> {
        match (&step.status, &step.claimed_by) {
            (StepStatus::Claimed, Some(pod)) => Some(Lease {
                step_id: step.step_id,
                pod_id: pod.clone(),
                attempt: step.attempt,
            }),
            _ => None,
        }
    }
}

/// How a run of a step ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Success with the handler's JSON result.
    Complete {
        /// Stored as the step's `result`.
        result: Value,
    },
    /// Failure. `retryable` failures go back to pending while retries remain.
    Fail {
        /// Kept as `last_error`.
        error: String,
        /// False for terminal errors (bad input, unknown type, 4xx).
        retryable: bool,
    },
}

/// One fenced finish.
#[derive(Clone, Debug, PartialEq)]
pub struct Finish {
    /// The lease the finishing pod holds.
    pub lease: Lease,
    /// What happened.
    pub outcome: Outcome,
}

/// Retry backoff: delay for retry *n* (0-based) is `min(max, base × 2ⁿ)`, reduced by
/// a random fraction of up to `jitter` of itself so that retries spread out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub base: Duration,
    /// Cap on any delay.
    pub max: Duration,
    /// 0.0 (none) … 1.0: fraction of the delay that may be removed at random.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(30_000),
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// Adds a line to `problems` when this backoff cannot be used (`what`
    /// names it). A zero base is allowed: retries then come at once.
    pub(crate) fn validate(&self, what: &str, problems: &mut Vec<String>) {
        if self.max < self.base {
            problems.push(format!(
                "{what}: max ({:?}) must be at least base ({:?})",
                self.max, self.base
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            problems.push(format!("{what}: jitter must be between 0 and 1"));
        }
    }

    /// The un-jittered delay before retry number `retry_count` (0-based).
    pub fn delay(&self, retry_count: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry_count.min(31));
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay with jitter applied, given a uniform random `u` in `[0, 1)`.
    pub fn jittered(&self, retry_count: u32, u: f64) -> Duration {
        let d = self.delay(retry_count);
        let cut = (self.jitter.clamp(0.0, 1.0) * u.clamp(0.0, 1.0) * d.as_secs_f64()).max(0.0);
        d.saturating_sub(Duration::from_secs_f64(cut))
    }
}

/// What happened to each entry of a fenced batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FencedReport {
    /// Steps changed, with the status each now has.
    pub applied: Vec<(StepId, StepStatus)>,
    /// Leases that no longer held: nothing was changed for them.
    pub rejected: Vec<Lease>,
}

/// One row of an insert: the id a client gets back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inserted {
    /// The new step's id, or the existing step's for a repeated idempotency key.
    pub step_id: StepId,
    /// False when an existing step with the same idempotency key was returned.
    pub created: bool,
}

/// Parameters of [`Store::steps_claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimParams {
    /// The claiming pod.
    pub pod_id: String,
    /// At most this many steps.
    pub limit: u32,
    /// Only from these queues (`None`: every queue). See [`crate::queue`] for
    /// what else a claim obeys.
    pub queues: Option<Vec<String>>,
}

/// Result of [`Store::steps_claim_paced`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Claimed {
    /// The steps claimed, as [`Store::steps_claim`] returns them.
    pub steps: Vec<Step>,
    /// When a rate-limited queue that ran dry in this claim next holds a token.
    pub next_token_in: Option<Duration>,
}

/// Parameters of [`Store::steps_finish`].
#[derive(Clone, Debug, PartialEq)]
pub struct FinishParams {
    /// The finishes; each fenced on its own lease.
    pub finishes: Vec<Finish>,
    /// Backoff for retryable failures.
    pub backoff: Backoff,
}

/// Parameters of [`Store::steps_requeue_orphaned`].
#[derive(Clone, Debug, PartialEq)]
pub struct RequeueParams {
    /// Leases of orphaned steps, as read by [`Store::steps_orphaned`].
    pub leases: Vec<Lease>,
    /// Why (kept as `last_error`).
    pub reason: String,
    /// Backoff for the requeue.
    pub backoff: Backoff,
}

/// Parameters of [`Store::steps_failed_list`] (keyset paging by step id).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageParams {
    /// Page size.
    pub limit: u32,
    /// Return steps with ids after this one (the last id of the previous page).
    pub after: Option<StepId>,
}

/// Parameters of [`Store::steps_prune`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PruneParams {
    /// Finished steps last updated longer ago than this (store time) are deleted.
    pub retention: Duration,
    /// At most this many per call, to keep transactions short.
    pub limit: u32,
}

/// Parameters of [`Store::stats_publish`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsParams {
    /// The publishing pod (the leader).
    pub pod_id: String,
    /// Finishes are counted once they are this old by store time, so that a
    /// finish committed late (a statement that waited for a lock) is never
    /// behind the watermark already passed.
    pub lag: Duration,
}

/// Parameters of [`Store::pod_heartbeat`].
#[derive(Clone, Debug, PartialEq)]
pub struct HeartbeatParams {
    /// The pod.
    pub pod_id: String,
    /// `Up` while running; `Down` on the final heartbeat of a graceful shutdown.
    pub status: PodStatus,
    /// Steps running now.
    pub capacity_in_use: u32,
    /// Steps it may run at once.
    pub max_capacity: u32,
    /// Free-form JSON (version, host).
    pub meta: Value,
    /// Identifies this process's run of `pod_id`. A heartbeat whose incarnation
    /// differs from the row's restarts the row's birth time, so claims the row's
    /// earlier incarnation made are orphans (see [`Store::steps_orphaned`]).
    pub incarnation: String,
    /// The pod's heartbeat interval, recorded in its row.
    pub heartbeat_interval: Option<Duration>,
    /// How long the pod may stay silent before it is presumed dead, recorded in its
    /// row: the leader judges each pod by its own declaration (`None`: by the
    /// leader's threshold).
    pub dead_after: Option<Duration>,
}

impl Default for HeartbeatParams {
    fn default() -> Self {
        HeartbeatParams {
            pod_id: String::new(),
            status: PodStatus::Up,
            capacity_in_use: 0,
            max_capacity: 1,
            meta: Value::Null,
            incarnation: String::new(),
            heartbeat_interval: None,
            dead_after: None,
        }
    }
}

/// Parameters of [`Store::pods_mark_down`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkDownParams {
    /// Candidates.
    pub pod_ids: Vec<String>,
    /// Only pods whose heartbeat is older than their own declared dead threshold
    /// (this one for rows that declare none), by store time at the moment of the
    /// write, are marked: a pod that heartbeated since it was judged dead is spared.
    /// A pod marked down reports no capacity in use.
    pub dead_threshold: Duration,
}

/// Parameters of [`Store::steps_orphaned`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrphanParams {
    /// Holders to treat as down though their rows say `up`: a dry run lists the
    /// steps of the pods it would mark down. Empty in a real cycle, which marks
    /// them down first.
    pub presumed_down: Vec<String>,
    /// At most this many steps.
    pub limit: u32,
}

/// A claim as [`Store::steps_held`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldStep {
    /// The lease.
    pub lease: Lease,
    /// When it was claimed (store time).
    pub claimed_at: DateTime<Utc>,
}

/// Result of [`Store::step_cancel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The step was pending and is now cancelled.
    Cancelled,
    /// No such step.
    NotFound,
    /// The step exists but is not pending; nothing changed.
    NotPending(StepStatus),
}

/// Result of [`Store::step_retry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOutcome {
    /// The step was failed and is pending again with a fresh retry budget.
    Requeued,
    /// No such step.
    NotFound,
    /// The step exists but is not failed; nothing changed.
    NotFailed(StepStatus),
}

/// The database behind a fleet of pods. See the module docs for the rules.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short backend name (`sqlite`, `snowflake`).
    fn backend(&self) -> &'static str;

    /// Creates tables and indexes if missing. Idempotent.
    async fn schema_init(&self) -> Result<(), StoreError>;

    /// The store's clock.
    async fn now(&self) -> Result<DateTime<Utc>, StoreError>;

    /// Inserts steps in one call, answering in input order. A step whose
    /// idempotency key already exists is not inserted; the existing id comes back.
    async fn steps_insert(&self, steps: Vec<NewStep>) -> Result<Vec<Inserted>, StoreError>;

    /// Atomically claims up to `limit` due steps (`run_at <= now`) in order
    /// `priority DESC, created_ts ASC`, setting `claimed_by` and `attempt + 1`.
    async fn steps_claim(&self, params: ClaimParams) -> Result<Vec<Step>, StoreError>;

    /// [`Store::steps_claim`], plus a pacing hint: `Some(d)` when a rate-limited
    /// queue's bucket ran dry in this claim (it may hold more due steps), `d`
    /// being how long until it holds a whole token again. The claimer claims
    /// again after `d` instead of its idle interval, so a rate-limited queue is
    /// served at its rate rather than at one burst per interval. Stores that
    /// cannot tell answer `None` (the default).
    async fn steps_claim_paced(&self, params: ClaimParams) -> Result<Claimed, StoreError> {
        Ok(Claimed {
            steps: self.steps_claim(params).await?,
            next_token_in: None,
        })
    }

    /// The idle probe of quiet mode (`crate::quiet`): whether any step is
    /// claimed (counted up to a small bound), whether a pending step in an
    /// unpaused queue is due now, the earliest `run_at` of those not yet due,
    /// and store time. Reads live rows only (pending and claimed), never
    /// history; every pod of an idle fleet sends one per wake.
    async fn steps_idle_probe(&self) -> Result<crate::quiet::IdleProbe, StoreError>;

    /// Completes, retries or fails claimed steps, each fenced on its lease.
    async fn steps_finish(&self, params: FinishParams) -> Result<FencedReport, StoreError>;

    /// Returns claimed steps to `pending` without spending a retry (graceful
    /// shutdown), each fenced on its lease.
    async fn steps_release(&self, leases: Vec<Lease>) -> Result<FencedReport, StoreError>;

    /// Cancels a pending step.
    async fn step_cancel(&self, step_id: StepId) -> Result<CancelOutcome, StoreError>;

    /// One step.
    async fn step_get(&self, step_id: StepId) -> Result<Option<Step>, StoreError>;

    /// Puts a failed step back to `pending` with `retry_count = 0`.
    async fn step_retry(&self, step_id: StepId) -> Result<RetryOutcome, StoreError>;

    /// Every queue with its settings and live counts, by name.
    async fn queues_list(&self) -> Result<Vec<QueueInfo>, StoreError>;

    /// Creates or replaces a queue's settings; returns them as stored.
    async fn queue_put(&self, settings: QueueSettings) -> Result<QueueSettings, StoreError>;

    /// Pauses or resumes a queue, leaving its other settings as they are (one
    /// write, so a concurrent change of its limits is never undone); a queue
    /// that does not exist yet is created with the defaults.
    async fn queue_pause(&self, name: &str, paused: bool) -> Result<(), StoreError>;

    /// Every schedule, ordered by name (at most
    /// [`crate::schedule::MAX_SCHEDULES`]; one read of `SCHEDULES`).
    async fn schedules_list(&self) -> Result<Vec<Schedule>, StoreError>;

    /// One schedule, by id or by name.
    async fn schedule_get(&self, id_or_name: &str) -> Result<Option<Schedule>, StoreError>;

    /// Creates a schedule, or replaces the spec of the one with the same name
    /// (its id, history and, unless its timing changed, `next_run_at` are
    /// kept; see [`crate::schedule::timing_changed`]). A new or re-timed
    /// schedule's `next_run_at` is its first tick after the store's now.
    /// Refuses to go past [`crate::schedule::MAX_SCHEDULES`].
    async fn schedule_put(&self, spec: ScheduleSpec) -> Result<Schedule, StoreError>;

    /// Deletes a schedule (by id or name); false when there was none. Steps it
    /// fired are kept.
    async fn schedule_delete(&self, id_or_name: &str) -> Result<bool, StoreError>;

    /// Pauses or resumes a schedule (by id or name). Resuming sets
    /// `next_run_at` to the first tick after the store's now: ticks while
    /// paused are not fired. `None` when there is no such schedule.
    async fn schedule_pause(
        &self,
        id_or_name: &str,
        paused: bool,
    ) -> Result<Option<Schedule>, StoreError>;

    /// The schedules due at `now` (the store's clock when `None`), and the
    /// earliest `next_run_at` of the others: one read of `SCHEDULES`.
    async fn schedules_due(&self, now: Option<DateTime<Utc>>) -> Result<DueSchedules, StoreError>;

    /// Records a fire: sets `next_run_at`, `recent` and `last_fired_at` and
    /// adds to the counts, only if `next_run_at` still equals
    /// `expected_next` (a compare-and-set). True when it did.
    async fn schedule_advance(&self, advance: ScheduleAdvance) -> Result<bool, StoreError>;

    /// Failed steps in id order, a page at a time.
    async fn steps_failed_list(&self, params: PageParams) -> Result<Vec<Step>, StoreError>;

    /// Steps matching a filter, newest first, examining at most
    /// `params.scan_limit` candidate rows (see [`crate::search`]).
    async fn steps_search(&self, params: SearchParams) -> Result<SearchPage, StoreError>;

    /// Applies `action` to each of `step_ids` that has the status it applies to
    /// ([`BulkAction::applies_to`]), each step atomically; the others are left
    /// as they are. Returns the ids changed.
    async fn steps_bulk(
        &self,
        action: BulkAction,
        step_ids: Vec<StepId>,
    ) -> Result<Vec<StepId>, StoreError>;

    /// Deletes finished (`completed`, `failed`, `cancelled`) steps past retention.
    /// Returns how many were deleted.
    async fn steps_prune(&self, params: PruneParams) -> Result<u64, StoreError>;

    /// Queue statistics.
    async fn queue_stats(&self) -> Result<QueueStats, StoreError>;

    /// Whether this backend serves statistics through one shared row that the
    /// leader computes ([`Store::stats_publish`]) and every pod reads
    /// ([`Store::stats_shared`]), instead of each pod computing them
    /// ([`Store::queue_stats`]). Backends where counting costs a warehouse query
    /// say yes.
    fn shares_stats(&self) -> bool {
        false
    }

    /// Leader only, on shared-stats backends: computes statistics (live counts,
    /// plus terminal counts advanced over the rows finished since the last
    /// publish) and writes them to the shared row. Returns what it wrote.
    async fn stats_publish(&self, params: StatsParams) -> Result<QueueStats, StoreError> {
        let _ = params;
        self.queue_stats().await
    }

    /// The statistics last published to the shared row (`None` before the first).
    async fn stats_shared(&self) -> Result<Option<QueueStats>, StoreError> {
        Ok(None)
    }

    /// Upserts this pod's row. A new pod's `birth_ts` is set once and kept. A row
    /// already `down` stays down (a pod presumed dead must rejoin under a new id);
    /// the row is returned so the pod learns it.
    async fn pod_heartbeat(&self, params: HeartbeatParams) -> Result<PodRecord, StoreError>;

    /// Every pod row with its heartbeat age by store time.
    async fn pods_list(&self) -> Result<Vec<PodRecord>, StoreError>;

    /// Marks stale pods down (fenced on staleness at write time). Returns the ids
    /// actually marked.
    async fn pods_mark_down(&self, params: MarkDownParams) -> Result<Vec<String>, StoreError>;

    /// Claimed steps whose holder is marked down, unknown, or a later incarnation of
    /// the holder's id than the one that claimed them (claimed before the row's
    /// birth).
    ///
    /// Heartbeat age alone never makes an orphan: a pod that is merely late keeps
    /// its claims until [`Store::pods_mark_down`] (fenced on staleness at write
    /// time) marks it down. So whenever a pod's steps are requeued its row says
    /// `down`, its next heartbeat tells it so, and it stops and rejoins; a late but
    /// live pod is never left running steps that someone else also runs without
    /// learning it (the race this rule closes: a holder judged dead by age between
    /// the leader's mark-down and its orphan query).
    async fn steps_orphaned(&self, params: OrphanParams) -> Result<Vec<Step>, StoreError>;

    /// The claimed steps `pod_id` holds (at most `limit`, oldest claims first), and
    /// the store's time. A pod compares them with what it runs, to release claims
    /// whose answer it never got (self-reconciliation). Reads live rows only.
    async fn steps_held(
        &self,
        pod_id: &str,
        limit: u32,
    ) -> Result<(Vec<HeldStep>, DateTime<Utc>), StoreError>;

    /// Requeues (or, with no retries left, fails) orphaned steps, fenced on the
    /// leases read by [`Store::steps_orphaned`]: a second leader doing the same finds
    /// the leases gone and changes nothing. It spends a retry, exactly as a
    /// retryable handler failure does, so it shares that code path.
    async fn steps_requeue_orphaned(
        &self,
        params: RequeueParams,
    ) -> Result<FencedReport, StoreError> {
        let finishes = params
            .leases
            .into_iter()
            .map(|lease| Finish {
                lease,
                outcome: Outcome::Fail {
                    error: params.reason.clone(),
                    retryable: true,
                },
            })
            .collect();
        self.steps_finish(FinishParams {
            finishes,
            backoff: params.backoff,
        })
        .await
    }

    /// Statements sent to the database so far (for metrics and benchmarks).
    fn statement_count(&self) -> u64 {
        0
    }

    /// Statements sent so far by operation. Backends that cannot attribute them
    /// (the SQLite store commits many operations in one group) report `all`.
    fn statements_by_op(&self) -> Vec<(&'static str, u64)> {
        vec![("all", self.statement_count())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            jitter: 0.0,
        };
        let got: Vec<u128> = (0..6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(1000));
        assert_eq!(b.jittered(2, 0.99), Duration::from_millis(400));
    }

    #[test]
    fn jitter_removes_at_most_its_fraction() {
        let b = Backoff {
            base: Duration::from_millis(1000),
            max: Duration::from_secs(60),
            jitter: 0.5,
        };
        assert_eq!(b.jittered(0, 0.0), Duration::from_millis(1000));
        let d = b.jittered(0, 1.0);
        assert!(d >= Duration::from_millis(499) && d <= Duration::from_millis(500));
    }
}
