//! Reverse-mode autodiff.
//!
//! Every op whose inputs are tracked (variables, or tensors computed from
//! variables while gradients are enabled) attaches a tape entry — a [`Node`] —
//! to its output: the op's name, its inputs, and a closure that maps the
//! output's gradient to the inputs' gradients. The closure is written next to
//! the op's forward (micrograd's shape) and uses ordinary tensor ops, so the
//! backward pass runs on whatever device the forward ran on.
//!
//! [`Tensor::backward`] walks the entries in reverse creation order. Tensor ids
//! grow monotonically and every op's output is created after its inputs, so
//! "largest id first" is a valid reverse topological order: no separate sort
//! and no per-op graph walking code. Each entry is taken off its tensor as it
//! is walked, which frees the saved inputs — a training loop's memory stays
//! flat — and makes a second `backward` through the same graph an error, as in
//! PyTorch.
//!
//! ```
//! use wgrad::{Device, Tensor};
//! let x = Tensor::from_vec(vec![3.0], [1], &Device::Cpu).unwrap().requires_grad();
//! let y = (&x * &x + &x * 5.0).sum(); // x² + 5x
//! let grads = y.backward();
//! assert_eq!(grads.get(&x).unwrap().to_vec().unwrap(), vec![11.0]);
//! ```

mod anomaly;
mod custom;

pub use anomaly::detect_anomaly;
pub(crate) use anomaly::{check_anomaly, in_backward_of};
pub use custom::CustomOp;

use crate::shape::Strided;
use crate::{Shape, Tensor};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

static LIVE_NODES: AtomicUsize = AtomicUsize::new(0);

/// Whether ops on the calling thread currently record tape entries.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(Cell::get)
}

/// Runs `f` with recording switched on or off on the calling thread, and
/// restores the previous setting afterwards (also if `f` panics).
fn with_grad_enabled<R>(enabled: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GRAD_ENABLED.with(|g| g.replace(enabled)));
    f()
}

/// Runs `f` without recording anything: for evaluation, optimizer updates,
/// and anything else that must not be differentiated.
///
/// ```
/// use wgrad::{Device, Tensor, no_grad};
/// let w = Tensor::ones([2], &Device::Cpu).requires_grad();
/// let y = no_grad(|| &w * 2.0);
/// assert!(!y.is_tracked());
/// ```
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    with_grad_enabled(false, f)
}

/// Number of tape entries alive in the process: entries that were recorded
/// and neither walked by a backward pass nor dropped with their tensor.
/// A training loop whose memory is flat returns to the same count each step.
pub fn live_nodes() -> usize {
    LIVE_NODES.load(Ordering::Relaxed)
}

/// What a backward closure is given.
pub(crate) struct BackwardCtx<'a> {
    /// Gradient of the loss with respect to the op's output.
    pub grad: &'a Tensor,
    /// Which inputs need a gradient; rules skip the others' products.
    pub needs: &'a [bool],
    op: &'static str,
    out: &'a Tensor,
    inputs: &'a [Tensor],
    /// The storage versions the forward saw: the inputs', then the output's.
    versions: &'a [u64],
    /// Gradients that cover a region of an input only (see
    /// [`grad_region`](Self::grad_region)).
    regions: std::cell::RefCell<Vec<(usize, Tensor, Strided)>>,
}

impl BackwardCtx<'_> {
    /// Input `i`, whose values the rule uses: panics if it was modified in
    /// place since the forward pass (PyTorch's "a variable needed for
    /// gradient computation has been modified by an inplace operation").
    pub fn input(&self, i: usize) -> &Tensor {
        self.unchanged(&self.inputs[i], self.versions[i], &format!("input {i}"))
    }

    /// The op's output, whose values the rule uses (sigmoid's, softmax's):
    /// panics as [`input`](Self::input) does if it was modified in place.
    pub fn output(&self) -> &Tensor {
        self.unchanged(self.out, self.versions[self.inputs.len()], "its output")
    }

    /// Reports that input `i`'s gradient is `values` in `region` (a strided
    /// view of the contiguous input) and zero elsewhere, instead of
    /// returning it whole: the rule returns `None` for that input. On the
    /// CPU the engine adds `values` into the input's accumulated gradient in
    /// place, so the slices of a tensor (an unrolled recurrence's time
    /// steps) cost their own size in the backward, not the whole tensor's
    /// each; on a GPU it adds them as whole tensors, lazily, as before.
    pub fn grad_region(&self, i: usize, values: Tensor, region: Strided) {
        self.regions.borrow_mut().push((i, values, region));
    }

    /// The shape of input `i` (needs no check: shapes never change).
    pub fn shape(&self, i: usize) -> &Shape {
        self.inputs[i].shape()
    }

    fn unchanged<'t>(&self, t: &'t Tensor, seen: u64, what: &str) -> &'t Tensor {
        let now = t.version();
        assert!(
            now == seen,
            "backward of `{}`: {what} (a tensor of shape {}{}) was modified in place after the forward pass \
             (it is at version {now}, the forward saw version {seen}), so its gradient would use the new \
             values. Run the forward pass again after modifying it, or modify a copy",
            self.op,
            t.shape(),
            if t.is_variable() { ", a variable" } else { "" },
        );
        t
    }
}

/// Maps an output gradient to one optional gradient per input.
pub(crate) type BackwardFn = Box<dyn FnOnce(&BackwardCtx) -> Vec<Option<Tensor>> + Send + Sync>;

/// One tape entry.
pub(crate) struct Node {
    pub op: &'static str,
    pub inputs: Vec<Tensor>,
    /// Storage versions at the forward pass: the inputs', then the output's.
    versions: Vec<u64>,
    pub backward: BackwardFn,
    _live: LiveNode,
}

/// Counts a node in [`live_nodes`] for as long as it exists.
struct LiveNode;

impl Drop for LiveNode {
    fn drop(&mut self) {
        LIVE_NODES.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Node {
    fn new(op: &'static str, inputs: Vec<Tensor>, versions: Vec<u64>, backward: BackwardFn) -> Self {
        LIVE_NODES.fetch_add(1, Ordering::Relaxed);
        Node { op, inputs, versions, backward, _live: LiveNode }
    }
}

/// Gradients of a loss with respect to the variables it depends on, keyed by
/// variable (see [`Tensor::requires_grad`]).
#[derive(Default, Debug)]
pub struct Gradients {
    map: HashMap<u64, Tensor>,
}

impl Gradients {
    /// The gradient of `variable`, if the loss depends on it.
    pub fn get(&self, variable: &Tensor) -> Option<&Tensor> {
        self.map.get(&variable.id())
    }

    /// Removes and returns the gradient of `variable`.
    pub fn remove(&mut self, variable: &Tensor) -> Option<Tensor> {
        self.map.remove(&variable.id())
    }

    /// Sets the gradient of `variable` (e.g. after clipping).
    pub fn insert(&mut self, variable: &Tensor, grad: Tensor) {
        assert!(
            variable.shape() == grad.shape(),
            "Gradients::insert: gradient shape {} does not match variable shape {}",
            grad.shape(),
            variable.shape()
        );
        self.map.insert(variable.id(), grad);
    }

    /// Number of variables with a gradient.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no variable received a gradient.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All gradients, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &Tensor> {
        self.map.values()
    }
}

impl Tensor {
    /// Attaches a tape entry to this freshly computed output of `op`, if
    /// recording is on and any input is tracked; otherwise returns it as is.
    pub(crate) fn record<F>(mut self, op: &'static str, inputs: &[&Tensor], backward: F) -> Tensor
    where
        F: FnOnce(&BackwardCtx) -> Vec<Option<Tensor>> + Send + Sync + 'static,
    {
        check_anomaly(op, &self);
        if !is_grad_enabled() || !inputs.iter().any(|t| t.is_tracked()) {
            return self;
        }
        let versions = inputs.iter().map(|t| t.version()).chain([self.version()]).collect();
        let node = Node::new(op, inputs.iter().map(|&t| t.clone()).collect(), versions, Box::new(backward));
        self.attach(node);
        self
    }

    /// Computes the gradient of this tensor with respect to every variable it
    /// depends on. The tensor is usually a scalar loss; for any other shape
    /// the seed gradient is all ones (the gradient of `self.sum()`).
    ///
    /// Panics if the graph was already walked by an earlier `backward`.
    pub fn backward(&self) -> Gradients {
        let seed = no_grad(|| Tensor::ones(self.shape().clone(), &self.device()));
        self.backward_with(seed)
    }

    /// As [`backward`](Self::backward), with an explicit seed gradient of this
    /// tensor's shape (a vector-Jacobian product).
    pub fn backward_with(&self, seed: Tensor) -> Gradients {
        self.backward_hooked(seed, &mut |_, _| {})
    }

    /// As [`backward_with`](Self::backward_with), calling `hook(variable,
    /// grad)` the moment each variable's gradient is complete, while the
    /// rest of the backward pass still runs (PyTorch's
    /// `register_post_accumulate_grad_hook`): what data-parallel training
    /// hangs its gradient all-reduce on, so communication overlaps the
    /// remaining backward work. Variables complete in decreasing order of
    /// creation (the last layer's first), each exactly once; one the loss
    /// does not depend on is never reported.
    pub fn backward_hooked(&self, seed: Tensor, hook: &mut dyn FnMut(&Tensor, &Tensor)) -> Gradients {
        assert!(
            seed.shape() == self.shape(),
            "backward_with: seed shape {} does not match tensor shape {}",
            seed.shape(),
            self.shape()
        );
        let mut grads = Gradients::default();
        if !self.is_tracked() {
            return grads;
        }
        no_grad(|| {
            // Pending gradients by tensor id; the largest id is always safe to
            // process next (see the module docs).
            let mut pending: BTreeMap<u64, (Tensor, Tensor)> = BTreeMap::new();
            pending.insert(self.id(), (self.clone(), seed));
            while let Some((_, (t, g))) = pending.pop_last() {
                if t.is_variable() {
                    // Every contribution has arrived: anything that adds to
                    // it was created after it, so has a larger id and was
                    // processed first.
                    hook(&t, &g);
                    grads.map.insert(t.id(), g);
                    continue;
                }
                let node = t.take_node().unwrap_or_else(|| {
                    panic!(
                        "backward: the graph through this tensor was already freed by an earlier \
                         backward(); run the forward pass again before calling backward once more"
                    )
                });
                let Node { op, inputs, versions, backward, _live } = node;
                let needs: Vec<bool> = inputs.iter().map(Tensor::is_tracked).collect();
                let ctx = BackwardCtx {
                    grad: &g,
                    needs: &needs,
                    op,
                    out: &t,
                    inputs: &inputs,
                    versions: &versions,
                    regions: Default::default(),
                };
                let input_grads = in_backward_of(op, || backward(&ctx));
                for (i, values, region) in ctx.regions.into_inner() {
                    let input = &inputs[i];
                    if !needs[i] {
                        continue;
                    }
                    check_anomaly(op, &values);
                    match pending.get_mut(&input.id()) {
                        // On a GPU the sums stay lazy, fusable expressions:
                        // an in-place write would force every pending one
                        // that reads the accumulator first.
                        Some((_, acc)) if !acc.device().is_cpu() => {
                            *acc = &*acc + &values.embed_raw(input.shape(), &region)
                        }
                        Some((_, acc)) => {
                            if !acc.is_exclusive() {
                                *acc = acc.copy_contiguous();
                            }
                            acc.add_region_in_place(&region, &values);
                        }
                        None => {
                            pending.insert(input.id(), (input.clone(), values.embed_raw(input.shape(), &region)));
                        }
                    }
                }
                for ((input, need), ig) in inputs.iter().zip(&needs).zip(input_grads) {
                    let Some(ig) = ig else { continue };
                    if !need {
                        continue;
                    }
                    assert!(
                        ig.shape() == input.shape(),
                        "backward of {op}: gradient shape {} does not match input shape {} (a bug in the op's \
                         backward rule)",
                        ig.shape(),
                        input.shape()
                    );
                    check_anomaly(op, &ig);
                    match pending.get_mut(&input.id()) {
                        Some((_, acc)) => *acc = &*acc + &ig,
                        None => {
                            pending.insert(input.id(), (input.clone(), ig));
                        }
                    }
                }
            }
        });
        grads
    }
}

#[cfg(test)]
mod tests {
    use crate::{Device, Tensor, no_grad};

    #[test]
    fn region_gradients_add_in_place_without_touching_shared_ones() {
        let dev = Device::Cpu;
        let x = Tensor::new([1.0, 2.0, 3.0, 4.0], &dev).unwrap().requires_grad();
        let w = Tensor::new([0.5, 0.5, 0.5, 0.5], &dev).unwrap().requires_grad();
        // The slices are recorded first, so the add's gradient (one handle
        // shared by x and w) reaches x's accumulator before they do: it
        // must be copied, not written, or w's gradient changes too.
        let (a, b) = (x.narrow(0, 1, 2), x.narrow(0, 0, 3));
        let t = &x + &w;
        let loss = &(&t.sum() + &(&a * 3.0).sum()) + &(&b * 10.0).sum();
        let g = loss.backward();
        assert_eq!(g.get(&x).unwrap().to_vec().unwrap(), [11.0, 14.0, 14.0, 1.0]);
        assert_eq!(g.get(&w).unwrap().to_vec().unwrap(), [1.0; 4]);
        // Slices alone: the first creates the accumulator, the rest add.
        let g = (&x.narrow(0, 0, 2).sum() + &(&x.narrow(0, 1, 3) * 2.0).sum()).backward();
        assert_eq!(g.get(&x).unwrap().to_vec().unwrap(), [1.0, 3.0, 2.0, 2.0]);
    }

    #[test]
    fn no_grad_restores_after_panic() {
        let r = std::panic::catch_unwind(|| no_grad(|| panic!("boom")));
        assert!(r.is_err());
        assert!(super::is_grad_enabled());
    }

    #[test]
    fn untracked_inputs_record_nothing() {
        let a = Tensor::ones([2], &Device::Cpu);
        let b = &a * 3.0;
        assert!(!b.is_tracked());
        assert!(b.backward().is_empty());
    }

    #[test]
    #[should_panic(expected = "already freed")]
    fn second_backward_through_a_freed_graph_panics() {
        let w = Tensor::ones([2], &Device::Cpu).requires_grad();
        let loss = (&w * 2.0).sum();
        let _ = loss.backward();
        let _ = loss.backward();
    }
}
