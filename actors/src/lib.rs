//! # fleet-q-actors: the engine of fleet-q
//!
//! fleet-q is a brokerless distributed step queue: identical pods share only a
//! database, through which they submit, claim, run and finish steps, heartbeat, elect
//! the eldest live pod as leader, and requeue the work of pods that died.
//!
//! This crate holds everything that does not depend on a particular database or on
//! HTTP: the domain types, the [`Store`] contract every backend implements, and (with
//! the `testkit` feature) the conformance suite every backend must pass.
//!
//! # Layout
//! - [`step`]: [`Step`], [`StepStatus`], [`StepId`], and [`NewStep`], the validated
//!   form of a submit.
//! - [`records`]: [`PodRecord`], leadership by [`eldest_live_pod`], [`QueueStats`].
//! - [`store`]: the [`Store`] trait, its parameter and outcome types, fencing
//!   ([`Lease`]) and retry [`Backoff`].
//! - [`queue`]: named queues, their settings and the claim's fairness rule.
//! - [`quiet`]: idle-quiet mode, in which an idle fleet lets its warehouse
//!   suspend.
//! - [`search`]: [`StepFilter`] and the bounded search and bulk actions.
//! - [`throughput`]: fleet runs per minute, carried in heartbeats.
//! - [`retry`]: [`RetryPolicy`], the one layer where failed store calls are
//!   retried.
//! - [`handler`]: the [`StepHandler`] trait user code implements, and its registry.
//! - [`actors`]: the six actors of a pod (storage, heartbeat, leader, claimer,
//!   executor, recovery), one file each; `messages`: events they share.
//! - [`supervision`]: panic isolation and the restart budget; [`state`]: what the
//!   actors share with the HTTP side; [`ledger`]: the recovery ledger.
//! - [`pod`]: [`Pod`], the composition of all of the above.
//! - `testkit` (feature `testkit`): the shared conformance suite and the
//!   [`conformance_suite!`] macro that expands it into one test per case.
//!
//! Dependencies point one way: the server crate `fleet-q` depends on this one, never
//! the reverse. Nothing here imports an HTTP stack, and the shared store is reached
//! only through [`Store`]: the one database driver here, `rusqlite`, serves the
//! recovery ledger ([`ledger`]), a file local to each pod.

pub mod actors;
pub mod defaults;
pub mod handler;
pub mod ledger;
pub(crate) mod messages;
pub mod metrics;
pub mod pod;
pub mod queue;
pub mod quiet;
pub mod records;
pub mod retry;
pub mod schedule;
pub mod search;
pub mod state;
pub mod step;
pub mod store;
pub mod supervision;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod throughput;

pub use actors::recovery::RecoveryError;
pub use handler::{HandlerError, HandlerRegistry, StepContext, StepHandler};
pub use ledger::RecoverySummary;
pub use pod::{Matching, Pod, PodConfig, PodError, ShutdownReport};
pub use queue::{QueueInfo, QueueSettings};
pub use records::{
    eldest_live_pod, fold_types, PodRecord, PodStatus, QueueStats, StatusCounts, OTHER_TYPES,
    STATS_TYPES,
};
pub use retry::RetryPolicy;
pub use search::{BulkAction, SearchPage, SearchParams, StepFilter};
pub use state::PodState;
pub use step::{
    NewStep, Payload, RunAt, Step, StepId, StepSpec, StepStatus, ValidationError, ValidationErrors,
};
pub use store::{
    Backoff, CancelOutcome, ClaimParams, Claimed, FencedReport, Finish, FinishParams,
    HeartbeatParams, HeldStep, Inserted, Lease, MarkDownParams, OrphanParams, Outcome, PageParams,
    PruneParams, RequeueParams, RetryOutcome, StatsParams, Store, StoreError, StoreErrorKind,
};
