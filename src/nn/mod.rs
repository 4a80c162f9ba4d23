//! Layers: the [`Module`] trait, [`Linear`], [`Sequential`], [`Flatten`],
//! activation layers, [`Dropout`], and the image layers [`Conv2d`],
//! [`MaxPool2d`], [`AvgPool2d`], [`AdaptiveAvgPool2d`], [`BatchNorm1d`],
//! [`BatchNorm2d`] and [`Residual`].
//!
//! A module shows its parameters, buffers and submodules to a [`Visitor`]
//! in its one required method besides `forward`, [`Module::visit`]; every
//! other method — `named_parameters`, `state_dict`, `train`/`eval`,
//! freezing, `to_device`, saving — is a walk over that. A module cannot
//! leave a parameter out of one of them and not the others, and a custom
//! module that forgets `visit` does not compile.
//!
//! Names follow PyTorch's `state_dict`: a child's are prefixed with the
//! name it is visited under (`Sequential` uses indices: `"1.weight"`), and
//! `Linear` stores its weight as `[out, in]`, so a saved model loads into
//! the equivalent `torch.nn` model and back (see [`crate::io`]).
//!
//! ```
//! use wgrad::{Device, Tensor, nn::{self, Module, Visitor}};
//! let dev = Device::Cpu;
//! wgrad::manual_seed(0);
//!
//! // A custom layer: a linear map plus a learnt per-feature scale.
//! struct Scaled { linear: nn::Linear, scale: Tensor }
//! impl Module for Scaled {
//!     fn forward(&self, x: &Tensor) -> Tensor {
//!         &self.linear.forward(x) * &self.scale
//!     }
//!     fn visit(&self, v: &mut Visitor) {
//!         v.child("linear", &self.linear);
//!         v.param("scale", &self.scale);
//!     }
//! }
//!
//! let model = nn::Sequential::new()
//!     .add(nn::Flatten)
//!     .add(Scaled { linear: nn::Linear::new(784, 128, &dev), scale: Tensor::ones([128], &dev).requires_grad() })
//!     .add(nn::ReLU)
//!     .add(nn::Dropout::new(0.2))
//!     .add(nn::Linear::new(128, 10, &dev));
//! let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
//! assert_eq!(names, ["1.linear.weight", "1.linear.bias", "1.scale", "4.weight", "4.bias"]);
//! assert_eq!(model.num_parameters(), 784 * 128 + 128 + 128 + 128 * 10 + 10);
//! model.eval();
//! let logits = model.forward(&Tensor::zeros([2, 28, 28], &dev));
//! assert_eq!(logits.dims(), &[2, 10]);
//! ```

mod conv;
mod layers;
mod linear;
mod sequence;

pub use conv::{AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, MaxPool2d, Residual};
pub use layers::{Dropout, Flatten, GELU, GELUTanh, ReLU, Sigmoid, Softmax, Tanh, Unflatten};
pub use linear::{Init, Linear};
pub(crate) use sequence::torch_linear;
pub use sequence::{Embedding, GRU, LSTM, LayerNorm, LstmState, MultiheadAttention, TransformerBlock};

use crate::{Device, Result, Tensor};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a walk over a module meets.
enum Item<'a> {
    /// A trainable variable, under its full name.
    Param(&'a str, &'a Tensor),
    /// State that is saved but not trained (BatchNorm's running statistics).
    Buffer(&'a str, &'a Tensor),
    /// A training-mode flag.
    Mode(&'a Mode),
}

/// What [`Module::visit`] shows its parameters, buffers and children to.
/// Names are prefixed with the path of the children they are in.
pub struct Visitor<'a> {
    prefix: String,
    f: &'a mut dyn FnMut(Item<'_>),
}

impl<'a> Visitor<'a> {
    fn new(f: &'a mut dyn FnMut(Item<'_>)) -> Self {
        Visitor { prefix: String::new(), f }
    }

    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A parameter: a variable the optimizer trains and `state_dict` saves.
    pub fn param(&mut self, name: &str, tensor: &Tensor) {
        let full = self.name(name);
        (self.f)(Item::Param(&full, tensor));
    }

    /// A buffer: state that `state_dict` saves and `to_device` moves, but
    /// that is not trained (running statistics).
    pub fn buffer(&mut self, name: &str, tensor: &Tensor) {
        let full = self.name(name);
        (self.f)(Item::Buffer(&full, tensor));
    }

    /// A submodule, whose names are prefixed with `name.`.
    pub fn child(&mut self, name: &str, module: &dyn Module) {
        let len = self.prefix.len();
        self.prefix.push_str(name);
        self.prefix.push('.');
        module.visit(self);
        self.prefix.truncate(len);
    }

    /// A training-mode flag, which [`Module::train`] and [`Module::eval`]
    /// set.
    pub fn mode(&mut self, mode: &Mode) {
        (self.f)(Item::Mode(mode));
    }
}

/// A module's training-mode flag (dropout on, batch statistics used):
/// modules whose behaviour depends on the mode hold one and show it to
/// [`Visitor::mode`]. New flags are in training mode, as PyTorch's modules.
#[derive(Debug)]
pub struct Mode(AtomicBool);

impl Default for Mode {
    fn default() -> Self {
        Mode(AtomicBool::new(true))
    }
}

impl Mode {
    /// Whether the module is in training mode.
    pub fn is_training(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, training: bool) {
        self.0.store(training, Ordering::Relaxed);
    }
}

/// Every mode flag of `module` (training or not), in visiting order: what
/// [`set_modes`] puts back.
pub(crate) fn modes(module: &dyn Module) -> Vec<bool> {
    let mut out = Vec::new();
    module.visit(&mut Visitor::new(&mut |item| {
        if let Item::Mode(m) = item {
            out.push(m.is_training());
        }
    }));
    out
}

/// Sets the mode flags of `module`, in visiting order, to `modes` (as
/// [`modes`] read them): a sub-module kept in evaluation mode stays so.
pub(crate) fn set_modes(module: &dyn Module, modes: &[bool]) {
    let mut next = modes.iter();
    module.visit(&mut Visitor::new(&mut |item| {
        if let Item::Mode(m) = item
            && let Some(&training) = next.next()
        {
            m.set(training);
        }
    }));
}

/// Evaluation mode until dropped, then each mode flag as it was before (also
/// if evaluation fails or panics): a sub-module the caller keeps in
/// evaluation mode (a BatchNorm frozen for fine-tuning) stays so.
pub(crate) struct EvalMode<'a> {
    model: &'a dyn Module,
    modes: Vec<bool>,
}

impl<'a> EvalMode<'a> {
    pub(crate) fn enter(model: &'a dyn Module) -> Self {
        let modes = modes(model);
        model.eval();
        EvalMode { model, modes }
    }
}

impl Drop for EvalMode<'_> {
    fn drop(&mut self) {
        set_modes(self.model, &self.modes);
    }
}

/// A layer or a model: a differentiable function with named parameters.
///
/// Implement [`forward`](Self::forward) and [`visit`](Self::visit); every
/// other method is provided, built on `visit`. Leaving `visit` out does not
/// compile, so a module cannot silently lose its parameters:
///
/// ```compile_fail
/// use wgrad::{Tensor, nn::Module};
/// struct Forgot { w: Tensor }
/// impl Module for Forgot {
///     fn forward(&self, x: &Tensor) -> Tensor { x.matmul(&self.w) }
/// }
/// ```
pub trait Module: Send + Sync {
    /// Applies the module.
    fn forward(&self, x: &Tensor) -> Tensor;

    /// Shows every parameter ([`Visitor::param`]), buffer
    /// ([`Visitor::buffer`]), submodule ([`Visitor::child`]) and mode flag
    /// ([`Visitor::mode`]) to `v`, in `state_dict` order. A module with
    /// none of them writes an empty body.
    fn visit(&self, v: &mut Visitor);

    /// A one-line description, for model summaries (by default the type's
    /// name).
    fn describe(&self) -> String {
        let full = std::any::type_name::<Self>();
        let base = full.split('<').next().unwrap_or(full);
        base.rsplit("::").next().unwrap_or(base).to_string()
    }

    /// The trainable variables with their `state_dict` names, frozen ones
    /// included (as PyTorch's `named_parameters`).
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.visit(&mut Visitor::new(&mut |item| {
            if let Item::Param(n, t) = item {
                out.push((n.to_string(), t.clone()));
            }
        }));
        out
    }

    /// The trainable variables, in `named_parameters` order.
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters().into_iter().map(|(_, t)| t).collect()
    }

    /// The buffers (saved, not trained) with their names.
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.visit(&mut Visitor::new(&mut |item| {
            if let Item::Buffer(n, t) = item {
                out.push((n.to_string(), t.clone()));
            }
        }));
        out
    }

    /// Parameters and buffers with their names, in visiting order: what
    /// [`crate::io::save`] writes.
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.visit(&mut Visitor::new(&mut |item| match item {
            Item::Param(n, t) | Item::Buffer(n, t) => out.push((n.to_string(), t.clone())),
            Item::Mode(_) => {}
        }));
        out
    }

    /// The number of parameter elements (frozen ones included).
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(Tensor::elem_count).sum()
    }

    /// Switches every mode flag of the module and its children: training
    /// (`true`, dropout active, batch statistics) or evaluation.
    fn set_training(&self, training: bool) {
        self.visit(&mut Visitor::new(&mut |item| {
            if let Item::Mode(m) = item {
                m.set(training);
            }
        }));
    }

    /// Training mode, as PyTorch's `model.train()`.
    fn train(&self) {
        self.set_training(true);
    }

    /// Evaluation mode, as PyTorch's `model.eval()`.
    fn eval(&self) {
        self.set_training(false);
    }

    /// Whether the module is in training mode: any of its flags is set (a
    /// module without flags behaves the same either way, and counts as
    /// training).
    fn is_training(&self) -> bool {
        let (mut any, mut training) = (false, false);
        self.visit(&mut Visitor::new(&mut |item| {
            if let Item::Mode(m) = item {
                any = true;
                training |= m.is_training();
            }
        }));
        training || !any
    }

    /// Freezes (`false`) or unfreezes (`true`) every parameter of the module
    /// and its children: no gradient is computed for a frozen one and
    /// optimizers leave it alone (see [`Tensor::set_requires_grad`]).
    fn requires_grad(&self, on: bool) {
        for p in self.parameters() {
            p.set_requires_grad(on);
        }
    }

    /// Moves every parameter and buffer to `device`, in place: handles on
    /// them (an optimizer's, a clone of the module's) see the move. As in
    /// PyTorch, move a model before creating its optimizer, whose state is
    /// made on the parameters' device at its first step.
    fn to_device(&self, device: &Device) -> Result<()> {
        self.state_dict().iter().try_for_each(|(_, t)| t.move_storage(device))
    }
}

impl Module for Box<dyn Module> {
    fn forward(&self, x: &Tensor) -> Tensor {
        (**self).forward(x)
    }
    fn visit(&self, v: &mut Visitor) {
        (**self).visit(v)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

impl Module for Arc<dyn Module> {
    fn forward(&self, x: &Tensor) -> Tensor {
        (**self).forward(x)
    }
    fn visit(&self, v: &mut Visitor) {
        (**self).visit(v)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Modules applied one after another. Its children are named by their
/// index (`"0"`, `"1"`, …), as in PyTorch.
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

    /// Appends a layer, in place.
    pub fn push(&mut self, layer: impl Module + 'static) {
        self.layers.push(Box::new(layer));
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Layer `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&dyn Module> {
        self.layers.get(i).map(|l| &**l)
    }

    /// The layers, in order.
    pub fn iter(&self) -> impl Iterator<Item = &dyn Module> {
        self.layers.iter().map(|l| &**l)
    }
}

impl std::ops::Index<usize> for Sequential {
    type Output = dyn Module;
    fn index(&self, i: usize) -> &(dyn Module + 'static) {
        let len = self.layers.len();
        match self.layers.get(i) {
            Some(l) => &**l,
            None => panic!("Sequential: layer {i} of {len}"),
        }
    }
}

impl FromIterator<Box<dyn Module>> for Sequential {
    fn from_iter<I: IntoIterator<Item = Box<dyn Module>>>(iter: I) -> Self {
        Sequential { layers: iter.into_iter().collect() }
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.layers.iter().fold(x.clone(), |h, layer| layer.forward(&h))
    }

    fn visit(&self, v: &mut Visitor) {
        for (i, l) in self.layers.iter().enumerate() {
            v.child(&i.to_string(), &**l);
        }
    }

    fn describe(&self) -> String {
        let inner: Vec<String> = self.layers.iter().map(|l| l.describe()).collect();
        format!("Sequential({})", inner.join(", "))
    }
}
