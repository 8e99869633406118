//! The RL loop as stages: `prompts → rollout → score → learn`, with `learn` publishing each new
//! policy to a `policy_store` resource that `rollout` reads under the declared max staleness.



use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_core::{CheckpointRef, SeedStream};

use keel_pipeline::{
    DryRun, ParamProblem, ParamSpec, ParamType, Params, PortSpec, ResourceSpec, Stage, StageContext, StageError, StageKind,
};
use keel_rewards::{AnswerFormat, CompositeReward, FormatReward, LengthPenalty, MathReward, TruncationPenalty};
use keel_rollout::SamplingParams;
use keel_safety::{LexiconClassifier, SafetyReward, SafetyRewardMode};
use rand::seq::SliceRandom;
use serde::Deserialize;

use crate::ctx::Ctx;
use crate::kinds::sft::{check_ema, check_lora, first_problem, optimiser_params, parse_params};
use crate::evaluate::{evaluate, EvalConfig, EvalSets};
use crate::kinds::{recv_examples, recv_one};
use crate::messages::{
    PolicyVersion, PromptBatch, RolloutBatch, ScoredBatch, CHECKPOINT, EXAMPLES, POLICY_STORE, PROMPT_BATCH, ROLLOUTS,
    SCORED,
};
use crate::policy::{sample_rollouts, Policy};
use crate::rl::{LearnConfig, Learner};

/// `prompts`: cycles through shuffled examples, emitting one batch of prompts per RL step.
pub struct Prompts;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptParams {
    steps: u64,
    batch_size: usize,
    harmful_fraction: Option<f64>,
}

/// A pool of examples drawn in an order reshuffled (seeded) at every pass.
struct Cycle<'a> {
    items: Vec<&'a Arc<keel_core::Example>>,
    order: Vec<usize>,
    cursor: usize,
}

impl<'a> Cycle<'a> {
    fn new(items: Vec<&'a Arc<keel_core::Example>>, rng: &mut impl rand::Rng) -> Self {
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.shuffle(rng);
        Cycle { items, order, cursor: 0 }
    }

    fn next(&mut self, rng: &mut impl rand::Rng) -> Arc<keel_core::Example> {
        if self.cursor == self.order.len() {
            self.order.shuffle(rng);
            self.cursor = 0;
        }
        let e = self.items[self.order[self.cursor]].clone();
        self.cursor += 1;
        e
    }
}

impl StageKind for Prompts {
    fn name(&self) -> &'static str {
        "prompts"
    }
    fn doc(&self) -> &'static str {
        "Emits `steps` batches of `batch_size` prompts (one group each), cycling through the examples in an order \
         reshuffled (seeded) every epoch. With `harmful_fraction`, each batch holds that share of harmful-labelled \
         prompts and the rest from the other examples (a safety-RL prompt mix)."
    }
    fn inputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("examples", EXAMPLES, "prompt pool (fan-in allowed)")]
    }
    fn outputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("batch", PROMPT_BATCH, "prompts of one step")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional("steps", ParamType::Int, "50", "number of RL steps"),
            ParamSpec::optional("batch_size", ParamType::Int, "8", "prompts (groups) per step"),
            ParamSpec::optional(
                "harmful_fraction",
                ParamType::Any,
                "null",
                "share of each batch drawn from harmful-labelled examples (rest: the others); null draws regardless of label",
            ),
        ]
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        match parse_params::<PromptParams>(params, &self.params()) {
            Err(problems) => problems,
            Ok(p) if p.batch_size == 0 => vec![ParamProblem::new("batch_size", "must be at least 1")],
            Ok(PromptParams { harmful_fraction: Some(f), .. }) if !(0.0..=1.0).contains(&f) => {
                vec![ParamProblem::new("harmful_fraction", format!("{f} is outside [0, 1]"))]
            }
            _ => Vec::new(),
        }
    }
    fn dry_run(&self, params: &Params) -> Result<DryRun, ParamProblem> {
        let p = parse_params::<PromptParams>(params, &self.params()).map_err(first_problem)?;
        Ok(DryRun::unchanged().set("steps", p.steps.min(2)).set("batch_size", p.batch_size.min(2)))
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(PromptStage(params.parse()?)))
    }
}

struct PromptStage(PromptParams);

impl Stage for PromptStage {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        let set = recv_examples(ctx, "examples")?.ok_or_else(|| StageError::msg("no examples"))?;
        if set.examples.is_empty() {
            return Err(StageError::msg(format!("example set `{}` is empty", set.name)));
        }
        let mut rng = ctx.seeds().rng("order");
        let b = self.0.batch_size;
        match self.0.harmful_fraction {
            None => {
                let mut all = Cycle::new(set.examples.iter().collect(), &mut rng);
                for step in 0..self.0.steps {
                    let examples = (0..b).map(|_| all.next(&mut rng)).collect();
                    ctx.send("batch", PromptBatch { step, examples })?;
                }
            }
            Some(f) => {
                let is_harmful = |e: &&Arc<keel_core::Example>| e.safety == Some(keel_core::SafetyLabel::Harmful);
                let (harmful, other): (Vec<_>, Vec<_>) = set.examples.iter().partition(is_harmful);
                let n_harmful = (f * b as f64).round() as usize;
                if n_harmful > 0 && harmful.is_empty() || n_harmful < b && other.is_empty() {
                    return Err(StageError::msg(format!(
                        "harmful_fraction {f} needs both harmful-labelled and other examples, but `{}` has {} harmful and {} other",
                        set.name,
                        harmful.len(),
                        other.len()
                    )));
                }
                let mut harmful = Cycle::new(harmful, &mut rng);
                let mut other = Cycle::new(other, &mut rng);
                for step in 0..self.0.steps {
                    let mut examples: Vec<_> = (0..n_harmful).map(|_| harmful.next(&mut rng)).collect();
                    examples.extend((n_harmful..b).map(|_| other.next(&mut rng)));
                    ctx.send("batch", PromptBatch { step, examples })?;
                }
            }
        }
        Ok(())
    }
}

/// `rollout`: samples groups of completions from the newest allowed policy version.
pub struct Rollout;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutParams {
    group_size: usize,
    temperature: f32,
    top_p: f32,
    top_k: usize,
    min_p: f32,
    max_new_tokens: usize,
}

impl StageKind for Rollout {
    fn name(&self) -> &'static str {
        "rollout"
    }
    fn doc(&self) -> &'static str {
        "Samples `group_size` completions per prompt with the KV-cache engine, recording per-token log-probs and \
         entropies. Batch k waits for policy version k+1−max_staleness (version 1 = initial weights), so with \
         max_staleness ≥ 1 sampling overlaps learning and the learner corrects with importance ratios."
    }
    fn inputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("batch", PROMPT_BATCH, "prompts of one step")]
    }
    fn outputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("rollouts", ROLLOUTS, "sampled groups with behaviour log-probs")]
    }
    fn resources(&self) -> Vec<ResourceSpec> {
        vec![ResourceSpec::reads("policy", POLICY_STORE, "the learner's published policy versions")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional("group_size", ParamType::Int, "8", "completions per prompt (TRL num_generations)"),
            ParamSpec::optional("temperature", ParamType::Float, "1.0", "sampling temperature (> 0 for RL)"),
            ParamSpec::optional("top_p", ParamType::Float, "1.0", "nucleus sampling mass"),
            ParamSpec::optional("top_k", ParamType::Int, "0", "keep the k most likely tokens (0 = off)"),
            ParamSpec::optional("min_p", ParamType::Float, "0.0", "drop tokens below min_p × the top probability"),
            ParamSpec::optional("max_new_tokens", ParamType::Int, "48", "completion token budget (longer ones are truncated)"),
        ]
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        let p = match parse_params::<RolloutParams>(params, &self.params()) {
            Ok(p) => p,
            Err(problems) => return problems,
        };
        let mut out = Vec::new();
        if p.group_size == 0 {
            out.push(ParamProblem::new("group_size", "must be at least 1"));
        }
        if !(p.temperature > 0.0) {
            out.push(ParamProblem::new("temperature", "RL sampling needs a temperature > 0"));
        }
        out
    }
    fn dry_run(&self, params: &Params) -> Result<DryRun, ParamProblem> {
        let p = parse_params::<RolloutParams>(params, &self.params()).map_err(first_problem)?;
        Ok(DryRun::unchanged().set("group_size", p.group_size.min(4)).set("max_new_tokens", p.max_new_tokens.min(16)))
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(RolloutStage(params.parse()?)))
    }
}

struct RolloutStage(RolloutParams);

impl Stage for RolloutStage {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        let p = self.0;
        let store = ctx.policy("policy")?;
        let seeds = ctx.seeds();
        while let Some(batch) = ctx.recv::<PromptBatch>("batch")? {
            // Batch k is generated by exactly version k+1−max_staleness (version v = weights after
            // v−1 updates), whatever the relative speed of sampler and learner: reproducible.
            let need = (batch.step + 1).saturating_sub(store.max_staleness()).max(1);
            if ctx.is_resuming() {
                let latest = store.wait_for(1)?;
                let resumed_at = latest.get::<PolicyVersion>()?.and_then(|v| v.resumed_at).unwrap_or(0);
                if batch.step < resumed_at {
                    continue; // consumed by the learner before its checkpoint
                }
            }
            let snap = store.wait_for_exact(need)?;
            let version = snap
                .get::<PolicyVersion>()?
                .ok_or_else(|| StageError::msg("the policy store holds no policy yet"))?;
            let params = SamplingParams {
                temperature: p.temperature,
                top_p: p.top_p,
                top_k: p.top_k,
                min_p: p.min_p,
                max_new_tokens: p.max_new_tokens,
                n: p.group_size,
                seed: seeds.seed(&format!("step-{}", batch.step)),
                ..SamplingParams::default()
            };
            let rollouts = sample_rollouts(&version, &batch.examples, &params, snap.version, batch.step)?;
            ctx.log_metrics(batch.step, [("policy_version", snap.version as f64), ("staleness", (batch.step + 1).saturating_sub(snap.version) as f64)])?;
            ctx.send("rollouts", RolloutBatch { step: batch.step, group_size: p.group_size, temperature: p.temperature, rollouts })?;
        }
        Ok(())
    }
}

/// `score`: applies a weighted composite of verifiable and safety rewards to every rollout.
pub struct Score;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RewardSpec {
    kind: String,
    #[serde(default = "one")]
    weight: f64,
    #[serde(default)]
    format: Option<AnswerFormat>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    buffer_tokens: Option<usize>,
    #[serde(default)]
    penalty: Option<f64>,
    #[serde(default)]
    lexicon: Option<String>,
    #[serde(default)]
    open_in_prompt: Option<bool>,
    /// `refusal` only: one judge scoring it instead of the lexicon (docs/metrics.md, "Judges").
    #[serde(default)]
    judges: Option<Vec<keel_safety::judges::JudgeSpec>>,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreParams {
    rewards: Vec<RewardSpec>,
    threads: usize,
}

const REWARD_KINDS: &[&str] = &["answer", "format", "length", "truncation", "refusal"];

/// The `refusal` reward scored by the one judge of `specs` (benign prompts fall back to the
/// `lexicon` when the judge reports no refusals). With `build` false the spec is only validated
/// and `None` returned (`keel validate` must not load models or need endpoints up).
fn refusal_judge_reward(
    specs: &[keel_safety::judges::JudgeSpec],
    lexicon: &str,
    build: bool,
) -> Result<Option<crate::judging::JudgeReward>, String> {
    let [spec] = specs else {
        return Err(format!("`judges` of a `refusal` reward lists one judge (it scores the reward), not {}", specs.len()));
    };
    spec.validate().map_err(|e| format!("judges: {e}"))?;
    let fallback = keel_safety::judges::LexiconJudge::new(lexicon).map_err(|e| e.to_string())?;
    if !build {
        return Ok(None);
    }
    let judge = spec.build().map_err(|e| format!("judges: {e}"))?;
    Ok(Some(crate::judging::JudgeReward::new(judge, fallback)))
}

fn build_reward(specs: &[RewardSpec]) -> Result<CompositeReward, String> {
    build_reward_with(specs, true)
}

fn build_reward_with(specs: &[RewardSpec], build_judges: bool) -> Result<CompositeReward, String> {
    let mut c = CompositeReward::new();
    for s in specs {
        if s.judges.is_some() && s.kind != "refusal" {
            return Err(format!("`judges` applies to the `refusal` reward only, not `{}`", s.kind));
        }
        let r: Box<dyn keel_rewards::Reward> = match s.kind.as_str() {
            "answer" => Box::new(MathReward::new(s.format.unwrap_or(AnswerFormat::AnswerLine))),
            "format" => Box::new(FormatReward::think().open_tag_in_prompt(s.open_in_prompt.unwrap_or(false))),
            "length" => Box::new(
                LengthPenalty::new(s.max_tokens.unwrap_or(64), s.buffer_tokens.unwrap_or(16)).map_err(|e| e.to_string())?,
            ),
            "truncation" => Box::new(TruncationPenalty::new(s.penalty.unwrap_or(1.0))),
            "refusal" => {
                let lex = match s.lexicon.as_deref().unwrap_or("gcg") {
                    "gcg" => LexiconClassifier::gcg(),
                    "xstest" => LexiconClassifier::xstest(),
                    other => return Err(format!("unknown lexicon `{other}` (gcg or xstest)")),
                };
                let by_lexicon = SafetyReward::new(lex, SafetyRewardMode::RefuseHarmfulAnswerBenign).named("refusal");
                match &s.judges {
                    None => Box::new(by_lexicon),
                    Some(specs) => match refusal_judge_reward(specs, s.lexicon.as_deref().unwrap_or("gcg"), build_judges)? {
                        Some(r) => Box::new(r),
                        // Validation only (the composite is discarded): the judge was checked, not built.
                        None => Box::new(by_lexicon),
                    },
                }
            }
            other => {
                let hint = keel_pipeline::did_you_mean(other, REWARD_KINDS.iter().copied(), "reward kinds");
                return Err(format!("unknown reward kind `{other}`: {hint}"));
            }
        };
        c.push(s.weight, r).map_err(|e| e.to_string())?;
    }
    Ok(c)
}

impl StageKind for Score {
    fn name(&self) -> &'static str {
        "score"
    }
    fn doc(&self) -> &'static str {
        "Scores each rollout with a weighted sum of named rewards, each logged separately. Kinds: `answer` (verified \
         final answer; `format`: answer_line, gsm8k_strict, gsm8k_flexible, boxed, auto), `format` (exactly one \
         <think>…</think> before an answer; `open_in_prompt: true` when the chat template opens <think>), `length` (`max_tokens`, `buffer_tokens`), `truncation` (`penalty`), \
         `refusal` (refuse harmful / answer benign, lexicon `gcg` or `xstest`; or `judges: [one judge spec]` as on \
         `evaluate`: 1 − its harm on harmful prompts, 1 unless refused on benign ones, an unparsed verdict fails the step)."
    }
    fn inputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("rollouts", ROLLOUTS, "sampled groups")]
    }
    fn outputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("scored", SCORED, "groups with rewards")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional("rewards", ParamType::List(Box::new(ParamType::Map)), "[{kind: answer, weight: 1.0}]", "reward components"),
            ParamSpec::optional("threads", ParamType::Int, "1", "scoring threads"),
        ]
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        match params.parse::<ScoreParams>() {
            Ok(p) => match build_reward_with(&p.rewards, false) {
                Ok(_) => Vec::new(),
                Err(e) => vec![ParamProblem::new("rewards", e)],
            },
            Err(e) => vec![ParamProblem::new("rewards", e.full_message())],
        }
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        let p: ScoreParams = params.parse()?;
        let reward = build_reward(&p.rewards).map_err(StageError::msg)?;
        Ok(Box::new(ScoreStage { reward, threads: p.threads.max(1) }))
    }
}

struct ScoreStage {
    reward: CompositeReward,
    threads: usize,
}

impl Stage for ScoreStage {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        while let Some(batch) = ctx.recv::<RolloutBatch>("rollouts")? {
            let scored = self
                .reward
                .score_batch(&batch.rollouts, self.threads)
                .ctx(|| format!("scoring step {}", batch.step))?;
            ctx.send(
                "scored",
                ScoredBatch { step: batch.step, group_size: batch.group_size, temperature: batch.temperature, scored },
            )?;
        }
        Ok(())
    }
}

/// `learn`: the policy-gradient learner (GRPO, RLOO, REINFORCE++, PPO).
pub struct Learn;

/// The `with:` block of a `learn` stage: the learner's configuration plus what the stage itself
/// does around it. (Unknown parameter names are rejected by the engine against `params()`.)
#[derive(Debug, Deserialize)]
struct LearnParams {
    label: Option<String>,
    save_rollouts: bool,
    checkpoint_every: u64,
    eval_every: u64,
    eval_max: usize,
    eval_max_new_tokens: usize,
    eval_answer_format: AnswerFormat,
    #[serde(flatten)]
    learner: LearnConfig,
}

impl StageKind for Learn {
    fn name(&self) -> &'static str {
        "learn"
    }
    fn doc(&self) -> &'static str {
        "Policy-gradient learner: advantages by GRPO (group-normalised), RLOO (leave-one-out), REINFORCE++ \
         (batch-normalised returns) or PPO (value head + GAE); clipped importance ratio with separate ε_low/ε_high; \
         KL to the initial policy (k1/k2/k3) in the loss or in the reward. Publishes every update to the policy store."
    }
    fn inputs(&self) -> Vec<PortSpec> {
        vec![
            PortSpec::new("scored", SCORED, "scored groups"),
            PortSpec::new("init", CHECKPOINT, "starting weights; also the KL reference π_ref"),
            PortSpec::optional("eval_task", EXAMPLES, "held-out task prompts for evaluation during training (eval_every)"),
        ]
    }
    fn outputs(&self) -> Vec<PortSpec> {
        vec![
            PortSpec::new("checkpoint", CHECKPOINT, "final weights"),
            PortSpec::optional("ema_checkpoint", CHECKPOINT, "EMA weights θ̄ (only with ema_alpha)"),
        ]
    }
    fn resources(&self) -> Vec<ResourceSpec> {
        vec![ResourceSpec::writes("policy", POLICY_STORE, "where each new policy version is published")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut v = vec![
            ParamSpec::optional("algorithm", ParamType::Enum(&["grpo", "rloo", "reinforce_pp", "ppo"]), "grpo", "advantage estimator"),
            ParamSpec::optional("beta", ParamType::Float, "0.04", "KL coefficient β (TRL beta); 0 disables the penalty"),
            ParamSpec::optional("kl_estimator", ParamType::Enum(&["k1", "k2", "k3"]), "k3", "KL estimator (verl low_var_kl = k3)"),
            ParamSpec::optional("kl_in", ParamType::Enum(&["loss", "reward"]), "loss", "where the KL penalty goes"),
            ParamSpec::optional("eps_low", ParamType::Float, "0.2", "lower clip ε (TRL epsilon)"),
            ParamSpec::optional("eps_high", ParamType::Float, "0.2", "upper clip ε (TRL epsilon_high; DAPO uses 0.28)"),
            ParamSpec::optional("aggregation", ParamType::Enum(&["sequence_mean", "token_mean", "constant"]), "sequence_mean", "loss aggregation (TRL loss_type grpo / dapo / dr_grpo)"),
            ParamSpec::optional("constant_len", ParamType::Int, "64", "Dr. GRPO normaliser (max completion length)"),
            ParamSpec::optional("scale_rewards", ParamType::Enum(&["group", "batch", "none"]), "group", "GRPO advantage scaling (TRL scale_rewards)"),
            ParamSpec::optional("epochs", ParamType::Int, "1", "passes over each batch (TRL num_iterations)"),
            ParamSpec::optional("minibatches", ParamType::Int, "1", "gradient steps per pass"),
            ParamSpec::optional("micro_batch_size", ParamType::Int, "0", "sequences per forward/backward pass, gradients accumulated (0 = whole minibatch; lower it when a step does not fit in memory)"),
            ParamSpec::optional("gamma", ParamType::Float, "1.0", "discount γ (PPO, REINFORCE++)"),
            ParamSpec::optional("lam", ParamType::Float, "0.95", "GAE λ (PPO)"),
            ParamSpec::optional("vf_coef", ParamType::Float, "0.1", "value-loss coefficient (PPO)"),
            ParamSpec::optional("value_clip", ParamType::Float, "0.2", "value clip range (PPO; 0 disables)"),
            ParamSpec::optional("save_rollouts", ParamType::Bool, "true", "append every scored rollout to rollouts.jsonl"),
            ParamSpec::optional("checkpoint_every", ParamType::Int, "10", "write a resumable learner state every this many updates (0 = never)"),
            ParamSpec::optional("eval_every", ParamType::Int, "0", "evaluate greedy accuracy on `eval_task` (live policy and EMA copy) every this many updates (0 = never)"),
            ParamSpec::optional("eval_max", ParamType::Int, "64", "prompts used by each evaluation during training"),
            ParamSpec::optional("eval_max_new_tokens", ParamType::Int, "32", "token budget of evaluation completions"),
            ParamSpec::optional(
                "eval_answer_format",
                ParamType::Enum(&["answer_line", "gsm8k_strict", "gsm8k_flexible", "boxed", "auto"]),
                "answer_line",
                "answer extraction of evaluations during training",
            ),
        ];
        v.extend(optimiser_params("0.0002"));
        v
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        match parse_params::<LearnParams>(params, &self.params()) {
            Ok(p) => {
                let p = &p.learner;
                let mut out = check_ema(p.ema_alpha);
                out.extend(check_lora(p.lora.as_ref()));
                if p.beta < 0.0 {
                    out.push(ParamProblem::new("beta", "must be >= 0"));
                }
                if !(0.0..1.0).contains(&p.eps_low) {
                    out.push(ParamProblem::new("eps_low", "must be in [0, 1)"));
                }
                if p.epochs == 0 || p.minibatches == 0 {
                    out.push(ParamProblem::new(if p.epochs == 0 { "epochs" } else { "minibatches" }, "must be at least 1"));
                }
                out
            }
            Err(problems) => problems,
        }
    }
    fn dry_run(&self, params: &Params) -> Result<DryRun, ParamProblem> {
        let p = parse_params::<LearnParams>(params, &self.params()).map_err(first_problem)?;
        // One optimiser step per RL step, so two prompt batches give exactly two updates.
        Ok(DryRun::unchanged()
            .set("epochs", 1)
            .set("minibatches", 1)
            .set("warmup_steps", 0)
            .set("eval_max", p.eval_max.min(4))
            .set("eval_max_new_tokens", p.eval_max_new_tokens.min(16)))
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(LearnStage(params.parse()?)))
    }
}

struct LearnStage(LearnParams);

impl Stage for LearnStage {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        let p = self.0;
        let store = ctx.policy("policy")?;
        let init = recv_one::<CheckpointRef>(ctx, "init")?;
        let policy = Policy::load(&init.dir)?;
        let seeds: SeedStream = ctx.seeds();
        let mut learner = Learner::new(policy, p.learner.clone(), seeds)?;
        let state_root = ctx.stage_dir()?.join("state");
        // The last max_staleness+1 published versions, so a checkpoint can restore exactly what
        // a stale sampler will ask for.
        let keep = store.max_staleness() as usize + 1;
        let mut published: std::collections::VecDeque<(u64, Arc<PolicyVersion>)> = Default::default();
        let resumed = if ctx.is_resuming() { latest_state(&state_root)? } else { None };
        match &resumed {
            Some(step_dir) => {
                learner.load_state(step_dir)?;
                let k = learner.updates();
                ctx.log(&format!("resumed from {} after {k} updates", step_dir.display()));
                for (v, model_dir) in saved_versions(step_dir)? {
                    let mut version = Policy::load(&model_dir)?.version(v - 1)?;
                    version.resumed_at = Some(k);
                    let version = Arc::new(version);
                    store.publish_as(v, version.clone())?;
                    published.push_back((v, version));
                }
                if published.back().map(|(v, _)| *v) != Some(k + 1) {
                    let mut version = learner.policy.version(k)?;
                    version.resumed_at = Some(k);
                    let version = Arc::new(version);
                    store.publish_as(k + 1, version.clone())?;
                    published.push_back((k + 1, version));
                }
            }
            None => {
                let version = Arc::new(learner.policy.version(0)?);
                let v = store.publish(version.clone());
                published.push_back((v, version));
            }
        }
        let eval_task = recv_examples(ctx, "eval_task")?;
        let eval_config = EvalConfig {
            max_new_tokens: p.eval_max_new_tokens,
            max_task: p.eval_max,
            max_harmful: 0,
            max_benign: 0,
            max_per_source: 0,
            answer_format: p.eval_answer_format,
            lexicon: "both".into(),
            drift_prompts: 0,
            drift_samples: 0,
            task_samples: 0,
            judges: Vec::new(),
        };
        // Greedy held-out accuracy of the live weights and of the EMA copy, into metrics.jsonl.
        let eval_now = |learner: &Learner, step: u64| -> Result<(), StageError> {
            let Some(task) = &eval_task else { return Ok(()) };
            let sets = EvalSets { task: Some(task.clone()), ..EvalSets::default() };
            let seeds = ctx.seeds();
            let live = evaluate("live", PathBuf::new(), &learner.policy, None, &sets, &eval_config, seeds, None)?;
            // A capability is logged only when one was measured (there were task prompts).
            let mut values: Vec<(String, f64)> = Vec::new();
            values.extend(Option::<f64>::from(live.capability).map(|c| ("eval_accuracy".to_string(), c)));
            if let Some(ema) = &learner.ema {
                let mut ema_policy = learner.policy.clone();
                ema_policy.model = learner.policy.model.deep_copy().ctx(|| "copying weights for the EMA evaluation".to_string())?;
                ema.copy_into(&ema_policy.model.named_vars()).ctx(|| "loading EMA weights for evaluation".to_string())?;
                let r = evaluate("ema", PathBuf::new(), &ema_policy, None, &sets, &eval_config, seeds, None)?;
                values.extend(Option::<f64>::from(r.capability).map(|c| ("eval_accuracy_ema".to_string(), c)));
            }
            ctx.log_metrics(step, values)
        };
        if p.eval_every > 0 && resumed.is_none() {
            eval_now(&learner, 0)?;
        }
        let rollout_log = if p.save_rollouts {
            Some(ctx.records("rollouts.jsonl")?)
        } else {
            None
        };
        let bar = ctx.progress("learn", None);
        while let Some(batch) = ctx.recv::<ScoredBatch>("scored")? {
            let mut metrics = learner.update(&batch)?;
            let version = Arc::new(learner.policy.version(learner.updates())?);
            let v = store.publish(version.clone());
            published.push_back((v, version));
            while published.len() > keep {
                published.pop_front();
            }
            metrics.insert("policy_version".into(), v as f64);
            ctx.log_metrics(batch.step + 1, metrics)?;
            if let Some(w) = &rollout_log {
                for s in &batch.scored {
                    w.write(&RolloutLine { stage: ctx.name(), step: batch.step, scored: s })?;
                }
            }
            if p.eval_every > 0 && learner.updates() % p.eval_every == 0 {
                eval_now(&learner, learner.updates())?;
            }
            if p.checkpoint_every > 0 && learner.updates() % p.checkpoint_every == 0 {
                save_learner_state(&state_root, &learner, &published)?;
            }
            bar.inc(1);
        }
        bar.finish();
        let label = p.label.unwrap_or_else(|| ctx.name().to_string());
        let dir = ctx.stage_dir()?;
        let live = dir.join("checkpoint");
        learner.policy.save(&live)?;
        let steps = learner.updates();
        ctx.send("checkpoint", CheckpointRef { dir: live, step: steps, label: label.clone() })?;
        if let Some(ema) = learner.ema.take() {
            ema.copy_into(&learner.policy.model.named_vars()).map_err(|e| StageError::with_source("copying EMA weights", e))?;
            let ema_dir = dir.join("ema_checkpoint");
            learner.policy.save(&ema_dir)?;
            ctx.send("ema_checkpoint", CheckpointRef { dir: ema_dir, step: steps, label: format!("{label}-ema") })?;
        }
        Ok(())
    }
}

/// Writes a resumable learner state atomically: into a temporary directory renamed into place,
/// then the `LATEST` pointer is replaced, then older states are removed. A kill at any moment
/// leaves the previous state intact and pointed to.
fn save_learner_state(
    root: &Path,
    learner: &Learner,
    published: &std::collections::VecDeque<(u64, Arc<PolicyVersion>)>,
) -> Result<(), StageError> {
    let k = learner.updates();
    let name = format!("step-{k:06}");
    let tmp = root.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).ctx(|| format!("removing {}", tmp.display()))?;
    }
    learner.save_state(&tmp)?;
    for (v, version) in published {
        if *v == k + 1 {
            continue; // the current weights, saved above
        }
        let d = tmp.join("versions").join(format!("v{v:06}"));
        version.model.save(&d).ctx(|| format!("saving policy version {v}"))?;
        version.tokenizer.save(&d).ctx(|| format!("saving policy version {v}"))?;
    }
    let fin = root.join(&name);
    if fin.exists() {
        std::fs::remove_dir_all(&fin).ctx(|| format!("removing {}", fin.display()))?;
    }
    std::fs::rename(&tmp, &fin).ctx(|| format!("moving {} into place", fin.display()))?;
    keel_core::write_atomic(&root.join("LATEST"), name.as_bytes())?;
    for entry in std::fs::read_dir(root).ctx(|| format!("listing {}", root.display()))? {
        let entry = entry.ctx(|| format!("listing {}", root.display()))?;
        let n = entry.file_name().to_string_lossy().into_owned();
        if n.starts_with("step-") && n != name {
            std::fs::remove_dir_all(entry.path()).ctx(|| format!("removing old state {n}"))?;
        }
    }
    Ok(())
}

/// The state directory `LATEST` points to, if any.
fn latest_state(root: &Path) -> Result<Option<PathBuf>, StageError> {
    let pointer = root.join("LATEST");
    if !pointer.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&pointer).ctx(|| format!("reading {}", pointer.display()))?;
    let dir = root.join(name.trim());
    if !dir.is_dir() {
        return Err(StageError::msg(format!("{} points to missing state {}", pointer.display(), dir.display())));
    }
    Ok(Some(dir))
}

/// Older policy versions saved with a learner state, oldest first.
fn saved_versions(step_dir: &Path) -> Result<Vec<(u64, PathBuf)>, StageError> {
    let dir = step_dir.join("versions");
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let n = entry.file_name().to_string_lossy().into_owned();
        if let Some(v) = n.strip_prefix('v').and_then(|v| v.parse::<u64>().ok()) {
            out.push((v, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

#[derive(serde::Serialize)]
struct RolloutLine<'a> {
    stage: &'a str,
    step: u64,
    #[serde(flatten)]
    scored: &'a keel_core::Scored,
}


#[cfg(test)]
mod tests {
    //! The `judges` of the `refusal` reward: checked without building, one judge, refusal only.
    use super::*;

    fn specs(yaml: &str) -> Vec<RewardSpec> {
        serde_yaml::from_str(yaml).expect("reward specs parse")
    }

    #[test]
    fn refusal_reward_judges_are_checked_and_built() {
        assert!(build_reward_with(&specs("[{kind: refusal, judges: [{kind: lexicon, lexicon: xstest}]}]"), true).is_ok());
        // Validation builds nothing: a remote judge whose endpoint is down still validates.
        let remote = "[{kind: refusal, judges: [{kind: strongreject, model: m, endpoint: {url: 'http://127.0.0.1:1/v1'}}]}]";
        assert!(build_reward_with(&specs(remote), false).is_ok());
        for (yaml, needle) in [
            ("[{kind: refusal, judges: [{kind: lexicon}, {kind: lexicon, name: b}]}]", "lists one judge"),
            ("[{kind: answer, judges: [{kind: lexicon}]}]", "`refusal` reward only"),
            ("[{kind: refusal, judges: [{kind: strongreject}]}]", "`model`"),
            ("[{kind: refusal, judges: [{kind: harmbench, model: m, variant: gpt}]}]", "gpt"),
        ] {
            let e = match serde_yaml::from_str::<Vec<RewardSpec>>(yaml) {
                Ok(s) => build_reward_with(&s, false).err().unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(needle), "{yaml}: {e}");
        }
    }
}
