//! Data safety with the real `cggm serve` process: a server killed with SIGKILL takes its training
//! child with it, two servers never share a data directory, and hostile uploads sent at once
//! leave the server's peak memory small (read from /proc, printed for the README's table).

mod common;

use common::hostile_nifti;
use common::live::*;
use common::procs::{children_of, is_running, memory_mb};
use std::process::Stdio;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_child_dies_with_a_server_killed_by_sigkill_and_the_job_is_interrupted() {
    let mut server = LiveServer::start(&["--no-demo"]);
    let dataset = server.tiny_dataset("tiny").await;
    let job = server.joint_training(dataset, 1000).await;
    server
        .poll_json(&format!("/api/jobs/{job}"), DEADLINE, |j| {
            j["state"] == "running"
        })
        .await;
    let server_pid = server.child.id();
    let trainers = children_of(server_pid);
    assert_eq!(trainers.len(), 1, "one training child: {trainers:?}");
    let trainer = trainers[0];

    server.child.kill().unwrap(); // SIGKILL: no handler runs in the server
    server.child.wait().unwrap();

    let until = Instant::now() + Duration::from_secs(30);
    while is_running(trainer) {
        assert!(
            Instant::now() < until,
            "the trainer {trainer} outlived its killed server"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let restarted = LiveServer::start_in(&server.data_dir, &["--no-demo"]);
    let state = restarted.get_json(&format!("/api/jobs/{job}")).await;
    assert_eq!(state["state"], "interrupted", "{state}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_directory_is_refused_with_a_clear_error() {
    let server = LiveServer::start(&["--no-demo"]);
    let output = serve_command(&server.data_dir, &["--no-demo"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another CGGM Studio server")
            && stderr.contains(&server.child.id().to_string()),
        "{stderr}"
    );
    // The first one still serves.
    assert_eq!(server.get_json("/api/health").await["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_uploads_sent_at_once_get_422_and_the_server_stays_under_500_mb() {
    let server = LiveServer::start(&["--no-demo"]);
    let zeros = vec![0u8; 64 << 20];
    let files: Vec<(&str, Vec<u8>)> = vec![
        (
            "gzip bomb 1500^3",
            hostile_nifti([1500, 1500, 1500], &zeros),
        ),
        ("lying 20000^3", hostile_nifti([20000, 20000, 20000], &[])),
        ("constant 1024^3", hostile_nifti([1024, 1024, 1024], &zeros)),
        ("truncated 400^3", hostile_nifti([400, 400, 400], &zeros)),
        ("tail bomb 64^3", hostile_nifti([64, 64, 64], &zeros)),
    ];
    let started = Instant::now();
    let mut uploads = Vec::new();
    for round in 0..4 {
        for (what, bytes) in &files {
            let form = reqwest::multipart::Form::new().part(
                "files",
                reqwest::multipart::Part::bytes(bytes.clone()).file_name("H_flair.nii.gz"),
            );
            let request = server
                .client
                .post(server.url("/api/studies"))
                .multipart(form);
            uploads.push(async move { (round, *what, request.send().await.unwrap()) });
        }
    }
    let count = uploads.len();
    for (round, what, response) in futures_util::future::join_all(uploads).await {
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status.as_u16(), 422, "round {round}, {what}: {body}");
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak = memory_mb(server.child.id(), "VmHWM");
    eprintln!(
        "hostile uploads: {count} requests in {seconds:.2} s ({:.1} requests/s), server peak \
         memory (VmHWM) {peak:.0} MB",
        count as f64 / seconds
    );
    assert!(peak < 500.0, "server peak memory {peak:.0} MB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_stream_requests_for_unknown_jobs_leave_the_server_s_memory_flat() {
    let server = LiveServer::start(&["--no-demo"]);
    let pid = server.child.id();
    let get = |id: usize| {
        let request = server
            .client
            .get(server.url(&format!("/api/jobs/{id}/stream")));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // Warm-up: connection pool, allocator arenas.
    for id in 0..500 {
        assert_eq!(get(1_000_000 + id).await, 404);
    }
    let before = memory_mb(pid, "VmRSS");
    let started = Instant::now();
    for batch in 0..100 {
        let statuses =
            futures_util::future::join_all((0..100).map(|i| get(batch * 100 + i + 1))).await;
        assert!(statuses.iter().all(|&s| s == 404), "{statuses:?}");
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = memory_mb(pid, "VmRSS");
    eprintln!(
        "10000 stream requests for unknown jobs in {seconds:.2} s ({:.0} requests/s): server RSS \
         {before:.0} MB before, {after:.0} MB after",
        10_000.0 / seconds
    );
    // Before the fix each request left a channel behind (~100 KB each: ~1 GB for 10,000).
    assert!(after - before < 50.0, "{before:.0} MB -> {after:.0} MB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_its_headers_slowly_is_disconnected_and_others_are_still_served() {
    use std::io::{Read, Write};
    let server = LiveServer::start(&["--no-demo", "--header-timeout-secs", "1"]);
    let address = server.base.trim_start_matches("http://").to_string();
    let mut slow = std::net::TcpStream::connect(&address).unwrap();
    slow.write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .unwrap();
    // Keep trickling one header byte every 100 ms, as a slowloris does, until the server hangs
    // up (a read returns end-of-file or the connection is reset) or the deadline passes.
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answer = Vec::new();
    let closed = loop {
        assert!(
            Instant::now() < deadline,
            "the server still holds a connection whose headers never end"
        );
        let mut buffer = [0u8; 512];
        match slow.read(&mut buffer) {
            Ok(0) => break true,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break true,
        }
        if slow.write_all(b"a").is_err() {
            break true;
        }
    };
    assert!(closed);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "no answer to an incomplete request, or 408: {answer}"
    );
    // A well-behaved client is still served.
    assert_eq!(server.get_json("/api/health").await["status"], "ok");
}
