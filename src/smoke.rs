//! `fleet-q check --smoke`: the first thing to run against a real account. It
//! makes a scratch schema next to the configured one, runs every statement shape
//! the store sends once through the production store code (insert, keyed insert,
//! claim and its read-back, finish, release, requeue of orphans, prune,
//! heartbeat, mark-down, stats, lists, cancel, retry) and checks each answer, then
//! drops the schema. The report is plain text (or JSON) to paste into an issue.
//!
//! On SQLite it runs the same shapes on a temporary file, so the command means the
//! same thing on every backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_q_actors::*;
use serde_json::json;

use crate::config::{Settings, StorageMode};
use crate::storage::snowflake::SnowflakeStore;
use crate::storage::sqlite::{SqliteOptions, SqliteStore};

/// One statement shape's outcome.
pub struct Line {
    /// What was exercised.
    pub name: String,
    /// Whether the answer was the expected one.
    pub ok: bool,
    /// The answer, or what was wrong with it.
    pub detail: String,
    /// How long it took.
    pub ms: f64,
}

type Check<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + 'a>>;

async fn run(name: &str, f: Check<'_>) -> Line {
    let t0 = Instant::now();
    let r = f.await;
    Line {
        name: name.to_string(),
        ok: r.is_ok(),
        detail: r.unwrap_or_else(|e| e),
        ms: t0.elapsed().as_secs_f64() * 1000.0,
    }
}

fn expect(cond: bool, ok: String, wrong: impl FnOnce() -> String) -> Result<String, String> {
    if cond {
        Ok(ok)
    } else {
        Err(wrong())
    }
}

fn err(e: StoreError) -> String {
    e.to_string()
}

fn new_step(ty: &str, key: Option<&str>) -> NewStep {
    NewStep::new(StepSpec {
        step_type: ty.into(),
        args: Some(json!({"smoke": true, "text": "quote ' and \\ and 😀"})),
        idempotency_key: key.map(String::from),
        max_retries: Some(1),
        ..Default::default()
    })
    .expect("a valid smoke step")
}

/// The statement shapes [`shapes`] reports, one line each, in order.
pub const SHAPES: [&str; 11] = [
    "insert",
    "keyed insert",
    "heartbeat",
    "claim and read-back",
    "finish (fenced)",
    "release (fenced)",
    "mark down and requeue orphans",
    "lists and stats",
    "shared stats",
    "cancel and retry",
    "prune",
];

/// Runs every shape on `store`, which must hold an empty schema.
pub async fn shapes(store: Arc<dyn Store>) -> Vec<Line> {
    let mut out = Vec::new();
    let p = "fleet-q-smoke".to_string();
    let backoff = Backoff {
        base: Duration::ZERO,
        max: Duration::ZERO,
        jitter: 0.0,
    };
    let s = store;
    let plain: Vec<NewStep> = (0..3).map(|_| new_step("smoke", None)).collect();
    let ids: Vec<StepId> = plain.iter().map(NewStep::step_id).collect();
    out.push(
        run(
            "insert",
            Box::pin(async {
                let r = s.steps_insert(plain.clone()).await.map_err(err)?;
                // On Snowflake a statement may be resent after a lost answer: a
                // resend of the same steps (same ids) must add no row (the stats
                // below count 4 steps in all). SQLite writes in one transaction
                // and never resends.
                if s.backend() == "snowflake" {
                    s.steps_insert(plain.clone()).await.map_err(err)?;
                }
                let mut found = 0;
                for id in &ids {
                    found += usize::from(s.step_get(*id).await.map_err(err)?.is_some());
                }
                expect(
                    r.len() == 3 && found == 3,
                    "3 steps inserted".into(),
                    || format!("answer {r:?}; {found} of 3 found"),
                )
            }),
        )
        .await,
    );
    out.push(
        run(
            "keyed insert",
            Box::pin(async {
                let a = new_step("smoke", Some("smoke-key"));
                let b = new_step("smoke", Some("smoke-key"));
                let first = s.steps_insert(vec![a.clone()]).await.map_err(err)?;
                let second = s.steps_insert(vec![b]).await.map_err(err)?;
                expect(
                    first[0].created && !second[0].created && second[0].step_id == a.step_id(),
                    "a second submit of the key returned the first step".into(),
                    || format!("unexpected answer {first:?} / {second:?}"),
                )
            }),
        )
        .await,
    );
    out.push(
        run(
            "heartbeat",
            Box::pin(async {
                let r = s
                    .pod_heartbeat(HeartbeatParams {
                        pod_id: p.clone(),
                        max_capacity: 4,
                        incarnation: "smoke".into(),
                        // Declared dead at once, so the mark-down below applies.
                        heartbeat_interval: Some(Duration::from_secs(1)),
                        dead_after: Some(Duration::ZERO),
                        ..Default::default()
                    })
                    .await
                    .map_err(err)?;
                expect(
                    r.status == PodStatus::Up,
                    format!("row up, born {}", r.birth_ts),
                    || format!("row is {:?}", r.status),
                )
            }),
        )
        .await,
    );
    let claimed = std::cell::RefCell::new(Vec::<Step>::new());
    out.push(
        run(
            "claim and read-back",
            Box::pin(async {
                let got = s
                    .steps_claim(ClaimParams {
                        pod_id: p.clone(),
                        limit: 3,
                        queues: None,
                    })
                    .await
                    .map_err(err)?;
                let ok = got.len() == 3
                    && got.iter().all(|st| {
                        st.status == StepStatus::Claimed
                            && st.claimed_by.as_deref() == Some(p.as_str())
                            && st.attempt == 1
                            && st.payload.args["text"] == json!("quote ' and \\ and 😀")
                    });
                let n = got.len();
                *claimed.borrow_mut() = got;
                expect(ok, format!("{n} claimed, payloads intact"), || {
                    format!("{n} claimed, or payloads changed")
                })
            }),
        )
        .await,
    );
    let leases: Vec<Lease> = claimed.borrow().iter().filter_map(Lease::of).collect();
    out.push(
        run(
            "finish (fenced)",
            Box::pin(async {
                if leases.len() < 3 {
                    return Err("nothing claimed to finish".into());
                }
                let r = s
                    .steps_finish(FinishParams {
                        finishes: vec![
                            Finish {
                                lease: leases[0].clone(),
                                outcome: Outcome::Complete {
                                    result: json!({"ok": true}),
                                },
                            },
                            Finish {
                                lease: leases[1].clone(),
                                outcome: Outcome::Fail {
                                    error: "smoke failure".into(),
                                    retryable: true,
                                },
                            },
                        ],
                        backoff,
                    })
                    .await
                    .map_err(err)?;
                let stale = s
                    .steps_finish(FinishParams {
                        finishes: vec![Finish {
                            lease: leases[0].clone(),
                            outcome: Outcome::Complete { result: json!(1) },
                        }],
                        backoff,
                    })
                    .await
                    .map_err(err)?;
                expect(
                    r.applied.len() == 2 && stale.rejected.len() == 1,
                    "completed one, retried one; a repeated finish was fenced".into(),
                    || format!("unexpected answer {r:?} / {stale:?}"),
                )
            }),
        )
        .await,
    );
    out.push(
        run(
            "release (fenced)",
            Box::pin(async {
                let r = s
                    .steps_release(vec![leases[2].clone()])
                    .await
                    .map_err(err)?;
                expect(r.applied.len() == 1, "released one claim".into(), || {
                    format!("unexpected answer {r:?}")
                })
            }),
        )
        .await,
    );
    out.push(
        run(
            "mark down and requeue orphans",
            Box::pin(async {
                let again = s
                    .steps_claim(ClaimParams {
                        pod_id: p.clone(),
                        limit: 10,
                        queues: None,
                    })
                    .await
                    .map_err(err)?;
                let marked = s
                    .pods_mark_down(MarkDownParams {
                        pod_ids: vec![p.clone()],
                        dead_threshold: Duration::ZERO,
                    })
                    .await
                    .map_err(err)?;
                let orphans = s
                    .steps_orphaned(OrphanParams {
                        limit: 100,
                        ..Default::default()
                    })
                    .await
                    .map_err(err)?;
                let r = s
                    .steps_requeue_orphaned(RequeueParams {
                        leases: orphans.iter().filter_map(Lease::of).collect(),
                        reason: "smoke".into(),
                        backoff,
                    })
                    .await
                    .map_err(err)?;
                expect(
                    marked.len() == 1 && !again.is_empty() && r.applied.len() == orphans.len(),
                    format!(
                        "{} claimed, pod marked down, {} orphans requeued",
                        again.len(),
                        r.applied.len()
                    ),
                    || format!("marked {marked:?}, {} orphans, {r:?}", orphans.len()),
                )
            }),
        )
        .await,
    );
    out.push(
        run(
            "lists and stats",
            Box::pin(async {
                let pods = s.pods_list().await.map_err(err)?;
                let stats = s.queue_stats().await.map_err(err)?;
                let failed = s
                    .steps_failed_list(PageParams {
                        limit: 10,
                        after: None,
                    })
                    .await
                    .map_err(err)?;
                let one = s.step_get(ids[0]).await.map_err(err)?;
                expect(
                    pods.len() == 1 && stats.counts.total() == 4 && one.is_some(),
                    format!(
                        "1 pod; {} steps, no duplicate from the resend ({} completed); {} failed listed",
                        stats.counts.total(),
                        stats.counts.completed,
                        failed.len()
                    ),
                    || format!("{} pods, stats {:?}", pods.len(), stats.counts),
                )
            }),
        )
        .await,
    );
    out.push(
        run(
            "shared stats",
            Box::pin(async {
                let direct = s.queue_stats().await.map_err(err)?;
                let published = s
                    .stats_publish(StatsParams {
                        pod_id: p.clone(),
                        lag: Duration::ZERO,
                    })
                    .await
                    .map_err(err)?;
                let read = if s.shares_stats() {
                    s.stats_shared().await.map_err(err)?
                } else {
                    Some(published.clone())
                };
                let read_counts = read.as_ref().map(|r| r.counts.clone());
                expect(
                    published.counts == direct.counts
                        && read_counts.as_ref() == Some(&direct.counts),
                    format!(
                        "published and read back {} steps (shared row: {})",
                        published.counts.total(),
                        s.shares_stats()
                    ),
                    || {
                        format!(
                            "direct {:?}, published {:?}, read {read_counts:?}",
                            direct.counts, published.counts
                        )
                    },
                )
            }),
        )
        .await,
    );
    out.push(
        run(
            "cancel and retry",
            Box::pin(async {
                let fresh = new_step("smoke", None);
                s.steps_insert(vec![fresh.clone()]).await.map_err(err)?;
                let c = s.step_cancel(fresh.step_id()).await.map_err(err)?;
                let r = s.step_retry(fresh.step_id()).await.map_err(err)?;
                expect(
                    c == CancelOutcome::Cancelled
                        && r == RetryOutcome::NotFailed(StepStatus::Cancelled),
                    "cancelled a pending step; retry refused it".into(),
                    || format!("cancel {c:?}, retry {r:?}"),
                )
            }),
        )
        .await,
    );
    out.push(
        run(
            "prune",
            Box::pin(async {
                let n = s
                    .steps_prune(PruneParams {
                        retention: Duration::ZERO,
                        limit: 100,
                    })
                    .await
                    .map_err(err)?;
                expect(n >= 2, format!("{n} finished steps pruned"), || {
                    format!("{n} pruned, expected the completed and cancelled ones")
                })
            }),
        )
        .await,
    );
    out
}

/// Runs the smoke test for `settings`; returns its lines (the first says where).
pub async fn smoke(settings: &Settings) -> Vec<Line> {
    let t0 = Instant::now();
    let line = |name: &str, t0: Instant, r: Result<String, String>| Line {
        name: name.into(),
        ok: r.is_ok(),
        detail: r.unwrap_or_else(|e| e),
        ms: t0.elapsed().as_secs_f64() * 1000.0,
    };
    match settings.storage_mode {
        StorageMode::Sqlite => {
            let dir = match tempfile::tempdir() {
                Ok(d) => d,
                Err(e) => return vec![line("scratch file", t0, Err(e.to_string()))],
            };
            let store =
                match SqliteStore::open(dir.path().join("smoke.db"), SqliteOptions::default()) {
                    Ok(s) => s,
                    Err(e) => return vec![line("scratch file", t0, Err(e.to_string()))],
                };
            let store: Arc<dyn Store> = Arc::new(store);
            let mut out = vec![line(
                "scratch file",
                t0,
                store
                    .schema_init()
                    .await
                    .map(|_| format!("{}", dir.path().display()))
                    .map_err(err),
            )];
            out.extend(shapes(store).await);
            out
        }
        StorageMode::Snowflake => {
            let sf = &settings.snowflake;
            let scratch = format!("FLEET_Q_SMOKE_{:08X}", rand::random::<u32>());
            let open = |schema: &str| {
                let mut s = sf.clone();
                s.schema = schema.to_string();
                s.pool_size = 2;
                SnowflakeStore::open(&s, settings.store_retry().backoff)
            };
            let base = match open(&sf.schema) {
                Ok(b) => b,
                Err(e) => return vec![line("connect", t0, Err(err(e)))],
            };
            let created = base
                .admin(&format!("CREATE SCHEMA IF NOT EXISTS {scratch}"))
                .await
                .map(|_| format!("{}.{scratch}", sf.database));
            let mut out = vec![line("create scratch schema", t0, created.map_err(err))];
            if !out[0].ok {
                return out;
            }
            let t0 = Instant::now();
            match open(&scratch) {
                Ok(store) => {
                    let params = store.session_report_line().await;
                    out.push(line("session parameters", t0, params.map_err(err)));
                    let t0 = Instant::now();
                    let init = store
                        .schema_init()
                        .await
                        .map(|_| "tables created".to_string());
                    out.push(line("schema", t0, init.map_err(err)));
                    if out.last().is_some_and(|l| l.ok) {
                        out.extend(shapes(Arc::new(store)).await);
                    }
                }
                Err(e) => out.push(line("connect to scratch schema", t0, Err(err(e)))),
            }
            let t0 = Instant::now();
            let dropped = base
                .admin(&format!("DROP SCHEMA IF EXISTS {scratch} CASCADE"))
                .await
                .map(|_| "dropped".to_string());
            out.push(line("drop scratch schema", t0, dropped.map_err(err)));
            out
        }
    }
}
