//! BERT's WordPiece tokenizer with transformers' `BertTokenizer` rules: BasicTokenizer
//! cleaning (control characters dropped, whitespace unified), CJK characters split,
//! punctuation split, lower-casing and accent stripping for uncased vocabularies, WordPiece
//! with `##` continuations (words over 100 characters become `[UNK]`), and the
//! `[CLS] A [SEP] B [SEP]` template with `token_type_ids`.
use std::path::Path;

use mf_core::{MfError, Result};
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::NormalizerWrapper;

use crate::tokenizer::Tokenizer;

/// The bundled bert-base-uncased vocabulary (see `crates/mf-tokenizers/assets/bert-base-uncased/NOTICE.md`).
const UNCASED_VOCAB: &str = include_str!("../assets/bert-base-uncased/vocab.txt");

/// Preset names whose tokenizer is the bundled bert-base-uncased vocabulary.
pub const BERT_UNCASED_NAMES: &[&str] = &[
    "bert_base_uncased",
    "bert_tiny_uncased",
    "txtcls_bert_base_uncased",
    "txtcls_bert_base_uncased_mnli",
    "qa_bert_base_uncased",
];

/// Constructors for BERT tokenizers.
pub struct BertTokenizer;

impl BertTokenizer {
    /// A preset name (the uncased presets use the bundled vocabulary) or a directory.
    pub fn from_pretrained(name_or_dir: &str) -> Result<Tokenizer> {
        let path = Path::new(name_or_dir);
        if path.is_dir() {
            return Tokenizer::from_dir(path);
        }
        if BERT_UNCASED_NAMES.contains(&name_or_dir) {
            return Self::bundled_uncased();
        }
        Err(MfError::unknown(
            "BERT tokenizer",
            name_or_dir,
            BERT_UNCASED_NAMES,
        ))
    }

    /// bert-base-uncased's tokenizer (512 positions), bundled in the binary.
    pub fn bundled_uncased() -> Result<Tokenizer> {
        let vocab = WordPiece::read_bytes(UNCASED_VOCAB.as_bytes())
            .map_err(|e| MfError::Tokenizer(format!("bundled vocab.txt: {e}")))?;
        let mut t = Self::build(vocab, true, "bundled vocab.txt")?;
        t.model_max_length = 512;
        Ok(t)
    }

    /// A tokenizer from a WordPiece `vocab.txt` (one token per line, the line number is the
    /// id), lower-casing (and stripping accents) when `lowercase`, as `BertTokenizer(vocab)`.
    pub fn from_vocab(vocab: impl AsRef<Path>, lowercase: bool) -> Result<Tokenizer> {
        let path = vocab.as_ref();
        let bytes = std::fs::read(path).map_err(|e| MfError::io(path, e))?;
        let v = WordPiece::read_bytes(&bytes)
            .map_err(|e| MfError::Tokenizer(format!("{}: {e}", path.display())))?;
        Self::build(v, lowercase, &path.display().to_string())
    }

    fn build(
        vocab: ahash::AHashMap<String, u32>,
        lowercase: bool,
        origin: &str,
    ) -> Result<Tokenizer> {
        let need = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"];
        let missing: Vec<&str> = need
            .iter()
            .copied()
            .filter(|t| !vocab.contains_key(*t))
            .collect();
        if !missing.is_empty() {
            return Err(MfError::Tokenizer(format!(
                "{origin}: not a BERT WordPiece vocabulary (no {} token)",
                missing.join(", ")
            )));
        }
        let (cls, sep) = (vocab["[CLS]"], vocab["[SEP]"]);
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(100)
            .build()
            .map_err(|e| MfError::Tokenizer(format!("{origin}: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(model);
        inner.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)));
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        inner.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )));
        inner.with_decoder(Some(WordPieceDecoder::new("##".into(), true)));
        let mut t = Tokenizer::new(inner);
        t.post_processor_adds = true;
        t.set_special_tokens(None, None, Some("[PAD]"), Some("[UNK]"));
        t.cls_token = Some("[CLS]".into());
        t.sep_token = Some("[SEP]".into());
        t.mask_token = Some("[MASK]".into());
        // Registers the three as never-split special tokens.
        t.set_special_tokens(None, None, None, None);
        Ok(t)
    }
}

/// Applies `tokenizer_config.json`'s `do_lower_case` / `strip_accents` /
/// `tokenize_chinese_chars` to a BERT normalizer, as `BertTokenizerFast.__init__` does when
/// they disagree with `tokenizer.json`. Other normalizers are left alone.
pub(crate) fn apply_normalizer_options(
    inner: &mut tokenizers::Tokenizer,
    lowercase: Option<bool>,
    strip_accents: Option<bool>,
    chinese: Option<bool>,
) {
    let Some(NormalizerWrapper::BertNormalizer(n)) = inner.get_normalizer() else {
        return;
    };
    let mut n = *n;
    let before = (n.lowercase, n.strip_accents, n.handle_chinese_chars);
    if let Some(l) = lowercase {
        n.lowercase = l;
    }
    if strip_accents.is_some() {
        n.strip_accents = strip_accents;
    }
    if let Some(c) = chinese {
        n.handle_chinese_chars = c;
    }
    if (n.lowercase, n.strip_accents, n.handle_chinese_chars) != before {
        inner.with_normalizer(Some(n));
    }
}
