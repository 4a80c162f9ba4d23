//! Learning-rate schedules: the learning rate for an epoch (or step) count.
//!
//! ```
//! use wgrad::optim::{Cosine, LrSchedule, StepDecay};
//! let step = StepDecay { base: 0.1, every: 10, gamma: 0.5 };
//! assert_eq!(step.lr(25), 0.025);
//! let cos = Cosine { base: 1.0, min: 0.0, period: 10 };
//! assert!((cos.lr(5) - 0.5).abs() < 1e-6 && cos.lr(10) == 0.0);
//! ```

/// Maps an epoch (or step) index to a learning rate.
pub trait LrSchedule {
    /// The learning rate at `t` (0-based).
    fn lr(&self, t: usize) -> f32;
}

/// Multiplies the base rate by `gamma` every `every` epochs (PyTorch's `StepLR`).
#[derive(Clone, Copy, Debug)]
pub struct StepDecay {
    /// The rate at t = 0.
    pub base: f32,
    /// Epochs between decays.
    pub every: usize,
    /// Factor applied at each decay.
    pub gamma: f32,
}

impl LrSchedule for StepDecay {
    fn lr(&self, t: usize) -> f32 {
        self.base * self.gamma.powi((t / self.every.max(1)) as i32)
    }
}

/// Cosine annealing from `base` to `min` over `period` epochs, then held at
/// `min` (PyTorch's `CosineAnnealingLR` for one half-period).
#[derive(Clone, Copy, Debug)]
pub struct Cosine {
    /// The rate at t = 0.
    pub base: f32,
    /// The rate at and after t = period.
    pub min: f32,
    /// Length of the annealing.
    pub period: usize,
}

impl LrSchedule for Cosine {
    fn lr(&self, t: usize) -> f32 {
        let t = t.min(self.period) as f32 / self.period.max(1) as f32;
        self.min + 0.5 * (self.base - self.min) * (1.0 + (std::f32::consts::PI * t).cos())
    }
}
