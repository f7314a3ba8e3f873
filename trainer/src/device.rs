//! `--device auto|cpu|cuda:N`, and the per-process settings of the chosen device. The grammar is
//! core's ([`DeviceSpec`]); this maps a spec to a libtorch device on this machine.

use cggm_core::device_spec::{DeviceError, DeviceSpec};
use tch::Device;

/// The libtorch device `spec` names, checked against the CUDA devices libtorch sees here.
pub fn parse_device(spec: &str) -> Result<Device, DeviceError> {
    to_device(DeviceSpec::parse(spec)?)
}

/// `spec` on this machine: `auto` is the first CUDA device if there is one, else the CPU.
pub fn to_device(spec: DeviceSpec) -> Result<Device, DeviceError> {
    Ok(match spec.check_present(cuda_devices())? {
        DeviceSpec::Auto => Device::cuda_if_available(),
        DeviceSpec::Cpu => Device::Cpu,
        DeviceSpec::Cuda(n) => Device::Cuda(n),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_map_to_libtorch_devices_with_the_cores_messages() {
        assert_eq!(parse_device(" CPU ").unwrap(), Device::Cpu);
        assert_eq!(parse_device("auto").unwrap(), Device::cuda_if_available());
        assert_eq!(
            parse_device("tpu").unwrap_err().to_string(),
            "unknown device \"tpu\": use auto, cpu or cuda:N"
        );
        let beyond = cuda_devices() + 1;
        let error = parse_device(&format!("cuda:{beyond}")).unwrap_err();
        assert_eq!(
            error,
            DeviceSpec::Cuda(beyond)
                .check_present(cuda_devices())
                .unwrap_err()
        );
    }
}
