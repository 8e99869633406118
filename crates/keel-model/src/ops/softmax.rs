//! Scaled, masked attention softmax over the last dimension, fused with its backward.
//!
//! Masking is done inside the kernel: disallowed keys get probability exactly 0 and a fully
//! masked row (a left-padding query that may attend to nothing) yields all zeros instead of the
//! NaN that `-inf` masking produces.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::{bad_dtype, cslice, for_chunks, rows_per_task, use_fused, Fl};

/// The finite fill value the composed path uses for masked scores (finite so that fully masked
/// rows never produce NaN; small enough that `exp` underflows to exactly 0 in f32). f16 cannot
/// represent it, so f16 uses [`MASK_FILL_F16`].
pub const MASK_FILL: f64 = -1e9;

/// The masked-score fill for f16 (its largest finite magnitude is 65504).
pub const MASK_FILL_F16: f64 = -6.0e4;

/// `softmax(scale * scores)` over the last dim with causal and key-padding masking.
///
/// * `scores`: `[B, H, T, S]` raw `q·k` products (queries are the last `T` of `S` positions).
/// * `key_mask`: `[B, S]`, non-zero for real keys, 0 for padding.
/// * `causal`: query `t` may see key `s` only if `s <= t + (S - T)`.
///
/// Masked entries are exactly 0; fully masked rows are all 0. Differentiable in `scores`.
pub fn masked_softmax(scores: &Tensor, key_mask: &Tensor, scale: f64, causal: bool) -> Result<Tensor> {
    if use_fused(scores) && scores.rank() == 4 && key_mask.rank() == 2 {
        let m = key_mask.to_dtype(scores.dtype())?.contiguous()?;
        scores.contiguous()?.apply_op2(&m, MaskedSoftmax { scale, causal })
    } else {
        masked_softmax_slow(scores, key_mask, scale, causal)
    }
}

/// The allowed-position mask `[B, 1, T, S]` (u8) for the composed path.
fn allowed_mask(key_mask: &Tensor, b: usize, t: usize, s: usize, causal: bool) -> Result<Tensor> {
    let dev = key_mask.device();
    let km = key_mask.ne(0f64)?.to_dtype(candle_core::DType::U8)?.reshape((b, 1, 1, s))?;
    let km = km.broadcast_as((b, 1, t, s))?;
    if !causal {
        return km.contiguous();
    }
    let off = s - t;
    let tri: Vec<u8> = (0..t).flat_map(|i| (0..s).map(move |j| u8::from(j <= i + off))).collect();
    let tri = Tensor::from_vec(tri, (1, 1, t, s), dev)?;
    km.broadcast_mul(&tri)
}

/// Masked softmax composed from differentiable candle primitives (reference and fallback).
pub fn masked_softmax_slow(scores: &Tensor, key_mask: &Tensor, scale: f64, causal: bool) -> Result<Tensor> {
    let (b, _h, t, s) = scores.dims4()?;
    let allowed = allowed_mask(key_mask, b, t, s, causal)?.broadcast_as(scores.shape())?;
    let x = (scores * scale)?;
    let fill_value = if scores.dtype() == candle_core::DType::F16 { MASK_FILL_F16 } else { MASK_FILL };
    let fill = Tensor::full(fill_value, (), scores.device())?.to_dtype(scores.dtype())?.broadcast_as(scores.shape())?;
    let x = allowed.where_cond(&x, &fill)?;
    let p = candle_nn::ops::softmax(&x, D::Minus1)?;
    p.mul(&allowed.to_dtype(scores.dtype())?)
}

struct MaskedSoftmax {
    scale: f64,
    causal: bool,
}

fn fwd_kernel<T: Fl>(x: &[T], mask: &[T], dims: [usize; 4], scale: f64, causal: bool) -> Vec<T> {
    let [_b, h, t, s] = dims;
    let mut y = vec![T::zero(); x.len()];
    let rows = rows_per_task(s);
    let scale = T::from(scale).unwrap_or_else(T::one);
    let off = s - t;
    for_chunks(&mut y, x, s * rows, |ci, yc, xc| {
        for (ri, (yr, xr)) in yc.chunks_mut(s).zip(xc.chunks(s)).enumerate() {
            let row = ci * rows + ri;
            let bi = row / (h * t);
            let ti = row % t;
            let lim = if causal { (ti + off + 1).min(s) } else { s };
            let mr = &mask[bi * s..bi * s + lim];
            let mut m = T::neg_infinity();
            for (j, &xv) in xr[..lim].iter().enumerate() {
                if mr[j] != T::zero() && xv > m {
                    m = xv;
                }
            }
            if m == T::neg_infinity() {
                continue; // fully masked row: all zeros
            }
            let mut sum = T::zero();
            for j in 0..lim {
                if mr[j] != T::zero() {
                    let e = ((xr[j] - m) * scale).fast_exp();
                    yr[j] = e;
                    sum += e;
                }
            }
            let inv = T::one() / sum;
            for v in yr[..lim].iter_mut() {
                *v *= inv;
            }
        }
    });
    y
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "keel-masked-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims4()?;
        let (mb, ms) = l2.shape().dims2()?;
        let dims = [dims.0, dims.1, dims.2, dims.3];
        if mb != dims[0] || ms != dims[3] || dims[2] > dims[3] {
            return Err(candle_core::Error::Msg(format!(
                "{}: scores {:?} incompatible with key mask {:?}",
                self.name(),
                l1.shape(),
                l2.shape()
            )));
        }
        let n = self.name();
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(fwd_kernel::<f32>(
                cslice(s1, l1, n)?,
                cslice(s2, l2, n)?,
                dims,
                self.scale,
                self.causal,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(fwd_kernel::<f64>(
                cslice(s1, l1, n)?,
                cslice(s2, l2, n)?,
                dims,
                self.scale,
                self.causal,
            )),
            _ => return Err(bad_dtype(n, s1)),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _m: &Tensor, p: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = p.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxBwd { scale: self.scale })?;
        Ok((Some(dx), None))
    }
}

/// `dx = scale * p * (g - Σ g·p)` per row; masked entries have p = 0 and get no gradient.
struct SoftmaxBwd {
    scale: f64,
}

fn bwd_kernel<T: Fl>(p: &[T], g: &[T], s: usize, scale: f64) -> Vec<T> {
    let mut dx = vec![T::zero(); p.len()];
    let rows = rows_per_task(s);
    let scale = T::from(scale).unwrap_or_else(T::one);
    dx.par_chunks_mut(s * rows).zip(p.par_chunks(s * rows)).zip(g.par_chunks(s * rows)).for_each(
        |((dc, pc), gc)| {
            for ((dr, pr), gr) in dc.chunks_mut(s).zip(pc.chunks(s)).zip(gc.chunks(s)) {
                let dot = pr.iter().zip(gr).fold(T::zero(), |a, (&pv, &gv)| a + pv * gv);
                for ((d, &pv), &gv) in dr.iter_mut().zip(pr).zip(gr) {
                    *d = scale * pv * (gv - dot);
                }
            }
        },
    );
    dx
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "keel-masked-softmax-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let s = l1.shape().dims().last().copied().unwrap_or(1);
        let n = self.name();
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(bwd_kernel::<f32>(cslice(s1, l1, n)?, cslice(s2, l2, n)?, s, self.scale)),
            CpuStorage::F64(_) => CpuStorage::F64(bwd_kernel::<f64>(cslice(s1, l1, n)?, cslice(s2, l2, n)?, s, self.scale)),
            _ => return Err(bad_dtype(n, s1)),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{fd_check, rand_f64, rel_err};
    use candle_core::{DType, Device, Var};

    fn key_mask(dtype: DType) -> Tensor {
        // batch 0: left padding of 2; batch 1: no padding.
        Tensor::new(&[[0f32, 0., 1., 1., 1.], [1., 1., 1., 1., 1.]], &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
    }

    #[test]
    fn fused_matches_slow_and_never_nan() {
        for dtype in [DType::F32, DType::F64] {
            let x = Var::from_tensor(&rand_f64(&[2, 3, 4, 5], 7, 3.0).to_dtype(dtype).unwrap()).unwrap();
            let r = rand_f64(&[2, 3, 4, 5], 8, 1.0).to_dtype(dtype).unwrap();
            let m = key_mask(dtype);
            let pf = masked_softmax(&x, &m, 0.7, true).unwrap();
            let ps = masked_softmax_slow(&x, &m, 0.7, true).unwrap();
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-12 };
            assert!(rel_err(&pf, &ps) < tol);
            let v: Vec<f64> = pf.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
            assert!(v.iter().all(|x| x.is_finite()));
            // Batch 0, query 0 (offset 1: sees keys 0..=1, both padding) is fully masked -> zeros.
            let row: Vec<f64> = pf.get(0).unwrap().get(0).unwrap().get(0).unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
            assert_eq!(row, vec![0.0; 5]);
            // Batch 1, query 3 sees every key, rows sum to one.
            let s: f64 = pf.get(1).unwrap().get(2).unwrap().get(3).unwrap().sum_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar().unwrap();
            assert!((s - 1.0).abs() < 1e-6);
            let gf = (pf * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gs = (ps * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let e = rel_err(gf.get(&x).unwrap(), gs.get(&x).unwrap());
            assert!(e < tol * 10.0, "grad rel err {e}");
        }
    }

    #[test]
    fn half_precision_fallback_never_nan() {
        for dtype in [DType::F16, DType::BF16] {
            let x = rand_f64(&[2, 3, 4, 5], 7, 3.0).to_dtype(dtype).unwrap();
            let p = masked_softmax(&x, &key_mask(dtype), 0.7, true).unwrap();
            let v: Vec<f32> = p.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{dtype:?}");
            assert_eq!(&v[..5], &[0.0; 5], "{dtype:?}: fully masked row must be zeros");
        }
    }

    #[test]
    fn finite_differences_f64() {
        let x0 = rand_f64(&[2, 2, 4, 5], 9, 2.0);
        let r = rand_f64(&[2, 2, 4, 5], 10, 1.0);
        let m = key_mask(DType::F64);
        let e = fd_check(&x0, &|x| masked_softmax(x, &m, 0.5, true).unwrap().mul(&r).unwrap().sum_all().unwrap());
        assert!(e < 1e-5, "fd rel err {e}");
    }
}
