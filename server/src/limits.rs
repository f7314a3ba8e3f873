//! Resource limits of the HTTP layer: body sizes per kind of route (uploads large, everything else
//! small), a request timeout that spares genuine slow uploads (they have an idle timeout instead),
//! and a cap on open connections.

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

/// An upload may pause this long between two chunks before it is abandoned (the total time is not
/// limited: a large study over a slow link takes what it takes).
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Connections served at once; further clients wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 512;

fn is_upload(request: &Request) -> bool {
    request.method() == Method::POST
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
