//! Helpers for the golden tests: f64 tensors from literal rows, finite differences, comparisons.
#![allow(dead_code)]

use candle_core::{Device, Tensor, Var};

pub fn cpu() -> Device {
    Device::Cpu
}

/// A `[B, T]` f64 tensor from rows.
pub fn t2(rows: &[Vec<f64>]) -> Tensor {
    let b = rows.len();
    let t = rows[0].len();
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (b, t), &cpu()).unwrap()
}

/// A `[B, T]` f64 variable from rows.
pub fn v2(rows: &[Vec<f64>]) -> Var {
    Var::from_tensor(&t2(rows)).unwrap()
}

pub fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    t.to_dtype(candle_core::DType::F64).unwrap().to_vec2::<f64>().unwrap()
}

pub fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(candle_core::DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

pub fn assert_close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol * (1.0 + want.abs()),
        "{what}: got {got:.15e}, want {want:.15e} (diff {:.3e})",
        (got - want).abs()
    );
}

pub fn assert_rows_close(got: &[Vec<f64>], want: &[Vec<f64>], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: rows");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: row {i} length");
        for (j, (a, b)) in g.iter().zip(w).enumerate() {
            assert_close(*a, *b, tol, &format!("{what}[{i}][{j}]"));
        }
    }
}

/// Central finite differences of `f` at `x` (h = 1e-6).
pub fn finite_diff(x: &[Vec<f64>], f: impl Fn(&[Vec<f64>]) -> f64) -> Vec<Vec<f64>> {
    let h = 1e-6;
    let mut out = vec![vec![0.0; x[0].len()]; x.len()];
    for i in 0..x.len() {
        for j in 0..x[i].len() {
            let mut p = x.to_vec();
            p[i][j] += h;
            let mut m = x.to_vec();
            m[i][j] -= h;
            out[i][j] = (f(&p) - f(&m)) / (2.0 * h);
        }
    }
    out
}
