//! AdamW with decoupled weight decay, per-parameter decay groups and bit-identical resume.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Ctx, OptimError, Result};
use crate::state_io::{load_json, load_tensors, save_json, save_tensors};

/// AdamW hyper-parameters (Loshchilov & Hutter 2019), PyTorch's names and meaning.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Learning rate (the schedule's base; change it per step with [`AdamW::set_lr`]).
    pub lr: f64,
    /// First-moment decay β₁.
    pub beta1: f64,
    /// Second-moment decay β₂.
    pub beta2: f64,
    /// Added to `sqrt(v̂)` in the denominator.
    pub eps: f64,
    /// Decoupled weight decay λ for parameters that decay: `θ ← θ (1 − lr λ)`.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's `torch.optim.AdamW` defaults: lr 1e-3, β = (0.9, 0.999), ε = 1e-8, λ = 0.01.
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

impl AdamWConfig {
    /// Range checks, so a bad config fails at construction instead of producing NaNs.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr >= 0.0 && self.lr.is_finite()) {
            return Err(OptimError::config("lr", self.lr, "must be finite and >= 0"));
        }
        if !(0.0..1.0).contains(&self.beta1) {
            return Err(OptimError::config("beta1", self.beta1, "must lie in [0, 1)"));
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return Err(OptimError::config("beta2", self.beta2, "must lie in [0, 1)"));
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(OptimError::config("eps", self.eps, "must be finite and > 0"));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(OptimError::config("weight_decay", self.weight_decay, "must be finite and >= 0"));
        }
        Ok(())
    }
}

/// Which parameters receive weight decay, decided from name and rank.
///
/// Decaying norm gains, biases and embeddings pulls them towards 0, which is not regularisation
/// but damage (a norm gain of 0 silences a layer); the usual recipe (nanoGPT, Hugging Face) exempts
/// them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecayRule {
    /// Parameters with fewer dimensions than this do not decay (2 exempts biases and norm gains).
    pub min_rank: usize,
    /// Parameters whose name contains any of these substrings do not decay.
    pub exclude: Vec<String>,
}

impl Default for DecayRule {
    /// No decay for rank < 2 and for names containing `bias`, `norm` or `embed`.
    fn default() -> Self {
        DecayRule { min_rank: 2, exclude: vec!["bias".into(), "norm".into(), "embed".into()] }
    }
}

impl DecayRule {
    /// Every parameter decays.
    pub fn all() -> Self {
        DecayRule { min_rank: 0, exclude: Vec::new() }
    }

    /// True if the parameter `name` of the given rank should decay.
    pub fn decays(&self, name: &str, rank: usize) -> bool {
        rank >= self.min_rank && !self.exclude.iter().any(|s| name.contains(s.as_str()))
    }
}

/// A group of parameters sharing a weight decay and learning-rate scale (PyTorch param groups).
#[derive(Debug, Clone)]
pub struct ParamGroup {
    /// Decoupled weight decay λ of this group.
    pub weight_decay: f64,
    /// Multiplier of the optimiser's learning rate for this group (e.g. a larger lr for a fresh
    /// value head than for the pretrained trunk).
    pub lr_scale: f64,
    /// The named parameters.
    pub params: Vec<(String, Var)>,
}

#[derive(Debug)]
struct ParamState {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    step: u64,
    weight_decay: f64,
    lr_scale: f64,
}

/// AdamW over named parameters:
///
/// ```text
/// m ← β₁ m + (1 − β₁) g          v ← β₂ v + (1 − β₂) g²
/// m̂ = m / (1 − β₁ᵗ)              v̂ = v / (1 − β₂ᵗ)
/// θ ← θ (1 − lr λ) − lr m̂ / (√v̂ + ε)
/// ```
///
/// Differences from `candle_nn::AdamW`: per-parameter weight decay and lr scale (groups), a
/// per-parameter step count `t` (a parameter without a gradient is left untouched, as in PyTorch),
/// and save/load of the full state. The update uses the same operation order as
/// `candle_nn::AdamW`, so with one group and gradients for every parameter the two agree bit for bit.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<ParamState>,
    steps: u64,
}

/// What is written next to `optimizer.safetensors` in `optimizer.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AdamWMeta {
    format: String,
    config: AdamWConfig,
    steps: u64,
    params: Vec<ParamMeta>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ParamMeta {
    name: String,
    step: u64,
    weight_decay: f64,
    lr_scale: f64,
    shape: Vec<usize>,
    dtype: String,
}

const ADAMW_FORMAT: &str = "keel-adamw/1";
/// File name of the moment tensors inside a state directory.
pub const ADAMW_TENSORS_FILE: &str = "optimizer.safetensors";
/// File name of the step counts and hyper-parameters inside a state directory.
pub const ADAMW_META_FILE: &str = "optimizer.json";

impl AdamW {
    /// One group: every parameter decays with `config.weight_decay`.
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let wd = config.weight_decay;
        Self::with_groups(vec![ParamGroup { weight_decay: wd, lr_scale: 1.0, params }], config)
    }

    /// Two groups split by `rule`: decaying parameters get `config.weight_decay`, the rest 0.
    pub fn with_decay_rule(params: Vec<(String, Var)>, config: AdamWConfig, rule: &DecayRule) -> Result<Self> {
        let (decay, no_decay): (Vec<_>, Vec<_>) = params.into_iter().partition(|(n, v)| rule.decays(n, v.rank()));
        Self::with_groups(
            vec![
                ParamGroup { weight_decay: config.weight_decay, lr_scale: 1.0, params: decay },
                ParamGroup { weight_decay: 0.0, lr_scale: 1.0, params: no_decay },
            ],
            config,
        )
    }

    /// Explicit parameter groups; `config.weight_decay` is ignored in favour of each group's.
    pub fn with_groups(groups: Vec<ParamGroup>, config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        let mut seen = BTreeSet::new();
        let mut params = Vec::new();
        for group in groups {
            if !(group.weight_decay >= 0.0 && group.weight_decay.is_finite()) {
                return Err(OptimError::config(
                    "weight_decay",
                    group.weight_decay,
                    "group weight decay must be finite and >= 0",
                ));
            }
            if !(group.lr_scale >= 0.0 && group.lr_scale.is_finite()) {
                return Err(OptimError::config("lr_scale", group.lr_scale, "must be finite and >= 0"));
            }
            for (name, var) in group.params {
                if !seen.insert(name.clone()) {
                    return Err(OptimError::param(name, "appears twice in the optimiser's parameters"));
                }
                if !var.dtype().is_float() {
                    return Err(OptimError::param(name, format!("dtype {:?} is not trainable", var.dtype())));
                }
                let m = var.zeros_like().ctx(&format!("AdamW: zeros for `{name}`"))?;
                let v = m.clone();
                params.push(ParamState {
                    name,
                    var,
                    m,
                    v,
                    step: 0,
                    weight_decay: group.weight_decay,
                    lr_scale: group.lr_scale,
                });
            }
        }
        Ok(AdamW { config, params, steps: 0 })
    }

    /// The hyper-parameters (with the current learning rate).
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.config.lr
    }

    /// Sets the learning rate for the next step (call with the schedule's value before each step).
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Number of `step` calls so far (the schedule's step index for the next update).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Parameter names in optimiser order.
    pub fn param_names(&self) -> Vec<&str> {
        self.params.iter().map(|p| p.name.as_str()).collect()
    }

    /// The weight decay applied to `name`, if it is one of the optimiser's parameters.
    pub fn weight_decay_of(&self, name: &str) -> Option<f64> {
        self.params.iter().find(|p| p.name == name).map(|p| p.weight_decay)
    }

    /// First and second moments `(m, v)` and the step count of `name` (for inspection and tests).
    pub fn moments(&self, name: &str) -> Option<(&Tensor, &Tensor, u64)> {
        self.params.iter().find(|p| p.name == name).map(|p| (&p.m, &p.v, p.step))
    }

    /// One AdamW update from `grads`; parameters without a gradient are skipped.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let (b1, b2, eps) = (self.config.beta1, self.config.beta2, self.config.eps);
        for p in self.params.iter_mut() {
            let Some(g) = grads.get(p.var.as_tensor()) else { continue };
            if g.dims() != p.var.dims() {
                return Err(OptimError::param(
                    &p.name,
                    format!("gradient shape {:?} differs from parameter shape {:?}", g.dims(), p.var.dims()),
                ));
            }
            let ctx = |what: &str| format!("AdamW step, `{}`: {what}", p.name);
            p.step += 1;
            let lr = self.config.lr * p.lr_scale;
            let t = p.step as i32;
            let scale_m = 1f64 / (1f64 - b1.powi(t));
            let scale_v = 1f64 / (1f64 - b2.powi(t));
            let next_m = ((&p.m * b1).ctx(&ctx("β1 m"))? + (g * (1.0 - b1)).ctx(&ctx("(1-β1) g"))?).ctx(&ctx("m"))?;
            let g2 = g.sqr().ctx(&ctx("g²"))?;
            let next_v = ((&p.v * b2).ctx(&ctx("β2 v"))? + (g2 * (1.0 - b2)).ctx(&ctx("(1-β2) g²"))?).ctx(&ctx("v"))?;
            let m_hat = (&next_m * scale_m).ctx(&ctx("m̂"))?;
            let v_hat = (&next_v * scale_v).ctx(&ctx("v̂"))?;
            let decayed = (p.var.as_tensor() * (1f64 - lr * p.weight_decay)).ctx(&ctx("decay"))?;
            let denom = (v_hat.sqrt().ctx(&ctx("√v̂"))? + eps).ctx(&ctx("√v̂ + ε"))?;
            let adjusted = (m_hat / denom).ctx(&ctx("m̂ / (√v̂ + ε)"))?;
            let next = (decayed - (adjusted * lr).ctx(&ctx("lr ·"))?).ctx(&ctx("θ update"))?;
            p.var.set(&next).ctx(&ctx("writing θ"))?;
            p.m = next_m.detach();
            p.v = next_v.detach();
        }
        Ok(())
    }

    /// Writes the optimiser state to `dir/optimizer.safetensors` (`exp_avg.{name}`,
    /// `exp_avg_sq.{name}`, in each parameter's dtype) and `dir/optimizer.json` (hyper-parameters,
    /// global and per-parameter step counts, decay groups), each atomically.
    ///
    /// Raw tensor bytes and shortest-round-trip JSON floats make [`AdamW::load`] restore the state
    /// exactly, so a resumed run continues bit-identically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut tensors = HashMap::new();
        let mut metas = Vec::new();
        for p in &self.params {
            tensors.insert(format!("exp_avg.{}", p.name), p.m.clone());
            tensors.insert(format!("exp_avg_sq.{}", p.name), p.v.clone());
            metas.push(ParamMeta {
                name: p.name.clone(),
                step: p.step,
                weight_decay: p.weight_decay,
                lr_scale: p.lr_scale,
                shape: p.var.dims().to_vec(),
                dtype: format!("{:?}", p.var.dtype()),
            });
        }
        save_tensors(&dir.join(ADAMW_TENSORS_FILE), &tensors)?;
        let meta = AdamWMeta { format: ADAMW_FORMAT.into(), config: self.config, steps: self.steps, params: metas };
        save_json(&dir.join(ADAMW_META_FILE), &meta)
    }

    /// Restores state written by [`AdamW::save`] into this optimiser, whose parameters must have
    /// the same names, shapes and dtypes. Hyper-parameters (including the current lr) and group
    /// settings are restored as saved. Nothing is changed if any check fails.
    pub fn load(&mut self, dir: &Path) -> Result<()> {
        let meta_path = dir.join(ADAMW_META_FILE);
        let tensors_path = dir.join(ADAMW_TENSORS_FILE);
        let meta: AdamWMeta = load_json(&meta_path)?;
        if meta.format != ADAMW_FORMAT {
            return Err(OptimError::state(&meta_path, format!("format `{}`, expected `{ADAMW_FORMAT}`", meta.format)));
        }
        let saved: BTreeSet<&str> = meta.params.iter().map(|p| p.name.as_str()).collect();
        let live: BTreeSet<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
        if saved != live {
            let missing: Vec<_> = live.difference(&saved).collect();
            let extra: Vec<_> = saved.difference(&live).collect();
            return Err(OptimError::state(
                &meta_path,
                format!("parameter names differ: not in file {missing:?}, not in optimiser {extra:?}"),
            ));
        }
        let device = match self.params.first() {
            Some(p) => p.var.device().clone(),
            None => candle_core::Device::Cpu,
        };
        let mut tensors = load_tensors(&tensors_path, &device)?;
        let mut updates = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let Some(pm) = meta.params.iter().find(|m| m.name == p.name) else {
                return Err(OptimError::state(&meta_path, format!("no entry for `{}`", p.name)));
            };
            let mut take = |key: String| -> Result<Tensor> {
                let t = tensors
                    .remove(&key)
                    .ok_or_else(|| OptimError::state(&tensors_path, format!("missing tensor `{key}`")))?;
                if t.dims() != p.var.dims() || t.dtype() != p.var.dtype() {
                    return Err(OptimError::state(
                        &tensors_path,
                        format!(
                            "`{key}` has shape {:?} dtype {:?}, parameter has {:?} {:?}",
                            t.dims(),
                            t.dtype(),
                            p.var.dims(),
                            p.var.dtype()
                        ),
                    ));
                }
                Ok(t)
            };
            let m = take(format!("exp_avg.{}", p.name))?;
            let v = take(format!("exp_avg_sq.{}", p.name))?;
            updates.push((m, v, pm.step, pm.weight_decay, pm.lr_scale));
        }
        for (p, (m, v, step, wd, scale)) in self.params.iter_mut().zip(updates) {
            p.m = m;
            p.v = v;
            p.step = step;
            p.weight_decay = wd;
            p.lr_scale = scale;
        }
        self.config = meta.config;
        self.steps = meta.steps;
        Ok(())
    }
}
