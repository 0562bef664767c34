//! The writer's own tests: yielding, hand-offs and the sent count, on real
//! SQLite files.

use super::*;
use crate::storage::sqlite::identity::FileIdentity;

/// A writer on a real SQLite file with one table `t (x)`.
fn writer(dir: &tempfile::TempDir) -> Writer {
    let path = dir.path().join("writer.db");
    let conn = Connection::open(&path).expect("open");
    conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER);")
        .expect("schema");
    Writer::start(
        conn,
        Arc::new(AtomicU64::new(0)),
        64,
        Arc::new(FileIdentity::of(&path)),
    )
    .expect("writer")
}

/// A statement that runs for minutes unless interrupted.
const ENDLESS: &str = "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c \
                       WHERE n < 4000000000) SELECT count(*) FROM c";

/// Counts rows of `t` equal to `x`, through the writer.
async fn count(w: &Writer, x: i64) -> i64 {
    w.write("count", move |c, _| {
        c.query_row("SELECT count(*) FROM t WHERE x = ?1", [x], |r| r.get(0))
            .map_err(|e| map_err("count", e))
    })
    .await
    .expect("count")
}

/// Runs `job` on the writer; once it signalled that it started, sends a
/// foreground insert. Returns the job's answer and the insert's.
async fn race<F>(
    w: &Writer,
    yields: bool,
    job: F,
) -> (Result<i64, StoreError>, Result<(), StoreError>)
where
    F: FnOnce(&Connection) -> Result<i64, StoreError> + Send + 'static,
{
    let (started_tx, started) = oneshot::channel::<()>();
    let work = move |c: &Connection, _: i64, _: &mut Totals| {
        let _ = started_tx.send(());
        job(c)
    };
    let bg = {
        let w = w.clone();
        tokio::spawn(async move { w.write_background("bg", yields, work).await })
    };
    started.await.expect("the background job started");
    let fg = w
        .write("fg", |c, _| {
            c.execute("INSERT INTO t (x) VALUES (1)", [])
                .map(|_| ())
                .map_err(|e| map_err("fg", e))
        })
        .await;
    // Deadline: an interrupt that never comes would leave ENDLESS running.
    let bg = tokio::time::timeout(Duration::from_secs(120), bg)
        .await
        .expect("the background job ended")
        .expect("join");
    (bg, fg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yielding_job_steps_aside_for_a_write_and_keeps_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let w = writer(&dir);
    let (bg, fg) = race(&w, true, |c| {
        // A change before the long statement: it must roll back too.
        c.execute("INSERT INTO t (x) VALUES (2)", [])
            .map_err(|e| map_err("bg", e))?;
        c.query_row(ENDLESS, [], |r| r.get(0))
            .map_err(|e| map_err("bg", e))
    })
    .await;
    fg.expect("the write ran");
    let e = bg.expect_err("the yielding job was interrupted");
    assert!(yielded(&e), "answered as yielded: {e:?}");
    assert_eq!(count(&w, 1).await, 1, "the write committed");
    assert_eq!(
        count(&w, 2).await,
        0,
        "the yielding job's insert rolled back"
    );
    // The writer goes on: a yielding job with no write to yield to completes.
    let n = w
        .write_background("bg", true, |c, _, _| {
            c.execute("INSERT INTO t (x) VALUES (3)", [])
                .map_err(|e| map_err("bg", e))?;
            c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
                .map_err(|e| map_err("bg", e))
        })
        .await
        .expect("an uncontended yielding job completes");
    assert_eq!(n, 2);
    assert_eq!(count(&w, 3).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_and_foreground_jobs_are_never_interrupted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let w = writer(&dir);
    // A background job that does not yield runs to its end (about a
    // second of work) while a write waits for it.
    let (bg, fg) = race(&w, false, |c| {
        c.query_row(
            "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c \
             WHERE n < 3000000) SELECT count(*) FROM c",
            [],
            |r| r.get(0),
        )
        .map_err(|e| map_err("bg", e))
    })
    .await;
    assert_eq!(bg.expect("not interrupted"), 3_000_000);
    fg.expect("the write ran after it");
    // Foreground jobs sent while another foreground job runs do not
    // interrupt it either.
    let long = {
        let w = w.clone();
        tokio::spawn(async move {
            w.write("fg", |c, _| {
                c.query_row(
                    "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c \
                     WHERE n < 3000000) SELECT count(*) FROM c",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(|e| map_err("fg", e))
            })
            .await
        })
    };
    let others: Vec<_> = (0..20)
        .map(|_| {
            let w = w.clone();
            tokio::spawn(async move { count(&w, 1).await })
        })
        .collect();
    assert_eq!(
        long.await.expect("join").expect("not interrupted"),
        3_000_000
    );
    for o in others {
        assert_eq!(o.await.expect("join"), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_hand_off_runs_ahead_of_writes_that_never_pause() {
    let dir = tempfile::tempdir().expect("temp dir");
    let w = writer(&dir);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    // More writers than the queue holds: it never empties while they run.
    let flood: Vec<_> = (0..256)
        .map(|_| {
            let (w, stop, written) = (w.clone(), stop.clone(), written.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    w.write("fg", |c, _| {
                        c.execute("INSERT INTO t (x) VALUES (5)", [])
                            .map(|_| ())
                            .map_err(|e| map_err("fg", e))
                    })
                    .await
                    .expect("write");
                    written.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    while written.load(Ordering::Relaxed) < 2000 {
        tokio::time::sleep(Duration::from_millis(5)).await; // poll interval
    }
    let (tx, done) = oneshot::channel();
    let handle = w.clone();
    std::thread::spawn(move || {
        let _ = tx.send(handle.checkpoint_blocking());
    });
    // Deadline: a hand-off that waited for a pause would wait for ever.
    let outcome = tokio::time::timeout(Duration::from_secs(30), done).await;
    let still_flooding = flood.iter().all(|t| !t.is_finished());
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        t.await.expect("join");
    }
    let pass = outcome
        .expect("the hand-off ran while writes never paused")
        .expect("answered")
        .expect("checkpoint");
    assert!(still_flooding, "the writes were still coming");
    assert!(
        !pass.busy && pass.log >= 0 && pass.done >= 0,
        "a WAL checkpoint: {pass:?}"
    );
}

#[test]
fn the_sent_count_is_uncounted_when_a_send_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let w = writer(&dir);
    let (tx, rx) = mpsc::channel(1);
    drop(rx); // a writer that stopped
    let stopped = Writer {
        tx,
        identity: w.identity.clone(),
        yielding: w.yielding.clone(),
    };
    let r = rt.block_on(stopped.write("fg", |_, _| Ok(())));
    assert!(r.is_err());
    assert_eq!(w.yielding.sent.load(Ordering::Relaxed), 0);
    rt.block_on(w.write("fg", |_, _| Ok(()))).expect("write");
    assert_eq!(w.yielding.sent.load(Ordering::Relaxed), 0);
}
