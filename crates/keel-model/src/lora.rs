//! LoRA adapters on the attention and MLP projections: their configuration, initialisation and
//! the PEFT file format. Attaching them to a model, merging and saving are methods of
//! [`crate::CausalLm`] (`add_lora`, `merge_lora`, `save_lora`, `load_lora`, ...).
//!
//! Full fine-tuning of a 135M-parameter model is slow on CPU and moves every weight away from the
//! aligned reference; LoRA trains a low-rank update `W + (α/r)·B·A` with `B` starting at zero, so
//! the adapted model starts exactly at the base model and only `r·(in+out)` numbers per projection
//! are optimised. Adapters save and load in the PEFT layout
//! (`adapter_model.safetensors` with `base_model.model.<module>.lora_A.weight`, plus
//! `adapter_config.json`) and can be merged into the base weights for deployment.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::error::{CandleContext, ModelError, ModelResult};
use crate::layers::{proj_path, Linear, LoraPair, Param, PROJECTIONS};

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

/// The prefix PEFT puts before every module name in `adapter_model.safetensors`.
pub(crate) const PEFT_PREFIX: &str = "base_model.model.";

impl LoraConfig {
    /// The distinct target projections in the order given; errors on rank 0, no targets or an
    /// unknown module name.
    pub(crate) fn targets(&self) -> ModelResult<Vec<&'static str>> {
        if self.r == 0 {
            return Err(ModelError::Lora("rank r must be > 0".into()));
        }
        if self.target_modules.is_empty() {
            return Err(ModelError::Lora("target_modules is empty".into()));
        }
        let mut out = Vec::new();
        for m in &self.target_modules {
            let p = PROJECTIONS.iter().find(|p| *p == m).ok_or_else(|| {
                ModelError::Lora(format!("unknown target module `{m}` (valid: {})", PROJECTIONS.join(", ")))
            })?;
            if !out.contains(p) {
                out.push(*p);
            }
        }
        Ok(out)
    }

    /// A fresh adapter for projection `proj` of layer `layer` (weight `lin.w`, `[out, in]`): `A`
    /// Kaiming-uniform (bound `1/sqrt(in)`, as PEFT) from its own stream of `stream` keyed by the
    /// tensor name, `B` zero, so the adapted projection initially computes what the base does.
    pub(crate) fn new_pair(
        &self,
        layer: usize,
        proj: &str,
        lin: &Linear,
        stream: &keel_core::SeedStream,
        device: &Device,
        dtype: DType,
    ) -> ModelResult<LoraPair> {
        let path = proj_path(layer, proj);
        let (out, inp) = lin.w.var.as_tensor().dims2().ctx(|| format!("{path}: weight rank"))?;
        let name = format!("{path}.lora_A.weight");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(stream.seed(&name));
        let bound = 1.0 / (inp as f64).sqrt();
        let a: Vec<f64> = (0..self.r * inp).map(|_| rng.random_range(-bound..bound)).collect();
        let a = Tensor::from_vec(a, (self.r, inp), device).and_then(|t| t.to_dtype(dtype)).ctx(|| name.clone())?;
        let b = Tensor::zeros((out, self.r), dtype, device).ctx(|| name.clone())?;
        Ok(LoraPair { a: Param::new(&a, true)?, b: Param::new(&b, true)?, scale: self.alpha / self.r as f64 })
    }

    /// The PEFT `adapter_config.json` text for these adapters.
    pub(crate) fn to_peft_json(&self) -> ModelResult<String> {
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.r,
            "lora_alpha": self.alpha,
            "target_modules": self.target_modules,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "inference_mode": false,
        });
        serde_json::to_string_pretty(&config)
            .map_err(|source| ModelError::Json { what: "serialising adapter_config.json".into(), source })
    }

    /// Reads `adapter_config.json` in `dir` (written by Keel or PEFT).
    pub(crate) fn read_peft(dir: &Path) -> ModelResult<Self> {
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
        Ok(LoraConfig { r: r as usize, alpha, target_modules: targets })
    }
}
