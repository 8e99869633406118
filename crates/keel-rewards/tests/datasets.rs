//! Acceptance tests on the real GSM8K and MATH-500 test sets (read through `KEEL_DATA_DIR`).
//!
//! These tests fail (they do not skip) when the data directory is not configured, so a CI
//! run without data cannot silently pass.

use std::path::PathBuf;

use keel_rewards::math::{gsm8k_strict, last_boxed};
use keel_rewards::{AnswerFormat, MathVerifier};

fn data_file(rel: &str) -> PathBuf {
    let dir = std::env::var_os("KEEL_DATA_DIR").unwrap_or_else(|| {
        panic!(
            "KEEL_DATA_DIR is not set: run `bash scripts/fetch-test-data.sh` and run the tests with cargo \
             (it sets KEEL_DATA_DIR) to run the GSM8K/MATH-500 acceptance tests"
        )
    });
    let p = PathBuf::from(dir).join(rel);
    assert!(
        p.is_file(),
        "dataset file {} not found under KEEL_DATA_DIR: run `bash scripts/fetch-test-data.sh`",
        p.display()
    );
    p
}

fn jsonl(rel: &str) -> Vec<serde_json::Value> {
    let p = data_file(rel);
    let text =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{} line {}: {e}", p.display(), i + 1))
        })
        .collect()
}

/// Replaces the gold number with a different one (adds 1 to its last digit position).
fn perturb(n: &str) -> String {
    let v: f64 = n
        .parse()
        .unwrap_or_else(|e| panic!("gold `{n}` is not a number: {e}"));
    let bumped = v + 1.0;
    if bumped.fract() == 0.0 {
        format!("{}", bumped as i64)
    } else {
        format!("{bumped}")
    }
}

#[test]
fn gsm8k_gold_verifies_and_perturbation_fails() {
    let rows = jsonl("gsm8k/test.jsonl");
    assert_eq!(rows.len(), 1319, "GSM8K test split has 1,319 items");
    let v = MathVerifier::default();
    for (i, row) in rows.iter().enumerate() {
        let solution = row["answer"]
            .as_str()
            .unwrap_or_else(|| panic!("item {i}: no answer"));
        let gold = gsm8k_strict(solution).unwrap_or_else(|| panic!("item {i}: no #### in gold"));
        for fmt in [
            AnswerFormat::Gsm8kStrict,
            AnswerFormat::Gsm8kFlexible,
            AnswerFormat::Auto,
        ] {
            let r = v
                .verify(fmt, solution, &gold)
                .unwrap_or_else(|e| panic!("item {i}: {e}"));
            assert!(
                r.correct,
                "item {i} ({fmt:?}): gold `{gold}` did not verify, got {:?}",
                r.extracted
            );
        }
        let wrong = perturb(&gold);
        for fmt in [AnswerFormat::Gsm8kStrict, AnswerFormat::Gsm8kFlexible] {
            let r = v
                .verify(fmt, solution, &wrong)
                .unwrap_or_else(|e| panic!("item {i}: {e}"));
            assert!(
                !r.correct,
                "item {i} ({fmt:?}): perturbed `{wrong}` verified against `{gold}`"
            );
        }
        // A solution whose final number was changed must also fail against the true gold.
        let (head, _) = solution
            .rsplit_once("####")
            .unwrap_or_else(|| panic!("item {i}: no ####"));
        let tampered = format!("{head}#### {wrong}");
        let r = v
            .verify(AnswerFormat::Gsm8kStrict, &tampered, &gold)
            .unwrap();
        assert!(!r.correct, "item {i}: tampered solution verified");
    }
}

#[test]
fn math500_boxed_gold_matches_answer_field() {
    let rows = jsonl("math500/test.jsonl");
    assert_eq!(rows.len(), 500, "MATH-500 has 500 items");
    let v = MathVerifier::default();
    let mut pass = 0usize;
    let mut failures = Vec::new();
    for row in &rows {
        let id = row["unique_id"].as_str().unwrap_or("?");
        let solution = row["solution"].as_str().unwrap_or("");
        let answer = row["answer"].as_str().unwrap_or("");
        let boxed = last_boxed(solution);
        let ok = match &boxed {
            Some(b) => v.equivalent(b, answer).unwrap_or(false),
            None => false,
        };
        if ok {
            pass += 1;
        } else {
            failures.push(format!("{id}: boxed {boxed:?} vs answer {answer:?}"));
        }
    }
    let rate = pass as f64 / rows.len() as f64;
    println!(
        "MATH-500 boxed-vs-answer pass rate: {pass}/{} = {:.2}%",
        rows.len(),
        rate * 100.0
    );
    for f in &failures {
        println!("  failure: {f}");
    }
    assert!(
        rate >= 0.99,
        "pass rate {rate} below 99%; failures: {failures:#?}"
    );
    // Each item's boxed answer must NOT match a different item's answer (no vacuous passes):
    // check the shifted pairing fails for nearly all items.
    let mut cross = 0;
    for w in rows.windows(2) {
        let b = last_boxed(w[0]["solution"].as_str().unwrap_or("")).unwrap_or_default();
        if v.equivalent(&b, w[1]["answer"].as_str().unwrap_or(""))
            .unwrap_or(false)
        {
            cross += 1;
            println!(
                "  shifted pair verified: boxed {b:?} vs next answer {:?}",
                w[1]["answer"]
            );
        }
    }
    println!("MATH-500 shifted (wrong) pairings that verified: {cross}/499");
    assert!(
        cross < 10,
        "{cross} mismatched pairs verified as equivalent"
    );
}
