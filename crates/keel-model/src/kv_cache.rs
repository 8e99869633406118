//! Key/value cache for incremental decoding.
//!
//! Sampling re-runs the model one token at a time; without a cache each step would recompute
//! attention keys and values for the whole prefix. The cache holds detached tensors only (no
//! autograd graph is kept alive during generation).
//!
//! Storage is pre-allocated: each layer keeps `[B, kv_heads, capacity, head_dim]` buffers and
//! new positions are written in place, growing the capacity geometrically. Appending by
//! concatenation (the previous design) copied the whole prefix of every layer at every decoding
//! step, which made the cache cost quadratic in the generated length.

use std::sync::Arc;

use candle_core::Tensor;

use crate::layers::DecodeWeights;
use crate::error::{CandleContext, ModelError, ModelResult};
use crate::ops::SharedKeys;

/// Capacity granularity (positions) of the pre-allocated buffers.
const CAPACITY_STEP: usize = 64;

/// Per-layer cached keys and values, `[B, kv_heads, S, head_dim]` each (held in larger buffers).
#[derive(Debug)]
pub struct KvCache {
    /// Per layer: key and value buffers `[B, kv, capacity, D]`; the first `len` positions are valid.
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    batch: Option<usize>,
    /// The model's weights transposed for decoding, built at the prefill (see
    /// `crate::layers::DecodeWeights` for why); shared by clones.
    pub(crate) decode_weights: Option<Arc<DecodeWeights>>,
    /// Rows that are copies of one another on their first positions, after [`KvCache::select_rows`]
    /// repeated a row (see `ops::decode_attention_shared` for why decoding wants to know).
    pub(crate) shared: Option<Arc<SharedKeys>>,
}

impl Clone for KvCache {
    /// A copy that shares the cached prefix without copying it: the clone holds views of exactly
    /// the valid positions, so its first append re-allocates (capacity = length) and neither copy
    /// ever writes into positions the other reads.
    fn clone(&self) -> Self {
        let len = self.len;
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref().map(|(k, v)| match (k.narrow(2, 0, len), v.narrow(2, 0, len)) {
                    (Ok(k), Ok(v)) => (k, v),
                    // Unreachable (every buffer holds at least `len` positions); sharing the
                    // whole buffers is still correct for a clone that is only read.
                    _ => (k.clone(), v.clone()),
                })
            })
            .collect();
        KvCache {
            layers,
            len,
            batch: self.batch,
            decode_weights: self.decode_weights.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl KvCache {
    /// An empty cache for a model with `num_layers` layers (see [`crate::CausalLm::new_cache`]).
    pub fn new(num_layers: usize) -> Self {
        KvCache { layers: vec![None; num_layers], len: 0, batch: None, decode_weights: None, shared: None }
    }

    /// Number of positions cached (padding included): the `past` length the next call's
    /// attention mask must start with.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first (prefill) call.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Batch size of the cached sequences, once known.
    pub fn batch_size(&self) -> Option<usize> {
        self.batch
    }

    /// Drops everything, so the cache can be reused for a new batch.
    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.len = 0;
        self.batch = None;
        self.decode_weights = None;
        self.shared = None;
    }

    /// Keeps only the batch rows listed in `rows` (row `i` of the result is old row `rows[i]`;
    /// rows may repeat), e.g. to drop finished sequences or to expand one prompt into a group; the
    /// caller must select the same rows of its mask.
    pub fn select_rows(&mut self, rows: &[u32]) -> ModelResult<()> {
        for (i, l) in self.layers.iter_mut().enumerate() {
            if let Some((k, v)) = l {
                let ctx = || format!("selecting cache rows (layer {i})");
                let idx = Tensor::new(rows, k.device()).ctx(ctx)?;
                let k2 = k.index_select(&idx, 0).ctx(ctx)?;
                let v2 = v.index_select(&idx, 0).ctx(ctx)?;
                *l = Some((k2, v2));
            }
        }
        if self.batch.is_some() {
            self.batch = Some(rows.len());
        }
        // New rows selected from the same old row are equal on every position cached so far.
        let mut first: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        let source: Vec<u32> = rows.iter().enumerate().map(|(i, &r)| *first.entry(r).or_insert(i as u32)).collect();
        let repeats = source.iter().enumerate().any(|(i, &s)| s as usize != i);
        self.shared = (repeats && self.len > 0).then(|| Arc::new(SharedKeys { source, len: self.len }));
        Ok(())
    }

    pub(crate) fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub(crate) fn check_batch(&mut self, b: usize) -> ModelResult<()> {
        match self.batch {
            Some(x) if x != b => {
                Err(ModelError::Input(format!("batch size {b} does not match the cache's batch size {x}")))
            }
            _ => {
                self.batch = Some(b);
                Ok(())
            }
        }
    }

    /// Appends new keys/values `[B, kv, t, D]` for `layer` and returns the full `[B, kv, S, D]`
    /// (views of the layer's buffers; only positions `< S` are read through them).
    pub(crate) fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> ModelResult<(Tensor, Tensor)> {
        let past = self.len;
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| ModelError::Input(format!("cache has no layer {layer}")))?;
        let ctx = || format!("appending to cache layer {layer}");
        let (b, kv, t, d) = k.dims4().ctx(ctx)?;
        let need = past + t;
        let cap = slot.as_ref().map(|(pk, _)| pk.dim(2)).transpose().ctx(ctx)?.unwrap_or(0);
        if need > cap {
            let new_cap = need.max(2 * cap).div_ceil(CAPACITY_STEP) * CAPACITY_STEP;
            let nk = Tensor::zeros((b, kv, new_cap, d), k.dtype(), k.device()).ctx(ctx)?;
            let nv = Tensor::zeros((b, kv, new_cap, d), v.dtype(), v.device()).ctx(ctx)?;
            if let Some((pk, pv)) = slot.take() {
                if past > 0 {
                    nk.slice_set(&pk.narrow(2, 0, past).and_then(|x| x.contiguous()).ctx(ctx)?, 2, 0).ctx(ctx)?;
                    nv.slice_set(&pv.narrow(2, 0, past).and_then(|x| x.contiguous()).ctx(ctx)?, 2, 0).ctx(ctx)?;
                }
            }
            *slot = Some((nk, nv));
        }
        let (bk, bv) = slot.as_ref().ok_or_else(|| ModelError::Input(format!("cache layer {layer} is empty")))?;
        bk.slice_set(&k.contiguous().ctx(ctx)?, 2, past).ctx(ctx)?;
        bv.slice_set(&v.contiguous().ctx(ctx)?, 2, past).ctx(ctx)?;
        Ok((bk.narrow(2, 0, need).ctx(ctx)?, bv.narrow(2, 0, need).ctx(ctx)?))
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}
