//! A tokenizer over the `tokenizers` crate with Hugging Face `PreTrainedTokenizer` semantics:
//! special tokens, bos/eos insertion, truncation and padding, decoding.
use std::path::Path;

use mf_core::{invalid, MfError, Result};
use serde::Deserialize;

use crate::encoding::BatchEncoding;

/// Which side padding (and truncation) applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingSide {
    /// Pad after the text (the default for training).
    #[default]
    Right,
    /// Pad before the text (what batched generation needs).
    Left,
}

impl std::str::FromStr for PaddingSide {
    type Err = MfError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "right" => Ok(PaddingSide::Right),
            "left" => Ok(PaddingSide::Left),
            _ => Err(invalid(format!(
                "padding side '{s}': expected left or right"
            ))),
        }
    }
}

/// How a batch is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// No padding; rows keep their own length.
    #[default]
    None,
    /// Pad to the longest row.
    Longest,
    /// Pad every row to `max_length`.
    MaxLength,
}

/// Per-call options, mirroring `tokenizer(text, padding=..., truncation=..., max_length=...)`.
#[derive(Debug, Clone, Default)]
pub struct EncodeOptions {
    /// Padding strategy.
    pub padding: Padding,
    /// Cut rows longer than `max_length`.
    pub truncation: bool,
    /// Length for `Padding::MaxLength` and truncation; defaults to `model_max_length`.
    pub max_length: Option<usize>,
    /// Insert bos/eos per the tokenizer's `add_bos_token`/`add_eos_token` (default true).
    pub skip_special_tokens_insertion: bool,
    /// Overrides the tokenizer's padding side for this call.
    pub padding_side: Option<PaddingSide>,
}

/// A text tokenizer with its special tokens and defaults.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence token, if any.
    pub bos_token: Option<String>,
    /// End-of-sequence token, if any.
    pub eos_token: Option<String>,
    /// Padding token, if any.
    pub pad_token: Option<String>,
    /// Unknown-token, if any.
    pub unk_token: Option<String>,
    /// Prepend `bos_token` when encoding.
    pub add_bos_token: bool,
    /// Append `eos_token` when encoding.
    pub add_eos_token: bool,
    /// Default padding side.
    pub padding_side: PaddingSide,
    /// Longest input the model accepts; the default `max_length`.
    pub model_max_length: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("pad_token", &self.pad_token)
            .field("padding_side", &self.padding_side)
            .finish()
    }
}

/// The subset of `tokenizer_config.json` / `special_tokens_map.json` that is read.
#[derive(Debug, Default, Deserialize)]
struct TokenizerConfigFile {
    #[serde(default, deserialize_with = "token_field")]
    bos_token: Option<String>,
    #[serde(default, deserialize_with = "token_field")]
    eos_token: Option<String>,
    #[serde(default, deserialize_with = "token_field")]
    pad_token: Option<String>,
    #[serde(default, deserialize_with = "token_field")]
    unk_token: Option<String>,
    add_bos_token: Option<bool>,
    add_eos_token: Option<bool>,
    padding_side: Option<String>,
    model_max_length: Option<f64>,
}

/// Special tokens are either a string or an `AddedToken` object with a `content` field.
fn token_field<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Tok {
        S(String),
        O { content: String },
    }
    Ok(Option::<Tok>::deserialize(d)?.map(|t| match t {
        Tok::S(s) => s,
        Tok::O { content } => content,
    }))
}

impl Tokenizer {
    /// Wraps a `tokenizers` tokenizer with no special tokens configured.
    pub fn new(inner: tokenizers::Tokenizer) -> Self {
        Tokenizer {
            inner,
            bos_token: None,
            eos_token: None,
            pad_token: None,
            unk_token: None,
            add_bos_token: false,
            add_eos_token: false,
            padding_side: PaddingSide::Right,
            model_max_length: usize::MAX,
        }
    }

    /// Loads a Hugging Face tokenizer directory: `tokenizer.json` (any model), or GPT-2's
    /// `vocab.json` + `merges.txt`, plus `tokenizer_config.json`/`special_tokens_map.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut tok = if dir.join("tokenizer.json").is_file() {
            let path = dir.join("tokenizer.json");
            let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| {
                MfError::Tokenizer(format!("{}: malformed tokenizer.json: {e}", path.display()))
            })?;
            Tokenizer::new(inner)
        } else if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file() {
            crate::gpt2::GPT2Tokenizer::from_files(dir.join("vocab.json"), dir.join("merges.txt"))?
        } else {
            return Err(MfError::NotFound(format!(
                "{}: no tokenizer.json (or vocab.json + merges.txt) in this directory",
                dir.display()
            )));
        };
        for file in ["special_tokens_map.json", "tokenizer_config.json"] {
            let path = dir.join(file);
            if path.is_file() {
                let text = std::fs::read_to_string(&path).map_err(|e| MfError::io(&path, e))?;
                let cfg: TokenizerConfigFile = serde_json::from_str(&text)
                    .map_err(|e| MfError::config(path.display(), e.to_string()))?;
                tok.apply_config(cfg)?;
            }
        }
        Ok(tok)
    }

    fn apply_config(&mut self, cfg: TokenizerConfigFile) -> Result<()> {
        if cfg.bos_token.is_some() {
            self.bos_token = cfg.bos_token;
        }
        if cfg.eos_token.is_some() {
            self.eos_token = cfg.eos_token;
        }
        if cfg.pad_token.is_some() {
            self.pad_token = cfg.pad_token;
        }
        if cfg.unk_token.is_some() {
            self.unk_token = cfg.unk_token;
        }
        if let Some(b) = cfg.add_bos_token {
            self.add_bos_token = b;
        }
        if let Some(b) = cfg.add_eos_token {
            self.add_eos_token = b;
        }
        if let Some(side) = cfg.padding_side {
            self.padding_side = side.parse()?;
        }
        if let Some(m) = cfg.model_max_length {
            // transformers writes 1e30 for "no limit".
            self.model_max_length = if m >= usize::MAX as f64 {
                usize::MAX
            } else {
                m as usize
            };
        }
        // Special tokens must never be split by the model's pre-tokenizer.
        let specials: Vec<tokenizers::AddedToken> = [
            &self.bos_token,
            &self.eos_token,
            &self.pad_token,
            &self.unk_token,
        ]
        .into_iter()
        .flatten()
        .map(|t| tokenizers::AddedToken::from(t.clone(), true))
        .collect();
        self.inner.add_special_tokens(&specials);
        Ok(())
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    fn special_id(&self, tok: &Option<String>) -> Option<u32> {
        tok.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// Id of the bos token.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.special_id(&self.bos_token)
    }

    /// Id of the eos token.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.special_id(&self.eos_token)
    }

    /// Id of the pad token.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.special_id(&self.pad_token)
    }

    /// Sets the special tokens, registering them so they are never split.
    pub fn set_special_tokens(
        &mut self,
        bos: Option<&str>,
        eos: Option<&str>,
        pad: Option<&str>,
        unk: Option<&str>,
    ) {
        let cfg = TokenizerConfigFile {
            bos_token: bos.map(String::from),
            eos_token: eos.map(String::from),
            pad_token: pad.map(String::from),
            unk_token: unk.map(String::from),
            ..Default::default()
        };
        // Only special tokens are set, so this cannot fail on padding_side parsing.
        let _ = self.apply_config(cfg);
    }

    /// Tokenizes one text: `tok.encode("hello!")` prints `{'input_ids': [31373, 0], ...}`.
    pub fn encode(&self, text: &str) -> Result<BatchEncoding> {
        let mut enc = self.encode_batch(&[text], &EncodeOptions::default())?;
        enc.batched = false;
        Ok(enc)
    }

    /// Token ids of one text without special-token insertion, padding or truncation.
    pub fn encode_ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| MfError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokenizes a batch with padding/truncation options.
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        opts: &EncodeOptions,
    ) -> Result<BatchEncoding> {
        let max_length = opts.max_length.unwrap_or(self.model_max_length);
        if max_length == 0 {
            return Err(invalid("max_length must be at least 1"));
        }
        if opts.padding == Padding::MaxLength && max_length == usize::MAX {
            return Err(invalid(
                "padding to max_length needs max_length (this tokenizer has no model_max_length)",
            ));
        }
        let side = opts.padding_side.unwrap_or(self.padding_side);
        let inputs: Vec<&str> = texts.iter().map(|t| t.as_ref()).collect();
        let encs = self
            .inner
            .encode_batch_fast(inputs, false)
            .map_err(|e| MfError::Tokenizer(e.to_string()))?;
        let mut rows: Vec<Vec<u32>> = Vec::with_capacity(encs.len());
        for enc in &encs {
            let mut ids = Vec::with_capacity(enc.len() + 2);
            if !opts.skip_special_tokens_insertion && self.add_bos_token {
                ids.push(self.bos_token_id().ok_or_else(|| {
                    invalid("add_bos_token is set but bos_token is not in the vocabulary")
                })?);
            }
            ids.extend_from_slice(enc.get_ids());
            if !opts.skip_special_tokens_insertion && self.add_eos_token {
                ids.push(self.eos_token_id().ok_or_else(|| {
                    invalid("add_eos_token is set but eos_token is not in the vocabulary")
                })?);
            }
            if opts.truncation && ids.len() > max_length {
                match side {
                    PaddingSide::Right => ids.truncate(max_length),
                    PaddingSide::Left => {
                        ids.drain(..ids.len() - max_length);
                    }
                }
            }
            rows.push(ids);
        }
        let target = match opts.padding {
            Padding::None => None,
            Padding::Longest => Some(rows.iter().map(|r| r.len()).max().unwrap_or(0)),
            Padding::MaxLength => {
                Some(max_length.max(rows.iter().map(|r| r.len()).max().unwrap_or(0)))
            }
        };
        let mut masks: Vec<Vec<u32>> = rows.iter().map(|r| vec![1; r.len()]).collect();
        if let Some(target) = target {
            let pad = self.pad_token_id().ok_or_else(|| {
                invalid("padding requested but the tokenizer has no pad_token; set one with set_special_tokens")
            })?;
            for (ids, mask) in rows.iter_mut().zip(masks.iter_mut()) {
                let n = target - ids.len();
                match side {
                    PaddingSide::Right => {
                        ids.extend(std::iter::repeat_n(pad, n));
                        mask.extend(std::iter::repeat_n(0, n));
                    }
                    PaddingSide::Left => {
                        ids.splice(0..0, std::iter::repeat_n(pad, n));
                        mask.splice(0..0, std::iter::repeat_n(0, n));
                    }
                }
            }
        }
        let token_type_ids = rows.iter().map(|r| vec![0; r.len()]).collect();
        Ok(BatchEncoding {
            input_ids: rows,
            token_type_ids,
            attention_mask: masks,
            batched: true,
        })
    }

    /// Turns ids back into text.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| MfError::Tokenizer(e.to_string()))
    }

    /// Decodes every row.
    pub fn batch_decode<R: AsRef<[u32]>>(
        &self,
        rows: &[R],
        skip_special_tokens: bool,
    ) -> Result<Vec<String>> {
        rows.iter()
            .map(|r| self.decode(r.as_ref(), skip_special_tokens))
            .collect()
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` so HF `AutoTokenizer` loads the dir.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| MfError::io(dir, e))?;
        let path = dir.join("tokenizer.json");
        self.inner
            .save(&path, false)
            .map_err(|e| MfError::Tokenizer(format!("{}: {e}", path.display())))?;
        let mut cfg = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": self.add_bos_token,
            "add_eos_token": self.add_eos_token,
            "padding_side": match self.padding_side { PaddingSide::Left => "left", PaddingSide::Right => "right" },
        });
        for (k, v) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("pad_token", &self.pad_token),
            ("unk_token", &self.unk_token),
        ] {
            if let Some(v) = v {
                cfg[k] = serde_json::Value::String(v.clone());
            }
        }
        if self.model_max_length != usize::MAX {
            cfg["model_max_length"] = self.model_max_length.into();
        }
        let path = dir.join("tokenizer_config.json");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&cfg).expect("json value serializes"),
        )
        .map_err(|e| MfError::io(&path, e))
    }
}
