//! RMSNorm `y = x / sqrt(mean(x²) + eps) * w` over the last dimension, fused with its backward.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::{bad_dtype, cslice, for_chunks, rows_per_task, use_fused, Fl};

/// Differentiable RMSNorm over the last dimension of `x` with per-feature weight `w`.
///
/// Uses the fused CPU kernel (one pass forward, one pass backward, no intermediates) when
/// possible, otherwise [`rms_norm_slow`]. Gradients flow to both `x` and `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if use_fused(x) && x.dtype() == w.dtype() && w.rank() == 1 && x.dim(D::Minus1)? == w.dim(0)? {
        x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
    } else {
        rms_norm_slow(x, w, eps)
    }
}

/// RMSNorm composed from differentiable candle primitives (reference and fallback).
/// Computes in the input dtype, like the Hugging Face modules do for f32/f64.
pub fn rms_norm_slow(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let in_dtype = x.dtype();
    let xf = if matches!(in_dtype, candle_core::DType::F16 | candle_core::DType::BF16) {
        x.to_dtype(candle_core::DType::F32)?
    } else {
        x.clone()
    };
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_div(&(ms + eps)?.sqrt()?)?.to_dtype(in_dtype)?;
    normed.broadcast_mul(w)
}

struct RmsNorm {
    eps: f64,
}

fn fwd_kernel<T: Fl>(x: &[T], w: &[T], h: usize, eps: f64) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    let rows = rows_per_task(h);
    let eps = T::from(eps).unwrap_or_else(T::zero);
    let hf = T::from(h).unwrap_or_else(T::one);
    for_chunks(&mut y, x, h * rows, |_, yc, xc| {
        for (yr, xr) in yc.chunks_mut(h).zip(xc.chunks(h)) {
            let ss = xr.iter().fold(T::zero(), |a, &v| a + v * v);
            let r = T::one() / (ss / hf + eps).sqrt();
            for ((yv, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
                *yv = xv * r * wv;
            }
        }
    });
    y
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "keel-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = l1.shape().dims().last().copied().unwrap_or(1);
        let out = match s1 {
            CpuStorage::F32(_) => {
                let y = fwd_kernel::<f32>(cslice(s1, l1, self.name())?, cslice(s2, l2, self.name())?, h, self.eps);
                CpuStorage::F32(y)
            }
            CpuStorage::F64(_) => {
                let y = fwd_kernel::<f64>(cslice(s1, l1, self.name())?, cslice(s2, l2, self.name())?, h, self.eps);
                CpuStorage::F64(y)
            }
            _ => return Err(bad_dtype(self.name(), s1)),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &g, &RmsNormBwd { eps: self.eps, want_w: false })?;
        let dw = x.apply_op3_no_bwd(w, &g, &RmsNormBwd { eps: self.eps, want_w: true })?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Backward kernel: `want_w == false` gives dx, `true` gives dw.
struct RmsNormBwd {
    eps: f64,
    want_w: bool,
}

fn bwd_dx<T: Fl>(x: &[T], w: &[T], g: &[T], h: usize, eps: f64) -> Vec<T> {
    let mut dx = vec![T::zero(); x.len()];
    let rows = rows_per_task(h);
    let eps = T::from(eps).unwrap_or_else(T::zero);
    let hf = T::from(h).unwrap_or_else(T::one);
    dx.par_chunks_mut(h * rows).zip(x.par_chunks(h * rows)).zip(g.par_chunks(h * rows)).for_each(
        |((dc, xc), gc)| {
            for ((dr, xr), gr) in dc.chunks_mut(h).zip(xc.chunks(h)).zip(gc.chunks(h)) {
                let mut ss = T::zero();
                let mut gwx = T::zero();
                for j in 0..h {
                    ss += xr[j] * xr[j];
                    gwx += gr[j] * w[j] * xr[j];
                }
                let r = T::one() / (ss / hf + eps).sqrt();
                let c = r * r * r * gwx / hf;
                for j in 0..h {
                    dr[j] = r * gr[j] * w[j] - xr[j] * c;
                }
            }
        },
    );
    dx
}

fn bwd_dw<T: Fl>(x: &[T], g: &[T], h: usize, eps: f64) -> Vec<T> {
    let eps = T::from(eps).unwrap_or_else(T::zero);
    let hf = T::from(h).unwrap_or_else(T::one);
    let rows = rows_per_task(h);
    let partial = |xc: &[T], gc: &[T]| {
        let mut acc = vec![T::zero(); h];
        for (xr, gr) in xc.chunks(h).zip(gc.chunks(h)) {
            let ss = xr.iter().fold(T::zero(), |a, &v| a + v * v);
            let r = T::one() / (ss / hf + eps).sqrt();
            for j in 0..h {
                acc[j] += gr[j] * xr[j] * r;
            }
        }
        acc
    };
    // Fixed chunking and an ordered reduction keep results deterministic across runs.
    let parts: Vec<Vec<T>> =
        x.par_chunks(h * rows).zip(g.par_chunks(h * rows)).map(|(xc, gc)| partial(xc, gc)).collect();
    let mut dw = vec![T::zero(); h];
    for p in parts {
        for j in 0..h {
            dw[j] += p[j];
        }
    }
    dw
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "keel-rms-norm-bwd"
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
        let h = l1.shape().dims().last().copied().unwrap_or(1);
        let n = self.name();
        let out = match s1 {
            CpuStorage::F32(_) => {
                let (x, w, g) = (cslice::<f32>(s1, l1, n)?, cslice::<f32>(s2, l2, n)?, cslice::<f32>(s3, l3, n)?);
                CpuStorage::F32(if self.want_w { bwd_dw(x, g, h, self.eps) } else { bwd_dx(x, w, g, h, self.eps) })
            }
            CpuStorage::F64(_) => {
                let (x, w, g) = (cslice::<f64>(s1, l1, n)?, cslice::<f64>(s2, l2, n)?, cslice::<f64>(s3, l3, n)?);
                CpuStorage::F64(if self.want_w { bwd_dw(x, g, h, self.eps) } else { bwd_dx(x, w, g, h, self.eps) })
            }
            _ => return Err(bad_dtype(n, s1)),
        };
        let shape = if self.want_w { l2.shape().clone() } else { l1.shape().clone() };
        Ok((out, shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{fd_check, rand_f64, rel_err};
    use candle_core::{DType, Var};

    #[test]
    fn fused_matches_slow_values_and_grads_f32_and_f64() {
        for dtype in [DType::F32, DType::F64] {
            let x = Var::from_tensor(&rand_f64(&[3, 5, 16], 1, 2.0).to_dtype(dtype).unwrap()).unwrap();
            let w = Var::from_tensor(&rand_f64(&[16], 2, 1.5).to_dtype(dtype).unwrap()).unwrap();
            let r = rand_f64(&[3, 5, 16], 3, 1.0).to_dtype(dtype).unwrap();
            let yf = rms_norm(&x, &w, 1e-5).unwrap();
            let ys = rms_norm_slow(&x, &w, 1e-5).unwrap();
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
            assert!(rel_err(&yf, &ys) < tol);
            let gf = (yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gs = (ys * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &w] {
                let e = rel_err(gf.get(v).unwrap(), gs.get(v).unwrap());
                assert!(e < tol * 10.0, "{dtype:?} grad rel err {e}");
            }
        }
    }

    #[test]
    fn finite_differences_f64() {
        let x0 = rand_f64(&[4, 8], 4, 2.0);
        let w0 = rand_f64(&[8], 5, 1.5);
        let r = rand_f64(&[4, 8], 6, 1.0);
        let ex = fd_check(&x0, &|x| rms_norm(x, &w0, 1e-6).unwrap().mul(&r).unwrap().sum_all().unwrap());
        let ew = fd_check(&w0, &|w| rms_norm(&x0, w, 1e-6).unwrap().mul(&r).unwrap().sum_all().unwrap());
        assert!(ex < 1e-5 && ew < 1e-5, "fd rel err x {ex} w {ew}");
    }
}
