//! The local sampling engine: batched, KV-cached generation with groups and per-token log-probs.

use std::collections::HashMap;

use candle_core::{DType, Storage, Tensor};
use keel_core::{Completion, FinishReason};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::backend::{GenerationGroup, RolloutBackend};
use crate::error::{Result, RolloutError};
use crate::logits::{self, Scratch};
use crate::model::{DecodeModel, TextCodec};
use crate::params::SamplingParams;

/// The random stream of sample `sample_index` of prompt `prompt_index` under root `seed`.
///
/// The ChaCha8 key is the little-endian bytes of `(seed, prompt_index, sample_index)` followed by the
/// tag `b"keelsmpl"`: injective, portable, and independent of how rows are batched or which thread
/// runs them. Each non-greedy decode step draws exactly one `f64` from it.
pub fn sample_rng(seed: u64, prompt_index: u64, sample_index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[0..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&prompt_index.to_le_bytes());
    key[16..24].copy_from_slice(&sample_index.to_le_bytes());
    key[24..32].copy_from_slice(b"keelsmpl");
    ChaCha8Rng::from_seed(key)
}

/// Tuning knobs of the local engine that do not change what is sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Maximum rows (prompt × sample pairs) decoded together; larger requests are split into
    /// micro-batches to bound KV-cache memory.
    pub max_batch_rows: usize,
    /// Sort rows by prompt length before splitting into micro-batches, which reduces padding.
    /// Results do not depend on it beyond float effects of padding in the real model.
    pub sort_by_length: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch_rows: 64,
            sort_by_length: true,
        }
    }
}

/// A tokenised prompt and the index that keys its random streams (see [`sample_rng`]).
///
/// Passing the index explicitly lets a caller split a batch into several calls (or send one prompt
/// alone) and still get exactly the samples the whole batch would have produced.
#[derive(Debug, Clone, Copy)]
pub struct KeyedPrompt<'a> {
    /// Prompt token ids (non-empty).
    pub ids: &'a [u32],
    /// Index keying the prompt's random streams; normally its position in the batch.
    pub index: u64,
}

/// Batched sampler over any [`DecodeModel`] + [`TextCodec`].
///
/// # How a batch is generated
///
/// Every (prompt, sample) pair becomes one row; a group of `n` completions repeats the prompt row
/// `n` times. Rows are left-padded to the longest prompt with an attention mask and the batch is
/// prefilled once, each distinct prompt only once when the model can copy KV-cache rows
/// ([`DecodeModel::select_cache_rows`]; otherwise every row is prefilled), then decoded one token
/// per step. A row that finishes (stop token, stop string or token budget) stays in the batch, fed
/// the pad token with mask 0, so the cache never has to be re-indexed; the batch stops as soon as
/// every row has finished.
/// candle parallelises the matmuls; the engine samples the rows of a step in parallel (rayon).
#[derive(Debug, Clone)]
pub struct Engine<M, C> {
    model: M,
    codec: C,
    config: EngineConfig,
}

#[derive(Debug, Clone, Copy)]
struct RowJob {
    prompt: usize,
    sample: usize,
}

struct RowState {
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    entropies: Vec<f32>,
    finish: Option<FinishReason>,
    /// Text already cut at a stop string, when one was found.
    cut_text: Option<String>,
    rng: ChaCha8Rng,
}

/// One row's pick at a decode step: `None` for a finished row, `Some(None)` for non-finite
/// logits, else the token, its log-prob and the distribution's entropy.
type Pick = Option<Option<(usize, f32, f32)>>;

/// What the prefill leaves for the decode loop.
struct Prefill<K> {
    cache: K,
    /// The last-position logits of every row, `[rows, vocab]`.
    logits: Tensor,
    /// Each row's attention-mask history (capacity for the whole run).
    mask_rows: Vec<Vec<u8>>,
    /// The flattened masks of the last forward, reused by every decode step.
    mask_flat: Vec<u8>,
    /// The padded prompt length.
    prompt_len: usize,
}

/// The row states at the start of decoding, each with its keyed generator.
fn new_row_states(
    rows: &[RowJob],
    prompts: &[KeyedPrompt<'_>],
    params: &SamplingParams,
) -> Vec<RowState> {
    let max_new = params.max_new_tokens;
    rows.iter()
        .map(|r| RowState {
            tokens: Vec::with_capacity(max_new),
            logprobs: Vec::with_capacity(max_new),
            entropies: Vec::with_capacity(max_new),
            finish: None,
            cut_text: None,
            rng: sample_rng(params.seed, prompts[r.prompt].index, r.sample as u64),
        })
        .collect()
}

/// The next decode step's input: each active row's last token (padding for finished rows), and
/// every row's mask extended by one position (1 when active) and flattened into `mask_flat`.
fn next_decode_input(
    states: &[RowState],
    pad: u32,
    next_ids: &mut [u32],
    mask_rows: &mut [Vec<u8>],
    mask_flat: &mut Vec<u8>,
) {
    mask_flat.clear();
    for (i, st) in states.iter().enumerate() {
        let active = st.finish.is_none();
        next_ids[i] = if active {
            st.tokens.last().copied().unwrap_or(pad)
        } else {
            pad
        };
        mask_rows[i].push(u8::from(active));
        mask_flat.extend_from_slice(&mask_rows[i]);
    }
}

impl<M: DecodeModel, C: TextCodec> Engine<M, C> {
    /// An engine over a model and its tokenizer.
    pub fn new(model: M, codec: C, config: EngineConfig) -> Self {
        Engine {
            model,
            codec,
            config,
        }
    }

    /// The model (e.g. to swap weights between policy versions).
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The tokenizer.
    pub fn codec(&self) -> &C {
        &self.codec
    }

    /// The tuning knobs.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Encodes a rendered prompt with the engine's tokenizer, with the prompt's position for context.
    pub fn encode_prompt(&self, text: &str, index: usize) -> Result<Vec<u32>> {
        self.codec
            .encode(text)
            .map_err(|source| RolloutError::Codec {
                during: format!("encoding prompt {index}"),
                source,
            })
    }

    /// Checks that a prompt of `prompt_tokens` tokens (at position `index` of its request) plus
    /// `max_new_tokens` generated tokens fits the model's context window, so callers that queue
    /// work (the server) can refuse an oversized prompt before waiting for the model.
    /// [`Engine::generate_keyed`] runs the same check on every prompt.
    pub fn check_context(
        &self,
        index: usize,
        prompt_tokens: usize,
        max_new_tokens: usize,
    ) -> Result<()> {
        match self.model.context_window() {
            Some(context) if prompt_tokens.saturating_add(max_new_tokens) > context => {
                Err(RolloutError::ContextOverflow {
                    index,
                    prompt_tokens,
                    max_new_tokens,
                    context,
                })
            }
            _ => Ok(()),
        }
    }

    /// Samples `params.n` completions for each prompt; prompt `i` is keyed by index `i`.
    /// Returns one `Vec` of `n` completions per prompt, in prompt order.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
        policy_version: u64,
    ) -> Result<Vec<Vec<Completion>>> {
        let keyed: Vec<KeyedPrompt<'_>> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| KeyedPrompt {
                ids: p,
                index: i as u64,
            })
            .collect();
        self.generate_keyed(&keyed, params, policy_version)
    }

    /// Encodes text prompts and samples `params.n` completions for each (prompt `i` keyed by `i`).
    pub fn generate_text(
        &self,
        prompts: &[&str],
        params: &SamplingParams,
        policy_version: u64,
    ) -> Result<Vec<Vec<Completion>>> {
        let ids = prompts
            .iter()
            .enumerate()
            .map(|(i, t)| self.encode_prompt(t, i))
            .collect::<Result<Vec<_>>>()?;
        self.generate(&ids, params, policy_version)
    }

    /// Samples `params.n` completions for each keyed prompt: the primitive every other method uses.
    ///
    /// Every prompt must be non-empty, hold only ids inside the vocabulary and fit the model's
    /// context window together with `params.max_new_tokens` ([`RolloutError::ContextOverflow`]
    /// otherwise, naming the prompt's position, its length and both limits); all of it is checked
    /// before any model work, so one bad prompt fails the call without allocating for the batch.
    pub fn generate_keyed(
        &self,
        prompts: &[KeyedPrompt<'_>],
        params: &SamplingParams,
        policy_version: u64,
    ) -> Result<Vec<Vec<Completion>>> {
        params.validate()?;
        if let Some(index) = prompts.iter().position(|p| p.ids.is_empty()) {
            return Err(RolloutError::EmptyPrompt { index });
        }
        for (index, p) in prompts.iter().enumerate() {
            self.check_context(index, p.ids.len(), params.max_new_tokens)?;
        }
        let vocab = self.model.vocab_size();
        if let Some((index, &bad)) = prompts
            .iter()
            .enumerate()
            .find_map(|(i, p)| p.ids.iter().find(|&&t| t as usize >= vocab).map(|t| (i, t)))
        {
            return Err(RolloutError::invalid(
                "prompt",
                format!(
                    "prompt {index} contains token id {bad}, outside the vocabulary of {vocab}"
                ),
            ));
        }
        let mut rows: Vec<RowJob> = (0..prompts.len())
            .flat_map(|prompt| (0..params.n).map(move |sample| RowJob { prompt, sample }))
            .collect();
        if self.config.sort_by_length {
            rows.sort_by_key(|r| prompts[r.prompt].ids.len());
        }
        let mut stop_ids: Vec<u32> = self.codec.eos_ids().to_vec();
        stop_ids.extend_from_slice(&params.stop_token_ids);
        stop_ids.sort_unstable();
        stop_ids.dedup();

        let mut done: Vec<(RowJob, Completion)> = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(self.config.max_batch_rows.max(1)) {
            let completions = self.run_batch(chunk, prompts, params, &stop_ids, policy_version)?;
            done.extend(chunk.iter().copied().zip(completions));
        }
        done.sort_by_key(|(r, _)| (r.prompt, r.sample));
        let mut out: Vec<Vec<Completion>> = (0..prompts.len())
            .map(|_| Vec::with_capacity(params.n))
            .collect();
        for (r, c) in done {
            out[r.prompt].push(c);
        }
        Ok(out)
    }

    fn forward(
        &self,
        ids: &[u32],
        mask: &[u8],
        shape: (usize, usize, usize),
        cache: &mut M::Cache,
        during: &dyn Fn() -> String,
    ) -> Result<Tensor> {
        let (b, t, total) = shape;
        let model_err = |source| RolloutError::Model {
            during: during(),
            source,
        };
        let device = self.model.device();
        let input = Tensor::from_slice(ids, (b, t), device).map_err(model_err)?;
        let mask = Tensor::from_slice(mask, (b, total), device).map_err(model_err)?;
        let logits = self
            .model
            .forward_cached_last(&input, &mask, cache)
            .map_err(model_err)?;
        let vocab = self.model.vocab_size();
        if logits.dims() != [b, vocab] {
            return Err(RolloutError::LogitsShape {
                during: during(),
                got: logits.dims().to_vec(),
                expected: format!("[{b}, {vocab}] (last position)"),
            });
        }
        logits
            .to_dtype(DType::F32)
            .and_then(|l| l.contiguous())
            .map_err(model_err)
    }

    /// Generates one batch of rows: prefill, then one decode step at a time until every row has
    /// stopped or reached `params.max_new_tokens`, then the rows' completions.
    fn run_batch(
        &self,
        rows: &[RowJob],
        prompts: &[KeyedPrompt<'_>],
        params: &SamplingParams,
        stop_ids: &[u32],
        policy_version: u64,
    ) -> Result<Vec<Completion>> {
        let b = rows.len();
        let max_new = params.max_new_tokens;
        let pad = self.codec.pad_id();
        let Prefill {
            mut cache,
            mut logits,
            mut mask_rows,
            mut mask_flat,
            prompt_len,
        } = self.prefill(rows, prompts, max_new)?;

        let mut states = new_row_states(rows, prompts, params);
        let plain_sampling = logits::is_untruncated_unit_temperature(params);
        let mut next_ids: Vec<u32> = vec![pad; b];

        for step in 0..max_new {
            with_f32_data(&logits, |data| -> Result<()> {
                let picks = self.pick_tokens(data, &mut states, params, plain_sampling);
                self.record_picks(&mut states, picks, rows, prompts, params, stop_ids, step)
            })
            .map_err(|source| RolloutError::Model {
                during: format!("reading logits at step {step}"),
                source,
            })??;

            if states.iter().all(|s| s.finish.is_some()) {
                break;
            }
            next_decode_input(&states, pad, &mut next_ids, &mut mask_rows, &mut mask_flat);
            let total = prompt_len + step + 1;
            logits = self.forward(&next_ids, &mask_flat, (b, 1, total), &mut cache, &|| {
                format!("decode step {}", step + 1)
            })?;
        }

        self.completions(rows, states, prompts, stop_ids, policy_version)
    }

    /// Prefills the left-padded prompts of `rows` and returns the cache, the last-position logits
    /// of every row and the rows' attention masks (with capacity for `max_new` more tokens).
    ///
    /// The samples of one prompt share its prefill when the model can copy cache rows: the first
    /// row of each distinct prompt is prefilled, then row `i` takes the cache row and logits of
    /// prefilled row `source[i]`.
    fn prefill(
        &self,
        rows: &[RowJob],
        prompts: &[KeyedPrompt<'_>],
        max_new: usize,
    ) -> Result<Prefill<M::Cache>> {
        let b = rows.len();
        let prompt_len = rows
            .iter()
            .map(|r| prompts[r.prompt].ids.len())
            .max()
            .unwrap_or(0);
        let pad = self.codec.pad_id();

        // The mask history of every row (capacity for the whole run), left-padded prompts first.
        let mut mask_rows: Vec<Vec<u8>> = Vec::with_capacity(b);
        for r in rows {
            let n = prompts[r.prompt].ids.len();
            let mut m = Vec::with_capacity(prompt_len + max_new);
            m.extend(std::iter::repeat_n(0u8, prompt_len - n));
            m.extend(std::iter::repeat_n(1u8, n));
            mask_rows.push(m);
        }
        let mut first_rows: Vec<usize> = Vec::new();
        let mut position: HashMap<usize, u32> = HashMap::new();
        let source: Vec<u32> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                *position.entry(r.prompt).or_insert_with(|| {
                    first_rows.push(i);
                    (first_rows.len() - 1) as u32
                })
            })
            .collect();
        let share = first_rows.len() < b && self.model.can_select_cache_rows();
        let prefill: Vec<usize> = if share { first_rows } else { (0..b).collect() };
        let mut ids: Vec<u32> = Vec::with_capacity(prefill.len() * prompt_len);
        let mut mask_flat: Vec<u8> = Vec::with_capacity(b * (prompt_len + max_new));
        for &ri in &prefill {
            let p = prompts[rows[ri].prompt].ids;
            ids.extend(std::iter::repeat_n(pad, prompt_len - p.len()));
            ids.extend_from_slice(p);
            mask_flat.extend_from_slice(&mask_rows[ri]);
        }

        let mut cache =
            self.model
                .new_cache(prefill.len())
                .map_err(|source| RolloutError::Model {
                    during: "creating the KV cache".into(),
                    source,
                })?;
        let mut logits = self.forward(
            &ids,
            &mask_flat,
            (prefill.len(), prompt_len, prompt_len),
            &mut cache,
            &|| "prefill".to_string(),
        )?;
        if share {
            let model_err = |source| RolloutError::Model {
                during: "sharing the prefill among samples".into(),
                source,
            };
            self.model
                .select_cache_rows(&mut cache, &source)
                .map_err(model_err)?;
            logits = Tensor::from_slice(&source, b, self.model.device())
                .and_then(|idx| logits.index_select(&idx, 0))
                .map_err(model_err)?;
        }
        Ok(Prefill {
            cache,
            logits,
            mask_rows,
            mask_flat,
            prompt_len,
        })
    }

    /// Every active row's next token, log-prob and entropy from the step's logits `data`
    /// (`[rows, vocab]`), rows in parallel (each has its own generator, so the draws do not
    /// depend on scheduling): `None` for a finished row, `Some(None)` for a row whose logits are
    /// not finite.
    fn pick_tokens(
        &self,
        data: &[f32],
        states: &mut [RowState],
        params: &SamplingParams,
        plain_sampling: bool,
    ) -> Vec<Pick> {
        let vocab = self.model.vocab_size();
        states
            .par_iter_mut()
            .enumerate()
            .map_init(
                || {
                    (
                        vec![0f32; vocab],
                        Scratch::default(),
                        Vec::<f64>::with_capacity(vocab),
                    )
                },
                |(work, scratch, exps), (i, st)| {
                    if st.finish.is_some() {
                        return None;
                    }
                    let row = &data[i * vocab..(i + 1) * vocab];
                    if !logits::logits_are_valid(row) {
                        return Some(None);
                    }
                    Some(if params.is_greedy() {
                        let token = logits::argmax(row);
                        let (lp, h) = logits::logprob_and_entropy(row, params.temperature, token);
                        Some((token, lp, h))
                    } else if plain_sampling {
                        // One exponentiation pass for sample, log-prob and entropy (identical
                        // results to the general branch, see `sample_with_logprob`).
                        let u: f64 = st.rng.random();
                        logits::sample_with_logprob(row, u, exps)
                    } else {
                        work.copy_from_slice(row);
                        logits::process_logits(work, params, scratch);
                        let u: f64 = st.rng.random();
                        logits::sample_from_logits(work, u).map(|token| {
                            let (lp, h) =
                                logits::logprob_and_entropy(row, params.temperature, token);
                            (token, lp, h)
                        })
                    })
                },
            )
            .collect()
    }

    /// Appends each active row's pick to its state and decides whether the row has finished: a
    /// stop token, a stop string in its decoded text (the text is cut before it), or the length
    /// budget. A row with non-finite logits fails the call with [`RolloutError::NonFiniteLogits`].
    #[allow(clippy::too_many_arguments)]
    fn record_picks(
        &self,
        states: &mut [RowState],
        picks: Vec<Pick>,
        rows: &[RowJob],
        prompts: &[KeyedPrompt<'_>],
        params: &SamplingParams,
        stop_ids: &[u32],
        step: usize,
    ) -> Result<()> {
        let max_new = params.max_new_tokens;
        for (i, (st, pick)) in states.iter_mut().zip(picks).enumerate() {
            let Some(pick) = pick else { continue };
            let job = rows[i];
            let (token, lp, h) = pick.ok_or(RolloutError::NonFiniteLogits {
                prompt_index: prompts[job.prompt].index,
                sample_index: job.sample as u64,
                step,
            })?;
            let token = token as u32;
            st.tokens.push(token);
            st.logprobs.push(lp);
            st.entropies.push(h);
            if stop_ids.binary_search(&token).is_ok() {
                st.finish = Some(FinishReason::Stop);
            } else if !params.stop.is_empty() {
                let text = self.decode_row(&st.tokens, prompts[job.prompt].index, job.sample)?;
                if let Some(pos) = params
                    .stop
                    .iter()
                    .filter_map(|s| text.find(s.as_str()))
                    .min()
                {
                    st.cut_text = Some(text[..pos].to_string());
                    st.finish = Some(FinishReason::Stop);
                }
            }
            if st.finish.is_none() && st.tokens.len() >= max_new {
                st.finish = Some(FinishReason::Length);
            }
        }
        Ok(())
    }

    /// The rows' completions: the text cut at a stop string, or else the decoded tokens without
    /// a final stop token (which stays in `token_ids`).
    fn completions(
        &self,
        rows: &[RowJob],
        states: Vec<RowState>,
        prompts: &[KeyedPrompt<'_>],
        stop_ids: &[u32],
        policy_version: u64,
    ) -> Result<Vec<Completion>> {
        rows.iter()
            .zip(states)
            .map(|(job, st)| {
                let finish = st.finish.unwrap_or(FinishReason::Length);
                let text = match st.cut_text {
                    Some(t) => t,
                    None => {
                        let n_text = match (finish, st.tokens.last()) {
                            (FinishReason::Stop, Some(t)) if stop_ids.binary_search(t).is_ok() => {
                                st.tokens.len() - 1
                            }
                            _ => st.tokens.len(),
                        };
                        self.decode_row(
                            &st.tokens[..n_text],
                            prompts[job.prompt].index,
                            job.sample,
                        )?
                    }
                };
                Ok(Completion {
                    text,
                    token_ids: st.tokens,
                    logprobs: st.logprobs,
                    entropies: st.entropies,
                    finish,
                    policy_version,
                })
            })
            .collect()
    }

    fn decode_row(&self, ids: &[u32], prompt_index: u64, sample: usize) -> Result<String> {
        self.codec
            .decode(ids)
            .map_err(|source| RolloutError::Codec {
                during: format!("decoding completion {sample} of prompt {prompt_index}"),
                source,
            })
    }
}

/// Calls `f` with the contiguous `f32` data of `t`, borrowing CPU storage directly (no copy) and
/// falling back to a copy for other devices.
fn with_f32_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            let data = cpu.as_slice::<f32>()?;
            return Ok(f(&data[start..end]));
        }
    }
    let data = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(f(&data))
}

impl<M: DecodeModel, C: TextCodec> RolloutBackend for Engine<M, C> {
    fn generate_groups(
        &self,
        prompts: &[String],
        params: &SamplingParams,
        policy_version: u64,
    ) -> Result<Vec<GenerationGroup>> {
        let ids = prompts
            .iter()
            .enumerate()
            .map(|(i, t)| self.encode_prompt(t, i))
            .collect::<Result<Vec<_>>>()?;
        let completions = self.generate(&ids, params, policy_version)?;
        Ok(ids
            .into_iter()
            .zip(completions)
            .map(|(prompt_ids, completions)| GenerationGroup {
                prompt_ids,
                completions,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_streams_are_keyed_and_distinct() {
        let a: Vec<u64> = (0..3)
            .map(|_| 0)
            .scan(sample_rng(7, 1, 2), |r, _: u64| Some(r.random()))
            .collect();
        let b: Vec<u64> = (0..3)
            .map(|_| 0)
            .scan(sample_rng(7, 1, 2), |r, _: u64| Some(r.random()))
            .collect();
        assert_eq!(a, b);
        let first = |s, p, i| -> u64 { sample_rng(s, p, i).random() };
        assert_ne!(first(7, 1, 2), first(7, 2, 1));
        assert_ne!(first(7, 1, 2), first(8, 1, 2));
        assert_ne!(first(7, 1, 2), first(7, 1, 3));
    }
}
