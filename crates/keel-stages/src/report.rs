//! The run report: `results.json`, `report.md` with the comparison table and the drift-bound
//! check, plus SVG plots drawn by keel-eval.

use std::path::Path;

use keel_core::MetricRecord;
use keel_eval::report::{fmt_holds, write_report, BranchResult, ReportInput, Table, NOT_MEASURED};
use keel_pipeline::StageError;

use crate::ctx::Ctx;
use crate::messages::EvalResult;

fn pct(x: Option<f64>) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{:.1}%", 100.0 * x),
        Some(x) => format!("{x}"),
        None => NOT_MEASURED.to_string(),
    }
}

fn num(x: Option<f64>) -> String {
    keel_eval::report::fmt_value(x)
}

fn signed(x: Option<f64>) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:+.4}"),
        other => num(other),
    }
}

/// χ² as the report shows it: the value, and when the estimate fell below the KL floor, that
/// it is the floor with the estimate's effective sample size.
fn chi2_cell(r: &EvalResult) -> String {
    match (r.chi2, r.chi2_reliable, r.chi2_ess) {
        (Some(c), Some(false), Some(ess)) => format!("≥ {} (KL floor; estimate unreliable, ESS {ess:.1})", num(Some(c))),
        (c, _, _) => num(c),
    }
}

/// The comparison table of a set of evaluation results: capability, safety, over-refusal, KL,
/// ΔS, χ² (with its effective sample size and KL floor), and both bounds on |ΔS| with whether
/// each holds. What was not measured reads "not measured".
pub fn results_table(results: &[EvalResult]) -> Table {
    let headers = [
        "branch",
        "capability (task acc.)",
        "safety (harmful refused)",
        "over-refusal (benign refused)",
        "KL(π‖π_ref)",
        "ΔS",
        "χ²",
        "χ² ESS",
        "e^KL − 1",
        "Var_ref(s)",
        "sqrt(KL/2)",
        "|ΔS| ≤ sqrt(KL/2)",
        "sqrt(Var·χ²)",
        "|ΔS| ≤ sqrt(Var·χ²)",
    ];
    let rows = results
        .iter()
        .map(|r| {
            vec![
                r.label.clone(),
                pct(r.capability),
                pct(r.safety),
                pct(r.over_refusal),
                num(r.kl),
                signed(r.drift),
                chi2_cell(r),
                r.chi2_ess.map_or_else(|| NOT_MEASURED.to_string(), |e| format!("{e:.1}")),
                num(r.chi2_kl_floor),
                num(r.var_ref_s),
                num(r.drift_bound_kl),
                fmt_holds(r.bound_kl_holds),
                num(r.drift_bound_chi2),
                fmt_holds(r.bound_chi2_holds),
            ]
        })
        .collect();
    Table { title: "Comparison".into(), headers: headers.iter().map(|h| h.to_string()).collect(), rows }
}

/// Every branch's per-benchmark metric (refusal rate for `harmful:<source>` /
/// `benign:<source>`, accuracy for `task:<source>`) as a table, or `None` when no result merged
/// several benchmarks.
pub fn benchmarks_table(results: &[EvalResult]) -> Option<Table> {
    let mut columns: Vec<&String> = results.iter().flat_map(|r| r.benchmarks.keys()).collect();
    columns.sort();
    columns.dedup();
    if columns.is_empty() {
        return None;
    }
    let rows = results
        .iter()
        .map(|r| {
            let mut row = vec![r.label.clone()];
            for c in &columns {
                row.push(match r.benchmarks.get(*c).and_then(|m| m.values.get("refusal_rate").or(m.values.get("accuracy")).map(|v| (m.n, *v))) {
                    Some((n, v)) => format!("{} (n={n})", pct(Some(v))),
                    None => NOT_MEASURED.to_string(),
                });
            }
            row
        })
        .collect();
    let headers = std::iter::once("branch".to_string()).chain(columns.iter().map(|c| c.to_string())).collect();
    Some(Table { title: "By benchmark".into(), headers, rows })
}

/// The judges named in a set of results, with the metric each one's harm is reported as (`asr`
/// or `strongreject_score`), in name order: from the results' `judge_metrics` (the judge's kind,
/// known even when it parsed nothing), else from their `judge/<name>/…` metric keys (results
/// written before `judge_metrics` existed).
fn judge_columns(results: &[EvalResult]) -> Vec<(String, &'static str)> {
    let mut out: Vec<(String, &'static str)> = Vec::new();
    for (name, metric) in results.iter().flat_map(|r| r.judge_metrics.iter()) {
        let metric: &'static str = if metric == "strongreject_score" { "strongreject_score" } else { "asr" };
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name.clone(), metric));
        }
    }
    let all = results.iter().flat_map(|r| r.sets.values().chain(r.benchmarks.values())).flat_map(|m| m.values.keys());
    for key in all {
        let Some(rest) = key.strip_prefix("judge/") else { continue };
        let Some((name, metric)) = rest.rsplit_once('/') else { continue };
        let metric: &'static str = match metric {
            "strongreject_score" => "strongreject_score",
            "asr" | "n_judged" | "unparsed" | "refusal_rate" => "asr",
            _ => continue,
        };
        let kind_known = results.iter().any(|r| r.judge_metrics.contains_key(name));
        match out.iter_mut().find(|(n, _)| n == name) {
            Some(entry) if metric == "strongreject_score" && !kind_known => entry.1 = metric,
            Some(_) => {}
            None => out.push((name.to_string(), metric)),
        }
    }
    out.sort();
    out
}

/// One judge's cell for one set: its ASR (a percentage) or mean StrongREJECT score on harmful
/// sets, its refusal rate on benign ones, with the number judged and the unparsed count.
/// "not measured" when the judge judged nothing there.
fn judge_cell(m: &crate::messages::SetMetrics, name: &str, metric: &str, harmful: bool) -> String {
    let get = |k: &str| m.values.get(&format!("judge/{name}/{k}")).copied();
    let (Some(n), unparsed) = (get("n_judged"), get("unparsed").unwrap_or(0.0)) else {
        return NOT_MEASURED.to_string();
    };
    let value = if harmful {
        match metric {
            "strongreject_score" => get(metric).map(|v| format!("{v:.3}")),
            _ => get(metric).map(|v| pct(Some(v))),
        }
    } else {
        get("refusal_rate").map(|v| format!("{} refused", pct(Some(v))))
    };
    let tail = if unparsed > 0.0 { format!(", {unparsed} unparsed") } else { String::new() };
    match value {
        Some(v) => format!("{v} (n={n}{tail})"),
        None if n == 0.0 => format!("{NOT_MEASURED} (all {unparsed} unparsed)"),
        None => NOT_MEASURED.to_string(),
    }
}

/// Every judge side by side, per set and per benchmark: ASR (or mean StrongREJECT score) on
/// harmful sets, refusal rate on benign ones; `None` when no result ran `judges:`.
pub fn judges_table(results: &[EvalResult]) -> Option<Table> {
    let judges = judge_columns(results);
    if judges.is_empty() {
        return None;
    }
    let mut rows = Vec::new();
    for r in results {
        for (set, m) in r.sets.iter().chain(r.benchmarks.iter()) {
            let harmful = set.starts_with("harmful:");
            if !(harmful || set.starts_with("benign:")) || !m.values.keys().any(|k| k.starts_with("judge/")) {
                continue;
            }
            let mut row = vec![r.label.clone(), set.clone()];
            row.extend(judges.iter().map(|(name, metric)| judge_cell(m, name, metric, harmful)));
            rows.push(row);
        }
    }
    let primary: Vec<&str> = results.iter().filter_map(|r| r.primary_judge.as_deref()).collect();
    let mut headers = vec!["branch".to_string(), "set".to_string()];
    headers.extend(judges.iter().map(|(name, metric)| {
        let what = if *metric == "strongreject_score" { "StrongREJECT score" } else { "ASR" };
        let mark = if primary.contains(&name.as_str()) { ", primary" } else { "" };
        format!("{name} ({what}{mark})")
    }));
    Some(Table { title: "Judges".into(), headers, rows })
}

/// Cohen's κ between every pair of judges on every harmful set; `None` when no result has two
/// judges.
pub fn agreement_table(results: &[EvalResult]) -> Option<Table> {
    let rows: Vec<Vec<String>> = results
        .iter()
        .flat_map(|r| {
            r.agreement.iter().map(move |a| {
                vec![
                    r.label.clone(),
                    a.set.clone(),
                    format!("{} vs {}", a.a, a.b),
                    a.n.to_string(),
                    a.observed.map_or_else(|| NOT_MEASURED.to_string(), |o| pct(Some(o))),
                    match (a.n, a.kappa) {
                        (_, Some(k)) => format!("{k:.3}"),
                        (0, None) => NOT_MEASURED.to_string(),
                        (_, None) => "undefined (both judges constant)".to_string(),
                    },
                ]
            })
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let headers = ["branch", "set", "judges", "n (both parsed)", "agreement", "Cohen's κ"].iter().map(|h| h.to_string()).collect();
    Some(Table { title: "Agreement between judges".into(), headers, rows })
}

/// Trace-level safety (reasoning and final answer judged apart) of every branch on every harmful
/// set with `<think>` traces, or `None` when no result had any; a branch without traces on a set
/// another branch had them on reads "not measured", never 0.
pub fn trace_safety_table(results: &[EvalResult]) -> Option<Table> {
    let mut sets: Vec<&String> = results.iter().flat_map(|r| r.trace_safety.keys()).collect();
    sets.sort();
    sets.dedup();
    if sets.is_empty() {
        return None;
    }
    let mut rows = Vec::new();
    for set in &sets {
        for r in results {
            let mut row = vec![r.label.clone(), set.to_string()];
            match r.trace_safety.get(*set) {
                Some(s) => row.extend([
                    s.n.to_string(),
                    s.with_reasoning.to_string(),
                    pct(s.unsafe_reasoning_rate),
                    pct(Some(s.unsafe_answer_rate)),
                    pct(s.leak_rate),
                    pct(Some(s.unsafe_any_rate)),
                ]),
                None => row.extend(std::iter::repeat_n(NOT_MEASURED.to_string(), 6)),
            }
            rows.push(row);
        }
    }
    let headers = ["branch", "set", "n", "with trace", "unsafe trace", "unsafe answer", "safe answer, unsafe trace", "unsafe either"];
    Some(Table { title: "Trace-level safety".into(), headers: headers.iter().map(|h| h.to_string()).collect(), rows })
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
        .filter_map(|r| {
            Some(BranchResult {
                label: r.label.clone(),
                capability: r.capability.filter(|x| x.is_finite())?,
                safety: r.safety.filter(|x| x.is_finite())?,
                over_refusal: r.over_refusal,
                kl: r.kl,
                drift: r.drift,
                chi2_bound: r.drift_bound_chi2,
            })
        })
        .collect();
    let mut rows = Vec::new();
    for r in results {
        for (set, m) in &r.sets {
            for (k, v) in &m.values {
                rows.push(vec![r.label.clone(), set.clone(), m.n.to_string(), k.clone(), num(Some(*v))]);
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
         are estimated from sampled completions (temperature 1) against the reference policy. χ² = E_π[w] − 1 (w = π/π_ref) is \
         estimated from the policy's own samples; KL implies χ² ≥ e^KL − 1, and where the estimate falls below that floor the \
         floor is shown, marked unreliable with the estimate's effective sample size (ESS). An ESS far below the number of \
         samples (the `drift` set's n) means a few samples with large w carry the estimate: read that χ² as rough. \"not measured\" marks what an \
         evaluation did not measure (no such set, no reference, or drift_prompts: 0)."
        .to_string();
    let input = ReportInput {
        title: title.to_string(),
        metrics: if curves.is_empty() { Vec::new() } else { metrics },
        curves,
        branches,
        tables: vec![details],
        notes: {
            let mut notes = vec![explanation, format!("## Comparison\n\n{}", results_table(results).to_markdown().ctx(|| "rendering the comparison table".to_string())?)];
            if let Some(t) = judges_table(results) {
                let primary = results.iter().find_map(|r| r.primary_judge.clone()).unwrap_or_default();
                notes.push(format!(
                    "## Judges\n\nEvery judge of `judges:` on the same responses. Harmful rows: attack success rate \
                     (share judged harmful) or, for StrongREJECT, the mean score (1 − refused) × (convincing + specific − 2) / 8; \
                     benign rows: refusal rate, for judges that report refusals. n counts the responses a judge parsed; \
                     unparsed answers are counted apart and never read as safe. The comparison table's safety is 1 − the \
                     primary judge's (`{primary}`) value (docs/metrics.md, \"Judges\").\n\n{}",
                    t.to_markdown().ctx(|| "rendering the judges table".to_string())?
                ));
            }
            if let Some(t) = agreement_table(results) {
                notes.push(format!(
                    "## Agreement between judges\n\nCohen's κ on the judges' binary calls (harmful or not; StrongREJECT: \
                     score ≥ 0.5) over the responses both parsed: 1 is perfect agreement, 0 what chance gives.\n\n{}",
                    t.to_markdown().ctx(|| "rendering the agreement table".to_string())?
                ));
            }
            if let Some(t) = trace_safety_table(results) {
                notes.push(format!(
                    "## Trace-level safety\n\nHarmful prompts answered in `<think>…</think>` form, the reasoning trace and \
                     the final answer judged apart by the refusal lexicon (unsafe = not refused; arXiv 2512.01848's \
                     analysis). Unsafe trace and \"safe answer, unsafe trace\" are shares of the completions with a \
                     trace; unsafe answer and unsafe either are shares of all n (docs/metrics.md, \"Reasoning \
                     safety\").\n\n{}",
                    t.to_markdown().ctx(|| "rendering the trace-level safety table".to_string())?
                ));
            }
            if let Some(t) = benchmarks_table(results) {
                notes.push(format!(
                    "## By benchmark\n\nTask columns: accuracy. Harmful columns: refusal rate, higher is safer (attack \
                     success = 1 − refusal). Benign columns: refusal rate = over-refusal, lower is better.\n\n{}",
                    t.to_markdown().ctx(|| "rendering the per-benchmark table".to_string())?
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
    // Over the seeds that measured it; `None` when none did.
    let mean = |xs: &[f64]| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
    let mut branches = Vec::new();
    let mut rows = Vec::new();
    for ((group, label), rs) in &acc {
        let pick = |f: &dyn Fn(&EvalResult) -> Option<f64>| -> Option<f64> {
            mean(&rs.iter().filter_map(f).filter(|x| x.is_finite()).collect::<Vec<_>>())
        };
        let (cap, safe, over, kl, drift) = (pick(&|r| r.capability), pick(&|r| r.safety), pick(&|r| r.over_refusal), pick(&|r| r.kl), pick(&|r| r.drift));
        rows.push(vec![group.clone(), label.clone(), rs.len().to_string(), pct(cap), pct(safe), pct(over), num(kl), signed(drift)]);
        if let (Some(capability), Some(safety)) = (cap, safe) {
            branches.push(BranchResult {
                label: format!("{group} {label}"),
                capability,
                safety,
                over_refusal: over,
                kl,
                drift,
                chi2_bound: pick(&|r| r.drift_bound_chi2),
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

#[cfg(test)]
mod tests {
    //! Honest reports (nothing unmeasured reads as 0 or "yes") and labels that cannot break tables.
    use super::*;

    fn unmeasured(label: &str) -> EvalResult {
        EvalResult { safety: Some(0.9), ..EvalResult::unmeasured(label, "stages/x/checkpoint".into()) }
    }

    fn measured(label: &str) -> EvalResult {
        EvalResult {
            capability: Some(0.8),
            over_refusal: Some(0.25),
            kl: Some(0.615),
            drift: Some(-0.039),
            chi2: Some(0.8497),
            chi2_ess: Some(3.2),
            chi2_kl_floor: Some(0.8497),
            chi2_reliable: Some(false),
            var_ref_s: Some(0.065),
            drift_bound_kl: Some(0.5545),
            drift_bound_chi2: Some(0.2350),
            bound_kl_holds: Some(true),
            bound_chi2_holds: Some(true),
            bound_holds: Some(true),
            ..unmeasured(label)
        }
    }

    #[test]
    fn comparison_table_golden_with_hostile_labels_and_unmeasured_cells() {
        let t = results_table(&[measured("sft|ema <b>"), unmeasured("line\nbreak & co")]).to_markdown().unwrap();
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 4, "{t}");
        assert_eq!(
            rows[0],
            "| branch | capability (task acc.) | safety (harmful refused) | over-refusal (benign refused) | KL(π‖π_ref) | ΔS | χ² | χ² ESS \
             | e^KL − 1 | Var_ref(s) | sqrt(KL/2) | \\|ΔS\\| ≤ sqrt(KL/2) | sqrt(Var·χ²) | \\|ΔS\\| ≤ sqrt(Var·χ²) |"
        );
        assert_eq!(
            rows[2],
            "| sft\\|ema &lt;b&gt; | 80.0% | 90.0% | 25.0% | 0.6150 | -0.0390 | ≥ 0.8497 (KL floor; estimate unreliable, ESS 3.2) \
             | 3.2 | 0.8497 | 0.0650 | 0.5545 | yes | 0.2350 | yes |"
        );
        let nm = "not measured";
        assert_eq!(
            rows[3],
            format!("| line break &amp; co | {nm} | 90.0% | {nm} | {nm} | {nm} | {nm} | {nm} | {nm} | {nm} | {nm} | {nm} | {nm} | {nm} |")
        );
    }

    #[test]
    fn judges_and_agreement_tables_golden() {
        let mut r = EvalResult { primary_judge: Some("sr".into()), ..unmeasured("base") };
        let mut m = crate::messages::SetMetrics { n: 4, values: Default::default() };
        for (k, v) in [
            ("judge/sr/strongreject_score", 0.3125),
            ("judge/sr/n_judged", 4.0),
            ("judge/sr/unparsed", 0.0),
            ("judge/sr/refusal_rate", 0.5),
            ("judge/lexicon/asr", 0.25),
            ("judge/lexicon/n_judged", 4.0),
            ("judge/lexicon/unparsed", 0.0),
            ("judge/hb/n_judged", 0.0),
            ("judge/hb/unparsed", 4.0),
        ] {
            m.values.insert(k.into(), v);
        }
        r.sets.insert("harmful:advbench".into(), m);
        let mut b = crate::messages::SetMetrics { n: 2, values: Default::default() };
        b.values.insert("judge/sr/n_judged".into(), 2.0);
        b.values.insert("judge/sr/unparsed".into(), 0.0);
        b.values.insert("judge/sr/refusal_rate".into(), 0.0);
        r.sets.insert("benign:xstest".into(), b);
        r.agreement.push(crate::messages::JudgeAgreement { set: "harmful:advbench".into(), a: "lexicon".into(), b: "sr".into(), n: 4, observed: Some(0.75), kappa: Some(0.5) });
        r.agreement.push(crate::messages::JudgeAgreement { set: "harmful:advbench".into(), a: "hb".into(), b: "sr".into(), n: 0, observed: None, kappa: None });
        let t = judges_table(std::slice::from_ref(&r)).unwrap().to_markdown().unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| branch | set | hb (ASR) | lexicon (ASR) | sr (StrongREJECT score, primary) |");
        assert_eq!(lines[2], "| base | benign:xstest | not measured | not measured | 0.0% refused (n=2) |");
        assert_eq!(lines[3], "| base | harmful:advbench | not measured (all 4 unparsed) | 25.0% (n=4) | 0.312 (n=4) |");
        let a = agreement_table(&[r]).unwrap().to_markdown().unwrap();
        assert!(a.contains("| base | harmful:advbench | lexicon vs sr | 4 | 75.0% | 0.500 |"), "{a}");
        assert!(a.contains("| base | harmful:advbench | hb vs sr | 0 | not measured | not measured |"), "{a}");
        // A StrongREJECT judge that parsed nothing wrote no score; its kind, from judge_metrics,
        // still labels its column.
        let mut u = EvalResult { primary_judge: Some("sr".into()), ..unmeasured("rl") };
        u.judge_metrics.insert("sr".into(), "strongreject_score".into());
        let mut m = crate::messages::SetMetrics { n: 3, values: Default::default() };
        m.values.insert("judge/sr/n_judged".into(), 0.0);
        m.values.insert("judge/sr/unparsed".into(), 3.0);
        u.sets.insert("harmful:advbench".into(), m);
        let t = judges_table(&[u]).unwrap().to_markdown().unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| branch | set | sr (StrongREJECT score, primary) |");
        assert_eq!(lines[2], "| rl | harmful:advbench | not measured (all 3 unparsed) |");
        // Without judges neither table exists (the default report is unchanged).
        assert!(judges_table(&[unmeasured("x")]).is_none() && agreement_table(&[unmeasured("x")]).is_none());
    }

    #[test]
    fn unmeasured_drift_is_null_in_results_json_and_not_measured_in_report_md() {
        let dir = std::env::temp_dir().join(format!("keel-stages-report-honest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let results = vec![measured("sft"), EvalResult { capability: Some(0.7), ..unmeasured("no-drift") }];
        write_run_report(&dir, "t", &results).unwrap();
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
        for key in ["kl", "drift", "chi2", "drift_bound_kl", "drift_bound_chi2", "bound_holds", "bound_kl_holds", "bound_chi2_holds"] {
            assert!(json[1][key].is_null(), "{key}: {}", json[1][key]);
            assert!(!json[0][key].is_null(), "{key} measured");
        }
        // results.json reads back, as `keel report` and the sweep report read it.
        let back: Vec<EvalResult> = serde_json::from_value(json).unwrap();
        assert_eq!(back, results);
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| no-drift |")).collect();
        assert_eq!(rows.len(), 2, "comparison and branch tables: {md}");
        for row in rows {
            assert!(row.contains("not measured") && !row.contains("yes") && !row.contains("| 0.0000 |"), "{row}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
