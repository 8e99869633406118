//! Small tensor helpers shared by the losses: shape checks, mask conversion, f64 round trips.

use candle_core::{DType, Device, Tensor};

use crate::error::{Ctx, OptimError, Result};

/// Checks that `t` is a `[B, T]` matrix and returns `(B, T)`.
pub(crate) fn dims_bt(t: &Tensor, name: &str) -> Result<(usize, usize)> {
    match t.dims() {
        [b, tt] => Ok((*b, *tt)),
        other => Err(OptimError::Shape { name: name.to_string(), expected: "[B, T]".to_string(), got: other.to_vec() }),
    }
}

/// Checks that `t` has exactly the shape `expected`.
pub(crate) fn expect_shape(t: &Tensor, name: &str, expected: &[usize]) -> Result<()> {
    if t.dims() == expected {
        Ok(())
    } else {
        Err(OptimError::Shape { name: name.to_string(), expected: format!("{expected:?}"), got: t.dims().to_vec() })
    }
}

/// Checks that `t` is a floating-point tensor (losses and advantages are meaningless on integers).
pub(crate) fn expect_float(t: &Tensor, name: &str) -> Result<()> {
    if t.dtype().is_float() {
        Ok(())
    } else {
        Err(OptimError::Shape {
            name: name.to_string(),
            expected: format!("a floating-point tensor (got dtype {:?})", t.dtype()),
            got: t.dims().to_vec(),
        })
    }
}

/// A detached copy of `mask` in `dtype`: masks may arrive as u8/u32/f32 and always count as data,
/// never as something to differentiate.
pub(crate) fn mask_as(mask: &Tensor, dtype: DType, name: &str) -> Result<Tensor> {
    mask.detach().to_dtype(dtype).ctx(&format!("converting `{name}` to {dtype:?}"))
}

/// Reads a `[B, T]` tensor into f64 rows (for the sequential algorithms: GAE, returns, stats).
pub(crate) fn rows_f64(t: &Tensor, name: &str) -> Result<Vec<Vec<f64>>> {
    dims_bt(t, name)?;
    t.detach().to_dtype(DType::F64).and_then(|x| x.to_vec2::<f64>()).ctx(&format!("reading `{name}` as f64"))
}

/// Builds a `[B, T]` tensor of `dtype` on `device` from f64 rows.
pub(crate) fn tensor_from_rows(rows: &[Vec<f64>], dtype: DType, device: &Device, name: &str) -> Result<Tensor> {
    let b = rows.len();
    let t = rows.first().map_or(0, Vec::len);
    let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (b, t), device).and_then(|x| x.to_dtype(dtype)).ctx(&format!("building `{name}`"))
}

/// Reads a scalar (rank-0) tensor as f64.
pub(crate) fn scalar_f64(t: &Tensor, name: &str) -> Result<f64> {
    t.detach().to_dtype(DType::F64).and_then(|x| x.to_scalar::<f64>()).ctx(&format!("reading `{name}` as a scalar"))
}

/// Σ over all elements of `x ⊙ mask`. The mask is converted to `x`'s dtype and detached.
///
/// The building block of every masked loss: padding positions contribute neither value nor gradient.
pub fn masked_sum(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask_as(mask, x.dtype(), "mask")?;
    x.mul(&m).and_then(|p| p.sum_all()).ctx("masked_sum")
}

/// Σ(x ⊙ mask) / max(Σ mask, 1): the mean over the positions that count.
///
/// The denominator is clamped at 1 (as TRL does) so an all-padding batch gives 0 instead of NaN.
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask_as(mask, x.dtype(), "mask")?;
    let count = scalar_f64(&m.sum_all().ctx("masked_mean: count")?, "mask")?;
    let s = x.mul(&m).and_then(|p| p.sum_all()).ctx("masked_mean: sum")?;
    (s * (1.0 / count.max(1.0))).ctx("masked_mean: divide")
}
