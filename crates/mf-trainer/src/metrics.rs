//! `compute_metrics`: user metrics over the evaluation set's predictions.
use std::collections::BTreeMap;

use mf_core::{invalid, Result};
use tch::{Kind, Tensor};

/// What `compute_metrics` sees: for every evaluated token position, the model's most likely
/// next token and the true next token (HF's `EvalPrediction` after an argmax over the logits,
/// which avoids keeping `[samples, len, vocab]` logits).
#[derive(Debug)]
pub struct EvalPrediction {
    /// Predicted next-token ids, `[samples, len]` int64.
    pub predictions: Tensor,
    /// True next-token ids, `[samples, len]` int64.
    pub label_ids: Tensor,
}

/// A metric function: named values computed from the predictions.
pub type ComputeMetrics = Box<dyn Fn(&EvalPrediction) -> Result<BTreeMap<String, f64>>>;

/// Next-token accuracy: the fraction of positions where the argmax is the true token.
pub fn accuracy(p: &EvalPrediction) -> Result<BTreeMap<String, f64>> {
    if p.predictions.size() != p.label_ids.size() {
        return Err(invalid(format!(
            "predictions {:?} and label_ids {:?} differ in shape",
            p.predictions.size(),
            p.label_ids.size()
        )));
    }
    let n = p.label_ids.numel();
    if n == 0 {
        return Err(invalid("no predictions to score"));
    }
    let hits = p
        .predictions
        .eq_tensor(&p.label_ids)
        .to_kind(Kind::Double)
        .sum(Kind::Double)
        .double_value(&[]);
    Ok(BTreeMap::from([("accuracy".to_string(), hits / n as f64)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_counts_matching_positions() {
        let p = EvalPrediction {
            predictions: Tensor::from_slice(&[1i64, 2, 3, 4]).reshape([2, 2]),
            label_ids: Tensor::from_slice(&[1i64, 0, 3, 0]).reshape([2, 2]),
        };
        assert_eq!(accuracy(&p).unwrap()["accuracy"], 0.5);
        let bad = EvalPrediction {
            predictions: Tensor::from_slice(&[1i64, 2]),
            label_ids: Tensor::from_slice(&[1i64, 2, 3]),
        };
        assert!(accuracy(&bad).is_err());
    }
}
