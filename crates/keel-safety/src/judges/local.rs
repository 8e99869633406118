//! A local keel-model decoder as a [`ChatBackend`]: greedy decoding, so answers are
//! deterministic and cacheable like a temperature-0 endpoint's.

use candle_core::{DType, Device, IndexOp, Tensor};
use keel_model::{CausalLm, ChatTemplate, ModelSource, Tokenizer};

use crate::judges::chat::{ChatBackend, ChatRequest};
use crate::model_error::{ModelClassifierError, ModelClassifierResult};
use crate::SafetyError;

/// Runs `ids` through `model` and decodes greedily up to `max_new_tokens`, stopping at any of
/// `stop_ids`. Returns the logits at the first generated position (for scores read off it, as
/// Llama Guard's `P(unsafe)`) and the generated ids.
pub(crate) fn greedy_generate(
    model: &CausalLm,
    ids: &[u32],
    max_new_tokens: usize,
    stop_ids: &[u32],
) -> ModelClassifierResult<(Vec<f32>, Vec<u32>)> {
    if ids.is_empty() {
        return Err(ModelClassifierError::Config("the judge prompt tokenized to nothing".into()));
    }
    let cand = |e: candle_core::Error, what: &str| ModelClassifierError::candle(format!("judge: {what}"), e);
    let device = model.device().clone();
    let mut cache = model.new_cache();
    let mut mask_len = ids.len();
    let input = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &device).map_err(|e| cand(e, "prompt tensor"))?;
    let mask = Tensor::ones((1, mask_len), DType::U32, &device).map_err(|e| cand(e, "mask tensor"))?;
    let logits = model.forward_cached(&input, &mask, &mut cache).map_err(|e| ModelClassifierError::model("judge: prefill", e))?;
    let last_logits = |l: &Tensor| -> Result<Vec<f32>, ModelClassifierError> {
        let t = l.dim(1).map_err(|e| cand(e, "logits shape"))?;
        l.i((0, t - 1))
            .and_then(|x| x.to_dtype(DType::F32))
            .and_then(|x| x.to_vec1::<f32>())
            .map_err(|e| cand(e, "reading logits"))
    };
    let first = last_logits(&logits)?;
    let argmax = |v: &[f32]| -> u32 {
        let mut best = 0usize;
        for (i, x) in v.iter().enumerate() {
            if *x > v[best] {
                best = i;
            }
        }
        best as u32
    };
    let mut generated = Vec::new();
    let mut next = argmax(&first);
    for step in 0..max_new_tokens {
        if stop_ids.contains(&next) {
            break;
        }
        generated.push(next);
        if step + 1 == max_new_tokens {
            break;
        }
        mask_len += 1;
        let input = Tensor::from_vec(vec![next], (1, 1), &device).map_err(|e| cand(e, "token tensor"))?;
        let mask = Tensor::ones((1, mask_len), DType::U32, &device).map_err(|e| cand(e, "mask tensor"))?;
        let logits =
            model.forward_cached(&input, &mask, &mut cache).map_err(|e| ModelClassifierError::model("judge: decoding", e))?;
        next = argmax(&last_logits(&logits)?);
    }
    Ok((first, generated))
}

/// The stop tokens of a judge model: the tokenizer's own plus the usual end-of-turn tokens.
pub(crate) fn judge_stop_ids(tokenizer: &Tokenizer) -> Vec<u32> {
    let mut stop_ids = tokenizer.stop_ids();
    for t in ["<|eot_id|>", "<|im_end|>", "<|end_of_text|>", "<|endoftext|>", "</s>"] {
        if let Some(id) = tokenizer.token_to_id(t) {
            if !stop_ids.contains(&id) {
                stop_ids.push(id);
            }
        }
    }
    stop_ids
}

/// A local judge model (any reference keel-model loads: a Hugging Face directory, a `.gguf`, an
/// `hf://` name), decoding greedily on the CPU in f32. Chat requests go through the model's chat
/// template; raw requests (HarmBench's self-wrapped prompt) are tokenized as they are, with the
/// tokenizer's special tokens (BOS) added as Hugging Face does.
#[derive(Debug, Clone)]
pub struct LocalChat {
    reference: String,
    model: CausalLm,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    stop_ids: Vec<u32>,
    max_new_tokens: usize,
}

impl LocalChat {
    /// Loads `reference`; `max_new_tokens` bounds each answer.
    pub fn load(reference: &str, max_new_tokens: usize) -> ModelClassifierResult<Self> {
        let fail = |message: String| ModelClassifierError::LoadModel { reference: reference.to_string(), message };
        let resolved = ModelSource::parse(reference).and_then(|s| s.resolve()).map_err(|e| fail(e.to_string()))?;
        let (model, tokenizer) = resolved.load(&Device::Cpu, DType::F32).map_err(|e| fail(e.to_string()))?;
        Ok(Self::new(reference, model, tokenizer, max_new_tokens))
    }

    /// A backend over a loaded model; `reference` names it in cache keys.
    pub fn new(reference: impl Into<String>, model: CausalLm, tokenizer: Tokenizer, max_new_tokens: usize) -> Self {
        let template = ChatTemplate::from_tokenizer(&tokenizer).ok();
        let stop_ids = judge_stop_ids(&tokenizer);
        LocalChat { reference: reference.into(), model, tokenizer, template, stop_ids, max_new_tokens }
    }

    /// The exact model input for a request.
    pub fn render(&self, request: &ChatRequest) -> ModelClassifierResult<String> {
        match request {
            ChatRequest::Raw(t) => Ok(t.clone()),
            ChatRequest::Messages(m) => match &self.template {
                Some(t) => t.render(m, true).map_err(|e| ModelClassifierError::Config(format!("rendering the judge prompt: {e}"))),
                None => Err(ModelClassifierError::Config(format!(
                    "judge model `{}` has no chat template; a chat judge needs one",
                    self.reference
                ))),
            },
        }
    }

    fn run(&self, request: &ChatRequest) -> ModelClassifierResult<String> {
        let text = self.render(request)?;
        let raw = matches!(request, ChatRequest::Raw(_));
        let tok_err = |e: keel_model::TokenizerError| ModelClassifierError::Tokenizer { path: self.tokenizer.origin().into(), message: e.to_string() };
        let ids = self.tokenizer.encode(&text, raw).map_err(tok_err)?;
        let (_, generated) = greedy_generate(&self.model, &ids, self.max_new_tokens, &self.stop_ids)?;
        self.tokenizer.decode(&generated, true).map_err(tok_err)
    }
}

impl ChatBackend for LocalChat {
    fn identity(&self) -> serde_json::Value {
        serde_json::json!({"backend": "local_greedy", "model": self.reference, "max_tokens": self.max_new_tokens})
    }

    fn model(&self) -> &str {
        &self.reference
    }

    fn complete(&self, request: &ChatRequest) -> Result<String, SafetyError> {
        self.run(request).map_err(|e| e.into_safety(&self.reference))
    }
}
