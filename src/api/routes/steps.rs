//! Client routes: submit one step or a batch, read a step's state and the
//! idempotency key its handler receives.

use actix_web::{web, HttpRequest, HttpResponse};

use super::fetch_step;
use crate::api::dto::{
    BatchRequest, BatchResponse, IdempotencyResponse, StepView, SubmitRequest, SubmitResponse,
    MAX_BATCH,
};
use crate::api::error::{ApiError, ApiResult};
use crate::api::AppState;

/// With `FLEET_Q_CREATE_QUEUES=off`, a submit naming a queue that does not
/// exist is refused whole (400), before anything is stored.
async fn refuse_unknown_queues(
    st: &AppState,
    names: &[&str],
    req: &HttpRequest,
) -> Result<(), ApiError> {
    let unknown = st
        .pod
        .refused_queues(names)
        .await
        .map_err(|e| ApiError::store(&e, req))?;
    if unknown.is_empty() {
        return Ok(());
    }
    Err(ApiError::validation(
        format!(
            "queue {} does not exist and this fleet does not create queues on first use \
             (FLEET_Q_CREATE_QUEUES=off): create it with PUT /admin/queues/{{name}} (nothing was stored)",
            unknown.join(", ")
        ),
        req,
    ))
}

/// Submit one step.
#[utoipa::path(post, path = "/submit", tag = "steps", request_body = SubmitRequest,
    responses((status = 201, body = SubmitResponse), (status = 200, body = SubmitResponse, description = "Repeated idempotency key: the original step"),
              (status = 400, body = ApiError), (status = 413, body = ApiError), (status = 415, body = ApiError), (status = 503, body = ApiError)))]
pub(crate) async fn submit(
    req: HttpRequest,
    st: web::Data<AppState>,
    body: web::Json<SubmitRequest>,
) -> ApiResult {
    let step = body
        .into_inner()
        .into_step()
        .map_err(|e| ApiError::validation(e.to_string(), &req))?;
    refuse_unknown_queues(&st, &[step.queue()], &req).await?;
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
pub(crate) async fn submit_batch(
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
    let names: Vec<&str> = valid.iter().map(|s| s.queue()).collect();
    refuse_unknown_queues(&st, &names, &req).await?;
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
pub(crate) async fn status(
    req: HttpRequest,
    st: web::Data<AppState>,
    id: web::Path<String>,
) -> ApiResult {
    let step = fetch_step(&id, &st, &req).await?;
    Ok(HttpResponse::Ok().json(StepView::from(step)))
}

/// The idempotency key handlers receive for a step (stable across retries).
#[utoipa::path(get, path = "/idempotency/{step_id}", tag = "steps",
    params(("step_id" = String, Path, description = "Step id (UUID)")),
    responses((status = 200, body = IdempotencyResponse), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub(crate) async fn idempotency(
    req: HttpRequest,
    st: web::Data<AppState>,
    id: web::Path<String>,
) -> ApiResult {
    let step = fetch_step(&id, &st, &req).await?;
    Ok(HttpResponse::Ok().json(IdempotencyResponse {
        step_id: step.step_id.to_string(),
        idempotency_key: step.handler_idempotency_key(),
    }))
}
