//! Issue-17 attacks on a real `cggm serve`: links planted in a registered dataset never serve what
//! lies outside it, the server's own folders cannot be registered as datasets, a token that was
//! asked for but is empty or guessable refuses the start, and patient data is created private to
//! its owner.

mod common;

use common::live::*;
use common::write_case;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The first file of `case_dir` whose name contains `part`.
fn file_with(case_dir: &Path, part: &str) -> std::path::PathBuf {
    std::fs::read_dir(case_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().contains(part))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_in_a_registered_dataset_serve_nothing_from_outside_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let dataset = root.join("brats");
    for case in ["CaseA", "CaseB", "CaseC"] {
        write_case(&dataset, case, [8, 8, 4], true);
    }
    // Outside every root: a secret, and a whole valid case (a link may point at valid NIfTI).
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let secret = outside.join("token");
    std::fs::write(&secret, "the server's token file\n").unwrap();
    write_case(&outside, "Elsewhere", [8, 8, 4], true);
    // CaseA's FLAIR -> the secret (as `-> /etc/passwd` would be); CaseB's folder -> outside.
    let flair = file_with(&dataset.join("CaseA"), "_flair");
    std::fs::remove_file(&flair).unwrap();
    std::os::unix::fs::symlink(&secret, &flair).unwrap();
    std::fs::remove_dir_all(dataset.join("CaseB")).unwrap();
    std::os::unix::fs::symlink(outside.join("Elsewhere"), dataset.join("CaseB")).unwrap();
    // A dataset folder that is itself a link out of the root is refused at registration.
    std::os::unix::fs::symlink(&outside, root.join("linked-dataset")).unwrap();

    let server = LiveServer::start(&["--no-demo", "--dataset-root", root.to_str().unwrap()]);
    let refused = server
        .client
        .post(server.url("/api/datasets"))
        .json(&serde_json::json!({ "name": "linked", "path": root.join("linked-dataset") }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);

    let registered = server.register_dataset("brats", &dataset).await;
    let id = registered["id"].as_i64().unwrap();
    let problems = registered["report"]["problems"].to_string();
    for case in ["CaseA", "CaseB"] {
        assert!(
            problems.contains(case) && problems.contains("outside the dataset folder"),
            "{case} is named in the report: {problems}"
        );
    }
    // Files are named within the dataset; no server path (nor the link's target) is told.
    for path in [&root, &outside] {
        let canonical = path.canonicalize().unwrap();
        for folder in [path.as_path(), canonical.as_path()] {
            assert!(!problems.contains(folder.to_str().unwrap()), "{problems}");
        }
    }
    let cases = server
        .get_json(&format!("/api/datasets/{id}/case-list"))
        .await;
    let names: Vec<&str> = cases
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["case"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["CaseC"]);
    for (case, role) in [("CaseA", "flair"), ("CaseB", "flair"), ("CaseB", "seg")] {
        let response = server
            .get(&format!("/api/datasets/{id}/cases/{case}/nifti/{role}"))
            .await;
        let status = response.status();
        let body = response.bytes().await.unwrap();
        assert_eq!(status, 404, "{case}/{role}");
        assert!(
            !String::from_utf8_lossy(&body).contains("token file"),
            "nothing of the secret leaks"
        );
    }
    let inside = server
        .get(&format!("/api/datasets/{id}/cases/CaseC/nifti/flair"))
        .await;
    assert_eq!(inside.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_own_folders_cannot_be_registered_as_datasets() {
    let server = LiveServer::start(&["--no-demo"]);
    let data = server.data_dir.canonicalize().unwrap();
    write_case(&data.join("datasets/fine"), "Case_000", [8, 8, 4], true);
    for path in [
        data.clone(),
        data.join("studies"),
        data.join("tmp"),
        data.join("runs"),
        data.join("datasets"),
        data.join("."),
        data.parent().unwrap().to_path_buf(),
    ] {
        let response = server
            .client
            .post(server.url("/api/datasets"))
            .json(&serde_json::json!({ "name": "internal", "path": path }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{}", path.display());
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
    let fine = server
        .register_dataset("fine", &data.join("datasets/fine"))
        .await;
    assert_eq!(fine["report"]["valid_cases"], 1, "{fine}");
}

#[test]
fn a_token_asked_for_but_empty_blank_or_short_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    for content in ["", "   \n", "x\n", "fifteen-chars-x"] {
        std::fs::write(&token_file, content).unwrap();
        let output = serve_command(&dir.path().join("data"), &["--no-demo", "--token-file"])
            .arg(&token_file)
            .env_remove("CGGM_TOKEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{content:?} started: {stderr}");
        assert!(stderr.contains("at least 16"), "{content:?}: {stderr}");
    }
    let output = serve_command(&dir.path().join("data"), &["--no-demo"])
        .env("CGGM_TOKEN", "short")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("at least 16"));
}

/// Every file and folder under `dir` that other users could read, with its mode.
fn readable_by_others(dir: &Path) -> Vec<(std::path::PathBuf, u32)> {
    let mut open = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            open.push((path.clone(), mode));
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    open
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_data_is_created_private_to_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // An older data directory, created readable by everyone, is tightened on start.
    std::fs::create_dir_all(data.join("studies")).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = LiveServer::start_in(&data, &["--no-demo"]);
    let case = dir.path().join("cases");
    write_case(&case, "Patient", [8, 8, 4], false);
    let response = server
        .client
        .post(server.url("/api/studies"))
        .multipart(case_form(
            &case.join("Patient"),
            Some("Patient"),
            &["flair", "t1ce", "t1", "t2"],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let open = readable_by_others(&data);
    assert!(open.is_empty(), "readable by other users: {open:?}");
}
