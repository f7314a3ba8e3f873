//! `--device auto|cpu|cuda:N`, and the per-process settings of the chosen device.

use cggm_core::device_spec::{check_cuda_index, unknown_device, DeviceError};
use tch::Device;

pub fn parse_device(spec: &str) -> Result<Device, DeviceError> {
    let spec = spec.trim().to_ascii_lowercase();
    match spec.as_str() {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n),
            _ => Err(unknown_device(&spec)),
        },
    }
}

fn cuda(n: usize) -> Result<Device, DeviceError> {
    check_cuda_index(n, cuda_devices()).map(|()| Device::Cuda(n))
}

/// The CUDA devices libtorch sees (the vocabulary and the server's device checks take this count).
pub fn cuda_devices() -> usize {
    usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
}

pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}"),
    }
}

/// Per-process settings for `device`: on CUDA, cuDNN's benchmark mode (it times the convolution
/// algorithms once per input shape and keeps the fastest; training crops have one shape).
pub fn prepare(device: Device) {
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
}
