//! Random numbers: the seedable generator behind `randn`, `rand_uniform`,
//! weight init and shuffling, and the counter-based hash behind dropout.
//!
//! Each thread has a default [`Generator`]; [`manual_seed`] reseeds the calling
//! thread's, so a run is reproducible and tests running on parallel threads do
//! not disturb one another. Code that wants its own stream passes an explicit
//! generator (`Tensor::randn_with`, `Linear::with_init`).
//!
//! Dropout does not draw from a stream at all: whether element `i` of the
//! `c`-th dropout call is kept is a pure function of `(seed, c, i)`
//! (see `dropout_keep` in this module's source). The GPU kernel evaluates the same 32-bit integer hash,
//! so CPU and GPU runs of one seed drop exactly the same elements.
//!
//! ```
//! wgrad::manual_seed(7);
//! let a = wgrad::Tensor::randn([3], &wgrad::Device::Cpu).to_vec().unwrap();
//! wgrad::manual_seed(7);
//! let b = wgrad::Tensor::randn([3], &wgrad::Device::Cpu).to_vec().unwrap();
//! assert_eq!(a, b);
//! ```

use chacha20::ChaCha12Rng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;

/// The seed every thread's default generator starts from, so that a program
/// that never calls [`manual_seed`] is still reproducible.
pub const DEFAULT_SEED: u64 = 0x5eed;

/// A seedable source of random tensors and dropout keys: ChaCha12 (rand's
/// `StdRng` algorithm, used directly so that streams are portable and the
/// state can be saved).
pub struct Generator {
    seed: u64,
    rng: ChaCha12Rng,
    dropout_calls: u64,
}

/// Everything that determines a [`Generator`]'s future output: what a
/// checkpoint saves so that a resumed run draws what an uninterrupted one
/// would have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneratorState {
    /// The seed the generator was created with.
    pub seed: u64,
    /// How many 32-bit words of its stream it has used.
    pub word_pos: u128,
    /// How many dropout keys it has handed out.
    pub dropout_calls: u64,
}

impl Generator {
    /// A generator whose whole stream is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Generator { seed, rng: ChaCha12Rng::seed_from_u64(seed), dropout_calls: 0 }
    }

    /// Its state, to restore with [`from_state`](Self::from_state).
    pub fn state(&self) -> GeneratorState {
        GeneratorState { seed: self.seed, word_pos: self.rng.get_word_pos(), dropout_calls: self.dropout_calls }
    }

    /// A generator in `state`: it draws exactly what the one `state` was
    /// taken from would have drawn next.
    pub fn from_state(state: GeneratorState) -> Self {
        let mut g = Generator::new(state.seed);
        g.rng.set_word_pos(state.word_pos);
        g.dropout_calls = state.dropout_calls;
        g
    }

    /// The seed this generator was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A uniform sample in `[0, 1)` with 24 random bits, the precision of f32.
    pub fn uniform(&mut self) -> f32 {
        (self.rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// A standard normal sample (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        // 1 - u lies in (0, 1], so the log is finite.
        let u1 = 1.0 - self.uniform() as f64;
        let u2 = self.uniform() as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// A uniform integer in `0..n` (n > 0), without modulo bias.
    pub fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.rng.next_u64();
            if v < zone {
                return (v % n) as usize;
            }
        }
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    /// The key of the next dropout call: a hash of (seed, call counter).
    pub fn next_dropout_key(&mut self) -> [u32; 2] {
        let c = self.dropout_calls;
        self.dropout_calls += 1;
        dropout_key(self.seed, c)
    }
}

thread_local! {
    static DEFAULT: RefCell<Generator> = RefCell::new(Generator::new(DEFAULT_SEED));
}

/// Reseeds the calling thread's default generator (random tensors, weight
/// init, shuffling and dropout keys), as `torch.manual_seed` does.
pub fn manual_seed(seed: u64) {
    DEFAULT.with(|g| *g.borrow_mut() = Generator::new(seed));
}

/// The state of the calling thread's default generator (see
/// [`GeneratorState`]).
pub fn default_generator_state() -> GeneratorState {
    DEFAULT.with(|g| g.borrow().state())
}

/// Puts the calling thread's default generator in `state`.
pub fn set_default_generator_state(state: GeneratorState) {
    DEFAULT.with(|g| *g.borrow_mut() = Generator::from_state(state));
}

/// Runs `f` with the calling thread's default generator. (A step being
/// captured that draws from it cannot be replayed: the draws would be
/// frozen; see [`crate::CapturedStep`].)
pub fn with_default_generator<R>(f: impl FnOnce(&mut Generator) -> R) -> R {
    crate::backend::gpu::capture::invalidate_any("the step draws random numbers on the host");
    DEFAULT.with(|g| f(&mut g.borrow_mut()))
}

/// The default generator's next dropout key (which a captured step draws
/// again at each replay).
pub(crate) fn next_dropout_key() -> [u32; 2] {
    DEFAULT.with(|g| g.borrow_mut().next_dropout_key())
}

/// A 32-bit integer hash with full avalanche (Chris Wellons' "lowbias32").
/// `shaders/elementwise.wgsl` has the same function (`mix32`, used by the
/// fused kernels' `op_dropout`); the two must agree bit for bit.
#[inline]
pub(crate) fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The per-call key of dropout call number `counter` under `seed`.
pub(crate) fn dropout_key(seed: u64, counter: u64) -> [u32; 2] {
    let k0 = mix32((seed as u32) ^ mix32((seed >> 32) as u32 ^ mix32(counter as u32 ^ mix32((counter >> 32) as u32))));
    let k1 = mix32(k0 ^ 0x9e37_79b9);
    [k0, k1]
}

/// The random bits of element `i` under a dropout key.
#[inline]
pub(crate) fn dropout_bits(key: [u32; 2], i: u32) -> u32 {
    mix32(mix32(i ^ key[0]) ^ key[1])
}

/// The integer threshold below which an element is dropped: `p · 2^32`,
/// compared as integers so both devices decide identically.
pub(crate) fn dropout_threshold(p: f32) -> u32 {
    ((p as f64) * 4294967296.0).round().min(u32::MAX as f64) as u32
}

/// Whether element `i` survives dropout with probability `p` under `key`.
#[inline]
pub(crate) fn dropout_keep(key: [u32; 2], threshold: u32, i: u32) -> bool {
    dropout_bits(key, i) >= threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix32_is_a_known_bijection() {
        // Reference values of lowbias32.
        assert_eq!(mix32(0), 0);
        assert_eq!(mix32(1), 0x6889_90c0);
        assert_eq!(mix32(0xdead_beef), 0xe628_c683);
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000u32 {
            assert!(seen.insert(mix32(i)));
        }
    }

    #[test]
    fn dropout_keeps_the_expected_fraction() {
        let key = dropout_key(42, 3);
        let t = dropout_threshold(0.2);
        let kept = (0..100_000u32).filter(|&i| dropout_keep(key, t, i)).count();
        // Binomial(1e5, 0.8): sd ≈ 126, so ±1000 is ~8 sd.
        assert!((kept as i64 - 80_000).abs() < 1000, "kept {kept}");
    }

    #[test]
    fn keys_differ_by_seed_and_counter() {
        assert_ne!(dropout_key(1, 0), dropout_key(2, 0));
        assert_ne!(dropout_key(1, 0), dropout_key(1, 1));
        assert_ne!(dropout_key(1 << 32, 0), dropout_key(0, 0));
    }

    #[test]
    fn a_restored_state_continues_the_stream() {
        let mut a = Generator::new(11);
        for _ in 0..37 {
            a.uniform();
        }
        a.next_dropout_key();
        let state = a.state();
        let mut b = Generator::from_state(state);
        for _ in 0..100 {
            assert_eq!(a.normal().to_bits(), b.normal().to_bits());
        }
        assert_eq!(a.next_dropout_key(), b.next_dropout_key());
        // The same stream as rand's StdRng from the same seed.
        let mut std = rand::rngs::StdRng::seed_from_u64(11);
        let mut ours = Generator::new(11);
        assert_eq!(
            (0..8).map(|_| std.next_u32()).collect::<Vec<_>>(),
            (0..8).map(|_| ours.rng.next_u32()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn generator_is_reproducible() {
        let mut a = Generator::new(9);
        let mut b = Generator::new(9);
        for _ in 0..100 {
            assert_eq!(a.normal().to_bits(), b.normal().to_bits());
        }
        let mut v: Vec<usize> = (0..50).collect();
        a.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }
}
