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
    /// Classifier token that starts a sequence (`[CLS]`), if any.
    pub cls_token: Option<String>,
    /// Separator token (`[SEP]`), if any.
    pub sep_token: Option<String>,
    /// Mask token of masked-LM models (`[MASK]`), if any.
    pub mask_token: Option<String>,
    /// Special tokens come from `tokenizer.json`'s post-processor (BERT's `[CLS] $A [SEP]`
    /// template) instead of `add_bos_token` / `add_eos_token`.
    pub post_processor_adds: bool,
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
    #[serde(default, deserialize_with = "token_field")]
    cls_token: Option<String>,
    #[serde(default, deserialize_with = "token_field")]
    sep_token: Option<String>,
    #[serde(default, deserialize_with = "token_field")]
    mask_token: Option<String>,
    do_lower_case: Option<bool>,
    strip_accents: Option<bool>,
    tokenize_chinese_chars: Option<bool>,
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
            cls_token: None,
            sep_token: None,
            mask_token: None,
            post_processor_adds: false,
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
            let mut inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| {
                MfError::Tokenizer(format!("{}: malformed tokenizer.json: {e}", path.display()))
            })?;
            // transformers sets padding and truncation per call (none unless asked), whatever
            // tokenizer.json was saved with.
            inner.with_padding(None);
            inner
                .with_truncation(None)
                .map_err(|e| MfError::Tokenizer(e.to_string()))?;
            let mut t = Tokenizer::new(inner);
            t.post_processor_adds = t.inner.get_post_processor().is_some_and(|p| {
                use tokenizers::PostProcessor;
                p.added_tokens(false) > 0
            });
            t
        } else if dir.join("vocab.txt").is_file() {
            crate::bert::BertTokenizer::from_vocab(dir.join("vocab.txt"), true)?
        } else if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file() {
            crate::gpt2::GPT2Tokenizer::from_files(dir.join("vocab.json"), dir.join("merges.txt"))?
        } else {
            return Err(MfError::NotFound(format!(
                "{}: no tokenizer.json (or vocab.json + merges.txt, or a WordPiece vocab.txt) in this directory",
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
        if cfg.cls_token.is_some() {
            self.cls_token = cfg.cls_token;
        }
        if cfg.sep_token.is_some() {
            self.sep_token = cfg.sep_token;
        }
        if cfg.mask_token.is_some() {
            self.mask_token = cfg.mask_token;
        }
        crate::bert::apply_normalizer_options(
            &mut self.inner,
            cfg.do_lower_case,
            cfg.strip_accents,
            cfg.tokenize_chinese_chars,
        );
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
        let specials: Vec<tokenizers::AddedToken> = self
            .special_tokens()
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

    /// Every special-token slot, set or not.
    fn special_tokens(&self) -> [&Option<String>; 7] {
        [
            &self.bos_token,
            &self.eos_token,
            &self.pad_token,
            &self.unk_token,
            &self.cls_token,
            &self.sep_token,
            &self.mask_token,
        ]
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

    /// Id of the mask token.
    pub fn mask_token_id(&self) -> Option<u32> {
        self.special_id(&self.mask_token)
    }

    /// Id of the classifier token.
    pub fn cls_token_id(&self) -> Option<u32> {
        self.special_id(&self.cls_token)
    }

    /// Id of the separator token.
    pub fn sep_token_id(&self) -> Option<u32> {
        self.special_id(&self.sep_token)
    }

    /// Ids of every special token (for `skip_special_tokens` and label masking).
    pub fn all_special_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .special_tokens()
            .into_iter()
            .filter_map(|t| self.special_id(t))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
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
        let inputs: Vec<(&str, Option<&str>)> = texts.iter().map(|t| (t.as_ref(), None)).collect();
        Ok(BatchEncoding::from_rows(&self.encode_rows(&inputs, opts)?))
    }

    /// Tokenizes sentence pairs (`tokenizer(text, text_pair)`): segment B gets
    /// `token_type_ids` 1 where the model's template says so.
    pub fn encode_pairs<S: AsRef<str>>(
        &self,
        pairs: &[(S, S)],
        opts: &EncodeOptions,
    ) -> Result<BatchEncoding> {
        let inputs: Vec<(&str, Option<&str>)> = pairs
            .iter()
            .map(|(a, b)| (a.as_ref(), Some(b.as_ref())))
            .collect();
        Ok(BatchEncoding::from_rows(&self.encode_rows(&inputs, opts)?))
    }

    /// Tokenizes texts or pairs keeping what pipelines and collators need per token:
    /// character offsets, word ids, sequence ids and the special-token mask.
    pub fn encode_rows(
        &self,
        inputs: &[(&str, Option<&str>)],
        opts: &EncodeOptions,
    ) -> Result<Vec<EncodedRow>> {
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
        let specials = !opts.skip_special_tokens_insertion;
        // Rows are independent: they run on the `tokenizers` crate's rayon pool, as its own
        // `encode_batch` does (and, like it, serially under `TOKENIZERS_PARALLELISM=false`).
        // A single text stays on the calling thread: handing it to the pool costs more than
        // it saves.
        use tokenizers::utils::parallelism::MaybeParallelRefIterator;
        let mut rows = inputs
            .maybe_par_iter_cond(inputs.len() > 1)
            .map(|&(a, b)| self.encode_row(a, b, specials, opts.truncation, max_length, side))
            .collect::<Result<Vec<_>>>()?;
        let target = match opts.padding {
            Padding::None => None,
            Padding::Longest => Some(rows.iter().map(|r| r.input_ids.len()).max().unwrap_or(0)),
            Padding::MaxLength => {
                Some(max_length.max(rows.iter().map(|r| r.input_ids.len()).max().unwrap_or(0)))
            }
        };
        if let Some(target) = target {
            if rows.iter().any(|r| r.input_ids.len() < target) {
                let pad = self.pad_token_id().ok_or_else(|| {
                    invalid("padding requested but the tokenizer has no pad_token; set one with set_special_tokens")
                })?;
                for row in &mut rows {
                    row.pad(target, pad, side);
                }
            }
        }
        Ok(rows)
    }

    /// One text or pair through the tokenizer, special tokens and truncation.
    fn encode_row(
        &self,
        a: &str,
        b: Option<&str>,
        specials: bool,
        truncation: bool,
        max_length: usize,
        side: PaddingSide,
    ) -> Result<EncodedRow> {
        let enc = |t: &str| {
            self.inner
                .encode_char_offsets(t, false)
                .map_err(|e| MfError::Tokenizer(e.to_string()))
        };
        let mut ea = enc(a)?;
        let mut eb = b.map(enc).transpose()?;
        let added = if specials && self.post_processor_adds {
            use tokenizers::PostProcessor;
            self.inner
                .get_post_processor()
                .map_or(0, |p| p.added_tokens(eb.is_some()))
        } else {
            (specials && self.add_bos_token) as usize + (specials && self.add_eos_token) as usize
        };
        if truncation {
            let budget = max_length.saturating_sub(added);
            truncate_longest_first(&mut ea, eb.as_mut(), budget, side);
        }
        Ok(if specials && self.post_processor_adds {
            let e = self
                .inner
                .post_process(ea, eb, true)
                .map_err(|e| MfError::Tokenizer(e.to_string()))?;
            EncodedRow::from_encoding(&e)
        } else {
            let mut row = EncodedRow::from_encoding(&ea);
            if let Some(eb) = &eb {
                let mut r = EncodedRow::from_encoding(eb);
                r.sequence_ids.iter_mut().for_each(|s| *s = Some(1));
                r.token_type_ids.iter_mut().for_each(|t| *t = 1);
                row.append(r);
            }
            if specials && self.add_bos_token {
                let id = self.bos_token_id().ok_or_else(|| {
                    invalid("add_bos_token is set but bos_token is not in the vocabulary")
                })?;
                row.insert_special(0, id);
            }
            if specials && self.add_eos_token {
                let id = self.eos_token_id().ok_or_else(|| {
                    invalid("add_eos_token is set but eos_token is not in the vocabulary")
                })?;
                let n = row.input_ids.len();
                row.insert_special(n, id);
            }
            if truncation && row.input_ids.len() > max_length {
                row.truncate(max_length, side);
            }
            row
        })
    }

    /// A question with a long context as windows `[CLS] q [SEP] ctx[i..i+n] [SEP]` of at most
    /// `max_len` tokens overlapping by `stride` context tokens: transformers' `only_second`
    /// truncation with overflowing tokens, as question answering uses it.
    pub fn encode_windows(
        &self,
        question: &str,
        context: &str,
        max_len: usize,
        stride: usize,
    ) -> Result<Vec<EncodedRow>> {
        let no_special = EncodeOptions {
            skip_special_tokens_insertion: true,
            ..Default::default()
        };
        let q_len = self
            .encode_rows(&[(question, None)], &no_special)?
            .remove(0)
            .input_ids
            .len();
        let full = self
            .encode_rows(&[(question, Some(context))], &EncodeOptions::default())?
            .remove(0);
        let added = full.input_ids.len()
            - q_len
            - full.sequence_ids.iter().filter(|s| **s == Some(1)).count();
        let budget = max_len
            .checked_sub(q_len + added)
            .filter(|b| *b > 0)
            .ok_or_else(|| {
                invalid(format!(
                    "the question takes {q_len} tokens, leaving no room for the context in \
                     windows of {max_len}; raise max_seq_len"
                ))
            })?;
        if stride >= budget {
            return Err(invalid(format!(
                "doc_stride {stride} must be smaller than the {budget} context tokens a window holds"
            )));
        }
        // The context's tokens (word ids and offsets) once, then one window per slice.
        let ctx_first = full
            .sequence_ids
            .iter()
            .position(|s| *s == Some(1))
            .ok_or_else(|| invalid("the context gives no tokens"))?;
        let ctx_len = full.sequence_ids.iter().filter(|s| **s == Some(1)).count();
        let mut windows = Vec::new();
        let mut start = 0;
        loop {
            let stop = (start + budget).min(ctx_len);
            let mut w = EncodedRow::default();
            for i in 0..full.input_ids.len() {
                let in_ctx = full.sequence_ids[i] == Some(1);
                if in_ctx && !(ctx_first + start..ctx_first + stop).contains(&i) {
                    continue;
                }
                w.input_ids.push(full.input_ids[i]);
                w.token_type_ids.push(full.token_type_ids[i]);
                w.attention_mask.push(1);
                w.offsets.push(full.offsets[i]);
                w.word_ids.push(full.word_ids[i]);
                w.sequence_ids.push(full.sequence_ids[i]);
                w.special_tokens_mask.push(full.special_tokens_mask[i]);
                w.tokens.push(full.tokens[i].clone());
            }
            windows.push(w);
            if stop == ctx_len {
                break;
            }
            start += budget - stride;
        }
        Ok(windows)
    }

    /// Turns ids back into text.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| MfError::Tokenizer(e.to_string()))
    }

    /// Joins token strings as the tokenizer's decoder does (`##` pieces glued to the word
    /// before them for WordPiece), transformers' `convert_tokens_to_string`.
    pub fn convert_tokens_to_string(&self, tokens: &[String]) -> Result<String> {
        use tokenizers::Decoder;
        match self.inner.get_decoder() {
            Some(d) => d
                .decode(tokens.to_vec())
                .map_err(|e| MfError::Tokenizer(e.to_string())),
            None => Ok(tokens.join(" ")),
        }
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
            ("cls_token", &self.cls_token),
            ("sep_token", &self.sep_token),
            ("mask_token", &self.mask_token),
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

/// HF's `longest_first` truncation: drop tokens from the longer segment until both fit.
fn truncate_longest_first(
    a: &mut tokenizers::Encoding,
    b: Option<&mut tokenizers::Encoding>,
    budget: usize,
    side: PaddingSide,
) {
    let dir = match side {
        PaddingSide::Right => tokenizers::TruncationDirection::Right,
        PaddingSide::Left => tokenizers::TruncationDirection::Left,
    };
    match b {
        None => a.truncate(budget, 0, dir),
        Some(b) => {
            let (mut la, mut lb) = (a.len(), b.len());
            while la + lb > budget {
                if la > lb {
                    la -= 1;
                } else {
                    lb -= 1;
                }
            }
            a.truncate(la, 0, dir);
            b.truncate(lb, 0, dir);
        }
    }
}

/// One tokenized text (or pair) with per-token details.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EncodedRow {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Segment ids.
    pub token_type_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// `(start, end)` character offsets into the text the token came from; `(0, 0)` for
    /// special tokens and padding.
    pub offsets: Vec<(usize, usize)>,
    /// Index of the word (pre-tokenizer piece) each token belongs to.
    pub word_ids: Vec<Option<u32>>,
    /// Which input (0 = text, 1 = text_pair) each token came from; `None` for specials.
    pub sequence_ids: Vec<Option<usize>>,
    /// 1 for special tokens (and padding).
    pub special_tokens_mask: Vec<u32>,
    /// Token strings.
    pub tokens: Vec<String>,
}

impl EncodedRow {
    fn from_encoding(e: &tokenizers::Encoding) -> Self {
        EncodedRow {
            input_ids: e.get_ids().to_vec(),
            token_type_ids: e.get_type_ids().to_vec(),
            attention_mask: vec![1; e.len()],
            offsets: e.get_offsets().to_vec(),
            word_ids: e.get_word_ids().to_vec(),
            sequence_ids: e.get_sequence_ids(),
            special_tokens_mask: e.get_special_tokens_mask().to_vec(),
            tokens: e.get_tokens().to_vec(),
        }
    }

    fn append(&mut self, o: EncodedRow) {
        self.input_ids.extend(o.input_ids);
        self.token_type_ids.extend(o.token_type_ids);
        self.attention_mask.extend(o.attention_mask);
        self.offsets.extend(o.offsets);
        self.word_ids.extend(o.word_ids);
        self.sequence_ids.extend(o.sequence_ids);
        self.special_tokens_mask.extend(o.special_tokens_mask);
        self.tokens.extend(o.tokens);
    }

    fn insert_special(&mut self, at: usize, id: u32) {
        self.input_ids.insert(at, id);
        let tt = if at == 0 {
            0
        } else {
            *self.token_type_ids.last().unwrap_or(&0)
        };
        self.token_type_ids.insert(at, tt);
        self.attention_mask.insert(at, 1);
        self.offsets.insert(at, (0, 0));
        self.word_ids.insert(at, None);
        self.sequence_ids.insert(at, None);
        self.special_tokens_mask.insert(at, 1);
        self.tokens.insert(at, String::new());
    }

    fn truncate(&mut self, n: usize, side: PaddingSide) {
        fn cut<T>(v: &mut Vec<T>, n: usize, side: PaddingSide) {
            match side {
                PaddingSide::Right => v.truncate(n),
                PaddingSide::Left => {
                    v.drain(..v.len() - n);
                }
            }
        }
        cut(&mut self.input_ids, n, side);
        cut(&mut self.token_type_ids, n, side);
        cut(&mut self.attention_mask, n, side);
        cut(&mut self.offsets, n, side);
        cut(&mut self.word_ids, n, side);
        cut(&mut self.sequence_ids, n, side);
        cut(&mut self.special_tokens_mask, n, side);
        cut(&mut self.tokens, n, side);
    }

    fn pad(&mut self, target: usize, pad: u32, side: PaddingSide) {
        let n = target.saturating_sub(self.input_ids.len());
        fn put<T: Clone>(v: &mut Vec<T>, n: usize, x: T, side: PaddingSide) {
            match side {
                PaddingSide::Right => v.extend(std::iter::repeat_n(x, n)),
                PaddingSide::Left => {
                    v.splice(0..0, std::iter::repeat_n(x, n));
                }
            }
        }
        put(&mut self.input_ids, n, pad, side);
        put(&mut self.token_type_ids, n, 0, side);
        put(&mut self.attention_mask, n, 0, side);
        put(&mut self.offsets, n, (0, 0), side);
        put(&mut self.word_ids, n, None, side);
        put(&mut self.sequence_ids, n, None, side);
        put(&mut self.special_tokens_mask, n, 1, side);
        put(&mut self.tokens, n, String::new(), side);
    }
}
