//! A Keras-like training loop: [`fit`] and [`evaluate`] for classifiers
//! trained with cross-entropy, with a progress bar per epoch (hidden when
//! stdout is not a terminal) and a one-line summary per epoch.
//!
//! Metrics are accumulated on the model's device and read back every few
//! steps, so a GPU is not made to wait for the host after every batch.
//! Programs that want their own loop use the same pieces: `forward`,
//! `cross_entropy`, `backward`, `Optimizer::step`, [`accuracy`].

use crate::data::Dataset;
use crate::nn::Module;
use crate::optim::{LrSchedule, Optimizer, clip_grad_norm};
use crate::rng::Generator;
use crate::{Device, Result, Tensor, no_grad};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::borrow::Cow;
use std::time::Instant;

/// Settings of [`fit`]; `Default` is the Keras example's (5 epochs, batch 32).
pub struct FitConfig {
    /// Passes over the training data.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Fraction of the training data held out (the last items, taken before
    /// shuffling, as Keras does) and evaluated after every epoch.
    pub validation_split: f32,
    /// Seed of the per-epoch shuffling.
    pub shuffle_seed: u64,
    /// Learning rate per epoch, if it should change.
    pub schedule: Option<Box<dyn LrSchedule>>,
    /// Clip gradients to this global norm.
    pub clip_grad_norm: Option<f32>,
    /// Print a progress bar and a summary line per epoch.
    pub verbose: bool,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            epochs: 5,
            batch_size: 32,
            validation_split: 0.0,
            shuffle_seed: 0,
            schedule: None,
            clip_grad_norm: None,
            verbose: true,
        }
    }
}

/// Loss and accuracy over a dataset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metrics {
    /// Mean cross-entropy.
    pub loss: f32,
    /// Fraction of correct predictions.
    pub accuracy: f32,
}

/// What one epoch of [`fit`] did.
#[derive(Clone, Debug)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    /// On the training data, as the model was during the epoch.
    pub train: Metrics,
    /// On the held-out split, after the epoch.
    pub validation: Option<Metrics>,
    /// Wall time of the epoch's training steps.
    pub seconds: f64,
}

/// Device-side running sums of loss and correct predictions.
struct Running {
    loss_sum: Tensor,
    correct: Tensor,
    seen: usize,
}

impl Running {
    fn new(device: &Device) -> Self {
        Running { loss_sum: Tensor::scalar(0.0, device), correct: Tensor::scalar(0.0, device), seen: 0 }
    }

    fn add(&mut self, logits: &Tensor, labels: &Tensor, loss: &Tensor) {
        no_grad(|| {
            let n = labels.elem_count();
            self.loss_sum = &self.loss_sum + &loss.detach().mul_scalar(n as f32);
            self.correct = &self.correct + &correct_predictions(logits, labels);
            self.seen += n;
        });
    }

    fn read(&self) -> Result<Metrics> {
        let n = self.seen.max(1) as f32;
        Ok(Metrics { loss: self.loss_sum.item()? / n, accuracy: self.correct.item()? / n })
    }
}

/// The number of rows whose arg-max equals the label, as a scalar tensor.
fn correct_predictions(logits: &Tensor, labels: &Tensor) -> Tensor {
    no_grad(|| logits.argmax(-1, false).eq(labels).sum())
}

/// The fraction of rows of `logits` whose arg-max equals the label.
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f32> {
    Ok(correct_predictions(logits, labels).item()? / labels.elem_count().max(1) as f32)
}

/// The device of a model's parameters (the CPU for a model without any).
fn device_of(model: &dyn Module) -> Device {
    model.parameters().first().map(|p| p.device()).unwrap_or_default()
}

/// Evaluation mode until dropped, then the mode the model had before (also
/// if evaluation fails or panics).
struct EvalMode<'a> {
    model: &'a dyn Module,
    was_training: bool,
}

impl<'a> EvalMode<'a> {
    fn enter(model: &'a dyn Module) -> Self {
        let was_training = model.is_training();
        model.eval();
        EvalMode { model, was_training }
    }
}

impl Drop for EvalMode<'_> {
    fn drop(&mut self) {
        self.model.set_training(self.was_training);
    }
}

/// Trains a classifier with cross-entropy on its logits. Returns one
/// [`EpochStats`] per epoch. The model's parameters must be variables on
/// one device; batches go there. A batch size of 0, a validation split
/// outside `[0, 1)`, or no training data is an
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument).
pub fn fit(
    model: &dyn Module,
    optimizer: &mut dyn Optimizer,
    data: &Dataset,
    config: &FitConfig,
) -> Result<Vec<EpochStats>> {
    let device = device_of(model);
    let invalid = |msg: String| Err(crate::Error::InvalidArgument { op: "fit", msg });
    if config.batch_size == 0 {
        return invalid("batch_size must be at least 1".into());
    }
    if !(0.0..1.0).contains(&config.validation_split) {
        return invalid(format!("validation_split must be in [0, 1), not {}", config.validation_split));
    }
    let (train, held_out) = if config.validation_split > 0.0 {
        let (t, v) = data.split_last(config.validation_split);
        (Cow::Owned(t), Some(v))
    } else {
        (Cow::Borrowed(data), None)
    };
    if train.is_empty() {
        return invalid(format!(
            "no training data ({} items, validation_split {})",
            data.len(),
            config.validation_split
        ));
    }
    let held_out = held_out.filter(|v| !v.is_empty());
    let mut generator = Generator::new(config.shuffle_seed);
    let params = model.parameters();
    let mut history = Vec::with_capacity(config.epochs);
    for epoch in 1..=config.epochs {
        if let Some(schedule) = &config.schedule {
            optimizer.set_learning_rate(schedule.lr(epoch - 1));
        }
        model.train();
        let batches = train.batches(config.batch_size, Some(&mut generator), &device);
        let steps = batches.len();
        let bar = progress_bar(config.verbose, steps, epoch, config.epochs);
        let started = Instant::now();
        let mut running = Running::new(&device);
        for (step, (x, y)) in batches.enumerate() {
            let logits = model.forward(&x);
            let loss = logits.cross_entropy(&y);
            let mut grads = loss.backward();
            if let Some(max_norm) = config.clip_grad_norm {
                clip_grad_norm(&mut grads, &params, max_norm);
            }
            optimizer.step(&grads);
            running.add(&logits, &y, &loss);
            // Reading metrics waits for the device: do it now and then.
            if bar.is_hidden() && step + 1 < steps {
                continue;
            }
            if (step + 1) % 25 == 0 || step + 1 == steps {
                let m = running.read()?;
                let rate = running.seen as f64 / started.elapsed().as_secs_f64();
                bar.set_position(step as u64 + 1);
                bar.set_message(format!("loss {:.4} - accuracy {:.4} - {rate:.0} samples/s", m.loss, m.accuracy));
            }
        }
        let train_metrics = running.read()?;
        let seconds = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let validation = match &held_out {
            Some(v) => Some(evaluate(model, v, config.batch_size)?),
            None => None,
        };
        if config.verbose {
            let mut line = format!(
                "epoch {epoch}/{}: loss {:.4} - accuracy {:.4}",
                config.epochs, train_metrics.loss, train_metrics.accuracy
            );
            if let Some(v) = validation {
                line += &format!(" - val_loss {:.4} - val_accuracy {:.4}", v.loss, v.accuracy);
            }
            line += &format!(" - {seconds:.2}s ({:.0} samples/s)", train.len() as f64 / seconds);
            println!("{line}");
        }
        history.push(EpochStats { epoch, train: train_metrics, validation, seconds });
    }
    Ok(history)
}

fn progress_bar(verbose: bool, steps: usize, epoch: usize, epochs: usize) -> ProgressBar {
    if !verbose {
        return ProgressBar::hidden();
    }
    // Draws only when stdout is a terminal.
    let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stdout());
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {epoch}/{epochs}"));
    bar
}

/// Loss and accuracy of a classifier over `data`, in evaluation mode
/// (dropout off) and without recording gradients; the model's mode is
/// restored afterwards. An empty dataset or a batch size of 0 is an error.
pub fn evaluate(model: &dyn Module, data: &Dataset, batch_size: usize) -> Result<Metrics> {
    let device = device_of(model);
    if data.is_empty() || batch_size == 0 {
        let msg = format!("nothing to evaluate ({} items, batch size {batch_size})", data.len());
        return Err(crate::Error::InvalidArgument { op: "evaluate", msg });
    }
    let _mode = EvalMode::enter(model);
    no_grad(|| {
        let mut running = Running::new(&device);
        for (x, y) in data.batches(batch_size, None, &device) {
            let logits = model.forward(&x);
            let loss = logits.cross_entropy(&y);
            running.add(&logits, &y, &loss);
        }
        running.read()
    })
}

/// Class predictions (arg-max of the logits) for every item of `data`, in
/// evaluation mode (the model's mode is restored afterwards).
pub fn predict(model: &dyn Module, data: &Dataset, batch_size: usize) -> Result<Vec<usize>> {
    let device = device_of(model);
    if batch_size == 0 {
        return Err(crate::Error::InvalidArgument { op: "predict", msg: "batch size must be at least 1".into() });
    }
    let _mode = EvalMode::enter(model);
    no_grad(|| {
        let mut out = Vec::with_capacity(data.len());
        for (x, _) in data.batches(batch_size, None, &device) {
            out.extend(model.forward(&x).argmax(-1, false).to_vec()?.into_iter().map(|v| v as usize));
        }
        Ok(out)
    })
}
