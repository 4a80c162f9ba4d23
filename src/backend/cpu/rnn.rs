//! The LSTM cell's gate arithmetic, fused: one pass over a step's gates
//! forward, one backward (see [`crate::backend::Backend::lstm_cell`]).
//! Rows go to the thread pool; within a row the loops run over the four
//! gate slices side by side and vectorise (`math`'s exp is branch-free).

use super::math::{sigmoid, tanh};
use super::output_overwritten;
use super::simd::for_rows;
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
