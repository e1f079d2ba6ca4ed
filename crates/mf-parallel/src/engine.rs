//! One rank of a parallel training step.
//!
//! A [`RankEngine`] holds its pipeline stage of the model at its tensor-parallel position
//! (built by the family through [`mf_models::parallel::ParallelLM`] and filled with this rank's
//! shards of the full weights), its communicators, and its optimizer buckets. Per step:
//!
//! 1. Every rank reads the same global batch and keeps its data-parallel rows, split into
//!    `micro_batch_num` micro-batches and each of those into `micro_batch_interleave_num` copies.
//! 2. Stages run the 1F1B schedule ([`crate::schedule`]); activations and their gradients go
//!    between stages by point-to-point send/recv.
//! 3. Inside a stage each sublayer is `x + dropout(g(core(f(norm(x)))) + bias)`: `f`/`g` are
//!    identity / all-reduce (or, with sequence parallelism, all-gather / reduce-scatter along
//!    the sequence) over the tensor-parallel group, run here between segments whose backward is
//!    run one at a time ([`crate::segment`]). Interleaved copies submit their reduction to the
//!    communication thread and compute the next copy meanwhile.
//! 4. When a bucket's layers have run their last backward, its flat gradient is all-reduced
//!    (or reduce-scattered, with optimizer sharding) over the data-parallel group on the
//!    data-parallel communication thread while backward continues.
//! 5. The optimizer step: global gradient norm (each element counted once in the world),
//!    clipping, the update of each bucket (slice), all-gather of updated slices.
//!
//! This file is the one place where a tensor is sharded ([`RankEngine::new`]) or gathered
//! ([`RankEngine::full_state`]).
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use mf_core::comm::{Communicator, DeviceMesh, MeshCoord, MeshShape, ReduceOp};
use mf_core::{invalid, MfError, Result};
use mf_models::layers::{lm_head_cross_entropy, TensorParallel, VocabShard};
use mf_models::parallel::{build_stage, ParallelLM, ShardRule, StageSpec, Sublayer};
use mf_models::ModelConfig;
use tch::{Kind, Tensor};

use crate::async_comm::{AsyncComm, CommOp, Pending};
use crate::config::{ParallelConfig, RecomputeConfig};
use crate::optim::{flatten, unflatten, BucketState, FlatOptimizer, OptimizerOptions};
use crate::schedule::{one_f_one_b, PipeOp};
use crate::segment::{mix, Seg};
use mf_models::layers::hash_dropout;

/// Everything a rank needs to know about the run.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The layout.
    pub parallel: ParallelConfig,
    /// Recompute options.
    pub recompute: RecomputeConfig,
    /// Optimizer hyperparameters.
    pub optimizer: OptimizerOptions,
    /// Average data-parallel gradients (the global-batch mean); `false` sums them, as
    /// MindSpore's DATA_PARALLEL mode with `gradients_mean = false` does.
    pub gradients_mean: bool,
    /// Seeds dropout masks.
    pub seed: u64,
    /// Take the initial weights from world rank 0 (ranks in separate processes may have
    /// initialised their models differently); threads of one process share them already.
    pub broadcast_init: bool,
}

/// The stage layers of `stages` contiguous stages over `layers` layers (earlier stages take
/// the remainder).
pub fn stage_layers(layers: usize, stages: usize, stage: usize) -> Range<usize> {
    let base = layers / stages;
    let extra = layers % stages;
    let start = stage * base + stage.min(extra);
    start..start + base + usize::from(stage < extra)
}

struct Bucket {
    params: Vec<usize>,
    shapes: Vec<Vec<i64>>,
    len: i64,
    /// Lowest layer index in the bucket (its gradients are final after that layer's last
    /// backward); `None` for the embedding / head bucket, final after the whole backward.
    first_layer: Option<usize>,
    /// Every parameter of the bucket lives in this flat buffer (each parameter's data is a
    /// view of it), so an update of the flat values is an update of the parameters.
    flat: Tensor,
    state: BucketState,
    pending: Option<Pending>,
    grad: Option<Tensor>,
}

enum CoreRec {
    Graph(Seg),
    /// Selective recompute: the attention core's input, re-run in backward.
    Recompute(Tensor),
}

struct SubRec {
    norm: Seg,
    core: CoreRec,
    post: Seg,
}

/// One layer's segments: an optional piece in front (`ParallelLM::pre_layer`) and the two
/// sublayers.
#[derive(Default)]
struct LayerSegs {
    pre: Option<Seg>,
    subs: Vec<SubRec>,
}

enum LayerRec {
    Graph(LayerSegs),
    /// Full recompute: the layer's input (a sequence slice of it with
    /// `recompute_slice_activation`), and the communication results when they are kept.
    Recompute {
        input: Tensor,
        sliced: bool,
        comm: Vec<Tensor>,
    },
}

struct CopyRec {
    embed: Option<(Seg, Seg)>,
    layers: Vec<LayerRec>,
    head: Option<(Seg, Seg)>,
}

/// How a forward pass treats graphs and communication.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Keep graphs (selective recompute still drops the attention core's).
    Train,
    /// Full recompute's first pass: no graphs; optionally record communication results.
    NoGrad { record: bool },
    /// Full recompute's second pass: graphs, replaying recorded communication.
    Replay,
}

/// One rank of the parallel runtime.
pub struct RankEngine {
    opts: EngineOptions,
    world: Box<dyn Communicator>,
    shape: MeshShape,
    coord: MeshCoord,
    tp: AsyncComm,
    dp: AsyncComm,
    pp: Box<dyn Communicator>,
    emb: Option<Box<dyn Communicator>>,
    model: Box<dyn ParallelLM>,
    params: Vec<(String, Tensor)>,
    rules: Vec<ShardRule>,
    buckets: Vec<Bucket>,
    optim: FlatOptimizer,
    /// The data position of the current batch: it seeds dropout, so a resumed run draws the
    /// masks the uninterrupted run drew.
    batch_index: u64,
    seq_len: Option<i64>,
}

impl RankEngine {
    /// Joins the mesh (collective over `world`), builds this rank's stage and copies in its
    /// shards of `full` (every parameter of the model under its checkpoint name).
    pub fn new(
        world: Box<dyn Communicator>,
        config: &ModelConfig,
        full: &[(String, Tensor)],
        opts: EngineOptions,
    ) -> Result<Self> {
        let p = &opts.parallel;
        p.validate()?;
        opts.recompute.validate()?;
        let broadcast;
        let full = if opts.broadcast_init {
            broadcast = broadcast_from_zero(world.as_ref(), full)?;
            &broadcast[..]
        } else {
            full
        };
        let shape = MeshShape::new(p.data_parallel, p.model_parallel, p.pipeline_stage)?;
        let mesh = DeviceMesh::new(world.as_ref(), shape)?;
        let coord = mesh.coord;
        let DeviceMesh {
            dp_group,
            tp_group,
            pp_group,
            ..
        } = mesh;
        let last = shape.pp - 1;
        // First and last stage both hold the tied embedding; they sum its gradient here.
        let emb = if shape.pp > 1 {
            let color = (coord.pp == 0 || coord.pp == last).then_some(0);
            pp_group.split(color, coord.pp)?
        } else {
            None
        };
        let tp_pos = TensorParallel::with_runtime(coord.tp, shape.tp)?;
        let num_layers = mf_models::parallel::layer_count(config)?;
        let spec = StageSpec {
            layers: stage_layers(num_layers, shape.pp, coord.pp),
            first: coord.pp == 0,
            last: coord.pp == last,
            tp: tp_pos,
            vocab_parallel: !p.vocab_emb_dp && shape.tp > 1,
        };
        let model = build_stage(config, spec)?;
        let params = model.parameters();
        let full: HashMap<&str, &Tensor> = full.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut rules = Vec::with_capacity(params.len());
        {
            let _g = tch::no_grad_guard();
            for (name, local) in &params {
                let src = full.get(name.as_str()).ok_or_else(|| {
                    invalid(format!("the model's weights have no '{name}' to shard"))
                })?;
                let rule = model.shard_rule(name);
                let shard = rule.shard(src, tp_pos)?;
                if shard.size() != local.size() {
                    return Err(MfError::Shape(format!(
                        "'{name}': shard {:?} does not fit this rank's parameter {:?}",
                        shard.size(),
                        local.size()
                    )));
                }
                let mut l = local.shallow_clone();
                l.copy_(&shard);
                rules.push(rule);
            }
        }
        let optim = FlatOptimizer::new(&opts.optimizer)?;
        let me = world.rank();
        let tp = AsyncComm::new(
            tp_group,
            &format!("tp-comm-{me}"),
            format!(
                "world rank {me}, tensor-parallel group {:?}",
                shape.tp_ranks(me)?
            ),
        )?;
        let dp = AsyncComm::new(
            dp_group,
            &format!("dp-comm-{me}"),
            format!(
                "world rank {me}, data-parallel group {:?}",
                shape.dp_ranks(me)?
            ),
        )?;
        let mut engine = RankEngine {
            opts,
            world,
            shape,
            coord,
            tp,
            dp,
            pp: pp_group,
            emb,
            model,
            params,
            rules,
            buckets: Vec::new(),
            optim,
            batch_index: 0,
            seq_len: None,
        };
        engine.buckets = engine.make_buckets()?;
        Ok(engine)
    }

    /// This rank's coordinates in the mesh.
    pub fn coord(&self) -> MeshCoord {
        self.coord
    }

    /// This rank's parameters (local shards) under their checkpoint names.
    pub fn parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Bytes of optimizer state this rank holds (the moments of its bucket slices; the
    /// values it updates are the parameters themselves).
    pub fn optimizer_state_bytes(&self) -> usize {
        let per: usize = if self.optim.has_moments() { 2 } else { 0 };
        self.buckets
            .iter()
            .map(|b| (b.state.slice.end - b.state.slice.start) as usize * 4 * per)
            .sum()
    }

    fn pp_context(&self, e: MfError) -> MfError {
        let me = self.world.rank();
        let msg = match e {
            MfError::Comm(m) => m,
            other => other.to_string(),
        };
        MfError::Comm(format!(
            "world rank {me}, pipeline group {:?}: {msg}",
            self.shape.pp_ranks(me).unwrap_or_default()
        ))
    }

    fn pp_send(&self, t: &Tensor, stage: usize) -> Result<()> {
        self.pp.send(t, stage).map_err(|e| self.pp_context(e))
    }

    fn pp_recv(&self, stage: usize) -> Result<Tensor> {
        self.pp.recv(stage).map_err(|e| self.pp_context(e))
    }

    fn sp(&self) -> bool {
        self.opts.parallel.use_seq_parallel && self.shape.tp > 1
    }

    fn zero(&self) -> bool {
        self.opts.parallel.optimizer_shard && self.shape.dp > 1
    }

    /// Groups parameters into flat buckets: the stage's layers in `gradient_aggregation_group`
    /// contiguous groups (last layers first, the order backward finishes them), then the
    /// embedding / head parameters.
    fn make_buckets(&self) -> Result<Vec<Bucket>> {
        let layers = self.model.spec().layers.clone();
        let groups = self
            .opts
            .parallel
            .gradient_aggregation_group
            .min(layers.len())
            .max(1);
        let mut members: Vec<(Option<usize>, Vec<usize>)> = (0..groups)
            .rev()
            .map(|g| {
                (
                    Some(layers.start + stage_layers(layers.len(), groups, g).start),
                    Vec::new(),
                )
            })
            .collect();
        members.push((None, Vec::new()));
        for (i, (name, _)) in self.params.iter().enumerate() {
            let slot = match self.model.layer_of(name) {
                Some(l) => {
                    let g = (0..groups)
                        .find(|&g| {
                            stage_layers(layers.len(), groups, g).contains(&(l - layers.start))
                        })
                        .ok_or_else(|| {
                            invalid(format!("parameter '{name}' is not on this stage"))
                        })?;
                    groups - 1 - g
                }
                None => groups,
            };
            members[slot].1.push(i);
        }
        let dp = self.shape.dp as i64;
        let zero = self.zero();
        let mut out = Vec::new();
        for (first_layer, params) in members {
            if params.is_empty() {
                continue;
            }
            let shapes: Vec<Vec<i64>> = params.iter().map(|&i| self.params[i].1.size()).collect();
            let n: i64 = shapes.iter().map(|s| s.iter().product::<i64>()).sum();
            let len = if zero { (n + dp - 1) / dp * dp } else { n };
            let slice = if zero {
                let per = len / dp;
                let r = self.coord.dp as i64;
                r * per..(r + 1) * per
            } else {
                0..len
            };
            let flat = flatten(
                &params
                    .iter()
                    .map(|&i| self.params[i].1.detach())
                    .collect::<Vec<_>>(),
                len,
            );
            {
                let _g = tch::no_grad_guard();
                let mut off = 0;
                for (&i, shape) in params.iter().zip(&shapes) {
                    let n: i64 = shape.iter().product();
                    let mut p = self.params[i].1.shallow_clone();
                    p.set_data(&flat.narrow(0, off, n).view(shape.as_slice()));
                    off += n;
                }
            }
            let decay = flatten(
                &params
                    .iter()
                    .map(|&i| {
                        let t = &self.params[i].1;
                        t.ones_like() * if t.dim() > 1 { 1.0 } else { 0.0 }
                    })
                    .collect::<Vec<_>>(),
                len,
            );
            let norm_mask = flatten(
                &params
                    .iter()
                    .map(|&i| {
                        let t = &self.params[i].1;
                        t.ones_like() * if self.counts_in_norm(i) { 1.0 } else { 0.0 }
                    })
                    .collect::<Vec<_>>(),
                len,
            );
            let cut = |t: Tensor| t.narrow(0, slice.start, slice.end - slice.start).copy();
            // The slice this rank updates is a view of the flat parameters, not a copy.
            let values = flat.narrow(0, slice.start, slice.end - slice.start);
            // Without sharding, data-parallel replicas hold equal gradients: rank 0 counts them.
            let dp_owner = zero || self.coord.dp == 0;
            let norm_mask = cut(norm_mask) * if dp_owner { 1.0 } else { 0.0 };
            let state = BucketState {
                exp_avg: values.zeros_like(),
                exp_avg_sq: values.zeros_like(),
                decay: cut(decay),
                norm_mask,
                values,
                slice,
            };
            out.push(Bucket {
                params,
                shapes,
                len,
                first_layer,
                flat,
                state,
                pending: None,
                grad: None,
            });
        }
        Ok(out)
    }

    /// Whether parameter `i`'s elements on this rank count toward the global gradient norm
    /// (tensor-parallel replicas count on tp rank 0, the tied embedding on the first stage).
    fn counts_in_norm(&self, i: usize) -> bool {
        let name = &self.params[i].0;
        if self.rules[i] == ShardRule::Replicated && self.coord.tp != 0 {
            return false;
        }
        if self.shape.pp > 1
            && self.coord.pp != 0
            && self.model.tied_embedding() == Some(name.as_str())
        {
            return false;
        }
        true
    }

    /// The attention core's dropout seed of sublayer `si` of `layer` for copy `c` of
    /// micro-batch `j`: one function, so recompute redraws what the forward drew. Ranks hold
    /// different heads, so the tensor-parallel rank is part of it.
    fn core_seed(&self, j: usize, c: usize, layer: usize, si: usize) -> Option<u64> {
        self.dropout_seed(&[
            j as u64,
            c as u64,
            layer as u64,
            si as u64,
            1,
            self.coord.tp as u64,
        ])
    }

    fn dropout_seed(&self, parts: &[u64]) -> Option<u64> {
        if !self.model.has_dropout() {
            return None;
        }
        let mut all = vec![self.opts.seed, self.batch_index, self.coord.dp as u64];
        all.extend_from_slice(parts);
        Some(mix(&all))
    }

    /// Forward and backward of one global batch `[rows, seq + 1]` (token ids; inputs are all
    /// but the last column, labels all but the first). Gradients accumulate, scaled by
    /// `scale` (1 / gradient accumulation steps); with `sync`, the data-parallel reduction of
    /// each bucket starts as soon as its gradients are final. Returns the batch's mean loss,
    /// the same on every rank.
    pub fn forward_backward(&mut self, batch: &Tensor, scale: f64, sync: bool) -> Result<f64> {
        let p = self.opts.parallel.clone();
        let (rows, cols) = batch
            .size2()
            .map_err(|_| invalid("input_ids must be [batch, len]"))?;
        if cols < 2 {
            return Err(invalid(
                "input_ids rows need at least 2 tokens (seq_length + 1)",
            ));
        }
        let split = (p.data_parallel * p.micro_batch_num * p.micro_batch_interleave_num) as i64;
        if rows % split != 0 {
            return Err(invalid(format!(
                "the batch of {rows} rows does not split into data_parallel x micro_batch_num x micro_batch_interleave_num = {split} equal parts"
            )));
        }
        let t = cols - 1;
        if self.sp() && t % self.shape.tp as i64 != 0 {
            return Err(invalid(format!(
                "sequence parallelism splits the {t} positions over model_parallel = {} ranks: use a seq_length divisible by it",
                self.shape.tp
            )));
        }
        self.seq_len = Some(t);
        let batch = batch.to_kind(Kind::Int64);
        let per_dp = rows / self.shape.dp as i64;
        let mine = batch.narrow(0, self.coord.dp as i64 * per_dp, per_dp);
        let (m, n) = (p.micro_batch_num, p.micro_batch_interleave_num);
        let per_copy = per_dp / (m * n) as i64;
        let copies = |j: usize| -> Vec<(Tensor, Tensor)> {
            (0..n)
                .map(|c| {
                    let rows = mine.narrow(0, ((j * n + c) as i64) * per_copy, per_copy);
                    (rows.narrow(1, 0, t), rows.narrow(1, 1, t))
                })
                .collect()
        };
        let grad_scale = scale / (m * n) as f64;
        let stage = self.coord.pp;
        let stages = self.shape.pp;
        let mut live: HashMap<usize, Vec<CopyRec>> = HashMap::new();
        let mut loss_sum = 0.0;
        for op in one_f_one_b(stage, stages, m) {
            match op {
                PipeOp::Forward(j) => {
                    let data = copies(j);
                    let (recs, losses) = self.forward_micro(j, &data)?;
                    loss_sum += losses.iter().sum::<f64>() / (m * n) as f64;
                    live.insert(j, recs);
                }
                PipeOp::Backward(j) => {
                    let recs = live.remove(&j).ok_or_else(|| {
                        invalid(format!("pipeline schedule: micro-batch {j} has no forward"))
                    })?;
                    let last_micro = sync && j == m - 1;
                    self.backward_micro(j, recs, grad_scale, last_micro)?;
                }
            }
        }
        if sync {
            self.finish_outer_grads()?;
        }
        self.batch_index += 1;
        // The loss lives on the last stage; every rank learns the global mean.
        let contrib = if stage == stages - 1 { loss_sum } else { 0.0 };
        let total = self
            .world
            .all_reduce(&Tensor::from_slice(&[contrib]), ReduceOp::Sum)?
            .double_value(&[0]);
        let partial_over_tp = self.sp() && !self.vocab_parallel();
        let copies_of_loss = self.shape.dp * if partial_over_tp { 1 } else { self.shape.tp };
        Ok(total / copies_of_loss as f64)
    }

    fn vocab_parallel(&self) -> bool {
        self.model.spec().vocab_parallel
    }

    /// Forward of micro-batch `j` (its interleaved copies) through this stage.
    fn forward_micro(
        &mut self,
        j: usize,
        data: &[(Tensor, Tensor)],
    ) -> Result<(Vec<CopyRec>, Vec<f64>)> {
        let spec = self.model.spec().clone();
        let n = data.len();
        let mut recs: Vec<CopyRec> = (0..n)
            .map(|_| CopyRec {
                embed: None,
                layers: Vec::new(),
                head: None,
            })
            .collect();
        let mut xs = Vec::with_capacity(n);
        for (c, (ids, _)) in data.iter().enumerate() {
            if spec.first {
                let (tok, post) = self.embed_forward(j, c, ids)?;
                xs.push(post.value());
                recs[c].embed = Some((tok, post));
            } else {
                xs.push(self.pp_recv(self.coord.pp - 1)?);
            }
        }
        for layer in spec.layers.clone() {
            let full = self.opts.recompute.recompute;
            if full {
                let record = !self.opts.recompute.mp_comm_recompute;
                let mut comm: Vec<Vec<Tensor>> = (0..n).map(|_| Vec::new()).collect();
                let ys = tch::no_grad(|| {
                    self.layer_forward(j, layer, &xs, Mode::NoGrad { record }, &mut comm)
                })?
                .0;
                for (c, x) in xs.iter().enumerate() {
                    let (input, sliced) = self.keep_input(x);
                    recs[c].layers.push(LayerRec::Recompute {
                        input,
                        sliced,
                        comm: std::mem::take(&mut comm[c]),
                    });
                }
                xs = ys;
            } else {
                let mut none: Vec<Vec<Tensor>> = (0..n).map(|_| Vec::new()).collect();
                let (ys, subs) = self.layer_forward(j, layer, &xs, Mode::Train, &mut none)?;
                for (c, s) in subs.into_iter().enumerate() {
                    recs[c].layers.push(LayerRec::Graph(s));
                }
                xs = ys;
            }
        }
        let mut losses = Vec::with_capacity(n);
        for (c, x) in xs.iter().enumerate() {
            if spec.last {
                let (norm, loss) = self.head_forward(x, &data[c].1)?;
                losses.push(loss.out.double_value(&[]));
                recs[c].head = Some((norm, loss));
            } else {
                self.pp_send(x, self.coord.pp + 1)?;
            }
        }
        Ok((recs, losses))
    }

    /// Backward of micro-batch `j`; on the last micro-batch of a synchronising step each
    /// bucket's reduction starts when its layers are done.
    fn backward_micro(
        &mut self,
        j: usize,
        mut recs: Vec<CopyRec>,
        grad_scale: f64,
        last: bool,
    ) -> Result<()> {
        let spec = self.model.spec().clone();
        let n = recs.len();
        let mut gs = Vec::with_capacity(n);
        for rec in recs.iter_mut() {
            if spec.last {
                let (norm, loss) = rec
                    .head
                    .take()
                    .ok_or_else(|| invalid("head record missing"))?;
                gs.push(self.head_backward(norm, loss, grad_scale)?);
            } else {
                gs.push(self.pp_recv(self.coord.pp + 1)?);
            }
        }
        for layer in spec.layers.clone().rev() {
            let mut subs_per_copy = Vec::with_capacity(n);
            for rec in recs.iter_mut() {
                subs_per_copy.push(
                    rec.layers
                        .pop()
                        .ok_or_else(|| invalid("layer record missing"))?,
                );
            }
            // Full recompute: rebuild this layer's graph from its kept input.
            let mut graphs = Vec::with_capacity(n);
            let mut to_replay = Vec::new();
            let mut comms = Vec::new();
            for r in subs_per_copy {
                match r {
                    LayerRec::Graph(s) => graphs.push(Some(s)),
                    LayerRec::Recompute {
                        input,
                        sliced,
                        comm,
                    } => {
                        let x = if sliced {
                            self.tp.run(CommOp::AllGather(1), input)?
                        } else {
                            input
                        };
                        to_replay.push(x);
                        comms.push(comm);
                        graphs.push(None);
                    }
                }
            }
            if !to_replay.is_empty() {
                let (_, subs) =
                    self.layer_forward(j, layer, &to_replay, Mode::Replay, &mut comms)?;
                for (g, s) in graphs.iter_mut().zip(subs) {
                    *g = Some(s);
                }
            }
            let graphs: Vec<LayerSegs> =
                graphs.into_iter().map(|g| g.unwrap_or_default()).collect();
            gs = self.layer_backward(j, layer, graphs, gs)?;
            if last {
                self.layer_grads_final(layer)?;
            }
        }
        for (c, rec) in recs.into_iter().enumerate() {
            if spec.first {
                let (tok, post) = rec
                    .embed
                    .ok_or_else(|| invalid("embedding record missing"))?;
                self.embed_backward(tok, post, &gs[c])?;
            } else {
                self.pp_send(&gs[c], self.coord.pp - 1)?;
            }
        }
        Ok(())
    }

    /// The layer input full recompute keeps: its sequence slice with
    /// `recompute_slice_activation` (tensor-parallel replicas then hold one slice each).
    fn keep_input(&self, x: &Tensor) -> (Tensor, bool) {
        let slice =
            self.opts.recompute.recompute_slice_activation && self.shape.tp > 1 && !self.sp();
        if slice && x.size()[1] % self.shape.tp as i64 == 0 {
            let part = x.size()[1] / self.shape.tp as i64;
            (x.narrow(1, part * self.coord.tp as i64, part).copy(), true)
        } else {
            (x.shallow_clone(), false)
        }
    }

    /// A rank's sequence shard to the whole sequence (sequence parallel), else as is: the
    /// forward of `f` and the backward of `g`.
    fn comm_in(&self, h: Tensor) -> Result<Tensor> {
        if self.sp() {
            self.tp.run(CommOp::AllGather(1), h)
        } else {
            Ok(h)
        }
    }

    /// Partial sums over the tensor-parallel group, reduced to this rank's layout: its
    /// sequence shard (sequence parallel) or the whole sum. The forward of `g` and the
    /// backward of `f`; submitted, so the caller can compute meanwhile.
    fn comm_out(&self, p: Tensor) -> Result<Pending> {
        if self.sp() {
            self.tp.submit(CommOp::ReduceScatter(ReduceOp::Sum, 1), p)
        } else {
            self.tp.submit(CommOp::AllReduce(ReduceOp::Sum), p)
        }
    }

    /// One layer over all copies; the copies' reductions overlap each other's compute.
    fn layer_forward(
        &self,
        j: usize,
        layer: usize,
        xs: &[Tensor],
        mode: Mode,
        comm: &mut [Vec<Tensor>],
    ) -> Result<(Vec<Tensor>, Vec<LayerSegs>)> {
        let n = xs.len();
        let mut xs: Vec<Tensor> = xs.iter().map(|x| x.shallow_clone()).collect();
        let mut recs: Vec<LayerSegs> = (0..n).map(|_| LayerSegs::default()).collect();
        if self.model.has_pre_layer(layer) {
            for c in 0..n {
                let pre = Seg::run(&[(&xs[c], true)], |l| self.model.pre_layer(layer, &l[0]))?;
                xs[c] = pre.value();
                recs[c].pre = Some(pre);
            }
        }
        let mut replay: Vec<std::vec::IntoIter<Tensor>> = comm
            .iter_mut()
            .map(|v| {
                if mode == Mode::Replay {
                    std::mem::take(v).into_iter()
                } else {
                    Vec::new().into_iter()
                }
            })
            .collect();
        let selective = self.opts.recompute.select_recompute;
        let tp_seed = self.coord.tp as u64;
        for (si, sub) in Sublayer::ALL.into_iter().enumerate() {
            let mut stage1 = Vec::with_capacity(n);
            for c in 0..n {
                let norm = Seg::run(&[(&xs[c], true)], |l| self.model.norm(layer, sub, &l[0]))?;
                let h = match replay[c].next() {
                    Some(h) => h,
                    None => self.comm_in(norm.value())?,
                };
                if let Mode::NoGrad { record: true } = mode {
                    comm[c].push(h.shallow_clone());
                }
                let seed = self.core_seed(j, c, layer, si);
                let (core, p) = if selective && sub == Sublayer::Attention && mode == Mode::Train {
                    let p = tch::no_grad(|| self.model.core(layer, sub, &h, seed))?;
                    (CoreRec::Recompute(h), p)
                } else {
                    let s = Seg::run(&[(&h, true)], |l| self.model.core(layer, sub, &l[0], seed))?;
                    let p = s.value();
                    (CoreRec::Graph(s), p)
                };
                let pending = match replay[c].next() {
                    Some(r) => Pending::Ready(r),
                    None => self.comm_out(p)?,
                };
                stage1.push((norm, core, pending));
            }
            for (c, (norm, core, pending)) in stage1.into_iter().enumerate() {
                let r = pending.wait()?;
                if let Mode::NoGrad { record: true } = mode {
                    comm[c].push(r.shallow_clone());
                }
                let bias = self.model.out_bias(layer, sub);
                let p_drop = self.model.hidden_dropout();
                let post_seed = self.dropout_seed(&[
                    j as u64,
                    c as u64,
                    layer as u64,
                    si as u64,
                    2,
                    if self.sp() { tp_seed } else { u64::MAX },
                ]);
                let post = Seg::run(&[(&xs[c], true), (&r, true)], |l| {
                    let y = match &bias {
                        Some(b) => &l[1] + b,
                        None => l[1].shallow_clone(),
                    };
                    Ok(&l[0] + dropout(&y, p_drop, post_seed))
                })?;
                xs[c] = post.value();
                recs[c].subs.push(SubRec { norm, core, post });
            }
        }
        Ok((xs, recs))
    }

    /// Backward through one layer for all copies; returns the gradients of the layer inputs.
    fn layer_backward(
        &self,
        j: usize,
        layer: usize,
        mut recs: Vec<LayerSegs>,
        gys: Vec<Tensor>,
    ) -> Result<Vec<Tensor>> {
        let n = gys.len();
        let mut gys = gys;
        for (si, sub) in Sublayer::ALL.into_iter().enumerate().rev() {
            let mut stage1 = Vec::with_capacity(n);
            for c in 0..n {
                let SubRec { norm, core, post } = recs[c]
                    .subs
                    .pop()
                    .ok_or_else(|| invalid("sublayer record missing"))?;
                let mut g = post.backward(&gys[c])?;
                let gx_res = g
                    .remove(0)
                    .ok_or_else(|| invalid("residual gradient missing"))?;
                let gr = g
                    .remove(0)
                    .ok_or_else(|| invalid("sublayer gradient missing"))?;
                let gp = self.comm_in(gr)?;
                let core = match core {
                    CoreRec::Graph(s) => s,
                    CoreRec::Recompute(h) => {
                        let seed = self.core_seed(j, c, layer, si);
                        Seg::run(&[(&h, true)], |l| self.model.core(layer, sub, &l[0], seed))?
                    }
                };
                let gh_full = core
                    .backward(&gp)?
                    .remove(0)
                    .ok_or_else(|| invalid("core gradient missing"))?;
                let pending = self.comm_out(gh_full)?;
                stage1.push((norm, gx_res, pending));
            }
            for (c, (norm, gx_res, pending)) in stage1.into_iter().enumerate() {
                let gh = pending.wait()?;
                let gx_norm = norm
                    .backward(&gh)?
                    .remove(0)
                    .ok_or_else(|| invalid("norm gradient missing"))?;
                gys[c] = gx_res + gx_norm;
            }
        }
        for (c, rec) in recs.iter_mut().enumerate() {
            if let Some(pre) = rec.pre.take() {
                gys[c] = pre
                    .backward(&gys[c])?
                    .remove(0)
                    .ok_or_else(|| invalid("layer input gradient missing"))?;
            }
        }
        Ok(gys)
    }

    fn positions(&self, rows: i64, t: i64) -> Tensor {
        let pos = Tensor::arange(t, (Kind::Int64, tch::Device::Cpu));
        let pos = if self.sp() {
            let part = t / self.shape.tp as i64;
            pos.narrow(0, part * self.coord.tp as i64, part)
        } else {
            pos
        };
        let len = pos.size()[0];
        pos.unsqueeze(0).expand([rows, len], false)
    }

    fn embed_forward(&self, j: usize, c: usize, ids: &Tensor) -> Result<(Seg, Seg)> {
        let (rows, t) = ids.size2()?;
        let sp = self.sp();
        let (tok, x) = if self.vocab_parallel() {
            let tok = Seg::run(&[(ids, false)], |l| self.model.token_embedding(&l[0]))?;
            let x = self.comm_out(tok.value())?.wait()?;
            (tok, x)
        } else {
            let ids = if sp {
                let part = t / self.shape.tp as i64;
                ids.narrow(1, part * self.coord.tp as i64, part)
            } else {
                ids.shallow_clone()
            };
            let tok = Seg::run(&[(&ids, false)], |l| self.model.token_embedding(&l[0]))?;
            let x = tok.value();
            (tok, x)
        };
        let pos = self.positions(rows, t);
        let seed = self.dropout_seed(&[
            j as u64,
            c as u64,
            u64::MAX,
            0,
            0,
            if sp { self.coord.tp as u64 } else { u64::MAX },
        ]);
        let p_drop = self.model.embedding_dropout();
        let post = Seg::run(&[(&x, true)], |l| {
            Ok(dropout(&self.model.embed_post(&l[0], &pos), p_drop, seed))
        })?;
        Ok((tok, post))
    }

    fn embed_backward(&self, tok: Seg, post: Seg, gy: &Tensor) -> Result<()> {
        let g = post
            .backward(gy)?
            .remove(0)
            .ok_or_else(|| invalid("embedding gradient missing"))?;
        let g = if self.vocab_parallel() {
            self.comm_in(g)?
        } else {
            g
        };
        tok.backward(&g)?;
        Ok(())
    }

    fn head_forward(&self, x: &Tensor, labels: &Tensor) -> Result<(Seg, Seg)> {
        let norm = Seg::run(&[(x, true)], |l| self.model.final_norm(&l[0]))?;
        let w = self.model.head_weight()?;
        // The mean runs over every position of the micro-batch, on every rank alike.
        let total = labels.numel() as f64;
        if self.vocab_parallel() {
            let hn = self.comm_in(norm.value())?;
            let max = |t: Tensor| self.tp.run(CommOp::AllReduce(ReduceOp::Max), t);
            let sum = |t: Tensor| self.tp.run(CommOp::AllReduce(ReduceOp::Sum), t);
            // Global max, sum of exponentials and target logit are all-reduced per chunk of
            // rows, so the logits are never gathered (and never whole on one rank either).
            let shard = VocabShard {
                start: w.size()[0] * self.coord.tp as i64,
                all_reduce_max: &max,
                all_reduce_sum: &sum,
            };
            let loss = Seg::run(&[(&hn, true)], |l| {
                lm_head_cross_entropy(&l[0], &w, labels, total, Some(&shard))
            })?;
            Ok((norm, loss))
        } else {
            let labels = if self.sp() {
                let t = labels.size()[1];
                let part = t / self.shape.tp as i64;
                labels.narrow(1, part * self.coord.tp as i64, part)
            } else {
                labels.shallow_clone()
            };
            let loss = Seg::run(&[(&norm.value(), true)], |l| {
                lm_head_cross_entropy(&l[0], &w, &labels, total, None)
            })?;
            Ok((norm, loss))
        }
    }

    fn head_backward(&self, norm: Seg, loss: Seg, grad_scale: f64) -> Result<Tensor> {
        let g = loss.out.ones_like() * grad_scale;
        let gh = loss
            .backward(&g)?
            .remove(0)
            .ok_or_else(|| invalid("head gradient missing"))?;
        let gh = if self.vocab_parallel() {
            self.comm_out(gh)?.wait()?
        } else {
            gh
        };
        norm.backward(&gh)?
            .remove(0)
            .ok_or_else(|| invalid("final norm gradient missing"))
    }

    /// Gradients that are partial sums over the tensor-parallel group get summed there: under
    /// sequence parallelism every replicated parameter (it saw this rank's part of the
    /// sequence), and always those the family names (`grad_partial_over_tp`).
    fn sum_replicated_over_tp(&self, params: &[usize]) -> Result<()> {
        if self.shape.tp == 1 {
            return Ok(());
        }
        for &i in params {
            let partial = (self.sp() && self.rules[i] == ShardRule::Replicated)
                || self.model.grad_partial_over_tp(&self.params[i].0);
            if !partial {
                continue;
            }
            let p = &self.params[i].1;
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let sum = self.tp.run(CommOp::AllReduce(ReduceOp::Sum), g.detach())?;
            let mut g = g;
            tch::no_grad(|| g.copy_(&sum));
        }
        Ok(())
    }

    fn submit_bucket(&mut self, b: usize) -> Result<()> {
        let params = self.buckets[b].params.clone();
        self.sum_replicated_over_tp(&params)?;
        let grads: Vec<Tensor> = params
            .iter()
            .map(|&i| {
                let p = &self.params[i].1;
                let g = p.grad();
                if g.defined() {
                    g.detach()
                } else {
                    p.zeros_like()
                }
            })
            .collect();
        let flat = flatten(&grads, self.buckets[b].len);
        let op = if self.opts.gradients_mean {
            ReduceOp::Mean
        } else {
            ReduceOp::Sum
        };
        let pending = if self.zero() {
            self.dp.submit(CommOp::ReduceScatter(op, 0), flat)?
        } else {
            self.dp.submit(CommOp::AllReduce(op), flat)?
        };
        self.buckets[b].pending = Some(pending);
        Ok(())
    }

    fn layer_grads_final(&mut self, layer: usize) -> Result<()> {
        for b in 0..self.buckets.len() {
            if self.buckets[b].first_layer == Some(layer) {
                self.submit_bucket(b)?;
            }
        }
        Ok(())
    }

    /// After the whole backward: the tied embedding's gradient summed between the first and
    /// last stage, then the embedding / head bucket.
    fn finish_outer_grads(&mut self) -> Result<()> {
        if let (Some(emb), Some(name)) = (&self.emb, self.model.tied_embedding()) {
            if let Some((_, p)) = self.params.iter().find(|(n, _)| n == name) {
                let g = p.grad();
                let g = if g.defined() { g } else { p.zeros_like() };
                let sum = emb.all_reduce(&g.detach(), ReduceOp::Sum)?;
                let mut pg = p.grad();
                if pg.defined() {
                    tch::no_grad(|| pg.copy_(&sum));
                } else {
                    return Err(invalid("the tied embedding has no gradient on this stage"));
                }
            }
        }
        for b in 0..self.buckets.len() {
            if self.buckets[b].first_layer.is_none() {
                self.submit_bucket(b)?;
            }
        }
        Ok(())
    }

    /// Waits for every bucket's reduction and returns the global L2 norm of the gradients
    /// (divided by `grad_scale`), the same on every rank.
    pub fn reduce_gradients(&mut self) -> Result<f64> {
        let mut sq = 0.0f64;
        for b in &mut self.buckets {
            let pending = b
                .pending
                .take()
                .ok_or_else(|| invalid("optimizer step before the gradients were reduced (forward_backward with sync = true)"))?;
            let g = pending.wait()?;
            sq += (&g * &b.state.norm_mask)
                .pow_tensor_scalar(2)
                .sum(Kind::Double)
                .double_value(&[]);
            b.grad = Some(g);
        }
        let total = self
            .world
            .all_reduce(&Tensor::from_slice(&[sq]), ReduceOp::Sum)?
            .double_value(&[0]);
        Ok(total.sqrt())
    }

    /// Clips (when `clip_coef < 1`), updates every bucket with learning rate `lr`, writes the
    /// new values into the parameters and clears the gradients.
    pub fn apply_update(&mut self, lr: f64, clip_coef: f64) -> Result<()> {
        self.optim.begin_step();
        let zero = self.zero();
        for bi in 0..self.buckets.len() {
            let g = self.buckets[bi]
                .grad
                .take()
                .ok_or_else(|| invalid("apply_update before reduce_gradients"))?;
            let g = if clip_coef < 1.0 { g * clip_coef } else { g };
            {
                let b = &mut self.buckets[bi];
                self.optim.update(&mut b.state, &g, lr);
            }
            // Without sharding the update already wrote the parameters (views of the flat
            // buffer); with it, the other ranks' slices arrive by all-gather.
            if zero {
                let gathered = self
                    .dp
                    .run(CommOp::AllGather(0), self.buckets[bi].state.values.copy())?;
                let _g = tch::no_grad_guard();
                self.buckets[bi].flat.copy_(&gathered);
            }
        }
        self.zero_grad();
        Ok(())
    }

    /// Clears gradients and drops any pending reduction (a skipped step).
    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            let mut p = p.shallow_clone();
            p.zero_grad();
        }
        for b in &mut self.buckets {
            b.grad = None;
            b.pending = None;
        }
    }

    /// Sets the data position (batches consumed so far) of the next `forward_backward`.
    pub fn set_batch_index(&mut self, index: u64) {
        self.batch_index = index;
    }

    /// Optimizer updates done.
    pub fn optimizer_step(&self) -> usize {
        self.optim.step
    }

    /// The full model (checkpoint names) and, with `optimizer`, the optimizer state under the
    /// Trainer optimizer's names (`step`, `<name>.exp_avg`, `<name>.exp_avg_sq`), assembled on
    /// world rank 0 (`None` elsewhere). Collective over the world.
    pub fn full_state(&self, optimizer: bool) -> Result<Option<Vec<(String, Tensor)>>> {
        // 1. Per parameter: this rank's local tensors (value and, if asked, moments).
        let mut local: Vec<(String, usize, Tensor)> = Vec::new();
        for (i, (name, p)) in self.params.iter().enumerate() {
            local.push((name.clone(), i, p.detach()));
        }
        if optimizer && self.optim.has_moments() {
            for b in &self.buckets {
                for (which, t) in [
                    ("exp_avg", &b.state.exp_avg),
                    ("exp_avg_sq", &b.state.exp_avg_sq),
                ] {
                    let flat = if self.zero() {
                        self.dp.run(CommOp::AllGather(0), t.shallow_clone())?
                    } else {
                        t.shallow_clone()
                    };
                    for (&i, v) in b.params.iter().zip(unflatten(&flat, &b.shapes)) {
                        local.push((format!("{}.{which}", self.params[i].0), i, v));
                    }
                }
            }
        }
        // 2. Tensor-parallel unshard.
        let mut stage_full = Vec::with_capacity(local.len());
        for (name, i, t) in local {
            let rule = self.rules[i];
            let full = match rule {
                ShardRule::Replicated => t,
                ShardRule::Split { .. } if self.shape.tp == 1 => t,
                ShardRule::Split { .. } => {
                    let all = self
                        .tp
                        .run(CommOp::AllGather(0), t.unsqueeze(0).contiguous())?;
                    let shards: Vec<Tensor> =
                        (0..self.shape.tp as i64).map(|r| all.get(r)).collect();
                    rule.unshard(&shards)
                }
            };
            stage_full.push((name, full));
        }
        // 3. Stage leaders send to world rank 0.
        let leader = |pp: usize| self.shape.rank(MeshCoord { dp: 0, tp: 0, pp });
        let me = self.world.rank();
        if me != 0 {
            if me == leader(self.coord.pp) {
                self.world
                    .send(&Tensor::from_slice(&[stage_full.len() as i64]), 0)?;
                for (name, t) in &stage_full {
                    self.world.send(&Tensor::from_slice(name.as_bytes()), 0)?;
                    self.world.send(t, 0)?;
                }
            }
            return Ok(None);
        }
        let mut out: BTreeMap<String, Tensor> = stage_full.into_iter().collect();
        for pp in 1..self.shape.pp {
            let src = leader(pp);
            let count = self.world.recv(src)?.int64_value(&[0]);
            for _ in 0..count {
                let name_bytes: Vec<u8> =
                    Vec::<u8>::try_from(self.world.recv(src)?).map_err(|e| {
                        MfError::Comm(format!("bad parameter name from rank {src}: {e}"))
                    })?;
                let name = String::from_utf8(name_bytes).map_err(|e| {
                    MfError::Comm(format!("bad parameter name from rank {src}: {e}"))
                })?;
                let t = self.world.recv(src)?;
                out.entry(name).or_insert(t);
            }
        }
        let mut v: Vec<(String, Tensor)> = out.into_iter().collect();
        if optimizer {
            v.push(("step".into(), Tensor::from_slice(&[self.optim.step as i64])));
        }
        Ok(Some(v))
    }

    /// World rank 0's `tensors` on every rank (each rank passes tensors of the same names and
    /// shapes, e.g. its own copy of the model). Collective over the world.
    pub fn share_from_zero(&self, tensors: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        broadcast_from_zero(self.world.as_ref(), tensors)
    }

    /// This rank's index in the world.
    pub fn world_rank(&self) -> usize {
        self.world.rank()
    }

    /// Restores optimizer moments and step from full tensors under the Trainer optimizer's
    /// names (a checkpoint written by either runtime).
    pub fn load_optimizer_state(&mut self, get: &dyn Fn(&str) -> Result<Tensor>) -> Result<()> {
        self.optim.step = get("step")?.int64_value(&[0]) as usize;
        if !self.optim.has_moments() {
            return Ok(());
        }
        let tp = TensorParallel::with_runtime(self.coord.tp, self.shape.tp)?;
        for b in &mut self.buckets {
            for which in ["exp_avg", "exp_avg_sq"] {
                let mut shards = Vec::with_capacity(b.params.len());
                for &i in &b.params {
                    let name = format!("{}.{which}", self.params[i].0);
                    let full = get(&name)?;
                    let s = self.rules[i].shard(&full, tp)?;
                    if s.size() != self.params[i].1.size() {
                        return Err(MfError::Shape(format!(
                            "optimizer state '{name}' does not fit the model ({:?} vs {:?})",
                            s.size(),
                            self.params[i].1.size()
                        )));
                    }
                    shards.push(s);
                }
                let flat = flatten(&shards, b.len);
                let slice = flat
                    .narrow(
                        0,
                        b.state.slice.start,
                        b.state.slice.end - b.state.slice.start,
                    )
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

/// Dropout with a mask drawn from `seed` (none without a seed: the model has no dropout).
fn dropout(x: &Tensor, p: f64, seed: Option<u64>) -> Tensor {
    match seed {
        Some(s) if p > 0.0 => hash_dropout(x, p, s),
        _ => x.shallow_clone(),
    }
}

fn broadcast_from_zero(
    world: &dyn Communicator,
    tensors: &[(String, Tensor)],
) -> Result<Vec<(String, Tensor)>> {
    if world.world_size() == 1 {
        return Ok(tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect());
    }
    tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), world.broadcast(&t.detach().contiguous(), 0)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_cover_the_layers() {
        assert_eq!(stage_layers(5, 2, 0), 0..3);
        assert_eq!(stage_layers(5, 2, 1), 3..5);
        assert_eq!(stage_layers(4, 4, 3), 3..4);
    }
}
