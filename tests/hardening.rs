//! Promises that hostile conditions used to break, each tried on real pod
//! processes over real HTTP and real SQLite files: a write outage that reads do not
//! hide, a recovery ledger that cannot be written, a database file, its WAL or
//! its index deleted under a running pod, a full disk under it, pods with
//! different heartbeat settings on one store, stalled request bodies,
//! client-chosen metric labels, and the ledger files a pod leaves.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fleet_q_actors::Store;
use serde_json::{json, Value};
use support::*;

/// `/ready` follows writes: while another process holds the write lock, reads
/// keep succeeding, and none of them may make the pod look ready again.
#[test]
fn ready_stays_unready_through_a_write_outage_whatever_reads_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ready.db");
    let env = vec![("FLEET_Q_DEFAULT_MAX_ATTEMPTS", "1".to_string())];
    let pod = PodProc::start(dir.path(), &db, "ready", &env);
    let c = client();
    let id = submit(&c, &pod, json!({"type": "noop"}));
    wait_for("ready", Duration::from_secs(20), || {
        (get_json(&c, &pod, "/ready").0 == 200).then_some(())
    });
    let lock = WriteLock::hold(&db);
    let why = wait_for(
        "unready under the write lock",
        Duration::from_secs(30),
        || {
            let (s, b) = get_json(&c, &pod, "/ready");
            (s == 503).then_some(b)
        },
    );
    assert_eq!(why["status"], json!("not_ready"));
    // Reads succeed during the outage; /ready must not flip back.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut reads = 0;
    while Instant::now() < deadline {
        let (s, step) = get_json(&c, &pod, &format!("/status/{id}"));
        assert_eq!(s, 200, "reads go on in WAL mode: {step}");
        reads += 1;
        let (s, b) = get_json(&c, &pod, "/ready");
        assert_eq!(s, 503, "a successful read made the pod look ready: {b}");
    }
    assert!(reads > 0);
    // A submit during the outage is refused and stores nothing.
    let r = c
        .post(pod.url("/submit"))
        .json(&json!({"type": "noop"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    lock.release();
    wait_for(
        "ready again after the outage",
        Duration::from_secs(30),
        || (get_json(&c, &pod, "/ready").0 == 200).then_some(()),
    );
}

/// Sets or clears the immutable attribute (root on this machine kind can).
fn immutable(paths: &[PathBuf], on: bool) {
    for p in paths {
        let ok = Command::new("chattr")
            .arg(if on { "+i" } else { "-i" })
            .arg(p)
            .status()
            .expect("chattr runs")
            .success();
        assert!(
            ok,
            "chattr {} {}",
            if on { "+i" } else { "-i" },
            p.display()
        );
    }
}

/// Clears the immutable attribute on drop, so the temp dir can be removed.
struct Unfreeze(Vec<PathBuf>);

impl Drop for Unfreeze {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(p).status();
        }
    }
}

/// A ledger that cannot be written never strands a dead pod's steps: a ledger
/// file that is immutable from the start (the pod keeps its ledger in memory),
/// and one made immutable while the leader runs (each cycle recovers without its
/// audit record, counted in a metric).
#[test]
fn an_unwritable_recovery_ledger_never_stops_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let frozen_from_start = dir.path().join("leader-b-ledger.db");
    std::fs::write(&frozen_from_start, b"").unwrap();
    let _unfreeze = Unfreeze(vec![
        frozen_from_start.clone(),
        dir.path().join("leader-ledger.db"),
        dir.path().join("leader-ledger.db-wal"),
    ]);
    immutable(std::slice::from_ref(&frozen_from_start), true);

    // Starts at all with an immutable ledger file.
    let spare = PodProc::start(dir.path(), &db, "leader-b", &[]);
    assert!(spare.log_text().contains("keeping the ledger in memory"));
    drop(spare);

    let leader = PodProc::start(dir.path(), &db, "leader", &[]);
    wait_for("the leader to lead", Duration::from_secs(20), || {
        leader.is_leader().then_some(())
    });
    // Its ledger becomes unwritable while it runs.
    let ledger = dir.path().join("leader-ledger.db");
    let wal = dir.path().join("leader-ledger.db-wal");
    wait_for("the ledger's WAL", Duration::from_secs(20), || {
        wal.exists().then_some(())
    });
    immutable(&[ledger, wal], true);

    // A worker takes long steps and dies holding them.
    let mut worker = PodProc::start(dir.path(), &db, "worker", &[]);
    let c = client();
    let ids: Vec<String> = (0..4)
        .map(|_| {
            submit(
                &c,
                &worker,
                json!({"type": "sleep", "args": {"ms": 1500}, "max_retries": 3}),
            )
        })
        .collect();
    let obs = Observer::open(&db);
    wait_for("the worker to hold a step", Duration::from_secs(20), || {
        ids.iter()
            .any(|id| obs.step(id).claimed_by.as_deref() == Some(worker.id.as_str()))
            .then_some(())
    });
    worker.kill9();
    wait_for("every step to complete", Duration::from_secs(60), || {
        ids.iter()
            .all(|id| obs.step(id).status == fleet_q_actors::StepStatus::Completed)
            .then_some(())
    });
    let text = c
        .get(leader.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metric(&text, "fleet_q_recovery_ledger_errors_total") >= 1.0,
        "ledger failures are counted"
    );
    assert!(metric(&text, "fleet_q_recovery_steps_total{action=\"requeued\"}") >= 1.0);
    // The cycles are still listed, from memory.
    let r: Value = c
        .get(leader.url("/admin/recovery"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(!r["cycles"].as_array().unwrap().is_empty());
    let h = leader.health().unwrap();
    assert_eq!(h["recovery"]["failing"], json!(false), "{h}");
}

/// Deleting the database file under a running pod: the pod notices on its next
/// heartbeat, refuses writes with 503 and goes unready, and accepts nothing it
/// would lose.
#[test]
fn a_deleted_database_file_makes_the_pod_refuse_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gone.db");
    let pod = PodProc::start(dir.path(), &db, "gone", &[]);
    let c = client();
    submit(&c, &pod, json!({"type": "noop"}));
    wait_for("ready", Duration::from_secs(20), || {
        (get_json(&c, &pod, "/ready").0 == 200).then_some(())
    });
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    let r = c
        .post(pod.url("/submit"))
        .json(&json!({"type": "noop"}))
        .send()
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        503,
        "a submit into a deleted file is refused"
    );
    let body: Value = r.json().unwrap();
    assert_eq!(body["error_type"], json!("database_error"));
    wait_for("unready", Duration::from_secs(20), || {
        (get_json(&c, &pod, "/ready").0 == 503).then_some(())
    });
    assert!(pod.log_text().contains("was deleted"));
    // Liveness does not depend on the store.
    assert_eq!(get_json(&c, &pod, "/health").0, 200);
}

/// Deleting the WAL or its index under a running pod (a "clean-up" gone wrong)
/// must lose nothing: the pod refuses writes from then on, saves every commit
/// still in the deleted WAL into the database file, and after a SIGKILL and a
/// restart every step it accepted is there. Deleted after 20 submits and,
/// as early as the test can, after one. (Until every connection the pod keeps
/// opened the WAL with the store, the checkpoint helper's connection opened it
/// at its first pass, which could come after the deletion and create the file
/// again, seen with `strace`; this test failed about 1 run in 5 then.)
#[test]
fn a_deleted_wal_or_index_is_refused_and_loses_no_accepted_step() {
    for (suffix, before) in [("-wal", 20), ("-shm", 20), ("-wal", 1), ("-shm", 1)] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("wal.db");
        let name = format!("del{suffix}-{before}");
        let mut pod = PodProc::start(dir.path(), &db, &name, &[]);
        let c = client();
        // Long steps, so none finishes (and nothing else commits) meanwhile.
        let long = json!({"type": "sleep", "args": {"ms": 3_600_000}});
        let mut accepted: Vec<String> = (0..before)
            .map(|_| submit(&c, &pod, long.clone()))
            .collect();
        let mut file = db.clone().into_os_string();
        file.push(suffix);
        std::fs::remove_file(PathBuf::from(&file)).unwrap();
        // Submits sent before the pod notices may still be accepted (into the
        // WAL it holds); the first one after it noticed is refused.
        let refused = (0..50)
            .find_map(|_| {
                let r = c.post(pod.url("/submit")).json(&long).send().unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().unwrap();
                if status == 201 {
                    accepted.push(body["step_id"].as_str().unwrap().to_string());
                    None
                } else {
                    Some((status, body))
                }
            })
            .expect("a submit is refused once the file is gone");
        assert_eq!(refused.0, 503, "{suffix}: {}", refused.1);
        assert_eq!(refused.1["error_type"], json!("database_error"));
        wait_for("unready", Duration::from_secs(20), || {
            (get_json(&c, &pod, "/ready").0 == 503).then_some(())
        });
        wait_for("the rescue checkpoint", Duration::from_secs(20), || {
            pod.log_text()
                .contains("every commit in the deleted WAL is now in the database file")
                .then_some(())
        });
        assert!(
            !Path::new(&file).exists(),
            "{suffix} after {before}: the pod created the deleted file again"
        );
        // The worst way to stop, then a new pod on the same path.
        pod.kill9();
        let obs = Observer::open(&db);
        let stats = obs.stats();
        assert_eq!(
            stats.counts.total(),
            accepted.len() as u64,
            "{suffix} after {before}: every accepted step survives: {stats:?}"
        );
        for id in &accepted {
            assert_eq!(obs.step(id).step_type(), "sleep");
        }
    }
}

/// A file system of its own, small enough to fill: a tmpfs of `bytes` (root on
/// this machine kind can mount one), unmounted on drop.
struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    fn mount(at: &Path, bytes: u64) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount runs")
            .success();
        assert!(ok, "mount a tmpfs on {} (needs root)", at.display());
        SmallDisk {
            at: at.to_path_buf(),
        }
    }

    /// Writes zeros to `name` until the file system refuses more (ENOSPC).
    fn fill(&self, name: &str) -> PathBuf {
        let path = self.at.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        let mut small = false;
        loop {
            match f.write(if small { &chunk[..512] } else { &chunk }) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) && !small => small = true,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a pod still holding a file on it lets go when it is killed.
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// A full disk under the database: a write that does not fit is refused with
/// 503 and a detail that says so, stores nothing, and the pod lives on,
/// unready; when space is freed it takes writes again without a restart, and
/// every step it accepted completes.
#[test]
fn a_full_disk_refuses_writes_clearly_and_the_pod_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    // Declared before the pod, so the pod is killed before the unmount.
    let disk = SmallDisk::mount(&dir.path().join("disk"), 8 << 20);
    let db = disk.at.join("full.db");
    let mut pod = PodProc::start(dir.path(), &db, "full", &[]);
    let c = client();
    let mut accepted: Vec<String> = (0..5)
        .map(|i| submit(&c, &pod, json!({"type": "noop", "args": {"i": i}})))
        .collect();
    wait_for("ready", Duration::from_secs(20), || {
        (get_json(&c, &pod, "/ready").0 == 200).then_some(())
    });
    let filler = disk.fill("filler");

    // Steps with 64 KiB of args each: new pages, which the WAL takes until its
    // file can grow no further (and which no checkpoint can then copy into
    // the database file, so the WAL cannot restart either).
    let big = "x".repeat(64 << 10);
    let mut refused = None;
    for i in 0..200 {
        let r = c
            .post(pod.url("/submit"))
            .json(&json!({"type": "noop", "args": {"i": i, "big": big}}))
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().unwrap();
        match status {
            201 => accepted.push(body["step_id"].as_str().unwrap().to_string()),
            _ => {
                refused = Some((status, body));
                break;
            }
        }
    }
    let (status, body) = refused.expect("a full disk refuses a submit within 200 tries");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error_type"], json!("database_error"));
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("disk is full"), "{detail}");
    assert!(
        !detail.contains("INSERT") && !detail.contains("full.db"),
        "{detail}"
    );

    // A write failed: the pod is unready until one succeeds (and it stays
    // alive to say so).
    let why = wait_for("unready on a full disk", Duration::from_secs(30), || {
        let (s, b) = get_json(&c, &pod, "/ready");
        (s == 503).then_some(b)
    });
    assert_eq!(why["status"], json!("not_ready"), "{why}");
    assert_eq!(get_json(&c, &pod, "/health").0, 200);
    assert!(pod.child.try_wait().unwrap().is_none(), "the pod exited");
    assert!(pod.log_text().contains("disk is full"));

    // Space comes back: no restart needed.
    std::fs::remove_file(&filler).unwrap();
    wait_for("ready once space returns", Duration::from_secs(30), || {
        (get_json(&c, &pod, "/ready").0 == 200).then_some(())
    });
    accepted.push(submit(&c, &pod, json!({"type": "noop"})));
    for id in &accepted {
        wait_for(
            &format!("step {id} completed"),
            Duration::from_secs(30),
            || {
                let (s, b) = get_json(&c, &pod, &format!("/status/{id}"));
                (s == 200 && b["status"] == json!("completed")).then_some(())
            },
        );
    }
    let (_, q) = get_json(&c, &pod, "/admin/queue");
    assert_eq!(
        q["completed_steps"],
        json!(accepted.len()),
        "exactly the accepted steps are stored: {q}"
    );
    pod.kill9();
}

/// A pod that heartbeats every 4 s among pods with a 3 s dead threshold is judged
/// by its own declared settings: never presumed dead, never fenced, and it warns
/// once that its settings differ from the leader's.
#[test]
fn pods_with_slower_heartbeats_are_not_presumed_dead() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mixed.db");
    let leader = PodProc::start(dir.path(), &db, "quick", &[]);
    wait_for("quick to lead", Duration::from_secs(20), || {
        leader.is_leader().then_some(())
    });
    let slow_env = vec![
        ("FLEET_Q_HEARTBEAT_INTERVAL_SECONDS", "4".to_string()),
        ("FLEET_Q_DEAD_POD_THRESHOLD_SECONDS", "15".to_string()),
    ];
    let slow = PodProc::start(dir.path(), &db, "slow", &slow_env);
    let obs = Observer::open(&db);
    // Three of its heartbeat intervals: long past the leader's 3 s threshold.
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        let pods = obs.block(obs.store.pods_list()).unwrap();
        let row = pods
            .iter()
            .find(|p| p.pod_id == slow.id)
            .expect("slow's row");
        assert_eq!(
            row.status,
            fleet_q_actors::PodStatus::Up,
            "the slow pod was presumed dead"
        );
        assert_eq!(row.dead_after, Some(Duration::from_secs(15)));
        let h = slow.health().unwrap();
        assert_eq!(h["generation"], json!(0), "the slow pod had to rejoin: {h}");
    }
    wait_for("the settings warning", Duration::from_secs(20), || {
        slow.log_text()
            .contains("differ from the leader's")
            .then_some(())
    });
    assert_eq!(
        slow.log_text().matches("differ from the leader's").count(),
        1,
        "warned once"
    );
}

/// Opens `n` connections that send a request head promising a body and then only
/// part of it.
fn stall(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(
                b"POST /submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"type\":",
            )
            .unwrap();
            s
        })
        .collect()
}

/// Stalled request bodies are timed out (408, connection closed), connections
/// past the cap are refused with the JSON error body, and probes answer
/// throughout.
#[test]
fn stalled_bodies_time_out_and_the_connection_cap_refuses_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stall.db");
    let env = vec![
        ("FLEET_Q_HTTP_BODY_TIMEOUT_SECONDS", "5".to_string()),
        ("FLEET_Q_HTTP_MAX_CONNECTIONS", "16".to_string()),
    ];
    let pod = PodProc::start(dir.path(), &db, "stall", &env);
    let c = client();
    let mut stalled = stall(pod.port, 100);
    // Probes answer while the stalled bodies are open.
    assert_eq!(
        c.get(pod.url("/health")).send().unwrap().status().as_u16(),
        200
    );
    assert_eq!(
        c.get(pod.url("/ready")).send().unwrap().status().as_u16(),
        200
    );
    assert_eq!(
        c.get(pod.url("/metrics")).send().unwrap().status().as_u16(),
        200
    );
    // Each stalled request ends, and its connection closes: refused at once past
    // the cap (503 with the error body), or 408 at the body deadline. At most 16
    // can be held at once, so at least 84 of the 100 are refused.
    let answer = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        assert!(text.contains("\"error_type\""), "JSON error body: {text}");
        (text.split(' ').nth(1).unwrap_or("none").to_string(), text)
    };
    let mut answers = std::collections::BTreeMap::new();
    let mut refusal = None;
    for s in &mut stalled {
        let (status, text) = answer(s);
        if status == "503" {
            refusal = Some(text);
        }
        *answers.entry(status).or_insert(0) += 1;
    }
    assert!(
        answers.keys().all(|k| k == "408" || k == "503"),
        "every stalled request got 408 or 503: {answers:?}"
    );
    assert!(
        answers.get("503").copied().unwrap_or(0) >= 84,
        "{answers:?}"
    );
    let refusal = refusal.expect("connections past the cap were refused");
    assert!(refusal.contains("too many open connections"), "{refusal}");
    // Below the cap, a stalled body is held until its deadline, then 408.
    drop(stalled);
    let mut alone = stall(pod.port, 1);
    let (status, text) = answer(&mut alone[0]);
    assert_eq!(status, "408", "{text}");
    drop(alone);
    // With the connections gone, the pod serves normally.
    wait_for("submits accepted again", Duration::from_secs(20), || {
        let r = c
            .post(pod.url("/submit"))
            .json(&json!({"type": "noop"}))
            .send()
            .ok()?;
        (r.status().as_u16() == 201).then_some(())
    });
}

/// Client-chosen step types never become metric labels, and JSON listings of
/// types are capped with a count of what was left out.
#[test]
fn clients_cannot_grow_metrics_or_type_listings() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("labels.db");
    let pod = PodProc::start(dir.path(), &db, "labels", &[]);
    let c = client();
    let steps: Vec<Value> = (0..600)
        .map(|i| json!({"type": format!("random-type-{i}")}))
        .collect();
    submit_batches(&c, &pod, &steps, 300);
    let obs = Observer::open(&db);
    obs.wait_all_terminal(600, Duration::from_secs(60));
    let text = c.get(pod.url("/metrics")).send().unwrap().text().unwrap();
    assert!(
        !text.contains("random-type-"),
        "a client-chosen type became a label"
    );
    assert!(
        metric(&text, "fleet_q_steps_submitted_total{type=\"other\"}") >= 600.0,
        "unregistered types count under `other`"
    );
    let q: Value = c
        .get(pod.url("/admin/queue"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let shown = q["steps_by_type"].as_object().unwrap().len();
    assert_eq!(shown, fleet_q::api::MAX_TYPES_SHOWN);
    assert_eq!(
        q["steps_by_type_omitted"],
        json!(600 - fleet_q::api::MAX_TYPES_SHOWN)
    );
}

fn ledger_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|n| n.starts_with("fleet-q-ledger-") && n.ends_with(".db"))
        .collect();
    v.sort();
    v
}

/// The default ledger lives in the temp dir: a pod removes its own on shutdown,
/// and a starting pod removes those of killed pods, but never a running pod's.
#[test]
fn ledger_files_do_not_pile_up_in_the_temp_dir() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let db = dir.path().join("files.db");
    let start = |name: &str| {
        let mut p = PodProc::start_with(
            dir.path(),
            &db,
            name,
            &[("TMPDIR", tmp.display().to_string())],
            |cmd| {
                cmd.env_remove("FLEET_Q_LEDGER_PATH");
            },
        );
        p.name = name.into();
        p
    };
    let mut killed = start("killed");
    let running = start("running");
    assert_eq!(ledger_files(&tmp).len(), 2);
    killed.kill9();
    assert_eq!(ledger_files(&tmp).len(), 2, "a killed pod leaves its file");
    let mut graceful = start("graceful");
    let files = ledger_files(&tmp);
    assert_eq!(files.len(), 2, "the killed pod's file was swept: {files:?}");
    assert!(
        files.iter().any(|f| f.contains(&running.id)),
        "the running pod's file stays"
    );
    graceful.term();
    assert!(graceful.wait_exit(Duration::from_secs(30)).success());
    let files = ledger_files(&tmp);
    assert_eq!(
        files.len(),
        1,
        "shutdown removed the pod's own file: {files:?}"
    );
}

/// Pod ids are safe to build file names from, and unique per process.
#[test]
fn pod_ids_are_safe_and_unique() {
    for bad in ["../escape", "a/b", "..", ".hidden", "x y", &"p".repeat(101)] {
        let out = Command::new(env!("CARGO_BIN_EXE_fleet-q"))
            .args(["check"])
            .env_clear()
            .env("FLEET_Q_POD_ID", bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "pod id {bad:?} was accepted");
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("FLEET_Q_POD_ID"),
            "the error names the setting: {text}"
        );
    }
    let ids: std::collections::HashSet<String> = (0..200)
        .map(|_| fleet_q::config::incarnation_id("same"))
        .collect();
    assert_eq!(ids.len(), 200, "incarnations of one prefix never collide");
}

/// JSON log lines carry field values, never Rust debug forms such as `Some("…")`.
#[test]
fn json_logs_hold_values_not_debug_forms() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("logs.db");
    let pod = PodProc::start(dir.path(), &db, "logs", &[]);
    let line = wait_for("the leadership log line", Duration::from_secs(20), || {
        pod.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == json!("leadership changed"))
    });
    assert_eq!(line["leader"], json!(pod.id), "{line}");
    let text = pod.log_text();
    assert!(
        !text.contains("Some("),
        "a debug form reached the logs:\n{text}"
    );
}

/// Started on a terminal with no `FLEET_Q_LOG_FORMAT`, a pod logs readable lines
/// (under `script`, which gives it a pseudo-terminal); elsewhere JSON stays the
/// default (every other test reads JSON lines without setting the format).
#[test]
fn a_pod_on_a_terminal_logs_readable_lines() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("tty.log");
    let serve = format!(
        "{} serve --host 127.0.0.1 --port {port}",
        env!("CARGO_BIN_EXE_fleet-q")
    );
    let mut child = Command::new("script")
        .args(["-qfec", &serve])
        .arg(&log)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FLEET_Q_SQLITE_DB_PATH", dir.path().join("tty.db"))
        .env("FLEET_Q_LEDGER_PATH", ":memory:")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("script runs");
    let text = wait_for("the serving line", Duration::from_secs(20), || {
        let t = std::fs::read_to_string(&log).ok()?;
        t.lines().any(|l| l.contains("serving")).then_some(t)
    });
    // Ending `script` hangs up its terminal, which ends the pod; pkill makes sure.
    let _ = child.kill();
    let _ = child.wait();
    let _ = Command::new("pkill")
        .args(["-f", "--", &format!("serve --host 127.0.0.1 --port {port}")])
        .status();
    let serving = text.lines().find(|l| l.contains("serving")).unwrap();
    assert!(
        !serving.trim_start().starts_with('{'),
        "a terminal got JSON: {serving}"
    );
    assert!(serving.contains("INFO"), "{serving}");
}
