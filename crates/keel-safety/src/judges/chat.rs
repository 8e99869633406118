//! Model judges over a chat backend: a prompt format, a parser, a backend and a verdict cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use keel_core::{Message, Role};

use crate::judges::cache::{CacheKey, VerdictCache};
use crate::judges::harmbench::{parse_harmbench, render_harmbench, HarmbenchVariant};
use crate::judges::strongreject::{parse_strongreject, render_strongreject, STRONGREJECT_SYSTEM_PROMPT};
use crate::judges::{Judge, JudgeInput, JudgeKind, JudgeOutcome, JudgeStats, Judgement};
use crate::{parse_guard_output, GuardVerdict, SafetyError};

/// What a judge model is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatRequest {
    /// Chat messages (rendered by the backend's chat template).
    Messages(Vec<Message>),
    /// A prompt that carries its own wrapping (HarmBench's `[INST] … [/INST]`): a local model reads
    /// it as is; a chat endpoint receives it as the one user message.
    Raw(String),
}

impl ChatRequest {
    /// The request as chat messages (a raw prompt becomes one user message).
    pub fn messages(&self) -> Vec<Message> {
        match self {
            ChatRequest::Messages(m) => m.clone(),
            ChatRequest::Raw(t) => vec![Message::new(Role::User, t.clone())],
        }
    }
}

/// Something that answers a [`ChatRequest`] with text: a remote endpoint ([`crate::judges::RemoteChat`])
/// or a local decoder ([`crate::judges::LocalChat`]). Deterministic (greedy, temperature 0), so
/// answers can be cached.
pub trait ChatBackend: Send + Sync {
    /// What about the backend can change an answer (the model, the token budget), as JSON; part
    /// of every cache key. Never the address or the key of an endpoint.
    fn identity(&self) -> serde_json::Value;

    /// The model's name for cache entries and messages.
    fn model(&self) -> &str;

    /// Answers one request.
    fn complete(&self, request: &ChatRequest) -> Result<String, SafetyError>;

    /// How many requests may be in flight at once.
    fn concurrency(&self) -> usize {
        1
    }

    /// HTTP requests sent and retried so far (zero for local backends).
    fn transport_stats(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// A judge's prompt format and output parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFormat {
    /// The StrongREJECT rubric: system prompt + rubric user prompt, parsed to refusal,
    /// convincingness, specificity and score.
    Strongreject,
    /// HarmBench's classifier prompt, yes/no.
    Harmbench(HarmbenchVariant),
    /// Llama Guard 3 over a chat endpoint: the conversation as messages (the server's Llama Guard
    /// chat template renders the task), `safe` / `unsafe` + categories.
    LlamaGuard,
}

impl ChatFormat {
    /// The judge kind this format implements.
    pub fn kind(self) -> JudgeKind {
        match self {
            ChatFormat::Strongreject => JudgeKind::Strongreject,
            ChatFormat::Harmbench(_) => JudgeKind::Harmbench,
            ChatFormat::LlamaGuard => JudgeKind::LlamaGuard,
        }
    }

    /// The request for one pair.
    pub fn request(self, input: &JudgeInput<'_>) -> ChatRequest {
        match self {
            ChatFormat::Strongreject => ChatRequest::Messages(vec![
                Message::new(Role::System, STRONGREJECT_SYSTEM_PROMPT),
                Message::new(Role::User, render_strongreject(input.prompt, input.response)),
            ]),
            ChatFormat::Harmbench(v) => ChatRequest::Raw(render_harmbench(v, input.prompt, input.response)),
            ChatFormat::LlamaGuard => ChatRequest::Messages(vec![
                Message::new(Role::User, input.prompt),
                Message::new(Role::Assistant, input.response),
            ]),
        }
    }

    /// Reads the judge model's answer.
    pub fn parse(self, raw: &str) -> JudgeOutcome {
        let judged = match self {
            ChatFormat::Strongreject => parse_strongreject(raw).map(|s| s.judgement()),
            ChatFormat::Harmbench(_) => parse_harmbench(raw).map(Judgement::binary),
            ChatFormat::LlamaGuard => match parse_guard_output(raw) {
                GuardVerdict::Safe => Some(Judgement::binary(false)),
                GuardVerdict::Unsafe(cats) => {
                    let mut j = Judgement::binary(true);
                    j.category = (!cats.is_empty()).then(|| cats.join(","));
                    Some(j)
                }
                GuardVerdict::Unparsed => None,
            },
        };
        judged.map_or_else(|| JudgeOutcome::Unparsed { raw: raw.to_string() }, JudgeOutcome::Judged)
    }

    /// What about the format can change an answer: its name and the sha256 of its prompt template,
    /// so an edited template never reuses old answers.
    pub fn identity(self) -> serde_json::Value {
        let template_sha = |t: &str| keel_core::sha256_bytes(t.as_bytes());
        match self {
            ChatFormat::Strongreject => serde_json::json!({
                "format": "strongreject_rubric",
                "template": template_sha(&format!("{STRONGREJECT_SYSTEM_PROMPT}\u{0}{}", crate::judges::strongreject::STRONGREJECT_RUBRIC_TEMPLATE)),
            }),
            ChatFormat::Harmbench(v) => serde_json::json!({"format": format!("harmbench_{}", v.as_str()), "template": template_sha(v.template())}),
            ChatFormat::LlamaGuard => serde_json::json!({"format": "llama_guard_chat"}),
        }
    }
}

/// A model judge: a [`ChatFormat`] over a [`ChatBackend`], with an optional [`VerdictCache`]
/// consulted before every call.
pub struct ChatJudge {
    name: String,
    format: ChatFormat,
    backend: Arc<dyn ChatBackend>,
    cache: Option<VerdictCache>,
    cache_hits: AtomicU64,
    model_calls: AtomicU64,
}

impl std::fmt::Debug for ChatJudge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatJudge")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("model", &self.backend.model())
            .field("cache", &self.cache.as_ref().map(|c| c.dir().to_path_buf()))
            .finish()
    }
}

impl ChatJudge {
    /// A judge named after its kind, without a cache.
    pub fn new(format: ChatFormat, backend: Arc<dyn ChatBackend>) -> Self {
        ChatJudge {
            name: format.kind().as_str().to_string(),
            format,
            backend,
            cache: None,
            cache_hits: AtomicU64::new(0),
            model_calls: AtomicU64::new(0),
        }
    }

    /// Renames the judge (the key of its metrics; not part of the cache key).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Consults and fills `cache`.
    pub fn with_cache(mut self, cache: VerdictCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The cache key of a pair under this judge.
    pub fn cache_key(&self, input: &JudgeInput<'_>) -> CacheKey {
        let config = serde_json::json!({"format": self.format.identity(), "backend": self.backend.identity()});
        CacheKey::new(self.format.kind().as_str(), &config, input.prompt, input.response)
    }

    fn cached(&self, key: &CacheKey) -> Result<Option<String>, SafetyError> {
        match &self.cache {
            Some(c) => {
                let hit = c.get(key)?;
                if hit.is_some() {
                    self.cache_hits.fetch_add(1, Ordering::Relaxed);
                }
                Ok(hit)
            }
            None => Ok(None),
        }
    }

    fn ask(&self, key: &CacheKey, input: &JudgeInput<'_>) -> Result<String, SafetyError> {
        let raw = self.backend.complete(&self.format.request(input)).map_err(|e| match e {
            SafetyError::Endpoint { url, message, .. } => SafetyError::Endpoint { judge: self.name.clone(), url, message },
            other => other,
        })?;
        self.model_calls.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = &self.cache {
            c.put(key, self.format.kind().as_str(), self.backend.model(), &raw)?;
        }
        Ok(raw)
    }
}

impl Judge for ChatJudge {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> JudgeKind {
        self.format.kind()
    }

    fn judge(&self, input: &JudgeInput<'_>) -> Result<JudgeOutcome, SafetyError> {
        let key = self.cache_key(input);
        let raw = match self.cached(&key)? {
            Some(raw) => raw,
            None => self.ask(&key, input)?,
        };
        Ok(self.format.parse(&raw))
    }

    /// Each distinct pair is looked up once; the misses go to the backend from up to
    /// [`ChatBackend::concurrency`] threads, each answer cached as soon as it arrives (a run
    /// killed half-way keeps what it paid for). The first error stops the remaining work.
    fn judge_all(&self, inputs: &[JudgeInput<'_>]) -> Result<Vec<JudgeOutcome>, SafetyError> {
        let keys: Vec<CacheKey> = inputs.iter().map(|i| self.cache_key(i)).collect();
        let mut raw: HashMap<&CacheKey, String> = HashMap::new();
        let mut todo: Vec<usize> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            if raw.contains_key(k) || todo.iter().any(|&j| keys[j] == *k) {
                continue;
            }
            match self.cached(k)? {
                Some(r) => {
                    raw.insert(k, r);
                }
                None => todo.push(i),
            }
        }
        let workers = self.backend.concurrency().clamp(1, todo.len().max(1));
        let next = AtomicUsize::new(0);
        let answers: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::with_capacity(todo.len()));
        let failure: Mutex<Option<SafetyError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                        return;
                    }
                    let t = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = todo.get(t) else { return };
                    match self.ask(&keys[i], &inputs[i]) {
                        Ok(r) => {
                            if let Ok(mut a) = answers.lock() {
                                a.push((i, r));
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().unwrap_or(None) {
            return Err(e);
        }
        let answers = answers.into_inner().map_err(|_| SafetyError::Classifier {
            classifier: self.name.clone(),
            message: "a judge thread panicked".into(),
        })?;
        if answers.len() != todo.len() {
            return Err(SafetyError::Classifier { classifier: self.name.clone(), message: "a judge thread panicked".into() });
        }
        for (i, r) in answers {
            raw.insert(&keys[i], r);
        }
        Ok(keys.iter().map(|k| self.format.parse(&raw[k])).collect())
    }

    fn stats(&self) -> JudgeStats {
        let (requests, retries) = self.backend.transport_stats();
        JudgeStats {
            requests,
            retries,
            model_calls: self.model_calls.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
        }
    }
}
