//! The causal-LM head's cross-entropy, fused with the head's matmul and computed a chunk of
//! rows at a time, so that training never holds the `[tokens, vocab]` logits (at vocabulary
//! 50257 and 2048 tokens that is 411 MB, plus as much again for their gradient).
//!
//! tch has no custom autograd function, so the gradient is computed here, chunk by chunk, in
//! the forward pass: for each chunk `softmax(z) - onehot(label)` is formed in place of the
//! logits `z` and multiplied into the gradients of the hidden states (`[rows, hidden]`) and of
//! the head (`[vocab, hidden]`). The returned loss carries them through a linear surrogate
//! `loss + Σ h·gh + Σ w·gw - (the same, detached)`: its value is the loss exactly, and its
//! backward hands `gh` to `h` and `gw` to `w`, scaled by whatever the caller multiplies the
//! loss with (gradient accumulation, loss scaling), with autograd doing the accumulation into
//! a tied embedding's gradient.
use mf_core::{invalid, Result};
use tch::{Kind, Tensor};

/// Elements of one chunk's logits: 8 Mi f32 values (32 MiB) bounds the working set whatever
/// the vocabulary, while keeping the chunk's GEMMs large enough to run at full rate.
const CHUNK_ELEMENTS: i64 = 1 << 23;
/// The fewest rows per chunk, so that a huge vocabulary still gets GEMM-shaped chunks.
const MIN_CHUNK_ROWS: i64 = 64;

/// A vocabulary split over tensor-parallel ranks: this rank holds the head rows
/// `start..start + w.size()[0]`, and the row-wise max and sums are all-reduced through
/// these functions (the parallel runtime's communicator).
pub struct VocabShard<'a> {
    /// The first vocabulary id this rank holds.
    pub start: i64,
    /// Element-wise max over the group.
    pub all_reduce_max: &'a dyn Fn(Tensor) -> Result<Tensor>,
    /// Element-wise sum over the group.
    pub all_reduce_sum: &'a dyn Fn(Tensor) -> Result<Tensor>,
}

/// Rows per chunk for a vocabulary (or vocabulary shard) of `vocab` logits.
pub fn chunk_rows(vocab: i64) -> i64 {
    (CHUNK_ELEMENTS / vocab.max(1)).max(MIN_CHUNK_ROWS)
}

/// Whether autograd records operations here (tch does not expose the flag itself).
fn grad_mode_enabled(dev: tch::Device) -> Result<bool> {
    let probe = Tensor::f_zeros([1], (Kind::Float, dev))?.set_requires_grad(true);
    Ok(probe.f_mul_scalar(1.0)?.requires_grad())
}

/// Number of targets that are not `-100`, as the normaliser of a mean loss.
pub fn counted_targets(targets: &Tensor) -> Result<i64> {
    Ok(targets.f_ne(-100)?.f_sum(Kind::Int64)?.f_int64_value(&[])?)
}

/// `Σ CE(h · wᵀ, targets) / normalizer` over the positions of `h [..., hidden]` (any leading
/// shape: `[batch, len, hidden]` or `[rows, hidden]`) against `targets` of that leading shape
/// (`-100` ignored), with `w [vocab, hidden]` the head. Gradients reach `h` and `w` when they
/// require them and grad mode is on; the logits exist one chunk at a time.
pub fn lm_head_cross_entropy(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    normalizer: f64,
    shard: Option<&VocabShard<'_>>,
) -> Result<Tensor> {
    let shape = h.size();
    let (vocab, w_hidden) = w.size2().map_err(|_| {
        invalid(format!(
            "LM-head loss: head weight is {:?}, expected [vocab, hidden]",
            w.size()
        ))
    })?;
    let hidden = shape.last().copied().unwrap_or(0);
    if shape.len() < 2 || w_hidden != hidden || targets.size() != shape[..shape.len() - 1] {
        return Err(invalid(format!(
            "LM-head loss: hidden states {:?}, head {:?} and targets {:?} do not match",
            h.size(),
            w.size(),
            targets.size()
        )));
    }
    let rows = targets.numel() as i64;
    let h = &h.f_reshape([rows, hidden])?;
    let targets = &targets.f_reshape([rows])?;
    let dev = h.device();
    let targets = targets.f_to_kind(Kind::Int64)?.f_to_device(dev)?;
    let start = shard.map_or(0, |s| s.start);
    let on = grad_mode_enabled(dev)?;
    let grad_h = on && h.requires_grad();
    let grad_w = on && w.requires_grad();
    let want_grad = grad_h || grad_w;
    // f16 has too little range for unscaled per-token gradients (~1e-8): they are kept in f32,
    // and rounded to f16 only after the caller's loss scale has multiplied them.
    let gkind = if w.kind() == Kind::Half {
        Kind::Float
    } else {
        w.kind()
    };
    let _guard = tch::no_grad_guard();
    let hd = h.f_detach()?;
    let wd = w.f_detach()?;
    let wg = wd.f_to_kind(gkind)?;
    let gh = if grad_h {
        Some(Tensor::f_empty([rows, hidden], (gkind, dev))?)
    } else {
        None
    };
    let gw = if grad_w {
        Some(Tensor::f_zeros([vocab, hidden], (Kind::Float, dev))?)
    } else {
        None
    };
    let mut total = Tensor::f_zeros([], (Kind::Float, dev))?;
    let step = chunk_rows(vocab);
    let mut r0 = 0;
    while r0 < rows {
        let n = step.min(rows - r0);
        let hc = hd.f_narrow(0, r0, n)?;
        let tc = targets.f_narrow(0, r0, n)?;
        let mut z = hc.f_matmul(&wd.f_tr()?)?.f_to_kind(Kind::Float)?;
        let valid = tc.f_ne(-100)?;
        let mine = tc.f_ge(start)?.f_logical_and(&tc.f_lt(start + vocab)?)?;
        let idx = (&tc - start)
            .f_where_scalarother(&mine, 0)?
            .f_unsqueeze(-1)?;
        let mut zt =
            z.f_gather(-1, &idx, false)?.f_squeeze_dim(-1)? * mine.f_to_kind(Kind::Float)?;
        let mut m = z.f_amax([-1], false)?;
        if let Some(s) = shard {
            m = (s.all_reduce_max)(m)?;
            zt = (s.all_reduce_sum)(zt)?;
        }
        let _ = z.f_sub_(&m.f_unsqueeze(-1)?)?.f_exp_()?;
        let mut se = z.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?;
        if let Some(s) = shard {
            se = (s.all_reduce_sum)(se)?;
        }
        let vf = valid.f_to_kind(Kind::Float)?;
        let per_row = (se.f_log()? + &m - &zt) * &vf;
        let _ = total.f_add_(&per_row.f_sum(Kind::Float)?)?;
        if want_grad {
            // z becomes softmax(z) - onehot(target), scaled by 1/normalizer on counted rows.
            let _ = z.f_div_(&se.f_unsqueeze(-1)?)?;
            let hit =
                (mine.f_logical_and(&valid)?.f_to_kind(Kind::Float)? * -1.0).f_unsqueeze(-1)?;
            let _ = z.f_scatter_add_(-1, &idx, &hit)?;
            let _ = z.f_mul_(&(vf / normalizer).f_unsqueeze(-1)?)?;
            let g = z.f_to_kind(gkind)?;
            if let Some(gh) = &gh {
                let part = gh.f_narrow(0, r0, n)?;
                let _ = g.f_mm_out(&part, &wg)?;
            }
            if let Some(gw) = &gw {
                let mut acc = gw.shallow_clone();
                if gkind == Kind::Float {
                    let _ = acc.f_addmm_(&g.f_tr()?, &hc.f_to_kind(Kind::Float)?)?;
                } else {
                    // A bf16 product rounded once per chunk, summed in f32.
                    let part = g.f_tr()?.f_matmul(&hc.f_to_kind(gkind)?)?;
                    let _ = acc.f_add_(&part.f_to_kind(Kind::Float)?)?;
                }
            }
        }
        r0 += n;
    }
    let loss = total / normalizer;
    drop(_guard);
    if !want_grad {
        return Ok(loss);
    }
    let mut lin = Tensor::f_zeros([], (Kind::Float, dev))?;
    if let Some(gh) = gh {
        lin += h.f_mul(&gh)?.f_sum(Kind::Float)?;
    }
    if let Some(gw) = gw {
        lin += w.f_mul(&gw.f_to_kind(gkind)?)?.f_sum(Kind::Float)?;
    }
    Ok(loss + (&lin - lin.f_detach()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: full logits, libtorch's cross-entropy, autograd.
    fn reference(h: &Tensor, w: &Tensor, t: &Tensor) -> (f64, Tensor, Tensor) {
        let hl = h.detach().set_requires_grad(true);
        let wl = w.detach().set_requires_grad(true);
        let loss = hl
            .matmul(&wl.tr())
            .to_kind(Kind::Float)
            .cross_entropy_loss::<Tensor>(t, None, tch::Reduction::Mean, -100, 0.0);
        loss.backward();
        (loss.double_value(&[]), hl.grad(), wl.grad())
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
            .abs()
            .max()
            .double_value(&[])
    }

    #[test]
    fn matches_full_logits_cross_entropy_and_its_gradients_over_several_chunks() {
        tch::manual_seed(0);
        // 300 rows of a 70000-word vocabulary: chunks of 119 rows, the last one partial.
        let (rows, hidden, vocab) = (300, 16, 70000);
        let h = Tensor::randn([rows, hidden], (Kind::Float, tch::Device::Cpu));
        let w = Tensor::randn([vocab, hidden], (Kind::Float, tch::Device::Cpu)) * 0.5;
        let t = Tensor::randint(vocab, [rows], (Kind::Int64, tch::Device::Cpu));
        let _ = t.narrow(0, 10, 5).fill_(-100);
        assert!(chunk_rows(vocab) < rows);
        let (want, gh_want, gw_want) = reference(&h, &w, &t);

        let hl = h.detach().set_requires_grad(true);
        let wl = w.detach().set_requires_grad(true);
        let n = counted_targets(&t).unwrap();
        assert_eq!(n, rows - 5);
        let loss = lm_head_cross_entropy(&hl, &wl, &t, n as f64, None).unwrap();
        assert!((loss.double_value(&[]) - want).abs() < 1e-5 * want.abs());
        (loss * 3.0).backward();
        assert!(max_diff(&hl.grad(), &(&gh_want * 3.0)) < 1e-6);
        assert!(max_diff(&wl.grad(), &(&gw_want * 3.0)) < 1e-6);
    }

    #[test]
    fn without_grad_mode_it_only_computes_the_loss() {
        tch::manual_seed(1);
        let h = Tensor::randn([7, 8], (Kind::Float, tch::Device::Cpu));
        let w = Tensor::randn([50, 8], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let t = Tensor::randint(50, [7], (Kind::Int64, tch::Device::Cpu));
        let (want, _, _) = reference(&h, &w, &t);
        let loss = tch::no_grad(|| lm_head_cross_entropy(&h, &w, &t, 7.0, None)).unwrap();
        assert!(!loss.requires_grad());
        assert!((loss.double_value(&[]) - want).abs() < 1e-6);
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let h = Tensor::zeros([4, 8], (Kind::Float, tch::Device::Cpu));
        let w = Tensor::zeros([10, 6], (Kind::Float, tch::Device::Cpu));
        let t = Tensor::zeros([4], (Kind::Int64, tch::Device::Cpu));
        let e = lm_head_cross_entropy(&h, &w, &t, 4.0, None).unwrap_err();
        assert!(e.to_string().contains("do not match"), "{e}");
    }
}
