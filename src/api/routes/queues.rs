//! Queue routes (admin): list the queues, read and replace one's settings,
//! pause and resume. Settings live in the store, so every pod obeys a change
//! from its next claim (within one claim interval), and it survives restarts.

use actix_web::{web, HttpRequest, HttpResponse};
use fleet_q_actors::{QueueInfo, QueueSettings};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::auth::require_admin;
use crate::api::error::{ApiError, ApiResult, ErrorType};
use crate::api::AppState;

/// A queue: its settings and live counts.
#[derive(Serialize, ToSchema)]
pub struct QueueView {
    /// Name.
    pub name: String,
    /// No step of a paused queue is claimed.
    pub paused: bool,
    /// Most steps of this queue claimed at once across the fleet (null: no
    /// limit).
    pub max_concurrency: Option<u32>,
    /// Steps started per second across the fleet (null: no limit).
    pub rate_per_second: Option<f64>,
    /// The rate bucket's size in force (the one set, else the rate rounded
    /// up); null without a rate.
    pub burst: Option<u32>,
    /// Retries for steps submitted without `max_retries` (null: 3).
    pub max_retries: Option<u32>,
    /// Handler timeout for steps submitted without one (null: the pod's).
    pub timeout_seconds: Option<f64>,
    /// First retry delay of this queue's steps, doubling per retry (null: the
    /// pod's).
    pub retry_backoff_seconds: Option<f64>,
    /// Cap on this queue's retry delays (null: the pod's).
    pub retry_backoff_max_seconds: Option<f64>,
    /// Steps waiting.
    pub pending: u64,
    /// Steps claimed now.
    pub claimed: u64,
    /// Steps started in the last minute (SQLite: estimated from per-minute
    /// counters; Snowflake: counted).
    pub started_last_minute: u64,
    /// `started_last_minute` per second.
    pub rate_last_minute: f64,
}

impl From<QueueInfo> for QueueView {
    fn from(q: QueueInfo) -> Self {
        let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64());
        QueueView {
            burst: q.settings.burst_or_default(),
            name: q.settings.name,
            paused: q.settings.paused,
            max_concurrency: q.settings.max_concurrency,
            rate_per_second: q.settings.rate_per_second,
            max_retries: q.settings.max_retries,
            timeout_seconds: secs(q.settings.timeout),
            retry_backoff_seconds: secs(q.settings.backoff),
            retry_backoff_max_seconds: secs(q.settings.backoff_max),
            pending: q.pending,
            claimed: q.claimed,
            started_last_minute: q.started_last_minute,
            rate_last_minute: (q.started_last_minute as f64 / 60.0 * 100.0).round() / 100.0,
        }
    }
}

/// `GET /admin/queues`.
#[derive(Serialize, ToSchema)]
pub struct QueuesResponse {
    /// Every queue, by name.
    pub queues: Vec<QueueView>,
}

/// `PUT /admin/queues/{name}`: the queue's whole settings (a field left out
/// is unset: no limit, or the pod's default).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueBody {
    /// Paused (default false).
    #[serde(default)]
    pub paused: bool,
    /// 1 to 1,000,000 steps claimed at once across the fleet; absent or null:
    /// no limit.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// Steps started per second across the fleet (more than 0, at most
    /// 100,000; fractions allowed: 0.5 is one every 2 s); absent: no limit.
    #[serde(default)]
    pub rate_per_second: Option<f64>,
    /// Most steps started at once after a quiet spell, 1 to 100,000 (needs a
    /// rate); absent: the rate rounded up.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Retries (0 to 10) for steps submitted without `max_retries`.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Handler timeout (seconds, at most 86,400) for steps submitted without one.
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
    /// First retry delay (seconds, 0.001 to 86,400), doubling per retry.
    #[serde(default)]
    pub retry_backoff_seconds: Option<f64>,
    /// Cap on retry delays (seconds, at least `retry_backoff_seconds`).
    #[serde(default)]
    pub retry_backoff_max_seconds: Option<f64>,
}

impl QueueBody {
    /// The settings this body asks for, or every problem with it.
    pub fn settings(&self, name: &str) -> Result<QueueSettings, String> {
        let mut problems = Vec::new();
        let mut secs = |what: &str, v: Option<f64>| -> Option<std::time::Duration> {
            let v = v?;
            match std::time::Duration::try_from_secs_f64(v) {
                Ok(d) if v.is_finite() => Some(d),
                _ => {
                    problems.push(format!("{what} must be a number of seconds above 0"));
                    None
                }
            }
        };
        let timeout = secs("timeout_seconds", self.timeout_seconds);
        let backoff = secs("retry_backoff_seconds", self.retry_backoff_seconds);
        let backoff_max = secs("retry_backoff_max_seconds", self.retry_backoff_max_seconds);
        let settings = QueueSettings {
            name: name.to_string(),
            paused: self.paused,
            max_concurrency: self.max_concurrency,
            rate_per_second: self.rate_per_second,
            burst: self.burst,
            max_retries: self.max_retries,
            timeout,
            backoff,
            backoff_max,
        };
        if let Some(why) = settings.problem() {
            problems.push(why);
        }
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(problems.join("; "))
        }
    }
}

fn check_name(name: &str, req: &HttpRequest) -> Result<(), ApiError> {
    match fleet_q_actors::queue::name_problem(name) {
        Some(why) => Err(ApiError::validation(format!("queue name {why}"), req)),
        None => Ok(()),
    }
}

async fn view(st: &AppState, name: &str, req: &HttpRequest) -> ApiResult {
    let q = st
        .pod
        .queues()
        .await
        .map_err(|e| ApiError::store(&e, req))?
        .into_iter()
        .find(|q| q.settings.name == name)
        .ok_or_else(|| ApiError::new(ErrorType::NotFound, format!("no queue {name}"), req))?;
    Ok(HttpResponse::Ok().json(QueueView::from(q)))
}

/// Every queue with its settings and live counts.
#[utoipa::path(get, path = "/admin/queues", tag = "admin",
    responses((status = 200, body = QueuesResponse), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 503, body = ApiError)))]
pub(crate) async fn list(req: HttpRequest, st: web::Data<AppState>) -> ApiResult {
    require_admin(&req, &st)?;
    let queues = st
        .pod
        .queues()
        .await
        .map_err(|e| ApiError::store(&e, &req))?;
    Ok(HttpResponse::Ok().json(QueuesResponse {
        queues: queues.into_iter().map(QueueView::from).collect(),
    }))
}

/// One queue.
#[utoipa::path(get, path = "/admin/queues/{name}", tag = "admin",
    params(("name" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueueView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn get(
    req: HttpRequest,
    st: web::Data<AppState>,
    name: web::Path<String>,
) -> ApiResult {
    require_admin(&req, &st)?;
    check_name(&name, &req)?;
    view(&st, &name, &req).await
}

/// Create a queue or replace its settings.
#[utoipa::path(put, path = "/admin/queues/{name}", tag = "admin", request_body = QueueBody,
    params(("name" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueueView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn put(
    req: HttpRequest,
    st: web::Data<AppState>,
    name: web::Path<String>,
    body: web::Json<QueueBody>,
) -> ApiResult {
    require_admin(&req, &st)?;
    let settings = body
        .settings(&name)
        .map_err(|why| ApiError::validation(why, &req))?;
    st.pod
        .put_queue(settings)
        .await
        .map_err(|e| ApiError::store(&e, &req))?;
    view(&st, &name, &req).await
}

async fn set_paused(
    req: HttpRequest,
    st: web::Data<AppState>,
    name: &str,
    paused: bool,
) -> ApiResult {
    require_admin(&req, &st)?;
    check_name(name, &req)?;
    st.pod
        .set_queue_paused(name, paused)
        .await
        .map_err(|e| ApiError::store(&e, &req))?;
    view(&st, name, &req).await
}

/// Pause a queue: no pod claims its steps until it is resumed.
#[utoipa::path(post, path = "/admin/queues/{name}/pause", tag = "admin",
    params(("name" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueueView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn pause(
    req: HttpRequest,
    st: web::Data<AppState>,
    name: web::Path<String>,
) -> ApiResult {
    set_paused(req, st, &name, true).await
}

/// Resume a paused queue.
#[utoipa::path(post, path = "/admin/queues/{name}/resume", tag = "admin",
    params(("name" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueueView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn resume(
    req: HttpRequest,
    st: web::Data<AppState>,
    name: web::Path<String>,
) -> ApiResult {
    set_paused(req, st, &name, false).await
}
