//! Limits a user (or another web page) runs into, called in-process (`oneshot`): every change needs
//! the application's `X-CGGM-Request` header, a long run's history comes in pages (the live stream
//! replays only the newest events on connect), and the retention period deletes old patient data
//! at a given "now" while runs are kept.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cggm_server::retention::{sweep, RetentionPolicy};
use common::*;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

async fn study_ids(app: &TestApp) -> Vec<i64> {
    let (_, list) = app.get_json("/api/studies").await;
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_i64().unwrap())
        .collect()
}

/// A finished (fake) training run with its own events, plus `extra` step events stored after
/// them; returns the job id and every stored sequence number in order.
async fn finished_run_with_events(app: &TestApp, extra: i64) -> (i64, Vec<i64>) {
    let id = app.finished_run().await;
    let (last,): (i64,) =
        sqlx::query_as("SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?")
            .bind(id)
            .fetch_one(&app.state.pool)
            .await
            .unwrap();
    for seq in last + 1..=last + extra {
        sqlx::query(
            "INSERT INTO events (job_id, seq, kind, time, data) VALUES (?, ?, 'step', ?, ?)",
        )
        .bind(id)
        .bind(seq)
        .bind(seq as f64)
        .bind(serde_json::json!({ "event": "step", "step": seq }).to_string())
        .execute(&app.state.pool)
        .await
        .unwrap();
    }
    let seqs: Vec<(i64,)> = sqlx::query_as("SELECT seq FROM events WHERE job_id = ? ORDER BY seq")
        .bind(id)
        .fetch_all(&app.state.pool)
        .await
        .unwrap();
    (id, seqs.into_iter().map(|r| r.0).collect())
}

fn seqs_of(page: &serde_json::Value) -> Vec<i64> {
    page.as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect()
}

// ------------------------------------------------------------------ X-CGGM-Request

#[tokio::test]
async fn changes_without_the_application_header_are_refused_with_a_403_that_names_it() {
    let app = TestApp::new().await;
    let kept = app.upload_study("Kept").await;
    let same_origin = |request: Request<Body>| {
        let mut request = request;
        let headers = request.headers_mut();
        headers.insert("host", "127.0.0.1:8080".parse().unwrap());
        headers.insert("origin", "http://127.0.0.1:8080".parse().unwrap());
        headers.insert("sec-fetch-site", "same-origin".parse().unwrap());
        request
    };
    // A multipart upload, a body-less POST and a DELETE, each from the application's own origin
    // but without the header a cross-site form cannot send.
    let files = write_case(&app.dir.path().join("New"), "New", [8, 8, 4], false);
    let upload = same_origin(Multipart::default().files(&files).request("/api/studies"));
    let cancel = same_origin(
        Request::post("/api/jobs/1/cancel")
            .body(Body::empty())
            .unwrap(),
    );
    let delete = same_origin(
        Request::delete(format!("/api/studies/{kept}"))
            .body(Body::empty())
            .unwrap(),
    );
    for request in [upload, cancel, delete] {
        let what = format!("{} {}", request.method(), request.uri());
        let (status, body, _) = app.request_raw(request).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
        let message = String::from_utf8_lossy(&body);
        assert!(message.contains("X-CGGM-Request"), "{what}: {message}");
    }
    assert_eq!(
        study_ids(&app).await,
        [kept],
        "nothing was created or deleted"
    );

    // A wrong value is refused too; the right one passes.
    let wrong = Request::delete(format!("/api/studies/{kept}"))
        .header(APP_HEADER, "yes")
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.request_raw(wrong).await.0, StatusCode::FORBIDDEN);
    let right = Request::delete(format!("/api/studies/{kept}"))
        .header(APP_HEADER, "1")
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.request_raw(right).await.0, StatusCode::NO_CONTENT);
    assert!(study_ids(&app).await.is_empty());
}

#[tokio::test]
async fn the_login_form_and_reads_need_no_application_header() {
    let app = TestApp::with(|c| c.token = Some("s3cret".into())).await;
    let login = Request::post("/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from("token=s3cret"))
        .unwrap();
    assert_eq!(app.request_raw(login).await.0, StatusCode::SEE_OTHER);
    let read = Request::get("/api/studies")
        .header("authorization", "Bearer s3cret")
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.request_raw(read).await.0, StatusCode::OK);
}

#[test]
fn the_page_s_fetch_helper_sends_the_application_header_and_is_the_only_way_to_make_changes() {
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/static");
    let script = std::fs::read_to_string(web.join("app.js")).unwrap();
    let (before, helper) = script
        .split_once("async function api(")
        .expect("app.js has the api() fetch helper");
    let end = helper.find("\n}\n").expect("end of api()");
    let body = &helper[..end];
    assert!(body.contains("\"X-CGGM-Request\": \"1\""), "{body}");
    // Any other fetch in the front end is a plain GET (a change made there would lack the
    // header and be refused).
    let mut others = vec![("app.js".to_string(), format!("{before}{}", &helper[end..]))];
    for entry in std::fs::read_dir(&web).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".js") && name != "app.js" {
            others.push((name, std::fs::read_to_string(entry.path()).unwrap()));
        }
    }
    for (file, text) in others {
        for (at, _) in text.match_indices("fetch(") {
            let call: String = text[at..].chars().take(160).collect();
            let call = call.split(';').next().unwrap_or("");
            assert!(
                !call.contains("method"),
                "{file}: a request with a method outside api(): {call}"
            );
        }
    }
}

// ------------------------------------------------------------------ paged history

#[tokio::test]
async fn the_events_endpoint_pages_forwards_with_after_and_backwards_with_before() {
    let app = TestApp::new().await;
    let (id, all) = finished_run_with_events(&app, 40).await;
    assert!(all.len() > 40);

    let (status, first) = app
        .get_json(&format!("/api/jobs/{id}/events?limit=10"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seqs_of(&first), all[..10]);
    let (_, next) = app
        .get_json(&format!("/api/jobs/{id}/events?after={}&limit=10", all[9]))
        .await;
    assert_eq!(seqs_of(&next), all[10..20]);
    // Backwards from the newest: the last 7 before the final event, oldest first.
    let newest = *all.last().unwrap();
    let (_, older) = app
        .get_json(&format!("/api/jobs/{id}/events?before={newest}&limit=7"))
        .await;
    let n = all.len();
    assert_eq!(seqs_of(&older), all[n - 8..n - 1]);
    // No limit: the whole (short) history; a silly limit is clamped, not an error.
    let (_, whole) = app.get_json(&format!("/api/jobs/{id}/events")).await;
    assert_eq!(seqs_of(&whole), all);
    let (status, one) = app
        .get_json(&format!("/api/jobs/{id}/events?limit=0"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seqs_of(&one), all[..1]);
}

#[tokio::test]
async fn the_live_stream_replays_only_the_newest_events_and_says_where_older_ones_start() {
    let app = TestApp::new().await;
    let (id, all) = finished_run_with_events(&app, 40).await;
    let (status, body, content_type) = app.get(&format!("/api/jobs/{id}/stream?history=5")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let text = String::from_utf8(body).unwrap();
    let ids = event_ids(&text);
    let n = all.len();
    assert_eq!(ids, all[n - 5..], "{text}");
    let history = text
        .split("\n\n")
        .find(|block| block.contains("event: history") || block.contains("event:history"))
        .unwrap_or_else(|| panic!("a history event first: {text}"));
    assert!(
        history.contains(&format!("\"before\":{}", all[n - 5])),
        "{history}"
    );
    assert!(text.contains("succeeded"), "the state follows: {text}");

    // A short history is sent whole, without the marker.
    let (_, body, _) = app
        .get(&format!("/api/jobs/{id}/stream?history=1000"))
        .await;
    let text = String::from_utf8(body).unwrap();
    assert!(!text.contains("event: history"), "{text}");
    assert_eq!(
        text.matches("\nid:").count() + usize::from(text.starts_with("id:")),
        n
    );
}

/// The `id:` of every event of a Server-Sent Events body, in order.
fn event_ids(text: &str) -> Vec<i64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
        .map(|v| v.trim().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn the_live_stream_starts_after_the_event_the_page_has_already_loaded() {
    let app = TestApp::new().await;
    let (id, all) = finished_run_with_events(&app, 40).await;
    let (status, body, _) = app
        .get(&format!("/api/jobs/{id}/stream?after={}", all[29]))
        .await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    let ids = event_ids(&text);
    assert_eq!(ids, all[30..], "{text}");
    assert!(!text.contains("event: history"), "{text}");
    assert!(text.contains("succeeded"), "the state follows: {text}");
}

// ------------------------------------------------------------------ retention

#[tokio::test]
async fn the_retention_sweep_deletes_old_studies_and_predictions_and_keeps_runs_unless_opted_in() {
    let app = TestApp::new().await;
    let old = app.upload_study("Old").await;
    let young = app.upload_study("Young").await;
    let (run, _) = finished_run_with_events(&app, 0).await;
    let (status, prediction) = app
        .post_json(
            "/api/predictions",
            serde_json::json!({ "study_id": young, "checkpoint_job_id": run }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{prediction}");
    let prediction = prediction["id"].as_i64().unwrap();
    app.wait_for_job(prediction, &["succeeded"], DEADLINE).await;

    // "Now" is 40 days after everything was made; the old study is 40 days older still, the
    // young one and the prediction are 40 days old, the run too.
    let day = 86_400.0;
    let made = cggm_server::db::now();
    sqlx::query("UPDATE studies SET created_at = ? WHERE id = ?")
        .bind(made - 40.0 * day)
        .bind(old)
        .execute(&app.state.pool)
        .await
        .unwrap();
    let now = made + 40.0 * day;
    let old_dir = app.data_dir().join(format!("studies/study-{old}"));
    let young_dir = app.data_dir().join(format!("studies/study-{young}"));
    assert!(old_dir.is_dir() && young_dir.is_dir());

    // 60 days: only the old study (80 days) goes.
    let policy = RetentionPolicy::from_args(Some(60.0), false)
        .unwrap()
        .unwrap();
    let report = sweep(&app.state, policy, now).await.unwrap();
    assert_eq!(report.studies, [old]);
    assert!(report.predictions.is_empty() && report.runs.is_empty());
    assert!(!old_dir.exists() && young_dir.is_dir());

    // 30 days: the prediction and the young study go; the run stays (not opted in).
    let policy = RetentionPolicy::from_args(Some(30.0), false)
        .unwrap()
        .unwrap();
    let report = sweep(&app.state, policy, now).await.unwrap();
    assert_eq!(report.predictions, [prediction]);
    assert_eq!(report.studies, [young]);
    assert!(report.runs.is_empty());
    assert!(!young_dir.exists());
    assert_eq!(
        app.get_json(&format!("/api/jobs/{prediction}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get_json(&format!("/api/jobs/{run}")).await.0,
        StatusCode::OK
    );
    let (run_dir,): (String,) = sqlx::query_as("SELECT out_dir FROM jobs WHERE id = ?")
        .bind(run)
        .fetch_one(&app.state.pool)
        .await
        .unwrap();
    let run_dir = std::path::PathBuf::from(run_dir);
    assert!(run_dir.is_dir(), "{}", run_dir.display());

    // Opted in, the run goes too, with its folder.
    let policy = RetentionPolicy::from_args(Some(30.0), true)
        .unwrap()
        .unwrap();
    let report = sweep(&app.state, policy, now).await.unwrap();
    assert_eq!(report.runs, [run]);
    assert_eq!(
        app.get_json(&format!("/api/jobs/{run}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert!(!run_dir.exists(), "{}", run_dir.display());
}

#[test]
fn a_retention_period_that_is_not_a_positive_number_is_refused_with_the_flag_named() {
    assert!(RetentionPolicy::from_args(None, false).unwrap().is_none());
    for bad in [0.0, -3.0, f64::NAN] {
        let message = RetentionPolicy::from_args(Some(bad), false)
            .unwrap_err()
            .to_string();
        assert!(message.contains("--retention-days"), "{message}");
    }
    let message = RetentionPolicy::from_args(None, true)
        .unwrap_err()
        .to_string();
    assert!(message.contains("--retention-days"), "{message}");
}
