//! A communicator driven by its own thread, so a collective runs while the caller computes.
//!
//! The threads backend (like any host-driven backend) only makes progress while some thread is
//! inside a collective call. [`AsyncComm`] owns a communicator on a worker thread; `submit`
//! queues an operation and returns a [`Pending`] handle at once. Operations run in submission
//! order, which every rank of the group keeps identical, so the group stays in step. This is
//! what lets micro-batch interleave overlap one copy's tensor-parallel reduction with another
//! copy's compute, and data-parallel gradient buckets overlap the rest of backward.
use std::thread::JoinHandle;

use crossbeam::channel::{bounded, unbounded, Receiver, Sender};
use mf_core::comm::{Communicator, ReduceOp};
use mf_core::{MfError, Result};
use tch::Tensor;

/// A collective operation on the worker's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommOp {
    /// `all_reduce` with the given reduction.
    AllReduce(ReduceOp),
    /// `all_gather` along a dimension.
    AllGather(i64),
    /// `reduce_scatter` with a reduction along a dimension.
    ReduceScatter(ReduceOp, i64),
}

struct Job {
    op: CommOp,
    tensor: Tensor,
    reply: Sender<Result<Tensor>>,
}

/// The result of a submitted operation.
pub enum Pending {
    /// Available now (a group of one rank needs no communication).
    Ready(Tensor),
    /// Computed by the worker.
    Waiting(Receiver<Result<Tensor>>),
}

impl Pending {
    /// Blocks until the result is there.
    pub fn wait(self) -> Result<Tensor> {
        match self {
            Pending::Ready(t) => Ok(t),
            Pending::Waiting(rx) => rx.recv().map_err(|_| {
                MfError::Comm("the communication thread stopped before answering".into())
            })?,
        }
    }
}

/// A communicator running on its own thread.
pub struct AsyncComm {
    rank: usize,
    world: usize,
    jobs: Option<Sender<Job>>,
    worker: Option<JoinHandle<()>>,
}

impl AsyncComm {
    /// Moves `comm` onto a worker thread named `name`; its errors are prefixed with `label`
    /// (which should name the group in world ranks: a group's own ranks are local numbers).
    pub fn new(comm: Box<dyn Communicator>, name: &str, label: String) -> Result<Self> {
        let (rank, world) = (comm.rank(), comm.world_size());
        let (tx, rx) = unbounded::<Job>();
        let worker = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // Once an operation fails the group is broken: fail every later one too.
                let mut broken: Option<String> = None;
                for job in rx {
                    let r = match &broken {
                        Some(e) => Err(MfError::Comm(e.clone())),
                        None => {
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                run(comm.as_ref(), job.op, &job.tensor)
                            }))
                            .unwrap_or_else(|p| {
                                Err(MfError::Comm(format!(
                                    "the operation panicked: {}",
                                    panic_text(&p)
                                )))
                            })
                            .map_err(|e| MfError::Comm(format!("{label}: {}", plain(&e))));
                            if let Err(e) = &r {
                                broken = Some(plain(e));
                            }
                            r
                        }
                    };
                    let _ = job.reply.send(r);
                }
            })
            .map_err(|e| MfError::Comm(format!("cannot start the communication thread: {e}")))?;
        Ok(AsyncComm {
            rank,
            world,
            jobs: Some(tx),
            worker: Some(worker),
        })
    }

    /// This rank's index in the group.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks in the group.
    pub fn world_size(&self) -> usize {
        self.world
    }

    /// Queues `op` on `tensor`; with one rank the result is ready at once.
    pub fn submit(&self, op: CommOp, tensor: Tensor) -> Result<Pending> {
        if self.world == 1 {
            return Ok(Pending::Ready(tensor));
        }
        let (reply, rx) = bounded(1);
        self.jobs
            .as_ref()
            .ok_or_else(|| MfError::Comm("the communication thread has stopped".into()))?
            .send(Job { op, tensor, reply })
            .map_err(|_| MfError::Comm("the communication thread has stopped".into()))?;
        Ok(Pending::Waiting(rx))
    }

    /// `submit` and wait.
    pub fn run(&self, op: CommOp, tensor: Tensor) -> Result<Tensor> {
        self.submit(op, tensor)?.wait()
    }
}

/// An error's message without its kind prefix, so prefixes do not pile up.
fn plain(e: &MfError) -> String {
    match e {
        MfError::Comm(m) => m.clone(),
        other => other.to_string(),
    }
}

/// The message of a caught panic.
pub fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

fn run(comm: &dyn Communicator, op: CommOp, t: &Tensor) -> Result<Tensor> {
    match op {
        CommOp::AllReduce(r) => comm.all_reduce(t, r),
        CommOp::AllGather(d) => comm.all_gather(t, d),
        CommOp::ReduceScatter(r, d) => comm.reduce_scatter(t, r, d),
    }
}

impl Drop for AsyncComm {
    fn drop(&mut self) {
        // Closing the queue ends the worker's loop; its communicator is dropped with it, which
        // tells peers this rank has left.
        self.jobs.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
