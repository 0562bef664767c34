//! The web dashboard: served by every pod at `/ui` (`/` redirects there) from
//! HTML rendered here and two small assets compiled into the binary (no CDN,
//! no Node toolchain). `FLEET_Q_UI=off` leaves it unrouted;
//! `FLEET_Q_UI_READ_ONLY=on` hides its actions and the server refuses them.
//!
//! Pages use the engine calls the JSON API uses ([`crate::api::search`],
//! [`fleet_q_actors::Pod`]); no page reads the store another way, and every
//! count comes from the history-safe statistics or a bounded search.
//!
//! - [`session`]: sign-in with the admin token, the session cookie, CSRF.
//! - [`layout`]: the shell, badges, the throughput chart.
//! - [`pages`]: Overview (live, polled every 2 s while visible) and Fleet.
//! - [`steps`]: Steps, Step detail, Failed, bulk confirmation.

pub mod layout;
pub mod pages;
mod queues;
mod schedules;
pub mod session;
pub mod steps;

use std::time::Duration;

use actix_web::cookie::Cookie;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use fleet_q_actors::{BulkAction, CancelOutcome, RetryOutcome};
use maud::{html, Markup};
use serde::Deserialize;

use crate::api::search::{run_bulk, ActionError, BulkRequest, FilterQuery, PageQuery};
use crate::api::AppState;
use layout::{message, page, Viewer};

/// Dashboard settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct UiConfig {
    /// Hide actions and refuse them.
    pub read_only: bool,
}

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");
const ICON: &str = include_str!("assets/favicon.svg");

/// Scripts and styles come from this pod only; no page can be framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Registers `/` and every `/ui` route.
pub fn routes(cfg: &mut web::ServiceConfig, ui: UiConfig) {
    cfg.app_data(web::Data::new(ui))
        .route("/", web::get().to(root))
        .route("/ui", web::get().to(overview))
        .route("/ui/", web::get().to(overview))
        .route("/ui/live/overview", web::get().to(overview_live))
        .route("/ui/steps", web::get().to(steps_page))
        .route("/ui/steps/{id}", web::get().to(step_page))
        .route("/ui/steps/{id}/{action}", web::post().to(step_action))
        .route("/ui/failed", web::get().to(failed_page))
        .route("/ui/fleet", web::get().to(fleet_page))
        .route("/ui/queues", web::get().to(queues_page))
        .route(
            "/ui/queues/{name}/{action}",
            web::post().to(queues::queue_action),
        )
        .route("/ui/schedules", web::get().to(schedules_page))
        .route(
            "/ui/schedules/{id}/{action}",
            web::post().to(schedules::action),
        )
        .route("/ui/bulk", web::post().to(bulk))
        .route("/ui/login", web::get().to(login_page))
        .route("/ui/login", web::post().to(login))
        .route("/ui/logout", web::post().to(logout))
        .route("/ui/assets/app.css", web::get().to(css))
        .route("/ui/assets/app.js", web::get().to(js))
        .route("/ui/assets/favicon.svg", web::get().to(icon));
}

async fn root() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, "/ui"))
        .finish()
}

async fn css() -> HttpResponse {
    asset(CSS, "text/css; charset=utf-8")
}

async fn icon() -> HttpResponse {
    asset(ICON, "image/svg+xml")
}

async fn js() -> HttpResponse {
    asset(JS, "text/javascript; charset=utf-8")
}

fn asset(body: &'static str, kind: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(kind)
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(body)
}

/// The viewer of this request, and the CSRF cookie to set if it is new.
struct Ctx {
    viewer: Viewer,
    new_csrf: Option<Cookie<'static>>,
}

fn ctx(req: &HttpRequest, st: &AppState, ui: &UiConfig) -> Ctx {
    let (csrf, new) = session::csrf_token(req);
    let new_csrf = new.then(|| {
        session::cookie(
            req,
            session::CSRF_COOKIE,
            csrf.clone(),
            Duration::from_secs(7 * 86_400),
        )
    });
    Ctx {
        viewer: Viewer {
            csrf,
            signed_in_with_token: st.admin_token.is_some(),
            read_only: ui.read_only,
            pod_id: st.pod.state().pod_id(),
        },
        new_csrf,
    }
}

fn respond(status: actix_web::http::StatusCode, markup: Markup, c: &Ctx) -> HttpResponse {
    let mut r = HttpResponse::build(status);
    r.content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("Content-Security-Policy", CSP))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "same-origin"));
    if let Some(k) = &c.new_csrf {
        r.cookie(k.clone());
    }
    r.body(markup.into_string())
}

fn ok(markup: Markup, c: &Ctx) -> HttpResponse {
    respond(actix_web::http::StatusCode::OK, markup, c)
}

/// A whole page: the shell around `body`, with the notice a redirect after an
/// action carries.
fn shell(req: &HttpRequest, c: &Ctx, title: &str, current: &str, body: Markup) -> HttpResponse {
    let body = html! { @if let Some(f) = flash(req) { (f) } (body) };
    ok(page(title, current, &c.viewer, body), c)
}

/// Without a session (when a token is set): pages redirect to the sign-in.
fn signed_out_redirect(req: &HttpRequest, st: &AppState) -> Option<HttpResponse> {
    if session::signed_in(req, st.admin_token.as_ref()) {
        return None;
    }
    Some(
        HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/ui/login"))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish(),
    )
}

fn refusal(status: actix_web::http::StatusCode, why: &str, c: &Ctx) -> HttpResponse {
    respond(
        status,
        page(
            "Refused",
            "",
            &c.viewer,
            html! { h1 { "Refused" } (message(false, why)) p { a href="/ui" { "Back to the dashboard" } } },
        ),
        c,
    )
}

/// The checks every action passes: a session, not read-only, the CSRF pair.
fn check_action(req: &HttpRequest, st: &AppState, c: &Ctx, csrf: &str) -> Option<HttpResponse> {
    use actix_web::http::StatusCode;
    if !session::signed_in(req, st.admin_token.as_ref()) {
        return Some(refusal(
            StatusCode::UNAUTHORIZED,
            "Sign in with the admin token first.",
            c,
        ));
    }
    if c.viewer.read_only {
        return Some(refusal(
            StatusCode::FORBIDDEN,
            "This dashboard is read-only (FLEET_Q_UI_READ_ONLY=on).",
            c,
        ));
    }
    if let Err(why) = session::check_post(req, csrf) {
        return Some(refusal(StatusCode::FORBIDDEN, why, c));
    }
    None
}

/// A notice carried by a redirect after an action (`done`, `n`): fixed texts
/// only, so a crafted link cannot make the page say something else.
fn flash(req: &HttpRequest) -> Option<Markup> {
    #[derive(Deserialize)]
    struct Q {
        done: Option<String>,
        n: Option<u64>,
    }
    let q = web::Query::<Q>::from_query(req.query_string()).ok()?;
    let n = q.n.unwrap_or(0);
    let text = match q.done.as_deref()? {
        "cancelled" => format!("{n} step(s) cancelled."),
        "retried" => format!("{n} step(s) put back to pending."),
        "paused" => "Paused.".into(),
        "resumed" => "Resumed.".into(),
        "limited" => "Limits set.".into(),
        "triggered" => "Fired once: the step was submitted.".into(),
        "unchanged" => {
            "Nothing changed: the step was no longer in a status the action applies to.".into()
        }
        _ => return None,
    };
    Some(message(true, &text))
}

async fn overview(
    req: HttpRequest,
    st: web::Data<AppState>,
    ui: web::Data<UiConfig>,
) -> HttpResponse {
    if let Some(r) = signed_out_redirect(&req, &st) {
        return r;
    }
    let c = ctx(&req, &st, &ui);
    let live = pages::overview_live(&st).await;
    let body = html! {
        h1 { "Overview" }
        div id="live" data-live="/ui/live/overview" aria-live="polite" { (live) }
    };
    ok(page("Overview", "/ui", &c.viewer, body), &c)
}

async fn overview_live(
    req: HttpRequest,
    st: web::Data<AppState>,
    ui: web::Data<UiConfig>,
) -> HttpResponse {
    let c = ctx(&req, &st, &ui);
    if !session::signed_in(&req, st.admin_token.as_ref()) {
        return refusal(
            actix_web::http::StatusCode::UNAUTHORIZED,
            "Sign in first.",
            &c,
        );
    }
    ok(pages::overview_live(&st).await, &c)
}

async fn steps_page(
    req: HttpRequest,
    st: web::Data<AppState>,
    ui: web::Data<UiConfig>,
) -> HttpResponse {
    if let Some(r) = signed_out_redirect(&req, &st) {
        return r;
    }
    let c = ctx(&req, &st, &ui);
    let q = web::Query::<FilterQuery>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    let p = web::Query::<PageQuery>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    shell(
        &req,
        &c,
        "Steps",
        "/ui/steps",
        steps::list(&st, &c.viewer, &q, &p).await,
    )
}

async fn step_page(
    req: HttpRequest,
    st: web::Data<AppState>,
    ui: web::Data<UiConfig>,
    id: web::Path<String>,
) -> HttpResponse {
    if let Some(r) = signed_out_redirect(&req, &st) {
        return r;
    }
    let c = ctx(&req, &st, &ui);
    let url = {
        let info = req.connection_info();
        format!("{}://{}", info.scheme(), info.host())
    };
    shell(
        &req,
        &c,
        "Step",
        "/ui/steps",
        steps::detail(&st, &c.viewer, &id, &url).await,
    )
}

async fn failed_page(
    req: HttpRequest,
    st: web::Data<AppState>,
    ui: web::Data<UiConfig>,
) -> HttpResponse {
    if let Some(r) = signed_out_redirect(&req, &st) {
        return r;
    }
    let c = ctx(&req, &st, &ui);
    shell(
        &req,
        &c,
        "Failed",
        "/ui/failed",
        steps::failed(&st, &c.viewer).await,
    )
}

async fn queues_page(
    req: HttpRequest,
    st: web::Data<AppState>,
    ui: web::Data<UiConfig>,
) -> HttpResponse {
    if let Some(r) = signed_out_redirect(&req, &st) {
        return r;
    }
    let c = ctx(&req, &st, &ui);
    shell(
        &req,
        &c,
        "Queues",
        "/ui/queues",
        pages::queues(&st, &c.viewer).await,
    )
}

async fn schedules_page(
    req: HttpRequest,
    st: web::Data<AppState>,
    ui: web::Data<UiConfig>,
) -> HttpResponse {
    if let Some(r) = signed_out_redirect(&req, &st) {
        return r;
    }
    let c = ctx(&req, &st, &ui);
    shell(
        &req,
        &c,
        "Schedules",
        "/ui/schedules",
        schedules::page(&st, &c.viewer).await,
    )
}

async fn fleet_page(
    req: HttpRequest,
    st: web::Data<AppState>,
    ui: web::Data<UiConfig>,
) -> HttpResponse {
    if let Some(r) = signed_out_redirect(&req, &st) {
        return r;
    }
    let c = ctx(&req, &st, &ui);
    ok(
        page("Fleet", "/ui/fleet", &c.viewer, pages::fleet(&st).await),
        &c,
    )
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to.to_string()))
        .finish()
}

async fn step_action(
    req: HttpRequest,
    st: web::Data<AppState>,
    ui: web::Data<UiConfig>,
    path: web::Path<(String, String)>,
    form: web::Form<CsrfForm>,
) -> HttpResponse {
    let c = ctx(&req, &st, &ui);
    if let Some(r) = check_action(&req, &st, &c, &form.csrf) {
        return r;
    }
    let (raw, action) = path.into_inner();
    let Ok(id) = raw.parse::<fleet_q_actors::StepId>() else {
        return refusal(
            actix_web::http::StatusCode::BAD_REQUEST,
            "That is not a step id.",
            &c,
        );
    };
    let back = format!("/ui/steps/{id}");
    let done = match action.as_str() {
        "cancel" => st.pod.cancel_step(id).await.map(|o| match o {
            CancelOutcome::Cancelled => "cancelled&n=1",
            _ => "unchanged",
        }),
        "retry" => st.pod.retry_step(id).await.map(|o| match o {
            RetryOutcome::Requeued => "retried&n=1",
            _ => "unchanged",
        }),
        _ => {
            return refusal(
                actix_web::http::StatusCode::NOT_FOUND,
                "No such action.",
                &c,
            )
        }
    };
    match done {
        Ok(d) => see_other(&format!("{back}?done={d}")),
        Err(e) => refusal(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            &format!("The store did not answer: {e}"),
            &c,
        ),
    }
}

/// Only paths of the dashboard itself: no open redirect.
fn safe_back(back: Option<&str>) -> String {
    match back {
        Some(b) if b.starts_with("/ui") && !b.starts_with("//") && !b.contains('\\') => {
            b.to_string()
        }
        _ => "/ui/steps".to_string(),
    }
}

fn with_flash(back: &str, done: &str, n: usize) -> String {
    let sep = if back.contains('?') { '&' } else { '?' };
    format!("{back}{sep}done={done}&n={n}")
}

async fn bulk(
    req: HttpRequest,
    st: web::Data<AppState>,
    ui: web::Data<UiConfig>,
    body: web::Bytes,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let c = ctx(&req, &st, &ui);
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if let Some(r) = check_action(&req, &st, &c, get("csrf").unwrap_or("")) {
        return r;
    }
    let back = safe_back(get("back"));
    let (action, scope) = match get("do").and_then(|d| d.split_once('-')) {
        Some(("retry", s)) => (BulkAction::Retry, s),
        Some(("cancel", s)) => (BulkAction::Cancel, s),
        _ => return refusal(StatusCode::BAD_REQUEST, "No action was chosen.", &c),
    };
    let name = crate::api::search::action_name(action);
    let filter = {
        let fields: Vec<(String, String)> = pairs
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("filter.")
                    .map(|k| (k.to_string(), v.clone()))
            })
            .collect();
        let encoded = serde_urlencoded::to_string(&fields).unwrap_or_default();
        web::Query::<FilterQuery>::from_query(&encoded)
            .map(|q| q.into_inner())
            .unwrap_or_default()
    };
    let request = match scope {
        "selected" => {
            let ids: Vec<String> = pairs
                .iter()
                .filter(|(k, _)| k == "step_id")
                .map(|(_, v)| v.clone())
                .collect();
            if ids.is_empty() {
                return refusal(StatusCode::BAD_REQUEST, "Select at least one step.", &c);
            }
            BulkRequest {
                action,
                step_ids: Some(ids),
                filter: None,
                max: None,
                dry_run: false,
            }
        }
        "matching" => {
            if filter.is_empty() {
                return refusal(
                    StatusCode::BAD_REQUEST,
                    "Set a filter first: acting on every step is not offered.",
                    &c,
                );
            }
            BulkRequest {
                action,
                step_ids: None,
                filter: Some(filter.clone()),
                max: None,
                dry_run: get("confirm") != Some("1"),
            }
        }
        _ => return refusal(StatusCode::BAD_REQUEST, "No action was chosen.", &c),
    };
    match run_bulk(&st.pod, request).await {
        Ok(r) if r.dry_run => ok(
            page(
                "Confirm",
                "/ui/steps",
                &c.viewer,
                steps::confirm(&c.viewer, name, &filter, r.matched, r.complete, &back),
            ),
            &c,
        ),
        Ok(r) => {
            let done = if action == BulkAction::Retry {
                "retried"
            } else {
                "cancelled"
            };
            see_other(&with_flash(&back, done, r.changed))
        }
        Err(ActionError::Invalid(p)) => refusal(StatusCode::BAD_REQUEST, &p.join("; "), &c),
        Err(ActionError::Store(e)) => refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("The store did not answer: {e}"),
            &c,
        ),
    }
}

async fn login_page(
    req: HttpRequest,
    st: web::Data<AppState>,
    ui: web::Data<UiConfig>,
) -> HttpResponse {
    if st.admin_token.is_none() || session::signed_in(&req, st.admin_token.as_ref()) {
        return see_other("/ui");
    }
    let c = ctx(&req, &st, &ui);
    ok(login_form(&c, None), &c)
}

fn login_form(c: &Ctx, error: Option<&str>) -> Markup {
    page(
        "Sign in",
        "",
        &c.viewer,
        html! {
            h1 { "Sign in" }
            @if let Some(e) = error { (message(false, e)) }
            form.panel method="post" action="/ui/login" {
                input type="hidden" name="csrf" value=(c.viewer.csrf);
                label { "Admin token (FLEET_Q_ADMIN_TOKEN)" input type="password" name="token" id="token" autocomplete="current-password" required; }
                p { button type="submit" id="sign-in" { "Sign in" } }
            }
        },
    )
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
}

async fn login(
    req: HttpRequest,
    st: web::Data<AppState>,
    ui: web::Data<UiConfig>,
    form: web::Form<LoginForm>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let c = ctx(&req, &st, &ui);
    let Some(token) = &st.admin_token else {
        return see_other("/ui");
    };
    if let Err(why) = session::check_post(&req, &form.csrf) {
        return refusal(StatusCode::FORBIDDEN, why, &c);
    }
    if !session::token_matches(token, &form.token) {
        return respond(
            StatusCode::FORBIDDEN,
            login_form(&c, Some("That token is not valid.")),
            &c,
        );
    }
    let s = session::cookie(
        &req,
        session::SESSION_COOKIE,
        session::new_session(token),
        session::SESSION_TTL,
    );
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/ui"))
        .cookie(s)
        .finish()
}

async fn logout(
    req: HttpRequest,
    st: web::Data<AppState>,
    ui: web::Data<UiConfig>,
    form: web::Form<CsrfForm>,
) -> HttpResponse {
    let c = ctx(&req, &st, &ui);
    if let Err(why) = session::check_post(&req, &form.csrf) {
        return refusal(actix_web::http::StatusCode::FORBIDDEN, why, &c);
    }
    let mut gone = session::cookie(&req, session::SESSION_COOKIE, String::new(), Duration::ZERO);
    gone.make_removal();
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/ui/login"))
        .cookie(gone)
        .finish()
}
