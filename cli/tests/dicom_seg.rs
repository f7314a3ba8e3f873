//! DICOM SEG of a prediction (`GET /api/predictions/N/dicom-seg`): four series written by pydicom
//! (rows stored either way round, so that dcm2niix flips and reorders), imported through the DICOM
//! route with the real dcm2niix, segmented (a stand-in `cggm infer` paints three asymmetric blocks
//! on the study's grid), downloaded as a SEG, then validated by dciodvfy (dicom3tools: no error)
//! and read back by highdicom (scripts/check_dicom_seg.py: each segment equals the prediction
//! voxel for voxel). A study uploaded as NIfTI answers 409 with the reason.

mod common;

use axum::http::StatusCode;
use common::dicom::*;
use common::{fake_cggm, Multipart, TestApp};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A stand-in `cggm`: `infer` writes NCR, ED and ET blocks (each off-centre, so a flip or a
/// reordering shows) on the grid of its first `--case` with nibabel; everything else is
/// [`fake_cggm`]'s.
fn painting_cggm(dir: &Path) -> PathBuf {
    let fallback = fake_cggm(dir, 0.0);
    let painter = dir.join("paint.py");
    std::fs::write(
        &painter,
        r#"import sys, nibabel, numpy as np
case, out = sys.argv[1:]
image = nibabel.load(case)
labels = np.zeros(image.shape[:3], dtype=np.uint8)
labels[2:9, 3:7, 1:5] = 1
labels[10:20, 4:26, 4:12] = 2
labels[22:30, 20:29, 9:14] = 4
labels[5, 28, 15] = 4
header = image.header.copy()
header.set_data_dtype(np.uint8)
header.set_slope_inter(1, 0)
nibabel.save(nibabel.Nifti1Image(labels, image.affine, header), out)
"#,
    )
    .unwrap();
    let script = format!(
        r#"#!/bin/bash
if [ "$1" != infer ]; then exec "{fallback}" "$@"; fi
case=""; out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --case) [ -z "$case" ] && case="$2"; shift;;
    --out) out="$2"; shift;;
  esac
  shift
done
"{python}" "{painter}" "$case" "$out" || exit 4
echo '{{"event":"progress","time":1.0,"stage":"done","fraction":1.0}}'
"#,
        fallback = fallback.display(),
        python = python().display(),
        painter = painter.display(),
    );
    let path = dir.join("painting-cggm");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

async fn import(app: &TestApp, zips: &[(String, PathBuf)]) -> serde_json::Value {
    let mut form = Multipart::default().text("name", "seg-patient");
    for (modality, zip) in zips {
        form = form.file(modality, "series.zip", std::fs::read(zip).unwrap());
    }
    let (status, study) = app.post_multipart("/api/studies/dicom", &form).await;
    assert_eq!(status, StatusCode::CREATED, "{study}");
    study
}

fn run(program: &str, args: &[&Path]) -> (bool, String) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} starts ({e}); scripts/setup-dicom3tools.sh installs dciodvfy")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn a_prediction_of_an_imported_study_is_a_seg_that_dciodvfy_and_highdicom_accept() {
    for flip in [false, true] {
        let work = tempfile::tempdir().unwrap();
        let cggm = painting_cggm(work.path());
        let app = TestApp::with(|c| c.cggm_bin = cggm.clone()).await;
        let zips = phantom_zips(work.path(), |_| {
            if flip {
                vec!["--flip-rows".into()]
            } else {
                vec![]
            }
        });
        let study = import(&app, &zips).await;
        let study_id = study["id"].as_i64().unwrap();
        // The import keeps each series' DICOM files beside the volumes.
        let study_dir = app.data_dir().join(format!("studies/study-{study_id}"));
        for m in MODALITIES {
            assert_eq!(
                files_under(&study_dir.join("dicom").join(m)),
                16,
                "{m}: its slices"
            );
        }
        let prediction = app.finished_prediction(study_id).await;
        let (_, view) = app
            .get_json(&format!("/api/predictions/{prediction}"))
            .await;
        let url = format!("/api/predictions/{prediction}/dicom-seg");
        assert_eq!(view["dicom_seg_url"], url.as_str(), "{view}");

        let (status, bytes, content_type) = app.get(&url).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(content_type, "application/dicom");
        assert_eq!(&bytes[128..132], b"DICM");
        let seg = work.path().join("seg.dcm");
        std::fs::write(&seg, &bytes).unwrap();

        let (_, report) = run("dciodvfy", &[&seg]);
        eprintln!("flip {flip}: dciodvfy:\n{report}");
        let errors: Vec<&str> = report.lines().filter(|l| l.contains("Error")).collect();
        assert!(
            errors.is_empty(),
            "flip {flip}: dciodvfy reports errors:\n{report}"
        );

        // The prediction as the server serves it: what the SEG must equal.
        let (_, nifti, _) = app
            .get(&format!("/api/predictions/{prediction}/seg.nii.gz"))
            .await;
        let predicted = work.path().join("prediction.nii.gz");
        std::fs::write(&predicted, nifti).unwrap();
        let checker = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/check_dicom_seg.py");
        let (ok, report) = run(
            python().to_str().unwrap(),
            &[
                Path::new(checker),
                &seg,
                &predicted,
                &study_dir.join("dicom/flair"),
            ],
        );
        assert!(
            ok,
            "flip {flip}: the SEG read back by highdicom differs:\n{report}"
        );
        assert!(report.contains(" 0 mismatching voxels"), "{report}");
        eprintln!("flip {flip}: check_dicom_seg.py:\n{report}");
        // The check is not blind: one voxel of ED moved into the background is one mismatch.
        let altered = work.path().join("altered.nii.gz");
        let edit = format!(
            "import nibabel, numpy as np; i = nibabel.load({p:?}); d = np.asarray(i.dataobj).copy(); \
             d[15, 10, 6] = 0; nibabel.save(nibabel.Nifti1Image(d, i.affine, i.header), {a:?})",
            p = predicted.display().to_string(),
            a = altered.display().to_string()
        );
        assert!(Command::new(python())
            .args(["-c", &edit])
            .status()
            .unwrap()
            .success());
        let (ok, report) = run(
            python().to_str().unwrap(),
            &[
                Path::new(checker),
                &seg,
                &altered,
                &study_dir.join("dicom/flair"),
            ],
        );
        assert!(!ok && report.contains(" 1 mismatching voxels"), "{report}");

        // `cggm dicom-seg` writes the same kind of SEG from the files on disk.
        let from_cli = work.path().join("cli-seg.dcm");
        let flair = study_dir.join("dicom/flair");
        let cli = |prediction: &Path, out: &Path| {
            Command::new(env!("CARGO_BIN_EXE_cggm"))
                .arg("dicom-seg")
                .arg("--prediction")
                .arg(prediction)
                .arg("--reference")
                .arg(&flair)
                .arg("--out")
                .arg(out)
                .output()
                .unwrap()
        };
        let output = cli(&predicted, &from_cli);
        assert!(output.status.success(), "{output:?}");
        let (ok, report) = run(
            python().to_str().unwrap(),
            &[Path::new(checker), &from_cli, &predicted, &flair],
        );
        assert!(ok, "flip {flip}: cggm dicom-seg: {report}");
        // A prediction on another grid is refused, naming the mismatch.
        let output = cli(
            &app.dir.path().join("fake-seg.nii.gz"),
            &work.path().join("x.dcm"),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            stderr.contains("prediction grid does not match the reference series"),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn a_study_uploaded_as_nifti_has_no_dicom_seg_and_says_how_to_get_one() {
    let app = TestApp::new().await;
    let study = app.upload_study("niftipatient").await;
    let prediction = app.finished_prediction(study).await;
    let (_, view) = app
        .get_json(&format!("/api/predictions/{prediction}"))
        .await;
    assert_eq!(view["dicom_seg_url"], serde_json::Value::Null, "{view}");
    let (status, body) = app
        .get_json(&format!("/api/predictions/{prediction}/dicom-seg"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("this study was uploaded as NIfTI: a DICOM SEG needs the DICOM series"),
        "{error}"
    );
    assert!(error.contains("import the study from DICOM"), "{error}");
    // An unknown prediction is a 404, like its other downloads.
    let (status, _) = app.get_json("/api/predictions/999/dicom-seg").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The viewer page carries the (hidden until available) download link.
    let (status, page, _) = app.get(&format!("/predictions/{prediction}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&page).contains("id=\"download-dicom-seg\""));
}
