//! A custom op with its own backward: the straight-through estimator.
//!
//! `sign` has a zero gradient almost everywhere, so a network that
//! binarises its hidden units cannot learn through it. The straight-through
//! estimator (Bengio et al., 2013) uses the sign in the forward pass and
//! passes the gradient through as if it were the identity (clipped to
//! |x| ≤ 1) in the backward pass — something a composition of ops cannot
//! say, and a `CustomOp` can:
//!
//!     cargo run --release --example custom_op
//!
//! It trains a network with binary hidden units on four Gaussian blobs
//! whose classes are the XOR of two signs, and prints its accuracy.

use wgrad::nn::{self, Module};
use wgrad::optim::Adam;
use wgrad::train::{FitConfig, evaluate, fit};
use wgrad::{CustomOp, Device, Tensor, data::Dataset};

/// sign(x) forward, the identity on |x| ≤ 1 backward.
struct StraightThroughSign;

impl CustomOp for StraightThroughSign {
    fn name(&self) -> &'static str {
        "straight_through_sign"
    }

    fn forward(&self, inputs: &[Tensor]) -> Tensor {
        inputs[0].gt_scalar(0.0) * 2.0 - 1.0
    }

    fn backward(&self, inputs: &[Tensor], _output: &Tensor, grad: &Tensor) -> Vec<Option<Tensor>> {
        let inside = inputs[0].abs().le_scalar(1.0);
        vec![Some(grad * &inside)]
    }
}

/// A layer applying the op.
struct Binarize;

impl Module for Binarize {
    fn forward(&self, x: &Tensor) -> Tensor {
        Tensor::apply(StraightThroughSign, &[x])
    }
    fn visit(&self, _: &mut nn::Visitor) {}
}

fn main() -> wgrad::Result<()> {
    let dev = Device::best();
    wgrad::manual_seed(0);
    let mut g = wgrad::Generator::new(1);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for _ in 0..400 {
        let (a, b) = (g.normal() + if g.uniform() < 0.5 { 2.0 } else { -2.0 }, g.normal());
        let b = b + if g.uniform() < 0.5 { 2.0 } else { -2.0 };
        x.extend([a, b]);
        y.push(((a > 0.0) != (b > 0.0)) as u8 as f32);
    }
    let data = Dataset::new(x, y, &[2], 2);
    let model = nn::Sequential::new().add(nn::Linear::new(2, 16, &dev)).add(Binarize).add(nn::Linear::new(16, 2, &dev));
    let mut opt = Adam::new(model.parameters(), 0.01);
    fit(&model, &mut opt, &data, &FitConfig { epochs: 20, verbose: false, ..Default::default() })?;
    let m = evaluate(&model, &data, 100)?;
    println!("binary hidden units, trained through the straight-through estimator");
    println!("accuracy: {:.4}", m.accuracy());
    Ok(())
}
