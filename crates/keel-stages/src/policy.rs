//! A policy as stages handle it: weights, tokenizer and chat template loaded from one checkpoint
//! directory, plus the adapters that let the rollout engine drive a keel-model decoder.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use keel_core::{Example, Rollout};
use keel_model::{read_gguf, CausalLm, ChatTemplate, KvCache, ModelConfig, ModelSource, ResolvedModel, Tokenizer};
use keel_pipeline::StageError;
use keel_rollout::{BoxError, DecodeModel, Engine, EngineConfig, SamplingParams, TextCodec};

use crate::ctx::Ctx;
use crate::messages::PolicyVersion;

/// Subdirectory of a checkpoint that holds LoRA adapters (PEFT layout) when they were trained.
pub const ADAPTER_DIR: &str = "adapter";

/// Weights, tokenizer and chat template of one model, as saved in a checkpoint directory
/// (`model.safetensors`, `config.json`, `tokenizer.json`, `tokenizer_config.json`): the same layout
/// as a Hugging Face model, so a tiny model trained from scratch and a real one load alike.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The trainable decoder.
    pub model: CausalLm,
    /// The tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// The chat template that renders prompts.
    pub template: Arc<ChatTemplate>,
}

impl Policy {
    /// Loads a checkpoint directory (or any Hugging Face-layout model directory) in f32 on the CPU.
    pub fn load(dir: &Path) -> Result<Self, StageError> {
        let model = CausalLm::load(dir, &Device::Cpu, DType::F32)
            .ctx(|| format!("loading model weights from {}", dir.display()))?;
        let tokenizer = Tokenizer::from_dir(dir).ctx(|| format!("loading tokenizer from {}", dir.display()))?;
        Self::assemble(model, tokenizer)
    }

    /// Opens any model reference: a Hugging Face-layout directory, a `.gguf` file (dequantised
    /// and converted in memory) or `hf://org/name[@rev]` from the local Hugging Face cache.
    pub fn open(reference: &str) -> Result<Self, StageError> {
        let source = ModelSource::parse(reference).ctx(|| format!("reading the model reference `{reference}`"))?;
        match source.resolve().ctx(|| format!("locating model `{reference}`"))? {
            ResolvedModel::Dir(files) => Self::load(&files.dir),
            ResolvedModel::Gguf(path) => {
                let g = read_gguf(&path).ctx(|| format!("reading GGUF file {}", path.display()))?;
                let config = ModelConfig::from_json(&g.config).ctx(|| format!("interpreting the metadata of {}", path.display()))?;
                let model = CausalLm::from_tensors(config, g.tensors).ctx(|| format!("building the model from {}", path.display()))?;
                Self::assemble(model, g.tokenizer)
            }
            ResolvedModel::Preset(name) => Err(StageError::msg(format!(
                "`{name}` is a preset size, not a trained model; give a checkpoint directory, a .gguf file or hf://org/name"
            ))),
        }
    }

    /// A freshly initialised model of a preset size (`tiny-1m`, ...) for a tokenizer directory.
    pub fn from_scratch(preset: &str, tokenizer_dir: &Path, seed: u64) -> Result<Self, StageError> {
        let tokenizer = Tokenizer::from_dir(tokenizer_dir)
            .ctx(|| format!("loading tokenizer from {}", tokenizer_dir.display()))?;
        let mut config = ModelConfig::preset(preset, tokenizer.vocab_size())
            .ctx(|| format!("building the `{preset}` model configuration"))?;
        if let Some(eos) = tokenizer.eos_id() {
            config.eos_token_ids = vec![eos];
        }
        if let Some(bos) = tokenizer.bos_id() {
            config.bos_token_id = Some(bos);
        }
        let model = CausalLm::new(&config, seed, &Device::Cpu, DType::F32)
            .ctx(|| format!("initialising a `{preset}` model"))?;
        Self::assemble(model, tokenizer)
    }

    /// A freshly initialised model of any configuration over a tokenizer in memory (the tiny
    /// stand-ins of dry runs; `config` decides the architecture family).
    pub fn from_config(config: &ModelConfig, tokenizer: Tokenizer, seed: u64) -> Result<Self, StageError> {
        let model = CausalLm::new(config, seed, &Device::Cpu, DType::F32)
            .ctx(|| format!("initialising a `{}` model", config.architecture.model_type()))?;
        Self::assemble(model, tokenizer)
    }

    fn assemble(model: CausalLm, tokenizer: Tokenizer) -> Result<Self, StageError> {
        let template = ChatTemplate::from_tokenizer(&tokenizer)
            .ctx(|| format!("reading the chat template of {}", tokenizer.origin()))?;
        Ok(Policy { model, tokenizer: Arc::new(tokenizer), template: Arc::new(template) })
    }

    /// Writes weights, config and tokenizer files into `dir` (created if needed). With LoRA
    /// adapters attached, the weights are the merged ones (so `dir` loads as a plain model) and
    /// the adapters are also written, in PEFT layout, to `dir/adapter/`.
    pub fn save(&self, dir: &Path) -> Result<(), StageError> {
        self.model.save(dir).ctx(|| format!("saving model to {}", dir.display()))?;
        self.tokenizer.save(dir).ctx(|| format!("saving tokenizer to {}", dir.display()))?;
        if self.model.lora_config().is_some() {
            let adapter = dir.join(ADAPTER_DIR);
            self.model.save_lora(&adapter).ctx(|| format!("saving LoRA adapters to {}", adapter.display()))?;
        }
        Ok(())
    }

    /// The prompt text exactly as the model sees it (chat template with generation prompt).
    pub fn render(&self, example: &Example) -> Result<String, StageError> {
        render(&self.template, example)
    }

    /// Token ids of a text, without extra special tokens (the chat template places them).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, StageError> {
        self.tokenizer.encode(text, false).ctx(|| "tokenizing text".to_string())
    }

    /// The token that ends an assistant turn (generation stops there; SFT targets end with it).
    pub fn eos_id(&self) -> Result<u32, StageError> {
        self.tokenizer
            .eos_id()
            .ok_or_else(|| StageError::msg(format!("tokenizer {} defines no end-of-sequence token", self.tokenizer.origin())))
    }

    /// The padding id used when batching (the tokenizer's pad token, else its EOS).
    pub fn pad_id(&self) -> u32 {
        self.tokenizer.pad_id().or(self.tokenizer.eos_id()).unwrap_or(0)
    }

    /// A detached, independent copy of the current weights for samplers (a policy-store value);
    /// LoRA adapters are folded in, so sampling costs what the plain model costs.
    pub fn version(&self, updates: u64) -> Result<PolicyVersion, StageError> {
        let model = self.model.merged_frozen_copy().ctx(|| "copying weights for the policy store".to_string())?;
        Ok(PolicyVersion {
            updates,
            model: Arc::new(model),
            tokenizer: self.tokenizer.clone(),
            template: self.template.clone(),
            resumed_at: None,
        })
    }

    /// A sampling engine over a detached view of the current weights.
    pub fn engine(&self) -> Engine<LmDecoder, LmCodec> {
        engine(Arc::new(self.model.inference_view()), self.tokenizer.clone())
    }
}

/// `params.n` rollouts of every example from the weights of `version`, as the `rollout` stage
/// samples them: each prompt rendered with the chat template and tokenised, the groups generated
/// by the KV-cache engine (rollout `g·n + i` is sample `i` of example `g`, in group `g`). `step`
/// names the batch in errors; `policy_version` is recorded in every completion.
pub fn sample_rollouts(
    version: &PolicyVersion,
    examples: &[Arc<Example>],
    params: &SamplingParams,
    policy_version: u64,
    step: u64,
) -> Result<Vec<Rollout>, StageError> {
    let eng = engine(version.model.clone(), version.tokenizer.clone());
    let mut texts = Vec::with_capacity(examples.len());
    let mut ids = Vec::with_capacity(examples.len());
    for e in examples {
        let t = render(&version.template, e)?;
        ids.push(version.tokenizer.encode(&t, false).ctx(|| format!("tokenizing the prompt of `{}`", e.id))?);
        texts.push(t);
    }
    let groups = eng.generate(&ids, params, policy_version).ctx(|| format!("sampling step {step}"))?;
    let mut rollouts = Vec::with_capacity(groups.len() * params.n);
    for (g, (group, example)) in groups.into_iter().zip(examples).enumerate() {
        for completion in group {
            rollouts.push(Rollout {
                example: example.clone(),
                prompt_ids: ids[g].clone(),
                prompt_text: texts[g].clone(),
                completion,
                group: g,
            });
        }
    }
    Ok(rollouts)
}

/// Renders a dataset item's prompt with a chat template and the generation prompt.
pub fn render(template: &ChatTemplate, example: &Example) -> Result<String, StageError> {
    template
        .format_prompt(&example.prompt, None, false)
        .ctx(|| format!("rendering the prompt of example `{}` with the chat template", example.id))
}

/// A sampling engine for a model and tokenizer.
pub fn engine(model: Arc<CausalLm>, tokenizer: Arc<Tokenizer>) -> Engine<LmDecoder, LmCodec> {
    let codec = LmCodec::new(tokenizer);
    Engine::new(LmDecoder(model), codec, EngineConfig::default())
}

/// Lets the rollout engine (generic over [`DecodeModel`]) drive a keel-model decoder.
#[derive(Debug, Clone)]
pub struct LmDecoder(pub Arc<CausalLm>);

impl DecodeModel for LmDecoder {
    type Cache = KvCache;

    fn new_cache(&self, _batch: usize) -> candle_core::Result<KvCache> {
        Ok(self.0.new_cache())
    }

    fn forward_cached(&self, input_ids: &Tensor, attention_mask: &Tensor, cache: &mut KvCache) -> candle_core::Result<Tensor> {
        self.0.forward_cached(input_ids, attention_mask, cache).map_err(candle_core::Error::wrap)
    }

    fn forward_cached_last(&self, input_ids: &Tensor, attention_mask: &Tensor, cache: &mut KvCache) -> candle_core::Result<Tensor> {
        // Projects only the last position onto the vocabulary: a prefill of T tokens would
        // otherwise materialise [B, T, V] logits to use one row of them.
        self.0.forward_cached_last(input_ids, attention_mask, cache).map_err(candle_core::Error::wrap)
    }

    fn can_select_cache_rows(&self) -> bool {
        true
    }

    fn select_cache_rows(&self, cache: &mut KvCache, rows: &[u32]) -> candle_core::Result<()> {
        cache.select_rows(rows).map_err(candle_core::Error::wrap)
    }

    fn vocab_size(&self) -> usize {
        self.0.config().vocab_size
    }

    fn context_window(&self) -> Option<usize> {
        Some(self.0.config().max_position_embeddings)
    }

    fn device(&self) -> &Device {
        self.0.device()
    }
}

/// Lets the rollout engine encode and decode with a keel-model tokenizer.
#[derive(Debug, Clone)]
pub struct LmCodec {
    tokenizer: Arc<Tokenizer>,
    stop_ids: Vec<u32>,
    pad: u32,
}

impl LmCodec {
    /// Wraps a tokenizer; generation stops at any of its stop ids (EOS and model-specific extras).
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        let stop_ids = tokenizer.stop_ids();
        let pad = tokenizer.pad_id().or(tokenizer.eos_id()).unwrap_or(0);
        LmCodec { tokenizer, stop_ids, pad }
    }
}

impl TextCodec for LmCodec {
    fn encode(&self, text: &str) -> Result<Vec<u32>, BoxError> {
        Ok(self.tokenizer.encode(text, false)?)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, BoxError> {
        Ok(self.tokenizer.decode(ids, true)?)
    }

    fn eos_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    fn pad_id(&self) -> u32 {
        self.pad
    }
}
