//! The run report: `results.json`, `report.md` with the comparison table and the drift-bound
//! check, plus SVG plots drawn by keel-eval.

use std::fmt::Write as _;
use std::path::Path;

use keel_core::MetricRecord;
use keel_eval::report::{write_report, BranchResult, ReportInput, Table};
use keel_pipeline::StageError;

use crate::ctx::Ctx;
use crate::messages::EvalResult;

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", 100.0 * x)
    } else {
        "–".to_string()
    }
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "–".to_string()
    }
}

/// Renders the comparison table of a set of evaluation results as markdown.
pub fn results_table(results: &[EvalResult]) -> String {
    let mut s = String::new();
    s.push_str("| branch | capability (task acc.) | safety (harmful refused) | over-refusal (benign refused) | KL(π‖π_ref) | ΔS | sqrt(KL/2) | sqrt(Var·χ²) | |ΔS| ≤ sqrt(KL/2) |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:+.4} | {} | {} | {} |",
            r.label,
            pct(r.capability),
            pct(r.safety),
            pct(r.over_refusal),
            num(r.kl),
            r.drift,
            num(r.drift_bound_kl),
            num(r.drift_bound_chi2),
            if r.bound_holds { "yes" } else { "**no**" }
        );
    }
    s
}

/// Renders every branch's per-benchmark metric (refusal rate for `harmful:<source>` /
/// `benign:<source>`, accuracy for `task:<source>`) as markdown, or `None` when no result merged
/// several benchmarks.
pub fn benchmarks_table(results: &[EvalResult]) -> Option<String> {
    let mut columns: Vec<&String> = results.iter().flat_map(|r| r.benchmarks.keys()).collect();
    columns.sort();
    columns.dedup();
    if columns.is_empty() {
        return None;
    }
    let mut s = String::from("| branch |");
    for c in &columns {
        let _ = write!(s, " {c} |");
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(columns.len()));
    s.push('\n');
    for r in results {
        let _ = write!(s, "| {} |", r.label);
        for c in &columns {
            let cell = match r.benchmarks.get(*c).and_then(|m| m.values.get("refusal_rate").or(m.values.get("accuracy")).map(|v| (m.n, *v))) {
                Some((n, v)) => format!("{} (n={n})", pct(v)),
                None => "–".to_string(),
            };
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }
    Some(s)
}

/// Writes `results.json`, `report.md` and SVG plots (learning curves from `metrics.jsonl`, safety
/// vs capability with its Pareto front, drift vs KL with the sqrt(KL/2) bound) into a run directory.
pub fn write_run_report(root: &Path, title: &str, results: &[EvalResult]) -> Result<(), StageError> {
    let json = serde_json::to_vec_pretty(results).ctx(|| "serialising results".to_string())?;
    keel_core::write_atomic(&root.join("results.json"), &json)?;
    let metrics = read_metrics(&root.join("metrics.jsonl"))?;
    let present = |m: &str| metrics.iter().any(|r| r.values.contains_key(m));
    let curves: Vec<String> = ["loss", "reward_mean", "kl_ref"].iter().filter(|m| present(m)).map(|m| m.to_string()).collect();
    let branches: Vec<BranchResult> = results
        .iter()
        .filter(|r| r.capability.is_finite() && r.safety.is_finite())
        .map(|r| BranchResult {
            label: r.label.clone(),
            capability: r.capability,
            safety: r.safety,
            over_refusal: r.over_refusal.is_finite().then_some(r.over_refusal),
            kl: Some(r.kl),
            drift: Some(r.drift),
        })
        .collect();
    let mut rows = Vec::new();
    for r in results {
        for (set, m) in &r.sets {
            for (k, v) in &m.values {
                rows.push(vec![r.label.clone(), set.clone(), m.n.to_string(), k.clone(), num(*v)]);
            }
        }
    }
    let details = Table {
        title: "Every metric by branch and set".into(),
        headers: ["branch", "set", "n", "metric", "value"].iter().map(|h| h.to_string()).collect(),
        rows,
    };
    let explanation = "Capability is held-out task accuracy (greedy decoding, verified answers). Safety is the refusal rate on \
         held-out harmful prompts (attack success rate = 1 − safety). Over-refusal is the refusal rate on benign \
         prompts. KL (exact next-token KL summed along sampled completions), ΔS = E_π[s] − E_ref[s] (s = 1 when the completion refuses a harmful prompt) and the bounds \
         are estimated from sampled completions (temperature 1) against the reference policy."
        .to_string();
    let input = ReportInput {
        title: title.to_string(),
        metrics: if curves.is_empty() { Vec::new() } else { metrics },
        curves,
        branches,
        tables: vec![details],
        notes: {
            let mut notes = vec![explanation, format!("## Comparison\n\n{}", results_table(results))];
            if let Some(t) = benchmarks_table(results) {
                notes.push(format!(
                    "## By benchmark\n\nTask columns: accuracy. Harmful columns: refusal rate, higher is safer (attack \
                     success = 1 − refusal). Benign columns: refusal rate = over-refusal, lower is better.\n\n{t}"
                ));
            }
            notes
        },
    };
    write_report(root, &input).ctx(|| format!("writing the report into {}", root.display()))?;
    Ok(())
}

fn read_metrics(path: &Path) -> Result<Vec<MetricRecord>, StageError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).ctx(|| format!("reading {}", path.display()))?;
    // A run killed mid-write can leave a partial last line: complete lines are what count.
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// Writes the sweep-level `report.md` (and plots) from the `results.json` of each cell: every
/// branch of every parameter point, averaged over the seeds that finished, on one safety vs
/// capability plane and one drift vs KL plot. `cells` pairs each cell's parameter point (its
/// group id) with its run directory; cells without results (no `report` stage, or failed) are
/// skipped. Returns the number of points plotted.
pub fn write_sweep_report(dir: &Path, title: &str, cells: &[(String, std::path::PathBuf)]) -> Result<usize, StageError> {
    use std::collections::BTreeMap;
    let mut acc: BTreeMap<(String, String), Vec<EvalResult>> = BTreeMap::new();
    for (group, run) in cells {
        let path = run.join("results.json");
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let results: Vec<EvalResult> = serde_json::from_str(&text).ctx(|| format!("parsing {}", path.display()))?;
        for r in results {
            acc.entry((group.clone(), r.label.clone())).or_default().push(r);
        }
    }
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let mut branches = Vec::new();
    let mut rows = Vec::new();
    for ((group, label), rs) in &acc {
        let pick = |f: &dyn Fn(&EvalResult) -> f64| -> f64 { mean(&rs.iter().map(f).filter(|x| x.is_finite()).collect::<Vec<_>>()) };
        let (cap, safe, over, kl, drift) = (pick(&|r| r.capability), pick(&|r| r.safety), pick(&|r| r.over_refusal), pick(&|r| r.kl), pick(&|r| r.drift));
        rows.push(vec![group.clone(), label.clone(), rs.len().to_string(), pct(cap), pct(safe), pct(over), num(kl), format!("{drift:+.4}")]);
        if cap.is_finite() && safe.is_finite() {
            branches.push(BranchResult {
                label: format!("{group} {label}"),
                capability: cap,
                safety: safe,
                over_refusal: over.is_finite().then_some(over),
                kl: Some(kl),
                drift: Some(drift),
            });
        }
    }
    if rows.is_empty() {
        return Ok(0);
    }
    let table = Table {
        title: "Branches by parameter point (means over seeds; CIs per metric in summary.md)".into(),
        headers: ["point", "branch", "seeds", "capability", "safety", "over-refusal", "KL", "ΔS"].iter().map(|h| h.to_string()).collect(),
        rows,
    };
    let input = ReportInput {
        title: title.to_string(),
        metrics: Vec::new(),
        curves: Vec::new(),
        branches: branches.clone(),
        tables: vec![table],
        notes: vec!["Every branch of every sweep point, averaged over seeds; summary.md and summary.csv hold every \
                     metric with its standard deviation and 95% bootstrap confidence interval."
            .to_string()],
    };
    write_report(dir, &input).ctx(|| format!("writing the sweep report into {}", dir.display()))?;
    Ok(branches.len())
}
