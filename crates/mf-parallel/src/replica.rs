//! Data parallelism over full replicas, for models the sharded runtime cannot build.
//!
//! [`crate::engine::RankEngine`] builds each rank's pipeline stage at its tensor-parallel
//! position through `ParallelLM`, which only the causal LM families implement. Any other model
//! (a task head: BERT's classification, NER, question-answering and masked-LM heads) can still
//! train data-parallel when every rank holds all of its weights: the caller runs forward and
//! backward of its rows on its own replica, then a [`ReplicaStep`] sums the gradients over the
//! group (all-reduce; reduce-scatter with optimizer sharding, ZeRO-1), updates this rank's
//! slice of the flat parameters with the runtime's [`FlatOptimizer`] (the Trainer optimizer's
//! rules) and all-gathers the updated slices, so every replica ends the step with the weights
//! one device would have.
use std::hash::{Hash, Hasher};
use std::ops::Range;

use mf_core::comm::{Communicator, ReduceOp};
use mf_core::{invalid, MfError, Result};
use tch::{Kind, Tensor};

use crate::optim::{flatten, unflatten, BucketState, FlatOptimizer, OptimizerOptions};

/// Elements per flat bucket: bounds the gradient copies a reduction holds at once.
const BUCKET_ELEMS: i64 = 1 << 24;

/// How a [`ReplicaStep`] updates.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaOptions {
    /// Optimizer hyperparameters (TrainingArguments' names).
    pub optimizer: OptimizerOptions,
    /// Shard the optimizer state over the ranks (ZeRO-1): each rank keeps the moments of and
    /// updates `1/world` of every bucket.
    pub optimizer_shard: bool,
}

struct Bucket {
    /// Indices into the parameter list.
    params: Range<usize>,
    shapes: Vec<Vec<i64>>,
    /// Padded length (a multiple of the world size when sharded).
    len: i64,
    state: BucketState,
    grad: Option<Tensor>,
}

/// One rank's gradient reduction and optimizer step over a full replica's parameters.
pub struct ReplicaStep {
    comm: Box<dyn Communicator>,
    params: Vec<(String, Tensor)>,
    buckets: Vec<Bucket>,
    optim: FlatOptimizer,
    zero: bool,
    /// Per parameter: whether some rank's replica holds a gradient this step. The one-device
    /// optimizer skips parameters without one (no decay, no moment update), so these keep
    /// their values and moments.
    live: Vec<bool>,
}

fn numel(t: &Tensor) -> i64 {
    t.size().iter().product()
}

impl ReplicaStep {
    /// Joins the group (collective): checks that every rank's replica has the same parameter
    /// names and shapes, copies world rank 0's values into this rank's `params` (the model's
    /// own tensors, updated in place from then on) and lays out the flat buckets.
    pub fn new(
        comm: Box<dyn Communicator>,
        params: Vec<(String, Tensor)>,
        opts: &ReplicaOptions,
    ) -> Result<Self> {
        Self::with_buckets(comm, params, opts, BUCKET_ELEMS)
    }

    fn with_buckets(
        comm: Box<dyn Communicator>,
        params: Vec<(String, Tensor)>,
        opts: &ReplicaOptions,
        bucket_elems: i64,
    ) -> Result<Self> {
        let optim = FlatOptimizer::new(&opts.optimizer)?;
        let world = comm.world_size() as i64;
        let rank = comm.rank() as i64;
        if world > 1 {
            check_same_parameters(comm.as_ref(), &params)?;
            let _g = tch::no_grad_guard();
            for (_, p) in &params {
                let w = comm.broadcast(&p.detach().contiguous(), 0)?;
                p.shallow_clone().f_copy_(&w)?;
            }
        }
        let zero = opts.optimizer_shard && world > 1;
        let mut buckets = Vec::new();
        let mut start = 0;
        while start < params.len() {
            let (mut end, mut n) = (start, 0i64);
            while end < params.len() && (end == start || n + numel(&params[end].1) <= bucket_elems)
            {
                n += numel(&params[end].1);
                end += 1;
            }
            let members = &params[start..end];
            let shapes: Vec<Vec<i64>> = members.iter().map(|(_, p)| p.size()).collect();
            let len = if zero {
                (n + world - 1) / world * world
            } else {
                n
            };
            let slice = if zero {
                let per = len / world;
                rank * per..(rank + 1) * per
            } else {
                0..len
            };
            let cut = |t: Tensor| t.narrow(0, slice.start, slice.end - slice.start).copy();
            let values = cut(flatten(
                &members.iter().map(|(_, p)| p.detach()).collect::<Vec<_>>(),
                len,
            ));
            let decay = cut(flatten(
                &members
                    .iter()
                    .map(|(_, p)| p.ones_like() * if p.dim() > 1 { 1.0 } else { 0.0 })
                    .collect::<Vec<_>>(),
                len,
            ));
            let moments = || {
                if optim.has_moments() {
                    values.zeros_like()
                } else {
                    Tensor::zeros([0], (Kind::Float, values.device()))
                }
            };
            let state = BucketState {
                exp_avg: moments(),
                exp_avg_sq: moments(),
                // Every element of a slice is counted by its one owner (padding has no gradient).
                norm_mask: values.ones_like(),
                decay,
                values,
                slice,
            };
            buckets.push(Bucket {
                params: start..end,
                shapes,
                len,
                state,
                grad: None,
            });
            start = end;
        }
        let live = vec![true; params.len()];
        Ok(ReplicaStep {
            comm,
            params,
            buckets,
            optim,
            zero,
            live,
        })
    }

    /// This rank's index in the group.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// The number of replicas.
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// Optimizer updates done.
    pub fn optimizer_step(&self) -> usize {
        self.optim.step
    }

    /// Bytes of optimizer state this rank holds (the moments of its slices).
    pub fn optimizer_state_bytes(&self) -> usize {
        self.buckets
            .iter()
            .map(|b| (b.state.exp_avg.numel() + b.state.exp_avg_sq.numel()) * 4)
            .sum()
    }

    fn device(&self) -> tch::Device {
        self.params
            .first()
            .map_or(tch::Device::Cpu, |(_, p)| p.device())
    }

    /// Sums every rank's gradients (each rank's loss already weighted by its share of the
    /// batch) and `loss` over the group; returns the summed loss and the global L2 norm of the
    /// summed gradients, the same on every rank. Collective.
    pub fn reduce(&mut self, loss: f64) -> Result<(f64, f64)> {
        let dev = self.device();
        // One small reduction carries the loss and which parameters got gradients anywhere.
        let mut head = vec![loss];
        head.extend(
            self.params
                .iter()
                .map(|(_, p)| if p.grad().defined() { 1.0 } else { 0.0 }),
        );
        let head = Tensor::from_slice(&head).to_device(dev);
        let head = self.comm.all_reduce(&head, ReduceOp::Sum)?;
        let head = Vec::<f64>::try_from(head.to_device(tch::Device::Cpu))?;
        self.live = head[1..].iter().map(|&n| n > 0.0).collect();
        let world = self.comm.world_size();
        let mut sq = 0.0f64;
        for b in &mut self.buckets {
            let grads: Vec<Tensor> = self.params[b.params.clone()]
                .iter()
                .map(|(_, p)| {
                    let g = p.grad();
                    if g.defined() {
                        g.detach()
                    } else {
                        p.detach().zeros_like()
                    }
                })
                .collect();
            let flat = flatten(&grads, b.len);
            let g = if self.zero {
                self.comm.reduce_scatter(&flat, ReduceOp::Sum, 0)?
            } else if world > 1 {
                self.comm.all_reduce(&flat, ReduceOp::Sum)?
            } else {
                flat
            };
            sq += g.pow_tensor_scalar(2).sum(Kind::Double).double_value(&[]);
            b.grad = Some(g);
        }
        // Unsharded, every rank holds the whole reduced gradient: its own sum is the norm.
        if self.zero {
            sq = self
                .comm
                .all_reduce(&Tensor::from_slice(&[sq]).to_device(dev), ReduceOp::Sum)?
                .double_value(&[0]);
        }
        Ok((head[0], sq.sqrt()))
    }

    /// The slice mask of parameters without a gradient this step, if there are any.
    fn frozen_mask(&self, b: &Bucket) -> Option<Tensor> {
        let live = &self.live[b.params.clone()];
        if live.iter().all(|&l| l) {
            return None;
        }
        let parts: Vec<Tensor> = self.params[b.params.clone()]
            .iter()
            .zip(live)
            .map(|((_, p), &l)| p.detach().ones_like() * if l { 1.0 } else { 0.0 })
            .collect();
        let s = &b.state.slice;
        Some(
            flatten(&parts, b.len)
                .narrow(0, s.start, s.end - s.start)
                .gt(0.5),
        )
    }

    /// Clips (when `clip_coef < 1`), updates this rank's slices with learning rate `lr`,
    /// all-gathers them (sharded) into every replica's parameters and clears the gradients.
    /// Collective when sharded.
    pub fn apply(&mut self, lr: f64, clip_coef: f64) -> Result<()> {
        self.optim.begin_step();
        for bi in 0..self.buckets.len() {
            let g = self.buckets[bi]
                .grad
                .take()
                .ok_or_else(|| invalid("apply before reduce: the gradients were not reduced"))?;
            let g = if clip_coef < 1.0 { g * clip_coef } else { g };
            let live = self.frozen_mask(&self.buckets[bi]);
            let b = &mut self.buckets[bi];
            let before = live.as_ref().map(|_| {
                (
                    b.state.values.copy(),
                    b.state.exp_avg.copy(),
                    b.state.exp_avg_sq.copy(),
                )
            });
            self.optim.update(&mut b.state, &g, lr);
            if let (Some(live), Some((v, m, s))) = (live, before) {
                let _g = tch::no_grad_guard();
                let keep = |new: &mut Tensor, old: &Tensor| -> Result<()> {
                    if new.numel() > 0 {
                        let kept = new.f_where_self(&live, old)?;
                        new.f_copy_(&kept)?;
                    }
                    Ok(())
                };
                keep(&mut b.state.values, &v)?;
                keep(&mut b.state.exp_avg, &m)?;
                keep(&mut b.state.exp_avg_sq, &s)?;
            }
            let full = if self.zero {
                self.comm.all_gather(&b.state.values, 0)?
            } else {
                b.state.values.shallow_clone()
            };
            let _g = tch::no_grad_guard();
            for ((_, p), w) in self.params[b.params.clone()]
                .iter()
                .zip(unflatten(&full, &b.shapes))
            {
                p.shallow_clone().f_copy_(&w)?;
            }
        }
        self.zero_grad();
        Ok(())
    }

    /// Clears the gradients (as the one-device optimizer does: defined gradients become zeros)
    /// and drops any reduced gradient (a skipped step).
    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            p.shallow_clone().zero_grad();
        }
        for b in &mut self.buckets {
            b.grad = None;
        }
    }

    /// The optimizer state under the Trainer optimizer's names (`step`, `<name>.exp_avg`,
    /// `<name>.exp_avg_sq`), whole, on world rank 0 (`None` elsewhere). Collective when
    /// sharded.
    pub fn optimizer_state(&self) -> Result<Option<Vec<(String, Tensor)>>> {
        let mut out = vec![(
            "step".to_string(),
            Tensor::from_slice(&[self.optim.step as i64]),
        )];
        if self.optim.has_moments() {
            for b in &self.buckets {
                for (which, t) in [
                    ("exp_avg", &b.state.exp_avg),
                    ("exp_avg_sq", &b.state.exp_avg_sq),
                ] {
                    let flat = if self.zero {
                        self.comm.all_gather(t, 0)?
                    } else {
                        t.shallow_clone()
                    };
                    for (i, v) in b.params.clone().zip(unflatten(&flat, &b.shapes)) {
                        out.push((format!("{}.{which}", self.params[i].0), v));
                    }
                }
            }
        }
        Ok((self.comm.rank() == 0).then_some(out))
    }

    /// Restores the step count and this rank's slices of the moments from whole tensors under
    /// the Trainer optimizer's names (a checkpoint written by one device or by any layout).
    pub fn load_optimizer_state(&mut self, get: &dyn Fn(&str) -> Result<Tensor>) -> Result<()> {
        self.optim.step = get("step")?.int64_value(&[0]) as usize;
        if !self.optim.has_moments() {
            return Ok(());
        }
        let dev = self.device();
        for b in &mut self.buckets {
            for which in ["exp_avg", "exp_avg_sq"] {
                let mut whole = Vec::with_capacity(b.params.len());
                for i in b.params.clone() {
                    let (name, p) = &self.params[i];
                    let key = format!("{name}.{which}");
                    let t = get(&key)?;
                    if t.size() != p.size() {
                        return Err(MfError::Shape(format!(
                            "optimizer state '{key}' has shape {:?}, expected {:?}",
                            t.size(),
                            p.size()
                        )));
                    }
                    whole.push(t.to_device(dev));
                }
                let s = &b.state.slice;
                let slice = flatten(&whole, b.len)
                    .narrow(0, s.start, s.end - s.start)
                    .copy();
                match which {
                    "exp_avg" => b.state.exp_avg = slice,
                    _ => b.state.exp_avg_sq = slice,
                }
            }
        }
        Ok(())
    }
}

/// Fails on every rank unless all ranks' replicas list the same names and shapes in the same
/// order (a broadcast of mismatched parameters would silently mix them).
fn check_same_parameters(comm: &dyn Communicator, params: &[(String, Tensor)]) -> Result<()> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, p) in params {
        name.hash(&mut h);
        p.size().hash(&mut h);
    }
    let mine = h.finish() as i64;
    let dev = params.first().map_or(tch::Device::Cpu, |(_, p)| p.device());
    let all = comm.all_gather(&Tensor::from_slice(&[mine]).to_device(dev), 0)?;
    let all = Vec::<i64>::try_from(all.to_device(tch::Device::Cpu))?;
    if let Some(r) = all.iter().position(|&x| x != all[0]) {
        return Err(invalid(format!(
            "data-parallel replicas differ: rank {r}'s model has other parameter names or shapes than rank 0's; every rank must train the same model"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mf_core::comm::run_ranks;

    fn shapes() -> Vec<Vec<i64>> {
        vec![vec![3, 5], vec![5], vec![4, 2], vec![3]]
    }

    /// Two ranks train three steps of a toy loss with buckets of at most `bucket_elems`
    /// elements; returns rank 0's weights and optimizer state.
    fn run(shard: bool, bucket_elems: i64) -> Vec<(String, Vec<f32>)> {
        // A formula, not libtorch's generator: tests run concurrently in one process and would
        // draw from the same global generator between another test's seed and draws.
        let init: Vec<(Vec<i64>, Vec<f32>)> = shapes()
            .into_iter()
            .enumerate()
            .map(|(j, s)| {
                let n: i64 = s.iter().product();
                let v = (0..n)
                    .map(|i| ((i as f32 + 1.0) * 0.7 + j as f32 * 1.3).sin())
                    .collect();
                (s, v)
            })
            .collect();
        let opts = ReplicaOptions {
            optimizer: OptimizerOptions {
                optim: "adamw".into(),
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-8,
                weight_decay: 0.1,
            },
            optimizer_shard: shard,
        };
        let out = run_ranks(2, |comm| {
            let rank = comm.rank();
            let params: Vec<(String, Tensor)> = init
                .iter()
                .enumerate()
                .map(|(i, (s, v))| {
                    let t = Tensor::from_slice(v).reshape(s.as_slice());
                    (format!("p{i}"), t.set_requires_grad(true))
                })
                .collect();
            let view: Vec<(String, Tensor)> = params
                .iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect();
            let mut step = ReplicaStep::with_buckets(Box::new(comm), view, &opts, bucket_elems)?;
            for s in 0..3 {
                let k = (rank + s + 1) as f64;
                let loss = params
                    .iter()
                    .map(|(_, p)| (p * k).sin().sum(Kind::Float))
                    .fold(
                        Tensor::zeros([], (Kind::Float, tch::Device::Cpu)),
                        |a, b| a + b,
                    );
                loss.backward();
                let (_, norm) = step.reduce(0.0)?;
                step.apply(1e-2, 0.5 / (norm + 1e-6))?;
            }
            let mut v: Vec<(String, Vec<f32>)> = params
                .iter()
                .map(|(n, p)| {
                    (
                        n.clone(),
                        Vec::<f32>::try_from(p.detach().reshape([-1])).unwrap(),
                    )
                })
                .collect();
            if let Some(state) = step.optimizer_state()? {
                for (n, t) in state {
                    v.push((
                        n,
                        Vec::<f32>::try_from(t.to_kind(Kind::Float).reshape([-1])).unwrap(),
                    ));
                }
            }
            v.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(v)
        })
        .unwrap();
        out.into_iter().next().unwrap()
    }

    /// Buckets of a few elements (several per step, each padded to the ranks when sharded)
    /// give what one bucket gives, sharded or not.
    #[test]
    fn bucket_layout_does_not_change_the_numbers() {
        let want = run(false, i64::MAX);
        for (shard, elems) in [(false, 8), (true, 8), (true, 1), (true, i64::MAX)] {
            let got = run(shard, elems);
            assert_eq!(got.len(), want.len(), "shard={shard} elems={elems}");
            for ((n, a), (m, b)) in got.iter().zip(&want) {
                assert_eq!(n, m);
                // Relative: second moments reach ~10, and the reduction sums (and so the
                // gradient norm) round differently per bucket layout and thread timing.
                let d = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
                    .fold(0.0, f32::max);
                assert!(
                    d < 1e-5,
                    "shard={shard} elems={elems}: '{n}' differs by {d} (relative)"
                );
            }
        }
    }
}
