//! Fixtures shared by the integration tests.
#![allow(dead_code)]

use keel_rollout::toy::{BigramModel, ContextModel, ToyCodec};
use keel_rollout::{Engine, EngineConfig};

/// `<eos> a b c d`.
pub fn abcd_codec() -> ToyCodec {
    ToyCodec::new(
        ["<eos>", "a", "b", "c", "d"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        0,
    )
}

/// Logit of the preferred successor in the chain model.
pub const PEAK: f32 = 5.0;

/// a -> b -> c -> d -> <eos> (and <eos> -> a), each with logit 5 against 0 for the rest.
pub fn chain_model() -> BigramModel {
    let v = 5;
    let next = [1usize, 2, 3, 4, 0];
    let mut table = vec![0f32; v * v];
    for (from, &to) in next.iter().enumerate() {
        table[from * v + to] = PEAK;
    }
    BigramModel::new(&table, v).unwrap()
}

/// After `a` the next token has probabilities [0.05, 0.1, 0.45, 0.25, 0.15]; other rows uniform.
pub const AFTER_A: [f32; 5] = [0.05, 0.1, 0.45, 0.25, 0.15];

pub fn distribution_model() -> BigramModel {
    let v = 5;
    let mut table = vec![0f32; v * v];
    for (j, p) in AFTER_A.iter().enumerate() {
        table[v + j] = p.ln();
    }
    BigramModel::new(&table, v).unwrap()
}

/// `<eos> a b ... k` (12 tokens).
pub fn letters_codec() -> ToyCodec {
    let mut t = vec!["<eos>".to_string()];
    t.extend(('a'..='k').map(|c| c.to_string()));
    ToyCodec::new(t, 0)
}

pub fn context_engine(config: EngineConfig) -> Engine<ContextModel, ToyCodec> {
    Engine::new(ContextModel::new(12, 0.7), letters_codec(), config)
}

/// Hand-computed `log_softmax(z / t)[k]` and entropy in f64.
pub fn reference_logprob_entropy(z: &[f32], t: f64, k: usize) -> (f64, f64) {
    let s: Vec<f64> = z.iter().map(|&x| x as f64 / t).collect();
    let lse = s.iter().map(|x| x.exp()).sum::<f64>().ln();
    let lp: Vec<f64> = s.iter().map(|x| x - lse).collect();
    let h = -lp.iter().map(|l| l.exp() * l).sum::<f64>();
    (lp[k], h)
}

/// A gate a test opens and closes: [`GatedModel`] waits at it in every forward pass, so a test
/// can hold a generation in progress for as long as it needs and observe the server meanwhile.
#[derive(Debug, Default)]
pub struct Gate {
    state: std::sync::Mutex<(bool, usize)>,
    changed: std::sync::Condvar,
}

impl Gate {
    /// Lets every waiting and future forward pass through.
    pub fn open(&self) {
        let mut s = self.state.lock().unwrap();
        s.0 = true;
        self.changed.notify_all();
    }

    /// Forward passes that have reached the gate so far.
    pub fn arrivals(&self) -> usize {
        self.state.lock().unwrap().1
    }

    /// Waits until `n` forward passes have reached the gate (at most `timeout`); true if they did.
    pub fn wait_for_arrivals(&self, n: usize, timeout: std::time::Duration) -> bool {
        let s = self.state.lock().unwrap();
        let (s, _) = self
            .changed
            .wait_timeout_while(s, timeout, |s| s.1 < n)
            .unwrap();
        s.1 >= n
    }

    fn pass(&self) {
        let mut s = self.state.lock().unwrap();
        s.1 += 1;
        self.changed.notify_all();
        while !s.0 {
            s = self.changed.wait(s).unwrap();
        }
    }
}

/// [`ContextModel`] behind a [`Gate`]: identical outputs, but each forward pass waits for the gate.
pub struct GatedModel {
    pub inner: ContextModel,
    pub gate: std::sync::Arc<Gate>,
}

impl keel_rollout::DecodeModel for GatedModel {
    type Cache = <ContextModel as keel_rollout::DecodeModel>::Cache;
    fn new_cache(&self, batch: usize) -> candle_core::Result<Self::Cache> {
        self.inner.new_cache(batch)
    }
    fn forward_cached(
        &self,
        ids: &candle_core::Tensor,
        mask: &candle_core::Tensor,
        cache: &mut Self::Cache,
    ) -> candle_core::Result<candle_core::Tensor> {
        self.gate.pass();
        self.inner.forward_cached(ids, mask, cache)
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn context_window(&self) -> Option<usize> {
        self.inner.context_window()
    }
    fn device(&self) -> &candle_core::Device {
        self.inner.device()
    }
}
