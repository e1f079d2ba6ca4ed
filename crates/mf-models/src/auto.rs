//! The Auto registry: preset names (TOML files in `presets/`, compiled in) and Hugging Face
//! directories resolve to a model family, its config and its weights.
use std::any::Any;
use std::path::{Path, PathBuf};

use mf_core::{DType, Device, MfError, Result};
use serde::Deserialize;

use crate::model::CausalLM;
use crate::parallel::ParallelFamily;
use crate::task::{Task, TaskModel};

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

/// Every preset of every family, in registry order: (name, TOML text).
fn presets() -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    FAMILIES.iter().flat_map(|f| f.presets.iter())
}

/// Names of all presets.
pub fn preset_names() -> Vec<&'static str> {
    presets().map(|(n, _)| *n).collect()
}

/// Looks up a preset by name.
pub fn preset(name: &str) -> Result<Preset> {
    let (_, text) = presets()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| MfError::unknown("model", name, &preset_names()))?;
    mf_core::config::parse_toml(text, &format!("preset {name}"))
}

/// What the shared code needs of a family's config; each family implements it in its own file,
/// so a new family adds a config without touching any shared `match`.
pub trait FamilyConfig: ConfigAny + std::fmt::Debug + Send + Sync + 'static {
    /// The family as "expected a {name} config" errors name it.
    fn family_name() -> &'static str
    where
        Self: Sized;

    /// The `model_type` this config declares (a family may serve several).
    fn model_type(&self) -> &'static str;

    /// The Hugging Face `config.json` content (HF key names).
    fn config_json(&self) -> serde_json::Value;

    /// The longest input the model takes (absolute position embeddings), `None` for rotary
    /// and ALiBi families.
    fn max_positions(&self) -> Option<usize> {
        None
    }

    /// The classification labels the config names, `None` where it names none.
    fn label_names(&self) -> Result<Option<Vec<String>>> {
        Ok(None)
    }

    /// Sets the classification labels; families without classification heads refuse.
    fn set_labels(&mut self, _labels: &[String]) -> Result<()> {
        Err(mf_core::invalid(format!(
            "{} configs have no classification labels",
            self.model_type()
        )))
    }
}

/// Cloning, comparing and downcasting a boxed [`FamilyConfig`]; every `Clone + PartialEq`
/// config gets it from the blanket impl, so families write none of it.
pub trait ConfigAny {
    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn FamilyConfig>;
    /// The config as `Any`, for downcasting to its concrete type.
    fn as_any(&self) -> &dyn Any;
    /// The config as mutable `Any`.
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// The boxed config as `Any`, for taking it out by value.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
    /// Equality with a config of any family (different families are unequal).
    fn eq_config(&self, other: &dyn FamilyConfig) -> bool;
}

impl<T: FamilyConfig + Clone + PartialEq> ConfigAny for T {
    fn clone_box(&self) -> Box<dyn FamilyConfig> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }

    fn eq_config(&self, other: &dyn FamilyConfig) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
}

/// A config of any registered family.
pub struct ModelConfig(Box<dyn FamilyConfig>);

impl Clone for ModelConfig {
    fn clone(&self) -> Self {
        ModelConfig(self.0.clone_box())
    }
}

impl PartialEq for ModelConfig {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_config(other.0.as_ref())
    }
}

impl std::fmt::Debug for ModelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl<T: FamilyConfig> From<T> for ModelConfig {
    fn from(c: T) -> Self {
        ModelConfig(Box::new(c))
    }
}

impl ModelConfig {
    /// Wraps a family config.
    pub fn new(config: impl FamilyConfig) -> Self {
        ModelConfig(Box::new(config))
    }

    /// The family config behind the wrapper.
    pub fn inner(&self) -> &dyn FamilyConfig {
        self.0.as_ref()
    }

    /// Whether this is a `T` config.
    pub fn is<T: FamilyConfig>(&self) -> bool {
        self.0.as_any().is::<T>()
    }

    fn wrong_family<T: FamilyConfig>(&self) -> MfError {
        mf_core::invalid(format!(
            "expected a {} config, got a {} config",
            T::family_name(),
            self.model_type()
        ))
    }

    /// The `T` config, or an error naming the actual family.
    pub fn downcast<T: FamilyConfig>(&self) -> Result<&T> {
        self.0
            .as_any()
            .downcast_ref::<T>()
            .ok_or_else(|| self.wrong_family::<T>())
    }

    /// The `T` config, mutably, or an error naming the actual family.
    pub fn downcast_mut<T: FamilyConfig>(&mut self) -> Result<&mut T> {
        if !self.is::<T>() {
            return Err(self.wrong_family::<T>());
        }
        self.0
            .as_any_mut()
            .downcast_mut::<T>()
            .ok_or_else(|| mf_core::invalid("config downcast failed after its type check"))
    }

    /// Takes out the `T` config, or an error naming the actual family.
    pub fn into_config<T: FamilyConfig>(self) -> Result<T> {
        if !self.is::<T>() {
            return Err(self.wrong_family::<T>());
        }
        self.0
            .into_any()
            .downcast::<T>()
            .map(|c| *c)
            .map_err(|_| mf_core::invalid("config downcast failed after its type check"))
    }

    /// The classification labels the config names (`id2label`), or `None` where it names
    /// none: HF's placeholder `LABEL_i` names, or a family without classification heads.
    pub fn label_names(&self) -> Result<Option<Vec<String>>> {
        self.0.label_names()
    }

    /// The longest input the model takes (absolute position embeddings), `None` for rotary
    /// and ALiBi families.
    pub fn max_positions(&self) -> Option<usize> {
        self.0.max_positions()
    }

    /// Sets the classification labels (`id2label`, `label2id`, `num_labels`), as transformers'
    /// example scripts do from the training data.
    pub fn set_labels(&mut self, labels: &[String]) -> Result<()> {
        self.0.set_labels(labels)
    }

    /// The family name (`model_type`).
    pub fn model_type(&self) -> &'static str {
        self.0.model_type()
    }

    /// The Hugging Face `config.json` content.
    pub fn config_json(&self) -> serde_json::Value {
        self.0.config_json()
    }

    /// The registry entry of this config's family.
    pub fn family(&self) -> Result<&'static Family> {
        family(self.model_type())
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

fn find_family(model_type: &str) -> Option<&'static Family> {
    FAMILIES
        .iter()
        .find(|f| f.model_types.contains(&model_type))
        .copied()
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
        let fam = find_family(&p.model_type).ok_or_else(|| family_error(&p.model_type, &origin))?;
        (fam.parse_preset)(&p, &origin)
    }

    /// A Hugging Face `config.json` already in memory (e.g. [`crate::PreTrainedModel::config_json`]),
    /// dispatching on `model_type`; `origin` names it in errors.
    pub fn from_json_value(v: &serde_json::Value, origin: &str) -> Result<ModelConfig> {
        match v.get("model_type").and_then(|m| m.as_str()) {
            Some(mt) => {
                let fam = find_family(mt).ok_or_else(|| family_error(mt, origin))?;
                (fam.parse_json)(v, origin)
            }
            None => Err(MfError::config(origin, "no model_type key")),
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
            Some(mt) => {
                let fam = find_family(mt).ok_or_else(|| family_error(mt, &origin))?;
                (fam.read_json)(path)
            }
            None => Err(MfError::config(origin, "no model_type key")),
        }
    }
}

/// A `config.json` value as a family config `T` (not yet validated); `origin` names it in
/// errors. For a [`Family::parse_json`].
pub fn json_config<T: serde::de::DeserializeOwned>(
    v: &serde_json::Value,
    origin: &str,
) -> Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| MfError::config(origin, e.to_string()))
}

/// A preset's `[config]` table as a family config; keys the family does not know are errors
/// (a typo would otherwise silently keep the default). For a [`Family::parse_preset`].
pub fn preset_config<T>(
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
        let config = AutoConfig::from_json_file(&config_file(&dir)?)?;
        load_causal(&dir, config.model_type(), device, dtype)
    }

    /// A randomly initialised model of the config's family.
    pub fn from_config(config: &ModelConfig) -> Result<Box<dyn CausalLM>> {
        match config.family()?.causal_from_config {
            Some(build) => build(config),
            None => Err(no_causal_head(config.model_type())),
        }
    }
}

/// One model family, declared in its own file: the `model_type`s it serves, its presets, how
/// to parse its config, the heads it offers and how to build or load each. Adding a family is
/// its file plus one line in [`FAMILIES`].
pub struct Family {
    /// Family name, for messages.
    pub name: &'static str,
    /// The name as prose writes it (`GPT-2`, `PanGu-α`), for messages listing families.
    pub title: &'static str,
    /// `model_type` values of `config.json` / presets this family reads.
    pub model_types: &'static [&'static str],
    /// The family's presets (name, TOML text): its table in the generated `presets.rs`.
    pub presets: &'static [(&'static str, &'static str)],
    /// Parses a preset (its `[config]` table, HF or MindFormers key names) into a validated
    /// config; `origin` names it in errors.
    pub parse_preset: fn(&Preset, &str) -> Result<ModelConfig>,
    /// Parses a `config.json` value into a validated config; `origin` names it in errors.
    pub parse_json: fn(&serde_json::Value, &str) -> Result<ModelConfig>,
    /// Reads a `config.json` file into a validated config.
    pub read_json: fn(&Path) -> Result<ModelConfig>,
    /// Builds a randomly initialised causal LM from a config (families with that head).
    pub causal_from_config: Option<CausalFromConfig>,
    /// Heads the family offers.
    pub tasks: &'static [Task],
    /// Loads a directory as a causal LM (families with that head), straight at the dtype and
    /// device.
    pub load_causal: Option<LoadCausal>,
    /// Loads a directory with any other head, straight at the dtype and device.
    pub load_task: Option<LoadTask>,
    /// Builds a randomly initialised model with any non-causal head from its config.
    pub from_config: Option<FromConfig>,
    /// The hooks of the parallel engine, for families with a parallel implementation.
    pub parallel: Option<ParallelFamily>,
}

/// How a [`Family`] loads a directory as a causal LM at a device and dtype.
pub type LoadCausal = fn(&Path, Device, DType) -> Result<Box<dyn CausalLM>>;
/// How a [`Family`] loads a directory with another head at a device and dtype.
pub type LoadTask = fn(&Path, Task, Device, DType) -> Result<Box<dyn TaskModel>>;
/// How a [`Family`] builds a randomly initialised causal LM.
pub type CausalFromConfig = fn(&ModelConfig) -> Result<Box<dyn CausalLM>>;
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
    find_family(model_type)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A family config the shared code has never heard of.
    #[derive(Debug, Clone, PartialEq)]
    struct ToyConfig {
        width: usize,
    }

    impl FamilyConfig for ToyConfig {
        fn family_name() -> &'static str {
            "toy"
        }

        fn model_type(&self) -> &'static str {
            "toy"
        }

        fn config_json(&self) -> serde_json::Value {
            serde_json::json!({ "model_type": "toy", "width": self.width })
        }
    }

    #[test]
    fn an_unregistered_config_type_works_through_the_wrapper() {
        let mut c = ModelConfig::new(ToyConfig { width: 3 });
        assert_eq!(c.model_type(), "toy");
        assert_eq!(c.clone(), c);
        assert_ne!(c, ModelConfig::new(ToyConfig { width: 4 }));
        assert_eq!(c.max_positions(), None);
        assert_eq!(c.label_names().unwrap(), None);
        let e = c.set_labels(&["a".into()]).unwrap_err().to_string();
        assert!(
            e.contains("toy configs have no classification labels"),
            "{e}"
        );
        c.downcast_mut::<ToyConfig>().unwrap().width = 5;
        assert_eq!(c.downcast::<ToyConfig>().unwrap().width, 5);
        let e = c.clone().into_gpt2().unwrap_err().to_string();
        assert!(
            e.contains("expected a gpt2 config, got a toy config"),
            "{e}"
        );
        assert_eq!(
            c.into_config::<ToyConfig>().unwrap(),
            ToyConfig { width: 5 }
        );
        let e = AutoModel::from_config(&ModelConfig::new(ToyConfig { width: 1 }))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("model_type"), "{e}");
    }

    #[test]
    fn every_preset_round_trips_through_config_json() {
        for fam in FAMILIES {
            assert!(!fam.presets.is_empty(), "{} has no presets", fam.name);
            for (name, _) in fam.presets {
                let c = AutoConfig::from_pretrained(name).unwrap();
                assert!(fam.model_types.contains(&c.model_type()), "{name}");
                assert_eq!(c.family().unwrap().name, fam.name, "{name}");
                let json = c.config_json();
                let back = AutoConfig::from_json_value(&json, name).unwrap();
                assert_eq!(back.model_type(), c.model_type(), "{name}");
                assert_eq!(back.config_json(), json, "{name}");
                assert_eq!(back.max_positions(), c.max_positions(), "{name}");
            }
        }
    }

    #[test]
    fn unknown_families_are_config_errors_listing_the_registry() {
        let e = AutoConfig::from_json_value(&serde_json::json!({ "model_type": "toy" }), "x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model_type 'toy' is not supported; supported: gpt2"),
            "{e}"
        );
        let e = crate::parallel::layer_count(&AutoConfig::from_pretrained("bloom_560m").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("parallel training supports GPT-2, LLaMA and PanGu-α so far"),
            "{e}"
        );
    }
}
