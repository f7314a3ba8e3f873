//! `cggm study`: launches a method comparison (a "study": methods x seeds, optionally x a
//! rho/lambda grid) on a running `cggm serve` through its API, and with `--wait` prints the
//! aggregate when every run has finished. (The runs go through the server's executor: the local
//! queue, or Slurm when the server runs with `--executor slurm`.)

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::time::Duration;

#[derive(Clone, Debug, clap::Args)]
pub struct StudyArgs {
    /// The server's address.
    #[arg(long, env = "CGGM_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The dataset, by name or number (GET /api/datasets lists them).
    #[arg(long)]
    pub dataset: String,
    /// Methods to compare (joint first: paired differences are against joint).
    #[arg(long, value_delimiter = ',', default_value = "joint,cggm")]
    pub methods: Vec<String>,
    /// Seeds; each method runs once per seed.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub seeds: Vec<u64>,
    /// CGGM's rho values to cross with the CGGM methods.
    #[arg(long, value_delimiter = ',')]
    pub rho: Vec<f64>,
    /// CGGM's lambda values to cross with the CGGM methods.
    #[arg(long, value_delimiter = ',')]
    pub lambda: Vec<f64>,
    #[arg(long)]
    pub preset: Option<String>,
    #[arg(long)]
    pub epochs: Option<u64>,
    #[arg(long)]
    pub steps_per_epoch: Option<u64>,
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    /// Wait until every run has finished, then print the aggregate as CSV.
    #[arg(long)]
    pub wait: bool,
}

/// One HTTP/1.1 request over a fresh connection (plain http; the token from CGGM_TOKEN).
fn http(base: &str, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, String)> {
    let authority = base
        .strip_prefix("http://")
        .context("--server must be an http:// address (put a TLS proxy's plain side here)")?
        .trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(authority)
        .with_context(|| format!("connecting to {base}: is `cggm serve` running there?"))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    if let Ok(token) = std::env::var("CGGM_TOKEN") {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or("");
    if method != "GET" {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\nX-CGGM-Request: 1\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        text = rest[size..].trim_start_matches("\r\n");
    }
    out
}

fn json(
    base: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let (status, text) = http(base, method, path, body.map(|b| b.to_string()).as_deref())?;
    let value: serde_json::Value =
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    if !(200..300).contains(&status) {
        bail!(
            "{method} {path}: {status} {}",
            value["error"].as_str().unwrap_or(&value.to_string())
        );
    }
    Ok(value)
}

pub fn run(args: StudyArgs) -> anyhow::Result<()> {
    let base = args.server.trim_end_matches('/').to_string();
    let dataset_id = match args.dataset.parse::<i64>() {
        Ok(id) => id,
        Err(_) => {
            let datasets = json(&base, "GET", "/api/datasets", None)?;
            datasets
                .as_array()
                .into_iter()
                .flatten()
                .find(|d| d["name"] == args.dataset.as_str())
                .and_then(|d| d["id"].as_i64())
                .with_context(|| {
                    format!(
                        "no dataset named {:?} on {base} (see its Datasets page)",
                        args.dataset
                    )
                })?
        }
    };
    let mut options = serde_json::Map::new();
    if let Some(p) = &args.preset {
        options.insert("preset".into(), p.clone().into());
    }
    if let Some(e) = args.epochs {
        options.insert("epochs".into(), e.into());
    }
    if let Some(s) = args.steps_per_epoch {
        options.insert("steps_per_epoch".into(), s.into());
    }
    if let Some(d) = &args.device {
        options.insert("device".into(), d.clone().into());
    }
    let made = json(
        &base,
        "POST",
        "/api/comparisons",
        Some(serde_json::json!({
            "name": args.name, "dataset_id": dataset_id, "methods": args.methods,
            "seeds": args.seeds, "rho": args.rho, "lambda": args.lambda, "options": options,
        })),
    )?;
    let id = made["id"]
        .as_i64()
        .context("the server gave no comparison id")?;
    println!(
        "study {id}: {} runs queued; aggregate at {base}/comparisons/{id}",
        made["jobs"].as_array().map_or(0, Vec::len)
    );
    if args.wait {
        loop {
            let aggregate = json(&base, "GET", &format!("/api/comparisons/{id}"), None)?;
            if aggregate["done"] == true {
                break;
            }
            std::thread::sleep(Duration::from_secs(5));
        }
        let (_, csv) = http(&base, "GET", &format!("/api/comparisons/{id}/csv"), None)?;
        print!("{csv}");
    }
    Ok(())
}
