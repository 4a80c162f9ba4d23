// The element functions of generated (fused) kernels: one per op of the
// table in src/backend/gpu/fusion.rs, which writes each kernel's bindings,
// its per-element function and its entry point after this file. The math
// mirrors the CPU reference (src/backend/cpu/elementwise.rs, math.rs).
//
// IEEE-754 by construction: compilers may assume floats are finite (WGSL
// allows it, lavapipe does: it folds x - x to 0, and its min, max, exp and
// pow drop NaN). So each function computes the ordinary result and, where
// an input is NaN, ±∞ or a zero divisor, selects the IEEE result found with
// the prelude's bit tests, which no such assumption can fold away.

// `r`, or for a NaN input NaN, and for ±∞ the limits `at_pos`, `at_neg`.
fn special1(x: f32, r: f32, at_pos: f32, at_neg: f32) -> f32 {
    return select(r, select(select(at_pos, at_neg, sign_bit(x) != 0u), x, is_nan(x)), non_finite(x));
}

fn op_add(a: f32, b: f32) -> f32 {
    // Where an input is not finite: NaN for NaN or ∞ - ∞, else the ∞.
    let invalid = is_nan(a) || is_nan(b) || (is_inf(a) && is_inf(b) && sign_bit(a) != sign_bit(b));
    let special = select(select(b, a, is_inf(a)), nan(), invalid);
    return select(a + b, special, non_finite(a) || non_finite(b));
}

fn op_sub(a: f32, b: f32) -> f32 {
    return op_add(a, -b);
}

fn op_mul(a: f32, b: f32) -> f32 {
    // Where an input is not finite: NaN for NaN or ∞ · 0, else a signed ∞.
    let invalid = is_nan(a) || is_nan(b) || is_zero(a) || is_zero(b);
    let special = select(inf(sign_bit(a) ^ sign_bit(b)), nan(), invalid);
    return select(a * b, special, non_finite(a) || non_finite(b));
}

fn op_div(a: f32, b: f32) -> f32 {
    // Where an input is not finite or the divisor is zero: NaN for NaN,
    // ∞ / ∞ and 0 / 0; a signed ∞ for ∞ / x and x / 0; else (x / ∞) a
    // signed 0.
    let s = sign_bit(a) ^ sign_bit(b);
    let invalid = is_nan(a) || is_nan(b) || (is_inf(a) && is_inf(b)) || (is_zero(a) && is_zero(b));
    let special = select(select(bitcast<f32>(s), inf(s), is_inf(a) || is_zero(b)), nan(), invalid);
    return select(a / b, special, non_finite(a) || non_finite(b) || is_zero(b));
}

// NaN on either side wins; on ties, `a`.
fn op_max(a: f32, b: f32) -> f32 {
    return select(select(select(b, a, a >= b), b, is_nan(b)), a, is_nan(a));
}

fn op_min(a: f32, b: f32) -> f32 {
    return select(select(select(b, a, a <= b), b, is_nan(b)), a, is_nan(a));
}

// Comparisons: false with a NaN operand (and `ne` true), tested by bits.
fn ordered(a: f32, b: f32) -> bool {
    return !is_nan(a) && !is_nan(b);
}

fn op_lt(a: f32, b: f32) -> f32 {
    return select(0.0, 1.0, ordered(a, b) && a < b);
}

fn op_le(a: f32, b: f32) -> f32 {
    return select(0.0, 1.0, ordered(a, b) && a <= b);
}

fn op_gt(a: f32, b: f32) -> f32 {
    return select(0.0, 1.0, ordered(a, b) && a > b);
}

fn op_ge(a: f32, b: f32) -> f32 {
    return select(0.0, 1.0, ordered(a, b) && a >= b);
}

fn op_eq(a: f32, b: f32) -> f32 {
    return select(0.0, 1.0, ordered(a, b) && a == b);
}

fn op_ne(a: f32, b: f32) -> f32 {
    return 1.0 - op_eq(a, b);
}

// c ≠ 0 ? a : b, with a NaN condition counting as ≠ 0 (the bits decide).
fn op_where(c: f32, a: f32, b: f32) -> f32 {
    return select(b, a, (bitcast<u32>(c) & 0x7fffffffu) != 0u);
}

fn op_in_range(x: f32, lo: f32, hi: f32) -> f32 {
    return op_ge(x, lo) * op_ge(hi, x);
}

// eˣ with the CPU's range: ∞ above ln(f32::MAX), 0 below ln of the smallest
// normal float (GPUs flush subnormals).
fn op_exp(x: f32) -> f32 {
    let r = select(select(exp(x), 0.0, x < -87.33655), inf(0u), x > 88.72283);
    return special1(x, r, inf(0u), 0.0);
}

fn op_log(x: f32) -> f32 {
    let r = select(select(log(x), nan(), sign_bit(x) != 0u), inf(0x80000000u), is_zero(x));
    return special1(x, r, inf(0u), nan());
}

fn op_sqrt(x: f32) -> f32 {
    let r = select(sqrt(x), nan(), sign_bit(x) != 0u && !is_zero(x));
    return special1(x, r, inf(0u), nan());
}

fn op_abs(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) & 0x7fffffffu);
}

// -1, 0 or 1; NaN for NaN.
fn op_sign(x: f32) -> f32 {
    return select(select(select(1.0, -1.0, sign_bit(x) != 0u), 0.0, is_zero(x)), x, is_nan(x));
}

fn op_relu(x: f32) -> f32 {
    return select(x, 0.0, !is_nan(x) && (sign_bit(x) != 0u || is_zero(x)));
}

// Abramowitz & Stegun 7.1.26, as the CPU's erf.
fn erf(v: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(v));
    let poly = t * (0.2548296 + t * (-0.28449674 + t * (1.4214137 + t * (-1.4531521 + t * 1.0614054))));
    let r = 1.0 - poly * op_exp(-v * v);
    return select(r, -r, v < 0.0);
}

fn op_sigmoid(x: f32) -> f32 {
    // Exponentiates -|x|, never a positive number.
    let e = op_exp(-abs(x));
    let r = select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
    return special1(x, r, 1.0, 0.0);
}

fn op_tanh(x: f32) -> f32 {
    let e = op_exp(-2.0 * abs(x));
    let t = (1.0 - e) / (1.0 + e);
    return special1(x, select(t, -t, x < 0.0), 1.0, -1.0);
}

// x·Φ(x); at -∞ the CPU's formula gives -∞ · 0 = NaN.
fn op_gelu(x: f32) -> f32 {
    return special1(x, 0.5 * x * (1.0 + erf(x * 0.70710678)), inf(0u), nan());
}

// d gelu(x) / dx; at ±∞ the CPU's formula gives ±∞ · 0 = NaN.
fn op_gelu_grad(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * 0.70710678));
    return special1(x, cdf + x * op_exp(-0.5 * x * x) * 0.3989423, nan(), nan());
}

// x/2 · (1 + tanh(√(2/π)·(x + 0.044715·x³))), GELU's tanh approximation; at
// -∞ the CPU's formula gives -∞ · 0 = NaN, as for op_gelu. x is clamped to
// ±10 inside the tanh (and the slope's polynomial), where the tanh is ±1
// in f32 already, so nothing overflows (src/backend/cpu/math.rs does the same).
fn op_gelu_tanh(x: f32) -> f32 {
    let c = clamp(x, -10.0, 10.0);
    let t = op_tanh(0.7978846 * (c + 0.044715 * c * c * c));
    return special1(x, 0.5 * x * (1.0 + t), inf(0u), nan());
}

// d gelu_tanh(x) / dx; at ±∞ the CPU's formula gives ±∞ · 0 = NaN.
fn op_gelu_tanh_grad(x: f32) -> f32 {
    let c = clamp(x, -10.0, 10.0);
    let t = op_tanh(0.7978846 * (c + 0.044715 * c * c * c));
    let d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978846 * (1.0 + 0.134145 * c * c);
    return special1(x, d, nan(), nan());
}

// xᵖ with C's pow semantics (Rust's powf): every special case of its
// table, and negative bases with integer exponents, where WGSL's pow is
// undefined.
fn op_pow(x: f32, p: f32) -> f32 {
    if is_zero(p) || bitcast<u32>(x) == 0x3f800000u {
        return 1.0;
    }
    if is_nan(x) || is_nan(p) {
        return nan();
    }
    let ax = op_abs(x);
    let integer = !is_inf(p) && p == floor(p);
    // Integers of 2^24 and more are even.
    let odd = integer && abs(p) < 16777216.0 && (i32(p) & 1) != 0;
    let negative_p = sign_bit(p) != 0u;
    if is_inf(p) {
        if ax == 1.0 {
            return 1.0;
        }
        return select(0.0, inf(0u), (ax > 1.0) != negative_p);
    }
    // ±0 and ±∞ bases: a signed zero or infinity, signed for odd p.
    let s = select(0u, sign_bit(x), odd);
    if is_zero(x) {
        return select(bitcast<f32>(s), inf(s), negative_p);
    }
    if is_inf(x) {
        return select(inf(s), bitcast<f32>(s), negative_p);
    }
    if sign_bit(x) != 0u && !integer {
        return nan();
    }
    let e = p * log2(ax);
    var r = exp2(e);
    if e >= 128.0 {
        r = inf(0u);
    } else if e < -149.0 {
        r = 0.0;
    }
    return bitcast<f32>(bitcast<u32>(r) | s);
}

// Chris Wellons' lowbias32: the CPU's (src/rng.rs) bit for bit.
fn mix32(v: u32) -> u32 {
    var h = v;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

// Inverted dropout of element e: x · scale where the call's key keeps it,
// x · 0 where not (a dropped NaN or infinity stays visible as NaN, as in
// PyTorch). One seed drops the same elements on both devices.
fn op_dropout(x: f32, e: u32, key0: u32, key1: u32, threshold: u32, scale: f32) -> f32 {
    let keep = mix32(mix32(e ^ key0) ^ key1) >= threshold;
    return x * select(0.0, scale, keep);
}
