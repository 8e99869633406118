//! The RL learner: turns a batch of scored groups into one policy update.
//!
//! `GRPO`, `RLOO` and `REINFORCE++` differ only in the advantage estimator; `PPO` adds a value
//! head on the policy trunk and GAE. All share the clipped importance-ratio objective
//! (`keel_optim::policy_loss`), which also corrects for stale samples when the sampler runs ahead
//! of the learner (max staleness ≥ 1): the behaviour log-probs recorded at sampling time are the
//! `old_logp` of the ratio. The equations are in `docs/algorithms.md`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use keel_core::SeedStream;
use keel_model::{CausalLm, SharedPrefixBatch};
use keel_optim::{
    clip_grad_norm, gae, grpo_advantages, kl_penalised_rewards, kl_penalised_token_rewards, policy_loss,
    reinforce_pp_advantages, rloo_advantages, sequence_rewards_to_tokens, value_loss, whiten, AdamW, AdamWConfig,
    DecayRule, Ema, EmaConfig, GroupNormConfig, Groups, KlEstimator, KlPenalty, LossAggregation, LrSchedule,
    PolicyBatch, PolicyLossConfig, RewardScaling, StdKind, ValueHead, ValueLossConfig,
};
use keel_pipeline::StageError;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::ctx::Ctx;
use crate::messages::ScoredBatch;
use crate::policy::Policy;
use crate::train::{accumulate_grads, micro_batches, scalar, LoraSpec};

/// File of the PPO value head inside a learner state directory.
pub const VALUE_HEAD_FILE: &str = "value_head.safetensors";
/// File with the learner's counters inside a learner state directory.
pub const LEARNER_STATE_FILE: &str = "learner.json";

/// Which advantage estimator (and critic) the learner uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Group-normalised rewards (DeepSeekMath's GRPO).
    Grpo,
    /// Leave-one-out baseline within each group (RLOO).
    Rloo,
    /// Batch-normalised token returns (REINFORCE++).
    ReinforcePp,
    /// Value head on the policy trunk with GAE(γ, λ) and value clipping (PPO).
    Ppo,
}

/// Where the KL-to-reference penalty goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlIn {
    /// `β·KL` added to the per-token loss (GRPO, verl `use_kl_loss`).
    Loss,
    /// `−β·KL` subtracted from the reward before advantages (PPO-style, verl `use_kl_in_reward`).
    Reward,
}

/// How per-token losses are averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Mean over each sequence's tokens, then over sequences (GRPO).
    SequenceMean,
    /// Mean over all tokens of the batch (DAPO).
    TokenMean,
    /// Sum over tokens divided by `batch × constant_len` (Dr. GRPO).
    Constant,
}

/// Hyper-parameters of a learner (part of the `with:` block of a `learn` stage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnConfig {
    /// Advantage estimator.
    pub algorithm: Algorithm,
    /// Learning rate.
    pub lr: f64,
    /// Linear warm-up steps (then constant).
    pub warmup_steps: u64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
    /// KL coefficient β (0 disables the penalty; KL is still measured).
    pub beta: f64,
    /// KL estimator: k1, k2 or k3.
    pub kl_estimator: KlEstimator,
    /// Where the KL penalty goes.
    pub kl_in: KlIn,
    /// Lower clip ε: ratios below 1−ε_low stop pushing down.
    pub eps_low: f64,
    /// Upper clip ε: ratios above 1+ε_high stop pushing up (DAPO's clip-higher when > eps_low).
    pub eps_high: f64,
    /// Loss aggregation.
    pub aggregation: Aggregation,
    /// Dr. GRPO's constant length normaliser.
    pub constant_len: usize,
    /// GRPO reward scaling: by group std, batch std, or none (Dr. GRPO).
    pub scale_rewards: RewardScaling,
    /// Passes over each batch.
    pub epochs: usize,
    /// Minibatches per pass (each a gradient step).
    pub minibatches: usize,
    /// Sequences per forward/backward pass inside a minibatch (0 = the whole minibatch at once).
    /// Gradients of the micro-batches are summed with weights that make the update equal to the
    /// whole-minibatch one, so this trades speed for memory without changing the algorithm.
    pub micro_batch_size: usize,
    /// Discount γ (PPO, REINFORCE++).
    pub gamma: f64,
    /// GAE λ (PPO).
    pub lam: f64,
    /// Value-loss coefficient (PPO).
    pub vf_coef: f64,
    /// Value clip range (PPO; 0 disables).
    pub value_clip: f64,
    /// EMA coefficient α for θ̄ (None keeps no EMA).
    pub ema_alpha: Option<f64>,
    /// Train LoRA adapters instead of every weight (π_ref stays the full starting model).
    pub lora: Option<LoraSpec>,
}

/// The learner's state: the policy being trained, its frozen reference, the optimiser and the
/// optional value head and EMA.
pub struct Learner {
    /// The policy being trained.
    pub policy: Policy,
    reference: CausalLm,
    config: LearnConfig,
    params: Vec<(String, candle_core::Var)>,
    opt: AdamW,
    value_head: Option<ValueHead>,
    /// The EMA of weights, if kept.
    pub ema: Option<Ema>,
    updates: u64,
    samples: u64,
    seeds: SeedStream,
}

impl Learner {
    /// Starts learning from `policy`, whose current weights become the frozen reference π_ref.
    pub fn new(policy: Policy, config: LearnConfig, seeds: SeedStream) -> Result<Self, StageError> {
        if config.epochs == 0 || config.minibatches == 0 {
            return Err(StageError::msg("learn: epochs and minibatches must be at least 1"));
        }
        let mut policy = policy;
        let reference = policy.model.frozen_copy().ctx(|| "copying the reference policy".to_string())?;
        if let Some(lora) = &config.lora {
            lora.attach(&mut policy, seeds.seed("lora"))?;
        }
        let mut params = policy.model.named_vars();
        let value_head = if config.algorithm == Algorithm::Ppo {
            let head = ValueHead::new(
                "value_head",
                policy.model.config().hidden_size,
                DType::F32,
                policy.model.device(),
                seeds.seed("value-head"),
            )
            .ctx(|| "building the PPO value head".to_string())?;
            params.extend(head.named_vars());
            Some(head)
        } else {
            None
        };
        let opt = AdamW::with_decay_rule(
            params.clone(),
            AdamWConfig { lr: config.lr, weight_decay: config.weight_decay, ..AdamWConfig::default() },
            &DecayRule::default(),
        )
        .ctx(|| "building the AdamW optimiser".to_string())?;
        let ema = match config.ema_alpha {
            Some(alpha) => Some(
                Ema::new(&policy.model.named_vars(), EmaConfig { alpha, blend_back: None })
                    .ctx(|| "starting the EMA of weights".to_string())?,
            ),
            None => None,
        };
        Ok(Learner { policy, reference, config, params, opt, value_head, ema, updates: 0, samples: 0, seeds })
    }

    /// Number of optimiser updates so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Writes everything needed to continue exactly into `dir`: weights (with tokenizer, so the
    /// directory is also a loadable checkpoint), AdamW moments and step counts, the EMA, the PPO
    /// value head and the update counter. Sampling and minibatch randomness is keyed by step, so
    /// no generator state needs saving.
    pub fn save_state(&self, dir: &Path) -> Result<(), StageError> {
        self.policy.save(dir)?;
        self.opt.save(dir).ctx(|| format!("saving optimiser state to {}", dir.display()))?;
        if let Some(e) = &self.ema {
            e.save(dir).ctx(|| format!("saving the EMA to {}", dir.display()))?;
        }
        if let Some(h) = &self.value_head {
            let tensors: HashMap<String, Tensor> =
                h.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
            keel_model::weights::write_safetensors(&dir.join(VALUE_HEAD_FILE), &tensors)
                .ctx(|| format!("saving the value head to {}", dir.display()))?;
        }
        let meta = serde_json::json!({"updates": self.updates, "samples": self.samples});
        keel_core::write_atomic(&dir.join(LEARNER_STATE_FILE), meta.to_string().as_bytes())?;
        Ok(())
    }

    /// Restores a state written by [`Learner::save_state`] into a learner built from the same
    /// initial checkpoint and configuration (the reference policy stays the initial weights).
    pub fn load_state(&mut self, dir: &Path) -> Result<(), StageError> {
        let device = self.policy.model.device().clone();
        if self.policy.model.lora_config().is_some() {
            // The base weights are frozen at the initial checkpoint: only the adapters moved.
            let adapter = dir.join(crate::policy::ADAPTER_DIR);
            self.policy.model.load_lora_values(&adapter).ctx(|| format!("restoring LoRA adapters from {}", adapter.display()))?;
        } else {
            let tensors = keel_model::weights::read_checkpoint_tensors(dir, &device)
                .ctx(|| format!("reading checkpointed weights from {}", dir.display()))?;
            let snapshot = keel_model::WeightSnapshot::from_tensors(tensors).ctx(|| "preparing checkpointed weights".to_string())?;
            self.policy.model.load_snapshot(&snapshot).ctx(|| format!("restoring weights from {}", dir.display()))?;
        }
        self.opt.load(dir).ctx(|| format!("restoring optimiser state from {}", dir.display()))?;
        if self.ema.is_some() {
            self.ema = Some(Ema::load(dir, &device).ctx(|| format!("restoring the EMA from {}", dir.display()))?);
        }
        if let Some(h) = &self.value_head {
            let path = dir.join(VALUE_HEAD_FILE);
            let saved = candle_core::safetensors::load(&path, &device).ctx(|| format!("reading {}", path.display()))?;
            for (name, var) in h.named_vars() {
                let t = saved.get(&name).ok_or_else(|| StageError::msg(format!("{} lacks tensor `{name}`", path.display())))?;
                var.set(t).ctx(|| format!("restoring `{name}`"))?;
            }
        }
        let meta_path = dir.join(LEARNER_STATE_FILE);
        let text = std::fs::read_to_string(&meta_path).ctx(|| format!("reading {}", meta_path.display()))?;
        let meta: serde_json::Value = serde_json::from_str(&text).ctx(|| format!("parsing {}", meta_path.display()))?;
        self.updates = meta
            .get("updates")
            .and_then(|u| u.as_u64())
            .ok_or_else(|| StageError::msg(format!("{} has no `updates` count", meta_path.display())))?;
        self.samples = meta.get("samples").and_then(|u| u.as_u64()).unwrap_or(0);
        Ok(())
    }

    /// One policy update from a scored batch; returns the metrics to log.
    pub fn update(&mut self, batch: &ScoredBatch) -> Result<BTreeMap<String, f64>, StageError> {
        let step = batch.step;
        let b = batch.scored.len();
        if b == 0 {
            return Err(StageError::msg(format!("learn step {step}: empty batch")));
        }
        let device = self.policy.model.device().clone();
        let layout = CompletionLayout::new(batch).ctx(|| format!("learn step {step}"))?;
        // The whole batch as model input, for the reference (and PPO's value) forward.
        let whole = layout.shared_batch(&(0..b).collect::<Vec<_>>(), &device)?;
        let mask = &layout.loss_mask(&device)?;
        // Behaviour log-probs recorded by the sampler, in the same [B, C] completion layout.
        let old_logp = layout.old_logprobs(batch, &device)?;
        let temperature = batch.temperature as f64;
        let ref_logp = completion_logprobs(&self.reference, &whole, temperature)?.1.detach();
        let mut rewards: Vec<f64> = batch.scored.iter().map(|s| s.reward).collect();
        let raw_mean = rewards.iter().sum::<f64>() / b as f64;
        let kl_in_reward = self.config.kl_in == KlIn::Reward && self.config.beta > 0.0;
        if kl_in_reward && self.config.algorithm != Algorithm::Ppo && self.config.algorithm != Algorithm::ReinforcePp {
            rewards = kl_penalised_rewards(&rewards, &old_logp, &ref_logp, mask, self.config.beta, self.config.kl_estimator)
                .ctx(|| format!("learn step {step}: KL-penalised rewards"))?;
        }
        let groups = Groups::contiguous(b, batch.group_size).ctx(|| format!("learn step {step}: grouping rollouts"))?;
        let (advantages, old_values, returns) = match self.config.algorithm {
            Algorithm::Grpo => {
                let cfg = GroupNormConfig { scaling: self.config.scale_rewards, std_kind: StdKind::Sample, eps: 1e-4 };
                let a = grpo_advantages(&rewards, &groups, &cfg).ctx(|| format!("learn step {step}: GRPO advantages"))?;
                (seq_tensor(&a, &device)?, None, None)
            }
            Algorithm::Rloo => {
                let a = rloo_advantages(&rewards, &groups).ctx(|| format!("learn step {step}: RLOO advantages"))?;
                (seq_tensor(&a, &device)?, None, None)
            }
            Algorithm::ReinforcePp => {
                let tok = self.token_rewards(&rewards, &old_logp, &ref_logp, mask, kl_in_reward)?;
                let a = reinforce_pp_advantages(&tok, mask, self.config.gamma, 1e-8)
                    .ctx(|| format!("learn step {step}: REINFORCE++ advantages"))?;
                (a, None, None)
            }
            Algorithm::Ppo => {
                let head = self.value_head.as_ref().ok_or_else(|| StageError::msg("PPO learner has no value head"))?;
                let hidden = self
                    .policy
                    .model
                    .inference_view()
                    .forward_hidden_shared(&whole)
                    .ctx(|| "PPO: hidden states".to_string())?;
                let values = head
                    .forward(&hidden)
                    .ctx(|| "PPO: values".to_string())?
                    .narrow(1, 0, layout.width)
                    .ctx(|| "PPO: aligning values".to_string())?
                    .detach();
                let tok = self.token_rewards(&rewards, &old_logp, &ref_logp, mask, kl_in_reward)?;
                let g = gae(&tok, &values, mask, self.config.gamma, self.config.lam).ctx(|| "PPO: GAE".to_string())?;
                let adv = whiten(&g.advantages, mask, StdKind::Sample, true, 1e-8).ctx(|| "PPO: whitening".to_string())?;
                (adv, Some(values), Some(g.returns))
            }
        };
        let loss_cfg = PolicyLossConfig {
            eps_low: self.config.eps_low,
            eps_high: self.config.eps_high,
            aggregation: match self.config.aggregation {
                Aggregation::SequenceMean => LossAggregation::SequenceMean,
                Aggregation::TokenMean => LossAggregation::TokenMean,
                Aggregation::Constant => LossAggregation::Constant { max_len: self.config.constant_len },
            },
            kl: (self.config.kl_in == KlIn::Loss && self.config.beta > 0.0)
                .then_some(KlPenalty { beta: self.config.beta, estimator: self.config.kl_estimator }),
        };
        let schedule = LrSchedule::ConstantWithWarmup { warmup_steps: self.config.warmup_steps };
        let lr = schedule.lr(self.config.lr, self.updates);
        self.opt.set_lr(lr);
        let mut rng = self.seeds.rng(&format!("minibatches-{step}"));
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        let mut n_mb = 0.0;
        for _epoch in 0..self.config.epochs {
            let mut order: Vec<usize> = (0..b).collect();
            order.shuffle(&mut rng);
            let per = b.div_ceil(self.config.minibatches);
            for chunk in order.chunks(per) {
                let parts: Vec<&[usize]> = micro_batches(chunk, self.config.micro_batch_size).collect();
                // Token-mean losses weight a micro-batch by its share of the minibatch's tokens,
                // the others by its share of sequences: the weighted sum is the minibatch loss.
                let chunk_tokens = if parts.len() > 1 { layout.tokens(chunk).max(1.0) } else { 1.0 };
                let mut accumulated: Vec<Option<Tensor>> = vec![None; self.params.len()];
                let mut grads = None;
                for (pi, part) in parts.iter().enumerate() {
                    let (w_seq, w_tok) = if parts.len() > 1 {
                        (part.len() as f64 / chunk.len() as f64, layout.tokens(part) / chunk_tokens)
                    } else {
                        (1.0, 1.0)
                    };
                    let w_policy = if self.config.aggregation == Aggregation::TokenMean { w_tok } else { w_seq };
                    let idx = Tensor::from_vec(part.iter().map(|&i| i as u32).collect::<Vec<_>>(), part.len(), &device)
                        .ctx(|| "minibatch indices".to_string())?;
                    let sel = |t: &Tensor| {
                        t.contiguous()
                            .and_then(|t| t.index_select(&idx, 0))
                            .ctx(|| "selecting minibatch rows".to_string())
                    };
                    let m = sel(mask)?;
                    let (hidden, logp) =
                        completion_logprobs(&self.policy.model, &layout.shared_batch(part, &device)?, temperature)
                            .ctx(|| format!("learn step {step}: forward"))?;
                    let o = sel(&old_logp)?;
                    let r = sel(&ref_logp)?;
                    let a = sel(&advantages)?;
                    let out = policy_loss(
                        &PolicyBatch { logp: &logp, old_logp: &o, ref_logp: Some(&r), mask: &m, advantages: &a, entropy: None },
                        &loss_cfg,
                    )
                    .ctx(|| format!("learn step {step}: policy loss"))?;
                    let mut loss = if parts.len() > 1 {
                        (&out.loss * w_policy).ctx(|| "weighting a micro-batch".to_string())?
                    } else {
                        out.loss.clone()
                    };
                    if let (Some(head), Some(ov), Some(ret)) = (&self.value_head, &old_values, &returns) {
                        let v = head
                            .forward(&hidden)
                            .ctx(|| "PPO: values".to_string())?
                            .narrow(1, 0, layout.width)
                            .ctx(|| "PPO: aligning values".to_string())?;
                        let vcfg = ValueLossConfig {
                            clip_range: (self.config.value_clip > 0.0).then_some(self.config.value_clip),
                            aggregation: LossAggregation::TokenMean,
                        };
                        let vl = value_loss(&v, &sel(ov)?, &sel(ret)?, &m, &vcfg).ctx(|| "PPO: value loss".to_string())?;
                        *sums.entry("value_loss".into()).or_default() += w_tok * scalar(&vl.loss)?;
                        let coef = if parts.len() > 1 { self.config.vf_coef * w_tok } else { self.config.vf_coef };
                        loss = (loss + (vl.loss * coef).ctx(|| "PPO: scaling value loss".to_string())?)
                            .ctx(|| "PPO: total loss".to_string())?;
                    }
                    let mut g = loss.backward().ctx(|| format!("learn step {step}: backward"))?;
                    if parts.len() > 1 {
                        accumulate_grads(&self.params, &mut accumulated, &mut g, pi + 1 == parts.len())?;
                    }
                    grads = Some(g);
                    let st = &out.stats;
                    if !st.loss.is_finite() {
                        return Err(StageError::msg(format!(
                            "learn step {step}: the loss is {}; lower lr (= {}) or check the rewards",
                            st.loss, self.config.lr
                        )));
                    }
                    for (k, v) in [
                        ("loss", st.loss),
                        ("clip_frac", st.clip_frac),
                        ("clip_frac_low", st.clip_frac_low),
                        ("clip_frac_high", st.clip_frac_high),
                        ("ratio_mean", st.ratio_mean),
                        ("approx_kl", st.approx_kl),
                        ("kl_ref", st.kl_ref.unwrap_or(0.0)),
                    ] {
                        *sums.entry(k.into()).or_default() += w_policy * v;
                    }
                }
                let mut grads = grads.ok_or_else(|| StageError::msg(format!("learn step {step}: empty minibatch")))?;
                let gn = if self.config.grad_clip > 0.0 {
                    clip_grad_norm(&self.params, &mut grads, self.config.grad_clip).ctx(|| "gradient clipping".to_string())?
                } else {
                    keel_optim::grad_norm(&self.params, &grads).ctx(|| "gradient norm".to_string())?
                };
                self.opt.step(&grads).ctx(|| format!("learn step {step}: optimiser update"))?;
                *sums.entry("grad_norm".into()).or_default() += gn;
                n_mb += 1.0;
            }
        }
        self.updates += 1;
        self.samples += b as u64;
        if let Some(e) = self.ema.as_mut() {
            e.update(&self.policy.model.named_vars()).ctx(|| "EMA update".to_string())?;
        }
        let mut metrics: BTreeMap<String, f64> = sums.into_iter().map(|(k, v)| (k, v / n_mb)).collect();
        let var = batch.scored.iter().map(|s| (s.reward - raw_mean).powi(2)).sum::<f64>() / b as f64;
        metrics.insert("reward_mean".into(), raw_mean);
        metrics.insert("reward_std".into(), var.sqrt());
        metrics.insert("lr".into(), lr);
        metrics.insert("samples".into(), self.samples as f64);
        let lens: f64 = batch.scored.iter().map(|s| s.rollout.completion.token_ids.len() as f64).sum();
        metrics.insert("completion_len".into(), lens / b as f64);
        let trunc = batch.scored.iter().filter(|s| s.rollout.completion.truncated()).count();
        metrics.insert("truncated_frac".into(), trunc as f64 / b as f64);
        let mut comp: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for s in &batch.scored {
            for (k, v) in &s.components {
                let e = comp.entry(k.clone()).or_default();
                e.0 += v;
                e.1 += 1.0;
            }
        }
        for (k, (sum, n)) in comp {
            metrics.insert(format!("reward/{k}"), sum / n);
        }
        Ok(metrics)
    }

    fn token_rewards(
        &self,
        rewards: &[f64],
        old_logp: &Tensor,
        ref_logp: &Tensor,
        mask: &Tensor,
        kl_in_reward: bool,
    ) -> Result<Tensor, StageError> {
        if kl_in_reward {
            kl_penalised_token_rewards(rewards, old_logp, ref_logp, mask, self.config.beta, self.config.kl_estimator)
                .ctx(|| "KL-penalised token rewards".to_string())
        } else {
            sequence_rewards_to_tokens(rewards, mask).ctx(|| "placing rewards on final tokens".to_string())
        }
    }
}

fn seq_tensor(a: &[f64], device: &Device) -> Result<Tensor, StageError> {
    Tensor::from_vec(a.iter().map(|&x| x as f32).collect::<Vec<_>>(), a.len(), device).ctx(|| "advantages tensor".to_string())
}

/// `[B, T-1]` log-probs of `ids` under `model` with logits divided by `temperature`.
pub fn logprobs(model: &CausalLm, ids: &Tensor, attention: &Tensor, temperature: f64) -> Result<Tensor, StageError> {
    let hidden = model.forward_hidden(ids, Some(attention)).ctx(|| "forward pass".to_string())?;
    hidden_logprobs(model, &hidden, ids, temperature)
}

/// `[B, T-1]` log-probs of `ids[:, 1..]` from hidden states `[B, T, H]` (so PPO's value head and
/// the policy share one trunk pass).
///
/// Uses the fused `keel_model::ops::token_logprobs` kernel: it never materialises the `[B, T, V]`
/// log-softmax (nor its gradient), which the composed `log_softmax` + `gather` did — in a GRPO
/// update that was several 90 MB tensors per pass. Results differ from the composed version only
/// in the last float bits.
fn hidden_logprobs(model: &CausalLm, hidden: &Tensor, ids: &Tensor, temperature: f64) -> Result<Tensor, StageError> {
    let (_, t) = ids.dims2().ctx(|| "reading the id batch shape".to_string())?;
    if t < 2 {
        return Err(StageError::msg(format!("log-probs need sequences of at least two tokens, got {t}")));
    }
    let h = hidden.narrow(1, 0, t - 1).ctx(|| "shifting hidden states".to_string())?;
    let mut logits = model.lm_head(&h).ctx(|| "output projection".to_string())?;
    if temperature != 1.0 {
        logits = (logits / temperature).ctx(|| "applying temperature".to_string())?;
    }
    let targets = ids.narrow(1, 1, t - 1).ctx(|| "shifting targets".to_string())?;
    keel_model::ops::token_logprobs(&logits, &targets, false).ctx(|| "gathering token log-probs".to_string())
}

/// Trunk hidden states `[B, C+1, H]` and completion-token log-probs `[B, C]` (see
/// [`CompletionLayout`]) of a shared-prefix batch; differentiable in `model`'s trainable weights.
///
/// Only completion tokens are projected onto the vocabulary: prompt positions never enter a
/// policy loss (TRL skips them the same way with `logits_to_keep`).
fn completion_logprobs(
    model: &CausalLm,
    batch: &SharedPrefixBatch,
    temperature: f64,
) -> Result<(Tensor, Tensor), StageError> {
    let hidden = model.forward_hidden_shared(batch).ctx(|| "forward pass".to_string())?;
    let lp = hidden_logprobs(model, &hidden, &batch.suffix_ids, temperature)?;
    Ok((hidden, lp))
}

/// A scored batch laid out by completion token: row `i` is rollout `i`, column `j` its completion
/// token `j` (right-padded to the longest completion, `width` columns).
///
/// Why this layout: a group's rollouts share their prompt, so the learner runs each distinct
/// prompt (minus its last token) once as a shared prefix and every completion as a continuation
/// that starts with that last prompt token, whose hidden state predicts the first completion token
/// (see `CausalLm::forward_hidden_shared`). Column `j` of every `[B, C]` tensor (log-probs, mask,
/// behaviour log-probs, token rewards, values) is then completion token `j` of its row.
struct CompletionLayout {
    /// Distinct prompts without their last token, in order of first appearance.
    prefixes: Vec<Vec<u32>>,
    /// Per rollout: its prefix and `[last prompt token] ⧺ completion`.
    rows: Vec<(usize, Vec<u32>)>,
    /// Longest completion (≥ 1).
    width: usize,
}

impl CompletionLayout {
    fn new(batch: &ScoredBatch) -> Result<Self, StageError> {
        let mut index: HashMap<&[u32], usize> = HashMap::new();
        let mut prefixes = Vec::new();
        let mut rows = Vec::with_capacity(batch.scored.len());
        for (i, s) in batch.scored.iter().enumerate() {
            let r = &s.rollout;
            let Some((&last, head)) = r.prompt_ids.split_last() else {
                return Err(StageError::msg(format!(
                    "rollout {i} has an empty prompt; every prompt needs at least one token"
                )));
            };
            let g = *index.entry(head).or_insert_with(|| {
                prefixes.push(head.to_vec());
                prefixes.len() - 1
            });
            let mut cont = Vec::with_capacity(1 + r.completion.token_ids.len());
            cont.push(last);
            cont.extend(&r.completion.token_ids);
            rows.push((g, cont));
        }
        let width = batch.scored.iter().map(|s| s.rollout.completion.token_ids.len()).max().unwrap_or(0);
        if width == 0 {
            return Err(StageError::msg("every completion in the batch is empty: there is nothing to learn from"));
        }
        Ok(CompletionLayout { prefixes, rows, width })
    }

    /// The model input for rollouts `rows` (only the prefixes they use).
    fn shared_batch(&self, rows: &[usize], device: &Device) -> Result<SharedPrefixBatch, StageError> {
        let mut remap: HashMap<usize, usize> = HashMap::new();
        let mut prefixes: Vec<&[u32]> = Vec::new();
        let mut conts: Vec<(usize, &[u32])> = Vec::with_capacity(rows.len());
        for &i in rows {
            let (g, cont) = &self.rows[i];
            let local = *remap.entry(*g).or_insert_with(|| {
                prefixes.push(&self.prefixes[*g]);
                prefixes.len() - 1
            });
            conts.push((local, cont.as_slice()));
        }
        // Pad with token 0: padding is masked out of attention and loss, so any valid id does.
        SharedPrefixBatch::with_width(&prefixes, &conts, self.width + 1, 0, device)
            .ctx(|| "building the learner batch".to_string())
    }

    /// Completion tokens of rollouts `rows`: the ones of [`CompletionLayout::loss_mask`] in those rows.
    fn tokens(&self, rows: &[usize]) -> f64 {
        rows.iter().map(|&i| self.rows[i].1.len() - 1).sum::<usize>() as f64
    }

    /// `[B, C]`: 1 on real completion tokens.
    fn loss_mask(&self, device: &Device) -> Result<Tensor, StageError> {
        let c = self.width;
        let m: Vec<f32> =
            self.rows.iter().flat_map(|(_, r)| (0..c).map(move |j| if j + 1 < r.len() { 1.0 } else { 0.0 })).collect();
        Tensor::from_vec(m, (self.rows.len(), c), device).ctx(|| "building the loss mask".to_string())
    }

    /// `[B, C]`: the behaviour log-probs the sampler recorded (0 on padding).
    fn old_logprobs(&self, batch: &ScoredBatch, device: &Device) -> Result<Tensor, StageError> {
        let c = self.width;
        let mut old = vec![0f32; batch.scored.len() * c];
        for (i, s) in batch.scored.iter().enumerate() {
            for (j, lp) in s.rollout.completion.logprobs.iter().take(c).enumerate() {
                old[i * c + j] = *lp;
            }
        }
        Tensor::from_vec(old, (batch.scored.len(), c), device).ctx(|| "building old log-probs".to_string())
    }
}
