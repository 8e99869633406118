//! LoRA adapters on the attention and MLP projections.
//!
//! Full fine-tuning of a 135M-parameter model is slow on CPU and moves every weight away from the
//! aligned reference; LoRA trains a low-rank update `W + (α/r)·B·A` with `B` starting at zero, so
//! the adapted model starts exactly at the base model and only `r·(in+out)` numbers per projection
//! are optimised. Adapters save and load in the PEFT layout
//! (`adapter_model.safetensors` with `base_model.model.<module>.lora_A.weight`, plus
//! `adapter_config.json`) and can be merged into the base weights for deployment.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::decoder::{proj_path, CausalLm, LoraPair, Param, PROJECTIONS};
use crate::error::{CandleContext, ModelError, ModelResult};
use crate::weights::{write_safetensors, write_text_atomic};

/// Which projections get adapters and how large they are.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank `r` of the update.
    pub r: usize,
    /// Scaling numerator: the update is multiplied by `alpha / r`.
    pub alpha: f64,
    /// Target module names among `q_proj k_proj v_proj o_proj gate_proj up_proj down_proj`.
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    /// Rank 8, alpha 16, every attention and MLP projection (the common PEFT recipe for small models).
    fn default() -> Self {
        LoraConfig { r: 8, alpha: 16.0, target_modules: PROJECTIONS.iter().map(|s| s.to_string()).collect() }
    }
}

/// Projection names LoRA can target (Hugging Face module names), for validating user input.
pub const LORA_TARGETS: [&str; 7] = PROJECTIONS;

const PEFT_PREFIX: &str = "base_model.model.";

impl LoraConfig {
    fn validate(&self) -> ModelResult<Vec<usize>> {
        if self.r == 0 {
            return Err(ModelError::Lora("rank r must be > 0".into()));
        }
        if self.target_modules.is_empty() {
            return Err(ModelError::Lora("target_modules is empty".into()));
        }
        let mut idx = Vec::new();
        for m in &self.target_modules {
            let j = PROJECTIONS.iter().position(|p| p == m).ok_or_else(|| {
                ModelError::Lora(format!("unknown target module `{m}` (valid: {})", PROJECTIONS.join(", ")))
            })?;
            if !idx.contains(&j) {
                idx.push(j);
            }
        }
        Ok(idx)
    }
}

impl CausalLm {
    /// Attaches fresh adapters and freezes every base weight, so [`CausalLm::named_vars`] lists
    /// only the adapters. `A` is Kaiming-uniform (bound `1/sqrt(in)`, as PEFT), `B` is zero, so the
    /// adapted model's outputs initially equal the base model's.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> ModelResult<()> {
        if self.lora.is_some() {
            return Err(ModelError::Lora("adapters are already attached; merge or rebuild the model first".into()));
        }
        let targets = cfg.validate()?;
        let scale = cfg.alpha / cfg.r as f64;
        let (device, dtype) = (self.device.clone(), self.dtype);
        let stream = keel_core::SeedStream::new(seed);
        self.for_each_param_mut(&mut |p| {
            p.train = false;
            Ok(())
        })?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for &j in &targets {
                let lin = &mut layer.proj[j];
                let (out, inp) = lin.w.var.as_tensor().dims2().ctx(|| format!("{}: weight rank", proj_path(i, j)))?;
                let name = format!("{}.lora_A.weight", proj_path(i, j));
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(stream.seed(&name));
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f64> = (0..cfg.r * inp).map(|_| rng.random_range(-bound..bound)).collect();
                let a = Tensor::from_vec(a, (cfg.r, inp), &device).and_then(|t| t.to_dtype(dtype)).ctx(|| name.clone())?;
                let b = Tensor::zeros((out, cfg.r), dtype, &device).ctx(|| name.clone())?;
                lin.lora = Some(LoraPair { a: Param::new(&a, true)?, b: Param::new(&b, true)?, scale });
            }
        }
        self.lora = Some(cfg.clone());
        Ok(())
    }

    /// The attached adapters' configuration, if any.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    /// Folds every adapter into its base weight (`W += (α/r)·B·A`), removes the adapters and makes
    /// all base weights trainable again; the merged model computes the same logits.
    pub fn merge_lora(&mut self) -> ModelResult<()> {
        if self.lora.is_none() {
            return Err(ModelError::Lora("no adapters attached".into()));
        }
        self.fold_adapters(true)?;
        self.for_each_param_mut(&mut |p| {
            p.train = true;
            Ok(())
        })
    }

    /// An independent, frozen copy with any adapters folded into the base weights: what a sampler
    /// needs (one matmul per projection instead of three), computing the same logits as `self`.
    pub fn merged_frozen_copy(&self) -> ModelResult<Self> {
        let mut c = self.frozen_copy()?;
        if c.lora.is_some() {
            c.fold_adapters(false)?;
        }
        Ok(c)
    }

    /// Replaces every adapted projection's weight by `W + (α/r)·B·A` (trainable or not as
    /// `trainable` says) and drops the adapters.
    fn fold_adapters(&mut self, trainable: bool) -> ModelResult<()> {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (j, lin) in layer.proj.iter_mut().enumerate() {
                if lin.lora.is_some() {
                    let merged = lin.effective_weight().ctx(|| format!("merging adapter into {}", proj_path(i, j)))?;
                    lin.lora = None;
                    lin.w = Param::new(&merged, trainable)?;
                }
            }
        }
        self.lora = None;
        Ok(())
    }

    /// Writes `adapter_model.safetensors` and `adapter_config.json` (PEFT layout) to `dir`.
    pub fn save_lora(&self, dir: &Path) -> ModelResult<()> {
        let cfg = self.lora.as_ref().ok_or_else(|| ModelError::Lora("no adapters to save".into()))?;
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io("creating directory", dir, e))?;
        let tensors: HashMap<String, Tensor> = self
            .lora_params()
            .into_iter()
            .map(|(n, p)| (format!("{PEFT_PREFIX}{n}"), p.var.as_tensor().detach()))
            .collect();
        write_safetensors(&dir.join("adapter_model.safetensors"), &tensors)?;
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": cfg.r,
            "lora_alpha": cfg.alpha,
            "target_modules": cfg.target_modules,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "inference_mode": false,
        });
        let text = serde_json::to_string_pretty(&config)
            .map_err(|source| ModelError::Json { what: "serialising adapter_config.json".into(), source })?;
        write_text_atomic(&dir.join("adapter_config.json"), &text)
    }

    /// Attaches the adapters stored in `dir` (written by [`CausalLm::save_lora`] or PEFT).
    pub fn load_lora(&mut self, dir: &Path) -> ModelResult<()> {
        let cpath = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cpath).map_err(|e| ModelError::io("reading", &cpath, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|source| ModelError::Json { what: format!("parsing {}", cpath.display()), source })?;
        let r = v.get("r").and_then(|x| x.as_u64()).ok_or_else(|| ModelError::config("r", "missing in adapter_config.json"))?;
        let alpha = v.get("lora_alpha").and_then(|x| x.as_f64()).unwrap_or(r as f64);
        let targets: Vec<String> = match v.get("target_modules") {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|s| s.as_str().map(String::from)).collect(),
            _ => return Err(ModelError::config("target_modules", "expected a list in adapter_config.json")),
        };
        let cfg = LoraConfig { r: r as usize, alpha, target_modules: targets };
        self.add_lora(&cfg, 0)?;
        self.load_lora_values(dir)
    }

    /// Overwrites the attached adapters' values with those stored in `dir` (same targets and rank),
    /// e.g. to resume training: the frozen base weights stay as they are.
    pub fn load_lora_values(&self, dir: &Path) -> ModelResult<()> {
        if self.lora.is_none() {
            return Err(ModelError::Lora("no adapters attached to load values into".into()));
        }
        let wpath = dir.join("adapter_model.safetensors");
        let mut tensors =
            candle_core::safetensors::load(&wpath, &self.device).ctx(|| format!("reading {}", wpath.display()))?;
        for (name, p) in self.lora_params() {
            let key = format!("{PEFT_PREFIX}{name}");
            let expected = p.var.as_tensor().dims().to_vec();
            let t = tensors
                .remove(&key)
                .ok_or_else(|| ModelError::MissingTensor { name: key.clone(), expected: expected.clone() })?;
            if t.dims() != expected.as_slice() {
                return Err(ModelError::ShapeMismatch { name: key, expected, actual: t.dims().to_vec() });
            }
            let t = t.to_dtype(self.dtype).ctx(|| format!("casting {key}"))?;
            p.var.set(&t).ctx(|| format!("setting {key}"))?;
        }
        Ok(())
    }
}
