//! Admin routes (bearer token when `FLEET_Q_ADMIN_TOKEN` is set): cancel and
//! retry a step, the leader, queue statistics, recovery cycles, failed steps.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use fleet_q_actors::{
    eldest_live_pod, metrics, CancelOutcome, PageParams, PodRecord, RecoveryError, RecoverySummary,
    RetryOutcome,
};

use super::{fetch_step, parse_id};
use crate::api::auth::require_admin;
use crate::api::dto::{
    Counts, ElectionDetails, EligiblePod, FailedPage, LeaderResponse, Page, PodCapacity,
    QueueResponse, RecoveryCycles, RecoveryRequest, RecoveryRunResponse, StepChanged, StepView,
};
use crate::api::error::{ApiError, ApiResult, ErrorType};
use crate::api::metrics::CANCELLED;
use crate::api::AppState;

/// Cancel a pending step (admin).
#[utoipa::path(delete, path = "/steps/{step_id}", tag = "admin",
    params(("step_id" = String, Path, description = "Step id (UUID)")),
    responses((status = 200, body = StepChanged, description = "Cancelled"), (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError), (status = 409, body = ApiError, description = "Not pending")))]
pub(crate) async fn cancel(
    req: HttpRequest,
    st: web::Data<AppState>,
    id: web::Path<String>,
) -> ApiResult {
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
            Ok(HttpResponse::Ok().json(StepChanged {
                step_id: id.to_string(),
                status: "cancelled",
                message: "step cancelled",
            }))
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
    responses((status = 200, body = LeaderResponse),
              (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 503, body = ApiError)))]
pub(crate) async fn admin_leader(req: HttpRequest, st: web::Data<AppState>) -> ApiResult {
    require_admin(&req, &st)?;
    let snap = st.snapshot().await.map_err(|e| ApiError::store(&e, &req))?;
    let live: Vec<&PodRecord> = snap
        .pods
        .iter()
        .filter(|p| p.is_alive(st.dead_pod_threshold))
        .collect();
    let leader = eldest_live_pod(&snap.pods, st.dead_pod_threshold);
    let eligible_pods = live
        .iter()
        .map(|p| EligiblePod {
            pod_id: p.pod_id.clone(),
            birth_ts: p.birth_ts,
            last_heartbeat_ts: p.last_heartbeat_ts,
            is_leader: leader.is_some_and(|l| l.pod_id == p.pod_id),
        })
        .collect();
    Ok(HttpResponse::Ok().json(LeaderResponse {
        current_leader: leader.map(|l| l.pod_id.clone()),
        leader_birth_ts: leader.map(|l| l.birth_ts),
        active_pods: live.len(),
        last_election_check: st.pod.state().last_election_check().unwrap_or(snap.now),
        this_pod: st.pod.state().pod_id().to_string(),
        this_pod_is_leader: st.pod.state().is_leader(),
        election_details: ElectionDetails { eligible_pods },
    }))
}

/// Queue depth and fleet capacity (cached for a couple of seconds).
#[utoipa::path(get, path = "/admin/queue", tag = "admin",
    responses((status = 200, body = QueueResponse), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 503, body = ApiError)))]
pub(crate) async fn admin_queue(req: HttpRequest, st: web::Data<AppState>) -> ApiResult {
    require_admin(&req, &st)?;
    let snap = st.snapshot().await.map_err(|e| ApiError::store(&e, &req))?;
    let c = &snap.stats.counts;
    let live: Vec<&PodRecord> = snap
        .pods
        .iter()
        .filter(|p| p.is_alive(st.dead_pod_threshold))
        .collect();
    let pod_capacity = live
        .iter()
        .map(|p| {
            (
                p.pod_id.clone(),
                PodCapacity {
                    current: p.capacity_in_use,
                    max: p.max_capacity,
                },
            )
        })
        .collect();
    let (by_type, omitted) = largest_types(&snap.stats.by_type, MAX_TYPES_SHOWN);
    Ok(HttpResponse::Ok().json(QueueResponse {
        pending_steps: c.pending,
        claimed_steps: c.claimed,
        completed_steps: c.completed,
        failed_steps: c.failed,
        cancelled_steps: c.cancelled,
        active_pods: live.len(),
        current_leader: eldest_live_pod(&snap.pods, st.dead_pod_threshold)
            .map(|l| l.pod_id.clone()),
        queue_depth_by_priority: snap.stats.pending_by_priority.clone(),
        steps_by_type: by_type
            .into_iter()
            .map(|(k, v)| (k.to_string(), Counts::from(v)))
            .collect(),
        steps_by_type_omitted: omitted,
        pod_capacity,
        oldest_pending_age_seconds: snap.stats.oldest_pending_age.map(|a| a.as_secs_f64()),
        as_of: snap.now,
    }))
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
    responses((status = 200, body = RecoveryRunResponse), (status = 401, body = ApiError),
              (status = 403, body = ApiError, description = "Not the leader"), (status = 409, body = ApiError, description = "A cycle is running")))]
pub(crate) async fn admin_recovery_run(
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
        Ok(summary) => Ok(HttpResponse::Ok().json(RecoveryRunResponse {
            status: "completed",
            message: if summary.dry_run {
                "dry run: nothing was written"
            } else {
                "recovery cycle completed"
            },
            recovery_summary: summary,
        })),
        Err(RecoveryError::NotLeader) => Err(ApiError::new(
            ErrorType::PermissionDenied,
            format!(
                "this pod is not the leader; ask {}",
                st.pod
                    .state()
                    .leader()
                    .map(|t| t.pod_id)
                    .unwrap_or_else(|| "the leader".into())
            ),
            &req,
        )),
        Err(RecoveryError::AlreadyRunning) => Err(ApiError::new(
            ErrorType::Conflict,
            "a recovery cycle is already running",
            &req,
        )),
        Err(RecoveryError::Failed(e)) => {
            tracing::warn!(error = %e, "requested recovery cycle failed");
            Err(ApiError::new(
                ErrorType::DatabaseError,
                "the recovery cycle failed; see the pod's logs",
                &req,
            ))
        }
    }
}

/// Recent recovery cycles from this pod's ledger, newest first.
#[utoipa::path(get, path = "/admin/recovery", tag = "admin", params(Page),
    responses((status = 200, body = RecoveryCycles), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn admin_recovery(req: HttpRequest, st: web::Data<AppState>) -> ApiResult {
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
    Ok(HttpResponse::Ok().json(RecoveryCycles { cycles }))
}

/// Failed steps, a page at a time (by id).
#[utoipa::path(get, path = "/admin/failed", tag = "admin", params(Page),
    responses((status = 200, body = FailedPage), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn admin_failed(req: HttpRequest, st: web::Data<AppState>) -> ApiResult {
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
    Ok(HttpResponse::Ok().json(FailedPage {
        steps: views,
        next_after: next,
    }))
}

/// Put a failed step back to pending with a fresh retry budget.
#[utoipa::path(post, path = "/admin/steps/{step_id}/retry", tag = "admin",
    params(("step_id" = String, Path, description = "Step id (UUID)")),
    responses((status = 200, body = StepChanged, description = "Requeued"), (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError), (status = 409, body = ApiError, description = "Not failed")))]
pub(crate) async fn admin_retry(
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
        RetryOutcome::Requeued => Ok(HttpResponse::Ok().json(StepChanged {
            step_id: id.to_string(),
            status: "pending",
            message: "step requeued",
        })),
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
