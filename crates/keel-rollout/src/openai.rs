//! Wire types of the OpenAI `/v1/completions` and `/v1/chat/completions` APIs, shared by [`crate::RemoteClient`] and
//! [`crate::serve`] so that both ends agree by construction.
//!
//! Besides the OpenAI fields they carry the vLLM extensions Keel relies on (`top_k`, `min_p`,
//! `stop_token_ids`, `return_tokens_as_token_ids`, `return_token_ids`, choice `token_ids` /
//! `prompt_token_ids`) and one Keel extension (`logprobs.token_entropies`), which other servers
//! ignore or omit.

use serde::{Deserialize, Serialize};

use crate::error::{Result, RolloutError};
use crate::params::SamplingParams;

/// The `prompt` field: OpenAI accepts a string, a list of strings, a token-id list, or a list of
/// token-id lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    /// One text prompt.
    Text(String),
    /// Several text prompts.
    Texts(Vec<String>),
    /// One tokenised prompt.
    Ids(Vec<u32>),
    /// Several tokenised prompts.
    IdLists(Vec<Vec<u32>>),
}

impl PromptInput {
    /// Number of prompts in the field.
    pub fn len(&self) -> usize {
        match self {
            PromptInput::Text(_) | PromptInput::Ids(_) => 1,
            PromptInput::Texts(v) => v.len(),
            PromptInput::IdLists(v) => v.len(),
        }
    }

    /// True if the field holds no prompt.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `stop` field: one string or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StopInput {
    /// A single stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

/// Body of `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    /// Model name; a server serving another name answers 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The prompt(s).
    pub prompt: PromptInput,
    /// Completions per prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// Sampling temperature (OpenAI default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus mass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// vLLM extension; `-1` or `0` disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    /// vLLM extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// Token budget per completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// Stop string(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopInput>,
    /// vLLM extension: extra stop token ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_token_ids: Option<Vec<u32>>,
    /// Random seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Number of top log-probs per position; any value returns the sampled token's log-prob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    /// Echo the prompt (unsupported by the Keel server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    /// Streaming (unsupported by the Keel server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// vLLM extension: render `logprobs.tokens` as `"token_id:N"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_tokens_as_token_ids: Option<bool>,
    /// vLLM extension (≥ 0.10.2): add `token_ids` and `prompt_token_ids` to each choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_token_ids: Option<bool>,
}

impl CompletionRequest {
    /// The request Keel's client sends for `params`: every sampling field set, log-probs and token
    /// ids requested.
    pub fn from_params(model: &str, prompt: PromptInput, params: &SamplingParams) -> Self {
        CompletionRequest {
            model: Some(model.to_string()),
            prompt,
            n: Some(params.n),
            temperature: Some(params.temperature),
            top_p: Some(params.top_p),
            top_k: Some(if params.top_k == 0 {
                -1
            } else {
                params.top_k as i64
            }),
            min_p: Some(params.min_p),
            max_tokens: Some(params.max_new_tokens),
            stop: (!params.stop.is_empty()).then(|| StopInput::Many(params.stop.clone())),
            stop_token_ids: (!params.stop_token_ids.is_empty())
                .then(|| params.stop_token_ids.clone()),
            seed: Some(params.seed),
            logprobs: Some(1),
            echo: None,
            stream: None,
            return_tokens_as_token_ids: Some(true),
            return_token_ids: Some(true),
        }
    }

    /// Sampling parameters of the request, with the server's defaults for missing fields; validated.
    pub fn to_params(
        &self,
        default_max_tokens: usize,
        default_seed: u64,
    ) -> Result<SamplingParams> {
        let top_k = match self.top_k {
            None => 0,
            Some(k) if k <= 0 => 0,
            Some(k) => {
                usize::try_from(k).map_err(|_| RolloutError::invalid("top_k", "too large"))?
            }
        };
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            top_k,
            min_p: self.min_p.unwrap_or(0.0),
            max_new_tokens: self.max_tokens.unwrap_or(default_max_tokens),
            stop: match &self.stop {
                None => Vec::new(),
                Some(StopInput::One(s)) => vec![s.clone()],
                Some(StopInput::Many(v)) => v.clone(),
            },
            stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
            n: self.n.unwrap_or(1),
            seed: self.seed.unwrap_or(default_seed),
        };
        // Report errors under the wire names the client used.
        params.validate().map_err(|e| match e {
            RolloutError::InvalidParams {
                field: "max_new_tokens",
                message,
            } => RolloutError::InvalidParams {
                field: "max_tokens",
                message,
            },
            other => other,
        })?;
        Ok(params)
    }
}

/// Per-choice log-prob record (legacy completions format).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChoiceLogprobs {
    /// Token strings, or `"token_id:N"` with `return_tokens_as_token_ids`.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Log-probability of each token (`null` for echoed first prompt tokens).
    #[serde(default)]
    pub token_logprobs: Vec<Option<f64>>,
    /// Top alternatives per position; Keel's server sends `null`.
    #[serde(default)]
    pub top_logprobs: Option<serde_json::Value>,
    /// Character offset of each token in the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_offset: Option<Vec<usize>>,
    /// Keel extension: entropy of the policy distribution at each position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_entropies: Option<Vec<f64>>,
}

/// One completion in a response; `index = prompt_index * n + sample_index`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    /// Position in the flattened (prompt, sample) order.
    pub index: usize,
    /// Completion text.
    #[serde(default)]
    pub text: String,
    /// Token log-probs, when requested.
    #[serde(default)]
    pub logprobs: Option<ChoiceLogprobs>,
    /// `"stop"` or `"length"`.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// vLLM extension: generated token ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
    /// vLLM extension: prompt token ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
}

/// Token counts of a response.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens over all prompts (counted once per prompt).
    pub prompt_tokens: usize,
    /// Generated tokens over all choices.
    pub completion_tokens: usize,
    /// Sum of the two.
    pub total_tokens: usize,
}

/// Body of a successful `/v1/completions` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    /// Response id.
    #[serde(default)]
    pub id: String,
    /// Always `"text_completion"`.
    #[serde(default)]
    pub object: String,
    /// Unix time of creation.
    #[serde(default)]
    pub created: u64,
    /// Model name.
    #[serde(default)]
    pub model: String,
    /// Completions.
    pub choices: Vec<CompletionChoice>,
    /// Token counts.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// Body of `POST /v1/chat/completions`: a conversation the server renders with the served
/// model's chat template, so a client (a remote judge, an OpenAI SDK) need not know the template.
///
/// Only the fields Keel can honour are read; unknown fields are ignored as OpenAI servers do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    /// Model name; a server serving another name answers 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The conversation, roles `system`, `user` and `assistant`, content as a string.
    pub messages: Vec<keel_core::Message>,
    /// Completions per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// Sampling temperature (OpenAI default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus mass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// vLLM extension; `-1` or `0` disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    /// vLLM extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// Token budget of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// The newer OpenAI name for `max_tokens`; a request may give one or the other (or both, equal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<usize>,
    /// Stop string(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopInput>,
    /// Random seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Streaming (unsupported by the Keel server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Chat log-probs (unsupported by the Keel server's chat route; `/v1/completions` has them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
}

impl ChatCompletionRequest {
    /// Sampling parameters of the request, with the server's defaults for missing fields;
    /// validated exactly as a `/v1/completions` request with the same fields.
    pub fn to_params(
        &self,
        default_max_tokens: usize,
        default_seed: u64,
    ) -> Result<SamplingParams> {
        let max_tokens = match (self.max_tokens, self.max_completion_tokens) {
            (Some(a), Some(b)) if a != b => {
                return Err(RolloutError::invalid(
                    "max_tokens",
                    format!("max_tokens = {a} and max_completion_tokens = {b} disagree"),
                ))
            }
            (a, b) => a.or(b),
        };
        CompletionRequest {
            model: None,
            prompt: PromptInput::Texts(Vec::new()),
            n: self.n,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            max_tokens,
            stop: self.stop.clone(),
            stop_token_ids: None,
            seed: self.seed,
            logprobs: None,
            echo: None,
            stream: None,
            return_tokens_as_token_ids: None,
            return_token_ids: None,
        }
        .to_params(default_max_tokens, default_seed)
    }
}

/// One answer of a chat response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    /// Sample index (0 unless `n > 1`).
    pub index: usize,
    /// The assistant message.
    pub message: keel_core::Message,
    /// `"stop"` or `"length"`.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// Body of a successful `/v1/chat/completions` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    /// Response id.
    #[serde(default)]
    pub id: String,
    /// Always `"chat.completion"`.
    #[serde(default)]
    pub object: String,
    /// Unix time of creation.
    #[serde(default)]
    pub created: u64,
    /// Model name.
    #[serde(default)]
    pub model: String,
    /// Answers.
    pub choices: Vec<ChatChoice>,
    /// Token counts (the prompt is the rendered conversation).
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_forms_parse() {
        let p = |s: &str| serde_json::from_str::<PromptInput>(s).unwrap();
        assert_eq!(p(r#""hi""#), PromptInput::Text("hi".into()));
        assert_eq!(
            p(r#"["a","b"]"#),
            PromptInput::Texts(vec!["a".into(), "b".into()])
        );
        assert_eq!(p("[1,2]"), PromptInput::Ids(vec![1, 2]));
        assert_eq!(
            p("[[1],[2,3]]"),
            PromptInput::IdLists(vec![vec![1], vec![2, 3]])
        );
        assert!(serde_json::from_str::<PromptInput>("[-1]").is_err());
    }

    #[test]
    fn params_roundtrip_through_request() {
        let params = SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 5,
            min_p: 0.05,
            max_new_tokens: 12,
            stop: vec!["\n".into()],
            stop_token_ids: vec![3],
            n: 4,
            seed: 99,
        };
        let req = CompletionRequest::from_params("m", PromptInput::Text("x".into()), &params);
        let json = serde_json::to_string(&req).unwrap();
        let back: CompletionRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_params(1, 0).unwrap(), params);
        let minimal: CompletionRequest =
            serde_json::from_str(r#"{"prompt":"x","top_k":-1}"#).unwrap();
        let p = minimal.to_params(33, 5).unwrap();
        assert_eq!(
            (p.max_new_tokens, p.seed, p.top_k, p.n, p.temperature),
            (33, 5, 0, 1, 1.0)
        );
    }

    #[test]
    fn chat_request_parses_openai_bodies_and_maps_parameters() {
        let req: ChatCompletionRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"u","name":"x"}],
                "temperature":0,"top_p":0.5,"max_completion_tokens":7,"seed":3,"response_format":{"type":"text"}}"#,
        )
        .unwrap();
        assert_eq!(req.messages.len(), 2);
        assert_eq!(req.messages[0].role, keel_core::Role::System);
        assert_eq!(req.messages[1].content, "u");
        let p = req.to_params(99, 1).unwrap();
        assert_eq!(
            (p.temperature, p.top_p, p.max_new_tokens, p.seed, p.n),
            (0.0, 0.5, 7, 3, 1)
        );
        let both: ChatCompletionRequest =
            serde_json::from_str(r#"{"messages":[],"max_tokens":4,"max_completion_tokens":5}"#)
                .unwrap();
        assert!(both
            .to_params(9, 0)
            .unwrap_err()
            .to_string()
            .contains("disagree"));
        let bad_role = serde_json::from_str::<ChatCompletionRequest>(
            r#"{"messages":[{"role":"tool","content":"x"}]}"#,
        );
        assert!(bad_role.is_err());
        let minimal: ChatCompletionRequest =
            serde_json::from_str(r#"{"messages":[{"role":"user","content":"u"}]}"#).unwrap();
        assert_eq!(minimal.to_params(33, 5).unwrap().max_new_tokens, 33);
    }
}
