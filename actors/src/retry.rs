//! Retries of store calls: one policy, built once from settings, applied in one
//! layer.
//!
//! A failed store call is retried in exactly one place: [`RetryPolicy::run`],
//! which StorageActor wraps around every call it makes for the pod (and which
//! `fleet-q serve` uses for the one call made before the pod starts, the schema
//! check). Backends never resend a statement themselves: a transient failure
//! reaches the caller after one attempt, classified ([`StoreError::is_transient`],
//! [`StoreError::outcome_unknown`]). Two retry layers multiply: with the same
//! settings in the store and in the actor, one call could make 5 × 5 attempts and
//! wait the sum of both backoffs before the pod learned of an outage.
//!
//! **The budget.** Attempts that fail fast (a refused connection, a lock-wait
//! abort) are retried up to `max_attempts`; attempts that fail slowly are not
//! retried past the budget. A store that takes requests and never answers
//! fails each attempt only at its timeout (30 s by default on Snowflake), and
//! five of them held an HTTP client two and a half minutes before its 503. So
//! no retry starts once [`RetryPolicy::budget`] has passed since the first
//! attempt began, or would pass during the delay before it: a call lasts at
//! most the budget plus one attempt. An attempt in progress is never cut
//! short, so an error still means what the store's error said (a write whose
//! outcome is unknown stays unknown, never "probably not done").
//!
//! What a backend may still repeat is the *read-back* of a write it already sent
//! and tagged (a claim or a fenced update carries a fresh token, and the store
//! reads back which rows hold it): that read completes the one write, it does not
//! send it again, and without it a committed claim whose answer was lost would
//! never reach its claimer. A backend bounds it by a deadline.

use std::future::Future;
use std::time::Duration;

use crate::store::{Backoff, StoreError};

/// How a store call is retried: at most `max_attempts` attempts, transient
/// errors only, waiting [`Backoff::jittered`] between them, and none started
/// past the `budget`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (`FLEET_Q_DEFAULT_MAX_ATTEMPTS`,
    /// default 5). 1: no retry.
    pub max_attempts: u32,
    /// Delay before each retry (`FLEET_Q_DEFAULT_BASE_DELAY_MS`,
    /// `FLEET_Q_DEFAULT_MAX_DELAY_MS`; half of each delay is jitter).
    pub backoff: Backoff,
    /// No retry starts once this long has passed since the first attempt
    /// began (`FLEET_Q_DEFAULT_RETRY_BUDGET_SECONDS`, default 30 s).
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new(
            crate::defaults::STORE_MAX_ATTEMPTS,
            crate::defaults::BASE_DELAY,
            crate::defaults::MAX_DELAY,
        )
    }
}

impl RetryPolicy {
    /// `max_attempts` attempts, delays doubling from `base` up to `max`, each
    /// reduced at random by up to half so that pods retrying the same outage
    /// spread out.
    pub fn new(max_attempts: u32, base: Duration, max: Duration) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            backoff: Backoff {
                base,
                max,
                jitter: 0.5,
            },
            budget: crate::defaults::STORE_RETRY_BUDGET,
        }
    }

    /// This policy with a retry budget of `budget` (see the module docs).
    pub fn with_budget(self, budget: Duration) -> RetryPolicy {
        RetryPolicy { budget, ..self }
    }

    /// One attempt, no retry: for callers that report a failure rather than
    /// ride it out (`fleet-q check`, tests of a backend's own behaviour).
    pub fn once() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Adds a line to `problems` for each value this policy cannot run with
    /// (`what` names it).
    pub(crate) fn validate(&self, what: &str, problems: &mut Vec<String>) {
        if self.max_attempts == 0 {
            problems.push(format!("{what}: max_attempts must be at least 1"));
        }
        if self.backoff.base.is_zero() {
            problems.push(format!("{what}: base delay must be above zero"));
        }
        if self.budget.is_zero() {
            problems.push(format!("{what}: the retry budget must be above zero"));
        }
        self.backoff.validate(what, problems);
    }

    /// The wait after failed attempt number `attempt` (1-based), jittered by
    /// the uniform random `u` in `[0, 1)`.
    pub fn delay_after(&self, attempt: u32, u: f64) -> Duration {
        self.backoff.jittered(attempt.saturating_sub(1), u)
    }

    /// Runs `call` until it succeeds, fails with an error that is not
    /// transient, or has used `max_attempts` attempts; returns the last result.
    pub async fn run<T, F, Fut>(&self, op: &'static str, call: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.run_observed(op, call, |_| {}).await
    }

    /// [`Self::run`], handing every attempt's result to `observe` first (for
    /// per-attempt metrics and health).
    pub async fn run_observed<T, F, Fut, O>(
        &self,
        op: &'static str,
        mut call: F,
        mut observe: O,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
        O: FnMut(&Result<T, StoreError>),
    {
        let mut attempt = 0;
        let began = tokio::time::Instant::now();
        loop {
            attempt += 1;
            let r = call().await;
            observe(&r);
            match r {
                Err(e) if e.is_transient() && attempt < self.max_attempts.max(1) => {
                    let delay = self.delay_after(attempt, rand::random());
                    if began.elapsed() + delay >= self.budget {
                        tracing::warn!(op, attempt, budget_ms = self.budget.as_millis() as u64, error = %e, "store call failed; its retry budget is spent");
                        return Err(e);
                    }
                    tracing::debug!(op, attempt, delay_ms = delay.as_millis() as u64, error = %e, "transient store error; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    tracing::warn!(op, attempt, error = %e, "store call failed");
                    return Err(e);
                }
                ok => return ok,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn delays_double_up_to_the_cap_and_jitter_removes_at_most_half() {
        let p = RetryPolicy::new(5, Duration::from_millis(100), Duration::from_secs(1));
        for (attempt, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (9, 1000)] {
            let full = Duration::from_millis(full);
            assert_eq!(p.delay_after(attempt, 0.0), full, "attempt {attempt}");
            let least = p.delay_after(attempt, 0.999_999);
            assert!(
                least >= full / 2 && least <= full,
                "attempt {attempt}: {least:?}"
            );
        }
    }

    fn policy(attempts: u32) -> RetryPolicy {
        RetryPolicy::new(attempts, Duration::from_millis(1), Duration::from_millis(2))
    }

    #[tokio::test]
    async fn transient_errors_are_retried_up_to_the_attempt_limit() {
        let calls = AtomicU32::new(0);
        let seen = AtomicU32::new(0);
        let r: Result<(), _> = policy(3)
            .run_observed(
                "op",
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(StoreError::transient("op", "down"))
                },
                |_| {
                    seen.fetch_add(1, Ordering::SeqCst);
                },
            )
            .await;
        assert!(r.unwrap_err().is_transient());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(seen.load(Ordering::SeqCst), 3, "every attempt is observed");
    }

    #[tokio::test]
    async fn a_fatal_error_or_a_success_ends_the_call_at_once() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = policy(5)
            .run("op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(StoreError::fatal("op", "bad SQL"))
            })
            .await;
        assert!(!r.unwrap_err().is_transient());
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let r = policy(5)
            .run("op", || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 => Err(StoreError::transient("op", "blip")),
                    n => Ok(n),
                }
            })
            .await;
        assert_eq!(r.unwrap(), 1, "the second attempt's answer");
    }

    /// The attempts `p` makes of a call whose every attempt fails after
    /// `each` with an unknown outcome, and the error it returns.
    async fn attempts(p: &RetryPolicy, each: Duration) -> (u32, StoreError) {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = p
            .run("op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(each).await;
                Err(StoreError::transient("op", "no answer").with_unknown_outcome())
            })
            .await;
        (calls.load(Ordering::SeqCst), r.unwrap_err())
    }

    /// A store that fails each attempt only at its timeout (it takes the
    /// request and never answers) gets no retry once the budget is spent;
    /// one that fails fast gets every attempt. Paused time: the clock moves
    /// only when every task waits, so the counts are exact.
    #[tokio::test(start_paused = true)]
    async fn slow_failures_are_not_retried_past_the_budget() {
        let p = RetryPolicy::new(5, Duration::from_millis(100), Duration::from_secs(1))
            .with_budget(Duration::from_secs(30));
        let began = tokio::time::Instant::now();
        let (n, e) = attempts(&p, Duration::from_secs(20)).await;
        assert!(e.outcome_unknown(), "the last attempt's error, as it was");
        // 0–20 s, then a retry at ~20.1 s (inside the budget) to ~40.1 s:
        // none starts after that.
        assert_eq!(n, 2);
        let took = began.elapsed();
        assert!(
            took < Duration::from_secs(30) + Duration::from_secs(20),
            "at most the budget plus one attempt: {took:?}"
        );
        // A retry whose delay would end past the budget is not started either
        // (29.95 s, then a 50–100 ms delay).
        assert_eq!(attempts(&p, Duration::from_millis(29_950)).await.0, 1);
        assert_eq!(
            attempts(&p, Duration::ZERO).await.0,
            5,
            "fast failures use every attempt"
        );
    }

    #[test]
    fn zero_attempts_or_a_zero_delay_is_a_config_problem() {
        let mut problems = Vec::new();
        RetryPolicy::new(0, Duration::ZERO, Duration::ZERO)
            .with_budget(Duration::ZERO)
            .validate("storage", &mut problems);
        assert_eq!(problems.len(), 3, "{problems:?}");
        let mut problems = Vec::new();
        RetryPolicy::default().validate("storage", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }
}
