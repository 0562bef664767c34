//! Overview and Fleet: what the fleet is doing, from the history-safe
//! statistics and the pod rows (one row per pod), never from finished rows.

use std::time::Duration;

use fleet_q_actors::throughput::{now_minute, Series};
use fleet_q_actors::{eldest_live_pod, PodRecord, RecoverySummary};
use maud::{html, Markup};

use super::layout::{age, status_badge, throughput_chart, time};
use crate::api::AppState;

/// The overview's live part (re-fetched every 2 s while the tab is visible).
pub async fn overview_live(st: &AppState) -> Markup {
    let snap = match st.snapshot().await {
        Ok(s) => s,
        Err(e) => {
            return super::layout::message(false, &format!("The store did not answer: {e}"));
        }
    };
    let c = &snap.stats.counts;
    let live: Vec<&PodRecord> = snap
        .pods
        .iter()
        .filter(|p| p.is_alive(st.dead_pod_threshold))
        .collect();
    let in_use: u64 = live.iter().map(|p| u64::from(p.capacity_in_use)).sum();
    let max: u64 = live.iter().map(|p| u64::from(p.max_capacity)).sum();
    let fenced: u64 = snap
        .pods
        .iter()
        .filter_map(|p| p.meta.get("fenced_results").and_then(|v| v.as_u64()))
        .sum();
    let leader = eldest_live_pod(&snap.pods, st.dead_pod_threshold);
    let series = Series::fleet(&snap.pods, now_minute());
    let cycles = st.pod.recovery_history(5).await.unwrap_or_default();
    html! {
        div.cards {
            @for (label, n, id) in [("pending", c.pending, "count-pending"), ("claimed", c.claimed, "count-claimed"),
                                    ("completed", c.completed, "count-completed"), ("failed", c.failed, "count-failed"),
                                    ("cancelled", c.cancelled, "count-cancelled")] {
                div.card { div.n id=(id) { (n) } div.l { (label) } }
            }
            div.card {
                div.n id="oldest-pending" { (snap.stats.oldest_pending_age.map(age).unwrap_or_else(|| "–".into())) }
                div.l { "oldest pending (due)" }
            }
            div.card {
                div.n id="capacity" { (in_use) " / " (max) }
                div.l { "capacity in use across " (live.len()) " live pods" }
                meter min="0" max=(max.max(1)) value=(in_use) aria-label="Fleet capacity in use" {}
            }
            div.card { div.n id="fenced" { (fenced) } div.l { "results fenced (zombie pods)" } }
            div.card {
                div.n.small id="leader" { @if let Some(l) = leader { (short_pod(&l.pod_id)) } @else { "none" } }
                div.l { "leader" }
            }
        }
        div.panel {
            h2 { "Throughput" }
            (throughput_chart(&series))
        }
        div.panel {
            h2 { "Recent recovery cycles" }
            (cycles_table(&cycles))
            p.muted { "Cycles run on the leader; this list is the ledger of the pod serving this page (" (st.pod.state().pod_id()) ")." }
        }
        p.muted {
            "As of " (time(snap.now)) " (store time). Counts by status come from the live index and the incremental totals, never a scan of finished steps; see the README, Statistics."
        }
    }
}

fn short_pod(id: &str) -> String {
    if id.chars().count() > 28 {
        let s: String = id.chars().take(27).collect();
        format!("{s}…")
    } else {
        id.to_string()
    }
}

/// Recovery cycles as a table.
pub fn cycles_table(cycles: &[RecoverySummary]) -> Markup {
    html! {
        @if cycles.is_empty() {
            p.muted { "No cycles recorded here yet." }
        } @else {
            table {
                thead { tr { th { "started" } th { "leader" } th { "dead pods" } th { "orphans" } th { "requeued" } th { "failed" } th.opt { "pruned" } th.opt { "ms" } th { "result" } } }
                tbody {
                    @for c in cycles {
                        tr {
                            td { (c.started_at.map(time).unwrap_or_default()) @if c.dry_run { " (dry run)" } }
                            td.mono { (short_pod(&c.leader_pod)) }
                            td { (c.dead_pods_found) }
                            td { (c.orphaned_steps_found) }
                            td { (c.steps_requeued) }
                            td { (c.steps_marked_terminal) }
                            td.opt { (c.steps_pruned) }
                            td.opt { (c.duration_ms) }
                            td { @if let Some(e) = &c.error { span.age-red { (e) } } @else { "ok" } }
                        }
                    }
                }
            }
        }
    }
}

/// The heartbeat age's class: amber past half the pod's dead threshold, red
/// past 80 %.
fn age_class(p: &PodRecord, threshold: Duration) -> &'static str {
    let limit = p.dead_after.unwrap_or(threshold).as_secs_f64().max(0.001);
    let f = p.heartbeat_age.as_secs_f64() / limit;
    if f >= 0.8 {
        "age-red"
    } else if f >= 0.5 {
        "age-amber"
    } else {
        "age-ok"
    }
}

/// The Fleet page's body.
pub async fn fleet(st: &AppState) -> Markup {
    let snap = match st.snapshot().await {
        Ok(s) => s,
        Err(e) => return super::layout::message(false, &format!("The store did not answer: {e}")),
    };
    let leader = eldest_live_pod(&snap.pods, st.dead_pod_threshold);
    let mut pods: Vec<&PodRecord> = snap.pods.iter().collect();
    pods.sort_by_key(|p| p.birth_ts);
    let cycles = st.pod.recovery_history(20).await.unwrap_or_default();
    html! {
        h1 { "Fleet" }
        div.panel {
            h2 { "Pods" }
            p.muted { "Eldest live pod leads. Heartbeat ages turn amber at half a pod's dead threshold and red at 80 %; past it the leader presumes the pod dead and requeues its work." }
            table id="pods" {
                thead { tr { th { "pod" } th { "status" } th.opt { "born" } th { "heartbeat age" } th { "capacity" } th.opt { "dead after" } th { "role" } } }
                tbody {
                    @for p in &pods {
                        @let alive = p.is_alive(st.dead_pod_threshold);
                        tr {
                            td.mono { (p.pod_id) }
                            td { (status_badge(if alive { "active" } else { "down" })) }
                            td.opt { (time(p.birth_ts)) }
                            td class=(age_class(p, st.dead_pod_threshold)) { (age(p.heartbeat_age)) }
                            td {
                                meter min="0" max=(p.max_capacity.max(1)) value=(p.capacity_in_use) aria-label={"capacity of " (p.pod_id)} {}
                                " " (p.capacity_in_use) "/" (p.max_capacity)
                            }
                            td.opt { (p.dead_after.map(age).unwrap_or_else(|| age(st.dead_pod_threshold))) }
                            td {
                                @if leader.is_some_and(|l| l.pod_id == p.pod_id) { strong { "leader" } " (term since " (time(p.birth_ts)) ")" }
                                @else if alive { "eligible" }
                                @else { "–" }
                            }
                        }
                    }
                }
            }
        }
        div.panel {
            h2 { "Recovery history" }
            (cycles_table(&cycles))
            p.muted { "From the recovery ledger of the pod serving this page (" (st.pod.state().pod_id()) "); the leader records each cycle it runs." }
        }
    }
}

fn rate_text(s: &fleet_q_actors::QueueSettings) -> String {
    match (s.rate_per_second, s.burst_or_default()) {
        (Some(r), Some(b)) => format!("{r}/s, burst {b}"),
        _ => "no limit".into(),
    }
}

fn defaults_text(s: &fleet_q_actors::QueueSettings) -> String {
    let mut parts = Vec::new();
    if let Some(m) = s.max_retries {
        parts.push(format!("{m} retries"));
    }
    if let Some(t) = s.timeout {
        parts.push(format!("timeout {}s", t.as_secs_f64()));
    }
    if let Some(b) = s.backoff {
        parts.push(format!("backoff {}s", b.as_secs_f64()));
    }
    if let Some(b) = s.backoff_max {
        parts.push(format!("backoff max {}s", b.as_secs_f64()));
    }
    if parts.is_empty() {
        "pod defaults".into()
    } else {
        parts.join(", ")
    }
}

/// The Queues page's body: every queue with its live counts, starts in the
/// last minute, limits and step defaults, and (unless read-only) pause,
/// resume and the concurrency and rate limits.
pub async fn queues(st: &AppState, viewer: &super::layout::Viewer) -> Markup {
    let queues = match st.pod.queues().await {
        Ok(q) => q,
        Err(e) => return super::layout::message(false, &format!("The store did not answer: {e}")),
    };
    html! {
        h1 { "Queues" }
        p.muted { "Settings live in the store: every pod obeys a change from its next claim. Counts are live rows only; starts are those of the last minute. A rate limit is a token bucket: at most burst + rate × seconds starts in any window." }
        div.panel {
            table id="queues" {
                thead { tr { th { "queue" } th { "state" } th { "pending" } th { "claimed" } th { "started / min" } th { "max concurrency" } th { "rate limit" } th { "step defaults" } @if !viewer.read_only { th { "actions" } } } }
                tbody {
                    @for q in &queues {
                        @let name = &q.settings.name;
                        tr data-queue=(name) {
                            td { a href={"/ui/steps?queue=" (name)} { (name) } }
                            td { (status_badge(if q.settings.paused { "paused" } else { "running" })) }
                            td { (q.pending) }
                            td { (q.claimed) }
                            td.started { (q.started_last_minute) }
                            td { (q.settings.max_concurrency.map(|m| m.to_string()).unwrap_or_else(|| "no limit".into())) }
                            td.rate { (rate_text(&q.settings)) }
                            td.muted { (defaults_text(&q.settings)) }
                            @if !viewer.read_only {
                                td {
                                    div.row {
                                        form method="post" action={"/ui/queues/" (name) "/" (if q.settings.paused { "resume" } else { "pause" })} {
                                            input type="hidden" name="csrf" value=(viewer.csrf);
                                            button.secondary.toggle type="submit" { (if q.settings.paused { "Resume" } else { "Pause" }) }
                                        }
                                        form.row method="post" action={"/ui/queues/" (name) "/limit"} {
                                            input type="hidden" name="csrf" value=(viewer.csrf);
                                            label { "limit" input type="number" name="max_concurrency" min="1" max="1000000"
                                                value=[q.settings.max_concurrency] placeholder="none" aria-label={"max concurrency of " (name)}; }
                                            label { "rate/s" input type="number" name="rate_per_second" min="0.001" max="100000" step="any"
                                                value=[q.settings.rate_per_second] placeholder="none" aria-label={"rate per second of " (name)}; }
                                            label { "burst" input type="number" name="burst" min="1" max="100000"
                                                value=[q.settings.burst] placeholder="auto" aria-label={"burst of " (name)}; }
                                            button.secondary type="submit" { "Set" }
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
