//! The store conformance suite: the same cases run against every backend.
//!
//! A backend's test file opens a fresh, isolated database per case and expands the
//! suite with [`conformance_suite!`](crate::conformance_suite):
//!
//! ```ignore
//! async fn open() -> fleet_q_actors::testkit::Harness { /* fresh store */ }
//! fleet_q_actors::conformance_suite!(open);
//! ```
//!
//! Each case gets a [`Harness`] with two handles on the same database (`a` and `b`),
//! as two pods in two processes would have. Any change to the contract or to a
//! backend extends this suite rather than adding a backend-only test. A backend that
//! lacks a feature declares it in [`Harness::lacks`]; the affected case prints the
//! reason and returns without asserting, never faking the feature.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use crate::store::Store;

pub mod cases;

/// Outcomes for `claimed`, for tests that drive a store by hand: the first
/// `failing` fail for good, the rest complete.
pub fn finishes(claimed: &[crate::step::Step], failing: usize) -> crate::store::FinishParams {
    use crate::store::{Finish, Lease, Outcome};
    let finishes = claimed
        .iter()
        .enumerate()
        .map(|(i, s)| Finish {
            lease: Lease::of(s).expect("a claimed step"),
            outcome: if i < failing {
                Outcome::Fail {
                    error: "no".into(),
                    retryable: false,
                }
            } else {
                Outcome::Complete {
                    result: serde_json::Value::Null,
                }
            },
        })
        .collect();
    crate::store::FinishParams {
        finishes,
        backoff: Default::default(),
    }
}

/// What a case needs: two handles on one fresh database.
pub struct Harness {
    /// The first handle ("pod A").
    pub a: Arc<dyn Store>,
    /// A second, independent handle on the same database ("pod B", as another
    /// process would open it).
    pub b: Arc<dyn Store>,
    /// Kept alive for the case's duration (temp dirs, emulator processes).
    pub guard: Box<dyn Any + Send>,
    /// Features this backend lacks, each with the reason; cases needing one skip.
    pub lacks: Vec<(&'static str, &'static str)>,
}

impl Harness {
    /// True (and the reason printed) when the backend lacks `feature`.
    pub fn skip_without(&self, case: &str, feature: &str) -> bool {
        match self.lacks.iter().find(|(f, _)| *f == feature) {
            Some((_, why)) => {
                eprintln!("skipped {case}: backend lacks {feature}: {why}");
                true
            }
            None => false,
        }
    }
}

/// The default skip check: never skip.
pub fn never_skip() -> Option<String> {
    None
}

/// Runs one case on a fresh multi-threaded runtime (cases use real concurrency).
pub fn run_case<O, OF, C, CF>(open: O, case: C)
where
    O: FnOnce() -> OF,
    OF: Future<Output = Harness>,
    C: FnOnce(Harness) -> CF,
    CF: Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("test runtime");
    rt.block_on(async move {
        let h = open().await;
        case(h).await;
    });
}

/// Expands the conformance suite into one `#[test]` per case, each calling `$open`
/// (an `async fn() -> Harness`) for a fresh database. With `skip = f`, a case
/// returns early (printing the reason) when `f()` gives one: only for a missing
/// prerequisite, never to hide a failure.
#[macro_export]
macro_rules! conformance_suite {
    ($open:path) => {
        $crate::conformance_suite!($open, skip = $crate::testkit::never_skip);
    };
    ($open:path, skip = $skip:path) => {
        $crate::conformance_suite!(@cases $open, $skip;
            payload_round_trip_is_byte_exact,
            schema_init_twice,
            insert_answers_in_order_with_store_times,
            exclusive_claims_with_concurrent_claimers,
            claim_order_priority_then_age,
            claim_respects_run_at,
            fencing_rejects_stale_pod_and_stale_attempt,
            complete_stores_result,
            retry_backoff_and_exact_max_retries,
            terminal_failure_skips_retries,
            release_spends_no_retry,
            orphans_found_for_down_and_unknown_pods_only,
            steps_held_lists_one_pods_claims,
            orphan_requeue_by_two_leaders_is_harmless,
            orphan_requeue_spends_retries_then_fails,
            heartbeat_keeps_birth_and_ages_by_store_time,
            down_pod_is_not_revived_by_heartbeat,
            mark_down_spares_fresh_pods,
            eldest_live_pod_leads,
            cancel_only_pending,
            retry_failed_step,
            failed_list_pages,
            idempotency_key_dedupe_under_concurrent_submits,
            prune_deletes_only_old_finished_steps,
            prune_chunks_step_over_live_rows,
            stats_count_by_status_priority_and_type,
            stats_stay_exact_through_every_transition,
            stats_match_a_recount_after_random_transitions,
            store_rejects_nothing_valid_and_survives_hostile_strings,
            pods_are_judged_by_their_own_declared_threshold,
            a_new_incarnation_orphans_the_old_ones_claims,
            a_success_clears_the_last_error
        );
    };
    (@cases $open:path, $skip:path; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                if let Some(why) = $skip() {
                    eprintln!("skipped {}: {why}", stringify!($case));
                    return;
                }
                $crate::testkit::run_case($open, $crate::testkit::cases::$case);
            }
        )+
    };
}

#[cfg(test)]
mod tests {
    /// Every case defined in `cases.rs` is in the suite's list, and every listed
    /// case exists: a case written but not registered would never run.
    #[test]
    fn every_defined_case_is_registered() {
        let cases = include_str!("cases.rs");
        let suite = include_str!("mod.rs");
        let list_start = suite.find("@cases $open, $skip;").expect("the case list");
        let list_end = list_start + suite[list_start..].find(");").expect("its end");
        let listed: std::collections::BTreeSet<&str> = suite[list_start..list_end]
            .lines()
            .skip(1)
            .map(|l| l.trim().trim_end_matches(','))
            .filter(|l| !l.is_empty())
            .collect();
        let defined: std::collections::BTreeSet<&str> = cases
            .lines()
            .filter_map(|l| l.strip_prefix("pub async fn "))
            .filter(|l| l.contains("(h: Harness)"))
            .filter_map(|l| l.split('(').next())
            .collect();
        assert!(defined.len() >= 25, "found the cases: {defined:?}");
        let unlisted: Vec<_> = defined.difference(&listed).collect();
        let missing: Vec<_> = listed.difference(&defined).collect();
        assert!(
            unlisted.is_empty(),
            "cases defined but never run: {unlisted:?}"
        );
        assert!(
            missing.is_empty(),
            "listed cases that do not exist: {missing:?}"
        );
    }
}
