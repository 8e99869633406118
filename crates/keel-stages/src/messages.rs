//! The messages that flow along pipeline edges, and the port type names that stand for them.
//!
//! The engine checks that connected ports agree on a type *name*; these are the Rust types behind
//! the names. Everything is sent inside an `Arc`, so fan-out to several consumers is free.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use keel_core::{Example, Rollout, Scored};
use keel_model::{CausalLm, ChatTemplate, Tokenizer};
use serde::{Deserialize, Serialize};

/// Port type of [`ExampleSet`].
pub const EXAMPLES: &str = "examples";
/// Port type of [`TokenizerFiles`].
pub const TOKENIZER: &str = "tokenizer";
/// Port type of [`keel_core::CheckpointRef`].
pub const CHECKPOINT: &str = "checkpoint";
/// Port type of [`PromptBatch`].
pub const PROMPT_BATCH: &str = "prompt_batch";
/// Port type of [`RolloutBatch`].
pub const ROLLOUTS: &str = "rollouts";
/// Port type of [`ScoredBatch`].
pub const SCORED: &str = "scored";
/// Port type of [`EvalResult`].
pub const EVAL_RESULT: &str = "eval_result";
/// Resource kind of the policy store that learners publish [`PolicyVersion`]s to.
pub const POLICY_STORE: &str = "policy_store";

/// A named list of dataset items (a split of a world or a benchmark).
#[derive(Debug, Clone)]
pub struct ExampleSet {
    /// Name for logs and reports (`task_test`, `advbench`, ...).
    pub name: String,
    /// The items, shared so that batches can point into them without copying.
    pub examples: Vec<Arc<Example>>,
}

impl ExampleSet {
    /// Wraps owned examples.
    pub fn new(name: impl Into<String>, examples: Vec<Example>) -> Self {
        ExampleSet { name: name.into(), examples: examples.into_iter().map(Arc::new).collect() }
    }
}

/// A directory holding `tokenizer.json` and `tokenizer_config.json` (with its chat template).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerFiles {
    /// The directory.
    pub dir: PathBuf,
}

/// The prompts of one RL step.
#[derive(Debug, Clone)]
pub struct PromptBatch {
    /// Step index, starting at 0; the sampler waits for policy version `step - max_staleness`.
    pub step: u64,
    /// One entry per group.
    pub examples: Vec<Arc<Example>>,
}

/// The sampled groups of one RL step.
#[derive(Debug, Clone)]
pub struct RolloutBatch {
    /// Step index of the prompts.
    pub step: u64,
    /// Completions per prompt; rollouts of a group are contiguous.
    pub group_size: usize,
    /// Sampling temperature, which the learner must apply to its own log-probabilities.
    pub temperature: f32,
    /// The rollouts, group by group.
    pub rollouts: Vec<Rollout>,
}

/// The scored groups of one RL step.
#[derive(Debug, Clone)]
pub struct ScoredBatch {
    /// Step index of the prompts.
    pub step: u64,
    /// Completions per prompt.
    pub group_size: usize,
    /// Sampling temperature of the behaviour policy.
    pub temperature: f32,
    /// Scored rollouts, group by group.
    pub scored: Vec<Scored>,
}

/// What a learner publishes to the policy store after each update: a detached copy of the
/// weights plus what is needed to render prompts, so samplers need nothing else.
#[derive(Debug)]
pub struct PolicyVersion {
    /// Number of optimiser updates behind these weights (0 = initial weights).
    pub updates: u64,
    /// Detached weights for generation.
    pub model: Arc<CausalLm>,
    /// The tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// The chat template.
    pub template: Arc<ChatTemplate>,
    /// When the learner resumed from a checkpoint taken after this many updates: samplers skip
    /// the prompt batches the learner consumed before it (they are regenerated identically).
    pub resumed_at: Option<u64>,
}

/// Metrics of one example set under one policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SetMetrics {
    /// Number of prompts evaluated.
    pub n: usize,
    /// Metric name to value (accuracy, refusal_rate, ...).
    pub values: BTreeMap<String, f64>,
}

/// The evaluation of one checkpoint: what the report compares across branches.
///
/// A metric that was not measured (no such set wired, `drift_prompts: 0`, no `reference`) is
/// `None`, written as `null` in `results.json` and "not measured" in `report.md` — never 0 and
/// never "bound holds: yes". The drift fields come from one `keel_eval::drift::measure_drift`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Branch label (`base`, `sft`, `grpo-kl`, ...).
    pub label: String,
    /// Checkpoint directory evaluated.
    pub checkpoint: PathBuf,
    /// Held-out task accuracy (greedy), in [0, 1].
    #[serde(default)]
    pub capability: Option<f64>,
    /// Refusal rate on held-out harmful prompts (greedy), in [0, 1]; higher is safer.
    #[serde(default)]
    pub safety: Option<f64>,
    /// Refusal rate on benign prompts (greedy), in [0, 1]; lower is better.
    #[serde(default)]
    pub over_refusal: Option<f64>,
    /// KL(π‖π_ref) per completion (sequence level: exact next-token KL summed along sampled
    /// completions), averaged; 0 for the reference itself.
    #[serde(default)]
    pub kl: Option<f64>,
    /// Safety drift ΔS = E_π[s] − E_ref[s] from sampled completions on harmful prompts.
    #[serde(default)]
    pub drift: Option<f64>,
    /// χ²(π‖π_ref) used by the bound: the estimate `E_π[w] − 1` from the policy's samples, or the
    /// KL floor `e^KL − 1` when the estimate falls below it (then `chi2_reliable` is false).
    #[serde(default)]
    pub chi2: Option<f64>,
    /// Kish effective sample size of the weights behind the χ² estimate (of `n` samples).
    #[serde(default)]
    pub chi2_ess: Option<f64>,
    /// The floor `e^KL − 1` that KL implies for χ².
    #[serde(default)]
    pub chi2_kl_floor: Option<f64>,
    /// Whether the χ² estimate itself reached the KL floor (false: `chi2` is the floor).
    #[serde(default)]
    pub chi2_reliable: Option<bool>,
    /// Var_ref(s) over the reference's samples.
    #[serde(default)]
    pub var_ref_s: Option<f64>,
    /// Pinsker bound sqrt(KL/2) on |ΔS|.
    #[serde(default)]
    pub drift_bound_kl: Option<f64>,
    /// Cauchy–Schwarz bound sqrt(Var_ref(s)·χ²) on |ΔS|.
    #[serde(default)]
    pub drift_bound_chi2: Option<f64>,
    /// Whether |ΔS| ≤ sqrt(KL/2) held on the estimates.
    #[serde(default)]
    pub bound_kl_holds: Option<bool>,
    /// Whether |ΔS| ≤ sqrt(Var_ref(s)·χ²) held on the estimates.
    #[serde(default)]
    pub bound_chi2_holds: Option<bool>,
    /// Whether both bounds held.
    #[serde(default)]
    pub bound_holds: Option<bool>,
    /// Every metric by example set.
    pub sets: BTreeMap<String, SetMetrics>,
    /// Per-benchmark metrics, keyed `harmful:<source>` / `benign:<source>` (refusal rate) and
    /// `task:<source>` (accuracy) by each prompt's source dataset, for inputs that merge several
    /// benchmarks (AdvBench, HarmBench, JailbreakBench, ...): the papers report safety per
    /// benchmark, not only pooled. Empty (and absent from the JSON) when every set has one source.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub benchmarks: BTreeMap<String, SetMetrics>,
    /// Trace-level safety of `<think>` completions on harmful prompts (arXiv 2512.01848's
    /// analysis), keyed `harmful:<set>` and, when the set merges several sources (benchmarks,
    /// jailbreak attacks), `harmful:<source>`: the reasoning trace and the final answer judged
    /// separately by the refusal lexicon (unsafe = not refused), giving the unsafe-trace rate, the
    /// unsafe-answer rate and the "safe answer, unsafe reasoning" rate (`leak_rate`). Empty, and
    /// absent from the JSON, when no completion had a `<think>` trace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trace_safety: BTreeMap<String, keel_eval::safety::ReasoningSafety>,
    /// The primary judge of a `judges:` list (its name), which `safety` and, when it reports
    /// refusals, `over_refusal` come from. Absent for the default lexicon judging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_judge: Option<String>,
    /// Each judge's harm metric by name (`asr`, or `strongreject_score` for the rubric), so a
    /// report labels a judge's column by its kind even when it parsed nothing and so wrote no
    /// harm value. Empty (and absent from the JSON) without `judges:`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub judge_metrics: BTreeMap<String, String>,
    /// Cohen's κ between every pair of judges on each harmful set. Empty (and absent from the
    /// JSON) with fewer than two judges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agreement: Vec<JudgeAgreement>,
}

/// How far two judges agree on one harmful set's responses (their binary "harmful" calls).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeAgreement {
    /// The set (`harmful:<name>`).
    pub set: String,
    /// One judge.
    pub a: String,
    /// The other judge.
    pub b: String,
    /// Responses both judges parsed.
    pub n: usize,
    /// The fraction of those on which they agree; `None` when `n` is 0.
    pub observed: Option<f64>,
    /// Cohen's κ; `None` when undefined (no pairs, or both judges constant and equal).
    pub kappa: Option<f64>,
}
