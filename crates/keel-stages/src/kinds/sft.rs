//! `sft`: supervised fine-tuning (or from-scratch training) on example targets.

use std::sync::Arc;

use keel_core::CheckpointRef;
use keel_pipeline::{DryRun, ParamProblem, ParamSpec, ParamType, Params, PortSpec, Stage, StageContext, StageError, StageKind};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::kinds::{recv_examples, recv_one};
use crate::messages::{TokenizerFiles, CHECKPOINT, EXAMPLES, TOKENIZER};
use crate::policy::Policy;
use crate::train::{run_sft, SftConfig};

/// Written into a training stage's directory once its final checkpoints are saved, so that a
/// resumed run reuses them instead of training again.
pub(crate) const COMPLETE_MARKER: &str = "COMPLETE";

/// `sft`: masked cross-entropy on the targets of its examples, starting from a checkpoint
/// (`init`) or from a fresh preset-sized model over a trained tokenizer (`tokenizer`).
pub struct Sft;

/// The `with:` block of an `sft` stage: the model preset and label, plus the trainer's own
/// configuration. (Unknown parameter names are rejected by the engine against `params()`.)
#[derive(Debug, Deserialize)]
pub(crate) struct SftParams {
    pub model: String,
    pub label: Option<String>,
    #[serde(flatten)]
    pub train: SftConfig,
}

/// Parameters shared by every training stage, with their defaults.
pub(crate) fn optimiser_params(lr: &'static str) -> Vec<ParamSpec> {
    vec![
        ParamSpec::optional("lr", ParamType::Float, lr, "peak learning rate (AdamW)"),
        ParamSpec::optional("warmup_steps", ParamType::Int, "0", "linear learning-rate warm-up steps"),
        ParamSpec::optional("weight_decay", ParamType::Float, "0.0", "decoupled weight decay (not on norms, biases, embeddings)"),
        ParamSpec::optional("grad_clip", ParamType::Float, "1.0", "global gradient-norm clip (0 disables)"),
        ParamSpec::optional("ema_alpha", ParamType::Any, "null", "EMA of weights θ̄ ← α·θ̄ + (1−α)·θ; null disables; sets `ema_checkpoint`"),
        ParamSpec::optional("lora", ParamType::Any, "null", "train LoRA adapters `{r, alpha, target_modules}` instead of every weight; null trains all"),
        ParamSpec::optional("label", ParamType::Any, "null", "name of the produced checkpoint in reports (default: the stage name)"),
    ]
}

/// Deserializes a stage's parameters, or says which parameter cannot be read and why.
///
/// Why not just `params.parse()`: a failure there reports the stage as a whole, and through
/// `#[serde(flatten)]` serde's message does not say which field failed (a typo inside `lora:`
/// read as a problem with the stage's first parameter). So on failure each parameter the user set
/// is tried alone, every other one at its default: a parameter that fails alone is named, with
/// serde's message for it. If none fails alone (only a combination does), the problem is the
/// stage's, with the full message.
pub(crate) fn parse_params<T: DeserializeOwned>(params: &Params, specs: &[ParamSpec]) -> Result<T, Vec<ParamProblem>> {
    let err = match params.parse::<T>() {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let defaults: Vec<(&str, serde_yaml::Value)> =
        specs.iter().filter_map(|s| s.default_value().map(|d| (s.name, d))).collect();
    let mut problems = Vec::new();
    for (name, default) in &defaults {
        let Some(value) = params.value(name) else { continue };
        if value == default {
            continue;
        }
        let mut alone = params.values().clone();
        for (other, d) in &defaults {
            if other != name {
                alone.insert(other.to_string(), d.clone());
            }
        }
        if let Err(e) = Params::new(params.stage(), alone).parse::<T>() {
            let why = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_else(|| e.full_message());
            problems.push(ParamProblem::new(*name, why));
        }
    }
    if problems.is_empty() {
        problems.push(ParamProblem::new("", err.full_message()));
    }
    Err(problems)
}

/// The first of [`parse_params`]'s problems, for `dry_run`, which reports one.
pub(crate) fn first_problem(problems: Vec<ParamProblem>) -> ParamProblem {
    problems.into_iter().next().unwrap_or_else(|| ParamProblem::new("", "the parameters cannot be read"))
}

/// Checks an optional LoRA spec (rank and target names).
pub(crate) fn check_lora(lora: Option<&crate::train::LoraSpec>) -> Vec<ParamProblem> {
    let Some(l) = lora else { return Vec::new() };
    let mut out = Vec::new();
    if l.r == 0 {
        out.push(ParamProblem::new("lora", "rank `r` must be at least 1").with_help("typical ranks are 8 to 64"));
    }
    if let Some(t) = &l.target_modules {
        let known = keel_model::LORA_TARGETS;
        for m in t {
            if !known.contains(&m.as_str()) {
                out.push(ParamProblem::new("lora", format!("unknown target module `{m}`")).with_help(format!("valid: {}", known.join(", "))));
            }
        }
        if t.is_empty() {
            out.push(ParamProblem::new("lora", "target_modules is empty"));
        }
    }
    out
}

/// Checks an optional EMA coefficient.
pub(crate) fn check_ema(alpha: Option<f64>) -> Vec<ParamProblem> {
    match alpha {
        Some(a) if !(0.0..1.0).contains(&a) => {
            vec![ParamProblem::new("ema_alpha", format!("{a} is outside [0, 1)")).with_help("typical values are 0.99 to 0.999")]
        }
        _ => Vec::new(),
    }
}

impl StageKind for Sft {
    fn name(&self) -> &'static str {
        "sft"
    }
    fn doc(&self) -> &'static str {
        "Supervised fine-tuning: masked cross-entropy on the `target` of each example (the prompt is rendered with \
         the chat template and not trained on). Starts from `init`, or from a new `model`-preset network over the \
         `tokenizer` input. Optional EMA of weights."
    }
    fn inputs(&self) -> Vec<PortSpec> {
        vec![
            PortSpec::new("examples", EXAMPLES, "training examples with targets (fan-in allowed)"),
            PortSpec::optional("init", CHECKPOINT, "checkpoint to start from"),
            PortSpec::optional("tokenizer", TOKENIZER, "tokenizer for a model trained from scratch (when no init)"),
        ]
    }
    fn outputs(&self) -> Vec<PortSpec> {
        vec![
            PortSpec::new("checkpoint", CHECKPOINT, "the trained weights"),
            PortSpec::optional("ema_checkpoint", CHECKPOINT, "the EMA weights θ̄ (only with ema_alpha)"),
        ]
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut v = vec![
            ParamSpec::optional("model", ParamType::Str, "tiny-1m", "model preset when training from scratch (see `keel model presets`)"),
            ParamSpec::optional("steps", ParamType::Int, "200", "optimiser steps"),
            ParamSpec::optional("batch_size", ParamType::Int, "16", "sequences per step"),
            ParamSpec::optional("min_lr_ratio", ParamType::Float, "0.1", "final learning rate of the cosine schedule, as a fraction of lr"),
            ParamSpec::optional("max_len", ParamType::Int, "256", "longest sequence (prompt + target) in tokens"),
            ParamSpec::optional("micro_batch_size", ParamType::Int, "0", "sequences per forward/backward pass, gradients accumulated (0 = whole batch; lower it when a step does not fit in memory)"),
            ParamSpec::optional("log_every", ParamType::Int, "10", "log metrics every this many steps"),
        ];
        v.extend(optimiser_params("0.001"));
        v
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        match parse_params::<SftParams>(params, &self.params()) {
            Ok(p) => {
                let mut out = check_ema(p.train.ema_alpha);
                out.extend(check_lora(p.train.lora.as_ref()));
                if p.train.batch_size == 0 {
                    out.push(ParamProblem::new("batch_size", "must be at least 1"));
                }
                if keel_model::ModelConfig::preset(&p.model, 512).is_err() {
                    let names: Vec<&str> = keel_model::PRESETS.to_vec();
                    out.push(ParamProblem::new("model", format!("unknown preset `{}`", p.model)).with_help(format!("presets: {}", names.join(", "))));
                }
                out
            }
            Err(problems) => problems,
        }
    }
    fn dry_run(&self, params: &Params) -> Result<DryRun, ParamProblem> {
        let p = parse_params::<SftParams>(params, &self.params()).map_err(first_problem)?;
        Ok(DryRun::unchanged()
            .set("steps", p.train.steps.min(2))
            .set("batch_size", p.train.batch_size.min(2))
            .set("warmup_steps", 0)
            .set("log_every", 1))
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(SftStage(params.parse()?)))
    }
}

struct SftStage(SftParams);

impl Stage for SftStage {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        let p = self.0;
        let seeds = ctx.seeds();
        let label = p.label.clone().unwrap_or_else(|| ctx.name().to_string());
        let dir = ctx.stage_dir()?;
        let examples = recv_examples(ctx, "examples")?.ok_or_else(|| StageError::msg("no examples"))?;
        if ctx.is_resuming() && dir.join(COMPLETE_MARKER).exists() {
            // Finished before the interruption: its checkpoints are final, send them again.
            ctx.log("already complete; reusing its checkpoints");
            ctx.send("checkpoint", CheckpointRef { dir: dir.join("checkpoint"), step: p.train.steps, label: label.clone() })?;
            if dir.join("ema_checkpoint").exists() {
                ctx.send("ema_checkpoint", CheckpointRef { dir: dir.join("ema_checkpoint"), step: p.train.steps, label: format!("{label}-ema") })?;
            }
            return Ok(());
        }
        let mut policy = if ctx.is_wired("init") {
            let init = recv_one::<CheckpointRef>(ctx, "init")?;
            Policy::load(&init.dir)?
        } else if ctx.is_wired("tokenizer") {
            let tok: Arc<TokenizerFiles> = recv_one(ctx, "tokenizer")?;
            Policy::from_scratch(&p.model, &tok.dir, seeds.seed("init"))?
        } else {
            return Err(StageError::msg("wire either `init` (a checkpoint) or `tokenizer` (to train from scratch)"));
        };
        ctx.log(&format!("training {} parameters on {} examples", policy.model.num_parameters(), examples.examples.len()));
        let config = &p.train;
        let bar = ctx.progress("sft", Some(config.steps));
        let outcome = run_sft(
            &mut policy,
            &examples.examples,
            config,
            seeds,
            |step, m| ctx.log_metrics(step, m),
            |_| {
                bar.inc(1);
                ctx.check_cancelled()
            },
        )?;
        bar.finish();
        let live = dir.join("checkpoint");
        policy.save(&live)?;
        let ema_ref = match outcome.ema {
            Some(ema) => {
                ema.copy_into(&policy.model.named_vars()).map_err(|e| StageError::with_source("copying EMA weights", e))?;
                let ema_dir = dir.join("ema_checkpoint");
                policy.save(&ema_dir)?;
                Some(CheckpointRef { dir: ema_dir, step: p.train.steps, label: format!("{label}-ema") })
            }
            None => None,
        };
        keel_core::write_atomic(&dir.join(COMPLETE_MARKER), b"complete\n")?;
        ctx.send("checkpoint", CheckpointRef { dir: live, step: p.train.steps, label: label.clone() })?;
        if let Some(r) = ema_ref {
            ctx.send("ema_checkpoint", r)?;
        }
        Ok(())
    }
}
