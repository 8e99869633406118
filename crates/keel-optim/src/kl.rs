//! Per-token estimators of KL(π‖π_ref) from sampled tokens, and KL reward shaping.
//!
//! Samples come from the policy, so with `δ_t = log π_ref(y_t) − log π(y_t)` each estimator is an
//! (approximately) unbiased per-token estimate of the KL: k1 is unbiased but high-variance and can
//! be negative; k2 is biased but low-variance; k3 is unbiased, low-variance and never negative
//! (Schulman, "Approximating KL divergence", 2020). TRL's GRPO uses k3 in the loss; verl calls it
//! `low_var_kl`.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Ctx, OptimError, Result};
use crate::tensors::{dims_bt, expect_float, expect_shape, rows_f64, tensor_from_rows};

/// Which per-token KL estimator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// `k1 = log π − log π_ref` (verl `kl`); unbiased, high variance, may be negative.
    K1,
    /// `k2 = ½ (log π − log π_ref)²` (verl `mse`); biased, low variance.
    K2,
    /// `k3 = exp(log π_ref − log π) − (log π_ref − log π) − 1` (TRL GRPO, verl `low_var_kl`);
    /// unbiased, low variance, ≥ 0.
    K3,
}

impl Default for KlEstimator {
    /// k3, the estimator TRL's GRPO and verl's `low_var_kl` use.
    fn default() -> Self {
        KlEstimator::K3
    }
}

/// Per-token KL estimate `[B, T]` between the policy (`logp`, may be differentiable) and the
/// reference (`ref_logp`, detached here).
///
/// Values at padding positions are computed but meaningless; mask them when reducing.
pub fn kl_estimate(logp: &Tensor, ref_logp: &Tensor, estimator: KlEstimator) -> Result<Tensor> {
    let (b, t) = dims_bt(logp, "logp")?;
    expect_shape(ref_logp, "ref_logp", &[b, t])?;
    expect_float(logp, "logp")?;
    let reference = ref_logp.detach().to_dtype(logp.dtype()).ctx("kl_estimate: ref_logp dtype")?;
    match estimator {
        KlEstimator::K1 => logp.sub(&reference).ctx("kl_estimate k1: logp - ref_logp"),
        KlEstimator::K2 => logp
            .sub(&reference)
            .and_then(|d| d.sqr())
            .and_then(|d| d * 0.5)
            .ctx("kl_estimate k2: 0.5 (logp - ref_logp)^2"),
        KlEstimator::K3 => {
            let delta = reference.sub(logp).ctx("kl_estimate k3: ref_logp - logp")?;
            delta.exp().and_then(|e| e.sub(&delta)).and_then(|x| x - 1.0).ctx("kl_estimate k3: exp(d) - d - 1")
        }
    }
}

/// Where the KL penalty to the reference enters the optimisation.
///
/// In the loss (TRL GRPO with `beta > 0`, verl `use_kl_loss`) the penalty's own gradient pulls the
/// policy back; in the reward (classic RLHF PPO, verl `use_kl_in_reward`, REINFORCE++) it is part of
/// the return and flows through the advantages, with no direct gradient.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "placement", rename_all = "snake_case")]
pub enum KlPlacement {
    /// `β · KL_t` added to every per-token policy loss, see [`crate::PolicyLossConfig::kl`].
    Loss,
    /// Each sequence's reward becomes `r_i − β Σ_t m_{i,t} KL_{i,t}`, see [`kl_penalised_rewards`].
    RewardSequence,
    /// Per-token rewards `−β KL_{i,t}`, plus `r_i` on the last valid token, see
    /// [`kl_penalised_token_rewards`].
    RewardToken,
}

fn check_reward_inputs(
    rewards: &[f64],
    logp: &Tensor,
    ref_logp: &Tensor,
    mask: &Tensor,
    beta: f64,
) -> Result<(usize, usize)> {
    let (b, t) = dims_bt(logp, "old_logp")?;
    expect_shape(ref_logp, "ref_logp", &[b, t])?;
    expect_shape(mask, "mask", &[b, t])?;
    if rewards.len() != b {
        return Err(OptimError::Shape {
            name: "rewards".into(),
            expected: format!("[B] = [{b}]"),
            got: vec![rewards.len()],
        });
    }
    if !beta.is_finite() || beta < 0.0 {
        return Err(OptimError::config("beta", beta, "the KL coefficient must be finite and >= 0"));
    }
    Ok((b, t))
}

/// Sequence-level KL shaping: `r̃_i = r_i − β Σ_t m_{i,t} KL_{i,t}` with KL estimated from the
/// behaviour policy's log-probs (`old_logp`) and the reference's.
///
/// Used before group normalisation (GRPO/RLOO with the KL in the reward) so the penalty competes
/// with the verifiable reward inside each group.
pub fn kl_penalised_rewards(
    rewards: &[f64],
    old_logp: &Tensor,
    ref_logp: &Tensor,
    mask: &Tensor,
    beta: f64,
    estimator: KlEstimator,
) -> Result<Vec<f64>> {
    check_reward_inputs(rewards, old_logp, ref_logp, mask, beta)?;
    let kl = rows_f64(&kl_estimate(&old_logp.detach(), ref_logp, estimator)?, "kl")?;
    let m = rows_f64(mask, "mask")?;
    Ok(rewards
        .iter()
        .zip(kl.iter().zip(m.iter()))
        .map(|(r, (kl_row, m_row))| {
            let total: f64 = kl_row.iter().zip(m_row).filter(|(_, &mm)| mm != 0.0).map(|(k, mm)| k * mm).sum();
            r - beta * total
        })
        .collect())
}

/// Token-level KL shaping (RLHF PPO, REINFORCE++, verl `use_kl_in_reward`): per-token rewards
/// `r̃_{i,t} = −β KL_{i,t} + [t = last valid token of i] · r_i`, zero on padding.
///
/// The result `[B, T]` (in `old_logp`'s dtype) feeds [`crate::gae`] or [`crate::returns_to_go`].
/// A sequence with no valid token receives no reward at all.
pub fn kl_penalised_token_rewards(
    rewards: &[f64],
    old_logp: &Tensor,
    ref_logp: &Tensor,
    mask: &Tensor,
    beta: f64,
    estimator: KlEstimator,
) -> Result<Tensor> {
    check_reward_inputs(rewards, old_logp, ref_logp, mask, beta)?;
    let kl = rows_f64(&kl_estimate(&old_logp.detach(), ref_logp, estimator)?, "kl")?;
    let m = rows_f64(mask, "mask")?;
    let mut out = Vec::with_capacity(rewards.len());
    for ((r, kl_row), m_row) in rewards.iter().zip(&kl).zip(&m) {
        let mut row: Vec<f64> =
            kl_row.iter().zip(m_row).map(|(k, &mm)| if mm != 0.0 { -beta * k * mm } else { 0.0 }).collect();
        if let Some(last) = m_row.iter().rposition(|&mm| mm != 0.0) {
            row[last] += r;
        }
        out.push(row);
    }
    tensor_from_rows(&out, old_logp.dtype(), old_logp.device(), "kl_penalised_token_rewards")
}
