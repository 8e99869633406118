//! Supervised fine-tuning: masked cross-entropy on the target (assistant) tokens of examples,
//! with AdamW, gradient clipping, a warm-up + cosine schedule and an optional EMA of weights.
//!
//! The loop reads like the equations in `docs/algorithms.md`:
//! `L(θ) = −(1/|M|) Σ_{t∈M} log π_θ(y_t | y_<t)` over the target positions `M`.

use std::collections::BTreeMap;
use std::sync::Arc;

use keel_core::{Example, SeedStream};
use keel_optim::{
    clip_grad_norm, sft_loss, AdamW, AdamWConfig, DecayRule, Ema, EmaConfig, GradAccumulator, LrSchedule, SftReduction,
};
use keel_pipeline::StageError;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::batch::{collate, micro_batches, scalar, TokenizedPair};
use crate::ctx::Ctx;
use crate::policy::Policy;

/// Tokenizes an example for SFT: the rendered prompt, then the gold `target` and the end-of-turn
/// token, tokenized separately exactly as generation sees them. Returns `None` for examples
/// without a target. Sequences longer than `max_len` keep the prompt and lose the target's end.
pub fn tokenize_pair(policy: &Policy, example: &Example, max_len: usize) -> Result<Option<TokenizedPair>, StageError> {
    let Some(target) = &example.target else { return Ok(None) };
    let prompt = policy.encode(&policy.render(example)?)?;
    let mut ids = prompt.clone();
    ids.extend(policy.encode(target)?);
    ids.push(policy.eos_id()?);
    if prompt.len() + 1 >= max_len {
        return Err(StageError::msg(format!(
            "the prompt of example `{}` has {} tokens, which leaves no room for a target within max_len = {max_len}; raise max_len",
            example.id,
            prompt.len()
        )));
    }
    ids.truncate(max_len);
    Ok(Some(TokenizedPair { ids, prompt_len: prompt.len() }))
}

/// Hyper-parameters of an SFT run (part of the `with:` block of an `sft` stage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
    /// Optimiser steps.
    pub steps: u64,
    /// Sequences per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps before the cosine decay.
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Decoupled weight decay (not applied to norms, biases or embeddings).
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
    /// Longest sequence in tokens (prompt + target).
    pub max_len: usize,
    /// Sequences per forward/backward pass, gradients accumulated (0 = the whole batch at once):
    /// the same update with less memory.
    pub micro_batch_size: usize,
    /// EMA coefficient α for θ̄ ← α·θ̄ + (1−α)·θ; `None` keeps no EMA.
    pub ema_alpha: Option<f64>,
    /// Train LoRA adapters instead of every weight; `None` trains the full model.
    pub lora: Option<LoraSpec>,
    /// Log metrics every this many steps.
    pub log_every: u64,
}

/// LoRA adapters as a training stage's `lora:` parameter. Full fine-tuning of a real model on a
/// CPU is slow and moves every weight; adapters train `r·(in+out)` numbers per projection from an
/// exact copy of the starting model. Checkpoints hold the merged weights (a plain model) plus the
/// adapters in PEFT layout under `adapter/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    /// Rank r of the update.
    pub r: usize,
    /// Scale numerator: the update is multiplied by alpha / r (default 2·r, the common recipe).
    #[serde(default)]
    pub alpha: Option<f64>,
    /// Projections to adapt (default: every attention and MLP projection).
    #[serde(default)]
    pub target_modules: Option<Vec<String>>,
}

impl LoraSpec {
    /// The keel-model configuration this spec asks for.
    pub fn config(&self) -> keel_model::LoraConfig {
        let mut c = keel_model::LoraConfig { r: self.r, alpha: self.alpha.unwrap_or(2.0 * self.r as f64), ..Default::default() };
        if let Some(t) = &self.target_modules {
            c.target_modules = t.clone();
        }
        c
    }

    /// Attaches fresh adapters (seeded) to `policy`, freezing its base weights.
    pub fn attach(&self, policy: &mut Policy, seed: u64) -> Result<(), StageError> {
        policy.model.add_lora(&self.config(), seed).ctx(|| "attaching LoRA adapters (the `lora` parameter)".to_string())
    }
}

/// Why an SFT run produced what it did: per-step metrics and the EMA weights if kept.
pub struct SftOutcome {
    /// The EMA of weights (θ̄), if `ema_alpha` was set.
    pub ema: Option<Ema>,
    /// Mean loss over the last logged window.
    pub final_loss: f64,
    /// Training sequences consumed (steps × batch size).
    pub samples: u64,
}

/// Runs SFT on `examples` in place on `policy.model`, calling `on_log(step, metrics)` every
/// `log_every` steps and `on_step(step)` after each step (progress, cancellation).
pub fn run_sft(
    policy: &mut Policy,
    examples: &[Arc<Example>],
    config: &SftConfig,
    seeds: SeedStream,
    mut on_log: impl FnMut(u64, BTreeMap<String, f64>) -> Result<(), StageError>,
    mut on_step: impl FnMut(u64) -> Result<(), StageError>,
) -> Result<SftOutcome, StageError> {
    if config.batch_size == 0 || config.steps == 0 {
        return Err(StageError::msg("sft: steps and batch_size must be at least 1"));
    }
    let mut pairs = Vec::new();
    for e in examples {
        if let Some(p) = tokenize_pair(policy, e, config.max_len)? {
            pairs.push(p);
        }
    }
    if pairs.is_empty() {
        return Err(StageError::msg("sft: none of the input examples has a `target` completion to imitate"));
    }
    if let Some(lora) = &config.lora {
        lora.attach(policy, seeds.seed("lora"))?;
    }
    let params = policy.model.named_vars();
    let mut opt = AdamW::with_decay_rule(
        params.clone(),
        AdamWConfig { lr: config.lr, weight_decay: config.weight_decay, ..AdamWConfig::default() },
        &DecayRule::default(),
    )
    .ctx(|| "building the AdamW optimiser".to_string())?;
    let schedule = LrSchedule::Cosine {
        warmup_steps: config.warmup_steps,
        total_steps: config.steps,
        min_lr_ratio: config.min_lr_ratio,
    };
    let mut ema = match config.ema_alpha {
        Some(alpha) => Some(Ema::new(&params, EmaConfig { alpha, blend_back: None }).ctx(|| "starting the EMA of weights".to_string())?),
        None => None,
    };
    let mut rng = seeds.rng("sft-order");
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.shuffle(&mut rng);
    let mut cursor = 0usize;
    let pad = policy.pad_id();
    let device = policy.model.device().clone();
    let (mut window_loss, mut window_n) = (0.0, 0usize);
    let mut final_loss = f64::NAN;
    for step in 0..config.steps {
        let mut batch = Vec::with_capacity(config.batch_size);
        while batch.len() < config.batch_size {
            if cursor == order.len() {
                order.shuffle(&mut rng);
                cursor = 0;
            }
            batch.push(&pairs[order[cursor]]);
            cursor += 1;
        }
        let parts: Vec<&[&TokenizedPair]> = micro_batches(&batch, config.micro_batch_size).collect();
        // Token-mean loss: a micro-batch's loss is weighted by its share of the batch's target
        // tokens, so the summed gradients equal the whole batch's.
        let target_tokens = |ps: &[&TokenizedPair]| ps.iter().map(|p| p.ids.len().saturating_sub(p.prompt_len)).sum::<usize>() as f64;
        let batch_tokens = target_tokens(&batch).max(1.0);
        let mut acc = GradAccumulator::new();
        let (mut loss_v, mut tokens) = (0.0, 0usize);
        for part in &parts {
            let tb = collate(part, pad, &device)?;
            let logp = policy
                .model
                .token_logprobs(&tb.ids, Some(&tb.attention))
                .ctx(|| format!("sft step {step}: forward pass"))?;
            let mut loss = sft_loss(&logp, &tb.loss_mask, SftReduction::Token).ctx(|| format!("sft step {step}: loss"))?;
            tokens += tb.tokens;
            if parts.len() > 1 {
                loss = (loss * (target_tokens(part) / batch_tokens)).ctx(|| "weighting a micro-batch".to_string())?;
            }
            loss_v += scalar(&loss)?;
            let g = loss.backward().ctx(|| format!("sft step {step}: backward pass"))?;
            acc.add(&params, &g, 1.0).ctx(|| format!("sft step {step}: accumulating gradients"))?;
        }
        let mut grads = acc.grads(&params);
        let grad_norm = if config.grad_clip > 0.0 {
            clip_grad_norm(&params, &mut grads, config.grad_clip).ctx(|| format!("sft step {step}: gradient clipping"))?
        } else {
            keel_optim::grad_norm(&params, &grads).ctx(|| format!("sft step {step}: gradient norm"))?
        };
        let lr = schedule.lr(config.lr, step);
        opt.set_lr(lr);
        opt.step(&grads).ctx(|| format!("sft step {step}: optimiser update"))?;
        if let Some(e) = ema.as_mut() {
            e.update(&params).ctx(|| format!("sft step {step}: EMA update"))?;
        }
        if !loss_v.is_finite() {
            return Err(StageError::msg(format!(
                "sft step {step}: the loss is {loss_v}; lower the learning rate (lr = {}) or check the data",
                config.lr
            )));
        }
        window_loss += loss_v;
        window_n += 1;
        on_step(step)?;
        if (step + 1) % config.log_every.max(1) == 0 || step + 1 == config.steps {
            final_loss = window_loss / window_n as f64;
            let mut m = BTreeMap::new();
            m.insert("loss".to_string(), final_loss);
            m.insert("lr".to_string(), lr);
            m.insert("grad_norm".to_string(), grad_norm);
            m.insert("tokens".to_string(), tokens as f64);
            on_log(step + 1, m)?;
            window_loss = 0.0;
            window_n = 0;
        }
    }
    Ok(SftOutcome { ema, final_loss, samples: config.steps * config.batch_size as u64 })
}
