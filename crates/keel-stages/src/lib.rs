//! Keel's stage kinds: the one crate that knows both the pipeline engine and the ML crates.
//!
//! `keel-pipeline` runs graphs of stages without knowing what flows through them; the domain
//! crates (`keel-data`, `keel-model`, `keel-rollout`, `keel-rewards`, `keel-safety`,
//! `keel-optim`, `keel-eval`) know nothing of pipelines. This crate adapts the second to the first:
//! each stage kind declares typed ports ([`messages`]) and parameters, and its `run` calls into the
//! domain crates. [`registry`] returns every kind, which is what `keel run`, `keel validate` and
//! `keel list` use.
//!
//! The RL loop is `prompts → rollout → score → learn`, with `learn` publishing each new policy to a
//! `policy_store` resource that `rollout` reads under the declared maximum staleness. Experiment
//! steps (world building, tokenizer training, warm-up SFT, evaluation, report) are stages of the
//! same graph, connected by checkpoint and example-set messages.

pub mod batch;
mod ctx;
pub mod evaluate;
pub mod judging;
mod kinds;
pub mod messages;
pub mod policy;
pub mod report;
pub mod rl;
pub mod train;

pub use ctx::Ctx;
pub use kinds::registry;
