//! A training stage's parameter that cannot be read is named in the error with serde's reason:
//! a bad `lora:` block in `sft` or `learn` blames `lora` (at its line), not `steps` or `algorithm`
//! (issue 19, row 12).

/// A tiny pipeline with one `sft` and one `learn` stage; `sft_with` / `learn_with` are their extra
/// `with:` entries.
fn pipeline(sft_with: &str, learn_with: &str) -> String {
    format!(
        "name: p\nseed: 1\nresources:\n  policy: {{kind: policy_store, max_staleness: 0}}\nstages:\n\
         \x20 world: {{use: synthetic_world, with: {{task: arithmetic, n_train: 20, n_test: 5, n_base_task: 10}}}}\n\
         \x20 base: {{use: tiny_model, with: {{family: qwen2}}}}\n\
         \x20 sft:\n\
         \x20   use: sft\n\
         \x20   inputs: {{examples: world.task_train, init: base.checkpoint}}\n\
         \x20   with: {{steps: 2{sft_with}}}\n\
         \x20 prompts: {{use: prompts, inputs: {{examples: world.task_train}}, with: {{steps: 2, batch_size: 2}}}}\n\
         \x20 rollout: {{use: rollout, inputs: {{batch: prompts.batch}}, resources: {{policy: policy}}}}\n\
         \x20 score: {{use: score, inputs: {{rollouts: rollout.rollouts}}}}\n\
         \x20 learn:\n\
         \x20   use: learn\n\
         \x20   inputs: {{scored: score.scored, init: base.checkpoint}}\n\
         \x20   resources: {{policy: policy}}\n\
         \x20   with: {{algorithm: grpo{learn_with}}}\n"
    )
}

fn validate(text: &str) -> Result<(), String> {
    keel_pipeline::load_str("p.yaml", text, &[], &keel_stages::registry()).map(|_| ()).map_err(|d| d.to_string())
}

#[test]
fn the_pipeline_validates_with_good_lora_blocks() {
    validate(&pipeline(", lora: {r: 8}", ", lora: {r: 4, alpha: 8.0, target_modules: [q_proj, v_proj]}"))
        .unwrap_or_else(|e| panic!("good LoRA blocks are rejected:\n{e}"));
}

#[test]
fn a_bad_lora_block_is_blamed_on_lora_with_the_reason() {
    for (sft, learn, line, what) in [
        (", lora: {rank: 8}", "", "11", "unknown field `rank`"),
        ("", ", lora: {r: 8, target_modules: q_proj}", "19", "invalid type"),
        ("", ", lora: {r: eight}", "19", "invalid type"),
        (", lora: 8", "", "11", "invalid type"),
    ] {
        let e = validate(&pipeline(sft, learn)).expect_err("a bad lora block is an error");
        assert!(e.contains("`lora`") && e.contains(what), "the error names lora and why:\n{e}");
        assert!(e.contains(&format!("p.yaml:{line}:")), "the error points at the stage's line {line}:\n{e}");
        assert!(!e.contains("`steps`") && !e.contains("`algorithm`"), "the error blames another parameter:\n{e}");
    }
}

#[test]
fn a_bad_value_of_any_learner_parameter_is_named() {
    // `ema_alpha` is untyped at validation (it may be null): its serde error names it.
    let e = validate(&pipeline("", ", ema_alpha: high")).expect_err("a string EMA coefficient is an error");
    assert!(e.contains("`ema_alpha`") && !e.contains("`algorithm`"), "{e}");
    // Dr. GRPO's constant needs a positive length: an error about the combination, with the reason.
    let e = validate(&pipeline("", ", aggregation: constant, constant_len: 0")).expect_err("constant_len 0");
    assert!(e.contains("constant_len") && e.contains("at least 1"), "{e}");
}
