//! Built-in step handlers.
//!
//! - `noop`: completes at once (demos, benchmarks).
//! - `sleep`: waits `args.ms` milliseconds, then completes.
//! - `http` (one registration per configured type, `FLEET_Q_HTTP_HANDLERS`):
//!   POSTs the step as JSON to the type's URL, so steps can be handled by a service
//!   in any language. 2xx completes (the response JSON becomes the result), 4xx
//!   fails the step terminally, 5xx, timeouts and connection errors are retried.

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
}

impl Http {
    /// A handler posting to `url` with `client`.
    pub fn new(url: impl Into<String>, client: reqwest::Client) -> Self {
        Http {
            url: url.into(),
            client,
        }
    }
}

fn snippet(body: &str) -> String {
    let t: String = body.chars().take(500).collect();
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
        let text = resp.text().await.map_err(|e| {
            HandlerError::retryable(format!("http {}: reading the response: {e}", self.url))
        })?;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return Ok(serde_json::from_str(&text).unwrap_or(json!({ "body": text })));
        }
        let msg = format!("http {} answered {status}: {}", self.url, snippet(&text));
        if status.is_client_error() {
            Err(HandlerError::terminal(msg))
        } else {
            Err(HandlerError::retryable(msg))
        }
    }
}

/// The built-in handlers plus one `http` handler per configured type.
pub fn builtin(http_handlers: &BTreeMap<String, String>) -> HandlerRegistry {
    let mut r = HandlerRegistry::new();
    r.register("noop", Noop).register("sleep", Sleep);
    if !http_handlers.is_empty() {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("fleet-q/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("HTTP client with static settings");
        for (t, url) in http_handlers {
            r.register(t.clone(), Http::new(url.clone(), client.clone()));
        }
    }
    r
}
