//! Captured steps: a step's dispatches recorded once and replayed (what
//! CUDA graphs are to PyTorch and `TinyJit` to tinygrad).
//!
//! While a thread captures on a device, every dispatch that thread records
//! on it is also kept — pipeline, bind group, immediates, workgroups — with
//! every buffer it binds, and so are uploads. A replay re-encodes the list:
//! no tape, no fusion planning, no allocation, no cache lookups; only the
//! values that change from step to step are rewritten:
//!
//! - dropout keys: each key the capture drew from the thread's default
//!   generator is drawn again (the generator advances as an eager step
//!   would advance it), and every word that held it is patched;
//! - device-side checks (an index out of range): each replayed check gets a
//!   fresh slot and id, and taints what it taints in an eager step;
//! - optimizer hyper-parameters: an optimizer that captures registers a
//!   function giving each update's rule (step count, learning rate), called
//!   at every replay, so its counters advance as if it had stepped.
//!
//! The recording owns every buffer it binds: none goes back to the pool
//! while it lives, so nothing a replay writes can alias a tensor made
//! outside it. Buffers the step uses but did not allocate (parameters,
//! optimizer state) are watched: once only the recording holds one (its
//! owner replaced it, e.g. `load_state_dict`), the recording is stale and
//! must be captured again.
//!
//! A step that reads a value back while capturing cannot be replayed (its
//! host logic depends on the value): the recording is marked invalid.

use super::pipelines::Pipeline;
use super::pool::Pooled;
use super::profile::{self, EventInfo};
use super::taint::Taint;
use super::{Context, GpuBuffer, queue};
use crate::Result;
use crate::backend::UpdateRule;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Values in a dispatch's immediates (or an upload's data) that a replay
/// rewrites.
#[derive(Default)]
pub(crate) struct Patches {
    /// A device-side check: its op, and the byte offsets of its slot and id.
    pub check: Option<(&'static str, usize, usize)>,
    /// Dropout keys: (word index of key0, key) — key1 follows key0.
    pub keys: Vec<(usize, [u32; 2])>,
    /// The whole immediates, recomputed by the optimizer at each replay
    /// (given the replay's number).
    pub params: Option<Box<dyn FnMut(u64) -> Vec<u8> + Send>>,
    /// Not a patch: the binds form independent groups of this many in a
    /// row (a multi-tensor optimizer step), each group's outputs computed
    /// from that group alone — which decides the checks they depend on.
    pub groups_of: Option<usize>,
}

impl Patches {
    pub fn check(op: &'static str, slot: usize, id: usize) -> Self {
        Patches { check: Some((op, slot, id)), ..Patches::default() }
    }

    fn is_empty(&self) -> bool {
        self.check.is_none() && self.keys.is_empty() && self.params.is_none() && self.groups_of.is_none()
    }
}

/// A recorded patch: keys by their index in the capture's draws.
struct Recorded {
    check: Option<(&'static str, usize, usize)>,
    keys: Vec<(usize, usize)>,
    params: Option<Box<dyn FnMut(u64) -> Vec<u8> + Send>>,
    groups_of: Option<usize>,
}

enum Command {
    Dispatch {
        pipeline: Arc<Pipeline>,
        bind_group: wgpu::BindGroup,
        /// (index into the buffer table, written).
        binds: Vec<(usize, bool)>,
        immediates: Vec<u8>,
        groups: [u32; 3],
        kernel: String,
        op: &'static str,
        patches: Option<Recorded>,
    },
    Write {
        buffer: usize,
        data: Vec<u8>,
        patches: Option<Recorded>,
    },
}

/// A step's dispatches and uploads, and every buffer they touch.
pub(crate) struct Recording {
    /// The device captured on (by address: only its dispatches are kept).
    ctx: usize,
    commands: Vec<Command>,
    buffers: Vec<Arc<Pooled>>,
    index: HashMap<usize, usize>,
    /// The dropout keys drawn while capturing, in order.
    keys: Vec<[u32; 2]>,
    /// Buffers allocated while capturing (by address).
    allocated: HashSet<usize>,
    /// Replays so far.
    replays: u64,
    /// Buffers the step uses that it did not allocate (parameters,
    /// optimizer state): the tensors owning them live outside it.
    external: Vec<usize>,
    /// Why it cannot be replayed.
    invalid: Option<String>,
    /// Conditions a replay needs (an optimizer not reloaded since).
    guards: Vec<Box<dyn Fn() -> bool + Send>>,
    /// The pending (fused) expressions the step made: computed when it
    /// ends, so that they are recorded — only these, not other threads'.
    pending: Vec<std::sync::Weak<super::lazy::Cell>>,
    /// Shared with those expressions.
    owner: Arc<Owner>,
    /// The version bumps of the tensors the step wrote in place
    /// (parameters, optimizer state), redone at every replay: a backward
    /// that saved one of them before a replay refuses, as after an eager
    /// step (the replay writes their buffers without going through them).
    in_place: Vec<Box<dyn Fn() + Send>>,
}

/// A capture as its pending expressions see it: which thread records it,
/// whether it still does, and whether another thread computed one of them
/// (an in-place write elsewhere needed it), which the recording then lacks.
pub(crate) struct Owner {
    thread: std::thread::ThreadId,
    active: std::sync::atomic::AtomicBool,
    missed: std::sync::atomic::AtomicBool,
}

impl Owner {
    /// Whether the capture is under way on another thread.
    pub fn elsewhere(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::Acquire) && std::thread::current().id() != self.thread
    }

    /// Called as one of its expressions is computed.
    pub fn computed_here(&self) {
        if self.elsewhere() {
            self.missed.store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

/// The capture this thread runs on `ctx`, for a pending expression made now.
pub(crate) fn owner(ctx: &Context) -> Option<Arc<Owner>> {
    if !active() {
        return None;
    }
    with(ctx, |r| r.owner.clone())
}

thread_local! {
    static ACTIVE: RefCell<Option<Recording>> = const { RefCell::new(None) };
    /// The rule function an optimizer registered for its next update.
    static RULE: RefCell<Option<SharedRule>> = const { RefCell::new(None) };
}

/// Whether this thread is capturing on any device.
pub(crate) fn active() -> bool {
    ACTIVE.with(|a| a.borrow().is_some())
}

/// Runs `f` on this thread's recording, if it captures (on `ctx`, if given).
fn with_recording<R>(ctx: Option<&Context>, f: impl FnOnce(&mut Recording) -> R) -> Option<R> {
    ACTIVE.with(|a| {
        let mut a = a.borrow_mut();
        a.as_mut().filter(|r| ctx.is_none_or(|c| r.ctx == c as *const Context as usize)).map(f)
    })
}

/// Runs `f` on this thread's recording if it captures on `ctx`.
fn with<R>(ctx: &Context, f: impl FnOnce(&mut Recording) -> R) -> Option<R> {
    with_recording(Some(ctx), f)
}

/// Whether this thread is capturing on `ctx`.
pub(crate) fn capturing(ctx: &Context) -> bool {
    with(ctx, |_| ()).is_some()
}

/// Starts capturing on `ctx` (this thread); `false` if this thread is
/// already capturing (a step inside a captured step runs eagerly, and the
/// outer capture records its work).
pub(crate) fn begin(ctx: &Arc<Context>) -> bool {
    if active() {
        return false;
    }
    ctx.lazy.run_all();
    let recording = Recording {
        ctx: Arc::as_ptr(ctx) as usize,
        commands: Vec::new(),
        buffers: Vec::new(),
        index: HashMap::new(),
        keys: Vec::new(),
        allocated: HashSet::new(),
        replays: 0,
        external: Vec::new(),
        invalid: None,
        guards: Vec::new(),
        pending: Vec::new(),
        owner: Arc::new(Owner { thread: std::thread::current().id(), active: true.into(), missed: false.into() }),
        in_place: Vec::new(),
    };
    ACTIVE.with(|a| *a.borrow_mut() = Some(recording));
    RULE.with(|r| r.borrow_mut().take());
    true
}

/// Ends the capture: runs what is pending (so it is recorded), keeps
/// `outputs`, and notes which buffers live outside the recording.
pub(crate) fn end(ctx: &Arc<Context>, outputs: &[&GpuBuffer]) -> Recording {
    // The step's own pending expressions (the device's registry also
    // holds other threads', which must not be recorded).
    let pending = with(ctx, |r| std::mem::take(&mut r.pending)).unwrap_or_default();
    for cell in &pending {
        super::lazy::force(cell);
    }
    if let Some(owner) = with(ctx, |r| r.owner.clone()) {
        owner.active.store(false, std::sync::atomic::Ordering::Release);
        if owner.missed.load(std::sync::atomic::Ordering::Acquire) {
            invalidate(ctx, "another thread computed part of the step while it was being captured");
        }
    }
    let mut outs = Vec::new();
    for o in outputs {
        match o.get() {
            Ok(p) => outs.push(p.clone()),
            Err(_) => invalidate(ctx, "an output of the step failed"),
        }
    }
    let mut rec = ACTIVE.with(|a| a.borrow_mut().take()).expect("capturing");
    RULE.with(|r| r.borrow_mut().take());
    for o in outs {
        rec.table(&o);
    }
    rec.external =
        (0..rec.buffers.len()).filter(|&i| !rec.allocated.contains(&(Arc::as_ptr(&rec.buffers[i]) as usize))).collect();
    rec
}

/// Notes a pending expression made on `ctx` while this thread captures on it.
pub(crate) fn note_pending(ctx: &Context, cell: std::sync::Weak<super::lazy::Cell>) {
    with(ctx, |r| r.pending.push(cell));
}

/// Notes a buffer allocated on `ctx` while this thread captures on it.
pub(crate) fn note_alloc(ctx: &Context, buffer: &Arc<Pooled>) {
    with(ctx, |r| r.allocated.insert(Arc::as_ptr(buffer) as usize));
}

/// Stops capturing on this thread, discarding the recording (a step that
/// panicked); nothing if it already ended.
pub(crate) fn abort() {
    if let Some(r) = ACTIVE.with(|a| a.borrow_mut().take()) {
        r.owner.active.store(false, std::sync::atomic::Ordering::Release);
    }
    RULE.with(|r| r.borrow_mut().take());
}

/// Marks the capture on `ctx` (if any) as not replayable.
pub(crate) fn invalidate(ctx: &Context, why: &str) {
    with(ctx, |r| {
        r.invalid.get_or_insert_with(|| why.to_string());
    });
}

/// Marks this thread's capture, on whatever device, as not replayable:
/// the step does something a replay would not (host-side random numbers,
/// work on another device).
pub(crate) fn invalidate_any(why: &str) {
    with_recording(None, |r| {
        r.invalid.get_or_insert_with(|| why.to_string());
    });
}

/// Adds a condition every replay of this thread's capture needs; once it
/// fails, the recording is stale.
pub(crate) fn note_guard(guard: Box<dyn Fn() -> bool + Send>) {
    with_recording(None, |r| r.guards.push(guard));
}

/// Notes a dropout key drawn from the default generator.
/// A tensor written in place while capturing: `bump` advances its version.
pub(crate) fn note_in_place(bump: Box<dyn Fn() + Send>) {
    with_recording(None, |r| r.in_place.push(bump));
}

pub(crate) fn note_key(key: [u32; 2]) {
    with_recording(None, |r| r.keys.push(key));
}

/// An optimizer's rule for the updates of one step, shared by every
/// dispatch recording them: the optimizer's function (which advances its
/// step counts) runs once per replay, whichever dispatch asks first.
pub(crate) struct ReplayRule {
    f: Box<dyn FnMut() -> UpdateRule + Send>,
    replay: u64,
    rule: UpdateRule,
}

pub(crate) type SharedRule = Arc<std::sync::Mutex<ReplayRule>>;

impl ReplayRule {
    /// `f` gives each replay's rule; `rule` is the captured step's.
    pub fn shared(f: Box<dyn FnMut() -> UpdateRule + Send>, rule: UpdateRule) -> SharedRule {
        Arc::new(std::sync::Mutex::new(ReplayRule { f, replay: 0, rule }))
    }

    /// The rule of replay number `replay` (1 for the first).
    pub fn at(shared: &SharedRule, replay: u64) -> UpdateRule {
        let mut r = super::lock(shared);
        if r.replay != replay {
            r.rule = (r.f)();
            r.replay = replay;
        }
        r.rule
    }
}

/// Registers the rule of the optimizer updates about to be recorded on
/// this thread (until [`clear_rule`]).
pub(crate) fn set_rule(rule: SharedRule) {
    RULE.with(|r| *r.borrow_mut() = Some(rule));
}

pub(crate) fn clear_rule() {
    RULE.with(|r| r.borrow_mut().take());
}

/// The rule registered for the updates being recorded.
pub(crate) fn current_rule() -> Option<SharedRule> {
    RULE.with(|r| r.borrow().clone())
}

impl Recording {
    /// The buffer's index in the table (added if new).
    fn table(&mut self, buffer: &Arc<Pooled>) -> usize {
        let key = Arc::as_ptr(buffer) as usize;
        *self.index.entry(key).or_insert_with(|| {
            self.buffers.push(buffer.clone());
            self.buffers.len() - 1
        })
    }

    fn recorded(&self, patches: Patches) -> Option<Recorded> {
        if patches.is_empty() {
            return None;
        }
        // Keys drawn outside the capture (a backward of an earlier forward)
        // are constants of the step.
        let keys = patches
            .keys
            .iter()
            .filter_map(|&(word, key)| self.keys.iter().position(|&k| k == key).map(|i| (word, i)))
            .collect();
        Some(Recorded { check: patches.check, keys, params: patches.params, groups_of: patches.groups_of })
    }

    /// Why it cannot be replayed, if it cannot.
    pub fn invalid(&self) -> Option<&str> {
        self.invalid.as_deref()
    }

    /// Dispatches a replay records.
    pub fn dispatches(&self) -> usize {
        self.commands.iter().filter(|c| matches!(c, Command::Dispatch { .. })).count()
    }

    /// Whether a buffer the step did not allocate (a parameter, optimizer
    /// state) is now held by the recording alone: its owner replaced it,
    /// and a replay would update a buffer nobody reads.
    pub fn stale(&self) -> bool {
        self.external.iter().any(|&i| Arc::strong_count(&self.buffers[i]) == 1) || !self.guards.iter().all(|g| g())
    }

    /// Re-encodes every command, patched for this replay.
    pub fn replay(&mut self, ctx: &Arc<Context>) -> Result<()> {
        if let Some(e) = ctx.health.lost() {
            return Err(e);
        }
        // Pending expressions reading what the step writes run first.
        ctx.lazy.run_all();
        self.replays += 1;
        for bump in &self.in_place {
            bump();
        }
        let keys: Vec<[u32; 2]> = (0..self.keys.len()).map(|_| crate::rng::next_dropout_key()).collect();
        let profiling = ctx.queue.profiling();
        // An intermediate's first write in the step overwrites it whole:
        // its checks start afresh, as a fresh buffer's do in an eager step
        // (parameters and optimizer state, updated in place, keep theirs).
        let mut fresh: Vec<bool> = vec![true; self.buffers.len()];
        for &i in &self.external {
            fresh[i] = false;
        }
        for command in &mut self.commands {
            match command {
                Command::Dispatch { pipeline, bind_group, binds, immediates, groups, kernel, op, patches } => {
                    let started = profiling.then(std::time::Instant::now);
                    let mut check = None;
                    if let Some(p) = patches {
                        if let Some(f) = &mut p.params {
                            *immediates = f(self.replays);
                        }
                        patch_keys(immediates, &p.keys, &keys);
                        if let Some((op, slot, id)) = p.check {
                            let c = ctx.check(op)?;
                            immediates[slot..slot + 4].copy_from_slice(&c.slot.to_ne_bytes());
                            immediates[id..id + 4].copy_from_slice(&c.id.to_ne_bytes());
                            check = Some(c);
                        }
                    }
                    let output =
                        |&(b, write): &(usize, bool)| write && !Arc::ptr_eq(&self.buffers[b], &ctx.checks.buffer);
                    for &(w, _) in binds.iter().filter(|b| output(b)) {
                        if std::mem::take(&mut fresh[w]) {
                            self.buffers[w].taint.clear();
                        }
                    }
                    let per = patches.as_ref().and_then(|p| p.groups_of).unwrap_or(binds.len()).max(1);
                    for group in binds.chunks(per) {
                        Taint::spread(group.iter().map(|b| (&self.buffers[b.0].taint, output(b))));
                    }
                    let info = started.map(|started| EventInfo {
                        op,
                        kernel: kernel.clone(),
                        elements: binds.iter().map(|&(b, _)| self.buffers[b].buffer.size() / 4).collect(),
                        started,
                    });
                    ctx.queue.dispatch(
                        queue::Dispatch {
                            pipeline: &pipeline.pipeline,
                            bind_group,
                            immediates: immediates.as_slice(),
                            groups: *groups,
                        },
                        info,
                    );
                    if let Some(c) = check {
                        for &(w, write) in binds.iter() {
                            if write && !Arc::ptr_eq(&self.buffers[w], &ctx.checks.buffer) {
                                self.buffers[w].taint.add(c.clone());
                            }
                        }
                    }
                }
                Command::Write { buffer, data, patches } => {
                    if std::mem::take(&mut fresh[*buffer]) {
                        self.buffers[*buffer].taint.clear();
                    }
                    if let Some(p) = patches {
                        patch_keys(data, &p.keys, &keys);
                    }
                    ctx.queue.write(&self.buffers[*buffer].buffer, data);
                }
            }
        }
        Ok(())
    }
}

fn patch_keys(bytes: &mut [u8], at: &[(usize, usize)], keys: &[[u32; 2]]) {
    for &(word, i) in at {
        let b = 4 * word;
        bytes[b..b + 4].copy_from_slice(&keys[i][0].to_ne_bytes());
        bytes[b + 4..b + 8].copy_from_slice(&keys[i][1].to_ne_bytes());
    }
}

/// Keeps a dispatch `Context::record` has just recorded, if this thread
/// captures on `ctx`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn note_dispatch(
    ctx: &Context,
    pipeline: &Arc<Pipeline>,
    bind_group: &wgpu::BindGroup,
    binds: &[super::Bind],
    immediates: &[u8],
    groups: [u32; 3],
    kernel: &super::pipelines::Kernel,
    patches: Patches,
) {
    with(ctx, |r| {
        let binds = binds.iter().map(|b| (r.table(b.buffer), b.write)).collect();
        let patches = r.recorded(patches);
        r.commands.push(Command::Dispatch {
            pipeline: pipeline.clone(),
            bind_group: bind_group.clone(),
            binds,
            immediates: immediates.to_vec(),
            groups,
            kernel: kernel.name(),
            op: profile::current_op().unwrap_or_else(|| kernel.family()),
            patches,
        });
    });
}

/// Keeps an upload, if this thread captures on `ctx`.
pub(crate) fn note_write(ctx: &Context, buffer: &Arc<Pooled>, data: &[u8], patches: Patches) {
    with(ctx, |r| {
        let buffer = r.table(buffer);
        let patches = r.recorded(patches);
        r.commands.push(Command::Write { buffer, data: data.to_vec(), patches });
    });
}

/// Copies `bytes` of `src` into `dst` (all of it that is read) after every
/// command recorded so far.
pub(crate) fn copy(ctx: &Context, src: &Arc<Pooled>, dst: &Arc<Pooled>, bytes: u64) {
    dst.taint.clear();
    dst.taint.extend_from(&src.taint);
    ctx.queue.copy(&src.buffer, &dst.buffer, bytes);
}
