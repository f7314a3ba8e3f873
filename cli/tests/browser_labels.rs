//! Correct, save, retrain from the pages (issue 21 item 3), in headless Chromium: on a
//! segmentation's viewer page, "Edit label" starts NiiVue's drawing layer from the prediction, the
//! pens draw BraTS label values, Undo takes a stroke back, "Save as ground truth" stores the drawing
//! as the study's new `final` version: the saved NIfTI equals the drawing voxel for voxel on the
//! study's grid (the synthetic images have flipped x and y axes, so NiiVue's RAS-ordered drawing
//! must be written back in the file's own order). Then the new-run form starts a run from the
//! weights of the finished one, and its `config.json` names the source folder.
//! Saves target/screenshots/viewer-edit.png (the README's docs/screenshots/viewer-edit.png is a
//! copy of it).

mod common;

use common::live::*;
use common::ui::*;
use common::webdriver::Browser;
use ndarray::{Array3, Ix3};
use std::path::Path;
use std::time::Duration;

const DEADLINE: Duration = JOB_DEADLINE;

const NIIVUE_READY: &str = "document.querySelector('#nv-viewer').dataset.ready === '1'";

/// A volume served at `path`, read with the trainer's NIfTI reader: its voxels and its
/// voxel-to-world affine.
async fn volume_at(server: &LiveServer, path: &str, dir: &Path) -> (Array3<f32>, [[f64; 4]; 3]) {
    let bytes = server.get_bytes(path).await;
    let file = dir.join(format!("{}.nii.gz", path.replace('/', "_")));
    std::fs::write(&file, bytes).unwrap();
    let (header, data) = cggm_core::data::read_volume(&file).unwrap();
    let data = data
        .into_dimensionality::<Ix3>()
        .unwrap_or_else(|e| panic!("{path} is not one 3-D volume: {e}"));
    (data, cggm_core::data::header_affine(&header))
}

/// NiiVue's drawing bitmap is in RAS order: voxel `ras` of it is the file voxel found by taking,
/// for each file axis, the world axis it runs along (flipped when it runs against it).
fn native_voxel(ras: [usize; 3], affine: &[[f64; 4]; 3], dims: &[usize]) -> [usize; 3] {
    let mut native = [0; 3];
    for (j, n) in native.iter_mut().enumerate() {
        let world = (0..3)
            .max_by(|&a, &b| affine[a][j].abs().total_cmp(&affine[b][j].abs()))
            .unwrap();
        let r = ras[world];
        *n = if affine[world][j] < 0.0 {
            dims[j] - 1 - r
        } else {
            r
        };
    }
    native
}

/// Draws lines of voxels (RAS order) with the page's current pen as a drag does (the first point,
/// then the line on from it, which leaves out its start) and ends the stroke as NiiVue's mouse-up
/// does (an undo step, `onDrawingChanged("draw")`).
fn stroke(lines: &[([usize; 3], [usize; 3])]) -> String {
    let draws: String = lines
        .iter()
        .map(|(a, b)| {
            format!(
                "nv.drawPt({}, {}, {}, nv.opts.penValue); nv.drawPenLine({a:?}, {b:?}, nv.opts.penValue);",
                a[0], a[1], a[2]
            )
        })
        .collect();
    format!(
        "const nv = window.cggmNiivue; {draws} nv.refreshDrawing(true); nv.drawAddUndoBitmap(); \
         nv.onDrawingChanged('draw'); return nv.opts.penValue;"
    )
}

/// The RAS voxels of the lines (each along x).
fn voxels(lines: &[([usize; 3], [usize; 3])]) -> Vec<[usize; 3]> {
    lines
        .iter()
        .flat_map(|(a, b)| (a[0]..=b[0]).map(move |x| [x, a[1], a[2]]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_corrected_in_the_viewer_is_saved_voxel_for_voxel_and_a_run_fine_tunes_from_the_form(
) {
    let server = LiveServer::start(&["--no-demo"]);
    let dataset = server.tiny_dataset("demo-tiny").await;
    let case_dir = server.data_dir.join("datasets/demo-tiny/BraTS2021_00001");
    let form = case_form(
        &case_dir,
        Some("BraTS2021_00001"),
        &["flair", "t1ce", "t1", "t2", "seg"],
    );
    let response = server.post_multipart("/api/studies", form).await;
    assert!(response.status().is_success(), "{}", response.status());
    let study = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let run = server.tiny_training(dataset).await;
    server.job_succeeded(run, DEADLINE).await;
    let prediction = server.predict(study, run).await;
    server.job_succeeded(prediction, DEADLINE).await;

    let browser = Browser::start().await;
    browser
        .goto(&server.url(&format!("/predictions/{prediction}")))
        .await;
    browser.wait_for(NIIVUE_READY, DEADLINE).await;
    browser
        .wait_for(
            "!document.querySelector('#nv-edit').hidden",
            Duration::from_secs(10),
        )
        .await;
    // Start from the prediction (the first choice), then the enhancing-tumour pen.
    assert_eq!(
        browser
            .script("return document.querySelector('#nv-edit-source').value;")
            .await,
        "prediction"
    );
    browser.click("#nv-edit-start").await;
    browser
        .wait_for(
            "document.querySelector('#nv-viewer').dataset.editing === 'prediction'",
            Duration::from_secs(10),
        )
        .await;
    let pens = browser.text("#nv-pens").await;
    for pen in [
        "necrotic core (1)",
        "oedema (2)",
        "enhancing tumour (4)",
        "erase (0)",
    ] {
        assert!(pens.contains(pen), "{pen} missing from {pens}");
    }
    browser.click("#nv-pens input[value='4']").await;
    // Stroke A (kept): three rows of enhancing tumour on slice 5 (RAS voxel order).
    let kept = [
        ([2, 3, 5], [12, 3, 5]),
        ([2, 4, 5], [12, 4, 5]),
        ([2, 5, 5], [12, 5, 5]),
    ];
    assert_eq!(browser.script(&stroke(&kept)).await, 4);
    // Stroke B (undone): necrotic core on slice 10.
    browser.click("#nv-pens input[value='1']").await;
    let undone = [([18, 27, 10], [29, 27, 10])];
    assert_eq!(browser.script(&stroke(&undone)).await, 1);
    assert_eq!(
        browser
            .script("return document.querySelector('#nv-viewer').dataset.undoable;")
            .await,
        "2"
    );
    browser.click("#nv-undo").await;
    browser
        .wait_for(
            "document.querySelector('#nv-viewer').dataset.undoable === '1'",
            Duration::from_secs(5),
        )
        .await;
    browser
        .script("window.cggmNiivue.moveCrosshairInVox(0, 0, 5 - window.cggmNiivue.frac2vox(window.cggmNiivue.scene.crosshairPos)[2]);")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shot = screenshots().join("viewer-edit.png");
    browser.screenshot(&shot).await;

    // Refusals show in the page: no author, then a value that is no label.
    browser.click("#nv-save").await;
    browser
        .wait_for(
            "document.querySelector('#nv-edit-error').textContent.includes('enter your name as the author')",
            Duration::from_secs(5),
        )
        .await;
    browser.type_into("#nv-author", "Dr. Test").await;
    browser
        .script("const b = window.cggmNiivue.drawBitmap; window.cggmKeep = b[0]; b[0] = 3;")
        .await;
    browser.click("#nv-save").await;
    browser
        .wait_for(
            "document.querySelector('#nv-edit-error').textContent.includes('the drawing holds the value 3, which is not a label (0, 1, 2, 4)')",
            Duration::from_secs(5),
        )
        .await;
    browser
        .script("window.cggmNiivue.drawBitmap[0] = window.cggmKeep;")
        .await;
    let history = server
        .get_json(&format!("/api/studies/{study}/labels"))
        .await;
    assert_eq!(
        history["versions"].as_array().unwrap().len(),
        0,
        "{history}"
    );

    // Save for real: the page says what it stored, and the truth overlay is the new version.
    browser.click("#nv-save").await;
    browser
        .wait_for(
            "document.querySelector('#nv-viewer').dataset.savedVersion === '1'",
            DEADLINE,
        )
        .await;
    let status = browser.text("#nv-edit-status").await;
    assert!(
        status.starts_with("saved as final v1 by Dr. Test at ") && status.ends_with(" UTC"),
        "{status}"
    );
    assert!(browser
        .script("return document.querySelector('#nv-edit-error').hidden;")
        .await
        .as_bool()
        .unwrap());
    let truth_url = browser
        .script("return document.querySelector('#nv-viewer').dataset.truthUrl;")
        .await;
    assert!(
        truth_url.as_str().unwrap().ends_with("v=final-v1"),
        "{truth_url}"
    );
    assert!(browser
        .text("#nv-overlays")
        .await
        .contains("Ground truth (corrected, v1)"));

    let history = server
        .get_json(&format!("/api/studies/{study}/labels"))
        .await;
    assert_eq!(history["truth"], "final-v1", "{history}");
    let version = &history["versions"][0];
    assert_eq!(
        (&version["tag"], &version["author"]),
        (&serde_json::json!("final"), &serde_json::json!("Dr. Test"))
    );

    // The saved label, read back: the prediction, with stroke A in enhancing tumour (4) and
    // stroke B gone, voxel for voxel in the study's own orientation.
    let dir = tempfile::tempdir().unwrap();
    let (saved, saved_affine) =
        volume_at(&server, version["url"].as_str().unwrap(), dir.path()).await;
    let (predicted, _) = volume_at(
        &server,
        &format!("/api/predictions/{prediction}/nifti"),
        dir.path(),
    )
    .await;
    let (_, affine) = volume_at(
        &server,
        &format!("/api/studies/{study}/nifti/flair"),
        dir.path(),
    )
    .await;
    assert_eq!(saved.shape(), predicted.shape());
    assert_eq!(saved_affine, affine, "the label keeps the image's geometry");
    assert!(
        affine[0][0] < 0.0 && affine[1][1] < 0.0,
        "the test needs flipped axes: {affine:?}"
    );
    let dims = saved.shape().to_vec();
    let mut expected = predicted.clone();
    for ras in voxels(&kept) {
        let [x, y, z] = native_voxel(ras, &affine, &dims);
        expected[[x, y, z]] = 4.0;
    }
    let undone_native: Vec<[usize; 3]> = voxels(&undone)
        .into_iter()
        .map(|ras| native_voxel(ras, &affine, &dims))
        .collect();
    assert!(
        undone_native
            .iter()
            .any(|&[x, y, z]| predicted[[x, y, z]] != 1.0),
        "stroke B must cross voxels the prediction does not call necrotic core"
    );
    let differing: Vec<(usize, usize, usize)> = saved
        .indexed_iter()
        .filter(|(i, v)| **v != expected[*i])
        .map(|(i, _)| i)
        .take(10)
        .collect();
    assert!(
        differing.is_empty(),
        "the saved label differs from the drawing at {differing:?}"
    );
    for &[x, y, z] in &undone_native {
        assert_eq!(
            saved[[x, y, z]],
            predicted[[x, y, z]],
            "undone stroke at {x},{y},{z}"
        );
    }

    // Fine-tune from the form: start a run from the weights of the finished one.
    browser.goto(&server.url("/runs/new")).await;
    browser
        .wait_for(
            &format!("document.querySelector('#new-run').init_from.querySelector('option[value=\"{run}\"]')"),
            Duration::from_secs(10),
        )
        .await;
    browser
        .script(&format!(
            "const f = document.querySelector('#new-run');
             f.method.value = 'cggm'; f.preset.value = 'tiny'; f.epochs.value = '1';
             f.steps_per_epoch.value = '2'; f.device.value = 'cpu'; f.init_from.value = '{run}';"
        ))
        .await;
    browser.click("#launch").await;
    browser
        .wait_for(
            "location.pathname.startsWith('/jobs/')",
            Duration::from_secs(30),
        )
        .await;
    let tuned = browser.id_in_url().await;
    assert_ne!(tuned, run);
    let job = server.job_succeeded(tuned, DEADLINE).await;
    assert_eq!(job["params"]["init_from"], run, "{job}");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            server
                .data_dir
                .join(format!("runs/job-{tuned}/config.json")),
        )
        .unwrap(),
    )
    .unwrap();
    let source = server.data_dir.join(format!("runs/job-{run}"));
    assert_eq!(
        Path::new(config["init_from"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        source.canonicalize().unwrap(),
        "{config}"
    );
    browser.quit().await;
}
