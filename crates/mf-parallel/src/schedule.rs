//! Pipeline schedules as plain functions of (stage, stages, micro-batches), as Megatron-LM
//! writes them: the runtime executes the returned list in order.

/// One step of a pipeline schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeOp {
    /// Forward of micro-batch `i` (receive from the previous stage, send to the next).
    Forward(usize),
    /// Backward of micro-batch `i` (receive from the next stage, send to the previous).
    Backward(usize),
}

/// The 1F1B (one-forward-one-backward) schedule of `stage` out of `stages` for `micro`
/// micro-batches: `stages - stage - 1` warm-up forwards, then alternating forward and
/// backward, then the remaining backwards. A stage holds at most `stages - stage` micro-batches'
/// activations at once, instead of all `micro` as in GPipe.
pub fn one_f_one_b(stage: usize, stages: usize, micro: usize) -> Vec<PipeOp> {
    let warmup = (stages - stage - 1).min(micro);
    let mut ops: Vec<PipeOp> = (0..warmup).map(PipeOp::Forward).collect();
    for i in warmup..micro {
        ops.push(PipeOp::Forward(i));
        ops.push(PipeOp::Backward(i - warmup));
    }
    ops.extend((micro - warmup..micro).map(PipeOp::Backward));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use PipeOp::{Backward as B, Forward as F};

    #[test]
    fn one_f_one_b_order() {
        assert_eq!(
            one_f_one_b(0, 2, 3),
            vec![F(0), F(1), B(0), F(2), B(1), B(2)]
        );
        assert_eq!(
            one_f_one_b(1, 2, 3),
            vec![F(0), B(0), F(1), B(1), F(2), B(2)]
        );
        assert_eq!(one_f_one_b(0, 1, 2), vec![F(0), B(0), F(1), B(1)]);
        // Every micro-batch is run forward and then backward exactly once on every stage.
        for stages in 1..5 {
            for micro in stages..7 {
                for s in 0..stages {
                    let ops = one_f_one_b(s, stages, micro);
                    for i in 0..micro {
                        let f = ops.iter().position(|&o| o == F(i)).unwrap();
                        let b = ops.iter().position(|&o| o == B(i)).unwrap();
                        assert!(f < b);
                    }
                    assert_eq!(ops.len(), 2 * micro);
                    // In flight: at most stages - s micro-batches between their F and B.
                    let mut live = 0usize;
                    let mut peak = 0usize;
                    for o in &ops {
                        match o {
                            F(_) => live += 1,
                            B(_) => live -= 1,
                        }
                        peak = peak.max(live);
                    }
                    assert!(
                        peak <= stages - s,
                        "stage {s}/{stages} m={micro} peak {peak}"
                    );
                }
            }
        }
    }
}
