//! Tensor inventory, seeded initialisation, safetensors I/O and weight snapshots.
//!
//! The inventory ([`tensor_specs`]) is the single source of truth for Hugging Face tensor names
//! and shapes: random initialisation, checkpoint validation and GGUF import all go through it, so
//! a checkpoint Keel writes is exactly what transformers expects and vice versa.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

use crate::config::ModelConfig;
use crate::error::{CandleContext, ModelError, ModelResult};

/// How a tensor is initialised in a from-scratch model (Hugging Face `_init_weights` semantics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Normal with mean 0 and the given standard deviation (matrices, embeddings).
    Normal(f64),
    /// All zeros (biases).
    Zeros,
    /// All ones (RMSNorm weights).
    Ones,
}

/// One tensor of the model: Hugging Face name, shape and initialiser.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// Hugging Face name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// Shape (`[out, in]` for linear weights, as in PyTorch).
    pub shape: Vec<usize>,
    /// Initialiser for from-scratch models.
    pub init: Init,
}

/// Every tensor a configuration implies, in a stable order (embedding, layers, norm, head).
pub fn tensor_specs(cfg: &ModelConfig) -> Vec<TensorSpec> {
    let std = cfg.initializer_range;
    let (h, hd, ff) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (qd, kvd) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
    let mut v = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, init: Init| v.push(TensorSpec { name, shape, init });
    push("model.embed_tokens.weight".into(), vec![cfg.vocab_size, h], Init::Normal(std));
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (m, out, inp, bias) in [
            ("self_attn.q_proj", qd, h, cfg.qkv_bias),
            ("self_attn.k_proj", kvd, h, cfg.qkv_bias),
            ("self_attn.v_proj", kvd, h, cfg.qkv_bias),
            ("self_attn.o_proj", h, qd, cfg.o_bias),
            ("mlp.gate_proj", ff, h, cfg.mlp_bias),
            ("mlp.up_proj", ff, h, cfg.mlp_bias),
            ("mlp.down_proj", h, ff, cfg.mlp_bias),
        ] {
            push(format!("{p}.{m}.weight"), vec![out, inp], Init::Normal(std));
            if bias {
                push(format!("{p}.{m}.bias"), vec![out], Init::Zeros);
            }
        }
        if cfg.qk_norm {
            push(format!("{p}.self_attn.q_norm.weight"), vec![hd], Init::Ones);
            push(format!("{p}.self_attn.k_norm.weight"), vec![hd], Init::Ones);
        }
        push(format!("{p}.input_layernorm.weight"), vec![h], Init::Ones);
        push(format!("{p}.post_attention_layernorm.weight"), vec![h], Init::Ones);
    }
    push("model.norm.weight".into(), vec![h], Init::Ones);
    if !cfg.tie_word_embeddings {
        push("lm_head.weight".into(), vec![cfg.vocab_size, h], Init::Normal(std));
    }
    v
}

/// Standard normal samples from a portable generator (Box–Muller on ChaCha8), so a seed gives the
/// same weights on every platform and candle version.
pub(crate) fn normal_vec(seed: u64, n: usize, std: f64) -> Vec<f64> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let th = 2.0 * std::f64::consts::PI * u2;
        out.push(r * th.cos());
        out.push(r * th.sin());
    }
    out.truncate(n);
    out
}

/// Initialises one tensor; each tensor draws from its own stream keyed by `(seed, name)`, so adding
/// a tensor never changes the values of the others.
pub(crate) fn init_tensor(spec: &TensorSpec, seed: u64, device: &Device, dtype: DType) -> ModelResult<Tensor> {
    let n: usize = spec.shape.iter().product();
    let data = match spec.init {
        Init::Zeros => vec![0f64; n],
        Init::Ones => vec![1f64; n],
        Init::Normal(std) => normal_vec(keel_core::SeedStream::new(seed).seed(&spec.name), n, std),
    };
    Tensor::from_vec(data, spec.shape.as_slice(), device)
        .and_then(|t| t.to_dtype(dtype))
        .ctx(|| format!("initialising {}", spec.name))
}

/// Reads every tensor of a checkpoint directory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
pub fn read_checkpoint_tensors(dir: &Path, device: &Device) -> ModelResult<HashMap<String, Tensor>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return candle_core::safetensors::load(&single, device).ctx(|| format!("reading {}", single.display()));
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(ModelError::io(
            "looking for model.safetensors or model.safetensors.index.json in",
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no weights found"),
        ));
    }
    let mut out = HashMap::new();
    for p in index_shards(dir)? {
        let part = candle_core::safetensors::load(&p, device).ctx(|| format!("reading shard {}", p.display()))?;
        out.extend(part);
    }
    Ok(out)
}
/// The shard files `model.safetensors.index.json` in `dir` lists (its `weight_map` values),
/// sorted and distinct, as paths inside `dir`.
///
/// Each must stay inside the model directory: a relative path of plain components (no `..`, no
/// absolute path), and, where it exists, resolving (through symlinks) to a file inside `dir` or,
/// for a Hugging Face cache snapshot (`…/models--org--name/snapshots/<commit>`), inside that
/// repository's cache folder, where the snapshot's symlinks point. Why: an index is data from
/// wherever the model came from, and `../../x` or `/etc/x` would load weights (and record hashes)
/// from outside the model the user named. Shards that do not exist are returned as they are, for
/// the caller to report as missing.
pub fn index_shards(dir: &Path) -> ModelResult<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    let in_index = |e: ModelError| ModelError::InFile { path: index.clone(), source: Box::new(e) };
    let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io("reading", &index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|source| ModelError::Json { what: format!("parsing {}", index.display()), source })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| in_index(ModelError::config("weight_map", "missing (expected an object of tensor name → shard file)")))?;
    let mut files: Vec<&str> = Vec::with_capacity(map.len());
    for (tensor, f) in map {
        let f = f.as_str().ok_or_else(|| {
            in_index(ModelError::config(format!("weight_map.{tensor}"), format!("expected a file name, got {f}")))
        })?;
        files.push(f);
    }
    files.sort_unstable();
    files.dedup();
    let root = allowed_root(dir);
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let rel = Path::new(f);
        let plain = !f.is_empty() && rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(in_index(ModelError::config(
                "weight_map",
                format!("shard `{f}` points outside the model directory (shards are file names inside it: no `..`, no absolute paths)"),
            )));
        }
        let p = dir.join(rel);
        if let (Ok(real), Some(root)) = (p.canonicalize(), &root) {
            if !real.starts_with(root) {
                return Err(in_index(ModelError::config(
                    "weight_map",
                    format!("shard `{f}` resolves to {}, outside the model directory {}", real.display(), root.display()),
                )));
            }
        }
        out.push(p);
    }
    Ok(out)
}

/// The directory shards of `dir` must resolve into: `dir` itself, or the repository folder of a
/// Hugging Face cache snapshot (`…/models--org--name` for `…/models--org--name/snapshots/<commit>`).
fn allowed_root(dir: &Path) -> Option<PathBuf> {
    let real = dir.canonicalize().ok()?;
    let snapshots = real.parent().filter(|p| p.file_name().is_some_and(|n| n == "snapshots"));
    let repo = snapshots
        .and_then(Path::parent)
        .filter(|r| r.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("models--")));
    Some(repo.map(Path::to_path_buf).unwrap_or(real))
}

/// Writes `tensors` as a safetensors file atomically (temporary file, then rename), so a crash
/// never leaves a truncated checkpoint behind.
pub fn write_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) -> ModelResult<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    candle_core::safetensors::save(tensors, &tmp).ctx(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io("renaming into", path, e))
}

/// Writes a text file atomically.
pub(crate) fn write_text_atomic(path: &Path, text: &str) -> ModelResult<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(|e| ModelError::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io("renaming into", path, e))
}

/// An immutable copy of a model's weights, keyed by tensor name.
///
/// The policy store publishes these (behind an `Arc`) after each learner step; samplers load them
/// into their own model with [`crate::CausalLm::load_snapshot`]. Tensors are detached copies, so
/// later optimiser updates never change a published snapshot.
#[derive(Debug, Clone)]
pub struct WeightSnapshot {
    pub(crate) tensors: BTreeMap<String, Tensor>,
}

impl WeightSnapshot {
    /// Builds a snapshot from named tensors (copied and detached).
    pub fn from_tensors(tensors: impl IntoIterator<Item = (String, Tensor)>) -> ModelResult<Self> {
        let mut map = BTreeMap::new();
        for (name, t) in tensors {
            let c = t.detach().copy().ctx(|| format!("copying {name} into a snapshot"))?;
            map.insert(name, c);
        }
        Ok(WeightSnapshot { tensors: map })
    }

    /// The tensor with this name, if present.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Tensor names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// `(name, tensor)` pairs in sorted order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when the snapshot holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_init_is_seeded_and_has_the_right_scale() {
        let a = normal_vec(7, 10_000, 0.02);
        assert_eq!(a, normal_vec(7, 10_000, 0.02));
        assert_ne!(a, normal_vec(8, 10_000, 0.02));
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        let std = (a.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / a.len() as f64).sqrt();
        assert!(mean.abs() < 0.001 && (std - 0.02).abs() < 0.001, "mean {mean} std {std}");
    }
}
