//! Built-in step handlers.
//!
//! - `noop`: completes at once (demos, benchmarks).
//! - `sleep`: waits `args.ms` milliseconds, then completes.
//! - `http` (one registration per configured type, `FLEET_Q_HTTP_HANDLERS`):
//!   POSTs the step as JSON to the type's URL, so steps can be handled by a service
//!   in any language. 2xx completes (the response JSON becomes the result), 4xx
//!   fails the step terminally, 5xx, timeouts and connection errors are retried.
//!   Redirects are not followed: a 3xx fails the step terminally and names its
//!   `Location`. A 2xx body larger than `FLEET_Q_HTTP_MAX_RESULT_BYTES` (default
//!   64 KiB) fails the step terminally (it is not truncated: a cut JSON document
//!   is no result); the handler stops reading at the limit, so a huge answer
//!   costs the pod no memory.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use fleet_q_actors::{HandlerError, HandlerRegistry, StepContext, StepHandler};
use serde_json::{json, Value};

/// Request headers the `http` handler sends.
pub mod headers {
    /// The step id.
    pub const STEP_ID: &str = "x-fleet-q-step-id";
    /// The attempt (fencing number) of this run.
    pub const ATTEMPT: &str = "x-fleet-q-attempt";
    /// Stable across attempts: dedupe side effects on it.
    pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
    /// The pod running the step.
    pub const POD_ID: &str = "x-fleet-q-pod-id";
}

/// Completes at once.
pub struct Noop;

#[async_trait]
impl StepHandler for Noop {
    async fn run(&self, _: StepContext) -> Result<Value, HandlerError> {
        Ok(Value::Null)
    }
}

/// Sleeps `args.ms` milliseconds.
pub struct Sleep;

#[async_trait]
impl StepHandler for Sleep {
    async fn run(&self, ctx: StepContext) -> Result<Value, HandlerError> {
        let ms = match ctx.step.payload.args.get("ms") {
            None => 0,
            Some(v) => v.as_u64().ok_or_else(|| {
                HandlerError::terminal("sleep: args.ms must be a whole number of milliseconds")
            })?,
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(json!({ "slept_ms": ms }))
    }
}

/// POSTs the step to a URL.
pub struct Http {
    url: String,
    client: reqwest::Client,
    max_result_bytes: usize,
}

impl Http {
    /// A handler posting to `url` with `client`, storing answers of at most
    /// `max_result_bytes`.
    pub fn new(url: impl Into<String>, client: reqwest::Client, max_result_bytes: usize) -> Self {
        Http {
            url: url.into(),
            client,
            max_result_bytes,
        }
    }
}

/// Reads at most `limit` bytes of `resp`'s body; `Ok(None)` when it is longer.
async fn read_capped(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

fn snippet(body: &str, max: usize) -> String {
    let t: String = body.chars().take(max).collect();
    if t.len() < body.len() {
        format!("{t}…")
    } else {
        t
    }
}

#[async_trait]
impl StepHandler for Http {
    async fn run(&self, ctx: StepContext) -> Result<Value, HandlerError> {
        let step = &ctx.step;
        let body = json!({
            "step_id": step.step_id,
            "type": step.step_type(),
            "args": step.payload.args,
            "metadata": step.payload.metadata,
            "attempt": ctx.attempt,
            "retry_count": step.retry_count,
            "max_retries": step.max_retries,
            "idempotency_key": ctx.idempotency_key,
        });
        let resp = self
            .client
            .post(&self.url)
            .header(headers::STEP_ID, step.step_id.to_string())
            .header(headers::ATTEMPT, ctx.attempt.to_string())
            .header(headers::IDEMPOTENCY_KEY, &ctx.idempotency_key)
            .header(headers::POD_ID, &ctx.pod_id)
            .timeout(ctx.timeout)
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                let kind = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "could not connect"
                } else {
                    "request failed"
                };
                HandlerError::retryable(format!("http {}: {kind}: {e}", self.url))
            })?;
        let status = resp.status();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(|l| snippet(l, 200))
                .unwrap_or_else(|| "(no Location)".into());
            return Err(HandlerError::terminal(format!(
                "http {} answered {status}, a redirect to {location}; redirects are not followed: configure the final URL",
                self.url
            )));
        }
        let body = read_capped(resp, self.max_result_bytes)
            .await
            .map_err(|e| {
                HandlerError::retryable(format!("http {}: reading the response: {e}", self.url))
            })?;
        let Some(body) = body else {
            let msg = format!(
                "http {} answered {status} with a body over {} bytes (FLEET_Q_HTTP_MAX_RESULT_BYTES); it was not stored",
                self.url, self.max_result_bytes
            );
            return Err(if status.is_server_error() {
                HandlerError::retryable(msg)
            } else {
                HandlerError::terminal(msg)
            });
        };
        let text = String::from_utf8_lossy(&body);
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return Ok(serde_json::from_str(&text).unwrap_or(json!({ "body": text.as_ref() })));
        }
        let msg = format!(
            "http {} answered {status}: {}",
            self.url,
            snippet(&text, 500)
        );
        if status.is_client_error() {
            Err(HandlerError::terminal(msg))
        } else {
            Err(HandlerError::retryable(msg))
        }
    }
}

/// The built-in handlers plus one `http` handler per configured type, storing
/// answers of at most `max_result_bytes`.
pub fn builtin(
    http_handlers: &BTreeMap<String, String>,
    max_result_bytes: usize,
) -> HandlerRegistry {
    let mut r = HandlerRegistry::new();
    r.register("noop", Noop).register("sleep", Sleep);
    if !http_handlers.is_empty() {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fleet-q/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("HTTP client with static settings");
        for (t, url) in http_handlers {
            r.register(
                t.clone(),
                Http::new(url.clone(), client.clone(), max_result_bytes),
            );
        }
    }
    r
}
