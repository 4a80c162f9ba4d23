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

use std::sync::Mutex;

/// Where training is, for a schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Optimizer steps taken so far in this run of `fit` (0 for the first).
    pub step: usize,
    /// The epoch the step belongs to (0-based, counting resumed epochs).
    pub epoch: usize,
    /// Steps in one epoch.
    pub steps_per_epoch: usize,
    /// Steps the whole run of `fit` will take.
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

impl LrSchedule for LinearWarmup {
    fn lr(&self, base: f32, at: Progress) -> f32 {
        base * ((at.step + 1) as f32 / self.steps.max(1) as f32).min(1.0)
    }
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
            return base * (at.step + 1) as f32 / self.warmup as f32;
        }
        let span = at.total_steps.saturating_sub(self.warmup).max(1);
        let t = ((at.step - self.warmup) as f32 / span as f32).min(1.0);
        self.min_lr + 0.5 * (base - self.min_lr) * (1.0 + (std::f32::consts::PI * t).cos())
    }
}

/// The one-cycle policy (PyTorch's `OneCycleLR` with cosine annealing): from
/// `base/div_factor` up to `base` over the first `pct_start` of training,
/// then down to `base/(div_factor·final_div_factor)`. The optimizer's own
/// rate is the peak.
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
        let cos = |from: f32, to: f32, t: f32| to + (from - to) * 0.5 * (1.0 + (std::f32::consts::PI * t).cos());
        let start = base / self.div_factor;
        let end = start / self.final_div_factor;
        let up = ((self.pct_start * at.total_steps as f32) as usize).max(1);
        if at.step < up {
            cos(start, base, at.step as f32 / up as f32)
        } else {
            let down = at.total_steps.saturating_sub(up).max(1);
            cos(base, end, ((at.step - up) as f32 / down as f32).min(1.0))
        }
    }
}

/// Multiplies the rate by `factor` when the monitored loss has not improved
/// by more than `threshold` (relative) for `patience` epochs, down to
/// `min_lr` (PyTorch's `ReduceLROnPlateau` in `min` mode).
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
    state: Mutex<(f32, usize, f32)>,
}

impl ReduceOnPlateau {
    /// PyTorch's defaults: factor 0.1, patience 10, threshold 1e-4, no floor.
    pub fn new() -> Self {
        ReduceOnPlateau {
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            min_lr: 0.0,
            state: Mutex::new((f32::INFINITY, 0, 1.0)),
        }
    }

    /// The same, with `factor` and `patience`.
    pub fn with(factor: f32, patience: usize) -> Self {
        ReduceOnPlateau { factor, patience, ..ReduceOnPlateau::new() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (f32, usize, f32)> {
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
        if loss < s.0 * (1.0 - self.threshold) {
            (s.0, s.1) = (loss, 0);
        } else {
            s.1 += 1;
            if s.1 > self.patience {
                s.2 *= self.factor;
                s.1 = 0;
            }
        }
    }

    fn reset(&self) {
        *self.state() = (f32::INFINITY, 0, 1.0);
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
        let one = OneCycle::default();
        assert!((one.lr(0.5, at(0, 100)) - 0.02).abs() < 1e-6);
        assert!((one.lr(0.5, at(30, 100)) - 0.5).abs() < 1e-6);
        assert!((one.lr(0.5, at(100, 100)) - 0.02 / 1e4).abs() < 1e-9);
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
}
