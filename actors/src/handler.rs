//! Step handlers: user code that runs a step, registered by step type.
//!
//! Handlers never run inside an actor: the `executor::ExecutorPool` runs
//! each step as its own task on a dedicated runtime, under a timeout, catching
//! panics, so a faulty handler fails its step and nothing else.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::step::Step;

/// What a handler gets for one run of a step.
#[derive(Clone, Debug)]
pub struct StepContext {
    /// The step as claimed (payload, retry count, …).
    pub step: Step,
    /// This run's attempt number (fencing number; grows on every claim).
    pub attempt: u32,
    /// Stable across every attempt of this step: use it to make side effects
    /// idempotent (e.g. as an `Idempotency-Key` towards a payment API).
    pub idempotency_key: String,
    /// The pod running it.
    pub pod_id: String,
    /// How long this run may take before it is cancelled.
    pub timeout: Duration,
}

/// A handler's failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerError {
    /// Stored as the step's `last_error`.
    pub message: String,
    /// Retryable errors go back to pending while retries remain; terminal ones fail
    /// the step at once.
    pub retryable: bool,
}

impl HandlerError {
    /// A failure worth retrying (timeouts, unavailable dependencies, 5xx).
    pub fn retryable(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that retrying cannot fix (bad arguments, 4xx).
    pub fn terminal(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            retryable: false,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.retryable {
            "retryable"
        } else {
            "terminal"
        };
        write!(f, "{kind}: {}", self.message)
    }
}

impl std::error::Error for HandlerError {}

/// Runs steps of one type.
#[async_trait]
pub trait StepHandler: Send + Sync + 'static {
    /// Runs one attempt; the JSON result is stored on success.
    async fn run(&self, ctx: StepContext) -> Result<Value, HandlerError>;
}

/// Handlers by step type.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: HashMap<String, Arc<dyn StepHandler>>,
}

impl HandlerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for `step_type`, replacing any earlier one.
    pub fn register(
        &mut self,
        step_type: impl Into<String>,
        handler: impl StepHandler,
    ) -> &mut Self {
        self.handlers.insert(step_type.into(), Arc::new(handler));
        self
    }

    /// The handler for `step_type`.
    pub fn get(&self, step_type: &str) -> Option<Arc<dyn StepHandler>> {
        self.handlers.get(step_type).cloned()
    }

    /// Registered types, sorted.
    pub fn types(&self) -> Vec<String> {
        let mut t: Vec<String> = self.handlers.keys().cloned().collect();
        t.sort();
        t
    }
}

impl fmt::Debug for HandlerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerRegistry")
            .field("types", &self.types())
            .finish()
    }
}
