//! Beam search with transformers' (5.x) semantics: keep `2·num_beams` candidates per step,
//! continue the best unfinished `num_beams`, collect finished hypotheses scored by
//! `sum_logprobs / generated_len^length_penalty`, and stop when no running beam can beat the
//! worst finished one.
use mf_core::{MfError, Result};
use tch::{Kind, Tensor};

use super::{check_length, left_pad, logits, step_logits, GenerationConfig, Streamer};
use crate::model::CausalLM;

const NEG: f32 = -1.0e9;

#[derive(Clone)]
struct Hyp {
    score: f32,
    tokens: Vec<u32>,
    finished: bool,
}

fn sort_desc<T>(v: &mut [T], key: impl Fn(&T) -> f32) {
    v.sort_by(|a, b| {
        key(b)
            .partial_cmp(&key(a))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
}

pub(super) fn beam_search(
    model: &dyn CausalLM,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    pad: u32,
    streamer: Option<&mut (dyn Streamer + '_)>,
) -> Result<Vec<Vec<u32>>> {
    let dev = model.device();
    let (bsz, k) = (prompts.len(), cfg.num_beams);
    let batch = left_pad(prompts, pad, dev);
    let prompt_len = batch.len;
    let max_length = prompt_len + cfg.new_tokens(prompt_len)?;
    check_length(model, max_length)?;
    let vocab = model.vocab_size() as i64;
    let keep = 2usize.max(1 + cfg.eos_token_id.len()) * k;
    if keep as i64 > k as i64 * vocab {
        return Err(mf_core::invalid(format!(
            "num_beams {k} is too large for a vocabulary of {vocab}"
        )));
    }
    let rep = |t: &Tensor| t.repeat_interleave_self_int(k as i64, Some(0), None);
    let (mut mask, mut positions, mut ids) =
        (rep(&batch.mask), rep(&batch.positions), rep(&batch.ids));
    let (mut step_ids, mut step_pos) = (ids.shallow_clone(), positions.shallow_clone());
    let mut cache = cfg.use_past.then(|| model.new_cache(max_length));

    let mut running: Vec<Vec<u32>> = vec![Vec::new(); bsz * k];
    let mut running_scores: Vec<f32> = (0..bsz * k)
        .map(|i| if i % k == 0 { 0.0 } else { NEG })
        .collect();
    let empty = Hyp {
        score: NEG,
        tokens: Vec::new(),
        finished: false,
    };
    let mut done: Vec<Vec<Hyp>> = vec![vec![empty; k]; bsz];
    let mut improvable = vec![true; bsz];

    for cur_len in prompt_len..max_length {
        let scores = if cache.is_some() {
            step_logits(
                model,
                cache.as_mut(),
                &step_ids,
                Some(&mask),
                Some(&step_pos),
            )?
        } else {
            step_logits(model, None, &ids, Some(&mask), Some(&positions))?
        };
        let logp = scores.log_softmax(-1, Kind::Float);
        let history: Vec<Vec<u32>> = (0..bsz * k)
            .map(|r| prompts[r / k].iter().chain(&running[r]).copied().collect())
            .collect();
        let logp = logits::repetition_penalty(&logp, &history, cfg.repetition_penalty);
        let run = Tensor::from_slice(&running_scores)
            .to_device(dev)
            .unsqueeze(1);
        let acc = (logp + run).reshape([bsz as i64, k as i64 * vocab]);
        let (vals, idx) = acc.topk(keep as i64, -1, true, true);
        let vals =
            Vec::<Vec<f32>>::try_from(vals.to_device(tch::Device::Cpu)).map_err(MfError::from)?;
        let idx =
            Vec::<Vec<i64>>::try_from(idx.to_device(tch::Device::Cpu)).map_err(MfError::from)?;

        let gen_len = (cur_len + 1 - prompt_len) as f32;
        let mut all_hit = true;
        let mut next_running = Vec::with_capacity(bsz * k);
        let mut next_scores = Vec::with_capacity(bsz * k);
        let mut beam_rows = Vec::with_capacity(bsz * k);
        let mut next_tokens = Vec::with_capacity(bsz * k);
        for b in 0..bsz {
            let mut cands = Vec::with_capacity(keep);
            for j in 0..keep {
                let (beam, tok) = ((idx[b][j] / vocab) as usize, (idx[b][j] % vocab) as u32);
                let hit = cfg.eos_token_id.contains(&tok) || cur_len + 1 >= max_length;
                all_hit &= hit;
                cands.push((j, b * k + beam, tok, vals[b][j], hit));
            }
            let full = cfg.early_stopping && done[b].iter().all(|h| h.finished);
            let mut merged = std::mem::take(&mut done[b]);
            for &(j, row, tok, score, hit) in &cands {
                let just_finished = hit && j < k;
                let mut s = score / gen_len.powf(cfg.length_penalty as f32);
                if full {
                    s += NEG;
                }
                if !improvable[b] {
                    s += NEG;
                }
                if !just_finished {
                    s += NEG;
                }
                let mut tokens = running[row].clone();
                tokens.push(tok);
                merged.push(Hyp {
                    score: s,
                    tokens,
                    finished: just_finished,
                });
            }
            sort_desc(&mut merged, |h| h.score);
            merged.truncate(k);
            done[b] = merged;

            let mut alive: Vec<(usize, u32, f32)> = cands
                .iter()
                .map(|&(_, row, tok, score, hit)| (row, tok, if hit { score + NEG } else { score }))
                .collect();
            sort_desc(&mut alive, |c| c.2);
            for &(row, tok, score) in alive.iter().take(k) {
                let mut t = running[row].clone();
                t.push(tok);
                next_running.push(t);
                next_scores.push(score);
                beam_rows.push(row as i64);
                next_tokens.push(tok as i64);
            }
        }
        running = next_running;
        running_scores = next_scores;

        let sel = Tensor::from_slice(&beam_rows).to_device(dev);
        if let Some(c) = cache.as_mut() {
            c.reorder_cache(&sel);
        }
        let n = (bsz * k) as i64;
        step_ids = Tensor::from_slice(&next_tokens)
            .reshape([n, 1])
            .to_device(dev);
        positions = positions.index_select(0, &sel);
        step_pos = positions.narrow(1, positions.size()[1] - 1, 1) + 1;
        positions = Tensor::cat(&[&positions, &step_pos], 1);
        mask = Tensor::cat(
            &[
                &mask.index_select(0, &sel),
                &Tensor::ones([n, 1], (Kind::Int64, dev)),
            ],
            1,
        );
        if cache.is_none() {
            ids = Tensor::cat(&[&ids.index_select(0, &sel), &step_ids], 1);
        }

        let best_len = (cur_len + 1 - prompt_len) as f32;
        for b in 0..bsz {
            let best = running_scores[b * k] / best_len.powf(cfg.length_penalty as f32);
            let worst = done[b]
                .iter()
                .map(|h| h.score)
                .fold(f32::INFINITY, f32::min);
            let beats = done[b]
                .iter()
                .any(|h| best > if h.finished { worst } else { NEG });
            improvable[b] &= beats;
        }
        let open = !(cfg.early_stopping && done.iter().flatten().all(|h| h.finished));
        if !(improvable.iter().any(|&i| i) && open && !all_hit) {
            break;
        }
    }
    let out: Vec<Vec<u32>> = prompts
        .iter()
        .zip(&done)
        .map(|(p, hyps)| p.iter().chain(&hyps[0].tokens).copied().collect())
        .collect();
    if let Some(s) = streamer {
        // Beams are only known at the end; the winning continuation is streamed then.
        for (row, hyps) in done.iter().enumerate() {
            for &t in &hyps[0].tokens {
                s.put(row, t);
            }
        }
    }
    Ok(out)
}
