use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// SplitMix64 finaliser: a cheap bijective mixer that turns nearby integers into unrelated ones.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// Independent, named random streams derived from one root seed.
///
/// Each consumer (data shuffling, weight init, sampling, dropout) asks for its own stream by
/// name, so adding a new consumer never shifts the random numbers another one sees, and a run is
/// reproduced from the single seed recorded in its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedStream {
    root: u64,
}

impl SeedStream {
    /// A stream family rooted at `root` (the pipeline's `seed:`).
    pub fn new(root: u64) -> Self {
        SeedStream { root }
    }

    /// The root seed.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The 64-bit seed for a named purpose.
    pub fn seed(&self, name: &str) -> u64 {
        splitmix64(self.root ^ splitmix64(fnv1a(name)))
    }

    /// A child family for a sub-component (e.g. one stage), so its names cannot collide with others'.
    pub fn child(&self, name: &str) -> SeedStream {
        SeedStream { root: self.seed(name) }
    }

    /// A ChaCha8 generator for a named purpose; portable and identical on every platform.
    pub fn rng(&self, name: &str) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.seed(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn splitmix_reference_values() {
        // First outputs of the reference SplitMix64 generator seeded with 0 (Vigna's splitmix64.c):
        // state advances by the golden gamma before mixing, which `splitmix64(state)` does.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(0x9E37_79B9_7F4A_7C15), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn streams_are_reproducible_and_independent() {
        let s = SeedStream::new(42);
        let a: Vec<u32> = (0..4).map(|_| s.rng("data").random()).collect();
        let b: Vec<u32> = (0..4).map(|_| s.rng("data").random()).collect();
        assert_eq!(a, b);
        assert_ne!(s.seed("data"), s.seed("init"));
        assert_ne!(SeedStream::new(43).seed("data"), s.seed("data"));
        assert_ne!(s.child("a").seed("x"), s.child("b").seed("x"));
    }
}
