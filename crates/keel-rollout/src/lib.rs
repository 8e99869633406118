//! Keel's sampling engine.
//!
//! * [`Engine`]: batched generation with a KV cache over any [`DecodeModel`] + [`TextCodec`]
//!   (left padding with an attention mask, one prefill, step-by-step decoding), groups of `n`
//!   completions per prompt, per-token policy log-probs and entropies, stop tokens and strings.
//! * [`SamplingParams`] and the pure logit functions in [`logits`] (temperature → top-k → top-p →
//!   min-p, as Hugging Face and vLLM), with one seeded ChaCha8 stream per (seed, prompt, sample) so
//!   samples do not depend on batching ([`sample_rng`]).
//! * [`build_rollouts`]: examples → rendered prompts → [`keel_core::Rollout`] groups, over any
//!   [`RolloutBackend`].
//! * [`RemoteClient`]: the same records from an OpenAI-compatible completion server (vLLM, SGLang,
//!   llama.cpp), and [`serve`]: such a server for a local engine ([`serve_chat`] adds
//!   `/v1/chat/completions` over a [`ChatRenderer`]).
//! * [`toy`]: float-exact toy models for tests and examples.

mod backend;
mod engine;
mod error;
pub mod logits;
mod model;
mod openai;
mod params;
mod remote;
mod server;
pub mod toy;

pub use backend::{build_rollouts, GenerationGroup, RolloutBackend};
pub use engine::{sample_rng, Engine, EngineConfig, KeyedPrompt};
pub use error::{BoxError, Result, RolloutError};
pub use model::{DecodeModel, TextCodec};
pub use openai::{
    ChatChoice, ChatCompletionRequest, ChatCompletionResponse, ChoiceLogprobs, CompletionChoice,
    CompletionRequest, CompletionResponse, PromptInput, StopInput, Usage,
};
pub use params::SamplingParams;
pub use remote::{RemoteClient, RemoteConfig};
pub use server::{serve, serve_chat, ChatRenderer, RequestCounts, ServeOptions, ServerHandle};
