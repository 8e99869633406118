//! The runner, the policy store feedback loop, run directories and sweeps, end to end with the
//! testkit kinds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_pipeline::testkit::{self, Recorder};
use keel_pipeline::{
    emit_slurm, expand_sweep, load_str, read_status, run, run_sweep, CancelHandle, CellOutcome, Manifest, Pipeline,
    ProgressEvent, RecordingProgress, Registry, RunError, RunOptions, RunStatus, SlurmOptions, SweepOptions,
};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("keel-pipeline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn setup(text: &str) -> (Pipeline, Recorder, Registry) {
    let (reg, rec) = testkit::registry();
    let p = load_str("test.yaml", text, &[], &reg).unwrap_or_else(|e| panic!("{e}"));
    (p, rec, reg)
}

fn opts(root: &Path) -> RunOptions {
    RunOptions { runs_root: root.to_path_buf(), join_grace: Duration::from_secs(5), ..RunOptions::default() }
}

fn read_manifest(dir: &Path) -> Manifest {
    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest.json exists");
    serde_json::from_str(&text).expect("manifest.json parses")
}

#[test]
fn stages_overlap_in_time_and_results_are_correct() {
    let (p, rec, _) = setup(
        "name: overlap\nseed: 3\nstages:\n  src: {use: counter, with: {count: 10, start: 1, delay_ms: 15}}\n  double: {use: map, with: {mul: 2, delay_ms: 15}, inputs: {in: src.out}}\n  sink: {use: sink, with: {expect: 10}, inputs: {in: double.out}}\n",
    );
    let root = tmp("overlap");
    let progress = Arc::new(RecordingProgress::new());
    let t = Instant::now();
    let report = run(&p, &RunOptions { progress: progress.clone(), ..opts(&root) }).unwrap();
    let elapsed = t.elapsed();
    let sends = rec.events_of("src", "send");
    let recvs = rec.events_of("sink", "recv");
    assert_eq!(sends.len(), 10);
    assert_eq!(recvs.iter().map(|e| e.value).collect::<Vec<_>>(), (1..=10).map(|x| x * 2).collect::<Vec<_>>());
    // Run one after the other, the sink would receive nothing before the source's last send.
    // Pipelined (both sleep 15 ms per item) it has received about 8 items by then.
    let last_produced = sends[9].at;
    let consumed_early = recvs.iter().filter(|e| e.at < last_produced).count();
    assert!(consumed_early >= 5, "only {consumed_early} items consumed while the source was still producing");
    let map_first = rec.events_of("double", "recv")[0].at;
    assert!(map_first < sends[1].at, "the map worked on item 1 before the source sent item 2");
    // Sequential execution needs at least 10*15 + 10*15 = 300 ms; pipelined about 165 ms.
    assert!(elapsed < Duration::from_millis(1000), "took {elapsed:?}");

    // Run directory contents.
    let dir = report.run_dir.clone();
    assert_eq!(dir.parent().unwrap(), root.join("overlap"));
    let status = read_status(&dir).unwrap();
    assert_eq!(status.status, RunStatus::Complete);
    assert_eq!(status.stages["sink"].status, "complete");
    assert_eq!(status.config_hash, p.config_hash());
    let m = read_manifest(&dir);
    assert_eq!(m.pipeline, "overlap");
    assert_eq!(m.seed, 3);
    assert_eq!(m.keel_version, keel_core::KEEL_VERSION);
    assert_eq!(m.config_hash, p.config_hash());
    assert_eq!(m.stage_seeds["src"], keel_core::SeedStream::new(3).child("src").root());
    assert_eq!(m.config["stages"]["double"]["with"]["mul"], 2);
    let metrics = keel_pipeline::last_metrics(&dir);
    assert_eq!(metrics["sink/count"], 10.0);
    assert_eq!(metrics["sink/sum"], 110.0);
    assert_eq!(metrics["src/sum"], 55.0);
    let log = std::fs::read_to_string(dir.join("logs/double.log")).unwrap();
    assert!(log.contains("started") && log.contains("finished"), "{log}");
    // Progress went through the sink.
    let events = progress.events();
    assert!(events.contains(&ProgressEvent::Begin { stage: "src".into(), label: "emit".into(), total: Some(10) }));
    assert!(events.contains(&ProgressEvent::Position { stage: "src".into(), label: "emit".into(), position: 10 }));
    assert!(events.contains(&ProgressEvent::Finish { stage: "src".into(), label: "emit".into() }));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn bounded_channels_bound_memory_with_a_slow_consumer() {
    let (p, rec, _) = setup(
        "name: backpressure\nseed: 1\nstages:\n  src: {use: counter, with: {count: 150}}\n  sink: {use: sink, with: {delay_ms: 1, expect: 150}, inputs: {in: src.out}}\n",
    );
    let root = tmp("backpressure");
    let capacity = 4;
    run(&p, &RunOptions { channel_capacity: capacity, ..opts(&root) }).unwrap();
    // Items created but not consumed: those in the channel, one being sent, one just received.
    let max = rec.max_in_flight();
    assert!(max <= capacity as i64 + 2, "in flight peaked at {max}");
    assert!(max >= capacity as i64, "the fast producer filled the channel ({max})");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn fan_out_and_fan_in() {
    let (p, rec, _) = setup(
        "name: fan\nseed: 1\nstages:\n  src: {use: counter, with: {count: 20}}\n  a: {use: map, with: {add: 1000}, inputs: {in: src.out}}\n  b: {use: map, with: {add: 2000}, inputs: {in: src.out}}\n  sink: {use: sink, with: {expect: 40}, inputs: {in: [a.out, b.out]}}\n",
    );
    let root = tmp("fan");
    run(&p, &opts(&root)).unwrap();
    let mut got: Vec<i64> = rec.events_of("sink", "recv").iter().map(|e| e.value).collect();
    got.sort_unstable();
    let mut want: Vec<i64> = (0..20).map(|x| x + 1000).chain((0..20).map(|x| x + 2000)).collect();
    want.sort_unstable();
    assert_eq!(got, want);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn failure_mid_stream_stops_everything_promptly() {
    let (p, _, _) = setup(
        "name: failing\nseed: 1\nstages:\n  src: {use: counter, with: {count: 100000000}}\n  double: {use: map, inputs: {in: src.out}}\n  breaker: {use: fail, with: {after: 50, message: boom}, inputs: {in: double.out}}\n  sink: {use: sink, with: {delay_ms: 1}, inputs: {in: breaker.out}}\n",
    );
    let root = tmp("failing");
    let t = Instant::now();
    let err = run(&p, &opts(&root)).unwrap_err();
    let elapsed = t.elapsed();
    assert!(elapsed < Duration::from_millis(700), "took {elapsed:?}");
    let RunError::StageFailed { stage, message, run_dir } = &err else { panic!("{err}") };
    assert_eq!(stage, "breaker");
    assert_eq!(message, "boom after 50 messages");
    assert!(err.to_string().contains("stage `breaker` failed: boom after 50 messages"), "{err}");
    assert_eq!(err.exit_code(), 1);
    let m = read_manifest(run_dir);
    assert_eq!(m.pipeline, "failing");
    let status = read_status(run_dir).unwrap();
    assert_eq!(status.status, RunStatus::Failed);
    assert_eq!(status.failed_stage.as_deref(), Some("breaker"));
    assert_eq!(status.error.as_deref(), Some("boom after 50 messages"));
    assert_eq!(status.stages["src"].status, "cancelled", "the source was woken from a blocked send");
    assert_eq!(status.stages["sink"].status, "cancelled");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn panics_are_reported_as_the_stage_failure() {
    let (p, _, _) = setup(
        "name: panicky\nseed: 1\nstages:\n  src: {use: counter, with: {count: 1000000}}\n  bad: {use: panic, with: {after: 3, message: kaboom}, inputs: {in: src.out}}\n  sink: {use: sink, inputs: {in: bad.out}}\n",
    );
    let root = tmp("panicky");
    let err = run(&p, &opts(&root)).unwrap_err();
    let RunError::StageFailed { stage, message, run_dir } = &err else { panic!("{err}") };
    assert_eq!(stage, "bad");
    assert_eq!(message, "panicked: kaboom after 3 messages");
    assert_eq!(read_status(run_dir).unwrap().failed_stage.as_deref(), Some("bad"));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn cancel_handle_leaves_a_readable_cancelled_run() {
    let (p, _, _) = setup(
        "name: cancelled\nseed: 1\nstages:\n  src: {use: counter, with: {count: 100000, delay_ms: 2}}\n  sink: {use: sink, inputs: {in: src.out}}\n",
    );
    let root = tmp("cancelled");
    let cancel = CancelHandle::new();
    let c2 = cancel.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(60));
        c2.cancel();
    });
    let start = Instant::now();
    let err = run(&p, &RunOptions { cancel, run_id: Some("ctrl-c".into()), ..opts(&root) }).unwrap_err();
    t.join().unwrap();
    assert!(start.elapsed() < Duration::from_millis(600), "took {:?}", start.elapsed());
    let RunError::Cancelled { run_dir } = &err else { panic!("{err}") };
    assert_eq!(err.exit_code(), 130);
    assert_eq!(run_dir, &root.join("cancelled").join("ctrl-c"));
    let status = read_status(run_dir).unwrap();
    assert_eq!(status.status, RunStatus::Cancelled);
    assert_eq!(status.failed_stage, None);
    assert_eq!(read_manifest(run_dir).run_id, "ctrl-c");
    // The explicit id is taken now.
    let again = run(&p, &RunOptions { run_id: Some("ctrl-c".into()), ..opts(&root) }).unwrap_err();
    assert!(again.to_string().contains("already holds a run"), "{again}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn policy_store_gates_generation_by_staleness() {
    for staleness in [0u64, 2] {
        let text = format!(
            "name: rl\nseed: 1\nresources:\n  policy: {{kind: policy_store, max_staleness: {staleness}}}\nstages:\n  sample:\n    use: gated_counter\n    with: {{count: 8}}\n    resources: {{policy: policy}}\n  learn:\n    use: publisher\n    with: {{delay_ms: 3}}\n    inputs: {{in: sample.out}}\n    resources: {{policy: policy}}\n"
        );
        let (p, rec, _) = setup(&text);
        let root = tmp(&format!("rl-{staleness}"));
        run(&p, &opts(&root)).unwrap();
        let gates: Vec<i64> = rec.events_of("sample", "gate").iter().map(|e| e.value).collect();
        assert_eq!(gates.len(), 8);
        for (k, v) in gates.iter().enumerate() {
            assert!(*v >= k as i64 - staleness as i64, "batch {k} used version {v} (staleness {staleness})");
            if staleness == 0 {
                assert_eq!(*v, k as i64, "fully synchronous: batch k uses exactly version k");
            }
        }
        assert_eq!(rec.events_of("learn", "publish").len(), 8);
        let _ = std::fs::remove_dir_all(&root);
    }
}

#[test]
fn reader_of_a_store_without_writers_fails_instead_of_hanging() {
    let (p, _, _) = setup(
        "name: orphan\nseed: 1\nresources:\n  policy: {kind: policy_store}\nstages:\n  sample:\n    use: gated_counter\n    resources: {policy: policy}\n  sink: {use: sink, inputs: {in: sample.out}}\n",
    );
    let root = tmp("orphan");
    let err = run(&p, &opts(&root)).unwrap_err();
    let RunError::StageFailed { stage, message, .. } = &err else { panic!("{err}") };
    assert_eq!(stage, "sample");
    assert!(message.contains("closed at version 0 while waiting for version 1"), "{message}");
    let _ = std::fs::remove_dir_all(&root);
}

const SWEEP: &str = "name: grid\nseed: 5\nstages:\n  src: {use: counter, with: {count: 5, random: true}}\n  scale: {use: map, with: {mul: 1}, inputs: {in: src.out}}\n  sink: {use: sink, inputs: {in: scale.out}}\nsweep:\n  grid:\n    stages.scale.with.mul: [1, 10]\n  seeds: [1, 2, 3]\n";

#[test]
fn sweep_runs_cells_summarizes_and_skips_on_rerun() {
    let (p, _, reg) = setup(SWEEP);
    let cells = expand_sweep(&p, &reg).unwrap();
    let ids: Vec<&str> = cells.iter().map(|c| c.info.id.as_str()).collect();
    assert_eq!(
        ids,
        ["scale.mul=1_seed=1", "scale.mul=1_seed=2", "scale.mul=1_seed=3", "scale.mul=10_seed=1", "scale.mul=10_seed=2", "scale.mul=10_seed=3"]
    );
    assert_eq!(cells[4].pipeline.seed, 2);
    assert_eq!(cells[4].pipeline.stage("scale").unwrap().params.get::<i64>("mul").unwrap(), 10);

    let root = tmp("sweep");
    let sopts = SweepOptions { runs_root: root.clone(), jobs: 2, ..SweepOptions::default() };
    let report = run_sweep(&cells, &sopts).unwrap();
    assert_eq!(report.count(|o| *o == CellOutcome::Complete), 6);
    assert!(report.failure().is_none());
    let sweep_dir = root.join("grid").join("sweep");
    for id in &ids {
        let d = sweep_dir.join(id);
        assert_eq!(read_status(&d).unwrap().status, RunStatus::Complete, "{id}");
        let m = read_manifest(&d);
        assert_eq!(m.sweep_cell.as_ref().unwrap().id, *id);
    }
    // Different seeds give different random values; scaling by 10 scales the sum by 10.
    let sum = |id: &str| keel_pipeline::last_metrics(&sweep_dir.join(id))["sink/sum"];
    assert_ne!(sum("scale.mul=1_seed=1"), sum("scale.mul=1_seed=2"));
    assert_eq!(sum("scale.mul=10_seed=2"), 10.0 * sum("scale.mul=1_seed=2"));

    let csv = std::fs::read_to_string(&report.summary_csv).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), "cell,stages.scale.with.mul,metric,n,mean,std,ci95_low,ci95_high");
    let row: Vec<&str> = csv.lines().find(|l| l.starts_with("scale.mul=1,") && l.contains(",sink/sum,")).unwrap().split(',').collect();
    let sums: Vec<f64> = (1..=3).map(|s| sum(&format!("scale.mul=1_seed={s}"))).collect();
    let (mean, std) = keel_pipeline::mean_std(&sums);
    assert_eq!(row[1], "1");
    assert_eq!(row[3], "3");
    assert!((row[4].parse::<f64>().unwrap() - mean).abs() < 1e-5);
    assert!((row[5].parse::<f64>().unwrap() - std).abs() < 1e-5);
    let (lo, hi) = (row[6].parse::<f64>().unwrap(), row[7].parse::<f64>().unwrap());
    let min = sums.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = sums.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    assert!(lo >= min - 1e-9 && hi <= max + 1e-9 && lo <= mean && mean <= hi, "{lo} {mean} {hi}");
    // 2 parameter points x 5 metrics (src/count, src/sum, sink/count, sink/sum, sink/mean).
    assert_eq!(csv.lines().count(), 1 + 2 * 5);
    let md = std::fs::read_to_string(&report.summary_md).unwrap();
    assert!(md.contains("| cell | metric | n | mean | std | 95% CI |"));
    assert!(md.contains("6 cells: 6 run now, 0 already complete"));

    // Rerun: every cell is skipped, the summary is the same.
    let again = run_sweep(&cells, &sopts).unwrap();
    assert_eq!(again.count(|o| *o == CellOutcome::Skipped), 6);
    assert_eq!(std::fs::read_to_string(&again.summary_csv).unwrap(), csv);
    let dirs = std::fs::read_dir(&sweep_dir).unwrap().filter(|e| e.as_ref().unwrap().path().is_dir()).count();
    assert_eq!(dirs, 6);

    // A changed configuration is not skipped.
    let changed = load_str("test.yaml", SWEEP, &["stages.src.with.count=6".into()], &reg).unwrap();
    let changed_cells = expand_sweep(&changed, &reg).unwrap();
    let third = run_sweep(&changed_cells[..1], &sopts).unwrap();
    assert_eq!(third.cells[0].1, CellOutcome::Complete);

    // Slurm script.
    let slurm_dir = root.join("slurm");
    let sl = SlurmOptions { binary: PathBuf::from("/opt/keel/bin/keel"), ..SlurmOptions::new("pipelines/grid.yaml") };
    let (script, list) = emit_slurm(&slurm_dir, &changed_cells, &sl).unwrap();
    let s = std::fs::read_to_string(&script).unwrap();
    assert!(s.contains("#SBATCH --array=0-5\n"), "{s}");
    assert!(s.contains("exec '/opt/keel/bin/keel' run 'pipelines/grid.yaml' --sweep-cell \"$SLURM_ARRAY_TASK_ID\" --set 'stages.src.with.count=6'"), "{s}");
    let l = std::fs::read_to_string(&list).unwrap();
    assert_eq!(l.lines().count(), 7);
    assert!(l.lines().nth(4).unwrap().starts_with("3\tscale.mul=10_seed=1\t1\t"), "{l}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn failed_sweep_cells_are_reported_and_rerun() {
    let text = "name: flaky\nseed: 1\nstages:\n  src: {use: counter, with: {count: 3}}\n  sink: {use: sink, with: {expect: 3}, inputs: {in: src.out}}\nsweep:\n  grid:\n    stages.sink.with.expect: [3, 4]\n";
    let (p, _, reg) = setup(text);
    let cells = expand_sweep(&p, &reg).unwrap();
    let root = tmp("flaky");
    let sopts = SweepOptions { runs_root: root.clone(), ..SweepOptions::default() };
    let r = run_sweep(&cells, &sopts).unwrap();
    assert_eq!(r.cells[0].1, CellOutcome::Complete);
    let CellOutcome::Failed(msg) = &r.cells[1].1 else { panic!("{:?}", r.cells[1]) };
    assert_eq!(msg, "stage `sink`: expected 4 messages, received 3");
    let md = std::fs::read_to_string(&r.summary_md).unwrap();
    assert!(md.contains("## Failed cells") && md.contains("sink.expect=4_seed=1"), "{md}");
    let err = r.failure().unwrap();
    assert_eq!(err.to_string(), "1 of 2 sweep cells failed: sink.expect=4_seed=1");
    assert_eq!(err.exit_code(), 1);
    let r2 = run_sweep(&cells, &sopts).unwrap();
    assert_eq!(r2.cells[0].1, CellOutcome::Skipped);
    assert!(matches!(r2.cells[1].1, CellOutcome::Failed(_)), "failed cells are retried");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn recv_of_the_wrong_type_is_a_clear_error() {
    use keel_pipeline::{PortSpec, Stage, StageContext, StageError, StageKind};
    struct Wrong;
    struct WrongStage;
    impl Stage for WrongStage {
        fn run(self: Box<Self>, ctx: &StageContext) -> Result<(), StageError> {
            ctx.recv::<String>("in")?;
            Ok(())
        }
    }
    impl StageKind for Wrong {
        fn name(&self) -> &'static str {
            "wrong"
        }
        fn doc(&self) -> &'static str {
            "asks for the wrong type"
        }
        fn inputs(&self) -> Vec<PortSpec> {
            vec![PortSpec::new("in", "int", "integers")]
        }
        fn build(&self, _p: &keel_pipeline::Params) -> Result<Box<dyn Stage>, StageError> {
            Ok(Box::new(WrongStage))
        }
    }
    let (mut reg, _) = testkit::registry();
    reg.register(Wrong);
    let p = load_str("t.yaml", "name: wrong\nseed: 1\nstages:\n  src: {use: counter}\n  w: {use: wrong, inputs: {in: src.out}}\n", &[], &reg).unwrap();
    let root = tmp("wrong");
    let err = run(&p, &opts(&root)).unwrap_err();
    let RunError::StageFailed { stage, message, .. } = &err else { panic!("{err}") };
    assert_eq!(stage, "w");
    assert_eq!(message, "stage `w`: input `in` (type `int`) carries `i64` but the stage asked for `alloc::string::String`");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn input_files_are_hashed_into_the_manifest() {
    use keel_pipeline::{ParamSpec, ParamType, Params, Stage, StageContext, StageError, StageKind};
    struct Reader;
    struct ReaderStage;
    impl Stage for ReaderStage {
        fn run(self: Box<Self>, _ctx: &StageContext) -> Result<(), StageError> {
            Ok(())
        }
    }
    impl StageKind for Reader {
        fn name(&self) -> &'static str {
            "reader"
        }
        fn doc(&self) -> &'static str {
            "declares a data file"
        }
        fn params(&self) -> Vec<ParamSpec> {
            vec![ParamSpec::required("path", ParamType::Path, "data file")]
        }
        fn input_files(&self, p: &Params) -> Vec<PathBuf> {
            p.get::<PathBuf>("path").into_iter().collect()
        }
        fn build(&self, _p: &Params) -> Result<Box<dyn Stage>, StageError> {
            Ok(Box::new(ReaderStage))
        }
    }
    let mut reg = Registry::new();
    reg.register(Reader);
    let root = tmp("inputs");
    std::fs::create_dir_all(&root).unwrap();
    let data = root.join("abc.txt");
    std::fs::write(&data, b"abc").unwrap();
    let text = format!("name: reading\nseed: 1\nstages:\n  r: {{use: reader, with: {{path: '{}'}}}}\n", data.display());
    let p = load_str("t.yaml", &text, &[], &reg).unwrap();
    let report = run(&p, &opts(&root)).unwrap();
    let m = read_manifest(&report.run_dir);
    assert_eq!(m.input_files.len(), 1);
    assert_eq!(m.input_files[0].sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(m.input_files[0].bytes, 3);
    // A missing file fails before any stage starts, with a readable status.
    let p = load_str("t.yaml", "name: reading\nseed: 1\nstages:\n  r: {use: reader, with: {path: /nonexistent/keel/x}}\n", &[], &reg).unwrap();
    let err = run(&p, &opts(&root)).unwrap_err();
    assert!(matches!(err, RunError::InputFile { ref stage, .. } if stage == "r"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_stage_ignoring_cancellation_cannot_hang_the_run() {
    use keel_pipeline::{Params, Stage, StageContext, StageError, StageKind};
    struct Stubborn;
    struct StubbornStage;
    impl Stage for StubbornStage {
        fn run(self: Box<Self>, _ctx: &StageContext) -> Result<(), StageError> {
            // Long work that never checks for cancellation.
            std::thread::sleep(Duration::from_secs(3));
            Ok(())
        }
    }
    impl StageKind for Stubborn {
        fn name(&self) -> &'static str {
            "stubborn"
        }
        fn doc(&self) -> &'static str {
            "ignores cancellation"
        }
        fn build(&self, _p: &Params) -> Result<Box<dyn Stage>, StageError> {
            Ok(Box::new(StubbornStage))
        }
    }
    let (mut reg, _) = testkit::registry();
    reg.register(Stubborn);
    let p = load_str("t.yaml", "name: stubborn\nseed: 1\nstages:\n  slow: {use: stubborn}\n  boom: {use: fail}\n", &[], &reg).unwrap();
    let root = tmp("stubborn");
    let t = Instant::now();
    let err = run(&p, &RunOptions { join_grace: Duration::from_millis(100), ..opts(&root) }).unwrap_err();
    assert!(t.elapsed() < Duration::from_millis(1500), "took {:?}", t.elapsed());
    let RunError::StageFailed { stage, run_dir, .. } = &err else { panic!("{err}") };
    assert_eq!(stage, "boom");
    let status = read_status(run_dir).unwrap();
    assert_eq!(status.stages["slow"].status, "running");
    assert!(status.stages["slow"].error.as_deref().unwrap().contains("thread abandoned"));
    let _ = std::fs::remove_dir_all(&root);
}
