//! The emulator's translation cache (`tests/snowflake/shapes.py`, used by the
//! Snowflake fleet bench) must not change any answer: the whole store
//! conformance suite runs here against an emulator started with
//! `--translation-cache`, through the production client, exactly as
//! `tests/store_snowflake.rs` runs it against fakesnow's own path. Its hostile
//! string, byte-exact payload and Unicode cases are the ones a literal-swapping
//! cache could get wrong.

#[path = "support/emulator.rs"]
mod emulator;

use fleet_q::storage::snowflake::SnowflakeStore;
use fleet_q_actors::store::ClaimParams;
use fleet_q_actors::testkit::Harness;
use fleet_q_actors::{NewStep, StepSpec, Store};

async fn open() -> Harness {
    let py = emulator::python().expect("checked by emulator::skip()");
    emulator::harness(emulator::Emulator::start_with_args(
        &py,
        &["--translation-cache"],
    ))
    .await
}

fleet_q_actors::conformance_suite!(open, skip = emulator::skip);

/// The cache is really used: repeated claims and inserts of one shape are
/// served from it (a cache that never hit would make the suite above prove
/// nothing).
#[test]
fn repeated_statement_shapes_are_served_from_the_cache() {
    let Some(py) = emulator::python_or_skip() else {
        return;
    };
    let emu = emulator::Emulator::start_with_args(&py, &["--translation-cache"]);
    let store =
        SnowflakeStore::open(&emu.settings(), fleet_q_actors::Backoff::default()).expect("open");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let claimed = rt.block_on(async {
        store.schema_init().await.expect("schema");
        let mut claimed = 0;
        for i in 0..5 {
            let step = NewStep::new(StepSpec {
                step_type: "noop".into(),
                args: Some(serde_json::json!({"n": i, "text": format!("it's step {i}")})),
                ..Default::default()
            })
            .unwrap();
            store.steps_insert(vec![step]).await.expect("insert");
            claimed += store
                .steps_claim(ClaimParams {
                    pod_id: "pod-a".into(),
                    limit: 1,
                    queues: None,
                })
                .await
                .expect("claim")
                .len();
        }
        claimed
    });
    assert_eq!(claimed, 5, "every step inserted was claimed once");
    let stats = emulator::debug_stats(emu.port, 0.0);
    let cache = &stats["translation_cache"];
    let hits = cache["hits"]
        .as_u64()
        .expect("the cache reports its counts");
    assert!(
        hits >= 8,
        "four repeats each of the insert, the claim and its read-back: {cache}"
    );
}
