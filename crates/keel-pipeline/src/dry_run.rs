//! Dry runs: the shrunk version of a validated pipeline, as each stage kind describes it.

use crate::diag::{Diagnostic, Diagnostics};
use crate::load::validate;
use crate::registry::Registry;
use crate::validated::{DryRunInfo, Pipeline};
use crate::yaml::yaml_to_json;

/// The dry-run version of a validated pipeline: every stage's kind says how it shrinks
/// ([`StageKind::dry_run`](crate::StageKind::dry_run): fewer steps, fewer items, a stand-in kind),
/// the changes are applied to the document like `--set` overrides (but recorded separately, in
/// [`Pipeline::dry_run`]), the `sweep:` block is dropped (a dry run runs the base configuration),
/// and the result is validated like any pipeline. Problems are reported at the stage's parameter.
pub fn dry_run(p: &Pipeline, registry: &Registry) -> Result<Pipeline, Diagnostics> {
    let mut doc = p.doc.clone();
    doc.remove_sweep();
    let mut diags = Vec::new();
    let mut info = DryRunInfo::default();
    for s in &p.stages {
        let plan = match s.kind.dry_run(&s.params) {
            Ok(plan) => plan,
            Err(prob) => {
                let at = s.params.span(&prob.param).cloned().unwrap_or_else(|| s.span.clone());
                let label = if prob.param.is_empty() { String::new() } else { format!("parameter `{}` of ", prob.param) };
                diags.push(
                    Diagnostic::new(at, format!("{label}stage `{}` (kind `{}`) cannot be dry-run: {}", s.name, s.kind.name(), prob.message))
                        .with_help_opt(prob.help),
                );
                continue;
            }
        };
        let mut changes: Vec<(String, serde_json::Value)> = Vec::new();
        if let Some(kind) = plan.kind {
            changes.push((format!("stages.{}.use", s.name), serde_json::Value::from(kind)));
            let with: serde_json::Map<String, serde_json::Value> =
                plan.set.iter().map(|(k, v)| (k.clone(), yaml_to_json(v))).collect();
            changes.push((format!("stages.{}.with", s.name), serde_json::Value::Object(with)));
        } else {
            for (k, v) in &plan.set {
                if s.params.value(k) != Some(v) {
                    changes.push((format!("stages.{}.with.{k}", s.name), yaml_to_json(v)));
                }
            }
        }
        for (path, value) in changes {
            let spec = format!("{path}={}", serde_json::to_string(&value).unwrap_or_default());
            match doc.set_from_text("--dry-run", &spec) {
                Ok(()) => info.changes.push(spec),
                Err(d) => diags.push(d),
            }
        }
        info.notes.extend(plan.notes.into_iter().map(|n| format!("stage `{}`: {n}", s.name)));
    }
    if !diags.is_empty() {
        return Err(Diagnostics(diags).sorted());
    }
    let mut out = validate(&doc, registry)?;
    out.dry_run = Some(info);
    Ok(out)
}
