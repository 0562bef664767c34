//! Run a fleet-q pod from your own `main` with your own step handler.
//!
//! ```sh
//! cargo run --example custom_handler
//! ```
//!
//! It starts a pod on a temporary SQLite file, registers a `greet` handler next to
//! the built-in ones, submits a step, waits for its result and shuts down.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fleet_q::storage::sqlite::{SqliteOptions, SqliteStore};
use fleet_q_actors::{
    HandlerError, NewStep, Pod, PodConfig, StepContext, StepHandler, StepSpec, StepStatus, Store,
};
use serde_json::{json, Value};

/// Greets `args.name`; a missing name is a terminal error (retrying cannot fix it).
struct Greet;

#[async_trait]
impl StepHandler for Greet {
    async fn run(&self, ctx: StepContext) -> Result<Value, HandlerError> {
        let name = ctx
            .step
            .payload
            .args
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| HandlerError::terminal("args.name is required"))?;
        // `ctx.idempotency_key` is stable across retries: pass it to downstream
        // services so a retried step does not repeat its side effects.
        Ok(json!({ "greeting": format!("hello, {name}"), "attempt": ctx.attempt }))
    }
}

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path().join("example.db"), SqliteOptions::default())?;
    store.schema_init().await?;

    let mut handlers = fleet_q::handlers::builtin(&Default::default(), 64 * 1024);
    handlers.register("greet", Greet);
    let cfg = PodConfig {
        pod_id: "example-pod".into(),
        heartbeat_interval: Duration::from_secs(1),
        dead_pod_threshold: Duration::from_secs(5),
        ..Default::default()
    };
    let pod = Pod::start(cfg, Arc::new(store), handlers)?;

    let step = NewStep::new(StepSpec {
        step_type: "greet".into(),
        args: Some(json!({ "name": "fleet" })),
        ..Default::default()
    })?;
    let id = pod.submit(vec![step]).await?[0].step_id;
    println!("submitted {id}");
    loop {
        let s = pod.step(id).await?.expect("the step exists");
        if s.status == StepStatus::Completed {
            println!("result: {}", s.result.unwrap_or_default());
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    pod.shutdown().await;
    Ok(())
}
