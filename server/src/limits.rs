//! Resource limits of the HTTP layer: body sizes per kind of route (uploads large, everything else
//! small), a request timeout that spares genuine slow uploads, an idle timeout on every part of
//! every request body, caps on open connections, on requests sending a body at once and on live
//! event streams, and the text limits of multipart fields and names ([`Bounds`] holds the
//! configurable ones, with their `cggm serve` flags).

use crate::body_stall::BodyStalled;
use crate::error::Error;
use crate::AppState;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, ServiceExt};

/// Largest body of a request that is not an upload (JSON, forms): a run request or a dataset
/// registration is a few hundred bytes.
pub const SMALL_BODY_BYTES: usize = 64 * 1024;

/// How long a request that is not an upload may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// A request body may pause this long between two chunks before it is abandoned (the total time of
/// an upload is not limited: a large study over a slow link takes what it takes).
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Connections served at once; further clients wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 512;

/// Longest name of a study, a comparison or a dataset, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// Largest multipart text field (other than a name), in bytes; read incrementally and refused
/// once over, never buffered whole.
pub const MAX_TEXT_FIELD_BYTES: usize = 64 * 1024;

/// Most parts of one NIfTI upload (a case is at most five files and a name; 64 leaves room for
/// a few cases' worth). Every file part is a temporary file.
pub const MAX_UPLOAD_PARTS: usize = 64;

/// Most parts of one DICOM import, whose series may come as a folder's files (four series of up
/// to 1,024 slices).
pub const MAX_DICOM_PARTS: usize = 4096;

/// The configurable resource bounds of `cggm serve` (each has a flag; the defaults here).
#[derive(Clone, Debug)]
pub struct Bounds {
    /// Open connections at once (`--max-connections`).
    pub max_connections: usize,
    /// Requests sending a body at once (`--max-body-requests`): a stalled body holds its
    /// connection until [`Bounds::body_idle_timeout`]; past this many, further ones get 503 at
    /// once and the connections stay free for everything else.
    pub max_body_requests: usize,
    /// Longest pause inside any request body (`--body-idle-timeout-secs`): headers, text fields,
    /// file fields and JSON alike.
    pub body_idle_timeout: Duration,
    /// Jobs waiting in the queue at most (`--max-queued-jobs`); running ones do not count.
    pub max_queued_jobs: usize,
    /// Live event streams (SSE) at once in all (`--max-streams`).
    pub max_streams: usize,
    /// Live event streams of one job at once (`--max-streams-per-job`).
    pub max_streams_per_job: usize,
    /// A job's log is rotated past this size, keeping one older part (`--max-log-mb`).
    pub max_log_bytes: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            max_body_requests: MAX_CONNECTIONS / 2,
            body_idle_timeout: BODY_IDLE_TIMEOUT,
            max_queued_jobs: 100,
            max_streams: MAX_CONNECTIONS / 2,
            max_streams_per_job: 64,
            max_log_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The counters behind [`Bounds`]: requests sending a body, and live streams per job.
pub struct Gates {
    bodies: Arc<Semaphore>,
    streams: std::sync::Mutex<StreamCounts>,
    max_streams: usize,
    max_streams_per_job: usize,
}

#[derive(Default)]
struct StreamCounts {
    total: usize,
    per_job: std::collections::HashMap<i64, usize>,
}

impl Gates {
    pub fn new(bounds: &Bounds) -> Self {
        Self {
            bodies: Arc::new(Semaphore::new(bounds.max_body_requests.max(1))),
            streams: Default::default(),
            max_streams: bounds.max_streams.max(1),
            max_streams_per_job: bounds.max_streams_per_job.max(1),
        }
    }

    /// A slot for one live stream of `job`, held until the permit is dropped (the stream ends or
    /// its client goes away).
    pub fn open_stream(self: &Arc<Self>, job: i64) -> Result<StreamPermit, Error> {
        let mut counts = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max_streams {
            return Err(Error::Unavailable(format!(
                "the server already sends {} live event streams, its limit (--max-streams): close \
                 some pages, or follow the job with GET /api/jobs/{job}/events",
                counts.total
            )));
        }
        let of_job = counts.per_job.entry(job).or_default();
        if *of_job >= self.max_streams_per_job {
            return Err(Error::TooManyRequests(format!(
                "job {job} already has {} live viewers, the limit per job \
                 (--max-streams-per-job): close some of its pages, or poll GET /api/jobs/{job}/events",
                *of_job
            )));
        }
        *of_job += 1;
        counts.total += 1;
        Ok(StreamPermit {
            gates: self.clone(),
            job,
        })
    }

    /// Live streams open now (all jobs); for tests and diagnostics.
    pub fn open_streams(&self) -> usize {
        self.streams.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// One open live stream; gives its slot back when dropped.
pub struct StreamPermit {
    gates: Arc<Gates>,
    job: i64,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut counts = self.gates.streams.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_job.get_mut(&self.job) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_job.remove(&self.job);
            }
        }
    }
}

/// `body`, failing with [`BodyStalled`] when a read waits longer than `idle` for the next chunk
/// (a client that stops sending inside a text field holds its connection only this long);
/// `stalled` is set when that happens, whatever the extractor then makes of the error. After each
/// chunk the reader is told "not ready" once (and woken at once): the multipart parser reads on
/// while data is ready, so without that pause a fast client's 300 MiB text field would be buffered
/// whole before the field's own limit is seen.
fn idle_limited(
    body: axum::body::Body,
    idle: Duration,
    stalled: Arc<std::sync::atomic::AtomicBool>,
) -> axum::body::Body {
    use futures_util::StreamExt;
    let chunks = body.into_data_stream();
    axum::body::Body::from_stream(futures_util::stream::unfold(
        Some((chunks, false)),
        move |state| {
            let stalled = stalled.clone();
            async move {
                let (mut chunks, pause) = state?;
                if pause {
                    tokio::task::yield_now().await;
                }
                match tokio::time::timeout(idle, chunks.next()).await {
                    Ok(Some(chunk)) => Some((chunk, Some((chunks, true)))),
                    Ok(None) => None,
                    Err(_) => {
                        stalled.store(true, std::sync::atomic::Ordering::SeqCst);
                        Some((Err(axum::Error::new(BodyStalled(idle))), None))
                    }
                }
            }
        },
    ))
}

/// Whether the request carries a body (one announced, chunked, or in-process).
fn has_body(request: &Request) -> bool {
    use axum::body::HttpBody;
    !request.body().is_end_stream()
}

/// A name as given (trimmed), refused when longer than [`MAX_NAME_CHARS`]: `what` says whose.
pub fn check_name(what: &str, name: &str) -> Result<String, Error> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(Error::Unprocessable(format!(
            "{what} is {chars} characters long: use at most {MAX_NAME_CHARS} characters"
        )));
    }
    Ok(name.to_string())
}

/// Reads a multipart text field chunk by chunk, refusing it (413) once it passes `max_bytes`:
/// nothing larger than the limit is ever held.
pub async fn read_text_field(
    field: &mut axum::extract::multipart::Field<'_>,
    max_bytes: usize,
) -> Result<String, Error> {
    let name = field.name().unwrap_or_default().to_string();
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await? {
        if bytes.len() + chunk.len() > max_bytes {
            return Err(Error::PayloadTooLarge(format!(
                "text field {name:?} is over {max_bytes} bytes; send at most that much"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes)
        .map_err(|_| Error::BadRequest(format!("text field {name:?} is not UTF-8 text")))
}

fn is_upload(request: &Request) -> bool {
    // PUT: MONAI Label's clients upload images and labels with it.
    matches!(*request.method(), Method::POST | Method::PUT)
        && request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("multipart/form-data"))
}

/// A body announced larger than the route allows is refused before it is read, with a message
/// that says which limit applies; uploads stream under the configured upload limit (enforced
/// while reading as well), everything else must fit [`SMALL_BODY_BYTES`].
pub async fn limit_bodies(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let upload = is_upload(&request);
    // Held while the request runs: a stalled body keeps a connection only while there are slots.
    let _body_slot = if has_body(&request) {
        match state.gates.bodies.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let mut response = Error::Unavailable(format!(
                    "the server already receives {} request bodies at once, its limit \
                     (--max-body-requests); send it again in a few seconds",
                    state.config.bounds.max_body_requests
                ))
                .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
                return response;
            }
        }
    } else {
        None
    };
    let idle = state.config.bounds.body_idle_timeout;
    let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let request = request.map(|body| idle_limited(body, idle, stalled.clone()));
    let response = limit_body_size(&state, request, next, upload).await;
    // Whichever extractor read the body (JSON, form, multipart), a stall is answered as one.
    if stalled.load(std::sync::atomic::Ordering::SeqCst) && !response.status().is_success() {
        return Error::RequestTimeout(BodyStalled(idle).to_string()).into_response();
    }
    response
}

async fn limit_body_size(state: &AppState, request: Request, next: Next, upload: bool) -> Response {
    let limit = if upload {
        state.config.max_upload_bytes
    } else {
        SMALL_BODY_BYTES
    };
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        let message = if upload {
            "upload is larger than the server's limit (CGGM_MAX_UPLOAD_MB); compress the files \
             (.nii.gz) or raise the limit"
                .to_string()
        } else {
            format!("request body over {SMALL_BODY_BYTES} bytes; only uploads may be larger")
        };
        return Error::PayloadTooLarge(message).into_response();
    }
    // Extractors (Json, Form, Multipart) read the body under this limit, also when no length was
    // announced (chunked).
    let limited = DefaultBodyLimit::max(limit).layer(next).oneshot(request);
    if upload {
        return limited.await.unwrap_or_else(|never| match never {});
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, limited).await {
        Ok(response) => response.unwrap_or_else(|never| match never {}),
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            axum::Json(serde_json::json!({ "error": "the request took too long" })),
        )
            .into_response(),
    }
}

/// Rejections written by axum's extractors (a bad JSON body, path or query) are plain text; every
/// client-facing error of the API is `{"error": "..."}`, so they are rewritten into that form.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !(plain && (status.is_client_error() || status.is_server_error())) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, SMALL_BODY_BYTES).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let mut json = (status, axum::Json(serde_json::json!({ "error": text }))).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}

/// A TCP listener that serves at most `max` connections at once.
pub struct CappedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
}

impl CappedListener {
    pub fn new(inner: TcpListener, max: usize) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max.max(1))),
        }
    }
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the connection semaphore is never closed");
        let (stream, address) = axum::serve::Listener::accept(&mut self.inner).await;
        (
            CappedStream {
                stream,
                _slot: permit,
            },
            address,
        )
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection holding one of the listener's slots until it closes.
pub struct CappedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for CappedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then gives open requests `grace` to end.
/// Each connection is HTTP/1.1 with a header-read timeout: a client that has not sent a request's
/// complete headers within `header_timeout` is disconnected (hyper's timer; `axum::serve` sets
/// none). Connections also count against the listener's cap while they are open.
pub async fn serve_with_timeouts(
    mut listener: CappedListener,
    app: axum::Router,
    header_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    use axum::serve::Listener;
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _address) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let io = hyper_util::rt::TokioIo::new(stream);
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(io, service)
                .with_upgrades();
            // A client that hangs up, times out or sends garbage ends only its own connection.
            let _ = connection.await;
        });
        // Forget connections that have ended (the set would otherwise grow for ever).
        while connections.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    Ok(())
}
