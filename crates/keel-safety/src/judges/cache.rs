//! The on-disk verdict cache: one small JSON file per judged pair, keyed by a sha256.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::SafetyError;

/// Environment variable that overrides the default cache directory of model judges.
pub const JUDGE_CACHE_ENV: &str = "KEEL_JUDGE_CACHE";

/// Where model judges cache their answers unless a judge names a `cache:` directory:
/// `$KEEL_JUDGE_CACHE`, else `$XDG_CACHE_HOME/keel/judges`, else `$HOME/.cache/keel/judges`.
/// One place per user, so every run and every sweep cell shares it.
pub fn default_cache_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env(JUDGE_CACHE_ENV)
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("keel").join("judges")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("keel").join("judges")))
}

/// The cache key of one judged pair: the hex sha256 of the canonical JSON of
/// `{judge, config, prompt, response}`, where `config` is everything about the judge that can
/// change its answer (prompt template, model, token budget) and nothing that cannot (the
/// endpoint's address, the API key, timeouts).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(String);

impl CacheKey {
    /// The key of `(judge, config, prompt, response)`.
    pub fn new(judge: &str, config: &serde_json::Value, prompt: &str, response: &str) -> Self {
        let canonical = serde_json::json!({"judge": judge, "config": config, "prompt": prompt, "response": response});
        CacheKey(keel_core::sha256_bytes(canonical.to_string().as_bytes()))
    }

    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a cache file holds: the judge model's raw answer (parsed again on every read, so a parser
/// fix applies to cached answers without asking again), and for a reader, who answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    judge: String,
    model: String,
    raw: String,
}

/// A directory of cached judge answers, `<dir>/<first two hex digits>/<key>.json`, each written
/// atomically (temporary file + rename), so concurrent runs and sweep cells can share it.
#[derive(Debug, Clone)]
pub struct VerdictCache {
    dir: PathBuf,
}

/// Distinguishes temporary files of concurrent writers within one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl VerdictCache {
    /// A cache in `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        VerdictCache { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(&key.0[..2]).join(format!("{}.json", key.0))
    }

    /// The cached raw answer for `key`. A missing file is a miss; an unreadable or corrupt one
    /// is an error naming the file (it is not silently asked again).
    pub fn get(&self, key: &CacheKey) -> Result<Option<String>, SafetyError> {
        let path = self.path(key);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SafetyError::Cache { path, message: e.to_string() }),
        };
        let entry: Entry = serde_json::from_str(&text)
            .map_err(|e| SafetyError::Cache { path: path.clone(), message: format!("not a cache entry ({e}); delete it to ask again") })?;
        Ok(Some(entry.raw))
    }

    /// Stores the raw answer of `judge` (`model` answering) for `key`.
    pub fn put(&self, key: &CacheKey, judge: &str, model: &str, raw: &str) -> Result<(), SafetyError> {
        let path = self.path(key);
        let fail = |p: &Path, e: std::io::Error| SafetyError::Cache { path: p.to_path_buf(), message: e.to_string() };
        let parent = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent).map_err(|e| fail(parent, e))?;
        let entry = Entry { judge: judge.to_string(), model: model.to_string(), raw: raw.to_string() };
        let bytes = serde_json::to_vec(&entry).map_err(|e| SafetyError::Cache { path: path.clone(), message: e.to_string() })?;
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = parent.join(format!(".{}.tmp-{}-{n}", key.0, std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(|e| fail(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| fail(&path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_every_field_and_entries_round_trip() {
        let c = serde_json::json!({"model": "m"});
        let k = CacheKey::new("strongreject", &c, "p", "r");
        assert_eq!(k.as_str().len(), 64);
        assert_eq!(k, CacheKey::new("strongreject", &c, "p", "r"));
        for other in [
            CacheKey::new("harmbench", &c, "p", "r"),
            CacheKey::new("strongreject", &serde_json::json!({"model": "n"}), "p", "r"),
            CacheKey::new("strongreject", &c, "pr", ""),
            CacheKey::new("strongreject", &c, "p", "r "),
        ] {
            assert_ne!(k, other);
        }
        let dir = std::env::temp_dir().join(format!("keel-judge-cache-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = VerdictCache::new(&dir);
        assert_eq!(cache.get(&k).unwrap(), None);
        cache.put(&k, "strongreject", "m", "#scores\n1.b 1").unwrap();
        assert_eq!(cache.get(&k).unwrap().as_deref(), Some("#scores\n1.b 1"));
        // A corrupt entry is an error naming the file, not a silent miss.
        std::fs::write(cache.path(&k), "{").unwrap();
        let e = cache.get(&k).unwrap_err().to_string();
        assert!(e.contains(k.as_str()) && e.contains("delete it"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
