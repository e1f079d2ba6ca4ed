//! Reading configuration files (Hugging Face `config.json`, TOML presets) with errors that name
//! the file and the offending key.
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{MfError, Result};

/// Parses a JSON file into `T`.
pub fn read_json<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| MfError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| MfError::config(path.display(), e.to_string()))
}

/// Parses TOML text into `T`; `origin` names where the text came from.
pub fn parse_toml<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| MfError::config(origin, e.to_string()))
}

/// Writes `value` as pretty JSON through a temp file and a rename.
pub fn write_json<T: serde::Serialize>(path: impl AsRef<Path>, value: &T) -> Result<()> {
    let path = path.as_ref();
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| MfError::config(path.display(), e.to_string()))?;
    crate::file::write_atomic(path, |tmp| {
        std::fs::write(tmp, text + "\n").map_err(|e| MfError::io(tmp, e))
    })
}
