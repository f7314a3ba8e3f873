//! Every route that streams a stored NIfTI file sends it whole, `.nii` and `.nii.gz` alike, with
//! and without `Accept-Encoding: gzip` (a plain `.nii` is compressed on the way): the bytes equal
//! the stored file and nibabel reads the same voxels from both.

mod common;

use common::dicom::python;
use common::live::*;
use common::{volume, write_nifti};
use std::io::Read;
use std::path::Path;

/// A case `<root>/<case>/<case>_<role><ext>` of 64x64x48 float32 volumes (786,784 bytes as
/// `.nii`: a dozen 64 KiB chunks).
fn write_case_with(root: &Path, case: &str, ext: &str) {
    for (i, role) in ["flair", "t1ce", "t1", "t2"].iter().enumerate() {
        write_nifti(
            &root.join(case).join(format!("{case}_{role}{ext}")),
            &volume([64, 64, 48], i as f32),
        );
    }
    write_nifti(
        &root.join(case).join(format!("{case}_seg{ext}")),
        &common::labels([64, 64, 48]),
    );
}

/// The body of `path`, asking for gzip or not, decoded as a browser would.
async fn fetch(server: &LiveServer, path: &str, gzip: bool) -> Vec<u8> {
    let mut request = server.client.get(server.url(path));
    if gzip {
        request = request.header("accept-encoding", "gzip");
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let encoded = response
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_string());
    let length = response.content_length();
    let body = response
        .bytes()
        .await
        .expect("the whole body arrives")
        .to_vec();
    if let Some(length) = length {
        assert_eq!(length, body.len() as u64, "{path}: Content-Length matches");
    }
    match encoded.as_deref() {
        Some("gzip") => {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut plain)
                .expect("a complete gzip stream");
            plain
        }
        None => body,
        Some(other) => panic!("{path}: unexpected encoding {other}"),
    }
}

/// nibabel loads both files and finds the same voxels and header.
fn nibabel_agrees(served: &Path, stored: &Path) {
    let script = r#"
import sys, numpy as np, nibabel as nib
a, b = nib.load(sys.argv[1]), nib.load(sys.argv[2])
assert a.shape == b.shape, (a.shape, b.shape)
assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
assert np.allclose(a.affine, b.affine)
"#;
    let output = std::process::Command::new(python())
        .args(["-c", script])
        .arg(served)
        .arg(stored)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nifti_route_sends_plain_and_gzipped_files_whole() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let server = LiveServer::start(&["--no-demo", "--dataset-root", root.to_str().unwrap()]);
    for (ext, case) in [(".nii", "Plain"), (".nii.gz", "Gzipped")] {
        write_case_with(&root.join("ds"), case, ext);
    }
    let dataset = server.register_dataset("ds", &root.join("ds")).await;
    let dataset = dataset["id"].as_i64().expect("registered");
    let check = dir.path().join("served");
    for (ext, case) in [(".nii", "Plain"), (".nii.gz", "Gzipped")] {
        // The same case uploaded as a study.
        let mut form = reqwest::multipart::Form::new().text("name", case.to_string());
        for role in ["flair", "t1ce", "t1", "t2"] {
            let file = format!("{case}_{role}{ext}");
            let bytes = std::fs::read(root.join("ds").join(case).join(&file)).unwrap();
            form = form.part(
                "files",
                reqwest::multipart::Part::bytes(bytes).file_name(file),
            );
        }
        let response = server
            .client
            .post(server.url("/api/studies"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let study: serde_json::Value = response.json().await.unwrap();
        let study = study["id"].as_i64().unwrap();
        for role in ["flair", "t1ce", "t1", "t2", "seg"] {
            let stored = root
                .join("ds")
                .join(case)
                .join(format!("{case}_{role}{ext}"));
            let expected = std::fs::read(&stored).unwrap();
            let mut routes = vec![format!("/api/datasets/{dataset}/cases/{case}/nifti/{role}")];
            if role != "seg" {
                routes.push(format!("/api/studies/{study}/nifti/{role}"));
            }
            for route in routes {
                for gzip in [false, true] {
                    let body = fetch(&server, &route, gzip).await;
                    assert!(
                        body == expected,
                        "{route} gzip={gzip}: {} of {} bytes",
                        body.len(),
                        expected.len()
                    );
                    let served = check.join(format!("{case}-{role}-{gzip}{ext}"));
                    std::fs::create_dir_all(&check).unwrap();
                    std::fs::write(&served, &body).unwrap();
                    nibabel_agrees(&served, &stored);
                }
            }
        }
    }
}
