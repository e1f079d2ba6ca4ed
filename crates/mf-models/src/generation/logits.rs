//! Logits processors and warpers with transformers' semantics and order:
//! repetition penalty, then temperature, top-k, top-p.
use tch::{Kind, Tensor};

/// `score < 0 ? score * p : score / p` on every token already in the row's history.
/// `history` rows list the token ids seen (prompt without padding + generated).
pub fn repetition_penalty(scores: &Tensor, history: &[Vec<u32>], penalty: f64) -> Tensor {
    if penalty == 1.0 {
        return scores.shallow_clone();
    }
    let out = scores.copy();
    for (row, ids) in history.iter().enumerate() {
        if ids.is_empty() {
            continue;
        }
        let mut uniq: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        uniq.sort_unstable();
        uniq.dedup();
        let idx = Tensor::from_slice(&uniq).to_device(scores.device());
        let mut r = out.get(row as i64);
        let s = r.index_select(0, &idx);
        let pen = (&s * penalty).where_self(&s.lt(0.0), &(&s / penalty));
        let _ = r.index_copy_(0, &idx, &pen);
    }
    out
}

/// Keeps the `k` largest logits per row, the rest become -inf.
pub fn top_k(scores: &Tensor, k: usize) -> Tensor {
    let v = scores.size()[1] as usize;
    if k == 0 || k >= v {
        return scores.shallow_clone();
    }
    let (vals, _) = scores.topk(k as i64, -1, true, true);
    let kth = vals.narrow(1, k as i64 - 1, 1);
    scores.masked_fill(&scores.lt_tensor(&kth), f64::NEG_INFINITY)
}

/// Nucleus filtering: drops the least likely tokens whose cumulative probability stays
/// within `1 - p`, always keeping the most likely one.
pub fn top_p(scores: &Tensor, p: f64) -> Tensor {
    if p >= 1.0 {
        return scores.shallow_clone();
    }
    let (sorted, idx) = scores.sort(-1, false);
    let cum = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
    let remove = cum.le(1.0 - p);
    let n = remove.size()[1];
    let _ = remove.narrow(1, n - 1, 1).fill_(0);
    let remove = remove.scatter(1, &idx, &remove);
    scores.masked_fill(&remove, f64::NEG_INFINITY)
}
