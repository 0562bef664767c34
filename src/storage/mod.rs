//! Storage backends implementing the engine's [`Store`] contract. SQL lives here
//! and nowhere else.

pub mod snowflake;
pub mod sqlite;

use std::sync::Arc;

use fleet_q_actors::{Store, StoreError};

use crate::config::{Settings, StorageMode};

/// Opens the store the settings name and initialises its schema.
pub async fn open(settings: &Settings) -> Result<Arc<dyn Store>, StoreError> {
    let store: Arc<dyn Store> = match settings.storage_mode {
        StorageMode::Sqlite => Arc::new(sqlite::SqliteStore::open(
            &settings.sqlite_db_path,
            sqlite::SqliteOptions::default(),
        )?),
        StorageMode::Snowflake => Arc::new(snowflake::SnowflakeStore::open(
            &settings.snowflake,
            settings.default_max_attempts,
            settings.default_base_delay,
            settings.default_max_delay,
        )?),
    };
    store.schema_init().await?;
    Ok(store)
}
