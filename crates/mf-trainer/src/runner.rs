//! `mf run`: builds the model, tokenizer, datasets and Trainer a [`RunConfig`] describes and
//! runs its mode (train, finetune, eval, predict), for text generation and for the task heads
//! (text / token classification, question answering, masked LM).
use std::io::Write;
use std::path::Path;

use mf_core::checkpoint::SafeTensors;
use mf_core::{invalid, DType, MfError, Result};
use mf_data::nlp::TaskData;
use mf_models::{AutoConfig, AutoModel, CausalLM, GenerationOverrides, ModelConfig, TaskModel};
use mf_pipeline::{CallOptions, PipelineInput};
use mf_tokenizers::{AutoTokenizer, Tokenizer};

use crate::args::TrainingArguments;
use crate::run_config::{DatasetSection, RunConfig};
use crate::tasks::TrainTask;
use crate::trainer::{DatasetArg, TrainOutput, Trainer};

/// Checks a class name from the config (`GPT2Config`, `LlamaForCausalLM`) against the preset's
/// family, so a config that names one family and a preset of another is caught.
fn check_class(field: &str, class: Option<&toml::Value>, model_type: &str) -> Result<()> {
    let Some(class) = class else { return Ok(()) };
    let name = class
        .as_str()
        .ok_or_else(|| invalid(format!("{field} must be a string")))?;
    if name.to_ascii_lowercase().starts_with(model_type) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field} = '{name}' does not belong to the {model_type} family of trainer.model_name; fix one of them"
        )))
    }
}

/// The preset's config with `model_config` keys over it, checked against the class names.
fn model_config(cfg: &RunConfig) -> Result<ModelConfig> {
    let sets: Vec<(String, String)> = cfg
        .model
        .model_config
        .iter()
        .filter(|(k, _)| k.as_str() != "type" && k.as_str() != "pet_config")
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    let config = AutoConfig::from_pretrained_with(&cfg.trainer.model_name, &sets)?;
    let family = config.model_type();
    check_class(
        "model.model_config.type",
        cfg.model.model_config.get("type"),
        family,
    )?;
    check_class("model.arch.type", cfg.model.arch.get("type"), family)?;
    if let Some(k) = cfg.model.arch.keys().find(|k| k.as_str() != "type") {
        return Err(invalid(format!(
            "model.arch.{k}: arch takes only `type`; model settings go in model.model_config"
        )));
    }
    Ok(config)
}

/// The causal LM the config describes: the preset's config with `model_config` keys over it,
/// randomly initialised from `seed`, on the context's device.
pub fn build_model(cfg: &RunConfig) -> Result<Box<dyn CausalLM>> {
    let config = model_config(cfg)?;
    tch::manual_seed(cfg.seed as i64);
    let mut model = AutoModel::from_config(&config)?;
    model.to(cfg.context.device()?, DType::F32)?;
    Ok(model)
}

/// The task model of `config` (the run config's model with its classes settled), randomly
/// initialised from `seed`, on the context's device.
pub fn build_task_model(
    cfg: &RunConfig,
    task: TrainTask,
    config: &ModelConfig,
) -> Result<Box<dyn TaskModel>> {
    tch::manual_seed(cfg.seed as i64);
    let mut model = AutoModel::from_config_task(config, task.head())?;
    model.to(cfg.context.device()?, DType::F32)?;
    Ok(model)
}

/// MindFormers' `model_config.pet_config` (`pet_type = "lora"`, `lora_rank`, `lora_alpha`,
/// `lora_dropout`, `target_modules` as a list of layer names), if present.
pub fn pet_config(cfg: &RunConfig) -> Result<Option<mf_models::LoraConfig>> {
    let Some(v) = cfg.model.model_config.get("pet_config") else {
        return Ok(None);
    };
    let mut t = v
        .as_table()
        .cloned()
        .ok_or_else(|| invalid("model.model_config.pet_config must be a table"))?;
    match t.remove("pet_type").as_ref().and_then(|p| p.as_str()) {
        Some("lora") => {}
        other => {
            return Err(invalid(format!(
            "model.model_config.pet_config.pet_type = {other:?}: the supported method is \"lora\""
        )))
        }
    }
    if t.get("target_modules").is_some_and(|v| v.is_str()) {
        return Err(invalid(
            "pet_config.target_modules: give a list of layer names (e.g. [\"q_proj\", \"v_proj\"]), not a regular expression",
        ));
    }
    let lora: mf_models::LoraConfig = toml::Value::Table(t)
        .try_into()
        .map_err(|e: toml::de::Error| invalid(format!("model.model_config.pet_config: {e}")))?;
    lora.validate()?;
    Ok(Some(lora))
}

/// The tokenizer: `processor.tokenizer.path` (a preset name or directory), else the preset's.
pub fn build_tokenizer(cfg: &RunConfig) -> Result<Tokenizer> {
    let t = &cfg.processor.tokenizer;
    if let Some(k) = t.keys().find(|k| !["type", "path"].contains(&k.as_str())) {
        return Err(invalid(format!(
            "processor.tokenizer.{k}: expected only `type` and `path` (a preset name or a tokenizer directory)"
        )));
    }
    let path = match t.get("path") {
        Some(v) => v
            .as_str()
            .ok_or_else(|| invalid("processor.tokenizer.path must be a string"))?
            .to_string(),
        None => cfg.trainer.model_name.clone(),
    };
    AutoTokenizer::from_pretrained(&path)
}

fn dataset(
    section: &DatasetSection,
    which: &str,
    tokenizer: &Tokenizer,
    model: &dyn CausalLM,
) -> Result<DatasetArg> {
    let l = &section.data_loader;
    let data = match l.kind.as_str() {
        "TokenShards" => {
            if l.dataset_dir.is_empty() {
                return Err(invalid(format!(
                    "{which}.data_loader.dataset_dir is empty: make one with `mf data prepare` and set it (e.g. --set {which}.data_loader.dataset_dir=./train)"
                )));
            }
            mf_data::shards::open(std::path::Path::new(&l.dataset_dir))?
        }
        "TextFiles" => {
            let files = RunConfig::text_files(l)?;
            let seq = l.seq_length.or(model.max_positions()).ok_or_else(|| {
                invalid(format!(
                    "{which}.data_loader.seq_length is needed: this model has no fixed context length"
                ))
            })?;
            let refs: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
            mf_data::corpus::packed_dataset(&refs, tokenizer, seq)?
        }
        other => {
            return Err(invalid(format!(
                "{which}.data_loader.type = '{other}': expected TokenShards (a directory from `mf data prepare`) or TextFiles"
            )))
        }
    };
    Ok(DatasetArg::Unbatched(match section.num_samples {
        Some(n) => data.take(n),
        None => data,
    }))
}

/// A task dataset from `TableFiles` rows: tokenized, with the labels the head's loss reads.
/// Classification labels are `labels` when given (the model's), else taken from the data.
fn task_data(
    section: &DatasetSection,
    which: &str,
    task: TrainTask,
    tokenizer: &Tokenizer,
    labels: Option<&[String]>,
    max_positions: Option<usize>,
) -> Result<TaskData> {
    let l = &section.data_loader;
    l.check_for(task, which)?;
    let mut rows = Vec::new();
    for f in RunConfig::text_files(l)? {
        rows.extend(mf_data::table::read_rows(&f)?);
    }
    if let Some(n) = section.num_samples {
        rows.truncate(n);
    }
    if rows.is_empty() {
        return Err(invalid(format!(
            "{which}: the files {:?} hold no rows",
            l.files
        )));
    }
    let seq = l
        .seq_length
        .unwrap_or(max_positions.unwrap_or(512).min(512));
    if let Some(m) = max_positions.filter(|m| seq > *m) {
        return Err(invalid(format!(
            "{which}.data_loader.seq_length = {seq} exceeds the model's {m} positions"
        )));
    }
    let col = |c: &Option<String>, default: &str| c.clone().unwrap_or_else(|| default.into());
    let data = match task {
        TrainTask::TextClassification => mf_data::nlp::text_classification(
            &rows,
            tokenizer,
            &col(&l.text_column, "text"),
            l.text_pair_column.as_deref(),
            &col(&l.label_column, "label"),
            labels,
            seq,
        ),
        TrainTask::TokenClassification => mf_data::nlp::token_classification(
            &rows,
            tokenizer,
            &col(&l.tokens_column, "tokens"),
            &col(&l.tags_column, "ner_tags"),
            labels,
            seq,
        ),
        TrainTask::QuestionAnswering => {
            let stride = l.doc_stride.unwrap_or(128);
            if stride >= seq {
                return Err(invalid(format!(
                    "{which}.data_loader.doc_stride = {stride} must be below seq_length = {seq}"
                )));
            }
            mf_data::nlp::question_answering(&rows, tokenizer, seq, stride)
        }
        TrainTask::FillMask => {
            mf_data::nlp::masked_lm(&rows, tokenizer, &col(&l.text_column, "text"), seq)
        }
        TrainTask::TextGeneration => {
            return Err(invalid(
                "text_generation reads TokenShards or TextFiles, not TableFiles",
            ))
        }
    };
    data.map_err(|e| invalid(format!("{which}: {e}")))
}

/// Whether the task's head has classes the data names.
fn has_labels(task: TrainTask) -> bool {
    matches!(
        task,
        TrainTask::TextClassification | TrainTask::TokenClassification
    )
}

/// A `--predict-data` item: plain text, or a JSON object `{"question", "context"}` /
/// `{"text", "text_pair"}`.
fn predict_input(task: TrainTask, s: &str) -> Result<PipelineInput> {
    let t = s.trim_start();
    if !t.starts_with('{') {
        if task == TrainTask::QuestionAnswering {
            return Err(invalid(format!(
                "question_answering predict data are JSON objects: --predict-data '{{\"question\": \"...\", \"context\": \"...\"}}', not '{s}'"
            )));
        }
        return Ok(PipelineInput::Text(s.to_string()));
    }
    let v: serde_json::Value = serde_json::from_str(t)
        .map_err(|e| invalid(format!("--predict-data '{s}' is not valid JSON: {e}")))?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    match (field("question"), field("context"), field("text"), field("text_pair")) {
        (Some(question), Some(context), None, None) => Ok(PipelineInput::Qa { question, context }),
        (None, None, Some(text), Some(text_pair)) => Ok(PipelineInput::Pair { text, text_pair }),
        (None, None, Some(text), None) => Ok(PipelineInput::Text(text)),
        _ => Err(invalid(format!(
            "--predict-data '{s}': expected {{\"question\", \"context\"}} or {{\"text\"[, \"text_pair\"]}}"
        ))),
    }
}

/// Where pretrained weights come from for finetune / eval / predict.
fn weights_source(cfg: &RunConfig) -> &str {
    if cfg.load_checkpoint.is_empty() {
        &cfg.trainer.model_name
    } else {
        &cfg.load_checkpoint
    }
}

/// Loads the weights eval / predict run on: the base model, plus the adapters of a LoRA
/// checkpoint when the config has a `pet_config`.
fn load_for_inference(trainer: &mut Trainer, cfg: &RunConfig, lora: bool) -> Result<()> {
    let dir = mf_models::auto::resolve_model_dir(weights_source(cfg))?;
    trainer
        .model_mut()
        .load_weights(&SafeTensors::open(&dir)?)?;
    if lora {
        if !dir.join("adapter_model.safetensors").is_file() {
            return Err(invalid(format!(
                "pet_config is set but {} has no adapter_model.safetensors; point load_checkpoint at a LoRA checkpoint",
                dir.display()
            )));
        }
        mf_models::lora::load_adapter_weights(trainer.model_mut().causal_mut()?, &dir)?;
    }
    Ok(())
}

/// Runs the config's mode, writing a human-readable report to `out`.
pub fn run(cfg: &RunConfig, predict_data: &[String], out: &mut dyn Write) -> Result<()> {
    run_with(cfg, predict_data, None, out)
}

/// [`run`] with `world_size` ranks on the threads backend (`mf run --world-size N`): implies
/// `use_parallel` and fixes the context's device count, which the layout must match.
pub fn run_with(
    cfg: &RunConfig,
    predict_data: &[String],
    world_size: Option<usize>,
    out: &mut dyn Write,
) -> Result<()> {
    let context = mf_core::ContextConfig {
        mode: 0,
        device_target: cfg.context.device_target.clone(),
        device_id: cfg.context.device_id,
        seed: None,
    };
    let parallel = mf_core::ParallelContextConfig {
        parallel_mode: cfg.parallel.mode()?,
        gradients_mean: cfg.parallel.gradients_mean,
        enable_parallel_optimizer: cfg.parallel.enable_parallel_optimizer,
        full_batch: cfg.parallel.full_batch,
        device_num: world_size,
    };
    mf_core::init_context(
        cfg.use_parallel || world_size.is_some(),
        &context,
        Some(&parallel),
    )?;
    let args = cfg.training_arguments()?;
    let tokenizer = build_tokenizer(cfg)?;
    let mode = cfg.run_mode.as_str();
    if mode != "train" && mode != "finetune" && cfg.resume_training {
        return Err(invalid(format!(
            "resume_training applies to train and finetune, not {mode}"
        )));
    }
    let task = cfg.trainer.task()?;
    if task != TrainTask::TextGeneration {
        return run_head(cfg, task, args, tokenizer, predict_data, out);
    }
    let model = build_model(cfg)?;
    let mut train = None;
    let mut eval = None;
    if let Some(d) = &cfg.train_dataset {
        train = Some(dataset(d, "train_dataset", &tokenizer, model.as_ref())?);
    }
    if let Some(d) = &cfg.eval_dataset {
        eval = Some(dataset(d, "eval_dataset", &tokenizer, model.as_ref())?);
    }
    let mut trainer = Trainer::new("text_generation", model, args.clone())?.tokenizer(tokenizer);
    let lora = pet_config(cfg)?;
    if cfg.metric.as_ref().is_some_and(|m| m.kind == "Accuracy") {
        trainer = trainer.compute_metrics(crate::metrics::accuracy);
    }
    trainer.set_parallel_config(cfg.parallel_config.clone())?;
    trainer.set_recompute_config(cfg.recompute_config.clone())?;
    if let Some(e) = eval {
        trainer = trainer.eval_dataset(e)?;
    }
    if let Some(l) = &lora {
        trainer = trainer.lora(l)?;
    }
    match mode {
        "train" | "finetune" => {
            let data = train.ok_or_else(|| {
                invalid(format!("run_mode {mode} needs a [train_dataset] section"))
            })?;
            trainer = trainer.train_dataset(data)?;
            let result = train_or_finetune(&mut trainer, cfg, mode)?;
            report_train(mode, &result, &args.output_dir, out)?;
        }
        "eval" => {
            load_for_inference(&mut trainer, cfg, lora.is_some())?;
            report_eval(&mut trainer, out)?;
        }
        "predict" => {
            if predict_data.is_empty() {
                return Err(invalid(
                    "run_mode predict needs input text: --predict-data \"An increasing sequence: one,\"",
                ));
            }
            load_for_inference(&mut trainer, cfg, lora.is_some())?;
            for text in trainer.predict(predict_data, &GenerationOverrides::default())? {
                writeln!(out, "{text}").map_err(io)?;
            }
        }
        other => return Err(invalid(format!("run_mode '{other}' is not supported"))),
    }
    Ok(())
}

fn io(e: std::io::Error) -> MfError {
    MfError::Io {
        path: "stdout".into(),
        source: e,
    }
}

/// `train` (from scratch, or from `load_checkpoint`'s whole model) or `finetune` (a base
/// checkpoint into this model; a new head keeps its initialisation); a resume takes
/// everything from its checkpoint instead.
fn train_or_finetune(trainer: &mut Trainer, cfg: &RunConfig, mode: &str) -> Result<TrainOutput> {
    let resuming = trainer.args().resume_from_checkpoint.is_some();
    if mode == "finetune" && !resuming {
        return trainer.finetune(weights_source(cfg));
    }
    if mode == "train" && !cfg.load_checkpoint.is_empty() && !resuming {
        let dir = mf_models::auto::resolve_model_dir(&cfg.load_checkpoint)?;
        trainer
            .model_mut()
            .load_weights(&SafeTensors::open(&dir)?)?;
    }
    trainer.train()
}

/// Prints what training did: steps, the last checkpoint, the metrics file and the plot.
fn report_train(
    mode: &str,
    result: &TrainOutput,
    output_dir: &str,
    out: &mut dyn Write,
) -> Result<()> {
    writeln!(
        out,
        "{mode}: {} steps done{}",
        result.global_step,
        if result.stopped_early {
            " (stopped early)"
        } else {
            ""
        }
    )
    .map_err(io)?;
    if let Some(c) = &result.last_checkpoint {
        writeln!(out, "checkpoint: {}", c.display()).map_err(io)?;
    }
    let metrics = Path::new(output_dir).join("metrics.jsonl");
    writeln!(out, "metrics: {}", metrics.display()).map_err(io)?;
    if let Some(p) = &result.plot {
        writeln!(out, "plot: {}", p.display()).map_err(io)?;
    }
    Ok(())
}

/// Evaluates and prints the metrics as one JSON object.
fn report_eval(trainer: &mut Trainer, out: &mut dyn Write) -> Result<()> {
    let m = trainer.evaluate()?;
    let mut v = serde_json::json!({"eval_loss": m.eval_loss, "perplexity": m.perplexity, "batches": m.batches});
    for (k, x) in &m.metrics {
        v[k] = serde_json::json!(x);
    }
    writeln!(out, "{v}").map_err(io)
}

/// `mf run` for the task heads: the model's classes come from the training data (as
/// transformers' example scripts take them) unless the preset or `model_config` names them;
/// eval and predict load the trained model with its own config, so its label ids hold.
fn run_head(
    cfg: &RunConfig,
    task: TrainTask,
    args: TrainingArguments,
    tokenizer: Tokenizer,
    predict_data: &[String],
    out: &mut dyn Write,
) -> Result<()> {
    if pet_config(cfg)?.is_some() {
        return Err(invalid(format!(
            "model.model_config.pet_config: LoRA fine-tuning applies to text_generation, not {}",
            task.name()
        )));
    }
    let mode = cfg.run_mode.as_str();
    let device = cfg.context.device()?;
    let trained =
        || mf_models::auto::load_task_model(weights_source(cfg), task.head(), device, DType::F32);
    let eval_data = |tok: &Tokenizer, labels: Option<&[String]>, max: Option<usize>| {
        cfg.eval_dataset
            .as_ref()
            .map(|d| task_data(d, "eval_dataset", task, tok, labels, max))
            .transpose()
    };
    match mode {
        "train" | "finetune" => {
            let mut config = model_config(cfg)?;
            let preset_labels = config.label_names()?;
            let max = config.max_positions();
            let section = cfg.train_dataset.as_ref().ok_or_else(|| {
                invalid(format!("run_mode {mode} needs a [train_dataset] section"))
            })?;
            let train = task_data(
                section,
                "train_dataset",
                task,
                &tokenizer,
                preset_labels.as_deref(),
                max,
            )?;
            let labels = has_labels(task).then(|| train.labels.clone());
            if let Some(l) = &labels {
                config.set_labels(l)?;
            }
            let eval = eval_data(&tokenizer, labels.as_deref(), max)?;
            let model = build_task_model(cfg, task, &config)?;
            let mut trainer = Trainer::new(task.name(), model, args.clone())?
                .tokenizer(tokenizer)
                .train_dataset(train)?;
            if let Some(e) = eval {
                trainer = trainer.eval_dataset(e)?;
            }
            trainer.set_parallel_config(cfg.parallel_config.clone())?;
            trainer.set_recompute_config(cfg.recompute_config.clone())?;
            let result = train_or_finetune(&mut trainer, cfg, mode)?;
            report_train(mode, &result, &args.output_dir, out)
        }
        "eval" => {
            let model = trained()?;
            let labels = has_labels(task).then(|| model.id2label());
            let eval = eval_data(&tokenizer, labels.as_deref(), Some(model.max_positions()))?
                .ok_or_else(|| invalid("run_mode eval needs an [eval_dataset] section"))?;
            let mut trainer = Trainer::new(task.name(), model, args)?
                .tokenizer(tokenizer)
                .eval_dataset(eval)?;
            report_eval(&mut trainer, out)
        }
        "predict" => {
            if predict_data.is_empty() {
                return Err(invalid(format!(
                    "run_mode predict needs inputs for {}: --predict-data TEXT (question_answering: a JSON object with question and context)",
                    task.name()
                )));
            }
            let inputs = predict_data
                .iter()
                .map(|s| predict_input(task, s))
                .collect::<Result<Vec<_>>>()?;
            let model = trained()?;
            let pipe = mf_pipeline::pipeline(task.name())
                .model(model)
                .tokenizer(tokenizer)
                .build_task()?;
            for v in pipe.run(&inputs, &CallOptions::default())? {
                writeln!(out, "{v}").map_err(io)?;
            }
            Ok(())
        }
        other => Err(invalid(format!("run_mode '{other}' is not supported"))),
    }
}
