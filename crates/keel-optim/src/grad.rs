//! Gradient utilities: global-norm clipping and accumulation over micro-batches.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::error::{Ctx, OptimError, Result};
use crate::tensors::scalar_f64;

/// The global L2 norm `sqrt(Σ_p ‖g_p‖²)` over the gradients of `params` present in `grads`,
/// accumulated in f64.
pub fn grad_norm(params: &[(String, Var)], grads: &GradStore) -> Result<f64> {
    let mut total = 0.0;
    for (name, var) in params {
        if let Some(g) = grads.get(var.as_tensor()) {
            let sq = g
                .to_dtype(DType::F64)
                .and_then(|x| x.sqr())
                .and_then(|x| x.sum_all())
                .ctx(&format!("grad_norm: ‖g‖² of `{name}`"))?;
            total += scalar_f64(&sq, name)?;
        }
    }
    Ok(total.sqrt())
}

/// Clips the gradients of `params` in place to global L2 norm at most `max_norm`, returning the
/// norm **before** clipping (the number to log).
///
/// Follows `torch.nn.utils.clip_grad_norm_`: every gradient is multiplied by
/// `max_norm / (norm + 1e-6)` when that factor is below 1. A non-finite norm is an error naming the
/// parameters with non-finite gradients, because scaling by NaN would silently destroy the weights;
/// skip the step (or the batch) instead.
pub fn clip_grad_norm(params: &[(String, Var)], grads: &mut GradStore, max_norm: f64) -> Result<f64> {
    if !(max_norm > 0.0 && max_norm.is_finite()) {
        return Err(OptimError::config("max_grad_norm", max_norm, "must be finite and > 0"));
    }
    let norm = grad_norm(params, grads)?;
    if !norm.is_finite() {
        let mut bad = Vec::new();
        for (name, var) in params {
            if grads.get(var.as_tensor()).is_some() && !grad_norm(&[(name.clone(), var.clone())], grads)?.is_finite() {
                bad.push(name.clone());
            }
        }
        return Err(OptimError::param(
            bad.join(", "),
            format!("non-finite gradient (global norm {norm}); skip this step"),
        ));
    }
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for (name, var) in params {
            if let Some(g) = grads.get(var.as_tensor()) {
                let scaled = (g * coef).ctx(&format!("clip_grad_norm: scaling `{name}`"))?;
                grads.insert(var.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

/// Sums scaled gradients over micro-batches, so a batch too large for memory is processed in
/// pieces and stepped once.
///
/// With per-micro-batch losses that are means, `scale = 1 / n_micro` (equal-sized micro-batches)
/// reproduces the full-batch gradient; with sums, use `scale = 1 / total_tokens`. Callers that
/// weight each micro-batch's loss before `backward` (Keel's learners: a loss can have terms with
/// different weights, such as PPO's policy and value losses) add with `scale = 1`, which keeps the
/// gradient tensors as they are.
#[derive(Debug, Default)]
pub struct GradAccumulator {
    sums: BTreeMap<String, Tensor>,
    micro_batches: usize,
}

impl GradAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `scale · g` for each parameter with a gradient in `grads`.
    pub fn add(&mut self, params: &[(String, Var)], grads: &GradStore, scale: f64) -> Result<()> {
        if !scale.is_finite() {
            return Err(OptimError::config("scale", scale, "gradient accumulation scale must be finite"));
        }
        for (name, var) in params {
            if let Some(g) = grads.get(var.as_tensor()) {
                // Scale 1 (losses weighted before `backward`) shares the gradient's storage: no copy.
                let scaled = if scale == 1.0 {
                    g.detach()
                } else {
                    (g.detach() * scale).ctx(&format!("GradAccumulator: scaling `{name}`"))?
                };
                let next = match self.sums.remove(name) {
                    Some(sum) => sum.add(&scaled).ctx(&format!("GradAccumulator: adding `{name}`"))?,
                    None => scaled,
                };
                self.sums.insert(name.clone(), next);
            }
        }
        self.micro_batches += 1;
        Ok(())
    }

    /// Number of micro-batches added since creation or the last [`GradAccumulator::clear`].
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// The accumulated gradients as a `GradStore` keyed by `params` (for [`crate::AdamW::step`]
    /// and [`clip_grad_norm`]). Parameters that never received a gradient are absent.
    pub fn grads(&self, params: &[(String, Var)]) -> GradStore {
        let mut store = GradStore::default();
        for (name, var) in params {
            if let Some(sum) = self.sums.get(name) {
                store.insert(var.as_tensor(), sum.clone());
            }
        }
        store
    }

    /// Forgets everything (call after the optimiser step).
    pub fn clear(&mut self) {
        self.sums.clear();
        self.micro_batches = 0;
    }
}
