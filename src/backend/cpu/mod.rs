//! The CPU backend: the reference every GPU kernel and gradient is checked
//! against, and the CPU side of the CPU-vs-GPU comparison.
//!
//! Kernels are plain loops over contiguous slices, written so the compiler
//! vectorises the common cases (contiguous operands, a broadcast row such as a
//! bias). Loops and products from a few tens of microseconds up are split
//! over the cores by [`pool`], whose workers stay awake between the pieces of
//! a training step; matmul goes to the `gemm` crate, whose packed GEMM matches
//! OpenBLAS on the machines we measured (see Cargo.toml).

use super::{AxisView, Backend, BinaryOp, MatmulSpec, ReduceOp, Storage, UnaryOp, UpdateRule};
use crate::Result;
use crate::rng;
use crate::shape::{Strided, coalesce};
use pool::Chunks;

mod pool;
pub(crate) use pool::threads;

/// The CPU backend. It has no state: all of it is in the storages.
pub(crate) struct Cpu;

/// Loops shorter than this stay on one thread: splitting them costs more than
/// it saves (a fork to a spinning worker costs about a microsecond).
const PAR_MIN: usize = 1 << 15;
/// Elements per parallel chunk.
const CHUNK: usize = 1 << 13;
/// Multiply-adds from which a matmul is split over the cores.
const PAR_MATMUL_MACS: usize = 1 << 19;

/// Runs `body` compiled for the widest vector instructions this CPU has,
/// detected at run time: the crate itself is built for baseline x86-64
/// (SSE2), which would leave the loops 4 lanes wide. `body` is inlined into
/// a function with the wider target features, so its loops vectorise for
/// them. Elsewhere, or on older CPUs, it runs as built.
#[inline(always)]
fn simd<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static LEVEL: OnceLock<u8> = OnceLock::new();
        let level = *LEVEL.get_or_init(|| {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") {
                2
            } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                1
            } else {
                0
            }
        });
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        fn avx512<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        // SAFETY: the features were detected on this CPU just above.
        match level {
            2 => return unsafe { avx512(body) },
            1 => return unsafe { avx2(body) },
            _ => {}
        }
    }
    body()
}

/// Fills `out` by calling `f(start, chunk)` on consecutive chunks, over all
/// cores when `out` is large.
fn fill_chunks(out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    if out.len() >= PAR_MIN {
        let chunks = Chunks::new(out, CHUNK);
        // SAFETY: task c takes piece c only.
        pool::run(chunks.count(), &|c| {
            let chunk = unsafe { chunks.get(c) };
            simd(
                #[inline(always)]
                || f(c * CHUNK, chunk),
            )
        });
    } else {
        simd(
            #[inline(always)]
            || f(0, out),
        );
    }
}

/// Runs `f(row, out_row)` for each `row_len`-long row of `out`, over all
/// cores when `out` is large.
fn for_rows(out: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if row_len == 0 {
        return;
    }
    let rows = out.len() / row_len;
    if out.len() >= PAR_MIN && rows > 1 {
        // Whole rows per task, about CHUNK elements each.
        let per_task = (CHUNK / row_len).clamp(1, rows.div_ceil(2));
        let chunks = Chunks::new(out, per_task * row_len);
        // SAFETY: task c takes piece c only.
        pool::run(chunks.count(), &|c| {
            let chunk = unsafe { chunks.get(c) };
            simd(
                #[inline(always)]
                || chunk.chunks_mut(row_len).enumerate().for_each(|(r, row)| f(c * per_task + r, row)),
            )
        });
    } else {
        simd(
            #[inline(always)]
            || out.chunks_mut(row_len).enumerate().for_each(|(r, row)| f(r, row)),
        );
    }
}

fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    fill_chunks(
        &mut out,
        #[inline(always)]
        |start, chunk| {
            for (o, &v) in chunk.iter_mut().zip(&x[start..]) {
                *o = f(v);
            }
        },
    );
    out
}

/// eˣ by Cephes' `expf` polynomial after range reduction: within 2 ulp of
/// the C library's `expf` over f32's normal range, and branch-free, so loops
/// of it vectorise (libm's `expf` is a call per element). Results below the
/// normal range flush to 0, as GPUs do.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LO: f32 = -87.336_55; // ln of the smallest normal f32
    const HI: f32 = 88.722_83; // ln of f32::MAX
    let c = x.clamp(LO, HI);
    // floor(c·log2 e + 0.5), by truncation: f32::floor is a libm call on
    // baseline x86-64 and would stop the loop vectorising.
    let t = c * std::f32::consts::LOG2_E + 0.5;
    let n = (t as i32) as f32;
    let n = if n > t { n - 1.0 } else { n };
    // c - n·ln 2, with ln 2 split in two for precision.
    let r = c - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    // 2ⁿ in two halves, so n = 128 does not overflow the exponent field.
    let n = n as i32;
    let half = n >> 1;
    let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    let v = y * pow2(half) * pow2(n - half);
    let v = if x > HI { f32::INFINITY } else { v };
    if x < LO { 0.0 } else { v }
}

/// Largest element (ignoring NaN), with eight partial maxima so it vectorises.
fn row_max(row: &[f32]) -> f32 {
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
fn row_sum(row: &[f32]) -> f32 {
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

/// tanh through one exponential of a non-positive number (no overflow),
/// the formula shaders/elementwise.wgsl uses.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    let e = exp(-2.0 * x.abs());
    let t = (1.0 - e) / (1.0 + e);
    if x < 0.0 { -t } else { t }
}

/// erf(x), Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7).
/// `shaders/elementwise.wgsl` evaluates the same polynomial.
#[inline]
pub(crate) fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-x * x);
    if x < 0.0 { -y } else { y }
}

#[inline]
pub(crate) fn sigmoid(x: f32) -> f32 {
    // Never exponentiates a positive number, so it never overflows.
    if x >= 0.0 {
        1.0 / (1.0 + exp(-x))
    } else {
        let e = exp(x);
        e / (1.0 + e)
    }
}

#[inline]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline]
fn gelu_grad(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = exp(-0.5 * x * x) * 0.398_942_3; // 1/sqrt(2π)
    cdf + x * pdf
}

/// Maximum that propagates NaN, as PyTorch's reductions do.
#[inline]
fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b > a { b } else { a }
}

fn unary_slice(op: UnaryOp, x: &[f32]) -> Vec<f32> {
    use UnaryOp::*;
    match op {
        Neg => map(x, |v| -v),
        Exp => map(x, exp),
        Log => map(x, f32::ln),
        Sqrt => map(x, f32::sqrt),
        Abs => map(x, f32::abs),
        Sign => map(x, |v| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                0.0
            }
        }),
        Relu => map(x, |v| if v > 0.0 { v } else { 0.0 }),
        Sigmoid => map(x, sigmoid),
        Tanh => map(x, tanh),
        Gelu => map(x, gelu),
        GeluGrad => map(x, gelu_grad),
        AddScalar(s) => map(x, |v| v + s),
        MulScalar(s) => map(x, |v| v * s),
        PowScalar(p) => map(x, |v| v.powf(p)),
        MaxScalar(s) => map(x, |v| if v.is_nan() { v } else { v.max(s) }),
        MinScalar(s) => map(x, |v| if v.is_nan() { v } else { v.min(s) }),
        GtScalar(s) => map(x, |v| if v > s { 1.0 } else { 0.0 }),
        InRange(lo, hi) => map(x, |v| if v >= lo && v <= hi { 1.0 } else { 0.0 }),
    }
}

/// Offset of the first element of row `row` (rows are the last dimension).
#[inline]
fn row_offset(dims: &[usize], strides: &[usize], mut row: usize) -> usize {
    let mut at = 0;
    for (&d, &s) in dims[..dims.len() - 1].iter().zip(strides).rev() {
        at += (row % d) * s;
        row /= d;
    }
    at
}

fn binary_loop(a: (&[f32], &Strided), b: (&[f32], &Strided), f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let n: usize = a.1.dims.iter().product();
    let mut out = vec![0.0; n];
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
        return out;
    }
    let mut strides = vec![a.1.strides.clone(), b.1.strides.clone()];
    let dims = coalesce(&a.1.dims, &mut strides);
    let (sa, sb) = (&strides[0], &strides[1]);
    let row_len = *dims.last().unwrap();
    let (ia, ib) = (*sa.last().unwrap(), *sb.last().unwrap());
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
    out
}

fn check_index(v: f32, len: usize, op: &str) -> usize {
    let i = v as usize;
    assert!(v >= 0.0 && v.fract() == 0.0 && i < len, "{op}: index {v} out of range for an axis of size {len}");
    i
}

impl Backend for Cpu {
    fn upload(&self, data: &[f32]) -> Storage {
        Storage::Cpu(data.to_vec())
    }

    fn upload_vec(&self, data: Vec<f32>) -> Storage {
        Storage::Cpu(data)
    }

    fn to_vec(&self, x: &Storage, n: usize) -> Result<Vec<f32>> {
        Ok(x.cpu()[..n].to_vec())
    }

    fn full(&self, n: usize, value: f32) -> Storage {
        Storage::Cpu(vec![value; n])
    }

    fn unary(&self, op: UnaryOp, x: &Storage, n: usize) -> Storage {
        Storage::Cpu(unary_slice(op, &x.cpu()[..n]))
    }

    fn binary(&self, op: BinaryOp, a: (&Storage, &Strided), b: (&Storage, &Strided)) -> Storage {
        let (a, b) = ((a.0.cpu(), a.1), (b.0.cpu(), b.1));
        Storage::Cpu(match op {
            BinaryOp::Add => binary_loop(a, b, |x, y| x + y),
            BinaryOp::Sub => binary_loop(a, b, |x, y| x - y),
            BinaryOp::Mul => binary_loop(a, b, |x, y| x * y),
            BinaryOp::Div => binary_loop(a, b, |x, y| x / y),
            BinaryOp::Max => binary_loop(a, b, |x, y| if x.is_nan() || x >= y { x } else { y }),
            BinaryOp::Min => binary_loop(a, b, |x, y| if x.is_nan() || x <= y { x } else { y }),
            BinaryOp::Ge => binary_loop(a, b, |x, y| if x >= y { 1.0 } else { 0.0 }),
            BinaryOp::Eq => binary_loop(a, b, |x, y| if x == y { 1.0 } else { 0.0 }),
        })
    }

    fn reduce(&self, op: ReduceOp, x: &Storage, v: AxisView) -> Storage {
        let x = x.cpu();
        let AxisView { outer, len, inner } = v;
        let mut out = vec![0.0; outer * inner];
        if inner == 0 {
            return Storage::Cpu(out);
        }
        for_rows(
            &mut out,
            inner,
            #[inline(always)]
            |o, row| {
                let block = &x[o * len * inner..(o + 1) * len * inner];
                match op {
                    ReduceOp::Sum if inner == 1 => {
                        // Eight partial sums: vectorises, and sums long rows
                        // more accurately than one running total.
                        let mut acc = [0f32; 8];
                        let chunks = block.chunks_exact(8);
                        let rest: f32 = chunks.remainder().iter().sum();
                        for c in chunks {
                            for (a, &v) in acc.iter_mut().zip(c) {
                                *a += v;
                            }
                        }
                        row[0] = acc.iter().sum::<f32>() + rest;
                    }
                    ReduceOp::Sum => {
                        for l in 0..len {
                            for (r, &v) in row.iter_mut().zip(&block[l * inner..]) {
                                *r += v;
                            }
                        }
                    }
                    ReduceOp::Max => {
                        row.copy_from_slice(&block[..inner]);
                        for l in 1..len {
                            for (r, &v) in row.iter_mut().zip(&block[l * inner..]) {
                                *r = nan_max(*r, v);
                            }
                        }
                        if len == 0 {
                            row.fill(f32::NEG_INFINITY);
                        }
                    }
                    ReduceOp::ArgMax => {
                        for (i, r) in row.iter_mut().enumerate() {
                            let mut best = 0;
                            let mut best_v = f32::NEG_INFINITY;
                            for l in 0..len {
                                let v = block[l * inner + i];
                                if l == 0 || (!best_v.is_nan() && (v > best_v || v.is_nan())) {
                                    best = l;
                                    best_v = v;
                                }
                            }
                            *r = best as f32;
                        }
                    }
                }
            },
        );
        Storage::Cpu(out)
    }

    fn matmul(&self, a: &Storage, b: &Storage, s: MatmulSpec) -> Storage {
        let (a, b) = (a.cpu(), b.cpu());
        let mut out = vec![0.0; s.batch * s.m * s.n];
        if s.k == 0 || s.m == 0 || s.n == 0 {
            return Storage::Cpu(out);
        }
        // Row and column strides of the stored operands.
        let (rsa, csa) = if s.trans_a { (1, s.m) } else { (s.k, 1) };
        let (rsb, csb) = if s.trans_b { (1, s.k) } else { (s.n, 1) };
        let macs = s.m * s.n * s.k;
        for (i, c) in out.chunks_mut(s.m * s.n).enumerate() {
            let pa = &a[i * s.a_batch_stride..];
            let pb = &b[i * s.b_batch_stride..];
            assert!(pa.len() >= s.m * s.k && pb.len() >= s.k * s.n, "matmul: operand too short");
            let cptr = OutPtr(c.as_mut_ptr());
            // Rows m0..m1 and columns n0..n1 of C.
            let block = |(m0, m1): (usize, usize), (n0, n1): (usize, usize)| {
                // SAFETY: the asserts above bound every element the strides
                // can reach (the largest offsets are (m-1)·rs + (k-1)·cs <
                // m·k and likewise for B); this block of C is written by this
                // call alone, and C is a distinct, exactly sized buffer.
                unsafe {
                    gemm::gemm(
                        m1 - m0,
                        n1 - n0,
                        s.k,
                        cptr.at(m0 * s.n + n0),
                        1,
                        s.n as isize,
                        false,
                        pa.as_ptr().add(m0 * rsa),
                        csa as isize,
                        rsa as isize,
                        pb.as_ptr().add(n0 * csb),
                        csb as isize,
                        rsb as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            };
            let threads = pool::threads();
            if macs < PAR_MATMUL_MACS || threads == 1 {
                block((0, s.m), (0, s.n));
                continue;
            }
            // Cut the longer side of C into blocks, a multiple of 16 wide
            // (the microkernels' width); more blocks than threads for large
            // products, so a thread the VM preempts does not hold up the rest.
            let per_thread = if macs >= 1 << 25 { 4 } else { 1 };
            let long = s.m.max(s.n);
            let width = long.div_ceil(threads * per_thread).next_multiple_of(16);
            let blocks = long.div_ceil(width);
            let span = |i: usize| (i * width, ((i + 1) * width).min(long));
            if s.n >= s.m {
                pool::run(blocks, &|i| block((0, s.m), span(i)));
            } else {
                pool::run(blocks, &|i| block(span(i), (0, s.n)));
            }
        }
        Storage::Cpu(out)
    }

    fn softmax(&self, x: &Storage, v: AxisView, log: bool) -> Storage {
        let x = x.cpu();
        let AxisView { outer, len, inner } = v;
        let mut out = vec![0.0; outer * len * inner];
        for_rows(
            &mut out,
            (len * inner).max(1),
            #[inline(always)]
            |o, block| {
                let src = &x[o * len * inner..];
                if inner == 1 {
                    // A contiguous row: the loops vectorise.
                    let (row, out) = (&src[..len], &mut block[..len]);
                    let max = row_max(row);
                    for (o, &v) in out.iter_mut().zip(row) {
                        *o = exp(v - max);
                    }
                    let sum = row_sum(out);
                    if log {
                        // (v - max) - lse, not v - (max + lse): the latter loses
                        // lse's low bits when |max| is large.
                        let lse = sum.ln();
                        for (o, &v) in out.iter_mut().zip(row) {
                            *o = (v - max) - lse;
                        }
                    } else {
                        let inv = 1.0 / sum;
                        for o in out.iter_mut() {
                            *o *= inv;
                        }
                    }
                    return;
                }
                for i in 0..inner {
                    let at = |l: usize| l * inner + i;
                    let max = (0..len).fold(f32::NEG_INFINITY, |m, l| nan_max(m, src[at(l)]));
                    let mut sum = 0.0f32;
                    for l in 0..len {
                        let e = exp(src[at(l)] - max);
                        block[at(l)] = e;
                        sum += e;
                    }
                    if log {
                        let lse = sum.ln();
                        for l in 0..len {
                            block[at(l)] = src[at(l)] - max - lse;
                        }
                    } else {
                        let inv = 1.0 / sum;
                        for l in 0..len {
                            block[at(l)] *= inv;
                        }
                    }
                }
            },
        );
        Storage::Cpu(out)
    }

    fn copy_strided(&self, x: &Storage, src: &Strided) -> Storage {
        let x = x.cpu();
        let n: usize = src.dims.iter().product();
        let mut out = vec![0.0; n];
        let mut strides = vec![src.strides.clone()];
        let dims = coalesce(&src.dims, &mut strides);
        let s = &strides[0];
        let step = *s.last().unwrap();
        for_rows(
            &mut out,
            *dims.last().unwrap(),
            #[inline(always)]
            |r, row| {
                let p = src.offset + row_offset(&dims, s, r);
                if step == 1 {
                    row.copy_from_slice(&x[p..p + row.len()]);
                } else {
                    for (j, o) in row.iter_mut().enumerate() {
                        *o = x[p + j * step];
                    }
                }
            },
        );
        Storage::Cpu(out)
    }

    fn copy_into(&self, out: &mut Storage, dst: &Strided, x: &Storage) {
        let x = x.cpu();
        let out = out.cpu_mut();
        let mut strides = vec![dst.strides.clone()];
        let dims = coalesce(&dst.dims, &mut strides);
        let s = &strides[0];
        let step = *s.last().unwrap();
        let row_len = *dims.last().unwrap();
        for (r, row) in x[..dims.iter().product()].chunks(row_len).enumerate() {
            let p = dst.offset + row_offset(&dims, s, r);
            for (j, &v) in row.iter().enumerate() {
                out[p + j * step] = v;
            }
        }
    }

    fn gather(&self, x: &Storage, v: AxisView, idx: (&Storage, &Strided), m: usize) -> Storage {
        let (x, (ids, layout)) = (x.cpu(), (idx.0.cpu(), idx.1));
        let AxisView { outer, len, inner } = v;
        let mut out = vec![0.0; outer * m * inner];
        for (e, o) in out.iter_mut().enumerate() {
            let (oi, i) = (e / (m * inner), e % inner);
            let l = check_index(ids[layout.index_of(e)], len, "gather");
            *o = x[(oi * len + l) * inner + i];
        }
        Storage::Cpu(out)
    }

    fn scatter_add(&self, g: &Storage, v: AxisView, idx: (&Storage, &Strided), m: usize) -> Storage {
        let (g, (ids, layout)) = (g.cpu(), (idx.0.cpu(), idx.1));
        let AxisView { outer, len, inner } = v;
        let mut out = vec![0.0; outer * len * inner];
        for (e, &gv) in g[..outer * m * inner].iter().enumerate() {
            let (oi, i) = (e / (m * inner), e % inner);
            let l = check_index(ids[layout.index_of(e)], len, "scatter_add");
            out[(oi * len + l) * inner + i] += gv;
        }
        Storage::Cpu(out)
    }

    fn cross_entropy(&self, logits: &Storage, labels: &Storage, rows: usize, classes: usize) -> Storage {
        let (x, y) = (logits.cpu(), labels.cpu());
        let mut out = vec![0.0; rows];
        simd(
            #[inline(always)]
            || {
                let mut exps = vec![0.0; classes];
                for (r, o) in out.iter_mut().enumerate() {
                    let row = &x[r * classes..(r + 1) * classes];
                    let label = check_index(y[r], classes, "cross_entropy: label");
                    let max = row_max(row);
                    for (e, &v) in exps.iter_mut().zip(row) {
                        *e = exp(v - max);
                    }
                    *o = max + row_sum(&exps).ln() - row[label];
                }
            },
        );
        Storage::Cpu(out)
    }

    fn cross_entropy_backward(
        &self,
        logits: &Storage,
        labels: &Storage,
        grad_rows: &Storage,
        rows: usize,
        classes: usize,
    ) -> Storage {
        let (x, y, g) = (logits.cpu(), labels.cpu(), grad_rows.cpu());
        let mut out = vec![0.0; rows * classes];
        for_rows(
            &mut out,
            classes,
            #[inline(always)]
            |r, o| {
                let row = &x[r * classes..(r + 1) * classes];
                let label = check_index(y[r], classes, "cross_entropy: label");
                let max = row_max(row);
                for (o, &v) in o.iter_mut().zip(row) {
                    *o = exp(v - max);
                }
                let sum = row_sum(o);
                let scale = g[r] / sum;
                for o in o.iter_mut() {
                    *o *= scale;
                }
                o[label] -= g[r];
            },
        );
        Storage::Cpu(out)
    }

    fn dropout(&self, x: &Storage, n: usize, p: f32, key: [u32; 2]) -> Storage {
        let x = x.cpu();
        let threshold = rng::dropout_threshold(p);
        let scale = 1.0 / (1.0 - p);
        let mut out = vec![0.0; n];
        fill_chunks(
            &mut out,
            #[inline(always)]
            |start, chunk| {
                for (j, (o, &v)) in chunk.iter_mut().zip(&x[start..]).enumerate() {
                    // Branch-free (a bit mask instead of `if`), so it vectorises;
                    // dropped elements are +0.0, as on the GPU.
                    let keep = rng::dropout_keep(key, threshold, (start + j) as u32);
                    *o = f32::from_bits((v * scale).to_bits() & (keep as u32).wrapping_neg());
                }
            },
        );
        Storage::Cpu(out)
    }

    fn update(&self, rule: UpdateRule, param: &mut Storage, grad: &Storage, state: &mut [&mut Storage], n: usize) {
        let p = &mut param.cpu_mut()[..n];
        let g = &grad.cpu()[..n];
        match rule {
            UpdateRule::Sgd { lr, momentum, weight_decay, nesterov } => {
                if momentum == 0.0 {
                    zip_chunks(
                        p,
                        g,
                        &mut [],
                        #[inline(always)]
                        |p, g, _| {
                            for (p, &g) in p.iter_mut().zip(g) {
                                *p -= lr * (g + weight_decay * *p);
                            }
                        },
                    );
                } else {
                    zip_chunks(
                        p,
                        g,
                        &mut state[..1],
                        #[inline(always)]
                        |p, g, s| {
                            let [buf] = s else { unreachable!() };
                            for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
                                let g = g + weight_decay * *p;
                                *b = momentum * *b + g;
                                *p -= lr * if nesterov { g + momentum * *b } else { *b };
                            }
                        },
                    );
                }
            }
            UpdateRule::Adam { lr, beta1, beta2, eps, weight_decay, decoupled, bias1, bias2 } => {
                let step = lr / bias1;
                let inv_sqrt_bias2 = 1.0 / bias2.sqrt();
                let (decay, l2) = if decoupled { (1.0 - lr * weight_decay, 0.0) } else { (1.0, weight_decay) };
                zip_chunks(
                    p,
                    g,
                    &mut state[..2],
                    #[inline(always)]
                    |p, g, s| {
                        let [m, v] = s else { unreachable!() };
                        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                            let g = g + l2 * *p;
                            *p *= decay;
                            *m = beta1 * *m + (1.0 - beta1) * g;
                            *v = beta2 * *v + (1.0 - beta2) * g * g;
                            *p -= step * *m / (v.sqrt() * inv_sqrt_bias2 + eps);
                        }
                    },
                );
            }
        }
    }
}

/// C's base pointer, shared by the two halves of a split product, which
/// write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: only used to write disjoint column ranges of one buffer that
// outlives the `pool::run` it is shared across.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Runs `f` on matching chunks of a parameter, its gradient and its state
/// buffers, over all cores when they are large.
fn zip_chunks(
    p: &mut [f32],
    g: &[f32],
    state: &mut [&mut Storage],
    f: impl Fn(&mut [f32], &[f32], &mut [&mut [f32]]) + Sync,
) {
    let n = p.len();
    let mut state: Vec<&mut [f32]> = state.iter_mut().map(|s| &mut s.cpu_mut()[..n]).collect();
    if n < PAR_MIN {
        simd(
            #[inline(always)]
            || f(p, g, &mut state),
        );
        return;
    }
    let p = Chunks::new(p, CHUNK);
    let state: Vec<Chunks> = state.into_iter().map(|s| Chunks::new(s, CHUNK)).collect();
    pool::run(p.count(), &|c| {
        // SAFETY: task c takes piece c of each buffer only.
        let (p, mut s): (_, Vec<&mut [f32]>) = unsafe { (p.get(c), state.iter().map(|s| s.get(c)).collect()) };
        let g = &g[c * CHUNK..(c * CHUNK + p.len())];
        simd(
            #[inline(always)]
            || f(p, g, &mut s),
        )
    });
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

    /// A plain triple loop over the stored (possibly transposed) operands.
    fn naive(a: &[f32], b: &[f32], s: MatmulSpec) -> Vec<f32> {
        let mut c = vec![0.0f64; s.batch * s.m * s.n];
        for i in 0..s.batch {
            for r in 0..s.m {
                for col in 0..s.n {
                    let mut acc = 0.0f64;
                    for k in 0..s.k {
                        let x = if s.trans_a {
                            a[i * s.a_batch_stride + k * s.m + r]
                        } else {
                            a[i * s.a_batch_stride + r * s.k + k]
                        };
                        let y = if s.trans_b {
                            b[i * s.b_batch_stride + col * s.k + k]
                        } else {
                            b[i * s.b_batch_stride + k * s.n + col]
                        };
                        acc += x as f64 * y as f64;
                    }
                    c[(i * s.m + r) * s.n + col] = acc;
                }
            }
        }
        c.into_iter().map(|v| v as f32).collect()
    }

    #[test]
    fn split_products_match_a_plain_loop() {
        // Above PAR_MATMUL_MACS, cut along columns (n >= m) or rows (m > n),
        // with widths that leave a ragged last block; plus one below it.
        let shapes = [(32, 784, 131), (517, 40, 33), (70, 300, 70), (1, 1, 600_000), (5, 7, 3)];
        for (m, k, n) in shapes {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
                let batch = if m * n * k < 1 << 21 { 2 } else { 1 };
                let s = MatmulSpec { batch, m, n, k, trans_a, trans_b, a_batch_stride: m * k, b_batch_stride: k * n };
                let a: Vec<f32> = (0..batch * m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
                let b: Vec<f32> = (0..batch * k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
                let got = Cpu.matmul(&Storage::Cpu(a.clone()), &Storage::Cpu(b.clone()), s);
                let want = naive(&a, &b, s);
                let got = got.cpu();
                for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{m}x{k}x{n} {trans_a} {trans_b} [{j}]: {g} vs {w}"
                    );
                }
            }
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
