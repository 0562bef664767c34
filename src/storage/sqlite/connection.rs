//! Opening the file (WAL, pragmas, the writer and checkpoint threads), the
//! reader pool, and statement counting by each connection.

use super::*;

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and starts its writer.
    /// Call [`Store::schema_init`] before use.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::fatal("open", format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let mut conn = Connection::open(&path).map_err(|e| map_err("open", e))?;
        // Multi-row statements come in up to eight shapes per operation.
        conn.set_prepared_statement_cache_capacity(64);
        conn.busy_timeout(options.busy_timeout)
            .map_err(|e| map_err("open", e))?;
        // journal_mode needs the write lock briefly; the busy timeout covers races
        // between processes opening the same new file.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| map_err("open", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::fatal(
                "open",
                format!(
                    "{} does not support WAL (journal mode {mode})",
                    path.display()
                ),
            ));
        }
        // temp_store: RETURNING and multi-row VALUES materialise small ephemeral
        // tables; keep them in memory. cache_size: 16 MiB of pages for the writer.
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF; \
             PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16384;",
        )
        .map_err(|e| map_err("open", e))?;
        let statements = Arc::new(AtomicU64::new(0));
        // A first read opens the WAL and its index (creating them).
        first_read(&conn).map_err(|e| map_err("open", e))?;
        // Checkpoints run on their own thread (see [`checkpoint`]); if its
        // connection cannot be opened, the writer keeps SQLite's automatic
        // checkpoints. A restarted WAL is cut back to WAL_LIMIT_BYTES (or the
        // restart threshold, if lower).
        let commits = Arc::new(AtomicU64::new(0));
        let open_checkpoint = || {
            Connection::open(&path)
                .and_then(|c| c.busy_timeout(options.busy_timeout).map(|()| c))
                .and_then(|c| first_read(&c).map(|()| c))
        };
        // One connection for the checkpointer's thread, one for its helper.
        let checkpoint_conn = open_checkpoint()
            .and_then(|c| open_checkpoint().map(|idle| (c, idle)))
            .ok();
        // The reader pool's connections, opened now (see [`ReaderPool`]).
        let readers = (0..options.readers.max(1))
            .map(|_| open_reader(&path, options.busy_timeout, &statements))
            .collect::<Result<Vec<_>, _>>()?;
        // Every connection kept from now on has opened the WAL and its index
        // (each at its first read, by path): the identity records all three
        // files only now, so no kept connection opens them after it. One that
        // did would create a new, empty WAL if the old one had been deleted
        // meanwhile, which withholds the rescue (see [`identity`]).
        let identity = Arc::new(identity::FileIdentity::of(&path));
        if checkpoint_conn.is_some() {
            conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
                .map_err(|e| map_err("open", e))?;
        }
        conn.query_row(
            &format!(
                "PRAGMA journal_size_limit = {}",
                checkpoint::wal_limit(options.wal_restart_bytes)
            ),
            [],
            |_| Ok(()),
        )
        .map_err(|e| map_err("open", e))?;
        count_statements(&mut conn, statements.clone());
        let writer = Writer::start(
            conn,
            commits.clone(),
            options.queue.max(1),
            identity.clone(),
        )?;
        let checkpointer = match checkpoint_conn {
            Some((c, idle)) => Some(
                checkpoint::Checkpointer::start(
                    c,
                    idle,
                    commits,
                    writer.clone(),
                    options.wal_restart_bytes,
                    identity.clone(),
                )
                .map_err(|e| {
                    StoreError::fatal("open", format!("start the checkpoint thread: {e}"))
                })?,
            ),
            None => None,
        };
        Ok(SqliteStore {
            claim_turn: AtomicUsize::new(0),
            prune_size: AtomicU64::new(prune::SLICE_MAX),
            known_queues: Arc::new(Mutex::new(HashSet::new())),
            _checkpointer: checkpointer,
            readers: Arc::new(ReaderPool {
                path: path.clone(),
                busy_timeout: options.busy_timeout,
                max_idle: options.readers.max(1),
                idle: Mutex::new(readers),
                statements: statements.clone(),
                identity,
            }),
            path,
            writer,
            statements,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) async fn read<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, i64) -> rusqlite::Result<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let r = f(&conn, clock_ms()).map_err(|e| map_err(op, e));
            pool.give_back(conn);
            r
        })
        .await
        .map_err(|e| StoreError::fatal(op, format!("read task failed: {e}")))?
    }
}

/// A read that opens `conn`'s WAL and index (SQLite opens them, by path, at a
/// connection's first read).
fn first_read(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|_| ())
}

/// A read-only connection for the reader pool, its WAL open.
fn open_reader(
    path: &Path,
    busy_timeout: Duration,
    statements: &Arc<AtomicU64>,
) -> Result<Connection, StoreError> {
    let mut c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| map_err("open", e))?;
    c.busy_timeout(busy_timeout)
        .map_err(|e| map_err("open", e))?;
    c.execute_batch("PRAGMA query_only = ON")
        .map_err(|e| map_err("open", e))?;
    first_read(&c).map_err(|e| map_err("open", e))?;
    count_statements(&mut c, statements.clone());
    Ok(c)
}

/// Read connections: `max_idle` of them are opened with the store and kept;
/// a read that finds none idle (more reads at once than that) opens one more
/// and closes it after. Opening one is the only time the pod opens the
/// database's files after the store is open, so it is checked first (see
/// [`identity`]); a deletion in the microseconds between that check and the
/// new connection's first read can still create a new WAL. A second check
/// right after the open sees it as a replaced file, which refuses the read and
/// withholds the rescue rather than copy into a database another connection
/// may be using.
pub(super) struct ReaderPool {
    pub(super) path: PathBuf,
    pub(super) busy_timeout: Duration,
    pub(super) max_idle: usize,
    pub(super) idle: Mutex<Vec<Connection>>,
    pub(super) statements: Arc<AtomicU64>,
    /// Checked before a new connection opens: one opened after the WAL was
    /// deleted would create a new, empty one (see [`identity`]).
    pub(super) identity: Arc<identity::FileIdentity>,
}

impl ReaderPool {
    pub(super) fn take(&self) -> Result<Connection, StoreError> {
        if let Some(c) = self.idle.lock().expect("reader pool lock").pop() {
            return Ok(c);
        }
        self.identity.check_before_open()?;
        let c = open_reader(&self.path, self.busy_timeout, &self.statements)?;
        // Checked again once its WAL is open, so a WAL it created in that
        // window is seen at once, not at the writer's next check.
        self.identity.check_before_open()?;
        Ok(c)
    }

    pub(super) fn give_back(&self, c: Connection) {
        let mut idle = self.idle.lock().expect("reader pool lock");
        if idle.len() < self.max_idle {
            idle.push(c);
        }
    }
}

/// Counts every statement `conn` runs into `statements`, from SQLite's own
/// trace hook (one `SQLITE_TRACE_STMT` event as each statement starts), so no
/// call site counts by hand and none can be missed. Installed after a
/// connection's setup pragmas, which are not counted. (Not the profile event:
/// it times every statement, and cost the insert+claim+complete pipeline
/// 20-30 % in `cargo bench --bench sqlite_store`; the start event cost nothing
/// measurable.)
pub(super) fn count_statements(conn: &mut Connection, statements: Arc<AtomicU64>) {
    conn.trace_v2(
        rusqlite::trace::TraceEventCodes::SQLITE_TRACE_STMT,
        Some(move |_: rusqlite::trace::TraceEvent<'_>| {
            statements.fetch_add(1, Ordering::Relaxed);
        }),
    )
    .ok();
}
