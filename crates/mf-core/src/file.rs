//! Writing files so that a reader never sees half of one: a crash mid-write leaves the old
//! file (or none), never a truncated checkpoint or config.
use std::path::Path;

use crate::error::{MfError, Result};

/// Runs `write` on a temp path beside `path`, then renames it into place.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| MfError::io(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let res = write(&tmp);
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return res;
    }
    std::fs::rename(&tmp, path).map_err(|e| MfError::io(path, e))
}
