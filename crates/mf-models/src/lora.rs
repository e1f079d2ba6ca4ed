//! LoRA (MindFormers' `pet_method='lora'`, PEFT's `LoraConfig`): low-rank adapters on chosen
//! linear layers, base weights frozen, adapters saved in PEFT's layout
//! (`adapter_config.json` + `adapter_model.safetensors` with `base_model.model.<module>.lora_A.weight`
//! names) so PEFT loads them, and merged into the base weights for inference.
use std::collections::BTreeSet;
use std::path::Path;

use mf_core::checkpoint::{save_safetensors, SafeTensors};
use mf_core::{invalid, MfError, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::model::CausalLM;

/// A linear layer that can carry an adapter.
pub trait LoraHost {
    /// (in_features, out_features) of this rank's weight.
    fn features(&self) -> (i64, i64);
    /// The base weight (in the layer's storage layout).
    fn weight(&self) -> &Tensor;
    /// The attached adapter.
    fn adapter(&self) -> Option<&LoraAdapter>;
    /// Attaches or removes an adapter.
    fn set_adapter(&mut self, adapter: Option<LoraAdapter>);
    /// Folds the adapter into the base weight and removes it.
    fn merge(&mut self);
    /// Whether the base weight is stored `[in, out]` (PEFT's `fan_in_fan_out`).
    fn fan_in_fan_out(&self) -> bool;
}

/// One adapter: `y += scaling · B(A(dropout(x)))`.
#[derive(Debug)]
pub struct LoraAdapter {
    /// `[r, in]`, PEFT's `lora_A.weight`.
    pub a: Tensor,
    /// `[out, r]`, PEFT's `lora_B.weight`.
    pub b: Tensor,
    /// `lora_alpha / r`.
    pub scaling: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f64,
    /// `lora_alpha`, kept to write the config back.
    pub alpha: f64,
}

impl LoraAdapter {
    /// The adapter's contribution for input `x` `[..., in]`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        // The adapter stays f32 when the base model runs in bf16: its output goes back to the
        // activations' dtype.
        let kind = x.kind();
        let x = if train && self.dropout > 0.0 {
            x.dropout(self.dropout, true)
        } else {
            x.shallow_clone()
        };
        let x = x.to_kind(self.a.kind());
        let y = x.matmul(&self.a.tr()).matmul(&self.b.tr()) * self.scaling;
        y.to_kind(kind)
    }

    /// `scaling · B A` as an `[out, in]` matrix.
    pub fn delta(&self) -> Tensor {
        self.b.matmul(&self.a) * self.scaling
    }
}

/// PEFT's `LoraConfig` (also read from `adapter_config.json`). MindFormers' `lora_rank` is
/// accepted for `r`. PEFT options that change the method (DoRA, rsLoRA, per-layer ranks,
/// `modules_to_save`) are errors when set, not silently ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Always `LORA`.
    #[serde(default = "lora_type")]
    pub peft_type: String,
    /// `CAUSAL_LM`.
    #[serde(default = "causal_lm")]
    pub task_type: Option<String>,
    /// Adapter rank.
    #[serde(alias = "lora_rank")]
    pub r: usize,
    /// Scale numerator: the update is multiplied by `lora_alpha / r`.
    pub lora_alpha: f64,
    /// Dropout on the adapter input while training.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Module names (the last component, e.g. `c_attn`, `q_proj`, or a full dotted name).
    pub target_modules: Vec<String>,
    /// Whether base weights are stored `[in, out]` (GPT-2's Conv1D); written for PEFT.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Only `none` (biases are not trained).
    #[serde(default = "no_bias")]
    pub bias: String,
    /// The base model, for PEFT.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Other PEFT keys: accepted only at their defaults.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

fn lora_type() -> String {
    "LORA".into()
}
fn causal_lm() -> Option<String> {
    Some("CAUSAL_LM".into())
}
fn no_bias() -> String {
    "none".into()
}

impl LoraConfig {
    /// Rank `r`, `lora_alpha`, no dropout, on `targets`.
    pub fn new(r: usize, lora_alpha: f64, targets: &[&str]) -> Self {
        LoraConfig {
            peft_type: lora_type(),
            task_type: causal_lm(),
            r,
            lora_alpha,
            lora_dropout: 0.0,
            target_modules: targets.iter().map(|s| s.to_string()).collect(),
            fan_in_fan_out: false,
            bias: no_bias(),
            base_model_name_or_path: None,
            other: Default::default(),
        }
    }

    /// Checks the values and refuses PEFT options this implementation does not carry out.
    pub fn validate(&self) -> Result<()> {
        if self.peft_type != "LORA" {
            return Err(invalid(format!(
                "peft_type '{}': only LORA is supported",
                self.peft_type
            )));
        }
        if self.r == 0 || self.lora_alpha.is_nan() || self.lora_alpha <= 0.0 {
            return Err(invalid("LoRA needs r >= 1 and lora_alpha > 0"));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(invalid(format!(
                "lora_dropout = {} must be in [0, 1)",
                self.lora_dropout
            )));
        }
        if self.target_modules.is_empty() {
            return Err(invalid(
                "LoRA target_modules is empty: name the layers to adapt, e.g. [\"c_attn\"] or [\"q_proj\", \"v_proj\"]",
            ));
        }
        if self.bias != "none" {
            return Err(invalid(format!(
                "LoRA bias = '{}': only \"none\" is supported",
                self.bias
            )));
        }
        for (k, v) in &self.other {
            let at_default = match (k.as_str(), v) {
                ("inference_mode" | "revision" | "peft_version" | "auto_mapping", _) => true,
                ("init_lora_weights", serde_json::Value::Bool(true)) => true,
                (_, serde_json::Value::Null | serde_json::Value::Bool(false)) => true,
                (_, serde_json::Value::Object(o)) => o.is_empty(),
                (_, serde_json::Value::Array(a)) => a.is_empty(),
                _ => false,
            };
            if !at_default {
                return Err(invalid(format!(
                    "LoRA option {k} = {v} is not supported here; remove it (or leave it at PEFT's default)"
                )));
            }
        }
        Ok(())
    }

    fn matches(&self, module: &str) -> bool {
        self.target_modules
            .iter()
            .any(|t| module == t || module.ends_with(&format!(".{t}")))
    }
}

/// Model names with LoRA settings (MindFormers' `gpt2_lora`, `llama_7b_lora`, ...).
static PRESETS: &[(&str, &str)] = crate::presets::LORA;

/// A LoRA preset: the base model preset and the adapter settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraPreset {
    /// The base model's preset name.
    pub base_model: String,
    /// One line for `mf presets`.
    pub description: String,
    /// The adapter settings.
    pub lora: LoraConfig,
}

/// Names of the LoRA presets.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

/// The LoRA preset called `name`, if there is one.
pub fn preset(name: &str) -> Result<Option<LoraPreset>> {
    match PRESETS.iter().find(|(n, _)| *n == name) {
        None => Ok(None),
        Some((_, text)) => {
            let mut p: LoraPreset = toml::from_str(text)
                .map_err(|e| MfError::config(format!("preset {name}"), e.to_string()))?;
            p.lora.base_model_name_or_path = Some(p.base_model.clone());
            p.lora.validate()?;
            Ok(Some(p))
        }
    }
}

/// What `apply_lora` did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSummary {
    /// Layers that got an adapter.
    pub adapted_layers: usize,
    /// Adapter parameters (the trainable ones).
    pub trainable_parameters: usize,
    /// All parameters, base and adapters.
    pub total_parameters: usize,
}

/// Attaches fresh adapters (A ~ PEFT's kaiming-uniform, B = 0, so the model's output is
/// unchanged) to every layer `cfg.target_modules` names, and freezes the base weights.
pub fn apply_lora(model: &mut dyn CausalLM, cfg: &LoraConfig) -> Result<LoraSummary> {
    cfg.validate()?;
    let base: Vec<(String, Tensor)> = model.parameters();
    let total_base: usize = base.iter().map(|(_, t)| t.numel()).sum();
    let layers = model.lora_layers();
    if layers.is_empty() {
        return Err(invalid("this model has no LoRA-capable linear layers"));
    }
    let names: Vec<String> = layers.iter().map(|(n, _)| n.clone()).collect();
    let mut adapted = 0;
    let mut trainable = 0;
    for (name, layer) in layers {
        if !cfg.matches(&name) {
            continue;
        }
        if layer.adapter().is_some() {
            return Err(invalid(format!(
                "{name} already has a LoRA adapter; merge_lora first to stack another"
            )));
        }
        let (inp, out) = layer.features();
        let w = layer.weight();
        let opts = (Kind::Float, w.device());
        let bound = 1.0 / (inp as f64).sqrt();
        let a = (Tensor::rand([cfg.r as i64, inp], opts) * (2.0 * bound) - bound)
            .set_requires_grad(true);
        let b = Tensor::zeros([out, cfg.r as i64], opts).set_requires_grad(true);
        trainable += a.numel() + b.numel();
        layer.set_adapter(Some(LoraAdapter {
            a,
            b,
            scaling: cfg.lora_alpha / cfg.r as f64,
            dropout: cfg.lora_dropout,
            alpha: cfg.lora_alpha,
        }));
        adapted += 1;
    }
    if adapted == 0 {
        let mut short: BTreeSet<&str> = BTreeSet::new();
        for n in &names {
            short.insert(n.rsplit('.').next().unwrap_or(n));
        }
        return Err(invalid(format!(
            "LoRA target_modules {:?} match no layer; this model's linear layers are {}",
            cfg.target_modules,
            short.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    for (_, p) in &base {
        let _ = p.shallow_clone().set_requires_grad(false);
    }
    Ok(LoraSummary {
        adapted_layers: adapted,
        trainable_parameters: trainable,
        total_parameters: total_base + trainable,
    })
}

/// Whether any adapter is attached.
pub fn has_lora(model: &mut dyn CausalLM) -> bool {
    model
        .lora_layers()
        .iter()
        .any(|(_, l)| l.adapter().is_some())
}

/// The adapters' tensors under PEFT's names (`base_model.model.<module>.lora_A.weight`), in a
/// stable order: what the optimizer trains and `adapter_model.safetensors` holds.
pub fn lora_parameters(model: &mut dyn CausalLM) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (name, layer) in model.lora_layers() {
        if let Some(a) = layer.adapter() {
            out.push((
                format!("base_model.model.{name}.lora_A.weight"),
                a.a.shallow_clone(),
            ));
            out.push((
                format!("base_model.model.{name}.lora_B.weight"),
                a.b.shallow_clone(),
            ));
        }
    }
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out
}

/// The config that describes the attached adapters.
pub fn current_config(model: &mut dyn CausalLM) -> Result<LoraConfig> {
    let mut targets = BTreeSet::new();
    let mut shape = None;
    let mut fan_in_fan_out = false;
    for (name, layer) in model.lora_layers() {
        if let Some(a) = layer.adapter() {
            targets.insert(name.rsplit('.').next().unwrap_or(&name).to_string());
            shape = Some((a.a.size()[0] as usize, a.alpha, a.dropout));
            fan_in_fan_out |= layer.fan_in_fan_out();
        }
    }
    let (r, alpha, dropout) = shape.ok_or_else(|| invalid("the model has no LoRA adapters"))?;
    let mut cfg = LoraConfig::new(r, alpha, &[]);
    cfg.target_modules = targets.into_iter().collect();
    cfg.lora_dropout = dropout;
    cfg.fan_in_fan_out = fan_in_fan_out;
    Ok(cfg)
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` (PEFT's layout) to `dir`.
pub fn save_adapter(model: &mut dyn CausalLM, dir: &Path, base_model: Option<&str>) -> Result<()> {
    let mut cfg = current_config(model)?;
    cfg.base_model_name_or_path = base_model.map(str::to_string);
    std::fs::create_dir_all(dir).map_err(|e| MfError::io(dir, e))?;
    mf_core::config::write_json(dir.join("adapter_config.json"), &cfg)?;
    let tensors: Vec<(String, Tensor)> = lora_parameters(model)
        .into_iter()
        .map(|(n, t)| (n, t.detach()))
        .collect();
    save_safetensors(dir.join("adapter_model.safetensors"), &tensors, None)
}

/// Copies `adapter_model.safetensors` from `dir` into the attached adapters.
pub fn load_adapter_weights(model: &mut dyn CausalLM, dir: &Path) -> Result<()> {
    let path = dir.join("adapter_model.safetensors");
    let st = SafeTensors::open(&path)?;
    let origin = path.display().to_string();
    let _g = tch::no_grad_guard();
    for (name, t) in lora_parameters(model) {
        if !st.contains(&name) {
            return Err(MfError::checkpoint(&origin, format!("no tensor '{name}'")));
        }
        let src = st.get(&name)?;
        if src.size() != t.size() {
            return Err(MfError::checkpoint(
                &origin,
                format!(
                    "'{name}' has shape {:?}, expected {:?}",
                    src.size(),
                    t.size()
                ),
            ));
        }
        t.shallow_clone().copy_(&src);
    }
    Ok(())
}

/// Reads a PEFT adapter directory: attaches adapters per its config and loads their weights.
pub fn load_adapter(model: &mut dyn CausalLM, dir: &Path) -> Result<LoraConfig> {
    let cfg: LoraConfig = mf_core::config::read_json(dir.join("adapter_config.json"))?;
    apply_lora(model, &cfg)?;
    load_adapter_weights(model, dir)?;
    Ok(cfg)
}

/// Folds every adapter into its base weight (W += scaling · B A), removes the adapters and
/// makes the base weights trainable again; returns how many layers were merged.
pub fn merge_lora(model: &mut dyn CausalLM) -> Result<usize> {
    let mut merged = 0;
    for (_, layer) in model.lora_layers() {
        if layer.adapter().is_some() {
            layer.merge();
            merged += 1;
        }
    }
    if merged == 0 {
        return Err(invalid("the model has no LoRA adapters to merge"));
    }
    for (_, p) in model.parameters() {
        let _ = p.set_requires_grad(true);
    }
    Ok(merged)
}
