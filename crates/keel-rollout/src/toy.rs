//! Tiny deterministic models and a tokenizer for tests, examples and pipeline smoke runs.
//!
//! They implement [`DecodeModel`] / [`TextCodec`] exactly to contract (they check the mask shape and
//! honour the mask), so code built on the engine can be exercised end to end in milliseconds and
//! with float-exact results, without model weights.

use candle_core::{DType, Device, Tensor};

use crate::error::BoxError;
use crate::model::{DecodeModel, TextCodec};

/// A tokenizer over a fixed list of token strings: encodes by greedy longest match, decodes by
/// concatenation, skipping the end-of-sequence token.
#[derive(Debug, Clone)]
pub struct ToyCodec {
    tokens: Vec<String>,
    eos: [u32; 1],
}

impl ToyCodec {
    /// A codec over `tokens` (id = position) whose end-of-sequence token is `eos`.
    pub fn new(tokens: Vec<String>, eos: u32) -> Self {
        ToyCodec { tokens, eos: [eos] }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True if the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

impl TextCodec for ToyCodec {
    fn encode(&self, text: &str) -> Result<Vec<u32>, BoxError> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let best = self
                .tokens
                .iter()
                .enumerate()
                .filter(|(i, t)| {
                    *i as u32 != self.eos[0] && !t.is_empty() && rest.starts_with(t.as_str())
                })
                .max_by_key(|(i, t)| (t.len(), std::cmp::Reverse(*i)));
            match best {
                Some((i, t)) => {
                    ids.push(i as u32);
                    rest = &rest[t.len()..];
                }
                None => return Err(format!("no token matches the start of {rest:?}").into()),
            }
        }
        Ok(ids)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, BoxError> {
        let mut s = String::new();
        for &id in ids {
            if id == self.eos[0] {
                continue;
            }
            match self.tokens.get(id as usize) {
                Some(t) => s.push_str(t),
                None => {
                    return Err(format!(
                        "token id {id} outside vocabulary of {}",
                        self.tokens.len()
                    )
                    .into())
                }
            }
        }
        Ok(s)
    }

    fn eos_ids(&self) -> &[u32] {
        &self.eos
    }
}

fn check_step(
    ids: &Tensor,
    mask: &Tensor,
    batch: usize,
    past: usize,
) -> candle_core::Result<(usize, usize)> {
    let (b, t) = ids.dims2()?;
    let (mb, mt) = mask.dims2()?;
    if ids.dtype() != DType::U32 || mask.dtype() != DType::U8 {
        candle_core::bail!(
            "toy model expects u32 ids and u8 mask, got {:?} / {:?}",
            ids.dtype(),
            mask.dtype()
        );
    }
    if b != batch || mb != b || mt != past + t {
        candle_core::bail!(
            "toy model: ids [{b}, {t}], mask [{mb}, {mt}], cache batch {batch} with {past} positions"
        );
    }
    Ok((b, t))
}

/// A bigram model: the logits after token `x` are row `x` of a `[V, V]` table, looked up with
/// `index_select`. Its greedy and sampled outputs are known in closed form.
#[derive(Debug, Clone)]
pub struct BigramModel {
    table: Tensor,
    vocab: usize,
    device: Device,
}

/// Cache of [`BigramModel`]: only tracks the batch size and length, to check the engine's masks.
#[derive(Debug, Clone)]
pub struct BigramCache {
    batch: usize,
    len: usize,
}

impl BigramModel {
    /// A bigram model from a row-major `[vocab, vocab]` table of logits.
    pub fn new(table: &[f32], vocab: usize) -> candle_core::Result<Self> {
        let device = Device::Cpu;
        let table = Tensor::from_slice(table, (vocab, vocab), &device)?;
        Ok(BigramModel {
            table,
            vocab,
            device,
        })
    }
}

impl DecodeModel for BigramModel {
    type Cache = BigramCache;

    fn new_cache(&self, batch: usize) -> candle_core::Result<BigramCache> {
        Ok(BigramCache { batch, len: 0 })
    }

    fn forward_cached(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        cache: &mut BigramCache,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = check_step(ids, mask, cache.batch, cache.len)?;
        cache.len += t;
        self.table
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, self.vocab))
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

/// A model whose next-token logits depend on the whole (unmasked) history: with `S` the sum of the
/// real token ids so far and `n` their count, the centre is `c = (S + n) mod V` and
/// `logit[v] = -sharpness * circular_distance(v, c)`. Masked positions are ignored, so a padded or
/// finished row must be masked exactly right for batch-of-one and batched samples to agree.
#[derive(Debug, Clone)]
pub struct ContextModel {
    vocab: usize,
    sharpness: f32,
    context: Option<usize>,
    device: Device,
}

/// Cache of [`ContextModel`]: per-row running sums and counts of real tokens.
#[derive(Debug, Clone)]
pub struct ContextCache {
    sums: Vec<u64>,
    counts: Vec<u64>,
    len: usize,
}

impl ContextModel {
    /// A context model over `vocab` tokens; larger `sharpness` concentrates mass near the centre.
    pub fn new(vocab: usize, sharpness: f32) -> Self {
        ContextModel {
            vocab,
            sharpness,
            context: None,
            device: Device::Cpu,
        }
    }

    /// The same model reporting a context window of `tokens` ([`DecodeModel::context_window`]),
    /// to test the limits the engine and server enforce; the model itself computes any length.
    pub fn with_context_window(mut self, tokens: usize) -> Self {
        self.context = Some(tokens);
        self
    }
}

impl DecodeModel for ContextModel {
    type Cache = ContextCache;

    fn new_cache(&self, batch: usize) -> candle_core::Result<ContextCache> {
        Ok(ContextCache {
            sums: vec![0; batch],
            counts: vec![0; batch],
            len: 0,
        })
    }

    fn forward_cached(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        cache: &mut ContextCache,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = check_step(ids, mask, cache.sums.len(), cache.len)?;
        let ids = ids.to_vec2::<u32>()?;
        let mask = mask.to_vec2::<u8>()?;
        let v = self.vocab;
        let mut out = vec![0f32; b * t * v];
        for r in 0..b {
            for j in 0..t {
                if mask[r][cache.len + j] == 1 {
                    cache.sums[r] += ids[r][j] as u64;
                    cache.counts[r] += 1;
                }
                let centre = ((cache.sums[r] + cache.counts[r]) % v as u64) as usize;
                let row = &mut out[(r * t + j) * v..(r * t + j + 1) * v];
                for (k, l) in row.iter_mut().enumerate() {
                    let d = k.abs_diff(centre);
                    *l = -self.sharpness * d.min(v - d) as f32;
                }
            }
        }
        cache.len += t;
        Tensor::from_vec(out, (b, t, v), &self.device)
    }

    fn context_window(&self) -> Option<usize> {
        self.context
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn device(&self) -> &Device {
        &self.device
    }
}
