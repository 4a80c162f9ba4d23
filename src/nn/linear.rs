//! The fully connected layer and weight initialisation.

use super::{Module, Visitor};
use crate::rng::{Generator, with_default_generator};
use crate::{Device, Tensor};

/// How to draw a layer's initial weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// U(±√(6 / (fan_in + fan_out))): Keras's default for `Dense`.
    GlorotUniform,
    /// U(±√(6 / fan_in)): He et al., for ReLU networks.
    HeUniform,
    /// N(0, 2 / fan_in): He et al.
    HeNormal,
    /// U(±1/√fan_in): the bound of PyTorch's default `nn.Linear` weight
    /// (PyTorch draws the bias from it too, where `with_init` starts it at
    /// zero: [`Linear::torch`] is PyTorch's initialisation whole).
    LeCunUniform,
}

impl Init {
    /// A `[fan_out, fan_in]` weight tensor.
    pub fn weight(self, fan_in: usize, fan_out: usize, generator: &mut Generator, device: &Device) -> Tensor {
        let (fi, fo) = (fan_in as f32, fan_out as f32);
        let shape = [fan_out, fan_in];
        let uniform = |bound: f32, g: &mut Generator| Tensor::rand_uniform_with(shape, -bound, bound, g, device);
        match self {
            Init::GlorotUniform => uniform((6.0 / (fi + fo)).sqrt(), generator),
            Init::HeUniform => uniform((6.0 / fi).sqrt(), generator),
            Init::LeCunUniform => uniform(1.0 / fi.sqrt(), generator),
            Init::HeNormal => Tensor::randn_with(shape, 0.0, (2.0 / fi).sqrt(), generator, device),
        }
    }
}

/// `y = x·Wᵀ + b`, with `W` of shape `[out, in]` (PyTorch's layout) and a
/// zero-initialised bias, as Keras's `Dense`.
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`, if the layer has a bias.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Glorot-uniform weights from the calling thread's default generator,
    /// zero bias.
    pub fn new(inputs: usize, outputs: usize, device: &Device) -> Self {
        with_default_generator(|g| Linear::with_init(inputs, outputs, Init::GlorotUniform, true, g, device))
    }

    /// PyTorch's `nn.Linear(inputs, outputs)` initialisation, weight and
    /// bias both drawn from U(±1/√inputs) (the calling thread's default
    /// generator): PyTorch's distributions, for ports that must start as
    /// PyTorch's layer does (not its values: the generators differ).
    pub fn torch(inputs: usize, outputs: usize, device: &Device) -> Self {
        with_default_generator(|g| super::torch_linear(inputs, outputs, g, device))
    }

    /// A layer with the given initialisation, drawn from `generator`.
    pub fn with_init(
        inputs: usize,
        outputs: usize,
        init: Init,
        bias: bool,
        generator: &mut Generator,
        device: &Device,
    ) -> Self {
        let weight = init.weight(inputs, outputs, generator, device).requires_grad();
        let bias = bias.then(|| Tensor::zeros([outputs], device).requires_grad());
        Linear { weight, bias }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        let inputs = self.weight.dims()[1];
        assert!(
            x.rank() >= 1 && x.dims()[x.rank() - 1] == inputs,
            "{}: input of shape {} has {} features, the layer takes {inputs}",
            self.describe(),
            x.shape(),
            x.dims().last().map_or("no".into(), |d| d.to_string()),
        );
        x.linear(&self.weight, self.bias.as_ref())
    }

    fn visit(&self, v: &mut Visitor) {
        v.param("weight", &self.weight);
        if let Some(b) = &self.bias {
            v.param("bias", b);
        }
    }

    fn describe(&self) -> String {
        let d = self.weight.dims();
        format!("Linear({} -> {}{})", d[1], d[0], if self.bias.is_some() { "" } else { ", no bias" })
    }
}
