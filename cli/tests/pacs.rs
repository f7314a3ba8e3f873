//! The PACS through DICOMweb against a real Orthanc (Debian's, with its DICOMweb plugin, started
//! on loopback by the test with a user to sign in as): four series stored through Orthanc's REST
//! API are found by a QIDO-RS search through our API with their modalities guessed, imported
//! (WADO-RS, the DICOM import's checks and dcm2niix) into a study whose volumes equal what the zip
//! import makes of the same series; a mapping that leaves a modality out, or names one series
//! twice, is refused with its message; a STOW-RS of an instance makes Orthanc list it, and so does
//! sending the study's segmentation back as a DICOM SEG (`POST /api/predictions/N/pacs`); a wrong
//! password and a server without a PACS are answered with what to fix.

mod common;

use common::dicom::*;
use common::live::*;
use common::orthanc::{self, Orthanc};
use std::path::{Path, PathBuf};
use std::time::Duration;

const JOB_DEADLINE: Duration = Duration::from_secs(300);

/// The phantom series of each modality as a folder of files, exactly as [`phantom_zips`] writes
/// them zipped (same arguments, so the same voxels).
fn phantom_folders(dir: &Path) -> Vec<(String, PathBuf)> {
    MODALITIES
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let folder = dir.join(format!("{m}-series"));
            make_dicom(&folder, &["--modality", m, "--seed", &i.to_string()]);
            (m.to_string(), folder)
        })
        .collect()
}

fn files_of(folder: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn pacs_server(data_dir: &Path, orthanc: &Orthanc, password: &str) -> LiveServer {
    let url = orthanc.dicomweb();
    LiveServer::start_with_env(
        data_dir,
        &["--no-demo", "--pacs", &url, "--pacs-user", orthanc::USER],
        &[("CGGM_PACS_PASSWORD", password)],
    )
}

/// The voxels of a stored study's modality, with the shape.
fn voxels(data_dir: &Path, study: i64, modality: &str) -> (Vec<usize>, Vec<f32>) {
    use nifti::{IntoNdArray, NiftiObject};
    let path = data_dir.join(format!("studies/study-{study}/dicom_{modality}.nii.gz"));
    let object = nifti::ReaderOptions::new().read_file(&path).unwrap();
    let array = object.into_volume().into_ndarray::<f32>().unwrap();
    (array.shape().to_vec(), array.iter().copied().collect())
}

async fn post(
    server: &LiveServer,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = server
        .client
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pacs_study_is_found_imported_like_a_dicom_upload_and_stow_stores_back() {
    if !orthanc::installed() {
        return;
    }
    let orthanc = Orthanc::start().await;
    let dir = tempfile::tempdir().unwrap();
    let folders = phantom_folders(dir.path());
    for (_, folder) in &folders {
        orthanc.upload(&files_of(folder)).await;
    }
    let server = pacs_server(&dir.path().join("data"), &orthanc, orthanc::PASSWORD);
    // A tiny model to segment the imported study with, trained meanwhile.
    let dataset = server.tiny_dataset("tiny").await;
    let run = server.tiny_training(dataset).await;

    // QIDO-RS through our API: the study, its patient and its four series.
    let studies = server.get_json("/api/pacs/studies?patient=SYNTH").await;
    let studies = studies.as_array().unwrap();
    assert_eq!(studies.len(), 1, "{studies:?}");
    let study = &studies[0];
    assert_eq!(study["patient_name"], "SYNTH-001");
    assert_eq!(study["patient_id"], "SYNTH-001");
    assert_eq!(study["date"], "20260101");
    assert_eq!(study["modalities"], serde_json::json!(["MR"]));
    assert_eq!(study["series_count"], 4);
    let uid = study["study_uid"].as_str().unwrap().to_string();
    let none = server.get_json("/api/pacs/studies?patient=NOBODY").await;
    assert_eq!(none, serde_json::json!([]));
    let series = server
        .get_json(&format!("/api/pacs/studies/{uid}/series"))
        .await;
    let series = series.as_array().unwrap();
    assert_eq!(series.len(), 4, "{series:?}");
    let mut mapping = serde_json::Map::new();
    for s in series {
        assert_eq!(s["instances"], 16, "{s}");
        assert_eq!(s["modality"], "MR", "{s}");
        // make-dicom.py writes the modality's name as the SeriesDescription.
        assert_eq!(s["guess"], s["description"], "{s}");
        mapping.insert(
            s["guess"].as_str().unwrap().to_string(),
            s["series_uid"].clone(),
        );
    }
    assert_eq!(mapping.len(), 4);

    // A mapping without t2, and one that names a series twice: refused, nothing stored.
    let mut without_t2 = mapping.clone();
    without_t2.remove("t2");
    let (status, answer) = post(
        &server,
        &format!("/api/pacs/studies/{uid}/import"),
        serde_json::json!({ "series": without_t2 }),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        answer["error"],
        "no series chosen for t2: choose one series each for flair, t1ce, t1 and t2"
    );
    let mut twice = mapping.clone();
    twice.insert("t2".into(), mapping["t1"].clone());
    let (status, answer) = post(
        &server,
        &format!("/api/pacs/studies/{uid}/import"),
        serde_json::json!({ "series": twice }),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("t1 and t2 are the same series"),
        "{answer}"
    );
    assert_eq!(server.get_json("/api/studies").await, serde_json::json!([]));

    // The import: WADO-RS, the upload's checks, dcm2niix; the study records its origin.
    let (status, imported) = post(
        &server,
        &format!("/api/pacs/studies/{uid}/import"),
        serde_json::json!({ "series": mapping, "name": "from-pacs" }),
    )
    .await;
    assert_eq!(status, 201, "{imported}");
    assert_eq!(imported["study"]["name"], "from-pacs");
    assert_eq!(imported["study"]["shape"], serde_json::json!([32, 32, 16]));
    assert_eq!(imported["pacs_url"], orthanc.dicomweb());
    assert_eq!(imported["study_uid"], uid.as_str());
    let pacs_study = imported["study_id"].as_i64().unwrap();
    for m in MODALITIES {
        let kept = server
            .data_dir
            .join(format!("studies/study-{pacs_study}/dicom/{m}"));
        assert_eq!(std::fs::read_dir(&kept).unwrap().count(), 16, "{m}");
    }

    // The same from the command line: `cggm pacs search` lists the study, `cggm pacs import`
    // guesses the four series from their descriptions and imports them as another study.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(cggm())
            .arg("pacs")
            .args(["--server", &server.base])
            .args(args)
            .env_remove("CGGM_TOKEN")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "cggm pacs {args:?}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let listed = tokio::task::block_in_place(|| cli(&["search", "--patient", "SYNTH"]));
    assert!(
        listed.starts_with(&format!("{uid}\tSYNTH-001\t20260101\t")),
        "{listed}"
    );
    let imported_by_cli =
        tokio::task::block_in_place(|| cli(&["import", &uid, "--name", "from-cli"]));
    assert!(
        imported_by_cli.starts_with("study ") && imported_by_cli.contains("imported from"),
        "{imported_by_cli}"
    );
    let cli_study: i64 = imported_by_cli["study ".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    for m in MODALITIES {
        assert_eq!(
            voxels(&server.data_dir, cli_study, m),
            voxels(&server.data_dir, pacs_study, m),
            "{m}: the CLI's import differs from the API's"
        );
    }

    // The same series zipped through today's DICOM import: the same volumes, voxel for voxel.
    let zips = phantom_zips(&dir.path().join("zips"), |_| vec![]);
    let mut form = reqwest::multipart::Form::new().text("name", "zip-import");
    for (modality, zip) in &zips {
        form = form.part(
            modality.clone(),
            reqwest::multipart::Part::bytes(std::fs::read(zip).unwrap()).file_name("series.zip"),
        );
    }
    let response = server.post_multipart("/api/studies/dicom", form).await;
    assert_eq!(response.status(), 201);
    let zip_study = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    for m in MODALITIES {
        let (pacs_shape, pacs_voxels) = voxels(&server.data_dir, pacs_study, m);
        let (zip_shape, zip_voxels) = voxels(&server.data_dir, zip_study, m);
        assert_eq!(pacs_shape, vec![32, 32, 16], "{m}");
        assert_eq!(pacs_shape, zip_shape, "{m}");
        assert!(pacs_voxels == zip_voxels, "{m}: the voxels differ");
        assert!(pacs_voxels.iter().any(|v| *v > 0.0), "{m}: an empty volume");
    }

    // STOW-RS of an instance: Orthanc lists it afterwards, under its own study.
    let extra = dir.path().join("stow");
    make_dicom(
        &extra,
        &[
            "--modality",
            "t2",
            "--patient",
            "STOW-001",
            "--shape",
            "8,8,2",
        ],
    );
    let instance = std::fs::read(&files_of(&extra)[0]).unwrap();
    let mut settings = cggm_server::pacs::PacsSettings::new(&orthanc.dicomweb()).unwrap();
    settings.auth = cggm_server::pacs::PacsAuth::Basic {
        user: orthanc::USER.into(),
        password: orthanc::PASSWORD.into(),
    };
    let client = cggm_server::pacs::DicomWebClient::new(settings).unwrap();
    let stored = client.store(&[instance]).await.unwrap();
    assert_eq!(stored.len(), 1);
    let found = server.get_json("/api/pacs/studies?patient=STOW").await;
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    let instances = orthanc.get_json("/instances?expand").await;
    assert!(
        instances
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["MainDicomTags"]["SOPInstanceUID"] == stored[0].as_str()),
        "Orthanc does not list {}",
        stored[0]
    );
    // Something that is not DICOM is not stored, and the client says so.
    let error = client.store(&[b"not dicom".to_vec()]).await.unwrap_err();
    let error = error.to_string();
    assert!(
        error.starts_with(&format!(
            "the PACS answered 400 to {}/studies",
            orthanc.dicomweb()
        )),
        "{error}"
    );

    // The imported study segmented, and the segmentation sent back as a DICOM SEG (STOW-RS):
    // Orthanc lists it in the study it came from.
    server.job_succeeded(run, JOB_DEADLINE).await;
    let prediction = server.predict(pacs_study, run).await;
    server.job_succeeded(prediction, JOB_DEADLINE).await;
    // The SEG of this real model's prediction passes dciodvfy and equals it voxel for voxel
    // when highdicom reads it back (cli/tests/dicom_seg.rs does the same on painted blocks).
    let seg = dir.path().join("real-model-seg.dcm");
    std::fs::write(
        &seg,
        server
            .get_bytes(&format!("/api/predictions/{prediction}/dicom-seg"))
            .await,
    )
    .unwrap();
    let predicted = dir.path().join("real-model-prediction.nii.gz");
    std::fs::write(
        &predicted,
        server
            .get_bytes(&format!("/api/predictions/{prediction}/seg.nii.gz"))
            .await,
    )
    .unwrap();
    let dciodvfy = std::process::Command::new("dciodvfy")
        .arg(&seg)
        .output()
        .expect("dciodvfy starts (scripts/setup-dicom3tools.sh installs it)");
    let report = String::from_utf8_lossy(&dciodvfy.stderr).to_string()
        + &String::from_utf8_lossy(&dciodvfy.stdout);
    assert!(
        !report.lines().any(|l| l.contains("Error")),
        "dciodvfy reports errors on the real model's SEG:\n{report}"
    );
    let checked = std::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/check_dicom_seg.py"
        ))
        .arg(&seg)
        .arg(&predicted)
        .arg(
            server
                .data_dir
                .join(format!("studies/study-{pacs_study}/dicom/flair")),
        )
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&checked.stdout).to_string()
        + &String::from_utf8_lossy(&checked.stderr);
    assert!(
        checked.status.success() && report.contains(" 0 mismatching voxels"),
        "the real model's SEG read back by highdicom differs:\n{report}"
    );
    // Not vacuous: the prediction has tumour voxels ("segment s: N voxels in the prediction").
    let predicted_voxels: u64 = report
        .lines()
        .filter(|l| l.starts_with("segment "))
        .filter_map(|l| l.split(": ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        predicted_voxels > 0,
        "an empty prediction tests nothing:\n{report}"
    );

    let (status, sent) = post(
        &server,
        &format!("/api/predictions/{prediction}/pacs"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["study_uid"], uid.as_str());
    assert_eq!(sent["pacs_url"], orthanc.dicomweb());
    let seg_uid = sent["sop_instance_uid"].as_str().unwrap().to_string();
    let with_seg = server.get_json("/api/pacs/studies?modality=SEG").await;
    assert_eq!(with_seg[0]["study_uid"], uid.as_str(), "{with_seg}");
    let series = server
        .get_json(&format!("/api/pacs/studies/{uid}/series"))
        .await;
    let seg_series: Vec<_> = series
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["modality"] == "SEG")
        .collect();
    assert_eq!(seg_series.len(), 1, "{series}");
    assert_eq!(seg_series[0]["guess"], serde_json::Value::Null);
    let instances = orthanc.get_json("/instances?expand").await;
    assert!(
        instances
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["MainDicomTags"]["SOPInstanceUID"] == seg_uid.as_str()),
        "Orthanc does not list the SEG {seg_uid}"
    );
    // `cggm pacs send` stores another SEG of the same prediction (a new series each time).
    let sent_by_cli = tokio::task::block_in_place(|| cli(&["send", &prediction.to_string()]));
    assert!(
        sent_by_cli.starts_with(&format!(
            "prediction {prediction}: stored at {} as DICOM SEG ",
            orthanc.dicomweb()
        )),
        "{sent_by_cli}"
    );
    let series = server
        .get_json(&format!("/api/pacs/studies/{uid}/series"))
        .await;
    let seg_count = series
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["modality"] == "SEG")
        .count();
    assert_eq!(seg_count, 2, "{series}");

    // The page shows the PACS, the mapping selects and the segmentation to send back.
    let page = server.get_text("/pacs").await;
    assert!(
        page.contains(&format!("data-prediction=\"{prediction}\"")),
        "{page}"
    );
    assert!(page.contains(&orthanc.dicomweb()), "{page}");
    assert!(page.contains("data-modality=\"t1ce\""), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pacs_password_and_a_missing_pacs_are_answered_with_the_fix() {
    if !orthanc::installed() {
        return;
    }
    let orthanc = Orthanc::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = pacs_server(&dir.path().join("data"), &orthanc, "wrong-password");
    let response = server.get("/api/pacs/studies").await;
    assert_eq!(response.status(), 502);
    let error = response.json::<serde_json::Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.contains("answered 401"), "{error}");
    assert!(error.contains(&orthanc.dicomweb()), "{error}");
    assert!(error.contains("--pacs-user"), "{error}");
    drop(server);

    // No PACS configured: the routes answer 503 saying how, the page says it too.
    let plain = LiveServer::start(&["--no-demo"]);
    let response = plain.get("/api/pacs/studies").await;
    assert_eq!(response.status(), 503);
    let error = response.json::<serde_json::Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.starts_with("no PACS is configured: start the server with --pacs URL"),
        "{error}"
    );
    let page = plain.get_text("/pacs").await;
    assert!(page.contains("No PACS configured"), "{page}");
    // A PACS that is not there: 503 naming the address.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("http://127.0.0.1:{port}/dicom-web");
    let gone = LiveServer::start_in(
        &dir.path().join("data2"),
        &["--no-demo", "--pacs", &nowhere],
    );
    let response = gone.get("/api/pacs/studies").await;
    assert_eq!(response.status(), 503);
    let error = response.json::<serde_json::Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.starts_with(&format!("the PACS at {nowhere}/studies cannot be reached")),
        "{error}"
    );
}
