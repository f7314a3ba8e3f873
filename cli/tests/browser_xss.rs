//! Stored XSS through a feature dataset's names, against a real `cggm serve` in headless
//! Chromium (issue 17, finding 2). A class or modality name like `<img src=x onerror=...>`:
//! - in a `dataset.json`, is refused: the dataset's page names the bad name (as text) and no run
//!   starts on it;
//! - in a finished run's stored events and `metrics.json` (written there directly, as a run from
//!   before the name check could have left them), shows as text on the run page (test report,
//!   per-modality table, confusion matrix), the dashboard, the models page and the comparison
//!   charts; no payload runs.
//!
//! Every page answers with a Content-Security-Policy that allows no inline script.

mod common;

use common::live::*;
use common::ui::*;
use common::webdriver::Browser;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// A payload that marks `window.xssRan` with `tag` when the browser parses it as HTML.
fn payload(tag: &str) -> String {
    format!("{tag}<img src=x onerror=window.xssRan='{tag}'>")
}

/// Renames, everywhere in `value` (object keys and string values), each `from` to its `to`.
fn rename(value: &mut Value, names: &[(String, String)]) {
    let renamed = |s: &str| {
        names
            .iter()
            .find(|(from, _)| from == s)
            .map(|(_, to)| to.clone())
    };
    match value {
        Value::String(s) => {
            if let Some(to) = renamed(s) {
                *s = to;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rename(v, names)),
        Value::Object(map) => {
            for (key, mut v) in std::mem::take(map) {
                rename(&mut v, names);
                map.insert(renamed(&key).unwrap_or(key), v);
            }
        }
        _ => {}
    }
}

fn synth_classification(folder: &Path) {
    let status = std::process::Command::new(cggm())
        .args(["synth", "--task", "classification", "--samples", "150"])
        .args(["--seed", "3", "--out"])
        .arg(folder)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "cggm synth --task classification failed");
}

/// The page's state after the payloads had their chance: `window.xssRan` (null when nothing
/// ran), how many `<img src=x>` the page holds, and its visible text.
async fn page_state(browser: &Browser) -> (Value, Value, String) {
    // An injected <img src=x> fails to load within milliseconds; give it time to fire onerror.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let ran = browser
        .script("return window.xssRan === undefined ? null : String(window.xssRan);")
        .await;
    let images = browser
        .script("return document.querySelectorAll('img[src=\"x\"]').length;")
        .await;
    let text = browser
        .script("return document.body.innerText;")
        .await
        .as_str()
        .unwrap_or_default()
        .to_string();
    (ran, images, text)
}

/// Collects, from the first script of every page on, what the Content-Security-Policy refused.
const RECORD_VIOLATIONS: &str = "window.cspViolations = []; document.addEventListener('securitypolicyviolation', (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI} at ${e.sourceFile}:${e.lineNumber}`));";

/// The page ran under the policy without tripping it (nothing it needs is refused).
async fn assert_no_violation(browser: &Browser, page: &str) {
    let violations = browser.script("return window.cspViolations;").await;
    assert_eq!(
        violations,
        serde_json::json!([]),
        "{page}: the policy refused something"
    );
}

async fn assert_shown_as_text(browser: &Browser, page: &str, expected: &[String]) {
    let (ran, images, text) = page_state(browser).await;
    assert_no_violation(browser, page).await;
    assert_eq!(
        ran,
        Value::Null,
        "{page}: a payload ran (window.xssRan set)"
    );
    assert_eq!(images, 0, "{page}: a name was parsed into an <img> element");
    for name in expected {
        assert!(
            text.contains(name.as_str()),
            "{page}: {name:?} not shown as text in:\n{text}"
        );
    }
}

fn assert_strict_csp(response: &reqwest::Response, page: &str) {
    let csp = response
        .headers()
        .get("content-security-policy")
        .unwrap_or_else(|| panic!("{page}: no Content-Security-Policy"))
        .to_str()
        .unwrap()
        .to_string();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
    ] {
        assert!(
            csp.contains(directive),
            "{page}: {directive} missing: {csp}"
        );
    }
    assert!(!csp.contains("unsafe-inline"), "{page}: {csp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_carrying_markup_are_refused_in_dataset_json_and_shown_as_text_on_every_page() {
    let server = LiveServer::start(&["--no-demo"]);

    // 1. A dataset.json with a markup class name: listed as a problem, no run on it.
    let hostile = server.data_dir.join("datasets/hostile");
    synth_classification(&hostile);
    let spec_path = hostile.join("dataset.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    let bad_class = payload("dataset");
    spec["classes"][1] = Value::String(bad_class.clone());
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let hostile_id = server.register_dataset("hostile", &hostile).await["id"]
        .as_i64()
        .unwrap();
    let refused = server
        .client
        .post(server.url("/api/jobs"))
        .json(&serde_json::json!({ "dataset_id": hostile_id, "method": "cggm", "preset": "cpu-features", "epochs": 1, "device": "cpu" }))
        .send()
        .await
        .unwrap();
    let status = refused.status();
    let answer = refused.text().await.unwrap();
    assert_eq!(status, 422, "a run on the hostile dataset: {answer}");

    // 2. A real run on a clean copy, then its stored names replaced by payloads.
    let clean = server.data_dir.join("datasets/clean");
    synth_classification(&clean);
    let dataset = server.register_dataset("clean", &clean).await["id"]
        .as_i64()
        .unwrap();
    let job = server
        .post_job(serde_json::json!({ "dataset_id": dataset, "method": "cggm", "preset": "cpu-features", "epochs": 2, "device": "cpu", "seed": 1 }))
        .await;
    server.job_succeeded(job, JOB_DEADLINE).await;
    let modality = payload("modality");
    let classes: Vec<String> = ["a0", "a1", "b0", "b1"]
        .iter()
        .map(|c| payload(c))
        .collect();
    let mut names = vec![("text".to_string(), modality.clone())];
    names.extend(
        ["a0", "a1", "b0", "b1"]
            .iter()
            .map(|c| c.to_string())
            .zip(classes.clone()),
    );
    let metric = payload("metric");

    let pool = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(server.data_dir.join("cggm.sqlite"))
            .busy_timeout(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    let (out_dir,): (String,) = sqlx::query_as("SELECT out_dir FROM jobs WHERE id = ?")
        .bind(job)
        .fetch_one(&pool)
        .await
        .unwrap();
    let events: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT seq, kind, data FROM events WHERE job_id = ?")
            .bind(job)
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut modality_renamed = false;
    for (seq, kind, data) in events {
        let mut event: Value = serde_json::from_str(&data).unwrap();
        let before = event.clone();
        rename(&mut event, &names);
        modality_renamed |= event != before;
        if kind == "finished" {
            event["test_metrics"][metric.as_str()] = serde_json::json!(0.5);
        }
        sqlx::query("UPDATE events SET data = ? WHERE job_id = ? AND seq = ?")
            .bind(event.to_string())
            .bind(job)
            .bind(seq)
            .execute(&pool)
            .await
            .unwrap();
    }
    assert!(
        modality_renamed,
        "no stored event names the modality \"text\""
    );
    pool.close().await;
    let metrics_path = Path::new(&out_dir).join("metrics.json");
    let mut metrics: Value =
        serde_json::from_slice(&std::fs::read(&metrics_path).unwrap()).unwrap();
    rename(&mut metrics, &names);
    std::fs::write(&metrics_path, serde_json::to_vec(&metrics).unwrap()).unwrap();
    let served = server.get_json(&format!("/api/jobs/{job}/metrics")).await;
    assert_eq!(
        served["test"]["classification"]["class_names"],
        serde_json::json!(classes),
        "the run's metrics.json now carries the payloads"
    );

    // The run's name, tags and notes carry payloads too, set through the API as a person would.
    let run_name = payload("name");
    let run_tag = payload("tag");
    let run_notes = payload("notes");
    let patched = server
        .client
        .patch(server.url(&format!("/api/jobs/{job}")))
        .json(&serde_json::json!({ "name": run_name, "tags": [run_tag], "notes": run_notes }))
        .send()
        .await
        .unwrap();
    let status = patched.status();
    assert!(
        status.is_success(),
        "PATCH the run's labels: {status} {}",
        patched.text().await.unwrap()
    );

    // Every page carries the policy.
    for page in ["/", "/datasets", "/models", &format!("/jobs/{job}")] {
        assert_strict_csp(&server.get(page).await, page);
    }

    let browser = Browser::start().await;
    browser.before_every_page(RECORD_VIOLATIONS).await;

    // The NiiVue viewer (WebGL 2, its built-in data: textures) works under the policy.
    let nifti = server.tiny_dataset("nifti").await;
    browser
        .goto(&server.url(&format!("/datasets/{nifti}/cases")))
        .await;
    browser.click("#case-list a").await;
    browser
        .wait_for(
            "document.querySelector('#nv-viewer').dataset.ready === '1'",
            JOB_DEADLINE,
        )
        .await;
    let mode = browser
        .script("return document.querySelector('#nv-viewer').dataset.mode;")
        .await;
    assert_eq!(
        mode, "niivue",
        "the viewer fell back to server-rendered slices"
    );
    assert_no_violation(&browser, "case viewer").await;

    browser.goto(&server.url("/datasets")).await;
    let (_, _, text) = page_state(&browser).await;
    assert!(
        text.contains("class name") && text.contains(&bad_class),
        "the datasets page does not name the refused class name as text:\n{text}"
    );
    assert_shown_as_text(&browser, "/datasets", &[]).await;

    // The run page: its test report names every class, the modality and the metric.
    browser.goto(&server.url(&format!("/jobs/{job}"))).await;
    browser
        .wait_for(
            "!document.querySelector('#test-report').hidden && !document.querySelector('#confusion').hidden",
            Duration::from_secs(30),
        )
        .await;
    let mut expected = classes.clone();
    expected.push(modality.clone());
    expected.extend([run_name.clone(), run_notes.clone()]);
    assert_shown_as_text(&browser, "run page", &expected).await;
    let header = browser
        .script("return [...document.querySelectorAll('#confusion table tr:first-child th')].slice(1).map((h) => h.textContent);")
        .await;
    assert_eq!(
        header,
        serde_json::json!(classes),
        "confusion matrix header"
    );
    let report = browser.text("#test-metrics").await;
    assert!(report.contains(&metric), "{metric:?} not in {report}");
    let modalities = browser.text("#test-modalities").await;
    assert!(modalities.contains(&modality), "{modalities}");
    // The cells' colours come through the CSSOM, which the policy allows (a style attribute would
    // be refused): the diagonal is tinted.
    let tint = browser
        .script("return getComputedStyle(document.querySelector('#confusion table tr:nth-child(2) td')).backgroundColor;")
        .await;
    assert_ne!(tint, serde_json::json!("rgba(0, 0, 0, 0)"), "{tint}");
    browser
        .script("document.querySelector('#test-report').scrollIntoView();")
        .await;
    browser
        .screenshot(&screenshots().join("xss-run-page.png"))
        .await;

    // The dashboard and the models page (server-rendered, escaped) and the overlay charts.
    browser.goto(&server.url("/")).await;
    assert_shown_as_text(
        &browser,
        "dashboard",
        &[modality.clone(), run_name.clone(), run_tag.clone()],
    )
    .await;
    let bar = browser
        .script("return document.querySelector('.modbar .bar span').style.width;")
        .await;
    assert!(
        bar.as_str().is_some_and(|w| w.ends_with('%')),
        "the dashboard's bars get no width: {bar}"
    );
    browser.goto(&server.url("/models")).await;
    assert_shown_as_text(&browser, "models", &[run_name.clone(), run_tag.clone()]).await;
    browser
        .goto(&server.url(&format!("/compare?jobs={job}")))
        .await;
    browser
        .wait_for(
            "Number(document.querySelector('.chart[data-title=\"Balance coefficients B_i\"]')?.dataset.points || 0) >= 1",
            Duration::from_secs(30),
        )
        .await;
    assert_shown_as_text(&browser, "compare", std::slice::from_ref(&modality)).await;
    browser.quit().await;
}
