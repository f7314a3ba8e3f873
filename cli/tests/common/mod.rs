//! Shared test helpers: an isolated application per test (fresh data directory and database), tiny
//! NIfTI volumes, multipart bodies, a stand-in `cggm` executable, and polling with a deadline.
#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use cggm_core::events::{Event, RegionScores};
use cggm_server::config::Config;
use cggm_server::AppState;
use ndarray::{Array3, Array4};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// The header the server requires on every state-changing request.
pub const APP_HEADER: &str = "x-cggm-request";

/// How long a job of the stand-in `cggm` may take to reach a state.
pub const FAKE_JOB_DEADLINE: Duration = Duration::from_secs(30);

/// A run request of one epoch of the `tiny` preset with `method` on `dataset_id`.
pub fn tiny_training_request(dataset_id: i64, method: &str) -> serde_json::Value {
    serde_json::json!({ "dataset_id": dataset_id, "method": method, "preset": "tiny", "epochs": 1 })
}

pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub state: AppState,
}

impl TestApp {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// With a stand-in `cggm` (see [`fake_cggm`]) unless the closure sets another binary.
    pub async fn with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let bin = fake_cggm(dir.path(), 0.0);
        let mut config = Config::new(data, bin);
        adjust(&mut config);
        let state = AppState::new(config).await.unwrap();
        Self { dir, state }
    }

    pub fn app(&self) -> Router {
        cggm_server::app(self.state.clone())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.state.data_dir().to_path_buf()
    }

    /// Sends the request as the application's pages do: state-changing requests carry the
    /// `X-CGGM-Request: 1` header the server requires (unless the test set it already).
    pub async fn request(&self, mut request: Request<Body>) -> (StatusCode, Vec<u8>, String) {
        let method = request.method().clone();
        let mutating = !matches!(
            method,
            axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
        );
        if mutating && !request.headers().contains_key(APP_HEADER) {
            request
                .headers_mut()
                .insert(APP_HEADER, axum::http::HeaderValue::from_static("1"));
        }
        self.request_raw(request).await
    }

    /// Sends the request exactly as given (no `X-CGGM-Request` header added).
    pub async fn request_raw(&self, request: Request<Body>) -> (StatusCode, Vec<u8>, String) {
        let response = self.app().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, body.to_vec(), content_type)
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, Vec<u8>, String) {
        self.request(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    pub async fn get_json(&self, uri: &str) -> (StatusCode, serde_json::Value) {
        let (status, body, _) = self.get(uri).await;
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    pub async fn post_json(
        &self,
        uri: &str,
        json: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        let request = Request::post(uri)
            .header("content-type", "application/json")
            .body(Body::from(json.to_string()))
            .unwrap();
        let (status, body, _) = self.request(request).await;
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    pub async fn post_multipart(
        &self,
        uri: &str,
        form: &Multipart,
    ) -> (StatusCode, serde_json::Value) {
        let (status, body, _) = self.request(form.request(uri)).await;
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Polls the job until it is in one of `states`, or fails the test at the deadline.
    pub async fn wait_for_job(
        &self,
        id: i64,
        states: &[&str],
        deadline: Duration,
    ) -> serde_json::Value {
        let until = Instant::now() + deadline;
        loop {
            let (_, job) = self.get_json(&format!("/api/jobs/{id}")).await;
            if states.contains(&job["state"].as_str().unwrap_or("")) {
                return job;
            }
            assert!(
                Instant::now() < until,
                "job {id} did not reach {states:?} in {deadline:?}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a CGGM training of the stand-in `cggm` on `dataset` (one tiny epoch); its id.
    pub async fn start_training(&self, dataset: i64) -> i64 {
        let (status, job) = self
            .post_json("/api/jobs", tiny_training_request(dataset, "cggm"))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{job}");
        job["id"].as_i64().unwrap()
    }

    /// A finished training run on a newly registered two-case dataset `brats`; the job's id.
    pub async fn finished_run(&self) -> i64 {
        let dataset = self.register_dataset("brats", 2).await;
        let id = self.start_training(dataset).await;
        self.wait_for_job(id, &["succeeded"], FAKE_JOB_DEADLINE)
            .await;
        id
    }

    /// A finished segmentation of `study` by a new [`TestApp::finished_run`]; the job's id.
    pub async fn finished_prediction(&self, study: i64) -> i64 {
        let run = self.finished_run().await;
        self.segment(study, run).await
    }

    /// Segments `study` with the checkpoint of the training job `run` and waits until the
    /// prediction succeeded; the prediction's (job) id.
    pub async fn segment(&self, study: i64, run: i64) -> i64 {
        let (status, job) = self
            .post_json(
                "/api/predictions",
                serde_json::json!({ "study_id": study, "checkpoint_job_id": run }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{job}");
        let id = job["id"].as_i64().unwrap();
        self.wait_for_job(id, &["succeeded"], FAKE_JOB_DEADLINE)
            .await;
        id
    }

    /// Uploads a four-modality case `<name>` (8x8x4, no label) as a study; its id.
    pub async fn upload_study(&self, name: &str) -> i64 {
        let files = write_case(&self.dir.path().join(name), name, [8, 8, 4], false);
        let (status, body) = self
            .post_multipart("/api/studies", &Multipart::default().files(&files))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_i64().unwrap()
    }

    /// Polls dataset `id` until its full check (`POST /api/datasets/<id>/validate`) has
    /// reported, or fails the test at the deadline; the dataset's view.
    pub async fn full_check(&self, id: i64, deadline: Duration) -> serde_json::Value {
        let until = Instant::now() + deadline;
        loop {
            let (_, dataset) = self.get_json(&format!("/api/datasets/{id}")).await;
            if dataset["validating"] == false && dataset["report"]["full_check"] == true {
                return dataset;
            }
            assert!(Instant::now() < until, "no full-check report: {dataset}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Nothing of a refused upload is left: no study folder, nothing in tmp/.
    pub fn assert_no_upload_left(&self) {
        for folder in ["studies", "tmp"] {
            let left: Vec<_> = std::fs::read_dir(self.data_dir().join(folder))
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert!(left.is_empty(), "{folder}/ holds {left:?}");
        }
    }

    /// Registers a BraTS folder `datasets/<name>` with `cases` good cases.
    pub async fn register_dataset(&self, name: &str, cases: usize) -> i64 {
        let root = self.data_dir().join("datasets").join(name);
        for i in 0..cases {
            write_case(&root, &format!("Case_{i:03}"), [8, 8, 4], true);
        }
        let (status, body) = self
            .post_json(
                "/api/datasets",
                serde_json::json!({ "name": name, "path": root.display().to_string() }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_i64().unwrap()
    }
}

/// A small 3-D volume: a bright blob whose intensity depends on `seed`.
pub fn volume(shape: [usize; 3], seed: f32) -> Array3<f32> {
    Array3::from_shape_fn(shape, |(x, y, z)| {
        (x + 2 * y + 3 * z) as f32 * (1.0 + seed) + 1.0
    })
}

/// Labels 0/1/2/4 in bands, so every label appears.
pub fn labels(shape: [usize; 3]) -> Array3<f32> {
    Array3::from_shape_fn(shape, |(x, _, _)| [0.0, 1.0, 2.0, 4.0][x % 4])
}

pub fn write_nifti(path: &Path, data: &Array3<f32>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    nifti::writer::WriterOptions::new(path)
        .write_nifti(data)
        .unwrap();
}

/// `<root>/<case>/<case>_{flair,t1ce,t1,t2[,seg]}.nii.gz`
pub fn write_case(root: &Path, case: &str, shape: [usize; 3], with_seg: bool) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (i, m) in ["flair", "t1ce", "t1", "t2"].iter().enumerate() {
        let path = root.join(case).join(format!("{case}_{m}.nii.gz"));
        write_nifti(&path, &volume(shape, i as f32));
        files.push(path);
    }
    if with_seg {
        let path = root.join(case).join(format!("{case}_seg.nii.gz"));
        write_nifti(&path, &labels(shape));
        files.push(path);
    }
    files
}

pub fn write_4d(path: &Path, shape: [usize; 3]) {
    let data = Array4::from_shape_fn((shape[0], shape[1], shape[2], 4), |(x, y, z, c)| {
        (x + y + z + c) as f32 + 1.0
    });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    nifti::writer::WriterOptions::new(path)
        .write_nifti(&data)
        .unwrap();
}

/// A gzipped uint8 NIfTI-1 file whose header claims `dims`, followed by `payload`: with a large
/// claim and a short or highly compressible payload, the uploads a server must refuse cheaply.
pub fn hostile_nifti(dims: [i16; 3], payload: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut header = vec![0u8; 352];
    header[0..4].copy_from_slice(&348i32.to_le_bytes());
    header[40..42].copy_from_slice(&3i16.to_le_bytes());
    for (i, d) in dims.iter().enumerate() {
        header[42 + 2 * i..44 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    header[70..72].copy_from_slice(&2i16.to_le_bytes()); // uint8
    header[72..74].copy_from_slice(&8i16.to_le_bytes());
    for i in 0..4 {
        header[76 + 4 * i..80 + 4 * i].copy_from_slice(&1.0f32.to_le_bytes()); // pixdim
    }
    header[108..112].copy_from_slice(&352.0f32.to_le_bytes()); // vox_offset
    header[344..348].copy_from_slice(b"n+1\0");
    header.extend_from_slice(payload);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&header).unwrap();
    gz.finish().unwrap()
}

/// A multipart/form-data body built by hand (oneshot tests have no HTTP client).
#[derive(Default)]
pub struct Multipart {
    parts: Vec<(String, Option<String>, Vec<u8>)>,
}

const BOUNDARY: &str = "cggm-test-boundary-7d1e";

impl Multipart {
    pub fn text(mut self, name: &str, value: &str) -> Self {
        self.parts
            .push((name.into(), None, value.as_bytes().to_vec()));
        self
    }

    pub fn file(mut self, name: &str, file_name: &str, bytes: Vec<u8>) -> Self {
        self.parts
            .push((name.into(), Some(file_name.into()), bytes));
        self
    }

    pub fn files(mut self, paths: &[PathBuf]) -> Self {
        for p in paths {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            self = self.file("files", &name, std::fs::read(p).unwrap());
        }
        self
    }

    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, file_name, bytes) in &self.parts {
            out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
            match file_name {
                Some(f) => out.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
                ),
                None => out.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
            }
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        out
    }

    pub fn request(&self, uri: &str) -> Request<Body> {
        Request::post(uri)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(Body::from(self.body()))
            .unwrap()
    }
}

/// Progress events a short training run writes, as JSON lines.
pub fn training_events() -> Vec<String> {
    let per_mod = |v: f64| -> BTreeMap<String, f64> {
        ["flair", "t1ce", "t1", "t2"]
            .iter()
            .map(|m| (m.to_string(), v))
            .collect()
    };
    let mut events = vec![Event::RunStarted {
        time: 1.0,
        config: serde_json::json!({ "method": "cggm" }),
        train_cases: 2,
        val_cases: 1,
        test_cases: 1,
        steps_per_epoch: 2,
        total_steps: 2,
        device: "cpu".into(),
        task: Default::default(),
        modalities: Vec::new(),
    }];
    for step in 1..=2 {
        events.push(Event::Step {
            time: 1.0 + step as f64,
            epoch: 1,
            step,
            loss: 1.0 / step as f64,
            task_loss: 0.9 / step as f64,
            gm_loss: 0.1,
            lr: 0.01,
            balance: per_mod(1.0),
            cosine: per_mod(0.5),
            modality_metric: per_mod(0.3),
            step_seconds: 0.1,
            balance_guarded: 0,
            balance_clamped: 0,
            baseline_coefficients: Default::default(),
        });
    }
    let scores = RegionScores::new(0.8, 0.7, 0.6);
    events.push(Event::Validation {
        time: 4.0,
        epoch: 1,
        train_loss: 0.5,
        dice: scores.clone(),
        hd95: RegionScores::new(5.0, 6.0, 7.0),
        modality_dice: ["flair", "t1ce", "t1", "t2"]
            .iter()
            .map(|m| (m.to_string(), RegionScores::new(0.5, 0.4, 0.3)))
            .collect(),
        best: true,
        metrics: BTreeMap::new(),
        modality_metrics: BTreeMap::new(),
    });
    events.push(Event::Finished {
        time: 5.0,
        best_epoch: 1,
        best_val_dice: scores,
        test_dice: None,
        test_modality_dice: BTreeMap::new(),
        test_metrics: BTreeMap::new(),
    });
    events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect()
}

/// A stand-in for the `cggm` binary (a shell script): `train` writes the events above and the
/// run's checkpoint files, `infer` writes a segmentation; both sleep `pause` seconds first.
/// The method `unimodal:t2` (a flag, or in the `--config` file) makes `train` fail with a message
/// on stderr.
pub fn fake_cggm(dir: &Path, pause: f64) -> PathBuf {
    let seg = dir.join("fake-seg.nii.gz");
    write_nifti(&seg, &labels([8, 8, 4]));
    let events = training_events().join("\n");
    let script = format!(
        r#"#!/bin/bash
echo "fake cggm $* starting" >&2
cmd="$1"; shift
out=""; method=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift;;
    --method) method="$2"; shift;;
    --config) method=$(sed -n 's/.*"method": *"\([^"]*\)".*/\1/p' "$2" | head -n 1); shift;;
  esac
  shift
done
if [ "$method" = "unimodal:t2" ]; then echo "CUDA out of memory (simulated)" >&2; exit 3; fi
# Like the trainer: a checkpoint's weights, then its state file (which makes it count).
if [ "$cmd" = train ]; then mkdir -p "$out/checkpoints"; echo weights > "$out/checkpoints/last.safetensors"; echo '{{"epoch": 1, "global_step": 3}}' > "$out/checkpoints/last.json"; fi
sleep {pause}
if [ "$cmd" = train ]; then
  echo weights > "$out/checkpoints/best.safetensors"
  echo '{{"epoch": 1, "global_step": 3}}' > "$out/checkpoints/best.json"
  echo '{{"test_dice": {{"wt": 0.8, "tc": 0.7, "et": 0.6, "mean": 0.7}}}}' > "$out/metrics.json"
  cat <<'EVENTS'
{events}
EVENTS
elif [ "$cmd" = infer ]; then
  echo '{{"event":"progress","time":1.0,"stage":"slices","fraction":0.5}}'
  cp "{seg}" "$out"
  echo '{{"event":"progress","time":2.0,"stage":"done","fraction":1.0}}'
elif [ "$cmd" = sleep ]; then
  exec sleep 60
fi
echo "fake cggm $cmd done" >&2
"#,
        seg = seg.display()
    );
    let path = dir.join(format!("fake-cggm-{}", (pause * 1000.0) as u64));
    std::fs::write(&path, script).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    path
}

pub mod dicom;
pub mod live;
pub mod orthanc;
pub mod procs;
pub mod ui;
pub mod webdriver;
