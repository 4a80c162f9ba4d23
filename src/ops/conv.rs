//! Images: 2-D convolution, pooling and batch normalisation, NCHW as in
//! PyTorch (an unbatched `[C, H, W]` input works too).
//!
//! The convolution and pooling are device kernels with their own backward
//! kernels; a bias add, an activation or a residual add after them are
//! ordinary elementwise ops, which the GPU fuses into one kernel. Batch
//! normalisation is a composition of reductions and elementwise ops.

use super::same_device;
use crate::Tensor;
use crate::backend::{ConvSpec, PoolKind, PoolSpec};

/// A pair of sizes (height, width); a single number means both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size2(pub usize, pub usize);

impl From<usize> for Size2 {
    fn from(v: usize) -> Self {
        Size2(v, v)
    }
}

impl From<(usize, usize)> for Size2 {
    fn from((h, w): (usize, usize)) -> Self {
        Size2(h, w)
    }
}

impl From<[usize; 2]> for Size2 {
    fn from([h, w]: [usize; 2]) -> Self {
        Size2(h, w)
    }
}

/// A convolution's padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// Zeros on each side: `Explicit(Size2(top and bottom, left and right))`.
    Explicit(Size2),
    /// As much as keeps the output the input's size at stride 1 (PyTorch's
    /// `padding="same"`): `dilation · (kernel - 1)` in all, the odd one
    /// at the bottom or right.
    Same,
}

impl<T: Into<Size2>> From<T> for Padding {
    fn from(v: T) -> Self {
        Padding::Explicit(v.into())
    }
}

/// The hyper-parameters of [`Tensor::conv2d`], PyTorch's defaults: stride
/// 1, no padding, dilation 1, one group.
///
/// ```
/// use wgrad::{Conv2dOptions, Padding};
/// let opts = Conv2dOptions::default().stride(2).padding(1);
/// let same = Conv2dOptions::default().padding(Padding::Same).dilation((2, 1));
/// # let _ = (opts, same);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOptions {
    /// How far the window moves between outputs.
    pub stride: Size2,
    /// Zeros around the input.
    pub padding: Padding,
    /// The spacing of the kernel's taps (2 skips every other input).
    pub dilation: Size2,
    /// Input and output channels are split into this many groups, each
    /// convolved separately (`groups = in_channels` is a depthwise
    /// convolution).
    pub groups: usize,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions { stride: Size2(1, 1), padding: Padding::Explicit(Size2(0, 0)), dilation: Size2(1, 1), groups: 1 }
    }
}

impl Conv2dOptions {
    /// With this stride.
    pub fn stride(self, stride: impl Into<Size2>) -> Self {
        Conv2dOptions { stride: stride.into(), ..self }
    }
    /// With this padding: a size, a pair, or [`Padding::Same`].
    pub fn padding(self, padding: impl Into<Padding>) -> Self {
        Conv2dOptions { padding: padding.into(), ..self }
    }
    /// With this dilation.
    pub fn dilation(self, dilation: impl Into<Size2>) -> Self {
        Conv2dOptions { dilation: dilation.into(), ..self }
    }
    /// With this many groups.
    pub fn groups(self, groups: usize) -> Self {
        Conv2dOptions { groups, ..self }
    }
}

/// The output length of a window sweep, or `None` if the (dilated) window
/// is longer than the padded input.
fn out_len(len: usize, pad_total: usize, kernel: usize, stride: usize, dilation: usize) -> Option<usize> {
    let span = dilation * (kernel - 1) + 1;
    let padded = len + pad_total;
    (padded >= span).then(|| (padded - span) / stride + 1)
}

impl Tensor {
    /// `[N, C, H, W]` (or `[C, H, W]`, as one image) as a batch of images,
    /// and whether it had to gain the batch axis.
    fn as_images(&self, op: &str) -> (Tensor, bool) {
        match self.rank() {
            4 => (self.clone(), false),
            3 => (self.unsqueeze(0), true),
            _ => panic!("{op}: input must be [N, C, H, W] or [C, H, W], got shape {}", self.shape()),
        }
    }

    /// A 2-D convolution (cross-correlation, as PyTorch's `conv2d`) of an
    /// `[N, C_in, H, W]` input with a `[C_out, C_in / groups, kH, kW]`
    /// weight and an optional `[C_out]` bias, giving `[N, C_out, H', W']`.
    ///
    /// ```
    /// use wgrad::{Conv2dOptions, Device, Tensor};
    /// let x = Tensor::ones([1, 1, 4, 4], &Device::Cpu);
    /// let w = Tensor::ones([2, 1, 3, 3], &Device::Cpu);
    /// let y = x.conv2d(&w, None, Conv2dOptions::default().padding(1));
    /// assert_eq!(y.dims(), &[1, 2, 4, 4]);
    /// assert_eq!(y.to_vec().unwrap()[..4], [4.0, 6.0, 6.0, 4.0]);
    /// ```
    pub fn conv2d(&self, weight: &Tensor, bias: Option<&Tensor>, opts: Conv2dOptions) -> Tensor {
        same_device("conv2d", self, weight);
        let (x, unbatched) = self.as_images("conv2d");
        let fail = |why: String| -> ! {
            panic!("conv2d: input {} and weight {} do not fit: {why}", self.shape(), weight.shape())
        };
        if weight.rank() != 4 {
            fail("the weight must be [out_channels, in_channels / groups, kH, kW]".into());
        }
        let [n, c_in, h, w] = [x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]];
        let [c_out, cg, kh, kw] = [weight.dims()[0], weight.dims()[1], weight.dims()[2], weight.dims()[3]];
        let (Size2(sh, sw), Size2(dh, dw), groups) = (opts.stride, opts.dilation, opts.groups);
        if sh == 0 || sw == 0 || dh == 0 || dw == 0 || groups == 0 {
            fail(format!("stride {sh}×{sw}, dilation {dh}×{dw} and groups {groups} must be positive"));
        }
        if kh == 0 || kw == 0 {
            fail("the kernel is empty".into());
        }
        if c_in % groups != 0 || c_out % groups != 0 {
            fail(format!("{c_in} input and {c_out} output channels are not both divisible by {groups} groups"));
        }
        if cg != c_in / groups {
            fail(format!("{c_in} input channels in {groups} groups need {} weight channels, not {cg}", c_in / groups));
        }
        let (ph, pw, pad_h, pad_w) = match opts.padding {
            Padding::Explicit(Size2(ph, pw)) => (ph, pw, 2 * ph, 2 * pw),
            Padding::Same => {
                if sh != 1 || sw != 1 {
                    fail(format!("padding \"same\" needs stride 1, not {sh}×{sw}"));
                }
                let (th, tw) = (dh * (kh - 1), dw * (kw - 1));
                (th / 2, tw / 2, th, tw)
            }
        };
        let (Some(oh), Some(ow)) = (out_len(h, pad_h, kh, sh, dh), out_len(w, pad_w, kw, sw, dw)) else {
            fail(format!(
                "the {kh}×{kw} kernel (dilation {dh}×{dw}) is larger than the padded {}×{} input",
                h + pad_h,
                w + pad_w
            ))
        };
        if let Some(b) = bias {
            same_device("conv2d", self, b);
            assert!(b.dims() == [c_out], "conv2d: bias must be [{c_out}], got shape {}", b.shape());
        }
        let spec = ConvSpec { n, c_in, h, w, c_out, kh, kw, sh, sw, ph, pw, dh, dw, groups, oh, ow };
        let out_shape = crate::shape::Shape::from([n, c_out, oh, ow]).checked("conv2d");
        let device = self.device();
        let degenerate = spec.output_len() == 0 || spec.patch() == 0;
        // The bias is part of the convolution's own kernel (and node) unless
        // there is nothing to convolve.
        let fused_bias = bias.filter(|_| !degenerate);
        let inputs: Vec<&Tensor> = [&x, weight].into_iter().chain(fused_bias).collect();
        let y = if degenerate {
            crate::no_grad(|| Tensor::zeros(out_shape, &device))
        } else {
            let storage = Tensor::with_storages(&inputs, |s| match s.get(2) {
                Some(b) => device.backend().conv2d_bias(s[0], s[1], b, spec),
                None => device.backend().conv2d(s[0], s[1], spec),
            });
            Tensor::from_storage(storage, out_shape, device.clone())
        };
        let y = y.record("conv2d", &inputs, move |c| {
            let g = c.grad;
            let empty = spec.output_len() == 0;
            let dx = c.needs[0].then(|| {
                if empty {
                    return Tensor::zeros(c.shape(0).clone(), &g.device());
                }
                let w = c.input(1);
                let device = g.device();
                let s = Tensor::with_storages(&[g, w], |s| device.backend().conv2d_input_grad(s[0], s[1], spec));
                Tensor::from_storage(s, c.shape(0).clone(), device)
            });
            let device = g.device();
            let bias_grad = c.needs.get(2).copied().unwrap_or(false);
            if c.needs[1] && bias_grad {
                // Both from one pass over the output's gradient (the bias's
                // is its sum per channel); a fused bias means a non-empty
                // output.
                let x = c.input(0);
                let [dw, db] =
                    Tensor::with_storages(&[g, x], |s| device.backend().conv2d_weight_bias_grad(s[0], s[1], spec));
                let dw = Tensor::from_storage(dw, c.shape(1).clone(), device.clone());
                return vec![dx, Some(dw), Some(Tensor::from_storage(db, [c_out].into(), device))];
            }
            let dw = c.needs[1].then(|| {
                if empty {
                    return Tensor::zeros(c.shape(1).clone(), &device);
                }
                let x = c.input(0);
                let s = Tensor::with_storages(&[g, x], |s| device.backend().conv2d_weight_grad(s[0], s[1], spec));
                Tensor::from_storage(s, c.shape(1).clone(), device.clone())
            });
            let mut grads = vec![dx, dw];
            if c.needs.len() == 3 {
                // The two reductions of `conv2d_weight_bias_grad`'s default
                // (a frozen weight leaves the GPU's bias gradient the same
                // bits): over each image's pixels, then over the batch.
                let (images, pixels) = (spec.n * c_out, spec.oh * spec.ow);
                let per_image = || g.reshape([images, pixels]).sum_dim(1, false);
                grads.push(bias_grad.then(|| per_image().reshape([spec.n, c_out]).sum_dim(0, false)));
            }
            grads
        });
        let y = match bias {
            Some(b) if degenerate => y + b.reshape([1, c_out, 1, 1]),
            _ => y,
        };
        if unbatched { y.squeeze(0) } else { y }
    }

    fn pool2d(
        &self,
        op: &'static str,
        kind: PoolKind,
        kernel: Size2,
        stride: Size2,
        padding: Size2,
        out: Size2,
    ) -> Tensor {
        let (x, unbatched) = self.as_images(op);
        let [n, c, h, w] = [x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]];
        let spec = PoolSpec {
            kind,
            planes: n * c,
            h,
            w,
            kh: kernel.0,
            kw: kernel.1,
            sh: stride.0,
            sw: stride.1,
            ph: padding.0,
            pw: padding.1,
            oh: out.0,
            ow: out.1,
        };
        let out_shape = crate::shape::Shape::from([n, c, out.0, out.1]).checked(op);
        let device = self.device();
        let y = if spec.output_len() == 0 {
            crate::no_grad(|| Tensor::zeros(out_shape, &device))
        } else {
            let storage = device.backend().pool2d(&x.read(), spec);
            Tensor::from_storage(storage, out_shape, device.clone())
        };
        let y = y.record(op, &[&x], move |c| {
            let g = c.grad;
            let device = g.device();
            if spec.output_len() == 0 || spec.input_len() == 0 {
                return vec![Some(Tensor::zeros(c.shape(0).clone(), &device))];
            }
            // Averages never read x: hand them the gradient in its place,
            // so changing x in place after the forward is no error there.
            let x = if kind == PoolKind::Max { c.input(0) } else { g };
            let s = Tensor::with_storages(&[x, g], |s| device.backend().pool2d_backward(s[0], s[1], spec));
            vec![Some(Tensor::from_storage(s, c.shape(0).clone(), device))]
        });
        if unbatched { y.squeeze(0) } else { y }
    }

    /// Checks a pooling window and returns the output size.
    fn pool_out(&self, op: &str, kernel: Size2, stride: Size2, padding: Size2) -> Size2 {
        let fail = |why: String| -> ! {
            panic!(
                "{op}: kernel {:?}, stride {:?}, padding {:?} do not fit input {}: {why}",
                (kernel.0, kernel.1),
                (stride.0, stride.1),
                (padding.0, padding.1),
                self.shape()
            )
        };
        if self.rank() != 3 && self.rank() != 4 {
            fail("the input must be [N, C, H, W] or [C, H, W]".into());
        }
        if kernel.0 == 0 || kernel.1 == 0 || stride.0 == 0 || stride.1 == 0 {
            fail("kernel and stride must be positive".into());
        }
        if padding.0 > kernel.0 / 2 || padding.1 > kernel.1 / 2 {
            fail("padding must be at most half the kernel".into());
        }
        let d = self.dims();
        let (h, w) = (d[d.len() - 2], d[d.len() - 1]);
        match (out_len(h, 2 * padding.0, kernel.0, stride.0, 1), out_len(w, 2 * padding.1, kernel.1, stride.1, 1)) {
            (Some(oh), Some(ow)) => Size2(oh, ow),
            _ => fail("the kernel is larger than the padded input".into()),
        }
    }

    /// The maximum of each `kernel` window, moved by `stride` over the
    /// input padded with `padding` (of -∞) on each side: PyTorch's
    /// `max_pool2d`. The gradient goes to the element picked: the first
    /// maximum of the window, or its last NaN (NaN propagates), as PyTorch.
    pub fn max_pool2d(&self, kernel: impl Into<Size2>, stride: impl Into<Size2>, padding: impl Into<Size2>) -> Tensor {
        let (kernel, stride, padding) = (kernel.into(), stride.into(), padding.into());
        let out = self.pool_out("max_pool2d", kernel, stride, padding);
        self.pool2d("max_pool2d", PoolKind::Max, kernel, stride, padding, out)
    }

    /// The mean of each `kernel` window (PyTorch's `avg_pool2d`); with
    /// `count_include_pad` (PyTorch's default) the padding's zeros count
    /// towards the divisor.
    pub fn avg_pool2d(
        &self,
        kernel: impl Into<Size2>,
        stride: impl Into<Size2>,
        padding: impl Into<Size2>,
        count_include_pad: bool,
    ) -> Tensor {
        let (kernel, stride, padding) = (kernel.into(), stride.into(), padding.into());
        let out = self.pool_out("avg_pool2d", kernel, stride, padding);
        self.pool2d("avg_pool2d", PoolKind::Avg { count_include_pad }, kernel, stride, padding, out)
    }

    /// Averages over the windows PyTorch's `adaptive_avg_pool2d` uses to
    /// reach an `output` of the given size: `(1, 1)` is global average pooling.
    pub fn adaptive_avg_pool2d(&self, output: impl Into<Size2>) -> Tensor {
        let out = output.into();
        assert!(
            (self.rank() == 3 || self.rank() == 4) && out.0 > 0 && out.1 > 0,
            "adaptive_avg_pool2d: input {} must be [N, C, H, W] or [C, H, W] and the output {:?} positive",
            self.shape(),
            (out.0, out.1)
        );
        self.pool2d("adaptive_avg_pool2d", PoolKind::AdaptiveAvg, Size2(1, 1), Size2(1, 1), Size2(0, 0), out)
    }

    /// Batch normalisation (PyTorch's `F.batch_norm`) of `[N, C]` or
    /// `[N, C, ...]` input over every axis but the channel axis 1.
    ///
    /// In training mode the batch's mean and biased variance normalise it,
    /// and the running statistics, if given, are updated in place:
    /// `running = (1 - momentum)·running + momentum·batch`, with the
    /// unbiased variance for `running_var`, as PyTorch. Otherwise the
    /// running statistics normalise it. `weight` and `bias` (`[C]`) scale
    /// and shift the result.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm(
        &self,
        running_mean: Option<&Tensor>,
        running_var: Option<&Tensor>,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        training: bool,
        momentum: f32,
        eps: f32,
    ) -> Tensor {
        assert!(self.rank() >= 2, "batch_norm: input must be [N, C, ...], got shape {}", self.shape());
        let c = self.dims()[1];
        for (name, t) in
            [("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)]
        {
            if let Some(t) = t {
                same_device("batch_norm", self, t);
                assert!(
                    t.dims() == [c],
                    "batch_norm: {name} must be [{c}] for input {}, got {}",
                    self.shape(),
                    t.shape()
                );
            }
        }
        // [N, C, rest] → per-channel statistics shaped [1, C, 1] to broadcast.
        let n = self.dims()[0];
        let rest = self.elem_count() / (n * c).max(1);
        let x = self.reshape([n, c, rest]);
        // Sums over the batch and the positions, [1, C, 1].
        let per_channel = |t: &Tensor| {
            let t = if rest > 1 { t.sum_dim(2, true) } else { t.clone() };
            if n > 1 { t.sum_dim(0, true) } else { t }
        };
        let (mean, var) = if training {
            let count = n * rest;
            assert!(count > 1, "batch_norm: training needs more than one value per channel, input {}", self.shape());
            let mean = per_channel(&x) / count as f32;
            let centered = &x - &mean;
            let var = per_channel(&(&centered * &centered)) / count as f32;
            if let (Some(rm), Some(rv)) = (running_mean, running_var) {
                crate::no_grad(|| {
                    let unbiased = &var * (count as f32 / (count - 1) as f32);
                    rm.assign(&(rm * (1.0 - momentum) + mean.reshape([c]) * momentum));
                    rv.assign(&(rv * (1.0 - momentum) + unbiased.reshape([c]) * momentum));
                });
            } else {
                assert!(
                    running_mean.is_none() && running_var.is_none(),
                    "batch_norm: give both running statistics or neither"
                );
            }
            (mean, var)
        } else {
            let (Some(rm), Some(rv)) = (running_mean, running_var) else {
                panic!("batch_norm: evaluation mode needs the running statistics")
            };
            (rm.reshape([1, c, 1]), rv.reshape([1, c, 1]))
        };
        let mut y = (&x - &mean) * (var + eps).powf(-0.5);
        if let Some(w) = weight {
            y = y * w.reshape([1, c, 1]);
        }
        if let Some(b) = bias {
            y = y + b.reshape([1, c, 1]);
        }
        y.reshape(self.shape().clone())
    }
}
