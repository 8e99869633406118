//! Advantage estimators: GRPO group normalisation, RLOO leave-one-out, REINFORCE++ batch
//! normalisation, GAE, and masked whitening.
//!
//! Advantages are data, not part of the graph: sequence-level estimators work on `&[f64]` rewards
//! (that is what scored rollouts carry) and token-level ones read `[B, T]` tensors into f64, run the
//! recursion, and return detached tensors in the input's dtype.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{OptimError, Result};
use crate::tensors::{dims_bt, expect_shape, rows_f64, tensor_from_rows};

/// Which rollouts belong to the same prompt.
///
/// GRPO and RLOO compare completions of one prompt with each other; this type fixes that
/// membership once, validated, so the estimators cannot silently mix groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups {
    members: Vec<Vec<usize>>,
    len: usize,
}

impl Groups {
    /// `batch / group_size` consecutive groups: rows `g·G .. (g+1)·G` share a prompt. This is the
    /// layout TRL and verl produce (`repeat_interleave` of prompts).
    pub fn contiguous(batch: usize, group_size: usize) -> Result<Self> {
        if group_size == 0 {
            return Err(OptimError::config("group_size", group_size, "must be at least 1"));
        }
        // `%` rather than `is_multiple_of`: the workspace's MSRV (1.85) predates it.
        #[allow(clippy::manual_is_multiple_of)]
        let whole = batch % group_size == 0;
        if !whole {
            return Err(OptimError::config(
                "group_size",
                group_size,
                format!("batch of {batch} rollouts is not a whole number of groups"),
            ));
        }
        let members = (0..batch / group_size).map(|g| (g * group_size..(g + 1) * group_size).collect()).collect();
        Ok(Groups { members, len: batch })
    }

    /// Groups from one id per rollout (e.g. `keel_core::Rollout::group`), in order of first
    /// appearance; rows need not be contiguous.
    pub fn from_ids(ids: &[usize]) -> Self {
        let mut order: Vec<usize> = Vec::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        for (row, id) in ids.iter().enumerate() {
            match order.iter().position(|g| g == id) {
                Some(k) => members[k].push(row),
                None => {
                    order.push(*id);
                    members.push(vec![row]);
                }
            }
        }
        Groups { members, len: ids.len() }
    }

    /// The rows of each group.
    pub fn members(&self) -> &[Vec<usize>] {
        &self.members
    }

    /// Number of rollouts covered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no rollout is covered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, rewards: &[f64]) -> Result<()> {
        if rewards.len() != self.len {
            return Err(OptimError::Shape {
                name: "rewards".into(),
                expected: format!("[B] = [{}] (one reward per grouped rollout)", self.len),
                got: vec![rewards.len()],
            });
        }
        Ok(())
    }
}

/// Sample (Bessel-corrected, `n − 1`) or population (`n`) standard deviation.
///
/// TRL (`torch.std`) and verl use the sample std; OpenRLHF's batch normalisation and many papers'
/// equations use the population std. With groups of 8 the two differ by 7%, which is why it is a
/// named option rather than a hidden choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StdKind {
    /// `sqrt(Σ (x − x̄)² / (n − 1))`; defined as 0 when `n < 2`.
    Sample,
    /// `sqrt(Σ (x − x̄)² / n)`.
    Population,
}

/// The standard deviation of `xs` of the given kind (0 for fewer than 2 values with `Sample`).
pub fn std_dev(xs: &[f64], kind: StdKind) -> f64 {
    let n = xs.len();
    if n == 0 {
        return 0.0;
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let ss: f64 = xs.iter().map(|x| (x - mean) * (x - mean)).sum();
    let denom = match kind {
        StdKind::Sample if n < 2 => return 0.0,
        StdKind::Sample => (n - 1) as f64,
        StdKind::Population => n as f64,
    };
    (ss / denom).sqrt()
}

/// Whether (and by which standard deviation) GRPO divides the centred rewards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RewardScaling {
    /// Divide by the std of the rollout's own group (GRPO; TRL `scale_rewards="group"`/`True`).
    Group,
    /// Divide by the std of the whole batch (TRL `scale_rewards="batch"`).
    Batch,
    /// Do not divide (Dr. GRPO; TRL `scale_rewards="none"`/`False`, verl `norm_adv_by_std_in_grpo=False`).
    None,
}

/// Configuration of [`grpo_advantages`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GroupNormConfig {
    /// Which std divides the centred reward.
    pub scaling: RewardScaling,
    /// Sample or population std.
    pub std_kind: StdKind,
    /// Added to the std before dividing: TRL uses 1e-4, verl 1e-6.
    pub eps: f64,
}

impl Default for GroupNormConfig {
    /// TRL's GRPO: group std, sample std, ε = 1e-4.
    fn default() -> Self {
        GroupNormConfig { scaling: RewardScaling::Group, std_kind: StdKind::Sample, eps: 1e-4 }
    }
}

/// GRPO group-normalised advantages: `A_i = (r_i − mean_{g(i)} r) / (std + ε)` (or without the
/// division for Dr. GRPO).
///
/// One advantage per sequence; broadcast it over the sequence's tokens in the loss. A group of one
/// rollout gets advantage 0 (it has nothing to be compared with).
pub fn grpo_advantages(rewards: &[f64], groups: &Groups, config: &GroupNormConfig) -> Result<Vec<f64>> {
    groups.check(rewards)?;
    if !(config.eps >= 0.0 && config.eps.is_finite()) {
        return Err(OptimError::config("eps", config.eps, "must be finite and >= 0"));
    }
    let batch_std = std_dev(rewards, config.std_kind);
    let mut out = vec![0.0; rewards.len()];
    for rows in groups.members() {
        let group: Vec<f64> = rows.iter().map(|&i| rewards[i]).collect();
        let mean = group.iter().sum::<f64>() / group.len() as f64;
        let scale = match config.scaling {
            RewardScaling::Group => Some(std_dev(&group, config.std_kind)),
            RewardScaling::Batch => Some(batch_std),
            RewardScaling::None => None,
        };
        for &i in rows {
            let centred = rewards[i] - mean;
            out[i] = match scale {
                Some(std) => centred / (std + config.eps),
                None => centred,
            };
        }
    }
    Ok(out)
}

/// RLOO leave-one-out advantages: `A_i = r_i − (1/(G−1)) Σ_{j≠i in g(i)} r_j`.
///
/// The baseline excludes the sample itself, so it is independent of it and the estimator stays
/// unbiased (Kool et al. 2019; Ahmadian et al. 2024). Every group needs at least two rollouts.
pub fn rloo_advantages(rewards: &[f64], groups: &Groups) -> Result<Vec<f64>> {
    groups.check(rewards)?;
    let mut out = vec![0.0; rewards.len()];
    for (g, rows) in groups.members().iter().enumerate() {
        if rows.len() < 2 {
            return Err(OptimError::config(
                "group_size",
                rows.len(),
                format!("RLOO needs at least 2 rollouts per group; group {g} has {}", rows.len()),
            ));
        }
        let total: f64 = rows.iter().map(|&i| rewards[i]).sum();
        let others = (rows.len() - 1) as f64;
        for &i in rows {
            out[i] = rewards[i] - (total - rewards[i]) / others;
        }
    }
    Ok(out)
}

/// Masked whitening of a `[B, T]` tensor: `(x − μ) / sqrt(σ² + ε)` (plus `μ` back if
/// `shift_mean` is false), with μ and σ² over the positions where `mask ≠ 0`. Padding positions
/// of the result are 0.
///
/// TRL's `masked_whiten` uses the sample variance and ε = 1e-8; OpenRLHF's REINFORCE++ the
/// population variance. Keeping the mean (`shift_mean = false`) is how TRL whitens rewards.
pub fn whiten(x: &Tensor, mask: &Tensor, std_kind: StdKind, shift_mean: bool, eps: f64) -> Result<Tensor> {
    let (b, t) = dims_bt(x, "x")?;
    expect_shape(mask, "mask", &[b, t])?;
    let xs = rows_f64(x, "x")?;
    let m = rows_f64(mask, "mask")?;
    let valid: Vec<f64> =
        xs.iter().flatten().zip(m.iter().flatten()).filter(|(_, &mm)| mm != 0.0).map(|(v, _)| *v).collect();
    let n = valid.len();
    let out: Vec<Vec<f64>> = if n == 0 {
        vec![vec![0.0; t]; b]
    } else {
        let mean = valid.iter().sum::<f64>() / n as f64;
        let sd = std_dev(&valid, std_kind);
        let inv = 1.0 / (sd * sd + eps).sqrt();
        xs.iter()
            .zip(&m)
            .map(|(row, mrow)| {
                row.iter()
                    .zip(mrow)
                    .map(|(v, &mm)| {
                        if mm == 0.0 {
                            0.0
                        } else {
                            let w = (v - mean) * inv;
                            if shift_mean {
                                w
                            } else {
                                w + mean
                            }
                        }
                    })
                    .collect()
            })
            .collect()
    };
    tensor_from_rows(&out, x.dtype(), x.device(), "whiten")
}

/// Whitening of plain per-sequence values (e.g. RLOO advantages with TRL's
/// `normalize_advantages`): `(x − mean) / (std + ε)`.
pub fn whiten_values(xs: &[f64], std_kind: StdKind, eps: f64) -> Vec<f64> {
    if xs.is_empty() {
        return Vec::new();
    }
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let sd = std_dev(xs, std_kind);
    xs.iter().map(|x| (x - mean) / (sd + eps)).collect()
}

/// Places each sequence reward on the sequence's last valid token: `[B, T]` per-token rewards for
/// REINFORCE++ or GAE when only an outcome reward exists. Padding and a sequence without valid
/// tokens get 0.
pub fn sequence_rewards_to_tokens(rewards: &[f64], mask: &Tensor) -> Result<Tensor> {
    let (b, t) = dims_bt(mask, "mask")?;
    if rewards.len() != b {
        return Err(OptimError::Shape {
            name: "rewards".into(),
            expected: format!("[B] = [{b}]"),
            got: vec![rewards.len()],
        });
    }
    let m = rows_f64(mask, "mask")?;
    let rows: Vec<Vec<f64>> = rewards
        .iter()
        .zip(&m)
        .map(|(r, mrow)| {
            let mut row = vec![0.0; t];
            if let Some(last) = mrow.iter().rposition(|&x| x != 0.0) {
                row[last] = *r;
            }
            row
        })
        .collect();
    let dtype = if mask.dtype().is_float() { mask.dtype() } else { candle_core::DType::F32 };
    tensor_from_rows(&rows, dtype, mask.device(), "sequence_rewards_to_tokens")
}

/// Discounted returns-to-go over valid tokens: `G_t = r_t + γ G_{t'}`, where `t'` is the next
/// valid position after `t` (padding is skipped, so masks with holes — tool outputs, later turns —
/// work); `G` after the last valid token is 0. Padding positions get 0.
pub fn returns_to_go(token_rewards: &Tensor, mask: &Tensor, gamma: f64) -> Result<Tensor> {
    let (b, t) = dims_bt(token_rewards, "token_rewards")?;
    expect_shape(mask, "mask", &[b, t])?;
    let r = rows_f64(token_rewards, "token_rewards")?;
    let m = rows_f64(mask, "mask")?;
    let out: Vec<Vec<f64>> = r
        .iter()
        .zip(&m)
        .map(|(rrow, mrow)| {
            let mut g = 0.0;
            let mut row = vec![0.0; t];
            for k in (0..t).rev() {
                if mrow[k] != 0.0 {
                    g = rrow[k] + gamma * g;
                    row[k] = g;
                }
            }
            row
        })
        .collect();
    tensor_from_rows(&out, token_rewards.dtype(), token_rewards.device(), "returns_to_go")
}

/// REINFORCE++ advantages (Hu 2025, OpenRLHF): returns-to-go of the (KL-shaped) per-token rewards,
/// normalised over *all valid tokens of the batch*: `A = (G − mean) / sqrt(var + ε)` with the
/// population variance.
///
/// Batch instead of group normalisation is the method's point: no critic, no per-prompt groups,
/// and a global scale that is stable across prompts. For "REINFORCE++-baseline", subtract the
/// group mean from the outcome rewards first ([`grpo_advantages`] with [`RewardScaling::None`]),
/// then place them with [`sequence_rewards_to_tokens`].
pub fn reinforce_pp_advantages(token_rewards: &Tensor, mask: &Tensor, gamma: f64, eps: f64) -> Result<Tensor> {
    let g = returns_to_go(token_rewards, mask, gamma)?;
    whiten(&g, mask, StdKind::Population, true, eps)
}

/// Advantages and returns from generalised advantage estimation, GAE(γ, λ).
#[derive(Debug, Clone)]
pub struct GaeOutput {
    /// `Â_t`, `[B, T]`, 0 on padding.
    pub advantages: Tensor,
    /// Value targets `R_t = Â_t + V_t`, `[B, T]`, 0 on padding.
    pub returns: Tensor,
}

/// GAE (Schulman et al. 2016) over per-token rewards and values with a mask:
/// `δ_t = r_t + γ V_{t'} − V_t`, `Â_t = δ_t + γλ Â_{t'}`, where `t'` is the next valid position
/// (`V` and `Â` are 0 beyond the last valid token — the episode ends with the completion).
///
/// Padding is skipped rather than treated as a terminal state, matching verl's masked GAE; on
/// right-padded batches this is the usual computation with zero rewards and values after the end
/// (TRL's PPO). Inputs are read as data (detached).
pub fn gae(rewards: &Tensor, values: &Tensor, mask: &Tensor, gamma: f64, lambda: f64) -> Result<GaeOutput> {
    let (b, t) = dims_bt(rewards, "rewards")?;
    expect_shape(values, "values", &[b, t])?;
    expect_shape(mask, "mask", &[b, t])?;
    if !(0.0..=1.0).contains(&gamma) {
        return Err(OptimError::config("gamma", gamma, "must lie in [0, 1]"));
    }
    if !(0.0..=1.0).contains(&lambda) {
        return Err(OptimError::config("lambda", lambda, "must lie in [0, 1]"));
    }
    let r = rows_f64(rewards, "rewards")?;
    let v = rows_f64(values, "values")?;
    let m = rows_f64(mask, "mask")?;
    let mut adv = vec![vec![0.0; t]; b];
    let mut ret = vec![vec![0.0; t]; b];
    for i in 0..b {
        let mut next_value = 0.0;
        let mut next_adv = 0.0;
        for k in (0..t).rev() {
            if m[i][k] == 0.0 {
                continue;
            }
            let delta = r[i][k] + gamma * next_value - v[i][k];
            let a = delta + gamma * lambda * next_adv;
            adv[i][k] = a;
            ret[i][k] = a + v[i][k];
            next_value = v[i][k];
            next_adv = a;
        }
    }
    Ok(GaeOutput {
        advantages: tensor_from_rows(&adv, values.dtype(), values.device(), "gae advantages")?,
        returns: tensor_from_rows(&ret, values.dtype(), values.device(), "gae returns")?,
    })
}
