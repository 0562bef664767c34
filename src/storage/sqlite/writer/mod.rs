//! The group-commit writer: one thread per process owns the write connection.
//!
//! Why one thread: SQLite allows one writer per database at a time anyway, and a
//! dedicated thread keeps blocking calls off the async runtime (and off actor
//! threads). Why group commit: a transaction's cost is dominated by the commit
//! (WAL append + fsync policy), so every job waiting when the writer wakes shares
//! one `BEGIN IMMEDIATE … COMMIT`. Each job runs inside its own savepoint, so a job
//! that fails rolls back alone; callers are answered only after the commit, so an
//! answer always describes durable state.
//!
//! Background work (pruning) never shares a transaction with other jobs: it runs
//! alone, only when nothing else is queued, and a *yielding* background job is
//! interrupted as soon as another job is sent (see [`YieldState`]), so writes
//! do not wait behind it.
//!
//! Several processes on one file coordinate through SQLite's own locking:
//! `BEGIN IMMEDIATE` takes the write lock up front (waiting up to the busy timeout),
//! so two processes never interleave inside a transaction.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleet_q_actors::StoreError;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::map_err;
use super::totals::Totals;

/// Most jobs committed in one transaction: bounds the latency a group adds.
const MAX_GROUP: usize = 512;

/// How long the rescue after a deleted WAL or index keeps trying to copy
/// every commit into the database file (see `Writer::rescue_after_loss`).
const RESCUE_FOR: Duration = Duration::from_secs(30);

/// Milliseconds since the Unix epoch by this machine's clock. For the embedded
/// store the database file lives on this machine, so this *is* the store's clock:
/// every process sharing the file reads the same one.
pub(crate) fn clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A unit of work for the writer.
pub(crate) trait WriteJob: Send {
    /// Runs inside a savepoint of the group's transaction; `now` is the group's
    /// store time. The job records what it changed in STEP_TOTALS in `totals`,
    /// which the writer keeps only if the job succeeds. An error rolls back this
    /// job only.
    fn run(&mut self, conn: &Connection, now: i64, totals: &mut Totals) -> Result<(), StoreError>;
    /// Called after the transaction ended: `commit` is its outcome.
    fn reply(self: Box<Self>, commit: Result<(), StoreError>);
    /// Background work (pruning) runs in a transaction of its own, only when no
    /// other job is queued: see [`Writer::write_background`].
    fn background(&self) -> bool;
    /// A background job that yields: interrupted (and rolled back) as soon as
    /// another job is sent. See [`Writer::write_background`].
    fn yields(&self) -> bool;
    /// A job run alone, outside any transaction (a checkpoint: SQLite refuses
    /// one inside a transaction), ahead of queued writes. See
    /// [`Writer::checkpoint_blocking`].
    fn bare(&self) -> bool;
}

/// The error message a yielding job is answered with when it was interrupted
/// because another job was sent: nothing it did was kept.
pub(crate) const YIELDED: &str = "yielded to a write";

/// True when `e` is a yielding job's answer for having been interrupted.
pub(crate) fn yielded(e: &StoreError) -> bool {
    e.kind == fleet_q_actors::StoreErrorKind::Transient && e.message == YIELDED
}

/// Shared by the handles and the writer thread: lets a background job yield
/// to writes sent while it runs.
///
/// Why: a write that arrives while a prune slice runs used to wait for the
/// whole slice, and that wait was most of the submit p99 while pruning
/// (BENCHMARKS.md, History). Now SQLite's progress handler, called every
/// [`YIELD_CHECK_OPS`] VM instructions of the writer's statements, interrupts a
/// yielding job the moment a foreground job has been sent: the job's statement
/// and transaction roll back, the write runs at once, and the job is answered
/// [`YIELDED`] (its caller retries it, smaller). Only a yielding job's own
/// statements are ever interrupted: the handler is armed just around its
/// `run`, never during a commit or another job.
#[derive(Default)]
struct YieldState {
    /// Foreground jobs sent and not yet taken by the writer. Counted before
    /// the send and uncounted when the writer takes the job, so it may read
    /// one high for an instant (a slice yields needlessly), never low while
    /// a job waits.
    sent: AtomicIsize,
    /// Set by the writer while a yielding job runs.
    armed: AtomicBool,
}

/// How many SQLite VM instructions run between two looks at [`YieldState`]:
/// a few microseconds of work, and a relaxed atomic load per look.
const YIELD_CHECK_OPS: i32 = 256;

/// Uncounts a foreground job if its send did not complete (the channel closed,
/// or the caller stopped waiting for room in it).
struct SentGuard<'a> {
    state: &'a YieldState,
    taken: bool,
}

impl Drop for SentGuard<'_> {
    fn drop(&mut self) {
        if !self.taken {
            self.state.sent.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

struct Job<T, F> {
    work: Option<F>,
    out: Option<Result<T, StoreError>>,
    tx: oneshot::Sender<Result<T, StoreError>>,
    background: bool,
    yields: bool,
    bare: bool,
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: FnOnce(&Connection, i64, &mut Totals) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection, now: i64, totals: &mut Totals) -> Result<(), StoreError> {
        let work = self.work.take().expect("a job runs once");
        let r = work(conn, now, totals);
        let failed = r.as_ref().err().cloned();
        self.out = Some(r);
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn background(&self) -> bool {
        self.background
    }

    fn yields(&self) -> bool {
        self.yields
    }

    fn bare(&self) -> bool {
        self.bare
    }

    fn reply(self: Box<Self>, commit: Result<(), StoreError>) {
        let answer = match (commit, self.out) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(out)) => out,
            (Ok(()), None) => Err(StoreError::fatal("write", "job did not run")),
        };
        // The caller may have gone away (timeout, shutdown): nothing to tell.
        let _ = self.tx.send(answer);
    }
}

/// The handle async code uses to submit writes.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Box<dyn WriteJob>>,
    identity: Arc<super::identity::FileIdentity>,
    yielding: Arc<YieldState>,
}

impl Writer {
    /// Starts the writer thread on `conn`. The thread ends when every handle is gone.
    pub(crate) fn start(
        mut conn: Connection,
        commits: Arc<AtomicU64>,
        queue: usize,
        identity: Arc<super::identity::FileIdentity>,
    ) -> Result<Writer, StoreError> {
        let yielding = Arc::new(YieldState::default());
        let state = yielding.clone();
        conn.progress_handler(
            YIELD_CHECK_OPS,
            Some(move || {
                state.armed.load(Ordering::Relaxed) && state.sent.load(Ordering::Relaxed) > 0
            }),
        )
        .map_err(|e| map_err("open", e))?;
        let (tx, rx) = mpsc::channel(queue);
        let state = yielding.clone();
        std::thread::Builder::new()
            .name("fleet-q-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, commits, &state))
            .expect("spawn the SQLite writer thread");
        Ok(Writer {
            tx,
            identity,
            yielding,
        })
    }

    /// Runs `work` in the next group transaction and returns its result once the
    /// transaction committed. Refused once the database file was deleted or
    /// replaced (checked before every heartbeat and submit, and at most every
    /// [`super::identity::RECHECK_MS`] before other writes).
    pub(crate) async fn write<T, F>(&self, op: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, i64) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_counted(op, move |c, now, _| work(c, now)).await
    }

    /// [`Writer::write`] for work that adds or removes rows, or moves them into
    /// or out of a status STEP_TOTALS counts: it records those changes in the
    /// [`Totals`] it is given, and the writer applies the group's sum in the same
    /// transaction, once per step type, just before the commit.
    pub(crate) async fn write_counted<T, F>(
        &self,
        op: &'static str,
        work: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, i64, &mut Totals) -> Result<T, StoreError> + Send + 'static,
    {
        self.send(op, work, false, false).await
    }

    /// [`Writer::write_counted`] for background work (pruning): the job waits
    /// until no other job is queued and runs alone in its transaction, so a
    /// submit or claim never shares a commit with it.
    ///
    /// With `yields`, a write sent while the job runs interrupts it within a
    /// few microseconds: its transaction rolls back and it is answered with an
    /// error [`yielded`] recognises, so the write waits for no more than that
    /// (and for a commit already under way), however long the job would have
    /// run; the caller decides how to retry (the pruner halves its slice).
    /// Without, a write waits for the job to end: keep such jobs short (a
    /// fraction of a millisecond). Either way `work` must leave no effect
    /// outside the transaction.
    pub(crate) async fn write_background<T, F>(
        &self,
        op: &'static str,
        yields: bool,
        work: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, i64, &mut Totals) -> Result<T, StoreError> + Send + 'static,
    {
        self.send(op, work, true, yields).await
    }

    /// Runs a `PASSIVE` checkpoint on the writer's own connection, alone and
    /// outside any transaction, before the writer's next group (however many
    /// writes are queued), and waits for it: the
    /// checkpointer's hand-off that lets the WAL restart (see
    /// [`super::checkpoint`]). Returns what the pass found.
    /// Blocks the calling thread: call it from a plain thread, never from
    /// async code.
    pub(crate) fn checkpoint_blocking(&self) -> Result<super::checkpoint::Pass, StoreError> {
        let op = "wal_checkpoint";
        let (tx, rx) = oneshot::channel();
        let job = Box::new(Job {
            work: Some(|c: &Connection, _: i64, _: &mut Totals| {
                super::checkpoint::passive(c).map_err(|e| map_err(op, e))
            }),
            out: None,
            tx,
            background: true,
            yields: false,
            bare: true,
        });
        self.tx
            .blocking_send(job)
            .map_err(|_| StoreError::fatal(op, "the SQLite writer has stopped"))?;
        rx.blocking_recv()
            .map_err(|_| StoreError::fatal(op, "the SQLite writer dropped the request"))?
    }

    /// After the WAL or its index was deleted (see [`super::identity`]): once,
    /// on a thread of its own, checkpoints every committed frame into the
    /// database file through the writer's connection, which still holds the
    /// deleted files, so a restart loses nothing.
    ///
    /// A pass can fall short: the checkpointer's helper may be mid-pass when
    /// the loss is found (the pass is *busy*; the checkpointer starts none
    /// after a loss), or a reader may still hold an old snapshot. It is tried
    /// again, with pauses from 10 ms doubling to 1 s, for up to
    /// [`RESCUE_FOR`]; each try is one `PASSIVE` checkpoint, which blocks no
    /// reader (writes are refused by then).
    fn rescue_after_loss(&self) {
        if !self.identity.take_rescue() {
            return;
        }
        let writer = self.clone();
        let spawned = std::thread::Builder::new()
            .name("fleet-q-sqlite-rescue".into())
            .spawn(move || {
                let deadline = Instant::now() + RESCUE_FOR;
                let mut pause = Duration::from_millis(10);
                loop {
                    let pass = writer.checkpoint_blocking();
                    match pass {
                        Ok(p) if p.complete() => {
                            tracing::warn!(
                                frames = p.log,
                                "every commit in the deleted WAL is now in the database file: \
                                 restart the pod"
                            );
                            return;
                        }
                        Ok(p) if Instant::now() >= deadline => {
                            tracing::error!(
                                frames = p.log,
                                checkpointed = p.done,
                                busy = p.busy,
                                "not every commit in the deleted WAL could be copied into the \
                                 database file"
                            );
                            return;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "the rescue checkpoint failed");
                            return;
                        }
                    }
                    // A back-off between checkpoint tries, not a wait for a
                    // test: the pass that held the lock, or the reader, ends
                    // on its own.
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the rescue checkpoint");
        }
    }

    async fn send<T, F>(
        &self,
        op: &'static str,
        work: F,
        background: bool,
        yields: bool,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, i64, &mut Totals) -> Result<T, StoreError> + Send + 'static,
    {
        if let Err(e) = self
            .identity
            .check(op, matches!(op, "pod_heartbeat" | "steps_insert"))
        {
            self.rescue_after_loss();
            return Err(e);
        }
        let (tx, rx) = oneshot::channel();
        let job = Box::new(Job {
            work: Some(work),
            out: None,
            tx,
            background,
            yields,
            bare: false,
        });
        // A foreground job is counted before it is sent, so a yielding job
        // running meanwhile steps aside for it.
        let mut guard = (!background).then(|| {
            self.yielding.sent.fetch_add(1, Ordering::Relaxed);
            SentGuard {
                state: &self.yielding,
                taken: false,
            }
        });
        self.tx
            .send(job)
            .await
            .map_err(|_| StoreError::fatal(op, "the SQLite writer has stopped"))?;
        if let Some(g) = guard.as_mut() {
            g.taken = true; // the writer uncounts it when it takes it
        }
        rx.await
            .map_err(|_| StoreError::fatal(op, "the SQLite writer dropped the request"))?
    }
}

fn writer_loop(
    conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn WriteJob>>,
    commits: Arc<AtomicU64>,
    yielding: &YieldState,
) {
    let mut group: Vec<Box<dyn WriteJob>> = Vec::with_capacity(MAX_GROUP);
    let mut background: VecDeque<Box<dyn WriteJob>> = VecDeque::new();
    loop {
        // With background work pending, look at the queue without waiting.
        let first = if background.is_empty() {
            match next_job(&mut rx) {
                Some(job) => Some(job),
                None => break, // every handle is gone and nothing is left
            }
        } else {
            rx.try_recv().ok()
        };
        let mut take = |job: Box<dyn WriteJob>, group: &mut Vec<Box<dyn WriteJob>>| {
            if job.background() {
                background.push_back(job);
            } else {
                yielding.sent.fetch_sub(1, Ordering::Relaxed);
                group.push(job);
            }
        };
        if let Some(job) = first {
            take(job, &mut group);
        }
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => take(job, &mut group),
                Err(_) => break,
            }
        }
        // A checkpoint hand-off runs first, alone: it is rare (once per
        // `wal_restart_bytes` of WAL) and must not starve behind writes that
        // never pause, since those are what it is for.
        if let Some(i) = background.iter().position(|job| job.bare()) {
            let mut alone = vec![background.remove(i).expect("found above")];
            let done = run_group(&conn, &mut alone, yielding);
            for job in alone {
                job.reply(done.clone());
            }
        }
        // Foreground jobs first, together; a background job only alone.
        if group.is_empty() {
            match background.pop_front() {
                Some(job) => group.push(job),
                None => continue,
            }
        }
        let commit = run_group(&conn, &mut group, yielding);
        commits.fetch_add(1, Ordering::Relaxed);
        for job in group.drain(..) {
            job.reply(commit.clone());
        }
    }
}

/// How long the writer polls for the next job before it parks.
///
/// Why: callers usually send their next write within microseconds of the last
/// answer (claim after insert, finish after claim, the next submit batch), and
/// waking a parked thread is slow on virtual machines: measured here, an empty
/// write round trip took ~110 µs when the writer parked at once and ~30 µs with
/// this poll, and the insert+claim+complete pipeline went from ~55k to ~73k
/// steps/s. The cost is bounded: at most this much CPU after each group, nothing
/// while the pod is idle.
const POLL_BEFORE_PARK: Duration = Duration::from_micros(200);

fn next_job(rx: &mut mpsc::Receiver<Box<dyn WriteJob>>) -> Option<Box<dyn WriteJob>> {
    let until = Instant::now() + POLL_BEFORE_PARK;
    loop {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) if Instant::now() < until => {
                std::hint::spin_loop()
            }
            Err(mpsc::error::TryRecvError::Empty) => return rx.blocking_recv(),
        }
    }
}

fn run_group(
    conn: &Connection,
    group: &mut [Box<dyn WriteJob>],
    yielding: &YieldState,
) -> Result<(), StoreError> {
    if let [job] = group {
        if job.bare() {
            // Outside any transaction; its own result is its answer.
            let _ = job.run(conn, clock_ms(), &mut Totals::default());
            return Ok(());
        }
    }
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| map_err("begin", e))?;
    // Read the clock after taking the write lock: transactions from every process
    // then see non-decreasing store time in commit order.
    let now = clock_ms();
    let single = group.len() == 1;
    let mut totals = Totals::default();
    for job in group.iter_mut() {
        let mut mine = Totals::default();
        if single {
            // One job: the transaction itself is its savepoint. A yielding
            // job (always alone: it is background work) may be interrupted
            // only while it runs, never in the commit below.
            let arm = job.yields();
            if arm {
                yielding.armed.store(true, Ordering::Relaxed);
            }
            let ran = job.run(conn, now, &mut mine);
            if arm {
                yielding.armed.store(false, Ordering::Relaxed);
            }
            if ran.is_err() {
                let _ = conn.execute_batch("ROLLBACK");
                return Ok(()); // the job's own error is its answer
            }
            totals.merge(mine);
            continue;
        }
        if let Err(e) = conn.execute_batch("SAVEPOINT job") {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(map_err("savepoint", e));
        }
        let ok = job.run(conn, now, &mut mine).is_ok();
        let end = if ok {
            totals.merge(mine);
            "RELEASE job"
        } else {
            "ROLLBACK TO job; RELEASE job"
        };
        if let Err(e) = conn.execute_batch(end) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(map_err("savepoint", e));
        }
    }
    if let Err(e) = totals.apply(conn) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e);
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(map_err("commit", e))
        }
    }
}

#[cfg(test)]
mod tests;
