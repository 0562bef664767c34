//! The store conformance suite against the embedded SQLite store: each case gets a
//! fresh database file in its own temp dir, opened twice (two independent writers,
//! as two pod processes would have).

use std::sync::Arc;

use fleet_q::storage::sqlite::{SqliteOptions, SqliteStore};
use fleet_q_actors::testkit::Harness;
use fleet_q_actors::Store;

async fn open() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fleet-q.db");
    let a = SqliteStore::open(&path, SqliteOptions::default()).expect("open a");
    a.schema_init().await.expect("schema a");
    let b = SqliteStore::open(&path, SqliteOptions::default()).expect("open b");
    b.schema_init().await.expect("schema b");
    Harness {
        a: Arc::new(a),
        b: Arc::new(b),
        guard: Box::new(dir),
        lacks: Vec::new(),
    }
}

fleet_q_actors::conformance_suite!(open);
