//! The page shell and the small pieces every page uses. maud escapes every
//! value it interpolates, so nothing a client stored (types, payloads, errors,
//! keys) can become markup.

use std::time::Duration;

use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};

use fleet_q_actors::throughput::Series;

/// The navigation: `(path, label)`.
pub const NAV: [(&str, &str); 6] = [
    ("/ui", "Overview"),
    ("/ui/steps", "Steps"),
    ("/ui/failed", "Failed"),
    ("/ui/queues", "Queues"),
    ("/ui/schedules", "Schedules"),
    ("/ui/fleet", "Fleet"),
];

/// What the shell needs to know about the viewer.
pub struct Viewer {
    /// The CSRF token to embed in forms.
    pub csrf: String,
    /// A token is configured (show "sign out").
    pub signed_in_with_token: bool,
    /// Actions are hidden.
    pub read_only: bool,
    /// This pod.
    pub pod_id: String,
}

/// A whole page.
pub fn page(title: &str, current: &str, viewer: &Viewer, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · fleet-q" }
                link rel="stylesheet" href="/ui/assets/app.css";
                link rel="icon" href="/ui/assets/favicon.svg" type="image/svg+xml";
            }
            body {
                header {
                    a.brand href="/ui" { "fleet-q" }
                    nav aria-label="Main" {
                        @for (href, label) in NAV {
                            a href=(href) aria-current=[(href == current).then_some("page")] { (label) }
                        }
                    }
                    div.who {
                        span title="The pod serving this page" { "pod " (viewer.pod_id) }
                        @if viewer.read_only { span.badge { "read-only" } }
                        @if viewer.signed_in_with_token {
                            form method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(viewer.csrf);
                                button.secondary type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
                script src="/ui/assets/app.js" defer {}
            }
        }
    }
}

/// A status as a coloured badge.
pub fn status_badge(status: &str) -> Markup {
    html! { span class={"badge s-" (status)} { (status) } }
}

/// A time as UTC text.
pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An age as "4 s", "3 min 2 s", "2 h 5 min".
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{:.1} s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{} min {} s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    } else {
        format!("{} d {} h", s / 86_400, (s % 86_400) / 3600)
    }
}

/// An error or notice box.
pub fn message(ok: bool, text: &str) -> Markup {
    html! { div class={"msg " (if ok { "ok" } else { "err" })} role=(if ok { "status" } else { "alert" }) { (text) } }
}

/// Runs per minute over the last hour as stacked bars (server-drawn SVG).
pub fn throughput_chart(s: &Series) -> Markup {
    let n = s.completed.len().max(1);
    let totals: Vec<u64> = (0..n)
        .map(|i| {
            s.completed.get(i).copied().unwrap_or(0)
                + s.failed.get(i).copied().unwrap_or(0)
                + s.retried.get(i).copied().unwrap_or(0)
        })
        .collect();
    let peak = totals.iter().copied().max().unwrap_or(0).max(1);
    let (w, h) = (600.0_f64, 140.0_f64);
    let bw = w / n as f64;
    let sum = |v: &Vec<u64>| v.iter().sum::<u64>();
    html! {
        div.legend {
            span { span.sw.c-completed {} "completed " (sum(&s.completed)) }
            span { span.sw.c-failed {} "failed " (sum(&s.failed)) }
            span { span.sw.c-retried {} "retried " (sum(&s.retried)) }
            span.muted { "peak " (peak) "/min, last 60 minutes" }
        }
        svg.chart viewBox={"0 0 " (w) " " (h + 12.0)} preserveAspectRatio="none" role="img"
            aria-label="Steps finished per minute over the last hour" {
            @for i in 0..n {
                @let x = i as f64 * bw;
                @let mut y = h;
                @for (class, v) in [("c-completed", s.completed.get(i)), ("c-failed", s.failed.get(i)), ("c-retried", s.retried.get(i))] {
                    @let v = v.copied().unwrap_or(0);
                    @if v > 0 {
                        @let bh = v as f64 / peak as f64 * h;
                        @let top = { y -= bh; y };
                        rect class=(class) x=(format!("{x:.1}")) y=(format!("{top:.1}")) width=(format!("{:.1}", (bw - 1.0).max(0.5))) height=(format!("{bh:.1}")) {
                            title { (v) " " (&class[2..]) }
                        }
                    }
                }
            }
            line x1="0" y1=(h) x2=(w) y2=(h) stroke="#d9dde5" {}
        }
    }
}
