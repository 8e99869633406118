//! Standalone use of keel-optim on toy tensors: GRPO advantages, the clipped policy loss with a k3
//! KL penalty, gradient clipping, AdamW with a warm-up + cosine schedule, and an EMA of weights.
//!
//! The "policy" is a table of logits `[T, V]` (one categorical distribution per position), so the
//! example needs no model; with a real decoder only the line computing `logits` changes.
//!
//! Run with `cargo run --release -p keel-optim --example grpo_toy`.

use candle_core::{DType, Device, Tensor, Var};
use keel_optim::{
    clip_grad_norm, grpo_advantages, policy_loss, token_logprobs, AdamW, AdamWConfig, DecayRule, Ema, EmaConfig,
    GroupNormConfig, Groups, KlEstimator, KlPenalty, LossAggregation, LrSchedule, PolicyBatch, PolicyLossConfig,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let (t, v) = (3usize, 5usize);
    // Trainable policy: logits per position, initialised to zero (uniform policy).
    let table = Var::zeros((t, v), DType::F32, &dev)?;
    let params = vec![("policy.logits".to_string(), table.clone())];
    // The reference policy is a frozen copy of the initial weights.
    let reference = table.as_tensor().copy()?;

    // One prompt, a group of 4 sampled completions (token ids), the last one padded after 2 tokens.
    let tokens = Tensor::new(&[[1u32, 2, 3], [1, 2, 4], [0, 0, 0], [4, 3, 0]], &dev)?;
    let mask = Tensor::new(&[[1f32, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], &dev)?;
    let rewards = [1.0, 1.0, 0.0, 0.0]; // verifiable reward: the first two are correct
    let b = rewards.len();

    let logits_of =
        |w: &Tensor| -> candle_core::Result<Tensor> { w.unsqueeze(0)?.broadcast_as((b, t, v))?.contiguous() };
    let old_logp = token_logprobs(&logits_of(table.as_tensor())?, &tokens)?.detach();
    let ref_logp = token_logprobs(&logits_of(&reference)?, &tokens)?;

    // GRPO advantages within the group (TRL defaults: sample std, eps 1e-4).
    let adv = grpo_advantages(&rewards, &Groups::contiguous(b, 4)?, &GroupNormConfig::default())?;
    println!("advantages: {adv:?}");
    let adv = Tensor::new(adv.as_slice(), &dev)?.to_dtype(DType::F32)?;

    let cfg = PolicyLossConfig {
        eps_low: 0.2,
        eps_high: 0.28, // DAPO clip-higher
        aggregation: LossAggregation::SequenceMean,
        kl: Some(KlPenalty { beta: 0.04, estimator: KlEstimator::K3 }),
    };
    let base_lr = 0.1;
    let schedule = LrSchedule::Cosine { warmup_steps: 1, total_steps: 6, min_lr_ratio: 0.1 };
    let mut opt = AdamW::with_decay_rule(
        params.clone(),
        AdamWConfig { lr: base_lr, ..Default::default() },
        &DecayRule::default(),
    )?;
    let mut ema = Ema::new(&params, EmaConfig { alpha: 0.9, blend_back: None })?;

    // Several inner steps on the same batch (GRPO's num_iterations / PPO epochs).
    for step in 0..6 {
        let logp = token_logprobs(&logits_of(table.as_tensor())?, &tokens)?;
        let batch = PolicyBatch {
            logp: &logp,
            old_logp: &old_logp,
            ref_logp: Some(&ref_logp),
            mask: &mask,
            advantages: &adv,
            entropy: None,
        };
        let out = policy_loss(&batch, &cfg)?;
        let mut grads = out.loss.backward()?;
        let norm = clip_grad_norm(&params, &mut grads, 1.0)?;
        opt.set_lr(schedule.lr(base_lr, opt.steps()));
        opt.step(&grads)?;
        ema.update(&params)?;
        let s = &out.stats;
        println!(
            "step {step}: lr {:.3} loss {:+.5} grad_norm {norm:.4} ratio_mean {:.4} clip_low {:.2} clip_high {:.2} kl_ref {:.5}",
            opt.lr(),
            s.loss,
            s.ratio_mean,
            s.clip_frac_low,
            s.clip_frac_high,
            s.kl_ref.unwrap_or(0.0)
        );
    }

    // Probability of the rewarded first token (id 1) under the live and the averaged policy.
    let p_live =
        candle_nn::ops::softmax_last_dim(&table.as_tensor().narrow(0, 0, 1)?)?.flatten_all()?.to_vec1::<f32>()?;
    let avg = ema.get("policy.logits").ok_or("EMA lost the policy")?;
    let p_avg = candle_nn::ops::softmax_last_dim(&avg.narrow(0, 0, 1)?)?.flatten_all()?.to_vec1::<f32>()?;
    println!("P(token 1 at position 0): start 0.200, live {:.3}, EMA {:.3}", p_live[1], p_avg[1]);
    Ok(())
}
