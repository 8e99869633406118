//! Acceptance tests of the trainable decoder: gradients reach every weight, whole-model finite
//! differences, KV-cache decoding equals the full forward (with left padding), checkpoints
//! round-trip bit-identically, bad checkpoints name the offending tensor, LoRA, copies/snapshots.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{ids, max_abs_diff, random_model, random_tensors, tiny_config};
use keel_model::{CausalLm, LoraConfig, ModelConfig, ModelError};

fn mask(rows: &[&[u32]]) -> Tensor {
    ids(rows)
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("keel-model-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A loss touching both outputs: masked mean log-prob plus a small entropy term.
fn loss(model: &CausalLm, x: &Tensor, m: &Tensor) -> Tensor {
    let (lp, ent) = model.token_logprobs_and_entropy(x, Some(m)).unwrap();
    let tm = m.narrow(1, 1, m.dim(1).unwrap() - 1).unwrap().to_dtype(lp.dtype()).unwrap();
    let a = (lp * &tm).unwrap().sum_all().unwrap();
    let b = (ent * &tm).unwrap().sum_all().unwrap();
    (a.neg().unwrap() + (b * 0.1).unwrap()).unwrap()
}

#[test]
fn every_parameter_gets_a_nonzero_gradient() {
    for (arch, tied) in [("llama", true), ("llama", false), ("qwen2", false), ("qwen3", true), ("mistral", false)] {
        let cfg = tiny_config(arch, tied);
        let model = CausalLm::new(&cfg, 7, &Device::Cpu, DType::F32).unwrap();
        let x = ids(&[&[0, 0, 5, 9, 11, 4], &[7, 8, 9, 10, 11, 12]]);
        let m = mask(&[&[0, 0, 1, 1, 1, 1], &[1, 1, 1, 1, 1, 1]]);
        let grads = loss(&model, &x, &m).backward().unwrap();
        let vars = model.named_vars();
        assert_eq!(vars.len(), keel_model::tensor_specs(&cfg).len());
        for (name, var) in &vars {
            let g = grads.get(var).unwrap_or_else(|| panic!("{arch}: no gradient for {name}"));
            let mx: f32 = g.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            assert!(mx > 0.0 && mx.is_finite(), "{arch}: zero/non-finite gradient for {name}");
        }
        assert!(vars.windows(2).all(|w| w[0].0 < w[1].0), "named_vars must be sorted");
    }
}

#[test]
fn whole_model_finite_differences_f64() {
    for arch in ["llama", "qwen2", "qwen3"] {
        let cfg = tiny_config(arch, arch == "qwen3");
        let model = random_model(&cfg, 3, DType::F64);
        let x = ids(&[&[0, 5, 9, 11, 4], &[7, 8, 9, 10, 11]]);
        let m = mask(&[&[0, 1, 1, 1, 1], &[1, 1, 1, 1, 1]]);
        let grads = loss(&model, &x, &m).backward().unwrap();
        let eps = 1e-6;
        let (mut worst, mut gmax) = (0f64, 0f64);
        for (name, var) in model.named_vars() {
            let g: Vec<f64> = grads.get(&var).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            // Probe a few entries per tensor: the largest-gradient one and a spread of others.
            let imax = g.iter().enumerate().fold(0, |b, (i, v)| if v.abs() > g[b].abs() { i } else { b });
            let mut probes = vec![imax, 0, base.len() / 2, base.len() - 1];
            probes.dedup();
            for &i in &probes {
                let set = |val: f64| {
                    let mut p = base.clone();
                    p[i] = val;
                    var.set(&Tensor::from_vec(p, var.as_tensor().shape(), &Device::Cpu).unwrap()).unwrap();
                };
                set(base[i] + eps);
                let lp: f64 = loss(&model, &x, &m).to_scalar().unwrap();
                set(base[i] - eps);
                let lm: f64 = loss(&model, &x, &m).to_scalar().unwrap();
                set(base[i]);
                let num = (lp - lm) / (2.0 * eps);
                let err = (num - g[i]).abs();
                gmax = gmax.max(num.abs());
                worst = worst.max(err / num.abs().max(1e-3));
                assert!(err <= 1e-5 * num.abs().max(1e-3), "{arch} {name}[{i}]: analytic {} numeric {num}", g[i]);
            }
        }
        eprintln!("{arch}: whole-model FD max relative error {worst:.2e} (max |grad| {gmax:.3})");
    }
}

#[test]
fn kv_cache_decoding_matches_full_forward_with_left_padding() {
    for arch in ["llama", "qwen2", "qwen3", "mistral"] {
        let cfg = tiny_config(arch, false);
        let model = random_model(&cfg, 5, DType::F32);
        let x = ids(&[&[0, 0, 0, 5, 9, 11, 4, 20], &[7, 8, 9, 10, 11, 12, 13, 14]]);
        let m = mask(&[&[0, 0, 0, 1, 1, 1, 1, 1], &[1, 1, 1, 1, 1, 1, 1, 1]]);
        let full = model.forward(&x, Some(&m)).unwrap();
        // Prefill 5 positions, then decode one token at a time.
        let mut cache = model.new_cache();
        let mut parts = vec![model.forward_cached(&x.narrow(1, 0, 5).unwrap(), &m.narrow(1, 0, 5).unwrap(), &mut cache).unwrap()];
        for t in 5..8 {
            parts.push(model.forward_cached(&x.narrow(1, t, 1).unwrap(), &m.narrow(1, 0, t + 1).unwrap(), &mut cache).unwrap());
        }
        assert_eq!(cache.len(), 8);
        let cached = Tensor::cat(&parts, 1).unwrap();
        let d = max_abs_diff(&cached, &full);
        eprintln!("{arch}: KV-cache vs full forward max abs diff {d:.2e}");
        assert!(d <= 1e-4, "{arch}: {d}");
        // Left padding must not change the real tokens' logits.
        let alone = model.forward(&ids(&[&[5, 9, 11, 4, 20]]), None).unwrap();
        let padded = full.get(0).unwrap().narrow(0, 3, 5).unwrap().unsqueeze(0).unwrap();
        let d = max_abs_diff(&padded, &alone);
        assert!(d <= 1e-4, "{arch}: padded vs unpadded {d}");
        let all_finite = full.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite());
        assert!(all_finite, "{arch}: fully masked pad rows must stay finite");
    }
}

fn assert_bit_identical(a: &CausalLm, b: &CausalLm) {
    let (ta, tb) = (a.named_tensors(), b.named_tensors());
    assert_eq!(ta.len(), tb.len());
    for ((na, xa), (nb, xb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert_eq!(xa.dtype(), xb.dtype());
        let va: Vec<u32> = xa.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap().iter().map(|f| f.to_bits()).collect();
        let vb: Vec<u32> = xb.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap().iter().map(|f| f.to_bits()).collect();
        assert_eq!(va, vb, "{na} differs");
    }
}

#[test]
fn save_load_round_trip_is_bit_identical() {
    for (arch, tied) in [("qwen3", true), ("qwen2", false)] {
        let cfg = tiny_config(arch, tied);
        let model = random_model(&cfg, 9, DType::F32);
        let dir = tmpdir(&format!("roundtrip-{arch}"));
        model.save(&dir).unwrap();
        let back = CausalLm::load(&dir, &Device::Cpu, DType::F32).unwrap();
        assert_bit_identical(&model, &back);
        assert_eq!(back.config().architecture, cfg.architecture);
        assert_eq!(back.config().eos_token_ids, vec![2, 3]);
        let x = ids(&[&[1, 2, 3, 4]]);
        assert_eq!(max_abs_diff(&model.forward(&x, None).unwrap(), &back.forward(&x, None).unwrap()), 0.0);
        // bf16 cast on load works and stays close.
        let half = CausalLm::load(&dir, &Device::Cpu, DType::BF16).unwrap();
        let d = max_abs_diff(&model.forward(&x, None).unwrap(), &half.forward(&x, None).unwrap());
        assert!(d < 0.2, "bf16 logits too far: {d}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn sharded_checkpoints_load() {
    let cfg = tiny_config("llama", false);
    let model = random_model(&cfg, 10, DType::F32);
    let dir = tmpdir("sharded");
    let all = model.named_tensors();
    let (a, b) = all.split_at(all.len() / 2);
    let mut index = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
        let map: std::collections::HashMap<String, Tensor> = part.iter().cloned().collect();
        candle_core::safetensors::save(&map, dir.join(file)).unwrap();
        for (n, _) in part {
            index.insert(n.clone(), file.into());
        }
    }
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::json!({"weight_map": index}).to_string()).unwrap();
    std::fs::write(dir.join("config.json"), cfg.to_json_string()).unwrap();
    let back = CausalLm::load(&dir, &Device::Cpu, DType::F32).unwrap();
    assert_bit_identical(&model, &back);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_or_misshaped_tensors_are_named() {
    let cfg = tiny_config("qwen2", false);
    let mut t = random_tensors(&cfg, 1, DType::F32);
    t.remove("model.layers.1.self_attn.k_proj.bias");
    let e = CausalLm::from_tensors(cfg.clone(), t).unwrap_err();
    assert!(matches!(e, ModelError::MissingTensor { .. }));
    assert!(e.to_string().contains("model.layers.1.self_attn.k_proj.bias") && e.to_string().contains("[16]"), "{e}");

    let mut t = random_tensors(&cfg, 1, DType::F32);
    t.insert("model.layers.0.mlp.up_proj.weight".into(), Tensor::zeros((48, 31), DType::F32, &Device::Cpu).unwrap());
    let dir = tmpdir("misshaped");
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), cfg.to_json_string()).unwrap();
    let e = CausalLm::load(&dir, &Device::Cpu, DType::F32).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("model.layers.0.mlp.up_proj.weight") && s.contains("[48, 31]") && s.contains("[48, 32]"), "{s}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn frozen_copy_inference_view_and_snapshots() {
    let cfg = tiny_config("llama", true);
    let model = CausalLm::new(&cfg, 1, &Device::Cpu, DType::F32).unwrap();
    let x = ids(&[&[1, 2, 3, 4, 5]]);
    let before = model.forward(&x, None).unwrap();
    let frozen = model.frozen_copy().unwrap();
    let view = model.inference_view();
    let snap = model.snapshot().unwrap();
    assert!(frozen.named_vars().is_empty() && view.named_vars().is_empty());
    // Same seed, same weights.
    assert_bit_identical(&model, &CausalLm::new(&cfg, 1, &Device::Cpu, DType::F32).unwrap());
    // An optimiser-style in-place update of the trainable weights.
    for (_, v) in model.named_vars() {
        v.set(&(v.as_tensor() * 1.5).unwrap()).unwrap();
    }
    let after = model.forward(&x, None).unwrap();
    assert!(max_abs_diff(&after, &before) > 1e-3);
    assert_eq!(max_abs_diff(&frozen.forward(&x, None).unwrap(), &before), 0.0, "frozen copy must not change");
    assert_eq!(max_abs_diff(&view.forward(&x, None).unwrap(), &after), 0.0, "view must follow updates");
    // Frozen forward builds no graph: backward finds nothing to differentiate.
    let g = frozen.forward(&x, None).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(model.named_vars().iter().all(|(_, v)| g.get(v).is_none()));
    // Restoring the snapshot restores the logits.
    model.load_snapshot(&snap).unwrap();
    assert_eq!(max_abs_diff(&model.forward(&x, None).unwrap(), &before), 0.0);
}

#[test]
fn lora_trains_only_adapters_merges_and_round_trips() {
    let cfg = tiny_config("qwen2", false);
    let mut model = random_model(&cfg, 4, DType::F32);
    let x = ids(&[&[0, 3, 4, 5, 6], &[9, 8, 7, 6, 5]]);
    let m = mask(&[&[0, 1, 1, 1, 1], &[1, 1, 1, 1, 1]]);
    let base_logits = model.forward(&x, Some(&m)).unwrap();
    let base_vars: Vec<Var> = model.trainable_vars();
    let lcfg = LoraConfig { r: 4, alpha: 8.0, target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()] };
    model.add_lora(&lcfg, 11).unwrap();
    // B = 0 at init: the adapted model equals the base model.
    assert_eq!(max_abs_diff(&model.forward(&x, Some(&m)).unwrap(), &base_logits), 0.0);
    let names: Vec<String> = model.named_vars().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 2 * 3 * cfg.num_hidden_layers);
    assert!(names.iter().all(|n| n.contains(".lora_A.") || n.contains(".lora_B.")), "{names:?}");
    // Give B non-zero values so gradients reach A as well.
    for (n, v) in model.named_vars() {
        if n.contains("lora_B") {
            let n = v.as_tensor().elem_count();
            let vals: Vec<f32> = (0..n).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.03).collect();
            let r = Tensor::from_vec(vals, v.as_tensor().shape(), &Device::Cpu).unwrap();
            v.set(&r).unwrap();
        }
    }
    let adapted = model.forward(&x, Some(&m)).unwrap();
    assert!(max_abs_diff(&adapted, &base_logits) > 1e-4);
    let grads = loss(&model, &x, &m).backward().unwrap();
    for (n, v) in model.named_vars() {
        let g = grads.get(&v).unwrap_or_else(|| panic!("no grad for {n}"));
        let mx: f32 = g.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        assert!(mx > 0.0, "zero grad for {n}");
    }
    for v in &base_vars {
        assert!(grads.get(v).is_none(), "a frozen base weight received a gradient");
    }
    // Adapters save and load separately (PEFT names) onto a fresh base model.
    let dir = tmpdir("lora");
    model.save_lora(&dir).unwrap();
    let st = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert!(st.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    let mut fresh = random_model(&cfg, 4, DType::F32);
    fresh.load_lora(&dir).unwrap();
    assert_eq!(max_abs_diff(&fresh.forward(&x, Some(&m)).unwrap(), &adapted), 0.0);
    // Adapter values load onto adapters already attached (resuming a LoRA learner).
    let mut again = random_model(&cfg, 4, DType::F32);
    again.add_lora(&lcfg, 99).unwrap();
    again.load_lora_values(&dir).unwrap();
    assert_eq!(max_abs_diff(&again.forward(&x, Some(&m)).unwrap(), &adapted), 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
    // A merged frozen copy (what samplers get) computes the same logits without adapters.
    let sampler = model.merged_frozen_copy().unwrap();
    assert!(sampler.lora_config().is_none() && sampler.num_trainable_parameters() == 0);
    let d = max_abs_diff(&sampler.forward(&x, Some(&m)).unwrap(), &adapted);
    assert!(d <= 1e-5, "merged frozen copy differs by {d}");
    // Saving an adapted model writes its effective (merged) weights: a plain checkpoint that
    // computes what the adapted model computes.
    let dir = tmpdir("lora-save");
    model.save(&dir).unwrap();
    let reloaded = CausalLm::load(&dir, &Device::Cpu, DType::F32).unwrap();
    assert!(reloaded.lora_config().is_none());
    let d = max_abs_diff(&reloaded.forward(&x, Some(&m)).unwrap(), &adapted);
    assert!(d <= 1e-5, "saved adapted model differs from the live one by {d}");
    assert!(max_abs_diff(&reloaded.forward(&x, Some(&m)).unwrap(), &base_logits) > 1e-4, "the adapters were not saved");
    std::fs::remove_dir_all(&dir).unwrap();
    // Merging folds the update into the base weights: same logits, plain model again.
    model.merge_lora().unwrap();
    let merged = model.forward(&x, Some(&m)).unwrap();
    let d = max_abs_diff(&merged, &adapted);
    eprintln!("LoRA merged vs adapter logits max abs diff {d:.2e}");
    assert!(d <= 1e-5, "{d}");
    assert!(model.lora_config().is_none());
    assert_eq!(model.named_vars().len(), keel_model::tensor_specs(&cfg).len());
    assert!(model.add_lora(&LoraConfig { r: 2, alpha: 2.0, target_modules: vec!["x_proj".into()] }, 0).is_err());
}

#[test]
fn presets_build_and_count_parameters() {
    for name in keel_model::PRESETS {
        let cfg = ModelConfig::preset(name, 512).unwrap();
        assert_eq!(cfg.num_parameters(), keel_model::tensor_specs(&cfg).iter().map(|s| s.shape.iter().product::<usize>()).sum::<usize>());
    }
    let cfg = ModelConfig::preset("tiny-300k", 256).unwrap();
    let model = CausalLm::new(&cfg, 0, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(model.num_parameters(), cfg.num_parameters());
    let logits = model.forward(&ids(&[&[1, 2, 3]]), None).unwrap();
    assert_eq!(logits.dims(), &[1, 3, 256]);
    // Near-uniform predictions at init (std 0.02 weights).
    let lp = model.token_logprobs(&ids(&[&[1, 2, 3]]), None).unwrap();
    let v: Vec<f32> = lp.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| (x + (256f32).ln()).abs() < 0.1), "{v:?}");
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let cfg = tiny_config("llama", true);
    let model = CausalLm::new(&cfg, 0, &Device::Cpu, DType::F32).unwrap();
    assert!(model.forward(&ids(&[&[1, 2, 999]]), None).is_err());
    assert!(model.forward(&ids(&[&[1, 2, 3]]), Some(&mask(&[&[1, 1]]))).is_err());
    let mut cache = model.new_cache();
    model.forward_cached(&ids(&[&[1, 2]]), &mask(&[&[1, 1]]), &mut cache).unwrap();
    assert!(model.forward_cached(&ids(&[&[3]]), &mask(&[&[1, 1]]), &mut cache).is_err(), "mask must cover past + new");
}

#[test]
fn models_and_caches_cross_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CausalLm>();
    assert_send_sync::<keel_model::KvCache>();
    assert_send_sync::<std::sync::Arc<keel_model::WeightSnapshot>>();
}

/// Issue 19 row 5: a config.json with `num_hidden_layers: 10000000` is refused while the config
/// is parsed, before any weight is read or allocated, with the file, the field, the value and the
/// limit in the message.
#[test]
fn absurd_config_json_is_refused_before_any_allocation() {
    let dir = tmpdir("absurd-config");
    let mut cfg = tiny_config("llama", true).to_json();
    cfg["num_hidden_layers"] = 10_000_000.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    // No weights at all: the error must come from the config, not from looking for tensors.
    let t0 = std::time::Instant::now();
    let err = CausalLm::load(&dir, &Device::Cpu, DType::F32).unwrap_err();
    assert!(t0.elapsed().as_millis() < 500, "took {:?}", t0.elapsed());
    let msg = err.to_string();
    assert!(matches!(err, ModelError::InFile { .. }), "{msg}");
    for part in [dir.join("config.json").display().to_string(), "num_hidden_layers".into(), "10000000".into(), "4096".into()] {
        assert!(msg.contains(&part), "missing `{part}` in: {msg}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
