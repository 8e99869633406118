//! The runner: one thread per stage, bounded channels between them, prompt failure handling, and
//! the run directory's manifest and status files.

use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{bounded, select, unbounded};
use keel_core::{write_atomic, RunDir, SeedStream};
use serde::{Deserialize, Serialize};

use crate::cancel::CancelHandle;
use crate::context::{Envelope, OutEdge, StageContext};
use crate::error::{RunError, StageError};
use crate::pipeline::{DryRunInfo, Pipeline};
use crate::policy::PolicyStore;
use crate::progress::{NoProgress, ProgressSink};
use crate::registry::Stage;
use crate::sweep::CellInfo;

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

/// The state of a run, as recorded in `status.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Stages are running (or the process died while they were).
    Running,
    /// Every stage finished successfully.
    Complete,
    /// A stage failed; see `failed_stage` and `error`.
    Failed,
    /// Stopped from outside (Ctrl-C).
    Cancelled,
}

/// The outcome of one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageStatus {
    /// `complete`, `failed`, `cancelled`, `running` (did not stop in time) or `not_started`.
    pub status: String,
    /// Seconds the stage ran.
    pub wall_time_s: f64,
    /// Its error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `status.json`: written as `running` before stages start and rewritten at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusFile {
    /// Overall state.
    pub status: RunStatus,
    /// The stage that failed first.
    #[serde(default)]
    pub failed_stage: Option<String>,
    /// Its error message.
    #[serde(default)]
    pub error: Option<String>,
    /// UTC start time (RFC 3339).
    pub started_at: String,
    /// UTC end time.
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Seconds from start to end.
    #[serde(default)]
    pub wall_time_s: Option<f64>,
    /// The config hash of the manifest (sweeps compare it to decide whether to skip a cell).
    pub config_hash: String,
    /// Per-stage outcomes.
    #[serde(default)]
    pub stages: BTreeMap<String, StageStatus>,
}

/// Reads a run's `status.json` (`None` if absent or unreadable).
pub fn read_status(run_dir: &Path) -> Option<StatusFile> {
    let text = std::fs::read_to_string(run_dir.join("status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// One file hashed into the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputFile {
    /// The stage that declared it.
    pub stage: String,
    /// The path as declared.
    pub path: PathBuf,
    /// Hex sha256.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// `manifest.json`: everything needed to reproduce the run, written before any stage starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `keel_core::KEEL_VERSION`.
    pub keel_version: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Run id (the directory name).
    pub run_id: String,
    /// UTC creation time (RFC 3339).
    pub created_at: String,
    /// Machine name.
    pub hostname: Option<String>,
    /// `git rev-parse HEAD` where the pipeline file lives (or the working directory).
    pub git_revision: Option<String>,
    /// The pipeline file.
    pub source_file: Option<String>,
    /// The process's command line.
    pub command_line: Vec<String>,
    /// `--set` overrides applied before validation.
    pub overrides: Vec<String>,
    /// Root seed.
    pub seed: u64,
    /// Each stage's seed (the root of its `SeedStream`).
    pub stage_seeds: BTreeMap<String, u64>,
    /// The resolved configuration.
    pub config: serde_json::Value,
    /// sha256 of its canonical JSON.
    pub config_hash: String,
    /// Every input file declared by a stage, with its hash.
    pub input_files: Vec<InputFile>,
    /// Capacity of every edge.
    pub channel_capacity: usize,
    /// The sweep cell this run is, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep_cell: Option<CellInfo>,
    /// For a dry run (`keel run --dry-run`): what was shrunk or replaced, and notes. `null` for a
    /// real run, so a reader can always tell the two apart.
    #[serde(default)]
    pub dry_run: Option<DryRunInfo>,
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

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn utc_parts(t: SystemTime) -> (i64, u32, u32, u64, u64, u64) {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    (y, mo, d, rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// The current UTC time as RFC 3339 (`2025-01-31T12:00:00Z`).
pub fn utc_now() -> String {
    let (y, mo, d, h, mi, s) = utc_parts(SystemTime::now());
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

fn timestamp_id() -> String {
    let (y, mo, d, h, mi, s) = utc_parts(SystemTime::now());
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}

fn git_revision(dir: Option<&Path>) -> Option<String> {
    let mut cmd = std::process::Command::new("git");
    cmd.args(["rev-parse", "HEAD"]).stderr(std::process::Stdio::null());
    if let Some(d) = dir.filter(|d| d.is_dir()) {
        cmd.current_dir(d);
    }
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
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

fn choose_run_dir(p: &Pipeline, opts: &RunOptions) -> Result<(PathBuf, String), RunError> {
    if opts.resume {
        let (dir, id) = match (&opts.run_dir, &opts.run_id) {
            (Some(dir), _) => {
                (dir.clone(), dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into()))
            }
            (None, Some(id)) => (opts.runs_root.join(&p.name).join(id), id.clone()),
            (None, None) => return Err(RunError::Other("resuming needs the run id (or directory) of the run to continue".into())),
        };
        let manifest_path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
            RunError::Other(format!("cannot resume {}: reading {}: {e}", dir.display(), manifest_path.display()))
        })?;
        let old: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| RunError::Other(format!("cannot resume: {} is not valid JSON: {e}", manifest_path.display())))?;
        let old_hash = old.get("config_hash").and_then(|h| h.as_str()).unwrap_or("");
        if old_hash != p.config_hash() {
            return Err(RunError::Other(format!(
                "cannot resume {}: its configuration (hash {}) differs from this pipeline's ({}); \
                 resume with the same file and --set overrides",
                dir.display(),
                &old_hash[..old_hash.len().min(12)],
                &p.config_hash()[..12]
            )));
        }
        return Ok((dir, id));
    }
    if let Some(dir) = &opts.run_dir {
        let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
        return Ok((dir.clone(), id));
    }
    // Dry runs live apart from real runs (`runs/<pipeline>/dry-run/<id>`), like sweep cells.
    let base = match &p.dry_run {
        Some(_) => opts.runs_root.join(&p.name).join("dry-run"),
        None => opts.runs_root.join(&p.name),
    };
    if let Some(id) = &opts.run_id {
        let dir = base.join(id);
        if dir.join("manifest.json").exists() {
            return Err(RunError::Other(format!(
                "run directory {} already holds a run; choose another run id",
                dir.display()
            )));
        }
        return Ok((dir, id.clone()));
    }
    let stem = timestamp_id();
    let mut id = stem.clone();
    let mut n = 2;
    while base.join(&id).exists() {
        id = format!("{stem}-{n}");
        n += 1;
    }
    Ok((base.join(&id), id))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RunError> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| keel_core::CoreError::Json { what: path.display().to_string(), source: e })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)?;
    Ok(())
}

struct Failure {
    stage: String,
    message: String,
}

struct Done {
    index: usize,
    status: StageStatus,
}

/// Runs a validated pipeline to completion.
///
/// Writes `manifest.json` before building any stage, runs each stage on its own thread, stops
/// everything on the first failure (or on `opts.cancel`), joins all threads (abandoning any that
/// ignore cancellation for longer than `join_grace`), and writes `status.json`.
pub fn run(p: &Pipeline, opts: &RunOptions) -> Result<RunReport, RunError> {
    let (dir, run_id) = choose_run_dir(p, opts)?;
    let run_dir = Arc::new(RunDir::create(&dir)?);
    let started_at = utc_now();
    let config_hash = p.config_hash();
    let seeds = SeedStream::new(p.seed);

    let status_path = dir.join("status.json");
    let mut status = StatusFile {
        status: RunStatus::Running,
        failed_stage: None,
        error: None,
        started_at: started_at.clone(),
        finished_at: None,
        wall_time_s: None,
        config_hash: config_hash.clone(),
        stages: BTreeMap::new(),
    };
    let fail_early = |status: &mut StatusFile, stage: &str, msg: String| -> Result<(), RunError> {
        status.status = RunStatus::Failed;
        status.failed_stage = Some(stage.to_string());
        status.error = Some(msg);
        status.finished_at = Some(utc_now());
        write_json(&status_path, status)
    };

    // Manifest: hashes of declared inputs first, so a missing dataset fails before any work.
    let mut input_files = Vec::new();
    for s in &p.stages {
        for path in s.kind.input_files(&s.params) {
            match keel_core::sha256_file(&path) {
                Ok(sha256) => {
                    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    input_files.push(InputFile { stage: s.name.clone(), path, sha256, bytes });
                }
                Err(e) => {
                    fail_early(&mut status, &s.name, format!("hashing input file {}: {e}", path.display()))?;
                    return Err(RunError::InputFile { stage: s.name.clone(), path, source: e });
                }
            }
        }
    }
    let manifest = Manifest {
        keel_version: keel_core::KEEL_VERSION.to_string(),
        pipeline: p.name.clone(),
        run_id: run_id.clone(),
        created_at: started_at.clone(),
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
    if opts.resume {
        // The original manifest stays: it describes the run being continued. Each resume is
        // recorded next to it.
        let record = serde_json::json!({"resumed_at": started_at, "command_line": opts.command_line});
        keel_core::JsonlWriter::append(dir.join("resumes.jsonl"))?.write(&record)?;
    } else {
        write_json(&run_dir.manifest_path(), &manifest)?;
    }
    write_json(&status_path, &status)?;

    // Build every stage before starting any, so a bad parameter fails without side effects.
    let mut built: Vec<Box<dyn Stage>> = Vec::new();
    for s in &p.stages {
        let r = catch_unwind(AssertUnwindSafe(|| s.kind.build(&s.params)));
        let r = match r {
            Ok(r) => r,
            Err(payload) => Err(StageError::msg(format!("panicked while building: {}", panic_message(&*payload)))),
        };
        match r {
            Ok(stage) => built.push(stage),
            Err(e) => {
                let msg = e.full_message();
                fail_early(&mut status, &s.name, msg.clone())?;
                return Err(RunError::StageFailed { stage: s.name.clone(), message: msg, run_dir: dir });
            }
        }
    }

    // Cancellation: our own signal, triggered by the first failure or by the caller's handle.
    let cancel = CancelHandle::new();
    opts.cancel.link_child(&cancel);

    // Resources.
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
    let mut writers: HashMap<String, Arc<AtomicUsize>> =
        stores.keys().map(|k| (k.clone(), Arc::new(AtomicUsize::new(0)))).collect();
    for s in &p.stages {
        for spec in s.kind.resources().into_iter().filter(|r| r.writes) {
            if let Some(name) = s.resources.get(spec.role) {
                if let Some(c) = writers.get_mut(name) {
                    c.fetch_add(1, Ordering::SeqCst);
                }
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

    // Channels: one bounded channel per (consumer, input port); producers hold sender clones.
    let cap = opts.channel_capacity.max(1);
    let mut inputs: Vec<HashMap<String, crossbeam::channel::Receiver<Envelope>>> = vec![HashMap::new(); p.stages.len()];
    let mut outputs: Vec<HashMap<String, Vec<OutEdge>>> = (0..p.stages.len()).map(|_| HashMap::new()).collect();
    let index: HashMap<&str, usize> = p.stages.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    for (ci, s) in p.stages.iter().enumerate() {
        for (port, sources) in &s.inputs {
            if sources.is_empty() {
                continue;
            }
            let (tx, rx) = bounded::<Envelope>(cap);
            let mut seen = std::collections::HashSet::new();
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

    let failure: Arc<Mutex<Option<Failure>>> = Arc::new(Mutex::new(None));
    let (done_tx, done_rx) = unbounded::<Done>();
    let logs_dir = dir.join("logs");
    let _ = std::fs::create_dir_all(&logs_dir);
    let t0 = Instant::now();
    let mut handles = Vec::new();
    let mut stage_status: BTreeMap<String, StageStatus> = p
        .stages
        .iter()
        .map(|s| (s.name.clone(), StageStatus { status: "not_started".into(), wall_time_s: 0.0, error: None }))
        .collect();
    let mut spawned = 0usize;
    for (i, (stage, s)) in built.into_iter().zip(&p.stages).enumerate() {
        let ctx = StageContext {
            name: s.name.clone(),
            kind: s.kind.name(),
            run_dir: run_dir.clone(),
            inputs: std::mem::take(&mut inputs[i]),
            input_types: s.kind.inputs().into_iter().map(|p| (p.name, p.ty)).collect(),
            outputs: std::mem::take(&mut outputs[i]),
            output_types: s.kind.outputs().into_iter().map(|p| (p.name, p.ty)).collect(),
            cancel: cancel.clone(),
            resuming: opts.resume,
            dry_run: p.dry_run.is_some(),
            seeds: seeds.child(&s.name),
            stores: s.resources.iter().filter_map(|(role, name)| stores.get(name).map(|st| (role.clone(), st.clone()))).collect(),
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
            .filter_map(|name| Some((writers.get(name)?.clone(), stores.get(name)?.clone())))
            .collect();
        let cancel_t = cancel.clone();
        let failure_t = failure.clone();
        let done_t = done_tx.clone();
        let name = s.name.clone();
        let spawn = std::thread::Builder::new().name(format!("keel-{}", s.name)).spawn(move || {
            let start = Instant::now();
            ctx.log("started");
            let r = catch_unwind(AssertUnwindSafe(|| stage.run(&ctx)));
            let r = r.unwrap_or_else(|payload| Err(StageError::msg(format!("panicked: {}", panic_message(&*payload)))));
            let mut st = StageStatus { status: "complete".into(), wall_time_s: 0.0, error: None };
            match &r {
                Ok(()) => ctx.log("finished"),
                Err(e) if e.is_cancelled() && cancel_t.is_cancelled() => {
                    st.status = "cancelled".into();
                    ctx.log("cancelled");
                }
                Err(e) => {
                    let msg = e.full_message();
                    ctx.log(&format!("failed: {msg}"));
                    {
                        let mut f = failure_t.lock().unwrap_or_else(|p| p.into_inner());
                        if f.is_none() && !cancel_t.is_cancelled() {
                            *f = Some(Failure { stage: name.clone(), message: msg.clone() });
                        }
                    }
                    st.status = "failed".into();
                    st.error = Some(msg);
                    cancel_t.cancel();
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
            let _ = done_t.send(Done { index: i, status: st });
        });
        match spawn {
            Ok(h) => {
                handles.push((i, h));
                spawned += 1;
            }
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
    drop(done_tx);

    // Supervise: collect completions; after cancellation, wait at most `join_grace`.
    let mut finished = vec![false; p.stages.len()];
    let mut remaining = spawned;
    let mut deadline: Option<Instant> = None;
    while remaining > 0 {
        let msg = match deadline {
            Some(dl) => match done_rx.recv_deadline(dl) {
                Ok(m) => Some(m),
                Err(_) => break,
            },
            None => select! {
                recv(done_rx) -> m => m.ok(),
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
    for (i, h) in handles {
        if finished[i] {
            let _ = h.join();
        } else {
            stage_status.insert(
                p.stages[i].name.clone(),
                StageStatus {
                    status: "running".into(),
                    wall_time_s: t0.elapsed().as_secs_f64(),
                    error: Some(format!("did not stop within {:?} of cancellation; thread abandoned", opts.join_grace)),
                },
            );
        }
    }
    let wall = t0.elapsed().as_secs_f64();

    let failure = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
    status.finished_at = Some(utc_now());
    status.wall_time_s = Some(wall);
    status.stages = stage_status.clone();
    let result = match failure {
        Some(f) => {
            status.status = RunStatus::Failed;
            status.failed_stage = Some(f.stage.clone());
            status.error = Some(f.message.clone());
            Err(RunError::StageFailed { stage: f.stage, message: f.message, run_dir: dir.clone() })
        }
        None if cancel.is_cancelled() => {
            status.status = RunStatus::Cancelled;
            status.error = Some("cancelled".into());
            Err(RunError::Cancelled { run_dir: dir.clone() })
        }
        None => {
            status.status = RunStatus::Complete;
            Ok(RunReport { run_dir: dir.clone(), run_id, config_hash, wall_time_s: wall, stages: stage_status })
        }
    };
    write_json(&status_path, &status)?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(utc_now().len(), 20);
    }
}
