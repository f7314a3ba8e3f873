//! The MONAI Label–compatible API (`/monailabel`, issue 21): driven by the real
//! `monailabel.client.MONAILabelClient` (3D Slicer's and OHIF's way in) against a real `cggm serve`
//! with a trained checkpoint, whose label must equal what `cggm infer` writes for the same study;
//! and, in process, its security rules (bearer token, no `X-CGGM-Request`, cross-site refusal),
//! its datastore and the checks its uploads and labels pass.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::live::*;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "monailabel-test-token-0123456789";
const TRAIN_DEADLINE: Duration = Duration::from_secs(300);

/// A reqwest client that signs in with the bearer token and sends `X-CGGM-Request` (for the
/// application's own routes the test uses to set up a run).
fn bearer_app_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-cggm-request", "1".parse().unwrap());
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monailabel_client_info_upload_session_infer_and_save_label_match_cggm_infer() {
    let python = common::dicom::python();
    let dir = tempfile::tempdir().unwrap();
    let mut server = LiveServer::start_with_env(
        &dir.path().join("data"),
        &["--no-demo"],
        &[("CGGM_TOKEN", TOKEN)],
    );
    server.client = bearer_app_client();
    let dataset = server.tiny_dataset("tiny").await;
    let run = server.tiny_training(dataset).await;
    server.job_succeeded(run, TRAIN_DEADLINE).await;

    // What `cggm infer` writes for the case, from its four modality files.
    let case = server.data_dir.join("datasets/tiny/BraTS2021_00001");
    let reference = dir.path().join("reference_seg.nii.gz");
    let mut infer = Command::new(cggm());
    infer
        .arg("infer")
        .arg("--checkpoint")
        .arg(server.data_dir.join(format!("runs/job-{run}")));
    for m in ["flair", "t1ce", "t1", "t2"] {
        infer
            .arg("--case")
            .arg(case.join(format!("BraTS2021_00001_{m}.nii.gz")));
    }
    let status = infer
        .args(["--device", "cpu", "--out"])
        .arg(&reference)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "cggm infer failed");

    // The same four files as a study uploaded through the pages: an image by its default ID.
    let form = case_form(&case, Some("web-upload"), &["flair", "t1ce", "t1", "t2"]);
    let response = server.post_multipart("/api/studies", form).await;
    assert_eq!(response.status(), 201);
    let study: serde_json::Value = response.json().await.unwrap();
    let web_image = format!("study-{}", study["id"]);

    // The client, in the project's Python, against the server's MONAI Label URL.
    let work = dir.path().join("client");
    std::fs::create_dir_all(&work).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/monailabel_client.py");
    let output = Command::new(&python)
        .arg(script)
        .arg(server.url("/monailabel"))
        .arg(TOKEN)
        .arg(&case)
        .arg(&reference)
        .arg(&work)
        .arg(&web_image)
        .output()
        .expect("the project's python starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "monailabel_client.py failed:\n{stdout}\n{}\nserver job log: {}",
        String::from_utf8_lossy(&output.stderr),
        server.get_text("/monailabel/logs/").await
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("the script prints its report")).unwrap();
    assert_eq!(report["model"], format!("run-{run}"), "{report}");
    // Voxel for voxel, by nibabel: the label of the uploaded image and of a session.
    for key in ["datastore_label", "session_label", "web_study_label"] {
        assert_eq!(report[key]["differing_voxels"], 0, "{key}: {report}");
        assert_eq!(report[key]["shape"], serde_json::json!([32, 32, 16]));
    }
    assert_eq!(report["label_versions"], 2, "{report}");
    assert_eq!(report["downloaded_label_is_latest"], true, "{report}");
    assert_eq!(report["downloaded_image_matches"], true, "{report}");
    assert_eq!(report["stacked_image_matches"], true, "{report}");
    // POST /train/{model} is a new training job; DELETE /train/ cancels it.
    let task = &report["train_task"];
    assert_eq!(task["status"], "STOPPED", "{report}");
    assert_eq!(task["id"], task["first"], "{report}");
    let job = server
        .get_json(&format!("/api/jobs/{}", task["id"].as_str().unwrap()))
        .await;
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(job["dataset_id"], dataset, "{job}");
    assert_eq!(report["logs_name_the_job"], true, "{report}");

    // The inference ran as a prediction job of the study: the same place as the pages'.
    let predictions = server.get_json("/api/predictions").await;
    let of_study: Vec<&serde_json::Value> = predictions
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["study"]["name"] == "patient_x")
        .collect();
    assert_eq!(of_study.len(), 1, "{predictions}");
    assert_eq!(of_study[0]["checkpoint_job_id"], run);

    // Active learning by disagreement: a second model segments the one unlabelled image (the
    // web-uploaded study, which the first model segmented above); the strategy picks it, scored as
    // the share of voxels, among those either labels, where the two segmentations differ.
    let second = server
        .post_job(
            serde_json::json!({ "dataset_id": dataset, "method": "joint", "preset": "tiny",
                                      "epochs": 1, "steps_per_epoch": 2, "device": "cpu",
                                      "seed": 5 }),
        )
        .await;
    server.job_succeeded(second, TRAIN_DEADLINE).await;
    let study_id = study["id"].as_i64().unwrap();
    let by_second = server.predict(study_id, second).await;
    server.job_succeeded(by_second, TRAIN_DEADLINE).await;
    let by_first = predictions
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["study_id"] == study_id && p["checkpoint_job_id"] == run)
        .expect("the first model's prediction of the web study")["id"]
        .as_i64()
        .unwrap();
    let seg = |job: i64| {
        let path = server
            .data_dir
            .join(format!("predictions/job-{job}/seg.nii.gz"));
        cggm_core::data::read_volume(&path).unwrap().1
    };
    let (a, b) = (seg(by_first), seg(by_second));
    let labelled = a.iter().zip(&b).filter(|(x, y)| **x != 0.0 || **y != 0.0);
    let (union, differ) = labelled.fold((0, 0), |(u, d), (x, y)| (u + 1, d + (x != y) as usize));
    let expected = if union == 0 {
        0.0
    } else {
        differ as f64 / union as f64
    };
    let response = server
        .client
        .post(server.url("/monailabel/activelearning/disagreement"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    let sample: serde_json::Value = response.json().await.unwrap();
    assert_eq!(sample["id"], web_image, "{sample}");
    let score = sample["score"].as_f64().unwrap();
    // The two tiny models (different methods and seeds) do disagree on this case.
    assert!(expected > 0.0 && union > 0, "{union} {differ}");
    assert!(
        (score - expected).abs() < 1e-12,
        "{score} != {expected}: {sample}"
    );
}

/// A request to the in-process application with the given headers (no `X-CGGM-Request`).
async fn send(
    app: &TestApp,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    form: Option<&Multipart>,
) -> (StatusCode, serde_json::Value, Vec<u8>) {
    let mut request = match form {
        Some(form) => form.request(uri),
        None => Request::get(uri).body(Body::empty()).unwrap(),
    };
    *request.method_mut() = method;
    for (name, value) in headers {
        request.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            axum::http::HeaderValue::from_str(value).unwrap(),
        );
    }
    let (status, body, _) = app.request_raw(request).await;
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, json, body)
}

const BEARER: (&str, &str) = ("authorization", "Bearer monailabel-test-token-0123456789");

fn image_form(dir: &Path, name: &str) -> Multipart {
    let path = dir.join(name);
    write_4d(&path, [8, 8, 4]);
    Multipart::default()
        .text("params", "{\"client_id\": \"slicer\"}")
        .file("file", name, std::fs::read(&path).unwrap())
}

fn label_form(dir: &Path, shape: [usize; 3], value: f32) -> Multipart {
    let path = dir.join(format!("label-{value}.nii.gz"));
    let mut data = labels(shape);
    data[[0, 0, 0]] = value;
    write_nifti(&path, &data);
    Multipart::default()
        .text("params", "{\"client_id\": \"reader-1\"}")
        .file("label", "label.nii.gz", std::fs::read(&path).unwrap())
}

#[tokio::test]
async fn routes_need_the_bearer_token_and_refuse_what_a_browser_marks_cross_site() {
    let app = TestApp::with(|c| c.token = Some(TOKEN.into())).await;
    let dir = app.dir.path().to_path_buf();

    // No token, or a wrong one: 401 (JSON, not the login page's redirect), for reads and changes.
    let (status, body, _) = send(&app, Method::GET, "/monailabel/info/", &[], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let wrong = [("authorization", "Bearer not-the-token")];
    let (status, _, _) = send(&app, Method::GET, "/monailabel/info/", &wrong, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let form = image_form(&dir, "patient.nii.gz");
    let uri = "/monailabel/datastore/?image=patient";
    let (status, _, _) = send(&app, Method::PUT, uri, &[], Some(&form)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // With the token: no X-CGGM-Request needed (MONAI Label's clients cannot send it).
    let (status, info, _) = send(&app, Method::GET, "/monailabel/info/", &[BEARER], None).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["datastore"]["total"], 0, "{info}");
    assert_eq!(info["labels"]["enhancing tumour"], 4, "{info}");

    // What a browser marks as another site's (or origin's) is refused, whatever the method.
    for marks in [
        [("sec-fetch-site", "cross-site"), BEARER],
        [("sec-fetch-site", "same-site"), BEARER],
        [("origin", "http://attacker.example"), BEARER],
    ] {
        let (status, body, _) = send(&app, Method::PUT, uri, &marks, Some(&form)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{marks:?}: {body}");
        if marks[0].0 == "sec-fetch-site" {
            let (status, _, _) =
                send(&app, Method::GET, "/monailabel/datastore/", &marks, None).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "GET {marks:?}");
        }
    }
    let (status, _, _) = send(&app, Method::GET, "/monailabel/info/", &[BEARER], None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, stats, _) = send(&app, Method::GET, "/monailabel/datastore/", &[BEARER], None).await;
    assert_eq!(
        stats["total"], 0,
        "nothing was stored by a refused request: {stats}"
    );

    // The same upload from the same origin passes.
    let same = [("sec-fetch-site", "same-origin"), BEARER];
    let (status, body, _) = send(&app, Method::PUT, uri, &same, Some(&form)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["image"], "patient");

    // The exemption is these routes' only: the application's own still need X-CGGM-Request.
    let study = Multipart::default().files(&write_case(&dir, "case", [8, 8, 4], false));
    let (status, body, _) = send(&app, Method::POST, "/api/studies", &[BEARER], Some(&study)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn the_datastore_keeps_every_label_version_and_uploads_pass_the_study_checks() {
    let app = TestApp::new().await;
    let dir = app.dir.path().to_path_buf();
    let put = |uri: &'static str, form: Multipart| {
        let app = &app;
        async move { send(app, Method::PUT, uri, &[], Some(&form)).await }
    };

    let (status, body, _) = put(
        "/monailabel/datastore/?image=patient",
        image_form(&dir, "p.nii.gz"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A taken ID, the server's own ID form, a file that is not a study (the study checks' words).
    let (status, body, _) = put(
        "/monailabel/datastore/?image=patient",
        image_form(&dir, "p.nii.gz"),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body, _) = put(
        "/monailabel/datastore/?image=study-7",
        image_form(&dir, "p.nii.gz"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let three_d = dir.join("flat.nii.gz");
    write_nifti(&three_d, &volume([8, 8, 4], 0.0));
    let form = Multipart::default().file("file", "flat.nii.gz", std::fs::read(&three_d).unwrap());
    let (status, body, _) = put("/monailabel/datastore/?image=flat", form).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot tell the modality"),
        "{body}"
    );
    let form = Multipart::default().file("file", "notes.txt", b"hello".to_vec());
    let (status, body, _) = put("/monailabel/datastore/?image=notes", form).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // A study uploaded through the pages is an image too, under its default ID.
    let study = Multipart::default().files(&write_case(&dir, "web", [8, 8, 4], false));
    let (status, body) = app.post_multipart("/api/studies", &study).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let web_id = format!("study-{}", body["id"]);

    // Labels: the image's grid and BraTS values only; every save a new version.
    let label_uri = "/monailabel/datastore/label?image=patient&tag=final";
    let (status, body, _) = put(label_uri, label_form(&dir, [8, 8, 3], 0.0)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body, _) = put(label_uri, label_form(&dir, [8, 8, 4], 7.0)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("7"), "{body}");
    let first = label_form(&dir, [8, 8, 4], 1.0);
    let (status, body, _) = put(label_uri, first).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 1, "{body}");
    let second = label_form(&dir, [8, 8, 4], 2.0);
    let second_bytes = std::fs::read(dir.join("label-2.nii.gz")).unwrap();
    let first_bytes = std::fs::read(dir.join("label-1.nii.gz")).unwrap();
    let (status, body, _) = put(label_uri, second).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2, "{body}");

    let (_, all, _) = send(
        &app,
        Method::GET,
        "/monailabel/datastore/?output=all",
        &[],
        None,
    )
    .await;
    let objects = all["objects"].as_object().unwrap();
    assert_eq!(objects.len(), 2, "{all}");
    assert!(objects.contains_key(&web_id), "{all}");
    let final_label = &all["objects"]["patient"]["labels"]["final"]["info"];
    assert_eq!(final_label["versions"], 2, "{all}");
    assert_eq!(final_label["version"], 2, "{all}");
    assert_eq!(final_label["client_id"], "reader-1", "{all}");
    let (_, stats, _) = send(&app, Method::GET, "/monailabel/datastore/", &[], None).await;
    assert_eq!(stats["total"], 2, "{stats}");
    assert_eq!(stats["completed"], 1, "{stats}");

    let latest = "/monailabel/datastore/label?label=patient&tag=final";
    let (status, _, bytes) = send(&app, Method::GET, latest, &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, second_bytes, "the newest version");
    let older = "/monailabel/datastore/label?label=patient&tag=final&version=1";
    let (_, _, bytes) = send(&app, Method::GET, older, &[], None).await;
    assert_eq!(bytes, first_bytes, "the older version is kept");

    // Active learning: only the unlabelled image remains to choose.
    for _ in 0..5 {
        let (status, next, _) = send(
            &app,
            Method::POST,
            "/monailabel/activelearning/random",
            &[],
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{next}");
        assert_eq!(next["id"], web_id, "{next}");
    }
    let (status, body, _) = send(
        &app,
        Method::POST,
        "/monailabel/activelearning/disagreement",
        &[],
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "no two models: {body}"
    );
    let (status, _, _) = send(
        &app,
        Method::POST,
        "/monailabel/activelearning/nonsense",
        &[],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Sessions: made, read, removed.
    let (status, session, _) = put("/monailabel/session/", {
        let path = dir.join("s.nii.gz");
        write_4d(&path, [8, 8, 4]);
        Multipart::default().file("files", "s.nii.gz", std::fs::read(&path).unwrap())
    })
    .await;
    assert_eq!(status, StatusCode::OK, "{session}");
    let id = session["session_id"].as_str().unwrap().to_string();
    let uri = format!("/monailabel/session/{id}");
    let (status, info, _) = send(&app, Method::GET, &uri, &[], None).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["shape"], serde_json::json!([8, 8, 4]));
    let (status, _, _) = send(&app, Method::DELETE, &uri, &[], None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(&app, Method::GET, &uri, &[], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = send(&app, Method::GET, "/monailabel/session/..%2F..", &[], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
