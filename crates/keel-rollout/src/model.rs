//! The two small traits the engine is generic over, so that it can be tested with toy models and
//! driven by keel-model's decoder (or any other) without depending on it.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::error::BoxError;

/// A causal decoder with an incremental (KV-cached) forward pass: all the engine needs from a model.
///
/// # Contract
///
/// * `input_ids`: `u32` tensor `[B, t]` — the whole (left-padded) prompt batch at prefill, then one
///   token per row (`t = 1`) at each decode step.
/// * `attention_mask`: `u8` tensor `[B, past + t]` covering every position seen so far (`past` is
///   the number of positions already in `cache`): `1` for a real token, `0` for padding. Prompts are
///   padded on the **left**; a row that has finished generating is fed the pad token with mask `0`.
///   The model must mask every `0` key and must derive position ids from the mask (a token's position
///   is the number of real tokens before it), so a padded row computes exactly what the same prompt
///   alone would — that is what makes samples independent of batch composition.
/// * returns logits `[B, t, V]` in any float dtype (converted to `f32` by the engine). The engine
///   calls [`DecodeModel::forward_cached_last`], whose default implementation narrows this output.
pub trait DecodeModel: Send + Sync {
    /// Per-batch key/value cache, created fresh for every generated batch.
    type Cache;

    /// An empty cache for a batch of `batch` rows.
    fn new_cache(&self, batch: usize) -> candle_core::Result<Self::Cache>;

    /// Runs the model on the new positions, appending their keys/values to `cache`.
    fn forward_cached(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut Self::Cache,
    ) -> candle_core::Result<Tensor>;

    /// Like [`DecodeModel::forward_cached`] but returns only the last position's logits `[B, V]`,
    /// which is all sampling needs. The default narrows the full output; a model should override it
    /// to apply its output projection to the last hidden state only, since at prefill the full
    /// `[B, T, V]` logits are large (16 × 256 × 49k floats ≈ 800 MB) and thrown away.
    fn forward_cached_last(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut Self::Cache,
    ) -> candle_core::Result<Tensor> {
        let logits = self.forward_cached(input_ids, attention_mask, cache)?;
        let (_, t, _) = logits.dims3()?;
        if t == 0 {
            candle_core::bail!("forward_cached returned logits for zero positions");
        }
        logits.narrow(1, t - 1, 1)?.squeeze(1)
    }

    /// Whether [`DecodeModel::select_cache_rows`] works, so the engine can prefill each distinct
    /// prompt once and copy its cache rows to all of its samples.
    fn can_select_cache_rows(&self) -> bool {
        false
    }

    /// Rebuilds `cache` so that its row `i` is the old row `rows[i]` (rows may repeat): the `n`
    /// samples of a prompt then start from one prefill of it. Why: a GRPO batch prefills every
    /// prompt `n` times otherwise, all identical work. Only called when
    /// [`DecodeModel::can_select_cache_rows`] is true.
    fn select_cache_rows(&self, cache: &mut Self::Cache, rows: &[u32]) -> candle_core::Result<()> {
        let _ = (cache, rows);
        candle_core::bail!("this model cannot select KV-cache rows")
    }

    /// Vocabulary size `V` (the last dimension of the logits).
    fn vocab_size(&self) -> usize;

    /// The longest sequence the model accepts, prompt plus generated tokens: its context window
    /// (`max_position_embeddings` of a Hugging Face config). The engine refuses a prompt whose
    /// length plus `max_new_tokens` exceeds it before any allocation, because attention and the
    /// KV cache grow with the sequence and an oversized prompt would otherwise exhaust memory.
    /// `None` (the default) means no limit, as for the toy models.
    fn context_window(&self) -> Option<usize> {
        None
    }

    /// Device the model's weights live on; input tensors are created there.
    fn device(&self) -> &Device;
}

/// Text ↔ token ids, plus the end-of-sequence ids that terminate a completion.
///
/// Errors are boxed so that any tokenizer crate can implement it.
pub trait TextCodec: Send + Sync {
    /// Token ids of an already rendered prompt, exactly as they are fed to the model (including a
    /// BOS token if the model expects one).
    fn encode(&self, text: &str) -> Result<Vec<u32>, BoxError>;

    /// Text of generated ids, with special tokens skipped.
    fn decode(&self, ids: &[u32]) -> Result<String, BoxError>;

    /// Token ids that end a completion (e.g. `<|im_end|>`, `</s>`).
    fn eos_ids(&self) -> &[u32];

    /// Token id fed at padded positions; its value never matters because those positions are masked,
    /// but it must be a valid id for the embedding table.
    fn pad_id(&self) -> u32 {
        self.eos_ids().first().copied().unwrap_or(0)
    }
}

impl<T: DecodeModel + ?Sized> DecodeModel for Arc<T> {
    type Cache = T::Cache;
    fn new_cache(&self, batch: usize) -> candle_core::Result<Self::Cache> {
        (**self).new_cache(batch)
    }
    fn forward_cached(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut Self::Cache,
    ) -> candle_core::Result<Tensor> {
        (**self).forward_cached(input_ids, attention_mask, cache)
    }
    fn forward_cached_last(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut Self::Cache,
    ) -> candle_core::Result<Tensor> {
        (**self).forward_cached_last(input_ids, attention_mask, cache)
    }
    fn can_select_cache_rows(&self) -> bool {
        (**self).can_select_cache_rows()
    }
    fn select_cache_rows(&self, cache: &mut Self::Cache, rows: &[u32]) -> candle_core::Result<()> {
        (**self).select_cache_rows(cache, rows)
    }
    fn vocab_size(&self) -> usize {
        (**self).vocab_size()
    }
    fn context_window(&self) -> Option<usize> {
        (**self).context_window()
    }
    fn device(&self) -> &Device {
        (**self).device()
    }
}

impl<T: TextCodec + ?Sized> TextCodec for Arc<T> {
    fn encode(&self, text: &str) -> Result<Vec<u32>, BoxError> {
        (**self).encode(text)
    }
    fn decode(&self, ids: &[u32]) -> Result<String, BoxError> {
        (**self).decode(ids)
    }
    fn eos_ids(&self) -> &[u32] {
        (**self).eos_ids()
    }
    fn pad_id(&self) -> u32 {
        (**self).pad_id()
    }
}
