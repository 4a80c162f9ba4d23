//! Shape ops: reshape, flatten, (un)squeeze, transpose/permute,
//! broadcast_to, narrow, cat, index_select and gather.
//!
//! Reshapes share storage (every tensor is contiguous, so any reshape is a
//! view). Everything else that rearranges elements is one strided copy
//! kernel, described by a [`Strided`] view of the input.

use super::same_device;
use crate::Tensor;
use crate::backend::AxisView;
use crate::shape::{Dim, Shape, Strided};

impl Tensor {
    /// Copies a strided view of this tensor into a new contiguous tensor,
    /// without recording anything.
    fn copy_raw(&self, view: Strided) -> Tensor {
        let shape = Shape::from(view.dims.clone());
        let storage = self.device().backend().copy_strided(&self.read(), &view);
        Tensor::from_storage(storage, shape, self.device().clone())
    }

    /// A tensor of `shape` holding zeros except for `region`, which holds
    /// `self`.
    pub(crate) fn embed_raw(&self, shape: &Shape, region: &Strided) -> Tensor {
        let out = Tensor::zeros(shape.clone(), &self.device());
        self.device().backend().copy_into(&mut out.write(), region, &self.read());
        out
    }

    /// Whether nothing else holds this handle or its storage, so it may be
    /// written in place unseen (the backward's own accumulators).
    pub(crate) fn is_exclusive(&self) -> bool {
        std::sync::Arc::strong_count(&self.0) == 1 && self.storage_exclusive()
    }

    /// A contiguous copy of the elements in a storage of its own.
    pub(crate) fn copy_contiguous(&self) -> Tensor {
        self.copy_raw(Strided::contiguous(self.shape()))
    }

    /// `self[region] += values`, in place, touching the region only (a
    /// gather of it, an add, a scatter back).
    pub(crate) fn add_region_in_place(&self, region: &Strided, values: &Tensor) {
        let sum = &self.copy_raw(region.clone()).reshape(values.shape().clone()) + values;
        self.device().backend().copy_into(&mut self.write(), region, &sum.read());
    }

    /// The same elements with another shape of the same size (no copy).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Tensor {
        let shape = shape.into();
        let count = shape.checked_elem_count();
        assert!(
            count == Some(self.elem_count()),
            "reshape: cannot reshape {} ({} elements) into {shape} ({} elements)",
            self.shape(),
            self.elem_count(),
            count.map_or("more than memory can hold".to_string(), |c| c.to_string())
        );
        if &shape == self.shape() && !self.is_tracked() {
            return self.clone();
        }
        let input_shape = self.shape().clone();
        self.share_storage(shape).record("reshape", &[self], move |c| vec![Some(c.grad.reshape(input_shape))])
    }

    /// Merges axes `start..=end` into one.
    pub fn flatten(&self, start: impl Dim, end: impl Dim) -> Tensor {
        let (s, e) = (start.index(self.shape(), "flatten"), end.index(self.shape(), "flatten"));
        assert!(s <= e, "flatten: start axis {s} after end axis {e} for shape {}", self.shape());
        let d = self.dims();
        let mut dims = d[..s].to_vec();
        dims.push(d[s..=e].iter().product());
        dims.extend_from_slice(&d[e + 1..]);
        self.reshape(dims)
    }

    /// Inserts an axis of length 1 at `axis` (`0..=rank`; a negative one
    /// counts from after the last axis, so `-1` appends one, as PyTorch).
    pub fn unsqueeze(&self, axis: impl Dim) -> Tensor {
        let axis = axis.insertion(self.shape(), "unsqueeze");
        let mut dims = self.dims().to_vec();
        dims.insert(axis, 1);
        self.reshape(dims)
    }

    /// Removes `axis`, which must have length 1.
    pub fn squeeze(&self, axis: impl Dim) -> Tensor {
        let axis = axis.index(self.shape(), "squeeze");
        assert!(self.dims()[axis] == 1, "squeeze: axis {axis} of shape {} is not 1", self.shape());
        self.reshape(self.shape().without_dim(axis))
    }

    /// Reorders the axes: output axis `i` is input axis `order[i]` (negative
    /// axes count from the end).
    pub fn permute<D: Dim + std::fmt::Debug>(&self, order: &[D]) -> Tensor {
        let rank = self.rank();
        let mut seen = vec![false; rank];
        let resolved: Vec<usize> = order
            .iter()
            .map(|&a| {
                let i = a.signed();
                let r = rank as i64;
                if (-r..r).contains(&i) { i.rem_euclid(r.max(1)) as usize } else { usize::MAX }
            })
            .collect();
        assert!(
            order.len() == rank && resolved.iter().all(|&a| a < rank && !std::mem::replace(&mut seen[a], true)),
            "permute: {order:?} is not a permutation of the axes of shape {}",
            self.shape()
        );
        let order = &resolved[..];
        let strides = self.shape().strides();
        let view = Strided {
            dims: order.iter().map(|&a| self.dims()[a]).collect(),
            strides: order.iter().map(|&a| strides[a]).collect(),
            offset: 0,
        };
        let mut inverse = vec![0; rank];
        for (i, &a) in order.iter().enumerate() {
            inverse[a] = i;
        }
        self.copy_raw(view).record("permute", &[self], move |c| vec![Some(c.grad.permute(&inverse))])
    }

    /// Swaps two axes.
    pub fn transpose(&self, a: impl Dim, b: impl Dim) -> Tensor {
        let (a, b) = (a.index(self.shape(), "transpose"), b.index(self.shape(), "transpose"));
        let mut order: Vec<usize> = (0..self.rank()).collect();
        order.swap(a, b);
        self.permute(&order)
    }

    /// The transpose of a matrix (swaps the last two axes).
    pub fn t(&self) -> Tensor {
        assert!(self.rank() >= 2, "t: needs at least 2 axes, got shape {}", self.shape());
        self.transpose(-2, -1)
    }

    /// Repeats this tensor along broadcast axes to `shape` (NumPy rules).
    pub fn broadcast_to(&self, shape: impl Into<Shape>) -> Tensor {
        let shape = shape.into();
        assert!(
            Shape::broadcast(self.shape(), &shape).as_ref() == Some(&shape),
            "broadcast_to: shape {} cannot be broadcast to {shape}",
            self.shape()
        );
        if &shape == self.shape() {
            return self.clone();
        }
        let shape = shape.checked("broadcast_to");
        let view = Strided { dims: shape.dims().to_vec(), strides: self.shape().broadcast_strides(&shape), offset: 0 };
        let input_shape = self.shape().clone();
        self.copy_raw(view).record("broadcast_to", &[self], move |c| vec![Some(c.grad.sum_to(&input_shape))])
    }

    /// The elements of `axis` from `start` for `len`, i.e. `x[..,
    /// start..start+len, ..]`, as a new tensor: unlike PyTorch's `narrow`,
    /// not a view, so writing to it (`assign`) leaves `self` as it is —
    /// [`assign_narrow`](Self::assign_narrow) writes a region of `self`.
    pub fn narrow(&self, axis: impl Dim, start: usize, len: usize) -> Tensor {
        let axis = axis.index(self.shape(), "narrow");
        let size = self.dims()[axis];
        assert!(
            start.checked_add(len).is_some_and(|end| end <= size),
            "narrow: range {start}..{} out of bounds for axis {axis} of shape {}",
            start.saturating_add(len),
            self.shape()
        );
        let region = Self::axis_region(self.shape(), axis, start, len);
        self.copy_raw(region.clone()).record("narrow", &[self], move |c| {
            c.grad_region(0, c.grad.clone(), region);
            vec![None]
        })
    }

    /// Overwrites the elements of `axis` from `start` (as many as `src` has
    /// along it) with `src`, in place and without recording, as
    /// [`assign`](Self::assign) does the whole tensor: PyTorch's
    /// `x.narrow(axis, start, len).copy_(src)` (or `x[.., a:b, ..] = src`
    /// under `no_grad`). A backward that needs `self`'s old values refuses,
    /// as after `assign`.
    pub fn assign_narrow(&self, axis: impl Dim, start: usize, src: &Tensor) {
        let axis = axis.index(self.shape(), "assign_narrow");
        let len = src.dims().get(axis).copied().unwrap_or(0);
        assert!(
            src.rank() == self.rank()
                && src.dims().iter().zip(self.dims()).enumerate().all(|(i, (a, b))| i == axis || a == b)
                && start.checked_add(len).is_some_and(|end| end <= self.dims()[axis]),
            "assign_narrow: source of shape {} does not fit axis {axis} of shape {} from {start}",
            src.shape(),
            self.shape()
        );
        super::same_device("assign_narrow", self, src);
        // Sharing the storage, `src` holds as many elements as `self`: it is
        // the whole of it, already in place.
        if len == 0 || self.same_storage(src) {
            return;
        }
        let region = Self::axis_region(self.shape(), axis, start, len);
        let src = src.read();
        self.device().backend().copy_into(&mut self.write(), &region, &src);
    }

    /// The strided region `start..start+len` of `axis` in a contiguous `shape`.
    fn axis_region(shape: &Shape, axis: usize, start: usize, len: usize) -> Strided {
        let strides = shape.strides();
        Strided { dims: shape.with_dim(axis, len).dims().to_vec(), offset: start * strides[axis], strides }
    }

    /// Concatenates tensors along `axis`; all other axes must match.
    pub fn cat(tensors: &[&Tensor], axis: impl Dim) -> Tensor {
        assert!(!tensors.is_empty(), "cat: no tensors given");
        let first = tensors[0];
        let axis = axis.index(first.shape(), "cat");
        for t in tensors {
            same_device("cat", first, t);
            assert!(
                t.rank() == first.rank()
                    && t.dims().iter().zip(first.dims()).enumerate().all(|(i, (a, b))| i == axis || a == b),
                "cat: shape {} does not match {} outside axis {axis}",
                t.shape(),
                first.shape()
            );
        }
        let total = tensors.iter().try_fold(0usize, |acc, t| acc.checked_add(t.dims()[axis]));
        let total = total.unwrap_or_else(|| panic!("cat: the lengths along axis {axis} overflow"));
        let shape = first.shape().with_dim(axis, total).checked("cat");
        let out = Tensor::zeros(shape.clone(), &first.device());
        let mut starts = Vec::with_capacity(tensors.len());
        {
            let mut dst = out.write();
            let mut start = 0;
            for t in tensors {
                let len = t.dims()[axis];
                let region = Self::axis_region(&shape, axis, start, len);
                first.device().backend().copy_into(&mut dst, &region, &t.read());
                starts.push((start, len));
                start += len;
            }
        }
        out.record("cat", tensors, move |c| {
            starts.iter().zip(c.needs).map(|(&(s, l), &need)| need.then(|| c.grad.narrow(axis, s, l))).collect()
        })
    }

    /// Picks entries of `axis` by index: `out[.., j, ..] = self[.., indices[j], ..]`.
    /// `indices` is a 1-D tensor of integer values.
    pub fn index_select(&self, axis: impl Dim, indices: &Tensor) -> Tensor {
        let axis = axis.index(self.shape(), "index_select");
        assert!(
            indices.rank() == 1,
            "index_select: indices must be 1-D,
            got shape {}",
            indices.shape()
        );
        let m = indices.elem_count();
        let (outer, _, inner) = self.shape().split_at_axis(axis);
        // The indices, read as [outer, m, inner] with the outer and inner axes broadcast.
        let layout = Strided { dims: vec![outer, m, inner], strides: vec![0, 1, 0], offset: 0 };
        self.gather_op("index_select", axis, indices, layout, m)
    }

    /// `out[i][j][k] = self[i][index[i][j][k]][k]` for `axis = 1`, and
    /// likewise for any axis, as `torch.gather`. `index` has `self`'s shape
    /// except along `axis`, and holds integer values.
    pub fn gather(&self, axis: impl Dim, index: &Tensor) -> Tensor {
        let axis = axis.index(self.shape(), "gather");
        assert!(
            index.rank() == self.rank()
                && index.dims().iter().zip(self.dims()).enumerate().all(|(i, (a, b))| i == axis || a == b),
            "gather: index shape {} does not match input shape {} outside axis {axis}",
            index.shape(),
            self.shape()
        );
        let m = index.dims()[axis];
        let (outer, _, inner) = self.shape().split_at_axis(axis);
        let layout = Strided { dims: vec![outer, m, inner], strides: vec![m * inner, inner, 1], offset: 0 };
        self.gather_op("gather", axis, index, layout, m)
    }

    fn gather_op(&self, op: &'static str, axis: usize, index: &Tensor, layout: Strided, m: usize) -> Tensor {
        same_device(op, self, index);
        let out_shape = self.shape().with_dim(axis, m).checked(op);
        let (outer, len, inner) = self.shape().split_at_axis(axis);
        let view = AxisView { outer, len, inner };
        let device = self.device();
        let storage =
            Tensor::with_storages(&[self, index], |s| device.backend().gather(op, s[0], view, (s[1], &layout), m));
        // The index is an input too (never differentiated), so that a
        // backward after it was modified in place refuses, as PyTorch's;
        // its handle is made before the output, as every input's is.
        let index = index.detach();
        let out = Tensor::from_storage(storage, out_shape, self.device().clone());
        out.record(op, &[self, &index], move |c| {
            let index = c.input(1);
            let storage = c.grad.device().backend().scatter_add(op, &c.grad.read(), view, (&index.read(), &layout), m);
            vec![Some(Tensor::from_storage(storage, c.shape(0).clone(), c.grad.device().clone())), None]
        })
    }

    /// Adds `self` (of `index`'s shape) into zeros of length `len` along
    /// `axis` at the positions `index` names: the adjoint of `gather`.
    pub(crate) fn scatter_add_raw(&self, op: &'static str, axis: usize, index: &Tensor, len: usize) -> Tensor {
        let (outer, m, inner) = self.shape().split_at_axis(axis);
        let view = AxisView { outer, len, inner };
        let layout = Strided { dims: vec![outer, m, inner], strides: vec![m * inner, inner, 1], offset: 0 };
        let device = self.device();
        let storage =
            Tensor::with_storages(&[self, index], |s| device.backend().scatter_add(op, s[0], view, (s[1], &layout), m));
        Tensor::from_storage(storage, self.shape().with_dim(axis, len), self.device().clone())
    }
}
