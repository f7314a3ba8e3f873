//! The running server's HTTP API as the CLI's client commands (`cggm study`, `cggm pacs`) use it.

use anyhow::{bail, Context};
use std::time::Duration;

/// The server's API over HTTP (reqwest's blocking client): the token from CGGM_TOKEN as a bearer
/// header on every request, and the `X-CGGM-Request: 1` header the server requires on changes.
pub(crate) struct Api {
    pub base: String,
    client: reqwest::blocking::Client,
}

impl Api {
    pub fn new(server: &str) -> anyhow::Result<Self> {
        let base = server.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            bail!(
                "--server {server}: give an http:// address (for a server behind a TLS proxy, its plain \
                 side, e.g. through an SSH tunnel)"
            );
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(token) = std::env::var("CGGM_TOKEN") {
            let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("CGGM_TOKEN holds characters a header cannot carry")?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let client = reqwest::blocking::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Self { base, client })
    }

    fn send(
        &self,
        request: reqwest::blocking::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<String> {
        let response = request
            .send()
            .with_context(|| format!("{what} on {}: is `cggm serve` running there?", self.base))?;
        let status = response.status();
        let text = response.text()?;
        if !status.is_success() {
            let value: serde_json::Value =
                serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text.clone()));
            let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
                " (set CGGM_TOKEN to the server's token)"
            } else {
                ""
            };
            bail!(
                "{what}: {status} {}{hint}",
                value["error"].as_str().unwrap_or(&text)
            );
        }
        Ok(text)
    }

    pub fn get_text(&self, path: &str) -> anyhow::Result<String> {
        self.send(
            self.client.get(format!("{}{path}", self.base)),
            &format!("GET {path}"),
        )
    }

    pub fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.get_text(path)?)?)
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let text = self.send(
            self.client
                .post(format!("{}{path}", self.base))
                .header("X-CGGM-Request", "1")
                .json(body),
            &format!("POST {path}"),
        )?;
        Ok(serde_json::from_str(&text)?)
    }
}
