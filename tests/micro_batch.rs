//! Gradient accumulation (`micro_batch_size`) changes memory, not the algorithm: one SFT or RL
//! update computed in micro-batches gives the weights of the same update computed at once, for
//! every loss aggregation (sequence mean, token mean) and with PPO's value loss.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};

mod support;

fn fixture() -> PathBuf {
    support::repo_path("tests/fixtures/rl_small.yaml")
}

/// Runs the fixture (one RL step, a short base) with extra `--set`s; returns the run directory.
fn run(root: &Path, id: &str, sets: &[&str]) -> PathBuf {
    let file = fixture();
    let mut cmd = Command::new(support::keel_bin());
    cmd.args(["run", file.to_str().expect("utf-8 path"), "--quiet", "--runs-dir"]).arg(root).args(["--run-id", id]);
    for s in ["stages.base.with.steps=6", "stages.prompts.with.steps=1", "stages.learn.with.ema_alpha=null"].iter().chain(sets) {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("the keel binary runs");
    assert!(out.status.success(), "{id}: {}", String::from_utf8_lossy(&out.stderr));
    root.join("rl-small").join(id)
}

/// Largest absolute difference between two checkpoints' weights, and the largest weight change
/// from `base` (so the comparison is known to be about a real update).
fn compare(a: &Path, b: &Path, base: &Path) -> (f64, f64) {
    let load = |d: &Path| candle_core::safetensors::load(d.join("model.safetensors"), &Device::Cpu).expect("weights");
    let (wa, wb, w0) = (load(a), load(b), load(base));
    let diff = |x: &Tensor, y: &Tensor| -> f64 {
        (x - y).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() as f64
    };
    let (mut d, mut moved) = (0f64, 0f64);
    for (name, t) in &wa {
        d = d.max(diff(t, &wb[name]));
        moved = moved.max(diff(t, &w0[name]));
    }
    (d, moved)
}

/// `loss` and `grad_norm` (before clipping) of a stage's first logged step. Adam's update is
/// nearly invariant to the gradient's scale, so weights alone would not reveal a mis-weighted
/// sum of micro-batch gradients; the gradient norm does.
fn first_step(run: &Path, stage: &str) -> (f64, f64) {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl exists");
    let v = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .find(|v| v["stage"] == stage && v["values"].get("grad_norm").is_some())
        .unwrap_or_else(|| panic!("{stage} logs grad_norm"));
    (v["values"]["loss"].as_f64().expect("loss"), v["values"]["grad_norm"].as_f64().expect("grad_norm"))
}

/// Equal within a relative tolerance, with an absolute floor for values near zero (an
/// on-policy GRPO loss is ~0 because advantages are centred).
fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()) + 1e-6
}

#[test]
fn micro_batches_give_the_whole_batch_update() {
    let root = std::env::temp_dir().join(format!("keel-cli-micro-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    // SFT: the from-scratch base stage, batch 16 in micro-batches of 5 (uneven split).
    let whole = run(&root, "sft-whole", &["stages.base.with.log_every=1"]);
    let micro = run(&root, "sft-micro", &["stages.base.with.log_every=1", "stages.base.with.micro_batch_size=5"]);
    let (lw, gw) = first_step(&whole, "base");
    let (lm, gm) = first_step(&micro, "base");
    println!("sft step 1: loss {lw:.6} vs {lm:.6}, grad norm {gw:.6} vs {gm:.6}");
    assert!(close(lw, lm, 1e-5) && close(gw, gm, 1e-4), "SFT micro-batches: loss {lw} vs {lm}, grad norm {gw} vs {gm}");
    let init = whole.join("stages/base/checkpoint");
    let (d, _) = compare(&init, &micro.join("stages/base/checkpoint"), &init);
    // 6 Adam steps at lr 0.005 move a weight by up to ~0.03; float rounding of the summed
    // gradients may move a few near-zero components by a sliver of that.
    println!("sft: max |Δw| whole vs micro-batched after 6 steps {d:.2e}");
    assert!(d < 3e-4, "SFT with micro-batches differs from the whole batch by {d}");
    // RL: 4 prompts × 4 completions = 16 sequences, micro-batches of 3, for each loss variant.
    // A dense reward (length penalty) gives every group non-zero advantages.
    let dense = "stages.score.with.rewards=[{kind: length, max_tokens: 8, buffer_tokens: 6}]";
    for (name, extra) in [
        ("grpo", vec![dense]),
        ("token-mean", vec![dense, "stages.learn.with.aggregation=token_mean"]),
        ("ppo", vec![dense, "stages.learn.with.algorithm=ppo"]),
    ] {
        let whole = run(&root, &format!("{name}-whole"), &extra);
        let mut sets = extra.clone();
        sets.push("stages.learn.with.micro_batch_size=3");
        let micro = run(&root, &format!("{name}-micro"), &sets);
        let (lw, gw) = first_step(&whole, "learn");
        let (lm, gm) = first_step(&micro, "learn");
        println!("{name}: loss {lw:.6} vs {lm:.6}, grad norm {gw:.6} vs {gm:.6}");
        assert!(close(lw, lm, 1e-4) && close(gw, gm, 1e-4), "{name} micro-batches: loss {lw} vs {lm}, grad norm {gw} vs {gm}");
        let (d, moved) = compare(&whole.join("stages/learn/checkpoint"), &micro.join("stages/learn/checkpoint"), &whole.join("stages/base/checkpoint"));
        println!("{name}: max |Δw| whole vs micro-batched {d:.2e} (update moved weights by up to {moved:.2e})");
        assert!(gw > 1e-3, "{name}: no gradient to compare (grad norm {gw})");
        assert!(moved > 1e-5, "{name}: the update did not move the weights ({moved})");
        assert!(d < moved * 1e-2, "{name}: micro-batched update differs by {d} (update size {moved})");
    }
    std::fs::remove_dir_all(&root).ok();
}
