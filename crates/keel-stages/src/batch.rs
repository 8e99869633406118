//! Batches as the learners and evaluation feed them to a model: token batches for whole
//! sequences (SFT, drift log-probs), the completion layout of a scored RL batch, and the
//! log-prob and tensor helpers both need.
//!
//! One home below `train` (SFT), `rl` (the RL learner) and `evaluate`, so that none of them reaches
//! into another for a tensor helper.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use keel_model::{CausalLm, SharedPrefixBatch};
use keel_pipeline::StageError;

use crate::ctx::Ctx;
use crate::messages::ScoredBatch;

/// A prompt + completion pair as token ids, with where the completion starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    /// Prompt ids followed by completion ids.
    pub ids: Vec<u32>,
    /// Number of prompt tokens; positions `prompt_len..` are the completion.
    pub prompt_len: usize,
}

/// A right-padded batch ready for `token_logprobs`.
#[derive(Debug)]
pub struct TokenBatch {
    /// `[B, T]` u32 token ids.
    pub ids: Tensor,
    /// `[B, T]` f32, 1 for real tokens.
    pub attention: Tensor,
    /// `[B, T-1]` f32, 1 where position `t` predicts a completion token `t+1`.
    pub loss_mask: Tensor,
    /// Number of completion tokens in the batch.
    pub tokens: usize,
}

/// Pads pairs on the right to a common length and builds the masks that align with the
/// `[B, T-1]` output of `CausalLm::token_logprobs`.
pub fn collate(pairs: &[&TokenizedPair], pad_id: u32, device: &Device) -> Result<TokenBatch, StageError> {
    let t = pairs.iter().map(|p| p.ids.len()).max().unwrap_or(0);
    if t < 2 {
        return Err(StageError::msg("cannot train on sequences shorter than two tokens"));
    }
    let b = pairs.len();
    let mut ids = Vec::with_capacity(b * t);
    let mut attention = Vec::with_capacity(b * t);
    let mut loss_mask = Vec::with_capacity(b * (t - 1));
    let mut tokens = 0;
    for p in pairs {
        let n = p.ids.len();
        ids.extend(p.ids.iter().copied().chain(std::iter::repeat_n(pad_id, t - n)));
        attention.extend((0..t).map(|i| if i < n { 1f32 } else { 0.0 }));
        for pos in 0..t - 1 {
            let predicts = pos + 1;
            let on = predicts >= p.prompt_len && predicts < n;
            tokens += on as usize;
            loss_mask.push(if on { 1f32 } else { 0.0 });
        }
    }
    let mk = |v: Vec<f32>, cols: usize| Tensor::from_vec(v, (b, cols), device).ctx(|| "building a batch tensor".to_string());
    Ok(TokenBatch {
        ids: Tensor::from_vec(ids, (b, t), device).ctx(|| "building the id tensor".to_string())?,
        attention: mk(attention, t)?,
        loss_mask: mk(loss_mask, t - 1)?,
        tokens,
    })
}

/// The micro-batches of `batch`: chunks of `micro_batch_size` items (0 = the whole batch as one).
pub fn micro_batches<T>(batch: &[T], micro_batch_size: usize) -> std::slice::Chunks<'_, T> {
    let size = if micro_batch_size == 0 { batch.len() } else { micro_batch_size.min(batch.len()) };
    batch.chunks(size.max(1))
}

/// Reads a scalar tensor as f64.
pub fn scalar(t: &Tensor) -> Result<f64, StageError> {
    t.to_dtype(DType::F64).and_then(|x| x.to_scalar::<f64>()).ctx(|| "reading a scalar".to_string())
}

/// A `[B]` f32 tensor of per-sequence values (advantages).
pub fn seq_tensor(a: &[f64], device: &Device) -> Result<Tensor, StageError> {
    Tensor::from_vec(a.iter().map(|&x| x as f32).collect::<Vec<_>>(), a.len(), device).ctx(|| "advantages tensor".to_string())
}

/// `[B, T-1]` log-probs of `ids` under `model` with logits divided by `temperature`.
pub fn logprobs(model: &CausalLm, ids: &Tensor, attention: &Tensor, temperature: f64) -> Result<Tensor, StageError> {
    let hidden = model.forward_hidden(ids, Some(attention)).ctx(|| "forward pass".to_string())?;
    hidden_logprobs(model, &hidden, ids, temperature)
}

/// `[B, T-1]` log-probs of `ids[:, 1..]` from hidden states `[B, T, H]` (so PPO's value head and
/// the policy share one trunk pass).
///
/// Uses the fused `keel_model::ops::token_logprobs` kernel: it never materialises the `[B, T, V]`
/// log-softmax (nor its gradient), which the composed `log_softmax` + `gather` did — in a GRPO
/// update that was several 90 MB tensors per pass. Results differ from the composed version only
/// in the last float bits.
pub fn hidden_logprobs(model: &CausalLm, hidden: &Tensor, ids: &Tensor, temperature: f64) -> Result<Tensor, StageError> {
    let (_, t) = ids.dims2().ctx(|| "reading the id batch shape".to_string())?;
    if t < 2 {
        return Err(StageError::msg(format!("log-probs need sequences of at least two tokens, got {t}")));
    }
    let h = hidden.narrow(1, 0, t - 1).ctx(|| "shifting hidden states".to_string())?;
    let mut logits = model.lm_head(&h).ctx(|| "output projection".to_string())?;
    if temperature != 1.0 {
        logits = (logits / temperature).ctx(|| "applying temperature".to_string())?;
    }
    let targets = ids.narrow(1, 1, t - 1).ctx(|| "shifting targets".to_string())?;
    keel_model::ops::token_logprobs(&logits, &targets, false).ctx(|| "gathering token log-probs".to_string())
}

/// Trunk hidden states `[B, C+1, H]` and completion-token log-probs `[B, C]` (see
/// [`CompletionLayout`]) of a shared-prefix batch; differentiable in `model`'s trainable weights.
///
/// Only completion tokens are projected onto the vocabulary: prompt positions never enter a
/// policy loss (TRL skips them the same way with `logits_to_keep`).
pub fn completion_logprobs(
    model: &CausalLm,
    batch: &SharedPrefixBatch,
    temperature: f64,
) -> Result<(Tensor, Tensor), StageError> {
    let hidden = model.forward_hidden_shared(batch).ctx(|| "forward pass".to_string())?;
    let lp = hidden_logprobs(model, &hidden, &batch.suffix_ids, temperature)?;
    Ok((hidden, lp))
}

/// A scored batch laid out by completion token: row `i` is rollout `i`, column `j` its completion
/// token `j` (right-padded to the longest completion, `width` columns).
///
/// Why this layout: a group's rollouts share their prompt, so the learner runs each distinct
/// prompt (minus its last token) once as a shared prefix and every completion as a continuation
/// that starts with that last prompt token, whose hidden state predicts the first completion token
/// (see `CausalLm::forward_hidden_shared`). Column `j` of every `[B, C]` tensor (log-probs, mask,
/// behaviour log-probs, token rewards, values) is then completion token `j` of its row.
pub struct CompletionLayout {
    /// Distinct prompts without their last token, in order of first appearance.
    prefixes: Vec<Vec<u32>>,
    /// Per rollout: its prefix and `[last prompt token] ⧺ completion`.
    rows: Vec<(usize, Vec<u32>)>,
    /// Longest completion (≥ 1).
    pub width: usize,
}

impl CompletionLayout {
    /// The layout of `batch`; an empty prompt or a batch of empty completions is an error.
    pub fn new(batch: &ScoredBatch) -> Result<Self, StageError> {
        let mut index: HashMap<&[u32], usize> = HashMap::new();
        let mut prefixes = Vec::new();
        let mut rows = Vec::with_capacity(batch.scored.len());
        for (i, s) in batch.scored.iter().enumerate() {
            let r = &s.rollout;
            let Some((&last, head)) = r.prompt_ids.split_last() else {
                return Err(StageError::msg(format!(
                    "rollout {i} has an empty prompt; every prompt needs at least one token"
                )));
            };
            let g = *index.entry(head).or_insert_with(|| {
                prefixes.push(head.to_vec());
                prefixes.len() - 1
            });
            let mut cont = Vec::with_capacity(1 + r.completion.token_ids.len());
            cont.push(last);
            cont.extend(&r.completion.token_ids);
            rows.push((g, cont));
        }
        let width = batch.scored.iter().map(|s| s.rollout.completion.token_ids.len()).max().unwrap_or(0);
        if width == 0 {
            return Err(StageError::msg("every completion in the batch is empty: there is nothing to learn from"));
        }
        Ok(CompletionLayout { prefixes, rows, width })
    }

    /// The model input for rollouts `rows` (only the prefixes they use).
    pub fn shared_batch(&self, rows: &[usize], device: &Device) -> Result<SharedPrefixBatch, StageError> {
        let mut remap: HashMap<usize, usize> = HashMap::new();
        let mut prefixes: Vec<&[u32]> = Vec::new();
        let mut conts: Vec<(usize, &[u32])> = Vec::with_capacity(rows.len());
        for &i in rows {
            let (g, cont) = &self.rows[i];
            let local = *remap.entry(*g).or_insert_with(|| {
                prefixes.push(&self.prefixes[*g]);
                prefixes.len() - 1
            });
            conts.push((local, cont.as_slice()));
        }
        // Pad with token 0: padding is masked out of attention and loss, so any valid id does.
        SharedPrefixBatch::with_width(&prefixes, &conts, self.width + 1, 0, device)
            .ctx(|| "building the learner batch".to_string())
    }

    /// Completion tokens of rollouts `rows`: the ones of [`CompletionLayout::loss_mask`] in those rows.
    pub fn tokens(&self, rows: &[usize]) -> f64 {
        rows.iter().map(|&i| self.rows[i].1.len() - 1).sum::<usize>() as f64
    }

    /// `[B, C]`: 1 on real completion tokens.
    pub fn loss_mask(&self, device: &Device) -> Result<Tensor, StageError> {
        let c = self.width;
        let m: Vec<f32> =
            self.rows.iter().flat_map(|(_, r)| (0..c).map(move |j| if j + 1 < r.len() { 1.0 } else { 0.0 })).collect();
        Tensor::from_vec(m, (self.rows.len(), c), device).ctx(|| "building the loss mask".to_string())
    }

    /// `[B, C]`: the behaviour log-probs the sampler recorded (0 on padding).
    pub fn old_logprobs(&self, batch: &ScoredBatch, device: &Device) -> Result<Tensor, StageError> {
        let c = self.width;
        let mut old = vec![0f32; batch.scored.len() * c];
        for (i, s) in batch.scored.iter().enumerate() {
            for (j, lp) in s.rollout.completion.logprobs.iter().take(c).enumerate() {
                old[i * c + j] = *lp;
            }
        }
        Tensor::from_vec(old, (batch.scored.len(), c), device).ctx(|| "building old log-probs".to_string())
    }
}
