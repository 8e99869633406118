//! Logit processing and sampling as pure functions on `f32` slices.
//!
//! Kept free of tensors and model state so that each step can be unit-tested on hand-written
//! distributions and reused by any backend.
//!
//! # Order of processing
//!
//! For sampled decoding (temperature > 0) the raw logits `z` of one row are transformed in the
//! order Hugging Face `generate` (`TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`,
//! `MinPLogitsWarper`) and vLLM's V0 sampler use:
//!
//! 1. **temperature**: `z / T`;
//! 2. **top-k**: keep tokens whose logit is `>=` the k-th largest (ties at the boundary are kept,
//!    as in HF);
//! 3. **top-p** (nucleus): over the distribution left by the previous steps, keep the smallest
//!    prefix of tokens sorted by probability (ties broken by lower token id) whose cumulative mass
//!    reaches `p` — a token is kept iff the mass strictly before it is `< p`, so at least one survives;
//! 4. **min-p**: over the renormalised distribution left by the previous steps, keep tokens with
//!    `p_i >= min_p * max_j p_j`.
//!
//! Removed tokens get logit `-inf`; the sample is then drawn from the softmax of what is left.
//! (vLLM's V1 engine applies min-p before top-k/top-p; the difference only matters when several
//! filters are combined.) Temperature 0 means greedy: the argmax of the raw logits, ties to the
//! lowest id, with every truncation setting ignored.
//!
//! # Recorded log-probabilities
//!
//! RL needs `log π_θ(token)` of the *policy* that is being optimised, and trainers (TRL, verl)
//! recompute it as `log_softmax(logits / T)` with the sampling temperature but without top-k/top-p
//! truncation. [`logprob_and_entropy`] therefore records `log_softmax(z / T)[token]` (with `T = 1`
//! for greedy decoding) and the entropy of that same distribution, computed in `f64` and rounded
//! to `f32`. These match what the learner computes from the same weights, so importance ratios of
//! on-policy samples are 1 up to float error; with truncation the behaviour distribution actually
//! sampled differs from the recorded one, which is the convention those trainers accept.

use crate::params::SamplingParams;

/// Reusable buffers for the sorting steps, so a decode step does not allocate per row.
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    values: Vec<f32>,
    order: Vec<u32>,
}

/// Divides the logits by the temperature in place. `T = 1` and `T <= 0` (greedy, handled by the
/// caller with [`argmax`]) leave them unchanged.
pub fn apply_temperature(logits: &mut [f32], temperature: f32) {
    if temperature > 0.0 && temperature != 1.0 {
        for l in logits.iter_mut() {
            *l /= temperature;
        }
    }
}

/// Keeps the `k` largest logits (and any tied with the k-th), setting the rest to `-inf`;
/// `k = 0` or `k >=` the number of finite logits is a no-op.
pub fn apply_top_k(logits: &mut [f32], k: usize, scratch: &mut Scratch) {
    if k == 0 {
        return;
    }
    scratch.values.clear();
    scratch
        .values
        .extend(logits.iter().copied().filter(|l| *l > f32::NEG_INFINITY));
    if k >= scratch.values.len() {
        return;
    }
    let (_, kth, _) = scratch
        .values
        .select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let threshold = *kth;
    for l in logits.iter_mut() {
        if *l < threshold {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// Nucleus filtering: keeps the smallest set of most probable tokens whose probability mass
/// reaches `top_p` (a token is kept iff the mass of the tokens ranked before it is `< top_p`);
/// the rest become `-inf`. `top_p >= 1` is a no-op.
pub fn apply_top_p(logits: &mut [f32], top_p: f32, scratch: &mut Scratch) {
    if top_p >= 1.0 {
        return;
    }
    let Some(max) = max_finite(logits) else {
        return;
    };
    scratch.order.clear();
    scratch
        .order
        .extend((0..logits.len() as u32).filter(|&i| logits[i as usize] > f32::NEG_INFINITY));
    scratch.order.sort_unstable_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    let max = max as f64;
    let total: f64 = scratch
        .order
        .iter()
        .map(|&i| (logits[i as usize] as f64 - max).exp())
        .sum();
    let target = top_p as f64 * total;
    let mut cum = 0.0f64;
    let mut keep = 0usize;
    for &i in &scratch.order {
        if cum >= target {
            break;
        }
        cum += (logits[i as usize] as f64 - max).exp();
        keep += 1;
    }
    for &i in &scratch.order[keep..] {
        logits[i as usize] = f32::NEG_INFINITY;
    }
}

/// Min-p filtering: removes tokens whose probability is below `min_p` times the largest
/// probability (equivalently, whose logit is below `max + ln(min_p)`). `min_p <= 0` is a no-op.
pub fn apply_min_p(logits: &mut [f32], min_p: f32) {
    if min_p <= 0.0 {
        return;
    }
    let Some(max) = max_finite(logits) else {
        return;
    };
    let max = max as f64;
    let ln_min_p = (min_p as f64).ln();
    for l in logits.iter_mut() {
        if *l > f32::NEG_INFINITY && (*l as f64 - max) < ln_min_p {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// Applies temperature, top-k, top-p and min-p in that order (see the module docs); the result is
/// the logits of the distribution a non-greedy sample is drawn from.
pub fn process_logits(logits: &mut [f32], params: &SamplingParams, scratch: &mut Scratch) {
    apply_temperature(logits, params.temperature);
    apply_top_k(logits, params.top_k, scratch);
    apply_top_p(logits, params.top_p, scratch);
    apply_min_p(logits, params.min_p);
}

/// The largest finite logit, or `None` if every entry is `-inf`.
pub fn max_finite(logits: &[f32]) -> Option<f32> {
    logits
        .iter()
        .copied()
        .filter(|l| *l > f32::NEG_INFINITY)
        .reduce(f32::max)
}

/// True if the row can be sampled from: no NaN, no `+inf`, at least one finite logit.
pub fn logits_are_valid(logits: &[f32]) -> bool {
    let mut any = false;
    for &l in logits {
        if l.is_nan() || l == f32::INFINITY {
            return false;
        }
        any |= l > f32::NEG_INFINITY;
    }
    any
}

/// Index of the largest logit, ties to the lowest index: greedy decoding.
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0usize;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best
}

/// Draws a token from `softmax(logits)` by inverse CDF with a uniform `u` in `[0, 1)`: walks the
/// tokens in id order accumulating `exp(l - max)` (in `f64`) until it exceeds `u * total`.
/// Returns `None` if every logit is `-inf`.
pub fn sample_from_logits(logits: &[f32], u: f64) -> Option<usize> {
    let max = max_finite(logits)? as f64;
    let total: f64 = logits
        .iter()
        .filter(|l| **l > f32::NEG_INFINITY)
        .map(|&l| (l as f64 - max).exp())
        .sum();
    let target = u * total;
    let mut acc = 0.0f64;
    let mut last = None;
    for (i, &l) in logits.iter().enumerate() {
        if l > f32::NEG_INFINITY {
            acc += (l as f64 - max).exp();
            last = Some(i);
            if acc > target {
                return Some(i);
            }
        }
    }
    last
}

/// `log_softmax(z / T)[token]` and the entropy `-Σ p log p` of `softmax(z / T)`, from the raw
/// logits `z` (`T <= 0`, greedy, uses `T = 1`). Computed in `f64`; `-inf` entries have zero mass.
/// This is the policy log-probability RL losses need (see the module docs).
pub fn logprob_and_entropy(raw_logits: &[f32], temperature: f32, token: usize) -> (f32, f32) {
    let t = if temperature > 0.0 {
        temperature as f64
    } else {
        1.0
    };
    let mut m = f64::NEG_INFINITY;
    for &l in raw_logits {
        if l > f32::NEG_INFINITY {
            m = m.max(l as f64 / t);
        }
    }
    if m == f64::NEG_INFINITY {
        return (f32::NEG_INFINITY, 0.0);
    }
    let mut sum = 0.0f64;
    let mut weighted = 0.0f64;
    for &l in raw_logits {
        if l > f32::NEG_INFINITY {
            let d = l as f64 / t - m;
            let e = d.exp();
            sum += e;
            weighted += e * d;
        }
    }
    let log_sum = sum.ln();
    let logprob = match raw_logits.get(token) {
        Some(&l) if l > f32::NEG_INFINITY => l as f64 / t - m - log_sum,
        _ => f64::NEG_INFINITY,
    };
    let entropy = log_sum - weighted / sum;
    (logprob as f32, entropy.max(0.0) as f32)
}

/// True when [`process_logits`] leaves raw logits unchanged (temperature 1, no top-k, top-p or
/// min-p), so the sampled distribution is exactly the one [`logprob_and_entropy`] records and
/// [`sample_with_logprob`] may serve both.
pub fn is_untruncated_unit_temperature(params: &SamplingParams) -> bool {
    params.temperature == 1.0 && params.top_k == 0 && params.top_p >= 1.0 && params.min_p <= 0.0
}

/// [`sample_from_logits`] and [`logprob_and_entropy`] (at temperature 1) of one row in a single
/// exponentiation pass, bit-identical to calling them in turn: the same `exp(l − max)` values are
/// computed once into `exps` and summed in the same order.
///
/// Why: RL rollouts sample at temperature 1 without truncation (TRL's and Keel's defaults). The
/// separate functions then copy the row, exponentiate it for the sampling total, again (half of it
/// on average) for the inverse-CDF walk and again for the log-prob and entropy: about 2.5 `f64`
/// exponentials per vocabulary entry, per sequence, per step — 10 000 per row at a 4 096-token
/// vocabulary. Returns `(token, logprob, entropy)`, or `None` if every logit is `-inf`.
pub fn sample_with_logprob(raw_logits: &[f32], u: f64, exps: &mut Vec<f64>) -> Option<(usize, f32, f32)> {
    let max = max_finite(raw_logits)? as f64;
    exps.clear();
    exps.reserve(raw_logits.len());
    let (mut total, mut weighted) = (0.0f64, 0.0f64);
    for &l in raw_logits {
        if l > f32::NEG_INFINITY {
            let d = l as f64 - max;
            let e = d.exp();
            total += e;
            weighted += e * d;
            exps.push(e);
        } else {
            exps.push(0.0);
        }
    }
    let target = u * total;
    let mut acc = 0.0f64;
    let mut token = None;
    for (i, (&l, &e)) in raw_logits.iter().zip(exps.iter()).enumerate() {
        if l > f32::NEG_INFINITY {
            acc += e;
            token = Some(i);
            if acc > target {
                break;
            }
        }
    }
    let token = token?;
    let log_sum = total.ln();
    let logprob = raw_logits[token] as f64 - max - log_sum;
    let entropy = log_sum - weighted / total;
    Some((token, logprob as f32, entropy.max(0.0) as f32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NEG: f32 = f32::NEG_INFINITY;

    fn ln(v: &[f32]) -> Vec<f32> {
        v.iter().map(|p| p.ln()).collect()
    }

    fn kept(l: &[f32]) -> Vec<usize> {
        l.iter()
            .enumerate()
            .filter(|(_, x)| **x > NEG)
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn temperature_divides() {
        let mut l = vec![2.0, -1.0, 0.5];
        apply_temperature(&mut l, 0.5);
        assert_eq!(l, vec![4.0, -2.0, 1.0]);
        apply_temperature(&mut l, 0.0);
        assert_eq!(l, vec![4.0, -2.0, 1.0]);
    }

    #[test]
    fn top_k_keeps_k_largest_and_ties() {
        let mut s = Scratch::default();
        let mut l = vec![0.1, 3.0, 2.0, -1.0, 2.5];
        apply_top_k(&mut l, 2, &mut s);
        assert_eq!(kept(&l), vec![1, 4]);
        assert_eq!(l[1], 3.0);
        let mut t = vec![1.0, 2.0, 2.0, 0.0];
        apply_top_k(&mut t, 2, &mut s);
        assert_eq!(kept(&t), vec![1, 2]);
        let mut tie = vec![1.0, 2.0, 1.0, 1.0];
        apply_top_k(&mut tie, 2, &mut s);
        assert_eq!(
            kept(&tie),
            vec![0, 1, 2, 3],
            "ties with the k-th value are kept (HF)"
        );
        let mut all = vec![1.0, 2.0];
        apply_top_k(&mut all, 0, &mut s);
        apply_top_k(&mut all, 5, &mut s);
        assert_eq!(kept(&all), vec![0, 1]);
    }

    #[test]
    fn top_p_keeps_exact_nucleus() {
        let mut s = Scratch::default();
        // probabilities 0.5, 0.1, 0.3, 0.1 (ids 0..4)
        let base = ln(&[0.5, 0.1, 0.3, 0.1]);
        let mut l = base.clone();
        apply_top_p(&mut l, 0.7, &mut s);
        assert_eq!(kept(&l), vec![0, 2], "0.5 < 0.7, then 0.5+0.3 >= 0.7");
        let mut l = base.clone();
        apply_top_p(&mut l, 0.45, &mut s);
        assert_eq!(kept(&l), vec![0], "mass 0.5 already reaches 0.45");
        let mut l = base.clone();
        apply_top_p(&mut l, 0.85, &mut s);
        // 0.8 < 0.85 so the next token is needed; the two 0.1 tokens tie and the lower id wins.
        assert_eq!(kept(&l), vec![0, 1, 2]);
        let mut l = base.clone();
        apply_top_p(&mut l, 0.01, &mut s);
        assert_eq!(kept(&l), vec![0], "at least one token survives");
        let mut l = base.clone();
        apply_top_p(&mut l, 1.0, &mut s);
        assert_eq!(l, base);
    }

    #[test]
    fn min_p_is_relative_to_max() {
        // p = 0.5, 0.1, 0.3, 0.1; min_p 0.3 -> threshold 0.15 keeps 0 and 2.
        let mut l = ln(&[0.5, 0.1, 0.3, 0.1]);
        apply_min_p(&mut l, 0.3);
        assert_eq!(kept(&l), vec![0, 2]);
        let mut l = ln(&[0.5, 0.1, 0.3, 0.1]);
        apply_min_p(&mut l, 0.19);
        assert_eq!(kept(&l), vec![0, 1, 2, 3]);
        let mut l = ln(&[0.5, 0.1, 0.3, 0.1]);
        apply_min_p(&mut l, 1.0);
        assert_eq!(kept(&l), vec![0]);
    }

    #[test]
    fn pipeline_order_matters_as_documented() {
        // top-k then top-p: top-k=3 keeps {0.4,0.3,0.2} (renormalised 4/9,3/9,2/9); top-p 0.6
        // then keeps {0, 1} since 4/9 < 0.6 <= 7/9.
        let mut s = Scratch::default();
        let mut l = ln(&[0.4, 0.3, 0.2, 0.1]);
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 3,
            top_p: 0.6,
            ..Default::default()
        };
        process_logits(&mut l, &p, &mut s);
        assert_eq!(kept(&l), vec![0, 1]);
        // temperature 2 flattens 0.4/0.3/0.2/0.1 before min-p 0.75: sqrt ratios 1, .866, .707, .5
        let mut l = ln(&[0.4, 0.3, 0.2, 0.1]);
        let p = SamplingParams {
            temperature: 2.0,
            min_p: 0.75,
            ..Default::default()
        };
        process_logits(&mut l, &p, &mut s);
        assert_eq!(kept(&l), vec![0, 1]);
    }

    #[test]
    fn argmax_ties_to_lowest() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -2.0]), 1);
        assert_eq!(argmax(&[NEG, NEG, 0.0]), 2);
    }

    #[test]
    fn sampling_inverse_cdf() {
        let l = ln(&[0.5, 0.25, 0.25]);
        assert_eq!(sample_from_logits(&l, 0.0), Some(0));
        assert_eq!(sample_from_logits(&l, 0.49), Some(0));
        assert_eq!(sample_from_logits(&l, 0.51), Some(1));
        assert_eq!(sample_from_logits(&l, 0.76), Some(2));
        assert_eq!(sample_from_logits(&l, 0.999_999), Some(2));
        let masked = vec![NEG, 0.0, NEG];
        assert_eq!(sample_from_logits(&masked, 0.9), Some(1));
        assert_eq!(sample_from_logits(&[NEG, NEG], 0.5), None);
    }

    #[test]
    fn logprob_and_entropy_hand_computed() {
        // logits ln(0.5), ln(0.25), ln(0.25): logprob of id 1 = ln 0.25, entropy = 1.5 ln 2.
        let l = ln(&[0.5, 0.25, 0.25]);
        let (lp, h) = logprob_and_entropy(&l, 1.0, 1);
        assert!((lp - 0.25f32.ln()).abs() < 1e-6, "{lp}");
        assert!((h - 1.5 * std::f32::consts::LN_2).abs() < 1e-6, "{h}");
        // temperature 0 uses T = 1
        assert_eq!(logprob_and_entropy(&l, 0.0, 1), (lp, h));
        // logits [0, ln 3] at T = 0.5 -> scaled [0, 2 ln 3] = probs 1/10, 9/10
        let l2 = [0.0f32, 3.0f32.ln()];
        let (lp, h) = logprob_and_entropy(&l2, 0.5, 1);
        assert!((lp - 0.9f32.ln()).abs() < 1e-6);
        let h_exact = -(0.1f32 * 0.1f32.ln() + 0.9 * 0.9f32.ln());
        assert!((h - h_exact).abs() < 1e-6);
        // masked entries have no mass
        let (lp, h) = logprob_and_entropy(&[0.0, NEG, 0.0], 1.0, 2);
        assert!((lp - 0.5f32.ln()).abs() < 1e-7);
        assert!((h - std::f32::consts::LN_2).abs() < 1e-7);
    }

    /// The one-pass sampler returns exactly what the separate functions return.
    #[test]
    fn one_pass_sampler_is_bit_identical() {
        let mut exps = Vec::new();
        let rows: Vec<Vec<f32>> = vec![
            ln(&[0.5, 0.25, 0.25]),
            vec![NEG, 0.3, -1.7, NEG, 2.5, 2.5, -40.0],
            (0..4096).map(|i| ((i * 7919 % 1000) as f32) * 0.013 - 6.0).collect(),
        ];
        for row in &rows {
            for k in 0..50 {
                let u = (k as f64 + 0.37) / 50.0;
                let want_tok = sample_from_logits(row, u).unwrap();
                let (lp, h) = logprob_and_entropy(row, 1.0, want_tok);
                assert_eq!(sample_with_logprob(row, u, &mut exps), Some((want_tok, lp, h)));
            }
        }
        assert_eq!(sample_with_logprob(&[NEG, NEG], 0.5, &mut exps), None);
    }

    #[test]
    fn validity_check() {
        assert!(logits_are_valid(&[0.0, NEG]));
        assert!(!logits_are_valid(&[NEG, NEG]));
        assert!(!logits_are_valid(&[0.0, f32::NAN]));
        assert!(!logits_are_valid(&[0.0, f32::INFINITY]));
    }

    proptest! {
        #[test]
        fn filters_keep_the_argmax_and_a_valid_distribution(
            logits in prop::collection::vec(-20.0f32..20.0, 1..64),
            k in 0usize..10, p in 0.01f32..1.0, mp in 0.0f32..1.0, t in 0.1f32..3.0,
            u in 0.0f64..1.0,
        ) {
            let best = argmax(&logits);
            let mut l = logits.clone();
            let params = SamplingParams { temperature: t, top_k: k, top_p: p, min_p: mp, ..Default::default() };
            process_logits(&mut l, &params, &mut Scratch::default());
            prop_assert!(l[best] > NEG);
            prop_assert!(logits_are_valid(&l));
            let s = sample_from_logits(&l, u).unwrap();
            prop_assert!(l[s] > NEG);
            let (lp, h) = logprob_and_entropy(&logits, t, s);
            prop_assert!(lp <= 0.0 && lp.is_finite());
            prop_assert!(h >= 0.0 && h <= (logits.len() as f32).ln() + 1e-4);
        }
    }
}
