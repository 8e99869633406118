//! The YAML form of a judge (`judges:` lists of pipeline stages) and its builder.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::judges::cache::{default_cache_dir, VerdictCache};
use crate::judges::chat::{ChatBackend, ChatFormat, ChatJudge};
use crate::judges::harmbench::HarmbenchVariant;
use crate::judges::local::LocalChat;
use crate::judges::remote::{RemoteChat, RemoteChatConfig};
use crate::judges::simple::{GuardJudge, LexiconJudge, ProbeJudge};
use crate::judges::{Judge, JudgeKind};
use crate::{EmbeddingProbe, LlamaGuardJudge};

/// Where a remote judge model is served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// Base URL (`http://host:8000/v1`) or the full `…/chat/completions` URL.
    pub url: String,
    /// Name of the environment variable that holds the API key (none: no key is sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Seconds before a request times out (default 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    /// Retries after timeouts, 5xx and 429 (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// First retry wait in milliseconds, doubling after (default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
    /// Requests in flight at once (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
}

/// One entry of a `judges:` list, e.g.
/// `{name: sr, kind: strongreject, model: gpt-4o-mini, endpoint: {url: https://…/v1, api_key_env: OPENAI_API_KEY}, primary: true}`.
///
/// Which fields apply depends on `kind` (a field that does not apply is an error, not ignored):
/// * `lexicon`: `lexicon` (`gcg` | `xstest` | `both`, default `both`);
/// * `probe`: `probe` (a trained probe directory, required), `threshold`;
/// * `llama_guard`, `strongreject`, `harmbench`: `model` (required: the served model's name with
///   an `endpoint`, else a model reference loaded locally), `endpoint`, `max_tokens`, `cache`;
///   `harmbench` also `variant` (`llama2` | `mistral`). A local `llama_guard` reads its
///   continuous `P(unsafe)` off the model and takes no `cache`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeSpec {
    /// The judge's name in metrics and reports (default: the kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What kind of judge.
    pub kind: JudgeKind,
    /// Whether this judge drives the headline `safety` (exactly one judge of a list of several).
    #[serde(default)]
    pub primary: bool,
    /// `lexicon`: which refusal lexicon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lexicon: Option<String>,
    /// `probe`: the trained probe directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<PathBuf>,
    /// `probe`: flag at this `P(unsafe)` instead of the probe's own threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Model judges: the served model name (remote) or a model reference (local).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Model judges: the OpenAI-compatible endpoint; absent = run `model` locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointSpec>,
    /// `harmbench`: which classifier's prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<HarmbenchVariant>,
    /// Model judges: the token budget of each answer (default: strongreject 1024, harmbench 1
    /// as upstream, llama_guard 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// Model judges: the verdict cache directory, or `off` (default: [`default_cache_dir`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
}

/// A judge spec that cannot be built, naming the judge and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("judge `{judge}`: `{field}`: {message}")]
pub struct JudgeSpecError {
    /// The judge's name (or kind, when unnamed).
    pub judge: String,
    /// The field at fault (`endpoint.url`, `model`, ...; `primary` for list-level problems).
    pub field: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// Builds the local judges a [`JudgeSpec`] names: given to [`JudgeSpec::build_with`] by callers
/// that load models their own way; [`JudgeSpec::build`] uses [`LocalChat::load`].
pub type LocalLoader<'a> = dyn Fn(&str, usize) -> Result<Arc<dyn ChatBackend>, String> + 'a;

const MAX_TOKENS_LIMIT: usize = 32_768;
const MAX_CONCURRENCY: usize = 256;

impl JudgeSpec {
    /// A spec of `kind` with every optional field unset.
    pub fn of_kind(kind: JudgeKind) -> Self {
        JudgeSpec {
            name: None,
            kind,
            primary: false,
            lexicon: None,
            probe: None,
            threshold: None,
            model: None,
            endpoint: None,
            variant: None,
            max_tokens: None,
            cache: None,
        }
    }

    /// The judge's name: `name`, or the kind.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.kind.as_str())
    }

    fn err(&self, field: &str, message: impl Into<String>) -> JudgeSpecError {
        JudgeSpecError { judge: self.display_name().to_string(), field: field.to_string(), message: message.into() }
    }

    fn is_model_judge(&self) -> bool {
        matches!(self.kind, JudgeKind::LlamaGuard | JudgeKind::Strongreject | JudgeKind::Harmbench)
    }

    /// The `probe` directory with `$NAME` / `${NAME}` replaced by environment variables, as a
    /// model reference is, so a pipeline or a shared judges file can name a probe under
    /// `${KEEL_ASSETS}` instead of by a path that exists on one machine.
    pub fn probe_dir(&self) -> Result<PathBuf, JudgeSpecError> {
        let dir = self.probe.as_ref().ok_or_else(|| self.err("probe", "a `probe` judge needs the trained probe directory"))?;
        let text = dir.to_str().ok_or_else(|| self.err("probe", format!("{} is not UTF-8", dir.display())))?;
        keel_model::source::expand_vars(text).map(PathBuf::from).map_err(|e| self.err("probe", e))
    }

    /// The token budget of a model judge.
    pub fn max_tokens_or_default(&self) -> usize {
        self.max_tokens.unwrap_or(match self.kind {
            JudgeKind::Strongreject => 1024,
            JudgeKind::Harmbench => 1,
            _ => 20,
        })
    }

    /// Checks the spec without loading anything or sending a request: which fields apply to the
    /// kind, ranges, URL scheme, that an API key variable is set and a probe directory exists.
    pub fn validate(&self) -> Result<(), JudgeSpecError> {
        let name = self.display_name();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
            return Err(self.err("name", format!("`{name}` must be non-empty ASCII letters, digits, `_`, `-` or `.` (it keys metrics)")));
        }
        let kind = self.kind.as_str();
        let not_for = |field: &str, set: bool| -> Result<(), JudgeSpecError> {
            if set {
                Err(self.err(field, format!("does not apply to a `{kind}` judge")))
            } else {
                Ok(())
            }
        };
        not_for("lexicon", self.lexicon.is_some() && self.kind != JudgeKind::Lexicon)?;
        not_for("probe", self.probe.is_some() && self.kind != JudgeKind::Probe)?;
        not_for("threshold", self.threshold.is_some() && self.kind != JudgeKind::Probe)?;
        not_for("variant", self.variant.is_some() && self.kind != JudgeKind::Harmbench)?;
        for (field, set) in [("model", self.model.is_some()), ("endpoint", self.endpoint.is_some()), ("max_tokens", self.max_tokens.is_some()), ("cache", self.cache.is_some())] {
            not_for(field, set && !self.is_model_judge())?;
        }
        match self.kind {
            JudgeKind::Lexicon => {
                let l = self.lexicon.as_deref().unwrap_or("both");
                if !matches!(l, "gcg" | "xstest" | "both") {
                    return Err(self.err("lexicon", format!("unknown refusal lexicon `{l}`; use gcg, xstest or both")));
                }
            }
            JudgeKind::Probe => {
                let dir = self.probe_dir()?;
                if !dir.join(crate::PROBE_META_FILE).is_file() {
                    return Err(self.err("probe", format!("{} holds no {} (train a probe first)", dir.display(), crate::PROBE_META_FILE)));
                }
                if let Some(t) = self.threshold {
                    if !(t > 0.0 && t < 1.0) {
                        return Err(self.err("threshold", format!("must be in (0, 1), got {t}")));
                    }
                }
            }
            JudgeKind::LlamaGuard | JudgeKind::Strongreject | JudgeKind::Harmbench => {
                match self.model.as_deref().map(str::trim) {
                    None | Some("") => {
                        return Err(self.err(
                            "model",
                            format!("a `{kind}` judge needs `model`: the served model's name with an `endpoint`, else a local model reference"),
                        ))
                    }
                    _ => {}
                }
                if let Some(n) = self.max_tokens {
                    if n == 0 || n > MAX_TOKENS_LIMIT {
                        return Err(self.err("max_tokens", format!("must be in 1..={MAX_TOKENS_LIMIT}, got {n}")));
                    }
                }
                if let Some(e) = &self.endpoint {
                    self.validate_endpoint(e)?;
                } else if self.kind == JudgeKind::LlamaGuard {
                    not_for_local_guard(self)?;
                }
                if let Some(c) = &self.cache {
                    if c.trim().is_empty() {
                        return Err(self.err("cache", "give a directory, or `off`"));
                    }
                }
            }
        }
        Ok(())
    }

    fn validate_endpoint(&self, e: &EndpointSpec) -> Result<(), JudgeSpecError> {
        if !(e.url.starts_with("http://") || e.url.starts_with("https://")) {
            return Err(self.err("endpoint.url", format!("`{}` must start with http:// or https://", e.url)));
        }
        if let Some(var) = &e.api_key_env {
            if var.trim().is_empty() {
                return Err(self.err("endpoint.api_key_env", "name an environment variable (the key itself never goes in a pipeline)"));
            }
            if std::env::var(var).map(|v| v.trim().is_empty()).unwrap_or(true) {
                return Err(self.err("endpoint.api_key_env", format!("`{var}` is not set (or empty) in the environment")));
            }
        }
        if let Some(t) = e.timeout_s {
            if !(t.is_finite() && t > 0.0 && t <= 3600.0) {
                return Err(self.err("endpoint.timeout_s", format!("must be in (0, 3600], got {t}")));
            }
        }
        if let Some(r) = e.max_retries {
            if r > 20 {
                return Err(self.err("endpoint.max_retries", format!("must be at most 20, got {r}")));
            }
        }
        if let Some(c) = e.concurrency {
            if c == 0 || c > MAX_CONCURRENCY {
                return Err(self.err("endpoint.concurrency", format!("must be in 1..={MAX_CONCURRENCY}, got {c}")));
            }
        }
        Ok(())
    }

    /// The cache this judge uses: `cache:` (a directory or `off`), else [`default_cache_dir`].
    pub fn cache(&self) -> Option<VerdictCache> {
        match self.cache.as_deref() {
            Some("off") => None,
            Some(dir) => Some(VerdictCache::new(dir)),
            None => default_cache_dir().map(VerdictCache::new),
        }
    }

    /// Validates and builds the judge, loading local models with [`LocalChat::load`].
    pub fn build(&self) -> Result<Box<dyn Judge>, JudgeSpecError> {
        self.build_with(&|reference, max_tokens| {
            LocalChat::load(reference, max_tokens).map(|c| Arc::new(c) as Arc<dyn ChatBackend>).map_err(|e| e.to_string())
        })
    }

    /// Validates and builds the judge; `local` loads the model of a local strongreject or
    /// harmbench judge (a local llama_guard loads through [`LlamaGuardJudge::load`]).
    pub fn build_with(&self, local: &LocalLoader<'_>) -> Result<Box<dyn Judge>, JudgeSpecError> {
        self.validate()?;
        let name = self.display_name().to_string();
        match self.kind {
            JudgeKind::Lexicon => {
                let j = LexiconJudge::new(self.lexicon.as_deref().unwrap_or("both")).map_err(|e| self.err("lexicon", e.to_string()))?;
                Ok(Box::new(j.named(name)))
            }
            JudgeKind::Probe => {
                let dir = self.probe_dir()?;
                let p = EmbeddingProbe::load(&dir).map_err(|e| self.err("probe", e.to_string()))?;
                let mut j = ProbeJudge::new(p).named(name);
                if let Some(t) = self.threshold {
                    j = j.with_threshold(t);
                }
                Ok(Box::new(j))
            }
            JudgeKind::LlamaGuard | JudgeKind::Strongreject | JudgeKind::Harmbench => {
                let model = self.model.as_deref().unwrap_or_default().trim();
                let max_tokens = self.max_tokens_or_default();
                let format = match self.kind {
                    JudgeKind::Strongreject => ChatFormat::Strongreject,
                    JudgeKind::Harmbench => ChatFormat::Harmbench(self.variant.unwrap_or(HarmbenchVariant::Llama2)),
                    _ => ChatFormat::LlamaGuard,
                };
                let backend: Arc<dyn ChatBackend> = match &self.endpoint {
                    Some(e) => {
                        let mut c = RemoteChatConfig::new(e.url.clone(), model);
                        c.api_key_env = e.api_key_env.clone();
                        c.max_tokens = max_tokens;
                        if let Some(t) = e.timeout_s {
                            c.timeout = Duration::from_secs_f64(t);
                        }
                        if let Some(r) = e.max_retries {
                            c.max_retries = r;
                        }
                        if let Some(b) = e.backoff_ms {
                            c.backoff = Duration::from_millis(b);
                        }
                        if let Some(n) = e.concurrency {
                            c.concurrency = n;
                        }
                        Arc::new(RemoteChat::new(c).map_err(|e| self.err("endpoint", e.to_string()))?)
                    }
                    None if self.kind == JudgeKind::LlamaGuard => {
                        let g = LlamaGuardJudge::load(model).map_err(|e| self.err("model", e.to_string()))?;
                        return Ok(Box::new(GuardJudge::new(g.with_max_new_tokens(max_tokens)).named(name)));
                    }
                    None => local(model, max_tokens).map_err(|e| self.err("model", e))?,
                };
                let mut j = ChatJudge::new(format, backend).named(name);
                if let Some(cache) = self.cache() {
                    j = j.with_cache(cache);
                }
                Ok(Box::new(j))
            }
        }
    }

    /// Checks a whole `judges:` list and returns the index of its primary judge: names must be
    /// distinct, and of several judges exactly one is `primary` (a single judge is primary anyway).
    pub fn primary_of(specs: &[JudgeSpec]) -> Result<usize, JudgeSpecError> {
        let list_err = |message: String| JudgeSpecError { judge: "judges".into(), field: "primary".into(), message };
        for (i, s) in specs.iter().enumerate() {
            s.validate()?;
            if specs[..i].iter().any(|o| o.display_name() == s.display_name()) {
                return Err(s.err("name", format!("two judges are named `{}`; give each a distinct `name`", s.display_name())));
            }
        }
        let primaries: Vec<usize> = specs.iter().enumerate().filter(|(_, s)| s.primary).map(|(i, _)| i).collect();
        match (specs.len(), primaries.as_slice()) {
            (0, _) => Err(list_err("the list is empty; leave `judges` out for the default lexicon judge".into())),
            (1, _) => Ok(0),
            (_, [one]) => Ok(*one),
            (_, []) => Err(list_err("several judges and none has `primary: true`; mark the one that drives the headline".into())),
            (_, many) => Err(list_err(format!(
                "{} judges have `primary: true` ({}); mark exactly one",
                many.len(),
                many.iter().map(|&i| specs[i].display_name()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

/// A local `llama_guard` reads `P(unsafe)` off its own model; the verdict cache does not apply.
fn not_for_local_guard(spec: &JudgeSpec) -> Result<(), JudgeSpecError> {
    if spec.cache.is_some() {
        return Err(spec.err("cache", "applies to remote `llama_guard` judges and to strongreject / harmbench; a local llama_guard is not cached"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<JudgeSpec, String> {
        serde_json::from_value(serde_json::from_str::<serde_json::Value>(yaml).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
    }

    #[test]
    fn probe_dir_expands_environment_variables_and_names_an_unset_one() {
        // A variable only this test sets, so no other test races on it.
        std::env::set_var("KEEL_TEST_PROBE_ROOT_15", "/probes");
        let s = parse(r#"{"kind": "probe", "probe": "${KEEL_TEST_PROBE_ROOT_15}/minilm"}"#).unwrap();
        assert_eq!(s.probe_dir().unwrap(), PathBuf::from("/probes/minilm"));
        let s = parse(r#"{"kind": "probe", "probe": "${KEEL_TEST_PROBE_UNSET_15}/minilm"}"#).unwrap();
        let e = s.probe_dir().unwrap_err();
        assert_eq!(e.field, "probe");
        assert!(e.message.contains("KEEL_TEST_PROBE_UNSET_15"), "{e}");
        // validate() reads the expanded directory: it names it when no probe is there.
        let s = parse(r#"{"kind": "probe", "probe": "$KEEL_TEST_PROBE_ROOT_15/none"}"#).unwrap();
        assert!(s.validate().unwrap_err().message.starts_with("/probes/none holds no"), "{:?}", s.validate());
    }

    #[test]
    fn specs_parse_and_unknown_fields_are_refused() {
        let s = parse(r#"{"name": "sr", "kind": "strongreject", "model": "m", "endpoint": {"url": "http://127.0.0.1:1/v1"}, "primary": true}"#).unwrap();
        assert_eq!((s.kind, s.primary, s.display_name()), (JudgeKind::Strongreject, true, "sr"));
        assert!(s.validate().is_ok());
        let e = parse(r#"{"kind": "strongreject", "modle": "m"}"#).unwrap_err();
        assert!(e.contains("modle"), "{e}");
        let e = parse(r#"{"kind": "strongreject", "model": "m", "endpoint": {"url": "http://h", "key": "x"}}"#).unwrap_err();
        assert!(e.contains("key"), "{e}");
        let e = parse(r#"{"kind": "gpt_judge"}"#).unwrap_err();
        assert!(e.contains("gpt_judge") && e.contains("strongreject"), "{e}");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let check = |json: &str, field: &str| {
            let e = parse(json).unwrap().validate().unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
            assert!(e.to_string().contains(&format!("`{field}`")), "{e}");
        };
        check(r#"{"kind": "strongreject"}"#, "model");
        check(r#"{"kind": "harmbench", "model": " "}"#, "model");
        check(r#"{"kind": "lexicon", "model": "m"}"#, "model");
        check(r#"{"kind": "lexicon", "lexicon": "regex"}"#, "lexicon");
        check(r#"{"kind": "strongreject", "model": "m", "variant": "llama2"}"#, "variant");
        check(r#"{"kind": "strongreject", "model": "m", "endpoint": {"url": "ftp://h"}}"#, "endpoint.url");
        check(r#"{"kind": "strongreject", "model": "m", "endpoint": {"url": "http://h", "concurrency": 0}}"#, "endpoint.concurrency");
        check(r#"{"kind": "strongreject", "model": "m", "endpoint": {"url": "http://h", "timeout_s": -1}}"#, "endpoint.timeout_s");
        check(r#"{"kind": "strongreject", "model": "m", "endpoint": {"url": "http://h", "api_key_env": "KEEL_NO_SUCH_KEY_VAR"}}"#, "endpoint.api_key_env");
        check(r#"{"kind": "strongreject", "model": "m", "max_tokens": 0}"#, "max_tokens");
        check(r#"{"kind": "probe"}"#, "probe");
        check(r#"{"kind": "probe", "probe": "no/such/dir"}"#, "probe");
        check(r#"{"kind": "llama_guard", "model": "m", "cache": "d"}"#, "cache");
        check(r#"{"name": "a b", "kind": "lexicon"}"#, "name");
    }

    #[test]
    fn a_list_has_one_primary_and_distinct_names() {
        let lex = JudgeSpec::of_kind(JudgeKind::Lexicon);
        let sr = JudgeSpec { model: Some("m".into()), endpoint: Some(EndpointSpec { url: "http://h/v1".into(), api_key_env: None, timeout_s: None, max_retries: None, backoff_ms: None, concurrency: None }), ..JudgeSpec::of_kind(JudgeKind::Strongreject) };
        assert_eq!(JudgeSpec::primary_of(&[lex.clone()]), Ok(0));
        let e = JudgeSpec::primary_of(&[lex.clone(), sr.clone()]).unwrap_err();
        assert_eq!(e.field, "primary");
        assert_eq!(JudgeSpec::primary_of(&[lex.clone(), JudgeSpec { primary: true, ..sr.clone() }]), Ok(1));
        let e = JudgeSpec::primary_of(&[JudgeSpec { primary: true, ..lex.clone() }, JudgeSpec { primary: true, ..sr.clone() }]).unwrap_err();
        assert!(e.message.contains("lexicon, strongreject"), "{e}");
        let e = JudgeSpec::primary_of(&[lex.clone(), lex]).unwrap_err();
        assert_eq!(e.field, "name");
        assert_eq!(JudgeSpec::primary_of(&[]).unwrap_err().field, "primary");
    }
}
