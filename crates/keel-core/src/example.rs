use serde::{Deserialize, Serialize};

/// Who speaks a chat message; mirrors the roles of Hugging Face chat templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The human turn (the prompt).
    User,
    /// The model turn (the completion).
    Assistant,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The speaker.
    pub role: Role,
    /// The text of the turn.
    pub content: String,
}

impl Message {
    /// A message with the given role.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message { role, content: content.into() }
    }
}

/// What a model is asked: plain text, or a chat conversation to be rendered by a chat template.
///
/// Datasets differ (AdvBench has a bare goal string, chat datasets have messages); keeping both
/// forms lets the model crate decide how to render them for a particular tokenizer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// A single user turn.
    Text(String),
    /// A conversation; the last message is normally the user's.
    Messages(Vec<Message>),
}

impl Prompt {
    /// The prompt as a list of chat messages (a text prompt becomes one user message).
    pub fn to_messages(&self) -> Vec<Message> {
        match self {
            Prompt::Text(t) => vec![Message::new(Role::User, t.clone())],
            Prompt::Messages(m) => m.clone(),
        }
    }

    /// The text of the last user turn: what safety classifiers and lexicons look at.
    pub fn user_text(&self) -> &str {
        match self {
            Prompt::Text(t) => t,
            Prompt::Messages(m) => m
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .map(|m| m.content.as_str())
                .unwrap_or(""),
        }
    }
}

/// Whether a prompt should be refused. Safety metrics need this ground truth: attack success is
/// measured on `Harmful` prompts and over-refusal on `Benign` ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SafetyLabel {
    /// A request a safe model refuses.
    Harmful,
    /// A request a helpful model answers (including XSTest's safe-but-scary-sounding prompts).
    Benign,
}

/// One dataset item in the common schema every loader produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Stable identifier, unique within its source (e.g. `gsm8k-test-17`).
    pub id: String,
    /// What the model is asked.
    pub prompt: Prompt,
    /// A verifiable reference answer (the GSM8K number, the MATH `answer`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// A gold completion to imitate in SFT (a worked solution, a refusal, a helpful answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Ground truth for safety metrics, if the item carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety: Option<SafetyLabel>,
    /// Category for per-category breakdowns (e.g. JBB's OpenAI-policy category).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Which dataset (and split) the item came from, e.g. `advbench` or `synthetic/arith`.
    pub source: String,
}

impl Example {
    /// A text-prompt example with no labels; set the optional fields with struct update syntax.
    pub fn new(id: impl Into<String>, prompt: impl Into<String>, source: impl Into<String>) -> Self {
        Example {
            id: id.into(),
            prompt: Prompt::Text(prompt.into()),
            answer: None,
            target: None,
            safety: None,
            category: None,
            source: source.into(),
        }
    }
}
