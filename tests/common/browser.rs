//! A real browser for the console's tests: chromedriver on a free port and
//! a headless chromium session through WebDriver (fantoccini), with waits
//! on the page's structured data (`data-testid` elements, their text and
//! `data-*` attributes; polled against a deadline, never slept on), clicks,
//! typing and screenshots under `target/console/`.
//!
//! Included with `#[path]` by the browser tests only, so that the other
//! test binaries do not link a WebDriver client.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::error::NewSessionError;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

/// How long a wait on the page lasts before the test fails (a z_calibrate
/// run from the page ends well inside it).
pub const PAGE_WAIT: Duration = Duration::from_secs(30);

/// How often a wait reads the page again.
const POLL: Duration = Duration::from_millis(50);

/// The browser window: wide enough for the console's two columns.
const WINDOW: (u32, u32) = (1400, 1000);

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver, killed (with the browser it started) when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver runs in its own process group with the browser it
        // started: the whole group goes, so no chromium outlives a test.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let group = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            // Until the group is gone (its profile directory is removed
            // next); bounded, a Drop must not hang.
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while nix::sys::signal::killpg(group, None).is_ok()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A free TCP port on loopback (the OS's choice; released for chromedriver).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Where the tests' screenshots go: `target/console/` (the CI artefact).
pub fn screenshot_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`; its parent is the target directory.
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(PathBuf::from)
        .expect("CARGO_TARGET_TMPDIR has a parent");
    let dir = target.join("console");
    std::fs::create_dir_all(&dir).expect("create target/console");
    dir
}

/// A headless chromium driven through WebDriver.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    driver: Driver,
    // The browser's profile; removed after the browser is gone (field order).
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a fresh headless chromium
    /// session (its own profile in a temporary directory).
    pub async fn start() -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut last_err = String::new();
        // A port taken between free_port() and chromedriver's bind is the
        // only expected failure: try a few.
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = Command::new(CHROMEDRIVER);
            cmd.arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let child = cmd.spawn().unwrap_or_else(|e| {
                panic!("{CHROMEDRIVER} starts ({e}); scripts/ensure-test-tools.sh installs it")
            });
            let mut driver = Driver { child, port };
            match connect(&mut driver, &profile).await {
                Ok(client) => {
                    client
                        .set_window_size(WINDOW.0, WINDOW.1)
                        .await
                        .expect("window size");
                    return Browser {
                        client,
                        driver,
                        _profile: profile,
                    };
                }
                Err(e) => last_err = e,
            }
        }
        panic!("no WebDriver session: {last_err}");
    }

    /// Opens `url` (returns once the document has loaded).
    pub async fn open(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// The element `[data-testid=ID]` if it is on the page now.
    pub async fn find(&self, id: &str) -> Option<Element> {
        self.client.find(Locator::Css(&testid(id))).await.ok()
    }

    /// The first element matching the CSS selector, if any now.
    pub async fn find_css(&self, css: &str) -> Option<Element> {
        self.client.find(Locator::Css(css)).await.ok()
    }

    /// Every element matching the CSS selector now.
    pub async fn find_all_css(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_default()
    }

    /// Waits until the CSS selector matches an element and returns it.
    pub async fn wait_css(&self, css: &str, what: &str) -> Element {
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        loop {
            if let Some(e) = self.find_css(css).await {
                return e;
            }
            self.fail_after(deadline, what, css).await;
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the number of elements the CSS selector matches
    /// satisfies `pred`; returns them.
    pub async fn wait_count(
        &self,
        css: &str,
        what: &str,
        pred: impl Fn(usize) -> bool,
    ) -> Vec<Element> {
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        loop {
            let all = self.find_all_css(css).await;
            if pred(all.len()) {
                return all;
            }
            self.fail_after(deadline, what, &format!("{} of {css}", all.len()))
                .await;
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until attribute `attr` of `[data-testid=ID]` satisfies `pred`;
    /// returns its value (an absent attribute reads as "").
    pub async fn wait_attr(
        &self,
        id: &str,
        attr: &str,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        self.wait_read(id, Some(attr), what, pred).await
    }

    /// Waits until the text of `[data-testid=ID]` satisfies `pred`; returns it.
    pub async fn wait_text(&self, id: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_read(id, None, what, pred).await
    }

    /// Reads attribute `attr` (or the text, for `None`) of `[data-testid=ID]`
    /// until it satisfies `pred`.
    async fn wait_read(
        &self,
        id: &str,
        attr: Option<&str>,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        let mut seen = None;
        loop {
            if let Some(e) = self.find(id).await {
                let read = match attr {
                    Some(a) => e.attr(a).await.map(Option::unwrap_or_default),
                    None => e.text().await,
                };
                if let Ok(v) = read {
                    if pred(&v) {
                        return v;
                    }
                    seen = Some(v);
                }
            }
            let reading = attr.unwrap_or("text");
            self.fail_after(deadline, what, &format!("{id} {reading}={seen:?}"))
                .await;
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `[data-testid=ID]` is on the page and clicks it.
    pub async fn click(&self, id: &str) {
        self.click_css(&testid(id)).await;
    }

    /// Waits until the CSS selector matches and clicks the element.
    pub async fn click_css(&self, css: &str) {
        let e = self.wait_css(css, &format!("{css} on the page")).await;
        e.click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Replaces the content of the input `[data-testid=ID]` with `text` as
    /// an operator does: click into it, select all, delete, type (the page
    /// sees the same focus and input events, and leaves a focused field
    /// alone while updates arrive).
    pub async fn type_into(&self, id: &str, text: &str) {
        self.type_css(&testid(id), text).await;
    }

    /// [`Browser::type_into`] for the element the CSS selector matches.
    pub async fn type_css(&self, css: &str, text: &str) {
        let id = css;
        let e = self.wait_css(css, &format!("{css} on the page")).await;
        e.click()
            .await
            .unwrap_or_else(|e| panic!("click {id}: {e}"));
        let keys: String = [
            char::from(Key::Control),
            'a',
            char::from(Key::Null),
            char::from(Key::Backspace),
        ]
        .iter()
        .collect::<String>()
            + text;
        e.send_keys(&keys)
            .await
            .unwrap_or_else(|e| panic!("type into {id}: {e}"));
    }

    /// Chooses the option with `value` in the select `[data-testid=ID]`.
    pub async fn select(&self, id: &str, value: &str) {
        let e = self.wait_present(id).await;
        let css = format!("option[value=\"{value}\"]");
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        // Options are built from the console's data: wait for this one.
        while e.find(Locator::Css(&css)).await.is_err() {
            self.fail_after(deadline, "the option to exist", &format!("{id} {css}"))
                .await;
            tokio::time::sleep(POLL).await;
        }
        e.select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("select {value} in {id}: {e}"));
    }

    /// Runs `script` in the page (WebDriver "execute script"); `arguments`
    /// are given to it.
    pub async fn eval(&self, script: &str, arguments: Vec<Value>) -> Value {
        self.client
            .execute(script, arguments)
            .await
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    /// Saves the visible part of the page as `target/console/NAME.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// Saves the whole page (the window grown to the document's height for
    /// the shot, then put back) as `target/console/NAME.png`.
    pub async fn full_page_screenshot(&self, name: &str) -> PathBuf {
        let height = self
            .eval(
                "return Math.ceil(document.documentElement.scrollHeight)",
                vec![],
            )
            .await
            .as_u64()
            .unwrap_or(u64::from(WINDOW.1));
        let inner = self
            .eval("return window.outerHeight - window.innerHeight", vec![])
            .await
            .as_u64()
            .unwrap_or(0);
        let h = u32::try_from(height + inner)
            .unwrap_or(WINDOW.1)
            .clamp(WINDOW.1, 6000);
        self.client
            .set_window_size(WINDOW.0, h)
            .await
            .expect("grow the window");
        // The page redraws its plots for the new size at its next frame:
        // wait for the layout to report the new height before the shot.
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        loop {
            let inner_h = self.eval("return window.innerHeight", vec![]).await;
            if inner_h.as_u64().unwrap_or(0) + inner >= u64::from(h) {
                break;
            }
            self.fail_after(deadline, "the window to grow", &format!("{inner_h}"))
                .await;
            tokio::time::sleep(POLL).await;
        }
        let path = self.screenshot(name).await;
        self.client
            .set_window_size(WINDOW.0, WINDOW.1)
            .await
            .expect("window back");
        path
    }

    /// Errors the page's script met (it counts them in
    /// `body[data-script-errors]` and logs each).
    pub async fn script_errors(&self) -> Value {
        self.eval(
            "return {count: Number(document.body.dataset.scriptErrors || 0), \
             last: document.body.dataset.lastScriptError || null}",
            vec![],
        )
        .await
    }

    /// Ends chromedriver and the browser. The test is over: they are
    /// killed as a group rather than asked to quit (which takes a second
    /// per test and leaves nothing the test reads).
    pub async fn close(self) {
        let Browser {
            client,
            driver,
            _profile,
        } = self;
        drop(driver);
        drop(client);
    }

    async fn wait_present(&self, id: &str) -> Element {
        self.wait_css(&testid(id), &format!("{id} on the page"))
            .await
    }

    /// Fails the test after `deadline`, with a screenshot of the page as it
    /// was (named after what was awaited) for the CI artefacts.
    async fn fail_after(&self, deadline: tokio::time::Instant, what: &str, seen: &str) {
        if tokio::time::Instant::now() < deadline {
            return;
        }
        let name: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        // Best effort: a broken session must not hide what was awaited.
        let shot = match self.client.screenshot().await {
            Ok(png) => {
                let path = screenshot_dir().join(format!("failed-{name}.png"));
                match std::fs::write(&path, png) {
                    Ok(()) => format!("screenshot {}", path.display()),
                    Err(e) => format!("no screenshot ({e})"),
                }
            }
            Err(e) => format!("no screenshot ({e})"),
        };
        panic!("waited {PAGE_WAIT:?} for {what}; last seen: {seen}; {shot}");
    }
}

/// The CSS selector of `[data-testid=ID]`.
pub fn testid(id: &str) -> String {
    format!("[data-testid=\"{id}\"]")
}

/// A WebDriver session on `driver`, retried while chromedriver starts.
async fn connect(driver: &mut Driver, profile: &tempfile::TempDir) -> Result<Client, String> {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless=new",
                // CI runs as root, where chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                format!("--window-size={},{}", WINDOW.0, WINDOW.1),
                format!("--user-data-dir={}", profile.path().display()),
            ],
        },
    });
    let caps = match caps {
        Value::Object(m) => m,
        _ => unreachable!("a JSON object literal"),
    };
    let url = format!("http://127.0.0.1:{}", driver.port);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await;
        match attempt {
            Ok(c) => return Ok(c),
            // Nothing answers yet: chromedriver is starting, or it could not
            // bind the port (then it has exited: the caller tries another).
            Err(NewSessionError::FailedC(e)) if tokio::time::Instant::now() < deadline => {
                if let Ok(Some(status)) = driver.child.try_wait() {
                    return Err(format!("chromedriver on {url} exited ({status}): {e}"));
                }
                tokio::time::sleep(POLL).await;
            }
            Err(e) => return Err(format!("chromedriver on {url}: {e}")),
        }
    }
}
