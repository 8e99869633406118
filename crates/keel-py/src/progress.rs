//! Progress of a run started from Python.
//!
//! In a terminal, the CLI's bars (indicatif on standard error, one per stage activity, the same
//! templates as `keel run`). In a notebook or a log, standard error is not a terminal: indicatif
//! would draw nothing, and a notebook shows only what goes through Python's `sys.stderr` (not file
//! descriptor 2), so there progress is written as short lines through `sys.stderr`: when an
//! activity starts, at every tenth of its total, and when it ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar as Bar, ProgressDrawTarget, ProgressStyle};
use keel_pipeline::{NoProgress, ProgressBar, ProgressSink};
use pyo3::prelude::*;

/// The sink for a run: `progress` is the caller's wish (`None` = show it, choosing the form).
pub(crate) fn sink(py: Python<'_>, progress: Option<bool>) -> Arc<dyn ProgressSink> {
    if progress == Some(false) {
        return Arc::new(NoProgress);
    }
    if stderr_is_terminal(py) {
        Arc::new(Bars::new())
    } else {
        Arc::new(Lines)
    }
}

/// True when Python's `sys.stderr` is file descriptor 2 and a terminal, i.e. when bars drawn on
/// descriptor 2 are what the user sees.
fn stderr_is_terminal(py: Python<'_>) -> bool {
    let check = || -> PyResult<bool> {
        let err = py.import("sys")?.getattr("stderr")?;
        let fd: i64 = err.call_method0("fileno")?.extract()?;
        Ok(fd == 2 && err.call_method0("isatty")?.extract::<bool>()?)
    };
    check().unwrap_or(false)
}

/// Writes one line to Python's `sys.stderr` (taking the GIL; called from stage threads while the
/// caller's thread waits with the GIL released). A failure to write is ignored: progress is never
/// a reason to fail a run.
pub(crate) fn write_stderr(line: &str) {
    Python::attach(|py| {
        let _ = (|| -> PyResult<()> {
            let err = py.import("sys")?.getattr("stderr")?;
            err.call_method1("write", (format!("{line}\n"),))?;
            err.call_method0("flush")?;
            Ok(())
        })();
    });
}

/// The CLI's bars (crates/keel-cli/src/progress.rs): one bar per stage activity on standard error.
struct Bars {
    multi: MultiProgress,
}

impl Bars {
    fn new() -> Self {
        Bars { multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()) }
    }
}

struct OneBar(Bar);

impl ProgressBar for OneBar {
    fn set_position(&self, position: u64) {
        self.0.set_position(position);
    }
    fn finish(&self) {
        self.0.finish();
    }
}

impl ProgressSink for Bars {
    fn begin(&self, stage: &str, label: &str, total: Option<u64>) -> Box<dyn ProgressBar> {
        let bar = match total {
            Some(n) => {
                let b = Bar::new(n);
                b.set_style(
                    ProgressStyle::with_template("{prefix:>14} {bar:30} {pos}/{len} {msg} [{elapsed_precise} eta {eta}]")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b
            }
            None => {
                let b = Bar::new_spinner();
                b.set_style(
                    ProgressStyle::with_template("{prefix:>14} {spinner} {pos} {msg} [{elapsed_precise}]")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                b
            }
        };
        let bar = self.multi.add(bar);
        bar.set_prefix(stage.to_string());
        bar.set_message(label.to_string());
        Box::new(OneBar(bar))
    }
}

/// Progress as lines through `sys.stderr`, for notebooks and logs.
struct Lines;

impl ProgressSink for Lines {
    fn begin(&self, stage: &str, label: &str, total: Option<u64>) -> Box<dyn ProgressBar> {
        let what = format!("{stage}: {label}");
        match total {
            Some(n) => write_stderr(&format!("[keel] {what}: 0/{n}")),
            None => write_stderr(&format!("[keel] {what}: started")),
        }
        Box::new(Line { what, total, started: Instant::now(), tenth: AtomicU64::new(0), position: AtomicU64::new(0) })
    }
}

/// One activity reported as lines.
struct Line {
    what: String,
    total: Option<u64>,
    started: Instant,
    /// The last tenth of the total reported (0..=10).
    tenth: AtomicU64,
    position: AtomicU64,
}

impl ProgressBar for Line {
    fn set_position(&self, position: u64) {
        self.position.store(position, Ordering::Relaxed);
        let Some(total) = self.total.filter(|t| *t > 0) else { return };
        let tenth = (position.min(total) * 10 / total).min(9);
        // Report each tenth once, whichever thread gets there first.
        if self.tenth.fetch_max(tenth, Ordering::Relaxed) < tenth {
            write_stderr(&format!("[keel] {}: {position}/{total} ({:.0}s)", self.what, self.started.elapsed().as_secs_f64()));
        }
    }
    fn finish(&self) {
        let position = self.position.load(Ordering::Relaxed);
        let count = match self.total {
            Some(total) => format!("{position}/{total}"),
            None => position.to_string(),
        };
        write_stderr(&format!("[keel] {}: done, {count} in {:.1}s", self.what, self.started.elapsed().as_secs_f64()));
    }
}
