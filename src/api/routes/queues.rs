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
    /// Most steps of this queue claimed at once across the fleet (absent: no
    /// limit).
    pub max_concurrency: Option<u32>,
    /// Steps waiting.
    pub pending: u64,
    /// Steps claimed now.
    pub claimed: u64,
}

impl From<QueueInfo> for QueueView {
    fn from(q: QueueInfo) -> Self {
        QueueView {
            name: q.settings.name,
            paused: q.settings.paused,
            max_concurrency: q.settings.max_concurrency,
            pending: q.pending,
            claimed: q.claimed,
        }
    }
}

/// `GET /admin/queues`.
#[derive(Serialize, ToSchema)]
pub struct QueuesResponse {
    /// Every queue, by name.
    pub queues: Vec<QueueView>,
}

/// `PUT /admin/queues/{name}`: the queue's whole settings.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueBody {
    /// Paused (default false).
    #[serde(default)]
    pub paused: bool,
    /// 1 to 1,000,000 steps claimed at once across the fleet; absent or null:
    /// no limit.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
}

/// Largest `max_concurrency`.
pub const MAX_CONCURRENCY: u32 = 1_000_000;

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
    let mut problems = Vec::new();
    if let Some(why) = fleet_q_actors::queue::name_problem(&name) {
        problems.push(format!("queue name {why}"));
    }
    if body
        .max_concurrency
        .is_some_and(|m| m == 0 || m > MAX_CONCURRENCY)
    {
        problems.push(format!(
            "max_concurrency must be 1 to {MAX_CONCURRENCY} (pause the queue to stop it)"
        ));
    }
    if !problems.is_empty() {
        return Err(ApiError::validation(problems.join("; "), &req));
    }
    st.pod
        .put_queue(QueueSettings {
            name: name.to_string(),
            paused: body.paused,
            max_concurrency: body.max_concurrency,
        })
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
