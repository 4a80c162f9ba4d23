//! Layers: the [`Module`] trait, [`Linear`], [`Sequential`], [`Flatten`],
//! activation layers and [`Dropout`].
//!
//! Parameter names follow PyTorch's `state_dict`: a `Sequential` prefixes its
//! children's names with their index (`"1.weight"`), and `Linear` stores its
//! weight as `[out, in]`, so a saved model loads into the equivalent
//! `torch.nn.Sequential` and back (see [`crate::io`]).
//!
//! ```
//! use wgrad::{Device, Tensor, nn::{self, Module}};
//! let dev = Device::Cpu;
//! wgrad::manual_seed(0);
//! let mut model = nn::Sequential::new()
//!     .add(nn::Flatten)
//!     .add(nn::Linear::new(784, 128, &dev))
//!     .add(nn::ReLU)
//!     .add(nn::Dropout::new(0.2))
//!     .add(nn::Linear::new(128, 10, &dev));
//! let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
//! assert_eq!(names, ["1.weight", "1.bias", "4.weight", "4.bias"]);
//! model.set_training(false);
//! let logits = model.forward(&Tensor::zeros([2, 28, 28], &dev));
//! assert_eq!(logits.dims(), &[2, 10]);
//! ```

mod layers;
mod linear;

pub use layers::{Dropout, Flatten, GELU, ReLU, Sigmoid, Softmax, Tanh};
pub use linear::{Init, Linear};

use crate::Tensor;

/// A layer or a model: a differentiable function with named parameters.
pub trait Module: Send + Sync {
    /// Applies the module.
    fn forward(&self, x: &Tensor) -> Tensor;

    /// The trainable variables, with PyTorch `state_dict` names.
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// Switches training behaviour (dropout) on or off, as PyTorch's
    /// `train()` / `eval()`. Modules start in training mode.
    fn set_training(&mut self, _training: bool) {}

    /// A one-line description, for model summaries.
    fn describe(&self) -> String;

    /// The trainable variables, in `named_parameters` order.
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters().into_iter().map(|(_, t)| t).collect()
    }
}

/// Modules applied one after another.
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Module>>,
}

impl Sequential {
    /// An empty model (the identity).
    pub fn new() -> Self {
        Sequential::default()
    }

    /// Appends a layer.
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, layer: impl Module + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.layers.iter().fold(x.clone(), |h, layer| layer.forward(&h))
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.named_parameters().into_iter().map(move |(n, t)| (format!("{i}.{n}"), t)))
            .collect()
    }

    fn set_training(&mut self, training: bool) {
        for l in &mut self.layers {
            l.set_training(training);
        }
    }

    fn describe(&self) -> String {
        let inner: Vec<String> = self.layers.iter().map(|l| l.describe()).collect();
        format!("Sequential({})", inner.join(", "))
    }
}
