//! The SwiGLU feed-forward network of one decoder block ([`Mlp`]: `gate_proj`, `up_proj`,
//! `down_proj`).

use candle_core::Tensor;

use crate::layers::{Linear, TransposedProjections};
use crate::ops;

/// `down_proj(silu(gate_proj(x)) ⊙ up_proj(x))` (Hugging Face `mlp`).
#[derive(Clone, Debug)]
pub(crate) struct Mlp {
    pub(crate) gate_proj: Linear,
    pub(crate) up_proj: Linear,
    pub(crate) down_proj: Linear,
}

impl Mlp {
    /// The MLP output `[N, H]` of normalised token rows `h` `[N, H]`; `wt` holds the layer's
    /// transposed weights when decoding (see [`crate::layers::DecodeWeights`]).
    pub(crate) fn forward(
        &self,
        h: &Tensor,
        detach: bool,
        wt: Option<&TransposedProjections>,
    ) -> candle_core::Result<Tensor> {
        let g = self.gate_proj.forward(h, detach, wt.map(|w| &w.gate_proj))?;
        let u = self.up_proj.forward(h, detach, wt.map(|w| &w.up_proj))?;
        self.down_proj.forward(&ops::swiglu(&g, &u)?, detach, wt.map(|w| &w.down_proj))
    }
}
