//! `CausalLm::forward_hidden_shared` (prompts run once, their completions attending to them)
//! against the plain forward of every prompt ⧺ completion sequence on its own: hidden states and
//! the gradients of every weight must agree.

use candle_core::{DType, Device, Tensor, Var};
use keel_model::{CausalLm, ModelConfig, SharedPrefixBatch};

/// A completion: the index of its prompt and its tokens.
type Continuation = (usize, Vec<u32>);

/// Prompts of different lengths (so the prefix batch is left-padded), each continued 1–3 times
/// with completions of different lengths (right-padded), groups not in order.
fn case() -> (Vec<Vec<u32>>, Vec<Continuation>) {
    let prompts = vec![vec![5, 9, 13, 2, 7], vec![33, 1], vec![60, 61, 62, 3, 4, 8, 21]];
    let conts = vec![
        (0, vec![11, 12, 40, 3]),
        (1, vec![7]),
        (0, vec![19, 2]),
        (2, vec![6, 6, 6, 50, 51, 52]),
        (1, vec![44, 45, 46]),
        (0, vec![1, 2, 3, 4, 5]),
    ];
    (prompts, conts)
}

fn config(qwen_like: bool) -> ModelConfig {
    let mut cfg = ModelConfig::preset("tiny-300k", 64).expect("preset exists");
    assert!(cfg.num_key_value_heads < cfg.num_attention_heads, "the case covers grouped-query attention");
    if qwen_like {
        cfg.qkv_bias = true;
        cfg.qk_norm = true;
        cfg.tie_word_embeddings = false;
    }
    cfg
}

/// Σ over valid continuation positions of `hidden · w` with a fixed random `w`: a scalar whose
/// gradient reaches every weight through every position.
fn probe(hidden: &Tensor, w: &Tensor) -> Tensor {
    hidden.broadcast_mul(w).unwrap().sum_all().unwrap()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let d =
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let m = b.abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    d / m.max(1e-12)
}

fn check(qwen_like: bool, dtype: DType, tol: f64) {
    let dev = Device::Cpu;
    let cfg = config(qwen_like);
    let model = CausalLm::new(&cfg, 7, &dev, dtype).expect("model builds");
    let (prompts, conts) = case();
    let w = Tensor::randn(0f32, 1.0, cfg.hidden_size, &dev).unwrap().to_dtype(dtype).unwrap();

    // Reference: each sequence alone, no padding anywhere.
    let mut ref_hidden = Vec::new();
    let mut ref_loss: Option<Tensor> = None;
    for (g, c) in &conts {
        let mut ids = prompts[*g].clone();
        ids.extend(c);
        let t = Tensor::from_vec(ids.clone(), (1, ids.len()), &dev).unwrap();
        let h = model.forward_hidden(&t, None).unwrap().squeeze(0).unwrap();
        let hc = h.narrow(0, prompts[*g].len(), c.len()).unwrap();
        let l = probe(&hc, &w);
        ref_loss = Some(match ref_loss {
            None => l,
            Some(acc) => (acc + l).unwrap(),
        });
        ref_hidden.push(hc);
    }
    let ref_grads = ref_loss.unwrap().backward().unwrap();

    let prefix_refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let cont_refs: Vec<(usize, &[u32])> = conts.iter().map(|(g, c)| (*g, c.as_slice())).collect();
    let batch = SharedPrefixBatch::new(&prefix_refs, &cont_refs, 0, &dev).unwrap();
    let hidden = model.forward_hidden_shared(&batch).unwrap();
    assert_eq!(hidden.dims(), &[conts.len(), 6, cfg.hidden_size]);
    let mut loss: Option<Tensor> = None;
    for (i, (_, c)) in conts.iter().enumerate() {
        let hc = hidden.get(i).unwrap().narrow(0, 0, c.len()).unwrap();
        let e = max_rel(&hc, &ref_hidden[i]);
        assert!(e < tol, "{dtype:?} qwen_like={qwen_like}: continuation {i} hidden rel err {e}");
        let l = probe(&hc, &w);
        loss = Some(match loss {
            None => l,
            Some(acc) => (acc + l).unwrap(),
        });
    }
    let grads = loss.unwrap().backward().unwrap();
    let vars: Vec<(String, Var)> = model.named_vars();
    assert!(vars.len() > 10);
    for (name, var) in &vars {
        let (a, b) = match (grads.get(var), ref_grads.get(var)) {
            (Some(a), Some(b)) => (a, b),
            // The output projection is not part of the hidden states.
            (None, None) if name == "lm_head.weight" => continue,
            (a, b) => panic!("{name}: gradient present {} / reference {}", a.is_some(), b.is_some()),
        };
        let e = max_rel(a, b);
        assert!(e < tol, "{dtype:?} qwen_like={qwen_like}: gradient of {name} rel err {e}");
    }
}

#[test]
fn shared_prefix_matches_separate_sequences_f64() {
    check(false, DType::F64, 1e-9);
    check(true, DType::F64, 1e-9);
}

#[test]
fn shared_prefix_matches_separate_sequences_f32() {
    check(false, DType::F32, 1e-4);
}

/// One-token prompts leave no shared part (`P = 0`): the continuation rows carry everything.
#[test]
fn one_token_prompts_have_an_empty_prefix() {
    let dev = Device::Cpu;
    let model = CausalLm::new(&config(false), 3, &dev, DType::F64).unwrap();
    let prompts: Vec<&[u32]> = vec![&[], &[]];
    let conts: Vec<(usize, &[u32])> = vec![(0, &[4, 5, 6]), (1, &[9, 8])];
    let batch = SharedPrefixBatch::new(&prompts, &conts, 0, &dev).unwrap();
    let h = model.forward_hidden_shared(&batch).unwrap();
    let solo = model.forward_hidden(&Tensor::new(&[[4u32, 5, 6]], &dev).unwrap(), None).unwrap().squeeze(0).unwrap();
    assert!(max_rel(&h.get(0).unwrap(), &solo) < 1e-12);
}

#[test]
fn bad_group_indices_are_errors() {
    let dev = Device::Cpu;
    let prompts: Vec<&[u32]> = vec![&[1, 2]];
    let conts: Vec<(usize, &[u32])> = vec![(1, &[3])];
    let err = SharedPrefixBatch::new(&prompts, &conts, 0, &dev).unwrap_err().to_string();
    assert!(err.contains("prompt 1") && err.contains("1 prompts"), "{err}");
}
