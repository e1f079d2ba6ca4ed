//! `init_context`: MindFormers' one call that sets up where a run executes (device, execution
//! mode, seed) and how its ranks are organised (parallel mode, rank id, number of ranks).
//!
//! MindFormers: `init_context(use_parallel, context_config, parallel_config) -> (rank_id,
//! device_num)`. Here the call picks one of three backends and records the result in a
//! process-global [`Context`] that the Trainer reads ([`current`]):
//!
//! - [`Backend::Single`] (`use_parallel = false`): one device, rank 0 of 1.
//! - [`Backend::Threads`] (`use_parallel = true` on the CPU): the ranks are threads of this
//!   process (`comm::threads`), started by the Trainer; the caller's thread is rank 0.
//! - [`Backend::Nccl`] (`use_parallel = true` on CUDA): one process per GPU, started by
//!   `mf launch` or torchrun, which set `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and
//!   `MASTER_PORT`; the NCCL communicator is created here and handed to the Trainer through
//!   [`take_process_comm`].
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::comm::Communicator;
use crate::device::Device;
use crate::error::{invalid, MfError, Result};

/// MindSpore's `context` settings (`ContextConfig`): execution mode, device and seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContextConfig {
    /// 0 = GRAPH_MODE, 1 = PYNATIVE_MODE. Both run eagerly here (libtorch has no graph
    /// compiler); the choice is validated and recorded in [`Context::mode`].
    pub mode: i32,
    /// "cpu" or "cuda" (also "gpu"), case-insensitive; "Ascend" is refused.
    pub device_target: String,
    /// The GPU index for "cuda" without `use_parallel` (with it, `LOCAL_RANK` decides).
    pub device_id: usize,
    /// Seeds libtorch's global generator (`tch::manual_seed`) when set.
    pub seed: Option<u64>,
}

impl Default for ContextConfig {
    fn default() -> Self {
        ContextConfig {
            mode: 0,
            device_target: "cpu".into(),
            device_id: 0,
            seed: None,
        }
    }
}

/// MindSpore's execution mode, as recorded by [`init_context`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionMode {
    /// `mode = 0`; MindSpore compiles a static graph, libtorch here runs it eagerly.
    Graph,
    /// `mode = 1`; eager execution, as everything runs here.
    PyNative,
}

impl ExecutionMode {
    /// The mode for MindSpore's integer `mode` (0 or 1).
    pub fn from_code(mode: i32) -> Result<Self> {
        match mode {
            0 => Ok(ExecutionMode::Graph),
            1 => Ok(ExecutionMode::PyNative),
            other => Err(invalid(format!(
                "context mode {other} is not a MindSpore execution mode; use mode=0 (GRAPH_MODE) \
                 or mode=1 (PYNATIVE_MODE), both run eagerly here"
            ))),
        }
    }
}

/// How the ranks of a run share the work (MindSpore's `parallel_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParallelMode {
    /// `STAND_ALONE`: one device; `use_parallel` with more than one rank is an error.
    StandAlone,
    /// `DATA_PARALLEL`: every rank holds the whole model and reads its own batches; the layout
    /// may only have `data_parallel > 1` (model parallel and pipeline stages 1). Gradients are
    /// averaged over the ranks when `gradients_mean`, summed otherwise.
    DataParallel,
    /// `SEMI_AUTO_PARALLEL`: the layout given to `Trainer::set_parallel_config` (data, model
    /// and pipeline parallel, sequence parallel, interleave) is used as given.
    SemiAutoParallel,
    /// `AUTO_PARALLEL`: MindSpore searches the sharding strategy itself. There is no strategy
    /// search here, so [`init_context`] refuses it.
    AutoParallel,
}

impl ParallelMode {
    /// The MindFormers names, in declaration order.
    pub const NAMES: [&'static str; 4] = [
        "STAND_ALONE",
        "DATA_PARALLEL",
        "SEMI_AUTO_PARALLEL",
        "AUTO_PARALLEL",
    ];

    /// The MindFormers name (`DATA_PARALLEL`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ParallelMode::StandAlone => Self::NAMES[0],
            ParallelMode::DataParallel => Self::NAMES[1],
            ParallelMode::SemiAutoParallel => Self::NAMES[2],
            ParallelMode::AutoParallel => Self::NAMES[3],
        }
    }
}

impl FromStr for ParallelMode {
    type Err = MfError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "STAND_ALONE" => Ok(ParallelMode::StandAlone),
            "DATA_PARALLEL" => Ok(ParallelMode::DataParallel),
            "SEMI_AUTO_PARALLEL" => Ok(ParallelMode::SemiAutoParallel),
            "AUTO_PARALLEL" => Ok(ParallelMode::AutoParallel),
            _ => Err(MfError::unknown("parallel mode", s, &Self::NAMES)),
        }
    }
}

impl fmt::Display for ParallelMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for ParallelMode {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ParallelMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// MindSpore's auto-parallel context (`ParallelContextConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParallelContextConfig {
    /// How ranks share the work (MindFormers' default: `DATA_PARALLEL`).
    pub parallel_mode: ParallelMode,
    /// Average gradients over data-parallel ranks instead of summing them.
    pub gradients_mean: bool,
    /// Shard optimizer state over the data-parallel ranks.
    pub enable_parallel_optimizer: bool,
    /// Every rank reads the whole global batch (and takes its share) rather than its own files.
    pub full_batch: bool,
    /// Rust extension: the number of ranks of the CPU threads backend. `None`: `WORLD_SIZE`
    /// from the environment, else the Trainer's layout decides.
    pub device_num: Option<usize>,
}

impl Default for ParallelContextConfig {
    fn default() -> Self {
        ParallelContextConfig {
            parallel_mode: ParallelMode::DataParallel,
            gradients_mean: false,
            enable_parallel_optimizer: false,
            full_batch: true,
            device_num: None,
        }
    }
}

/// Which communication backend a context's ranks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// No parallelism: one rank on one device.
    Single,
    /// Ranks are threads of this process on the CPU (`comm::threads`).
    Threads,
    /// One process per GPU, communicating through NCCL (`comm::nccl`).
    Nccl,
}

/// What [`init_context`] set up; [`current`] returns a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The `use_parallel` argument.
    pub use_parallel: bool,
    /// The execution mode asked for (both run eagerly here).
    pub mode: ExecutionMode,
    /// The device this process computes on.
    pub device: Device,
    /// The device index: `device_id` from the config, or `LOCAL_RANK` on the NCCL backend.
    pub device_id: usize,
    /// The parallel settings in force (defaults when none were given).
    pub parallel: ParallelContextConfig,
    /// This process's rank (0 on the single and threads backends: the caller's thread).
    pub rank_id: usize,
    /// The number of ranks.
    pub device_num: usize,
    /// Whether `device_num` was given (config, `WORLD_SIZE`, or fixed by the backend) rather
    /// than left for the Trainer's layout to decide.
    pub device_num_explicit: bool,
    /// The communication backend.
    pub backend: Backend,
}

impl Context {
    /// Checks a `data_parallel x model_parallel x pipeline_stage` layout against this context
    /// and returns the number of ranks it needs.
    pub fn check_layout(
        &self,
        data_parallel: usize,
        model_parallel: usize,
        pipeline_stage: usize,
    ) -> Result<usize> {
        let n = data_parallel * model_parallel * pipeline_stage;
        let layout =
            format!("data_parallel={data_parallel} x model_parallel={model_parallel} x pipeline_stage={pipeline_stage}");
        if n == 0 {
            return Err(invalid(format!(
                "parallel layout {layout} has a zero size; every size must be at least 1"
            )));
        }
        if n > 1 && !self.use_parallel {
            return Err(invalid(format!(
                "parallel layout {layout} needs {n} ranks but init_context was called with \
                 use_parallel=false; call init_context(use_parallel=true, ...) or use a layout of 1"
            )));
        }
        match self.parallel.parallel_mode {
            ParallelMode::StandAlone if n > 1 => {
                return Err(invalid(format!(
                    "parallel_mode STAND_ALONE runs on one device, the layout {layout} needs {n}; \
                     use DATA_PARALLEL or SEMI_AUTO_PARALLEL"
                )))
            }
            ParallelMode::DataParallel if model_parallel > 1 || pipeline_stage > 1 => {
                return Err(invalid(format!(
                    "parallel_mode DATA_PARALLEL only replicates the model, the layout {layout} \
                     shards it; use SEMI_AUTO_PARALLEL for model_parallel or pipeline_stage > 1"
                )))
            }
            _ => {}
        }
        if self.device_num_explicit && n != self.device_num {
            return Err(invalid(format!(
                "parallel layout {layout} needs {n} ranks but the context has {} ({}); make the \
                 two agree",
                self.device_num,
                match self.backend {
                    Backend::Nccl => "WORLD_SIZE from the launcher",
                    _ => "ParallelContextConfig.device_num or WORLD_SIZE",
                }
            )));
        }
        Ok(n)
    }
}

/// The process-global context and the NCCL communicator waiting for the Trainer.
#[derive(Default)]
struct State {
    context: Option<Context>,
    comm: Option<Box<dyn Communicator>>,
}

fn state() -> MutexGuard<'static, State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    // The state is plain data that is replaced whole, so a panic elsewhere cannot leave it
    // half-written; keep using it after poisoning.
    STATE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Sets up the run's device and ranks and returns `(rank_id, device_num)`, as MindFormers'
/// `init_context`; the result is kept for [`current`] (a second call replaces it).
pub fn init_context(
    use_parallel: bool,
    context_config: &ContextConfig,
    parallel_config: Option<&ParallelContextConfig>,
) -> Result<(usize, usize)> {
    let env = |k: &str| std::env::var(k).ok();
    let (context, comm) = build(use_parallel, context_config, parallel_config, &env)?;
    if let Some(seed) = context_config.seed {
        // libtorch seeds are i64; reinterpreting the bits keeps every u64 a distinct seed.
        tch::manual_seed(seed as i64);
    }
    let ids = (context.rank_id, context.device_num);
    let mut st = state();
    st.context = Some(context);
    st.comm = comm;
    Ok(ids)
}

/// A copy of the context the last [`init_context`] set up, if any.
pub fn current() -> Option<Context> {
    state().context.clone()
}

/// Forgets the context and any communicator not yet taken (for tests and re-initialisation).
pub fn reset() {
    let mut st = state();
    st.context = None;
    st.comm = None;
}

/// Hands over the NCCL communicator [`init_context`] created for this process (once; `None`
/// afterwards and on the single and threads backends).
pub fn take_process_comm() -> Option<Box<dyn Communicator>> {
    state().comm.take()
}

/// The device a `device_target` names; `device_id` is the GPU index for CUDA.
fn parse_target(target: &str, device_id: usize) -> Result<Device> {
    match target.trim().to_ascii_lowercase().as_str() {
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => Ok(Device::Cuda(device_id)),
        "ascend" => Err(MfError::Device(format!(
            "device_target=\"{target}\": Ascend NPUs are not supported by mindformers-rs \
             (libtorch has no Ascend backend); use device_target=\"cpu\" or \"cuda\""
        ))),
        _ => Err(MfError::Device(format!(
            "device_target=\"{target}\" is not known; use device_target=\"cpu\" or \"cuda\""
        ))),
    }
}

/// Fails unless libtorch sees CUDA device `index`.
fn check_cuda(index: usize) -> Result<()> {
    if !tch::Cuda::is_available() {
        return Err(MfError::Device(format!(
            "device_target=\"cuda\" (cuda:{index}) requested but libtorch sees no CUDA device; \
             use device_target=\"cpu\" or run on a machine with a GPU and a CUDA libtorch"
        )));
    }
    let n = tch::Cuda::device_count().max(0) as usize;
    if index >= n {
        return Err(MfError::Device(format!(
            "cuda:{index} requested but only {n} CUDA device(s) exist; use an index below {n}"
        )));
    }
    Ok(())
}

/// Reads a non-negative integer environment variable; unset is `None`, garbage is an error.
fn env_usize(env: &dyn Fn(&str) -> Option<String>, key: &str) -> Result<Option<usize>> {
    match env(key) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            invalid(format!(
                "environment variable {key}='{v}' is not a non-negative integer; fix or unset it"
            ))
        }),
    }
}

/// The error for a variable `mf launch` and torchrun set but this process did not get.
fn not_launched(key: &str) -> MfError {
    invalid(format!(
        "use_parallel=true with device_target=\"cuda\" runs one process per GPU and needs \
         {key} from the launcher, which is not set; start the program with \
         `mf launch --nproc-per-node N -- <cmd>` (or torchrun)"
    ))
}

/// Like [`env_usize`], but the variable must be set.
fn launcher_var(env: &dyn Fn(&str) -> Option<String>, key: &str) -> Result<usize> {
    env_usize(env, key)?.ok_or_else(|| not_launched(key))
}

/// Everything [`init_context`] decides, with the environment passed in so it can be tested
/// without touching the process environment.
fn build(
    use_parallel: bool,
    cfg: &ContextConfig,
    parallel_config: Option<&ParallelContextConfig>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Context, Option<Box<dyn Communicator>>)> {
    let mode = ExecutionMode::from_code(cfg.mode)?;
    let device = parse_target(&cfg.device_target, cfg.device_id)?;
    let parallel = parallel_config.cloned().unwrap_or_default();
    if !use_parallel {
        if let Device::Cuda(i) = device {
            check_cuda(i)?;
        }
        let context = Context {
            use_parallel,
            mode,
            device,
            device_id: cfg.device_id,
            parallel,
            rank_id: 0,
            device_num: 1,
            device_num_explicit: true,
            backend: Backend::Single,
        };
        return Ok((context, None));
    }
    if parallel.parallel_mode == ParallelMode::AutoParallel {
        return Err(invalid(
            "parallel_mode AUTO_PARALLEL (automatic sharding-strategy search) is not supported; \
             use SEMI_AUTO_PARALLEL and give the layout with Trainer::set_parallel_config",
        ));
    }
    if parallel.device_num == Some(0) {
        return Err(invalid(
            "ParallelContextConfig.device_num = 0; it must be at least 1 (or None to let the \
             layout decide)",
        ));
    }
    let (context, comm) = match device {
        Device::Cpu => {
            let world = env_usize(env, "WORLD_SIZE")?;
            if world == Some(0) {
                return Err(invalid(
                    "environment variable WORLD_SIZE=0; it must be at least 1, fix or unset it",
                ));
            }
            // One process per rank (mf launch / torchrun) cannot work here: the threads
            // backend keeps every rank inside one process.
            if let (Some(rank), Some(w)) = (env_usize(env, "RANK")?, world) {
                if w > 1 {
                    return Err(invalid(format!(
                        "this process was launched as RANK={rank} of WORLD_SIZE={w}, but \
                         device_target=\"cpu\" uses the threads backend, whose ranks are threads \
                         of one process; run a single process (without `mf launch`) with \
                         ParallelContextConfig.device_num, or use device_target=\"cuda\""
                    )));
                }
            }
            let (device_num, explicit) = match parallel.device_num.or(world) {
                Some(n) => (n, true),
                None => (1, false),
            };
            let context = Context {
                use_parallel,
                mode,
                device,
                device_id: cfg.device_id,
                parallel,
                rank_id: 0,
                device_num,
                device_num_explicit: explicit,
                backend: Backend::Threads,
            };
            (context, None)
        }
        Device::Cuda(_) => {
            let rank = launcher_var(env, "RANK")?;
            let world = launcher_var(env, "WORLD_SIZE")?;
            let local = launcher_var(env, "LOCAL_RANK")?;
            if env("MASTER_ADDR").is_none_or(|a| a.trim().is_empty()) {
                return Err(not_launched("MASTER_ADDR"));
            }
            let port = launcher_var(env, "MASTER_PORT")?;
            if port == 0 || port > u16::MAX as usize {
                return Err(invalid(format!(
                    "environment variable MASTER_PORT={port} is not a usable port; set it to \
                     1..=65535 (mf launch --master-port)"
                )));
            }
            if world == 0 || rank >= world {
                return Err(invalid(format!(
                    "environment variables RANK={rank}, WORLD_SIZE={world}: RANK must be below \
                     WORLD_SIZE; start the program with `mf launch`"
                )));
            }
            if let Some(n) = parallel.device_num {
                if n != world {
                    return Err(invalid(format!(
                        "ParallelContextConfig.device_num = {n} but the launcher started \
                         WORLD_SIZE={world} processes; leave device_num unset on CUDA or make \
                         them agree"
                    )));
                }
            }
            if parallel.parallel_mode == ParallelMode::StandAlone && world > 1 {
                return Err(stand_alone_error(world));
            }
            let comm = nccl_comm(local)?;
            let context = Context {
                use_parallel,
                mode,
                device: Device::Cuda(local),
                device_id: local,
                parallel,
                rank_id: rank,
                device_num: world,
                device_num_explicit: true,
                backend: Backend::Nccl,
            };
            (context, Some(comm))
        }
    };
    if context.parallel.parallel_mode == ParallelMode::StandAlone && context.device_num > 1 {
        return Err(stand_alone_error(context.device_num));
    }
    Ok((context, comm))
}

fn stand_alone_error(n: usize) -> MfError {
    invalid(format!(
        "parallel_mode STAND_ALONE runs on one device but use_parallel=true asks for {n}; use \
         DATA_PARALLEL or SEMI_AUTO_PARALLEL, or device_num=1"
    ))
}

/// This process's NCCL communicator on CUDA device `local_rank`.
#[cfg(feature = "nccl")]
fn nccl_comm(local_rank: usize) -> Result<Box<dyn Communicator>> {
    check_cuda(local_rank)?;
    Ok(Box::new(crate::comm::nccl::NcclComm::from_env()?))
}

/// Without the `nccl` feature there is no multi-process GPU backend to create.
#[cfg(not(feature = "nccl"))]
fn nccl_comm(_local_rank: usize) -> Result<Box<dyn Communicator>> {
    Err(MfError::Device(
        "use_parallel=true with device_target=\"cuda\" needs the NCCL backend, which this build \
         does not include; rebuild with `--features nccl` (cargo feature of mf-core)"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Serialises tests that touch the process-global context.
    static GLOBAL: Mutex<()> = Mutex::new(());

    fn lock() -> MutexGuard<'static, ()> {
        GLOBAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    fn cpu() -> ContextConfig {
        ContextConfig::default()
    }

    fn cuda() -> ContextConfig {
        ContextConfig {
            device_target: "CUDA".into(),
            ..Default::default()
        }
    }

    fn pc(mode: ParallelMode) -> ParallelContextConfig {
        ParallelContextConfig {
            parallel_mode: mode,
            ..Default::default()
        }
    }

    fn err_of(
        use_parallel: bool,
        cfg: &ContextConfig,
        pcfg: Option<&ParallelContextConfig>,
        vars: &[(&str, &str)],
    ) -> String {
        match build(use_parallel, cfg, pcfg, &env_of(vars)) {
            Ok((c, _)) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn single_device_is_rank_0_of_1() {
        let (c, comm) = build(false, &cpu(), None, &env_of(&[("WORLD_SIZE", "8")])).unwrap();
        // WORLD_SIZE is irrelevant without use_parallel.
        assert_eq!((c.rank_id, c.device_num), (0, 1));
        assert_eq!(c.backend, Backend::Single);
        assert_eq!(c.device, Device::Cpu);
        assert_eq!(c.mode, ExecutionMode::Graph);
        assert!(comm.is_none());
        let pynative = ContextConfig {
            mode: 1,
            device_target: "Cpu".into(),
            ..Default::default()
        };
        let (c, _) = build(false, &pynative, None, &env_of(&[])).unwrap();
        assert_eq!(c.mode, ExecutionMode::PyNative);
    }

    #[test]
    fn ascend_unknown_targets_and_bad_modes_are_refused() {
        let ascend = ContextConfig {
            device_target: "Ascend".into(),
            ..Default::default()
        };
        for use_parallel in [false, true] {
            let e = err_of(use_parallel, &ascend, None, &[]);
            assert!(
                e.contains("Ascend NPUs are not supported")
                    && e.contains("device_target=\"cpu\" or \"cuda\""),
                "{e}"
            );
        }
        let tpu = ContextConfig {
            device_target: "tpu".into(),
            ..Default::default()
        };
        assert!(err_of(false, &tpu, None, &[]).contains("\"tpu\" is not known"));
        let mode2 = ContextConfig {
            mode: 2,
            ..Default::default()
        };
        let e = err_of(false, &mode2, None, &[]);
        assert!(
            e.contains("mode 2") && e.contains("GRAPH_MODE") && e.contains("PYNATIVE_MODE"),
            "{e}"
        );
    }

    #[test]
    fn cuda_without_gpu_is_a_clear_error() {
        if tch::Cuda::is_available() {
            return;
        }
        let e = err_of(false, &cuda(), None, &[]);
        assert!(
            e.contains("sees no CUDA device") && e.contains("device_target=\"cpu\""),
            "{e}"
        );
    }

    #[test]
    fn parallel_modes_parse_from_mindformers_names() {
        assert_eq!(
            "DATA_PARALLEL".parse::<ParallelMode>().unwrap(),
            ParallelMode::DataParallel
        );
        assert_eq!(
            "semi_auto_parallel".parse::<ParallelMode>().unwrap(),
            ParallelMode::SemiAutoParallel
        );
        assert_eq!(
            " Stand_Alone ".parse::<ParallelMode>().unwrap(),
            ParallelMode::StandAlone
        );
        for name in ParallelMode::NAMES {
            let m: ParallelMode = name.parse().unwrap();
            assert_eq!(m.to_string(), name);
        }
        let e = "HYBRID_PARALLEL"
            .parse::<ParallelMode>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("HYBRID_PARALLEL")
                && e.contains("STAND_ALONE, DATA_PARALLEL, SEMI_AUTO_PARALLEL, AUTO_PARALLEL"),
            "{e}"
        );
    }

    #[test]
    fn configs_deserialize_with_defaults_and_reject_unknown_keys() {
        let p: ParallelContextConfig = toml::from_str("").unwrap();
        assert_eq!(p, ParallelContextConfig::default());
        assert_eq!(p.parallel_mode, ParallelMode::DataParallel);
        assert!(!p.gradients_mean && !p.enable_parallel_optimizer && p.full_batch);
        assert_eq!(p.device_num, None);
        let p: ParallelContextConfig =
            toml::from_str("parallel_mode = \"semi_auto_parallel\"\ndevice_num = 4").unwrap();
        assert_eq!(p.parallel_mode, ParallelMode::SemiAutoParallel);
        assert_eq!(p.device_num, Some(4));
        let e = toml::from_str::<ParallelContextConfig>("parallel_mode = \"hybrid\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("DATA_PARALLEL"), "{e}");
        let c: ContextConfig = toml::from_str("mode = 1\nseed = 7").unwrap();
        assert_eq!(
            (c.mode, c.device_target.as_str(), c.seed),
            (1, "cpu", Some(7))
        );
        assert!(toml::from_str::<ContextConfig>("max_device_memory = \"30GB\"").is_err());
        // The round trip writes MindFormers' names.
        let text = toml::to_string(&ParallelContextConfig::default()).unwrap();
        assert!(text.contains("parallel_mode = \"DATA_PARALLEL\""), "{text}");
    }

    #[test]
    fn data_parallel_on_cpu_uses_threads_and_defaults() {
        let (c, comm) = build(true, &cpu(), None, &env_of(&[])).unwrap();
        assert_eq!(c.backend, Backend::Threads);
        assert_eq!(c.parallel, ParallelContextConfig::default());
        assert_eq!(
            (c.rank_id, c.device_num, c.device_num_explicit),
            (0, 1, false)
        );
        assert!(comm.is_none());
        // The layout decides when nothing fixed the rank count.
        assert_eq!(c.check_layout(4, 1, 1).unwrap(), 4);
        let e = c.check_layout(2, 2, 1).unwrap_err().to_string();
        assert!(e.contains("SEMI_AUTO_PARALLEL"), "{e}");

        let four = ParallelContextConfig {
            device_num: Some(4),
            gradients_mean: true,
            ..Default::default()
        };
        let (c, _) = build(true, &cpu(), Some(&four), &env_of(&[("WORLD_SIZE", "2")])).unwrap();
        // The config wins over the environment.
        assert_eq!(
            (c.rank_id, c.device_num, c.device_num_explicit),
            (0, 4, true)
        );
        assert!(c.parallel.gradients_mean);
        assert!(c.check_layout(4, 1, 1).is_ok());
        let e = c.check_layout(2, 1, 1).unwrap_err().to_string();
        assert!(e.contains("needs 2 ranks") && e.contains("has 4"), "{e}");
    }

    #[test]
    fn world_size_from_the_environment() {
        let semi = pc(ParallelMode::SemiAutoParallel);
        let (c, _) = build(true, &cpu(), Some(&semi), &env_of(&[("WORLD_SIZE", "8")])).unwrap();
        assert_eq!((c.device_num, c.device_num_explicit), (8, true));
        assert_eq!(c.check_layout(2, 2, 2).unwrap(), 8);
        let e = err_of(true, &cpu(), None, &[("WORLD_SIZE", "two")]);
        assert!(e.contains("WORLD_SIZE='two'") && e.contains("unset"), "{e}");
        let e = err_of(true, &cpu(), None, &[("WORLD_SIZE", "0")]);
        assert!(e.contains("WORLD_SIZE=0"), "{e}");
        // A multi-process launch cannot feed the in-process threads backend.
        let e = err_of(true, &cpu(), None, &[("WORLD_SIZE", "2"), ("RANK", "1")]);
        assert!(
            e.contains("RANK=1 of WORLD_SIZE=2") && e.contains("threads"),
            "{e}"
        );
        let (c, _) = build(
            true,
            &cpu(),
            None,
            &env_of(&[("WORLD_SIZE", "1"), ("RANK", "0")]),
        )
        .unwrap();
        assert_eq!(c.device_num, 1);
    }

    #[test]
    fn auto_parallel_and_multi_rank_stand_alone_are_refused() {
        let e = err_of(true, &cpu(), Some(&pc(ParallelMode::AutoParallel)), &[]);
        assert!(
            e.contains("AUTO_PARALLEL")
                && e.contains("not supported")
                && e.contains("SEMI_AUTO_PARALLEL")
                && e.contains("set_parallel_config"),
            "{e}"
        );
        let stand = ParallelContextConfig {
            parallel_mode: ParallelMode::StandAlone,
            device_num: Some(2),
            ..Default::default()
        };
        let e = err_of(true, &cpu(), Some(&stand), &[]);
        assert!(e.contains("STAND_ALONE") && e.contains("asks for 2"), "{e}");
        let one = ParallelContextConfig {
            device_num: Some(1),
            ..stand
        };
        let (c, _) = build(true, &cpu(), Some(&one), &env_of(&[])).unwrap();
        assert_eq!(c.device_num, 1);
        assert!(c.check_layout(2, 1, 1).is_err());
        let zero = ParallelContextConfig {
            device_num: Some(0),
            ..Default::default()
        };
        assert!(err_of(true, &cpu(), Some(&zero), &[]).contains("at least 1"));
    }

    #[test]
    fn single_context_refuses_multi_rank_layouts() {
        let (c, _) = build(false, &cpu(), None, &env_of(&[])).unwrap();
        assert_eq!(c.check_layout(1, 1, 1).unwrap(), 1);
        let e = c.check_layout(1, 2, 1).unwrap_err().to_string();
        assert!(e.contains("use_parallel=true"), "{e}");
    }

    #[test]
    fn cuda_parallel_needs_the_launcher_variables() {
        let e = err_of(true, &cuda(), None, &[]);
        assert!(
            e.contains("RANK") && e.contains("mf launch --nproc-per-node N -- <cmd>"),
            "{e}"
        );
        let launched = [
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29500"),
        ];
        for missing in ["WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"] {
            let vars: Vec<_> = launched
                .iter()
                .copied()
                .filter(|(k, _)| *k != missing)
                .collect();
            let e = err_of(true, &cuda(), None, &vars);
            assert!(
                e.contains(&format!("{missing} from the launcher")),
                "{missing}: {e}"
            );
        }
        let mut bad = launched;
        bad[0] = ("RANK", "2");
        assert!(err_of(true, &cuda(), None, &bad).contains("RANK must be below WORLD_SIZE"));
        let e = err_of(
            true,
            &cuda(),
            Some(&pc(ParallelMode::StandAlone)),
            &launched,
        );
        assert!(e.contains("STAND_ALONE"), "{e}");
        // With everything in place, what remains is the backend itself.
        let e = err_of(true, &cuda(), None, &launched);
        if cfg!(feature = "nccl") {
            if !tch::Cuda::is_available() {
                assert!(e.contains("sees no CUDA device"), "{e}");
            }
        } else {
            assert!(e.contains("--features nccl"), "{e}");
        }
    }

    #[test]
    fn init_context_records_the_current_context() {
        let _g = lock();
        reset();
        assert!(current().is_none());
        let cfg = ContextConfig {
            seed: Some(3),
            ..Default::default()
        };
        assert_eq!(init_context(false, &cfg, None).unwrap(), (0, 1));
        let c = current().unwrap();
        assert_eq!(c.backend, Backend::Single);
        assert!(!c.use_parallel);
        assert!(take_process_comm().is_none());
        // A second call replaces the context.
        let semi = ParallelContextConfig {
            parallel_mode: ParallelMode::SemiAutoParallel,
            device_num: Some(2),
            ..Default::default()
        };
        assert_eq!(init_context(true, &cfg, Some(&semi)).unwrap(), (0, 2));
        let c = current().unwrap();
        assert_eq!((c.backend, c.device_num), (Backend::Threads, 2));
        assert_eq!(c.parallel.parallel_mode, ParallelMode::SemiAutoParallel);
        // A failing call leaves the previous context in place.
        let bad = ContextConfig {
            mode: 5,
            ..Default::default()
        };
        assert!(init_context(false, &bad, None).is_err());
        assert_eq!(current().unwrap().device_num, 2);
        reset();
        assert!(current().is_none());
    }
}
