use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// The directory of one run: `runs/<pipeline>/<run-id>/`.
///
/// Every result Keel produces lives under a run directory next to the manifest that reproduces
/// it; this type names the standard files so that all stages agree on the layout.
#[derive(Debug)]
pub struct RunDir {
    root: PathBuf,
    metrics: JsonlWriter,
}

impl RunDir {
    /// Creates (or reopens) the run directory and its `metrics.jsonl`.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| CoreError::io("creating run directory", &root, e))?;
        let metrics = JsonlWriter::append(root.join("metrics.jsonl"))?;
        Ok(RunDir { root, metrics })
    }

    /// The run directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `manifest.json`: resolved configuration, hashes, versions and seeds.
    pub fn manifest_path(&self) -> PathBuf {
        self.root.join("manifest.json")
    }

    /// `metrics.jsonl`: one [`MetricRecord`] per line.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    /// A per-stage directory for checkpoints, evaluation outputs and logs.
    pub fn stage_dir(&self, stage: &str) -> Result<PathBuf> {
        let dir = self.root.join("stages").join(stage);
        fs::create_dir_all(&dir).map_err(|e| CoreError::io("creating stage directory", &dir, e))?;
        Ok(dir)
    }

    /// Appends a metric record to `metrics.jsonl`.
    pub fn log_metrics(&self, record: &MetricRecord) -> Result<()> {
        self.metrics.write(record)
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
        let text = fs::read_to_string(run.metrics_path()).unwrap();
        let recs: Vec<MetricRecord> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].values["loss"], 1.25);
        fs::remove_dir_all(&d).unwrap();
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
