//! Resource bounds, each as the attack that found it: run options with no upper bound, an unbounded
//! job queue, multipart text fields buffered whole, bodies stalled inside a text field, live
//! streams that fill every connection, bad DICOM zips answered with 500, and plain-text
//! rejections. In-process (`oneshot`) where no real connection matters; the stalled uploads
//! against a real `cggm serve`.

mod common;

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use common::live::LiveServer;
use common::procs::memory_mb;
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

const BOUNDARY: &str = "bounds-test-boundary";

fn error_of(answer: &serde_json::Value) -> String {
    answer["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no JSON error: {answer}"))
        .to_string()
}

/// A server whose jobs run 30 s (the stand-in `cggm` sleeps), so that they stay queued.
async fn slow_app(
    adjust: impl FnOnce(&mut cggm_server::config::Config),
) -> (TestApp, tempfile::TempDir) {
    let slow = tempfile::tempdir().unwrap();
    let bin = fake_cggm(slow.path(), 30.0);
    let app = TestApp::with(|c| {
        c.cggm_bin = bin;
        adjust(c);
    })
    .await;
    (app, slow)
}

async fn job_count(app: &TestApp) -> usize {
    app.get_json("/api/jobs").await.1.as_array().unwrap().len()
}

// ------------------------------------------------------------------ finding 7: run options

#[tokio::test]
async fn run_options_past_their_bounds_and_absent_devices_get_422_naming_them_and_queue_nothing() {
    let app = TestApp::new().await;
    let run = app.finished_run().await;
    let (_, datasets) = app.get_json("/api/datasets").await;
    let dataset = datasets[0]["id"].as_i64().unwrap();
    let cases = [
        (json!({ "workers": 100000 }), "workers 100000", "0 to 64"),
        (json!({ "crop": 65536 }), "crop 65536", "16 to 512"),
        (
            json!({ "batch_size": 1000000000u64 }),
            "batch_size 1000000000",
            "1 to 4096",
        ),
        (
            json!({ "epochs": 1000000000000u64 }),
            "epochs 1000000000000",
            "1 to 100000",
        ),
        (json!({ "lr": 1e6 }), "lr 1000000", "at most 10"),
        (json!({ "device": "cuda:99" }), "cuda:99", "device"),
    ];
    for (options, named, range) in &cases {
        let mut body = tiny_training_request(dataset, "joint");
        body.as_object_mut()
            .unwrap()
            .extend(options.as_object().unwrap().clone());
        let (status, answer) = app.post_json("/api/jobs", body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{options}: {answer}"
        );
        let error = error_of(&answer);
        assert!(
            error.contains(named) && error.contains(range),
            "{options}: {error}"
        );
    }
    // A comparison's shared options and its grid are run options too.
    let (status, answer) = app
        .post_json(
            "/api/comparisons",
            json!({ "dataset_id": dataset, "methods": ["joint"], "seeds": [1],
                    "options": { "preset": "tiny", "workers": 100000 } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(error_of(&answer).contains("workers 100000"), "{answer}");
    let (status, answer) = app
        .post_json(
            "/api/comparisons",
            json!({ "dataset_id": dataset, "methods": ["cggm"], "seeds": [1], "rho": [1e9],
                    "options": { "preset": "tiny" } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(error_of(&answer).contains("rho 1000000000"), "{answer}");
    let (status, answer) = app
        .post_json(
            "/api/comparisons",
            json!({ "dataset_id": dataset, "methods": ["joint"], "seeds": [1],
                    "options": { "preset": "tiny", "device": "cuda:99" } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(error_of(&answer).contains("cuda:99"), "{answer}");
    assert_eq!(app.get_json("/api/comparisons").await.1, json!([]));
    // A prediction's device is checked as well.
    let study = app.upload_study("Case").await;
    for device in ["cuda:99", "tpu"] {
        let (status, answer) = app
            .post_json(
                "/api/predictions",
                json!({ "study_id": study, "checkpoint_job_id": run, "device": device }),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{device}: {answer}"
        );
        assert!(error_of(&answer).contains(device), "{answer}");
    }
    assert_eq!(job_count(&app).await, 1, "nothing was queued");
    // The bounds are in the vocabulary, for the form and for scripts.
    let (_, vocabulary) = app.get_json("/api/vocabulary").await;
    let workers = vocabulary["options"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "workers")
        .unwrap();
    assert_eq!(workers["range"]["max"], 64.0, "{workers}");
}

// ------------------------------------------------------------------ finding 6: the queue

#[tokio::test]
async fn the_queue_holds_at_most_max_queued_jobs_and_a_comparison_queues_all_or_nothing() {
    let (app, _slow) = slow_app(|c| c.bounds.max_queued_jobs = 3).await;
    let dataset = app.register_dataset("brats", 2).await;
    let running = app.start_training(dataset).await;
    app.wait_for_job(running, &["running"], FAKE_JOB_DEADLINE)
        .await;
    let mut queued = Vec::new();
    for _ in 0..3 {
        queued.push(app.start_training(dataset).await);
    }
    // Waiting jobs nobody watches have no live channel (the running one neither).
    assert_eq!(app.state.runner.live_channels(), 0);
    let (status, answer) = app
        .post_json("/api/jobs", tiny_training_request(dataset, "cggm"))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    let error = error_of(&answer);
    assert!(
        error.contains("queue is full") && error.contains("--max-queued-jobs"),
        "{error}"
    );
    // With one place free, a comparison of two runs queues nothing at all.
    let (status, _) = app
        .post_json(&format!("/api/jobs/{}/cancel", queued[0]), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = app
        .post_json(
            "/api/comparisons",
            json!({ "dataset_id": dataset, "methods": ["joint"], "seeds": [1, 2],
                    "options": { "preset": "tiny", "epochs": 1 } }),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert!(error_of(&answer).contains("adds 2"), "{answer}");
    let (_, comparisons) = app.get_json("/api/comparisons").await;
    assert_eq!(comparisons, json!([]));
    assert_eq!(
        job_count(&app).await,
        4,
        "one running, three queued (one cancelled)"
    );
    // Per comparison: at most 100 runs, counted before the grid is built (10^6 cells here).
    let (status, answer) = app
        .post_json(
            "/api/comparisons",
            json!({ "dataset_id": dataset, "methods": ["joint"], "seeds": (0..101).collect::<Vec<_>>() }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        error_of(&answer).contains("101 runs: at most 100"),
        "{answer}"
    );
    let grid: Vec<f64> = (1..=1000).map(|i| i as f64 / 1000.0).collect();
    let started = Instant::now();
    let (status, answer) = app
        .post_json(
            "/api/comparisons",
            json!({ "dataset_id": dataset, "methods": ["cggm"], "seeds": [1], "rho": grid,
                    "lambda": grid }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(error_of(&answer).contains("1000000 runs"), "{answer}");
    eprintln!("a 10^6-run grid refused in {:?}", started.elapsed());
    // A viewer of a waiting job still gets a channel, and sees it cancelled.
    let watched = queued[1];
    let response = app
        .app()
        .oneshot(
            Request::get(format!("/api/jobs/{watched}/stream"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(app.state.runner.live_channels(), 1);
    let (status, _) = app
        .post_json(&format!("/api/jobs/{watched}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = tokio::time::timeout(
        Duration::from_secs(10),
        axum::body::to_bytes(response.into_body(), usize::MAX),
    )
    .await
    .expect("the stream of a cancelled job ends")
    .unwrap();
    assert!(String::from_utf8_lossy(&body).contains("cancelled"));
    assert_eq!(app.state.runner.live_channels(), 0);
}

// ------------------------------------------------------------------ finding 4: live streams

#[tokio::test]
async fn live_streams_are_capped_per_job_and_in_all_and_a_closed_one_frees_its_slot() {
    let (app, _slow) = slow_app(|c| {
        c.max_jobs = 2;
        c.bounds.max_streams_per_job = 2;
        c.bounds.max_streams = 3;
    })
    .await;
    let dataset = app.register_dataset("brats", 2).await;
    let a = app.start_training(dataset).await;
    let b = app.start_training(dataset).await;
    for job in [a, b] {
        app.wait_for_job(job, &["running"], FAKE_JOB_DEADLINE).await;
    }
    let open = |job: i64| {
        let router = app.app();
        async move {
            router
                .oneshot(
                    Request::get(format!("/api/jobs/{job}/stream"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap()
        }
    };
    let json_error = |response: axum::response::Response| async move {
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        (status, error_of(&answer))
    };
    let first = open(a).await;
    let second = open(a).await;
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let (status, error) = json_error(open(a).await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{error}");
    assert!(error.contains("--max-streams-per-job"), "{error}");
    let other = open(b).await;
    assert_eq!(other.status(), StatusCode::OK);
    let (status, error) = json_error(open(b).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert!(error.contains("--max-streams"), "{error}");
    assert_eq!(app.state.gates.open_streams(), 3);
    // A viewer that goes away gives its slot back.
    drop(first);
    assert_eq!(app.state.gates.open_streams(), 2);
    let again = open(b).await;
    assert_eq!(again.status(), StatusCode::OK);
    drop((second, other, again));
    assert_eq!(app.state.gates.open_streams(), 0);
}

// ------------------------------------------------------------------ finding 5: multipart fields

#[tokio::test]
async fn names_text_fields_and_part_counts_of_uploads_are_capped() {
    let app = TestApp::new().await;
    let files = write_case(&app.dir.path().join("Case"), "Case", [8, 8, 4], false);
    let too_long = "n".repeat(201);
    let parts = |n: usize| {
        (0..n).fold(Multipart::default(), |form, i| {
            form.text(&format!("field{i}"), "x")
        })
    };
    let both = ["/api/studies", "/api/studies/dicom"];
    let cases = [
        (
            Multipart::default().text("name", &too_long).files(&files),
            &both[..],
            StatusCode::UNPROCESSABLE_ENTITY,
            "200 characters",
        ),
        (
            Multipart::default()
                .text("note", &"x".repeat(65 * 1024))
                .files(&files),
            &both[..],
            StatusCode::PAYLOAD_TOO_LARGE,
            "over 65536 bytes",
        ),
        (
            parts(65),
            &both[..1],
            StatusCode::UNPROCESSABLE_ENTITY,
            "more than 64 parts",
        ),
        (
            parts(4097),
            &both[1..],
            StatusCode::UNPROCESSABLE_ENTITY,
            "more than 4096 parts",
        ),
    ];
    for (form, routes, status, message) in cases {
        for route in routes {
            let (got, answer) = app.post_multipart(route, &form).await;
            assert_eq!(got, status, "{route}: {answer}");
            assert!(error_of(&answer).contains(message), "{route}: {answer}");
        }
    }
    app.assert_no_upload_left();
    // 200 characters (of any script) are fine.
    let name = "é".repeat(200);
    let (status, study) = app
        .post_multipart(
            "/api/studies",
            &Multipart::default().text("name", &name).files(&files),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{study}");
    assert_eq!(study["name"], name.as_str());
    // A comparison's name too.
    let dataset = app.register_dataset("brats", 2).await;
    let (status, answer) = app
        .post_json(
            "/api/comparisons",
            json!({ "name": too_long, "dataset_id": dataset, "methods": ["joint"], "seeds": [1] }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(error_of(&answer).contains("200"), "{answer}");
}

/// A multipart request whose one text field `field` goes on for 256 MiB, made chunk by chunk as
/// the server reads it; `pulled` counts the bytes it read.
fn endless_text_field(field: &str, pulled: Arc<AtomicUsize>) -> Request<Body> {
    let head = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n");
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let chunks = std::iter::once(Bytes::from(head)).chain(std::iter::repeat_n(chunk, 4096));
    let stream = futures_util::stream::iter(chunks.map(move |c| {
        pulled.fetch_add(c.len(), Ordering::SeqCst);
        Ok::<_, std::io::Error>(c)
    }));
    Request::post("/api/studies")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Body::from_stream(stream))
        .unwrap()
}

#[tokio::test]
async fn an_endless_text_field_is_refused_at_its_limit_without_reading_the_rest() {
    let app = TestApp::new().await;
    for (field, status) in [
        ("name", StatusCode::UNPROCESSABLE_ENTITY),
        ("note", StatusCode::PAYLOAD_TOO_LARGE),
    ] {
        let pulled = Arc::new(AtomicUsize::new(0));
        let (got, body, _) = app.request(endless_text_field(field, pulled.clone())).await;
        assert_eq!(got, status, "{field}: {}", String::from_utf8_lossy(&body));
        let read = pulled.load(Ordering::SeqCst);
        // Before: the whole field (256 MiB) was read into memory, then stored as the name.
        assert!(read < 1 << 20, "{field}: {read} bytes read of 256 MiB");
    }
    app.assert_no_upload_left();
}

// ------------------------------------------------------------------ finding 4: stalled bodies

/// A request whose body sends `head` and then nothing, ever.
fn stalled(uri: &str, content_type: &str, head: &str) -> Request<Body> {
    let first =
        futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(head.to_string()))]);
    let stream = futures_util::StreamExt::chain(first, futures_util::stream::pending());
    Request::post(uri)
        .header("content-type", content_type)
        .body(Body::from_stream(stream))
        .unwrap()
}

#[tokio::test]
async fn a_body_stalled_in_a_text_field_or_in_json_is_cut_after_the_idle_timeout_with_408() {
    let app = TestApp::with(|c| c.bounds.body_idle_timeout = Duration::from_millis(500)).await;
    let multipart = format!("multipart/form-data; boundary={BOUNDARY}");
    let requests = [
        stalled(
            "/api/studies",
            &multipart,
            &format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nhalf a na"
            ),
        ),
        stalled(
            "/api/studies/dicom",
            &multipart,
            &format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhalf"),
        ),
        stalled(
            "/api/jobs",
            "application/json",
            "{\"dataset_id\": 1, \"meth",
        ),
    ];
    for request in requests {
        let what = request.uri().to_string();
        let started = Instant::now();
        let (status, body, content_type) =
            tokio::time::timeout(Duration::from_secs(10), app.request(request))
                .await
                .unwrap_or_else(|_| panic!("{what}: a stalled body held the request for 10 s"));
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{what}: {answer}");
        assert!(content_type.starts_with("application/json"), "{what}");
        assert!(error_of(&answer).contains("stalled"), "{what}: {answer}");
        assert!(started.elapsed() < Duration::from_secs(5), "{what}");
    }
    app.assert_no_upload_left();
}

/// Opens `count` connections that each send a study upload's headers and the start of its `name`
/// field, then stall.
async fn stalled_uploads(address: &str, count: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let request = format!(
        "POST /api/studies HTTP/1.1\r\nHost: {address}\r\nX-CGGM-Request: 1\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 10000000\r\n\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nstalled na"
    );
    let mut streams = Vec::new();
    for _ in 0..count {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        streams.push(stream);
    }
    streams
}

/// `GET /api/health` on a new connection each time (a pooled one would prove nothing about free
/// slots), every 100 ms for `period`; every answer must be a 200 within 5 s. The latencies.
async fn health_throughout(server: &LiveServer, period: Duration, load: &str) -> Vec<Duration> {
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed() < period {
        let sent = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            fresh.get(server.url("/api/health")).send(),
        )
        .await;
        let ok = matches!(&answer, Ok(Ok(r)) if r.status() == StatusCode::OK);
        assert!(
            ok,
            "health failed {:?} into the test with {load}: {answer:?}",
            started.elapsed()
        );
        latencies.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    latencies.sort();
    latencies
}

/// Reads each connection's answer to its end (the server closes it); the status of each.
async fn statuses_of(
    streams: Vec<tokio::net::TcpStream>,
) -> std::collections::BTreeMap<u16, usize> {
    use tokio::io::AsyncReadExt;
    let mut statuses = std::collections::BTreeMap::new();
    for mut stream in streams {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("the server closes a stalled upload's connection")
            .ok();
        let text = String::from_utf8_lossy(&answer);
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        *statuses.entry(status).or_default() += 1;
    }
    statuses
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The limits come through the environment (`CGGM_*`), which a server without them ignores: the
/// same test then shows the attack working (health failing, stalled uploads held).
async fn stalled_uploads_against(count: usize, env: &[(&str, &str)], idle: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let server = LiveServer::start_with_env(&dir.path().join("data"), &["--no-demo"], env);
    let address = server.base.trim_start_matches("http://").to_string();
    let pid = server.child.id();
    let idle_rss = memory_mb(pid, "VmRSS");
    let opened = Instant::now();
    let streams = stalled_uploads(&address, count).await;
    let load = format!("{count} uploads stalled inside a text field");
    // Past the idle timeout: the stalled ones are cut meanwhile.
    let latencies = health_throughout(&server, idle + Duration::from_secs(2), &load).await;
    let statuses = statuses_of(streams).await;
    let cut_after = opened.elapsed();
    let peak = memory_mb(pid, "VmHWM");
    eprintln!(
        "{load} ({env:?}): health answered {} times, median {:.1} ms, max {:.1} ms; answers {statuses:?} \
         (all closed {:.1} s after opening); server RSS {idle_rss:.0} MB idle, peak (VmHWM) {peak:.0} MB",
        latencies.len(),
        millis(latencies[latencies.len() / 2]),
        millis(*latencies.last().unwrap()),
        cut_after.as_secs_f64()
    );
    // Each stalled upload got an answer: 408 once its body stalled past the timeout (those that
    // held a body slot), 503 at once beyond the body slots.
    let answered: usize = statuses
        .iter()
        .filter(|(s, _)| [408, 503].contains(s))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(answered, count, "{statuses:?}");
    assert!(statuses.get(&408).is_some_and(|&n| n > 0), "{statuses:?}");
    assert_eq!(server.get_json("/api/health").await["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stalled_in_a_text_field_past_the_connection_slots_are_cut_and_health_answers() {
    // 60 stalled uploads against 40 connections and 10 body slots, cut after 2 s.
    stalled_uploads_against(
        60,
        &[
            ("CGGM_MAX_CONNECTIONS", "40"),
            ("CGGM_MAX_BODY_REQUESTS", "10"),
            ("CGGM_BODY_IDLE_TIMEOUT_SECS", "2"),
        ],
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_twenty_stalled_uploads_leave_health_answering_with_the_default_slots() {
    // The attack: 520 stalled uploads against the default 512 connections; only the idle
    // timeout is lowered (3 s instead of 120 s) so that the test sees them cut.
    stalled_uploads_against(
        520,
        &[("CGGM_BODY_IDLE_TIMEOUT_SECS", "3")],
        Duration::from_secs(3),
    )
    .await;
}

// ------------------------------------------------------------------ low: JSON rejections, zips

#[tokio::test]
async fn extractor_rejections_come_back_as_json_errors() {
    let app = TestApp::new().await;
    let bad_json = Request::post("/api/jobs")
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let no_type = Request::post("/api/jobs").body(Body::from("{}")).unwrap();
    let bad_path = Request::get("/api/jobs/abc").body(Body::empty()).unwrap();
    let bad_query = Request::get("/api/jobs/1/events?after=x")
        .body(Body::empty())
        .unwrap();
    for request in [bad_json, no_type, bad_path, bad_query] {
        let what = format!("{} {}", request.method(), request.uri());
        let (status, body, content_type) = app.request(request).await;
        assert!(status.is_client_error(), "{what}: {status}");
        assert!(
            content_type.starts_with("application/json"),
            "{what}: {content_type}"
        );
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(!error_of(&answer).is_empty(), "{what}");
    }
}

fn dicom_bytes(fill: u8) -> Vec<u8> {
    let mut bytes = vec![0u8; 128];
    bytes.extend_from_slice(b"DICM");
    bytes.extend(std::iter::repeat_n(fill, 1000));
    bytes
}

/// A zip (stored, not compressed) of `entries`.
fn zip_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut writer = zip::ZipWriter::new(&mut out);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in entries {
            writer.start_file(*name, options).unwrap();
            std::io::Write::write_all(&mut writer, bytes).unwrap();
        }
        writer.finish().unwrap();
    }
    out.into_inner()
}

#[tokio::test]
async fn bad_dicom_zips_get_422_naming_the_entry_and_a_non_dicom_entry_stops_the_unpacking() {
    let app = TestApp::new().await;
    let long = format!("{}.dcm", "x".repeat(300));
    // The second entry is damaged (a flipped byte: its checksum fails): a server that unpacked
    // on past the first, non-DICOM entry would report that instead.
    let mut damaged = zip_of(&[
        ("a.bin", b"not a DICOM file".to_vec()),
        ("b.dcm", dicom_bytes(7)),
    ]);
    let at = damaged
        .windows(8)
        .position(|w| w == [7u8; 8])
        .expect("b.dcm's data");
    damaged[at] ^= 0xFF;
    let cases = [
        (
            zip_of(&[("a", dicom_bytes(1)), ("a/b.dcm", dicom_bytes(2))]),
            "lies inside an entry that is a file",
        ),
        (
            zip_of(&[(long.as_str(), dicom_bytes(1))]),
            "longer than the file system allows",
        ),
        (damaged, "a.bin is not a DICOM file"),
    ];
    for (zip, expected) in cases {
        let form = ["flair", "t1ce", "t1", "t2"]
            .iter()
            .fold(Multipart::default(), |form, m| {
                form.file(m, "series.zip", zip.clone())
            });
        let (status, answer) = app.post_multipart("/api/studies/dicom", &form).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{expected}: {answer}"
        );
        let error = error_of(&answer);
        assert!(error.contains(expected), "{error}");
        assert!(error.len() < 400, "the message stays short: {error}");
    }
    app.assert_no_upload_left();
}

#[tokio::test]
async fn a_job_log_past_its_cap_is_rotated_and_keeps_its_newest_lines() {
    // A `cggm` that writes 5 MB to its log, then a last line, and fails.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("chatty-cggm");
    std::fs::write(
        &bin,
        "#!/bin/bash\nfor i in $(seq 1 5000); do printf '%999s\\n' \"line $i\" >&2; done\n\
         echo 'the last line' >&2\nexit 3\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let app = TestApp::with(|c| {
        c.cggm_bin = bin;
        c.bounds.max_log_bytes = 1024 * 1024;
    })
    .await;
    let dataset = app.register_dataset("brats", 2).await;
    let job = app.start_training(dataset).await;
    app.wait_for_job(job, &["failed"], FAKE_JOB_DEADLINE).await;
    let log = app.state.runner.log_path(job);
    let rotated = cggm_server::jobs::rotated_log(&log);
    let sizes = [&log, &rotated].map(|p| std::fs::metadata(p).map_or(0, |m| m.len()));
    // Before: one 5 MB log. Now the older part holds at most the cap, the newest what came after.
    assert!(
        sizes[0] < 3 * 1024 * 1024 && sizes[1] > 0 && sizes[1] <= 1024 * 1024,
        "log sizes {sizes:?}"
    );
    let (_, tail, _) = app.get(&format!("/api/jobs/{job}/log")).await;
    assert!(String::from_utf8_lossy(&tail).contains("the last line"));
    // Deleting the run takes both parts.
    let request = Request::delete(format!("/api/jobs/{job}"))
        .body(Body::empty())
        .unwrap();
    let (status, body, _) = app.request(request).await;
    assert!(
        status.is_success(),
        "{status} {}",
        String::from_utf8_lossy(&body)
    );
    assert!(!log.exists() && !rotated.exists());
}

#[tokio::test]
async fn listings_read_only_a_run_s_best_validation_however_many_it_has() {
    let app = TestApp::new().await;
    let run = app.finished_run().await;
    let (last,): (i64,) = sqlx::query_as("SELECT MAX(seq) FROM events WHERE job_id = ?")
        .bind(run)
        .fetch_one(&app.state.pool)
        .await
        .unwrap();
    // 30,000 validation events; the one marked best is early among them.
    let mut tx = app.state.pool.begin().await.unwrap();
    for i in 1..=30_000i64 {
        let data = json!({ "event": "validation", "best": i == 100, "marker": i,
                           "padding": "x".repeat(200) });
        sqlx::query(
            "INSERT INTO events (job_id, seq, kind, time, data) VALUES (?, ?, 'validation', ?, ?)",
        )
        .bind(run)
        .bind(last + i)
        .bind(i as f64)
        .bind(data.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let started = Instant::now();
    let (status, checkpoints) = app.get_json("/api/checkpoints").await;
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        checkpoints[0]["best_validation"]["marker"], 100,
        "{checkpoints}"
    );
    let (_, job) = app.get_json(&format!("/api/jobs/{run}")).await;
    assert_eq!(job["best_validation"]["marker"], 100);
    // What the listing did before: load every validation event of the run and parse each.
    let loaded = Instant::now();
    let all = cggm_server::db::events(&app.state.pool, run, 0, Some("validation"))
        .await
        .unwrap();
    let parsed: Vec<serde_json::Value> = all
        .iter()
        .filter_map(|e| serde_json::from_str(&e.data).ok())
        .collect();
    let before = loaded.elapsed();
    eprintln!(
        "/api/checkpoints with 30,000 validation events: {elapsed:?} (loading and parsing all {} \
         as before: {before:?})",
        parsed.len()
    );
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    // Without a best one, the last.
    sqlx::query(
        "UPDATE events SET data = json_set(data, '$.best', json('false')) WHERE job_id = ?",
    )
    .bind(run)
    .execute(&app.state.pool)
    .await
    .unwrap();
    let (_, job) = app.get_json(&format!("/api/jobs/{run}")).await;
    assert_eq!(job["best_validation"]["marker"], 30_000);
}
