//! Tick computation and catch-up planning (pure).

use super::*;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn cron(expr: &str, tz: &str) -> Timing {
    ScheduleSpec {
        cron: Some(expr.into()),
        every_seconds: None,
        time_zone: tz.into(),
        ..ScheduleSpec::every("t", 1, "noop")
    }
    .timing()
    .unwrap()
}

const SEC: Duration = Duration::from_secs(1);

#[test]
fn intervals_tick_at_multiples_since_the_epoch() {
    let t = Timing::Every(60);
    assert_eq!(
        t.after(at("2026-01-01T00:00:30Z")),
        Some(at("2026-01-01T00:01:00Z"))
    );
    assert_eq!(
        t.after(at("2026-01-01T00:01:00Z")),
        Some(at("2026-01-01T00:02:00Z")),
        "strictly after"
    );
    assert_eq!(
        t.before(at("2026-01-01T00:01:00Z")),
        Some(at("2026-01-01T00:00:00Z")),
        "strictly before"
    );
    assert_eq!(
        t.upcoming(at("2026-01-01T00:00:00Z"), 2),
        vec![at("2026-01-01T00:01:00Z"), at("2026-01-01T00:02:00Z")]
    );
}

#[test]
fn cron_takes_five_or_six_fields_and_problems_are_all_listed() {
    let six = cron("*/10 * * * * *", "UTC");
    assert_eq!(
        six.after(at("2026-01-01T00:00:01Z")),
        Some(at("2026-01-01T00:00:10Z"))
    );
    let mut bad = ScheduleSpec::every("no spaces", 0, "");
    bad.cron = Some("* * * * * * *".into());
    bad.time_zone = "Mars/Olympus".into();
    bad.catch_up_max = 0;
    let p = bad.problems().join("\n");
    for want in [
        "name:",
        "not both",
        "cron:",
        "time_zone:",
        "catch_up_max:",
        "step.",
    ] {
        assert!(p.contains(want), "{want} missing from:\n{p}");
    }
    assert!(ScheduleSpec::every("ok", 5, "noop").problems().is_empty());
    let mut never = ScheduleSpec::every("never", 5, "noop");
    never.every_seconds = None;
    never.cron = Some("0 0 30 2 *".into());
    assert!(never.problems().join("").contains("never fires"));
    never.cron = Some(format!("{} * * * *", "1,".repeat(200)));
    assert!(never.problems().join("").contains("longer than"));
    let mut none = ScheduleSpec::every("ok", 5, "noop");
    none.every_seconds = None;
    assert!(none
        .problems()
        .join("")
        .contains("give cron or every_seconds"));
}

#[test]
fn on_time_ticks_fire_whatever_the_policy() {
    let t = Timing::Every(1);
    let next = at("2026-01-01T00:00:10Z");
    for c in [CatchUp::Skip, CatchUp::One, CatchUp::All] {
        let p = plan(&t, c, 100, next, at("2026-01-01T00:00:12.500Z"), 5 * SEC);
        assert_eq!(
            p.fire,
            vec![next, at("2026-01-01T00:00:11Z"), at("2026-01-01T00:00:12Z")]
        );
        assert_eq!(p.skipped, 0);
        assert_eq!(p.next_run_at, Some(at("2026-01-01T00:00:13Z")));
    }
    let early = plan(&t, CatchUp::All, 100, next, at("2026-01-01T00:00:09Z"), SEC);
    assert!(early.fire.is_empty());
    assert_eq!(early.next_run_at, Some(next), "not due: kept");
}

#[test]
fn missed_ticks_follow_the_catch_up_policy() {
    // Every minute, down for an hour: ticks 00:00 … 01:00, `now` 01:00:30.
    let t = Timing::Every(60);
    let next = at("2026-01-01T00:00:00Z");
    let now = at("2026-01-01T01:00:30Z");
    let grace = 45 * SEC; // 01:00 is on time, the 60 before are missed
    let skip = plan(&t, CatchUp::Skip, 100, next, now, grace);
    assert_eq!(skip.fire, vec![at("2026-01-01T01:00:00Z")]);
    assert_eq!(skip.skipped, 60);
    let one = plan(&t, CatchUp::One, 100, next, now, grace);
    assert_eq!(
        one.fire,
        vec![at("2026-01-01T00:59:00Z"), at("2026-01-01T01:00:00Z")]
    );
    assert_eq!(one.skipped, 59);
    let all = plan(&t, CatchUp::All, 10, next, now, grace);
    assert_eq!(all.fire.len(), 11);
    assert_eq!(
        all.fire[0],
        at("2026-01-01T00:50:00Z"),
        "the latest 10 missed"
    );
    assert_eq!(all.skipped, 50);
    let every = plan(&t, CatchUp::All, 1000, next, now, grace);
    assert_eq!(every.fire.len(), 61);
    assert_eq!(every.skipped, 0);
    assert!(every.fire.windows(2).all(|w| w[0] < w[1]), "oldest first");
    // The same hour on a cron expression (counted tick by tick) agrees with
    // the interval's arithmetic count.
    let by_cron = plan(
        &cron("* * * * *", "UTC"),
        CatchUp::Skip,
        100,
        next,
        now,
        grace,
    );
    assert_eq!(by_cron.skipped, skip.skipped);
    // A year down on a per-second schedule: counted at once, one tick fired.
    let year = plan(
        &Timing::Every(1),
        CatchUp::One,
        100,
        next,
        next + chrono::Duration::days(365),
        grace,
    );
    assert_eq!(year.skipped + 1, 365 * 86_400 - 45, "{year:?}");
    assert_eq!(
        year.fire.len(),
        47,
        "the latest missed tick and the 46 on time (both ends)"
    );
    assert_eq!(every.next_run_at, Some(at("2026-01-01T01:01:00Z")));
}

/// The documented daylight-saving rule, over all of 2026 in New York (clocks
/// go forward at 02:00 on 8 March and back at 02:00 on 1 November).
#[test]
fn a_daily_0230_in_new_york_fires_once_a_day_across_both_dst_changes() {
    let t = cron("30 2 * * *", "America/New_York");
    let ticks = t.upcoming(at("2026-01-01T05:00:00Z"), 365);
    assert_eq!(ticks.len(), 365);
    let days: std::collections::HashSet<_> = ticks
        .iter()
        .map(|d| d.with_timezone(&chrono_tz::America::New_York).date_naive())
        .collect();
    assert_eq!(days.len(), 365, "exactly one fire per local day");
    let on = |day: &str| {
        *ticks
            .iter()
            .find(|d| {
                d.with_timezone(&chrono_tz::America::New_York)
                    .date_naive()
                    .to_string()
                    == day
            })
            .unwrap()
    };
    assert_eq!(on("2026-03-07"), at("2026-03-07T07:30:00Z"), "02:30 EST");
    // 02:30 does not exist on 8 March: a fixed-time job runs at the first
    // valid time after the gap, 03:00 EDT.
    assert_eq!(on("2026-03-08"), at("2026-03-08T07:00:00Z"), "03:00 EDT");
    assert_eq!(on("2026-03-09"), at("2026-03-09T06:30:00Z"), "02:30 EDT");
    assert_eq!(on("2026-10-31"), at("2026-10-31T06:30:00Z"), "02:30 EDT");
    // 1 November: 01:00-02:00 happens twice, 02:30 once (EST).
    assert_eq!(on("2026-11-01"), at("2026-11-01T07:30:00Z"), "02:30 EST");
    assert_eq!(on("2026-11-02"), at("2026-11-02T07:30:00Z"));
}

#[test]
fn a_fixed_time_in_the_repeated_hour_fires_once_at_its_first_occurrence() {
    let t = cron("30 1 * * *", "America/New_York");
    let ticks = t.upcoming(at("2026-10-31T12:00:00Z"), 3);
    assert_eq!(
        ticks,
        vec![
            at("2026-11-01T05:30:00Z"), // 01:30 EDT, the first pass
            at("2026-11-02T06:30:00Z"), // 01:30 EST the next day
            at("2026-11-03T06:30:00Z"),
        ]
    );
}

#[test]
fn keys_are_deterministic_per_schedule_and_tick() {
    let tick = at("2026-01-01T00:00:10Z");
    assert_eq!(tick_key("abc", tick), "schedule:abc:1767225610000");
    assert_ne!(tick_key("abc", tick), tick_key("abd", tick));
}

#[test]
fn only_timing_changes_reset_next_run_at() {
    let a = ScheduleSpec::every("a", 60, "noop");
    let mut b = a.clone();
    b.step.priority = Some(5);
    b.paused = true;
    assert!(!timing_changed(&a, &b));
    b.every_seconds = Some(30);
    assert!(timing_changed(&a, &b));
}
