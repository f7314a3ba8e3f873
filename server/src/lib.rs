//! CGGM Studio web application: the axum server behind `cggm serve` — pages, JSON API, job runner
//! (training and inference as child processes), SQLite storage and the slice viewer.

pub mod body_stall;
pub mod config;
pub mod db;
pub mod dicom;
pub mod dicom_seg;
pub mod error;
pub mod executor;
pub mod feature_datasets;
pub mod fine_tune;
pub mod inspect;
pub mod job_store;
pub mod jobs;
pub mod labels;
pub mod limits;
pub mod pacs;
pub mod provenance;
pub mod retention;
pub mod routes;
pub mod run_labels;
pub mod security;
pub mod templates;
pub mod tracking;
pub mod volume;

use axum::middleware;
use axum::Router;
use config::Config;
use jobs::JobRunner;
use sqlx::SqlitePool;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tower_http::compression::predicate::{NotForContentType, Predicate};
use tower_http::compression::{CompressionLayer, DefaultPredicate};
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

pub use config::ServeArgs;

pub use cggm_core::process::{exit_with_parent, PARENT_PIPE_ENV};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: SqlitePool,
    pub runner: JobRunner,
    pub volumes: Arc<volume::VolumeCache>,
    pub sessions: Arc<security::Sessions>,
    /// Requests sending a body and live streams open now, against `config.bounds`.
    pub gates: Arc<limits::Gates>,
    /// Datasets whose full validation runs in the background.
    validating: Arc<std::sync::Mutex<std::collections::HashSet<i64>>>,
}

impl AppState {
    /// Creates the data directory layout, opens and migrates the database, and takes over the
    /// jobs a previous server left behind.
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        for sub in ["datasets", "studies", "runs", "predictions", "logs", "tmp"] {
            std::fs::create_dir_all(config.data_dir.join(sub))?;
        }
        make_private(&config.data_dir)?;
        // Partial uploads a previous process left behind (it stopped mid-upload).
        for entry in std::fs::read_dir(config.data_dir.join("tmp"))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with("upload-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let config = Config {
            data_dir: config.data_dir.canonicalize()?,
            ..config
        };
        let pool = db::connect(&config.data_dir).await?;
        let runner = JobRunner::new(
            pool.clone(),
            config.cggm_bin.clone(),
            config.data_dir.clone(),
            config.max_jobs,
            config.executor.clone(),
            config.bounds.max_log_bytes,
            config.job_env.clone(),
        );
        runner.recover().await?;
        Ok(Self {
            gates: Arc::new(limits::Gates::new(&config.bounds)),
            config: Arc::new(config),
            pool,
            runner,
            volumes: Arc::default(),
            validating: Arc::default(),
            sessions: Arc::default(),
        })
    }

    /// Marks a dataset's full validation as running; false when one already runs.
    pub fn start_validating(&self, dataset_id: i64) -> bool {
        self.validating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dataset_id)
    }

    pub fn stop_validating(&self, dataset_id: i64) {
        self.validating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&dataset_id);
    }

    pub fn is_validating(&self, dataset_id: i64) -> bool {
        self.validating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&dataset_id)
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// A fresh folder for a partial upload, on the same file system as its final place so that
    /// the final `rename` is atomic.
    pub fn temp_dir(&self) -> std::io::Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("upload-")
            .tempdir_in(self.data_dir().join("tmp"))
    }
}

/// The whole application: pages, `/api`, static assets, and the layers: security first (host,
/// origin, token, headers), then the body limits and the request timeout.
pub fn app(state: AppState) -> Router {
    let web = state.config.web_dir.clone();
    Router::new()
        .merge(routes::pages::router())
        .merge(routes::comparisons::page_router())
        .merge(routes::viewer_pages::router())
        .nest("/api", routes::api_router())
        .nest(routes::monailabel::PREFIX, routes::monailabel::router())
        .merge(security::router())
        .nest_service("/static", ServeDir::new(web.join("static")))
        .nest_service(
            "/vendor/uplot",
            ServeDir::new(web.join("node_modules/uplot/dist")),
        )
        .nest_service(
            "/vendor/niivue",
            ServeDir::new(web.join("node_modules/@niivue/niivue/dist")),
        )
        // Inside the body limits: their own answers are JSON already.
        .layer(middleware::from_fn(limits::json_errors))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::limit_bodies,
        ))
        // Stored .nii.gz files (the viewer's volumes, downloads) are gzip already.
        .layer(CompressionLayer::new().compress_when(
            DefaultPredicate::new().and(NotForContentType::const_new("application/gzip")),
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            security::guard,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// `cggm serve`: resolves the settings, starts the application and serves until Ctrl-C.
///
/// `cuda_devices`: the CUDA devices the trainer sees on this machine (the `cggm` binary asks it).
pub async fn serve(args: ServeArgs, cuda_devices: usize) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let token = config::resolve_token(&args)?;
    config::check_bind(&args.bind, token.as_deref())?;
    if args.token.is_some() && args.token_file.is_none() && std::env::var_os("CGGM_TOKEN").is_none()
    {
        tracing::warn!("--token on the command line is visible to every user of this machine (ps): prefer --token-file or CGGM_TOKEN");
    }
    let cggm_bin = std::env::current_exe()?;
    // Held for the server's life; taken before the executor checks its folders.
    let _data_dir_lock = lock_data_dir(&args.data_dir)?;
    let config = serve_config(&args, token, cggm_bin, cuda_devices)?;
    let retention =
        retention::RetentionPolicy::from_args(args.retention_days, args.retention_include_runs)?;
    log_setup(&config);
    let state = AppState::new(config).await?;
    if let Some(policy) = retention {
        retention::spawn_periodic(state.clone(), policy, Duration::from_secs(3600));
    }
    if !args.no_demo {
        routes::datasets::ensure_demo_dataset(state.clone()).await?;
    }
    listen(state, &args, started).await
}

/// The server's configuration from `cggm serve`'s flags (the executor checks its folders here).
fn serve_config(
    args: &ServeArgs,
    token: Option<String>,
    cggm_bin: PathBuf,
    cuda_devices: usize,
) -> anyhow::Result<Config> {
    let executor = executor::Executor::from_args(&args.executor, &args.data_dir, &cggm_bin)?;
    Ok(Config {
        data_dir: args.data_dir.clone(),
        token,
        loopback_only: args.bind.ip().is_loopback(),
        allowed_hosts: args.allowed_hosts.clone(),
        max_jobs: args.max_jobs,
        max_upload_bytes: args.max_upload_mb.saturating_mul(1024 * 1024),
        dataset_roots: args.dataset_roots.clone(),
        web_dir: args.web_dir.clone().unwrap_or_else(config::default_web_dir),
        executor,
        pacs: pacs::PacsSettings::from_args(&args.pacs)?,
        cggm_bin,
        dicom: dicom::DicomSettings::with_converter(args.dcm2niix.clone()),
        session_lifetime: session_lifetime(args.session_hours)?,
        secure_cookie: args.secure_cookie,
        bounds: args.bounds(),
        cuda_devices,
        job_env: args.tracking.job_env(),
    })
}

/// Warnings for what is missing (dcm2niix, the web libraries) and what the server talks to.
fn log_setup(config: &Config) {
    if let Some(warning) = routes::dicom::converter_warning(&config.dicom) {
        tracing::warn!("{warning}");
    }
    if !config.web_dir.join("node_modules/uplot/dist").is_dir() {
        tracing::warn!(web_dir = %config.web_dir.display(), "uPlot not found: run scripts/setup-web.sh (charts will be missing)");
    }
    if !config
        .web_dir
        .join("node_modules/@niivue/niivue/dist")
        .is_dir()
    {
        tracing::warn!(web_dir = %config.web_dir.display(), "NiiVue not found: run scripts/setup-web.sh (the viewer falls back to server-rendered slices)");
    }
    if let Some(pacs) = &config.pacs {
        tracing::info!(pacs = %pacs.root, "PACS page and import through DICOMweb");
    }
    if let executor::Executor::Slurm(slurm) = &config.executor {
        tracing::info!(shared_dir = %slurm.shared_dir.display(), "jobs run on Slurm");
    }
}

/// Binds `args.bind` and serves until a shutdown signal.
async fn listen(
    state: AppState,
    args: &ServeArgs,
    started: std::time::Instant,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    let address = listener.local_addr()?;
    tracing::info!(
        "CGGM Studio listening on http://{address} (data in {}, ready in {} ms)",
        state.data_dir().display(),
        started.elapsed().as_millis()
    );
    eprintln!(
        "CGGM Studio: open http://{address}/ (ready in {} ms)",
        started.elapsed().as_millis()
    );
    let listener = limits::CappedListener::new(listener, state.config.bounds.max_connections);
    let header_timeout = Duration::from_secs_f64(args.header_timeout_secs.max(0.1));
    // Open live-event streams would hold a graceful shutdown forever: requests get 3 s, then
    // everything stops. Dropping the runtime kills the job processes (`kill_on_drop`).
    let shutdown = async move {
        shutdown_signal().await;
        eprintln!("CGGM Studio: stopping (running jobs are stopped and can be resumed later)");
    };
    limits::serve_with_timeouts(
        listener,
        app(state),
        header_timeout,
        shutdown,
        Duration::from_secs(3),
    )
    .await?;
    Ok(())
}

fn session_lifetime(hours: f64) -> anyhow::Result<Duration> {
    if !(hours.is_finite() && hours > 0.0 && hours <= 24.0 * 366.0) {
        anyhow::bail!("--session-hours must be more than 0 and at most a year (8784), got {hours}");
    }
    Ok(Duration::from_secs_f64(hours * 3600.0))
}

/// Takes the data directory for this process: a second server on the same folder would run a
/// second trainer in a run directory and delete the first one's partial uploads. The lock is the
/// kernel's (released when the process ends, however it ends), on `<data dir>/.lock`.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::Write;
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(".lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            anyhow::bail!(
                "another CGGM Studio server (pid {}) uses the data directory {}: stop it, or give \
                 this one another --data-dir",
                holder.trim(),
                data_dir.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

/// Ctrl-C or SIGTERM (what `kill`, systemd and container runtimes send): both stop the server the
/// same way, its jobs with it.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

/// The data directory, its folders and the database are the owner's alone (0700 / 0600), also
/// when an older version created them readable by everyone; new files follow the process's umask
/// (set in `main`).
fn make_private(data_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let private = |path: &Path, mode: u32| -> std::io::Result<()> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_symlink() => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            }
            _ => Ok(()),
        }
    };
    private(data_dir, 0o700)?;
    for sub in ["datasets", "studies", "runs", "predictions", "logs", "tmp"] {
        private(&data_dir.join(sub), 0o700)?;
    }
    for file in ["cggm.sqlite", "cggm.sqlite-wal", "cggm.sqlite-shm", ".lock"] {
        private(&data_dir.join(file), 0o600)?;
    }
    Ok(())
}

/// Canonical form of `path` if it lies inside one of `roots` (after resolving `..` and links).
pub fn contained_path(path: &Path, roots: &[PathBuf]) -> Option<PathBuf> {
    let resolved = path.canonicalize().ok()?;
    roots
        .iter()
        .filter_map(|r| r.canonicalize().ok())
        .any(|root| resolved.starts_with(&root))
        .then_some(resolved)
}
