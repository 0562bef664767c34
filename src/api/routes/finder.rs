//! `GET /admin/steps` (search) and `POST /admin/steps/bulk` (bulk retry and
//! cancel): the JSON side of the dashboard's Steps and Failed pages, through
//! the same engine calls ([`crate::api::search`]).

use actix_web::{web, HttpRequest, HttpResponse};

use crate::api::auth::require_admin;
use crate::api::dto::StepView;
use crate::api::error::{ApiError, ApiResult};
use crate::api::search::{
    run_bulk, run_search, ActionError, BulkRequest, BulkResponse, FilterQuery, PageQuery,
    SearchResponse,
};
use crate::api::AppState;

fn to_api(e: ActionError, req: &HttpRequest) -> ApiError {
    match e {
        ActionError::Invalid(p) => ApiError::validation(p.join("; "), req),
        ActionError::Store(e) => ApiError::store(&e, req),
    }
}

/// Steps matching a filter, newest first, a page at a time. A page reads at
/// most `scan` candidate rows (never a count of history): an empty page with a
/// `next` means "more may match further back".
#[utoipa::path(get, path = "/admin/steps", tag = "admin", params(FilterQuery, PageQuery),
    responses((status = 200, body = SearchResponse), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn admin_steps(req: HttpRequest, st: web::Data<AppState>) -> ApiResult {
    require_admin(&req, &st)?;
    let filter = web::Query::<FilterQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::validation(format!("invalid query string: {e}"), &req))?;
    let page = web::Query::<PageQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::validation(format!("invalid query string: {e}"), &req))?;
    let (_, found) = run_search(&st.pod, &filter, &page)
        .await
        .map_err(|e| to_api(e, &req))?;
    Ok(HttpResponse::Ok().json(SearchResponse {
        steps: found.steps.into_iter().map(StepView::from).collect(),
        next: found.next.map(|n| n.to_string()),
        scanned: found.scanned,
    }))
}

/// Retry failed steps or cancel pending ones, given by id or by filter (at most
/// 10000 per call; `dry_run` counts them first).
#[utoipa::path(post, path = "/admin/steps/bulk", tag = "admin", request_body = BulkRequest,
    responses((status = 200, body = BulkResponse), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn admin_steps_bulk(
    req: HttpRequest,
    st: web::Data<AppState>,
    body: web::Json<BulkRequest>,
) -> ApiResult {
    require_admin(&req, &st)?;
    let r = run_bulk(&st.pod, body.into_inner())
        .await
        .map_err(|e| to_api(e, &req))?;
    Ok(HttpResponse::Ok().json(r))
}
