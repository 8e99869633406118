//! One decoder layer ([`Block`]): pre-norm self-attention and a pre-norm SwiGLU MLP, each added
//! to the residual stream (Hugging Face `model.layers.{i}`).

use std::collections::HashMap;

use candle_core::Tensor;

use super::attention::{Attention, Geometry};
use super::mlp::Mlp;
use crate::config::ModelConfig;
use crate::error::{CandleContext, ModelError, ModelResult};
use crate::layers::{proj_path, Linear, Param, TransposedProjections};
use crate::ops;

/// A decoder layer, its fields named as the Hugging Face modules they load from.
#[derive(Clone, Debug)]
pub(crate) struct Block {
    pub(crate) input_layernorm: Param,
    pub(crate) self_attn: Attention,
    pub(crate) post_attention_layernorm: Param,
    pub(crate) mlp: Mlp,
}

/// Removes the parameter `name` from `params`, or says which tensor is missing.
fn take(params: &mut HashMap<String, Param>, name: &str) -> ModelResult<Param> {
    params.remove(name).ok_or_else(|| ModelError::MissingTensor { name: name.to_string(), expected: vec![] })
}

impl Block {
    /// Layer `i` built from named parameters (removed from `params`), with the biases and q/k
    /// norms the configuration says the layer has.
    pub(crate) fn from_params(i: usize, cfg: &ModelConfig, params: &mut HashMap<String, Param>) -> ModelResult<Self> {
        let mut lin = |name: &str, has_bias: bool| -> ModelResult<Linear> {
            let p = proj_path(i, name);
            let w = take(params, &format!("{p}.weight"))?;
            let b = if has_bias { Some(take(params, &format!("{p}.bias"))?) } else { None };
            Ok(Linear { w, b, lora: None })
        };
        let (q_proj, k_proj, v_proj) =
            (lin("q_proj", cfg.qkv_bias)?, lin("k_proj", cfg.qkv_bias)?, lin("v_proj", cfg.qkv_bias)?);
        let o_proj = lin("o_proj", cfg.o_bias)?;
        let mlp = Mlp {
            gate_proj: lin("gate_proj", cfg.mlp_bias)?,
            up_proj: lin("up_proj", cfg.mlp_bias)?,
            down_proj: lin("down_proj", cfg.mlp_bias)?,
        };
        let p = format!("model.layers.{i}");
        let (q_norm, k_norm) = if cfg.qk_norm {
            (
                Some(take(params, &format!("{p}.self_attn.q_norm.weight"))?),
                Some(take(params, &format!("{p}.self_attn.k_norm.weight"))?),
            )
        } else {
            (None, None)
        };
        Ok(Block {
            input_layernorm: take(params, &format!("{p}.input_layernorm.weight"))?,
            self_attn: Attention { q_proj, k_proj, v_proj, o_proj, q_norm, k_norm },
            post_attention_layernorm: take(params, &format!("{p}.post_attention_layernorm.weight"))?,
            mlp,
        })
    }

    /// The block's projections with their Hugging Face module names, attention first (the order
    /// of [`crate::layers::PROJECTIONS`]).
    pub(crate) fn projections(&self) -> [(&'static str, &Linear); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            ("q_proj", &a.q_proj),
            ("k_proj", &a.k_proj),
            ("v_proj", &a.v_proj),
            ("o_proj", &a.o_proj),
            ("gate_proj", &m.gate_proj),
            ("up_proj", &m.up_proj),
            ("down_proj", &m.down_proj),
        ]
    }

    /// [`Block::projections`], mutably.
    pub(crate) fn projections_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        let Attention { q_proj, k_proj, v_proj, o_proj, .. } = &mut self.self_attn;
        let Mlp { gate_proj, up_proj, down_proj } = &mut self.mlp;
        [
            ("q_proj", q_proj),
            ("k_proj", k_proj),
            ("v_proj", v_proj),
            ("o_proj", o_proj),
            ("gate_proj", gate_proj),
            ("up_proj", up_proj),
            ("down_proj", down_proj),
        ]
    }

    /// Every projection weight of layer `i` transposed to a contiguous `[in, out]` (detached),
    /// for decoding (see [`crate::layers::DecodeWeights`]).
    pub(crate) fn transposed_weights(&self, i: usize) -> ModelResult<TransposedProjections> {
        let t = |lin: &Linear, name: &str| {
            lin.w.get(true).t().and_then(|x| x.contiguous()).ctx(|| format!("transposing {} for decoding", proj_path(i, name)))
        };
        let (a, m) = (&self.self_attn, &self.mlp);
        Ok(TransposedProjections {
            q_proj: t(&a.q_proj, "q_proj")?,
            k_proj: t(&a.k_proj, "k_proj")?,
            v_proj: t(&a.v_proj, "v_proj")?,
            o_proj: t(&a.o_proj, "o_proj")?,
            gate_proj: t(&m.gate_proj, "gate_proj")?,
            up_proj: t(&m.up_proj, "up_proj")?,
            down_proj: t(&m.down_proj, "down_proj")?,
        })
    }

    /// Layer `li` over token rows `x` `[N, H]` laid out as `geometry` says:
    /// `x + attn(norm(x))`, then `+ mlp(norm(·))`. `wt` holds the layer's transposed weights when
    /// decoding.
    pub(crate) fn forward(
        &self,
        li: usize,
        x: Tensor,
        geometry: &mut Geometry<'_>,
        cfg: &ModelConfig,
        detach: bool,
        wt: Option<&TransposedProjections>,
    ) -> ModelResult<Tensor> {
        let eps = cfg.rms_norm_eps;
        let step = |what: &str| format!("layer {li}: {what}");
        let h = ops::rms_norm(&x, &self.input_layernorm.get(detach), eps).ctx(|| step("input_layernorm"))?;
        let attn = self.self_attn.forward(li, &h, geometry, cfg, detach, wt)?;
        let x = (x + attn).ctx(|| step("residual"))?;
        let h2 = ops::rms_norm(&x, &self.post_attention_layernorm.get(detach), eps)
            .ctx(|| step("post_attention_layernorm"))?;
        let mlp = self.mlp.forward(&h2, detach, wt).ctx(|| step("mlp"))?;
        (x + mlp).ctx(|| step("residual"))
    }
}
