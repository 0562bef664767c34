//! Fault injection routes, registered only in builds with fault injection
//! compiled in (tests); not part of the documented API.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::api::dto::Injected;
use crate::api::error::{ApiError, ApiResult, ErrorType};
use crate::api::AppState;

/// `POST /debug/fault/{actor}/{panic|fatal}`: registered only in builds with fault
/// injection compiled in (tests); not part of the documented API.
pub(crate) async fn inject_fault(
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
        Ok(HttpResponse::Accepted().json(Injected {
            actor: Some(actor),
            injected: true,
        }))
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
pub(crate) async fn inject_heartbeat_failure(
    req: HttpRequest,
    st: web::Data<AppState>,
    secs: web::Path<u64>,
) -> ApiResult {
    if st
        .pod
        .inject_heartbeat_failure(Duration::from_secs(secs.into_inner()))
    {
        Ok(HttpResponse::Accepted().json(Injected {
            actor: None,
            injected: true,
        }))
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
pub(crate) async fn panic_in_handler() -> HttpResponse {
    panic!("injected panic in a request handler");
}
