//! The rollout engine's shared prefill (each distinct prompt prefilled once, its KV-cache rows
//! copied to its samples, their decoding reading one copy of the prompt keys) against prefilling
//! every row, on a real `CausalLm`: same tokens, same log-probs.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use keel_model::{CausalLm, KvCache, ModelConfig};
use keel_rollout::toy::ToyCodec;
use keel_rollout::{DecodeModel, Engine, EngineConfig, SamplingParams};
use keel_stages::policy::LmDecoder;

/// The same decoder without row selection: the engine then prefills every row.
struct PerRowPrefill(LmDecoder);

impl DecodeModel for PerRowPrefill {
    type Cache = KvCache;
    fn new_cache(&self, batch: usize) -> candle_core::Result<KvCache> {
        self.0.new_cache(batch)
    }
    fn forward_cached(&self, ids: &Tensor, mask: &Tensor, cache: &mut KvCache) -> candle_core::Result<Tensor> {
        self.0.forward_cached(ids, mask, cache)
    }
    fn forward_cached_last(&self, ids: &Tensor, mask: &Tensor, cache: &mut KvCache) -> candle_core::Result<Tensor> {
        self.0.forward_cached_last(ids, mask, cache)
    }
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
    fn device(&self) -> &Device {
        self.0.device()
    }
}

#[test]
fn shared_prefill_samples_what_per_row_prefill_samples() {
    let vocab = 48;
    let cfg = ModelConfig::preset("tiny-300k", vocab).expect("preset exists");
    let model = Arc::new(CausalLm::new(&cfg, 11, &Device::Cpu, DType::F32).expect("model builds"));
    let codec = ToyCodec::new((0..vocab).map(|i| format!("<{i}>")).collect(), 0);
    let shared = Engine::new(LmDecoder(model.clone()), codec.clone(), EngineConfig::default());
    let per_row = Engine::new(PerRowPrefill(LmDecoder(model)), codec, EngineConfig::default());
    assert!(shared.model().can_select_cache_rows() && !per_row.model().can_select_cache_rows());

    // Prompts of different lengths, so the prefill is left-padded too.
    let prompts: Vec<Vec<u32>> = vec![vec![5, 9, 13, 2, 7, 30], vec![33, 1], vec![40, 41, 42, 3]];
    let params = SamplingParams { temperature: 1.0, max_new_tokens: 24, n: 5, seed: 1234, ..SamplingParams::default() };
    let a = shared.generate(&prompts, &params, 0).expect("shared prefill generates");
    let b = per_row.generate(&prompts, &params, 0).expect("per-row prefill generates");
    let mut tokens = 0;
    for (ga, gb) in a.iter().zip(&b) {
        assert_eq!(ga.len(), 5);
        for (ca, cb) in ga.iter().zip(gb) {
            assert_eq!(ca.token_ids, cb.token_ids);
            for (x, y) in ca.logprobs.iter().zip(&cb.logprobs) {
                assert!((x - y).abs() < 1e-4, "log-prob {x} vs {y}");
            }
            tokens += ca.token_ids.len();
        }
    }
    // The samples of a prompt differ (they are not copies of one another's draws).
    assert_ne!(a[0][0].token_ids, a[0][1].token_ids);
    assert!(tokens > 15 * 5, "completions are long enough to exercise decoding ({tokens} tokens)");
}
