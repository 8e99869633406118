//! Model references: the strings a pipeline file or the CLI uses to name a model, and their
//! resolution to files on disk.
//!
//! A researcher writes `model: ./checkpoints/sft`, `model: ~/models/SmolLM2-135M-Instruct.Q4_1.gguf`,
//! `model: hf://HuggingFaceTB/SmolLM2-135M-Instruct@main` or `model: tiny-1m`. [`ModelSource`]
//! parses these; [`ModelSource::resolve`] finds the files (Hugging Face models through the local
//! Hugging Face cache only: Keel never downloads weights behind the user's back) and, when
//! something is missing, says exactly which files to put where.

use std::path::{Path, PathBuf};

/// The files every Hugging Face model directory must provide for Keel.
const REQUIRED_DIR_FILES: [&str; 2] = ["config.json", "tokenizer.json"];

/// Errors from parsing or resolving a model reference. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The reference string is malformed.
    #[error("invalid model reference `{reference}`: {reason}")]
    Invalid {
        /// The string given.
        reference: String,
        /// What is wrong and what forms are accepted.
        reason: String,
    },
    /// A local path does not exist.
    #[error("model path {path} does not exist (expected a directory with config.json, tokenizer.json and model.safetensors, or a .gguf file)")]
    NotFound {
        /// The missing path.
        path: PathBuf,
    },
    /// A local model directory lacks required files.
    #[error("model directory {dir} is missing {missing}; a Keel/Hugging Face model directory needs config.json, tokenizer.json and model.safetensors (or model.safetensors.index.json with its shards)")]
    IncompleteDir {
        /// The directory.
        dir: PathBuf,
        /// The missing file names, comma-separated.
        missing: String,
    },
    /// A Hugging Face model is not (completely) in the local cache.
    #[error(
        "hf://{repo}@{revision} is not available offline: {missing} not found in the Hugging Face cache at {cache}.\n\
         Download it on a machine with network access with\n    huggingface-cli download {repo} --revision {revision}\n\
         (or `hf download {repo} --revision {revision}`) and copy {cache}/{folder} here, or set HF_HOME / HF_HUB_CACHE to a cache that has it.\n\
         The files must be at {cache}/{folder}/snapshots/<commit>/ with {cache}/{folder}/refs/{revision} containing <commit>.\n\
         Alternatively pass a local directory with config.json, tokenizer.json and model.safetensors."
    )]
    NotInCache {
        /// `org/name`.
        repo: String,
        /// The revision asked for (`main` by default).
        revision: String,
        /// Cache root used.
        cache: PathBuf,
        /// `models--org--name`.
        folder: String,
        /// What was not found.
        missing: String,
    },
    /// No Hugging Face cache location could be determined (no HF_HUB_CACHE, HF_HOME or home directory).
    #[error("cannot locate the Hugging Face cache for hf://{repo}: set HF_HOME or HF_HUB_CACHE")]
    NoCache {
        /// `org/name`.
        repo: String,
    },
    /// A file in the model directory could not be read.
    #[error("reading {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// Where a model comes from, as written in a pipeline or on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hugging Face-layout directory (config.json, tokenizer.json, model.safetensors).
    Dir(PathBuf),
    /// A llama.cpp GGUF file, converted in memory on load.
    Gguf(PathBuf),
    /// A model in the local Hugging Face cache: `hf://org/name[@revision]`.
    Hub {
        /// `org/name`.
        repo: String,
        /// Branch, tag or commit; `None` means `main`.
        revision: Option<String>,
    },
    /// A built-in configuration name such as `tiny-1m`, interpreted by the model-core presets.
    Preset(String),
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::Dir(p) | ModelSource::Gguf(p) => write!(f, "{}", p.display()),
            ModelSource::Hub {
                repo,
                revision: Some(r),
            } => write!(f, "hf://{repo}@{r}"),
            ModelSource::Hub {
                repo,
                revision: None,
            } => write!(f, "hf://{repo}"),
            ModelSource::Preset(n) => write!(f, "{n}"),
        }
    }
}

fn expand_home(s: &str) -> PathBuf {
    if let Some(rest) = s.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    PathBuf::from(s)
}

/// Replaces `$NAME` and `${NAME}` with environment variables, so a pipeline can name a model by
/// where its user keeps assets (`${KEEL_ASSETS}/smollm2-135m-instruct/…`) instead of by an
/// absolute path that only exists on one machine. An unset variable is an error naming it.
/// Public so other path parameters (a judge's probe directory) expand the same way.
pub fn expand_vars(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').ok_or_else(|| format!("unclosed `${{` in `{s}`"))?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() {
            return Err(format!("`$` without a variable name in `{s}`"));
        }
        let value = std::env::var(name)
            .map_err(|_| format!("environment variable `{name}` is not set (it is used in `{s}`); set it, or write the path out"))?;
        out.push_str(&value);
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `rev` can name a branch, tag or commit (git's ref-name rules, roughly): `/`-separated
/// components of letters, digits, `-`, `_`, `.`, `+`, none empty or starting with `.`.
///
/// Why: the revision becomes a path inside the Hugging Face cache (`refs/<rev>`,
/// `snapshots/<rev>`), so `@/abs/dir` or `@../x` would load a model from outside the cache
/// while the run manifest recorded an `hf://` source.
fn valid_revision(rev: &str) -> bool {
    rev.split('/').all(|c| {
        !c.is_empty() && !c.starts_with('.') && c.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.' | '+'))
    })
}

fn valid_repo_part(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with('.')
}

impl ModelSource {
    /// Parses a model reference:
    /// - `hf://org/name` or `hf://org/name@revision`: the local Hugging Face cache;
    /// - anything ending in `.gguf`: a GGUF file;
    /// - anything that looks like a path (contains `/`, starts with `.` or `~`) or exists on disk:
    ///   a model directory (a directory holding exactly one `.gguf` and no config.json resolves
    ///   to that file);
    /// - otherwise a bare name made of letters, digits, `-`, `_`, `.`: a preset (`tiny-1m`).
    pub fn parse(s: &str) -> Result<Self, SourceError> {
        let s = s.trim();
        let expanded = expand_vars(s).map_err(|reason| SourceError::Invalid { reference: s.to_string(), reason })?;
        let s = expanded.as_str();
        let invalid = |reason: &str| SourceError::Invalid {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(invalid(
                "empty; use a directory, a .gguf file, hf://org/name[@revision] or a preset name",
            ));
        }
        if let Some(rest) = s.strip_prefix("hf://") {
            let (repo, revision) = match rest.split_once('@') {
                Some((r, rev)) if !rev.is_empty() => (r, Some(rev.to_string())),
                Some(_) => return Err(invalid("empty revision after `@`")),
                None => (rest, None),
            };
            if let Some(rev) = revision.as_deref().filter(|r| !valid_revision(r)) {
                return Err(invalid(&format!(
                    "revision `{rev}` is not a branch, tag or commit name (letters, digits, `-_.+`, `/`-separated, \
                     no `..` or absolute paths); a local directory is written without hf://"
                )));
            }
            let parts: Vec<&str> = repo.split('/').collect();
            if parts.len() != 2 || !parts.iter().all(|p| valid_repo_part(p)) {
                return Err(invalid("expected hf://org/name or hf://org/name@revision"));
            }
            return Ok(ModelSource::Hub {
                repo: repo.to_string(),
                revision,
            });
        }
        if s.contains("://") {
            return Err(invalid(
                "unknown scheme; only hf:// is supported (Keel does not download models)",
            ));
        }
        let path = expand_home(s);
        if s.to_ascii_lowercase().ends_with(".gguf") {
            return Ok(ModelSource::Gguf(path));
        }
        let looks_like_path =
            s.contains('/') || s.contains('\\') || s.starts_with('.') || s.starts_with('~');
        if looks_like_path || path.exists() {
            return Ok(ModelSource::Dir(path));
        }
        if s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Ok(ModelSource::Preset(s.to_string()));
        }
        Err(invalid(
            "not an existing path, a .gguf file, hf://org/name[@revision] or a preset name",
        ))
    }

    /// Finds the files of this model. Touches only the local file system.
    pub fn resolve(&self) -> Result<ResolvedModel, SourceError> {
        match self {
            ModelSource::Preset(name) => {
                if crate::PRESETS.contains(&name.as_str()) {
                    Ok(ResolvedModel::Preset(name.clone()))
                } else {
                    Err(SourceError::Invalid {
                        reference: name.clone(),
                        reason: format!(
                            "not a preset (available: {}) and no such file or directory here; write ./{name} for a local directory",
                            crate::PRESETS.join(", ")
                        ),
                    })
                }
            }
            ModelSource::Gguf(path) => {
                if path.is_file() {
                    Ok(ResolvedModel::Gguf(path.clone()))
                } else {
                    Err(SourceError::NotFound { path: path.clone() })
                }
            }
            ModelSource::Dir(dir) => resolve_dir(dir),
            ModelSource::Hub { repo, revision } => {
                let cache =
                    hf_cache_dir().ok_or_else(|| SourceError::NoCache { repo: repo.clone() })?;
                resolve_hub(&cache, repo, revision.as_deref().unwrap_or("main"))
            }
        }
    }

    /// Like [`ModelSource::resolve`], but looks up `hf://` references in the given Hugging Face
    /// hub cache directory instead of the one named by the environment (for tests, and for tools
    /// that manage their own cache).
    pub fn resolve_with_cache(&self, hf_cache: &Path) -> Result<ResolvedModel, SourceError> {
        match self {
            ModelSource::Hub { repo, revision } => {
                resolve_hub(hf_cache, repo, revision.as_deref().unwrap_or("main"))
            }
            other => other.resolve(),
        }
    }
}

/// The files of a Hugging Face-layout model directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// The directory (a snapshot directory for hub models).
    pub dir: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// `tokenizer_config.json`, when present (special tokens, chat template).
    pub tokenizer_config: Option<PathBuf>,
    /// `generation_config.json`, when present (extra stop ids).
    pub generation_config: Option<PathBuf>,
    /// Weight files: `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub weights: Vec<PathBuf>,
}

/// A model reference resolved to files on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedModel {
    /// A Hugging Face-layout directory (local or a hub cache snapshot).
    Dir(ModelFiles),
    /// A GGUF file; load it with [`crate::gguf::read_gguf`] or convert with [`crate::gguf::import_gguf`].
    Gguf(PathBuf),
    /// A preset name, built by the model-core presets rather than read from disk.
    Preset(String),
}

impl ResolvedModel {
    /// Every file that defines the model, for hashing into run manifests (empty for presets).
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            ResolvedModel::Dir(f) => {
                let mut v = vec![f.config.clone(), f.tokenizer.clone()];
                v.extend(f.tokenizer_config.iter().cloned());
                v.extend(f.generation_config.iter().cloned());
                v.extend(f.weights.iter().cloned());
                v
            }
            ResolvedModel::Gguf(p) => vec![p.clone()],
            ResolvedModel::Preset(_) => Vec::new(),
        }
    }

    /// `config.json`, for directory models.
    pub fn config_path(&self) -> Option<&Path> {
        match self {
            ResolvedModel::Dir(f) => Some(&f.config),
            _ => None,
        }
    }

    /// `tokenizer.json`, for directory models.
    pub fn tokenizer_path(&self) -> Option<&Path> {
        match self {
            ResolvedModel::Dir(f) => Some(&f.tokenizer),
            _ => None,
        }
    }
}

/// Errors from [`ResolvedModel::load`]: whichever step failed, with its own file-naming message.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading or converting the GGUF file failed.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    /// Loading the tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    /// Parsing the config or building the model failed.
    #[error(transparent)]
    Model(#[from] crate::error::ModelError),
    /// Presets have no weights or tokenizer on disk.
    #[error("`{0}` is a preset: it has no weights or tokenizer to load; train a tokenizer (keel_model::train_bpe) and build the model with CausalLm::new(&ModelConfig::preset(\"{0}\", tokenizer.vocab_size())?, seed, device, dtype)")]
    Preset(String),
}

impl ResolvedModel {
    /// Loads the model and its tokenizer: a directory through `CausalLm::load` and
    /// `Tokenizer::from_dir`, a GGUF file through [`crate::gguf::read_gguf`] (dequantised,
    /// renamed, Q/K un-permuted). This is the one call stages and the CLI need for any reference
    /// that is not a preset.
    pub fn load(
        &self,
        device: &candle_core::Device,
        dtype: candle_core::DType,
    ) -> Result<(crate::CausalLm, crate::tokenizer::Tokenizer), LoadError> {
        match self {
            ResolvedModel::Dir(files) => {
                let model = crate::CausalLm::load(&files.dir, device, dtype)?;
                let tokenizer = crate::tokenizer::Tokenizer::from_dir(&files.dir)?;
                Ok((model, tokenizer))
            }
            ResolvedModel::Gguf(path) => {
                let g = crate::gguf::read_gguf(path)?;
                let config = crate::ModelConfig::from_json(&g.config)?;
                let model = crate::CausalLm::from_tensors_on(config, g.tensors, device, dtype)?;
                Ok((model, g.tokenizer))
            }
            ResolvedModel::Preset(name) => Err(LoadError::Preset(name.clone())),
        }
    }
}

/// Collects the files of a model directory, or explains which ones are missing.
pub fn model_files(dir: &Path) -> Result<ModelFiles, SourceError> {
    let mut missing: Vec<String> = REQUIRED_DIR_FILES
        .iter()
        .filter(|f| !dir.join(f).is_file())
        .map(|f| f.to_string())
        .collect();
    let index = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    let weights = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        let shards = crate::weights::index_shards(dir).map_err(|e| SourceError::Read {
            path: index.clone(),
            reason: match e {
                crate::error::ModelError::InFile { source, .. } => source.to_string(),
                other => other.to_string(),
            },
        })?;
        for s in &shards {
            if !s.is_file() {
                missing.push(s.strip_prefix(dir).unwrap_or(s).display().to_string());
            }
        }
        shards
    } else {
        missing.push("model.safetensors".into());
        Vec::new()
    };
    if !missing.is_empty() {
        return Err(SourceError::IncompleteDir {
            dir: dir.to_path_buf(),
            missing: missing.join(", "),
        });
    }
    let optional = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
    Ok(ModelFiles {
        dir: dir.to_path_buf(),
        config: dir.join("config.json"),
        tokenizer: dir.join("tokenizer.json"),
        tokenizer_config: optional("tokenizer_config.json"),
        generation_config: optional("generation_config.json"),
        weights,
    })
}

fn resolve_dir(dir: &Path) -> Result<ResolvedModel, SourceError> {
    if !dir.exists() {
        return Err(SourceError::NotFound {
            path: dir.to_path_buf(),
        });
    }
    if dir.is_file() {
        // A file that is not named .gguf: accept it when it starts with the GGUF magic.
        let mut magic = [0u8; 4];
        let ok = std::fs::File::open(dir)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok();
        if ok && &magic == b"GGUF" {
            return Ok(ResolvedModel::Gguf(dir.to_path_buf()));
        }
        return Err(SourceError::Invalid {
            reference: dir.display().to_string(),
            reason: "a file that is not GGUF; pass the model directory instead".into(),
        });
    }
    if !dir.join("config.json").is_file() {
        let ggufs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| SourceError::Read {
                path: dir.to_path_buf(),
                reason: e.to_string(),
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
            })
            .collect();
        if ggufs.len() == 1 {
            return Ok(ResolvedModel::Gguf(ggufs[0].clone()));
        }
    }
    model_files(dir).map(ResolvedModel::Dir)
}

/// The Hugging Face hub cache directory: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (the same order as huggingface_hub).
pub fn hf_cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p).join("hub"));
    }
    std::env::var_os("HOME").filter(|p| !p.is_empty()).map(|h| {
        PathBuf::from(h)
            .join(".cache")
            .join("huggingface")
            .join("hub")
    })
}

fn resolve_hub(cache_dir: &Path, repo: &str, revision: &str) -> Result<ResolvedModel, SourceError> {
    let cache_dir = cache_dir.to_path_buf();
    let hf_repo = hf_hub::Repo::with_revision(
        repo.to_string(),
        hf_hub::RepoType::Model,
        revision.to_string(),
    );
    let folder = hf_repo.folder_name();
    let cache = hf_hub::Cache::new(cache_dir.clone());
    let not_in_cache = |missing: String| SourceError::NotInCache {
        repo: repo.to_string(),
        revision: revision.to_string(),
        cache: cache_dir.clone(),
        folder: folder.clone(),
        missing,
    };
    // hf-hub resolves refs/<revision>; a full commit hash names a snapshot directly.
    let snapshot = match cache.repo(hf_repo.clone()).get("config.json") {
        Some(config) => config.parent().map(Path::to_path_buf),
        None => {
            let direct = cache_dir.join(&folder).join("snapshots").join(revision);
            Some(direct).filter(|d| d.join("config.json").is_file())
        }
    };
    let Some(snapshot) = snapshot else {
        return Err(not_in_cache("config.json".into()));
    };
    // The refs file is data too: its commit must name a snapshot of this repository.
    let snapshots = cache_dir.join(&folder).join("snapshots");
    let inside = match (snapshot.canonicalize(), snapshots.canonicalize()) {
        (Ok(s), Ok(root)) => s.starts_with(&root),
        _ => false,
    };
    if !inside || !valid_revision(revision) {
        return Err(SourceError::Invalid {
            reference: format!("hf://{repo}@{revision}"),
            reason: format!(
                "the cache resolves it to {}, which is not a snapshot under {}; check refs/{revision} in the cache",
                snapshot.display(),
                snapshots.display()
            ),
        });
    }
    match model_files(&snapshot) {
        Ok(files) => Ok(ResolvedModel::Dir(files)),
        Err(SourceError::IncompleteDir { missing, .. }) => Err(not_in_cache(missing)),
        Err(e) => Err(e),
    }
}
