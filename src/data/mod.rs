//! Datasets: the MNIST reader, in-memory datasets (classification or
//! regression), the Keras-style validation split and batching with seeded
//! shuffling.
//!
//! ```no_run
//! use wgrad::{Device, data::mnist};
//! let mnist = mnist::load("data/mnist").unwrap();
//! let mut g = wgrad::Generator::new(0);
//! for (x, y) in mnist.train.batches(32, Some(&mut g), &Device::Cpu) {
//!     assert_eq!(x.dims()[1..], [28, 28]);
//!     # break;
//! }
//! ```

mod idx;
pub mod mnist;
pub mod names;

pub use idx::{Idx, parse_idx, read_idx};

use crate::rng::Generator;
use crate::{Device, Tensor};

/// Examples held in host memory: inputs as f32, and targets that are
/// either integer class labels (stored as f32, the form `cross_entropy`
/// takes) or real values of a fixed shape (regression).
#[derive(Clone, Debug)]
pub struct Dataset {
    inputs: Vec<f32>,
    targets: Vec<f32>,
    item_shape: Vec<usize>,
    target_shape: Vec<usize>,
    /// The number of classes, for a classification dataset.
    classes: Option<usize>,
}

impl Dataset {
    /// A classification dataset of `labels.len()` items of `item_shape` each.
    /// Panics if the sizes disagree or a label is not an integer below
    /// `classes`.
    pub fn new(inputs: Vec<f32>, labels: Vec<f32>, item_shape: &[usize], classes: usize) -> Self {
        let item: usize = item_shape.iter().product();
        assert_eq!(
            inputs.len(),
            labels.len() * item,
            "Dataset::new: {} inputs for {} labels of shape {item_shape:?}",
            inputs.len(),
            labels.len()
        );
        assert!(
            labels.iter().all(|&l| l >= 0.0 && (l as usize) < classes && l.fract() == 0.0),
            "Dataset::new: labels must be integers below {classes}"
        );
        Dataset {
            inputs,
            targets: labels,
            item_shape: item_shape.to_vec(),
            target_shape: Vec::new(),
            classes: Some(classes),
        }
    }

    /// A regression dataset: each item of `item_shape` has a real-valued
    /// target of `target_shape` (`&[]` for one number per item). Panics if
    /// the sizes disagree, or a shape holds no values (an axis of 0: the
    /// number of items would be unknowable).
    pub fn regression(inputs: Vec<f32>, targets: Vec<f32>, item_shape: &[usize], target_shape: &[usize]) -> Self {
        let (item, target): (usize, usize) = (item_shape.iter().product(), target_shape.iter().product());
        assert!(
            item > 0 && target > 0,
            "Dataset::regression: item shape {item_shape:?} and target shape {target_shape:?} must both hold values"
        );
        let n = inputs.len().checked_div(item).unwrap_or(0);
        assert!(
            n * item == inputs.len() && n * target == targets.len(),
            "Dataset::regression: {} inputs of shape {item_shape:?} and {} targets of shape {target_shape:?} \
             do not make whole items",
            inputs.len(),
            targets.len()
        );
        Dataset { inputs, targets, item_shape: item_shape.to_vec(), target_shape: target_shape.to_vec(), classes: None }
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.targets.len() / self.target_len().max(1)
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape of one input.
    pub fn item_shape(&self) -> &[usize] {
        &self.item_shape
    }

    /// The shape of one target (`[]` for class labels).
    pub fn target_shape(&self) -> &[usize] {
        &self.target_shape
    }

    /// The number of classes of a classification dataset (`None` for
    /// regression).
    pub fn classes(&self) -> Option<usize> {
        self.classes
    }

    /// The class labels (or regression targets), in order.
    pub fn labels(&self) -> &[f32] {
        &self.targets
    }

    fn item_len(&self) -> usize {
        self.item_shape.iter().product()
    }

    fn target_len(&self) -> usize {
        self.target_shape.iter().product()
    }

    /// The items at `indices`, in that order.
    pub(crate) fn subset(&self, indices: &[usize]) -> Dataset {
        let (item, target) = (self.item_len(), self.target_len());
        let mut inputs = Vec::with_capacity(indices.len() * item);
        let mut targets = Vec::with_capacity(indices.len() * target);
        for &i in indices {
            inputs.extend_from_slice(&self.inputs[i * item..(i + 1) * item]);
            targets.extend_from_slice(&self.targets[i * target..(i + 1) * target]);
        }
        Dataset { inputs, targets, ..self.clone_meta() }
    }

    fn clone_meta(&self) -> Dataset {
        Dataset {
            inputs: Vec::new(),
            targets: Vec::new(),
            item_shape: self.item_shape.clone(),
            target_shape: self.target_shape.clone(),
            classes: self.classes,
        }
    }

    /// Splits off the last `fraction` of the items (taken before any
    /// shuffling), as Keras's `validation_split`: returns (rest, held out).
    /// The held-out part is `fraction` of the items rounded to the nearest
    /// whole number, and at least one item when `fraction > 0`: as in
    /// Keras, a split asked for is never silently empty (the rest may be,
    /// which `fit` reports as an error). Keras keeps `⌊n·(1 − fraction)⌋`
    /// for training, which holds out one more item where `n·fraction` has a
    /// fractional part under one half (8,004 items at 0.1: Keras holds out
    /// 801, this 800).
    pub fn split_last(&self, fraction: f32) -> (Dataset, Dataset) {
        assert!((0.0..1.0).contains(&fraction), "split_last: fraction {fraction} is not in [0, 1)");
        let held = self.held_out_len(fraction);
        let keep = self.len() - held;
        let order: Vec<usize> = (0..self.len()).collect();
        (self.subset(&order[..keep]), self.subset(&order[keep..]))
    }

    /// How many items a split of `fraction` holds out: the nearest whole
    /// number, and at least one when `fraction > 0` and there are items.
    fn held_out_len(&self, fraction: f32) -> usize {
        let held = (self.len() as f64 * fraction as f64).round() as usize;
        if fraction > 0.0 { held.max(1).min(self.len()) } else { held }
    }

    /// Splits off a random `fraction` of the items (shuffled by `generator`
    /// first): returns (rest, held out), each in its original order. It
    /// holds out as many as [`split_last`](Self::split_last).
    pub fn split_shuffled(&self, fraction: f32, generator: &mut Generator) -> (Dataset, Dataset) {
        assert!((0.0..1.0).contains(&fraction), "split_shuffled: fraction {fraction} is not in [0, 1)");
        let held = self.held_out_len(fraction);
        let mut order: Vec<usize> = (0..self.len()).collect();
        generator.shuffle(&mut order);
        let (mut keep, mut out) = (order[..self.len() - held].to_vec(), order[self.len() - held..].to_vec());
        keep.sort_unstable();
        out.sort_unstable();
        (self.subset(&keep), self.subset(&out))
    }

    /// The number of distinct labels among the items (classification).
    pub(crate) fn distinct_labels(&self) -> usize {
        let mut seen = vec![false; self.classes.unwrap_or(0)];
        for &l in &self.targets {
            if let Some(s) = seen.get_mut(l as usize) {
                *s = true;
            }
        }
        seen.iter().filter(|&&s| s).count()
    }

    /// The items at `indices` as tensors on `device`: inputs
    /// `[len, item_shape…]` and targets `[len, target_shape…]` (`[len]`
    /// labels for classification). Panics if an index is not below
    /// [`len`](Self::len).
    pub fn gather(&self, indices: &[usize], device: &Device) -> (Tensor, Tensor) {
        if let Some(&i) = indices.iter().find(|&&i| i >= self.len()) {
            panic!("Dataset::gather: index {i} is out of range for {} items", self.len());
        }
        let part = self.subset(indices);
        let mut x_shape = vec![indices.len()];
        x_shape.extend_from_slice(&self.item_shape);
        let mut y_shape = vec![indices.len()];
        y_shape.extend_from_slice(&self.target_shape);
        let x = Tensor::from_vec(part.inputs, x_shape, device).expect("gather: sizes match by construction");
        let y = Tensor::from_vec(part.targets, y_shape, device).expect("gather: sizes match by construction");
        (x, y)
    }

    /// Batches of `batch_size` (the last may be smaller), in order or
    /// shuffled by `generator`.
    pub fn batches(&self, batch_size: usize, generator: Option<&mut Generator>, device: &Device) -> Batches<'_> {
        assert!(batch_size > 0, "batches: batch size must be positive");
        let mut order: Vec<usize> = (0..self.len()).collect();
        if let Some(g) = generator {
            g.shuffle(&mut order);
        }
        Batches { data: self, order, batch_size, at: 0, device: device.clone() }
    }
}

/// An iterator over `(inputs, labels)` batches of a [`Dataset`].
pub struct Batches<'a> {
    data: &'a Dataset,
    order: Vec<usize>,
    batch_size: usize,
    at: usize,
    device: Device,
}

impl Iterator for Batches<'_> {
    type Item = (Tensor, Tensor);

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.order.len() {
            return None;
        }
        let end = (self.at + self.batch_size).min(self.order.len());
        let batch = self.data.gather(&self.order[self.at..end], &self.device);
        self.at = end;
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = (self.order.len() - self.at).div_ceil(self.batch_size);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Batches<'_> {}
