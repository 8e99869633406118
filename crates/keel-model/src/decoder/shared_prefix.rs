//! Running many continuations of the same prompts without recomputing the prompts
//! ([`SharedPrefixBatch`], [`CausalLm::forward_hidden_shared`]).

use candle_core::{Device, Tensor};

use super::attention::{Geometry, Rows};
use super::CausalLm;
use crate::error::{CandleContext, ModelError, ModelResult};

impl CausalLm {
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
