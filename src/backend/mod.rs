//! The kernel interface both devices implement.
//!
//! Tensor ops (in `ops/`) check shapes, pick the kernel and record the tape;
//! a [`Backend`] only computes. The interface is deliberately small: a few
//! parametrised primitives (unary, binary, reduce, matmul, softmax, strided
//! copy, gather/scatter) and the fused kernels that pay for themselves in a
//! training step (cross-entropy, dropout, optimizer updates). Every backend
//! returns contiguous row-major f32 storage.
//!
//! [`cpu`] is the reference: plain loops (and a GEMM crate for matmul) that
//! every GPU kernel and every gradient is tested against.

pub(crate) mod cpu;
pub(crate) mod gpu;

use crate::Result;
use crate::shape::Strided;

/// Where a tensor's elements live.
pub(crate) enum Storage {
    Cpu(Vec<f32>),
    Gpu(gpu::GpuBuffer),
    /// CPU storage whose computation failed (bad data, no memory): reading
    /// it, or anything computed from it, returns the error. (A GPU buffer
    /// carries its own failure, see [`gpu::GpuBuffer`].)
    Poisoned(Fault),
}

/// An error that poisons a result, stamped with when it happened: of
/// several faults that reach one result, the earliest is reported (the
/// first cause), on every device alike.
#[derive(Clone, Debug)]
pub(crate) struct Fault {
    pub error: crate::Error,
    /// Issue order, from one counter for the whole process.
    pub seq: u64,
}

impl Fault {
    pub fn new(error: crate::Error) -> Self {
        Fault { error, seq: next_seq() }
    }

    /// The earlier of two faults.
    pub fn earlier(self, other: Fault) -> Fault {
        if other.seq < self.seq { other } else { self }
    }
}

/// The next number of the process-wide issue order of faults and checks.
pub(crate) fn next_seq() -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Drop for Storage {
    fn drop(&mut self) {
        // Large CPU buffers go back to the CPU backend for reuse.
        if let Storage::Cpu(v) = self {
            cpu::recycle(std::mem::take(v));
        }
    }
}

impl Storage {
    /// The host slice of a CPU storage. Ops check devices before calling a
    /// backend, and the CPU backend checks for poison before it reads, so
    /// anything else here is a bug in wgrad, not a user error.
    pub fn cpu(&self) -> &[f32] {
        match self {
            Storage::Cpu(v) => v,
            _ => unreachable!("CPU kernel handed GPU or poisoned storage"),
        }
    }

    pub fn cpu_mut(&mut self) -> &mut Vec<f32> {
        match self {
            Storage::Cpu(v) => v,
            _ => unreachable!("CPU kernel handed GPU or poisoned storage"),
        }
    }

    pub fn gpu(&self) -> &gpu::GpuBuffer {
        match self {
            Storage::Gpu(b) => b,
            _ => unreachable!("GPU kernel handed CPU storage"),
        }
    }

    pub fn gpu_mut(&mut self) -> &mut gpu::GpuBuffer {
        match self {
            Storage::Gpu(b) => b,
            _ => unreachable!("GPU kernel handed CPU storage"),
        }
    }
}

/// Elementwise functions of one input. The `f32` fields are scalar operands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Abs,
    /// -1, 0 or 1.
    Sign,
    Relu,
    Sigmoid,
    Tanh,
    /// GELU with the exact (erf) formulation, as PyTorch's default.
    Gelu,
    /// d gelu(x) / dx, for gelu's backward.
    GeluGrad,
    /// GELU with the tanh approximation (PyTorch's `approximate='tanh'`,
    /// GPT-2's): `x/2 · (1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    GeluTanh,
    /// d gelu_tanh(x) / dx.
    GeluTanhGrad,
    AddScalar(f32),
    MulScalar(f32),
    /// x^p.
    PowScalar(f32),
    MaxScalar(f32),
    MinScalar(f32),
    /// 1 where `x cmp s` holds, else 0 (false for NaN; no gradient).
    CmpScalar(Cmp, f32),
    /// 1 where lo <= x <= hi, else 0 (clamp's backward mask).
    InRange(f32, f32),
}

/// Elementwise functions of two (broadcast) inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    /// 1 where `a cmp b` holds, else 0 (false for NaN; no gradient).
    Cmp(Cmp),
}

/// A comparison, as IEEE-754 defines it: every one but `Ne` is false when
/// an operand is NaN, and `Ne` true.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Cmp {
    #[inline(always)]
    pub fn holds(self, a: f32, b: f32) -> bool {
        match self {
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
        }
    }
}

/// Reductions along one axis of a `[outer, len, inner]` view. The
/// discriminants are the `OP` constant of `shaders/reduce.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReduceOp {
    Sum = 0,
    /// NaN wins, as in PyTorch.
    Max = 1,
    /// Index of the first maximum (or the first NaN), as an f32.
    ArgMax = 2,
    /// NaN wins, as in PyTorch.
    Min = 3,
    /// Index of the first minimum (or the first NaN), as an f32.
    ArgMin = 4,
    /// The sum divided by the length (as PyTorch's `mean`: NaN when empty).
    Mean = 5,
}

/// A (batched) matrix product `out[b] = op(A[b]) · op(B[b])`, where `op`
/// transposes when the flag is set. A is stored as `[m, k]` (or `[k, m]`
/// when transposed), B as `[k, n]` (or `[n, k]`); out is `[batch, m, n]`.
/// A batch stride of 0 reuses one matrix for every batch entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MatmulSpec {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub a_batch_stride: usize,
    pub b_batch_stride: usize,
}

impl MatmulSpec {
    /// `gᵀ·x` for `g` `[rows, outs]` and `x` `[rows, ins]`: a linear layer's
    /// weight gradient.
    pub fn linear_weight_grad(rows: usize, outs: usize, ins: usize) -> Self {
        MatmulSpec {
            batch: 1,
            m: outs,
            n: ins,
            k: rows,
            trans_a: true,
            trans_b: false,
            a_batch_stride: 0,
            b_batch_stride: 0,
        }
    }
}

/// [`Backend::cross_entropy_mean`] as the per-row losses and their mean.
pub(crate) fn cross_entropy_mean_unfused<B: Backend + ?Sized>(
    b: &B,
    logits: &Storage,
    labels: &Storage,
    rows: usize,
    classes: usize,
) -> Storage {
    let per_row = b.cross_entropy(logits, labels, rows, classes);
    b.reduce(ReduceOp::Mean, &per_row, AxisView { outer: 1, len: rows, inner: 1 })
}

/// [`Backend::argmax_hits`] as the argmax, its comparison with the labels,
/// their sum and the add to `base`.
pub(crate) fn argmax_hits_unfused<B: Backend + ?Sized>(
    b: &B,
    x: &Storage,
    labels: &Storage,
    base: Option<&Storage>,
    rows: usize,
    len: usize,
) -> Storage {
    let index = b.reduce(ReduceOp::ArgMax, x, AxisView { outer: rows, len, inner: 1 });
    let line = Strided::contiguous(&[rows].into());
    let hit = b.binary(BinaryOp::Cmp(Cmp::Eq), (&index, &line), (labels, &line));
    let count = b.reduce(ReduceOp::Sum, &hit, AxisView { outer: 1, len: rows, inner: 1 });
    match base {
        Some(base) => {
            let one = Strided::contiguous(&[1].into());
            b.binary(BinaryOp::Add, (base, &one), (&count, &one))
        }
        None => count,
    }
}

/// [`Backend::linear_grads`] as the unfused graph computes it: the weight
/// gradient's product and the bias gradient's column sum.
pub(crate) fn linear_grads_unfused<B: Backend + ?Sized>(
    b: &B,
    g: &Storage,
    x: &Storage,
    rows: usize,
    outs: usize,
    ins: usize,
) -> [Storage; 2] {
    let spec = MatmulSpec::linear_weight_grad(rows, outs, ins);
    [b.matmul(g, x, spec), b.reduce(ReduceOp::Sum, g, AxisView { outer: 1, len: rows, inner: outs })]
}

/// A 2-D convolution (PyTorch's `conv2d`, a cross-correlation) of an NCHW
/// input `[n, c_in, h, w]` with a weight `[c_out, c_in / groups, kh, kw]`,
/// giving `[n, c_out, oh, ow]`. Output pixel `(y, x)` reads input rows
/// `y·sh - ph + i·dh` and columns `x·sw - pw + j·dw`; positions outside the
/// input read 0. `ph`, `pw` pad the top and left; the bottom and right
/// padding is implied by `oh`, `ow` (so "same" padding of an even kernel,
/// one more at the end as in PyTorch, needs no other field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvSpec {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub dh: usize,
    pub dw: usize,
    pub groups: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvSpec {
    /// Input channels per group.
    pub fn cg(&self) -> usize {
        self.c_in / self.groups
    }

    /// Output channels per group.
    pub fn mg(&self) -> usize {
        self.c_out / self.groups
    }

    /// The reduction length of one output: `cg · kh · kw`.
    pub fn patch(&self) -> usize {
        self.cg() * self.kh * self.kw
    }

    pub fn input_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }

    pub fn output_len(&self) -> usize {
        self.n * self.c_out * self.oh * self.ow
    }

    pub fn weight_len(&self) -> usize {
        self.c_out * self.patch()
    }
}

/// What a 2-D pooling window computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PoolKind {
    /// The window's maximum; NaN wins (the last NaN), else the first maximum.
    Max,
    /// The window's mean, dividing by `kh·kw` when padding counts, else by
    /// the number of input positions inside the window.
    Avg { count_include_pad: bool },
    /// PyTorch's adaptive average: output `i` of `o` averages input
    /// positions `⌊i·len/o⌋ .. ⌈(i+1)·len/o⌉` (kernel, stride and padding
    /// are unused).
    AdaptiveAvg,
}

/// 2-D pooling of `planes` independent `h × w` images into `oh × ow`, with
/// window `kh × kw`, stride and top-left padding as in [`ConvSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PoolSpec {
    pub kind: PoolKind,
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub oh: usize,
    pub ow: usize,
}

impl PoolSpec {
    /// The input rows (or, with `cols`, columns) window `o` covers: a
    /// half-open range, clipped to the input.
    #[inline]
    pub fn window(&self, o: usize, cols: bool) -> (usize, usize) {
        let (len, out, k, s, p) = if cols {
            (self.w, self.ow, self.kw, self.sw, self.pw)
        } else {
            (self.h, self.oh, self.kh, self.sh, self.ph)
        };
        match self.kind {
            PoolKind::AdaptiveAvg => ((o * len) / out, ((o + 1) * len).div_ceil(out)),
            _ => {
                let start = o * s;
                (start.saturating_sub(p), (start + k).saturating_sub(p).min(len))
            }
        }
    }

    /// The divisor of an average over window `(oy, ox)`.
    #[inline]
    pub fn divisor(&self, oy: usize, ox: usize) -> f32 {
        let ((y0, y1), (x0, x1)) = (self.window(oy, false), self.window(ox, true));
        match self.kind {
            PoolKind::Avg { count_include_pad: true } => {
                // Padding counts, the space past it (never reached without
                // ceil mode) does not: PyTorch's rule.
                let span = |o: usize, s: usize, k: usize, p: usize, len: usize| {
                    let start = o * s;
                    (start + k).min(len + 2 * p) - start
                };
                (span(oy, self.sh, self.kh, self.ph, self.h) * span(ox, self.sw, self.kw, self.pw, self.w)) as f32
            }
            _ => ((y1 - y0) * (x1 - x0)) as f32,
        }
    }

    pub fn input_len(&self) -> usize {
        self.planes * self.h * self.w
    }

    pub fn output_len(&self) -> usize {
        self.planes * self.oh * self.ow
    }
}

/// A `[outer, len, inner]` view for axis-wise kernels; `len` is the axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AxisView {
    pub outer: usize,
    pub len: usize,
    pub inner: usize,
}

/// Hyper-parameters of one fused optimizer update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum UpdateRule {
    /// SGD: `v = momentum·v + g (+ wd·p)`; `p -= lr·(nesterov ? g + momentum·v : v)`.
    Sgd { lr: f32, momentum: f32, weight_decay: f32, nesterov: bool },
    /// Adam/AdamW. `decoupled` selects AdamW's weight decay. `bias1`, `bias2`
    /// are the bias corrections 1-β1^t and 1-β2^t for this step.
    Adam { lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32, decoupled: bool, bias1: f32, bias2: f32 },
}

/// The kernels a device provides. Inputs are contiguous unless a [`Strided`]
/// layout says otherwise; outputs are always new contiguous storage, except
/// for the in-place `copy_into` and `update`.
///
/// Only reading back can fail. A fault (out of memory, a tensor over the
/// binding limit, a lost device, an index out of range) poisons the storage
/// it happens to, every result computed from poisoned storage is poisoned
/// too, and the error comes out of `to_vec` — as CUDA's asynchronous errors
/// do, but as a `Result`, and the same way on every device.
pub(crate) trait Backend {
    fn upload(&self, data: &[f32]) -> Storage;
    /// As `upload`, taking ownership (the CPU keeps the vector as it is).
    fn upload_vec(&self, data: Vec<f32>) -> Storage {
        self.upload(&data)
    }
    fn to_vec(&self, x: &Storage, n: usize) -> Result<Vec<f32>>;
    /// Storage of this device holding `error` instead of values.
    fn poisoned(&self, error: crate::Error) -> Storage;
    /// The error `x` holds, if it is poisoned; known without waiting for
    /// the device only for errors found when the work was recorded
    /// (allocation, a lost device), not for those its kernels find.
    fn error(&self, x: &Storage) -> Option<crate::Error>;
    fn full(&self, n: usize, value: f32) -> Storage;
    fn unary(&self, op: UnaryOp, x: &Storage, n: usize) -> Storage;
    /// ReLU's backward over `n` contiguous elements: `grad · (x > 0 ? 1 : 0)`
    /// (a NaN `x` gives `grad · 0`: 0, or NaN for an infinite or NaN
    /// `grad`). By default the mask and a product, which the GPU fuses into
    /// one kernel; the CPU makes one pass.
    fn relu_backward(&self, grad: &Storage, x: &Storage, n: usize) -> Storage {
        let mask = self.unary(UnaryOp::CmpScalar(Cmp::Gt, 0.0), x, n);
        let flat = Strided { dims: vec![n], strides: vec![1], offset: 0 };
        self.binary(BinaryOp::Mul, (grad, &flat), (&mask, &flat))
    }
    /// `a` and `b` are read through layouts of the output's shape (broadcast
    /// dimensions have stride 0).
    fn binary(&self, op: BinaryOp, a: (&Storage, &Strided), b: (&Storage, &Strided)) -> Storage;
    /// `c ≠ 0 ? a : b` elementwise (a NaN condition counts as true, as it is
    /// not 0), all three read through layouts of the output's shape.
    fn select(&self, c: (&Storage, &Strided), a: (&Storage, &Strided), b: (&Storage, &Strided)) -> Storage;
    /// Reduces `[outer, len, inner]` to `[outer, inner]`.
    fn reduce(&self, op: ReduceOp, x: &Storage, v: AxisView) -> Storage;
    fn matmul(&self, a: &Storage, b: &Storage, spec: MatmulSpec) -> Storage;
    /// A linear layer's weight and bias gradients from its output's
    /// gradient `g` (`[rows, outs]`) and its input `x` (`[rows, ins]`):
    /// `[gᵀ·x, Σ_rows g]`, shapes `[outs, ins]` and `[outs]`. By default the
    /// product and the column sum the unfused graph computes (bit for bit);
    /// a GPU computes both in one product kernel, the sum as the product
    /// with a column of ones appended to `x`.
    fn linear_grads(&self, g: &Storage, x: &Storage, rows: usize, outs: usize, ins: usize) -> [Storage; 2] {
        linear_grads_unfused(self, g, x, rows, outs, ins)
    }
    /// Softmax (or log-softmax) along `len` of `[outer, len, inner]`.
    fn softmax(&self, x: &Storage, v: AxisView, log: bool) -> Storage;
    /// Inclusive running sums along `len` of `[outer, len, inner]`, from the
    /// end when `reverse`.
    fn cumsum(&self, x: &Storage, v: AxisView, reverse: bool) -> Storage;
    /// The indices (as f32) that sort each line along `len` of `[outer,
    /// len, inner]`, stably: `-∞ … -0 = +0 … +∞ < NaN`, ties in index order.
    fn argsort(&self, x: &Storage, v: AxisView, descending: bool) -> Storage;
    /// A 2-D convolution, `[n, c_in, h, w]` → `[n, c_out, oh, ow]`.
    fn conv2d(&self, x: &Storage, weight: &Storage, spec: ConvSpec) -> Storage;
    /// `conv2d` plus `bias[c]` on every output of channel `c`. By default
    /// the convolution and a broadcast add, which the GPU fuses into the
    /// product's store where epilogues are on (else into one elementwise
    /// kernel); the CPU adds the bias to each block of the output while it
    /// is still in cache, saving a pass over the whole output.
    fn conv2d_bias(&self, x: &Storage, weight: &Storage, bias: &Storage, spec: ConvSpec) -> Storage {
        let y = self.conv2d(x, weight, spec);
        let dims = vec![spec.n, spec.c_out, spec.oh, spec.ow];
        let per_channel = Strided { dims: dims.clone(), strides: vec![0, 1, 0, 0], offset: 0 };
        self.binary(BinaryOp::Add, (&y, &Strided::contiguous(&crate::shape::Shape::from(dims))), (bias, &per_channel))
    }
    /// The gradient of `conv2d` with respect to its input, from the
    /// output's gradient `gy` (a transposed convolution).
    fn conv2d_input_grad(&self, gy: &Storage, weight: &Storage, spec: ConvSpec) -> Storage;
    /// The gradient of `conv2d` with respect to its weight, summed over the batch.
    fn conv2d_weight_grad(&self, gy: &Storage, x: &Storage, spec: ConvSpec) -> Storage;
    /// `conv2d_weight_grad` and the bias's gradient (`gy` summed over the
    /// batch and the pixels, per output channel) together. By default two
    /// reductions after the weight gradient; the CPU sums each block of
    /// `gy` while the weight gradient's product has it in cache.
    fn conv2d_weight_bias_grad(&self, gy: &Storage, x: &Storage, spec: ConvSpec) -> [Storage; 2] {
        let gw = self.conv2d_weight_grad(gy, x, spec);
        let images = spec.n * spec.c_out;
        let per_image = self.reduce(ReduceOp::Sum, gy, AxisView { outer: images, len: spec.oh * spec.ow, inner: 1 });
        let gb = self.reduce(ReduceOp::Sum, &per_image, AxisView { outer: 1, len: spec.n, inner: spec.c_out });
        [gw, gb]
    }
    /// 2-D pooling, `[planes, h, w]` → `[planes, oh, ow]`.
    fn pool2d(&self, x: &Storage, spec: PoolSpec) -> Storage;
    /// The gradient of `pool2d` with respect to its input. A max pool sends
    /// each output's gradient to the element its forward picked (recomputed
    /// from `x`); averages spread it evenly over their windows.
    fn pool2d_backward(&self, x: &Storage, gy: &Storage, spec: PoolSpec) -> Storage;
    /// Gathers the strided view into new contiguous storage.
    fn copy_strided(&self, x: &Storage, src: &Strided) -> Storage;
    /// Writes contiguous `x` into the strided region `dst` of `out`, in place.
    fn copy_into(&self, out: &mut Storage, dst: &Strided, x: &Storage);
    /// `out[o, j, i] = x[o, idx[o, j, i], i]` for `x: [outer, len, inner]`, where
    /// `idx` is read through a layout of shape `[outer, m, inner]`. An
    /// index that is not an integer in `0..len` poisons the result with
    /// `Error::IndexOutOfRange` naming `op`.
    fn gather(&self, op: &'static str, x: &Storage, v: AxisView, idx: (&Storage, &Strided), m: usize) -> Storage;
    /// The adjoint of `gather`: `out[o, l, i] = Σ_j [idx[o,j,i] = l] · g[o, j, i]`.
    fn scatter_add(&self, op: &'static str, g: &Storage, v: AxisView, idx: (&Storage, &Strided), m: usize) -> Storage;
    /// Per-row `logsumexp(logits) - logits[label]` for `[rows, classes]` logits;
    /// a label that is not a class index poisons the result.
    fn cross_entropy(&self, logits: &Storage, labels: &Storage, rows: usize, classes: usize) -> Storage;
    /// The mean of `cross_entropy` over the rows, a one-element storage. By
    /// default the per-row losses and their mean (`Tensor::mean`'s
    /// reduction); the GPU computes a small batch's in one kernel.
    fn cross_entropy_mean(&self, logits: &Storage, labels: &Storage, rows: usize, classes: usize) -> Storage {
        cross_entropy_mean_unfused(self, logits, labels, rows, classes)
    }
    /// How many of the `rows` rows of `len` values have their argmax (the
    /// first maximum, or the first NaN) equal to the row's label, plus the
    /// one-element `base` if given (a running total), as a one-element
    /// storage: a classifier's correct predictions. By default the argmax,
    /// the comparison, the sum and the add; the GPU counts a batch of short
    /// rows in one kernel.
    fn argmax_hits(&self, x: &Storage, labels: &Storage, base: Option<&Storage>, rows: usize, len: usize) -> Storage {
        argmax_hits_unfused(self, x, labels, base, rows, len)
    }
    /// `(softmax(logits) - onehot(label)) · grad_rows[row]`, or with
    /// `grad_scale`, `· grad_rows[0] · grad_scale` for every row (the
    /// gradient of the mean loss without expanding it to a row each).
    fn cross_entropy_backward(
        &self,
        logits: &Storage,
        labels: &Storage,
        grad_rows: &Storage,
        rows: usize,
        classes: usize,
        grad_scale: Option<f32>,
    ) -> Storage;
    /// Layer normalisation of each `cols`-element row of `x`:
    /// `[y, stats]`, `y = (x - mean) · rstd · w + b` and `stats` the
    /// per-row `[mean, rstd]` (`rstd = 1/sqrt(var + eps)`, biased variance).
    fn layer_norm(&self, x: &Storage, w: &Storage, b: &Storage, rows: usize, cols: usize, eps: f32) -> [Storage; 2];
    /// The gradients of [`layer_norm`](Self::layer_norm) for `gy`:
    /// `[dx, dw, db]`.
    fn layer_norm_backward(
        &self,
        x: &Storage,
        stats: &Storage,
        w: &Storage,
        gy: &Storage,
        rows: usize,
        cols: usize,
    ) -> [Storage; 3];
    /// The gradient of [`softmax`](Self::softmax) (or log-softmax) along
    /// `v`'s axis from its output `y` and the output's gradient `g`:
    /// `y·(g - Σ g·y)`, or `g - exp(y)·Σ g` for log-softmax.
    fn softmax_backward(&self, y: &Storage, g: &Storage, v: AxisView, log: bool) -> Storage;
    /// One LSTM step's gate arithmetic: `hc = [h | c]` (`[batch, 2·hidden]`)
    /// from the pre-activation `gates = [i | f | g | o]` (`[batch,
    /// 4·hidden]`, PyTorch's order) and `hc_prev`:
    /// `c = σ(f)·c_prev + σ(i)·tanh(g)`, `h = σ(o)·tanh(c)`.
    fn lstm_cell(&self, gates: &Storage, hc_prev: &Storage, batch: usize, hidden: usize) -> Storage;
    /// The gradients of [`lstm_cell`](Self::lstm_cell) for `ghc`:
    /// `[d gates, d hc_prev]` (the latter's `h` half zero).
    fn lstm_cell_backward(
        &self,
        gates: &Storage,
        hc_prev: &Storage,
        ghc: &Storage,
        batch: usize,
        hidden: usize,
    ) -> [Storage; 2];
    /// A whole LSTM layer over a batch-first sequence, fused, where the
    /// backend has one (`None` otherwise: the caller unrolls the sequence
    /// into per-step matmuls and [`lstm_cell`](Self::lstm_cell)s, which is
    /// what a GPU runs anyway). From the input projections `projected`
    /// (`[batch, seq, 4·hidden]`, biases in), `w_hh` (`[4·hidden, hidden]`)
    /// and the initial state `hc0` (`[batch, 2·hidden]`, `[h | c]`): every
    /// step's state `[batch, seq, 2·hidden]`, and the activated gates
    /// (`[batch, seq, 4·hidden]`) its backward reads.
    fn lstm_layer(
        &self,
        projected: &Storage,
        w_hh: &Storage,
        hc0: &Storage,
        batch: usize,
        seq: usize,
        hidden: usize,
    ) -> Option<[Storage; 2]> {
        let _ = (projected, w_hh, hc0, batch, seq, hidden);
        None
    }
    /// The gradients of [`lstm_layer`](Self::lstm_layer) for `g` (the
    /// gradient of every step's state): `[d projected, d w_hh, d hc0]`.
    /// Called only where `lstm_layer` returned its results.
    #[allow(clippy::too_many_arguments)]
    fn lstm_layer_backward(
        &self,
        acts: &Storage,
        hc: &Storage,
        hc0: &Storage,
        w_hh: &Storage,
        g: &Storage,
        batch: usize,
        seq: usize,
        hidden: usize,
    ) -> [Storage; 3] {
        let _ = (acts, hc, hc0, w_hh, g, batch, seq, hidden);
        unreachable!("lstm_layer_backward: this backend has no fused LSTM layer")
    }
    /// `x · keep(i) / (1 - p)` with `keep` from [`crate::rng::dropout_keep`].
    fn dropout(&self, x: &Storage, n: usize, p: f32, key: [u32; 2]) -> Storage;
    /// One fused optimizer step on `param` (and its state buffers), in place.
    fn update(&self, rule: UpdateRule, param: &mut Storage, grad: &Storage, state: &mut [&mut Storage], n: usize);
    /// The step of `rule` on several parameters (PyTorch's multi-tensor
    /// `foreach`/fused optimizers): the same values as one [`update`](Self::update)
    /// each, which is what backends without a multi-tensor kernel do.
    fn update_many(&self, rule: UpdateRule, updates: &mut [Update<'_>]) {
        for u in updates {
            self.update(rule, u.param, u.grad, &mut u.state, u.n);
        }
    }
}

/// One parameter of an [`Backend::update_many`]: the parameter, its
/// gradient, its state buffers, all of `n` elements.
pub(crate) struct Update<'a> {
    pub param: &'a mut Storage,
    pub grad: &'a Storage,
    pub state: Vec<&'a mut Storage>,
    pub n: usize,
}
