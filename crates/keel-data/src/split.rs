//! Deterministic shuffling, subsetting and train/test splitting.
//!
//! Every operation takes an explicit seed and draws from a named [`keel_core::SeedStream`]
//! (ChaCha8), so the same seed gives the same order on every machine and a run manifest that
//! records the seed reproduces the exact data a model saw.

use std::collections::HashMap;

use keel_core::{Example, SeedStream};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::dedup::prompt_key;
use crate::error::{DataError, Result};

fn fisher_yates<T>(items: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..items.len()).rev() {
        let j = rng.random_range(0..=i as u64) as usize;
        items.swap(i, j);
    }
}

/// Shuffles in place with the seed's `keel-data/shuffle` stream.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    fisher_yates(items, &mut SeedStream::new(seed).rng("keel-data/shuffle"));
}

/// A shuffled copy.
pub fn shuffled<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    let mut v = items.to_vec();
    shuffle(&mut v, seed);
    v
}

/// `n` items drawn without replacement, in shuffled order (the first `n` of [`shuffled`], so
/// subsets of the same seed are nested: `subset(.., 10, s)` starts with `subset(.., 5, s)`).
pub fn subset<T: Clone>(items: &[T], n: usize, seed: u64) -> Result<Vec<T>> {
    if n > items.len() {
        return Err(DataError::Invalid {
            what: "subset size",
            message: format!("asked for {n} items from a collection of {}", items.len()),
        });
    }
    let mut v = shuffled(items, seed);
    v.truncate(n);
    Ok(v)
}

/// A train/test partition.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Training examples, in shuffled order.
    pub train: Vec<Example>,
    /// Held-out examples, in shuffled order.
    pub test: Vec<Example>,
}

/// Splits so that about `test_fraction` of the examples are held out (rounded to nearest).
pub fn split(examples: &[Example], test_fraction: f64, seed: u64) -> Result<Split> {
    if !(0.0..=1.0).contains(&test_fraction) {
        return Err(DataError::Invalid {
            what: "test fraction",
            message: format!("{test_fraction} is not in [0, 1]"),
        });
    }
    let n_test = (examples.len() as f64 * test_fraction).round() as usize;
    split_n(examples, n_test, seed)
}

/// Splits off at least `n_test` held-out examples.
///
/// Examples are grouped by normalised prompt ([`prompt_key`]) and whole groups are assigned, so
/// two copies of a prompt never land on both sides: the test set is disjoint from the training set
/// by content, not only by id. With duplicates present the test set can exceed `n_test` by less
/// than one group.
pub fn split_n(examples: &[Example], n_test: usize, seed: u64) -> Result<Split> {
    if n_test > examples.len() {
        return Err(DataError::Invalid {
            what: "test size",
            message: format!("{n_test} held-out examples requested from {}", examples.len()),
        });
    }
    let mut order: Vec<String> = Vec::new();
    let mut groups: HashMap<String, Vec<Example>> = HashMap::new();
    for e in examples {
        let key = prompt_key(e);
        let g = groups.entry(key.clone()).or_default();
        if g.is_empty() {
            order.push(key);
        }
        g.push(e.clone());
    }
    fisher_yates(&mut order, &mut SeedStream::new(seed).rng("keel-data/split"));
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for key in order {
        let g = groups.remove(&key).unwrap_or_default();
        if test.len() < n_test {
            test.extend(g);
        } else {
            train.extend(g);
        }
    }
    Ok(Split { train, test })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exs(n: usize) -> Vec<Example> {
        (0..n).map(|i| Example::new(format!("x-{i}"), format!("prompt {i}"), "x")).collect()
    }

    #[test]
    fn nested_subsets_and_bounds() {
        let v: Vec<u32> = (0..50).collect();
        let a = subset(&v, 5, 7).unwrap();
        let b = subset(&v, 10, 7).unwrap();
        assert_eq!(a[..], b[..5]);
        assert!(subset(&v, 51, 7).unwrap_err().to_string().contains("51 items from a collection of 50"));
    }

    #[test]
    fn duplicates_stay_on_one_side() {
        let mut v = exs(20);
        v.push(Example::new("dup", "Prompt 3.", "x"));
        for seed in 0..20 {
            let s = split_n(&v, 10, seed).unwrap();
            let in_test = s.test.iter().any(|e| e.id == "x-3");
            assert_eq!(in_test, s.test.iter().any(|e| e.id == "dup"));
            assert_eq!(s.train.len() + s.test.len(), 21);
        }
        assert!(split(&v, 1.5, 0).is_err());
    }
}
