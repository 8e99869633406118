//! `dry_run`: stage kinds shrink or replace themselves, the engine applies the changes, validates,
//! records them in the manifest and runs into `runs/<pipeline>/dry-run/`, separate from real runs.

use std::path::PathBuf;

use keel_pipeline::testkit::{self, CounterKind, Recorder};
use keel_pipeline::{
    dry_run, load_str, run, DryRun, Manifest, ParamProblem, ParamSpec, Params, PortSpec, Registry, RunOptions, Stage,
    StageKind,
};

/// A counter whose dry run emits at most 2 integers.
struct ShrinkingCounter(Recorder);

impl StageKind for ShrinkingCounter {
    fn name(&self) -> &'static str {
        "shrinking"
    }
    fn doc(&self) -> &'static str {
        "counter that shrinks to 2 items in a dry run"
    }
    fn outputs(&self) -> Vec<PortSpec> {
        CounterKind(self.0.clone()).outputs()
    }
    fn params(&self) -> Vec<ParamSpec> {
        CounterKind(self.0.clone()).params()
    }
    fn dry_run(&self, params: &Params) -> Result<DryRun, ParamProblem> {
        let count: i64 = params.get("count").map_err(|e| ParamProblem::new("count", e.to_string()))?;
        if count > 1000 {
            return Err(ParamProblem::new("count", "too large to shrink").with_help("use a count <= 1000"));
        }
        Ok(DryRun::unchanged().set("count", count.min(2)).note("emits at most 2 integers"))
    }
    fn build(&self, params: &Params) -> Result<Box<dyn Stage>, keel_pipeline::StageError> {
        CounterKind(self.0.clone()).build(params)
    }
}

/// A stage that cannot run on a laptop and is replaced by a `counter` in a dry run.
struct Heavy;

impl StageKind for Heavy {
    fn name(&self) -> &'static str {
        "heavy"
    }
    fn doc(&self) -> &'static str {
        "fails when built; a dry run replaces it"
    }
    fn outputs(&self) -> Vec<PortSpec> {
        vec![PortSpec::new("out", "int", "integers")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::required("size", keel_pipeline::ParamType::Int, "how heavy")]
    }
    fn dry_run(&self, _params: &Params) -> Result<DryRun, ParamProblem> {
        Ok(DryRun { kind: Some("counter"), ..DryRun::unchanged() }.set("count", 3).set("start", 1))
    }
    fn build(&self, _params: &Params) -> Result<Box<dyn Stage>, keel_pipeline::StageError> {
        Err(keel_pipeline::StageError::msg("heavy stages need a GPU"))
    }
}

fn registry() -> (Registry, Recorder) {
    let (mut reg, rec) = testkit::registry();
    reg.register(ShrinkingCounter(rec.clone())).register(Heavy);
    (reg, rec)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("keel-pipeline-dry-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

const PIPELINE: &str = "name: dry\nseed: 1\nstages:\n  a: {use: shrinking, with: {count: 50}}\n  h: {use: heavy, with: {size: 7}}\n  sink: {use: sink, inputs: {in: [a.out, h.out]}}\nsweep:\n  grid: {stages.a.with.count: [10, 20]}\n";

#[test]
fn dry_run_shrinks_replaces_records_and_runs_apart() {
    let (reg, rec) = registry();
    let real = load_str("dry.yaml", PIPELINE, &[], &reg).unwrap_or_else(|d| panic!("{d}"));
    assert!(real.dry_run.is_none());
    let dry = dry_run(&real, &reg).unwrap_or_else(|d| panic!("{d}"));
    assert!(dry.sweep.is_none(), "a dry run runs the base configuration");
    assert_eq!(dry.stage("h").map(|s| s.kind.name()), Some("counter"));
    let info = dry.dry_run.clone().expect("marked as a dry run");
    assert!(info.changes.contains(&"stages.a.with.count=2".to_string()), "{:?}", info.changes);
    assert!(info.changes.contains(&"stages.h.use=\"counter\"".to_string()), "{:?}", info.changes);
    assert_eq!(info.notes, vec!["stage `a`: emits at most 2 integers".to_string()]);
    assert_ne!(real.config_hash(), dry.config_hash());

    let root = tmp("run");
    let report = run(&dry, &RunOptions { runs_root: root.clone(), ..RunOptions::default() }).unwrap();
    assert_eq!(report.run_dir.parent(), Some(root.join("dry").join("dry-run").as_path()));
    let m: Manifest = serde_json::from_str(&std::fs::read_to_string(report.run_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m.dry_run, Some(info));
    assert_eq!(m.config["dry_run"], serde_json::Value::Bool(true));
    assert!(m.overrides.is_empty(), "dry-run changes are not user overrides");
    // 2 integers from `a` (0, 1) and 3 from the stand-in for `h` (1, 2, 3).
    let mut got: Vec<i64> = rec.events_of("sink", "recv").iter().map(|e| e.value).collect();
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 1, 2, 3]);

    // A real run's manifest says `dry_run: null` and lives directly under runs/<pipeline>/.
    let (reg2, _) = registry();
    let plain = load_str("plain.yaml", "name: dry\nseed: 1\nstages:\n  a: {use: shrinking, with: {count: 1}}\n", &[], &reg2).unwrap();
    let report = run(&plain, &RunOptions { runs_root: root.clone(), ..RunOptions::default() }).unwrap();
    assert_eq!(report.run_dir.parent(), Some(root.join("dry").as_path()));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(report.run_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(v["dry_run"], serde_json::Value::Null);
    assert!(v["config"].get("dry_run").is_none());
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn dry_run_problems_point_at_the_parameter() {
    let (reg, _) = registry();
    let p = load_str("bad.yaml", "name: bad\nseed: 1\nstages:\n  a: {use: shrinking, with: {count: 5000}}\n", &[], &reg)
        .unwrap_or_else(|d| panic!("{d}"));
    let e = dry_run(&p, &reg).expect_err("the hook refuses");
    let text = e.to_string();
    assert!(text.contains("bad.yaml:4:") && text.contains("cannot be dry-run") && text.contains("use a count <= 1000"), "{text}");
}
