//! SwiGLU gate `silu(gate) · up`, fused with its backward (saves two `[B·T, ffn]` intermediates).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{bad_dtype, cslice, use_fused, Fl};

/// `silu(gate) * up` elementwise; differentiable in both arguments.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if use_fused(gate) && gate.dtype() == up.dtype() && gate.shape() == up.shape() {
        gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
    } else {
        swiglu_slow(gate, up)
    }
}

/// SwiGLU composed from differentiable candle primitives (reference and fallback).
pub fn swiglu_slow(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

const CHUNK: usize = 16_384;

#[inline]
fn sigmoid<T: Fl>(x: T) -> T {
    T::one() / (T::one() + (-x).fast_exp())
}

struct SwiGlu;

fn fwd<T: Fl>(a: &[T], b: &[T]) -> Vec<T> {
    let mut y = vec![T::zero(); a.len()];
    let body = |((yc, ac), bc): ((&mut [T], &[T]), &[T])| {
        for ((y, &a), &b) in yc.iter_mut().zip(ac).zip(bc) {
            *y = a * sigmoid(a) * b;
        }
    };
    if a.len() <= CHUNK {
        // One chunk: stay on the calling thread (see `ops::for_chunks`).
        body(((&mut y[..], a), b));
    } else {
        y.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK)).for_each(body);
    }
    y
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "keel-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = self.name();
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(fwd::<f32>(cslice(s1, l1, n)?, cslice(s2, l2, n)?)),
            CpuStorage::F64(_) => CpuStorage::F64(fwd::<f64>(cslice(s1, l1, n)?, cslice(s2, l2, n)?)),
            _ => return Err(bad_dtype(n, s1)),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One pass computes both gradients (the sigmoid is evaluated once per element) into a
        // `[2, ...]` buffer; the two halves are contiguous views of it.
        let both = a.apply_op3_no_bwd(b, &g.contiguous()?, &SwiGluBwd)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// Stacked `[d gate, d up]`: d gate = g · up · σ(a)(1 + a(1 − σ(a))); d up = g · silu(a).
struct SwiGluBwd;

fn bwd<T: Fl>(a: &[T], b: &[T], g: &[T]) -> Vec<T> {
    let n = a.len();
    let mut d = vec![T::zero(); 2 * n];
    let (da, db) = d.split_at_mut(n);
    da.par_chunks_mut(CHUNK)
        .zip(db.par_chunks_mut(CHUNK))
        .zip(a.par_chunks(CHUNK))
        .zip(b.par_chunks(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|((((dac, dbc), ac), bc), gc)| {
            for ((((da, db), &a), &b), &g) in dac.iter_mut().zip(dbc.iter_mut()).zip(ac).zip(bc).zip(gc) {
                let s = sigmoid(a);
                *db = g * a * s;
                *da = g * b * s * (T::one() + a * (T::one() - s));
            }
        });
    d
}

impl CustomOp3 for SwiGluBwd {
    fn name(&self) -> &'static str {
        "keel-swiglu-bwd"
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
        let n = self.name();
        let out = match s1 {
            CpuStorage::F32(_) => {
                CpuStorage::F32(bwd::<f32>(cslice(s1, l1, n)?, cslice(s2, l2, n)?, cslice(s3, l3, n)?))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(bwd::<f64>(cslice(s1, l1, n)?, cslice(s2, l2, n)?, cslice(s3, l3, n)?))
            }
            _ => return Err(bad_dtype(n, s1)),
        };
        let mut dims = vec![2];
        dims.extend_from_slice(l1.shape().dims());
        Ok((out, Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{fd_check, rand_f64, rel_err};
    use candle_core::{DType, Var};

    #[test]
    fn fused_matches_slow_and_finite_differences() {
        for dtype in [DType::F32, DType::F64] {
            let a = Var::from_tensor(&rand_f64(&[3, 10], 31, 4.0).to_dtype(dtype).unwrap()).unwrap();
            let b = Var::from_tensor(&rand_f64(&[3, 10], 32, 2.0).to_dtype(dtype).unwrap()).unwrap();
            let r = rand_f64(&[3, 10], 33, 1.0).to_dtype(dtype).unwrap();
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-13 };
            let yf = swiglu(&a, &b).unwrap();
            let ys = swiglu_slow(&a, &b).unwrap();
            assert!(rel_err(&yf, &ys) < tol);
            let gf = (yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gs = (ys * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&a, &b] {
                assert!(rel_err(gf.get(v).unwrap(), gs.get(v).unwrap()) < tol * 10.0);
            }
        }
        let a0 = rand_f64(&[2, 6], 34, 4.0);
        let b0 = rand_f64(&[2, 6], 35, 2.0);
        let r = rand_f64(&[2, 6], 36, 1.0);
        let ea = fd_check(&a0, &|a| swiglu(a, &b0).unwrap().mul(&r).unwrap().sum_all().unwrap());
        let eb = fd_check(&b0, &|b| swiglu(&a0, b).unwrap().mul(&r).unwrap().sum_all().unwrap());
        assert!(ea < 1e-5 && eb < 1e-5, "fd rel err {ea} {eb}");
    }
}
