//! Schedule routes (admin): list, create, read, replace, delete, pause,
//! resume and trigger. Schedules live in the store (`SCHEDULES`) and the
//! leader fires them (see `fleet_q_actors::schedule`); a change made through
//! any pod is seen by the leader at once when it is that pod, else within
//! `FLEET_Q_SCHEDULE_CHECK_SECONDS`.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use fleet_q_actors::schedule::{
    CatchUp, Overlap, Schedule, ScheduleSpec, StepTemplate, DEFAULT_CATCH_UP_MAX,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::api::auth::require_admin;
use crate::api::error::{ApiError, ApiResult, ErrorType};
use crate::api::AppState;

/// How many upcoming fires a schedule view lists.
const UPCOMING: usize = 5;

/// One fire of a schedule.
#[derive(Serialize, ToSchema)]
pub struct FireView {
    /// The tick (for a manual trigger, when it was triggered).
    pub tick: DateTime<Utc>,
    /// The step it submitted (`GET /status/{step_id}`).
    pub step_id: String,
    /// True for `POST /admin/schedules/{id}/trigger`.
    pub manual: bool,
}

/// A schedule: its spec, its next ticks and its latest fires.
#[derive(Serialize, ToSchema)]
pub struct ScheduleView {
    /// Id (kept across replacements of the same name).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Cron expression (5 fields, or 6 with seconds first), or null.
    pub cron: Option<String>,
    /// Fixed interval in seconds (ticks at its multiples since the epoch), or null.
    pub every_seconds: Option<u64>,
    /// IANA time zone of the cron expression.
    pub time_zone: String,
    /// The step each tick submits: `type`, and optionally `args`, `metadata`,
    /// `priority`, `queue`, `max_retries`, `timeout_seconds`.
    #[schema(value_type = Object)]
    pub step: Value,
    /// A paused schedule fires nothing.
    pub paused: bool,
    /// Missed ticks: `skip`, `one` or `all`.
    pub catch_up: String,
    /// Most missed ticks `all` fires.
    pub catch_up_max: u32,
    /// `allow`, or `skip` while the previous fire's step is pending or running.
    pub overlap: String,
    /// The next tick not yet fired (null: none, or paused).
    pub next_run_at: Option<DateTime<Utc>>,
    /// The next few ticks from `next_run_at` (empty when paused).
    pub upcoming: Vec<DateTime<Utc>>,
    /// When it last fired (store time).
    pub last_fired_at: Option<DateTime<Utc>>,
    /// Latest fires, newest first.
    pub recent: Vec<FireView>,
    /// Steps fired since it was made.
    pub fires: u64,
    /// Ticks skipped by the catch-up or overlap policy.
    pub skipped: u64,
}

impl From<Schedule> for ScheduleView {
    fn from(s: Schedule) -> Self {
        let upcoming = match (&s.next_run_at, s.spec.paused, s.spec.timing()) {
            (Some(next), false, Ok(t)) => {
                let mut v = vec![*next];
                v.extend(t.upcoming(*next, UPCOMING - 1));
                v
            }
            _ => Vec::new(),
        };
        ScheduleView {
            id: s.id,
            step: serde_json::to_value(&s.spec.step).unwrap_or(Value::Null),
            name: s.spec.name,
            cron: s.spec.cron,
            every_seconds: s.spec.every_seconds,
            time_zone: s.spec.time_zone,
            paused: s.spec.paused,
            catch_up: s.spec.catch_up.as_str().into(),
            catch_up_max: s.spec.catch_up_max,
            overlap: s.spec.overlap.as_str().into(),
            next_run_at: s.next_run_at,
            upcoming,
            last_fired_at: s.last_fired_at,
            recent: s
                .recent
                .into_iter()
                .map(|f| FireView {
                    tick: f.tick,
                    step_id: f.step_id.to_string(),
                    manual: f.manual,
                })
                .collect(),
            fires: s.fires,
            skipped: s.skipped,
        }
    }
}

/// `GET /admin/schedules`.
#[derive(Serialize, ToSchema)]
pub struct SchedulesResponse {
    /// Every schedule, by name.
    pub schedules: Vec<ScheduleView>,
}

/// `POST /admin/schedules`, `PUT /admin/schedules/{id}`: a schedule's whole
/// spec (a field left out takes its default).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    /// Unique name (1-64 of `A-Z a-z 0-9 . _ -`); for `PUT`, defaults to the
    /// path's and may not differ from the existing schedule's.
    #[serde(default)]
    pub name: Option<String>,
    /// Cron expression: 5 fields (minute hour day month weekday) or 6
    /// (seconds first). Give this or `every_seconds`.
    #[serde(default)]
    pub cron: Option<String>,
    /// Fixed interval, 1 to 31,622,400 seconds.
    #[serde(default)]
    pub every_seconds: Option<u64>,
    /// IANA time zone of the cron expression (default `UTC`).
    #[serde(default)]
    pub time_zone: Option<String>,
    /// The step template: `{"type": …, "args"?, "metadata"?, "priority"?,
    /// "queue"?, "max_retries"?, "timeout_seconds"?}`.
    #[schema(value_type = Object)]
    pub step: Value,
    /// Paused (default false).
    #[serde(default)]
    pub paused: bool,
    /// `skip` (default), `one` or `all`.
    #[serde(default)]
    pub catch_up: Option<String>,
    /// 1 to 1000 (default 100).
    #[serde(default)]
    pub catch_up_max: Option<u32>,
    /// `allow` (default) or `skip`.
    #[serde(default)]
    pub overlap: Option<String>,
}

impl ScheduleBody {
    /// The spec, or every problem with the body.
    pub fn spec(self, name: Option<&str>) -> Result<ScheduleSpec, String> {
        let mut problems = Vec::new();
        let name = match (self.name, name) {
            (Some(b), Some(p)) if b != p => {
                problems.push(format!(
                    "name {b:?} differs from the schedule's {p:?} (delete and create to rename)"
                ));
                b
            }
            (Some(b), _) => b,
            (None, Some(p)) => p.to_string(),
            (None, None) => {
                problems.push("name is required".into());
                String::new()
            }
        };
        let step: StepTemplate = match serde_json::from_value(self.step) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("step: {e}"));
                StepTemplate::default()
            }
        };
        let catch_up = match self.catch_up.as_deref() {
            None => CatchUp::default(),
            Some(c) => CatchUp::parse(c).unwrap_or_else(|| {
                problems.push(format!("catch_up must be skip, one or all, not {c:?}"));
                CatchUp::default()
            }),
        };
        let overlap = match self.overlap.as_deref() {
            None => Overlap::default(),
            Some(o) => Overlap::parse(o).unwrap_or_else(|| {
                problems.push(format!("overlap must be allow or skip, not {o:?}"));
                Overlap::default()
            }),
        };
        let spec = ScheduleSpec {
            name,
            cron: self.cron,
            every_seconds: self.every_seconds,
            time_zone: self.time_zone.unwrap_or_else(|| "UTC".into()),
            step,
            paused: self.paused,
            catch_up,
            catch_up_max: self.catch_up_max.unwrap_or(DEFAULT_CATCH_UP_MAX),
            overlap,
        };
        let no_name = spec.name.is_empty();
        problems.extend(
            spec.problems()
                .into_iter()
                .filter(|p| !(no_name && p.starts_with("name:"))),
        );
        if problems.is_empty() {
            Ok(spec)
        } else {
            Err(problems.join("; "))
        }
    }
}

/// `POST /admin/schedules/{id}/trigger`.
#[derive(Serialize, ToSchema)]
pub struct TriggerResponse {
    /// The step submitted.
    pub step_id: String,
}

/// Ids (hex) and names share the name rule, so one check serves both.
fn check_key(key: &str, req: &HttpRequest) -> Result<(), ApiError> {
    match fleet_q_actors::queue::name_problem(key) {
        Some(why) => Err(ApiError::validation(
            format!("a schedule is named by its id or name, which {why}"),
            req,
        )),
        None => Ok(()),
    }
}

fn not_found(key: &str, req: &HttpRequest) -> ApiError {
    ApiError::new(ErrorType::NotFound, format!("no schedule {key}"), req)
}

/// Every schedule.
#[utoipa::path(get, path = "/admin/schedules", tag = "admin",
    responses((status = 200, body = SchedulesResponse), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 503, body = ApiError)))]
pub(crate) async fn list(req: HttpRequest, st: web::Data<AppState>) -> ApiResult {
    require_admin(&req, &st)?;
    let all = st
        .pod
        .schedules()
        .await
        .map_err(|e| ApiError::store(&e, &req))?;
    Ok(HttpResponse::Ok().json(SchedulesResponse {
        schedules: all.into_iter().map(ScheduleView::from).collect(),
    }))
}

/// Create a schedule (409 when the name is taken: replace it with `PUT`).
#[utoipa::path(post, path = "/admin/schedules", tag = "admin", request_body = ScheduleBody,
    responses((status = 201, body = ScheduleView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn create(
    req: HttpRequest,
    st: web::Data<AppState>,
    body: web::Json<ScheduleBody>,
) -> ApiResult {
    require_admin(&req, &st)?;
    let spec = body
        .into_inner()
        .spec(None)
        .map_err(|why| ApiError::validation(why, &req))?;
    let taken = st
        .pod
        .schedule(&spec.name)
        .await
        .map_err(|e| ApiError::store(&e, &req))?
        .is_some_and(|s| s.spec.name == spec.name);
    if taken {
        return Err(ApiError::new(
            ErrorType::Conflict,
            format!(
                "a schedule named {} exists; PUT /admin/schedules/{} replaces it",
                spec.name, spec.name
            ),
            &req,
        ));
    }
    let s = st
        .pod
        .put_schedule(spec)
        .await
        .map_err(|e| ApiError::store(&e, &req))?;
    Ok(HttpResponse::Created().json(ScheduleView::from(s)))
}

/// One schedule, by id or name.
#[utoipa::path(get, path = "/admin/schedules/{id}", tag = "admin",
    params(("id" = String, Path, description = "Schedule id or name")),
    responses((status = 200, body = ScheduleView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn get(
    req: HttpRequest,
    st: web::Data<AppState>,
    key: web::Path<String>,
) -> ApiResult {
    require_admin(&req, &st)?;
    check_key(&key, &req)?;
    let s = st
        .pod
        .schedule(&key)
        .await
        .map_err(|e| ApiError::store(&e, &req))?
        .ok_or_else(|| not_found(&key, &req))?;
    Ok(HttpResponse::Ok().json(ScheduleView::from(s)))
}

/// Replace a schedule's spec (by id or name), or create one with the path as
/// its name. Its id and history are kept, and its next tick too unless the
/// timing changed.
#[utoipa::path(put, path = "/admin/schedules/{id}", tag = "admin", request_body = ScheduleBody,
    params(("id" = String, Path, description = "Schedule id or name")),
    responses((status = 200, body = ScheduleView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn put(
    req: HttpRequest,
    st: web::Data<AppState>,
    key: web::Path<String>,
    body: web::Json<ScheduleBody>,
) -> ApiResult {
    require_admin(&req, &st)?;
    check_key(&key, &req)?;
    let existing = st
        .pod
        .schedule(&key)
        .await
        .map_err(|e| ApiError::store(&e, &req))?;
    let name = existing.map_or_else(|| key.to_string(), |s| s.spec.name);
    let spec = body
        .into_inner()
        .spec(Some(&name))
        .map_err(|why| ApiError::validation(why, &req))?;
    let s = st
        .pod
        .put_schedule(spec)
        .await
        .map_err(|e| ApiError::store(&e, &req))?;
    Ok(HttpResponse::Ok().json(ScheduleView::from(s)))
}

/// `DELETE /admin/schedules/{id}`.
#[derive(Serialize, ToSchema)]
pub struct DeletedResponse {
    /// The id or name given.
    pub deleted: String,
}

/// Delete a schedule (the steps it fired are kept).
#[utoipa::path(delete, path = "/admin/schedules/{id}", tag = "admin",
    params(("id" = String, Path, description = "Schedule id or name")),
    responses((status = 200, body = DeletedResponse), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn delete(
    req: HttpRequest,
    st: web::Data<AppState>,
    key: web::Path<String>,
) -> ApiResult {
    require_admin(&req, &st)?;
    check_key(&key, &req)?;
    if st
        .pod
        .delete_schedule(&key)
        .await
        .map_err(|e| ApiError::store(&e, &req))?
    {
        Ok(HttpResponse::Ok().json(DeletedResponse {
            deleted: key.to_string(),
        }))
    } else {
        Err(not_found(&key, &req))
    }
}

async fn set_paused(
    req: HttpRequest,
    st: web::Data<AppState>,
    key: &str,
    paused: bool,
) -> ApiResult {
    require_admin(&req, &st)?;
    check_key(key, &req)?;
    let s = st
        .pod
        .set_schedule_paused(key, paused)
        .await
        .map_err(|e| ApiError::store(&e, &req))?
        .ok_or_else(|| not_found(key, &req))?;
    Ok(HttpResponse::Ok().json(ScheduleView::from(s)))
}

/// Pause a schedule: it fires nothing until resumed.
#[utoipa::path(post, path = "/admin/schedules/{id}/pause", tag = "admin",
    params(("id" = String, Path, description = "Schedule id or name")),
    responses((status = 200, body = ScheduleView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn pause(
    req: HttpRequest,
    st: web::Data<AppState>,
    key: web::Path<String>,
) -> ApiResult {
    set_paused(req, st, &key, true).await
}

/// Resume a schedule from its next tick (ticks while paused are not fired).
#[utoipa::path(post, path = "/admin/schedules/{id}/resume", tag = "admin",
    params(("id" = String, Path, description = "Schedule id or name")),
    responses((status = 200, body = ScheduleView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn resume(
    req: HttpRequest,
    st: web::Data<AppState>,
    key: web::Path<String>,
) -> ApiResult {
    set_paused(req, st, &key, false).await
}

/// Fire a schedule's step now, once (its ticks are not changed).
#[utoipa::path(post, path = "/admin/schedules/{id}/trigger", tag = "admin",
    params(("id" = String, Path, description = "Schedule id or name")),
    responses((status = 202, body = TriggerResponse), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn trigger(
    req: HttpRequest,
    st: web::Data<AppState>,
    key: web::Path<String>,
) -> ApiResult {
    require_admin(&req, &st)?;
    check_key(&key, &req)?;
    let id = st
        .pod
        .trigger_schedule(&key)
        .await
        .map_err(|e| ApiError::store(&e, &req))?
        .ok_or_else(|| not_found(&key, &req))?;
    Ok(HttpResponse::Accepted().json(TriggerResponse {
        step_id: id.to_string(),
    }))
}
