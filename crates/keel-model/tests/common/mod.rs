//! Shared helpers for keel-model integration tests: tiny configs of each architecture and fully
//! random weights (non-trivial norms and biases, so every code path is exercised).
#![allow(dead_code)]

pub mod fuzz;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use keel_model::{tensor_specs, CausalLm, ModelConfig};
use rand::{Rng, SeedableRng};

pub fn tiny_config(model_type: &str, tied: bool) -> ModelConfig {
    let extra = match model_type {
        "qwen3" => r#","head_dim":8,"rope_theta":1000000.0,"attention_bias":false"#,
        "qwen2" => r#","rope_theta":1000000.0"#,
        "mistral" => r#","sliding_window":4096"#,
        _ => r#","rope_theta":10000.0"#,
    };
    let text = format!(
        r#"{{"model_type":"{model_type}","hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,
        "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":61,"rms_norm_eps":1e-5,
        "max_position_embeddings":64,"tie_word_embeddings":{tied},"bos_token_id":1,"eos_token_id":[2,3]{extra}}}"#
    );
    ModelConfig::from_json_str(&text).unwrap()
}

/// Random tensors for every name in the config: matrices N(0, 0.2), norms 1 + N(0, 0.1), biases N(0, 0.1).
pub fn random_tensors(cfg: &ModelConfig, seed: u64, dtype: DType) -> HashMap<String, Tensor> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = HashMap::new();
    for spec in tensor_specs(cfg) {
        let n: usize = spec.shape.iter().product();
        let (base, std) = if spec.name.ends_with("norm.weight") {
            (1.0, 0.1)
        } else if spec.name.ends_with(".bias") {
            (0.0, 0.1)
        } else {
            (0.0, 0.2)
        };
        let v: Vec<f64> = (0..n).map(|_| base + std * (rng.random::<f64>() * 2.0 - 1.0) * 1.7).collect();
        let t = Tensor::from_vec(v, spec.shape.as_slice(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        out.insert(spec.name, t);
    }
    out
}

pub fn random_model(cfg: &ModelConfig, seed: u64, dtype: DType) -> CausalLm {
    CausalLm::from_tensors_on(cfg.clone(), random_tensors(cfg, seed, dtype), &Device::Cpu, dtype).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    a.to_dtype(DType::F64).unwrap().sub(&b.to_dtype(DType::F64).unwrap()).unwrap().abs().unwrap()
        .flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

pub fn ids(rows: &[&[u32]]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu).unwrap()
}
