//! Report writing: SVGs exist with the expected points and labels, tables contain the values.

use std::path::PathBuf;

use keel_core::MetricRecord;
use keel_eval::report::{
    branches_table, pareto_front, plot_drift_vs_kl, write_report, BranchResult, ReportInput, Table,
};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("keel-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The text content of every `<text>` element of an SVG, trimmed.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let start = t.find('>')? + 1;
            let end = t.find("</text>")?;
            Some(t[start..end].trim().to_string())
        })
        .collect()
}

fn branch(label: &str, cap: f64, safety: f64, kl: Option<f64>, drift: Option<f64>) -> BranchResult {
    BranchResult {
        label: label.into(),
        capability: cap,
        safety,
        over_refusal: Some(0.05),
        kl,
        drift,
        chi2_bound: None,
    }
}

fn branches() -> Vec<BranchResult> {
    vec![
        branch("base", 0.40, 0.95, Some(0.0), Some(0.0)),
        BranchResult { chi2_bound: Some(0.1), ..branch("sft", 0.50, 0.90, Some(0.30), Some(-0.12)) },
        branch("grpo-dominated", 0.60, 0.70, None, None),
        branch("grpo", 0.70, 0.80, Some(0.08), Some(0.01)),
    ]
}

#[test]
fn pareto_front_maximises_both() {
    let pts: Vec<(f64, f64)> = branches()
        .iter()
        .map(|b| (b.capability, b.safety))
        .collect();
    assert_eq!(pareto_front(&pts), vec![0, 1, 3]);
    assert_eq!(
        pareto_front(&[(1.0, 1.0), (1.0, 1.0)]),
        vec![0, 1],
        "equal points both survive"
    );
    assert!(pareto_front(&[]).is_empty());
}

#[test]
fn report_files_points_labels_and_tables() {
    let dir = tmp("report");
    let metrics: Vec<MetricRecord> = (0..5)
        .flat_map(|s| {
            vec![
                MetricRecord::new("learn", s)
                    .with("loss", 2.0 - 0.25 * s as f64)
                    .with("reward/mean", 0.1 * s as f64),
                MetricRecord::new("eval", s).with("loss", 2.5 - 0.2 * s as f64),
            ]
        })
        .collect();
    let input = ReportInput {
        title: "Demo run".into(),
        metrics,
        curves: vec![],
        branches: branches(),
        tables: vec![Table {
            title: "Extra".into(),
            headers: vec!["k".into(), "v".into()],
            rows: vec![vec!["answer|pipe".into(), "42".into()]],
        }],
        notes: vec!["Synthetic data.".into()],
    };
    let files = write_report(&dir, &input).unwrap();
    let md = std::fs::read_to_string(&files.markdown).unwrap();
    assert_eq!(
        files.plots.len(),
        4,
        "2 curves + pareto + drift: {:?}",
        files.plots
    );
    for p in &files.plots {
        let svg = std::fs::read_to_string(p).unwrap();
        assert!(
            svg.starts_with("<svg") || svg.contains("<svg"),
            "{} is not SVG",
            p.display()
        );
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        assert!(md.contains(&format!("({name})")), "report links {name}");
    }
    // Learning curve SVG names both stages in its legend.
    let loss = std::fs::read_to_string(dir.join("curve_loss.svg")).unwrap();
    let texts = svg_texts(&loss);
    assert!(
        texts.contains(&"learn".to_string()) && texts.contains(&"eval".to_string()),
        "{texts:?}"
    );
    assert!(dir.join("curve_reward_mean.svg").is_file());
    // Pareto: one circle and one label per branch.
    let pareto = std::fs::read_to_string(dir.join("pareto.svg")).unwrap();
    assert_eq!(pareto.matches("<circle").count(), 4);
    let texts = svg_texts(&pareto);
    for b in branches() {
        assert_eq!(
            texts.iter().filter(|t| **t == b.label).count(),
            1,
            "label {} in {texts:?}",
            b.label
        );
    }
    // Drift vs KL: only the three branches with both values.
    let drift = std::fs::read_to_string(dir.join("drift_vs_kl.svg")).unwrap();
    assert_eq!(drift.matches("<circle").count(), 3);
    let texts = svg_texts(&drift);
    assert!(!texts.contains(&"grpo-dominated".to_string()));
    for l in ["base", "sft", "grpo", "sqrt(KL/2)"] {
        assert!(texts.contains(&l.to_string()), "{l} in {texts:?}");
    }
    // Tables carry the values.
    assert!(md.starts_with("# Demo run"));
    assert!(md.contains("| learn | loss | 4 | 1.0000 |"), "{md}");
    assert!(md.contains("| eval | loss | 4 | 1.7000 |"));
    assert!(
        md.contains("| sft | 0.5000 | 0.9000 | 0.0500 | 0.3000 | -0.1200 | 0.3873 | yes | 0.1000 | NO | ★ |"),
        "{md}"
    );
    let nm = "not measured";
    assert!(md.contains(&format!("| grpo-dominated | 0.6000 | 0.7000 | 0.0500 | {nm} | {nm} | {nm} | {nm} | {nm} | {nm} |  |")), "{md}");
    assert!(md.contains("| run | capability | safety | over-refusal | KL | ΔS | sqrt(KL/2) | \\|ΔS\\| ≤ sqrt(KL/2) |"), "{md}");
    assert!(md.contains("answer\\|pipe"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bound_violations_are_flagged() {
    let t = branches_table(&[branch("bad", 0.5, 0.5, Some(0.02), Some(0.5))]);
    assert_eq!(t.rows[0][7], "NO");
    let dir = tmp("empty");
    std::fs::create_dir_all(&dir).unwrap();
    assert!(plot_drift_vs_kl(&dir.join("x.svg"), &[branch("a", 0.1, 0.1, None, None)]).is_err());
    let bad = Table {
        title: "t".into(),
        headers: vec!["a".into()],
        rows: vec![vec![]],
    };
    assert!(bad.to_markdown().is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 19 row 14: labels with `|`, HTML or line breaks must not break report.md tables. The
/// golden output is written by hand from GitHub-flavoured markdown's table rules.
#[test]
fn labels_with_pipes_html_and_newlines_keep_tables_whole() {
    let t = Table {
        title: "Branches <b>\nand more".into(),
        headers: vec!["branch".into(), "a|b".into()],
        rows: vec![
            vec!["grpo|kl".into(), "<script>alert(1)</script>".into()],
            vec!["two\nlines\r\nthree\rfour".into(), "x & y > z".into()],
            vec!["ends\\".into(), "back\\|slash".into()],
        ],
    };
    let golden = "| branch | a\\|b |\n\
                  |---|---|\n\
                  | grpo\\|kl | &lt;script&gt;alert(1)&lt;/script&gt; |\n\
                  | two lines three four | x &amp; y &gt; z |\n\
                  | ends\\\\ | back\\\\\\|slash |\n";
    assert_eq!(t.to_markdown().unwrap(), golden);
    // Every row has exactly the header's number of unescaped cell separators.
    for line in golden.lines() {
        let unescaped = line.char_indices().filter(|&(i, c)| {
            c == '|' && line[..i].chars().rev().take_while(|&b| b == '\\').count() % 2 == 0
        });
        assert_eq!(unescaped.count(), 3, "{line}");
    }
    // The same escaping reaches the branch table and the headings of a written report.
    let dir = tmp("escape");
    let b = branch("evil|<i>\nlabel", 0.5, 0.5, None, None);
    let input = ReportInput { title: "T\n# injected".into(), branches: vec![b], tables: vec![t], ..ReportInput::default() };
    let md = std::fs::read_to_string(write_report(&dir, &input).unwrap().markdown).unwrap();
    assert!(md.starts_with("# T # injected\n"), "{md}");
    assert!(md.contains("| evil\\|&lt;i&gt; label | 0.5000 |"), "{md}");
    assert!(md.contains("## Branches &lt;b&gt; and more\n"), "{md}");
    assert!(!md.contains("<i>") && !md.contains("<script>"), "{md}");
    std::fs::remove_dir_all(&dir).unwrap();
}
