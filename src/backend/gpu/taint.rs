//! Device-side asserts: errors only the data reveals, such as an index out
//! of range, found by a kernel and reported when a result is read back.
//!
//! A kernel that can meet bad data (gather, scatter-add, cross-entropy) is
//! given a [`Check`]: a slot in a small error buffer and a fresh id. On bad
//! data it writes its id, the offending value and the bound into the slot
//! and carries on (writing NaN where it had nothing to read). The check
//! *taints* the kernel's output buffer, and every kernel that reads a
//! tainted buffer taints its outputs in turn (in-place updates included), so
//! the taint follows exactly the results computed from the bad data — as
//! the CPU's poisoned storage does. Reading a tainted buffer back copies
//! the error buffer in the same submission, resolves every outstanding
//! check, and returns [`Error::IndexOutOfRange`] if one of its checks fired.
//!
//! Programs that never gather pay nothing: no check exists, no buffer is
//! tainted, and a read back copies nothing extra. A slot is reused only
//! after its previous check was resolved; running out of free slots
//! resolves them all (one wait), which a training loop meets at most every
//! few hundred steps if it never reads anything back.

use super::pool::Pooled;
use crate::{Error, Result};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Slots in the error buffer.
pub(crate) const SLOTS: u32 = 1024;
/// u32 words per slot: the id of the check that fired, the offending value
/// (f32 bits) and the bound.
pub(crate) const WORDS_PER_SLOT: u32 = 4;

/// One device-side assert of one dispatch.
pub(crate) struct Check {
    pub id: u32,
    pub slot: u32,
    op: &'static str,
    /// `Some(None)` once resolved clean, `Some(Some(e))` once it fired.
    outcome: OnceLock<Option<Error>>,
}

impl Check {
    fn failed(&self) -> Option<&Error> {
        self.outcome.get().and_then(Option::as_ref)
    }

    fn resolved(&self) -> bool {
        self.outcome.get().is_some()
    }
}

/// The checks a buffer's contents depend on, in the order of the inputs
/// they came through: unresolved ones, and at most one that fired (last).
#[derive(Default)]
pub(crate) struct Taint(Mutex<Vec<Arc<Check>>>);

impl Taint {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Check>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `check`.
    pub fn add(&self, check: Arc<Check>) {
        self.lock().push(check);
    }

    /// Adds the checks `other` depends on after this buffer's own. Order
    /// matters: of several checks that fired, a read reports the first,
    /// which is the CPU's rule too (an op's first poisoned input decides
    /// its error). Checks resolved clean are dropped, and so is everything
    /// after the first that fired, which always wins.
    pub fn extend_from(&self, other: &Taint) {
        if std::ptr::eq(self, other) {
            return;
        }
        let theirs: Vec<Arc<Check>> = other.lock().clone();
        if theirs.is_empty() {
            return;
        }
        let mut mine = self.lock();
        for c in theirs {
            if !mine.iter().any(|m| Arc::ptr_eq(m, &c)) {
                mine.push(c);
            }
        }
        mine.retain(|c| !c.resolved() || c.failed().is_some());
        if let Some(first_failed) = mine.iter().position(|c| c.failed().is_some()) {
            mine.truncate(first_failed + 1);
        }
    }

    /// Whether some check it depends on is not resolved yet.
    pub fn unresolved(&self) -> bool {
        self.lock().iter().any(|c| !c.resolved())
    }

    /// The error of the first check that fired, once every check before
    /// it is resolved (a read back resolves them all).
    pub fn error(&self) -> Option<Error> {
        let mine = self.lock();
        let first = mine.iter().find(|c| !c.resolved() || c.failed().is_some())?;
        first.failed().cloned()
    }
}

/// The error buffer and the checks not yet resolved, by slot.
pub(crate) struct Checks {
    pub buffer: Arc<Pooled>,
    state: Mutex<State>,
}

struct State {
    next_id: u32,
    /// The check using each slot until it is resolved.
    slots: Vec<Option<Arc<Check>>>,
    outstanding: usize,
}

impl Checks {
    /// Checks writing to `buffer`, of [`SLOTS`] · [`WORDS_PER_SLOT`] u32s
    /// (zero-initialised, as wgpu does: id 0, no check fired).
    pub fn new(buffer: Arc<Pooled>) -> Self {
        let state = State { next_id: 1, slots: vec![None; SLOTS as usize], outstanding: 0 };
        Checks { buffer, state: Mutex::new(state) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new check for a dispatch of `op`, or `None` when its slot is still
    /// held by an unresolved check (resolve them first, then ask again).
    pub fn begin(&self, op: &'static str) -> Option<Arc<Check>> {
        let mut s = self.state();
        let id = s.next_id;
        let slot = id % SLOTS;
        if s.slots[slot as usize].as_ref().is_some_and(|c| !c.resolved()) {
            return None;
        }
        s.next_id = if id == u32::MAX { 1 } else { id + 1 };
        let check = Arc::new(Check { id, slot, op, outcome: OnceLock::new() });
        s.slots[slot as usize] = Some(check.clone());
        s.outstanding += 1;
        Some(check)
    }

    /// Resolves every outstanding check from `words`, the error buffer as
    /// read back after all of their dispatches finished.
    pub fn resolve(&self, words: &[u32]) {
        let mut s = self.state();
        for check in s.slots.iter().flatten() {
            if check.resolved() {
                continue;
            }
            let at = (check.slot * WORDS_PER_SLOT) as usize;
            let record = &words[at..at + WORDS_PER_SLOT as usize];
            let error = (record[0] == check.id).then(|| Error::IndexOutOfRange {
                op: check.op,
                index: f32::from_bits(record[1]),
                bound: record[2] as usize,
            });
            let _ = check.outcome.set(error);
        }
        s.outstanding = 0;
    }
}

/// Reads a buffer's outcome: the error of a check it depends on that fired.
pub(crate) fn outcome(taint: &Taint) -> Result<()> {
    match taint.error() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Why a buffer holds nothing: the error that stopped its computation (an
/// input that held nothing, an allocation refused, the device lost), after
/// the checks of the inputs before it. An earlier input's check that fires
/// is the first cause and wins, as on the CPU, where an op reports its
/// first poisoned input's error.
#[derive(Clone)]
pub(crate) struct Poison(Arc<(Taint, Error)>);

impl Poison {
    /// `error`, after the checks in `before` (in order).
    pub fn after<'a>(before: impl IntoIterator<Item = &'a Taint>, error: Error) -> Self {
        let taint = Taint::default();
        for t in before {
            taint.extend_from(t);
        }
        Poison(Arc::new((taint, error)))
    }

    /// `inner`, after the checks in `before`.
    pub fn wrap<'a>(before: impl IntoIterator<Item = &'a Taint>, inner: &Poison) -> Self {
        let taint = Taint::default();
        for t in before {
            taint.extend_from(t);
        }
        if taint.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            return inner.clone();
        }
        taint.extend_from(&inner.0.0);
        Poison(Arc::new((taint, inner.0.1.clone())))
    }

    /// The error as known when the work was recorded.
    pub fn error(&self) -> &Error {
        &self.0.1
    }

    /// Whether a check before the error is not resolved yet.
    pub fn unresolved(&self) -> bool {
        self.0.0.unresolved()
    }

    /// The error a read reports once the checks are resolved.
    pub fn outcome(&self) -> Error {
        self.0.0.error().unwrap_or_else(|| self.0.1.clone())
    }
}

impl From<Error> for Poison {
    fn from(error: Error) -> Self {
        Poison::after([], error)
    }
}
