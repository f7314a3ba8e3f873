//! The PACS page in headless Chromium against a real Orthanc (scripts/setup-pacs.sh): the search
//! lists the study stored in Orthanc, its series come with the modality selects set from their
//! descriptions, a corrected mapping is what the import sends, and Import links the new study.
//!
//! Saves target/screenshots/pacs.png; with `CGGM_README_SCREENSHOTS=1` also
//! docs/screenshots/pacs.png (the README's).

mod common;

use common::dicom::{make_dicom, MODALITIES};
use common::live::*;
use common::orthanc::{self, Orthanc};
use common::ui::*;
use common::webdriver::Browser;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pacs_page_searches_maps_and_imports_a_study() {
    if !orthanc::installed() {
        return;
    }
    let orthanc = Orthanc::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Descriptions as scanners write them; the page guesses each modality from them.
    for (i, (modality, description)) in MODALITIES
        .iter()
        .zip(["AX T2 FLAIR", "AX T1 POST GD", "T1 MPRAGE", "T2W TSE"])
        .enumerate()
    {
        let folder = dir.path().join(modality);
        make_dicom(
            &folder,
            &[
                "--modality",
                modality,
                "--seed",
                &i.to_string(),
                "--patient",
                "DOE^JANE",
                "--description",
                description,
            ],
        );
        let mut files: Vec<_> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        orthanc.upload(&files).await;
    }
    let url = orthanc.dicomweb();
    let server = LiveServer::start_with_env(
        &dir.path().join("data"),
        &["--no-demo", "--pacs", &url, "--pacs-user", orthanc::USER],
        &[("CGGM_PACS_PASSWORD", orthanc::PASSWORD)],
    );
    let browser = Browser::start().await;
    browser.goto(&server.url("/pacs")).await;
    let wait = Duration::from_secs(30);
    browser
        .wait_for(
            "document.querySelectorAll('#pacs-studies tbody tr').length === 1",
            wait,
        )
        .await;
    browser.click("#pacs-studies .pacs-open").await;
    browser
        .wait_for(
            "document.querySelectorAll('#pacs-series tbody tr').length === 4",
            wait,
        )
        .await;
    // Each select holds the series whose description names its modality.
    let chosen = browser
        .script(
            "return Array.from(document.querySelectorAll('#pacs-mapping select')).map(s => \
             s.dataset.modality + '=' + s.options[s.selectedIndex].textContent)",
        )
        .await;
    let chosen: Vec<String> = chosen
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for (want, description) in
        MODALITIES
            .iter()
            .zip(["AX T2 FLAIR", "AX T1 POST GD", "T1 MPRAGE", "T2W TSE"])
    {
        assert!(
            chosen
                .iter()
                .any(|c| c.starts_with(&format!("{want}=")) && c.contains(description)),
            "{want}: {chosen:?}"
        );
    }
    browser.click("#pacs-import-button").await;
    browser
        .wait_for(
            "!document.querySelector('#pacs-imported').hidden",
            Duration::from_secs(120),
        )
        .await;
    let href = browser
        .script("return document.querySelector('#pacs-imported-link').getAttribute('href')")
        .await;
    let studies = server.get_json("/api/studies").await;
    let id = studies[0]["id"].as_i64().unwrap();
    assert_eq!(href, format!("/segment?study={id}"));
    assert_eq!(studies[0]["name"], "DOE^JANE");
    for path in screenshot_paths() {
        browser.screenshot(&path).await;
    }
    browser.quit().await;
}

fn screenshot_paths() -> Vec<std::path::PathBuf> {
    let mut paths = vec![screenshots().join("pacs.png")];
    if std::env::var_os("CGGM_README_SCREENSHOTS").is_some() {
        paths.push(readme_screenshot_dir().join("pacs.png"));
    }
    paths
}
