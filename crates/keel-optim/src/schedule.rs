//! Learning-rate schedules with the Hugging Face `transformers` formulas.

use serde::{Deserialize, Serialize};

use crate::error::{OptimError, Result};

/// A learning-rate multiplier as a function of the optimiser step.
///
/// `step` counts optimiser updates already taken, so the first update uses `multiplier(0)`; with
/// warm-up that is 0, exactly as `transformers`' `LambdaLR` schedules behave.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// Always 1.
    Constant,
    /// `step / warmup` during warm-up, then 1 (`get_constant_schedule_with_warmup`).
    ConstantWithWarmup {
        /// Warm-up length in optimiser steps.
        warmup_steps: u64,
    },
    /// Linear warm-up, then linear decay to 0 at `total_steps` (`get_linear_schedule_with_warmup`).
    Linear {
        /// Warm-up length in optimiser steps.
        warmup_steps: u64,
        /// Step at which the multiplier reaches 0.
        total_steps: u64,
    },
    /// Linear warm-up, then half a cosine from 1 down to `min_lr_ratio` at `total_steps`
    /// (`get_cosine_schedule_with_warmup`, or `cosine_with_min_lr` when `min_lr_ratio > 0`).
    /// After `total_steps` it stays at `min_lr_ratio` (transformers would start rising again).
    Cosine {
        /// Warm-up length in optimiser steps.
        warmup_steps: u64,
        /// Step at which the multiplier reaches `min_lr_ratio`.
        total_steps: u64,
        /// Floor as a fraction of the base learning rate.
        min_lr_ratio: f64,
    },
}

impl Default for LrSchedule {
    /// A constant learning rate.
    fn default() -> Self {
        LrSchedule::Constant
    }
}

impl LrSchedule {
    /// Checks that the schedule is well formed (e.g. warm-up not longer than training).
    pub fn validate(&self) -> Result<()> {
        match *self {
            LrSchedule::Constant | LrSchedule::ConstantWithWarmup { .. } => Ok(()),
            LrSchedule::Linear { warmup_steps, total_steps } | LrSchedule::Cosine { warmup_steps, total_steps, .. }
                if warmup_steps > total_steps =>
            {
                Err(OptimError::config(
                    "warmup_steps",
                    warmup_steps,
                    format!("longer than total_steps = {total_steps}"),
                ))
            }
            LrSchedule::Cosine { min_lr_ratio, .. } if !(0.0..=1.0).contains(&min_lr_ratio) => {
                Err(OptimError::config("min_lr_ratio", min_lr_ratio, "must lie in [0, 1]"))
            }
            _ => Ok(()),
        }
    }

    /// The multiplier of the base learning rate for the update with index `step` (from 0).
    pub fn multiplier(&self, step: u64) -> f64 {
        let warm = |w: u64| step as f64 / w.max(1) as f64;
        match *self {
            LrSchedule::Constant => 1.0,
            LrSchedule::ConstantWithWarmup { warmup_steps } => {
                if step < warmup_steps {
                    warm(warmup_steps)
                } else {
                    1.0
                }
            }
            LrSchedule::Linear { warmup_steps, total_steps } => {
                if step < warmup_steps {
                    warm(warmup_steps)
                } else {
                    let left = total_steps.saturating_sub(step) as f64;
                    (left / total_steps.saturating_sub(warmup_steps).max(1) as f64).max(0.0)
                }
            }
            LrSchedule::Cosine { warmup_steps, total_steps, min_lr_ratio } => {
                if step < warmup_steps {
                    warm(warmup_steps)
                } else {
                    let progress =
                        (step - warmup_steps) as f64 / total_steps.saturating_sub(warmup_steps).max(1) as f64;
                    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos());
                    (cosine * (1.0 - min_lr_ratio) + min_lr_ratio).max(0.0)
                }
            }
        }
    }

    /// `base_lr · multiplier(step)`.
    pub fn lr(&self, base_lr: f64, step: u64) -> f64 {
        base_lr * self.multiplier(step)
    }
}
