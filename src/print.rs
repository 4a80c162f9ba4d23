//! `Display` for tensors, as PyTorch prints them:
//!
//! ```text
//! tensor([[ 1.5000, -2.0000],
//!         [ 0.2500,  4.0000]], device=gpu, requires_grad=true)
//! ```
//!
//! Whole numbers print as `1.`, magnitudes from 1e8 up or below 1e-4 in
//! scientific notation, others with four decimals, all right-aligned to one
//! width; tensors of more than 1000 elements show the first and last three
//! entries of each long axis around `...`. Printing reads the tensor back
//! (on a GPU, waiting for it); a poisoned tensor prints its error.

use crate::Tensor;
use std::fmt;

/// Elements from which long axes are summarised.
const SUMMARY_FROM: usize = 1000;
/// Entries shown at each end of a summarised axis.
const EDGE: usize = 3;

/// How every element of one tensor is written.
#[derive(Clone, Copy)]
enum Style {
    Whole,
    Fixed,
    Scientific,
}

fn style(values: &[f32]) -> Style {
    let finite: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.iter().all(|v| v.fract() == 0.0) {
        let max = finite.iter().fold(0f32, |m, v| m.max(v.abs()));
        return if max >= 1e8 { Style::Scientific } else { Style::Whole };
    }
    let max = finite.iter().fold(0f32, |m, v| m.max(v.abs()));
    let min = finite.iter().filter(|v| **v != 0.0).fold(f32::INFINITY, |m, v| m.min(v.abs()));
    if max >= 1e8 || min < 1e-4 { Style::Scientific } else { Style::Fixed }
}

fn element(v: f32, style: Style) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    match style {
        Style::Whole => format!("{v:.0}."),
        Style::Fixed => format!("{v:.4}"),
        Style::Scientific => {
            // Rust writes 1.0000e8; PyTorch 1.0000e+08.
            let s = format!("{v:.4e}");
            let (mantissa, exp) = s.split_once('e').expect("a float in e notation has an e");
            let exp: i32 = exp.parse().expect("an exponent");
            format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
        }
    }
}

/// The indices shown along an axis of `len` (`None` marks the ellipsis).
fn shown(len: usize, summarise: bool) -> Vec<Option<usize>> {
    if summarise && len > 2 * EDGE {
        (0..EDGE).map(Some).chain([None]).chain((len - EDGE..len).map(Some)).collect()
    } else {
        (0..len).map(Some).collect()
    }
}

/// The offsets (row-major) of the elements shown of the sub-tensor of
/// `dims` at `offset`, in order.
fn shown_offsets(dims: &[usize], offset: usize, summarise: bool, out: &mut Vec<usize>) {
    let Some((&len, rest)) = dims.split_first() else {
        out.push(offset);
        return;
    };
    let stride: usize = rest.iter().product();
    for i in shown(len, summarise).into_iter().flatten() {
        shown_offsets(rest, offset + i * stride, summarise, out);
    }
}

/// Writes the sub-tensor of `dims` at `offset`, its brackets indented by
/// `indent` after a line break; `text` gives the shown elements' text.
fn nested(
    out: &mut String,
    text: &dyn Fn(usize) -> String,
    dims: &[usize],
    offset: usize,
    indent: usize,
    summarise: bool,
) {
    let Some((&len, rest)) = dims.split_first() else {
        out.push_str(&text(offset));
        return;
    };
    let stride: usize = rest.iter().product();
    out.push('[');
    let entries = shown(len, summarise);
    for (k, entry) in entries.iter().enumerate() {
        if k > 0 {
            out.push(',');
            if rest.is_empty() {
                out.push(' ');
            } else {
                // One blank line per axis below the innermost pair.
                out.push_str(&"\n".repeat(rest.len()));
                out.push_str(&" ".repeat(indent + 1));
            }
        }
        match entry {
            Some(i) => nested(out, text, rest, offset + i * stride, indent + 1, summarise),
            None => out.push_str("..."),
        }
    }
    out.push(']');
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut suffix = String::new();
        if !self.device().is_cpu() {
            suffix.push_str(", device=gpu");
        }
        if self.is_tracked() {
            suffix.push_str(if self.is_variable() { ", requires_grad=true" } else { ", grad_fn" });
        }
        let values = match self.to_vec() {
            Ok(v) => v,
            Err(e) => return write!(f, "tensor(<{e}>, shape={}{suffix})", self.shape()),
        };
        let mut out = String::from("tensor(");
        if self.elem_count() == 0 {
            out.push_str(&format!("[], size={}", self.shape()));
        } else {
            // Only the elements shown are styled and formatted, as PyTorch
            // does: a summarised 100M-element tensor formats 6 per axis.
            let summarise = self.elem_count() > SUMMARY_FROM;
            let mut offsets = Vec::new();
            shown_offsets(self.dims(), 0, summarise, &mut offsets);
            let shown_values: Vec<f32> = offsets.iter().map(|&o| values[o]).collect();
            let style = style(&shown_values);
            let texts: Vec<String> = shown_values.iter().map(|&v| element(v, style)).collect();
            let width = texts.iter().map(String::len).max().unwrap_or(0);
            let text = |offset: usize| {
                let at = offsets.binary_search(&offset).expect("only shown elements are written");
                format!("{:>width$}", texts[at])
            };
            nested(&mut out, &text, self.dims(), 0, "tensor(".len(), summarise);
        }
        write!(f, "{out}{suffix})")
    }
}

#[cfg(test)]
mod tests {
    use crate::{Device, Tensor};

    fn show(values: Vec<f32>, dims: &[usize]) -> String {
        Tensor::from_vec(values, dims, &Device::Cpu).unwrap().to_string()
    }

    #[test]
    fn prints_like_pytorch() {
        assert_eq!(
            show(vec![1.5, -2.0, 0.25, 4.0], &[2, 2]),
            "tensor([[ 1.5000, -2.0000],\n        [ 0.2500,  4.0000]])"
        );
        assert_eq!(show(vec![1.0, 2.0, 3.0], &[3]), "tensor([1., 2., 3.])");
        assert_eq!(show(vec![3.5], &[]), "tensor(3.5000)");
        assert_eq!(show(vec![1e10, 1.0], &[2]), "tensor([1.0000e+10, 1.0000e+00])");
        assert_eq!(show(vec![f32::NAN, 1.5, f32::NEG_INFINITY], &[3]), "tensor([   nan, 1.5000,   -inf])");
        assert_eq!(show(vec![], &[0, 3]), "tensor([], size=[0, 3])");
        assert_eq!(
            show((0..8).map(|v| v as f32).collect(), &[2, 2, 2]),
            "tensor([[[0., 1.],\n         [2., 3.]],\n\n        [[4., 5.],\n         [6., 7.]]])"
        );
        let long = show((0..2000).map(|v| v as f32).collect(), &[2000]);
        assert_eq!(long, "tensor([   0.,    1.,    2., ..., 1997., 1998., 1999.])");
        let w = Tensor::ones([2], &Device::Cpu).requires_grad();
        assert_eq!(w.to_string(), "tensor([1., 1.], requires_grad=true)");
    }
}
