//! What training minimises and reports: the [`Loss`] and the [`Metric`]s,
//! and their running sums over an epoch, kept on the model's device and
//! read back only now and then.

use crate::{CrossEntropyOptions, Device, Result, Tensor, no_grad};
use std::sync::Arc;

/// The loss `fit` minimises, between the model's output and the targets.
#[derive(Clone)]
pub enum Loss {
    /// Cross-entropy of logits against integer class labels (the default
    /// for classification datasets).
    CrossEntropy,
    /// Cross-entropy with label smoothing, per-class weights and an
    /// ignored label (see [`CrossEntropyOptions`]); logits may be
    /// `[batch, .., classes]` against `[batch, ..]` targets (a language
    /// model's). With an `ignore_index`, the loss `fit` and `evaluate`
    /// report is the mean over the targets kept, as PyTorch computes it
    /// over a whole set, not a mean of per-batch means.
    CrossEntropyWith {
        /// The smoothing ε.
        label_smoothing: f32,
        /// One weight per class, if any.
        weight: Option<Vec<f32>>,
        /// Targets with this value count for nothing (padding).
        ignore_index: Option<i64>,
    },
    /// Mean squared error (the default for regression datasets).
    Mse,
    /// Mean absolute error.
    L1,
    /// Huber loss with this delta.
    Huber(f32),
    /// Binary cross-entropy of logits against targets in `[0, 1]`.
    BceWithLogits,
    /// Any differentiable function of (output, target) to a scalar.
    Custom(LossFn),
}

/// A loss function of (output, target).
pub type LossFn = Arc<dyn Fn(&Tensor, &Tensor) -> Tensor + Send + Sync>;

impl Loss {
    /// The loss of `out` against `target`, a scalar. (Class weights are
    /// uploaded to `out`'s device on each call; `fit` and `evaluate` upload
    /// them once.)
    pub fn compute(&self, out: &Tensor, target: &Tensor) -> Tensor {
        let weight = self.class_weights(&out.device());
        self.compute_with(out, target, weight.as_ref())
    }

    /// The class weights of [`Loss::CrossEntropyWith`] as a tensor on
    /// `device`, if it has any.
    fn class_weights(&self, device: &Device) -> Option<Tensor> {
        match self {
            Loss::CrossEntropyWith { weight: Some(w), .. } => {
                Some(Tensor::from_slice(w, [w.len()], device).expect("a vector"))
            }
            _ => None,
        }
    }

    /// As [`compute`](Self::compute), with the class weights already on the device.
    fn compute_with(&self, out: &Tensor, target: &Tensor, weight: Option<&Tensor>) -> Tensor {
        // The targets of a single-output regression come as [batch]; a
        // model's output as [batch, 1].
        let shaped = |t: &Tensor| if t.shape() != out.shape() { t.reshape(out.shape().clone()) } else { t.clone() };
        match self {
            Loss::CrossEntropy => out.cross_entropy(target),
            Loss::CrossEntropyWith { label_smoothing, ignore_index, .. } => out.cross_entropy_with(
                target,
                CrossEntropyOptions { label_smoothing: *label_smoothing, weight, ignore_index: *ignore_index },
            ),
            Loss::Mse => out.mse_loss(&shaped(target)),
            Loss::L1 => out.l1_loss(&shaped(target)),
            Loss::Huber(delta) => out.huber_loss(&shaped(target), *delta),
            Loss::BceWithLogits => out.binary_cross_entropy_with_logits(&shaped(target)),
            Loss::Custom(f) => f(out, target),
        }
    }
}

/// A [`Loss`] made ready for one device: its class weights uploaded once,
/// not at every batch.
pub(super) struct Objective<'a> {
    loss: &'a Loss,
    weight: Option<Tensor>,
}

impl<'a> Objective<'a> {
    pub fn new(loss: &'a Loss, device: &Device) -> Self {
        Objective { loss, weight: loss.class_weights(device) }
    }

    /// The loss of `out` against `target` (on the device it was made for).
    pub fn compute(&self, out: &Tensor, target: &Tensor) -> Tensor {
        self.loss.compute_with(out, target, self.weight.as_ref())
    }

    /// What the batch's loss is a mean over, on the device, when that is not
    /// its rows: the targets kept by an ignore index (without class weights;
    /// with them the loss is already a weighted mean and counts by rows).
    pub fn kept(&self, target: &Tensor) -> Option<Tensor> {
        match self.loss {
            Loss::CrossEntropyWith { ignore_index: Some(i), weight: None, .. } => {
                Some(no_grad(|| target.ne_scalar(*i as f32).sum()))
            }
            _ => None,
        }
    }
}

/// A number reported per epoch besides the loss (Keras's `metrics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// The fraction of rows whose arg-max is the label.
    Accuracy,
    /// The fraction of rows whose label is among the `k` largest outputs.
    TopK(usize),
    /// Mean absolute error.
    Mae,
    /// Mean squared error.
    Mse,
}

impl Metric {
    /// The name it is reported under (`accuracy`, `top5_accuracy`, `mae`,
    /// `mse`; with `val_` in front for the validation set).
    pub fn name(&self) -> String {
        match self {
            Metric::Accuracy => "accuracy".into(),
            Metric::TopK(k) => format!("top{k}_accuracy"),
            Metric::Mae => "mae".into(),
            Metric::Mse => "mse".into(),
        }
    }

    /// `target` as one label per row of `out` (shaped as its leading dims,
    /// so `[N, 1]` labels of `[N, C]` outputs become `[N]`), when it holds
    /// one per row.
    fn labels_of(out: &Tensor, target: &Tensor) -> Option<Tensor> {
        let rank = out.rank();
        let lead = out.dims().get(..rank.checked_sub(1)?)?;
        if target.dims() == lead {
            return Some(target.clone());
        }
        (target.elem_count() == lead.iter().product::<usize>()).then(|| target.reshape(lead.to_vec()))
    }

    /// `total` plus the metric summed over the rows of a batch (a scalar
    /// tensor), and how many predictions (or elements) the batch's sum is
    /// over: a row each, or for `[batch, .., classes]` outputs one per
    /// position.
    fn add_batch(&self, total: &Tensor, out: &Tensor, target: &Tensor) -> (Tensor, usize) {
        match (self, Self::labels_of(out, target)) {
            // The argmax, the comparison, the sum and the add: one kernel
            // on a GPU.
            (Metric::Accuracy, Some(labels)) => (out.argmax_hits_onto(&labels, Some(total)), labels.elem_count()),
            _ => {
                let (sum, count) = self.batch_sum(out, target);
                (total + &sum, count)
            }
        }
    }

    /// The metric summed over the rows of a batch (a scalar tensor), and how
    /// many predictions (or elements) it is a sum over.
    fn batch_sum(&self, out: &Tensor, target: &Tensor) -> (Tensor, usize) {
        let rows = target.dims().first().copied().unwrap_or(1);
        match self {
            // Labels that are not one per row (`add_batch` takes the others).
            Metric::Accuracy => (out.argmax(-1, false).eq(target).sum(), rows),
            Metric::TopK(k) => {
                let labels = Self::labels_of(out, target).unwrap_or_else(|| target.clone());
                let classes = out.dims()[out.rank() - 1];
                // The indices of the k largest, without gathering their values.
                let top = out.argsort(-1, true).narrow(-1, 0, (*k).min(classes));
                (top.eq(&labels.unsqueeze(-1)).sum(), labels.elem_count())
            }
            Metric::Mae | Metric::Mse => {
                let target =
                    if target.shape() != out.shape() { target.reshape(out.shape().clone()) } else { target.clone() };
                let d = out - &target;
                let e = if *self == Metric::Mae { d.abs() } else { d.sqr() };
                (e.sum(), out.elem_count())
            }
        }
    }
}

/// A loss and metrics over some data.
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    /// The mean loss.
    pub loss: f32,
    /// Each metric by name, in the order they were asked for.
    pub values: Vec<(String, f32)>,
}

impl Metrics {
    /// The metric named `name`, if it was measured.
    pub fn get(&self, name: &str) -> Option<f32> {
        self.values.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }

    /// The accuracy (NaN if it was not measured).
    pub fn accuracy(&self) -> f32 {
        self.get("accuracy").unwrap_or(f32::NAN)
    }
}

/// Device-side running sums of the loss and each metric.
pub(super) struct Running<'a> {
    metrics: &'a [Metric],
    loss_sum: Tensor,
    /// What the loss is a mean over, summed on the device (the targets an
    /// ignore index keeps), or `None`: the rows seen.
    loss_count: Option<Tensor>,
    sums: Vec<Tensor>,
    counts: Vec<usize>,
    seen: usize,
}

impl<'a> Running<'a> {
    pub fn new(metrics: &'a [Metric], device: &Device) -> Self {
        let zero = || Tensor::scalar(0.0, device);
        Running {
            metrics,
            loss_sum: zero(),
            loss_count: None,
            sums: metrics.iter().map(|_| zero()).collect(),
            counts: vec![0; metrics.len()],
            seen: 0,
        }
    }

    /// Adds a batch: its outputs, targets, mean loss and, if the loss is
    /// not a mean over rows, what it is a mean over ([`Objective::kept`]).
    pub fn add(&mut self, out: &Tensor, target: &Tensor, loss: &Tensor, kept: Option<Tensor>) {
        no_grad(|| {
            let n = target.dims().first().copied().unwrap_or(1);
            match kept {
                Some(k) => {
                    // A batch whose targets are all ignored has a NaN mean
                    // loss and counts for nothing (not NaN · 0).
                    let part = k.gt_scalar(0.0).where_cond(&(&loss.detach() * &k), &Tensor::zeros([], &k.device()));
                    self.loss_sum = &self.loss_sum + &part;
                    self.loss_count = Some(match &self.loss_count {
                        Some(c) => c + &k,
                        None => k,
                    });
                }
                None => self.loss_sum = &self.loss_sum + &loss.detach().mul_scalar(n as f32),
            }
            for (i, m) in self.metrics.iter().enumerate() {
                let (total, count) = m.add_batch(&self.sums[i], &out.detach(), target);
                self.sums[i] = total;
                self.counts[i] += count;
            }
            self.seen += n;
        });
    }

    pub fn seen(&self) -> usize {
        self.seen
    }

    /// Reads the sums back (waiting for the device), all in one transfer.
    pub fn read(&self, reduce: super::Reduce) -> Result<Metrics> {
        let mut all = no_grad(|| {
            let parts: Vec<Tensor> = [&self.loss_sum]
                .into_iter()
                .chain(&self.sums)
                .chain(&self.loss_count)
                .map(|t| t.reshape([1]))
                .collect();
            Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0)
        })
        .to_vec()?;
        let mut counts: Vec<f32> = self.counts.iter().map(|&c| c as f32).collect();
        let mut seen = self.seen as f32;
        if let Some(reduce) = reduce {
            // One all-reduce of everything: [sums…, counts…, seen, has count].
            let had_count = self.loss_count.is_some();
            if !had_count {
                all.push(0.0);
            }
            let sums = all.len();
            all.extend(&counts);
            all.push(seen);
            all.push(f32::from(had_count));
            reduce(&mut all);
            let has_count = all.pop().expect("pushed above") > 0.0;
            seen = all.pop().expect("pushed above");
            counts = all.split_off(sums);
            if !has_count {
                all.pop();
            }
        }
        // The loss's own count follows the metrics' sums when there is one.
        let loss_count = if all.len() > 1 + self.metrics.len() { all[all.len() - 1] } else { seen.max(1.0) };
        let values = self
            .metrics
            .iter()
            .zip(&all[1..])
            .zip(&counts)
            .map(|((m, &sum), &count)| (m.name(), sum / count.max(1.0)))
            .collect();
        Ok(Metrics { loss: all[0] / loss_count, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits_and_labels() -> (Tensor, Tensor) {
        let dev = Device::Cpu;
        let out = Tensor::new([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.5, 0.0], [0.0, -2.0, 1.0]], &dev).unwrap();
        (out, Tensor::new([0.0, 1.0, 2.0, 2.0], &dev).unwrap())
    }

    #[test]
    fn an_objective_uploads_the_class_weights_once_and_computes_the_loss() {
        let (out, y) = logits_and_labels();
        let loss =
            Loss::CrossEntropyWith { label_smoothing: 0.1, weight: Some(vec![1.0, 2.0, 0.5]), ignore_index: None };
        let objective = Objective::new(&loss, &out.device());
        let weight = objective.weight.as_ref().expect("the weights, on the device").id();
        let first = objective.compute(&out, &y).item().unwrap();
        assert_eq!(first, loss.compute(&out, &y).item().unwrap());
        assert_eq!(objective.compute(&out, &y).item().unwrap(), first);
        assert_eq!(objective.weight.as_ref().unwrap().id(), weight, "the weights were uploaded again");
        assert!(Objective::new(&Loss::CrossEntropy, &out.device()).weight.is_none());
    }

    #[test]
    fn a_batch_whose_targets_are_all_ignored_counts_for_nothing() {
        let dev = Device::Cpu;
        let loss = Loss::CrossEntropyWith { label_smoothing: 0.0, weight: None, ignore_index: Some(-1) };
        let objective = Objective::new(&loss, &dev);
        let out = Tensor::new([[1.0, 0.0], [0.0, 1.0]], &dev).unwrap();
        let mut running = Running::new(&[], &dev);
        for y in [[1.0, -1.0], [-1.0, -1.0]] {
            let y = Tensor::new(y, &dev).unwrap();
            let l = objective.compute(&out, &y);
            running.add(&out, &y, &l, objective.kept(&y));
        }
        // The first batch's one kept target; the second's NaN mean is not summed.
        let expected = (1.0f32.exp() + 1.0).ln();
        assert!((running.read(None).unwrap().loss - expected).abs() < 1e-6);
    }

    #[test]
    fn running_sums_read_back_in_one_go() {
        let (out, y) = logits_and_labels();
        let metrics = [Metric::Accuracy, Metric::TopK(2), Metric::TopK(5)];
        let mut running = Running::new(&metrics, &Device::Cpu);
        let loss = out.cross_entropy(&y);
        running.add(&out, &y, &loss, None);
        running.add(&out, &y, &loss, None);
        let m = running.read(None).unwrap();
        // Arg-max right for rows 0 and 3; the label among the top 2 for 0, 1 and 3.
        assert_eq!(m.values, [("accuracy".into(), 0.5), ("top2_accuracy".into(), 0.75), ("top5_accuracy".into(), 1.0)]);
        assert!((m.loss - loss.item().unwrap()).abs() < 1e-6);
    }
}
