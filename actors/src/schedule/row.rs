//! The `SCHEDULES` row both stores hold, and its conversions.

use chrono::{DateTime, TimeZone, Utc};

use super::{CatchUp, Fire, Overlap, Schedule, ScheduleSpec, StepTemplate, MAX_CATCH_UP};

/// A `SCHEDULES` row as both stores hold it (times in epoch milliseconds, the
/// step template and recent fires as JSON text): the one place the columns
/// are turned into a [`Schedule`] and back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScheduleRow {
    /// `id`.
    pub id: String,
    /// `name`.
    pub name: String,
    /// `cron`.
    pub cron: Option<String>,
    /// `every_seconds`.
    pub every_seconds: Option<i64>,
    /// `time_zone`.
    pub time_zone: String,
    /// `step` (JSON).
    pub step: String,
    /// `paused`.
    pub paused: bool,
    /// `catch_up`.
    pub catch_up: String,
    /// `catch_up_max`.
    pub catch_up_max: i64,
    /// `overlap`.
    pub overlap: String,
    /// `next_run_at` (ms).
    pub next_run_at: Option<i64>,
    /// `last_fired_at` (ms).
    pub last_fired_at: Option<i64>,
    /// `recent` (JSON).
    pub recent: String,
    /// `fires`.
    pub fires: i64,
    /// `skipped`.
    pub skipped: i64,
}

/// Milliseconds since the epoch as a time.
pub fn from_ms(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

impl ScheduleRow {
    /// The columns of a spec (the history columns left at their defaults).
    pub fn of_spec(id: &str, spec: &ScheduleSpec) -> ScheduleRow {
        ScheduleRow {
            id: id.to_string(),
            name: spec.name.clone(),
            cron: spec.cron.clone(),
            every_seconds: spec.every_seconds.map(|n| n.min(i64::MAX as u64) as i64),
            time_zone: spec.time_zone.clone(),
            step: serde_json::to_string(&spec.step).unwrap_or_else(|_| "{}".into()),
            paused: spec.paused,
            catch_up: spec.catch_up.as_str().into(),
            catch_up_max: i64::from(spec.catch_up_max),
            overlap: spec.overlap.as_str().into(),
            recent: "[]".into(),
            ..ScheduleRow::default()
        }
    }

    /// The schedule the row holds; an error names what is malformed.
    pub fn into_schedule(self) -> Result<Schedule, String> {
        let step: StepTemplate = serde_json::from_str(&self.step)
            .map_err(|e| format!("schedule {}: step: {e}", self.name))?;
        let recent: Vec<Fire> = serde_json::from_str(&self.recent).unwrap_or_default();
        Ok(Schedule {
            spec: ScheduleSpec {
                name: self.name.clone(),
                cron: self.cron,
                every_seconds: self.every_seconds.map(|n| n.max(0) as u64),
                time_zone: self.time_zone,
                step,
                paused: self.paused,
                catch_up: CatchUp::parse(&self.catch_up).unwrap_or_default(),
                catch_up_max: self.catch_up_max.clamp(1, i64::from(MAX_CATCH_UP)) as u32,
                overlap: Overlap::parse(&self.overlap).unwrap_or_default(),
            },
            id: self.id,
            next_run_at: self.next_run_at.and_then(from_ms),
            last_fired_at: self.last_fired_at.and_then(from_ms),
            recent,
            fires: self.fires.max(0) as u64,
            skipped: self.skipped.max(0) as u64,
        })
    }
}

/// [`Fire`]s as the `recent` column holds them.
pub fn recent_json(recent: &[Fire]) -> String {
    serde_json::to_string(recent).unwrap_or_else(|_| "[]".into())
}

/// A new schedule id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}
