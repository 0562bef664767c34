//! The session pool and one statement's life: the endpoint override, login and
//! session parameters, the per-call deadline, error classification and the
//! statement counts by operation. A statement is sent once: retries of failed
//! calls belong to the caller (see `fleet_q_actors::retry`).

use super::*;

/// Rewrites `https://{account}.snowflakecomputing.com` to the configured endpoint.
/// Only requests to the account's own host are rewritten: result chunks live on
/// cloud storage (their URLs name another host) and must be fetched from there.
pub(super) struct Endpoint {
    pub(super) account_host: String,
    pub(super) scheme: String,
    pub(super) host: String,
    pub(super) port: u16,
}

impl Endpoint {
    pub(super) fn rewrite(&self, url: &mut reqwest::Url) {
        if !url
            .host_str()
            .is_some_and(|h| h.eq_ignore_ascii_case(&self.account_host))
        {
            return;
        }
        let _ = url.set_scheme(&self.scheme);
        let _ = url.set_host(Some(&self.host));
        let _ = url.set_port(Some(self.port));
    }
}

#[async_trait]
impl reqwest_middleware::Middleware for Endpoint {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        self.rewrite(req.url_mut());
        next.run(req, extensions).await
    }
}

/// Codes meaning the server no longer knows the session (login again).
pub(super) const SESSION_LOST: [&str; 4] = ["390104", "390111", "390112", "390114"];

pub(super) fn session_lost(e: &SnowflakeApiError) -> bool {
    matches!(e, SnowflakeApiError::ApiError(code, _) if SESSION_LOST.contains(&code.as_str()))
}

/// True when the request surely never reached the server (no connection was
/// made), so resending it cannot run it twice.
pub(super) fn never_sent(e: &SnowflakeApiError) -> bool {
    use snowflake_api::connection::ConnectionError as C;
    match e {
        SnowflakeApiError::RequestError(C::RequestError(r)) => r.is_connect() || r.is_builder(),
        SnowflakeApiError::RequestError(C::RequestMiddlewareError(
            reqwest_middleware::Error::Reqwest(r),
        )) => r.is_connect() || r.is_builder(),
        SnowflakeApiError::RequestError(C::UrlParsing(_) | C::InvalidHeader(_)) => true,
        _ => false,
    }
}

/// True when `e` (a login error, whose type the client keeps private) was
/// caused by an I/O failure underneath: the connection was refused or reset.
fn transport_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = e.source();
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Classifies a client error: network, server and lock-wait failures are
/// transient; authentication and SQL errors are fatal.
pub(super) fn classify(op: &'static str, e: SnowflakeApiError) -> StoreError {
    use SnowflakeApiError as E;
    match &e {
        E::RequestError(_)
        | E::EmptyResponse
        | E::BrokenResponse
        | E::UnexpectedResponse
        | E::TokioTaskJoinError(_) => {
            let err = StoreError::transient(op, format!("Snowflake unavailable: {e}"));
            if never_sent(&e) {
                err
            } else {
                err.with_unknown_outcome()
            }
        }
        // 000625/000630: lock wait; 000604/000605: statement cancelled/timed out;
        // session lost or expired (a new session is made for the next statement).
        E::ApiError(code, _)
            if ["000625", "000630", "000604", "000605", "261000"].contains(&code.as_str())
                || SESSION_LOST.contains(&code.as_str()) =>
        {
            StoreError::transient(op, format!("Snowflake error {code}: {e}"))
        }
        // A login that never got an answer (refused, reset) is the network,
        // not the credentials: a pod starting during a blip retries it. A
        // login carries no side effects, so resending it is safe.
        E::AuthError(inner) if transport_failure(inner) => {
            StoreError::transient(op, format!("Snowflake unavailable at login: {e}"))
        }
        E::AuthError(_) => StoreError::fatal(op, format!("Snowflake authentication failed: {e}")),
        _ => StoreError::fatal(op, e.to_string()),
    }
}

/// One pooled session; `configured` once [`SnowflakeStore::session_parameters`]
/// ran on it (again after every re-login).
pub(super) struct Session {
    pub(super) api: SnowflakeApi,
    pub(super) configured: bool,
}

impl SnowflakeStore {
    /// Builds the session pool (sessions log in on their first statement).
    pub fn open(s: &SnowflakeOptions, read_back: Backoff) -> Result<SnowflakeStore, StoreError> {
        let key_pem = match (&s.password, &s.private_key, &s.private_key_path) {
            (Some(_), _, _) => None,
            (None, Some(k), _) => Some(k.expose().to_string()),
            (None, None, Some(path)) => Some(std::fs::read_to_string(path).map_err(|e| {
                StoreError::fatal(
                    "open",
                    format!("cannot read the private key {}: {e}", path.display()),
                )
            })?),
            (None, None, None) => {
                return Err(StoreError::fatal(
                    "open",
                    "no Snowflake password or private key configured",
                ))
            }
        };
        let mut store = SnowflakeStore {
            settings: s.clone(),
            key_pem,
            sessions: Vec::new(),
            free: tokio::sync::Semaphore::new(s.pool_size.max(1) as usize),
            next: AtomicUsize::new(0),
            statements: AtomicU64::new(0),
            by_op: std::sync::Mutex::new(BTreeMap::new()),
            timeout: s.connection_timeout,
            read_back,
            known_queues: std::sync::Mutex::new(std::collections::HashSet::new()),
        };
        for _ in 0..s.pool_size.max(1) {
            let api = store.session()?;
            store.sessions.push(tokio::sync::Mutex::new(Session {
                api,
                configured: false,
            }));
        }
        Ok(store)
    }

    /// A new session (it logs in on its first statement).
    pub(super) fn session(&self) -> Result<SnowflakeApi, StoreError> {
        let s = &self.settings;
        let http = reqwest::Client::builder()
            .connect_timeout(s.connection_timeout)
            .user_agent(concat!("fleet-q/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StoreError::fatal("open", e.to_string()))?;
        let mut client = reqwest_middleware::ClientBuilder::new(http);
        if let Some(host) = &s.host {
            client = client.with(Endpoint {
                account_host: format!("{}.snowflakecomputing.com", s.account),
                scheme: s.protocol.clone(),
                host: host.clone(),
                port: s.port,
            });
        }
        let auth_type = match (&s.password, &self.key_pem) {
            (Some(p), _) => AuthType::Password(PasswordArgs {
                password: p.expose().to_string(),
            }),
            (None, Some(pem)) => AuthType::Certificate(CertificateArgs {
                private_key_pem: pem.clone(),
            }),
            (None, None) => return Err(StoreError::fatal("open", "no Snowflake credentials")),
        };
        let auth = AuthArgs {
            account_identifier: s.account.clone(),
            warehouse: Some(s.warehouse.clone()),
            database: Some(s.database.clone()),
            schema: Some(s.schema.clone()),
            username: s.user.clone(),
            role: s.role.clone(),
            auth_type,
        };
        SnowflakeApiBuilder::new(auth)
            .with_client(client.build())
            .build()
            .map_err(|e| StoreError::fatal("open", e.to_string()))
    }

    /// The server-side limit, in whole seconds, on each statement's running time,
    /// on its time queued for the warehouse, and on its wait for a lock: below
    /// half the client's timeout, so by the time the client gives up on a
    /// statement the server has given up on it too (Snowflake's defaults would
    /// let a detached statement run, or wait for a lock, for hours).
    pub fn server_timeout_secs(&self) -> u64 {
        (self.timeout.as_secs() / 2).saturating_sub(1).max(1)
    }

    /// The longest a statement can live on the server after it was sent: queued
    /// plus running, plus a second of slack.
    pub(super) fn server_bound(&self) -> Duration {
        Duration::from_secs(2 * self.server_timeout_secs() + 1)
    }

    /// What every session sets before its first statement, so nothing an
    /// administrator set as a user or account default changes fleet-q's meaning:
    /// `AUTOCOMMIT` off would roll back every write when the session ends; the
    /// timestamp parameters change how `SYSDATE()` values and literals are read;
    /// the timeouts make the server give up before the client does.
    pub fn session_parameters(&self) -> Vec<(&'static str, String)> {
        let t = self.server_timeout_secs().to_string();
        vec![
            ("AUTOCOMMIT", "TRUE".into()),
            ("TIMEZONE", "'UTC'".into()),
            ("TIMESTAMP_INPUT_FORMAT", "'AUTO'".into()),
            ("TIMESTAMP_TYPE_MAPPING", "'TIMESTAMP_NTZ'".into()),
            ("QUOTED_IDENTIFIERS_IGNORE_CASE", "FALSE".into()),
            ("STATEMENT_TIMEOUT_IN_SECONDS", t.clone()),
            ("STATEMENT_QUEUED_TIMEOUT_IN_SECONDS", t.clone()),
            ("LOCK_TIMEOUT", t),
        ]
    }

    /// Runs one administrative statement outside the [`Store`] contract (`fleet-q
    /// check --smoke` creates and drops its scratch schema); returns the rows read.
    pub async fn admin(&self, sql_text: &str) -> Result<usize, StoreError> {
        Ok(self.exec("admin", sql_text).await?.len())
    }

    /// Columns of fleet-q's tables that carry a collation (`TABLE.COLUMN (collation)`):
    /// a `DEFAULT_DDL_COLLATION` set when the tables were created changes how
    /// step ids, statuses and keys compare. fleet-q expects none.
    pub async fn collated_columns(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .exec(
                "collated_columns",
                "SELECT table_name AS t, column_name AS c, collation_name AS k FROM information_schema.columns \
                 WHERE table_schema = CURRENT_SCHEMA() AND table_name IN ('STEP_TRACKER', 'POD_HEALTH') \
                 AND collation_name IS NOT NULL AND collation_name <> ''",
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                format!(
                    "{}.{} ({})",
                    r.text("t").unwrap_or_default(),
                    r.text("c").unwrap_or_default(),
                    r.text("k").unwrap_or_default()
                )
            })
            .collect())
    }

    /// [`Self::session_report`] as one line, `NAME=value` separated by spaces.
    pub async fn session_report_line(&self) -> Result<String, StoreError> {
        Ok(self
            .session_report()
            .await?
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "))
    }

    /// Reads back the session parameters fleet-q sets ([`Self::session_parameters`])
    /// with `SHOW PARAMETERS IN SESSION`: `(name, value)` for each, or an error
    /// naming every parameter whose value differs from the one set.
    pub async fn session_report(&self) -> Result<Vec<(String, String)>, StoreError> {
        let op = "session_report";
        let rows = self.exec(op, "SHOW PARAMETERS IN SESSION").await?;
        let mut seen: HashMap<String, String> = HashMap::new();
        for r in &rows {
            if let (Some(k), Some(v)) = (r.text("key"), r.text("value")) {
                seen.insert(k.to_ascii_uppercase(), v);
            }
        }
        let mut out = Vec::new();
        let mut wrong = Vec::new();
        for (name, want) in self.session_parameters() {
            let want = want.trim_matches('\'');
            match seen.get(name) {
                Some(v) if v.eq_ignore_ascii_case(want) => out.push((name.to_string(), v.clone())),
                Some(v) => wrong.push(format!("{name} is {v}, not {want}")),
                None => wrong.push(format!("{name} is not reported")),
            }
        }
        if wrong.is_empty() {
            Ok(out)
        } else {
            Err(StoreError::fatal(op, wrong.join("; ")))
        }
    }

    /// Runs one statement on a free session, once. A write whose outcome is
    /// unknown (no answer in time, a broken connection after sending) is
    /// reported only once the server's own timeouts have ended it
    /// ([`Self::server_bound`], counted from when the statement was sent, not
    /// from when its caller began waiting for a session): whoever acts next (the
    /// caller's retry, a claim reading back its token) must not meet the first
    /// copy still running.
    pub(super) async fn exec(&self, op: &'static str, sql: &str) -> Result<Vec<Row>, StoreError> {
        let read = sql.trim_start().starts_with("SELECT");
        let (permit, mut session) = self.free_session(op).await?;
        let sent = std::time::Instant::now();
        let r = self.run_on(&mut session, op, sql).await;
        // The session goes back to the pool before any wait below.
        drop(session);
        drop(permit);
        if let Err(e) = &r {
            if !read && e.outcome_unknown() {
                tokio::time::sleep(self.server_bound().saturating_sub(sent.elapsed())).await;
            }
        }
        r
    }

    /// Repeats `read` (never the write before it) on transient errors until it
    /// answers or [`READ_BACK_LIMIT`] has passed, waiting the store's read-back
    /// backoff between tries. For the read-back of a tagged write: the write was
    /// sent once, and what it did can only be learnt here; a caller resending
    /// the write would make a new token and could never recover the first
    /// one's rows.
    pub(super) async fn read_back<T, F, Fut>(
        &self,
        op: &'static str,
        mut read: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let deadline = std::time::Instant::now() + READ_BACK_LIMIT;
        let mut tries = 0;
        loop {
            match read().await {
                Err(e) if e.is_transient() && std::time::Instant::now() < deadline => {
                    let delay = self.read_back.jittered(tries, rand::random());
                    tries += 1;
                    tracing::warn!(op, error = %e, delay_ms = delay.as_millis() as u64, "read-back of a sent write failed; reading again");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    /// The first free session, configured first if it is new, with the pool
    /// permit that goes with it (drop the session first).
    ///
    /// When every session is busy the caller waits, in arrival order, for
    /// whichever frees first, and at most the client timeout: a server that
    /// takes requests and never answers holds each session for a timeout, and
    /// a caller queued behind the pool would otherwise wait a timeout for every
    /// caller ahead of it. It gets a transient error instead, with nothing
    /// sent (safe to retry at once), and the retry policy of its actor decides
    /// what happens next. So no statement call lasts longer than three client
    /// timeouts: the wait, the session's configuration and the statement.
    async fn free_session(
        &self,
        op: &'static str,
    ) -> Result<
        (
            tokio::sync::SemaphorePermit<'_>,
            tokio::sync::MutexGuard<'_, Session>,
        ),
        StoreError,
    > {
        let n = self.sessions.len();
        let permit = match tokio::time::timeout(self.timeout, self.free.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(StoreError::fatal(op, "the session pool is closed")),
            Err(_) => {
                return Err(StoreError::transient(
                    op,
                    format!(
                        "no free Snowflake session within {:?}: all {n} are busy \
                         (the server is slow or not answering); nothing was sent",
                        self.timeout
                    ),
                ))
            }
        };
        // Every caller holding a session holds a permit (dropped after its
        // session), so one of the `n` is free now.
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut guard = match (0..n).find_map(|i| self.sessions[(start + i) % n].try_lock().ok()) {
            Some(g) => g,
            None => self.sessions[start].lock().await,
        };
        if !guard.configured {
            let set: Vec<String> = self
                .session_parameters()
                .into_iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect();
            let stmt = format!("ALTER SESSION SET {}", set.join(", "));
            self.run_on(&mut guard, "session_init", &stmt)
                .await
                .map_err(|mut e| {
                    // The caller's statement itself was not sent.
                    e.outcome_unknown = false;
                    e
                })?;
            guard.configured = true;
        }
        Ok((permit, guard))
    }

    pub(super) async fn run_on(
        &self,
        session: &mut Session,
        op: &'static str,
        sql: &str,
    ) -> Result<Vec<Row>, StoreError> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        *self
            .by_op
            .lock()
            .expect("statement counts")
            .entry(op)
            .or_default() += 1;
        let r = tokio::time::timeout(self.timeout, session.api.exec(sql))
            .await
            .map_err(|_| {
                StoreError::transient(op, format!("no answer within {:?}", self.timeout))
                    .with_unknown_outcome()
            })?;
        match r {
            Ok(r) => decode(op, r),
            Err(e) => {
                if session_lost(&e) {
                    // The server dropped the session (restart, expiry): log in again
                    // on the next statement.
                    tracing::warn!(op, "Snowflake session lost; opening a new one");
                    *session = Session {
                        api: self.session()?,
                        configured: false,
                    };
                }
                Err(classify(op, e))
            }
        }
    }
}
