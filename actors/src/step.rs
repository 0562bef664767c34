//! Steps: the unit of work, its lifecycle and the validated form a submit takes.
//!
//! A [`NewStep`] can only be built through [`NewStep::new`], which checks every field
//! and reports every problem at once; the store therefore never sees unvalidated
//! input. A [`Step`] is what the store holds and hands back.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Longest accepted step type, in bytes.
pub const MAX_TYPE_BYTES: usize = 128;
/// Longest accepted idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;
/// Largest accepted serialized payload (`{type, args, metadata}`), in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Accepted priority range (higher runs first).
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -1000..=1000;
/// Accepted `max_retries` range (the seed's range).
pub const MAX_RETRIES_RANGE: std::ops::RangeInclusive<u32> = 0..=10;
/// Default number of retries after the first attempt.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// How far ahead a step may be scheduled.
pub const MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(366 * 24 * 3600);
/// Longest accepted per-step timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A step's identity: a UUIDv7, so ids are unique across pods and sort by creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StepId(Uuid);

impl StepId {
    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        StepId(Uuid::now_v7())
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The 16 big-endian bytes; they sort in creation order, like the text form.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// From the 16 bytes of [`StepId::as_bytes`].
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        StepId(Uuid::from_bytes(bytes))
    }

    /// The smallest id that could be minted at `ms` (Unix milliseconds): a
    /// UUIDv7 starts with its 48-bit big-endian timestamp.
    pub fn floor_at(ms: i64) -> Self {
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&ms.clamp(0, (1 << 48) - 1).to_be_bytes()[2..]);
        StepId::from_bytes(bytes)
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for StepId {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(StepId)
            .map_err(|_| ValidationError::new("step_id", "must be a UUID"))
    }
}

/// Where a step is in its lifecycle:
/// `pending → claimed → completed | pending (retry) | failed`, and `cancelled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// Waiting to be claimed (possibly not before `run_at`).
    Pending,
    /// Held by a pod that is running it.
    Claimed,
    /// Finished successfully.
    Completed,
    /// Finished unsuccessfully, with no retries left or a terminal error.
    Failed,
    /// Cancelled by a client while pending.
    Cancelled,
}

impl StepStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [StepStatus; 5] = [
        StepStatus::Pending,
        StepStatus::Claimed,
        StepStatus::Completed,
        StepStatus::Failed,
        StepStatus::Cancelled,
    ];

    /// The name stored in the database and shown by the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Claimed => "claimed",
            StepStatus::Completed => "completed",
            StepStatus::Failed => "failed",
            StepStatus::Cancelled => "cancelled",
        }
    }

    /// True for statuses a step never leaves on its own.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            StepStatus::Completed | StepStatus::Failed | StepStatus::Cancelled
        )
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StepStatus {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StepStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ValidationError::new("status", format!("unknown status {s:?}")))
    }
}

/// The client-visible body of a step, stored as one JSON document (the seed's
/// `payload` column): `{type, args, metadata}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// The step type; selects the handler.
    #[serde(rename = "type")]
    pub step_type: String,
    /// Handler arguments.
    pub args: Map<String, Value>,
    /// Free-form client metadata, returned as given.
    pub metadata: Map<String, Value>,
}

impl Payload {
    /// The stored JSON form.
    pub fn to_json(&self) -> String {
        // Serializing a struct of strings and JSON maps cannot fail.
        serde_json::to_string(self).expect("payload serializes")
    }
}

/// When a new step may first run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RunAt {
    /// As soon as possible.
    #[default]
    Now,
    /// This long after the store accepts it (measured by the store's clock).
    After(Duration),
    /// Not before this instant.
    At(DateTime<Utc>),
}

/// One problem with client input, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The offending field (e.g. `type`, `args`, `priority`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ValidationError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in one submission.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid step: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors(pub Vec<ValidationError>);

/// What a client asks for; unvalidated. Turn it into a [`NewStep`] with
/// [`NewStep::new`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepSpec {
    /// Step type (required, ≤ 128 bytes, printable).
    pub step_type: String,
    /// Handler arguments; must be a JSON object (absent means `{}`).
    pub args: Option<Value>,
    /// Client metadata; must be a JSON object (absent means `{}`).
    pub metadata: Option<Value>,
    /// −1000 … 1000, default 0.
    pub priority: Option<i32>,
    /// 0 … 10, default [`DEFAULT_MAX_RETRIES`].
    pub max_retries: Option<u32>,
    /// When it may first run.
    pub run_at: RunAt,
    /// Client dedupe key: a second submit with the same key returns the first step.
    pub idempotency_key: Option<String>,
    /// Per-step handler timeout; the pod's default when absent.
    pub timeout: Option<Duration>,
    /// The queue ([`crate::queue`]); [`crate::queue::DEFAULT_QUEUE`] when absent.
    pub queue: Option<String>,
}

/// A validated step, ready for the store. Its id is chosen here, so a client gets
/// ids back in submission order whether or not the store has written them yet.
#[derive(Clone, Debug, PartialEq)]
pub struct NewStep {
    step_id: StepId,
    payload: Payload,
    payload_json: String,
    priority: i32,
    max_retries: Option<u32>,
    run_at: RunAt,
    idempotency_key: Option<String>,
    timeout: Option<Duration>,
    queue: String,
}

fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

fn object_or_empty(
    field: &str,
    value: Option<Value>,
    errors: &mut Vec<ValidationError>,
) -> Map<String, Value> {
    match value {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            let kind = match other {
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Array(_) => "an array",
                _ => "not an object",
            };
            errors.push(ValidationError::new(
                field,
                format!("must be a JSON object, got {kind}"),
            ));
            Map::new()
        }
    }
}

impl NewStep {
    /// Validates `spec`, listing every problem at once.
    pub fn new(spec: StepSpec) -> Result<NewStep, ValidationErrors> {
        let mut errors = Vec::new();
        let t = spec.step_type;
        if t.is_empty() {
            errors.push(ValidationError::new("type", "must not be empty"));
        } else if t.len() > MAX_TYPE_BYTES {
            errors.push(ValidationError::new(
                "type",
                format!("must be at most {MAX_TYPE_BYTES} bytes, got {}", t.len()),
            ));
        } else if !printable(&t) || t.trim() != t {
            errors.push(ValidationError::new(
                "type",
                "must be printable text without control characters or surrounding spaces",
            ));
        }
        let args = object_or_empty("args", spec.args, &mut errors);
        let metadata = object_or_empty("metadata", spec.metadata, &mut errors);
        let priority = spec.priority.unwrap_or(0);
        if !PRIORITY_RANGE.contains(&priority) {
            errors.push(ValidationError::new(
                "priority",
                format!(
                    "must be between {} and {}, got {priority}",
                    PRIORITY_RANGE.start(),
                    PRIORITY_RANGE.end()
                ),
            ));
        }
        let max_retries = spec.max_retries;
        if let Some(max_retries) = max_retries.filter(|m| !MAX_RETRIES_RANGE.contains(m)) {
            errors.push(ValidationError::new(
                "max_retries",
                format!(
                    "must be between {} and {}, got {max_retries}",
                    MAX_RETRIES_RANGE.start(),
                    MAX_RETRIES_RANGE.end()
                ),
            ));
        }
        match spec.run_at {
            RunAt::Now => {}
            RunAt::After(d) if d > MAX_SCHEDULE_AHEAD => errors.push(ValidationError::new(
                "delay_seconds",
                "must be at most one year",
            )),
            RunAt::After(_) => {}
            RunAt::At(at) => {
                let limit = Utc::now()
                    + chrono::Duration::from_std(MAX_SCHEDULE_AHEAD).expect("fits in chrono");
                if at > limit {
                    errors.push(ValidationError::new(
                        "run_at",
                        "must be at most one year ahead",
                    ));
                }
            }
        }
        if let Some(key) = &spec.idempotency_key {
            if key.is_empty() {
                errors.push(ValidationError::new(
                    "idempotency_key",
                    "must not be empty when given",
                ));
            } else if key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
                errors.push(ValidationError::new(
                    "idempotency_key",
                    format!("must be at most {MAX_IDEMPOTENCY_KEY_BYTES} bytes"),
                ));
            } else if !printable(key) {
                errors.push(ValidationError::new(
                    "idempotency_key",
                    "must not contain control characters",
                ));
            }
        }
        let queue = spec
            .queue
            .clone()
            .unwrap_or_else(|| crate::queue::DEFAULT_QUEUE.to_string());
        if let Some(why) = crate::queue::name_problem(&queue) {
            errors.push(ValidationError::new("queue", why));
        }
        if let Some(timeout) = spec.timeout {
            if timeout.is_zero() || timeout > MAX_TIMEOUT {
                errors.push(ValidationError::new(
                    "timeout_seconds",
                    format!(
                        "must be more than 0 and at most {} seconds",
                        MAX_TIMEOUT.as_secs()
                    ),
                ));
            }
        }
        let payload = Payload {
            step_type: t,
            args,
            metadata,
        };
        let payload_json = payload.to_json();
        if payload_json.len() > MAX_PAYLOAD_BYTES {
            errors.push(ValidationError::new(
                "payload",
                format!(
                    "serialized type, args and metadata must be at most {MAX_PAYLOAD_BYTES} bytes, got {}",
                    payload_json.len()
                ),
            ));
        }
        if !errors.is_empty() {
            return Err(ValidationErrors(errors));
        }
        Ok(NewStep {
            step_id: StepId::generate(),
            payload,
            payload_json,
            priority,
            max_retries,
            run_at: spec.run_at,
            idempotency_key: spec.idempotency_key,
            timeout: spec.timeout,
            queue,
        })
    }

    /// The id this step will have.
    pub fn step_id(&self) -> StepId {
        self.step_id
    }
    /// The payload.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }
    /// The payload as the JSON text that is stored.
    pub fn payload_json(&self) -> &str {
        &self.payload_json
    }
    /// Priority (higher first).
    pub fn priority(&self) -> i32 {
        self.priority
    }
    /// Retries allowed after the first attempt, as submitted (`None`: the
    /// queue's default, else [`DEFAULT_MAX_RETRIES`]; the store resolves it).
    pub fn max_retries(&self) -> Option<u32> {
        self.max_retries
    }
    /// When it may first run.
    pub fn run_at(&self) -> RunAt {
        self.run_at
    }
    /// Client dedupe key.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }
    /// The queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }
    /// Per-step timeout.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

/// A step as the store holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Identity.
    pub step_id: StepId,
    /// Lifecycle status.
    pub status: StepStatus,
    /// The pod holding (or that last held) the step.
    pub claimed_by: Option<String>,
    /// Last change, by the store's clock.
    pub last_update_ts: DateTime<Utc>,
    /// `{type, args, metadata}`.
    pub payload: Payload,
    /// Retries spent so far.
    pub retry_count: u32,
    /// Higher runs first.
    pub priority: i32,
    /// Accepted at, by the store's clock.
    pub created_ts: DateTime<Utc>,
    /// Retries allowed after the first attempt.
    pub max_retries: u32,
    /// Fencing number: +1 on every claim.
    pub attempt: u32,
    /// Not claimable before this instant.
    pub run_at: DateTime<Utc>,
    /// Client dedupe key, if one was given.
    pub idempotency_key: Option<String>,
    /// The last handler or recovery error.
    pub last_error: Option<String>,
    /// The handler's JSON result once completed.
    pub result: Option<Value>,
    /// Per-step handler timeout, if the step set one.
    pub timeout_ms: Option<u64>,
    /// The queue.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// When its latest claim started it, by the store's clock (`None`: never
    /// claimed).
    #[serde(default)]
    pub started_ts: Option<DateTime<Utc>>,
}

fn default_queue() -> String {
    crate::queue::DEFAULT_QUEUE.to_string()
}

impl Step {
    /// The step type (from the payload).
    pub fn step_type(&self) -> &str {
        &self.payload.step_type
    }

    /// The key handlers receive: stable across every attempt of this step. The
    /// client's idempotency key when it gave one, else one derived from the step id.
    pub fn handler_idempotency_key(&self) -> String {
        match &self.idempotency_key {
            Some(k) => k.clone(),
            None => format!("fleet-q:{}", self.step_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(t: &str) -> StepSpec {
        StepSpec {
            step_type: t.into(),
            ..Default::default()
        }
    }

    fn fields(r: Result<NewStep, ValidationErrors>) -> Vec<String> {
        r.unwrap_err().0.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn accepts_a_minimal_step_with_defaults() {
        let s = NewStep::new(spec("noop")).unwrap();
        assert_eq!(s.priority(), 0);
        assert_eq!(s.max_retries(), None);
        assert_eq!(
            s.payload_json(),
            r#"{"type":"noop","args":{},"metadata":{}}"#
        );
    }

    #[test]
    fn rejects_bad_types() {
        assert_eq!(fields(NewStep::new(spec(""))), ["type"]);
        assert_eq!(fields(NewStep::new(spec(&"x".repeat(129)))), ["type"]);
        assert!(NewStep::new(spec(&"x".repeat(128))).is_ok());
        assert_eq!(fields(NewStep::new(spec("a\nb"))), ["type"]);
        assert_eq!(fields(NewStep::new(spec(" a"))), ["type"]);
    }

    #[test]
    fn lists_every_problem_at_once() {
        let s = StepSpec {
            step_type: String::new(),
            args: Some(json!([1])),
            metadata: Some(json!("m")),
            priority: Some(1001),
            max_retries: Some(11),
            run_at: RunAt::After(Duration::from_secs(400 * 24 * 3600)),
            idempotency_key: Some(String::new()),
            timeout: Some(Duration::ZERO),
            queue: Some("bad queue".into()),
        };
        assert_eq!(
            fields(NewStep::new(s)),
            [
                "type",
                "args",
                "metadata",
                "priority",
                "max_retries",
                "delay_seconds",
                "idempotency_key",
                "queue",
                "timeout_seconds"
            ]
        );
    }

    #[test]
    fn range_edges() {
        for p in [-1000, 1000] {
            let mut s = spec("t");
            s.priority = Some(p);
            assert!(NewStep::new(s).is_ok());
        }
        let mut s = spec("t");
        s.priority = Some(-1001);
        assert_eq!(fields(NewStep::new(s)), ["priority"]);
        let mut s = spec("t");
        s.max_retries = Some(0);
        assert!(NewStep::new(s).is_ok());
    }

    #[test]
    fn run_at_more_than_a_year_ahead_is_rejected() {
        let mut s = spec("t");
        s.run_at = RunAt::At(Utc::now() + chrono::Duration::days(400));
        assert_eq!(fields(NewStep::new(s)), ["run_at"]);
        let mut s = spec("t");
        s.run_at = RunAt::At(Utc::now() + chrono::Duration::days(30));
        assert!(NewStep::new(s).is_ok());
    }

    #[test]
    fn payload_limit_is_enforced() {
        let mut s = spec("t");
        s.args = Some(json!({ "blob": "x".repeat(MAX_PAYLOAD_BYTES) }));
        assert_eq!(fields(NewStep::new(s)), ["payload"]);
        let mut s = spec("t");
        s.args = Some(json!({ "blob": "x".repeat(MAX_PAYLOAD_BYTES - 100) }));
        assert!(NewStep::new(s).is_ok());
    }

    #[test]
    fn ids_are_time_ordered_and_parse_back() {
        let a = StepId::generate();
        let b = StepId::generate();
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
        assert_eq!(a.to_string().parse::<StepId>().unwrap(), a);
        assert!("nope".parse::<StepId>().is_err());
    }

    #[test]
    fn status_names_round_trip() {
        for s in StepStatus::ALL {
            assert_eq!(s.as_str().parse::<StepStatus>().unwrap(), s);
        }
        assert!("done".parse::<StepStatus>().is_err());
    }
}
