//! Finding steps by what people search for, at a cost that does not grow with
//! history: [`StepFilter`], [`Store::steps_search`] and the bulk actions over
//! what a search found.
//!
//! # The bounded window
//! A search walks steps newest first (step ids are UUIDv7, so id order is
//! creation order) from a cursor, and examines at most
//! [`SearchParams::scan_limit`] candidate rows per call, however few of them
//! match. The candidates come from the narrowest index the filter allows:
//! - an id or an idempotency key: that one row;
//! - status `pending` or `claimed`: the live index (live rows only);
//! - status `failed`: the failed index;
//! - otherwise every row, by id.
//!
//! The other filters (type, priority, created range, text) are tested on those
//! candidates. A page therefore costs at most `scan_limit` rows read, never a
//! scan of the table: a filter that matches nothing in the window returns an
//! empty page with a cursor ([`SearchPage::next`]) to look further back, and the
//! caller says "more" instead of a total.
//!
//! [`Store::steps_search`]: crate::Store::steps_search

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::step::{Step, StepId, StepStatus};

/// Longest text a filter may search for (bytes).
pub const MAX_SEARCH_TEXT: usize = 200;

/// Most candidate rows one search call may examine.
pub const MAX_SCAN_LIMIT: u32 = 100_000;

/// What to look for; every field is optional and they all must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepFilter {
    /// Exactly this status.
    pub status: Option<StepStatus>,
    /// Exactly this step type.
    pub step_type: Option<String>,
    /// Exactly this priority.
    pub priority: Option<i32>,
    /// Exactly this idempotency key.
    pub idempotency_key: Option<String>,
    /// This step.
    pub step_id: Option<StepId>,
    /// Created at or after (store time).
    pub created_from: Option<DateTime<Utc>>,
    /// Created before (store time).
    pub created_to: Option<DateTime<Utc>>,
    /// Appears in the payload (type, args, metadata as JSON text) or the last
    /// error; case-sensitive substring.
    pub text: Option<String>,
    /// In this queue.
    pub queue: Option<String>,
}

impl StepFilter {
    /// Every problem with this filter, one line each (empty: usable).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(t) = &self.text {
            if t.is_empty() || t.len() > MAX_SEARCH_TEXT {
                p.push(format!("text must be 1 to {MAX_SEARCH_TEXT} bytes"));
            }
            if t.chars().any(char::is_control) {
                p.push("text must not contain control characters".into());
            }
        }
        if let (Some(a), Some(b)) = (self.created_from, self.created_to) {
            if b <= a {
                p.push("created_to must be after created_from".into());
            }
        }
        if self.step_type.as_ref().is_some_and(|t| t.is_empty()) {
            p.push("type must not be empty".into());
        }
        if let Some(why) = self.queue.as_deref().and_then(crate::queue::name_problem) {
            p.push(format!("queue {why}"));
        }
        if self.idempotency_key.as_ref().is_some_and(|k| k.is_empty()) {
            p.push("idempotency_key must not be empty".into());
        }
        p
    }

    /// True when `step` matches every field (the reference the backends'
    /// queries must agree with; also used on single-row lookups).
    pub fn matches(&self, step: &Step) -> bool {
        let text_hit = |t: &str| {
            step.payload.to_json().contains(t)
                || step.last_error.as_deref().is_some_and(|e| e.contains(t))
        };
        self.status.is_none_or(|s| step.status == s)
            && self
                .step_type
                .as_deref()
                .is_none_or(|t| step.step_type() == t)
            && self.priority.is_none_or(|p| step.priority == p)
            && self
                .idempotency_key
                .as_deref()
                .is_none_or(|k| step.idempotency_key.as_deref() == Some(k))
            && self.step_id.is_none_or(|id| step.step_id == id)
            && self.created_from.is_none_or(|t| step.created_ts >= t)
            && self.created_to.is_none_or(|t| step.created_ts < t)
            && self.text.as_deref().is_none_or(text_hit)
            && self.queue.as_deref().is_none_or(|q| step.queue == q)
    }
}

/// Parameters of [`crate::Store::steps_search`].
#[derive(Clone, Debug, PartialEq)]
pub struct SearchParams {
    /// What to look for.
    pub filter: StepFilter,
    /// Only steps older than this one (by id): the cursor of the previous page.
    pub before: Option<StepId>,
    /// At most this many matches.
    pub limit: u32,
    /// At most this many candidate rows examined (see the module docs).
    pub scan_limit: u32,
}

/// How far a step's id time (minted by the submitting pod, before any retry
/// of the submit) may be from its `created_ts` (store time, at the insert):
/// the created range narrows the ids examined by this much more than it says.
pub const ID_TIME_SLACK: chrono::Duration = chrono::Duration::hours(1);

impl SearchParams {
    /// The ids a search examines: below `.0` (exclusive) and from `.1`
    /// (inclusive), from the cursor and the created range (widened by
    /// [`ID_TIME_SLACK`]), so a search of an old range starts there instead of
    /// walking every newer row.
    pub fn id_range(&self) -> (Option<StepId>, Option<StepId>) {
        let to = self
            .filter
            .created_to
            .map(|t| StepId::floor_at((t + ID_TIME_SLACK).timestamp_millis()));
        let upper = match (self.before, to) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let lower = self
            .filter
            .created_from
            .map(|t| StepId::floor_at((t - ID_TIME_SLACK).timestamp_millis()));
        (upper, lower)
    }
}

/// One page of a search, newest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SearchPage {
    /// The matches, newest first.
    pub steps: Vec<Step>,
    /// Where the next page starts (pass it as [`SearchParams::before`]); `None`
    /// when nothing older is left to examine.
    pub next: Option<StepId>,
    /// Candidate rows examined.
    pub scanned: u64,
}

/// What a bulk action does to each step it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BulkAction {
    /// Failed steps go back to pending with a fresh retry budget.
    Retry,
    /// Pending steps are cancelled.
    Cancel,
}

impl BulkAction {
    /// The status a step must have for this action to change it.
    pub fn applies_to(self) -> StepStatus {
        match self {
            BulkAction::Retry => StepStatus::Failed,
            BulkAction::Cancel => StepStatus::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_filters_list_every_problem() {
        let f = StepFilter {
            text: Some(String::new()),
            created_from: Some(Utc::now()),
            created_to: Some(Utc::now() - chrono::Duration::seconds(1)),
            step_type: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(f.problems().len(), 3, "{:?}", f.problems());
        assert!(StepFilter::default().problems().is_empty());
    }
}
