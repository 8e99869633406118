//! Property tests: splits and shuffles are functions of the seed, train and test never share a
//! prompt, and synthetic worlds are deterministic with gold completions whose chain of thought
//! recomputes to their answer.

use std::collections::HashSet;

use keel_core::{Example, SafetyLabel};
use keel_data::{
    extract_answer, generate_tasks, prompt_key, shuffled, split, subset, verify_task, ArithConfig, CountConfig,
    ReasoningFormat, SafetyWorld, SafetyWorldConfig, SortConfig, TaskDomain,
};
use proptest::prelude::*;

fn examples(prompts: &[String]) -> Vec<Example> {
    prompts.iter().enumerate().map(|(i, p)| Example::new(format!("e-{i}"), p.clone(), "prop")).collect()
}

fn ids(v: &[Example]) -> Vec<&str> {
    v.iter().map(|e| e.id.as_str()).collect()
}

fn domain() -> impl Strategy<Value = TaskDomain> {
    prop_oneof![
        (2usize..5, 0usize..3, 6i64..30, prop::sample::select(vec!["+", "-", "*", "+-", "+*", "+-*"])).prop_map(
            |(min, extra, max_value, ops)| TaskDomain::Arithmetic(ArithConfig {
                min_operands: min,
                max_operands: min + extra,
                max_value,
                operators: ops.to_string(),
            })
        ),
        (2usize..5, 0usize..3, 10i64..40).prop_map(|(min, extra, max_value)| TaskDomain::Sorting(SortConfig {
            min_len: min,
            max_len: min + extra,
            max_value,
        })),
        (5usize..8, 0usize..4, prop::sample::select(vec!["ab", "abc", "abcd", "xyzw"])).prop_map(
            |(min, extra, alphabet)| TaskDomain::Counting(CountConfig {
                min_len: min,
                max_len: min + extra,
                alphabet: alphabet.to_string(),
            })
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn same_seed_same_split(prompts in prop::collection::vec("[a-e ]{0,6}", 0..60), frac in 0.0f64..1.0, seed in any::<u64>()) {
        let ex = examples(&prompts);
        let a = split(&ex, frac, seed).unwrap();
        let b = split(&ex, frac, seed).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(shuffled(&ex, seed), shuffled(&ex, seed));
    }

    #[test]
    fn different_seeds_different_order(n in 20usize..80, s1 in any::<u64>(), s2 in any::<u64>()) {
        prop_assume!(s1 != s2);
        let prompts: Vec<String> = (0..n).map(|i| format!("prompt number {i}")).collect();
        let ex = examples(&prompts);
        let (a, b) = (shuffled(&ex, s1), shuffled(&ex, s2));
        prop_assert_ne!(ids(&a), ids(&b));
        let (sa, sb) = (split(&ex, 0.5, s1).unwrap(), split(&ex, 0.5, s2).unwrap());
        prop_assert_ne!(ids(&sa.test), ids(&sb.test));
    }

    /// Even with many duplicate prompts (small alphabet), no normalised prompt is on both sides,
    /// nothing is lost or duplicated, and the test side has at least the requested size.
    #[test]
    fn train_and_test_never_overlap(prompts in prop::collection::vec("[ab]{1,3}[.!]?", 0..60), frac in 0.0f64..1.0, seed in any::<u64>()) {
        let ex = examples(&prompts);
        let s = split(&ex, frac, seed).unwrap();
        let train_keys: HashSet<String> = s.train.iter().map(prompt_key).collect();
        prop_assert!(s.test.iter().all(|e| !train_keys.contains(&prompt_key(e))));
        let mut all: Vec<&str> = ids(&s.train);
        all.extend(ids(&s.test));
        all.sort();
        let mut want = ids(&ex);
        want.sort();
        prop_assert_eq!(all, want);
        prop_assert!(s.test.len() >= (ex.len() as f64 * frac).round() as usize);
    }

    #[test]
    fn subsets_are_deterministic_and_distinct(n in 0usize..50, k in 0usize..50, seed in any::<u64>()) {
        let v: Vec<usize> = (0..n).collect();
        match subset(&v, k, seed) {
            Ok(a) => {
                prop_assert!(k <= n);
                prop_assert_eq!(&a, &subset(&v, k, seed).unwrap());
                prop_assert_eq!(a.iter().collect::<HashSet<_>>().len(), k);
            }
            Err(_) => prop_assert!(k > n),
        }
    }

    /// Same seed, same tasks; every gold completion's chain of thought recomputes to its answer.
    #[test]
    fn task_worlds_deterministic_and_consistent(d in domain(), seed in any::<u64>(), think in any::<bool>()) {
        let format = if think { ReasoningFormat::Think } else { ReasoningFormat::Plain };
        let a = generate_tasks(&d, 40, seed, format).unwrap();
        prop_assert_eq!(&a, &generate_tasks(&d, 40, seed, format).unwrap());
        let other = generate_tasks(&d, 40, seed.wrapping_add(1), format).unwrap();
        prop_assert_ne!(&a, &other);
        let prompts: HashSet<&str> = a.iter().map(|e| e.prompt.user_text()).collect();
        prop_assert_eq!(prompts.len(), 40);
        for e in &a {
            prop_assert_eq!(verify_task(e), Ok(()), "{:?}", e);
            let target = e.target.as_deref().unwrap();
            prop_assert_eq!(target.starts_with("<think>"), think);
            prop_assert_eq!(extract_answer(target), e.answer.clone());
        }
    }

    #[test]
    fn embedded_safety_world_deterministic_and_disjoint(seed in any::<u64>(), frac in 0.05f64..0.5, think in any::<bool>()) {
        let cfg = SafetyWorldConfig {
            heldout_fraction: frac,
            format: if think { ReasoningFormat::Think } else { ReasoningFormat::Plain },
            ..Default::default()
        };
        let a = SafetyWorld::embedded(&cfg, seed).unwrap();
        prop_assert_eq!(&a, &SafetyWorld::embedded(&cfg, seed).unwrap());
        let train_keys: HashSet<String> = a.train.iter().map(prompt_key).collect();
        prop_assert!(a.eval_harmful.iter().chain(&a.eval_benign).all(|e| !train_keys.contains(&prompt_key(e))));
        prop_assert!(!a.eval_harmful.is_empty() && !a.eval_benign.is_empty());
        prop_assert!(a.eval_harmful.iter().all(|e| e.safety == Some(SafetyLabel::Harmful)));
        prop_assert!(a.eval_benign.iter().all(|e| e.safety == Some(SafetyLabel::Benign)));
        let refusals = keel_data::synthetic::safety::refusals().unwrap();
        for e in &a.train {
            let t = e.target.as_deref().unwrap();
            prop_assert_eq!(t.starts_with("<think>"), think);
            let answer = t.rsplit("</think>").next().unwrap_or(t).trim();
            let refuses = refusals.iter().any(|r| r == answer);
            prop_assert_eq!(refuses, e.safety == Some(SafetyLabel::Harmful), "{:?}", e);
        }
    }
}

#[test]
fn documented_arithmetic_example_shape() {
    let d = TaskDomain::Arithmetic(ArithConfig::default());
    let tasks = generate_tasks(&d, 200, 3, ReasoningFormat::Plain).unwrap();
    for e in &tasks {
        let p = e.prompt.user_text();
        assert!(p.starts_with("Compute ") && p.ends_with('.'), "{p}");
        assert!(e.target.as_deref().unwrap().contains(". Answer: ") || e.target.as_deref().unwrap().contains("Answer: "));
        assert!(e.target.as_deref().unwrap().len() < 80);
    }
    // The default operand range is 2..=3.
    let ops: HashSet<usize> = tasks
        .iter()
        .map(|e| e.prompt.user_text().chars().filter(|c| matches!(c, '+' | '-' | '*')).count())
        .collect();
    assert_eq!(ops, HashSet::from([1, 2]));
}
