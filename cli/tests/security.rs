//! Security and data safety, as a hostile web page, a network neighbour or a careless click would
//! hit them: requests with foreign `Host`/`Origin`/`Sec-Fetch-Site` headers, a token-protected
//! server read without the token, oversized bodies, stream requests for jobs that do not exist,
//! hostile NIfTI uploads, and deletion. The router is called in-process (`oneshot`).

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

fn with_headers(mut request: Request<Body>, headers: &[(&str, &str)]) -> Request<Body> {
    for (name, value) in headers {
        let name = axum::http::HeaderName::from_bytes(name.as_bytes()).expect("header name");
        request
            .headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    request
}

fn get(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    with_headers(Request::get(uri).body(Body::empty()).unwrap(), headers)
}

fn post_empty(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    with_headers(Request::post(uri).body(Body::empty()).unwrap(), headers)
}

fn post_json(uri: &str, body: serde_json::Value, headers: &[(&str, &str)]) -> Request<Body> {
    let request = Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    with_headers(request, headers)
}

// ------------------------------------------------------------------ Host (DNS rebinding)

#[tokio::test]
async fn a_request_with_a_foreign_host_is_refused_and_loopback_names_pass() {
    let app = TestApp::new().await;
    let (status, body, _) = app
        .request(get("/api/studies", &[("host", "attacker.example:8080")]))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let message = String::from_utf8_lossy(&body);
    assert!(message.contains("--allowed-host"), "{message}");
    for host in [
        "127.0.0.1:8080",
        "localhost:8080",
        "[::1]:8080",
        "localhost",
    ] {
        let (status, _, _) = app.request(get("/api/studies", &[("host", host)])).await;
        assert_eq!(status, StatusCode::OK, "{host}");
    }
}

#[tokio::test]
async fn an_allowed_host_name_is_served_besides_loopback() {
    let app = TestApp::with(|c| c.allowed_hosts = vec!["studio.lab".into()]).await;
    let (status, _, _) = app
        .request(get("/api/studies", &[("host", "studio.lab:8080")]))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = app
        .request(get("/api/studies", &[("host", "other.lab:8080")]))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Behind a reverse proxy that rewrites Host, the page's origin is the allowed name.
    let request = post_json(
        "/api/datasets",
        serde_json::json!({ "name": "proxied" }),
        &[("host", "127.0.0.1:8080"), ("origin", "https://studio.lab")],
    );
    assert_eq!(app.request(request).await.0, StatusCode::CREATED);
}

// ------------------------------------------------------------------ cross-site requests

#[tokio::test]
async fn a_cross_site_multipart_upload_is_refused_and_stores_nothing() {
    let app = TestApp::new().await;
    let files = write_case(&app.dir.path().join("upload"), "P", [8, 8, 4], false);
    let request = with_headers(
        Multipart::default().files(&files).request("/api/studies"),
        &[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://attacker.example"),
        ],
    );
    let (status, body, _) = app.request(request).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&body)
    );
    app.assert_no_upload_left();
}

#[tokio::test]
async fn a_body_less_post_from_another_site_is_refused() {
    let app = TestApp::new().await;
    let dataset = app.register_dataset("brats", 2).await;
    for headers in [
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
        vec![("origin", "null")],
        vec![
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:9999"),
        ],
    ] {
        let (status, body, _) = app
            .request(post_empty(
                &format!("/api/datasets/{dataset}/validate"),
                &headers,
            ))
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{headers:?}: {}",
            String::from_utf8_lossy(&body)
        );
    }
}

#[tokio::test]
async fn a_post_from_the_application_s_own_page_passes() {
    let app = TestApp::new().await;
    let request = post_json(
        "/api/datasets",
        serde_json::json!({ "name": "mine" }),
        &[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ],
    );
    assert_eq!(app.request(request).await.0, StatusCode::CREATED);
}

// ------------------------------------------------------------------ token

#[tokio::test]
async fn with_a_token_an_unauthenticated_read_of_a_slice_or_segmentation_is_refused() {
    let app = TestApp::with(|c| c.token = Some("s3cret".into())).await;
    for uri in [
        "/api/studies",
        "/api/studies/1/slice",
        "/api/predictions/1/seg.nii.gz",
        "/api/predictions/1/slice",
        "/api/jobs/1/log",
        "/api/datasets",
    ] {
        let (status, _, _) = app.request(get(uri, &[])).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        let (status, _, _) = app
            .request(get(uri, &[("authorization", "Bearer wrong")]))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    // A page sends the browser to the login page; the login page itself is public.
    let response = app.app();
    use tower::ServiceExt;
    let page = response.oneshot(get("/datasets", &[])).await.unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(page.headers()["location"], "/login");
    assert_eq!(app.request(get("/login", &[])).await.0, StatusCode::OK);
    let (status, _, _) = app
        .request(get("/api/studies", &[("authorization", "Bearer s3cret")]))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_login_page_trades_the_token_for_an_http_only_strict_session_cookie() {
    use tower::ServiceExt;
    let app = TestApp::with(|c| c.token = Some("s3cret".into())).await;
    let login = |token: &str| {
        Request::post("/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(format!("token={token}")))
            .unwrap()
    };
    let wrong = app.app().oneshot(login("nope")).await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get("set-cookie").is_none());

    let right = app.app().oneshot(login("s3cret")).await.unwrap();
    assert_eq!(right.status(), StatusCode::SEE_OTHER);
    let cookie = right.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let (status, _, _) = app.request(get("/api/studies", &[("cookie", &pair)])).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = app
        .request(get("/api/studies", &[("cookie", "cggm_session=forged")]))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sessions_expire_logout_revokes_and_wrong_tokens_are_slowed() {
    use tower::ServiceExt;
    let app = TestApp::with(|c| {
        c.token = Some("s3cret-token-0123456789".into());
        c.session_lifetime = Duration::from_millis(1500);
        c.secure_cookie = true;
    })
    .await;
    let login = || {
        Request::post("/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from("token=s3cret-token-0123456789"))
            .unwrap()
    };
    let session = |response: &axum::response::Response| {
        let cookie = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            cookie.contains("; Secure") && cookie.contains("Max-Age=1"),
            "{cookie}"
        );
        cookie.split(';').next().unwrap().to_string()
    };
    let read_with = |pair: &str| {
        let request = get("/api/studies", &[("cookie", pair)]);
        let app = &app;
        async move { app.request(request).await.0 }
    };
    // Logout revokes the session, also for a copy of the cookie.
    let pair = session(&app.app().oneshot(login()).await.unwrap());
    assert_eq!(read_with(&pair).await, StatusCode::OK);
    let out = app
        .app()
        .oneshot(with_headers(
            Request::post("/logout").body(Body::empty()).unwrap(),
            &[("cookie", &pair), ("origin", "http://localhost")],
        ))
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(out.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(read_with(&pair).await, StatusCode::UNAUTHORIZED);
    // A session ends on its own after the lifetime.
    let pair = session(&app.app().oneshot(login()).await.unwrap());
    assert_eq!(read_with(&pair).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(read_with(&pair).await, StatusCode::UNAUTHORIZED);
    // Wrong tokens are answered one at a time, a second each: three guesses at once take >= 3 s.
    let started = std::time::Instant::now();
    let guesses = (0..3).map(|i| {
        let app = app.app();
        let header = format!("Bearer guess-{i}");
        async move {
            app.oneshot(get("/api/studies", &[("authorization", &header)]))
                .await
                .unwrap()
                .status()
        }
    });
    for status in futures_util::future::join_all(guesses).await {
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn the_token_is_read_from_a_file_and_an_empty_or_short_one_refuses_the_start() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: cggm_server::ServeArgs,
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "  from-file-0123456789  \nignored second line\n").unwrap();
    let args = Cli::parse_from(["cggm", "--token-file", file.to_str().unwrap()]).serve;
    assert_eq!(
        cggm_server::config::resolve_token(&args)
            .unwrap()
            .as_deref(),
        Some("from-file-0123456789")
    );
    // Asked for but empty, blank or guessable: the server must not start open.
    for content in ["", "\n", "   \t \n", "x\n", "fifteen-chars-x\n"] {
        std::fs::write(&file, content).unwrap();
        let err = cggm_server::config::resolve_token(&args)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 16"), "{content:?}: {err}");
    }
    for token in ["", "   ", "a"] {
        let args = Cli::parse_from(["cggm", "--token", token]).serve;
        assert!(
            cggm_server::config::resolve_token(&args).is_err(),
            "{token:?}"
        );
    }
    let none = Cli::parse_from(["cggm"]).serve;
    if std::env::var_os("CGGM_TOKEN").is_none() && std::env::var_os("CGGM_TOKEN_FILE").is_none() {
        assert_eq!(cggm_server::config::resolve_token(&none).unwrap(), None);
    }
    let missing = Cli::parse_from(["cggm", "--token-file", "/nonexistent/token"]).serve;
    let err = cggm_server::config::resolve_token(&missing)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/token"), "{err}");
}

// ------------------------------------------------------------------ headers

#[tokio::test]
async fn responses_carry_security_headers_and_patient_data_is_never_cached() {
    use tower::ServiceExt;
    let app = TestApp::new().await;
    let study = app.upload_study("P").await;
    for uri in [
        format!("/api/studies/{study}/slice?modality=flair"),
        format!("/api/studies/{study}"),
        "/".to_string(),
    ] {
        let response = app.app().oneshot(get(&uri, &[])).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{uri}");
        assert_eq!(headers["x-frame-options"], "DENY", "{uri}");
        assert_strict_csp(headers, &uri);
        assert_eq!(headers["cache-control"], "no-store", "{uri}");
        assert_eq!(
            headers["cross-origin-resource-policy"], "same-origin",
            "{uri}: another site's page could embed it"
        );
    }
    // Static assets carry the policy too (a script file opened as a page), and may be cached.
    let asset = app.app().oneshot(get("/static/app.js", &[])).await.unwrap();
    assert_eq!(asset.status(), StatusCode::OK);
    assert_strict_csp(asset.headers(), "/static/app.js");
    assert!(asset.headers().get("cache-control").is_none());
    let refused = app
        .app()
        .oneshot(get("/api/studies", &[("host", "attacker.example")]))
        .await
        .unwrap();
    assert_eq!(refused.headers()["x-content-type-options"], "nosniff");
}

/// A Content-Security-Policy that lets only this server's own scripts and styles run: no inline
/// script, handler or `style` attribute, no plug-ins, no framing, no foreign form targets.
fn assert_strict_csp(headers: &axum::http::HeaderMap, uri: &str) {
    let csp = headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(
            csp.split(';').any(|d| d.trim() == directive),
            "{uri}: {directive:?} missing from {csp:?}"
        );
    }
    for loose in ["'unsafe-inline'", "'unsafe-eval'", "*"] {
        assert!(!csp.contains(loose), "{uri}: {loose} in {csp:?}");
    }
}

// ------------------------------------------------------------------ limits

#[tokio::test]
async fn a_json_body_over_the_small_limit_is_refused_with_413_while_uploads_may_be_large() {
    let app = TestApp::new().await;
    let padding = "x".repeat(100 * 1024);
    let (status, body) = app
        .post_json(
            "/api/datasets",
            serde_json::json!({ "name": "big", "path": padding }),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    // A study upload of more than the small limit still goes through.
    let files: Vec<std::path::PathBuf> = ["flair", "t1ce", "t1", "t2"]
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let path = app.dir.path().join(format!("big/Big_{m}.nii"));
            write_nifti(&path, &volume([40, 40, 20], i as f32));
            path
        })
        .collect();
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(total > 64 * 1024, "{total}");
    let (status, body) = app
        .post_multipart("/api/studies", &Multipart::default().files(&files))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn ten_thousand_stream_requests_for_unknown_or_finished_jobs_leave_no_channel_behind() {
    let app = TestApp::new().await;
    let finished = app.finished_run().await;
    assert_eq!(app.state.runner.live_channels(), 0);
    for id in 1000..11_000 {
        let (status, _, _) = app
            .request(get(&format!("/api/jobs/{id}/stream"), &[]))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    for _ in 0..100 {
        let (status, body, _) = app
            .request(get(&format!("/api/jobs/{finished}/stream"), &[]))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(String::from_utf8_lossy(&body).contains("succeeded"));
    }
    assert_eq!(app.state.runner.live_channels(), 0);
}

#[tokio::test]
async fn the_log_endpoint_returns_only_the_tail_of_a_large_log() {
    let app = TestApp::new().await;
    let id = app.finished_run().await;
    let log = app.state.runner.log_path(id);
    let mut text = "old line\n".repeat(200_000);
    text.push_str("THE LAST LINE\n");
    std::fs::write(&log, text).unwrap();
    let (status, body, _) = app.request(get(&format!("/api/jobs/{id}/log"), &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 512 * 1024);
    assert!(String::from_utf8_lossy(&body).ends_with("THE LAST LINE\n"));
}

// ------------------------------------------------------------------ hostile uploads

#[tokio::test]
async fn hostile_uploads_sent_at_once_are_all_rejected_with_422_and_leave_nothing() {
    let app = TestApp::new().await;
    let good = write_case(&app.dir.path().join("good"), "H", [8, 8, 4], false);
    let zeros = vec![0u8; 4 << 20];
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("bomb", hostile_nifti([1500, 1500, 1500], &zeros)),
        ("liar", hostile_nifti([20000, 20000, 20000], &[])),
        ("constant", hostile_nifti([1024, 1024, 1024], &zeros)),
        ("truncated", hostile_nifti([300, 300, 300], &zeros)),
        ("corrupt", {
            let mut bytes = hostile_nifti([8, 8, 4], &[1u8; 256]);
            let middle = bytes.len() / 2;
            bytes.truncate(middle);
            bytes
        }),
    ];
    let uploads = hostile.iter().map(|(what, bytes)| {
        let mut form = Multipart::default().file("files", "H_flair.nii.gz", bytes.clone());
        for f in &good[1..] {
            form = form.file(
                "files",
                f.file_name().unwrap().to_str().unwrap(),
                std::fs::read(f).unwrap(),
            );
        }
        let app = &app;
        async move { (*what, app.post_multipart("/api/studies", &form).await) }
    });
    for (what, (status, body)) in futures_util::future::join_all(uploads).await {
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("H_flair.nii.gz"), "{what}: {error}");
        assert!(
            !error.contains(&app.data_dir().display().to_string()),
            "{what}: the error shows a server path: {error}"
        );
    }
    app.assert_no_upload_left();
}

// ------------------------------------------------------------------ deletion

#[tokio::test]
async fn deleting_a_study_removes_its_files_and_rows_and_nothing_else() {
    let app = TestApp::new().await;
    let keep = app.upload_study("Keep").await;
    let gone = app.upload_study("Gone").await;
    let gone_dir = app.data_dir().join(format!("studies/study-{gone}"));
    assert!(gone_dir.is_dir());
    let request = Request::delete(format!("/api/studies/{gone}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.request(request).await.0, StatusCode::NO_CONTENT);
    assert!(!gone_dir.exists());
    assert_eq!(
        app.get_json(&format!("/api/studies/{gone}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert!(app
        .data_dir()
        .join(format!("studies/study-{keep}"))
        .is_dir());
    let (_, list) = app.get_json("/api/studies").await;
    let ids: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [keep]);
}

#[tokio::test]
async fn a_running_run_cannot_be_deleted_and_a_finished_one_goes_with_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let slow = fake_cggm(dir.path(), 30.0);
    let app = TestApp::with(|c| c.cggm_bin = slow).await;
    let dataset = app.register_dataset("brats", 2).await;
    let id = app.start_training(dataset).await;
    app.wait_for_job(id, &["running"], DEADLINE).await;
    let delete = || {
        Request::delete(format!("/api/jobs/{id}"))
            .body(Body::empty())
            .unwrap()
    };
    let (status, body, _) = app.request(delete()).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _) = app
        .post_json(&format!("/api/jobs/{id}/cancel"), serde_json::json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    app.wait_for_job(id, &["cancelled"], DEADLINE).await;
    let run_dir = app.data_dir().join(format!("runs/job-{id}"));
    assert!(run_dir.is_dir());
    assert_eq!(app.request(delete()).await.0, StatusCode::NO_CONTENT);
    assert!(!run_dir.exists());
    assert!(!app.state.runner.log_path(id).exists());
    assert_eq!(
        app.get_json(&format!("/api/jobs/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
}
