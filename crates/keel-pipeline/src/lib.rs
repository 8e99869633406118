//! keel-pipeline: the engine that runs Keel experiments, knowing nothing of machine learning.
//!
//! A pipeline is a YAML file naming stages, each of a registered [`StageKind`], wired output to
//! input by bounded channels. This crate
//!
//! * parses pipeline files into a spanned tree ([`yaml`]) so that every problem is reported with
//!   file, line and column ([`Diagnostic`]), applies `--set` overrides ([`apply_override`]) and
//!   validates the whole graph before any work starts ([`validate`], [`load`]);
//! * runs it ([`run`]): each stage on its own thread with a [`StageContext`], edges as bounded
//!   crossbeam channels (backpressure), the first failure cancelling everything promptly, and a
//!   run directory with `manifest.json` (written before any stage starts), `metrics.jsonl`,
//!   per-stage logs and `status.json`;
//! * shares feedback through a versioned [`PolicyStore`] with a declared maximum staleness;
//! * expands and runs sweeps ([`expand_sweep`], [`run_sweep`]) with skip-on-rerun, summary tables
//!   with bootstrap confidence intervals, and Slurm job arrays ([`emit_slurm`]);
//! * documents every registered kind for `keel list` ([`list_text`], [`list_markdown`]);
//! * ships small stage kinds for tests and examples ([`testkit`]).
//!
//! The message types behind port type names belong to the stage crates; the engine only checks
//! that connected ports agree on the name.
//!
//! ```
//! use keel_pipeline::{load_str, run, testkit, RunOptions};
//!
//! let (registry, _recorder) = testkit::registry();
//! let yaml = "
//! name: doc
//! seed: 1
//! stages:
//!   src: {use: counter, with: {count: 3}}
//!   sink: {use: sink, inputs: {in: src.out}}
//! ";
//! let pipeline = load_str("doc.yaml", yaml, &["stages.src.with.count=4".into()], &registry)?;
//! let runs = std::env::temp_dir().join(format!("keel-doc-{}", std::process::id()));
//! let report = run(&pipeline, &RunOptions { runs_root: runs.clone(), ..RunOptions::default() })?;
//! assert_eq!(keel_pipeline::last_metrics(&report.run_dir)["sink/count"], 4.0);
//! # std::fs::remove_dir_all(&runs)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod cancel;
mod context;
mod diag;
mod error;
mod document;
mod dry_run;
mod load;
mod params;
mod policy;
mod progress;
mod registry;
mod run_files;
mod runner;
mod sweep;
mod sweep_cells;
mod validated;
mod validation;
pub mod testkit;
pub mod yaml;

pub use cancel::CancelHandle;
pub use context::StageContext;
pub use diag::{closest, did_you_mean, Diagnostic, Diagnostics, Span};
pub use error::{BoxError, RunError, StageError};
pub use params::{ParamProblem, ParamRange, ParamSpec, ParamType, Params};
pub use document::{apply_override, PipelineDoc, MAX_PIPELINE_BYTES};
pub use dry_run::dry_run;
pub use load::{load, load_str, validate};
pub use policy::{PolicyStore, Shared, Snapshot};
pub use progress::{NoProgress, Progress, ProgressBar, ProgressEvent, ProgressSink, RecordingProgress};
pub use registry::{list_markdown, list_text, DryRun, PortSpec, Registry, ResourceSpec, Stage, StageKind};
pub use run_files::{check_run_id, read_status, utc_now, InputFile, Manifest, RunStatus, StageStatus, StatusFile, MAX_RUN_ID_LEN};
pub use runner::{run, RunOptions, RunReport, DEFAULT_CHANNEL_CAPACITY};
pub use sweep::{
    bootstrap_ci, cell_dir, cell_is_complete, emit_slurm, last_metrics, mean_std, run_cell, run_sweep, summarize, sweep_dir,
    CellOutcome, SlurmOptions, SummaryRow, SweepOptions, SweepReport,
};
pub use sweep_cells::{expand_sweep, SweepCell};
pub use validated::{
    canonical_json, CellInfo, DryRunInfo, Pipeline, PortRef, ResourceDecl, StageInstance, SweepSpec, DEFAULT_MAX_SWEEP_CELLS,
    RESOURCE_KINDS,
};
