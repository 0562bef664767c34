//! # fleet-q: a brokerless distributed step queue
//!
//! Identical pods share only a database: they submit, claim, run and finish steps
//! through it, heartbeat into it, elect the eldest live pod as leader, and the
//! leader requeues the work of pods that died. Production runs on Snowflake; the
//! embedded default is one SQLite file that several local pods can share.
//!
//! This crate is the server around the engine ([`fleet_q_actors`]): configuration,
//! storage backends and the command line.
//!
//! # Layout
//! - [`config`]: settings from defaults, a TOML file and `FLEET_Q_*` variables,
//!   validated at once with every problem listed.
//! - [`storage`]: backends implementing the engine's `Store` contract; the only
//!   place SQL lives. [`storage::sqlite`] is the embedded store.
//! - [`handlers`]: the built-in step handlers (`noop`, `sleep`, `http`).
//! - [`api`]: the HTTP API; [`serve`]: the composition root of `fleet-q serve`;
//!   [`http_io`]: the JSON error body for requests the HTTP parser rejects;
//!   [`telemetry`]: logging.
//! - [`cli`]: the client commands (`fleet-q submit`, `status`, `queue`, `leader`,
//!   `recover`) that talk to a running pod.
//! - [`check`]: `fleet-q check` (store connectivity report) and `fleet-q schema`.
//! - `main.rs`: the thin `fleet-q` binary.

pub mod api;
pub mod check;
pub mod cli;
pub mod config;
pub mod handlers;
pub mod http_io;
pub mod secret;
pub mod serve;
pub mod smoke;
pub mod storage;
pub mod telemetry;
pub mod ui;

pub use fleet_q_actors as engine;
