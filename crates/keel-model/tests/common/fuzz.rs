//! The fuzz harness's shared parts: a deterministic bounded runner, a time check, and byte
//! mutations of valid files (used by fuzz_inputs.rs and io_gguf.rs).

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// A deterministic runner: `cases` cases from a fixed seed, little shrinking, no persistence.
pub fn runner(cases: u32) -> TestRunner {
    let config = Config { cases, failure_persistence: None, max_shrink_iters: 64, ..Config::default() };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

/// Fails the case when one call took longer than `limit` (a reader that loops on bad input).
pub fn within<T>(limit: Duration, what: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let t0 = Instant::now();
    let out = f();
    let took = t0.elapsed();
    prop_assert!(took <= limit, "{what} took {took:?} (limit {limit:?})");
    Ok(out)
}

/// How to damage a valid file: flip bytes, overwrite an 8-byte window with an extreme
/// little-endian integer (lengths, offsets, counts), truncate, or replace it with random bytes.
#[derive(Debug, Clone)]
pub enum Mutation {
    Flip(Vec<(usize, u8)>),
    Word(usize, u64),
    Truncate(usize),
    Random(Vec<u8>),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let extreme = prop_oneof![
        Just(u64::MAX),
        Just(u64::MAX / 2),
        Just(1u64 << 32),
        Just(1u64 << 40),
        Just(0u64),
        any::<u64>(),
        0u64..4096
    ];
    prop_oneof![
        prop::collection::vec((any::<usize>(), any::<u8>()), 1..8).prop_map(Mutation::Flip),
        (any::<usize>(), extreme).prop_map(|(i, v)| Mutation::Word(i, v)),
        any::<usize>().prop_map(Mutation::Truncate),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(Mutation::Random),
    ]
}

/// `bytes` damaged by `m`; positions are taken modulo the length, biased to the header (the
/// first `header` bytes) half of the time, where the readers parse lengths and offsets.
pub fn mutate(bytes: &[u8], m: &Mutation, header: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let n = out.len().max(1);
    let pos = |i: usize| if i & 1 == 0 { (i / 2) % header.clamp(1, n) } else { (i / 2) % n };
    match m {
        Mutation::Flip(edits) => {
            for &(i, b) in edits {
                let p = pos(i);
                if p < out.len() {
                    out[p] ^= b.max(1);
                }
            }
        }
        Mutation::Word(i, v) => {
            let p = pos(*i).min(out.len().saturating_sub(8));
            let end = (p + 8).min(out.len());
            out[p..end].copy_from_slice(&v.to_le_bytes()[..end - p]);
        }
        Mutation::Truncate(i) => out.truncate(i % n),
        Mutation::Random(r) => out = r.clone(),
    }
    out
}
