//! The LSTM cell's gate arithmetic, fused: one pass over a step's gates
//! forward, one backward (see [`crate::backend::Backend::lstm_cell`]).
//! Rows go to the thread pool; within a row the loops run over the four
//! gate slices side by side and vectorise (`math`'s exp is branch-free).
//! A whole layer over a sequence is fused too ([`lstm_layer`]): the
//! recurrence forward and its backward through time.

use super::math::{sigmoid, tanh};
use super::matmul::{Mat, gemm_into};
use super::pool::{self, Chunks, threads};
use super::simd::{for_rows, simd};
use super::{output, output_overwritten};
use crate::Result;

/// The four `hidden`-long gate slices of a `4·hidden` row.
fn split4(row: &[f32], hidden: usize) -> [&[f32]; 4] {
    let (a, rest) = row.split_at(hidden);
    let (b, rest) = rest.split_at(hidden);
    let (c, d) = rest.split_at(hidden);
    [a, b, c, &d[..hidden]]
}

/// `hc = [h | c]` per row from `gates = [i | f | g | o]` (pre-activation)
/// and `hc_prev = [h_prev | c_prev]`.
pub(super) fn lstm_cell(gates: &[f32], hc_prev: &[f32], batch: usize, hidden: usize) -> Result<Vec<f32>> {
    let mut hc = output_overwritten(batch * 2 * hidden)?;
    for_rows(
        &mut hc,
        (2 * hidden).max(1),
        #[inline(always)]
        |b, out| {
            let [gi, gf, gg, go] = split4(&gates[b * 4 * hidden..(b + 1) * 4 * hidden], hidden);
            let c_prev = &hc_prev[b * 2 * hidden + hidden..(b + 1) * 2 * hidden];
            let (h, c) = out.split_at_mut(hidden);
            // Index loops over slices cut to one length: no bounds checks,
            // and no iterator adapter left out of line (compiled without
            // the `simd` wrapper's target features), so the loop vectorises.
            let (h, c, c_prev) = (&mut h[..hidden], &mut c[..hidden], &c_prev[..hidden]);
            for j in 0..hidden {
                let cj = sigmoid(gf[j]) * c_prev[j] + sigmoid(gi[j]) * tanh(gg[j]);
                c[j] = cj;
                h[j] = sigmoid(go[j]) * tanh(cj);
            }
        },
    );
    Ok(hc)
}

/// `[d gates, d hc_prev]` for the gradient `ghc = [dh | dc]` of the output
/// (`d hc_prev`'s `h` half is zero: `h_prev` reaches the cell only through
/// the gates).
pub(super) fn lstm_cell_backward(
    gates: &[f32],
    hc_prev: &[f32],
    ghc: &[f32],
    batch: usize,
    hidden: usize,
) -> Result<[Vec<f32>; 2]> {
    // Both results of a row side by side, [d gates (4h) | d c_prev (h)],
    // so one parallel pass writes them; split after.
    let width = 5 * hidden;
    let mut both = output_overwritten(batch * width)?;
    for_rows(
        &mut both,
        width.max(1),
        #[inline(always)]
        |b, out| {
            let [gi, gf, gg, go] = split4(&gates[b * 4 * hidden..(b + 1) * 4 * hidden], hidden);
            let c_prev = &hc_prev[b * 2 * hidden + hidden..(b + 1) * 2 * hidden];
            let (dh, dc_in) = ghc[b * 2 * hidden..(b + 1) * 2 * hidden].split_at(hidden);
            let (dg, dc_prev) = out.split_at_mut(4 * hidden);
            let (di, rest) = dg.split_at_mut(hidden);
            let (df, rest) = rest.split_at_mut(hidden);
            let (dgg, do_) = rest.split_at_mut(hidden);
            // As in the forward: index loops over slices of one length.
            let (di, df, dgg, do_, dc_prev) =
                (&mut di[..hidden], &mut df[..hidden], &mut dgg[..hidden], &mut do_[..hidden], &mut dc_prev[..hidden]);
            let (c_prev, dh, dc_in) = (&c_prev[..hidden], &dh[..hidden], &dc_in[..hidden]);
            for j in 0..hidden {
                let (i, f, g, o) = (sigmoid(gi[j]), sigmoid(gf[j]), tanh(gg[j]), sigmoid(go[j]));
                let tc = tanh(f * c_prev[j] + i * g);
                let dc = dc_in[j] + dh[j] * o * (1.0 - tc * tc);
                di[j] = dc * g * i * (1.0 - i);
                df[j] = dc * c_prev[j] * f * (1.0 - f);
                dgg[j] = dc * i * (1.0 - g * g);
                do_[j] = dh[j] * tc * o * (1.0 - o);
                dc_prev[j] = dc * f;
            }
        },
    );
    let mut dgates = output_overwritten(batch * 4 * hidden)?;
    let mut dhc = output_overwritten(batch * 2 * hidden)?;
    for b in 0..batch {
        let row = &both[b * width..(b + 1) * width];
        dgates[b * 4 * hidden..(b + 1) * 4 * hidden].copy_from_slice(&row[..4 * hidden]);
        let out = &mut dhc[b * 2 * hidden..(b + 1) * 2 * hidden];
        out[..hidden].fill(0.0);
        out[hidden..].copy_from_slice(&row[4 * hidden..]);
    }
    Ok([dgates, dhc])
}

/// A whole LSTM layer over a batch-first sequence (see
/// [`crate::backend::Backend::lstm_layer`]): from the input projections
/// `projected` (`[batch, seq, 4·hidden]`, both biases in), `w_hh`
/// (`[4·hidden, hidden]`) and the initial state `hc0` (`[batch,
/// 2·hidden]`), the state at every step `[batch, seq, 2·hidden]` and, for
/// the backward, the activated gates `[σ(i) | σ(f) | tanh(g) | σ(o)]` of
/// every step (`[batch, seq, 4·hidden]`).
///
/// Batch rows never interact, so each thread runs the whole recurrence for
/// its own block of rows — one parallel region per layer instead of two per
/// step (PyTorch's CPU LSTM parallelises inside each step's GEMM).
pub(super) fn lstm_layer(
    projected: &[f32],
    w_hh: &[f32],
    hc0: &[f32],
    batch: usize,
    seq: usize,
    hidden: usize,
) -> Result<[Vec<f32>; 2]> {
    let (h4, h2) = (4 * hidden, 2 * hidden);
    let mut acts = output_overwritten(batch * seq * h4)?;
    let mut hc = output_overwritten(batch * seq * h2)?;
    if acts.is_empty() {
        return Ok([acts, hc]);
    }
    // W_hhᵀ stored row-major once, [hidden, 4·hidden]: the GEMM of every
    // step packs it from contiguous rows.
    let mut w_t = output_overwritten(hidden * h4)?;
    // In 16×16 tiles, so both the rows read and the rows written stay in
    // cache (element by element, the writes strode 2 KiB apart).
    const TILE: usize = 16;
    for r0 in (0..h4).step_by(TILE) {
        for k0 in (0..hidden).step_by(TILE) {
            for r in r0..(r0 + TILE).min(h4) {
                for k in k0..(k0 + TILE).min(hidden) {
                    w_t[k * h4 + r] = w_hh[r * hidden + k];
                }
            }
        }
    }
    let w_hh = &w_t[..];
    let per = rows_per_task(batch);
    let (acts_c, hc_c) = (Chunks::new(&mut acts, per * seq * h4), Chunks::new(&mut hc, per * seq * h2));
    pool::run(acts_c.count(), &|i| {
        // SAFETY: task i takes piece i of each (`pool::run` runs each task once).
        let (acts, hc) = unsafe { (acts_c.get(i), hc_c.get(i)) };
        let (b0, rows) = (i * per, acts.len() / (seq * h4));
        let projected = &projected[b0 * seq * h4..(b0 + rows) * seq * h4];
        let hc0 = &hc0[b0 * h2..(b0 + rows) * h2];
        simd(
            #[inline(always)]
            || forward_rows(projected, w_hh, hc0, acts, hc, rows, seq, hidden),
        )
    });
    Ok([acts, hc])
}

/// The width of the blocks the layer's loops compute on: copied into local
/// arrays, so the vectoriser sees no aliasing to check between the dozen
/// slices a step reads and writes (with them read in place, it fell back
/// to scalar code).
const LANES: usize = 16;

/// Up to [`LANES`] values as a local array, zero-padded.
#[inline(always)]
fn lanes(from: &[f32]) -> [f32; LANES] {
    let mut a = [0.0; LANES];
    a[..from.len()].copy_from_slice(from);
    a
}

/// Rows per task when a layer's batch is split over the pool's threads.
fn rows_per_task(batch: usize) -> usize {
    batch.div_ceil(threads().min(batch).max(1))
}

/// [`lstm_layer`] for `rows` batch rows (`w_t` is W_hhᵀ, row-major).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn forward_rows(
    projected: &[f32],
    w_t: &[f32],
    hc0: &[f32],
    acts: &mut [f32],
    hc: &mut [f32],
    rows: usize,
    seq: usize,
    hidden: usize,
) {
    let (h4, h2) = (4 * hidden, 2 * hidden);
    let w_t = Mat::new(w_t, hidden, h4);
    for t in 0..seq {
        for r in 0..rows {
            let at = (r * seq + t) * h4;
            acts[at..at + h4].copy_from_slice(&projected[at..at + h4]);
        }
        // gates += h_prev · W_hhᵀ, the rows' h_prev read in place.
        let h_prev = if t == 0 {
            Mat { data: hc0, rows, cols: hidden, rs: h2, cs: 1 }
        } else {
            Mat { data: &hc[(t - 1) * h2..], rows, cols: hidden, rs: seq * h2, cs: 1 }
        };
        gemm_into(&mut acts[t * h4..], seq * h4, h_prev, w_t, true);
        for r in 0..rows {
            let at = (r * seq + t) * h2;
            let (before, now) = hc.split_at_mut(at);
            let c_prev = if t == 0 { &hc0[r * h2 + hidden..(r + 1) * h2] } else { &before[at - hidden..at] };
            let (h, c) = now[..h2].split_at_mut(hidden);
            let gates = &mut acts[(r * seq + t) * h4..(r * seq + t + 1) * h4];
            for j in (0..hidden).step_by(LANES) {
                let n = LANES.min(hidden - j);
                // Four calls, not `[0, 1, 2, 3].map(..)`: that was compiled
                // out of line, without the `simd` wrapper's features.
                let gate = |k: usize| lanes(&gates[k * hidden + j..][..n]);
                let (mut i, mut f, mut g, mut o) = (gate(0), gate(1), gate(2), gate(3));
                let cp = lanes(&c_prev[j..j + n]);
                let (mut hl, mut cl) = ([0.0; LANES], [0.0; LANES]);
                for k in 0..LANES {
                    (i[k], f[k], g[k], o[k]) = (sigmoid(i[k]), sigmoid(f[k]), tanh(g[k]), sigmoid(o[k]));
                    cl[k] = f[k] * cp[k] + i[k] * g[k];
                    hl[k] = o[k] * tanh(cl[k]);
                }
                for (k, a) in [i, f, g, o].iter().enumerate() {
                    gates[k * hidden + j..][..n].copy_from_slice(&a[..n]);
                }
                h[j..j + n].copy_from_slice(&hl[..n]);
                c[j..j + n].copy_from_slice(&cl[..n]);
            }
        }
    }
}

/// The gradients of [`lstm_layer`] for `g` (`[batch, seq, 2·hidden]`, the
/// gradient of every step's state): `[d projected, d w_hh, d hc0]`, by
/// backpropagation through time from the saved activations `acts` and
/// states `hc`. As in the forward, each thread walks the sequence back for
/// its own rows (the recurrent `dh · W_hh` per step); `d w_hh`, which sums
/// over every row and step, is one GEMM after.
#[allow(clippy::too_many_arguments)]
pub(super) fn lstm_layer_backward(
    acts: &[f32],
    hc: &[f32],
    hc0: &[f32],
    w_hh: &[f32],
    g: &[f32],
    batch: usize,
    seq: usize,
    hidden: usize,
) -> Result<[Vec<f32>; 3]> {
    let (h4, h2) = (4 * hidden, 2 * hidden);
    let mut dgates = output_overwritten(batch * seq * h4)?;
    let mut dhc0 = output(batch * h2)?;
    let mut dw = output(h4 * hidden)?;
    if dgates.is_empty() {
        return Ok([dgates, dw, dhc0]);
    }
    let per = rows_per_task(batch);
    let (dg_c, dhc0_c) = (Chunks::new(&mut dgates, per * seq * h4), Chunks::new(&mut dhc0, per * h2));
    pool::run(dg_c.count(), &|i| {
        // SAFETY: task i takes piece i of each (`pool::run` runs each task once).
        let (dgates, dhc0) = unsafe { (dg_c.get(i), dhc0_c.get(i)) };
        let (b0, rows) = (i * per, dgates.len() / (seq * h4));
        let span = |width: usize| b0 * seq * width..(b0 + rows) * seq * width;
        let (acts, hc, g) = (&acts[span(h4)], &hc[span(h2)], &g[span(h2)]);
        let hc0 = &hc0[b0 * h2..(b0 + rows) * h2];
        simd(
            #[inline(always)]
            || backward_rows(acts, hc, hc0, w_hh, g, dgates, dhc0, rows, seq, hidden),
        )
    });
    // d w_hh = Σ over rows and steps of d gatesᵀ · h_prev: one GEMM over
    // the [batch·seq] axis, its 4·hidden output rows split over threads.
    let mut h_prev = output_overwritten(batch * seq * hidden)?;
    for b in 0..batch {
        for t in 0..seq {
            let from = if t == 0 { &hc0[b * h2..b * h2 + hidden] } else { &hc[(b * seq + t - 1) * h2..][..hidden] };
            h_prev[(b * seq + t) * hidden..][..hidden].copy_from_slice(from);
        }
    }
    let steps = batch * seq;
    let per_rows = h4.div_ceil(threads()).max(1);
    let dw_c = Chunks::new(&mut dw, per_rows * hidden);
    pool::run(dw_c.count(), &|i| {
        // SAFETY: task i takes piece i (`pool::run` runs each task once).
        let out = unsafe { dw_c.get(i) };
        let r0 = i * per_rows;
        let a = Mat { data: &dgates[r0..], rows: out.len() / hidden, cols: steps, rs: 1, cs: h4 };
        gemm_into(out, hidden, a, Mat::new(&h_prev, steps, hidden), false);
    });
    Ok([dgates, dw, dhc0])
}

/// [`lstm_layer_backward`]'s recurrence for `rows` batch rows.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_rows(
    acts: &[f32],
    hc: &[f32],
    hc0: &[f32],
    w_hh: &[f32],
    g: &[f32],
    dgates: &mut [f32],
    dhc0: &mut [f32],
    rows: usize,
    seq: usize,
    hidden: usize,
) {
    let (h4, h2) = (4 * hidden, 2 * hidden);
    // The gradients flowing into step t from step t + 1, [dh | dc] per row
    // (zero past the last step); after step 0 they are d hc0.
    dhc0.fill(0.0);
    let mut dh_next = vec![0.0f32; rows * hidden];
    for t in (0..seq).rev() {
        for r in 0..rows {
            let at = r * seq + t;
            let a = &acts[at * h4..(at + 1) * h4];
            let c = &hc[at * h2 + hidden..(at + 1) * h2];
            let c_prev =
                if t == 0 { &hc0[r * h2 + hidden..(r + 1) * h2] } else { &hc[(at - 1) * h2 + hidden..at * h2] };
            let (gh, gc) = g[at * h2..(at + 1) * h2].split_at(hidden);
            let dh_in = &dh_next[r * hidden..(r + 1) * hidden];
            let dc_state = &mut dhc0[r * h2 + hidden..(r + 1) * h2];
            let dg = &mut dgates[at * h4..(at + 1) * h4];
            for j in (0..hidden).step_by(LANES) {
                let n = LANES.min(hidden - j);
                let gate = |k: usize| lanes(&a[k * hidden + j..][..n]);
                let (i, f, gv, o) = (gate(0), gate(1), gate(2), gate(3));
                let (cl, cp, ghl, gcl) =
                    (lanes(&c[j..j + n]), lanes(&c_prev[j..j + n]), lanes(&gh[j..j + n]), lanes(&gc[j..j + n]));
                let (dhn, mut dcs) = (lanes(&dh_in[j..j + n]), lanes(&dc_state[j..j + n]));
                let mut d = [[0.0; LANES]; 4];
                for k in 0..LANES {
                    let tc = tanh(cl[k]);
                    let dh = ghl[k] + dhn[k];
                    let dc = gcl[k] + dcs[k] + dh * o[k] * (1.0 - tc * tc);
                    d[0][k] = dc * gv[k] * i[k] * (1.0 - i[k]);
                    d[1][k] = dc * cp[k] * f[k] * (1.0 - f[k]);
                    d[2][k] = dc * i[k] * (1.0 - gv[k] * gv[k]);
                    d[3][k] = dh * tc * o[k] * (1.0 - o[k]);
                    dcs[k] = dc * f[k];
                }
                for (k, dk) in d.iter().enumerate() {
                    dg[k * hidden + j..][..n].copy_from_slice(&dk[..n]);
                }
                dc_state[j..j + n].copy_from_slice(&dcs[..n]);
            }
        }
        // dh into step t - 1 (or h0) = d gates · W_hh.
        let dg_t = Mat { data: &dgates[t * h4..], rows, cols: h4, rs: seq * h4, cs: 1 };
        gemm_into(&mut dh_next, hidden, dg_t, Mat::new(w_hh, h4, hidden), false);
    }
    for r in 0..rows {
        dhc0[r * h2..r * h2 + hidden].copy_from_slice(&dh_next[r * hidden..(r + 1) * hidden]);
    }
}
