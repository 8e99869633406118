//! `keel safety judge-accuracy`: each judge of a `judges:` list measured against a set of
//! (prompt, response) pairs labelled by reading them (the repository's `data/judge_labels/`).
//!
//! Kept in its own file, depending only on keel-safety and serde_yaml, so a test can include it
//! and run the same code the CLI runs.

use std::fmt::Write as _;
use std::path::PathBuf;

use keel_safety::judges::{Judge, JudgeSpec};
use keel_safety::{
    accuracy_markdown, judge_accuracy, label_distribution_markdown, load_labelled, JudgeAccuracy,
};

/// What a `keel safety judge-accuracy` invocation names.
#[derive(Debug, Clone)]
pub struct JudgeAccuracyArgs {
    /// The labelled JSON Lines file.
    pub labels: PathBuf,
    /// A YAML file holding a list of judges in the form of `evaluate`'s `judges:`.
    pub judges: PathBuf,
    /// Keep only the pairs of this model (all when `None`).
    pub model: Option<String>,
    /// List every disagreement with the pair's note.
    pub list_misses: bool,
}

/// What [`judge_accuracy_detailed`] measured.
#[derive(Debug, Clone)]
pub struct JudgeAccuracyOutcome {
    /// One result per judge, in the file's order.
    pub results: Vec<JudgeAccuracy>,
    /// The printable report (markdown).
    pub report: String,
}

/// Reads the judges file: a YAML list of judge specs, or a map with a `judges:` list.
///
/// The text is not expanded here: a judge's `model` reference and `probe` directory replace
/// `${NAME}` themselves, as in a pipeline, so a model judge's verdict-cache key holds the same
/// reference (`${KEEL_ASSETS}/…`) whether `evaluate` or this command asked, and a rerun of
/// either finds the other's verdicts.
pub fn read_judge_specs(path: &std::path::Path) -> Result<Vec<JudgeSpec>, String> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum File {
        List(Vec<JudgeSpec>),
        Map { judges: Vec<JudgeSpec> },
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let specs = match serde_yaml::from_str::<File>(&text) {
        Ok(File::List(l)) | Ok(File::Map { judges: l }) => l,
        // The untagged error says nothing useful; parse as a plain list again for its message.
        Err(_) => serde_yaml::from_str::<Vec<JudgeSpec>>(&text)
            .map_err(|e| format!("{}: {e}", path.display()))?,
    };
    if specs.is_empty() {
        return Err(format!("{}: the judges list is empty", path.display()));
    }
    for (i, s) in specs.iter().enumerate() {
        if specs[..i]
            .iter()
            .any(|o| o.display_name() == s.display_name())
        {
            return Err(format!(
                "{}: two judges are named `{}`; give each a distinct `name`",
                path.display(),
                s.display_name()
            ));
        }
    }
    Ok(specs)
}

/// Builds every judge of the file, judges every pair with each, and renders the report.
pub fn judge_accuracy_detailed(args: &JudgeAccuracyArgs) -> Result<JudgeAccuracyOutcome, String> {
    let mut pairs = load_labelled(&args.labels).map_err(|e| e.to_string())?;
    if let Some(m) = &args.model {
        pairs.retain(|p| &p.model == m);
        if pairs.is_empty() {
            return Err(format!(
                "{} holds no pairs of model `{m}`",
                args.labels.display()
            ));
        }
    }
    let specs = read_judge_specs(&args.judges)?;
    let mut results = Vec::new();
    let mut calls = String::new();
    for spec in &specs {
        let judge: Box<dyn Judge> = spec.build().map_err(|e| e.to_string())?;
        let started = std::time::Instant::now();
        let r = judge_accuracy(judge.as_ref(), &pairs)
            .map_err(|e| format!("judge `{}`: {e}", spec.display_name()))?;
        let s = judge.stats();
        let _ = writeln!(
            calls,
            "- {}: {:.1} s; {} model calls, {} cache hits, {} HTTP requests ({} retries)",
            spec.display_name(),
            started.elapsed().as_secs_f64(),
            s.model_calls,
            s.cache_hits,
            s.requests,
            s.retries
        );
        results.push(r);
    }
    let mut report = String::new();
    let _ = writeln!(
        report,
        "# Judge accuracy against {} labelled pairs ({})\n",
        pairs.len(),
        args.labels.display()
    );
    let _ = writeln!(report, "{}", label_distribution_markdown(&pairs));
    let _ = writeln!(
        report,
        "Refusal: human `refused` vs the judge's `refused` (lexicon and StrongREJECT only). Harm: human \
         `harmful_compliance` vs the judge's flag (the call its ASR counts); refusals and harmless compliance are \
         negatives. P / R = precision / recall of the positive class; κ = Cohen's kappa with the human labels.\n"
    );
    let _ = writeln!(report, "{}", accuracy_markdown(&results, args.list_misses));
    let _ = writeln!(report, "Judge calls:\n\n{calls}");
    Ok(JudgeAccuracyOutcome { results, report })
}
