//! Token log-probabilities (log-softmax + gather) and predictive entropy, fused with their
//! backward passes.
//!
//! The composed version materialises a `[B, T, V]` log-softmax tensor (plus its gradient) only to
//! read one entry per row; for small models the vocabulary dominates, so this is the largest
//! avoidable allocation of a training step. The fused kernels compute each row's log-sum-exp on
//! the fly and, in backward, write the `[B, T, V]` logits gradient once.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::{bad_dtype, cslice, rows_per_task, use_fused, Fl};

fn out_len(t: usize, shift: bool) -> usize {
    if shift {
        t.saturating_sub(1)
    } else {
        t
    }
}

/// Log-probabilities of the given token ids under `logits`.
///
/// * `logits`: `[B, T, V]`; `ids`: `[B, T]` (u32).
/// * `shift == true`: next-token log-probs, `out[b, t] = log p(ids[b, t+1] | logits[b, t])`,
///   shape `[B, T-1]` (the training / scoring case).
/// * `shift == false`: `out[b, t] = log softmax(logits[b, t])[ids[b, t]]`, shape `[B, T]` (scoring
///   sampled tokens against the logits that produced them).
///
/// Differentiable in `logits`. Ids out of range are an error, never a panic.
pub fn token_logprobs(logits: &Tensor, ids: &Tensor, shift: bool) -> Result<Tensor> {
    if use_fused(logits) && logits.rank() == 3 {
        let ids = ids.to_dtype(DType::U32)?.contiguous()?;
        logits.contiguous()?.apply_op2(&ids, TokenLogprobs { shift })
    } else {
        token_logprobs_slow(logits, ids, shift)
    }
}

/// [`token_logprobs`] composed from differentiable candle primitives (reference and fallback).
pub fn token_logprobs_slow(logits: &Tensor, ids: &Tensor, shift: bool) -> Result<Tensor> {
    let (_b, t, _v) = logits.dims3()?;
    let n = out_len(t, shift);
    let lg = logits.narrow(1, 0, n)?;
    let tg = if shift { ids.narrow(1, 1, n)? } else { ids.clone() };
    let lsm = candle_nn::ops::log_softmax(&lg, D::Minus1)?;
    lsm.gather(&tg.to_dtype(DType::U32)?.contiguous()?.unsqueeze(2)?, 2)?.squeeze(2)
}

/// Entropy `H = −Σ_v p_v log p_v` of each row of `logits` (`[B, T, V]`), in nats.
///
/// `shift == true` returns `[B, T-1]` (the positions that predict a next token, aligned with
/// [`token_logprobs`]); `false` returns `[B, T]`. Differentiable in `logits`.
pub fn entropy(logits: &Tensor, shift: bool) -> Result<Tensor> {
    if use_fused(logits) && logits.rank() == 3 {
        logits.contiguous()?.apply_op1(Entropy { shift })
    } else {
        entropy_slow(logits, shift)
    }
}

/// [`entropy`] composed from differentiable candle primitives (reference and fallback).
pub fn entropy_slow(logits: &Tensor, shift: bool) -> Result<Tensor> {
    let (_b, t, _v) = logits.dims3()?;
    let lg = logits.narrow(1, 0, out_len(t, shift))?;
    let lsm = candle_nn::ops::log_softmax(&lg, D::Minus1)?;
    (lsm.exp()? * &lsm)?.sum(D::Minus1)?.neg()
}

/// Independent accumulators per row reduction: floating-point sums are not reassociated by the
/// compiler, so a single running sum serialises the loop; `LANES` partial sums let it use SIMD.
const LANES: usize = 8;

/// Row log-sum-exp (max-shifted), with [`LANES`]-way partial max and sum.
#[inline]
fn lse<T: Fl>(row: &[T]) -> T {
    let chunks = row.chunks_exact(LANES);
    let rem = chunks.remainder();
    let mut mx = [T::neg_infinity(); LANES];
    for c in chunks {
        for (a, &b) in mx.iter_mut().zip(c) {
            *a = if b > *a { b } else { *a };
        }
    }
    let m = mx.iter().chain(rem).fold(T::neg_infinity(), |a, &b| if b > a { b } else { a });
    let mut acc = [T::zero(); LANES];
    for c in row.chunks_exact(LANES) {
        for (a, &b) in acc.iter_mut().zip(c) {
            *a = *a + (b - m).fast_exp();
        }
    }
    let s = rem.iter().fold(acc.iter().fold(T::zero(), |a, &b| a + b), |a, &b| a + (b - m).fast_exp());
    m + s.ln()
}

struct TokenLogprobs {
    shift: bool,
}

fn check_ids(ids: &[u32], v: usize) -> Result<()> {
    match ids.iter().find(|&&i| i as usize >= v) {
        Some(bad) => Err(candle_core::Error::Msg(format!("token id {bad} out of range for vocabulary {v}"))),
        None => Ok(()),
    }
}

fn lp_fwd<T: Fl>(x: &[T], ids: &[u32], b: usize, t: usize, v: usize, shift: bool) -> Vec<T> {
    let n = out_len(t, shift);
    let sh = usize::from(shift);
    let mut out = vec![T::zero(); b * n];
    out.par_iter_mut().enumerate().for_each(|(r, o)| {
        let (bi, ti) = (r / n, r % n);
        let row = &x[(bi * t + ti) * v..(bi * t + ti + 1) * v];
        let tgt = ids[bi * t + ti + sh] as usize;
        *o = row[tgt] - lse(row);
    });
    out
}

impl CustomOp2 for TokenLogprobs {
    fn name(&self) -> &'static str {
        "keel-token-logprobs"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, t, v) = l1.shape().dims3()?;
        if l2.shape().dims2()? != (b, t) {
            return Err(candle_core::Error::Msg(format!(
                "{}: logits {:?} vs ids {:?}",
                self.name(),
                l1.shape(),
                l2.shape()
            )));
        }
        let n = self.name();
        let ids = cslice::<u32>(s2, l2, n)?;
        check_ids(ids, v)?;
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(lp_fwd::<f32>(cslice(s1, l1, n)?, ids, b, t, v, self.shift)),
            CpuStorage::F64(_) => CpuStorage::F64(lp_fwd::<f64>(cslice(s1, l1, n)?, ids, b, t, v, self.shift)),
            _ => return Err(bad_dtype(n, s1)),
        };
        Ok((out, Shape::from((b, out_len(t, self.shift)))))
    }

    fn bwd(&self, x: &Tensor, ids: &Tensor, res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The forward output carries each row's log-sum-exp (`lse = x[target] − logprob`), so the
        // backward pass gets it from `[g, logprob]` pairs instead of recomputing a max and 4096
        // exponentials per row.
        let g_lp = Tensor::stack(&[&g.contiguous()?, &res.contiguous()?], D::Minus1)?;
        let dx = x.apply_op3_no_bwd(ids, &g_lp, &TokenLogprobsBwd { shift: self.shift })?;
        Ok((Some(dx), None))
    }
}

/// `dlogits[b, t] = g[b, t] · (onehot(target) − softmax(logits[b, t]))`, zero for unused rows.
/// Third input: `[B, T', 2]` pairs `(g, logprob)` (see [`TokenLogprobs`]'s `bwd`).
struct TokenLogprobsBwd {
    shift: bool,
}

fn lp_bwd<T: Fl>(x: &[T], ids: &[u32], g_lp: &[T], t: usize, v: usize, shift: bool) -> Vec<T> {
    let n = out_len(t, shift);
    let sh = usize::from(shift);
    let mut dx = vec![T::zero(); x.len()];
    let rows = rows_per_task(v);
    dx.par_chunks_mut(v * rows).enumerate().for_each(|(ci, dc)| {
        for (ri, dr) in dc.chunks_mut(v).enumerate() {
            let r = ci * rows + ri;
            let (bi, ti) = (r / t, r % t);
            if ti >= n {
                continue;
            }
            let (gv, lp) = (g_lp[2 * (bi * n + ti)], g_lp[2 * (bi * n + ti) + 1]);
            let row = &x[r * v..(r + 1) * v];
            let tgt = ids[bi * t + ti + sh] as usize;
            let l = row[tgt] - lp;
            for (d, &xv) in dr.iter_mut().zip(row) {
                *d = -gv * (xv - l).fast_exp();
            }
            dr[tgt] += gv;
        }
    });
    dx
}

impl CustomOp3 for TokenLogprobsBwd {
    fn name(&self) -> &'static str {
        "keel-token-logprobs-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_b, t, v) = l1.shape().dims3()?;
        let n = self.name();
        let ids = cslice::<u32>(s2, l2, n)?;
        let out = match s1 {
            CpuStorage::F32(_) => {
                CpuStorage::F32(lp_bwd::<f32>(cslice(s1, l1, n)?, ids, cslice(s3, l3, n)?, t, v, self.shift))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(lp_bwd::<f64>(cslice(s1, l1, n)?, ids, cslice(s3, l3, n)?, t, v, self.shift))
            }
            _ => return Err(bad_dtype(n, s1)),
        };
        Ok((out, l1.shape().clone()))
    }
}

struct Entropy {
    shift: bool,
}

fn ent_fwd<T: Fl>(x: &[T], b: usize, t: usize, v: usize, shift: bool) -> Vec<T> {
    let n = out_len(t, shift);
    let mut out = vec![T::zero(); b * n];
    out.par_iter_mut().enumerate().for_each(|(r, o)| {
        let (bi, ti) = (r / n, r % n);
        let row = &x[(bi * t + ti) * v..(bi * t + ti + 1) * v];
        let l = lse(row);
        // H = lse − Σ p x
        let px = row.iter().fold(T::zero(), |a, &xv| a + (xv - l).fast_exp() * xv);
        *o = l - px;
    });
    out
}

impl CustomOp1 for Entropy {
    fn name(&self) -> &'static str {
        "keel-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, t, v) = l.shape().dims3()?;
        let n = self.name();
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(ent_fwd::<f32>(cslice(s, l, n)?, b, t, v, self.shift)),
            CpuStorage::F64(_) => CpuStorage::F64(ent_fwd::<f64>(cslice(s, l, n)?, b, t, v, self.shift)),
            _ => return Err(bad_dtype(n, s)),
        };
        Ok((out, Shape::from((b, out_len(t, self.shift)))))
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let dx = x.apply_op3_no_bwd(res, &g.contiguous()?, &EntropyBwd { shift: self.shift })?;
        Ok(Some(dx))
    }
}

/// `dlogits_j = −g · p_j · (log p_j + H)`.
struct EntropyBwd {
    shift: bool,
}

fn ent_bwd<T: Fl>(x: &[T], h: &[T], g: &[T], t: usize, v: usize, shift: bool) -> Vec<T> {
    let n = out_len(t, shift);
    let mut dx = vec![T::zero(); x.len()];
    let rows = rows_per_task(v);
    dx.par_chunks_mut(v * rows).enumerate().for_each(|(ci, dc)| {
        for (ri, dr) in dc.chunks_mut(v).enumerate() {
            let r = ci * rows + ri;
            let (bi, ti) = (r / t, r % t);
            if ti >= n {
                continue;
            }
            let (gv, hv) = (g[bi * n + ti], h[bi * n + ti]);
            let row = &x[r * v..(r + 1) * v];
            let l = lse(row);
            for (d, &xv) in dr.iter_mut().zip(row) {
                let lp = xv - l;
                *d = -gv * lp.fast_exp() * (lp + hv);
            }
        }
    });
    dx
}

impl CustomOp3 for EntropyBwd {
    fn name(&self) -> &'static str {
        "keel-entropy-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_b, t, v) = l1.shape().dims3()?;
        let n = self.name();
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(ent_bwd::<f32>(
                cslice(s1, l1, n)?,
                cslice(s2, l2, n)?,
                cslice(s3, l3, n)?,
                t,
                v,
                self.shift,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(ent_bwd::<f64>(
                cslice(s1, l1, n)?,
                cslice(s2, l2, n)?,
                cslice(s3, l3, n)?,
                t,
                v,
                self.shift,
            )),
            _ => return Err(bad_dtype(n, s1)),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{fd_check, rand_f64, rel_err};
    use candle_core::{Device, Var};

    fn ids() -> Tensor {
        Tensor::new(&[[1u32, 4, 0, 6], [3, 3, 5, 2]], &Device::Cpu).unwrap()
    }

    #[test]
    fn fused_matches_slow_values_and_grads() {
        for dtype in [DType::F32, DType::F64] {
            for shift in [true, false] {
                let x = Var::from_tensor(&rand_f64(&[2, 4, 7], 21, 3.0).to_dtype(dtype).unwrap()).unwrap();
                let n = if shift { 3 } else { 4 };
                let r = rand_f64(&[2, n], 22, 1.0).to_dtype(dtype).unwrap();
                let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                let lf = token_logprobs(&x, &ids(), shift).unwrap();
                let ls = token_logprobs_slow(&x, &ids(), shift).unwrap();
                assert_eq!(lf.dims(), &[2, n]);
                assert!(rel_err(&lf, &ls) < tol);
                let ef = entropy(&x, shift).unwrap();
                let es = entropy_slow(&x, shift).unwrap();
                assert!(rel_err(&ef, &es) < tol);
                let lossf = ((lf * &r).unwrap() + (ef * &r).unwrap()).unwrap().sum_all().unwrap();
                let losss = ((ls * &r).unwrap() + (es * &r).unwrap()).unwrap().sum_all().unwrap();
                let (gf, gs) = (lossf.backward().unwrap(), losss.backward().unwrap());
                let e = rel_err(gf.get(&x).unwrap(), gs.get(&x).unwrap());
                assert!(e < tol * 10.0, "{dtype:?} shift {shift}: grad rel err {e}");
            }
        }
    }

    #[test]
    fn finite_differences_f64() {
        let x0 = rand_f64(&[2, 4, 7], 23, 3.0);
        let r = rand_f64(&[2, 3], 24, 1.0);
        let e1 = fd_check(&x0, &|x| token_logprobs(x, &ids(), true).unwrap().mul(&r).unwrap().sum_all().unwrap());
        let e2 = fd_check(&x0, &|x| entropy(x, true).unwrap().mul(&r).unwrap().sum_all().unwrap());
        assert!(e1 < 1e-5 && e2 < 1e-5, "fd rel err logprobs {e1} entropy {e2}");
    }

    #[test]
    fn out_of_range_id_is_an_error() {
        let x = rand_f64(&[1, 2, 3], 25, 1.0);
        let bad = Tensor::new(&[[0u32, 9]], &Device::Cpu).unwrap();
        assert!(token_logprobs(&x, &bad, true).is_err());
    }
}
