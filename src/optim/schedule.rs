//! Learning-rate schedules, applied by [`crate::train::fit`] before every
//! optimizer step. Each maps the optimizer's own learning rate when
//! training began (`base`) and the progress so far to the rate for the next
//! step; `fit` puts the optimizer's rate back as it found it when it ends,
//! so a schedule never leaks into the next `fit`.
//!
//! ```
//! use wgrad::optim::{Cosine, LinearWarmup, LrSchedule, Progress, StepDecay};
//! let at = |step, epoch| Progress { step, epoch, steps_per_epoch: 10, total_steps: 100 };
//! assert_eq!(StepDecay { every: 2, gamma: 0.5 }.lr(0.1, at(45, 4)), 0.025);
//! let warm = LinearWarmup { steps: 10 };
//! assert_eq!(warm.lr(1.0, at(4, 0)), 0.5);
//! assert_eq!(warm.lr(1.0, at(50, 5)), 1.0);
//! let cos = Cosine { warmup: 0, min_lr: 0.0 };
//! assert!((cos.lr(1.0, at(50, 5)) - 0.5).abs() < 1e-6);
//! ```

use crate::train::improved;
use std::sync::Mutex;

/// Where training is, for a schedule. Every field counts from the start of
/// training, not of this call of `fit`: a run resumed from a checkpoint
/// (`FitConfig::initial_epoch`) sees the steps and epochs it would have
/// seen uninterrupted, so its schedule continues where it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Optimizer steps taken since training began (0 for the first),
    /// those of the epochs a resumed run skips included:
    /// `initial_epoch · steps_per_epoch` plus the steps of this run.
    pub step: usize,
    /// The epoch the step belongs to (0-based, counting resumed epochs).
    pub epoch: usize,
    /// Steps in one epoch.
    pub steps_per_epoch: usize,
    /// Steps of the whole training, `steps_per_epoch · epochs`
    /// (`FitConfig::epochs`, which counts the epochs a resumed run skips).
    pub total_steps: usize,
}

/// A learning rate for every step.
pub trait LrSchedule: Send + Sync {
    /// The rate for the step `at`, given `base`, the optimizer's rate when
    /// training began.
    fn lr(&self, base: f32, at: Progress) -> f32;

    /// Called after each epoch with the monitored loss (the validation loss
    /// when there is a validation set, else the training loss); schedules
    /// that react to it (reduce-on-plateau) do so here.
    fn epoch_end(&self, _loss: f32) {}

    /// Called when training begins, to forget what an earlier run learnt.
    fn reset(&self) {}
}

/// Multiplies the rate by `gamma` every `every` epochs (PyTorch's `StepLR`).
#[derive(Clone, Copy, Debug)]
pub struct StepDecay {
    /// Epochs between decays.
    pub every: usize,
    /// Factor applied at each decay.
    pub gamma: f32,
}

impl LrSchedule for StepDecay {
    fn lr(&self, base: f32, at: Progress) -> f32 {
        base * self.gamma.powi((at.epoch / self.every.max(1)) as i32)
    }
}

/// Rises linearly from `base/steps` to `base` over the first `steps` steps,
/// then holds it.
#[derive(Clone, Copy, Debug)]
pub struct LinearWarmup {
    /// Steps of warm-up.
    pub steps: usize,
}

impl LinearWarmup {
    /// The warm-up's rate at `step` (`base` from step `steps - 1` on).
    fn rate(steps: usize, base: f32, step: usize) -> f32 {
        base * ((step + 1) as f32 / steps.max(1) as f32).min(1.0)
    }
}

impl LrSchedule for LinearWarmup {
    fn lr(&self, base: f32, at: Progress) -> f32 {
        LinearWarmup::rate(self.steps, base, at.step)
    }
}

/// Half a cosine from `from` (at `t = 0`) to `to` (at `t = 1`), PyTorch's
/// `_annealing_cos`; `t` is clamped to `[0, 1]`.
fn cosine_anneal(from: f32, to: f32, t: f64) -> f32 {
    let t = t.clamp(0.0, 1.0);
    let (from, to) = (f64::from(from), f64::from(to));
    (to + (from - to) / 2.0 * ((std::f64::consts::PI * t).cos() + 1.0)) as f32
}

/// Linear warm-up over `warmup` steps, then cosine annealing from `base`
/// to `min_lr` over the rest of training (PyTorch's `CosineAnnealingLR`
/// after a warm-up).
#[derive(Clone, Copy, Debug)]
pub struct Cosine {
    /// Steps of linear warm-up (0 for none).
    pub warmup: usize,
    /// The rate at the end of training.
    pub min_lr: f32,
}

impl LrSchedule for Cosine {
    fn lr(&self, base: f32, at: Progress) -> f32 {
        if at.step < self.warmup {
            return LinearWarmup::rate(self.warmup, base, at.step);
        }
        let span = at.total_steps.saturating_sub(self.warmup).max(1);
        cosine_anneal(base, self.min_lr, (at.step - self.warmup) as f64 / span as f64)
    }
}

/// The one-cycle policy (PyTorch's `OneCycleLR` with cosine annealing, step
/// for step): from `base/div_factor` up to `base` at step
/// `pct_start·total_steps - 1`, then down to `base/(div_factor·final_div_factor)`
/// at the last step, `total_steps - 1`. The optimizer's own rate is the peak.
#[derive(Clone, Copy, Debug)]
pub struct OneCycle {
    /// Fraction of training spent rising (PyTorch's default 0.3).
    pub pct_start: f32,
    /// The starting rate is `base / div_factor` (default 25).
    pub div_factor: f32,
    /// The final rate is the starting one divided by this (default 1e4).
    pub final_div_factor: f32,
}

impl Default for OneCycle {
    fn default() -> Self {
        OneCycle { pct_start: 0.3, div_factor: 25.0, final_div_factor: 1e4 }
    }
}

impl LrSchedule for OneCycle {
    fn lr(&self, base: f32, at: Progress) -> f32 {
        let start = base / self.div_factor;
        let end = start / self.final_div_factor;
        // PyTorch's phase ends: the peak at step `pct_start·total - 1` (a
        // float), the end at step `total - 1`.
        let total = at.total_steps as f64;
        let peak = f64::from(self.pct_start) * total - 1.0;
        let last = total - 1.0;
        let step = at.step as f64;
        // A phase of no length is over as soon as it starts.
        let fraction = |from: f64, to: f64| if to > from { (step - from) / (to - from) } else { 1.0 };
        if step <= peak {
            cosine_anneal(start, base, fraction(0.0, peak))
        } else {
            cosine_anneal(base, end, fraction(peak, last))
        }
    }
}

/// Multiplies the rate by `factor` when the monitored loss has not improved
/// by more than `threshold` (relative) for `patience` epochs, down to
/// `min_lr` (PyTorch's `ReduceLROnPlateau` in `min` mode). A NaN loss never
/// counts as an improvement.
///
/// Its state (the best loss, the epochs since, the reductions made) lives
/// in the schedule, not in the optimizer, so
/// [`save_checkpoint`](crate::io::save_checkpoint) does not save it: a run
/// resumed from a checkpoint starts it afresh (at the full rate, with no best
/// loss) and does not train bit for bit as an uninterrupted one. The
/// schedules that are functions of [`Progress`] (all the others) resume
/// exactly.
#[derive(Debug)]
pub struct ReduceOnPlateau {
    /// Factor applied at each reduction.
    pub factor: f32,
    /// Epochs without improvement tolerated before reducing.
    pub patience: usize,
    /// Relative improvement that counts.
    pub threshold: f32,
    /// The rate never goes below this.
    pub min_lr: f32,
    /// (the best loss so far, epochs since it, the current multiplier)
    state: Mutex<Plateau>,
}

/// What [`ReduceOnPlateau`] remembers: the best loss (none yet before the
/// first finite one), the epochs since it, and the multiplier of the rate.
type Plateau = (Option<f32>, usize, f32);

impl ReduceOnPlateau {
    /// PyTorch's defaults: factor 0.1, patience 10, threshold 1e-4, no floor.
    pub fn new() -> Self {
        ReduceOnPlateau { factor: 0.1, patience: 10, threshold: 1e-4, min_lr: 0.0, state: Mutex::new((None, 0, 1.0)) }
    }

    /// The same, with `factor` and `patience`.
    pub fn with(factor: f32, patience: usize) -> Self {
        ReduceOnPlateau { factor, patience, ..ReduceOnPlateau::new() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Plateau> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for ReduceOnPlateau {
    fn default() -> Self {
        Self::new()
    }
}

impl LrSchedule for ReduceOnPlateau {
    fn lr(&self, base: f32, _: Progress) -> f32 {
        (base * self.state().2).max(self.min_lr)
    }

    fn epoch_end(&self, loss: f32) {
        let mut s = self.state();
        // Relative: better than `best · (1 - threshold)` (for a loss ≥ 0).
        let min_delta = s.0.map_or(0.0, |best| best.abs() * self.threshold);
        if improved(s.0, loss, false, min_delta) {
            (s.0, s.1) = (Some(loss), 0);
        } else {
            s.1 += 1;
            if s.1 > self.patience {
                s.2 *= self.factor;
                s.1 = 0;
            }
        }
    }

    fn reset(&self) {
        *self.state() = (None, 0, 1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(step: usize, total: usize) -> Progress {
        Progress { step, epoch: step / 10, steps_per_epoch: 10, total_steps: total }
    }

    #[test]
    fn schedules_start_from_the_base_rate() {
        let c = Cosine { warmup: 10, min_lr: 0.01 };
        assert!((c.lr(1.0, at(0, 110)) - 0.1).abs() < 1e-6);
        assert!((c.lr(1.0, at(9, 110)) - 1.0).abs() < 1e-6);
        assert!((c.lr(1.0, at(10, 110)) - 1.0).abs() < 1e-6);
        assert!((c.lr(1.0, at(110, 110)) - 0.01).abs() < 1e-6);
    }

    #[test]
    fn one_cycle_matches_pytorch_step_for_step() {
        // torch.optim.lr_scheduler.OneCycleLR(max_lr=0.5, total_steps=100,
        // anneal_strategy='cos'), the rate of steps 0, 29, 50 and 99
        // (PyTorch 2's defaults: pct_start 0.3, div_factor 25,
        // final_div_factor 1e4): the peak is step 29, the end step 99.
        let one = OneCycle::default();
        for (step, torch) in [(0, 0.020000000000000018), (29, 0.5), (50, 0.396946725287866), (99, 2e-06)] {
            let got = f64::from(one.lr(0.5, at(step, 100)));
            assert!((got - torch).abs() <= 1e-6 * torch, "step {step}: {got}, PyTorch {torch}");
        }
        // Past the end it holds the final rate.
        assert_eq!(one.lr(0.5, at(100, 100)), one.lr(0.5, at(99, 100)));
    }

    #[test]
    fn cosine_warms_up_as_linear_warmup_does() {
        let (c, w) = (Cosine { warmup: 7, min_lr: 0.0 }, LinearWarmup { steps: 7 });
        for step in 0..7 {
            assert_eq!(c.lr(0.3, at(step, 50)), w.lr(0.3, at(step, 50)), "step {step}");
        }
    }

    #[test]
    fn plateau_reduces_after_patience() {
        let p = ReduceOnPlateau::with(0.5, 1);
        for loss in [1.0, 0.9, 0.9, 0.9] {
            p.epoch_end(loss);
        }
        // 0.9 improved on 1.0; two epochs without improvement > patience 1.
        assert_eq!(p.lr(1.0, at(0, 1)), 0.5);
        p.reset();
        assert_eq!(p.lr(1.0, at(0, 1)), 1.0);
    }

    #[test]
    fn a_nan_loss_never_improves_on_the_plateau() {
        // No best loss yet: a NaN is no improvement (two of them exceed
        // patience 1), and the first finite loss after is.
        let p = ReduceOnPlateau::with(0.5, 1);
        for loss in [f32::NAN, f32::NAN, 1.0, 1.0, f32::NAN] {
            p.epoch_end(loss);
        }
        assert_eq!(p.lr(1.0, at(0, 1)), 0.25);
        assert_eq!(p.state().0, Some(1.0));
    }
}
