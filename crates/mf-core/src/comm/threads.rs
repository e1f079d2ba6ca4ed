//! The threads backend: ranks are threads of one process exchanging tensors over crossbeam
//! channels.
//!
//! Tensors cross threads as owned CPU byte buffers with their shape and dtype, never as shared
//! libtorch handles, so no storage is aliased between ranks. Every collective is an exchange in
//! which each rank ends up with every rank's buffer; each rank then reduces them itself in rank
//! order (`r0 + r1 + ...`), so results are bit-identical on every rank and in every run,
//! whatever the thread timing. Each ordered pair of ranks has its own channel, one for
//! collectives and one for point-to-point traffic; a dropped communicator disconnects its
//! channels, which is how peers learn that a rank returned or panicked.
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use tch::{Device, Kind, Tensor};

use super::{check_rank, norm_dim, Communicator, ReduceOp, DEFAULT_TIMEOUT};
use crate::error::{MfError, Result};

/// A tensor as owned bytes: what crosses between rank threads.
#[derive(Debug)]
struct Packet {
    shape: Vec<i64>,
    kind: Kind,
    data: Vec<u8>,
}

impl Packet {
    fn from_tensor(t: &Tensor) -> Result<Self> {
        let t = t.detach().f_to_device(Device::Cpu)?.f_contiguous()?;
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut data, numel)?;
        Ok(Packet {
            shape: t.size(),
            kind: t.kind(),
            data,
        })
    }

    fn to_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::f_from_data_size(
            &self.data,
            &self.shape,
            self.kind,
        )?)
    }
}

/// What a rank contributes to one collective.
#[derive(Debug)]
enum Payload {
    /// A whole tensor.
    Tensor(Packet),
    /// Only a tensor's shape and dtype (non-root ranks of a broadcast).
    Meta(Vec<i64>, Kind),
    /// A rank's color and key in a split.
    Split(Option<usize>, usize),
    /// Nothing (barrier).
    Empty,
}

/// The body of a collective message.
enum Body {
    /// A rank's contribution, shared by every destination without copying.
    Data(Arc<Payload>),
    /// A new sub-group communicator handed from the group's leader to a member.
    Group(Box<ThreadComm>),
}

/// A collective message, tagged so mismatched call sequences are reported, not mis-combined.
struct CollMsg {
    op: &'static str,
    seq: u64,
    body: Body,
}

/// One rank's communicator in a threads-backend group.
pub struct ThreadComm {
    rank: usize,
    world: usize,
    timeout: Duration,
    coll_tx: Vec<Sender<CollMsg>>,
    coll_rx: Vec<Receiver<CollMsg>>,
    p2p_tx: Vec<Sender<Packet>>,
    p2p_rx: Vec<Receiver<Packet>>,
    /// Collectives this rank has started in this group; ranks must agree on it.
    seq: Cell<u64>,
    /// Set by [`run_ranks_with_timeout`] to learn which rank left first.
    exit_log: Option<ExitLog>,
}

/// Where a rank records the moment its communicator is dropped, on a clock shared by the run.
struct ExitLog {
    clock: Arc<AtomicUsize>,
    slot: Arc<AtomicUsize>,
}

impl Drop for ThreadComm {
    fn drop(&mut self) {
        // This runs before the channels close, so it is ordered before any peer can notice
        // the departure: the root cause of a cascade of errors gets the smallest tick.
        if let Some(log) = &self.exit_log {
            log.slot
                .store(log.clock.fetch_add(1, Ordering::SeqCst), Ordering::SeqCst);
        }
    }
}

/// The communicators of a threads-backend group, one per rank.
pub struct ThreadGroup {
    comms: Vec<ThreadComm>,
}

impl ThreadGroup {
    /// A group of `world_size` ranks with the default timeout ([`DEFAULT_TIMEOUT`]).
    pub fn new(world_size: usize) -> Result<Self> {
        Self::with_timeout(world_size, DEFAULT_TIMEOUT)
    }

    /// A group of `world_size` ranks whose operations fail after waiting `timeout` for a peer.
    pub fn with_timeout(world_size: usize, timeout: Duration) -> Result<Self> {
        if world_size == 0 {
            return Err(crate::invalid(
                "a communicator group needs at least one rank",
            ));
        }
        if timeout.is_zero() {
            return Err(crate::invalid("communicator timeout must be positive"));
        }
        Ok(ThreadGroup {
            comms: build_group(world_size, timeout),
        })
    }

    /// The communicators, rank 0 first; move each into its rank's thread.
    pub fn into_comms(self) -> Vec<ThreadComm> {
        self.comms
    }
}

/// Wires a full mesh of channels for `world` ranks.
fn build_group(world: usize, timeout: Duration) -> Vec<ThreadComm> {
    // txs[src][dst] / rxs[dst][src]: the channel from src to dst.
    let mut coll_tx: Vec<Vec<Sender<CollMsg>>> = (0..world).map(|_| Vec::new()).collect();
    let mut coll_rx: Vec<Vec<Receiver<CollMsg>>> = (0..world).map(|_| Vec::new()).collect();
    let mut p2p_tx: Vec<Vec<Sender<Packet>>> = (0..world).map(|_| Vec::new()).collect();
    let mut p2p_rx: Vec<Vec<Receiver<Packet>>> = (0..world).map(|_| Vec::new()).collect();
    for src in 0..world {
        for dst in 0..world {
            let (tx, rx) = unbounded();
            coll_tx[src].push(tx);
            coll_rx[dst].push(rx);
            let (tx, rx) = unbounded();
            p2p_tx[src].push(tx);
            p2p_rx[dst].push(rx);
        }
    }
    coll_tx
        .into_iter()
        .zip(coll_rx)
        .zip(p2p_tx.into_iter().zip(p2p_rx))
        .enumerate()
        .map(|(rank, ((ctx, crx), (ptx, prx)))| ThreadComm {
            rank,
            world,
            timeout,
            coll_tx: ctx,
            coll_rx: crx,
            p2p_tx: ptx,
            p2p_rx: prx,
            seq: Cell::new(0),
            exit_log: None,
        })
        .collect()
}

impl ThreadComm {
    /// How long an operation waits for a peer before failing.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn left(&self, peer: usize, op: &str) -> MfError {
        MfError::Comm(format!(
            "rank {} in {op}: rank {peer} has left the group (it returned, failed or panicked) \
             before taking part",
            self.rank
        ))
    }

    fn send_coll(&self, dst: usize, op: &'static str, seq: u64, body: Body) -> Result<()> {
        self.coll_tx[dst]
            .send(CollMsg { op, seq, body })
            .map_err(|_| self.left(dst, op))
    }

    fn recv_coll(&self, src: usize, op: &'static str, seq: u64, deadline: Instant) -> Result<Body> {
        match self.coll_rx[src].recv_deadline(deadline) {
            Ok(m) if m.op == op && m.seq == seq => Ok(m.body),
            Ok(m) => Err(MfError::Comm(format!(
                "rank {} is in {op} (collective #{seq}) but rank {src} sent {} (collective #{}): \
                 every rank must call the same collectives in the same order",
                self.rank, m.op, m.seq
            ))),
            Err(RecvTimeoutError::Timeout) => Err(MfError::Comm(format!(
                "rank {} in {op} (collective #{seq}): timed out after {:.1?} waiting for rank \
                 {src} (is it hung, or running a different collective?)",
                self.rank, self.timeout
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(self.left(src, op)),
        }
    }

    /// Every rank's payload for collective `op`, indexed by rank (this rank's included).
    fn exchange(&self, op: &'static str, mine: Payload) -> Result<Vec<Arc<Payload>>> {
        let seq = self.seq.get();
        self.seq.set(seq + 1);
        let deadline = Instant::now() + self.timeout;
        let mine = Arc::new(mine);
        for dst in (0..self.world).filter(|&d| d != self.rank) {
            self.send_coll(dst, op, seq, Body::Data(mine.clone()))?;
        }
        (0..self.world)
            .map(|src| {
                if src == self.rank {
                    return Ok(mine.clone());
                }
                match self.recv_coll(src, op, seq, deadline)? {
                    Body::Data(p) => Ok(p),
                    Body::Group(_) => Err(MfError::Comm(format!(
                        "rank {} in {op}: rank {src} sent a sub-group instead of data",
                        self.rank
                    ))),
                }
            })
            .collect()
    }

    /// Exchanges whole tensors and checks that every rank sent the same shape and dtype.
    fn exchange_tensors(&self, op: &'static str, t: &Tensor) -> Result<Vec<Tensor>> {
        let all = self.exchange(op, Payload::Tensor(Packet::from_tensor(t)?))?;
        let packets: Vec<&Packet> = all
            .iter()
            .map(|p| match p.as_ref() {
                Payload::Tensor(p) => Ok(p),
                _ => Err(MfError::Comm(format!("{op}: a rank sent no tensor"))),
            })
            .collect::<Result<_>>()?;
        check_same(op, packets.iter().map(|p| (p.shape.as_slice(), p.kind)))?;
        packets.iter().map(|p| p.to_tensor()).collect()
    }
}

/// Fails, with every rank's shape and dtype listed, unless all ranks agree.
fn check_same<'a>(op: &str, metas: impl Iterator<Item = (&'a [i64], Kind)> + Clone) -> Result<()> {
    let mut it = metas.clone();
    let Some(first) = it.next() else {
        return Ok(());
    };
    if it.all(|m| m == first) {
        return Ok(());
    }
    let listed: Vec<String> = metas
        .enumerate()
        .map(|(r, (s, k))| format!("rank {r} {s:?} {k:?}"))
        .collect();
    Err(MfError::Comm(format!(
        "{op}: ranks passed tensors of different shapes or dtypes: {}",
        listed.join(", ")
    )))
}

fn is_float(k: Kind) -> bool {
    matches!(k, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
}

/// Reduces `ts` in rank order; half-precision inputs accumulate in f32 and round once.
fn reduce(op_name: &str, ts: &[Tensor], op: ReduceOp) -> Result<Tensor> {
    let kind = ts[0].kind();
    if op == ReduceOp::Mean && !is_float(kind) {
        return Err(MfError::Comm(format!(
            "{op_name}: Mean needs a floating tensor, got {kind:?}"
        )));
    }
    let acc_kind = match kind {
        Kind::Half | Kind::BFloat16 => Kind::Float,
        k => k,
    };
    let mut acc = ts[0].f_to_kind(acc_kind)?;
    for t in &ts[1..] {
        let t = t.f_to_kind(acc_kind)?;
        acc = match op {
            ReduceOp::Sum | ReduceOp::Mean => acc.f_add(&t)?,
            ReduceOp::Max => acc.f_maximum(&t)?,
        };
    }
    if op == ReduceOp::Mean {
        acc = acc.f_div_scalar(ts.len() as f64)?;
    }
    Ok(acc.f_to_kind(kind)?)
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor> {
        let ts = self.exchange_tensors("all_reduce", tensor)?;
        Ok(reduce("all_reduce", &ts, op)?.f_to_device(tensor.device())?)
    }

    fn all_gather(&self, tensor: &Tensor, dim: i64) -> Result<Tensor> {
        let d = norm_dim(dim, tensor.dim(), "all_gather")?;
        let ts = self.exchange_tensors("all_gather", tensor)?;
        Ok(Tensor::f_cat(&ts, d)?.f_to_device(tensor.device())?)
    }

    fn reduce_scatter(&self, tensor: &Tensor, op: ReduceOp, dim: i64) -> Result<Tensor> {
        let d = norm_dim(dim, tensor.dim(), "reduce_scatter")?;
        let ts = self.exchange_tensors("reduce_scatter", tensor)?;
        let n = ts[0].size()[d as usize];
        let w = self.world as i64;
        if n % w != 0 {
            return Err(MfError::Comm(format!(
                "reduce_scatter: dim {dim} has size {n}, not divisible by the {w} ranks"
            )));
        }
        let part = n / w;
        let full = reduce("reduce_scatter", &ts, op)?;
        Ok(full
            .f_narrow(d, self.rank as i64 * part, part)?
            .f_contiguous()?
            .f_to_device(tensor.device())?)
    }

    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<Tensor> {
        check_rank(root, self.world, "broadcast root")?;
        let mine = if self.rank == root {
            Payload::Tensor(Packet::from_tensor(tensor)?)
        } else {
            Payload::Meta(tensor.size(), tensor.kind())
        };
        let all = self.exchange("broadcast", mine)?;
        let metas = all.iter().map(|p| match p.as_ref() {
            Payload::Tensor(p) => (p.shape.as_slice(), p.kind),
            Payload::Meta(s, k) => (s.as_slice(), *k),
            _ => (&[][..], Kind::Bool),
        });
        check_same("broadcast", metas)?;
        match all[root].as_ref() {
            Payload::Tensor(p) => Ok(p.to_tensor()?.f_to_device(tensor.device())?),
            _ => Err(MfError::Comm(format!(
                "broadcast: root rank {root} sent no tensor"
            ))),
        }
    }

    fn send(&self, tensor: &Tensor, dst: usize) -> Result<()> {
        check_rank(dst, self.world, "send")?;
        self.p2p_tx[dst]
            .send(Packet::from_tensor(tensor)?)
            .map_err(|_| self.left(dst, "send"))
    }

    fn recv(&self, src: usize) -> Result<Tensor> {
        check_rank(src, self.world, "recv")?;
        match self.p2p_rx[src].recv_timeout(self.timeout) {
            Ok(p) => p.to_tensor(),
            Err(RecvTimeoutError::Timeout) => Err(MfError::Comm(format!(
                "rank {} in recv: timed out after {:.1?} waiting for rank {src} to send",
                self.rank, self.timeout
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(self.left(src, "recv")),
        }
    }

    fn barrier(&self) -> Result<()> {
        self.exchange("barrier", Payload::Empty).map(|_| ())
    }

    fn split(&self, color: Option<usize>, key: usize) -> Result<Option<Box<dyn Communicator>>> {
        let seq = self.seq.get();
        let all = self.exchange("split", Payload::Split(color, key))?;
        let Some(color) = color else {
            return Ok(None);
        };
        // Members of this rank's new group, ordered by (key, old rank).
        let mut members: Vec<(usize, usize)> = all
            .iter()
            .enumerate()
            .filter_map(|(r, p)| match p.as_ref() {
                Payload::Split(Some(c), k) if *c == color => Some((*k, r)),
                _ => None,
            })
            .collect();
        members.sort();
        let leader = members.iter().map(|&(_, r)| r).min().unwrap_or(self.rank);
        if leader == self.rank {
            // The leader wires the new group and hands each member its communicator.
            let mut mine = None;
            for (comm, &(_, r)) in build_group(members.len(), self.timeout)
                .into_iter()
                .zip(&members)
            {
                if r == self.rank {
                    mine = Some(comm);
                } else {
                    self.send_coll(r, "split", seq, Body::Group(Box::new(comm)))?;
                }
            }
            let comm =
                mine.ok_or_else(|| MfError::Comm("split: leader not in its group".into()))?;
            return Ok(Some(Box::new(comm)));
        }
        match self.recv_coll(leader, "split", seq, Instant::now() + self.timeout)? {
            Body::Group(comm) => Ok(Some(comm)),
            Body::Data(_) => Err(MfError::Comm(format!(
                "split: rank {leader} sent data instead of the new group"
            ))),
        }
    }
}

/// Runs `f` on `world` rank threads of one threads-backend group (default timeout) and returns
/// each rank's result, rank 0 first; see [`run_ranks_with_timeout`].
pub fn run_ranks<T, F>(world: usize, f: F) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(ThreadComm) -> Result<T> + Sync,
{
    run_ranks_with_timeout(world, DEFAULT_TIMEOUT, f)
}

/// Runs `f` on `world` scoped threads, each given its rank's communicator, and joins them.
///
/// If any rank fails or panics, returns the error that happened first in time (the root cause:
/// later errors are usually peers reporting that this rank left).
pub fn run_ranks_with_timeout<T, F>(world: usize, timeout: Duration, f: F) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(ThreadComm) -> Result<T> + Sync,
{
    let clock = Arc::new(AtomicUsize::new(0));
    let slots: Vec<Arc<AtomicUsize>> = (0..world)
        .map(|_| Arc::new(AtomicUsize::new(usize::MAX)))
        .collect();
    let mut comms = ThreadGroup::with_timeout(world, timeout)?.into_comms();
    for (c, slot) in comms.iter_mut().zip(&slots) {
        c.exit_log = Some(ExitLog {
            clock: clock.clone(),
            slot: slot.clone(),
        });
    }
    let outcomes: Vec<(usize, Result<T>)> = std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(world);
        for comm in comms {
            let (f, clock) = (&f, &clock);
            let rank = comm.rank();
            let spawned = std::thread::Builder::new()
                .name(format!("rank-{rank}"))
                .spawn_scoped(s, move || {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(comm)))
                        .unwrap_or_else(|p| {
                            Err(MfError::Comm(format!(
                                "rank {rank} panicked: {}",
                                panic_message(&*p)
                            )))
                        });
                    (clock.fetch_add(1, Ordering::SeqCst), r)
                });
            handles.push(spawned.map_err(|e| {
                MfError::Comm(format!("could not start the thread of rank {rank}: {e}"))
            }));
        }
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    (
                        usize::MAX,
                        Err(MfError::Comm("a rank thread panicked".into())),
                    )
                }),
                Err(e) => (usize::MAX, Err(e)),
            })
            .collect()
    });
    // A rank's failure time is when it dropped its communicator (what its peers react to),
    // or when it finished if it kept the communicator alive past its closure.
    let first_err = outcomes
        .iter()
        .enumerate()
        .filter(|(_, (_, r))| r.is_err())
        .min_by_key(|(i, (at, _))| slots[*i].load(Ordering::SeqCst).min(*at))
        .map(|(i, _)| i);
    let mut results = Vec::with_capacity(world);
    for (i, (_, r)) in outcomes.into_iter().enumerate() {
        match r {
            Err(e) if Some(i) == first_err => return Err(e),
            Ok(v) => results.push(v),
            Err(_) => {}
        }
    }
    Ok(results)
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
