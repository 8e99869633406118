//! Logits parity with candle-transformers' inference implementations on identical random weights.
//!
//! Traps handled (see DESIGN.md): `llama::Llama` and `mistral::Model` return last-position logits
//! only, so every prefix is run separately; the Qwen models keep a KV cache across calls, so a
//! fresh model is built per call; configs are parsed by Keel and the candle-transformers config
//! structs are filled in directly.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Activation, VarBuilder};
use candle_transformers::models::{llama, mistral, qwen2, qwen3};
use common::{ids, max_abs_diff, random_tensors, tiny_config};
use keel_model::{CausalLm, ModelConfig, RopeScaling};

const TOL: f64 = 1e-4;

fn batch() -> Tensor {
    ids(&[&[1, 5, 9, 33, 4, 60, 7, 12], &[3, 3, 8, 21, 42, 17, 0, 2]])
}

fn ours(cfg: &ModelConfig, tensors: &std::collections::HashMap<String, Tensor>) -> Tensor {
    let m = CausalLm::from_tensors(cfg.clone(), tensors.clone()).unwrap();
    m.forward(&batch(), None).unwrap()
}

/// Compares per-prefix last-position logits `[B, V]` with our full-sequence logits.
fn check_prefixes(name: &str, full: &Tensor, mut last: impl FnMut(&Tensor) -> Tensor) -> f64 {
    let x = batch();
    let t = x.dim(1).unwrap();
    let mut worst = 0f64;
    for l in 1..=t {
        let theirs = last(&x.narrow(1, 0, l).unwrap());
        let mine = full.narrow(1, l - 1, 1).unwrap().squeeze(1).unwrap();
        worst = worst.max(max_abs_diff(&mine, &theirs.reshape(mine.shape()).unwrap()));
    }
    eprintln!("{name}: max |logit diff| vs candle-transformers = {worst:.2e}");
    assert!(worst <= TOL, "{name}: {worst}");
    worst
}

fn llama_cfg(cfg: &ModelConfig) -> llama::Config {
    llama::Config {
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        vocab_size: cfg.vocab_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: cfg.num_key_value_heads,
        use_flash_attn: false,
        rms_norm_eps: cfg.rms_norm_eps,
        rope_theta: cfg.rope_theta as f32,
        bos_token_id: None,
        eos_token_id: None,
        rope_scaling: match &cfg.rope_scaling {
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
                Some(llama::Llama3RopeConfig {
                    factor: *factor as f32,
                    low_freq_factor: *low_freq_factor as f32,
                    high_freq_factor: *high_freq_factor as f32,
                    original_max_position_embeddings: *original_max_position_embeddings,
                    rope_type: llama::Llama3RopeType::Llama3,
                })
            }
            _ => None,
        },
        max_position_embeddings: cfg.max_position_embeddings,
        tie_word_embeddings: cfg.tie_word_embeddings,
    }
}

fn run_llama(name: &str, cfg: &ModelConfig) {
    let tensors = random_tensors(cfg, 21, DType::F32);
    let full = ours(cfg, &tensors);
    let ccfg = llama_cfg(cfg);
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let model = llama::Llama::load(vb, &ccfg).unwrap();
    check_prefixes(name, &full, |x| {
        let mut cache = llama::Cache::new(false, DType::F32, &ccfg, &Device::Cpu).unwrap();
        model.forward(x, 0, &mut cache).unwrap()
    });
}

/// Compares our logits with a candle-transformers model that returns final hidden states: projects
/// them onto the (tied) embedding matrix and asserts the largest difference is within `TOL`.
fn assert_hidden_parity(name: &str, ours: &Tensor, hidden: &Tensor, head: &Tensor) {
    let theirs = hidden.broadcast_matmul(&head.t().unwrap()).unwrap();
    let d = max_abs_diff(ours, &theirs);
    eprintln!("{name}: max |logit diff| vs candle-transformers = {d:.2e}");
    assert!(d <= TOL, "{name}: {d}");
}

#[test]
fn llama_untied_and_tied_match_candle_transformers() {
    run_llama("llama (untied)", &tiny_config("llama", false));
    run_llama("llama (tied)", &tiny_config("llama", true));
}

#[test]
fn llama3_rope_scaling_matches_candle_transformers() {
    let mut cfg = tiny_config("llama", false);
    // head_dim 8, theta 10000: wavelengths 2π·{1, 10, 100, 1000} straddle both boundaries.
    cfg.rope_scaling = Some(RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64,
    });
    cfg.inv_freq_check();
    run_llama("llama3 rope scaling", &cfg);
}

trait InvFreqCheck {
    fn inv_freq_check(&self);
}
impl InvFreqCheck for ModelConfig {
    /// Sanity: the scaled frequencies really differ from the unscaled ones in this test.
    fn inv_freq_check(&self) {
        let mut plain = self.clone();
        plain.rope_scaling = None;
        assert_ne!(self.rope_inv_freq(), plain.rope_inv_freq());
    }
}

#[test]
fn qwen2_matches_candle_transformers() {
    let cfg = tiny_config("qwen2", false);
    let tensors = random_tensors(&cfg, 22, DType::F32);
    let full = ours(&cfg, &tensors);
    let ccfg = qwen2::Config {
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: cfg.num_key_value_heads,
        max_position_embeddings: cfg.max_position_embeddings,
        sliding_window: cfg.max_position_embeddings,
        max_window_layers: cfg.num_hidden_layers,
        tie_word_embeddings: cfg.tie_word_embeddings,
        rope_theta: cfg.rope_theta,
        rms_norm_eps: cfg.rms_norm_eps,
        use_sliding_window: false,
        hidden_act: Activation::Silu,
    };
    let head = tensors["lm_head.weight"].clone();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    // Fresh model per call: qwen2::Model keeps its KV cache across forwards.
    let mut model = qwen2::Model::new(&ccfg, vb).unwrap();
    let hidden = model.forward(&batch(), 0, None).unwrap();
    assert_hidden_parity("qwen2", &full, &hidden, &head);
}

#[test]
fn qwen3_matches_candle_transformers() {
    let cfg = tiny_config("qwen3", true);
    let tensors = random_tensors(&cfg, 23, DType::F32);
    let full = ours(&cfg, &tensors);
    let ccfg = qwen3::Config {
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        head_dim: cfg.head_dim,
        attention_bias: cfg.qkv_bias,
        num_key_value_heads: cfg.num_key_value_heads,
        max_position_embeddings: cfg.max_position_embeddings,
        sliding_window: None,
        max_window_layers: cfg.num_hidden_layers,
        tie_word_embeddings: cfg.tie_word_embeddings,
        rope_theta: cfg.rope_theta,
        rms_norm_eps: cfg.rms_norm_eps,
        use_sliding_window: false,
        hidden_act: Activation::Silu,
    };
    let head = tensors["model.embed_tokens.weight"].clone();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let mut model = qwen3::Model::new(&ccfg, vb).unwrap();
    let hidden = model.forward(&batch(), 0).unwrap();
    assert_hidden_parity("qwen3", &full, &hidden, &head);
}

#[test]
fn mistral_matches_candle_transformers() {
    let cfg = tiny_config("mistral", false);
    let tensors = random_tensors(&cfg, 24, DType::F32);
    let full = ours(&cfg, &tensors);
    let ccfg = mistral::Config {
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        head_dim: Some(cfg.head_dim),
        num_key_value_heads: cfg.num_key_value_heads,
        hidden_act: Activation::Silu,
        max_position_embeddings: cfg.max_position_embeddings,
        rms_norm_eps: cfg.rms_norm_eps,
        rope_theta: cfg.rope_theta,
        sliding_window: Some(4096),
        use_flash_attn: false,
    };
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let mut model = mistral::Model::new(&ccfg, vb).unwrap();
    check_prefixes("mistral", &full, |x| {
        model.clear_kv_cache();
        model.forward(x, 0).unwrap()
    });
}
