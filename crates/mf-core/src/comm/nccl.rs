//! The NCCL backend (cargo feature `nccl`): one process per GPU, tch CUDA tensors passed to
//! NCCL by device pointer.
//!
//! Libraries: cudarc loads `libcuda` and `libnccl.so` at run time (dynamic loading), so a
//! build needs no CUDA toolkit; a missing library is reported as an error before any NCCL call.
//!
//! Stream assumption: every operation is enqueued on the device's legacy default stream (the
//! null stream), which is the stream libtorch uses unless the caller switched streams. Work
//! libtorch queued before the call is therefore ordered before it, and each call waits for its
//! own completion before returning, so the returned tensor is ready on any stream. Callers must
//! not run collectives while a non-default torch stream is current.
//!
//! Failure detection: each call records an event after its kernels and polls it, together with
//! NCCL's asynchronous error state; a peer that died or hangs makes the call abort the
//! communicator and fail after the timeout instead of blocking forever. The cost is that calls
//! are synchronous for the host. `ncclCommInitRank` and `ncclCommSplit` themselves block until
//! every rank arrives; the TCP rendezvous before init bounds the common case (a rank that never
//! starts), not a rank that dies between the rendezvous and init.
//!
//! Before each collective, ranks all-gather a small header (operation, dtype, shape) so a
//! mismatch is a clear error rather than memory corruption or a hang; `set_shape_checks(false)`
//! skips it.
use std::cell::Cell;
use std::ffi::c_void;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::{result as nres, sys};
use tch::{Device, Kind, Tensor};

use super::rendezvous::{master_addr_from_env, rendezvous_join, RendezvousServer};
use super::{check_rank, norm_dim, Communicator, ReduceOp, DEFAULT_TIMEOUT};
use crate::error::{MfError, Result};

/// Dtypes that cross the wire, in header code order.
const KINDS: [Kind; 8] = [
    Kind::Uint8,
    Kind::Int8,
    Kind::Int,
    Kind::Int64,
    Kind::Half,
    Kind::Float,
    Kind::Double,
    Kind::BFloat16,
];
/// Most dimensions a header describes.
const MAX_DIMS: usize = 8;
/// Header: op code, dtype code, ndim, then up to `MAX_DIMS` sizes.
const HEADER_LEN: usize = 3 + MAX_DIMS;

fn err(msg: impl std::fmt::Display) -> MfError {
    MfError::Comm(format!("nccl: {msg}"))
}

fn nccl_err(what: &str, e: nres::NcclError) -> MfError {
    err(format!("{what} failed: {:?}", e.0))
}

fn nccl_dtype(k: Kind) -> Result<sys::ncclDataType_t> {
    use sys::ncclDataType_t as D;
    Ok(match k {
        Kind::Uint8 => D::ncclUint8,
        Kind::Int8 => D::ncclInt8,
        Kind::Int => D::ncclInt32,
        Kind::Int64 => D::ncclInt64,
        Kind::Half => D::ncclFloat16,
        Kind::Float => D::ncclFloat32,
        Kind::Double => D::ncclFloat64,
        Kind::BFloat16 => D::ncclBfloat16,
        other => return Err(err(format!("dtype {other:?} is not supported by NCCL"))),
    })
}

fn kind_code(k: Kind) -> Result<i64> {
    KINDS
        .iter()
        .position(|&x| x == k)
        .map(|i| i as i64)
        .ok_or_else(|| err(format!("dtype {k:?} is not supported by NCCL")))
}

/// Operation codes in headers, so ranks in different collectives are told apart.
fn op_code(op: &str) -> i64 {
    match op {
        "all_reduce" => 1,
        "all_gather" => 2,
        "reduce_scatter" => 3,
        "broadcast" => 4,
        "send" => 5,
        _ => 0,
    }
}

fn op_name(code: i64) -> &'static str {
    match code {
        1 => "all_reduce",
        2 => "all_gather",
        3 => "reduce_scatter",
        4 => "broadcast",
        5 => "send",
        _ => "an unknown operation",
    }
}

/// One rank's NCCL communicator, bound to one CUDA device.
pub struct NcclComm {
    comm: sys::ncclComm_t,
    rank: usize,
    world: usize,
    device: usize,
    ctx: Arc<CudaContext>,
    /// The legacy default stream (null), the one libtorch uses by default.
    stream: Arc<CudaStream>,
    timeout: Duration,
    shape_checks: Cell<bool>,
    /// Set once the communicator was aborted after a failure; later calls fail at once.
    broken: Cell<bool>,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it are not
// concurrent; `NcclComm` is not `Sync`, so a `&NcclComm` never reaches two threads at once.
unsafe impl Send for NcclComm {}

impl NcclComm {
    /// Joins the group described by torchrun's variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`
    /// as the device index, `MASTER_ADDR`, `MASTER_PORT`) with the default timeout.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| -> Result<usize> {
            let v = std::env::var(k)
                .map_err(|_| err(format!("{k} is not set; launch with `mf launch`")))?;
            v.parse()
                .map_err(|_| err(format!("{k}='{v}' is not a non-negative integer")))
        };
        let rank = var("RANK")?;
        let world = var("WORLD_SIZE")?;
        let local = std::env::var("LOCAL_RANK").map_or(Ok(rank), |_| var("LOCAL_RANK"))?;
        let master = if world > 1 {
            master_addr_from_env()?
        } else {
            String::new()
        };
        Self::new(rank, world, local, &master, DEFAULT_TIMEOUT)
    }

    /// Joins a group of `world` ranks as `rank` on CUDA device `device`; rank 0 serves the
    /// NCCL unique id at `master` (`host:port`) and the others fetch it from there.
    pub fn new(
        rank: usize,
        world: usize,
        device: usize,
        master: &str,
        timeout: Duration,
    ) -> Result<Self> {
        if world == 0 {
            return Err(err("world size must be at least 1"));
        }
        check_rank(rank, world, "nccl init")?;
        // cudarc panics on a missing library at first use; check first to fail with advice.
        // SAFETY: only probes whether the libraries can be opened.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(MfError::Device(
                "the NCCL backend needs a CUDA driver (libcuda.so), none was found".into(),
            ));
        }
        // SAFETY: as above.
        if !unsafe { sys::is_culib_present() } {
            return Err(MfError::Device(
                "libnccl.so was not found; `cargo xtask setup` links the torch wheel's \
                 nvidia/nccl/lib/libnccl.so.2 as libnccl.so next to libtorch"
                    .into(),
            ));
        }
        let ctx =
            CudaContext::new(device).map_err(|e| MfError::Device(format!("cuda:{device}: {e}")))?;
        let id_bytes: Vec<u8> = if rank == 0 {
            let id = nres::get_uniqueid().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
            let bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
            if world > 1 {
                // Listen on every interface: MASTER_ADDR names this host for the others.
                let port = master
                    .rsplit_once(':')
                    .map(|(_, p)| p)
                    .ok_or_else(|| err(format!("master address '{master}' has no :port")))?;
                RendezvousServer::bind(format!("0.0.0.0:{port}"), world)?.serve(&bytes, timeout)?;
            }
            bytes
        } else {
            rendezvous_join(master, rank, world, timeout)?
        };
        let mut internal = [0 as std::ffi::c_char; 128];
        if id_bytes.len() != internal.len() {
            return Err(err(format!(
                "rank 0 sent a {}-byte id, expected {}",
                id_bytes.len(),
                internal.len()
            )));
        }
        for (d, s) in internal.iter_mut().zip(&id_bytes) {
            *d = *s as std::ffi::c_char;
        }
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out pointer and the context of `device` is current.
        unsafe {
            nres::comm_init_rank(
                &mut comm,
                world as i32,
                sys::ncclUniqueId { internal },
                rank as i32,
            )
        }
        .map_err(|e| nccl_err("ncclCommInitRank", e))?;
        let stream = ctx.default_stream();
        Ok(NcclComm {
            comm,
            rank,
            world,
            device,
            ctx,
            stream,
            timeout,
            shape_checks: Cell::new(true),
            broken: Cell::new(false),
        })
    }

    /// Turns the per-collective header check (op, dtype, shape) on or off.
    pub fn set_shape_checks(&self, on: bool) {
        self.shape_checks.set(on);
    }

    /// The CUDA device index this communicator runs on.
    pub fn device(&self) -> usize {
        self.device
    }

    fn tdev(&self) -> Device {
        Device::Cuda(self.device)
    }

    /// Fails unless the communicator is usable and binds its context to this thread.
    fn ready(&self, what: &str) -> Result<()> {
        if self.broken.get() {
            return Err(err(format!(
                "{what}: the communicator was aborted after an earlier failure"
            )));
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| err(format!("{what}: binding cuda:{}: {e}", self.device)))
    }

    /// A contiguous view of `t`, which must live on this communicator's device.
    fn input(&self, t: &Tensor, what: &str) -> Result<Tensor> {
        if t.device() != self.tdev() {
            return Err(err(format!(
                "{what}: tensor is on {:?}, this communicator runs on cuda:{}",
                t.device(),
                self.device
            )));
        }
        Ok(t.detach().f_contiguous()?)
    }

    fn abort(&self) {
        if !self.broken.replace(true) {
            // SAFETY: `comm` is valid until drop; abort cancels kernels stuck on dead peers.
            let _ = unsafe { nres::comm_abort(self.comm) };
        }
    }

    /// Waits for the work just enqueued on the default stream, failing (and aborting the
    /// communicator) on an NCCL error or after the timeout.
    fn wait(&self, what: &str) -> Result<()> {
        let event = self
            .ctx
            .new_event(None)
            .map_err(|e| err(format!("{what}: {e}")))?;
        event
            .record(&self.stream)
            .map_err(|e| err(format!("{what}: {e}")))?;
        let start = Instant::now();
        loop {
            match event.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    self.abort();
                    return Err(err(format!("{what}: CUDA error {e}")));
                }
            }
            let mut state = sys::ncclResult_t::ncclSuccess;
            // SAFETY: `comm` is valid and `state` is a valid out pointer.
            let _ = unsafe { sys::ncclCommGetAsyncError(self.comm, &mut state) };
            if !matches!(
                state,
                sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress
            ) {
                self.abort();
                return Err(err(format!(
                    "rank {} in {what}: NCCL reported {state:?} (a peer failed or left)",
                    self.rank
                )));
            }
            if start.elapsed() > self.timeout {
                self.abort();
                return Err(err(format!(
                    "rank {} in {what}: timed out after {:.1?} (a peer is hung, dead, or in a \
                     different collective); the communicator was aborted",
                    self.rank, self.timeout
                )));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn header(&self, op: &str, t: &Tensor) -> Result<Tensor> {
        let size = t.size();
        if size.len() > MAX_DIMS {
            return Err(err(format!(
                "{op}: tensors of more than {MAX_DIMS} dimensions are not supported"
            )));
        }
        let mut h = vec![0i64; HEADER_LEN];
        h[0] = op_code(op);
        h[1] = kind_code(t.kind())?;
        h[2] = size.len() as i64;
        h[3..3 + size.len()].copy_from_slice(&size);
        Ok(Tensor::from_slice(&h).f_to_device(self.tdev())?)
    }

    fn parse_header(&self, h: &[i64]) -> Result<(&'static str, Kind, Vec<i64>)> {
        let kind = *usize::try_from(h[1])
            .ok()
            .and_then(|i| KINDS.get(i))
            .ok_or_else(|| err(format!("malformed header {h:?}")))?;
        let nd = (h[2].clamp(0, MAX_DIMS as i64)) as usize;
        Ok((op_name(h[0]), kind, h[3..3 + nd].to_vec()))
    }

    /// All-gathers every rank's header and fails with all of them listed unless they agree.
    fn check_headers(&self, op: &'static str, t: &Tensor) -> Result<()> {
        if !self.shape_checks.get() || self.world == 1 {
            return Ok(());
        }
        let h = self.header(op, t)?;
        let all = Tensor::f_empty(
            [(self.world * HEADER_LEN) as i64],
            (Kind::Int64, self.tdev()),
        )?;
        // SAFETY: both buffers are contiguous on this device and sized for the call.
        unsafe {
            nres::all_gather(
                h.data_ptr() as *const c_void,
                all.data_ptr(),
                HEADER_LEN,
                sys::ncclDataType_t::ncclInt64,
                self.comm,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| nccl_err(op, e))?;
        self.wait(op)?;
        let all = Vec::<i64>::try_from(all.f_to_device(Device::Cpu)?)?;
        let rows: Vec<&[i64]> = all.chunks(HEADER_LEN).collect();
        if rows.iter().all(|r| *r == rows[0]) {
            return Ok(());
        }
        let listed = rows
            .iter()
            .enumerate()
            .map(|(r, h)| {
                self.parse_header(h)
                    .map(|(o, k, s)| format!("rank {r} {o} {s:?} {k:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Err(err(format!(
            "{op}: ranks disagree on the operation, shape or dtype: {}",
            listed.join(", ")
        )))
    }

    fn stream_ptr(&self) -> sys::cudaStream_t {
        self.stream.cu_stream() as sys::cudaStream_t
    }

    fn red_op(&self, op: ReduceOp, kind: Kind, what: &str) -> Result<sys::ncclRedOp_t> {
        Ok(match op {
            ReduceOp::Sum => sys::ncclRedOp_t::ncclSum,
            ReduceOp::Max => sys::ncclRedOp_t::ncclMax,
            ReduceOp::Mean => {
                if !matches!(
                    kind,
                    Kind::Half | Kind::Float | Kind::Double | Kind::BFloat16
                ) {
                    return Err(err(format!(
                        "{what}: Mean needs a floating tensor, got {kind:?}"
                    )));
                }
                sys::ncclRedOp_t::ncclAvg
            }
        })
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // SAFETY: `comm` is valid and dropped once. Every call waited for its work, so
        // destroy has nothing in flight; an aborted communicator is already released.
        unsafe {
            if !self.broken.get() {
                let _ = self.ctx.bind_to_thread();
                let _ = nres::comm_destroy(self.comm);
            }
        }
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor> {
        const W: &str = "all_reduce";
        self.ready(W)?;
        let x = self.input(tensor, W)?;
        let red = self.red_op(op, x.kind(), W)?;
        self.check_headers(W, &x)?;
        let out = x.f_empty_like()?;
        // SAFETY: contiguous same-sized buffers on this device; we wait before returning.
        unsafe {
            nres::all_reduce(
                x.data_ptr() as *const c_void,
                out.data_ptr(),
                x.numel(),
                nccl_dtype(x.kind())?,
                red,
                self.comm,
                self.stream_ptr(),
            )
        }
        .map_err(|e| nccl_err(W, e))?;
        self.wait(W)?;
        Ok(out)
    }

    fn all_gather(&self, tensor: &Tensor, dim: i64) -> Result<Tensor> {
        const W: &str = "all_gather";
        self.ready(W)?;
        let d = norm_dim(dim, tensor.dim(), W)?;
        // NCCL concatenates flat buffers, i.e. along dim 0: move `dim` to the front and back.
        let x = self.input(&tensor.f_movedim_int(d, 0)?, W)?;
        self.check_headers(W, &x)?;
        let mut shape = x.size();
        shape[0] *= self.world as i64;
        let out = Tensor::f_empty(&shape, (x.kind(), self.tdev()))?;
        // SAFETY: `out` holds world * numel(x) elements; we wait before returning.
        unsafe {
            nres::all_gather(
                x.data_ptr() as *const c_void,
                out.data_ptr(),
                x.numel(),
                nccl_dtype(x.kind())?,
                self.comm,
                self.stream_ptr(),
            )
        }
        .map_err(|e| nccl_err(W, e))?;
        self.wait(W)?;
        Ok(out.f_movedim_int(0, d)?.f_contiguous()?)
    }

    fn reduce_scatter(&self, tensor: &Tensor, op: ReduceOp, dim: i64) -> Result<Tensor> {
        const W: &str = "reduce_scatter";
        self.ready(W)?;
        let d = norm_dim(dim, tensor.dim(), W)?;
        let x = self.input(&tensor.f_movedim_int(d, 0)?, W)?;
        let red = self.red_op(op, x.kind(), W)?;
        let mut shape = x.size();
        let w = self.world as i64;
        if shape[0] % w != 0 {
            return Err(err(format!(
                "{W}: dim {dim} has size {}, not divisible by the {w} ranks",
                shape[0]
            )));
        }
        self.check_headers(W, &x)?;
        shape[0] /= w;
        let out = Tensor::f_empty(&shape, (x.kind(), self.tdev()))?;
        // SAFETY: `out` holds numel(x) / world elements; we wait before returning.
        unsafe {
            nres::reduce_scatter(
                x.data_ptr() as *const c_void,
                out.data_ptr(),
                out.numel(),
                nccl_dtype(x.kind())?,
                red,
                self.comm,
                self.stream_ptr(),
            )
        }
        .map_err(|e| nccl_err(W, e))?;
        self.wait(W)?;
        Ok(out.f_movedim_int(0, d)?.f_contiguous()?)
    }

    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<Tensor> {
        const W: &str = "broadcast";
        self.ready(W)?;
        check_rank(root, self.world, "broadcast root")?;
        let x = self.input(tensor, W)?;
        self.check_headers(W, &x)?;
        let mut out = x.f_empty_like()?;
        out.f_copy_(&x)?;
        // SAFETY: in-place broadcast on a contiguous buffer; we wait before returning.
        unsafe {
            nres::broadcast(
                out.data_ptr() as *const c_void,
                out.data_ptr(),
                out.numel(),
                nccl_dtype(x.kind())?,
                root as i32,
                self.comm,
                self.stream_ptr(),
            )
        }
        .map_err(|e| nccl_err(W, e))?;
        self.wait(W)?;
        Ok(out)
    }

    fn send(&self, tensor: &Tensor, dst: usize) -> Result<()> {
        const W: &str = "send";
        self.ready(W)?;
        check_rank(dst, self.world, W)?;
        let x = self.input(tensor, W)?;
        let h = self.header(W, &x)?;
        // The header first, so the receiver can allocate without knowing the shape.
        for (buf, n) in [(&h, HEADER_LEN), (&x, x.numel())] {
            // SAFETY: contiguous buffers on this device; we wait before the next use.
            unsafe {
                nres::send(
                    buf.data_ptr() as *const c_void,
                    n,
                    nccl_dtype(buf.kind())?,
                    dst as i32,
                    self.comm,
                    self.stream_ptr(),
                )
            }
            .map_err(|e| nccl_err(W, e))?;
            self.wait(W)?;
        }
        Ok(())
    }

    fn recv(&self, src: usize) -> Result<Tensor> {
        const W: &str = "recv";
        self.ready(W)?;
        check_rank(src, self.world, W)?;
        let h = Tensor::f_empty([HEADER_LEN as i64], (Kind::Int64, self.tdev()))?;
        // SAFETY: `h` is a contiguous HEADER_LEN-element i64 buffer; we wait before reading.
        unsafe {
            nres::recv(
                h.data_ptr(),
                HEADER_LEN,
                sys::ncclDataType_t::ncclInt64,
                src as i32,
                self.comm,
                self.stream_ptr(),
            )
        }
        .map_err(|e| nccl_err(W, e))?;
        self.wait(W)?;
        let h = Vec::<i64>::try_from(h.f_to_device(Device::Cpu)?)?;
        let (op, kind, shape) = self.parse_header(&h)?;
        if op != "send" {
            return Err(err(format!("recv from rank {src}: got a header for {op}")));
        }
        let out = Tensor::f_empty(&shape, (kind, self.tdev()))?;
        // SAFETY: `out` was allocated from the sender's shape and dtype; we wait before use.
        unsafe {
            nres::recv(
                out.data_ptr(),
                out.numel(),
                nccl_dtype(kind)?,
                src as i32,
                self.comm,
                self.stream_ptr(),
            )
        }
        .map_err(|e| nccl_err(W, e))?;
        self.wait(W)?;
        Ok(out)
    }

    fn barrier(&self) -> Result<()> {
        let one = Tensor::f_zeros([1], (Kind::Float, self.tdev()))?;
        let was = self.shape_checks.replace(false);
        let r = self.all_reduce(&one, ReduceOp::Sum).map(|_| ());
        self.shape_checks.set(was);
        r
    }

    fn split(&self, color: Option<usize>, key: usize) -> Result<Option<Box<dyn Communicator>>> {
        const W: &str = "split";
        self.ready(W)?;
        // NCCL_SPLIT_NOCOLOR is -1: the rank takes part in the call but joins no group.
        let c = color.map_or(-1, |c| c as i32);
        let mut new: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is valid, `new` is a valid out pointer; a null config inherits the
        // parent's (and avoids depending on the ncclConfig_t layout of the loaded library).
        unsafe { sys::ncclCommSplit(self.comm, c, key as i32, &mut new, std::ptr::null_mut()) }
            .result()
            .map_err(|e| nccl_err("ncclCommSplit", e))?;
        if new.is_null() {
            return Ok(None);
        }
        // SAFETY: `new` is a freshly created communicator.
        let (rank, world) = unsafe { (nres::comm_user_rank(new), nres::comm_count(new)) };
        let (rank, world) = (
            rank.map_err(|e| nccl_err("ncclCommUserRank", e))?,
            world.map_err(|e| nccl_err("ncclCommCount", e))?,
        );
        Ok(Some(Box::new(NcclComm {
            comm: new,
            rank: rank as usize,
            world: world as usize,
            device: self.device,
            ctx: self.ctx.clone(),
            stream: self.stream.clone(),
            timeout: self.timeout,
            shape_checks: Cell::new(self.shape_checks.get()),
            broken: Cell::new(false),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_gpu_init_is_an_error_not_a_panic() {
        if tch::Cuda::device_count() > 0 {
            return;
        }
        let e = NcclComm::new(0, 1, 0, "", Duration::from_secs(1))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("libcuda") || e.contains("libnccl") || e.contains("cuda:0"),
            "{e}"
        );
    }
}
