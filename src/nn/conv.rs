//! Image layers: convolution, pooling, batch normalisation and residual
//! blocks, with PyTorch's parameter names, layouts and initialisation.

use super::{Mode, Module, Visitor};
use crate::ops::{Conv2dOptions, Size2};
use crate::rng::{Generator, with_default_generator};
use crate::{Device, Tensor};

/// A 2-D convolution over `[N, C_in, H, W]` input, as PyTorch's
/// `nn.Conv2d`: weight `[C_out, C_in / groups, kH, kW]` and bias `[C_out]`,
/// both drawn from U(±1/√fan_in), fan_in = `C_in / groups · kH · kW`
/// (PyTorch's default initialisation).
///
/// ```
/// use wgrad::{Conv2dOptions, Device, Tensor, nn::{Conv2d, Module}};
/// let conv = Conv2d::with_options(3, 16, 3, Conv2dOptions::default().padding(1).stride(2), &Device::Cpu);
/// let y = conv.forward(&Tensor::zeros([8, 3, 32, 32], &Device::Cpu));
/// assert_eq!(y.dims(), &[8, 16, 16, 16]);
/// ```
pub struct Conv2d {
    /// `[C_out, C_in / groups, kH, kW]`.
    pub weight: Tensor,
    /// `[C_out]`, if the layer has a bias.
    pub bias: Option<Tensor>,
    /// Stride, padding, dilation and groups.
    pub options: Conv2dOptions,
}

impl Conv2d {
    /// A convolution with stride 1, no padding, and a bias.
    pub fn new(in_channels: usize, out_channels: usize, kernel: impl Into<Size2>, device: &Device) -> Self {
        Conv2d::with_options(in_channels, out_channels, kernel, Conv2dOptions::default(), device)
    }

    /// A convolution with the given options and a bias, drawn from the
    /// calling thread's default generator.
    pub fn with_options(
        in_channels: usize,
        out_channels: usize,
        kernel: impl Into<Size2>,
        options: Conv2dOptions,
        device: &Device,
    ) -> Self {
        let kernel = kernel.into();
        with_default_generator(|g| Conv2d::with_init(in_channels, out_channels, kernel, options, true, g, device))
    }

    /// A convolution drawn from `generator`, with or without a bias.
    pub fn with_init(
        in_channels: usize,
        out_channels: usize,
        kernel: Size2,
        options: Conv2dOptions,
        bias: bool,
        generator: &mut Generator,
        device: &Device,
    ) -> Self {
        let groups = options.groups;
        assert!(
            groups > 0 && in_channels % groups == 0 && out_channels % groups == 0,
            "Conv2d: {in_channels} input and {out_channels} output channels are not both divisible by {groups} groups"
        );
        let shape = [out_channels, in_channels / groups, kernel.0, kernel.1];
        let fan_in = (in_channels / groups * kernel.0 * kernel.1).max(1);
        let bound = 1.0 / (fan_in as f32).sqrt();
        let weight = Tensor::rand_uniform_with(shape, -bound, bound, generator, device).requires_grad();
        let bias =
            bias.then(|| Tensor::rand_uniform_with([out_channels], -bound, bound, generator, device).requires_grad());
        Conv2d { weight, bias, options }
    }

    /// The same layer without its bias (as before a batch normalisation,
    /// whose shift makes it redundant).
    pub fn without_bias(self) -> Self {
        Conv2d { bias: None, ..self }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Tensor {
        let c_in = self.weight.dims()[1] * self.options.groups;
        assert!(
            (x.rank() == 4 || x.rank() == 3) && x.dims()[x.rank() - 3] == c_in,
            "{}: input of shape {} is not [N, {c_in}, H, W]",
            self.describe(),
            x.shape()
        );
        x.conv2d(&self.weight, self.bias.as_ref(), self.options)
    }

    fn visit(&self, v: &mut Visitor) {
        v.param("weight", &self.weight);
        if let Some(b) = &self.bias {
            v.param("bias", b);
        }
    }

    fn describe(&self) -> String {
        let d = self.weight.dims();
        let o = &self.options;
        let mut s = format!("Conv2d({} -> {}, kernel {}×{}", d[1] * o.groups, d[0], d[2], d[3]);
        if o.stride != Size2(1, 1) {
            s += &format!(", stride {:?}", (o.stride.0, o.stride.1));
        }
        match o.padding {
            crate::ops::Padding::Explicit(Size2(0, 0)) => {}
            crate::ops::Padding::Explicit(p) => s += &format!(", padding {:?}", (p.0, p.1)),
            crate::ops::Padding::Same => s += ", padding same",
        }
        if o.dilation != Size2(1, 1) {
            s += &format!(", dilation {:?}", (o.dilation.0, o.dilation.1));
        }
        if o.groups != 1 {
            s += &format!(", groups {}", o.groups);
        }
        if self.bias.is_none() {
            s += ", no bias";
        }
        s + ")"
    }
}

/// Max pooling (PyTorch's `nn.MaxPool2d`; the stride defaults to the kernel).
#[derive(Clone, Copy, Debug)]
pub struct MaxPool2d {
    /// Window size.
    pub kernel: Size2,
    /// Window step.
    pub stride: Size2,
    /// -∞ padding on each side (at most half the kernel).
    pub padding: Size2,
}

impl MaxPool2d {
    /// Non-overlapping `kernel` windows.
    pub fn new(kernel: impl Into<Size2>) -> Self {
        let kernel = kernel.into();
        MaxPool2d { kernel, stride: kernel, padding: Size2(0, 0) }
    }

    /// With another stride and padding.
    pub fn with(kernel: impl Into<Size2>, stride: impl Into<Size2>, padding: impl Into<Size2>) -> Self {
        MaxPool2d { kernel: kernel.into(), stride: stride.into(), padding: padding.into() }
    }
}

impl Module for MaxPool2d {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.max_pool2d(self.kernel, self.stride, self.padding)
    }
    fn visit(&self, _: &mut Visitor) {}
    fn describe(&self) -> String {
        format!("MaxPool2d({}×{})", self.kernel.0, self.kernel.1)
    }
}

/// Average pooling (PyTorch's `nn.AvgPool2d`; the stride defaults to the
/// kernel and the padding's zeros count towards the mean).
#[derive(Clone, Copy, Debug)]
pub struct AvgPool2d {
    /// Window size.
    pub kernel: Size2,
    /// Window step.
    pub stride: Size2,
    /// Zero padding on each side (at most half the kernel).
    pub padding: Size2,
    /// Whether the padding counts towards each window's divisor.
    pub count_include_pad: bool,
}

impl AvgPool2d {
    /// Non-overlapping `kernel` windows.
    pub fn new(kernel: impl Into<Size2>) -> Self {
        let kernel = kernel.into();
        AvgPool2d { kernel, stride: kernel, padding: Size2(0, 0), count_include_pad: true }
    }
}

impl Module for AvgPool2d {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.avg_pool2d(self.kernel, self.stride, self.padding, self.count_include_pad)
    }
    fn visit(&self, _: &mut Visitor) {}
    fn describe(&self) -> String {
        format!("AvgPool2d({}×{})", self.kernel.0, self.kernel.1)
    }
}

/// Adaptive average pooling to a fixed output size (PyTorch's
/// `nn.AdaptiveAvgPool2d`); `AdaptiveAvgPool2d::new(1)` is global average
/// pooling.
#[derive(Clone, Copy, Debug)]
pub struct AdaptiveAvgPool2d {
    /// The output's height and width.
    pub output: Size2,
}

impl AdaptiveAvgPool2d {
    /// Pools to `output`.
    pub fn new(output: impl Into<Size2>) -> Self {
        AdaptiveAvgPool2d { output: output.into() }
    }
}

impl Module for AdaptiveAvgPool2d {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.adaptive_avg_pool2d(self.output)
    }
    fn visit(&self, _: &mut Visitor) {}
    fn describe(&self) -> String {
        format!("AdaptiveAvgPool2d({}×{})", self.output.0, self.output.1)
    }
}

/// Batch normalisation's state, shared by [`BatchNorm1d`] and [`BatchNorm2d`].
struct BatchNorm {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor,
    momentum: f32,
    eps: f32,
    mode: Mode,
}

impl BatchNorm {
    fn new(features: usize, affine: bool, device: &Device) -> Self {
        BatchNorm {
            weight: affine.then(|| Tensor::ones([features], device).requires_grad()),
            bias: affine.then(|| Tensor::zeros([features], device).requires_grad()),
            running_mean: Tensor::zeros([features], device),
            running_var: Tensor::ones([features], device),
            num_batches_tracked: Tensor::zeros((), device),
            momentum: 0.1,
            eps: 1e-5,
            mode: Mode::default(),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let training = self.mode.is_training();
        if training {
            // Under no_grad too (an evaluation loop that forgot eval()), as
            // in PyTorch.
            self.num_batches_tracked.assign(&(&self.num_batches_tracked + 1.0));
        }
        x.batch_norm(
            Some(&self.running_mean),
            Some(&self.running_var),
            self.weight.as_ref(),
            self.bias.as_ref(),
            training,
            self.momentum,
            self.eps,
        )
    }

    fn visit(&self, v: &mut Visitor) {
        if let (Some(w), Some(b)) = (&self.weight, &self.bias) {
            v.param("weight", w);
            v.param("bias", b);
        }
        v.buffer("running_mean", &self.running_mean);
        v.buffer("running_var", &self.running_var);
        v.buffer("num_batches_tracked", &self.num_batches_tracked);
        v.mode(&self.mode);
    }

    fn check(&self, what: &str, x: &Tensor, ranks: &[usize]) {
        let c = self.running_mean.dims()[0];
        assert!(
            ranks.contains(&x.rank()) && x.dims()[1] == c,
            "{what}({c}): input of shape {} is not {}",
            x.shape(),
            if ranks == [4] { format!("[N, {c}, H, W]") } else { format!("[N, {c}] or [N, {c}, L]") }
        );
    }
}

macro_rules! batch_norm_layer {
    ($(#[$doc:meta])* $name:ident, $ranks:expr) => {
        $(#[$doc])*
        pub struct $name(BatchNorm);

        impl $name {
            /// Learnt scale (ones) and shift (zeros), momentum 0.1, eps 1e-5:
            /// PyTorch's defaults.
            pub fn new(features: usize, device: &Device) -> Self {
                $name(BatchNorm::new(features, true, device))
            }

            /// With the given momentum and eps, and with or without the
            /// learnt scale and shift. Mind the order: momentum comes
            /// before eps here, where PyTorch's positional arguments are
            /// `(num_features, eps, momentum, affine)`; both are `f32`, so
            /// a port that keeps PyTorch's order swaps them silently.
            pub fn with_options(features: usize, momentum: f32, eps: f32, affine: bool, device: &Device) -> Self {
                $name(BatchNorm { momentum, eps, ..BatchNorm::new(features, affine, device) })
            }

            /// The running mean (a buffer, updated in training mode).
            pub fn running_mean(&self) -> &Tensor {
                &self.0.running_mean
            }

            /// The running (unbiased) variance.
            pub fn running_var(&self) -> &Tensor {
                &self.0.running_var
            }

            /// Training-mode batches seen, as an f32 scalar (PyTorch stores an int64).
            pub fn num_batches_tracked(&self) -> &Tensor {
                &self.0.num_batches_tracked
            }
        }

        impl Module for $name {
            fn forward(&self, x: &Tensor) -> Tensor {
                self.0.check(stringify!($name), x, &$ranks);
                self.0.forward(x)
            }

            fn visit(&self, v: &mut Visitor) {
                self.0.visit(v);
            }

            fn describe(&self) -> String {
                format!("{}({})", stringify!($name), self.0.running_mean.dims()[0])
            }
        }
    };
}

batch_norm_layer! {
    /// Batch normalisation of `[N, C]` or `[N, C, L]` input over all but the
    /// channel axis (PyTorch's `nn.BatchNorm1d`): batch statistics in
    /// training mode, which also update the running ones; the running
    /// statistics in evaluation mode. State-dict names as PyTorch's:
    /// `weight`, `bias`, `running_mean`, `running_var`, `num_batches_tracked`.
    BatchNorm1d, [2, 3]
}

batch_norm_layer! {
    /// Batch normalisation of `[N, C, H, W]` input per channel (PyTorch's
    /// `nn.BatchNorm2d`); see [`BatchNorm1d`].
    BatchNorm2d, [4]
}

/// A residual block: `body(x) + shortcut(x)`, where the shortcut is the
/// identity unless given (a 1×1 strided convolution, say, when the body
/// changes the shape). Children are named `body` and `shortcut`.
///
/// ```
/// use wgrad::{Conv2dOptions, Device, Tensor, nn::{self, Module, Residual}};
/// let dev = Device::Cpu;
/// let same = Conv2dOptions::default().padding(1);
/// let block = Residual::new(
///     nn::Sequential::new()
///         .add(nn::Conv2d::with_options(8, 8, 3, same, &dev))
///         .add(nn::BatchNorm2d::new(8, &dev))
///         .add(nn::ReLU)
///         .add(nn::Conv2d::with_options(8, 8, 3, same, &dev))
///         .add(nn::BatchNorm2d::new(8, &dev)),
/// );
/// let y = nn::ReLU.forward(&block.forward(&Tensor::ones([2, 8, 5, 5], &dev)));
/// assert_eq!(y.dims(), &[2, 8, 5, 5]);
/// assert!(block.named_parameters().iter().any(|(n, _)| n == "body.1.weight"));
/// ```
pub struct Residual {
    body: Box<dyn Module>,
    shortcut: Option<Box<dyn Module>>,
}

impl Residual {
    /// `body(x) + x`.
    pub fn new(body: impl Module + 'static) -> Self {
        Residual { body: Box::new(body), shortcut: None }
    }

    /// `body(x) + shortcut(x)`.
    pub fn with_shortcut(body: impl Module + 'static, shortcut: impl Module + 'static) -> Self {
        Residual { body: Box::new(body), shortcut: Some(Box::new(shortcut)) }
    }
}

impl Module for Residual {
    fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.body.forward(x);
        let skip = match &self.shortcut {
            Some(s) => s.forward(x),
            None => x.clone(),
        };
        assert!(
            y.shape() == skip.shape(),
            "Residual: the body gives shape {} but the shortcut {}; give a shortcut that matches",
            y.shape(),
            skip.shape()
        );
        y + skip
    }

    fn visit(&self, v: &mut Visitor) {
        v.child("body", &*self.body);
        if let Some(s) = &self.shortcut {
            v.child("shortcut", &**s);
        }
    }

    fn describe(&self) -> String {
        match &self.shortcut {
            Some(s) => format!("Residual({} + {})", self.body.describe(), s.describe()),
            None => format!("Residual({})", self.body.describe()),
        }
    }
}
