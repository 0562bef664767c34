// fleet-q dashboard: live refresh of the overview, copy buttons, select-all.
// No framework, no network access beyond this pod.
(function () {
  "use strict";
  var live = document.querySelector("[data-live]");
  if (live) {
    var url = live.getAttribute("data-live");
    var timer = null;
    // One refresh at a time, given up after 10 s: when the store is slow a
    // refresh can outlast the period, and overlapping ones would take every
    // connection the browser allows this host (six), so the pages a person
    // clicks to would wait behind them. data-fetches counts refreshes started
    // (tests read it).
    var busy = false;
    var started = 0;
    var refresh = function () {
      if (document.hidden || busy) return;
      busy = true;
      started += 1;
      live.setAttribute("data-fetches", String(started));
      var ctl = window.AbortController ? new AbortController() : null;
      var limit = ctl ? setTimeout(function () { ctl.abort(); }, 10000) : null;
      fetch(url, {
        credentials: "same-origin",
        headers: { "Accept": "text/html" },
        signal: ctl ? ctl.signal : undefined
      })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html !== null) {
            live.innerHTML = html;
            live.setAttribute("data-refreshed", String(Date.now()));
          }
        })
        .catch(function () {})
        .then(function () {
          busy = false;
          if (limit) clearTimeout(limit);
        });
    };
    // data-polling says whether the 2 s refresh runs (tests read it).
    var start = function () {
      if (!timer) timer = setInterval(refresh, 2000);
      live.setAttribute("data-polling", "on");
    };
    var stop = function () {
      if (timer) { clearInterval(timer); timer = null; }
      live.setAttribute("data-polling", "off");
    };
    document.addEventListener("visibilitychange", function () {
      if (document.hidden) { stop(); } else { refresh(); start(); }
    });
    if (!document.hidden) start();
  }
  document.addEventListener("click", function (e) {
    var b = e.target.closest("[data-copy]");
    if (!b) return;
    var text = document.getElementById(b.getAttribute("data-copy")).textContent;
    if (navigator.clipboard) {
      navigator.clipboard.writeText(text).then(function () { b.textContent = "Copied"; }, function () {});
    }
  });
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input[name=step_id]").forEach(function (c) { c.checked = all.checked; });
    });
  }
})();
