//! The composition root of `fleet-q serve`: settings → store → pod → HTTP server,
//! then wait for a shutdown signal and shut down gracefully.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;

use actix_web::{web, App};
use fleet_q_actors::{Backoff, Pod, PodConfig, Store, StoreError};

use crate::api::{self, AppState};
use crate::config::{Settings, StorageMode};
use crate::http_io::ErrorBodyIo;
use crate::{handlers, storage};

/// The pod settings derived from the validated settings.
pub fn pod_config(s: &Settings) -> PodConfig {
    PodConfig {
        pod_id: s.pod_id.clone(),
        max_capacity: s.max_capacity(),
        claim_batch: s.claim_batch_size,
        claim_ahead: s.claim_ahead,
        claim_min_free: s.claim_min_free,
        finish_linger: s.finish_linger,
        idle_poll_max: s.idle_poll_max,
        heartbeat_interval: s.heartbeat_interval,
        claim_interval: s.claim_interval,
        leader_check_interval: s.leader_check_interval,
        recovery_interval: s.recovery_interval,
        reconcile_interval: (!s.reconcile_interval.is_zero()).then_some(s.reconcile_interval),
        stats_interval: s.stats_interval,
        // Snowflake sessions cancel statements at half the connection timeout,
        // so no finish commits later than this after its timestamp.
        stats_lag: s.snowflake.connection_timeout,
        dead_pod_threshold: s.dead_pod_threshold,
        step_timeout: s.step_timeout,
        shutdown_grace: s.shutdown_grace,
        retention: s.retention,
        prune_batch: s.prune_batch_size,
        prune_interval: s.prune_interval,
        schedule_check: s.schedule_check,
        step_backoff: Backoff {
            base: s.default_base_delay,
            max: s.default_max_delay,
            jitter: 0.5,
        },
        store_retry: s.store_retry(),
        queues: s.queues.clone(),
        create_queues: s.create_queues,
        ledger_path: s.ledger_path.clone(),
        restart_budget: fleet_q_actors::supervision::RestartBudget {
            max_restarts: s.actor_restart_limit,
            window: s.actor_restart_window,
        },
        meta: serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "api_port": s.api_port,
        }),
        ..Default::default()
    }
}

/// Runs a pod until `shutdown` resolves, then shuts it down gracefully. Must run
/// inside an actix system. Returns when the pod has stopped.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let store = open_store(&settings)
        .await
        .map_err(|e| anyhow::anyhow!("opening the {:?} store: {e}", settings.storage_mode))?;
    load_schedules(&settings, store.as_ref()).await?;
    let handlers = handlers::builtin(&settings.http_handlers, settings.http_max_result_bytes);
    let pod = Arc::new(Pod::start(pod_config(&settings), store, handlers)?);
    let addr = listener.local_addr()?;
    let max_payload = settings.max_payload_bytes;
    let ui = settings.ui.then_some(crate::ui::UiConfig {
        read_only: settings.ui_read_only,
    });
    let state = web::Data::new(AppState::new(
        pod.clone(),
        settings.admin_token.clone(),
        settings.dead_pod_threshold,
        // Heartbeats reach the store every interval, so a healthy pod has always
        // heard from it within two intervals.
        settings.heartbeat_interval * 2 + std::time::Duration::from_secs(5),
    ));
    let limits = api::HttpLimits::new(settings.http_body_timeout, settings.http_max_connections);
    let server = http_server(listener, limits, move |limits| {
        App::new()
            .app_data(state.clone())
            .configure(|c| api::routes(c, max_payload))
            .configure(|c| {
                if let Some(ui) = ui {
                    crate::ui::routes(c, ui)
                }
            })
            .wrap_fn(move |mut req, srv| {
                use actix_web::dev::Service;
                use futures_util::future::{ready, Either};
                let meta = api::RequestMeta::of(&req);
                let call = match api::admit(&mut req, &limits) {
                    Ok(()) => Either::Left(srv.call(req)),
                    Err(e) => {
                        let resp = actix_web::ResponseError::error_response(&e);
                        Either::Right(ready(Ok(req.into_response(resp))))
                    }
                };
                api::observe(meta, call)
            })
            .wrap(tracing_actix_web::TracingLogger::default())
    })?;
    let handle = server.handle();
    actix_rt::spawn(server);
    tracing::info!(pod_id = %settings.pod_id, %addr, store = %format!("{:?}", settings.storage_mode).to_ascii_lowercase(), "serving");

    shutdown.await;
    tracing::info!("shutdown signal received");
    let report = pod.shutdown().await;
    handle.stop(true).await;
    tracing::info!(
        released = report.released,
        released_waiting = report.released_waiting,
        "stopped"
    );
    Ok(())
}

/// The HTTP server of a pod, on `listener`, serving the app `make_app` builds
/// (once per worker) over connections wrapped in [`ErrorBodyIo`], so that even
/// requests the HTTP parser rejects get the JSON error body. (This is what
/// `actix_web::HttpServer` assembles, minus HTTP/2 and TLS, plus the wrapper.)
///
/// - Each connection is counted while open (`limits.open`), for the refusal past
///   `FLEET_Q_HTTP_MAX_CONNECTIONS` (see [`api::admit`]).
/// - A request head must arrive within 5 s; bodies have their own deadline.
/// - actix-server stops accepting past the cap + 256 per worker, so probes can
///   still connect while requests past the cap are refused with 503.
pub fn http_server<F, A, B>(
    listener: TcpListener,
    limits: api::HttpLimits,
    make_app: F,
) -> std::io::Result<actix_server::Server>
where
    F: Fn(api::HttpLimits) -> App<A> + Send + Clone + 'static,
    A: actix_web::dev::ServiceFactory<
            actix_web::dev::ServiceRequest,
            Config = (),
            Response = actix_web::dev::ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: actix_web::body::MessageBody + 'static,
{
    use actix_service::{fn_service, map_config, IntoServiceFactory, ServiceFactoryExt};
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let max_conn = limits.max_connections + 256;
    Ok(actix_server::Server::build()
        .workers(2)
        .disable_signals()
        .shutdown_timeout(5)
        .max_concurrent_connections(max_conn)
        .listen("fleet-q-http", listener, move || {
            let open = limits.open.clone();
            let count = api::on_connect(open);
            let app = make_app(limits.clone())
                .into_factory()
                .map_err(|e: actix_web::Error| e.error_response());
            let http = actix_http::HttpService::build()
                .client_request_timeout(std::time::Duration::from_secs(5))
                .local_addr(addr)
                .on_connect_ext(move |io: &ErrorBodyIo<actix_rt::net::TcpStream>, ext| {
                    count(io.get_ref(), ext)
                })
                .finish(map_config(app, move |_| {
                    actix_web::dev::AppConfig::default()
                }));
            fn_service(|io: actix_rt::net::TcpStream| async move {
                let _ = io.set_nodelay(true);
                let peer = io.peer_addr().ok();
                Ok::<_, actix_http::error::DispatchError>((
                    ErrorBodyIo::new(io),
                    actix_http::Protocol::Http1,
                    peer,
                ))
            })
            .and_then(http)
        })?
        .run())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signals() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Upserts the schedules the settings file declares, by name, so every pod can
/// carry the same file: a schedule whose timing is unchanged keeps its next
/// tick, so restarts neither skip nor repeat one.
async fn load_schedules(settings: &Settings, store: &dyn Store) -> anyhow::Result<()> {
    for spec in &settings.schedules {
        let name = spec.name.clone();
        let s = settings
            .store_retry()
            .run("schedule_put", || store.schedule_put(spec.clone()))
            .await
            .map_err(|e| {
                anyhow::anyhow!("loading schedule {name:?} from the settings file: {e}")
            })?;
        tracing::info!(schedule = %name, id = %s.id, next_run_at = ?s.next_run_at, "schedule loaded from the settings file");
    }
    Ok(())
}

/// Opens the store the settings name and initialises its schema: the one place
/// the settings are turned into a backend's options.
pub async fn open_store(settings: &Settings) -> Result<Arc<dyn Store>, StoreError> {
    let store: Arc<dyn Store> = match settings.storage_mode {
        StorageMode::Sqlite => Arc::new(storage::sqlite::SqliteStore::open(
            &settings.sqlite_db_path,
            storage::sqlite::SqliteOptions::default(),
        )?),
        StorageMode::Snowflake => Arc::new(storage::snowflake::SnowflakeStore::open(
            &settings.snowflake,
            settings.store_retry().backoff,
        )?),
    };
    // The one store call made before the pod (and its StorageActor) exists,
    // under the same retry policy.
    settings
        .store_retry()
        .run("schema_init", || store.schema_init())
        .await?;
    Ok(store)
}
