//! The store's options.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::secret::Secret;

/// How to reach Snowflake: what [`super::SnowflakeStore::open`] needs. The shell fills
/// it from `FLEET_Q_SNOWFLAKE_*` (see `crate::config`); code embedding the
/// store fills it directly.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SnowflakeOptions {
    /// Account identifier.
    pub account: String,
    /// User.
    pub user: String,
    /// Password authentication.
    pub password: Option<Secret>,
    /// Database.
    pub database: String,
    /// Schema.
    pub schema: String,
    /// Warehouse.
    pub warehouse: String,
    /// Role, if not the user's default.
    pub role: Option<String>,
    /// Key-pair authentication: PEM file.
    pub private_key_path: Option<PathBuf>,
    /// Key-pair authentication: PEM text.
    pub private_key: Option<Secret>,
    /// Sessions kept open.
    pub pool_size: u32,
    /// Connect/answer timeout.
    pub connection_timeout: Duration,
    /// Endpoint host override.
    pub host: Option<String>,
    /// Endpoint port.
    pub port: u16,
    /// `https` or `http`.
    pub protocol: String,
}
