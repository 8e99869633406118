//! PPO's critic: the clipped value loss and a linear value head on hidden states.

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::aggregate::{aggregate, LossAggregation};
use crate::error::{Ctx, OptimError, Result};
use crate::tensors::{dims_bt, expect_shape, rows_f64};

/// Configuration of [`value_loss`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValueLossConfig {
    /// Clip range `c` for the value update around the old values (TRL `cliprange_value`, verl
    /// `cliprange_value`); `None` disables value clipping.
    pub clip_range: Option<f64>,
    /// Aggregation of the per-token squared errors (TRL: token mean).
    pub aggregation: LossAggregation,
}

impl Default for ValueLossConfig {
    /// TRL's PPO: clip range 0.2, token mean.
    fn default() -> Self {
        ValueLossConfig { clip_range: Some(0.2), aggregation: LossAggregation::TokenMean }
    }
}

/// The value loss and how often clipping was active.
#[derive(Debug, Clone)]
pub struct ValueLossOutput {
    /// Scalar loss, differentiable with respect to `values`.
    pub loss: Tensor,
    /// Fraction of valid tokens where the clipped error was the larger one.
    pub clip_frac: f64,
}

/// PPO's clipped value loss:
/// `V^clip = V_old + clip(V − V_old, −c, c)`,
/// `ℓ_t = ½ max((V − R)², (V^clip − R)²)`, aggregated over valid tokens.
///
/// The max makes clipping pessimistic: the critic cannot move further than `c` from its old
/// prediction in one batch when that would reduce the loss. `values` is differentiable; `old_values`
/// and `returns` are detached.
pub fn value_loss(
    values: &Tensor,
    old_values: &Tensor,
    returns: &Tensor,
    mask: &Tensor,
    config: &ValueLossConfig,
) -> Result<ValueLossOutput> {
    let (b, t) = dims_bt(values, "values")?;
    expect_shape(old_values, "old_values", &[b, t])?;
    expect_shape(returns, "returns", &[b, t])?;
    expect_shape(mask, "mask", &[b, t])?;
    let dtype = values.dtype();
    let old = old_values.detach().to_dtype(dtype).ctx("value_loss: old_values dtype")?;
    let ret = returns.detach().to_dtype(dtype).ctx("value_loss: returns dtype")?;
    let unclipped = values.sub(&ret).and_then(|x| x.sqr()).ctx("value_loss: (V - R)^2")?;
    let (per_token_sq, clip_frac) = match config.clip_range {
        Some(c) => {
            if !(c >= 0.0 && c.is_finite()) {
                return Err(OptimError::config("clip_range", c, "must be finite and >= 0"));
            }
            let v_clip = values
                .sub(&old)
                .and_then(|d| d.clamp(-c, c))
                .and_then(|d| d.add(&old))
                .ctx("value_loss: V_old + clip(V - V_old)")?;
            let clipped = v_clip.sub(&ret).and_then(|x| x.sqr()).ctx("value_loss: (V_clip - R)^2")?;
            let u = rows_f64(&unclipped, "unclipped")?;
            let cl = rows_f64(&clipped, "clipped")?;
            let m = rows_f64(mask, "mask")?;
            let (mut n, mut k) = (0.0, 0.0);
            for i in 0..b {
                for j in 0..t {
                    if m[i][j] != 0.0 {
                        n += 1.0;
                        if cl[i][j] > u[i][j] {
                            k += 1.0;
                        }
                    }
                }
            }
            let frac = if n > 0.0 { k / n } else { 0.0 };
            (unclipped.maximum(&clipped).ctx("value_loss: max")?, frac)
        }
        None => (unclipped, 0.0),
    };
    let per_token = (per_token_sq * 0.5).ctx("value_loss: 0.5 *")?;
    Ok(ValueLossOutput { loss: aggregate(&per_token, mask, config.aggregation)?, clip_frac })
}

/// A linear value head `V = h·w + b` mapping hidden states `[B, T, H]` to values `[B, T]`.
///
/// The trunk producing `h` is either the policy model (shared trunk, wired by the trainer) or a
/// separate critic; the head itself is two named `Var`s (`{prefix}.weight` `[1, H]`,
/// `{prefix}.bias` `[1]`, the shapes of `torch.nn.Linear(H, 1)`) so the same AdamW and
/// checkpoint code handles it.
#[derive(Debug, Clone)]
pub struct ValueHead {
    prefix: String,
    weight: Var,
    bias: Var,
}

impl ValueHead {
    /// A head initialised like `torch.nn.Linear(H, 1)`: weight and bias uniform in
    /// `[−1/√H, 1/√H]`, drawn from a ChaCha8 stream seeded with `seed` (reproducible everywhere).
    pub fn new(prefix: &str, hidden: usize, dtype: DType, device: &Device, seed: u64) -> Result<Self> {
        if hidden == 0 {
            return Err(OptimError::config("hidden", hidden, "the hidden size must be positive"));
        }
        let bound = 1.0 / (hidden as f64).sqrt();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let w: Vec<f64> = (0..hidden).map(|_| rng.random_range(-bound..bound)).collect();
        let bias = vec![rng.random_range(-bound..bound)];
        let weight = Tensor::from_vec(w, (1, hidden), device)
            .and_then(|x| x.to_dtype(dtype))
            .and_then(|x| Var::from_tensor(&x))
            .ctx("ValueHead::new: weight")?;
        let bias = Tensor::from_vec(bias, 1, device)
            .and_then(|x| x.to_dtype(dtype))
            .and_then(|x| Var::from_tensor(&x))
            .ctx("ValueHead::new: bias")?;
        Ok(ValueHead { prefix: prefix.to_string(), weight, bias })
    }

    /// A head from existing variables (e.g. loaded from a checkpoint): weight `[1, H]`, bias `[1]`.
    pub fn from_vars(prefix: &str, weight: Var, bias: Var) -> Result<Self> {
        if !matches!(weight.dims(), [1, h] if *h > 0) {
            return Err(OptimError::Shape {
                name: format!("{prefix}.weight"),
                expected: "[1, H] with H > 0".into(),
                got: weight.dims().to_vec(),
            });
        }
        expect_shape(bias.as_tensor(), &format!("{prefix}.bias"), &[1])?;
        Ok(ValueHead { prefix: prefix.to_string(), weight, bias })
    }

    /// The hidden size H.
    pub fn hidden(&self) -> usize {
        self.weight.dims().get(1).copied().unwrap_or(0)
    }

    /// `V[b, t] = Σ_h hidden[b, t, h] · w[h] + bias`, differentiable in the hidden states and in
    /// the head's parameters.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let (b, t, h) = match hidden.dims() {
            [b, t, h] => (*b, *t, *h),
            other => {
                return Err(OptimError::Shape {
                    name: "hidden".into(),
                    expected: "[B, T, H]".into(),
                    got: other.to_vec(),
                })
            }
        };
        if h != self.hidden() {
            return Err(OptimError::Shape {
                name: "hidden".into(),
                expected: format!("[B, T, H] with H = {}", self.hidden()),
                got: hidden.dims().to_vec(),
            });
        }
        let w = self.weight.as_tensor().to_dtype(hidden.dtype()).ctx("ValueHead: weight dtype")?;
        let bias = self.bias.as_tensor().to_dtype(hidden.dtype()).ctx("ValueHead: bias dtype")?;
        hidden
            .reshape((b * t, h))
            .and_then(|x| x.matmul(&w.t()?))
            .and_then(|x| x.broadcast_add(&bias))
            .and_then(|x| x.reshape((b, t)))
            .ctx("ValueHead::forward")
    }

    /// The head's named parameters, for the optimiser and checkpoints.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        vec![
            (format!("{}.weight", self.prefix), self.weight.clone()),
            (format!("{}.bias", self.prefix), self.bias.clone()),
        ]
    }
}
