//! The Schedules page: each schedule's timing, its next fires, its last fires
//! linked to their steps, and pause, resume and trigger. It reads
//! `SCHEDULES` only (at most `MAX_SCHEDULES` rows), never the steps.

use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{message, status_badge, time, Viewer};
use super::{check_action, ctx, refusal, see_other, UiConfig};
use crate::api::AppState;
use fleet_q_actors::schedule::Schedule;

/// Upcoming fires shown per schedule.
const NEXT_SHOWN: usize = 3;

fn timing_text(s: &Schedule) -> String {
    match (&s.spec.cron, s.spec.every_seconds) {
        (Some(c), _) => format!("cron {c} ({})", s.spec.time_zone),
        (None, Some(n)) => format!("every {n} s"),
        _ => "-".into(),
    }
}

fn next_fires(s: &Schedule) -> Vec<String> {
    if s.spec.paused {
        return Vec::new();
    }
    let (Some(next), Ok(t)) = (s.next_run_at, s.spec.timing()) else {
        return Vec::new();
    };
    std::iter::once(next)
        .chain(t.upcoming(next, NEXT_SHOWN - 1))
        .map(time)
        .collect()
}

pub(super) async fn page(st: &AppState, viewer: &Viewer) -> Markup {
    let all = match st.pod.schedules().await {
        Ok(s) => s,
        Err(e) => return message(false, &format!("The store did not answer: {e}")),
    };
    html! {
        h1 { "Schedules" }
        p.muted { "The leader fires each tick once: its step carries the idempotency key schedule:{id}:{tick}. Ticks missed while no leader ran follow the schedule's catch-up policy; times are UTC. Make and change schedules with the API, the CLI or the settings file (README, Schedules)." }
        @if all.is_empty() {
            p { "No schedules yet." }
        }
        div.panel {
            table id="schedules" {
                thead { tr { th { "schedule" } th { "state" } th { "timing" } th { "step" } th { "next fires" } th { "last fires" } th { "fired" } th { "skipped" } @if !viewer.read_only { th { "actions" } } } }
                tbody {
                    @for s in &all {
                        @let name = &s.spec.name;
                        tr data-schedule=(name) {
                            td { (name) br; span.muted { (s.spec.catch_up.as_str()) " catch-up, overlap " (s.spec.overlap.as_str()) } }
                            td { (status_badge(if s.spec.paused { "paused" } else { "running" })) }
                            td { (timing_text(s)) }
                            td { (s.spec.step.step_type) @if let Some(q) = &s.spec.step.queue { span.muted { " in " (q) } } }
                            td.next { @for t in next_fires(s) { div { (t) } } }
                            td.last {
                                @for f in s.recent.iter().take(5) {
                                    div { a href={"/ui/steps/" (f.step_id)} { (time(f.tick)) } @if f.manual { span.muted { " (trigger)" } } }
                                }
                            }
                            td.fires { (s.fires) }
                            td { (s.skipped) }
                            @if !viewer.read_only {
                                td {
                                    div.row {
                                        form method="post" action={"/ui/schedules/" (s.id) "/" (if s.spec.paused { "resume" } else { "pause" })} {
                                            input type="hidden" name="csrf" value=(viewer.csrf);
                                            button.secondary.toggle type="submit" { (if s.spec.paused { "Resume" } else { "Pause" }) }
                                        }
                                        form method="post" action={"/ui/schedules/" (s.id) "/trigger"} {
                                            input type="hidden" name="csrf" value=(viewer.csrf);
                                            button.secondary.trigger type="submit" { "Trigger" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub(super) struct ActionForm {
    #[serde(default)]
    csrf: String,
}

pub(super) async fn action(
    req: HttpRequest,
    st: web::Data<AppState>,
    ui: web::Data<UiConfig>,
    path: web::Path<(String, String)>,
    form: web::Form<ActionForm>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let c = ctx(&req, &st, &ui);
    if let Some(r) = check_action(&req, &st, &c, &form.csrf) {
        return r;
    }
    let (id, action) = path.into_inner();
    if fleet_q_actors::queue::name_problem(&id).is_some() {
        return refusal(StatusCode::BAD_REQUEST, "No such schedule.", &c);
    }
    let done = match action.as_str() {
        "pause" | "resume" => st
            .pod
            .set_schedule_paused(&id, action == "pause")
            .await
            .map(|s| {
                s.map(|_| {
                    if action == "pause" {
                        "paused"
                    } else {
                        "resumed"
                    }
                })
            }),
        "trigger" => st
            .pod
            .trigger_schedule(&id)
            .await
            .map(|s| s.map(|_| "triggered")),
        _ => return refusal(StatusCode::NOT_FOUND, "No such action.", &c),
    };
    match done {
        Ok(Some(d)) => see_other(&format!("/ui/schedules?done={d}&n=1")),
        Ok(None) => refusal(StatusCode::NOT_FOUND, "No such schedule.", &c),
        Err(e) => refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("The store did not answer: {e}"),
            &c,
        ),
    }
}
