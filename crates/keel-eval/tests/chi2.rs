//! χ² from samples of π (`E_π[w] − 1`), its KL floor `e^KL − 1` and effective sample size, and
//! `measure_drift`, the drift measurement evaluation runs.

use keel_eval::drift::{chi2_from_policy_samples, measure_drift, DriftSamples};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn chi2_hand_example_floor_and_ess() {
    // w = 2 and 0.5: mean 1.25, so χ̂² = 0.25; Kish ESS = 2.5² / (4 + 0.25).
    let lw = [2f64.ln(), 0.5f64.ln()];
    let c = chi2_from_policy_samples(&lw, 0.0).unwrap();
    assert!(close(c.estimate, 0.25, 1e-12), "{c:?}");
    assert!(close(c.ess, 6.25 / 4.25, 1e-12), "{c:?}");
    assert_eq!((c.n, c.kl_floor, c.value, c.reliable), (2, 0.0, c.estimate, true));
    // A KL of 0.5 implies χ² ≥ e^0.5 − 1 = 0.6487 > 0.25: the floor is reported, flagged.
    let c = chi2_from_policy_samples(&lw, 0.5).unwrap();
    assert!(close(c.kl_floor, 0.5f64.exp() - 1.0, 1e-15));
    assert_eq!((c.value, c.reliable), (c.kl_floor, false));
    assert!(close(c.estimate, 0.25, 1e-12), "the raw estimate is kept: {c:?}");
    // π = π_ref: every w is 1, χ² = 0 exactly with the full sample size.
    let c = chi2_from_policy_samples(&[0.0; 7], 0.0).unwrap();
    assert_eq!((c.estimate, c.ess, c.value, c.reliable), (0.0, 7.0, 0.0, true));
    // Sequence log-ratios of hundreds of nats: no overflow in the ESS, χ² saturates.
    let c = chi2_from_policy_samples(&[800.0, 0.0], 1.0).unwrap();
    assert_eq!(c.estimate, f64::MAX);
    assert!(close(c.ess, 1.0, 1e-12), "{c:?}");
    let c = chi2_from_policy_samples(&[300.0, 299.0], 0.0).unwrap();
    assert!(close(c.estimate.ln(), 300.0 + ((1.0 + (-1f64).exp()) / 2.0).ln(), 1e-9), "{c:?}");
    // Bad input is an error naming the function.
    for (lw, kl) in [(&[][..], 0.0), (&[f64::NAN][..], 0.0), (&[0.0][..], -0.1), (&[0.0][..], f64::INFINITY)] {
        let e = chi2_from_policy_samples(lw, kl).unwrap_err().to_string();
        assert!(e.starts_with("chi2_from_policy_samples:"), "{e}");
    }
}

#[test]
fn measure_drift_hand_example() {
    // π's samples: s = 1, 0, 1, 1 with w = e^1, e^0, e^0.5, e^-0.2 and per-sample KL 0.6, 0.2, 0.4, 0.0;
    // π_ref's: s = 1, 1, 0, 0, 1.
    let samples = DriftSamples {
        s_policy: vec![1.0, 0.0, 1.0, 1.0],
        log_w_policy: vec![1.0, 0.0, 0.5, -0.2],
        kl_policy: vec![0.6, 0.2, 0.4, 0.0],
        s_ref: vec![1.0, 1.0, 0.0, 0.0, 1.0],
    };
    let d = measure_drift(&samples).unwrap();
    let kl: f64 = 0.3;
    let chi2: f64 = (1f64.exp() + 1.0 + 0.5f64.exp() + (-0.2f64).exp()) / 4.0 - 1.0;
    let (mp, mr) = (0.75, 0.6);
    let var = (3.0 * 0.4f64.powi(2) + 2.0 * 0.6f64.powi(2)) / 5.0;
    assert_eq!((d.n_policy, d.n_ref), (4, 5));
    assert!(close(d.kl, kl, 1e-15) && close(d.kl_k1, 1.3 / 4.0, 1e-15));
    assert!(close(d.safety_policy, mp, 1e-15) && close(d.safety_ref, mr, 1e-15));
    assert!(close(d.delta_s, mp - mr, 1e-15) && close(d.var_ref_s, var, 1e-15));
    assert!(close(d.chi2.estimate, chi2, 1e-12) && d.chi2.reliable && d.chi2.value == d.chi2.estimate);
    assert!(close(d.chi2.kl_floor, kl.exp_m1(), 1e-15) && chi2 > kl.exp_m1());
    assert!(close(d.bound_kl, (kl / 2.0).sqrt(), 1e-15) && d.bound_kl_holds);
    assert!(close(d.bound_chi2, (var * chi2).sqrt(), 1e-12) && d.bound_chi2_holds);
    assert!(d.bounds_hold());
    // A drift larger than either bound fails that check only.
    let mut big = samples.clone();
    big.s_ref = vec![0.0, 0.0, 0.0, 0.0, 1.0];
    let d = measure_drift(&big).unwrap();
    assert!(close(d.delta_s, 0.55, 1e-15));
    assert!(!d.bound_kl_holds && d.bound_chi2_holds == (0.55 <= (0.16 * chi2).sqrt()));
    assert!(!d.bounds_hold());
    // Scores outside [0, 1], negative KL and mismatched lengths are rejected.
    for bad in [
        DriftSamples { s_policy: vec![2.0, 0.0, 1.0, 1.0], ..samples.clone() },
        DriftSamples { kl_policy: vec![0.6, -0.2, 0.4, 0.0], ..samples.clone() },
        DriftSamples { log_w_policy: vec![1.0], ..samples.clone() },
        DriftSamples { s_ref: vec![], ..samples.clone() },
    ] {
        let e = measure_drift(&bad).unwrap_err().to_string();
        assert!(e.starts_with("measure_drift:") || e.starts_with("safety_drift:"), "{e}");
    }
}

/// A discrete π (`p`) and π_ref (`q`) on 2–8 outcomes; `q` keeps every outcome at ≥ 2% of its
/// mass so that `w = p/q` is bounded and the sample mean converges at the CLT rate.
fn distributions() -> impl Strategy<Value = (Vec<f64>, Vec<f64>, u64)> {
    (2usize..=8)
        .prop_flat_map(|k| {
            (
                proptest::collection::vec(prop_oneof![1 => Just(0.0), 5 => 0.01f64..1.0], k),
                proptest::collection::vec(0.05f64..1.0, k),
                any::<u64>(),
            )
        })
        .prop_filter("π needs mass", |(p, _, _)| p.iter().sum::<f64>() > 0.05)
        .prop_map(|(p, q, seed)| {
            let (zp, zq) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
            (p.iter().map(|x| x / zp).collect(), q.iter().map(|x| x / zq).collect(), seed)
        })
}

/// Draws `n` outcomes from `p` by inverting its CDF.
fn sample(p: &[f64], n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    (0..n)
        .map(|_| {
            let u: f64 = rng.random();
            let mut acc = 0.0;
            p.iter().position(|pi| {
                acc += pi;
                u < acc
            })
            .unwrap_or_else(|| p.iter().rposition(|pi| *pi > 0.0).unwrap_or(p.len() - 1))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn chi2_from_policy_samples_converges_respects_the_kl_floor_and_has_a_sane_ess(
        (p, q, seed) in distributions(),
        n in prop_oneof![Just(8usize), Just(64), Just(4000)],
    ) {
        // Known values: χ² = Σ p²/q − 1 = E_p[w] − 1, KL = Σ p log(p/q), Var_p(w) = Σ p³/q² − (1+χ²)².
        let chi2: f64 = p.iter().zip(&q).map(|(a, b)| a * a / b).sum::<f64>() - 1.0;
        let kl: f64 = p.iter().zip(&q).filter(|(a, _)| **a > 0.0).map(|(a, b)| a * (a / b).ln()).sum();
        let m2: f64 = p.iter().zip(&q).map(|(a, b)| a * a * a / (b * b)).sum();
        let var_w = (m2 - (1.0 + chi2).powi(2)).max(0.0);
        prop_assert!(chi2 >= kl.exp_m1() - 1e-12, "Jensen: χ² {chi2} ≥ e^KL − 1 {}", kl.exp_m1());

        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let draws = sample(&p, n, &mut rng);
        let lw: Vec<f64> = draws.iter().map(|&i| p[i].ln() - q[i].ln()).collect();
        let c = chi2_from_policy_samples(&lw, kl).unwrap();
        // Converges: on many samples, within 5 standard errors of the known χ².
        if n == 4000 {
            let se = (var_w / n as f64).sqrt();
            prop_assert!((c.estimate - chi2).abs() <= 5.0 * se + 1e-9, "χ̂² {} vs χ² {chi2} (se {se})", c.estimate);
        }
        // Never below the KL floor after the correction, and the correction only moves toward the
        // truth (the floor is itself ≤ χ²).
        prop_assert!(c.value >= c.kl_floor && c.value >= c.estimate);
        prop_assert!((c.value - chi2).abs() <= (c.estimate - chi2).abs() + 1e-12);
        prop_assert_eq!(c.reliable, c.estimate >= c.kl_floor - 1e-9 * (1.0 + c.kl_floor));
        // ESS sane: in [1, n], n exactly when π = π_ref, and ESS/n → (E_p w)² / E_p[w²].
        prop_assert!(c.ess >= 1.0 - 1e-12 && c.ess <= n as f64 + 1e-9, "ess {}", c.ess);
        if n == 4000 {
            let limit = (1.0 + chi2).powi(2) / m2;
            prop_assert!((c.ess / n as f64 - limit).abs() <= 0.1 * limit + 0.02, "ESS/n {} vs {limit}", c.ess / n as f64);
        }
        // The plain log-ratio on the same samples never contradicts the estimate (empirical
        // Jensen: mean(w) ≥ e^mean(log w)); with that KL as the floor the estimate is reliable.
        let k1 = lw.iter().sum::<f64>() / n as f64;
        // Equality holds when every sample has the same w (π a point mass), so allow rounding relative
        // to the size of the numbers, as the reliability flag does.
        prop_assert!(
            c.estimate >= k1.exp_m1() - 1e-9 * (1.0 + k1.exp_m1().abs()),
            "χ̂² {} < e^k1 − 1 {}", c.estimate, k1.exp_m1()
        );
        if k1 >= 0.0 {
            prop_assert!(chi2_from_policy_samples(&lw, k1).unwrap().reliable);
        }
        // Never negative once corrected, although the raw mean of w can fall below 1.
        prop_assert!(c.value >= 0.0);
        // π = π_ref: zero, with every sample effective.
        let same = chi2_from_policy_samples(&vec![0.0; n], 0.0).unwrap();
        prop_assert!(same.estimate == 0.0 && same.ess == n as f64 && same.reliable);
    }
}
