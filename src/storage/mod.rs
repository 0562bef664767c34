//! Storage backends implementing the engine's [`fleet_q_actors::Store`] contract. SQL lives here
//! and nowhere else. Each backend takes its own options struct; the shell
//! (`crate::serve::open_store`) fills them from the settings.

pub mod snowflake;
pub mod sqlite;
