//! Verifiable reasoning tasks small enough for a from-scratch model on a CPU.
//!
//! Three domains share one answer convention so one verifier scores them all:
//!
//! | domain | prompt | target (plain format) | answer |
//! |---|---|---|---|
//! | arithmetic | `Compute 3+4*2.` | `4*2=8. 3+8=11. Answer: 11` | `11` |
//! | sorting | `Sort 5 3 9.` | `3. 3 5. 3 5 9. Answer: 3 5 9` | `3 5 9` |
//! | counting | `Count a in bacab.` | `b a1 c a2 b. Answer: 2` | `2` |
//!
//! **Answer convention**: the final answer is the text after the last `Answer:` (after the last
//! `</think>` if there is one), up to the end of the line, trimmed, without a trailing period.
//! [`extract_answer`] implements it; compare the result with [`keel_core::Example::answer`].
//!
//! The chain of thought is deliberately mechanical (one operation per step, evaluated with the
//! usual precedence, left to right) so a tiny model can learn it, and so [`verify_task`] can
//! recompute every step. Prompts within one generated set are unique, so a split by index is a
//! split by content.

use std::collections::HashSet;

use keel_core::Example;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::synthetic::ReasoningFormat;

/// The marker that introduces a final answer.
pub const ANSWER_PREFIX: &str = "Answer:";

/// The final answer of a completion under the `Answer: N` convention, or `None` if there is none.
pub fn extract_answer(completion: &str) -> Option<String> {
    let after_think = match completion.rfind("</think>") {
        Some(p) => &completion[p + "</think>".len()..],
        None => completion,
    };
    let start = after_think.rfind(ANSWER_PREFIX)? + ANSWER_PREFIX.len();
    let rest = &after_think[start..];
    let line = rest.split('\n').next().unwrap_or("");
    let ans = line.trim().trim_end_matches('.').trim();
    (!ans.is_empty()).then(|| ans.to_string())
}

fn default_min_operands() -> usize {
    2
}
fn default_max_operands() -> usize {
    3
}
fn default_max_value() -> i64 {
    9
}
fn default_operators() -> String {
    "+-*".to_string()
}

/// Difficulty knobs for multi-step arithmetic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArithConfig {
    /// Fewest operands in an expression (at least 2).
    #[serde(default = "default_min_operands")]
    pub min_operands: usize,
    /// Most operands (each extra operand adds one step of reasoning).
    #[serde(default = "default_max_operands")]
    pub max_operands: usize,
    /// Operands are drawn uniformly from `0..=max_value`.
    #[serde(default = "default_max_value")]
    pub max_value: i64,
    /// Operators to use, any of `+`, `-`, `*`.
    #[serde(default = "default_operators")]
    pub operators: String,
}

impl Default for ArithConfig {
    fn default() -> Self {
        ArithConfig {
            min_operands: default_min_operands(),
            max_operands: default_max_operands(),
            max_value: default_max_value(),
            operators: default_operators(),
        }
    }
}

fn default_sort_min() -> usize {
    3
}
fn default_sort_max() -> usize {
    5
}

/// Difficulty knobs for list sorting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SortConfig {
    /// Shortest list (at least 2).
    #[serde(default = "default_sort_min")]
    pub min_len: usize,
    /// Longest list.
    #[serde(default = "default_sort_max")]
    pub max_len: usize,
    /// Items are drawn from `0..=max_value`.
    #[serde(default = "default_max_value")]
    pub max_value: i64,
}

impl Default for SortConfig {
    fn default() -> Self {
        SortConfig { min_len: default_sort_min(), max_len: default_sort_max(), max_value: default_max_value() }
    }
}

fn default_count_min() -> usize {
    3
}
fn default_count_max() -> usize {
    8
}
fn default_alphabet() -> String {
    "abcd".to_string()
}

/// Difficulty knobs for letter counting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountConfig {
    /// Shortest word.
    #[serde(default = "default_count_min")]
    pub min_len: usize,
    /// Longest word.
    #[serde(default = "default_count_max")]
    pub max_len: usize,
    /// Letters words are made of (lowercase ASCII); fewer letters means more repeats.
    #[serde(default = "default_alphabet")]
    pub alphabet: String,
}

impl Default for CountConfig {
    fn default() -> Self {
        CountConfig { min_len: default_count_min(), max_len: default_count_max(), alphabet: default_alphabet() }
    }
}

/// A task domain with its difficulty; switching domains is the task-domain ablation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskDomain {
    /// Multi-step integer arithmetic with precedence.
    Arithmetic(ArithConfig),
    /// Sorting a list of small integers ascending.
    Sorting(SortConfig),
    /// Counting occurrences of a letter in a word.
    Counting(CountConfig),
}

impl TaskDomain {
    /// Short name, used as category and in `source` (`synthetic/arithmetic`).
    pub fn name(&self) -> &'static str {
        match self {
            TaskDomain::Arithmetic(_) => "arithmetic",
            TaskDomain::Sorting(_) => "sorting",
            TaskDomain::Counting(_) => "counting",
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(DataError::Invalid { what: "task domain", message });
        match self {
            TaskDomain::Arithmetic(c) => {
                if c.min_operands < 2 || c.max_operands < c.min_operands || c.max_operands > 12 {
                    return bad(format!("operands {}..={} must satisfy 2 <= min <= max <= 12", c.min_operands, c.max_operands));
                }
                if !(1..=1_000_000).contains(&c.max_value) {
                    return bad(format!("max_value {} must be in 1..=1000000", c.max_value));
                }
                if c.operators.is_empty() || !c.operators.chars().all(|o| matches!(o, '+' | '-' | '*')) {
                    return bad(format!("operators `{}` must be a non-empty subset of +-*", c.operators));
                }
            }
            TaskDomain::Sorting(c) => {
                if c.min_len < 2 || c.max_len < c.min_len || c.max_len > 32 {
                    return bad(format!("list length {}..={} must satisfy 2 <= min <= max <= 32", c.min_len, c.max_len));
                }
                if !(1..=1_000_000).contains(&c.max_value) {
                    return bad(format!("max_value {} must be in 1..=1000000", c.max_value));
                }
            }
            TaskDomain::Counting(c) => {
                if c.min_len < 1 || c.max_len < c.min_len || c.max_len > 64 {
                    return bad(format!("word length {}..={} must satisfy 1 <= min <= max <= 64", c.min_len, c.max_len));
                }
                if c.alphabet.is_empty() || !c.alphabet.chars().all(|l| l.is_ascii_lowercase()) {
                    return bad(format!("alphabet `{}` must be non-empty lowercase ASCII letters", c.alphabet));
                }
            }
        }
        Ok(())
    }
}

/// One generated item before formatting: prompt, reasoning steps, final answer, and what a
/// reflective re-check of the reasoning restates ([`RECHECK`]).
struct Item {
    prompt: String,
    reasoning: String,
    answer: String,
    recheck: String,
}

/// The reflective step a share ([`THINK_RECHECK_FRACTION`]) of `think`-format task traces end
/// with, followed by what it re-checks (arithmetic: the last step; sorting: the sorted list;
/// counting: `<count> <letter>`): `<think>4*2=8. 3+8=11. Wait, let me check: 3+8=11.</think>`.
/// It gives reflection counts ("wait" per 1,000 tokens) something to measure on task prompts.
pub const RECHECK: &str = "Wait, let me check: ";

/// Share of `think`-format task traces that end with a [`RECHECK`] step, each drawn
/// independently from a stream of its own (so the tasks themselves do not depend on it). Plain
/// traces never have one, so every plain-format world is what it was before.
pub const THINK_RECHECK_FRACTION: f64 = 0.25;

fn apply(op: char, a: i64, b: i64) -> i64 {
    match op {
        '+' => a.saturating_add(b),
        '-' => a.saturating_sub(b),
        _ => a.saturating_mul(b),
    }
}

/// Evaluates with `*` first (leftmost first), then `+`/`-` left to right, recording each step.
fn arith_steps(mut nums: Vec<i64>, mut ops: Vec<char>) -> (Vec<String>, i64) {
    let mut steps = Vec::new();
    while let Some(i) = ops.iter().position(|&o| o == '*') {
        let r = apply('*', nums[i], nums[i + 1]);
        steps.push(format!("{}*{}={}", nums[i], nums[i + 1], r));
        nums[i] = r;
        nums.remove(i + 1);
        ops.remove(i);
    }
    while !ops.is_empty() {
        let r = apply(ops[0], nums[0], nums[1]);
        steps.push(format!("{}{}{}={}", nums[0], ops[0], nums[1], r));
        nums[0] = r;
        nums.remove(1);
        ops.remove(0);
    }
    (steps, nums[0])
}

fn gen_arith(c: &ArithConfig, rng: &mut ChaCha8Rng) -> Item {
    let ops_pool: Vec<char> = c.operators.chars().collect();
    let n = rng.random_range(c.min_operands..=c.max_operands);
    let nums: Vec<i64> = (0..n).map(|_| rng.random_range(0..=c.max_value)).collect();
    let ops: Vec<char> = (1..n).map(|_| ops_pool[rng.random_range(0..ops_pool.len())]).collect();
    let mut expr = nums[0].to_string();
    for (o, x) in ops.iter().zip(&nums[1..]) {
        expr.push(*o);
        expr.push_str(&x.to_string());
    }
    let (steps, value) = arith_steps(nums, ops);
    let recheck = steps.last().cloned().unwrap_or_else(|| value.to_string());
    Item { prompt: format!("Compute {expr}."), reasoning: format!("{}.", steps.join(". ")), answer: value.to_string(), recheck }
}

fn join(v: &[i64]) -> String {
    v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" ")
}

fn gen_sort(c: &SortConfig, rng: &mut ChaCha8Rng) -> Item {
    let n = rng.random_range(c.min_len..=c.max_len);
    let items: Vec<i64> = (0..n).map(|_| rng.random_range(0..=c.max_value)).collect();
    let mut sorted = items.clone();
    sorted.sort();
    let steps: Vec<String> = (1..=n).map(|k| join(&sorted[..k])).collect();
    Item { prompt: format!("Sort {}.", join(&items)), reasoning: format!("{}.", steps.join(". ")), answer: join(&sorted), recheck: join(&sorted) }
}

fn count_walk(word: &str, letter: char) -> (Vec<String>, usize) {
    let mut count = 0;
    let tokens = word
        .chars()
        .map(|ch| {
            if ch == letter {
                count += 1;
                format!("{ch}{count}")
            } else {
                ch.to_string()
            }
        })
        .collect();
    (tokens, count)
}

fn gen_count(c: &CountConfig, rng: &mut ChaCha8Rng) -> Item {
    let alphabet: Vec<char> = c.alphabet.chars().collect();
    let n = rng.random_range(c.min_len..=c.max_len);
    let word: String = (0..n).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect();
    let word_letters: Vec<char> = word.chars().collect();
    // Mostly ask about a letter that occurs, sometimes about any letter (so 0 is a possible answer).
    let letter = if rng.random_bool(0.8) {
        word_letters[rng.random_range(0..word_letters.len())]
    } else {
        alphabet[rng.random_range(0..alphabet.len())]
    };
    let (tokens, count) = count_walk(&word, letter);
    Item {
        prompt: format!("Count {letter} in {word}."),
        reasoning: format!("{}.", tokens.join(" ")),
        answer: count.to_string(),
        recheck: format!("{count} {letter}"),
    }
}

/// Most examples one task world holds (train + test). Why a bound: each example takes about
/// 0.5 KB in memory and is written to JSONL by the `synthetic_world` stage, so a million is
/// already ~0.5 GB, and a size like `1e15` would otherwise abort on allocation.
pub const MAX_TASK_WORLD_EXAMPLES: usize = 1_000_000;

fn check_world_size(n: usize) -> Result<()> {
    if n > MAX_TASK_WORLD_EXAMPLES {
        return Err(DataError::Invalid {
            what: "task world size",
            message: format!("{n} examples requested, more than the limit of {MAX_TASK_WORLD_EXAMPLES}"),
        });
    }
    Ok(())
}

/// `n` examples with unique prompts, deterministic in `seed`; at most [`MAX_TASK_WORLD_EXAMPLES`].
///
/// Each example has `target` (reasoning then `Answer: …`, rendered with `format`), `answer`, the
/// domain as `category`, `source` = `synthetic/<domain>` and id `<domain>-<seed>-<i>`. Fails if the
/// configured space has fewer than `n` distinct prompts (make the task harder or ask for fewer).
pub fn generate_tasks(domain: &TaskDomain, n: usize, seed: u64, format: ReasoningFormat) -> Result<Vec<Example>> {
    domain.validate()?;
    check_world_size(n)?;
    let mut rng = keel_core::SeedStream::new(seed).rng(&format!("keel-data/tasks/{}", domain.name()));
    let mut recheck_rng = keel_core::SeedStream::new(seed).rng(&format!("keel-data/tasks/{}/recheck", domain.name()));
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    let max_attempts = n.saturating_mul(50).max(1000);
    let mut attempts = 0;
    while out.len() < n {
        attempts += 1;
        if attempts > max_attempts {
            return Err(DataError::Invalid {
                what: "task world size",
                message: format!(
                    "found only {} distinct {} prompts after {max_attempts} draws, {n} requested; increase the difficulty knobs",
                    out.len(),
                    domain.name()
                ),
            });
        }
        let item = match domain {
            TaskDomain::Arithmetic(c) => gen_arith(c, &mut rng),
            TaskDomain::Sorting(c) => gen_sort(c, &mut rng),
            TaskDomain::Counting(c) => gen_count(c, &mut rng),
        };
        if !seen.insert(item.prompt.clone()) {
            continue;
        }
        let reasoning = if format == ReasoningFormat::Think && recheck_rng.random_bool(THINK_RECHECK_FRACTION) {
            format!("{} {RECHECK}{}.", item.reasoning, item.recheck)
        } else {
            item.reasoning
        };
        let target = format.render(&reasoning, &format!("{ANSWER_PREFIX} {}", item.answer));
        out.push(Example {
            id: format!("{}-{seed}-{}", domain.name(), out.len()),
            prompt: keel_core::Prompt::Text(item.prompt),
            answer: Some(item.answer),
            target: Some(target),
            safety: None,
            category: Some(domain.name().to_string()),
            source: format!("synthetic/{}", domain.name()),
        });
    }
    Ok(out)
}

/// A train/test pair of task sets with disjoint prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskWorld {
    /// Training examples.
    pub train: Vec<Example>,
    /// Held-out examples (no prompt occurs in `train`).
    pub test: Vec<Example>,
}

/// Generates `n_train + n_test` unique tasks and splits them (disjoint by construction); the sum
/// is bounded by [`MAX_TASK_WORLD_EXAMPLES`].
pub fn task_world(domain: &TaskDomain, n_train: usize, n_test: usize, seed: u64, format: ReasoningFormat) -> Result<TaskWorld> {
    let total = n_train.checked_add(n_test).ok_or_else(|| DataError::Invalid {
        what: "task world size",
        message: format!("n_train {n_train} + n_test {n_test} overflows"),
    })?;
    let mut all = generate_tasks(domain, total, seed, format)?;
    let test = all.split_off(n_train);
    Ok(TaskWorld { train: all, test })
}

fn parse_int(s: &str) -> std::result::Result<i64, String> {
    s.trim().parse::<i64>().map_err(|_| format!("`{s}` is not an integer"))
}

/// Splits `a<op>b` where `a` may carry a leading minus sign.
fn parse_binary(lhs: &str) -> std::result::Result<(i64, char, i64), String> {
    let bytes = lhs.as_bytes();
    let pos = (1..bytes.len())
        .find(|&i| matches!(bytes[i], b'+' | b'-' | b'*') && bytes[i - 1].is_ascii_digit())
        .ok_or_else(|| format!("step `{lhs}` has no operator"))?;
    Ok((parse_int(&lhs[..pos])?, bytes[pos] as char, parse_int(&lhs[pos + 1..])?))
}

fn reasoning_of(target: &str) -> std::result::Result<String, String> {
    let text = match (target.find("<think>"), target.find("</think>")) {
        (Some(a), Some(b)) if a < b => target[a + "<think>".len()..b].to_string(),
        _ => match target.rfind(ANSWER_PREFIX) {
            Some(p) => target[..p].to_string(),
            None => return Err("target has no `Answer:`".into()),
        },
    };
    Ok(text.trim().trim_end_matches('.').to_string())
}

fn prompt_body<'a>(prompt: &'a str, prefix: &str) -> std::result::Result<&'a str, String> {
    prompt
        .strip_prefix(prefix)
        .and_then(|s| s.strip_suffix('.'))
        .ok_or_else(|| format!("prompt `{prompt}` does not look like `{prefix}….`"))
}

/// Recomputes a synthetic task from its prompt and checks the target's chain of thought step by
/// step, its final answer, and the example's `answer`. `Err` says which check failed.
///
/// This is how tests (and sceptical users) confirm that generated gold completions are correct,
/// independently of the generator's code path.
pub fn verify_task(example: &Example) -> std::result::Result<(), String> {
    let target = example.target.as_deref().ok_or("no target")?;
    let answer = example.answer.as_deref().ok_or("no answer")?;
    let final_answer = extract_answer(target).ok_or("target has no final answer")?;
    if final_answer != answer {
        return Err(format!("target says `{final_answer}`, answer field says `{answer}`"));
    }
    let prompt = example.prompt.user_text();
    let reasoning = reasoning_of(target)?;
    // A trailing reflective re-check is checked against the recomputed task below.
    let (reasoning, recheck) = match reasoning.split_once(&format!(". {RECHECK}")) {
        Some((body, check)) => (body.to_string(), Some(check.to_string())),
        None => (reasoning, None),
    };
    let check_recheck = |expected: String| match &recheck {
        Some(c) if *c != expected => Err(format!("re-check `{c}` should be `{expected}`")),
        _ => Ok(()),
    };
    match example.category.as_deref() {
        Some("arithmetic") => {
            let expr = prompt_body(prompt, "Compute ")?;
            // Independent evaluation: parse into numbers/operators, fold products, then sum.
            let (mut nums, mut ops) = (Vec::new(), Vec::new());
            let mut cur = String::new();
            for ch in expr.chars() {
                if matches!(ch, '+' | '-' | '*') {
                    nums.push(parse_int(&cur)?);
                    ops.push(ch);
                    cur.clear();
                } else {
                    cur.push(ch);
                }
            }
            nums.push(parse_int(&cur)?);
            let mut terms: Vec<(i64, i64)> = vec![(1, nums[0])];
            for (o, x) in ops.iter().zip(&nums[1..]) {
                match o {
                    '*' => {
                        if let Some(last) = terms.last_mut() {
                            last.1 = last.1.saturating_mul(*x);
                        }
                    }
                    '+' => terms.push((1, *x)),
                    _ => terms.push((-1, *x)),
                }
            }
            let value: i64 = terms.iter().map(|(s, v)| s * v).sum();
            if value.to_string() != answer {
                return Err(format!("{expr} = {value}, not {answer}"));
            }
            let steps: Vec<&str> = reasoning.split(". ").collect();
            if steps.len() != ops.len() {
                return Err(format!("{} steps for {} operators", steps.len(), ops.len()));
            }
            let mut last = None;
            for step in &steps {
                let (lhs, rhs) = step.split_once('=').ok_or_else(|| format!("step `{step}` has no `=`"))?;
                let (a, op, b) = parse_binary(lhs)?;
                let r = parse_int(rhs)?;
                if apply(op, a, b) != r {
                    return Err(format!("step `{step}` is wrong"));
                }
                last = Some(r);
            }
            if last.map(|r| r.to_string()).as_deref() != Some(answer) {
                return Err("last step does not give the answer".into());
            }
            check_recheck(steps.last().map(|s| s.to_string()).unwrap_or_default())?;
        }
        Some("sorting") => {
            let mut items: Vec<i64> = prompt_body(prompt, "Sort ")?.split(' ').map(parse_int).collect::<std::result::Result<_, _>>()?;
            items.sort();
            if join(&items) != answer {
                return Err(format!("sorted list is `{}`, not `{answer}`", join(&items)));
            }
            let steps: Vec<&str> = reasoning.split(". ").collect();
            if steps.len() != items.len() {
                return Err(format!("{} steps for {} items", steps.len(), items.len()));
            }
            for (k, step) in steps.iter().enumerate() {
                if *step != join(&items[..=k]) {
                    return Err(format!("step {k} `{step}` is not the sorted prefix"));
                }
            }
            check_recheck(join(&items))?;
        }
        Some("counting") => {
            let body = prompt_body(prompt, "Count ")?;
            let (letter, word) = body.split_once(" in ").ok_or("counting prompt has no ` in `")?;
            let letter = letter.chars().next().ok_or("no letter")?;
            let expected = word.chars().filter(|&c| c == letter).count();
            if expected.to_string() != answer {
                return Err(format!("`{word}` has {expected} `{letter}`, not {answer}"));
            }
            let tokens: Vec<&str> = reasoning.split(' ').collect();
            let chars: Vec<char> = word.chars().collect();
            if tokens.len() != chars.len() {
                return Err(format!("{} tokens for a word of {} letters", tokens.len(), chars.len()));
            }
            let mut running = 0;
            for (tok, ch) in tokens.iter().zip(chars) {
                let want = if ch == letter {
                    running += 1;
                    format!("{ch}{running}")
                } else {
                    ch.to_string()
                };
                if *tok != want {
                    return Err(format!("token `{tok}` should be `{want}`"));
                }
            }
            check_recheck(format!("{expected} {letter}"))?;
        }
        other => return Err(format!("not a synthetic task (category {other:?})")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_is_what_the_generator_writes() {
        let (steps, v) = arith_steps(vec![3, 4, 2], vec!['+', '*']);
        assert_eq!((steps.join(". "), v), ("4*2=8. 3+8=11".to_string(), 11));
        let (steps, v) = arith_steps(vec![3, 8, 2], vec!['-', '+']);
        assert_eq!((steps.join(". "), v), ("3-8=-5. -5+2=-3".to_string(), -3));
        let (tokens, c) = count_walk("bacab", 'a');
        assert_eq!((tokens.join(" "), c), ("b a1 c a2 b".to_string(), 2));
    }

    #[test]
    fn absurd_world_sizes_are_errors_not_aborts() {
        let d = TaskDomain::Arithmetic(ArithConfig::default());
        let err = task_world(&d, 1_000_000_000_000_000, 0, 1, ReasoningFormat::Plain).unwrap_err().to_string();
        assert!(err.contains("1000000000000000 examples") && err.contains("limit of 1000000"), "{err}");
        let err = task_world(&d, usize::MAX, 1, 1, ReasoningFormat::Plain).unwrap_err().to_string();
        assert!(err.contains("overflows"), "{err}");
        let err = task_world(&d, MAX_TASK_WORLD_EXAMPLES, 1, 1, ReasoningFormat::Plain).unwrap_err().to_string();
        assert!(err.contains(&format!("{} examples", MAX_TASK_WORLD_EXAMPLES + 1)), "{err}");
        assert_eq!(task_world(&d, 3, 2, 1, ReasoningFormat::Plain).unwrap().test.len(), 2);
    }

    #[test]
    fn answer_extraction_convention() {
        assert_eq!(extract_answer("4*2=8. 3+8=11. Answer: 11").as_deref(), Some("11"));
        assert_eq!(extract_answer("<think>Answer: 3</think> Answer: -4.\nbye").as_deref(), Some("-4"));
        assert_eq!(extract_answer("<think>Answer: 3</think> no idea"), None);
        assert_eq!(extract_answer("Answer:   "), None);
        assert_eq!(extract_answer("x Answer: 3 5 9").as_deref(), Some("3 5 9"));
    }

    #[test]
    fn verifier_catches_a_wrong_step() {
        let mut ex = Example::new("t", "Compute 3+4*2.", "synthetic/arithmetic");
        ex.category = Some("arithmetic".into());
        ex.answer = Some("11".into());
        ex.target = Some("4*2=8. 3+8=11. Answer: 11".into());
        assert_eq!(verify_task(&ex), Ok(()));
        ex.target = Some("4*2=9. 3+9=11. Answer: 11".into());
        assert_eq!(verify_task(&ex), Err("step `4*2=9` is wrong".into()));
        ex.target = Some("<think>4*2=8. 3+8=11.</think> Answer: 11".into());
        assert_eq!(verify_task(&ex), Ok(()));
        ex.target = Some("<think>4*2=8. 3+8=11. Wait, let me check: 3+8=11.</think> Answer: 11".into());
        assert_eq!(verify_task(&ex), Ok(()));
        ex.target = Some("<think>4*2=8. 3+8=11. Wait, let me check: 3+8=12.</think> Answer: 11".into());
        assert_eq!(verify_task(&ex), Err("re-check `3+8=12` should be `3+8=11`".into()));
    }

    /// Think-format traces: about a quarter end with the reflective re-check (drawn from their
    /// own stream, so the tasks are the plain world's), every one verifies, and plain traces
    /// never carry one.
    #[test]
    fn think_traces_recheck_a_seeded_quarter_and_leave_the_tasks_alone() {
        for d in [
            TaskDomain::Arithmetic(ArithConfig::default()),
            TaskDomain::Sorting(SortConfig::default()),
            TaskDomain::Counting(CountConfig::default()),
        ] {
            let think = generate_tasks(&d, 400, 7, ReasoningFormat::Think).unwrap();
            let plain = generate_tasks(&d, 400, 7, ReasoningFormat::Plain).unwrap();
            let with: Vec<&Example> = think.iter().filter(|e| e.target.as_deref().unwrap().contains(RECHECK)).collect();
            // Binomial(400, 0.25): mean 100, sd 8.7.
            assert!((70..=130).contains(&with.len()), "{}: {} re-checks", d.name(), with.len());
            assert!(plain.iter().all(|e| !e.target.as_deref().unwrap().contains("Wait")));
            for (t, p) in think.iter().zip(&plain) {
                assert_eq!((&t.prompt, &t.answer), (&p.prompt, &p.answer));
                assert_eq!(verify_task(t), Ok(()), "{t:?}");
            }
        }
        let mut ex = Example::new("c", "Count a in bacab.", "synthetic/counting");
        ex.category = Some("counting".into());
        ex.answer = Some("2".into());
        ex.target = Some("<think>b a1 c a2 b. Wait, let me check: 2 a.</think> Answer: 2".into());
        assert_eq!(verify_task(&ex), Ok(()));
    }

    #[test]
    fn too_small_space_is_an_error() {
        let d = TaskDomain::Sorting(SortConfig { min_len: 2, max_len: 2, max_value: 1 });
        let err = generate_tasks(&d, 10, 0, ReasoningFormat::Plain).unwrap_err().to_string();
        assert!(err.contains("found only 4 distinct sorting prompts"), "{err}");
        let bad = TaskDomain::Arithmetic(ArithConfig { operators: "/".into(), ..Default::default() });
        assert!(generate_tasks(&bad, 1, 0, ReasoningFormat::Plain).is_err());
    }
}
