//! Datasets: the MNIST reader, in-memory datasets, the Keras-style
//! validation split and batching with seeded shuffling.
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

pub use idx::{Idx, parse_idx, read_idx};

use crate::rng::Generator;
use crate::{Device, Tensor};

/// Labelled examples held in host memory: inputs as f32 and integer class
/// labels (stored as f32, the form `cross_entropy` takes).
#[derive(Clone, Debug)]
pub struct Dataset {
    inputs: Vec<f32>,
    labels: Vec<f32>,
    item_shape: Vec<usize>,
    classes: usize,
}

impl Dataset {
    /// A dataset of `labels.len()` items of `item_shape` each.
    /// Panics if the sizes disagree or a label is not below `classes`.
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
        Dataset { inputs, labels, item_shape: item_shape.to_vec(), classes }
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The shape of one input.
    pub fn item_shape(&self) -> &[usize] {
        &self.item_shape
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The labels, in order.
    pub fn labels(&self) -> &[f32] {
        &self.labels
    }

    fn item_len(&self) -> usize {
        self.item_shape.iter().product()
    }

    /// Splits off the last `fraction` of the items (taken before any
    /// shuffling), as Keras's `validation_split`: returns (rest, held out).
    pub fn split_last(&self, fraction: f32) -> (Dataset, Dataset) {
        assert!((0.0..1.0).contains(&fraction), "split_last: fraction {fraction} is not in [0, 1)");
        let held = (self.len() as f64 * fraction as f64).round() as usize;
        let keep = self.len() - held;
        let at = keep * self.item_len();
        let part = |inputs: &[f32], labels: &[f32]| Dataset {
            inputs: inputs.to_vec(),
            labels: labels.to_vec(),
            item_shape: self.item_shape.clone(),
            classes: self.classes,
        };
        (part(&self.inputs[..at], &self.labels[..keep]), part(&self.inputs[at..], &self.labels[keep..]))
    }

    /// The items at `indices` as tensors on `device`: inputs
    /// `[len, item_shape…]` and labels `[len]`.
    pub fn gather(&self, indices: &[usize], device: &Device) -> (Tensor, Tensor) {
        let item = self.item_len();
        let mut x = Vec::with_capacity(indices.len() * item);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            x.extend_from_slice(&self.inputs[i * item..(i + 1) * item]);
            y.push(self.labels[i]);
        }
        let mut shape = vec![indices.len()];
        shape.extend_from_slice(&self.item_shape);
        let x = Tensor::from_vec(x, shape, device).expect("gather: sizes match by construction");
        let y = Tensor::from_vec(y, [indices.len()], device).expect("gather: sizes match by construction");
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
