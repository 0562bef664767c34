//! The Snowflake store, on `snowflake-api` 0.14.
//!
//! - **Sessions.** A pool of `FLEET_Q_SNOWFLAKE_CONNECTION_POOL_SIZE` sessions, one
//!   statement at a time each, every statement bounded by
//!   `FLEET_Q_SNOWFLAKE_CONNECTION_TIMEOUT`, and so is the wait for a free session
//!   (a server that stalls cannot queue callers behind each other's timeouts). Transient failures (network, HTTP 5xx,
//!   lock waits, timeouts) are retried with backoff here; fatal ones (auth, missing
//!   objects, SQL errors) are reported at once. The HTTP client carries no retrying
//!   middleware, so no error is hidden from this policy.
//! - **Endpoint override.** `snowflake-api` always builds
//!   `https://{account}.snowflakecomputing.com/…`; a middleware rewrites scheme,
//!   host and port when `FLEET_Q_SNOWFLAKE_HOST` / `_PORT` / `_PROTOCOL` are set
//!   (proxies, PrivateLink, tests).
//! - **SQL safety.** No bind parameters exist: every value goes through [`sql`].
//! - **Uniqueness.** Snowflake does not enforce primary keys on standard tables, so
//!   inserts are `INSERT … SELECT … WHERE NOT EXISTS` (by step id and idempotency
//!   key) and heartbeats are one `MERGE`; a retried insert is therefore idempotent.
//! - **Statement economy.** Standard tables lock the whole table per DML statement,
//!   so work is batched: a claim is one `UPDATE … WHERE step_id IN (SELECT … LIMIT
//!   n)` tagged with a token plus one `SELECT` by token; a group of finishes is one
//!   `UPDATE … FROM (VALUES …)` plus one `SELECT` by token; an insert batch is one
//!   statement. Tokens are reused when a statement is retried, so a retry after a
//!   lost answer still reports what the first attempt did.
//! - **Time.** Timestamps are written with `SYSDATE()` (UTC) and read back as epoch
//!   milliseconds (`DATE_PART(EPOCH_MILLISECOND, …)`), so only integers and text
//!   cross the Arrow boundary.
//!
//! Layout: `session` (pool, one statement, retries), `decode` (Arrow),
//! `rows` (row mapping, chunking), `schema` (DDL), [`sql`] (literals),
//! `fenced` (proven reads, fenced updates), `insert`, `stats`, and
//! `store` (the `Store` impl).

mod decode;
mod fenced;
mod insert;
mod options;
mod queues;
mod rows;
mod schedules;
mod schema;
mod search;
mod session;
pub mod sql;
mod stats;
mod store;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fleet_q_actors::*;
use snowflake_api::{
    AuthArgs, AuthType, CertificateArgs, PasswordArgs, QueryResult, SnowflakeApi,
    SnowflakeApiBuilder, SnowflakeApiError,
};

use decode::*;
pub use options::SnowflakeOptions;
use rows::*;
pub use rows::{MAX_ERROR_BYTES, MAX_RESULT_BYTES};
pub use schema::DDL;
use session::*;

/// The Snowflake implementation of [`Store`].
pub struct SnowflakeStore {
    settings: SnowflakeOptions,
    key_pem: Option<String>,
    sessions: Vec<tokio::sync::Mutex<Session>>,
    /// One permit per session: a caller waits here, at most the client timeout
    /// and in arrival order, for any session to be free (see `session.rs`).
    free: tokio::sync::Semaphore,
    next: AtomicUsize,
    statements: AtomicU64,
    by_op: std::sync::Mutex<BTreeMap<&'static str, u64>>,
    timeout: Duration,
    /// Pacing of [`Self::read_back`].
    read_back: Backoff,
    /// Queues this store has made sure have a row (see `queues.rs`).
    known_queues: std::sync::Mutex<std::collections::HashSet<String>>,
}
