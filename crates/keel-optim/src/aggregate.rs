//! How per-token losses become one scalar: the choice that distinguishes GRPO, DAPO and Dr. GRPO.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Ctx, OptimError, Result};
use crate::tensors::{dims_bt, mask_as, rows_f64, tensor_from_rows};

/// How a `[B, T]` matrix of per-token losses `ℓ_{i,t}` (with mask `m_{i,t}`) is reduced to a scalar.
///
/// The three published choices weight tokens differently: GRPO's per-sequence mean gives every
/// *sequence* equal weight, so tokens of long answers count less (a length bias); DAPO's per-token
/// mean gives every *token* equal weight; Dr. GRPO divides by a constant so that neither the
/// sequence length nor the number of valid tokens in the batch rescales the gradient.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LossAggregation {
    /// GRPO (TRL `loss_type="grpo"`, verl `seq-mean-token-mean`):
    /// `L = (1/B) Σ_i [ Σ_t m_{i,t} ℓ_{i,t} / max(Σ_t m_{i,t}, 1) ]`.
    SequenceMean,
    /// DAPO (TRL `loss_type="dapo"`/`"bnpo"` on one process, verl `token-mean`):
    /// `L = Σ_{i,t} m_{i,t} ℓ_{i,t} / max(Σ_{i,t} m_{i,t}, 1)`.
    TokenMean,
    /// Dr. GRPO (TRL `loss_type="dr_grpo"`, verl `seq-mean-token-sum-norm`):
    /// `L = Σ_{i,t} m_{i,t} ℓ_{i,t} / (B · max_len)`, with `max_len` the configured maximum
    /// completion length (a constant, not the longest sequence in the batch).
    Constant {
        /// The constant normaliser per sequence: TRL's `max_completion_length`.
        max_len: usize,
    },
}

impl Default for LossAggregation {
    /// GRPO's per-sequence mean, the original formulation.
    fn default() -> Self {
        LossAggregation::SequenceMean
    }
}

/// The constant weights `w_{i,t}` with `L = Σ_{i,t} w_{i,t} ℓ_{i,t}` for the chosen aggregation.
///
/// Exposed because it makes the aggregation inspectable (and testable) on its own: each variant is
/// just a different weighting of the masked tokens. The result is detached and has `mask`'s shape,
/// in `dtype`.
pub fn aggregation_weights(mask: &Tensor, agg: LossAggregation, dtype: candle_core::DType) -> Result<Tensor> {
    let (b, _t) = dims_bt(mask, "mask")?;
    let m = rows_f64(mask, "mask")?;
    let weights: Vec<Vec<f64>> = match agg {
        LossAggregation::SequenceMean => m
            .iter()
            .map(|row| {
                let count: f64 = row.iter().sum();
                let denom = count.max(1.0) * b.max(1) as f64;
                row.iter().map(|&x| x / denom).collect()
            })
            .collect(),
        LossAggregation::TokenMean => {
            let count: f64 = m.iter().flatten().sum();
            let denom = count.max(1.0);
            m.iter().map(|row| row.iter().map(|&x| x / denom).collect()).collect()
        }
        LossAggregation::Constant { max_len } => {
            if max_len == 0 {
                return Err(OptimError::config("max_len", max_len, "Dr. GRPO's constant normaliser must be positive"));
            }
            let denom = (b.max(1) * max_len) as f64;
            m.iter().map(|row| row.iter().map(|&x| x / denom).collect()).collect()
        }
    };
    tensor_from_rows(&weights, dtype, mask.device(), "aggregation weights")
}

/// Reduces per-token losses `[B, T]` to a scalar with the chosen [`LossAggregation`].
///
/// Differentiable in `per_token`; `mask` is data (detached).
pub fn aggregate(per_token: &Tensor, mask: &Tensor, agg: LossAggregation) -> Result<Tensor> {
    let (b, t) = dims_bt(per_token, "per_token_loss")?;
    crate::tensors::expect_shape(mask, "mask", &[b, t])?;
    let w = aggregation_weights(mask, agg, per_token.dtype())?;
    // Zero padding positions first so a NaN/inf there (e.g. exp overflow on garbage logits) cannot leak.
    let m = mask_as(mask, per_token.dtype(), "mask")?;
    let zero = per_token.zeros_like().ctx("aggregate: zeros")?;
    let keep = m.ne(0.0).ctx("aggregate: mask != 0")?;
    let clean = keep.where_cond(per_token, &zero).ctx("aggregate: drop padding")?;
    clean.mul(&w).and_then(|x| x.sum_all()).ctx("aggregate: weighted sum")
}
