//! Text generation over any [`CausalLM`]: greedy, seeded sampling and beam search, batched
//! prompts with left padding, per-row stop at eos, KV cache, streaming.
mod beam;
pub mod config;
pub mod logits;
pub mod streamer;

pub use config::{GenerationConfig, GenerationOverrides};
pub use streamer::{ChannelStreamer, Streamer, TextStreamer};

use mf_core::{invalid, Result};
use rand::{Rng, SeedableRng};
use tch::{Kind, Tensor};

use crate::model::{CausalLM, ForwardInput};

/// A left-padded batch: ids, attention mask and position ids `[batch, len]`.
pub(crate) struct Batch {
    pub ids: Tensor,
    pub mask: Tensor,
    pub positions: Tensor,
    pub len: usize,
}

/// Left-pads prompts and computes positions as transformers 5 does (`cumsum(mask) - 1`, pads 0).
pub(crate) fn left_pad(prompts: &[Vec<u32>], pad: u32, device: tch::Device) -> Batch {
    let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * len);
    let mut mask = Vec::with_capacity(prompts.len() * len);
    for p in prompts {
        let n = len - p.len();
        ids.extend(std::iter::repeat_n(pad as i64, n).chain(p.iter().map(|&t| t as i64)));
        mask.extend(std::iter::repeat_n(0i64, n).chain(std::iter::repeat_n(1, p.len())));
    }
    let shape = [prompts.len() as i64, len as i64];
    let ids = Tensor::from_slice(&ids).reshape(shape).to_device(device);
    let mask = Tensor::from_slice(&mask).reshape(shape).to_device(device);
    let positions = (mask.cumsum(-1, Kind::Int64) - 1).clamp_min(0);
    Batch {
        ids,
        mask,
        positions,
        len,
    }
}

pub(crate) fn check_prompts(
    model: &dyn CausalLM,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
) -> Result<u32> {
    cfg.validate()?;
    if prompts.is_empty() {
        return Err(invalid("no prompts given"));
    }
    if prompts.iter().any(Vec::is_empty) {
        return Err(invalid(
            "a prompt is empty; give at least one token (e.g. the bos token)",
        ));
    }
    let vocab = model.vocab_size() as u32;
    if let Some(bad) = prompts.iter().flatten().find(|&&t| t >= vocab) {
        return Err(invalid(format!(
            "prompt token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let pad = cfg
        .pad_token_id
        .or_else(|| cfg.eos_token_id.first().copied())
        .unwrap_or(0);
    Ok(pad)
}

/// Generates continuations of `prompts` (token ids, unpadded). Returns, per prompt, the prompt
/// followed by the generated ids, ending at the first eos (included) or the length limit.
pub fn generate(
    model: &dyn CausalLM,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    mut streamer: Option<&mut dyn Streamer>,
) -> Result<Vec<Vec<u32>>> {
    let pad = check_prompts(model, prompts, cfg)?;
    let _guard = tch::no_grad_guard();
    let out = if cfg.num_beams > 1 {
        beam::beam_search(model, prompts, cfg, pad, streamer.as_deref_mut())?
    } else {
        sample_or_greedy(model, prompts, cfg, pad, streamer.as_deref_mut())?
    };
    if let Some(s) = streamer {
        s.end();
    }
    Ok(out)
}

/// Logits of the last position for every row, as f32 `[batch, vocab]`. `mask`/`positions`
/// may be `None` when no row is padded (the model then uses its faster causal path).
pub(crate) fn step_logits(
    model: &dyn CausalLM,
    cache: Option<&mut crate::layers::KvCache>,
    ids: &Tensor,
    mask: Option<&Tensor>,
    positions: Option<&Tensor>,
) -> Result<Tensor> {
    let logits = model.forward(
        &ForwardInput {
            input_ids: Some(ids),
            attention_mask: mask,
            position_ids: positions,
            train: false,
            last_only: true,
        },
        cache,
    )?;
    let t = logits.size()[1];
    Ok(logits.select(1, t - 1).to_kind(Kind::Float))
}

fn check_length(model: &dyn CausalLM, total: usize) -> Result<()> {
    if let Some(maxp) = model.max_positions() {
        if total > maxp {
            return Err(invalid(format!(
                "prompt + new tokens = {total} exceeds the model's {maxp} positions; lower \
                 max_length/max_new_tokens"
            )));
        }
    }
    Ok(())
}

fn sample_or_greedy(
    model: &dyn CausalLM,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    pad: u32,
    mut streamer: Option<&mut (dyn Streamer + '_)>,
) -> Result<Vec<Vec<u32>>> {
    let dev = model.device();
    let b = prompts.len();
    let batch = left_pad(prompts, pad, dev);
    let new_tokens = cfg.new_tokens(batch.len)?;
    check_length(model, batch.len + new_tokens)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed.unwrap_or_else(rand::random));
    let mut cache = cfg
        .use_past
        .then(|| model.new_cache(batch.len + new_tokens));
    // Without padding, positions and masking are implied and the causal fast path applies.
    let padded = prompts.iter().any(|p| p.len() != batch.len);
    let mut history: Vec<Vec<u32>> = prompts.to_vec();
    let mut finished = vec![false; b];
    let (mut ids, mut mask, mut positions) = (batch.ids, batch.mask, batch.positions);
    let mut step_ids = ids.shallow_clone();
    let mut step_pos = positions.shallow_clone();
    for _ in 0..new_tokens {
        let scores = match (cache.is_some(), padded) {
            (true, true) => step_logits(
                model,
                cache.as_mut(),
                &step_ids,
                Some(&mask),
                Some(&step_pos),
            )?,
            (true, false) => step_logits(model, cache.as_mut(), &step_ids, None, None)?,
            (false, true) => step_logits(model, None, &ids, Some(&mask), Some(&positions))?,
            (false, false) => step_logits(model, None, &ids, None, None)?,
        };
        let scores = logits::repetition_penalty(&scores, &history, cfg.repetition_penalty);
        let next: Vec<u32> = if cfg.do_sample {
            let s = scores / cfg.temperature;
            let s = logits::top_k(&s, cfg.top_k);
            let s = logits::top_p(&s, cfg.top_p);
            let probs =
                Vec::<Vec<f32>>::try_from(s.softmax(-1, Kind::Float).to_device(tch::Device::Cpu))
                    .map_err(mf_core::MfError::from)?;
            probs.iter().map(|p| sample(p, &mut rng)).collect()
        } else {
            Vec::<i64>::try_from(scores.argmax(-1, false).to_device(tch::Device::Cpu))
                .map_err(mf_core::MfError::from)?
                .into_iter()
                .map(|t| t as u32)
                .collect()
        };
        let mut step: Vec<i64> = Vec::with_capacity(b);
        for (row, &tok) in next.iter().enumerate() {
            if finished[row] {
                step.push(pad as i64);
                continue;
            }
            step.push(tok as i64);
            history[row].push(tok);
            if let Some(s) = streamer.as_deref_mut() {
                s.put(row, tok);
            }
            if cfg.eos_token_id.contains(&tok) {
                finished[row] = true;
            }
        }
        step_ids = Tensor::from_slice(&step)
            .reshape([b as i64, 1])
            .to_device(dev);
        step_pos = positions.narrow(1, positions.size()[1] - 1, 1) + 1;
        mask = Tensor::cat(
            &[&mask, &Tensor::ones([b as i64, 1], (Kind::Int64, dev))],
            1,
        );
        if cache.is_none() {
            ids = Tensor::cat(&[&ids, &step_ids], 1);
        }
        positions = Tensor::cat(&[&positions, &step_pos], 1);
        if finished.iter().all(|&f| f) {
            break;
        }
    }
    Ok(history)
}

/// Draws an index from a probability vector.
fn sample(probs: &[f32], rng: &mut impl Rng) -> u32 {
    let total: f64 = probs.iter().map(|&p| p as f64).sum();
    let mut u = rng.random::<f64>() * total;
    let mut last = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            last = i;
            u -= p as f64;
            if u < 0.0 {
                return i as u32;
            }
        }
    }
    last as u32
}
