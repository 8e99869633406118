//! Sentence embeddings from a BERT sentence encoder (all-MiniLM-L6-v2 and its relatives).
//!
//! The probe in [`crate::EmbeddingProbe`] is only as good as the vectors under it, and a probe
//! head trained in Python must score the same in Rust, so [`SentenceEncoder`] reproduces
//! sentence-transformers exactly: BERT forward (candle-transformers' `BertModel`), mean pooling
//! over the attention mask, L2 normalisation. The fixture test checks cosine ≥ 0.9999 against
//! vectors computed by sentence-transformers itself.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{PaddingParams, PaddingStrategy, TruncationParams, TruncationStrategy};

use crate::model_error::{ModelClassifierError, ModelClassifierResult};

/// sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2 (its `sentence_bert_config.json`).
/// The tokenizer.json shipped with the model says 128, which sentence-transformers overrides.
pub const DEFAULT_MAX_SEQ_LENGTH: usize = 256;

/// Texts encoded per forward pass: bounds memory (activations grow with batch × longest text)
/// while keeping the matrix products large enough to be efficient on a CPU.
pub const DEFAULT_BATCH_SIZE: usize = 32;

/// A BERT sentence encoder producing mean-pooled, L2-normalised embeddings.
///
/// Load it from a directory with `config.json`, `model.safetensors` and `tokenizer.json` (the
/// Hugging Face layout of `sentence-transformers/all-MiniLM-L6-v2`). Padding is forced to the
/// longest text of each batch and truncation to `max_seq_length` (256), because the tokenizer.json
/// of that model pads every batch to 128 tokens and truncates at 128, which would make long texts
/// disagree with sentence-transformers. `Send + Sync`: one encoder serves all scoring threads.
pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: tokenizers::Tokenizer,
    device: Device,
    dir: PathBuf,
    hidden_size: usize,
    max_seq_length: usize,
    batch_size: usize,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("dir", &self.dir)
            .field("dim", &self.hidden_size)
            .field("max_seq_length", &self.max_seq_length)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

fn require(path: PathBuf, what: &'static str) -> ModelClassifierResult<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(ModelClassifierError::MissingFile {
            path,
            what,
            hint: "point at a sentence-transformers model directory (e.g. all-MiniLM-L6-v2 as fetched by \
                   the repository's scripts/fetch-test-data.sh into $KEEL_ASSETS/all-minilm-l6-v2)",
        })
    }
}

/// Reads `max_seq_length` from `sentence_bert_config.json` when the directory has one.
fn max_seq_length_of(dir: &Path) -> ModelClassifierResult<Option<usize>> {
    let path = dir.join("sentence_bert_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ModelClassifierError::io("reading", &path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelClassifierError::Json {
            path: path.clone(),
            message: e.to_string(),
        })?;
    Ok(v.get("max_seq_length")
        .and_then(|m| m.as_u64())
        .map(|m| m as usize))
}

impl SentenceEncoder {
    /// Loads the encoder from a model directory on the CPU, with `max_seq_length` taken from
    /// `sentence_bert_config.json` (default [`DEFAULT_MAX_SEQ_LENGTH`]).
    pub fn load(dir: impl AsRef<Path>) -> ModelClassifierResult<Self> {
        Self::load_on(dir, &Device::Cpu)
    }

    /// [`SentenceEncoder::load`] on a given device.
    pub fn load_on(dir: impl AsRef<Path>, device: &Device) -> ModelClassifierResult<Self> {
        let dir = dir.as_ref().to_path_buf();
        let config_path = require(dir.join("config.json"), "BERT config")?;
        let weights_path = require(dir.join("model.safetensors"), "BERT weights")?;
        let tokenizer_path = require(dir.join("tokenizer.json"), "tokenizer")?;

        let config_text = std::fs::read_to_string(&config_path)
            .map_err(|e| ModelClassifierError::io("reading", &config_path, e))?;
        let config: BertConfig =
            serde_json::from_str(&config_text).map_err(|e| ModelClassifierError::Json {
                path: config_path.clone(),
                message: e.to_string(),
            })?;

        // SAFETY-free: `from_mmaped_safetensors` is unsafe only because the file could change while
        // mapped; read it into memory instead.
        let bytes = std::fs::read(&weights_path)
            .map_err(|e| ModelClassifierError::io("reading", &weights_path, e))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device).map_err(|e| {
            ModelClassifierError::candle(format!("reading {}", weights_path.display()), e)
        })?;
        let model = BertModel::load(vb, &config).map_err(|e| {
            ModelClassifierError::candle(
                format!("building BERT from {}", weights_path.display()),
                e,
            )
        })?;

        let max_seq_length = max_seq_length_of(&dir)?.unwrap_or(DEFAULT_MAX_SEQ_LENGTH);
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| {
            ModelClassifierError::Tokenizer {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            }
        })?;
        let pad_id = tokenizer
            .get_padding()
            .map_or(config.pad_token_id as u32, |p| p.pad_id);
        let pad_token = tokenizer
            .get_padding()
            .map_or_else(|| "[PAD]".to_string(), |p| p.pad_token.clone());
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                ..TruncationParams::default()
            }))
            .map_err(|e| ModelClassifierError::Tokenizer {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;

        Ok(SentenceEncoder {
            model,
            tokenizer,
            device: device.clone(),
            dir,
            hidden_size: config.hidden_size,
            max_seq_length,
            batch_size: DEFAULT_BATCH_SIZE,
        })
    }

    /// Sets how many texts go through one forward pass (results do not depend on it beyond
    /// float rounding, since padding is masked out).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// The embedding dimension (384 for all-MiniLM-L6-v2).
    pub fn dim(&self) -> usize {
        self.hidden_size
    }

    /// The model directory, recorded in probe metadata so a saved probe can find its encoder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The truncation length in tokens.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Embeds `texts`, returning one unit-norm vector of [`SentenceEncoder::dim`] floats per text,
    /// in order. Texts are processed in batches of [`DEFAULT_BATCH_SIZE`] (see
    /// [`SentenceEncoder::with_batch_size`]).
    pub fn embed(&self, texts: &[&str]) -> ModelClassifierResult<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.batch_size) {
            out.extend(self.embed_batch(chunk)?);
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[&str]) -> ModelClassifierResult<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let tok_err = |e: tokenizers::Error| ModelClassifierError::Tokenizer {
            path: self.dir.join("tokenizer.json"),
            message: e.to_string(),
        };
        let inputs: Vec<tokenizers::EncodeInput> = texts.iter().map(|t| (*t).into()).collect();
        let encodings = self.tokenizer.encode_batch(inputs, true).map_err(tok_err)?;
        let b = encodings.len();
        let t = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0);
        let mut ids = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        for e in &encodings {
            // BatchLongest padding makes every row length `t`; check rather than assume.
            if e.get_ids().len() != t {
                return Err(ModelClassifierError::Tokenizer {
                    path: self.dir.join("tokenizer.json"),
                    message: format!(
                        "batch padding failed: row of {} tokens in a batch of {t}",
                        e.get_ids().len()
                    ),
                });
            }
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let ctx = |what: &str| format!("{what} (encoder {})", self.dir.display());
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = Tensor::from_vec(ids, (b, t), &self.device)?;
            let mask = Tensor::from_vec(mask, (b, t), &self.device)?;
            let token_types = ids.zeros_like()?;
            let hidden = self.model.forward(&ids, &token_types, Some(&mask))?; // [b, t, h]
            let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // [b, t, 1]
            let summed = hidden.broadcast_mul(&m)?.sum(1)?; // [b, h]
            let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?; // [b, 1] (sentence-transformers clamps at 1e-9)
            let mean = summed.broadcast_div(&counts)?;
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?; // F.normalize eps
            mean.broadcast_div(&norm)?.to_vec2::<f32>()
        };
        run().map_err(|e| ModelClassifierError::candle(ctx("embedding a batch"), e))
    }
}

/// Cosine similarity of two vectors (0 when either is all zeros), for comparing embeddings.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64, *y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}
