//! `AutoTokenizer` / `AutoProcessor`: a preset name or a directory to the right tokenizer.
use std::path::Path;

use mf_core::{MfError, Result};

use crate::gpt2::GPT2Tokenizer;
#[cfg(feature = "tch")]
use crate::processor::GPT2Processor;
use crate::tokenizer::Tokenizer;

/// Preset names whose tokenizer is GPT-2's byte-level BPE.
pub const GPT2_NAMES: &[&str] = &["gpt2", "gpt2_xl", "gpt2_13b", "gpt2_52b"];

/// Errors unless `name` is a GPT-2 preset.
pub(crate) fn check_known_gpt2(name: &str) -> Result<()> {
    if GPT2_NAMES.contains(&name) {
        Ok(())
    } else {
        Err(MfError::unknown("GPT-2 tokenizer", name, GPT2_NAMES))
    }
}

/// A tokenizer directory in the model cache (`$MF_HOME/<name>`), if one is there.
fn cached_dir(name: &str) -> Option<std::path::PathBuf> {
    let dir = mf_core::hub::ModelHub::from_env().mf_home.join(name);
    has_tokenizer_files(&dir).then_some(dir)
}

fn has_tokenizer_files(dir: &Path) -> bool {
    dir.join("tokenizer.json").is_file()
        || dir.join("vocab.json").is_file()
        || dir.join("vocab.txt").is_file()
}

/// A hub name's (`org/name`) snapshot in the Hugging Face cache, if it holds tokenizer files.
fn hub_snapshot(name: &str) -> Option<std::path::PathBuf> {
    if name.split('/').count() != 2 {
        return None;
    }
    let hub = mf_core::hub::ModelHub::from_env();
    let dir = hub.cached_snapshot(name)?;
    has_tokenizer_files(&dir).then_some(dir)
}

/// Picks the tokenizer class from a preset name or a directory's files.
pub struct AutoTokenizer;

impl AutoTokenizer {
    /// `AutoTokenizer::from_pretrained("gpt2")` or a directory with HF tokenizer files.
    pub fn from_pretrained(name_or_dir: &str) -> Result<Tokenizer> {
        let path = Path::new(name_or_dir);
        if path.is_dir() {
            return Tokenizer::from_dir(path);
        }
        if GPT2_NAMES.contains(&name_or_dir) {
            return GPT2Tokenizer::bundled();
        }
        if let Some(dir) = cached_dir(name_or_dir) {
            return Tokenizer::from_dir(dir);
        }
        if crate::bert::BERT_UNCASED_NAMES.contains(&name_or_dir) {
            return crate::bert::BertTokenizer::bundled_uncased();
        }
        if let Some(dir) = hub_snapshot(name_or_dir) {
            return Tokenizer::from_dir(dir);
        }
        if name_or_dir.contains('/') || name_or_dir.starts_with('.') {
            return Err(MfError::NotFound(format!(
                "tokenizer directory '{name_or_dir}' does not exist"
            )));
        }
        // Only GPT-2's and bert-base-uncased's tokenizers ship with the crate; other
        // families' tokenizers come from their model directory.
        let home = mf_core::hub::ModelHub::from_env().mf_home.join(name_or_dir);
        Err(MfError::NotFound(format!(
            "{}; other models' tokenizers load from a directory with tokenizer.json: pass it, or put it in {}",
            MfError::unknown("tokenizer", name_or_dir, GPT2_NAMES),
            home.display()
        )))
    }
}

/// Picks the processor class from a preset name or a directory.
#[cfg(feature = "tch")]
pub struct AutoProcessor;

#[cfg(feature = "tch")]
impl AutoProcessor {
    /// `AutoProcessor::from_pretrained("gpt2")`: the text processor with the preset's tokenizer.
    pub fn from_pretrained(name_or_dir: &str) -> Result<GPT2Processor> {
        GPT2Processor::new(
            AutoTokenizer::from_pretrained(name_or_dir)?,
            GPT2Processor::DEFAULT_MAX_LENGTH,
            "ms",
        )
    }
}
