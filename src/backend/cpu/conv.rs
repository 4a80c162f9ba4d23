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

use super::matmul::{Mat, gemm_into};
use super::{output, pool};
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
                let (x_lo, x_hi) = valid_span(j * s.dw, s.pw, s.sw, s.w, s.ow);
                let mut p = p0;
                while p < p1 {
                    let (oy, ox) = (p / s.ow, p % s.ow);
                    let run = (s.ow - ox).min(p1 - p);
                    let out = &mut dst[p - p0..p - p0 + run];
                    let iy = (oy * s.sh + i * s.dh).wrapping_sub(s.ph);
                    if iy >= s.h {
                        out.fill(0.0);
                    } else {
                        let src = &plane[iy * s.w..(iy + 1) * s.w];
                        for (k, o) in out.iter_mut().enumerate() {
                            let ox = ox + k;
                            *o = if ox >= x_lo && ox < x_hi { src[ox * s.sw + j * s.dw - s.pw] } else { 0.0 };
                        }
                    }
                    p += run;
                }
                row += 1;
            }
        }
    }
}

/// Adds the patches `col` (`[cg·kh·kw, oh·ow]`) back onto one image's group
/// `x` (`[cg, h, w]`): im2col's adjoint.
fn col2im(col: &[f32], s: &ConvSpec, x: &mut [f32]) {
    let width = s.oh * s.ow;
    let mut row = 0;
    for c in 0..s.cg() {
        let plane = &mut x[c * s.h * s.w..(c + 1) * s.h * s.w];
        for i in 0..s.kh {
            for j in 0..s.kw {
                let src = &col[row * width..(row + 1) * width];
                let (x_lo, x_hi) = valid_span(j * s.dw, s.pw, s.sw, s.w, s.ow);
                for oy in 0..s.oh {
                    let iy = (oy * s.sh + i * s.dh).wrapping_sub(s.ph);
                    if iy >= s.h {
                        continue;
                    }
                    let dst = &mut plane[iy * s.w..(iy + 1) * s.w];
                    let line = &src[oy * s.ow..(oy + 1) * s.ow];
                    for ox in x_lo..x_hi {
                        dst[ox * s.sw + j * s.dw - s.pw] += line[ox];
                    }
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

pub(super) fn conv2d(x: &[f32], weight: &[f32], s: ConvSpec) -> Result<Vec<f32>> {
    let mut out = output(s.output_len())?;
    let (pixels, k, mg, cg) = (s.oh * s.ow, s.patch(), s.mg(), s.cg());
    if out.is_empty() {
        return Ok(out);
    }
    let threads = pool::threads();
    // Few images: split each image's pixels too, so every core has work.
    let block = pixel_block(&s, threads.div_ceil(s.n));
    let blocks = pixels.div_ceil(block);
    let images = pieces(&mut out, s.c_out * pixels);
    let in_image = s.c_in * s.h * s.w;
    let task = |t: usize| {
        let (img, b) = (t / blocks, t % blocks);
        let (p0, p1) = (b * block, ((b + 1) * block).min(pixels));
        let mut col = if pointwise(&s) { Vec::new() } else { vec![0.0; k * (p1 - p0)] };
        let mut dst = images[img].lock().unwrap_or_else(|e| e.into_inner());
        for g in 0..s.groups {
            let xg = &x[img * in_image + g * cg * s.h * s.w..][..cg * s.h * s.w];
            let w = Mat::new(&weight[g * mg * k..(g + 1) * mg * k], mg, k);
            let patches = if pointwise(&s) {
                Mat { data: &xg[p0..], rows: k, cols: p1 - p0, rs: pixels, cs: 1 }
            } else {
                im2col(xg, &s, p0, p1, &mut col);
                Mat::new(&col, k, p1 - p0)
            };
            gemm_into(&mut dst[g * mg * pixels + p0..], pixels, w, patches, false);
        }
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
    let task = |img: usize| {
        let mut dst = images[img].lock().unwrap_or_else(|e| e.into_inner());
        let mut col = if pointwise(&s) { Vec::new() } else { vec![0.0; k * pixels] };
        for g in 0..s.groups {
            let gyg = Mat::new(&gy[(img * s.c_out + g * mg) * pixels..][..mg * pixels], mg, pixels);
            let wt = Mat::new(&weight[g * mg * k..(g + 1) * mg * k], mg, k).t();
            let xg = &mut dst[g * cg * s.h * s.w..(g + 1) * cg * s.h * s.w];
            if pointwise(&s) {
                gemm_into(xg, pixels, wt, gyg, false);
            } else {
                gemm_into(&mut col, pixels, wt, gyg, false);
                col2im(&col, &s, xg);
            }
        }
    };
    pool::run(s.n, &task);
    Ok(gx)
}

pub(super) fn conv2d_weight_grad(gy: &[f32], x: &[f32], s: ConvSpec) -> Result<Vec<f32>> {
    let mut gw = output(s.weight_len())?;
    let (pixels, k, mg, cg) = (s.oh * s.ow, s.patch(), s.mg(), s.cg());
    if gw.is_empty() || s.n == 0 || pixels == 0 {
        return Ok(gw);
    }
    // Each task sums the gradients of a run of images into its own copy;
    // the copies are added at the end.
    let tasks = pool::threads().min(s.n);
    let per = s.n.div_ceil(tasks);
    let mut partials = vec![0.0f32; (tasks - 1) * gw.len()];
    let mut slots: Vec<Mutex<&mut [f32]>> = vec![Mutex::new(&mut gw[..])];
    slots.extend(pieces(&mut partials, s.weight_len()));
    let in_image = s.c_in * s.h * s.w;
    let block = pixel_block(&s, 1);
    let task = |t: usize| {
        let mut acc = slots[t].lock().unwrap_or_else(|e| e.into_inner());
        let mut col = if pointwise(&s) { Vec::new() } else { vec![0.0; k * block.min(pixels)] };
        let mut first = true;
        for img in t * per..((t + 1) * per).min(s.n) {
            for g in 0..s.groups {
                let xg = &x[img * in_image + g * cg * s.h * s.w..][..cg * s.h * s.w];
                let gyg = &gy[(img * s.c_out + g * mg) * pixels..][..mg * pixels];
                let mut p0 = 0;
                while p0 < pixels {
                    let p1 = (p0 + block).min(pixels);
                    let dy = Mat { data: &gyg[p0..], rows: mg, cols: p1 - p0, rs: pixels, cs: 1 };
                    let patches_t = if pointwise(&s) {
                        Mat { data: &xg[p0..], rows: k, cols: p1 - p0, rs: pixels, cs: 1 }.t()
                    } else {
                        im2col(xg, &s, p0, p1, &mut col);
                        Mat::new(&col, k, p1 - p0).t()
                    };
                    gemm_into(&mut acc[g * mg * k..(g + 1) * mg * k], k, dy, patches_t, !first || p0 > 0);
                    p0 = p1;
                }
            }
            first = false;
        }
    };
    pool::run(tasks, &task);
    drop(slots);
    for part in partials.chunks(gw.len()) {
        for (a, b) in gw.iter_mut().zip(part) {
            *a += b;
        }
    }
    Ok(gw)
}

/// The position (row-major index into the plane) of window `(oy, ox)`'s
/// maximum, as PyTorch picks it: the last NaN, else the first maximum.
/// `None` for an empty window.
#[inline]
fn max_at(plane: &[f32], s: &PoolSpec, oy: usize, ox: usize) -> Option<usize> {
    let ((y0, y1), (x0, x1)) = (s.window(oy, false), s.window(ox, true));
    let mut best: Option<(usize, f32)> = None;
    for y in y0..y1 {
        for x in x0..x1 {
            let v = plane[y * s.w + x];
            if best.is_none_or(|(_, b)| v > b || v.is_nan()) {
                best = Some((y * s.w + x, v));
            }
        }
    }
    best.map(|(i, _)| i)
}

pub(super) fn pool2d(x: &[f32], s: PoolSpec) -> Result<Vec<f32>> {
    let mut out = output(s.output_len())?;
    let (plane_in, plane_out) = (s.h * s.w, s.oh * s.ow);
    if out.is_empty() {
        return Ok(out);
    }
    let per = (s.planes.div_ceil(pool::threads() * 4)).max(1);
    let chunks = pieces(&mut out, per * plane_out);
    pool::run(chunks.len(), &|t| {
        let mut dst = chunks[t].lock().unwrap_or_else(|e| e.into_inner());
        for (q, o) in dst.chunks_mut(plane_out).enumerate() {
            let plane = &x[(t * per + q) * plane_in..][..plane_in];
            for oy in 0..s.oh {
                for ox in 0..s.ow {
                    o[oy * s.ow + ox] = match s.kind {
                        PoolKind::Max => max_at(plane, &s, oy, ox).map_or(f32::NEG_INFINITY, |i| plane[i]),
                        _ => {
                            let ((y0, y1), (x0, x1)) = (s.window(oy, false), s.window(ox, true));
                            let mut sum = 0.0;
                            for y in y0..y1 {
                                sum += plane[y * s.w + x0..y * s.w + x1].iter().sum::<f32>();
                            }
                            sum / s.divisor(oy, ox)
                        }
                    };
                }
            }
        }
    });
    Ok(out)
}

pub(super) fn pool2d_backward(x: &[f32], gy: &[f32], s: PoolSpec) -> Result<Vec<f32>> {
    let mut gx = output(s.input_len())?;
    let (plane_in, plane_out) = (s.h * s.w, s.oh * s.ow);
    if gx.is_empty() || plane_out == 0 {
        return Ok(gx);
    }
    let per = (s.planes.div_ceil(pool::threads() * 4)).max(1);
    let chunks = pieces(&mut gx, per * plane_in);
    pool::run(chunks.len(), &|t| {
        let mut dst = chunks[t].lock().unwrap_or_else(|e| e.into_inner());
        for (q, d) in dst.chunks_mut(plane_in).enumerate() {
            let p = t * per + q;
            // Only a max pool reads x (averages may be handed anything).
            let plane = if s.kind == PoolKind::Max { &x[p * plane_in..][..plane_in] } else { &[] };
            let g = &gy[p * plane_out..][..plane_out];
            for oy in 0..s.oh {
                for ox in 0..s.ow {
                    let go = g[oy * s.ow + ox];
                    match s.kind {
                        PoolKind::Max => {
                            if let Some(i) = max_at(plane, &s, oy, ox) {
                                d[i] += go;
                            }
                        }
                        _ => {
                            let ((y0, y1), (x0, x1)) = (s.window(oy, false), s.window(ox, true));
                            let share = go / s.divisor(oy, ox);
                            for y in y0..y1 {
                                for v in &mut d[y * s.w + x0..y * s.w + x1] {
                                    *v += share;
                                }
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
            let got = conv2d(&x, &w, s).unwrap();
            let want = naive(&x, &w, &s);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{s:?} [{i}]: {g} vs {w}");
            }
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
