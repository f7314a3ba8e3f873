//! In headless Chromium: import DICOM series (written by pydicom) through the Segment page — a bad
//! series refused with its reason, then a good one as a study that segments with a tiny trained
//! model — and the time left the run page computes from its progress events.

mod common;

use common::dicom::zips_from_case;
use common::live::*;
use common::ui::*;
use common::webdriver::Browser;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_a_dicom_study_from_the_segment_page_and_segment_it() {
    let server = LiveServer::start(&["--no-demo"]);
    let dataset = server.tiny_dataset("demo-tiny").await;
    let job = server.tiny_training(dataset).await;
    let zips = tempfile::tempdir().unwrap();
    let case = server.data_dir.join("datasets/demo-tiny/BraTS2021_00002");
    let good = zips_from_case(&case, zips.path());
    let gap = zips.path().join("t1ce-gap.zip");
    common::dicom::make_dicom(&gap, &["--modality", "t1ce", "--drop-slice", "5"]);
    let browser = Browser::start().await;

    server.job_succeeded(job, JOB_DEADLINE).await;

    // A series with a missing slice: the page shows the server's reason, nothing is added.
    browser.goto(&server.url("/segment")).await;
    for (modality, zip) in &good {
        let file = if modality == "t1ce" { &gap } else { zip };
        browser
            .type_into(
                &format!("#import-dicom input[name={modality}]"),
                &file.display().to_string(),
            )
            .await;
    }
    browser.click("#import-dicom-button").await;
    browser
        .wait_for(
            "document.querySelector('#toast').textContent.includes('slices are missing')",
            Duration::from_secs(60),
        )
        .await;
    assert!(browser.text("#toast").await.starts_with("t1ce: "));
    browser
        .screenshot(&screenshots().join("dicom-refused.png"))
        .await;
    let studies = server.get_json("/api/studies").await;
    assert_eq!(studies, serde_json::json!([]));

    // The four good series, then segment the new study with the trained run.
    browser.goto(&server.url("/segment")).await;
    browser
        .type_into("#import-dicom input[name=name]", "dicom-patient")
        .await;
    for (modality, zip) in &good {
        browser
            .type_into(
                &format!("#import-dicom input[name={modality}]"),
                &zip.display().to_string(),
            )
            .await;
    }
    browser.click("#import-dicom-button").await;
    browser
        .wait_for(
            "Array.from(document.querySelectorAll('#predict select[name=study_id] option')).some((o) => o.textContent.includes('dicom-patient (32×32×16)'))",
            Duration::from_secs(60),
        )
        .await;
    browser
        .screenshot(&screenshots().join("dicom-imported.png"))
        .await;
    segment_and_wait(&browser).await;
    let prediction: i64 = browser.id_in_url().await;
    let done = server
        .get_json(&format!("/api/predictions/{prediction}"))
        .await;
    assert_eq!(done["study"]["name"], "dicom-patient");
    assert!(done["volumes"]["wt_ml"].as_f64().is_some(), "{done}");

    // The run page's time left: from the rate between two progress points (event times).
    browser.goto(&server.url(&format!("/jobs/{job}"))).await;
    wait_for_job_state(&browser, "succeeded", Duration::from_secs(30)).await;
    let eta = browser
        .script(
            "const eta = window.progressEta; eta.first = null;
             eta.update(0.25, 1000); eta.update(0.5, 1010);
             return document.querySelector('#eta').textContent;",
        )
        .await;
    assert_eq!(eta, "About 20 s left (50 % done)");
    browser.quit().await;
}
