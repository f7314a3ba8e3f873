//! The device grammar of a run (`auto`, `cpu`, `cuda`, `cuda:N`) and whether a device exists
//! among the CUDA devices a machine has. Below both the run configuration (`validate`) and the
//! run request, which re-exports these checks for the server.

use crate::unknown_name::UnknownName;

/// Why a device spec was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Not of the form auto, cpu, cuda or cuda:N.
    #[error(transparent)]
    Unknown(#[from] UnknownName),
    #[error(
        "cuda:{index} requested but no CUDA device is available (libtorch sees none): use --device cpu"
    )]
    NoCuda { index: usize },
    #[error(
        "cuda:{index} requested but only {count} CUDA device(s) exist: use cuda:0..cuda:{}",
        .count - 1
    )]
    TooFew { index: usize, count: usize },
}

/// The error for a spec that is none of the device forms.
pub fn unknown_device(spec: &str) -> DeviceError {
    UnknownName::new("device", spec, "use auto, cpu or cuda:N").into()
}

/// Accepts `auto`, `cpu`, `cuda` and `cuda:N` by their form; [`check_device_present`] also checks
/// that the device exists on this machine (the server does when its jobs run here; with Slurm the
/// training machine is another one, and the trainer checks when the run starts).
pub fn check_device_spec(spec: &str) -> Result<(), DeviceError> {
    let s = spec.trim().to_ascii_lowercase();
    let ok = matches!(s.as_str(), "auto" | "cpu" | "cuda")
        || s.strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(unknown_device(spec))
    }
}

/// [`check_device_spec`], and the device exists on a machine with `cuda_devices` CUDA devices
/// (`cuda:99` without 100 GPUs, or any `cuda` without CUDA, is refused with the devices there are).
/// The count is the trainer's (libtorch's) at start-up: the server itself links no libtorch.
pub fn check_device_present(spec: &str, cuda_devices: usize) -> Result<(), DeviceError> {
    check_device_spec(spec)?;
    let s = spec.trim().to_ascii_lowercase();
    match s.as_str() {
        "auto" | "cpu" => Ok(()),
        "cuda" => check_cuda_index(0, cuda_devices),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => check_cuda_index(n, cuda_devices),
            _ => Err(unknown_device(spec)),
        },
    }
}

/// `cuda:n` exists among `count` CUDA devices, or the reason it does not and what to use instead.
pub fn check_cuda_index(n: usize, count: usize) -> Result<(), DeviceError> {
    if n < count {
        Ok(())
    } else if count == 0 {
        Err(DeviceError::NoCuda { index: n })
    } else {
        Err(DeviceError::TooFew { index: n, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_messages_are_the_ones_the_server_and_the_trainer_show() {
        assert_eq!(
            check_device_spec("tpu").unwrap_err().to_string(),
            "unknown device \"tpu\": use auto, cpu or cuda:N"
        );
        assert_eq!(
            check_cuda_index(1, 0).unwrap_err().to_string(),
            "cuda:1 requested but no CUDA device is available (libtorch sees none): use --device cpu"
        );
        assert_eq!(
            check_cuda_index(3, 2).unwrap_err().to_string(),
            "cuda:3 requested but only 2 CUDA device(s) exist: use cuda:0..cuda:1"
        );
    }

    #[test]
    fn a_device_this_machine_does_not_have_is_refused_with_the_ones_it_has() {
        let error = check_device_present("cuda:99", 0).unwrap_err().to_string();
        assert!(
            error.contains("cuda:99") && error.contains("no CUDA device"),
            "{error}"
        );
        let error = check_device_present("cuda:2", 2).unwrap_err().to_string();
        assert!(error.contains("cuda:0..cuda:1"), "{error}");
        check_device_present("cuda:1", 2).unwrap();
        check_device_present("cpu", 0).unwrap();
        check_device_present("auto", 0).unwrap();
        assert!(check_device_present("tpu", 4).is_err());
    }

    #[test]
    fn device_specs_are_checked_by_their_form_only() {
        for ok in ["auto", "cpu", "cuda", "cuda:3", "CUDA:0"] {
            check_device_spec(ok).unwrap();
        }
        for bad in ["tpu", "cuda:", "cuda:x", "gpu0"] {
            assert!(check_device_spec(bad).is_err(), "{bad}");
        }
    }
}
