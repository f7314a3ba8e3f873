//! What stands between the network (and every web page the user visits) and the patient data:
//! the `Host` allow-list (DNS rebinding), same-origin checks on every state-changing request
//! (cross-site request forgery, multipart and body-less POSTs included), authentication of every
//! route when a token is set (a session cookie from the login page, or a bearer header), and the
//! response headers that keep pages out of frames, content types unsniffed and patient data out of
//! caches.

use crate::error::Error;
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Name of the session cookie set by the login page.
pub const SESSION_COOKIE: &str = "cggm_session";

/// The header every state-changing request must carry (`X-CGGM-Request: 1`). The application's
/// one fetch helper sends it; a cross-site form, image or simple request cannot (a custom header
/// needs a CORS preflight, which this server never grants), so it is refused even by a browser
/// that sends no `Origin` or `Sec-Fetch-Site`.
pub const APP_REQUEST_HEADER: &str = "x-cggm-request";

/// Sessions opened through the login page (in memory: a restart logs everyone out), each valid
/// for `--session-hours` after sign-in or until `/logout`.
#[derive(Default)]
pub struct Sessions {
    ids: Mutex<HashMap<String, Instant>>,
    /// Held for [`FAILED_SIGN_IN_DELAY`] after every wrong token: guesses are answered one at a
    /// time, at most one a second, however many connections send them.
    failures: tokio::sync::Mutex<()>,
}

/// How long a wrong token (login form, bearer header or session cookie) waits for its answer.
pub const FAILED_SIGN_IN_DELAY: Duration = Duration::from_secs(1);

impl Sessions {
    fn open(&self) -> std::io::Result<String> {
        let id = random_hex(32)?;
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), Instant::now());
        Ok(id)
    }

    /// Whether `id` is an open session younger than `lifetime`; expired ones are forgotten.
    fn contains(&self, id: &str, lifetime: Duration) -> bool {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.retain(|_, opened| opened.elapsed() < lifetime);
        ids.keys()
            .any(|known| constant_time_eq(known.as_bytes(), id.as_bytes()))
    }

    fn close(&self, id: &str) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.retain(|known, _| !constant_time_eq(known.as_bytes(), id.as_bytes()));
    }

    async fn slow_down_failure(&self) {
        let _one_at_a_time = self.failures.lock().await;
        tokio::time::sleep(FAILED_SIGN_IN_DELAY).await;
    }
}

fn random_hex(bytes: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buffer)?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `/login`: the page that exchanges the token for a session cookie (only useful with a token).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", axum::routing::post(logout))
}

const LOGIN_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CGGM Studio — sign in</title>
<link rel="stylesheet" href="/static/style.css"></head>
<body><main><h1>CGGM Studio</h1>
<p>This server requires its access token (the one it was started with: <code>--token-file</code>,
<code>CGGM_TOKEN</code> or <code>--token</code>).</p>
<form method="post" action="/login">
<label>Token <input type="password" name="token" autocomplete="current-password" autofocus required></label>
<button type="submit">Sign in</button></form>
<p class="error">{message}</p></main></body></html>"#;

async fn login_page() -> Html<String> {
    Html(LOGIN_PAGE.replace("{message}", ""))
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(state): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    let Some(token) = state.config.token.as_deref() else {
        return Redirect::to("/").into_response();
    };
    if !constant_time_eq(form.token.as_bytes(), token.as_bytes()) {
        state.sessions.slow_down_failure().await;
        let page = LOGIN_PAGE.replace("{message}", "Wrong token: try again.");
        return (StatusCode::UNAUTHORIZED, Html(page)).into_response();
    }
    let id = match state.sessions.open() {
        Ok(id) => id,
        Err(e) => return Error::Internal(e.into()).into_response(),
    };
    let max_age = state.config.session_lifetime.as_secs();
    let cookie = format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{}",
        secure_attribute(&state)
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `; Secure` behind a TLS proxy (`--secure-cookie`): the browser then never sends the session
/// over plain HTTP.
fn secure_attribute(state: &AppState) -> &'static str {
    if state.config.secure_cookie {
        "; Secure"
    } else {
        ""
    }
}

/// The session cookies a request carries.
fn session_ids(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
}

/// `POST /logout`: ends the caller's session (the cookie no longer opens anything, also if it was
/// copied) and clears it in the browser.
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    for id in session_ids(&headers) {
        state.sessions.close(id);
    }
    let cookie = format!(
        "{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
        secure_attribute(&state)
    );
    let mut response = Redirect::to("/login").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Where the MONAI Label API is mounted: its clients (3D Slicer, OHIF) are not browsers, so
/// [`guard`] checks its routes differently.
pub const MONAILABEL_PREFIX: &str = "/monailabel";

/// Whether `path` is one of the MONAI Label API's routes.
pub fn is_monailabel(path: &str) -> bool {
    path.strip_prefix(MONAILABEL_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Every request passes here first: `Host`, then (for state-changing methods) the origin, then
/// the token; every response leaves with the security headers.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if let Err(message) = check_host(&state, headers) {
        return forbidden(message).with_headers();
    }
    let mutating = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    // MONAI Label's clients (3D Slicer, OHIF) cannot send `X-CGGM-Request`: their routes refuse
    // what a browser marks as coming from another site or origin instead, whatever the method.
    let monailabel = is_monailabel(request.uri().path());
    if mutating || monailabel {
        if let Err(message) = check_same_origin(&state, headers) {
            return forbidden(message).with_headers();
        }
        // The login and logout forms are the plain-HTML POSTs: they change nothing but the
        // caller's session.
        if !monailabel && !matches!(request.uri().path(), "/login" | "/logout") {
            if let Err(message) = check_app_header(headers) {
                return forbidden(message).with_headers();
            }
        }
    }
    if let Some(token) = state.config.token.as_deref() {
        let path = request.uri().path();
        let public = path == "/login" || path.starts_with("/static/") || path == "/api/health";
        if !public && !authenticated(&state, headers, token) {
            if presents_credentials(headers) {
                state.sessions.slow_down_failure().await;
            }
            let wants_page =
                request.method() == Method::GET && !path.starts_with("/api/") && !monailabel;
            let response = if wants_page {
                Redirect::to("/login").into_response()
            } else {
                Error::Unauthorized.into_response()
            };
            return Refusal(response).with_headers();
        }
    }
    let patient_data = is_patient_data(request.uri().path());
    let mut response = next.run(request).await;
    add_security_headers(response.headers_mut(), patient_data);
    response
}

/// A refused request, answered with the same security headers as any other.
struct Refusal(Response);

impl Refusal {
    fn with_headers(self) -> Response {
        let mut response = self.0;
        add_security_headers(response.headers_mut(), true);
        response
    }
}

/// Why the guard refuses a request (answered 403 with this message).
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(
        "host {host:?} is not served here (DNS rebinding protection): open the application \
         through http://127.0.0.1 or http://localhost, or start the server with \
         --allowed-host {name}"
    )]
    Host { host: String, name: String },
    #[error(
        "cross-site request refused (Sec-Fetch-Site: {0}): changes can only be made \
         from this application's own pages"
    )]
    CrossSite(String),
    #[error(
        "cross-origin request refused (Origin: {0}): changes can only be made from \
         this application's own pages"
    )]
    CrossOrigin(String),
    #[error(
        "the X-CGGM-Request header must be 1, got {0:?}: changes are accepted only from this \
         application's pages, or from scripts that send `X-CGGM-Request: 1`"
    )]
    AppHeaderValue(String),
    #[error(
        "missing the X-CGGM-Request header: changes are accepted only from this \
         application's pages (their requests carry it) or from scripts that send it \
         (curl -H 'X-CGGM-Request: 1' ...)"
    )]
    AppHeaderMissing,
}

fn forbidden(refused: Refused) -> Refusal {
    let body = axum::Json(serde_json::json!({ "error": refused.to_string() }));
    Refusal((StatusCode::FORBIDDEN, body).into_response())
}

/// The host part of a `Host` header or an origin's authority: `[::1]:8080` -> `[::1]`,
/// `localhost:8080` -> `localhost`.
fn host_name(authority: &str) -> &str {
    if authority.starts_with('[') {
        authority
            .find(']')
            .map_or(authority, |end| &authority[..=end])
    } else {
        authority.split(':').next().unwrap_or(authority)
    }
}

fn is_loopback_name(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Bound to loopback, only loopback names (and `--allowed-host` names) may appear in `Host`: a
/// page on `attacker.example` whose name was rebound to 127.0.0.1 sends its own name and is
/// refused. Bound elsewhere, `--allowed-host` (when given) lists the accepted names. A request
/// without `Host` (not from a browser) passes.
fn check_host(state: &AppState, headers: &HeaderMap) -> Result<(), Refused> {
    let Some(host) = headers.get(header::HOST) else {
        return Ok(());
    };
    let host = host.to_str().unwrap_or("");
    let name = host_name(host).to_ascii_lowercase();
    let config = &state.config;
    let listed = config
        .allowed_hosts
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(&name) || allowed.eq_ignore_ascii_case(host));
    let allowed = if config.loopback_only {
        listed || is_loopback_name(&name)
    } else {
        listed || config.allowed_hosts.is_empty()
    };
    if allowed {
        Ok(())
    } else {
        Err(Refused::Host {
            host: host.to_string(),
            name,
        })
    }
}

/// A state-changing request from a browser must come from this application's own pages:
/// `Sec-Fetch-Site` (when sent) must be `same-origin` or `none` (typed by the user), and `Origin`
/// (when sent) must name the `Host` the request went to, or an `--allowed-host` (a reverse proxy
/// may rewrite `Host`). Scripts and curl send neither and pass (they are not a browser another
/// site can steer).
fn check_same_origin(state: &AppState, headers: &HeaderMap) -> Result<(), Refused> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("");
        if !matches!(site, "same-origin" | "none") {
            return Err(Refused::CrossSite(site.to_string()));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("null");
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let listed = authority.is_some_and(|authority| {
            let name = host_name(authority);
            state
                .config
                .allowed_hosts
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(name))
        });
        let same = listed
            || match (authority, host) {
                (Some(authority), Some(host)) => authority.eq_ignore_ascii_case(host),
                // No Host to compare with: only a loopback origin is plausible.
                (Some(authority), None) => is_loopback_name(host_name(authority)),
                _ => false,
            };
        if !same {
            return Err(Refused::CrossOrigin(origin.to_string()));
        }
    }
    Ok(())
}

/// See [`APP_REQUEST_HEADER`].
fn check_app_header(headers: &HeaderMap) -> Result<(), Refused> {
    match headers.get(APP_REQUEST_HEADER).map(HeaderValue::as_bytes) {
        Some(b"1") => Ok(()),
        Some(other) => Err(Refused::AppHeaderValue(
            String::from_utf8_lossy(other).into_owned(),
        )),
        None => Err(Refused::AppHeaderMissing),
    }
}

fn authenticated(state: &AppState, headers: &HeaderMap, token: &str) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer.is_some_and(|b| constant_time_eq(b.as_bytes(), token.as_bytes())) {
        return true;
    }
    let lifetime = state.config.session_lifetime;
    session_ids(headers).any(|id| state.sessions.contains(id, lifetime))
}

/// A request that tried to sign in (a bearer token or a session cookie), as opposed to a first
/// visit that is sent to the login page.
fn presents_credentials(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION) || session_ids(headers).next().is_some()
}

/// Responses that carry (or describe) patient data: studies, predictions and their slices and
/// segmentations, datasets, jobs and their logs. All of `/api` and the pages, in short; only the
/// static assets may be cached.
fn is_patient_data(path: &str) -> bool {
    !(path.starts_with("/static/") || path.starts_with("/vendor/"))
}

/// The Content-Security-Policy of every response: scripts, styles and connections from this
/// server only, so that text from data that ever reached the page as markup could not run (no
/// inline script, handler or `style` attribute is allowed; the pages have none). The NiiVue
/// viewer needs `data:` images (its font and matcap textures are built in) and `blob:` images;
/// WebGL 2 needs no policy. Nothing may frame the pages, post forms elsewhere or rebase URLs.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; worker-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `data_route`: everything but the static assets: not cached, and not readable by another
/// site's page (no `<img>` of a patient's slice embedded elsewhere: Cross-Origin-Resource-Policy).
fn add_security_headers(headers: &mut HeaderMap, data_route: bool) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if data_route {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            "cross-origin-resource-policy",
            HeaderValue::from_static("same-origin"),
        );
    }
}

/// A file name safe inside `Content-Disposition: attachment; filename="..."`: letters, digits,
/// `-`, `_`, `.` kept, everything else (quotes, separators, control characters, non-ASCII)
/// replaced by `_`; never empty, never starting with a dot.
pub fn download_name(stem: &str, suffix: &str) -> String {
    let mut clean: String = stem
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    while clean.starts_with('.') {
        clean.replace_range(..1, "_");
    }
    if clean.is_empty() {
        clean.push_str("case");
    }
    format!("{clean}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monailabel_prefix_matches_whole_path_segments_only() {
        assert!(is_monailabel("/monailabel"));
        assert!(is_monailabel("/monailabel/info/"));
        assert!(!is_monailabel("/monailabelx/info/"));
        assert!(!is_monailabel("/api/monailabel/info/"));
    }

    #[test]
    fn host_names_drop_the_port_and_keep_ipv6_brackets() {
        assert_eq!(host_name("localhost:8080"), "localhost");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert!(is_loopback_name("127.0.0.2"));
        assert!(is_loopback_name("LOCALHOST"));
        assert!(!is_loopback_name("attacker.example"));
        assert!(!is_loopback_name("127.0.0.1.attacker.example"));
    }

    #[test]
    fn download_names_cannot_break_out_of_the_header() {
        assert_eq!(
            download_name("a\"; filename=evil.sh", "_seg.nii.gz"),
            "a___filename_evil.sh_seg.nii.gz"
        );
        assert_eq!(download_name("..", ".x"), "_..x");
        assert_eq!(download_name("", "_seg.nii.gz"), "case_seg.nii.gz");
        assert_eq!(download_name("Ünïcode\r\n", ""), "_n_code__");
    }
}
