//! Attention masks and libtorch's fused scaled-dot-product attention.
use tch::{Kind, Tensor};

/// A boolean mask `[batch, 1, q_len, past + q_len]` (true = may attend) combining causality with
/// the key padding mask. `None` when no masking is needed (a single query with no padding).
///
/// Rows of padding queries would be fully masked and produce NaN that leaks through later
/// layers, so every query may always attend to its own position.
pub fn attention_mask(
    attention_mask: Option<&Tensor>,
    past: i64,
    q_len: i64,
    device: tch::Device,
) -> Option<Tensor> {
    if attention_mask.is_none() && q_len == 1 {
        return None;
    }
    let total = past + q_len;
    let q_pos = Tensor::arange_start(past, total, (Kind::Int64, device)).unsqueeze(1);
    let k_pos = Tensor::arange(total, (Kind::Int64, device)).unsqueeze(0);
    let causal = k_pos.le_tensor(&q_pos); // [q, k]
    let mask = match attention_mask {
        None => causal.unsqueeze(0).unsqueeze(0),
        Some(am) => {
            let keys = am.to_device(device).ne(0).unsqueeze(1).unsqueeze(1); // [b,1,1,k]
            let own = k_pos.eq_tensor(&q_pos); // [q,k]
            causal.logical_and(&keys).logical_or(&own)
        }
    };
    Some(mask)
}

/// `softmax(q kᵀ / sqrt(d) + mask) v` through libtorch's fused kernel.
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, false, None, false)
}
