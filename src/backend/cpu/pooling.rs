//! Pooling as loops over each plane: max and average windows forward and
//! backward, with the common non-overlapping 2×2 max pool vectorised.

use super::pool;
use super::simd::simd;
use super::{output, output_overwritten, pieces};
use crate::Result;
use crate::backend::{PoolKind, PoolSpec};

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

/// `f(p, plane)` for each of `planes` planes of `len` values in `buf`,
/// split into a few runs of whole planes per thread.
fn each_plane(buf: &mut [f32], len: usize, planes: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    let per = planes.div_ceil(pool::threads() * 4).max(1);
    let chunks = pieces(buf, per * len);
    pool::run(chunks.len(), &|t| {
        let mut dst = chunks[t].lock().unwrap_or_else(|e| e.into_inner());
        for (q, plane) in dst.chunks_mut(len).enumerate() {
            f(t * per + q, plane);
        }
    });
}

pub(super) fn pool2d(x: &[f32], s: PoolSpec) -> Result<Vec<f32>> {
    let mut out = output_overwritten(s.output_len())?;
    let (plane_in, plane_out) = (s.h * s.w, s.oh * s.ow);
    if out.is_empty() {
        return Ok(out);
    }
    let win = Windows::new(&s);
    each_plane(&mut out, plane_out, s.planes, &|p, o| {
        let plane = &x[p * plane_in..][..plane_in];
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
            return;
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
    each_plane(&mut gx, plane_in, s.planes, &|p, d| {
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
            return;
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
    });
    Ok(gx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2×2 max pool with stride 2 over `planes` planes of `h × w`.
    fn max_2x2_spec(planes: usize, h: usize, w: usize) -> PoolSpec {
        let (kind, oh, ow) = (PoolKind::Max, h / 2, w / 2);
        PoolSpec { kind, planes, h, w, kh: 2, kw: 2, sh: 2, sw: 2, ph: 0, pw: 0, oh, ow }
    }

    #[test]
    fn vectorised_2x2_max_pool_picks_as_the_window_scan() {
        // Values from a small set with NaN, so windows tie and hold NaNs;
        // widths around the vector width and odd sizes (an uncovered row
        // and column).
        for (h, w) in [(4, 16), (5, 17), (6, 34), (3, 31), (2, 2)] {
            let planes = 3;
            let s = max_2x2_spec(planes, h, w);
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
        let s = max_2x2_spec(64, 32, 32);
        super::super::cache::give(vec![f32::NAN; s.input_len()]);
        let x: Vec<f32> = (0..s.input_len()).map(|i| ((i * 37) % 101) as f32).collect();
        let gy = vec![1.0f32; s.output_len()];
        let gx = pool2d_backward(&x, &gy, s).unwrap();
        assert!(gx.iter().all(|v| *v == 0.0 || *v == 1.0), "an element of the gradient was left unwritten");
        assert_eq!(gx.iter().filter(|v| **v == 1.0).count(), s.output_len());
    }
}
