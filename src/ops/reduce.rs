//! Reductions: sum, mean and max along an axis or over everything, argmax,
//! and `sum_to`, which folds a broadcast gradient back to its input's shape.

use crate::Tensor;
use crate::backend::{AxisView, ReduceOp};
use crate::shape::{Dim, Shape};

impl Tensor {
    /// Runs a reduce kernel along `axis` without recording anything.
    fn reduce_raw(&self, op: ReduceOp, axis: usize, keepdim: bool) -> Tensor {
        let (outer, len, inner) = self.shape().split_at_axis(axis);
        let storage = self.device().backend().reduce(op, &self.read(), AxisView { outer, len, inner });
        let shape = if keepdim { self.shape().with_dim(axis, 1) } else { self.shape().without_dim(axis) };
        Tensor::from_storage(storage, shape, self.device().clone())
    }

    /// A flat `[n]` view, for reductions over everything.
    fn flat(&self) -> Tensor {
        self.reshape([self.elem_count()])
    }

    /// Sum along `axis`; with `keepdim` the axis stays with length 1.
    pub fn sum_dim(&self, axis: impl Dim, keepdim: bool) -> Tensor {
        let axis = axis.index(self.shape(), "sum_dim");
        let input_shape = self.shape().clone();
        self.reduce_raw(ReduceOp::Sum, axis, keepdim).record("sum_dim", &[self], move |c| {
            let kept = c.grad.reshape(input_shape.with_dim(axis, 1));
            vec![Some(kept.broadcast_to(input_shape))]
        })
    }

    /// Sum of all elements, as a scalar.
    pub fn sum(&self) -> Tensor {
        self.flat().sum_dim(0, false)
    }

    /// Mean along `axis` (one reduction: the sum over the length, as
    /// PyTorch computes it; NaN for an empty axis).
    pub fn mean_dim(&self, axis: impl Dim, keepdim: bool) -> Tensor {
        let axis = axis.index(self.shape(), "mean_dim");
        let len = self.dims()[axis];
        let input_shape = self.shape().clone();
        self.reduce_raw(ReduceOp::Mean, axis, keepdim).record("mean_dim", &[self], move |c| {
            let kept = c.grad.mul_scalar(1.0 / len as f32).reshape(input_shape.with_dim(axis, 1));
            vec![Some(kept.broadcast_to(input_shape))]
        })
    }

    /// Mean of all elements, as a scalar.
    pub fn mean(&self) -> Tensor {
        self.flat().mean_dim(0, false)
    }

    /// Maximum along `axis`. The gradient goes to the first maximal element
    /// (the arg-max) only.
    pub fn max_dim(&self, axis: impl Dim, keepdim: bool) -> Tensor {
        let axis = axis.index(self.shape(), "max_dim");
        assert!(self.dims()[axis] > 0, "max_dim: axis {axis} of shape {} is empty", self.shape());
        self.reduce_raw(ReduceOp::Max, axis, keepdim).record("max_dim", &[self], move |c| {
            let x = c.input(0);
            let idx = x.reduce_raw(ReduceOp::ArgMax, axis, true);
            let g = c.grad.reshape(idx.shape().clone());
            vec![Some(g.scatter_add_raw("max_dim", axis, &idx, x.dims()[axis]))]
        })
    }

    /// Maximum of all elements, as a scalar. The gradient is shared evenly
    /// by the elements that equal it, as PyTorch's `max()` and `amax` share
    /// it (`max_dim`, like `torch.max(dim)`, gives it to the arg-max).
    pub fn max(&self) -> Tensor {
        let m = crate::no_grad(|| self.flat().max_dim(0, false));
        m.record("max", &[self], |c| vec![Some(evenly_to_ties(c))])
    }

    /// Minimum along `axis` (NaN wins, as in PyTorch). The gradient goes to
    /// the first minimal element (the arg-min) only.
    pub fn min_dim(&self, axis: impl Dim, keepdim: bool) -> Tensor {
        let axis = axis.index(self.shape(), "min_dim");
        assert!(self.dims()[axis] > 0, "min_dim: axis {axis} of shape {} is empty", self.shape());
        self.reduce_raw(ReduceOp::Min, axis, keepdim).record("min_dim", &[self], move |c| {
            let x = c.input(0);
            let idx = x.reduce_raw(ReduceOp::ArgMin, axis, true);
            let g = c.grad.reshape(idx.shape().clone());
            vec![Some(g.scatter_add_raw("min_dim", axis, &idx, x.dims()[axis]))]
        })
    }

    /// Minimum of all elements, as a scalar; its gradient shared evenly by
    /// the elements that equal it (see [`max`](Self::max)).
    pub fn min(&self) -> Tensor {
        let m = crate::no_grad(|| self.flat().min_dim(0, false));
        m.record("min", &[self], |c| vec![Some(evenly_to_ties(c))])
    }

    /// Index of the first minimum along `axis`, as f32 values (not
    /// differentiable).
    pub fn argmin(&self, axis: impl Dim, keepdim: bool) -> Tensor {
        let axis = axis.index(self.shape(), "argmin");
        assert!(self.dims()[axis] > 0, "argmin: axis {axis} of shape {} is empty", self.shape());
        self.reduce_raw(ReduceOp::ArgMin, axis, keepdim)
    }

    /// Variance along `axis` with Bessel's correction `correction` (PyTorch's
    /// default, 1, gives the unbiased estimate; 0 the population variance).
    pub fn var_dim(&self, axis: impl Dim, keepdim: bool, correction: usize) -> Tensor {
        let axis = axis.index(self.shape(), "var_dim");
        let n = self.dims()[axis];
        let centred = self - &self.mean_dim(axis, true);
        // A correction of n or more divides by 0, giving ∞ or NaN, as
        // PyTorch's max(0, n - correction) does.
        centred.sqr().sum_dim(axis, keepdim).mul_scalar(1.0 / (n as f32 - correction as f32).max(0.0))
    }

    /// Variance of all elements (unbiased, as PyTorch's default).
    pub fn var(&self) -> Tensor {
        self.flat().var_dim(0, false, 1)
    }

    /// Standard deviation along `axis` (see [`var_dim`](Self::var_dim)).
    /// Where it is 0 (all values equal) its gradient is 0, as PyTorch's,
    /// not the NaN of `sqrt`'s infinite slope times a zero deviation.
    pub fn std_dim(&self, axis: impl Dim, keepdim: bool, correction: usize) -> Tensor {
        let axis = axis.index(self.shape(), "std_dim");
        let std = crate::no_grad(|| self.var_dim(axis, keepdim, correction).sqrt());
        let divisor = (self.dims()[axis] as f32 - correction as f32).max(0.0);
        std.record("std_dim", &[self], move |c| {
            let x = c.input(0);
            let mut kept = x.dims().to_vec();
            kept[axis] = 1;
            let s = c.output().reshape(kept.clone());
            let g = c.grad.reshape(kept);
            // g / (divisor · std), 0 where the std is 0 (divided by 1 there,
            // so that no infinity is made on the way: anomaly detection
            // would report one).
            let flat = s.eq_scalar(0.0);
            let safe = flat.where_cond(&Tensor::ones([], &x.device()), &s.mul_scalar(divisor));
            let per = flat.where_cond(&Tensor::zeros([], &x.device()), &(&g / &safe));
            vec![Some(&(x - &x.mean_dim(axis, true)) * &per)]
        })
    }

    /// Standard deviation of all elements (unbiased, as PyTorch's default).
    pub fn std(&self) -> Tensor {
        self.flat().std_dim(0, false, 1).reshape(Vec::<usize>::new())
    }

    /// Index of the first maximum along `axis`, as f32 values (not
    /// differentiable).
    pub fn argmax(&self, axis: impl Dim, keepdim: bool) -> Tensor {
        let axis = axis.index(self.shape(), "argmax");
        assert!(self.dims()[axis] > 0, "argmax: axis {axis} of shape {} is empty", self.shape());
        self.reduce_raw(ReduceOp::ArgMax, axis, keepdim)
    }

    /// How many rows along the last axis have their argmax equal to
    /// `labels` (integer class indices as f32, shaped as `self` without
    /// its last axis): a classifier's correct predictions, as a scalar
    /// (not differentiable). It is `self.argmax(-1, false).eq(labels).sum()`,
    /// the same count, in one kernel on a GPU for batches of up to 16,384
    /// rows of up to 32 classes (the metric [`crate::train::Metric::Accuracy`]
    /// computes at every training step).
    pub fn argmax_hits(&self, labels: &Tensor) -> Tensor {
        self.argmax_hits_onto(labels, None)
    }

    /// [`argmax_hits`](Self::argmax_hits) plus the scalar `base` (a running
    /// total, added in the same kernel on a GPU).
    pub(crate) fn argmax_hits_onto(&self, labels: &Tensor, base: Option<&Tensor>) -> Tensor {
        let rank = self.rank();
        assert!(
            rank >= 1 && self.dims()[rank - 1] > 0 && labels.dims() == &self.dims()[..rank - 1],
            "argmax_hits: expected [.., classes] scores with classes > 0 and labels of their leading dims, got {} and {}",
            self.shape(),
            labels.shape()
        );
        super::same_device("argmax_hits", self, labels);
        let len = self.dims()[rank - 1];
        let rows = self.elem_count() / len;
        let device = self.device();
        let mut inputs = vec![self, labels];
        if let Some(base) = base {
            assert!(base.elem_count() == 1, "argmax_hits: the base is a scalar, got {}", base.shape());
            super::same_device("argmax_hits", self, base);
            inputs.push(base);
        }
        let storage =
            Tensor::with_storages(&inputs, |s| device.backend().argmax_hits(s[0], s[1], s.get(2).copied(), rows, len));
        Tensor::from_storage(storage, Shape::from(Vec::<usize>::new()), device)
    }

    /// Sums a gradient of a broadcast result down to `target`, the shape of
    /// the input that was broadcast.
    pub(crate) fn sum_to(&self, target: &Shape) -> Tensor {
        if self.shape() == target {
            return self.clone();
        }
        let lead = self.rank() - target.rank();
        let mut t = self.clone();
        if lead > 0 {
            let rest = &self.dims()[lead..];
            let mut dims = vec![self.dims()[..lead].iter().product()];
            dims.extend_from_slice(rest);
            t = t.reshape(dims).sum_dim(0, false);
        }
        for (axis, &d) in target.dims().iter().enumerate() {
            if d == 1 && t.dims()[axis] != 1 {
                t = t.sum_dim(axis, true);
            }
        }
        t
    }
}

/// The gradient of a whole-tensor max or min: the output's gradient shared
/// evenly by the elements equal to it (NaN counting as equal to a NaN
/// result), as PyTorch's `evenly_distribute_backward`.
fn evenly_to_ties(c: &crate::autograd::BackwardCtx) -> Tensor {
    let x = c.input(0);
    let v = c.output();
    let nan = |t: &Tensor| t.ne(t);
    let ties = &x.eq(v) + &(&nan(x) * &nan(v));
    &ties * &(c.grad / &ties.sum())
}
