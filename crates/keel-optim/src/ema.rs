//! Exponential moving average of weights in parameter space (arXiv 2508.12531):
//! `θ̄ ← α θ̄ + (1 − α) θ` after each optimiser step, starting from the initial (aligned) weights.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Ctx, OptimError, Result};
use crate::state_io::{load_json, load_tensors, save_json, save_tensors};

/// Pull the live weights back towards the average every `every` updates:
/// `θ ← (1 − mix) θ + mix θ̄` (`mix = 1` replaces θ with θ̄).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BlendBack {
    /// Period in EMA updates (1 = after every update).
    pub every: u64,
    /// Mixing rate in [0, 1].
    pub mix: f64,
}

/// Configuration of [`Ema`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EmaConfig {
    /// Decay α in [0, 1]: the weight of the old average (0.99 ≈ a window of 100 steps).
    pub alpha: f64,
    /// Optional blend-back of the average into the live weights.
    pub blend_back: Option<BlendBack>,
}

impl EmaConfig {
    /// Range checks.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(OptimError::config("alpha", self.alpha, "the EMA decay must lie in [0, 1]"));
        }
        if let Some(bb) = self.blend_back {
            if bb.every == 0 {
                return Err(OptimError::config("every", bb.every, "blend-back period must be at least 1"));
            }
            if !(0.0..=1.0).contains(&bb.mix) {
                return Err(OptimError::config("mix", bb.mix, "blend-back mixing rate must lie in [0, 1]"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct EmaMeta {
    format: String,
    config: EmaConfig,
    updates: u64,
    names: Vec<String>,
}

const EMA_FORMAT: &str = "keel-ema/1";
/// File name of the averaged weights inside a state directory (Hugging Face tensor names).
pub const EMA_TENSORS_FILE: &str = "ema.safetensors";
/// File name of the EMA metadata inside a state directory.
pub const EMA_META_FILE: &str = "ema.json";

/// The averaged weights θ̄, kept as separate tensors beside the live parameters.
///
/// Half-precision parameters are averaged in f32 (with α = 0.999 a bf16 average would not move
/// at all); f32 and f64 parameters are averaged in their own dtype.
#[derive(Debug, Clone)]
pub struct Ema {
    config: EmaConfig,
    shadow: Vec<(String, Tensor)>,
    updates: u64,
}

fn shadow_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

impl Ema {
    /// Starts the average at a copy of the current weights of `params`.
    pub fn new(params: &[(String, Var)], config: EmaConfig) -> Result<Self> {
        config.validate()?;
        let mut seen = BTreeSet::new();
        let mut shadow = Vec::with_capacity(params.len());
        for (name, var) in params {
            if !seen.insert(name.as_str()) {
                return Err(OptimError::param(name, "appears twice in the EMA's parameters"));
            }
            if !var.dtype().is_float() {
                return Err(OptimError::param(name, format!("dtype {:?} cannot be averaged", var.dtype())));
            }
            let copy = var
                .as_detached_tensor()
                .to_dtype(shadow_dtype(var.dtype()))
                .and_then(|t| t.copy())
                .ctx(&format!("Ema::new: copying `{name}`"))?;
            shadow.push((name.clone(), copy));
        }
        Ok(Ema { config, shadow, updates: 0 })
    }

    /// The configuration.
    pub fn config(&self) -> &EmaConfig {
        &self.config
    }

    /// Number of updates so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The averaged value of `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.shadow.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// All averaged tensors with their names.
    pub fn named_tensors(&self) -> &[(String, Tensor)] {
        &self.shadow
    }

    fn lookup<'a>(params: &'a [(String, Var)], name: &str) -> Result<&'a Var> {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| OptimError::param(name, "tracked by the EMA but missing from the given parameters"))
    }

    /// `θ̄ ← α θ̄ + (1 − α) θ` for every tracked parameter (call after each optimiser step), then the
    /// blend-back if one is configured and due. Returns whether a blend-back happened.
    pub fn update(&mut self, params: &[(String, Var)]) -> Result<bool> {
        let alpha = self.config.alpha;
        let mut next = Vec::with_capacity(self.shadow.len());
        for (name, avg) in &self.shadow {
            let var = Self::lookup(params, name)?;
            if var.dims() != avg.dims() {
                return Err(OptimError::param(
                    name,
                    format!("shape {:?} differs from the average's {:?}", var.dims(), avg.dims()),
                ));
            }
            let live = var.as_detached_tensor().to_dtype(avg.dtype()).ctx(&format!("Ema::update: `{name}` dtype"))?;
            let t = ((avg * alpha).ctx(&format!("Ema::update: α θ̄ `{name}`"))?
                + (live * (1.0 - alpha)).ctx(&format!("Ema::update: (1-α) θ `{name}`"))?)
            .ctx(&format!("Ema::update: sum `{name}`"))?;
            next.push((name.clone(), t));
        }
        self.shadow = next;
        self.updates += 1;
        // `%` rather than `is_multiple_of`: the workspace's MSRV (1.85) predates it.
        #[allow(clippy::manual_is_multiple_of)]
        let due = |every: u64| self.updates % every == 0;
        match self.config.blend_back {
            Some(bb) if due(bb.every) => {
                self.blend_into(params, bb.mix)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// `θ ← (1 − mix) θ + mix θ̄` on the live parameters.
    pub fn blend_into(&self, params: &[(String, Var)], mix: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&mix) {
            return Err(OptimError::config("mix", mix, "blend mixing rate must lie in [0, 1]"));
        }
        for (name, avg) in &self.shadow {
            let var = Self::lookup(params, name)?;
            let live = var.as_detached_tensor().to_dtype(avg.dtype()).ctx(&format!("Ema::blend_into: `{name}`"))?;
            let mixed = ((live * (1.0 - mix)).ctx(&format!("Ema::blend_into: `{name}`"))?
                + (avg * mix).ctx(&format!("Ema::blend_into: `{name}`"))?)
            .and_then(|t| t.to_dtype(var.dtype()))
            .ctx(&format!("Ema::blend_into: mix `{name}`"))?;
            var.set(&mixed).ctx(&format!("Ema::blend_into: writing `{name}`"))?;
        }
        Ok(())
    }

    /// Copies θ̄ into `target` — typically the `Var`s of a second model instance used to evaluate
    /// the average beside the live policy. Every tracked name must be present in `target`.
    pub fn copy_into(&self, target: &[(String, Var)]) -> Result<()> {
        for (name, avg) in &self.shadow {
            let var = Self::lookup(target, name)?;
            let t = avg.to_dtype(var.dtype()).ctx(&format!("Ema::copy_into: `{name}` dtype"))?;
            var.set(&t).ctx(&format!("Ema::copy_into: writing `{name}`"))?;
        }
        Ok(())
    }

    /// Writes `dir/ema.safetensors` (θ̄ under the parameters' own names, so it loads as a model
    /// checkpoint) and `dir/ema.json` (α, blend-back, update count), atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let tensors: HashMap<String, Tensor> = self.shadow.iter().cloned().collect();
        save_tensors(&dir.join(EMA_TENSORS_FILE), &tensors)?;
        let meta = EmaMeta {
            format: EMA_FORMAT.into(),
            config: self.config,
            updates: self.updates,
            names: self.shadow.iter().map(|(n, _)| n.clone()).collect(),
        };
        save_json(&dir.join(EMA_META_FILE), &meta)
    }

    /// Reads an EMA written by [`Ema::save`] onto `device`.
    pub fn load(dir: &Path, device: &candle_core::Device) -> Result<Self> {
        let meta_path = dir.join(EMA_META_FILE);
        let tensors_path = dir.join(EMA_TENSORS_FILE);
        let meta: EmaMeta = load_json(&meta_path)?;
        if meta.format != EMA_FORMAT {
            return Err(OptimError::state(&meta_path, format!("format `{}`, expected `{EMA_FORMAT}`", meta.format)));
        }
        meta.config.validate()?;
        let mut tensors = load_tensors(&tensors_path, device)?;
        let mut shadow = Vec::with_capacity(meta.names.len());
        for name in meta.names {
            let t = tensors
                .remove(&name)
                .ok_or_else(|| OptimError::state(&tensors_path, format!("missing tensor `{name}`")))?;
            shadow.push((name, t));
        }
        Ok(Ema { config: meta.config, shadow, updates: meta.updates })
    }
}
