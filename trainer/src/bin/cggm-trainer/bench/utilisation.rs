//! Model FLOPs utilisation (MFU) for `cggm bench`: the FLOPs a step does, over its time, over
//! the machine's peak. The peak is computed from what the machine says it is, with every number
//! shown so that a reader can redo (or correct) it:
//! - CPU: cores used x clock x fp32 lanes per vector x 2 (a fused multiply-add is 2 FLOPs) x FMA
//!   units per core; bf16 doubles the lanes where the CPU has AVX512-BF16; where it has AMX-BF16
//!   the bf16 peak is the tile unit's: cores x clock x 1024 FLOPs per cycle (512 bf16
//!   multiply-adds per cycle per core, Intel's figure for the AMX TMUL unit).
//! - CUDA: the device's published dense peak per precision (a table of the devices we know).

use super::report::{PerMethod, Sides};
use serde::Serialize;

/// A machine's peak rate in one precision, and how it was obtained.
#[derive(Clone, Debug, Serialize)]
pub struct Peak {
    pub flops_per_second: f64,
    pub precision: String,
    /// The formula with its numbers, e.g. "2 cores x 2.596 GHz x 16 lanes x 2 x 1 FMA unit".
    pub derivation: String,
}

/// The rate libtorch reaches here on one large square matrix product in `precision` (n = 2048
/// on a CPU, 8192 on CUDA; median of 5 after 2 warm-ups): a measured ceiling beside the nominal
/// peak, which a CPU's boost clock can exceed (on the development machine a 3x3 convolution of
/// the fusion head ran at 191 GFLOP/s against a nominal fp32 peak of 166 from the 2.6 GHz that
/// /proc/cpuinfo shows).
pub fn gemm_rate(device: tch::Device, precision: &str) -> f64 {
    let kind = match precision {
        "bf16" => tch::Kind::BFloat16,
        "fp16" => tch::Kind::Half,
        _ => tch::Kind::Float,
    };
    let n: i64 = if device.is_cuda() { 8192 } else { 2048 };
    let _guard = tch::no_grad_guard();
    let a = tch::Tensor::randn([n, n], (kind, device));
    let b = tch::Tensor::randn([n, n], (kind, device));
    let sync = || {
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let mut times = Vec::new();
    for round in 0..7 {
        sync();
        let start = std::time::Instant::now();
        let _ = a.matmul(&b);
        sync();
        if round >= 2 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    2.0 * (n as f64).powi(3) / times[times.len() / 2]
}

/// Achieved FLOP/s over the peak.
pub fn mfu(flops: f64, seconds: f64, peak: &Peak) -> f64 {
    flops / seconds / peak.flops_per_second
}

/// What /proc/cpuinfo says of the first CPU.
struct CpuInfo {
    vendor: String,
    family: u32,
    mhz: f64,
    flags: Vec<String>,
}

fn cpuinfo() -> Option<CpuInfo> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    Some(CpuInfo {
        vendor: field("vendor_id").unwrap_or_default(),
        family: field("cpu family")?.parse().ok()?,
        mhz: field("cpu MHz")?.parse().ok()?,
        flags: field("flags")?
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    })
}

/// The bf16 peak of a CPU with AMX: its tile unit, not its vectors, bounds a bf16 matrix product
/// (one measured 1,577 GFLOP/s against the 666 that AVX512-BF16 vectors allow).
fn amx_peak(cores: usize, ghz: f64, info: &CpuInfo) -> Peak {
    Peak {
        flops_per_second: cores as f64 * ghz * 1e9 * 1024.0,
        precision: "bf16".into(),
        derivation: format!(
            "{cores} cores x {ghz:.3} GHz x 1024 bf16 FLOPs per cycle (AMX-BF16 tile unit: 512 \
             multiply-adds per cycle per core) ({} family {})",
            info.vendor, info.family
        ),
    }
}

/// The CPU's peak with `cores` threads in `precision` ("fp32" or "bf16").
pub fn cpu_peak(cores: usize, precision: &str) -> Option<Peak> {
    Some(peak_of(&cpuinfo()?, cores, precision))
}

/// `cpu_peak` for the CPU that `info` describes.
fn peak_of(info: &CpuInfo, cores: usize, precision: &str) -> Peak {
    let has = |f: &str| info.flags.iter().any(|x| x == f);
    let (lanes, units, why) = if has("avx512f") {
        // Zen 4 (family 25) runs 512-bit FMAs on its two 256-bit units: one 512-bit FMA per
        // cycle. Zen 5 (26) and Intel server cores have two.
        let units = if info.vendor == "AuthenticAMD" && info.family < 26 {
            1
        } else {
            2
        };
        (16, units, "AVX-512")
    } else if has("avx2") && has("fma") {
        (8, 2, "AVX2 + FMA")
    } else {
        (4, 1, "SSE")
    };
    let ghz = info.mhz / 1000.0;
    if precision == "bf16" && has("amx_bf16") {
        return amx_peak(cores, ghz, info);
    }
    let bf16 = precision == "bf16" && has("avx512_bf16");
    let lanes = if bf16 { lanes * 2 } else { lanes };
    let flops = cores as f64 * ghz * 1e9 * lanes as f64 * 2.0 * units as f64;
    Peak {
        flops_per_second: flops,
        precision: if bf16 { "bf16" } else { "fp32" }.into(),
        derivation: format!(
            "{cores} cores x {ghz:.3} GHz x {lanes} {} lanes ({why}{}) x 2 (FMA) x {units} FMA \
             unit(s) per core ({} family {})",
            if bf16 { "bf16" } else { "fp32" },
            if bf16 { ", AVX512-BF16" } else { "" },
            info.vendor,
            info.family
        ),
    }
}

/// Published dense peaks (FLOP/s) of the CUDA devices we know: (name part, fp32, tf32, bf16).
const CUDA_PEAKS: &[(&str, f64, f64, f64)] = &[
    ("H200", 67e12, 494.7e12, 989.5e12),
    ("H100 SXM", 67e12, 494.7e12, 989.5e12),
    ("H100 PCIe", 51e12, 378e12, 756e12),
    ("A100", 19.5e12, 156e12, 312e12),
    ("L40S", 91.6e12, 183e12, 362e12),
];

/// The CUDA device's published peak in `precision` (fp32 counts TF32 tensor cores only when
/// `tf32`), by its name as `nvidia-smi` reports it.
pub fn cuda_peak(precision: &str) -> Option<Peak> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader", "-i", "0"])
        .output()
        .ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let &(known, fp32, _tf32, bf16) = CUDA_PEAKS.iter().find(|(n, ..)| name.contains(n))?;
    let (flops, precision) = match precision {
        "bf16" | "fp16" => (bf16, precision),
        _ => (fp32, "fp32"),
    };
    Some(Peak {
        flops_per_second: flops,
        precision: precision.into(),
        derivation: format!(
            "{name}: the published dense {precision} peak of the {known}, {:.1} TFLOP/s",
            flops / 1e12
        ),
    })
}

/// `device`'s peak in `precision`: the CUDA device's published one, or the CPU's with the
/// threads libtorch uses.
pub fn peak(device: tch::Device, precision: &str) -> Option<Peak> {
    if device.is_cuda() {
        cuda_peak(precision)
    } else {
        cpu_peak(tch::get_num_threads().max(1) as usize, precision)
    }
}

/// The `utilisation` block of `cggm bench train --against-torch`: the FLOPs per step that the
/// PyTorch reference counted (`flops` in its output; the same architecture, whose parameter
/// counts the bench checks against ours), each side's peak, and the MFU of both implementations
/// from their seconds per step. Each side is measured against the peak of the precision it ran in
/// (`ours` and `torch`: on a CPU ours may run bf16 while the reference stays fp32).
#[derive(Serialize)]
pub struct TrainUtilisation {
    peak: Sides<Peak>,
    gemm_flops_per_second: Sides<f64>,
    of_gemm_rate: Sides<PerMethod>,
    flops_per_step: PerMethod,
    flops_by_op: PerMethod<serde_json::Value>,
    achieved_flops_per_second: Sides<PerMethod>,
    mfu: Sides<PerMethod>,
    top_forward_layers: serde_json::Value,
}

/// `TrainUtilisation` from the reference's last round `torch` and both sides' seconds per step
/// (`ours`, `theirs`) in their precisions (ours, torch). None when the reference counted nothing
/// or a peak is unknown. Printed to stderr as well.
pub fn train_report(
    torch: &serde_json::Map<String, serde_json::Value>,
    ours: PerMethod,
    theirs: PerMethod,
    device: tch::Device,
    precision: (&str, &str),
) -> Option<TrainUtilisation> {
    let peak = Sides {
        ours: peak(device, precision.0)?,
        torch: peak(device, precision.1)?,
    };
    let gemm = Sides {
        ours: gemm_rate(device, precision.0),
        torch: gemm_rate(device, precision.1),
    };
    let counted = torch.get("flops")?;
    let total = |m: &str| counted[m]["total"].as_f64().filter(|f| *f > 0.0);
    let flops = PerMethod {
        joint: total("joint")?,
        cggm: total("cggm")?,
    };
    // Per method: `f(flops, seconds)` of each side.
    let each = |f: &dyn Fn(f64, f64, &Peak, f64) -> f64| Sides {
        ours: PerMethod {
            joint: f(flops.joint, ours.joint, &peak.ours, gemm.ours),
            cggm: f(flops.cggm, ours.cggm, &peak.ours, gemm.ours),
        },
        torch: PerMethod {
            joint: f(flops.joint, theirs.joint, &peak.torch, gemm.torch),
            cggm: f(flops.cggm, theirs.cggm, &peak.torch, gemm.torch),
        },
    };
    let report = TrainUtilisation {
        of_gemm_rate: each(&|f, s, _, g| f / s / g),
        achieved_flops_per_second: each(&|f, s, _, _| f / s),
        mfu: each(&|f, s, p, _| mfu(f, s, p)),
        flops_by_op: PerMethod {
            joint: counted["joint"]["by_op"].clone(),
            cggm: counted["cggm"]["by_op"].clone(),
        },
        top_forward_layers: counted["joint"]["top_forward_layers"].clone(),
        peak,
        gemm_flops_per_second: gemm,
        flops_per_step: flops,
    };
    report.print();
    Some(report)
}

impl TrainUtilisation {
    /// Each side's peak and both methods' MFU, on stderr.
    fn print(&self) {
        for (who, p, g) in [
            ("ours", &self.peak.ours, self.gemm_flops_per_second.ours),
            ("torch", &self.peak.torch, self.gemm_flops_per_second.torch),
        ] {
            eprintln!(
                "peak for {who}: {:.1} GFLOP/s {} ({}); a {} matrix product measures {:.1} GFLOP/s",
                p.flops_per_second / 1e9,
                p.precision,
                p.derivation,
                p.precision,
                g / 1e9
            );
        }
        let (f, mfu, rate) = (
            &self.flops_per_step,
            &self.mfu,
            &self.achieved_flops_per_second,
        );
        eprintln!(
            "MFU: joint {:.2} GFLOP/step, ours {:.1} % ({:.1} GFLOP/s) / torch {:.1} % ({:.1} \
             GFLOP/s); cggm {:.2} GFLOP/step, ours {:.1} % ({:.1} GFLOP/s) / torch {:.1} % ({:.1} \
             GFLOP/s)",
            f.joint / 1e9,
            100.0 * mfu.ours.joint,
            rate.ours.joint / 1e9,
            100.0 * mfu.torch.joint,
            rate.torch.joint / 1e9,
            f.cggm / 1e9,
            100.0 * mfu.ours.cggm,
            rate.ours.cggm / 1e9,
            100.0 * mfu.torch.cggm,
            rate.torch.cggm / 1e9,
        );
    }
}

/// The `utilisation` block of `cggm bench infer --flops`.
#[derive(Serialize)]
pub struct InferUtilisation {
    brain_slices: usize,
    forward_flops_per_slice: f64,
    flops_per_case: f64,
    achieved_flops_per_second: f64,
    peak: Peak,
    mfu: f64,
    gemm_flops_per_second: f64,
    of_gemm_rate: f64,
}

/// `InferUtilisation` of a case of `brain_slices` slices of `per_slice` FLOPs each predicted in
/// `seconds` in `precision`; printed to stderr as well.
pub fn infer_report(
    per_slice: f64,
    brain_slices: usize,
    seconds: f64,
    device: tch::Device,
    precision: &str,
) -> anyhow::Result<InferUtilisation> {
    let flops = per_slice * brain_slices as f64;
    let peak = peak(device, precision)
        .ok_or_else(|| anyhow::anyhow!("--flops: this machine's peak is unknown"))?;
    let gemm = gemm_rate(device, precision);
    let mfu = mfu(flops, seconds, &peak);
    eprintln!(
        "inference: {brain_slices} brain slices x {:.2} GFLOP = {:.1} GFLOP per case in {seconds:.3} \
         s: {:.1} GFLOP/s, MFU {:.1} % of {:.1} GFLOP/s {} ({}); a {precision} matrix product \
         measures {:.1} GFLOP/s",
        per_slice / 1e9,
        flops / 1e9,
        flops / seconds / 1e9,
        100.0 * mfu,
        peak.flops_per_second / 1e9,
        peak.precision,
        peak.derivation,
        gemm / 1e9
    );
    Ok(InferUtilisation {
        brain_slices,
        forward_flops_per_slice: per_slice,
        flops_per_case: flops,
        achieved_flops_per_second: flops / seconds,
        peak,
        mfu,
        gemm_flops_per_second: gemm,
        of_gemm_rate: flops / seconds / gemm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mfu_is_the_achieved_rate_over_the_peak() {
        let peak = Peak {
            flops_per_second: 100e9,
            precision: "fp32".into(),
            derivation: String::new(),
        };
        assert!((mfu(40e9, 2.0, &peak) - 0.2).abs() < 1e-12);
    }

    #[test]
    fn the_cpu_peak_of_this_machine_names_its_numbers() {
        let Some(fp32) = cpu_peak(2, "fp32") else {
            return; // not Linux: no /proc/cpuinfo
        };
        assert!(fp32.flops_per_second > 1e9, "{fp32:?}");
        assert!(
            fp32.derivation.starts_with("2 cores x "),
            "{}",
            fp32.derivation
        );
        let bf16 = cpu_peak(2, "bf16").unwrap();
        assert!(bf16.flops_per_second >= fp32.flops_per_second, "{bf16:?}");
    }

    fn cpu(vendor: &str, family: u32, flags: &str) -> CpuInfo {
        CpuInfo {
            vendor: vendor.into(),
            family,
            mhz: 2600.0,
            flags: flags.split_whitespace().map(str::to_string).collect(),
        }
    }

    #[test]
    fn bf16_doubles_the_vector_peak_and_amx_replaces_it_with_the_tile_units() {
        let zen4 = cpu("AuthenticAMD", 25, "avx2 fma avx512f avx512_bf16");
        let fp32 = peak_of(&zen4, 2, "fp32");
        assert!((fp32.flops_per_second - 2.0 * 2.6e9 * 16.0 * 2.0).abs() < 1.0);
        let bf16 = peak_of(&zen4, 2, "bf16");
        assert_eq!(bf16.precision, "bf16");
        assert!((bf16.flops_per_second / fp32.flops_per_second - 2.0).abs() < 1e-9);
        let no_bf16 = cpu("GenuineIntel", 6, "avx2 fma avx512f");
        let bf16 = peak_of(&no_bf16, 2, "bf16");
        assert_eq!(
            bf16.precision, "fp32",
            "no AVX512-BF16: bf16 runs at the fp32 rate"
        );
        let sapphire = cpu("GenuineIntel", 6, "avx2 fma avx512f avx512_bf16 amx_bf16");
        let amx = peak_of(&sapphire, 2, "bf16");
        assert!((amx.flops_per_second - 2.0 * 2.6e9 * 1024.0).abs() < 1.0);
        assert!(amx.derivation.contains("AMX"), "{}", amx.derivation);
        let fp32 = peak_of(&sapphire, 2, "fp32");
        assert!((fp32.flops_per_second - 2.0 * 2.6e9 * 16.0 * 2.0 * 2.0).abs() < 1.0);
    }
}
