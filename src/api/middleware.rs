//! What wraps every request: the request middleware ([`observe`]: counts,
//! latency, panics to 500, any error to the documented body) and admission
//! ([`admit`], [`on_connect`]: connection and body limits, so stalled or
//! hostile clients cannot tie up a pod).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::{web, ResponseError};
use futures_util::FutureExt;

use super::error::{error_type_for, ApiError, ErrorType};
use super::metrics::{HTTP_LATENCY, HTTP_REQUESTS, OPEN_CONNECTIONS};

/// What the request middleware keeps about a request while it is served. (Not
/// the request itself: routing needs sole ownership of it.)
pub struct RequestMeta {
    route: String,
    method: String,
    path: String,
    t0: Instant,
}

impl RequestMeta {
    /// Reads the route pattern, method and path before the call.
    pub fn of(req: &ServiceRequest) -> Self {
        RequestMeta {
            route: req
                .match_pattern()
                .unwrap_or_else(|| "unmatched".to_string()),
            method: req.method().to_string(),
            path: req.path().to_string(),
            t0: Instant::now(),
        }
    }

    fn count(&self, status: StatusCode) {
        HTTP_REQUESTS
            .with_label_values(&[self.route.as_str(), self.method.as_str(), status.as_str()])
            .inc();
        HTTP_LATENCY
            .with_label_values(&[self.route.as_str()])
            .observe(self.t0.elapsed().as_secs_f64());
    }
}

/// The request middleware: counts requests by route and status; turns a panic in
/// any handler into a 500 with the error body (the worker survives); and rewrites
/// any error response that is not already the JSON error body (e.g. actix's own
/// extractor errors) or a dashboard page into one, so clients always get `{detail, error_type, …}`.
pub async fn observe<F>(
    meta: RequestMeta,
    call: F,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error>
where
    F: std::future::Future<Output = Result<ServiceResponse<BoxBody>, actix_web::Error>>,
{
    let res = match std::panic::AssertUnwindSafe(call).catch_unwind().await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            // Errors actix renders itself: give them the documented body.
            let status = e.as_response_error().status_code();
            meta.count(status);
            let reason = status.canonical_reason().unwrap_or("error");
            let e =
                ApiError::for_path(error_type_for(status), format!("{reason}: {e}"), &meta.path)
                    .with_status(status);
            return Err(e.into());
        }
        Err(p) => {
            tracing::error!(route = %meta.route, panic = %fleet_q_actors::supervision::panic_message(p.as_ref()), "request handler panicked");
            meta.count(StatusCode::INTERNAL_SERVER_ERROR);
            let e = ApiError::for_path(
                ErrorType::InternalError,
                "internal error; see the pod's logs",
                &meta.path,
            );
            return Err(e.into());
        }
    };
    let status = res.status();
    // The dashboard's own error pages (HTML) stay as they are.
    let rendered = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    let res = if status.as_u16() >= 400 && !rendered {
        let (req, resp) = res.into_parts();
        let text = actix_web::body::to_bytes(resp.into_body())
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let reason = status.canonical_reason().unwrap_or("error");
        let detail = if text.trim().is_empty() || text.len() > 300 {
            reason.to_string()
        } else {
            format!("{reason}: {}", text.trim())
        };
        let body = ApiError::new(error_type_for(status), detail, &req).with_status(status);
        ServiceResponse::new(req, body.error_response())
    } else {
        res
    };
    meta.count(res.status());
    Ok(res)
}

// ------------------------------------------------------------- admission ---

/// Limits on what one client can hold of a pod: connections and time.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// A request body must arrive within this; else 408 and the connection closes.
    pub body_timeout: Duration,
    /// Open connections past which requests are refused with 503 (probes excepted).
    pub max_connections: usize,
    /// Open connections now (kept by [`on_connect`]).
    pub open: Arc<std::sync::atomic::AtomicUsize>,
}

impl HttpLimits {
    /// Limits with a fresh connection count.
    pub fn new(body_timeout: Duration, max_connections: usize) -> Self {
        HttpLimits {
            body_timeout,
            max_connections,
            open: Arc::default(),
        }
    }
}

/// Held in each connection's data while it is open; counts it.
struct ConnGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        OPEN_CONNECTIONS.dec();
    }
}

/// For `HttpServer::on_connect`: counts each connection while it is open.
pub fn on_connect(
    open: Arc<std::sync::atomic::AtomicUsize>,
) -> impl Fn(&dyn std::any::Any, &mut actix_web::dev::Extensions) + Send + Sync + 'static {
    move |_, ext| {
        open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        OPEN_CONNECTIONS.inc();
        ext.insert(ConnGuard(open.clone()));
    }
}

/// Probes and scrapes answer whatever the load: a liveness probe that cannot
/// connect would have the orchestrator kill a pod that is only busy, and an
/// overload is when the metrics matter most.
fn is_probe(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/metrics")
}

/// Checks a request before it is routed: refuses it past the connection cap
/// (503, connection closed), refuses bodies in an encoding the server does not
/// decode (415), and puts a deadline on reading its body.
pub fn admit(req: &mut ServiceRequest, limits: &HttpLimits) -> Result<(), ApiError> {
    let open = limits.open.load(std::sync::atomic::Ordering::SeqCst);
    if open > limits.max_connections && !is_probe(req.path()) {
        return Err(ApiError::for_path(
            ErrorType::DatabaseError,
            format!(
                "this pod has too many open connections ({open}, limit {}); retry later",
                limits.max_connections
            ),
            req.path(),
        )
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
        .closing());
    }
    if let Some(enc) = req.headers().get(header::CONTENT_ENCODING) {
        let identity = enc
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("identity"));
        if !identity {
            return Err(ApiError::for_path(
                ErrorType::UnsupportedMediaType,
                "Content-Encoding is not supported: send the body uncompressed",
                req.path(),
            )
            .closing());
        }
    }
    let has_body = match req.headers().get(header::CONTENT_LENGTH) {
        Some(len) => len.as_bytes() != b"0",
        None => req.headers().contains_key(header::TRANSFER_ENCODING),
    };
    if !has_body {
        return Ok(());
    }
    let inner = actix_web::HttpMessage::take_payload(req);
    req.set_payload(actix_web::dev::Payload::Stream {
        payload: Box::pin(BodyDeadline {
            inner,
            deadline: Box::pin(tokio::time::sleep(limits.body_timeout)),
            done: false,
        }),
    });
    Ok(())
}

/// A request body that fails with `TimedOut` once its deadline passes.
struct BodyDeadline {
    inner: actix_web::dev::Payload,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl futures_util::Stream for BodyDeadline {
    type Item = Result<web::Bytes, actix_web::error::PayloadError>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = std::pin::Pin::new(&mut this.inner).poll_next(cx) {
            this.done = item.is_none();
            return Poll::Ready(item);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Err(actix_web::error::PayloadError::Io(
                std::io::Error::new(std::io::ErrorKind::TimedOut, "request body timed out"),
            ))));
        }
        Poll::Pending
    }
}
