//! Attaching, merging, saving and loading LoRA adapters on a [`CausalLm`] (the adapters
//! themselves, their configuration and file format are in [`crate::lora`]).

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use super::CausalLm;
use crate::error::{CandleContext, ModelError, ModelResult};
use crate::layers::{proj_path, Param};
use crate::lora::{LoraConfig, PEFT_PREFIX};
use crate::weights::{write_safetensors, write_text_atomic};

impl CausalLm {
    /// Attaches fresh adapters and freezes every base weight, so [`CausalLm::named_vars`] lists
    /// only the adapters. `A` is Kaiming-uniform (bound `1/sqrt(in)`, as PEFT), `B` is zero, so the
    /// adapted model's outputs initially equal the base model's.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> ModelResult<()> {
        if self.lora.is_some() {
            return Err(ModelError::Lora("adapters are already attached; merge or rebuild the model first".into()));
        }
        let targets = cfg.targets()?;
        let (device, dtype) = (self.device.clone(), self.dtype);
        let stream = keel_core::SeedStream::new(seed);
        self.for_each_param_mut(&mut |p| {
            p.train = false;
            Ok(())
        })?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (proj, lin) in layer.projections_mut() {
                if targets.contains(&proj) {
                    lin.lora = Some(cfg.new_pair(i, proj, lin, &stream, &device, dtype)?);
                }
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
            for (proj, lin) in layer.projections_mut() {
                if lin.lora.is_some() {
                    let merged = lin.effective_weight().ctx(|| format!("merging adapter into {}", proj_path(i, proj)))?;
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
        let text = cfg.to_peft_json()?;
        write_text_atomic(&dir.join("adapter_config.json"), &text)
    }

    /// Attaches the adapters stored in `dir` (written by [`CausalLm::save_lora`] or PEFT).
    pub fn load_lora(&mut self, dir: &Path) -> ModelResult<()> {
        let cfg = LoraConfig::read_peft(dir)?;
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
