//! Per-segment backward: how every custom backward in the runtime is made (tch has no custom
//! autograd functions and no gradient hooks; see docs/ARCHITECTURE.md).
//!
//! A [`Seg`] runs a piece of the model on detached leaf copies of its inputs and keeps the
//! graph of that piece only. `backward(grad_out)` runs `(out * grad_out).sum().backward()`,
//! which accumulates the piece's parameter gradients and yields the gradients of its inputs;
//! the runtime then communicates them (the backward of an `f`/`g` region, a pipeline send) and
//! hands them to the previous segment.
use mf_core::{invalid, Result};
use tch::Tensor;

/// A piece of the forward graph between two communication points.
pub struct Seg {
    leaves: Vec<Tensor>,
    /// The piece's output, attached to its graph.
    pub out: Tensor,
}

impl Seg {
    /// Runs `f` on leaf copies of `inputs` (inputs that need no gradient, like token ids, are
    /// passed with `grad = false`).
    pub fn run(
        inputs: &[(&Tensor, bool)],
        f: impl FnOnce(&[Tensor]) -> Result<Tensor>,
    ) -> Result<Seg> {
        let leaves: Vec<Tensor> = inputs
            .iter()
            .map(|(t, grad)| {
                let l = t.detach();
                if *grad && l.is_floating_point() {
                    l.set_requires_grad(true)
                } else {
                    l
                }
            })
            .collect();
        let out = f(&leaves)?;
        Ok(Seg { leaves, out })
    }

    /// The output without its graph, to hand to the next segment.
    pub fn value(&self) -> Tensor {
        self.out.detach()
    }

    /// Backward with the output's gradient; returns each input's gradient (zeros where an
    /// input did not reach the output, `None` for inputs that take no gradient).
    pub fn backward(self, grad_out: &Tensor) -> Result<Vec<Option<Tensor>>> {
        if self.out.size() != grad_out.size() {
            return Err(invalid(format!(
                "segment backward: output {:?} and gradient {:?} differ in shape",
                self.out.size(),
                grad_out.size()
            )));
        }
        if self.out.requires_grad() {
            (&self.out * grad_out).sum(self.out.kind()).backward();
        }
        Ok(self
            .leaves
            .iter()
            .map(|l| {
                if !l.requires_grad() {
                    return None;
                }
                let g = l.grad();
                Some(if g.defined() { g } else { l.zeros_like() })
            })
            .collect())
    }
}

/// A seed mixed from the parts that identify one dropout site (splitmix64 steps).
pub fn mix(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for &p in parts {
        h ^= p
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(h << 6)
            .wrapping_add(h >> 2);
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 31;
    }
    h & (i64::MAX as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn segment_backward_equals_one_graph() {
        tch::manual_seed(0);
        let mut w1 =
            Tensor::randn([4, 4], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
        let mut w2 =
            Tensor::randn([4, 4], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
        let x = Tensor::randn([3, 4], (Kind::Double, tch::Device::Cpu));
        // One graph.
        let y = x.matmul(&w1).tanh().matmul(&w2).sum(Kind::Double);
        y.backward();
        let (g1, g2) = (w1.grad().copy(), w2.grad().copy());
        w1.zero_grad();
        w2.zero_grad();
        // Two segments.
        let s1 = Seg::run(&[(&x, false)], |l| Ok(l[0].matmul(&w1).tanh())).unwrap();
        let s2 = Seg::run(&[(&s1.value(), true)], |l| Ok(l[0].matmul(&w2))).unwrap();
        let ones = s2.out.ones_like();
        let g = s2.backward(&ones).unwrap().remove(0).unwrap();
        assert!(s1.backward(&g).unwrap()[0].is_none());
        assert_eq!(w1.grad(), g1);
        assert_eq!(w2.grad(), g2);
    }

    #[test]
    fn seeds_mix_every_part() {
        assert_eq!(mix(&[1, 2, 3]), mix(&[1, 2, 3]));
        assert_ne!(mix(&[1, 2, 3]), mix(&[1, 2, 4]));
        assert_ne!(mix(&[1, 2, 3]), mix(&[2, 1, 3]));
    }
}
