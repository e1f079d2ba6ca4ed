//! The Auto registry: preset names (TOML files in `configs/`, compiled in) and Hugging Face
//! directories resolve to a model family, its config and its weights.
use std::path::{Path, PathBuf};

use mf_core::{MfError, Result};
use serde::Deserialize;

use crate::gpt2::{GPT2Config, GPT2LMHeadModel};
use crate::model::CausalLM;

/// Every preset: (name, TOML text).
const PRESETS: &[(&str, &str)] = &[
    ("gpt2", include_str!("../../../configs/gpt2/gpt2.toml")),
    (
        "gpt2_xl",
        include_str!("../../../configs/gpt2/gpt2_xl.toml"),
    ),
    (
        "gpt2_13b",
        include_str!("../../../configs/gpt2/gpt2_13b.toml"),
    ),
    (
        "gpt2_52b",
        include_str!("../../../configs/gpt2/gpt2_52b.toml"),
    ),
];

/// A preset file: family, hub repository and hyperparameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// Model family (`gpt2`).
    pub model_type: String,
    /// Hugging Face repository with the weights, if published.
    pub hub_repo: Option<String>,
    /// One line for listings.
    pub description: String,
    /// Hyperparameters in the family's config keys.
    pub config: toml::Table,
}

/// Names of all presets.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

/// Looks up a preset by name.
pub fn preset(name: &str) -> Result<Preset> {
    let (_, text) = PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| MfError::unknown("model", name, &preset_names()))?;
    mf_core::config::parse_toml(text, &format!("preset {name}"))
}

/// A config of any supported family.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// GPT-2.
    Gpt2(GPT2Config),
}

impl ModelConfig {
    /// The GPT-2 config, or an error naming the actual family.
    pub fn into_gpt2(self) -> Result<GPT2Config> {
        match self {
            ModelConfig::Gpt2(c) => Ok(c),
        }
    }

    /// The family name (`model_type`).
    pub fn model_type(&self) -> &'static str {
        match self {
            ModelConfig::Gpt2(_) => "gpt2",
        }
    }
}

fn family_error(model_type: &str, origin: &str) -> MfError {
    MfError::config(
        origin,
        format!("model_type '{model_type}' is not supported; supported: gpt2"),
    )
}

/// `AutoConfig.from_pretrained`: preset name or directory to a family config.
pub struct AutoConfig;

impl AutoConfig {
    /// Resolves a preset name or a directory with `config.json`.
    pub fn from_pretrained(name_or_dir: &str) -> Result<ModelConfig> {
        Self::from_pretrained_with(name_or_dir, &[])
    }

    /// Like [`AutoConfig::from_pretrained`] with `key=value` overrides of preset keys
    /// (values in TOML syntax; bare words are strings). Unknown keys are errors.
    pub fn from_pretrained_with(
        name_or_dir: &str,
        sets: &[(String, String)],
    ) -> Result<ModelConfig> {
        let path = Path::new(name_or_dir);
        if path.is_dir() {
            if !sets.is_empty() {
                return Err(mf_core::invalid(
                    "key=value overrides apply to presets, not directories",
                ));
            }
            return Self::from_json_file(&path.join("config.json"));
        }
        let mut p = preset(name_or_dir)?;
        let origin = format!("preset {name_or_dir}");
        for (k, v) in sets {
            let value = toml::from_str::<toml::Table>(&format!("v = {v}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(v.clone()));
            p.config.insert(k.clone(), value);
        }
        match p.model_type.as_str() {
            "gpt2" => {
                let mut c: GPT2Config = p
                    .config
                    .clone()
                    .try_into()
                    .map_err(|e| MfError::config(&origin, e.to_string()))?;
                if !c.extra.is_empty() {
                    let known = serde_json::to_value(GPT2Config::default())
                        .ok()
                        .and_then(|v| {
                            v.as_object()
                                .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
                        })
                        .unwrap_or_default();
                    return Err(MfError::config(
                        &origin,
                        format!(
                            "unknown key(s) {}; valid keys: {known}",
                            c.extra.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                c.hub_repo = p.hub_repo.clone();
                c.validate(&format!("preset {name_or_dir}"))?;
                Ok(ModelConfig::Gpt2(c))
            }
            other => Err(family_error(other, &format!("preset {name_or_dir}"))),
        }
    }

    /// Reads a Hugging Face `config.json`, dispatching on `model_type`.
    pub fn from_json_file(path: &Path) -> Result<ModelConfig> {
        if !path.is_file() {
            return Err(MfError::NotFound(format!(
                "{}: no such config file",
                path.display()
            )));
        }
        let v: serde_json::Value = mf_core::config::read_json(path)?;
        let origin = path.display().to_string();
        match v.get("model_type").and_then(|m| m.as_str()) {
            Some("gpt2") => Ok(ModelConfig::Gpt2(GPT2Config::from_json_file(path)?)),
            Some(other) => Err(family_error(other, &origin)),
            None => Err(MfError::config(origin, "no model_type key")),
        }
    }
}

/// The directory holding a model's files: the directory itself, or the preset's weights in
/// the cache (downloaded if needed).
pub fn resolve_model_dir(name_or_dir: &str) -> Result<PathBuf> {
    let path = Path::new(name_or_dir);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if name_or_dir.contains(std::path::MAIN_SEPARATOR) || name_or_dir.starts_with('.') {
        return Err(MfError::NotFound(format!(
            "model directory '{name_or_dir}' does not exist"
        )));
    }
    let p = preset(name_or_dir)?;
    mf_core::hub::ModelHub::from_env().model_dir(name_or_dir, p.hub_repo.as_deref())
}

/// `AutoModel.from_pretrained` / `from_config`: any supported causal LM behind one interface.
pub struct AutoModel;

impl AutoModel {
    /// Loads a preset's weights (cache or hub) or a Hugging Face directory.
    pub fn from_pretrained(name_or_dir: &str) -> Result<Box<dyn CausalLM>> {
        let dir = resolve_model_dir(name_or_dir)?;
        match AutoConfig::from_json_file(&dir.join("config.json"))? {
            ModelConfig::Gpt2(_) => Ok(Box::new(GPT2LMHeadModel::from_dir(&dir)?)),
        }
    }

    /// A randomly initialised model of the config's family.
    pub fn from_config(config: &ModelConfig) -> Result<Box<dyn CausalLM>> {
        match config {
            ModelConfig::Gpt2(c) => Ok(Box::new(GPT2LMHeadModel::new(c)?)),
        }
    }
}
