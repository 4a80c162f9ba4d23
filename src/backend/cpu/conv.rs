//! 2-D convolutions as GEMMs over im2col patches (pooling is `pooling.rs`).
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
use super::{output, output_overwritten, pieces, pool};
use crate::Result;
use crate::backend::ConvSpec;
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
