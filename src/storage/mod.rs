//! Storage backends implementing the engine's [`Store`] contract. SQL lives here
//! and nowhere else. Each backend takes its own options struct; the shell
//! (`crate::serve::open_store`) fills them from the settings.

pub mod snowflake;
pub mod sqlite;
