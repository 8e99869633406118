//! Importing llama.cpp GGUF checkpoints as Hugging Face-layout models.
//!
//! Many small instruction-tuned models are easiest to obtain as GGUF files (the SmolLM2 asset
//! Keel's tests use is one). Keel's decoder speaks Hugging Face tensor names and `config.json`, so
//! this module converts: it dequantises every tensor to f32 (any type candle can dequantise:
//! F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 and the K-quants), renames llama.cpp tensors
//! to Hugging Face names, undoes the Q/K row permutation `convert_hf_to_gguf.py` applies to
//! llama-architecture models, and rebuilds `config.json`, `tokenizer.json` and
//! `tokenizer_config.json` (with the chat template) from the metadata.
//!
//! [`read_gguf`] does this in memory, so a `.gguf` path can be loaded directly;
//! [`import_gguf`] writes the result as an ordinary Hugging Face model directory.

mod vocab;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value as GgufValue};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Map, Value};

use crate::config::ModelConfig;
use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::weights::tensor_specs;

/// Errors from reading or importing a GGUF file. File-level variants name the file; metadata and
/// tensor variants name the key or tensor, and [`read_gguf`] prefixes the file name.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or read.
    #[error("reading {path}: {source}")]
    Io {
        /// The GGUF file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid GGUF file (bad magic, truncated header, unknown tensor type).
    #[error("parsing GGUF {path}: {source}")]
    Parse {
        /// The GGUF file.
        path: PathBuf,
        /// The underlying candle error.
        #[source]
        source: candle_core::Error,
    },
    /// A metadata key is missing or has the wrong type.
    #[error("GGUF metadata `{key}`: {reason}")]
    Metadata {
        /// The metadata key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading, dequantising or reshaping a tensor failed.
    #[error("GGUF tensor `{name}`: {reason}")]
    Tensor {
        /// The llama.cpp tensor name.
        name: String,
        /// What failed.
        reason: String,
    },
    /// The file uses an architecture or tokenizer Keel cannot convert.
    #[error("unsupported GGUF content: {0}")]
    Unsupported(String),
    /// The configuration derived from the metadata is invalid or absurd (sizes beyond
    /// [`crate::config::SIZE_LIMITS`], weights larger than this machine's memory).
    #[error("the configuration its metadata describes: {0}")]
    Config(#[source] Box<crate::error::ModelError>),
    /// The tensors the file holds do not match the configuration its metadata describes (missing
    /// blocks or tensors, wrong shapes, data beyond the end of the file): importing it would write
    /// a model that cannot load.
    #[error("{0}")]
    Inventory(String),
    /// The rebuilt tokenizer was rejected.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Writing the imported model failed.
    #[error("writing {path}: {reason}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Any of the above, with the GGUF file it happened in.
    #[error("{path}: {source}")]
    InFile {
        /// The GGUF file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<GgufError>,
    },
}

/// A GGUF checkpoint converted to Hugging Face form, in memory.
#[derive(Debug)]
pub struct GgufModel {
    /// A Hugging Face `config.json` document built from the `{arch}.*` metadata.
    pub config: Value,
    /// Every weight as a contiguous f32 CPU tensor, keyed by Hugging Face name
    /// (`model.layers.0.self_attn.q_proj.weight`, ...), Q/K already un-permuted.
    pub tensors: HashMap<String, Tensor>,
    /// The tokenizer rebuilt from `tokenizer.ggml.*`, with special tokens and chat template.
    pub tokenizer: Tokenizer,
    /// The Jinja chat template from `tokenizer.chat_template`, if present.
    pub chat_template: Option<String>,
    /// `general.architecture` (e.g. `llama`).
    pub architecture: String,
    /// How many tensors of each GGUF storage type the file held (e.g. `Q4_1: 210`).
    pub source_dtypes: BTreeMap<String, usize>,
    /// Approximations made during conversion (skipped tensors, unknown pre-tokenizer names).
    pub warnings: Vec<String>,
}

/// What [`import_gguf`] did, for logs and run manifests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    /// The GGUF file read.
    pub gguf: PathBuf,
    /// The directory written.
    pub out_dir: PathBuf,
    /// `general.architecture`.
    pub architecture: String,
    /// Number of tensors written to model.safetensors.
    pub n_tensors: usize,
    /// Total number of parameters written.
    pub n_parameters: usize,
    /// GGUF storage types of the source tensors and how many of each.
    pub source_dtypes: BTreeMap<String, usize>,
    /// Vocabulary size of the rebuilt tokenizer.
    pub vocab_size: usize,
    /// Whether the output projection shares the embedding matrix (no `output.weight` tensor).
    pub tied_embeddings: bool,
    /// Whether the file had a chat template.
    pub has_chat_template: bool,
    /// The files written (model.safetensors, config.json, tokenizer.json, tokenizer_config.json).
    pub files: Vec<PathBuf>,
    /// Approximations made during conversion.
    pub warnings: Vec<String>,
}

pub(crate) fn value_i64(v: &GgufValue) -> Option<i64> {
    Some(match v {
        GgufValue::U8(x) => *x as i64,
        GgufValue::I8(x) => *x as i64,
        GgufValue::U16(x) => *x as i64,
        GgufValue::I16(x) => *x as i64,
        GgufValue::U32(x) => *x as i64,
        GgufValue::I32(x) => *x as i64,
        GgufValue::U64(x) => i64::try_from(*x).ok()?,
        GgufValue::I64(x) => *x,
        _ => return None,
    })
}

pub(crate) fn meta_u64(
    md: &HashMap<String, GgufValue>,
    key: &str,
) -> Result<Option<u64>, GgufError> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => value_i64(v)
            .and_then(|x| u64::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| GgufError::Metadata {
                key: key.into(),
                reason: format!("expected a non-negative integer, found {v:?}"),
            }),
    }
}

/// Reads a float and rounds it through its shortest f32 representation, so that an f32 `1e-5`
/// stored in GGUF becomes the f64 `1e-5` a Hugging Face config would hold, not `9.99999974e-6`.
pub(crate) fn meta_f64(
    md: &HashMap<String, GgufValue>,
    key: &str,
) -> Result<Option<f64>, GgufError> {
    match md.get(key) {
        None => Ok(None),
        Some(GgufValue::F32(x)) => Ok(format!("{x}").parse::<f64>().ok()),
        Some(GgufValue::F64(x)) => Ok(Some(*x)),
        Some(v) => value_i64(v)
            .map(|x| Some(x as f64))
            .ok_or_else(|| GgufError::Metadata {
                key: key.into(),
                reason: format!("expected a number, found {v:?}"),
            }),
    }
}

pub(crate) fn meta_str<'a>(
    md: &'a HashMap<String, GgufValue>,
    key: &str,
) -> Result<Option<&'a str>, GgufError> {
    match md.get(key) {
        None => Ok(None),
        Some(GgufValue::String(s)) => Ok(Some(s.as_str())),
        Some(v) => Err(GgufError::Metadata {
            key: key.into(),
            reason: format!("expected a string, found {:?}", v.value_type()),
        }),
    }
}

pub(crate) fn meta_bool(
    md: &HashMap<String, GgufValue>,
    key: &str,
) -> Result<Option<bool>, GgufError> {
    match md.get(key) {
        None => Ok(None),
        Some(GgufValue::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(GgufError::Metadata {
            key: key.into(),
            reason: format!("expected a bool, found {:?}", v.value_type()),
        }),
    }
}

fn required_u64(md: &HashMap<String, GgufValue>, key: &str) -> Result<u64, GgufError> {
    meta_u64(md, key)?.ok_or_else(|| GgufError::Metadata {
        key: key.into(),
        reason: "missing".into(),
    })
}

/// Architectures whose tensors can be renamed to a Keel/Hugging Face decoder.
const SUPPORTED_ARCHS: [&str; 3] = ["llama", "qwen2", "qwen3"];

/// Maps a llama.cpp tensor name to its Hugging Face name (Llama/Qwen2/Qwen3 layout), or `None`
/// for tensors without a Hugging Face counterpart (e.g. `rope_freqs.weight`).
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    let (stem, suffix) = match name.rsplit_once('.') {
        Some((s, suf @ ("weight" | "bias"))) => (s, suf),
        _ => return None,
    };
    let mapped = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let hf = match part {
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "attn_q_norm" => "self_attn.q_norm",
                "attn_k_norm" => "self_attn.k_norm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf}")
        }
    };
    Some(format!("{mapped}.{suffix}"))
}

fn tensor_err(name: &str) -> impl Fn(candle_core::Error) -> GgufError + '_ {
    move |e| GgufError::Tensor {
        name: name.to_string(),
        reason: e.to_string(),
    }
}

/// Regroups the rows of each head: views them as `[n_head, a, b, cols]` and transposes to
/// `[n_head, b, a, cols]`, where `(a, b)` is `(2, head_dim/2)` when `hf_to_gguf` and
/// `(head_dim/2, 2)` otherwise.
fn regroup_rows(
    w: &Tensor,
    n_head: usize,
    hf_to_gguf: bool,
    name: &str,
) -> Result<Tensor, GgufError> {
    let dims = w.dims().to_vec();
    let rows = *dims.first().ok_or_else(|| GgufError::Tensor {
        name: name.into(),
        reason: "scalar tensor".into(),
    })?;
    // `%` rather than `is_multiple_of`, which needs Rust 1.87 (the workspace declares 1.85).
    #[allow(clippy::manual_is_multiple_of)]
    let uneven = n_head == 0 || rows % n_head != 0 || (rows / n_head) % 2 != 0;
    if uneven {
        return Err(GgufError::Tensor {
            name: name.into(),
            reason: format!("{rows} rows cannot be split into {n_head} heads of even size"),
        });
    }
    let half = rows / n_head / 2;
    let cols: usize = dims[1..].iter().product();
    let (a, b) = if hf_to_gguf { (2, half) } else { (half, 2) };
    w.reshape((n_head, a, b, cols))
        .and_then(|t| t.transpose(1, 2))
        .and_then(|t| t.contiguous())
        .and_then(|t| t.reshape(dims.as_slice()))
        .map_err(tensor_err(name))
}

/// Applies llama.cpp's Q/K row permutation (what `convert_hf_to_gguf.py`'s `permute` does to
/// `q_proj`/`k_proj` of llama-architecture models): rows viewed as `[n_head, 2, head_dim/2]`
/// are transposed to `[n_head, head_dim/2, 2]`, turning Hugging Face's half-split rotary layout
/// into GGML's interleaved-pair layout. Works on weights `[rows, cols]` and biases `[rows]`.
/// Exposed for tests and for exporting back to GGUF.
pub fn permute_qk(w: &Tensor, n_head: usize) -> Result<Tensor, GgufError> {
    regroup_rows(w, n_head, true, "permute_qk")
}

/// The exact inverse of [`permute_qk`]: rows viewed as `[n_head, head_dim/2, 2]` are transposed
/// back to `[n_head, 2, head_dim/2]`, restoring Hugging Face's `q_proj`/`k_proj` row order so the
/// weights work with rotate-half RoPE. Use `n_head` = attention heads for Q and KV heads for K.
pub fn unpermute_qk(w: &Tensor, n_head: usize) -> Result<Tensor, GgufError> {
    regroup_rows(w, n_head, false, "unpermute_qk")
}

/// Builds a Hugging Face `config.json` from GGUF metadata. `vocab_size` is used when the
/// metadata lacks `{arch}.vocab_size`; `tied` says whether the file has no `output.weight`.
pub fn config_from_metadata(
    md: &HashMap<String, GgufValue>,
    vocab_size: usize,
    tied: bool,
) -> Result<Value, GgufError> {
    let arch = meta_str(md, "general.architecture")?.ok_or_else(|| GgufError::Metadata {
        key: "general.architecture".into(),
        reason: "missing".into(),
    })?;
    if !SUPPORTED_ARCHS.contains(&arch) {
        return Err(GgufError::Unsupported(format!(
            "general.architecture = `{arch}` (supported: {})",
            SUPPORTED_ARCHS.join(", ")
        )));
    }
    let k = |s: &str| format!("{arch}.{s}");
    let hidden = required_u64(md, &k("embedding_length"))?;
    let n_head = required_u64(md, &k("attention.head_count"))?;
    let n_kv = meta_u64(md, &k("attention.head_count_kv"))?.unwrap_or(n_head);
    let layers = required_u64(md, &k("block_count"))?;
    let ffn = required_u64(md, &k("feed_forward_length"))?;
    if n_head == 0 || n_kv == 0 || n_head % n_kv != 0 {
        return Err(GgufError::Metadata {
            key: k("attention.head_count_kv"),
            reason: format!("{n_kv} KV heads do not divide {n_head} attention heads"),
        });
    }
    let head_dim = match meta_u64(md, &k("attention.key_length"))? {
        Some(d) => d,
        None if hidden % n_head == 0 => hidden / n_head,
        None => {
            return Err(GgufError::Metadata {
                key: k("attention.head_count"),
                reason: format!("{n_head} heads do not divide embedding_length {hidden}"),
            })
        }
    };
    let vocab = meta_u64(md, &k("vocab_size"))?.unwrap_or(vocab_size as u64);
    let ctx = meta_u64(md, &k("context_length"))?.unwrap_or(2048);
    let eps = meta_f64(md, &k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6);
    let theta = meta_f64(md, &k("rope.freq_base"))?.unwrap_or(10000.0);

    let (class, model_type) = match arch {
        "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
        "qwen3" => ("Qwen3ForCausalLM", "qwen3"),
        _ => ("LlamaForCausalLM", "llama"),
    };
    let mut cfg = Map::new();
    cfg.insert("architectures".into(), json!([class]));
    cfg.insert("model_type".into(), json!(model_type));
    cfg.insert("hidden_size".into(), json!(hidden));
    cfg.insert("intermediate_size".into(), json!(ffn));
    cfg.insert("num_hidden_layers".into(), json!(layers));
    cfg.insert("num_attention_heads".into(), json!(n_head));
    cfg.insert("num_key_value_heads".into(), json!(n_kv));
    cfg.insert("head_dim".into(), json!(head_dim));
    cfg.insert("max_position_embeddings".into(), json!(ctx));
    cfg.insert("rms_norm_eps".into(), json!(eps));
    cfg.insert("rope_theta".into(), json!(theta));
    cfg.insert("vocab_size".into(), json!(vocab));
    cfg.insert("tie_word_embeddings".into(), json!(tied));
    cfg.insert("hidden_act".into(), json!("silu"));
    cfg.insert("attention_bias".into(), json!(arch == "qwen2"));
    if arch == "llama" {
        cfg.insert("mlp_bias".into(), json!(false));
    }
    if arch == "qwen2" || arch == "qwen3" {
        cfg.insert("use_sliding_window".into(), json!(false));
    }
    cfg.insert("initializer_range".into(), json!(0.02));
    cfg.insert("torch_dtype".into(), json!("float32"));
    cfg.insert("use_cache".into(), json!(true));
    let rope_scaling = match meta_str(md, &k("rope.scaling.type"))? {
        None | Some("none") => Value::Null,
        Some(kind) => {
            let factor = meta_f64(md, &k("rope.scaling.factor"))?.unwrap_or(1.0);
            let mut rs = json!({"type": kind, "rope_type": kind, "factor": factor});
            if let Some(orig) = meta_u64(md, &k("rope.scaling.original_context_length"))? {
                rs["original_max_position_embeddings"] = json!(orig);
            }
            rs
        }
    };
    cfg.insert("rope_scaling".into(), rope_scaling);
    for (hf, key) in [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(id) = meta_u64(md, key)? {
            cfg.insert(hf.into(), json!(id));
        }
    }
    Ok(Value::Object(cfg))
}

fn open_content(path: &Path) -> Result<(gguf_file::Content, BufReader<File>), GgufError> {
    let file = File::open(path).map_err(|source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader).map_err(|source| GgufError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((content, reader))
}

/// Reads a GGUF file into memory in Hugging Face form: config.json document, f32 tensors with
/// Hugging Face names (Q/K un-permuted for llama), tokenizer and chat template. This is what lets
/// a `.gguf` path be used wherever a model directory is accepted.
pub fn read_gguf(path: impl AsRef<Path>) -> Result<GgufModel, GgufError> {
    let path = path.as_ref();
    read_gguf_inner(path).map_err(|e| match e {
        e @ (GgufError::Io { .. } | GgufError::Parse { .. }) => e,
        other => GgufError::InFile {
            path: path.to_path_buf(),
            source: Box::new(other),
        },
    })
}

/// Reads only the tokenizer (with special tokens and chat template) from a GGUF file, without
/// touching the weights: cheap, for formatting datasets or talking to a remote server that
/// serves the same GGUF.
pub fn read_gguf_tokenizer(path: impl AsRef<Path>) -> Result<Tokenizer, GgufError> {
    let path = path.as_ref();
    let inner = || -> Result<Tokenizer, GgufError> {
        let (content, _) = open_content(path)?;
        let md = &content.metadata;
        let arch = meta_str(md, "general.architecture")?
            .unwrap_or_default()
            .to_string();
        let vocab =
            vocab::vocab_from_metadata(md, meta_u64(md, &format!("{arch}.context_length"))?)?;
        Ok(Tokenizer::from_json(
            &vocab.tokenizer_json,
            Some(&vocab.tokenizer_config),
            None,
            None,
            format!("GGUF vocabulary of {}", path.display()),
        )?)
    };
    inner().map_err(|e| match e {
        e @ (GgufError::Io { .. } | GgufError::Parse { .. }) => e,
        other => GgufError::InFile {
            path: path.to_path_buf(),
            source: Box::new(other),
        },
    })
}

fn read_gguf_inner(path: &Path) -> Result<GgufModel, GgufError> {
    let (content, mut reader) = open_content(path)?;
    let md = &content.metadata;
    let arch = meta_str(md, "general.architecture")?
        .unwrap_or_default()
        .to_string();
    let mut warnings = Vec::new();

    let vocab = vocab::vocab_from_metadata(md, meta_u64(md, &format!("{arch}.context_length"))?)?;
    warnings.extend(vocab.warnings);
    let n_tokens = vocab.tokenizer_json["model"]["vocab"]
        .as_object()
        .map_or(0, Map::len);
    let tied = !content.tensor_infos.contains_key("output.weight");
    let config = config_from_metadata(md, n_tokens, tied)?;
    check_inventory(&content, &config, &arch, file_len(path, &reader)?)?;
    let tokenizer = Tokenizer::from_json(
        &vocab.tokenizer_json,
        Some(&vocab.tokenizer_config),
        Some(&config),
        None,
        format!("GGUF vocabulary of {}", path.display()),
    )?;
    let chat_template = tokenizer.chat_template().map(str::to_string);

    let n_head = config["num_attention_heads"].as_u64().unwrap_or(0) as usize;
    let n_kv = config["num_key_value_heads"].as_u64().unwrap_or(0) as usize;
    let permuted = arch == "llama";

    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = HashMap::with_capacity(names.len());
    let mut source_dtypes = BTreeMap::new();
    for name in names {
        let Some(hf) = gguf_to_hf_name(name) else {
            if name == "rope_freqs.weight" {
                warnings.push(
                    "skipped tensor `rope_freqs.weight`: the model uses per-dimension RoPE \
                     frequency factors (Llama 3.1+ `rope_scaling` of type llama3) that GGUF does \
                     not describe; copy `rope_scaling` from the original config.json into the \
                     imported one, or logits will differ from the original model"
                        .to_string(),
                );
            } else {
                warnings.push(format!(
                    "skipped tensor `{name}`: no Hugging Face counterpart"
                ));
            }
            continue;
        };
        let q = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(tensor_err(name))?;
        *source_dtypes.entry(format!("{:?}", q.dtype())).or_insert(0) += 1;
        let mut t = q.dequantize(&Device::Cpu).map_err(tensor_err(name))?;
        if t.dtype() != DType::F32 {
            t = t.to_dtype(DType::F32).map_err(tensor_err(name))?;
        }
        if permuted {
            if name.starts_with("blk.") && name.contains(".attn_q.") {
                t = unpermute_qk(&t, n_head).map_err(|e| with_name(e, name))?;
            } else if name.starts_with("blk.") && name.contains(".attn_k.") {
                t = unpermute_qk(&t, n_kv).map_err(|e| with_name(e, name))?;
            }
        }
        tensors.insert(hf, t);
    }
    for w in &warnings {
        tracing::warn!(gguf = %path.display(), "{w}");
    }
    if !tensors.contains_key("model.embed_tokens.weight") {
        return Err(GgufError::Tensor {
            name: "token_embd.weight".into(),
            reason: "missing from the file".into(),
        });
    }
    Ok(GgufModel {
        config,
        tensors,
        tokenizer,
        chat_template,
        architecture: arch,
        source_dtypes,
        warnings,
    })
}

/// The length of the GGUF file in bytes.
fn file_len(path: &Path, reader: &BufReader<File>) -> Result<u64, GgufError> {
    reader.get_ref().metadata().map(|m| m.len()).map_err(|source| GgufError::Io { path: path.to_path_buf(), source })
}

/// Checks, before any tensor is read, that the file's tensors are the ones the configuration
/// derived from its metadata needs: the metadata's sizes are sane ([`ModelConfig::validate`]),
/// the `blk.N` tensors cover exactly `block_count` blocks, every tensor the decoder needs is
/// present with the shape the configuration implies, and every tensor's data lies inside the
/// file.
///
/// Why: a file claiming 100,000 blocks (or with dimensions that contradict its metadata) used to
/// be imported tensor by tensor and written out as a model directory that then failed to load.
fn check_inventory(content: &gguf_file::Content, config: &Value, arch: &str, file_len: u64) -> Result<(), GgufError> {
    let blocks = config["num_hidden_layers"].as_u64().unwrap_or(0);
    let mut present: Vec<u64> = content
        .tensor_infos
        .keys()
        .filter_map(|n| n.strip_prefix("blk.")?.split_once('.')?.0.parse::<u64>().ok())
        .collect();
    present.sort_unstable();
    present.dedup();
    let contiguous = present.iter().enumerate().all(|(i, &b)| i as u64 == b);
    if present.len() as u64 != blocks || !contiguous {
        let have = match (present.first(), present.last()) {
            (Some(a), Some(b)) => format!("{} blocks (blk.{a} … blk.{b})", present.len()),
            _ => "no blk.* tensors".to_string(),
        };
        return Err(GgufError::Inventory(format!(
            "metadata `{arch}.block_count` says {blocks} blocks, but the file has tensors for {have}"
        )));
    }
    let cfg = ModelConfig::from_json(config).map_err(|e| GgufError::Config(Box::new(e)))?;
    let by_hf: HashMap<String, &String> =
        content.tensor_infos.keys().filter_map(|n| gguf_to_hf_name(n).map(|hf| (hf, n))).collect();
    for spec in tensor_specs(&cfg) {
        let gguf_name = by_hf.get(&spec.name).ok_or_else(|| {
            GgufError::Inventory(format!(
                "tensor for `{}` (shape {:?}) is missing from the file, though the metadata implies it",
                spec.name, spec.shape
            ))
        })?;
        let dims = content.tensor_infos[*gguf_name].shape.dims();
        if dims != spec.shape.as_slice() {
            return Err(GgufError::Inventory(format!(
                "tensor `{gguf_name}` has shape {dims:?}, but the metadata implies {:?} for `{}`",
                spec.shape, spec.name
            )));
        }
    }
    for (name, info) in &content.tensor_infos {
        let elems = info.shape.dims().iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let block = info.ggml_dtype.block_size() as u64;
        let bytes = elems
            .filter(|e| e % block == 0)
            .and_then(|e| (e / block).checked_mul(info.ggml_dtype.type_size() as u64));
        let end = bytes.and_then(|b| content.tensor_data_offset.checked_add(info.offset)?.checked_add(b));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(GgufError::Inventory(format!(
                    "tensor `{name}` ({:?}, shape {:?}) does not fit in the file: it needs {} bytes at offset {}, \
                     and the file has {file_len} bytes",
                    info.ggml_dtype,
                    info.shape.dims(),
                    bytes.map_or("more than 2^64".to_string(), |b| b.to_string()),
                    content.tensor_data_offset.saturating_add(info.offset),
                )))
            }
        }
    }
    Ok(())
}

fn with_name(e: GgufError, name: &str) -> GgufError {
    match e {
        GgufError::Tensor { reason, .. } => GgufError::Tensor {
            name: name.to_string(),
            reason,
        },
        other => other,
    }
}

/// Converts a GGUF file into a Hugging Face model directory `out_dir` (created if needed):
/// `model.safetensors` (f32, Hugging Face names), `config.json`, `tokenizer.json` and
/// `tokenizer_config.json` (with the chat template). Files are written atomically, so an
/// interrupted import never leaves a half-written file under its final name.
pub fn import_gguf(
    path: impl AsRef<Path>,
    out_dir: impl AsRef<Path>,
) -> Result<ImportReport, GgufError> {
    let path = path.as_ref();
    let out_dir = out_dir.as_ref();
    let model = read_gguf(path)?;
    std::fs::create_dir_all(out_dir).map_err(|e| GgufError::Write {
        path: out_dir.to_path_buf(),
        reason: e.to_string(),
    })?;

    let weights = out_dir.join("model.safetensors");
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    let mut entries: Vec<(String, Tensor)> = model.tensors.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let n_tensors = entries.len();
    let mut views = Vec::with_capacity(n_tensors);
    let mut n_parameters = 0usize;
    // Each tensor is dropped once converted, so peak memory stays near one copy of the weights.
    for (name, t) in entries {
        let data: Vec<f32> = t
            .flatten_all()
            .and_then(|x| x.to_vec1())
            .map_err(tensor_err(&name))?;
        n_parameters += data.len();
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        views.push((name, t.dims().to_vec(), bytes));
    }
    let tensor_views: Vec<(String, safetensors::tensor::TensorView<'_>)> = views
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| GgufError::Write {
                    path: weights.clone(),
                    reason: format!("tensor {name}: {e}"),
                })
        })
        .collect::<Result<_, _>>()?;
    // safetensors writes a temporary file next to the target and renames it into place.
    safetensors::serialize_to_file(tensor_views, Some(metadata), &weights).map_err(|e| {
        GgufError::Write {
            path: weights.clone(),
            reason: e.to_string(),
        }
    })?;
    drop(views);

    let config_path = out_dir.join("config.json");
    let config_text =
        serde_json::to_string_pretty(&model.config).map_err(|e| GgufError::Write {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
    keel_core::write_atomic(&config_path, config_text.as_bytes()).map_err(|e| {
        GgufError::Write {
            path: config_path.clone(),
            reason: e.to_string(),
        }
    })?;
    let [tok_path, tok_cfg_path] = model.tokenizer.save(out_dir)?;
    // The temporary file behind model.safetensors is created owner-only (0600); give it the
    // same permissions as the other files, which follow the user's umask.
    if let Ok(meta) = std::fs::metadata(&config_path) {
        std::fs::set_permissions(&weights, meta.permissions()).map_err(|e| GgufError::Write {
            path: weights.clone(),
            reason: e.to_string(),
        })?;
    }

    Ok(ImportReport {
        gguf: path.to_path_buf(),
        out_dir: out_dir.to_path_buf(),
        architecture: model.architecture,
        n_tensors,
        n_parameters,
        source_dtypes: model.source_dtypes,
        vocab_size: model.tokenizer.vocab_size(),
        tied_embeddings: model.config["tie_word_embeddings"]
            .as_bool()
            .unwrap_or(false),
        has_chat_template: model.chat_template.is_some(),
        files: vec![weights, config_path, tok_path, tok_cfg_path],
        warnings: model.warnings,
    })
}
