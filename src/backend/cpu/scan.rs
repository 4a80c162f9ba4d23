//! Running sums (cumsum) along an axis.

use super::output_overwritten;
use crate::Result;
use crate::backend::AxisView;

pub(super) fn cumsum(x: &[f32], v: AxisView, reverse: bool) -> Result<Vec<f32>> {
    let AxisView { outer, len, inner } = v;
    let mut out = output_overwritten(outer * len * inner)?;
    for o in 0..outer {
        for i in 0..inner {
            let mut acc = 0.0f32;
            for k in 0..len {
                let l = if reverse { len - 1 - k } else { k };
                let at = (o * len + l) * inner + i;
                acc += x[at];
                out[at] = acc;
            }
        }
    }
    Ok(out)
}
