//! `cggm bench`: measured numbers for the README. Timings are ratios against a baseline run in the
//! same process, interleaved, because the machines are shared and noisy. One module per benchmark
//! (train.rs, infer.rs, parity.rs; the loader's is loader_bench.rs), the random inputs they share
//! (inputs.rs), the PyTorch reference child (reference.rs), FLOP utilisation (utilisation.rs), the
//! report types they share (report.rs) and the process measurements here.

mod infer;
mod inputs;
mod parity;
mod reference;
mod report;
mod train;
mod utilisation;

use crate::loader_bench::{bench_loader, LoaderBenchArgs};
use anyhow::Result;
use cggm_core::model_config::EncoderLayout;
use tch::Device;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Training-slice loader throughput and peak memory.
    Loader(LoaderBenchArgs),
    /// Training step time of joint (with and without per-modality probes) and CGGM.
    Train(train::TrainBenchArgs),
    /// Inference time of one whole volume.
    Infer(infer::InferBenchArgs),
    /// First-step loss on the CPU and on --device from the same weights and batch (a CUDA check).
    Parity(parity::ParityArgs),
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Loader(args) => bench_loader(args),
        BenchCommand::Train(args) => train::bench_train(args),
        BenchCommand::Infer(args) => infer::bench_infer(args),
        BenchCommand::Parity(args) => parity::bench_parity(args),
    }
}

/// CPU seconds (user + system) this process has used: less sensitive than wall time to other
/// processes on a shared machine.
pub(super) fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the state field.
    (ticks(11) + ticks(12)) / 100.0
}

/// Waits for the device's queued work (CUDA), so that a timer read after it covers that work.
pub(super) fn sync(device: Device) {
    if let Device::Cuda(n) = device {
        tch::Cuda::synchronize(n as i64);
    }
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub(super) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// GPU memory this process holds (the caching allocator's high-water mark), from nvidia-smi.
pub(super) fn gpu_memory_bytes() -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let pid = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut f = l.split(',').map(str::trim);
        (f.next()? == pid).then_some(())?;
        f.next()?.parse::<u64>().ok().map(|mib| mib << 20)
    })
}

/// The median of `values` (NaN when empty; the mean of the middle two when even).
pub(super) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `--encoders auto|grouped|separate` of `bench train` and `bench infer`.
fn encoder_layout(text: &str) -> Result<EncoderLayout> {
    serde_json::from_value(serde_json::json!(text))
        .map_err(|_| anyhow::anyhow!("--encoders {text}: use auto, grouped or separate"))
}
