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

/// Options of [`Tensor::cross_entropy_with`], PyTorch's
/// `CrossEntropyLoss(weight, ignore_index, label_smoothing)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CrossEntropyOptions<'a> {
    /// Mixes the one-hot target with the uniform distribution: the target
    /// is `1 - ε + ε/C` for the label and `ε/C` for every other class.
    pub label_smoothing: f32,
    /// A `[classes]` weight per class; the mean is then weighted, divided
    /// by the sum of the labels' weights, as in PyTorch.
    pub weight: Option<&'a Tensor>,
    /// Targets equal to this contribute nothing, to the loss or to the
    /// count it is averaged over (PyTorch's `ignore_index`, whose default
    /// is -100; here `None`, no target ignored). Padding of a batch of
    /// sequences is the usual use.
    pub ignore_index: Option<i64>,
}

/// `x` where `kept` is 1, and 0 (not `x · 0`, which is NaN for an infinite
/// `x`) where it is 0.
fn only_kept(x: &Tensor, kept: &Tensor) -> Tensor {
    kept.where_cond(x, &Tensor::zeros([], &x.device()))
}

impl Tensor {
    /// Mean absolute error against `target` (same shape).
    pub fn l1_loss(&self, target: &Tensor) -> Tensor {
        assert!(
            self.shape() == target.shape(),
            "l1_loss: prediction shape {} does not match target shape {}",
            self.shape(),
            target.shape()
        );
        (self - target).abs().mean()
    }

    /// Huber loss against `target` (same shape), mean over elements:
    /// `½d²` where `|d| < delta`, else `delta·(|d| - ½delta)`, as PyTorch's
    /// `HuberLoss`.
    pub fn huber_loss(&self, target: &Tensor, delta: f32) -> Tensor {
        assert!(
            self.shape() == target.shape(),
            "huber_loss: prediction shape {} does not match target shape {}",
            self.shape(),
            target.shape()
        );
        assert!(delta > 0.0, "huber_loss: delta must be positive, got {delta}");
        let a = (self - target).abs();
        // |d| split at delta: the quadratic part and the linear rest.
        let quad = a.minimum_scalar(delta);
        let lin = &a - &quad;
        (&quad.sqr() * 0.5 + &lin * delta).mean()
    }

    /// Smooth L1 loss against `target` (same shape), as PyTorch's
    /// `SmoothL1Loss(beta)`: the Huber loss divided by `beta` (L1 at 0).
    pub fn smooth_l1_loss(&self, target: &Tensor, beta: f32) -> Tensor {
        assert!(beta >= 0.0, "smooth_l1_loss: beta must not be negative, got {beta}");
        if beta == 0.0 { self.l1_loss(target) } else { self.huber_loss(target, beta) / beta }
    }

    /// Binary cross-entropy of logits `self` against targets in `[0, 1]`
    /// (same shape), mean over elements: `max(x, 0) - x·t + log(1 +
    /// e^(-|x|))`, which never exponentiates a positive number (PyTorch's
    /// `BCEWithLogitsLoss`).
    pub fn binary_cross_entropy_with_logits(&self, target: &Tensor) -> Tensor {
        assert!(
            self.shape() == target.shape(),
            "binary_cross_entropy_with_logits: logits shape {} does not match target shape {}",
            self.shape(),
            target.shape()
        );
        // One node: the composed graph's gradient is wrong at x = 0, where
        // relu's and |x|'s derivatives are both taken as 0 (it gives -t, not
        // σ(0) - t = 0.5 - t).
        let loss = crate::no_grad(|| {
            let softplus = (1.0 + &self.abs().neg().exp()).log();
            (&(&self.relu() - &(self * target)) + &softplus).mean()
        });
        let n = self.elem_count().max(1) as f32;
        loss.record("binary_cross_entropy_with_logits", &[self, target], move |c| {
            let (x, t) = (c.input(0), c.input(1));
            let scale = c.grad.mul_scalar(1.0 / n);
            vec![c.needs[0].then(|| &(&x.sigmoid() - t) * &scale), c.needs[1].then(|| &x.neg() * &scale)]
        })
    }

    /// Cross-entropy of `[batch, classes]` logits against `[batch]` labels
    /// with label smoothing, class weights and an ignored label (see
    /// [`CrossEntropyOptions`]); with the defaults it is
    /// [`cross_entropy`](Self::cross_entropy). Logits of more axes,
    /// `[.., classes]` against labels `[..]` (a language model's
    /// `[batch, seq, vocab]` against `[batch, seq]`), are flattened to rows
    /// first: the classes are the *last* axis, as after PyTorch's usual
    /// `logits.view(-1, vocab)`, not PyTorch's axis 1.
    pub fn cross_entropy_with(&self, labels: &Tensor, options: CrossEntropyOptions) -> Tensor {
        let CrossEntropyOptions { label_smoothing: eps, weight, ignore_index } = options;
        // [.., classes] logits against [..] labels: flattened to rows.
        if self.rank() > 2 {
            let classes = self.dims()[self.rank() - 1];
            assert!(
                labels.dims() == &self.dims()[..self.rank() - 1],
                "cross_entropy: expected [.., classes] logits and [..] labels, got {} and {}",
                self.shape(),
                labels.shape()
            );
            let rows = labels.elem_count();
            return self.reshape([rows, classes]).cross_entropy_with(&labels.reshape([rows]), options);
        }
        if eps == 0.0 && weight.is_none() && ignore_index.is_none() {
            return self.cross_entropy(labels);
        }
        assert!(
            self.rank() == 2 && labels.rank() == 1 && labels.dims()[0] == self.dims()[0],
            "cross_entropy: expected [batch, classes] logits and [batch] labels, got {} and {}",
            self.shape(),
            labels.shape()
        );
        assert!((0.0..=1.0).contains(&eps), "cross_entropy: label_smoothing {eps} is not in [0, 1]");
        let classes = self.dims()[1];
        // Ignored rows: a valid label (0) in their place, and a weight of 0.
        let (labels, kept) = match ignore_index {
            Some(ignored) => {
                let kept = labels.detach().ne_scalar(ignored as f32);
                (kept.where_cond(&labels.detach(), &Tensor::zeros([], &self.device())), Some(kept))
            }
            None => (labels.clone(), None),
        };
        let labels = &labels;
        if eps == 0.0 && weight.is_none() {
            // The fused per-row kernel, masked: Σ kept · nll / Σ kept.
            let kept = kept.expect("an ignore index");
            return only_kept(&self.cross_entropy_per_sample(labels), &kept).sum() / &kept.sum();
        }
        let logp = self.log_softmax(1);
        let nll = logp.gather(1, &labels.unsqueeze(1)).squeeze(1).neg();
        let (mut w_rows, w_classes) = match weight {
            Some(w) => {
                assert!(w.dims() == [classes], "cross_entropy: weight of shape {} for {classes} classes", w.shape());
                (w.index_select(0, labels), Some(w))
            }
            None => (Tensor::ones([labels.dims()[0]], &self.device()), None),
        };
        if let Some(kept) = &kept {
            w_rows = only_kept(&w_rows, kept);
        }
        let mut per_row = &nll * &w_rows;
        if let Some(kept) = &kept {
            // An ignored row's nll may be ∞ (a -∞ logit at its stand-in
            // label 0): selected away, not multiplied by a zero weight.
            per_row = only_kept(&per_row, kept);
        }
        if eps > 0.0 {
            // The uniform part: -Σ_c w_c · log p_c / C, for the rows kept.
            let weighted = match w_classes {
                Some(w) => &logp * w,
                None => logp.clone(),
            };
            let mut smooth = weighted.sum_dim(1, false).neg() / classes as f32;
            if let Some(kept) = &kept {
                smooth = only_kept(&smooth, kept);
            }
            per_row = &per_row * (1.0 - eps) + &smooth * eps;
        }
        per_row.sum() / &w_rows.sum()
    }

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
        // One node: its backward hands the mean's scalar gradient and 1/rows
        // to the per-row kernel, instead of scaling it and expanding it to
        // a row each (two dispatches on a GPU) first.
        self.check_cross_entropy(labels);
        let (rows, classes) = (self.dims()[0], self.dims()[1]);
        let device = self.device();
        let storage =
            Tensor::with_storages(&[self, labels], |s| device.backend().cross_entropy_mean(s[0], s[1], rows, classes));
        let labels = labels.detach();
        let loss = Tensor::from_storage(storage, crate::Shape::from(Vec::<usize>::new()), device);
        loss.record("cross_entropy", &[self, &labels], move |c| {
            // The labels are an input (never differentiated): modified in
            // place after the forward, the backward refuses.
            let (x, labels) = (c.input(0), c.input(1));
            let device = x.device();
            let storage = Tensor::with_storages(&[x, labels, c.grad], |s| {
                device.backend().cross_entropy_backward(s[0], s[1], s[2], rows, classes, Some(1.0 / rows as f32))
            });
            vec![Some(Tensor::from_storage(storage, x.shape().clone(), device)), None]
        })
    }

    /// The per-sample cross-entropies (`reduction='none'`), shape `[batch]`.
    pub fn cross_entropy_per_sample(&self, labels: &Tensor) -> Tensor {
        self.check_cross_entropy(labels);
        let (rows, classes) = (self.dims()[0], self.dims()[1]);
        let device = self.device();
        let storage =
            Tensor::with_storages(&[self, labels], |s| device.backend().cross_entropy(s[0], s[1], rows, classes));
        let labels = labels.detach();
        let out = Tensor::from_storage(storage, [rows].into(), device);
        out.record("cross_entropy", &[self, &labels], move |c| {
            // The labels are an input (never differentiated): modified in
            // place after the forward, the backward refuses.
            let (x, labels) = (c.input(0), c.input(1));
            let device = x.device();
            let storage = Tensor::with_storages(&[x, labels, c.grad], |s| {
                device.backend().cross_entropy_backward(s[0], s[1], s[2], rows, classes, None)
            });
            vec![Some(Tensor::from_storage(storage, x.shape().clone(), device)), None]
        })
    }

    /// Panics unless `self` is `[batch, classes]` logits and `labels` the
    /// `[batch]` labels on the same device.
    fn check_cross_entropy(&self, labels: &Tensor) {
        assert!(
            self.rank() == 2 && labels.rank() == 1 && labels.dims()[0] == self.dims()[0],
            "cross_entropy: expected [batch, classes] logits and [batch] labels, got {} and {}",
            self.shape(),
            labels.shape()
        );
        same_device("cross_entropy", self, labels);
    }
}
