//! `cggm bench loader`: the data loader's throughput and peak memory on a dataset folder.

use anyhow::{bail, Context};
use cggm_trainer::data::{SamplerConfig, SliceLoader};
use std::path::PathBuf;
use std::time::Instant;

/// Measure the training slice loader: 2-D slices per second and peak memory, printed as JSON.
#[derive(Debug, clap::Args)]
pub struct LoaderBenchArgs {
    /// The dataset folder (every case needs a label).
    pub dir: PathBuf,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 160)]
    pub crop: usize,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[arg(long, default_value_t = 4)]
    pub prefetch: usize,
    /// Batches to time (after `--warmup` untimed ones).
    #[arg(long, default_value_t = 200)]
    pub batches: u64,
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Slice cache folder (default: the user cache, see README).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Gaussian noise augmentation (z-score units), as in training; 0 turns it off.
    #[arg(long, default_value_t = SamplerConfig::default().noise_std)]
    pub noise_std: f32,
}

/// A memory figure of this process in MiB from `/proc/self/status` (`VmHWM`, `VmRSS`).
fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Peak resident memory of this process in MiB (`VmHWM`), if the platform reports it.
fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

/// Resets the peak-RSS counter (Linux `clear_refs` 5) so that the streaming phase is measured on
/// its own; returns whether that worked.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

pub fn bench_loader(args: LoaderBenchArgs) -> anyhow::Result<()> {
    // The binary maps libtorch (hundreds of MB resident before any data is touched): report that
    // baseline so the loader's own footprint is the difference.
    let rss_at_start = status_mib("VmRSS:");
    let report = cggm_trainer::data::discover(&args.dir);
    let cases = report.cases;
    if cases.is_empty() {
        bail!("no cases found in {}", args.dir.display());
    }
    let config = SamplerConfig {
        batch_size: args.batch_size,
        crop: args.crop,
        random_crop: true,
        workers: args.workers,
        prefetch: args.prefetch,
        cache_dir: args.cache_dir.clone(),
        noise_std: args.noise_std,
        ..SamplerConfig::default()
    };
    let started = Instant::now();
    let mut loader = SliceLoader::new(&cases, config.clone(), args.seed, 0)
        .context("preparing the slice cache")?;
    let prepare_seconds = started.elapsed().as_secs_f64();
    let peak_prepare = peak_rss_mib();
    let reset = reset_peak_rss();
    for _ in 0..args.warmup {
        loader.next_batch()?;
    }
    let timed = Instant::now();
    let mut checksum = 0f64;
    for _ in 0..args.batches {
        let batch = loader.next_batch()?;
        checksum += batch.labels.iter().filter(|&&l| l != 0).count() as f64;
    }
    let seconds = timed.elapsed().as_secs_f64();
    let slices = args.batches * args.batch_size as u64;
    let json = serde_json::json!({
        "dataset": args.dir,
        "cases": cases.len(),
        "batch_size": args.batch_size,
        "crop": args.crop,
        "workers": args.workers,
        "prefetch": args.prefetch,
        "noise_std": args.noise_std,
        "prepare_seconds": prepare_seconds,
        "batches": args.batches,
        "slices": slices,
        "seconds": seconds,
        "slices_per_second": slices as f64 / seconds,
        "tumour_pixels_per_slice": checksum / slices as f64,
        "rss_mib_at_start": rss_at_start,
        "peak_rss_mib_prepare": peak_prepare,
        "peak_rss_mib_streaming": if reset { peak_rss_mib() } else { None },
        "peak_rss_mib_overall": peak_rss_mib().zip(peak_prepare).map(|(a, b)| a.max(b)),
        "loader_peak_mib_streaming": if reset { peak_rss_mib().zip(rss_at_start).map(|(a, b)| a - b) } else { None },
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
