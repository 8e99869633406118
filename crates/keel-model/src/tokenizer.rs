//! The tokenizer every Keel model speaks: a thin wrapper over the Hugging Face `tokenizers` crate
//! that also knows the model's special tokens (BOS/EOS/PAD) and its chat template.
//!
//! A Hugging Face model directory spreads this information over three files: `tokenizer.json`
//! (the vocabulary and pipeline), `tokenizer_config.json` (special tokens by name, the Jinja chat
//! template) and `config.json` (special tokens by id). Samplers need the EOS ids to stop, SFT needs
//! the PAD id and the chat template, so [`Tokenizer`] gathers all of it in one place and writes it
//! back in exactly the same layout ([`Tokenizer::save`]). [`train_bpe`] builds a small byte-level
//! BPE tokenizer for from-scratch synthetic worlds that is saved in that same layout, so a tiny
//! model and a real Hugging Face model are interchangeable everywhere downstream.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

/// The ChatML chat template (Hugging Face's standard form, as used by Qwen and SmolLM2 without a
/// default system prompt). [`train_bpe`] stores it in `tokenizer_config.json` so that tiny models
/// trained from scratch format conversations exactly like real instruction-tuned models.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Byte ranges `(start, end)` of tokens in the encoded text, one per token.
pub type TokenOffsets = Vec<(usize, usize)>;

/// The special tokens [`train_bpe`] always reserves (ids 0, 1, 2), chosen to match SmolLM2's
/// layout: `<|endoftext|>` (padding / unknown), `<|im_start|>` (BOS) and `<|im_end|>` (EOS).
pub const CHATML_SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Errors from loading, using, training or saving a tokenizer. Every file-related variant names
/// the file, so a researcher pointing Keel at a model directory knows which file to fix.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A tokenizer file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file Keel tried to read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (tokenizer_config.json, config.json, generation_config.json) is malformed.
    #[error("parsing {path}: {source}")]
    Json {
        /// The malformed file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// `tokenizer.json` (or an in-memory equivalent) was rejected by the `tokenizers` crate.
    #[error("loading tokenizer from {origin}: {message}")]
    Load {
        /// Where the tokenizer came from (a file path or e.g. `GGUF vocabulary of x.gguf`).
        origin: String,
        /// The `tokenizers` error message.
        message: String,
    },
    /// A special token named in a config file is not in the vocabulary.
    #[error("{origin}: {role} token `{token}` is not in the vocabulary")]
    UnknownSpecialToken {
        /// Where the tokenizer came from.
        origin: String,
        /// "bos", "eos", "pad" or "unk".
        role: &'static str,
        /// The token text.
        token: String,
    },
    /// A special-token id in a config file is outside the vocabulary.
    #[error("{origin}: {role} token id {id} is outside the vocabulary (size {vocab_size})")]
    SpecialIdOutOfRange {
        /// Where the tokenizer came from.
        origin: String,
        /// "bos", "eos", "pad" or "unk".
        role: &'static str,
        /// The id from the config.
        id: u64,
        /// Number of tokens in the vocabulary (added tokens included).
        vocab_size: usize,
    },
    /// Encoding text failed.
    #[error("encoding text with tokenizer from {origin}: {message}")]
    Encode {
        /// Where the tokenizer came from.
        origin: String,
        /// The `tokenizers` error message.
        message: String,
    },
    /// Decoding ids failed (e.g. an id outside the vocabulary).
    #[error("decoding ids with tokenizer from {origin}: {message}")]
    Decode {
        /// Where the tokenizer came from.
        origin: String,
        /// The `tokenizers` error message.
        message: String,
    },
    /// BPE training was given unusable inputs or failed inside the trainer.
    #[error("training BPE tokenizer: {0}")]
    Train(String),
    /// Writing tokenizer files failed.
    #[error("writing tokenizer files: {0}")]
    Write(#[from] keel_core::CoreError),
}

/// The model's special tokens by text. Stored by text (as `tokenizer_config.json` does) and
/// resolved to ids through the vocabulary, so they cannot disagree with `tokenizer.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning-of-sequence token, prepended by some chat templates (Llama 3's `<|begin_of_text|>`).
    pub bos: Option<String>,
    /// End-of-sequence / end-of-turn token: where generation stops and assistant masks end.
    pub eos: Option<String>,
    /// Padding token for batching; falls back to EOS when a model defines none.
    pub pad: Option<String>,
    /// Unknown token, if the vocabulary has one.
    pub unk: Option<String>,
}

/// A tokenizer plus the special tokens and chat template that belong to it.
///
/// Built from a model directory ([`Tokenizer::from_dir`]), a lone `tokenizer.json`
/// ([`Tokenizer::from_file`]), GGUF metadata (`crate::gguf`) or trained ([`train_bpe`]).
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
    /// Extra stop ids from config.json / generation_config.json (e.g. Llama 3.1's three ids).
    extra_eos_ids: Vec<u32>,
    chat_template: Option<String>,
    /// The tokenizer_config.json object, kept so that saving preserves fields Keel does not use.
    config: Map<String, Value>,
    origin: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

fn read_json(path: &Path) -> Result<Value, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn read_json_if_exists(path: &Path) -> Result<Option<Value>, TokenizerError> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// A special token in tokenizer_config.json is either a string or an AddedToken object
/// (`{"content": "<s>", ...}`); both forms occur in real checkpoints.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// A token id in config.json is an integer or (Llama 3.1) a list of integers.
fn token_ids(v: Option<&Value>) -> Vec<u64> {
    match v {
        Some(Value::Number(n)) => n.as_u64().into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).collect(),
        _ => Vec::new(),
    }
}

/// Well-known end-of-turn tokens, used to guess EOS when a bare tokenizer.json comes without a
/// tokenizer_config.json.
const KNOWN_EOS: [&str; 6] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
    "<end_of_turn>",
];
const KNOWN_BOS: [&str; 3] = ["<|begin_of_text|>", "<s>", "<bos>"];

impl Tokenizer {
    /// Loads `tokenizer.json` from a model directory together with `tokenizer_config.json`
    /// (special tokens by name, chat template), `config.json` and `generation_config.json`
    /// (special-token ids, extra stop ids) when they are present.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref();
        let tok_path = dir.join("tokenizer.json");
        let inner = load_tokenizer_json(&tok_path)?;
        let tok_config = read_json_if_exists(&dir.join("tokenizer_config.json"))?;
        let model_config = read_json_if_exists(&dir.join("config.json"))?;
        let gen_config = read_json_if_exists(&dir.join("generation_config.json"))?;
        Self::from_parts(
            inner,
            tok_config.as_ref(),
            model_config.as_ref(),
            gen_config.as_ref(),
            tok_path.display().to_string(),
        )
    }

    /// Loads a lone `tokenizer.json`. Sibling config files in the same directory are used when
    /// present (as in [`Tokenizer::from_dir`]); otherwise BOS/EOS are guessed from well-known
    /// special-token names (`<|im_end|>`, `<|eot_id|>`, `</s>`, ...).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let inner = load_tokenizer_json(path)?;
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let tok_config = read_json_if_exists(&dir.join("tokenizer_config.json"))?;
        let model_config = read_json_if_exists(&dir.join("config.json"))?;
        let gen_config = read_json_if_exists(&dir.join("generation_config.json"))?;
        Self::from_parts(
            inner,
            tok_config.as_ref(),
            model_config.as_ref(),
            gen_config.as_ref(),
            path.display().to_string(),
        )
    }

    /// Builds a tokenizer from in-memory Hugging Face documents: the parsed `tokenizer.json`, and
    /// optionally `tokenizer_config.json`, `config.json` and `generation_config.json`. `origin`
    /// is used in error messages (a path, or e.g. "GGUF vocabulary of model.gguf").
    pub fn from_json(
        tokenizer_json: &Value,
        tokenizer_config: Option<&Value>,
        model_config: Option<&Value>,
        generation_config: Option<&Value>,
        origin: impl Into<String>,
    ) -> Result<Self, TokenizerError> {
        let origin = origin.into();
        let text = tokenizer_json.to_string();
        let inner: tokenizers::Tokenizer =
            text.parse()
                .map_err(|e: tokenizers::Error| TokenizerError::Load {
                    origin: origin.clone(),
                    message: e.to_string(),
                })?;
        Self::from_parts(
            inner,
            tokenizer_config,
            model_config,
            generation_config,
            origin,
        )
    }

    fn from_parts(
        inner: tokenizers::Tokenizer,
        tok_config: Option<&Value>,
        model_config: Option<&Value>,
        gen_config: Option<&Value>,
        origin: String,
    ) -> Result<Self, TokenizerError> {
        let config = tok_config
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut special = SpecialTokens {
            bos: token_text(config.get("bos_token")),
            eos: token_text(config.get("eos_token")),
            pad: token_text(config.get("pad_token")),
            unk: token_text(config.get("unk_token")),
        };
        let vocab_size = inner.get_vocab_size(true);
        let id_text = |role: &'static str, id: u64| -> Result<String, TokenizerError> {
            u32::try_from(id)
                .ok()
                .and_then(|i| inner.id_to_token(i))
                .ok_or_else(|| TokenizerError::SpecialIdOutOfRange {
                    origin: origin.clone(),
                    role,
                    id,
                    vocab_size,
                })
        };
        // config.json ids fill in whatever tokenizer_config.json did not name.
        let mut extra_eos_ids = Vec::new();
        for cfg in [model_config, gen_config].into_iter().flatten() {
            if special.bos.is_none() {
                if let Some(&id) = token_ids(cfg.get("bos_token_id")).first() {
                    special.bos = Some(id_text("bos", id)?);
                }
            }
            let eos_ids = token_ids(cfg.get("eos_token_id"));
            if special.eos.is_none() {
                if let Some(&id) = eos_ids.first() {
                    special.eos = Some(id_text("eos", id)?);
                }
            }
            for id in eos_ids {
                id_text("eos", id)?;
                extra_eos_ids.push(id as u32);
            }
            if special.pad.is_none() {
                if let Some(&id) = token_ids(cfg.get("pad_token_id")).first() {
                    special.pad = Some(id_text("pad", id)?);
                }
            }
        }
        if tok_config.is_none() && model_config.is_none() {
            let first_present = |names: &[&str]| {
                names
                    .iter()
                    .find(|n| inner.token_to_id(n).is_some())
                    .map(|s| s.to_string())
            };
            special.eos = special.eos.or_else(|| first_present(&KNOWN_EOS));
            special.bos = special.bos.or_else(|| first_present(&KNOWN_BOS));
        }
        let chat_template = chat_template_from_config(&config);
        let tok = Tokenizer {
            inner,
            special,
            extra_eos_ids,
            chat_template,
            config,
            origin,
        };
        tok.check_special()?;
        Ok(tok)
    }

    fn check_special(&self) -> Result<(), TokenizerError> {
        let roles: [(&'static str, &Option<String>); 4] = [
            ("bos", &self.special.bos),
            ("eos", &self.special.eos),
            ("pad", &self.special.pad),
            ("unk", &self.special.unk),
        ];
        for (role, tok) in roles {
            if let Some(t) = tok {
                if self.inner.token_to_id(t).is_none() {
                    return Err(TokenizerError::UnknownSpecialToken {
                        origin: self.origin.clone(),
                        role,
                        token: t.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Replaces the special tokens (e.g. to use `<|eot_id|>` as EOS for a Llama 3 chat model).
    /// Fails if a token is not in the vocabulary.
    pub fn with_special_tokens(mut self, special: SpecialTokens) -> Result<Self, TokenizerError> {
        self.special = special;
        self.check_special()?;
        Ok(self)
    }

    /// Replaces the chat template stored with this tokenizer (saved to tokenizer_config.json).
    pub fn with_chat_template(mut self, template: Option<String>) -> Self {
        self.chat_template = template;
        self
    }

    /// Encodes text to token ids. `add_special_tokens` applies the tokenizer's post-processor
    /// (e.g. Llama 3 prepends BOS); pass `false` for text already rendered by a chat template,
    /// which contains its special tokens literally.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        Ok(self.encode_with_offsets(text, add_special_tokens)?.0)
    }

    /// Encodes text and also returns each token's byte range in `text`, which is how assistant
    /// masks are mapped from characters to tokens.
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<(Vec<u32>, TokenOffsets), TokenizerError> {
        let enc =
            self.inner
                .encode(text, add_special_tokens)
                .map_err(|e| TokenizerError::Encode {
                    origin: self.origin.clone(),
                    message: e.to_string(),
                })?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Decodes ids to text; `skip_special` drops special tokens such as `<|im_end|>`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Decode {
                origin: self.origin.clone(),
                message: e.to_string(),
            })
    }

    /// The id of a token given its exact vocabulary text (e.g. `"<|im_end|>"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary text of a token id, if it exists.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of tokens, added tokens included: the minimum embedding-table size for this tokenizer.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The special tokens by text.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// The BOS id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.special
            .bos
            .as_deref()
            .and_then(|t| self.token_to_id(t))
    }

    /// The primary EOS / end-of-turn id.
    pub fn eos_id(&self) -> Option<u32> {
        self.special
            .eos
            .as_deref()
            .and_then(|t| self.token_to_id(t))
    }

    /// Every id at which generation should stop: the EOS token plus any extra ids listed in
    /// config.json / generation_config.json (Llama 3.1 lists three). Sorted, without duplicates.
    pub fn stop_ids(&self) -> Vec<u32> {
        let set: BTreeSet<u32> = self
            .eos_id()
            .into_iter()
            .chain(self.extra_eos_ids.iter().copied())
            .collect();
        set.into_iter().collect()
    }

    /// The padding id: the PAD token, or EOS when the model defines no PAD (the usual convention).
    pub fn pad_id(&self) -> Option<u32> {
        self.special
            .pad
            .as_deref()
            .and_then(|t| self.token_to_id(t))
            .or_else(|| self.eos_id())
    }

    /// The Jinja chat template that came with the tokenizer, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Where this tokenizer came from (for messages and run manifests).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The underlying `tokenizers` tokenizer, for batch encoding, padding or truncation settings.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The `tokenizer_config.json` document this tokenizer would save (special tokens, chat
    /// template and any other fields it was loaded with).
    pub fn tokenizer_config(&self) -> Value {
        let mut cfg = self.config.clone();
        let mut set = |key: &str, v: &Option<String>| match v {
            Some(t) => {
                cfg.insert(key.to_string(), Value::String(t.clone()));
            }
            None => {
                cfg.remove(key);
            }
        };
        set("bos_token", &self.special.bos);
        set("eos_token", &self.special.eos);
        set("pad_token", &self.special.pad);
        set("unk_token", &self.special.unk);
        match &self.chat_template {
            Some(t) => {
                cfg.insert("chat_template".into(), Value::String(t.clone()));
            }
            None => {
                cfg.remove("chat_template");
            }
        }
        cfg.entry("tokenizer_class")
            .or_insert_with(|| json!("PreTrainedTokenizerFast"));
        cfg.entry("clean_up_tokenization_spaces")
            .or_insert(json!(false));
        let mut added = Map::new();
        let mut decoder: Vec<(u32, AddedToken)> =
            self.inner.get_added_tokens_decoder().into_iter().collect();
        decoder.sort_by_key(|(id, _)| *id);
        for (id, t) in decoder {
            added.insert(
                id.to_string(),
                json!({
                    "content": t.content,
                    "lstrip": t.lstrip,
                    "normalized": t.normalized,
                    "rstrip": t.rstrip,
                    "single_word": t.single_word,
                    "special": t.special,
                }),
            );
        }
        cfg.insert("added_tokens_decoder".into(), Value::Object(added));
        Value::Object(cfg)
    }

    /// The `tokenizer.json` document (the full pipeline and vocabulary) as a string.
    pub fn tokenizer_json(&self) -> Result<String, TokenizerError> {
        self.inner
            .to_string(true)
            .map_err(|e| TokenizerError::Load {
                origin: self.origin.clone(),
                message: format!("serialising: {e}"),
            })
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (created if needed),
    /// atomically, in the Hugging Face layout. Returns the two paths.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<[PathBuf; 2], TokenizerError> {
        let dir = dir.as_ref();
        let tok_path = dir.join("tokenizer.json");
        let cfg_path = dir.join("tokenizer_config.json");
        keel_core::write_atomic(&tok_path, self.tokenizer_json()?.as_bytes())?;
        let cfg = serde_json::to_string_pretty(&self.tokenizer_config()).map_err(|source| {
            keel_core::CoreError::Json {
                what: cfg_path.display().to_string(),
                source,
            }
        })?;
        keel_core::write_atomic(&cfg_path, cfg.as_bytes())?;
        Ok([tok_path, cfg_path])
    }
}

/// `chat_template` is a string, or (newer checkpoints) a list of `{name, template}` objects of
/// which `default` is the chat template.
fn chat_template_from_config(config: &Map<String, Value>) -> Option<String> {
    match config.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => items
            .iter()
            .find(|i| i.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| items.first())
            .and_then(|i| i.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

fn load_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse()
        .map_err(|e: tokenizers::Error| TokenizerError::Load {
            origin: path.display().to_string(),
            message: e.to_string(),
        })
}

/// Largest vocabulary [`train_bpe`] trains (2^20). Why: a model over it holds a vocabulary ×
/// hidden embedding matrix, the largest real vocabularies are ~260k tokens, and the trainer
/// allocates by the requested size; a value like `usize::MAX` would abort or panic in it.
pub const MAX_BPE_VOCAB_SIZE: usize = 1 << 20;

/// Trains a byte-level BPE tokenizer (GPT-2 style, like SmolLM2's) on in-memory texts.
///
/// Why: synthetic task worlds train tiny models from scratch and need a tokenizer fitted to
/// their text, yet everything downstream (chat templates, assistant masks, samplers) should not
/// care whether the model is tiny or real. The result has the ChatML special tokens at ids 0–2
/// ([`CHATML_SPECIAL_TOKENS`]: `<|endoftext|>` = PAD/UNK, `<|im_start|>` = BOS, `<|im_end|>` = EOS)
/// followed by `special_tokens` (duplicates ignored), the 256 byte symbols, then learned merges;
/// its chat template is [`CHATML_TEMPLATE`]. Save it with [`Tokenizer::save`].
///
/// `vocab_size` is an upper bound, at most [`MAX_BPE_VOCAB_SIZE`] (larger is an error): training stops earlier when no pair of tokens occurs at least
/// twice. Deterministic: the same texts, size and special tokens give an identical `tokenizer.json`
/// (the trainer sorts its alphabet and breaks merge-count ties by pair id).
pub fn train_bpe<S: AsRef<str>>(
    texts: &[S],
    vocab_size: usize,
    special_tokens: &[&str],
) -> Result<Tokenizer, TokenizerError> {
    let mut specials: Vec<String> = Vec::new();
    for t in CHATML_SPECIAL_TOKENS.iter().chain(special_tokens.iter()) {
        if t.is_empty() {
            return Err(TokenizerError::Train(
                "special tokens must not be empty".into(),
            ));
        }
        if !specials.iter().any(|s| s == t) {
            specials.push(t.to_string());
        }
    }
    let min_size = specials.len() + ByteLevel::alphabet().len();
    if vocab_size < min_size {
        return Err(TokenizerError::Train(format!(
            "vocab_size {vocab_size} is smaller than the {} special tokens plus 256 byte symbols ({min_size})",
            specials.len()
        )));
    }
    if vocab_size > MAX_BPE_VOCAB_SIZE {
        return Err(TokenizerError::Train(format!(
            "vocab_size {vocab_size} is above the maximum {MAX_BPE_VOCAB_SIZE} (2^20): the largest real vocabularies \
             are ~260k tokens, and the embedding matrix grows with the vocabulary"
        )));
    }
    if texts.is_empty() {
        return Err(TokenizerError::Train("no training texts given".into()));
    }
    let added: Vec<AddedToken> = specials
        .iter()
        .map(|s| AddedToken::from(s.clone(), true))
        .collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(added.clone())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    let mut inner = tokenizers::Tokenizer::new(BPE::default());
    inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    inner.with_decoder(Some(ByteLevel::new(true, true, true)));
    inner.with_post_processor(Some(ByteLevel::new(true, false, true)));
    inner
        .train(
            &mut trainer,
            texts
                .iter()
                .map(|t| t.as_ref().to_string())
                .collect::<Vec<_>>()
                .into_iter(),
        )
        .map_err(|e| TokenizerError::Train(e.to_string()))?;
    inner
        .add_special_tokens(added)
        .map_err(|e| TokenizerError::Train(e.to_string()))?;
    let config = json!({
        "bos_token": CHATML_SPECIAL_TOKENS[1],
        "eos_token": CHATML_SPECIAL_TOKENS[2],
        "pad_token": CHATML_SPECIAL_TOKENS[0],
        "unk_token": CHATML_SPECIAL_TOKENS[0],
        "chat_template": CHATML_TEMPLATE,
        "model_max_length": 2048,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": false,
    });
    Tokenizer::from_parts(
        inner,
        Some(&config),
        None,
        None,
        "trained byte-level BPE".to_string(),
    )
}
