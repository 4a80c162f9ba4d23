//! Losses, each the mean over the batch as in PyTorch and Keras: mean
//! squared error, binary cross-entropy on probabilities, and cross-entropy
//! from logits with integer class labels (Keras's
//! `sparse_categorical_crossentropy(from_logits=True)`), fused with the
//! log-softmax so it never forms a probability that could underflow.

use super::same_device;
use crate::Tensor;
use crate::backend::UnaryOp;

/// PyTorch clamps BCE's logarithms at -100 so a probability of exactly 0 or
/// 1 gives a large finite loss instead of infinity.
const BCE_LOG_FLOOR: f32 = -100.0;
/// And bounds the denominator of BCE's gradient, p·(1-p), away from 0.
const BCE_GRAD_EPS: f32 = 1e-12;

impl Tensor {
    /// Mean squared error against `target` (same shape).
    pub fn mse_loss(&self, target: &Tensor) -> Tensor {
        assert!(
            self.shape() == target.shape(),
            "mse_loss: prediction shape {} does not match target shape {}",
            self.shape(),
            target.shape()
        );
        (self - target).sqr().mean()
    }

    /// Binary cross-entropy of probabilities `self` against targets in
    /// `[0, 1]` (same shape): `-mean(t·log p + (1-t)·log(1-p))`, with the logs
    /// clamped at -100 as PyTorch does, so `p` of exactly 0 or 1 stays finite.
    pub fn binary_cross_entropy(&self, target: &Tensor) -> Tensor {
        assert!(
            self.shape() == target.shape(),
            "binary_cross_entropy: prediction shape {} does not match target shape {}",
            self.shape(),
            target.shape()
        );
        same_device("binary_cross_entropy", self, target);
        let n = self.elem_count() as f32;
        let clamped_log = |x: &Tensor| x.map_raw(UnaryOp::Log).map_raw(UnaryOp::MaxScalar(BCE_LOG_FLOOR));
        let (log_p, log_q) = (clamped_log(self), clamped_log(&(1.0 - &self.detach())));
        let t = target.detach();
        let per_elem = &(&t * &log_p) + &(&(1.0 - &t) * &log_q);
        let loss = crate::no_grad(|| per_elem.mean().neg());
        loss.record("binary_cross_entropy", &[self, target], move |c| {
            let (p, t) = (c.input(0), c.input(1));
            let g = c.grad.mul_scalar(1.0 / n);
            vec![
                // d/dp = (p - t) / (p (1 - p))
                c.needs[0].then(|| {
                    let denom = (p * &(1.0 - p)).maximum_scalar(BCE_GRAD_EPS);
                    &(&(p - t) / &denom) * &g
                }),
                // d/dt = log(1-p) - log(p)
                c.needs[1].then(|| &(&log_q - &log_p) * &g),
            ]
        })
    }

    /// Cross-entropy of `[batch, classes]` logits against `[batch]` integer
    /// class labels, averaged over the batch.
    ///
    /// A label that is not an integer in `0..classes` poisons the loss and
    /// everything computed from it, on every device: reading it returns
    /// [`crate::Error::IndexOutOfRange`].
    pub fn cross_entropy(&self, labels: &Tensor) -> Tensor {
        self.cross_entropy_per_sample(labels).mean()
    }

    /// The per-sample cross-entropies (`reduction='none'`), shape `[batch]`.
    pub fn cross_entropy_per_sample(&self, labels: &Tensor) -> Tensor {
        assert!(
            self.rank() == 2 && labels.rank() == 1 && labels.dims()[0] == self.dims()[0],
            "cross_entropy: expected [batch, classes] logits and [batch] labels, got {} and {}",
            self.shape(),
            labels.shape()
        );
        same_device("cross_entropy", self, labels);
        let (rows, classes) = (self.dims()[0], self.dims()[1]);
        let device = self.device();
        let storage = device.backend().cross_entropy(&self.read(), &labels.read(), rows, classes);
        let out = Tensor::from_storage(storage, [rows].into(), device);
        let labels = labels.detach();
        out.record("cross_entropy", &[self], move |c| {
            let x = c.input(0);
            let device = x.device();
            let storage =
                device.backend().cross_entropy_backward(&x.read(), &labels.read(), &c.grad.read(), rows, classes);
            vec![Some(Tensor::from_storage(storage, x.shape().clone(), device))]
        })
    }
}
