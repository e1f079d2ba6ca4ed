//! Training checkpoints: `output_dir/checkpoint/step_N/` with the model (`model.safetensors`,
//! `config.json`), `optimizer.safetensors` and `trainer_state.json`. A checkpoint is written in
//! a temp directory and renamed into place, so a `step_N` directory is always complete.
use std::path::{Path, PathBuf};

use mf_core::checkpoint::save_safetensors;
use mf_core::{MfError, Result};
use serde::{Deserialize, Serialize};

/// What the trainer needs to continue exactly where it stopped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
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
    /// fp16's dynamic loss scale, when training in fp16.
    pub loss_scaler: Option<crate::amp::LossScaler>,
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
    model: &mut crate::model::TrainModel,
    optimizer_state: &[(String, tch::Tensor)],
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
    remove_leftovers(&root);
    model.save_pretrained(&tmp)?;
    if model.has_lora() {
        mf_models::lora::save_adapter(model.causal_mut()?, &tmp, None)?;
    }
    save_safetensors(tmp.join("optimizer.safetensors"), optimizer_state, None)?;
    // trainer_state.json is what marks a checkpoint complete: it is written last.
    mf_core::config::write_json(tmp.join("trainer_state.json"), state)?;
    sync_dir_files(&tmp)?;
    if final_dir.exists() {
        discard(&root, &final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| MfError::io(&final_dir, e))?;
    if let Ok(d) = std::fs::File::open(&root) {
        let _ = d.sync_all();
    }
    if let Some(keep) = keep {
        let all = list(output_dir);
        for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
            discard(&root, old)?;
        }
    }
    Ok(final_dir)
}

/// Flushes every file of a finished checkpoint to disk before it is renamed into place, so a
/// crash of the machine cannot leave a `step_N` whose files are empty.
fn sync_dir_files(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)
        .map_err(|e| MfError::io(dir, e))?
        .flatten()
    {
        if e.path().is_file() {
            std::fs::File::open(e.path())
                .and_then(|f| f.sync_all())
                .map_err(|err| MfError::io(e.path(), err))?;
        }
    }
    Ok(())
}

/// Removes a checkpoint by first renaming it out of the `step_N` namespace, so a process
/// killed mid-delete leaves a hidden leftover, never a half-deleted `step_N`.
fn discard(root: &Path, dir: &Path) -> Result<()> {
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string());
    let trash = root.join(format!(
        ".trash-{}-{}",
        name.unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&trash);
    std::fs::rename(dir, &trash).map_err(|e| MfError::io(dir, e))?;
    std::fs::remove_dir_all(&trash).map_err(|e| MfError::io(&trash, e))
}

/// Deletes temp and trash directories a killed run left behind.
fn remove_leftovers(root: &Path) {
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(".tmp-step_") || name.starts_with(".trash-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
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
