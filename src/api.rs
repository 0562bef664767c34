//! The HTTP API (actix-web).
//!
//! - Every error is JSON `{detail, error_type, timestamp, path}` with the seed's
//!   error types; no error body carries SQL, a backtrace or a secret. Wrong methods
//!   answer 405 with the same body, and a panicking handler answers 500 without
//!   taking the worker down.
//! - Liveness (`/health`) is answered from memory and never touches the database.
//!   Readiness (`/ready`) and queue statistics use what the pod already knows or a
//!   short-lived cache, so probes and scrapes have a bounded cost.
//! - Admin routes (`/admin/*`, `DELETE /steps/{id}`) require
//!   `Authorization: Bearer <FLEET_Q_ADMIN_TOKEN>` when a token is configured.
//! - `/openapi.json` is generated from these handlers and types (utoipa).

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use chrono::{DateTime, Utc};
use fleet_q_actors::actors::recovery::RecoveryError;
use fleet_q_actors::metrics;
use fleet_q_actors::{
    eldest_live_pod, CancelOutcome, NewStep, PageParams, Pod, PodRecord, QueueStats,
    RecoverySummary, RetryOutcome, RunAt, Step, StepId, StepSpec, StoreError, ValidationErrors,
};
use futures_util::FutureExt;
use prometheus::{HistogramVec, IntCounterVec, IntGauge, IntGaugeVec};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{OpenApi, ToSchema};

use crate::config::Secret;

/// Most steps in one `POST /submit/batch`.
pub const MAX_BATCH: usize = 1000;

static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "fleet_q_http_requests_total",
        "HTTP requests by route pattern, method and status.",
        &["route", "method", "status"],
    )
});
static HTTP_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    metrics::histogram_vec(
        "fleet_q_http_request_duration_seconds",
        "HTTP request latency by route pattern.",
        &["route"],
        metrics::latency_buckets(),
    )
});
static PENDING: LazyLock<IntGauge> = LazyLock::new(|| {
    metrics::gauge(
        "fleet_q_pending_steps",
        "Steps pending in the whole queue (the seed's HPA metric).",
    )
});
static QUEUE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics::gauge_vec(
        "fleet_q_queue_steps",
        "Steps in the whole queue by status.",
        &["status"],
    )
});
static OLDEST: LazyLock<IntGauge> = LazyLock::new(|| {
    metrics::gauge(
        "fleet_q_queue_oldest_pending_age_seconds",
        "How long the oldest due pending step has waited (0 when none).",
    )
});
static ACTIVE_PODS: LazyLock<IntGauge> =
    LazyLock::new(|| metrics::gauge("fleet_q_active_pods", "Live pods in the fleet."));
static CANCELLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "fleet_q_steps_cancelled_total",
        "Steps cancelled through this process, by type.",
        &["type"],
    )
});
static OPEN_CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    metrics::gauge(
        "fleet_q_http_open_connections",
        "HTTP connections open on this pod now (requests past FLEET_Q_HTTP_MAX_CONNECTIONS are refused).",
    )
});
static STATEMENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "fleet_q_store_statements_total",
        "SQL statements this process sent to the store, by operation (`all` where the backend groups operations).",
        &["op"],
    )
});

fn register_metrics() {
    LazyLock::force(&HTTP_REQUESTS);
    LazyLock::force(&HTTP_LATENCY);
    LazyLock::force(&PENDING);
    LazyLock::force(&QUEUE);
    LazyLock::force(&OLDEST);
    LazyLock::force(&ACTIVE_PODS);
    LazyLock::force(&CANCELLED);
    LazyLock::force(&STATEMENTS);
    LazyLock::force(&OPEN_CONNECTIONS);
}

/// How long queue statistics are reused before the store is asked again.
const STATS_TTL: Duration = Duration::from_secs(2);

struct Snapshot {
    at: Instant,
    stats: QueueStats,
    pods: Vec<PodRecord>,
    now: DateTime<Utc>,
}

/// What the handlers share.
pub struct AppState {
    /// The running pod.
    pub pod: Arc<Pod>,
    /// Admin bearer token, when configured.
    pub admin_token: Option<Secret>,
    /// Liveness threshold (for active pod counts).
    pub dead_pod_threshold: Duration,
    /// The store must have answered within this for `/ready`.
    pub ready_window: Duration,
    snapshot: tokio::sync::Mutex<Option<Arc<Snapshot>>>,
    statements_seen: Mutex<std::collections::HashMap<&'static str, u64>>,
}

impl AppState {
    /// State for the routes of `pod`.
    pub fn new(
        pod: Arc<Pod>,
        admin_token: Option<Secret>,
        dead_pod_threshold: Duration,
        ready_window: Duration,
    ) -> Self {
        register_metrics();
        AppState {
            pod,
            admin_token,
            dead_pod_threshold,
            ready_window,
            snapshot: tokio::sync::Mutex::new(None),
            statements_seen: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Queue statistics and pods, reused for [`STATS_TTL`]; one refresh at a time.
    async fn snapshot(&self) -> Result<Arc<Snapshot>, StoreError> {
        let mut slot = self.snapshot.lock().await;
        if let Some(s) = slot.as_ref() {
            if s.at.elapsed() < STATS_TTL {
                return Ok(s.clone());
            }
        }
        let stats = self.pod.queue_stats().await?;
        let (pods, now) = self.pod.pods_recent().await?;
        let snap = Arc::new(Snapshot {
            at: Instant::now(),
            stats,
            pods,
            now,
        });
        *slot = Some(snap.clone());
        Ok(snap)
    }
}

/// The seed's error types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// Bad input (400).
    ValidationError,
    /// No such resource or route (404; 405 for a wrong method).
    NotFound,
    /// Wrong credentials, or not the leader (403).
    PermissionDenied,
    /// No credentials (401).
    Unauthorized,
    /// State conflict (409).
    Conflict,
    /// Body too large (413).
    PayloadTooLarge,
    /// Not JSON (415).
    UnsupportedMediaType,
    /// A fault in this pod (500).
    InternalError,
    /// The store is unavailable or refused (503).
    DatabaseError,
}

impl ErrorType {
    fn status(self) -> StatusCode {
        match self {
            ErrorType::ValidationError => StatusCode::BAD_REQUEST,
            ErrorType::NotFound => StatusCode::NOT_FOUND,
            ErrorType::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorType::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorType::Conflict => StatusCode::CONFLICT,
            ErrorType::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorType::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorType::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorType::DatabaseError => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The error body of every failed request.
#[derive(Debug, Clone, Serialize, ToSchema, thiserror::Error)]
#[error("{error_type:?}: {detail}")]
pub struct ApiError {
    /// What went wrong, for a person.
    pub detail: String,
    /// Machine-readable kind.
    pub error_type: ErrorType,
    /// When.
    pub timestamp: DateTime<Utc>,
    /// The request path.
    pub path: String,
    #[serde(skip)]
    status: Option<StatusCode>,
    /// Close the connection after answering (timeouts, refusals).
    #[serde(skip)]
    close: bool,
}

impl ApiError {
    /// An error of `kind` for `req`.
    pub fn new(kind: ErrorType, detail: impl Into<String>, req: &HttpRequest) -> Self {
        Self::for_path(kind, detail, req.path())
    }

    /// An error of `kind` for a request to `path`.
    pub fn for_path(kind: ErrorType, detail: impl Into<String>, path: &str) -> Self {
        ApiError {
            detail: detail.into(),
            error_type: kind,
            timestamp: Utc::now(),
            // A client's path can be tens of kilobytes: quote only its start.
            path: truncate(path, 2 * QUOTE_MAX),
            status: None,
            close: false,
        }
    }

    fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// A store failure: 503 `database_error`; details stay in the logs.
    pub fn store(e: &StoreError, req: &HttpRequest) -> Self {
        tracing::warn!(error = %e, path = req.path(), "store error answering a request");
        let detail = if e.is_transient() {
            format!("the database is unavailable ({}); retry later", e.operation)
        } else {
            format!(
                "the database refused the {} call; see the pod's logs",
                e.operation
            )
        };
        ApiError::new(ErrorType::DatabaseError, detail, req)
    }

    fn validation(detail: impl Into<String>, req: &HttpRequest) -> Self {
        ApiError::new(ErrorType::ValidationError, detail, req)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status.unwrap_or(self.error_type.status())
    }
    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status_code());
        if self.error_type == ErrorType::Unauthorized {
            r.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if self.close {
            r.force_close();
        }
        r.json(self)
    }
}

type ApiResult = Result<HttpResponse, ApiError>;

fn require_admin(req: &HttpRequest, st: &AppState) -> Result<(), ApiError> {
    let Some(token) = &st.admin_token else {
        return Ok(());
    };
    let Some(given) = req.headers().get(header::AUTHORIZATION) else {
        return Err(ApiError::new(
            ErrorType::Unauthorized,
            "this route requires Authorization: Bearer <FLEET_Q_ADMIN_TOKEN>",
            req,
        ));
    };
    // The scheme is case-insensitive (RFC 9110 §11.1): `Bearer`, `bearer`, `BEARER`.
    let given = given.as_bytes();
    let presented = match given.iter().position(|b| *b == b' ') {
        Some(i) if given[..i].eq_ignore_ascii_case(b"bearer") => {
            let rest = &given[i..];
            &rest[rest.iter().take_while(|b| **b == b' ').count()..]
        }
        _ => b"",
    };
    use subtle::ConstantTimeEq;
    let want = token.expose().as_bytes();
    // Constant time in the token's content; the length check leaks only length.
    let ok = presented.len() == want.len() && bool::from(presented.ct_eq(want));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorType::PermissionDenied,
            "the admin token is not valid",
            req,
        ))
    }
}

/// The step named by a path segment: 400 for a malformed id, 404 when absent.
async fn fetch_step(raw: &str, st: &AppState, req: &HttpRequest) -> Result<Step, ApiError> {
    let id = parse_id(raw, req)?;
    st.pod
        .step(id)
        .await
        .map_err(|e| ApiError::store(&e, req))?
        .ok_or_else(|| ApiError::new(ErrorType::NotFound, format!("no step {id}"), req))
}

fn parse_id(raw: &str, req: &HttpRequest) -> Result<StepId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::validation(
            format!("step_id {:?} is not a UUID", truncate(raw, QUOTE_MAX)),
            req,
        )
    })
}

/// Most characters of a client's value an error body quotes.
pub const QUOTE_MAX: usize = 100;

// ---------------------------------------------------------------- schemas ----

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
    fn of(req: &HttpRequest) -> Result<Page, ApiError> {
        web::Query::<Page>::from_query(req.query_string())
            .map(web::Query::into_inner)
            .map_err(|e| {
                ApiError::validation(
                    format!("invalid query string: {}", truncate(&e.to_string(), 200)),
                    req,
                )
            })
    }

    fn limit(&self, default: u32, req: &HttpRequest) -> Result<u32, ApiError> {
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

// ---------------------------------------------------------------- handlers ---

/// Liveness, from memory: never touches the database.
#[utoipa::path(get, path = "/health", tag = "probes",
    responses((status = 200, description = "The pod is alive"), (status = 503, description = "The pod is failing (restart budget exhausted)")))]
async fn health(st: web::Data<AppState>) -> HttpResponse {
    let s = st.pod.state();
    let healthy = !s.budget_exhausted();
    let actors: serde_json::Map<String, Value> = s
        .actors()
        .into_iter()
        .map(|(name, a)| {
            (
                name.to_string(),
                serde_json::to_value(a).unwrap_or(Value::Null),
            )
        })
        .collect();
    let body = json!({
        "pod_id": s.pod_id(),
        "status": if healthy { "healthy" } else { "unhealthy" },
        "uptime_seconds": s.uptime().as_secs_f64(),
        "current_capacity": s.in_flight(),
        "max_capacity": s.max_capacity(),
        "is_leader": s.is_leader(),
        "version": env!("CARGO_PKG_VERSION"),
        "heartbeat_healthy": s.heartbeat_healthy(),
        "shutting_down": s.shutting_down(),
        "fenced_results": s.fenced_results(),
        "generation": s.generation(),
        "recovery": recovery_view(s),
        "actors": actors,
    });
    if healthy {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Readiness: a write to the store succeeded recently (heartbeats are writes),
/// none has failed since, and the pod is not shutting down. Reads do not count: a
/// store that answers reads but refuses writes (write lock held, read-only or full
/// disk, a deleted database file) leaves the pod unready until a write succeeds.
#[utoipa::path(get, path = "/ready", tag = "probes",
    responses((status = 200, description = "Ready for traffic"), (status = 503, description = "Not ready")))]
async fn ready(st: web::Data<AppState>) -> HttpResponse {
    let s = st.pod.state();
    let age = s.store_write_ok_age();
    let write_error = s.store_write_error();
    let (recovery_failures, _) = s.recovery_failures();
    let reason = if s.shutting_down() {
        Some("shutting down".to_string())
    } else if s.is_leader() && recovery_failures >= RECOVERY_FAILING_AFTER {
        Some(format!(
            "this pod leads and its last {recovery_failures} recovery cycles failed"
        ))
    } else if write_error.is_some() {
        Some("writes to the store are failing".to_string())
    } else if age.is_none_or(|a| a > st.ready_window) {
        Some("no write to the store succeeded recently".to_string())
    } else {
        None
    };
    let body = json!({
        "status": if reason.is_none() { "ready" } else { "not_ready" },
        "reason": reason,
        "store_last_write_ok_seconds_ago": age.map(|a| a.as_secs_f64()),
        "recovery": recovery_view(s),
        "pod_id": s.pod_id(),
    });
    if reason.is_none() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// A leader whose recovery cycles failed this many times in a row is not ready.
pub const RECOVERY_FAILING_AFTER: u32 = 3;

fn recovery_view(s: &fleet_q_actors::PodState) -> Value {
    let (n, last) = s.recovery_failures();
    json!({
        "failing": n >= RECOVERY_FAILING_AFTER,
        "consecutive_failures": n,
        "last_error": last.map(|e| truncate(&e, 200)),
    })
}

/// At most `max` characters of `s`, with a marker when cut.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Submit one step.
#[utoipa::path(post, path = "/submit", tag = "steps", request_body = SubmitRequest,
    responses((status = 201, body = SubmitResponse), (status = 200, body = SubmitResponse, description = "Repeated idempotency key: the original step"),
              (status = 400, body = ApiError), (status = 413, body = ApiError), (status = 415, body = ApiError), (status = 503, body = ApiError)))]
async fn submit(
    req: HttpRequest,
    st: web::Data<AppState>,
    body: web::Json<SubmitRequest>,
) -> ApiResult {
    let step = body
        .into_inner()
        .into_step()
        .map_err(|e| ApiError::validation(e.to_string(), &req))?;
    let r = st
        .pod
        .submit(vec![step])
        .await
        .map_err(|e| ApiError::store(&e, &req))?;
    let ins = r[0];
    let (mut resp, message) = if ins.created {
        (HttpResponse::Created(), "step submitted")
    } else {
        (
            HttpResponse::Ok(),
            "a step with this idempotency_key already exists; returning it",
        )
    };
    Ok(resp.json(SubmitResponse {
        step_id: ins.step_id.to_string(),
        status: "submitted".into(),
        message: message.into(),
    }))
}

/// Submit up to 1,000 steps at once; all are validated before any is stored.
#[utoipa::path(post, path = "/submit/batch", tag = "steps", request_body = BatchRequest,
    responses((status = 201, body = BatchResponse), (status = 400, body = ApiError), (status = 413, body = ApiError), (status = 503, body = ApiError)))]
async fn submit_batch(
    req: HttpRequest,
    st: web::Data<AppState>,
    body: web::Json<BatchRequest>,
) -> ApiResult {
    let steps = body.into_inner().steps;
    if steps.is_empty() || steps.len() > MAX_BATCH {
        return Err(ApiError::validation(
            format!(
                "steps must hold 1 to {MAX_BATCH} steps, got {}",
                steps.len()
            ),
            &req,
        ));
    }
    let mut valid = Vec::with_capacity(steps.len());
    let mut problems = Vec::new();
    for (i, s) in steps.into_iter().enumerate() {
        match s.into_step() {
            Ok(v) => valid.push(v),
            Err(e) => problems.extend(e.0.into_iter().map(|p| format!("steps[{i}].{p}"))),
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::validation(
            format!(
                "invalid steps (nothing was stored): {}",
                problems.join("; ")
            ),
            &req,
        ));
    }
    let r = st
        .pod
        .submit(valid)
        .await
        .map_err(|e| ApiError::store(&e, &req))?;
    Ok(HttpResponse::Created().json(BatchResponse {
        step_ids: r.iter().map(|i| i.step_id.to_string()).collect(),
        created: r.iter().map(|i| i.created).collect(),
        status: "submitted".into(),
        message: format!("{} steps submitted", r.iter().filter(|i| i.created).count()),
    }))
}

/// A step's state.
#[utoipa::path(get, path = "/status/{step_id}", tag = "steps",
    params(("step_id" = String, Path, description = "Step id (UUID)")),
    responses((status = 200, body = StepView), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 503, body = ApiError)))]
async fn status(req: HttpRequest, st: web::Data<AppState>, id: web::Path<String>) -> ApiResult {
    let step = fetch_step(&id, &st, &req).await?;
    Ok(HttpResponse::Ok().json(StepView::from(step)))
}

/// The idempotency key handlers receive for a step (stable across retries).
#[utoipa::path(get, path = "/idempotency/{step_id}", tag = "steps",
    params(("step_id" = String, Path, description = "Step id (UUID)")),
    responses((status = 200, description = "`{step_id, idempotency_key}`"), (status = 404, body = ApiError)))]
async fn idempotency(
    req: HttpRequest,
    st: web::Data<AppState>,
    id: web::Path<String>,
) -> ApiResult {
    let step = fetch_step(&id, &st, &req).await?;
    Ok(HttpResponse::Ok().json(json!({
        "step_id": step.step_id,
        "idempotency_key": step.handler_idempotency_key(),
    })))
}

/// Cancel a pending step (admin).
#[utoipa::path(delete, path = "/steps/{step_id}", tag = "admin",
    params(("step_id" = String, Path, description = "Step id (UUID)")),
    responses((status = 200, description = "Cancelled"), (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError), (status = 409, body = ApiError, description = "Not pending")))]
async fn cancel(req: HttpRequest, st: web::Data<AppState>, id: web::Path<String>) -> ApiResult {
    require_admin(&req, &st)?;
    let step = fetch_step(&id, &st, &req).await?;
    let id = step.step_id;
    match st
        .pod
        .cancel_step(id)
        .await
        .map_err(|e| ApiError::store(&e, &req))?
    {
        CancelOutcome::Cancelled => {
            CANCELLED
                .with_label_values(&[metrics::type_label(step.step_type())])
                .inc();
            Ok(HttpResponse::Ok()
                .json(json!({"step_id": id, "status": "cancelled", "message": "step cancelled"})))
        }
        CancelOutcome::NotFound => Err(ApiError::new(
            ErrorType::NotFound,
            format!("no step {id}"),
            &req,
        )),
        CancelOutcome::NotPending(s) => Err(ApiError::new(
            ErrorType::Conflict,
            format!("step {id} is {s}; only pending steps can be cancelled"),
            &req,
        )),
    }
}

/// Who leads the fleet, and the pods eligible to.
#[utoipa::path(get, path = "/admin/leader", tag = "admin",
    responses((status = 200, description = "`{current_leader, leader_birth_ts, active_pods, last_election_check, election_details}`"),
              (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 503, body = ApiError)))]
async fn admin_leader(req: HttpRequest, st: web::Data<AppState>) -> ApiResult {
    require_admin(&req, &st)?;
    let snap = st.snapshot().await.map_err(|e| ApiError::store(&e, &req))?;
    let live: Vec<&PodRecord> = snap
        .pods
        .iter()
        .filter(|p| p.is_alive(st.dead_pod_threshold))
        .collect();
    let leader = eldest_live_pod(&snap.pods, st.dead_pod_threshold);
    let eligible: Vec<Value> = live
        .iter()
        .map(|p| {
            json!({
                "pod_id": p.pod_id,
                "birth_ts": p.birth_ts,
                "last_heartbeat_ts": p.last_heartbeat_ts,
                "is_leader": leader.is_some_and(|l| l.pod_id == p.pod_id),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "current_leader": leader.map(|l| l.pod_id.clone()),
        "leader_birth_ts": leader.map(|l| l.birth_ts),
        "active_pods": live.len(),
        "last_election_check": st.pod.state().last_election_check().unwrap_or(snap.now),
        "this_pod": st.pod.state().pod_id(),
        "this_pod_is_leader": st.pod.state().is_leader(),
        "election_details": { "eligible_pods": eligible },
    })))
}

/// Queue depth and fleet capacity (cached for a couple of seconds).
#[utoipa::path(get, path = "/admin/queue", tag = "admin",
    responses((status = 200, description = "Queue statistics"), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 503, body = ApiError)))]
async fn admin_queue(req: HttpRequest, st: web::Data<AppState>) -> ApiResult {
    require_admin(&req, &st)?;
    let snap = st.snapshot().await.map_err(|e| ApiError::store(&e, &req))?;
    let c = &snap.stats.counts;
    let live: Vec<&PodRecord> = snap
        .pods
        .iter()
        .filter(|p| p.is_alive(st.dead_pod_threshold))
        .collect();
    let capacity: BTreeMap<&str, Value> = live
        .iter()
        .map(|p| {
            (
                p.pod_id.as_str(),
                json!({"current": p.capacity_in_use, "max": p.max_capacity}),
            )
        })
        .collect();
    let (by_type, omitted) = largest_types(&snap.stats.by_type, MAX_TYPES_SHOWN);
    Ok(HttpResponse::Ok().json(json!({
        "pending_steps": c.pending,
        "claimed_steps": c.claimed,
        "completed_steps": c.completed,
        "failed_steps": c.failed,
        "cancelled_steps": c.cancelled,
        "active_pods": live.len(),
        "current_leader": eldest_live_pod(&snap.pods, st.dead_pod_threshold).map(|l| l.pod_id.clone()),
        "queue_depth_by_priority": snap.stats.pending_by_priority,
        "steps_by_type": by_type,
        "steps_by_type_omitted": omitted,
        "pod_capacity": capacity,
        "oldest_pending_age_seconds": snap.stats.oldest_pending_age.map(|a| a.as_secs_f64()),
        "as_of": snap.now,
    })))
}

/// Most step types `/admin/queue` lists one by one.
pub const MAX_TYPES_SHOWN: usize = 50;

/// The `max` step types with the most steps (ties by name), and how many types
/// were left out: step types are chosen by clients, so a listing of them must be
/// bounded.
fn largest_types(
    by_type: &BTreeMap<String, fleet_q_actors::StatusCounts>,
    max: usize,
) -> (BTreeMap<&str, &fleet_q_actors::StatusCounts>, usize) {
    let mut all: Vec<(&String, &fleet_q_actors::StatusCounts)> = by_type.iter().collect();
    all.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then(a.0.cmp(b.0)));
    let omitted = all.len().saturating_sub(max);
    let shown = all
        .into_iter()
        .take(max)
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    (shown, omitted)
}

/// Run a recovery cycle now (leader only).
#[utoipa::path(post, path = "/admin/recovery/run", tag = "admin", request_body(content = RecoveryRequest, description = "Optional"),
    responses((status = 200, description = "`{status, message, recovery_summary}`"), (status = 401, body = ApiError),
              (status = 403, body = ApiError, description = "Not the leader"), (status = 409, body = ApiError, description = "A cycle is running")))]
async fn admin_recovery_run(
    req: HttpRequest,
    st: web::Data<AppState>,
    body: web::Bytes,
) -> ApiResult {
    require_admin(&req, &st)?;
    let opts: RecoveryRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RecoveryRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::validation(format!("invalid JSON body: {e}"), &req))?
    };
    let _ = opts.force; // cycles are idempotent; a request always runs one now
    match st.pod.run_recovery(opts.dry_run).await {
        Ok(summary) => Ok(HttpResponse::Ok().json(json!({
            "status": "completed",
            "message": if summary.dry_run { "dry run: nothing was written" } else { "recovery cycle completed" },
            "recovery_summary": summary,
        }))),
        Err(RecoveryError::NotLeader) => Err(ApiError::new(
            ErrorType::PermissionDenied,
            format!("this pod is not the leader; ask {}", st.pod.state().leader().map(|t| t.pod_id).unwrap_or_else(|| "the leader".into())),
            &req,
        )),
        Err(RecoveryError::AlreadyRunning) => Err(ApiError::new(ErrorType::Conflict, "a recovery cycle is already running", &req)),
        Err(RecoveryError::Failed(e)) => {
            tracing::warn!(error = %e, "requested recovery cycle failed");
            Err(ApiError::new(ErrorType::DatabaseError, "the recovery cycle failed; see the pod's logs", &req))
        }
    }
}

/// Recent recovery cycles from this pod's ledger, newest first.
#[utoipa::path(get, path = "/admin/recovery", tag = "admin", params(Page),
    responses((status = 200, description = "`{cycles: [RecoverySummary]}`"), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn admin_recovery(req: HttpRequest, st: web::Data<AppState>) -> ApiResult {
    require_admin(&req, &st)?;
    let q = Page::of(&req)?;
    let limit = q.limit(20, &req)? as usize;
    let cycles: Vec<RecoverySummary> = st.pod.recovery_history(limit).await.map_err(|e| {
        tracing::warn!(error = %e, "reading the recovery ledger");
        ApiError::new(
            ErrorType::InternalError,
            "the recovery ledger could not be read",
            &req,
        )
    })?;
    Ok(HttpResponse::Ok().json(json!({ "cycles": cycles })))
}

/// Failed steps, a page at a time (by id).
#[utoipa::path(get, path = "/admin/failed", tag = "admin", params(Page),
    responses((status = 200, description = "`{steps, next_after}`"), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn admin_failed(req: HttpRequest, st: web::Data<AppState>) -> ApiResult {
    require_admin(&req, &st)?;
    let q = Page::of(&req)?;
    let limit = q.limit(100, &req)?;
    let after = q.after.as_deref().map(|a| parse_id(a, &req)).transpose()?;
    let steps = st
        .pod
        .failed_steps(PageParams { limit, after })
        .await
        .map_err(|e| ApiError::store(&e, &req))?;
    let next = (steps.len() == limit as usize)
        .then(|| steps.last().map(|s| s.step_id.to_string()))
        .flatten();
    let views: Vec<StepView> = steps.into_iter().map(StepView::from).collect();
    Ok(HttpResponse::Ok().json(json!({ "steps": views, "next_after": next })))
}

/// Put a failed step back to pending with a fresh retry budget.
#[utoipa::path(post, path = "/admin/steps/{step_id}/retry", tag = "admin",
    params(("step_id" = String, Path, description = "Step id (UUID)")),
    responses((status = 200, description = "Requeued"), (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError), (status = 409, body = ApiError, description = "Not failed")))]
async fn admin_retry(
    req: HttpRequest,
    st: web::Data<AppState>,
    id: web::Path<String>,
) -> ApiResult {
    require_admin(&req, &st)?;
    let id = parse_id(&id, &req)?;
    match st
        .pod
        .retry_step(id)
        .await
        .map_err(|e| ApiError::store(&e, &req))?
    {
        RetryOutcome::Requeued => Ok(HttpResponse::Ok()
            .json(json!({"step_id": id, "status": "pending", "message": "step requeued"}))),
        RetryOutcome::NotFound => Err(ApiError::new(
            ErrorType::NotFound,
            format!("no step {id}"),
            &req,
        )),
        RetryOutcome::NotFailed(s) => Err(ApiError::new(
            ErrorType::Conflict,
            format!("step {id} is {s}; only failed steps can be retried"),
            &req,
        )),
    }
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", tag = "probes", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics_text(st: web::Data<AppState>) -> HttpResponse {
    // Queue-wide gauges come from the cached snapshot; if the store is down they
    // keep their last values and the scrape still succeeds.
    if let Ok(snap) = st.snapshot().await {
        let c = &snap.stats.counts;
        PENDING.set(c.pending as i64);
        for (status, n) in [
            ("pending", c.pending),
            ("claimed", c.claimed),
            ("completed", c.completed),
            ("failed", c.failed),
            ("cancelled", c.cancelled),
        ] {
            QUEUE.with_label_values(&[status]).set(n as i64);
        }
        OLDEST.set(
            snap.stats
                .oldest_pending_age
                .map_or(0, |a| a.as_secs() as i64),
        );
        ACTIVE_PODS.set(
            snap.pods
                .iter()
                .filter(|p| p.is_alive(st.dead_pod_threshold))
                .count() as i64,
        );
    }
    {
        let mut seen = st.statements_seen.lock().expect("statements lock");
        for (op, total) in st.pod.statements_by_op() {
            let last = seen.entry(op).or_default();
            if total > *last {
                STATEMENTS.with_label_values(&[op]).inc_by(total - *last);
                *last = total;
            }
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics::render())
}

/// This API's OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "probes", responses((status = 200, description = "OpenAPI 3 document")))]
async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

/// `POST /debug/fault/{actor}/{panic|fatal}`: registered only in builds with fault
/// injection compiled in (tests); not part of the documented API.
async fn inject_fault(
    req: HttpRequest,
    st: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> ApiResult {
    use fleet_q_actors::supervision::FaultKind;
    let (actor, kind) = path.into_inner();
    let kind = match kind.as_str() {
        "panic" => FaultKind::Panic,
        "fatal" => FaultKind::Fatal,
        _ => return Err(ApiError::validation("kind must be panic or fatal", &req)),
    };
    if st.pod.inject_fault(&actor, kind) {
        Ok(HttpResponse::Accepted().json(json!({ "actor": actor, "injected": true })))
    } else {
        Err(ApiError::new(
            ErrorType::NotFound,
            format!("no actor {actor}"),
            &req,
        ))
    }
}

/// `POST /debug/heartbeat-failure/{seconds}`: this pod's heartbeats fail for that
/// long (builds with fault injection only; not part of the documented API).
async fn inject_heartbeat_failure(
    req: HttpRequest,
    st: web::Data<AppState>,
    secs: web::Path<u64>,
) -> ApiResult {
    if st
        .pod
        .inject_heartbeat_failure(Duration::from_secs(secs.into_inner()))
    {
        Ok(HttpResponse::Accepted().json(json!({ "injected": true })))
    } else {
        Err(ApiError::new(
            ErrorType::NotFound,
            "fault injection is not compiled in",
            &req,
        ))
    }
}

/// `POST /debug/panic`: a request handler that panics, registered only in builds
/// with fault injection compiled in (tests), to prove a panic answers 500 and
/// takes nothing down.
async fn panic_in_handler() -> HttpResponse {
    panic!("injected panic in a request handler");
}

/// The OpenAPI document of every route.
#[derive(OpenApi)]
#[openapi(
    info(title = "fleet-q", description = "A brokerless distributed step queue"),
    paths(
        health,
        ready,
        submit,
        submit_batch,
        status,
        idempotency,
        cancel,
        admin_leader,
        admin_queue,
        admin_recovery_run,
        admin_recovery,
        admin_failed,
        admin_retry,
        metrics_text,
        openapi_json
    ),
    components(schemas(
        ApiError,
        ErrorType,
        SubmitRequest,
        SubmitResponse,
        BatchRequest,
        BatchResponse,
        StepView,
        RecoveryRequest
    ))
)]
pub struct ApiDoc;

// ------------------------------------------------------------ errors/wiring --

fn json_error(err: actix_web::error::JsonPayloadError, req: &HttpRequest) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as J;
    let e = match &err {
        J::OverflowKnownLength { .. } | J::Overflow { .. } => {
            ApiError::new(ErrorType::PayloadTooLarge, "request body too large", req)
        }
        J::ContentType => ApiError::new(
            ErrorType::UnsupportedMediaType,
            "the request body must be JSON (Content-Type: application/json)",
            req,
        ),
        J::Payload(actix_web::error::PayloadError::Io(e))
            if e.kind() == std::io::ErrorKind::TimedOut =>
        {
            body_timed_out(req)
        }
        J::Deserialize(d) => ApiError::validation(
            format!("invalid JSON body: {}", truncate(&d.to_string(), 200)),
            req,
        ),
        other => ApiError::validation(
            format!(
                "invalid request body: {}",
                truncate(&other.to_string(), 200)
            ),
            req,
        ),
    };
    e.into()
}

fn body_timed_out(req: &HttpRequest) -> ApiError {
    ApiError::new(
        ErrorType::ValidationError,
        "the request body did not arrive in time",
        req,
    )
    .with_status(StatusCode::REQUEST_TIMEOUT)
    .closing()
}

fn query_error(err: actix_web::error::QueryPayloadError, req: &HttpRequest) -> actix_web::Error {
    ApiError::validation(
        format!("invalid query string: {}", truncate(&err.to_string(), 200)),
        req,
    )
    .into()
}

fn path_error(err: actix_web::error::PathError, req: &HttpRequest) -> actix_web::Error {
    ApiError::validation(format!("invalid path: {err}"), req).into()
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        ErrorType::NotFound,
        format!(
            "no route {} {}",
            req.method(),
            truncate(req.path(), QUOTE_MAX)
        ),
        &req,
    )
    .error_response()
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        ErrorType::NotFound,
        format!(
            "{} is not allowed on {}",
            req.method(),
            truncate(req.path(), QUOTE_MAX)
        ),
        &req,
    )
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
    .error_response()
}

/// Every route: `(method, path)`, for tests and the OpenAPI check.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/ready"),
    ("POST", "/submit"),
    ("POST", "/submit/batch"),
    ("GET", "/status/{step_id}"),
    ("GET", "/idempotency/{step_id}"),
    ("DELETE", "/steps/{step_id}"),
    ("GET", "/admin/leader"),
    ("GET", "/admin/queue"),
    ("POST", "/admin/recovery/run"),
    ("GET", "/admin/recovery"),
    ("GET", "/admin/failed"),
    ("POST", "/admin/steps/{step_id}/retry"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
];

/// A GET route that answers HEAD too (actix sends no body for HEAD).
fn get_or_head() -> actix_web::Route {
    use actix_web::guard;
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// Registers every route on `cfg`.
pub fn routes(cfg: &mut web::ServiceConfig, max_payload_bytes: usize) {
    fn res(path: &str) -> actix_web::Resource {
        web::resource(path).default_service(web::to(method_not_allowed))
    }
    cfg.app_data(
        web::JsonConfig::default()
            .limit(max_payload_bytes)
            .error_handler(json_error),
    )
    .app_data(web::PayloadConfig::new(max_payload_bytes))
    .app_data(web::QueryConfig::default().error_handler(query_error))
    .app_data(web::PathConfig::default().error_handler(path_error))
    .service(res("/health").route(get_or_head().to(health)))
    .service(res("/ready").route(get_or_head().to(ready)))
    .service(res("/submit").route(web::post().to(submit)))
    .service(res("/submit/batch").route(web::post().to(submit_batch)))
    .service(res("/status/{step_id}").route(get_or_head().to(status)))
    .service(res("/idempotency/{step_id}").route(get_or_head().to(idempotency)))
    .service(res("/steps/{step_id}").route(web::delete().to(cancel)))
    .service(res("/admin/leader").route(get_or_head().to(admin_leader)))
    .service(res("/admin/queue").route(get_or_head().to(admin_queue)))
    .service(res("/admin/recovery/run").route(web::post().to(admin_recovery_run)))
    .service(res("/admin/recovery").route(get_or_head().to(admin_recovery)))
    .service(res("/admin/failed").route(get_or_head().to(admin_failed)))
    .service(res("/admin/steps/{step_id}/retry").route(web::post().to(admin_retry)))
    .service(res("/metrics").route(get_or_head().to(metrics_text)))
    .service(res("/openapi.json").route(get_or_head().to(openapi_json)));
    if fleet_q_actors::supervision::FAILPOINTS_ENABLED {
        cfg.route("/debug/fault/{actor}/{kind}", web::post().to(inject_fault));
        cfg.route("/debug/panic", web::post().to(panic_in_handler));
        cfg.route(
            "/debug/heartbeat-failure/{seconds}",
            web::post().to(inject_heartbeat_failure),
        );
    }
    cfg.default_service(web::to(not_found));
}

/// What the request middleware keeps about a request while it is served. (Not
/// the request itself: routing needs sole ownership of it.)
pub struct RequestMeta {
    route: String,
    method: String,
    path: String,
    t0: Instant,
}

impl RequestMeta {
    /// Reads the route pattern, method and path before the call.
    pub fn of(req: &ServiceRequest) -> Self {
        RequestMeta {
            route: req
                .match_pattern()
                .unwrap_or_else(|| "unmatched".to_string()),
            method: req.method().to_string(),
            path: req.path().to_string(),
            t0: Instant::now(),
        }
    }

    fn count(&self, status: StatusCode) {
        HTTP_REQUESTS
            .with_label_values(&[self.route.as_str(), self.method.as_str(), status.as_str()])
            .inc();
        HTTP_LATENCY
            .with_label_values(&[self.route.as_str()])
            .observe(self.t0.elapsed().as_secs_f64());
    }
}

fn error_type_for(status: StatusCode) -> ErrorType {
    match status.as_u16() {
        401 => ErrorType::Unauthorized,
        403 => ErrorType::PermissionDenied,
        404 | 405 => ErrorType::NotFound,
        409 => ErrorType::Conflict,
        413 => ErrorType::PayloadTooLarge,
        415 => ErrorType::UnsupportedMediaType,
        503 => ErrorType::DatabaseError,
        s if s >= 500 => ErrorType::InternalError,
        _ => ErrorType::ValidationError,
    }
}

/// The request middleware: counts requests by route and status; turns a panic in
/// any handler into a 500 with the error body (the worker survives); and rewrites
/// any error response that is not already the JSON error body (e.g. actix's own
/// extractor errors) into one, so clients always get `{detail, error_type, …}`.
pub async fn observe<F>(
    meta: RequestMeta,
    call: F,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error>
where
    F: std::future::Future<Output = Result<ServiceResponse<BoxBody>, actix_web::Error>>,
{
    let res = match std::panic::AssertUnwindSafe(call).catch_unwind().await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            // Errors actix renders itself: give them the documented body.
            let status = e.as_response_error().status_code();
            meta.count(status);
            let reason = status.canonical_reason().unwrap_or("error");
            let e =
                ApiError::for_path(error_type_for(status), format!("{reason}: {e}"), &meta.path)
                    .with_status(status);
            return Err(e.into());
        }
        Err(p) => {
            tracing::error!(route = %meta.route, panic = %fleet_q_actors::supervision::panic_message(p.as_ref()), "request handler panicked");
            meta.count(StatusCode::INTERNAL_SERVER_ERROR);
            let e = ApiError::for_path(
                ErrorType::InternalError,
                "internal error; see the pod's logs",
                &meta.path,
            );
            return Err(e.into());
        }
    };
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let res = if status.as_u16() >= 400 && !is_json {
        let (req, resp) = res.into_parts();
        let text = actix_web::body::to_bytes(resp.into_body())
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let reason = status.canonical_reason().unwrap_or("error");
        let detail = if text.trim().is_empty() || text.len() > 300 {
            reason.to_string()
        } else {
            format!("{reason}: {}", text.trim())
        };
        let body = ApiError::new(error_type_for(status), detail, &req).with_status(status);
        ServiceResponse::new(req, body.error_response())
    } else {
        res
    };
    meta.count(res.status());
    Ok(res)
}

// ------------------------------------------------------------- admission ---

/// Limits on what one client can hold of a pod: connections and time.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// A request body must arrive within this; else 408 and the connection closes.
    pub body_timeout: Duration,
    /// Open connections past which requests are refused with 503 (probes excepted).
    pub max_connections: usize,
    /// Open connections now (kept by [`on_connect`]).
    pub open: Arc<std::sync::atomic::AtomicUsize>,
}

impl HttpLimits {
    /// Limits with a fresh connection count.
    pub fn new(body_timeout: Duration, max_connections: usize) -> Self {
        HttpLimits {
            body_timeout,
            max_connections,
            open: Arc::default(),
        }
    }
}

/// Held in each connection's data while it is open; counts it.
struct ConnGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        OPEN_CONNECTIONS.dec();
    }
}

/// For `HttpServer::on_connect`: counts each connection while it is open.
pub fn on_connect(
    open: Arc<std::sync::atomic::AtomicUsize>,
) -> impl Fn(&dyn std::any::Any, &mut actix_web::dev::Extensions) + Send + Sync + 'static {
    move |_, ext| {
        open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        OPEN_CONNECTIONS.inc();
        ext.insert(ConnGuard(open.clone()));
    }
}

/// Probes and scrapes answer whatever the load: a liveness probe that cannot
/// connect would have the orchestrator kill a pod that is only busy, and an
/// overload is when the metrics matter most.
fn is_probe(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/metrics")
}

/// Checks a request before it is routed: refuses it past the connection cap
/// (503, connection closed), refuses bodies in an encoding the server does not
/// decode (415), and puts a deadline on reading its body.
pub fn admit(req: &mut ServiceRequest, limits: &HttpLimits) -> Result<(), ApiError> {
    let open = limits.open.load(std::sync::atomic::Ordering::SeqCst);
    if open > limits.max_connections && !is_probe(req.path()) {
        return Err(ApiError::for_path(
            ErrorType::DatabaseError,
            format!(
                "this pod has too many open connections ({open}, limit {}); retry later",
                limits.max_connections
            ),
            req.path(),
        )
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
        .closing());
    }
    if let Some(enc) = req.headers().get(header::CONTENT_ENCODING) {
        let identity = enc
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("identity"));
        if !identity {
            return Err(ApiError::for_path(
                ErrorType::UnsupportedMediaType,
                "Content-Encoding is not supported: send the body uncompressed",
                req.path(),
            )
            .closing());
        }
    }
    let has_body = match req.headers().get(header::CONTENT_LENGTH) {
        Some(len) => len.as_bytes() != b"0",
        None => req.headers().contains_key(header::TRANSFER_ENCODING),
    };
    if !has_body {
        return Ok(());
    }
    let inner = actix_web::HttpMessage::take_payload(req);
    req.set_payload(actix_web::dev::Payload::Stream {
        payload: Box::pin(BodyDeadline {
            inner,
            deadline: Box::pin(tokio::time::sleep(limits.body_timeout)),
            done: false,
        }),
    });
    Ok(())
}

/// A request body that fails with `TimedOut` once its deadline passes.
struct BodyDeadline {
    inner: actix_web::dev::Payload,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl futures_util::Stream for BodyDeadline {
    type Item = Result<web::Bytes, actix_web::error::PayloadError>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = std::pin::Pin::new(&mut this.inner).poll_next(cx) {
            this.done = item.is_none();
            return Poll::Ready(item);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Err(actix_web::error::PayloadError::Io(
                std::io::Error::new(std::io::ErrorKind::TimedOut, "request body timed out"),
            ))));
        }
        Poll::Pending
    }
}
