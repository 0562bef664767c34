//! The handlers, by area: [`probes`], [`steps`] (clients), [`admin`], and
//! [`debug`] (fault injection, test builds only). The route table itself is in
//! [`crate::api`].

pub(crate) mod admin;
pub(crate) mod debug;
pub(crate) mod finder;
pub(crate) mod probes;
pub(crate) mod queues;
pub(crate) mod schedules;
pub(crate) mod steps;

use actix_web::HttpRequest;
use fleet_q_actors::{Step, StepId};

use super::error::{truncate, ApiError, ErrorType, QUOTE_MAX};
use super::AppState;

/// The step named by a path segment: 400 for a malformed id, 404 when absent.
pub(crate) async fn fetch_step(
    raw: &str,
    st: &AppState,
    req: &HttpRequest,
) -> Result<Step, ApiError> {
    let id = parse_id(raw, req)?;
    st.pod
        .step(id)
        .await
        .map_err(|e| ApiError::store(&e, req))?
        .ok_or_else(|| ApiError::new(ErrorType::NotFound, format!("no step {id}"), req))
}

pub(crate) fn parse_id(raw: &str, req: &HttpRequest) -> Result<StepId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::validation(
            format!("step_id {:?} is not a UUID", truncate(raw, QUOTE_MAX)),
            req,
        )
    })
}
