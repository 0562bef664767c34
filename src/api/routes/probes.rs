//! Probes and documents: `/health` (liveness, from memory), `/ready`
//! (readiness: recent successful store writes) and `/openapi.json`.

use actix_web::{web, HttpResponse};
use serde_json::Value;
use utoipa::OpenApi;

use crate::api::dto::{HealthResponse, ReadyResponse, RecoveryHealth};
use crate::api::error::truncate;
use crate::api::AppState;

/// Liveness, from memory: never touches the database.
#[utoipa::path(get, path = "/health", tag = "probes",
    responses((status = 200, body = HealthResponse, description = "The pod is alive"), (status = 503, body = HealthResponse, description = "The pod is failing (restart budget exhausted)")))]
pub(crate) async fn health(st: web::Data<AppState>) -> HttpResponse {
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
    let body = HealthResponse {
        pod_id: s.pod_id().to_string(),
        status: if healthy { "healthy" } else { "unhealthy" },
        uptime_seconds: s.uptime().as_secs_f64(),
        current_capacity: s.running_count(),
        max_capacity: s.max_capacity(),
        is_leader: s.is_leader(),
        version: env!("CARGO_PKG_VERSION"),
        heartbeat_healthy: s.heartbeat_healthy(),
        quiet: s.quiet.is_quiet(),
        shutting_down: s.shutting_down(),
        fenced_results: s.fenced_results(),
        generation: s.generation(),
        recovery: recovery_view(s),
        actors,
    };
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
    responses((status = 200, body = ReadyResponse, description = "Ready for traffic"), (status = 503, body = ReadyResponse, description = "Not ready")))]
pub(crate) async fn ready(st: web::Data<AppState>) -> HttpResponse {
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
    } else if age.is_none_or(|a| a > ready_window(st.ready_window, s)) {
        Some("no write to the store succeeded recently".to_string())
    } else {
        None
    };
    let ready = reason.is_none();
    let body = ReadyResponse {
        status: if ready { "ready" } else { "not_ready" },
        reason,
        store_last_write_ok_seconds_ago: age.map(|a| a.as_secs_f64()),
        recovery: recovery_view(s),
        pod_id: s.pod_id().to_string(),
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// How recent the last successful write must be: the configured window, or
/// while the pod is quiet (it beats only at wakes) two declared intervals
/// and 5 s.
fn ready_window(
    configured: std::time::Duration,
    s: &fleet_q_actors::PodState,
) -> std::time::Duration {
    configured.max(s.quiet.declared_interval() * 2 + std::time::Duration::from_secs(5))
}

/// A leader whose recovery cycles failed this many times in a row is not ready.
pub const RECOVERY_FAILING_AFTER: u32 = 3;

fn recovery_view(s: &fleet_q_actors::PodState) -> RecoveryHealth {
    let (n, last) = s.recovery_failures();
    RecoveryHealth {
        failing: n >= RECOVERY_FAILING_AFTER,
        consecutive_failures: n,
        last_error: last.map(|e| truncate(&e, 200)),
    }
}

/// This API's OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "probes", responses((status = 200, body = Object, description = "OpenAPI 3 document")))]
pub(crate) async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(super::super::ApiDoc::openapi())
}
