//! The clipped surrogate policy loss shared by PPO, GRPO, DAPO, Dr. GRPO and RLOO.
//!
//! ```text
//! ρ_t   = exp(clamp(log π(y_t) − log π_old(y_t), −20, 20))
//! ℓ_t   = −min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t)  [+ β KL_t]
//! L     = aggregate(ℓ, mask)
//! ```
//!
//! The log-ratio clamp is verl's (`compute_policy_loss`): in f32, `exp` overflows to ∞ above
//! ~88.7, and even where the clipped branch makes the *loss* finite the chain rule then multiplies a
//! zero by ∞ and the *gradient* is NaN, which would destroy every weight in one step. Within ±20
//! (ρ ∈ [2·10⁻⁹, 4.9·10⁸]) nothing changes: the clip range is far inside it.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::aggregate::{aggregate, LossAggregation};
use crate::error::{Ctx, OptimError, Result};
use crate::kl::{kl_estimate, KlEstimator};
use crate::tensors::{dims_bt, expect_float, expect_shape, mask_as, rows_f64};

/// Bound on `|log π − log π_old|` before the ratio is exponentiated (verl's value): keeps ρ and its
/// gradient finite in f32 for tokens whose probability moved by more than e^±20.
pub const LOG_RATIO_CLAMP: f64 = 20.0;

/// A KL penalty `β · KL_t` added to each token's loss (TRL GRPO `beta`, verl `use_kl_loss`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KlPenalty {
    /// The coefficient β (TRL `beta`, verl `kl_loss_coef`).
    pub beta: f64,
    /// The per-token estimator (verl `kl_loss_type`).
    pub estimator: KlEstimator,
}

/// Configuration of [`policy_loss`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PolicyLossConfig {
    /// Lower clip range: ratios below `1 − eps_low` stop pushing down (TRL `epsilon`, verl
    /// `clip_ratio_low`).
    pub eps_low: f64,
    /// Upper clip range: ratios above `1 + eps_high` stop pushing up (TRL `epsilon_high`, verl
    /// `clip_ratio_high`); DAPO's clip-higher sets it above `eps_low` (e.g. 0.28 vs 0.2).
    pub eps_high: f64,
    /// How per-token losses are reduced (GRPO / DAPO / Dr. GRPO).
    pub aggregation: LossAggregation,
    /// KL to the reference placed in the loss; `None` means no KL term (or KL in the reward).
    pub kl: Option<KlPenalty>,
}

impl Default for PolicyLossConfig {
    /// PPO/GRPO defaults: ε = 0.2 on both sides, per-sequence mean, no KL term.
    fn default() -> Self {
        PolicyLossConfig { eps_low: 0.2, eps_high: 0.2, aggregation: LossAggregation::SequenceMean, kl: None }
    }
}

impl PolicyLossConfig {
    /// Checks ranges so that a typo in a YAML file fails before the first step.
    pub fn validate(&self) -> Result<()> {
        if !(self.eps_low >= 0.0 && self.eps_low < 1.0) {
            return Err(OptimError::config("eps_low", self.eps_low, "must lie in [0, 1)"));
        }
        if !(self.eps_high >= 0.0 && self.eps_high.is_finite()) {
            return Err(OptimError::config("eps_high", self.eps_high, "must be finite and >= 0"));
        }
        if let Some(kl) = self.kl {
            if !(kl.beta >= 0.0 && kl.beta.is_finite()) {
                return Err(OptimError::config("beta", kl.beta, "must be finite and >= 0"));
            }
        }
        if let LossAggregation::Constant { max_len: 0 } = self.aggregation {
            return Err(OptimError::config("max_len", 0, "Dr. GRPO's constant normaliser must be positive"));
        }
        Ok(())
    }
}

/// The per-token inputs of a policy-gradient step, all `[B, T]` over completion tokens.
#[derive(Debug, Clone, Copy)]
pub struct PolicyBatch<'a> {
    /// `log π_θ(y_t | ·)` of the current policy; the only differentiable input.
    pub logp: &'a Tensor,
    /// Log-probs of the behaviour policy that sampled the tokens (detached here).
    pub old_logp: &'a Tensor,
    /// Log-probs of the reference policy; required when [`PolicyLossConfig::kl`] is set.
    pub ref_logp: Option<&'a Tensor>,
    /// 1 for completion tokens that count, 0 for padding (any numeric dtype).
    pub mask: &'a Tensor,
    /// Advantages per sequence `[B]` (broadcast over tokens) or per token `[B, T]` (detached here).
    pub advantages: &'a Tensor,
    /// Per-token policy entropy, only used for the reported statistics.
    pub entropy: Option<&'a Tensor>,
}

/// Diagnostics of one policy-loss evaluation, averaged over valid tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyStats {
    /// The loss value.
    pub loss: f64,
    /// Fraction of tokens with `ρ < 1 − ε_low` and `A < 0` (clipped from below: zero gradient).
    pub clip_frac_low: f64,
    /// Fraction of tokens with `ρ > 1 + ε_high` and `A > 0` (clipped from above: zero gradient).
    pub clip_frac_high: f64,
    /// `clip_frac_low + clip_frac_high`.
    pub clip_frac: f64,
    /// Mean importance ratio ρ.
    pub ratio_mean: f64,
    /// Smallest ratio over valid tokens (1 if there are none).
    pub ratio_min: f64,
    /// Largest ratio over valid tokens (1 if there are none).
    pub ratio_max: f64,
    /// Mean of `(ρ − 1) − log ρ`: the k3 estimate of KL(π_old‖π), how far the inner epochs moved.
    pub approx_kl: f64,
    /// Mean KL estimate to the reference (with the configured estimator, k3 if none), when
    /// `ref_logp` was given.
    pub kl_ref: Option<f64>,
    /// Mean entropy, when `entropy` was given.
    pub entropy: Option<f64>,
    /// Number of valid tokens.
    pub tokens: f64,
}

/// The loss (a differentiable scalar) and its diagnostics.
#[derive(Debug, Clone)]
pub struct PolicyLossOutput {
    /// Scalar loss, differentiable with respect to `logp`.
    pub loss: Tensor,
    /// Per-token loss `ℓ_t` `[B, T]` before aggregation (padding included, unmasked).
    pub per_token: Tensor,
    /// Diagnostics.
    pub stats: PolicyStats,
}

/// Broadcasts `[B]` or `[B, T]` advantages to `[B, T]` in `dtype`, detached.
pub(crate) fn token_advantages(advantages: &Tensor, b: usize, t: usize, dtype: DType) -> Result<Tensor> {
    expect_float(advantages, "advantages")?;
    let a = advantages.detach().to_dtype(dtype).ctx("advantages: dtype")?;
    match a.dims() {
        [bb] if *bb == b => {
            a.unsqueeze(1).and_then(|x| x.broadcast_as((b, t))).ctx("advantages: broadcast [B] to [B, T]")
        }
        [bb, tt] if *bb == b && *tt == t => Ok(a),
        other => Err(OptimError::Shape {
            name: "advantages".into(),
            expected: format!("[B] = [{b}] or [B, T] = [{b}, {t}]"),
            got: other.to_vec(),
        }),
    }
}

/// The clipped surrogate loss of PPO / GRPO with separate lower and upper clip ranges, optional
/// in-loss KL to the reference, and the chosen aggregation.
///
/// Tokens with `ρ > 1 + ε_high` and `A > 0`, or `ρ < 1 − ε_low` and `A < 0`, receive exactly zero
/// gradient: the update already moved them far enough in the advantageous direction. The
/// log-ratio is clamped to ±[`LOG_RATIO_CLAMP`] before `exp` (verl), so the loss and its gradient
/// stay finite however far a token's probability moved.
pub fn policy_loss(batch: &PolicyBatch<'_>, config: &PolicyLossConfig) -> Result<PolicyLossOutput> {
    config.validate()?;
    let (b, t) = dims_bt(batch.logp, "logp")?;
    expect_float(batch.logp, "logp")?;
    expect_shape(batch.old_logp, "old_logp", &[b, t])?;
    expect_shape(batch.mask, "mask", &[b, t])?;
    let dtype = batch.logp.dtype();
    let old = batch.old_logp.detach().to_dtype(dtype).ctx("old_logp: dtype")?;
    let adv = token_advantages(batch.advantages, b, t, dtype)?;

    // ρ = exp(clamp(log π − log π_old, ±20)); beyond the clamp the gradient is 0, not NaN.
    let log_ratio = batch
        .logp
        .sub(&old)
        .and_then(|x| x.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
        .ctx("policy_loss: log ratio")?;
    let ratio = log_ratio.exp().ctx("policy_loss: ratio")?;
    // −min(ρ A, clip(ρ, 1 − ε_low, 1 + ε_high) A)
    let clipped = ratio.clamp(1.0 - config.eps_low, 1.0 + config.eps_high).ctx("policy_loss: clip")?;
    let unclipped_obj = ratio.mul(&adv).ctx("policy_loss: ratio * A")?;
    let clipped_obj = clipped.mul(&adv).ctx("policy_loss: clip(ratio) * A")?;
    let mut per_token = unclipped_obj.minimum(&clipped_obj).and_then(|x| x.neg()).ctx("policy_loss: -min")?;

    let kl_ref = match (config.kl, batch.ref_logp) {
        (Some(pen), Some(r)) => {
            let kl = kl_estimate(batch.logp, r, pen.estimator)?;
            per_token =
                per_token.add(&(kl.clone() * pen.beta).ctx("policy_loss: beta * kl")?).ctx("policy_loss: + beta kl")?;
            Some(kl)
        }
        (Some(_), None) => {
            return Err(OptimError::MissingInput {
                name: "ref_logp",
                reason: "the policy loss has a KL term (config.kl is set)".into(),
            })
        }
        (None, Some(r)) => Some(kl_estimate(&batch.logp.detach(), r, KlEstimator::K3)?),
        (None, None) => None,
    };
    let loss = aggregate(&per_token, batch.mask, config.aggregation)?;
    let stats = policy_stats(batch, config, &ratio, &adv, kl_ref.as_ref(), &loss)?;
    Ok(PolicyLossOutput { loss, per_token, stats })
}

fn policy_stats(
    batch: &PolicyBatch<'_>,
    config: &PolicyLossConfig,
    ratio: &Tensor,
    adv: &Tensor,
    kl_ref: Option<&Tensor>,
    loss: &Tensor,
) -> Result<PolicyStats> {
    let m = rows_f64(batch.mask, "mask")?;
    let r = rows_f64(ratio, "ratio")?;
    let a = rows_f64(adv, "advantages")?;
    let (mut n, mut low, mut high, mut sum_r, mut sum_kl_old) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut rmin, mut rmax) = (f64::INFINITY, f64::NEG_INFINITY);
    for i in 0..m.len() {
        for k in 0..m[i].len() {
            if m[i][k] == 0.0 {
                continue;
            }
            let (rho, adv) = (r[i][k], a[i][k]);
            n += 1.0;
            sum_r += rho;
            sum_kl_old += (rho - 1.0) - rho.ln();
            rmin = rmin.min(rho);
            rmax = rmax.max(rho);
            if rho < 1.0 - config.eps_low && adv < 0.0 {
                low += 1.0;
            }
            if rho > 1.0 + config.eps_high && adv > 0.0 {
                high += 1.0;
            }
        }
    }
    let denom = if n > 0.0 { n } else { 1.0 };
    let mean_of = |x: &Tensor, name: &str| -> Result<f64> {
        let mask = mask_as(batch.mask, x.dtype(), "mask")?;
        crate::tensors::scalar_f64(&crate::tensors::masked_mean(&x.detach(), &mask)?, name)
    };
    let kl_ref = kl_ref.map(|k| mean_of(k, "kl_ref")).transpose()?;
    let entropy = match batch.entropy {
        Some(e) => {
            expect_shape(e, "entropy", batch.mask.dims())?;
            Some(mean_of(e, "entropy")?)
        }
        None => None,
    };
    Ok(PolicyStats {
        loss: crate::tensors::scalar_f64(loss, "loss")?,
        clip_frac_low: low / denom,
        clip_frac_high: high / denom,
        clip_frac: (low + high) / denom,
        ratio_mean: if n > 0.0 { sum_r / n } else { 1.0 },
        ratio_min: if n > 0.0 { rmin } else { 1.0 },
        ratio_max: if n > 0.0 { rmax } else { 1.0 },
        approx_kl: sum_kl_old / denom,
        kl_ref,
        entropy,
        tokens: n,
    })
}
