//! Criterion benchmarks of the fused ops against their composed (`*_slow`) references, forward
//! and forward+backward, at the shapes of the `tiny-8m` training step (batch 16 × 128 tokens,
//! d_model 256, 8 heads of 32, SwiGLU 1024, vocabulary 4096), plus one whole train step, the
//! single-query decode attention at a decoding step of `bench/compare grpo` (64 sequences, 96
//! cached positions in a 128-position buffer; also with 8-row groups sharing 22 prompt positions),
//! a whole greedy decode of 16 × 64 tokens, and the learner's forward + backward on a GRPO batch
//! with and without the shared-prefix layout.
//!
//! Why: each fused op exists only because it is faster than the composed version; these numbers
//! keep that claim checked when kernels change. Run:
//! `RAYON_NUM_THREADS=2 cargo bench -p keel-model --bench ops` (see docs/performance.md).

use candle_core::{DType, Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use keel_model::{ops, CausalLm, ModelConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const B: usize = 16;
const T: usize = 128;
const D: usize = 256;
const H: usize = 8;
const HD: usize = 32;
const FF: usize = 1024;
const V: usize = 4096;

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).expect("random tensor")
}

fn var(shape: &[usize]) -> Var {
    Var::from_tensor(&randn(shape)).expect("variable")
}

/// Benchmarks `f` (forward) and `f` + `backward` of `sum(f · r)` for the fused and slow variants.
fn pair(c: &mut Criterion, name: &str, f: &dyn Fn(bool) -> Tensor) {
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    for fused in [true, false] {
        let label = if fused { "fused" } else { "composed" };
        g.bench_with_input(BenchmarkId::new("forward", label), &fused, |bch, &fused| bch.iter(|| f(fused)));
        g.bench_with_input(BenchmarkId::new("forward+backward", label), &fused, |bch, &fused| {
            bch.iter(|| f(fused).sum_all().and_then(|s| s.backward()).expect("backward"))
        });
    }
    g.finish();
}

fn bench_ops(c: &mut Criterion) {
    let x = var(&[B * T, D]);
    let w = var(&[D]);
    pair(c, "rms_norm", &|fused| {
        if fused { ops::rms_norm(&x, &w, 1e-5) } else { ops::rms_norm_slow(&x, &w, 1e-5) }.expect("rms_norm")
    });

    let scores = var(&[B, H, T, T]);
    let mask = Tensor::ones((B, T), DType::F32, &Device::Cpu).expect("mask");
    pair(c, "masked_softmax", &|fused| {
        let s = 1.0 / (HD as f64).sqrt();
        if fused { ops::masked_softmax(&scores, &mask, s, true) } else { ops::masked_softmax_slow(&scores, &mask, s, true) }
            .expect("softmax")
    });

    let q = var(&[B, T, H, HD]);
    let cos = randn(&[B, T, HD / 2]);
    let sin = randn(&[B, T, HD / 2]);
    pair(c, "rope", &|fused| {
        if fused { ops::rope(&q, &cos, &sin) } else { ops::rope_slow(&q, &cos, &sin) }.expect("rope")
    });

    let gate = var(&[B * T, FF]);
    let up = var(&[B * T, FF]);
    pair(c, "swiglu", &|fused| {
        if fused { ops::swiglu(&gate, &up) } else { ops::swiglu_slow(&gate, &up) }.expect("swiglu")
    });

    let logits = var(&[B, T, V]);
    let ids: Vec<u32> = (0..B * T).map(|i| ((i * 7919) % V) as u32).collect();
    let ids = Tensor::from_vec(ids, (B, T), &Device::Cpu).expect("ids");
    pair(c, "token_logprobs", &|fused| {
        if fused { ops::token_logprobs(&logits, &ids, true) } else { ops::token_logprobs_slow(&logits, &ids, true) }
            .expect("token_logprobs")
    });
}

/// Decode attention (inference only, so forward only): fused kernel vs the batched-matmul path.
fn bench_decode_attention(c: &mut Criterion) {
    let (b, cap, s) = (64usize, 128usize, 96usize);
    let q = randn(&[b, H, HD]);
    let kbuf = randn(&[b, H, cap, HD]);
    let vbuf = randn(&[b, H, cap, HD]);
    let (k, v) = (kbuf.narrow(2, 0, s).expect("k view"), vbuf.narrow(2, 0, s).expect("v view"));
    let mask = Tensor::ones((b, s), DType::F32, &Device::Cpu).expect("mask");
    let scale = 1.0 / (HD as f64).sqrt();
    let mut g = c.benchmark_group("decode_attention");
    g.sample_size(20);
    g.bench_function("fused", |bch| bch.iter(|| ops::decode_attention(&q, &k, &v, &mask, scale).expect("fused")));
    g.bench_function("composed", |bch| {
        bch.iter(|| ops::decode_attention_slow(&q, &k, &v, &mask, scale).expect("composed"))
    });
    // Groups of 8 rows sharing their first 22 positions (a GRPO rollout after a shared prefill).
    let shared = ops::SharedKeys { source: (0..b as u32).map(|r| r - r % 8).collect(), len: 22 };
    g.bench_function("fused_shared_prompt_keys", |bch| {
        bch.iter(|| ops::decode_attention_shared(&q, &k, &v, &mask, scale, Some(&shared)).expect("fused shared"))
    });
    g.finish();
}

/// Greedy KV-cache generation of 16 prompts × 32 tokens, 64 new tokens each (the generation
/// workload of `bench/compare`): prefill, then `forward_cached_last` per step.
fn bench_generate(c: &mut Criterion) {
    let cfg = ModelConfig::preset("tiny-8m", V).expect("preset");
    let model = CausalLm::new(&cfg, 0, &Device::Cpu, DType::F32).expect("model").inference_view();
    let (b, prompt, new) = (16usize, 32usize, 64usize);
    let ids: Vec<u32> = (0..b * prompt).map(|i| ((i * 7919) % V) as u32).collect();
    let ids = Tensor::from_vec(ids, (b, prompt), &Device::Cpu).expect("ids");
    let mut g = c.benchmark_group("tiny8m_generate_16x64");
    g.sample_size(10);
    g.bench_function("greedy", |bch| {
        bch.iter(|| {
            let mut cache = model.new_cache();
            let mut mask = Tensor::ones((b, prompt), DType::U8, &Device::Cpu).expect("mask");
            let one = Tensor::ones((b, 1), DType::U8, &Device::Cpu).expect("ones");
            let mut logits = model.forward_cached_last(&ids, &mask, &mut cache).expect("prefill");
            for _ in 1..new {
                let next = logits.argmax(candle_core::D::Minus1).and_then(|n| n.unsqueeze(1)).expect("argmax");
                mask = Tensor::cat(&[&mask, &one], 1).expect("mask");
                logits = model.forward_cached_last(&next, &mask, &mut cache).expect("decode step");
            }
            logits
        })
    });
    g.finish();
}

/// The learner's trunk forward + backward on a GRPO batch of `bench/compare grpo` (8 prompts of
/// 22 tokens × 8 completions of 64): every prompt ⧺ completion as its own row, against each
/// prompt once with its completions attending to it (`forward_hidden_shared`, the learner's path).
fn bench_shared_prefix(c: &mut Criterion) {
    let cfg = ModelConfig::preset("tiny-8m", V).expect("preset");
    let model = CausalLm::new(&cfg, 0, &Device::Cpu, DType::F32).expect("model");
    let (groups, n, prompt, completion) = (8usize, 8usize, 22usize, 64usize);
    let prompts: Vec<Vec<u32>> =
        (0..groups).map(|g| (0..prompt).map(|i| ((g * 131 + i * 7919) % V) as u32).collect()).collect();
    let conts: Vec<(usize, Vec<u32>)> = (0..groups * n)
        .map(|r| (r / n, (0..completion).map(|i| ((r * 17 + i * 104_729) % V) as u32).collect()))
        .collect();
    let full: Vec<u32> = conts.iter().flat_map(|(g, c)| prompts[*g].iter().chain(c).copied()).collect();
    let full = Tensor::from_vec(full, (groups * n, prompt + completion), &Device::Cpu).expect("ids");
    // The shared layout: prompts minus their last token, completions led by it.
    let heads: Vec<&[u32]> = prompts.iter().map(|p| &p[..prompt - 1]).collect();
    let led: Vec<Vec<u32>> = conts
        .iter()
        .map(|(g, c)| std::iter::once(prompts[*g][prompt - 1]).chain(c.iter().copied()).collect())
        .collect();
    let cont_refs: Vec<(usize, &[u32])> = conts.iter().zip(&led).map(|((g, _), l)| (*g, l.as_slice())).collect();
    let batch = keel_model::SharedPrefixBatch::new(&heads, &cont_refs, 0, &Device::Cpu).expect("batch");
    let mut g = c.benchmark_group("grpo_batch_fwd_bwd_64x86");
    g.sample_size(10);
    g.bench_function("separate_sequences", |bch| {
        bch.iter(|| {
            let h = model.forward_hidden(&full, None).expect("forward");
            h.narrow(1, prompt - 1, completion + 1)
                .and_then(|h| h.sum_all())
                .and_then(|l| l.backward())
                .expect("backward")
        })
    });
    g.bench_function("shared_prefix", |bch| {
        bch.iter(|| {
            let h = model.forward_hidden_shared(&batch).expect("forward");
            h.sum_all().and_then(|l| l.backward()).expect("backward")
        })
    });
    g.finish();
}

/// One `tiny-8m` forward + loss + backward (no optimiser), fused kernels on and off.
fn bench_train_step(c: &mut Criterion) {
    let cfg = ModelConfig::preset("tiny-8m", V).expect("preset");
    let model = CausalLm::new(&cfg, 0, &Device::Cpu, DType::F32).expect("model");
    let ids: Vec<u32> = (0..B * T).map(|i| ((i * 7919) % V) as u32).collect();
    let ids = Tensor::from_vec(ids, (B, T), &Device::Cpu).expect("ids");
    let mut g = c.benchmark_group("tiny8m_train_step");
    g.sample_size(10);
    for fused in [true, false] {
        g.bench_function(if fused { "fused" } else { "composed" }, |bch| {
            bch.iter(|| {
                ops::set_fused_enabled(fused);
                let lp = model.token_logprobs(&ids, None).expect("log-probs");
                lp.mean_all().and_then(|m| m.neg()).and_then(|l| l.backward()).expect("backward")
            })
        });
    }
    ops::set_fused_enabled(true);
    g.finish();
}

fn setup() {
    ops::tune_cpu_runtime();
}

fn benches(c: &mut Criterion) {
    setup();
    bench_ops(c);
    bench_decode_attention(c);
    bench_shared_prefix(c);
    bench_generate(c);
    bench_train_step(c);
}

criterion_group!(all, benches);
criterion_main!(all);
