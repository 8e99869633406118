//! `keel safety train-probe`: trains the sentence-embedding safety probe on catalogue datasets.
//!
//! Kept in its own file, depending only on keel-core, keel-data and keel-safety, so the lead can
//! wire it into the CLI with one subcommand and keel-safety's tests can compile and run it as is
//! (`tests/probe_real_data.rs` includes this file).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use keel_core::SafetyLabel;
use keel_data::{normalize, subset, Cache, Catalog};
use keel_safety::{
    train_probe_on_embeddings, EmbeddingProbe, LabeledText, ProbeMetrics, ProbeTrainConfig,
    SentenceEncoder, TrainedProbe, PROBE_META_FILE, PROBE_WEIGHTS_FILE,
};

/// Arguments of [`train_probe_detailed`]: what a `keel safety train-probe` invocation specifies.
#[derive(Debug, Clone)]
pub struct TrainProbeArgs {
    /// Sentence-encoder directory (all-MiniLM-L6-v2 layout: config.json, model.safetensors,
    /// tokenizer.json).
    pub encoder: PathBuf,
    /// Catalogue datasets whose prompts are the unsafe class. From a dataset with per-row safety
    /// labels (XSTest) only the `harmful` rows are taken.
    pub harmful: Vec<String>,
    /// Catalogue datasets whose prompts are the safe class (only `benign` rows of labelled ones).
    pub benign: Vec<String>,
    /// At most this many prompts from each dataset (a seeded sample), to balance large sets such
    /// as Alpaca against small ones; `None` takes all.
    pub max_per_set: Option<usize>,
    /// Fraction of each class held out for the reported metrics.
    pub test_fraction: f64,
    /// Seed of the per-dataset sampling and of the split.
    pub seed: u64,
    /// L2 penalty of the logistic regression.
    pub l2: f64,
    /// Where `probe.safetensors` and `probe.json` are written.
    pub out_dir: PathBuf,
}

impl TrainProbeArgs {
    /// The recipe of the shipped test: AdvBench + JBB harmful + XSTest unsafe against Alpaca +
    /// JBB benign + XSTest safe, 400 prompts at most per dataset, 20% held out.
    pub fn default_recipe(encoder: PathBuf, out_dir: PathBuf) -> Self {
        TrainProbeArgs {
            encoder,
            harmful: vec!["advbench".into(), "jbb-harmful".into(), "xstest".into()],
            benign: vec!["alpaca-5000".into(), "jbb-benign".into(), "xstest".into()],
            max_per_set: Some(400),
            test_fraction: 0.2,
            seed: 0,
            l2: ProbeTrainConfig::default().l2,
            out_dir,
        }
    }
}

/// What [`train_probe_detailed`] produced.
#[derive(Debug, Clone)]
pub struct TrainProbeOutcome {
    /// Head and metrics.
    pub trained: TrainedProbe,
    /// Prompts taken from each dataset and class (`advbench/harmful` → 400).
    pub counts: BTreeMap<String, usize>,
    /// Texts dropped because the same (normalised) prompt appeared in both classes or twice.
    pub dropped_duplicates: usize,
    /// A human-readable summary of the held-out metrics, printed by the CLI.
    pub report: String,
}

/// Loads prompts of the named datasets labelled `unsafe_`, keeping rows whose own safety label
/// agrees (or that have none), sampling at most `max` per dataset.
fn load_class(
    catalog: &Catalog,
    cache: &Cache,
    names: &[String],
    unsafe_: bool,
    max: Option<usize>,
    seed: u64,
    counts: &mut BTreeMap<String, usize>,
) -> Result<Vec<LabeledText>, String> {
    let want = if unsafe_ {
        SafetyLabel::Harmful
    } else {
        SafetyLabel::Benign
    };
    let mut out = Vec::new();
    for name in names {
        let manifest = catalog
            .get(name)
            .map_err(|e| format!("dataset `{name}`: {e}"))?;
        let loaded = manifest.load(cache).map_err(|e| {
            format!(
                "loading dataset `{name}` (cache {}): {e}",
                cache.root().display()
            )
        })?;
        let rows: Vec<String> = loaded
            .examples
            .iter()
            .filter(|ex| ex.safety.is_none_or(|l| l == want))
            .map(|ex| ex.prompt.user_text().to_string())
            .filter(|t| !t.trim().is_empty())
            .collect();
        if rows.is_empty() {
            return Err(format!(
                "dataset `{name}` has no {} prompts",
                if unsafe_ { "harmful" } else { "benign" }
            ));
        }
        let rows = match max {
            Some(n) if n < rows.len() => {
                subset(&rows, n, seed).map_err(|e| format!("sampling `{name}`: {e}"))?
            }
            _ => rows,
        };
        counts.insert(
            format!("{name}/{}", if unsafe_ { "harmful" } else { "benign" }),
            rows.len(),
        );
        out.extend(rows.into_iter().map(|t| LabeledText::new(t, unsafe_)));
    }
    Ok(out)
}

/// Drops exact (normalised) duplicates, and every copy of a prompt that appears in both classes.
fn dedup_labeled(data: Vec<LabeledText>) -> (Vec<LabeledText>, usize) {
    let mut labels: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for d in &data {
        let e = labels.entry(normalize(&d.text)).or_insert((false, false));
        if d.unsafe_ {
            e.0 = true;
        } else {
            e.1 = true;
        }
    }
    let n = data.len();
    let mut seen = std::collections::BTreeSet::new();
    let kept: Vec<LabeledText> = data
        .into_iter()
        .filter(|d| {
            let k = normalize(&d.text);
            let conflicting = labels.get(&k).is_some_and(|(u, s)| *u && *s);
            !conflicting && seen.insert(k)
        })
        .collect();
    let dropped = n - kept.len();
    (kept, dropped)
}

fn metrics_line(name: &str, m: &ProbeMetrics) -> String {
    format!(
        "| {name} | {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} |",
        m.n, m.n_positive, m.auroc, m.precision, m.recall, m.f1, m.accuracy, m.ece, m.brier
    )
}

/// Trains the probe and returns head, metrics, training-set provenance and a printable report.
pub fn train_probe_detailed(args: &TrainProbeArgs) -> Result<TrainProbeOutcome, String> {
    if args.harmful.is_empty() || args.benign.is_empty() {
        return Err("name at least one harmful and one benign dataset".into());
    }
    let catalog = Catalog::embedded().map_err(|e| format!("reading the dataset catalogue: {e}"))?;
    let cache = Cache::from_env().map_err(|e| format!("opening the dataset cache: {e}"))?;
    let mut counts = BTreeMap::new();
    let mut data = load_class(
        &catalog,
        &cache,
        &args.harmful,
        true,
        args.max_per_set,
        args.seed,
        &mut counts,
    )?;
    data.extend(load_class(
        &catalog,
        &cache,
        &args.benign,
        false,
        args.max_per_set,
        args.seed,
        &mut counts,
    )?);
    let (data, dropped_duplicates) = dedup_labeled(data);

    let encoder = Arc::new(
        SentenceEncoder::load(&args.encoder)
            .map_err(|e| format!("loading the sentence encoder: {e}"))?,
    );
    let texts: Vec<&str> = data.iter().map(|d| d.text.as_str()).collect();
    let started = std::time::Instant::now();
    let embeddings = encoder
        .embed(&texts)
        .map_err(|e| format!("embedding {} prompts: {e}", texts.len()))?;
    let embed_secs = started.elapsed().as_secs_f64();
    let labels: Vec<bool> = data.iter().map(|d| d.unsafe_).collect();
    let config = ProbeTrainConfig {
        l2: args.l2,
        test_fraction: args.test_fraction,
        seed: args.seed,
        ..Default::default()
    };
    let trained = train_probe_on_embeddings(&embeddings, &labels, &config)
        .map_err(|e| format!("training the probe: {e}"))?;

    let trained_on = format!(
        "prompts; harmful = {}; benign = {}; max_per_set = {}; seed = {}",
        args.harmful.join(","),
        args.benign.join(","),
        args.max_per_set
            .map_or("all".to_string(), |n| n.to_string()),
        args.seed
    );
    let probe = EmbeddingProbe::new(encoder.clone(), &trained, &config, trained_on)
        .map_err(|e| format!("building the probe: {e}"))?;
    probe
        .save(&args.out_dir)
        .map_err(|e| format!("saving the probe: {e}"))?;

    let mut r = String::new();
    let _ = writeln!(
        r,
        "# Embedding probe (logistic regression on {})\n",
        args.encoder.display()
    );
    let _ = writeln!(r, "Data (prompts; unsafe = harmful request):\n");
    for (k, v) in &counts {
        let _ = writeln!(r, "- {k}: {v}");
    }
    let _ = writeln!(
        r,
        "- dropped as duplicates or label conflicts: {dropped_duplicates}\n- total: {} ({} unsafe), embedded in {embed_secs:.1} s\n",
        data.len(),
        labels.iter().filter(|l| **l).count()
    );
    let _ = writeln!(
        r,
        "Split: stratified, {:.0}% held out, seed {}; L2 = {}; threshold = {}\n",
        args.test_fraction * 100.0,
        args.seed,
        args.l2,
        config.threshold
    );
    let _ = writeln!(r, "| split | n | n unsafe | AUROC | precision | recall | F1 | accuracy | ECE (10 bins) | Brier |");
    let _ = writeln!(r, "|---|---|---|---|---|---|---|---|---|---|");
    let _ = writeln!(r, "{}", metrics_line("held-out", &trained.heldout));
    let _ = writeln!(r, "{}", metrics_line("train", &trained.train));
    let _ = writeln!(
        r,
        "\nWrote {} and {} to {}.\nThis probe was trained on prompts: it detects harmful requests. Applied to responses it \
         measures harmful topic, not compliance (refusals that restate a request score high).",
        PROBE_WEIGHTS_FILE,
        PROBE_META_FILE,
        args.out_dir.display()
    );
    Ok(TrainProbeOutcome {
        trained,
        counts,
        dropped_duplicates,
        report: r,
    })
}

