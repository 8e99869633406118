//! Standalone use of keel-eval: exact drift bounds of a Gibbs tilt on a small discrete space,
//! for several KL strengths β, written as a report with tables and plots.
//!
//! Run with `cargo run --release -p keel-eval --example drift_report [OUT_DIR]`.

use std::path::PathBuf;

use keel_core::MetricRecord;
use keel_eval::drift::gibbs_tilt;
use keel_eval::report::{fmt_value, write_report, BranchResult, ReportInput, Table};
use keel_eval::EvalError;

fn main() -> Result<(), EvalError> {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("keel-drift-report"));
    // Six responses: f = verifiable success, s = safety score. Success and safety are mildly
    // anti-correlated under π_ref, so tilting toward success costs a little safety.
    let pi_ref = [0.30, 0.20, 0.15, 0.15, 0.10, 0.10];
    let f = [0.0, 1.0, 1.0, 0.0, 1.0, 0.0];
    let s = [1.0, 0.9, 0.6, 1.0, 0.2, 0.8];
    let mut branches = Vec::new();
    let mut rows = Vec::new();
    let mut curve = Vec::new();
    for (step, beta) in [10.0, 2.0, 1.0, 0.5, 0.25, 0.1].into_iter().enumerate() {
        let d = gibbs_tilt(&pi_ref, &f, &s, beta)?;
        let cap: f64 = d.pi_star.iter().zip(&f).map(|(p, fi)| p * fi).sum();
        let safety: f64 = d.pi_star.iter().zip(&s).map(|(p, si)| p * si).sum();
        println!(
            "β={beta:<5} ΔS={:+.4} Cov={:+.4} sqrt(Var·χ²)={:.4} TV={:.4} sqrt(KL/2)={:.4}",
            d.delta_s,
            d.cov_sw,
            d.bounds.chi2_bound,
            d.tv,
            (d.kl / 2.0).sqrt()
        );
        rows.push(vec![
            format!("{beta}"),
            fmt_value(Some(d.delta_s)),
            fmt_value(Some(d.cov_sw)),
            fmt_value(Some(d.bounds.chi2_bound)),
            fmt_value(Some(d.tv)),
            fmt_value(Some(d.kl)),
            fmt_value(d.bounds.pinsker_bound),
        ]);
        branches.push(BranchResult {
            label: format!("β={beta}"),
            capability: cap,
            safety,
            over_refusal: None,
            kl: Some(d.kl),
            drift: Some(d.delta_s),
            chi2_bound: Some(d.bounds.chi2_bound),
        });
        curve.push(
            MetricRecord::new("tilt", step as u64)
                .with("capability", cap)
                .with("safety", safety),
        );
    }
    let input = ReportInput {
        title: "Gibbs-tilt drift on a toy distribution".into(),
        metrics: curve,
        curves: vec!["capability".into(), "safety".into()],
        branches,
        tables: vec![Table {
            title: "Exact drift quantities".into(),
            headers: ["β", "ΔS", "Cov_ref(s,w)", "sqrt(Var·χ²)", "TV", "KL", "sqrt(KL/2)"].iter().map(|h| h.to_string()).collect(),
            rows,
        }],
        notes: vec!["π* ∝ π_ref·exp(f/β); ΔS = Cov_ref(s, w) and |ΔS| ≤ sqrt(Var_ref(s)·χ²), |ΔS| ≤ TV ≤ sqrt(KL/2).".into()],
    };
    let files = write_report(&out, &input)?;
    println!(
        "wrote {} and {} plots",
        files.markdown.display(),
        files.plots.len()
    );
    Ok(())
}
