//! The exception hierarchy and the conversions from Keel's Rust errors.
//!
//! Why a hierarchy rather than `RuntimeError`: a notebook wants to tell "my pipeline file is
//! wrong" (fix the YAML, `ValidationError` with the diagnostics as data) from "a stage failed
//! after an hour" (`RunFailedError`, the run directory still readable) from a reward that could
//! not be computed. Messages are the `Display` text of the Rust error, the same words the CLI
//! prints after `error:`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;

create_exception!(keel, KeelError, PyException, "Base class of every error raised by Keel.");
create_exception!(
    keel,
    ValidationError,
    KeelError,
    "A pipeline (or an override) is invalid. `str(e)` lists every problem as `file:line:col: error: ...`, \
     as `keel validate` prints them; `e.diagnostics` holds them as dicts (file, line, col, message, help)."
);
create_exception!(
    keel,
    RunFailedError,
    KeelError,
    "A run did not complete: a stage failed, or its directory or manifest could not be written. \
     `e.run_dir` is the run directory when one was created (its logs and status.json say more)."
);
create_exception!(
    keel,
    SweepFailedError,
    RunFailedError,
    "Some cells of a sweep failed; the others ran and the summary was written (`e.sweep`)."
);
create_exception!(
    keel,
    CancelledError,
    KeelError,
    "A run was cancelled from outside (the run directory stays readable and can be resumed)."
);
create_exception!(
    keel,
    VerifyError,
    KeelError,
    "A math answer could not be verified (input over the size limit, deadline exceeded) and \
     on_error='raise' was asked for."
);
create_exception!(keel, JudgeError, KeelError, "A safety judge could not be built or failed on an input.");
create_exception!(keel, ModelError, KeelError, "A model file could not be read, converted or written.");

/// Adds the exception types to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("KeelError", py.get_type::<KeelError>())?;
    m.add("ValidationError", py.get_type::<ValidationError>())?;
    m.add("RunFailedError", py.get_type::<RunFailedError>())?;
    m.add("SweepFailedError", py.get_type::<SweepFailedError>())?;
    m.add("CancelledError", py.get_type::<CancelledError>())?;
    m.add("VerifyError", py.get_type::<VerifyError>())?;
    m.add("JudgeError", py.get_type::<JudgeError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    Ok(())
}

/// The text of a panic payload.
pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

/// The `KeelError` a caught panic becomes. A panic is a bug in Keel, never the user's input, so
/// the message says so rather than letting PyO3's `PanicException` (a `BaseException` that
/// `except Exception` does not catch) escape.
pub(crate) fn panic_error(p: &(dyn std::any::Any + Send)) -> PyErr {
    KeelError::new_err(format!("internal error (a bug in Keel, please report it): {}", panic_text(p)))
}

/// Runs an entry point's body, turning a panic into a `KeelError`.
pub(crate) fn guard<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(panic_error(&*p)),
    }
}

/// A `ValidationError` for diagnostics: the message as the CLI prints it, and each diagnostic as a
/// dict on `e.diagnostics`, so a notebook can point at the line.
pub(crate) fn validation_error(py: Python<'_>, d: &keel_pipeline::Diagnostics) -> PyErr {
    let err = ValidationError::new_err(d.to_string());
    let items: PyResult<Vec<Bound<'_, PyDict>>> = d
        .iter()
        .map(|x| {
            let item = PyDict::new(py);
            item.set_item("file", x.span.file.as_ref())?;
            item.set_item("line", x.span.line)?;
            item.set_item("col", x.span.col)?;
            item.set_item("message", &x.message)?;
            item.set_item("help", x.help.as_deref())?;
            Ok(item)
        })
        .collect();
    // Attaching the list cannot fail on a fresh exception object; if it ever did, the message
    // (which holds the same information) is still raised.
    if let Ok(items) = items {
        let _ = err.value(py).setattr("diagnostics", items);
    }
    err
}

/// The exception a failed run maps to (the CLI's exit codes 2, 130 and 1 become
/// `ValidationError`, `CancelledError` and `RunFailedError`).
pub(crate) fn run_error(py: Python<'_>, e: &keel_pipeline::RunError) -> PyErr {
    use keel_pipeline::RunError;
    match e {
        RunError::Invalid(d) => validation_error(py, d),
        RunError::InvalidRunId { .. } => ValidationError::new_err(e.to_string()),
        RunError::Cancelled { run_dir } => {
            let err = CancelledError::new_err(e.to_string());
            let _ = err.value(py).setattr("run_dir", run_dir.display().to_string());
            err
        }
        RunError::SweepFailed { .. } => SweepFailedError::new_err(e.to_string()),
        RunError::StageFailed { run_dir, .. } => {
            let err = RunFailedError::new_err(e.to_string());
            let _ = err.value(py).setattr("run_dir", run_dir.display().to_string());
            err
        }
        _ => RunFailedError::new_err(e.to_string()),
    }
}
