//! Request and response bodies: every 2xx body is one of these typed structs,
//! so `/openapi.json` describes each by schema.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{web, HttpRequest};
use chrono::{DateTime, Utc};
use fleet_q_actors::{NewStep, RunAt, Step, StepSpec, ValidationErrors};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{truncate, ApiError};

/// `POST /submit` body, and each element of a batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// Step type (required; selects the handler).
    #[serde(rename = "type")]
    #[schema(example = "email")]
    pub step_type: String,
    /// Handler arguments (a JSON object).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub args: Option<Value>,
    /// Client metadata (a JSON object), returned as given.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// −1000 … 1000, default 0; higher runs first.
    #[serde(default)]
    pub priority: Option<i64>,
    /// 0 … 10, default 3.
    #[serde(default)]
    pub max_retries: Option<i64>,
    /// Run no earlier than this many seconds from now.
    #[serde(default)]
    pub delay_seconds: Option<f64>,
    /// Run no earlier than this instant (RFC 3339).
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// Client dedupe key: a repeated key returns the original step.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Handler timeout for this step, in seconds.
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
    /// The queue (1-64 of `A-Z a-z 0-9 . _ -`; default `default`). A queue
    /// that does not exist yet is created with the defaults.
    #[serde(default)]
    pub queue: Option<String>,
}

fn secs(
    field: &str,
    v: f64,
    errors: &mut Vec<fleet_q_actors::ValidationError>,
) -> Option<Duration> {
    if v.is_finite() && (0.0..=10.0 * 366.0 * 86_400.0).contains(&v) {
        Some(Duration::from_secs_f64(v))
    } else {
        errors.push(fleet_q_actors::ValidationError::new(
            field,
            "must be a non-negative number of seconds",
        ));
        None
    }
}

impl SubmitRequest {
    /// Validates into a step, listing every problem.
    pub fn into_step(self) -> Result<NewStep, ValidationErrors> {
        use fleet_q_actors::ValidationError as E;
        let mut errors = Vec::new();
        let priority = self.priority.map(|p| {
            i32::try_from(p).unwrap_or_else(|_| {
                errors.push(E::new("priority", "must be between -1000 and 1000"));
                0
            })
        });
        let max_retries = self.max_retries.map(|m| {
            u32::try_from(m).unwrap_or_else(|_| {
                errors.push(E::new("max_retries", "must be between 0 and 10"));
                0
            })
        });
        let run_at = match (self.delay_seconds, self.run_at) {
            (Some(_), Some(_)) => {
                errors.push(E::new("run_at", "give delay_seconds or run_at, not both"));
                RunAt::Now
            }
            (Some(d), None) => {
                secs("delay_seconds", d, &mut errors).map_or(RunAt::Now, RunAt::After)
            }
            (None, Some(at)) => RunAt::At(at),
            (None, None) => RunAt::Now,
        };
        let timeout = self.timeout_seconds.and_then(|t| {
            if t.is_finite() && t < 0.001 {
                errors.push(E::new(
                    "timeout_seconds",
                    "must be at least 0.001 (1 ms); leave it out for the default",
                ));
                return None;
            }
            secs("timeout_seconds", t, &mut errors)
        });
        let spec = StepSpec {
            step_type: self.step_type,
            args: self.args,
            metadata: self.metadata,
            priority,
            max_retries,
            run_at,
            idempotency_key: self.idempotency_key,
            timeout,
            queue: self.queue,
        };
        match NewStep::new(spec) {
            Ok(s) if errors.is_empty() => Ok(s),
            Ok(_) => Err(ValidationErrors(errors)),
            Err(mut e) => {
                errors.append(&mut e.0);
                Err(ValidationErrors(errors))
            }
        }
    }
}

/// `POST /submit` answer.
#[derive(Serialize, ToSchema)]
pub struct SubmitResponse {
    /// The step's id (the original one for a repeated idempotency key).
    pub step_id: String,
    /// Always `submitted`.
    pub status: String,
    /// What happened.
    pub message: String,
}

/// `POST /submit/batch` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 … 1000 steps, validated all before any is stored.
    pub steps: Vec<SubmitRequest>,
}

/// `POST /submit/batch` answer.
#[derive(Serialize, ToSchema)]
pub struct BatchResponse {
    /// Ids in request order.
    pub step_ids: Vec<String>,
    /// Per step: false when an existing step with the same idempotency key was returned.
    pub created: Vec<bool>,
    /// Always `submitted`.
    pub status: String,
    /// What happened.
    pub message: String,
}

/// A step as `GET /status/{step_id}` shows it.
#[derive(Serialize, ToSchema)]
pub struct StepView {
    /// Id.
    pub step_id: String,
    /// `pending`, `claimed`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// The pod holding (or that last held) the step.
    pub claimed_by: Option<String>,
    /// Last change (store time).
    pub last_update_ts: DateTime<Utc>,
    /// Retries spent.
    pub retry_count: u32,
    /// Priority.
    pub priority: i32,
    /// Accepted at (store time).
    pub created_ts: DateTime<Utc>,
    /// Retries allowed.
    pub max_retries: u32,
    /// `{type, args, metadata}`.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Fencing number (+1 on every claim).
    pub attempt: u32,
    /// Not claimable before.
    pub run_at: DateTime<Utc>,
    /// The last error.
    pub last_error: Option<String>,
    /// The handler's result once completed.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// The client's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Per-step timeout in seconds, if set.
    pub timeout_seconds: Option<f64>,
    /// The queue.
    pub queue: String,
    /// When its latest claim started it (store time); null until claimed.
    pub started_ts: Option<DateTime<Utc>>,
}

impl From<Step> for StepView {
    fn from(s: Step) -> Self {
        StepView {
            step_id: s.step_id.to_string(),
            status: s.status.to_string(),
            claimed_by: s.claimed_by,
            last_update_ts: s.last_update_ts,
            retry_count: s.retry_count,
            priority: s.priority,
            created_ts: s.created_ts,
            max_retries: s.max_retries,
            payload: serde_json::to_value(&s.payload).unwrap_or(Value::Null),
            attempt: s.attempt,
            run_at: s.run_at,
            last_error: s.last_error,
            result: s.result,
            idempotency_key: s.idempotency_key,
            timeout_seconds: s.timeout_ms.map(|t| t as f64 / 1000.0),
            queue: s.queue,
            started_ts: s.started_ts,
        }
    }
}

/// `POST /admin/recovery/run` body.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RecoveryRequest {
    /// Run now even if a cycle ran recently (cycles are idempotent, so this only
    /// skips waiting for the interval).
    #[serde(default)]
    pub force: bool,
    /// Compute and report without writing to the store.
    #[serde(default)]
    pub dry_run: bool,
}

/// Paging for `GET /admin/failed` and `GET /admin/recovery`. Parsed inside the
/// handlers, after the admin check: a request without credentials is 401 whatever
/// its query string holds.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Page size: 1 … 1000 on every paged route (0 is an error, as is anything
    /// above 1000); the default depends on the route.
    pub limit: Option<u32>,
    /// The last step id of the previous page.
    pub after: Option<String>,
}

impl Page {
    pub(crate) fn of(req: &HttpRequest) -> Result<Page, ApiError> {
        web::Query::<Page>::from_query(req.query_string())
            .map(web::Query::into_inner)
            .map_err(|e| {
                ApiError::validation(
                    format!("invalid query string: {}", truncate(&e.to_string(), 200)),
                    req,
                )
            })
    }

    pub(crate) fn limit(&self, default: u32, req: &HttpRequest) -> Result<u32, ApiError> {
        let limit = self.limit.unwrap_or(default);
        if (1..=1000).contains(&limit) {
            Ok(limit)
        } else {
            Err(ApiError::validation(
                "limit must be between 1 and 1000",
                req,
            ))
        }
    }
}

/// `POST /submit/batch` is capped at this many steps.
pub const MAX_BATCH: usize = 1000;

/// `GET /health`: liveness, from memory.
#[derive(Serialize, ToSchema)]
pub struct HealthResponse {
    /// This pod.
    pub pod_id: String,
    /// `healthy`, or `unhealthy` once the restart budget is exhausted.
    pub status: &'static str,
    /// Since start.
    pub uptime_seconds: f64,
    /// Steps running on this pod now.
    pub current_capacity: u32,
    /// `FLEET_Q_MAX_PARALLELISM`.
    pub max_capacity: u32,
    /// Whether this pod leads.
    pub is_leader: bool,
    /// The binary's version.
    pub version: &'static str,
    /// Whether the last heartbeats got through.
    pub heartbeat_healthy: bool,
    /// Whether the pod is quiet: the fleet was idle, and it talks to the store
    /// only at wakes (`FLEET_Q_IDLE_POLL_MAX_SECONDS`).
    pub quiet: bool,
    /// Draining after a stop signal.
    pub shutting_down: bool,
    /// Results this pod ran but could not record (its lease had moved on).
    pub fenced_results: u64,
    /// Bumped each time the pod re-registers after being declared dead.
    pub generation: u32,
    /// The leader's recovery cycles.
    pub recovery: RecoveryHealth,
    /// Each actor's state and restart count, by name.
    #[schema(value_type = Object)]
    pub actors: serde_json::Map<String, Value>,
}

/// Whether this pod's recovery cycles are failing (leader only).
#[derive(Serialize, ToSchema)]
pub struct RecoveryHealth {
    /// `consecutive_failures` reached the threshold.
    pub failing: bool,
    /// Failed cycles in a row.
    pub consecutive_failures: u32,
    /// The last failure's message (cut to 200 characters).
    pub last_error: Option<String>,
}

/// `GET /ready`.
#[derive(Serialize, ToSchema)]
pub struct ReadyResponse {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    /// Why not, when not ready.
    pub reason: Option<String>,
    /// Age of the last successful store write.
    pub store_last_write_ok_seconds_ago: Option<f64>,
    /// The leader's recovery cycles.
    pub recovery: RecoveryHealth,
    /// This pod.
    pub pod_id: String,
}

/// `GET /idempotency/{step_id}`.
#[derive(Serialize, ToSchema)]
pub struct IdempotencyResponse {
    /// The step.
    pub step_id: String,
    /// The key handlers receive: the client's, or one derived from the id.
    pub idempotency_key: String,
}

/// A step an admin action changed (`DELETE /steps/{id}`, `POST
/// /admin/steps/{id}/retry`).
#[derive(Serialize, ToSchema)]
pub struct StepChanged {
    /// The step.
    pub step_id: String,
    /// Its status now.
    pub status: &'static str,
    /// What happened.
    pub message: &'static str,
}

/// `GET /admin/leader`.
#[derive(Serialize, ToSchema)]
pub struct LeaderResponse {
    /// The eldest live pod, if any.
    pub current_leader: Option<String>,
    /// Its birth time.
    pub leader_birth_ts: Option<DateTime<Utc>>,
    /// Pods with a fresh heartbeat.
    pub active_pods: usize,
    /// When this pod last checked who leads.
    pub last_election_check: DateTime<Utc>,
    /// This pod.
    pub this_pod: String,
    /// Whether this pod believes it leads.
    pub this_pod_is_leader: bool,
    /// The pods eligible to lead.
    pub election_details: ElectionDetails,
}

/// The pods eligible to lead.
#[derive(Serialize, ToSchema)]
pub struct ElectionDetails {
    /// Live pods, each with whether it leads.
    pub eligible_pods: Vec<EligiblePod>,
}

/// One live pod, as the election sees it.
#[derive(Serialize, ToSchema)]
pub struct EligiblePod {
    /// Its id.
    pub pod_id: String,
    /// Its birth (the eldest leads).
    pub birth_ts: DateTime<Utc>,
    /// Its last heartbeat (store time).
    pub last_heartbeat_ts: DateTime<Utc>,
    /// Whether it is the leader.
    pub is_leader: bool,
}

/// Step counts by status.
#[derive(Serialize, ToSchema)]
pub struct Counts {
    /// Waiting.
    pub pending: u64,
    /// Running.
    pub claimed: u64,
    /// Done.
    pub completed: u64,
    /// Failed terminally.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl From<&fleet_q_actors::StatusCounts> for Counts {
    fn from(c: &fleet_q_actors::StatusCounts) -> Self {
        Counts {
            pending: c.pending,
            claimed: c.claimed,
            completed: c.completed,
            failed: c.failed,
            cancelled: c.cancelled,
        }
    }
}

/// One pod's capacity.
#[derive(Serialize, ToSchema)]
pub struct PodCapacity {
    /// Steps running.
    pub current: u32,
    /// Most it runs at once.
    pub max: u32,
}

/// `GET /admin/queue`: live counts read through the live index, finished counts
/// from the totals (README, Statistics).
#[derive(Serialize, ToSchema)]
pub struct QueueResponse {
    /// Pending steps.
    pub pending_steps: u64,
    /// Claimed (running) steps.
    pub claimed_steps: u64,
    /// Completed steps held (see README, Statistics, for the window).
    pub completed_steps: u64,
    /// Failed steps held.
    pub failed_steps: u64,
    /// Cancelled steps held.
    pub cancelled_steps: u64,
    /// Pods with a fresh heartbeat.
    pub active_pods: usize,
    /// The eldest live pod.
    pub current_leader: Option<String>,
    /// Pending steps by priority.
    pub queue_depth_by_priority: BTreeMap<i32, u64>,
    /// Counts of the largest step types (at most 50).
    pub steps_by_type: BTreeMap<String, Counts>,
    /// Step types left out of `steps_by_type`.
    pub steps_by_type_omitted: usize,
    /// Capacity of each live pod.
    pub pod_capacity: BTreeMap<String, PodCapacity>,
    /// Age of the oldest runnable pending step.
    pub oldest_pending_age_seconds: Option<f64>,
    /// When these figures were read (store time).
    pub as_of: DateTime<Utc>,
}

/// `POST /admin/recovery/run`.
#[derive(Serialize, ToSchema)]
pub struct RecoveryRunResponse {
    /// `completed`.
    pub status: &'static str,
    /// What happened.
    pub message: &'static str,
    /// What the cycle found and did.
    #[schema(value_type = Object)]
    pub recovery_summary: fleet_q_actors::RecoverySummary,
}

/// `GET /admin/recovery`.
#[derive(Serialize, ToSchema)]
pub struct RecoveryCycles {
    /// Recent cycles, newest first.
    #[schema(value_type = Vec<Object>)]
    pub cycles: Vec<fleet_q_actors::RecoverySummary>,
}

/// `GET /admin/failed`: one page.
#[derive(Serialize, ToSchema)]
pub struct FailedPage {
    /// Failed steps in id order.
    pub steps: Vec<StepView>,
    /// Pass as `after` for the next page; absent on the last.
    pub next_after: Option<String>,
}

/// `POST /debug/*` (builds with fault injection only).
#[derive(Serialize, ToSchema)]
pub struct Injected {
    /// The actor, for actor faults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Always true.
    pub injected: bool,
}
