//! Softmax and log-softmax along an axis. The kernels subtract the row
//! maximum before exponentiating, so logits of ±1e4 give finite results.

use crate::Tensor;
use crate::backend::AxisView;
use crate::shape::Dim;

impl Tensor {
    fn softmax_raw(&self, axis: usize, log: bool) -> Tensor {
        let (outer, len, inner) = self.shape().split_at_axis(axis);
        let storage = self.device().backend().softmax(&self.read(), AxisView { outer, len, inner }, log);
        Tensor::from_storage(storage, self.shape().clone(), self.device().clone())
    }

    /// The gradient `self` of a (log-)softmax output `y` carried back to its
    /// input, by one kernel (not differentiable itself: no double backward).
    fn softmax_backward_raw(&self, y: &Tensor, axis: usize, log: bool) -> Tensor {
        let (outer, len, inner) = y.shape().split_at_axis(axis);
        let device = y.device();
        let storage = Tensor::with_storages(&[y, self], |s| {
            device.backend().softmax_backward(s[0], s[1], AxisView { outer, len, inner }, log)
        });
        Tensor::from_storage(storage, y.shape().clone(), device)
    }

    /// `exp(x) / Σ exp(x)` along `axis`.
    pub fn softmax(&self, axis: impl Dim) -> Tensor {
        let axis = axis.index(self.shape(), "softmax");
        self.softmax_raw(axis, false).record("softmax", &[self], move |c| {
            // dx = s ⊙ (g − Σ g⊙s), one kernel.
            vec![Some(c.grad.softmax_backward_raw(c.output(), axis, false))]
        })
    }

    /// `x − log Σ exp(x)` along `axis`, computed without forming the softmax.
    pub fn log_softmax(&self, axis: impl Dim) -> Tensor {
        let axis = axis.index(self.shape(), "log_softmax");
        self.softmax_raw(axis, true).record("log_softmax", &[self], move |c| {
            // dx = g − softmax(x) · Σ g, one kernel.
            vec![Some(c.grad.softmax_backward_raw(c.output(), axis, true))]
        })
    }
}
