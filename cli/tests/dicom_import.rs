//! DICOM import through the API (`POST /api/studies/dicom`) with the real dcm2niix and series
//! written by pydicom: the good path (zips or a folder's files become a study that segments), and
//! each bad input refused with a 422 that names the problem, with nothing stored.

mod common;

use axum::http::StatusCode;
use common::dicom::*;
use common::live::*;
use common::{Multipart, TestApp};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

fn form(zips: &[(String, PathBuf)]) -> Multipart {
    let mut form = Multipart::default().text("name", "dicom-patient");
    for (modality, zip) in zips {
        form = form.file(modality, "series.zip", std::fs::read(zip).unwrap());
    }
    form
}

/// Nothing of a refused import is left: no study row, no study folder, no temporary files.
async fn assert_nothing_stored(app: &TestApp) {
    let (_, studies) = app.get_json("/api/studies").await;
    assert_eq!(studies, serde_json::json!([]));
    for sub in ["studies", "tmp"] {
        let left: Vec<_> = std::fs::read_dir(app.data_dir().join(sub))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{sub}/ holds {left:?}");
    }
}

async fn refused(app: &TestApp, form: &Multipart) -> String {
    let (status, body) = app.post_multipart("/api/studies/dicom", form).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_nothing_stored(app).await;
    body["error"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn four_zipped_series_become_a_study_of_four_co_registered_volumes() {
    let app = TestApp::new().await;
    let zips = phantom_zips(app.dir.path(), |_| vec![]);
    let (status, study) = app.post_multipart("/api/studies/dicom", &form(&zips)).await;
    assert_eq!(status, StatusCode::CREATED, "{study}");
    assert_eq!(study["name"], "dicom-patient");
    assert_eq!(study["shape"], serde_json::json!([32, 32, 16]));
    let dir = app
        .data_dir()
        .join(format!("studies/study-{}", study["id"].as_i64().unwrap()));
    for m in MODALITIES {
        let file = study["files"][m].as_str().unwrap();
        assert_eq!(file, format!("dicom_{m}.nii.gz"));
        let header = nifti::NiftiHeader::from_file(dir.join(file)).unwrap();
        assert_eq!(&header.dim[1..4], &[32, 32, 16]);
    }
    // The volumes and each series' DICOM files (for a DICOM SEG) are kept: no zip, no converter
    // output, nothing left in tmp/.
    let mut kept: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [
            "dicom",
            "dicom_flair.nii.gz",
            "dicom_t1.nii.gz",
            "dicom_t1ce.nii.gz",
            "dicom_t2.nii.gz"
        ]
    );
    for m in MODALITIES {
        assert_eq!(
            files_under(&dir.join("dicom").join(m)),
            16,
            "{m}: the series' slices"
        );
    }
    assert_eq!(
        std::fs::read_dir(app.data_dir().join("tmp"))
            .unwrap()
            .count(),
        0
    );
    // The slices of the converted study render like any upload's.
    let (status, _, content_type) = app
        .get(&format!(
            "/api/studies/{}/slice?modality=t2",
            study["id"].as_i64().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "image/png");
}

#[tokio::test]
async fn a_series_sent_as_a_folders_files_imports_like_a_zip() {
    let app = TestApp::new().await;
    let mut zips = phantom_zips(app.dir.path(), |_| vec![]);
    let folder = app.dir.path().join("flair-folder");
    make_dicom(&folder, &["--modality", "flair"]);
    zips.retain(|(m, _)| m != "flair");
    let mut form = form(&zips);
    let mut names: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for path in &names {
        // Browsers send a picked folder's files by their relative path.
        let name = format!(
            "flair-folder/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        form = form.file("flair", &name, std::fs::read(path).unwrap());
    }
    let (status, study) = app.post_multipart("/api/studies/dicom", &form).await;
    assert_eq!(status, StatusCode::CREATED, "{study}");
    assert_eq!(study["shape"], serde_json::json!([32, 32, 16]));
}

#[tokio::test]
async fn a_series_with_a_missing_slice_is_refused_naming_the_gap() {
    let app = TestApp::new().await;
    let zips = phantom_zips(app.dir.path(), |m| {
        if m == "t1ce" {
            vec!["--drop-slice".into(), "7".into()]
        } else {
            vec![]
        }
    });
    let error = refused(&app, &form(&zips)).await;
    assert!(
        error.starts_with("t1ce: slices are missing or unevenly spaced"),
        "{error}"
    );
    assert!(error.contains("send the complete series"), "{error}");
}

#[tokio::test]
async fn two_series_in_one_zip_are_refused_as_mixed() {
    let app = TestApp::new().await;
    let zips = phantom_zips(app.dir.path(), |_| vec![]);
    // A second series (another SeriesInstanceUID) added to the t2 zip.
    make_dicom(
        &zips[3].1,
        &[
            "--modality",
            "t2",
            "--series-uid",
            "t2-repeat",
            "--series-number",
            "2",
        ],
    );
    let error = refused(&app, &form(&zips)).await;
    assert!(
        error.starts_with("t2: the upload holds 2 series"),
        "{error}"
    );
    assert!(error.contains("one series per modality"), "{error}");
}

#[tokio::test]
async fn a_file_that_is_not_dicom_is_refused_by_name() {
    let app = TestApp::new().await;
    let mut zips = phantom_zips(app.dir.path(), |_| vec![]);
    let folder = app.dir.path().join("t1-folder");
    make_dicom(&folder, &["--modality", "t1"]);
    zips.retain(|(m, _)| m != "t1");
    let mut form = form(&zips);
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        form = form.file("t1", &name, std::fs::read(&path).unwrap());
    }
    form = form.file("t1", "report.pdf", b"%PDF-1.4 not an image".to_vec());
    let error = refused(&app, &form).await;
    assert!(
        error.starts_with("t1: report.pdf is not a DICOM file"),
        "{error}"
    );
}

#[tokio::test]
async fn a_zip_bomb_is_refused_before_it_is_unpacked() {
    let app = TestApp::new().await;
    let mut zips = phantom_zips(app.dir.path(), |_| vec![]);
    let bomb = app.dir.path().join("bomb.zip");
    let mut writer = zip::ZipWriter::new(std::fs::File::create(&bomb).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    writer.start_file("flair/IM0001.dcm", options).unwrap();
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..32 {
        writer.write_all(&zeros).unwrap();
    }
    writer.finish().unwrap();
    assert!(std::fs::metadata(&bomb).unwrap().len() < 100 * 1024);
    zips[0].1 = bomb;
    let error = refused(&app, &form(&zips)).await;
    assert!(
        error.starts_with("flair (series.zip): compressed"),
        "{error}"
    );
    assert!(error.contains("zip bomb"), "{error}");
}

#[tokio::test]
async fn a_zip_entry_that_climbs_out_of_the_archive_is_refused() {
    let app = TestApp::new().await;
    let mut zips = phantom_zips(app.dir.path(), |_| vec![]);
    let evil = app.dir.path().join("evil.zip");
    let mut writer = zip::ZipWriter::new(std::fs::File::create(&evil).unwrap());
    writer
        .start_file(
            "../../escaped.dcm",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
    writer.write_all(b"x").unwrap();
    writer.finish().unwrap();
    zips[1].1 = evil;
    let error = refused(&app, &form(&zips)).await;
    assert!(error.contains("points outside the archive"), "{error}");
    assert!(!app.data_dir().join("escaped.dcm").exists());
}

#[tokio::test]
async fn series_on_different_grids_are_refused_as_not_co_registered() {
    let app = TestApp::new().await;
    // Same shape, but the t2 series starts 5 mm higher in the patient.
    let zips = phantom_zips(app.dir.path(), |m| {
        if m == "t2" {
            vec!["--origin-shift".into(), "5".into()]
        } else {
            vec![]
        }
    });
    let error = refused(&app, &form(&zips)).await;
    assert!(
        error.contains("the affine of dicom_t2.nii.gz differs from that of dicom_flair.nii.gz"),
        "{error}"
    );
    assert!(error.contains("not co-registered"), "{error}");
}

#[tokio::test]
async fn series_of_different_shapes_are_refused_like_nifti_uploads() {
    let app = TestApp::new().await;
    let zips = phantom_zips(app.dir.path(), |m| {
        if m == "t1" {
            vec!["--shape".into(), "32,32,12".into()]
        } else {
            vec![]
        }
    });
    let error = refused(&app, &form(&zips)).await;
    assert!(
        error.contains("must be co-registered to one grid"),
        "{error}"
    );
}

#[tokio::test]
async fn a_missing_modality_is_named() {
    let app = TestApp::new().await;
    let mut zips = phantom_zips(app.dir.path(), |_| vec![]);
    zips.truncate(2);
    let error = refused(&app, &form(&zips)).await;
    assert!(error.starts_with("missing series: t1, t2"), "{error}");
}

#[tokio::test]
async fn without_dcm2niix_the_import_answers_503_naming_the_setup_script() {
    let app = TestApp::with(|c| c.dicom.dcm2niix = "/nonexistent/dcm2niix".into()).await;
    let zips = phantom_zips(app.dir.path(), |_| vec![]);
    let (status, body) = app.post_multipart("/api/studies/dicom", &form(&zips)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("scripts/setup-dicom.sh"),
        "{body}"
    );
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_conversion_that_hangs_is_stopped_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let hanging = dir.path().join("dcm2niix");
    std::fs::write(&hanging, "#!/bin/sh\nexec sleep 600\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hanging, std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = TestApp::with(|c| {
        c.dicom.dcm2niix = hanging.clone();
        c.dicom.convert_timeout = Duration::from_secs(1);
    })
    .await;
    let zips = phantom_zips(app.dir.path(), |_| vec![]);
    let error = refused(&app, &form(&zips)).await;
    assert!(
        error.starts_with("flair: the conversion took longer than 1 s"),
        "{error}"
    );
}

/// The real server and a real tiny model: a case of the training data, written as DICOM, imported
/// and segmented like an uploaded NIfTI study.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_dicom_study_segments_with_a_trained_model() {
    let server = LiveServer::start(&["--no-demo"]);
    let dataset = server.tiny_dataset("tiny").await;
    let job = server.tiny_training(dataset).await;
    let zip_dir = tempfile::tempdir().unwrap();
    let case = server.data_dir.join("datasets/tiny/BraTS2021_00001");
    let zips = zips_from_case(&case, zip_dir.path());
    let mut form = reqwest::multipart::Form::new();
    for (modality, zip) in &zips {
        form = form.part(
            modality.clone(),
            reqwest::multipart::Part::bytes(std::fs::read(zip).unwrap()).file_name("series.zip"),
        );
    }
    let response = server.post_multipart("/api/studies/dicom", form).await;
    assert_eq!(response.status(), 201);
    let study: serde_json::Value = response.json().await.unwrap();
    assert_eq!(study["name"], "DICOM import");
    assert_eq!(study["shape"], serde_json::json!([32, 32, 16]));

    server.job_succeeded(job, Duration::from_secs(300)).await;
    let prediction = server.predict(study["id"].as_i64().unwrap(), job).await;
    let done = server
        .poll_json(
            &format!("/api/predictions/{prediction}"),
            Duration::from_secs(300),
            has_ended,
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let seg = server
        .get(&format!("/api/predictions/{prediction}/seg.nii.gz"))
        .await;
    assert_eq!(seg.status(), 200);
    let path = zip_dir.path().join("seg.nii.gz");
    std::fs::write(&path, seg.bytes().await.unwrap()).unwrap();
    let header = nifti::NiftiHeader::from_file(&path).unwrap();
    assert_eq!(&header.dim[1..4], &[32, 32, 16]);
}
