//! Synthetic worlds for from-scratch experiments that run on a CPU in minutes.
//!
//! Two kinds of world, both generated deterministically from a seed:
//!
//! - [`tasks`]: verifiable reasoning tasks (arithmetic, sorting, counting) with a short chain of
//!   thought and a checkable `Answer: N` line, the capability side of a safety-vs-capability run;
//! - [`safety`]: harmful prompts paired with refusals and benign prompts with helpful answers, so
//!   a tiny model can learn a guardrail that later fine-tuning may erode, with held-out prompts
//!   to measure the erosion.
//!
//! Both can render their gold completions as plain text or with the reasoning inside
//! `<think>…</think>` ([`ReasoningFormat`]), the format reasoning-model experiments need.

pub mod safety;
pub mod tasks;

use serde::{Deserialize, Serialize};

/// How a gold completion lays out its reasoning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningFormat {
    /// Reasoning then the answer on the same line: `4*2=8. 3+8=11. Answer: 11`. Safety-world
    /// completions carry no reasoning in this format: just the refusal or the answer.
    #[default]
    Plain,
    /// Reasoning inside think tags, then the answer: `<think>4*2=8. 3+8=11.</think> Answer: 11`.
    Think,
}

impl ReasoningFormat {
    /// Joins `reasoning` and the final `answer` text in this format.
    pub fn render(self, reasoning: &str, answer: &str) -> String {
        match self {
            ReasoningFormat::Plain if reasoning.is_empty() => answer.to_string(),
            ReasoningFormat::Plain => format!("{reasoning} {answer}"),
            ReasoningFormat::Think => format!("<think>{reasoning}</think> {answer}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(ReasoningFormat::Plain.render("a.", "Answer: 1"), "a. Answer: 1");
        assert_eq!(ReasoningFormat::Plain.render("", "No."), "No.");
        assert_eq!(ReasoningFormat::Think.render("a.", "Answer: 1"), "<think>a.</think> Answer: 1");
    }
}
