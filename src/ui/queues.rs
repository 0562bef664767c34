//! The Queues page's actions: pause, resume, and the limits form (the
//! queue's other settings are kept).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::{check_action, ctx, refusal, see_other, UiConfig};
use crate::api::AppState;

#[derive(Deserialize)]
pub(super) struct QueueForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    max_concurrency: String,
    #[serde(default)]
    rate_per_second: String,
    #[serde(default)]
    burst: String,
}

pub(super) async fn queue_action(
    req: HttpRequest,
    st: web::Data<AppState>,
    ui: web::Data<UiConfig>,
    path: web::Path<(String, String)>,
    form: web::Form<QueueForm>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let c = ctx(&req, &st, &ui);
    if let Some(r) = check_action(&req, &st, &c, &form.csrf) {
        return r;
    }
    let (name, action) = path.into_inner();
    if let Some(why) = fleet_q_actors::queue::name_problem(&name) {
        return refusal(StatusCode::BAD_REQUEST, &format!("queue name {why}"), &c);
    }
    let done = match action.as_str() {
        "pause" => st.pod.set_queue_paused(&name, true).await.map(|_| "paused"),
        "resume" => st
            .pod
            .set_queue_paused(&name, false)
            .await
            .map(|_| "resumed"),
        "limit" => {
            // The form sets the limits; the queue's other settings stay.
            let current = st
                .pod
                .queues()
                .await
                .ok()
                .and_then(|qs| qs.into_iter().find(|q| q.settings.name == name))
                .map(|q| q.settings)
                .unwrap_or_else(|| fleet_q_actors::QueueSettings::new(name.clone()));
            let field = |raw: &str| -> Result<Option<f64>, ()> {
                let raw = raw.trim();
                if raw.is_empty() {
                    return Ok(None);
                }
                raw.parse::<f64>().map(Some).map_err(|_| ())
            };
            let (Ok(max), Ok(rate), Ok(burst)) = (
                field(&form.max_concurrency),
                field(&form.rate_per_second),
                field(&form.burst),
            ) else {
                return refusal(
                    StatusCode::BAD_REQUEST,
                    "Limits must be numbers, or empty for none.",
                    &c,
                );
            };
            let whole = |v: Option<f64>| -> Result<Option<u32>, ()> {
                match v {
                    None => Ok(None),
                    Some(x) if x.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&x) => {
                        Ok(Some(x as u32))
                    }
                    Some(_) => Err(()),
                }
            };
            let (Ok(max), Ok(burst)) = (whole(max), whole(burst)) else {
                return refusal(
                    StatusCode::BAD_REQUEST,
                    "The concurrency limit and the burst must be whole numbers.",
                    &c,
                );
            };
            let wanted = fleet_q_actors::QueueSettings {
                max_concurrency: max,
                rate_per_second: rate,
                burst,
                ..current
            };
            if let Some(why) = wanted.problem() {
                return refusal(StatusCode::BAD_REQUEST, &format!("Not set: {why}."), &c);
            }
            st.pod.put_queue(wanted).await.map(|_| "limited")
        }
        _ => return refusal(StatusCode::NOT_FOUND, "No such action.", &c),
    };
    match done {
        Ok(d) => see_other(&format!("/ui/queues?done={d}&n=1")),
        Err(e) => refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("The store did not answer: {e}"),
            &c,
        ),
    }
}
