//! The parameter inventory of a [`CausalLm`] (every weight under its Hugging Face name), the
//! views optimisers and policy stores use (named variables, snapshots), and copies (frozen,
//! deep, inference views).

use std::sync::Arc;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;

use super::CausalLm;
use crate::error::{CandleContext, ModelError, ModelResult};
use crate::layers::{proj_path, Param};
use crate::weights::WeightSnapshot;

impl CausalLm {
    /// Base-model parameters with their Hugging Face names, in inventory order.
    pub(crate) fn base_params(&self) -> Vec<(String, &Param)> {
        let mut v = vec![("model.embed_tokens.weight".to_string(), &self.embed)];
        for (i, l) in self.layers.iter().enumerate() {
            for (proj, lin) in l.projections() {
                let p = proj_path(i, proj);
                v.push((format!("{p}.weight"), &lin.w));
                if let Some(b) = &lin.b {
                    v.push((format!("{p}.bias"), b));
                }
            }
            if let (Some(q), Some(k)) = (&l.self_attn.q_norm, &l.self_attn.k_norm) {
                v.push((format!("model.layers.{i}.self_attn.q_norm.weight"), q));
                v.push((format!("model.layers.{i}.self_attn.k_norm.weight"), k));
            }
            v.push((format!("model.layers.{i}.input_layernorm.weight"), &l.input_layernorm));
            v.push((format!("model.layers.{i}.post_attention_layernorm.weight"), &l.post_attention_layernorm));
        }
        v.push(("model.norm.weight".to_string(), &self.norm));
        if let Some(h) = &self.lm_head {
            v.push(("lm_head.weight".to_string(), h));
        }
        v
    }

    /// LoRA parameters named `<module>.lora_A.weight` / `<module>.lora_B.weight`.
    pub(crate) fn lora_params(&self) -> Vec<(String, &Param)> {
        let mut v = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (proj, lin) in l.projections() {
                if let Some(lp) = &lin.lora {
                    let p = proj_path(i, proj);
                    v.push((format!("{p}.lora_A.weight"), &lp.a));
                    v.push((format!("{p}.lora_B.weight"), &lp.b));
                }
            }
        }
        v
    }

    /// All parameters (base and adapters).
    pub(crate) fn all_params(&self) -> Vec<(String, &Param)> {
        let mut v = self.base_params();
        v.extend(self.lora_params());
        v
    }

    pub(crate) fn for_each_param_mut(&mut self, f: &mut dyn FnMut(&mut Param) -> ModelResult<()>) -> ModelResult<()> {
        f(&mut self.embed)?;
        for l in &mut self.layers {
            for (_, lin) in l.projections_mut() {
                f(&mut lin.w)?;
                if let Some(b) = &mut lin.b {
                    f(b)?;
                }
                if let Some(lp) = &mut lin.lora {
                    f(&mut lp.a)?;
                    f(&mut lp.b)?;
                }
            }
            if let Some(q) = &mut l.self_attn.q_norm {
                f(q)?;
            }
            if let Some(k) = &mut l.self_attn.k_norm {
                f(k)?;
            }
            f(&mut l.input_layernorm)?;
            f(&mut l.post_attention_layernorm)?;
        }
        f(&mut self.norm)?;
        if let Some(h) = &mut self.lm_head {
            f(h)?;
        }
        Ok(())
    }

    /// The trainable variables with their names, sorted by name: hand these to the optimiser.
    /// With LoRA attached only the adapters are listed (base weights are frozen).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v: Vec<(String, Var)> =
            self.all_params().into_iter().filter(|(_, p)| p.train).map(|(n, p)| (n, p.var.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The trainable variables (same order as [`CausalLm::named_vars`]), e.g. for `candle_nn::AdamW::new`.
    pub fn trainable_vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// A candle [`VarMap`] holding the trainable variables under their names (shared storage), for
    /// code written against `VarMap`/`VarBuilder`.
    pub fn var_map(&self) -> ModelResult<VarMap> {
        let vm = VarMap::new();
        {
            let data = vm.data();
            let mut guard = data.lock().map_err(|_| ModelError::Input("VarMap lock poisoned".into()))?;
            for (n, v) in self.named_vars() {
                guard.insert(n, v);
            }
        }
        Ok(vm)
    }

    /// Every weight tensor (base and adapters) by name, detached; shares storage with the model.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.all_params().into_iter().map(|(n, p)| (n, p.var.as_tensor().detach())).collect()
    }

    /// Total number of scalar weights (base and adapters).
    pub fn num_parameters(&self) -> usize {
        self.all_params().iter().map(|(_, p)| p.var.as_tensor().elem_count()).sum()
    }

    /// Number of scalar weights the optimiser updates.
    pub fn num_trainable_parameters(&self) -> usize {
        self.all_params().iter().filter(|(_, p)| p.train).map(|(_, p)| p.var.as_tensor().elem_count()).sum()
    }

    /// An independent deep copy whose weights are detached and frozen: the reference policy for
    /// KL penalties. Later updates to `self` never reach it; its forward builds no autograd graph.
    pub fn frozen_copy(&self) -> ModelResult<Self> {
        self.detached_copy(false)
    }

    /// An independent deep copy that keeps which weights are trainable: a scratch model into which
    /// other values of the trainable weights (an EMA θ̄) can be loaded without touching `self`.
    pub fn deep_copy(&self) -> ModelResult<Self> {
        self.detached_copy(true)
    }

    /// A copy with fresh detached weights, trainable where `self`'s are if `keep_trainable`.
    fn detached_copy(&self, keep_trainable: bool) -> ModelResult<Self> {
        let mut c = self.clone();
        c.for_each_param_mut(&mut |p| {
            *p = Param::new(&p.var.as_tensor().detach(), keep_trainable && p.train)?;
            Ok(())
        })?;
        Ok(c)
    }

    /// A cheap view sharing weight storage with `self` but computing without autograd: use it for
    /// generation in the learner's thread; it sees every in-place optimiser update.
    pub fn inference_view(&self) -> Self {
        let mut c = self.clone();
        // The closure never fails.
        let _ = c.for_each_param_mut(&mut |p| {
            p.train = false;
            Ok(())
        });
        c
    }

    /// A copy of every weight (base and adapters), for publishing to a policy store.
    pub fn snapshot(&self) -> ModelResult<Arc<WeightSnapshot>> {
        Ok(Arc::new(WeightSnapshot::from_tensors(self.named_tensors())?))
    }

    /// Overwrites the weights in place from a snapshot with the same names and shapes (every view
    /// sharing storage with `self` sees the change). Missing or mis-shaped tensors are errors.
    pub fn load_snapshot(&self, snapshot: &WeightSnapshot) -> ModelResult<()> {
        let params = self.all_params();
        // Validate everything first so a bad snapshot leaves the model untouched.
        for (name, p) in &params {
            let t = snapshot.get(name).ok_or_else(|| ModelError::MissingTensor {
                name: name.clone(),
                expected: p.var.as_tensor().dims().to_vec(),
            })?;
            if t.dims() != p.var.as_tensor().dims() {
                return Err(ModelError::ShapeMismatch {
                    name: name.clone(),
                    expected: p.var.as_tensor().dims().to_vec(),
                    actual: t.dims().to_vec(),
                });
            }
        }
        for (name, p) in &params {
            if let Some(t) = snapshot.get(name) {
                let t = t.to_device(&self.device).and_then(|t| t.to_dtype(self.dtype)).ctx(|| format!("casting {name}"))?;
                p.var.set(&t).ctx(|| format!("loading snapshot tensor {name}"))?;
            }
        }
        Ok(())
    }
}
