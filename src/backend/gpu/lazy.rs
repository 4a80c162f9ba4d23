//! Lazy buffers: the storage of a GPU tensor, which may be computed, failed,
//! or pending — an elementwise expression that runs when something needs it.
//!
//! On a GPU a small elementwise op costs its dispatch, not its arithmetic
//! (on lavapipe ~40 µs of thread hand-off per dispatch, on a discrete GPU a
//! few µs of launch). So a unary or binary op dispatches nothing when
//! called: it returns a *pending* buffer that holds the expression computing
//! it (an SSA list of ops over buffers already computed, the leaves). An op
//! on a contiguous pending input extends its expression instead of reading
//! a buffer. The expression runs — one kernel, written by [`fusion`] from
//! the op list and compiled once per distinct list — when something needs
//! the buffer itself: a kernel that binds it, a read back,
//! [`synchronize`](super::GpuDevice::synchronize), or an expression that
//! would grow past the limits below. A pending result that is dropped unread
//! never runs.
//!
//! Broadcasting is part of the expression: a binary operand that is not
//! contiguous (a bias row, a per-row statistic) becomes a leaf read through
//! its strides, so `(x - mean) / std * gamma + beta` is one kernel. Equal
//! nodes are merged when expressions combine, so `y + y` does not copy
//! `y`'s expression twice.
//!
//! Correctness rests on buffers being immutable, with two exceptions that
//! write in place (`copy_into` and the optimizer update): before either
//! writes a buffer, every pending expression that reads it is run
//! ([`Lazy::before_write`]). A pending buffer that is read by more than one
//! consumer is recomputed by each expression that inlines it — at most
//! [`MAX_OPS`] cheap elementwise ops, the trade every fusing compiler makes
//! against a dispatch.
//!
//! This file holds the buffers' life (pending, computing, ready; the
//! registry in-place writes consult; threads) and the ops' entry points;
//! `lazy/expr.rs` the expression itself (its nodes and leaves, merging, the
//! limits of one kernel).

use super::epilogue::{self, Product, ProductOp};
use super::fusion;
use super::lock;
use super::pool::Pooled;
use super::taint::Poison;
use super::{Bind, Context, Kernel};
use crate::backend::Fault;
use crate::backend::{BinaryOp, UnaryOp};
use crate::shape::Strided;
use std::sync::{Arc, Mutex, OnceLock, Weak};

mod expr;
pub(crate) use expr::Expr;
pub(super) use expr::Node;

/// Ops one generated kernel may compute per element.
pub(crate) const MAX_OPS: usize = 24;
/// The u32 words of immediate data a kernel has (128 bytes): the element
/// count, the dims and views of its strided leaves, and its scalars. An
/// expression needing more (two strided leaves of high rank) reads its
/// words from a storage buffer instead.
pub(crate) const WORDS: usize = 32;
/// Buffers one kernel may read: with the one it writes and a storage
/// buffer of words, the adapter minimum of 8 storage buffers per stage.
const MAX_LEAVES: usize = 6;

/// The storage of a GPU tensor: a pooled buffer, the [`Poison`] that
/// prevented producing it, or — until something needs it — the pending
/// elementwise expression that will compute it.
#[derive(Clone)]
pub(crate) struct GpuBuffer(Arc<Cell>);

pub(crate) struct Cell {
    ready: OnceLock<Result<Arc<Pooled>, Poison>>,
    pending: Mutex<Option<(Arc<Context>, Expr)>>,
    /// The thread computing it, once its expression has left `pending` (and
    /// until `ready` is set, while its kernel is being recorded).
    computing: Mutex<Option<std::thread::ThreadId>>,
    /// The capture (on some thread) that made this pending expression.
    capture: Option<Arc<super::capture::Owner>>,
}

impl Cell {
    /// The buffer, computing it first if it is pending.
    fn get(&self) -> Result<&Arc<Pooled>, &Poison> {
        self.ready
            .get_or_init(|| {
                let (ctx, expr) = {
                    let mut pending = lock(&self.pending);
                    // Taken already: an earlier computation of it panicked
                    // (`OnceLock` runs the initialiser again).
                    let Some(taken) = pending.take() else {
                        return Err(crate::Error::Gpu("computing this tensor panicked earlier".into()).into());
                    };
                    *lock(&self.computing) = Some(std::thread::current().id());
                    taken
                };
                // If recording panics the cell is neither ready nor in
                // progress: others skip it, as before it was computed.
                struct Done<'a>(&'a Mutex<Option<std::thread::ThreadId>>);
                impl Drop for Done<'_> {
                    fn drop(&mut self) {
                        if std::thread::panicking() {
                            *lock(self.0) = None;
                        }
                    }
                }
                let _done = Done(&self.computing);
                let _inside = Inside::enter();
                if let Some(c) = &self.capture {
                    c.computed_here();
                }
                run(&ctx, &expr)
            })
            .as_ref()
    }

    /// Whether a step another thread is capturing made it: only that
    /// thread may compute it (so that its recording holds the kernel),
    /// unless an in-place write needs it first.
    fn captured_elsewhere(&self) -> bool {
        self.capture.as_ref().is_some_and(|c| c.elsewhere())
    }

    /// Computes the buffer now if it is pending and reads `buffer` (or, with
    /// `None`, in any case).
    ///
    /// Before an in-place write of `buffer` (`Some`), a cell another thread
    /// is computing right now (its expression taken, its kernel not yet
    /// recorded) may read it too: this waits for that kernel, so that the
    /// write is recorded after it. Not while this thread is itself inside
    /// a cell's computation (two threads computing cells that each wait
    /// for the other's would deadlock), and not for `None` (`run_all`,
    /// which autotuning calls from inside a computation).
    fn run_if_reads(&self, buffer: Option<&Arc<Pooled>>) {
        let me = std::thread::current().id();
        let (reads, elsewhere) = {
            let pending = lock(&self.pending);
            let reads = pending.as_ref().is_some_and(|(_, e)| buffer.is_none_or(|b| e.reads(b)));
            let computing = *lock(&self.computing);
            (reads, buffer.is_some() && computing.is_some_and(|t| t != me) && !Inside::now())
        };
        if reads || (elsewhere && self.ready.get().is_none()) {
            let _ = self.get();
        }
    }

    /// Taken out of `pending` by a thread still recording its kernel.
    fn in_progress(&self) -> bool {
        lock(&self.computing).is_some() && self.ready.get().is_none()
    }

    fn is_pending(&self) -> bool {
        lock(&self.pending).is_some() || self.in_progress()
    }
}

thread_local! {
    /// How many cell computations this thread is inside.
    static INSIDE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Marks this thread as computing a cell until dropped.
struct Inside;

impl Inside {
    fn enter() -> Inside {
        INSIDE.with(|d| d.set(d.get() + 1));
        Inside
    }

    fn now() -> bool {
        INSIDE.with(|d| d.get() > 0)
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        INSIDE.with(|d| d.set(d.get() - 1));
    }
}

impl GpuBuffer {
    pub fn ready(result: Result<Arc<Pooled>, Poison>) -> Self {
        GpuBuffer(Arc::new(Cell {
            ready: OnceLock::from(result),
            pending: Mutex::new(None),
            computing: Mutex::new(None),
            capture: None,
        }))
    }

    pub fn poisoned(poison: impl Into<Poison>) -> Self {
        Self::ready(Err(poison.into()))
    }

    /// A buffer `expr` computes when it is first needed.
    fn pending(ctx: &Arc<Context>, expr: Expr) -> Self {
        let capture = super::capture::owner(ctx);
        let cell = Arc::new(Cell {
            ready: OnceLock::new(),
            pending: Mutex::new(Some((ctx.clone(), expr))),
            computing: Mutex::new(None),
            capture,
        });
        ctx.lazy.register(Arc::downgrade(&cell));
        if cell.capture.is_some() {
            super::capture::note_pending(ctx, Arc::downgrade(&cell));
        }
        GpuBuffer(cell)
    }

    /// The buffer (computed first if it was pending) or why there is none.
    pub fn get(&self) -> Result<&Arc<Pooled>, Poison> {
        self.0.get().map_err(Poison::clone)
    }

    /// The expression computing this buffer, while it is pending.
    fn expr(&self) -> Option<Expr> {
        lock(&self.0.pending).as_ref().map(|(_, e)| e.clone())
    }
}

/// Computes `cell` now if it is still alive and pending (the end of a
/// captured step: what the step left pending is part of it).
pub(super) fn force(cell: &Weak<Cell>) {
    if let Some(cell) = cell.upgrade() {
        cell.run_if_reads(None);
    }
}

/// Weak handles on pending buffers, so that an in-place write can first
/// compute those that read its target; pruned of computed and dropped ones
/// whenever it doubles.
pub(crate) struct Lazy {
    /// Whether elementwise ops are fused (else each runs at once).
    pub fusion: bool,
    pending: Mutex<Registry>,
}

struct Registry {
    cells: Vec<Weak<Cell>>,
    prune_at: usize,
}

impl Lazy {
    pub fn new(fusion: bool) -> Self {
        Lazy { fusion, pending: Mutex::new(Registry { cells: Vec::new(), prune_at: 256 }) }
    }

    fn register(&self, cell: Weak<Cell>) {
        let mut registry = lock(&self.pending);
        registry.cells.push(cell);
        if registry.cells.len() >= registry.prune_at {
            registry.cells.retain(|c| c.upgrade().is_some_and(|c| c.is_pending()));
            registry.prune_at = (2 * registry.cells.len()).max(256);
        }
    }

    /// Computes every pending buffer that is still alive. The registry
    /// keeps them until they have run: a `before_write` on another thread
    /// meanwhile still finds (and runs) those that read its target, where
    /// taking the list first left it an empty registry.
    pub fn run_all(&self) {
        let cells: Vec<Arc<Cell>> = lock(&self.pending).cells.iter().filter_map(Weak::upgrade).collect();
        for cell in cells.iter().filter(|c| !c.captured_elsewhere()) {
            cell.run_if_reads(None);
        }
        drop(cells);
        lock(&self.pending).cells.retain(|c| c.upgrade().is_some_and(|c| c.is_pending()));
    }

    /// Makes `target` safe to write in place: computes it if it is pending,
    /// and computes every pending expression that reads it, so none of them
    /// later sees the new contents.
    pub fn before_write(&self, target: &GpuBuffer) {
        let Ok(buffer) = target.get() else { return };
        if Arc::strong_count(buffer) == 1 {
            return;
        }
        let cells: Vec<Arc<Cell>> = lock(&self.pending).cells.iter().filter_map(Weak::upgrade).collect();
        for cell in cells {
            cell.run_if_reads(Some(buffer));
        }
    }
}

/// The expression `x` contributes over its first `n` elements: its pending
/// expression, or the buffer itself as a leaf.
fn operand(x: &GpuBuffer, n: usize) -> Result<Expr, Poison> {
    if let Some(e) = x.expr() {
        let mut e = e.settled();
        // An epilogue covers the whole product.
        if e.product.is_some() && n != e.n {
            return computed(x, n);
        }
        // The caller's count rules: its view never covers more than the buffer.
        e.n = n;
        return Ok(e);
    }
    computed(x, n)
}

/// `x`, computed, as a leaf.
fn computed(x: &GpuBuffer, n: usize) -> Result<Expr, Poison> {
    Ok(Expr::leaf(n, x.get()?.clone()))
}

/// What one side of a binary op contributes: a contiguous operand inlines
/// its pending expression; another layout reads the computed buffer
/// through it.
fn side(x: (&GpuBuffer, &Strided), n: usize) -> Result<Expr, Poison> {
    if x.1.is_contiguous() {
        return operand(x.0, n);
    }
    Ok(Expr::strided(x.0.get()?.clone(), x.1))
}

/// `op(x)` over the first `n` elements of `x`.
pub(crate) fn unary(ctx: &Arc<Context>, op: UnaryOp, x: &GpuBuffer, n: usize) -> GpuBuffer {
    one_operand(ctx, x, n, |e| e.unary(op))
}

/// `node(x)` over the first `n` elements of `x`, pending: on `x`'s own
/// expression, or on its computed buffer when that would not fit a kernel.
fn one_operand(ctx: &Arc<Context>, x: &GpuBuffer, n: usize, node: impl Fn(Expr) -> Expr) -> GpuBuffer {
    let build = || -> Result<Expr, Poison> {
        let e = node(operand(x, n)?);
        if e.fits() {
            return Ok(e);
        }
        drop(e);
        Ok(node(computed(x, n)?))
    };
    match build() {
        Ok(e) => finish(ctx, e),
        Err(e) => GpuBuffer::poisoned(e),
    }
}

/// `x` read through `view` (a permute, broadcast or narrow), pending: the
/// copy becomes a strided leaf of the kernel that consumes it, so a view
/// feeding elementwise work costs no dispatch of its own. `None` with
/// fusion off, or for a view too wide for a fused kernel's parameter
/// words (the caller copies it at once).
pub(crate) fn view(ctx: &Arc<Context>, x: &GpuBuffer, view: &Strided) -> Option<GpuBuffer> {
    if !ctx.lazy.fusion {
        return None;
    }
    let buffer = match x.get() {
        Ok(b) => b.clone(),
        Err(p) => return Some(GpuBuffer::poisoned(p)),
    };
    let e = Expr::strided(buffer, view);
    e.fits().then(|| GpuBuffer::pending(ctx, e))
}

/// `n` elements of `value`: pending when small (an elementwise consumer
/// inlines the constant, and a kernel with a scalar parameter can take its
/// value, [`constant_value`], without a buffer: a loss's backward seed
/// costs no dispatch); filled at once when large, or with fusion off, so
/// that an allocation the device refuses fails when the tensor is made,
/// as on the CPU.
pub(crate) fn constant(ctx: &Arc<Context>, n: usize, value: f32) -> GpuBuffer {
    const PENDING_UP_TO: usize = 1 << 16;
    if !ctx.lazy.fusion || n > PENDING_UP_TO {
        return super::elementwise::fill(ctx, n, value);
    }
    let e =
        Expr { n, dims: None, leaves: Vec::new(), nodes: vec![Node::Const(value.to_bits())], root: 0, product: None };
    GpuBuffer::pending(ctx, e)
}

/// The value of `x` if it is a pending constant ([`constant`]).
pub(crate) fn constant_value(x: &GpuBuffer) -> Option<f32> {
    match lock(&x.0.pending).as_ref()?.1.nodes[..] {
        [Node::Const(bits)] => Some(f32::from_bits(bits)),
        _ => None,
    }
}

/// The product `op` of `a` and `b`, pending: elementwise work on it
/// becomes its epilogue ([`epilogue`]).
pub(crate) fn product(ctx: &Arc<Context>, a: &GpuBuffer, b: &GpuBuffer, op: ProductOp) -> GpuBuffer {
    match super::computed([a, b].into_iter()) {
        Ok(ab) => GpuBuffer::pending(
            ctx,
            Expr::product(Product { a: ab[0].clone(), b: ab[1].clone(), op, result: OnceLock::new() }),
        ),
        Err(poison) => GpuBuffer::poisoned(poison),
    }
}

/// Inverted dropout of the first `n` elements of `x` with probability `p`
/// and `key`: a node of the fused kernel, so its mask costs no dispatch of
/// its own (the forward fuses with the activation before it, the backward
/// with the gradient's mask).
pub(crate) fn dropout(ctx: &Arc<Context>, x: &GpuBuffer, n: usize, p: f32, key: [u32; 2]) -> GpuBuffer {
    let words = [key[0], key[1], crate::rng::dropout_threshold(p), (1.0 / (1.0 - p)).to_bits()];
    one_operand(ctx, x, n, |e| e.dropout(words))
}

/// `op(a, b)` with broadcasting: `a` and `b` are read through layouts of
/// the output's shape.
pub(crate) fn binary(
    ctx: &Arc<Context>,
    op: BinaryOp,
    a: (&GpuBuffer, &Strided),
    b: (&GpuBuffer, &Strided),
) -> GpuBuffer {
    let n: usize = a.1.dims.iter().product();
    // A poisoned side, with the checks of the other (the earliest decides).
    let poisoned = |p: Poison, other: &Expr| Poison::combine(&[p], other.taints());
    let build = || -> Result<Expr, Poison> {
        let (mut ea, mut eb) = match (side(a, n), side(b, n)) {
            (Ok(ea), Ok(eb)) => (ea, eb),
            (Err(p), Ok(eb)) => return Err(poisoned(p, &eb)),
            (Ok(ea), Err(p)) => return Err(poisoned(p, &ea)),
            (Err(pa), Err(pb)) => return Err(Poison::combine(&[pa, pb], [])),
        };
        loop {
            let combined = ea.clone().binary(op, &eb);
            if let Some(e) = &combined
                && e.fits()
            {
                return Ok(combined.expect("just matched"));
            }
            // Compute the pending side with more ops (their dims disagree,
            // or together they are too big).
            let (wa, wb) = (weight(a.0, &ea), weight(b.0, &eb));
            drop(combined);
            if wa >= wb && wa > 0 {
                ea.release();
                ea = computed(a.0, n).map_err(|p| poisoned(p, &eb))?;
            } else if wb > 0 {
                eb.release();
                eb = computed(b.0, n).map_err(|p| poisoned(p, &ea))?;
            } else {
                let combined = ea.binary(op, &eb);
                // Two leaves over one shape always combine; when their
                // views need more words than the immediates hold, the
                // kernel reads them from a buffer.
                return Ok(combined.expect("two leaves share the output's dims"));
            }
        }
    };
    match build() {
        Ok(e) => finish(ctx, e),
        Err(e) => GpuBuffer::poisoned(e),
    }
}

/// `c ≠ 0 ? a : b` with broadcasting: all three are read through layouts of
/// the output's shape.
pub(crate) fn select(
    ctx: &Arc<Context>,
    c: (&GpuBuffer, &Strided),
    a: (&GpuBuffer, &Strided),
    b: (&GpuBuffer, &Strided),
) -> GpuBuffer {
    let n: usize = c.1.dims.iter().product();
    let sides = [c, a, b];
    let build = || -> Result<Expr, Poison> {
        let made: Vec<Result<Expr, Poison>> = sides.iter().map(|&x| side(x, n)).collect();
        if made.iter().any(Result::is_err) {
            let taints: Vec<&Expr> = made.iter().filter_map(|r| r.as_ref().ok()).collect();
            let poisons: Vec<Poison> = made.iter().filter_map(|r| r.as_ref().err().cloned()).collect();
            return Err(Poison::combine(&poisons, taints.iter().flat_map(|e| e.taints())));
        }
        let mut e: Vec<Expr> = made.into_iter().flatten().collect();
        loop {
            let combined = e[0].clone().select(&e[1], &e[2]);
            if let Some(x) = &combined
                && x.fits()
            {
                return Ok(combined.expect("just matched"));
            }
            // Compute the pending side with the most ops.
            let (most, ops) =
                e.iter().enumerate().map(|(i, x)| (i, weight(sides[i].0, x))).max_by_key(|&(_, o)| o).expect("three");
            if ops == 0 {
                return Ok(combined.expect("leaves share the output's dims"));
            }
            drop(combined);
            e[most].release();
            // Failing, it carries the other operands' checks too, as in
            // `binary`: the earliest fault among them is reported.
            e[most] = computed(sides[most].0, n).map_err(|p| {
                let others = e.iter().enumerate().filter(|&(i, _)| i != most);
                Poison::combine(&[p], others.flat_map(|(_, x)| x.taints()))
            })?;
        }
    };
    match build() {
        Ok(e) => finish(ctx, e),
        Err(e) => GpuBuffer::poisoned(e),
    }
}

/// How much computing `x`'s pending expression `e` first would take off a
/// combined kernel: 0 when it is computed (a leaf), else its ops plus one
/// (a pending view has no ops but still must be computed to be re-viewed).
/// An `e` that holds a product is never 0, even if another thread computed
/// `x` since `e` was read: computing `x` again gives its buffer as a leaf.
fn weight(x: &GpuBuffer, e: &Expr) -> usize {
    if x.expr().is_some() || e.product.is_some() { e.ops() + 1 } else { 0 }
}

/// A pending buffer for `e`, or with fusion off, `e` computed now.
fn finish(ctx: &Arc<Context>, e: Expr) -> GpuBuffer {
    if ctx.lazy.fusion { GpuBuffer::pending(ctx, e) } else { GpuBuffer::ready(run(ctx, &e)) }
}

/// Dispatches the kernel computing `e` into a new buffer.
fn run(ctx: &Arc<Context>, e: &Expr) -> Result<Arc<Pooled>, Poison> {
    let settled;
    let e = if e.can_settle() {
        settled = e.clone().settled();
        &settled
    } else {
        e
    };
    let result = match &e.product {
        Some(p) => super::profile::with_op(p.op_name(), || record_product(ctx, e, p)),
        // A product computed since, read whole: the buffer is the value.
        None if e.nodes == [Node::Leaf(0)] && e.leaves[0].view.is_none() => Ok(e.leaves[0].buffer.clone()),
        None => record_expr(ctx, e),
    };
    result.map_err(|error| Poison::new(e.taints(), Fault::new(error)))
}

/// Computes `e`, whose product `p` is not computed yet: the plain product
/// kernel for the product alone, else the product with `e` as its epilogue
/// — also writing the raw product if another expression still holds it.
fn record_product(ctx: &Arc<Context>, e: &Expr, p: &Arc<Product>) -> crate::Result<Arc<Pooled>> {
    let out = ctx.alloc(p.op_name(), e.n)?;
    if e.nodes == [Node::Product] {
        p.record_plain(ctx, &out)?;
        let _ = p.result.set(out.clone());
        return Ok(out);
    }
    let shared = Arc::strong_count(p) > 1;
    let raw = if shared { Some(ctx.alloc(p.op_name(), e.n)?) } else { None };
    epilogue::record(ctx, e, p, &out, raw.as_ref())?;
    if let Some(raw) = raw {
        let _ = p.result.set(raw);
    }
    Ok(out)
}

fn record_expr(ctx: &Arc<Context>, e: &Expr) -> crate::Result<Arc<Pooled>> {
    let out = ctx.alloc("elementwise op", e.n)?;
    let wg = ctx.tuning.elementwise_wg;
    let (dims, strides) = e.layout();
    let words = fusion::words(e, &dims, &strides);
    let words_in_buffer = words.len() > WORDS;
    let source = || fusion::kernel(e, words_in_buffer);
    let structure = fusion::structure(e, &dims, &strides, words_in_buffer);
    let mut binds: Vec<Bind> =
        e.leaves.iter().enumerate().map(|(l, leaf)| Bind::read(l as u32, &leaf.buffer)).collect();
    binds.push(Bind::write(e.leaves.len() as u32, &out));
    let groups = ctx.groups_1d(words[0] as usize, wg);
    let kernel = Kernel::Generated { family: "fused", structure, source: &source, wg, constants: &[] };
    // A captured step redraws its dropout keys at every replay.
    let patches = || super::capture::Patches { keys: fusion::dropout_keys(e, &words), ..Default::default() };
    let capturing = super::capture::active();
    if words_in_buffer {
        let meta =
            ctx.upload_words("elementwise op", &words, if capturing { patches() } else { Default::default() })?;
        binds.push(Bind::read(e.leaves.len() as u32 + 1, &meta));
        ctx.record(&kernel, &binds, &(), groups)?;
    } else {
        let mut block = fusion::Words::default();
        block.w[..words.len()].copy_from_slice(&words);
        ctx.record_patched(&kernel, &binds, &block, groups, if capturing { patches() } else { Default::default() })?;
    }
    Ok(out)
}
