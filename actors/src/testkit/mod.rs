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

/// A validated step of type `t` with no arguments.
pub fn step(t: &str) -> crate::step::NewStep {
    crate::step::NewStep::new(crate::step::StepSpec {
        step_type: t.into(),
        ..Default::default()
    })
    .expect("valid step")
}

/// `n` validated steps of type `t` with no arguments.
pub fn steps(t: &str, n: usize) -> Vec<crate::step::NewStep> {
    (0..n).map(|_| step(t)).collect()
}

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
///
/// The `@list` arm holds the one list of cases (`area::case`, the modules of
/// `testkit::cases`); it builds both the tests here and the engine's own
/// [`cases::registry`], through which the tests reach the (crate-private)
/// cases. A case missing from the list is dead code, which fails the build.
#[macro_export]
macro_rules! conformance_suite {
    ($open:path) => {
        $crate::conformance_suite!($open, skip = $crate::testkit::never_skip);
    };
    ($open:path, skip = $skip:path) => {
        $crate::conformance_suite!(@list (@tests $open, $skip));
    };
    (@list ($($head:tt)*)) => {
        $crate::conformance_suite!($($head)*;
            submit::payload_round_trip_is_byte_exact,
            submit::schema_init_twice,
            submit::insert_answers_in_order_with_store_times,
            submit::idempotency_key_dedupe_under_concurrent_submits,
            submit::store_rejects_nothing_valid_and_survives_hostile_strings,
            claim::exclusive_claims_with_concurrent_claimers,
            claim::claim_order_priority_then_age,
            claim::claim_respects_run_at,
            fencing::fencing_rejects_stale_pod_and_stale_attempt,
            fencing::complete_stores_result,
            fencing::a_success_clears_the_last_error,
            retry::retry_backoff_and_exact_max_retries,
            retry::terminal_failure_skips_retries,
            retry::release_spends_no_retry,
            recovery::orphans_found_for_down_and_unknown_pods_only,
            recovery::steps_held_lists_one_pods_claims,
            recovery::orphan_requeue_by_two_leaders_is_harmless,
            recovery::orphan_requeue_spends_retries_then_fails,
            recovery::a_new_incarnation_orphans_the_old_ones_claims,
            pods::heartbeat_keeps_birth_and_ages_by_store_time,
            pods::down_pod_is_not_revived_by_heartbeat,
            pods::mark_down_spares_fresh_pods,
            pods::eldest_live_pod_leads,
            pods::pods_are_judged_by_their_own_declared_threshold,
            admin::cancel_only_pending,
            admin::retry_failed_step,
            admin::failed_list_pages,
            admin::prune_deletes_only_old_finished_steps,
            admin::prune_chunks_step_over_live_rows,
            queues::queues_are_made_on_first_use_and_listed,
            queues::a_paused_queue_gives_no_steps,
            queues::max_concurrency_holds_across_claimers,
            queues::a_subset_claims_only_its_queues,
            queues::queues_share_a_claim_fairly,
            queues::a_rate_limited_queue_starts_what_its_bucket_allows,
            queues::a_dry_bucket_says_when_its_next_token_is_due,
            queues::queue_defaults_apply_to_steps_without_their_own,
            queues::pause_keeps_the_other_settings,
            queues::the_idle_probe_sees_live_work_only,
            schedules::schedules_are_stored_by_name,
            schedules::a_tick_fires_exactly_once,
            schedules::catch_up_policies_after_an_hour_down,
            schedules::overlap_skip_waits_for_the_previous_run,
            schedules::paused_schedules_wait_and_triggers_fire_once,
            search::search_finds_exactly_what_each_filter_matches,
            search::search_examines_a_bounded_window,
            search::bulk_changes_only_steps_in_the_right_status,
            stats::stats_stay_exact_through_every_transition,
            stats::stats_match_a_recount_after_random_transitions,
            stats::stats_count_by_status_priority_and_type,
        );
    };
    (@tests $open:path, $skip:path; $($area:ident :: $case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                if let Some(why) = $skip() {
                    eprintln!("skipped {}: {why}", stringify!($case));
                    return;
                }
                $crate::testkit::run_case($open, $crate::testkit::cases::registered(stringify!($case)));
            }
        )+
    };
    (@registry; $($area:ident :: $case:ident),+ $(,)?) => {
        /// Every case by name, in the suite's order.
        pub fn registry() -> Vec<(&'static str, Case)> {
            vec![$((stringify!($case), (|h| Box::pin($area::$case(h))) as Case)),+]
        }

        /// The case named `name` (the suite's tests call this).
        pub fn registered(name: &str) -> Case {
            registry()
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, c)| c)
                .unwrap_or_else(|| panic!("no conformance case {name}"))
        }
    };
}

#[cfg(test)]
mod tests {
    /// Every listed case is registered once, under a unique name.
    #[test]
    fn the_registry_holds_every_case_once() {
        let names: Vec<&str> = super::cases::registry().iter().map(|(n, _)| *n).collect();
        let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "a case is listed twice");
        assert!(names.len() >= 30, "{names:?}");
    }
}
