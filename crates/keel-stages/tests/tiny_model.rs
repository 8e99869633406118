//! `tiny_model` builds a loadable model of every architecture family Keel implements, with the
//! family's features; a `model` stage's dry run finds the family from config.json, `family:` or the
//! table of known ids, and says what to write when it cannot.

use std::path::PathBuf;

use keel_pipeline::{dry_run, load_str, run, RunOptions};
use keel_stages::policy::Policy;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("keel-stages-tiny-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn tiny_models_of_every_family_load_generate_and_have_their_features() {
    let registry = keel_stages::registry();
    let root = tmp("families");
    let mut text = String::from("name: tiny\nseed: 3\nstages:\n");
    for (family, template) in [("llama", "chatml"), ("qwen2", "qwen2.5"), ("qwen3", "chatml"), ("mistral", "deepseek-r1")] {
        text.push_str(&format!("  {family}: {{use: tiny_model, with: {{family: {family}, template: {template}}}}}\n"));
    }
    let p = load_str("tiny.yaml", &text, &[], &registry).unwrap_or_else(|d| panic!("{d}"));
    let report = run(&p, &RunOptions { runs_root: root.clone(), ..RunOptions::default() }).expect("runs");
    for family in ["llama", "qwen2", "qwen3", "mistral"] {
        let policy = Policy::load(&report.run_dir.join("stages").join(family).join("checkpoint")).expect("loads");
        let c = policy.model.config();
        assert_eq!(c.architecture.model_type(), family);
        assert_eq!(c.qkv_bias, family == "qwen2", "{family}: q/k/v bias");
        assert_eq!(c.qk_norm, family == "qwen3", "{family}: q/k norm");
        assert!(c.num_key_value_heads < c.num_attention_heads, "{family}: grouped-query attention");
        let e = keel_core::Example::new("x", "What is 2 + 2?", "test");
        let prompt = policy.render(&e).expect("renders with the chat template");
        let outs = keel_stages::evaluate::generate(&policy, &[std::sync::Arc::new(e)], &keel_rollout::SamplingParams::greedy(4))
            .expect("generates");
        assert_eq!(outs.len(), 1);
        match family {
            "qwen2" => assert!(prompt.starts_with("<|im_start|>system\nYou are Qwen") && prompt.ends_with("<|im_start|>assistant\n"), "{prompt}"),
            "mistral" => assert!(prompt.starts_with("<｜begin▁of▁sentence｜>") && prompt.ends_with("<｜Assistant｜>"), "{prompt}"),
            _ => assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt}"),
        }
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn model_stage_dry_run_finds_the_family_or_says_what_to_write() {
    let registry = keel_stages::registry();
    let pipeline = |source: &str, family: Option<&str>| {
        let fam = family.map(|f| format!(", family: {f}")).unwrap_or_default();
        let text = format!("name: m\nseed: 1\nstages:\n  base: {{use: model, with: {{source: \"{source}\"{fam}}}}}\n");
        load_str("m.yaml", &text, &[], &registry).unwrap_or_else(|d| panic!("an uncached hf:// model validates:\n{d}"))
    };
    // Known id: the table says qwen2 and R1's template.
    let d = dry_run(&pipeline("hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", None), &registry).expect("known id");
    let base = d.stage("base").expect("stage");
    assert_eq!(base.kind.name(), "tiny_model");
    assert_eq!(base.params.value("family").and_then(|v| v.as_str()), Some("qwen2"));
    assert_eq!(base.params.value("template").and_then(|v| v.as_str()), Some("deepseek-r1"));
    // Unknown id: an error at the parameter that says to add `family:`, and `family:` fixes it.
    let e = dry_run(&pipeline("hf://someone/unknown-model", None), &registry).expect_err("unknown id");
    let msg = e.to_string();
    assert!(msg.contains("m.yaml:4:") && msg.contains("family") && msg.contains("llama|qwen2|qwen3|mistral"), "{msg}");
    let d = dry_run(&pipeline("hf://someone/unknown-model", Some("qwen3")), &registry).expect("family given");
    assert_eq!(d.stage("base").unwrap().params.value("family").and_then(|v| v.as_str()), Some("qwen3"));
    // A local model: its config.json decides, and a contradicting `family:` is an error.
    let root = tmp("local");
    let tiny = load_str("t.yaml", "name: t\nseed: 1\nstages:\n  m: {use: tiny_model, with: {family: qwen2}}\n", &[], &registry).unwrap();
    let report = run(&tiny, &RunOptions { runs_root: root.clone(), ..RunOptions::default() }).expect("runs");
    let dir = report.run_dir.join("stages/m/checkpoint").display().to_string();
    let d = dry_run(&pipeline(&dir, None), &registry).expect("local config");
    assert_eq!(d.stage("base").unwrap().params.value("family").and_then(|v| v.as_str()), Some("qwen2"));
    let e = dry_run(&pipeline(&dir, Some("llama")), &registry).expect_err("contradiction");
    assert!(e.to_string().contains("contradicts the model's config.json"), "{e}");
    std::fs::remove_dir_all(&root).ok();
}
