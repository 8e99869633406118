use std::path::PathBuf;

/// Everything that can go wrong in keel-optim.
///
/// Every variant names the tensor, parameter or file involved, because a training run that fails
/// at step 40,000 must say *which* input had the wrong shape or which checkpoint entry was missing
/// without the user re-running under a debugger.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A candle operation failed; `context` says which computation (e.g. `policy_loss: ratio`).
    #[error("{context}: {source}")]
    Candle {
        /// The computation that was running.
        context: String,
        /// The underlying candle error.
        #[source]
        source: Box<candle_core::Error>,
    },
    /// An input tensor has the wrong shape.
    #[error("tensor `{name}`: expected shape {expected}, got {got:?}")]
    Shape {
        /// The input's name (`logp`, `mask`, `advantages`, ...).
        name: String,
        /// The expected shape in words, e.g. `[B, T] = [4, 7]`.
        expected: String,
        /// The shape that was passed.
        got: Vec<usize>,
    },
    /// A configuration value is out of its valid range.
    #[error("invalid {param} = {value}: {reason}")]
    Config {
        /// The parameter name as written in configs (`eps_low`, `group_size`, ...).
        param: &'static str,
        /// The offending value, formatted.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// An optional input is required by the chosen configuration but was not given.
    #[error("missing input `{name}`: {reason}")]
    MissingInput {
        /// The input's name.
        name: &'static str,
        /// Which option needs it.
        reason: String,
    },
    /// A named parameter (or its gradient or saved state) is unusable.
    #[error("parameter `{name}`: {reason}")]
    Param {
        /// The parameter name (Hugging Face tensor name for model weights).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Saved state on disk cannot be read back or does not match the live parameters.
    #[error("state file {path}: {reason}")]
    State {
        /// The file being read or written.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file-system error from keel-core (atomic writes).
    #[error(transparent)]
    Core(#[from] keel_core::CoreError),
}

/// Result alias for keel-optim.
pub type Result<T, E = OptimError> = std::result::Result<T, E>;

/// Attaches a description of the running computation to candle errors.
pub(crate) trait Ctx<T> {
    /// Converts a candle error into [`OptimError::Candle`] with `context`.
    fn ctx(self, context: &str) -> Result<T>;
}

impl<T> Ctx<T> for candle_core::Result<T> {
    fn ctx(self, context: &str) -> Result<T> {
        self.map_err(|e| OptimError::Candle { context: context.to_string(), source: Box::new(e) })
    }
}

impl OptimError {
    /// Shorthand for a configuration error.
    pub(crate) fn config(param: &'static str, value: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        OptimError::Config { param, value: value.to_string(), reason: reason.into() }
    }

    /// Shorthand for a parameter error.
    pub(crate) fn param(name: impl Into<String>, reason: impl Into<String>) -> Self {
        OptimError::Param { name: name.into(), reason: reason.into() }
    }

    /// Shorthand for a state-file error.
    pub(crate) fn state(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        OptimError::State { path: path.into(), reason: reason.into() }
    }
}
