//! The building blocks shared by the decoder, its KV cache and LoRA: weights ([`Param`]),
//! projections ([`Linear`], optionally carrying a [`LoraPair`]), the Hugging Face names of a
//! block's projections, and the decode-time transposed weights ([`DecodeWeights`]).
//!
//! Why a module of its own: the decoder uses all of these, the KV cache holds [`DecodeWeights`]
//! and LoRA builds [`LoraPair`]s; keeping them below all three means each imports from here and
//! none from another (no `decoder ↔ kv_cache ↔ lora` import circle).

use candle_core::{Tensor, Var};

use crate::error::{CandleContext, ModelResult};

/// One weight: the variable that owns the storage and whether the optimiser may update it.
#[derive(Clone, Debug)]
pub(crate) struct Param {
    pub(crate) var: Var,
    pub(crate) train: bool,
}

impl Param {
    /// A fresh variable holding a contiguous copy of `t` (detached from any graph).
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
    pub(crate) fn forward(&self, x: &Tensor, detach: bool, wt: Option<&Tensor>) -> candle_core::Result<Tensor> {
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

/// The projections of one decoder block by Hugging Face module name, in the order the block
/// lists them (attention q, k, v, o, then MLP gate, up, down); also the valid LoRA targets.
pub(crate) const PROJECTIONS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// Hugging Face module path of projection `name` (one of [`PROJECTIONS`]) in layer `layer`, e.g.
/// `model.layers.3.self_attn.q_proj` or `model.layers.3.mlp.down_proj`.
pub(crate) fn proj_path(layer: usize, name: &str) -> String {
    let group = if matches!(name, "gate_proj" | "up_proj" | "down_proj") { "mlp" } else { "self_attn" };
    format!("model.layers.{layer}.{group}.{name}")
}

/// One block's projection weights, each transposed to a contiguous `[in, out]` for decoding (see
/// [`DecodeWeights`]), named as the block's projections are.
#[derive(Debug)]
pub(crate) struct TransposedProjections {
    pub(crate) q_proj: Tensor,
    pub(crate) k_proj: Tensor,
    pub(crate) v_proj: Tensor,
    pub(crate) o_proj: Tensor,
    pub(crate) gate_proj: Tensor,
    pub(crate) up_proj: Tensor,
    pub(crate) down_proj: Tensor,
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
    /// Per layer, each projection's weight as `[in, out]`.
    pub(crate) layers: Vec<TransposedProjections>,
    /// The output projection `[hidden, vocab]`.
    pub(crate) head: Tensor,
}
