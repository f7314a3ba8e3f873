//! The typed contract between the application and the trainer: run requests are built and checked
//! with the trainer's own types (422 before anything is queued), handed to the child as a file,
//! the form and `GET /api/vocabulary` offer every option, feature datasets are registered with
//! their task, and the pages show each task's own metrics.

mod common;

use axum::http::StatusCode;
use cggm_core::config::{Method, TrainConfig};
use cggm_core::preset::Preset;
use cggm_core::request::RunOptions;
use common::*;
use std::path::Path;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

fn request(dataset: i64, extra: serde_json::Value) -> serde_json::Value {
    let mut body = serde_json::json!({ "dataset_id": dataset, "method": "cggm", "preset": "tiny", "epochs": 1 });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// A safetensors file with the given F32 tensors (zeros), through the core's writer.
fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>)]) {
    use cggm_core::data::features::safetensors::{write_safetensors, Values};
    let zeros: Vec<Vec<f32>> = tensors
        .iter()
        .map(|(_, shape)| vec![0.0; shape.iter().product()])
        .collect();
    let named: Vec<(&str, &[usize], Values)> = tensors
        .iter()
        .zip(&zeros)
        .map(|((name, shape), z)| (*name, shape.as_slice(), Values::F32(z)))
        .collect();
    write_safetensors(path, &named).unwrap();
}

/// A classification feature dataset (text [5, 8] and audio [3] per sample) in `dir`.
fn write_feature_dataset(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("dataset.json"),
        r#"{"task": "classification", "classes": ["negative", "neutral", "positive"],
           "modalities": [{"name": "text", "dim": 8, "seq_len": 5}, {"name": "audio", "dim": 3}]}"#,
    )
    .unwrap();
    for (split, n) in [("train", 40), ("valid", 10), ("test", 12)] {
        write_safetensors(
            &dir.join(format!("{split}.safetensors")),
            &[
                ("text", vec![n, 5, 8]),
                ("audio", vec![n, 3]),
                ("labels", vec![n]),
            ],
        );
    }
}

#[tokio::test]
async fn each_invalid_value_class_gets_422_naming_it_and_nothing_is_queued() {
    let app = TestApp::new().await;
    let dataset = app.register_dataset("brats", 2).await;
    let cases = [
        (
            serde_json::json!({ "lr": 0 }),
            "learning rate must be positive",
        ),
        (
            serde_json::json!({ "crop": 50 }),
            "crop 50 must be a multiple of 16",
        ),
        (
            serde_json::json!({ "method": "magic" }),
            "unknown method \"magic\"",
        ),
        (
            serde_json::json!({ "preset": "huge" }),
            "unknown preset \"huge\"",
        ),
        (
            serde_json::json!({ "device": "tpu" }),
            "unknown device \"tpu\"",
        ),
        (
            serde_json::json!({ "optimizer": "lbfgs" }),
            "optimizer: unknown variant `lbfgs`",
        ),
        (
            serde_json::json!({ "balance": "magic" }),
            "balance: unknown variant",
        ),
        (
            serde_json::json!({ "direction": "sideways" }),
            "direction: unknown variant",
        ),
        (
            serde_json::json!({ "epochs": 0 }),
            "epochs must be at least 1",
        ),
        (serde_json::json!({ "epochs": -3 }), "epochs: invalid value"),
        (
            serde_json::json!({ "batch_size": "many" }),
            "batch_size: invalid type",
        ),
        (
            serde_json::json!({ "rho": -1.0 }),
            "rho must be a finite non-negative number",
        ),
        (
            serde_json::json!({ "cls_lr": 0.0 }),
            "classifier learning rate (cls_lr) must be a positive",
        ),
        (
            serde_json::json!({ "grad_clip": -1.0 }),
            "grad_clip must be a positive number",
        ),
        (
            serde_json::json!({ "steps_per_epoch": 0 }),
            "steps_per_epoch must be at least 1",
        ),
        (
            serde_json::json!({ "val_cases": 0 }),
            "val_cases must be at least 1",
        ),
        (
            serde_json::json!({ "mixed_precision": "yes" }),
            "mixed_precision: invalid type",
        ),
        (
            serde_json::json!({ "learning_rate": 0.1 }),
            "\"learning_rate\" is not a run option",
        ),
        (
            serde_json::json!({ "dataset_id": "brats" }),
            "dataset_id must be a dataset's number",
        ),
    ];
    for (extra, expected) in cases {
        let body = request(dataset, extra);
        let (status, answer) = app.post_json("/api/jobs", body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} -> {answer}"
        );
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(expected),
            "{body}: {error:?} should contain {expected:?}"
        );
    }
    let (_, jobs) = app.get_json("/api/jobs").await;
    assert_eq!(jobs, serde_json::json!([]));
    let runs = app.data_dir().join("runs");
    let left: Vec<_> = std::fs::read_dir(&runs)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "run folders were made: {left:?}");
}

#[tokio::test]
async fn a_valid_request_becomes_the_childs_config_file_with_every_option() {
    let app = TestApp::new().await;
    let dataset = app.register_dataset("brats", 2).await;
    let body = request(
        dataset,
        serde_json::json!({
            "method": "cggm-magnitude", "epochs": 2, "device": "cpu", "seed": 4, "rho": 1.2,
            "lambda": 0.05, "lr": 0.003, "cls_lr": 0.002, "batch_size": 2, "crop": 32,
            "steps_per_epoch": 3, "val_cases": 1, "optimizer": "sgd", "balance": "raw",
            "direction": "authors-weight-cosine", "grad_clip": 5.0, "workers": 0,
            "mixed_precision": false
        }),
    );
    let (status, job) = app.post_json("/api/jobs", body).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_i64().unwrap();
    assert_eq!(job["kind"], "train");
    assert_eq!(job["params"]["task"], "segmentation");
    assert_eq!(job["params"]["method"], "cggm-magnitude");

    let file = app.data_dir().join(format!("runs/job-{id}/request.json"));
    let config: TrainConfig =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(config.method, Method::CggmMagnitude);
    assert_eq!((config.epochs, config.seed), (2, 4));
    assert_eq!(config.cggm.balance, cggm_core::balance::BalanceFormula::Raw);
    assert_eq!(config.grad_clip, Some(5.0));
    assert_eq!((config.sampler.crop, config.sampler.workers), (32, 0));
    assert_eq!(
        config.data,
        app.data_dir()
            .join("datasets/brats")
            .canonicalize()
            .unwrap()
    );

    app.wait_for_job(id, &["succeeded"], DEADLINE).await;
    let (_, log, _) = app.get(&format!("/api/jobs/{id}/log")).await;
    let log = String::from_utf8_lossy(&log);
    assert!(
        log.contains(&format!("train --config {}", file.display())),
        "{log}"
    );
}

#[tokio::test]
async fn a_method_in_the_config_file_reaches_the_child() {
    // The stand-in trainer fails for unimodal:t2, which it can only know from request.json.
    let app = TestApp::new().await;
    let dataset = app.register_dataset("brats", 1).await;
    let (_, job) = app
        .post_json(
            "/api/jobs",
            request(dataset, serde_json::json!({ "method": "unimodal:t2" })),
        )
        .await;
    let job = app
        .wait_for_job(job["id"].as_i64().unwrap(), &["failed"], DEADLINE)
        .await;
    assert_eq!(job["exit_code"], 3);
}

#[tokio::test]
async fn the_vocabulary_lists_what_the_trainer_offers() {
    let app = TestApp::new().await;
    let (status, v) = app.get_json("/api/vocabulary").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        v["tasks"],
        serde_json::json!(["segmentation", "classification", "regression"])
    );
    let presets: Vec<&str> = v["presets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in Preset::ALL.map(Preset::name) {
        assert!(presets.contains(&name), "{name} missing from {presets:?}");
    }
    let options: Vec<String> = v["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(options, RunOptions::names());
    assert!(v["devices"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("cpu")));
    assert_eq!(v["modalities"]["segmentation"][0], "flair");
    assert_eq!(v["headline_metrics"]["classification"], "accuracy");
}

#[tokio::test]
async fn every_run_option_is_a_field_of_the_new_run_form() {
    let app = TestApp::new().await;
    app.register_dataset("brats", 1).await;
    let (status, html, _) = app.get("/runs/new").await;
    assert_eq!(status, StatusCode::OK);
    let html = String::from_utf8_lossy(&html);
    for name in RunOptions::names() {
        assert!(
            html.contains(&format!("name=\"{name}\"")),
            "the form has no field for {name}"
        );
    }
    assert!(html.contains("<option>adamw</option>"), "{html}");
    assert!(html.contains("<option>authors-weight-cosine</option>"));
    assert!(html.contains("<option>unimodal:t1ce</option>"));
}

#[tokio::test]
async fn a_feature_dataset_is_registered_with_its_task_shapes_and_sample_counts() {
    let app = TestApp::new().await;
    let dir = app.data_dir().join("datasets/mosi-like");
    write_feature_dataset(&dir);
    let (status, body) = app
        .post_json(
            "/api/datasets",
            serde_json::json!({ "name": "mosi-like", "path": dir.display().to_string() }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_i64().unwrap();

    let (_, html, _) = app.get("/datasets").await;
    let html = String::from_utf8_lossy(&html);
    for expected in [
        "classification",
        "3 classes: negative, neutral, positive",
        "40 train / 10 valid / 12 test",
        "<td>text</td><td>5×8</td>",
        "<td>audio</td><td>3</td>",
    ] {
        assert!(html.contains(expected), "{expected:?} not on the page");
    }
    let (_, form, _) = app.get("/runs/new").await;
    let form = String::from_utf8_lossy(&form);
    assert!(form.contains("data-task=\"classification\" data-modalities=\"text,audio\""));
    assert!(form.contains("<option>unimodal:text</option>"), "{form}");

    // A segmentation preset does not fit a classification dataset: 422, nothing queued.
    let (status, answer) = app
        .post_json("/api/jobs", request(id, serde_json::json!({})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains(
            "dataset mosi-like holds classification data, but preset tiny trains segmentation, \
             not classification: choose cpu-features, paper-iemocap, paper-food101"
        ),
        "{answer}"
    );
    assert_eq!(app.get_json("/api/jobs").await.1, serde_json::json!([]));
}

#[tokio::test]
async fn a_feature_dataset_with_a_broken_split_file_says_which_and_cannot_train() {
    let app = TestApp::new().await;
    let dir = app.data_dir().join("datasets/broken");
    write_feature_dataset(&dir);
    std::fs::write(dir.join("valid.safetensors"), b"\x10\x00").unwrap();
    let (_, body) = app
        .post_json(
            "/api/datasets",
            serde_json::json!({ "name": "broken", "path": dir.display().to_string() }),
        )
        .await;
    let (_, html, _) = app.get("/datasets").await;
    assert!(String::from_utf8_lossy(&html)
        .contains("valid.safetensors: it is shorter than a safetensors header"));
    let (status, answer) = app
        .post_json(
            "/api/jobs",
            serde_json::json!({ "dataset_id": body["id"], "method": "joint" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("has no valid case to train on"));
}

#[tokio::test]
async fn an_unknown_job_kind_filter_is_a_bad_request() {
    let app = TestApp::new().await;
    assert_eq!(
        app.get("/api/jobs?kind=bake").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(app.get_json("/api/jobs?kind=infer").await.0, StatusCode::OK);
}

/// Stores a finished classification run (as the trainer would report it) directly.
async fn stored_classification_run(app: &TestApp) -> i64 {
    let params = serde_json::json!({ "task": "classification", "method": "cggm", "preset": "cpu-features", "epochs": 2, "dataset": "food" });
    let out = app.data_dir().join("runs/job-1");
    std::fs::create_dir_all(out.join("checkpoints")).unwrap();
    std::fs::write(out.join("checkpoints/best.safetensors"), b"weights").unwrap();
    std::fs::write(out.join("checkpoints/best.json"), br#"{"epoch": 1}"#).unwrap();
    std::fs::write(
        out.join("metrics.json"),
        r#"{"test": {"confusion_matrix": [[5, 1], [2, 4]], "class_names": ["cat", "dog"]}}"#,
    )
    .unwrap();
    let id = sqlx::query(
        "INSERT INTO jobs (kind, state, params, out_dir, created_at) VALUES ('train', 'succeeded', ?, ?, 0)",
    )
    .bind(params.to_string())
    .bind(out.display().to_string())
    .execute(&app.state.pool)
    .await
    .unwrap()
    .last_insert_rowid();
    let events = [
        serde_json::json!({ "event": "validation", "time": 1.0, "epoch": 1, "train_loss": 0.5, "best": true,
            "metrics": { "accuracy": 0.75, "f1_weighted": 0.74 },
            "modality_metrics": { "text": { "accuracy": 0.7 }, "image": { "accuracy": 0.55 } } }),
        serde_json::json!({ "event": "finished", "time": 2.0, "best_epoch": 1,
            "test_metrics": { "accuracy": 0.72, "f1_macro": 0.7 } }),
    ];
    for (seq, e) in events.iter().enumerate() {
        sqlx::query("INSERT INTO events (job_id, seq, kind, time, data) VALUES (?, ?, ?, 1.0, ?)")
            .bind(id)
            .bind(seq as i64 + 1)
            .bind(e["event"].as_str().unwrap())
            .bind(e.to_string())
            .execute(&app.state.pool)
            .await
            .unwrap();
    }
    id
}

#[tokio::test]
async fn dashboard_and_models_show_a_classification_runs_own_metrics() {
    let app = TestApp::new().await;
    let id = stored_classification_run(&app).await;

    let (_, dashboard, _) = app.get("/").await;
    let dashboard = String::from_utf8_lossy(&dashboard);
    for expected in [
        "<td>classification</td>",
        "<strong>accuracy 0.750</strong>",
        "F1 weighted 0.740",
        "<span class=\"modname\">text</span>",
        "<span>0.550</span>",
    ] {
        assert!(
            dashboard.contains(expected),
            "{expected:?} not on the dashboard"
        );
    }
    let (_, models, _) = app.get("/models").await;
    let models = String::from_utf8_lossy(&models);
    assert!(models.contains("image 0.550 · text 0.700"), "{models}");
    assert!(
        models.contains(">0.720<"),
        "the test accuracy is missing: {models}"
    );
    assert!(models.contains("Test report"));

    let (status, metrics) = app.get_json(&format!("/api/jobs/{id}/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(metrics["test"]["confusion_matrix"][0][1], 1);
    let (_, page, _) = app.get(&format!("/jobs/{id}")).await;
    assert!(String::from_utf8_lossy(&page).contains("data-headline=\"accuracy\""));
}

/// POSTs a run request; the 422's error text (fails the test on any other status).
async fn refusal(app: &TestApp, body: serde_json::Value) -> String {
    let (status, answer) = app.post_json("/api/jobs", body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    answer["error"].as_str().unwrap().to_string()
}

/// Fine-tuning from the API (issue 21 item 3): `init_from` names a finished run by its id, the
/// server resolves it to that run's folder for the trainer (`init_from` in `request.json`), the
/// form offers the finished runs, and a request that cannot start from the run says why.
#[tokio::test]
async fn init_from_a_finished_run_reaches_the_trainer_as_its_folder_and_bad_sources_are_refused() {
    let app = TestApp::new().await;
    let source = app.finished_run().await;
    let dataset = app.get_json("/api/jobs").await.1[0]["dataset_id"]
        .as_i64()
        .unwrap();
    let source_dir = app.data_dir().join(format!("runs/job-{source}"));

    // The form offers the finished run, with its task.
    let (_, form, _) = app.get("/runs/new").await;
    let form = String::from_utf8_lossy(&form);
    assert!(
        form.contains(&format!(
            "<option value=\"{source}\" data-task=\"segmentation\">#{source} · cggm · tiny"
        )),
        "{form}"
    );

    let (status, job) = app
        .post_json(
            "/api/jobs",
            request(dataset, serde_json::json!({ "init_from": source })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["params"]["init_from"], source, "{job}");
    let id = job["id"].as_i64().unwrap();
    let config: TrainConfig = serde_json::from_str(
        &std::fs::read_to_string(app.data_dir().join(format!("runs/job-{id}/request.json")))
            .unwrap(),
    )
    .unwrap();
    let folder = config.init_from.expect("request.json names the source");
    assert!(folder.is_absolute(), "{}", folder.display());
    assert_eq!(
        folder.canonicalize().unwrap(),
        source_dir.canonicalize().unwrap()
    );
    app.wait_for_job(id, &["succeeded"], DEADLINE).await;

    // Refusals name the problem; nothing is queued.
    let jobs_before = app.get_json("/api/jobs").await.1.as_array().unwrap().len();
    let with = |v: serde_json::Value| request(dataset, serde_json::json!({ "init_from": v }));
    let e = refusal(&app, with(serde_json::json!("runs/job-1"))).await;
    assert!(
        e.contains("init_from: \"runs/job-1\" is not a run's number"),
        "{e}"
    );
    let e = refusal(&app, with(serde_json::json!(999))).await;
    assert!(e.contains("init_from: there is no run 999"), "{e}");
    let study = app.upload_study("patient").await;
    let prediction = app.segment(study, source).await;
    let e = refusal(&app, with(serde_json::json!(prediction))).await;
    assert!(e.contains("is a segmentation, not a training run"), "{e}");
    // The stand-in trainer fails unimodal:t2 runs: a failed run is no source.
    let (_, failed) = app
        .post_json(
            "/api/jobs",
            request(dataset, serde_json::json!({ "method": "unimodal:t2" })),
        )
        .await;
    let failed = failed["id"].as_i64().unwrap();
    app.wait_for_job(failed, &["failed"], DEADLINE).await;
    let e = refusal(&app, with(serde_json::json!(failed))).await;
    assert!(
        e.contains(&format!(
            "run {failed} is failed: start from a run that finished"
        )),
        "{e}"
    );
    // Another network: a run of one modality cannot start a four-modality run.
    let e = refusal(
        &app,
        request(
            dataset,
            serde_json::json!({ "init_from": source, "method": "unimodal:flair" }),
        ),
    )
    .await;
    assert!(
        e.contains(&format!(
            "run {source} cannot start this run: its network reads flair, t1ce, t1, t2 and this \
             run's reads flair"
        )),
        "{e}"
    );
    // Another task: a classification run cannot start a segmentation run.
    let features = app.data_dir().join("datasets/mosi-like");
    write_feature_dataset(&features);
    let (_, registered) = app
        .post_json(
            "/api/datasets",
            serde_json::json!({ "name": "mosi-like", "path": features.display().to_string() }),
        )
        .await;
    let (status, classification) = app
        .post_json(
            "/api/jobs",
            serde_json::json!({ "dataset_id": registered["id"], "preset": "cpu-features", "epochs": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{classification}");
    let classification = classification["id"].as_i64().unwrap();
    app.wait_for_job(classification, &["succeeded"], DEADLINE)
        .await;
    let e = refusal(&app, with(serde_json::json!(classification))).await;
    assert!(
        e.contains(&format!(
            "run {classification} cannot start this run: it trained classification and this run \
             trains segmentation"
        )),
        "{e}"
    );
    // A run whose checkpoints are gone.
    std::fs::remove_dir_all(source_dir.join("checkpoints")).unwrap();
    let e = refusal(&app, with(serde_json::json!(source))).await;
    assert!(
        e.contains(&format!("run {source} left no checkpoint (best or last)")),
        "{e}"
    );
    let jobs_after = app.get_json("/api/jobs").await.1.as_array().unwrap().len();
    // The segmentation, the failed and the classification run were queued on purpose; no
    // refused request was.
    assert_eq!(jobs_after, jobs_before + 3);
}
