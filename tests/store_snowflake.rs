//! The store conformance suite against the Snowflake backend, through the
//! production client (`snowflake-api`) talking to a local Snowflake protocol peer
//! (fakesnow, see tests/snowflake/). Each case gets a fresh emulator and two store
//! handles (two session pools), as two pods would have.

#[path = "support/emulator.rs"]
mod emulator;

use std::sync::Arc;
use std::time::Duration;

use fleet_q::storage::snowflake::SnowflakeStore;
use fleet_q_actors::testkit::Harness;
use fleet_q_actors::Store;

async fn open() -> Harness {
    let Some(py) = emulator::python() else {
        panic!("python3 is missing: the Snowflake cases cannot run (see the printed reason)");
    };
    let emu = emulator::Emulator::start(&py);
    let s = emu.settings();
    let d = Duration::from_millis(50);
    let a = SnowflakeStore::open(&s, 5, d, d * 10).expect("open a");
    a.schema_init().await.expect("schema a");
    let b = SnowflakeStore::open(&s, 5, d, d * 10).expect("open b");
    b.schema_init().await.expect("schema b");
    Harness {
        a: Arc::new(a),
        b: Arc::new(b),
        guard: Box::new(emu),
        lacks: Vec::new(),
    }
}

fleet_q_actors::conformance_suite!(open);
