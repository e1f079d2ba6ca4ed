//! init_context: set up one device, data parallelism, or semi-automatic parallelism, and print
//! `rank_id, device_num` for each (the seed document's three `context_init` snippets).
//!
//! Python:
//! ```python
//! context_config = ContextConfig(mode=0, device_target="Ascend", device_id=0)
//! rank_id, device_num = init_context(use_parallel=False, context_config=context_config)
//! parallel_config = ParallelContextConfig(parallel_mode='DATA_PARALLEL', gradients_mean=True,
//!                                         enable_parallel_optimizer=False)
//! rank_id, device_num = init_context(use_parallel=True, context_config=context_config,
//!                                    parallel_config=parallel_config)
//! ```
//!
//! The snippets use `device_target="Ascend"`; Ascend NPUs are not supported here (libtorch has
//! no Ascend backend) and `init_context` refuses them with an error naming "cpu" and "cuda", so
//! these twins run on the CPU. With `use_parallel` on the CPU the ranks are threads of this
//! process; their number comes from `ParallelContextConfig::device_num` or `WORLD_SIZE` (try
//! `WORLD_SIZE=4 cargo run --example init_context`), else the Trainer's layout decides.
use mindformers::{init_context, ContextConfig, ParallelContextConfig, ParallelMode};

/// Single device.
fn context_init_single() -> mindformers::Result<(usize, usize)> {
    let context_config = ContextConfig {
        mode: 0,
        device_target: "cpu".into(), // "Ascend" in MindFormers; refused here, see above
        device_id: 0,
        ..Default::default()
    };
    init_context(false, &context_config, None)
}

/// Data parallel: the model is replicated, gradients averaged over the ranks.
fn context_init_data_parallel() -> mindformers::Result<(usize, usize)> {
    let context_config = ContextConfig {
        mode: 0,
        device_target: "cpu".into(), // "Ascend" in MindFormers; refused here, see above
        device_id: 0,
        ..Default::default()
    };
    let parallel_config = ParallelContextConfig {
        parallel_mode: ParallelMode::DataParallel,
        gradients_mean: true,
        enable_parallel_optimizer: false,
        ..Default::default()
    };
    init_context(true, &context_config, Some(&parallel_config))
}

/// Semi-automatic parallel: the layout given to `Trainer::set_parallel_config` is used.
fn context_init_semi_auto_parallel() -> mindformers::Result<(usize, usize)> {
    let context_config = ContextConfig {
        mode: 0,
        device_target: "cpu".into(), // "Ascend" in MindFormers; refused here, see above
        device_id: 0,
        ..Default::default()
    };
    let parallel_config = ParallelContextConfig {
        parallel_mode: ParallelMode::SemiAutoParallel,
        gradients_mean: false,
        enable_parallel_optimizer: false,
        full_batch: true,
        ..Default::default()
    };
    init_context(true, &context_config, Some(&parallel_config))
}

fn main() -> mindformers::Result<()> {
    let (rank_id, device_num) = context_init_single()?;
    println!("single device: rank_id={rank_id}, device_num={device_num}");
    let (rank_id, device_num) = context_init_data_parallel()?;
    println!("DATA_PARALLEL: rank_id={rank_id}, device_num={device_num}");
    let (rank_id, device_num) = context_init_semi_auto_parallel()?;
    println!("SEMI_AUTO_PARALLEL: rank_id={rank_id}, device_num={device_num}");

    // What the original snippets' device_target does here.
    let ascend = ContextConfig {
        device_target: "Ascend".into(),
        ..Default::default()
    };
    match init_context(false, &ascend, None) {
        Ok(ids) => println!("Ascend: unexpectedly accepted {ids:?}"),
        Err(e) => println!("Ascend: {e}"),
    }
    Ok(())
}
