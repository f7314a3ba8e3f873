//! Steps through the application's pages that several browser tests take (upload a study on the
//! Segment page, segment it, wait for a job page's state), and where their screenshots go.

use super::webdriver::Browser;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a page may take for a tiny training or a segmentation to end.
pub const JOB_DEADLINE: Duration = Duration::from_secs(300);

/// target/screenshots: every browser test's pictures (CI keeps them as artefacts).
pub fn screenshots() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/screenshots"
    ))
}

/// docs/screenshots: the README's pictures, refreshed by the ignored tests that make them.
pub fn readme_screenshot_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/screenshots"))
}

/// Waits until the job page (run or prediction) says the job is in `state`.
pub async fn wait_for_job_state(browser: &Browser, state: &str, deadline: Duration) {
    browser
        .wait_for(
            &format!("document.querySelector('#job-state').textContent === '{state}'"),
            deadline,
        )
        .await;
}

/// On the Segment page: uploads `files` (one input, several files) as a study and waits until
/// the segmentation form offers it.
pub async fn upload_study_on_segment_page(browser: &Browser, files: &[PathBuf]) {
    let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    browser
        .type_into("#upload-study input[type=file]", &files.join("\n"))
        .await;
    browser.click("#upload-study button").await;
    browser
        .wait_for(
            "document.querySelectorAll('#predict select[name=study_id] option').length > 0",
            Duration::from_secs(30),
        )
        .await;
}

/// On the Segment page: segments the chosen study and follows the prediction's page until the
/// job succeeded.
pub async fn segment_and_wait(browser: &Browser) {
    browser.click("#run-inference").await;
    browser
        .wait_for(
            "location.pathname.startsWith('/predictions/')",
            Duration::from_secs(30),
        )
        .await;
    wait_for_job_state(browser, "succeeded", JOB_DEADLINE).await;
}

/// A case folder's four modalities, `<case>/<case>_<modality>.nii.gz`.
pub fn modality_files(case_dir: &Path) -> Vec<PathBuf> {
    let case = case_dir.file_name().unwrap().to_string_lossy().to_string();
    ["flair", "t1ce", "t1", "t2"]
        .iter()
        .map(|m| case_dir.join(format!("{case}_{m}.nii.gz")))
        .collect()
}
