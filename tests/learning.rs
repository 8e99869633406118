//! End-to-end: the RL loop (prompts → rollout → score → learn, with the policy store) optimises its
//! objective, both synchronously (max staleness 0) and with sampling overlapping learning (max
//! staleness 1, importance-corrected). The reward is dense and verifiable: a length penalty on
//! completions longer than 8 tokens, which a from-scratch model (≈18 tokens per completion) can
//! only earn by changing what it samples. Runs are deterministic, so the thresholds are exact.

use std::path::Path;
use std::process::Command;

mod support;

fn learner_metric(run: &Path, name: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl exists");
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .filter(|v| v["stage"] == "learn")
        .map(|v| v["values"][name].as_f64().unwrap_or_else(|| panic!("learner logs `{name}`")))
        .collect()
}

/// Runs the `rl_learns.yaml` fixture as run `id` under `root` with extra `--set` overrides, asserts
/// that it succeeded and returns its run directory.
fn run_fixture(root: &Path, id: &str, sets: &[String]) -> std::path::PathBuf {
    let file = support::repo_path("tests/fixtures/rl_learns.yaml");
    let mut cmd = Command::new(support::keel_bin());
    cmd.args(["run", file.to_str().expect("utf-8 path"), "--quiet", "--runs-dir"]).arg(root).args(["--run-id", id]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("the keel binary runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    root.join("rl-learns").join(id)
}

#[test]
fn rl_loop_optimises_its_objective_sync_and_stale() {
    let root = std::env::temp_dir().join(format!("keel-cli-learning-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for staleness in [0, 1] {
        let run = run_fixture(
            &root,
            &format!("s{staleness}"),
            &[
                format!("resources.policy.max_staleness={staleness}"),
                "stages.score.with.rewards=[{kind: length, max_tokens: 8, buffer_tokens: 8}]".into(),
                "stages.prompts.with.steps=30".into(),
                "stages.learn.with.lr=0.0005".into(),
                "stages.evaluate.with.max_task=20".into(),
                "stages.evaluate.with.task_samples=0".into(),
            ],
        );
        let len = learner_metric(&run, "completion_len");
        let reward = learner_metric(&run, "reward_mean");
        assert_eq!(len.len(), 30);
        let late_len = len[25..].iter().sum::<f64>() / 5.0;
        let late_reward = reward[25..].iter().sum::<f64>() / 5.0;
        println!("max_staleness {staleness}: completion length {:.1} -> {late_len:.1}, reward {:.3} -> {late_reward:.3}", len[0], reward[0]);
        assert!(len[0] > 10.0, "the base starts with long completions (got {})", len[0]);
        assert!(late_len < len[0] / 3.0, "the learner did not shorten completions: {} -> {late_len}", len[0]);
        assert!(late_reward > reward[0] + 0.3, "the reward did not rise: {} -> {late_reward}", reward[0]);
    }
    std::fs::remove_dir_all(&root).ok();
}

/// Held-out greedy accuracy and pass@1 (temperature 1) of the `base` and `grpo` checkpoints.
fn task_scores(run: &Path) -> [(f64, f64); 2] {
    let text = std::fs::read_to_string(run.join("results.json")).expect("results.json exists");
    let results: serde_json::Value = serde_json::from_str(&text).expect("results.json is JSON");
    let get = |label: &str| {
        let r = results
            .as_array()
            .expect("a list of results")
            .iter()
            .find(|r| r["label"] == label)
            .unwrap_or_else(|| panic!("no result for `{label}`"));
        let sets = r["sets"].as_object().expect("sets");
        let task = sets.iter().find(|(k, _)| k.starts_with("task:")).expect("a task set").1;
        (r["capability"].as_f64().expect("capability"), task["values"]["pass@1"].as_f64().expect("pass@1"))
    };
    [get("base"), get("grpo")]
}

/// GRPO learns a verifiable task (sorting 3–4 digits, exact-answer reward) from a weak base: held-out
/// greedy accuracy and pass@1 both rise, synchronously and with max staleness 1.
#[test]
fn grpo_learns_a_verifiable_task_from_a_low_start_sync_and_stale() {
    let root = std::env::temp_dir().join(format!("keel-cli-task-learning-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for staleness in [0, 1] {
        let run = run_fixture(&root, &format!("s{staleness}"), &[format!("resources.policy.max_staleness={staleness}")]);
        let [(base_acc, base_p1), (acc, p1)] = task_scores(&run);
        println!("max_staleness {staleness}: greedy {base_acc:.3} -> {acc:.3}, pass@1 {base_p1:.3} -> {p1:.3}");
        assert!(base_p1 < 0.2, "the base should start low (pass@1 {base_p1})");
        assert!(acc >= base_acc + 0.10, "greedy accuracy did not rise: {base_acc} -> {acc}");
        assert!(p1 >= base_p1 + 0.03, "pass@1 did not rise: {base_p1} -> {p1}");
    }
    std::fs::remove_dir_all(&root).ok();
}
