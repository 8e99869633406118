//! `report.md` with markdown tables and SVG plots (plotters): learning curves, the
//! safety-vs-capability Pareto scatter, and drift vs KL with the Pinsker bound.
//!
//! The API takes plain data structs and a directory, so reports can be produced from any run
//! directory's `metrics.jsonl` without the pipeline runner.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keel_core::MetricRecord;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::EvalError;

/// One run or sweep cell summarised for comparison plots and tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BranchResult {
    /// Point label (`base`, `grpo β=0.04`, `sft`, ...).
    pub label: String,
    /// Capability metric (e.g. GSM8K accuracy), higher is better.
    pub capability: f64,
    /// Safety metric (e.g. 1 − attack success rate), higher is better.
    pub safety: f64,
    /// Over-refusal rate on benign prompts, if measured.
    pub over_refusal: Option<f64>,
    /// KL(π‖π_ref) to the reference policy, if measured.
    pub kl: Option<f64>,
    /// Safety drift ΔS relative to the reference, if measured.
    pub drift: Option<f64>,
    /// The Cauchy–Schwarz bound `sqrt(Var_ref(s)·χ²)` on `|ΔS|`, if measured.
    #[serde(default)]
    pub chi2_bound: Option<f64>,
}

/// A markdown table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// Heading written above the table.
    pub title: String,
    /// Column headers.
    pub headers: Vec<String>,
    /// Rows of cells (each as long as `headers`).
    pub rows: Vec<Vec<String>>,
}

/// The markdown escaping of every table and heading here (one home in keel-core, shared with the
/// pipeline engine's sweep summary), re-exported for reports built on this crate.
pub use keel_core::{md_cell, md_line};

impl Table {
    /// Renders the table as GitHub-flavoured markdown, every header and cell escaped by
    /// [`md_cell`].
    pub fn to_markdown(&self) -> Result<String, EvalError> {
        if let Some(r) = self.rows.iter().position(|r| r.len() != self.headers.len()) {
            return Err(EvalError::invalid(
                "table",
                format!(
                    "`{}` row {r} has {} cells for {} headers",
                    self.title,
                    self.rows[r].len(),
                    self.headers.len()
                ),
            ));
        }
        let mut out = String::new();
        let line = |cells: &[String]| {
            format!(
                "| {} |\n",
                cells
                    .iter()
                    .map(|c| md_cell(c))
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        };
        out.push_str(&line(&self.headers));
        out.push_str(&format!("|{}\n", "---|".repeat(self.headers.len())));
        for r in &self.rows {
            out.push_str(&line(r));
        }
        Ok(out)
    }
}

/// What a report prints for a metric that was not measured (never 0, never "yes").
pub const NOT_MEASURED: &str = "not measured";

/// Formats a metric value for tables: 4 decimals, [`NOT_MEASURED`] for missing.
pub fn fmt_value(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.4}"),
        Some(x) => format!("{x}"),
        None => NOT_MEASURED.to_string(),
    }
}

/// Formats whether a bound held: `yes`, `NO`, or [`NOT_MEASURED`].
pub fn fmt_holds(holds: Option<bool>) -> String {
    match holds {
        Some(true) => "yes".into(),
        Some(false) => "NO".into(),
        None => NOT_MEASURED.into(),
    }
}

/// Indices of the Pareto-optimal points when maximising both coordinates: no other point is at
/// least as good in both and strictly better in one. Returned sorted by the first coordinate.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let mut front: Vec<usize> = (0..points.len())
        .filter(|&i| {
            let (xi, yi) = points[i];
            !points
                .iter()
                .enumerate()
                .any(|(j, &(xj, yj))| j != i && xj >= xi && yj >= yi && (xj > xi || yj > yi))
        })
        .collect();
    front.sort_by(|&a, &b| points[a].0.total_cmp(&points[b].0).then(a.cmp(&b)));
    front
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> EvalError {
    EvalError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The frame every report chart shares: a white canvas, a caption, labelled axes and a mesh over
/// the given ranges, ready for series to be drawn on.
fn framed_chart<'a, 'b: 'a>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    path: &Path,
    caption: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    (x_desc, y_desc): (&str, &str),
) -> Result<ChartContext<'a, SVGBackend<'b>, Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>>, EvalError> {
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x, y)
        .map_err(|e| plot_err(path, e))?;
    chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw().map_err(|e| plot_err(path, e))?;
    Ok(chart)
}

fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo {
        0.08 * (hi - lo)
    } else {
        0.5_f64.max(lo.abs() * 0.1)
    };
    (lo - pad, hi + pad)
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Plots one metric's learning curve, one line per stage that logged it, into an SVG.
/// Returns the number of series drawn.
pub fn plot_learning_curve(
    path: &Path,
    records: &[MetricRecord],
    metric: &str,
) -> Result<usize, EvalError> {
    let mut series: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for r in records {
        if let Some(v) = r.values.get(metric) {
            if v.is_finite() {
                series
                    .entry(r.stage.as_str())
                    .or_default()
                    .push((r.step as f64, *v));
            }
        }
    }
    if series.is_empty() {
        return Err(EvalError::invalid(
            "plot_learning_curve",
            format!("no finite values for `{metric}`"),
        ));
    }
    for pts in series.values_mut() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let (x0, x1) = padded_range(series.values().flatten().map(|p| p.0));
    let (y0, y1) = padded_range(series.values().flatten().map(|p| p.1));
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    let mut chart = framed_chart(&root, path, metric, x0..x1, y0..y1, ("step", metric))?;
    for (i, (stage, pts)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| plot_err(path, e))?
            .label(*stage)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(series.len())
}

/// Scatter of safety (y) against capability (x) with every point labelled and the Pareto front
/// (maximising both) drawn as a line. One `<circle>` per branch.
pub fn plot_pareto(path: &Path, branches: &[BranchResult]) -> Result<(), EvalError> {
    if branches.is_empty() {
        return Err(EvalError::invalid("plot_pareto", "no branches"));
    }
    let pts: Vec<(f64, f64)> = branches.iter().map(|b| (b.capability, b.safety)).collect();
    let (x0, x1) = padded_range(pts.iter().map(|p| p.0));
    let (y0, y1) = padded_range(pts.iter().map(|p| p.1));
    let root = SVGBackend::new(path, (720, 480)).into_drawing_area();
    let mut chart = framed_chart(&root, path, "safety vs capability", x0..x1, y0..y1, ("capability", "safety"))?;
    let front: Vec<(f64, f64)> = pareto_front(&pts).into_iter().map(|i| pts[i]).collect();
    chart
        .draw_series(LineSeries::new(
            front,
            RGBColor(214, 39, 40).stroke_width(2),
        ))
        .map_err(|e| plot_err(path, e))?;
    chart
        .draw_series(branches.iter().map(|b| {
            EmptyElement::at((b.capability, b.safety))
                + Circle::new((0, 0), 5, PALETTE[0].filled())
                + Text::new(b.label.clone(), (8, -14), ("sans-serif", 14))
        }))
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// Scatter of `|ΔS|` against KL for the branches that have both, with the bound curve
/// `sqrt(KL/2)` (Pinsker; valid for safety scores in [0, 1]) drawn over the KL range.
/// Returns the number of points drawn.
pub fn plot_drift_vs_kl(path: &Path, branches: &[BranchResult]) -> Result<usize, EvalError> {
    let pts: Vec<(&str, f64, f64)> = branches
        .iter()
        .filter_map(|b| match (b.kl, b.drift) {
            (Some(k), Some(d)) if k.is_finite() && d.is_finite() && k >= 0.0 => {
                Some((b.label.as_str(), k, d.abs()))
            }
            _ => None,
        })
        .collect();
    if pts.is_empty() {
        return Err(EvalError::invalid(
            "plot_drift_vs_kl",
            "no branch has both kl and drift",
        ));
    }
    let kmax = pts.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-6) * 1.15;
    let ymax = pts.iter().map(|p| p.2).fold((kmax / 2.0).sqrt(), f64::max) * 1.15;
    let root = SVGBackend::new(path, (720, 480)).into_drawing_area();
    let mut chart = framed_chart(&root, path, "safety drift vs KL", 0.0..kmax, 0.0..ymax, ("KL(π‖π_ref)", "|ΔS|"))?;
    let curve: Vec<(f64, f64)> = (0..=200)
        .map(|i| {
            let k = kmax * i as f64 / 200.0;
            (k, (k / 2.0).sqrt())
        })
        .collect();
    chart
        .draw_series(LineSeries::new(
            curve,
            RGBColor(214, 39, 40).stroke_width(2),
        ))
        .map_err(|e| plot_err(path, e))?
        .label("sqrt(KL/2)")
        .legend(|(x, y)| {
            PathElement::new(
                vec![(x, y), (x + 16, y)],
                RGBColor(214, 39, 40).stroke_width(2),
            )
        });
    chart
        .draw_series(pts.iter().map(|(label, k, d)| {
            EmptyElement::at((*k, *d))
                + Circle::new((0, 0), 5, PALETTE[0].filled())
                + Text::new(label.to_string(), (8, -14), ("sans-serif", 14))
        }))
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(pts.len())
}

/// Everything a report shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportInput {
    /// Report title (first heading).
    pub title: String,
    /// Records from `metrics.jsonl` for the learning curves and the final-values table.
    pub metrics: Vec<MetricRecord>,
    /// Which metrics to plot as learning curves; empty means every metric in `metrics`.
    pub curves: Vec<String>,
    /// Runs / sweep cells to compare.
    pub branches: Vec<BranchResult>,
    /// Extra tables, written after the built-in ones.
    pub tables: Vec<Table>,
    /// Free-text paragraphs written at the top.
    pub notes: Vec<String>,
}

/// The files a report wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFiles {
    /// `report.md`.
    pub markdown: PathBuf,
    /// Every SVG, in the order they are referenced.
    pub plots: Vec<PathBuf>,
}

fn file_stem_for(metric: &str) -> String {
    metric
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The last value of every (stage, metric) pair, as a table.
pub fn final_values_table(records: &[MetricRecord]) -> Table {
    let mut last: BTreeMap<(String, String), (u64, f64)> = BTreeMap::new();
    for r in records {
        for (k, v) in &r.values {
            let e = last
                .entry((r.stage.clone(), k.clone()))
                .or_insert((r.step, *v));
            if r.step >= e.0 {
                *e = (r.step, *v);
            }
        }
    }
    Table {
        title: "Final metric values".into(),
        headers: vec![
            "stage".into(),
            "metric".into(),
            "step".into(),
            "value".into(),
        ],
        rows: last
            .into_iter()
            .map(|((s, m), (step, v))| vec![s, m, step.to_string(), fmt_value(Some(v))])
            .collect(),
    }
}

/// The branch comparison table: both bounds on `|ΔS|` — Pinsker's `sqrt(KL/2)` and, when given,
/// Cauchy–Schwarz's `sqrt(Var_ref(s)·χ²)` — each with whether it holds, and the Pareto-front
/// membership. What was not measured prints [`NOT_MEASURED`].
pub fn branches_table(branches: &[BranchResult]) -> Table {
    let pts: Vec<(f64, f64)> = branches.iter().map(|b| (b.capability, b.safety)).collect();
    let front = pareto_front(&pts);
    Table {
        title: "Safety vs capability".into(),
        headers: [
            "run",
            "capability",
            "safety",
            "over-refusal",
            "KL",
            "ΔS",
            "sqrt(KL/2)",
            "|ΔS| ≤ sqrt(KL/2)",
            "sqrt(Var·χ²)",
            "|ΔS| ≤ sqrt(Var·χ²)",
            "Pareto",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        rows: branches
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let bound = b.kl.map(|k| (k.max(0.0) / 2.0).sqrt());
                let holds = |bound: Option<f64>| {
                    fmt_holds(b.drift.zip(bound).map(|(d, bd)| d.abs() <= bd + 1e-12))
                };
                vec![
                    b.label.clone(),
                    fmt_value(Some(b.capability)),
                    fmt_value(Some(b.safety)),
                    fmt_value(b.over_refusal),
                    fmt_value(b.kl),
                    fmt_value(b.drift),
                    fmt_value(bound),
                    holds(bound),
                    fmt_value(b.chi2_bound),
                    holds(b.chi2_bound),
                    if front.contains(&i) {
                        "★".into()
                    } else {
                        "".into()
                    },
                ]
            })
            .collect(),
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), EvalError> {
    std::fs::write(path, text).map_err(|e| EvalError::Io {
        action: "writing",
        path: path.to_path_buf(),
        source: e,
    })
}

/// Writes `report.md` and its SVG plots into `dir` (created if needed).
pub fn write_report(dir: &Path, input: &ReportInput) -> Result<ReportFiles, EvalError> {
    std::fs::create_dir_all(dir).map_err(|e| EvalError::Io {
        action: "creating report directory",
        path: dir.to_path_buf(),
        source: e,
    })?;
    let mut md = format!(
        "# {}\n\n",
        if input.title.is_empty() {
            "Keel report".to_string()
        } else {
            md_line(&input.title)
        }
    );
    for n in &input.notes {
        md.push_str(n);
        md.push_str("\n\n");
    }
    let mut plots = Vec::new();

    if !input.metrics.is_empty() {
        let names: Vec<String> = if input.curves.is_empty() {
            let mut all: Vec<String> = input
                .metrics
                .iter()
                .flat_map(|r| r.values.keys().cloned())
                .collect();
            all.sort();
            all.dedup();
            all
        } else {
            input.curves.clone()
        };
        md.push_str("## Learning curves\n\n");
        for m in &names {
            let file = format!("curve_{}.svg", file_stem_for(m));
            let path = dir.join(&file);
            plot_learning_curve(&path, &input.metrics, m)?;
            md.push_str(&format!("![{m}]({file})\n\n"));
            plots.push(path);
        }
        let t = final_values_table(&input.metrics);
        md.push_str(&format!("### {}\n\n{}\n", md_line(&t.title), t.to_markdown()?));
    }

    if !input.branches.is_empty() {
        md.push_str("## Safety vs capability\n\n");
        let t = branches_table(&input.branches);
        md.push_str(&t.to_markdown()?);
        md.push('\n');
        let path = dir.join("pareto.svg");
        plot_pareto(&path, &input.branches)?;
        md.push_str("![safety vs capability](pareto.svg)\n\n");
        plots.push(path);
        if input
            .branches
            .iter()
            .any(|b| b.kl.is_some() && b.drift.is_some())
        {
            let path = dir.join("drift_vs_kl.svg");
            plot_drift_vs_kl(&path, &input.branches)?;
            md.push_str(
                "## Safety drift vs KL\n\n|ΔS| ≤ TV ≤ sqrt(KL/2) for safety scores in [0, 1].\n\n",
            );
            md.push_str("![drift vs KL](drift_vs_kl.svg)\n\n");
            plots.push(path);
        }
    }

    for t in &input.tables {
        md.push_str(&format!("## {}\n\n{}\n", md_line(&t.title), t.to_markdown()?));
    }
    let markdown = dir.join("report.md");
    write_file(&markdown, &md)?;
    Ok(ReportFiles { markdown, plots })
}
