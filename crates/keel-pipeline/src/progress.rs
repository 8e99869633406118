//! Progress reporting, decoupled from any terminal library.
//!
//! Stages report progress through [`crate::StageContext::progress`]; the CLI implements
//! [`ProgressSink`] with indicatif bars, tests use [`RecordingProgress`], and library users who do
//! not care use [`NoProgress`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Something that displays progress bars.
pub trait ProgressSink: Send + Sync {
    /// Starts a bar for `stage` labelled `label` with an optional known total.
    fn begin(&self, stage: &str, label: &str, total: Option<u64>) -> Box<dyn ProgressBar>;
}

/// One bar created by a [`ProgressSink`].
pub trait ProgressBar: Send + Sync {
    /// Moves the bar to `position`.
    fn set_position(&self, position: u64);
    /// Marks the bar done (called once).
    fn finish(&self);
}

/// A progress handle given to a stage; finishing happens on drop if the stage forgets.
pub struct Progress {
    bar: Box<dyn ProgressBar>,
    position: AtomicU64,
    finished: AtomicBool,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").field("position", &self.position()).finish()
    }
}

impl Progress {
    pub(crate) fn new(bar: Box<dyn ProgressBar>) -> Self {
        Progress { bar, position: AtomicU64::new(0), finished: AtomicBool::new(false) }
    }

    /// Advances by `n`.
    pub fn inc(&self, n: u64) {
        let p = self.position.fetch_add(n, Ordering::Relaxed) + n;
        self.bar.set_position(p);
    }

    /// Sets the position.
    pub fn set(&self, position: u64) {
        self.position.store(position, Ordering::Relaxed);
        self.bar.set_position(position);
    }

    /// The current position.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Relaxed)
    }

    /// Marks the bar done.
    pub fn finish(&self) {
        if !self.finished.swap(true, Ordering::Relaxed) {
            self.bar.finish();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A sink that displays nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

struct NoBar;

impl ProgressBar for NoBar {
    fn set_position(&self, _position: u64) {}
    fn finish(&self) {}
}

impl ProgressSink for NoProgress {
    fn begin(&self, _stage: &str, _label: &str, _total: Option<u64>) -> Box<dyn ProgressBar> {
        Box::new(NoBar)
    }
}

/// One recorded progress event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent {
    /// A bar was started.
    Begin {
        /// Stage name.
        stage: String,
        /// Bar label.
        label: String,
        /// Known total.
        total: Option<u64>,
    },
    /// A bar moved.
    Position {
        /// Stage name.
        stage: String,
        /// Bar label.
        label: String,
        /// New position.
        position: u64,
    },
    /// A bar finished.
    Finish {
        /// Stage name.
        stage: String,
        /// Bar label.
        label: String,
    },
}

/// A sink that records every event, for tests.
#[derive(Debug, Default)]
pub struct RecordingProgress {
    events: std::sync::Arc<Mutex<Vec<ProgressEvent>>>,
}

impl RecordingProgress {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The events so far.
    pub fn events(&self) -> Vec<ProgressEvent> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

struct RecordingBar {
    stage: String,
    label: String,
    events: std::sync::Arc<Mutex<Vec<ProgressEvent>>>,
}

impl RecordingBar {
    fn push(&self, e: ProgressEvent) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }
}

impl ProgressBar for RecordingBar {
    fn set_position(&self, position: u64) {
        self.push(ProgressEvent::Position { stage: self.stage.clone(), label: self.label.clone(), position });
    }
    fn finish(&self) {
        self.push(ProgressEvent::Finish { stage: self.stage.clone(), label: self.label.clone() });
    }
}

impl ProgressSink for RecordingProgress {
    fn begin(&self, stage: &str, label: &str, total: Option<u64>) -> Box<dyn ProgressBar> {
        let bar = RecordingBar { stage: stage.into(), label: label.into(), events: self.events.clone() };
        bar.push(ProgressEvent::Begin { stage: stage.into(), label: label.into(), total });
        Box::new(bar)
    }
}
