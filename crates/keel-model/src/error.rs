//! The error type of the decoder core: every failure names the file, field or tensor involved so
//! that a researcher pointing Keel at a checkpoint knows exactly what to fix.

use std::path::PathBuf;

/// Errors raised while configuring, building, loading, saving or running a [`crate::CausalLm`].
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file-system operation failed; the path says which file to check.
    #[error("{action} {path}: {source}")]
    Io {
        /// What Keel was doing ("reading", "creating directory", ...).
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON document (config.json, an index, an adapter config) could not be parsed or written.
    #[error("{what}: {source}")]
    Json {
        /// Which document ("parsing /x/config.json", ...).
        what: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A config.json field is missing, mistyped or out of range.
    #[error("config field `{field}`: {reason}")]
    Config {
        /// The offending field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration's weights alone would not fit in this machine's memory.
    #[error(
        "the configuration implies {parameters} parameters, at least {bytes} bytes of weights ({gib:.1} GiB in bf16, \
         the smallest dtype Keel computes in), more than this machine's {avail_gib:.1} GiB of memory; check the sizes \
         in config.json (num_hidden_layers, hidden_size, intermediate_size, vocab_size)",
        gib = *bytes as f64 / (1u64 << 30) as f64,
        avail_gib = *available as f64 / (1u64 << 30) as f64
    )]
    TooLarge {
        /// Parameters the configuration implies.
        parameters: u128,
        /// Bytes of weights at 2 bytes per parameter.
        bytes: u128,
        /// Physical memory of this machine in bytes.
        available: u64,
    },
    /// An error in a file, with the file's path (e.g. a bad field of a config.json).
    #[error("{path}: {source}")]
    InFile {
        /// The file the error is in.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<ModelError>,
    },
    /// The checkpoint uses a feature this decoder does not implement (unknown architecture,
    /// unsupported rope scaling, non-SiLU activation); refusing beats silently wrong logits.
    #[error("unsupported model feature: {0}")]
    Unsupported(String),
    /// A preset name was not recognised.
    #[error("unknown model preset `{name}` (available: {available})")]
    UnknownPreset {
        /// The requested name.
        name: String,
        /// Comma-separated list of valid names.
        available: String,
    },
    /// A tensor the configuration requires is absent from the checkpoint.
    #[error("missing tensor `{name}` (expected shape {expected:?})")]
    MissingTensor {
        /// Hugging Face tensor name.
        name: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
    },
    /// A tensor has a different shape from the one the configuration implies.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Hugging Face tensor name.
        name: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape found in the checkpoint.
        actual: Vec<usize>,
    },
    /// An input tensor (ids, mask, cache) has the wrong shape or dtype for the call.
    #[error("invalid input: {0}")]
    Input(String),
    /// A LoRA operation was invalid (no adapters attached, unknown target module, bad rank).
    #[error("LoRA: {0}")]
    Lora(String),
    /// A tensor operation failed; `context` says which step of Keel's code issued it.
    #[error("{context}: {source}")]
    Candle {
        /// What Keel was computing.
        context: String,
        /// The underlying candle error.
        #[source]
        source: candle_core::Error,
    },
}

impl From<candle_core::Error> for ModelError {
    fn from(source: candle_core::Error) -> Self {
        ModelError::Candle { context: "tensor operation".to_string(), source }
    }
}

impl ModelError {
    /// Wraps an I/O error with the action and path.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { action, path: path.into(), source }
    }

    /// Builds a config-field error.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ModelError::Config { field: field.into(), reason: reason.into() }
    }
}

/// Adds human context to candle results (`.ctx("loading model.safetensors")`).
pub trait CandleContext<T> {
    /// Converts a candle error into [`ModelError::Candle`] with the given context.
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ModelError>;
}

impl<T> CandleContext<T> for Result<T, candle_core::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ModelError> {
        self.map_err(|source| ModelError::Candle { context: context(), source })
    }
}

/// Result alias for the decoder core.
pub type ModelResult<T> = std::result::Result<T, ModelError>;
