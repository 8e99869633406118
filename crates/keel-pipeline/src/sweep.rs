//! Sweeps: a grid of parameter values times seeds, each cell an ordinary run, aggregated into one
//! table with means and bootstrap confidence intervals across seeds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;

use crate::cancel::CancelHandle;
use crate::error::RunError;
use crate::progress::{NoProgress, ProgressSink};
use crate::run_files::{read_status, RunStatus};
use crate::runner::{run, RunOptions, DEFAULT_CHANNEL_CAPACITY};
use crate::sweep_cells::SweepCell;
use crate::validated::{CellInfo, Pipeline};

/// `<runs_root>/<pipeline>/sweep/`: where cells and the summary go.
pub fn sweep_dir(runs_root: &Path, pipeline_name: &str) -> PathBuf {
    runs_root.join(pipeline_name).join("sweep")
}

/// `<runs_root>/<pipeline>/sweep/<cell-id>/`.
pub fn cell_dir(runs_root: &Path, cell: &SweepCell) -> PathBuf {
    sweep_dir(runs_root, &cell.pipeline.name).join(&cell.info.id)
}

/// How to run a sweep.
#[derive(Clone)]
pub struct SweepOptions {
    /// Root of all runs.
    pub runs_root: PathBuf,
    /// Cells run concurrently.
    pub jobs: usize,
    /// Edge capacity inside each cell.
    pub channel_capacity: usize,
    /// Progress bars.
    pub progress: Arc<dyn ProgressSink>,
    /// Stops launching cells and cancels running ones.
    pub cancel: CancelHandle,
    /// Per-cell grace after cancellation.
    pub join_grace: Duration,
    /// Bootstrap resamples for the confidence intervals.
    pub bootstrap_resamples: usize,
    /// Command line recorded in every cell's manifest.
    pub command_line: Vec<String>,
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions {
            runs_root: PathBuf::from("runs"),
            jobs: 1,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            progress: Arc::new(NoProgress),
            cancel: CancelHandle::new(),
            join_grace: Duration::from_secs(10),
            bootstrap_resamples: 2000,
            command_line: std::env::args().collect(),
        }
    }
}

/// What happened to one cell.
#[derive(Debug, Clone, PartialEq)]
pub enum CellOutcome {
    /// Ran to completion now.
    Complete,
    /// Already complete with the same config hash; not rerun.
    Skipped,
    /// Failed (the message names the stage).
    Failed(String),
    /// Not run or stopped because the sweep was cancelled.
    Cancelled,
}

/// What a sweep did.
#[derive(Debug, Clone)]
pub struct SweepReport {
    /// `runs/<pipeline>/sweep/`.
    pub dir: PathBuf,
    /// Each cell with its outcome, in index order.
    pub cells: Vec<(CellInfo, CellOutcome)>,
    /// `summary.csv`.
    pub summary_csv: PathBuf,
    /// `summary.md`.
    pub summary_md: PathBuf,
}

impl SweepReport {
    /// The error the CLI should exit with: [`RunError::SweepFailed`] if any cell failed,
    /// [`RunError::Cancelled`] if the sweep was cancelled, `None` if every cell is complete.
    pub fn failure(&self) -> Option<RunError> {
        let failed: Vec<String> = self
            .cells
            .iter()
            .filter(|(_, o)| matches!(o, CellOutcome::Failed(_)))
            .map(|(c, _)| c.id.clone())
            .collect();
        if !failed.is_empty() {
            return Some(RunError::SweepFailed { failed: failed.len(), total: self.cells.len(), cells: failed });
        }
        self.cells
            .iter()
            .any(|(_, o)| *o == CellOutcome::Cancelled)
            .then(|| RunError::Cancelled { run_dir: self.dir.clone() })
    }

    /// Number of cells with the given outcome kind.
    pub fn count(&self, f: impl Fn(&CellOutcome) -> bool) -> usize {
        self.cells.iter().filter(|(_, o)| f(o)).count()
    }
}

/// True if the cell's directory holds a complete run of the same configuration.
pub fn cell_is_complete(runs_root: &Path, cell: &SweepCell) -> bool {
    read_status(&cell_dir(runs_root, cell))
        .is_some_and(|s| s.status == RunStatus::Complete && s.config_hash == cell.pipeline.config_hash())
}

/// Runs one cell in its directory unless it is already complete (a stale or partial run there is
/// removed first). This is what `keel run FILE --sweep-cell INDEX` does.
pub fn run_cell(cell: &SweepCell, opts: &SweepOptions) -> Result<CellOutcome, RunError> {
    let dir = cell_dir(&opts.runs_root, cell);
    if cell_is_complete(&opts.runs_root, cell) {
        return Ok(CellOutcome::Skipped);
    }
    // An interrupted cell of the same configuration is resumed (its stages restore their
    // checkpoints); one of another configuration is stale and starts over.
    let same_config = std::fs::read_to_string(dir.join("manifest.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|m| m.get("config_hash").and_then(|h| h.as_str()).map(|h| h == cell.pipeline.config_hash()))
        .unwrap_or(false);
    if !same_config && (dir.join("manifest.json").exists() || dir.join("status.json").exists()) {
        std::fs::remove_dir_all(&dir).map_err(|e| keel_core::CoreError::io("removing stale cell run", &dir, e))?;
    }
    let ropts = RunOptions {
        runs_root: opts.runs_root.clone(),
        run_id: None,
        run_dir: Some(dir),
        channel_capacity: opts.channel_capacity,
        progress: opts.progress.clone(),
        cancel: opts.cancel.clone(),
        join_grace: opts.join_grace,
        command_line: opts.command_line.clone(),
        resume: same_config,
    };
    match run(&cell.pipeline, &ropts) {
        Ok(_) => Ok(CellOutcome::Complete),
        Err(RunError::Cancelled { .. }) => Ok(CellOutcome::Cancelled),
        Err(RunError::StageFailed { stage, message, .. }) => Ok(CellOutcome::Failed(format!("stage `{stage}`: {message}"))),
        Err(e) => Ok(CellOutcome::Failed(e.to_string())),
    }
}

/// Runs every cell, `opts.jobs` at a time, skipping complete ones, then writes `summary.csv` and
/// `summary.md`. Failed cells do not stop the others; they are listed in the report and summary.
pub fn run_sweep(cells: &[SweepCell], opts: &SweepOptions) -> Result<SweepReport, RunError> {
    let Some(first) = cells.first() else {
        return Err(RunError::Other("the sweep has no cells".into()));
    };
    let dir = sweep_dir(&opts.runs_root, &first.pipeline.name);
    std::fs::create_dir_all(&dir).map_err(|e| keel_core::CoreError::io("creating sweep directory", &dir, e))?;
    let outcomes: Mutex<Vec<Option<Result<CellOutcome, String>>>> = Mutex::new(vec![None; cells.len()]);
    let (tx, rx) = crossbeam::channel::unbounded::<usize>();
    for i in 0..cells.len() {
        let _ = tx.send(i);
    }
    drop(tx);
    let jobs = opts.jobs.clamp(1, cells.len());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let rx = rx.clone();
            let outcomes = &outcomes;
            scope.spawn(move || {
                while let Ok(i) = rx.recv() {
                    let r = if opts.cancel.is_cancelled() {
                        Ok(CellOutcome::Cancelled)
                    } else {
                        run_cell(&cells[i], opts).map_err(|e| e.to_string())
                    };
                    outcomes.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
                }
            });
        }
    });
    let outcomes = outcomes.into_inner().unwrap_or_else(|p| p.into_inner());
    let report_cells: Vec<(CellInfo, CellOutcome)> = cells
        .iter()
        .zip(outcomes)
        .map(|(c, o)| {
            let o = match o {
                Some(Ok(o)) => o,
                Some(Err(e)) => CellOutcome::Failed(e),
                None => CellOutcome::Cancelled,
            };
            (c.info.clone(), o)
        })
        .collect();
    let (summary_csv, summary_md) = summarize(&first.pipeline, &dir, &report_cells, opts.bootstrap_resamples)?;
    Ok(SweepReport { dir, cells: report_cells, summary_csv, summary_md })
}

/// The last value of every `stage/metric` in a run's `metrics.jsonl`.
pub fn last_metrics(run_dir: &Path) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(run_dir.join("metrics.jsonl")) else { return out };
    for line in text.lines() {
        if let Ok(rec) = serde_json::from_str::<keel_core::MetricRecord>(line) {
            for (k, v) in rec.values {
                out.insert(format!("{}/{k}", rec.stage), v);
            }
        }
    }
    out
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// 95% percentile bootstrap confidence interval of the mean, deterministic in `seed`.
pub fn bootstrap_ci(xs: &[f64], resamples: usize, seed: u64) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    if xs.len() == 1 || resamples == 0 {
        let (m, _) = mean_std(xs);
        return (m, m);
    }
    let mut rng = keel_core::SeedStream::new(seed).rng("bootstrap");
    let n = xs.len();
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| xs[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    (quantile(&means, 0.025), quantile(&means, 0.975))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        "".into()
    } else {
        format!("{x:.6}")
    }
}

/// One aggregated row of the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    /// Parameter point (cell group).
    pub group: String,
    /// `stage/metric`.
    pub metric: String,
    /// Seeds that reported it.
    pub n: usize,
    /// Mean across seeds.
    pub mean: f64,
    /// Sample standard deviation.
    pub std: f64,
    /// 95% bootstrap CI low end.
    pub ci_low: f64,
    /// 95% bootstrap CI high end.
    pub ci_high: f64,
}

/// Aggregates completed and skipped cells per parameter point and writes `summary.csv` and
/// `summary.md` into `dir`.
pub fn summarize(
    p: &Pipeline,
    dir: &Path,
    cells: &[(CellInfo, CellOutcome)],
    resamples: usize,
) -> Result<(PathBuf, PathBuf), RunError> {
    let runs_ok = |o: &CellOutcome| matches!(o, CellOutcome::Complete | CellOutcome::Skipped);
    // (group id, its assignments, the last metrics of each completed seed)
    type Group = (String, Vec<(String, serde_json::Value)>, Vec<BTreeMap<String, f64>>);
    let mut groups: Vec<Group> = Vec::new();
    for (info, outcome) in cells {
        if !runs_ok(outcome) {
            continue;
        }
        let metrics = last_metrics(&dir.join(&info.id));
        match groups.iter_mut().find(|(g, _, _)| *g == info.group) {
            Some((_, _, ms)) => ms.push(metrics),
            None => groups.push((info.group.clone(), info.assignments.clone(), vec![metrics])),
        }
    }
    let grid_paths: Vec<String> =
        cells.first().map(|(c, _)| c.assignments.iter().map(|(k, _)| k.clone()).collect()).unwrap_or_default();
    let seeds = keel_core::SeedStream::new(p.seed);
    let mut rows = Vec::new();
    for (group, assignments, runs) in &groups {
        let mut keys: Vec<&String> = runs.iter().flat_map(|m| m.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let xs: Vec<f64> = runs.iter().filter_map(|m| m.get(key).copied()).collect();
            let (mean, std) = mean_std(&xs);
            let (ci_low, ci_high) = bootstrap_ci(&xs, resamples, seeds.seed(&format!("{group}/{key}")));
            rows.push((assignments.clone(), SummaryRow { group: group.clone(), metric: key.clone(), n: xs.len(), mean, std, ci_low, ci_high }));
        }
    }

    let mut csv = String::from("cell");
    for g in &grid_paths {
        csv.push(',');
        csv.push_str(&csv_field(g));
    }
    csv.push_str(",metric,n,mean,std,ci95_low,ci95_high\n");
    for (assign, r) in &rows {
        csv.push_str(&csv_field(&r.group));
        for g in &grid_paths {
            let v = assign.iter().find(|(k, _)| k == g).map(|(_, v)| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            csv.push(',');
            csv.push_str(&csv_field(&v.unwrap_or_default()));
        }
        let _ = writeln!(
            csv,
            ",{},{},{},{},{},{}",
            csv_field(&r.metric),
            r.n,
            fmt_num(r.mean),
            fmt_num(r.std),
            fmt_num(r.ci_low),
            fmt_num(r.ci_high)
        );
    }

    let complete = cells.iter().filter(|(_, o)| *o == CellOutcome::Complete).count();
    let skipped = cells.iter().filter(|(_, o)| *o == CellOutcome::Skipped).count();
    let failed: Vec<&(CellInfo, CellOutcome)> = cells.iter().filter(|(_, o)| matches!(o, CellOutcome::Failed(_))).collect();
    let cancelled = cells.iter().filter(|(_, o)| *o == CellOutcome::Cancelled).count();
    // Cell ids, metric names and messages carry user text (grid values, labels): escaped, so a
    // `|` or `<` in them cannot break the table or inject HTML.
    let mut md = format!("# Sweep summary: {}\n\n", keel_core::md_line(&p.name));
    let _ = writeln!(
        md,
        "{} cells: {complete} run now, {skipped} already complete, {} failed, {cancelled} cancelled. \
         Each metric is the last value a stage logged; mean and sample std are across seeds, the 95% CI \
         is a percentile bootstrap of the mean ({resamples} resamples).\n",
        cells.len(),
        failed.len()
    );
    md.push_str("| cell | metric | n | mean | std | 95% CI |\n|---|---|---|---|---|---|\n");
    for (_, r) in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.4} | {:.4} | [{:.4}, {:.4}] |",
            keel_core::md_cell(&r.group),
            keel_core::md_cell(&r.metric),
            r.n, r.mean, r.std, r.ci_low, r.ci_high
        );
    }
    if !failed.is_empty() {
        md.push_str("\n## Failed cells\n\n");
        for (info, o) in failed {
            if let CellOutcome::Failed(msg) = o {
                let _ = writeln!(md, "- {}: {}", keel_core::md_line(&info.id), keel_core::md_line(msg));
            }
        }
    }
    let csv_path = dir.join("summary.csv");
    let md_path = dir.join("summary.md");
    keel_core::write_atomic(&csv_path, csv.as_bytes())?;
    keel_core::write_atomic(&md_path, md.as_bytes())?;
    Ok((csv_path, md_path))
}

/// Options of the generated Slurm script.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// The `keel` binary to call (default: the current executable).
    pub binary: PathBuf,
    /// The pipeline file passed to `keel run`.
    pub pipeline_file: PathBuf,
    /// Extra arguments for every `keel run` (e.g. `--runs-dir /scratch/runs`), appended verbatim.
    pub extra_args: Vec<String>,
    /// `#SBATCH --time`, e.g. `04:00:00`.
    pub time: Option<String>,
    /// `#SBATCH --cpus-per-task`.
    pub cpus_per_task: Option<u32>,
    /// `#SBATCH --mem`, e.g. `16G`.
    pub mem: Option<String>,
    /// `#SBATCH --partition`.
    pub partition: Option<String>,
    /// At most this many array tasks at once (`--array=0-N%K`).
    pub max_parallel: Option<usize>,
}

impl SlurmOptions {
    /// Options calling the current executable on `pipeline_file`.
    pub fn new(pipeline_file: impl Into<PathBuf>) -> Self {
        SlurmOptions {
            binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("keel")),
            pipeline_file: pipeline_file.into(),
            extra_args: Vec::new(),
            time: None,
            cpus_per_task: None,
            mem: None,
            partition: None,
            max_parallel: None,
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Writes `sweep.slurm` (a job array, one cell per task, each running
/// `keel run FILE --sweep-cell $SLURM_ARRAY_TASK_ID` plus the pipeline's `--set` overrides) and
/// `cells.tsv` (index, cell id, seed, assignments as JSON) into `dir`; returns both paths.
pub fn emit_slurm(dir: &Path, cells: &[SweepCell], opts: &SlurmOptions) -> Result<(PathBuf, PathBuf), RunError> {
    let Some(first) = cells.first() else {
        return Err(RunError::Other("the sweep has no cells".into()));
    };
    std::fs::create_dir_all(dir).map_err(|e| keel_core::CoreError::io("creating directory", dir, e))?;
    let mut tsv = String::from("index\tcell_id\tseed\tassignments\n");
    for c in cells {
        let assign: serde_json::Map<String, serde_json::Value> = c.info.assignments.iter().cloned().collect();
        let _ = writeln!(tsv, "{}\t{}\t{}\t{}", c.info.index, c.info.id, c.info.seed, serde_json::Value::Object(assign));
    }
    let cells_path = dir.join("cells.tsv");
    let script_path = dir.join("sweep.slurm");
    let name = &first.pipeline.name;
    let mut s = String::from("#!/bin/bash\n");
    let _ = writeln!(s, "#SBATCH --job-name=keel-{name}");
    let array = match opts.max_parallel {
        Some(k) => format!("0-{}%{k}", cells.len() - 1),
        None => format!("0-{}", cells.len() - 1),
    };
    let _ = writeln!(s, "#SBATCH --array={array}");
    let _ = writeln!(s, "#SBATCH --output={}/slurm-%A_%a.out", dir.display());
    if let Some(t) = &opts.time {
        let _ = writeln!(s, "#SBATCH --time={t}");
    }
    if let Some(c) = opts.cpus_per_task {
        let _ = writeln!(s, "#SBATCH --cpus-per-task={c}");
    }
    if let Some(m) = &opts.mem {
        let _ = writeln!(s, "#SBATCH --mem={m}");
    }
    if let Some(p) = &opts.partition {
        let _ = writeln!(s, "#SBATCH --partition={p}");
    }
    let _ = writeln!(s, "# {} cells of pipeline `{name}`; see {}", cells.len(), cells_path.display());
    s.push_str("set -euo pipefail\n");
    let _ = writeln!(
        s,
        "CELL=$(awk -F'\\t' -v i=\"$SLURM_ARRAY_TASK_ID\" '$1 == i {{print $2}}' {})",
        shell_quote(&cells_path.display().to_string())
    );
    s.push_str("echo \"keel sweep cell $SLURM_ARRAY_TASK_ID: $CELL\"\n");
    let mut cmd = vec![
        shell_quote(&opts.binary.display().to_string()),
        "run".to_string(),
        shell_quote(&opts.pipeline_file.display().to_string()),
        "--sweep-cell".to_string(),
        "\"$SLURM_ARRAY_TASK_ID\"".to_string(),
    ];
    for o in first.pipeline.doc.overrides() {
        cmd.push("--set".into());
        cmd.push(shell_quote(o));
    }
    cmd.extend(opts.extra_args.iter().map(|a| shell_quote(a)));
    let _ = writeln!(s, "exec {}", cmd.join(" "));
    keel_core::write_atomic(&cells_path, tsv.as_bytes())?;
    keel_core::write_atomic(&script_path, s.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&script_path, std::fs::Permissions::from_mode(0o755));
    }
    Ok((script_path, cells_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12);
        assert!((s - 1.0).abs() < 1e-12);
        let xs = [1.0, 2.0, 3.0, 4.0, 5.0];
        let (lo, hi) = bootstrap_ci(&xs, 2000, 7);
        assert!(lo < 3.0 && hi > 3.0 && lo >= 1.0 && hi <= 5.0, "{lo} {hi}");
        assert_eq!(bootstrap_ci(&xs, 2000, 7), (lo, hi), "deterministic");
        assert_eq!(bootstrap_ci(&[4.0], 2000, 7), (4.0, 4.0));
        assert_eq!(quantile(&[0.0, 10.0], 0.25), 2.5);
    }

    /// A label with `|`, `<` and a line break in a metric name and a failure message cannot
    /// break the summary table: the rows are escaped by keel-core's `md_cell` (golden text).
    #[test]
    fn summary_markdown_escapes_user_text() {
        let (reg, _) = crate::testkit::registry();
        let p = crate::load_str("t.yaml", "name: esc\nseed: 1\nstages:\n  src: {use: counter, with: {count: 1}}\n", &[], &reg).unwrap();
        let dir = std::env::temp_dir().join(format!("keel-sweep-md-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cell = |i: usize, id: &str| CellInfo { index: i, id: id.into(), group: "g|<b>".into(), assignments: Vec::new(), seed: 1 };
        std::fs::create_dir_all(dir.join("ok")).unwrap();
        std::fs::write(dir.join("ok/metrics.jsonl"), "{\"stage\":\"ev\",\"step\":0,\"values\":{\"a|b<i>\":0.5}}\n").unwrap();
        let cells = [(cell(0, "ok"), CellOutcome::Complete), (cell(1, "bad"), CellOutcome::Failed("x | <y>\nz".into()))];
        let (_, md) = summarize(&p, &dir, &cells, 10).unwrap();
        let md = std::fs::read_to_string(md).unwrap();
        assert!(md.contains("| g\\|&lt;b&gt; | ev/a\\|b&lt;i&gt; | 1 | 0.5000 | 0.0000 | [0.5000, 0.5000] |\n"), "{md}");
        assert!(md.contains("- bad: x | &lt;y&gt; z\n"), "{md}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
