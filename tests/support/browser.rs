//! A real headless Chromium driven over the W3C WebDriver protocol (plain JSON
//! over HTTP to `chromedriver`), for the dashboard tests. Chromium and
//! chromedriver are Debian's packages, installed by `tests/browser/setup.sh`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Set to `1` (as `.ci/run` does) to fail instead of skipping when the browser
/// cannot be installed.
pub const REQUIRE: &str = "FLEET_Q_REQUIRE_BROWSER";

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Installs the browser if needed; `None` (after saying why) when it is
/// unavailable and not required.
pub fn available() -> Option<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ok = Command::new("bash")
        .arg(root.join("tests/browser/setup.sh"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return Some(());
    }
    assert!(
        std::env::var(REQUIRE).as_deref() != Ok("1"),
        "{REQUIRE}=1 but chromium/chromedriver could not be installed (tests/browser/setup.sh)"
    );
    eprintln!(
        "SKIPPED: chromium and chromedriver are not installed (run tests/browser/setup.sh as root)"
    );
    None
}

/// One chromedriver process and one browser session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless browser window of
    /// `width` × `height`.
    pub fn start(width: u32, height: u32) -> Browser {
        let port = crate::support::free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        crate::support::wait_for("chromedriver to answer", Duration::from_secs(30), || {
            http.get(format!("{base}/status"))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .filter(|v| v["value"]["ready"] == true)
        });
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ]
            }
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .expect("new session")
            .json()
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_string();
        Browser {
            driver,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().expect("webdriver call").json().unwrap();
        if v["value"].get("error").is_some() {
            panic!("webdriver {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    fn try_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Option<Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().ok()?.json().ok()?;
        v["value"]
            .get("error")
            .is_none()
            .then(|| v["value"].clone())
    }

    /// Loads `url` (returns when the page has loaded).
    pub fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
    }

    /// The current URL.
    pub fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first element matching `css`, if any.
    pub fn find(&self, css: &str) -> Option<String> {
        self.try_call(
            reqwest::Method::POST,
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )
        .and_then(|v| v[ELEMENT].as_str().map(str::to_string))
    }

    /// Every element matching `css`.
    pub fn find_all(&self, css: &str) -> Vec<String> {
        self.call(
            reqwest::Method::POST,
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e[ELEMENT].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
    }

    /// Waits (up to 15 s) for an element matching `css`.
    pub fn wait(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        if let Some(el) = crate::support::poll_until(deadline, || self.find(css)) {
            return el;
        }
        let page = self.script("return document.body ? document.body.innerText : '';");
        panic!(
            "no element {css} within 15 s on {}; the page says: {}",
            self.url(),
            page.as_str()
                .unwrap_or_default()
                .chars()
                .take(600)
                .collect::<String>()
        );
    }

    /// The rendered text of the element matching `css`. The overview replaces
    /// its live part every 2 s, so an element found may be gone ("stale")
    /// when its text is asked for: then it is found again.
    pub fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let el = self.wait(css);
            if let Some(t) =
                self.try_call(reqwest::Method::GET, &format!("/element/{el}/text"), None)
            {
                return t.as_str().unwrap_or_default().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "the text of {css} could not be read"
            );
        }
    }

    /// Clicks the element matching `css`.
    pub fn click(&self, css: &str) {
        let el = self.wait(css);
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/click"),
            Some(json!({})),
        );
    }

    /// Types `text` into the element matching `css` (after clearing it).
    pub fn type_into(&self, css: &str, text: &str) {
        let el = self.wait(css);
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/clear"),
            Some(json!({})),
        );
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Runs `script` in the page; its return value.
    pub fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Saves a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Browser console entries at level SEVERE since the last call (errors,
    /// failed loads, CSP violations).
    pub fn console_errors(&self) -> Vec<String> {
        let url = format!("{}/session/{}/se/log", self.base, self.session);
        let v: Value = self
            .http
            .post(&url)
            .json(&json!({"type": "browser"}))
            .send()
            .and_then(|r| r.json())
            .unwrap_or(Value::Null);
        v["value"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["level"] == "SEVERE")
                    .map(|e| e["message"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The session's cookies as `name=value` pairs.
    pub fn cookies(&self) -> Vec<(String, String)> {
        self.call(reqwest::Method::GET, "/cookie", None)
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        (
                            c["name"].as_str().unwrap_or_default().to_string(),
                            c["value"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `check` holds on the page's text.
    pub fn wait_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        let found = crate::support::poll_until(deadline, || {
            last = self.find(css).map(|_| self.text(css)).unwrap_or_default();
            check(&last).then(|| last.clone())
        });
        found.unwrap_or_else(|| panic!("{what}: {css} says {last:?}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where the dashboard tests save their screenshots (in the target dir).
pub fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots")
}
