//! API tests: the router called in-process with `oneshot`, one isolated data directory each. Jobs
//! run a stand-in `cggm` script (tests/common), so these tests do not depend on the trainer.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ basics and pages

#[tokio::test]
async fn health_reports_ok() {
    let app = TestApp::new().await;
    let (status, body) = app.get_json("/api/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn options_list_methods_and_presets() {
    let app = TestApp::new().await;
    let (_, body) = app.get_json("/api/options").await;
    assert!(body["methods"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m == "cggm"));
    assert!(body["presets"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "tiny"));
}

#[tokio::test]
async fn every_page_renders_as_html() {
    let app = TestApp::new().await;
    let run = app.finished_run().await;
    for uri in [
        "/",
        "/datasets",
        "/runs/new",
        "/models",
        "/segment",
        "/compare?jobs=1",
        &format!("/jobs/{run}"),
    ] {
        let (status, body, content_type) = app.get(uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert!(
            content_type.starts_with("text/html"),
            "{uri}: {content_type}"
        );
        assert!(
            String::from_utf8_lossy(&body).contains("CGGM Studio"),
            "{uri}"
        );
    }
}

#[tokio::test]
async fn unknown_page_and_unknown_job_are_404() {
    let app = TestApp::new().await;
    assert_eq!(app.get("/no/such/page").await.0, StatusCode::NOT_FOUND);
    assert_eq!(app.get("/jobs/999").await.0, StatusCode::NOT_FOUND);
    let (status, body) = app.get_json("/api/jobs/999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("job 999"));
}

#[tokio::test]
async fn static_assets_are_served() {
    let app = TestApp::new().await;
    let (status, body, _) = app.get("/static/app.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("EventSource"));
    assert_eq!(
        app.get("/static/../Cargo.toml").await.0,
        StatusCode::NOT_FOUND
    );
}

// ------------------------------------------------------------------ datasets

#[tokio::test]
async fn registered_dataset_reports_cases_and_names_bad_ones() {
    let app = TestApp::new().await;
    let root = app.data_dir().join("datasets/mixed");
    write_case(&root, "Good_1", [8, 8, 4], true);
    write_case(&root, "Good_2", [8, 8, 4], true);
    let missing = write_case(&root, "NoT1ce", [8, 8, 4], true);
    std::fs::remove_file(&missing[1]).unwrap();
    write_case(&root, "Mismatch", [8, 8, 4], true);
    write_nifti(
        &root.join("Mismatch/Mismatch_t2.nii.gz"),
        &volume([8, 8, 5], 0.0),
    );

    let (status, body) = app
        .post_json(
            "/api/datasets",
            serde_json::json!({ "name": "mixed", "path": "datasets/mixed" }),
        )
        .await;

    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["report"]["cases"], 4);
    assert_eq!(body["report"]["valid_cases"], 2);
    let problems = body["report"]["problems"].to_string();
    assert!(
        problems.contains("NoT1ce") && problems.contains("t1ce volume is missing"),
        "{problems}"
    );
    assert!(
        problems.contains("Mismatch") && problems.contains("shape"),
        "{problems}"
    );
    assert_eq!(
        body["report"]["split"]["train"].as_u64().unwrap()
            + body["report"]["split"]["val"].as_u64().unwrap()
            + body["report"]["split"]["test"].as_u64().unwrap(),
        2
    );
    let (_, list) = app.get_json("/api/datasets").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn dataset_path_outside_the_data_directory_is_rejected_with_422() {
    let app = TestApp::new().await;
    for path in ["../", "/etc", "datasets/../../"] {
        let (status, body) = app
            .post_json(
                "/api/datasets",
                serde_json::json!({ "name": "escape", "path": path }),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
    }
}

#[tokio::test]
async fn dataset_name_with_a_separator_is_rejected_with_400() {
    let app = TestApp::new().await;
    let (status, _) = app
        .post_json("/api/datasets", serde_json::json!({ "name": "../evil" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn duplicate_dataset_name_is_409() {
    let app = TestApp::new().await;
    app.register_dataset("same", 1).await;
    let (status, _) = app
        .post_json(
            "/api/datasets",
            serde_json::json!({ "name": "same", "path": "datasets/same" }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn uploaded_case_joins_an_upload_dataset_and_is_never_replaced() {
    let app = TestApp::new().await;
    let (status, dataset) = app
        .post_json("/api/datasets", serde_json::json!({ "name": "mine" }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = dataset["id"].as_i64().unwrap();
    let files = write_case(&app.dir.path().join("src"), "anything", [8, 8, 4], true);
    let form = Multipart::default().text("case", "Case_A").files(&files);

    let (status, body) = app
        .post_multipart(&format!("/api/datasets/{id}/cases"), &form)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["report"]["valid_cases"], 1);
    let stored = app
        .data_dir()
        .join("datasets/mine/Case_A/Case_A_t1ce.nii.gz");
    let before = std::fs::read(&stored).unwrap();

    let (status, _) = app
        .post_multipart(&format!("/api/datasets/{id}/cases"), &form)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(std::fs::read(&stored).unwrap(), before);
}

#[tokio::test]
async fn case_without_labels_is_rejected_with_422() {
    let app = TestApp::new().await;
    let (_, dataset) = app
        .post_json("/api/datasets", serde_json::json!({ "name": "mine" }))
        .await;
    let files = write_case(&app.dir.path().join("src"), "x", [8, 8, 4], false);
    let form = Multipart::default().text("case", "Case_A").files(&files);
    let (status, body) = app
        .post_multipart(&format!("/api/datasets/{}/cases", dataset["id"]), &form)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"].as_str().unwrap().contains("seg"), "{body}");
}

#[tokio::test]
async fn cases_cannot_be_uploaded_into_a_registered_folder() {
    let app = TestApp::new().await;
    let id = app.register_dataset("ondisk", 1).await;
    let files = write_case(&app.dir.path().join("src"), "x", [8, 8, 4], true);
    let form = Multipart::default().text("case", "Case_B").files(&files);
    let (status, _) = app
        .post_multipart(&format!("/api/datasets/{id}/cases"), &form)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn revalidation_sees_a_case_broken_on_disk() {
    let app = TestApp::new().await;
    let id = app.register_dataset("disk", 2).await;
    std::fs::write(
        app.data_dir()
            .join("datasets/disk/Case_001/Case_001_flair.nii.gz"),
        b"garbage",
    )
    .unwrap();
    let (status, _) = app
        .post_json(
            &format!("/api/datasets/{id}/validate"),
            serde_json::json!({}),
        )
        .await;
    // The full check runs in the background (202); its report replaces the quick one.
    assert_eq!(status, StatusCode::ACCEPTED);
    let body = app.full_check(id, DEADLINE).await;
    assert_eq!(body["report"]["valid_cases"], 1);
    assert!(
        body["report"]["problems"]
            .to_string()
            .contains("Case_001_flair"),
        "{body}"
    );
}

// ------------------------------------------------------------------ study uploads and slices

#[tokio::test]
async fn study_with_four_modalities_is_stored_and_sliced() {
    let app = TestApp::new().await;
    let id = app.upload_study("Patient1").await;
    let (_, study) = app.get_json(&format!("/api/studies/{id}")).await;
    assert_eq!(study["shape"], serde_json::json!([8, 8, 4]));
    assert_eq!(study["name"], "Patient1");

    for (plane, w, h) in [("axial", 8, 8), ("coronal", 8, 4), ("sagittal", 8, 4)] {
        let (status, body, content_type) = app
            .get(&format!(
                "/api/studies/{id}/slice?plane={plane}&index=2&modality=t2"
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "image/png");
        let decoder = png::Decoder::new(std::io::Cursor::new(body));
        let reader = decoder.read_info().unwrap();
        assert_eq!(
            (reader.info().width, reader.info().height),
            (w, h),
            "{plane}"
        );
    }
}

#[tokio::test]
async fn slice_outside_the_volume_or_unknown_modality_is_400() {
    let app = TestApp::new().await;
    let id = app.upload_study("Patient1").await;
    assert_eq!(
        app.get(&format!("/api/studies/{id}/slice?plane=axial&index=4"))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get(&format!("/api/studies/{id}/slice?modality=pd"))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get(&format!("/api/studies/{id}/slice?plane=oblique"))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn one_msd_4d_file_is_accepted_as_a_study() {
    let app = TestApp::new().await;
    let path = app.dir.path().join("BRATS_001.nii.gz");
    write_4d(&path, [8, 8, 4]);
    let (status, body) = app
        .post_multipart("/api/studies", &Multipart::default().files(&[path]))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body["files"]["4d"].is_string());
    let (status, _, _) = app
        .get(&format!("/api/studies/{}/slice?modality=t1ce", body["id"]))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn upload_with_missing_t1ce_is_rejected_with_422() {
    let app = TestApp::new().await;
    let mut files = write_case(app.dir.path(), "P", [8, 8, 4], false);
    files.remove(1);
    let (status, body) = app
        .post_multipart("/api/studies", &Multipart::default().files(&files))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"].as_str().unwrap().contains("t1ce"), "{body}");
}

#[tokio::test]
async fn upload_of_a_file_that_is_not_nifti_is_rejected_naming_the_file() {
    let app = TestApp::new().await;
    let files = write_case(app.dir.path(), "P", [8, 8, 4], false);
    std::fs::write(&files[2], vec![0u8; 400]).unwrap();
    let (status, body) = app
        .post_multipart("/api/studies", &Multipart::default().files(&files))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("P_t1.nii.gz"), "{error}");

    let form = Multipart::default().file("files", "notes.txt", b"hello".to_vec());
    let (status, body) = app.post_multipart("/api/studies", &form).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"].as_str().unwrap().contains("notes.txt"),
        "{body}"
    );
}

#[tokio::test]
async fn upload_of_a_corrupt_gzip_is_rejected_with_422() {
    let app = TestApp::new().await;
    let files = write_case(app.dir.path(), "P", [8, 8, 4], false);
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let len = bytes.len();
    bytes.truncate(len / 2);
    bytes.extend_from_slice(&[0xff; 16]);
    std::fs::write(&files[0], bytes).unwrap();
    let (status, body) = app
        .post_multipart("/api/studies", &Multipart::default().files(&files))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"].as_str().unwrap().contains("P_flair.nii.gz"),
        "{body}"
    );
}

#[tokio::test]
async fn upload_with_mismatched_shapes_is_rejected_with_422() {
    let app = TestApp::new().await;
    let files = write_case(app.dir.path(), "P", [8, 8, 4], false);
    write_nifti(&files[3], &volume([8, 8, 6], 1.0));
    let (status, body) = app
        .post_multipart("/api/studies", &Multipart::default().files(&files))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("P_t2.nii.gz") && error.contains("shape"),
        "{error}"
    );
}

#[tokio::test]
async fn upload_over_the_size_limit_is_rejected_with_413_and_a_message() {
    let app = TestApp::with(|c| c.max_upload_bytes = 4096).await;
    let form = Multipart::default().file("files", "big_flair.nii", vec![0u8; 10_000]);
    let (status, body) = app.post_multipart("/api/studies", &form).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
}

#[tokio::test]
async fn failed_uploads_leave_nothing_behind() {
    let app = TestApp::new().await;
    let mut files = write_case(app.dir.path(), "P", [8, 8, 4], false);
    files.remove(0);
    app.post_multipart("/api/studies", &Multipart::default().files(&files))
        .await;
    let leftovers = |sub: &str| std::fs::read_dir(app.data_dir().join(sub)).unwrap().count();
    assert_eq!(leftovers("tmp"), 0);
    assert_eq!(leftovers("studies"), 0);
    let (_, list) = app.get_json("/api/studies").await;
    assert_eq!(list, serde_json::json!([]));
}

#[tokio::test]
async fn file_names_cannot_escape_the_upload_folder() {
    let app = TestApp::new().await;
    let files = write_case(app.dir.path(), "P", [8, 8, 4], false);
    let bytes = std::fs::read(&files[0]).unwrap();
    for name in ["..", ".hidden_flair.nii.gz", "a b_flair.nii.gz"] {
        let form = Multipart::default().file("files", name, bytes.clone());
        let (status, body) = app.post_multipart("/api/studies", &form).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {body}");
    }
    // A path sent by a browser keeps only its last component.
    let mut form = Multipart::default().file("files", "../../../etc/P_flair.nii.gz", bytes);
    for f in &files[1..] {
        form = form.file(
            "files",
            f.file_name().unwrap().to_str().unwrap(),
            std::fs::read(f).unwrap(),
        );
    }
    let (status, body) = app.post_multipart("/api/studies", &form).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["files"]["flair"], "P_flair.nii.gz");
}

// ------------------------------------------------------------------ jobs

#[tokio::test]
async fn training_job_runs_stores_its_events_and_lists_its_checkpoint() {
    let app = TestApp::new().await;
    let id = app.finished_run().await;

    let (_, events) = app.get_json(&format!("/api/jobs/{id}/events")).await;
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["run_started", "step", "step", "validation", "finished"]
    );
    let (_, steps) = app
        .get_json(&format!("/api/jobs/{id}/events?kind=step&after=2"))
        .await;
    assert_eq!(steps.as_array().unwrap().len(), 1);
    assert_eq!(steps[0]["seq"], 3);

    let (_, job) = app.get_json(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["best_validation"]["dice"]["wt"], 0.8);
    let (_, checkpoints) = app.get_json("/api/checkpoints").await;
    assert_eq!(checkpoints[0]["job_id"], id);
    assert_eq!(checkpoints[0]["metrics"]["test_dice"]["mean"], 0.7);
    let (status, log, _) = app.get(&format!("/api/jobs/{id}/log")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&log).contains("fake cggm train done"));
}

async fn patch_json(
    app: &TestApp,
    uri: &str,
    json: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let request = Request::patch(uri)
        .header("content-type", "application/json")
        .body(Body::from(json.to_string()))
        .unwrap();
    let (status, body, _) = app.request(request).await;
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// A run's name, notes and tags: given at launch beside the run options, changed with PATCH
/// (the fields not sent stay), refused with the field's name when out of bounds, shown (escaped)
/// on the run page, the dashboard and the models list, and gone with the run.
#[tokio::test]
async fn a_run_has_a_name_notes_and_tags_set_at_launch_and_edited_later() {
    let app = TestApp::new().await;
    let dataset = app.register_dataset("brats", 2).await;
    let mut request = tiny_training_request(dataset, "cggm");
    request["name"] = "<b>first</b> try".into();
    request["tags"] = serde_json::json!(["baseline", "cpu", "baseline"]);
    request["notes"] = "one epoch".into();
    let (status, job) = app.post_json("/api/jobs", request).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_i64().unwrap();
    assert_eq!(job["name"], "<b>first</b> try");
    assert_eq!(job["tags"], serde_json::json!(["baseline", "cpu"]));
    // Not run options: the trainer's request does not carry them.
    let (_, shown) = app.get_json(&format!("/api/jobs/{id}")).await;
    assert!(shown["params"]["options"].get("name").is_none(), "{shown}");
    app.wait_for_job(id, &["succeeded"], DEADLINE).await;

    let (status, patched) = patch_json(
        &app,
        &format!("/api/jobs/{id}"),
        serde_json::json!({ "tags": "kept, cpu" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["tags"], serde_json::json!(["kept", "cpu"]));
    assert_eq!(patched["name"], "<b>first</b> try");
    assert_eq!(patched["notes"], "one epoch");

    let (status, body) = patch_json(
        &app,
        &format!("/api/jobs/{id}"),
        serde_json::json!({ "name": "x".repeat(201) }),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("name is 201 characters"),
        "{body}"
    );
    let (status, body) = patch_json(
        &app,
        &format!("/api/jobs/{id}"),
        serde_json::json!({ "epochs": 3 }),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("epochs cannot be changed"),
        "{body}"
    );
    let (status, _) = app
        .post_json("/api/jobs", {
            let mut r = tiny_training_request(dataset, "cggm");
            r["tags"] = serde_json::json!(7);
            r
        })
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    for page in [
        format!("/jobs/{id}"),
        "/".to_string(),
        "/models".to_string(),
    ] {
        let (status, body, _) = app.get(&page).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let html = String::from_utf8(body).unwrap();
        // Escaped (askama writes &#60; for <).
        assert!(
            html.contains("&#60;b&#62;first&#60;/b&#62; try")
                || html.contains("&lt;b&gt;first&lt;/b&gt; try"),
            "{page}: {html}"
        );
        assert!(!html.contains("<b>first</b>"), "{page}: unescaped");
        assert!(
            html.contains(">kept<") || html.contains(">kept, cpu<"),
            "{page}: {html}"
        );
    }

    let (status, _, _) = app
        .request(
            Request::delete(format!("/api/jobs/{id}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(status.is_success(), "{status}");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM run_labels")
        .fetch_one(&app.state.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the run's labels outlive it");
}

#[tokio::test]
async fn event_stream_sends_the_whole_history_and_ends_with_the_final_state() {
    let app = TestApp::new().await;
    let id = app.finished_run().await;
    let response = tokio::time::timeout(DEADLINE, async {
        let (status, body, content_type) = app.get(&format!("/api/jobs/{id}/stream")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("text/event-stream"));
        String::from_utf8(body).unwrap()
    })
    .await
    .expect("the stream of a finished job ends");
    // History first, then the state: a page that stops at a final state has drawn everything.
    assert!(response.starts_with("event: run_started"), "{response}");
    let last_block = response.trim_end().rsplit("\n\n").next().unwrap();
    assert!(
        last_block.starts_with("event: state") && last_block.contains("succeeded"),
        "{response}"
    );
    for kind in ["run_started", "step", "validation", "finished"] {
        assert!(response.contains(&format!("event: {kind}")), "{kind}");
    }
    assert!(response.contains("id: 5"));
    // Resuming after the last id gives only the final state.
    let request = Request::get(format!("/api/jobs/{id}/stream"))
        .header("last-event-id", "5")
        .body(Body::empty())
        .unwrap();
    let (_, body, _) = app.request(request).await;
    assert!(!String::from_utf8_lossy(&body).contains("event: step"));
}

#[tokio::test]
async fn live_viewer_receives_events_as_the_job_produces_them() {
    let app = TestApp::with(|c| c.cggm_bin = fake_cggm(c.data_dir.parent().unwrap(), 0.5)).await;
    let dataset = app.register_dataset("brats", 1).await;
    let (_, job) = app
        .post_json("/api/jobs", tiny_training_request(dataset, "cggm"))
        .await;
    let id = job["id"].as_i64().unwrap();
    // Subscribed while queued or running: the stream still ends with every event and the state.
    let body = tokio::time::timeout(DEADLINE, app.get(&format!("/api/jobs/{id}/stream")))
        .await
        .unwrap()
        .1;
    let text = String::from_utf8(body).unwrap();
    assert_eq!(text.matches("event: step").count(), 2, "{text}");
    assert!(text.contains("\"state\":\"succeeded\""), "{text}");
}

#[tokio::test]
async fn job_whose_process_fails_is_marked_failed_with_its_log() {
    let app = TestApp::new().await;
    let dataset = app.register_dataset("brats", 1).await;
    let (_, job) = app
        .post_json("/api/jobs", tiny_training_request(dataset, "unimodal:t2"))
        .await;
    let id = job["id"].as_i64().unwrap();
    let job = app.wait_for_job(id, &["failed"], DEADLINE).await;
    assert_eq!(job["exit_code"], 3);
    assert!(job["error"]
        .as_str()
        .unwrap()
        .contains("exited with code 3"));
    let (_, log, _) = app.get(&format!("/api/jobs/{id}/log")).await;
    assert!(String::from_utf8_lossy(&log).contains("out of memory"));
}

#[tokio::test]
async fn job_with_a_missing_binary_fails_without_taking_the_server_down() {
    let app = TestApp::with(|c| c.cggm_bin = "/nonexistent/cggm".into()).await;
    let dataset = app.register_dataset("brats", 1).await;
    let (_, job) = app
        .post_json("/api/jobs", tiny_training_request(dataset, "cggm"))
        .await;
    let job = app
        .wait_for_job(job["id"].as_i64().unwrap(), &["failed"], DEADLINE)
        .await;
    assert!(job["error"].as_str().unwrap().contains("could not start"));
    assert_eq!(app.get_json("/api/health").await.0, StatusCode::OK);
}

#[tokio::test]
async fn invalid_training_requests_are_rejected() {
    let app = TestApp::new().await;
    let dataset = app.register_dataset("brats", 1).await;
    let (_, empty) = app
        .post_json("/api/datasets", serde_json::json!({ "name": "empty" }))
        .await;
    let cases = [
        (
            tiny_training_request(dataset, "magic"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            serde_json::json!({ "dataset_id": dataset, "method": "cggm", "preset": "huge", "epochs": 1 }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            serde_json::json!({ "dataset_id": dataset, "method": "cggm", "preset": "tiny", "epochs": 0 }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            serde_json::json!({ "dataset_id": dataset, "method": "cggm", "preset": "tiny", "epochs": 1, "device": "tpu" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            serde_json::json!({ "dataset_id": dataset, "method": "cggm", "preset": "tiny", "epochs": 1, "rho": -1.0 }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            tiny_training_request(empty["id"].as_i64().unwrap(), "cggm"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (tiny_training_request(999, "cggm"), StatusCode::NOT_FOUND),
        (
            serde_json::json!({ "method": "cggm" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = app.post_json("/api/jobs", body.clone()).await;
        assert_eq!(status, expected, "{body} -> {answer}");
    }
    let (_, jobs) = app.get_json("/api/jobs").await;
    assert_eq!(jobs, serde_json::json!([]));
}

#[tokio::test]
async fn jobs_wait_for_a_free_slot_and_cancel_works_queued_and_running() {
    let app = TestApp::with(|c| c.cggm_bin = fake_cggm(c.data_dir.parent().unwrap(), 60.0)).await;
    let dataset = app.register_dataset("brats", 1).await;
    let (_, first) = app
        .post_json("/api/jobs", tiny_training_request(dataset, "cggm"))
        .await;
    let (_, second) = app
        .post_json("/api/jobs", tiny_training_request(dataset, "joint"))
        .await;
    let (first, second) = (
        first["id"].as_i64().unwrap(),
        second["id"].as_i64().unwrap(),
    );
    app.wait_for_job(first, &["running"], DEADLINE).await;
    assert_eq!(
        app.get_json(&format!("/api/jobs/{second}")).await.1["state"],
        "queued"
    );

    let (status, _) = app
        .post_json(&format!("/api/jobs/{second}/cancel"), serde_json::json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    app.wait_for_job(second, &["cancelled"], DEADLINE).await;
    let (status, _) = app
        .post_json(&format!("/api/jobs/{first}/cancel"), serde_json::json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let job = app.wait_for_job(first, &["cancelled"], DEADLINE).await;
    assert!(job["finished_at"].is_number());

    let (status, _) = app
        .post_json(&format!("/api/jobs/{first}/cancel"), serde_json::json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_stopped_run_with_a_checkpoint_resumes_and_a_finished_one_does_not() {
    let app = TestApp::with(|c| c.cggm_bin = fake_cggm(c.data_dir.parent().unwrap(), 60.0)).await;
    let dataset = app.register_dataset("brats", 1).await;
    let (_, job) = app
        .post_json("/api/jobs", tiny_training_request(dataset, "cggm"))
        .await;
    let id = job["id"].as_i64().unwrap();
    app.wait_for_job(id, &["running"], DEADLINE).await;
    // "running" starts with the process; its first checkpoint comes a moment later.
    let last = app
        .state
        .config
        .data_dir
        .join(format!("runs/job-{id}/checkpoints/last.safetensors"));
    let until = std::time::Instant::now() + DEADLINE;
    while !last.exists() {
        assert!(
            std::time::Instant::now() < until,
            "the run never wrote {}",
            last.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, _) = app
        .post_json(&format!("/api/jobs/{id}/resume"), serde_json::json!({}))
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a running job cannot be resumed"
    );
    app.post_json(&format!("/api/jobs/{id}/cancel"), serde_json::json!({}))
        .await;
    app.wait_for_job(id, &["cancelled"], DEADLINE).await;

    let (status, body) = app
        .post_json(&format!("/api/jobs/{id}/resume"), serde_json::json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.wait_for_job(id, &["running"], DEADLINE).await;
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        let (_, log, _) = app.get(&format!("/api/jobs/{id}/log")).await;
        if String::from_utf8_lossy(&log).contains("--resume") {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the resumed process never started with --resume"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.post_json(&format!("/api/jobs/{id}/cancel"), serde_json::json!({}))
        .await;
    app.wait_for_job(id, &["cancelled"], DEADLINE).await;
}

#[tokio::test]
async fn restart_marks_lost_jobs_interrupted_and_keeps_their_files() {
    let app = TestApp::new().await;
    let id = app.finished_run().await;
    let (_, run) = app.get_json("/api/checkpoints").await;
    assert_eq!(run[0]["job_id"], id);
    sqlx::query("INSERT INTO jobs (kind, state, params, out_dir, created_at) VALUES ('train', 'running', '{}', '/nowhere', 0)")
        .execute(&app.state.pool)
        .await
        .unwrap();
    let config = (*app.state.config).clone();

    let restarted = cggm_server::AppState::new(config).await.unwrap();

    let jobs = cggm_server::db::jobs(&restarted.pool, None).await.unwrap();
    let states: Vec<(&str, i64)> = jobs.iter().map(|j| (j.state.as_str(), j.id)).collect();
    assert!(states.contains(&("interrupted", id + 1)), "{states:?}");
    assert!(states.contains(&("succeeded", id)), "{states:?}");
    assert!(app
        .data_dir()
        .join(format!("runs/job-{id}/checkpoints/best.safetensors"))
        .is_file());
}

// ------------------------------------------------------------------ predictions

#[tokio::test]
async fn prediction_runs_as_a_job_and_serves_volumes_slices_and_the_nifti() {
    let app = TestApp::new().await;
    let run = app.finished_run().await;
    let study = app.upload_study("Patient1").await;

    let id = app.segment(study, run).await;

    let (_, prediction) = app.get_json(&format!("/api/predictions/{id}")).await;
    // Bands of labels 0/1/2/4 over x: 2 columns each of 8x4 voxels of 1 mm -> 0.064 ml per label.
    let volumes = &prediction["volumes"];
    assert!(
        (volumes["ncr_ml"].as_f64().unwrap() - 0.064).abs() < 1e-9,
        "{volumes}"
    );
    assert!(
        (volumes["wt_ml"].as_f64().unwrap() - 3.0 * 0.064).abs() < 1e-9,
        "{volumes}"
    );
    let (_, events) = app
        .get_json(&format!("/api/jobs/{id}/events?kind=progress"))
        .await;
    assert_eq!(events.as_array().unwrap().len(), 2);

    let (status, body, content_type) = app.get(&format!("/api/predictions/{id}/seg.nii.gz")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/gzip");
    assert_eq!(&body[..2], &[0x1f, 0x8b]);

    let (status, body, _) = app
        .get(&format!(
            "/api/predictions/{id}/slice?plane=axial&index=1&labels=1,4"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut reader = png::Decoder::new(std::io::Cursor::new(body))
        .read_info()
        .unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut pixels).unwrap();
    let alphas: Vec<u8> = pixels.chunks(4).map(|p| p[3]).collect();
    // Columns x%4 == 1 (label 1) and 3 (label 4) shown, label 2 hidden: half the pixels opaque.
    assert_eq!(
        alphas.iter().filter(|a| **a == 255).count(),
        alphas.len() / 2
    );

    let (status, _, content_type) = app.get(&format!("/predictions/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"));
    let (_, list) = app.get_json("/api/predictions").await;
    assert_eq!(list[0]["id"], id);
}

/// Every prediction names its run (a link to the run's page), the checkpoint `cggm infer` read
/// and the run's method: in its JSON, on its page, in the Segment page's list and in the name of
/// its download.
#[tokio::test]
async fn a_prediction_names_its_run_checkpoint_and_method() {
    use tower::ServiceExt;
    let app = TestApp::new().await;
    let run = app.finished_run().await;
    let study = app.upload_study("Patient1").await;
    let id = app.segment(study, run).await;

    let (_, prediction) = app.get_json(&format!("/api/predictions/{id}")).await;
    let source = &prediction["source"];
    assert_eq!(source["run_id"], run, "{prediction}");
    assert_eq!(source["run_url"], format!("/jobs/{run}"));
    assert_eq!(source["method"], "cggm");
    assert_eq!(source["preset"], "tiny");
    // The stand-in trainer writes best and last weights: infer reads best.
    assert_eq!(source["checkpoint"]["name"], "best", "{source}");
    let summary = source["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!("run #{run} · cggm · preset tiny")),
        "{summary}"
    );
    let (_, list) = app.get_json("/api/predictions").await;
    assert_eq!(list[0]["source"]["run_id"], run);

    for page in [format!("/predictions/{id}"), "/segment".to_string()] {
        let (status, body, _) = app.get(&page).await;
        assert_eq!(status, StatusCode::OK);
        let html = String::from_utf8(body).unwrap();
        assert!(
            html.contains(&format!("href=\"/jobs/{run}\"")),
            "{page}: {html}"
        );
        assert!(html.contains("best checkpoint"), "{page}: {html}");
    }

    let response = app
        .app()
        .oneshot(
            Request::get(format!("/api/predictions/{id}/seg.nii.gz"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let disposition = response.headers()["content-disposition"].to_str().unwrap();
    assert!(
        disposition.contains(&format!("Patient1-run{run}_seg.nii.gz")),
        "{disposition}"
    );
}

#[tokio::test]
async fn prediction_needs_a_run_with_a_checkpoint() {
    let app = TestApp::new().await;
    let study = app.upload_study("Patient1").await;
    let (status, _) = app
        .post_json(
            "/api/predictions",
            serde_json::json!({ "study_id": study, "checkpoint_job_id": 42 }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let dataset = app.register_dataset("brats", 1).await;
    let (_, failed) = app
        .post_json("/api/jobs", tiny_training_request(dataset, "unimodal:t2"))
        .await;
    let failed = failed["id"].as_i64().unwrap();
    app.wait_for_job(failed, &["failed"], DEADLINE).await;
    let (status, body) = app
        .post_json(
            "/api/predictions",
            serde_json::json!({ "study_id": study, "checkpoint_job_id": failed }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"].as_str().unwrap().contains("no checkpoint"));
    assert_eq!(
        app.get(&format!("/api/predictions/{failed}/seg.nii.gz"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

// ------------------------------------------------------------------ security

#[tokio::test]
async fn with_a_token_every_request_needs_it() {
    let app = TestApp::with(|c| c.token = Some("s3cret".into())).await;
    let (status, body) = app
        .post_json("/api/datasets", serde_json::json!({ "name": "x" }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].as_str().unwrap().contains("Bearer"));
    let wrong = Request::post("/api/datasets")
        .header("content-type", "application/json")
        .header("authorization", "Bearer nope")
        .body(Body::from(r#"{"name":"x"}"#))
        .unwrap();
    assert_eq!(app.request(wrong).await.0, StatusCode::UNAUTHORIZED);
    let right = Request::post("/api/datasets")
        .header("content-type", "application/json")
        .header("authorization", "Bearer s3cret")
        .body(Body::from(r#"{"name":"x"}"#))
        .unwrap();
    assert_eq!(app.request(right).await.0, StatusCode::CREATED);
    assert_eq!(
        app.get_json("/api/datasets").await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[test]
fn non_loopback_bind_without_a_token_is_refused() {
    use cggm_server::config::check_bind;
    assert!(check_bind(&"0.0.0.0:8080".parse().unwrap(), None).is_err());
    assert!(check_bind(&"0.0.0.0:8080".parse().unwrap(), Some("")).is_err());
    assert!(check_bind(&"0.0.0.0:8080".parse().unwrap(), Some("t")).is_ok());
    assert!(check_bind(&"127.0.0.1:8080".parse().unwrap(), None).is_ok());
    assert!(check_bind(&"[::1]:8080".parse().unwrap(), None).is_ok());
}
