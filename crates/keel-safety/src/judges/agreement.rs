//! Agreement between two judges' binary calls: Cohen's κ.

use serde::{Deserialize, Serialize};

/// How far two judges agree on the same responses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Responses both judges parsed (the ones compared).
    pub n: usize,
    /// Observed agreement `p_o`: the fraction of those on which the two calls are equal.
    pub observed: f64,
    /// Cohen's κ = `(p_o − p_e) / (1 − p_e)`, with `p_e` the agreement expected by chance from
    /// each judge's own rate of flagging. `None` when undefined: no pairs, or `p_e = 1` (both
    /// judges gave one and the same answer to everything, so chance explains all agreement).
    pub kappa: Option<f64>,
}

/// Cohen's κ between two binary raters over the same items (`a[i]` and `b[i]` judge item `i`);
/// `None` in `kappa` when it is undefined (see [`Agreement::kappa`]).
///
/// ```
/// use keel_safety::judges::cohen_kappa;
/// // Both say yes on 2, no on 1, and disagree on 1: p_o = 3/4, p_e = 3/4·2/4 + 1/4·2/4 = 1/2.
/// let a = cohen_kappa(&[true, true, false, true], &[true, true, false, false]);
/// assert_eq!((a.n, a.observed, a.kappa), (4, 0.75, Some(0.5)));
/// ```
pub fn cohen_kappa(a: &[bool], b: &[bool]) -> Agreement {
    let n = a.len().min(b.len());
    if n == 0 {
        return Agreement { n, observed: f64::NAN, kappa: None };
    }
    let nf = n as f64;
    let agree = a.iter().zip(b).filter(|(x, y)| x == y).count() as f64;
    let pa = a[..n].iter().filter(|x| **x).count() as f64 / nf;
    let pb = b[..n].iter().filter(|x| **x).count() as f64 / nf;
    let po = agree / nf;
    let pe = pa * pb + (1.0 - pa) * (1.0 - pb);
    let kappa = (pe < 1.0).then(|| (po - pe) / (1.0 - pe));
    Agreement { n, observed: po, kappa }
}

#[cfg(test)]
mod tests {
    use super::cohen_kappa;

    #[test]
    fn kappa_worked_values() {
        // Perfect agreement with variation: κ = 1; perfect disagreement on a balanced set: κ = −1.
        assert_eq!(cohen_kappa(&[true, false], &[true, false]).kappa, Some(1.0));
        assert_eq!(cohen_kappa(&[true, false], &[false, true]).kappa, Some(-1.0));
        // A textbook 2x2 table: yes/yes 20, yes/no 5, no/yes 10, no/no 15 (n = 50).
        // p_o = 35/50 = 0.7; p_a = 25/50, p_b = 30/50; p_e = 0.5·0.6 + 0.5·0.4 = 0.5; κ = 0.4.
        let mut a = Vec::new();
        let mut b = Vec::new();
        for (x, y, k) in [(true, true, 20), (true, false, 5), (false, true, 10), (false, false, 15)] {
            for _ in 0..k {
                a.push(x);
                b.push(y);
            }
        }
        let g = cohen_kappa(&a, &b);
        assert_eq!(g.n, 50);
        assert!((g.observed - 0.7).abs() < 1e-12 && (g.kappa.unwrap() - 0.4).abs() < 1e-12, "{g:?}");
        // Both constant and equal: chance explains everything, κ undefined.
        assert_eq!(cohen_kappa(&[true, true], &[true, true]).kappa, None);
        assert_eq!(cohen_kappa(&[], &[]).kappa, None);
        // One constant, the other not: p_e < 1 and κ = 0 when p_o = p_e.
        assert_eq!(cohen_kappa(&[true, true], &[true, false]).kappa, Some(0.0));
    }
}
