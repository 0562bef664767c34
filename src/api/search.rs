//! Step search and bulk actions as the JSON API and the dashboard both take
//! them: one parser from query or body fields to a [`StepFilter`] (every
//! problem listed), and the response bodies.
//!
//! What a request costs: a search page reads at most `scan` candidate rows
//! (default [`DEFAULT_SCAN`], at most [`MAX_SCAN_LIMIT`]); a bulk action by
//! filter reads at most [`fleet_q_actors::pod::MATCH_SCAN_LIMIT`] candidate
//! rows and changes at most [`MAX_BULK`] steps. Neither counts history.

use chrono::{DateTime, Utc};
use fleet_q_actors::search::{MAX_SCAN_LIMIT, MAX_SEARCH_TEXT};
use fleet_q_actors::{BulkAction, StepFilter, StepId, StepStatus};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::dto::StepView;

/// Candidate rows a search page reads unless it says otherwise.
pub const DEFAULT_SCAN: u32 = 10_000;

/// Most steps one bulk action changes (or a dry run counts).
pub const MAX_BULK: usize = 10_000;

/// Filters and paging of `GET /admin/steps` (and the dashboard's Steps page):
/// every field is optional; empty fields are ignored, so an HTML form can send
/// them all.
#[derive(Clone, Debug, Default, Deserialize, Serialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct FilterQuery {
    /// `pending`, `claimed`, `completed`, `failed` or `cancelled`.
    pub status: Option<String>,
    /// Step type, exactly.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    #[schema(rename = "type")]
    pub step_type: Option<String>,
    /// Priority, exactly.
    #[serde(default, deserialize_with = "number_or_text")]
    pub priority: Option<String>,
    /// Idempotency key, exactly.
    pub key: Option<String>,
    /// Step id.
    pub id: Option<String>,
    /// Created at or after (RFC 3339, or `YYYY-MM-DDTHH:MM` as UTC).
    pub created_from: Option<String>,
    /// Created before (RFC 3339, or `YYYY-MM-DDTHH:MM` as UTC).
    pub created_to: Option<String>,
    /// Text in the payload or the last error (case-sensitive, 1-200 bytes).
    pub text: Option<String>,
    /// Queue, exactly.
    pub queue: Option<String>,
}

/// Paging of `GET /admin/steps`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The `next` of the previous page.
    pub before: Option<String>,
    /// Matches per page, 1-1000 (default 50).
    pub limit: Option<String>,
    /// Candidate rows examined per page, 1-100000 (default 10000).
    pub scan: Option<String>,
}

fn number_or_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    })
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Reads a time as RFC 3339, or as the `YYYY-MM-DDTHH:MM[:SS]` of an HTML
/// `datetime-local` field (UTC).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc());
        }
    }
    None
}

impl FilterQuery {
    /// The filter, or every problem with the fields.
    pub fn filter(&self) -> Result<StepFilter, Vec<String>> {
        let mut problems = Vec::new();
        let mut f = StepFilter::default();
        if let Some(s) = given(&self.status) {
            match s.parse::<StepStatus>() {
                Ok(s) => f.status = Some(s),
                Err(_) => problems.push(format!(
                    "status must be pending, claimed, completed, failed or cancelled, not {:?}",
                    short(s)
                )),
            }
        }
        if let Some(t) = given(&self.step_type) {
            if t.len() > 200 {
                problems.push("type must be at most 200 bytes".into());
            }
            f.step_type = Some(t.to_string());
        }
        if let Some(p) = given(&self.priority) {
            match p.parse::<i32>() {
                Ok(p) => f.priority = Some(p),
                Err(_) => problems.push(format!("priority must be an integer, not {:?}", short(p))),
            }
        }
        if let Some(q) = given(&self.queue) {
            f.queue = Some(q.to_string());
        }
        if let Some(k) = given(&self.key) {
            if k.len() > 255 {
                problems.push("key must be at most 255 bytes".into());
            }
            f.idempotency_key = Some(k.to_string());
        }
        if let Some(id) = given(&self.id) {
            match id.parse::<StepId>() {
                Ok(id) => f.step_id = Some(id),
                Err(_) => problems.push(format!("id {:?} is not a UUID", short(id))),
            }
        }
        for (name, raw, slot) in [
            ("created_from", &self.created_from, &mut f.created_from),
            ("created_to", &self.created_to, &mut f.created_to),
        ] {
            if let Some(t) = given(raw) {
                match parse_time(t) {
                    Some(t) => *slot = Some(t),
                    None => problems.push(format!(
                        "{name} must be a time (RFC 3339, or YYYY-MM-DDTHH:MM as UTC), not {:?}",
                        short(t)
                    )),
                }
            }
        }
        // The text is searched as given (not trimmed): spaces may matter.
        if let Some(t) = self.text.as_deref().filter(|t| !t.is_empty()) {
            if t.len() > MAX_SEARCH_TEXT {
                problems.push(format!("text must be at most {MAX_SEARCH_TEXT} bytes"));
            } else {
                f.text = Some(t.to_string());
            }
        }
        problems.extend(f.problems());
        if problems.is_empty() {
            Ok(f)
        } else {
            Err(problems)
        }
    }

    /// The fields that are set, as a query string (for links that keep the
    /// filter).
    pub fn to_query(&self) -> String {
        serde_urlencoded::to_string(self.trimmed()).unwrap_or_default()
    }

    fn trimmed(&self) -> Vec<(&'static str, String)> {
        [
            ("status", &self.status),
            ("type", &self.step_type),
            ("priority", &self.priority),
            ("key", &self.key),
            ("id", &self.id),
            ("created_from", &self.created_from),
            ("created_to", &self.created_to),
            ("text", &self.text),
            ("queue", &self.queue),
        ]
        .into_iter()
        .filter_map(|(k, v)| {
            v.as_deref()
                .filter(|s| !s.trim().is_empty())
                .map(|s| (k, s.to_string()))
        })
        .collect()
    }

    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        self.trimmed().is_empty()
    }
}

impl PageQuery {
    /// `(before, limit, scan)`, or every problem.
    pub fn page(&self) -> Result<(Option<StepId>, u32, u32), Vec<String>> {
        let mut problems = Vec::new();
        let before = given(&self.before).and_then(|b| match b.parse::<StepId>() {
            Ok(id) => Some(id),
            Err(_) => {
                problems.push(format!("before {:?} is not a UUID", short(b)));
                None
            }
        });
        let mut number = |name: &str, raw: &Option<String>, default: u32, max: u32| match given(raw)
            .map(|s| s.parse::<u32>())
        {
            None => default,
            Some(Ok(n)) if (1..=max).contains(&n) => n,
            _ => {
                problems.push(format!("{name} must be an integer from 1 to {max}"));
                default
            }
        };
        let limit = number("limit", &self.limit, 50, 1000);
        let scan = number("scan", &self.scan, DEFAULT_SCAN, MAX_SCAN_LIMIT);
        if problems.is_empty() {
            Ok((before, limit, scan))
        } else {
            Err(problems)
        }
    }
}

fn short(s: &str) -> String {
    s.chars().take(60).collect()
}

/// `GET /admin/steps`: one page, newest first.
#[derive(Serialize, ToSchema)]
pub struct SearchResponse {
    /// The matches, newest first.
    pub steps: Vec<StepView>,
    /// Pass as `before` for the next page; absent when nothing older is left
    /// to examine. A page may be empty and still have a `next`: the window it
    /// examined held no match ("more").
    pub next: Option<String>,
    /// Candidate rows examined for this page.
    pub scanned: u64,
}

/// `POST /admin/steps/bulk`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    /// `retry` (failed steps) or `cancel` (pending steps).
    #[schema(value_type = String)]
    pub action: BulkAction,
    /// These steps (at most 10000) ...
    pub step_ids: Option<Vec<String>>,
    /// ... or every step matching this filter (the fields of `GET
    /// /admin/steps`), narrowed to the status the action applies to.
    pub filter: Option<FilterQuery>,
    /// Most steps to change when acting by filter (1-10000, default 10000).
    pub max: Option<usize>,
    /// Count what would change, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a bulk action did (or, on a dry run, would do).
#[derive(Serialize, ToSchema)]
pub struct BulkResponse {
    /// `retry` or `cancel`.
    pub action: String,
    /// True when nothing was changed.
    pub dry_run: bool,
    /// Steps found in the status the action applies to (by filter) or given.
    pub matched: usize,
    /// False when a bound stopped the search for matches first: there may be
    /// more ("at least `matched`").
    pub complete: bool,
    /// Steps changed (0 on a dry run).
    pub changed: usize,
    /// The ids changed (on a dry run: the ids that would be).
    pub step_ids: Vec<String>,
}

/// Why a search or bulk action was not done.
pub enum ActionError {
    /// Bad input: every problem (400, nothing changed).
    Invalid(Vec<String>),
    /// The store failed.
    Store(fleet_q_actors::StoreError),
}

/// One search page through the pod (the engine call the API and the
/// dashboard share).
pub async fn run_search(
    pod: &fleet_q_actors::Pod,
    filter: &FilterQuery,
    page: &PageQuery,
) -> Result<(StepFilter, fleet_q_actors::SearchPage), ActionError> {
    let f = filter.filter();
    let p = page.page();
    let (f, (before, limit, scan_limit)) = match (f, p) {
        (Ok(f), Ok(p)) => (f, p),
        (f, p) => {
            let mut all = f.err().unwrap_or_default();
            all.extend(p.err().unwrap_or_default());
            return Err(ActionError::Invalid(all));
        }
    };
    let found = pod
        .search_steps(fleet_q_actors::SearchParams {
            filter: f.clone(),
            before,
            limit,
            scan_limit,
        })
        .await
        .map_err(ActionError::Store)?;
    Ok((f, found))
}

/// A bulk action through the pod (shared by the API and the dashboard).
pub async fn run_bulk(
    pod: &fleet_q_actors::Pod,
    req: BulkRequest,
) -> Result<BulkResponse, ActionError> {
    let mut problems = Vec::new();
    let max = req.max.unwrap_or(MAX_BULK);
    if !(1..=MAX_BULK).contains(&max) {
        problems.push(format!("max must be from 1 to {MAX_BULK}"));
    }
    let (ids, complete) = match (&req.step_ids, &req.filter) {
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > MAX_BULK {
                problems.push(format!("step_ids must hold 1 to {MAX_BULK} ids"));
            }
            let mut parsed = Vec::new();
            for raw in ids.iter().take(MAX_BULK) {
                match raw.parse::<StepId>() {
                    Ok(id) => parsed.push(id),
                    Err(_) => problems.push(format!("step id {:?} is not a UUID", short(raw))),
                }
            }
            parsed.sort();
            parsed.dedup();
            (parsed, true)
        }
        (None, Some(f)) => match f.filter() {
            Ok(f) if problems.is_empty() => {
                if f.status.is_some_and(|s| s != req.action.applies_to()) {
                    problems.push(format!(
                        "{} applies to {} steps only; the filter's status says otherwise",
                        action_name(req.action),
                        req.action.applies_to()
                    ));
                    (Vec::new(), true)
                } else {
                    let m = pod
                        .matching_steps(req.action, f, max)
                        .await
                        .map_err(ActionError::Store)?;
                    (m.ids, m.complete)
                }
            }
            Ok(_) => (Vec::new(), true),
            Err(p) => {
                problems.extend(p);
                (Vec::new(), true)
            }
        },
        _ => {
            problems.push("give either step_ids or filter".into());
            (Vec::new(), true)
        }
    };
    if !problems.is_empty() {
        return Err(ActionError::Invalid(problems));
    }
    if req.dry_run {
        return Ok(BulkResponse {
            action: action_name(req.action).into(),
            dry_run: true,
            matched: ids.len(),
            complete,
            changed: 0,
            step_ids: ids.iter().map(|i| i.to_string()).collect(),
        });
    }
    let matched = ids.len();
    let changed = pod
        .bulk_steps(req.action, ids)
        .await
        .map_err(ActionError::Store)?;
    Ok(BulkResponse {
        action: action_name(req.action).into(),
        dry_run: false,
        matched,
        complete,
        changed: changed.len(),
        step_ids: changed.iter().map(|i| i.to_string()).collect(),
    })
}

/// `retry` or `cancel`.
pub fn action_name(a: BulkAction) -> &'static str {
    match a {
        BulkAction::Retry => "retry",
        BulkAction::Cancel => "cancel",
    }
}
