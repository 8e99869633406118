//! A client for OpenAI-compatible `/v1/chat/completions` endpoints (vLLM, SGLang, llama.cpp,
//! `keel serve`, hosted APIs) serving a judge model.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_core::Role;

use crate::judges::chat::{ChatBackend, ChatRequest};
use crate::SafetyError;

/// Settings of a [`RemoteChat`].
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteChatConfig {
    /// The endpoint: a base URL (`http://host:8000/v1`, to which `/chat/completions` is added) or
    /// the full `…/chat/completions` URL.
    pub url: String,
    /// The served model's name (the request's `model`; part of the cache key).
    pub model: String,
    /// The environment variable holding the API key, sent as `Authorization: Bearer …`; `None`
    /// sends no key (local servers). The key itself is read once and never logged or cached.
    pub api_key_env: Option<String>,
    /// Timeout of each request (connect + response).
    pub timeout: Duration,
    /// Retries after a timeout, a connection error, a 5xx or a 429 (0 = one attempt only).
    pub max_retries: u32,
    /// The wait before the first retry; it doubles at each further retry (capped at 30 s). A 429's
    /// `Retry-After` (seconds, up to 60) is honoured when longer.
    pub backoff: Duration,
    /// Requests in flight at once (a judge's `judge_all` uses this many threads).
    pub concurrency: usize,
    /// `max_tokens` of each request.
    pub max_tokens: usize,
}

impl RemoteChatConfig {
    /// Defaults for `url` and `model`: no key, 120 s timeout, 4 retries from 0.5 s, 4 in flight,
    /// 512 tokens.
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> Self {
        RemoteChatConfig {
            url: url.into(),
            model: model.into(),
            api_key_env: None,
            timeout: Duration::from_secs(120),
            max_retries: 4,
            backoff: Duration::from_millis(500),
            concurrency: 4,
            max_tokens: 512,
        }
    }

    /// The URL requests go to.
    pub fn chat_url(&self) -> String {
        let u = self.url.trim_end_matches('/');
        if u.ends_with("/chat/completions") {
            u.to_string()
        } else {
            format!("{u}/chat/completions")
        }
    }
}

/// An OpenAI-compatible chat endpoint as a [`ChatBackend`]: temperature 0, bounded concurrency,
/// retries with exponential backoff, per-request timeouts, and counters of what was sent.
pub struct RemoteChat {
    config: RemoteChatConfig,
    url: String,
    agent: ureq::Agent,
    api_key: Option<String>,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl std::fmt::Debug for RemoteChat {
    // By hand, so the API key can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteChat")
            .field("url", &self.url)
            .field("model", &self.config.model)
            .field("api_key_env", &self.config.api_key_env)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl RemoteChat {
    /// A client; reads the API key from `api_key_env` now, so a missing key fails before any
    /// request (the error names the variable, never a value).
    pub fn new(config: RemoteChatConfig) -> Result<Self, SafetyError> {
        let api_key = match &config.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.trim().is_empty() => Some(k.trim().to_string()),
                _ => {
                    return Err(SafetyError::Config(format!(
                        "the judge endpoint's API key variable `{var}` is not set (or empty) in the environment"
                    )))
                }
            },
            None => None,
        };
        let agent = ureq::AgentBuilder::new().timeout(config.timeout).build();
        Ok(RemoteChat { url: config.chat_url(), config, agent, api_key, requests: AtomicU64::new(0), retries: AtomicU64::new(0) })
    }

    /// The settings.
    pub fn config(&self) -> &RemoteChatConfig {
        &self.config
    }

    fn body(&self, request: &ChatRequest) -> serde_json::Value {
        let messages: Vec<serde_json::Value> = request
            .messages()
            .into_iter()
            .map(|m| {
                let role = match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                serde_json::json!({"role": role, "content": m.content})
            })
            .collect();
        serde_json::json!({
            "model": self.config.model,
            "messages": messages,
            "temperature": 0.0,
            "max_tokens": self.config.max_tokens,
        })
    }

    fn fail(&self, message: String) -> SafetyError {
        SafetyError::Endpoint { judge: String::new(), url: self.url.clone(), message }
    }

    /// The wait before retry number `retry` (0-based), or the server's `Retry-After`.
    fn wait(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self.config.backoff.saturating_mul(1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX));
        let exp = exp.min(Duration::from_secs(30));
        retry_after.map_or(exp, |r| r.min(Duration::from_secs(60)).max(exp))
    }
}

/// The assistant text of a chat completion response (`choices[0].message.content`; a `null`
/// content, as some servers send for an empty answer, is the empty string).
fn content_of(body: &serde_json::Value) -> Option<String> {
    let message = body.get("choices")?.get(0)?.get("message")?;
    match message.get("content")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => Some(String::new()),
        _ => None,
    }
}

impl ChatBackend for RemoteChat {
    fn identity(&self) -> serde_json::Value {
        serde_json::json!({"backend": "chat_completions", "model": self.config.model, "max_tokens": self.config.max_tokens, "temperature": 0})
    }

    fn model(&self) -> &str {
        &self.config.model
    }

    fn complete(&self, request: &ChatRequest) -> Result<String, SafetyError> {
        let body = self.body(request).to_string();
        let mut attempt: u32 = 0;
        loop {
            let mut req = self.agent.post(&self.url).set("Content-Type", "application/json");
            if let Some(k) = &self.api_key {
                req = req.set("Authorization", &format!("Bearer {k}"));
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let (why, retry_after) = match req.send_string(&body) {
                Ok(resp) => {
                    let text = resp.into_string().map_err(|e| self.fail(format!("reading the response: {e}")))?;
                    let v: serde_json::Value =
                        serde_json::from_str(&text).map_err(|e| self.fail(format!("the response is not JSON: {e}")))?;
                    return content_of(&v).ok_or_else(|| {
                        let shown: String = v.to_string().chars().take(300).collect();
                        self.fail(format!("no choices[0].message.content in the response: {shown}"))
                    });
                }
                Err(ureq::Error::Status(code, resp)) if code == 429 || code >= 500 => {
                    let after = resp.header("Retry-After").and_then(|s| s.trim().parse::<u64>().ok()).map(Duration::from_secs);
                    (format!("HTTP {code}"), after)
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text: String = resp.into_string().unwrap_or_default().chars().take(300).collect();
                    return Err(self.fail(format!("HTTP {code}: {text}")));
                }
                Err(ureq::Error::Transport(t)) => (format!("{t}"), None),
            };
            if attempt >= self.config.max_retries {
                return Err(self.fail(format!("{why} (after {} attempts)", attempt + 1)));
            }
            std::thread::sleep(self.wait(attempt, retry_after));
            self.retries.fetch_add(1, Ordering::Relaxed);
            attempt += 1;
        }
    }

    fn concurrency(&self) -> usize {
        self.config.concurrency.max(1)
    }

    fn transport_stats(&self) -> (u64, u64) {
        (self.requests.load(Ordering::Relaxed), self.retries.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_backoff() {
        let mut c = RemoteChatConfig::new("http://127.0.0.1:8000/v1/", "m");
        assert_eq!(c.chat_url(), "http://127.0.0.1:8000/v1/chat/completions");
        c.url = "http://h/v1/chat/completions".into();
        assert_eq!(c.chat_url(), "http://h/v1/chat/completions");
        let r = RemoteChat::new(RemoteChatConfig { backoff: Duration::from_millis(500), ..c }).unwrap();
        assert_eq!(r.wait(0, None), Duration::from_millis(500));
        assert_eq!(r.wait(1, None), Duration::from_millis(1000));
        assert_eq!(r.wait(3, None), Duration::from_millis(4000));
        assert_eq!(r.wait(20, None), Duration::from_secs(30), "capped");
        assert_eq!(r.wait(0, Some(Duration::from_secs(3))), Duration::from_secs(3), "Retry-After honoured");
        assert_eq!(r.wait(0, Some(Duration::from_secs(600))), Duration::from_secs(60), "Retry-After capped");
    }

    #[test]
    fn a_missing_key_variable_is_named_and_debug_hides_the_key() {
        let var = "KEEL_TEST_JUDGE_KEY_THAT_IS_NOT_SET";
        let c = RemoteChatConfig { api_key_env: Some(var.into()), ..RemoteChatConfig::new("http://h/v1", "m") };
        let e = RemoteChat::new(c).unwrap_err().to_string();
        assert!(e.contains(var), "{e}");
        let path_var = "PATH"; // set in every test environment
        let c = RemoteChatConfig { api_key_env: Some(path_var.into()), ..RemoteChatConfig::new("http://h/v1", "m") };
        let r = RemoteChat::new(c).unwrap();
        let shown = format!("{r:?}");
        let path = std::env::var(path_var).unwrap();
        assert!(!shown.contains(&path) && shown.contains("<set>"), "{shown}");
    }

    #[test]
    fn content_is_read_from_the_first_choice() {
        let v = serde_json::json!({"choices": [{"message": {"role": "assistant", "content": "safe"}}]});
        assert_eq!(content_of(&v).as_deref(), Some("safe"));
        let v = serde_json::json!({"choices": [{"message": {"role": "assistant", "content": null}}]});
        assert_eq!(content_of(&v).as_deref(), Some(""));
        assert_eq!(content_of(&serde_json::json!({"error": "x"})), None);
    }
}
