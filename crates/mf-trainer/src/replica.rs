//! The Trainer's data-parallel path for task-head models (BERT, RoBERTa, XLM-R: sequence and
//! token classification, question answering, masked LM).
//!
//! It exists beside [`crate::parallel::ParallelDriver`] because that runtime builds causal LMs
//! stage by stage through `ParallelLM` and reads only `input_ids`; a head model instead trains
//! as full replicas. The trainer forms the head's inputs of the global batch (masked-LM masks
//! are drawn there, as on one device); this driver gives each rank its rows and weights the
//! rank's mean loss by its share of the batch's counted targets, so the ranks' summed
//! gradients are one device's gradient of the batch mean. [`ReplicaStep`] then reduces them
//! and updates (ZeRO-1 with optimizer sharding).
//!
//! On the threads backend rank 0 is the trainer's own model on the trainer's thread and ranks
//! `1..N` are replicas built through the family registry (filled with rank 0's weights) on
//! worker threads, driven by commands so every rank makes the same collective calls in the
//! same order. With a communicator (one process per rank) every process runs the same loop on
//! its own rank. Every rank ends each step holding the full weights, so checkpoints and
//! evaluation read rank 0's model directly.
//!
//! Dropout draws from libtorch's process-wide generator: with dropout on, the threads backend's
//! ranks draw in whatever order they run, so only dropout-free runs repeat exactly there.
use std::thread::JoinHandle;

use crossbeam::channel::{unbounded, Receiver, Sender};
use mf_core::comm::{Communicator, ThreadGroup};
use mf_core::{invalid, DType, MfError, Result};
use mf_models::{AutoConfig, AutoModel, TaskModel};
use mf_parallel::{ReplicaOptions, ReplicaStep};
use tch::Tensor;

use crate::parallel::{clones, optimizer_tensor};
use crate::tasks::{forward_columns, Columns};

/// One rank's part of a micro-batch: its rows and the factors its loss is weighted by.
struct Work {
    rank: usize,
    /// `None`: the rank has no counted targets in this batch and runs nothing.
    cols: Option<Columns>,
    /// Multiplies the loss before backward: share of the batch times `1 / accumulation`.
    grad_factor: f64,
    /// Multiplies the loss for the logged step loss.
    loss_factor: f64,
}

impl Work {
    /// Forward and backward on `model`; returns the rank's weighted loss.
    fn run(&self, model: &dyn TaskModel) -> Result<f64> {
        let Some(cols) = &self.cols else {
            return Ok(if self.loss_factor.is_nan() {
                f64::NAN
            } else {
                0.0
            });
        };
        let run = || -> Result<f64> {
            let out = forward_columns(model, cols, true)?;
            let loss = out.loss()?;
            (loss * self.grad_factor).f_backward()?;
            Ok(loss.double_value(&[]) * self.loss_factor)
        };
        run().map_err(|e| on_rank(self.rank, e))
    }
}

/// Names the rank in a libtorch failure, with libtorch's message and not its C++ trace.
fn on_rank(rank: usize, e: MfError) -> MfError {
    match e {
        MfError::Torch(t) => MfError::TorchOp {
            op: format!("forward / backward on data-parallel rank {rank}"),
            msg: t.to_string().lines().next().unwrap_or_default().to_string(),
        },
        MfError::TorchOp { op, msg } => MfError::TorchOp {
            op: format!("{op} on data-parallel rank {rank}"),
            msg,
        },
        e => e,
    }
}

enum Cmd {
    ForwardBackward(Work),
    Reduce,
    Apply(f64, f64),
    ZeroGrad,
    OptimizerState,
    LoadOptimizer(Vec<(String, Tensor)>),
}

struct Worker {
    tx: Sender<Cmd>,
    handle: JoinHandle<Result<()>>,
}

/// This rank's replica step and the workers of ranks `1..N` (threads backend).
pub struct ReplicaDriver {
    /// `None` once a failure has dropped it (so the workers see rank 0 leave).
    step: Option<ReplicaStep>,
    /// This rank's weighted loss of the step so far.
    loss: f64,
    workers: Vec<Worker>,
    /// Weight each rank's gradient by its share of the batch (the global-batch mean); `false`
    /// sums the ranks' mean gradients, as MindSpore's DATA_PARALLEL mode without
    /// `gradients_mean` does.
    gradients_mean: bool,
}

fn run_worker(model: Box<dyn TaskModel>, mut step: ReplicaStep, rx: Receiver<Cmd>) -> Result<()> {
    let mut loss = 0.0;
    for cmd in rx {
        match cmd {
            Cmd::ForwardBackward(w) => loss += w.run(model.as_ref())?,
            Cmd::Reduce => {
                step.reduce(loss)?;
                loss = 0.0;
            }
            Cmd::Apply(lr, coef) => step.apply(lr, coef)?,
            Cmd::ZeroGrad => step.zero_grad(),
            Cmd::OptimizerState => {
                step.optimizer_state()?;
            }
            Cmd::LoadOptimizer(t) => load_optimizer(&mut step, &t)?,
        }
    }
    Ok(())
}

fn load_optimizer(step: &mut ReplicaStep, tensors: &[(String, Tensor)]) -> Result<()> {
    step.load_optimizer_state(&|name| optimizer_tensor(tensors, name))
}

/// A fresh model of `model`'s family, config and head (its weights come from rank 0).
fn replicate(model: &dyn TaskModel) -> Result<Box<dyn TaskModel>> {
    let origin = format!("the {} model's config", model.model_type());
    let config = AutoConfig::from_json_value(&model.config_json(), &origin)?;
    let mut copy = AutoModel::from_config_task(&config, model.task())?;
    let params = model.parameters();
    if let Some(dtype) = params.first().and_then(|(_, t)| DType::from_kind(t.kind())) {
        copy.to(mf_core::Device::Cpu, dtype)?;
    }
    let theirs = copy.parameters();
    let same = params.len() == theirs.len()
        && params
            .iter()
            .zip(&theirs)
            .all(|((n, a), (m, b))| n == m && a.size() == b.size());
    if !same {
        return Err(invalid(format!(
            "a {} model with a {} head rebuilt from its config has other parameters than the model being trained, so it cannot be a data-parallel replica",
            model.model_type(),
            model.task()
        )));
    }
    Ok(copy)
}

/// Rows `[start, end)` of every column.
fn rows(cols: &[(&'static str, Tensor)], start: i64, end: i64) -> Columns {
    cols.iter()
        .map(|(n, t)| (*n, t.narrow(0, start, end - start)))
        .collect()
}

impl ReplicaDriver {
    /// Starts `world` ranks on the threads backend: rank 0 trains `model` (the trainer's) on
    /// this thread, ranks `1..world` train replicas of it on worker threads.
    pub fn start(
        model: &dyn TaskModel,
        world: usize,
        opts: ReplicaOptions,
        gradients_mean: bool,
    ) -> Result<Self> {
        let replicas = (1..world)
            .map(|_| replicate(model))
            .collect::<Result<Vec<_>>>()?;
        let mut comms = ThreadGroup::new(world)?.into_comms().into_iter();
        let rank0 = comms.next().ok_or_else(|| invalid("no ranks"))?;
        let mut workers = Vec::with_capacity(world - 1);
        for (comm, replica) in comms.zip(replicas) {
            let (tx, rx) = unbounded();
            let opts = opts.clone();
            let rank = comm.rank();
            let handle = std::thread::Builder::new()
                .name(format!("replica-{rank}"))
                .spawn(move || {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let params = replica.parameters();
                        let step = ReplicaStep::new(Box::new(comm), params, &opts)?;
                        run_worker(replica, step, rx)
                    }));
                    r.unwrap_or_else(|p| {
                        let msg = mf_parallel::async_comm::panic_text(&p);
                        Err(MfError::Comm(format!("rank {rank} panicked: {msg}")))
                    })
                })
                .map_err(|e| MfError::Comm(format!("cannot start rank {rank}: {e}")))?;
            workers.push(Worker { tx, handle });
        }
        match ReplicaStep::new(Box::new(rank0), model.parameters(), &opts) {
            Ok(step) => Ok(ReplicaDriver {
                step: Some(step),
                loss: 0.0,
                workers,
                gradients_mean,
            }),
            Err(e) => Err(Self::join(workers, e)),
        }
    }

    /// Joins a group whose other ranks run their own trainers (other processes, or threads):
    /// this rank trains `model`, which starts from world rank 0's weights.
    pub fn join_group(
        comm: Box<dyn Communicator>,
        model: &dyn TaskModel,
        data_parallel: usize,
        opts: ReplicaOptions,
        gradients_mean: bool,
    ) -> Result<Self> {
        if comm.world_size() != data_parallel {
            return Err(invalid(format!(
                "the layout needs {data_parallel} ranks (data_parallel), the communicator has {}",
                comm.world_size()
            )));
        }
        Ok(ReplicaDriver {
            step: Some(ReplicaStep::new(comm, model.parameters(), &opts)?),
            loss: 0.0,
            workers: Vec::new(),
            gradients_mean,
        })
    }

    fn step(&self) -> Result<&ReplicaStep> {
        self.step
            .as_ref()
            .ok_or_else(|| MfError::Comm("the data-parallel ranks stopped after an error".into()))
    }

    /// Whether this trainer is world rank 0 (the one that writes checkpoints).
    pub fn is_rank_zero(&self) -> bool {
        self.step.as_ref().is_some_and(|s| s.rank() == 0)
    }

    /// Bytes of optimizer state this rank holds.
    pub fn optimizer_state_bytes(&self) -> usize {
        self.step.as_ref().map_or(0, |s| s.optimizer_state_bytes())
    }

    /// Stops the workers and returns the root cause: a worker's own error rather than rank
    /// 0's report that a peer left.
    fn join(workers: Vec<Worker>, rank0: MfError) -> MfError {
        let mut handles = Vec::new();
        for w in workers {
            drop(w.tx);
            handles.push(w.handle);
        }
        let mut first = None;
        for h in handles {
            if let Ok(Err(e)) = h.join() {
                if first.is_none() && !e.to_string().contains("has left the group") {
                    first = Some(e);
                }
            }
        }
        match first {
            Some(w) if matches!(rank0, MfError::Comm(_)) => w,
            _ => rank0,
        }
    }

    /// Sends each worker its command, then runs this rank's part; on failure stops every rank
    /// (this rank's communicator first, so none waits out a timeout) and reports the cause.
    fn run<T>(
        &mut self,
        mut make: impl FnMut(usize) -> Cmd,
        local: impl FnOnce(&mut ReplicaStep, &mut f64) -> Result<T>,
    ) -> Result<T> {
        let mut sent = Ok(());
        for (i, w) in self.workers.iter().enumerate() {
            if w.tx.send(make(i + 1)).is_err() {
                sent = Err(MfError::Comm(
                    "a data-parallel rank thread has stopped".into(),
                ));
                break;
            }
        }
        let r = sent.and_then(|_| match self.step.as_mut() {
            Some(s) => local(s, &mut self.loss),
            None => Err(MfError::Comm(
                "the data-parallel ranks stopped after an error".into(),
            )),
        });
        r.map_err(|e| {
            self.step = None;
            Self::join(std::mem::take(&mut self.workers), e)
        })
    }

    /// Forward and backward of one micro-batch: `cols` are the head's inputs of the whole
    /// global batch, `count` the number of targets a set of rows' mean loss divides by, and
    /// `scale` multiplies every gradient (`1 / gradient_accumulation_steps`).
    pub fn forward_backward(
        &mut self,
        model: &dyn TaskModel,
        cols: &[(&'static str, Tensor)],
        count: impl Fn(&[(&'static str, Tensor)]) -> i64,
        scale: f64,
    ) -> Result<()> {
        let world = self.step()?.world_size();
        let me = self.step()?.rank();
        let b = cols.first().map_or(0, |(_, t)| t.size()[0]);
        let total = count(cols);
        let gradients_mean = self.gradients_mean;
        // Rank r's rows; contiguous, as even as the batch allows.
        let work = |r: usize| -> Work {
            let (start, end) = (
                b * r as i64 / world as i64,
                b * (r + 1) as i64 / world as i64,
            );
            let part = rows(cols, start, end);
            let n = if end > start { count(&part) } else { 0 };
            if total == 0 {
                // One device's loss of a batch without targets is NaN: so is the step's.
                return Work {
                    rank: r,
                    cols: None,
                    grad_factor: 0.0,
                    loss_factor: f64::NAN,
                };
            }
            let share = n as f64 / total as f64;
            Work {
                rank: r,
                cols: (n > 0).then_some(part),
                grad_factor: scale * if gradients_mean { share } else { 1.0 },
                loss_factor: scale * share,
            }
        };
        // With one process per rank there are no workers: this rank runs its own rows only.
        let mine = work(me);
        self.run(
            |r| Cmd::ForwardBackward(work(r)),
            |_, loss| {
                *loss += mine.run(model)?;
                Ok(())
            },
        )
    }

    /// Sums the gradients and the loss over the ranks; returns the step's loss (the mean over
    /// the global batch, as one device logs it) and the global gradient norm.
    pub fn reduce_gradients(&mut self) -> Result<(f64, f64)> {
        self.run(
            |_| Cmd::Reduce,
            |s, loss| {
                let r = s.reduce(*loss);
                *loss = 0.0;
                r
            },
        )
    }

    /// Clips by `clip_coef` (when < 1) and updates with learning rate `lr` on every rank.
    pub fn apply_update(&mut self, lr: f64, clip_coef: f64) -> Result<()> {
        self.run(|_| Cmd::Apply(lr, clip_coef), |s, _| s.apply(lr, clip_coef))
    }

    /// Drops the step's gradients (a skipped step).
    pub fn zero_grad(&mut self) -> Result<()> {
        self.run(
            |_| Cmd::ZeroGrad,
            |s, _| {
                s.zero_grad();
                Ok(())
            },
        )
    }

    /// The whole optimizer state under the one-device optimizer's names, on world rank 0
    /// (`None` elsewhere: only rank 0 writes checkpoints). Every rank takes part.
    pub fn optimizer_state(&mut self) -> Result<Option<Vec<(String, Tensor)>>> {
        self.run(|_| Cmd::OptimizerState, |s, _| s.optimizer_state())
    }

    /// Restores optimizer state saved by any runtime (one device included).
    pub fn load_optimizer(&mut self, tensors: Vec<(String, Tensor)>) -> Result<()> {
        self.run(
            |_| Cmd::LoadOptimizer(clones(&tensors)),
            |s, _| load_optimizer(s, &tensors),
        )
    }

    /// Ends the worker threads, returning the first error one of them ended with.
    pub fn finish(mut self) -> Result<()> {
        let mut first = None;
        for w in std::mem::take(&mut self.workers) {
            drop(w.tx);
            match w.handle.join() {
                Ok(Err(e)) if first.is_none() => first = Some(e),
                Err(_) if first.is_none() => {
                    first = Some(MfError::Comm("a data-parallel rank thread panicked".into()))
                }
                _ => {}
            }
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::Optimizer;
    use mf_core::comm::run_ranks;
    use tch::Kind;

    fn opts(optim: &str, optimizer_shard: bool) -> ReplicaOptions {
        ReplicaOptions {
            optimizer: mf_parallel::optim::OptimizerOptions {
                optim: optim.into(),
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-8,
                weight_decay: 0.1,
            },
            optimizer_shard,
        }
    }

    /// Values drawn up front on one thread: rank threads must not share libtorch's generator.
    struct Draws {
        /// Per rank: a matrix (decayed), a bias (not) and a matrix no loss reaches (the
        /// one-device optimizer skips it: no decay either).
        params: Vec<Vec<Vec<f32>>>,
        inputs: Vec<f32>,
    }

    const SHAPES: [&[i64]; 3] = [&[3, 5], &[5], &[2, 4]];
    const NAMES: [&str; 3] = ["w", "b", "unused"];

    fn draws(ranks: usize) -> Draws {
        tch::manual_seed(1);
        let flat = |n: i64| {
            Vec::<f32>::try_from(Tensor::randn([n], (Kind::Float, tch::Device::Cpu))).unwrap()
        };
        Draws {
            params: (0..ranks)
                .map(|_| SHAPES.iter().map(|s| flat(s.iter().product())).collect())
                .collect(),
            inputs: flat(18),
        }
    }

    fn params(values: &[Vec<f32>]) -> Vec<(String, Tensor)> {
        NAMES
            .iter()
            .zip(SHAPES)
            .zip(values)
            .map(|((n, s), v)| {
                let t = Tensor::from_slice(v).reshape(s).set_requires_grad(true);
                (n.to_string(), t)
            })
            .collect()
    }

    fn shallow(p: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
        p.iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    }

    fn values(p: &[(String, Tensor)]) -> Vec<Vec<f32>> {
        p.iter()
            .map(|(_, t)| Vec::<f32>::try_from(t.detach().reshape([-1])).unwrap())
            .collect()
    }

    /// The mean over the rows of `x` of the loss, times `share`: a rank's part of the batch
    /// mean.
    fn backward(p: &[(String, Tensor)], x: &Tensor, share: f64) {
        let y = x.matmul(&p[0].1) + &p[1].1;
        let per_row = y
            .pow_tensor_scalar(2)
            .sum_dim_intlist(1, false, Kind::Float);
        (per_row.mean(Kind::Float) * share).backward();
    }

    /// Three clipped steps on one device with the Trainer's optimizer.
    fn one_device(optim: &str, d: &Draws) -> Vec<Vec<f32>> {
        let p = params(&d.params[0]);
        let x = Tensor::from_slice(&d.inputs).reshape([6, 3]);
        let mut o = Optimizer::new(optim, shallow(&p), 0.9, 0.99, 1e-8, 0.1).unwrap();
        for step in 0..3 {
            backward(&p, &x, 1.0);
            let norm = o.grad_norm();
            o.clip_to(norm, 0.5);
            o.step(1e-2 * (step + 1) as f64);
            o.zero_grad();
        }
        values(&p)
    }

    /// The same steps over 3 ranks of 2 rows each, every rank starting from its own weights
    /// (rank 0's are broadcast).
    fn replicas(optim: &str, shard: bool, d: &Draws) -> Vec<Vec<Vec<f32>>> {
        run_ranks(3, |comm| {
            let rank = comm.rank();
            let p = params(&d.params[rank]);
            let x = Tensor::from_slice(&d.inputs).reshape([6, 3]);
            let mut step = ReplicaStep::new(Box::new(comm), shallow(&p), &opts(optim, shard))?;
            for s in 0..3 {
                backward(&p, &x.narrow(0, 2 * rank as i64, 2), 1.0 / 3.0);
                let (_, norm) = step.reduce(0.0)?;
                step.apply(1e-2 * (s + 1) as f64, 0.5 / (norm + 1e-6))?;
            }
            Ok(values(&p))
        })
        .unwrap()
    }

    #[test]
    fn replicas_update_like_the_one_device_optimizer() {
        let d = draws(3);
        for optim in ["adamw", "adam", "sgd"] {
            let want = one_device(optim, &d);
            for shard in [false, true] {
                for (rank, got) in replicas(optim, shard, &d).iter().enumerate() {
                    for ((g, w), name) in got.iter().zip(&want).zip(NAMES) {
                        let diff = g
                            .iter()
                            .zip(w)
                            .map(|(a, b)| (a - b).abs())
                            .fold(0.0f32, f32::max);
                        assert!(
                            diff < 1e-6,
                            "{optim} shard={shard} rank {rank}: '{name}' differs by {diff}"
                        );
                    }
                }
            }
        }
    }
}
