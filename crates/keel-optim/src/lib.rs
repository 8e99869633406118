//! keel-optim: the post-training algorithms of Keel as plain functions on candle tensors.
//!
//! Everything here is model-agnostic: losses take per-token log-probabilities `[B, T]` over
//! completion tokens (computed by whatever model the caller has), masks, and advantages; the
//! optimiser and EMA take named `Var` lists. That keeps each algorithm short enough to read next
//! to its equation (see `docs/algorithms.md`) and testable against independent references.
//!
//! Conventions:
//! - `logp` — log-probs of the sampled tokens under the current policy (differentiable);
//!   `old_logp` — under the behaviour policy that sampled them; `ref_logp` — under the frozen
//!   reference. The latter two are always detached by the functions that take them.
//! - `mask` — 1 for completion tokens that count, 0 for padding (any numeric dtype).
//! - Advantages per sequence `[B]` or per token `[B, T]`. Rows of a GRPO/RLOO batch are grouped
//!   by prompt with [`Groups`].
//!
//! Map of the crate:
//! - SFT: [`sft_loss`], [`sft_loss_from_logits`], [`token_logprobs`], [`token_entropy`].
//! - Advantages: [`grpo_advantages`], [`rloo_advantages`], [`reinforce_pp_advantages`], [`gae`],
//!   [`whiten`], [`returns_to_go`].
//! - Policy loss (PPO / GRPO / DAPO / Dr. GRPO): [`policy_loss`] with [`LossAggregation`].
//! - KL: [`kl_estimate`] (k1/k2/k3), in the loss via [`PolicyLossConfig::kl`] or in the reward via
//!   [`kl_penalised_rewards`] / [`kl_penalised_token_rewards`].
//! - PPO critic: [`value_loss`], [`ValueHead`].
//! - Inner epochs: [`MinibatchSchedule`].
//! - Optimisation: [`AdamW`], [`clip_grad_norm`], [`GradAccumulator`], [`LrSchedule`], [`Ema`].

#![warn(missing_docs)]

mod adamw;
mod advantages;
mod aggregate;
mod ema;
mod error;
mod grad;
mod kl;
mod minibatch;
mod policy;
mod schedule;
mod sft;
mod state_io;
mod tensors;
mod value;

pub use adamw::{AdamW, AdamWConfig, DecayRule, ParamGroup, ADAMW_META_FILE, ADAMW_TENSORS_FILE};
pub use advantages::{
    gae, grpo_advantages, reinforce_pp_advantages, returns_to_go, rloo_advantages, sequence_rewards_to_tokens, std_dev,
    whiten, whiten_values, GaeOutput, GroupNormConfig, Groups, RewardScaling, StdKind,
};
pub use aggregate::{aggregate, aggregation_weights, LossAggregation};
pub use ema::{BlendBack, Ema, EmaConfig, EMA_META_FILE, EMA_TENSORS_FILE};
pub use error::{OptimError, Result};
pub use grad::{clip_grad_norm, grad_norm, GradAccumulator};
pub use kl::{kl_estimate, kl_penalised_rewards, kl_penalised_token_rewards, KlEstimator, KlPlacement};
pub use minibatch::{Minibatch, MinibatchSchedule};
pub use policy::{policy_loss, KlPenalty, LOG_RATIO_CLAMP, PolicyBatch, PolicyLossConfig, PolicyLossOutput, PolicyStats};
pub use schedule::LrSchedule;
pub use sft::{sft_loss, sft_loss_from_logits, token_entropy, token_logprobs, SftReduction};
pub use tensors::{masked_mean, masked_sum};
pub use value::{value_loss, ValueHead, ValueLossConfig, ValueLossOutput};
