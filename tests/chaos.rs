//! Chaos: three pod processes on one SQLite file run 20,000 steps (`noop`-like,
//! short sleeps, some failing on purpose) while a random pod, the leader
//! included, is SIGKILLed every 1–3 s and restarted, while a client keeps
//! submitting. Afterwards: every accepted step is terminal and none is lost; kills
//! hit pods holding work, and that work was re-run; a step ran successfully more
//! than once only when the earlier run was on a pod that was killed (or presumed
//! dead and rejoined); surviving pods counted any result they had overwritten.
//! Bounded: 90 s of kills, then at most 6 minutes to drain (under 1 minute on an
//! idle machine).

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fleet_q_actors::{StepStatus, Store};
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
    // A client that resends a batch whose answer it lost (the pod was killed after
    // committing) must use idempotency keys, or the resend adds a second copy.
    json!({ "type": "rec", "args": args, "max_retries": 5, "idempotency_key": format!("chaos-{i}") })
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

    // Half is submitted first; the other half while pods are being killed, by a
    // client that moves to another pod when one refuses or is gone, resending the
    // batch (keyed, so a batch committed by a pod killed before it answered is not
    // stored twice). A step counts as accepted once a pod answered 201 for its
    // batch.
    let bodies: Vec<Value> = (0..STEPS).map(body).collect();
    let mut ids = submit_batches(&c, &pods[0], &bodies[..STEPS / 2], 500);
    let ports = std::sync::Arc::new(std::sync::Mutex::new(
        pods.iter().map(|p| p.port).collect::<Vec<u16>>(),
    ));
    let submitter = {
        let (ports, rest, db) = (ports.clone(), bodies[STEPS / 2..].to_vec(), db.clone());
        std::thread::spawn(move || {
            let c = client();
            let backlog = rusqlite::Connection::open(&db).unwrap();
            backlog.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut accepted = Vec::new();
            for (n, part) in rest.chunks(250).enumerate() {
                let deadline = Instant::now() + Duration::from_secs(60);
                let v: Value = loop {
                    let port = {
                        let p = ports.lock().unwrap();
                        p[n % p.len()]
                    };
                    let r = c
                        .post(format!("http://127.0.0.1:{port}/submit/batch"))
                        .json(&json!({ "steps": part }))
                        .send();
                    if let Some(r) = r.ok().filter(|r| r.status().as_u16() == 201) {
                        break r.json().unwrap();
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no pod accepted a batch for 60 s"
                    );
                    std::thread::sleep(Duration::from_millis(50)); // poll interval: until a pod accepts
                };
                accepted.extend(
                    v["step_ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_str().unwrap().to_string()),
                );
                // The next batch goes in once the fleet has taken up this one
                // (fewer than four batches pending), so submits follow the
                // work, and the kills, to the end instead of arriving at once.
                wait_for(
                    "the fleet to take up work (under 1,000 pending)",
                    Duration::from_secs(60),
                    || {
                        let pending: i64 = backlog
                            .query_row(
                                "SELECT COUNT(*) FROM STEP_TRACKER WHERE status = 'pending'",
                                [],
                                |r| r.get(0),
                            )
                            .unwrap();
                        (pending < 1000).then_some(())
                    },
                );
            }
            accepted
        })
    };

    // Chaos: kill a random pod (a third of the time the leader) every 1-3 s and
    // restart it, for at most 90 s or until the queue drained.
    let obs = Observer::open(&db);
    let chaos_until = Instant::now() + Duration::from_secs(90);
    let reader = rusqlite::Connection::open(&db).unwrap();
    reader.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut kills = 0;
    let mut kills_with_work = 0;
    let mut leader_kills = 0;
    while Instant::now() < chaos_until {
        let s = obs.stats();
        if s.counts.pending == 0 && s.counts.claimed == 0 && submitter.is_finished() {
            break;
        }
        // The next kill after another 1,000-2,000 finished steps.
        fault_after(1000, || {
            let s = obs.stats();
            let live = s.counts.pending + s.counts.claimed;
            (live > 0 || !submitter.is_finished()).then_some(s.counts.completed + s.counts.failed)
        });
        let leader = (0..3).find(|i| pods[*i].is_leader());
        let victim = match leader {
            Some(l) if rand::random::<u8>().is_multiple_of(3) => l,
            _ => (rand::random::<u32>() % 3) as usize,
        };
        leader_kills += usize::from(leader == Some(victim));
        let holds: i64 = reader
            .query_row(
                "SELECT COUNT(*) FROM STEP_TRACKER WHERE status = 'claimed' AND claimed_by = ?1",
                [&pods[victim].id],
                |r| r.get(0),
            )
            .unwrap();
        kills_with_work += usize::from(holds > 0);
        kill_and_restart(&mut pods, victim, dir.path(), &db, &env, &mut killed);
        ports.lock().unwrap()[victim] = pods[victim].port;
        kills += 1;
    }
    assert!(kills >= 3, "only {kills} kills happened");
    assert!(
        kills_with_work >= 1,
        "no kill hit a pod holding work ({kills} kills)"
    );
    ids.extend(submitter.join().unwrap());
    assert_eq!(ids.len(), STEPS, "every batch was accepted by some pod");

    // Bounded, with room for a machine that is also building something else.
    let stats = obs.wait_all_terminal(STEPS as u64, Duration::from_secs(360));
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

    let rows = obs.block(obs.store.pods_list()).unwrap();
    let mut rejoined = rejoined_pods(&rows);
    rejoined.extend(rejoined_processes(&pods));
    let duplicated = assert_duplicates_only_from_lost_pods(&rec, &ids, &killed, &rejoined);
    assert!(
        duplicated >= 1,
        "kills hit pods holding work, yet no step was re-run: recovery never requeued"
    );
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
    eprintln!(
        "chaos: {kills} kills ({leader_kills} of the leader, {kills_with_work} holding work), {duplicated} steps re-ran after a kill, {fenced} fenced results, {} pods rejoined",
        rejoined.len()
    );
    let s = obs.step(&ids[0]);
    assert!(s.status.is_terminal() && s.status != StepStatus::Cancelled);
}
