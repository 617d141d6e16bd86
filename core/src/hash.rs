//! Stable hashing and seeded randomness.
//!
//! Checksums, digest buckets and rendezvous weights must agree on every node,
//! on every platform and in every run, so they use [`StableHasher`], a
//! seedless FxHash-style hasher with a strong finaliser, fed explicit
//! little-endian encodings (never `std::hash::Hash`, whose encoding of `usize`
//! depends on the platform). Randomness comes from [`SplitMix64`], seeded from
//! configuration, so a run is a pure function of its inputs.

const K: u64 = 0x517c_c1b7_2722_0a95;

/// A deterministic 64-bit hasher over explicitly encoded fields.
#[derive(Clone, Debug)]
pub struct StableHasher {
    state: u64,
}

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher::new()
    }
}

impl StableHasher {
    /// A hasher with the fixed initial state.
    pub const fn new() -> StableHasher {
        StableHasher { state: 0 }
    }

    #[inline]
    fn add(&mut self, word: u64) {
        self.state = (self.state.rotate_left(5) ^ word).wrapping_mul(K);
    }

    /// Feeds a `u64`.
    #[inline]
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.add(v);
        self
    }

    /// Feeds a byte string, length-prefixed so that field boundaries count.
    #[inline]
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.add(bytes.len() as u64);
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
        self
    }

    /// Feeds a string.
    #[inline]
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// The hash of everything fed so far.
    #[inline]
    pub fn finish(&self) -> u64 {
        mix64(self.state)
    }
}

/// The 64-bit finaliser of MurmurHash3: every input bit affects every output bit.
#[inline]
pub const fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// A small seeded PRNG (SplitMix64). Deterministic: the same seed gives the
/// same sequence on every platform.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub const fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.state)
    }

    /// A number in `0..n`, or 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Lemire's multiply-shift; the bias is below 2^-64 * n, irrelevant here.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// `true` with probability `p` (clamped to 0..=1).
    pub fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_boundaries_change_the_hash() {
        let a = StableHasher::new().str("ab").str("c").finish();
        let b = StableHasher::new().str("a").str("bc").finish();
        assert_ne!(a, b);
    }

    #[test]
    fn hash_is_a_fixed_function_of_input() {
        // Pinned so that a change of the function (which would split a
        // mixed-version cluster's digests) is a deliberate, visible change.
        assert_eq!(StableHasher::new().str("muster").u64(7).finish(), 0x674f_d0f3_f463_5a07);
    }

    #[test]
    fn same_seed_gives_same_sequence() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert!(SplitMix64::new(1).below(10) < 10);
        assert_eq!(SplitMix64::new(1).below(0), 0);
    }
}
