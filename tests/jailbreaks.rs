//! `pipelines/jailbreaks.yaml`, reduced: the `jailbreak` stage's output is exactly the StrongREJECT
//! transforms of the world's held-out harmful prompts, and `evaluate` reports a refusal rate and
//! an attack success rate for every attack (`harmful:synthetic/safety/<attack>` in results.json).

use std::process::Command;

use keel_data::jailbreak::Attack;
use serde_json::Value;

mod support;

fn read_jsonl(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().map(|l| serde_json::from_str(l).expect("an example per line")).collect()
}

#[test]
fn jailbreak_pipeline_reports_asr_per_attack() {
    let root = std::env::temp_dir().join(format!("keel-jailbreaks-{}", std::process::id()));
    let file = support::repo_path("pipelines/jailbreaks.yaml");
    let sets = [
        "stages.world.with.n_train=120",
        "stages.world.with.n_test=5",
        "stages.world.with.n_base_task=60",
        "stages.base.with.steps=4",
        "stages.evaluate.with.max_per_source=3",
        "stages.evaluate.with.max_benign=3",
        "stages.evaluate.with.max_new_tokens=6",
    ];
    let mut cmd = Command::new(support::keel_bin());
    cmd.args(["run", file.to_str().expect("utf-8 path"), "--quiet", "--runs-dir"]).arg(&root).args(["--run-id", "t"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("the keel binary runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = root.join("jailbreaks").join("t");

    let attacks: Vec<Attack> = ["none", "prefix_injection", "refusal_suppression", "evil_confidant", "base64", "style_injection_short", "distractors"]
        .iter()
        .map(|n| Attack::from_name(n).expect("a known attack"))
        .collect();
    let harmful = read_jsonl(&run.join("stages/world/harmful_eval.jsonl"));
    let attacked = read_jsonl(&run.join("stages/jailbreak/examples.jsonl"));
    assert_eq!(attacked.len(), harmful.len() * attacks.len());
    for (i, a) in attacked.iter().enumerate() {
        let (attack, e) = (attacks[i / harmful.len()], &harmful[i % harmful.len()]);
        let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_else(|| panic!("`{k}` of {v}")).to_string();
        assert_eq!(text(a, "id"), format!("{}/{attack}", text(e, "id")));
        assert_eq!(text(a, "source"), format!("synthetic/safety/{attack}"));
        // The synthetic prompts are text prompts, written as JSON strings.
        assert_eq!(text(a, "prompt"), attack.apply(&text(e, "prompt")));
        for k in ["safety", "category", "target"] {
            assert_eq!(a[k], e[k], "{k}");
        }
    }

    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).expect("results.json")).expect("JSON");
    let benchmarks = &results[0]["benchmarks"];
    for attack in &attacks {
        let m = &benchmarks[format!("harmful:synthetic/safety/{attack}")];
        assert_eq!(m["n"], 3, "{attack}: {m}");
        let refusal = m["values"]["refusal_rate"].as_f64().unwrap_or_else(|| panic!("{attack}: {m}"));
        let asr = m["values"]["attack_success_rate"].as_f64().unwrap_or_else(|| panic!("{attack}: {m}"));
        assert!((0.0..=1.0).contains(&refusal) && (asr - (1.0 - refusal)).abs() < 1e-12, "{attack}: {m}");
    }
    let report = std::fs::read_to_string(run.join("report.md")).expect("report.md");
    assert!(report.contains("harmful:synthetic/safety/refusal_suppression"), "{report}");
    std::fs::remove_dir_all(&root).ok();
}
