//! Trainable Hugging Face-compatible decoder language models for Keel.
//!
//! candle-transformers' Llama/Qwen models are built from fused kernels that are detached from
//! autograd, so training them silently updates only the embedding table. This crate owns a
//! Llama-family decoder whose every operation is differentiable (fused ops carry hand-written
//! backward passes), uses the Hugging Face tensor names so real checkpoints load and save
//! unchanged, and bundles the tokenizer, chat template and GGUF import a researcher needs.

// --- decoder, ops, weights, LoRA (owned by the model-core work) ---
pub mod config;
pub mod decoder;
pub mod error;
pub mod kv_cache;
mod layers;
pub mod lora;
pub mod ops;
pub mod weights;

// Links mimalloc's C library, whose option setter `ops::keep_freed_memory` calls.
use mimalloc as _;

pub use config::{Architecture, ModelConfig, RopeScaling, PRESETS};
pub use decoder::{CausalLm, SharedPrefixBatch};
pub use error::{ModelError, ModelResult};
pub use kv_cache::KvCache;
pub use lora::{LoraConfig, LORA_TARGETS};
pub use weights::{tensor_specs, TensorSpec, WeightSnapshot};

// --- tokenizer, chat templates, GGUF import, model references (owned by the model-io work) ---
pub mod chat;
pub mod gguf;
pub mod source;
pub mod tokenizer;

pub use chat::{prompt_messages, ChatError, ChatTemplate, REASONING_INSTRUCTION};
pub use gguf::{import_gguf, read_gguf, read_gguf_tokenizer, GgufError, GgufModel, ImportReport};
pub use source::{LoadError, ModelFiles, ModelSource, ResolvedModel, SourceError};
pub use tokenizer::{train_bpe, SpecialTokens, MAX_BPE_VOCAB_SIZE, TokenOffsets, Tokenizer, TokenizerError, CHATML_TEMPLATE};
