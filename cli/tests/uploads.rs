//! Studies in the names researchers' files carry: BraTS 2023+ (`-t2f`, `-t1c`, `-t1n`, `-t2w`)
//! as the trainer reads them, and an MSD 4-D image with its label, which shares its file name
//! (`imagesTr/BRATS_001.nii.gz`, `labelsTr/BRATS_001.nii.gz`) and comes in the `label` field.

mod common;

use axum::http::StatusCode;
use common::*;

#[tokio::test]
async fn brats_2023_names_are_uploaded_as_the_four_modalities() {
    let app = TestApp::new().await;
    let case = "BraTS-GLI-00000-000";
    let mut form = Multipart::default();
    for (i, suffix) in ["t2f", "t1c", "t1n", "t2w", "seg"].iter().enumerate() {
        let path = app.dir.path().join(format!("{case}-{suffix}.nii.gz"));
        if *suffix == "seg" {
            write_nifti(
                &path,
                &labels([8, 8, 4]).mapv(|v| if v == 4.0 { 3.0 } else { v }),
            );
        } else {
            write_nifti(&path, &volume([8, 8, 4], i as f32));
        }
        form = form.files(&[path]);
    }
    let (status, body) = app.post_multipart("/api/studies", &form).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for role in ["flair", "t1ce", "t1", "t2", "seg"] {
        assert!(body["files"][role].is_string(), "{role}: {body}");
    }
    assert_eq!(body["files"]["flair"], format!("{case}-t2f.nii.gz"));
}

#[tokio::test]
async fn an_msd_image_carries_its_label_of_the_same_name_in_the_label_field() {
    let app = TestApp::new().await;
    let image = app.dir.path().join("imagesTr/BRATS_001.nii.gz");
    let label = app.dir.path().join("labelsTr/BRATS_001.nii.gz");
    write_4d(&image, [8, 8, 4]);
    std::fs::create_dir_all(label.parent().unwrap()).unwrap();
    // MSD numbering: 1 oedema, 2 non-enhancing, 3 enhancing.
    write_nifti(&label, &labels([8, 8, 4]).mapv(|v| v.min(3.0)));
    let form = Multipart::default().files(&[image]).file(
        "label",
        "BRATS_001.nii.gz",
        std::fs::read(&label).unwrap(),
    );
    let (status, body) = app.post_multipart("/api/studies", &form).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body["files"]["4d"].is_string(), "{body}");
    assert!(body["files"]["seg"].is_string(), "{body}");
    let (status, _, _) = app
        .get(&format!("/api/studies/{}/nifti/seg", body["id"]))
        .await;
    assert_eq!(status, StatusCode::OK);

    // A 4-D image mixed with a separate modality file is named, not guessed.
    let flair = app.dir.path().join("extra_flair.nii.gz");
    write_nifti(&flair, &volume([8, 8, 4], 0.0));
    let image = app.dir.path().join("imagesTr/BRATS_001.nii.gz");
    let form = Multipart::default().files(&[image, flair]);
    let (status, body) = app.post_multipart("/api/studies", &form).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("send it alone"),
        "{body}"
    );
}
