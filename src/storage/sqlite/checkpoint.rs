//! The WAL checkpointer: copies committed pages from the WAL into the database
//! file on threads and connections of its own, so the writer rarely does.
//!
//! Why: by default SQLite checkpoints inside the commit that takes the WAL past
//! 1,000 pages, on the committing connection: our one writer thread. Measured
//! while the leader pruned a million rows (`cargo bench --bench history`), those
//! commits took 5–15 ms instead of under one, and every submit queued behind
//! them waited as long. Here the writer's connection has automatic checkpoints
//! off, and a `PASSIVE` checkpoint (which never blocks readers or the writer)
//! runs whenever the writer committed since the last look, at most every
//! [`PERIOD`], sooner while the writer appends fast (below).
//!
//! **Routine passes run at idle CPU priority.** A pass copies megabytes while
//! the leader prunes (15–20 ms of CPU every period, here). On a small node the
//! pruning writer holds one core, the pass the other, and a request thread
//! woken meanwhile (a submit's answer) waited for one of them to be
//! descheduled: measured with a probe in the history bench on 2 vCPUs, most
//! submits slower than 0.6 ms while pruning were waiting outside the writer
//! during a pass. So routine passes run on a helper thread with the `SCHED_IDLE`
//! policy (Linux; elsewhere, or where refused, at normal priority), which any
//! woken thread preempts at once: the submit p99 while pruning fell from
//! 0.9–1.6 ms to 0.45–1.0 ms (BENCHMARKS.md, History). "At once" holds while
//! the helper runs user code. Inside a pass's `fsync`, a kernel without full
//! preemption (`PREEMPT_NONE`, as on the benchmark VM) lets the woken thread
//! run only at the writeback's next preemption point, measured 0.9–1.9 ms
//! apart there. The kernel counts the helper's CPU as idle and places woken
//! threads on it: the largest single part of the tail that remains (17 of
//! 44 delayed wake-ups in one traced run; kernel workers converting and
//! discarding WAL blocks were 15). The cost is that
//! a pod whose CPUs are saturated by other work checkpoints slowly; what bounds
//! the WAL then is the next part, which never runs at idle priority.
//!
//! **Passes sized by the writer's pace.** Each look measures how fast the
//! WAL grew since the helper last reported, and the next look comes when the
//! writer, at that pace, will have appended about [`PASS_FRAMES`] (1 MiB):
//! every [`PERIOD`] (100 ms) for a trickle of commits, down to every
//! [`MIN_PERIOD`] (10 ms) for a writer appending fast (pruning a backlog
//! reaches the floor here). So a pass copies and syncs a bounded amount
//! however busy the writer is. Measured in the history bench at 1 M rows
//! (BENCHMARKS.md): with the period fixed at 10 ms the submit p99 while
//! pruning fell from 0.45–0.84 ms (100 ms) to 0.34–0.39 ms, but the p99 of
//! paced submits with no pruning rose from ~0.27 to ~0.44 ms (a pass and its
//! sync every 10 ms); sized by the pace (1 MiB per pass), the p99 while
//! pruning was 0.34–0.45 ms (median 0.35) against 0.38–0.78 ms (median 0.51)
//! for the fixed 100 ms in the same alternating rounds, with the no-pruning
//! p99 unchanged within the noise.
//!
//! **Keeping the WAL bounded.** SQLite restarts the WAL from its beginning only
//! when a write transaction begins with every frame already checkpointed. Under
//! steady writes (pruning a backlog commits every millisecond) some commit
//! always lands during a checkpoint taken here, so that never happens: measured
//! while pruning a million rows, the WAL grew to 100,000 frames (400 MB) and
//! the file stayed that size afterwards. So once the WAL holds
//! `SqliteOptions::wal_restart_bytes` (256 MiB by default), the checkpointer's
//! own thread (normal priority) checkpoints until the frames added during one
//! pass are few ([`HANDOFF_FRAMES`]), then hands the last pass to the writer
//! itself ([`Writer::checkpoint_blocking`], a job the writer runs alone,
//! before its next group): with nothing written between that checkpoint and
//! the writer's next transaction, the WAL restarts, and `journal_size_limit`
//! (set on the writer) truncates the file back to [`WAL_LIMIT_BYTES`]. It
//! learns the WAL's size from the helper's last pass, or from the WAL file's
//! length when the helper is starved of CPU (a stat per period with new
//! commits, not a pass). While the WAL is past the threshold it stops waking
//! the helper, but a pass the helper already started holds SQLite's
//! checkpoint lock until it ends (this thread's passes find it *busy*
//! meanwhile), and a starved helper ends it slowly: on a pod whose CPUs other
//! work saturates, the WAL can pass the threshold by what is written during
//! that one pass. Measured with twice as many spinning threads as cores, the
//! WAL still peaked at 4 MB on a 1 MiB threshold (`tests/store_sqlite.rs`).
//!
//! A reader elsewhere holding an old snapshot (another process, or the
//! `sqlite3` shell in a transaction) keeps the WAL from restarting whatever
//! this thread does: a hand-off that cannot checkpoint every frame backs off
//! ([`HANDOFF_BACKOFF`], doubling to [`MAX_HANDOFF_BACKOFF`]) instead of
//! repeating every period, and the WAL restarts once the reader lets go.
//! A pass that finds another connection checkpointing (the helper, or another
//! process's pod) is *busy*: it learned nothing and is tried again next period.
//!
//! **After a lost file.** Once the database file, its WAL or its index is
//! found deleted or replaced ([`super::identity`]), neither thread runs a
//! pass: copying frames then is the writer's rescue alone, and only when no
//! other connection can be using a new WAL.
//!
//! The hand-off costs the writer a checkpoint with its two syncs: 5–15 ms on
//! the benchmark machine, which a submit arriving then waits for. Restarting
//! at 32 MiB instead (every ~0.4 s while pruning flat out) raised the submit
//! p999 while pruning from ~4 ms to 11–15 ms and the p99 with it; at 256 MiB it
//! happens every few seconds of a flat-out prune and never in normal running,
//! where the WAL restarts on its own between writes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::identity::FileIdentity;
use super::writer::Writer;

/// How often the checkpointer looks for new commits while the writer appends
/// little to the WAL.
pub(crate) const PERIOD: Duration = Duration::from_millis(100);

/// The least time between two looks, while the writer appends fast.
pub(crate) const MIN_PERIOD: Duration = Duration::from_millis(10);

/// The frames (1 MiB of 4 KiB pages) a routine pass should find new: while
/// the writer appends faster than that per [`PERIOD`], looks come sooner, so
/// each pass copies and syncs about this much (see "Passes sized by the
/// writer's pace" in the module docs).
pub(crate) const PASS_FRAMES: i64 = 256;

/// The wait before the next look, after `grown` frames were added to the WAL
/// in the last `waited`: the time the writer takes, at that pace, to append
/// [`PASS_FRAMES`], between [`MIN_PERIOD`] and [`PERIOD`].
pub(crate) fn next_wait(grown: i64, waited: Duration) -> Duration {
    if grown <= 0 {
        return PERIOD;
    }
    let at_pace = waited.mul_f64(PASS_FRAMES as f64 / grown as f64);
    at_pace.clamp(MIN_PERIOD, PERIOD)
}

/// New frames in one checkpoint pass small enough to leave to the writer
/// (a fraction of a millisecond to copy).
const HANDOFF_FRAMES: i64 = 64;

/// Passes that chase a busy writer before handing off anyway.
const MAX_CHASE: usize = 8;

/// The size a restarted WAL file is truncated back to.
pub(crate) const WAL_LIMIT_BYTES: i64 = 64 << 20;

/// The `journal_size_limit` for a store restarting its WAL past
/// `restart_bytes`: [`WAL_LIMIT_BYTES`], or the threshold if that is lower.
pub(crate) fn wal_limit(restart_bytes: u64) -> i64 {
    i64::try_from(restart_bytes)
        .unwrap_or(i64::MAX)
        .min(WAL_LIMIT_BYTES)
}

/// The first pause before another hand-off when the last one did not make the
/// WAL restart (another process's reader or writer can hold it back);
/// each further miss doubles it, up to [`MAX_HANDOFF_BACKOFF`]. So a WAL that
/// cannot restart costs the writer one short checkpoint a minute, not one per
/// [`PERIOD`].
const HANDOFF_BACKOFF: Duration = Duration::from_secs(1);
const MAX_HANDOFF_BACKOFF: Duration = Duration::from_secs(60);

/// What one `PASSIVE` checkpoint pass found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pass {
    /// Another connection was checkpointing: nothing was done or learned.
    pub(crate) busy: bool,
    /// Frames in the WAL (-1 when busy).
    pub(crate) log: i64,
    /// Of those, frames now in the database file (-1 when busy).
    pub(crate) done: i64,
}

impl Pass {
    /// Every frame in the WAL is in the database file: the writer's next
    /// transaction restarts the WAL.
    pub(crate) fn complete(&self) -> bool {
        !self.busy && self.done >= self.log
    }
}

/// A `PASSIVE` checkpoint of `conn`'s database.
pub(crate) fn passive(conn: &Connection) -> rusqlite::Result<Pass> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok(Pass {
            busy: r.get::<_, i64>(0)? != 0,
            log: r.get(1)?,
            done: r.get(2)?,
        })
    })
}

/// The name of the thread that runs routine passes at idle priority (at most
/// 15 bytes: Linux keeps no more of a thread's name).
pub(crate) const IDLE_THREAD: &str = "fq-sqlite-ckpt";

/// Keeps the checkpointer alive; dropping it stops both its threads.
pub(crate) struct Checkpointer {
    _stop: mpsc::Sender<()>,
}

impl Checkpointer {
    /// Starts checkpointing the database `conn` and `idle` are open on (`idle`
    /// runs the routine passes, at idle priority); `commits` counts the
    /// writer's commits and `writer` takes the hand-off passes. The writer's
    /// connection must have automatic checkpoints off.
    pub(crate) fn start(
        conn: Connection,
        idle: Connection,
        commits: Arc<AtomicU64>,
        writer: Writer,
        restart_bytes: u64,
        identity: Arc<FileIdentity>,
    ) -> std::io::Result<Self> {
        let page: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap_or(4096)
            .max(512);
        let restart_frames = (i64::try_from(restart_bytes).unwrap_or(i64::MAX) / page).max(1);
        let wal = PathBuf::from(format!("{}-wal", conn.path().unwrap_or_default()));
        // The helper's last count of WAL frames, and its wake-ups (one kept
        // at most: a kick while it is busy is merged with the one waiting).
        let seen_frames = Arc::new(AtomicI64::new(0));
        let (kick, kicks) = mpsc::sync_channel::<()>(1);
        let helper = {
            let seen_frames = seen_frames.clone();
            let identity = identity.clone();
            std::thread::Builder::new()
                .name(IDLE_THREAD.into())
                .spawn(move || routine_passes(&idle, &kicks, &seen_frames, &identity))?
        };
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("fleet-q-sqlite-checkpoint".into())
            .spawn(move || {
                let mut seen = commits.load(Ordering::Relaxed);
                // After a hand-off that could not checkpoint every frame:
                // when it ran, and how long to wait before the next.
                let mut backoff: Option<(Instant, Duration)> = None;
                // The WAL file's size in frames when a pass last found the
                // WAL itself smaller than that: the file says nothing new
                // until it grows past it (another process's writer without
                // a journal_size_limit can leave the file long), so routine
                // passes stay on the helper instead of moving here.
                let mut file_floor = 0;
                // The WAL's frames at the last look, when it was, and the
                // wait before the next one.
                let (mut last_frames, mut last_look, mut wait) = (0, Instant::now(), PERIOD);
                // Ends when the store (and with it the sender) is gone.
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(wait) {
                    let now = commits.load(Ordering::Relaxed);
                    if now == seen || identity.is_lost() {
                        wait = PERIOD;
                        continue;
                    }
                    seen = now;
                    let in_file = frames_in_file(&wal, page);
                    if in_file < file_floor {
                        file_floor = 0; // the file was cut back
                    }
                    let from_file = if in_file > file_floor { in_file } else { 0 };
                    let frames = seen_frames.load(Ordering::Relaxed).max(from_file);
                    // Fewer frames than last time: the WAL restarted. The
                    // same number: the helper has not reported since (it is
                    // mid-pass, or starved), so the pace is not known anew.
                    if frames != last_frames {
                        let grown = if frames > last_frames { frames - last_frames } else { frames };
                        wait = next_wait(grown, last_look.elapsed());
                        (last_frames, last_look) = (frames, Instant::now());
                    }
                    let waiting = backoff.is_some_and(|(at, wait)| at.elapsed() < wait);
                    if frames < restart_frames || waiting {
                        let _ = kick.try_send(()); // full: a pass is due anyway
                        continue;
                    }
                    // The WAL is past the threshold (or its file says it may
                    // be): this thread takes over, at normal priority.
                    match passive(&conn) {
                        Ok(p) if p.busy => {} // the helper is mid-pass: next period
                        Ok(p) if p.log < restart_frames => {
                            // It restarted since the estimate, or the file
                            // is longer than the WAL in it.
                            seen_frames.store(p.log, Ordering::Relaxed);
                            file_floor = in_file;
                        }
                        Ok(p) => match restart(&conn, &writer, p.log) {
                            Restart::Done => {
                                backoff = None;
                                seen_frames.store(0, Ordering::Relaxed);
                            }
                            Restart::Busy => {}
                            Restart::HeldBack => {
                                let wait = backoff.map_or(HANDOFF_BACKOFF, |(_, w)| {
                                    (w * 2).min(MAX_HANDOFF_BACKOFF)
                                });
                                backoff = Some((Instant::now(), wait));
                            }
                        },
                        Err(e) => {
                            tracing::debug!(error = %e, "WAL checkpoint failed; retrying after the next commit")
                        }
                    }
                }
                // A last full pass so a clean shutdown leaves little WAL
                // behind, once the helper has finished its own.
                drop(kick);
                let _ = helper.join();
                if !identity.is_lost() {
                    let _ = passive(&conn);
                }
            })?;
        Ok(Checkpointer { _stop: tx })
    }
}

/// The helper thread: lowers its own CPU priority, then runs one pass per
/// kick until the checkpointer is gone, recording the WAL's frames.
fn routine_passes(
    conn: &Connection,
    kicks: &mpsc::Receiver<()>,
    seen_frames: &AtomicI64,
    identity: &FileIdentity,
) {
    if let Err(e) = lower_priority() {
        tracing::debug!(error = %e, "WAL checkpoints run at normal CPU priority");
    }
    while kicks.recv().is_ok() {
        if identity.is_lost() {
            continue;
        }
        match passive(conn) {
            Ok(p) if !p.busy => seen_frames.store(p.log, Ordering::Relaxed),
            Ok(_) => {} // the checkpointer's own pass: it knows
            Err(e) => {
                tracing::debug!(error = %e, "WAL checkpoint failed; retrying after the next commit")
            }
        }
    }
}

/// Puts the calling thread in the `SCHED_IDLE` policy: it runs only on a CPU
/// nothing else wants, and any woken thread preempts it (at once in user
/// code; in the kernel, at its next preemption point: see the module docs).
/// Lowering a thread's own priority needs no privilege.
#[cfg(target_os = "linux")]
pub(crate) fn lower_priority() -> Result<(), String> {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    )
    .map_err(|e| format!("cannot lower the checkpoint thread's priority: {e:?}"))
}

/// Elsewhere the passes keep normal priority.
#[cfg(not(target_os = "linux"))]
pub(crate) fn lower_priority() -> Result<(), String> {
    Err("idle CPU priority is set on Linux only".into())
}

/// The most frames the WAL file at `wal` can hold, from its length: at least
/// the frames in use since the file last grew (it only shrinks when the WAL
/// restarts), so it shows growth the helper, starved of CPU, has not reported.
fn frames_in_file(wal: &Path, page: i64) -> i64 {
    const WAL_HEADER: i64 = 32;
    const FRAME_HEADER: i64 = 24;
    let len = std::fs::metadata(wal).map_or(0, |m| i64::try_from(m.len()).unwrap_or(i64::MAX));
    (len - WAL_HEADER).max(0) / (page + FRAME_HEADER)
}

/// How a restart attempt ended.
#[derive(Debug, PartialEq, Eq)]
enum Restart {
    /// The WAL restarted, or the writer's pass checkpointed every frame.
    Done,
    /// Another connection was checkpointing: try again next period.
    Busy,
    /// The writer's pass could not checkpoint every frame (a reader in another
    /// process still needs them): back off.
    HeldBack,
}

/// Chases the writer until a pass finds few new frames, then has the writer
/// run the last pass itself, so its next transaction restarts the WAL.
fn restart(conn: &Connection, writer: &Writer, mut frames: i64) -> Restart {
    for _ in 0..MAX_CHASE {
        match passive(conn) {
            Ok(p) if p.busy => return Restart::Busy,
            // Fewer frames than before: the WAL restarted meanwhile.
            Ok(p) if p.log < frames => return Restart::Done,
            Ok(p) => {
                let fresh = p.log - frames;
                frames = p.log;
                if fresh <= HANDOFF_FRAMES {
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "WAL checkpoint failed; retrying after the next commit");
                return Restart::Busy;
            }
        }
    }
    match writer.checkpoint_blocking() {
        Ok(p) if p.busy => Restart::Busy,
        Ok(p) if p.complete() => Restart::Done,
        Ok(_) => Restart::HeldBack,
        Err(e) => {
            tracing::debug!(error = %e, "the writer's WAL checkpoint failed; retrying later");
            Restart::HeldBack
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Looks come as often as the writer appends [`PASS_FRAMES`], between
    /// [`MIN_PERIOD`] and [`PERIOD`]: a trickle of commits keeps the period,
    /// a pruning writer (~4,500 frames per 100 ms or more on the benchmark
    /// machine) gets the floor.
    #[test]
    fn looks_come_sooner_as_the_writer_appends_faster() {
        let ms = Duration::from_millis;
        assert_eq!(next_wait(0, ms(100)), PERIOD, "nothing new");
        assert_eq!(next_wait(-5, ms(100)), PERIOD);
        assert_eq!(next_wait(200, ms(100)), PERIOD, "a trickle");
        assert_eq!(next_wait(PASS_FRAMES, ms(100)), PERIOD);
        assert_eq!(next_wait(PASS_FRAMES * 4, ms(100)), ms(25));
        assert_eq!(next_wait(PASS_FRAMES * 2, ms(40)), ms(20));
        assert_eq!(next_wait(400, ms(100)), ms(64), "paced submits");
        assert_eq!(next_wait(4_500, ms(100)), MIN_PERIOD, "pruning");
        assert_eq!(next_wait(1_000_000, ms(100)), MIN_PERIOD, "the floor");
        assert_eq!(next_wait(PASS_FRAMES, ms(1)), MIN_PERIOD);
        assert_eq!(next_wait(1, Duration::from_secs(3600)), PERIOD);
    }

    /// While another connection checkpoints (here a `RESTART` checkpoint
    /// waiting, lock held, for a reader with an old snapshot), a pass is
    /// *busy*: it reports no frames, and a restart attempt is told to try
    /// again, not that the WAL restarted (a busy pass reports -1 frames,
    /// which once read as "fewer frames than before").
    #[test]
    fn a_pass_while_another_connection_checkpoints_is_busy() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("busy.db");
        let open = || {
            let c = Connection::open(&path).expect("open");
            c.busy_timeout(Duration::from_secs(5))
                .expect("busy timeout");
            c
        };
        let w = open();
        w.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; \
             CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);",
        )
        .expect("schema");
        // A reader holding a snapshot older than the WAL's end.
        let reader = open();
        reader.execute_batch("BEGIN").expect("begin");
        let n: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("read");
        assert_eq!(n, 1);
        w.execute_batch("INSERT INTO t VALUES (2)").expect("write");
        // RESTART takes the checkpoint lock, then waits in its busy handler
        // for that reader (each call says so, and retries for up to ~10 s).
        static WAITING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        fn wait_for_reader(calls: i32) -> bool {
            WAITING.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1)); // the busy handler's back-off
            calls < 10_000
        }
        let restarting = {
            let mut c = open();
            c.busy_handler(Some(wait_for_reader)).expect("busy handler");
            std::thread::spawn(move || {
                c.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !WAITING.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "the RESTART checkpoint never waited"
            );
            std::thread::sleep(Duration::from_millis(1)); // poll interval
        }
        let ours = open();
        let pass = passive(&ours).expect("pass");
        assert!(pass.busy, "{pass:?}");
        assert_eq!((pass.log, pass.done), (-1, -1));
        assert!(!pass.complete());
        let writer = Writer::start(
            w,
            Arc::new(AtomicU64::new(0)),
            8,
            Arc::new(FileIdentity::of(&path)),
        )
        .expect("writer");
        // The RESTART is still waiting for the reader.
        assert_eq!(restart(&ours, &writer, 2), Restart::Busy);
        reader.execute_batch("COMMIT").expect("let go");
        restarting
            .join()
            .expect("join")
            .expect("restart checkpoint");
        let pass = passive(&ours).expect("pass");
        assert!(pass.complete(), "{pass:?}");
    }
}
