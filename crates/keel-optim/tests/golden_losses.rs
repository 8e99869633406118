//! Golden tests of the losses: every value is compared with a straightforward f64 reference written
//! here with plain loops (independent of the crate), and every gradient with central finite
//! differences of that reference.

// The references index like the equations they transcribe.
#![allow(clippy::needless_range_loop)]

mod common;

use candle_core::{DType, Tensor, Var};
use common::*;
use keel_optim::*;

// ---------------------------------------------------------------------------------------------
// Independent references
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Agg {
    Seq,
    Tok,
    Const(usize),
}

fn to_agg(a: Agg) -> LossAggregation {
    match a {
        Agg::Seq => LossAggregation::SequenceMean,
        Agg::Tok => LossAggregation::TokenMean,
        Agg::Const(l) => LossAggregation::Constant { max_len: l },
    }
}

fn ref_kl(lp: f64, rl: f64, est: KlEstimator) -> f64 {
    match est {
        KlEstimator::K1 => lp - rl,
        KlEstimator::K2 => 0.5 * (lp - rl) * (lp - rl),
        KlEstimator::K3 => (rl - lp).exp() - (rl - lp) - 1.0,
    }
}

fn ref_aggregate(l: &[Vec<f64>], mask: &[Vec<f64>], agg: Agg) -> f64 {
    let b = l.len();
    match agg {
        Agg::Seq => {
            let mut total = 0.0;
            for i in 0..b {
                let mut s = 0.0;
                let mut n = 0.0;
                for t in 0..l[i].len() {
                    s += l[i][t] * mask[i][t];
                    n += mask[i][t];
                }
                total += s / f64::max(n, 1.0);
            }
            total / b as f64
        }
        Agg::Tok => {
            let mut s = 0.0;
            let mut n = 0.0;
            for i in 0..b {
                for t in 0..l[i].len() {
                    s += l[i][t] * mask[i][t];
                    n += mask[i][t];
                }
            }
            s / f64::max(n, 1.0)
        }
        Agg::Const(max_len) => {
            let mut s = 0.0;
            for i in 0..b {
                for t in 0..l[i].len() {
                    s += l[i][t] * mask[i][t];
                }
            }
            s / (b * max_len) as f64
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn ref_policy_loss(
    lp: &[Vec<f64>],
    old: &[Vec<f64>],
    refl: &[Vec<f64>],
    mask: &[Vec<f64>],
    adv: &[Vec<f64>],
    eps_low: f64,
    eps_high: f64,
    agg: Agg,
    kl: Option<(f64, KlEstimator)>,
) -> f64 {
    let mut l = vec![vec![0.0; lp[0].len()]; lp.len()];
    for i in 0..lp.len() {
        for t in 0..lp[i].len() {
            let ratio = (lp[i][t] - old[i][t]).clamp(-20.0, 20.0).exp();
            let clipped = ratio.max(1.0 - eps_low).min(1.0 + eps_high);
            let a = adv[i][t];
            let mut x = -f64::min(ratio * a, clipped * a);
            if let Some((beta, est)) = kl {
                x += beta * ref_kl(lp[i][t], refl[i][t], est);
            }
            l[i][t] = x;
        }
    }
    ref_aggregate(&l, mask, agg)
}

// ---------------------------------------------------------------------------------------------
// Fixture: B = 3, T = 4; row 0 is clipped above (ρ = e^0.3 > 1.2, A > 0), row 1 below
// (ρ = e^-0.4 < 0.8, A < 0), row 2 has ρ = e^0.25 > 1.2 with A > 0 and ρ = e^-0.3 < 0.8 with
// A > 0 (not clipped: the unclipped term is the smaller one).
// ---------------------------------------------------------------------------------------------

struct Fixture {
    old: Vec<Vec<f64>>,
    lp: Vec<Vec<f64>>,
    refl: Vec<Vec<f64>>,
    mask: Vec<Vec<f64>>,
    adv_seq: Vec<f64>,
}

fn fixture() -> Fixture {
    let old = vec![vec![-1.0, -0.5, -2.0, -1.5], vec![-0.7, -1.2, -0.3, -2.2], vec![-1.1, -0.9, -1.4, -0.6]];
    let delta = vec![vec![0.3, -0.05, 0.1, 0.0], vec![-0.4, 0.05, 0.02, -0.1], vec![0.25, -0.3, 0.1, 0.0]];
    let lp: Vec<Vec<f64>> =
        old.iter().zip(&delta).map(|(o, d)| o.iter().zip(d).map(|(a, b)| a + b).collect()).collect();
    let refl = vec![vec![-1.1, -0.6, -1.8, -1.5], vec![-0.9, -1.0, -0.5, -2.0], vec![-1.0, -1.0, -1.2, -0.7]];
    let mask = vec![vec![1.0, 1.0, 1.0, 0.0], vec![1.0, 1.0, 1.0, 1.0], vec![1.0, 1.0, 0.0, 0.0]];
    Fixture { old, lp, refl, mask, adv_seq: vec![1.0, -0.5, 0.7] }
}

fn broadcast_adv(adv: &[f64], t: usize) -> Vec<Vec<f64>> {
    adv.iter().map(|a| vec![*a; t]).collect()
}

/// Runs the crate's policy loss and returns (loss, d loss / d logp, stats).
fn crate_policy_loss(
    f: &Fixture,
    adv: &Tensor,
    cfg: &PolicyLossConfig,
    with_ref: bool,
) -> (f64, Vec<Vec<f64>>, PolicyStats) {
    let logp = v2(&f.lp);
    let old = t2(&f.old);
    let refl = t2(&f.refl);
    let mask = t2(&f.mask);
    let batch = PolicyBatch {
        logp: logp.as_tensor(),
        old_logp: &old,
        ref_logp: if with_ref { Some(&refl) } else { None },
        mask: &mask,
        advantages: adv,
        entropy: None,
    };
    let out = policy_loss(&batch, cfg).unwrap();
    let grads = out.loss.backward().unwrap();
    let g = grads.get(logp.as_tensor()).expect("logp received a gradient");
    (scalar(&out.loss), rows(g), out.stats)
}

#[test]
fn policy_loss_three_aggregations_match_reference_and_finite_differences() {
    let f = fixture();
    let adv_rows = broadcast_adv(&f.adv_seq, 4);
    let adv = Tensor::new(f.adv_seq.as_slice(), &cpu()).unwrap();
    for agg in [Agg::Seq, Agg::Tok, Agg::Const(6)] {
        let cfg = PolicyLossConfig { eps_low: 0.2, eps_high: 0.2, aggregation: to_agg(agg), kl: None };
        let (loss, grad, stats) = crate_policy_loss(&f, &adv, &cfg, false);
        let reference = |lp: &[Vec<f64>]| ref_policy_loss(lp, &f.old, &f.refl, &f.mask, &adv_rows, 0.2, 0.2, agg, None);
        assert_close(loss, reference(&f.lp), 1e-12, &format!("{agg:?} loss"));
        assert_rows_close(&grad, &finite_diff(&f.lp, reference), 1e-7, &format!("{agg:?} grad"));
        // Clipped tokens and padding get exactly zero gradient.
        assert_eq!(grad[0][0], 0.0, "{agg:?}: ratio > 1 + eps_high with A > 0");
        assert_eq!(grad[1][0], 0.0, "{agg:?}: ratio < 1 - eps_low with A < 0");
        assert_eq!(grad[2][0], 0.0, "{agg:?}: ratio > 1 + eps_high with A > 0");
        assert_eq!(grad[0][3], 0.0, "{agg:?}: padding");
        assert_eq!(grad[2][2], 0.0, "{agg:?}: padding");
        assert!(grad[2][1] != 0.0, "{agg:?}: ratio < 1 - eps_low with A > 0 is not clipped");
        // Statistics: 9 valid tokens, one clipped below, two above.
        assert_eq!(stats.tokens, 9.0);
        assert_close(stats.clip_frac_low, 1.0 / 9.0, 1e-15, "clip_frac_low");
        assert_close(stats.clip_frac_high, 2.0 / 9.0, 1e-15, "clip_frac_high");
        let mut ratios = Vec::new();
        for i in 0..3 {
            for t in 0..4 {
                if f.mask[i][t] != 0.0 {
                    ratios.push((f.lp[i][t] - f.old[i][t]).exp());
                }
            }
        }
        let mean: f64 = ratios.iter().sum::<f64>() / 9.0;
        let approx_kl: f64 = ratios.iter().map(|r| (r - 1.0) - r.ln()).sum::<f64>() / 9.0;
        assert_close(stats.ratio_mean, mean, 1e-12, "ratio_mean");
        assert_close(stats.approx_kl, approx_kl, 1e-12, "approx_kl");
        assert_close(stats.ratio_max, (0.3f64).exp(), 1e-12, "ratio_max");
        assert_close(stats.ratio_min, (-0.4f64).exp(), 1e-12, "ratio_min");
    }
}

#[test]
fn aggregation_hand_values() {
    // Per-token losses 1..=6 in a [2, 3] batch with masks [1,1,0] and [1,1,1]:
    // GRPO: ((1+2)/2 + (4+5+6)/3) / 2 = (1.5 + 5) / 2 = 3.25
    // DAPO: (1+2+4+5+6) / 5 = 3.6
    // Dr. GRPO with max_len 4: 18 / (2·4) = 2.25
    let l = t2(&[vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]]);
    let m = t2(&[vec![1.0, 1.0, 0.0], vec![1.0, 1.0, 1.0]]);
    assert_eq!(scalar(&aggregate(&l, &m, LossAggregation::SequenceMean).unwrap()), 3.25);
    assert_close(scalar(&aggregate(&l, &m, LossAggregation::TokenMean).unwrap()), 3.6, 1e-15, "dapo");
    assert_eq!(scalar(&aggregate(&l, &m, LossAggregation::Constant { max_len: 4 }).unwrap()), 2.25);
    // A NaN on a padding position does not leak into the loss.
    let l_nan = t2(&[vec![1.0, 2.0, f64::NAN], vec![4.0, 5.0, 6.0]]);
    assert_eq!(scalar(&aggregate(&l_nan, &m, LossAggregation::SequenceMean).unwrap()), 3.25);
}

#[test]
fn policy_loss_per_token_advantages() {
    let f = fixture();
    let adv_rows = vec![vec![1.0, -0.3, 0.6, 9.0], vec![-0.5, 0.2, -1.1, 0.4], vec![0.7, 0.9, -2.0, 5.0]];
    let adv = t2(&adv_rows);
    let cfg = PolicyLossConfig { eps_low: 0.2, eps_high: 0.28, aggregation: LossAggregation::TokenMean, kl: None };
    let (loss, grad, _) = crate_policy_loss(&f, &adv, &cfg, false);
    let reference =
        |lp: &[Vec<f64>]| ref_policy_loss(lp, &f.old, &f.refl, &f.mask, &adv_rows, 0.2, 0.28, Agg::Tok, None);
    assert_close(loss, reference(&f.lp), 1e-12, "loss");
    assert_rows_close(&grad, &finite_diff(&f.lp, reference), 1e-7, "grad");
}

#[test]
fn dapo_clip_higher_keeps_gradient_between_the_two_bounds() {
    // ρ = e^0.2 ≈ 1.2214, A = 1: clipped with ε_high = 0.2, not with ε_high = 0.28.
    let logp = v2(&[vec![0.2]]);
    let old = t2(&[vec![0.0]]);
    let mask = t2(&[vec![1.0]]);
    let adv = Tensor::new(&[1.0f64], &cpu()).unwrap();
    for (eps_high, want) in [(0.2, 0.0), (0.28, -(0.2f64).exp())] {
        let cfg = PolicyLossConfig { eps_low: 0.2, eps_high, aggregation: LossAggregation::TokenMean, kl: None };
        let batch = PolicyBatch {
            logp: logp.as_tensor(),
            old_logp: &old,
            ref_logp: None,
            mask: &mask,
            advantages: &adv,
            entropy: None,
        };
        let out = policy_loss(&batch, &cfg).unwrap();
        let g = rows(out.loss.backward().unwrap().get(logp.as_tensor()).unwrap())[0][0];
        assert_close(g, want, 1e-14, &format!("eps_high = {eps_high}"));
    }
}

#[test]
fn kl_in_loss_all_estimators_match_reference_and_finite_differences() {
    let f = fixture();
    let adv_rows = broadcast_adv(&f.adv_seq, 4);
    let adv = Tensor::new(f.adv_seq.as_slice(), &cpu()).unwrap();
    let beta = 0.3;
    for est in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3] {
        for agg in [Agg::Seq, Agg::Tok, Agg::Const(5)] {
            let cfg = PolicyLossConfig {
                eps_low: 0.2,
                eps_high: 0.28,
                aggregation: to_agg(agg),
                kl: Some(KlPenalty { beta, estimator: est }),
            };
            let (loss, grad, stats) = crate_policy_loss(&f, &adv, &cfg, true);
            let reference = |lp: &[Vec<f64>]| {
                ref_policy_loss(lp, &f.old, &f.refl, &f.mask, &adv_rows, 0.2, 0.28, agg, Some((beta, est)))
            };
            let what = format!("{est:?} {agg:?}");
            assert_close(loss, reference(&f.lp), 1e-12, &format!("{what} loss"));
            assert_rows_close(&grad, &finite_diff(&f.lp, reference), 1e-7, &format!("{what} grad"));
            // On a clipped token only the KL term's gradient is left.
            let kl_only = |lp: &[Vec<f64>]| {
                let zero = vec![vec![0.0; 4]; 3];
                ref_policy_loss(lp, &f.old, &f.refl, &f.mask, &zero, 0.2, 0.28, agg, Some((beta, est)))
            };
            let g_kl = finite_diff(&f.lp, kl_only);
            assert_close(grad[1][0], g_kl[1][0], 1e-7, &format!("{what}: clipped token keeps only the KL gradient"));
            // The reported KL is the masked mean of the estimator.
            let mut s = 0.0;
            for i in 0..3 {
                for t in 0..4 {
                    s += f.mask[i][t] * ref_kl(f.lp[i][t], f.refl[i][t], est);
                }
            }
            assert_close(stats.kl_ref.unwrap(), s / 9.0, 1e-12, &format!("{what} kl stat"));
        }
    }
}

#[test]
fn kl_estimators_hand_values() {
    // logp = -1, ref = -1.5: d = ref - logp = -0.5
    let lp = t2(&[vec![-1.0]]);
    let rl = t2(&[vec![-1.5]]);
    let k = |e| rows(&kl_estimate(&lp, &rl, e).unwrap())[0][0];
    assert_close(k(KlEstimator::K1), 0.5, 1e-15, "k1");
    assert_close(k(KlEstimator::K2), 0.125, 1e-15, "k2");
    assert_close(k(KlEstimator::K3), (-0.5f64).exp() + 0.5 - 1.0, 1e-15, "k3 = e^-0.5 - 0.5");
}

#[test]
fn kl_missing_reference_is_an_error() {
    let f = fixture();
    let logp = t2(&f.lp);
    let old = t2(&f.old);
    let mask = t2(&f.mask);
    let adv = Tensor::new(f.adv_seq.as_slice(), &cpu()).unwrap();
    let batch =
        PolicyBatch { logp: &logp, old_logp: &old, ref_logp: None, mask: &mask, advantages: &adv, entropy: None };
    let cfg = PolicyLossConfig { kl: Some(KlPenalty { beta: 0.1, estimator: KlEstimator::K3 }), ..Default::default() };
    let err = policy_loss(&batch, &cfg).unwrap_err().to_string();
    assert!(err.contains("ref_logp"), "{err}");
    // Wrong advantage shape names the tensor and both shapes.
    let bad = Tensor::new(&[1.0f64, 2.0], &cpu()).unwrap();
    let batch = PolicyBatch { advantages: &bad, ..batch };
    let err = policy_loss(&batch, &PolicyLossConfig::default()).unwrap_err().to_string();
    assert!(err.contains("advantages") && err.contains("[2]"), "{err}");
}

#[test]
fn kl_in_reward_sequence_and_token_placements() {
    let f = fixture();
    let rewards = [1.0, 0.0, 0.5];
    let beta = 0.2;
    let old = t2(&f.old);
    let refl = t2(&f.refl);
    let mask = t2(&f.mask);
    for est in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3] {
        let seq = kl_penalised_rewards(&rewards, &old, &refl, &mask, beta, est).unwrap();
        let tok = rows(&kl_penalised_token_rewards(&rewards, &old, &refl, &mask, beta, est).unwrap());
        for i in 0..3 {
            let mut total = 0.0;
            let last = (0..4).filter(|&t| f.mask[i][t] != 0.0).max().unwrap();
            for t in 0..4 {
                let kl = ref_kl(f.old[i][t], f.refl[i][t], est);
                total += f.mask[i][t] * kl;
                let mut want = if f.mask[i][t] != 0.0 { -beta * kl } else { 0.0 };
                if t == last {
                    want += rewards[i];
                }
                assert_close(tok[i][t], want, 1e-14, &format!("{est:?} token reward [{i}][{t}]"));
            }
            assert_close(seq[i], rewards[i] - beta * total, 1e-14, &format!("{est:?} sequence reward {i}"));
            // Token rewards sum to the sequence-shaped reward.
            assert_close(tok[i].iter().sum::<f64>(), seq[i], 1e-13, "sum of token rewards");
        }
    }
}

#[test]
fn sft_loss_matches_reference_and_finite_differences() {
    // logits [2, 3, 4], flattened to 6 rows of 4 for the reference.
    let logits_rows = vec![
        vec![0.1, -0.3, 1.2, 0.0],
        vec![2.0, 0.5, -1.0, 0.3],
        vec![-0.2, 0.4, 0.4, 1.5],
        vec![0.0, 0.0, 0.0, 0.0],
        vec![1.1, -2.0, 0.7, 0.2],
        vec![-0.5, 0.9, -0.1, 0.6],
    ];
    let targets = [[0u32, 3, 1], [2, 2, 0]];
    let mask = vec![vec![1.0, 1.0, 0.0], vec![0.0, 1.0, 1.0]];
    let reference = |lg: &[Vec<f64>], per_seq: bool| -> f64 {
        let mut nll = vec![vec![0.0; 3]; 2];
        for b in 0..2 {
            for t in 0..3 {
                let row = &lg[b * 3 + t];
                let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = mx + row.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
                nll[b][t] = lse - row[targets[b][t] as usize];
            }
        }
        ref_aggregate(&nll, &mask, if per_seq { Agg::Seq } else { Agg::Tok })
    };
    let logits = Var::from_tensor(&t2(&logits_rows).reshape((2, 3, 4)).unwrap()).unwrap();
    let tgt = Tensor::new(&targets, &cpu()).unwrap();
    for (reduction, per_seq) in [(SftReduction::Token, false), (SftReduction::Sequence, true)] {
        let loss = sft_loss_from_logits(logits.as_tensor(), &tgt, &t2(&mask), reduction).unwrap();
        assert_close(scalar(&loss), reference(&logits_rows, per_seq), 1e-12, &format!("{reduction:?} loss"));
        let g = loss.backward().unwrap();
        let g = rows(&g.get(logits.as_tensor()).unwrap().reshape((6, 4)).unwrap());
        let fd = finite_diff(&logits_rows, |x| reference(x, per_seq));
        assert_rows_close(&g, &fd, 1e-7, &format!("{reduction:?} grad"));
        // Masked positions (b=0,t=2 and b=1,t=0) get no gradient.
        assert!(g[2].iter().all(|&x| x == 0.0) && g[3].iter().all(|&x| x == 0.0));
    }
    // Hand value: token (1,1) of an all-zero row: -log(1/4) = ln 4; as the only token of a batch.
    let z = Tensor::zeros((1, 1, 4), DType::F64, &cpu()).unwrap();
    let loss =
        sft_loss_from_logits(&z, &Tensor::new(&[[2u32]], &cpu()).unwrap(), &t2(&[vec![1.0]]), SftReduction::Token)
            .unwrap();
    assert_close(scalar(&loss), 4f64.ln(), 1e-15, "ln 4");
}

#[test]
fn token_entropy_matches_reference() {
    let rows_in = vec![vec![0.1, -0.3, 1.2], vec![0.0, 0.0, 0.0]];
    let logits = t2(&rows_in).reshape((1, 2, 3)).unwrap();
    let h = rows(&token_entropy(&logits).unwrap());
    for (t, row) in rows_in.iter().enumerate() {
        let z: f64 = row.iter().map(|x| x.exp()).sum();
        let want: f64 = -row.iter().map(|x| (x.exp() / z) * (x.exp() / z).ln()).sum::<f64>();
        assert_close(h[0][t], want, 1e-14, "entropy");
    }
    assert_close(h[0][1], 3f64.ln(), 1e-15, "uniform over 3 = ln 3");
}

#[test]
fn value_loss_clipping_matches_reference_and_finite_differences() {
    // Row 0: V = 0.5, V_old = 0, R = 1 → clipped error (0.2 - 1)² = 0.64 beats 0.25: zero gradient.
    // Row 0, t = 1: V = 0.5, V_old = 0, R = 0 → unclipped 0.25 beats 0.04: gradient (V - R).
    let values = vec![vec![0.5, 0.5, 0.1, 3.0], vec![-0.3, 0.05, 1.0, 0.2]];
    let old = vec![vec![0.0, 0.0, 0.2, 0.0], vec![0.0, 0.0, 0.5, 0.1]];
    let ret = vec![vec![1.0, 0.0, 0.4, 0.0], vec![-1.0, 0.3, 0.0, 0.9]];
    let mask = vec![vec![1.0, 1.0, 1.0, 0.0], vec![1.0, 1.0, 1.0, 1.0]];
    let reference = |v: &[Vec<f64>], clip: Option<f64>, agg: Agg| {
        let mut l = vec![vec![0.0; 4]; 2];
        for i in 0..2 {
            for t in 0..4 {
                let u = (v[i][t] - ret[i][t]).powi(2);
                l[i][t] = match clip {
                    Some(c) => {
                        let vc = old[i][t] + (v[i][t] - old[i][t]).max(-c).min(c);
                        0.5 * u.max((vc - ret[i][t]).powi(2))
                    }
                    None => 0.5 * u,
                };
            }
        }
        ref_aggregate(&l, &mask, agg)
    };
    for (clip, agg) in [(Some(0.2), Agg::Tok), (None, Agg::Tok), (Some(0.2), Agg::Seq)] {
        let v = v2(&values);
        let cfg = ValueLossConfig { clip_range: clip, aggregation: to_agg(agg) };
        let out = value_loss(v.as_tensor(), &t2(&old), &t2(&ret), &t2(&mask), &cfg).unwrap();
        assert_close(scalar(&out.loss), reference(&values, clip, agg), 1e-12, "value loss");
        let g = rows(out.loss.backward().unwrap().get(v.as_tensor()).unwrap());
        assert_rows_close(&g, &finite_diff(&values, |x| reference(x, clip, agg)), 1e-7, "value grad");
        if clip.is_some() {
            assert_eq!(g[0][0], 0.0, "clipped value gets no gradient");
            // Token mean over 7 tokens: d/dV of 0.5 (V - R)² / 7 = (0.5 - 0) / 7.
            if let Agg::Tok = agg {
                assert_close(g[0][1], 0.5 / 7.0, 1e-14, "unclipped gradient");
            }
        }
    }
    // Clip fraction: which valid tokens have the clipped error larger.
    let out = value_loss(&t2(&values), &t2(&old), &t2(&ret), &t2(&mask), &ValueLossConfig::default()).unwrap();
    let mut k = 0.0;
    for i in 0..2 {
        for t in 0..4 {
            if mask[i][t] != 0.0 {
                let vc = old[i][t] + (values[i][t] - old[i][t]).clamp(-0.2, 0.2);
                if (vc - ret[i][t]).powi(2) > (values[i][t] - ret[i][t]).powi(2) {
                    k += 1.0;
                }
            }
        }
    }
    assert_close(out.clip_frac, k / 7.0, 1e-15, "value clip fraction");
    assert!(k > 0.0);
}

#[test]
fn value_head_forward_and_gradients() {
    let head = ValueHead::new("value_head", 3, DType::F64, &cpu(), 7).unwrap();
    let named = head.named_vars();
    assert_eq!(named[0].0, "value_head.weight");
    assert_eq!(named[0].1.dims(), &[1, 3]);
    assert_eq!(named[1].0, "value_head.bias");
    let w = named[0].1.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b0 = named[1].1.as_tensor().to_vec1::<f64>().unwrap()[0];
    let bound = 1.0 / 3f64.sqrt();
    assert!(w.iter().chain([b0].iter()).all(|x| x.abs() <= bound));
    // Same seed, same head.
    let again = ValueHead::new("value_head", 3, DType::F64, &cpu(), 7).unwrap();
    assert_eq!(again.named_vars()[0].1.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap(), w);

    let hidden_rows = vec![vec![0.1, 0.2, -0.3], vec![1.0, -1.0, 0.5], vec![0.0, 0.3, 0.3], vec![-0.7, 0.1, 0.9]];
    let hidden = Var::from_tensor(&t2(&hidden_rows).reshape((2, 2, 3)).unwrap()).unwrap();
    let v = head.forward(hidden.as_tensor()).unwrap();
    assert_eq!(v.dims(), &[2, 2]);
    let got = rows(&v);
    for (k, h) in hidden_rows.iter().enumerate() {
        let want: f64 = h.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() + b0;
        assert_close(got[k / 2][k % 2], want, 1e-14, "value");
    }
    // d/dw Σ c·V = Σ_k c_k h_k;  d/dh_k = c_k w.
    let c = t2(&[vec![1.0, -2.0], vec![0.5, 3.0]]);
    let loss = v.mul(&c).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let gw = grads.get(named[0].1.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let cs = [1.0, -2.0, 0.5, 3.0];
    for j in 0..3 {
        let want: f64 = (0..4).map(|k| cs[k] * hidden_rows[k][j]).sum();
        assert_close(gw[j], want, 1e-14, "d/dw");
    }
    let gb = grads.get(named[1].1.as_tensor()).unwrap().to_vec1::<f64>().unwrap()[0];
    assert_close(gb, cs.iter().sum(), 1e-14, "d/db");
    let gh = rows(&grads.get(hidden.as_tensor()).unwrap().reshape((4, 3)).unwrap());
    for k in 0..4 {
        for j in 0..3 {
            assert_close(gh[k][j], cs[k] * w[j], 1e-14, "d/dh");
        }
    }
}

#[test]
fn f32_inputs_work_and_agree_with_f64() {
    let f = fixture();
    let adv = Tensor::new(f.adv_seq.as_slice(), &cpu()).unwrap();
    let cfg = PolicyLossConfig { kl: Some(KlPenalty { beta: 0.1, estimator: KlEstimator::K3 }), ..Default::default() };
    let (loss64, _, _) = crate_policy_loss(&f, &adv, &cfg, true);
    let logp = Var::from_tensor(&t2(&f.lp).to_dtype(DType::F32).unwrap()).unwrap();
    let old = t2(&f.old).to_dtype(DType::F32).unwrap();
    let refl = t2(&f.refl).to_dtype(DType::F32).unwrap();
    let mask = Tensor::new(&[[1u8, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], &cpu()).unwrap();
    let batch = PolicyBatch {
        logp: logp.as_tensor(),
        old_logp: &old,
        ref_logp: Some(&refl),
        mask: &mask,
        advantages: &adv,
        entropy: None,
    };
    let out = policy_loss(&batch, &cfg).unwrap();
    assert_eq!(out.loss.dtype(), DType::F32);
    assert_close(scalar(&out.loss), loss64, 1e-6, "f32 loss");
    assert!(out.loss.backward().unwrap().get(logp.as_tensor()).is_some());
}

#[test]
fn a_log_ratio_of_100_in_f32_gives_finite_loss_and_gradient() {
    // Why the clamp is needed, from first principles: in f32, e^100 overflows (f32::MAX ≈ e^88.7).
    // With A > 0 the clipped branch wins the min, so the unclamped loss −clip(ρ)·A is finite, but
    // its gradient through ρ is (d clip/dρ = 0) · (dρ/d log ρ = ρ = ∞) = 0 · ∞ = NaN.
    let rho = 100f32.exp();
    assert!(rho.is_infinite(), "e^100 overflows f32");
    assert!(f32::min(rho * 1.0, 1.2 * 1.0).is_finite(), "the unclamped loss would be finite");
    assert!((0.0f32 * rho).is_nan(), "and its gradient NaN");

    // Row 0: log-ratio +100 with A > 0 (clipped above); row 1: −100 with A < 0 (clipped below);
    // each row has one ordinary token (log-ratio 0.1) that must keep its usual gradient.
    let old = Tensor::new(&[[-101.0f32, -1.0], [-0.5, -1.0]], &cpu()).unwrap();
    let logp = Var::from_tensor(&Tensor::new(&[[-1.0f32, -0.9], [-100.5, -0.9]], &cpu()).unwrap()).unwrap();
    let mask = Tensor::new(&[[1.0f32, 1.0], [1.0, 1.0]], &cpu()).unwrap();
    let adv = Tensor::new(&[1.0f32, -1.0], &cpu()).unwrap();
    let batch =
        PolicyBatch { logp: logp.as_tensor(), old_logp: &old, ref_logp: None, mask: &mask, advantages: &adv, entropy: None };
    let cfg = PolicyLossConfig { aggregation: LossAggregation::TokenMean, ..PolicyLossConfig::default() };
    let out = policy_loss(&batch, &cfg).unwrap();
    let loss = scalar(&out.loss);
    assert!(loss.is_finite(), "loss {loss}");
    let g = rows(out.loss.backward().unwrap().get(logp.as_tensor()).unwrap());
    assert!(g.iter().flatten().all(|x| x.is_finite()), "gradient {g:?}");
    // The extreme tokens are clipped (zero gradient); ordinary ones get −A·ρ/4 (token mean of 4).
    let rho = (0.1f64).exp();
    assert_rows_close(&g, &[vec![0.0, -rho / 4.0], vec![0.0, rho / 4.0]], 1e-6, "gradient");
    // Loss: row 0 → −min(e^20, 1.2)·1 = −1.2 and −ρ; row 1 → −min(−e^−20, −0.8) = 0.8 and +ρ.
    assert_close(loss, (-1.2 - rho + 0.8 + rho) / 4.0, 1e-6, "loss with the clamp");
    assert_close(out.stats.ratio_max, 20f64.exp(), 1e-6, "ρ is e^20 at the clamp");
}
