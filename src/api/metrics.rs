//! The API's Prometheus metrics (requests, latency, queue gauges, statements)
//! and the `/metrics` handler. Queue gauges come from the pod's cached snapshot
//! (see [`super::AppState`]): a scrape costs what one uncached `/admin/queue`
//! costs at most once per two seconds, which reads live rows and the totals
//! table, never history (README, Statistics).

use std::sync::LazyLock;

use actix_web::{web, HttpResponse};
use fleet_q_actors::metrics;
use prometheus::{HistogramVec, IntCounterVec, IntGauge, IntGaugeVec};

use super::AppState;

pub(crate) static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "fleet_q_http_requests_total",
        "HTTP requests by route pattern, method and status.",
        &["route", "method", "status"],
    )
});
pub(crate) static HTTP_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    metrics::histogram_vec(
        "fleet_q_http_request_duration_seconds",
        "HTTP request latency by route pattern.",
        &["route"],
        metrics::latency_buckets(),
    )
});
pub(crate) static PENDING: LazyLock<IntGauge> = LazyLock::new(|| {
    metrics::gauge(
        "fleet_q_pending_steps",
        "Steps pending in the whole queue (the seed's HPA metric).",
    )
});
pub(crate) static QUEUE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics::gauge_vec(
        "fleet_q_queue_steps",
        "Steps in the whole queue by status.",
        &["status"],
    )
});
pub(crate) static QUEUE_LIVE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics::gauge_vec(
        "fleet_q_queue_live_steps",
        "Live steps (pending, claimed) by queue: the 50 queues with the most, the rest summed under \"(other queues)\".",
        &["queue", "status"],
    )
});
/// Most queues `fleet_q_queue_live_steps` names one by one.
pub const MAX_QUEUES_SHOWN: usize = 50;
pub(crate) static OLDEST: LazyLock<IntGauge> = LazyLock::new(|| {
    metrics::gauge(
        "fleet_q_queue_oldest_pending_age_seconds",
        "How long the oldest due pending step has waited (0 when none).",
    )
});
pub(crate) static ACTIVE_PODS: LazyLock<IntGauge> =
    LazyLock::new(|| metrics::gauge("fleet_q_active_pods", "Live pods in the fleet."));
pub(crate) static CANCELLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "fleet_q_steps_cancelled_total",
        "Steps cancelled through this process, by type.",
        &["type"],
    )
});
pub(crate) static OPEN_CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    metrics::gauge(
        "fleet_q_http_open_connections",
        "HTTP connections open on this pod now (requests past FLEET_Q_HTTP_MAX_CONNECTIONS are refused).",
    )
});
pub(crate) static STATEMENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "fleet_q_store_statements_total",
        "SQL statements this process sent to the store, by operation (`all` where the backend groups operations).",
        &["op"],
    )
});

pub(crate) fn register_metrics() {
    LazyLock::force(&HTTP_REQUESTS);
    LazyLock::force(&HTTP_LATENCY);
    LazyLock::force(&PENDING);
    LazyLock::force(&QUEUE);
    LazyLock::force(&QUEUE_LIVE);
    LazyLock::force(&OLDEST);
    LazyLock::force(&ACTIVE_PODS);
    LazyLock::force(&CANCELLED);
    LazyLock::force(&STATEMENTS);
    LazyLock::force(&OPEN_CONNECTIONS);
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", tag = "probes", responses((status = 200, body = String, description = "Prometheus text format", content_type = "text/plain")))]
pub(crate) async fn metrics_text(st: web::Data<AppState>) -> HttpResponse {
    // Queue-wide gauges come from the cached snapshot; if the store is down, or
    // too slow to refresh it within `SCRAPE_STATS_WAIT`, they keep their last
    // values and the scrape still succeeds.
    if let Ok(Ok(snap)) = tokio::time::timeout(super::SCRAPE_STATS_WAIT, st.snapshot()).await {
        let c = &snap.stats.counts;
        PENDING.set(c.pending as i64);
        for (status, n) in [
            ("pending", c.pending),
            ("claimed", c.claimed),
            ("completed", c.completed),
            ("failed", c.failed),
            ("cancelled", c.cancelled),
        ] {
            QUEUE.with_label_values(&[status]).set(n as i64);
        }
        // Queue names are bounded by the store (1,000) and folded here.
        let mut by_queue = snap.stats.by_queue.clone();
        fleet_q_actors::records::fold_named(
            &mut by_queue,
            MAX_QUEUES_SHOWN,
            "(other queues)",
            fleet_q_actors::StatusCounts::total,
            fleet_q_actors::StatusCounts::merge,
        );
        QUEUE_LIVE.reset();
        for (q, counts) in &by_queue {
            QUEUE_LIVE
                .with_label_values(&[q.as_str(), "pending"])
                .set(counts.pending as i64);
            QUEUE_LIVE
                .with_label_values(&[q.as_str(), "claimed"])
                .set(counts.claimed as i64);
        }
        OLDEST.set(
            snap.stats
                .oldest_pending_age
                .map_or(0, |a| a.as_secs() as i64),
        );
        ACTIVE_PODS.set(
            snap.pods
                .iter()
                .filter(|p| p.is_alive(st.dead_pod_threshold))
                .count() as i64,
        );
    }
    {
        let mut seen = st.statements_seen.lock().expect("statements lock");
        for (op, total) in st.pod.statements_by_op() {
            let last = seen.entry(op).or_default();
            if total > *last {
                STATEMENTS.with_label_values(&[op]).inc_by(total - *last);
                *last = total;
            }
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics::render())
}
