//! BERT, RoBERTa and XLM-RoBERTa: post-LayerNorm encoders with absolute positions, one file
//! for the encoder and every task head (`BertModel`, `BertForMaskedLM`,
//! `BertForSequenceClassification`, `BertForTokenClassification`, `BertForQuestionAnswering`
//! and the RoBERTa twins). Parameter names are Hugging Face's (`bert.embeddings...`,
//! `cls.predictions...`, `roberta.encoder...`, `lm_head...`), so HF checkpoints load and
//! ours load in transformers. RoBERTa differs only in its position ids (offset past
//! `padding_idx`), the absence of token types, and its head layouts.
use std::collections::BTreeMap;
use std::path::Path;

use mf_core::checkpoint::SafeTensors;
use mf_core::{invalid, DType, Device, MfError, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::layers::params::{prefixed_candidates, Init, ParamBuilder, Params};
use crate::layers::Activation;
use crate::task::{
    check_range, check_same_shape, cross_entropy, ModelInputs, ModelOutput, PreTrainedModel, Task,
    TaskModel,
};

/// BERT-family hyperparameters under Hugging Face's `config.json` keys; MindFormers' names
/// (`num_layers`, `num_heads`, `seq_length`, `dropout_prob`) are accepted too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    /// `bert`, `roberta` or `xlm-roberta`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Encoder layers.
    #[serde(alias = "num_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    #[serde(alias = "num_heads")]
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Feed-forward activation (HF names: `gelu` is the erf form).
    pub hidden_act: String,
    /// Dropout on embeddings and residual branches (training only).
    #[serde(alias = "dropout_prob")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (training only).
    pub attention_probs_dropout_prob: f64,
    /// Learned positions.
    #[serde(alias = "seq_length")]
    pub max_position_embeddings: usize,
    /// Segment (token type) vocabulary.
    pub type_vocab_size: usize,
    /// Std of the normal init.
    pub initializer_range: f64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Padding id (RoBERTa's positions start after it).
    pub pad_token_id: u32,
    /// Only `absolute` is supported.
    pub position_embedding_type: String,
    /// Dropout before classification heads; `None` uses `hidden_dropout_prob`.
    pub classifier_dropout: Option<f64>,
    /// Label names by id (`{"0": "negative", ...}`).
    pub id2label: BTreeMap<String, String>,
    /// Ids by label name.
    pub label2id: BTreeMap<String, i64>,
    /// Number of labels when `id2label` is not given.
    pub num_labels: Option<usize>,
    /// `single_label_classification`, `multi_label_classification` or `regression`.
    pub problem_type: Option<String>,
    /// The HF class names the checkpoint was saved from.
    pub architectures: Vec<String>,
    /// A preset name or directory whose weights `new` loads, as in MindFormers.
    pub checkpoint_name_or_path: String,
    /// Hugging Face hub repository of the preset's weights.
    pub hub_repo: Option<String>,
    /// Other `config.json` keys, kept so a saved config round-trips.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for BertConfig {
    fn default() -> Self {
        BertConfig {
            model_type: "bert".into(),
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
            classifier_dropout: None,
            id2label: BTreeMap::new(),
            label2id: BTreeMap::new(),
            num_labels: None,
            problem_type: None,
            architectures: Vec::new(),
            checkpoint_name_or_path: String::new(),
            hub_repo: None,
            extra: BTreeMap::new(),
        }
    }
}

/// Keys recomputed on save.
const NOT_SAVED: &[&str] = &["torch_dtype", "dtype", "transformers_version"];

/// The `model_type`s this file serves.
pub const MODEL_TYPES: &[&str] = &["bert", "roberta", "xlm-roberta"];

impl BertConfig {
    /// Reads a Hugging Face `config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let cfg: BertConfig = mf_core::config::read_json(path)?;
        cfg.validate(&path.display().to_string())?;
        Ok(cfg)
    }

    /// Whether this is a RoBERTa-style model (positions after `padding_idx`, its heads).
    pub fn is_roberta(&self) -> bool {
        self.model_type != "bert"
    }

    /// The parameter-name prefix of the base model inside a head (`bert` / `roberta`).
    pub fn prefix(&self) -> &'static str {
        if self.is_roberta() {
            "roberta"
        } else {
            "bert"
        }
    }

    /// The longest input: RoBERTa's positions start past `padding_idx`.
    pub fn max_positions(&self) -> usize {
        if self.is_roberta() {
            self.max_position_embeddings
                .saturating_sub(self.pad_token_id as usize + 1)
        } else {
            self.max_position_embeddings
        }
    }

    /// Class names by id: `id2label`, else `LABEL_0..` for `num_labels` (2 by default).
    pub fn labels(&self) -> Result<Vec<String>> {
        if self.id2label.is_empty() {
            let n = self.num_labels.unwrap_or(2);
            return Ok((0..n).map(|i| format!("LABEL_{i}")).collect());
        }
        let mut v = vec![None; self.id2label.len()];
        for (k, name) in &self.id2label {
            let i: usize = k.parse().ok().filter(|i| *i < v.len()).ok_or_else(|| {
                invalid(format!("id2label key '{k}' is not an id in 0..{}", v.len()))
            })?;
            v[i] = Some(name.clone());
        }
        Ok(v.into_iter().map(|n| n.unwrap_or_default()).collect())
    }

    /// Sets the classification labels (`id2label`, `label2id`, `num_labels`).
    pub fn set_labels(&mut self, labels: &[String]) {
        self.id2label = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone()))
            .collect();
        self.label2id = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i as i64))
            .collect();
        self.num_labels = Some(labels.len());
    }

    fn dropout_classifier(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }

    /// Checks the values make a buildable model.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let err = |m: String| Err(MfError::config(origin, m));
        if !MODEL_TYPES.contains(&self.model_type.as_str()) {
            return err(format!(
                "model_type '{}' is not a BERT-family type ({})",
                self.model_type,
                MODEL_TYPES.join(", ")
            ));
        }
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.num_hidden_layers == 0
            || self.num_attention_heads == 0
            || self.intermediate_size == 0
            || self.max_position_embeddings == 0
        {
            return err("vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size and max_position_embeddings must be positive".into());
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.position_embedding_type != "absolute" {
            return err(format!(
                "position_embedding_type '{}' is not supported; only 'absolute'",
                self.position_embedding_type
            ));
        }
        if self.type_vocab_size == 0 && !self.is_roberta() {
            return err("type_vocab_size must be at least 1".into());
        }
        if self.is_roberta() && self.max_position_embeddings <= self.pad_token_id as usize + 1 {
            return err(format!(
                "max_position_embeddings {} leaves no positions after padding_idx {}",
                self.max_position_embeddings, self.pad_token_id
            ));
        }
        Activation::from_name(&self.hidden_act)
            .map_err(|e| MfError::config(origin, e.to_string()))?;
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
            ("classifier_dropout", self.dropout_classifier()),
        ] {
            if !(0.0..1.0).contains(&p) {
                return err(format!("{name} = {p} is not in [0, 1)"));
            }
        }
        if let Some(p) = &self.problem_type {
            if ![
                "single_label_classification",
                "multi_label_classification",
                "regression",
            ]
            .contains(&p.as_str())
            {
                return err(format!("problem_type '{p}' is not single_label_classification, multi_label_classification or regression"));
            }
        }
        self.labels()
            .map_err(|e| MfError::config(origin, e.to_string()))?;
        Ok(())
    }

    /// The Hugging Face `config.json` content for a model with `task`'s head.
    pub fn to_hf_json(&self, task: Task) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let serde_json::Value::Object(m) = &mut v {
            for k in NOT_SAVED
                .iter()
                .chain(["checkpoint_name_or_path", "hub_repo"].iter())
            {
                m.remove(*k);
            }
            let family = if self.model_type == "xlm-roberta" {
                "XLMRoberta"
            } else if self.is_roberta() {
                "Roberta"
            } else {
                "Bert"
            };
            m.insert(
                "architectures".into(),
                serde_json::json!([format!("{family}{}", task.class_suffix())]),
            );
            if self.num_labels.is_none() {
                m.remove("num_labels");
            }
            if self.problem_type.is_none() {
                m.remove("problem_type");
            }
            if self.classifier_dropout.is_none() {
                m.insert("classifier_dropout".into(), serde_json::Value::Null);
            }
            if self.id2label.is_empty() {
                m.remove("id2label");
                m.remove("label2id");
            }
        }
        v
    }
}

fn linear(x: &Tensor, w: &(Tensor, Tensor)) -> Tensor {
    x.linear(&w.0, Some(&w.1))
}

#[derive(Debug)]
struct LayerNormP {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNormP {
    fn forward(&self, x: &Tensor) -> Tensor {
        let d = self.weight.size()[0];
        x.layer_norm([d], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

#[derive(Debug)]
struct Layer {
    query: (Tensor, Tensor),
    key: (Tensor, Tensor),
    value: (Tensor, Tensor),
    attn_out: (Tensor, Tensor),
    attn_norm: LayerNormP,
    intermediate: (Tensor, Tensor),
    output: (Tensor, Tensor),
    out_norm: LayerNormP,
}

#[derive(Debug)]
enum Head {
    Base {
        pooler: Option<(Tensor, Tensor)>,
    },
    MaskedLM {
        dense: (Tensor, Tensor),
        norm: LayerNormP,
        bias: Tensor,
    },
    /// BERT: pooler then a linear; RoBERTa: `[CLS]` through dense + tanh then `out_proj`.
    SequenceClassification {
        pooler: Option<(Tensor, Tensor)>,
        dense: Option<(Tensor, Tensor)>,
        out: (Tensor, Tensor),
    },
    TokenClassification {
        out: (Tensor, Tensor),
    },
    QuestionAnswering {
        out: (Tensor, Tensor),
    },
}

/// A BERT-family encoder with one task head; built by `BertModel`, `BertForMaskedLM`, ... and
/// the `Roberta*` / `XLMRoberta*` twins.
#[derive(Debug)]
pub struct Bert {
    config: BertConfig,
    task: Task,
    params: Params,
    word: Tensor,
    position: Tensor,
    token_type: Option<Tensor>,
    emb_norm: LayerNormP,
    layers: Vec<Layer>,
    head: Head,
    act: Activation,
    labels: Vec<String>,
}

/// Builds one named parameter group (`linear`, `norm`) from a [`ParamBuilder`].
struct Builder<'b, 'a> {
    pb: &'b mut ParamBuilder<'a>,
    std: f64,
    eps: f64,
}

impl Builder<'_, '_> {
    fn linear(&mut self, name: &str, inp: usize, out: usize) -> Result<(Tensor, Tensor)> {
        Ok((
            self.pb.get(
                &format!("{name}.weight"),
                &[out as i64, inp as i64],
                Init::Normal(self.std),
            )?,
            self.pb
                .get(&format!("{name}.bias"), &[out as i64], Init::Zeros)?,
        ))
    }

    fn norm(&mut self, name: &str, dim: usize) -> Result<LayerNormP> {
        Ok(LayerNormP {
            weight: self
                .pb
                .get(&format!("{name}.weight"), &[dim as i64], Init::Ones)?,
            bias: self
                .pb
                .get(&format!("{name}.bias"), &[dim as i64], Init::Zeros)?,
            eps: self.eps,
        })
    }
}

/// Where weights come from when building.
enum Source<'a> {
    Random,
    Checkpoint(&'a SafeTensors),
}

impl Bert {
    /// A randomly initialised model with `task`'s head (HF's scheme: normal(0,
    /// initializer_range), zero biases, unit norms) on the CPU in f32; with
    /// `checkpoint_name_or_path` set, that checkpoint's weights are loaded.
    pub fn new(config: &BertConfig, task: Task) -> Result<Self> {
        if !config.checkpoint_name_or_path.is_empty() {
            let dir = crate::auto::resolve_model_dir(&config.checkpoint_name_or_path)?;
            let ckpt = SafeTensors::open(&dir)?;
            return Self::build(
                config,
                task,
                Source::Checkpoint(&ckpt),
                Device::Cpu,
                DType::F32,
            );
        }
        Self::build(config, task, Source::Random, Device::Cpu, DType::F32)
    }

    /// Loads a directory (`config.json` + safetensors) with `task`'s head, reading each
    /// tensor straight from the memory-mapped file at `dtype` on `device`. A head the
    /// checkpoint lacks is initialised, with a warning naming its tensors.
    pub fn from_dir(dir: &Path, task: Task, device: Device, dtype: DType) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        if !cfg_path.is_file() {
            return Err(MfError::NotFound(format!(
                "{}: no config.json in this directory",
                dir.display()
            )));
        }
        let config = BertConfig::from_json_file(&cfg_path)?;
        let ckpt = SafeTensors::open(dir)?;
        Self::build(&config, task, Source::Checkpoint(&ckpt), device, dtype)
    }

    /// A preset name, directory or hub name with `task`'s head, on the CPU in f32.
    pub fn from_pretrained(name_or_dir: &str, task: Task) -> Result<Self> {
        let dir = crate::auto::resolve_model_dir(name_or_dir)?;
        Self::from_dir(&dir, task, Device::Cpu, DType::F32)
    }

    fn build(
        config: &BertConfig,
        task: Task,
        source: Source<'_>,
        device: Device,
        dtype: DType,
    ) -> Result<Self> {
        config.validate("BertConfig")?;
        if task == Task::CausalLM {
            return Err(invalid(format!(
                "{} has no causal LM head; use AutoModelForMaskedLM or another head",
                config.model_type
            )));
        }
        let prefix = config.prefix();
        // A base model's own names carry no prefix (HF's BertModel.save_pretrained).
        let base = |n: &str| {
            if task == Task::Base {
                n.to_string()
            } else {
                format!("{prefix}.{n}")
            }
        };
        let candidates = move |name: &str| -> Vec<String> {
            let mut v = prefixed_candidates(name, prefix);
            // Some checkpoints store the tied LM-head bias only under `decoder.bias`.
            if let Some(p) = name
                .strip_suffix(".bias")
                .filter(|p| *p == "cls.predictions" || *p == "lm_head")
            {
                v.push(format!("{p}.decoder.bias"));
            }
            v
        };
        let pooler_name = base("pooler.dense");
        let may_init = move |name: &str| -> bool {
            // The head, and a base model's pooler (absent from MLM checkpoints), may be new.
            let in_base = if task == Task::Base {
                !name.starts_with("pooler.")
            } else {
                name.starts_with(&format!("{prefix}."))
                    && !name.starts_with(&format!("{prefix}.pooler."))
            };
            !in_base
        };
        let mut pb = match &source {
            Source::Random => ParamBuilder::random(),
            Source::Checkpoint(c) => ParamBuilder::from_checkpoint(c, &candidates, &may_init),
        }
        .at(device, dtype)?;
        let (h, v) = (config.hidden_size, config.vocab_size);
        let mut b = Builder {
            pb: &mut pb,
            std: config.initializer_range,
            eps: config.layer_norm_eps,
        };
        let normal = Init::Normal(config.initializer_range);
        let word = b.pb.get(
            &base("embeddings.word_embeddings.weight"),
            &[v as i64, h as i64],
            normal,
        )?;
        let position = b.pb.get(
            &base("embeddings.position_embeddings.weight"),
            &[config.max_position_embeddings as i64, h as i64],
            normal,
        )?;
        let token_type = if config.type_vocab_size > 0 {
            Some(b.pb.get(
                &base("embeddings.token_type_embeddings.weight"),
                &[config.type_vocab_size as i64, h as i64],
                normal,
            )?)
        } else {
            None
        };
        let emb_norm = b.norm(&base("embeddings.LayerNorm"), h)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = base(&format!("encoder.layer.{i}"));
            layers.push(Layer {
                query: b.linear(&format!("{p}.attention.self.query"), h, h)?,
                key: b.linear(&format!("{p}.attention.self.key"), h, h)?,
                value: b.linear(&format!("{p}.attention.self.value"), h, h)?,
                attn_out: b.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: b.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                intermediate: b.linear(
                    &format!("{p}.intermediate.dense"),
                    h,
                    config.intermediate_size,
                )?,
                output: b.linear(&format!("{p}.output.dense"), config.intermediate_size, h)?,
                out_norm: b.norm(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        let labels = config.labels()?;
        let n = labels.len();
        let roberta = config.is_roberta();
        let head = match task {
            Task::Base => Head::Base {
                pooler: Some(b.linear(&pooler_name, h, h)?),
            },
            Task::MaskedLM => {
                let p = if roberta {
                    "lm_head"
                } else {
                    "cls.predictions"
                };
                let (dense, norm) = if roberta {
                    (
                        b.linear("lm_head.dense", h, h)?,
                        b.norm("lm_head.layer_norm", h)?,
                    )
                } else {
                    (
                        b.linear("cls.predictions.transform.dense", h, h)?,
                        b.norm("cls.predictions.transform.LayerNorm", h)?,
                    )
                };
                Head::MaskedLM {
                    dense,
                    norm,
                    bias: b.pb.get(&format!("{p}.bias"), &[v as i64], Init::Zeros)?,
                }
            }
            Task::SequenceClassification if roberta => Head::SequenceClassification {
                pooler: None,
                dense: Some(b.linear("classifier.dense", h, h)?),
                out: b.linear("classifier.out_proj", h, n)?,
            },
            Task::SequenceClassification => Head::SequenceClassification {
                pooler: Some(b.linear(&pooler_name, h, h)?),
                dense: None,
                out: b.linear("classifier", h, n)?,
            },
            Task::TokenClassification => Head::TokenClassification {
                out: b.linear("classifier", h, n)?,
            },
            Task::QuestionAnswering => Head::QuestionAnswering {
                out: b.linear("qa_outputs", h, 2)?,
            },
            Task::CausalLM => unreachable!("rejected above"),
        };
        // Buffers and tied copies of the word embedding are not parameters.
        let ignore = |n: &str| {
            n.ends_with("position_ids")
                || n.ends_with("token_type_ids")
                || n.ends_with("predictions.decoder.weight")
                || n.ends_with("lm_head.decoder.weight")
                || n.ends_with("predictions.decoder.bias")
                || n.ends_with("lm_head.decoder.bias")
        };
        let params = pb.finish(&ignore)?;
        Ok(Bert {
            act: Activation::from_name(&config.hidden_act)?,
            config: config.clone(),
            task,
            params,
            word,
            position,
            token_type,
            emb_norm,
            layers,
            head,
            labels,
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Parameters the checkpoint lacked and that were initialised (a new head).
    pub fn newly_initialised(&self) -> &[String] {
        self.params.newly_initialised()
    }

    fn positions(&self, ids: &Tensor, past: i64) -> Tensor {
        let (b, t) = (ids.size()[0], ids.size()[1]);
        if self.config.is_roberta() {
            // transformers' create_position_ids_from_input_ids: real tokens count from
            // padding_idx + 1, padding stays at padding_idx.
            let pad = self.config.pad_token_id as i64;
            let mask = ids.ne(pad).to_kind(Kind::Int64);
            return mask.cumsum(1, Kind::Int64) * &mask + pad;
        }
        Tensor::arange_start(past, past + t, (Kind::Int64, ids.device()))
            .unsqueeze(0)
            .expand([b, t], false)
    }

    /// The validated forward prologue: shapes and value ranges of every input.
    fn prologue(
        &self,
        input: &ModelInputs<'_>,
    ) -> Result<(Tensor, Tensor, Option<Tensor>, Tensor)> {
        let dev = self.word.device();
        let ids = input
            .input_ids
            .ok_or_else(|| invalid("BERT forward needs input_ids"))?
            .to_device(dev);
        let (b, t) = ids.size2().map_err(|_| {
            invalid(format!(
                "input_ids must be [batch, len], got {:?}",
                ids.size()
            ))
        })?;
        if t == 0 {
            return Err(invalid("input_ids is empty: give at least one token"));
        }
        check_range(
            "input_ids",
            &ids,
            self.config.vocab_size as i64,
            "the tokenizer does not belong to this model",
        )?;
        let shape = [b, t];
        check_same_shape("attention_mask", input.attention_mask, &shape)?;
        check_same_shape("token_type_ids", input.token_type_ids, &shape)?;
        check_same_shape("position_ids", input.position_ids, &shape)?;
        let pos = match input.position_ids {
            Some(p) => p.to_device(dev),
            None => self.positions(&ids, 0),
        };
        check_range(
            "position_ids",
            &pos,
            self.config.max_position_embeddings as i64,
            &format!(
                "this model has {} positions: truncate the input",
                self.config.max_position_embeddings
            ),
        )?;
        let tt = match (input.token_type_ids, &self.token_type) {
            (Some(tt), Some(_)) => {
                let tt = tt.to_device(dev);
                check_range(
                    "token_type_ids",
                    &tt,
                    self.config.type_vocab_size as i64,
                    "this model has fewer segment types",
                )?;
                Some(tt)
            }
            (Some(_), None) => {
                return Err(invalid(format!(
                    "{} takes no token_type_ids",
                    self.config.model_type
                )))
            }
            (None, _) => None,
        };
        let mask = match input.attention_mask {
            Some(m) => m.to_device(dev),
            None => Tensor::ones([b, t], (Kind::Int64, dev)),
        };
        Ok((ids, pos, tt, mask))
    }

    fn encode(&self, input: &ModelInputs<'_>) -> Result<(Tensor, Option<Vec<Tensor>>)> {
        let (ids, pos, tt, mask) = self.prologue(input)?;
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let kind = self.word.kind();
        let train = input.train;
        let mut x = Tensor::embedding(&self.word, &ids, -1, false, false)
            + Tensor::embedding(&self.position, &pos, -1, false, false);
        if let Some(w) = &self.token_type {
            let tt = tt.unwrap_or_else(|| Tensor::zeros([b, t], (Kind::Int64, ids.device())));
            x += Tensor::embedding(w, &tt, -1, false, false);
        }
        let mut x = self
            .emb_norm
            .forward(&x)
            .dropout(self.config.hidden_dropout_prob, train);
        // HF's extended mask: (1 - mask) * finfo(dtype).min added to the scores.
        let min = match kind {
            Kind::BFloat16 => -3.389_531_4e38,
            Kind::Half => -65504.0,
            _ => f32::MIN as f64,
        };
        // Without padding no mask is passed, so libtorch can take its fused (flash) kernel.
        let padded = mask.min().int64_value(&[]) == 0;
        let bias = if padded {
            Some(
                (mask.to_kind(kind).ones_like() - mask.to_kind(kind))
                    .f_mul_scalar(min)?
                    .view([b, 1, 1, t]),
            )
        } else {
            None
        };
        let heads = self.config.num_attention_heads as i64;
        let hd = self.config.hidden_size as i64 / heads;
        let p_attn = if train {
            self.config.attention_probs_dropout_prob
        } else {
            0.0
        };
        let mut hidden = input.output_hidden_states.then(|| vec![x.shallow_clone()]);
        // A sequence classifier reads only the first token of the last layer: that layer's
        // queries, projections and feed-forward run for that token alone (keys and values
        // still see every token), a twelfth of BERT-base's work that gives the same logits.
        let first_only =
            matches!(self.head, Head::SequenceClassification { .. }) && hidden.is_none();
        let last = self.layers.len().saturating_sub(1);
        for (li, l) in self.layers.iter().enumerate() {
            let split = |x: &Tensor, w: &(Tensor, Tensor)| {
                let n = x.size()[1];
                linear(x, w).view([b, n, heads, hd]).transpose(1, 2)
            };
            let (k, v) = (split(&x, &l.key), split(&x, &l.value));
            if first_only && li == last {
                x = x.narrow(1, 0, 1);
            }
            let q = split(&x, &l.query);
            let tq = x.size()[1];
            let ctx = Tensor::f_scaled_dot_product_attention(
                &q,
                &k,
                &v,
                bias.as_ref(),
                p_attn,
                false,
                None,
                false,
            )?
            .transpose(1, 2)
            .reshape([b, tq, heads * hd]);
            let a = linear(&ctx, &l.attn_out).dropout(self.config.hidden_dropout_prob, train);
            let a = l.attn_norm.forward(&(a + &x));
            let i = self.act.forward(&linear(&a, &l.intermediate));
            let o = linear(&i, &l.output).dropout(self.config.hidden_dropout_prob, train);
            x = l.out_norm.forward(&(o + a));
            if let Some(h) = hidden.as_mut() {
                h.push(x.shallow_clone());
            }
        }
        Ok((x, hidden))
    }

    fn run(&self, input: &ModelInputs<'_>) -> Result<ModelOutput> {
        let (seq, hidden_states) = self.encode(input)?;
        let train = input.train;
        let pdrop = self.config.dropout_classifier();
        let mut out = ModelOutput {
            hidden_states,
            ..Default::default()
        };
        let pool = |p: &(Tensor, Tensor)| linear(&seq.select(1, 0), p).tanh();
        match &self.head {
            Head::Base { pooler } => {
                out.pooler_output = pooler.as_ref().map(pool);
            }
            Head::MaskedLM { dense, norm, bias } => {
                // BERT's transform uses hidden_act; RoBERTa's lm_head is fixed to gelu.
                let act = if self.config.is_roberta() {
                    Activation::Gelu
                } else {
                    self.act
                };
                let h = norm.forward(&act.forward(&linear(&seq, dense)));
                let logits = h.linear(&self.word, Some(bias));
                if let Some(labels) = input.labels {
                    out.loss = Some(cross_entropy(&logits, labels)?);
                }
                out.logits = Some(logits);
            }
            Head::SequenceClassification {
                pooler,
                dense,
                out: proj,
            } => {
                let feats = match (pooler, dense) {
                    (Some(p), _) => pool(p).dropout(pdrop, train),
                    (None, Some(d)) => linear(&seq.select(1, 0).dropout(pdrop, train), d)
                        .tanh()
                        .dropout(pdrop, train),
                    (None, None) => unreachable!("a classification head has a pooler or dense"),
                };
                let logits = linear(&feats, proj);
                if let Some(labels) = input.labels {
                    out.loss = Some(self.classification_loss(&logits, labels)?);
                }
                out.logits = Some(logits);
            }
            Head::TokenClassification { out: proj } => {
                let logits = linear(&seq.dropout(pdrop, train), proj);
                if let Some(labels) = input.labels {
                    check_same_shape("labels", Some(labels), &logits.size()[..2])?;
                    out.loss = Some(cross_entropy(&logits, labels)?);
                }
                out.logits = Some(logits);
            }
            Head::QuestionAnswering { out: proj } => {
                let logits = linear(&seq, proj);
                let start = logits.select(2, 0).contiguous();
                let end = logits.select(2, 1).contiguous();
                if let (Some(s), Some(e)) = (input.start_positions, input.end_positions) {
                    // HF: positions outside the sequence are clamped to `len` and ignored.
                    let t = start.size()[1];
                    let ce = |l: &Tensor, p: &Tensor| -> Result<Tensor> {
                        let p = p.to_device(l.device()).reshape([-1]).clamp(0, t);
                        Ok(l.to_kind(Kind::Float).f_cross_entropy_loss::<Tensor>(
                            &p,
                            None,
                            tch::Reduction::Mean,
                            t,
                            0.0,
                        )?)
                    };
                    out.loss = Some((ce(&start, s)? + ce(&end, e)?) / 2.0);
                } else if input.start_positions.is_some() || input.end_positions.is_some() {
                    return Err(invalid(
                        "question answering needs both start_positions and end_positions",
                    ));
                }
                out.start_logits = Some(start);
                out.end_logits = Some(end);
            }
        }
        out.last_hidden_state = Some(seq);
        Ok(out)
    }

    fn classification_loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let labels = labels.to_device(logits.device());
        let n = logits.size()[1];
        let problem = match self.config.problem_type.as_deref() {
            Some(p) => p,
            None if n == 1 => "regression",
            None if matches!(labels.kind(), Kind::Int64 | Kind::Int) => {
                "single_label_classification"
            }
            None => "multi_label_classification",
        };
        let lf = logits.to_kind(Kind::Float);
        Ok(match problem {
            "regression" => lf
                .squeeze()
                .mse_loss(&labels.to_kind(Kind::Float).squeeze(), tch::Reduction::Mean),
            "single_label_classification" => cross_entropy(&lf, &labels)?,
            _ => {
                check_same_shape("labels", Some(&labels), &logits.size())?;
                lf.f_binary_cross_entropy_with_logits::<Tensor>(
                    &labels.to_kind(Kind::Float),
                    None,
                    None,
                    tch::Reduction::Mean,
                )?
            }
        })
    }
}

impl PreTrainedModel for Bert {
    fn model_type(&self) -> &str {
        &self.config.model_type
    }

    fn task(&self) -> Task {
        self.task
    }

    fn config_json(&self) -> serde_json::Value {
        self.config.to_hf_json(self.task)
    }

    fn device(&self) -> tch::Device {
        self.word.device()
    }

    fn to(&mut self, device: Device, dtype: DType) -> Result<()> {
        self.params.to(device, dtype)
    }

    fn num_parameters(&self) -> usize {
        self.params.numel()
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.params.list()
    }

    fn load_weights(&self, ckpt: &SafeTensors) -> Result<()> {
        let ignore = |n: &str| {
            n.ends_with("position_ids")
                || n.ends_with("decoder.weight")
                || n.ends_with("decoder.bias")
        };
        self.params.load(ckpt, &|n| Some(n.to_string()), &ignore)
    }

    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        self.params.save_pretrained(dir, self.config_json())
    }
}

impl TaskModel for Bert {
    fn forward(&self, input: &ModelInputs<'_>) -> Result<ModelOutput> {
        let op = format!(
            "{} forward",
            self.config_json()["architectures"][0]
                .as_str()
                .unwrap_or("BERT")
        );
        mf_core::guard(&op, || self.run(input))
    }

    fn id2label(&self) -> Vec<String> {
        match self.task {
            Task::SequenceClassification | Task::TokenClassification => self.labels.clone(),
            _ => Vec::new(),
        }
    }

    fn multi_label(&self) -> bool {
        self.config.problem_type.as_deref() == Some("multi_label_classification")
    }

    fn max_positions(&self) -> usize {
        self.config.max_positions()
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn uses_token_type_ids(&self) -> bool {
        !self.config.is_roberta()
    }

    fn load_base_weights(&self, ckpt: &SafeTensors) -> Result<Vec<String>> {
        let prefix = self.config.prefix();
        let task = self.task;
        let candidates = |n: &str| prefixed_candidates(n, prefix);
        let may_miss = |n: &str| {
            if task == Task::Base {
                n.starts_with("pooler.")
            } else {
                !n.starts_with(&format!("{prefix}.")) || n.starts_with(&format!("{prefix}.pooler."))
            }
        };
        self.params.load_matching(ckpt, &candidates, &may_miss)
    }
}

macro_rules! head_class {
    ($(#[$doc:meta] $name:ident => $task:expr),* $(,)?) => {$(
        #[$doc]
        pub struct $name;

        impl $name {
            /// A preset name, directory or hub name, on the CPU in f32.
            pub fn from_pretrained(name_or_dir: &str) -> Result<Bert> {
                Bert::from_pretrained(name_or_dir, $task)
            }

            /// A randomly initialised model (or `checkpoint_name_or_path`'s weights).
            // The head classes are names for `Bert` with one head, as transformers' classes
            // are, so `new` returns the shared type.
            #[allow(clippy::new_ret_no_self)]
            pub fn new(config: &BertConfig) -> Result<Bert> {
                Bert::new(config, $task)
            }
        }
    )*};
}

head_class! {
    /// `BertModel`: the encoder and its pooler.
    BertModel => Task::Base,
    /// `BertForMaskedLM`: the encoder and `cls.predictions`.
    BertForMaskedLM => Task::MaskedLM,
    /// `BertForSequenceClassification`: pooler, dropout and `classifier`.
    BertForSequenceClassification => Task::SequenceClassification,
    /// `BertForTokenClassification`: dropout and `classifier` per token.
    BertForTokenClassification => Task::TokenClassification,
    /// `BertForQuestionAnswering`: `qa_outputs` start / end logits.
    BertForQuestionAnswering => Task::QuestionAnswering,
}

head_class! {
    /// `RobertaModel` (also XLM-RoBERTa: the config's `model_type` decides).
    RobertaModel => Task::Base,
    /// `RobertaForMaskedLM`: the encoder and `lm_head`.
    RobertaForMaskedLM => Task::MaskedLM,
    /// `RobertaForSequenceClassification`: `classifier.dense` + `classifier.out_proj` on `<s>`.
    RobertaForSequenceClassification => Task::SequenceClassification,
    /// `RobertaForTokenClassification`.
    RobertaForTokenClassification => Task::TokenClassification,
    /// `RobertaForQuestionAnswering`.
    RobertaForQuestionAnswering => Task::QuestionAnswering,
}

/// The heads this family offers.
const TASKS: &[Task] = &[
    Task::Base,
    Task::MaskedLM,
    Task::SequenceClassification,
    Task::TokenClassification,
    Task::QuestionAnswering,
];

impl crate::auto::FamilyConfig for BertConfig {
    fn family_name() -> &'static str {
        "bert"
    }

    fn model_type(&self) -> &'static str {
        MODEL_TYPES
            .iter()
            .find(|t| **t == self.model_type)
            .copied()
            .unwrap_or("bert")
    }

    // A config alone does not know its head; the headless base model names the architecture.
    fn config_json(&self) -> serde_json::Value {
        self.to_hf_json(Task::Base)
    }

    fn max_positions(&self) -> Option<usize> {
        Some(BertConfig::max_positions(self))
    }

    fn label_names(&self) -> Result<Option<Vec<String>>> {
        if self.id2label.is_empty() {
            Ok(None)
        } else {
            Ok(Some(self.labels()?))
        }
    }

    fn set_labels(&mut self, labels: &[String]) -> Result<()> {
        BertConfig::set_labels(self, labels);
        Ok(())
    }
}

/// The registry entry of this family (see [`crate::auto::FAMILIES`]).
pub const FAMILY: crate::auto::Family = crate::auto::Family {
    name: "bert",
    title: "BERT",
    model_types: MODEL_TYPES,
    presets: crate::presets::BERT,
    parse_preset: |p, origin| {
        let mut c = crate::auto::preset_config(&p.config, origin, |c: &BertConfig| &c.extra)?;
        c.model_type = p.model_type.clone();
        c.hub_repo = p.hub_repo.clone();
        c.validate(origin)?;
        Ok(crate::ModelConfig::new(c))
    },
    parse_json: |v, origin| {
        let c: BertConfig = crate::auto::json_config(v, origin)?;
        c.validate(origin)?;
        Ok(crate::ModelConfig::new(c))
    },
    read_json: |path| Ok(crate::ModelConfig::new(BertConfig::from_json_file(path)?)),
    causal_from_config: None,
    tasks: TASKS,
    load_causal: None,
    load_task: Some(|dir, task, device, dtype| {
        Ok(Box::new(Bert::from_dir(dir, task, device, dtype)?))
    }),
    from_config: Some(|config, task| {
        Ok(Box::new(Bert::new(config.downcast::<BertConfig>()?, task)?))
    }),
    parallel: None,
};
