//! Collective communication between ranks: one [`Communicator`] trait, a threads backend (ranks
//! are threads of one process; the CPU backend the tests use), an NCCL backend behind the `nccl`
//! feature, and [`DeviceMesh`], which builds a rank's data-, tensor- and pipeline-parallel groups.
//!
//! Every collective is called by every rank of the group in the same order. A rank that leaves
//! (returns, panics) or stops answering makes the others fail with [`MfError::Comm`] within the
//! communicator's timeout instead of hanging.
use std::time::Duration;

use tch::Tensor;

use crate::error::{MfError, Result};

#[cfg(feature = "nccl")]
pub mod nccl;
pub mod rendezvous;
#[cfg(test)]
mod thread_tests;
pub mod threads;

pub use rendezvous::{rendezvous_join, RendezvousServer};
pub use threads::{run_ranks, run_ranks_with_timeout, ThreadComm, ThreadGroup};

/// How long a rank waits for its peers before a collective fails, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The reduction applied by [`Communicator::all_reduce`] and [`Communicator::reduce_scatter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Elementwise sum.
    Sum,
    /// Elementwise sum divided by the group size (floating tensors only).
    Mean,
    /// Elementwise maximum.
    Max,
}

/// A group of ranks that exchange tensors; every method is collective unless it says otherwise.
///
/// Inputs are never modified: each call returns a new tensor on the input's device. All ranks
/// of a call pass tensors of the same dtype (and the same shape, except where noted).
pub trait Communicator: Send {
    /// This rank's index in the group, `0..world_size()`.
    fn rank(&self) -> usize;

    /// The number of ranks in the group.
    fn world_size(&self) -> usize;

    /// The elementwise reduction of every rank's `tensor`, the same on every rank.
    fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor>;

    /// Every rank's `tensor` concatenated along `dim`, in rank order.
    fn all_gather(&self, tensor: &Tensor, dim: i64) -> Result<Tensor>;

    /// This rank's `1/world_size` slice along `dim` of the reduction of every rank's `tensor`.
    fn reduce_scatter(&self, tensor: &Tensor, op: ReduceOp, dim: i64) -> Result<Tensor>;

    /// The `root` rank's `tensor` on every rank (other ranks' values are ignored, their shape and
    /// dtype must match the root's).
    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<Tensor>;

    /// Sends `tensor` (with its shape and dtype) to rank `dst`; point to point, not collective.
    fn send(&self, tensor: &Tensor, dst: usize) -> Result<()>;

    /// Receives the next tensor rank `src` sent to this rank; point to point, not collective.
    fn recv(&self, src: usize) -> Result<Tensor>;

    /// Returns once every rank of the group has called it.
    fn barrier(&self) -> Result<()>;

    /// Splits the group: ranks passing the same `Some(color)` form a new group, ordered by
    /// `(key, rank)`; ranks passing `None` get `None`. Collective over this group.
    fn split(&self, color: Option<usize>, key: usize) -> Result<Option<Box<dyn Communicator>>>;
}

/// Checks that `peer` names a rank of a group of `world` ranks.
pub(crate) fn check_rank(peer: usize, world: usize, what: &str) -> Result<()> {
    if peer >= world {
        return Err(MfError::Comm(format!(
            "{what}: rank {peer} is out of range for a group of {world} rank(s) (valid 0..{world})"
        )));
    }
    Ok(())
}

/// Normalises a possibly negative dimension index against a tensor of `ndim` dimensions.
pub(crate) fn norm_dim(dim: i64, ndim: usize, what: &str) -> Result<i64> {
    let n = ndim as i64;
    let d = if dim < 0 { dim + n } else { dim };
    if n == 0 || d < 0 || d >= n {
        return Err(MfError::Comm(format!(
            "{what}: dim {dim} is out of range for a tensor with {ndim} dimension(s)"
        )));
    }
    Ok(d)
}

/// The shape of a device mesh: data-, tensor- (model-) and pipeline-parallel sizes.
///
/// Ranks are laid out as Megatron does: tensor-parallel index fastest, then data-parallel,
/// then pipeline stage, so `rank = tp + tp_size * (dp + dp_size * pp)`. Tensor-parallel peers
/// are neighbours, which keeps the most frequent communication inside a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshShape {
    /// Data-parallel size.
    pub dp: usize,
    /// Tensor- (model-) parallel size.
    pub tp: usize,
    /// Pipeline stages.
    pub pp: usize,
}

/// One rank's position in a [`MeshShape`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshCoord {
    /// Data-parallel index.
    pub dp: usize,
    /// Tensor-parallel index.
    pub tp: usize,
    /// Pipeline stage.
    pub pp: usize,
}

impl MeshShape {
    /// A mesh of `dp * tp * pp` ranks; every size must be at least 1.
    pub fn new(dp: usize, tp: usize, pp: usize) -> Result<Self> {
        if dp == 0 || tp == 0 || pp == 0 {
            return Err(crate::invalid(format!(
                "device mesh sizes must be >= 1, got dp={dp} tp={tp} pp={pp}"
            )));
        }
        Ok(MeshShape { dp, tp, pp })
    }

    /// The number of ranks, `dp * tp * pp`.
    pub fn world_size(&self) -> usize {
        self.dp * self.tp * self.pp
    }

    /// The coordinates of global `rank`.
    pub fn coord(&self, rank: usize) -> Result<MeshCoord> {
        check_rank(rank, self.world_size(), "device mesh")?;
        Ok(MeshCoord {
            tp: rank % self.tp,
            dp: (rank / self.tp) % self.dp,
            pp: rank / (self.tp * self.dp),
        })
    }

    /// The global rank at `coord`.
    pub fn rank(&self, c: MeshCoord) -> usize {
        c.tp + self.tp * (c.dp + self.dp * c.pp)
    }

    /// The global ranks of `rank`'s tensor-parallel group, in group-rank order.
    pub fn tp_ranks(&self, rank: usize) -> Result<Vec<usize>> {
        let c = self.coord(rank)?;
        Ok((0..self.tp)
            .map(|tp| self.rank(MeshCoord { tp, ..c }))
            .collect())
    }

    /// The global ranks of `rank`'s data-parallel group, in group-rank order.
    pub fn dp_ranks(&self, rank: usize) -> Result<Vec<usize>> {
        let c = self.coord(rank)?;
        Ok((0..self.dp)
            .map(|dp| self.rank(MeshCoord { dp, ..c }))
            .collect())
    }

    /// The global ranks of `rank`'s pipeline group (stage 0 first).
    pub fn pp_ranks(&self, rank: usize) -> Result<Vec<usize>> {
        let c = self.coord(rank)?;
        Ok((0..self.pp)
            .map(|pp| self.rank(MeshCoord { pp, ..c }))
            .collect())
    }
}

/// One rank's view of a device mesh: its coordinates and its DP, TP and PP groups.
pub struct DeviceMesh {
    /// The mesh shape.
    pub shape: MeshShape,
    /// This rank's global rank.
    pub rank: usize,
    /// This rank's coordinates.
    pub coord: MeshCoord,
    /// Ranks with the same (tp, pp): gradients are averaged here.
    pub dp_group: Box<dyn Communicator>,
    /// Ranks with the same (dp, pp): tensor-parallel layers communicate here.
    pub tp_group: Box<dyn Communicator>,
    /// Ranks with the same (dp, tp): pipeline stages send activations here.
    pub pp_group: Box<dyn Communicator>,
}

impl DeviceMesh {
    /// Builds the groups of `world`'s rank by splitting it; collective over `world`, whose
    /// size must equal `dp * tp * pp`.
    pub fn new(world: &dyn Communicator, shape: MeshShape) -> Result<Self> {
        if world.world_size() != shape.world_size() {
            return Err(crate::invalid(format!(
                "device mesh dp={} x tp={} x pp={} needs {} ranks, the communicator has {}",
                shape.dp,
                shape.tp,
                shape.pp,
                shape.world_size(),
                world.world_size()
            )));
        }
        let rank = world.rank();
        let c = shape.coord(rank)?;
        // Colors number the groups; keys order ranks inside a group by their mesh index, so
        // group rank i is the rank with that coordinate equal to i.
        let split = |color: usize, key: usize| -> Result<Box<dyn Communicator>> {
            world.split(Some(color), key)?.ok_or_else(|| {
                MfError::Comm("device mesh: split returned no group for a colored rank".into())
            })
        };
        let tp_group = split(c.dp + shape.dp * c.pp, c.tp)?;
        let dp_group = split(c.tp + shape.tp * c.pp, c.dp)?;
        let pp_group = split(c.tp + shape.tp * c.dp, c.pp)?;
        Ok(DeviceMesh {
            shape,
            rank,
            coord: c,
            dp_group,
            tp_group,
            pp_group,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn megatron_layout() {
        // 2 (dp) x 2 (tp) x 2 (pp): tp fastest, then dp, then pp.
        let m = MeshShape::new(2, 2, 2).unwrap();
        assert_eq!(
            m.coord(0).unwrap(),
            MeshCoord {
                dp: 0,
                tp: 0,
                pp: 0
            }
        );
        assert_eq!(
            m.coord(1).unwrap(),
            MeshCoord {
                dp: 0,
                tp: 1,
                pp: 0
            }
        );
        assert_eq!(
            m.coord(2).unwrap(),
            MeshCoord {
                dp: 1,
                tp: 0,
                pp: 0
            }
        );
        assert_eq!(
            m.coord(5).unwrap(),
            MeshCoord {
                dp: 0,
                tp: 1,
                pp: 1
            }
        );
        assert_eq!(m.tp_ranks(5).unwrap(), vec![4, 5]);
        assert_eq!(m.dp_ranks(5).unwrap(), vec![5, 7]);
        assert_eq!(m.pp_ranks(5).unwrap(), vec![1, 5]);
        for r in 0..8 {
            assert_eq!(m.rank(m.coord(r).unwrap()), r);
        }
        let err = m.coord(8).unwrap_err().to_string();
        assert!(err.contains("out of range"), "{err}");
        assert!(MeshShape::new(0, 1, 1).is_err());
    }
}
