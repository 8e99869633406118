//! The files of a run directory that the engine writes itself (`manifest.json`, `status.json`),
//! and where a run goes: the run directory chosen from `--runs-dir` and a checked run id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use keel_core::write_atomic;
use serde::{Deserialize, Serialize};

use crate::error::RunError;
use crate::runner::RunOptions;
use crate::validated::{CellInfo, DryRunInfo, Pipeline};

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

pub(crate) fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}

pub(crate) fn git_revision(dir: Option<&Path>) -> Option<String> {
    let mut cmd = std::process::Command::new("git");
    cmd.args(["rev-parse", "HEAD"]).stderr(std::process::Stdio::null());
    if let Some(d) = dir.filter(|d| d.is_dir()) {
        cmd.current_dir(d);
    }
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
}

/// Longest run id accepted (a file name must fit in 255 bytes; sweep cell ids stay under 128).
pub const MAX_RUN_ID_LEN: usize = 128;

/// Checks that a run id (or sweep cell id) is one safe path component: 1 to [`MAX_RUN_ID_LEN`]
/// characters of `A-Z a-z 0-9 . _ = -`, not starting with `.` (so never `.`, `..` or hidden). A
/// run id becomes a directory name under `--runs-dir`, so anything else (`../x`, `/abs`, `a/b`)
/// could write the run outside it.
pub fn check_run_id(id: &str) -> Result<(), RunError> {
    let reason = if id.is_empty() {
        Some("it is empty".to_string())
    } else if id.len() > MAX_RUN_ID_LEN {
        Some(format!("it is {} bytes long, more than {MAX_RUN_ID_LEN}", id.len()))
    } else if id.starts_with('.') {
        Some("it starts with `.`".to_string())
    } else {
        id.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '=' | '-')))
            .map(|c| format!("it contains {c:?}"))
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(RunError::InvalidRunId { id: id.to_string(), reason }),
    }
}

/// The run directory and id of a run: `<runs_root>/<pipeline>/<run_id>` (or the explicit
/// `run_dir` of a sweep cell), refusing unsafe run ids, taken directories and, on resume, a
/// different configuration.
pub(crate) fn choose_run_dir(p: &Pipeline, opts: &RunOptions) -> Result<(PathBuf, String), RunError> {
    if let Some(id) = &opts.run_id {
        check_run_id(id)?;
    }
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

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RunError> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| keel_core::CoreError::Json { what: path.display().to_string(), source: e })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)?;
    Ok(())
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
