//! Optimizers: SGD (momentum, Nesterov), Adam and AdamW with PyTorch's update
//! rules, gradient clipping by global norm, and learning-rate schedules.
//!
//! An optimizer holds the variables it updates and their state (momentum
//! buffers, Adam moments) on the variables' device. `step` rewrites the
//! parameters and their state in place with fused kernels — on a hardware
//! GPU one multi-tensor dispatch for several parameters, as PyTorch's
//! fused optimizers — so a training step never copies parameters to the
//! host. The learning rate and Adam's step counts are shared with
//! [`crate::CapturedStep`]s, whose replays advance them.
//!
//! ```
//! use wgrad::{Device, Tensor, optim::{Adam, Optimizer}};
//! let w = Tensor::ones([3], &Device::Cpu).requires_grad();
//! let mut opt = Adam::new(vec![w.clone()], 0.1);
//! for _ in 0..100 {
//!     let loss = w.sqr().sum(); // minimum at 0
//!     opt.step(&loss.backward());
//! }
//! assert!(w.to_vec().unwrap().iter().all(|v| v.abs() < 0.1));
//! ```

mod schedule;

pub use schedule::{Cosine, LinearWarmup, LrSchedule, OneCycle, Progress, ReduceOnPlateau, StepDecay};

use crate::backend::gpu::capture;
use crate::backend::{Update, UpdateRule};
use crate::{Error, Gradients, Result, Tensor, no_grad};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A learning rate shared with the steps a [`crate::CapturedStep`] replays,
/// so that a schedule's changes reach them.
struct SharedLr(Arc<AtomicU32>);

impl SharedLr {
    fn new(lr: f32) -> Self {
        SharedLr(Arc::new(AtomicU32::new(lr.to_bits())))
    }
    fn get(&self) -> f32 {
        f32::from_bits(self.0.load(Ordering::Relaxed))
    }
    fn set(&self, lr: f32) {
        self.0.store(lr.to_bits(), Ordering::Relaxed);
    }
}

/// Bumped by `load_state_dict`: a captured step is stale once its
/// optimizer was reloaded (its state and hyper-parameters replaced), even
/// if something else still holds the old state tensors.
#[derive(Default)]
struct Generation(Arc<std::sync::atomic::AtomicU64>);

impl Generation {
    fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// While a step is being captured: its replays need this generation.
    fn guard_capture(&self) {
        if capture::active() {
            let (g, at) = (self.0.clone(), self.0.load(Ordering::Relaxed));
            capture::note_guard(Box::new(move || g.load(Ordering::Relaxed) == at));
        }
    }
}

/// Runs `update` (which records the updates of one rule); while a step is
/// being captured, `rule_of` gives the rule of each replayed step, asked
/// once per replay by whichever of its dispatches comes first.
fn with_replay_rule(
    rule: UpdateRule,
    rule_of: impl FnOnce() -> Box<dyn FnMut() -> UpdateRule + Send>,
    update: impl FnOnce(),
) {
    if capture::active() {
        capture::set_rule(capture::ReplayRule::shared(rule_of(), rule));
        update();
        capture::clear_rule();
    } else {
        update();
    }
}

/// Something that updates variables from their gradients.
pub trait Optimizer {
    /// Applies one update to every variable that has a gradient in `grads`
    /// (variables without one are left alone, as in PyTorch).
    fn step(&mut self, grads: &Gradients);
    /// The current learning rate.
    fn learning_rate(&self) -> f32;
    /// Sets the learning rate (for schedules).
    fn set_learning_rate(&mut self, lr: f32);
    /// Everything the optimizer would need to continue exactly where it
    /// is: its per-parameter state (by the parameter's index, PyTorch's
    /// names: `0.exp_avg`, `0.momentum_buffer`) and its numbers (learning
    /// rate, step counts, hyper-parameters). Saved by
    /// [`crate::io::save_checkpoint`].
    fn state_dict(&self) -> OptimizerState;
    /// Restores a [`state_dict`](Self::state_dict) of an optimizer of the
    /// same kind over parameters of the same shapes; nothing is changed if
    /// it does not fit (a buffer of another shape, or an entry for a
    /// parameter index past this optimizer's).
    fn load_state_dict(&mut self, state: &OptimizerState) -> Result<()>;
}

/// An optimizer's state: named tensors and named numbers.
#[derive(Clone, Debug, Default)]
pub struct OptimizerState {
    /// Per-parameter buffers, named `<parameter index>.<buffer>`.
    pub tensors: Vec<(String, Tensor)>,
    /// The learning rate, hyper-parameters and counters.
    pub scalars: Vec<(String, f64)>,
}

impl OptimizerState {
    /// The number named `name`.
    pub fn scalar(&self, name: &str) -> Result<f64> {
        self.scalars.iter().find(|(n, _)| n == name).map(|&(_, v)| v).ok_or_else(|| missing(name))
    }

    fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Checks that every parameter is a variable, as PyTorch's optimizers
/// refuse "a non-leaf Tensor": a tensor an op computed receives no gradient
/// of its own (`backward` passes through it to its inputs), so it would
/// never be updated. `t.detach().requires_grad()` is a new variable.
fn leaves(optimizer: &str, params: &[Tensor]) {
    if let Some(i) = params.iter().position(|p| !p.is_variable()) {
        panic!(
            "{optimizer}: parameter {i} (shape {}) is not a variable but a tensor an op computed, which gets no \
             gradient of its own; use `.detach().requires_grad()` for a new one",
            params[i].shape()
        );
    }
}

fn missing(name: &str) -> Error {
    Error::Mismatch(format!("optimizer state: no entry named {name:?}"))
}

/// Per-parameter buffers named `names` (in order) for each parameter that
/// has state, read from `state`; checked against the parameters' shapes
/// before anything is changed.
fn load_buffers(params: &[Tensor], state: &OptimizerState, names: &[&str]) -> Result<HashMap<u64, Vec<Tensor>>> {
    // Every entry must belong to one of these parameters, as PyTorch
    // insists that a state's parameter groups have the optimizer's sizes:
    // state saved over more parameters (or other ones) must not be handed
    // out by position to the first few.
    let own = |name: &str, buffer: &dyn Fn(&str) -> bool| {
        name.split_once('.').is_some_and(|(i, n)| i.parse::<usize>().is_ok_and(|i| i < params.len()) && buffer(n))
    };
    for (name, _) in &state.tensors {
        if !own(name, &|n| names.contains(&n)) {
            return Err(Error::Mismatch(format!(
                "optimizer state: {name:?} is not one of this optimizer's buffers ({names:?} of its {} parameters)",
                params.len()
            )));
        }
    }
    for (name, _) in &state.scalars {
        // Per-parameter numbers (`3.step`) name a parameter too.
        if name.split_once('.').is_some_and(|(i, _)| i.parse::<usize>().is_ok()) && !own(name, &|_| true) {
            return Err(Error::Mismatch(format!(
                "optimizer state: {name:?} names a parameter this optimizer (of {} parameters) does not have",
                params.len()
            )));
        }
    }
    let mut out = HashMap::new();
    for (i, p) in params.iter().enumerate() {
        let found: Vec<Option<&Tensor>> = names.iter().map(|n| state.tensor(&format!("{i}.{n}"))).collect();
        if found.iter().all(Option::is_none) {
            continue;
        }
        let mut buffers = Vec::with_capacity(names.len());
        for (n, t) in names.iter().zip(found) {
            let t = t.ok_or_else(|| missing(&format!("{i}.{n}")))?;
            if t.shape() != p.shape() {
                return Err(Error::Mismatch(format!(
                    "optimizer state: {i}.{n} has shape {} but parameter {i} has shape {}",
                    t.shape(),
                    p.shape()
                )));
            }
            // A copy on the parameter's device: the optimizer updates it in place.
            let copy = Tensor::from_vec(t.to_vec()?, t.shape().clone(), &p.device())?;
            buffers.push(copy);
        }
        out.insert(p.id(), buffers);
    }
    Ok(out)
}

/// The buffers of each parameter with state, named `<index>.<name>`.
fn save_buffers(params: &[Tensor], state: &HashMap<u64, Vec<Tensor>>, names: &[&str]) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (i, p) in params.iter().enumerate() {
        if let Some(buffers) = state.get(&p.id()) {
            for (n, t) in names.iter().zip(buffers) {
                out.push((format!("{i}.{n}"), t.clone()));
            }
        }
    }
    out
}

/// Runs one fused update of each `(param, grad)` with its optimizer
/// `state` (`count` buffers, created as zeros on first use), all with
/// `rule`: one multi-tensor step per device where the device has one. A
/// storage shared by two of the tensors (two parameters on one storage, a
/// gradient that is a parameter's) would be locked twice: those updates run
/// one parameter at a time. While a step is being captured, `rule_of`
/// gives the rule of each replayed step.
fn update_all(
    items: &[(&Tensor, &Tensor)],
    state: &mut HashMap<u64, Vec<Tensor>>,
    count: usize,
    rule: UpdateRule,
    rule_of: impl FnOnce() -> Box<dyn FnMut() -> UpdateRule + Send>,
) {
    for &(param, grad) in items {
        assert!(
            param.shape() == grad.shape(),
            "optimizer step: gradient shape {} does not match parameter shape {}",
            grad.shape(),
            param.shape()
        );
        crate::ops::same_device("optimizer step", param, grad);
        let s = state.entry(param.id()).or_default();
        if s.is_empty() {
            *s = (0..count).map(|_| Tensor::zeros(param.shape().clone(), &param.device())).collect();
        }
    }
    // A gradient shared by several parameters is fine (read-locked once).
    let mut written = std::collections::HashSet::new();
    let mut aliased = items.iter().any(|&(p, _)| !written.insert(p.storage_id()));
    aliased |= items.iter().any(|&(_, g)| written.contains(&g.storage_id()));
    let mut groups: Vec<(crate::Device, Vec<(&Tensor, &Tensor)>)> = Vec::new();
    for &item in items {
        let device = item.0.device();
        match groups.iter_mut().find(|(d, _)| *d == device) {
            Some((_, g)) if !aliased => g.push(item),
            _ => groups.push((device, vec![item])),
        }
    }
    with_replay_rule(rule, rule_of, || {
        for (device, group) in &groups {
            let grads: Vec<&Tensor> = group.iter().map(|&(_, g)| g).collect();
            Tensor::with_storages(&grads, |grads| {
                let mut params: Vec<_> = group.iter().map(|&(p, _)| p.write()).collect();
                let mut states: Vec<Vec<_>> =
                    group.iter().map(|&(p, _)| state[&p.id()].iter().map(Tensor::write).collect()).collect();
                let mut updates: Vec<Update> = params
                    .iter_mut()
                    .zip(states.iter_mut())
                    .zip(grads)
                    .zip(group)
                    .map(|(((p, s), g), &(param, _))| Update {
                        param: p,
                        grad: g,
                        state: s.iter_mut().map(|s| &mut **s).collect(),
                        n: param.elem_count(),
                    })
                    .collect();
                device.backend().update_many(rule, &mut updates);
            })
        }
    });
}

/// The parameters of `params` that have a gradient in `grads`, each once.
fn with_grads<'a>(params: &'a [Tensor], grads: &'a Gradients) -> Vec<(&'a Tensor, &'a Tensor)> {
    let mut seen = std::collections::HashSet::new();
    params.iter().filter(|p| seen.insert(p.id())).filter_map(|p| Some((p, grads.get(p)?))).collect()
}

/// Stochastic gradient descent with optional momentum, Nesterov momentum and
/// (L2) weight decay: PyTorch's `torch.optim.SGD` with `dampening = 0`.
pub struct Sgd {
    params: Vec<Tensor>,
    lr: SharedLr,
    momentum: f32,
    nesterov: bool,
    weight_decay: f32,
    state: HashMap<u64, Vec<Tensor>>,
    generation: Generation,
}

impl Sgd {
    /// Plain SGD over `params` with learning rate `lr`. Panics if one of
    /// them is not a variable but a tensor an op computed (PyTorch's
    /// optimizers refuse a non-leaf tensor too).
    pub fn new(params: Vec<Tensor>, lr: f32) -> Self {
        leaves("Sgd", &params);
        Sgd {
            params,
            lr: SharedLr::new(lr),
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            state: HashMap::new(),
            generation: Generation::default(),
        }
    }

    /// Sets the momentum factor.
    pub fn momentum(mut self, momentum: f32) -> Self {
        self.momentum = momentum;
        self
    }

    /// Uses Nesterov momentum (needs a non-zero momentum).
    pub fn nesterov(mut self, on: bool) -> Self {
        self.nesterov = on;
        self
    }

    /// Adds `weight_decay · param` to every gradient.
    pub fn weight_decay(mut self, weight_decay: f32) -> Self {
        self.weight_decay = weight_decay;
        self
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &Gradients) {
        assert!(!self.nesterov || self.momentum > 0.0, "Sgd: Nesterov momentum needs a momentum > 0");
        let (momentum, weight_decay, nesterov) = (self.momentum, self.weight_decay, self.nesterov);
        let rule = move |lr| UpdateRule::Sgd { lr, momentum, weight_decay, nesterov };
        let buffers = usize::from(self.momentum != 0.0);
        self.generation.guard_capture();
        let lr = self.lr.0.clone();
        no_grad(|| {
            let items = with_grads(&self.params, grads);
            let rule_of = || -> Box<dyn FnMut() -> UpdateRule + Send> {
                Box::new(move || rule(f32::from_bits(lr.load(Ordering::Relaxed))))
            };
            update_all(&items, &mut self.state, buffers, rule(self.lr.get()), rule_of);
        });
    }

    fn learning_rate(&self) -> f32 {
        self.lr.get()
    }

    fn set_learning_rate(&mut self, lr: f32) {
        self.lr.set(lr);
    }

    fn state_dict(&self) -> OptimizerState {
        OptimizerState {
            tensors: save_buffers(&self.params, &self.state, &["momentum_buffer"]),
            scalars: vec![
                ("lr".into(), self.lr.get() as f64),
                ("momentum".into(), self.momentum as f64),
                ("weight_decay".into(), self.weight_decay as f64),
                ("nesterov".into(), self.nesterov as u8 as f64),
            ],
        }
    }

    fn load_state_dict(&mut self, state: &OptimizerState) -> Result<()> {
        let buffers = load_buffers(&self.params, state, &["momentum_buffer"])?;
        let (lr, momentum) = (state.scalar("lr")?, state.scalar("momentum")?);
        let (weight_decay, nesterov) = (state.scalar("weight_decay")?, state.scalar("nesterov")?);
        self.state = buffers;
        self.generation.bump();
        self.lr.set(lr as f32);
        self.momentum = momentum as f32;
        self.weight_decay = weight_decay as f32;
        self.nesterov = nesterov != 0.0;
        Ok(())
    }
}

/// Adam (Kingma & Ba), and with decoupled weight decay AdamW (Loshchilov &
/// Hutter): PyTorch's `torch.optim.Adam` / `AdamW` without amsgrad.
pub struct Adam {
    params: Vec<Tensor>,
    lr: SharedLr,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    decoupled: bool,
    /// Each parameter's step count, shared with captured steps, which
    /// advance it at every replay.
    steps: Arc<Mutex<HashMap<u64, u32>>>,
    state: HashMap<u64, Vec<Tensor>>,
    generation: Generation,
}

impl Adam {
    /// Adam with PyTorch's defaults (β = (0.9, 0.999), ε = 1e-8, no weight
    /// decay). Panics if one of `params` is not a variable but a tensor an
    /// op computed (PyTorch's optimizers refuse a non-leaf tensor too).
    pub fn new(params: Vec<Tensor>, lr: f32) -> Self {
        leaves("Adam", &params);
        Adam {
            params,
            lr: SharedLr::new(lr),
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            steps: Arc::default(),
            state: HashMap::new(),
            generation: Generation::default(),
        }
    }

    /// AdamW with PyTorch's defaults (weight decay 0.01, decoupled from the gradient).
    pub fn adamw(params: Vec<Tensor>, lr: f32) -> Self {
        Adam { weight_decay: 0.01, decoupled: true, ..Adam::new(params, lr) }
    }

    /// Sets the moment decay rates β1, β2.
    pub fn betas(mut self, beta1: f32, beta2: f32) -> Self {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }

    /// Sets ε, added to the denominator.
    pub fn eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }

    /// Sets the weight decay: added to the gradient (Adam) or applied to the
    /// parameter directly (AdamW).
    pub fn weight_decay(mut self, weight_decay: f32) -> Self {
        self.weight_decay = weight_decay;
        self
    }
}

impl Adam {
    fn steps(&self) -> MutexGuard<'_, HashMap<u64, u32>> {
        self.steps.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counts one more step of parameter `id` and returns the count.
fn next_step(steps: &Mutex<HashMap<u64, u32>>, id: u64) -> u32 {
    let mut steps = steps.lock().unwrap_or_else(|e| e.into_inner());
    let t = steps.entry(id).or_insert(0);
    *t += 1;
    *t
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &Gradients) {
        let (beta1, beta2, eps, weight_decay, decoupled) =
            (self.beta1, self.beta2, self.eps, self.weight_decay, self.decoupled);
        let rule = move |lr, t: u32| UpdateRule::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            decoupled,
            bias1: 1.0 - beta1.powi(t as i32),
            bias2: 1.0 - beta2.powi(t as i32),
        };
        self.generation.guard_capture();
        no_grad(|| {
            let items = with_grads(&self.params, grads);
            // One multi-tensor update per step count (all of them share
            // one, unless some parameters missed steps or were reloaded).
            let mut by_step: std::collections::BTreeMap<u32, Vec<(&Tensor, &Tensor)>> = Default::default();
            for (p, g) in items {
                by_step.entry(next_step(&self.steps, p.id())).or_default().push((p, g));
            }
            for (t, group) in by_step {
                let (lr, steps) = (self.lr.0.clone(), self.steps.clone());
                let ids: Vec<u64> = group.iter().map(|(p, _)| p.id()).collect();
                if capture::active() {
                    // Replays give the group one step count: stale once an
                    // eager step in between moved some of them apart.
                    let (steps, ids) = (steps.clone(), ids.clone());
                    capture::note_guard(Box::new(move || {
                        let steps = steps.lock().unwrap_or_else(|e| e.into_inner());
                        ids.iter().all(|id| steps.get(id) == steps.get(&ids[0]))
                    }));
                }
                let rule_of = || -> Box<dyn FnMut() -> UpdateRule + Send> {
                    Box::new(move || {
                        let mut t = 0;
                        for &id in &ids {
                            t = next_step(&steps, id);
                        }
                        rule(f32::from_bits(lr.load(Ordering::Relaxed)), t)
                    })
                };
                update_all(&group, &mut self.state, 2, rule(self.lr.get(), t), rule_of);
            }
        });
    }

    fn learning_rate(&self) -> f32 {
        self.lr.get()
    }

    fn set_learning_rate(&mut self, lr: f32) {
        self.lr.set(lr);
    }

    fn state_dict(&self) -> OptimizerState {
        let mut scalars: Vec<(String, f64)> = vec![
            ("lr".into(), self.lr.get() as f64),
            ("beta1".into(), self.beta1 as f64),
            ("beta2".into(), self.beta2 as f64),
            ("eps".into(), self.eps as f64),
            ("weight_decay".into(), self.weight_decay as f64),
            ("decoupled".into(), self.decoupled as u8 as f64),
        ];
        for (i, p) in self.params.iter().enumerate() {
            if let Some(&t) = self.steps().get(&p.id()) {
                scalars.push((format!("{i}.step"), t as f64));
            }
        }
        OptimizerState { tensors: save_buffers(&self.params, &self.state, &["exp_avg", "exp_avg_sq"]), scalars }
    }

    fn load_state_dict(&mut self, state: &OptimizerState) -> Result<()> {
        let buffers = load_buffers(&self.params, state, &["exp_avg", "exp_avg_sq"])?;
        let mut steps = HashMap::new();
        for (i, p) in self.params.iter().enumerate() {
            if buffers.contains_key(&p.id()) {
                steps.insert(p.id(), state.scalar(&format!("{i}.step"))? as u32);
            }
        }
        let get = |n: &str| state.scalar(n).map(|v| v as f32);
        let (lr, beta1, beta2, eps, wd) = (get("lr")?, get("beta1")?, get("beta2")?, get("eps")?, get("weight_decay")?);
        let decoupled = state.scalar("decoupled")? != 0.0;
        self.state = buffers;
        self.generation.bump();
        *self.steps() = steps;
        self.lr.set(lr);
        (self.beta1, self.beta2, self.eps, self.weight_decay, self.decoupled) = (beta1, beta2, eps, wd, decoupled);
        Ok(())
    }
}

/// Scales all gradients down so their global L2 norm is at most `max_norm`
/// (as `torch.nn.utils.clip_grad_norm_`) and returns the norm they had, as a
/// scalar tensor. Everything stays on the device: no host round trip.
pub fn clip_grad_norm(grads: &mut Gradients, params: &[Tensor], max_norm: f32) -> Option<Tensor> {
    no_grad(|| {
        let present: Vec<&Tensor> = params.iter().filter(|p| grads.get(p).is_some()).collect();
        let total = present.iter().map(|p| grads.get(p).expect("filtered").sqr().sum()).reduce(|a, b| a + b)?.sqrt();
        // min(1, max_norm / (norm + 1e-6)), PyTorch's clip coefficient.
        let coef = (max_norm / &total.add_scalar(1e-6)).minimum_scalar(1.0);
        for p in present {
            let clipped = grads.get(p).expect("filtered") * &coef;
            grads.insert(p, clipped);
        }
        Some(total)
    })
}
