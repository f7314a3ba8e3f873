//! `cggm serve` settings: command-line flags, each with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Any non-loopback address requires --token.
    #[arg(long, env = "CGGM_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Directory for the database, datasets, uploads, runs and predictions.
    #[arg(long, env = "CGGM_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Bearer token required on every mutating request (POST); required off loopback.
    #[arg(long, env = "CGGM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How many jobs (training or inference) run at the same time; the rest wait in the queue.
    #[arg(long, env = "CGGM_MAX_JOBS", default_value_t = 1)]
    pub max_jobs: usize,
    /// Largest accepted upload request, in MiB.
    #[arg(long, env = "CGGM_MAX_UPLOAD_MB", default_value_t = 1024)]
    pub max_upload_mb: usize,
    /// Extra folders (besides the data directory) under which datasets may be registered.
    /// Separate several with ':' in the environment variable.
    #[arg(
        long = "dataset-root",
        env = "CGGM_DATASET_ROOTS",
        value_delimiter = ':'
    )]
    pub dataset_roots: Vec<PathBuf>,
    /// Do not create the synthetic demo dataset on first start.
    #[arg(long, env = "CGGM_NO_DEMO")]
    pub no_demo: bool,
    /// Folder with `static/` and `node_modules/` (the web assets); defaults to the checkout's web/.
    #[arg(long, env = "CGGM_WEB_DIR")]
    pub web_dir: Option<PathBuf>,
}

/// Everything the application needs at run time, resolved from [`ServeArgs`].
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub token: Option<String>,
    pub max_jobs: usize,
    pub max_upload_bytes: usize,
    pub dataset_roots: Vec<PathBuf>,
    pub web_dir: PathBuf,
    /// The `cggm` binary that runs jobs (the server's own executable in production).
    pub cggm_bin: PathBuf,
}

impl Config {
    /// A configuration for `data_dir` with the defaults; used by tests.
    pub fn new(data_dir: PathBuf, cggm_bin: PathBuf) -> Self {
        Self {
            data_dir,
            token: None,
            max_jobs: 1,
            max_upload_bytes: 1024 * 1024 * 1024,
            dataset_roots: Vec::new(),
            web_dir: default_web_dir(),
            cggm_bin,
        }
    }
}

/// The web assets of the checkout this binary was built from (the release binary runs from it).
pub fn default_web_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../web"))
}

/// Refuses a non-loopback bind address without a token.
pub fn check_bind(bind: &SocketAddr, token: Option<&str>) -> Result<(), String> {
    if bind.ip().is_loopback() || token.is_some_and(|t| !t.is_empty()) {
        Ok(())
    } else {
        Err(format!(
            "refusing to listen on {bind} without a token: anyone on the network could start jobs. \
             Set --token or CGGM_TOKEN, or bind to 127.0.0.1"
        ))
    }
}
