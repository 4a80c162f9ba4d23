//! A stable argsort along an axis, ordering as PyTorch: `-∞ … -0 = +0 …
//! +∞ < NaN`, equal elements in index order (also when descending).

use super::output_overwritten;
use crate::Result;
use crate::backend::AxisView;
use std::cmp::Ordering;

/// The order of two elements (both zeros equal, NaNs equal and last).
fn order(a: f32, b: f32) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).expect("no NaN here"),
    }
}

pub(super) fn argsort(x: &[f32], v: AxisView, descending: bool) -> Result<Vec<f32>> {
    let AxisView { outer, len, inner } = v;
    let mut out = output_overwritten(outer * len * inner)?;
    let mut idx: Vec<usize> = Vec::with_capacity(len);
    for o in 0..outer {
        for i in 0..inner {
            let at = |l: usize| x[(o * len + l) * inner + i];
            idx.clear();
            idx.extend(0..len);
            // A stable sort: equal elements keep their order either way.
            if descending {
                idx.sort_by(|&a, &b| order(at(b), at(a)));
            } else {
                idx.sort_by(|&a, &b| order(at(a), at(b)));
            }
            for (rank, &l) in idx.iter().enumerate() {
                out[(o * len + rank) * inner + i] = l as f32;
            }
        }
    }
    Ok(out)
}
