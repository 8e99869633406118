//! End-to-end: a run killed with SIGKILL in the middle of RL training and resumed with
//! `keel run --resume` logs exactly the learner metrics of an uninterrupted run; and runs with
//! max staleness 0 and 1 are each reproducible.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// The last logged values of each (stage, step) of one stage: a resumed run logs the steps
/// between its checkpoint and the kill twice; the later lines are the ones that count.
fn metrics(run: &Path, stage: &str) -> BTreeMap<u64, BTreeMap<String, f64>> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl exists");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("every metrics line is JSON");
        if v["stage"] == stage {
            let values: BTreeMap<String, f64> = serde_json::from_value(v["values"].clone()).expect("values map");
            out.insert(v["step"].as_u64().expect("step"), values);
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

    // Start the same run, wait until the learner has saved a state past step 6, then SIGKILL it.
    let mut child = Command::new(support::keel_bin())
        .args([&["run", file, "--runs-dir", runs, "--run-id", "killed", "--quiet"], extra].concat())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the keel binary starts");
    let latest = root.join("rl-small/killed/stages/learn/state/LATEST");
    let started = Instant::now();
    loop {
        let step = std::fs::read_to_string(&latest)
            .ok()
            .and_then(|s| s.trim().trim_start_matches("step-").parse::<u64>().ok())
            .unwrap_or(0);
        if step >= 6 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "the learner never checkpointed step 6");
        assert!(child.try_wait().expect("polling the child").is_none(), "the run finished before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaping the child");
    let before = metrics(&root.join("rl-small/killed"), "learn").len();
    assert!(before < 16, "the kill happened mid-run ({before} of 16 steps logged)");

    let resumed = keel(&[&["run", file, "--runs-dir", runs, "--run-id", "killed", "--resume"], extra].concat());
    assert!(resumed.status.success(), "resumed run failed: {}", String::from_utf8_lossy(&resumed.stderr));
    let got = metrics(&root.join("rl-small/killed"), "learn");
    assert_eq!(got, expected, "resumed metrics differ from the uninterrupted run");
    // Final weights are identical too.
    let a = std::fs::read(root.join("rl-small/full/stages/learn/checkpoint/model.safetensors")).expect("weights");
    let b = std::fs::read(root.join("rl-small/killed/stages/learn/checkpoint/model.safetensors")).expect("weights");
    assert!(a == b, "final weights differ after resume");
    std::fs::remove_dir_all(&root).ok();
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
