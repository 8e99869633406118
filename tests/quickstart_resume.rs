//! End-to-end: the reduced quickstart (tests/fixtures/quickstart_smoke.sets) killed with SIGKILL
//! twice — once inside an RL branch right after its learner checkpointed, once while `evaluate`
//! is part-way through the branches — and resumed with `keel run --resume` leaves a run
//! directory whose every file (weights, learner states, `metrics.jsonl`, `rollouts.jsonl`, the
//! record shards, evaluation results and completions, `report.md`, `results.json`, the plots)
//! equals an uninterrupted run's, except timing fields and logs. Since the branches reach
//! `evaluate` in a different order in each run, this also checks that records do not depend on
//! arrival order.

use std::path::Path;

mod support;

/// The reduced quickstart's overrides, plus a learner state after every GRPO-with-KL update so
/// that the first kill lands between a checkpoint and the branch's end.
fn args(runs: &str, id: &str, resume: bool) -> Vec<String> {
    let file = support::repo_path("pipelines/quickstart.yaml");
    let mut a: Vec<String> = vec!["run".into(), file.to_str().expect("utf-8 path").into(), "--quiet".into()];
    a.extend(["--runs-dir", runs, "--run-id", id].map(String::from));
    if resume {
        a.push("--resume".into());
    }
    for s in support::reduced_quickstart_sets().into_iter().chain(["stages.grpo_kl.with.checkpoint_every=1".to_string()]) {
        a.extend(["--set".to_string(), s]);
    }
    a
}

/// Evaluation results `evaluate` has written so far (`stages/evaluate/<label>.json`).
fn evaluated(run: &Path) -> usize {
    std::fs::read_dir(run.join("stages/evaluate"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json") && !n.starts_with('.')))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn killed_twice_and_resumed_quickstart_equals_the_uninterrupted_run() {
    let root = std::env::temp_dir().join(format!("keel-e2e-quickstart-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let runs = root.to_str().expect("utf-8 temp path");
    let (full, killed) = (root.join("quickstart/full"), root.join("quickstart/killed"));

    let out = std::process::Command::new(support::keel_bin()).args(args(runs, "full", false)).output().expect("keel runs");
    assert!(out.status.success(), "uninterrupted run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(evaluated(&full), 6, "six branches evaluated");

    let a = args(runs, "killed", false);
    let state = killed.join("stages/grpo_kl/state");
    support::kill_when(&a.iter().map(String::as_str).collect::<Vec<_>>(), "grpo_kl's first learner state", || {
        support::latest_state_step(&state) >= 1
    });
    assert!(support::latest_state_step(&state) < 3, "the first kill landed inside the 3-step GRPO branch");

    let a = args(runs, "killed", true);
    let eval_dir = killed.clone();
    support::kill_when(&a.iter().map(String::as_str).collect::<Vec<_>>(), "two evaluated branches", || evaluated(&eval_dir) >= 2);
    assert!(!killed.join("results.json").exists(), "the second kill landed before the report");

    let out = std::process::Command::new(support::keel_bin()).args(args(runs, "killed", true)).output().expect("keel runs");
    assert!(out.status.success(), "resumed run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(killed.join("resumes.jsonl").is_file(), "the run was resumed");
    support::assert_same_run(&full, &killed);
    std::fs::remove_dir_all(&root).ok();
}
