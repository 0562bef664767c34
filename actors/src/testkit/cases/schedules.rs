//! Schedules (`crate::schedule`): stored by name, fired exactly once per tick
//! whoever fires and however often, catch-up and overlap policies, pause and
//! trigger. Firing takes `now` as a parameter, so an hour of downtime is
//! simulated by firing an hour ahead.

use super::*;
use crate::schedule::{fire_due, tick_key, trigger, CatchUp, FireParams, Overlap, ScheduleSpec};
use chrono::{DateTime, Utc};

const GRACE: Duration = Duration::from_secs(5);

async fn fire(store: &Arc<dyn Store>, now: DateTime<Utc>) -> crate::schedule::FireReport {
    fire_due(
        store.as_ref(),
        FireParams {
            now: Some(now),
            grace: GRACE,
        },
    )
    .await
    .expect("fire_due")
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

/// Put, get (by id and by name), list, replace by name, delete; a bad spec
/// is refused with every problem and changes nothing.
pub(crate) async fn schedules_are_stored_by_name(h: Harness) {
    let mut spec = ScheduleSpec::every("nightly", 3600, "noop");
    spec.step.args = Some(json!({"n": 1}));
    let made = h.a.schedule_put(spec.clone()).await.expect("put");
    let now = h.a.now().await.unwrap();
    let next = made.next_run_at.expect("next_run_at");
    assert!(
        next > now - secs(1) && next <= now + secs(3601),
        "{next} vs {now}"
    );
    assert_eq!(next.timestamp() % 3600, 0, "aligned to the hour");
    assert_eq!(
        h.b.schedule_get(&made.id).await.unwrap(),
        Some(made.clone())
    );
    assert_eq!(
        h.b.schedule_get("nightly").await.unwrap(),
        Some(made.clone())
    );
    // Same name again: same id and tick; a timing change moves the tick.
    spec.step.priority = Some(7);
    let again = h.b.schedule_put(spec.clone()).await.unwrap();
    assert_eq!(
        (again.id.as_str(), again.next_run_at),
        (made.id.as_str(), made.next_run_at)
    );
    assert_eq!(again.spec.step.priority, Some(7));
    spec.every_seconds = None;
    spec.cron = Some("*/10 * * * * *".into());
    let retimed = h.a.schedule_put(spec.clone()).await.unwrap();
    assert_eq!(retimed.id, made.id);
    let n = retimed.next_run_at.unwrap();
    assert!(n.timestamp() % 10 == 0 && n <= h.a.now().await.unwrap() + secs(11));
    h.a.schedule_put(ScheduleSpec::every("another", 60, "noop"))
        .await
        .unwrap();
    let list = h.b.schedules_list().await.unwrap();
    assert_eq!(
        list.iter()
            .map(|s| s.spec.name.as_str())
            .collect::<Vec<_>>(),
        ["another", "nightly"]
    );
    let mut bad = ScheduleSpec::every("nightly", 0, "");
    bad.time_zone = "Nowhere/Atlantis".into();
    let e = h.a.schedule_put(bad).await.unwrap_err().to_string();
    assert!(
        e.contains("every_seconds") && e.contains("time_zone") && e.contains("step."),
        "{e}"
    );
    assert_eq!(h.a.schedule_get("nightly").await.unwrap(), Some(retimed));
    assert!(h.a.schedule_delete(&made.id).await.unwrap());
    assert!(!h.b.schedule_delete("nightly").await.unwrap());
    assert_eq!(h.b.schedule_get("nightly").await.unwrap(), None);
}

/// One step per tick: a second fire of the same moment, a fire from the
/// other handle, and a leader that died after inserting but before advancing
/// all end with the one step of that tick.
pub(crate) async fn a_tick_fires_exactly_once(h: Harness) {
    let mut spec = ScheduleSpec::every("tick", 60, "noop");
    spec.catch_up = CatchUp::All;
    let s = h.a.schedule_put(spec).await.unwrap();
    let t0 = s.next_run_at.unwrap();
    // A leader died between the insert and the advance of tick t0.
    let orphan = insert(
        &h.a,
        vec![s.spec.step.new_step(tick_key(&s.id, t0)).unwrap()],
    )
    .await[0];
    // Two leaders fire the same moment.
    let (ra, rb) = tokio::join!(fire(&h.a, t0 + secs(1)), fire(&h.b, t0 + secs(1)));
    let fired: Vec<_> = ra.fired.iter().chain(&rb.fired).collect();
    assert_eq!(fired.len(), 1, "one fire of t0 won: {ra:?} {rb:?}");
    assert!(ra.lost + rb.lost <= 1, "the loser lost the compare-and-set");
    assert_eq!(fired[0].1, t0);
    assert_eq!(fired[0].2, orphan, "the step the dead leader made");
    assert!(!fired[0].3, "not made again");
    // Fired again at the same moment: nothing is due.
    assert!(fire(&h.a, t0 + secs(1)).await.fired.is_empty());
    let s = h.b.schedule_get("tick").await.unwrap().unwrap();
    assert_eq!(s.next_run_at, Some(t0 + secs(60)));
    assert_eq!((s.fires, s.recent.len()), (1, 1));
    assert_eq!(s.recent[0].step_id, orphan);
    assert_eq!(s.last_fired_at, Some(t0 + secs(1)));
    // The next tick makes a new step.
    let r = fire(&h.b, t0 + secs(60)).await;
    assert_eq!(r.fired.len(), 1);
    assert!(r.fired[0].3, "made now");
    let step = get(&h.a, r.fired[0].2).await;
    assert_eq!(step.step_type(), "noop");
    assert_eq!(r.next_due, Some(t0 + secs(120)));
}

/// An hour of downtime with a schedule every minute: `skip` fires only the
/// on-time tick, `one` adds one step for the missed ticks, `all` fires the
/// latest `catch_up_max` of them; the rest are counted as skipped.
pub(crate) async fn catch_up_policies_after_an_hour_down(h: Harness) {
    // The three must share their first tick: put them again if a minute
    // boundary fell between the puts (it cannot fall twice in a row).
    let ids = loop {
        let mut ids = Vec::new();
        for (name, policy) in [
            ("c-skip", CatchUp::Skip),
            ("c-one", CatchUp::One),
            ("c-all", CatchUp::All),
        ] {
            let mut spec = ScheduleSpec::every(name, 60, "noop");
            spec.catch_up = policy;
            spec.catch_up_max = 10;
            ids.push(h.a.schedule_put(spec).await.unwrap());
        }
        if ids.iter().all(|s| s.next_run_at == ids[0].next_run_at) {
            break ids;
        }
        for s in &ids {
            assert!(h.a.schedule_delete(&s.spec.name).await.unwrap());
        }
    };
    let t0 = ids[0].next_run_at.unwrap();
    // Down from before t0 until just after t0 + 1 h: 61 ticks due, the last on time.
    let now = t0 + secs(3600) + secs(1);
    let r = fire(&h.b, now).await;
    let count = |name: &str| r.fired.iter().filter(|f| f.0 == name).count();
    assert_eq!(count("c-skip"), 1, "only the on-time tick");
    assert_eq!(
        count("c-one"),
        2,
        "one for the missed ticks, and the on-time one"
    );
    assert_eq!(
        count("c-all"),
        11,
        "the latest 10 missed, and the on-time one"
    );
    for (name, fires, skipped) in [("c-skip", 1, 60), ("c-one", 2, 59), ("c-all", 11, 50)] {
        let s = h.a.schedule_get(name).await.unwrap().unwrap();
        assert_eq!((s.fires, s.skipped), (fires, skipped), "{name}");
        assert_eq!(s.next_run_at, Some(t0 + secs(3660)), "{name}");
        assert_eq!(s.recent[0].tick, t0 + secs(3600), "{name}: newest first");
    }
    let all: Vec<_> = r
        .fired
        .iter()
        .filter(|f| f.0 == "c-all")
        .map(|f| f.1)
        .collect();
    assert_eq!(
        all[0],
        t0 + secs(3000),
        "c-all: oldest fired is the 10th missed"
    );
    let unique: HashSet<StepId> = r.fired.iter().map(|f| f.2).collect();
    assert_eq!(unique.len(), r.fired.len(), "one step per fire");
}

/// `overlap: skip`: while the last fire's step is pending or claimed, ticks are
/// skipped; once it finished, the next tick fires.
pub(crate) async fn overlap_skip_waits_for_the_previous_run(h: Harness) {
    let mut spec = ScheduleSpec::every("ov", 1, "noop");
    spec.overlap = Overlap::Skip;
    spec.catch_up = CatchUp::All;
    let s = h.a.schedule_put(spec).await.unwrap();
    let t0 = s.next_run_at.unwrap();
    let first = fire(&h.a, t0).await;
    assert_eq!(first.fired.len(), 1);
    let r = fire(&h.a, t0 + secs(2)).await;
    assert!(r.fired.is_empty(), "previous run still pending: {r:?}");
    assert_eq!(r.skipped, vec![("ov".to_string(), 2)]);
    let claimed = claim(&h.b, "pod-b", 10).await;
    let mine = claimed
        .into_iter()
        .find(|s| s.step_id == first.fired[0].2)
        .expect("the fired step is claimable");
    let r = fire(&h.a, t0 + secs(3)).await;
    assert!(r.fired.is_empty(), "previous run still claimed");
    finish(
        &h.b,
        Lease::of(&mine).unwrap(),
        Outcome::Complete { result: json!({}) },
    )
    .await;
    // Several ticks due at once: only the latest fires.
    let r = fire(&h.a, t0 + secs(6)).await;
    assert_eq!(r.fired.len(), 1, "{r:?}");
    assert_eq!(r.fired[0].1, t0 + secs(6));
}

/// A paused schedule is not due; resuming restarts it from its next tick
/// (ticks while paused are not fired). A trigger fires once at once and is
/// recorded as manual.
pub(crate) async fn paused_schedules_wait_and_triggers_fire_once(h: Harness) {
    let mut spec = ScheduleSpec::every("p", 1, "noop");
    spec.catch_up = CatchUp::All;
    let s = h.a.schedule_put(spec).await.unwrap();
    let t0 = s.next_run_at.unwrap();
    let paused = h.b.schedule_pause("p", true).await.unwrap().unwrap();
    assert!(paused.spec.paused);
    assert!(fire(&h.a, t0 + secs(30)).await.fired.is_empty());
    assert_eq!(h.a.schedule_pause("nope", true).await.unwrap(), None);
    let resumed = h.a.schedule_pause(&s.id, false).await.unwrap().unwrap();
    assert!(!resumed.spec.paused);
    let now = h.a.now().await.unwrap();
    assert!(
        resumed.next_run_at.unwrap() > now - secs(1),
        "from the next tick"
    );
    let step = trigger(h.b.as_ref(), "p")
        .await
        .unwrap()
        .expect("triggered");
    let s = h.a.schedule_get("p").await.unwrap().unwrap();
    assert_eq!(s.recent[0].step_id, step);
    assert!(s.recent[0].manual);
    assert_eq!(
        s.next_run_at, resumed.next_run_at,
        "a trigger leaves the ticks alone"
    );
    assert_eq!(get(&h.a, step).await.status, StepStatus::Pending);
    assert_eq!(trigger(h.a.as_ref(), "nope").await.unwrap(), None);
}
