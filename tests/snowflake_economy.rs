//! The Snowflake statement economy target (issue 17), as a count on the
//! emulator: at the seed's production settings (`FLEET_Q_MAX_PARALLELISM=20`,
//! threshold 0.8: 16 slots), a pod with `fleet-q serve`'s Snowflake defaults
//! (claim-ahead, claim hysteresis, finish linger, all `auto`) sends at most half
//! the statements per step of the same pod with the economy off, draining the
//! same backlog through the production client. Statement counts, not times, so
//! this is a test; the figures per 1,000 steps are in BENCHMARKS.md ("Snowflake
//! statement economy", `cargo bench --bench snowflake`).

#[path = "support/emulator.rs"]
mod emulator;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_q::config::{load, Sources};
use fleet_q::storage::snowflake::SnowflakeStore;
use fleet_q_actors::testkit::steps;
use fleet_q_actors::{HandlerRegistry, Pod, Store};

const STEPS: usize = 600;

/// Statements one pod sends to drain `STEPS` noop steps, with `extra` settings
/// on top of the seed's production settings.
fn statements(emu: &emulator::Emulator, name: &str, extra: &[(&str, &str)]) -> (u64, u32, u32) {
    let mut env: Vec<(String, String)> = emu
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    env.push(("FLEET_Q_MAX_PARALLELISM".into(), "20".into()));
    env.push(("FLEET_Q_CAPACITY_THRESHOLD".into(), "0.8".into()));
    for (k, v) in extra {
        env.push((k.to_string(), v.to_string()));
    }
    let settings = load(&Sources {
        file: None,
        env: env.into_iter().collect(),
    })
    .expect("valid settings");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fleet_q::serve::pod_config(&settings);
    cfg.pod_id = name.into();
    cfg.ledger_path = Some(dir.path().join("ledger.db"));
    let (ahead, min_free) = (cfg.claim_ahead, cfg.claim_min_free);
    let sf = emu.settings();
    actix_rt::System::new().block_on(async move {
        let open =
            || Arc::new(SnowflakeStore::open(&sf, fleet_q_actors::Backoff::default()).unwrap());
        let (store, watcher) = (open(), open());
        store.schema_init().await.unwrap();
        let mut h = HandlerRegistry::new();
        h.register("noop", fleet_q::handlers::Noop);
        let pod = Pod::start(cfg, store.clone(), h).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !pod.state().heartbeat_healthy() {
            assert!(Instant::now() < deadline, "the pod never became healthy");
            actix_rt::time::sleep(Duration::from_millis(20)).await; // poll interval
        }
        let done_before = watcher.queue_stats().await.unwrap().counts.completed;
        let before = store.statement_count();
        pod.submit(steps("noop", STEPS)).await.unwrap();
        // Progress is read through a store of its own: the pod's store counts
        // only the pod's statements.
        let deadline = Instant::now() + Duration::from_secs(240);
        while watcher.queue_stats().await.unwrap().counts.completed < done_before + STEPS as u64 {
            assert!(
                Instant::now() < deadline,
                "{name}: the steps never completed"
            );
            actix_rt::time::sleep(Duration::from_millis(100)).await; // poll interval
        }
        let sent = store.statement_count() - before;
        pod.shutdown().await;
        (sent, ahead, min_free)
    })
}

#[test]
fn the_snowflake_defaults_at_least_halve_statements_per_step_at_production_settings() {
    let Some(py) = emulator::python_or_skip() else {
        return;
    };
    let emu = emulator::Emulator::start(&py);
    let (economy, ahead, min_free) = statements(&emu, "economy", &[]);
    assert_eq!(
        (ahead, min_free),
        (16, 16),
        "the Snowflake defaults at 16 slots"
    );
    let (off, ahead, min_free) = statements(
        &emu,
        "off",
        &[
            ("FLEET_Q_CLAIM_AHEAD", "0"),
            ("FLEET_Q_CLAIM_MIN_FREE", "1"),
            ("FLEET_Q_FINISH_LINGER_MS", "0"),
        ],
    );
    assert_eq!((ahead, min_free), (0, 1));
    let per_k = |n: u64| n as f64 * 1000.0 / STEPS as f64;
    eprintln!(
        "statements per 1,000 steps: economy {:.0}, off {:.0}",
        per_k(economy),
        per_k(off)
    );
    assert!(
        economy * 2 <= off,
        "economy sent {economy} statements for {STEPS} steps, off {off}: not halved"
    );
}
