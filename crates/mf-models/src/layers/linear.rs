//! Column- and row-parallel linear layers (Megatron-LM naming).
//!
//! Column-parallel splits the output features across tensor-parallel ranks, row-parallel the
//! input features; the rank-local weights keep the checkpoint's parameter names and layout.
//! With `TensorParallel::single()` both are plain linears. The communication that makes
//! `world_size > 1` work (the `f`/`g` regions) is owned by mf-parallel, which builds layers with
//! [`TensorParallel::with_runtime`]; anywhere else asking for more than one rank is an error, not
//! a silent single-rank run.
use mf_core::{invalid, Result};
use tch::Tensor;

use super::params::{Init, Vars};

use crate::lora::{LoraAdapter, LoraHost};

/// The tensor-parallel position of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorParallel {
    /// This rank's index in the tensor-parallel group.
    pub rank: usize,
    /// Number of ranks in the group.
    pub world_size: usize,
    /// Whether the parallel runtime drives these layers and owns their communication.
    runtime: bool,
}

impl TensorParallel {
    /// No tensor parallelism.
    pub fn single() -> Self {
        TensorParallel {
            rank: 0,
            world_size: 1,
            runtime: false,
        }
    }

    /// Rank `rank` of `world_size`, for layers the parallel runtime (mf-parallel) drives: it
    /// performs the all-reduce / all-gather the sharded layers need between their segments.
    pub fn with_runtime(rank: usize, world_size: usize) -> Result<Self> {
        if world_size == 0 || rank >= world_size {
            return Err(invalid(format!(
                "tensor parallel rank {rank} is out of range for {world_size} rank(s)"
            )));
        }
        Ok(TensorParallel {
            rank,
            world_size,
            runtime: true,
        })
    }

    /// Checks that `dim` splits evenly and that a communicator exists for `world_size > 1`.
    pub fn shard(&self, dim: usize, what: &str) -> Result<usize> {
        self.require_communicator(what)?;
        if !dim.is_multiple_of(self.world_size) {
            return Err(invalid(format!(
                "{what}: dimension {dim} does not split over {} ranks",
                self.world_size
            )));
        }
        Ok(dim / self.world_size)
    }

    /// Fails for `world_size > 1` until the parallel runtime attaches a communicator.
    pub fn require_communicator(&self, what: &str) -> Result<()> {
        if self.world_size != 1 && !self.runtime {
            return Err(invalid(format!(
                "tensor parallel world size {} for {what}: no communicator is attached \
                 (model_parallel > 1 needs the parallel runtime)",
                self.world_size
            )));
        }
        Ok(())
    }
}

/// How the weight matrix is stored, following the checkpoint format of the model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[in, out]`, as GPT-2's `Conv1D` (y = x W + b).
    InOut,
    /// `[out, in]`, as `nn.Linear` (y = x Wᵀ + b).
    OutIn,
}

fn make_weight(p: &Vars, layout: WeightLayout, inp: i64, out: i64, std: f64) -> Result<Tensor> {
    let dims = match layout {
        WeightLayout::InOut => [inp, out],
        WeightLayout::OutIn => [out, inp],
    };
    p.var("weight", &dims, Init::Normal(std))
}

fn make_bias(p: &Vars, bias: bool, out: i64) -> Result<Option<Tensor>> {
    bias.then(|| p.var("bias", &[out], Init::Zeros)).transpose()
}

/// `y = x W + b` over the last dimension of `x`, for a weight stored in `layout`: decode-sized
/// inputs go to [`crate::kernels`], the rest to libtorch's GEMM.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, layout: WeightLayout) -> Tensor {
    let [y] = linears(x, [(w, b)], layout);
    y
}

/// [`linear`] for several weights of one layout that share the input `x` (q/k/v, gate/up):
/// decode-sized inputs run as one parallel region over all of them
/// ([`crate::kernels::small_batch_linears`]), the rest one GEMM each.
pub fn linears<const N: usize>(
    x: &Tensor,
    ws: [(&Tensor, Option<&Tensor>); N],
    layout: WeightLayout,
) -> [Tensor; N] {
    let mut shape = x.size();
    let last = shape.len() - 1;
    let x2 = x.reshape([-1, shape[last]]);
    let ys = match crate::kernels::small_batch_linears(&x2, &ws, layout)
        .and_then(|ys| <[Tensor; N]>::try_from(ys).ok())
    {
        Some(ys) => ys,
        None => ws.map(|(w, b)| {
            let w = match layout {
                WeightLayout::InOut => w.shallow_clone(),
                WeightLayout::OutIn => w.tr(),
            };
            // addmm fuses the bias into the GEMM's output pass.
            match b {
                Some(b) => b.addmm(&x2, &w),
                None => x2.mm(&w),
            }
        }),
    };
    ys.map(|y| {
        shape[last] = y.size()[1];
        y.reshape(shape.as_slice())
    })
}

/// A linear whose output features are split across tensor-parallel ranks.
#[derive(Debug)]
pub struct ColumnParallelLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    layout: WeightLayout,
    lora: Option<LoraAdapter>,
}

/// y + the low-rank update of an attached LoRA adapter.
fn with_lora(y: Tensor, x: &Tensor, lora: Option<&LoraAdapter>, train: bool) -> Tensor {
    match lora {
        Some(a) => y + a.forward(x, train),
        None => y,
    }
}

/// Folds `scaling · B A` into a weight stored in `layout`.
fn merge_into(weight: &Tensor, layout: WeightLayout, a: &LoraAdapter) {
    let _g = tch::no_grad_guard();
    let delta = a.delta().to_kind(weight.kind());
    let delta = match layout {
        WeightLayout::OutIn => delta,
        WeightLayout::InOut => delta.tr(),
    };
    let mut w = weight.shallow_clone();
    let _ = w.g_add_(&delta);
}

impl ColumnParallelLinear {
    /// Creates `in_features -> out_features / world_size` with normal(0, std) init, zero bias.
    pub fn new(
        p: &Vars,
        in_features: usize,
        out_features: usize,
        bias: bool,
        layout: WeightLayout,
        tp: TensorParallel,
        init_std: f64,
    ) -> Result<Self> {
        let out = tp.shard(out_features, "column-parallel output features")? as i64;
        Ok(ColumnParallelLinear {
            weight: make_weight(p, layout, in_features as i64, out, init_std)?,
            bias: make_bias(p, bias, out)?,
            layout,
            lora: None,
        })
    }

    /// Creates `in_features -> local_out` where the caller planned this rank's slice itself,
    /// because it is not an even split of the full output: grouped-query k/v projections
    /// replicate one kv head on several ranks when the world size exceeds the kv heads.
    pub fn with_local_out(
        p: &Vars,
        in_features: usize,
        local_out: usize,
        bias: bool,
        layout: WeightLayout,
        tp: TensorParallel,
        init_std: f64,
    ) -> Result<Self> {
        tp.require_communicator("column-parallel output features")?;
        let out = local_out as i64;
        Ok(ColumnParallelLinear {
            weight: make_weight(p, layout, in_features as i64, out, init_std)?,
            bias: make_bias(p, bias, out)?,
            layout,
            lora: None,
        })
    }

    /// y = x W + b on this rank's output slice.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_t(x, false)
    }

    /// Like `forward`; `train` turns on an attached LoRA adapter's dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = linear(x, &self.weight, self.bias.as_ref(), self.layout);
        with_lora(y, x, self.lora.as_ref(), train)
    }

    /// `forward_t` of several layers over one input (q/k/v, gate/up), their products in one
    /// [`linears`] call when they share a layout; LoRA adapters still apply per layer.
    pub fn forward_many<const N: usize>(
        layers: [&ColumnParallelLinear; N],
        x: &Tensor,
        train: bool,
    ) -> [Tensor; N] {
        let layout = layers.first().map_or(WeightLayout::OutIn, |l| l.layout);
        if layers.iter().any(|l| l.layout != layout) {
            return layers.map(|l| l.forward_t(x, train));
        }
        let ys = linears(x, layers.map(|l| (&l.weight, l.bias.as_ref())), layout);
        let mut i = 0;
        ys.map(|y| {
            let l = layers[i];
            i += 1;
            with_lora(y, x, l.lora.as_ref(), train)
        })
    }

    /// The layer as a plain `[out, in]` matrix (a view, gradients flow to the weight), when it
    /// is one: no bias and no LoRA adapter.
    pub fn as_matrix(&self) -> Option<Tensor> {
        if self.bias.is_some() || self.lora.is_some() {
            return None;
        }
        Some(match self.layout {
            WeightLayout::OutIn => self.weight.shallow_clone(),
            WeightLayout::InOut => self.weight.tr(),
        })
    }
}

/// A linear whose input features are split across tensor-parallel ranks.
#[derive(Debug)]
pub struct RowParallelLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    layout: WeightLayout,
    lora: Option<LoraAdapter>,
}

impl RowParallelLinear {
    /// Creates `in_features / world_size -> out_features` with normal(0, std) init, zero bias.
    pub fn new(
        p: &Vars,
        in_features: usize,
        out_features: usize,
        bias: bool,
        layout: WeightLayout,
        tp: TensorParallel,
        init_std: f64,
    ) -> Result<Self> {
        let inp = tp.shard(in_features, "row-parallel input features")? as i64;
        Ok(RowParallelLinear {
            weight: make_weight(p, layout, inp, out_features as i64, init_std)?,
            bias: make_bias(p, bias, out_features as i64)?,
            layout,
            lora: None,
        })
    }

    /// y = x W + b; with one rank the partial sum is already the full result.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_t(x, false)
    }

    /// Like `forward`; `train` turns on an attached LoRA adapter's dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = linear(x, &self.weight, self.bias.as_ref(), self.layout);
        with_lora(y, x, self.lora.as_ref(), train)
    }

    /// `x W` without the bias: this rank's partial sum, which the parallel runtime reduces over
    /// the tensor-parallel group before adding [`RowParallelLinear::bias`] once.
    pub fn forward_partial(&self, x: &Tensor) -> Tensor {
        linear(x, &self.weight, None, self.layout)
    }

    /// The output bias (replicated on every tensor-parallel rank).
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

macro_rules! lora_host {
    ($t:ty) => {
        impl LoraHost for $t {
            fn features(&self) -> (i64, i64) {
                let s = self.weight.size();
                match self.layout {
                    WeightLayout::InOut => (s[0], s[1]),
                    WeightLayout::OutIn => (s[1], s[0]),
                }
            }
            fn weight(&self) -> &Tensor {
                &self.weight
            }
            fn adapter(&self) -> Option<&LoraAdapter> {
                self.lora.as_ref()
            }
            fn set_adapter(&mut self, adapter: Option<LoraAdapter>) {
                self.lora = adapter;
            }
            fn merge(&mut self) {
                if let Some(a) = self.lora.take() {
                    merge_into(&self.weight, self.layout, &a);
                }
            }
            fn fan_in_fan_out(&self) -> bool {
                self.layout == WeightLayout::InOut
            }
        }
    };
}

lora_host!(ColumnParallelLinear);
lora_host!(RowParallelLinear);
