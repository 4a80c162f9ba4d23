//! Ordering along an axis: running sums (`cumsum`), sorting (`argsort`,
//! `sort`) and the largest or smallest `k` (`topk`).
//!
//! Sorts are stable and order as PyTorch does: `-∞ … -0 = +0 … +∞`, NaN
//! last ascending and first descending; equal elements keep their order.
//! Values come from `gather`, so gradients flow to the elements picked.

use crate::Tensor;
use crate::backend::AxisView;
use crate::shape::Dim;

impl Tensor {
    fn axis_view(&self, axis: usize) -> AxisView {
        let (outer, len, inner) = self.shape().split_at_axis(axis);
        AxisView { outer, len, inner }
    }

    fn cumsum_raw(&self, axis: usize, reverse: bool) -> Tensor {
        let device = self.device();
        let storage = device.backend().cumsum(&self.read(), self.axis_view(axis), reverse);
        Tensor::from_storage(storage, self.shape().clone(), device)
    }

    /// Inclusive running sums along `axis`: `out[i] = x[0] + … + x[i]`.
    pub fn cumsum(&self, axis: impl Dim) -> Tensor {
        let axis = axis.index(self.shape(), "cumsum");
        // Each input reaches every output at or after it: the gradient is
        // the running sum of the output gradient from the end.
        self.cumsum_raw(axis, false).record("cumsum", &[self], move |c| vec![Some(c.grad.cumsum_raw(axis, true))])
    }

    /// The indices (integer-valued f32, as every index in wgrad) that sort
    /// `self` along `axis`, stably (not differentiable).
    pub fn argsort(&self, axis: impl Dim, descending: bool) -> Tensor {
        let axis = axis.index(self.shape(), "argsort");
        let device = self.device();
        let storage = device.backend().argsort(&self.read(), self.axis_view(axis), descending);
        Tensor::from_storage(storage, self.shape().clone(), device)
    }

    /// `self` sorted along `axis`, and the indices that sort it.
    pub fn sort(&self, axis: impl Dim, descending: bool) -> (Tensor, Tensor) {
        let axis = axis.index(self.shape(), "sort");
        let indices = self.argsort(axis, descending);
        (self.gather(axis, &indices), indices)
    }

    /// The `k` largest (or, with `largest` false, smallest) elements along
    /// `axis`, in order, and their indices: PyTorch's `topk`.
    pub fn topk(&self, k: usize, axis: impl Dim, largest: bool) -> (Tensor, Tensor) {
        let axis = axis.index(self.shape(), "topk");
        let len = self.dims()[axis];
        assert!(k <= len, "topk: k = {k} is more than the {len} elements along axis {axis} of shape {}", self.shape());
        let indices = self.argsort(axis, largest).narrow(axis, 0, k);
        (self.gather(axis, &indices), indices)
    }
}
