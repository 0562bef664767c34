//! Storage backends implementing the engine's [`Store`] contract. SQL lives here
//! and nowhere else.

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
        StorageMode::Snowflake => {
            return Err(StoreError::fatal(
                "open",
                "the Snowflake backend is not built yet (tracked as issue 5); \
                 use FLEET_Q_STORAGE_MODE=sqlite",
            ))
        }
    };
    store.schema_init().await?;
    Ok(store)
}
