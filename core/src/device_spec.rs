//! The device grammar of a run (`auto`, `cpu`, `cuda`, `cuda:N`), parsed once into a
//! [`DeviceSpec`], and whether a device exists among the CUDA devices a machine has. Below the run
//! configuration (`validate`), the run request (which re-exports these checks for the server) and
//! the trainer (which maps a spec to a libtorch device).

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

/// A device as a run names it: the one parser of the grammar `auto | cpu | cuda | cuda:N` (case
/// and surrounding blanks ignored). The trainer maps it to a libtorch device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The first CUDA device when there is one, else the CPU (decided where the run starts).
    Auto,
    Cpu,
    /// `cuda:N`; plain `cuda` is `cuda:0`.
    Cuda(usize),
}

impl DeviceSpec {
    pub fn parse(spec: &str) -> Result<Self, DeviceError> {
        let s = spec.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(unknown_device(spec)),
            },
        }
    }

    /// This device exists on a machine with `cuda_devices` CUDA devices (`auto` and `cpu` always
    /// do), or the reason it does not, naming the devices there are.
    pub fn check_present(self, cuda_devices: usize) -> Result<Self, DeviceError> {
        match self {
            DeviceSpec::Auto | DeviceSpec::Cpu => Ok(self),
            DeviceSpec::Cuda(n) => check_cuda_index(n, cuda_devices).map(|()| self),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        Self::parse(s)
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The error for a spec that is none of the device forms.
fn unknown_device(spec: &str) -> DeviceError {
    UnknownName::new("device", spec, "use auto, cpu or cuda:N").into()
}

/// Accepts `auto`, `cpu`, `cuda` and `cuda:N` by their form ([`DeviceSpec::parse`]);
/// [`check_device_present`] also checks that the device exists on this machine (the server does
/// when its jobs run here; with Slurm the training machine is another one, and the trainer checks
/// when the run starts).
pub fn check_device_spec(spec: &str) -> Result<(), DeviceError> {
    DeviceSpec::parse(spec).map(|_| ())
}

/// [`check_device_spec`], and the device exists on a machine with `cuda_devices` CUDA devices
/// (`cuda:99` without 100 GPUs, or any `cuda` without CUDA, is refused with the devices there are).
/// The count is the trainer's (libtorch's) at start-up: the server itself links no libtorch.
pub fn check_device_present(spec: &str, cuda_devices: usize) -> Result<(), DeviceError> {
    DeviceSpec::parse(spec)?
        .check_present(cuda_devices)
        .map(|_| ())
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
    fn the_grammar_parses_into_a_typed_spec() {
        assert_eq!(DeviceSpec::parse(" AUTO "), Ok(DeviceSpec::Auto));
        assert_eq!(DeviceSpec::parse("cpu"), Ok(DeviceSpec::Cpu));
        assert_eq!(DeviceSpec::parse("cuda"), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("CUDA:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
        assert_eq!(
            DeviceSpec::parse("Cuda:x").unwrap_err().to_string(),
            "unknown device \"Cuda:x\": use auto, cpu or cuda:N"
        );
        assert_eq!(
            DeviceSpec::Cuda(1).check_present(2),
            Ok(DeviceSpec::Cuda(1))
        );
        assert_eq!(DeviceSpec::Auto.check_present(0), Ok(DeviceSpec::Auto));
        assert_eq!(
            DeviceSpec::Cuda(0).check_present(0),
            Err(DeviceError::NoCuda { index: 0 })
        );
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
