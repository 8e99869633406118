//! The trainable Llama-family decoder ([`CausalLm`]).
//!
//! Every operation on the training path is differentiable (fused ops carry hand-written backward
//! passes, see [`crate::ops`]); weights are candle [`Var`]s named exactly as in Hugging Face
//! checkpoints, so real models load and save unchanged and optimisers see one named list.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use crate::config::ModelConfig;
use crate::error::{CandleContext, ModelError, ModelResult};
use crate::kv_cache::KvCache;
use crate::lora::LoraConfig;
use crate::ops;
use crate::weights::{init_tensor, read_checkpoint_tensors, tensor_specs, write_safetensors, write_text_atomic, WeightSnapshot};

/// One weight: the variable that owns the storage and whether the optimiser may update it.
#[derive(Clone, Debug)]
pub(crate) struct Param {
    pub(crate) var: Var,
    pub(crate) train: bool,
}

impl Param {
    pub(crate) fn new(t: &Tensor, train: bool) -> ModelResult<Self> {
        // Var::from_tensor copies non-variable tensors into fresh, contiguous storage.
        Ok(Param { var: Var::from_tensor(&t.detach()).ctx(|| "creating a variable".to_string())?, train })
    }

    /// The tensor to compute with: tracked by autograd only when trainable and not in inference.
    #[inline]
    pub(crate) fn get(&self, detach: bool) -> Tensor {
        if self.train && !detach {
            self.var.as_tensor().clone()
        } else {
            self.var.as_tensor().detach()
        }
    }
}

/// A LoRA pair on one projection: `y += scale · (x Aᵀ) Bᵀ`.
#[derive(Clone, Debug)]
pub(crate) struct LoraPair {
    pub(crate) a: Param,
    pub(crate) b: Param,
    pub(crate) scale: f64,
}

/// A projection with optional bias and optional LoRA adapter.
#[derive(Clone, Debug)]
pub(crate) struct Linear {
    pub(crate) w: Param,
    pub(crate) b: Option<Param>,
    pub(crate) lora: Option<LoraPair>,
}

impl Linear {
    /// `W + scale·B·A` (detached): the weight a merged projection would hold.
    pub(crate) fn effective_weight(&self) -> candle_core::Result<Tensor> {
        let w = self.w.var.as_tensor().detach();
        match &self.lora {
            Some(lp) => {
                let delta = lp.b.var.as_tensor().detach().matmul(&lp.a.var.as_tensor().detach())?;
                w + (delta * lp.scale)?
            }
            None => Ok(w),
        }
    }

    /// `x`: `[N, in]` contiguous → `[N, out]`. `wt`, when given, is this projection's weight
    /// already transposed to a contiguous `[in, out]` (decoding, see [`DecodeWeights`]).
    fn forward(&self, x: &Tensor, detach: bool, wt: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let mut y = match wt {
            Some(wt) => x.matmul(wt)?,
            None => x.matmul(&self.w.get(detach).t()?)?,
        };
        if let Some(b) = &self.b {
            y = y.broadcast_add(&b.get(detach))?;
        }
        if let Some(l) = &self.lora {
            let down = x.matmul(&l.a.get(detach).t()?)?;
            let upd = down.matmul(&l.b.get(detach).t()?)?;
            y = (y + (upd * l.scale)?)?;
        }
        Ok(y)
    }
}

/// Every projection weight of a model transposed to a contiguous `[in, out]`, for decoding.
///
/// Why: the decoder multiplies `x · Wᵀ` with `W` stored `[out, in]` (Hugging Face layout). For a
/// row-major result `gemm` computes the transposed problem, where `W` is the left operand with
/// unit column stride, and re-packs the whole weight with a scalar strided gather on every call.
/// At a decoding step (`x` has a few dozen rows) that copy costs more than the arithmetic: it was
/// half of all decode time in `perf` (`gemm_common::…::vectorize::imp_fastcall`, a `vmovss`
/// loop), and a `[16, 1024] × [1024, 256]` product took 555 µs against 69 µs with the weight
/// pre-transposed. A KV cache therefore holds these copies, built once at its prefill (one pass
/// over the weights) and shared by its clones. A cache belongs to the weights it was filled with
/// anyway (its keys and values were computed by them), so the copies cannot go stale while the
/// cache is valid; `KvCache::reset` drops them. Memory: one extra copy of the weights per live
/// cache.
#[derive(Debug)]
pub(crate) struct DecodeWeights {
    /// Per layer, q, k, v, o, gate, up, down (see [`PROJECTIONS`]), each `[in, out]`.
    pub(crate) layers: Vec<[Tensor; 7]>,
    /// The output projection `[hidden, vocab]`.
    pub(crate) head: Tensor,
}

/// The projections of one decoder layer, in a fixed order shared with LoRA target names.
pub(crate) const PROJECTIONS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

#[derive(Clone, Debug)]
pub(crate) struct Layer {
    /// q, k, v, o, gate, up, down (see [`PROJECTIONS`]).
    pub(crate) proj: [Linear; 7],
    pub(crate) q_norm: Option<Param>,
    pub(crate) k_norm: Option<Param>,
    pub(crate) in_norm: Param,
    pub(crate) post_norm: Param,
}

/// Hugging Face module path of projection `j` in layer `i`.
pub(crate) fn proj_path(i: usize, j: usize) -> String {
    let group = if j < 4 { "self_attn" } else { "mlp" };
    format!("model.layers.{i}.{group}.{}", PROJECTIONS[j])
}

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
    pub(crate) layers: Vec<Layer>,
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
        let mut take = |name: &str| -> ModelResult<Param> {
            params.remove(name).ok_or_else(|| ModelError::MissingTensor { name: name.to_string(), expected: vec![] })
        };
        let embed = take("model.embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let mut lin = |j: usize| -> ModelResult<Linear> {
                let p = proj_path(i, j);
                let w = take(&format!("{p}.weight"))?;
                let has_bias = match j {
                    0..=2 => config.qkv_bias,
                    3 => config.o_bias,
                    _ => config.mlp_bias,
                };
                let b = if has_bias { Some(take(&format!("{p}.bias"))?) } else { None };
                Ok(Linear { w, b, lora: None })
            };
            let proj = [lin(0)?, lin(1)?, lin(2)?, lin(3)?, lin(4)?, lin(5)?, lin(6)?];
            let p = format!("model.layers.{i}");
            let (q_norm, k_norm) = if config.qk_norm {
                (
                    Some(take(&format!("{p}.self_attn.q_norm.weight"))?),
                    Some(take(&format!("{p}.self_attn.k_norm.weight"))?),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                proj,
                q_norm,
                k_norm,
                in_norm: take(&format!("{p}.input_layernorm.weight"))?,
                post_norm: take(&format!("{p}.post_attention_layernorm.weight"))?,
            });
        }
        let norm = take("model.norm.weight")?;
        let lm_head = if config.tie_word_embeddings { None } else { Some(take("lm_head.weight")?) };
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
            for (j, lin) in layer.proj.iter().enumerate() {
                if lin.lora.is_some() {
                    let name = format!("{}.weight", proj_path(i, j));
                    tensors.insert(name, lin.effective_weight().ctx(|| format!("merging the adapter of {}", proj_path(i, j)))?);
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

    /// Base-model parameters with their Hugging Face names, in inventory order.
    pub(crate) fn base_params(&self) -> Vec<(String, &Param)> {
        let mut v = vec![("model.embed_tokens.weight".to_string(), &self.embed)];
        for (i, l) in self.layers.iter().enumerate() {
            for (j, lin) in l.proj.iter().enumerate() {
                let p = proj_path(i, j);
                v.push((format!("{p}.weight"), &lin.w));
                if let Some(b) = &lin.b {
                    v.push((format!("{p}.bias"), b));
                }
            }
            if let (Some(q), Some(k)) = (&l.q_norm, &l.k_norm) {
                v.push((format!("model.layers.{i}.self_attn.q_norm.weight"), q));
                v.push((format!("model.layers.{i}.self_attn.k_norm.weight"), k));
            }
            v.push((format!("model.layers.{i}.input_layernorm.weight"), &l.in_norm));
            v.push((format!("model.layers.{i}.post_attention_layernorm.weight"), &l.post_norm));
        }
        v.push(("model.norm.weight".to_string(), &self.norm));
        if let Some(h) = &self.lm_head {
            v.push(("lm_head.weight".to_string(), h));
        }
        v
    }

    /// LoRA parameters named `<module>.lora_A.weight` / `<module>.lora_B.weight`.
    pub(crate) fn lora_params(&self) -> Vec<(String, &Param)> {
        let mut v = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (j, lin) in l.proj.iter().enumerate() {
                if let Some(lp) = &lin.lora {
                    let p = proj_path(i, j);
                    v.push((format!("{p}.lora_A.weight"), &lp.a));
                    v.push((format!("{p}.lora_B.weight"), &lp.b));
                }
            }
        }
        v
    }

    /// All parameters (base and adapters).
    pub(crate) fn all_params(&self) -> Vec<(String, &Param)> {
        let mut v = self.base_params();
        v.extend(self.lora_params());
        v
    }

    pub(crate) fn for_each_param_mut(&mut self, f: &mut dyn FnMut(&mut Param) -> ModelResult<()>) -> ModelResult<()> {
        f(&mut self.embed)?;
        for l in &mut self.layers {
            for lin in &mut l.proj {
                f(&mut lin.w)?;
                if let Some(b) = &mut lin.b {
                    f(b)?;
                }
                if let Some(lp) = &mut lin.lora {
                    f(&mut lp.a)?;
                    f(&mut lp.b)?;
                }
            }
            if let Some(q) = &mut l.q_norm {
                f(q)?;
            }
            if let Some(k) = &mut l.k_norm {
                f(k)?;
            }
            f(&mut l.in_norm)?;
            f(&mut l.post_norm)?;
        }
        f(&mut self.norm)?;
        if let Some(h) = &mut self.lm_head {
            f(h)?;
        }
        Ok(())
    }

    /// The trainable variables with their names, sorted by name: hand these to the optimiser.
    /// With LoRA attached only the adapters are listed (base weights are frozen).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v: Vec<(String, Var)> =
            self.all_params().into_iter().filter(|(_, p)| p.train).map(|(n, p)| (n, p.var.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The trainable variables (same order as [`CausalLm::named_vars`]), e.g. for `candle_nn::AdamW::new`.
    pub fn trainable_vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// A candle [`VarMap`] holding the trainable variables under their names (shared storage), for
    /// code written against `VarMap`/`VarBuilder`.
    pub fn var_map(&self) -> ModelResult<VarMap> {
        let vm = VarMap::new();
        {
            let data = vm.data();
            let mut guard = data.lock().map_err(|_| ModelError::Input("VarMap lock poisoned".into()))?;
            for (n, v) in self.named_vars() {
                guard.insert(n, v);
            }
        }
        Ok(vm)
    }

    /// Every weight tensor (base and adapters) by name, detached; shares storage with the model.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.all_params().into_iter().map(|(n, p)| (n, p.var.as_tensor().detach())).collect()
    }

    /// Total number of scalar weights (base and adapters).
    pub fn num_parameters(&self) -> usize {
        self.all_params().iter().map(|(_, p)| p.var.as_tensor().elem_count()).sum()
    }

    /// Number of scalar weights the optimiser updates.
    pub fn num_trainable_parameters(&self) -> usize {
        self.all_params().iter().filter(|(_, p)| p.train).map(|(_, p)| p.var.as_tensor().elem_count()).sum()
    }

    /// An independent deep copy whose weights are detached and frozen: the reference policy for
    /// KL penalties. Later updates to `self` never reach it; its forward builds no autograd graph.
    pub fn frozen_copy(&self) -> ModelResult<Self> {
        self.detached_copy(false)
    }

    /// An independent deep copy that keeps which weights are trainable: a scratch model into which
    /// other values of the trainable weights (an EMA θ̄) can be loaded without touching `self`.
    pub fn deep_copy(&self) -> ModelResult<Self> {
        self.detached_copy(true)
    }

    /// A copy with fresh detached weights, trainable where `self`'s are if `keep_trainable`.
    fn detached_copy(&self, keep_trainable: bool) -> ModelResult<Self> {
        let mut c = self.clone();
        c.for_each_param_mut(&mut |p| {
            *p = Param::new(&p.var.as_tensor().detach(), keep_trainable && p.train)?;
            Ok(())
        })?;
        Ok(c)
    }

    /// A cheap view sharing weight storage with `self` but computing without autograd: use it for
    /// generation in the learner's thread; it sees every in-place optimiser update.
    pub fn inference_view(&self) -> Self {
        let mut c = self.clone();
        // The closure never fails.
        let _ = c.for_each_param_mut(&mut |p| {
            p.train = false;
            Ok(())
        });
        c
    }

    /// A copy of every weight (base and adapters), for publishing to a policy store.
    pub fn snapshot(&self) -> ModelResult<Arc<WeightSnapshot>> {
        Ok(Arc::new(WeightSnapshot::from_tensors(self.named_tensors())?))
    }

    /// Overwrites the weights in place from a snapshot with the same names and shapes (every view
    /// sharing storage with `self` sees the change). Missing or mis-shaped tensors are errors.
    pub fn load_snapshot(&self, snapshot: &WeightSnapshot) -> ModelResult<()> {
        let params = self.all_params();
        // Validate everything first so a bad snapshot leaves the model untouched.
        for (name, p) in &params {
            let t = snapshot.get(name).ok_or_else(|| ModelError::MissingTensor {
                name: name.clone(),
                expected: p.var.as_tensor().dims().to_vec(),
            })?;
            if t.dims() != p.var.as_tensor().dims() {
                return Err(ModelError::ShapeMismatch {
                    name: name.clone(),
                    expected: p.var.as_tensor().dims().to_vec(),
                    actual: t.dims().to_vec(),
                });
            }
        }
        for (name, p) in &params {
            if let Some(t) = snapshot.get(name) {
                let t = t.to_device(&self.device).and_then(|t| t.to_dtype(self.dtype)).ctx(|| format!("casting {name}"))?;
                p.var.set(&t).ctx(|| format!("loading snapshot tensor {name}"))?;
            }
        }
        Ok(())
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
        if cache.num_layers() != self.layers.len() {
            return Err(ModelError::Input(format!(
                "cache has {} layers, model has {}",
                cache.num_layers(),
                self.layers.len()
            )));
        }
        let h = self.run(input_ids, Some(attention_mask), Some(cache), true)?;
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
        if cache.num_layers() != self.layers.len() {
            return Err(ModelError::Input(format!(
                "cache has {} layers, model has {}",
                cache.num_layers(),
                self.layers.len()
            )));
        }
        let h = self.run(input_ids, Some(attention_mask), Some(cache), true)?;
        let t = h.dim(1).ctx(|| "reading hidden states".to_string())?;
        let last = h.narrow(1, t - 1, 1).and_then(|x| x.squeeze(1)).ctx(|| "selecting the last position".to_string())?;
        let wt = cache.decode_weights.clone();
        self.head(&last, true, wt.as_ref().map(|w| &w.head))
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
        let t = |p: &Param, name: &str| p.get(true).t().and_then(|x| x.contiguous()).ctx(|| format!("transposing {name} for decoding"));
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let mut ws: Vec<Tensor> = Vec::with_capacity(7);
            for (j, lin) in l.proj.iter().enumerate() {
                ws.push(t(&lin.w, &proj_path(i, j))?);
            }
            let arr: [Tensor; 7] = ws.try_into().map_err(|_| ModelError::Input("a layer has 7 projections".into()))?;
            layers.push(arr);
        }
        let head = match &self.lm_head {
            Some(h) => t(h, "lm_head")?,
            None => t(&self.embed, "the tied embedding")?,
        };
        let w = Arc::new(DecodeWeights { layers, head });
        cache.decode_weights = Some(w.clone());
        Ok(Some(w))
    }

    /// RoPE tables `[B, T, D/2]` for the new tokens and the `[B, S]` key mask.
    fn positions(
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
    fn final_norm(&self, x: &Tensor, b: usize, t: usize, detach: bool) -> ModelResult<Tensor> {
        ops::rms_norm(x, &self.norm.get(detach), self.config.rms_norm_eps)
            .and_then(|h| h.reshape((b, t, self.config.hidden_size)))
            .ctx(|| "final norm".into())
    }

    /// Embeddings `[N, H]` of `ids` (any shape, flattened), after checking every id fits the vocabulary.
    fn embed_rows(&self, input_ids: &Tensor, detach: bool) -> ModelResult<Tensor> {
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
    fn layers_forward(
        &self,
        mut x: Tensor,
        geometry: &mut Geometry<'_>,
        detach: bool,
        wt: Option<&DecodeWeights>,
    ) -> ModelResult<Tensor> {
        let eps = self.config.rms_norm_eps;
        let wt_of = |li: usize, j: usize| wt.map(|w| &w.layers[li][j]);
        for (li, layer) in self.layers.iter().enumerate() {
            let step = |what: &str| format!("layer {li}: {what}");
            let hcur = ops::rms_norm(&x, &layer.in_norm.get(detach), eps).ctx(|| step("input_layernorm"))?;
            let p = &layer.proj;
            let q = p[0].forward(&hcur, detach, wt_of(li, 0)).ctx(|| step("q_proj"))?;
            let k = p[1].forward(&hcur, detach, wt_of(li, 1)).ctx(|| step("k_proj"))?;
            let v = p[2].forward(&hcur, detach, wt_of(li, 2)).ctx(|| step("v_proj"))?;
            let attn = match geometry {
                Geometry::Dense { rows, cache } => {
                    let (q, k, v) = self.heads(layer, &q, &k, &v, rows, detach).ctx(|| step("attention heads"))?;
                    let decoding = rows.t == 1 && cache.is_some();
                    let shared = cache.as_deref().and_then(|c| c.shared.clone());
                    let (k, v) = match cache.as_deref_mut() {
                        Some(c) => c.append(li, k.detach(), v.detach())?,
                        None => (k, v),
                    };
                    if decoding {
                        // One new token per sequence: the fused single-query kernel over the cache
                        // buffers (see `ops::decode_attention` for why), reading the prompt keys
                        // that samples share from one copy.
                        let cfg = &self.config;
                        let (b, nh, hd) = (rows.b, cfg.num_attention_heads, cfg.head_dim);
                        let scale = self.attention_scale();
                        q.reshape((b, nh, hd))
                            .and_then(|q| {
                                ops::decode_attention_shared(&q, &k, &v, &rows.key_mask, scale, shared.as_deref())
                            })
                            .and_then(|a| a.reshape((b, nh * hd)))
                    } else {
                        self.attend(&q, &k, &v, rows)
                    }
                    .ctx(|| step("attention"))?
                }
                Geometry::Shared { prefix, suffix, group } => {
                    let n_prefix = prefix.b * prefix.t;
                    let split = |t: &Tensor| -> candle_core::Result<(Tensor, Tensor)> {
                        Ok((t.narrow(0, 0, n_prefix)?, t.narrow(0, n_prefix, t.dim(0)? - n_prefix)?))
                    };
                    let ((qp, qs), (kp, ks), (vp, vs)) = (
                        split(&q).ctx(|| step("split"))?,
                        split(&k).ctx(|| step("split"))?,
                        split(&v).ctx(|| step("split"))?,
                    );
                    let (qp, kp, vp) = self.heads(layer, &qp, &kp, &vp, prefix, detach).ctx(|| step("prefix heads"))?;
                    let (qs, ks, vs) =
                        self.heads(layer, &qs, &ks, &vs, suffix, detach).ctx(|| step("continuation heads"))?;
                    // Each continuation sees its prompt's keys and values (gathered, so their
                    // gradients sum over the group in backward) followed by its own.
                    let (kfull, vfull) = (|| -> candle_core::Result<(Tensor, Tensor)> {
                        Ok((
                            Tensor::cat(&[&kp.index_select(group, 0)?, &ks], 2)?,
                            Tensor::cat(&[&vp.index_select(group, 0)?, &vs], 2)?,
                        ))
                    })()
                    .ctx(|| step("gathering prompt keys"))?;
                    let ap = self.attend(&qp, &kp, &vp, prefix).ctx(|| step("prefix attention"))?;
                    let as_ = self.attend(&qs, &kfull, &vfull, suffix).ctx(|| step("continuation attention"))?;
                    Tensor::cat(&[&ap, &as_], 0).ctx(|| step("joining attention rows"))?
                }
            };
            let o = p[3].forward(&attn, detach, wt_of(li, 3)).ctx(|| step("o_proj"))?;
            x = (x + o).ctx(|| step("residual"))?;
            let h2 = ops::rms_norm(&x, &layer.post_norm.get(detach), eps).ctx(|| step("post_attention_layernorm"))?;
            let mlp = (|| -> candle_core::Result<Tensor> {
                let g = p[4].forward(&h2, detach, wt_of(li, 4))?;
                let u = p[5].forward(&h2, detach, wt_of(li, 5))?;
                p[6].forward(&ops::swiglu(&g, &u)?, detach, wt_of(li, 6))
            })()
            .ctx(|| step("mlp"))?;
            x = (x + mlp).ctx(|| step("residual"))?;
        }
        Ok(x)
    }

    /// `1/√d`, the attention logit scale.
    fn attention_scale(&self) -> f64 {
        1.0 / (self.config.head_dim as f64).sqrt()
    }

    /// Projected rows `[b·t, heads·d]` → per-head `[b, heads, t, d]` (contiguous) queries, keys and
    /// values, with the optional q/k norms (Qwen3) and RoPE at `rows`' positions applied.
    fn heads(
        &self,
        layer: &Layer,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rows: &Rows,
        detach: bool,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let cfg = &self.config;
        let (b, t, nh, nkv, hd) = (rows.b, rows.t, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let (q, k, v) = (q.reshape((b, t, nh, hd))?, k.reshape((b, t, nkv, hd))?, v.reshape((b, t, nkv, hd))?);
        let (q, k) = match (&layer.q_norm, &layer.k_norm) {
            (Some(qn), Some(kn)) => (
                ops::rms_norm(&q, &qn.get(detach), cfg.rms_norm_eps)?,
                ops::rms_norm(&k, &kn.get(detach), cfg.rms_norm_eps)?,
            ),
            _ => (q, k),
        };
        let q = ops::rope(&q, &rows.cos, &rows.sin)?;
        let k = ops::rope(&k, &rows.cos, &rows.sin)?;
        let heads_first = |x: Tensor| x.transpose(1, 2).and_then(|x| x.contiguous());
        Ok((heads_first(q)?, heads_first(k)?, heads_first(v)?))
    }

    /// Causal attention of `rows.t` queries per sequence over `rows.s` keys (the last `t` of
    /// which are the queries' own positions), as `[b·t, heads·d]` rows ready for `o_proj`.
    ///
    /// Grouped-query attention without repeating K/V: the `rep` query heads sharing one K/V head
    /// are stacked along the query axis, so one batched matmul serves them all.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, rows: &Rows) -> candle_core::Result<Tensor> {
        let cfg = &self.config;
        let (b, t, s, nh, nkv, hd) =
            (rows.b, rows.t, rows.s, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let rep = nh / nkv;
        let qg = q.reshape((b, nkv, rep * t, hd))?;
        let scores = qg.matmul(&k.t()?)?.reshape((b, nh, t, s))?;
        let probs = ops::masked_softmax(&scores, &rows.key_mask, self.attention_scale(), true)?;
        let out = probs.reshape((b, nkv, rep * t, s))?.matmul(v)?;
        out.reshape((b, nh, t, hd))?.transpose(1, 2)?.contiguous()?.reshape((b * t, nh * hd))
    }

    /// Hidden states `[B, C, H]` of the continuation rows of `batch` (see [`SharedPrefixBatch`]),
    /// equal (up to float rounding) to running [`CausalLm::forward_hidden`] on every prompt ⧺
    /// continuation sequence and keeping the continuation positions. Differentiable.
    ///
    /// Why: a GRPO batch holds `n` completions of every prompt, and the prompt's positions compute
    /// the same activations in each of them (attention is causal). Running each prompt once and
    /// letting its completions attend to its keys and values removes `(n − 1)/n` of the prompt
    /// tokens from every projection, norm and MLP, forward and backward: with 22-token prompts,
    /// 64-token completions and `n = 8`, a fifth of the learner's matmul work.
    pub fn forward_hidden_shared(&self, batch: &SharedPrefixBatch) -> ModelResult<Tensor> {
        let (g, p) = batch.prefix_ids.dims2().map_err(|_| ModelError::Input("prefix ids must be [G, P]".into()))?;
        let (b, c) =
            batch.suffix_ids.dims2().map_err(|_| ModelError::Input("continuation ids must be [B, C]".into()))?;
        if c == 0 || batch.group.len() != b || batch.group.iter().any(|&i| i as usize >= g) {
            return Err(ModelError::Input(format!(
                "shared-prefix batch: {b} continuations of {c} tokens need {b} group indices below {g}, got {:?}",
                batch.group
            )));
        }
        let dev = &self.device;
        let group = Tensor::new(batch.group.as_slice(), dev).ctx(|| "group indices".to_string())?;
        let (cos_s, sin_s, km_s) = if p == 0 {
            self.positions(b, c, 0, Some(&batch.suffix_mask))?
        } else {
            let pm = batch.prefix_mask.index_select(&group, 0).ctx(|| "gathering prefix masks".to_string())?;
            let full =
                Tensor::cat(&[&pm, &batch.suffix_mask.to_dtype(pm.dtype()).ctx(|| "mask dtype".to_string())?], 1)
                    .ctx(|| "joining masks".to_string())?;
            self.positions(b, c, p, Some(&full))?
        };
        let suffix = Rows { b, t: c, s: p + c, cos: cos_s, sin: sin_s, key_mask: km_s };
        let xs = self.embed_rows(&batch.suffix_ids, false)?;
        let x = if p == 0 {
            let mut geometry = Geometry::Dense { rows: suffix, cache: None };
            self.layers_forward(xs, &mut geometry, false, None)?
        } else {
            let (cos_p, sin_p, km_p) = self.positions(g, p, 0, Some(&batch.prefix_mask))?;
            let prefix = Rows { b: g, t: p, s: p, cos: cos_p, sin: sin_p, key_mask: km_p };
            let xp = self.embed_rows(&batch.prefix_ids, false)?;
            let x = Tensor::cat(&[&xp, &xs], 0).ctx(|| "joining prefix and continuation rows".to_string())?;
            let mut geometry = Geometry::Shared { prefix, suffix, group };
            let y = self.layers_forward(x, &mut geometry, false, None)?;
            y.narrow(0, g * p, b * c).ctx(|| "selecting continuation rows".to_string())?
        };
        self.final_norm(&x, b, c, false)
    }
}

/// `b` sequences of `t` new token rows attending over `s` keys: their RoPE tables `[b, t, D/2]`
/// and key mask `[b, s]`.
struct Rows {
    b: usize,
    t: usize,
    s: usize,
    cos: Tensor,
    sin: Tensor,
    key_mask: Tensor,
}

/// How the token rows of one forward pass attend to each other.
enum Geometry<'c> {
    /// Independent sequences, optionally continuing a KV cache.
    Dense { rows: Rows, cache: Option<&'c mut KvCache> },
    /// The rows of `prefix` first, then those of `suffix`; continuation `i` attends to prefix
    /// `group[i]` before its own positions.
    Shared { prefix: Rows, suffix: Rows, group: Tensor },
}

/// Prompts and their continuations, for [`CausalLm::forward_hidden_shared`].
///
/// `prefix_ids` `[G, P]` holds each distinct prompt once, left-padded (`prefix_mask` 0 on the
/// padding); `suffix_ids` `[B, C]` holds the continuations, right-padded (`suffix_mask`), and
/// continuation `i` follows prompt `group[i]`. `P` may be 0 (no shared part).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use keel_model::{CausalLm, ModelConfig, SharedPrefixBatch};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let model = CausalLm::new(&ModelConfig::preset("tiny-300k", 64)?, 0, &Device::Cpu, DType::F32)?;
/// // One prompt [5, 9, 13] continued twice: [7, 8] and [2].
/// let batch = SharedPrefixBatch::new(&[&[5, 9, 13]], &[(0, &[7, 8]), (0, &[2])], 0, &Device::Cpu)?;
/// let shared = model.forward_hidden_shared(&batch)?; // [2, 2, hidden]
/// // The same hidden states as the whole first sequence, at its continuation positions.
/// let alone = model.forward_hidden(&Tensor::new(&[[5u32, 9, 13, 7, 8]], &Device::Cpu)?, None)?;
/// let diff = (shared.get(0)? - alone.get(0)?.narrow(0, 3, 2)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
/// assert!(diff < 1e-4);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SharedPrefixBatch {
    /// `[G, P]` u32: each distinct prompt once, left-padded.
    pub prefix_ids: Tensor,
    /// `[G, P]`: 1 on prompt tokens, 0 on padding.
    pub prefix_mask: Tensor,
    /// `[B, C]` u32: the continuations, right-padded.
    pub suffix_ids: Tensor,
    /// `[B, C]`: 1 on continuation tokens, 0 on padding.
    pub suffix_mask: Tensor,
    /// Per continuation, the row of `prefix_ids` it follows.
    pub group: Vec<u32>,
}

impl SharedPrefixBatch {
    /// Builds the tensors from host token lists: `prefixes[g]` are the prompts, `continuations`
    /// pairs each continuation with its prompt's index. Padding uses token `pad`, masked out.
    pub fn new(prefixes: &[&[u32]], continuations: &[(usize, &[u32])], pad: u32, device: &Device) -> ModelResult<Self> {
        let c = continuations.iter().map(|(_, x)| x.len()).max().unwrap_or(0);
        Self::with_width(prefixes, continuations, c, pad, device)
    }

    /// [`SharedPrefixBatch::new`] with continuations padded to `width` positions (at least the
    /// longest), so that the micro-batches of one batch share its column layout.
    pub fn with_width(
        prefixes: &[&[u32]],
        continuations: &[(usize, &[u32])],
        width: usize,
        pad: u32,
        device: &Device,
    ) -> ModelResult<Self> {
        let g = prefixes.len();
        if let Some((i, _)) = continuations.iter().find(|(i, _)| *i >= g) {
            return Err(ModelError::Input(format!("a continuation follows prompt {i}, but there are {g} prompts")));
        }
        let p = prefixes.iter().map(|x| x.len()).max().unwrap_or(0);
        let c = width;
        if let Some((i, (_, x))) = continuations.iter().enumerate().find(|(_, (_, x))| x.len() > c) {
            return Err(ModelError::Input(format!("continuation {i} has {} tokens, more than the width {c}", x.len())));
        }
        let (mut pid, mut pm) = (Vec::with_capacity(g * p), Vec::with_capacity(g * p));
        for x in prefixes {
            let pad_n = p - x.len();
            pid.extend(std::iter::repeat_n(pad, pad_n).chain(x.iter().copied()));
            pm.extend(std::iter::repeat_n(0u8, pad_n).chain(std::iter::repeat_n(1u8, x.len())));
        }
        let b = continuations.len();
        let (mut sid, mut sm) = (Vec::with_capacity(b * c), Vec::with_capacity(b * c));
        for (_, x) in continuations {
            let pad_n = c - x.len();
            sid.extend(x.iter().copied().chain(std::iter::repeat_n(pad, pad_n)));
            sm.extend(std::iter::repeat_n(1u8, x.len()).chain(std::iter::repeat_n(0u8, pad_n)));
        }
        let t = |v: Vec<u32>, r: usize, k: usize| Tensor::from_vec(v, (r, k), device);
        let m = |v: Vec<u8>, r: usize, k: usize| Tensor::from_vec(v, (r, k), device);
        let ctx = || "building a shared-prefix batch".to_string();
        Ok(SharedPrefixBatch {
            prefix_ids: t(pid, g, p).ctx(ctx)?,
            prefix_mask: m(pm, g, p).ctx(ctx)?,
            suffix_ids: t(sid, b, c).ctx(ctx)?,
            suffix_mask: m(sm, b, c).ctx(ctx)?,
            group: continuations.iter().map(|(i, _)| *i as u32).collect(),
        })
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
