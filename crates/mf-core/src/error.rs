//! The one error type shared by every library crate.
use std::path::PathBuf;

/// Every failure a library call can report; messages name the problem and the fix. Not
/// exhaustive: the libtorch variant exists only with the `tch` feature.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MfError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A configuration file or value is malformed.
    #[error("invalid config {origin}: {msg}")]
    Config {
        /// Where the config came from (a path or a preset name).
        origin: String,
        /// What is wrong.
        msg: String,
    },
    /// A checkpoint is missing, malformed or does not fit the model.
    #[error("checkpoint {origin}: {msg}")]
    Checkpoint {
        /// The checkpoint file or directory.
        origin: String,
        /// What is wrong.
        msg: String,
    },
    /// A name (model, task, tokenizer, device...) is not known.
    #[error("unknown {kind} '{name}'; known {kind}s: {known}")]
    UnknownName {
        /// What kind of name it is.
        kind: &'static str,
        /// The name that was asked for.
        name: String,
        /// The valid names, comma separated.
        known: String,
    },
    /// An argument is out of range or inconsistent with others.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Files a model or tokenizer needs could not be found or fetched.
    #[error("{0}")]
    NotFound(String),
    /// Asked-for hardware is not available.
    #[error("device: {0}")]
    Device(String),
    /// Tokenizer construction or encoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Tensor shapes do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A collective or point-to-point communication failed (peer gone, timeout, mismatch).
    #[error("communication: {0}")]
    Comm(String),
    /// A rank started by `mf launch` failed, or could not be started.
    #[error("launch: {0}")]
    Launch(String),
    /// An error reported by libtorch.
    #[cfg(feature = "tch")]
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A value could not be turned into (or read from) JSON.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// libtorch failed (raised an exception) inside a named operation.
    #[error("{op} failed in libtorch: {msg}")]
    TorchOp {
        /// The public operation that was running (`BertForMaskedLM forward`).
        op: String,
        /// libtorch's message, first line.
        msg: String,
    },
}

/// Result alias used across mindformers-rs.
pub type Result<T> = std::result::Result<T, MfError>;

impl MfError {
    /// Wraps an IO error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MfError::Io {
            path: path.into(),
            source,
        }
    }

    /// A config error from `origin` (path or preset name).
    pub fn config(origin: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        MfError::Config {
            origin: origin.to_string(),
            msg: msg.into(),
        }
    }

    /// A checkpoint error from `origin` (file or directory).
    pub fn checkpoint(origin: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        MfError::Checkpoint {
            origin: origin.to_string(),
            msg: msg.into(),
        }
    }

    /// An unknown-name error listing the valid names.
    pub fn unknown<S: AsRef<str>>(kind: &'static str, name: &str, known: &[S]) -> Self {
        MfError::UnknownName {
            kind,
            name: name.to_string(),
            known: known
                .iter()
                .map(|s| s.as_ref())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// Shorthand for [`MfError::InvalidArgument`].
pub fn invalid(msg: impl Into<String>) -> MfError {
    MfError::InvalidArgument(msg.into())
}

/// Runs `f`, turning a panic raised inside it (tch panics when libtorch throws: a shape
/// mismatch, out of memory) into [`MfError::TorchOp`] naming `op`, so a public inference or
/// training call returns an error instead of unwinding through the caller.
pub fn guard<T>(op: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(|g| g.get()) {
                previous(info);
            }
        }));
    });
    let outer = GUARDED.with(|g| g.replace(true));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    match caught {
        Ok(r) => r,
        Err(payload) => {
            let text = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown error".into());
            // tch wraps the C++ message as `Torch("...")` with a backtrace after it; the
            // first meaningful line is what a user can act on.
            let msg = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("unknown error")
                .trim_start_matches("called `Result::unwrap()` on an `Err` value: ")
                .to_string();
            Err(MfError::TorchOp {
                op: op.to_string(),
                msg,
            })
        }
    }
}

static QUIET_HOOK: std::sync::Once = std::sync::Once::new();

thread_local! {
    // Set while a `guard` runs on this thread: the panic becomes an `Err`, so the default
    // hook's "thread panicked" report would only be noise.
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(all(test, feature = "tch"))]
mod tests {
    use super::*;

    #[test]
    fn a_libtorch_exception_becomes_an_error_naming_the_operation() {
        let a = tch::Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu));
        let b = tch::Tensor::zeros([4, 5], (tch::Kind::Float, tch::Device::Cpu));
        let e = guard("toy matmul", || Ok(a.matmul(&b)))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("toy matmul failed in libtorch:"), "{e}");
        assert!(e.contains("2x3") || e.contains("shapes"), "{e}");
        assert_eq!(guard("ok", || Ok(1)).unwrap(), 1);
    }
}
