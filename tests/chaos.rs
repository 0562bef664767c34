//! Chaos: three pod processes on one SQLite file run 20,000 steps (`noop`-like,
//! short sleeps, some failing on purpose) while a random pod, the leader
//! included, is SIGKILLed every 1–3 s and restarted. Afterwards: every step is
//! terminal and none is lost; a step ran successfully more than once only when the
//! earlier run was on a pod that was killed; surviving pods counted any result
//! they had overwritten. Bounded to about three minutes.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fleet_q_actors::StepStatus;
use serde_json::{json, Value};
use support::*;

const STEPS: usize = 20_000;

fn body(i: usize) -> Value {
    let mut args = json!({ "i": i });
    if i.is_multiple_of(3) {
        args["sleep_ms"] = json!(5);
    }
    if i.is_multiple_of(10) {
        args["fail_first"] = json!(1 + i % 2); // 1 or 2 failed runs, then success
    }
    if i.is_multiple_of(97) {
        args["status"] = json!(400); // terminal failure
    }
    json!({ "type": "rec", "args": args, "max_retries": 5 })
}

#[test]
fn random_sigkills_lose_nothing_and_duplicates_come_only_from_killed_pods() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chaos.db");
    let rec = Recorder::start();
    let env = vec![("FLEET_Q_HTTP_HANDLERS", format!("rec={}", rec.url))];
    let mut pods: Vec<PodProc> = (0..3)
        .map(|i| PodProc::start(dir.path(), &db, &format!("c{i}"), &env))
        .collect();
    let mut killed: HashSet<String> = HashSet::new();
    let c = client();

    // Submit everything first, in batches.
    let bodies: Vec<Value> = (0..STEPS).map(body).collect();
    let ids = submit_batches(&c, &pods[0], &bodies, 500);

    // Chaos: kill a random pod (a third of the time the leader) every 1-3 s and
    // restart it, for at most 90 s or until the queue drained.
    let obs = Observer::open(&db);
    let chaos_until = Instant::now() + Duration::from_secs(90);
    let mut kills = 0;
    while Instant::now() < chaos_until {
        let s = obs.stats();
        if s.counts.pending == 0 && s.counts.claimed == 0 {
            break;
        }
        fault_interval();
        let leader = (0..3).find(|i| pods[*i].is_leader());
        let victim = match leader {
            Some(l) if rand::random::<u8>().is_multiple_of(3) => l,
            _ => (rand::random::<u32>() % 3) as usize,
        };
        kill_and_restart(&mut pods, victim, dir.path(), &db, &env, &mut killed);
        kills += 1;
    }
    assert!(kills >= 3, "only {kills} kills happened");

    let stats = obs.wait_all_terminal(STEPS as u64, Duration::from_secs(120));
    let terminal_fails = (0..STEPS).filter(|i| i.is_multiple_of(97)).count() as u64;
    assert_eq!(
        stats.counts.total(),
        STEPS as u64,
        "nothing lost: {stats:?}"
    );
    assert_eq!(
        stats.counts.failed, terminal_fails,
        "only the 4xx steps failed: {stats:?}"
    );
    assert_eq!(stats.counts.completed, STEPS as u64 - terminal_fails);

    let duplicated = assert_duplicates_only_from_killed(&rec, &ids, &killed);
    let execs = rec.executions();
    // Fenced results: a live pod whose successful run was superseded must have
    // counted the rejection of its late result.
    let live: Vec<&PodProc> = pods.iter().collect();
    let mut superseded = 0u64;
    for id in &ids {
        let ok: Vec<&Call> = execs[id].iter().filter(|c| c.ok).collect();
        if ok.len() > 1
            && ok[..ok.len() - 1]
                .iter()
                .any(|c| live.iter().any(|p| p.id == c.pod_id))
        {
            superseded += 1;
        }
    }
    let fenced: u64 = live
        .iter()
        .filter_map(|p| p.health())
        .map(|h| h["fenced_results"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        fenced >= superseded,
        "{superseded} superseded results, {fenced} counted"
    );
    println!(
        "chaos: {kills} kills, {duplicated} steps re-ran after a kill, {fenced} fenced results"
    );
    let s = obs.step(&ids[0]);
    assert!(s.status.is_terminal() && s.status != StepStatus::Cancelled);
}
