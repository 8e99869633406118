//! Keel's shared vocabulary.
//!
//! Every other Keel crate speaks in these types, so that a dataset loader, a sampler, a reward, a
//! safety classifier and an optimiser can be combined without adapters: an [`Example`] is what a
//! dataset yields, a [`Completion`] is what a policy wrote, a [`Rollout`] ties the two together with
//! the policy version that produced it, and a [`Scored`] rollout carries every reward and classifier
//! verdict. [`RunDir`] is the on-disk home of one run, and [`SeedStream`] derives independent,
//! reproducible random streams from one root seed.

mod checkpoint;
mod error;
mod example;
mod hash;
mod markdown;
mod metric;
mod regular;
mod rollout;
mod run_dir;
mod seed;

pub use checkpoint::CheckpointRef;
pub use error::{CoreError, Result};
pub use example::{Example, Message, Prompt, Role, SafetyLabel};
pub use hash::{sha256_bytes, sha256_file};
pub use markdown::{md_cell, md_line};
pub use metric::MetricRecord;
pub use regular::{non_regular_kind, regular_file_len};
pub use rollout::{Completion, FinishReason, Rollout, Scored, Verdict};
pub use run_dir::{write_atomic, JsonlWriter, RecordLog, RunDir};
pub use seed::{splitmix64, SeedStream};

/// The Keel version compiled into every binary, recorded in run manifests.
pub const KEEL_VERSION: &str = env!("CARGO_PKG_VERSION");
