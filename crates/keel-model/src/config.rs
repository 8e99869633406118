//! Hugging Face `config.json` for the Llama family, parsed by Keel itself.
//!
//! candle-transformers' config structs each understand one architecture and fail on configs written
//! by transformers 5 (which moved `rope_theta` into `rope_parameters` and renamed `torch_dtype` to
//! `dtype`). [`ModelConfig`] reads Llama / SmolLM2, Qwen2, Qwen3 and Mistral configs in either style,
//! keeps every field it does not interpret so that writing the config back loses nothing, and
//! provides the tiny presets used for from-scratch experiments.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{ModelError, ModelResult};

/// The decoder variant; decides bias and normalisation details the config does not spell out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// `LlamaForCausalLM` (also SmolLM2): optional `attention_bias` on q/k/v/o and `mlp_bias`.
    Llama,
    /// `Qwen2ForCausalLM`: q/k/v projections always carry a bias, o_proj never does.
    Qwen2,
    /// `Qwen3ForCausalLM`: per-head RMSNorm on q and k before RoPE, explicit `head_dim`.
    Qwen3,
    /// `MistralForCausalLM`: Llama layout without biases (sliding window ignored, see [`ModelConfig`]).
    Mistral,
}

impl Architecture {
    /// The `model_type` string Hugging Face uses.
    pub fn model_type(&self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Mistral => "mistral",
        }
    }

    /// The `architectures[0]` class name Hugging Face uses.
    pub fn class_name(&self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
        }
    }

    /// The variant of a Hugging Face `model_type` (aliases such as `smollm2` included).
    pub fn from_model_type(s: &str) -> Option<Self> {
        match s {
            "llama" | "smollm" | "smollm2" => Some(Architecture::Llama),
            "qwen2" => Some(Architecture::Qwen2),
            "qwen3" => Some(Architecture::Qwen3),
            "mistral" => Some(Architecture::Mistral),
            _ => None,
        }
    }

    fn from_class_name(s: &str) -> Option<Self> {
        match s {
            "LlamaForCausalLM" => Some(Architecture::Llama),
            "Qwen2ForCausalLM" => Some(Architecture::Qwen2),
            "Qwen3ForCausalLM" => Some(Architecture::Qwen3),
            "MistralForCausalLM" => Some(Architecture::Mistral),
            _ => None,
        }
    }
}

/// RoPE frequency scaling, as far as Keel implements it.
///
/// Supported: `default` (none), `linear` (positions divided by `factor`, i.e. every inverse
/// frequency divided by `factor`) and `llama3` (Llama 3.1 wavelength-dependent interpolation).
/// `dynamic` NTK scaling is rejected: Hugging Face recomputes its frequencies from the current
/// sequence length, which makes cached keys inconsistent with a full forward, and within
/// `max_position_embeddings` it equals `default` anyway. `yarn`/`longrope` are rejected too.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Position interpolation: `inv_freq / factor`.
    Linear {
        /// Interpolation factor (> 0).
        factor: f64,
    },
    /// Llama 3.1 scaling of low-frequency components.
    Llama3 {
        /// Overall factor (8 for Llama 3.1).
        factor: f64,
        /// Wavelength boundary below which frequencies are fully scaled.
        low_freq_factor: f64,
        /// Wavelength boundary above which frequencies are kept.
        high_freq_factor: f64,
        /// Context length of the unscaled pre-training run.
        original_max_position_embeddings: usize,
    },
}

/// A Llama-family decoder configuration with the semantics Keel's decoder needs.
///
/// Fields not interpreted here (`torch_dtype`, `use_cache`, `sliding_window`, vendor extras) are
/// kept in [`ModelConfig::extra`] and written back by [`ModelConfig::to_json`], so a checkpoint
/// saved by Keel loads in transformers with the same behaviour. Sliding-window attention
/// (Mistral, some Qwen2) is not implemented: results equal Hugging Face only for sequences no
/// longer than the window, which covers every CPU-scale use.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Which decoder variant.
    pub architecture: Architecture,
    /// Vocabulary size (rows of the embedding and of `lm_head`).
    pub vocab_size: usize,
    /// Residual stream width.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when smaller than the query heads).
    pub num_key_value_heads: usize,
    /// Per-head width (explicit in Qwen3 configs, otherwise `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// Longest context the model was trained for (informational; RoPE is computed on the fly).
    pub max_position_embeddings: usize,
    /// Epsilon inside every RMSNorm.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// Whether `lm_head` reuses the embedding matrix (no `lm_head.weight` tensor then).
    pub tie_word_embeddings: bool,
    /// Bias on the q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the o projection.
    pub o_bias: bool,
    /// Bias on gate/up/down projections (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Per-head RMSNorm on queries and keys (Qwen3).
    pub qk_norm: bool,
    /// Standard deviation of the normal initialisation of matrices (Hugging Face `initializer_range`).
    pub initializer_range: f64,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (a config may list several; generation stops on any).
    pub eos_token_ids: Vec<u32>,
    /// Padding token id, if the config names one.
    pub pad_token_id: Option<u32>,
    /// Every other field of the original config.json, preserved for write-back.
    pub extra: Map<String, Value>,
}

/// Names of the tiny presets, smallest first.
pub const PRESETS: &[&str] = &["tiny-300k", "tiny-1m", "tiny-3m", "tiny-8m", "tiny-20m"];

// Keys this module interprets; everything else goes to `extra`.
const KNOWN: &[&str] = &[
    "model_type",
    "architectures",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "hidden_act",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
];

fn get_usize(o: &Map<String, Value>, k: &str) -> ModelResult<Option<usize>> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|x| Some(x as usize))
            .ok_or_else(|| ModelError::config(k, format!("expected a non-negative integer, got {v}"))),
    }
}

fn req_usize(o: &Map<String, Value>, k: &str) -> ModelResult<usize> {
    get_usize(o, k)?.ok_or_else(|| ModelError::config(k, "missing"))
}

fn get_f64(o: &Map<String, Value>, k: &str) -> ModelResult<Option<f64>> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ModelError::config(k, format!("expected a number, got {v}"))),
    }
}

fn get_bool(o: &Map<String, Value>, k: &str) -> ModelResult<Option<bool>> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| ModelError::config(k, format!("expected a boolean, got {v}"))),
    }
}

fn get_u32(o: &Map<String, Value>, k: &str) -> ModelResult<Option<u32>> {
    match get_usize(o, k)? {
        None => Ok(None),
        Some(x) => u32::try_from(x)
            .map(Some)
            .map_err(|_| ModelError::config(k, format!("{x} does not fit in u32"))),
    }
}

fn parse_rope(
    o: &Map<String, Value>,
    field: &str,
    default_max: usize,
) -> ModelResult<Option<RopeScaling>> {
    let kind = o
        .get("rope_type")
        .or_else(|| o.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let factor = || -> ModelResult<f64> {
        let f = get_f64(o, "factor")?
            .ok_or_else(|| ModelError::config(format!("{field}.factor"), "missing"))?;
        if f <= 0.0 || !f.is_finite() {
            return Err(ModelError::config(format!("{field}.factor"), format!("must be > 0, got {f}")));
        }
        Ok(f)
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear { factor: factor()? })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: get_f64(o, "low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: get_f64(o, "high_freq_factor")?.unwrap_or(4.0),
            original_max_position_embeddings: get_usize(o, "original_max_position_embeddings")?
                .unwrap_or(default_max),
        })),
        other => Err(ModelError::Unsupported(format!(
            "{field} type `{other}` (Keel implements default, linear and llama3)"
        ))),
    }
}

/// The decoder variant a config.json names (`model_type`, else `architectures[0]`).
fn architecture_of(o: &Map<String, Value>) -> ModelResult<Architecture> {
    let arch_from_type = o.get("model_type").and_then(Value::as_str).map(|s| (s, Architecture::from_model_type(s)));
    let arch_from_class = o
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .map(|s| (s, Architecture::from_class_name(s)));
    match (arch_from_type, arch_from_class) {
        (Some((_, Some(a))), _) | (_, Some((_, Some(a)))) => Ok(a),
        (Some((t, None)), _) => Err(ModelError::Unsupported(format!(
            "model_type `{t}` (Keel's decoder supports llama, qwen2, qwen3, mistral)"
        ))),
        (None, Some((c, None))) => Err(ModelError::Unsupported(format!("architecture `{c}`"))),
        (None, None) => Err(ModelError::config("model_type", "missing (and no `architectures` list)")),
    }
}

/// `(num_attention_heads, num_key_value_heads, head_dim)`: KV heads default to the query heads,
/// `head_dim` to `hidden_size / num_attention_heads`.
#[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; the workspace MSRV is 1.85
fn attention_shape(o: &Map<String, Value>, hidden_size: usize) -> ModelResult<(usize, usize, usize)> {
    let num_attention_heads = req_usize(o, "num_attention_heads")?;
    if num_attention_heads == 0 {
        return Err(ModelError::config("num_attention_heads", "must be > 0"));
    }
    let num_key_value_heads = get_usize(o, "num_key_value_heads")?.unwrap_or(num_attention_heads);
    if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
        return Err(ModelError::config(
            "num_key_value_heads",
            format!("{num_key_value_heads} must divide num_attention_heads {num_attention_heads}"),
        ));
    }
    let head_dim = match get_usize(o, "head_dim")? {
        Some(d) => d,
        None => {
            if hidden_size % num_attention_heads != 0 {
                return Err(ModelError::config(
                    "head_dim",
                    format!(
                        "missing, and hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}"
                    ),
                ));
            }
            hidden_size / num_attention_heads
        }
    };
    if head_dim % 2 != 0 {
        return Err(ModelError::config("head_dim", format!("RoPE needs an even head_dim, got {head_dim}")));
    }
    Ok((num_attention_heads, num_key_value_heads, head_dim))
}

/// RoPE base and scaling; transformers 5 keeps both in `rope_parameters`, transformers 4 in
/// `rope_theta` and `rope_scaling` (which wins when both are present).
fn rope_of(o: &Map<String, Value>, max_position_embeddings: usize) -> ModelResult<(f64, Option<RopeScaling>)> {
    let (mut rope_theta, mut rope_scaling) = (get_f64(o, "rope_theta")?, None);
    if let Some(Value::Object(rp)) = o.get("rope_parameters") {
        if let Some(t) = get_f64(rp, "rope_theta")? {
            rope_theta = Some(t);
        }
        rope_scaling = parse_rope(rp, "rope_parameters", max_position_embeddings)?;
    }
    if let Some(Value::Object(rs)) = o.get("rope_scaling") {
        rope_scaling = parse_rope(rs, "rope_scaling", max_position_embeddings)?;
    }
    Ok((rope_theta.unwrap_or(10_000.0), rope_scaling))
}

/// `eos_token_id` as a list (a config may give one id or several).
fn eos_ids(o: &Map<String, Value>) -> ModelResult<Vec<u32>> {
    match o.get("eos_token_id") {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| ModelError::config("eos_token_id", format!("bad id {x}")))
            })
            .collect(),
        Some(_) => Ok(get_u32(o, "eos_token_id")?.into_iter().collect()),
    }
}

/// Upper bounds on the sizes a config.json may declare, checked by [`ModelConfig::validate`]
/// before anything is allocated.
///
/// Why: every one of these numbers sizes an allocation (the embedding, each layer's weights, the
/// per-layer inventory, RoPE tables), and a typo or a hostile file (`num_hidden_layers: 10000000`)
/// used to run the machine out of memory instead of giving an error. The bounds are sanity
/// limits, several times the largest published open models (vocabularies ≤ 262,144, widths ≤
/// 16,384, SwiGLU ≤ 53,248, ≤ 126 layers, ≤ 128 heads, contexts ≤ 10 M), so no real checkpoint
/// meets them; whether the weights fit in this machine's memory is checked separately.
pub const SIZE_LIMITS: &[(&str, usize)] = &[
    ("vocab_size", 1 << 22),
    ("hidden_size", 1 << 16),
    ("intermediate_size", 1 << 19),
    ("num_hidden_layers", 1 << 12),
    ("num_attention_heads", 1 << 12),
    ("num_key_value_heads", 1 << 12),
    ("head_dim", 1 << 12),
    ("max_position_embeddings", 1 << 26),
];

/// Bytes per weight in the smallest dtype Keel computes in (bf16/f16): the memory estimate of
/// [`ModelConfig::validate`] uses it, so a configuration is refused only when its weights could
/// not fit in memory in any dtype.
pub const MIN_BYTES_PER_PARAMETER: u128 = 2;

/// Total physical memory of this machine in bytes (`MemTotal` of `/proc/meminfo`), or `None`
/// where that is unknown (then only [`SIZE_LIMITS`] bound a configuration).
pub fn physical_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.trim_start_matches("MemTotal:").trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

impl ModelConfig {
    /// Parses a config.json text (transformers 4 or 5 style).
    pub fn from_json_str(text: &str) -> ModelResult<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|source| ModelError::Json { what: "parsing config.json".into(), source })?;
        Self::from_json(&v)
    }

    /// Reads and parses `config.json` at `path`.
    pub fn from_file(path: &Path) -> ModelResult<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io("reading", path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            what: format!("parsing {}", path.display()),
            source,
        })?;
        Self::from_json(&v).map_err(|e| ModelError::InFile { path: path.to_path_buf(), source: Box::new(e) })
    }

    /// Interprets a parsed config.json value, then checks it with [`ModelConfig::validate`]
    /// (sizes within [`SIZE_LIMITS`], weights that fit in memory) before anything is allocated.
    pub fn from_json(v: &Value) -> ModelResult<Self> {
        let o = v
            .as_object()
            .ok_or_else(|| ModelError::config("<root>", "config.json must be a JSON object"))?;
        // Multimodal wrappers nest the language model under text_config.
        if let (None, Some(Value::Object(_))) = (o.get("hidden_size"), o.get("text_config")) {
            return Self::from_json(&o["text_config"]);
        }
        let architecture = architecture_of(o)?;
        let hidden_size = req_usize(o, "hidden_size")?;
        let (num_attention_heads, num_key_value_heads, head_dim) = attention_shape(o, hidden_size)?;
        let max_position_embeddings = get_usize(o, "max_position_embeddings")?.unwrap_or(2048);
        let (rope_theta, rope_scaling) = rope_of(o, max_position_embeddings)?;

        let hidden_act = o.get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
        if hidden_act != "silu" && hidden_act != "swish" {
            return Err(ModelError::Unsupported(format!(
                "hidden_act `{hidden_act}` (Keel's decoder implements SwiGLU with silu)"
            )));
        }
        let attention_bias = get_bool(o, "attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match architecture {
            Architecture::Qwen2 => (true, false),
            Architecture::Mistral => (false, false),
            Architecture::Llama | Architecture::Qwen3 => (attention_bias, attention_bias),
        };
        let mlp_bias = architecture == Architecture::Llama && get_bool(o, "mlp_bias")?.unwrap_or(false);

        let extra: Map<String, Value> =
            o.iter().filter(|(k, _)| !KNOWN.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();

        let cfg = ModelConfig {
            architecture,
            vocab_size: req_usize(o, "vocab_size")?,
            hidden_size,
            intermediate_size: req_usize(o, "intermediate_size")?,
            num_hidden_layers: req_usize(o, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps: get_f64(o, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: get_bool(o, "tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias,
            qk_norm: architecture == Architecture::Qwen3,
            initializer_range: get_f64(o, "initializer_range")?.unwrap_or(0.02),
            bos_token_id: get_u32(o, "bos_token_id")?,
            eos_token_ids: eos_ids(o)?,
            pad_token_id: get_u32(o, "pad_token_id")?,
            extra,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the invariants the decoder relies on: positive sizes within [`SIZE_LIMITS`], head
    /// divisibility, finite positive norms and RoPE parameters, and weights that fit in this
    /// machine's memory ([`ModelConfig::parameter_count`] × [`MIN_BYTES_PER_PARAMETER`] against
    /// [`physical_memory_bytes`]). Allocates nothing, so it runs before any model is built.
    // Negated comparisons also reject NaN; is_multiple_of needs Rust 1.87 (MSRV 1.85).
    #[allow(clippy::neg_cmp_op_on_partial_ord, clippy::manual_is_multiple_of)]
    pub fn validate(&self) -> ModelResult<()> {
        for (f, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(ModelError::config(f, "must be > 0"));
            }
        }
        for &(field, limit) in SIZE_LIMITS {
            let value = self.size_field(field);
            if value > limit {
                return Err(ModelError::config(
                    field,
                    format!(
                        "{value} is more than Keel accepts ({limit}, a sanity bound several times the largest \
                         published models; see keel_model::config::SIZE_LIMITS)"
                    ),
                ));
            }
        }
        if self.num_key_value_heads == 0 || self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(ModelError::config(
                "num_key_value_heads",
                format!("{} must divide num_attention_heads {}", self.num_key_value_heads, self.num_attention_heads),
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(ModelError::config("head_dim", "must be even for RoPE"));
        }
        if !(self.rms_norm_eps > 0.0) || !self.rms_norm_eps.is_finite() {
            return Err(ModelError::config("rms_norm_eps", format!("must be a finite number > 0, got {}", self.rms_norm_eps)));
        }
        if !(self.rope_theta > 0.0) || !self.rope_theta.is_finite() {
            return Err(ModelError::config("rope_theta", format!("must be a finite number > 0, got {}", self.rope_theta)));
        }
        if let Some(RopeScaling::Llama3 { low_freq_factor, high_freq_factor, original_max_position_embeddings, .. }) =
            &self.rope_scaling
        {
            if !(*low_freq_factor > 0.0 && high_freq_factor > low_freq_factor && high_freq_factor.is_finite()) {
                return Err(ModelError::config(
                    "rope_scaling",
                    format!("llama3 scaling needs 0 < low_freq_factor < high_freq_factor, got {low_freq_factor} and {high_freq_factor}"),
                ));
            }
            if *original_max_position_embeddings == 0 {
                return Err(ModelError::config("rope_scaling.original_max_position_embeddings", "must be > 0"));
            }
        }
        self.check_memory(physical_memory_bytes())
    }

    /// The value of one of the [`SIZE_LIMITS`] fields.
    fn size_field(&self, field: &str) -> usize {
        match field {
            "vocab_size" => self.vocab_size,
            "hidden_size" => self.hidden_size,
            "intermediate_size" => self.intermediate_size,
            "num_hidden_layers" => self.num_hidden_layers,
            "num_attention_heads" => self.num_attention_heads,
            "num_key_value_heads" => self.num_key_value_heads,
            "head_dim" => self.head_dim,
            _ => self.max_position_embeddings,
        }
    }

    /// Refuses a configuration whose weights alone, in the smallest dtype Keel computes in, would
    /// exceed `available` bytes of memory (no check when `available` is unknown).
    pub fn check_memory(&self, available: Option<u64>) -> ModelResult<()> {
        let parameters = self.parameter_count();
        let bytes = parameters.saturating_mul(MIN_BYTES_PER_PARAMETER);
        match available {
            Some(avail) if bytes > u128::from(avail) => {
                Err(ModelError::TooLarge { parameters, bytes, available: avail })
            }
            _ => Ok(()),
        }
    }

    /// Number of weights this configuration implies (base model, no adapters), computed from the
    /// sizes without building the tensor inventory, in `u128` so no size can overflow it.
    pub fn parameter_count(&self) -> u128 {
        let u = |x: usize| x as u128;
        let (h, hd, ff, v) = (u(self.hidden_size), u(self.head_dim), u(self.intermediate_size), u(self.vocab_size));
        let (qd, kvd) = (u(self.num_attention_heads) * hd, u(self.num_key_value_heads) * hd);
        let b = |on: bool, n: u128| if on { n } else { 0 };
        let attention = qd * h + 2 * kvd * h + h * qd + b(self.qkv_bias, qd + 2 * kvd) + b(self.o_bias, h);
        let mlp = 3 * ff * h + b(self.mlp_bias, 2 * ff + h);
        let norms = 2 * h + b(self.qk_norm, 2 * hd);
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + u(self.num_hidden_layers) * (attention + mlp + norms) + h + head
    }

    /// The config as a Hugging Face config.json value (transformers-4 key layout, which
    /// transformers 5 still reads), with every preserved extra field.
    pub fn to_json(&self) -> Value {
        let mut o = self.extra.clone();
        let mut put = |k: &str, v: Value| {
            o.insert(k.to_string(), v);
        };
        put("model_type", self.architecture.model_type().into());
        put("architectures", Value::Array(vec![self.architecture.class_name().into()]));
        put("vocab_size", self.vocab_size.into());
        put("hidden_size", self.hidden_size.into());
        put("intermediate_size", self.intermediate_size.into());
        put("num_hidden_layers", self.num_hidden_layers.into());
        put("num_attention_heads", self.num_attention_heads.into());
        put("num_key_value_heads", self.num_key_value_heads.into());
        put("head_dim", self.head_dim.into());
        put("max_position_embeddings", self.max_position_embeddings.into());
        put("rms_norm_eps", self.rms_norm_eps.into());
        put("rope_theta", self.rope_theta.into());
        put(
            "rope_scaling",
            match &self.rope_scaling {
                None => Value::Null,
                Some(RopeScaling::Linear { factor }) => {
                    serde_json::json!({"rope_type": "linear", "type": "linear", "factor": factor})
                }
                Some(RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_position_embeddings,
                }) => serde_json::json!({
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": original_max_position_embeddings,
                }),
            },
        );
        put("tie_word_embeddings", self.tie_word_embeddings.into());
        match self.architecture {
            Architecture::Llama => {
                put("attention_bias", self.qkv_bias.into());
                put("mlp_bias", self.mlp_bias.into());
            }
            Architecture::Qwen3 => put("attention_bias", self.qkv_bias.into()),
            Architecture::Qwen2 | Architecture::Mistral => {}
        }
        put("hidden_act", "silu".into());
        put("initializer_range", self.initializer_range.into());
        put("bos_token_id", self.bos_token_id.map(Value::from).unwrap_or(Value::Null));
        put(
            "eos_token_id",
            match self.eos_token_ids.as_slice() {
                [] => Value::Null,
                [one] => (*one).into(),
                many => Value::Array(many.iter().map(|&x| x.into()).collect()),
            },
        );
        if let Some(p) = self.pad_token_id {
            put("pad_token_id", p.into());
        }
        Value::Object(o)
    }

    /// Pretty-printed config.json text.
    pub fn to_json_string(&self) -> String {
        // Serialising a Value built from finite numbers cannot fail; fall back to compact output.
        serde_json::to_string_pretty(&self.to_json()).unwrap_or_else(|_| self.to_json().to_string())
    }

    /// Query heads per key/value head (1 without grouped-query attention).
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// RoPE inverse frequencies (`head_dim / 2` values) including the configured scaling,
    /// computed in f64 so that f64 finite-difference checks are not limited by f32 tables.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim;
        let base: Vec<f64> =
            (0..d / 2).map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / d as f64)).collect();
        match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }

    /// Total number of parameters this configuration implies (base model, no adapters).
    pub fn num_parameters(&self) -> usize {
        usize::try_from(self.parameter_count()).unwrap_or(usize::MAX)
    }

    /// A tiny Llama-architecture preset for from-scratch training, sized for CPU experiments.
    ///
    /// The vocabulary comes from the caller's tokenizer. Names give the approximate parameter
    /// count at vocab 4096; `tiny-8m` is the 8.4M-parameter performance reference
    /// (d_model 256, 6 layers, 8 heads, SwiGLU 1024, untied head). Presets:
    ///
    /// | name | d_model | layers | heads (kv) | ffn | tied |
    /// |---|---|---|---|---|---|
    /// | tiny-300k | 64 | 2 | 4 (2) | 192 | yes |
    /// | tiny-1m | 128 | 2 | 4 (4) | 512 | yes |
    /// | tiny-3m | 192 | 4 | 6 (6) | 768 | yes |
    /// | tiny-8m | 256 | 6 | 8 (8) | 1024 | no |
    /// | tiny-20m | 384 | 8 | 6 (6) | 1536 | yes |
    pub fn preset(name: &str, vocab_size: usize) -> ModelResult<Self> {
        let (d, l, h, kv, ff, tied) = match name {
            "tiny-300k" => (64, 2, 4, 2, 192, true),
            "tiny-1m" => (128, 2, 4, 4, 512, true),
            "tiny-3m" => (192, 4, 6, 6, 768, true),
            "tiny-8m" => (256, 6, 8, 8, 1024, false),
            "tiny-20m" => (384, 8, 6, 6, 1536, true),
            _ => {
                return Err(ModelError::UnknownPreset { name: name.to_string(), available: PRESETS.join(", ") })
            }
        };
        if vocab_size == 0 {
            return Err(ModelError::config("vocab_size", "must be > 0"));
        }
        let mut extra = Map::new();
        extra.insert("keel_preset".into(), name.into());
        Ok(ModelConfig {
            architecture: Architecture::Llama,
            vocab_size,
            hidden_size: d,
            intermediate_size: ff,
            num_hidden_layers: l,
            num_attention_heads: h,
            num_key_value_heads: kv,
            head_dim: d / h,
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            tie_word_embeddings: tied,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            initializer_range: 0.02,
            bos_token_id: None,
            eos_token_ids: vec![],
            pad_token_id: None,
            extra,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_smollm2_style_llama() {
        let c = ModelConfig::from_json_str(
            r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":576,
            "intermediate_size":1536,"num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,
            "vocab_size":49152,"rms_norm_eps":1e-5,"rope_theta":100000,"tie_word_embeddings":true,
            "bos_token_id":1,"eos_token_id":2,"max_position_embeddings":8192,"torch_dtype":"bfloat16",
            "rope_scaling":null,"pretraining_tp":1}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, Architecture::Llama);
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.kv_groups(), 3);
        assert_eq!(c.eos_token_ids, vec![2]);
        assert_eq!(c.rope_theta, 100000.0);
        assert!(c.tie_word_embeddings && !c.qkv_bias);
        assert_eq!(c.extra.get("torch_dtype"), Some(&Value::from("bfloat16")));
        // Write-back then re-parse is the identity.
        let again = ModelConfig::from_json(&c.to_json()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn parses_transformers5_qwen3_with_rope_parameters_and_eos_list() {
        let c = ModelConfig::from_json_str(
            r#"{"architectures":["Qwen3ForCausalLM"],"model_type":"qwen3","hidden_size":32,"head_dim":16,
            "intermediate_size":64,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
            "vocab_size":100,"dtype":"bfloat16","rope_parameters":{"rope_type":"default","rope_theta":1000000.0},
            "eos_token_id":[5,7],"layer_types":["full_attention","full_attention"]}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, Architecture::Qwen3);
        assert!(c.qk_norm);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.eos_token_ids, vec![5, 7]);
        assert!(c.extra.contains_key("layer_types"));
    }

    #[test]
    fn qwen2_has_qkv_bias_and_llama3_scaling_parses() {
        let c = ModelConfig::from_json_str(
            r#"{"model_type":"qwen2","hidden_size":32,"intermediate_size":64,"num_hidden_layers":1,
            "num_attention_heads":4,"vocab_size":10}"#,
        )
        .unwrap();
        assert!(c.qkv_bias && !c.o_bias);
        let l = ModelConfig::from_json_str(
            r#"{"model_type":"llama","hidden_size":32,"intermediate_size":64,"num_hidden_layers":1,
            "num_attention_heads":4,"vocab_size":10,"rope_scaling":{"rope_type":"llama3","factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":64}}"#,
        )
        .unwrap();
        let f = l.rope_inv_freq();
        // head_dim 8: wavelengths 2π·{1, 10, 100, 1000}. Below 64/4 = 16 kept, above 64/1 scaled by
        // 1/8, in between interpolated.
        assert_eq!(f[0], 1.0);
        assert!((f[2] - 0.01 / 8.0).abs() < 1e-15 && (f[3] - 0.001 / 8.0).abs() < 1e-15);
        let smooth = (64.0 / (2.0 * std::f64::consts::PI * 10.0) - 1.0) / 3.0;
        assert!((f[1] - ((1.0 - smooth) * 0.1 / 8.0 + smooth * 0.1)).abs() < 1e-12);
    }

    #[test]
    fn rejects_bad_configs_with_field_names() {
        let e = ModelConfig::from_json_str(r#"{"model_type":"gpt2","hidden_size":4}"#).unwrap_err();
        assert!(e.to_string().contains("gpt2"), "{e}");
        let e = ModelConfig::from_json_str(
            r#"{"model_type":"llama","hidden_size":32,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":10}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("intermediate_size"), "{e}");
        let e = ModelConfig::from_json_str(
            r#"{"model_type":"llama","hidden_size":32,"intermediate_size":8,"num_hidden_layers":1,
            "num_attention_heads":4,"num_key_value_heads":3,"vocab_size":10}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("num_key_value_heads"), "{e}");
        let e = ModelConfig::from_json_str(
            r#"{"model_type":"llama","hidden_size":32,"intermediate_size":8,"num_hidden_layers":1,
            "num_attention_heads":4,"vocab_size":10,"rope_scaling":{"type":"dynamic","factor":2.0}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("dynamic"), "{e}");
    }

    #[test]
    fn presets_have_documented_sizes() {
        let c = ModelConfig::preset("tiny-8m", 4096).unwrap();
        assert_eq!((c.hidden_size, c.num_hidden_layers, c.num_attention_heads), (256, 6, 8));
        assert_eq!(c.num_parameters(), 8_391_936);
        let one = ModelConfig::preset("tiny-1m", 4096).unwrap().num_parameters();
        assert!((1_000_000..1_100_000).contains(&one), "{one}");
        assert!(ModelConfig::preset("tiny-9000", 10).unwrap_err().to_string().contains("tiny-1m"));
    }

    fn llama(fields: &str) -> String {
        format!(
            r#"{{"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"vocab_size":100{fields}}}"#
        )
    }

    /// Issue 19 row 5: absurd sizes are refused at parse time with the field, the value and the
    /// limit; nothing is allocated for them.
    #[test]
    fn absurd_sizes_are_refused_with_field_value_and_limit() {
        for (field, value) in [
            ("num_hidden_layers", 10_000_000u64),
            ("hidden_size", 1 << 20),
            ("vocab_size", 9_223_372_036_854_775_807),
            ("intermediate_size", 1 << 40),
            ("max_position_embeddings", 1 << 40),
        ] {
            let mut v: Value = serde_json::from_str(&llama("")).unwrap();
            v[field] = value.into();
            let t0 = std::time::Instant::now();
            let e = ModelConfig::from_json(&v).unwrap_err().to_string();
            assert!(t0.elapsed().as_millis() < 100, "{field}: took {:?}", t0.elapsed());
            let limit = SIZE_LIMITS.iter().find(|(f, _)| *f == field).map(|(_, l)| *l);
            assert!(e.contains(field) && e.contains(&value.to_string()), "{field}: {e}");
            if let Some(limit) = limit {
                assert!(e.contains(&limit.to_string()), "{field}: {e}");
            }
        }
        let e = ModelConfig::from_json_str(&llama(r#","num_attention_heads":100000,"head_dim":2"#)).unwrap_err();
        assert!(e.to_string().contains("num_attention_heads") && e.to_string().contains("4096"), "{e}");
        // Consistency: hidden_size not divisible by the heads, KV heads not dividing them.
        let e = ModelConfig::from_json_str(&llama(r#","num_attention_heads":3"#)).unwrap_err().to_string();
        assert!(e.contains("hidden_size 64") && e.contains("num_attention_heads 3"), "{e}");
        let e = ModelConfig::from_json_str(&llama(r#","num_key_value_heads":3"#)).unwrap_err().to_string();
        assert!(e.contains("num_key_value_heads") && e.contains("3 must divide"), "{e}");
        let e = ModelConfig::from_json_str(&llama(r#","max_position_embeddings":0"#)).unwrap_err().to_string();
        assert!(e.contains("max_position_embeddings"), "{e}");
        let e = ModelConfig::from_json_str(&llama(
            r#","rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":4.0,"high_freq_factor":4.0}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("low_freq_factor < high_freq_factor"), "{e}");
    }

    /// Sizes each within its limit whose product is beyond any machine: refused by the memory
    /// estimate, which states the numbers; a small config passes the same check.
    #[test]
    fn weights_beyond_memory_are_refused_with_the_numbers() {
        let big = ModelConfig::from_json_str(&llama(r#","hidden_size":65536,"intermediate_size":524288,"num_hidden_layers":4096,"num_attention_heads":512"#));
        let e = big.unwrap_err();
        assert!(matches!(e, ModelError::TooLarge { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("parameters") && msg.contains("GiB of memory"), "{msg}");
        // The same check against a given amount of memory: exactly at the boundary.
        let c = ModelConfig::from_json_str(&llama("")).unwrap();
        let bytes = c.parameter_count() * MIN_BYTES_PER_PARAMETER;
        assert!(c.check_memory(Some(bytes as u64)).is_ok());
        match c.check_memory(Some(bytes as u64 - 1)) {
            Err(ModelError::TooLarge { parameters, bytes: b, available }) => {
                assert_eq!((parameters, b, available), (c.parameter_count(), bytes, bytes as u64 - 1));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(c.check_memory(None).is_ok());
    }

    /// The analytic parameter count equals the sum over the tensor inventory for every
    /// architecture and bias/tying combination.
    #[test]
    fn parameter_count_matches_the_tensor_inventory() {
        for (mt, extra) in [
            ("llama", r#","tie_word_embeddings":true"#),
            ("llama", r#","attention_bias":true,"mlp_bias":true"#),
            ("qwen2", ""),
            ("qwen3", r#","head_dim":32,"num_key_value_heads":2"#),
            ("mistral", r#","num_key_value_heads":1"#),
        ] {
            let c = ModelConfig::from_json_str(&llama(extra).replace("\"llama\"", &format!("\"{mt}\""))).unwrap();
            let inventory: usize =
                crate::weights::tensor_specs(&c).iter().map(|s| s.shape.iter().product::<usize>()).sum();
            assert_eq!(c.num_parameters(), inventory, "{mt}{extra}");
        }
    }
}
