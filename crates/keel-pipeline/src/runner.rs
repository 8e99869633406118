//! The runner: one thread per stage, bounded channels between them, prompt failure handling.
//!
//! [`run`] goes through named steps: choose the run directory and write the manifest
//! ([`start_run`]), build every stage ([`build_stages`]), create resources and channels
//! ([`wire`]), start one thread per stage ([`spawn_stages`]), wait for them ([`supervise`]), and
//! record the outcome in `status.json` ([`finish`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::channel::{bounded, select, unbounded, Receiver};
use keel_core::{RunDir, SeedStream};

use crate::cancel::CancelHandle;
use crate::context::{Envelope, OutEdge, StageContext};
use crate::error::{RunError, StageError};
use crate::policy::PolicyStore;
use crate::progress::{NoProgress, ProgressSink};
use crate::registry::Stage;
use crate::run_files::{choose_run_dir, git_revision, hostname, utc_now, write_json, InputFile, Manifest, RunStatus, StageStatus, StatusFile};
use crate::validated::Pipeline;

/// Default capacity of every edge: small, so a slow consumer throttles its producer quickly and
/// memory stays bounded.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 4;

/// How to run a pipeline.
#[derive(Clone)]
pub struct RunOptions {
    /// Root of all runs; the run goes to `<runs_root>/<pipeline>/<run_id>/`.
    pub runs_root: PathBuf,
    /// Explicit run id; default is a UTC timestamp `YYYYMMDD-HHMMSS` (suffixed `-2`, `-3`, ... if taken).
    pub run_id: Option<String>,
    /// Explicit run directory, overriding `runs_root`/`run_id` (used for sweep cells).
    pub run_dir: Option<PathBuf>,
    /// Capacity of each edge's bounded channel.
    pub channel_capacity: usize,
    /// Where progress bars go.
    pub progress: Arc<dyn ProgressSink>,
    /// Cancelling this (e.g. from a Ctrl-C handler) stops the run with status `cancelled`.
    pub cancel: CancelHandle,
    /// How long to wait for stages to stop after cancellation before abandoning their threads.
    pub join_grace: Duration,
    /// The command line recorded in the manifest (default: this process's arguments).
    pub command_line: Vec<String>,
    /// Continue an interrupted run in its existing directory (named by `run_id` or `run_dir`):
    /// the manifest must exist and carry the same config hash; stages see
    /// [`StageContext::is_resuming`] and restore their own checkpoints.
    pub resume: bool,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("runs_root", &self.runs_root)
            .field("run_id", &self.run_id)
            .field("run_dir", &self.run_dir)
            .field("channel_capacity", &self.channel_capacity)
            .finish_non_exhaustive()
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            runs_root: PathBuf::from("runs"),
            run_id: None,
            run_dir: None,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            progress: Arc::new(NoProgress),
            cancel: CancelHandle::new(),
            join_grace: Duration::from_secs(10),
            command_line: std::env::args().collect(),
            resume: false,
        }
    }
}

/// What a successful run reports.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Its id.
    pub run_id: String,
    /// The config hash in the manifest.
    pub config_hash: String,
    /// Seconds from first stage start to last stage end.
    pub wall_time_s: f64,
    /// Per-stage outcomes.
    pub stages: BTreeMap<String, StageStatus>,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// `status.json` as the run goes, with the path it is written to.
struct Status {
    path: PathBuf,
    file: StatusFile,
}

impl Status {
    /// Records a failure before any stage started (an input file, a stage that did not build).
    fn fail_early(&mut self, stage: &str, msg: String) -> Result<(), RunError> {
        self.file.status = RunStatus::Failed;
        self.file.failed_stage = Some(stage.to_string());
        self.file.error = Some(msg);
        self.file.finished_at = Some(utc_now());
        self.write()
    }

    fn write(&self) -> Result<(), RunError> {
        write_json(&self.path, &self.file)
    }
}

/// A run whose directory, manifest and `running` status exist, before any stage is built.
struct Started {
    dir: PathBuf,
    run_id: String,
    run_dir: Arc<RunDir>,
    config_hash: String,
    seeds: SeedStream,
    status: Status,
}

/// Step 1: chooses the run directory, hashes the declared input files (so a missing dataset
/// fails before any work), and writes `manifest.json` (or, on resume, appends to `resumes.jsonl`)
/// and a `running` `status.json`.
fn start_run(p: &Pipeline, opts: &RunOptions) -> Result<Started, RunError> {
    let (dir, run_id) = choose_run_dir(p, opts)?;
    let stage_names = p.stages.iter().map(|s| s.name.clone()).collect();
    let run_dir = Arc::new(RunDir::for_stages(&dir, stage_names, opts.resume)?);
    let started_at = utc_now();
    let config_hash = p.config_hash();
    let seeds = SeedStream::new(p.seed);
    let mut status = Status {
        path: dir.join("status.json"),
        file: StatusFile {
            status: RunStatus::Running,
            failed_stage: None,
            error: None,
            started_at: started_at.clone(),
            finished_at: None,
            wall_time_s: None,
            config_hash: config_hash.clone(),
            stages: BTreeMap::new(),
        },
    };
    let mut input_files = Vec::new();
    for s in &p.stages {
        for path in s.kind.input_files(&s.params) {
            match keel_core::sha256_file(&path) {
                Ok(sha256) => {
                    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    input_files.push(InputFile { stage: s.name.clone(), path, sha256, bytes });
                }
                Err(e) => {
                    status.fail_early(&s.name, format!("hashing input file {}: {e}", path.display()))?;
                    return Err(RunError::InputFile { stage: s.name.clone(), path, source: e });
                }
            }
        }
    }
    if opts.resume {
        // The original manifest stays: it describes the run being continued. Each resume is
        // recorded next to it.
        let record = serde_json::json!({"resumed_at": started_at, "command_line": opts.command_line});
        keel_core::JsonlWriter::append(dir.join("resumes.jsonl"))?.write(&record)?;
    } else {
        let manifest = Manifest {
            keel_version: keel_core::KEEL_VERSION.to_string(),
            pipeline: p.name.clone(),
            run_id: run_id.clone(),
            created_at: started_at,
            hostname: hostname(),
            git_revision: git_revision(p.doc.path().and_then(Path::parent).filter(|d| !d.as_os_str().is_empty())),
            source_file: p.doc.path().map(|x| x.display().to_string()).or_else(|| Some(p.doc.file().to_string())),
            command_line: opts.command_line.clone(),
            overrides: p.doc.overrides().to_vec(),
            seed: p.seed,
            stage_seeds: p.stages.iter().map(|s| (s.name.clone(), seeds.child(&s.name).root())).collect(),
            config: p.resolved_config(),
            config_hash: config_hash.clone(),
            input_files,
            channel_capacity: opts.channel_capacity,
            sweep_cell: p.cell.clone(),
            dry_run: p.dry_run.clone(),
        };
        write_json(&run_dir.manifest_path(), &manifest)?;
    }
    status.write()?;
    Ok(Started { dir, run_id, run_dir, config_hash, seeds, status })
}

/// Step 2: builds every stage before starting any, so a bad parameter fails without side
/// effects; a panic in a kind's `build` is a failure of that stage.
fn build_stages(p: &Pipeline, run: &mut Started) -> Result<Vec<Box<dyn Stage>>, RunError> {
    let mut built: Vec<Box<dyn Stage>> = Vec::new();
    for s in &p.stages {
        let r = catch_unwind(AssertUnwindSafe(|| s.kind.build(&s.params)))
            .unwrap_or_else(|payload| Err(StageError::msg(format!("panicked while building: {}", panic_message(&*payload)))));
        match r {
            Ok(stage) => built.push(stage),
            Err(e) => {
                let msg = e.full_message();
                run.status.fail_early(&s.name, msg.clone())?;
                return Err(RunError::StageFailed { stage: s.name.clone(), message: msg, run_dir: run.dir.clone() });
            }
        }
    }
    Ok(built)
}

/// The resources and channels of a run, per stage index.
struct Wiring {
    stores: HashMap<String, Arc<PolicyStore>>,
    /// Per store: how many stages that write it are still running.
    writers: HashMap<String, Arc<AtomicUsize>>,
    inputs: Vec<HashMap<String, Receiver<Envelope>>>,
    outputs: Vec<HashMap<String, Vec<OutEdge>>>,
}

/// Step 3: creates the policy stores (cancelled with the run, closed at once when nothing writes
/// them) and one bounded channel per (consumer, input port), whose senders the producers hold.
fn wire(p: &Pipeline, opts: &RunOptions, cancel: &CancelHandle) -> Wiring {
    let mut stores: HashMap<String, Arc<PolicyStore>> = HashMap::new();
    for r in &p.resources {
        let store = PolicyStore::new(r.name.clone(), r.max_staleness);
        let weak = Arc::downgrade(&store);
        cancel.on_cancel(move || {
            if let Some(s) = weak.upgrade() {
                s.cancel();
            }
        });
        stores.insert(r.name.clone(), store);
    }
    // A store closes when its last writer finishes, so readers never wait for a version that
    // cannot come.
    let writers: HashMap<String, Arc<AtomicUsize>> =
        stores.keys().map(|k| (k.clone(), Arc::new(AtomicUsize::new(0)))).collect();
    for s in &p.stages {
        for spec in s.kind.resources().into_iter().filter(|r| r.writes) {
            if let Some(c) = s.resources.get(spec.role).and_then(|name| writers.get(name)) {
                c.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    for (name, c) in &writers {
        if c.load(Ordering::SeqCst) == 0 {
            if let Some(s) = stores.get(name) {
                s.close();
            }
        }
    }

    let cap = opts.channel_capacity.max(1);
    let mut inputs: Vec<HashMap<String, Receiver<Envelope>>> = vec![HashMap::new(); p.stages.len()];
    let mut outputs: Vec<HashMap<String, Vec<OutEdge>>> = (0..p.stages.len()).map(|_| HashMap::new()).collect();
    let index: HashMap<&str, usize> = p.stages.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    for (ci, s) in p.stages.iter().enumerate() {
        for (port, sources) in s.inputs.iter().filter(|(_, sources)| !sources.is_empty()) {
            let (tx, rx) = bounded::<Envelope>(cap);
            let mut seen = HashSet::new();
            for src in sources.iter().filter(|src| seen.insert((*src).clone())) {
                if let Some(&pi) = index.get(src.stage.as_str()) {
                    outputs[pi]
                        .entry(src.port.clone())
                        .or_default()
                        .push(OutEdge { tx: tx.clone(), closed: AtomicBool::new(false) });
                }
            }
            inputs[ci].insert(port.clone(), rx);
        }
    }
    Wiring { stores, writers, inputs, outputs }
}

struct Failure {
    stage: String,
    message: String,
}

struct Done {
    index: usize,
    status: StageStatus,
}

/// The running stage threads.
struct Spawned {
    handles: Vec<(usize, std::thread::JoinHandle<()>)>,
    done: Receiver<Done>,
    failure: Arc<Mutex<Option<Failure>>>,
    t0: Instant,
}

/// What every stage thread shares.
struct Shared {
    cancel: CancelHandle,
    failure: Arc<Mutex<Option<Failure>>>,
    done: crossbeam::channel::Sender<Done>,
}

/// Step 4: starts one thread per stage with its context; a thread that cannot start fails the
/// run and cancels the stages already started.
fn spawn_stages(p: &Pipeline, opts: &RunOptions, run: &Started, built: Vec<Box<dyn Stage>>, mut w: Wiring, cancel: &CancelHandle) -> Spawned {
    let failure: Arc<Mutex<Option<Failure>>> = Arc::new(Mutex::new(None));
    let (done_tx, done_rx) = unbounded::<Done>();
    let shared = Shared { cancel: cancel.clone(), failure: failure.clone(), done: done_tx };
    let logs_dir = run.dir.join("logs");
    let _ = std::fs::create_dir_all(&logs_dir);
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for (i, (stage, s)) in built.into_iter().zip(&p.stages).enumerate() {
        let ctx = StageContext {
            name: s.name.clone(),
            kind: s.kind.name(),
            run_dir: run.run_dir.clone(),
            inputs: std::mem::take(&mut w.inputs[i]),
            input_types: s.kind.inputs().into_iter().map(|p| (p.name, p.ty)).collect(),
            outputs: std::mem::take(&mut w.outputs[i]),
            output_types: s.kind.outputs().into_iter().map(|p| (p.name, p.ty)).collect(),
            cancel: cancel.clone(),
            resuming: opts.resume,
            dry_run: p.dry_run.is_some(),
            seeds: run.seeds.child(&s.name),
            stores: s.resources.iter().filter_map(|(role, name)| w.stores.get(name).map(|st| (role.clone(), st.clone()))).collect(),
            progress: opts.progress.clone(),
            log: Mutex::new(std::fs::File::create(logs_dir.join(format!("{}.log", s.name))).ok()),
            started: Instant::now(),
        };
        let written: Vec<(Arc<AtomicUsize>, Arc<PolicyStore>)> = s
            .kind
            .resources()
            .into_iter()
            .filter(|r| r.writes)
            .filter_map(|r| s.resources.get(r.role))
            .filter_map(|name| Some((w.writers.get(name)?.clone(), w.stores.get(name)?.clone())))
            .collect();
        let shared = Shared { cancel: shared.cancel.clone(), failure: shared.failure.clone(), done: shared.done.clone() };
        let spawn = std::thread::Builder::new()
            .name(format!("keel-{}", s.name))
            .spawn(move || stage_thread(i, stage, ctx, written, shared));
        match spawn {
            Ok(h) => handles.push((i, h)),
            Err(e) => {
                let mut f = failure.lock().unwrap_or_else(|p| p.into_inner());
                if f.is_none() {
                    *f = Some(Failure { stage: s.name.clone(), message: format!("could not start thread: {e}") });
                }
                cancel.cancel();
                break;
            }
        }
    }
    Spawned { handles, done: done_rx, failure, t0 }
}

/// The body of one stage's thread: runs the stage (a panic is a failure), records the first
/// failure and cancels the run, closes the stage's outputs and the stores it wrote, and reports.
fn stage_thread(
    index: usize,
    stage: Box<dyn Stage>,
    ctx: StageContext,
    written: Vec<(Arc<AtomicUsize>, Arc<PolicyStore>)>,
    shared: Shared,
) {
    let start = Instant::now();
    ctx.log("started");
    let r = catch_unwind(AssertUnwindSafe(|| stage.run(&ctx)));
    let r = r.unwrap_or_else(|payload| Err(StageError::msg(format!("panicked: {}", panic_message(&*payload)))));
    let mut st = StageStatus { status: "complete".into(), wall_time_s: 0.0, error: None };
    match &r {
        Ok(()) => ctx.log("finished"),
        Err(e) if e.is_cancelled() && shared.cancel.is_cancelled() => {
            st.status = "cancelled".into();
            ctx.log("cancelled");
        }
        Err(e) => {
            let msg = e.full_message();
            ctx.log(&format!("failed: {msg}"));
            {
                let mut f = shared.failure.lock().unwrap_or_else(|p| p.into_inner());
                if f.is_none() && !shared.cancel.is_cancelled() {
                    *f = Some(Failure { stage: ctx.name.clone(), message: msg.clone() });
                }
            }
            st.status = "failed".into();
            st.error = Some(msg);
            shared.cancel.cancel();
        }
    }
    // The run-level record files include this stage's records before its consumers see the end
    // of its streams, so a downstream stage (a report) reads them complete.
    for file in ctx.run_dir.record_files_of(&ctx.name) {
        if let Err(e) = ctx.run_dir.assemble(&file) {
            ctx.log(&format!("assembling {file}: {e}"));
        }
    }
    // Dropping the context closes this stage's outputs: consumers see end of stream.
    drop(ctx);
    for (count, store) in written {
        if count.fetch_sub(1, Ordering::SeqCst) == 1 {
            store.close();
        }
    }
    st.wall_time_s = start.elapsed().as_secs_f64();
    let _ = shared.done.send(Done { index, status: st });
}

/// Step 5: collects stage completions until all are done; after cancellation waits at most
/// `join_grace` and marks the stages that did not stop as `running` (their threads abandoned).
fn supervise(p: &Pipeline, opts: &RunOptions, cancel: &CancelHandle, spawned: &mut Spawned) -> BTreeMap<String, StageStatus> {
    let mut stage_status: BTreeMap<String, StageStatus> = p
        .stages
        .iter()
        .map(|s| (s.name.clone(), StageStatus { status: "not_started".into(), wall_time_s: 0.0, error: None }))
        .collect();
    let mut finished = vec![false; p.stages.len()];
    let mut remaining = spawned.handles.len();
    let mut deadline: Option<Instant> = None;
    while remaining > 0 {
        let msg = match deadline {
            Some(dl) => match spawned.done.recv_deadline(dl) {
                Ok(m) => Some(m),
                Err(_) => break,
            },
            None => select! {
                recv(spawned.done) -> m => m.ok(),
                recv(cancel.receiver()) -> _ => {
                    deadline = Some(Instant::now() + opts.join_grace);
                    continue;
                }
            },
        };
        let Some(done) = msg else { break };
        finished[done.index] = true;
        stage_status.insert(p.stages[done.index].name.clone(), done.status);
        remaining -= 1;
    }
    for (i, h) in std::mem::take(&mut spawned.handles) {
        if finished[i] {
            let _ = h.join();
        } else {
            stage_status.insert(
                p.stages[i].name.clone(),
                StageStatus {
                    status: "running".into(),
                    wall_time_s: spawned.t0.elapsed().as_secs_f64(),
                    error: Some(format!("did not stop within {:?} of cancellation; thread abandoned", opts.join_grace)),
                },
            );
        }
    }
    stage_status
}

/// Step 6: assembles the run-level record files from the stages' shards and writes the run's
/// outcome (first failure, cancellation or success) into `status.json`.
fn finish(
    mut run: Started,
    cancel: &CancelHandle,
    spawned: &Spawned,
    stage_status: BTreeMap<String, StageStatus>,
) -> Result<RunReport, RunError> {
    let wall = spawned.t0.elapsed().as_secs_f64();
    let failure = spawned.failure.lock().unwrap_or_else(|p| p.into_inner()).take();
    let status = &mut run.status.file;
    status.finished_at = Some(utc_now());
    status.wall_time_s = Some(wall);
    status.stages = stage_status.clone();
    let dir = run.dir.clone();
    // Every record file, whatever the outcome, so a failed run's metrics can be read too.
    run.run_dir.assemble_all()?;
    let result = match failure {
        Some(f) => {
            status.status = RunStatus::Failed;
            status.failed_stage = Some(f.stage.clone());
            status.error = Some(f.message.clone());
            Err(RunError::StageFailed { stage: f.stage, message: f.message, run_dir: dir })
        }
        None if cancel.is_cancelled() => {
            status.status = RunStatus::Cancelled;
            status.error = Some("cancelled".into());
            Err(RunError::Cancelled { run_dir: dir })
        }
        None => {
            status.status = RunStatus::Complete;
            Ok(RunReport { run_dir: dir, run_id: run.run_id.clone(), config_hash: run.config_hash.clone(), wall_time_s: wall, stages: stage_status })
        }
    };
    run.status.write()?;
    result
}

/// Runs a validated pipeline to completion.
///
/// Writes `manifest.json` before building any stage, runs each stage on its own thread, stops
/// everything on the first failure (or on `opts.cancel`), joins all threads (abandoning any that
/// ignore cancellation for longer than `join_grace`), and writes `status.json`.
pub fn run(p: &Pipeline, opts: &RunOptions) -> Result<RunReport, RunError> {
    let mut started = start_run(p, opts)?;
    let built = build_stages(p, &mut started)?;
    // Cancellation: our own signal, triggered by the first failure or by the caller's handle.
    let cancel = CancelHandle::new();
    opts.cancel.link_child(&cancel);
    let wiring = wire(p, opts, &cancel);
    let mut spawned = spawn_stages(p, opts, &started, built, wiring, &cancel);
    let stage_status = supervise(p, opts, &cancel, &mut spawned);
    finish(started, &cancel, &spawned, stage_status)
}
