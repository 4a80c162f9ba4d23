//! Captured training steps: a step recorded once on the GPU and replayed,
//! as CUDA graphs (`torch.cuda.graphs`) and tinygrad's `TinyJit` replay
//! theirs.
//!
//! An eager GPU step pays host time for every op: building the tape,
//! planning fusion, allocating buffers, looking up pipelines and bind
//! groups, encoding. A [`CapturedStep`] runs its closure eagerly once (a
//! warm-up: optimizer state is created, matmul kernels are tuned), records
//! the second run's dispatches, and from then on replays them — the same
//! kernels on the same buffers — after copying the new inputs into the
//! buffers the recording reads. Only what changes from step to step is
//! rewritten: dropout keys (drawn from the thread's default generator as
//! an eager step draws them), device-side checks, and the optimizer's step
//! count and learning rate (read from the optimizer at each replay, so a
//! schedule's [`set_learning_rate`](crate::optim::Optimizer::set_learning_rate)
//! reaches replayed steps, and its step counts and
//! [`state_dict`](crate::optim::Optimizer::state_dict) stay those of an
//! eager run). A replayed step computes exactly what the eager step would:
//! the same kernels on the same values, bit for bit.
//!
//! ```no_run
//! use wgrad::nn::{self, Module};
//! use wgrad::optim::{Adam, Optimizer};
//! use wgrad::{CapturedStep, Device, Tensor};
//! # fn main() -> wgrad::Result<()> {
//! let dev = Device::best();
//! let model = nn::Sequential::new().add(nn::Linear::new(784, 10, &dev));
//! let mut opt = Adam::new(model.parameters(), 1e-3);
//! let mut step = CapturedStep::new(|xy: &[Tensor]| {
//!     let loss = model.forward(&xy[0]).cross_entropy(&xy[1]);
//!     opt.step(&loss.backward());
//!     vec![loss]
//! });
//! # let batches: Vec<(Tensor, Tensor)> = Vec::new();
//! for (x, y) in batches {
//!     let loss = &step.run(&[x, y])?[0];
//! }
//! # Ok(())
//! # }
//! ```
//!
//! What the closure must do, as for CUDA graphs and `TinyJit`: the same
//! work for inputs of the same shapes. It may not read values back (a
//! capture that does is not replayed: the step stays eager, see
//! [`CapturedStep::fallback`]), and host-side decisions it makes (a mode
//! switch, a frozen layer) are frozen in the recording — call
//! [`CapturedStep::invalidate`] after changing them. Inputs of other shapes
//! (a last, smaller batch) run eagerly without disturbing the recording.
//! Replacing a tensor the step updates (e.g. `load_state_dict` on the
//! optimizer) is noticed, and the step is captured again after an eager
//! warm-up (which creates the new optimizer's state). State the step
//! carries to its next run must be updated in place (as optimizers and
//! BatchNorm's running statistics are), not replaced by a new tensor (a
//! recurrent state kept as `self.h = new_h`): a replay reads what the
//! captured run read. Host-side random numbers (`Tensor::randn` inside the
//! step) and work on another device keep a step eager. On the CPU, or with
//! inputs on different devices, every run is eager.
//!
//! Outputs are fresh tensors at every run (the recording's own output
//! buffers are copied), so a loss kept from an earlier step keeps its value.
//! The recording holds every buffer the step uses, intermediates included,
//! until it drops: a captured step needs the memory of all of them at once,
//! where an eager step reuses some within the step.

use crate::backend::Storage;
use crate::backend::gpu::capture::{self, Recording};
use crate::backend::gpu::{GpuBuffer, Pooled};
use crate::{Device, GpuDevice, Result, Shape, Tensor};
use std::sync::Arc;

/// Failed captures (each replaced by a fresh one at the next run) before a
/// step gives up and stays eager.
const MAX_FAILED_CAPTURES: u32 = 2;

/// A training step recorded once and replayed; see the [module
/// docs](self).
pub struct CapturedStep<F> {
    f: F,
    state: State,
    failed: u32,
    stats: CaptureStats,
}

enum State {
    /// Eager runs left before capturing.
    WarmUp(u32),
    Captured(Box<Graph>),
    /// Capturing failed: eager for good, and why.
    Eager(String),
}

/// A recording and the buffers it reads inputs from and writes outputs to.
struct Graph {
    gpu: GpuDevice,
    recording: Recording,
    inputs: Vec<(Shape, Arc<Pooled>)>,
    outputs: Vec<(Shape, Arc<Pooled>)>,
}

/// How a [`CapturedStep`]'s runs went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Runs executed eagerly: the warm-up, inputs of other shapes, CPU runs,
    /// and every run after capturing failed.
    pub eager: u64,
    /// Runs that were captured (each also computed its step).
    pub captures: u64,
    /// Runs replayed from the recording.
    pub replays: u64,
}

/// Ends a capture the closure left by panicking.
struct Capturing;

impl Drop for Capturing {
    fn drop(&mut self) {
        capture::abort();
    }
}

impl<F: FnMut(&[Tensor]) -> Vec<Tensor>> CapturedStep<F> {
    /// A step running `f` on its inputs and returning its outputs (e.g. the
    /// loss). The first run is eager, the second is captured, later ones
    /// are replayed.
    pub fn new(f: F) -> Self {
        CapturedStep { f, state: State::WarmUp(1), failed: 0, stats: CaptureStats::default() }
    }

    /// Runs the step on `inputs`: replayed when a recording for their
    /// shapes exists, else eagerly (capturing it when it is time). Errors
    /// are the device's (a lost device, memory); a step whose data is bad
    /// returns tensors that fail when read, as an eager step does.
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        // Inside another step's capture: eager, so that it records this one.
        let Some(gpu) = gpu_of(inputs).filter(|_| !capture::active()) else { return Ok(self.eager(inputs)) };
        if let State::Captured(graph) = &mut self.state
            && graph.gpu == gpu
        {
            let fits = graph.inputs.len() == inputs.len()
                && graph.inputs.iter().zip(inputs).all(|((shape, _), x)| shape == x.shape());
            if !fits {
                return Ok(self.eager(inputs));
            }
            if graph.recording.stale() {
                // Something it updates was replaced: warm up (the new
                // owner may create state in its first step), then capture.
                self.state = State::WarmUp(1);
            } else if let Some(out) = graph.replay(inputs)? {
                self.stats.replays += 1;
                return Ok(out);
            } else {
                // A poisoned input: the eager step carries its error.
                return Ok(self.eager(inputs));
            }
        }
        match &mut self.state {
            State::WarmUp(n) if *n > 0 => {
                *n -= 1;
                Ok(self.eager(inputs))
            }
            State::Eager(_) => Ok(self.eager(inputs)),
            _ => self.capture(gpu, inputs),
        }
    }

    /// Captures the step again at the next run (after a change the
    /// recording cannot see: a module switched to eval mode, a parameter
    /// frozen, a hyper-parameter other than the learning rate).
    pub fn invalidate(&mut self) {
        if let State::Captured(_) | State::Eager(_) = self.state {
            // A warm-up first: the change may make the next step create
            // state (the moments of a parameter unfrozen).
            self.state = State::WarmUp(1);
            self.failed = 0;
        }
    }

    /// How the runs went so far.
    pub fn stats(&self) -> CaptureStats {
        self.stats
    }

    /// Kernels one replay dispatches (`None` before a capture).
    pub fn dispatches(&self) -> Option<usize> {
        match &self.state {
            State::Captured(g) => Some(g.recording.dispatches()),
            _ => None,
        }
    }

    /// Why the step stays eager, if capturing it failed (it read a value
    /// back, or an output failed).
    pub fn fallback(&self) -> Option<&str> {
        match &self.state {
            State::Eager(why) => Some(why),
            _ => None,
        }
    }

    /// A capture that cannot be replayed (its run computed the step): the
    /// next run captures again, or after too many, every run is eager.
    fn failed_capture(&mut self, why: String) {
        self.failed += 1;
        self.state = if self.failed >= MAX_FAILED_CAPTURES { State::Eager(why) } else { State::WarmUp(0) };
        self.stats.eager += 1;
    }

    fn eager(&mut self, inputs: &[Tensor]) -> Vec<Tensor> {
        self.stats.eager += 1;
        (self.f)(inputs)
    }

    /// Runs the step while recording it.
    fn capture(&mut self, gpu: GpuDevice, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.state = State::WarmUp(0);
        let ctx = &gpu.ctx;
        let dev = Device::Gpu(gpu.clone());
        // The recording reads its inputs from buffers of its own.
        let mut owned = Vec::with_capacity(inputs.len());
        for x in inputs {
            let Some(src) = computed(x) else { return Ok(self.eager(inputs)) };
            let dst = ctx.alloc("captured step", x.elem_count())?;
            capture::copy(ctx, &src, &dst, 4 * x.elem_count() as u64);
            owned.push((x.shape().clone(), dst));
        }
        let tensors: Vec<Tensor> =
            owned.iter().map(|(shape, b)| Tensor::from_storage(gpu_storage(b), shape.clone(), dev.clone())).collect();
        if !capture::begin(ctx) {
            return Ok(self.eager(inputs));
        }
        let guard = Capturing;
        let outs = (self.f)(&tensors);
        let buffers: Vec<GpuBuffer> = outs
            .iter()
            .map(|o| match &*o.read() {
                Storage::Gpu(b) if o.device() == dev => b.clone(),
                _ => {
                    capture::invalidate(ctx, "an output of the step is not on its device");
                    GpuBuffer::poisoned(crate::Error::Gpu("not on the device".into()))
                }
            })
            .collect();
        let recording = capture::end(ctx, &buffers.iter().collect::<Vec<_>>());
        drop(guard);
        drop(tensors);
        if let Some(why) = recording.invalid() {
            let why = why.to_string();
            self.failed_capture(why);
            return Ok(outs);
        }
        let outputs: Vec<(Shape, Arc<Pooled>)> =
            outs.iter().zip(&buffers).filter_map(|(o, b)| Some((o.shape().clone(), b.get().ok()?.clone()))).collect();
        drop((outs, buffers));
        let graph = Graph { gpu: gpu.clone(), recording, inputs: owned, outputs };
        let result = graph.outputs()?;
        self.state = State::Captured(Box::new(graph));
        self.failed = 0;
        self.stats.captures += 1;
        Ok(result)
    }
}

impl Graph {
    /// One replay on `inputs` (copied into the recording's input
    /// buffers); `None` if an input is poisoned.
    fn replay(&mut self, inputs: &[Tensor]) -> Result<Option<Vec<Tensor>>> {
        let ctx = &self.gpu.ctx;
        let mut sources = Vec::with_capacity(inputs.len());
        for x in inputs {
            let Some(src) = computed(x) else { return Ok(None) };
            sources.push(src);
        }
        for (src, (shape, dst)) in sources.iter().zip(&self.inputs) {
            capture::copy(ctx, src, dst, 4 * shape.elem_count() as u64);
        }
        self.recording.replay(ctx)?;
        self.outputs().map(Some)
    }

    /// Fresh copies of the output buffers.
    fn outputs(&self) -> Result<Vec<Tensor>> {
        let ctx = &self.gpu.ctx;
        let dev = Device::Gpu(self.gpu.clone());
        self.outputs
            .iter()
            .map(|(shape, src)| {
                let dst = ctx.alloc("captured step", shape.elem_count())?;
                capture::copy(ctx, src, &dst, 4 * shape.elem_count() as u64);
                Ok(Tensor::from_storage(gpu_storage(&dst), shape.clone(), dev.clone()))
            })
            .collect()
    }
}

/// The GPU all `inputs` are on, if they are all on one.
fn gpu_of(inputs: &[Tensor]) -> Option<GpuDevice> {
    let Device::Gpu(gpu) = inputs.first()?.device() else { return None };
    inputs.iter().all(|x| x.device() == Device::Gpu(gpu.clone())).then_some(gpu)
}

/// `x`'s buffer, computed; `None` if it is poisoned.
fn computed(x: &Tensor) -> Option<Arc<Pooled>> {
    match &*x.read() {
        Storage::Gpu(b) => b.get().ok().cloned(),
        _ => None,
    }
}

fn gpu_storage(b: &Arc<Pooled>) -> Storage {
    Storage::Gpu(GpuBuffer::ready(Ok(b.clone())))
}
