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
//! resolves them all (one wait), which a training loop that never reads
//! anything back meets every [`SLOTS`] checks (an MNIST step makes one).

use super::lock;
use super::pool::Pooled;
use crate::backend::{Fault, next_seq};
use crate::{Error, Result};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Slots in the error buffer: also the longest a buffer's list of checks
/// gets, and merging those lists is most of a small step's host time (the
/// MNIST step on the noop adapter: 125 µs with 1024 slots, 61 µs with 128,
/// 53 µs with 64), while running out costs a wait for the GPU — once every
/// 128 steps of a loop that never reads back.
pub(crate) const SLOTS: u32 = 128;
/// u32 words per slot: the id of the check that fired, the offending value
/// (f32 bits) and the bound.
pub(crate) const WORDS_PER_SLOT: u32 = 4;

/// One device-side assert of one dispatch.
pub(crate) struct Check {
    pub id: u32,
    pub slot: u32,
    /// Issue order among all faults and checks (see [`Fault`]).
    seq: u64,
    op: &'static str,
    /// `Some(None)` once resolved clean, `Some(Some(e))` once it fired.
    outcome: OnceLock<Option<Error>>,
    /// Set once its dispatch is recorded (see [`Taint::add`]): only then
    /// can a read back's submission include it.
    recorded: std::sync::atomic::AtomicBool,
}

impl Check {
    fn failed(&self) -> Option<&Error> {
        self.outcome.get().and_then(Option::as_ref)
    }

    fn resolved(&self) -> bool {
        self.outcome.get().is_some()
    }

    /// Whether it can still decide a read: not resolved, or fired.
    fn live(&self) -> bool {
        !self.resolved() || self.failed().is_some()
    }
}

/// The checks a buffer's contents depend on, in issue order: unresolved
/// ones, and at most one that fired (the last kept: an earlier fault always
/// wins, so later checks cannot change what a read reports). Checks
/// resolved clean may linger until the next merge; every reader skips them.
///
/// The list is shared, copy-on-write: a training loop's buffers mostly
/// depend on the same checks (every check since the last read back), so a
/// fresh output takes its input's list by reference instead of copying it,
/// and a buffer that already shares its input's list is done at once. A
/// loop that reads nothing back for an epoch grows these lists to hundreds
/// of checks; copying them on every dispatch cost a tenth of the host's
/// time per MNIST step.
#[derive(Default)]
pub(crate) struct Taint(Mutex<Arc<Vec<Arc<Check>>>>);

impl Taint {
    fn lock(&self) -> MutexGuard<'_, Arc<Vec<Arc<Check>>>> {
        lock(&self.0)
    }

    /// Adds `check` (the newest, so it goes last), whose dispatch has just
    /// been recorded: from now on a read back's submission includes it and
    /// may resolve it.
    pub fn add(&self, check: Arc<Check>) {
        check.recorded.store(true, std::sync::atomic::Ordering::Release);
        let mut mine = self.lock();
        if !mine.iter().any(|c| c.failed().is_some()) {
            Arc::make_mut(&mut mine).push(check);
        }
    }

    /// Adds the checks `other` depends on: a merge of two lists in issue
    /// order, dropping checks resolved clean and everything after the first
    /// that fired.
    pub fn extend_from(&self, other: &Taint) {
        if std::ptr::eq(self, other) {
            return;
        }
        // A reference to their list, not a lock held while taking ours.
        let theirs = other.lock().clone();
        if theirs.is_empty() {
            return;
        }
        let mut mine = self.lock();
        if Arc::ptr_eq(&mine, &theirs) {
            return;
        }
        if mine.iter().all(|c| !c.live()) {
            // Nothing of ours matters (a fresh output): take theirs.
            *mine = without_resolved_prefix(theirs);
            return;
        }
        if contains_all(&mine, &theirs) {
            // The common case in a training loop: a parameter already
            // depends on every check its gradient does but the newest.
            return;
        }
        let merged = merge(&mine, &theirs);
        *mine = Arc::new(merged);
    }

    /// What a kernel leaves behind on one group of its bindings, each
    /// `(taint, output)`: every output depends on the checks of the whole
    /// group. With several outputs (a multi-tensor optimizer step), the
    /// union is merged once and shared, where merging every input into
    /// every output cost outputs × inputs merges of lists up to [`SLOTS`]
    /// long. Allocates nothing (it runs at every dispatch).
    pub fn spread<'a>(group: impl Iterator<Item = (&'a Taint, bool)> + Clone) {
        let outputs = || group.clone().filter(|&(_, out)| out).map(|(t, _)| t);
        let inputs = || group.clone().filter(|&(_, out)| !out).map(|(t, _)| t);
        let mut first_two = outputs();
        match (first_two.next(), first_two.next()) {
            (None, _) => {}
            (Some(w), None) => inputs().for_each(|r| w.extend_from(r)),
            _ => {
                let union = Taint::default();
                outputs().chain(inputs()).for_each(|t| union.extend_from(t));
                let shared = union.lock().clone();
                outputs().for_each(|w| *w.lock() = shared.clone());
            }
        }
    }

    /// Depends on no check any more: the buffer is about to be overwritten
    /// whole (a captured step's intermediate, replayed).
    pub fn clear(&self) {
        let mut mine = self.lock();
        if !mine.is_empty() {
            *mine = Arc::default();
        }
    }

    /// Whether some check it depends on is not resolved yet.
    pub fn unresolved(&self) -> bool {
        self.lock().iter().any(|c| !c.resolved())
    }

    /// The earliest check that fired, once every check before it is
    /// resolved (a read back resolves them all).
    fn first_failed(&self) -> Option<(u64, Error)> {
        let mine = self.lock();
        let first = mine.iter().find(|c| c.live())?;
        first.failed().map(|e| (first.seq, e.clone()))
    }

    /// The error of the earliest check that fired.
    pub fn error(&self) -> Option<Error> {
        self.first_failed().map(|(_, e)| e)
    }
}

/// `list` without its leading checks resolved clean (after a read back,
/// all of them): shared as it is when it starts with a live check.
fn without_resolved_prefix(list: Arc<Vec<Arc<Check>>>) -> Arc<Vec<Arc<Check>>> {
    let dead = list.iter().take_while(|c| !c.live()).count();
    if dead == 0 { list } else { Arc::new(list[dead..].to_vec()) }
}

/// Whether every live check of `b` is in `a` (both in issue order), or `a`
/// holds a check that fired before any of them (nothing `b` adds matters).
fn contains_all(a: &[Arc<Check>], b: &[Arc<Check>]) -> bool {
    let mut i = 0;
    for y in b.iter().filter(|c| c.live()) {
        while i < a.len() && a[i].seq < y.seq {
            if a[i].failed().is_some() {
                return true;
            }
            i += 1;
        }
        if i == a.len() || a[i].seq != y.seq {
            return false;
        }
    }
    true
}

/// `a` and `b` (each in issue order) merged, without duplicates, checks
/// resolved clean, or anything after the first that fired.
fn merge(a: &[Arc<Check>], b: &[Arc<Check>]) -> Vec<Arc<Check>> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let next = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.seq == y.seq => {
                i += 1;
                j += 1;
                x
            }
            (Some(x), Some(y)) if x.seq < y.seq => {
                i += 1;
                x
            }
            (Some(x), None) => {
                i += 1;
                x
            }
            (_, Some(y)) => {
                j += 1;
                y
            }
            (None, None) => unreachable!("the loop condition"),
        };
        if next.live() {
            out.push(next.clone());
            if next.failed().is_some() {
                break;
            }
        }
    }
    out
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
}

impl Checks {
    /// Checks writing to `buffer`, of [`SLOTS`] · [`WORDS_PER_SLOT`] u32s
    /// (zero-initialised, as wgpu does: id 0, no check fired).
    pub fn new(buffer: Arc<Pooled>) -> Self {
        let state = State { next_id: 1, slots: vec![None; SLOTS as usize] };
        Checks { buffer, state: Mutex::new(state) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
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
        let check =
            Arc::new(Check { id, slot, seq: next_seq(), op, outcome: OnceLock::new(), recorded: Default::default() });
        s.slots[slot as usize] = Some(check.clone());
        Some(check)
    }

    /// The outstanding checks a read back submitted now can resolve: those
    /// whose dispatch is recorded (so in the submission), and those nothing
    /// depends on any more (a dispatch that failed to record: their outcome
    /// matters to no one). Taken *before* the submission: a check another
    /// thread begins, or records, after it must wait for the next read —
    /// resolving it from this one would find its slot unwritten and call a
    /// bad index clean.
    pub fn resolvable(&self) -> Vec<Arc<Check>> {
        let s = self.state();
        s.slots
            .iter()
            .flatten()
            .filter(|c| {
                !c.resolved() && (c.recorded.load(std::sync::atomic::Ordering::Acquire) || Arc::strong_count(c) == 1)
            })
            .cloned()
            .collect()
    }

    /// Resolves `checks` (from [`resolvable`](Self::resolvable)) from
    /// `words`, the error buffer as read back after their dispatches
    /// finished.
    pub fn resolve(&self, checks: &[Arc<Check>], words: &[u32]) {
        for check in checks {
            let at = (check.slot * WORDS_PER_SLOT) as usize;
            let record = &words[at..at + WORDS_PER_SLOT as usize];
            let error = (record[0] == check.id).then(|| Error::IndexOutOfRange {
                op: check.op,
                index: f32::from_bits(record[1]),
                bound: record[2] as usize,
            });
            let _ = check.outcome.set(error);
        }
    }
}

/// Reads a buffer's outcome: the error of a check it depends on that fired.
pub(crate) fn outcome(taint: &Taint) -> Result<()> {
    match taint.error() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Why a buffer holds nothing: the fault that stopped its computation (an
/// input that held nothing, an allocation refused, the device lost), and
/// the checks of the inputs it would have been computed from. A read
/// reports the earliest of them that fired: the first cause, as on the CPU.
#[derive(Clone)]
pub(crate) struct Poison(Arc<(Taint, Fault)>);

impl Poison {
    /// `fault`, with the checks in `taints`.
    pub fn new<'a>(taints: impl IntoIterator<Item = &'a Taint>, fault: Fault) -> Self {
        let taint = Taint::default();
        for t in taints {
            taint.extend_from(t);
        }
        Poison(Arc::new((taint, fault)))
    }

    /// The poisons of several inputs and the checks of the others, as one.
    pub fn combine<'a>(poisons: &'a [Poison], taints: impl IntoIterator<Item = &'a Taint>) -> Self {
        let fault = poisons.iter().map(|p| p.0.1.clone()).reduce(Fault::earlier).expect("at least one poison");
        let own = poisons.iter().map(|p| &p.0.0);
        Poison::new(own.chain(taints), fault)
    }

    /// The error as known when the work was recorded.
    pub fn error(&self) -> &Error {
        &self.0.1.error
    }

    /// Whether a check it depends on is not resolved yet.
    pub fn unresolved(&self) -> bool {
        self.0.0.unresolved()
    }

    /// The error a read reports once the checks are resolved.
    pub fn outcome(&self) -> Error {
        match self.0.0.first_failed() {
            Some((seq, e)) if seq < self.0.1.seq => e,
            _ => self.0.1.error.clone(),
        }
    }
}

impl From<Error> for Poison {
    fn from(error: Error) -> Self {
        Poison::new([], Fault::new(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: u32) -> Arc<Check> {
        Arc::new(Check {
            id,
            slot: id,
            seq: next_seq(),
            op: "gather",
            outcome: OnceLock::new(),
            recorded: Default::default(),
        })
    }

    fn list(t: &Taint) -> Arc<Vec<Arc<Check>>> {
        t.lock().clone()
    }

    #[test]
    fn fresh_outputs_share_their_inputs_check_list() {
        let input = Taint::default();
        let (a, b) = (check(1), check(2));
        input.add(a.clone());
        input.add(b.clone());
        let out = Taint::default();
        out.extend_from(&input);
        assert!(Arc::ptr_eq(&list(&out), &list(&input)), "a fresh output copies nothing");
        // Adding to one list leaves the other as it was (copy on write).
        let c = check(3);
        out.add(c.clone());
        assert_eq!(list(&input).len(), 2);
        assert_eq!(list(&out).len(), 3);
        // Checks resolved clean at the front are dropped when shared again.
        let _ = a.outcome.set(None);
        let again = Taint::default();
        again.extend_from(&out);
        assert_eq!(list(&again).iter().map(|c| c.id).collect::<Vec<_>>(), vec![2, 3]);
        // A check that fires is reported by every buffer depending on it.
        let _ = b.outcome.set(Some(Error::IndexOutOfRange { op: "gather", index: 9.0, bound: 4 }));
        let _ = c.outcome.set(None);
        for t in [&input, &out, &again] {
            assert!(matches!(t.error(), Some(Error::IndexOutOfRange { bound: 4, .. })));
        }
    }

    #[test]
    fn merging_keeps_issue_order_and_stops_at_the_first_that_fired() {
        let (a, b, c) = (check(11), check(12), check(13));
        let x = Taint::default();
        x.add(a.clone());
        x.add(c.clone());
        let y = Taint::default();
        y.add(b.clone());
        let out = Taint::default();
        out.extend_from(&x);
        out.extend_from(&y);
        assert_eq!(list(&out).iter().map(|c| c.id).collect::<Vec<_>>(), vec![11, 12, 13]);
        // Already holding every check of `y`: nothing changes.
        let before = list(&out);
        out.extend_from(&y);
        assert!(Arc::ptr_eq(&before, &list(&out)));
        let _ = a.outcome.set(None);
        let _ = b.outcome.set(Some(Error::IndexOutOfRange { op: "gather", index: -1.0, bound: 3 }));
        let merged = Taint::default();
        merged.add(check(14));
        merged.extend_from(&out);
        assert_eq!(list(&merged).iter().map(|c| c.id).collect::<Vec<_>>(), vec![12], "after the fired one: nothing");
    }
}
