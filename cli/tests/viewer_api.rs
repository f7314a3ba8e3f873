//! The NiiVue viewer's API: the stored NIfTI files of studies, predictions, dataset cases and a
//! run's saved test predictions are streamed as valid NIfTI, never cached, behind the token; the
//! manifests name what a viewer page loads; scores against a ground truth come from the trainer's
//! metrics; unknown ids and names are 404.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use std::io::Read;
use std::time::Duration;
use tower::ServiceExt;

const DEADLINE: Duration = Duration::from_secs(30);

/// Status, `Cache-Control` and body of a GET, with an optional bearer token.
async fn get_with(app: &TestApp, uri: &str, token: Option<&str>) -> (StatusCode, String, Vec<u8>) {
    let mut request = Request::get(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = app
        .app()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let cache = response
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, cache, body.to_vec())
}

/// The dimensions of a NIfTI-1 file (gzip or not), checking its header's size and magic.
fn nifti_dims(bytes: &[u8]) -> Vec<usize> {
    let mut raw = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut raw)
            .unwrap();
    } else {
        raw = bytes.to_vec();
    }
    assert!(raw.len() > 352, "too short for NIfTI: {} bytes", raw.len());
    assert_eq!(i32::from_le_bytes(raw[0..4].try_into().unwrap()), 348);
    assert_eq!(&raw[344..347], b"n+1", "NIfTI-1 single-file magic");
    let dim = |i: usize| i16::from_le_bytes(raw[40 + 2 * i..42 + 2 * i].try_into().unwrap());
    (1..=dim(0) as usize).map(|i| dim(i) as usize).collect()
}

/// The string `field` of each object of the array `list`.
fn each<'a>(list: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|item| item[field].as_str().unwrap())
        .collect()
}

/// `uri` answers 200 with an 8x8x4 NIfTI volume that must not be cached.
async fn assert_uncached_8x8x4_nifti(app: &TestApp, uri: &str) {
    let (status, cache, body) = get_with(app, uri, None).await;
    assert_eq!(status, StatusCode::OK, "{uri}");
    assert_eq!(cache, "no-store", "{uri}");
    assert_eq!(nifti_dims(&body), [8, 8, 4], "{uri}");
}

async fn study_with_label(app: &TestApp) -> i64 {
    let files = write_case(&app.dir.path().join("upload"), "Patient1", [8, 8, 4], true);
    let (status, body) = app
        .post_multipart("/api/studies", &Multipart::default().files(&files))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_i64().unwrap()
}

#[tokio::test]
async fn a_studys_modalities_label_and_prediction_stream_as_valid_nifti_never_cached() {
    let app = TestApp::new().await;
    let study = study_with_label(&app).await;
    for file in ["flair", "t1ce", "t1", "t2", "seg"] {
        assert_uncached_8x8x4_nifti(&app, &format!("/api/studies/{study}/nifti/{file}")).await;
    }
    let prediction = app.finished_prediction(study).await;
    assert_uncached_8x8x4_nifti(&app, &format!("/api/predictions/{prediction}/nifti")).await;

    // The manifest names the four modalities, the prediction and the study's own label.
    let (status, manifest) = app
        .get_json(&format!("/api/viewer/predictions/{prediction}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{manifest}");
    let modalities = each(&manifest["images"], "modality");
    assert_eq!(modalities, ["flair", "t1ce", "t1", "t2"]);
    let overlays = each(&manifest["overlays"], "key");
    assert_eq!(overlays, ["prediction", "truth"]);
    assert_eq!(
        manifest["classes"][0]["colour"],
        serde_json::json!([230, 40, 40])
    );
    assert!(manifest["too_large"].is_null());

    // The stand-in prediction is the study's own label: Dice 1 and HD95 0 in every region.
    let (status, scores) = app.get_json(manifest["scores_url"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{scores}");
    for region in ["wt", "tc", "et"] {
        assert_eq!(scores["dice"][region], 1.0, "{scores}");
        assert_eq!(scores["hd95"][region], 0.0, "{scores}");
    }
}

#[tokio::test]
async fn a_study_without_a_label_has_no_truth_overlay_and_no_scores() {
    let app = TestApp::new().await;
    let files = write_case(&app.dir.path().join("upload"), "P2", [8, 8, 4], false);
    let (_, body) = app
        .post_multipart("/api/studies", &Multipart::default().files(&files))
        .await;
    let study = body["id"].as_i64().unwrap();
    let (status, _, _) = get_with(&app, &format!("/api/studies/{study}/nifti/seg"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let prediction = app.finished_prediction(study).await;
    let (_, manifest) = app
        .get_json(&format!("/api/viewer/predictions/{prediction}"))
        .await;
    assert_eq!(manifest["overlays"].as_array().unwrap().len(), 1);
    assert!(manifest["scores_url"].is_null());
    let (status, body) = app
        .get_json(&format!("/api/predictions/{prediction}/scores"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"].as_str().unwrap().contains("_seg.nii.gz"),
        "{body}"
    );
}

#[tokio::test]
async fn every_case_of_a_registered_dataset_opens_with_its_label() {
    let app = TestApp::new().await;
    let dataset = app.register_dataset("brats", 2).await;
    let (status, cases) = app
        .get_json(&format!("/api/datasets/{dataset}/case-list"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        cases,
        serde_json::json!([{ "case": "Case_000", "has_label": true }, { "case": "Case_001", "has_label": true }])
    );
    for file in ["flair", "t2", "seg"] {
        let uri = format!("/api/datasets/{dataset}/cases/Case_001/nifti/{file}");
        assert_uncached_8x8x4_nifti(&app, &uri).await;
    }
    let (status, manifest) = app
        .get_json(&format!("/api/viewer/datasets/{dataset}/cases/Case_001"))
        .await;
    assert_eq!(status, StatusCode::OK, "{manifest}");
    assert_eq!(manifest["shape"], serde_json::json!([8, 8, 4]));
    assert_eq!(manifest["overlays"][0]["key"], "truth");
    assert_eq!(manifest["overlays"][0]["convention"], "brats");
    let (status, thumbnail, content_type) = app
        .get(&format!(
            "/api/datasets/{dataset}/cases/Case_001/thumbnail.png"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "image/png");
    assert!(live::is_png(&thumbnail));
    for page in [
        format!("/datasets/{dataset}/cases"),
        format!("/datasets/{dataset}/cases/Case_001"),
    ] {
        let (status, body, _) = app.get(&page).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(
            String::from_utf8_lossy(&body).contains("Case_001"),
            "{page}"
        );
    }
}

#[tokio::test]
async fn unknown_studies_predictions_datasets_cases_and_files_are_404() {
    let app = TestApp::new().await;
    let dataset = app.register_dataset("brats", 1).await;
    let study = study_with_label(&app).await;
    for uri in [
        "/api/studies/999/nifti/flair".to_string(),
        format!("/api/studies/{study}/nifti/t3"),
        format!("/api/studies/{study}/nifti/..%2F..%2Fbrats.sqlite"),
        "/api/predictions/999/nifti".into(),
        "/api/viewer/predictions/999".into(),
        "/api/datasets/999/cases/Case_000/nifti/flair".into(),
        format!("/api/datasets/{dataset}/cases/Case_999/nifti/flair"),
        format!("/api/datasets/{dataset}/cases/..%2FCase_000/nifti/flair"),
        format!("/api/datasets/{dataset}/cases/Case_000/nifti/dwi"),
        format!("/api/viewer/datasets/{dataset}/cases/Case_999"),
        "/api/jobs/999/test-cases".into(),
        "/datasets/999/cases".into(),
        format!("/datasets/{dataset}/cases/Case_999"),
        "/jobs/999/test".into(),
    ] {
        let (status, _, _) = get_with(&app, &uri, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
    }
}

#[tokio::test]
async fn with_a_token_the_nifti_files_need_it() {
    let app = TestApp::with(|c| c.token = Some("s3cret".into())).await;
    let root = app.data_dir().join("datasets/brats");
    write_case(&root, "Case_000", [8, 8, 4], true);
    let body = serde_json::json!({ "name": "brats", "path": root.display().to_string() });
    let (status, body, _) = app
        .request(
            Request::post("/api/datasets")
                .header("authorization", "Bearer s3cret")
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let dataset = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"]
        .as_i64()
        .unwrap();
    for uri in [
        format!("/api/datasets/{dataset}/cases/Case_000/nifti/flair"),
        format!("/api/viewer/datasets/{dataset}/cases/Case_000"),
        format!("/api/datasets/{dataset}/cases/Case_000/thumbnail.png"),
    ] {
        let (status, cache, _) = get_with(&app, &uri, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(cache, "no-store");
        let (status, _, _) = get_with(&app, &uri, Some("wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        let (status, _, _) = get_with(&app, &uri, Some("s3cret")).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
    }
}

#[tokio::test]
async fn the_test_split_lists_a_runs_test_cases_worst_first_with_their_saved_predictions() {
    let app = TestApp::new().await;
    let dataset = app.register_dataset("brats", 3).await;
    let run = app.start_training(dataset).await;
    app.wait_for_job(run, &["succeeded"], DEADLINE).await;
    // What a segmentation run writes when it finishes: per-case test scores in metrics.json and
    // each test case's prediction under test-predictions/ (only Case_001's here).
    let out_dir = cggm_server::db::job(&app.state.pool, run)
        .await
        .unwrap()
        .out_dir;
    let run_dir = cggm_core::rundir::RunDir::new(&out_dir);
    let scores = |case: &str, mean: f64| {
        serde_json::json!({ "case": case, "modality_dice": {},
            "dice": { "wt": mean, "tc": mean, "et": mean, "mean": mean },
            "hd95": { "wt": 2.0, "tc": 3.0, "et": 4.0, "mean": 3.0 } })
    };
    let metrics = serde_json::json!({ "test": { "cases": [scores("Case_001", 0.9), scores("Case_002", 0.4)] } });
    std::fs::write(run_dir.metrics(), metrics.to_string()).unwrap();
    write_nifti(&run_dir.test_prediction("Case_001"), &labels([8, 8, 4]));

    let (status, cases) = app.get_json(&format!("/api/jobs/{run}/test-cases")).await;
    assert_eq!(status, StatusCode::OK, "{cases}");
    assert_eq!(cases[0]["case"], "Case_002", "worst first: {cases}");
    assert_eq!(cases[0]["prediction_saved"], false);
    assert_eq!(cases[1]["prediction_saved"], true);

    let (status, _, body) = get_with(
        &app,
        &format!("/api/jobs/{run}/test-cases/Case_001/nifti"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(nifti_dims(&body), [8, 8, 4]);
    let (status, _, _) = get_with(
        &app,
        &format!("/api/jobs/{run}/test-cases/Case_002/nifti"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no saved prediction");
    let (status, _, _) = get_with(
        &app,
        &format!("/api/jobs/{run}/test-cases/Case_000/nifti"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not a test case");

    let (_, manifest) = app
        .get_json(&format!("/api/viewer/jobs/{run}/test-cases/Case_001"))
        .await;
    let overlays = each(&manifest["overlays"], "key");
    assert_eq!(overlays, ["prediction", "truth"]);
    assert_eq!(manifest["scores"]["dice"]["wt"], 0.9);
    assert_eq!(manifest["scores"]["hd95"]["et"], 4.0);

    let (status, page, _) = app.get(&format!("/jobs/{run}/test")).await;
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8(page).unwrap();
    let (worst, best) = (
        page.find("Case_002").unwrap(),
        page.find("Case_001").unwrap(),
    );
    assert!(worst < best, "worst mean Dice listed first");
    let (status, thumbnail, _) = app
        .get(&format!(
            "/api/jobs/{run}/test-cases/Case_001/thumbnail.png"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(live::is_png(&thumbnail));
    let (status, _, _) = app.get(&format!("/jobs/{run}/test/Case_001")).await;
    assert_eq!(status, StatusCode::OK);
}
