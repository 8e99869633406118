//! Self-attention of one decoder block ([`Attention`]: `q_proj`, `k_proj`, `v_proj`, `o_proj`
//! and Qwen3's optional per-head `q_norm`/`k_norm`), and the row layouts a forward pass can have
//! ([`Rows`], [`Geometry`]).

use candle_core::Tensor;

use crate::config::ModelConfig;
use crate::error::{CandleContext, ModelResult};
use crate::kv_cache::KvCache;
use crate::layers::{Linear, Param, TransposedProjections};
use crate::ops;

/// `b` sequences of `t` new token rows attending over `s` keys: their RoPE tables `[b, t, D/2]`
/// and key mask `[b, s]`.
pub(crate) struct Rows {
    pub(crate) b: usize,
    pub(crate) t: usize,
    pub(crate) s: usize,
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    pub(crate) key_mask: Tensor,
}

/// How the token rows of one forward pass attend to each other.
pub(crate) enum Geometry<'c> {
    /// Independent sequences, optionally continuing a KV cache.
    Dense { rows: Rows, cache: Option<&'c mut KvCache> },
    /// The rows of `prefix` first, then those of `suffix`; continuation `i` attends to prefix
    /// `group[i]` before its own positions.
    Shared { prefix: Rows, suffix: Rows, group: Tensor },
}

/// Grouped-query causal self-attention with rotary positions (Hugging Face `self_attn`).
#[derive(Clone, Debug)]
pub(crate) struct Attention {
    pub(crate) q_proj: Linear,
    pub(crate) k_proj: Linear,
    pub(crate) v_proj: Linear,
    pub(crate) o_proj: Linear,
    /// Per-head RMSNorm on queries before RoPE (Qwen3 only).
    pub(crate) q_norm: Option<Param>,
    /// Per-head RMSNorm on keys before RoPE (Qwen3 only).
    pub(crate) k_norm: Option<Param>,
}

/// `1/√d`, the attention logit scale.
fn attention_scale(cfg: &ModelConfig) -> f64 {
    1.0 / (cfg.head_dim as f64).sqrt()
}

impl Attention {
    /// The attention output `o_proj(attention(q, k, v))` `[N, H]` of normalised token rows `h`
    /// `[N, H]` laid out as `geometry` says (layer `li` of the stack; its keys and values are
    /// appended to the geometry's cache, if any). `wt` holds the layer's transposed weights when
    /// decoding (see [`crate::layers::DecodeWeights`]).
    pub(crate) fn forward(
        &self,
        li: usize,
        h: &Tensor,
        geometry: &mut Geometry<'_>,
        cfg: &ModelConfig,
        detach: bool,
        wt: Option<&TransposedProjections>,
    ) -> ModelResult<Tensor> {
        let step = |what: &str| format!("layer {li}: {what}");
        let q = self.q_proj.forward(h, detach, wt.map(|w| &w.q_proj)).ctx(|| step("q_proj"))?;
        let k = self.k_proj.forward(h, detach, wt.map(|w| &w.k_proj)).ctx(|| step("k_proj"))?;
        let v = self.v_proj.forward(h, detach, wt.map(|w| &w.v_proj)).ctx(|| step("v_proj"))?;
        let attn = match geometry {
            Geometry::Dense { rows, cache } => self.dense(li, (&q, &k, &v), rows, cache, cfg, detach)?,
            Geometry::Shared { prefix, suffix, group } => {
                self.shared(li, (&q, &k, &v), prefix, suffix, group, cfg, detach)?
            }
        };
        self.o_proj.forward(&attn, detach, wt.map(|w| &w.o_proj)).ctx(|| step("o_proj"))
    }

    /// Attention of independent sequences, continuing `cache` when given; one new token per
    /// sequence over a cache takes the fused single-query kernel.
    fn dense(
        &self,
        li: usize,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        rows: &Rows,
        cache: &mut Option<&mut KvCache>,
        cfg: &ModelConfig,
        detach: bool,
    ) -> ModelResult<Tensor> {
        let step = |what: &str| format!("layer {li}: {what}");
        let (q, k, v) = self.heads(q, k, v, rows, cfg, detach).ctx(|| step("attention heads"))?;
        let decoding = rows.t == 1 && cache.is_some();
        let shared = cache.as_deref().and_then(|c| c.shared.clone());
        let (k, v) = match cache.as_deref_mut() {
            Some(c) => c.append(li, k.detach(), v.detach())?,
            None => (k, v),
        };
        if decoding {
            // One new token per sequence: the fused single-query kernel over the cache buffers
            // (see `ops::decode_attention` for why), reading the prompt keys that samples share
            // from one copy.
            let (b, nh, hd) = (rows.b, cfg.num_attention_heads, cfg.head_dim);
            let scale = attention_scale(cfg);
            q.reshape((b, nh, hd))
                .and_then(|q| ops::decode_attention_shared(&q, &k, &v, &rows.key_mask, scale, shared.as_deref()))
                .and_then(|a| a.reshape((b, nh * hd)))
        } else {
            attend(&q, &k, &v, rows, cfg)
        }
        .ctx(|| step("attention"))
    }

    /// Attention of prompt rows (`prefix`, first) and continuation rows (`suffix`), where each
    /// continuation attends to its prompt's keys (`group`) before its own.
    #[allow(clippy::too_many_arguments)] // the three projections, both row layouts and the grouping
    fn shared(
        &self,
        li: usize,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        prefix: &Rows,
        suffix: &Rows,
        group: &Tensor,
        cfg: &ModelConfig,
        detach: bool,
    ) -> ModelResult<Tensor> {
        let step = |what: &str| format!("layer {li}: {what}");
        let n_prefix = prefix.b * prefix.t;
        let split = |t: &Tensor| -> candle_core::Result<(Tensor, Tensor)> {
            Ok((t.narrow(0, 0, n_prefix)?, t.narrow(0, n_prefix, t.dim(0)? - n_prefix)?))
        };
        let ((qp, qs), (kp, ks), (vp, vs)) =
            (split(q).ctx(|| step("split"))?, split(k).ctx(|| step("split"))?, split(v).ctx(|| step("split"))?);
        let (qp, kp, vp) = self.heads(&qp, &kp, &vp, prefix, cfg, detach).ctx(|| step("prefix heads"))?;
        let (qs, ks, vs) = self.heads(&qs, &ks, &vs, suffix, cfg, detach).ctx(|| step("continuation heads"))?;
        // Each continuation sees its prompt's keys and values (gathered, so their gradients sum
        // over the group in backward) followed by its own.
        let (kfull, vfull) = (|| -> candle_core::Result<(Tensor, Tensor)> {
            Ok((
                Tensor::cat(&[&kp.index_select(group, 0)?, &ks], 2)?,
                Tensor::cat(&[&vp.index_select(group, 0)?, &vs], 2)?,
            ))
        })()
        .ctx(|| step("gathering prompt keys"))?;
        let ap = attend(&qp, &kp, &vp, prefix, cfg).ctx(|| step("prefix attention"))?;
        let as_ = attend(&qs, &kfull, &vfull, suffix, cfg).ctx(|| step("continuation attention"))?;
        Tensor::cat(&[&ap, &as_], 0).ctx(|| step("joining attention rows"))
    }

    /// Projected rows `[b·t, heads·d]` → per-head `[b, heads, t, d]` (contiguous) queries, keys and
    /// values, with the optional q/k norms (Qwen3) and RoPE at `rows`' positions applied.
    fn heads(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rows: &Rows,
        cfg: &ModelConfig,
        detach: bool,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (b, t, nh, nkv, hd) = (rows.b, rows.t, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let (q, k, v) = (q.reshape((b, t, nh, hd))?, k.reshape((b, t, nkv, hd))?, v.reshape((b, t, nkv, hd))?);
        let (q, k) = match (&self.q_norm, &self.k_norm) {
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
}

/// Causal attention of `rows.t` queries per sequence over `rows.s` keys (the last `t` of which
/// are the queries' own positions), as `[b·t, heads·d]` rows ready for `o_proj`.
///
/// Grouped-query attention without repeating K/V: the `rep` query heads sharing one K/V head are
/// stacked along the query axis, so one batched matmul serves them all.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, rows: &Rows, cfg: &ModelConfig) -> candle_core::Result<Tensor> {
    let (b, t, s, nh, nkv, hd) = (rows.b, rows.t, rows.s, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let rep = nh / nkv;
    let qg = q.reshape((b, nkv, rep * t, hd))?;
    let scores = qg.matmul(&k.t()?)?.reshape((b, nh, t, s))?;
    let probs = ops::masked_softmax(&scores, &rows.key_mask, attention_scale(cfg), true)?;
    let out = probs.reshape((b, nkv, rep * t, s))?.matmul(v)?;
    out.reshape((b, nh, t, hd))?.transpose(1, 2)?.contiguous()?.reshape((b * t, nh * hd))
}
