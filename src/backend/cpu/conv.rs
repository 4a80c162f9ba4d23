//! 2-D convolutions as GEMMs over im2col patches, and pooling as loops.
//!
//! For each image and group, the forward pass gathers the input patches of
//! a block of output pixels into a `[cg·kh·kw, pixels]` matrix (im2col) and
//! multiplies the group's weight `[mg, cg·kh·kw]` by it with the `gemm`
//! crate. The input gradient multiplies the transposed weight by the
//! output gradient and scatters the patches back (col2im); the weight
//! gradient multiplies the output gradient by the transposed patches,
//! accumulated over the images. A 1×1 convolution with stride 1 and no
//! padding reads the input in place. Work is cut into blocks of images
//! (and, for few images, of output pixels) run over the pool; a block's
//! patch matrix stays small (≤ [`COL_BLOCK`] floats), so it lives in cache
//! between its gather and its product.

use super::math::row_sum;
use super::matmul::{Mat, OutPtr, gemm_into, gemm_raw};
use super::simd::simd;
use super::{output, output_overwritten, pool};
use crate::Result;
use crate::backend::{ConvSpec, PoolKind, PoolSpec};
use std::sync::Mutex;

/// The most floats one im2col block holds (1 MiB).
const COL_BLOCK: usize = 1 << 18;

/// Whether the patches of `s` are the input itself (1×1, stride 1, no padding).
fn pointwise(s: &ConvSpec) -> bool {
    s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 && s.ph == 0 && s.pw == 0 && s.oh == s.h && s.ow == s.w
}

/// The output columns `ox` whose input column `ox·sw - pw + off` lies in
/// `0..w`, as a half-open range.
#[inline]
fn valid_span(off: usize, pad: usize, stride: usize, len: usize, out: usize) -> (usize, usize) {
    // ox·stride + off ≥ pad  and  ox·stride + off < len + pad.
    let lo = pad.saturating_sub(off).div_ceil(stride);
    let hi = if len + pad > off { (len + pad - off).div_ceil(stride) } else { 0 };
    (lo.min(out), hi.min(out).max(lo.min(out)))
}

/// Writes the patches of output pixels `p0..p1` of one image's group
/// (`x`: its `cg` channels) into `col`, `[cg·kh·kw, p1 - p0]` row-major.
fn im2col(x: &[f32], s: &ConvSpec, p0: usize, p1: usize, col: &mut [f32]) {
    let width = p1 - p0;
    let mut row = 0;
    for c in 0..s.cg() {
        let plane = &x[c * s.h * s.w..(c + 1) * s.h * s.w];
        for i in 0..s.kh {
            for j in 0..s.kw {
                let dst = &mut col[row * width..(row + 1) * width];
                // Output columns whose tap lands inside the input row.
                let (x_lo, x_hi) = valid_span(j * s.dw, s.pw, s.sw, s.w, s.ow);
                let mut p = p0;
                while p < p1 {
                    let (oy, ox) = (p / s.ow, p % s.ow);
                    let run = (s.ow - ox).min(p1 - p);
                    let out = &mut dst[p - p0..p - p0 + run];
                    let iy = (oy * s.sh + i * s.dh).wrapping_sub(s.ph);
                    // This run covers output columns ox..ox+run; of them
                    // lo..hi read the input, the rest are padding.
                    let (lo, hi) = (x_lo.clamp(ox, ox + run), x_hi.clamp(ox, ox + run).max(x_lo.clamp(ox, ox + run)));
                    if iy >= s.h || lo == hi {
                        out.fill(0.0);
                    } else {
                        out[..lo - ox].fill(0.0);
                        out[hi - ox..].fill(0.0);
                        let src = &plane[iy * s.w..(iy + 1) * s.w];
                        let first = lo * s.sw + j * s.dw - s.pw;
                        let inner = &mut out[lo - ox..hi - ox];
                        if s.sw == 1 {
                            inner.copy_from_slice(&src[first..first + inner.len()]);
                        } else {
                            for (k, o) in inner.iter_mut().enumerate() {
                                *o = src[first + k * s.sw];
                            }
                        }
                    }
                    p += run;
                }
                row += 1;
            }
        }
    }
}

thread_local! {
    /// Each thread's im2col buffer, kept between calls: a fresh one per
    /// call cost a page-faulting allocation and a fill the patches overwrite.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer of at least `len` floats.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < len {
                v.resize(len, 0.0);
            }
            f(&mut v[..len])
        }
        // Re-entered on this thread (a task run inline): a buffer of its own.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Adds the patches of output pixels `p0..p1` (`col`, `[cg·kh·kw,
/// p1 - p0]`) back onto one image's group `x` (`[cg, h, w]`): im2col's
/// adjoint.
fn col2im(col: &[f32], s: &ConvSpec, p0: usize, p1: usize, x: &mut [f32]) {
    simd(
        #[inline(always)]
        || col2im_body(col, s, p0, p1, x),
    )
}

#[inline(always)]
fn col2im_body(col: &[f32], s: &ConvSpec, p0: usize, p1: usize, x: &mut [f32]) {
    let width = p1 - p0;
    let mut row = 0;
    for c in 0..s.cg() {
        let plane = &mut x[c * s.h * s.w..(c + 1) * s.h * s.w];
        for i in 0..s.kh {
            for j in 0..s.kw {
                let src = &col[row * width..(row + 1) * width];
                let (x_lo, x_hi) = valid_span(j * s.dw, s.pw, s.sw, s.w, s.ow);
                let mut p = p0;
                while p < p1 {
                    let (oy, ox) = (p / s.ow, p % s.ow);
                    let run = (s.ow - ox).min(p1 - p);
                    let iy = (oy * s.sh + i * s.dh).wrapping_sub(s.ph);
                    let (lo, hi) = (x_lo.max(ox), x_hi.min(ox + run));
                    if iy < s.h && lo < hi {
                        let dst = &mut plane[iy * s.w..(iy + 1) * s.w];
                        let line = &src[p - p0 + (lo - ox)..][..hi - lo];
                        let first = lo * s.sw + j * s.dw - s.pw;
                        if s.sw == 1 {
                            // Contiguous: a loop the compiler vectorises
                            // (the indexed loop it replaces was a quarter
                            // of a convolution's input gradient).
                            for (d, v) in dst[first..first + line.len()].iter_mut().zip(line) {
                                *d += v;
                            }
                        } else {
                            for (k, v) in line.iter().enumerate() {
                                dst[first + k * s.sw] += v;
                            }
                        }
                    }
                    p += run;
                }
                row += 1;
            }
        }
    }
}

/// Output pixels per im2col block, so a block holds at most [`COL_BLOCK`]
/// floats, and at least `parts` blocks per image when there are few images.
fn pixel_block(s: &ConvSpec, parts: usize) -> usize {
    let pixels = s.oh * s.ow;
    let by_size = (COL_BLOCK / s.patch().max(1)).max(16);
    by_size.min(pixels.div_ceil(parts.max(1))).max(1)
}

/// Splits `v` into consecutive pieces of `len` behind locks, so the tasks of
/// a `pool::run` each take their own piece.
fn pieces(v: &mut [f32], len: usize) -> Vec<Mutex<&mut [f32]>> {
    v.chunks_mut(len.max(1)).map(Mutex::new).collect()
}

/// The convolution, plus `bias[c]` on every output of channel `c` when given
/// (added to each block while it is in cache: `y + b` bit for bit).
pub(super) fn conv2d(x: &[f32], weight: &[f32], bias: Option<&[f32]>, s: ConvSpec) -> Result<Vec<f32>> {
    // Every output is written (the GEMMs do not accumulate).
    let mut out = output_overwritten(s.output_len())?;
    let (pixels, k, mg, cg) = (s.oh * s.ow, s.patch(), s.mg(), s.cg());
    if out.is_empty() {
        return Ok(out);
    }
    let threads = pool::threads();
    // Few images: split each image's pixels too, so every core has work.
    let block = pixel_block(&s, threads.div_ceil(s.n));
    let blocks = pixels.div_ceil(block);
    let in_image = s.c_in * s.h * s.w;
    // Each task writes columns p0..p1 of its image's c_out rows: pieces of
    // one image interleave, so they share the base pointer, not slices.
    let dst = OutPtr(out.as_mut_ptr());
    let task = |t: usize| {
        let (img, b) = (t / blocks, t % blocks);
        let (p0, p1) = (b * block, ((b + 1) * block).min(pixels));
        with_scratch(if pointwise(&s) { 0 } else { k * (p1 - p0) }, |col| {
            for g in 0..s.groups {
                let xg = &x[img * in_image + g * cg * s.h * s.w..][..cg * s.h * s.w];
                let w = Mat::new(&weight[g * mg * k..(g + 1) * mg * k], mg, k);
                let patches = if pointwise(&s) {
                    Mat { data: &xg[p0..], rows: k, cols: p1 - p0, rs: pixels, cs: 1 }
                } else {
                    im2col(xg, &s, p0, p1, col);
                    Mat::new(col, k, p1 - p0)
                };
                let at = (img * s.c_out + g * mg) * pixels + p0;
                // SAFETY: rows g·mg .. (g+1)·mg of image img, columns
                // p0..p1 (p1 ≤ pixels): inside `out`, which holds
                // n·c_out·pixels, and written by this task alone.
                unsafe { gemm_raw(dst.at(at), pixels, w, patches, false) };
                let Some(bias) = bias else { continue };
                for r in 0..mg {
                    // SAFETY: row g·mg + r of the block just written, which
                    // this task alone touches.
                    let row = unsafe { std::slice::from_raw_parts_mut(dst.at(at + r * pixels), p1 - p0) };
                    let b = bias[g * mg + r];
                    simd(
                        #[inline(always)]
                        || row.iter_mut().for_each(|v| *v += b),
                    );
                }
            }
        });
    };
    pool::run(s.n * blocks, &task);
    Ok(out)
}

pub(super) fn conv2d_input_grad(gy: &[f32], weight: &[f32], s: ConvSpec) -> Result<Vec<f32>> {
    let mut gx = output(s.input_len())?;
    let (pixels, k, mg, cg) = (s.oh * s.ow, s.patch(), s.mg(), s.cg());
    if gx.is_empty() {
        return Ok(gx);
    }
    let images = pieces(&mut gx, s.c_in * s.h * s.w);
    // The patches' gradients of a block of output pixels at a time, as the
    // forward pass gathers them, so the scratch stays small.
    let block = pixel_block(&s, 1);
    let task = |img: usize| {
        let mut dst = images[img].lock().unwrap_or_else(|e| e.into_inner());
        with_scratch(if pointwise(&s) { 0 } else { k * block.min(pixels) }, |col| {
            for g in 0..s.groups {
                let gyg = &gy[(img * s.c_out + g * mg) * pixels..][..mg * pixels];
                let wt = Mat::new(&weight[g * mg * k..(g + 1) * mg * k], mg, k).t();
                let xg = &mut dst[g * cg * s.h * s.w..(g + 1) * cg * s.h * s.w];
                if pointwise(&s) {
                    gemm_into(xg, pixels, wt, Mat::new(gyg, mg, pixels), false);
                    continue;
                }
                let mut p0 = 0;
                while p0 < pixels {
                    let p1 = (p0 + block).min(pixels);
                    let col = &mut col[..k * (p1 - p0)];
                    let dy = Mat { data: &gyg[p0..], rows: mg, cols: p1 - p0, rs: pixels, cs: 1 };
                    gemm_into(col, p1 - p0, wt, dy, false);
                    col2im(col, &s, p0, p1, xg);
                    p0 = p1;
                }
            }
        });
    };
    pool::run(s.n, &task);
    Ok(gx)
}

/// The weight's gradient and, `with_bias`, the bias's (`gy` summed per
/// channel, each block summed while it is in cache for the product; else
/// empty).
pub(super) fn conv2d_weight_grad(gy: &[f32], x: &[f32], s: ConvSpec, with_bias: bool) -> Result<[Vec<f32>; 2]> {
    // Each task's sums: the weight's gradient, then the bias's.
    let wl = s.weight_len();
    let len = wl + if with_bias { s.c_out } else { 0 };
    let mut gw = output(len)?;
    let (pixels, k, mg, cg) = (s.oh * s.ow, s.patch(), s.mg(), s.cg());
    if gw.is_empty() || s.n == 0 || pixels == 0 {
        let gb = gw.split_off(wl);
        return Ok([gw, gb]);
    }
    // Each task sums the gradients of a run of images into its own copy;
    // the copies are added at the end.
    let tasks = pool::threads().min(s.n);
    let per = s.n.div_ceil(tasks);
    let mut partials = vec![0.0f32; (tasks - 1) * len];
    let mut slots: Vec<Mutex<&mut [f32]>> = vec![Mutex::new(&mut gw[..])];
    slots.extend(pieces(&mut partials, len));
    let in_image = s.c_in * s.h * s.w;
    let block = pixel_block(&s, 1);
    let task = |t: usize| {
        let mut acc = slots[t].lock().unwrap_or_else(|e| e.into_inner());
        with_scratch(if pointwise(&s) { 0 } else { k * block.min(pixels) }, |col| {
            let mut first = true;
            for img in t * per..((t + 1) * per).min(s.n) {
                for g in 0..s.groups {
                    let xg = &x[img * in_image + g * cg * s.h * s.w..][..cg * s.h * s.w];
                    let gyg = &gy[(img * s.c_out + g * mg) * pixels..][..mg * pixels];
                    let mut p0 = 0;
                    while p0 < pixels {
                        let p1 = (p0 + block).min(pixels);
                        let dy = Mat { data: &gyg[p0..], rows: mg, cols: p1 - p0, rs: pixels, cs: 1 };
                        if with_bias {
                            let sums = &mut acc[wl + g * mg..wl + (g + 1) * mg];
                            for (r, sum) in sums.iter_mut().enumerate() {
                                *sum += simd(
                                    #[inline(always)]
                                    || row_sum(&gyg[r * pixels + p0..r * pixels + p1]),
                                );
                            }
                        }
                        let patches_t = if pointwise(&s) {
                            Mat { data: &xg[p0..], rows: k, cols: p1 - p0, rs: pixels, cs: 1 }.t()
                        } else {
                            let col = &mut col[..k * (p1 - p0)];
                            im2col(xg, &s, p0, p1, col);
                            Mat::new(col, k, p1 - p0).t()
                        };
                        gemm_into(&mut acc[g * mg * k..(g + 1) * mg * k], k, dy, patches_t, !first || p0 > 0);
                        p0 = p1;
                    }
                }
                first = false;
            }
        });
    };
    pool::run(tasks, &task);
    drop(slots);
    for part in partials.chunks(len) {
        for (a, b) in gw.iter_mut().zip(part) {
            *a += b;
        }
    }
    let gb = gw.split_off(wl);
    Ok([gw, gb])
}

/// The windows of a pooling, per output row and column, computed once per
/// call rather than per output.
struct Windows {
    rows: Vec<(usize, usize)>,
    cols: Vec<(usize, usize)>,
    /// Each output's divisor (averages only), row-major.
    divisors: Vec<f32>,
}

impl Windows {
    fn new(s: &PoolSpec) -> Self {
        let rows = (0..s.oh).map(|o| s.window(o, false)).collect();
        let cols = (0..s.ow).map(|o| s.window(o, true)).collect();
        let divisors = match s.kind {
            PoolKind::Max => Vec::new(),
            _ => (0..s.oh * s.ow).map(|i| s.divisor(i / s.ow, i % s.ow)).collect(),
        };
        Windows { rows, cols, divisors }
    }
}

/// The position (row-major index into the plane) of the maximum of the
/// window rows `y0..y1`, columns `x0..x1`, as PyTorch picks it: the last
/// NaN, else the first maximum. `None` for an empty window.
#[inline]
fn max_at(plane: &[f32], w: usize, (y0, y1): (usize, usize), (x0, x1): (usize, usize)) -> Option<usize> {
    if y0 >= y1 || x0 >= x1 {
        return None;
    }
    let (mut best_i, mut best) = (y0 * w + x0, plane[y0 * w + x0]);
    for y in y0..y1 {
        let at = y * w + x0;
        for (j, &v) in plane[at..at + (x1 - x0)].iter().enumerate() {
            // Branch-free: windows are small and their outcomes random.
            let take = v > best || v.is_nan();
            best = if take { v } else { best };
            best_i = if take { at + j } else { best_i };
        }
    }
    Some(best_i)
}

/// Whether `s` is the common max pool of non-overlapping 2×2 windows
/// without padding, which has a loop of its own.
fn max_2x2(s: &PoolSpec) -> bool {
    s.kind == PoolKind::Max && (s.kh, s.kw, s.sh, s.sw, s.ph, s.pw) == (2, 2, 2, 2, 0, 0)
}

/// Outputs a [`max_2x2`] loop handles at once.
const LANES: usize = 8;

/// The picks of `L` consecutive 2×2 windows whose rows are `r0` and `r1`
/// (`2·L` floats each): per window its offset (0..4, row-major) and value,
/// by the rule of [`max_at`] (the last NaN, else the first maximum). The
/// windows are first split into four arrays (top-left, top-right,
/// bottom-left, bottom-right), so with `L` = [`LANES`] the comparisons run
/// on whole vectors, branch-free (a window at a time, the loop was scalar
/// code and most of a convnet's pooling); `L` = 1 serves a row's tail.
#[inline(always)]
fn pick_2x2<const L: usize>(r0: &[f32], r1: &[f32]) -> ([u32; L], [f32; L]) {
    let (r0, r1) = (&r0[..2 * L], &r1[..2 * L]);
    let mut v = [[0.0f32; L]; 4];
    for l in 0..L {
        v[0][l] = r0[2 * l];
        v[1][l] = r0[2 * l + 1];
        v[2][l] = r1[2 * l];
        v[3][l] = r1[2 * l + 1];
    }
    let (mut best_i, mut best) = ([0u32; L], v[0]);
    for (i, x) in v.iter().enumerate().skip(1) {
        for l in 0..L {
            let take = x[l] > best[l] || x[l].is_nan();
            best[l] = if take { x[l] } else { best[l] };
            best_i[l] = if take { i as u32 } else { best_i[l] };
        }
    }
    (best_i, best)
}

/// One output row of a [`max_2x2`] pool into `o`, from its windows' input
/// rows `r0` and `r1`: [`LANES`] windows at a time, then one at a time.
#[inline(always)]
fn max_2x2_row(r0: &[f32], r1: &[f32], o: &mut [f32]) {
    let mut ox = 0;
    while ox + LANES <= o.len() {
        o[ox..ox + LANES].copy_from_slice(&pick_2x2::<LANES>(&r0[2 * ox..], &r1[2 * ox..]).1);
        ox += LANES;
    }
    for ox in ox..o.len() {
        o[ox] = pick_2x2::<1>(&r0[2 * ox..], &r1[2 * ox..]).1[0];
    }
}

/// The gradient of `L` windows from `g` (their outputs' gradients): each
/// window's pick gets its gradient, its other three inputs 0, written into
/// the windows' two input rows `top` and `bottom` (`2·L` floats each).
#[inline(always)]
fn max_2x2_grads<const L: usize>(r0: &[f32], r1: &[f32], g: &[f32], top: &mut [f32], bottom: &mut [f32]) {
    let (picks, _) = pick_2x2::<L>(r0, r1);
    let (top, bottom) = (&mut top[..2 * L], &mut bottom[..2 * L]);
    for l in 0..L {
        let (i, go) = (picks[l], g[l]);
        top[2 * l] = if i == 0 { go } else { 0.0 };
        top[2 * l + 1] = if i == 1 { go } else { 0.0 };
        bottom[2 * l] = if i == 2 { go } else { 0.0 };
        bottom[2 * l + 1] = if i == 3 { go } else { 0.0 };
    }
}

/// Output row `oy` of a [`max_2x2`] pool over `plane` (`w` wide): the
/// window's two input rows, cut to the `2·ow` columns the windows cover.
#[inline(always)]
fn rows_2x2(plane: &[f32], w: usize, oy: usize, ow: usize) -> (&[f32], &[f32]) {
    (&plane[2 * oy * w..][..2 * ow], &plane[(2 * oy + 1) * w..][..2 * ow])
}

pub(super) fn pool2d(x: &[f32], s: PoolSpec) -> Result<Vec<f32>> {
    let mut out = output_overwritten(s.output_len())?;
    let (plane_in, plane_out) = (s.h * s.w, s.oh * s.ow);
    if out.is_empty() {
        return Ok(out);
    }
    let win = Windows::new(&s);
    let per = (s.planes.div_ceil(pool::threads() * 4)).max(1);
    let chunks = pieces(&mut out, per * plane_out);
    pool::run(chunks.len(), &|t| {
        let mut dst = chunks[t].lock().unwrap_or_else(|e| e.into_inner());
        for (q, o) in dst.chunks_mut(plane_out).enumerate() {
            let plane = &x[(t * per + q) * plane_in..][..plane_in];
            if max_2x2(&s) {
                simd(
                    #[inline(always)]
                    || {
                        for oy in 0..s.oh {
                            let (r0, r1) = rows_2x2(plane, s.w, oy, s.ow);
                            max_2x2_row(r0, r1, &mut o[oy * s.ow..][..s.ow]);
                        }
                    },
                );
                continue;
            }
            for (oy, &ys) in win.rows.iter().enumerate() {
                for (ox, &xs) in win.cols.iter().enumerate() {
                    o[oy * s.ow + ox] = if s.kind == PoolKind::Max {
                        max_at(plane, s.w, ys, xs).map_or(f32::NEG_INFINITY, |i| plane[i])
                    } else {
                        // One running sum in row-major order, as the GPU
                        // kernel adds them (so huge values cancel alike).
                        let mut sum = 0.0;
                        for y in ys.0..ys.1 {
                            for v in &plane[y * s.w + xs.0..y * s.w + xs.1] {
                                sum += v;
                            }
                        }
                        sum / win.divisors[oy * s.ow + ox]
                    };
                }
            }
        }
    });
    Ok(out)
}

pub(super) fn pool2d_backward(x: &[f32], gy: &[f32], s: PoolSpec) -> Result<Vec<f32>> {
    // 2×2 windows that tile the input write every element of its gradient;
    // otherwise it starts at zero.
    let tiled = max_2x2(&s) && s.h == 2 * s.oh && s.w == 2 * s.ow;
    let mut gx = if tiled { output_overwritten(s.input_len())? } else { output(s.input_len())? };
    let (plane_in, plane_out) = (s.h * s.w, s.oh * s.ow);
    if gx.is_empty() || plane_out == 0 {
        return Ok(gx);
    }
    let win = Windows::new(&s);
    let per = (s.planes.div_ceil(pool::threads() * 4)).max(1);
    let chunks = pieces(&mut gx, per * plane_in);
    pool::run(chunks.len(), &|t| {
        let mut dst = chunks[t].lock().unwrap_or_else(|e| e.into_inner());
        for (q, d) in dst.chunks_mut(plane_in).enumerate() {
            let p = t * per + q;
            // Only a max pool reads x (averages may be handed anything).
            let plane = if s.kind == PoolKind::Max { &x[p * plane_in..][..plane_in] } else { &[] };
            let g = &gy[p * plane_out..][..plane_out];
            if max_2x2(&s) {
                // Windows do not overlap: each covered input gets its
                // window's gradient or 0, written once (an odd last row
                // or column stays at the zero it was allocated with, as
                // `tiled` is false then).
                simd(
                    #[inline(always)]
                    || {
                        for oy in 0..s.oh {
                            let (r0, r1) = rows_2x2(plane, s.w, oy, s.ow);
                            let g = &g[oy * s.ow..][..s.ow];
                            let (top, bottom) = d[2 * oy * s.w..].split_at_mut(s.w);
                            let (top, bottom) = (&mut top[..2 * s.ow], &mut bottom[..2 * s.ow]);
                            let mut ox = 0;
                            while ox + LANES <= s.ow {
                                let (r0, r1, g) = (&r0[2 * ox..], &r1[2 * ox..], &g[ox..]);
                                max_2x2_grads::<LANES>(r0, r1, g, &mut top[2 * ox..], &mut bottom[2 * ox..]);
                                ox += LANES;
                            }
                            for ox in ox..s.ow {
                                let (r0, r1, g) = (&r0[2 * ox..], &r1[2 * ox..], &g[ox..]);
                                max_2x2_grads::<1>(r0, r1, g, &mut top[2 * ox..], &mut bottom[2 * ox..]);
                            }
                        }
                    },
                );
                continue;
            }
            for (oy, &ys) in win.rows.iter().enumerate() {
                for (ox, &xs) in win.cols.iter().enumerate() {
                    let go = g[oy * s.ow + ox];
                    if s.kind == PoolKind::Max {
                        if let Some(i) = max_at(plane, s.w, ys, xs) {
                            d[i] += go;
                        }
                    } else {
                        let share = go / win.divisors[oy * s.ow + ox];
                        for y in ys.0..ys.1 {
                            for v in &mut d[y * s.w + xs.0..y * s.w + xs.1] {
                                *v += share;
                            }
                        }
                    }
                }
            }
        }
    });
    Ok(gx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one multiply-add at a time.
    fn naive(x: &[f32], w: &[f32], s: &ConvSpec) -> Vec<f32> {
        let mut out = vec![0.0f32; s.output_len()];
        for n in 0..s.n {
            for co in 0..s.c_out {
                let g = co / s.mg();
                for oy in 0..s.oh {
                    for ox in 0..s.ow {
                        let mut acc = 0.0f64;
                        for c in 0..s.cg() {
                            for i in 0..s.kh {
                                for j in 0..s.kw {
                                    let iy = (oy * s.sh + i * s.dh) as isize - s.ph as isize;
                                    let ix = (ox * s.sw + j * s.dw) as isize - s.pw as isize;
                                    if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                        continue;
                                    }
                                    let xv = x[((n * s.c_in + g * s.cg() + c) * s.h + iy as usize) * s.w + ix as usize];
                                    let wv = w[((co * s.cg() + c) * s.kh + i) * s.kw + j];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out[((n * s.c_out + co) * s.oh + oy) * s.ow + ox] = acc as f32;
                    }
                }
            }
        }
        out
    }

    fn spec(
        n: usize,
        c_in: usize,
        hw: (usize, usize),
        c_out: usize,
        k: (usize, usize),
        st: (usize, usize),
    ) -> ConvSpec {
        let (ph, pw, dh, dw, groups) = (1, 0, 1, 2, 1);
        let oh = (hw.0 + 2 * ph - dh * (k.0 - 1) - 1) / st.0 + 1;
        let ow = (hw.1 + 2 * pw - dw * (k.1 - 1) - 1) / st.1 + 1;
        ConvSpec {
            n,
            c_in,
            h: hw.0,
            w: hw.1,
            c_out,
            kh: k.0,
            kw: k.1,
            sh: st.0,
            sw: st.1,
            ph,
            pw,
            dh,
            dw,
            groups,
            oh,
            ow,
        }
    }

    #[test]
    fn blocked_im2col_matches_the_definition() {
        // Small pixel blocks (many images, few) and the pointwise path.
        let cases = [
            spec(3, 2, (7, 9), 5, (3, 2), (2, 1)),
            spec(1, 4, (30, 31), 3, (2, 3), (1, 2)),
            ConvSpec { ph: 0, pw: 0, dh: 1, dw: 1, oh: 6, ow: 5, ..spec(2, 4, (6, 5), 6, (1, 1), (1, 1)) },
            ConvSpec { groups: 2, ..spec(2, 4, (8, 8), 6, (3, 3), (1, 1)) },
        ];
        for s in cases {
            let x: Vec<f32> = (0..s.input_len()).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
            let w: Vec<f32> = (0..s.weight_len()).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
            let got = conv2d(&x, &w, None, s).unwrap();
            let want = naive(&x, &w, &s);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{s:?} [{i}]: {g} vs {w}");
            }
            // A bias is the product plus the bias, bit for bit.
            let bias: Vec<f32> = (0..s.c_out).map(|c| c as f32 * 0.37 - 1.0).collect();
            let with_bias = conv2d(&x, &w, Some(&bias), s).unwrap();
            for (i, (b, g)) in with_bias.iter().zip(&got).enumerate() {
                let c = i / (s.oh * s.ow) % s.c_out;
                assert_eq!(b.to_bits(), (g + bias[c]).to_bits(), "{s:?} [{i}] with bias");
            }
        }
    }

    /// The gradients by the definition: every (output, tap) pair adds
    /// `gy · w` to the input's gradient and `gy · x` to the weight's.
    fn naive_grads(x: &[f32], w: &[f32], gy: &[f32], s: &ConvSpec) -> (Vec<f32>, Vec<f32>) {
        let (mut gx, mut gw) = (vec![0.0f64; s.input_len()], vec![0.0f64; s.weight_len()]);
        for n in 0..s.n {
            for co in 0..s.c_out {
                let g = co / s.mg();
                for oy in 0..s.oh {
                    for ox in 0..s.ow {
                        let go = gy[((n * s.c_out + co) * s.oh + oy) * s.ow + ox] as f64;
                        for c in 0..s.cg() {
                            for i in 0..s.kh {
                                for j in 0..s.kw {
                                    let iy = (oy * s.sh + i * s.dh) as isize - s.ph as isize;
                                    let ix = (ox * s.sw + j * s.dw) as isize - s.pw as isize;
                                    if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                        continue;
                                    }
                                    let xi = ((n * s.c_in + g * s.cg() + c) * s.h + iy as usize) * s.w + ix as usize;
                                    let wi = ((co * s.cg() + c) * s.kh + i) * s.kw + j;
                                    gx[xi] += go * w[wi] as f64;
                                    gw[wi] += go * x[xi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        (gx.into_iter().map(|v| v as f32).collect(), gw.into_iter().map(|v| v as f32).collect())
    }

    #[test]
    fn blocked_gradients_match_the_definition() {
        // 64 channels × 3×3 taps: blocks of 455 pixels, so the 30×29
        // outputs take two blocks (a ragged second one) in every kernel;
        // with 2 groups, blocks of 910 pixels for 930 outputs.
        let base = spec(2, 64, (30, 31), 3, (3, 3), (1, 1));
        let one = ConvSpec { dw: 1, pw: 1, ow: 31, ..base };
        let two = ConvSpec { c_out: 4, groups: 2, ..one };
        for s in [one, two] {
            assert!(pixel_block(&s, 1) < s.oh * s.ow, "{s:?} must need several blocks");
            let x: Vec<f32> = (0..s.input_len()).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
            let w: Vec<f32> = (0..s.weight_len()).map(|i| ((i * 5 % 11) as f32 - 5.0) / 16.0).collect();
            let gy: Vec<f32> = (0..s.output_len()).map(|i| ((i * 3 % 7) as f32 - 3.0) / 4.0).collect();
            let (want_x, want_w) = naive_grads(&x, &w, &gy, &s);
            let close = |got: &[f32], want: &[f32], what: &str| {
                assert_eq!(got.len(), want.len(), "{what}");
                for (i, (g, w)) in got.iter().zip(want).enumerate() {
                    assert!((g - w).abs() <= 1e-3 * (1.0 + w.abs()), "{s:?} {what} [{i}]: {g} vs {w}");
                }
            };
            close(&conv2d_input_grad(&gy, &w, s).unwrap(), &want_x, "input gradient");
            let [gw, gb] = conv2d_weight_grad(&gy, &x, s, true).unwrap();
            close(&gw, &want_w, "weight gradient");
            let [alone, none] = conv2d_weight_grad(&gy, &x, s, false).unwrap();
            assert_eq!(alone, gw, "the weight gradient does not depend on the bias's");
            assert!(none.is_empty());
            // The bias's gradient: the output gradient summed per channel.
            let pixels = s.oh * s.ow;
            let want_b: Vec<f32> = (0..s.c_out)
                .map(|c| (0..s.n).map(|n| gy[(n * s.c_out + c) * pixels..][..pixels].iter().sum::<f32>()).sum())
                .collect();
            close(&gb, &want_b, "bias gradient");
            let bias: Vec<f32> = (0..s.c_out).map(|c| c as f32 - 1.5).collect();
            let want_y: Vec<f32> =
                naive(&x, &w, &s).iter().enumerate().map(|(i, v)| v + bias[i / pixels % s.c_out]).collect();
            close(&conv2d(&x, &w, Some(&bias), s).unwrap(), &want_y, "forward with a bias");
        }
    }

    #[test]
    fn vectorised_2x2_max_pool_picks_as_the_window_scan() {
        // Values from a small set with NaN, so windows tie and hold NaNs;
        // widths around the vector width and odd sizes (an uncovered row
        // and column).
        for (h, w) in [(4, 16), (5, 17), (6, 34), (3, 31), (2, 2)] {
            let planes = 3;
            let s = PoolSpec {
                kind: PoolKind::Max,
                planes,
                h,
                w,
                kh: 2,
                kw: 2,
                sh: 2,
                sw: 2,
                ph: 0,
                pw: 0,
                oh: h / 2,
                ow: w / 2,
            };
            // Mostly 0 and 1, a NaN in ~1 of 10 (a scrambled index picks).
            let vals = [0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, f32::NAN];
            let x: Vec<f32> = (0..planes * h * w)
                .map(|i| vals[(((i as u64).wrapping_mul(2_654_435_761) >> 7) % 10) as usize])
                .collect();
            let gy: Vec<f32> = (0..planes * s.oh * s.ow).map(|i| i as f32 + 1.0).collect();
            let y = pool2d(&x, s).unwrap();
            let gx = pool2d_backward(&x, &gy, s).unwrap();
            let mut want_gx = vec![0.0f32; x.len()];
            for p in 0..planes {
                let plane = &x[p * h * w..][..h * w];
                for oy in 0..s.oh {
                    for ox in 0..s.ow {
                        let o = (p * s.oh + oy) * s.ow + ox;
                        let i = max_at(plane, w, (2 * oy, 2 * oy + 2), (2 * ox, 2 * ox + 2)).unwrap();
                        assert_eq!(y[o].to_bits(), plane[i].to_bits(), "{h}×{w} output {o}");
                        want_gx[p * h * w + i] = gy[o];
                    }
                }
            }
            assert_eq!(gx, want_gx, "{h}×{w} gradient");
        }
        // Windows that tile the input: the gradient's buffer is not zeroed
        // first, so every element must be written. Offer the kernel a
        // cached buffer full of NaN (large enough to be cached) to write into.
        let s = PoolSpec {
            kind: PoolKind::Max,
            planes: 64,
            h: 32,
            w: 32,
            kh: 2,
            kw: 2,
            sh: 2,
            sw: 2,
            ph: 0,
            pw: 0,
            oh: 16,
            ow: 16,
        };
        super::super::cache::give(vec![f32::NAN; s.input_len()]);
        let x: Vec<f32> = (0..s.input_len()).map(|i| ((i * 37) % 101) as f32).collect();
        let gy = vec![1.0f32; s.output_len()];
        let gx = pool2d_backward(&x, &gy, s).unwrap();
        assert!(gx.iter().all(|v| *v == 0.0 || *v == 1.0), "an element of the gradient was left unwritten");
        assert_eq!(gx.iter().filter(|v| **v == 1.0).count(), s.output_len());
    }

    #[test]
    fn valid_spans_cover_exactly_the_inside_columns() {
        for (off, pad, stride, len, out) in [(0, 1, 1, 5, 5), (4, 1, 2, 5, 3), (0, 3, 2, 4, 4), (9, 0, 1, 3, 3)] {
            let (lo, hi) = valid_span(off, pad, stride, len, out);
            for ox in 0..out {
                let ix = (ox * stride + off) as isize - pad as isize;
                let inside = ix >= 0 && ix < len as isize;
                assert_eq!(inside, ox >= lo && ox < hi, "{off} {pad} {stride} {len} {out}: ox {ox}");
            }
        }
    }
}
