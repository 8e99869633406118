//! The trainable Llama-family decoder ([`CausalLm`]), split as candle-transformers splits its
//! models: `attention` (`q_proj`…`o_proj` and attention itself), `mlp` (`gate_proj`, `up_proj`,
//! `down_proj`), `block` (one layer: norms, attention, MLP, residuals) and this module (the
//! model: embedding, the stack of blocks, final norm, output head, loading and saving). The
//! parameter inventory, copies and snapshots are in `params`, attaching LoRA adapters in
//! `adapters`, and the shared-prefix forward in `shared_prefix`.
//!
//! Every operation on the training path is differentiable (fused ops carry hand-written backward
//! passes, see [`crate::ops`]); weights are candle [`candle_core::Var`]s named exactly as in
//! Hugging Face checkpoints, so real models load and save unchanged and optimisers see one named
//! list.

mod adapters;
mod attention;
mod block;
mod mlp;
mod params;
mod shared_prefix;

pub use shared_prefix::SharedPrefixBatch;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use self::attention::{Geometry, Rows};
use self::block::Block;
use crate::config::ModelConfig;
use crate::error::{CandleContext, ModelError, ModelResult};
use crate::kv_cache::KvCache;
use crate::layers::{proj_path, DecodeWeights, Param};
use crate::lora::LoraConfig;
use crate::ops;
use crate::weights::{init_tensor, read_checkpoint_tensors, tensor_specs, write_safetensors, write_text_atomic};

/// A trainable causal language model of the Llama family (Llama, SmolLM2, Qwen2, Qwen3, Mistral).
///
/// Cloning is shallow: the clone shares weight storage (and trainability) with the original. Use
/// [`CausalLm::frozen_copy`] for an independent reference policy and [`CausalLm::inference_view`]
/// for a detached view that follows optimiser updates.
#[derive(Clone, Debug)]
pub struct CausalLm {
    pub(crate) config: ModelConfig,
    pub(crate) device: Device,
    pub(crate) dtype: DType,
    pub(crate) embed: Param,
    pub(crate) layers: Vec<Block>,
    pub(crate) norm: Param,
    pub(crate) lm_head: Option<Param>,
    pub(crate) inv_freq: Vec<f64>,
    pub(crate) lora: Option<LoraConfig>,
}

/// Converts an optional `[B, S]` attention mask to host rows of 0/1 (any numeric dtype accepted).
fn host_mask(mask: Option<&Tensor>, b: usize, s: usize) -> ModelResult<Vec<Vec<f32>>> {
    match mask {
        None => Ok(vec![vec![1.0; s]; b]),
        Some(m) => {
            let dims = m.dims();
            if dims != [b, s] {
                return Err(ModelError::Input(format!("attention mask has shape {dims:?}, expected [{b}, {s}]")));
            }
            let rows: Vec<Vec<f32>> =
                m.to_dtype(DType::F32).and_then(|t| t.to_vec2()).ctx(|| "reading the attention mask".to_string())?;
            Ok(rows.into_iter().map(|r| r.into_iter().map(|x| if x != 0.0 { 1.0 } else { 0.0 }).collect()).collect())
        }
    }
}

impl CausalLm {
    /// A randomly initialised model (Hugging Face init: normal(0, `initializer_range`) matrices,
    /// zero biases, unit norms). The same `seed` gives bit-identical weights on every machine.
    pub fn new(config: &ModelConfig, seed: u64, device: &Device, dtype: DType) -> ModelResult<Self> {
        config.validate()?;
        let mut tensors = HashMap::new();
        for spec in tensor_specs(config) {
            let t = init_tensor(&spec, seed, device, dtype)?;
            tensors.insert(spec.name, t);
        }
        Self::from_tensors_on(config.clone(), tensors, device, dtype)
    }

    /// Builds a model from named tensors (e.g. dequantised GGUF weights), keeping the tensors'
    /// device and the embedding's dtype. Missing or mis-shaped tensors are errors naming them;
    /// tensors the config does not use (e.g. `lm_head.weight` of a tied model) are ignored.
    pub fn from_tensors(config: ModelConfig, tensors: HashMap<String, Tensor>) -> ModelResult<Self> {
        let embed = tensors.get("model.embed_tokens.weight").ok_or_else(|| ModelError::MissingTensor {
            name: "model.embed_tokens.weight".into(),
            expected: vec![config.vocab_size, config.hidden_size],
        })?;
        let (device, dtype) = (embed.device().clone(), embed.dtype());
        Self::from_tensors_on(config, tensors, &device, dtype)
    }

    /// [`CausalLm::from_tensors`] moving every tensor to `device` and casting it to `dtype`.
    pub fn from_tensors_on(
        config: ModelConfig,
        mut tensors: HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
    ) -> ModelResult<Self> {
        config.validate()?;
        let mut params: HashMap<String, Param> = HashMap::new();
        for spec in tensor_specs(&config) {
            let t = tensors
                .remove(&spec.name)
                .ok_or_else(|| ModelError::MissingTensor { name: spec.name.clone(), expected: spec.shape.clone() })?;
            if t.dims() != spec.shape.as_slice() {
                return Err(ModelError::ShapeMismatch {
                    name: spec.name.clone(),
                    expected: spec.shape.clone(),
                    actual: t.dims().to_vec(),
                });
            }
            let t = t
                .to_device(device)
                .and_then(|t| t.to_dtype(dtype))
                .ctx(|| format!("moving {} to {device:?} as {dtype:?}", spec.name))?;
            params.insert(spec.name.clone(), Param::new(&t, true)?);
        }
        let unused: Vec<&String> = tensors.keys().filter(|k| !k.ends_with("rotary_emb.inv_freq")).collect();
        if !unused.is_empty() {
            tracing::debug!(count = unused.len(), first = ?unused.first(), "ignoring tensors the config does not use");
        }
        let take = |params: &mut HashMap<String, Param>, name: &str| -> ModelResult<Param> {
            params.remove(name).ok_or_else(|| ModelError::MissingTensor { name: name.to_string(), expected: vec![] })
        };
        let embed = take(&mut params, "model.embed_tokens.weight")?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Block::from_params(i, &config, &mut params))
            .collect::<ModelResult<Vec<_>>>()?;
        let norm = take(&mut params, "model.norm.weight")?;
        let lm_head = if config.tie_word_embeddings { None } else { Some(take(&mut params, "lm_head.weight")?) };
        let inv_freq = config.rope_inv_freq();
        Ok(CausalLm { config, device: device.clone(), dtype, embed, layers, norm, lm_head, inv_freq, lora: None })
    }

    /// Loads `config.json` plus `model.safetensors` (or the shards of
    /// `model.safetensors.index.json`) from `dir`, casting weights to `dtype` on `device`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> ModelResult<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let tensors = read_checkpoint_tensors(dir, device)?;
        Self::from_tensors_on(config, tensors, device, dtype)
    }

    /// Writes `model.safetensors` (Hugging Face names, current dtype) and `config.json` to `dir`.
    ///
    /// The effective weights are written: with LoRA adapters attached, each adapted projection is
    /// saved as `W + (α/r)·B·A`, so the directory loads as a plain model that computes what this
    /// one computes (a checkpoint must reproduce its model's outputs wherever it is loaded). The
    /// adapters themselves are saved with [`CausalLm::save_lora`]. Without adapters, loading the
    /// result with the same dtype gives bit-identical weights.
    pub fn save(&self, dir: &Path) -> ModelResult<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io("creating directory", dir, e))?;
        let mut tensors: HashMap<String, Tensor> =
            self.base_params().into_iter().map(|(n, p)| (n, p.var.as_tensor().detach())).collect();
        for (i, layer) in self.layers.iter().enumerate() {
            for (proj, lin) in layer.projections() {
                if lin.lora.is_some() {
                    let path = proj_path(i, proj);
                    let merged = lin.effective_weight().ctx(|| format!("merging the adapter of {path}"))?;
                    tensors.insert(format!("{path}.weight"), merged);
                }
            }
        }
        write_safetensors(&dir.join("model.safetensors"), &tensors)?;
        let mut cfg = self.config.clone();
        let dt = match self.dtype {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            _ => "float32",
        };
        cfg.extra.insert("torch_dtype".into(), dt.into());
        write_text_atomic(&dir.join("config.json"), &cfg.to_json_string())
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The weights' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// An empty KV cache for [`CausalLm::forward_cached`].
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Logits `[B, T, V]` for `input_ids` `[B, T]` (u32).
    ///
    /// `attention_mask` `[B, T]` marks real tokens with 1 and padding with 0; left padding is
    /// supported (positions come from the cumulative mask, padded keys are never attended to, and
    /// fully padded query rows yield finite values). Differentiable in every trainable weight.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> ModelResult<Tensor> {
        let h = self.run(input_ids, attention_mask, None, false)?;
        self.head(&h, false, None)
    }

    /// Final normalised hidden states `[B, T, hidden]` (input of `lm_head`; value heads read these).
    pub fn forward_hidden(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> ModelResult<Tensor> {
        self.run(input_ids, attention_mask, None, false)
    }

    /// Applies the output projection (tied embedding or `lm_head.weight`) to hidden states
    /// `[..., hidden]`, giving `[..., V]`.
    pub fn lm_head(&self, hidden: &Tensor) -> ModelResult<Tensor> {
        self.head(hidden, false, None)
    }

    /// `[B, T-1]` log-probabilities `log p(ids[t+1] | ids[..=t])`, differentiable. Padding
    /// positions are not masked here: multiply by the shifted mask in the loss.
    pub fn token_logprobs(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> ModelResult<Tensor> {
        let logits = self.forward(input_ids, attention_mask)?;
        let ids = input_ids.to_dtype(DType::U32).ctx(|| "casting input ids".to_string())?;
        ops::token_logprobs(&logits, &ids, true).ctx(|| "computing token log-probs".to_string())
    }

    /// [`CausalLm::token_logprobs`] plus the entropy (nats) of each predictive distribution, both
    /// `[B, T-1]` and aligned, from one forward pass; both differentiable.
    pub fn token_logprobs_and_entropy(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> ModelResult<(Tensor, Tensor)> {
        let logits = self.forward(input_ids, attention_mask)?;
        let ids = input_ids.to_dtype(DType::U32).ctx(|| "casting input ids".to_string())?;
        let lp = ops::token_logprobs(&logits, &ids, true).ctx(|| "computing token log-probs".to_string())?;
        let ent = ops::entropy(&logits, true).ctx(|| "computing entropies".to_string())?;
        Ok((lp, ent))
    }

    /// Incremental forward for generation: `input_ids` `[B, t]` are the new tokens,
    /// `attention_mask` `[B, past + t]` covers everything cached so far plus the new tokens.
    /// Returns logits `[B, t, V]` computed on detached weights (no autograd graph) and appends the
    /// new keys/values to `cache`. A first call with the whole (left-padded) prompt is the prefill.
    pub fn forward_cached(&self, input_ids: &Tensor, attention_mask: &Tensor, cache: &mut KvCache) -> ModelResult<Tensor> {
        let h = self.run_cached(input_ids, attention_mask, cache)?;
        let wt = cache.decode_weights.clone();
        self.head(&h, true, wt.as_ref().map(|w| &w.head))
    }

    /// [`CausalLm::forward_cached`] returning only the last position's logits `[B, V]`.
    ///
    /// Sampling needs nothing else, and the output projection is the largest matmul of a small
    /// model: projecting only the last hidden state saves `(t − 1) · H · V` multiply-adds per row at
    /// prefill and never materialises the `[B, t, V]` logits.
    pub fn forward_cached_last(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut KvCache,
    ) -> ModelResult<Tensor> {
        let h = self.run_cached(input_ids, attention_mask, cache)?;
        let t = h.dim(1).ctx(|| "reading hidden states".to_string())?;
        let last = h.narrow(1, t - 1, 1).and_then(|x| x.squeeze(1)).ctx(|| "selecting the last position".to_string())?;
        let wt = cache.decode_weights.clone();
        self.head(&last, true, wt.as_ref().map(|w| &w.head))
    }

    /// The decoder stack on detached weights continuing `cache` (after checking it belongs to a
    /// model with as many layers), for the two cached forwards.
    fn run_cached(&self, input_ids: &Tensor, attention_mask: &Tensor, cache: &mut KvCache) -> ModelResult<Tensor> {
        if cache.num_layers() != self.layers.len() {
            return Err(ModelError::Input(format!(
                "cache has {} layers, model has {}",
                cache.num_layers(),
                self.layers.len()
            )));
        }
        self.run(input_ids, Some(attention_mask), Some(cache), true)
    }

    fn head(&self, hidden: &Tensor, detach: bool, wt: Option<&Tensor>) -> ModelResult<Tensor> {
        let w = match &self.lm_head {
            Some(h) => h.get(detach),
            None => self.embed.get(detach),
        };
        let dims = hidden.dims().to_vec();
        let hsz = *dims.last().ok_or_else(|| ModelError::Input("hidden states must have rank >= 1".into()))?;
        let n = hidden.elem_count() / hsz.max(1);
        let mut out_dims = dims.clone();
        if let Some(l) = out_dims.last_mut() {
            *l = self.config.vocab_size;
        }
        hidden
            .reshape((n, hsz))
            .and_then(|x| match wt {
                Some(wt) => x.matmul(wt),
                None => x.matmul(&w.t()?),
            })
            .and_then(|y| y.reshape(out_dims))
            .ctx(|| "applying lm_head".to_string())
    }

    /// The transposed weights a KV cache decodes with, built on its first use (the prefill).
    ///
    /// `None` off the CPU, where the layout problem below does not arise.
    fn decode_weights(&self, cache: &mut KvCache) -> ModelResult<Option<Arc<DecodeWeights>>> {
        if !self.device.is_cpu() {
            return Ok(None);
        }
        if let Some(w) = &cache.decode_weights {
            return Ok(Some(w.clone()));
        }
        let layers =
            self.layers.iter().enumerate().map(|(i, l)| l.transposed_weights(i)).collect::<ModelResult<Vec<_>>>()?;
        let t = |p: &Param, name: &str| {
            p.get(true).t().and_then(|x| x.contiguous()).ctx(|| format!("transposing {name} for decoding"))
        };
        let head = match &self.lm_head {
            Some(h) => t(h, "lm_head")?,
            None => t(&self.embed, "the tied embedding")?,
        };
        let w = Arc::new(DecodeWeights { layers, head });
        cache.decode_weights = Some(w.clone());
        Ok(Some(w))
    }

    /// RoPE tables `[B, T, D/2]` for the new tokens and the `[B, S]` key mask.
    pub(crate) fn positions(
        &self,
        b: usize,
        t: usize,
        past: usize,
        mask: Option<&Tensor>,
    ) -> ModelResult<(Tensor, Tensor, Tensor)> {
        let s = past + t;
        let rows = host_mask(mask, b, s)?;
        let half = self.config.head_dim / 2;
        let mut cos = Vec::with_capacity(b * t * half);
        let mut sin = Vec::with_capacity(b * t * half);
        for row in &rows {
            let mut cum = 0f64;
            for (i, &m) in row.iter().enumerate() {
                cum += m as f64;
                if i >= past {
                    let pos = (cum - 1.0).max(0.0);
                    for f in &self.inv_freq {
                        let a = pos * f;
                        cos.push(a.cos());
                        sin.push(a.sin());
                    }
                }
            }
        }
        let flat: Vec<f32> = rows.into_iter().flatten().collect();
        let dev = &self.device;
        let cos = Tensor::from_vec(cos, (b, t, half), dev).and_then(|x| x.to_dtype(self.dtype));
        let sin = Tensor::from_vec(sin, (b, t, half), dev).and_then(|x| x.to_dtype(self.dtype));
        let km = Tensor::from_vec(flat, (b, s), dev).and_then(|x| x.to_dtype(self.dtype));
        let ctx = || "building RoPE tables".to_string();
        Ok((cos.ctx(ctx)?, sin.ctx(ctx)?, km.ctx(ctx)?))
    }

    /// The decoder stack; returns final-normed hidden states `[B, T, H]`.
    fn run(
        &self,
        input_ids: &Tensor,
        mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        detach: bool,
    ) -> ModelResult<Tensor> {
        let (b, t) = input_ids
            .dims2()
            .map_err(|_| ModelError::Input(format!("input_ids must be [B, T], got {:?}", input_ids.dims())))?;
        if t == 0 {
            return Err(ModelError::Input("input_ids has no positions".into()));
        }
        if let Some(c) = cache.as_deref_mut() {
            c.check_batch(b)?;
        }
        let past = cache.as_deref().map(|c| c.len()).unwrap_or(0);
        let wt = match cache.as_deref_mut() {
            Some(c) if detach => self.decode_weights(c)?,
            _ => None,
        };
        let (cos, sin, key_mask) = self.positions(b, t, past, mask)?;
        let x = self.embed_rows(input_ids, detach)?;
        let mut geometry = Geometry::Dense { rows: Rows { b, t, s: past + t, cos, sin, key_mask }, cache };
        let x = self.layers_forward(x, &mut geometry, detach, wt.as_deref())?;
        if let Geometry::Dense { cache: Some(c), .. } = geometry {
            c.advance(t);
        }
        self.final_norm(&x, b, t, detach)
    }

    /// The final RMSNorm over token rows `[b·t, H]`, shaped `[b, t, H]`.
    pub(crate) fn final_norm(&self, x: &Tensor, b: usize, t: usize, detach: bool) -> ModelResult<Tensor> {
        ops::rms_norm(x, &self.norm.get(detach), self.config.rms_norm_eps)
            .and_then(|h| h.reshape((b, t, self.config.hidden_size)))
            .ctx(|| "final norm".into())
    }

    /// Embeddings `[N, H]` of `ids` (any shape, flattened), after checking every id fits the vocabulary.
    pub(crate) fn embed_rows(&self, input_ids: &Tensor, detach: bool) -> ModelResult<Tensor> {
        let ids = input_ids.to_dtype(DType::U32).and_then(|x| x.flatten_all()).ctx(|| "reading input ids".into())?;
        let max_id = ids.max(0).and_then(|m| m.to_scalar::<u32>()).ctx(|| "reading input ids".into())?;
        if max_id as usize >= self.config.vocab_size {
            return Err(ModelError::Input(format!("token id {max_id} >= vocab_size {}", self.config.vocab_size)));
        }
        self.embed.get(detach).index_select(&ids, 0).ctx(|| "embedding lookup".into())
    }

    /// The decoder layers over token rows `x` `[N, H]` laid out as `geometry` says; returns the
    /// last layer's output `[N, H]` (before the final norm).
    ///
    /// Everything but attention is row-wise (norms, projections, SwiGLU, residuals), so it runs
    /// once over all rows whatever the geometry; only attention looks across rows.
    pub(crate) fn layers_forward(
        &self,
        mut x: Tensor,
        geometry: &mut Geometry<'_>,
        detach: bool,
        wt: Option<&DecodeWeights>,
    ) -> ModelResult<Tensor> {
        for (li, block) in self.layers.iter().enumerate() {
            let block_wt = wt.and_then(|w| w.layers.get(li));
            x = block.forward(li, x, geometry, &self.config, detach, block_wt)?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).and_then(|d| d.abs()).and_then(|d| d.flatten_all()).and_then(|d| d.max(0));
        d.and_then(|d| d.to_scalar::<f32>()).expect("difference of two same-shaped f32 tensors")
    }

    /// Decoding past several capacity steps of the pre-allocated cache, with a clone that
    /// branches off mid-way, matches the full forward; `forward_cached_last` returns exactly the
    /// last position of `forward_cached`.
    #[test]
    fn preallocated_cache_growth_clone_and_last_position() {
        let cfg = ModelConfig::preset("tiny-300k", 64).expect("preset exists");
        let model = CausalLm::new(&cfg, 3, &Device::Cpu, DType::F32).expect("model builds");
        let (b, total, prefill) = (2usize, 150usize, 40usize);
        let ids: Vec<u32> = (0..b * total).map(|i| ((i * 37 + 11) % 64) as u32).collect();
        let x = Tensor::from_vec(ids, (b, total), &Device::Cpu).expect("ids");
        // Row 0 is left-padded by 3 positions.
        let mut m = vec![1u8; b * total];
        m[..3].iter_mut().for_each(|v| *v = 0);
        let mask = Tensor::from_vec(m, (b, total), &Device::Cpu).expect("mask");
        let full = model.forward(&x, Some(&mask)).expect("full forward");

        let mut cache = model.new_cache();
        let first = model
            .forward_cached(&x.narrow(1, 0, prefill).unwrap(), &mask.narrow(1, 0, prefill).unwrap(), &mut cache)
            .expect("prefill");
        assert!(max_abs_diff(&first, &full.narrow(1, 0, prefill).unwrap()) < 1e-4);
        let mut branch: Option<(KvCache, usize)> = None;
        for t in prefill..total {
            let step_ids = x.narrow(1, t, 1).unwrap();
            let step_mask = mask.narrow(1, 0, t + 1).unwrap();
            let mut probe = cache.clone();
            let all = model.forward_cached(&step_ids, &step_mask, &mut probe).expect("decode step");
            let last = model.forward_cached_last(&step_ids, &step_mask, &mut cache).expect("decode step (last)");
            assert_eq!(last.dims(), &[b, 64]);
            assert_eq!(max_abs_diff(&last, &all.squeeze(1).unwrap()), 0.0, "position {t}");
            let want = full.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
            assert!(max_abs_diff(&last, &want) < 1e-4, "position {t} vs full forward");
            if t == 70 {
                branch = Some((cache.clone(), t + 1));
            }
        }
        assert_eq!(cache.len(), total);
        // The clone taken at position 71 still decodes correctly although the original cache kept
        // writing into its buffers afterwards.
        let (mut br, at) = branch.expect("branch taken");
        let again = model
            .forward_cached_last(&x.narrow(1, at, 1).unwrap(), &mask.narrow(1, 0, at + 1).unwrap(), &mut br)
            .expect("branch step");
        let want = full.narrow(1, at, 1).unwrap().squeeze(1).unwrap();
        assert!(max_abs_diff(&again, &want) < 1e-4);
    }
}
