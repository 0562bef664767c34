//! The web dashboard in a real headless Chromium (Debian's chromium and
//! chromium-driver, driven over WebDriver), against real pod processes on a
//! real SQLite file: what a person sees on each page, filters, bulk actions
//! that make steps run again, the token sign-in, CSRF and read-only refusals,
//! hostile text shown as text;
//! and, on the Snowflake emulator, the overview's refresh when the store is
//! slow.
//! Screenshots of every page at 1280 and 390 px go to the target dir
//! (`<target>/tmp/dashboard-screenshots`).

#[path = "support/browser.rs"]
mod browser;
#[path = "support/emulator.rs"]
mod emulator;
mod support;

use std::time::Duration;

use browser::Browser;
use serde_json::{json, Value};
use support::*;

const PAGES: [(&str, &str); 6] = [
    ("overview", "/ui"),
    ("steps", "/ui/steps"),
    ("failed", "/ui/failed"),
    ("queues", "/ui/queues"),
    ("schedules", "/ui/schedules"),
    ("fleet", "/ui/fleet"),
];

fn rows(b: &Browser, table: &str) -> usize {
    b.find_all(&format!("{table} tbody tr")).len()
}

/// The page fits its window: no sideways scrolling of the page itself (wide
/// tables scroll inside their panel).
fn fits(b: &Browser) -> bool {
    b.script("return document.documentElement.scrollWidth <= window.innerWidth + 1;") == true
}

#[test]
fn the_dashboard_shows_the_fleet_filters_steps_and_retries_in_bulk() {
    if browser::available().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let service = Recorder::start();
    let env = vec![("FLEET_Q_HTTP_HANDLERS", format!("flaky={}", service.url))];
    let a = PodProc::start(dir.path(), &db, "ui-a", &env);
    let b = PodProc::start(dir.path(), &db, "ui-b", &env);
    let c = client();
    let mut bodies: Vec<Value> = (0..6)
        .map(|i| json!({"type": "noop", "args": {"city": format!("Lisbon-{i}")}}))
        .collect();
    bodies.push(json!({"type": "noop", "args": {"city": "Porto"}, "idempotency_key": "porto-key"}));
    for _ in 0..4 {
        bodies
            .push(json!({"type": "flaky", "args": {"fail_until_healed": true}, "max_retries": 0}));
    }
    let ids: Vec<String> = bodies
        .into_iter()
        .map(|body| submit(&c, &a, body))
        .collect();
    let obs = Observer::open(&db);
    let stats = obs.wait_all_terminal(11, Duration::from_secs(60));
    assert_eq!((stats.counts.completed, stats.counts.failed), (7, 4));

    let web = Browser::start(1280, 900);
    let shots = browser::screenshot_dir();

    // Overview: the counts a person reads are /admin/queue's.
    web.goto(&a.url("/ui"));
    let queue: Value = c.get(a.url("/admin/queue")).send().unwrap().json().unwrap();
    assert_eq!(
        web.text("#count-completed"),
        queue["completed_steps"].to_string()
    );
    assert_eq!(web.text("#count-failed"), queue["failed_steps"].to_string());
    assert_eq!(
        web.text("#count-pending"),
        queue["pending_steps"].to_string()
    );
    // Both pods' heartbeats carry their runs: the chart's legend sums the fleet.
    web.wait_text(".legend", "the fleet's runs reach the chart", |t| {
        t.contains("completed 7") && t.contains("failed 4")
    });
    // The live part refreshes itself (polling while the tab is visible).
    web.wait_text("#live", "the overview refreshes", |_| {
        web.script(
            "return document.getElementById('live').getAttribute('data-refreshed') !== null;",
        ) == true
    });
    web.screenshot(&shots.join("overview-1280.png"));
    // A hidden tab stops polling; showing it again refreshes at once.
    let fetches = |b: &Browser| -> u64 {
        b.script("return performance.getEntriesByType('resource').filter(e => e.name.includes('/ui/live/overview')).length;")
            .as_u64()
            .unwrap_or(0)
    };
    web.script(
        "Object.defineProperty(document, 'hidden', {configurable: true, get: () => true}); \
         document.dispatchEvent(new Event('visibilitychange'));",
    );
    let polling = |b: &Browser| {
        b.script("return document.getElementById('live').getAttribute('data-polling');")
    };
    wait_for("polling to stop", Duration::from_secs(10), || {
        (polling(&web) == "off").then_some(())
    });
    let before = fetches(&web);
    web.script(
        "Object.defineProperty(document, 'hidden', {configurable: true, get: () => false}); \
         document.dispatchEvent(new Event('visibilitychange'));",
    );
    assert_eq!(polling(&web), "on");
    // Shown again, it refreshes at once instead of waiting a period.
    wait_for(
        "a refresh on showing the tab",
        Duration::from_secs(10),
        || (fetches(&web) > before).then_some(()),
    );

    // The first load is small: the page and its three assets.
    let weight: usize = [
        "/ui",
        "/ui/assets/app.css",
        "/ui/assets/app.js",
        "/ui/assets/favicon.svg",
    ]
    .iter()
    .map(|p| c.get(a.url(p)).send().unwrap().bytes().unwrap().len())
    .sum();
    assert!(weight < 300 * 1024, "first load is {weight} bytes");

    // Steps: filter with the form; the filter lands in the URL.
    web.goto(&a.url("/ui/steps"));
    assert_eq!(rows(&web, "#steps"), 11, "every step, newest first");
    web.type_into("input[name=text]", "Porto");
    web.click("form.filters button[type=submit]");
    web.wait_text("#steps tbody", "the payload filter", |t| t.contains("noop"));
    assert!(
        web.url().contains("text=Porto"),
        "the filter is in the URL: {}",
        web.url()
    );
    assert_eq!(rows(&web, "#steps"), 1);
    web.goto(&a.url("/ui/steps?type=flaky"));
    assert_eq!(rows(&web, "#steps"), 4, "the type filter");
    web.goto(&a.url("/ui/steps?text=no-such-text-anywhere"));
    assert!(web.text("#no-steps").contains("No matching steps"));
    web.screenshot(&shots.join("steps-1280.png"));

    // Step detail: payload, key, the command to copy.
    web.goto(&a.url(&format!("/ui/steps/{}", ids[6])));
    assert!(web.text("#payload").contains("Porto"));
    assert!(web.text("#step-fields").contains("porto-key"));
    assert_eq!(web.text("#cmd-cli"), format!("fleet-q status {}", ids[6]));
    web.screenshot(&shots.join("step-1280.png"));

    // Failed: grouped by type and error.
    web.goto(&a.url("/ui/failed"));
    let groups = web.text("#failed-groups");
    assert!(groups.contains("flaky") && groups.contains('4'), "{groups}");
    web.screenshot(&shots.join("failed-1280.png"));

    // Bulk retry of everything matching a filter, with a counted confirmation;
    // the service is healthy now, so the retried steps run and complete.
    service.heal();
    web.goto(&a.url("/ui/steps?status=failed&type=flaky"));
    web.click("button[value=retry-matching]");
    let confirm = web.text("#confirm-count");
    assert!(confirm.starts_with("4 steps"), "{confirm}");
    web.screenshot(&shots.join("confirm-1280.png"));
    web.click("#confirm");
    web.wait_text(".msg", "the bulk retry reports", |t| {
        t.contains("4 step(s) put back to pending")
    });
    let stats = obs.wait_all_terminal(11, Duration::from_secs(60));
    assert_eq!(
        (stats.counts.completed, stats.counts.failed),
        (11, 0),
        "the retried steps ran"
    );
    for id in &ids[7..] {
        assert_eq!(obs.step(id).attempt, 2, "each retried step ran once more");
    }

    // Queues: pause and resume a queue, set its limit, filter Steps by it.
    let mail: Vec<String> = (0..2)
        .map(|i| {
            submit(
                &c,
                &a,
                json!({"type": "noop", "queue": "mail", "args": {"n": i}, "delay_seconds": 3600}),
            )
        })
        .collect();
    web.goto(&a.url("/ui/queues"));
    let row = "#queues tr[data-queue=mail]";
    assert!(web.text(row).contains("running"));
    web.click(&format!("{row} button.toggle"));
    web.wait_text(row, "the queue pauses", |t| t.contains("paused"));
    let q: Value = c
        .get(a.url("/admin/queues/mail"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(q["paused"], true, "the page acted through the store: {q}");
    web.type_into(&format!("{row} input[name=max_concurrency]"), "3");
    web.click(&format!("{row} form.row button"));
    web.wait_text(row, "the limit is saved", |t| t.contains('3'));
    web.click(&format!("{row} button.toggle"));
    web.wait_text(row, "the queue resumes", |t| t.contains("running"));
    let q: Value = c
        .get(a.url("/admin/queues/mail"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        (q["paused"].clone(), q["max_concurrency"].clone()),
        (json!(false), json!(3))
    );
    web.screenshot(&shots.join("queues-1280.png"));
    web.goto(&a.url("/ui/steps?queue=mail"));
    assert_eq!(rows(&web, "#steps"), mail.len(), "the queue filter");

    // Schedules: next fires, trigger (the fire links to its step), pause.
    let r = c
        .post(a.url("/admin/schedules"))
        .json(&json!({"name": "hourly", "every_seconds": 3600, "step": {"type": "noop", "queue": "reports"}}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    web.goto(&b.url("/ui/schedules"));
    let row = "#schedules tr[data-schedule=hourly]";
    let text = web.text(row);
    assert!(
        text.contains("running") && text.contains("every 3600 s"),
        "{text}"
    );
    assert_eq!(
        web.find_all(&format!("{row} td.next div")).len(),
        3,
        "three next fires"
    );
    web.click(&format!("{row} button.trigger"));
    web.wait_text(row, "the trigger is listed", |t| t.contains("(trigger)"));
    assert!(web.text("main").contains("Fired once"), "the notice");
    let s: Value = c
        .get(a.url("/admin/schedules/hourly"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let fired = s["recent"][0]["step_id"].as_str().unwrap().to_string();
    web.click(&format!("{row} td.last a"));
    web.wait_text("main", "the fired step's page", |t| t.contains(&fired));
    obs.wait_completed(&fired, Duration::from_secs(30));
    web.goto(&b.url("/ui/schedules"));
    web.click(&format!("{row} button.toggle"));
    web.wait_text(row, "the schedule pauses", |t| t.contains("paused"));
    let s: Value = c
        .get(a.url("/admin/schedules/hourly"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(s["paused"], true, "the page acted through the store: {s}");
    web.screenshot(&shots.join("schedules-1280.png"));

    // Fleet: both pods, one leader.
    web.goto(&b.url("/ui/fleet"));
    assert_eq!(rows(&web, "#pods"), 2);
    let fleet = web.text("#pods");
    assert_eq!(fleet.matches("leader").count(), 1, "{fleet}");
    assert!(fleet.contains(&a.id) && fleet.contains(&b.id));
    web.screenshot(&shots.join("fleet-1280.png"));
    let errors = web.console_errors();
    assert!(errors.is_empty(), "{errors:?}");

    // A phone-sized window: every page fits.
    let narrow = Browser::start(390, 844);
    for (name, path) in PAGES {
        narrow.goto(&a.url(path));
        narrow.wait("main h1");
        assert!(fits(&narrow), "{path} scrolls sideways at 390 px");
        narrow.screenshot(&shots.join(format!("{name}-390.png")));
    }
    let errors = narrow.console_errors();
    assert!(errors.is_empty(), "{errors:?}");
}

/// When the store is slow to answer the statistics (here every Snowflake
/// statement on `FLEET_STATS` is held a minute, so each attempt ends at the
/// server's statement timeout and the refresh takes over 20 s with its
/// retries), far longer than the 2 s refresh period, the overview keeps one
/// refresh in flight at a time and gives one up after 10 s. So it never takes
/// the six connections a browser allows a host (the links a person clicks
/// would wait behind them).
/// Text a client or a step service chose (a step type, arguments, an
/// idempotency key, an error naming the type, filters in the URL) shows as
/// text on every page: no element of it reaches the page, even with the
/// Content-Security-Policy taken out of the picture (the checks look for the
/// injected elements, not for scripts that ran). A type with `&`, `+` and `#`
/// survives the failed page's "view" link and the filter form.
#[test]
fn hostile_text_shows_as_text_on_every_page() {
    if browser::available().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let a = PodProc::start(dir.path(), &db, "ui-hostile", &[]);
    let c = client();
    // No handler is registered for these types: each fails at once, with an
    // error that quotes its type.
    let evil_type = r#"<img src=x id=pwn-type onerror="window.pwned=1">"#;
    let odd_type = "a&b+c#d %2F?";
    let evil_args = r#"</pre></td><script>window.pwned=2</script><b id=pwn-args>x</b>"#;
    let evil_key = r#""><svg id=pwn-key onload="window.pwned=3"></svg><a id=pwn-link href="https://example.invalid">"#;
    let typed = submit(&c, &a, json!({"type": evil_type, "args": {}}));
    let odd = submit(&c, &a, json!({"type": odd_type, "args": {}}));
    let argued = submit(
        &c,
        &a,
        json!({"type": "noop", "args": {"note": evil_args}, "metadata": {"m": evil_args}, "idempotency_key": evil_key}),
    );
    let obs = Observer::open(&db);
    let stats = obs.wait_all_terminal(3, Duration::from_secs(60));
    assert_eq!((stats.counts.completed, stats.counts.failed), (1, 2));
    // The error quotes the type (Rust's `{:?}`, so its quotes come back escaped).
    let quoted = "<img src=x id=pwn-type onerror=";
    assert!(obs.step(&typed).last_error.unwrap().contains(quoted));

    let web = Browser::start(1280, 900);
    let injected = |web: &Browser| {
        web.script(
            "return document.querySelectorAll('#pwn-type, #pwn-args, #pwn-key, #pwn-link, [onerror], [onload], \
             a[href*=\"example.invalid\"], script:not([src])').length + (window.pwned ? 100 : 0);",
        )
    };
    let body = |web: &Browser| web.text("body");
    let search = |k: &str, v: &str| {
        format!(
            "/ui/steps?{}",
            serde_urlencoded::to_string([(k, v)]).unwrap()
        )
    };
    let pages: Vec<(String, Vec<&str>)> = vec![
        ("/ui".into(), vec![]),
        ("/ui/steps".into(), vec![evil_type]),
        ("/ui/failed".into(), vec![evil_type, odd_type]),
        (format!("/ui/steps/{typed}"), vec![evil_type]),
        (
            format!("/ui/steps/{argued}"),
            vec![evil_key, "window.pwned=2"],
        ),
        (search("type", evil_type), vec![evil_type]),
        (search("text", evil_args), vec![]),
        (search("key", evil_key), vec![]),
        ("/ui/queues".into(), vec![]),
        ("/ui/schedules".into(), vec![]),
        ("/ui/fleet".into(), vec![]),
    ];
    for (path, shown) in &pages {
        web.goto(&a.url(path));
        assert_eq!(injected(&web), json!(0), "markup injected on {path}");
        let text = body(&web);
        for s in shown {
            assert!(text.contains(s), "{path} shows {s:?} as text:\n{text}");
        }
    }
    // Filters by the hostile type and key find exactly their steps, and the
    // form shows each value as it was typed.
    for (k, v, id) in [("type", evil_type, &typed), ("key", evil_key, &argued)] {
        web.goto(&a.url(&search(k, v)));
        assert_eq!(rows(&web, "#steps"), 1, "{k}");
        assert!(web.text("#steps tbody").contains(id.as_str()), "{k}");
        let value = web.script(&format!(
            "return document.querySelector('input[name={k}]').value;"
        ));
        assert_eq!(value, json!(v));
    }
    // The odd type's "view" link on the failed page keeps the type whole.
    web.goto(&a.url("/ui/failed"));
    let links = web.find_all("#failed-groups tbody a");
    assert_eq!(links.len(), 2, "one group per failed type");
    let view = web.script(&format!(
        "return [...document.querySelectorAll('#failed-groups tbody tr')]\
           .find(r => r.cells[0].innerText === {}).querySelector('a').href;",
        json!(odd_type)
    ));
    web.goto(view.as_str().unwrap());
    assert_eq!(
        rows(&web, "#steps"),
        1,
        "the link filters by the whole type"
    );
    assert!(web.text("#steps tbody").contains(odd.as_str()));
    // And the filter form sends it whole too.
    web.goto(&a.url("/ui/steps"));
    web.type_into("input[name=type]", odd_type);
    web.click("form.filters button[type=submit]");
    web.wait_text("#steps tbody", "the type filter from the form", |t| {
        t.contains(odd.as_str())
    });
    assert_eq!(rows(&web, "#steps"), 1);
    assert_eq!(injected(&web), json!(0));
}

#[test]
fn the_overview_refreshes_one_at_a_time_while_the_store_is_slow() {
    if browser::available().is_none() {
        return;
    }
    let Some(py) = emulator::python_or_skip() else {
        return;
    };
    let emu = emulator::Emulator::start_with_args(
        &py,
        &[
            "--delay-statement",
            "(FROM|MERGE INTO) FLEET_STATS=60000:100000",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut env = emu.env();
    env.push(("FLEET_Q_SNOWFLAKE_CONNECTION_TIMEOUT", "10".into()));
    let pod = PodProc::start(dir.path(), &dir.path().join("unused.db"), "ui-slow", &env);
    let web = Browser::start(1280, 900);
    web.goto(&pod.url("/ui"));
    let started = || -> u64 {
        web.script("return document.getElementById('live').getAttribute('data-fetches');")
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    wait_for("a first refresh to start", Duration::from_secs(20), || {
        (started() > 0).then_some(())
    });
    let before = started();
    let at = std::time::Instant::now();
    wait_for("12 s of refresh periods", Duration::from_secs(30), || {
        (at.elapsed() >= Duration::from_secs(12)).then_some(())
    });
    // One refresh waiting for the store, given up at 10 s, then the next:
    // at most three, where one per period would be six.
    let during = started() - before;
    assert!(
        (1..=3).contains(&during),
        "{during} refreshes started in 12 s of a slow store"
    );
    // The page still answers a person's click at once.
    web.goto(&pod.url("/ui/queues"));
    web.wait("h1");
}

fn post_form(
    c: &reqwest::blocking::Client,
    url: &str,
    cookies: &str,
    origin: Option<&str>,
    form: &[(&str, &str)],
) -> reqwest::StatusCode {
    let mut r = c.post(url).form(form);
    if !cookies.is_empty() {
        r = r.header("cookie", cookies);
    }
    if let Some(o) = origin {
        r = r.header("origin", o);
    }
    r.send().unwrap().status()
}

#[test]
fn the_dashboard_asks_for_the_token_and_refuses_forged_and_read_only_actions() {
    if browser::available().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let token = "tok-ui-1234567890";
    let a = PodProc::start(
        dir.path(),
        &db,
        "tok",
        &[("FLEET_Q_ADMIN_TOKEN", token.to_string())],
    );
    let c = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let later = |n: i32| json!({"type": "noop", "args": {"n": n}, "delay_seconds": 3600});
    let ids: Vec<String> = (0..3).map(|n| submit(&c, &a, later(n))).collect();

    // The browser is sent to sign in; a wrong token is refused.
    let web = Browser::start(1280, 900);
    web.goto(&a.url("/ui"));
    assert!(web.url().ends_with("/ui/login"), "{}", web.url());
    web.type_into("#token", "wrong-token");
    web.click("#sign-in");
    assert!(web.text(".msg").contains("not valid"));
    // The refusal is a 403, which the console reports; nothing else is there.
    let errors = web.console_errors();
    assert!(
        errors
            .iter()
            .all(|e| e.contains("/ui/login") && e.contains("403")),
        "{errors:?}"
    );
    web.type_into("#token", token);
    web.click("#sign-in");
    assert_eq!(web.text("#count-pending"), "3");
    let cookies = web.cookies();
    let session = cookies
        .iter()
        .find(|(n, _)| n == "fq_session")
        .expect("a session cookie")
        .1
        .clone();
    let csrf = cookies
        .iter()
        .find(|(n, _)| n == "fq_csrf")
        .expect("a csrf cookie")
        .1
        .clone();

    // In the browser, an action works.
    web.goto(&a.url(&format!("/ui/steps/{}", ids[0])));
    web.click("#cancel");
    web.wait_text(".msg", "the cancel reports", |t| {
        t.contains("1 step(s) cancelled")
    });
    let errors = web.console_errors();
    assert!(errors.is_empty(), "{errors:?}");

    // Outside the browser: no session → 401 (pages redirect); a session without
    // the CSRF pair, or from another origin → 403; all of it → done.
    let cancel = a.url(&format!("/ui/steps/{}/cancel", ids[1]));
    let r = c.get(a.url("/ui")).send().unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(post_form(&c, &cancel, "", None, &[("csrf", &csrf)]), 401);
    let both = format!("fq_session={session}; fq_csrf={csrf}");
    assert_eq!(
        post_form(
            &c,
            &cancel,
            &format!("fq_session={session}"),
            None,
            &[("csrf", &csrf)]
        ),
        403,
        "no CSRF cookie"
    );
    assert_eq!(
        post_form(
            &c,
            &cancel,
            &both,
            None,
            &[("csrf", "0123456789abcdef0123456789abcdef")]
        ),
        403,
        "a CSRF field that does not match"
    );
    assert_eq!(
        post_form(
            &c,
            &cancel,
            &both,
            Some("http://evil.example"),
            &[("csrf", &csrf)]
        ),
        403,
        "another origin"
    );
    assert_eq!(
        post_form(
            &c,
            &cancel,
            &format!("fq_session=99999999999.00; fq_csrf={csrf}"),
            None,
            &[("csrf", &csrf)]
        ),
        401,
        "a forged session"
    );
    let status = |id: &str| -> String {
        c.get(a.url(&format!("/status/{id}")))
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        status(&ids[1]),
        "pending",
        "nothing refused changed anything"
    );
    assert_eq!(post_form(&c, &cancel, &both, None, &[("csrf", &csrf)]), 303);
    assert_eq!(status(&ids[1]), "cancelled");

    // A read-only pod on the same store: no actions shown, none accepted.
    let ro = PodProc::start(
        dir.path(),
        &db,
        "ro",
        &[("FLEET_Q_UI_READ_ONLY", "on".to_string())],
    );
    web.goto(&ro.url(&format!("/ui/steps/{}", ids[2])));
    web.wait("#payload");
    assert!(web.find("#cancel").is_none(), "read-only hides actions");
    web.goto(&ro.url("/ui/steps"));
    web.wait("#steps");
    assert!(web.find("button[value=cancel-selected]").is_none());
    let ro_cancel = ro.url(&format!("/ui/steps/{}/cancel", ids[2]));
    assert_eq!(
        post_form(
            &c,
            &ro_cancel,
            &format!("fq_csrf={csrf}"),
            None,
            &[("csrf", &csrf)]
        ),
        403
    );
    assert_eq!(status(&ids[2]), "pending");

    // FLEET_Q_UI=off: no dashboard at all.
    let off = PodProc::start(dir.path(), &db, "off", &[("FLEET_Q_UI", "off".to_string())]);
    assert_eq!(c.get(off.url("/ui")).send().unwrap().status(), 404);
    assert_eq!(c.get(off.url("/")).send().unwrap().status(), 404);
}
