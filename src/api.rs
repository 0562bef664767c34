//! The HTTP API (actix-web).
//!
//! Every error is JSON `{detail, error_type, timestamp, path}` with the seed's error
//! types; no error body carries SQL, a backtrace or a secret. Liveness (`/health`)
//! is answered from memory and never touches the database.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use chrono::{DateTime, Utc};
use fleet_q_actors::{NewStep, Pod, RunAt, StepId, StepSpec, StoreError, ValidationErrors};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What the handlers share.
pub struct AppState {
    /// The running pod.
    pub pod: Arc<Pod>,
    /// Request body limit.
    pub max_payload_bytes: usize,
}

/// The seed's error types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// Bad input (400).
    ValidationError,
    /// No such resource (404).
    NotFound,
    /// Authenticated but not allowed, or not the leader (403).
    PermissionDenied,
    /// No credentials (401).
    Unauthorized,
    /// State conflict (409).
    Conflict,
    /// Body too large (413).
    PayloadTooLarge,
    /// Not JSON (415).
    UnsupportedMediaType,
    /// A bug or fault in this pod (500).
    InternalError,
    /// The store is unavailable (503).
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

/// An API error, rendered as the documented error body.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
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
}

impl ApiError {
    /// An error of `kind` for `req`.
    pub fn new(kind: ErrorType, detail: impl Into<String>, req: &HttpRequest) -> Self {
        ApiError {
            detail: detail.into(),
            error_type: kind,
            timestamp: Utc::now(),
            path: req.path().to_string(),
        }
    }

    /// A store failure: 503 for transient ones, 500 otherwise; details stay in logs.
    pub fn store(e: &StoreError, req: &HttpRequest) -> Self {
        tracing::warn!(error = %e, path = req.path(), "store error answering a request");
        if e.is_transient() {
            ApiError::new(
                ErrorType::DatabaseError,
                format!("the database is unavailable ({}); retry later", e.operation),
                req,
            )
        } else {
            ApiError::new(
                ErrorType::DatabaseError,
                format!(
                    "the database rejected the {} call; see the pod's logs",
                    e.operation
                ),
                req,
            )
        }
    }

    fn validation(e: &ValidationErrors, req: &HttpRequest) -> Self {
        ApiError::new(ErrorType::ValidationError, e.to_string(), req)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.error_type.status()
    }
    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(self)
    }
}

/// `POST /submit` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// Step type (required).
    #[serde(rename = "type")]
    pub step_type: String,
    /// Handler arguments (object).
    #[serde(default)]
    pub args: Option<Value>,
    /// Client metadata (object).
    #[serde(default)]
    pub metadata: Option<Value>,
    /// −1000 … 1000.
    #[serde(default)]
    pub priority: Option<i64>,
    /// 0 … 10.
    #[serde(default)]
    pub max_retries: Option<i64>,
    /// Run no earlier than this many seconds from now.
    #[serde(default)]
    pub delay_seconds: Option<f64>,
    /// Run no earlier than this instant (RFC 3339).
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// Client dedupe key.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Handler timeout for this step.
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
        let timeout = self
            .timeout_seconds
            .and_then(|t| secs("timeout_seconds", t, &mut errors));
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

async fn submit(
    req: HttpRequest,
    st: web::Data<AppState>,
    body: web::Json<SubmitRequest>,
) -> Result<HttpResponse, ApiError> {
    let step = body
        .into_inner()
        .into_step()
        .map_err(|e| ApiError::validation(&e, &req))?;
    let r = st
        .pod
        .submit(vec![step])
        .await
        .map_err(|e| ApiError::store(&e, &req))?;
    let ins = r[0];
    if ins.created {
        Ok(HttpResponse::Created().json(json!({
            "step_id": ins.step_id,
            "status": "submitted",
            "message": "step submitted",
        })))
    } else {
        Ok(HttpResponse::Ok().json(json!({
            "step_id": ins.step_id,
            "status": "submitted",
            "message": "a step with this idempotency_key already exists; returning it",
        })))
    }
}

async fn status(
    req: HttpRequest,
    st: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: StepId = id.parse().map_err(|e: fleet_q_actors::ValidationError| {
        ApiError::new(ErrorType::ValidationError, e.to_string(), &req)
    })?;
    match st
        .pod
        .step(id)
        .await
        .map_err(|e| ApiError::store(&e, &req))?
    {
        Some(step) => Ok(HttpResponse::Ok().json(step)),
        None => Err(ApiError::new(
            ErrorType::NotFound,
            format!("no step {id}"),
            &req,
        )),
    }
}

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
        "actors": actors,
    });
    if healthy {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `POST /debug/fault/{actor}/{panic|fatal}`: registered only in builds with fault
/// injection compiled in (tests).
async fn inject_fault(
    req: HttpRequest,
    st: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    use fleet_q_actors::supervision::FaultKind;
    let (actor, kind) = path.into_inner();
    let kind = match kind.as_str() {
        "panic" => FaultKind::Panic,
        "fatal" => FaultKind::Fatal,
        _ => {
            return Err(ApiError::new(
                ErrorType::ValidationError,
                "kind must be panic or fatal",
                &req,
            ))
        }
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
        J::Deserialize(d) => ApiError::new(
            ErrorType::ValidationError,
            format!("invalid JSON body: {d}"),
            req,
        ),
        other => ApiError::new(
            ErrorType::ValidationError,
            format!("invalid request body: {other}"),
            req,
        ),
    };
    e.into()
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        ErrorType::NotFound,
        format!("no route {} {}", req.method(), req.path()),
        &req,
    )
    .error_response()
}

/// Registers every route on `cfg`.
pub fn routes(cfg: &mut web::ServiceConfig, max_payload_bytes: usize) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(max_payload_bytes)
            .error_handler(json_error),
    )
    .route("/health", web::get().to(health))
    .route("/submit", web::post().to(submit))
    .route("/status/{step_id}", web::get().to(status));
    if fleet_q_actors::supervision::FAILPOINTS_ENABLED {
        cfg.route("/debug/fault/{actor}/{kind}", web::post().to(inject_fault));
    }
    cfg.default_service(web::to(not_found));
}
