//! The Auto registry: preset names (TOML files in `configs/`, compiled in) and Hugging Face
//! directories resolve to a model family, its config and its weights.
use std::path::{Path, PathBuf};

use mf_core::{DType, Device, MfError, Result};
use serde::Deserialize;

use crate::bert::BertConfig;
use crate::bloom::{BloomConfig, BloomForCausalLM};
use crate::glm::{GlmConfig, GlmForCausalLM};
use crate::gpt2::{GPT2Config, GPT2LMHeadModel};
use crate::llama::{LlamaConfig, LlamaForCausalLM};
use crate::model::CausalLM;
use crate::pangualpha::{PanguAlphaConfig, PanguAlphaHeadModel};
use crate::task::{Task, TaskModel};

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
    (
        "llama_7b",
        include_str!("../../../configs/llama/llama_7b.toml"),
    ),
    (
        "llama_13b",
        include_str!("../../../configs/llama/llama_13b.toml"),
    ),
    (
        "llama_65b",
        include_str!("../../../configs/llama/llama_65b.toml"),
    ),
    (
        "llama2_7b",
        include_str!("../../../configs/llama/llama2_7b.toml"),
    ),
    (
        "llama2_13b",
        include_str!("../../../configs/llama/llama2_13b.toml"),
    ),
    (
        "llama2_70b",
        include_str!("../../../configs/llama/llama2_70b.toml"),
    ),
    (
        "llama3_8b",
        include_str!("../../../configs/llama/llama3_8b.toml"),
    ),
    (
        "codellama_34b",
        include_str!("../../../configs/llama/codellama_34b.toml"),
    ),
    (
        "bloom_560m",
        include_str!("../../../configs/bloom/bloom_560m.toml"),
    ),
    (
        "bloom_7.1b",
        include_str!("../../../configs/bloom/bloom_7.1b.toml"),
    ),
    ("glm4_9b", include_str!("../../../configs/glm/glm4_9b.toml")),
    (
        "pangualpha_2_6b",
        include_str!("../../../configs/pangualpha/pangualpha_2_6b.toml"),
    ),
    (
        "pangualpha_13b",
        include_str!("../../../configs/pangualpha/pangualpha_13b.toml"),
    ),
    (
        "bert_base_uncased",
        include_str!("../../../configs/bert/bert_base_uncased.toml"),
    ),
    (
        "bert_tiny_uncased",
        include_str!("../../../configs/bert/bert_tiny_uncased.toml"),
    ),
    (
        "txtcls_bert_base_uncased",
        include_str!("../../../configs/bert/txtcls_bert_base_uncased.toml"),
    ),
    (
        "txtcls_bert_base_uncased_mnli",
        include_str!("../../../configs/bert/txtcls_bert_base_uncased_mnli.toml"),
    ),
    (
        "tokcls_bert_base_chinese",
        include_str!("../../../configs/bert/tokcls_bert_base_chinese.toml"),
    ),
    (
        "tokcls_bert_base_chinese_cluener",
        include_str!("../../../configs/bert/tokcls_bert_base_chinese_cluener.toml"),
    ),
    (
        "qa_bert_base_uncased",
        include_str!("../../../configs/bert/qa_bert_base_uncased.toml"),
    ),
];

/// A preset file: family, hub repository and hyperparameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// Model family (`gpt2`, `llama`, `qwen2`, `bloom`, ...).
    pub model_type: String,
    /// Hugging Face repository with the weights, if published.
    pub hub_repo: Option<String>,
    /// One line for listings.
    pub description: String,
    /// The task the preset's head serves (`fill_mask`, `text_classification`, ...); causal
    /// LMs leave it out (`text_generation`).
    pub task: Option<String>,
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
// A config is built once per model, so the size of the larger variant costs nothing, and
// unboxed variants keep `ModelConfig::Llama(c)` patterns plain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// GPT-2.
    Gpt2(GPT2Config),
    /// LLaMA 1/2/3, CodeLlama and Qwen2 checkpoints.
    Llama(LlamaConfig),
    /// BLOOM.
    Bloom(BloomConfig),
    /// GLM-4 (transformers' `GlmForCausalLM`).
    Glm(GlmConfig),
    /// PanGu-α.
    PanguAlpha(PanguAlphaConfig),
    /// BERT, RoBERTa, XLM-RoBERTa.
    Bert(BertConfig),
}

impl ModelConfig {
    /// The classification labels the config names (`id2label`), or `None` where it names
    /// none: HF's placeholder `LABEL_i` names, or a family without classification heads.
    pub fn label_names(&self) -> Result<Option<Vec<String>>> {
        match self {
            ModelConfig::Bert(c) if !c.id2label.is_empty() => Ok(Some(c.labels()?)),
            _ => Ok(None),
        }
    }

    /// The longest input the model takes (absolute position embeddings), `None` for rotary
    /// and ALiBi families.
    pub fn max_positions(&self) -> Option<usize> {
        match self {
            ModelConfig::Gpt2(c) => Some(c.seq_length),
            ModelConfig::PanguAlpha(c) => Some(c.seq_length),
            ModelConfig::Bert(c) => Some(c.max_positions()),
            ModelConfig::Llama(_) | ModelConfig::Bloom(_) | ModelConfig::Glm(_) => None,
        }
    }

    /// Sets the classification labels (`id2label`, `label2id`, `num_labels`), as transformers'
    /// example scripts do from the training data.
    pub fn set_labels(&mut self, labels: &[String]) -> Result<()> {
        match self {
            ModelConfig::Bert(c) => {
                c.set_labels(labels);
                Ok(())
            }
            other => Err(mf_core::invalid(format!(
                "{} configs have no classification labels",
                other.model_type()
            ))),
        }
    }

    /// The GPT-2 config, or an error naming the actual family.
    pub fn into_gpt2(self) -> Result<GPT2Config> {
        match self {
            ModelConfig::Gpt2(c) => Ok(c),
            other => Err(mf_core::invalid(format!(
                "expected a gpt2 config, got a {} config",
                other.model_type()
            ))),
        }
    }

    /// The LLaMA config, or an error naming the actual family.
    pub fn into_llama(self) -> Result<LlamaConfig> {
        match self {
            ModelConfig::Llama(c) => Ok(c),
            other => Err(mf_core::invalid(format!(
                "expected a llama config, got a {} config",
                other.model_type()
            ))),
        }
    }

    /// The BLOOM config, or an error naming the actual family.
    pub fn into_bloom(self) -> Result<BloomConfig> {
        match self {
            ModelConfig::Bloom(c) => Ok(c),
            other => Err(mf_core::invalid(format!(
                "expected a bloom config, got a {} config",
                other.model_type()
            ))),
        }
    }

    /// The GLM config, or an error naming the actual family.
    pub fn into_glm(self) -> Result<GlmConfig> {
        match self {
            ModelConfig::Glm(c) => Ok(c),
            other => Err(mf_core::invalid(format!(
                "expected a glm config, got a {} config",
                other.model_type()
            ))),
        }
    }

    /// The PanGu-α config, or an error naming the actual family.
    pub fn into_pangualpha(self) -> Result<PanguAlphaConfig> {
        match self {
            ModelConfig::PanguAlpha(c) => Ok(c),
            other => Err(mf_core::invalid(format!(
                "expected a pangualpha config, got a {} config",
                other.model_type()
            ))),
        }
    }

    /// The family name (`model_type`).
    pub fn model_type(&self) -> &'static str {
        match self {
            ModelConfig::Gpt2(_) => "gpt2",
            ModelConfig::Llama(c) if c.is_qwen2() => "qwen2",
            ModelConfig::Llama(_) => "llama",
            ModelConfig::Bloom(_) => "bloom",
            ModelConfig::Glm(_) => "glm",
            ModelConfig::PanguAlpha(_) => "pangualpha",
            ModelConfig::Bert(c) if c.model_type == "roberta" => "roberta",
            ModelConfig::Bert(c) if c.model_type == "xlm-roberta" => "xlm-roberta",
            ModelConfig::Bert(_) => "bert",
        }
    }
}

fn family_error(model_type: &str, origin: &str) -> MfError {
    MfError::config(
        origin,
        format!(
            "model_type '{model_type}' is not supported; supported: {}",
            supported_model_types().join(", ")
        ),
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
                let mut c = preset_config(&p.config, &origin, |c: &GPT2Config| &c.extra)?;
                c.hub_repo = p.hub_repo.clone();
                c.validate(&origin)?;
                Ok(ModelConfig::Gpt2(c))
            }
            "llama" | "qwen2" => {
                let mut c = preset_config(&p.config, &origin, |c: &LlamaConfig| &c.extra)?;
                c.model_type = p.model_type.clone();
                c.hub_repo = p.hub_repo.clone();
                c.validate(&origin)?;
                Ok(ModelConfig::Llama(c))
            }
            "bloom" => {
                let mut c = preset_config(&p.config, &origin, |c: &BloomConfig| &c.extra)?;
                c.hub_repo = p.hub_repo.clone();
                c.validate(&origin)?;
                Ok(ModelConfig::Bloom(c))
            }
            "glm" => {
                let mut c = preset_config(&p.config, &origin, |c: &GlmConfig| &c.extra)?;
                c.hub_repo = p.hub_repo.clone();
                c.validate(&origin)?;
                Ok(ModelConfig::Glm(c))
            }
            "pangualpha" => {
                let mut c = preset_config(&p.config, &origin, |c: &PanguAlphaConfig| &c.extra)?;
                c.hub_repo = p.hub_repo.clone();
                c.validate(&origin)?;
                Ok(ModelConfig::PanguAlpha(c))
            }
            "bert" | "roberta" | "xlm-roberta" => {
                let mut c = preset_config(&p.config, &origin, |c: &BertConfig| &c.extra)?;
                c.model_type = p.model_type.clone();
                c.hub_repo = p.hub_repo.clone();
                c.validate(&origin)?;
                Ok(ModelConfig::Bert(c))
            }
            other => Err(family_error(other, &origin)),
        }
    }

    /// A Hugging Face `config.json` already in memory (e.g. [`crate::PreTrainedModel::config_json`]),
    /// dispatching on `model_type`; `origin` names it in errors.
    pub fn from_json_value(v: &serde_json::Value, origin: &str) -> Result<ModelConfig> {
        fn parse<T: serde::de::DeserializeOwned>(v: &serde_json::Value, origin: &str) -> Result<T> {
            serde_json::from_value(v.clone()).map_err(|e| MfError::config(origin, e.to_string()))
        }
        Ok(match v.get("model_type").and_then(|m| m.as_str()) {
            Some("gpt2") => {
                let c: GPT2Config = parse(v, origin)?;
                c.validate(origin)?;
                ModelConfig::Gpt2(c)
            }
            Some("llama" | "qwen2") => {
                let c: LlamaConfig = parse(v, origin)?;
                c.validate(origin)?;
                ModelConfig::Llama(c)
            }
            Some("bloom") => {
                let c: BloomConfig = parse(v, origin)?;
                c.validate(origin)?;
                ModelConfig::Bloom(c)
            }
            Some("glm") => {
                let c: GlmConfig = parse(v, origin)?;
                c.validate(origin)?;
                ModelConfig::Glm(c)
            }
            Some("pangualpha") => {
                let c: PanguAlphaConfig = parse(v, origin)?;
                c.validate(origin)?;
                ModelConfig::PanguAlpha(c)
            }
            Some("bert" | "roberta" | "xlm-roberta") => {
                let c: BertConfig = parse(v, origin)?;
                c.validate(origin)?;
                ModelConfig::Bert(c)
            }
            Some(other) => return Err(family_error(other, origin)),
            None => return Err(MfError::config(origin, "no model_type key")),
        })
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
            Some("llama" | "qwen2") => Ok(ModelConfig::Llama(LlamaConfig::from_json_file(path)?)),
            Some("bloom") => Ok(ModelConfig::Bloom(BloomConfig::from_json_file(path)?)),
            Some("glm") => Ok(ModelConfig::Glm(GlmConfig::from_json_file(path)?)),
            Some("pangualpha") => Ok(ModelConfig::PanguAlpha(PanguAlphaConfig::from_json_file(
                path,
            )?)),
            Some("bert" | "roberta" | "xlm-roberta") => {
                Ok(ModelConfig::Bert(BertConfig::from_json_file(path)?))
            }
            Some(other) => Err(family_error(other, &origin)),
            None => Err(MfError::config(origin, "no model_type key")),
        }
    }
}

/// A preset's `[config]` table as a family config; keys the family does not know are errors
/// (a typo would otherwise silently keep the default).
fn preset_config<T>(
    table: &toml::Table,
    origin: &str,
    extra: fn(&T) -> &std::collections::BTreeMap<String, serde_json::Value>,
) -> Result<T>
where
    T: serde::de::DeserializeOwned + serde::Serialize + Default,
{
    let c: T = table
        .clone()
        .try_into()
        .map_err(|e| MfError::config(origin, e.to_string()))?;
    let unknown = extra(&c);
    if !unknown.is_empty() {
        let known = serde_json::to_value(T::default())
            .ok()
            .and_then(|v| {
                v.as_object()
                    .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
            })
            .unwrap_or_default();
        return Err(MfError::config(
            origin,
            format!(
                "unknown key(s) {}; valid keys: {known}",
                unknown.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(c)
}

/// The directory holding a model's files: the directory itself, or the preset's weights in
/// the cache (downloaded if needed).
pub fn resolve_model_dir(name_or_dir: &str) -> Result<PathBuf> {
    let path = Path::new(name_or_dir);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if is_hub_name(name_or_dir) && preset(name_or_dir).is_err() {
        // `org/name`: the Hugging Face cache, or a download.
        return mf_core::hub::ModelHub::from_env().model_dir(name_or_dir, Some(name_or_dir));
    }
    if name_or_dir.contains(std::path::MAIN_SEPARATOR) || name_or_dir.starts_with('.') {
        return Err(MfError::NotFound(format!(
            "model directory '{name_or_dir}' does not exist"
        )));
    }
    let p = preset(name_or_dir)?;
    mf_core::hub::ModelHub::from_env().model_dir(name_or_dir, p.hub_repo.as_deref())
}

/// `AutoModel.from_pretrained` / `from_config`, MindFormers' semantics: a preset's network with
/// the head it was published with, here any causal LM behind one interface (the seed's
/// `AutoModel.from_pretrained('gpt2')` then generates). The other heads, and the headless base
/// model, come from [`AutoModel::base`] and the `AutoModelFor<Task>` classes.
pub struct AutoModel;

impl AutoModel {
    /// Loads a preset's weights (cache or hub) or a Hugging Face directory, on the CPU in f32.
    pub fn from_pretrained(name_or_dir: &str) -> Result<Box<dyn CausalLM>> {
        Self::from_pretrained_on(name_or_dir, Device::Cpu, DType::F32)
    }

    /// Like `from_pretrained`, reading the weights straight at `dtype` on `device`.
    pub fn from_pretrained_on(
        name_or_dir: &str,
        device: Device,
        dtype: DType,
    ) -> Result<Box<dyn CausalLM>> {
        let dir = resolve_model_dir(name_or_dir)?;
        match AutoConfig::from_json_file(&config_file(&dir)?)? {
            ModelConfig::Bert(c) => Err(no_causal_head(&c.model_type)),
            c => load_causal(&dir, c.model_type(), device, dtype),
        }
    }

    /// A randomly initialised model of the config's family.
    pub fn from_config(config: &ModelConfig) -> Result<Box<dyn CausalLM>> {
        match config {
            ModelConfig::Gpt2(c) => Ok(Box::new(GPT2LMHeadModel::new(c)?)),
            ModelConfig::Llama(c) => Ok(Box::new(LlamaForCausalLM::new(c)?)),
            ModelConfig::Bloom(c) => Ok(Box::new(BloomForCausalLM::new(c)?)),
            ModelConfig::Glm(c) => Ok(Box::new(GlmForCausalLM::new(c)?)),
            ModelConfig::PanguAlpha(c) => Ok(Box::new(PanguAlphaHeadModel::new(c)?)),
            ModelConfig::Bert(c) => Err(no_causal_head(&c.model_type)),
        }
    }
}

/// One model family, declared in its own file: the `model_type`s it serves, the heads it
/// offers and how to load each. Adding a family is its file plus one line in [`FAMILIES`].
pub struct Family {
    /// Family name, for messages.
    pub name: &'static str,
    /// `model_type` values of `config.json` / presets this family reads.
    pub model_types: &'static [&'static str],
    /// Heads the family offers.
    pub tasks: &'static [Task],
    /// Loads a directory as a causal LM (families with that head), straight at the dtype and
    /// device.
    pub load_causal: Option<LoadCausal>,
    /// Loads a directory with any other head, straight at the dtype and device.
    pub load_task: Option<LoadTask>,
    /// Builds a randomly initialised model with any non-causal head from its config.
    pub from_config: Option<FromConfig>,
}

/// How a [`Family`] loads a directory as a causal LM at a device and dtype.
pub type LoadCausal = fn(&Path, Device, DType) -> Result<Box<dyn CausalLM>>;
/// How a [`Family`] loads a directory with another head at a device and dtype.
pub type LoadTask = fn(&Path, Task, Device, DType) -> Result<Box<dyn TaskModel>>;
/// How a [`Family`] builds a randomly initialised model with a non-causal head.
pub type FromConfig = fn(&ModelConfig, Task) -> Result<Box<dyn TaskModel>>;

/// Every registered family.
pub const FAMILIES: &[&Family] = &[
    &crate::gpt2::FAMILY,
    &crate::llama::FAMILY,
    &crate::bloom::FAMILY,
    &crate::glm::FAMILY,
    &crate::pangualpha::FAMILY,
    &crate::bert::FAMILY,
];

/// Every `model_type` some family reads.
pub fn supported_model_types() -> Vec<&'static str> {
    FAMILIES
        .iter()
        .flat_map(|f| f.model_types.iter().copied())
        .collect()
}

/// The family serving `model_type`.
pub fn family(model_type: &str) -> Result<&'static Family> {
    FAMILIES
        .iter()
        .find(|f| f.model_types.contains(&model_type))
        .copied()
        .ok_or_else(|| MfError::unknown("model_type", model_type, &supported_model_types()))
}

fn no_causal_head(model_type: &str) -> MfError {
    mf_core::invalid(format!(
        "{model_type} is an encoder with no causal LM head: load it with AutoModelForMaskedLM, \
         AutoModelForSequenceClassification, AutoModelForTokenClassification, \
         AutoModelForQuestionAnswering or AutoModel::base"
    ))
}

/// Whether a name looks like a Hugging Face hub repository (`org/name`).
pub fn is_hub_name(name: &str) -> bool {
    let mut parts = name.split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None)
        if !a.is_empty() && !b.is_empty() && !a.starts_with('.') && !Path::new(name).exists())
}

/// The task name of a preset's `task` key (MindFormers' or HF's spelling) as a head.
pub fn task_of_name(name: &str) -> Option<Task> {
    Some(match name.replace('-', "_").as_str() {
        "text_generation" => Task::CausalLM,
        "fill_mask" => Task::MaskedLM,
        "text_classification" | "sentiment_analysis" => Task::SequenceClassification,
        "token_classification" | "ner" => Task::TokenClassification,
        "question_answering" => Task::QuestionAnswering,
        "feature_extraction" => Task::Base,
        _ => return None,
    })
}

/// A model directory's `config.json`, or a not-found error naming the directory.
pub fn config_file(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(MfError::NotFound(format!(
            "{}: no config.json in this directory",
            dir.display()
        )));
    }
    Ok(path)
}

/// Loads a directory holding a `model_type` checkpoint as a causal LM, at `dtype` on `device`.
fn load_causal(
    dir: &Path,
    model_type: &str,
    device: Device,
    dtype: DType,
) -> Result<Box<dyn CausalLM>> {
    match family(model_type)?.load_causal {
        Some(load) => load(dir, device, dtype),
        None => Err(no_causal_head(model_type)),
    }
}

/// `model_type` (and the `architectures` head) of a model directory's `config.json`.
pub fn read_model_type(dir: &Path) -> Result<(String, Option<Task>)> {
    let path = config_file(dir)?;
    let v: serde_json::Value = mf_core::config::read_json(&path)?;
    let mt = v
        .get("model_type")
        .and_then(|m| m.as_str())
        .ok_or_else(|| MfError::config(path.display(), "no model_type key"))?;
    let task = v
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .and_then(Task::from_architecture);
    Ok((mt.to_string(), task))
}

/// Loads any registered family's model with `task`'s head from a preset name, directory or
/// hub name (`org/name`), on `device` in `dtype`.
pub fn load_task_model(
    name_or_dir: &str,
    task: Task,
    device: Device,
    dtype: DType,
) -> Result<Box<dyn TaskModel>> {
    let dir = resolve_model_dir(name_or_dir)?;
    let (mt, _) = read_model_type(&dir)?;
    let fam = family(&mt)?;
    if !fam.tasks.contains(&task) {
        return Err(mf_core::invalid(format!(
            "{name_or_dir} is a {} model, which has no {task} head (it offers: {}); {} cannot \
             load it",
            fam.name,
            fam.tasks
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            task.auto_class()
        )));
    }
    let load = fam.load_task.ok_or_else(|| {
        mf_core::invalid(format!(
            "{} models load as causal LMs: use AutoModelForCausalLM",
            fam.name
        ))
    })?;
    load(&dir, task, device, dtype)
}

impl AutoModel {
    /// `transformers.AutoModel`: the headless base model (hidden states, pooled output).
    pub fn base(name_or_dir: &str) -> Result<Box<dyn TaskModel>> {
        load_task_model(name_or_dir, Task::Base, Device::Cpu, DType::F32)
    }

    /// A randomly initialised model of the config's family with `task`'s head.
    pub fn from_config_task(config: &ModelConfig, task: Task) -> Result<Box<dyn TaskModel>> {
        let fam = family(config.model_type())?;
        match fam.from_config {
            Some(f) if fam.tasks.contains(&task) => f(config, task),
            _ => Err(mf_core::invalid(format!(
                "{} offers no {task} head built this way",
                fam.name
            ))),
        }
    }
}

/// `AutoModelForCausalLM`: any causal LM (the same models [`AutoModel::from_pretrained`] gives).
pub struct AutoModelForCausalLM;

impl AutoModelForCausalLM {
    /// Loads a preset, directory or hub name as a causal LM, on the CPU in f32.
    pub fn from_pretrained(name_or_dir: &str) -> Result<Box<dyn CausalLM>> {
        Self::from_pretrained_on(name_or_dir, Device::Cpu, DType::F32)
    }

    /// Like `from_pretrained`, reading the weights straight at `dtype` on `device`.
    pub fn from_pretrained_on(
        name_or_dir: &str,
        device: Device,
        dtype: DType,
    ) -> Result<Box<dyn CausalLM>> {
        let dir = resolve_model_dir(name_or_dir)?;
        let (mt, _) = read_model_type(&dir)?;
        load_causal(&dir, &mt, device, dtype)
    }
}

macro_rules! auto_head {
    ($(#[$doc:meta] $name:ident => $task:expr),* $(,)?) => {$(
        #[$doc]
        pub struct $name;

        impl $name {
            /// Loads a preset, directory or hub name with this head on the CPU in f32; a
            /// checkpoint without the head gets a new one, with a warning naming its tensors.
            pub fn from_pretrained(name_or_dir: &str) -> Result<Box<dyn TaskModel>> {
                load_task_model(name_or_dir, $task, Device::Cpu, DType::F32)
            }

            /// Like `from_pretrained`, reading the weights straight at `dtype` on `device`.
            pub fn from_pretrained_on(
                name_or_dir: &str,
                device: Device,
                dtype: DType,
            ) -> Result<Box<dyn TaskModel>> {
                load_task_model(name_or_dir, $task, device, dtype)
            }
        }
    )*};
}

auto_head! {
    /// `AutoModelForMaskedLM`.
    AutoModelForMaskedLM => Task::MaskedLM,
    /// `AutoModelForSequenceClassification`.
    AutoModelForSequenceClassification => Task::SequenceClassification,
    /// `AutoModelForTokenClassification`.
    AutoModelForTokenClassification => Task::TokenClassification,
    /// `AutoModelForQuestionAnswering`.
    AutoModelForQuestionAnswering => Task::QuestionAnswering,
}
