//! The RL learner on a tiny random model: fresh on-policy samples give importance ratio 1 (the
//! sampler's recorded log-probs equal the learner's forward, at T = 1 and T ≠ 1); every update takes
//! exactly `epochs × minibatches` optimiser steps; the learning rate is set before each of them
//! from the optimiser step count (warm-up spans epochs × minibatches); the EMA is updated after
//! each of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::DType;
use keel_core::{Completion, Example, FinishReason, Rollout, Scored, SeedStream};
use keel_model::ModelConfig;
use keel_optim::{KlEstimator, KlPlacement, LossAggregation, RewardScaling};
use keel_rollout::SamplingParams;
use keel_stages::batch::{completion_logprobs, CompletionLayout};
use keel_stages::messages::ScoredBatch;
use keel_stages::policy::{sample_rollouts, Policy};
use keel_stages::rl::{Algorithm, LearnConfig, Learner};

const LR: f64 = 1e-3;

/// A random `tiny-300k` model over a small BPE vocabulary with the ChatML template.
fn tiny_policy(seed: u64) -> Policy {
    let corpus: Vec<String> = (0..200)
        .map(|i| format!("What is {} plus {}? The answer is {}. Think step by step.", i % 17, i % 5, i % 17 + i % 5))
        .collect();
    let tok = keel_model::train_bpe(&corpus, 300, &[]).expect("tokenizer trains");
    let mut config = ModelConfig::preset("tiny-300k", tok.vocab_size()).expect("preset exists");
    config.eos_token_ids = tok.eos_id().into_iter().collect();
    Policy::from_config(&config, tok, seed).expect("model builds")
}

fn examples(n: usize) -> Vec<Arc<Example>> {
    (0..n).map(|i| Arc::new(Example::new(format!("q{i}"), format!("What is {i} plus {}?", i + 2), "test"))).collect()
}

/// Groups sampled from `policy` as the rollout stage samples them, with rewards that vary within
/// each group (so advantages are non-zero).
fn sampled_batch(policy: &Policy, prompts: usize, group: usize, temperature: f32, step: u64) -> ScoredBatch {
    let params = SamplingParams {
        temperature,
        max_new_tokens: 10,
        n: group,
        seed: 77 + step,
        ..SamplingParams::default()
    };
    let version = policy.version(0).expect("policy version");
    let rollouts = sample_rollouts(&version, &examples(prompts), &params, 1, step).expect("samples");
    scored(rollouts, group, temperature, step)
}

fn scored(rollouts: Vec<Rollout>, group: usize, temperature: f32, step: u64) -> ScoredBatch {
    let scored = rollouts
        .into_iter()
        .enumerate()
        .map(|(i, rollout)| Scored { rollout, reward: (i % 3) as f64, components: BTreeMap::new(), verdicts: BTreeMap::new() })
        .collect();
    ScoredBatch { step, group_size: group, temperature, scored }
}

/// `n` rollouts with made-up completions of 1–6 tokens (for step counting, where log-probs
/// need not be the policy's).
fn synthetic_batch(n: usize, group: usize) -> ScoredBatch {
    let example = Arc::new(Example::new("s", "x", "test"));
    let rollouts = (0..n)
        .map(|i| {
            let len = 1 + i % 6;
            Rollout {
                example: example.clone(),
                prompt_ids: vec![3, 4, 5 + (i / group) as u32],
                prompt_text: String::new(),
                completion: Completion {
                    text: String::new(),
                    token_ids: (0..len).map(|j| (7 + i + j) as u32 % 50).collect(),
                    logprobs: vec![-4.0; len],
                    entropies: vec![0.0; len],
                    finish: FinishReason::Stop,
                    policy_version: 1,
                },
                group: i / group,
            }
        })
        .collect();
    scored(rollouts, group, 1.0, 0)
}

fn config(epochs: usize, minibatches: usize, warmup_steps: u64, ema_alpha: Option<f64>) -> LearnConfig {
    LearnConfig {
        algorithm: Algorithm::Grpo,
        lr: LR,
        warmup_steps,
        weight_decay: 0.0,
        grad_clip: 1.0,
        beta: 0.04,
        kl_estimator: KlEstimator::K3,
        kl_placement: KlPlacement::Loss,
        eps_low: 0.2,
        eps_high: 0.2,
        aggregation: LossAggregation::SequenceMean,
        scale_rewards: RewardScaling::Group,
        epochs,
        minibatches,
        micro_batch_size: 0,
        gamma: 1.0,
        lam: 0.95,
        vf_coef: 0.1,
        value_clip: 0.2,
        ema_alpha,
        lora: None,
    }
}

fn values(t: &candle_core::Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

#[test]
fn fresh_samples_have_importance_ratio_one_at_every_temperature() {
    let policy = tiny_policy(3);
    for temperature in [1.0f32, 0.7] {
        let batch = sampled_batch(&policy, 3, 4, temperature, 0);
        let layout = CompletionLayout::new(&batch).unwrap();
        let device = policy.model.device().clone();
        let all: Vec<usize> = (0..batch.scored.len()).collect();
        // Exactly what the learner computes: its forward on the shared-prefix layout …
        let (_, logp) = completion_logprobs(&policy.model, &layout.shared_batch(&all, &device).unwrap(), temperature as f64)
            .unwrap();
        // … against the sampler's recorded behaviour log-probs.
        let old = layout.old_logprobs(&batch, &device).unwrap();
        let mask = values(&layout.loss_mask(&device).unwrap());
        let (lp, old) = (values(&logp), values(&old));
        let mut tokens = 0;
        let mut worst: f64 = 0.0;
        for k in 0..mask.len() {
            if mask[k] == 1.0 {
                tokens += 1;
                worst = worst.max(((lp[k] - old[k]).exp() - 1.0).abs());
            }
        }
        assert!(tokens >= 40, "T = {temperature}: only {tokens} completion tokens");
        eprintln!("T = {temperature}: {tokens} tokens, max |ρ − 1| = {worst:e}");
        assert!(worst < 1e-5, "T = {temperature}: |ρ − 1| up to {worst:e} on fresh samples");
        // The temperature matters: the untempered forward differs from the T = 0.7 record.
        if temperature != 1.0 {
            let (_, plain) =
                completion_logprobs(&policy.model, &layout.shared_batch(&all, &device).unwrap(), 1.0).unwrap();
            let plain = values(&plain);
            let off = (0..mask.len()).filter(|&k| mask[k] == 1.0).map(|k| (plain[k] - old[k]).abs()).fold(0.0, f64::max);
            assert!(off > 1e-3, "T = 1 log-probs should differ from T = {temperature} ones ({off:e})");
        }
    }
}

#[test]
fn learning_rate_is_set_before_every_optimiser_step_and_the_ema_updated_after_it() {
    let alpha = 0.9;
    let policy = tiny_policy(5);
    let name = policy.model.named_vars()[0].0.clone();
    let theta0 = values(policy.model.named_vars()[0].1.as_tensor());
    let mut learner = Learner::new(policy, config(2, 3, 4, Some(alpha)), SeedStream::new(11)).unwrap();
    let batch = synthetic_batch(8, 4);
    let mut lrs = Vec::new();
    let mut sizes = Vec::new();
    let mut thetas = vec![theta0];
    let mut emas = Vec::new();
    let metrics = learner
        .update_observed(&batch, |s| {
            assert_eq!(s.index as usize, lrs.len() + 1, "optimiser steps are counted one by one");
            lrs.push(s.lr);
            sizes.push((s.epoch, s.minibatch, s.rows.len()));
            let p = s.params.iter().find(|(n, _)| *n == name).unwrap();
            thetas.push(values(p.1.as_tensor()));
            emas.push(values(s.ema.unwrap().get(&name).unwrap()));
            Ok(())
        })
        .unwrap();
    // 2 epochs × 3 minibatches = 6 steps; 8 rows in 3 minibatches are 3, 3, 2.
    assert_eq!(sizes, vec![(0, 0, 3), (0, 1, 3), (0, 2, 2), (1, 0, 3), (1, 1, 3), (1, 2, 2)]);
    // Warm-up over 4 optimiser steps with transformers' convention (the first step has index 0):
    // lr · 0/4, 1/4, 2/4, 3/4, then lr — not one lr for the whole batch.
    assert_eq!(lrs, vec![0.0, 0.25 * LR, 0.5 * LR, 0.75 * LR, LR, LR]);
    assert_eq!(metrics["lr"], LR, "the logged lr is the last step's");
    assert_eq!(learner.optimiser_steps(), 6);
    assert!(thetas[1] == thetas[0] && thetas[2] != thetas[1], "lr 0 leaves θ as it is; lr > 0 moves it");
    // θ̄_k = α^k θ_0 + Σ_{j=1..k} (1 − α) α^{k−j} θ_j after every step k.
    for k in 1..=6 {
        for (i, got) in emas[k - 1].iter().enumerate() {
            let mut want = alpha.powi(k as i32) * thetas[0][i];
            for j in 1..=k {
                want += (1.0 - alpha) * alpha.powi((k - j) as i32) * thetas[j][i];
            }
            assert!((got - want).abs() < 2e-6, "EMA after step {k}, element {i}: {got} vs {want}");
        }
    }
    // The next update continues the count: warm-up is over, every step runs at lr.
    let mut more = Vec::new();
    learner.update_observed(&batch, |s| {
        more.push((s.index, s.lr));
        Ok(())
    })
    .unwrap();
    assert_eq!(more, (7..=12).map(|i| (i, LR)).collect::<Vec<_>>());
    assert_eq!(learner.updates(), 2);
}

#[test]
fn every_update_takes_exactly_minibatches_steps_per_epoch() {
    for (batch, group, minibatches) in [(64, 8, 9), (64, 8, 15), (8, 4, 5)] {
        let mut learner = Learner::new(tiny_policy(7), config(1, minibatches, 0, None), SeedStream::new(1)).unwrap();
        let mut sizes = Vec::new();
        learner
            .update_observed(&synthetic_batch(batch, group), |s| {
                sizes.push(s.rows.len());
                Ok(())
            })
            .unwrap();
        assert_eq!(sizes.len(), minibatches, "batch {batch} with minibatches {minibatches}");
        assert_eq!(sizes.iter().sum::<usize>(), batch);
        let (q, r) = (batch / minibatches, batch % minibatches);
        assert_eq!(sizes, (0..minibatches).map(|i| q + usize::from(i < r)).collect::<Vec<_>>(), "remainder spread");
        assert_eq!(learner.optimiser_steps(), minibatches as u64);
    }
    // More minibatches than rollouts is an error that says so.
    let mut learner = Learner::new(tiny_policy(7), config(1, 9, 0, None), SeedStream::new(1)).unwrap();
    let e = learner.update(&synthetic_batch(8, 4)).unwrap_err().full_message();
    assert!(e.contains("minibatches") && e.contains("8"), "{e}");
}
