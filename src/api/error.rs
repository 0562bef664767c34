//! The error body every failed request gets, `{detail, error_type, timestamp,
//! path}` with the seed's error types, and the extractor error handlers that turn
//! actix's own rejections (bad JSON, query, path; unknown route or method) into it.
//! No error body carries SQL, a backtrace or a secret.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use chrono::{DateTime, Utc};
use fleet_q_actors::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

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
    pub(crate) fn status(self) -> StatusCode {
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

    pub(crate) fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// A store failure: 503 `database_error`; details stay in the logs.
    pub fn store(e: &StoreError, req: &HttpRequest) -> Self {
        tracing::warn!(error = %e, path = req.path(), "store error answering a request");
        let detail = if crate::storage::sqlite::disk_full(e) {
            format!(
                "the database's disk is full ({}); retry once space is freed",
                e.operation
            )
        } else if e.is_transient() {
            format!("the database is unavailable ({}); retry later", e.operation)
        } else {
            format!(
                "the database refused the {} call; see the pod's logs",
                e.operation
            )
        };
        ApiError::new(ErrorType::DatabaseError, detail, req)
    }

    pub(crate) fn validation(detail: impl Into<String>, req: &HttpRequest) -> Self {
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

/// What a handler returns.
pub(crate) type ApiResult = Result<HttpResponse, ApiError>;
/// Most characters of a client's value an error body quotes.
pub const QUOTE_MAX: usize = 100;

/// At most `max` characters of `s`, with a marker when cut.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

pub(crate) fn json_error(
    err: actix_web::error::JsonPayloadError,
    req: &HttpRequest,
) -> actix_web::Error {
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

pub(crate) fn body_timed_out(req: &HttpRequest) -> ApiError {
    ApiError::new(
        ErrorType::ValidationError,
        "the request body did not arrive in time",
        req,
    )
    .with_status(StatusCode::REQUEST_TIMEOUT)
    .closing()
}

pub(crate) fn query_error(
    err: actix_web::error::QueryPayloadError,
    req: &HttpRequest,
) -> actix_web::Error {
    ApiError::validation(
        format!("invalid query string: {}", truncate(&err.to_string(), 200)),
        req,
    )
    .into()
}

pub(crate) fn path_error(err: actix_web::error::PathError, req: &HttpRequest) -> actix_web::Error {
    ApiError::validation(format!("invalid path: {err}"), req).into()
}

pub(crate) async fn not_found(req: HttpRequest) -> HttpResponse {
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

pub(crate) async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
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

pub(crate) fn error_type_for(status: StatusCode) -> ErrorType {
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
