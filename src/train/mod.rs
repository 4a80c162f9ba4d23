//! A Keras-like training loop: [`fit`], [`evaluate`] and [`predict`], for
//! classifiers and regressors, with a loss and metrics of your choice,
//! learning-rate schedules, callbacks (early stopping, checkpoints, hooks)
//! and resumption from a checkpoint.
//!
//! Metrics are accumulated on the model's device and read back now and
//! then, so a GPU is not made to wait for the host after every batch.
//! Programs that want their own loop use the same pieces: `forward`, a loss
//! op, `backward`, `Optimizer::step`.
//!
//! ```
//! use wgrad::{Device, Tensor, data::Dataset, nn::{self, Module}, optim::Adam};
//! use wgrad::train::{fit, FitConfig, Loss, Metric};
//! let dev = Device::Cpu;
//! wgrad::manual_seed(0);
//! // y = 2x - 1, a regression.
//! let xs: Vec<f32> = (0..64).map(|i| i as f32 / 32.0 - 1.0).collect();
//! let ys: Vec<f32> = xs.iter().map(|x| 2.0 * x - 1.0).collect();
//! let data = Dataset::regression(xs, ys, &[1], &[]);
//! let model = nn::Linear::new(1, 1, &dev);
//! let mut opt = Adam::new(model.parameters(), 0.1);
//! let config = FitConfig { epochs: 40, batch_size: 16, loss: Some(Loss::Mse), metrics: Some(vec![Metric::Mae]), verbose: false, ..Default::default() };
//! let history = fit(&model, &mut opt, &data, &config).unwrap();
//! assert!(history.last().unwrap().train.get("mae").unwrap() < 0.05);
//! ```

mod callbacks;
mod objective;

pub(crate) use callbacks::improved;
pub use callbacks::{Callback, Control, EarlyStopping, EpochEnd, Hook, ModelCheckpoint};
pub use objective::{Loss, LossFn, Metric, Metrics};

use crate::data::Dataset;
use crate::nn::Module;
use crate::optim::{LrSchedule, Optimizer, Progress, clip_grad_norm};
use crate::rng::Generator;
use crate::{CapturedStep, Device, Error, Result, Tensor, no_grad};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use objective::{Objective, Running};
use std::borrow::Cow;
use std::cell::RefCell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Settings of [`fit`]; `Default` is the Keras example's (5 epochs, batch
/// 32, the loss and metrics the dataset calls for).
pub struct FitConfig {
    /// The epoch to train up to (counting `initial_epoch`).
    pub epochs: usize,
    /// Epochs already trained (resuming from a checkpoint): training runs
    /// epochs `initial_epoch + 1 ..= epochs`, with the shuffles those
    /// epochs would have had.
    pub initial_epoch: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Fraction of the training data held out and evaluated after every
    /// epoch: the last items, taken before shuffling, as Keras does, or a
    /// random choice with `shuffle_before_split`.
    pub validation_split: f32,
    /// Data evaluated after every epoch instead of a split of the training
    /// data (Keras's `validation_data`); set it or `validation_split`, not
    /// both.
    pub validation_data: Option<Dataset>,
    /// Choose the held-out items at random (from `shuffle_seed`) rather than
    /// the last ones — for data sorted by class.
    pub shuffle_before_split: bool,
    /// Seed of the per-epoch shuffling (and of the random split).
    pub shuffle_seed: u64,
    /// The loss; `None` is cross-entropy for a classification dataset and
    /// mean squared error for a regression one.
    pub loss: Option<Loss>,
    /// The metrics reported besides the loss; `None` is accuracy for
    /// classification and MAE for regression.
    pub metrics: Option<Vec<Metric>>,
    /// A learning-rate schedule, applied every step from the optimizer's
    /// own rate; callbacks see the optimizer at its own rate (so a
    /// checkpoint saves that, and a resumed run continues the schedule
    /// from the same step: see [`Progress`]), and it is restored when `fit`
    /// returns.
    pub schedule: Option<Box<dyn LrSchedule>>,
    /// Clip gradients to this global norm.
    pub clip_grad_norm: Option<f32>,
    /// Called around the epochs (early stopping, checkpoints, hooks).
    pub callbacks: Vec<Box<dyn Callback>>,
    /// Print progress (a bar on a terminal, a line every few seconds
    /// otherwise) and a summary line per epoch.
    pub verbose: bool,
    /// Run each epoch's training steps as a [`crate::CapturedStep`] on a
    /// GPU: forward, loss, backward, clipping and the optimizer step are
    /// recorded once per epoch (after an eager warm-up step) and replayed,
    /// which computes the same values with a fraction of the host's time
    /// per step; the running loss and metrics are accumulated eagerly from
    /// the step's outputs. A smaller last batch runs eagerly; a step that
    /// cannot be replayed (a forward hook reading a value back) stays
    /// eager. Ignored on the CPU and in a data-parallel job. wgrad's
    /// optimizers share their learning rate and step counts with replays;
    /// an [`Optimizer`] of your own that keeps host-side numbers of its
    /// own (a step count, a rate it computes) has them frozen at their
    /// captured values.
    pub capture: bool,
    /// Data-parallel training over MPI (feature `mpi`): every rank runs
    /// `fit` with the same model, data and config; each trains on its
    /// share of every global batch of `batch_size` (the epoch's seeded
    /// shuffle is the same on every rank), gradients are averaged over the
    /// ranks as backward produces them, and the loss, metrics and
    /// validation are reduced over the ranks, so every rank returns the
    /// same history (but `seconds`). Only rank 0 prints; callbacks run on
    /// every rank (a stop on any stops all), and [`ModelCheckpoint`] saves
    /// on rank 0 only. Gradients are the global batch's mean: each rank's
    /// weighted by what its loss is a mean over (rows, or the targets an
    /// ignore index keeps). BatchNorm's running statistics are rank 0's
    /// from the end of each epoch on (broadcast before validation).
    /// Call `Distributed::broadcast_parameters` first, so all ranks start
    /// from the same weights.
    #[cfg(feature = "mpi")]
    pub distributed: Option<std::sync::Arc<crate::distributed::Distributed>>,
    /// With `distributed`, print per epoch (rank 0) the gradient
    /// all-reduce's time per step and the fraction of it hidden behind
    /// the backward pass.
    #[cfg(feature = "mpi")]
    pub distributed_stats: bool,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            epochs: 5,
            initial_epoch: 0,
            batch_size: 32,
            validation_split: 0.0,
            validation_data: None,
            shuffle_before_split: false,
            shuffle_seed: 0,
            loss: None,
            metrics: None,
            schedule: None,
            clip_grad_norm: None,
            callbacks: Vec::new(),
            verbose: true,
            capture: false,
            #[cfg(feature = "mpi")]
            distributed: None,
            #[cfg(feature = "mpi")]
            distributed_stats: false,
        }
    }
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
    /// The learning rate of the epoch's last step.
    pub lr: f32,
}

impl EpochStats {
    /// A reported quantity by Keras's name: `loss`, `val_loss`, a metric
    /// (`accuracy`), or a validation metric (`val_accuracy`).
    pub fn get(&self, name: &str) -> Option<f32> {
        let (metrics, name) = match name.strip_prefix("val_") {
            Some(rest) => (self.validation.as_ref()?, rest),
            None => (&self.train, name),
        };
        if name == "loss" { Some(metrics.loss) } else { metrics.get(name) }
    }

    /// Every name [`get`](Self::get) answers.
    pub fn names(&self) -> Vec<String> {
        let mut out = vec!["loss".to_string()];
        out.extend(self.train.values.iter().map(|(n, _)| n.clone()));
        if let Some(v) = &self.validation {
            out.push("val_loss".into());
            out.extend(v.values.iter().map(|(n, _)| format!("val_{n}")));
        }
        out
    }
}

static SECONDARY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks this process as a data-parallel job's rank 0 (`true`, also the
/// default) or another rank, which neither prints progress nor saves
/// checkpoints.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn set_primary(primary: bool) {
    SECONDARY.store(!primary, std::sync::atomic::Ordering::Relaxed);
}

/// Whether this process prints and saves: true unless it is a rank other
/// than 0 of a data-parallel job ([`FitConfig`]'s `distributed`).
pub fn is_primary() -> bool {
    !SECONDARY.load(std::sync::atomic::Ordering::Relaxed)
}

/// Rank `rank`'s block of a global batch of `len` items over `size` ranks
/// (see `Distributed::shard`): `len · rank / size..len · (rank + 1) /
/// size`, or, where that would leave a rank a single item of a batch of
/// more, pairs dealt the same way with the odd item on the last pair.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn shard_range(len: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    if len < 2 * size && len > 1 {
        let pairs = len / 2;
        let (first, last) = (pairs * rank / size, pairs * (rank + 1) / size);
        let end = if last == pairs && last > first { len } else { 2 * last };
        return 2 * first..end;
    }
    len * rank / size..len * (rank + 1) / size
}

/// Sums a vector over the ranks of a data-parallel job (identity alone).
type Reduce<'a> = Option<&'a dyn Fn(&mut [f32])>;

/// An owned [`Reduce`].
type Reducer<'a> = Box<dyn Fn(&mut [f32]) + 'a>;

/// The device of a model's parameters (the CPU for a model without any).
fn device_of(model: &dyn Module) -> Device {
    model.parameters().first().map(|p| p.device()).unwrap_or_default()
}

/// The optimizer's learning rate until dropped, then the rate it had.
struct KeepRate<'a> {
    optimizer: &'a mut dyn Optimizer,
    rate: f32,
}

impl Drop for KeepRate<'_> {
    fn drop(&mut self) {
        self.optimizer.set_learning_rate(self.rate);
    }
}

/// The loss and metrics for `data` when the caller left them to the dataset.
fn objective(data: &Dataset, loss: &Option<Loss>, metrics: &Option<Vec<Metric>>) -> (Loss, Vec<Metric>) {
    let classify = data.classes().is_some();
    let loss = loss.clone().unwrap_or(if classify { Loss::CrossEntropy } else { Loss::Mse });
    let metrics = metrics.clone().unwrap_or_else(|| if classify { vec![Metric::Accuracy] } else { vec![Metric::Mae] });
    (loss, metrics)
}

fn invalid<T>(op: &'static str, msg: String) -> Result<T> {
    Err(Error::InvalidArgument { op, msg })
}

/// Seconds for a summary line: three significant digits at least.
fn duration(seconds: f64) -> String {
    if seconds < 10.0 { format!("{seconds:.3}s") } else { format!("{seconds:.1}s") }
}

/// `fit`'s side of a data-parallel job ([`FitConfig`]'s `distributed`;
/// nothing without the `mpi` feature or without a job).
struct Parallel<'a> {
    #[cfg(feature = "mpi")]
    dist: Option<&'a crate::distributed::Distributed>,
    #[cfg(feature = "mpi")]
    sync: Option<crate::distributed::GradientSync<'a>>,
    #[cfg(feature = "mpi")]
    stats: bool,
    _config: std::marker::PhantomData<&'a FitConfig>,
}

impl<'a> Parallel<'a> {
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables))]
    fn new(config: &'a FitConfig, params: &[Tensor]) -> Self {
        Parallel {
            #[cfg(feature = "mpi")]
            dist: config.distributed.as_deref(),
            #[cfg(feature = "mpi")]
            sync: config.distributed.as_deref().map(|d| d.gradient_sync(params, None)),
            #[cfg(feature = "mpi")]
            stats: config.distributed_stats,
            _config: std::marker::PhantomData,
        }
    }

    /// Whether a data-parallel job trains (even of one process).
    fn distributed(&self) -> bool {
        #[cfg(feature = "mpi")]
        if self.dist.is_some() {
            return true;
        }
        false
    }

    /// How many processes share each batch.
    fn world(&self) -> usize {
        #[cfg(feature = "mpi")]
        if let Some(d) = self.dist {
            return d.world_size();
        }
        1
    }

    /// This rank's part of a global batch (all of it alone).
    fn shard<'b>(&self, global: &'b [usize]) -> &'b [usize] {
        #[cfg(feature = "mpi")]
        if let Some(d) = self.dist {
            return &global[d.shard(global.len())];
        }
        global
    }

    /// The step's gradients: backward of this rank's `loss` (`None`: no
    /// rows here this step), a mean over `count` items, averaged over the
    /// ranks as the global batch's mean.
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables))]
    fn backward(&mut self, loss: Option<&Tensor>, count: f32) -> Result<crate::Gradients> {
        #[cfg(feature = "mpi")]
        if let Some(s) = &mut self.sync {
            return s.backward(loss, count);
        }
        Ok(loss.expect("a single process always has rows").backward())
    }

    /// Sums metric vectors over the ranks (`None` alone).
    fn reduce(&self) -> Option<Reducer<'a>> {
        #[cfg(feature = "mpi")]
        if let Some(d) = self.dist {
            return Some(Box::new(move |v: &mut [f32]| d.all_reduce_sum(v)));
        }
        None
    }

    /// Every rank's buffers (running statistics) made rank 0's.
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables))]
    fn sync_buffers(&self, model: &dyn Module) -> Result<()> {
        #[cfg(feature = "mpi")]
        if let Some(d) = self.dist {
            return d.broadcast_buffers(model);
        }
        Ok(())
    }

    /// Whether any rank's callbacks asked to stop (this one's alone).
    fn any(&self, stop: bool) -> bool {
        #[cfg(feature = "mpi")]
        if let Some(d) = self.dist {
            let mut v = [f32::from(stop)];
            d.all_reduce_sum(&mut v);
            return v[0] > 0.0;
        }
        stop
    }

    /// With `distributed_stats`, the epoch's all-reduce timings (rank 0).
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables))]
    fn report(&mut self, epoch: usize, verbose: bool) {
        #[cfg(feature = "mpi")]
        if let Some(s) = &mut self.sync {
            let st = s.take_stats();
            if verbose && self.stats && st.steps > 0 {
                let per_step = |x: f64| x / st.steps as f64 * 1e3;
                println!(
                    "epoch {epoch}: all-reduce {:.2} ms/step ({} buckets, {:.2} MB/step per rank), \
                     waited {:.2} ms/step after backward: {:.0}% hidden behind backward",
                    per_step(st.comm_seconds),
                    s.buckets(),
                    st.bytes as f64 / st.steps as f64 / 1e6,
                    per_step(st.wait_seconds),
                    st.hidden_fraction() * 100.0
                );
            }
        }
    }
}

/// Trains `model` on `data`. Returns one [`EpochStats`] per epoch trained.
/// The model's parameters must be variables on one device; batches go
/// there. A batch size of 0, a validation split outside `[0, 1)`, or no
/// training data is an [`Error::InvalidArgument`].
///
/// Training steps run with the model's mode flags as they are when `fit`
/// is called (a sub-module put in evaluation mode, a BatchNorm frozen for
/// fine-tuning, stays so), or all in training mode when none is; the model
/// is left in those modes.
pub fn fit(
    model: &dyn Module,
    optimizer: &mut dyn Optimizer,
    data: &Dataset,
    config: &FitConfig,
) -> Result<Vec<EpochStats>> {
    let device = device_of(model);
    if config.batch_size == 0 {
        return invalid("fit", "batch_size must be at least 1".into());
    }
    if !(0.0..1.0).contains(&config.validation_split) {
        return invalid("fit", format!("validation_split must be in [0, 1), not {}", config.validation_split));
    }
    if config.validation_data.is_some() && config.validation_split > 0.0 {
        return invalid("fit", "validation_data and validation_split are both set: choose one".into());
    }
    let mut generator = Generator::new(config.shuffle_seed);
    let (train, held_out) = if let Some(v) = &config.validation_data {
        (Cow::Borrowed(data), Some(Cow::Borrowed(v)))
    } else if config.validation_split > 0.0 {
        let (t, v) = if config.shuffle_before_split {
            // Its own stream, so the epochs' shuffles do not depend on it.
            data.split_shuffled(config.validation_split, &mut Generator::new(!config.shuffle_seed))
        } else {
            data.split_last(config.validation_split)
        };
        (Cow::Owned(t), Some(Cow::Owned(v)))
    } else {
        (Cow::Borrowed(data), None)
    };
    if train.is_empty() {
        return invalid(
            "fit",
            format!("no training data ({} items, validation_split {})", data.len(), config.validation_split),
        );
    }
    let held_out = held_out.filter(|v| !v.is_empty());
    if let Some(v) = &held_out
        && config.verbose
        && is_primary()
        && config.validation_data.is_none()
        && !config.shuffle_before_split
        && v.classes().is_some()
        && v.distinct_labels() < train.distinct_labels()
    {
        eprintln!(
            "wgrad: the validation split (the last {} items) holds {} of the {} classes the training part has; \
             data sorted by class validates on a few classes only (FitConfig::shuffle_before_split picks the \
             held-out items at random)",
            v.len(),
            v.distinct_labels(),
            train.distinct_labels()
        );
    }
    let (loss, metrics) = objective(&train, &config.loss, &config.metrics);
    let loss_fn = Objective::new(&loss, &device);
    let params = model.parameters();
    let steps_per_epoch = train.len().div_ceil(config.batch_size);
    let epochs = config.epochs.saturating_sub(config.initial_epoch);
    // Counted from the start of training, resumed epochs included, so a
    // schedule continues a resumed run as it would have gone on.
    let total_steps = steps_per_epoch * config.epochs;
    if !model.is_training() {
        model.train();
    }
    let training_modes = crate::nn::modes(model);
    // The shuffles of the epochs already trained, so a resumed run shuffles
    // as an uninterrupted one.
    let mut order: Vec<usize> = (0..train.len()).collect();
    for _ in 0..config.initial_epoch {
        generator.shuffle(&mut order);
    }
    let base_rate = optimizer.learning_rate();
    let keep = KeepRate { rate: base_rate, optimizer };
    if let Some(s) = &config.schedule {
        s.reset();
    }
    for c in &config.callbacks {
        c.on_train_begin();
    }
    let mut history = Vec::with_capacity(epochs);
    let mut step = config.initial_epoch * steps_per_epoch;
    let verbose = config.verbose && is_primary();
    let mut parallel = Parallel::new(config, &params);
    let reduce = parallel.reduce();
    for epoch in config.initial_epoch + 1..=config.epochs {
        crate::nn::set_modes(model, &training_modes);
        // The epoch's order (Dataset::batches's): the same on every rank of
        // a data-parallel job, each taking its share of every batch.
        let mut order: Vec<usize> = (0..train.len()).collect();
        generator.shuffle(&mut order);
        let bar = progress_bar(verbose, steps_per_epoch, epoch, config.epochs);
        let started = Instant::now();
        let mut last_line = started;
        let mut running = Running::new(&metrics, loss_fn.targets(), &device);
        let mut lr = base_rate;
        // The optimizer, shared by the schedule and the captured step.
        let opt = RefCell::new(&mut *keep.optimizer);
        let clip = config.clip_grad_norm;
        let mut captured = (config.capture && !parallel.distributed() && !device.is_cpu()).then(|| {
            CapturedStep::new(|xy: &[Tensor]| {
                let out = model.forward(&xy[0]);
                let loss = loss_fn.compute(&out, &xy[1]);
                let mut grads = loss.backward();
                if let Some(max_norm) = clip {
                    clip_grad_norm(&mut grads, &params, max_norm);
                }
                opt.borrow_mut().step(&grads);
                vec![out.detach(), loss.detach()]
            })
        });
        for (i, global) in order.chunks(config.batch_size).enumerate() {
            if let Some(s) = &config.schedule {
                lr = s.lr(base_rate, Progress { step, epoch: epoch - 1, steps_per_epoch, total_steps });
                opt.borrow_mut().set_learning_rate(lr);
            }
            let local = parallel.shard(global);
            if let Some(captured) = captured.as_mut() {
                let (x, y) = train.gather(local, &device);
                let outs = captured.run(&[x, y.clone()])?;
                running.add(&outs[0], &y, &outs[1], loss_fn.kept(&y));
            } else {
                let mut grads = if local.is_empty() {
                    parallel.backward(None, 0.0)?
                } else {
                    let (x, y) = train.gather(local, &device);
                    let out = model.forward(&x);
                    let loss = loss_fn.compute(&out, &y);
                    let kept = loss_fn.kept(&y);
                    // What this rank's loss is a mean over, for the average over
                    // ranks (read back only in a data-parallel job).
                    let count = match &kept {
                        Some(k) if parallel.distributed() => k.to_vec()?[0],
                        _ => local.len() as f32,
                    };
                    let grads = parallel.backward(Some(&loss), count)?;
                    running.add(&out, &y, &loss, kept);
                    grads
                };
                if let Some(max_norm) = config.clip_grad_norm {
                    clip_grad_norm(&mut grads, &params, max_norm);
                }
                opt.borrow_mut().step(&grads);
            }
            step += 1;
            // Reading metrics waits for the device: do it now and then.
            let done = i + 1;
            let report = if bar.is_hidden() {
                verbose && last_line.elapsed() >= Duration::from_secs(5) && done < steps_per_epoch
            } else {
                done % 25 == 0 || done == steps_per_epoch
            };
            if report {
                // Rank 0's running figures (the epoch's line is reduced).
                let m = running.read(None)?;
                let rate = (running.seen() * parallel.world()) as f64 / started.elapsed().as_secs_f64();
                let text = format!("loss {:.4}{} - {rate:.0} samples/s", m.loss, metric_text(&m, ""));
                if bar.is_hidden() {
                    println!("epoch {epoch}/{}: {done}/{steps_per_epoch} - {text}", config.epochs);
                    last_line = Instant::now();
                } else {
                    bar.set_position(done as u64);
                    bar.set_message(text);
                }
            }
        }
        drop(captured);
        let train_metrics = running.read(reduce.as_deref())?;
        let seconds = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        // Each rank's running statistics followed its own shards: evaluate
        // and save rank 0's everywhere.
        parallel.sync_buffers(model)?;
        let validation = match &held_out {
            Some(v) if parallel.world() > 1 => {
                // Each rank evaluates its block of the held-out items.
                let all: Vec<usize> = (0..v.len()).collect();
                let part = v.subset(parallel.shard(&all));
                Some(evaluate_objective(model, &part, config.batch_size, &loss_fn, &metrics, reduce.as_deref())?)
            }
            Some(v) => Some(evaluate_objective(model, v, config.batch_size, &loss_fn, &metrics, None)?),
            None => None,
        };
        parallel.report(epoch, verbose);
        if let Some(s) = &config.schedule {
            s.epoch_end(validation.as_ref().map_or(train_metrics.loss, |v| v.loss));
        }
        if verbose {
            let mut line = format!(
                "epoch {epoch}/{}: loss {:.4}{}",
                config.epochs,
                train_metrics.loss,
                metric_text(&train_metrics, "")
            );
            if let Some(v) = &validation {
                line += &format!(" - val_loss {:.4}{}", v.loss, metric_text(v, "val_"));
            }
            line += &format!(" - {} ({:.0} samples/s)", duration(seconds), train.len() as f64 / seconds);
            println!("{line}");
        }
        let stats = EpochStats { epoch, train: train_metrics, validation, seconds, lr };
        // Callbacks see the optimizer's own rate, not the schedule's: a
        // checkpoint must not save the scheduled rate as the one a resumed
        // run schedules from. The next step sets the schedule's again.
        keep.optimizer.set_learning_rate(base_rate);
        let mut stop = false;
        for c in &config.callbacks {
            let end = EpochEnd { stats: &stats, model, optimizer: &*keep.optimizer };
            stop |= c.on_epoch_end(&end)? == Control::Stop;
        }
        // One rank's callback stopping stops every rank.
        let stop = parallel.any(stop);
        history.push(stats);
        if stop {
            if verbose {
                println!("stopped after epoch {epoch}: a callback asked to");
            }
            break;
        }
    }
    for c in &config.callbacks {
        c.on_train_end(model)?;
    }
    Ok(history)
}

/// " - accuracy 0.9123 - …" for a summary line.
fn metric_text(m: &Metrics, prefix: &str) -> String {
    m.values.iter().map(|(n, v)| format!(" - {prefix}{n} {v:.4}")).collect()
}

fn progress_bar(verbose: bool, steps: usize, epoch: usize, epochs: usize) -> ProgressBar {
    if !verbose || !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stdout());
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {epoch}/{epochs}"));
    bar
}

/// The loss and metrics of `model` over `data`, in evaluation mode (dropout
/// off) and without recording gradients; each of the model's mode flags is
/// restored afterwards as it was. The loss and metrics are those the dataset calls for
/// (cross-entropy and accuracy for classification, MSE and MAE for
/// regression); [`evaluate_with`] takes others. An empty dataset or a batch
/// size of 0 is an error.
pub fn evaluate(model: &dyn Module, data: &Dataset, batch_size: usize) -> Result<Metrics> {
    let (loss, metrics) = objective(data, &None, &None);
    evaluate_with(model, data, batch_size, &loss, &metrics)
}

/// As [`evaluate`], with the loss and metrics given.
pub fn evaluate_with(
    model: &dyn Module,
    data: &Dataset,
    batch_size: usize,
    loss: &Loss,
    metrics: &[Metric],
) -> Result<Metrics> {
    evaluate_objective(model, data, batch_size, &Objective::new(loss, &device_of(model)), metrics, None)
}

/// As [`evaluate_with`], with the loss ready for the model's device; with
/// `reduce`, `data` is this rank's part and the sums are reduced over the
/// ranks (a rank's part may then be empty).
fn evaluate_objective(
    model: &dyn Module,
    data: &Dataset,
    batch_size: usize,
    loss: &Objective,
    metrics: &[Metric],
    reduce: Reduce,
) -> Result<Metrics> {
    let device = device_of(model);
    if (data.is_empty() && reduce.is_none()) || batch_size == 0 {
        return invalid("evaluate", format!("nothing to evaluate ({} items, batch size {batch_size})", data.len()));
    }
    let _mode = crate::nn::EvalMode::enter(model);
    no_grad(|| {
        let mut running = Running::new(metrics, loss.targets(), &device);
        for (x, y) in data.batches(batch_size, None, &device) {
            let out = model.forward(&x);
            running.add(&out, &y, &loss.compute(&out, &y), loss.kept(&y));
        }
        running.read(reduce)
    })
}

/// Class predictions (arg-max of the outputs) for every item of `data`, in
/// evaluation mode (each of the model's mode flags is restored afterwards).
pub fn predict(model: &dyn Module, data: &Dataset, batch_size: usize) -> Result<Vec<usize>> {
    let outputs = predict_outputs(model, data, batch_size)?;
    if data.is_empty() {
        // No outputs to take an arg-max of (their shape is not known).
        return Ok(Vec::new());
    }
    Ok(no_grad(|| outputs.argmax(-1, false)).to_vec()?.into_iter().map(|v| v as usize).collect())
}

/// The model's outputs for every item of `data`, stacked along the first
/// axis, in evaluation mode (for regression, or probabilities). For an
/// empty `data` the model is not run, and the result is an empty tensor
/// shaped `[0, target dims..]` (`[0]` for a classifier).
pub fn predict_outputs(model: &dyn Module, data: &Dataset, batch_size: usize) -> Result<Tensor> {
    let device = device_of(model);
    if batch_size == 0 {
        return invalid("predict", "batch size must be at least 1".into());
    }
    let _mode = crate::nn::EvalMode::enter(model);
    no_grad(|| {
        let outs: Vec<Tensor> = data.batches(batch_size, None, &device).map(|(x, _)| model.forward(&x)).collect();
        if outs.is_empty() {
            let mut dims = vec![0];
            dims.extend_from_slice(data.target_shape());
            return Ok(Tensor::zeros(dims, &device));
        }
        let refs: Vec<&Tensor> = outs.iter().collect();
        Ok(Tensor::cat(&refs, 0))
    })
}

#[cfg(test)]
mod tests {
    use super::shard_range;

    /// For every batch length and world size: the ranks' blocks tile the
    /// batch in rank order, differ by at most one item where every rank
    /// gets two or more, and no rank gets a single item of a larger batch.
    #[test]
    fn shards_tile_the_batch_and_never_hold_a_single_item() {
        for size in 1..=8 {
            for len in 0..=40 {
                let blocks: Vec<_> = (0..size).map(|r| shard_range(len, r, size)).collect();
                let mut at = 0;
                for b in &blocks {
                    assert_eq!(b.start, at, "{len} over {size}: {blocks:?}");
                    assert!(b.end >= b.start);
                    at = b.end;
                }
                assert_eq!(at, len, "{len} over {size}: {blocks:?}");
                if len > 1 {
                    assert!(blocks.iter().all(|b| b.len() != 1), "{len} over {size}: {blocks:?}");
                }
                if len >= 2 * size {
                    let lens: Vec<usize> = blocks.iter().map(|b| b.len()).collect();
                    assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1, "{lens:?}");
                }
            }
        }
    }
}
