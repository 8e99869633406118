//! The math verifier as Python functions.
//!
//! `math_verify` scores with keel-rewards' `MathReward`, the very reward the pipeline's
//! `{kind: answer}` component uses, so a TRL run and a Keel run give the same completion the same
//! reward: extraction by the chosen convention (after `</think>` by default), LaTeX-aware
//! equivalence, a deadline per check and a 0 for an answer that cannot be verified in time.

use keel_core::{Completion, Example, FinishReason};
use keel_rewards::{AnswerFormat, MathReward, MathVerifier, OnVerifyError, Reward, RewardError};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::{guard, VerifyError};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(math_verify, m)?)?;
    m.add_function(wrap_pyfunction!(extract_answer, m)?)?;
    m.add_function(wrap_pyfunction!(answers_equivalent, m)?)?;
    m.add("ANSWER_FORMATS", ANSWER_FORMATS.to_vec())?;
    Ok(())
}

/// The names `format=` accepts: keel-rewards' `AnswerFormat` in its serialised (pipeline YAML)
/// spelling.
const ANSWER_FORMATS: &[&str] = &["gsm8k_strict", "gsm8k_flexible", "boxed", "answer_line", "auto"];

/// Parses a format name with the same serde names the pipeline YAML uses.
pub(crate) fn answer_format(name: &str) -> PyResult<AnswerFormat> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| PyValueError::new_err(format!("unknown answer format `{name}`; use one of: {}", ANSWER_FORMATS.join(", "))))
}

/// A completion record holding only text: the math reward reads nothing else.
fn completion(text: String) -> Completion {
    Completion { text, token_ids: Vec::new(), logprobs: Vec::new(), entropies: Vec::new(), finish: FinishReason::Stop, policy_version: 0 }
}

/// Scores completions against gold answers: 1.0 when the answer extracted from completion i is
/// equivalent to answers[i], else 0.0; None where answers[i] is None (nothing to verify against).
/// `on_error`: "zero" (default, as in training: an answer that cannot be checked in time is not
/// verifiably correct) or "raise" (`VerifyError`).
#[pyfunction]
#[pyo3(signature = (completions, answers, format="auto", answer_after_think=true, on_error="zero"))]
fn math_verify(
    py: Python<'_>,
    completions: Vec<String>,
    answers: Vec<Option<String>>,
    format: &str,
    answer_after_think: bool,
    on_error: &str,
) -> PyResult<Vec<Option<f64>>> {
    guard(|| {
        if completions.len() != answers.len() {
            return Err(PyValueError::new_err(format!(
                "{} completions but {} answers: pass one gold answer per completion",
                completions.len(),
                answers.len()
            )));
        }
        let policy = match on_error {
            "zero" => OnVerifyError::Zero,
            "raise" => OnVerifyError::Error,
            other => return Err(PyValueError::new_err(format!("on_error must be \"zero\" or \"raise\", not {other:?}"))),
        };
        let reward = MathReward::new(answer_format(format)?).answer_after_think(answer_after_think).on_verify_error(policy);
        let scored: Result<Vec<Option<f64>>, RewardError> = py.detach(|| {
            completions
                .into_iter()
                .zip(answers)
                .enumerate()
                .map(|(i, (text, gold))| match gold {
                    None => Ok(None),
                    Some(gold) => {
                        let example = Example { answer: Some(gold), ..Example::new(format!("#{i}"), "", "python") };
                        reward.score(&example, &completion(text)).map(Some)
                    }
                })
                .collect()
        });
        scored.map_err(|e| VerifyError::new_err(e.to_string()))
    })
}

/// The final answer found in `text` by the given convention, or None.
#[pyfunction]
#[pyo3(signature = (text, format="auto"))]
fn extract_answer(text: &str, format: &str) -> PyResult<Option<String>> {
    guard(|| {
        let format = answer_format(format)?;
        MathVerifier::default().extract(format, text).map_err(|e| VerifyError::new_err(e.to_string()))
    })
}

/// Whether two answers denote the same value (after LaTeX normalisation, numerically within
/// tolerance, element-wise for tuples and intervals, or as expressions).
#[pyfunction]
fn answers_equivalent(predicted: &str, gold: &str) -> PyResult<bool> {
    guard(|| MathVerifier::default().equivalent(predicted, gold).map_err(|e| VerifyError::new_err(e.to_string())))
}
