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
    /// Access token required on every request (pages through a login page and a session cookie,
    /// the API through `Authorization: Bearer`); required off loopback. Prefer --token-file or
    /// CGGM_TOKEN: a command-line argument is visible to every user of the machine (`ps`).
    #[arg(long, env = "CGGM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the access token (its first line); the safe way to pass it.
    #[arg(long, env = "CGGM_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Host names the server answers to besides loopback names (DNS rebinding protection), e.g.
    /// the machine's name when it serves the network. Separate several with ',' in the variable.
    #[arg(
        long = "allowed-host",
        env = "CGGM_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
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
    /// The DICOM converter (installed by scripts/setup-dicom.sh).
    #[arg(long, env = "CGGM_DCM2NIIX", default_value = "dcm2niix")]
    pub dcm2niix: PathBuf,
    #[command(flatten)]
    pub executor: crate::executor::ExecutorArgs,
    #[command(flatten)]
    pub tracking: crate::tracking::TrackingArgs,
    #[command(flatten)]
    pub pacs: crate::pacs::PacsArgs,
    /// A client must send a request's headers within this many seconds, or its connection is
    /// closed (a "slowloris" holding connections open by sending headers a byte at a time).
    #[arg(long, env = "CGGM_HEADER_TIMEOUT_SECS", default_value_t = 20.0)]
    pub header_timeout_secs: f64,
    /// Delete uploaded studies and finished predictions (with their files) older than this many
    /// days, checked every hour. Unset: nothing is deleted automatically.
    #[arg(long, env = "CGGM_RETENTION_DAYS")]
    pub retention_days: Option<f64>,
    /// How long a browser session opened on the login page stays valid, in hours.
    #[arg(long, env = "CGGM_SESSION_HOURS", default_value_t = 12.0)]
    pub session_hours: f64,
    /// Mark the session cookie `Secure` (only sent over HTTPS): set it when a TLS reverse proxy
    /// serves the application.
    #[arg(long, env = "CGGM_SECURE_COOKIE")]
    pub secure_cookie: bool,
    /// With --retention-days: finished training runs (checkpoints, logs) older than the period go
    /// too. Off by default: runs are kept.
    #[arg(long, env = "CGGM_RETENTION_INCLUDE_RUNS")]
    pub retention_include_runs: bool,
    /// Open connections at once; further clients wait in the kernel's backlog.
    #[arg(long, env = "CGGM_MAX_CONNECTIONS", default_value_t = crate::limits::MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Requests sending a body (uploads, JSON) at once; past it, 503 at once, so that stalled
    /// uploads cannot take every connection.
    #[arg(long, env = "CGGM_MAX_BODY_REQUESTS", default_value_t = crate::limits::MAX_CONNECTIONS / 2)]
    pub max_body_requests: usize,
    /// A request body (any part of it: text fields, files, JSON) that sends nothing for this many
    /// seconds is abandoned with 408 and its connection closed.
    #[arg(long, env = "CGGM_BODY_IDLE_TIMEOUT_SECS", default_value_t = crate::limits::BODY_IDLE_TIMEOUT.as_secs_f64())]
    pub body_idle_timeout_secs: f64,
    /// Jobs that may wait in the queue (running ones not counted); past it, new jobs get 503.
    #[arg(long, env = "CGGM_MAX_QUEUED_JOBS", default_value_t = 100)]
    pub max_queued_jobs: usize,
    /// Live event streams (SSE) served at once in all; past it, 503.
    #[arg(long, env = "CGGM_MAX_STREAMS", default_value_t = crate::limits::MAX_CONNECTIONS / 2)]
    pub max_streams: usize,
    /// Live event streams of one job at once; past it, 429.
    #[arg(long, env = "CGGM_MAX_STREAMS_PER_JOB", default_value_t = 64)]
    pub max_streams_per_job: usize,
    /// A job's log is moved to `job-N.log.1` past this many MiB and starts again (one older part
    /// kept).
    #[arg(long, env = "CGGM_MAX_LOG_MB", default_value_t = 64)]
    pub max_log_mb: u64,
}

impl ServeArgs {
    /// The resource bounds these flags ask for.
    pub fn bounds(&self) -> crate::limits::Bounds {
        crate::limits::Bounds {
            max_connections: self.max_connections.max(1),
            max_body_requests: self.max_body_requests.max(1),
            body_idle_timeout: std::time::Duration::from_secs_f64(
                self.body_idle_timeout_secs.clamp(0.1, 86_400.0),
            ),
            max_queued_jobs: self.max_queued_jobs,
            max_streams: self.max_streams.max(1),
            max_streams_per_job: self.max_streams_per_job.max(1),
            max_log_bytes: self.max_log_mb.max(1).saturating_mul(1024 * 1024),
        }
    }
}

/// Everything the application needs at run time, resolved from [`ServeArgs`].
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub token: Option<String>,
    /// The server listens on a loopback address only: `Host` must then be a loopback name (or in
    /// `allowed_hosts`).
    pub loopback_only: bool,
    pub allowed_hosts: Vec<String>,
    pub max_jobs: usize,
    pub max_upload_bytes: usize,
    pub dataset_roots: Vec<PathBuf>,
    pub web_dir: PathBuf,
    /// The `cggm` binary that runs jobs (the server's own executable in production).
    pub cggm_bin: PathBuf,
    /// DICOM import: the converter and its limits.
    pub dicom: crate::dicom::DicomSettings,
    /// Where jobs run (local child processes by default, or Slurm).
    pub executor: crate::executor::Executor,
    /// The PACS behind the PACS page (`--pacs`), if any.
    pub pacs: Option<crate::pacs::PacsSettings>,
    /// How long a login session is valid (`--session-hours`).
    pub session_lifetime: std::time::Duration,
    /// `--secure-cookie`.
    pub secure_cookie: bool,
    /// Connections, bodies, queue and live streams: how many at once, how long a body may stall.
    pub bounds: crate::limits::Bounds,
    /// CUDA devices on this machine, as the trainer (libtorch) counted them when the binary
    /// started: the server links no libtorch. The vocabulary offers them; local jobs are checked
    /// against them.
    pub cuda_devices: usize,
    /// Variables every job gets: where training runs are logged (`--mlflow`, `--tensorboard`).
    pub job_env: Vec<(String, String)>,
}

impl Config {
    /// A configuration for `data_dir` with the defaults; used by tests.
    pub fn new(data_dir: PathBuf, cggm_bin: PathBuf) -> Self {
        Self {
            data_dir,
            token: None,
            loopback_only: true,
            allowed_hosts: Vec::new(),
            max_jobs: 1,
            max_upload_bytes: 1024 * 1024 * 1024,
            dataset_roots: Vec::new(),
            web_dir: default_web_dir(),
            cggm_bin,
            dicom: Default::default(),
            executor: crate::executor::Executor::Local,
            pacs: None,
            session_lifetime: std::time::Duration::from_secs(12 * 3600),
            secure_cookie: false,
            bounds: Default::default(),
            cuda_devices: 0,
            job_env: Vec::new(),
        }
    }
}

/// The web assets of the checkout this binary was built from (the release binary runs from it).
pub fn default_web_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../web"))
}

/// Why `cggm serve` refuses to start with its access settings.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(
        "refusing to listen on {0} without a token: anyone on the network could start jobs. \
         Set --token or CGGM_TOKEN, or bind to 127.0.0.1"
    )]
    OpenBind(SocketAddr),
    #[error(
        "cannot read the token file {}: {error}. Create it with the token on its first \
         line (and `chmod 600` it)",
        path.display()
    )]
    TokenFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{given_by} gives a token of {chars} characters (after trimming); a token needs at least \
         {MIN_TOKEN_CHARS}. Generate one with `openssl rand -hex 24`, or unset it to run without \
         access control on loopback"
    )]
    ShortToken { given_by: String, chars: usize },
}

/// Refuses a non-loopback bind address without a token.
pub fn check_bind(bind: &SocketAddr, token: Option<&str>) -> Result<(), AccessError> {
    if bind.ip().is_loopback() || token.is_some_and(|t| !t.is_empty()) {
        Ok(())
    } else {
        Err(AccessError::OpenBind(*bind))
    }
}

/// The shortest access token accepted (after trimming): a guessable token is no access control.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The access token: from --token-file (its first line), else --token / CGGM_TOKEN. `None` only
/// when no token was asked for: a token that was asked for but is empty, whitespace or shorter
/// than [`MIN_TOKEN_CHARS`] refuses the start (failing open would serve patient data to anyone).
pub fn resolve_token(args: &ServeArgs) -> Result<Option<String>, AccessError> {
    let (token, source) = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| AccessError::TokenFile {
                path: path.clone(),
                error,
            })?;
            let first = text.lines().next().unwrap_or("").trim().to_string();
            (first, format!("the token file {}", path.display()))
        }
        None => match &args.token {
            Some(token) => (token.trim().to_string(), "--token / CGGM_TOKEN".to_string()),
            None => return Ok(None),
        },
    };
    let chars = token.chars().count();
    if chars < MIN_TOKEN_CHARS {
        return Err(AccessError::ShortToken {
            given_by: source,
            chars,
        });
    }
    Ok(Some(token))
}
