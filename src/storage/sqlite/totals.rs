//! STEP_TOTALS: per step type, how many rows STEP_TRACKER holds and how many of
//! them are `failed` and `cancelled`, kept exact in the transaction of every
//! change, so that statistics never count finished history.
//!
//! Why these three numbers: the hot path (claim, complete, retry with backoff,
//! release) moves rows only between `pending`, `claimed` and `completed`, and
//! none of those moves touches STEP_TOTALS. Live counts (`pending`, `claimed`)
//! are read through the live index, which holds only live rows, and
//! `completed = rows - pending - claimed - failed - cancelled`. What writes here
//! is rare or batched: inserts (+rows), terminal failures (+failed), cancels
//! (+cancelled), manual retries (-failed) and prunes (-rows and whatever status
//! the pruned rows had).
//!
//! The table is created with STEP_TRACKER (`SCHEMA` in the parent module).
//!
//! Two designs were measured and rejected before this one (BENCHMARKS.md):
//! triggers on STEP_TRACKER and an upsert per status in every finish cost
//! completes 20–65 % of their throughput. Here, a group of write jobs that
//! changes the totals applies their sum once per step type just before its
//! commit (see [`super::writer`]), so even single-step submits under load share
//! one upsert per group, plus one for the row that sums every type ([`ALL`]).

use std::collections::BTreeMap;

use fleet_q_actors::{StepStatus, StoreError};
use rusqlite::{params, Connection};

use super::map_err;

/// The key of the row that holds the sum over every step type. Step types may
/// not contain control characters, so no type can take it. Statistics read this
/// row and the [`fleet_q_actors::STATS_TYPES`] largest types (through
/// `step_totals_by_size`), never one row per type: clients choose types.
pub(crate) const ALL: &str = "\u{1}all";

/// Adds the row of [`ALL`] when it is missing (a table written before it
/// existed), from the per-type rows; nothing when it is there.
pub(crate) const ENSURE_ALL: &str = "
INSERT OR IGNORE INTO STEP_TOTALS (step_type, row_count, failed, cancelled)
SELECT char(1) || 'all', COALESCE(SUM(row_count), 0), COALESCE(SUM(failed), 0),
       COALESCE(SUM(cancelled), 0)
FROM STEP_TOTALS WHERE step_type <> char(1) || 'all';
";

/// Fills STEP_TOTALS from STEP_TRACKER: one full scan, run only when the table
/// is created in a file that already holds steps.
pub(crate) const BACKFILL: &str = "
INSERT INTO STEP_TOTALS (step_type, row_count, failed, cancelled)
SELECT step_type, COUNT(*), SUM(status = 'failed'), SUM(status = 'cancelled')
FROM STEP_TRACKER GROUP BY step_type;
";

/// Net changes to STEP_TOTALS, by step type: `[rows, failed, cancelled]`.
#[derive(Debug, Default)]
pub(crate) struct Totals(BTreeMap<String, [i64; 3]>);

impl Totals {
    fn entry(&mut self, step_type: &str) -> &mut [i64; 3] {
        if !self.0.contains_key(step_type) {
            self.0.insert(step_type.to_string(), [0; 3]);
        }
        self.0.get_mut(step_type).expect("just inserted")
    }

    /// `n` rows of `step_type` were added (negative: removed) while in `status`.
    pub(crate) fn rows(&mut self, step_type: &str, status: StepStatus, n: i64) {
        let e = self.entry(step_type);
        e[0] += n;
        Self::count(e, status, n);
    }

    /// `n` rows of `step_type` moved from `from` to `to`.
    pub(crate) fn moved(&mut self, step_type: &str, from: StepStatus, to: StepStatus, n: i64) {
        let e = self.entry(step_type);
        Self::count(e, from, -n);
        Self::count(e, to, n);
    }

    fn count(e: &mut [i64; 3], status: StepStatus, n: i64) {
        match status {
            StepStatus::Failed => e[1] += n,
            StepStatus::Cancelled => e[2] += n,
            _ => {}
        }
    }

    /// Adds `other`'s changes to these.
    pub(crate) fn merge(&mut self, other: Totals) {
        for (t, d) in other.0 {
            let e = self.entry(&t);
            for i in 0..3 {
                e[i] += d[i];
            }
        }
    }

    /// Writes the changes: one upsert per step type that changed, and the row of a
    /// type whose last step was removed goes too (so the table stays as small as
    /// the set of live types).
    pub(crate) fn apply(&self, c: &Connection) -> Result<(), StoreError> {
        let mut sum = [0i64; 3];
        for d in self.0.values() {
            for i in 0..3 {
                sum[i] += d[i];
            }
        }
        let all = (sum.iter().any(|n| *n != 0)).then(|| (ALL.to_string(), sum));
        for (t, d) in self
            .0
            .iter()
            .map(|(t, d)| (t.clone(), *d))
            .chain(all)
            .filter(|(_, d)| d.iter().any(|n| *n != 0))
        {
            c.prepare_cached(
                "INSERT INTO STEP_TOTALS (step_type, row_count, failed, cancelled) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (step_type) DO UPDATE SET \
                 row_count = row_count + excluded.row_count, failed = failed + excluded.failed, \
                 cancelled = cancelled + excluded.cancelled",
            )
            .and_then(|mut st| st.execute(params![&t, d[0], d[1], d[2]]))
            .map_err(|e| map_err("step_totals", e))?;
            if d[0] < 0 && t != ALL {
                c.prepare_cached("DELETE FROM STEP_TOTALS WHERE step_type = ?1 AND row_count <= 0")
                    .and_then(|mut st| st.execute([&t]))
                    .map_err(|e| map_err("step_totals", e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_sum_by_type_and_status() {
        let mut a = Totals::default();
        a.rows("x", StepStatus::Pending, 3);
        a.moved("x", StepStatus::Claimed, StepStatus::Failed, 1);
        let mut b = Totals::default();
        b.moved("x", StepStatus::Failed, StepStatus::Pending, 1);
        b.rows("y", StepStatus::Cancelled, -2);
        a.merge(b);
        assert_eq!(a.0["x"], [3, 0, 0]);
        assert_eq!(a.0["y"], [-2, 0, -2]);
    }
}
