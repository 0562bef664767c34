//! Steps, Step detail and Failed: bounded searches through the same engine
//! calls as `GET /admin/steps` ([`crate::api::search`]).

use fleet_q_actors::{Step, StepStatus};
use maud::{html, Markup};

use super::layout::{message, status_badge, time, Viewer};
use crate::api::search::{run_search, ActionError, FilterQuery, PageQuery};
use crate::api::AppState;

/// Newest failed steps the Failed page groups.
pub const FAILED_GROUPED: u32 = 1000;

fn text_field(name: &str, label: &str, value: &Option<String>, kind: &str) -> Markup {
    html! {
        label { (label) input type=(kind) name=(name) value=[value.as_deref()]; }
    }
}

/// The filter form (every field in the URL).
pub fn filter_form(q: &FilterQuery) -> Markup {
    let statuses = ["pending", "claimed", "completed", "failed", "cancelled"];
    html! {
        form.filters.panel method="get" action="/ui/steps" role="search" aria-label="Filter steps" {
            label { "status"
                select name="status" {
                    option value="" { "any" }
                    @for s in statuses {
                        option value=(s) selected[q.status.as_deref() == Some(s)] { (s) }
                    }
                }
            }
            (text_field("type", "type", &q.step_type, "text"))
            (text_field("queue", "queue", &q.queue, "text"))
            (text_field("priority", "priority", &q.priority, "number"))
            (text_field("key", "idempotency key", &q.key, "text"))
            (text_field("id", "step id", &q.id, "text"))
            (text_field("created_from", "created from (UTC)", &q.created_from, "datetime-local"))
            (text_field("created_to", "created before (UTC)", &q.created_to, "datetime-local"))
            (text_field("text", "text in payload or error", &q.text, "search"))
            div.row { button type="submit" { "Filter" } a href="/ui/steps" { "clear" } }
        }
    }
}

fn step_rows(steps: &[Step], selectable: bool) -> Markup {
    html! {
        table id="steps" {
            thead { tr {
                @if selectable { th { input type="checkbox" id="select-all" aria-label="Select every step on this page"; } }
                th { "step" } th { "type" } th.opt { "queue" } th { "status" } th.opt { "priority" } th.opt { "retries" } th.opt { "created" } th.opt { "last error" }
            } }
            tbody {
                @for s in steps {
                    tr {
                        @if selectable {
                            td { input type="checkbox" name="step_id" value=(s.step_id) aria-label={"Select " (s.step_id)}; }
                        }
                        td.mono { a href={"/ui/steps/" (s.step_id)} { (s.step_id) } }
                        td { (s.step_type()) }
                        td.opt { (s.queue) }
                        td { (status_badge(&s.status.to_string())) }
                        td.opt { (s.priority) }
                        td.opt { (s.retry_count) "/" (s.max_retries) }
                        td.opt { (time(s.created_ts)) }
                        td.opt { (s.last_error.as_deref().map(|e| clip(e, 120)).unwrap_or_default()) }
                    }
                }
            }
        }
    }
}

/// At most `n` characters of `s`, with an ellipsis when cut.
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() > n {
        format!("{}…", s.chars().take(n).collect::<String>())
    } else {
        s.to_string()
    }
}

fn hidden_filter(q: &FilterQuery) -> Markup {
    html! {
        @for (k, v) in [("status", &q.status), ("type", &q.step_type), ("priority", &q.priority), ("key", &q.key),
                        ("id", &q.id), ("created_from", &q.created_from), ("created_to", &q.created_to), ("text", &q.text),
                        ("queue", &q.queue)] {
            @if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) { input type="hidden" name={"filter." (k)} value=(v); }
        }
    }
}

/// The Steps page.
pub async fn list(st: &AppState, viewer: &Viewer, q: &FilterQuery, page: &PageQuery) -> Markup {
    let found = run_search(&st.pod, q, page).await;
    let body = match found {
        Err(ActionError::Invalid(p)) => message(false, &p.join("; ")),
        Err(ActionError::Store(e)) => message(false, &format!("The store did not answer: {e}")),
        Ok((filter, found)) => {
            let query = q.to_query();
            let more = found.next.map(|n| {
                let sep = if query.is_empty() { "" } else { "&" };
                format!("/ui/steps?{query}{sep}before={n}")
            });
            let actions = !viewer.read_only;
            html! {
                form method="post" action="/ui/bulk" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    input type="hidden" name="back" value={"/ui/steps?" (query)};
                    (hidden_filter(q))
                    div.panel {
                        @if found.steps.is_empty() {
                            p id="no-steps" { "No matching steps among the " (found.scanned) " examined"
                                @if more.is_some() { "; older steps remain" } "." }
                        } @else {
                            (step_rows(&found.steps, actions))
                        }
                        div.row {
                            @if page.before.as_deref().is_some_and(|b| !b.is_empty()) {
                                a href={"/ui/steps?" (query)} { "← newest" }
                            }
                            @if let Some(m) = &more { a href=(m) rel="next" id="more" { "more →" } }
                            span.muted { (found.steps.len()) " shown, " (found.scanned) " examined (newest first; no total is counted over history)" }
                        }
                    }
                    @if actions {
                        div.panel.row aria-label="Bulk actions" {
                            strong { "Selected:" }
                            button type="submit" name="do" value="retry-selected" { "Retry selected" }
                            button.danger type="submit" name="do" value="cancel-selected" { "Cancel selected" }
                            @if !filter.eq(&Default::default()) {
                                strong { "Everything matching this filter:" }
                                button.secondary type="submit" name="do" value="retry-matching" { "Retry all matching…" }
                                button.secondary type="submit" name="do" value="cancel-matching" { "Cancel all matching…" }
                            }
                        }
                    }
                }
            }
        }
    };
    html! {
        h1 { "Steps" }
        (filter_form(q))
        (body)
    }
}

/// The Step detail page.
pub async fn detail(st: &AppState, viewer: &Viewer, raw_id: &str, public_url: &str) -> Markup {
    let id = match raw_id.parse::<fleet_q_actors::StepId>() {
        Ok(id) => id,
        Err(_) => return message(false, "That is not a step id."),
    };
    let step = match st.pod.step(id).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return html! { h1 { "Step " (id) } (message(false, "No such step (it may have been pruned past retention).")) }
        }
        Err(e) => return message(false, &format!("The store did not answer: {e}")),
    };
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let payload: serde_json::Value =
        serde_json::from_str(&step.payload.to_json()).unwrap_or(serde_json::Value::Null);
    let cli = format!("fleet-q status {id}");
    let curl = format!("curl -s {public_url}/status/{id}");
    html! {
        h1 { "Step " span.mono { (id) } }
        div.panel {
            dl.kv id="step-fields" {
                dt { "status" } dd { (status_badge(&step.status.to_string())) }
                dt { "type" } dd { (step.step_type()) }
                dt { "queue" } dd { a href={"/ui/steps?queue=" (step.queue)} { (step.queue) } }
                dt { "priority" } dd { (step.priority) }
                dt { "attempt" } dd { (step.attempt) }
                dt { "retries" } dd { (step.retry_count) " of " (step.max_retries) }
                dt { "claimed by" } dd.mono { (step.claimed_by.as_deref().unwrap_or("–")) }
                dt { "idempotency key" } dd.mono { (step.idempotency_key.as_deref().unwrap_or("–")) }
                dt { "created" } dd { (time(step.created_ts)) }
                dt { "runs at" } dd { (time(step.run_at)) }
                dt { "last update" } dd { (time(step.last_update_ts)) }
                dt { "timeout" } dd { (step.timeout_ms.map(|t| format!("{} s", t as f64 / 1000.0)).unwrap_or_else(|| "pod default".into())) }
            }
        }
        div.panel { h2 { "Payload" } pre id="payload" { (pretty(&payload)) } }
        @if let Some(r) = &step.result { div.panel { h2 { "Result" } pre id="result" { (pretty(r)) } } }
        @if let Some(e) = &step.last_error { div.panel { h2 { "Last error" } pre id="last-error" { (e) } } }
        @if !viewer.read_only && matches!(step.status, StepStatus::Pending | StepStatus::Failed) {
            div.panel.row {
                @if step.status == StepStatus::Pending {
                    form method="post" action={"/ui/steps/" (id) "/cancel"} {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        button.danger type="submit" id="cancel" { "Cancel this step" }
                    }
                }
                @if step.status == StepStatus::Failed {
                    form method="post" action={"/ui/steps/" (id) "/retry"} {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        button type="submit" id="retry" { "Retry this step" }
                    }
                }
            }
        }
        div.panel {
            h2 { "From a terminal" }
            div.row { code id="cmd-cli" { (cli) } button.secondary type="button" data-copy="cmd-cli" { "Copy" } }
            div.row { code id="cmd-curl" { (curl) } button.secondary type="button" data-copy="cmd-curl" { "Copy" } }
        }
    }
}

/// The Failed page: the newest failed steps grouped by type and error, with
/// retry by group and by selection.
pub async fn failed(st: &AppState, viewer: &Viewer) -> Markup {
    let q = FilterQuery {
        status: Some("failed".into()),
        ..Default::default()
    };
    let page = PageQuery {
        limit: Some(FAILED_GROUPED.to_string()),
        ..Default::default()
    };
    let (steps, more) = match run_search(&st.pod, &q, &page).await {
        Ok((_, p)) => (p.steps, p.next.is_some()),
        Err(ActionError::Store(e)) => {
            return message(false, &format!("The store did not answer: {e}"))
        }
        Err(ActionError::Invalid(p)) => return message(false, &p.join("; ")),
    };
    let mut groups: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for s in &steps {
        let err = clip(s.last_error.as_deref().unwrap_or(""), 100);
        *groups.entry((s.step_type().to_string(), err)).or_default() += 1;
    }
    let mut groups: Vec<((String, String), usize)> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let recent: Vec<Step> = steps.iter().take(50).cloned().collect();
    html! {
        h1 { "Failed steps" }
        p.muted {
            "Grouped over the " (steps.len()) " newest failed steps"
            @if more { " (more exist; the groups are a sample of the newest)" } "."
        }
        div.panel {
            h2 { "By type and error" }
            table id="failed-groups" {
                thead { tr { th { "type" } th { "error" } th { "steps" } th { "" } } }
                tbody {
                    @for ((t, e), n) in &groups {
                        @let fq = group_filter(t, e);
                        tr {
                            td { (t) }
                            td { (e) }
                            td { (n) }
                            td { a href={"/ui/steps?" (fq.to_query())} { "view" } }
                        }
                    }
                }
            }
        }
        div.panel {
            h2 { "Newest failed" }
            form method="post" action="/ui/bulk" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                input type="hidden" name="back" value="/ui/failed";
                (step_rows(&recent, !viewer.read_only))
                @if !viewer.read_only {
                    div.row {
                        button type="submit" name="do" value="retry-selected" { "Retry selected" }
                        a href="/ui/steps?status=failed" { "Filter failed steps to retry or act on everything matching →" }
                    }
                }
            }
        }
    }
}

/// The Steps filter of one group of the Failed page.
fn group_filter(step_type: &str, error: &str) -> FilterQuery {
    let mut text = String::new();
    for ch in error.trim_end_matches('…').chars() {
        if text.len() + ch.len_utf8() > fleet_q_actors::search::MAX_SEARCH_TEXT {
            break;
        }
        text.push(ch);
    }
    FilterQuery {
        status: Some("failed".into()),
        step_type: Some(step_type.to_string()),
        text: (!text.is_empty()).then_some(text),
        ..Default::default()
    }
}

/// The confirmation of an action on everything matching a filter.
pub fn confirm(
    viewer: &Viewer,
    action: &str,
    q: &FilterQuery,
    matched: usize,
    complete: bool,
    back: &str,
) -> Markup {
    let verb = if action == "retry" {
        "retried"
    } else {
        "cancelled"
    };
    html! {
        h1 { "Confirm" }
        div.panel {
            p id="confirm-count" {
                strong { @if complete { (matched) } @else { "at least " (matched) } }
                " steps matching this filter will be " (verb) "."
                @if !complete { " The search for matches is bounded (the newest 20,000 steps in that status are examined): run the action again for any older ones, or narrow the filter with a created range." }
            }
            form method="post" action="/ui/bulk" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                input type="hidden" name="back" value=(back);
                input type="hidden" name="confirm" value="1";
                (hidden_filter(q))
                div.row {
                    button type="submit" name="do" value={(action) "-matching"} id="confirm" { "Yes, " (action) " them" }
                    a href=(back) { "No, go back" }
                }
            }
        }
    }
}
