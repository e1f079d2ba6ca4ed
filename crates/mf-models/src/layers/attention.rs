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
/// `dropout` (0 at inference).
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask, dropout: f64) -> Tensor {
    match mask {
        AttnMask::None => Tensor::scaled_dot_product_attention(
            q,
            k,
            v,
            None::<&Tensor>,
            dropout,
            false,
            None,
            false,
        ),
        AttnMask::Causal => Tensor::scaled_dot_product_attention(
            q,
            k,
            v,
            None::<&Tensor>,
            dropout,
            true,
            None,
            false,
        ),
        AttnMask::Explicit(m) => {
            Tensor::scaled_dot_product_attention(q, k, v, Some(m), dropout, false, None, false)
        }
    }
}
