//! A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin (installed by
//! scripts/setup-pacs.sh), started on loopback with a configuration of its own in a temporary
//! folder (free HTTP and DICOM ports, a user to sign in with, storage in the folder), stopped when
//! dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ORTHANC: &str = "/usr/sbin/Orthanc";
pub const DICOMWEB_PLUGIN: &str = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so";
pub const USER: &str = "cggm";
pub const PASSWORD: &str = "pacs-test-password";

pub struct Orthanc {
    child: Child,
    /// `http://127.0.0.1:PORT` (Orthanc's REST API).
    pub base: String,
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// Whether Orthanc and its DICOMweb plugin are installed. `make test` runs scripts/setup-pacs.sh
/// first and sets `CGGM_REQUIRE_PACS=1`: there a missing Orthanc fails the test; a plain `cargo
/// test` on a machine without it skips the PACS tests and says how to run them.
pub fn installed() -> bool {
    let found = Path::new(ORTHANC).is_file() && Path::new(DICOMWEB_PLUGIN).exists();
    if !found {
        assert!(
            std::env::var_os("CGGM_REQUIRE_PACS").is_none(),
            "{ORTHANC} or {DICOMWEB_PLUGIN} is missing although make test ran \
             scripts/setup-pacs.sh: see its output above"
        );
        eprintln!(
            "skipped: Orthanc is not installed; run scripts/setup-pacs.sh (as root or with sudo; \
             make test does) to run the PACS tests"
        );
    }
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Orthanc {
    /// Starts Orthanc and waits (with a deadline) until `GET /system` answers.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let http_port = free_port();
        let config = serde_json::json!({
            "Name": "cggm-test",
            "StorageDirectory": dir.path().join("storage"),
            "IndexDirectory": dir.path().join("storage"),
            "HttpPort": http_port,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": true,
            "RegisteredUsers": { "cggm": PASSWORD },
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": { "Enable": true, "Root": "/dicom-web/" }
        });
        let config_path = dir.path().join("orthanc.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("orthanc.log")).unwrap();
        let child = Command::new(ORTHANC)
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start Orthanc");
        let orthanc = Self {
            child,
            base: format!("http://127.0.0.1:{http_port}"),
            client: reqwest::Client::new(),
            _dir: dir,
        };
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = orthanc
                .client
                .get(format!("{}/system", orthanc.base))
                .basic_auth(USER, Some(PASSWORD))
                .send()
                .await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return orthanc;
            }
            assert!(
                Instant::now() < until,
                "Orthanc did not answer GET /system within 30 s: {}",
                orthanc.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The DICOMweb root, as `cggm serve --pacs` takes it.
    pub fn dicomweb(&self) -> String {
        format!("{}/dicom-web", self.base)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("orthanc.log")).unwrap_or_default()
    }

    /// Stores DICOM files through Orthanc's own REST API (`POST /instances`), not DICOMweb.
    pub async fn upload(&self, files: &[PathBuf]) {
        for file in files {
            let response = self
                .client
                .post(format!("{}/instances", self.base))
                .basic_auth(USER, Some(PASSWORD))
                .body(std::fs::read(file).unwrap())
                .send()
                .await
                .unwrap();
            assert!(
                response.status().is_success(),
                "Orthanc refused {}: {}",
                file.display(),
                response.text().await.unwrap_or_default()
            );
        }
    }

    /// `GET path` of Orthanc's REST API as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.client
            .get(format!("{}{path}", self.base))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
