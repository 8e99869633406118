//! `keel`: the command-line front end. Thin by design: every command parses arguments and calls
//! into the library crates, so that everything the CLI does can also be done from Rust.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad input (invalid pipeline, unknown dataset,
//! missing file, bad arguments), 130 cancelled by Ctrl-C.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use keel_pipeline::{CancelHandle, Registry, RunError, RunOptions, SweepOptions};

/// `println!` that ends the process quietly when standard output is closed (e.g. `keel list | head`)
/// instead of panicking on the broken pipe.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// `print!` with the same broken-pipe handling as [`outln!`].
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout(), $($t)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod progress;
mod judge_accuracy_cmd;
mod safety_cmd;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Process-wide CPU settings that training speed depends on (docs/performance.md): keep freed
/// memory committed (training re-allocates the same buffers every step; purged pages come back
/// as page faults and kernel zeroing, up to a quarter of a step), and give candle's spinning
/// element-wise pool no workers so matmuls get every core. Called first in `main`, before any
/// other thread exists.
fn tune_runtime() {
    keel_model::ops::keep_freed_memory();
    keel_model::ops::tune_cpu_runtime();
}

/// Reproducible safety-vs-capability experiments on LLM post-training.
#[derive(Parser)]
#[command(name = "keel", version, about, long_about = None)]
struct Cli {
    /// Hide progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: validates it completely, writes runs/<pipeline>/<run-id>/manifest.json, then
    /// runs every stage on its own thread.
    Run(RunArgs),
    /// Validate pipelines (schema, stage kinds, parameters, wiring, cycles) without running them.
    Validate {
        /// The pipeline YAML files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Overrides, as for `keel run`.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        sets: Vec<String>,
    },
    /// List every stage kind with its ports, parameters and resources.
    List {
        /// Print markdown (the stage reference in docs/pipelines.md is generated this way).
        #[arg(long)]
        markdown: bool,
    },
    /// Run every cell of a pipeline's `sweep:` block (cells already complete are skipped) and
    /// aggregate summary.csv / summary.md with means and 95% bootstrap confidence intervals.
    Sweep(SweepArgs),
    /// Regenerate report.md of a run directory from its results.json.
    Report {
        /// A run directory (runs/<pipeline>/<run-id>).
        run_dir: PathBuf,
    },
    /// Datasets: list the catalogue, show one, fetch into the cache (KEEL_DATA_DIR).
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Models: import a GGUF file, list presets, describe a model.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Talk to a model (a checkpoint directory, a .gguf file or hf://org/name).
    Chat {
        /// The model reference.
        model: String,
        /// One-shot: answer this prompt and exit (otherwise read prompts from standard input).
        #[arg(long)]
        prompt: Option<String>,
        /// Completion token budget.
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
        /// Sampling temperature (0 = greedy).
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// System message.
        #[arg(long)]
        system: Option<String>,
        /// Sampling seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Evaluate a model's safety and over-refusal on catalogued benchmarks (refusal lexicons).
    Eval {
        /// The model reference.
        model: String,
        /// Catalogued sets; each is split by its items' safety labels: harmful items measure
        /// refusal (safety), benign ones over-refusal (XSTest holds both).
        #[arg(long, value_delimiter = ',', default_value = "advbench,jbb-harmful,jbb-benign,xstest")]
        sets: Vec<String>,
        /// Capability set with verifiable answers (e.g. gsm8k-test); empty to skip.
        #[arg(long, default_value = "")]
        task: String,
        /// At most this many prompts per set (0 = all).
        #[arg(long, default_value_t = 0)]
        max: usize,
        /// Completion token budget.
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// Write results.json and report.md here.
        #[arg(long, default_value = "runs/eval")]
        out: PathBuf,
    },
    /// Safety classifiers: train the embedding probe.
    Safety {
        #[command(subcommand)]
        command: SafetyCommand,
    },
    /// Serve a model through OpenAI-compatible completions and chat completions APIs on 127.0.0.1.
    Serve {
        /// The model reference.
        model: String,
        /// TCP port.
        #[arg(long, default_value_t = 8000)]
        port: u16,
    },
}

/// The arguments of `keel run`.
#[derive(Args)]
struct RunArgs {
    /// The pipeline YAML file.
    file: PathBuf,
    /// Override a value before validation, e.g. `--set stages.learn.with.beta=0.04` (repeatable).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    sets: Vec<String>,
    /// Root directory of run directories.
    #[arg(long, default_value = "runs")]
    runs_dir: PathBuf,
    /// Explicit run id (default: a UTC timestamp).
    #[arg(long)]
    run_id: Option<String>,
    /// Run only cell N of the pipeline's sweep (as Slurm array tasks do).
    #[arg(long, value_name = "N")]
    sweep_cell: Option<usize>,
    /// Continue the interrupted run `--run-id ID` in place: same file and --set overrides;
    /// stages restore their checkpoints (learners continue bit-identically on CPU).
    #[arg(long, requires = "run_id")]
    resume: bool,
    /// Execute the pipeline for real but shrunk, to check a (GPU) recipe end to end on a CPU
    /// in seconds: every training stage runs 2 steps, evaluations a few items per set with short
    /// generations, and every `model` stage becomes a tiny random model of the same architecture
    /// family. The run goes to runs/<pipeline>/dry-run/<id> and its manifest says so.
    #[arg(long, conflicts_with_all = ["sweep_cell", "resume"])]
    dry_run: bool,
}

/// The arguments of `keel sweep`.
#[derive(Args)]
struct SweepArgs {
    /// The pipeline YAML file with a `sweep:` block.
    file: PathBuf,
    /// Overrides applied to every cell.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    sets: Vec<String>,
    /// Cells run concurrently.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Root directory of run directories.
    #[arg(long, default_value = "runs")]
    runs_dir: PathBuf,
    /// Instead of running, write a Slurm job-array script (one cell per task) into DIR.
    #[arg(long, value_names = ["slurm", "DIR"], num_args = 2)]
    emit: Option<Vec<String>>,
    /// Only list the cells.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand)]
enum DataCommand {
    /// List catalogued datasets and whether each is in the cache.
    List,
    /// Show a dataset's manifest: URL, sha256, licence, citation, field mapping.
    Show {
        /// Dataset name.
        name: String,
    },
    /// Download and verify datasets into the cache.
    Fetch {
        /// Dataset names (or `all`).
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum SafetyCommand {
    /// Train a logistic-regression probe on sentence embeddings (all-MiniLM-L6-v2) of harmful vs
    /// benign prompts; reports precision, recall, AUROC and calibration on a held-out split and
    /// saves the head as safetensors.
    TrainProbe {
        /// Sentence-encoder directory (e.g. $KEEL_ASSETS/all-minilm-l6-v2).
        #[arg(long)]
        encoder: PathBuf,
        /// Output directory for probe.safetensors and probe.json.
        #[arg(long)]
        out: PathBuf,
        /// Harmful (unsafe-class) datasets.
        #[arg(long, value_delimiter = ',', default_value = "advbench,jbb-harmful,xstest")]
        harmful: Vec<String>,
        /// Benign (safe-class) datasets.
        #[arg(long, value_delimiter = ',', default_value = "alpaca-5000,jbb-benign,xstest")]
        benign: Vec<String>,
        /// At most this many prompts per dataset (seeded sample); 0 = all.
        #[arg(long, default_value_t = 400)]
        max_per_set: usize,
        /// Held-out fraction.
        #[arg(long, default_value_t = 0.2)]
        test_fraction: f64,
        /// Seed of sampling and split.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Measure judges against (prompt, response) pairs labelled by reading them (e.g.
    /// data/judge_labels/labelled.jsonl): accuracy, precision / recall and Cohen's kappa on
    /// refusal and on harm, confusions per human label and disagreements per dataset.
    JudgeAccuracy {
        /// The labelled JSON Lines file (fields: id, model, dataset, row, prompt_safety, prompt,
        /// response, label = refused | harmful_compliance | harmless_compliance, note).
        #[arg(long)]
        labels: PathBuf,
        /// YAML list of judges, as in `evaluate`'s `judges:` (a `model` or `probe` may name
        /// `${NAME}`, an environment variable, as in a pipeline).
        #[arg(long)]
        judges: PathBuf,
        /// Only the pairs of this model.
        #[arg(long)]
        model: Option<String>,
        /// List every disagreement with the pair's note.
        #[arg(long)]
        list_misses: bool,
        /// Also write every judge's counts and disagreements here as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Convert a GGUF file into model.safetensors + config.json + tokenizer files.
    Import {
        /// The .gguf file.
        file: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// List the from-scratch model presets.
    Presets,
    /// Describe a model: architecture, sizes, parameters.
    Info {
        /// The model reference.
        model: String,
    },
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn input(message: impl Into<String>) -> Self {
        Failure { code: 2, message: message.into() }
    }
    fn runtime(message: impl Into<String>) -> Self {
        Failure { code: 1, message: message.into() }
    }
}

impl From<RunError> for Failure {
    fn from(e: RunError) -> Self {
        match &e {
            RunError::Invalid(_) => Failure::input(e.to_string()),
            RunError::Cancelled { .. } => Failure { code: 130, message: e.to_string() },
            _ => Failure::runtime(e.to_string()),
        }
    }
}

fn main() -> ExitCode {
    tune_runtime();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn cancel_on_ctrl_c() -> CancelHandle {
    let cancel = CancelHandle::new();
    let c = cancel.clone();
    // A second handler registration fails only if one exists already; cancellation then still
    // works through the existing one.
    let _ = ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: stopping stages (the run directory stays readable)");
        c.cancel();
    });
    cancel
}

fn dispatch(cli: Cli) -> Result<(), Failure> {
    let registry = keel_stages::registry();
    let quiet = cli.quiet;
    match cli.command {
        Command::Validate { files, sets } => validate(&files, &sets, &registry),
        Command::List { markdown } => list(markdown, &registry),
        Command::Run(args) => run(args, quiet, &registry),
        Command::Sweep(args) => sweep(args, quiet, &registry),
        Command::Report { run_dir } => report(&run_dir),
        Command::Data { command } => data(command),
        Command::Model { command } => model(command),
        Command::Chat { model, prompt, max_new_tokens, temperature, system, seed } => {
            chat(&model, prompt, max_new_tokens, temperature, system, seed)
        }
        Command::Eval { model, sets, task, max, max_new_tokens, out } => {
            eval(&model, &sets, &task, max, max_new_tokens, &out)
        }
        Command::Serve { model, port } => serve(&model, port),
        Command::Safety { command } => safety(command),
    }
}

/// `keel validate`: loads every file, printing each one's verdict, and fails naming the invalid ones.
fn validate(files: &[PathBuf], sets: &[String], registry: &Registry) -> Result<(), Failure> {
    let mut invalid = Vec::new();
    for file in files {
        match keel_pipeline::load(file, sets, registry) {
            Ok(p) => outln!("{}: valid ({} stages, config hash {})", file.display(), p.stages.len(), &p.config_hash()[..12]),
            Err(d) => {
                eprintln!("{d}");
                invalid.push(file.display().to_string());
            }
        }
    }
    match invalid.len() {
        0 => Ok(()),
        n => Err(Failure::input(format!("{n} of {} pipelines invalid: {}", files.len(), invalid.join(", ")))),
    }
}

/// `keel list`: the stage kinds, as text or markdown.
fn list(markdown: bool, registry: &Registry) -> Result<(), Failure> {
    if markdown {
        out!("{}", keel_pipeline::list_markdown(registry));
    } else {
        out!("{}", keel_pipeline::list_text(registry));
    }
    Ok(())
}

/// `keel run`: one pipeline (or one cell of its sweep), optionally shrunk to a dry run.
fn run(args: RunArgs, quiet: bool, registry: &Registry) -> Result<(), Failure> {
    let RunArgs { file, sets, runs_dir, run_id, sweep_cell, resume, dry_run } = args;
    let mut p = keel_pipeline::load(&file, &sets, registry).map_err(|d| Failure::input(d.to_string()))?;
    if dry_run {
        p = keel_pipeline::dry_run(&p, registry).map_err(|d| Failure::input(d.to_string()))?;
        let info = p.dry_run.clone().unwrap_or_default();
        eprintln!("dry run: {} changes (recorded in manifest.json under `dry_run`)", info.changes.len());
        for n in &info.notes {
            eprintln!("  note: {n}");
        }
    }
    let cancel = cancel_on_ctrl_c();
    let progress = Arc::new(progress::Bars::new(quiet));
    if let Some(index) = sweep_cell {
        let cells = keel_pipeline::expand_sweep(&p, registry).map_err(|d| Failure::input(d.to_string()))?;
        let cell = cells.get(index).ok_or_else(|| {
            Failure::input(format!("--sweep-cell {index} is out of range: the sweep has {} cells (0..{})", cells.len(), cells.len()))
        })?;
        let opts = SweepOptions { runs_root: runs_dir, progress, cancel, ..SweepOptions::default() };
        let outcome = keel_pipeline::run_cell(cell, &opts)?;
        outln!("cell {} ({}): {:?}", index, cell.info.id, outcome);
        return Ok(());
    }
    let opts = RunOptions { runs_root: runs_dir, run_id, progress, cancel, resume, ..RunOptions::default() };
    let report = keel_pipeline::run(&p, &opts)?;
    let what = if p.dry_run.is_some() { "dry run (tiny stand-ins, not results)" } else { "run" };
    outln!("{what} complete in {:.1}s: {}", report.wall_time_s, report.run_dir.display());
    let md = report.run_dir.join("report.md");
    if md.exists() {
        outln!("report: {}", md.display());
    }
    Ok(())
}

/// `keel sweep`: lists the cells, emits a Slurm script for them, or runs them all and writes the
/// sweep's summary and report.
fn sweep(args: SweepArgs, quiet: bool, registry: &Registry) -> Result<(), Failure> {
    let SweepArgs { file, sets, jobs, runs_dir, emit, dry_run } = args;
    let p = keel_pipeline::load(&file, &sets, registry).map_err(|d| Failure::input(d.to_string()))?;
    let cells = keel_pipeline::expand_sweep(&p, registry).map_err(|d| Failure::input(d.to_string()))?;
    if dry_run {
        for c in &cells {
            outln!("{:>4}  {}", c.info.index, c.info.id);
        }
        return Ok(());
    }
    if let Some(emit) = emit {
        return emit_slurm(&emit, &file, &sets, &runs_dir, &cells);
    }
    let opts = SweepOptions {
        runs_root: runs_dir,
        jobs,
        progress: Arc::new(progress::Bars::new(quiet)),
        cancel: cancel_on_ctrl_c(),
        ..SweepOptions::default()
    };
    let runs_root = opts.runs_root.clone();
    let report = keel_pipeline::run_sweep(&cells, &opts)?;
    let cell_dirs: Vec<(String, PathBuf)> =
        cells.iter().map(|c| (c.info.group.clone(), keel_pipeline::cell_dir(&runs_root, c))).collect();
    let points = keel_stages::report::write_sweep_report(&report.dir, &format!("Sweep: {}", p.name), &cell_dirs)
        .map_err(|e| Failure::runtime(e.full_message()))?;
    outln!("sweep done: {}\nsummary: {}", report.dir.display(), report.summary_md.display());
    if points > 0 {
        outln!("report: {} ({points} branch points)", report.dir.join("report.md").display());
    }
    if let Some(failure) = report.failure() {
        return Err(failure.into());
    }
    Ok(())
}

/// `keel sweep --emit slurm DIR`: a job-array script whose tasks rerun this binary on one cell
/// each, with the same runs directory and overrides.
fn emit_slurm(emit: &[String], file: &Path, sets: &[String], runs_dir: &Path, cells: &[keel_pipeline::SweepCell]) -> Result<(), Failure> {
    if emit[0] != "slurm" {
        return Err(Failure::input(format!("--emit supports `slurm`, not `{}`", emit[0])));
    }
    let dir = PathBuf::from(&emit[1]);
    let mut extra = vec!["--runs-dir".to_string(), runs_dir.display().to_string()];
    for s in sets {
        extra.push("--set".into());
        extra.push(s.clone());
    }
    let binary = std::env::current_exe().map_err(|e| Failure::runtime(format!("locating the keel binary: {e}")))?;
    let mut opts = keel_pipeline::SlurmOptions::new(std::fs::canonicalize(file).unwrap_or(file.to_path_buf()));
    opts.binary = binary;
    opts.extra_args = extra;
    let (script, list) = keel_pipeline::emit_slurm(&dir, cells, &opts)?;
    outln!("wrote {} ({} cells; submit with `sbatch {}`) and {}", script.display(), cells.len(), script.display(), list.display());
    Ok(())
}

/// `keel report`: regenerates report.md of a run directory from its results.json.
fn report(run_dir: &Path) -> Result<(), Failure> {
    let path = run_dir.join("results.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Failure::input(format!("reading {}: {e} (is this a run directory with a `report` stage?)", path.display())))?;
    let results: Vec<keel_stages::messages::EvalResult> =
        serde_json::from_str(&text).map_err(|e| Failure::input(format!("{}: {e}", path.display())))?;
    let title = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    keel_stages::report::write_run_report(run_dir, &format!("Keel report: {title}"), &results)
        .map_err(|e| Failure::runtime(e.full_message()))?;
    outln!("{}", run_dir.join("report.md").display());
    Ok(())
}

/// `keel safety`: trains the embedding probe and writes the training set's provenance next to it.
fn safety(command: SafetyCommand) -> Result<(), Failure> {
    let (encoder, out, harmful, benign, max_per_set, test_fraction, seed) = match command {
        SafetyCommand::TrainProbe { encoder, out, harmful, benign, max_per_set, test_fraction, seed } => {
            (encoder, out, harmful, benign, max_per_set, test_fraction, seed)
        }
        SafetyCommand::JudgeAccuracy { labels, judges, model, list_misses, json } => {
            return judge_accuracy(judge_accuracy_cmd::JudgeAccuracyArgs { labels, judges, model, list_misses }, json)
        }
    };
    let mut args = safety_cmd::TrainProbeArgs::default_recipe(encoder, out);
    args.harmful = harmful;
    args.benign = benign;
    args.max_per_set = (max_per_set > 0).then_some(max_per_set);
    args.test_fraction = test_fraction;
    args.seed = seed;
    let outcome = safety_cmd::train_probe_detailed(&args).map_err(Failure::runtime)?;
    // Provenance of the training set next to the head: what was sampled from where.
    let provenance = serde_json::json!({
        "counts": outcome.counts,
        "dropped_duplicates": outcome.dropped_duplicates,
        "held_out_metrics": outcome.trained.heldout,
        "n_train": outcome.trained.n_train,
    });
    let path = args.out_dir.join("training_set.json");
    std::fs::write(&path, provenance.to_string()).map_err(|e| Failure::runtime(format!("writing {}: {e}", path.display())))?;
    outln!("{}", outcome.report);
    Ok(())
}

fn data(command: DataCommand) -> Result<(), Failure> {
    let catalog = keel_data::Catalog::embedded().map_err(|e| Failure::runtime(e.to_string()))?;
    let cache = keel_data::Cache::from_env().map_err(|e| Failure::input(e.to_string()))?;
    match command {
        DataCommand::List => {
            outln!("cache: {}", cache.root().display());
            for m in catalog.iter() {
                let status = match cache.status(m) {
                    Ok(s) => format!("{s:?}"),
                    Err(e) => format!("error: {e}"),
                };
                outln!("{:<22} {:<12} {}", m.name, status, m.summary());
            }
            Ok(())
        }
        DataCommand::Show { name } => {
            let m = catalog.get(&name).map_err(|e| Failure::input(e.to_string()))?;
            outln!("{}", m.describe());
            outln!("cache path: {}", cache.path_for(m).display());
            Ok(())
        }
        DataCommand::Fetch { names } => {
            let names: Vec<String> = if names.iter().any(|n| n == "all") {
                catalog.names().into_iter().map(str::to_string).collect()
            } else {
                names
            };
            if names.is_empty() {
                return Err(Failure::input("name at least one dataset (or `all`); `keel data list` shows them"));
            }
            let mut failed = Vec::new();
            for n in &names {
                match keel_data::fetch(n, &cache) {
                    Ok(f) => outln!("{n}: {f:?}"),
                    Err(e) => {
                        eprintln!("{n}: {e}");
                        failed.push(n.clone());
                    }
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(Failure::runtime(format!("could not fetch: {}", failed.join(", "))))
            }
        }
    }
}

fn model(command: ModelCommand) -> Result<(), Failure> {
    match command {
        ModelCommand::Import { file, out } => {
            if !file.is_file() {
                return Err(Failure::input(format!("{} is not a file", file.display())));
            }
            let r = keel_model::import_gguf(&file, &out).map_err(|e| Failure::runtime(e.to_string()))?;
            outln!("imported {} ({}, {} tensors) into {}", r.gguf.display(), r.architecture, r.n_tensors, r.out_dir.display());
            Ok(())
        }
        ModelCommand::Presets => {
            for name in keel_model::PRESETS {
                match keel_model::ModelConfig::preset(name, 512) {
                    Ok(c) => outln!(
                        "{name:<10} hidden {:>4}  layers {:>2}  heads {:>2}/{:<2}  ffn {:>5}  params@vocab512 {:>10}",
                        c.hidden_size,
                        c.num_hidden_layers,
                        c.num_attention_heads,
                        c.num_key_value_heads,
                        c.intermediate_size,
                        c.num_parameters()
                    ),
                    Err(e) => outln!("{name}: {e}"),
                }
            }
            Ok(())
        }
        ModelCommand::Info { model } => {
            let p = keel_stages::policy::Policy::open(&model).map_err(|e| Failure::input(e.full_message()))?;
            outln!("{}", p.model.config().to_json_string());
            outln!("parameters: {}", p.model.num_parameters());
            outln!("tokenizer: {} tokens, eos {:?}", p.tokenizer.vocab_size(), p.tokenizer.eos_id());
            Ok(())
        }
    }
}

/// Longest line `keel chat` reads from standard input. Why a cap: a line is held whole in memory
/// (and rendered, then tokenised) before the context-window check can refuse it, so without one a
/// stream with no newline (`keel chat m < /dev/zero`) would grow until the machine runs out.
const MAX_CHAT_LINE_BYTES: usize = 4 << 20;

/// Reads one line of at most `limit` bytes; `None` at end of input.
fn read_chat_line(input: &mut impl BufRead, limit: usize) -> Result<Option<String>, Failure> {
    use std::io::Read as _;
    let mut line = String::new();
    let n = input.take(limit as u64 + 1).read_line(&mut line).map_err(|e| Failure::input(format!("reading standard input: {e}")))?;
    if n == 0 {
        return Ok(None);
    }
    if line.len() > limit {
        return Err(Failure::input(format!(
            "a line of standard input is longer than {limit} bytes, the most `keel chat` reads at once; send shorter messages"
        )));
    }
    Ok(Some(line))
}

/// Why a rendered conversation cannot be answered, in `keel chat`'s terms (its flags, the
/// conversation rather than "prompt 0"), or the engine's own message for any other error.
fn chat_generation_error(e: keel_rollout::RolloutError, model: &str, turns: usize) -> Failure {
    match e {
        keel_rollout::RolloutError::ContextOverflow { prompt_tokens, max_new_tokens, context, .. } => {
            let what = if turns > 1 { format!("the conversation ({turns} messages)") } else { "the message".to_string() };
            Failure::input(format!(
                "{what} is {prompt_tokens} tokens long with the chat template and --max-new-tokens is {max_new_tokens}, \
                 but {model}'s context window is {context} tokens (prompt tokens + --max-new-tokens must not exceed it); \
                 send a shorter message, lower --max-new-tokens or start a new chat"
            ))
        }
        other => Failure::runtime(other.to_string()),
    }
}

fn chat(model: &str, prompt: Option<String>, max_new_tokens: usize, temperature: f32, system: Option<String>, seed: u64) -> Result<(), Failure> {
    let policy = keel_stages::policy::Policy::open(model).map_err(|e| Failure::input(e.full_message()))?;
    let engine = policy.engine();
    let params = keel_rollout::SamplingParams { temperature, max_new_tokens, n: 1, seed, ..keel_rollout::SamplingParams::default() };
    params.validate().map_err(|e| Failure::input(e.to_string()))?;
    let mut history: Vec<keel_core::Message> = Vec::new();
    if let Some(s) = &system {
        history.push(keel_core::Message::new(keel_core::Role::System, s.clone()));
    }
    // A message that cannot be answered (too long for the context window) leaves the history as
    // it was, so an interactive chat can go on.
    let answer = |history: &mut Vec<keel_core::Message>, text: String| -> Result<String, Failure> {
        let mut turn = history.clone();
        turn.push(keel_core::Message::new(keel_core::Role::User, text));
        let rendered = policy.template.render(&turn, true).map_err(|e| Failure::runtime(e.to_string()))?;
        let ids = policy.encode(&rendered).map_err(|e| Failure::runtime(e.full_message()))?;
        let out = engine.generate(&[ids], &params, 0).map_err(|e| chat_generation_error(e, model, turn.len()))?;
        let reply = out.into_iter().next().and_then(|g| g.into_iter().next()).map(|c| c.text).unwrap_or_default();
        turn.push(keel_core::Message::new(keel_core::Role::Assistant, reply.clone()));
        *history = turn;
        Ok(reply)
    };
    if let Some(p) = prompt {
        outln!("{}", answer(&mut history, p)?.trim());
        return Ok(());
    }
    eprintln!("chatting with {model}; an empty line or Ctrl-D ends");
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let Some(line) = read_chat_line(&mut input, MAX_CHAT_LINE_BYTES)? else { return Ok(()) };
        if line.trim().is_empty() {
            return Ok(());
        }
        match answer(&mut history, line.trim().to_string()) {
            Ok(reply) => outln!("{}", reply.trim()),
            // Interactive: say why and wait for the next message; piped input stops with the error.
            Err(f) if f.code == 2 && std::io::IsTerminal::is_terminal(&std::io::stdin()) => eprintln!("error: {}", f.message),
            Err(f) => return Err(f),
        }
    }
}

/// `keel safety judge-accuracy`: prints the report; a labelled file or judges file that cannot be
/// read is an input error (exit 2), a judge that fails while judging a runtime one.
fn judge_accuracy(args: judge_accuracy_cmd::JudgeAccuracyArgs, json: Option<PathBuf>) -> Result<(), Failure> {
    for (what, path) in [("labelled set", &args.labels), ("judges file", &args.judges)] {
        if !path.is_file() {
            return Err(Failure::input(format!("the {what} {} is not a file", path.display())));
        }
    }
    keel_safety::load_labelled(&args.labels).map_err(|e| Failure::input(e.to_string()))?;
    judge_accuracy_cmd::read_judge_specs(&args.judges).map_err(Failure::input)?;
    let outcome = judge_accuracy_cmd::judge_accuracy_detailed(&args).map_err(Failure::runtime)?;
    out!("{}", outcome.report);
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&outcome.results).map_err(|e| Failure::runtime(e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| Failure::runtime(format!("writing {}: {e}", path.display())))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn load_set(catalog: &keel_data::Catalog, cache: &keel_data::Cache, name: &str) -> Result<Vec<keel_core::Example>, Failure> {
    Ok(catalog.load(name, cache).map_err(|e| Failure::input(e.to_string()))?.examples)
}

fn set_of(name: String, mut examples: Vec<keel_core::Example>, max: usize) -> Arc<keel_stages::messages::ExampleSet> {
    if max > 0 {
        examples.truncate(max);
    }
    Arc::new(keel_stages::messages::ExampleSet::new(name, examples))
}

fn eval(model: &str, sets: &[String], task: &str, max: usize, max_new_tokens: usize, out: &Path) -> Result<(), Failure> {
    use keel_core::SafetyLabel;
    use keel_stages::evaluate::{evaluate, EvalConfig, EvalSets};
    let policy = keel_stages::policy::Policy::open(model).map_err(|e| Failure::input(e.full_message()))?;
    let catalog = keel_data::Catalog::embedded().map_err(|e| Failure::runtime(e.to_string()))?;
    let cache = keel_data::Cache::from_env().map_err(|e| Failure::input(e.to_string()))?;
    let config = EvalConfig {
        max_new_tokens,
        max_task: max,
        max_harmful: max,
        max_benign: max,
        max_per_source: 0,
        answer_format: keel_rewards::AnswerFormat::Gsm8kFlexible,
        lexicon: "both".into(),
        drift_prompts: 0,
        drift_samples: 0,
        task_samples: 0,
        judges: Vec::new(),
    };
    std::fs::create_dir_all(out).map_err(|e| Failure::runtime(format!("creating {}: {e}", out.display())))?;
    let log = keel_core::JsonlWriter::append(out.join("completions.jsonl")).map_err(|e| Failure::runtime(e.to_string()))?;
    let label = Path::new(model).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| model.to_string());
    let started = std::time::Instant::now();
    let mut results = Vec::new();
    // One evaluation per set and label, so the report shows each benchmark separately.
    let mut jobs: Vec<(String, EvalSets)> = Vec::new();
    for name in sets.iter().filter(|s| !s.is_empty()) {
        let examples = load_set(&catalog, &cache, name)?;
        let (benign, harmful): (Vec<_>, Vec<_>) = examples.into_iter().partition(|e| e.safety == Some(SafetyLabel::Benign));
        if !harmful.is_empty() {
            let set = set_of(format!("{name}"), harmful, max);
            jobs.push((format!("{name}:harmful"), EvalSets { harmful: Some(set), ..EvalSets::default() }));
        }
        if !benign.is_empty() {
            let set = set_of(format!("{name}"), benign, max);
            jobs.push((format!("{name}:benign"), EvalSets { benign: Some(set), ..EvalSets::default() }));
        }
    }
    if !task.is_empty() {
        let set = set_of(task.to_string(), load_set(&catalog, &cache, task)?, max);
        jobs.push((task.to_string(), EvalSets { task: Some(set), ..EvalSets::default() }));
    }
    for (name, sets) in jobs {
        let t = std::time::Instant::now();
        let r = evaluate(&format!("{label}:{name}"), PathBuf::from(model), &policy, None, &sets, &config, keel_core::SeedStream::new(0), Some(&log))
            .map_err(|e| Failure::runtime(e.full_message()))?;
        for (set, m) in &r.sets {
            let vals: Vec<String> = m.values.iter().filter(|(k, _)| !k.contains('/')).map(|(k, v)| format!("{k} {v:.4}")).collect();
            outln!("{set:<28} n {:<5} {}  ({:.0}s)", m.n, vals.join("  "), t.elapsed().as_secs_f64());
        }
        results.push(r);
    }
    std::fs::create_dir_all(out).map_err(|e| Failure::runtime(format!("creating {}: {e}", out.display())))?;
    keel_stages::report::write_run_report(out, &format!("keel eval {model}"), &results).map_err(|e| Failure::runtime(e.full_message()))?;
    outln!("total {:.0}s; wrote {}", started.elapsed().as_secs_f64(), out.join("report.md").display());
    Ok(())
}

fn serve(model: &str, port: u16) -> Result<(), Failure> {
    let policy = keel_stages::policy::Policy::open(model).map_err(|e| Failure::input(e.full_message()))?;
    let engine = Arc::new(policy.engine());
    let opts = keel_rollout::ServeOptions { model_name: model.to_string(), ..keel_rollout::ServeOptions::default() };
    let addr = format!("127.0.0.1:{port}");
    // Chat requests are rendered with the model's own template, as `keel chat` renders them.
    let template = Arc::clone(&policy.template);
    let render = move |messages: &[keel_core::Message]| template.render(messages, true).map_err(|e| e.to_string());
    let handle = keel_rollout::serve_chat(engine, &addr, opts.clone(), Arc::new(render)).map_err(|e| Failure::runtime(e.to_string()))?;
    eprintln!(
        "serving {model} on http://{addr}/v1/completions and /v1/chat/completions (context window {} tokens, max_tokens <= {}, \
         at most {} requests admitted at once, bodies <= {} bytes; Ctrl-C stops)",
        policy.model.config().max_position_embeddings,
        opts.max_tokens_limit,
        opts.max_pending,
        opts.max_body_bytes
    );
    let cancel = cancel_on_ctrl_c();
    while !cancel.is_cancelled() {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    handle.shutdown();
    Ok(())
}
