//! Supervised fine-tuning: masked cross-entropy on completion (assistant) tokens, and the
//! token-level log-prob and entropy helpers the RL losses share.

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::aggregate::{aggregate, LossAggregation};
use crate::error::{Ctx, OptimError, Result};
use crate::tensors::{dims_bt, expect_float, expect_shape};

/// `log π(y_t | ·)` for each target token: `log_softmax(logits)[b, t, targets[b, t]]`, `[B, T]`.
///
/// `logits[b, t]` must be the distribution that predicts `targets[b, t]` (the caller shifts: for a
/// decoder, logits at position `p` predict the token at `p + 1`). Differentiable through candle's
/// `log_softmax` + `gather`, both of which have real backward passes.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (b, t, _v) = match logits.dims() {
        [b, t, v] => (*b, *t, *v),
        other => {
            return Err(OptimError::Shape { name: "logits".into(), expected: "[B, T, V]".into(), got: other.to_vec() })
        }
    };
    expect_float(logits, "logits")?;
    expect_shape(targets, "targets", &[b, t])?;
    let idx =
        targets.to_dtype(DType::U32).and_then(|x| x.unsqueeze(2)).ctx("token_logprobs: targets to u32 [B, T, 1]")?;
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1).ctx("token_logprobs: log_softmax")?;
    logp.gather(&idx.contiguous().ctx("token_logprobs: contiguous targets")?, 2)
        .and_then(|x| x.squeeze(2))
        .ctx("token_logprobs: gather targets")
}

/// Per-token entropy of the predictive distribution, `H_t = −Σ_v π(v) log π(v)`, `[B, T]`.
///
/// Differentiable (for entropy bonuses) and used for the entropy statistics of the safety paper.
pub fn token_entropy(logits: &Tensor) -> Result<Tensor> {
    if logits.rank() != 3 {
        return Err(OptimError::Shape {
            name: "logits".into(),
            expected: "[B, T, V]".into(),
            got: logits.dims().to_vec(),
        });
    }
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1).ctx("token_entropy: log_softmax")?;
    let p = logp.exp().ctx("token_entropy: softmax")?;
    p.mul(&logp).and_then(|x| x.sum(D::Minus1)).and_then(|x| x.neg()).ctx("token_entropy: -sum p log p")
}

/// How the SFT loss averages token cross-entropies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SftReduction {
    /// Mean over all valid tokens of the batch (Hugging Face / TRL SFTTrainer default):
    /// long answers weigh more.
    Token,
    /// Mean over tokens within each sequence, then over sequences: every example weighs the same.
    Sequence,
}

impl Default for SftReduction {
    /// Token mean, as in TRL's SFTTrainer.
    fn default() -> Self {
        SftReduction::Token
    }
}

/// Masked cross-entropy from per-token log-probs: `L = −aggregate(log π(y_t), mask)`.
///
/// `mask` selects the completion/assistant tokens, so the model is not trained to reproduce the
/// prompt. Differentiable in `logp`.
pub fn sft_loss(logp: &Tensor, mask: &Tensor, reduction: SftReduction) -> Result<Tensor> {
    let (b, t) = dims_bt(logp, "logp")?;
    expect_shape(mask, "mask", &[b, t])?;
    let agg = match reduction {
        SftReduction::Token => LossAggregation::TokenMean,
        SftReduction::Sequence => LossAggregation::SequenceMean,
    };
    let nll = logp.neg().ctx("sft_loss: -logp")?;
    aggregate(&nll, mask, agg)
}

/// Masked cross-entropy straight from logits `[B, T, V]` and targets `[B, T]`.
pub fn sft_loss_from_logits(
    logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    reduction: SftReduction,
) -> Result<Tensor> {
    let logp = token_logprobs(logits, targets)?;
    sft_loss(&logp, mask, reduction)
}
