//! A real browser for the console tests: Debian's headless Chromium driven over WebDriver
//! (chromedriver on a free loopback port, one per test, its own fresh profile).
//!
//! Without `/usr/bin/chromium` or `/usr/bin/chromedriver` a test prints why and passes, so a
//! developer without them can still run the suite; with `CI` set it fails instead, so CI can
//! never skip the console silently. Screenshots of each step go to
//! `target/console-screenshots/<test>-<step>.png`, kept as artefacts.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long any one condition on the page may take.
pub const WAIT: Duration = Duration::from_secs(15);

/// One Chromium session, closed (with its chromedriver) when dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
    test: String,
    _profile: tempfile::TempDir,
}

/// Whether the browser is there; `None` (after saying so) when the test should pass without
/// it, a panic under CI.
fn available(test: &str) -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !std::path::Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {missing:?} missing and CI is set: install chromium and chromium-driver");
    }
    eprintln!(
        "SKIP {test}: {} missing (apt-get install chromium chromium-driver); \
         this test fails instead when CI is set",
        missing.join(" and ")
    );
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium for `test`, or `None` when they are not
    /// installed (outside CI).
    pub async fn start(test: &str) -> Option<Browser> {
        if !available(test) {
            return None;
        }
        let profile = tempfile::tempdir().unwrap();
        let port = free_port();
        // Its own process group, so that dropping the browser ends chromedriver and the
        // Chromium it started, and nothing else.
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert("acceptInsecureCerts".into(), json!(true));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--ignore-certificate-errors",
                    format!("--user-data-dir={}", profile.path().display()),
                    "--window-size=1280,900",
                ],
            }),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut browser = Browser {
            client: loop {
                // chromedriver takes a moment to listen; the session is the readiness probe.
                match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps.clone())
                    .connect(&url)
                    .await
                {
                    Ok(client) => break client,
                    Err(e) => {
                        assert!(
                            Instant::now() < deadline,
                            "no WebDriver session from chromedriver: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            },
            driver,
            test: test.to_owned(),
            _profile: profile,
        };
        browser.test = test.to_owned();
        Some(browser)
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.unwrap()
    }

    /// Runs an async `script` whose last argument is the callback to call with the result.
    pub async fn js_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute_async(script, args).await.unwrap()
    }

    /// Polls `script` (returning a value, `null`/`false` meaning "not yet") until it returns
    /// something else, or fails with `what` after `within`.
    pub async fn until(&self, what: &str, within: Duration, script: &str) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let value = self
                .client
                .execute(script, vec![])
                .await
                .unwrap_or(Value::Null);
            if !matches!(value, Value::Null | Value::Bool(false)) {
                return value;
            }
            if Instant::now() >= deadline {
                self.shot("timeout").await;
                let text = self.text("body").await;
                panic!(
                    "{}: {what} not within {within:?}; the page says:\n{text}",
                    self.test
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `selector` matches an element and returns its text.
    pub async fn wait_text(&self, selector: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.innerText : null;",
            json!(selector)
        );
        self.until(&format!("`{selector}`"), WAIT, &script)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until the text of `selector` contains `needle`.
    pub async fn wait_contains(&self, selector: &str, needle: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); const t = e ? e.innerText : '';\
             return t.includes({}) ? t : null;",
            json!(selector),
            json!(needle)
        );
        self.until(
            &format!("`{selector}` containing {needle:?}"),
            WAIT,
            &script,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// The text of `selector`, or '' when absent.
    pub async fn text(&self, selector: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.innerText : '';",
            json!(selector)
        );
        self.client
            .execute(&script, vec![])
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// How many elements match `selector` now.
    pub async fn count(&self, selector: &str) -> usize {
        let script = format!(
            "return document.querySelectorAll({}).length;",
            json!(selector)
        );
        self.js(&script, vec![]).await.as_u64().unwrap_or(0) as usize
    }

    /// Clicks the first element matching `selector`, waiting for one. An element the page
    /// replaced between finding and clicking it is looked up again, as a user's second try.
    pub async fn click(&self, selector: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let element = self
                .client
                .wait()
                .at_most(deadline.saturating_duration_since(Instant::now()))
                .for_element(Locator::Css(selector))
                .await
                .unwrap_or_else(|e| panic!("{}: no `{selector}` to click: {e}", self.test));
            match element.click().await {
                Ok(()) => return,
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::StaleElementReference
                        && Instant::now() < deadline => {}
                Err(e) => panic!("{}: clicking `{selector}`: {e}", self.test),
            }
        }
    }

    /// Types `keys` as the keyboard does, into whatever has focus (the page itself if none).
    pub async fn keys(&self, keys: &[char]) {
        let mut actions = KeyActions::new("keyboard".into());
        for &key in keys {
            actions = actions
                .then(KeyAction::Down { value: key })
                .then(KeyAction::Up { value: key });
        }
        self.client.perform_actions(actions).await.unwrap();
    }

    /// Signs in on the form at `/console` with `key` and waits for the shell's nav.
    pub async fn sign_in(&self, base_url: &str, key: &str) {
        self.goto(&format!("{base_url}/console")).await;
        let field = self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css("form#signin input[type=password][name=key]"))
            .await
            .unwrap();
        self.shot("signin").await;
        field.send_keys(key).await.unwrap();
        self.click("form#signin button[type=submit]").await;
        self.until(
            "the nav after signing in",
            WAIT,
            "const n = document.getElementById('nav'); return n && !n.hidden && !document.querySelector('form#signin');",
        )
        .await;
    }

    /// Saves a screenshot of the page as `target/console-screenshots/<test>-<step>.png`.
    pub async fn shot(&self, step: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        if let Ok(png) = self.client.screenshot().await {
            std::fs::write(dir.join(format!("{}-{step}.png", self.test)), png).unwrap();
        }
    }

    /// Ends the session (Chromium exits), then chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group holds chromedriver and the Chromium processes it started.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.driver.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.driver.wait();
    }
}
