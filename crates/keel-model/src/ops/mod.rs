//! Fused, differentiable decoder operations.
//!
//! candle's own fused kernels (`softmax_last_dim`, `rms_norm`, `rope`) return tensors detached from
//! autograd, and the composed versions allocate one intermediate per elementary step. Each op here
//! is a candle `CustomOp` with a CPU forward kernel and a hand-written backward pass, so training
//! gets both gradients and speed. Every op also has a `*_slow` version built from differentiable
//! candle primitives: it is the fallback on other devices and dtypes (CUDA, Metal, bf16, f16) and
//! the reference the tests compare the fused kernels against (values, gradients, and f64 finite
//! differences).

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{CpuStorage, DType, Layout, Tensor, WithDType};
use rayon::prelude::*;

mod attention;
mod cross_entropy;
mod rms_norm;
mod rope;
mod softmax;
mod swiglu;

pub use attention::{decode_attention, decode_attention_shared, decode_attention_slow, SharedKeys};
pub use cross_entropy::{entropy, entropy_slow, token_logprobs, token_logprobs_slow};
pub use rms_norm::{rms_norm, rms_norm_slow};
pub use rope::{rope, rope_slow};
pub use softmax::{masked_softmax, masked_softmax_slow, MASK_FILL, MASK_FILL_F16};
pub use swiglu::{swiglu, swiglu_slow};

static FUSED_DISABLED: AtomicBool = AtomicBool::new(false);

/// Globally disables (or re-enables) the fused CPU kernels, forcing the composed `*_slow` paths.
///
/// Exists for benchmarking the kernels against the composed baseline and for bisecting a
/// suspected kernel bug; results are identical up to floating-point rounding.
pub fn set_fused_enabled(enabled: bool) {
    FUSED_DISABLED.store(!enabled, Ordering::Relaxed);
}

/// Whether the fused kernels are enabled (see [`set_fused_enabled`]).
pub fn fused_enabled() -> bool {
    !FUSED_DISABLED.load(Ordering::Relaxed)
}

/// True when a fused CPU kernel can run on `t`: CPU device, f32 or f64, kernels enabled.
pub(crate) fn use_fused(t: &Tensor) -> bool {
    fused_enabled() && t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// Float element types the CPU kernels are written for.
pub(crate) trait Fl: num_traits::Float + WithDType + Send + Sync {
    /// `e^x`: [`exp_f32`] for f32 (branch-free, so loops over it vectorise), libm's for f64 (the
    /// dtype the gradient tests use as the exact reference).
    fn fast_exp(self) -> Self;
}
impl Fl for f32 {
    #[inline(always)]
    fn fast_exp(self) -> Self {
        exp_f32(self)
    }
}
impl Fl for f64 {
    #[inline(always)]
    fn fast_exp(self) -> Self {
        self.exp()
    }
}

/// `e^x` in f32 with a Cephes-style range reduction and degree-6 polynomial (≤ 2 ulp over the
/// range the kernels use), written without branches or libm calls so that the compiler turns the
/// softmax, log-sum-exp and SiLU loops into SIMD code with the baseline x86-64 instruction set.
///
/// Why: libm's scalar `expf` was 8 % of a `tiny-8m` training step (~70 M calls: SiLU forward
/// and backward, attention softmax, log-sum-exp over the 4096-way vocabulary). Inputs below
/// −87.3 give exactly 0 (so masked or far-below-max entries underflow as with libm); inputs above
/// 88 are clamped to e^88 (the kernels only call it on `x − max ≤ 0` and on `−a` in the sigmoid,
/// where the clamped value still rounds the sigmoid to 0).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a part exactly representable with few mantissa bits and the remainder, so
    // that `x − n·ln2` is computed without cancellation error.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2²³: adding and subtracting it rounds to the nearest integer using only SSE2.
    const ROUND: f32 = 12_582_912.0;
    const LO: f32 = -87.336_55;
    const HI: f32 = 88.0;
    let xc = x.max(LO).min(HI);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    let v = y * scale;
    if x < LO {
        0.0
    } else if x.is_nan() {
        x
    } else {
        v
    }
}

extern "C" {
    /// mimalloc's option setter (its C library is linked through the `mimalloc` crate).
    fn mi_option_set(option: std::os::raw::c_int, value: std::os::raw::c_long);
}

/// `mi_option_purge_delay` in mimalloc 2.x and 3.x (`mimalloc.h`, `enum mi_option_e`).
const MI_OPTION_PURGE_DELAY: std::os::raw::c_int = 15;

/// Keeps memory freed to mimalloc committed instead of returning it to the OS after its purge
/// delay. Meant for binaries whose global allocator is `mimalloc::MiMalloc` (the `keel` CLI and
/// the benchmark binaries); call it first thing in `main`. Elsewhere it only sets an option of an
/// allocator that is not in use.
///
/// Why: a training step frees and re-allocates the same few hundred MB every step (logits and
/// their gradient are 32 MiB each); purged pages come back as fresh page faults, and zeroing
/// them in the kernel (`clear_page_erms`) was 6–24 % of a step in `perf`. With purging off the
/// step made ~650 page faults instead of ~30 000, at the cost of a resident set that stays at
/// its peak.
pub fn keep_freed_memory() {
    // SAFETY: plain setter of a global option; valid for any value at any time.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Sets process-wide CPU runtime knobs of candle for the small-model, few-core case Keel targets.
/// Call it at the start of `main`, before any tensor work (the knobs are read once, when candle
/// first builds its thread pools); it only sets variables the user has not set.
///
/// What and why (measured on the 2-core reference machine, `docs/performance.md`):
/// candle 0.11 runs large element-wise ops on its own "barrier pool" whose workers busy-wait
/// (25 000 spins) between ops, while matmuls and Keel's kernels use rayon's pool. With as many
/// threads as cores the spinning workers steal the cores the matmul threads need: 19 % of a
/// training step was spent in the barrier pool's wait loop and the step took 2.7 s instead of
/// 1.3 s. `CANDLE_NUM_THREADS=1` gives the barrier pool no workers (element-wise ops then run on
/// the calling thread; they are memory-bound anyway) and leaves every core to matmuls and Keel's
/// rayon kernels.
pub fn tune_cpu_runtime() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Safe to call here: documented as to be called first thing in `main`, before other
        // threads exist (std::env::set_var is not thread-safe on Linux).
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// The contiguous slice of a CPU storage described by `l`, or an error naming the op.
pub(crate) fn cslice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    let all = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => Err(candle_core::Error::Msg(format!("{op}: kernel input must be contiguous"))),
    }
}

/// Rows per parallel task so that each task touches at least ~16k elements (fewer, larger tasks
/// on the small machines Keel targets; rayon overhead dominates for tiny rows otherwise).
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (16_384 / row_len.max(1)).max(1)
}

/// Runs `f(chunk_index, out_chunk, in_chunk)` over matching `chunk`-element pieces of `out` and
/// `inp` (same length): on rayon's pool when there are several pieces, on the calling thread when
/// there is one.
///
/// Why: handing work to rayon from a thread outside its pool (the caller of a candle op) costs a
/// cross-thread wake-up and hand-back. That is noise for a training batch but dominated the
/// fused ops at a decoding step, whose tensors hold a few thousand elements (16 rows × 256).
pub(crate) fn for_chunks<T: Send, U: Sync>(out: &mut [T], inp: &[U], chunk: usize, f: impl Fn(usize, &mut [T], &[U]) + Sync) {
    let chunk = chunk.max(1);
    if out.len() <= chunk {
        if !out.is_empty() {
            f(0, out, inp);
        }
        return;
    }
    out.par_chunks_mut(chunk).zip(inp.par_chunks(chunk)).enumerate().for_each(|(i, (o, x))| f(i, o, x));
}

/// Error for a kernel called on a dtype it does not implement.
pub(crate) fn bad_dtype(op: &str, s: &CpuStorage) -> candle_core::Error {
    candle_core::Error::Msg(format!("{op}: fused kernel supports f32/f64, got {:?}", candle_core::backend::BackendStorage::dtype(s)))
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Gradient-checking helpers shared by the op tests.
    use candle_core::{Device, Tensor, Var};
    use rand::{Rng, SeedableRng};

    /// A deterministic f64 tensor with entries uniform in [-scale, scale].
    pub fn rand_f64(shape: &[usize], seed: u64, scale: f64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Max |a-b| / max(max|b|, tiny).
    pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
        let a: Vec<f64> = a.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1().unwrap();
        let b: Vec<f64> = b.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len());
        let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        let m = b.iter().map(|x| x.abs()).fold(0.0, f64::max).max(1e-30);
        d / m
    }

    /// Central finite-difference gradient of `f` (a scalar function of one f64 tensor) at `x`,
    /// compared with the autograd gradient; returns the relative error.
    pub fn fd_check(x: &Tensor, f: &dyn Fn(&Tensor) -> Tensor) -> f64 {
        let var = Var::from_tensor(x).unwrap();
        let loss = f(var.as_tensor());
        let grads = loss.backward().unwrap();
        let g = grads.get(var.as_tensor()).expect("no gradient").clone();
        let base: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
        let eps = 1e-6;
        let mut num = vec![0.0; base.len()];
        for i in 0..base.len() {
            let mut p = base.clone();
            p[i] += eps;
            let lp: f64 = f(&Tensor::from_vec(p.clone(), x.shape(), &Device::Cpu).unwrap())
                .to_scalar()
                .unwrap();
            p[i] -= 2.0 * eps;
            let lm: f64 = f(&Tensor::from_vec(p, x.shape(), &Device::Cpu).unwrap()).to_scalar().unwrap();
            num[i] = (lp - lm) / (2.0 * eps);
        }
        let num = Tensor::from_vec(num, x.shape(), &Device::Cpu).unwrap();
        rel_err(&g, &num)
    }
}

#[cfg(test)]
mod exp_tests {
    use super::exp_f32;

    /// The vectorisable exp agrees with libm to a few ulp where the kernels use it, underflows to
    /// exactly 0, and propagates NaN.
    #[test]
    fn exp_f32_matches_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (got, want) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.013;
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "max relative error {worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
    }
}
