//! Golden tests of the advantage estimators, with hand-worked numbers written out.

// The references index like the equations they transcribe.
#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use keel_optim::*;
use proptest::prelude::*;

#[test]
fn grpo_group_normalisation_hand_values() {
    // Two groups of 4: [1, 0, 1, 1] and [0, 0, 0, 1].
    // Group 0: mean 0.75; sample std sqrt((3·0.25² + 0.75²)/3) = sqrt(0.75/3) = 0.5;
    //          population std sqrt(0.75/4) = 0.4330127...
    // Group 1: mean 0.25; the same stds.
    let r = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    let groups = Groups::contiguous(8, 4).unwrap();

    let trl = grpo_advantages(&r, &groups, &GroupNormConfig::default()).unwrap();
    let d = 0.5 + 1e-4;
    let want = [0.25 / d, -0.75 / d, 0.25 / d, 0.25 / d, -0.25 / d, -0.25 / d, -0.25 / d, 0.75 / d];
    for (g, w) in trl.iter().zip(want) {
        assert_close(*g, w, 1e-15, "GRPO, sample std, eps 1e-4");
    }

    let pop = GroupNormConfig { std_kind: StdKind::Population, eps: 0.0, ..Default::default() };
    let a = grpo_advantages(&r, &groups, &pop).unwrap();
    assert_close(a[1], -0.75 / 0.75f64.sqrt() * 2.0, 1e-14, "population std: -0.75 / sqrt(0.1875)");

    let dr = GroupNormConfig { scaling: RewardScaling::None, ..Default::default() };
    let a = grpo_advantages(&r, &groups, &dr).unwrap();
    assert_eq!(a, vec![0.25, -0.75, 0.25, 0.25, -0.25, -0.25, -0.25, 0.75], "Dr. GRPO: centred only");

    // Batch std: the 8 rewards have mean 0.5 and sum of squares 2, sample std sqrt(2/7).
    let batch = GroupNormConfig { scaling: RewardScaling::Batch, eps: 0.0, ..Default::default() };
    let a = grpo_advantages(&r, &groups, &batch).unwrap();
    assert_close(a[7], 0.75 / (2.0f64 / 7.0).sqrt(), 1e-14, "batch std");

    // A group where all rewards agree gives zero advantages, not NaN.
    let same = grpo_advantages(&[1.0, 1.0], &Groups::contiguous(2, 2).unwrap(), &GroupNormConfig::default()).unwrap();
    assert_eq!(same, vec![0.0, 0.0]);
}

#[test]
fn groups_from_ids_equal_contiguous_after_permutation() {
    let r = [1.0, 0.0, 0.3, 1.0, 0.9, 0.0];
    let contiguous = grpo_advantages(&r, &Groups::contiguous(6, 3).unwrap(), &GroupNormConfig::default()).unwrap();
    // Interleave: rows (0, 3), (1, 4), (2, 5) swapped into the order 0, 3, 1, 4, 2, 5.
    let perm = [0, 3, 1, 4, 2, 5];
    let r2: Vec<f64> = perm.iter().map(|&i| r[i]).collect();
    let ids: Vec<usize> = perm.iter().map(|&i| 10 + i / 3).collect();
    let groups = Groups::from_ids(&ids);
    assert_eq!(groups.members(), &[vec![0, 2, 4], vec![1, 3, 5]]);
    let a2 = grpo_advantages(&r2, &groups, &GroupNormConfig::default()).unwrap();
    for (k, &i) in perm.iter().enumerate() {
        assert_eq!(a2[k], contiguous[i]);
    }
    assert!(Groups::contiguous(7, 3).unwrap_err().to_string().contains("group_size"));
    assert!(grpo_advantages(&r[..5], &Groups::contiguous(6, 3).unwrap(), &GroupNormConfig::default()).is_err());
}

#[test]
fn rloo_leave_one_out_hand_values() {
    // [1, 0, 1, 1]: baselines (0+1+1)/3, (1+1+1)/3, (1+0+1)/3, (1+0+1)/3.
    let a = rloo_advantages(&[1.0, 0.0, 1.0, 1.0, 2.0, 4.0], &Groups::from_ids(&[0, 0, 0, 0, 1, 1])).unwrap();
    let want = [1.0 - 2.0 / 3.0, -1.0, 1.0 / 3.0, 1.0 / 3.0, -2.0, 2.0];
    for (g, w) in a.iter().zip(want) {
        assert_close(*g, w, 1e-15, "rloo");
    }
    let err = rloo_advantages(&[1.0, 0.0, 1.0], &Groups::from_ids(&[0, 0, 1])).unwrap_err().to_string();
    assert!(err.contains("group 1"), "{err}");
}

#[test]
fn gae_hand_worked_example() {
    // Row 0: mask [1, 1, 1, 0], r = [0, 0, 1, ·], V = [0.5, 0.4, 0.8, 9.9 (padding)], γ = 0.9, λ = 0.8.
    //   t=2: δ = 1 + 0.9·0 − 0.8 = 0.2                 Â = 0.2
    //   t=1: δ = 0 + 0.9·0.8 − 0.4 = 0.32              Â = 0.32 + 0.72·0.2 = 0.464
    //   t=0: δ = 0 + 0.9·0.4 − 0.5 = −0.14             Â = −0.14 + 0.72·0.464 = 0.19408
    //   returns Â + V = [0.69408, 0.864, 1.0, 0]
    let rewards = t2(&[vec![0.0, 0.0, 1.0, 7.0]]);
    let values = t2(&[vec![0.5, 0.4, 0.8, 9.9]]);
    let mask = t2(&[vec![1.0, 1.0, 1.0, 0.0]]);
    let out = gae(&rewards, &values, &mask, 0.9, 0.8).unwrap();
    assert_rows_close(&rows(&out.advantages), &[vec![0.19408, 0.464, 0.2, 0.0]], 1e-14, "advantages");
    assert_rows_close(&rows(&out.returns), &[vec![0.69408, 0.864, 1.0, 0.0]], 1e-14, "returns");

    // Row with a hole: mask [1, 0, 1, 1], r = [0, 5 (ignored), 0, 1], V = [0.2, 7, 0.3, 0.6], γ = 1, λ = 0.5.
    //   t=3: δ = 1 − 0.6 = 0.4                         Â = 0.4
    //   t=2: δ = 0 + 0.6 − 0.3 = 0.3                   Â = 0.3 + 0.5·0.4 = 0.5
    //   t=1: skipped (0)
    //   t=0: δ = 0 + 0.3 − 0.2 = 0.1                   Â = 0.1 + 0.5·0.5 = 0.35
    let out = gae(
        &t2(&[vec![0.0, 5.0, 0.0, 1.0]]),
        &t2(&[vec![0.2, 7.0, 0.3, 0.6]]),
        &t2(&[vec![1.0, 0.0, 1.0, 1.0]]),
        1.0,
        0.5,
    )
    .unwrap();
    assert_rows_close(&rows(&out.advantages), &[vec![0.35, 0.0, 0.5, 0.4]], 1e-14, "advantages with hole");
    assert_rows_close(&rows(&out.returns), &[vec![0.55, 0.0, 0.8, 1.0]], 1e-14, "returns with hole");

    // λ = 1, γ = 1 reduces to Monte-Carlo returns minus values.
    let out = gae(&rewards, &values, &mask, 1.0, 1.0).unwrap();
    assert_rows_close(&rows(&out.advantages), &[vec![0.5, 0.6, 0.2, 0.0]], 1e-14, "λ = 1");
    assert!(gae(&rewards, &values, &mask, 1.5, 0.9).unwrap_err().to_string().contains("gamma"));
}

#[test]
fn reinforce_pp_hand_values() {
    // Outcome rewards [1, −1] with per-token KL shaping −0.1, γ = 1, masks [1,1,1] and [1,1,0]:
    //   token rewards  [−0.1, −0.1, 0.9]  and [−0.1, −1.1, 0]
    //   returns-to-go  [ 0.7,  0.8, 0.9]  and [−1.2, −1.1, 0]
    //   valid returns: mean 0.1/5 = 0.02; deviations .68 .78 .88 −1.22 −1.12;
    //   population variance (0.4624 + 0.6084 + 0.7744 + 1.4884 + 1.2544)/5 = 0.9176
    let mask = t2(&[vec![1.0, 1.0, 1.0], vec![1.0, 1.0, 0.0]]);
    let base = sequence_rewards_to_tokens(&[1.0, -1.0], &mask).unwrap();
    assert_rows_close(&rows(&base), &[vec![0.0, 0.0, 1.0], vec![0.0, -1.0, 0.0]], 0.0, "reward on last token");
    let shaped = base.broadcast_add(&t2(&[vec![-0.1, -0.1, -0.1], vec![-0.1, -0.1, 0.0]])).unwrap();
    let g = returns_to_go(&shaped, &mask, 1.0).unwrap();
    assert_rows_close(&rows(&g), &[vec![0.7, 0.8, 0.9], vec![-1.2, -1.1, 0.0]], 1e-14, "returns-to-go");
    let a = rows(&reinforce_pp_advantages(&shaped, &mask, 1.0, 1e-8).unwrap());
    let s = (0.9176f64 + 1e-8).sqrt();
    let want = vec![vec![0.68 / s, 0.78 / s, 0.88 / s], vec![-1.22 / s, -1.12 / s, 0.0]];
    assert_rows_close(&a, &want, 1e-12, "REINFORCE++ advantages");
    // Discounting: γ = 0.5 on row 0: G = [−0.1 − 0.05 + 0.225, −0.1 + 0.45, 0.9].
    let g = rows(&returns_to_go(&shaped, &mask, 0.5).unwrap());
    assert_close(g[0][0], -0.1 + 0.5 * (-0.1 + 0.5 * 0.9), 1e-15, "discounted return");
}

#[test]
fn whiten_matches_trl_masked_whiten() {
    // TRL: mean and *sample* variance over valid entries, (x − μ)·rsqrt(var + 1e-8).
    let x = vec![vec![1.0, 2.0, 3.0], vec![4.0, 10.0, -5.0]];
    let m = vec![vec![1.0, 1.0, 0.0], vec![1.0, 1.0, 1.0]];
    let valid = [1.0, 2.0, 4.0, 10.0, -5.0];
    let mean = valid.iter().sum::<f64>() / 5.0;
    let var = valid.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 4.0;
    let inv = 1.0 / (var + 1e-8).sqrt();
    let got = rows(&whiten(&t2(&x), &t2(&m), StdKind::Sample, true, 1e-8).unwrap());
    for i in 0..2 {
        for t in 0..3 {
            let want = if m[i][t] != 0.0 { (x[i][t] - mean) * inv } else { 0.0 };
            assert_close(got[i][t], want, 1e-14, "whiten");
        }
    }
    let kept = rows(&whiten(&t2(&x), &t2(&m), StdKind::Sample, false, 1e-8).unwrap());
    assert_close(kept[1][1], (10.0 - mean) * inv + mean, 1e-14, "whiten keeping the mean");
    let v = whiten_values(&[1.0, 3.0], StdKind::Population, 0.0);
    assert_eq!(v, vec![-1.0, 1.0]);
}

proptest! {
    #[test]
    fn group_advantages_are_centred_and_rloo_is_a_rescaled_grpo(
        r in proptest::collection::vec(-5.0f64..5.0, 12),
        g in prop_oneof![Just(2usize), Just(3), Just(4), Just(6)],
    ) {
        let groups = Groups::contiguous(12, g).unwrap();
        let dr = grpo_advantages(&r, &groups, &GroupNormConfig { scaling: RewardScaling::None, ..Default::default() }).unwrap();
        let rloo = rloo_advantages(&r, &groups).unwrap();
        for rows in groups.members() {
            let s: f64 = rows.iter().map(|&i| dr[i]).sum();
            prop_assert!(s.abs() < 1e-9);
            // RLOO's A_i = G/(G−1) · (r_i − mean).
            for &i in rows {
                prop_assert!((rloo[i] - dr[i] * g as f64 / (g - 1) as f64).abs() < 1e-9);
            }
        }
    }
}
