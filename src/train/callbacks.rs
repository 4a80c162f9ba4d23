//! Callbacks `fit` calls around its epochs (Keras's `callbacks`):
//! [`EarlyStopping`], [`ModelCheckpoint`], and [`Hook`] for a closure.
//!
//! Callbacks take `&self` (the state they keep is inside them), so a
//! [`FitConfig`](super::FitConfig) holding them is passed by reference and
//! can be reused; each is reset when training begins.

use super::EpochStats;
use crate::nn::Module;
use crate::optim::Optimizer;
use crate::{Result, Tensor, no_grad};
use std::path::PathBuf;
use std::sync::Mutex;

/// Whether training goes on after an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Train the next epoch.
    Continue,
    /// Stop after this one.
    Stop,
}

/// What a callback sees at the end of an epoch.
pub struct EpochEnd<'a> {
    /// The epoch's numbers.
    pub stats: &'a EpochStats,
    /// The model being trained.
    pub model: &'a dyn Module,
    /// Its optimizer, at its own learning rate: a schedule's rate for the
    /// epoch is `stats.lr` (so a checkpoint saves the rate the schedule
    /// starts from).
    pub optimizer: &'a dyn Optimizer,
}

/// Something `fit` calls as training goes.
pub trait Callback: Send + Sync {
    /// Training begins: forget anything from an earlier run.
    fn on_train_begin(&self) {}
    /// An epoch ended (after its validation); return [`Control::Stop`] to
    /// end training.
    fn on_epoch_end(&self, _end: &EpochEnd) -> Result<Control> {
        Ok(Control::Continue)
    }
    /// Training ended (after the last epoch, or a stop).
    fn on_train_end(&self, _model: &dyn Module) -> Result<()> {
        Ok(())
    }
}

/// Whether a larger value of the quantity named `monitor` is better
/// (accuracies) or a smaller one (losses, errors).
fn higher_is_better(monitor: &str) -> bool {
    monitor.contains("accuracy")
}

/// Whether `value` improves on `best` (`None`: nothing seen yet) by more
/// than `min_delta` (its size: a negative one counts as positive, as
/// Keras takes it): it is larger, or with `higher_is_better` false,
/// smaller. A NaN never improves, and nothing improves on a NaN, so a NaN
/// epoch neither counts as progress nor becomes the mark to beat. Shared by
/// [`EarlyStopping`], [`ModelCheckpoint`] and
/// [`ReduceOnPlateau`](crate::optim::ReduceOnPlateau).
pub(crate) fn improved(best: Option<f32>, value: f32, higher_is_better: bool, min_delta: f32) -> bool {
    if value.is_nan() {
        return false;
    }
    let min_delta = min_delta.abs();
    match best {
        None => true,
        Some(best) if higher_is_better => value > best + min_delta,
        Some(best) => value < best - min_delta,
    }
}

/// The value of `monitor` in `stats`, or an error naming what there is.
fn monitored(stats: &EpochStats, monitor: &str) -> Result<f32> {
    stats.get(monitor).ok_or_else(|| crate::Error::InvalidArgument {
        op: "fit",
        msg: format!(
            "a callback monitors {monitor:?}, which this training does not report ({})",
            stats.names().join(", ")
        ),
    })
}

/// Stops training when `monitor` (default `val_loss`) has not improved by
/// more than `min_delta` for `patience` epochs (a NaN is never an
/// improvement); with `restore_best_weights`, puts the model's state of the
/// best epoch back when training ends: its parameters and its buffers
/// (BatchNorm's running statistics), kept on the model's device.
pub struct EarlyStopping {
    /// The quantity watched: `loss`, `val_loss`, `accuracy`, `val_accuracy`, …
    pub monitor: String,
    /// Epochs without improvement tolerated.
    pub patience: usize,
    /// The least change that counts as an improvement.
    pub min_delta: f32,
    /// Restore the best epoch's parameters and buffers when training ends.
    pub restore_best_weights: bool,
    state: Mutex<Watch>,
}

/// What [`EarlyStopping`] remembers: the best value (none before the first
/// that is not NaN), the epochs since, and (when restoring) device-side
/// copies of the best epoch's `state_dict`, in its order.
type Watch = (Option<f32>, usize, Option<Vec<Tensor>>);

/// A copy of `t`'s elements on its device, bit for bit (`-0.0` and NaN
/// payloads included), that later changes to `t` do not reach.
fn device_copy(t: &Tensor) -> Tensor {
    no_grad(|| {
        let copy = t.zeros_like();
        copy.assign(t);
        copy
    })
}

impl EarlyStopping {
    /// Watching `monitor`, with `patience`.
    pub fn new(monitor: &str, patience: usize) -> Self {
        EarlyStopping {
            monitor: monitor.into(),
            patience,
            min_delta: 0.0,
            restore_best_weights: false,
            state: Mutex::new((None, 0, None)),
        }
    }

    /// The same, restoring the best parameters at the end.
    pub fn restoring_best(mut self) -> Self {
        self.restore_best_weights = true;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Watch> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Callback for EarlyStopping {
    fn on_train_begin(&self) {
        *self.state() = (None, 0, None);
    }

    fn on_epoch_end(&self, end: &EpochEnd) -> Result<Control> {
        let value = monitored(end.stats, &self.monitor)?;
        let mut s = self.state();
        if improved(s.0, value, higher_is_better(&self.monitor), self.min_delta) {
            s.0 = Some(value);
            s.1 = 0;
            if self.restore_best_weights {
                // Copied on the device: nothing waits for it or crosses to the host.
                s.2 = Some(end.model.state_dict().iter().map(|(_, t)| device_copy(t)).collect());
            }
            return Ok(Control::Continue);
        }
        s.1 += 1;
        Ok(if s.1 >= self.patience { Control::Stop } else { Control::Continue })
    }

    fn on_train_end(&self, model: &dyn Module) -> Result<()> {
        if let Some(best) = self.state().2.take() {
            for ((_, t), saved) in model.state_dict().iter().zip(&best) {
                t.assign(saved);
            }
        }
        Ok(())
    }
}

/// Saves a checkpoint (model, optimizer, epoch, random state: see
/// [`crate::io::save_checkpoint`]) to `path` after every epoch, or with
/// `save_best_only` after each epoch that improves `monitor` (a NaN never
/// does). The optimizer is saved with its own learning rate, not a
/// schedule's, as `fit` puts it back before callbacks run.
pub struct ModelCheckpoint {
    /// Where to save (atomically replaced each time).
    pub path: PathBuf,
    /// The quantity that decides the best epoch (`val_loss` by default).
    pub monitor: String,
    /// Save only when `monitor` improves on the best value of this `fit`
    /// call (or on `initial_value_threshold`).
    pub save_best_only: bool,
    /// With `save_best_only`, the value the first epoch must beat (Keras's
    /// `initial_value_threshold`): set it to the best value of the run a
    /// resumed `fit` continues, or its first epoch always replaces the best
    /// checkpoint, however it compares with the saved one.
    pub initial_value_threshold: Option<f32>,
    best: Mutex<Option<f32>>,
}

impl ModelCheckpoint {
    /// Saving after every epoch.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ModelCheckpoint {
            path: path.into(),
            monitor: "val_loss".into(),
            save_best_only: false,
            initial_value_threshold: None,
            best: Mutex::new(None),
        }
    }

    /// Saving only the best epoch by `monitor`.
    pub fn best_only(path: impl Into<PathBuf>, monitor: &str) -> Self {
        ModelCheckpoint { monitor: monitor.into(), save_best_only: true, ..ModelCheckpoint::new(path) }
    }
}

impl Callback for ModelCheckpoint {
    fn on_train_begin(&self) {
        *self.best.lock().unwrap_or_else(|e| e.into_inner()) = self.initial_value_threshold;
    }

    fn on_epoch_end(&self, end: &EpochEnd) -> Result<Control> {
        if self.save_best_only {
            let value = monitored(end.stats, &self.monitor)?;
            let mut best = self.best.lock().unwrap_or_else(|e| e.into_inner());
            if !improved(*best, value, higher_is_better(&self.monitor), 0.0) {
                return Ok(Control::Continue);
            }
            *best = Some(value);
        }
        // In a data-parallel job every rank holds the same model: rank 0
        // alone writes it.
        if super::is_primary() {
            crate::io::save_checkpoint(&self.path, end.model, end.optimizer, end.stats.epoch)?;
        }
        Ok(Control::Continue)
    }
}

/// A closure called after every epoch.
///
/// ```
/// use wgrad::train::{Control, Hook};
/// let log = Hook::new(|end| {
///     println!("epoch {} took {:.3} s", end.stats.epoch, end.stats.seconds);
///     Ok(Control::Continue)
/// });
/// ```
#[allow(clippy::type_complexity)]
pub struct Hook(Mutex<Box<dyn FnMut(&EpochEnd) -> Result<Control> + Send>>);

impl Hook {
    /// Calls `f` after every epoch.
    pub fn new(f: impl FnMut(&EpochEnd) -> Result<Control> + Send + 'static) -> Self {
        Hook(Mutex::new(Box::new(f)))
    }
}

impl Callback for Hook {
    fn on_epoch_end(&self, end: &EpochEnd) -> Result<Control> {
        (self.0.lock().unwrap_or_else(|e| e.into_inner()))(end)
    }
}
