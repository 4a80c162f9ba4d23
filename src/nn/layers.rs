//! Parameter-free layers: reshaping, activations and dropout.

use super::{Mode, Module, Visitor};
use crate::Tensor;

/// Flattens every axis after the first (the batch axis), as Keras's and
/// PyTorch's `Flatten`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flatten;

impl Module for Flatten {
    fn forward(&self, x: &Tensor) -> Tensor {
        if x.rank() <= 2 { x.clone() } else { x.flatten(1, -1) }
    }
    fn visit(&self, _: &mut Visitor) {}
}

/// Splits axis `dim` into `sizes` (their product must be its length), as
/// PyTorch's `Unflatten`: `Unflatten::new(1, [1, 28])` turns a batch of
/// `[N, 28, 28]` digits into the `[N, 1, 28, 28]` images a convolution takes.
#[derive(Clone, Debug)]
pub struct Unflatten {
    dim: usize,
    sizes: Vec<usize>,
}

impl Unflatten {
    /// Splits axis `dim` into `sizes`.
    pub fn new(dim: usize, sizes: impl Into<Vec<usize>>) -> Self {
        Unflatten { dim, sizes: sizes.into() }
    }
}

impl Module for Unflatten {
    fn forward(&self, x: &Tensor) -> Tensor {
        let d = x.dims();
        let product: usize = self.sizes.iter().product();
        assert!(
            self.dim < d.len() && d[self.dim] == product,
            "Unflatten({}, {:?}): input of shape {} has no axis {} of length {product}",
            self.dim,
            self.sizes,
            x.shape(),
            self.dim
        );
        let mut dims = d[..self.dim].to_vec();
        dims.extend(&self.sizes);
        dims.extend(&d[self.dim + 1..]);
        x.reshape(dims)
    }
    fn visit(&self, _: &mut Visitor) {}
    fn describe(&self) -> String {
        format!("Unflatten({}, {:?})", self.dim, self.sizes)
    }
}

macro_rules! activation {
    ($($(#[$doc:meta])* $name:ident => $method:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default)]
        pub struct $name;

        impl Module for $name {
            fn forward(&self, x: &Tensor) -> Tensor {
                x.$method()
            }
            fn visit(&self, _: &mut Visitor) {}
        }
    )*};
}

activation! {
    /// `max(x, 0)`.
    ReLU => relu;
    /// The logistic function.
    Sigmoid => sigmoid;
    /// Hyperbolic tangent.
    Tanh => tanh;
    /// Gaussian error linear unit (the exact erf form, PyTorch's default).
    GELU => gelu;
    /// GELU's tanh approximation (PyTorch's `nn.GELU(approximate='tanh')`,
    /// GPT-2's activation).
    GELUTanh => gelu_tanh;
}

/// Softmax along the last axis.
#[derive(Clone, Copy, Debug, Default)]
pub struct Softmax;

impl Module for Softmax {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.softmax(-1)
    }
    fn visit(&self, _: &mut Visitor) {}
}

/// Inverted dropout with probability `p`, active only in training mode.
/// Its masks come from the calling thread's generator (see [`crate::rng`]).
#[derive(Debug)]
pub struct Dropout {
    p: f32,
    mode: Mode,
}

impl Dropout {
    /// Dropout with probability `p`, in training mode.
    pub fn new(p: f32) -> Self {
        assert!((0.0..=1.0).contains(&p), "Dropout: probability {p} is not in [0, 1]");
        Dropout { p, mode: Mode::default() }
    }
}

impl Module for Dropout {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.dropout(self.p, self.mode.is_training())
    }
    fn visit(&self, v: &mut Visitor) {
        v.mode(&self.mode);
    }
    fn describe(&self) -> String {
        format!("Dropout({})", self.p)
    }
}
