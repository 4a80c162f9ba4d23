//! Tensor ops, one file per family. Each op checks its arguments (panicking
//! with the op's name and the shapes on misuse), runs the device kernel, and
//! records its backward rule right next to the forward.
//!
//! Backward rules are written with the same public ops, so they run on the
//! device the forward ran on; the walk runs them with recording off.

mod conv;
mod elementwise;
mod loss;

pub use conv::{Conv2dOptions, Padding, Size2};
pub use loss::CrossEntropyOptions;
mod matmul;
mod nn;
mod reduce;
mod sequence;
pub use sequence::{Sampling, multinomial, sample, sampling_probs, scaled_dot_product_attention};
mod shape;
mod softmax;
mod sort;

use crate::Tensor;

/// Panics unless `a` and `b` live on the same device.
pub(crate) fn same_device(op: &str, a: &Tensor, b: &Tensor) {
    assert!(
        a.device() == b.device(),
        "{op}: tensors are on different devices ({} and {}); move one with to_device",
        a.device(),
        b.device()
    );
}
