//! Opt-in detection of the first op that produced a NaN (or, in a backward
//! rule, an infinity).
//!
//! Inside [`detect_anomaly`], every op's output (forward and backward) is
//! checked. A forward infinity is not an anomaly: masks are made of them
//! (a causal attention's `-∞` bias, `masked_fill(-inf)`), and a NaN it
//! leads to is caught where it appears; a gradient that is infinite is. That reads each result back to the host, so it is slow on a GPU
//! and meant for debugging a training run that diverged, as PyTorch's
//! `detect_anomaly`.

use crate::{Error, Result, Tensor};
use std::cell::RefCell;

#[derive(Default)]
struct State {
    active: bool,
    /// The backward rule being run, to name in reports.
    in_backward_of: Option<&'static str>,
    first: Option<String>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Runs `f` checking every op's result for NaN (and a backward rule's for
/// infinity too); returns [`Error::Anomaly`] naming the first op that
/// produced one, or `f`'s value.
///
/// ```
/// use wgrad::{Device, Tensor, detect_anomaly};
/// let x = Tensor::from_vec(vec![1.0, -1.0], [2], &Device::Cpu).unwrap();
/// let err = detect_anomaly(|| x.sqrt().sum()).unwrap_err();
/// assert!(err.to_string().contains("`sqrt`"), "{err}");
/// ```
pub fn detect_anomaly<R>(f: impl FnOnce() -> R) -> Result<R> {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            STATE.with(|s| {
                let mut s = s.borrow_mut();
                s.active = self.0;
                if !self.0 {
                    s.first = None;
                }
            });
        }
    }
    let was_active = STATE.with(|s| std::mem::replace(&mut s.borrow_mut().active, true));
    let _restore = Restore(was_active);
    let r = f();
    match STATE.with(|s| s.borrow_mut().first.take()) {
        Some(msg) => Err(Error::Anomaly(msg)),
        None => Ok(r),
    }
}

/// Runs a backward rule with its op's name in scope for reports.
pub(crate) fn in_backward_of<R>(op: &'static str, f: impl FnOnce() -> R) -> R {
    let active = STATE.with(|s| s.borrow().active);
    if !active {
        return f();
    }
    // Put back also if the rule panics (a refused in-place change, caught
    // by the caller), or later forward ops would be named as its backward.
    struct Restore(Option<&'static str>);
    impl Drop for Restore {
        fn drop(&mut self) {
            STATE.with(|s| s.borrow_mut().in_backward_of = self.0);
        }
    }
    let _restore = Restore(STATE.with(|s| s.borrow_mut().in_backward_of.replace(op)));
    f()
}

/// Records `t` as the first anomaly if detection is on and it holds a NaN,
/// or in a backward rule an infinity.
pub(crate) fn check_anomaly(op: &'static str, t: &Tensor) {
    let watching = STATE.with(|s| {
        let s = s.borrow();
        s.active && s.first.is_none()
    });
    if !watching {
        return;
    }
    let values = match t.to_vec() {
        Ok(v) => v,
        Err(e) => {
            STATE.with(|s| s.borrow_mut().first = Some(format!("`{op}` failed: {e}")));
            return;
        }
    };
    let backward = STATE.with(|s| s.borrow().in_backward_of.is_some());
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| v.is_nan() || (backward && v.is_infinite())) {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            let place = match s.in_backward_of {
                Some(b) => format!(" in the backward of `{b}`"),
                None => String::new(),
            };
            s.first = Some(format!("`{op}`{place} produced {v} at element {i} of its output of shape {}", t.shape()));
        });
    }
}
