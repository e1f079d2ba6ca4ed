//! The Trainer's side of parallel training. On the threads backend rank 0 runs on the
//! trainer's thread and drives ranks `1..N` on worker threads with the same commands, so every
//! rank makes the same collective calls in the same order. When the trainer is one rank of a
//! group started elsewhere (one process per GPU under `mf launch`, given through
//! `Trainer::set_communicator` or `init_context`), every process runs the same loop on its own
//! rank. Checkpoints are written by world rank 0; for them, and for evaluation, the full
//! weights are gathered into the trainer's model.
use std::thread::JoinHandle;

use crossbeam::channel::{unbounded, Receiver, Sender};
use mf_core::comm::{Communicator, ThreadGroup};
use mf_core::{MfError, Result};
use mf_models::{CausalLM, ModelConfig};
use mf_parallel::RankEngine;
use tch::Tensor;

pub use mf_parallel::config::{ParallelConfig, RecomputeConfig};
pub use mf_parallel::EngineOptions;

enum Cmd {
    ForwardBackward(Tensor, f64, bool, u64),
    Reduce,
    Apply(f64, f64),
    ZeroGrad,
    FullState(bool),
    LoadOptimizer(Vec<(String, Tensor)>),
}

/// Rank 0's engine and the worker threads of ranks `1..N`.
pub struct ParallelDriver {
    engine: RankEngine,
    workers: Vec<(Sender<Cmd>, JoinHandle<Result<()>>)>,
    /// This trainer is one rank of a group of processes (no worker threads).
    process: bool,
}

fn run_worker(mut engine: RankEngine, rx: Receiver<Cmd>) -> Result<()> {
    for cmd in rx {
        match cmd {
            Cmd::ForwardBackward(b, s, sync, index) => {
                engine.set_batch_index(index);
                engine.forward_backward(&b, s, sync)?;
            }
            Cmd::Reduce => {
                engine.reduce_gradients()?;
            }
            Cmd::Apply(lr, coef) => engine.apply_update(lr, coef)?,
            Cmd::ZeroGrad => engine.zero_grad(),
            Cmd::FullState(o) => {
                engine.full_state(o)?;
            }
            Cmd::LoadOptimizer(t) => load_optimizer(&mut engine, &t)?,
        }
    }
    Ok(())
}

fn load_optimizer(engine: &mut RankEngine, tensors: &[(String, Tensor)]) -> Result<()> {
    engine.load_optimizer_state(&|name| optimizer_tensor(tensors, name))
}

/// One tensor of a saved optimizer state, or an error naming it.
pub(crate) fn optimizer_tensor(tensors: &[(String, Tensor)], name: &str) -> Result<Tensor> {
    tensors
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.shallow_clone())
        .ok_or_else(|| {
            MfError::checkpoint(
                "optimizer.safetensors",
                format!("optimizer state has no '{name}'"),
            )
        })
}

/// Shallow copies of named tensors, to hand to another rank's thread.
pub(crate) fn clones(v: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    v.iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect()
}

impl ParallelDriver {
    /// Starts `parallel.device_num()` ranks over the weights of `model` (the full model under
    /// checkpoint names) and returns once every rank has built its stage.
    pub fn start(model: &dyn CausalLM, config: &ModelConfig, opts: EngineOptions) -> Result<Self> {
        let world = opts.parallel.device_num();
        let full: Vec<(String, Tensor)> = model
            .parameters()
            .into_iter()
            .map(|(n, t)| (n, t.detach()))
            .collect();
        let mut comms = ThreadGroup::new(world)?.into_comms().into_iter();
        let rank0 = comms.next().ok_or_else(|| mf_core::invalid("no ranks"))?;
        let mut workers = Vec::with_capacity(world - 1);
        for comm in comms {
            let (tx, rx) = unbounded();
            let (full, config, opts) = (clones(&full), config.clone(), opts.clone());
            let rank = comm.rank();
            let handle = std::thread::Builder::new()
                .name(format!("rank-{rank}"))
                .spawn(move || {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let engine = RankEngine::new(Box::new(comm), &config, &full, opts)?;
                        drop(full);
                        run_worker(engine, rx)
                    }));
                    r.unwrap_or_else(|p| {
                        let msg = mf_parallel::async_comm::panic_text(&p);
                        Err(MfError::Comm(format!("rank {rank} panicked: {msg}")))
                    })
                })
                .map_err(|e| MfError::Comm(format!("cannot start rank {rank}: {e}")))?;
            workers.push((tx, handle));
        }
        let engine = RankEngine::new(
            Box::new(rank0) as Box<dyn Communicator>,
            config,
            &full,
            opts,
        );
        match engine {
            Ok(engine) => Ok(ParallelDriver {
                engine,
                workers,
                process: false,
            }),
            Err(e) => Err(Self::join(workers, e)),
        }
    }

    /// Joins a group whose other ranks run in other processes (or threads) with their own
    /// trainers: this rank's engine over `comm`, starting from world rank 0's weights.
    pub fn join_group(
        comm: Box<dyn Communicator>,
        model: &dyn CausalLM,
        config: &ModelConfig,
        mut opts: EngineOptions,
    ) -> Result<Self> {
        if comm.world_size() != opts.parallel.device_num() {
            return Err(mf_core::invalid(format!(
                "the layout needs {} ranks (data_parallel x model_parallel x pipeline_stage), the communicator has {}",
                opts.parallel.device_num(),
                comm.world_size()
            )));
        }
        opts.broadcast_init = true;
        let full: Vec<(String, Tensor)> = model
            .parameters()
            .into_iter()
            .map(|(n, t)| (n, t.detach()))
            .collect();
        Ok(ParallelDriver {
            engine: RankEngine::new(comm, config, &full, opts)?,
            workers: Vec::new(),
            process: true,
        })
    }

    /// Whether this trainer is world rank 0 (the one that writes checkpoints).
    pub fn is_rank_zero(&self) -> bool {
        self.engine.world_rank() == 0
    }

    /// Stops the workers and returns the root cause: a worker's own error rather than rank
    /// 0's report that a peer left.
    fn join(workers: Vec<(Sender<Cmd>, JoinHandle<Result<()>>)>, rank0: MfError) -> MfError {
        let mut handles = Vec::new();
        for (tx, h) in workers {
            drop(tx);
            handles.push(h);
        }
        let mut first = None;
        for h in handles {
            if let Ok(Err(e)) = h.join() {
                if first.is_none() && !e.to_string().contains("has left the group") {
                    first = Some(e);
                }
            }
        }
        match (&rank0, first) {
            (MfError::Comm(m), Some(w)) if m.contains("has left") => w,
            _ => rank0,
        }
    }

    fn broadcast(&mut self, make: impl Fn() -> Cmd) -> Result<()> {
        for (tx, _) in &self.workers {
            tx.send(make())
                .map_err(|_| MfError::Comm("a rank thread has stopped".into()))?;
        }
        Ok(())
    }

    fn run<T>(
        &mut self,
        make: impl Fn() -> Cmd,
        local: impl FnOnce(&mut RankEngine) -> Result<T>,
    ) -> Result<T> {
        let sent = self.broadcast(make);
        let r = sent.and_then(|_| local(&mut self.engine));
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                let workers = std::mem::take(&mut self.workers);
                Err(Self::join(workers, e))
            }
        }
    }

    /// Forward and backward of global batch number `index` (which seeds dropout) on every
    /// rank; returns its mean loss.
    pub fn forward_backward(
        &mut self,
        ids: &Tensor,
        scale: f64,
        sync: bool,
        index: u64,
    ) -> Result<f64> {
        self.run(
            || Cmd::ForwardBackward(ids.shallow_clone(), scale, sync, index),
            |e| {
                e.set_batch_index(index);
                e.forward_backward(ids, scale, sync)
            },
        )
    }

    /// Finishes the gradient reductions; returns the global gradient norm.
    pub fn reduce_gradients(&mut self) -> Result<f64> {
        self.run(|| Cmd::Reduce, |e| e.reduce_gradients())
    }

    /// Clips by `clip_coef` (when < 1) and updates with learning rate `lr`.
    pub fn apply_update(&mut self, lr: f64, clip_coef: f64) -> Result<()> {
        self.run(
            || Cmd::Apply(lr, clip_coef),
            |e| e.apply_update(lr, clip_coef),
        )
    }

    /// Drops the step's gradients (a skipped step).
    pub fn zero_grad(&mut self) -> Result<()> {
        self.run(
            || Cmd::ZeroGrad,
            |e| {
                e.zero_grad();
                Ok(())
            },
        )
    }

    /// Gathers the trained weights into `model` (on every rank of a process group); with
    /// `optimizer`, also returns the optimizer state under the single-device optimizer's
    /// names, on world rank 0 only (`None` elsewhere: only rank 0 writes checkpoints).
    pub fn gather_into(
        &mut self,
        model: &dyn CausalLM,
        optimizer: bool,
    ) -> Result<Option<Vec<(String, Tensor)>>> {
        let state = self.run(|| Cmd::FullState(optimizer), |e| e.full_state(optimizer))?;
        let params = model.parameters();
        let mut by_name: std::collections::HashMap<String, Tensor> = match state {
            Some(s) => s.into_iter().collect(),
            None => Default::default(),
        };
        let mut weights = Vec::with_capacity(params.len());
        for (name, p) in &params {
            let w = match by_name.remove(name) {
                Some(t) => t,
                None if !self.is_rank_zero() => p.detach(),
                None => {
                    return Err(mf_core::invalid(format!(
                        "the parallel ranks returned no '{name}'"
                    )))
                }
            };
            weights.push((name.clone(), w));
        }
        if self.process {
            weights = self.engine.share_from_zero(&weights)?;
        }
        let _g = tch::no_grad_guard();
        for ((_, p), (_, w)) in params.iter().zip(&weights) {
            let mut p = p.shallow_clone();
            p.copy_(w);
        }
        if !self.is_rank_zero() {
            return Ok(None);
        }
        let mut rest: Vec<(String, Tensor)> = by_name.into_iter().collect();
        rest.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Some(rest))
    }

    /// Restores optimizer state saved by either runtime.
    pub fn load_optimizer(&mut self, tensors: Vec<(String, Tensor)>) -> Result<()> {
        self.run(
            || Cmd::LoadOptimizer(clones(&tensors)),
            |e| load_optimizer(e, &tensors),
        )
    }

    /// Bytes of optimizer state rank 0 holds.
    pub fn optimizer_state_bytes(&self) -> usize {
        self.engine.optimizer_state_bytes()
    }

    /// Ends the worker threads.
    pub fn finish(mut self) -> Result<()> {
        let workers = std::mem::take(&mut self.workers);
        let mut first = None;
        for (tx, h) in workers {
            drop(tx);
            match h.join() {
                Ok(Err(e)) if first.is_none() => first = Some(e),
                _ => {}
            }
        }
        first.map_or(Ok(()), Err)
    }
}
