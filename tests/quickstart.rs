//! Smoke test of the README's first command: the quickstart pipeline end to end with reduced
//! budgets (tests/fixtures/quickstart_smoke.sets, shared with scripts/smoke.sh), run twice with
//! the same seed. Both runs write every file of a run directory, and their results.json files are
//! byte-identical (same seed → same numbers on CPU).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

mod support;

fn run_quickstart(root: &Path, id: &str) {
    let mut cmd = Command::new(support::keel_bin());
    cmd.arg("run").arg(support::repo_path("pipelines/quickstart.yaml"));
    cmd.args(["--quiet", "--run-id", id, "--runs-dir"]).arg(root);
    for s in support::reduced_quickstart_sets() {
        cmd.args(["--set", &s]);
    }
    let t = Instant::now();
    let out = cmd.output().expect("the keel binary runs");
    assert!(out.status.success(), "quickstart run {id} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    println!("quickstart run {id}: {:.1}s", t.elapsed().as_secs_f64());
}

#[test]
fn reduced_quickstart_runs_and_repeats_byte_for_byte() {
    let root = std::env::temp_dir().join(format!("keel-e2e-quickstart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for id in ["a", "b"] {
        run_quickstart(&root, id);
    }
    let (a, b) = (root.join("quickstart/a"), root.join("quickstart/b"));
    for f in ["manifest.json", "results.json", "report.md", "metrics.jsonl", "status.json"] {
        let len = std::fs::metadata(a.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "run a lacks a non-empty {f}");
    }
    let ra = std::fs::read(a.join("results.json")).expect("results.json of run a");
    let rb = std::fs::read(b.join("results.json")).expect("results.json of run b");
    assert!(ra == rb, "two runs with the same seed gave different results.json:\n{}\n---\n{}", String::from_utf8_lossy(&ra), String::from_utf8_lossy(&rb));

    // The results are those of the quickstart: its six branches, each with finite, in-range
    // capability and safety rates.
    let results: Value = serde_json::from_slice(&ra).expect("results.json is JSON");
    let results = results.as_array().expect("results.json is a list");
    assert_eq!(results.len(), 6, "base, SFT, SFT+EMA, GRPO with and without KL, PPO are evaluated");
    for r in results {
        for key in ["capability", "safety", "over_refusal"] {
            let v = r[key].as_f64().unwrap_or(f64::NAN);
            assert!((0.0..=1.0).contains(&v), "{}: {key} = {v}", r["label"]);
        }
    }
    std::fs::remove_dir_all(&root).ok();
}
