//! The PyTorch reference (scripts/bench_torch.py) as a child process: `bench train
//! --against-torch` times its step, `bench infer --flops` has it count a forward pass's FLOPs.
//! Both hand it the run's configuration as JSON on stdin and read one JSON line back.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Python that runs the PyTorch reference: `--python`, else `$CGGM_PYTHON`, else python3.
pub fn python_with_torch(explicit: Option<&PathBuf>) -> PathBuf {
    explicit
        .cloned()
        .or_else(|| std::env::var_os("CGGM_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// scripts/bench_torch.py of the checkout this binary was built from.
pub fn script_of_the_build() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_torch.py")
}

/// How a run of the reference failed; each caller words it for its flag.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("{0}")]
    Start(std::io::Error),
    #[error("the reference exited with {0}")]
    Failed(std::process::ExitStatus),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("its output is not JSON: {0}")]
    Output(#[from] serde_json::Error),
}

/// Runs `python script args`, writes `config` to its stdin, and parses the last line of its
/// stdout (its stderr goes to ours).
pub fn run<T: serde::de::DeserializeOwned>(
    python: &Path,
    script: &Path,
    args: &[String],
    config: &str,
) -> Result<T, ReferenceError> {
    let mut child = Command::new(python)
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(ReferenceError::Start)?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(config.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(ReferenceError::Failed(out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(
        text.lines().last().unwrap_or_default(),
    )?)
}
