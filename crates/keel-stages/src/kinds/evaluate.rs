//! `evaluate` and `report`: the end of every experiment graph.

use std::sync::Arc;

use keel_core::CheckpointRef;
use keel_pipeline::{
    DryRun, ParamProblem, ParamSpec, ParamType, Params, PortSpec, Stage, StageContext, StageError, StageKind,
};
use serde::Deserialize;

use crate::ctx::Ctx;
use crate::evaluate::{evaluate, refusal_judge, EvalConfig, EvalSets};
use crate::kinds::{recv_examples_sorted, recv_one};
use crate::messages::{EvalResult, CHECKPOINT, EVAL_RESULT, EXAMPLES};
use crate::policy::Policy;

/// `evaluate`: measures every incoming checkpoint on the held-out sets.
pub struct Evaluate;

impl StageKind for Evaluate {
    fn name(&self) -> &'static str {
        "evaluate"
    }
    fn doc(&self) -> &'static str {
        "Evaluates each incoming checkpoint: task accuracy (greedy, verified answers), refusal rate on harmful \
         prompts (safety; attack success = 1 − refusal), refusal rate on benign prompts (over-refusal), and — \
         against `reference` — sampled KL(π‖π_ref), χ², the safety drift ΔS and its bounds. When `harmful` or \
         `benign` (or `task`) merges several datasets (fan-in), refusal rates (accuracies) are also reported per \
         source benchmark (`benchmarks` in the result JSON, a table in the report)."
    }
    fn inputs(&self) -> Vec<PortSpec> {
        vec![
            PortSpec::new("checkpoints", CHECKPOINT, "checkpoints to evaluate (fan-in)"),
            PortSpec::optional("reference", CHECKPOINT, "π_ref for KL and drift"),
            PortSpec::optional("task", EXAMPLES, "held-out task prompts with answers"),
            PortSpec::optional("harmful", EXAMPLES, "held-out harmful prompts"),
            PortSpec::optional("benign", EXAMPLES, "benign prompts for over-refusal"),
        ]
    }
    fn outputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("results", EVAL_RESULT, "one result per checkpoint")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional("max_new_tokens", ParamType::Int, "48", "completion token budget"),
            ParamSpec::optional("max_task", ParamType::Int, "0", "task prompts (0 = all)"),
            ParamSpec::optional("max_harmful", ParamType::Int, "0", "harmful prompts (0 = all)"),
            ParamSpec::optional("max_benign", ParamType::Int, "0", "benign prompts (0 = all)"),
            ParamSpec::optional(
                "answer_format",
                ParamType::Enum(&["answer_line", "gsm8k_strict", "gsm8k_flexible", "boxed", "auto"]),
                "answer_line",
                "answer extraction for the task set",
            ),
            ParamSpec::optional("lexicon", ParamType::Enum(&["gcg", "xstest", "both"]), "both", "refusal lexicon"),
            ParamSpec::optional("drift_prompts", ParamType::Int, "32", "harmful prompts for sampled drift (0 disables)"),
            ParamSpec::optional("drift_samples", ParamType::Int, "4", "samples per prompt for drift"),
            ParamSpec::optional("task_samples", ParamType::Int, "0", "completions sampled at temperature 1 per task prompt for pass@1 / pass@k (0 = greedy only)"),
            ParamSpec::optional("max_per_source", ParamType::Int, "0", "prompts kept from each source dataset of every set (0 = all), before max_task / max_harmful / max_benign"),
        ]
    }
    fn dry_run(&self, params: &Params) -> Result<DryRun, ParamProblem> {
        let c = params.parse::<EvalConfig>().map_err(|e| ParamProblem::new("max_new_tokens", e.to_string()))?;
        Ok(DryRun::unchanged()
            .set("max_task", cap(c.max_task, 6))
            .set("max_per_source", cap(c.max_per_source, 3))
            .set("max_new_tokens", cap(c.max_new_tokens, 16))
            .set("drift_prompts", c.drift_prompts.min(2))
            .set("drift_samples", c.drift_samples.min(2))
            .set("task_samples", c.task_samples.min(2)))
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        match params.parse::<EvalConfig>() {
            Ok(c) => match refusal_judge(&c.lexicon) {
                Ok(_) => Vec::new(),
                Err(e) => vec![ParamProblem::new("lexicon", e.to_string())],
            },
            Err(e) => vec![ParamProblem::new("max_new_tokens", e.to_string())],
        }
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(EvalStage(params.parse()?)))
    }
}

struct EvalStage(EvalConfig);

impl Stage for EvalStage {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        let reference = if ctx.is_wired("reference") {
            let r = recv_one::<CheckpointRef>(ctx, "reference")?;
            Some(Policy::load(&r.dir)?)
        } else {
            None
        };
        let sets = EvalSets {
            task: recv_examples_sorted(ctx, "task")?,
            harmful: recv_examples_sorted(ctx, "harmful")?,
            benign: recv_examples_sorted(ctx, "benign")?,
        };
        let dir = ctx.stage_dir()?;
        let log = keel_core::JsonlWriter::append(dir.join("completions.jsonl"))?;
        let mut index = 0u64;
        while let Some(ck) = ctx.recv::<CheckpointRef>("checkpoints")? {
            ctx.log(&format!("evaluating {} ({})", ck.label, ck.dir.display()));
            let policy = Policy::load(&ck.dir)?;
            // Recorded relative to the run directory, so run directories can be moved and compared.
            let shown = ck.dir.strip_prefix(ctx.run_dir().root()).map(|p| p.to_path_buf()).unwrap_or_else(|_| ck.dir.clone());
            let result = evaluate(&ck.label, shown, &policy, reference.as_ref(), &sets, &self.0, ctx.seeds(), Some(&log))?;
            let json = serde_json::to_vec_pretty(&result).ctx(|| "serialising an evaluation result".to_string())?;
            keel_core::write_atomic(&dir.join(format!("{}.json", ck.label)), &json)?;
            let mut values: Vec<(String, f64)> = vec![
                (format!("{}/capability", ck.label), result.capability),
                (format!("{}/safety", ck.label), result.safety),
                (format!("{}/over_refusal", ck.label), result.over_refusal),
                (format!("{}/kl", ck.label), result.kl),
                (format!("{}/drift", ck.label), result.drift),
            ];
            values.retain(|(_, v)| v.is_finite());
            ctx.log_metrics(index, values)?;
            index += 1;
            ctx.send("results", result)?;
        }
        Ok(())
    }
}

/// `limit` where `value` is 0 ("all") or larger: a dry-run cap.
pub(crate) fn cap(value: usize, limit: usize) -> usize {
    if value == 0 {
        limit
    } else {
        value.min(limit)
    }
}

/// `report`: collects evaluation results into `report.md`, `results.json` and SVG plots.
pub struct Report;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportParams {
    title: String,
    order: Vec<String>,
}

impl StageKind for Report {
    fn name(&self) -> &'static str {
        "report"
    }
    fn doc(&self) -> &'static str {
        "Writes the run's `report.md` (comparison table, drift-bound check, learning curves) with SVG plots \
         (safety vs capability, drift vs KL with the sqrt(KL/2) bound), and `results.json`."
    }
    fn inputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("results", EVAL_RESULT, "evaluation results (fan-in)")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional("title", ParamType::Str, "Keel report", "report heading"),
            ParamSpec::optional("order", ParamType::List(Box::new(ParamType::Str)), "[]", "row order by label (others follow alphabetically)"),
        ]
    }
    fn dry_run(&self, params: &Params) -> Result<DryRun, ParamProblem> {
        let p = params.parse::<ReportParams>().map_err(|e| ParamProblem::new("title", e.to_string()))?;
        Ok(DryRun::unchanged().set("title", format!("[DRY RUN: tiny stand-in models, not results] {}", p.title)))
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(ReportStage(params.parse()?)))
    }
}

struct ReportStage(ReportParams);

impl Stage for ReportStage {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        let mut results: Vec<Arc<EvalResult>> = Vec::new();
        while let Some(r) = ctx.recv::<EvalResult>("results")? {
            results.push(r);
        }
        let order = &self.0.order;
        let rank = |l: &str| order.iter().position(|o| o == l).unwrap_or(order.len());
        results.sort_by(|a, b| rank(&a.label).cmp(&rank(&b.label)).then_with(|| a.label.cmp(&b.label)));
        let owned: Vec<EvalResult> = results.iter().map(|r| (**r).clone()).collect();
        crate::report::write_run_report(ctx.run_dir().root(), &self.0.title, &owned)
    }
}
