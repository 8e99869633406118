/// A boxed error from a caller-supplied component (a tokenizer behind [`crate::TextCodec`]), kept
/// opaque so that keel-rollout does not depend on any particular tokenizer crate.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong while sampling, locally or through a remote server.
///
/// Each variant names what Keel was doing, so a failure deep inside a pipeline stage still tells the
/// user which prompt, which step or which URL to look at.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// A sampling parameter is out of range; `field` is the parameter's name as written in YAML/JSON.
    #[error("invalid sampling parameter `{field}`: {message}")]
    InvalidParams {
        /// The offending parameter.
        field: &'static str,
        /// Why the value is rejected.
        message: String,
    },
    /// A prompt encoded to zero tokens; a left-padded row with no real token would make attention
    /// fully masked (NaN), so it is rejected up front.
    #[error("prompt {index} is empty (zero tokens)")]
    EmptyPrompt {
        /// Position of the prompt in the request.
        index: usize,
    },
    /// A prompt plus its token budget does not fit the model's context window. Checked before any
    /// allocation: a prompt of a million tokens would otherwise ask attention for terabytes.
    #[error(
        "prompt {index} is {prompt_tokens} tokens long and max_new_tokens is {max_new_tokens}, but the \
         model's context window is {context} tokens (prompt + max_new_tokens must not exceed it); \
         shorten the prompt or lower max_new_tokens"
    )]
    ContextOverflow {
        /// Position of the prompt in the request.
        index: usize,
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// The requested completion budget.
        max_new_tokens: usize,
        /// The model's context window ([`crate::DecodeModel::context_window`]).
        context: usize,
    },
    /// The decoder failed (shape mismatch, device error, ...).
    #[error("model forward failed during {during}: {source}")]
    Model {
        /// `prefill` or `decode step N`.
        during: String,
        /// The underlying candle error.
        #[source]
        source: candle_core::Error,
    },
    /// The decoder returned logits of an unexpected shape.
    #[error("model returned logits of shape {got:?} during {during}, expected {expected}")]
    LogitsShape {
        /// `prefill` or `decode step N`.
        during: String,
        /// The shape returned.
        got: Vec<usize>,
        /// A description of the expected shape.
        expected: String,
    },
    /// NaN or +inf logits, or a row with every logit at -inf: sampling from them is meaningless, and
    /// silently producing garbage would poison an RL run.
    #[error(
        "non-finite logits for prompt {prompt_index} sample {sample_index} at decode step {step}"
    )]
    NonFiniteLogits {
        /// Key of the prompt (its index in the request).
        prompt_index: u64,
        /// Index of the sample within the group.
        sample_index: u64,
        /// Decode step (0 = first generated token).
        step: usize,
    },
    /// The tokenizer failed to encode or decode.
    #[error("tokenizer failed while {during}: {source}")]
    Codec {
        /// What was being encoded or decoded.
        during: String,
        /// The tokenizer's error.
        #[source]
        source: BoxError,
    },
    /// An HTTP request to a completion server failed before a response arrived.
    #[error("request to {url} failed: {message}")]
    Http {
        /// The URL requested.
        url: String,
        /// Transport error text.
        message: String,
    },
    /// A completion server answered with an error status.
    #[error("server at {url} answered {status}: {body}")]
    RemoteStatus {
        /// The URL requested.
        url: String,
        /// HTTP status code.
        status: u16,
        /// The response body (usually a JSON error), truncated.
        body: String,
    },
    /// A completion server answered 200 with a body Keel cannot use.
    #[error("unusable response from {url}: {message}")]
    RemoteProtocol {
        /// The URL requested.
        url: String,
        /// What was missing or malformed.
        message: String,
    },
    /// The completion server could not be started.
    #[error("cannot serve on {addr}: {message}")]
    Serve {
        /// The requested listen address.
        addr: String,
        /// Why binding failed.
        message: String,
    },
}

impl RolloutError {
    /// Shorthand for [`RolloutError::InvalidParams`].
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        RolloutError::InvalidParams {
            field,
            message: message.into(),
        }
    }
}

/// Result alias for keel-rollout.
pub type Result<T, E = RolloutError> = std::result::Result<T, E>;
