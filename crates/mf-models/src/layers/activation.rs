//! Activation functions under Hugging Face's `hidden_act` / `activation_function` names, with
//! HF's semantics: `gelu` is the exact erf form, `gelu_new` and `gelu_pytorch_tanh` the tanh
//! approximation (HF's `gelu_fast` too), `quick_gelu` x·σ(1.702x); `fast_gelu` is MindSpore's
//! FastGeLU, x / (1 + exp(-1.702|x|)) · exp(0.851(x - |x|)), which is the same x·σ(1.702x).
use mf_core::{invalid, Result};
use tch::Tensor;

/// One activation function, parsed from its config name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: x·Φ(x) with the exact erf.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `quick_gelu`, and MindSpore's `fast_gelu`: x·σ(1.702·x).
    QuickGelu,
    /// `relu`.
    Relu,
    /// `silu` / `swish`.
    Silu,
    /// `tanh`.
    Tanh,
}

/// Every accepted name, for error messages.
pub const ACTIVATION_NAMES: &[&str] = &[
    "gelu",
    "gelu_new",
    "gelu_pytorch_tanh",
    "gelu_fast",
    "fast_gelu",
    "quick_gelu",
    "relu",
    "silu",
    "swish",
    "tanh",
];

impl Activation {
    /// Parses an HF (or MindFormers) activation name.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" | "gelu_exact" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "quick_gelu" | "fast_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            "tanh" => Activation::Tanh,
            other => {
                return Err(invalid(format!(
                    "activation '{other}' is not supported; use one of {}",
                    ACTIVATION_NAMES.join(", ")
                )))
            }
        })
    }

    /// Applies the function elementwise.
    pub fn forward(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::QuickGelu => x * (x * 1.702).sigmoid(),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
            Activation::Tanh => x.tanh(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_hf() {
        let x = Tensor::from_slice(&[-1.5f32, -0.3, 0.0, 0.7, 2.0]);
        let erf = Activation::from_name("gelu").unwrap().forward(&x);
        let tanh = Activation::from_name("gelu_new").unwrap().forward(&x);
        // erf form at 0.7: 0.7 * Phi(0.7) = 0.7 * 0.758036 = 0.530625
        assert!((erf.double_value(&[3]) - 0.530_625).abs() < 1e-5);
        // the tanh approximation differs from erf by ~1e-4 at 0.7
        let d = (erf.double_value(&[3]) - tanh.double_value(&[3])).abs();
        assert!(d > 1e-5 && d < 1e-3, "{d}");
        assert_eq!(
            Activation::from_name("fast_gelu").unwrap(),
            Activation::QuickGelu
        );
        assert_eq!(
            Activation::from_name("gelu_pytorch_tanh").unwrap(),
            Activation::GeluTanh
        );
        let q = Activation::QuickGelu.forward(&x).double_value(&[4]);
        assert!((q - 2.0 / (1.0 + (-3.404f64).exp())).abs() < 1e-5);
        let e = Activation::from_name("gelu2").unwrap_err().to_string();
        assert!(e.contains("gelu2") && e.contains("quick_gelu"), "{e}");
    }
}
