//! Elementwise kernels: unary functions, binary functions with broadcasting,
//! fill and dropout. NaN and infinity follow IEEE-754 and PyTorch: every
//! function of a NaN is NaN (comparisons and masks give 0).

use super::math::{exp, gelu, gelu_grad, gelu_tanh, gelu_tanh_grad, sigmoid, tanh};
use super::simd::{fill_chunks, for_rows, map};
use super::{output, output_overwritten, row_offset};
use crate::Result;
use crate::backend::{BinaryOp, UnaryOp};
use crate::rng;
use crate::shape::{Strided, coalesce};

#[allow(clippy::redundant_closure)]
pub(super) fn unary(op: UnaryOp, x: &[f32]) -> Result<Vec<f32>> {
    use UnaryOp::*;
    // Closures, not function items: a function item reaches `map` as a
    // call through `Fn::call` that was not inlined into the vectorised
    // loop (a GELU ran one scalar call per element).
    match op {
        Neg => map(x, |v| -v),
        Exp => map(
            x,
            #[inline(always)]
            |v| exp(v),
        ),
        Log => map(
            x,
            #[inline(always)]
            |v| v.ln(),
        ),
        Sqrt => map(
            x,
            #[inline(always)]
            |v| v.sqrt(),
        ),
        Abs => map(
            x,
            #[inline(always)]
            |v| v.abs(),
        ),
        Sign => map(x, |v| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                // ±0 → 0, NaN → NaN.
                v * 0.0
            }
        }),
        // `v <= 0` is false for NaN, which passes through.
        Relu => map(x, |v| if v <= 0.0 { 0.0 } else { v }),
        Sigmoid => map(
            x,
            #[inline(always)]
            |v| sigmoid(v),
        ),
        Tanh => map(
            x,
            #[inline(always)]
            |v| tanh(v),
        ),
        Gelu => map(
            x,
            #[inline(always)]
            |v| gelu(v),
        ),
        GeluGrad => map(
            x,
            #[inline(always)]
            |v| gelu_grad(v),
        ),
        GeluTanh => map(
            x,
            #[inline(always)]
            |v| gelu_tanh(v),
        ),
        GeluTanhGrad => map(
            x,
            #[inline(always)]
            |v| gelu_tanh_grad(v),
        ),
        AddScalar(s) => map(x, |v| v + s),
        MulScalar(s) => map(x, |v| v * s),
        PowScalar(p) => map(x, |v| v.powf(p)),
        // NaN on either side gives NaN.
        MaxScalar(s) => map(x, |v| if v.is_nan() || v >= s { v } else { s }),
        MinScalar(s) => map(x, |v| if v.is_nan() || v <= s { v } else { s }),
        CmpScalar(c, s) => map(x, |v| if c.holds(v, s) { 1.0 } else { 0.0 }),
        InRange(lo, hi) => map(x, |v| if v >= lo && v <= hi { 1.0 } else { 0.0 }),
    }
}

/// `grad · (x > 0 ? 1 : 0)` in one pass: what the mask and the product
/// computed, bit for bit.
pub(super) fn relu_backward(grad: &[f32], x: &[f32]) -> Result<Vec<f32>> {
    let mut out = output_overwritten(x.len())?;
    fill_chunks(
        &mut out,
        #[inline(always)]
        |start, chunk| {
            let (g, x) = (&grad[start..][..chunk.len()], &x[start..][..chunk.len()]);
            for ((o, &g), &x) in chunk.iter_mut().zip(g).zip(x) {
                *o = g * if x > 0.0 { 1.0 } else { 0.0 };
            }
        },
    );
    Ok(out)
}

pub(super) fn binary(op: BinaryOp, a: (&[f32], &Strided), b: (&[f32], &Strided)) -> Result<Vec<f32>> {
    match op {
        BinaryOp::Add => binary_loop(a, b, |x, y| x + y),
        BinaryOp::Sub => binary_loop(a, b, |x, y| x - y),
        BinaryOp::Mul => binary_loop(a, b, |x, y| x * y),
        BinaryOp::Div => binary_loop(a, b, |x, y| x / y),
        // NaN on either side gives NaN; on ties, `a`.
        BinaryOp::Max => binary_loop(a, b, |x, y| if x.is_nan() || x >= y { x } else { y }),
        BinaryOp::Min => binary_loop(a, b, |x, y| if x.is_nan() || x <= y { x } else { y }),
        BinaryOp::Cmp(c) => binary_loop(a, b, |x, y| if c.holds(x, y) { 1.0 } else { 0.0 }),
    }
}

/// `c ≠ 0 ? a : b` (NaN counts as ≠ 0).
pub(super) fn select(c: (&[f32], &Strided), a: (&[f32], &Strided), b: (&[f32], &Strided)) -> Result<Vec<f32>> {
    let n: usize = c.1.dims.iter().product();
    let mut out = output_overwritten(n)?;
    if c.1.is_contiguous() && a.1.is_contiguous() && b.1.is_contiguous() {
        fill_chunks(
            &mut out,
            #[inline(always)]
            |start, chunk| {
                let (cs, as_, bs) = (&c.0[start..], &a.0[start..], &b.0[start..]);
                for (j, o) in chunk.iter_mut().enumerate() {
                    *o = if cs[j] != 0.0 { as_[j] } else { bs[j] };
                }
            },
        );
        return Ok(out);
    }
    let mut strides = vec![c.1.strides.clone(), a.1.strides.clone(), b.1.strides.clone()];
    let dims = coalesce(&c.1.dims, &mut strides);
    let row_len = dims[dims.len() - 1];
    let last = |s: &[usize]| s[s.len() - 1];
    let steps = [last(&strides[0]), last(&strides[1]), last(&strides[2])];
    let offsets = [c.1.offset, a.1.offset, b.1.offset];
    let data = [c.0, a.0, b.0];
    for_rows(
        &mut out,
        row_len,
        #[inline(always)]
        |r, row| {
            let at = [0, 1, 2].map(|k| offsets[k] + row_offset(&dims, &strides[k], r));
            for (j, o) in row.iter_mut().enumerate() {
                let cv = data[0][at[0] + j * steps[0]];
                *o = if cv != 0.0 { data[1][at[1] + j * steps[1]] } else { data[2][at[2] + j * steps[2]] };
            }
        },
    );
    Ok(out)
}

fn binary_loop(a: (&[f32], &Strided), b: (&[f32], &Strided), f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Vec<f32>> {
    let n: usize = a.1.dims.iter().product();
    let mut out = output_overwritten(n)?;
    if a.1.is_contiguous() && b.1.is_contiguous() {
        fill_chunks(
            &mut out,
            #[inline(always)]
            |start, chunk| {
                for ((o, &x), &y) in chunk.iter_mut().zip(&a.0[start..]).zip(&b.0[start..]) {
                    *o = f(x, y);
                }
            },
        );
        return Ok(out);
    }
    let mut strides = vec![a.1.strides.clone(), b.1.strides.clone()];
    let dims = coalesce(&a.1.dims, &mut strides);
    let (sa, sb) = (&strides[0], &strides[1]);
    let row_len = *dims.last().expect("coalesce keeps at least one axis");
    let (ia, ib) = (sa[sa.len() - 1], sb[sb.len() - 1]);
    let (xa, xb) = (a.0, b.0);
    let (oa, ob) = (a.1.offset, b.1.offset);
    for_rows(
        &mut out,
        row_len,
        #[inline(always)]
        |r, row| {
            let pa = oa + row_offset(&dims, sa, r);
            let pb = ob + row_offset(&dims, sb, r);
            // The three cases a broadcast bias or scalar produces, as slices so
            // they vectorise; anything else strides.
            match (ia, ib) {
                (1, 1) => {
                    for ((o, &x), &y) in row.iter_mut().zip(&xa[pa..]).zip(&xb[pb..]) {
                        *o = f(x, y);
                    }
                }
                (1, 0) => {
                    let y = xb[pb];
                    for (o, &x) in row.iter_mut().zip(&xa[pa..]) {
                        *o = f(x, y);
                    }
                }
                (0, 1) => {
                    let x = xa[pa];
                    for (o, &y) in row.iter_mut().zip(&xb[pb..]) {
                        *o = f(x, y);
                    }
                }
                _ => {
                    for (j, o) in row.iter_mut().enumerate() {
                        *o = f(xa[pa + j * ia], xb[pb + j * ib]);
                    }
                }
            }
        },
    );
    Ok(out)
}

pub(super) fn full(n: usize, value: f32) -> Result<Vec<f32>> {
    if value == 0.0 && value.is_sign_positive() {
        return output(n);
    }
    let mut out = output_overwritten(n)?;
    fill_chunks(&mut out, |_, chunk| chunk.fill(value));
    Ok(out)
}

/// `x · keep(i) / (1 - p)`: a dropped element is `x · 0`, so NaN and
/// infinity stay visible (NaN), as in PyTorch.
pub(super) fn dropout(x: &[f32], p: f32, key: [u32; 2]) -> Result<Vec<f32>> {
    let threshold = rng::dropout_threshold(p);
    let scale = 1.0 / (1.0 - p);
    let mut out = output_overwritten(x.len())?;
    fill_chunks(
        &mut out,
        #[inline(always)]
        |start, chunk| {
            for (j, (o, &v)) in chunk.iter_mut().zip(&x[start..]).enumerate() {
                // The factor by a bit mask, not a branch, so the loop
                // vectorises: scale where kept, +0 where dropped.
                let keep = rng::dropout_keep(key, threshold, (start + j) as u32);
                *o = v * f32::from_bits(scale.to_bits() & (keep as u32).wrapping_neg());
            }
        },
    );
    Ok(out)
}
