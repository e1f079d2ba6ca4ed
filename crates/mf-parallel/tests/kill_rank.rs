//! A rank that dies in the middle of a training step (its thread panics inside a collective)
//! or hangs makes every other rank fail with a communication error within the timeout,
//! instead of hanging.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mf_core::comm::{run_ranks_with_timeout, Communicator, ReduceOp};
use mf_core::Result;
use mf_models::{GPT2Config, ModelConfig};
use mf_parallel::optim::OptimizerOptions;
use mf_parallel::{EngineOptions, ParallelConfig, RankEngine, RecomputeConfig};
use tch::Tensor;

/// Counts the operations of a communicator and of every group split from it, and kills its
/// rank (a panic, which unwinds and drops the communicators) at operation `kill_at`.
struct Killer {
    inner: Box<dyn Communicator>,
    ops: Arc<AtomicUsize>,
    kill_at: Option<usize>,
    hang: bool,
}

impl Killer {
    fn tick(&self) {
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        if Some(n) == self.kill_at {
            if self.hang {
                std::thread::sleep(Duration::from_secs(8));
            }
            panic!("rank {} killed at operation {n}", self.inner.rank());
        }
    }
}

impl Communicator for Killer {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        self.tick();
        self.inner.all_reduce(t, op)
    }
    fn all_gather(&self, t: &Tensor, dim: i64) -> Result<Tensor> {
        self.tick();
        self.inner.all_gather(t, dim)
    }
    fn reduce_scatter(&self, t: &Tensor, op: ReduceOp, dim: i64) -> Result<Tensor> {
        self.tick();
        self.inner.reduce_scatter(t, op, dim)
    }
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        self.tick();
        self.inner.broadcast(t, root)
    }
    fn send(&self, t: &Tensor, dst: usize) -> Result<()> {
        self.tick();
        self.inner.send(t, dst)
    }
    fn recv(&self, src: usize) -> Result<Tensor> {
        self.tick();
        self.inner.recv(src)
    }
    fn barrier(&self) -> Result<()> {
        self.tick();
        self.inner.barrier()
    }
    fn split(&self, color: Option<usize>, key: usize) -> Result<Option<Box<dyn Communicator>>> {
        Ok(self.inner.split(color, key)?.map(|c| {
            Box::new(Killer {
                inner: c,
                ops: self.ops.clone(),
                kill_at: self.kill_at,
                hang: self.hang,
            }) as Box<dyn Communicator>
        }))
    }
}

fn setup() -> (ModelConfig, Vec<(String, Tensor)>, EngineOptions) {
    tch::manual_seed(3);
    let cfg = GPT2Config {
        vocab_size: 64,
        seq_length: 16,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        embedding_dropout_prob: 0.0,
        hidden_dropout_rate: 0.0,
        attention_dropout_rate: 0.0,
        ..Default::default()
    };
    let model = mf_models::GPT2LMHeadModel::new(&cfg).unwrap();
    let full = mf_models::PreTrainedModel::parameters(&model)
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect();
    let opts = EngineOptions {
        parallel: ParallelConfig {
            data_parallel: 2,
            model_parallel: 2,
            ..Default::default()
        },
        recompute: RecomputeConfig::default(),
        optimizer: OptimizerOptions {
            optim: "adamw".into(),
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        gradients_mean: true,
        seed: 0,
        broadcast_init: false,
    };
    (ModelConfig::new(cfg), full, opts)
}

/// The run's root-cause error and, for every rank but the killed one, how long after the
/// start it failed.
fn run(hang: bool) -> (String, Vec<(usize, Duration, String)>) {
    let (cfg, full, opts) = setup();
    let full = std::sync::Mutex::new(full);
    let batch = Tensor::arange(4 * 17, (tch::Kind::Int64, tch::Device::Cpu))
        .remainder(64)
        .view([4, 17]);
    let batch = std::sync::Mutex::new(batch);
    let start = Instant::now();
    let failures = std::sync::Mutex::new(Vec::new());
    let r = run_ranks_with_timeout(4, Duration::from_secs(2), |comm| {
        let rank = comm.rank();
        // Rank 2 dies at its 20th operation after joining the mesh: inside the step's tensor-
        // parallel reductions.
        let killer = Killer {
            inner: Box::new(comm),
            ops: Arc::new(AtomicUsize::new(0)),
            kill_at: (rank == 2).then_some(20),
            hang,
        };
        let full: Vec<(String, Tensor)> = full
            .lock()
            .unwrap()
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        let b = batch.lock().unwrap().shallow_clone();
        let mut engine = RankEngine::new(Box::new(killer), &cfg, &full, opts.clone())?;
        let mut steps = || -> Result<()> {
            for _ in 0..3 {
                engine.forward_backward(&b, 1.0, true)?;
                engine.reduce_gradients()?;
                engine.apply_update(1e-3, 1.0)?;
            }
            Ok(())
        };
        let r = steps();
        if let Err(e) = &r {
            failures
                .lock()
                .unwrap()
                .push((rank, start.elapsed(), e.to_string()));
        }
        r
    });
    let err = r.expect_err("a killed rank must fail the run").to_string();
    let mut f = failures.into_inner().unwrap();
    f.retain(|(r, _, _)| *r != 2);
    (err, f)
}

#[test]
fn a_rank_killed_mid_step_fails_the_others_quickly() {
    let (err, others) = run(false);
    // The root cause is the killed rank's own failure, named in world ranks.
    assert!(
        err.contains("world rank 2") && err.contains("killed"),
        "{err}"
    );
    assert_eq!(others.len(), 3, "every other rank must fail: {others:?}");
    for (rank, took, e) in &others {
        assert!(
            *took < Duration::from_secs(5),
            "rank {rank} failed after {took:?}: {e}"
        );
    }
}

#[test]
fn a_hung_rank_fails_the_others_after_the_timeout() {
    let (_, others) = run(true);
    assert_eq!(others.len(), 3, "every other rank must fail: {others:?}");
    // The hung rank sleeps 8 s; its peers give up after their 2 s timeout (plus the time
    // their own queued operations take), long before it wakes.
    for (rank, took, e) in &others {
        assert!(
            *took < Duration::from_secs(6),
            "rank {rank} failed after {took:?}: {e}"
        );
        assert!(e.contains("timed out") || e.contains("has left"), "{e}");
    }
}
