//! Standalone use of keel-pipeline with the testkit stage kinds: load a pipeline from YAML text,
//! apply a `--set`-style override, show what validation says about a broken variant, run it, and
//! read back the run directory.
//!
//! Run with `cargo run --release -p keel-pipeline --example testkit_pipeline [RUNS_DIR]`.

use std::path::PathBuf;

use keel_pipeline::{load_str, read_status, run, testkit, RunOptions};

const PIPELINE: &str = "\
name: example
seed: 42
description: a source, a transform and a slow sink, wired by bounded channels
resources:
  policy: {kind: policy_store, max_staleness: 1}
stages:
  numbers:
    use: counter
    with: {count: 20, delay_ms: 2}
  triple:
    use: map
    with: {mul: 3}
    inputs: {in: numbers.out}
  total:
    use: sink
    with: {delay_ms: 1}
    inputs: {in: triple.out}
  sample:
    use: gated_counter
    with: {count: 6}
    resources: {policy: policy}
  learn:
    use: publisher
    inputs: {in: sample.out}
    resources: {policy: policy}
";

fn main() {
    let runs = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("keel-example-runs"));
    let (registry, _recorder) = testkit::registry();

    println!("== stage kinds ==\n{}", keel_pipeline::list_text(&registry));

    // A broken variant: every problem is reported at once, with file, line and column.
    let broken = PIPELINE.replace("mul: 3", "mull: 3").replace("numbers.out}", "numbrs.out}");
    if let Err(diags) = load_str("example.yaml", &broken, &[], &registry) {
        println!("== validation of a broken variant ==\n{diags}\n");
    }

    let overrides = vec!["stages.triple.with.add=1".to_string()];
    let pipeline = match load_str("example.yaml", PIPELINE, &overrides, &registry) {
        Ok(p) => p,
        Err(diags) => {
            eprintln!("{diags}");
            std::process::exit(2);
        }
    };
    println!("config hash: {}", pipeline.config_hash());

    let opts = RunOptions { runs_root: runs, ..RunOptions::default() };
    match run(&pipeline, &opts) {
        Ok(report) => {
            println!("run complete in {:.3}s: {}", report.wall_time_s, report.run_dir.display());
            for (metric, value) in keel_pipeline::last_metrics(&report.run_dir) {
                println!("  {metric} = {value}");
            }
            if let Some(status) = read_status(&report.run_dir) {
                println!("status.json says: {:?}", status.status);
            }
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(e.exit_code());
        }
    }
}
