//! What a running stage sees: its ports, the run directory, seeds, metrics, progress, resources.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam::channel::{select, Receiver, Sender};
use keel_core::{MetricRecord, RunDir, SeedStream};

use crate::cancel::CancelHandle;
use crate::error::StageError;
use crate::policy::PolicyStore;
use crate::progress::{Progress, ProgressSink};

/// A message in flight: the value plus the Rust type name it was sent as, so a receiver asking
/// for the wrong type gets an error naming both.
#[derive(Clone)]
pub(crate) struct Envelope {
    pub value: Arc<dyn Any + Send + Sync>,
    pub type_name: &'static str,
}

/// One consumer of an output port.
pub(crate) struct OutEdge {
    pub tx: Sender<Envelope>,
    /// Set once the consumer has gone away; later sends skip it.
    pub closed: AtomicBool,
}

/// The handle a stage uses to talk to the engine.
///
/// Every blocking call (`recv`, `send`) also waits on the pipeline's cancellation signal, so a
/// stage blocked on a full or empty channel wakes with [`StageError::Cancelled`] as soon as another
/// stage fails or the user presses Ctrl-C.
pub struct StageContext {
    pub(crate) name: String,
    pub(crate) kind: &'static str,
    pub(crate) run_dir: Arc<RunDir>,
    pub(crate) inputs: HashMap<String, Receiver<Envelope>>,
    pub(crate) input_types: HashMap<&'static str, &'static str>,
    pub(crate) outputs: HashMap<String, Vec<OutEdge>>,
    pub(crate) output_types: HashMap<&'static str, &'static str>,
    pub(crate) cancel: CancelHandle,
    pub(crate) seeds: SeedStream,
    pub(crate) stores: HashMap<String, Arc<PolicyStore>>,
    pub(crate) progress: Arc<dyn ProgressSink>,
    pub(crate) log: Mutex<Option<File>>,
    pub(crate) started: Instant,
    pub(crate) resuming: bool,
    pub(crate) dry_run: bool,
}

impl std::fmt::Debug for StageContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageContext").field("name", &self.name).field("kind", &self.kind).finish()
    }
}

impl StageContext {
    /// The stage's name in the pipeline.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stage's kind.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The run directory (manifest, metrics, per-stage outputs).
    pub fn run_dir(&self) -> &RunDir {
        &self.run_dir
    }

    /// `stages/<name>/` inside the run directory, created on first use: where checkpoints and
    /// evaluation outputs of this stage go.
    pub fn stage_dir(&self) -> Result<PathBuf, StageError> {
        Ok(self.run_dir.stage_dir(&self.name)?)
    }

    /// True when the run continues an interrupted one (`keel run --resume`): stages with
    /// checkpoints restore them from their stage directory instead of starting over.
    pub fn is_resuming(&self) -> bool {
        self.resuming
    }

    /// True in a dry run (`keel run --dry-run`): the pipeline was shrunk by the stage kinds'
    /// [`crate::StageKind::dry_run`] hooks, and stages may substitute what a laptop lacks (e.g. an
    /// empty set for a dataset not in the cache) as long as they say so in their log.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// The stage's seed family: a child of the pipeline seed named after the stage, so renaming
    /// or adding another stage does not change this one's random numbers.
    pub fn seeds(&self) -> SeedStream {
        self.seeds
    }

    /// True once the pipeline is being cancelled; long computations should poll this.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Returns `Err(Cancelled)` if the pipeline is being cancelled: a one-line check for loops.
    pub fn check_cancelled(&self) -> Result<(), StageError> {
        if self.is_cancelled() {
            Err(StageError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// The cancellation signal, for stages that run helper threads.
    pub fn cancel_handle(&self) -> &CancelHandle {
        &self.cancel
    }

    /// True if the port (input or output) is connected to another stage.
    pub fn is_wired(&self, port: &str) -> bool {
        self.inputs.contains_key(port) || self.outputs.get(port).is_some_and(|v| !v.is_empty())
    }

    /// Receives the next message on an input port; `Ok(None)` once every upstream stage has
    /// finished (or immediately for an unwired optional input).
    pub fn recv<T: Any + Send + Sync>(&self, port: &str) -> Result<Option<Arc<T>>, StageError> {
        match self.recv_any(port)? {
            None => Ok(None),
            Some(env) => env.value.downcast::<T>().map(Some).map_err(|_| {
                let declared = self.input_types.get(port).copied().unwrap_or("?");
                StageError::msg(format!(
                    "stage `{}`: input `{port}` (type `{declared}`) carries `{}` but the stage asked for `{}`",
                    self.name,
                    env.type_name,
                    std::any::type_name::<T>()
                ))
            }),
        }
    }

    fn recv_any(&self, port: &str) -> Result<Option<Envelope>, StageError> {
        if !self.input_types.contains_key(port) {
            return Err(StageError::msg(format!(
                "stage `{}` (kind `{}`) has no input port `{port}`",
                self.name, self.kind
            )));
        }
        self.check_cancelled()?;
        let Some(rx) = self.inputs.get(port) else { return Ok(None) };
        let got = select! {
            recv(rx) -> m => m.ok(),
            recv(self.cancel.receiver()) -> _ => return Err(StageError::Cancelled),
        };
        // A closed channel racing with cancellation must not look like a clean end of stream.
        if got.is_none() {
            self.check_cancelled()?;
        }
        Ok(got)
    }

    /// Sends a value on an output port (to every consumer; fan-out shares one `Arc`).
    ///
    /// Blocks while a consumer's channel is full (backpressure). Sending to an unwired port, or to
    /// consumers that have all finished, drops the value.
    pub fn send<T: Any + Send + Sync>(&self, port: &str, value: T) -> Result<(), StageError> {
        self.send_arc(port, Arc::new(value))
    }

    /// Like [`StageContext::send`] for a value already behind an `Arc`.
    pub fn send_arc<T: Any + Send + Sync>(&self, port: &str, value: Arc<T>) -> Result<(), StageError> {
        if !self.output_types.contains_key(port) {
            return Err(StageError::msg(format!(
                "stage `{}` (kind `{}`) has no output port `{port}`",
                self.name, self.kind
            )));
        }
        self.check_cancelled()?;
        let Some(edges) = self.outputs.get(port) else { return Ok(()) };
        let env = Envelope { value: value as Arc<dyn Any + Send + Sync>, type_name: std::any::type_name::<T>() };
        for edge in edges {
            if edge.closed.load(Ordering::Relaxed) {
                continue;
            }
            select! {
                send(edge.tx, env.clone()) -> r => {
                    if r.is_err() {
                        edge.closed.store(true, Ordering::Relaxed);
                    }
                }
                recv(self.cancel.receiver()) -> _ => return Err(StageError::Cancelled),
            }
        }
        Ok(())
    }

    /// This stage's shard of the run-level record file `file` (e.g. `rollouts.jsonl`): records
    /// are JSON objects with an integer `step`, steps never decrease, and every record of a step
    /// is written before the stage checkpoints it. On resume the shard keeps the records before
    /// the first step the stage writes again, and the run's `file` is assembled from all shards
    /// in stage order, then step, so that it is the same bytes as an uninterrupted run's.
    pub fn records(&self, file: &str) -> Result<Arc<keel_core::RecordLog>, StageError> {
        Ok(self.run_dir.records(&self.name, file)?)
    }

    /// Appends values to `metrics.jsonl` (through this stage's shard, see
    /// [`StageContext::records`]), tagged with this stage's name and `step`.
    pub fn log_metrics<K: Into<String>>(
        &self,
        step: u64,
        values: impl IntoIterator<Item = (K, f64)>,
    ) -> Result<(), StageError> {
        let values: BTreeMap<String, f64> = values.into_iter().map(|(k, v)| (k.into(), v)).collect();
        let rec = MetricRecord { stage: self.name.clone(), step, values };
        Ok(self.run_dir.log_metrics(&rec)?)
    }

    /// Appends a line to this stage's log file (`logs/<stage>.log`), prefixed with seconds since
    /// the stage started.
    pub fn log(&self, message: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        let mut guard = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = guard.as_mut() {
            // Logging must never fail a stage; a full disk shows up in metrics writes instead.
            let _ = writeln!(f, "[{secs:9.3}s] {message}");
        }
    }

    /// Starts a progress bar (shown by the CLI) for `label` with an optional known total.
    pub fn progress(&self, label: &str, total: Option<u64>) -> Progress {
        Progress::new(self.progress.begin(&self.name, label, total))
    }

    /// The policy store bound to `role` under the stage's `resources:`.
    pub fn policy(&self, role: &str) -> Result<Arc<PolicyStore>, StageError> {
        self.stores.get(role).cloned().ok_or_else(|| {
            StageError::msg(format!(
                "stage `{}` has no policy store bound to role `{role}`; add `resources: {{{role}: <name>}}`",
                self.name
            ))
        })
    }
}
