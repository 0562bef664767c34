//! The HTTP API (actix-web).
//!
//! - Every error is JSON `{detail, error_type, timestamp, path}` with the seed's
//!   error types; no error body carries SQL, a backtrace or a secret. Wrong methods
//!   answer 405 with the same body, and a panicking handler answers 500 without
//!   taking the worker down.
//! - Liveness (`/health`) is answered from memory and never touches the database.
//!   Readiness (`/ready`) and queue statistics use what the pod already knows or a
//!   short-lived cache, so probes and scrapes have a bounded cost.
//! - Admin routes (`/admin/*`, `DELETE /steps/{id}`) require
//!   `Authorization: Bearer <FLEET_Q_ADMIN_TOKEN>` when a token is configured.
//! - `/openapi.json` is generated from these handlers and types (utoipa).
//!
//! Layout: [`error`] (the error body), [`auth`] (the admin check), [`dto`]
//! (every request and response body, typed), [`middleware`] (request metrics,
//! panics, admission), [`metrics`] (the API's metrics and `/metrics`),
//! [`routes`] (the handlers, by area). The route table below lists each route
//! once; the router, `/openapi.json` and [`ROUTES`] (for tests) come from it.
//! The API sees the engine only through [`Pod`]: no storage type is used here.

pub mod auth;
pub mod dto;
pub mod error;
pub mod metrics;
pub mod middleware;
pub(crate) mod routes;
pub mod search;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::web;
use chrono::{DateTime, Utc};
use fleet_q_actors::{Pod, PodRecord, QueueStats, StoreError};
use utoipa::OpenApi;

use crate::secret::Secret;
pub use dto::MAX_BATCH;
use error::{json_error, method_not_allowed, not_found, path_error, query_error};
pub use error::{truncate, ApiError, ErrorType, QUOTE_MAX};
use metrics::register_metrics;
pub use middleware::{admit, observe, on_connect, HttpLimits, RequestMeta};
pub use routes::admin::MAX_TYPES_SHOWN;
pub use routes::probes::RECOVERY_FAILING_AFTER;
use routes::{admin, debug, finder, probes, queues, schedules, steps};

/// How long queue statistics are reused before the store is asked again.
const STATS_TTL: Duration = Duration::from_secs(2);

/// The longest a `/metrics` scrape waits for fresh queue statistics. Past it
/// the scrape answers with the gauges' last values: a store that stalls
/// (every attempt waiting out its timeout) must not make scrapes outlast
/// Prometheus' scrape timeout (10 s by default), when metrics matter most.
pub(crate) const SCRAPE_STATS_WAIT: Duration = Duration::from_secs(2);

pub(crate) struct Snapshot {
    at: Instant,
    pub(crate) stats: QueueStats,
    pub(crate) pods: Vec<PodRecord>,
    pub(crate) now: DateTime<Utc>,
}

/// What the handlers share.
pub struct AppState {
    /// The running pod.
    pub pod: Arc<Pod>,
    /// Admin bearer token, when configured.
    pub admin_token: Option<Secret>,
    /// Liveness threshold (for active pod counts).
    pub dead_pod_threshold: Duration,
    /// The store must have answered within this for `/ready`.
    pub ready_window: Duration,
    snapshot: Arc<tokio::sync::Mutex<Option<Arc<Snapshot>>>>,
    statements_seen: Mutex<std::collections::HashMap<&'static str, u64>>,
}

impl AppState {
    /// State for the routes of `pod`.
    pub fn new(
        pod: Arc<Pod>,
        admin_token: Option<Secret>,
        dead_pod_threshold: Duration,
        ready_window: Duration,
    ) -> Self {
        register_metrics();
        AppState {
            pod,
            admin_token,
            dead_pod_threshold,
            ready_window,
            snapshot: Arc::new(tokio::sync::Mutex::new(None)),
            statements_seen: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Queue statistics and pods, reused for [`STATS_TTL`]; one refresh at a
    /// time.
    ///
    /// The refresh runs on a task of its own, holding the slot until it ends:
    /// a caller that stops waiting (a scrape past [`SCRAPE_STATS_WAIT`], a
    /// client that hung up) leaves it to finish and fill the slot, and the
    /// next caller waits for it instead of starting another. So however long
    /// the store takes to answer, at most one refresh is in flight.
    pub(crate) async fn snapshot(&self) -> Result<Arc<Snapshot>, StoreError> {
        let mut slot = self.snapshot.clone().lock_owned().await;
        if let Some(s) = slot.as_ref() {
            if s.at.elapsed() < STATS_TTL {
                return Ok(s.clone());
            }
        }
        let pod = self.pod.clone();
        let refresh = actix_web::rt::spawn(async move {
            let stats = pod.queue_stats().await?;
            let (pods, now) = pod.pods_recent().await?;
            let snap = Arc::new(Snapshot {
                at: Instant::now(),
                stats,
                pods,
                now,
            });
            *slot = Some(snap.clone());
            Ok(snap)
        });
        refresh.await.map_err(|e| {
            StoreError::transient("queue_stats", format!("the statistics refresh failed: {e}"))
        })?
    }
}

/// Declares the route table: each line is `"METHOD" "path" => handler`. From it
/// come [`ROUTES`], the router ([`routes`]) and the OpenAPI document
/// ([`ApiDoc`]), so a route cannot be served without being documented or the
/// other way round. GET routes answer HEAD too.
macro_rules! route_table {
    ($( $method:literal $path:literal => $($handler:ident)::+ ),* $(,)?) => {
        /// Every route: `(method, path)`, for tests and the OpenAPI check.
        pub const ROUTES: &[(&str, &str)] = &[$(($method, $path)),*];

        fn register_routes(cfg: &mut web::ServiceConfig) {
            // One resource per line, guarded by its method so that a path with
            // several methods (GET and PUT) reaches each; then one resource per
            // path that answers any other method with 405.
            $(
                cfg.service(
                    web::resource($path)
                        .guard(method_guard($method))
                        .route(web::route().to($($handler)::+)),
                );
            )*
            for (_, path) in ROUTES {
                cfg.service(web::resource(*path).default_service(web::to(method_not_allowed)));
            }
        }

        /// The OpenAPI document of every route.
        #[derive(OpenApi)]
        #[openapi(
            info(title = "fleet-q", description = "A brokerless distributed step queue"),
            paths($($($handler)::+),*),
            components(schemas(ApiError, ErrorType))
        )]
        pub struct ApiDoc;
    };
}

route_table! {
    "GET" "/health" => probes::health,
    "GET" "/ready" => probes::ready,
    "POST" "/submit" => steps::submit,
    "POST" "/submit/batch" => steps::submit_batch,
    "GET" "/status/{step_id}" => steps::status,
    "GET" "/idempotency/{step_id}" => steps::idempotency,
    "DELETE" "/steps/{step_id}" => admin::cancel,
    "GET" "/admin/leader" => admin::admin_leader,
    "GET" "/admin/queue" => admin::admin_queue,
    "POST" "/admin/recovery/run" => admin::admin_recovery_run,
    "GET" "/admin/recovery" => admin::admin_recovery,
    "GET" "/admin/failed" => admin::admin_failed,
    "POST" "/admin/steps/{step_id}/retry" => admin::admin_retry,
    "GET" "/admin/steps" => finder::admin_steps,
    "POST" "/admin/steps/bulk" => finder::admin_steps_bulk,
    "GET" "/admin/queues" => queues::list,
    "GET" "/admin/queues/{name}" => queues::get,
    "PUT" "/admin/queues/{name}" => queues::put,
    "POST" "/admin/queues/{name}/pause" => queues::pause,
    "POST" "/admin/queues/{name}/resume" => queues::resume,
    "GET" "/admin/schedules" => schedules::list,
    "POST" "/admin/schedules" => schedules::create,
    "GET" "/admin/schedules/{id}" => schedules::get,
    "PUT" "/admin/schedules/{id}" => schedules::put,
    "DELETE" "/admin/schedules/{id}" => schedules::delete,
    "POST" "/admin/schedules/{id}/pause" => schedules::pause,
    "POST" "/admin/schedules/{id}/resume" => schedules::resume,
    "POST" "/admin/schedules/{id}/trigger" => schedules::trigger,
    "GET" "/metrics" => metrics::metrics_text,
    "GET" "/openapi.json" => probes::openapi_json,
}

/// The guard for a method of the table (GET answers HEAD too: actix sends no
/// body for HEAD).
fn method_guard(method: &'static str) -> impl actix_web::guard::Guard {
    actix_web::guard::fn_guard(move |ctx| {
        let m = &ctx.head().method;
        match method {
            "GET" => m == actix_web::http::Method::GET || m == actix_web::http::Method::HEAD,
            other => m.as_str() == other,
        }
    })
}

/// Registers every route on `cfg`, with the extractor limits and error bodies.
pub fn routes(cfg: &mut web::ServiceConfig, max_payload_bytes: usize) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(max_payload_bytes)
            .error_handler(json_error),
    )
    .app_data(web::PayloadConfig::new(max_payload_bytes))
    .app_data(web::QueryConfig::default().error_handler(query_error))
    .app_data(web::PathConfig::default().error_handler(path_error));
    register_routes(cfg);
    if fleet_q_actors::supervision::FAILPOINTS_ENABLED {
        cfg.route(
            "/debug/fault/{actor}/{kind}",
            web::post().to(debug::inject_fault),
        );
        cfg.route("/debug/panic", web::post().to(debug::panic_in_handler));
        cfg.route(
            "/debug/heartbeat-failure/{seconds}",
            web::post().to(debug::inject_heartbeat_failure),
        );
    }
    cfg.default_service(web::to(not_found));
}
