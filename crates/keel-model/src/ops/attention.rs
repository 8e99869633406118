//! Single-query attention over a KV cache: the attention of one decoding step, fused.
//!
//! At a decoding step every sequence has one new query. The composed path computes it as two
//! batched matmuls (`q·kᵀ`, then `p·v`) around the masked softmax. candle runs a batched matmul as
//! one `gemm` call per batch entry, so a step of 64 sequences × 8 heads made 1 024 calls of a
//! `[1, 32] × [32, S]` product per layer, each dominated by the call's set-up rather than its
//! arithmetic (a few thousand multiply-adds), plus the `[B, H, 1, S]` score and probability
//! tensors and two layout copies. The fused kernel walks the cache buffers in place (they may be
//! strided views of the pre-allocated cache) and writes the `[B, H, D]` output directly, already
//! in the layout `o_proj` reads.
//!
//! Inference only: decoding runs on detached weights (`CausalLm::forward_cached`), so the op has no
//! backward pass; asking for one is an error from candle.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{bad_dtype, cslice, use_fused, Fl};

/// `softmax(scale · q·kᵀ) · v` for one query per sequence and head, masking padded keys.
///
/// * `q`: `[B, H, D]`, the new position's queries.
/// * `k`, `v`: `[B, KV, S, D]` with `H % KV == 0` (grouped-query attention: query head `h` reads
///   key/value head `h / (H / KV)`); may be strided views, e.g. the valid prefix of a KV cache.
/// * `key_mask`: `[B, S]`, non-zero for real keys, 0 for padding. The query is the last position,
///   so it may see every key (causality adds nothing).
///
/// Returns `[B, H, D]`. A sequence whose keys are all masked gets zeros (as [`super::masked_softmax`]
/// gives). Equal to [`decode_attention_slow`] up to float rounding; not differentiable.
pub fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor, key_mask: &Tensor, scale: f64) -> Result<Tensor> {
    decode_attention_shared(q, k, v, key_mask, scale, None)
}

/// Rows of a KV cache that hold copies of one another's first positions: the `n` samples of a
/// prompt after a shared prefill (`KvCache::select_rows`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedKeys {
    /// Per row, the row whose keys and values to read for positions `< len` (equal to its own).
    pub source: Vec<u32>,
    /// Number of leading positions the rows share.
    pub len: usize,
}

/// [`decode_attention`] that reads the shared leading keys and values of each row from its
/// `shared.source` row: equal values, but the samples of a prompt then read one copy of the
/// prompt's keys, which stays in cache between them, instead of `n` copies from memory.
///
/// Why: a decoding step reads the whole KV cache once and does little arithmetic per byte, so
/// memory traffic sets its speed; in a GRPO rollout (8 samples, 22-token prompts, 64 new tokens)
/// the prompt is a third of the keys read.
pub fn decode_attention_shared(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: &Tensor,
    scale: f64,
    shared: Option<&SharedKeys>,
) -> Result<Tensor> {
    let (b, h, d) = q.dims3()?;
    let (kb, kv, s, kd) = k.dims4()?;
    if kb != b || kd != d || v.dims() != k.dims() || kv == 0 || h % kv != 0 || key_mask.dims() != [b, s] {
        return Err(candle_core::Error::Msg(format!(
            "decode_attention: q {:?}, k {:?}, v {:?} and key mask {:?} do not fit together",
            q.dims(),
            k.dims(),
            v.dims(),
            key_mask.dims()
        )));
    }
    let rows_ok = |t: &Tensor| t.layout().stride()[3] == 1 || d == 1;
    if let Some(sh) = shared {
        if sh.source.len() != b || sh.source.iter().any(|&r| r as usize >= b) || sh.len > s {
            return Err(candle_core::Error::Msg(format!(
                "decode_attention: shared rows {:?} over {} positions do not fit {b} rows of {s} keys",
                sh.source, sh.len
            )));
        }
    }
    if use_fused(q) && k.dtype() == q.dtype() && v.dtype() == q.dtype() && rows_ok(k) && rows_ok(v) {
        let mask: Vec<f32> = key_mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        q.contiguous()?.apply_op3_no_bwd(k, v, &DecodeAttention { mask, scale, shared })
    } else {
        decode_attention_slow(q, k, v, key_mask, scale)
    }
}

/// [`decode_attention`] composed from candle primitives: the batched-matmul path the decoder used
/// before (reference and fallback for other devices and dtypes).
pub fn decode_attention_slow(q: &Tensor, k: &Tensor, v: &Tensor, key_mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, h, d) = q.dims3()?;
    let (_, kv, s, _) = k.dims4()?;
    let rep = h / kv;
    let scores = q.reshape((b, kv, rep, d))?.matmul(&k.t()?)?.reshape((b, h, 1, s))?;
    let probs = super::masked_softmax(&scores, key_mask, scale, true)?;
    probs.reshape((b, kv, rep, s))?.matmul(v)?.reshape((b, h, d))
}

struct DecodeAttention<'a> {
    /// `[B, S]` key mask on the host (1 = real key).
    mask: Vec<f32>,
    scale: f64,
    shared: Option<&'a SharedKeys>,
}

/// Where a strided `[B, KV, S, D]` view's rows start: offset and the strides of its first three
/// dims (its last dim is contiguous).
#[derive(Clone, Copy)]
struct Rows {
    start: usize,
    sb: usize,
    skv: usize,
    ss: usize,
}

impl Rows {
    fn of(l: &Layout) -> Rows {
        let st = l.stride();
        Rows { start: l.start_offset(), sb: st[0], skv: st[1], ss: st[2] }
    }

    #[inline(always)]
    fn at(&self, b: usize, kv: usize, j: usize) -> usize {
        self.start + b * self.sb + kv * self.skv + j * self.ss
    }
}

/// Dot product with 8 independent partial sums, so the compiler vectorises it (floating-point
/// addition is not reassociated on its own).
#[inline(always)]
fn dot<T: Fl>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] = acc[i] + x[i] * y[i];
        }
    }
    let mut s = acc.iter().fold(T::zero(), |s, &x| s + x);
    for (x, y) in ra.iter().zip(rb) {
        s = s + *x * *y;
    }
    s
}

/// Parallelise over sequences only when a step has enough work to repay rayon's hand-off
/// (multiply-adds of the `q·k` and `p·v` products together).
const PARALLEL_MIN_WORK: usize = 1 << 17;

/// The fused attention for every sequence; `op` holds the key mask, scale and shared rows.
fn kernel<T: Fl>(op: &DecodeAttention<'_>, q: &[T], k: &[T], kr: Rows, v: &[T], vr: Rows, dims: [usize; 5]) -> Vec<T> {
    let [b, h, kvh, s, d] = dims;
    let rep = h / kvh;
    let (mask, shared) = (&op.mask, op.shared);
    let scale = T::from(op.scale).unwrap_or_else(T::one);
    let mut out = vec![T::zero(); b * h * d];
    // One sequence: all its heads. `p` holds the scores, then the unnormalised probabilities.
    let one = |bi: usize, ob: &mut [T], p: &mut Vec<T>| {
        p.resize(s, T::zero());
        let mrow = &mask[bi * s..(bi + 1) * s];
        // Keys before `lead` are read from row `src` (the same values, see `SharedKeys`).
        let (src, lead) = shared.map_or((bi, 0), |sh| (sh.source[bi] as usize, sh.len));
        let key_row = |j: usize| if j < lead { src } else { bi };
        for hi in 0..h {
            let kvi = hi / rep;
            let qv = &q[(bi * h + hi) * d..(bi * h + hi + 1) * d];
            let mut mx = T::neg_infinity();
            for j in 0..s {
                if mrow[j] != 0.0 {
                    let at = kr.at(key_row(j), kvi, j);
                    let sc = dot(qv, &k[at..at + d]);
                    p[j] = sc;
                    if sc > mx {
                        mx = sc;
                    }
                }
            }
            let o = &mut ob[hi * d..(hi + 1) * d];
            if mx == T::neg_infinity() {
                continue; // every key is padding: zeros, as the masked softmax gives
            }
            // The softmax of the composed path, same order of operations: exp((x − max)·scale).
            let mut sum = T::zero();
            for j in 0..s {
                if mrow[j] != 0.0 {
                    let e = ((p[j] - mx) * scale).fast_exp();
                    p[j] = e;
                    sum = sum + e;
                }
            }
            let inv = T::one() / sum;
            for j in 0..s {
                if mrow[j] != 0.0 {
                    let w = p[j] * inv;
                    let at = vr.at(key_row(j), kvi, j);
                    for (oi, &vv) in o.iter_mut().zip(&v[at..at + d]) {
                        *oi = *oi + w * vv;
                    }
                }
            }
        }
    };
    if b > 1 && 2 * b * h * s * d >= PARALLEL_MIN_WORK {
        out.par_chunks_mut(h * d).enumerate().for_each_init(Vec::new, |p, (bi, ob)| one(bi, ob, p));
    } else {
        let mut p = Vec::new();
        for (bi, ob) in out.chunks_mut(h * d).enumerate() {
            one(bi, ob, &mut p);
        }
    }
    out
}

impl CustomOp3 for DecodeAttention<'_> {
    fn name(&self) -> &'static str {
        "keel-decode-attention"
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
        let (b, h, d) = l1.shape().dims3()?;
        let (_, kvh, s, _) = l2.shape().dims4()?;
        if self.mask.len() != b * s {
            return Err(candle_core::Error::Msg(format!("{}: key mask has {} entries, expected {b}×{s}", self.name(), self.mask.len())));
        }
        let dims = [b, h, kvh, s, d];
        let (kr, vr) = (Rows::of(l2), Rows::of(l3));
        let n = self.name();
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                CpuStorage::F32(kernel::<f32>(self, cslice(s1, l1, n)?, k, kr, v, vr, dims))
            }
            (CpuStorage::F64(_), CpuStorage::F64(k), CpuStorage::F64(v)) => {
                CpuStorage::F64(kernel::<f64>(self, cslice(s1, l1, n)?, k, kr, v, vr, dims))
            }
            _ => return Err(bad_dtype(n, s1)),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{rand_f64, rel_err};
    use candle_core::Device;

    /// Fused vs composed on strided cache views (the valid prefix of a larger buffer), with
    /// grouped-query heads, left padding and a fully padded sequence, in f32 and f64.
    #[test]
    fn fused_matches_composed_on_cache_views() {
        for dtype in [DType::F32, DType::F64] {
            let (b, h, kvh, cap, s, d) = (3usize, 4usize, 2usize, 11usize, 7usize, 16usize);
            let q = rand_f64(&[b, h, d], 1, 1.0).to_dtype(dtype).unwrap();
            let kbuf = rand_f64(&[b, kvh, cap, d], 2, 1.0).to_dtype(dtype).unwrap();
            let vbuf = rand_f64(&[b, kvh, cap, d], 3, 1.0).to_dtype(dtype).unwrap();
            let (k, v) = (kbuf.narrow(2, 0, s).unwrap(), vbuf.narrow(2, 0, s).unwrap());
            assert!(!k.is_contiguous());
            // Sequence 0: two padded keys; 1: none; 2: every key padded.
            let mut m = vec![1f32; b * s];
            m[0] = 0.0;
            m[1] = 0.0;
            m[2 * s..].iter_mut().for_each(|x| *x = 0.0);
            let mask = Tensor::from_vec(m, (b, s), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let fused = decode_attention(&q, &k, &v, &mask, 0.3).unwrap();
            let slow = decode_attention_slow(&q, &k.contiguous().unwrap(), &v.contiguous().unwrap(), &mask, 0.3).unwrap();
            assert_eq!(fused.dims(), &[b, h, d]);
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
            let e = rel_err(&fused, &slow);
            assert!(e < tol, "{dtype:?}: rel err {e}");
            let last: Vec<f64> = fused.get(2).unwrap().flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
            assert_eq!(last, vec![0.0; h * d], "a fully padded sequence attends to nothing");
        }
    }

    /// Large enough to take the parallel path; still equal to the composed version.
    #[test]
    fn parallel_path_matches_composed() {
        let (b, h, s, d) = (16usize, 8usize, 40usize, 32usize);
        let q = rand_f64(&[b, h, d], 4, 2.0).to_dtype(DType::F32).unwrap();
        let k = rand_f64(&[b, h, s, d], 5, 2.0).to_dtype(DType::F32).unwrap();
        let v = rand_f64(&[b, h, s, d], 6, 2.0).to_dtype(DType::F32).unwrap();
        assert!(2 * b * h * s * d >= PARALLEL_MIN_WORK);
        let mask = Tensor::ones((b, s), DType::F32, &Device::Cpu).unwrap();
        let e = rel_err(
            &decode_attention(&q, &k, &v, &mask, 0.2).unwrap(),
            &decode_attention_slow(&q, &k, &v, &mask, 0.2).unwrap(),
        );
        assert!(e < 1e-5, "rel err {e}");
    }

    /// Reading shared leading keys from a source row gives the same result as each row's own
    /// copy; and the kernel really reads the source (a poisoned copy does not change the output).
    #[test]
    fn shared_rows_read_their_source() {
        let (b, h, s, d, lead) = (4usize, 2usize, 9usize, 8usize, 5usize);
        let q = rand_f64(&[b, h, d], 7, 1.0).to_dtype(DType::F32).unwrap();
        let base_k = rand_f64(&[b, h, s, d], 8, 1.0).to_dtype(DType::F32).unwrap();
        let base_v = rand_f64(&[b, h, s, d], 9, 1.0).to_dtype(DType::F32).unwrap();
        // Rows 1 and 3 copy rows 0 and 2 on the first `lead` positions.
        let source = vec![0u32, 0, 2, 2];
        let idx = Tensor::new(source.as_slice(), &Device::Cpu).unwrap();
        let copy = |t: &Tensor| {
            let head = t.narrow(2, 0, lead).unwrap().contiguous().unwrap().index_select(&idx, 0).unwrap();
            Tensor::cat(&[&head, &t.narrow(2, lead, s - lead).unwrap()], 2).unwrap()
        };
        let (k, v) = (copy(&base_k), copy(&base_v));
        let mask = Tensor::ones((b, s), DType::F32, &Device::Cpu).unwrap();
        let sh = SharedKeys { source: source.clone(), len: lead };
        let plain = decode_attention(&q, &k, &v, &mask, 0.4).unwrap();
        let shared = decode_attention_shared(&q, &k, &v, &mask, 0.4, Some(&sh)).unwrap();
        assert!(rel_err(&shared, &plain) < 1e-6);
        // Poison rows 1 and 3's own copies of the shared positions: the shared kernel ignores them.
        let poison = |t: &Tensor| {
            let rows: Vec<Tensor> = (0..b)
                .map(|i| {
                    let r = t.get(i).unwrap();
                    if i % 2 == 1 {
                        let junk = r.narrow(1, 0, lead).unwrap().affine(0.0, 100.0).unwrap();
                        Tensor::cat(&[&junk, &r.narrow(1, lead, s - lead).unwrap()], 1).unwrap()
                    } else {
                        r
                    }
                })
                .collect();
            Tensor::stack(&rows, 0).unwrap()
        };
        let poisoned = decode_attention_shared(&q, &poison(&k), &poison(&v), &mask, 0.4, Some(&sh)).unwrap();
        assert!(rel_err(&poisoned, &plain) < 1e-6);
        let bad = SharedKeys { source: vec![0, 0, 4, 2], len: lead };
        assert!(decode_attention_shared(&q, &k, &v, &mask, 0.4, Some(&bad)).is_err());
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let q = Tensor::zeros((2, 4, 8), DType::F32, &Device::Cpu).unwrap();
        let k = Tensor::zeros((2, 3, 5, 8), DType::F32, &Device::Cpu).unwrap();
        let mask = Tensor::ones((2, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(decode_attention(&q, &k, &k, &mask, 1.0).is_err(), "4 heads cannot share 3 KV heads");
    }
}
