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
    /// model's). With an `ignore_index` or class weights, the loss `fit`
    /// and `evaluate` report is the mean over the targets kept, each
    /// weighted by its class's weight, as PyTorch computes it over a whole
    /// set (`Σ wᵢ·lᵢ / Σ wᵢ`), not a mean of per-batch means: it does not
    /// depend on the batch size, and a batch of padding alone counts for
    /// nothing. The accuracy metrics leave ignored targets out too.
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
    /// its rows: the targets an ignore index keeps, each counted with its
    /// class's weight where there are class weights (the denominator of
    /// PyTorch's weighted mean, `Σ w[targetᵢ]` over the kept targets).
    pub fn kept(&self, target: &Tensor) -> Option<Tensor> {
        let Loss::CrossEntropyWith { ignore_index, .. } = self.loss else {
            return None;
        };
        let keep = |t: &Tensor| ignore_index.map(|i| t.ne_scalar(i as f32));
        match (&self.weight, ignore_index) {
            (None, None) => None,
            (None, Some(_)) => Some(no_grad(|| keep(target).expect("an ignore index").sum())),
            (Some(w), _) => Some(no_grad(|| {
                let t = target.reshape([target.elem_count()]);
                match keep(&t) {
                    // An ignored target reads class 0's weight, then counts 0.
                    Some(k) => (&w.index_select(0, &(&t * &k)) * &k).sum(),
                    None => w.index_select(0, &t).sum(),
                }
            })),
        }
    }

    /// How the accuracy metrics read this loss's targets.
    pub fn targets(&self) -> TargetKind {
        match self.loss {
            Loss::CrossEntropyWith { ignore_index, .. } => TargetKind { ignore: *ignore_index, logits: false },
            Loss::BceWithLogits => TargetKind { ignore: None, logits: true },
            _ => TargetKind::default(),
        }
    }
}

/// How the accuracy metrics read a batch's targets: the label that counts
/// for nothing (a loss's `ignore_index`), and whether single outputs are
/// logits (a binary prediction is `output > 0`) or probabilities
/// (`output > 0.5`).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct TargetKind {
    ignore: Option<i64>,
    logits: bool,
}

/// A number reported per epoch besides the loss (Keras's `metrics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// The fraction of predictions that are right, read from the targets'
    /// shape as Keras's `"accuracy"` is (and, unlike Keras, which decides
    /// by shapes alone, from the loss: see the last case):
    /// - `[.., classes]` outputs against one label per row (or per
    ///   position of a sequence): the arg-max is the label. Targets equal
    ///   to the loss's `ignore_index` are left out.
    /// - Targets of the outputs' shape (one-hot or probabilities): the
    ///   output's arg-max is the target's (`categorical_accuracy`).
    /// - One output per row, or the loss [`Loss::BceWithLogits`]: each
    ///   output, above 0 for logits (that loss) or above 0.5 otherwise,
    ///   against its target above 0.5 (`binary_accuracy`). Keras would cut
    ///   logits at 0.5 too, and score `[N, C]` multi-label targets by
    ///   arg-max; here a logit is cut at 0 (probability 0.5) and every
    ///   output of a multi-label row counts.
    Accuracy,
    /// The fraction of labels among the `k` largest outputs of their row
    /// (one label per row, or targets of the outputs' shape whose arg-max
    /// is the label; an `ignore_index`'s targets left out).
    TopK(usize),
    /// Mean absolute error.
    Mae,
    /// Mean squared error.
    Mse,
}

/// How a batch's targets name the right predictions (see [`Metric::Accuracy`]).
#[derive(Clone)]
enum Truth {
    /// One class label per row of `[.., classes]` outputs, shaped as their
    /// leading dims; ignored targets replaced by -1, which no arg-max is.
    Labels(Tensor),
    /// One target per output, thresholded.
    Binary,
}

/// What a batch's metric sum is over: predictions counted on the host, or
/// on the device (the labels an ignore index keeps).
#[derive(Clone)]
enum Count {
    Host(usize),
    Device(Tensor),
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

    /// How `target` names the right predictions of `out`, and how many
    /// there are.
    fn truth(out: &Tensor, target: &Tensor, kind: TargetKind) -> (Truth, Count) {
        let classes = out.dims().last().copied().unwrap_or(1);
        let one_each = target.elem_count() == out.elem_count();
        if one_each && (kind.logits || classes == 1 || out.rank() == 1) {
            return (Truth::Binary, Count::Host(out.elem_count()));
        }
        if let Some(labels) = Self::labels_of(out, target) {
            return match kind.ignore {
                Some(i) => {
                    let kept = labels.ne_scalar(i as f32);
                    let count = kept.sum();
                    // -1 where ignored: `labels·kept - (1 - kept)`.
                    let labels = &(&labels * &kept) + &kept.sub_scalar(1.0);
                    (Truth::Labels(labels), Count::Device(count))
                }
                None => {
                    let n = labels.elem_count();
                    (Truth::Labels(labels), Count::Host(n))
                }
            };
        }
        assert!(
            one_each,
            "accuracy: targets of shape {} are neither one label per row of outputs of shape {} nor one target \
             per output",
            target.shape(),
            out.shape()
        );
        // One-hot or probability targets: their arg-max is the label.
        let labels = target.reshape(out.shape().clone()).argmax(-1, false);
        let n = labels.elem_count();
        (Truth::Labels(labels), Count::Host(n))
    }

    /// `total` plus the metric summed over a batch (a scalar tensor), and
    /// what the sum is over. `truth` is the batch's [`truth`](Self::truth),
    /// read once for all the metrics that need it.
    fn add_batch(
        &self,
        total: &Tensor,
        out: &Tensor,
        target: &Tensor,
        kind: TargetKind,
        truth: &std::cell::OnceCell<(Truth, Count)>,
    ) -> (Tensor, Count) {
        let truth = || truth.get_or_init(|| Self::truth(out, target, kind)).clone();
        match self {
            Metric::Accuracy => match truth() {
                // The argmax, the comparison, the sum and the add: one
                // kernel on a GPU.
                (Truth::Labels(labels), count) => (out.argmax_hits_onto(&labels, Some(total)), count),
                (Truth::Binary, count) => {
                    let predicted = out.gt_scalar(if kind.logits { 0.0 } else { 0.5 });
                    let actual = target.reshape(out.shape().clone()).gt_scalar(0.5);
                    (total + &predicted.eq(&actual).sum(), count)
                }
            },
            Metric::TopK(k) => {
                let (Truth::Labels(labels), count) = truth() else {
                    panic!("top-{k} accuracy: outputs of shape {} have one class per row", out.shape());
                };
                let classes = out.dims()[out.rank() - 1];
                // The indices of the k largest, without gathering their values.
                let top = out.argsort(-1, true).narrow(-1, 0, (*k).min(classes));
                (total + &top.eq(&labels.unsqueeze(-1)).sum(), count)
            }
            Metric::Mae | Metric::Mse => {
                let target =
                    if target.shape() != out.shape() { target.reshape(out.shape().clone()) } else { target.clone() };
                let d = out - &target;
                let e = if *self == Metric::Mae { d.abs() } else { d.sqr() };
                (total + &e.sum(), Count::Host(out.elem_count()))
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
    kind: TargetKind,
    loss_sum: Tensor,
    /// What the loss is a mean over, summed on the device (the targets an
    /// ignore index keeps, or their class weights), or `None`: the rows seen.
    loss_count: Option<Tensor>,
    sums: Vec<Tensor>,
    /// What each metric's sum is over: counted on the host, plus on the
    /// device where an ignore index decides it.
    counts: Vec<usize>,
    device_counts: Vec<Option<Tensor>>,
    seen: usize,
}

impl<'a> Running<'a> {
    pub fn new(metrics: &'a [Metric], kind: TargetKind, device: &Device) -> Self {
        let zero = || Tensor::scalar(0.0, device);
        Running {
            metrics,
            kind,
            loss_sum: zero(),
            loss_count: None,
            sums: metrics.iter().map(|_| zero()).collect(),
            counts: vec![0; metrics.len()],
            device_counts: vec![None; metrics.len()],
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
            let (out, truth) = (out.detach(), std::cell::OnceCell::new());
            for (i, m) in self.metrics.iter().enumerate() {
                let (total, count) = m.add_batch(&self.sums[i], &out, target, self.kind, &truth);
                self.sums[i] = total;
                match count {
                    Count::Host(c) => self.counts[i] += c,
                    Count::Device(c) => {
                        self.device_counts[i] = Some(match &self.device_counts[i] {
                            Some(total) => total + &c,
                            None => c,
                        })
                    }
                }
            }
            self.seen += n;
        });
    }

    pub fn seen(&self) -> usize {
        self.seen
    }

    /// Reads the sums back (waiting for the device), all in one transfer,
    /// and in a data-parallel job adds up every rank's in one all-reduce.
    pub fn read(&self, reduce: super::Reduce) -> Result<Metrics> {
        let m = self.metrics.len();
        let zero = Tensor::scalar(0.0, &self.loss_sum.device());
        // [loss sum, metric sums…, loss count, device counts…], then the
        // host's numbers: [counts…, seen, has loss count, has device count…]
        // (a rank without batches has no device counts of its own).
        let device_counts = self.device_counts.iter().map(|c| c.as_ref().unwrap_or(&zero));
        let mut all = no_grad(|| {
            let parts: Vec<Tensor> = [&self.loss_sum]
                .into_iter()
                .chain(&self.sums)
                .chain([self.loss_count.as_ref().unwrap_or(&zero)])
                .chain(device_counts)
                .map(|t| t.reshape([1]))
                .collect();
            Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0)
        })
        .to_vec()?;
        all.extend(self.counts.iter().map(|&c| c as f32));
        all.push(self.seen as f32);
        all.push(f32::from(self.loss_count.is_some()));
        all.extend(self.device_counts.iter().map(|c| f32::from(c.is_some())));
        if let Some(reduce) = reduce {
            reduce(&mut all);
        }
        let (sums, device_counts) = (&all[1..1 + m], &all[2 + m..2 + 2 * m]);
        let (counts, seen) = (&all[2 + 2 * m..2 + 3 * m], all[2 + 3 * m]);
        let has_loss_count = all[3 + 3 * m] > 0.0;
        let has_device_count = &all[4 + 3 * m..];
        let loss_count = if has_loss_count { all[1 + m] } else { seen.max(1.0) };
        let values = (0..m)
            .map(|i| {
                let count = counts[i] + if has_device_count[i] > 0.0 { device_counts[i] } else { 0.0 };
                (self.metrics[i].name(), sums[i] / count.max(1.0))
            })
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
        let mut running = Running::new(&[], objective.targets(), &dev);
        for y in [[1.0, -1.0], [-1.0, -1.0]] {
            let y = Tensor::new(y, &dev).unwrap();
            let l = objective.compute(&out, &y);
            running.add(&out, &y, &l, objective.kept(&y));
        }
        // The first batch's one kept target; the second's NaN mean is not summed.
        let expected = (1.0f32.exp() + 1.0).ln();
        assert!((running.read(None).unwrap().loss - expected).abs() < 1e-6);
    }

    /// A data-parallel job's read-back: each rank packs its sums, counts
    /// and flags, the packs are added up, and the result is the figures of
    /// one process that saw every batch — with ignored targets counted on
    /// the device, class weights in the loss's count, and a rank that had
    /// no batch at all.
    #[test]
    fn ranks_read_back_what_one_process_would() {
        let dev = Device::Cpu;
        let loss =
            Loss::CrossEntropyWith { label_smoothing: 0.0, weight: Some(vec![1.0, 2.0, 0.5]), ignore_index: Some(-1) };
        let objective = Objective::new(&loss, &dev);
        let metrics = [Metric::Accuracy, Metric::TopK(2)];
        let (out, _) = logits_and_labels();
        let batches = [[0.0, -1.0, 2.0, 2.0], [1.0, 1.0, -1.0, 0.0], [-1.0, -1.0, -1.0, -1.0]];
        let add = |r: &mut Running, y: [f32; 4]| {
            let y = Tensor::new(y, &dev).unwrap();
            let l = objective.compute(&out, &y);
            r.add(&out, &y, &l, objective.kept(&y));
        };
        let mut whole = Running::new(&metrics, objective.targets(), &dev);
        for y in batches {
            add(&mut whole, y);
        }
        let want = whole.read(None).unwrap();
        // Rank 0 sees batch 0, rank 1 batches 1 and 2, rank 2 nothing.
        let mut ranks: Vec<Running> = (0..3).map(|_| Running::new(&metrics, objective.targets(), &dev)).collect();
        add(&mut ranks[0], batches[0]);
        add(&mut ranks[1], batches[1]);
        add(&mut ranks[1], batches[2]);
        let packs: Vec<Vec<f32>> = ranks[1..]
            .iter()
            .map(|r| {
                let pack = std::cell::RefCell::new(Vec::new());
                r.read(Some(&|v: &mut [f32]| *pack.borrow_mut() = v.to_vec())).unwrap();
                pack.into_inner()
            })
            .collect();
        let sum_in = |v: &mut [f32]| {
            for p in &packs {
                for (a, b) in v.iter_mut().zip(p) {
                    *a += b;
                }
            }
        };
        let got = ranks[0].read(Some(&sum_in)).unwrap();
        assert!((got.loss - want.loss).abs() < 1e-6, "{} vs {}", got.loss, want.loss);
        for ((n, a), (_, b)) in got.values.iter().zip(&want.values) {
            assert!((a - b).abs() < 1e-6, "{n}: {a} vs {b}");
        }
        // The accuracy is over the 6 labels kept, not the 12 seen.
        assert!((want.accuracy() - 2.0 / 6.0).abs() < 1e-6, "{}", want.accuracy());
    }

    #[test]
    fn running_sums_read_back_in_one_go() {
        let (out, y) = logits_and_labels();
        let metrics = [Metric::Accuracy, Metric::TopK(2), Metric::TopK(5)];
        let mut running = Running::new(&metrics, TargetKind::default(), &Device::Cpu);
        let loss = out.cross_entropy(&y);
        running.add(&out, &y, &loss, None);
        running.add(&out, &y, &loss, None);
        let m = running.read(None).unwrap();
        // Arg-max right for rows 0 and 3; the label among the top 2 for 0, 1 and 3.
        assert_eq!(m.values, [("accuracy".into(), 0.5), ("top2_accuracy".into(), 0.75), ("top5_accuracy".into(), 1.0)]);
        assert!((m.loss - loss.item().unwrap()).abs() < 1e-6);
    }
}
