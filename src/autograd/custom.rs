//! Ops with their own backward rule — PyTorch's `autograd.Function`,
//! candle's `CustomOp` — for what a composition of wgrad's ops cannot say:
//! a straight-through estimator, a gradient that is cheaper or more stable
//! than the composed one, a forward computed on the host.
//!
//! The forward runs without recording (anything goes, reading tensors back
//! included); the backward gets the inputs, the output and the output's
//! gradient, and returns a gradient per input, computed with wgrad's ops
//! so it runs on the device the forward ran on. Inputs and output are
//! version-checked like every op's: modifying one in place between the
//! forward and the backward is refused.
//!
//! ```
//! use wgrad::{CustomOp, Device, Tensor, gradcheck};
//!
//! /// x³, with its derivative written out.
//! struct Cube;
//! impl CustomOp for Cube {
//!     fn name(&self) -> &'static str { "cube" }
//!     fn forward(&self, inputs: &[Tensor]) -> Tensor { inputs[0].powf(3.0) }
//!     fn backward(&self, inputs: &[Tensor], _out: &Tensor, grad: &Tensor) -> Vec<Option<Tensor>> {
//!         vec![Some(grad * &(inputs[0].sqr() * 3.0))]
//!     }
//! }
//!
//! let x = Tensor::from_vec(vec![0.5, -1.5, 2.0], [3], &Device::Cpu).unwrap();
//! gradcheck(|v| Tensor::apply(Cube, &[&v[0]]), &[x]).unwrap();
//! ```

use crate::{Tensor, no_grad};
use std::sync::Arc;

/// An op with its own forward and backward.
pub trait CustomOp: Send + Sync + 'static {
    /// The op's name, in errors and anomaly reports.
    fn name(&self) -> &'static str;
    /// The output, from the inputs. Runs without recording.
    fn forward(&self, inputs: &[Tensor]) -> Tensor;
    /// The gradient of each input (`None` where there is none), given the
    /// inputs, the output and the output's gradient `grad`. Runs without
    /// recording; each gradient must have its input's shape.
    fn backward(&self, inputs: &[Tensor], output: &Tensor, grad: &Tensor) -> Vec<Option<Tensor>>;
}

impl Tensor {
    /// Applies a [`CustomOp`] to `inputs`, recording its backward rule when
    /// an input is tracked.
    pub fn apply(op: impl CustomOp, inputs: &[&Tensor]) -> Tensor {
        let op = Arc::new(op);
        let owned: Vec<Tensor> = inputs.iter().map(|&t| t.detach()).collect();
        let out = no_grad(|| op.forward(&owned)).detach();
        let name = op.name();
        let count = inputs.len();
        out.record(name, inputs, move |c| {
            let inputs: Vec<Tensor> = (0..count).map(|i| c.input(i).clone()).collect();
            let grads = op.backward(&inputs, c.output(), c.grad);
            assert!(
                grads.len() == count,
                "backward of `{name}`: {} gradients for {count} inputs (the op's backward rule is wrong)",
                grads.len()
            );
            grads
        })
    }
}
