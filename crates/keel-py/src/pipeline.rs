//! `validate`, `run` and `sweep`: the CLI's pipeline commands as functions.
//!
//! They call the same keel-pipeline functions as `keel validate / run / sweep` with the same
//! registry, so a pipeline behaves identically from both. A run executes on a worker thread while
//! the calling thread waits with the GIL released, waking every 100 ms to let Python handle
//! signals: Ctrl-C in a notebook cancels the run exactly as Ctrl-C does for the CLI (stages stop,
//! the run directory stays readable and resumable) and then raises `KeyboardInterrupt`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_pipeline::{CancelHandle, CellOutcome, Registry, RunOptions, SweepOptions};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{guard, panic_error, run_error, validation_error, KeelError};
use crate::progress::{self, write_stderr};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(validate, m)?)?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(sweep, m)?)?;
    m.add_function(wrap_pyfunction!(list_stages, m)?)?;
    Ok(())
}

/// How often the waiting thread wakes to check for Ctrl-C.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// The command line recorded in manifest.json: `keel.<function>` (this API) followed by the
/// arguments of the equivalent `keel` CLI command, so the manifest says how to rerun it.
fn command_line(function: &str, path: &Path, overrides: &[String], extra: &[String]) -> Vec<String> {
    let mut c = vec![format!("keel.{function}"), path.display().to_string()];
    for o in overrides {
        c.push("--set".into());
        c.push(o.clone());
    }
    c.extend(extra.iter().cloned());
    c
}

/// Loads and validates a pipeline file with overrides, as every command does first.
fn load(py: Python<'_>, path: &Path, overrides: &[String], registry: &Registry) -> PyResult<keel_pipeline::Pipeline> {
    py.detach(|| keel_pipeline::load(path, overrides, registry)).map_err(|d| validation_error(py, &d))
}

/// Runs `job` on a worker thread and waits for it with the GIL released, cancelling `cancel` on
/// Ctrl-C. Returns the job's value and, if the user interrupted, the `KeyboardInterrupt` to raise
/// once the job has stopped. A panic in the job becomes a `KeelError`.
fn run_interruptible<T: Send + 'static>(
    py: Python<'_>,
    cancel: &CancelHandle,
    job: impl FnOnce() -> T + Send + 'static,
) -> PyResult<(T, Option<PyErr>)> {
    let (tx, rx) = crossbeam::channel::bounded(1);
    let worker = std::thread::Builder::new()
        .name("keel-run".into())
        .spawn(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            let _ = tx.send(out);
        })
        .map_err(|e| KeelError::new_err(format!("starting the run's thread: {e}")))?;
    let mut interrupt: Option<PyErr> = None;
    let outcome = loop {
        match py.detach(|| rx.recv_timeout(SIGNAL_POLL)) {
            Ok(out) => break out,
            Err(crossbeam::channel::RecvTimeoutError::Timeout) => {
                if interrupt.is_none() {
                    if let Err(e) = py.check_signals() {
                        write_stderr("\ninterrupted: stopping stages (the run directory stays readable)");
                        cancel.cancel();
                        interrupt = Some(e);
                    }
                }
            }
            Err(crossbeam::channel::RecvTimeoutError::Disconnected) => {
                return Err(KeelError::new_err("internal error (a bug in Keel): the run's thread ended without a result"));
            }
        }
    };
    // Joined without the GIL: whatever the worker drops last (progress bars) may write through
    // Python's sys.stderr and so take the GIL.
    let _ = py.detach(|| worker.join());
    match outcome {
        Ok(v) => Ok((v, interrupt)),
        Err(p) => Err(panic_error(&*p)),
    }
}

/// Validates a pipeline file (schema, stage kinds, parameters, wiring, cycles and every sweep
/// cell) without running it. Returns a dict: `name`, `description`, `stages` (names in file
/// order), `config_hash`, `sweep_cells` (number of cells, or None without a `sweep:` block).
/// Raises `ValidationError` with every problem as `file:line:col: error: ...`.
#[pyfunction]
#[pyo3(signature = (path, overrides=Vec::new()))]
fn validate<'py>(py: Python<'py>, path: PathBuf, overrides: Vec<String>) -> PyResult<Bound<'py, PyDict>> {
    guard(|| {
        let registry = keel_stages::registry();
        let p = load(py, &path, &overrides, &registry)?;
        let cells = match &p.sweep {
            Some(_) => Some(keel_pipeline::expand_sweep(&p, &registry).map_err(|d| validation_error(py, &d))?.len()),
            None => None,
        };
        let d = PyDict::new(py);
        d.set_item("name", &p.name)?;
        d.set_item("description", p.description.as_deref())?;
        d.set_item("stages", p.stages.iter().map(|s| s.name.clone()).collect::<Vec<_>>())?;
        d.set_item("config_hash", p.config_hash())?;
        d.set_item("sweep_cells", cells)?;
        Ok(d)
    })
}

/// Runs a pipeline (as `keel run`): validates it completely, writes
/// `<runs_dir>/<pipeline>/<run_id>/manifest.json`, then runs every stage on its own thread.
/// Returns a dict: `run_dir`, `run_id`, `config_hash`, `wall_time_s`, `dry_run`, and `stages`
/// (name -> {status, wall_time_s, error}).
#[pyfunction]
#[pyo3(signature = (path, overrides=Vec::new(), runs_dir=PathBuf::from("runs"), run_id=None, resume=false, dry_run=false, progress=None))]
#[allow(clippy::too_many_arguments)]
fn run<'py>(
    py: Python<'py>,
    path: PathBuf,
    overrides: Vec<String>,
    runs_dir: PathBuf,
    run_id: Option<String>,
    resume: bool,
    dry_run: bool,
    progress: Option<bool>,
) -> PyResult<Bound<'py, PyDict>> {
    guard(|| {
        if resume && run_id.is_none() {
            return Err(PyValueError::new_err("resume=True needs the run_id of the interrupted run"));
        }
        if resume && dry_run {
            return Err(PyValueError::new_err("dry_run=True cannot resume a run"));
        }
        let registry = keel_stages::registry();
        let mut p = load(py, &path, &overrides, &registry)?;
        if dry_run {
            p = keel_pipeline::dry_run(&p, &registry).map_err(|d| validation_error(py, &d))?;
            let info = p.dry_run.clone().unwrap_or_default();
            write_stderr(&format!("dry run: {} changes (recorded in manifest.json under `dry_run`)", info.changes.len()));
            for n in &info.notes {
                write_stderr(&format!("  note: {n}"));
            }
        }
        let mut extra = vec!["--runs-dir".to_string(), runs_dir.display().to_string()];
        if let Some(id) = &run_id {
            extra.extend(["--run-id".to_string(), id.clone()]);
        }
        if resume {
            extra.push("--resume".into());
        }
        if dry_run {
            extra.push("--dry-run".into());
        }
        let cancel = CancelHandle::new();
        let opts = RunOptions {
            runs_root: runs_dir,
            run_id,
            progress: progress::sink(py, progress),
            cancel: cancel.clone(),
            resume,
            command_line: command_line("run", &path, &overrides, &extra),
            ..RunOptions::default()
        };
        let is_dry = p.dry_run.is_some();
        let (result, interrupt) = run_interruptible(py, &cancel, move || keel_pipeline::run(&p, &opts))?;
        if let Some(e) = interrupt {
            return Err(e);
        }
        let report = result.map_err(|e| run_error(py, &e))?;
        let d = PyDict::new(py);
        d.set_item("run_dir", report.run_dir.display().to_string())?;
        d.set_item("run_id", &report.run_id)?;
        d.set_item("config_hash", &report.config_hash)?;
        d.set_item("wall_time_s", report.wall_time_s)?;
        d.set_item("dry_run", is_dry)?;
        let stages = PyDict::new(py);
        for (name, s) in &report.stages {
            let one = PyDict::new(py);
            one.set_item("status", &s.status)?;
            one.set_item("wall_time_s", s.wall_time_s)?;
            one.set_item("error", s.error.as_deref())?;
            stages.set_item(name, one)?;
        }
        d.set_item("stages", stages)?;
        Ok(d)
    })
}

/// Runs every cell of a pipeline's `sweep:` block (as `keel sweep`; cells already complete are
/// skipped), then writes summary.csv / summary.md with means and 95% bootstrap confidence
/// intervals and the sweep's report.md. Returns a dict: `dir`, `summary_csv`, `summary_md`,
/// `report_md` (or None), `cells` (index, id, group, seed, dir, outcome, error) and `failure`
/// (the message of a failed or cancelled sweep, else None). With `dry_run=True` only the cells
/// are listed (outcome None) and nothing runs.
#[pyfunction]
#[pyo3(signature = (path, overrides=Vec::new(), jobs=1, runs_dir=PathBuf::from("runs"), dry_run=false, progress=None))]
fn sweep<'py>(
    py: Python<'py>,
    path: PathBuf,
    overrides: Vec<String>,
    jobs: usize,
    runs_dir: PathBuf,
    dry_run: bool,
    progress: Option<bool>,
) -> PyResult<Bound<'py, PyDict>> {
    guard(|| {
        if jobs == 0 {
            return Err(PyValueError::new_err("jobs must be at least 1"));
        }
        let registry = keel_stages::registry();
        let p = load(py, &path, &overrides, &registry)?;
        let cells = keel_pipeline::expand_sweep(&p, &registry).map_err(|d| validation_error(py, &d))?;
        let dir = keel_pipeline::sweep_dir(&runs_dir, &p.name);
        let cell_list = |outcomes: Option<&[(keel_pipeline::CellInfo, CellOutcome)]>| -> PyResult<Bound<'py, PyList>> {
            let list = PyList::empty(py);
            for (i, c) in cells.iter().enumerate() {
                let item = PyDict::new(py);
                item.set_item("index", c.info.index)?;
                item.set_item("id", &c.info.id)?;
                item.set_item("group", &c.info.group)?;
                item.set_item("seed", c.info.seed)?;
                item.set_item("dir", keel_pipeline::cell_dir(&runs_dir, c).display().to_string())?;
                let (outcome, error) = match outcomes.and_then(|o| o.get(i)) {
                    None => (None, None),
                    Some((_, CellOutcome::Complete)) => (Some("complete"), None),
                    Some((_, CellOutcome::Skipped)) => (Some("skipped"), None),
                    Some((_, CellOutcome::Cancelled)) => (Some("cancelled"), None),
                    Some((_, CellOutcome::Failed(m))) => (Some("failed"), Some(m.clone())),
                };
                item.set_item("outcome", outcome)?;
                item.set_item("error", error)?;
                list.append(item)?;
            }
            Ok(list)
        };
        let d = PyDict::new(py);
        d.set_item("dir", dir.display().to_string())?;
        if dry_run {
            d.set_item("summary_csv", py.None())?;
            d.set_item("summary_md", py.None())?;
            d.set_item("report_md", py.None())?;
            d.set_item("cells", cell_list(None)?)?;
            d.set_item("failure", py.None())?;
            return Ok(d);
        }
        let cancel = CancelHandle::new();
        let opts = SweepOptions {
            runs_root: runs_dir.clone(),
            jobs,
            progress: progress::sink(py, progress),
            cancel: cancel.clone(),
            command_line: command_line("sweep", &path, &overrides, &["--jobs".into(), jobs.to_string(), "--runs-dir".into(), runs_dir.display().to_string()]),
            ..SweepOptions::default()
        };
        let job_cells = cells.clone();
        let title = format!("Sweep: {}", p.name);
        let cell_dirs: Vec<(String, PathBuf)> =
            cells.iter().map(|c| (c.info.group.clone(), keel_pipeline::cell_dir(&runs_dir, c))).collect();
        let (result, interrupt) = run_interruptible(py, &cancel, move || {
            let report = keel_pipeline::run_sweep(&job_cells, &opts)?;
            let points = keel_stages::report::write_sweep_report(&report.dir, &title, &cell_dirs)
                .map_err(|e| keel_pipeline::RunError::Other(e.full_message()))?;
            Ok::<_, keel_pipeline::RunError>((report, points))
        })?;
        if let Some(e) = interrupt {
            return Err(e);
        }
        let (report, points) = result.map_err(|e| run_error(py, &e))?;
        d.set_item("dir", report.dir.display().to_string())?;
        d.set_item("summary_csv", report.summary_csv.display().to_string())?;
        d.set_item("summary_md", report.summary_md.display().to_string())?;
        let report_md = report.dir.join("report.md");
        d.set_item("report_md", (points > 0).then(|| report_md.display().to_string()))?;
        d.set_item("cells", cell_list(Some(&report.cells))?)?;
        let failure = report.failure();
        d.set_item("failure", failure.as_ref().map(|f| f.to_string()))?;
        d.set_item("cancelled", matches!(failure, Some(keel_pipeline::RunError::Cancelled { .. })))?;
        Ok(d)
    })
}

/// Every stage kind with its ports and parameters, as `keel list` prints it (`markdown=True`:
/// the markdown of the stage reference).
#[pyfunction]
#[pyo3(signature = (markdown=false))]
fn list_stages(markdown: bool) -> PyResult<String> {
    guard(|| {
        let registry = keel_stages::registry();
        Ok(if markdown { keel_pipeline::list_markdown(&registry) } else { keel_pipeline::list_text(&registry) })
    })
}
