//! Shuffled, seeded minibatches for several inner epochs over one rollout batch (PPO's
//! `num_ppo_epochs` × `num_mini_batches`, TRL GRPO's `num_iterations`, verl's `ppo_epochs`).

use candle_core::Tensor;
use keel_core::SeedStream;
use rand::RngCore;

use crate::error::{Ctx, OptimError, Result};

/// One minibatch: which rows of the batch it holds, and where it sits in the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minibatch {
    /// Inner epoch, from 0.
    pub epoch: usize,
    /// Index of the minibatch within its epoch, from 0.
    pub index: usize,
    /// Row indices into the batch (no repeats within an epoch).
    pub indices: Vec<usize>,
}

impl Minibatch {
    /// Selects this minibatch's rows of `t` along dimension 0 (e.g. `[B, T]` → `[b, T]`).
    pub fn select(&self, t: &Tensor) -> Result<Tensor> {
        let idx: Vec<u32> = self.indices.iter().map(|&i| i as u32).collect();
        let n = idx.len();
        let idx = Tensor::from_vec(idx, n, t.device()).ctx("Minibatch::select: indices")?;
        t.index_select(&idx, 0).ctx("Minibatch::select: index_select rows")
    }

    /// Selects this minibatch's entries of a per-sequence slice (rewards, advantages).
    pub fn select_values<T: Clone>(&self, values: &[T]) -> Result<Vec<T>> {
        self.indices
            .iter()
            .map(|&i| {
                values.get(i).cloned().ok_or_else(|| OptimError::Shape {
                    name: "values".into(),
                    expected: format!("at least {} rows", i + 1),
                    got: vec![values.len()],
                })
            })
            .collect()
    }
}

/// Iterator over the minibatches of `epochs` passes over one batch; each epoch is a fresh
/// permutation drawn from the named seed stream `minibatch/epoch/{e}` of `seed`, so the schedule
/// is reproducible on every platform and independent of any other random consumer.
///
/// Two ways to cut an epoch: by size ([`MinibatchSchedule::new`]: `ceil(batch / size)` minibatches,
/// the last one smaller unless dropped) or by count ([`MinibatchSchedule::with_count`]: exactly
/// `count` minibatches whose sizes differ by at most one, as `numpy.array_split` cuts).
#[derive(Debug, Clone)]
pub struct MinibatchSchedule {
    batch: usize,
    split: Split,
    epochs: usize,
    seeds: SeedStream,
    epoch: usize,
    order: Vec<usize>,
    next: usize,
}

/// How one epoch's permutation is cut into minibatches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// Consecutive runs of `size` rows; with `drop_last` a short final run is skipped.
    Size { size: usize, drop_last: bool },
    /// Exactly `count` runs; the first `batch % count` hold one row more than the others.
    Count(usize),
}

impl MinibatchSchedule {
    /// A schedule over `batch` rows in minibatches of `minibatch_size`, for `epochs` passes.
    pub fn new(batch: usize, minibatch_size: usize, epochs: usize, seed: u64, drop_last: bool) -> Result<Self> {
        if minibatch_size == 0 {
            return Err(OptimError::config("minibatch_size", minibatch_size, "must be at least 1"));
        }
        if drop_last && minibatch_size > batch {
            return Err(OptimError::config(
                "minibatch_size",
                minibatch_size,
                format!("larger than the batch ({batch}) with drop_last: no minibatch would be produced"),
            ));
        }
        Self::build(batch, Split::Size { size: minibatch_size, drop_last }, epochs, seed)
    }

    /// A schedule of exactly `count` minibatches per epoch over `batch` rows, for `epochs` passes:
    /// `epochs × count` optimiser steps whatever the batch size (TRL's and verl's
    /// `num_mini_batches` semantics). The remainder `batch % count` is spread one row each over the
    /// first minibatches, so sizes differ by at most one (64 rows in 9: one of 8, then eight of 7).
    pub fn with_count(batch: usize, count: usize, epochs: usize, seed: u64) -> Result<Self> {
        if count == 0 {
            return Err(OptimError::config("minibatches", count, "must be at least 1"));
        }
        if count > batch {
            return Err(OptimError::config(
                "minibatches",
                count,
                format!("more minibatches than rows in the batch ({batch}): some would be empty"),
            ));
        }
        Self::build(batch, Split::Count(count), epochs, seed)
    }

    fn build(batch: usize, split: Split, epochs: usize, seed: u64) -> Result<Self> {
        if batch == 0 {
            return Err(OptimError::config("batch", batch, "cannot draw minibatches from an empty batch"));
        }
        let seeds = SeedStream::new(seed);
        let mut s = MinibatchSchedule { batch, split, epochs, seeds, epoch: 0, order: Vec::new(), next: 0 };
        s.order = s.permutation(0);
        Ok(s)
    }

    /// Number of minibatches per epoch.
    pub fn per_epoch(&self) -> usize {
        match self.split {
            Split::Size { size, drop_last: true } => self.batch / size,
            Split::Size { size, drop_last: false } => self.batch.div_ceil(size),
            Split::Count(n) => n,
        }
    }

    /// Minibatches over all epochs (the optimiser steps the schedule drives), whatever has been
    /// iterated already.
    pub fn total(&self) -> usize {
        self.per_epoch() * self.epochs
    }

    /// The half-open range of permutation positions of minibatch `index` of an epoch.
    fn bounds(&self, index: usize) -> (usize, usize) {
        match self.split {
            Split::Size { size, .. } => (index * size, ((index + 1) * size).min(self.batch)),
            Split::Count(n) => {
                let (q, r) = (self.batch / n, self.batch % n);
                let start = index * q + index.min(r);
                (start, start + q + usize::from(index < r))
            }
        }
    }

    /// The permutation used in `epoch`: Fisher–Yates with unbiased draws from ChaCha8.
    pub fn permutation(&self, epoch: usize) -> Vec<usize> {
        let mut rng = self.seeds.rng(&format!("minibatch/epoch/{epoch}"));
        let mut order: Vec<usize> = (0..self.batch).collect();
        for i in (1..self.batch).rev() {
            let j = uniform_below(&mut rng, (i + 1) as u64) as usize;
            order.swap(i, j);
        }
        order
    }
}

/// An unbiased draw from `0..n` (rejection sampling on 64-bit words), independent of `rand`'s
/// distribution code so that schedules never change with a `rand` upgrade.
fn uniform_below(rng: &mut impl RngCore, n: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % n;
        }
    }
}

impl Iterator for MinibatchSchedule {
    type Item = Minibatch;

    fn next(&mut self) -> Option<Minibatch> {
        loop {
            if self.epoch >= self.epochs {
                return None;
            }
            let index = self.next;
            if index < self.per_epoch() {
                let (start, end) = self.bounds(index);
                self.next += 1;
                return Some(Minibatch { epoch: self.epoch, index, indices: self.order[start..end].to_vec() });
            }
            self.epoch += 1;
            self.next = 0;
            if self.epoch < self.epochs {
                self.order = self.permutation(self.epoch);
            }
        }
    }
}
