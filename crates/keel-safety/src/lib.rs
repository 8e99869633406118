//! Safety classifiers and the safety reward.
//!
//! * [`SafetyClassifier`] judges a (prompt, response) pair into a [`keel_core::Verdict`]
//!   (`p_unsafe`, `refused`, `category`), and judges a reasoning trace and the final answer
//!   separately ([`ReasoningVerdict`]).
//! * [`RefusalLexicon`] holds the published refusal string lists (GCG/AdvBench substrings,
//!   XSTest prefixes) or a custom one; [`LexiconClassifier`] turns a lexicon into a classifier
//!   under the compliance-as-unsafe convention (see its docs).
//! * [`SafetyReward`] turns any classifier into a [`keel_rewards::Reward`].
//!
//! * [`SentenceEncoder`] computes sentence-transformers-exact embeddings (all-MiniLM-L6-v2);
//!   [`EmbeddingProbe`] is a logistic-regression head on them, trained by [`train_probe`] with
//!   held-out precision/recall/F1/AUROC/ECE/Brier ([`ProbeMetrics`]).
//! * [`LlamaGuardJudge`] is a Llama Guard 3-format LM judge over any keel-model decoder, with a
//!   continuous first-token `P(unsafe)` and parsed hazard categories.
//!
//! * [`judges`]: the judges a pipeline's `judges:` list names (lexicon, probe, Llama Guard,
//!   StrongREJECT, HarmBench) behind one [`judges::Judge`] trait, with a remote
//!   OpenAI-compatible client, an on-disk verdict cache, and Cohen's κ between judges.
//!
//! * [`judge_accuracy`] measures any judge against (prompt, response) pairs labelled by reading
//!   them ([`LabelledPair`], [`HumanLabel`]; the repository's `data/judge_labels/`).
//!
//! The model-free parts (lexicons, trait, reward) work without loading any model.

#![warn(missing_docs)]

mod classifier;
mod embedding;
mod error;
mod judge;
pub mod judges;
mod labelled;
mod lexicon;
mod model_error;
mod probe;
mod reward;

pub use classifier::{validate_verdict, ReasoningVerdict, SafetyClassifier};
pub use error::SafetyError;
pub use lexicon::{
    LexiconClassifier, MatchMode, RefusalLexicon, UnlabeledPrompts, GCG_REFUSAL_PHRASES,
    XSTEST_REFUSAL_PREFIXES,
};
pub use reward::{SafetyReward, SafetyRewardMode};
pub use embedding::{cosine, SentenceEncoder, DEFAULT_BATCH_SIZE, DEFAULT_MAX_SEQ_LENGTH};
pub use judge::{
    llama_guard_3_1b_categories, llama_guard_3_categories, parse_guard_output, render_guard_task, GuardCategory,
    GuardJudgement, GuardRole, GuardTurn, GuardVerdict, GuardWrap, LlamaGuardJudge, DEFAULT_MAX_VERDICT_TOKENS,
    LLAMA_GUARD_3_CATEGORIES,
};
pub use labelled::{
    accuracy_markdown, judge_accuracy, label_distribution_markdown, load_labelled, parse_labelled, Confusion, HumanLabel,
    JudgeAccuracy, JudgeMiss, LabelCounts, LabelledPair, LabelledSetError,
};
pub use model_error::{ModelClassifierError, ModelClassifierResult};
pub use probe::{
    auroc, binary_metrics, brier_score, expected_calibration_error, fit_logistic, sigmoid, stratified_split,
    train_probe, train_probe_on_embeddings, EmbeddingProbe, LabeledText, LogisticHead, ProbeInput, ProbeMetadata,
    ProbeMetrics, ProbeTrainConfig, TrainedProbe, PROBE_META_FILE, PROBE_WEIGHTS_FILE,
};
