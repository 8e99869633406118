//! The `jailbreak` stage kind: harmful prompts rewritten with named attacks
//! ([`keel_data::jailbreak`]), so `evaluate` reports the attack success rate per attack.

use keel_data::jailbreak::{jailbreak_examples, Attack};
use keel_pipeline::{ParamProblem, ParamSpec, ParamType, Params, PortSpec, Stage, StageContext, StageError, StageKind};
use serde::Deserialize;

use crate::ctx::Ctx;
use crate::kinds::recv_examples;
use crate::messages::{ExampleSet, EXAMPLES};

/// `jailbreak`: every input example under every listed attack.
pub struct Jailbreak;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JailbreakParams {
    attacks: Vec<String>,
}

impl JailbreakParams {
    /// The attacks, each name checked; duplicates are an error (they would double a row).
    fn attacks(&self) -> Result<Vec<Attack>, String> {
        let mut out: Vec<Attack> = Vec::with_capacity(self.attacks.len());
        for name in &self.attacks {
            let a = Attack::from_name(name).map_err(|e| e.to_string())?;
            if out.contains(&a) {
                return Err(format!("attack `{name}` is listed twice"));
            }
            out.push(a);
        }
        if out.is_empty() {
            return Err("list at least one attack (`none` is the unattacked baseline)".into());
        }
        Ok(out)
    }
}

/// The default attack list as YAML text (issue 15's six attacks and the baseline).
const DEFAULT_ATTACKS: &str =
    "[none, prefix_injection, refusal_suppression, evil_confidant, base64, style_injection_short, distractors]";

impl StageKind for Jailbreak {
    fn name(&self) -> &'static str {
        "jailbreak"
    }
    fn doc(&self) -> &'static str {
        "Rewrites every input prompt with each listed attack from StrongREJECT's jailbreak set (its templates, \
         deterministic): none, prefix_injection, refusal_suppression, evil_confidant (role play), base64, base64_raw, \
         base64_input_only, base64_output_only, style_injection_short, style_injection_json, distractors, \
         distractors_negated, poems, wikipedia, wikipedia_with_title, gcg_transfer_harmbench, combination_2, rot_13, \
         disemvowel. Labels are kept; each item's source becomes `<source>/<attack>`, so `evaluate` reports the \
         attack success rate per attack (`harmful:<source>/<attack>` in results.json)."
    }
    fn inputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("examples", EXAMPLES, "prompts to attack, normally harmful ones (fan-in allowed)")]
    }
    fn outputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("examples", EXAMPLES, "every input example under every attack, attack by attack")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::optional(
            "attacks",
            ParamType::List(Box::new(ParamType::Str)),
            DEFAULT_ATTACKS,
            "attack names (StrongREJECT's); `none` keeps the prompt as it is, the baseline row",
        )]
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        match params.parse::<JailbreakParams>().map_err(|e| e.to_string()).and_then(|p| p.attacks()) {
            Ok(_) => Vec::new(),
            Err(e) => vec![ParamProblem::new("attacks", e)],
        }
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, StageError> {
        let p: JailbreakParams = params.parse()?;
        let attacks = p.attacks().map_err(StageError::msg)?;
        Ok(Box::new(JailbreakStage(attacks)))
    }
}

struct JailbreakStage(Vec<Attack>);

impl Stage for JailbreakStage {
    fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
        let set = recv_examples(ctx, "examples")?.ok_or_else(|| StageError::msg("no examples to attack"))?;
        let examples: Vec<_> = set.examples.iter().map(|e| (**e).clone()).collect();
        let attacked = jailbreak_examples(&examples, &self.0);
        let mut jsonl = String::new();
        for e in &attacked {
            jsonl.push_str(&serde_json::to_string(e).ctx(|| "serialising an attacked example".to_string())?);
            jsonl.push('\n');
        }
        keel_core::write_atomic(&ctx.stage_dir()?.join("examples.jsonl"), jsonl.as_bytes())?;
        ctx.log_metrics(0, [("n_in", examples.len() as f64), ("n_attacks", self.0.len() as f64), ("n_out", attacked.len() as f64)])?;
        ctx.send("examples", ExampleSet::new(format!("{}+jailbreaks", set.name), attacked))
    }
}

#[cfg(test)]
mod tests {
    fn errors(with: &str) -> String {
        let text = format!("name: jb\nseed: 1\nstages:\n  w: {{use: synthetic_world}}\n  j: {{use: jailbreak, inputs: {{examples: w.harmful_eval}}{with}}}\n");
        match keel_pipeline::load_str("jb.yaml", &text, &[], &crate::registry()) {
            Ok(_) => String::new(),
            Err(d) => d.to_string(),
        }
    }

    #[test]
    fn attack_lists_are_checked_at_validation() {
        assert_eq!(errors(""), "");
        assert_eq!(errors(", with: {attacks: [base64_raw, rot_13]}"), "");
        let e = errors(", with: {attacks: [prefix_injection, dan]}");
        assert!(e.contains("jb.yaml:5:") && e.contains("unknown attack `dan`") && e.contains("refusal_suppression"), "{e}");
        let e = errors(", with: {attacks: [none, none]}");
        assert!(e.contains("listed twice"), "{e}");
        let e = errors(", with: {attacks: []}");
        assert!(e.contains("at least one attack"), "{e}");
    }
}
