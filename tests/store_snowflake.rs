//! The store conformance suite against the Snowflake backend, through the
//! production client (`snowflake-api`) talking to a local Snowflake protocol peer
//! (fakesnow, see tests/snowflake/). Each case gets a fresh emulator and two store
//! handles (two session pools), as two pods would have.

#[path = "support/emulator.rs"]
mod emulator;
#[path = "support/relay.rs"]
mod relay;

use std::sync::Arc;
use std::time::Duration;

use fleet_q::storage::snowflake::SnowflakeStore;
use fleet_q_actors::testkit::Harness;
use fleet_q_actors::Store;

async fn open() -> Harness {
    let py = emulator::python().expect("checked by emulator::skip()");
    emulator::harness(emulator::Emulator::start(&py)).await
}

fleet_q_actors::conformance_suite!(open, skip = emulator::skip);

fn fleet_q(env: &[(&str, String)], args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-q"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Key-pair authentication, end to end: settings → PEM file → JWT login → queries.
/// The emulator verifies the JWT against the public key registered for the user
/// (as Snowflake does), so this proves sign-in: the right key gets a session, a
/// wrong key is refused.
#[test]
fn key_pair_authentication_and_fleet_q_check_and_schema() {
    let Some(py) = emulator::python_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Two key pairs: the user's (its public half registered) and a stranger's.
    let keygen = |name: &str| {
        let private = dir.path().join(format!("{name}.p8"));
        let public = dir.path().join(format!("{name}.pub"));
        let ok = std::process::Command::new(&py)
            .args([
                "-c",
                "import sys\nfrom cryptography.hazmat.primitives.asymmetric import rsa\n\
                 from cryptography.hazmat.primitives import serialization as s\n\
                 k = rsa.generate_private_key(public_exponent=65537, key_size=2048)\n\
                 open(sys.argv[1], 'wb').write(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))\n\
                 open(sys.argv[2], 'wb').write(k.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))",
            ])
            .arg(&private)
            .arg(&public)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        (private, public)
    };
    let (key, public) = keygen("user");
    let (wrong_key, _) = keygen("stranger");
    let emu = emulator::Emulator::start_with_keys(&py, vec![("fleetq".into(), public)]);
    let key_env = |k: &std::path::Path| -> Vec<(&str, String)> {
        let mut env: Vec<(&str, String)> = emu
            .env()
            .into_iter()
            .filter(|(k, _)| *k != "FLEET_Q_SNOWFLAKE_PASSWORD")
            .collect();
        env.push((
            "FLEET_Q_SNOWFLAKE_PRIVATE_KEY_PATH",
            k.display().to_string(),
        ));
        env
    };
    // A key whose public half is not registered is refused at sign-in.
    let out = fleet_q(&key_env(&wrong_key), &["check"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong key signed in:\n{text}");
    assert!(text.contains("JWT") || text.contains("390144"), "{text}");
    let env = key_env(&key);
    let out = fleet_q(&env, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("store: snowflake account fleetq-test database FLEETQ.PUBLIC"),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok")).count(),
        7,
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok") && l.contains("column collations")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("ok")
            && l.contains("session parameters")
            && l.contains("AUTOCOMMIT=TRUE")),
        "{text}"
    );
    // The key itself never shows in output.
    let pem = std::fs::read_to_string(&key).unwrap();
    let body_line = pem.lines().nth(1).unwrap();
    assert!(!text.contains(body_line));

    let out = fleet_q(&env, &["schema"]);
    let ddl = String::from_utf8(out.stdout).unwrap();
    assert!(
        ddl.contains("CREATE TABLE IF NOT EXISTS STEP_TRACKER") && ddl.contains("TIMESTAMP_NTZ")
    );
    assert!(
        !ddl.contains("PRIMARY KEY"),
        "Snowflake does not enforce keys; none declared"
    );
}

fn keyed(key: &str) -> fleet_q_actors::NewStep {
    fleet_q_actors::NewStep::new(fleet_q_actors::StepSpec {
        step_type: "noop".into(),
        idempotency_key: Some(key.into()),
        ..Default::default()
    })
    .unwrap()
}

fn plain() -> fleet_q_actors::NewStep {
    fleet_q_actors::NewStep::new(fleet_q_actors::StepSpec {
        step_type: "noop".into(),
        ..Default::default()
    })
    .unwrap()
}

fn stores(emu: &emulator::Emulator) -> (SnowflakeStore, SnowflakeStore) {
    let s = emu.settings();
    (
        SnowflakeStore::open(&s, fleet_q_actors::Backoff::default()).unwrap(),
        SnowflakeStore::open(&s, fleet_q_actors::Backoff::default()).unwrap(),
    )
}

/// Snowflake runs INSERTs in parallel, each on its own snapshot, and enforces no
/// UNIQUE constraint: two submits of one key at once would both insert with
/// `INSERT … WHERE NOT EXISTS`. The emulator models that (each INSERT commits
/// 400 ms after its snapshot); keyed steps go through MERGE, which takes the table
/// lock, so each key makes one step and both callers get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submits_of_one_key_make_one_step() {
    let Some(py) = emulator::python() else { return };
    let emu = emulator::Emulator::start_with_args(&py, &["--insert-commit-delay-ms", "400"]);
    let (a, b) = stores(&emu);
    a.schema_init().await.unwrap();
    // Unkeyed inserts still run concurrently (the model is live: two at once
    // take about one delay, not two).
    for round in 0..4 {
        let key = format!("k-{round}");
        let (x, y) = (keyed(&key), keyed(&key));
        let (rx, ry) = tokio::join!(
            a.steps_insert(vec![x.clone()]),
            b.steps_insert(vec![y.clone()])
        );
        let (rx, ry) = (rx.unwrap(), ry.unwrap());
        assert_eq!(
            rx[0].step_id, ry[0].step_id,
            "round {round}: both callers get one step"
        );
        assert_eq!(
            usize::from(rx[0].created) + usize::from(ry[0].created),
            1,
            "round {round}: exactly one created"
        );
        let loser = if rx[0].created {
            y.step_id()
        } else {
            x.step_id()
        };
        assert!(
            a.step_get(loser).await.unwrap().is_none(),
            "round {round}: a second row was written"
        );
    }
}

/// Should duplicate keys exist anyway (rows written before keyed MERGE), every
/// lookup answers with the oldest step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_resolve_to_the_oldest_step() {
    let Some(py) = emulator::python() else { return };
    let emu = emulator::Emulator::start(&py);
    let (a, _) = stores(&emu);
    a.schema_init().await.unwrap();
    let ids = [
        "01900000-0000-7000-8000-000000000002",
        "01900000-0000-7000-8000-000000000001",
    ];
    for (i, id) in ids.iter().enumerate() {
        // The first row written (higher id) is the older by created_ts.
        a.admin(&format!(
            "INSERT INTO STEP_TRACKER (step_id, status, last_update_ts, payload, retry_count, priority, \
             created_ts, max_retries, attempt, run_at, idempotency_key, step_type) \
             SELECT '{id}', 'pending', SYSDATE(), '{{\"type\":\"noop\",\"args\":{{}},\"metadata\":{{}}}}', 0, 0, \
             DATEADD(second, {}, SYSDATE()), 3, 0, SYSDATE(), 'dup', 'noop'",
            i as i64 * 10 - 100
        ))
        .await
        .unwrap();
    }
    for _ in 0..3 {
        let got = a.steps_insert(vec![keyed("dup")]).await.unwrap();
        assert_eq!(
            got[0].step_id.to_string(),
            ids[0],
            "the oldest step holds the key"
        );
        assert!(!got[0].created);
    }
}

/// An administrator may make `AUTOCOMMIT = FALSE` a user's default; every write
/// would then be rolled back when the session ends. Each session sets what
/// fleet-q relies on before its first statement, and `session_report` reads it
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_set_autocommit_timeouts_and_time_parameters() {
    let Some(py) = emulator::python() else { return };
    let emu = emulator::Emulator::start_with_args(&py, &["--default-autocommit", "false"]);
    let (a, b) = stores(&emu);
    a.schema_init().await.unwrap();
    let s = plain();
    a.steps_insert(vec![s.clone()]).await.unwrap();
    assert!(
        b.step_get(s.step_id()).await.unwrap().is_some(),
        "another session sees the committed insert"
    );
    let params: std::collections::HashMap<String, String> =
        a.session_report().await.unwrap().into_iter().collect();
    assert_eq!(params["AUTOCOMMIT"], "TRUE");
    assert_eq!(params["TIMEZONE"], "UTC");
    // The server gives up before the client (30 s timeout in these settings).
    assert_eq!(a.server_timeout_secs(), 14);
    for k in [
        "STATEMENT_TIMEOUT_IN_SECONDS",
        "STATEMENT_QUEUED_TIMEOUT_IN_SECONDS",
        "LOCK_TIMEOUT",
    ] {
        assert_eq!(params[k], "14", "{k}");
    }
}

/// Snowflake allows LIMIT only in uncorrelated scalar subqueries; the emulator
/// refuses `IN (SELECT … LIMIT n)` as Snowflake does (so the conformance suite
/// would fail on the old claim and prune forms), and the store's claim and prune
/// put their limited selection in FROM / USING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_inside_in_is_refused_and_claims_and_prunes_avoid_it() {
    let Some(py) = emulator::python() else { return };
    let emu = emulator::Emulator::start(&py);
    let (a, _) = stores(&emu);
    a.schema_init().await.unwrap();
    let e = a
        .admin(
            "UPDATE STEP_TRACKER SET status = 'claimed' WHERE step_id IN \
             (SELECT step_id FROM STEP_TRACKER WHERE status = 'pending' ORDER BY priority DESC LIMIT 5)",
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("002031"), "{e}");
    a.steps_insert((0..5).map(|_| plain()).collect())
        .await
        .unwrap();
    let claimed = a
        .steps_claim(fleet_q_actors::ClaimParams {
            pod_id: "p".into(),
            limit: 3,
            queues: None,
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
}

/// One finish the server refuses (here: a statement longer than the emulator
/// accepts, standing in for any row Snowflake refuses) must not hold back the
/// rest of its batch, nor stay claimed forever: the others land, and it fails with
/// the store's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_does_not_hold_back_its_batch() {
    use fleet_q_actors::*;
    let Some(py) = emulator::python() else { return };
    let emu = emulator::Emulator::start_with_args(&py, &["--max-statement-bytes", "150000"]);
    let (a, _) = stores(&emu);
    a.schema_init().await.unwrap();
    a.steps_insert((0..3).map(|_| plain()).collect())
        .await
        .unwrap();
    let claimed = a
        .steps_claim(ClaimParams {
            pod_id: "p".into(),
            limit: 3,
            queues: None,
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    let big = serde_json::json!("x".repeat(120_000));
    let finishes: Vec<Finish> = claimed
        .iter()
        .enumerate()
        .map(|(i, s)| Finish {
            lease: Lease::of(s).unwrap(),
            outcome: Outcome::Complete {
                result: if i == 1 {
                    big.clone()
                } else {
                    serde_json::json!({"i": i})
                },
            },
        })
        .collect();
    let report = a
        .steps_finish(FinishParams {
            finishes,
            backoff: Backoff::default(),
        })
        .await
        .unwrap();
    assert_eq!(report.applied.len(), 3, "{report:?}");
    for (i, s) in claimed.iter().enumerate() {
        let after = a.step_get(s.step_id).await.unwrap().unwrap();
        if i == 1 {
            assert_eq!(after.status, StepStatus::Failed);
            assert!(
                after
                    .last_error
                    .unwrap()
                    .contains("the store refused this step's outcome"),
                "the reason is kept"
            );
        } else {
            assert_eq!(after.status, StepStatus::Completed);
        }
    }
}

/// `fleet-q check --smoke` against the account: every statement shape once, in
/// a scratch schema that is dropped afterwards.
#[test]
fn check_smoke_runs_every_statement_shape_in_a_scratch_schema() {
    let Some(py) = emulator::python() else { return };
    let emu = emulator::Emulator::start(&py);
    let out = fleet_q(&emu.env(), &["check", "--smoke"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let around = [
        "create scratch schema",
        "session parameters",
        "schema",
        "drop scratch schema",
    ];
    for shape in around.into_iter().chain(fleet_q::smoke::SHAPES) {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok") && l.contains(&format!("smoke: {shape}"))),
            "{shape} missing:\n{text}"
        );
    }
    // Nothing was left behind: the configured schema holds no smoke steps, and
    // no scratch schema remains.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, _) = stores(&emu);
    rt.block_on(async {
        a.schema_init().await.unwrap();
        assert_eq!(a.queue_stats().await.unwrap().counts.total(), 0);
        let left = a
            .admin(
                "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'FLEET_Q_SMOKE_%'",
            )
            .await
            .unwrap();
        assert_eq!(left, 0, "the scratch schema was dropped");
    });
}

/// Snowflake splits large results into chunks; snowflake-api 0.14 answers "no
/// rows" when the first (inline) part is empty though chunks follow. The emulator
/// does exactly that here for every result of more than 4 rows. Reads that carry
/// payloads prove their row count in the same statement and read a short answer
/// again in smaller pages, so no claim, orphan or failed step goes missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_results_with_an_empty_first_part_lose_nothing() {
    use fleet_q_actors::*;
    let Some(py) = emulator::python() else { return };
    let emu =
        emulator::Emulator::start_with_args(&py, &["--chunk-rows", "4", "--inline-rows", "0"]);
    let (a, _) = stores(&emu);
    a.schema_init().await.unwrap();
    let steps: Vec<NewStep> = (0..20)
        .map(|i| {
            NewStep::new(StepSpec {
                step_type: "noop".into(),
                args: Some(serde_json::json!({"i": i, "pad": "p".repeat(2000)})),
                max_retries: Some(0),
                ..Default::default()
            })
            .unwrap()
        })
        .collect();
    a.steps_insert(steps.clone()).await.unwrap();
    let claimed = a
        .steps_claim(ClaimParams {
            pod_id: "p".into(),
            limit: 20,
            queues: None,
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 20, "every claimed step reaches its claimer");
    for s in &claimed {
        let original = steps.iter().find(|n| n.step_id() == s.step_id).unwrap();
        assert_eq!(&s.payload, original.payload(), "payloads intact");
    }
    a.pods_mark_down(MarkDownParams {
        pod_ids: vec!["p".into()],
        dead_threshold: Duration::ZERO,
    })
    .await
    .unwrap();
    let orphans = a
        .steps_orphaned(OrphanParams {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(orphans.len(), 20, "recovery sees every orphan");
    let r = a
        .steps_requeue_orphaned(RequeueParams {
            leases: orphans.iter().filter_map(Lease::of).collect(),
            reason: "gone".into(),
            backoff: Backoff::default(),
        })
        .await
        .unwrap();
    assert_eq!(r.applied.len(), 20);
    // No retries left: all failed. The failed list pages in step-id order.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = a
            .steps_failed_list(PageParams { limit: 7, after })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(
            page.windows(2).all(|w| w[0].step_id < w[1].step_id),
            "in order"
        );
        after = page.last().map(|s| s.step_id);
        seen.extend(page.into_iter().map(|s| s.step_id));
    }
    assert_eq!(seen.len(), 20, "every failed step listed once");
}

/// A claim whose UPDATE outlives the client's timeout (slow, or queued for a
/// lock): without a server-side timeout it commits after the client resent it and
/// read back, claiming more steps under the same token that no one ever runs. The
/// sessions' `STATEMENT_TIMEOUT_IN_SECONDS` (below half the client timeout) makes
/// the server cancel it first, so every step the store says the pod holds is one
/// the claim returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_outlives_its_client_is_cancelled_by_the_server() {
    use fleet_q_actors::*;
    let Some(py) = emulator::python() else { return };
    // The first claim statement is held 6 s; the client waits 4 s (server
    // timeouts: 1 s).
    let emu = emulator::Emulator::start_with_args(
        &py,
        &["--delay-statement", "SET status = 'claimed'=6000:1"],
    );
    let mut settings = emu.settings();
    settings.connection_timeout = Duration::from_secs(4);
    let a = SnowflakeStore::open(&settings, fleet_q_actors::Backoff::default()).unwrap();
    assert_eq!(a.server_timeout_secs(), 1);
    a.schema_init().await.unwrap();
    a.steps_insert((0..4).map(|_| plain()).collect())
        .await
        .unwrap();
    // The held claim is cancelled by the server (or, if its answer were lost,
    // reported once the server's timeouts have ended it and its read-back
    // found nothing): a transient error. The claimer claims again at its next
    // tick.
    let claim = || {
        a.steps_claim(ClaimParams {
            pod_id: "p".into(),
            limit: 2,
            queues: None,
        })
    };
    let first = claim().await;
    let got = match first {
        Ok(got) => got,
        Err(e) => {
            assert!(e.is_transient(), "{e}");
            claim().await.unwrap()
        }
    };
    assert_eq!(got.len(), 2);
    // Until the held statement is over (cancelled, or run late), then the store
    // must hold exactly what the claim returned.
    let url = format!("http://127.0.0.1:{}/debug/delayed", emu.port);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        if v["in_progress"] == 0 && v["left"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the held statement never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval
    }
    let (held, _) = a.steps_held("p", 100).await.unwrap();
    let mut held: Vec<StepId> = held.into_iter().map(|h| h.lease.step_id).collect();
    let mut returned: Vec<StepId> = got.iter().map(|s| s.step_id).collect();
    held.sort();
    returned.sort();
    assert_eq!(
        held, returned,
        "a claim committed that its claimer never received"
    );
}

/// With Snowflake-like latency (500 ms per statement here, DML holding the table
/// lock), more than 20 statements waiting for one table's lock are aborted with
/// Snowflake's error 000625, and the production client classifies it as
/// transient (to retry), not fatal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_twenty_waiter_lock_limit_aborts_newcomers_with_000625() {
    use fleet_q_actors::*;
    let Some(py) = emulator::python() else { return };
    let emu = emulator::Emulator::start_with_args(&py, &["--latency-ms", "500"]);
    let mut settings = emu.settings();
    settings.pool_size = 30;
    // A statement is sent once (retries belong to the caller): the abort
    // itself reaches the caller.
    let a = Arc::new(SnowflakeStore::open(&settings, fleet_q_actors::Backoff::default()).unwrap());
    a.schema_init().await.unwrap();
    // Every session signed in and configured first (reads take no lock), so the
    // UPDATEs below arrive together: each holds the lock for half a second, so the
    // queue drains far slower than they arrive.
    let warm: Vec<_> = (0..30)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.now().await.unwrap() })
        })
        .collect();
    for w in warm {
        w.await.unwrap();
    }
    let calls: Vec<_> = (0..30)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.step_cancel(StepId::generate()).await })
        })
        .collect();
    let mut aborted = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => {}
            Err(e) => {
                assert!(e.message.contains("000625"), "{e}");
                assert!(e.is_transient(), "a lock-waiter abort is retried: {e}");
                aborted += 1;
            }
        }
    }
    assert!(
        aborted >= 1,
        "30 concurrent UPDATEs on one table: some must exceed the 20-waiter limit"
    );
}

/// Shared statistics: the leader's publish counts live rows plus the finishes
/// since its last watermark, every pod reads the same row, a deposed leader's
/// late publish (an older watermark) changes nothing, and finished counts are
/// cumulative (pruning does not lower them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_publishes_shared_stats_that_every_pod_reads() {
    use fleet_q_actors::testkit::finishes;
    use fleet_q_actors::{ClaimParams, NewStep, PruneParams, StatsParams, StepSpec};
    let Some(py) = emulator::python() else { return };
    let emu = emulator::Emulator::start(&py);
    let (a, b) = stores(&emu);
    a.schema_init().await.unwrap();
    assert!(a.shares_stats());
    assert_eq!(
        b.stats_shared().await.unwrap(),
        None,
        "nothing published yet"
    );
    let now = StatsParams {
        pod_id: "leader".into(),
        lag: Duration::ZERO,
    };
    let steps: Vec<NewStep> = (0..8)
        .map(|i| {
            NewStep::new(StepSpec {
                step_type: ["a", "b"][i % 2].into(),
                max_retries: Some(0),
                ..Default::default()
            })
            .unwrap()
        })
        .collect();
    let ids: Vec<_> = steps.iter().map(|s| s.step_id()).collect();
    a.steps_insert(steps).await.unwrap();
    let claim = |n| ClaimParams {
        pod_id: "p".into(),
        limit: n,
        queues: None,
    };
    let first = a.steps_claim(claim(3)).await.unwrap();
    a.steps_finish(finishes(&first, 1)).await.unwrap();
    let pending: Vec<_> = {
        let mut v = Vec::new();
        for id in &ids {
            if a.step_get(*id).await.unwrap().unwrap().status == fleet_q_actors::StepStatus::Pending
            {
                v.push(*id);
            }
        }
        v
    };
    a.step_cancel(pending[0]).await.unwrap();
    let _held = a.steps_claim(claim(2)).await.unwrap();
    // First publish: every finished row counted once; equal to a recount.
    let published = a.stats_publish(now.clone()).await.unwrap();
    let direct = a.queue_stats().await.unwrap();
    assert_eq!(published.counts, direct.counts);
    assert_eq!(published.by_type, direct.by_type);
    assert_eq!(
        (
            direct.counts.pending,
            direct.counts.claimed,
            direct.counts.completed
        ),
        (2, 2, 2)
    );
    assert_eq!((direct.counts.failed, direct.counts.cancelled), (1, 1));
    assert_eq!(
        b.stats_shared().await.unwrap().unwrap().counts,
        direct.counts
    );
    // Later finishes are added to what was counted.
    let rest = a.steps_claim(claim(10)).await.unwrap();
    let held_now: Vec<_> = _held.iter().chain(rest.iter()).cloned().collect();
    a.steps_finish(finishes(&held_now, 0)).await.unwrap();
    let second = a.stats_publish(now.clone()).await.unwrap();
    let direct = a.queue_stats().await.unwrap();
    assert_eq!(second.counts, direct.counts);
    assert_eq!(second.counts.completed, 6);
    assert_eq!(
        b.stats_shared().await.unwrap().unwrap().counts,
        direct.counts
    );
    // A publish behind the watermark (a deposed leader, or a long lag) leaves
    // the row alone.
    let late = StatsParams {
        pod_id: "old-leader".into(),
        lag: Duration::from_secs(3600),
    };
    a.stats_publish(late).await.unwrap();
    assert_eq!(
        b.stats_shared().await.unwrap().unwrap().counts,
        direct.counts
    );
    // Pruned finishes stay counted: the finished counts are cumulative.
    a.steps_prune(PruneParams {
        retention: Duration::ZERO,
        limit: 100,
    })
    .await
    .unwrap();
    assert_eq!(a.queue_stats().await.unwrap().counts.total(), 0);
    let after = a.stats_publish(now).await.unwrap();
    assert_eq!(after.counts, direct.counts);
}

/// Statement economy without guessing: an empty claim is one statement (its
/// answer reports 0 rows updated), a group of completions is one statement
/// when its answer reports every row updated, and a group with a stale lease
/// or a failure is read back (two statements) and reported exactly.
#[tokio::test]
async fn answers_that_prove_their_outcome_skip_the_read_back() {
    use fleet_q_actors::*;
    let Some(py) = emulator::python() else { return };
    let emu = emulator::Emulator::start(&py);
    let (a, _) = stores(&emu);
    a.schema_init().await.unwrap();
    let count = |op: &str| {
        a.statements_by_op()
            .into_iter()
            .find(|(o, _)| *o == op)
            .map_or(0, |x| x.1)
    };
    let claim = |limit: u32| {
        a.steps_claim(ClaimParams {
            pod_id: "p".into(),
            limit,
            queues: None,
        })
    };
    let before = count("steps_claim");
    assert!(claim(5).await.unwrap().is_empty());
    assert_eq!(
        count("steps_claim") - before,
        1,
        "an empty claim is one statement"
    );

    a.steps_insert((0..6).map(|_| plain()).collect())
        .await
        .unwrap();
    let before = count("steps_claim");
    let claimed = claim(6).await.unwrap();
    assert_eq!(claimed.len(), 6);
    assert_eq!(
        count("steps_claim") - before,
        2,
        "a claim reads its steps back"
    );
    let done = |s: &Step, outcome: Outcome| Finish {
        lease: Lease::of(s).unwrap(),
        outcome,
    };
    let ok = || Outcome::Complete {
        result: serde_json::json!({"ok": true}),
    };
    let finish = |finishes: Vec<Finish>| {
        a.steps_finish(FinishParams {
            finishes,
            backoff: Backoff::default(),
        })
    };

    // Three completions: one statement, all applied as completed.
    let before = count("steps_finish");
    let report = finish(claimed[..3].iter().map(|s| done(s, ok())).collect())
        .await
        .unwrap();
    assert_eq!(count("steps_finish") - before, 1);
    assert_eq!(report.applied.len(), 3);
    assert!(report
        .applied
        .iter()
        .all(|(_, st)| *st == StepStatus::Completed));

    // A stale lease among completions: the count falls short, so it is read
    // back and the stale one is rejected.
    let mut stale = Lease::of(&claimed[3]).unwrap();
    stale.attempt += 1;
    let before = count("steps_finish");
    let report = finish(vec![
        done(&claimed[4], ok()),
        Finish {
            lease: stale.clone(),
            outcome: ok(),
        },
    ])
    .await
    .unwrap();
    assert_eq!(count("steps_finish") - before, 2);
    assert_eq!(
        report.applied,
        vec![(claimed[4].step_id, StepStatus::Completed)]
    );
    assert_eq!(report.rejected, vec![stale]);

    // A retryable failure: its status is the store's choice, so it is read back.
    let before = count("steps_finish");
    let report = finish(vec![
        done(&claimed[3], ok()),
        done(
            &claimed[5],
            Outcome::Fail {
                error: "boom".into(),
                retryable: true,
            },
        ),
    ])
    .await
    .unwrap();
    assert_eq!(count("steps_finish") - before, 2);
    let status = |id| report.applied.iter().find(|(i, _)| *i == id).unwrap().1;
    assert_eq!(status(claimed[3].step_id), StepStatus::Completed);
    assert_eq!(status(claimed[5].step_id), StepStatus::Pending);
    for s in &claimed {
        let now = a.step_get(s.step_id).await.unwrap().unwrap().status;
        let want = if s.step_id == claimed[5].step_id {
            StepStatus::Pending
        } else {
            StepStatus::Completed
        };
        assert_eq!(now, want);
    }
}

/// A login that reaches no server (the warehouse is down while a pod starts)
/// is a transient failure the retry policy retries, not a fatal one that
/// stops the pod; a wrong key stays fatal
/// (`key_pair_authentication_and_fleet_q_check_and_schema`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_reaches_no_server_is_transient() {
    let Some(py) = emulator::python() else { return };
    let mut emu = emulator::Emulator::start_with_args(&py, &[]);
    let settings = emu.settings();
    emu.stop();
    let a = SnowflakeStore::open(&settings, fleet_q_actors::Backoff::default()).unwrap();
    let e = a.schema_init().await.expect_err("nothing listens");
    assert_eq!(e.kind, fleet_q_actors::StoreErrorKind::Transient, "{e}");
    assert!(e.message.contains("at login"), "{e}");
}

/// A server that stalls: it takes connections and requests and answers
/// nothing (a hung server, a load balancer whose backend died). Each statement
/// is bounded by the client timeout, and so is the wait for a free session: a
/// caller queued behind a pool of stalled sessions is answered with a
/// transient error once one timeout has passed, instead of waiting a timeout
/// for every caller ahead of it. When the server answers again the same
/// sessions carry on, and what was sent into the stall changed nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_bounds_every_call_and_the_pool_recovers() {
    use fleet_q_actors::StoreErrorKind;
    let Some(py) = emulator::python() else { return };
    let emu = emulator::Emulator::start_with_args(&py, &[]);
    let relay = relay::Relay::start(emu.port);
    let mut settings = emu.settings();
    settings.port = relay.port;
    settings.pool_size = 2;
    let timeout = Duration::from_secs(3);
    settings.connection_timeout = timeout;
    let a = Arc::new(SnowflakeStore::open(&settings, fleet_q_actors::Backoff::default()).unwrap());
    a.schema_init().await.unwrap();
    // Both sessions signed in and configured.
    let before: Vec<_> = (0..2).map(|_| plain()).collect();
    let before_ids: Vec<_> = before.iter().map(|s| s.step_id()).collect();
    let (x, y) = tokio::join!(
        a.steps_insert(vec![before[0].clone()]),
        a.steps_insert(vec![before[1].clone()])
    );
    x.unwrap();
    y.unwrap();

    relay.stall();
    // Eight callers per session.
    let stalled: Vec<_> = (0..16).map(|_| plain()).collect();
    let calls: Vec<_> = stalled
        .iter()
        .map(|s| {
            let (a, s) = (a.clone(), s.clone());
            tokio::spawn(async move {
                let t = std::time::Instant::now();
                let r = a.steps_insert(vec![s]).await;
                (r, t.elapsed())
            })
        })
        .collect();
    let mut waited_for_a_session = 0;
    for c in calls {
        let (r, took) = c.await.unwrap();
        let e = r.expect_err("nothing answers");
        assert_eq!(e.kind, StoreErrorKind::Transient, "{e}");
        // At most one timeout waiting for a session, one for the statement
        // (its unknown-outcome wait is measured from when it was sent, and
        // the server bound is below the client timeout): with slack, three.
        // Before the wait was bounded, the last of eight callers per session
        // waited eight timeouts.
        assert!(
            took < 3 * timeout,
            "a call waited {took:?} behind stalled sessions ({e})"
        );
        if e.message.contains("no free Snowflake session") {
            assert!(!e.outcome_unknown(), "never sent: {e}");
            waited_for_a_session += 1;
        }
    }
    assert!(
        waited_for_a_session > 0,
        "callers queued behind the stalled sessions were refused"
    );

    relay.resume();
    // The pool carries on: its HTTP connections were cut, the sessions stay.
    let after = plain();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match a.steps_insert(vec![after.clone()]).await {
            Ok(_) => break,
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "the store never answered again: {e}"
                );
            }
        }
    }
    for id in before_ids.iter().chain([after.step_id()].iter()) {
        assert!(a.step_get(*id).await.unwrap().is_some(), "accepted {id}");
    }
    for s in &stalled {
        assert!(
            a.step_get(s.step_id()).await.unwrap().is_none(),
            "a statement sent into the stall ran"
        );
    }
}
