//! Rotary position embedding in the Hugging Face "half rotation" layout, fused with its backward.
//!
//! The kernel works on `[B, T, H, D]` (the layout straight out of the q/k projections), with
//! per-sequence `cos`/`sin` tables `[B, T, D/2]`, so left-padded batches (whose positions differ per
//! row) and incremental decoding need no special cases and no transposes.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::{bad_dtype, cslice, for_chunks, rows_per_task, use_fused, Fl};

/// Applies RoPE: for `i < D/2`, `y_i = x_i c_i − x_{i+D/2} s_i`, `y_{i+D/2} = x_{i+D/2} c_i + x_i s_i`.
///
/// * `x`: `[B, T, H, D]`; `cos`, `sin`: `[B, T, D/2]` (constants: they receive no gradient).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if use_fused(x) && x.rank() == 4 && cos.rank() == 3 {
        let c = cos.to_dtype(x.dtype())?.contiguous()?;
        let s = sin.to_dtype(x.dtype())?.contiguous()?;
        x.contiguous()?.apply_op3(&c, &s, Rope { inverse: false })
    } else {
        rope_slow(x, cos, sin)
    }
}

/// RoPE composed from differentiable candle primitives (reference and fallback).
pub fn rope_slow(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, t, _h, d) = x.dims4()?;
    let half = d / 2;
    let cos = cos.to_dtype(x.dtype())?;
    let sin = sin.to_dtype(x.dtype())?;
    let c = Tensor::cat(&[&cos, &cos], 2)?.reshape((b, t, 1, d))?;
    let s = Tensor::cat(&[&sin, &sin], 2)?.reshape((b, t, 1, d))?;
    let x1 = x.narrow(3, 0, half)?;
    let x2 = x.narrow(3, half, half)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
    x.broadcast_mul(&c)? + rot.broadcast_mul(&s)?
}

/// Forward rotation, or its inverse (the backward pass: rotation by −θ).
struct Rope {
    inverse: bool,
}

fn kernel<T: Fl>(x: &[T], cos: &[T], sin: &[T], hd: usize, d: usize, inverse: bool) -> Vec<T> {
    let half = d / 2;
    let mut y = vec![T::zero(); x.len()];
    // One (b, t) position per chunk row: H heads of D each, sharing one cos/sin row.
    let group = hd;
    let per = rows_per_task(group);
    for_chunks(&mut y, x, group * per, |ci, yc, xc| {
        for (pi, (yp, xp)) in yc.chunks_mut(group).zip(xc.chunks(group)).enumerate() {
            let pos = ci * per + pi;
            let c = &cos[pos * half..(pos + 1) * half];
            let s = &sin[pos * half..(pos + 1) * half];
            for (yr, xr) in yp.chunks_mut(d).zip(xp.chunks(d)) {
                for i in 0..half {
                    let (a, b) = (xr[i], xr[i + half]);
                    let sv = if inverse { -s[i] } else { s[i] };
                    yr[i] = a * c[i] - b * sv;
                    yr[i + half] = b * c[i] + a * sv;
                }
            }
        }
    });
    y
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "keel-rope"
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
        let (b, t, h, d) = l1.shape().dims4()?;
        let (cb, ct, ch) = l2.shape().dims3()?;
        if (cb, ct, ch * 2) != (b, t, d) || l3.shape() != l2.shape() {
            return Err(candle_core::Error::Msg(format!(
                "{}: x {:?} incompatible with cos {:?} / sin {:?}",
                self.name(),
                l1.shape(),
                l2.shape(),
                l3.shape()
            )));
        }
        let n = self.name();
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(kernel::<f32>(
                cslice(s1, l1, n)?,
                cslice(s2, l2, n)?,
                cslice(s3, l3, n)?,
                h * d,
                d,
                self.inverse,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(kernel::<f64>(
                cslice(s1, l1, n)?,
                cslice(s2, l2, n)?,
                cslice(s3, l3, n)?,
                h * d,
                d,
                self.inverse,
            )),
            _ => return Err(bad_dtype(n, s1)),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The rotation is orthogonal: its transpose is the rotation by −θ.
        let dx = g.contiguous()?.apply_op3_no_bwd(cos, sin, &Rope { inverse: !self.inverse })?;
        Ok((Some(dx), None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{fd_check, rand_f64, rel_err};
    use candle_core::{DType, Var};

    #[test]
    fn fused_matches_slow_and_candle_reference() {
        for dtype in [DType::F32, DType::F64] {
            let x = Var::from_tensor(&rand_f64(&[2, 3, 4, 8], 11, 1.0).to_dtype(dtype).unwrap()).unwrap();
            let ang = rand_f64(&[2, 3, 4], 12, 3.0);
            let (c, s) = (ang.cos().unwrap().to_dtype(dtype).unwrap(), ang.sin().unwrap().to_dtype(dtype).unwrap());
            let r = rand_f64(&[2, 3, 4, 8], 13, 1.0).to_dtype(dtype).unwrap();
            let yf = rope(&x, &c, &s).unwrap();
            let ys = rope_slow(&x, &c, &s).unwrap();
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-13 };
            assert!(rel_err(&yf, &ys) < tol);
            // candle-nn's rope_slow expects [B, H, T, D] and [T, D/2] tables: compare batch 0.
            let xb = x.as_tensor().get(0).unwrap().transpose(0, 1).unwrap().contiguous().unwrap().unsqueeze(0).unwrap();
            let reference = candle_nn::rotary_emb::rope_slow(&xb, &c.get(0).unwrap(), &s.get(0).unwrap()).unwrap();
            let ours = yf.get(0).unwrap().transpose(0, 1).unwrap().unsqueeze(0).unwrap();
            assert!(rel_err(&ours, &reference) < tol);
            let gf = (yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gs = (ys * &r).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(rel_err(gf.get(&x).unwrap(), gs.get(&x).unwrap()) < tol * 10.0);
        }
    }

    #[test]
    fn finite_differences_f64() {
        let x0 = rand_f64(&[1, 3, 2, 6], 14, 1.0);
        let ang = rand_f64(&[1, 3, 3], 15, 3.0);
        let (c, s) = (ang.cos().unwrap(), ang.sin().unwrap());
        let r = rand_f64(&[1, 3, 2, 6], 16, 1.0);
        let e = fd_check(&x0, &|x| rope(x, &c, &s).unwrap().mul(&r).unwrap().sum_all().unwrap());
        assert!(e < 1e-5, "fd rel err {e}");
    }
}
