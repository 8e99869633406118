//! Golden tests of the optimiser side: AdamW, clipping, accumulation, schedules, EMA, minibatches,
//! and bit-identical save/load.

// The references index like the equations they transcribe.
#![allow(clippy::needless_range_loop)]

mod common;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use candle_nn::Optimizer;
use common::*;
use keel_optim::*;

fn var1(xs: &[f64]) -> Var {
    Var::from_tensor(&Tensor::new(xs, &cpu()).unwrap()).unwrap()
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn grads_for(pairs: &[(&Var, &[f64])]) -> GradStore {
    let mut g = GradStore::default();
    for (v, xs) in pairs {
        let t = Tensor::new(*xs, &cpu()).unwrap().reshape(v.dims()).unwrap().to_dtype(v.dtype()).unwrap();
        g.insert(v.as_tensor(), t);
    }
    g
}

/// Plain-loop AdamW reference (PyTorch's algorithm, decoupled decay).
struct RefAdam {
    theta: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl RefAdam {
    fn step(&mut self, g: &[f64], lr: f64, b1: f64, b2: f64, eps: f64, wd: f64) {
        self.t += 1;
        for k in 0..self.theta.len() {
            self.m[k] = b1 * self.m[k] + (1.0 - b1) * g[k];
            self.v[k] = b2 * self.v[k] + (1.0 - b2) * g[k] * g[k];
            let mh = self.m[k] / (1.0 - b1.powi(self.t));
            let vh = self.v[k] / (1.0 - b2.powi(self.t));
            self.theta[k] = self.theta[k] * (1.0 - lr * wd) - lr * mh / (vh.sqrt() + eps);
        }
    }
}

#[test]
fn adamw_one_step_hand_value_and_several_steps_against_reference() {
    // Step 1: m̂ = g and v̂ = g², so θ₁ = θ₀(1 − lr·λ) − lr·g/(|g| + ε).
    // θ₀ = 1, g = 0.1, lr = 0.1, λ = 0.01: 0.999 − 0.1·0.1/(0.1 + 1e-8) = 0.899000009999999...
    let cfg = AdamWConfig { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    let theta = var1(&[1.0, -2.0, 0.5]);
    let mut opt = AdamW::new(vec![("w".into(), theta.clone())], cfg).unwrap();
    let gs: [[f64; 3]; 4] = [[0.1, -0.2, 0.3], [0.05, 0.4, -0.1], [-0.3, 0.0, 0.2], [0.2, 0.1, 0.1]];
    let mut reference = RefAdam { theta: vec![1.0, -2.0, 0.5], m: vec![0.0; 3], v: vec![0.0; 3], t: 0 };
    for (i, g) in gs.iter().enumerate() {
        opt.step(&grads_for(&[(&theta, g)])).unwrap();
        reference.step(g, 0.1, 0.9, 0.999, 1e-8, 0.01);
        if i == 0 {
            assert_close(vals(theta.as_tensor())[0], 0.999 - 0.1 * 0.1 / (0.1 + 1e-8), 1e-15, "step 1 hand value");
        }
        for (a, b) in vals(theta.as_tensor()).iter().zip(&reference.theta) {
            assert_close(*a, *b, 1e-14, &format!("step {}", i + 1));
        }
    }
    assert_eq!(opt.steps(), 4);
    assert_eq!(opt.moments("w").unwrap().2, 4);
}

#[test]
fn adamw_is_bit_identical_to_candle_nn_adamw() {
    let init = Tensor::new(&[[0.3f32, -1.2, 0.7], [2.0, 0.1, -0.4]], &cpu()).unwrap();
    let a = Var::from_tensor(&init).unwrap();
    let b = Var::from_tensor(&init).unwrap();
    let params = candle_nn::ParamsAdamW { lr: 0.05, beta1: 0.8, beta2: 0.99, eps: 1e-6, weight_decay: 0.1 };
    let mut ours = AdamW::new(
        vec![("w".into(), a.clone())],
        AdamWConfig { lr: 0.05, beta1: 0.8, beta2: 0.99, eps: 1e-6, weight_decay: 0.1 },
    )
    .unwrap();
    let mut theirs = candle_nn::AdamW::new(vec![b.clone()], params).unwrap();
    let target = Tensor::new(&[[1f32, 0.0, -1.0], [0.5, 0.5, 0.5]], &cpu()).unwrap();
    for _ in 0..6 {
        let la = a.as_tensor().sub(&target).unwrap().sqr().unwrap().sum_all().unwrap();
        ours.step(&la.backward().unwrap()).unwrap();
        let lb = b.as_tensor().sub(&target).unwrap().sqr().unwrap().sum_all().unwrap();
        theirs.backward_step(&lb).unwrap();
        let (xa, xb) = (
            a.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(
            xa.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            xb.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
}

#[test]
fn decay_rule_groups_no_decay_for_norms_biases_embeddings() {
    // With zero gradients the Adam term is 0/(0 + ε) = 0, so only the decay acts: θ(1 − lr·λ).
    let cfg = AdamWConfig { lr: 0.5, weight_decay: 0.1, ..Default::default() };
    let dense = Var::from_tensor(&Tensor::ones((2, 2), DType::F64, &cpu()).unwrap()).unwrap();
    let norm = var1(&[1.0, 1.0]);
    let embed = Var::from_tensor(&Tensor::ones((3, 2), DType::F64, &cpu()).unwrap()).unwrap();
    let bias = var1(&[1.0, 1.0]);
    let params = vec![
        ("model.layers.0.mlp.up_proj.weight".to_string(), dense.clone()),
        ("model.norm.weight".to_string(), norm.clone()),
        ("model.embed_tokens.weight".to_string(), embed.clone()),
        ("model.layers.0.self_attn.q_proj.bias".to_string(), bias.clone()),
    ];
    let mut opt = AdamW::with_decay_rule(params, cfg, &DecayRule::default()).unwrap();
    assert_eq!(opt.weight_decay_of("model.layers.0.mlp.up_proj.weight"), Some(0.1));
    assert_eq!(opt.weight_decay_of("model.norm.weight"), Some(0.0));
    assert_eq!(opt.weight_decay_of("model.embed_tokens.weight"), Some(0.0));
    assert_eq!(opt.weight_decay_of("model.layers.0.self_attn.q_proj.bias"), Some(0.0));
    let g = grads_for(&[(&dense, &[0.0; 4]), (&norm, &[0.0; 2]), (&embed, &[0.0; 6]), (&bias, &[0.0; 2])]);
    opt.step(&g).unwrap();
    assert!(vals(dense.as_tensor()).iter().all(|&x| x == 1.0 * (1.0 - 0.5 * 0.1)));
    for v in [&norm, &embed, &bias] {
        assert!(vals(v.as_tensor()).iter().all(|&x| x == 1.0));
    }
    // A parameter without a gradient is untouched and keeps step count 0.
    let lonely = var1(&[3.0]);
    let mut opt = AdamW::new(vec![("a".into(), dense.clone()), ("b".into(), lonely.clone())], cfg).unwrap();
    opt.step(&grads_for(&[(&dense, &[1.0; 4])])).unwrap();
    assert_eq!(vals(lonely.as_tensor()), vec![3.0]);
    assert_eq!(opt.moments("b").unwrap().2, 0);
    // Duplicate names are rejected with the name.
    let err = AdamW::new(vec![("a".into(), norm.clone()), ("a".into(), bias)], cfg).unwrap_err().to_string();
    assert!(err.contains("`a`"), "{err}");
}

#[test]
fn adamw_state_save_load_resume_is_bit_identical() {
    let dir = std::env::temp_dir().join(format!("keel-optim-adamw-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = AdamWConfig { lr: 0.01, weight_decay: 0.05, ..Default::default() };
    let make = || {
        let w = Var::from_tensor(&Tensor::new(&[[0.3f32, -0.2], [0.9, 1.1]], &cpu()).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[0.05f32, -0.05], &cpu()).unwrap()).unwrap();
        vec![("layer.weight".to_string(), w), ("layer.bias".to_string(), b)]
    };
    let x = Tensor::new(&[[1f32, 2.0], [-1.0, 0.5], [0.3, -0.7]], &cpu()).unwrap();
    let loss_of = |p: &[(String, Var)]| {
        let y = x.matmul(&p[0].1.as_tensor().t().unwrap()).unwrap().broadcast_add(p[1].1.as_tensor()).unwrap();
        y.sqr().unwrap().sum_all().unwrap().sin().unwrap()
    };
    let sched = LrSchedule::Cosine { warmup_steps: 2, total_steps: 10, min_lr_ratio: 0.1 };
    let run = |opt: &mut AdamW, p: &[(String, Var)], n: usize| {
        for _ in 0..n {
            opt.set_lr(sched.lr(0.01, opt.steps()));
            let mut g = loss_of(p).backward().unwrap();
            clip_grad_norm(p, &mut g, 1.0).unwrap();
            opt.step(&g).unwrap();
        }
    };
    // Run A: 3 steps, save, 4 more.
    let pa = make();
    let mut oa = AdamW::with_decay_rule(pa.clone(), cfg, &DecayRule::default()).unwrap();
    run(&mut oa, &pa, 3);
    oa.save(&dir).unwrap();
    let saved: Vec<Tensor> = pa.iter().map(|(_, v)| v.as_tensor().copy().unwrap()).collect();
    run(&mut oa, &pa, 4);
    // Run B: fresh optimiser over the saved weights, load the state, 4 steps.
    let pb = make();
    for ((_, v), t) in pb.iter().zip(&saved) {
        v.set(t).unwrap();
    }
    let mut ob = AdamW::new(pb.clone(), AdamWConfig::default()).unwrap();
    ob.load(&dir).unwrap();
    assert_eq!(ob.steps(), 3);
    // The saved lr is the one of the last step before saving (schedule index 2).
    assert_eq!(ob.lr(), sched.lr(0.01, 2));
    assert_eq!(AdamWConfig { lr: cfg.lr, ..*ob.config() }, cfg);
    run(&mut ob, &pb, 4);
    for ((n, a), (_, b)) in pa.iter().zip(&pb) {
        let bits = |v: &Var| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(a), bits(b), "{n} after resume");
        let (ma, va, sa) = oa.moments(n).unwrap();
        let (mb, vb, sb) = ob.moments(n).unwrap();
        assert_eq!(sa, sb);
        assert_eq!(vals(ma), vals(mb));
        assert_eq!(vals(va), vals(vb));
    }
    assert!(dir.join(ADAMW_TENSORS_FILE).exists() && dir.join(ADAMW_META_FILE).exists());
    // Loading into an optimiser with other parameter names fails and names them.
    let other = vec![("other.weight".to_string(), var1(&[1.0]))];
    let err = AdamW::new(other, cfg).unwrap().load(&dir).unwrap_err().to_string();
    assert!(err.contains("other.weight") && err.contains("layer.bias"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn clip_grad_norm_hand_values() {
    // ‖(3, 4)‖² + ‖(12)‖² = 169 → norm 13.
    let a = var1(&[0.0, 0.0]);
    let b = var1(&[0.0]);
    let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
    let mut g = grads_for(&[(&a, &[3.0, 4.0]), (&b, &[12.0])]);
    assert_eq!(grad_norm(&params, &g).unwrap(), 13.0);
    let pre = clip_grad_norm(&params, &mut g, 6.5).unwrap();
    assert_eq!(pre, 13.0);
    let c = 6.5 / (13.0 + 1e-6);
    assert_eq!(vals(g.get(a.as_tensor()).unwrap()), vec![3.0 * c, 4.0 * c]);
    assert_close(grad_norm(&params, &g).unwrap(), 6.5, 1e-6, "clipped norm");
    // Below the threshold: untouched.
    let mut g = grads_for(&[(&a, &[3.0, 4.0]), (&b, &[12.0])]);
    assert_eq!(clip_grad_norm(&params, &mut g, 20.0).unwrap(), 13.0);
    assert_eq!(vals(g.get(b.as_tensor()).unwrap()), vec![12.0]);
    // Non-finite: error naming the parameter.
    let mut g = grads_for(&[(&a, &[3.0, f64::NAN]), (&b, &[12.0])]);
    let err = clip_grad_norm(&params, &mut g, 1.0).unwrap_err().to_string();
    assert!(err.contains("`a`") && !err.contains("a, b"), "{err}");
}

#[test]
fn gradient_accumulation_equals_full_batch_gradient() {
    // SFT sequence-mean loss over 4 sequences = mean of the two half-batch losses.
    let w = Var::from_tensor(&Tensor::new(&[[0.2f64, -0.1, 0.4], [0.0, 0.3, -0.2]], &cpu()).unwrap()).unwrap();
    let params = vec![("w".to_string(), w.clone())];
    let h = Tensor::new(
        &[[[1.0f64, 0.5], [0.2, -0.3]], [[0.0, 1.0], [1.0, 1.0]], [[-1.0, 0.2], [0.3, 0.3]], [[0.7, 0.7], [-0.2, 0.9]]],
        &cpu(),
    )
    .unwrap();
    let targets = Tensor::new(&[[0u32, 2], [1, 1], [2, 0], [0, 1]], &cpu()).unwrap();
    let mask = Tensor::new(&[[1f64, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], &cpu()).unwrap();
    let loss = |rows: std::ops::Range<usize>| {
        let n = rows.len();
        let hh = h.narrow(0, rows.start, n).unwrap();
        let logits = hh.broadcast_matmul(w.as_tensor()).unwrap();
        sft_loss_from_logits(
            &logits,
            &targets.narrow(0, rows.start, n).unwrap(),
            &mask.narrow(0, rows.start, n).unwrap(),
            SftReduction::Sequence,
        )
        .unwrap()
    };
    let full = loss(0..4).backward().unwrap();
    let mut acc = GradAccumulator::new();
    acc.add(&params, &loss(0..2).backward().unwrap(), 0.5).unwrap();
    acc.add(&params, &loss(2..4).backward().unwrap(), 0.5).unwrap();
    assert_eq!(acc.micro_batches(), 2);
    let g = acc.grads(&params);
    for (x, y) in vals(g.get(w.as_tensor()).unwrap()).iter().zip(vals(full.get(w.as_tensor()).unwrap())) {
        assert_close(*x, y, 1e-14, "accumulated gradient");
    }
    acc.clear();
    assert_eq!(acc.micro_batches(), 0);
    assert!(acc.grads(&params).get(w.as_tensor()).is_none());
}

#[test]
fn schedules_hand_values() {
    let c = LrSchedule::Constant;
    assert_eq!(c.lr(0.1, 1000), 0.1);
    let w = LrSchedule::ConstantWithWarmup { warmup_steps: 4 };
    assert_eq!([w.multiplier(0), w.multiplier(1), w.multiplier(4), w.multiplier(9)], [0.0, 0.25, 1.0, 1.0]);
    let l = LrSchedule::Linear { warmup_steps: 2, total_steps: 10 };
    let got: Vec<f64> = [0, 1, 2, 6, 10, 12].iter().map(|&s| l.multiplier(s)).collect();
    assert_eq!(got, vec![0.0, 0.5, 1.0, 0.5, 0.0, 0.0]);
    let cos = LrSchedule::Cosine { warmup_steps: 2, total_steps: 10, min_lr_ratio: 0.0 };
    assert_eq!(cos.multiplier(1), 0.5);
    assert_eq!(cos.multiplier(2), 1.0);
    assert_close(cos.multiplier(4), 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos()), 1e-15, "cos(π/4)");
    assert_close(cos.multiplier(6), 0.5, 1e-15, "half way");
    assert_close(cos.multiplier(10), 0.0, 1e-15, "end");
    let floor = LrSchedule::Cosine { warmup_steps: 2, total_steps: 10, min_lr_ratio: 0.1 };
    assert_close(floor.multiplier(6), 0.55, 1e-15, "half way with floor");
    assert_close(floor.multiplier(10), 0.1, 1e-15, "floor");
    assert_close(floor.multiplier(50), 0.1, 1e-15, "stays at floor");
    assert!(LrSchedule::Linear { warmup_steps: 20, total_steps: 10 }.validate().is_err());
    let json = serde_json::to_string(&floor).unwrap();
    assert_eq!(json, r#"{"kind":"cosine","warmup_steps":2,"total_steps":10,"min_lr_ratio":0.1}"#);
}

#[test]
fn ema_hand_values_blend_back_copy_and_save_load() {
    // α = 0.9, θ̄₀ = (1, 2); θ = (3, 4) → θ̄ = (1.2, 2.2); θ = (5, 6) → θ̄ = (1.58, 2.58).
    let theta = var1(&[1.0, 2.0]);
    let params = vec![("w".to_string(), theta.clone())];
    let mut ema = Ema::new(&params, EmaConfig { alpha: 0.9, blend_back: None }).unwrap();
    theta.set(&Tensor::new(&[3.0f64, 4.0], &cpu()).unwrap()).unwrap();
    assert!(!ema.update(&params).unwrap());
    assert_rows_close(&[vals(ema.get("w").unwrap())], &[vec![1.2, 2.2]], 1e-15, "first update");
    theta.set(&Tensor::new(&[5.0f64, 6.0], &cpu()).unwrap()).unwrap();
    ema.update(&params).unwrap();
    assert_rows_close(&[vals(ema.get("w").unwrap())], &[vec![1.58, 2.58]], 1e-15, "second update");
    assert_eq!(vals(theta.as_tensor()), vec![5.0, 6.0], "the live weights are untouched");

    // Copy into a second model's variables.
    let eval = var1(&[0.0, 0.0]);
    ema.copy_into(&[("w".to_string(), eval.clone())]).unwrap();
    assert_eq!(vals(&eval.as_tensor().copy().unwrap()), vals(ema.get("w").unwrap()));

    // Save/load round trip is exact.
    let dir = std::env::temp_dir().join(format!("keel-optim-ema-{}", std::process::id()));
    ema.save(&dir).unwrap();
    let back = Ema::load(&dir, &cpu()).unwrap();
    assert_eq!(back.updates(), 2);
    assert_eq!(back.config(), ema.config());
    assert_eq!(vals(back.get("w").unwrap()), vals(ema.get("w").unwrap()));
    std::fs::remove_dir_all(&dir).unwrap();

    // Blend-back every 2 updates with mix 0.5: θ ← ½θ + ½θ̄.
    let theta = var1(&[1.0, 2.0]);
    let params = vec![("w".to_string(), theta.clone())];
    let mut ema =
        Ema::new(&params, EmaConfig { alpha: 0.9, blend_back: Some(BlendBack { every: 2, mix: 0.5 }) }).unwrap();
    theta.set(&Tensor::new(&[3.0f64, 4.0], &cpu()).unwrap()).unwrap();
    assert!(!ema.update(&params).unwrap());
    theta.set(&Tensor::new(&[5.0f64, 6.0], &cpu()).unwrap()).unwrap();
    assert!(ema.update(&params).unwrap());
    assert_rows_close(
        &[vals(theta.as_tensor())],
        &[vec![0.5 * 5.0 + 0.5 * 1.58, 0.5 * 6.0 + 0.5 * 2.58]],
        1e-15,
        "blend",
    );

    // bf16 parameters are averaged in f32.
    let h = Var::from_tensor(&Tensor::new(&[1.0f32], &cpu()).unwrap().to_dtype(DType::BF16).unwrap()).unwrap();
    let hp = vec![("h".to_string(), h.clone())];
    let mut ema = Ema::new(&hp, EmaConfig { alpha: 0.999, blend_back: None }).unwrap();
    h.set(&Tensor::new(&[2.0f32], &cpu()).unwrap().to_dtype(DType::BF16).unwrap()).unwrap();
    ema.update(&hp).unwrap();
    assert_eq!(ema.get("h").unwrap().dtype(), DType::F32);
    assert_close(vals(ema.get("h").unwrap())[0], 1.001, 1e-6, "bf16 average moves");
    // A missing parameter is an error with its name.
    let err = ema.update(&[]).unwrap_err().to_string();
    assert!(err.contains("`h`"), "{err}");
}

#[test]
fn minibatch_schedule_is_seeded_and_covers_each_row_once_per_epoch() {
    let s = MinibatchSchedule::new(10, 4, 3, 42, false).unwrap();
    assert_eq!(s.per_epoch(), 3);
    let all: Vec<Minibatch> = s.collect();
    assert_eq!(all.len(), 9);
    for e in 0..3 {
        let mut seen: Vec<usize> = all.iter().filter(|m| m.epoch == e).flat_map(|m| m.indices.clone()).collect();
        let sizes: Vec<usize> = all.iter().filter(|m| m.epoch == e).map(|m| m.indices.len()).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }
    let again: Vec<Minibatch> = MinibatchSchedule::new(10, 4, 3, 42, false).unwrap().collect();
    assert_eq!(all, again, "same seed, same schedule");
    let other: Vec<Minibatch> = MinibatchSchedule::new(10, 4, 3, 43, false).unwrap().collect();
    assert_ne!(all, other, "other seed, other schedule");
    assert_ne!(all[0].indices, all[3].indices, "epochs are reshuffled");
    let dropped: Vec<Minibatch> = MinibatchSchedule::new(10, 4, 2, 42, true).unwrap().collect();
    assert_eq!(dropped.len(), 4);
    assert!(dropped.iter().all(|m| m.indices.len() == 4));
    // Selecting rows of a tensor and of a slice.
    let t = Tensor::arange(0u32, 10, &cpu()).unwrap().to_dtype(DType::F64).unwrap().reshape((10, 1)).unwrap();
    let picked = vals(&all[0].select(&t).unwrap());
    assert_eq!(picked, all[0].indices.iter().map(|&i| i as f64).collect::<Vec<_>>());
    let r: Vec<f64> = (0..10).map(|i| i as f64 * 10.0).collect();
    assert_eq!(all[0].select_values(&r).unwrap(), all[0].indices.iter().map(|&i| i as f64 * 10.0).collect::<Vec<_>>());
    assert!(MinibatchSchedule::new(10, 0, 1, 0, false).is_err());
}

#[test]
fn minibatch_schedule_by_count_gives_exactly_that_many_steps_with_the_remainder_spread() {
    // (batch, count, sizes of one epoch): the first batch % count minibatches hold one row more.
    let cases: [(usize, usize, Vec<usize>); 4] = [
        (64, 9, std::iter::once(8).chain(std::iter::repeat_n(7, 8)).collect()),
        (64, 15, std::iter::repeat_n(5, 4).chain(std::iter::repeat_n(4, 11)).collect()),
        (8, 5, vec![2, 2, 2, 1, 1]),
        (12, 4, vec![3, 3, 3, 3]),
    ];
    for (batch, count, sizes) in cases {
        assert_eq!(sizes.iter().sum::<usize>(), batch, "case {batch}/{count}");
        assert_eq!(sizes.len(), count);
        let s = MinibatchSchedule::with_count(batch, count, 2, 7).unwrap();
        assert_eq!((s.per_epoch(), s.total()), (count, 2 * count));
        let all: Vec<Minibatch> = s.collect();
        assert_eq!(all.len(), 2 * count, "{batch} rows in {count}: exactly {count} steps per epoch");
        for e in 0..2 {
            let mb: Vec<&Minibatch> = all.iter().filter(|m| m.epoch == e).collect();
            assert_eq!(mb.iter().map(|m| m.indices.len()).collect::<Vec<_>>(), sizes, "{batch}/{count}");
            assert_eq!(mb.iter().map(|m| m.index).collect::<Vec<_>>(), (0..count).collect::<Vec<_>>());
            let mut seen: Vec<usize> = mb.iter().flat_map(|m| m.indices.clone()).collect();
            seen.sort();
            assert_eq!(seen, (0..batch).collect::<Vec<_>>(), "each row once per epoch");
        }
    }
    // The permutation is the size-based schedule's (same seed streams): only the cut differs.
    let by_count: Vec<usize> = MinibatchSchedule::with_count(10, 3, 1, 42).unwrap().flat_map(|m| m.indices).collect();
    let by_size: Vec<usize> = MinibatchSchedule::new(10, 4, 1, 42, false).unwrap().flat_map(|m| m.indices).collect();
    assert_eq!(by_count, by_size);
    assert!(MinibatchSchedule::with_count(8, 9, 1, 0).is_err(), "more minibatches than rows");
    assert!(MinibatchSchedule::with_count(8, 0, 1, 0).is_err());
}
