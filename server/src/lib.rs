//! CGGM Studio web application: the axum server behind `cggm serve` — pages, JSON API, job runner
//! (training and inference as child processes), SQLite storage and the slice viewer.

pub mod config;
pub mod db;
pub mod error;
pub mod feature_datasets;
pub mod inspect;
pub mod jobs;
pub mod routes;
pub mod templates;
pub mod volume;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use config::Config;
use jobs::JobRunner;
use sqlx::SqlitePool;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use config::ServeArgs;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: SqlitePool,
    pub runner: JobRunner,
    pub volumes: Arc<volume::VolumeCache>,
}

impl AppState {
    /// Creates the data directory layout, opens and migrates the database, and takes over the
    /// jobs a previous server left behind.
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        for sub in ["datasets", "studies", "runs", "predictions", "logs", "tmp"] {
            std::fs::create_dir_all(config.data_dir.join(sub))?;
        }
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
        );
        runner.recover().await?;
        Ok(Self {
            config: Arc::new(config),
            pool,
            runner,
            volumes: Arc::default(),
        })
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

/// The whole application: pages, `/api`, static assets, and the tower-http layers.
pub fn app(state: AppState) -> Router {
    let web = state.config.web_dir.clone();
    let max_body = state.config.max_upload_bytes;
    Router::new()
        .merge(routes::pages::router())
        .nest("/api", routes::api_router())
        .nest_service("/static", ServeDir::new(web.join("static")))
        .nest_service(
            "/vendor/uplot",
            ServeDir::new(web.join("node_modules/uplot/dist")),
        )
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CompressionLayer::new())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(600),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// With a token configured, every mutating request must carry `Authorization: Bearer <token>`.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    let Some(token) = state.config.token.as_deref() else {
        return next.run(request).await;
    };
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        next.run(request).await
    } else {
        error::Error::Unauthorized.into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `cggm serve`: resolves the settings, starts the application and serves until Ctrl-C.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    config::check_bind(&args.bind, args.token.as_deref()).map_err(anyhow::Error::msg)?;
    let cggm_bin = std::env::current_exe()?;
    let config = Config {
        data_dir: args.data_dir.clone(),
        token: args.token.clone().filter(|t| !t.is_empty()),
        max_jobs: args.max_jobs,
        max_upload_bytes: args.max_upload_mb.saturating_mul(1024 * 1024),
        dataset_roots: args.dataset_roots.clone(),
        web_dir: args.web_dir.clone().unwrap_or_else(config::default_web_dir),
        cggm_bin,
    };
    if !config.web_dir.join("node_modules/uplot/dist").is_dir() {
        tracing::warn!(web_dir = %config.web_dir.display(), "uPlot not found: run scripts/setup-web.sh (charts will be missing)");
    }
    let state = AppState::new(config).await?;
    if !args.no_demo {
        routes::datasets::ensure_demo_dataset(state.clone()).await?;
    }
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
    let stopping = Arc::new(tokio::sync::Notify::new());
    let signal = stopping.clone();
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("CGGM Studio: stopping (running jobs are stopped and can be resumed later)");
        signal.notify_waiters();
    });
    // Open live-event streams would hold a graceful shutdown forever: give requests a moment,
    // then stop. Dropping the runtime kills the job processes (`kill_on_drop`).
    tokio::select! {
        result = server => result?,
        _ = async {
            stopping.notified().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
        } => {}
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
