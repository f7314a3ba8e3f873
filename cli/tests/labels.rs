//! Corrected labels (issue 21, "correct, save, retrain"): a label saved for a study becomes its
//! ground truth as a new version (older ones stay, with who saved them when), the viewer and the
//! scores use it, a MONAI Label `save_label` lands in the same place, and a corrected study joins
//! a dataset as a case.

mod common;

use axum::http::StatusCode;
use common::*;
use ndarray::Array3;
use std::path::Path;

const SHAPE: [usize; 3] = [8, 8, 4];

/// Uploads a four-modality study, with its `seg` when asked; its id.
async fn study(app: &TestApp, name: &str, with_seg: bool) -> i64 {
    let files = write_case(&app.dir.path().join(name), name, SHAPE, with_seg);
    let (status, body) = app
        .post_multipart("/api/studies", &Multipart::default().files(&files))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_i64().unwrap()
}

/// A label file's bytes: tumour (oedema, 2) only in the first `rows` rows of x.
fn label_file(dir: &Path, name: &str, rows: usize, shape: [usize; 3]) -> Vec<u8> {
    let data = Array3::from_shape_fn(shape, |(x, _, _)| if x < rows { 2.0 } else { 0.0 });
    let path = dir.join(name);
    write_nifti(&path, &data);
    std::fs::read(path).unwrap()
}

async fn save(
    app: &TestApp,
    study: i64,
    bytes: Vec<u8>,
    author: &str,
) -> (StatusCode, serde_json::Value) {
    app.post_multipart(
        &format!("/api/studies/{study}/labels"),
        &Multipart::default()
            .text("author", author)
            .file("label", "corrected.nii.gz", bytes),
    )
    .await
}

fn truth_overlay(manifest: &serde_json::Value) -> serde_json::Value {
    manifest["overlays"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["key"] == "truth")
        .cloned()
        .unwrap_or_else(|| panic!("no truth overlay: {manifest}"))
}

#[tokio::test]
async fn a_saved_correction_is_the_new_ground_truth_and_every_older_version_stays() {
    let app = TestApp::new().await;
    let id = study(&app, "patient", true).await;
    let prediction = app.finished_prediction(id).await;

    // Before: the uploaded label is the truth (the stand-in's prediction equals it: Dice 1).
    let (_, manifest) = app
        .get_json(&format!("/api/viewer/predictions/{prediction}"))
        .await;
    let truth = truth_overlay(&manifest);
    assert_eq!(truth["title"], "Ground truth", "{truth}");
    // The viewer's edit mode: where to save, and the pens in the BraTS numbering.
    assert_eq!(
        manifest["labels"],
        serde_json::json!({ "save_url": format!("/api/studies/{id}/labels"),
                            "pens": [[1, "ncr"], [2, "ed"], [4, "et"]] }),
        "{manifest}"
    );
    let (_, scores) = app
        .get_json(&format!("/api/predictions/{prediction}/scores"))
        .await;
    assert_eq!(scores["dice"]["wt"], 1.0, "{scores}");

    let first = label_file(app.dir.path(), "first.nii.gz", 2, SHAPE);
    let (status, saved) = save(&app, id, first.clone(), "Dr. A. Reader").await;
    assert_eq!(status, StatusCode::CREATED, "{saved}");
    assert_eq!(saved["version"], 1);

    // The viewer, the truth file and the scores now use version 1.
    let (_, manifest) = app
        .get_json(&format!("/api/viewer/predictions/{prediction}"))
        .await;
    let truth = truth_overlay(&manifest);
    assert_eq!(truth["title"], "Ground truth (corrected, v1)", "{truth}");
    let (status, served, _) = app.get(truth["url"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, first, "the truth overlay serves the saved file");
    let (_, scores) = app
        .get_json(&format!("/api/predictions/{prediction}/scores"))
        .await;
    // Prediction WT: rows x % 4 != 0 (6 of 8); correction WT: x < 2 (2 rows); both: x = 1.
    // Dice 2 * 1 / (6 + 2) = 0.25.
    let wt = scores["dice"]["wt"].as_f64().unwrap();
    assert!(
        (wt - 0.25).abs() < 1e-9,
        "scores against the correction: {scores}"
    );

    let second = label_file(app.dir.path(), "second.nii.gz", 3, SHAPE);
    let (status, saved) = save(&app, id, second.clone(), "Dr. B").await;
    assert_eq!(status, StatusCode::CREATED, "{saved}");
    assert_eq!(saved["version"], 2);

    let (_, history) = app.get_json(&format!("/api/studies/{id}/labels")).await;
    assert_eq!(history["truth"], "final-v2", "{history}");
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{history}");
    assert_eq!(versions[0]["author"], "Dr. A. Reader");
    assert_eq!(versions[1]["author"], "Dr. B");
    assert!(versions[0]["created_at"].as_f64().unwrap() > 0.0);
    let (_, v1, _) = app.get(versions[0]["url"].as_str().unwrap()).await;
    assert_eq!(v1, first, "version 1 is kept as it was saved");
    let (status, v0, _) = app.get(&format!("/api/studies/{id}/labels/0")).await;
    assert_eq!(status, StatusCode::OK);
    let uploaded =
        std::fs::read(app.dir.path().join("patient/patient/patient_seg.nii.gz")).unwrap();
    assert_eq!(
        v0, uploaded,
        "version 0 is the label uploaded with the study"
    );

    // Refused labels name the problem and store nothing.
    let (status, body) = save(
        &app,
        id,
        label_file(app.dir.path(), "small.nii.gz", 1, [8, 8, 3]),
        "x",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("shape"), "{body}");
    let three = Array3::from_shape_fn(SHAPE, |_| 7.0f32);
    write_nifti(&app.dir.path().join("three.nii.gz"), &three);
    let (status, body) = save(
        &app,
        id,
        std::fs::read(app.dir.path().join("three.nii.gz")).unwrap(),
        "x",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not a BraTS label"),
        "{body}"
    );
    let (_, history) = app.get_json(&format!("/api/studies/{id}/labels")).await;
    assert_eq!(
        history["versions"].as_array().unwrap().len(),
        2,
        "{history}"
    );
    let stored = walk_labels(&app.data_dir().join("studies"));
    assert_eq!(stored, 2, "only the two saved versions are on disk");

    // A MONAI Label client's final label lands in the same place: version 3, the new truth.
    let form = Multipart::default()
        .text("params", r#"{"client_id": "slicer-user"}"#)
        .file("label", "label.nii.gz", first.clone());
    let mut request = form.request(&format!(
        "/monailabel/datastore/label?image=study-{id}&tag=final"
    ));
    *request.method_mut() = axum::http::Method::PUT;
    let (status, body, _) = app.request(request).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (_, history) = app.get_json(&format!("/api/studies/{id}/labels")).await;
    assert_eq!(history["truth"], "final-v3", "{history}");
    assert_eq!(history["versions"][2]["author"], "slicer-user", "{history}");
}

async fn add(
    app: &TestApp,
    dataset: i64,
    study: i64,
    case: &str,
) -> (StatusCode, serde_json::Value) {
    app.post_json(
        &format!("/api/datasets/{dataset}/cases/from-study"),
        serde_json::json!({ "study_id": study, "case": case }),
    )
    .await
}

fn walk_labels(studies: &Path) -> usize {
    std::fs::read_dir(studies)
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_dir(e.path().join("labels")).ok())
        .map(|d| d.count())
        .sum()
}

#[tokio::test]
async fn a_corrected_study_joins_a_dataset_made_here_as_a_case_in_the_brats_layout() {
    let app = TestApp::new().await;
    let (status, dataset) = app
        .post_json(
            "/api/datasets",
            serde_json::json!({ "name": "corrections" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{dataset}");
    let dataset = dataset["id"].as_i64().unwrap();
    // Without a ground truth there is nothing to train on.
    let unlabelled = study(&app, "unlabelled", false).await;
    let (status, body) = add(&app, dataset, unlabelled, "first").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no ground truth"),
        "{body}"
    );

    let corrected = label_file(app.dir.path(), "fix.nii.gz", 2, SHAPE);
    let (status, _) = save(&app, unlabelled, corrected.clone(), "Dr. A").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, view) = add(&app, dataset, unlabelled, "fixed-1").await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    assert_eq!(view["report"]["cases"], 1, "{view}");
    assert_eq!(view["report"]["valid_cases"], 1, "{view}");
    let case = app.data_dir().join("datasets/corrections/fixed-1");
    assert_eq!(
        std::fs::read(case.join("fixed-1_seg.nii.gz")).unwrap(),
        corrected
    );
    let flair = std::fs::read(
        app.dir
            .path()
            .join("unlabelled/unlabelled/unlabelled_flair.nii.gz"),
    )
    .unwrap();
    assert_eq!(
        std::fs::read(case.join("fixed-1_flair.nii.gz")).unwrap(),
        flair
    );

    // An existing case is never replaced; a registered folder is never written to.
    let (status, body) = add(&app, dataset, unlabelled, "fixed-1").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let registered = app.register_dataset("brats", 1).await;
    let (status, body) = app
        .post_json(
            &format!("/api/datasets/{registered}/cases/from-study"),
            serde_json::json!({ "study_id": unlabelled }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("registered folder"),
        "{body}"
    );
    let left: Vec<_> = std::fs::read_dir(app.data_dir().join("datasets/corrections"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 1, "no staging folder left: {left:?}");
}
