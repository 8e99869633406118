//! End-to-end: a run killed with SIGKILL twice in the middle of RL training and resumed with
//! `keel run --resume` leaves a run directory equal to an uninterrupted run's (metrics.jsonl and
//! rollouts.jsonl byte for byte, nothing twice); and runs with max staleness 0 and 1 are each
//! reproducible.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod support;

fn fixture() -> PathBuf {
    support::repo_path("tests/fixtures/rl_small.yaml")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("keel-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn keel(args: &[&str]) -> std::process::Output {
    Command::new(support::keel_bin()).args(args).arg("--quiet").output().expect("the keel binary runs")
}

/// The logged values of each step of one stage; a step logged twice (as a resumed run once did
/// for the steps between its checkpoint and the kill) fails the test.
fn metrics(run: &Path, stage: &str) -> BTreeMap<u64, BTreeMap<String, f64>> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl exists");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("every metrics line is JSON");
        if v["stage"] == stage {
            let values: BTreeMap<String, f64> = serde_json::from_value(v["values"].clone()).expect("values map");
            let step = v["step"].as_u64().expect("step");
            assert!(out.insert(step, values).is_none(), "{}: stage `{stage}` logged step {step} twice", run.display());
        }
    }
    out
}

#[test]
fn kill_and_resume_reproduces_the_uninterrupted_run() {
    kill_and_resume("resume", &[]);
}

/// The same with LoRA adapters (and the fixture's EMA of them): the resumed learner restores its
/// adapters onto the frozen base, and checkpoints hold merged weights plus PEFT adapters.
#[test]
fn kill_and_resume_reproduces_the_uninterrupted_run_with_lora() {
    kill_and_resume("resume-lora", &["--set", "stages.learn.with.lora={r: 4, alpha: 8}"]);
}

/// Runs the fixture uninterrupted and killed-then-resumed with `extra` arguments; asserts equal
/// learner metrics and final weights.
fn kill_and_resume(name: &str, extra: &[&str]) {
    let root = tmp(name);
    let runs = root.to_str().expect("utf-8 temp path");
    let file = fixture();
    let file = file.to_str().expect("utf-8 path");
    let lora = !extra.is_empty();

    let full = keel(&[&["run", file, "--runs-dir", runs, "--run-id", "full"], extra].concat());
    assert!(full.status.success(), "uninterrupted run failed: {}", String::from_utf8_lossy(&full.stderr));
    let expected = metrics(&root.join("rl-small/full"), "learn");
    assert_eq!(expected.len(), 16, "one learner record per RL step");
    if lora {
        let ck = root.join("rl-small/full/stages/learn/checkpoint");
        assert!(ck.join("adapter/adapter_model.safetensors").is_file() && ck.join("adapter/adapter_config.json").is_file());
        // Only the adapted projections move: the embedding of the learner's checkpoint is the base's.
        let load = |d: &Path| candle_core::safetensors::load(d.join("model.safetensors"), &candle_core::Device::Cpu).expect("weights");
        let (base, tuned) = (load(&root.join("rl-small/full/stages/base/checkpoint")), load(&ck));
        let same = |n: &str| base[n].flatten_all().unwrap().to_vec1::<f32>().unwrap() == tuned[n].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(same("model.embed_tokens.weight"), "LoRA training changed the embedding");
        assert!(!same("model.layers.0.self_attn.q_proj.weight"), "the merged q_proj equals the base: adapters not trained or not merged");
    }

    // Start the same run; SIGKILL it once the learner has saved a state past step 4, resume it
    // and SIGKILL it again past step 10, then resume it to the end.
    let killed = root.join("rl-small/killed");
    kill_after_step(&[&["run", file, "--runs-dir", runs, "--run-id", "killed", "--quiet"], extra].concat(), &killed, 4);
    let before = shard_steps(&killed.join("records/learn/metrics.jsonl"));
    assert!(before < 16, "the first kill happened mid-run ({before} of 16 steps logged)");
    kill_after_step(&[&["run", file, "--runs-dir", runs, "--run-id", "killed", "--resume", "--quiet"], extra].concat(), &killed, 10);
    let before = shard_steps(&killed.join("records/learn/metrics.jsonl"));
    assert!(before < 16, "the second kill happened mid-run ({before} of 16 steps logged)");

    let resumed = keel(&[&["run", file, "--runs-dir", runs, "--run-id", "killed", "--resume"], extra].concat());
    assert!(resumed.status.success(), "resumed run failed: {}", String::from_utf8_lossy(&resumed.stderr));
    let got = metrics(&killed, "learn");
    assert_eq!(got, expected, "resumed metrics differ from the uninterrupted run");
    // Nothing is logged twice, and every file of the run directory (weights, learner states,
    // metrics.jsonl, rollouts.jsonl, the per-stage record shards) is the same bytes as the
    // uninterrupted run's, except timing fields and logs.
    let full_dir = root.join("rl-small/full");
    assert_eq!(
        std::fs::read_to_string(killed.join("rollouts.jsonl")).expect("rollouts.jsonl").lines().count(),
        16 * 4 * 4,
        "16 steps of 4 prompts × 4 completions, each once"
    );
    support::assert_same_run(&full_dir, &killed);
    std::fs::remove_dir_all(&root).ok();
}

/// Runs `keel args` until the learner's `LATEST` state in `run` is at `step` or later, then
/// SIGKILLs it.
fn kill_after_step(args: &[&str], run: &Path, step: u64) {
    let state = run.join("stages/learn/state");
    support::kill_when(args, &format!("the learner checkpointed step {step}"), || support::latest_state_step(&state) >= step);
}

/// The number of distinct steps in a record shard.
fn shard_steps(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let steps: std::collections::BTreeSet<u64> =
        text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter_map(|v| v["step"].as_u64()).collect();
    steps.len()
}

#[test]
fn resume_refuses_a_different_configuration() {
    let root = tmp("resume-config");
    let runs = root.to_str().expect("utf-8 temp path");
    let file = fixture();
    let file = file.to_str().expect("utf-8 path");
    let a = keel(&["run", file, "--runs-dir", runs, "--run-id", "r", "--set", "stages.prompts.with.steps=2"]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let b = keel(&["run", file, "--runs-dir", runs, "--run-id", "r", "--resume", "--set", "stages.prompts.with.steps=3"]);
    assert!(!b.status.success());
    let err = String::from_utf8_lossy(&b.stderr);
    assert!(err.contains("cannot resume") && err.contains("differs"), "unexpected error: {err}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn staleness_runs_are_reproducible() {
    let root = tmp("staleness");
    let runs = root.to_str().expect("utf-8 temp path");
    let file = fixture();
    let file = file.to_str().expect("utf-8 path");
    let mut per_staleness = Vec::new();
    for s in ["0", "1"] {
        let set = format!("resources.policy.max_staleness={s}");
        let mut runs_metrics = Vec::new();
        for id in ["a", "b"] {
            let run_id = format!("s{s}{id}");
            let out = keel(&["run", file, "--runs-dir", runs, "--run-id", &run_id, "--set", &set, "--set", "stages.prompts.with.steps=8"]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            runs_metrics.push(metrics(&root.join("rl-small").join(&run_id), "learn"));
            let staleness = metrics(&root.join("rl-small").join(&run_id), "rollout");
            let max_seen = staleness.values().map(|v| v["staleness"]).fold(0.0, f64::max);
            assert_eq!(max_seen, s.parse::<f64>().expect("number"), "sampler staleness is exactly the declared one after warm-up");
        }
        assert_eq!(runs_metrics[0], runs_metrics[1], "max_staleness {s}: two runs differ");
        per_staleness.push(runs_metrics.remove(0));
    }
    assert_ne!(per_staleness[0], per_staleness[1], "staleness 1 samples from older policies, so its metrics differ");
    std::fs::remove_dir_all(&root).ok();
}
