//! Device and dtype selection, parsed from the strings users type (`cuda:1`, `bf16`).
use std::fmt;
use std::str::FromStr;

use crate::error::{invalid, MfError, Result};

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The host CPU.
    #[default]
    Cpu,
    /// A CUDA GPU by index.
    Cuda(usize),
}

impl FromStr for Device {
    type Err = MfError;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(Device::Cuda)
                    .map_err(|_| invalid(format!("device '{s}': expected cpu, cuda or cuda:N"))),
                None => Err(invalid(format!(
                    "device '{s}': expected cpu, cuda or cuda:N"
                ))),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl Device {
    /// The device of a libtorch tensor; devices this crate never creates (MPS, Vulkan) are errors.
    pub fn from_tch(d: tch::Device) -> Result<Self> {
        match d {
            tch::Device::Cpu => Ok(Device::Cpu),
            tch::Device::Cuda(i) => Ok(Device::Cuda(i)),
            other => Err(MfError::Device(format!(
                "{other:?} is not supported; use cpu or cuda"
            ))),
        }
    }

    /// The libtorch device, or an error when the GPU is not there.
    pub fn to_tch(self) -> Result<tch::Device> {
        match self {
            Device::Cpu => Ok(tch::Device::Cpu),
            Device::Cuda(i) => {
                let n = tch::Cuda::device_count() as usize;
                if n == 0 {
                    Err(MfError::Device(format!(
                        "{self} requested but no CUDA device is available (libtorch sees none); \
                         use --device cpu"
                    )))
                } else if i >= n {
                    Err(MfError::Device(format!(
                        "{self} requested but only {n} CUDA device(s) exist"
                    )))
                } else {
                    Ok(tch::Device::Cuda(i))
                }
            }
        }
    }
}

/// Floating point precision for weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DType {
    /// 32-bit float.
    #[default]
    F32,
    /// bfloat16.
    BF16,
    /// IEEE half precision.
    F16,
}

impl FromStr for DType {
    type Err = MfError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(DType::F32),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            "f16" | "fp16" | "float16" => Ok(DType::F16),
            other => Err(invalid(format!(
                "dtype '{other}': expected f32, bf16 or f16"
            ))),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        })
    }
}

impl DType {
    /// The libtorch kind.
    pub fn kind(self) -> tch::Kind {
        match self {
            DType::F32 => tch::Kind::Float,
            DType::BF16 => tch::Kind::BFloat16,
            DType::F16 => tch::Kind::Half,
        }
    }

    /// The dtype for a libtorch kind, if it is a supported float kind.
    pub fn from_kind(kind: tch::Kind) -> Option<Self> {
        match kind {
            tch::Kind::Float => Some(DType::F32),
            tch::Kind::BFloat16 => Some(DType::BF16),
            tch::Kind::Half => Some(DType::F16),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert!("tpu".parse::<Device>().is_err());
        assert!("cuda:x".parse::<Device>().is_err());
        assert_eq!("bf16".parse::<DType>().unwrap(), DType::BF16);
        assert_eq!("float16".parse::<DType>().unwrap().kind(), tch::Kind::Half);
        assert!("int8".parse::<DType>().is_err());
    }

    #[test]
    fn cuda_without_gpu_is_an_error() {
        if tch::Cuda::device_count() == 0 {
            let err = Device::Cuda(0).to_tch().unwrap_err().to_string();
            assert!(err.contains("no CUDA device"), "{err}");
        }
    }
}
