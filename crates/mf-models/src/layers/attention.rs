//! Attention masks and libtorch's fused scaled-dot-product attention.
use tch::{Kind, Tensor};

/// Which masking an attention call needs.
#[derive(Debug)]
pub enum AttnMask {
    /// No masking: a single new query over its whole history.
    None,
    /// Plain causal masking from position 0 (lets libtorch pick its fused causal kernel).
    Causal,
    /// A boolean mask `[batch or 1, 1, q_len, past + q_len]`, true = may attend.
    Explicit(Tensor),
    /// A float bias added to the scores `[batch or 1, heads or 1, q_len, past + q_len]`,
    /// `-inf` where a key is masked (ALiBi folds its position biases into it).
    Additive(Tensor),
}

impl AttnMask {
    /// The mask as a boolean tensor `[batch or 1, 1, q_len, past + q_len]` (true = may
    /// attend), for callers that add their own biases to it.
    pub fn to_bool(&self, past: i64, q_len: i64, device: tch::Device) -> Tensor {
        match self {
            AttnMask::Explicit(m) => m.shallow_clone(),
            AttnMask::Additive(b) => b.isfinite(),
            AttnMask::None | AttnMask::Causal => {
                let total = past + q_len;
                let q_pos = Tensor::arange_start(past, total, (Kind::Int64, device)).unsqueeze(1);
                let k_pos = Tensor::arange(total, (Kind::Int64, device)).unsqueeze(0);
                k_pos.le_tensor(&q_pos).unsqueeze(0).unsqueeze(0)
            }
        }
    }
}

/// ALiBi slopes of `num_heads` heads, as transformers' `_get_alibi_slopes` computes them in
/// f32: a geometric sequence for the largest power of two, and for other head counts every
/// other slope of the next power of two's sequence.
pub fn alibi_slopes(num_heads: usize, device: tch::Device) -> Tensor {
    let n = num_heads.max(1);
    let closest = 1usize << n.ilog2();
    let base = |p2: usize| 2f64.powf(-(2f64.powf(-((p2 as f64).log2() - 3.0))));
    let powers = |start: i64, end: i64, step: i64| {
        Tensor::arange_start_step(start, end, step, (Kind::Int, device))
    };
    let pow = |b: f64, e: &Tensor| {
        Tensor::from(b as f32)
            .to_device(device)
            .pow(e)
            .to_kind(Kind::Float)
    };
    let slopes = pow(base(closest), &powers(1, 1 + closest as i64, 1));
    if closest == n {
        return slopes;
    }
    let rest = closest.min(n - closest) as i64;
    let extra = pow(base(2 * closest), &powers(1, 1 + 2 * rest, 2));
    Tensor::cat(&[slopes, extra], 0)
}

/// The mask for `q_len` new queries after `past` cached positions, combining causality with
/// the key padding mask (`attention_mask`, `[batch, past + q_len]`, 1 = real token).
///
/// Rows of padding queries would be fully masked and produce NaN that leaks through later
/// layers, so every query may always attend to its own position.
pub fn attention_mask(
    attention_mask: Option<&Tensor>,
    past: i64,
    q_len: i64,
    device: tch::Device,
) -> AttnMask {
    match attention_mask {
        None if q_len == 1 => return AttnMask::None,
        None if past == 0 => return AttnMask::Causal,
        _ => {}
    }
    let total = past + q_len;
    let q_pos = Tensor::arange_start(past, total, (Kind::Int64, device)).unsqueeze(1);
    let k_pos = Tensor::arange(total, (Kind::Int64, device)).unsqueeze(0);
    let causal = k_pos.le_tensor(&q_pos); // [q, k]
    AttnMask::Explicit(match attention_mask {
        None => causal.unsqueeze(0).unsqueeze(0),
        Some(am) => {
            let keys = am.to_device(device).ne(0).unsqueeze(1).unsqueeze(1); // [b,1,1,k]
            let own = k_pos.eq_tensor(&q_pos); // [q,k]
            causal.logical_and(&keys).logical_or(&own)
        }
    })
}

/// `softmax(q kᵀ / sqrt(d) + mask) v` through libtorch's fused kernel, with attention dropout
/// `dropout` (0 at inference). `k`/`v` may have fewer heads than `q` (grouped-query
/// attention): each kv head then serves `q_heads / kv_heads` consecutive query heads, without
/// materialising repeated keys.
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask, dropout: f64) -> Tensor {
    // A decode step (one query row over the cache) takes the Rust kernel where it applies.
    let keep = match mask {
        AttnMask::None => Some(None),
        AttnMask::Explicit(m) => Some(Some(m)),
        AttnMask::Causal | AttnMask::Additive(_) => None,
    };
    if let Some(keep) = keep.filter(|_| dropout == 0.0) {
        if let Some(out) = crate::kernels::attention::decode_attention(q, k, v, keep) {
            return out;
        }
    }
    let gqa = q.size().get(1) != k.size().get(1);
    let (m, causal) = match mask {
        AttnMask::None => (None, false),
        AttnMask::Causal => (None, true),
        AttnMask::Explicit(m) | AttnMask::Additive(m) => (Some(m), false),
    };
    Tensor::scaled_dot_product_attention(q, k, v, m, dropout, causal, None, gqa)
}

/// Causal attention for training with attention-probability dropout drawn from `seed`
/// ([`crate::layers::hash_dropout`]): the fused kernel draws from libtorch's process-global
/// generator, so with a seed the scores are computed explicitly. Without dropout (or seed)
/// this is the fused kernel.
pub fn causal_attention_seeded(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dropout: f64,
    seed: Option<u64>,
) -> Tensor {
    let Some(seed) = seed.filter(|_| dropout > 0.0) else {
        return sdpa(q, k, v, &AttnMask::Causal, 0.0);
    };
    let (hq, hk) = (q.size()[1], k.size()[1]);
    let (k, v) = if hq != hk {
        (
            k.repeat_interleave_self_int(hq / hk, 1, None),
            v.repeat_interleave_self_int(hq / hk, 1, None),
        )
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    let d = q.size()[3] as f64;
    let t = q.size()[2];
    let scores = q.matmul(&k.transpose(-2, -1)) / d.sqrt();
    let causal = Tensor::ones([t, t], (Kind::Bool, q.device())).triu(1);
    let scores = scores.masked_fill(&causal, f64::NEG_INFINITY);
    let probs = scores.softmax(-1, scores.kind());
    crate::layers::hash_dropout(&probs, dropout, seed).matmul(&v)
}

/// How one tensor-parallel rank holds the heads of a grouped-query attention layer.
///
/// Query heads split evenly over the ranks. Key/value heads split too while there are at
/// least as many as ranks; with more ranks than kv heads, each kv head is replicated on
/// `world_size / kv_heads` consecutive ranks, which are exactly the ranks whose query heads
/// read it, so attention stays rank-local either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadShard {
    /// Query heads on this rank.
    pub q_heads: usize,
    /// Key/value heads on this rank.
    pub kv_heads: usize,
    /// Global index of this rank's first key/value head (which rows of k_proj/v_proj it holds).
    pub kv_head_offset: usize,
    /// How many ranks hold a copy of each of this rank's kv heads (1 when they are split).
    pub kv_replicas: usize,
}

impl HeadShard {
    /// Plans rank `rank` of `world_size` for `num_heads` query heads and `num_kv_heads`
    /// key/value heads.
    pub fn plan(
        num_heads: usize,
        num_kv_heads: usize,
        rank: usize,
        world_size: usize,
    ) -> mf_core::Result<Self> {
        use mf_core::invalid;
        if num_heads == 0 || num_kv_heads == 0 || world_size == 0 || rank >= world_size {
            return Err(invalid(format!(
                "cannot shard {num_heads} heads / {num_kv_heads} kv heads for rank {rank} of \
                 {world_size}"
            )));
        }
        if !num_heads.is_multiple_of(num_kv_heads) {
            return Err(invalid(format!(
                "num_attention_heads {num_heads} is not divisible by num_key_value_heads \
                 {num_kv_heads}"
            )));
        }
        if !num_heads.is_multiple_of(world_size) {
            return Err(invalid(format!(
                "{num_heads} attention heads do not split over {world_size} tensor-parallel ranks"
            )));
        }
        let q_heads = num_heads / world_size;
        if num_kv_heads >= world_size {
            if !num_kv_heads.is_multiple_of(world_size) {
                return Err(invalid(format!(
                    "{num_kv_heads} kv heads do not split over {world_size} tensor-parallel ranks"
                )));
            }
            let kv_heads = num_kv_heads / world_size;
            return Ok(HeadShard {
                q_heads,
                kv_heads,
                kv_head_offset: rank * kv_heads,
                kv_replicas: 1,
            });
        }
        if !world_size.is_multiple_of(num_kv_heads) {
            return Err(invalid(format!(
                "{num_kv_heads} kv heads cannot be replicated evenly over {world_size} \
                 tensor-parallel ranks"
            )));
        }
        let replicas = world_size / num_kv_heads;
        Ok(HeadShard {
            q_heads,
            kv_heads: 1,
            kv_head_offset: rank / replicas,
            kv_replicas: replicas,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{alibi_slopes, HeadShard};

    #[test]
    fn alibi_slopes_follow_the_paper() {
        let s = Vec::<f32>::try_from(&alibi_slopes(8, tch::Device::Cpu)).unwrap();
        let want: Vec<f32> = (1..=8).map(|i| 0.5f32.powi(i)).collect();
        assert_eq!(s, want);
        // 6 heads: 4 from 2^(-2i), then 2^(-1), 2^(-3) from the 8-head sequence's odd terms.
        let s = Vec::<f32>::try_from(&alibi_slopes(6, tch::Device::Cpu)).unwrap();
        assert_eq!(s, vec![0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]);
    }

    #[test]
    fn gqa_heads_split_or_replicate() {
        // 64 q / 8 kv heads (LLaMA-2 70B) over 4 ranks: two kv heads per rank.
        let s = HeadShard::plan(64, 8, 3, 4).unwrap();
        assert_eq!(
            (s.q_heads, s.kv_heads, s.kv_head_offset, s.kv_replicas),
            (16, 2, 6, 1)
        );
        // Over 16 ranks: each kv head lives on the two ranks whose 4 q heads read it.
        for rank in 0..16 {
            let s = HeadShard::plan(64, 8, rank, 16).unwrap();
            assert_eq!((s.q_heads, s.kv_heads, s.kv_replicas), (4, 1, 2));
            let first_q = rank * s.q_heads;
            assert_eq!(s.kv_head_offset, first_q / (64 / 8));
        }
        assert!(HeadShard::plan(32, 6, 0, 1).is_err());
        assert!(HeadShard::plan(64, 8, 0, 3).is_err());
        assert!(HeadShard::plan(48, 3, 0, 6).is_ok());
        assert!(HeadShard::plan(48, 6, 0, 4).is_err());
    }
}
