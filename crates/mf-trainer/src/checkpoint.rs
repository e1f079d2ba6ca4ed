//! Training checkpoints: `output_dir/checkpoint/step_N/` with the model (`model.safetensors`,
//! `config.json`), `optimizer.safetensors` and `trainer_state.json`. A checkpoint is written in
//! a temp directory and renamed into place, so a `step_N` directory is always complete.
use std::path::{Path, PathBuf};

use mf_core::checkpoint::save_safetensors;
use mf_core::{MfError, Result};
use mf_models::CausalLM;
use serde::{Deserialize, Serialize};

use crate::optim::Optimizer;

/// What the trainer needs to continue exactly where it stopped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub global_step: usize,
    /// Micro-batches consumed (data position).
    pub micro_batches: usize,
    /// Fractional epoch reached.
    pub epoch: f64,
    /// The run's seed (dropout is reseeded from it every micro-step).
    pub seed: u64,
    /// Logged losses so far, one per logged step.
    pub log_history: Vec<serde_json::Value>,
}

/// The checkpoint directory of `step` under `output_dir`.
pub fn step_dir(output_dir: &Path, step: usize) -> PathBuf {
    output_dir.join("checkpoint").join(format!("step_{step}"))
}

/// Complete checkpoints under `output_dir`, oldest first.
pub fn list(output_dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(output_dir.join("checkpoint"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step_")?.parse().ok()?;
            e.path()
                .join("trainer_state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Writes a checkpoint atomically and prunes to `keep` checkpoints.
pub fn save(
    output_dir: &Path,
    model: &dyn CausalLM,
    optim: &Optimizer,
    state: &TrainerState,
    keep: Option<usize>,
) -> Result<PathBuf> {
    let root = output_dir.join("checkpoint");
    std::fs::create_dir_all(&root).map_err(|e| MfError::io(&root, e))?;
    let final_dir = step_dir(output_dir, state.global_step);
    let tmp = root.join(format!(
        ".tmp-step_{}-{}",
        state.global_step,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    model.save_pretrained(&tmp)?;
    save_safetensors(
        tmp.join("optimizer.safetensors"),
        &optim.state_tensors(),
        None,
    )?;
    mf_core::config::write_json(tmp.join("trainer_state.json"), state)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| MfError::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| MfError::io(&final_dir, e))?;
    if let Some(keep) = keep {
        let all = list(output_dir);
        for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(final_dir)
}

/// Reads a checkpoint's trainer state.
pub fn load_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join("trainer_state.json");
    if !path.is_file() {
        return Err(MfError::checkpoint(
            dir.display(),
            "no trainer_state.json: not a complete training checkpoint",
        ));
    }
    mf_core::config::read_json(path)
}
