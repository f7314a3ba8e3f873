//! Mixed precision on CUDA: autocast to bf16 (the default: bf16 has fp32's exponent range, so no
//! gradient underflows and no loss scaling is needed) or to fp16 with dynamic loss scaling
//! (`LossScaler`): the loss is multiplied by S before backward, the gradients are divided by S
//! (before CGGM's B_i scaling and before clipping), and a step whose gradients hold an inf or NaN
//! is skipped and S halved; S doubles after 2000 clean steps (the schedule of
//! `torch.amp.GradScaler`). On a CPU, training autocasts to bf16 only when asked
//! (`CGGM_CPU_TRAINING_PRECISION=bf16`, or `cggm bench train --precision bf16`; see
//! `training_dtype`); inference uses bf16 where the CPU computes it natively.

use crate::optim::Optimizer;

use tch::Tensor;

pub use cggm_core::precision::AmpDtype;

/// The dtype a training step autocasts to (None: fp32). CUDA: `amp_dtype` when
/// `mixed_precision` is set. CPU: fp32 unless `CGGM_CPU_TRAINING_PRECISION=bf16` (bf16 needs
/// `mixed_precision` and `amp_dtype` bf16; fp16 is never used on a CPU, it would need loss
/// scaling for no speed). CPU bf16 is opt-in because it is only worth it where the CPU has
/// native bf16 (AVX512-BF16 or AMX), and there the measured gain is in the README.
pub fn training_dtype(
    device: tch::Device,
    mixed_precision: bool,
    amp_dtype: AmpDtype,
) -> Option<AmpDtype> {
    if !mixed_precision {
        return None;
    }
    if device.is_cuda() {
        return Some(amp_dtype);
    }
    let asked = std::env::var(CPU_TRAINING_PRECISION).is_ok_and(|v| v == "bf16");
    (asked && amp_dtype == AmpDtype::Bf16).then_some(AmpDtype::Bf16)
}

/// The environment variable that turns bf16 training on for CPUs (`bf16`; anything else: fp32).
pub const CPU_TRAINING_PRECISION: &str = "CGGM_CPU_TRAINING_PRECISION";

/// The precision inference runs in on `device`: bf16 on CUDA and on CPUs with native bf16
/// arithmetic (AVX512-BF16 or AMX: 2.4x faster than fp32 for the cpu-small model on such a
/// machine, 99.99% of voxels labelled alike), else fp32. `CGGM_INFERENCE_PRECISION=fp32` (or
/// `bf16`) overrides.
pub fn inference_dtype(device: tch::Device) -> Option<AmpDtype> {
    match std::env::var("CGGM_INFERENCE_PRECISION").as_deref() {
        Ok("fp32") => return None,
        Ok("bf16") => return Some(AmpDtype::Bf16),
        _ => {}
    }
    (device.is_cuda() || cpu_has_native_bf16()).then_some(AmpDtype::Bf16)
}

/// Runs an inference forward pass `f` in `inference_dtype(device)`.
pub fn inference<T>(device: tch::Device, f: impl FnOnce() -> T) -> T {
    autocast(device, inference_dtype(device), f)
}

/// Runs `f` with autocast on `device` to `dtype` (`None`: fp32, autocast off): the training
/// forward (dtype from `training_dtype`) and inference (`inference_dtype`) alike. In training the
/// weights stay fp32 (master weights): autocast casts them per op, and their gradients come back
/// in fp32, so CGGM's B_i scaling, `L_gm` and clipping run in fp32.
pub fn autocast<T>(device: tch::Device, dtype: Option<AmpDtype>, f: impl FnOnce() -> T) -> T {
    match dtype {
        None => f(),
        Some(dtype) => autocast_on(
            if device.is_cuda() {
                ffi::CUDA
            } else {
                ffi::CPU
            },
            dtype,
            f,
        ),
    }
}

/// Whether this CPU computes bf16 natively (AVX512-BF16 or AMX).
pub fn cpu_has_native_bf16() -> bool {
    static NATIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NATIVE.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
            info.lines()
                .find(|l| l.starts_with("flags"))
                .is_some_and(|l| {
                    l.split_whitespace()
                        .any(|f| f == "avx512_bf16" || f == "amx_bf16")
                })
        })
    })
}

/// Autocast on one device type for the duration of `f`; the previous state is restored and the
/// cache of down-cast weights dropped at the outermost level (weights change between calls).
fn autocast_on<T>(device_type: i8, dtype: AmpDtype, f: impl FnOnce() -> T) -> T {
    struct Restore {
        device_type: i8,
        enabled: bool,
        dtype: i8,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            if ffi::decrement_nesting() == 0 {
                ffi::clear_cache();
            }
            ffi::set_enabled(self.device_type, self.enabled);
            ffi::set_dtype(self.device_type, self.dtype);
        }
    }
    let _restore = Restore {
        device_type,
        enabled: ffi::is_enabled(device_type),
        dtype: ffi::get_dtype(device_type),
    };
    ffi::set_dtype(device_type, scalar_type(dtype));
    ffi::set_enabled(device_type, true);
    ffi::increment_nesting();
    f()
}

// libtorch's scalar type codes (c10::ScalarType).
const SCALAR_HALF: i8 = 5;
const SCALAR_BFLOAT16: i8 = 15;

fn scalar_type(dtype: AmpDtype) -> i8 {
    match dtype {
        AmpDtype::Bf16 => SCALAR_BFLOAT16,
        AmpDtype::Fp16 => SCALAR_HALF,
    }
}

/// Whether CUDA autocast is on in this thread, and to which dtype.
pub fn cuda_autocast_state() -> (bool, Option<AmpDtype>) {
    let dtype = match ffi::get_dtype(ffi::CUDA) {
        SCALAR_BFLOAT16 => Some(AmpDtype::Bf16),
        SCALAR_HALF => Some(AmpDtype::Fp16),
        _ => None,
    };
    (ffi::is_enabled(ffi::CUDA), dtype)
}

/// tch 0.26 wraps CUDA's `at::autocast::set_enabled` only, and no setter of the autocast dtype
/// (whose CUDA default is fp16). libtorch's device-generic C++ autocast API fills the gap through
/// `extern "C"` functions of csrc/amp_shim.cpp (compiled against libtorch's headers by
/// build.rs). The enums are `int8_t`-sized and passed as integers.
#[allow(unsafe_code)]
mod ffi {
    extern "C" {
        fn cggm_amp_set_dtype(device_type: i8, dtype: i8);
        fn cggm_amp_get_dtype(device_type: i8) -> i8;
        fn cggm_amp_set_enabled(device_type: i8, enabled: bool);
        fn cggm_amp_is_enabled(device_type: i8) -> bool;
        fn cggm_amp_increment_nesting() -> i32;
        fn cggm_amp_decrement_nesting() -> i32;
        fn cggm_amp_clear_cache();
    }
    /// c10::DeviceType::CPU and CUDA.
    pub const CPU: i8 = 0;
    pub const CUDA: i8 = 1;

    // SAFETY (all below): setters and getters of libtorch's thread-local autocast state; no
    // pointers cross.
    pub fn set_dtype(device_type: i8, dtype: i8) {
        unsafe { cggm_amp_set_dtype(device_type, dtype) }
    }
    pub fn get_dtype(device_type: i8) -> i8 {
        unsafe { cggm_amp_get_dtype(device_type) }
    }
    pub fn set_enabled(device_type: i8, enabled: bool) {
        unsafe { cggm_amp_set_enabled(device_type, enabled) }
    }
    pub fn is_enabled(device_type: i8) -> bool {
        unsafe { cggm_amp_is_enabled(device_type) }
    }
    pub fn increment_nesting() -> i32 {
        unsafe { cggm_amp_increment_nesting() }
    }
    pub fn decrement_nesting() -> i32 {
        unsafe { cggm_amp_decrement_nesting() }
    }
    pub fn clear_cache() {
        unsafe { cggm_amp_clear_cache() }
    }
}

/// Dynamic loss scaling for fp16 (see the module comment).
#[derive(Clone, Debug)]
pub struct LossScaler {
    pub scale: f64,
    clean_steps: usize,
    pub skipped_steps: usize,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self::new()
    }
}

impl LossScaler {
    pub const INITIAL_SCALE: f64 = 65536.0;
    pub const GROWTH_INTERVAL: usize = 2000;

    pub fn new() -> Self {
        Self {
            scale: Self::INITIAL_SCALE,
            clean_steps: 0,
            skipped_steps: 0,
        }
    }

    /// `loss * S`, the tensor to call backward on.
    pub fn scaled(&self, loss: &Tensor) -> Tensor {
        loss * self.scale
    }

    /// Divides every gradient of `opt` by S (one kernel per group); false when any is inf or NaN.
    pub fn unscale(&self, opt: &mut Optimizer) -> bool {
        opt.unscale_gradients(1.0 / self.scale)
    }

    /// After each iteration: halve S (and count a skipped step) when an inf or NaN was found,
    /// double it after `GROWTH_INTERVAL` clean iterations.
    pub fn update(&mut self, found_non_finite: bool) {
        if found_non_finite {
            self.scale = (self.scale * 0.5).max(1.0);
            self.clean_steps = 0;
            self.skipped_steps += 1;
        } else {
            self.clean_steps += 1;
            if self.clean_steps >= Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.clean_steps = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{OptimizerConfig, Param};
    use tch::{Device, Kind};

    #[test]
    fn autocast_sets_the_dtype_through_libtorch_and_restores_the_state() {
        let before = cuda_autocast_state();
        let cuda = Device::Cuda(0);
        autocast(cuda, Some(AmpDtype::Bf16), || {
            assert_eq!(cuda_autocast_state(), (true, Some(AmpDtype::Bf16)))
        });
        autocast(cuda, Some(AmpDtype::Fp16), || {
            assert_eq!(cuda_autocast_state(), (true, Some(AmpDtype::Fp16)))
        });
        assert_eq!(cuda_autocast_state(), before);
    }

    #[test]
    fn cpu_inference_autocast_computes_convolutions_in_bf16() {
        let x = Tensor::randn([1, 2, 8, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([3, 2, 3, 3], (Kind::Float, Device::Cpu));
        let conv = || x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        assert_eq!(conv().kind(), Kind::Float);
        std::env::set_var("CGGM_INFERENCE_PRECISION", "bf16");
        let low = inference(Device::Cpu, conv);
        std::env::remove_var("CGGM_INFERENCE_PRECISION");
        assert_eq!(low.kind(), Kind::BFloat16);
        assert!(low.to_kind(Kind::Float).allclose(&conv(), 0.05, 0.1, false));
        assert_eq!(
            conv().kind(),
            Kind::Float,
            "autocast must end with the call"
        );
    }

    fn optimizer_with_gradient(grad: f32) -> (Tensor, Optimizer) {
        let w = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let opt = Optimizer::new(
            OptimizerConfig::default(),
            vec![Param {
                name: "w".into(),
                tensor: w.shallow_clone(),
                group: 0,
            }],
        );
        (&w * f64::from(grad)).sum(Kind::Float).backward();
        (w, opt)
    }

    #[test]
    fn an_underflowing_fp16_gradient_survives_scaling_and_is_unscaled_exactly() {
        // 1e-8 is below fp16's smallest subnormal (6e-8): unscaled it would flush to 0.
        let tiny = 1e-8f32;
        assert_eq!(
            Tensor::from_slice(&[tiny])
                .to_kind(Kind::Half)
                .double_value(&[0]),
            0.0
        );
        let scaler = LossScaler::new();
        let scaled_in_fp16 = (Tensor::from_slice(&[tiny]) * scaler.scale)
            .to_kind(Kind::Half)
            .to_kind(Kind::Float);
        let (w, mut opt) = optimizer_with_gradient(scaled_in_fp16.double_value(&[0]) as f32);
        assert!(scaler.unscale(&mut opt));
        let g = w.grad().double_value(&[0]);
        assert!((g - tiny as f64).abs() < 1e-3 * tiny as f64, "{g}");
    }

    #[test]
    fn a_non_finite_gradient_skips_the_step_and_halves_the_scale() {
        let (_, mut opt) = optimizer_with_gradient(f32::INFINITY);
        let mut scaler = LossScaler::new();
        let finite = scaler.unscale(&mut opt);
        assert!(!finite);
        scaler.update(!finite);
        assert_eq!(scaler.scale, LossScaler::INITIAL_SCALE / 2.0);
        assert_eq!(scaler.skipped_steps, 1);
        for _ in 0..LossScaler::GROWTH_INTERVAL {
            scaler.update(false);
        }
        assert_eq!(scaler.scale, LossScaler::INITIAL_SCALE);
    }
}
