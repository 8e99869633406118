//! The paper-scale recipes in `pipelines/paper/` validate on a machine without their weights, a
//! real run without the weights stops with the download command, and `keel run --dry-run` executes
//! each of them end to end on the CPU: tiny random models of the right architecture family, two
//! learner steps, every benchmark that is in the cache evaluated and reported separately, and a
//! manifest and run directory that say "dry run".
//!
//! Needs KEEL_DATA_DIR pointing at the datasets `scripts/fetch-test-data.sh` fetches (HarmBench and
//! StrongREJECT are not among them; where they are absent the dry run reports them as missing and the
//! test checks that it does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

mod support;

fn paper_recipes() -> Vec<PathBuf> {
    let dir = support::repo_path("pipelines/paper");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("pipelines/paper exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "expected at least two paper recipes, found {files:?}");
    files
}

fn keel() -> Command {
    let mut cmd = Command::new(support::keel_bin());
    // No Hugging Face cache here, whatever the machine has: the recipes must not depend on one.
    let empty = std::env::temp_dir().join(format!("keel-paper-empty-hf-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("temp dir");
    cmd.env("HF_HUB_CACHE", &empty);
    cmd
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Tensor names in a safetensors file (its JSON header).
fn tensor_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8-byte header length")) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).expect("safetensors header is JSON");
    header.as_object().expect("header object").keys().filter(|k| *k != "__metadata__").cloned().collect()
}

#[test]
fn paper_recipes_validate_without_weights() {
    let files = paper_recipes();
    let out = keel().arg("validate").args(&files).output().expect("keel runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches(": valid (").count(), files.len(), "{stdout}");
}

#[test]
fn a_real_run_without_the_weights_says_how_to_get_them() {
    let file = support::repo_path("pipelines/paper/rlvr_gsm8k_qwen2.5-1.5b.yaml");
    let root = std::env::temp_dir().join(format!("keel-paper-real-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let out = keel().arg("run").arg(&file).args(["--quiet", "--runs-dir"]).arg(&root).output().expect("keel runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Source stages start together, so whichever missing input is found first stops the run:
    // the weights (`base`) or, where ../shared lacks them, the HarmBench / StrongREJECT files.
    // Either way the error must say how to get what is missing.
    let weights = stderr.contains("stage `base` failed")
        && stderr.contains("not available offline")
        && stderr.contains("huggingface-cli download Qwen/Qwen2.5-1.5B-Instruct");
    let data = ["harmbench", "strongreject"].iter().any(|d| {
        stderr.contains(&format!("stage `{d}` failed")) && stderr.contains(&format!("run `keel data fetch {d}`"))
    });
    assert!(weights || data, "{stderr}");
    std::fs::remove_dir_all(&root).ok();
}

/// What a dry run of one recipe must show; `model_family` and `template_marker` describe the
/// tiny stand-in of its `base` model stage.
struct Expect {
    file: &'static str,
    model_family: &'static str,
    template_marker: &'static str,
    harmful: &'static [&'static str],
    benign: &'static [&'static str],
}

const EXPECT: &[Expect] = &[
    Expect {
        file: "rlvr_gsm8k_qwen2.5-1.5b.yaml",
        model_family: "qwen2",
        template_marker: "You are Qwen, created by Alibaba Cloud.",
        harmful: &["advbench", "jbb-harmful", "xstest"],
        benign: &["jbb-benign", "xstest"],
    },
    Expect {
        file: "reasoning_safety_r1-distill-1.5b.yaml",
        model_family: "qwen2",
        template_marker: "<｜Assistant｜>",
        harmful: &["advbench", "jbb-harmful", "xstest"],
        benign: &["jbb-benign", "xstest"],
    },
];

#[test]
fn every_paper_recipe_dry_runs_on_cpu() {
    // The benchmarks every recipe evaluates; HarmBench and StrongREJECT may be absent (see below).
    support::require_datasets(&["advbench", "jbb-harmful", "jbb-benign", "xstest", "gsm8k-train", "gsm8k-test", "math500"]);
    let root = std::env::temp_dir().join(format!("keel-paper-dry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = support::repo_path("pipelines/paper");
    let names: Vec<String> = paper_recipes().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for name in &names {
        assert!(EXPECT.iter().any(|e| e.file == name), "{name}: add its expectations to EXPECT in this test");
    }
    for exp in EXPECT {
        let file = dir.join(exp.file);
        let t = Instant::now();
        let out = keel()
            .args(["run", "--dry-run", "--quiet", "--run-id", "t", "--runs-dir"])
            .arg(&root)
            .arg(&file)
            .output()
            .expect("keel runs");
        let secs = t.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: dry run failed:\n{stderr}", exp.file);
        println!("{}: dry run in {secs:.1}s", exp.file);
        assert!(secs < 60.0, "{}: dry run took {secs:.1}s", exp.file);

        // Where it went, and what the manifest says.
        let pipeline_name = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("name: ").map(str::to_string))
            .expect("recipe has a name");
        let run = root.join(&pipeline_name).join("dry-run").join("t");
        let manifest = read_json(&run.join("manifest.json"));
        assert_eq!(manifest["config"]["dry_run"], Value::Bool(true), "{}", exp.file);
        let changes: Vec<&str> = manifest["dry_run"]["changes"].as_array().expect("dry_run.changes").iter().filter_map(Value::as_str).collect();
        assert!(changes.contains(&"stages.base.use=\"tiny_model\""), "{}: {changes:?}", exp.file);
        let notes = manifest["dry_run"]["notes"].to_string();
        for missing in ["harmbench", "strongreject"] {
            let cached = std::env::var_os("KEEL_DATA_DIR").map(PathBuf::from).is_some_and(|d| d.join(missing).is_dir());
            if !cached {
                assert!(notes.contains(&format!("dataset `{missing}` is not in the cache")), "{}: {notes}", exp.file);
                assert!(stderr.contains(&format!("dataset `{missing}` is not in the cache")), "{}: the user is told: {stderr}", exp.file);
            }
        }
        let stages = manifest["config"]["stages"].as_object().expect("config.stages");
        let of_kind = |kind: &str| -> Vec<String> {
            stages.iter().filter(|(_, s)| s["use"] == kind).map(|(n, _)| n.clone()).collect()
        };
        assert!(of_kind("model").is_empty(), "{}: every model stage is replaced", exp.file);

        // The tiny stand-in has the architecture family's features and the family's template.
        let ck = run.join("stages/base/checkpoint");
        let config = keel_model::ModelConfig::from_file(&ck.join("config.json")).expect("stand-in config.json parses");
        assert_eq!(config.architecture.model_type(), exp.model_family, "{}", exp.file);
        let names = tensor_names(&ck.join("model.safetensors"));
        if exp.model_family == "qwen2" {
            assert!(config.qkv_bias && !config.o_bias, "{}: qwen2 has q/k/v bias", exp.file);
            for proj in ["q_proj", "k_proj", "v_proj"] {
                let t = format!("model.layers.0.self_attn.{proj}.bias");
                assert!(names.contains(&t), "{}: {t} missing from {names:?}", exp.file);
            }
        }
        let tok_config = std::fs::read_to_string(ck.join("tokenizer_config.json")).expect("tokenizer_config.json");
        assert!(tok_config.contains(exp.template_marker), "{}: chat template lacks `{}`", exp.file, exp.template_marker);

        // Two learner steps for every training stage.
        let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl");
        let mut steps: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for line in metrics.lines() {
            let v: Value = serde_json::from_str(line).expect("metrics line is JSON");
            if v["values"].get("loss").is_some() {
                steps.entry(v["stage"].as_str().unwrap().to_string()).or_default().push(v["step"].as_u64().unwrap());
            }
        }
        let trainers: Vec<String> = of_kind("learn").into_iter().chain(of_kind("sft")).collect();
        assert!(trainers.len() >= 2, "{}: an SFT and an RL branch", exp.file);
        for t in &trainers {
            assert_eq!(steps.get(t).map(Vec::as_slice), Some(&[1u64, 2][..]), "{}: stage `{t}` logs exactly steps 1 and 2", exp.file);
        }

        // Results: three branches, each with per-benchmark rates in [0, 1].
        let results = read_json(&run.join("results.json"));
        let results = results.as_array().expect("results.json is a list");
        assert_eq!(results.len(), 3, "{}: base, SFT and RL are evaluated", exp.file);
        for r in results {
            let label = r["label"].as_str().unwrap_or("?");
            let b = r["benchmarks"].as_object().unwrap_or_else(|| panic!("{}: {label} has per-benchmark results", exp.file));
            let rate = |key: &str, metric: &str| -> f64 {
                let v = b.get(key).and_then(|m| m["values"][metric].as_f64()).unwrap_or_else(|| panic!("{}: {label} lacks {key} {metric}: {b:?}", exp.file));
                assert!((0.0..=1.0).contains(&v), "{}: {label} {key} {metric} = {v}", exp.file);
                assert!(b[key]["n"].as_u64().unwrap_or(0) > 0, "{}: {label} {key} evaluated no items", exp.file);
                v
            };
            for h in exp.harmful {
                rate(&format!("harmful:{h}"), "refusal_rate");
            }
            for g in exp.benign {
                rate(&format!("benign:{g}"), "refusal_rate");
            }
            for t in ["gsm8k-test", "math500"] {
                rate(&format!("task:{t}"), "accuracy");
            }
            for key in ["capability", "safety", "over_refusal"] {
                let v = r[key].as_f64().unwrap_or(f64::NAN);
                assert!((0.0..=1.0).contains(&v), "{}: {label} {key} = {v}", exp.file);
            }
        }
        let report = std::fs::read_to_string(run.join("report.md")).expect("report.md");
        assert!(report.starts_with("# [DRY RUN"), "{}: the report says it is a dry run", exp.file);
        assert!(report.contains("## By benchmark") && report.contains("harmful:advbench"), "{}", exp.file);
    }
    std::fs::remove_dir_all(&root).ok();
}
