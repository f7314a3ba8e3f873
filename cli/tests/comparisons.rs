//! Studies — method comparisons through the API on the local executor: 2 methods x 2 seeds on tiny
//! data, and the aggregate checked against the runs' own metrics.json (means, the 95 % t interval
//! computed here independently, paired differences against joint), plus the CSV and PNG exports.

mod common;

use common::live::*;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(300);

fn metrics_json(server: &LiveServer, job: i64) -> serde_json::Value {
    let text =
        std::fs::read_to_string(server.data_dir.join(format!("runs/job-{job}/metrics.json")))
            .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn test_dice(server: &LiveServer, job: i64) -> f64 {
    let metrics = metrics_json(server, job);
    metrics["test"]["dice"]["mean"]
        .as_f64()
        .unwrap_or_else(|| panic!("no test.dice.mean in job {job}'s metrics.json: {metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_by_two_comparison_aggregates_the_runs_own_test_scores() {
    let server = LiveServer::start(&["--no-demo", "--max-jobs", "2"]);
    let dataset = server.tiny_dataset("tiny").await;

    // A bad method queues nothing.
    let refused = server
        .client
        .post(server.url("/api/comparisons"))
        .json(
            &serde_json::json!({ "dataset_id": dataset, "methods": ["joint", "no-such-method"],
                                   "seeds": [1, 2], "options": { "preset": "tiny" } }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    assert_eq!(
        server.get_json("/api/jobs").await.as_array().unwrap().len(),
        0
    );

    let made = server
        .post_json(
            "/api/comparisons",
            serde_json::json!({ "dataset_id": dataset, "methods": ["joint", "cggm"], "seeds": [1, 2],
                                "options": { "preset": "tiny", "epochs": 1, "steps_per_epoch": 2,
                                             "device": "cpu" } }),
        )
        .await;
    let id = made["id"].as_i64().unwrap();
    assert_eq!(made["jobs"].as_array().unwrap().len(), 4);
    let aggregate = server
        .poll_json(&format!("/api/comparisons/{id}"), DEADLINE, |a| {
            a["done"] == true
        })
        .await;
    let runs = aggregate["runs"].as_array().unwrap();
    assert!(
        runs.iter().all(|r| r["state"] == "succeeded"),
        "{aggregate}"
    );
    assert_eq!(aggregate["headline"], "dice_mean");

    // Each run's score is its metrics.json's; the arm's mean and interval follow from them.
    let mut by_arm: std::collections::BTreeMap<String, Vec<(i64, f64)>> = Default::default();
    for run in runs {
        let job = run["job_id"].as_i64().unwrap();
        let own = test_dice(&server, job);
        assert!((run["test_metrics"]["dice_mean"].as_f64().unwrap() - own).abs() < 1e-9);
        // HD95 and lesion-wise Dice come from the same report (issue 18).
        let report = metrics_json(&server, job);
        for (field, prefix) in [("hd95", "hd95"), ("lesion_dice", "lesion_dice")] {
            for region in ["wt", "tc", "et", "mean"] {
                let key = format!("{prefix}_{region}");
                match report["test"][field][region].as_f64() {
                    Some(v) => assert!(
                        (run["test_metrics"][&key].as_f64().unwrap() - v).abs() < 1e-9,
                        "{key}: {run}"
                    ),
                    None => assert!(run["test_metrics"].get(&key).is_none(), "{key}: {run}"),
                }
            }
        }
        by_arm
            .entry(run["arm"].as_str().unwrap().to_string())
            .or_default()
            .push((run["seed"].as_i64().unwrap(), own));
    }
    let t_975_df1 = 12.7062; // scipy.stats.t.ppf(0.975, 1)
    for arm in aggregate["arms"].as_array().unwrap() {
        let values: Vec<f64> = by_arm[arm["arm"].as_str().unwrap()]
            .iter()
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(values.len(), 2);
        let mean = (values[0] + values[1]) / 2.0;
        let sd = ((values[0] - mean).powi(2) + (values[1] - mean).powi(2)).sqrt(); // n - 1 = 1
        let half = t_975_df1 * sd / 2f64.sqrt();
        let shown = &arm["metrics"]["dice_mean"];
        assert!(
            (shown["mean"].as_f64().unwrap() - mean).abs() < 1e-9,
            "{arm}"
        );
        assert!(
            (shown["half"].as_f64().unwrap() - half).abs() < 1e-6,
            "{arm}"
        );
    }
    let joint: std::collections::BTreeMap<i64, f64> = by_arm["joint"].iter().copied().collect();
    let diffs: Vec<f64> = by_arm["cggm"]
        .iter()
        .map(|(seed, v)| v - joint[seed])
        .collect();
    let paired = aggregate["paired"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["arm"] == "cggm" && p["metric"] == "dice_mean")
        .expect("a paired difference of cggm against joint");
    assert!(
        (paired["interval"]["mean"].as_f64().unwrap() - (diffs[0] + diffs[1]) / 2.0).abs() < 1e-9
    );
    assert!(
        !aggregate["modality"].as_array().unwrap().is_empty(),
        "per-modality scores"
    );
    let columns = aggregate["metrics"].as_array().unwrap();
    assert!(
        columns.iter().any(|m| m == "lesion_dice_mean"),
        "no lesion-wise Dice column: {columns:?}"
    );

    // Exports.
    let csv = server.get_text(&format!("/api/comparisons/{id}/csv")).await;
    assert!(csv.starts_with("section,arm,detail,metric,n,mean,ci95_half"));
    assert!(
        csv.lines()
            .any(|l| l.starts_with("summary,cggm,,dice_mean,2,")),
        "{csv}"
    );
    assert!(
        csv.lines().any(|l| l.starts_with("paired_vs_joint,cggm,")),
        "{csv}"
    );
    let png = server
        .get_bytes(&format!("/api/comparisons/{id}/png"))
        .await;
    assert!(is_png(&png));
    let page = server.get(&format!("/comparisons/{id}")).await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("comparison-summary"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cggm_study_launches_a_comparison_with_the_token_and_prints_its_csv() {
    let dir = tempfile::tempdir().unwrap();
    let token = "study-cli-token-0123456789";
    let mut server = LiveServer::start_with_env(
        &dir.path().join("data"),
        &["--no-demo"],
        &[("CGGM_TOKEN", token)],
    );
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-cggm-request", "1".parse().unwrap());
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    server.client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    server.tiny_dataset("tiny").await;
    let study = |token: Option<&str>| {
        let mut command = std::process::Command::new(cggm());
        command
            .args(["study", "--server", &server.base, "--dataset", "tiny"])
            .args(["--methods", "joint", "--seeds", "4", "--preset", "tiny"])
            .args(["--epochs", "1", "--steps-per-epoch", "2", "--device", "cpu"])
            .args(["--name", "from the command line", "--wait"])
            .env_remove("CGGM_TOKEN");
        if let Some(token) = token {
            command.env("CGGM_TOKEN", token);
        }
        command.output().unwrap()
    };
    let refused = tokio::task::block_in_place(|| study(None));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("401") && stderr.contains("CGGM_TOKEN"),
        "{stderr}"
    );

    let out = tokio::task::block_in_place(|| study(Some(token)));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("study 1: 1 runs queued"), "{stdout}");
    assert!(
        stdout.contains("section,arm,detail,metric,n,mean,ci95_half"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("summary,joint,,dice_mean,1,")),
        "{stdout}"
    );
    let listed = server.get_json("/api/comparisons").await;
    assert_eq!(listed[0]["name"], "from the command line", "{listed}");
}

/// A study and its runs are stored together or not at all: when its second run cannot be stored
/// (its run folder is taken by a file), neither the study nor its first run is left behind
/// (before: the study was deleted but its first run stayed, cancelled, in the job list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_whose_second_run_cannot_be_stored_leaves_no_study_and_no_run() {
    let server = LiveServer::start(&["--no-demo"]);
    let dataset = server.tiny_dataset("tiny").await;
    let runs = server.data_dir.join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    let blocker = runs.join("job-2");
    std::fs::write(&blocker, "not a folder").unwrap();
    let body = serde_json::json!({ "dataset_id": dataset, "methods": ["joint"], "seeds": [1, 2],
                                   "options": { "preset": "tiny", "epochs": 1,
                                                "steps_per_epoch": 1, "device": "cpu" } });
    let refused = server
        .client
        .post(server.url("/api/comparisons"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = refused.status();
    let text = refused.text().await.unwrap();
    assert_eq!(status, 500, "{text}");
    assert!(
        text.contains("server log"),
        "an internal error, logged: {text}"
    );
    assert_eq!(
        server.get_json("/api/jobs").await.as_array().unwrap().len(),
        0,
        "no run is left behind"
    );
    let studies = server.get_json("/api/comparisons").await;
    assert_eq!(studies.as_array().unwrap().len(), 0, "{studies}");

    // With the folder free, the same study is stored whole.
    std::fs::remove_file(&blocker).unwrap();
    let made = server.post_json("/api/comparisons", body).await;
    assert_eq!(made["jobs"].as_array().unwrap().len(), 2, "{made}");
    assert_eq!(
        server
            .get_json("/api/comparisons")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// `DELETE /api/comparisons/N` (was 405): the study alone, keeping its runs; or with
/// `?runs=delete` its runs too — refused (409, nothing deleted) while one has not finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_can_be_deleted_with_or_without_its_runs() {
    let server = LiveServer::start(&["--no-demo", "--max-jobs", "1"]);
    let dataset = server.tiny_dataset("tiny").await;
    let body = |steps: u64| {
        serde_json::json!({ "dataset_id": dataset, "methods": ["joint"], "seeds": [1],
                            "options": { "preset": "tiny", "epochs": 1,
                                         "steps_per_epoch": steps, "device": "cpu" } })
    };
    let delete = |url: String| {
        let client = server.client.clone();
        async move { client.delete(url).send().await.unwrap() }
    };

    // Kept runs: the study goes, its run stays a run.
    let kept = server.post_json("/api/comparisons", body(1)).await;
    let (kept_id, kept_job) = (
        kept["id"].as_i64().unwrap(),
        kept["jobs"][0].as_i64().unwrap(),
    );
    server
        .poll_json(&format!("/api/comparisons/{kept_id}"), DEADLINE, |a| {
            a["done"] == true
        })
        .await;
    let gone = delete(server.url(&format!("/api/comparisons/{kept_id}"))).await;
    assert_eq!(gone.status(), 204, "{}", gone.text().await.unwrap());
    let after = server
        .client
        .get(server.url(&format!("/api/comparisons/{kept_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 404);
    let job = server.get_json(&format!("/api/jobs/{kept_job}")).await;
    assert_eq!(job["state"], "succeeded", "the run stays: {job}");
    assert!(server
        .data_dir
        .join(format!("runs/job-{kept_job}"))
        .is_dir());

    // With its runs, while the run still trains: refused, nothing deleted.
    let long = server.post_json("/api/comparisons", body(400)).await;
    let (long_id, long_job) = (
        long["id"].as_i64().unwrap(),
        long["jobs"][0].as_i64().unwrap(),
    );
    let refused = delete(server.url(&format!("/api/comparisons/{long_id}?runs=delete"))).await;
    assert_eq!(refused.status(), 409);
    let text = refused.text().await.unwrap();
    assert!(
        text.contains(&format!("run {long_job}")) && text.contains("cancel"),
        "{text}"
    );
    assert_eq!(
        server
            .client
            .get(server.url(&format!("/api/comparisons/{long_id}")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Cancelled, then deleted with its runs: the run and its folder go too.
    server
        .post_json(
            &format!("/api/jobs/{long_job}/cancel"),
            serde_json::json!({}),
        )
        .await;
    server
        .poll_json(&format!("/api/jobs/{long_job}"), DEADLINE, |j| {
            j["state"] == "cancelled"
        })
        .await;
    let gone = delete(server.url(&format!("/api/comparisons/{long_id}?runs=delete"))).await;
    assert_eq!(gone.status(), 204, "{}", gone.text().await.unwrap());
    let run = server
        .client
        .get(server.url(&format!("/api/jobs/{long_job}")))
        .send()
        .await
        .unwrap();
    assert_eq!(run.status(), 404);
    assert!(!server
        .data_dir
        .join(format!("runs/job-{long_job}"))
        .exists());
    let studies = server.get_json("/api/comparisons").await;
    assert_eq!(studies.as_array().unwrap().len(), 0, "{studies}");
}
