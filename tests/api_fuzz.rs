//! The public op surface attacked with random programs, on the CPU and the
//! GPU: proptest-generated sequences of ops over tensors of random shapes
//! (rank 0 to 10; dims of 0 and 1; shapes too large for memory or for a
//! `usize`) holding random values (NaN, ±∞, ±1e30, ±0 among ordinary ones),
//! with random axes, indices and labels, valid or not, convolutions and
//! pools with random kernels, strides, padding, dilation and groups, then a
//! backward pass.
//!
//! Every step of a program must end in one of three ways, the same on both
//! devices:
//! - values, which agree (NaN where NaN, the same infinities, finite values
//!   close: see `agree`);
//! - an `Error` of the same kind (`OutOfMemory` and `TooLarge` count as one:
//!   the devices' limits differ);
//! - a documented panic, whose message starts with the op's name and a colon
//!   ("add: shapes [2] and [3] cannot be broadcast together"), from the same
//!   op on both. Any other panic — an overflow, an index out of bounds, an
//!   unreachable — fails, and so would an abort or a segfault, which take
//!   the test process with them.
//!
//! `cargo test --test api_fuzz` runs 20,000 programs (each on both devices);
//! the ignored `many_more_random_programs` runs 200,000.

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::panic::{AssertUnwindSafe, catch_unwind};
use wgrad::{Device, Error, Tensor};

/// Dims a tensor may have that memory cannot: valid shapes too large to
/// allocate (the tensor is poisoned), and shapes whose count overflows.
const HUGE: usize = 1 << 40;
const WRAPS_TO_ONE: usize = 0xAAAA_AAAA_AAAA_AAAB;

#[derive(Clone, Debug)]
enum Shape {
    /// Ordinary dims (at most 1024 elements).
    Small(Vec<usize>),
    /// Dims that include a huge or overflowing one.
    Huge(Vec<usize>),
}

fn shape() -> impl Strategy<Value = Shape> {
    let small = prop::collection::vec(prop_oneof![3 => 1usize..4, 1 => Just(0usize), 1 => 4usize..8], 0..=10).prop_map(
        |mut d| {
            // Keep ordinary tensors at most 1024 elements: halve dims until so.
            while d.iter().product::<usize>() > 1024 {
                let i = d.iter().enumerate().max_by_key(|(_, v)| **v).map(|(i, _)| i).unwrap();
                d[i] /= 2;
            }
            Shape::Small(d)
        },
    );
    let huge = (prop::collection::vec(1usize..4, 0..3), prop_oneof![Just(HUGE), Just(WRAPS_TO_ONE), Just(usize::MAX)])
        .prop_map(|(mut d, big)| {
            d.push(big);
            Shape::Huge(d)
        });
    prop_oneof![19 => small, 1 => huge]
}

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        12 => -3.0f32..3.0,
        1 => prop_oneof![
            Just(f32::NAN),
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
            Just(1e30f32),
            Just(-1e30f32),
            Just(0.0f32),
            Just(-0.0f32),
            Just(1.0f32),
        ],
    ]
}

/// An axis argument: mostly valid for small ranks, sometimes out of range.
fn axis() -> impl Strategy<Value = isize> {
    prop_oneof![4 => -3isize..3, 1 => -12isize..12]
}

#[derive(Clone, Copy, Debug)]
enum Unary {
    Neg,
    Exp,
    Log,
    Sqrt,
    Abs,
    Relu,
    Sigmoid,
    Tanh,
    Gelu,
    GeluTanh,
    Recip,
    Sqr,
    Sum,
    Mean,
    Max,
    Min,
    Var,
    T,
    Flatten,
}

#[derive(Clone, Copy, Debug)]
enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
    Eq,
    Matmul,
    MseLoss,
    Bce,
    Lt,
    Ne,
    Where,
    L1,
    Huber,
    BceLogits,
}

#[derive(Clone, Debug)]
enum Op {
    Unary(Unary),
    /// add, mul, powf, maximum, minimum with a scalar.
    Scalar(u8, f32),
    Clamp(f32, f32),
    /// sum_dim, mean_dim, max_dim, argmax, softmax, log_softmax, min_dim,
    /// argmin, cumsum, argsort, var_dim, sort values.
    Axis(u8, isize, bool),
    TopK(usize, isize, bool),
    Reshape(Vec<usize>),
    Permute(Vec<usize>),
    Transpose(isize, isize),
    Unsqueeze(usize),
    Squeeze(isize),
    Narrow(isize, usize, usize),
    BroadcastTo(Vec<usize>),
    Dropout(f32),
    IndexSelect(isize, Vec<f32>),
    Gather(isize, Vec<f32>),
    CrossEntropy(Vec<f32>),
    /// With the program's second tensor.
    Binary(Binary),
    Cat(isize),
    /// conv2d: output channels per group, kernel (h, w), stride, padding
    /// (`None`: "same"), dilation, groups; the weight fits x's channels
    /// when it can.
    Conv(usize, (usize, usize), usize, Option<usize>, usize, usize),
    /// max_pool2d (kind 0), avg_pool2d with (1) or without (2) the padding
    /// counted, adaptive_avg_pool2d to (kernel, stride) (3): kernel, stride,
    /// padding.
    Pool(u8, usize, usize, usize),
    /// batch_norm in training (true) or evaluation mode.
    BatchNorm(bool),
    /// layer_norm over the last n axes, with (true) or without an affine
    /// weight and bias.
    LayerNorm(usize, bool),
    /// scaled_dot_product_attention(x, x, x), causal or not.
    Attention(bool),
    /// tril (true) or triu with this diagonal.
    Triangle(bool, i64),
    /// cross_entropy_with these labels, label 1 ignored.
    CrossEntropyIgnore(Vec<f32>),
}

fn op() -> impl Strategy<Value = Op> {
    use Binary::*;
    use Unary::*;
    let unary = prop::sample::select(vec![
        Neg, Exp, Log, Sqrt, Abs, Relu, Sigmoid, Tanh, Gelu, GeluTanh, Recip, Sqr, Sum, Mean, Max, Min, Var, T, Flatten,
    ]);
    let binary = prop::sample::select(vec![
        Add, Sub, Mul, Div, Maximum, Minimum, Eq, Matmul, MseLoss, Bce, Lt, Ne, Where, L1, Huber, BceLogits,
    ]);
    let index = prop_oneof![6 => (0u8..6).prop_map(f32::from), 1 => value()];
    let dims = prop::collection::vec(0usize..5, 0..5);
    prop_oneof![
        6 => unary.prop_map(Op::Unary),
        3 => (0u8..5, value()).prop_map(|(k, s)| Op::Scalar(k, s)),
        1 => (value(), value()).prop_map(|(a, b)| Op::Clamp(a, b)),
        4 => (0u8..12, axis(), any::<bool>()).prop_map(|(k, a, keep)| Op::Axis(k, a, keep)),
        1 => (0usize..4, axis(), any::<bool>()).prop_map(|(k, a, l)| Op::TopK(k, a, l)),
        1 => dims.clone().prop_map(Op::Reshape),
        1 => prop::collection::vec(0usize..11, 0..11).prop_map(Op::Permute),
        1 => (axis(), axis()).prop_map(|(a, b)| Op::Transpose(a, b)),
        1 => (0usize..12).prop_map(Op::Unsqueeze),
        1 => axis().prop_map(Op::Squeeze),
        1 => (axis(), 0usize..4, 0usize..4).prop_map(|(a, s, l)| Op::Narrow(a, s, l)),
        1 => dims.prop_map(Op::BroadcastTo),
        1 => prop_oneof![Just(0.0f32), Just(0.5), Just(1.0), Just(1.5)].prop_map(Op::Dropout),
        2 => (axis(), prop::collection::vec(index.clone(), 0..5)).prop_map(|(a, i)| Op::IndexSelect(a, i)),
        1 => (axis(), prop::collection::vec(index.clone(), 1..64)).prop_map(|(a, i)| Op::Gather(a, i)),
        1 => prop::collection::vec(index, 1..64).prop_map(Op::CrossEntropy),
        6 => binary.prop_map(Op::Binary),
        1 => axis().prop_map(Op::Cat),
        2 => (1usize..4, (0usize..4, 0usize..4), 0usize..3, prop::option::weighted(0.8, 0usize..3), 1usize..3, 0usize..3)
            .prop_map(|(c, k, st, p, d, g)| Op::Conv(c, k, st, p, d, g)),
        2 => (0u8..4, 0usize..4, 0usize..3, 0usize..2).prop_map(|(k, ks, st, p)| Op::Pool(k, ks, st, p)),
        1 => any::<bool>().prop_map(Op::BatchNorm),
        2 => (0usize..4, any::<bool>()).prop_map(|(n, affine)| Op::LayerNorm(n, affine)),
        1 => any::<bool>().prop_map(Op::Attention),
        1 => (any::<bool>(), -2i64..3).prop_map(|(lower, d)| Op::Triangle(lower, d)),
        1 => prop::collection::vec((0u8..6).prop_map(f32::from), 1..64).prop_map(Op::CrossEntropyIgnore),
    ]
}

#[derive(Clone, Debug)]
struct Program {
    shapes: [Shape; 2],
    values: Vec<f32>,
    ops: Vec<Op>,
    /// Whether every step is read back (else only the last: the steps fuse).
    read_each: bool,
}

fn program() -> impl Strategy<Value = Program> {
    (
        shape(),
        shape(),
        prop::collection::vec(value(), 1..64),
        prop::collection::vec(op(), 1..4),
        prop::bool::weighted(0.85),
    )
        .prop_map(|(a, b, values, ops, read_each)| Program { shapes: [a, b], values, ops, read_each })
}

/// How a step ended.
#[derive(Debug)]
enum Outcome {
    Values(Vec<f32>),
    Error(String),
    /// A panic documented as the op's own: its message's `op` prefix.
    Panic(String),
}

/// The kind of an error, with the two resource errors as one. (Of several
/// bad indices, the CPU reports the first and a GPU whichever invocation
/// wrote last: the op and the bound must agree, not the index.)
fn kind(e: &Error) -> String {
    match e {
        Error::OutOfMemory(_) | Error::TooLarge { .. } => "resources".into(),
        Error::IndexOutOfRange { op, bound, .. } => format!("IndexOutOfRange {op} {bound}"),
        Error::Shape { op, .. } => format!("Shape {op}"),
        other => format!("{other:?}").split(['(', ' ', '{']).next().unwrap_or_default().to_string(),
    }
}

/// A panic's op, if its message is a documented one ("op: ..."); anything
/// else (an overflow, an out-of-bounds index, an unreachable) fails the
/// test right away.
fn documented(payload: Box<dyn std::any::Any + Send>, program: &Program, device: &Device) -> String {
    let msg = common::panic_message(payload);
    let op = msg.split_once(": ").map(|(op, _)| op).unwrap_or_default();
    let named = !op.is_empty() && op.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit());
    assert!(named && !msg.contains("unreachable"), "undocumented panic on {device:?}: {msg:?}\nin {program:#?}");
    op.to_string()
}

/// A tensor of `shape` on `dev`: values cycled from `values` for ordinary
/// shapes; `try_full` for overflowing ones (an error ends the program) and
/// `full` for ones too large for memory (a poisoned tensor goes on).
fn make(shape: &Shape, values: &[f32], dev: &Device) -> Result<Tensor, Error> {
    match shape {
        Shape::Small(d) => {
            let n: usize = d.iter().product();
            Tensor::from_vec((0..n).map(|i| values[i % values.len()]).collect(), d.as_slice(), dev)
        }
        Shape::Huge(d) => {
            let s = wgrad::Shape::from(d.clone());
            if s.checked_elem_count().is_none() { Tensor::try_full(s, 1.0, dev) } else { Ok(Tensor::full(s, 1.0, dev)) }
        }
    }
}

/// An index tensor for `x` along `axis`: `m` of `indices` (cycled) in a 1-D
/// tensor, or for `gather` in x's shape with the axis `m` long. Too large a
/// shape gives a poisoned tensor of zeros.
fn indices(x: &Tensor, axis: isize, indices: &[f32], gather: bool, dev: &Device) -> Tensor {
    let m = indices.len().min(4);
    let dims: Vec<usize> = if gather && x.rank() > 0 {
        let a = axis.rem_euclid(x.rank() as isize) as usize;
        let mut d = x.dims().to_vec();
        d[a] = m;
        d
    } else {
        vec![m]
    };
    match wgrad::Shape::from(dims.clone()).checked_elem_count() {
        Some(n) if n <= 4096 => {
            Tensor::from_vec((0..n).map(|i| indices[i % indices.len()]).collect(), dims.as_slice(), dev).unwrap()
        }
        _ => Tensor::zeros([m], dev),
    }
}

/// One step of a program.
fn step(x: &Tensor, other: &Tensor, op: &Op, dev: &Device) -> Tensor {
    use Binary::*;
    use Unary::*;
    match op {
        Op::Unary(u) => match u {
            Neg => x.neg(),
            Exp => x.exp(),
            Log => x.log(),
            Sqrt => x.sqrt(),
            Abs => x.abs(),
            Relu => x.relu(),
            Sigmoid => x.sigmoid(),
            Tanh => x.tanh(),
            Gelu => x.gelu(),
            GeluTanh => x.gelu_tanh(),
            Recip => x.recip(),
            Sqr => x.sqr(),
            Sum => x.sum(),
            Mean => x.mean(),
            Max => x.max(),
            Min => x.min(),
            Var => x.var(),
            T => x.t(),
            Flatten => x.flatten(0, -1),
        },
        Op::Scalar(k, s) => match k {
            0 => x.add_scalar(*s),
            1 => x.mul_scalar(*s),
            2 => x.powf(*s),
            3 => x.maximum_scalar(*s),
            _ => x.minimum_scalar(*s),
        },
        Op::Clamp(lo, hi) => x.clamp(*lo, *hi),
        Op::Axis(k, a, keep) => match k {
            0 => x.sum_dim(*a, *keep),
            1 => x.mean_dim(*a, *keep),
            2 => x.max_dim(*a, *keep),
            3 => x.argmax(*a, *keep),
            4 => x.softmax(*a),
            5 => x.log_softmax(*a),
            6 => x.min_dim(*a, *keep),
            7 => x.argmin(*a, *keep),
            8 => x.cumsum(*a),
            9 => x.argsort(*a, *keep),
            10 => x.var_dim(*a, *keep, 1),
            _ => x.sort(*a, *keep).0,
        },
        Op::TopK(k, a, largest) => x.topk(*k, *a, *largest).0,
        Op::Reshape(d) => x.reshape(d.clone()),
        Op::Permute(order) => x.permute(order),
        Op::Transpose(a, b) => x.transpose(*a, *b),
        Op::Unsqueeze(a) => x.unsqueeze(*a),
        Op::Squeeze(a) => x.squeeze(*a),
        Op::Narrow(a, s, l) => x.narrow(*a, *s, *l),
        Op::BroadcastTo(d) => x.broadcast_to(d.clone()),
        Op::Dropout(p) => {
            wgrad::manual_seed(11);
            x.dropout(*p, true)
        }
        Op::IndexSelect(a, i) => x.index_select(*a, &indices(x, *a, i, false, dev)),
        Op::Gather(a, i) => x.gather(*a, &indices(x, *a, i, true, dev)),
        Op::CrossEntropy(labels) => {
            let rows = x.dims().first().copied().unwrap_or(0);
            let y = if rows <= 4096 {
                Tensor::from_vec((0..rows).map(|r| labels[r % labels.len()]).collect(), [rows], dev).unwrap()
            } else {
                Tensor::zeros([rows], dev)
            };
            x.cross_entropy(&y)
        }
        Op::Binary(b) => match b {
            Add => x + other,
            Sub => x - other,
            Mul => x * other,
            Div => x / other,
            Maximum => x.maximum(other),
            Minimum => x.minimum(other),
            Eq => x.eq(other),
            Matmul => x.matmul(other),
            MseLoss => x.mse_loss(other),
            Bce => x.binary_cross_entropy(other),
            Lt => x.lt(other),
            Ne => x.ne(other),
            Where => x.where_cond(x, other),
            L1 => x.l1_loss(other),
            Huber => x.huber_loss(other, 1.0),
            BceLogits => x.binary_cross_entropy_with_logits(other),
        },
        Op::Cat(a) => Tensor::cat(&[x, other], *a),
        Op::Conv(c_out, (kh, kw), stride, padding, dilation, groups) => {
            // A weight for x's channels (or a small one that does not fit).
            let c_in = if x.rank() >= 3 { x.dims()[x.rank() - 3] } else { 1 };
            let cg = if *groups > 0 && c_in <= 64 { (c_in / groups).max(1) } else { 1 };
            let dims = [c_out * groups.max(&1), cg, *kh, *kw];
            let n: usize = dims.iter().product();
            let w = Tensor::from_vec((0..n).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.25).collect(), dims, dev).unwrap();
            let opts = wgrad::Conv2dOptions::default().stride(*stride).dilation(*dilation).groups(*groups);
            let opts = match padding {
                Some(p) => opts.padding(*p),
                None => opts.padding(wgrad::Padding::Same),
            };
            x.conv2d(&w, None, opts)
        }
        Op::Pool(kind, k, stride, pad) => match kind {
            0 => x.max_pool2d(*k, *stride, *pad),
            1 => x.avg_pool2d(*k, *stride, *pad, true),
            2 => x.avg_pool2d(*k, *stride, *pad, false),
            _ => x.adaptive_avg_pool2d((*k, *stride)),
        },
        Op::LayerNorm(n, affine) => {
            let normalized = x.dims()[x.rank().saturating_sub(*n)..].to_vec();
            let count: usize = normalized.iter().product();
            if *affine && *n <= x.rank() && count <= 4096 {
                let w = Tensor::from_vec(
                    (0..count).map(|i| 0.5 + (i % 3) as f32 * 0.25).collect(),
                    normalized.clone(),
                    dev,
                );
                let b = Tensor::from_vec((0..count).map(|i| (i % 5) as f32 * 0.1 - 0.2).collect(), normalized, dev);
                x.layer_norm(*n, Some(&w.unwrap()), Some(&b.unwrap()), 1e-5)
            } else {
                x.layer_norm(*n, None, None, 1e-5)
            }
        }
        Op::Attention(causal) => wgrad::scaled_dot_product_attention(x, x, x, *causal),
        Op::Triangle(lower, d) => {
            if *lower {
                x.tril(*d)
            } else {
                x.triu(*d)
            }
        }
        Op::CrossEntropyIgnore(labels) => {
            let rows = x.dims().first().copied().unwrap_or(0);
            let y = if rows <= 4096 {
                Tensor::from_vec((0..rows).map(|r| labels[r % labels.len()]).collect(), [rows], dev).unwrap()
            } else {
                Tensor::zeros([rows], dev)
            };
            x.cross_entropy_with(&y, wgrad::CrossEntropyOptions { ignore_index: Some(1), ..Default::default() })
        }
        Op::BatchNorm(training) => {
            let c = if x.rank() >= 2 { x.dims()[1] } else { 0 };
            if *training || c > 4096 {
                x.batch_norm(None, None, None, None, true, 0.1, 1e-5)
            } else {
                let (m, v) = (Tensor::full([c], 0.25, dev), Tensor::full([c], 2.0, dev));
                x.batch_norm(Some(&m), Some(&v), None, None, false, 0.1, 1e-5)
            }
        }
    }
}

/// What a read back gives.
fn read(t: &Tensor) -> Outcome {
    match t.to_vec() {
        Ok(v) => Outcome::Values(v),
        Err(e) => Outcome::Error(kind(&e)),
    }
}

/// Whether a step's values may differ between devices by more than a few
/// ulps of its inputs: it sums (in a different order on each device),
/// divides, or evaluates a transcendental function (with a different
/// implementation on each device). The step itself is compared with a
/// bound that allows for it; the values of later steps are not compared at
/// all (a cancellation that left 1e-7 on one device and 2e-7 on the other
/// may meet a logarithm), only how they ended.
fn inexact(op: &Op) -> bool {
    use Binary::*;
    use Unary::*;
    match op {
        Op::Unary(u) => matches!(u, Exp | Log | Sqrt | Sigmoid | Tanh | Gelu | GeluTanh | Recip | Sum | Mean | Var),
        Op::Scalar(k, _) => *k == 2,
        Op::Axis(k, _, _) => !matches!(k, 2 | 3 | 6 | 7 | 9 | 11),
        Op::CrossEntropy(_) => true,
        Op::Binary(b) => matches!(b, Div | Matmul | MseLoss | Bce | L1 | Huber | BceLogits),
        Op::Conv(..) | Op::BatchNorm(_) | Op::LayerNorm(..) | Op::Attention(_) | Op::CrossEntropyIgnore(_) => true,
        Op::Pool(kind, ..) => *kind != 0,
        _ => false,
    }
}

/// Runs `program` on `dev`: the outcome of each step read back (every step
/// with `read_all`, else as the program says), then of the backward pass
/// (the inputs' gradients), each with its step number (`ops.len()` for the
/// backward).
fn run(program: &Program, dev: &Device, read_all: bool) -> Vec<(usize, Outcome)> {
    let mut out = Vec::new();
    let made: Result<Vec<Tensor>, Error> = program.shapes.iter().map(|s| make(s, &program.values, dev)).collect();
    let inputs = match made {
        Ok(t) => t,
        Err(e) => return vec![(0, Outcome::Error(kind(&e)))],
    };
    let vars: Vec<Tensor> = inputs.into_iter().map(Tensor::requires_grad).collect();
    let mut x = vars[0].clone();
    let last = program.ops.len();
    for (i, op) in program.ops.iter().enumerate() {
        match catch_unwind(AssertUnwindSafe(|| step(&x, &vars[1], op, dev))) {
            Ok(y) => x = y,
            Err(payload) => {
                out.push((i, Outcome::Panic(documented(payload, program, dev))));
                return out;
            }
        }
        if read_all || program.read_each || i + 1 == last {
            out.push((i, read(&x)));
        }
    }
    match catch_unwind(AssertUnwindSafe(|| x.sum().backward())) {
        Ok(grads) => {
            for v in &vars {
                out.push((last, grads.get(v).map_or(Outcome::Values(Vec::new()), read)));
            }
        }
        Err(payload) => out.push((last, Outcome::Panic(documented(payload, program, dev)))),
    }
    out
}

/// The largest finite magnitude among `values`.
fn scale(values: &[f32]) -> f32 {
    values.iter().filter(|v| v.is_finite()).fold(0.0f32, |m, v| m.max(v.abs()))
}

/// The values a tensor of `shape` holds (see `make`): the first
/// `min(n, values.len())` of the pool (the rest of its `n` elements cycle
/// through them again), or ones for the huge shapes.
fn used<'a>(shape: &Shape, values: &'a [f32]) -> &'a [f32] {
    match shape {
        Shape::Small(d) => &values[..d.iter().product::<usize>().min(values.len())],
        Shape::Huge(_) => &[1.0],
    }
}

/// The largest finite magnitude the program's two input tensors hold: not
/// the whole pool's, whose ±1e30 an input of a few elements may never use.
fn input_scale(program: &Program) -> f32 {
    program.shapes.iter().map(|s| scale(used(s, &program.values))).fold(0.0, f32::max)
}

/// Compares the GPU's outcomes with the CPU's (which has every step).
fn compare(cpu: &[(usize, Outcome)], gpu: &[(usize, Outcome)], program: &Program) -> Result<(), TestCaseError> {
    // The magnitude each step's inputs had: the values the input tensors
    // hold, then each step's result on the CPU.
    let mut input_scale = vec![input_scale(program); program.ops.len() + 1];
    for (step, o) in cpu {
        if let Outcome::Values(v) = o
            && step + 1 < input_scale.len()
        {
            input_scale[step + 1] = input_scale[step + 1].max(scale(v)).max(input_scale[*step]);
        }
    }
    let first_inexact = program.ops.iter().position(inexact).unwrap_or(program.ops.len());
    let gpu_steps: Vec<usize> = gpu.iter().map(|(s, _)| *s).collect();
    let cpu_at: Vec<&(usize, Outcome)> = cpu.iter().filter(|(s, _)| gpu_steps.contains(s)).collect();
    prop_assert_eq!(cpu_at.len(), gpu.len(), "outcomes differ:\ncpu {:?}\ngpu {:?}", cpu, gpu);
    for ((step, c), (_, g)) in cpu_at.into_iter().zip(gpu) {
        match (c, g) {
            (Outcome::Values(c), Outcome::Values(g)) => {
                prop_assert_eq!(c.len(), g.len(), "step {}: lengths differ", step);
                if *step > first_inexact {
                    continue;
                }
                // A sum of n terms differs by about n·ε·max|term|.
                let slack = if *step == first_inexact { 1e-6 * 2048.0 * input_scale[*step] } else { 0.0 };
                for (j, (&gv, &cv)) in g.iter().zip(c).enumerate() {
                    prop_assert!(agree(gv, cv, slack), "step {}, element {}: gpu {} vs cpu {}", step, j, gv, cv);
                }
            }
            (Outcome::Error(c), Outcome::Error(g)) => prop_assert_eq!(c, g, "step {}", step),
            (Outcome::Panic(c), Outcome::Panic(g)) => prop_assert_eq!(c, g, "step {}", step),
            _ => prop_assert!(false, "step {}: cpu {:?} but gpu {:?}", step, c, g),
        }
    }
    Ok(())
}

/// Whether a GPU value agrees with the CPU's: NaN with NaN, the same
/// infinity (or, where rounding near f32::MAX decides whether a value
/// overflows, both sides huge with the same sign), or within 1e-3 relative
/// plus `slack`.
fn agree(g: f32, c: f32, slack: f32) -> bool {
    if c.is_nan() || g.is_nan() {
        return c.is_nan() && g.is_nan();
    }
    if c.is_infinite() || g.is_infinite() {
        return g == c || (g.signum() == c.signum() && g.abs().min(c.abs()) > 1e37);
    }
    (g - c).abs() <= 1e-3 * (1.0 + c.abs()) + slack
}

fn fuzz(cases: u32, seed: u8) {
    let gpu = common::gpu();
    // Documented panics are expected by the thousand; do not print them.
    std::panic::set_hook(Box::new(|_| {}));
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]));
    let result = runner.run(&program(), |p| {
        let cpu = run(&p, &Device::Cpu, true);
        match &gpu {
            Some(dev) => compare(&cpu, &run(&p, dev, false), &p),
            None => Ok(()),
        }
    });
    let _ = std::panic::take_hook();
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// `WGRAD_FUZZ_CASES` overrides the count (for a quick local run).
fn cases(default: u32) -> u32 {
    std::env::var("WGRAD_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `WGRAD_FUZZ_SEED` overrides the seed (to explore other programs).
fn seed(default: u8) -> u8 {
    std::env::var("WGRAD_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn random_programs_agree_on_both_devices() {
    fuzz(cases(20_000), seed(1));
}

#[test]
#[ignore = "200,000 programs: minutes on lavapipe"]
fn many_more_random_programs() {
    fuzz(cases(200_000), seed(2));
}
