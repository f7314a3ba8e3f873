//! The Slurm issue's "done when", in headless Chromium: on `cggm serve --executor slurm` over the
//! one-node Slurm cluster (scripts/setup-slurm.sh) and the demo dataset the server makes on its
//! first start, the Studies page's form launches 2 methods x 3 seeds (tiny preset, one epoch of two
//! steps on the CPU); every run is a Slurm job; the aggregate page shows the table (both methods,
//! mean ± 95 % interval cells, six finished runs) and the figure (the SVG loaded in its <img>, the
//! browser-made PNG), and the CSV download holds the same runs.
//!
//! Saves target/screenshots/comparison.png (the page), comparison-figure.png (the page's PNG
//! button's image) and comparison-server.png (`/api/comparisons/N/png`); with `CGGM_README_SCREENSHOTS=1` also
//! docs/screenshots/comparison.png (the README's).

mod common;

use common::live::*;
use common::webdriver::Browser;
use std::path::PathBuf;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(300);

fn screenshot_paths() -> Vec<PathBuf> {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut paths = vec![root.join("target/screenshots/comparison.png")];
    if std::env::var_os("CGGM_README_SCREENSHOTS").is_some() {
        paths.push(root.join("docs/screenshots/comparison.png"));
    }
    paths
}

/// Clicks "Launch" on the filled study form and waits for the study's page: its id.
async fn launch(browser: &Browser) -> i64 {
    browser.click("#launch-comparison").await;
    browser
        .wait_for(
            "/^\\/comparisons\\/\\d+$/.test(location.pathname)",
            Duration::from_secs(30),
        )
        .await;
    browser.id_in_url().await
}

/// The study form offers the trainer's methods and the presets of the chosen dataset's task
/// (from `/api/vocabulary`) instead of free text; the methods ticked and the preset chosen are
/// what the study is made of (issue 18).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_study_form_picks_methods_and_presets_from_the_vocabulary() {
    let server = LiveServer::start(&["--no-demo"]);
    let dataset = server.tiny_dataset("demo-tiny").await;
    let vocabulary = server.get_json("/api/vocabulary").await;
    let browser = Browser::start().await;
    browser.goto(&server.url("/comparisons")).await;
    browser
        .wait_for(
            "document.querySelector('#new-comparison').dataset.ready === '1'",
            Duration::from_secs(20),
        )
        .await;
    let offered = browser
        .script("return Array.from(document.querySelectorAll('#methods-pick input')).map((i) => i.value);")
        .await;
    let offered: Vec<String> = serde_json::from_value(offered).unwrap();
    for method in vocabulary["methods"].as_array().unwrap() {
        let name = method["name"].as_str().unwrap();
        assert!(
            offered.iter().any(|m| m == name),
            "{name} not offered: {offered:?}"
        );
    }
    assert!(offered.iter().any(|m| m == "unimodal:flair"), "{offered:?}");
    let ticked = browser
        .script("return Array.from(document.querySelectorAll('#methods-pick input:checked')).map((i) => i.value).join(',');")
        .await;
    assert_eq!(ticked, "joint,cggm", "joint and cggm are ticked first");
    let presets = browser
        .script("return Array.from(document.querySelector('#new-comparison').preset.options).map((o) => o.value);")
        .await;
    let presets: Vec<String> = serde_json::from_value(presets).unwrap();
    assert!(
        presets.contains(&"tiny".to_string()) && presets.contains(&"paper".to_string()),
        "{presets:?}"
    );
    assert!(
        !presets.contains(&"cpu-features".to_string()),
        "a feature preset offered for MRI: {presets:?}"
    );

    browser
        .script(&format!(
            "const f = document.querySelector('#new-comparison');
             f.name.value = 'picked'; f.dataset_id.value = '{dataset}';
             document.querySelector('#methods-pick input[value=cggm]').click();
             f.seeds.value = '1'; f.preset.value = 'tiny'; f.preset.dispatchEvent(new Event('change'));
             f.epochs.value = '1'; f.steps_per_epoch.value = '1'; f.device.value = 'cpu';"
        ))
        .await;
    assert!(!browser.text("#study-preset-description").await.is_empty());
    let id = launch(&browser).await;
    let study = server.get_json(&format!("/api/comparisons/{id}")).await;
    assert_eq!(
        study["spec"]["methods"],
        serde_json::json!(["joint"]),
        "{study}"
    );
    assert_eq!(study["spec"]["options"]["preset"], "tiny", "{study}");
    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_by_three_study_launched_from_the_browser_runs_under_slurm_and_shows_table_and_figure(
) {
    if !slurm_cluster() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = LiveServer::start_in(
        &dir.path().join("data"),
        &["--executor", "slurm", "--slurm-poll-ms", "200"],
    );
    // The demo dataset is made in the background on the first start.
    let datasets = server
        .poll_json("/api/datasets", Duration::from_secs(120), |d| {
            d.as_array()
                .is_some_and(|a| a.iter().any(|d| d["name"] == "demo"))
        })
        .await;
    let demo = datasets
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "demo")
        .unwrap()["id"]
        .as_i64()
        .unwrap();

    let browser = Browser::start().await;
    browser.goto(&server.url("/comparisons")).await;
    browser
        .wait_for(
            "document.querySelector('#new-comparison').dataset.ready === '1'",
            Duration::from_secs(20),
        )
        .await;
    browser
        .script(&format!(
            "const f = document.querySelector('#new-comparison');
             f.name.value = 'joint vs cggm on the demo'; f.dataset_id.value = '{demo}';
             f.dataset_id.dispatchEvent(new Event('change'));
             f.seeds.value = '1,2,3'; f.preset.value = 'tiny';
             f.epochs.value = '1'; f.steps_per_epoch.value = '2'; f.device.value = 'cpu';"
        ))
        .await;
    let id = launch(&browser).await;

    // Every run of the grid is a Slurm job.
    let aggregate = server.get_json(&format!("/api/comparisons/{id}")).await;
    let runs = aggregate["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6, "{aggregate}");
    for run in runs {
        let job = server
            .poll_json(&format!("/api/jobs/{}", run["job_id"]), DEADLINE, |j| {
                j["execution"]["slurm_job_id"].is_string()
            })
            .await;
        assert_eq!(job["execution"]["executor"], "slurm", "{job}");
    }

    // The page follows the runs to the end.
    browser
        .wait_for(
            "document.querySelector('#comparison-progress').textContent === '6 of 6 runs finished'",
            DEADLINE,
        )
        .await;
    let states = browser
        .script(
            "return Array.from(document.querySelectorAll('#comparison-runs tbody tr'))
               .map((tr) => tr.cells[3].textContent);",
        )
        .await;
    assert_eq!(states, serde_json::Value::from(vec!["succeeded"; 6]));

    // The table: one row per method, 3 of 3 runs scored, mean ± interval cells.
    let rows = browser
        .script(
            "return Array.from(document.querySelectorAll('#comparison-summary tbody tr'))
               .map((tr) => Array.from(tr.cells).map((td) => td.textContent));",
        )
        .await;
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let header = browser
        .script(
            "return Array.from(document.querySelectorAll('#comparison-summary thead th'))
               .map((th) => th.dataset.metric || th.textContent);",
        )
        .await;
    // Metric columns read in words; their keys stay in data-metric (the CSV's names).
    let words = browser
        .script(
            "return Array.from(document.querySelectorAll('#comparison-summary thead th[data-metric]'))
               .map((th) => th.textContent);",
        )
        .await;
    let words: Vec<String> = serde_json::from_value(words).unwrap();
    assert!(
        words.iter().any(|w| w == "Dice mean")
            && words.iter().any(|w| w == "lesion-wise Dice mean"),
        "{words:?}"
    );
    let dice_column = header
        .as_array()
        .unwrap()
        .iter()
        .position(|h| h == "dice_mean")
        .unwrap_or_else(|| panic!("no dice_mean column in {header}"));
    // Segmentation studies add lesion-wise Dice (and HD95 where finite) to the table.
    assert!(
        header
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h == "lesion_dice_mean"),
        "no lesion_dice_mean column in {header}"
    );
    // The per-modality table: a column per modality, named, and a row per method and metric.
    let modality_header = browser
        .script(
            "return Array.from(document.querySelectorAll('#comparison-modality thead th'))
               .map((th) => th.textContent);",
        )
        .await;
    let mut modality_header: Vec<String> = serde_json::from_value(modality_header).unwrap();
    assert_eq!(
        modality_header[..2],
        ["method", "metric"],
        "{modality_header:?}"
    );
    modality_header[2..].sort();
    assert_eq!(
        modality_header[2..],
        ["flair", "t1", "t1ce", "t2"],
        "per-modality table header"
    );
    let api = server.get_json(&format!("/api/comparisons/{id}")).await;
    for (row, method) in rows.iter().zip(["joint", "cggm"]) {
        assert_eq!(row[0], method, "{row}");
        assert_eq!(row[1], "3 / 3", "{row}");
        let cell = row[dice_column].as_str().unwrap();
        let (mean, half) = cell
            .split_once(" ± ")
            .unwrap_or_else(|| panic!("{method}: {cell} is not mean ± interval"));
        let arm = api["arms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["arm"] == method)
            .unwrap();
        let shown = &arm["metrics"]["dice_mean"];
        assert_eq!(mean, format!("{:.4}", shown["mean"].as_f64().unwrap()));
        assert_eq!(half, format!("{:.4}", shown["half"].as_f64().unwrap()));
    }

    // The figure: the SVG, loaded, with both methods, the metric and the six seeds.
    browser
        .wait_for(
            "(() => { const img = document.querySelector('#comparison-figure');
               return img.src.includes('/svg?t=6') && img.complete && img.naturalWidth > 0; })()",
            Duration::from_secs(30),
        )
        .await;
    let svg = server.get(&format!("/api/comparisons/{id}/svg")).await;
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    let svg = svg.text().await.unwrap();
    for text in [">joint</text>", ">cggm</text>", "dice_mean (test)"] {
        assert!(svg.contains(text), "no {text} in the figure: {svg}");
    }
    assert_eq!(svg.matches("class=\"seed\"").count(), 6, "{svg}");
    // The PNG button's image: the SVG rasterised by the browser at twice its size.
    let png = browser.script("return window.comparisonFigurePng();").await;
    let png = png.as_str().unwrap_or_default();
    assert!(png.starts_with("data:image/png;base64,"), "{png:.60}");
    let browser_png = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&png["data:image/png;base64,".len()..])
            .unwrap()
    };
    assert!(is_png(&browser_png));
    let natural = browser
        .script("return document.querySelector('#comparison-figure').naturalWidth;")
        .await;
    assert!(natural.as_u64().unwrap() >= 480, "{natural}");

    // The server's PNG (the same drawing without text), kept beside the screenshots.
    let server_png = server
        .get_bytes(&format!("/api/comparisons/{id}/png"))
        .await;
    assert!(is_png(&server_png));
    let kept = screenshot_paths()[0].with_file_name("comparison-server.png");
    std::fs::create_dir_all(kept.parent().unwrap()).unwrap();
    std::fs::write(&kept, &server_png).unwrap();
    std::fs::write(kept.with_file_name("comparison-figure.png"), &browser_png).unwrap();

    for path in screenshot_paths() {
        browser.screenshot(&path).await;
    }

    // The CSV link: an attachment with both summaries and the six runs.
    let href = browser
        .script("return document.querySelector('a[href$=\"/csv\"]').href;")
        .await;
    let csv = server
        .client
        .get(href.as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert!(csv.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    let csv = csv.text().await.unwrap();
    for method in ["joint", "cggm"] {
        assert!(
            csv.lines()
                .any(|l| l.starts_with(&format!("summary,{method},,dice_mean,3,"))),
            "{csv}"
        );
        for seed in 1..=3 {
            assert!(
                csv.lines()
                    .any(|l| l.starts_with(&format!("run,{method},seed {seed} job "))
                        && l.contains(",dice_mean,1,")),
                "{method} seed {seed}: {csv}"
            );
        }
    }
    assert!(
        csv.lines().any(|l| l.starts_with("paired_vs_joint,cggm,")),
        "{csv}"
    );
    browser.quit().await;
}
