use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::{CoreError, MetricRecord, Result};

/// Writes `bytes` to `path` atomically: a temporary sibling is written, synced and renamed over
/// the target, so a crash or Ctrl-C never leaves a half-written manifest or checkpoint behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| CoreError::io("creating directory", parent, e))?;
    }
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    {
        let mut f = File::create(&tmp).map_err(|e| CoreError::io("creating", &tmp, e))?;
        f.write_all(bytes).map_err(|e| CoreError::io("writing", &tmp, e))?;
        f.sync_all().map_err(|e| CoreError::io("syncing", &tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| CoreError::io("renaming into place", path, e))
}

/// An append-only JSON-lines file shared by the threads of a run.
///
/// Each record is written as one line and flushed, so that a run killed at any moment leaves a
/// file whose complete lines are all valid JSON.
#[derive(Debug)]
pub struct JsonlWriter {
    path: PathBuf,
    out: Mutex<BufWriter<File>>,
}

impl JsonlWriter {
    /// Opens `path` for appending, creating it if needed.
    pub fn append(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| CoreError::io("creating directory", parent, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| CoreError::io("opening for append", &path, e))?;
        Ok(JsonlWriter { path, out: Mutex::new(BufWriter::new(file)) })
    }

    /// Appends one record as a line and flushes it.
    pub fn write<T: Serialize>(&self, record: &T) -> Result<()> {
        let mut line = serde_json::to_vec(record)
            .map_err(|e| CoreError::Json { what: self.path.display().to_string(), source: e })?;
        line.push(b'\n');
        // A poisoned lock only means another thread panicked mid-write; the file is still usable.
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.write_all(&line).map_err(|e| CoreError::io("writing", &self.path, e))?;
        out.flush().map_err(|e| CoreError::io("flushing", &self.path, e))
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Directory of the per-stage record shards inside a run directory.
const RECORDS_DIR: &str = "records";

/// The `step` of a serialized record (every record file line carries one).
#[derive(serde::Deserialize)]
struct StepOf {
    step: u64,
}

fn step_of(line: &[u8]) -> Option<u64> {
    serde_json::from_slice::<StepOf>(line).ok().map(|s| s.step)
}

/// The complete lines of a JSON-lines file that parse as records, as (step, line with its `\n`);
/// a partial last line (a run killed mid-write) is dropped. A missing file has none.
fn read_records(path: &Path) -> Result<Vec<(u64, Vec<u8>)>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CoreError::io("reading", path, e)),
    };
    let mut out = Vec::new();
    for line in bytes.split_inclusive(|&b| b == b'\n').filter(|l| l.ends_with(b"\n")) {
        if let Some(step) = step_of(line) {
            out.push((step, line.to_vec()));
        }
    }
    Ok(out)
}

/// One stage's shard of a run-level record file (`records/<stage>/metrics.jsonl`,
/// `records/<stage>/rollouts.jsonl`): JSON objects with an integer `step`, one per line, flushed
/// as written, by one stage thread.
///
/// Why shards: several stage threads appending to one file interleave in whatever order the
/// scheduler picks, and a resumed run would append again the records a killed run wrote past its
/// last checkpoint. A shard belongs to one stage, so its order is the stage's own; on resume
/// (see [`RunDir::resume`]) the first record a stage writes, at step `s`, first truncates the
/// shard to the records of steps before `s` — a stage restarts at the step after its checkpoint,
/// or at its first step when it has none — so nothing is kept twice. The run-level file is
/// assembled from the shards ([`RunDir::assemble`]). A stage's steps must not decrease, and a
/// stage must write every record of a step before it checkpoints that step.
#[derive(Debug)]
pub struct RecordLog {
    path: PathBuf,
    state: Mutex<RecordState>,
}

#[derive(Debug)]
enum RecordState {
    /// Resuming and nothing written yet: the shard still holds the interrupted run's records.
    Untouched,
    /// Appending.
    Open(BufWriter<File>),
}

impl RecordLog {
    fn open(path: PathBuf, resuming: bool) -> Result<Self> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| CoreError::io("creating directory", parent, e))?;
        }
        let state = if resuming {
            RecordState::Untouched
        } else {
            let f = File::create(&path).map_err(|e| CoreError::io("creating", &path, e))?;
            RecordState::Open(BufWriter::new(f))
        };
        Ok(RecordLog { path, state: Mutex::new(state) })
    }

    /// Appends one record (a JSON object with an integer `step` field) as a line and flushes it.
    pub fn write<T: Serialize>(&self, record: &T) -> Result<()> {
        let mut line =
            serde_json::to_vec(record).map_err(|e| CoreError::Json { what: self.path.display().to_string(), source: e })?;
        let Some(step) = step_of(&line) else {
            let e = std::io::Error::new(std::io::ErrorKind::InvalidData, "a record must be a JSON object with an integer `step`");
            return Err(CoreError::io("writing a record to", &self.path, e));
        };
        line.push(b'\n');
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let RecordState::Untouched = *state {
            let kept: Vec<u8> = read_records(&self.path)?.into_iter().filter(|(s, _)| *s < step).flat_map(|(_, l)| l).collect();
            write_atomic(&self.path, &kept)?;
            let f = OpenOptions::new().append(true).open(&self.path).map_err(|e| CoreError::io("opening for append", &self.path, e))?;
            *state = RecordState::Open(BufWriter::new(f));
        }
        let RecordState::Open(out) = &mut *state else { unreachable!("opened above") };
        out.write_all(&line).map_err(|e| CoreError::io("writing", &self.path, e))?;
        out.flush().map_err(|e| CoreError::io("flushing", &self.path, e))
    }

    /// The shard file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The directory of one run: `runs/<pipeline>/<run-id>/`.
///
/// Every result Keel produces lives under a run directory next to the manifest that reproduces
/// it; this type names the standard files so that all stages agree on the layout.
#[derive(Debug)]
pub struct RunDir {
    root: PathBuf,
    /// Stage names in pipeline order: the order of the assembled record files.
    stages: Vec<String>,
    resuming: bool,
    logs: Mutex<BTreeMap<(String, String), Arc<RecordLog>>>,
    /// Serialises assembly (two stages finishing together would share a temporary file).
    assembling: Mutex<()>,
}

impl RunDir {
    /// Creates (or reopens) the run directory of a fresh run; record files of stages in `stages`
    /// order (unknown stages follow, by name).
    pub fn create(root: impl Into<PathBuf>) -> Result<Self> {
        Self::open(root.into(), Vec::new(), false)
    }

    /// The run directory of a run of `stages` (in pipeline order); `resuming` continues an
    /// interrupted run in it, keeping each stage's records before the step it writes again.
    pub fn for_stages(root: impl Into<PathBuf>, stages: Vec<String>, resuming: bool) -> Result<Self> {
        Self::open(root.into(), stages, resuming)
    }

    /// Reopens an interrupted run's directory to continue it (see [`RecordLog`]).
    pub fn resume(root: impl Into<PathBuf>) -> Result<Self> {
        Self::open(root.into(), Vec::new(), true)
    }

    fn open(root: PathBuf, stages: Vec<String>, resuming: bool) -> Result<Self> {
        fs::create_dir_all(&root).map_err(|e| CoreError::io("creating run directory", &root, e))?;
        Ok(RunDir { root, stages, resuming, logs: Mutex::new(BTreeMap::new()), assembling: Mutex::new(()) })
    }

    /// The run directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `manifest.json`: resolved configuration, hashes, versions and seeds.
    pub fn manifest_path(&self) -> PathBuf {
        self.root.join("manifest.json")
    }

    /// `metrics.jsonl`: one [`MetricRecord`] per line, assembled from the stages' shards.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    /// A per-stage directory for checkpoints, evaluation outputs and logs.
    pub fn stage_dir(&self, stage: &str) -> Result<PathBuf> {
        let dir = self.root.join("stages").join(stage);
        fs::create_dir_all(&dir).map_err(|e| CoreError::io("creating stage directory", &dir, e))?;
        Ok(dir)
    }

    /// The stage's shard of the run-level record file `file` (e.g. `rollouts.jsonl`), opened
    /// once per run: `records/<stage>/<file>`.
    pub fn records(&self, stage: &str, file: &str) -> Result<Arc<RecordLog>> {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        let key = (stage.to_string(), file.to_string());
        if let Some(log) = logs.get(&key) {
            return Ok(log.clone());
        }
        let log = Arc::new(RecordLog::open(self.root.join(RECORDS_DIR).join(stage).join(file), self.resuming)?);
        logs.insert(key, log.clone());
        Ok(log)
    }

    /// Appends a metric record to its stage's shard of `metrics.jsonl`.
    pub fn log_metrics(&self, record: &MetricRecord) -> Result<()> {
        self.records(&record.stage, "metrics.jsonl")?.write(record)
    }

    /// The record files `stage` has written in this run (`metrics.jsonl`, ...).
    pub fn record_files_of(&self, stage: &str) -> Vec<String> {
        let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        logs.keys().filter(|(s, _)| s == stage).map(|(_, f)| f.clone()).collect()
    }

    /// Rewrites the run-level `file` from every stage's shard: stages in pipeline order (then
    /// any others by name), each stage's records by step (stable), complete lines only. The same
    /// records give the same bytes, however the stage threads interleaved and however often the
    /// run was interrupted and resumed.
    pub fn assemble(&self, file: &str) -> Result<()> {
        let _guard = self.assembling.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.root.join(RECORDS_DIR);
        let mut on_disk: Vec<String> = match fs::read_dir(&dir) {
            Ok(entries) => entries.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(CoreError::io("listing", &dir, e)),
        };
        on_disk.sort();
        let mut order: Vec<&str> = self.stages.iter().map(String::as_str).collect();
        order.extend(on_disk.iter().map(String::as_str).filter(|s| !self.stages.iter().any(|k| k == s)));
        let mut out = Vec::new();
        let mut any = false;
        for stage in order {
            let path = dir.join(stage).join(file);
            any |= path.exists();
            let mut records = read_records(&path)?;
            records.sort_by_key(|(step, _)| *step);
            out.extend(records.into_iter().flat_map(|(_, l)| l));
        }
        if any || self.root.join(file).exists() {
            write_atomic(&self.root.join(file), &out)?;
        }
        Ok(())
    }

    /// Assembles every record file any stage has a shard of (see [`RunDir::assemble`]).
    pub fn assemble_all(&self) -> Result<()> {
        let dir = self.root.join(RECORDS_DIR);
        let mut files = std::collections::BTreeSet::new();
        if let Ok(stages) = fs::read_dir(&dir) {
            for stage in stages.filter_map(|e| e.ok()) {
                if let Ok(entries) = fs::read_dir(stage.path()) {
                    files.extend(entries.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()));
                }
            }
        }
        files.into_iter().filter(|f| f.ends_with(".jsonl")).try_for_each(|f| self.assemble(&f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("keel-core-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn metrics_lines_are_valid_json() {
        let d = tmp("metrics");
        let run = RunDir::create(&d).unwrap();
        run.log_metrics(&MetricRecord::new("learn", 0).with("loss", 1.5)).unwrap();
        run.log_metrics(&MetricRecord::new("learn", 1).with("loss", 1.25)).unwrap();
        run.assemble("metrics.jsonl").unwrap();
        let text = fs::read_to_string(run.metrics_path()).unwrap();
        let recs: Vec<MetricRecord> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].values["loss"], 1.25);
        fs::remove_dir_all(&d).unwrap();
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
    }

    /// Two stages logging interleaved, in either order, assemble to the same bytes: stage order,
    /// then step.
    #[test]
    fn assembly_is_deterministic() {
        let mut files = Vec::new();
        for (name, a_first) in [("order-a", true), ("order-b", false)] {
            let d = tmp(name);
            let run = RunDir::for_stages(&d, vec!["sample".into(), "learn".into()], false).unwrap();
            let (a, b) = (MetricRecord::new("learn", 1).with("loss", 1.0), MetricRecord::new("sample", 0).with("n", 2.0));
            if a_first {
                run.log_metrics(&a).unwrap();
                run.log_metrics(&b).unwrap();
            } else {
                run.log_metrics(&b).unwrap();
                run.log_metrics(&a).unwrap();
            }
            run.log_metrics(&MetricRecord::new("learn", 2).with("loss", 0.5)).unwrap();
            run.assemble_all().unwrap();
            files.push(fs::read(run.metrics_path()).unwrap());
            fs::remove_dir_all(&d).unwrap();
        }
        assert_eq!(files[0], files[1]);
        let text = String::from_utf8(files[0].clone()).unwrap();
        let stages: Vec<&str> = text.lines().map(|l| if l.contains("sample") { "sample" } else { "learn" }).collect();
        assert_eq!(stages, ["sample", "learn", "learn"]);
    }

    /// A run killed after logging steps 1..=5 (the last line half written) and resumed from a
    /// checkpoint at step 3 logs 4..=6 again: the result equals an uninterrupted run's, and a
    /// stage that reruns from its start replaces all of its records.
    #[test]
    fn resume_truncates_each_stage_to_the_step_it_writes_again() {
        // A data stage logs step 0; the learner logs metrics at steps `from..=to` and rollouts at
        // steps `from-1..to`.
        let log = |dir: &Path, resuming: bool, from: u64, to: u64| {
            let run = RunDir::for_stages(dir, vec!["data".into(), "learn".into()], resuming).unwrap();
            run.log_metrics(&MetricRecord::new("data", 0).with("n", 10.0)).unwrap();
            for step in from..=to {
                run.log_metrics(&MetricRecord::new("learn", step).with("loss", 1.0 / step as f64)).unwrap();
            }
            let rollouts = run.records("learn", "rollouts.jsonl").unwrap();
            for step in from - 1..to {
                rollouts.write(&serde_json::json!({"stage": "learn", "step": step, "reward": step})).unwrap();
            }
            run
        };
        let full = tmp("resume-full");
        log(&full, false, 1, 6).assemble_all().unwrap();
        let killed = tmp("resume-killed");
        drop(log(&killed, false, 1, 5));
        let shard = killed.join("records/learn/metrics.jsonl");
        let mut f = OpenOptions::new().append(true).open(&shard).unwrap();
        f.write_all(br#"{"stage":"learn","st"#).unwrap();
        drop(f);
        assert_eq!(lines(&shard).len(), 6, "5 records and a partial line");

        let run = log(&killed, true, 4, 6);
        run.assemble_all().unwrap();
        for file in ["metrics.jsonl", "rollouts.jsonl"] {
            assert_eq!(fs::read(killed.join(file)).unwrap(), fs::read(full.join(file)).unwrap(), "{file}");
        }
        assert_eq!(lines(&killed.join("metrics.jsonl")).len(), 7);
        assert_eq!(lines(&killed.join("rollouts.jsonl")).len(), 6);
        let e = run.records("learn", "bad.jsonl").unwrap().write(&serde_json::json!({"no": "step"})).unwrap_err();
        assert!(e.to_string().contains("integer `step`"), "{e}");
        fs::remove_dir_all(&full).unwrap();
        fs::remove_dir_all(&killed).unwrap();
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let d = tmp("atomic");
        let p = d.join("m.json");
        write_atomic(&p, b"first version, long").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        let leftovers: Vec<_> = fs::read_dir(&d).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
        fs::remove_dir_all(&d).unwrap();
    }
}
