//! Shapes, axes and broadcasting.
//!
//! Every tensor in wgrad is stored contiguously in row-major order, so a
//! [`Shape`] alone determines the layout. Views that are not contiguous
//! (a transpose, a broadcast, a narrowed axis) exist only inside a kernel call,
//! described by a [`Strided`] layout; the result is always contiguous again.
//!
//! ```
//! use wgrad::Shape;
//! let s = Shape::broadcast(&Shape::from([3, 1, 5]), &Shape::from([4, 1])).unwrap();
//! assert_eq!(s.dims(), &[3, 4, 5]);
//! ```

use std::fmt;

/// The most f32 elements a tensor can have: `isize::MAX` bytes, the most
/// any allocation can span.
pub(crate) const MAX_ELEMENTS: usize = isize::MAX as usize / 4;

/// The dimensions of a tensor, outermost first. A scalar has no dimensions.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// Number of dimensions (0 for a scalar).
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements (1 for a scalar), or `None` when the shape is
    /// too large to exist: its f32s would take more bytes than an address
    /// space holds (`isize::MAX`). A shape with a zero dimension is empty,
    /// whatever its other dimensions.
    pub fn checked_elem_count(&self) -> Option<usize> {
        if self.0.contains(&0) {
            return Some(0);
        }
        let n = self.0.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
        (n <= MAX_ELEMENTS).then_some(n)
    }

    /// Number of elements (1 for a scalar). Panics if the shape is too
    /// large to exist (see [`checked_elem_count`](Self::checked_elem_count));
    /// every tensor's shape was checked when it was made, so this never
    /// panics for `tensor.shape()`.
    pub fn elem_count(&self) -> usize {
        self.checked_elem_count().unwrap_or_else(|| panic!("shape {self} has more elements than memory can hold"))
    }

    /// This shape, which the op `op` is about to create, or a panic naming
    /// `op` when it is too large to exist.
    pub(crate) fn checked(self, op: &str) -> Shape {
        assert!(
            self.checked_elem_count().is_some(),
            "{op}: shape {self} has more elements than memory can hold ({} bytes or more)",
            MAX_ELEMENTS as u128 * 4
        );
        self
    }

    /// Row-major strides of a contiguous tensor of this shape. (Those of an
    /// empty shape saturate instead of overflowing: nothing is read through
    /// them.)
    pub fn strides(&self) -> Vec<usize> {
        let mut strides = vec![0; self.rank()];
        let mut acc = 1usize;
        for (s, &d) in strides.iter_mut().zip(&self.0).rev() {
            *s = acc;
            acc = acc.saturating_mul(d);
        }
        strides
    }

    /// The NumPy broadcast of two shapes, or `None` when they are incompatible.
    pub fn broadcast(a: &Shape, b: &Shape) -> Option<Shape> {
        let rank = a.rank().max(b.rank());
        let mut dims = vec![0; rank];
        for (i, d) in dims.iter_mut().enumerate() {
            let da = a.dim_from_right(rank - 1 - i);
            let db = b.dim_from_right(rank - 1 - i);
            *d = match (da, db) {
                (x, y) if x == y => x,
                (1, y) => y,
                (x, 1) => x,
                _ => return None,
            };
        }
        Some(Shape(dims))
    }

    /// The `i`-th dimension counted from the right (0 is the last), or 1 past the rank.
    fn dim_from_right(&self, i: usize) -> usize {
        if i < self.rank() { self.0[self.rank() - 1 - i] } else { 1 }
    }

    /// Strides for reading a tensor of this shape as if it had been broadcast to
    /// `target`: broadcast dimensions get stride 0. `target` must be a valid
    /// broadcast of `self`.
    pub(crate) fn broadcast_strides(&self, target: &Shape) -> Vec<usize> {
        let own = self.strides();
        let offset = target.rank() - self.rank();
        (0..target.rank()).map(|i| if i < offset || self.0[i - offset] == 1 { 0 } else { own[i - offset] }).collect()
    }

    /// Splits the shape around `axis` into (outer, len, inner) element counts:
    /// the row-major view `[outer, len, inner]` every axis-wise kernel works on.
    pub(crate) fn split_at_axis(&self, axis: usize) -> (usize, usize, usize) {
        let outer = self.0[..axis].iter().product();
        let inner = self.0[axis + 1..].iter().product();
        (outer, self.0[axis], inner)
    }

    /// This shape with `axis` set to `len`.
    pub(crate) fn with_dim(&self, axis: usize, len: usize) -> Shape {
        let mut dims = self.0.clone();
        dims[axis] = len;
        Shape(dims)
    }

    /// This shape with `axis` removed.
    pub(crate) fn without_dim(&self, axis: usize) -> Shape {
        let mut dims = self.0.clone();
        dims.remove(axis);
        Shape(dims)
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(dims: Vec<usize>) -> Self {
        Shape(dims)
    }
}

impl From<&[usize]> for Shape {
    fn from(dims: &[usize]) -> Self {
        Shape(dims.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(dims: [usize; N]) -> Self {
        Shape(dims.to_vec())
    }
}

impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}

impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape(Vec::new())
    }
}

impl From<usize> for Shape {
    fn from(d: usize) -> Self {
        Shape(vec![d])
    }
}

macro_rules! tuple_shape {
    ($($n:literal: ($($d:ident),*)),*) => {$(
        #[doc = concat!("A shape of ", $n, " dimensions from a tuple, as PyTorch takes `(2, 3)`.")]
        impl From<($(tuple_shape!(@usize $d),)*)> for Shape {
            fn from(($($d,)*): ($(tuple_shape!(@usize $d),)*)) -> Self {
                Shape(vec![$($d),*])
            }
        }
    )*};
    (@usize $d:ident) => { usize };
}
tuple_shape!(1: (a), 2: (a, b), 3: (a, b, c), 4: (a, b, c, d), 5: (a, b, c, d, e), 6: (a, b, c, d, e, f));

/// An axis argument: a `usize`, or a negative `i32`/`isize` counting from the
/// end as in PyTorch (`-1` is the last axis).
pub trait Dim: Copy + fmt::Display {
    /// The axis as a signed number.
    fn signed(self) -> i64;

    /// Resolves the axis against a tensor's shape, panicking with the op's
    /// name and the shape when it is out of range.
    fn index(self, shape: &Shape, op: &str) -> usize {
        resolve(self, shape.rank(), shape, op)
    }

    /// Resolves a position to insert an axis at (`0..=rank`; `-1` is after
    /// the last axis), as `unsqueeze` takes.
    fn insertion(self, shape: &Shape, op: &str) -> usize {
        resolve(self, shape.rank() + 1, shape, op)
    }
}

fn resolve(d: impl Dim, count: usize, shape: &Shape, op: &str) -> usize {
    let (r, i) = (count as i64, d.signed());
    let resolved = if i < 0 { i + r } else { i };
    assert!((0..r).contains(&resolved), "{op}: axis {d} out of range for shape {shape}");
    resolved as usize
}

impl Dim for usize {
    fn signed(self) -> i64 {
        i64::try_from(self).unwrap_or(i64::MAX)
    }
}

macro_rules! signed_dim {
    ($($t:ty),*) => {$(
        impl Dim for $t {
            fn signed(self) -> i64 {
                self as i64
            }
        }
    )*};
}
signed_dim!(i32, i64, isize);

/// A strided view of contiguous storage: how a kernel reads an input that was
/// transposed, broadcast or narrowed without copying it first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Strided {
    /// Logical shape of the view.
    pub dims: Vec<usize>,
    /// Element stride of each dimension in the storage (0 for broadcast).
    pub strides: Vec<usize>,
    /// Element offset of the view's first element in the storage.
    pub offset: usize,
}

impl Strided {
    /// The contiguous layout of `shape`.
    pub fn contiguous(shape: &Shape) -> Self {
        Strided { dims: shape.dims().to_vec(), strides: shape.strides(), offset: 0 }
    }

    /// Storage index of the `i`-th element of the view in row-major order.
    #[inline]
    pub fn index_of(&self, mut i: usize) -> usize {
        let mut at = self.offset;
        for (&d, &s) in self.dims.iter().zip(&self.strides).rev() {
            at += (i % d) * s;
            i /= d;
        }
        at
    }

    /// Whether the view reads storage in plain row-major order (the stride
    /// of a dimension of size 1 never matters: a broadcast gives it 0).
    pub fn is_contiguous(&self) -> bool {
        let row_major = Shape::from(self.dims.clone()).strides();
        self.offset == 0
            && self.dims.iter().zip(self.strides.iter().zip(&row_major)).all(|(&d, (s, r))| d == 1 || s == r)
    }
}

/// Drops size-1 dimensions and merges dimensions that are contiguous in
/// every view, so the innermost loop runs as long as possible.
pub(crate) fn coalesce(dims: &[usize], views: &mut [Vec<usize>]) -> Vec<usize> {
    let mut out_dims: Vec<usize> = Vec::new();
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::new(); views.len()];
    for (i, &d) in dims.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let mergeable =
            !out_dims.is_empty() && views.iter().zip(&out_strides).all(|(v, o)| *o.last().unwrap() == v[i] * d);
        if mergeable {
            *out_dims.last_mut().unwrap() *= d;
            for (v, o) in views.iter().zip(out_strides.iter_mut()) {
                *o.last_mut().unwrap() = v[i];
            }
        } else {
            out_dims.push(d);
            for (v, o) in views.iter().zip(out_strides.iter_mut()) {
                o.push(v[i]);
            }
        }
    }
    if out_dims.is_empty() {
        out_dims.push(1);
        for o in out_strides.iter_mut() {
            o.push(0);
        }
    }
    for (v, o) in views.iter_mut().zip(out_strides) {
        *v = o;
    }
    out_dims
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_counts_never_wrap() {
        // 3 · X wraps to exactly 1 in 64-bit arithmetic.
        let x = 0xAAAA_AAAA_AAAA_AAABusize;
        assert_eq!(3usize.wrapping_mul(x), 1);
        assert_eq!(Shape::from([3, x]).checked_elem_count(), None);
        assert_eq!(Shape::from([1 << 32, 1 << 32]).checked_elem_count(), None);
        assert_eq!(Shape::from([usize::MAX]).checked_elem_count(), None);
        // The largest count whose bytes fit, and one more.
        assert_eq!(Shape::from([MAX_ELEMENTS]).checked_elem_count(), Some(MAX_ELEMENTS));
        assert_eq!(Shape::from([MAX_ELEMENTS + 1]).checked_elem_count(), None);
        // Empty shapes are empty whatever else they hold, strides included.
        assert_eq!(Shape::from([usize::MAX, 0, usize::MAX]).checked_elem_count(), Some(0));
        assert_eq!(Shape::from([0, 1 << 40, 1 << 40]).strides(), vec![usize::MAX, 1 << 40, 1]);
        assert_eq!(Shape::from(()).checked_elem_count(), Some(1));
    }

    #[test]
    #[should_panic(expected = "zeros: shape [3, 12297829382473034411] has more elements than memory can hold")]
    fn a_shape_too_large_to_exist_panics_naming_the_op() {
        let _ = Shape::from([3, 0xAAAA_AAAA_AAAA_AAAB]).checked("zeros");
    }

    #[test]
    fn broadcast_follows_numpy() {
        let b = |a: &[usize], c: &[usize]| Shape::broadcast(&a.into(), &c.into());
        assert_eq!(b(&[2, 3], &[3]).unwrap().dims(), &[2, 3]);
        assert_eq!(b(&[2, 1], &[1, 3]).unwrap().dims(), &[2, 3]);
        assert_eq!(b(&[], &[4]).unwrap().dims(), &[4]);
        assert_eq!(b(&[5, 1, 7], &[4, 1]).unwrap().dims(), &[5, 4, 7]);
        assert!(b(&[2, 3], &[4]).is_none());
    }

    #[test]
    fn broadcast_strides_zero_on_expanded_dims() {
        let s = Shape::from([3, 1]);
        assert_eq!(s.broadcast_strides(&Shape::from([2, 3, 4])), vec![0, 1, 0]);
    }

    #[test]
    fn negative_axes_count_from_the_end() {
        let s = Shape::from([2, 3, 4]);
        assert_eq!((-1i32).index(&s, "t"), 2);
        assert_eq!((-3i32).index(&s, "t"), 0);
        assert_eq!(1usize.index(&s, "t"), 1);
    }

    #[test]
    #[should_panic(expected = "sum: axis 3 out of range for shape [2, 3, 4]")]
    fn axis_out_of_range_names_the_op() {
        3usize.index(&Shape::from([2, 3, 4]), "sum");
    }

    #[test]
    fn coalesce_merges_what_all_views_allow() {
        // [2, 3, 4] with b broadcast along axis 1: b's strides (4, 0, 1) let
        // no neighbouring axes merge.
        let mut v = vec![vec![12, 4, 1], vec![4, 0, 1]];
        let d = coalesce(&[2, 3, 4], &mut v);
        assert_eq!(d, vec![2, 3, 4]);
        let mut v = vec![vec![12, 4, 1], vec![12, 4, 1]];
        assert_eq!(coalesce(&[2, 3, 4], &mut v), vec![24]);
    }
}
