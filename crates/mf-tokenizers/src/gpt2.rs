//! GPT-2's byte-level BPE tokenizer, with the real vocabulary bundled into the binary.
use std::collections::HashMap;
use std::path::Path;

use mf_core::{MfError, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use crate::tokenizer::Tokenizer;

/// The bundled GPT-2 vocabulary (see `crates/mf-tokenizers/assets/gpt2/NOTICE.md`).
const VOCAB_JSON: &str = include_str!("../assets/gpt2/vocab.json");
/// The bundled GPT-2 merges.
const MERGES_TXT: &str = include_str!("../assets/gpt2/merges.txt");

/// GPT-2's one special token: bos, eos, unk and (in MindFormers) pad.
pub const ENDOFTEXT: &str = "<|endoftext|>";

/// Constructors for GPT-2 tokenizers (`GPT2Tokenizer::from_pretrained("gpt2")`).
pub struct GPT2Tokenizer;

impl GPT2Tokenizer {
    /// Loads by preset name (`gpt2`, `gpt2_xl`, ...: the bundled vocabulary) or from a directory.
    pub fn from_pretrained(name_or_dir: &str) -> Result<Tokenizer> {
        let path = Path::new(name_or_dir);
        if path.is_dir() {
            return Tokenizer::from_dir(path);
        }
        crate::auto::check_known_gpt2(name_or_dir)?;
        Self::bundled()
    }

    /// The bundled GPT-2 tokenizer with MindFormers' defaults.
    pub fn bundled() -> Result<Tokenizer> {
        let vocab: HashMap<String, u32> = serde_json::from_str(VOCAB_JSON)
            .map_err(|e| MfError::Tokenizer(format!("bundled vocab.json: {e}")))?;
        Self::build(vocab, MERGES_TXT, "bundled merges.txt")
    }

    /// Builds from `vocab.json` and `merges.txt` files.
    pub fn from_files(vocab: impl AsRef<Path>, merges: impl AsRef<Path>) -> Result<Tokenizer> {
        let (vocab, merges) = (vocab.as_ref(), merges.as_ref());
        let vtext = std::fs::read_to_string(vocab).map_err(|e| MfError::io(vocab, e))?;
        let v: HashMap<String, u32> = serde_json::from_str(&vtext).map_err(|e| {
            MfError::Tokenizer(format!("{}: malformed vocab.json: {e}", vocab.display()))
        })?;
        let mtext = std::fs::read_to_string(merges).map_err(|e| MfError::io(merges, e))?;
        Self::build(v, &mtext, &merges.display().to_string())
    }

    fn build(vocab: HashMap<String, u32>, merges_text: &str, origin: &str) -> Result<Tokenizer> {
        let mut merges = Vec::new();
        for (n, line) in merges_text.lines().enumerate() {
            if line.starts_with("#version") || line.trim().is_empty() {
                continue;
            }
            let (a, b) = line.split_once(' ').ok_or_else(|| {
                MfError::Tokenizer(format!(
                    "{origin}: line {} is not a 'left right' merge",
                    n + 1
                ))
            })?;
            merges.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab.into_iter().collect::<ahash::AHashMap<_, _>>(), merges)
            .build()
            .map_err(|e| MfError::Tokenizer(format!("{origin}: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let mut tok = Tokenizer::new(inner);
        tok.set_special_tokens(
            Some(ENDOFTEXT),
            Some(ENDOFTEXT),
            Some(ENDOFTEXT),
            Some(ENDOFTEXT),
        );
        tok.model_max_length = 1024;
        Ok(tok)
    }
}
