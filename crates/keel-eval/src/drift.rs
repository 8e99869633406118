//! Safety drift under KL-regularised RL and the bounds that limit it (DESIGN.md, arXiv 2511.21050).
//!
//! With `π*(y) ∝ π_ref(y)·exp(f(y)/β)` and `w = π*/π_ref`:
//! `ΔS = E_π*[s] − E_ref[s] = Cov_ref(s, w)`, hence
//! `|ΔS| ≤ sqrt(Var_ref(s)·χ²(π*‖π_ref))` (Cauchy–Schwarz, since `E_ref[w] = 1` and
//! `χ² = E_ref[w²] − 1 = Var_ref(w)`) and, for `s ∈ [0, 1]`, `|ΔS| ≤ TV ≤ sqrt(KL/2)` (Pinsker).
//! This module estimates these quantities from samples and computes them exactly on discrete
//! distributions. [`measure_drift`] is what `evaluate` stages run on their sampled completions.
//!
//! χ² is estimated from samples of π, not of π_ref: `χ²(π‖π_ref) = E_ref[w²] − 1 = E_π[w] − 1`
//! ([`chi2_from_policy_samples`]). Jensen's inequality gives the floor
//! `KL = E_π[log w] ≤ log E_π[w] = log(1 + χ²)`, i.e. `χ² ≥ e^KL − 1`, which the estimate is
//! checked against.

use serde::{Deserialize, Serialize};

use crate::EvalError;

fn check_same_len(metric: &'static str, a: usize, b: usize) -> Result<(), EvalError> {
    if a != b {
        return Err(EvalError::invalid(
            metric,
            format!("length mismatch: {a} vs {b}"),
        ));
    }
    if a == 0 {
        return Err(EvalError::invalid(metric, "empty input"));
    }
    Ok(())
}

fn check_finite(metric: &'static str, xs: &[f64]) -> Result<(), EvalError> {
    match xs.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(EvalError::invalid(
            metric,
            format!("non-finite value {} at index {i}", xs[i]),
        )),
        None => Ok(()),
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sampled KL(π‖π_ref) of one sequence with Schulman's k3 estimator, summed over tokens:
/// with `r_t = π_ref(y_t)/π(y_t) = exp(logp_ref_t − logp_t)`, `k3_t = r_t − 1 − log r_t ≥ 0`.
/// Unbiased for the per-token KL when `y ~ π`, and never negative (unlike `−log r`).
pub fn k3_kl(logp_policy: &[f64], logp_ref: &[f64]) -> Result<f64, EvalError> {
    check_same_len("k3_kl", logp_policy.len(), logp_ref.len())?;
    check_finite("k3_kl", logp_policy)?;
    check_finite("k3_kl", logp_ref)?;
    Ok(logp_policy
        .iter()
        .zip(logp_ref)
        .map(|(lp, lr)| {
            let log_r = lr - lp;
            log_r.exp_m1() - log_r
        })
        .sum())
}

/// Per-prompt sampled KL: the mean of [`k3_kl`] over the prompt's samples, each given as
/// `(policy log-probs, reference log-probs)` of the sampled tokens.
pub fn sampled_kl(samples: &[(Vec<f64>, Vec<f64>)]) -> Result<f64, EvalError> {
    if samples.is_empty() {
        return Err(EvalError::invalid("sampled_kl", "no samples"));
    }
    let mut total = 0.0;
    for (lp, lr) in samples {
        total += k3_kl(lp, lr)?;
    }
    Ok(total / samples.len() as f64)
}

fn check_distribution(metric: &'static str, p: &[f64]) -> Result<(), EvalError> {
    check_finite(metric, p)?;
    if p.iter().any(|x| *x < 0.0) {
        return Err(EvalError::invalid(metric, "negative probability"));
    }
    let s: f64 = p.iter().sum();
    if (s - 1.0).abs() > 1e-6 {
        return Err(EvalError::invalid(
            metric,
            format!("probabilities sum to {s}, not 1"),
        ));
    }
    Ok(())
}

/// Exact `KL(p‖q) = Σ_v p_v log(p_v/q_v)` of two full distributions (one token position).
/// Infinite when `p` puts mass where `q` has none.
pub fn exact_kl(p: &[f64], q: &[f64]) -> Result<f64, EvalError> {
    check_same_len("exact_kl", p.len(), q.len())?;
    check_distribution("exact_kl", p)?;
    check_distribution("exact_kl", q)?;
    let mut kl = 0.0;
    for (pi, qi) in p.iter().zip(q) {
        if *pi > 0.0 {
            if *qi == 0.0 {
                return Ok(f64::INFINITY);
            }
            kl += pi * (pi / qi).ln();
        }
    }
    Ok(kl.max(0.0))
}

/// Exact per-sequence KL from full per-position distributions: `Σ_t KL(π_t‖π_ref,t)`.
pub fn exact_sequence_kl(policy: &[Vec<f64>], reference: &[Vec<f64>]) -> Result<f64, EvalError> {
    check_same_len("exact_sequence_kl", policy.len(), reference.len())?;
    let mut total = 0.0;
    for (p, q) in policy.iter().zip(reference) {
        total += exact_kl(p, q)?;
    }
    Ok(total)
}

/// How importance weights are normalised before estimating χ².
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightNorm {
    /// `w̃_i = n·w_i / Σ_j w_j`, so that `mean(w̃) = 1` exactly. Biased but consistent, robust to
    /// an unknown normaliser (sequence log-probs under temperature, truncated vocabularies), and
    /// it makes the sample identities `ΔS = Cov(s, w̃)` and the χ² bound hold exactly.
    SelfNormalized,
    /// `w_i = exp(log π(y_i) − log π_ref(y_i))` as given: unbiased for `E_ref[w²]` when the
    /// log-probs are exact, but high-variance and `mean(w)` is not 1.
    Plain,
}

/// Importance weights from log-weights `log w_i = log π(y_i) − log π_ref(y_i)`, computed with
/// the maximum subtracted so that long sequences do not overflow.
pub fn importance_weights(log_w: &[f64], norm: WeightNorm) -> Result<Vec<f64>, EvalError> {
    if log_w.is_empty() {
        return Err(EvalError::invalid("importance_weights", "no samples"));
    }
    check_finite("importance_weights", log_w)?;
    match norm {
        WeightNorm::Plain => Ok(log_w.iter().map(|l| l.exp()).collect()),
        WeightNorm::SelfNormalized => {
            let m = log_w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = log_w.iter().map(|l| (l - m).exp()).collect();
            let z = mean(&e);
            Ok(e.iter().map(|x| x / z).collect())
        }
    }
}

/// `χ²(π‖π_ref) ≈ mean(w²) − 1` from samples of π_ref (see [`WeightNorm`]).
pub fn chi2_from_weights(log_w: &[f64], norm: WeightNorm) -> Result<f64, EvalError> {
    let w = importance_weights(log_w, norm)?;
    Ok(w.iter().map(|x| x * x).sum::<f64>() / w.len() as f64 - 1.0)
}

/// Safety drift from two sets of safety scores: `ΔS = E_π[s] − E_ref[s]` (sample means).
pub fn safety_drift(s_policy: &[f64], s_ref: &[f64]) -> Result<f64, EvalError> {
    if s_policy.is_empty() || s_ref.is_empty() {
        return Err(EvalError::invalid("safety_drift", "empty score list"));
    }
    check_finite("safety_drift", s_policy)?;
    check_finite("safety_drift", s_ref)?;
    Ok(mean(s_policy) - mean(s_ref))
}

/// Population covariance `Cov(a, b) = mean(a·b) − mean(a)·mean(b)` of paired samples (under
/// π_ref when the samples are reference samples): `Cov_ref(s, w)` is the drift.
pub fn covariance(a: &[f64], b: &[f64]) -> Result<f64, EvalError> {
    check_same_len("covariance", a.len(), b.len())?;
    check_finite("covariance", a)?;
    check_finite("covariance", b)?;
    let (ma, mb) = (mean(a), mean(b));
    Ok(a.iter()
        .zip(b)
        .map(|(x, y)| (x - ma) * (y - mb))
        .sum::<f64>()
        / a.len() as f64)
}

/// Population variance.
pub fn variance(a: &[f64]) -> Result<f64, EvalError> {
    covariance(a, a)
}

/// `Cov_ref(success, safety)` over prompts carrying both labels, given as `(success, safety)`
/// pairs: when it is zero, the Gibbs tilt toward success leaves expected safety unchanged.
pub fn cov_success_safety(pairs: &[(f64, f64)]) -> Result<f64, EvalError> {
    let (f, s): (Vec<f64>, Vec<f64>) = pairs.iter().cloned().unzip();
    covariance(&f, &s)
}

/// The bound checks on one drift measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundCheck {
    /// `sqrt(Var_ref(s)·χ²)`.
    pub chi2_bound: f64,
    /// `|ΔS| ≤ chi2_bound` (with 1e-12 slack for rounding).
    pub chi2_holds: bool,
    /// `span(s)·TV`, where `span = max s − min s` (≤ TV for `s ∈ [0, 1]`), if TV is known.
    pub tv_bound: Option<f64>,
    /// `|ΔS| ≤ tv_bound`.
    pub tv_holds: Option<bool>,
    /// `sqrt(KL/2)` (Pinsker), if KL is known.
    pub pinsker_bound: Option<f64>,
    /// `TV ≤ sqrt(KL/2)` when both are known, else `|ΔS| ≤ span·sqrt(KL/2)`.
    pub pinsker_holds: Option<bool>,
}

const SLACK: f64 = 1e-12;

/// Checks the drift bounds given `ΔS`, `Var_ref(s)`, `χ²`, the span of `s`, and optionally TV and KL.
pub fn check_bounds(
    delta_s: f64,
    var_s: f64,
    chi2: f64,
    span: f64,
    tv: Option<f64>,
    kl: Option<f64>,
) -> BoundCheck {
    let chi2_bound = (var_s.max(0.0) * chi2.max(0.0)).sqrt();
    let tv_bound = tv.map(|t| span * t);
    let pinsker_bound = kl.map(|k| (k.max(0.0) / 2.0).sqrt());
    let pinsker_holds = match (tv, pinsker_bound) {
        (Some(t), Some(p)) => Some(t <= p + SLACK),
        (None, Some(p)) => Some(delta_s.abs() <= span * p + SLACK),
        _ => None,
    };
    BoundCheck {
        chi2_bound,
        chi2_holds: delta_s.abs() <= chi2_bound + SLACK,
        tv_bound,
        tv_holds: tv_bound.map(|b| delta_s.abs() <= b + SLACK),
        pinsker_bound,
        pinsker_holds,
    }
}

/// Drift estimated from reference samples and their importance weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftEstimate {
    /// Number of samples.
    pub n: usize,
    /// `ΔS = mean(w·s) − mean(s)`.
    pub delta_s: f64,
    /// `Cov(s, w)` (equals `delta_s` for self-normalised weights).
    pub cov_sw: f64,
    /// `Var(s)` under the reference samples.
    pub var_s: f64,
    /// `χ² = mean(w²) − 1`.
    pub chi2: f64,
    /// TV of the reweighted empirical distribution from the uniform one: `mean(|w − 1|)/2`.
    pub tv: f64,
    /// KL of the reweighted empirical distribution from the uniform one: `mean(w·log w)`.
    pub kl: f64,
    /// The bound checks.
    pub bounds: BoundCheck,
}

/// Estimates drift and its bounds from `n` samples `y_i ~ π_ref` with safety scores `s_i` and
/// log-weights `log π(y_i) − log π_ref(y_i)`.
///
/// With [`WeightNorm::SelfNormalized`] the estimates are the exact quantities of the reweighted
/// empirical distribution, so `ΔS = Cov(s, w)` and every bound holds exactly on the sample;
/// with [`WeightNorm::Plain`] they are unbiased but noisy and the bounds may fail by chance.
pub fn importance_drift(
    s_ref: &[f64],
    log_w: &[f64],
    norm: WeightNorm,
) -> Result<DriftEstimate, EvalError> {
    check_same_len("importance_drift", s_ref.len(), log_w.len())?;
    check_finite("importance_drift", s_ref)?;
    let w = importance_weights(log_w, norm)?;
    let n = w.len() as f64;
    let ws: f64 = w.iter().zip(s_ref).map(|(a, b)| a * b).sum::<f64>() / n;
    let delta_s = ws - mean(s_ref);
    let cov_sw = covariance(s_ref, &w)?;
    let var_s = variance(s_ref)?;
    let chi2 = w.iter().map(|x| x * x).sum::<f64>() / n - 1.0;
    let tv = w.iter().map(|x| (x - 1.0).abs()).sum::<f64>() / (2.0 * n);
    let kl = w
        .iter()
        .map(|x| if *x > 0.0 { x * x.ln() } else { 0.0 })
        .sum::<f64>()
        / n;
    let span = s_ref.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
        - s_ref.iter().cloned().fold(f64::INFINITY, f64::min);
    let bounds = check_bounds(delta_s, var_s, chi2, span, Some(tv), Some(kl));
    Ok(DriftEstimate {
        n: w.len(),
        delta_s,
        cov_sw,
        var_s,
        chi2,
        tv,
        kl,
        bounds,
    })
}

/// The Gibbs tilt of a discrete reference distribution and its exact drift quantities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExactDrift {
    /// `π*(y) = π_ref(y)·exp(f(y)/β)/Z`.
    pub pi_star: Vec<f64>,
    /// `w(y) = π*(y)/π_ref(y) = exp(f(y)/β)/Z` (defined on the support of π_ref).
    pub w: Vec<f64>,
    /// `E_π*[s] − E_ref[s]`.
    pub delta_s: f64,
    /// `Cov_ref(s, w)`.
    pub cov_sw: f64,
    /// `Var_ref(s)`.
    pub var_s: f64,
    /// `χ²(π*‖π_ref) = E_ref[w²] − 1`.
    pub chi2: f64,
    /// `TV(π*, π_ref) = ½ Σ |π* − π_ref|`.
    pub tv: f64,
    /// `KL(π*‖π_ref) = E_π*[log w]`.
    pub kl: f64,
    /// `E_π*[f] − E_ref[f]`: the capability gain bought by the tilt.
    pub delta_f: f64,
    /// The bound checks.
    pub bounds: BoundCheck,
}

/// Computes the KL-regularised optimum `π* ∝ π_ref·exp(f/β)` of `E[f] − β·KL(π‖π_ref)` on a
/// finite space and its exact drift quantities.
pub fn gibbs_tilt(
    pi_ref: &[f64],
    f: &[f64],
    s: &[f64],
    beta: f64,
) -> Result<ExactDrift, EvalError> {
    check_same_len("gibbs_tilt", pi_ref.len(), f.len())?;
    check_same_len("gibbs_tilt", pi_ref.len(), s.len())?;
    check_distribution("gibbs_tilt", pi_ref)?;
    check_finite("gibbs_tilt", f)?;
    check_finite("gibbs_tilt", s)?;
    if !(beta.is_finite() && beta > 0.0) {
        return Err(EvalError::invalid(
            "gibbs_tilt",
            format!("beta must be finite and > 0, got {beta}"),
        ));
    }
    // Normalise π_ref exactly and subtract max f/β on the support for stability.
    let total: f64 = pi_ref.iter().sum();
    let p: Vec<f64> = pi_ref.iter().map(|x| x / total).collect();
    let m = p
        .iter()
        .zip(f)
        .filter(|(pi, _)| **pi > 0.0)
        .map(|(_, fi)| fi / beta)
        .fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = f.iter().map(|fi| (fi / beta - m).exp()).collect();
    let z: f64 = p.iter().zip(&e).map(|(pi, ei)| pi * ei).sum();
    let w: Vec<f64> = e.iter().map(|ei| ei / z).collect();
    let pi_star: Vec<f64> = p.iter().zip(&w).map(|(pi, wi)| pi * wi).collect();
    let e_ref = |g: &dyn Fn(usize) -> f64| (0..p.len()).map(|i| p[i] * g(i)).sum::<f64>();
    let s_ref = e_ref(&|i| s[i]);
    let s_star: f64 = pi_star.iter().zip(s).map(|(a, b)| a * b).sum();
    let delta_s = s_star - s_ref;
    let w_ref = e_ref(&|i| w[i]);
    let cov_sw = e_ref(&|i| (s[i] - s_ref) * (w[i] - w_ref));
    let var_s = e_ref(&|i| (s[i] - s_ref).powi(2));
    let chi2 = e_ref(&|i| (w[i] - 1.0).powi(2));
    let tv = 0.5
        * pi_star
            .iter()
            .zip(&p)
            .map(|(a, b)| (a - b).abs())
            .sum::<f64>();
    let kl = pi_star
        .iter()
        .zip(&w)
        .map(|(ps, wi)| if *ps > 0.0 { ps * wi.ln() } else { 0.0 })
        .sum::<f64>()
        .max(0.0);
    let f_star: f64 = pi_star.iter().zip(f).map(|(a, b)| a * b).sum();
    let delta_f = f_star - e_ref(&|i| f[i]);
    let support: Vec<f64> = p
        .iter()
        .zip(s)
        .filter(|(pi, _)| **pi > 0.0)
        .map(|(_, si)| *si)
        .collect();
    let span = support.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
        - support.iter().cloned().fold(f64::INFINITY, f64::min);
    let bounds = check_bounds(delta_s, var_s, chi2, span, Some(tv), Some(kl));
    Ok(ExactDrift {
        pi_star,
        w,
        delta_s,
        cov_sw,
        var_s,
        chi2,
        tv,
        kl,
        delta_f,
        bounds,
    })
}

/// `χ²(π‖π_ref)` estimated from samples of π, with the diagnostics that say how far to trust it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chi2Estimate {
    /// Number of samples `y_i ~ π`.
    pub n: usize,
    /// The raw estimate `mean_i w_i − 1`, `w_i = π(y_i)/π_ref(y_i)`: unbiased for
    /// `E_π[w] − 1 = χ²`, but heavy-tailed (a few samples with large `w` carry it).
    pub estimate: f64,
    /// Kish's effective sample size of the averaged weights, `(Σ w_i)² / Σ w_i²`, in `[1, n]`:
    /// `n` when every `w_i` is equal, near 1 when one sample dominates the mean.
    pub ess: f64,
    /// The KL-implied floor `e^KL − 1` (Jensen: `KL ≤ log(1 + χ²)`), from the KL estimate given.
    pub kl_floor: f64,
    /// `max(estimate, kl_floor)`: the value the χ² bound uses, never below what KL implies.
    pub value: f64,
    /// Whether the raw estimate is at least the floor (within rounding). `false` means the
    /// samples missed the region where `w` is large (too few of them, see `ess`) and `value` is
    /// the floor, a lower bound on χ², rather than an estimate of it.
    pub reliable: bool,
}

/// Estimates `χ²(π‖π_ref) = E_π[w] − 1` from samples `y_i ~ π` given their log-weights
/// `log w_i = log π(y_i) − log π_ref(y_i)`, and checks it against the floor `e^kl − 1` implied by
/// an estimate `kl` of `KL(π‖π_ref)` (see [`Chi2Estimate`]).
///
/// Why from π's samples: the usual `mean(w²) − 1` over samples of π_ref sees `w < 1` on most of
/// them (π_ref rarely produces what π favours) and underestimates χ², often below 0; averaging `w`
/// over π's own samples puts the samples where `w` is large. Sums are taken in log space, so
/// sequence log-ratios of hundreds of nats neither overflow nor lose the small weights; a χ²
/// beyond `f64::MAX` saturates there (the bound is then vacuous). Errors on empty or non-finite
/// input and on a negative or non-finite `kl`.
pub fn chi2_from_policy_samples(log_w: &[f64], kl: f64) -> Result<Chi2Estimate, EvalError> {
    if log_w.is_empty() {
        return Err(EvalError::invalid("chi2_from_policy_samples", "no samples"));
    }
    check_finite("chi2_from_policy_samples", log_w)?;
    if !(kl.is_finite() && kl >= 0.0) {
        return Err(EvalError::invalid(
            "chi2_from_policy_samples",
            format!("the KL estimate must be finite and >= 0, got {kl}"),
        ));
    }
    let n = log_w.len();
    // Weights scaled by e^-max, each in (0, 1]: neither the sums nor their squares overflow.
    let max = log_w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (s1, s2) = log_w.iter().fold((0.0, 0.0), |(a, b), l| {
        let e = (l - max).exp();
        (a + e, b + e * e)
    });
    let estimate = (max + (s1 / n as f64).ln()).exp_m1().min(f64::MAX);
    let ess = (s1 * s1 / s2).clamp(1.0, n as f64);
    let kl_floor = kl.exp_m1().min(f64::MAX);
    let reliable = estimate >= kl_floor - 1e-9 * (1.0 + kl_floor);
    Ok(Chi2Estimate {
        n,
        estimate,
        ess,
        kl_floor,
        value: estimate.max(kl_floor),
        reliable,
    })
}

/// The sampled inputs of one drift measurement: completions of the same prompts drawn from π and
/// from π_ref, each scored for safety.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DriftSamples {
    /// Safety score `s ∈ [0, 1]` of each sample of π.
    pub s_policy: Vec<f64>,
    /// `log π(y) − log π_ref(y)` of each sample `y` of π (whole-sequence log-probs).
    pub log_w_policy: Vec<f64>,
    /// A per-sample estimate of `KL(π‖π_ref)` for each sample of π (Keel's evaluation uses the
    /// exact next-token KL summed along the sample); their mean is the reported KL.
    pub kl_policy: Vec<f64>,
    /// Safety score `s ∈ [0, 1]` of each sample of π_ref.
    pub s_ref: Vec<f64>,
}

/// One drift measurement: KL, ΔS, Var_ref(s), χ² and both bound checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftMeasurement {
    /// Samples of π.
    pub n_policy: usize,
    /// Samples of π_ref.
    pub n_ref: usize,
    /// `KL(π‖π_ref)`: the mean of [`DriftSamples::kl_policy`].
    pub kl: f64,
    /// The plain sampled log-ratio `mean(log w)` over samples of π (k1; noisy, may be negative).
    pub kl_k1: f64,
    /// `mean(s)` over samples of π.
    pub safety_policy: f64,
    /// `mean(s)` over samples of π_ref.
    pub safety_ref: f64,
    /// `Var_ref(s)` (population variance over samples of π_ref).
    pub var_ref_s: f64,
    /// `ΔS = mean(s_π) − mean(s_ref)` ([`safety_drift`]).
    pub delta_s: f64,
    /// χ² from samples of π with its floor and diagnostics.
    pub chi2: Chi2Estimate,
    /// `sqrt(KL/2)` (Pinsker; `s ∈ [0, 1]`).
    pub bound_kl: f64,
    /// `|ΔS| ≤ sqrt(KL/2)` (1e-12 slack).
    pub bound_kl_holds: bool,
    /// `sqrt(Var_ref(s) · χ²)` with χ² = [`Chi2Estimate::value`] (Cauchy–Schwarz).
    pub bound_chi2: f64,
    /// `|ΔS| ≤ sqrt(Var_ref(s) · χ²)` (1e-12 slack).
    pub bound_chi2_holds: bool,
}

impl DriftMeasurement {
    /// Both bounds hold.
    pub fn bounds_hold(&self) -> bool {
        self.bound_kl_holds && self.bound_chi2_holds
    }
}

fn check_unit_scores(metric: &'static str, s: &[f64]) -> Result<(), EvalError> {
    check_finite(metric, s)?;
    match s.iter().position(|x| !(0.0..=1.0).contains(x)) {
        Some(i) => Err(EvalError::invalid(
            metric,
            format!("safety score {} at index {i} is outside [0, 1] (Pinsker's bound needs s in [0, 1])", s[i]),
        )),
        None => Ok(()),
    }
}

/// Measures safety drift and both of its bounds from samples of π and of π_ref: the one
/// definition that `evaluate` stages run. `ΔS` from [`safety_drift`], `Var_ref(s)` from
/// [`variance`], χ² from [`chi2_from_policy_samples`] against the floor `e^KL − 1`, and the
/// bounds from [`check_bounds`] with span 1 (scores in `[0, 1]`, checked).
pub fn measure_drift(samples: &DriftSamples) -> Result<DriftMeasurement, EvalError> {
    let m = "measure_drift";
    check_same_len(m, samples.s_policy.len(), samples.log_w_policy.len())?;
    check_same_len(m, samples.s_policy.len(), samples.kl_policy.len())?;
    check_unit_scores(m, &samples.s_policy)?;
    check_unit_scores(m, &samples.s_ref)?;
    check_finite(m, &samples.kl_policy)?;
    if let Some(i) = samples.kl_policy.iter().position(|k| *k < 0.0) {
        return Err(EvalError::invalid(m, format!("negative KL estimate {} at index {i}", samples.kl_policy[i])));
    }
    let kl = mean(&samples.kl_policy);
    let chi2 = chi2_from_policy_samples(&samples.log_w_policy, kl)?;
    let delta_s = safety_drift(&samples.s_policy, &samples.s_ref)?;
    let var_ref_s = variance(&samples.s_ref)?;
    let b = check_bounds(delta_s, var_ref_s, chi2.value, 1.0, None, Some(kl));
    Ok(DriftMeasurement {
        n_policy: samples.s_policy.len(),
        n_ref: samples.s_ref.len(),
        kl,
        kl_k1: mean(&samples.log_w_policy),
        safety_policy: mean(&samples.s_policy),
        safety_ref: mean(&samples.s_ref),
        var_ref_s,
        delta_s,
        chi2,
        bound_kl: b.pinsker_bound.unwrap_or(f64::NAN),
        bound_kl_holds: b.pinsker_holds.unwrap_or(false),
        bound_chi2: b.chi2_bound,
        bound_chi2_holds: b.chi2_holds,
    })
}
