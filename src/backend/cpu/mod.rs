//! The CPU backend: the reference every GPU kernel and gradient is checked
//! against, and the CPU side of the CPU-vs-GPU comparison.
//!
//! One file per kernel family (`elementwise`, `reduce`, `softmax`, `loss`,
//! `matmul`, `conv` (convolution and pooling), `copy`, `gather`, `scan`,
//! `sort`, `optim`), plain loops over contiguous slices written so the
//! compiler vectorises the common cases ([`simd`]); loops and
//! products from a few tens of microseconds up are split over the cores by
//! [`pool`], whose workers stay awake between the pieces of a training step;
//! matmul goes to the `gemm` crate.
//!
//! Failures only the data or the machine reveal — an index out of range,
//! an output the allocator refuses — poison the result
//! ([`Storage::Poisoned`]) instead of panicking or aborting, and every
//! result computed from poisoned storage is poisoned in turn (by the
//! earliest fault among its inputs): the same contract as the GPU's, so
//! reading back gives the same error on both.

mod cache;
mod conv;
mod copy;
mod elementwise;
mod gather;
mod loss;
mod math;
mod matmul;
mod norm;
mod optim;
mod pool;
mod pooling;
mod reduce;
mod rnn;
mod scan;
mod simd;
mod softmax;
mod sort;

pub(crate) use cache::{cached_bytes, clear as clear_cache, give as recycle};
pub(crate) use pool::threads;

use super::{
    AxisView, Backend, BinaryOp, ConvSpec, Fault, MatmulSpec, PoolSpec, ReduceOp, Storage, UnaryOp, UpdateRule,
};
use crate::shape::Strided;
use crate::{Error, Result};

/// The CPU backend. It has no state: all of it is in the storages.
pub(crate) struct Cpu;

/// A zeroed buffer of `n` f32s, or [`Error::OutOfMemory`] when the
/// allocator refuses it — never an abort.
pub(super) fn output(n: usize) -> Result<Vec<f32>> {
    if let Some(mut v) = cache::take(n) {
        v.clear();
        v.resize(n, 0.0);
        return Ok(v);
    }
    fresh(n)
}

/// A buffer of `n` f32s for a kernel that writes every element: a cached
/// buffer keeps its old values (valid floats, about to be overwritten)
/// rather than being zeroed first, which cost ~12% of a convnet's CPU
/// epoch. Kernels that accumulate into their output use [`output`].
pub(super) fn output_overwritten(n: usize) -> Result<Vec<f32>> {
    if let Some(mut v) = cache::take(n) {
        if v.len() >= n {
            v.truncate(n);
        } else {
            v.resize(n, 0.0);
        }
        return Ok(v);
    }
    fresh(n)
}

/// Splits `v` into consecutive pieces of `len` behind locks, so the tasks of
/// a `pool::run` each take their own piece.
fn pieces(v: &mut [f32], len: usize) -> Vec<std::sync::Mutex<&mut [f32]>> {
    v.chunks_mut(len.max(1)).map(std::sync::Mutex::new).collect()
}

/// A new zeroed buffer from the allocator.
fn fresh(n: usize) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| Error::OutOfMemory(format!("{n} elements ({} bytes) for a CPU tensor", (n as u128) * 4)))?;
    v.resize(n, 0.0);
    Ok(v)
}

/// Offset of the first element of row `row` (rows are the last dimension).
#[inline]
pub(super) fn row_offset(dims: &[usize], strides: &[usize], mut row: usize) -> usize {
    let mut at = 0;
    for (&d, &s) in dims[..dims.len() - 1].iter().zip(strides).rev() {
        at += (row % d) * s;
        row /= d;
    }
    at
}

/// The earliest fault among `inputs`' (the first cause).
fn poisoned(inputs: &[&Storage]) -> Option<Fault> {
    inputs
        .iter()
        .filter_map(|s| match s {
            Storage::Poisoned(f) => Some(f.clone()),
            _ => None,
        })
        .reduce(Fault::earlier)
}

/// A kernel's result as storage: its values, or the error that poisons it.
fn store(result: Result<Vec<f32>>) -> Storage {
    match result {
        Ok(v) => Storage::Cpu(v),
        Err(e) => Storage::Poisoned(Fault::new(e)),
    }
}

/// Runs `kernel` unless an input is poisoned, in which case the result is too.
fn run(inputs: &[&Storage], kernel: impl FnOnce() -> Result<Vec<f32>>) -> Storage {
    let [out] = run_many(inputs, || kernel().map(|v| [v]));
    out
}

/// As [`run`], for a kernel with `N` outputs (all poisoned alike).
fn run_many<const N: usize>(inputs: &[&Storage], kernel: impl FnOnce() -> Result<[Vec<f32>; N]>) -> [Storage; N] {
    let fault = match poisoned(inputs) {
        Some(f) => f,
        None => match kernel() {
            Ok(outs) => return outs.map(Storage::Cpu),
            Err(e) => Fault::new(e),
        },
    };
    std::array::from_fn(|_| Storage::Poisoned(fault.clone()))
}

impl Backend for Cpu {
    fn upload(&self, data: &[f32]) -> Storage {
        store(output_overwritten(data.len()).map(|mut v| {
            v.copy_from_slice(data);
            v
        }))
    }

    fn upload_vec(&self, data: Vec<f32>) -> Storage {
        Storage::Cpu(data)
    }

    fn to_vec(&self, x: &Storage, n: usize) -> Result<Vec<f32>> {
        match x {
            Storage::Poisoned(f) => Err(f.error.clone()),
            _ => Ok(x.cpu()[..n].to_vec()),
        }
    }

    fn poisoned(&self, error: Error) -> Storage {
        Storage::Poisoned(Fault::new(error))
    }

    fn error(&self, x: &Storage) -> Option<Error> {
        poisoned(&[x]).map(|f| f.error)
    }

    fn full(&self, n: usize, value: f32) -> Storage {
        store(elementwise::full(n, value))
    }

    fn unary(&self, op: UnaryOp, x: &Storage, n: usize) -> Storage {
        run(&[x], || elementwise::unary(op, &x.cpu()[..n]))
    }

    fn relu_backward(&self, grad: &Storage, x: &Storage, n: usize) -> Storage {
        run(&[grad, x], || elementwise::relu_backward(&grad.cpu()[..n], &x.cpu()[..n]))
    }

    fn binary(&self, op: BinaryOp, a: (&Storage, &Strided), b: (&Storage, &Strided)) -> Storage {
        run(&[a.0, b.0], || elementwise::binary(op, (a.0.cpu(), a.1), (b.0.cpu(), b.1)))
    }

    fn select(&self, c: (&Storage, &Strided), a: (&Storage, &Strided), b: (&Storage, &Strided)) -> Storage {
        run(&[c.0, a.0, b.0], || elementwise::select((c.0.cpu(), c.1), (a.0.cpu(), a.1), (b.0.cpu(), b.1)))
    }

    fn reduce(&self, op: ReduceOp, x: &Storage, v: AxisView) -> Storage {
        run(&[x], || reduce::reduce(op, x.cpu(), v))
    }

    fn matmul(&self, a: &Storage, b: &Storage, spec: MatmulSpec) -> Storage {
        run(&[a, b], || matmul::matmul(a.cpu(), b.cpu(), spec))
    }

    fn softmax(&self, x: &Storage, v: AxisView, log: bool) -> Storage {
        run(&[x], || softmax::softmax(x.cpu(), v, log))
    }

    fn layer_norm(&self, x: &Storage, w: &Storage, b: &Storage, rows: usize, cols: usize, eps: f32) -> [Storage; 2] {
        run_many(&[x, w, b], || norm::layer_norm(x.cpu(), w.cpu(), b.cpu(), rows, cols, eps))
    }

    fn layer_norm_backward(
        &self,
        x: &Storage,
        stats: &Storage,
        w: &Storage,
        gy: &Storage,
        rows: usize,
        cols: usize,
    ) -> [Storage; 3] {
        run_many(&[x, stats, w, gy], || norm::layer_norm_backward(x.cpu(), stats.cpu(), w.cpu(), gy.cpu(), rows, cols))
    }

    fn softmax_backward(&self, y: &Storage, g: &Storage, v: AxisView, log: bool) -> Storage {
        run(&[y, g], || softmax::softmax_backward(y.cpu(), g.cpu(), v, log))
    }

    fn lstm_cell(&self, gates: &Storage, hc_prev: &Storage, batch: usize, hidden: usize) -> Storage {
        run(&[gates, hc_prev], || rnn::lstm_cell(gates.cpu(), hc_prev.cpu(), batch, hidden))
    }

    fn lstm_cell_backward(
        &self,
        gates: &Storage,
        hc_prev: &Storage,
        ghc: &Storage,
        batch: usize,
        hidden: usize,
    ) -> [Storage; 2] {
        run_many(&[gates, hc_prev, ghc], || {
            rnn::lstm_cell_backward(gates.cpu(), hc_prev.cpu(), ghc.cpu(), batch, hidden)
        })
    }

    fn lstm_layer(
        &self,
        projected: &Storage,
        w_hh: &Storage,
        hc0: &Storage,
        batch: usize,
        seq: usize,
        hidden: usize,
    ) -> Option<[Storage; 2]> {
        Some(run_many(&[projected, w_hh, hc0], || {
            rnn::lstm_layer(projected.cpu(), w_hh.cpu(), hc0.cpu(), batch, seq, hidden)
        }))
    }

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
        run_many(&[acts, hc, hc0, w_hh, g], || {
            rnn::lstm_layer_backward(acts.cpu(), hc.cpu(), hc0.cpu(), w_hh.cpu(), g.cpu(), batch, seq, hidden)
        })
    }

    fn cumsum(&self, x: &Storage, v: AxisView, reverse: bool) -> Storage {
        run(&[x], || scan::cumsum(x.cpu(), v, reverse))
    }

    fn argsort(&self, x: &Storage, v: AxisView, descending: bool) -> Storage {
        run(&[x], || sort::argsort(x.cpu(), v, descending))
    }

    fn conv2d(&self, x: &Storage, weight: &Storage, spec: ConvSpec) -> Storage {
        run(&[x, weight], || conv::conv2d(x.cpu(), weight.cpu(), None, spec))
    }

    fn conv2d_bias(&self, x: &Storage, weight: &Storage, bias: &Storage, spec: ConvSpec) -> Storage {
        run(&[x, weight, bias], || conv::conv2d(x.cpu(), weight.cpu(), Some(bias.cpu()), spec))
    }

    fn conv2d_input_grad(&self, gy: &Storage, weight: &Storage, spec: ConvSpec) -> Storage {
        run(&[gy, weight], || conv::conv2d_input_grad(gy.cpu(), weight.cpu(), spec))
    }

    fn conv2d_weight_grad(&self, gy: &Storage, x: &Storage, spec: ConvSpec) -> Storage {
        run(&[gy, x], || conv::conv2d_weight_grad(gy.cpu(), x.cpu(), spec, false).map(|[gw, _]| gw))
    }

    fn conv2d_weight_bias_grad(&self, gy: &Storage, x: &Storage, spec: ConvSpec) -> [Storage; 2] {
        run_many(&[gy, x], || conv::conv2d_weight_grad(gy.cpu(), x.cpu(), spec, true))
    }

    fn pool2d(&self, x: &Storage, spec: PoolSpec) -> Storage {
        run(&[x], || pooling::pool2d(x.cpu(), spec))
    }

    fn pool2d_backward(&self, x: &Storage, gy: &Storage, spec: PoolSpec) -> Storage {
        run(&[x, gy], || pooling::pool2d_backward(x.cpu(), gy.cpu(), spec))
    }

    fn copy_strided(&self, x: &Storage, src: &Strided) -> Storage {
        run(&[x], || copy::copy_strided(x.cpu(), src))
    }

    fn copy_into(&self, out: &mut Storage, dst: &Strided, x: &Storage) {
        match poisoned(&[out, x]) {
            Some(e) => *out = Storage::Poisoned(e),
            None => copy::copy_into(out.cpu_mut(), dst, x.cpu()),
        }
    }

    fn gather(&self, op: &'static str, x: &Storage, v: AxisView, idx: (&Storage, &Strided), m: usize) -> Storage {
        run(&[x, idx.0], || gather::gather(op, x.cpu(), v, (idx.0.cpu(), idx.1), m))
    }

    fn scatter_add(&self, op: &'static str, g: &Storage, v: AxisView, idx: (&Storage, &Strided), m: usize) -> Storage {
        run(&[g, idx.0], || gather::scatter_add(op, g.cpu(), v, (idx.0.cpu(), idx.1), m))
    }

    fn cross_entropy(&self, logits: &Storage, labels: &Storage, rows: usize, classes: usize) -> Storage {
        run(&[logits, labels], || loss::cross_entropy(logits.cpu(), labels.cpu(), rows, classes))
    }

    fn cross_entropy_backward(
        &self,
        logits: &Storage,
        labels: &Storage,
        grad_rows: &Storage,
        rows: usize,
        classes: usize,
        grad_scale: Option<f32>,
    ) -> Storage {
        run(&[logits, labels, grad_rows], || {
            loss::cross_entropy_backward(logits.cpu(), labels.cpu(), grad_rows.cpu(), rows, classes, grad_scale)
        })
    }

    fn dropout(&self, x: &Storage, n: usize, p: f32, key: [u32; 2]) -> Storage {
        run(&[x], || elementwise::dropout(&x.cpu()[..n], p, key))
    }

    fn update(&self, rule: UpdateRule, param: &mut Storage, grad: &Storage, state: &mut [&mut Storage], n: usize) {
        let mut inputs: Vec<&Storage> = vec![param, grad];
        inputs.extend(state.iter().map(|s| &**s));
        if let Some(f) = poisoned(&inputs) {
            // A poisoned gradient poisons what it would have updated.
            *param = Storage::Poisoned(f.clone());
            for s in state.iter_mut() {
                **s = Storage::Poisoned(f.clone());
            }
            return;
        }
        let mut slots: Vec<&mut [f32]> = state.iter_mut().map(|s| &mut s.cpu_mut()[..n]).collect();
        optim::update(rule, &mut param.cpu_mut()[..n], &grad.cpu()[..n], &mut slots);
    }
}
