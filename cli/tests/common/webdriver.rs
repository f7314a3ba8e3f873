//! A small W3C WebDriver client over HTTP (chromedriver + headless Debian Chromium): enough to
//! open pages, find elements, click, type, run a script and take screenshots.

use base64::Engine;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: reqwest::Client,
    _profile: tempfile::TempDir,
}

fn find_program(candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|p| p.to_string())
}

impl Browser {
    /// Starts chromedriver on a free port and a fresh headless Chromium session.
    pub async fn start() -> Self {
        let chromium = find_program(&["/usr/bin/chromium", "/usr/bin/chromium-browser"])
            .expect("Chromium not found: run scripts/setup-browser.sh");
        let chromedriver =
            find_program(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"])
                .expect("chromedriver not found: run scripts/setup-browser.sh");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Its own process group, so that a failing test (which cannot await a clean session
        // end) still takes Chromium down with chromedriver; see `Drop`.
        let driver = Command::new(chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{base}/status")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                Instant::now() < until,
                "chromedriver did not answer within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            // WebGL 2 for the NiiVue viewer on Chromium's software renderer (no GPU here).
            "--enable-unsafe-swiftshader".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1400,1000".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args }
        }}});
        let response: Value = client
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = response["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {response}"))
            .to_string();
        let browser = Self {
            driver,
            base,
            session,
            client,
            _profile: profile,
        };
        // A page busy drawing a full-size volume on the software renderer can hold its main
        // thread for tens of seconds; a script waits for it instead of failing.
        browser
            .call(
                reqwest::Method::POST,
                "/timeouts",
                Some(json!({ "script": 180_000 })),
            )
            .await;
        browser
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.client.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response: Value = request.send().await.unwrap().json().await.unwrap();
        if let Some(error) = response["value"]["error"].as_str() {
            panic!(
                "webdriver {path}: {error}: {}",
                response["value"]["message"]
            );
        }
        response["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The id at the end of the current page's path (`/jobs/7` -> 7).
    pub async fn id_in_url(&self) -> i64 {
        let url = self.url().await;
        let last = url.rsplit('/').next().unwrap_or_default();
        last.parse()
            .unwrap_or_else(|_| panic!("{url} does not end with a numeric id"))
    }

    pub async fn find(&self, css: &str) -> String {
        let value = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        value[ELEMENT].as_str().unwrap().to_string()
    }

    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    pub async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Polls a JavaScript expression until it is truthy; fails at the deadline.
    pub async fn wait_for(&self, expression: &str, deadline: Duration) -> Value {
        let until = Instant::now() + deadline;
        loop {
            let value = self.script(&format!("return ({expression});")).await;
            let truthy = !matches!(value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("");
            if truthy {
                return value;
            }
            assert!(
                Instant::now() < until,
                "browser: `{expression}` not true within {deadline:?} (at {})",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Runs `script` in every page opened from now on, before the page's own scripts
    /// (chromedriver's DevTools bridge: `Page.addScriptToEvaluateOnNewDocument`).
    pub async fn before_every_page(&self, script: &str) {
        self.call(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(json!({ "cmd": "Page.addScriptToEvaluateOnNewDocument", "params": { "source": script } })),
        )
        .await;
    }

    pub async fn screenshot(&self, path: &Path) {
        let data = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// A PNG of one element as drawn now (a canvas included).
    pub async fn element_screenshot(&self, css: &str) -> Vec<u8> {
        let id = self.find(css).await;
        let data = self
            .call(
                reqwest::Method::GET,
                &format!("/element/{id}/screenshot"),
                None,
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap()
    }

    pub async fn quit(mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.client.delete(url).send().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
