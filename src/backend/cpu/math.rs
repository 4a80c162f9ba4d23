//! Scalar math the CPU kernels share, written so loops of it vectorise:
//! exp, erf and the activations built on them, and row statistics.
//! `shaders/elementwise.wgsl` evaluates the same formulas on the GPU.

/// eˣ by Cephes' `expf` polynomial after range reduction: within 2 ulp of
/// the C library's `expf` over f32's normal range, and branch-free, so loops
/// of it vectorise (libm's `expf` is a call per element). Results below the
/// normal range flush to 0, as GPUs do; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LO: f32 = -87.336_55; // ln of the smallest normal f32
    const HI: f32 = 88.722_83; // ln of f32::MAX
    // Adding 1.5·2²³ leaves a float's nearest integer in the low mantissa
    // bits (exact for |v| < 2²²).
    const MAGIC: f32 = 12_582_912.0;
    let c = x.clamp(LO, HI);
    // floor(c·log2 e + 0.5), without f32::floor (a libm call on baseline
    // x86-64) or an `as` conversion to an integer (Rust's saturates, and
    // its per-lane compares and selects left loops of exp scalar).
    let t = c * std::f32::consts::LOG2_E + 0.5;
    let rounded = (t + MAGIC) - MAGIC;
    let n = if rounded > t { rounded - 1.0 } else { rounded };
    // c - n·ln 2, with ln 2 split in two for precision.
    let r = c - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    // 2ⁿ in two halves, so n = 128 does not overflow the exponent field.
    // n's bits come from the same trick (wrapping: a NaN's are garbage, and
    // its y is NaN whatever they scale it by).
    let n = ((n + MAGIC).to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let half = n >> 1;
    let pow2 = |e: i32| f32::from_bits((e.wrapping_add(127) as u32) << 23);
    let v = y * pow2(half) * pow2(n.wrapping_sub(half));
    let v = if x > HI { f32::INFINITY } else { v };
    if x < LO { 0.0 } else { v }
}

/// tanh through one exponential of a non-positive number (no overflow).
#[inline(always)]
pub(super) fn tanh(x: f32) -> f32 {
    let e = exp(-2.0 * x.abs());
    let t = (1.0 - e) / (1.0 + e);
    if x < 0.0 { -t } else { t }
}

/// erf(x), Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-x * x);
    if x < 0.0 { -y } else { y }
}

#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    // Never exponentiates a positive number, so it never overflows; one
    // exp and a select of cheap values, so loops of it vectorise.
    let e = exp(-x.abs());
    let r = 1.0 / (1.0 + e);
    if x >= 0.0 { r } else { e * r }
}

#[inline(always)]
pub(super) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
pub(super) fn gelu_grad(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = exp(-0.5 * x * x) * 0.398_942_3; // 1/sqrt(2π)
    cdf + x * pdf
}

/// √(2/π), and the cubic term's coefficient, of GELU's tanh approximation.
const GELU_TANH_K: f32 = 0.797_884_6;
const GELU_TANH_C: f32 = 0.044_715;

/// Past ±10 the tanh is ±1 in f32 already: `x` is clamped there inside the
/// tanh and the slope's polynomial, so nothing overflows (x³ would past
/// ~7e12, the slope's x² past ~1.8e19, where ∞·0 made NaN) and every value
/// within ±10 is unchanged.
const GELU_TANH_FLAT: f32 = 10.0;

#[inline(always)]
pub(super) fn gelu_tanh(x: f32) -> f32 {
    let c = x.clamp(-GELU_TANH_FLAT, GELU_TANH_FLAT);
    0.5 * x * (1.0 + tanh(GELU_TANH_K * (c + GELU_TANH_C * c * c * c)))
}

#[inline(always)]
pub(super) fn gelu_tanh_grad(x: f32) -> f32 {
    let c = x.clamp(-GELU_TANH_FLAT, GELU_TANH_FLAT);
    let t = tanh(GELU_TANH_K * (c + GELU_TANH_C * c * c * c));
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_TANH_K * (1.0 + 3.0 * GELU_TANH_C * c * c)
}

/// Maximum that propagates NaN, as PyTorch's reductions do: once the
/// running maximum `a` is NaN it stays NaN.
#[inline]
pub(super) fn nan_max(a: f32, b: f32) -> f32 {
    if b.is_nan() || b > a { b } else { a }
}

/// Minimum that propagates NaN (see [`nan_max`]).
#[inline]
pub(super) fn nan_min(a: f32, b: f32) -> f32 {
    if b.is_nan() || b < a { b } else { a }
}

/// Largest element (ignoring NaN), with eight partial maxima so it vectorises.
pub(super) fn row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = row.chunks_exact(8);
    let rest = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    acc.iter().fold(rest, |m, &v| m.max(v))
}

/// Sum with eight partial sums: vectorises, and is more accurate than one
/// running total on long rows.
pub(super) fn row_sum(row: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + rest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0u32;
        let mut x = -87.3f32;
        while x < 88.7 {
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(a.to_bits().abs_diff(b.to_bits()));
            x += 0.000_731;
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(
            (exp(88.72) - 88.72f32.exp()).abs()
                <= 2.0 * (88.72f32.exp() - f32::from_bits(88.72f32.exp().to_bits() - 1))
        );
    }

    /// `exp` as first written, with float-to-integer casts: the rounding
    /// trick that replaced them must give the same bits.
    fn exp_by_casts(x: f32) -> f32 {
        let c = x.clamp(-87.336_55, 88.722_83);
        let t = c * std::f32::consts::LOG2_E + 0.5;
        let n = (t as i32) as f32;
        let n = if n > t { n - 1.0 } else { n };
        let r = c - n * 0.693_359_4 + n * 2.121_944_4e-4;
        let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
            + 1.666_666_5e-1)
            * r
            + 0.5;
        let y = p * r * r + r + 1.0;
        let n = n as i32;
        let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
        let v = y * pow2(n >> 1) * pow2(n - (n >> 1));
        let v = if x > 88.722_83 { f32::INFINITY } else { v };
        if x < -87.336_55 { 0.0 } else { v }
    }

    #[test]
    fn exp_keeps_its_bits() {
        // Every 997th bit pattern (both signs, subnormals, ±∞ and NaNs
        // with their payloads among them), and the range's edges.
        let edges = [0.0f32, -0.0, 88.722_83, -87.336_55, 88.73, -87.34, f32::INFINITY, f32::NEG_INFINITY, 0.5, -0.5];
        let sweep = (0..u32::MAX / 997).map(|k| f32::from_bits(k * 997));
        for x in sweep.chain(edges) {
            let (a, b) = (exp(x), exp_by_casts(x));
            assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "exp({x:e}): {a:e} vs {b:e}");
        }
    }

    #[test]
    fn erf_matches_known_values() {
        // erf(0.5), erf(1), erf(2) to 8 digits.
        for (x, want) in [(0.5f32, 0.520_499_9f32), (1.0, 0.842_700_8), (2.0, 0.995_322_3), (0.0, 0.0)] {
            assert!((erf(x) - want).abs() < 3e-7, "erf({x}) = {}", erf(x));
            assert!((erf(-x) + want).abs() < 3e-7);
        }
    }
}
