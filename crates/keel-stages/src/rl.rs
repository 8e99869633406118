//! The RL learner: turns a batch of scored groups into one policy update.
//!
//! `GRPO`, `RLOO` and `REINFORCE++` differ only in the advantage estimator; `PPO` adds a value
//! head on the policy trunk and GAE. All share the clipped importance-ratio objective
//! (`keel_optim::policy_loss`), which also corrects for stale samples when the sampler runs ahead
//! of the learner (max staleness ≥ 1): the behaviour log-probs recorded at sampling time are the
//! `old_logp` of the ratio. The equations are in `docs/algorithms.md`.
//!
//! Every piece of arithmetic is keel-optim's: advantages, [`policy_loss`], [`MinibatchSchedule`]
//! (exactly `minibatches` optimiser steps per epoch), [`GradAccumulator`] over micro-batches,
//! [`LrSchedule`] evaluated before every optimiser step, [`Ema::update`] after every one. This file
//! only wires them to the model.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor, Var};
use keel_core::SeedStream;
use keel_model::CausalLm;
use keel_optim::{
    clip_grad_norm, gae, grpo_advantages, kl_penalised_rewards, kl_penalised_token_rewards, policy_loss,
    reinforce_pp_advantages, rloo_advantages, sequence_rewards_to_tokens, value_loss, whiten, AdamW, AdamWConfig,
    DecayRule, Ema, EmaConfig, GradAccumulator, GroupNormConfig, Groups, KlEstimator, KlPenalty, KlPlacement,
    LossAggregation, LrSchedule, MinibatchSchedule, PolicyBatch, PolicyLossConfig, PolicyStats, RewardScaling, StdKind,
    ValueHead, ValueLossConfig,
};
use keel_pipeline::StageError;
use serde::{Deserialize, Serialize};

use crate::batch::{completion_logprobs, micro_batches, scalar, seq_tensor, CompletionLayout};
use crate::ctx::Ctx;
use crate::messages::ScoredBatch;
use crate::policy::Policy;
use crate::train::LoraSpec;

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

impl Algorithm {
    /// Whether the advantages are per token (PPO, REINFORCE++) rather than per sequence.
    fn per_token(self) -> bool {
        matches!(self, Algorithm::ReinforcePp | Algorithm::Ppo)
    }
}

/// Hyper-parameters of a learner (part of the `with:` block of a `learn` stage).
///
/// Read from the stage's YAML spelling (`kl_in: loss | reward`, `aggregation: sequence_mean |
/// token_mean | constant` with `constant_len`) into keel-optim's own types, so the learner has no
/// copies of them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "LearnYaml")]
pub struct LearnConfig {
    /// Advantage estimator.
    pub algorithm: Algorithm,
    /// Learning rate.
    pub lr: f64,
    /// Linear warm-up, in optimiser steps (each RL step takes `epochs × minibatches`), then constant.
    pub warmup_steps: u64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
    /// KL coefficient β (0 disables the penalty; KL is still measured).
    pub beta: f64,
    /// KL estimator: k1, k2 or k3.
    pub kl_estimator: KlEstimator,
    /// Where the KL penalty goes. `kl_in: reward` in YAML is [`KlPlacement::RewardSequence`] for
    /// GRPO/RLOO (whose advantages are per sequence) and [`KlPlacement::RewardToken`] for PPO and
    /// REINFORCE++.
    pub kl_placement: KlPlacement,
    /// Lower clip ε: ratios below 1−ε_low stop pushing down.
    pub eps_low: f64,
    /// Upper clip ε: ratios above 1+ε_high stop pushing up (DAPO's clip-higher when > eps_low).
    pub eps_high: f64,
    /// Loss aggregation (Dr. GRPO's `constant` carries `constant_len` as its `max_len`).
    pub aggregation: LossAggregation,
    /// GRPO reward scaling: by group std, batch std, or none (Dr. GRPO).
    pub scale_rewards: RewardScaling,
    /// Passes over each batch.
    pub epochs: usize,
    /// Minibatches per pass: exactly this many optimiser steps per epoch.
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

/// [`LearnConfig`] as a `learn` stage writes it.
#[derive(Debug, Deserialize)]
struct LearnYaml {
    algorithm: Algorithm,
    lr: f64,
    warmup_steps: u64,
    weight_decay: f64,
    grad_clip: f64,
    beta: f64,
    kl_estimator: KlEstimator,
    kl_in: String,
    eps_low: f64,
    eps_high: f64,
    aggregation: String,
    constant_len: usize,
    scale_rewards: RewardScaling,
    epochs: usize,
    minibatches: usize,
    micro_batch_size: usize,
    gamma: f64,
    lam: f64,
    vf_coef: f64,
    value_clip: f64,
    ema_alpha: Option<f64>,
    lora: Option<LoraSpec>,
}

impl TryFrom<LearnYaml> for LearnConfig {
    type Error = String;

    fn try_from(y: LearnYaml) -> Result<Self, String> {
        let kl_placement = match y.kl_in.as_str() {
            "loss" => KlPlacement::Loss,
            "reward" if y.algorithm.per_token() => KlPlacement::RewardToken,
            "reward" => KlPlacement::RewardSequence,
            other => return Err(format!("kl_in: `{other}` is not one of loss, reward")),
        };
        let aggregation = match y.aggregation.as_str() {
            "sequence_mean" => LossAggregation::SequenceMean,
            "token_mean" => LossAggregation::TokenMean,
            "constant" if y.constant_len == 0 => {
                return Err("aggregation: constant divides by constant_len, which must be at least 1".into())
            }
            "constant" => LossAggregation::Constant { max_len: y.constant_len },
            other => return Err(format!("aggregation: `{other}` is not one of sequence_mean, token_mean, constant")),
        };
        Ok(LearnConfig {
            algorithm: y.algorithm,
            lr: y.lr,
            warmup_steps: y.warmup_steps,
            weight_decay: y.weight_decay,
            grad_clip: y.grad_clip,
            beta: y.beta,
            kl_estimator: y.kl_estimator,
            kl_placement,
            eps_low: y.eps_low,
            eps_high: y.eps_high,
            aggregation,
            scale_rewards: y.scale_rewards,
            epochs: y.epochs,
            minibatches: y.minibatches,
            micro_batch_size: y.micro_batch_size,
            gamma: y.gamma,
            lam: y.lam,
            vf_coef: y.vf_coef,
            value_clip: y.value_clip,
            ema_alpha: y.ema_alpha,
            lora: y.lora,
        })
    }
}

impl LearnConfig {
    /// The policy-loss configuration: clip range, aggregation and the in-loss KL term.
    fn loss_config(&self) -> PolicyLossConfig {
        PolicyLossConfig {
            eps_low: self.eps_low,
            eps_high: self.eps_high,
            aggregation: self.aggregation,
            kl: (self.kl_placement == KlPlacement::Loss && self.beta > 0.0)
                .then_some(KlPenalty { beta: self.beta, estimator: self.kl_estimator }),
        }
    }

    /// The learning-rate schedule, indexed by optimiser steps (`AdamW::steps`).
    fn lr_schedule(&self) -> LrSchedule {
        LrSchedule::ConstantWithWarmup { warmup_steps: self.warmup_steps }
    }
}

/// What an observer of [`Learner::update_observed`] sees after each optimiser step.
pub struct OptimiserStep<'a> {
    /// Optimiser steps taken so far, this one included (the AdamW step count).
    pub index: u64,
    /// Inner epoch of this step, from 0.
    pub epoch: usize,
    /// Minibatch of the epoch, from 0.
    pub minibatch: usize,
    /// Rows of the batch the minibatch held.
    pub rows: &'a [usize],
    /// The learning rate the step used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The trained parameters, as the step left them.
    pub params: &'a [(String, Var)],
    /// The EMA of weights after its update for this step, if kept.
    pub ema: Option<&'a Ema>,
}

/// The learner's state: the policy being trained, its frozen reference, the optimiser and the
/// optional value head and EMA.
pub struct Learner {
    /// The policy being trained.
    pub policy: Policy,
    reference: CausalLm,
    config: LearnConfig,
    params: Vec<(String, Var)>,
    opt: AdamW,
    value_head: Option<ValueHead>,
    /// The EMA of weights, if kept.
    pub ema: Option<Ema>,
    updates: u64,
    samples: u64,
    seeds: SeedStream,
}

/// The per-batch inputs every minibatch step reads, all `[B, C]` in the completion layout (or
/// `[B]` for sequence advantages).
struct BatchInputs {
    mask: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor,
    advantages: Tensor,
    /// PPO: the value head's predictions when the batch arrived, and the GAE returns.
    values: Option<(Tensor, Tensor)>,
    temperature: f64,
}

/// Weighted sums of a batch's per-minibatch statistics, averaged into metrics at the end.
#[derive(Default)]
struct StepSums {
    sums: BTreeMap<String, f64>,
    steps: f64,
    last_lr: f64,
}

impl StepSums {
    fn add(&mut self, key: &str, value: f64) {
        *self.sums.entry(key.to_string()).or_default() += value;
    }

    fn add_policy(&mut self, st: &PolicyStats, weight: f64) {
        for (k, v) in [
            ("loss", st.loss),
            ("clip_frac", st.clip_frac),
            ("clip_frac_low", st.clip_frac_low),
            ("clip_frac_high", st.clip_frac_high),
            ("ratio_mean", st.ratio_mean),
            ("approx_kl", st.approx_kl),
            ("kl_ref", st.kl_ref.unwrap_or(0.0)),
        ] {
            self.add(k, weight * v);
        }
    }
}

impl Learner {
    /// Starts learning from `policy`, whose current weights become the frozen reference π_ref.
    pub fn new(policy: Policy, config: LearnConfig, seeds: SeedStream) -> Result<Self, StageError> {
        if config.epochs == 0 || config.minibatches == 0 {
            return Err(StageError::msg("learn: epochs and minibatches must be at least 1"));
        }
        if config.kl_placement == KlPlacement::RewardToken && !config.algorithm.per_token() {
            return Err(StageError::msg(format!(
                "learn: a per-token KL reward needs per-token advantages (ppo or reinforce_pp), not {:?}",
                config.algorithm
            )));
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

    /// Number of policy updates (RL steps) so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Number of optimiser steps so far (`epochs × minibatches` per update): the index of the
    /// learning-rate schedule, saved with the optimiser state.
    pub fn optimiser_steps(&self) -> u64 {
        self.opt.steps()
    }

    /// Writes everything needed to continue exactly into `dir`: weights (with tokenizer, so the
    /// directory is also a loadable checkpoint), AdamW moments and step counts (the global step
    /// count is the learning-rate schedule's index), the EMA, the PPO value head and the update
    /// counter. Sampling and minibatch randomness is keyed by step, so no generator state needs
    /// saving.
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
        self.update_observed(batch, |_| Ok(()))
    }

    /// [`Learner::update`], calling `on_step` after every optimiser step (per-step logging,
    /// and the tests that check the learning rate and the EMA step by step).
    ///
    /// Advantages are computed once from the whole batch; then `epochs × minibatches` optimiser
    /// steps run over a seeded [`MinibatchSchedule`] (keyed by the batch's step, so a resumed run
    /// draws the same minibatches).
    pub fn update_observed(
        &mut self,
        batch: &ScoredBatch,
        mut on_step: impl FnMut(&OptimiserStep<'_>) -> Result<(), StageError>,
    ) -> Result<BTreeMap<String, f64>, StageError> {
        let step = batch.step;
        let b = batch.scored.len();
        if b == 0 {
            return Err(StageError::msg(format!("learn step {step}: empty batch")));
        }
        let layout = CompletionLayout::new(batch).ctx(|| format!("learn step {step}"))?;
        let inputs = self.batch_inputs(batch, &layout)?;
        let seed = self.seeds.seed(&format!("minibatches-{step}"));
        let schedule = MinibatchSchedule::with_count(b, self.config.minibatches, self.config.epochs, seed)
            .ctx(|| format!("learn step {step}: a batch of {b} rollouts"))?;
        let mut sums = StepSums::default();
        for mb in schedule {
            let grad_norm = self.minibatch_step(step, &layout, &inputs, &mb.indices, &mut sums)?;
            on_step(&OptimiserStep {
                index: self.opt.steps(),
                epoch: mb.epoch,
                minibatch: mb.index,
                rows: &mb.indices,
                lr: sums.last_lr,
                grad_norm,
                params: &self.params,
                ema: self.ema.as_ref(),
            })?;
        }
        self.updates += 1;
        self.samples += b as u64;
        Ok(batch_metrics(batch, sums, self.samples))
    }

    /// Everything the minibatch steps read: mask, behaviour and reference log-probs, and the
    /// advantages (with PPO's old values and returns).
    fn batch_inputs(&self, batch: &ScoredBatch, layout: &CompletionLayout) -> Result<BatchInputs, StageError> {
        let step = batch.step;
        let device = self.policy.model.device().clone();
        let all: Vec<usize> = (0..batch.scored.len()).collect();
        let whole = layout.shared_batch(&all, &device)?;
        let mask = layout.loss_mask(&device)?;
        // Behaviour log-probs recorded by the sampler, in the same [B, C] completion layout.
        let old_logp = layout.old_logprobs(batch, &device)?;
        let temperature = batch.temperature as f64;
        let ref_logp = completion_logprobs(&self.reference, &whole, temperature)?.1.detach();
        let cfg = &self.config;
        let mut rewards: Vec<f64> = batch.scored.iter().map(|s| s.reward).collect();
        if cfg.kl_placement == KlPlacement::RewardSequence && cfg.beta > 0.0 {
            rewards = kl_penalised_rewards(&rewards, &old_logp, &ref_logp, &mask, cfg.beta, cfg.kl_estimator)
                .ctx(|| format!("learn step {step}: KL-penalised rewards"))?;
        }
        let groups =
            Groups::contiguous(rewards.len(), batch.group_size).ctx(|| format!("learn step {step}: grouping rollouts"))?;
        let token_rewards = || -> Result<Tensor, StageError> {
            if cfg.kl_placement == KlPlacement::RewardToken && cfg.beta > 0.0 {
                kl_penalised_token_rewards(&rewards, &old_logp, &ref_logp, &mask, cfg.beta, cfg.kl_estimator)
                    .ctx(|| "KL-penalised token rewards".to_string())
            } else {
                sequence_rewards_to_tokens(&rewards, &mask).ctx(|| "placing rewards on final tokens".to_string())
            }
        };
        let (advantages, values) = match cfg.algorithm {
            Algorithm::Grpo => {
                let norm = GroupNormConfig { scaling: cfg.scale_rewards, std_kind: StdKind::Sample, eps: 1e-4 };
                let a = grpo_advantages(&rewards, &groups, &norm).ctx(|| format!("learn step {step}: GRPO advantages"))?;
                (seq_tensor(&a, &device)?, None)
            }
            Algorithm::Rloo => {
                let a = rloo_advantages(&rewards, &groups).ctx(|| format!("learn step {step}: RLOO advantages"))?;
                (seq_tensor(&a, &device)?, None)
            }
            Algorithm::ReinforcePp => {
                let a = reinforce_pp_advantages(&token_rewards()?, &mask, cfg.gamma, 1e-8)
                    .ctx(|| format!("learn step {step}: REINFORCE++ advantages"))?;
                (a, None)
            }
            Algorithm::Ppo => {
                let hidden = self
                    .policy
                    .model
                    .inference_view()
                    .forward_hidden_shared(&whole)
                    .ctx(|| "PPO: hidden states".to_string())?;
                let values = self.values(&hidden, layout.width)?.detach();
                let g = gae(&token_rewards()?, &values, &mask, cfg.gamma, cfg.lam).ctx(|| "PPO: GAE".to_string())?;
                let adv = whiten(&g.advantages, &mask, StdKind::Sample, true, 1e-8).ctx(|| "PPO: whitening".to_string())?;
                (adv, Some((values, g.returns)))
            }
        };
        Ok(BatchInputs { mask, old_logp, ref_logp, advantages, values, temperature })
    }

    /// PPO's value predictions `[B, C]` from trunk hidden states `[B, C+1, H]`.
    fn values(&self, hidden: &Tensor, width: usize) -> Result<Tensor, StageError> {
        let head = self.value_head.as_ref().ok_or_else(|| StageError::msg("PPO learner has no value head"))?;
        head.forward(hidden)
            .ctx(|| "PPO: values".to_string())?
            .narrow(1, 0, width)
            .ctx(|| "PPO: aligning values".to_string())
    }

    /// One optimiser step on the minibatch `rows`: forward and backward per micro-batch with
    /// gradients summed in a [`GradAccumulator`], clipping, the learning rate of this optimiser
    /// step, AdamW, then the EMA. Adds the step's statistics to `sums`; returns the gradient norm.
    fn minibatch_step(
        &mut self,
        step: u64,
        layout: &CompletionLayout,
        inputs: &BatchInputs,
        rows: &[usize],
        sums: &mut StepSums,
    ) -> Result<f64, StageError> {
        let parts: Vec<&[usize]> = micro_batches(rows, self.config.micro_batch_size).collect();
        // Token-mean losses weight a micro-batch by its share of the minibatch's tokens, the
        // others by its share of sequences: the weighted sum is the minibatch loss.
        let rows_tokens = layout.tokens(rows).max(1.0);
        let mut acc = GradAccumulator::new();
        for part in &parts {
            let (w_seq, w_tok) = if parts.len() > 1 {
                (part.len() as f64 / rows.len() as f64, layout.tokens(part) / rows_tokens)
            } else {
                (1.0, 1.0)
            };
            let w_policy = if self.config.aggregation == LossAggregation::TokenMean { w_tok } else { w_seq };
            let (loss, stats, value_loss) = self.micro_batch_loss(step, layout, inputs, part, w_policy, w_tok)?;
            if !stats.loss.is_finite() {
                return Err(StageError::msg(format!(
                    "learn step {step}: the loss is {}; lower lr (= {}) or check the rewards",
                    stats.loss, self.config.lr
                )));
            }
            let g = loss.backward().ctx(|| format!("learn step {step}: backward"))?;
            acc.add(&self.params, &g, 1.0).ctx(|| format!("learn step {step}: accumulating gradients"))?;
            sums.add_policy(&stats, w_policy);
            if let Some(v) = value_loss {
                sums.add("value_loss", w_tok * v);
            }
        }
        let mut grads = acc.grads(&self.params);
        let grad_norm = if self.config.grad_clip > 0.0 {
            clip_grad_norm(&self.params, &mut grads, self.config.grad_clip).ctx(|| "gradient clipping".to_string())?
        } else {
            keel_optim::grad_norm(&self.params, &grads).ctx(|| "gradient norm".to_string())?
        };
        // The schedule counts optimiser steps, so warm-up spans epochs × minibatches per update.
        let lr = self.config.lr_schedule().lr(self.config.lr, self.opt.steps());
        self.opt.set_lr(lr);
        self.opt.step(&grads).ctx(|| format!("learn step {step}: optimiser update"))?;
        if let Some(e) = self.ema.as_mut() {
            e.update(&self.policy.model.named_vars()).ctx(|| "EMA update".to_string())?;
        }
        sums.add("grad_norm", grad_norm);
        sums.steps += 1.0;
        sums.last_lr = lr;
        Ok(grad_norm)
    }

    /// The weighted loss of one micro-batch (`w_policy ·` policy loss `+ vf_coef · w_tok ·` value
    /// loss for PPO), its policy statistics and its unweighted value loss.
    fn micro_batch_loss(
        &self,
        step: u64,
        layout: &CompletionLayout,
        inputs: &BatchInputs,
        part: &[usize],
        w_policy: f64,
        w_tok: f64,
    ) -> Result<(Tensor, PolicyStats, Option<f64>), StageError> {
        let device = self.policy.model.device();
        let idx = Tensor::from_vec(part.iter().map(|&i| i as u32).collect::<Vec<_>>(), part.len(), device)
            .ctx(|| "minibatch indices".to_string())?;
        let sel = |t: &Tensor| {
            t.contiguous().and_then(|t| t.index_select(&idx, 0)).ctx(|| "selecting minibatch rows".to_string())
        };
        let m = sel(&inputs.mask)?;
        let (hidden, logp) =
            completion_logprobs(&self.policy.model, &layout.shared_batch(part, device)?, inputs.temperature)
                .ctx(|| format!("learn step {step}: forward"))?;
        let (o, r, a) = (sel(&inputs.old_logp)?, sel(&inputs.ref_logp)?, sel(&inputs.advantages)?);
        let out = policy_loss(
            &PolicyBatch { logp: &logp, old_logp: &o, ref_logp: Some(&r), mask: &m, advantages: &a, entropy: None },
            &self.config.loss_config(),
        )
        .ctx(|| format!("learn step {step}: policy loss"))?;
        // Weight 1 (one micro-batch) skips the multiply, so the unsplit update is the plain loss's.
        let weighted = |t: Tensor, w: f64| if w == 1.0 { Ok(t) } else { (t * w).ctx(|| "weighting a micro-batch".to_string()) };
        let mut loss = weighted(out.loss, w_policy)?;
        let mut value = None;
        if let Some((old_values, returns)) = &inputs.values {
            let v = self.values(&hidden, layout.width)?;
            let vcfg = ValueLossConfig {
                clip_range: (self.config.value_clip > 0.0).then_some(self.config.value_clip),
                aggregation: LossAggregation::TokenMean,
            };
            let vl = value_loss(&v, &sel(old_values)?, &sel(returns)?, &m, &vcfg).ctx(|| "PPO: value loss".to_string())?;
            value = Some(scalar(&vl.loss)?);
            let scaled = weighted(vl.loss, self.config.vf_coef * w_tok)?;
            loss = (loss + scaled).ctx(|| "PPO: total loss".to_string())?;
        }
        Ok((loss, out.stats, value))
    }
}

/// The metrics of one update: minibatch statistics averaged over its optimiser steps, the
/// learning rate of its last step, and reward, length and truncation summaries of the batch.
fn batch_metrics(batch: &ScoredBatch, sums: StepSums, samples: u64) -> BTreeMap<String, f64> {
    let b = batch.scored.len() as f64;
    let mut metrics: BTreeMap<String, f64> = sums.sums.into_iter().map(|(k, v)| (k, v / sums.steps)).collect();
    let raw_mean = batch.scored.iter().map(|s| s.reward).sum::<f64>() / b;
    let var = batch.scored.iter().map(|s| (s.reward - raw_mean).powi(2)).sum::<f64>() / b;
    metrics.insert("reward_mean".into(), raw_mean);
    metrics.insert("reward_std".into(), var.sqrt());
    metrics.insert("lr".into(), sums.last_lr);
    metrics.insert("samples".into(), samples as f64);
    let lens: f64 = batch.scored.iter().map(|s| s.rollout.completion.token_ids.len() as f64).sum();
    metrics.insert("completion_len".into(), lens / b);
    let trunc = batch.scored.iter().filter(|s| s.rollout.completion.truncated()).count();
    metrics.insert("truncated_frac".into(), trunc as f64 / b);
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
    metrics
}
