//! Schedules: steps submitted on a cron expression or a fixed interval.
//!
//! A schedule lives in the store (`SCHEDULES`): its timing, a step template,
//! two policies, `paused`, and `next_run_at`, the next tick not yet fired.
//!
//! **Ticks.** A cron schedule's ticks are those of its expression (5 fields, or
//! 6 with seconds first) in its IANA time zone, computed by the `croner` crate.
//! Daylight-saving changes follow croner's documented rule (the Open Cron
//! Pattern Specification, like Vixie cron): in a spring-forward gap a fixed-time
//! job (numbers in its second, minute and hour fields, e.g. `30 2 * * *`) runs
//! once at the first valid time after the gap, that day (02:30 becomes 03:00),
//! and wildcard or step jobs skip the ticks the gap swallows; in a fall-back
//! overlap a fixed-time job runs once, at the first occurrence, and wildcard or
//! step jobs run in both passes. An interval schedule (`every_seconds: n`) ticks
//! at the multiples of `n` seconds since the Unix epoch, in UTC.
//!
//! **Firing, exactly once per tick.** Only the leader fires ([`fire_due`]).
//! For a due schedule it inserts one step per tick to fire with the idempotency
//! key `schedule:{id}:{tick in epoch ms}`, then advances `next_run_at` with a
//! compare-and-set on the value it read ([`crate::store::Store::schedule_advance`]). So:
//! - a leader that dies between the insert and the advance leaves `next_run_at`
//!   where it was; the next leader fires the same ticks with the same keys, and
//!   the store returns the steps already made instead of new ones;
//! - a zombie leader, or two leaders during a handover, insert with the same
//!   keys (no second step) and only one advance succeeds;
//! - a tick is never lost: `next_run_at` moves past a tick only after its step
//!   exists (or the catch-up policy decided to skip it).
//!
//! Uniqueness comes from the idempotency key, not from an index, so it holds on
//! Snowflake, whose standard tables enforce no UNIQUE constraint. The keys are
//! kept as long as the steps are (the retention): a leader paused for longer
//! than the retention, between reading a schedule and inserting its step, could
//! fire that tick again, and then its advance fails.
//!
//! **Catch-up** after downtime: a tick is *on time* when it is at most
//! [`FireParams::grace`] old when fired, and those always fire. Older ticks are
//! *missed*, and the schedule's [`CatchUp`] policy decides: `skip` fires none of
//! them, `one` fires the latest, `all` fires the latest `catch_up_max`. The
//! rest are counted as skipped.
//!
//! **Overlap**: with [`Overlap::Skip`], while the step of the previous fire is
//! pending or claimed the due ticks are skipped; otherwise only the latest due
//! tick fires, so at most one run is pending or running at a time.
//!
//! **Cost.** The leader reads the due schedules ([`crate::store::Store::schedules_due`], one
//! statement over `SCHEDULES`, at most [`MAX_SCHEDULES`] rows) only when the
//! earliest `next_run_at` it saw has come, when a schedule was changed through
//! its own API, and otherwise once per refresh period (see the recovery
//! actor): an idle schedule costs one small read per refresh, never a scan of
//! the steps.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::step::{NewStep, StepId, StepSpec, ValidationErrors};

/// Most schedules a store holds.
pub const MAX_SCHEDULES: usize = 1_000;
/// Fires kept per schedule in [`Schedule::recent`].
pub const RECENT_FIRES: usize = 10;
/// Default of [`ScheduleSpec::catch_up_max`].
pub const DEFAULT_CATCH_UP_MAX: u32 = 100;
/// Largest [`ScheduleSpec::catch_up_max`].
pub const MAX_CATCH_UP: u32 = 1_000;
/// Longest [`ScheduleSpec::every_seconds`] (a year).
pub const MAX_EVERY_SECONDS: u64 = 366 * 86_400;
/// Missed ticks of a cron schedule counted one by one before the count stops
/// (it then reads "at least"); interval schedules are counted arithmetically.
const COUNT_LIMIT: u64 = 10_000;
/// Longest cron expression accepted.
pub const MAX_CRON_LEN: usize = 256;

/// What to do with ticks missed while no leader could fire them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Fire none of them; the schedule goes on from its next tick.
    #[default]
    Skip,
    /// Fire one step for all of them (the latest missed tick).
    One,
    /// Fire each of them, the latest `catch_up_max` at most.
    All,
}

impl CatchUp {
    /// The name used in the API and the store.
    pub fn as_str(&self) -> &'static str {
        match self {
            CatchUp::Skip => "skip",
            CatchUp::One => "one",
            CatchUp::All => "all",
        }
    }
    /// Parses [`CatchUp::as_str`].
    pub fn parse(s: &str) -> Option<CatchUp> {
        [CatchUp::Skip, CatchUp::One, CatchUp::All]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// Whether a tick fires while the previous fire's step is still live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Fire regardless.
    #[default]
    Allow,
    /// Skip ticks while the previous fire's step is pending or claimed.
    Skip,
}

impl Overlap {
    /// The name used in the API and the store.
    pub fn as_str(&self) -> &'static str {
        match self {
            Overlap::Allow => "allow",
            Overlap::Skip => "skip",
        }
    }
    /// Parses [`Overlap::as_str`].
    pub fn parse(s: &str) -> Option<Overlap> {
        [Overlap::Allow, Overlap::Skip]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// The step a schedule submits at each tick (the fields of `/submit` that make
/// sense for a recurring step).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepTemplate {
    /// Step type.
    #[serde(rename = "type")]
    pub step_type: String,
    /// Handler arguments (a JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// Client metadata (a JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Priority, −1000 … 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Handler timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
}

impl StepTemplate {
    /// The step for one fire, with `key` as its idempotency key.
    pub fn new_step(&self, key: String) -> Result<NewStep, ValidationErrors> {
        let timeout = match self.timeout_seconds {
            Some(t) if t.is_finite() && t > 0.0 && t <= 1e9 => Some(Duration::from_secs_f64(t)),
            Some(_) => {
                return Err(ValidationErrors(vec![crate::step::ValidationError::new(
                    "timeout_seconds",
                    "must be a positive number of seconds",
                )]))
            }
            None => None,
        };
        NewStep::new(StepSpec {
            step_type: self.step_type.clone(),
            args: self.args.clone(),
            metadata: self.metadata.clone(),
            priority: self.priority,
            max_retries: self.max_retries,
            run_at: crate::step::RunAt::Now,
            idempotency_key: Some(key),
            timeout,
            queue: self.queue.clone(),
        })
    }
}

fn utc_name() -> String {
    "UTC".into()
}

fn default_catch_up_max() -> u32 {
    DEFAULT_CATCH_UP_MAX
}

/// A schedule as a client writes it (`POST /admin/schedules`, the settings
/// file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique name (1-64 of `A-Z a-z 0-9 . _ -`).
    pub name: String,
    /// A cron expression: 5 fields, or 6 with seconds first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Or a fixed interval in seconds (ticks at its multiples since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_seconds: Option<u64>,
    /// IANA time zone of the cron expression (default `UTC`).
    #[serde(default = "utc_name")]
    pub time_zone: String,
    /// The step each tick submits.
    pub step: StepTemplate,
    /// A paused schedule fires nothing; on resume it goes on from its next tick.
    #[serde(default)]
    pub paused: bool,
    /// Ticks missed during downtime.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Most missed ticks fired by `catch_up: all` (default 100, at most 1000).
    #[serde(default = "default_catch_up_max")]
    pub catch_up_max: u32,
    /// Overlapping runs.
    #[serde(default)]
    pub overlap: Overlap,
}

impl ScheduleSpec {
    /// A spec with defaults, ticking every `every` seconds.
    pub fn every(name: &str, every: u64, step_type: &str) -> ScheduleSpec {
        ScheduleSpec {
            name: name.into(),
            cron: None,
            every_seconds: Some(every),
            time_zone: utc_name(),
            step: StepTemplate {
                step_type: step_type.into(),
                ..StepTemplate::default()
            },
            paused: false,
            catch_up: CatchUp::default(),
            catch_up_max: DEFAULT_CATCH_UP_MAX,
            overlap: Overlap::default(),
        }
    }

    /// Every problem with this spec (empty when valid).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = crate::queue::name_problem(&self.name) {
            out.push(format!("name: {p}"));
        }
        match (&self.cron, self.every_seconds) {
            (Some(_), Some(_)) => out.push("give either cron or every_seconds, not both".into()),
            (None, None) => out.push("give cron or every_seconds".into()),
            (None, Some(n)) if n == 0 || n > MAX_EVERY_SECONDS => {
                out.push(format!("every_seconds: must be 1 to {MAX_EVERY_SECONDS}"))
            }
            _ => {}
        }
        if let Some(c) = &self.cron {
            match parse_cron(c) {
                Err(e) => out.push(format!("cron: {e}")),
                // e.g. `0 0 30 2 *`: croner gives up after its search limit.
                Ok(cron) if cron.find_next_occurrence(&Utc::now(), false).is_err() => {
                    out.push(format!("cron: {c:?} never fires"))
                }
                Ok(_) => {}
            }
        }
        if chrono_tz::Tz::from_str(&self.time_zone).is_err() {
            out.push(format!(
                "time_zone: {:?} is not an IANA time zone name",
                self.time_zone
            ));
        }
        if self.catch_up_max == 0 || self.catch_up_max > MAX_CATCH_UP {
            out.push(format!("catch_up_max: must be 1 to {MAX_CATCH_UP}"));
        }
        if let Err(e) = self.step.new_step("schedule:check".into()) {
            out.extend(e.0.iter().map(|e| format!("step.{e}")));
        }
        out
    }

    /// The timing, if the spec is valid.
    pub fn timing(&self) -> Result<Timing, String> {
        let tz = chrono_tz::Tz::from_str(&self.time_zone)
            .map_err(|_| format!("unknown time zone {:?}", self.time_zone))?;
        match (&self.cron, self.every_seconds) {
            (Some(c), None) => Ok(Timing::Cron {
                cron: Box::new(parse_cron(c)?),
                tz,
            }),
            (None, Some(n)) if n > 0 => Ok(Timing::Every(n)),
            _ => Err("give either cron or every_seconds".into()),
        }
    }
}

fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    if expr.len() > MAX_CRON_LEN {
        return Err(format!("longer than {MAX_CRON_LEN} characters"));
    }
    let fields = expr.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(format!(
            "{expr:?} has {fields} fields; give 5 (minute hour day month weekday) or 6 (seconds first)"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| format!("{expr:?}: {e}"))
}

/// When a schedule ticks.
#[derive(Clone, Debug)]
pub enum Timing {
    /// A cron expression in a time zone.
    Cron {
        /// The parsed expression.
        cron: Box<croner::Cron>,
        /// Its time zone.
        tz: chrono_tz::Tz,
    },
    /// Every this many seconds since the Unix epoch.
    Every(u64),
}

impl Timing {
    /// The first tick strictly after `t`.
    pub fn after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Timing::Every(n) => {
                let n = (*n as i64).saturating_mul(1000);
                let next = (t.timestamp_millis().div_euclid(n) + 1).checked_mul(n)?;
                Utc.timestamp_millis_opt(next).single()
            }
            Timing::Cron { cron, tz } => cron
                .find_next_occurrence(&t.with_timezone(tz), false)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
        }
    }

    /// The last tick strictly before `t`.
    pub fn before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Timing::Every(n) => {
                let n = (*n as i64).saturating_mul(1000);
                let ms = t.timestamp_millis();
                let prev = (ms - 1).div_euclid(n).checked_mul(n)?;
                Utc.timestamp_millis_opt(prev).single()
            }
            Timing::Cron { cron, tz } => cron
                .find_previous_occurrence(&t.with_timezone(tz), false)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
        }
    }

    /// The next `n` ticks after `t`.
    pub fn upcoming(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n {
            match self.after(at) {
                Some(next) => {
                    out.push(next);
                    at = next;
                }
                None => break,
            }
        }
        out
    }
}

/// One fire, as [`Schedule::recent`] keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fire {
    /// The tick fired (for a manual trigger, the time of the trigger).
    pub tick: DateTime<Utc>,
    /// The step it submitted.
    pub step_id: StepId,
    /// True for `POST …/trigger`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manual: bool,
}

/// A schedule as the store keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Its id (chosen when it was made; kept by later puts of the same name).
    pub id: String,
    /// What the client gave.
    pub spec: ScheduleSpec,
    /// The next tick not yet fired (`None`: the expression has no future tick).
    pub next_run_at: Option<DateTime<Utc>>,
    /// When it last fired (store time).
    pub last_fired_at: Option<DateTime<Utc>>,
    /// Its latest fires, newest first (at most [`RECENT_FIRES`]).
    pub recent: Vec<Fire>,
    /// Steps fired since it was made.
    pub fires: u64,
    /// Ticks skipped (catch-up or overlap) since it was made.
    pub skipped: u64,
}

/// The idempotency key of a schedule's step for one tick.
pub fn tick_key(id: &str, tick: DateTime<Utc>) -> String {
    format!("schedule:{id}:{}", tick.timestamp_millis())
}

/// What [`plan`] decided for one due schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Ticks to fire, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// Due ticks not fired.
    pub skipped: u64,
    /// The first tick after `now`.
    pub next_run_at: Option<DateTime<Utc>>,
}

/// The ticks of `timing` from `next` (a tick) to `now` that fire under
/// `catch_up` (see the module docs), with ticks at most `grace` old on time.
/// Pure: the store's clock comes in as `now`.
pub fn plan(
    timing: &Timing,
    catch_up: CatchUp,
    catch_up_max: u32,
    next: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: Duration,
) -> Plan {
    let next_run_at = timing.after(now);
    if next > now {
        return Plan {
            fire: Vec::new(),
            skipped: 0,
            next_run_at: Some(next),
        };
    }
    let cutoff = now - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::zero());
    // On-time ticks: in [max(next, cutoff), now].
    let mut on_time = Vec::new();
    let mut t = if next >= cutoff {
        Some(next)
    } else {
        timing.before(cutoff).and_then(|p| timing.after(p))
    };
    while let Some(at) = t.filter(|at| *at <= now) {
        if at >= next && at >= cutoff {
            on_time.push(at);
        }
        t = timing.after(at);
    }
    // Missed ticks: in [next, cutoff).
    let missed_count = match timing {
        // Every tick is a multiple of n s, `next` one of them: arithmetic.
        Timing::Every(n) if next < cutoff => {
            let span = (cutoff - next).num_milliseconds().max(0) as u64;
            (span.saturating_sub(1)) / n.saturating_mul(1000).max(1) + 1
        }
        Timing::Every(_) => 0,
        // A cron expression is walked tick by tick, at most COUNT_LIMIT (the
        // count then reads "at least"), so a long outage of a per-second
        // schedule costs bounded time on the leader.
        Timing::Cron { .. } => {
            let mut count = 0u64;
            let mut t = Some(next);
            while let Some(at) = t.filter(|at| *at < cutoff) {
                count += 1;
                if count >= COUNT_LIMIT {
                    break;
                }
                t = timing.after(at);
            }
            count
        }
    };
    let take = match catch_up {
        CatchUp::Skip => 0,
        CatchUp::One => missed_count.min(1),
        CatchUp::All => missed_count.min(u64::from(catch_up_max)),
    };
    // The latest `take` missed ticks, walking back from the cutoff.
    let mut fire = Vec::new();
    let mut at = cutoff;
    while (fire.len() as u64) < take {
        match timing.before(at) {
            Some(p) if p >= next => {
                fire.push(p);
                at = p;
            }
            _ => break,
        }
    }
    fire.reverse();
    let skipped = missed_count - fire.len() as u64;
    fire.extend(on_time);
    Plan {
        fire,
        skipped,
        next_run_at,
    }
}

/// The first `next_run_at` of a schedule made or changed at `now`, or resumed.
pub fn first_run(spec: &ScheduleSpec, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    spec.timing().ok().and_then(|t| t.after(now))
}

/// Whether a put of `new` over `old` changes when it ticks (then `next_run_at`
/// is computed afresh; otherwise it is kept, so re-loading the same settings
/// file never skips or repeats a tick).
pub fn timing_changed(old: &ScheduleSpec, new: &ScheduleSpec) -> bool {
    old.cron != new.cron || old.every_seconds != new.every_seconds || old.time_zone != new.time_zone
}

mod fire;
mod row;
pub use fire::{fire_due, trigger, DueSchedules, FireParams, FireReport, ScheduleAdvance};
pub use row::{from_ms, new_id, recent_json, ScheduleRow};

#[cfg(test)]
mod tests;
