//! `Tensor`: a cheap-to-clone handle to an n-dimensional f32 array on a
//! device, plus its place on the autograd tape.
//!
//! Cloning a tensor clones a pointer. Ops never modify their inputs; the only
//! in-place writes are optimizer updates of variables, which go through the
//! optimizer. Storage is shared between a tensor and its reshapes/detached
//! copies, as views are in PyTorch.
//!
//! ```
//! use wgrad::{Device, Tensor};
//! let dev = Device::Cpu;
//! let a = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], [2, 2], &dev).unwrap();
//! let b = Tensor::ones([2, 2], &dev);
//! let c = a.matmul(&b) + 1.0;
//! assert_eq!(c.to_vec().unwrap(), vec![4.0, 4.0, 8.0, 8.0]);
//! ```

use crate::autograd::Node;
use crate::backend::Storage;
use crate::rng::{Generator, with_default_generator};
use crate::shape::Shape;
use crate::{Device, Error, Result};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static LIVE_TENSORS: AtomicUsize = AtomicUsize::new(0);

/// Number of tensor handles' shared states alive in the process (clones of
/// one tensor count once). A training loop that leaks nothing returns to the
/// same count every step.
pub fn live_tensors() -> usize {
    LIVE_TENSORS.load(Ordering::Relaxed)
}

/// An n-dimensional array of f32 on a [`Device`], tracked by autograd when it
/// is a variable or computed from one.
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    id: u64,
    shape: Shape,
    storage: Arc<StorageCell>,
    grad: GradState,
}

/// Storage shared by a tensor and its views (reshapes, detached handles,
/// the variable and its clones): the elements, the device they live on
/// (which `Module::to_device` may change, for every view at once), and a
/// version counter that every in-place write bumps: a backward pass
/// compares it with the version its forward saw, as PyTorch does, instead
/// of silently using new values.
pub(crate) struct StorageCell {
    data: RwLock<Storage>,
    device: RwLock<Device>,
    version: AtomicU64,
}

enum GradState {
    /// A constant: gradients stop here.
    None,
    /// A leaf whose gradient `backward` reports while the flag is set (a
    /// frozen parameter has it cleared: see [`Tensor::set_requires_grad`]).
    Variable(AtomicBool),
    /// The output of a recorded op; `None` once a backward pass walked it.
    Node(Mutex<Option<Node>>),
}

impl Inner {
    fn take_node(&mut self) -> Option<Node> {
        match &mut self.grad {
            GradState::Node(n) => n.get_mut().unwrap_or_else(|e| e.into_inner()).take(),
            _ => None,
        }
    }
}

impl Drop for Inner {
    /// Drops the graph behind this tensor iteratively: a long chain of ops
    /// would otherwise be freed by recursion as deep as the chain.
    fn drop(&mut self) {
        LIVE_TENSORS.fetch_sub(1, Ordering::Relaxed);
        let mut stack: Vec<Node> = self.take_node().into_iter().collect();
        while let Some(mut node) = stack.pop() {
            for input in node.inputs.iter_mut() {
                if let Some(inner) = Arc::get_mut(&mut input.0) {
                    stack.extend(inner.take_node());
                }
            }
        }
    }
}

impl Tensor {
    /// A new untracked tensor owning `storage`.
    pub(crate) fn from_storage(storage: Storage, shape: Shape, device: Device) -> Tensor {
        let cell = StorageCell { data: RwLock::new(storage), device: RwLock::new(device), version: AtomicU64::new(0) };
        Self::with_storage(Arc::new(cell), shape, false)
    }

    fn with_storage(storage: Arc<StorageCell>, shape: Shape, variable: bool) -> Tensor {
        LIVE_TENSORS.fetch_add(1, Ordering::Relaxed);
        Tensor(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shape,
            storage,
            grad: if variable { GradState::Variable(AtomicBool::new(true)) } else { GradState::None },
        }))
    }

    /// A new untracked handle on this tensor's storage with another shape of
    /// the same size (reshape's forward, `detach`).
    pub(crate) fn share_storage(&self, shape: Shape) -> Tensor {
        debug_assert_eq!(shape.elem_count(), self.elem_count());
        Self::with_storage(self.0.storage.clone(), shape, false)
    }

    pub(crate) fn attach(&mut self, node: Node) {
        let inner = Arc::get_mut(&mut self.0).expect("record: an op output is not shared yet");
        inner.grad = GradState::Node(Mutex::new(Some(node)));
    }

    pub(crate) fn take_node(&self) -> Option<Node> {
        match &self.0.grad {
            GradState::Node(n) => n.lock().unwrap_or_else(|e| e.into_inner()).take(),
            _ => None,
        }
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.data.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the storages of `tensors`, each read-locked once however
    /// often it appears (locking one twice on a thread may deadlock).
    pub(crate) fn with_storages<R>(tensors: &[&Tensor], f: impl FnOnce(&[&Storage]) -> R) -> R {
        let mut owners: Vec<usize> = Vec::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            owners.push(tensors[..i].iter().position(|u| u.same_storage(t)).unwrap_or(i));
        }
        let guards: Vec<Option<RwLockReadGuard<'_, Storage>>> =
            tensors.iter().enumerate().map(|(i, t)| (owners[i] == i).then(|| t.read())).collect();
        let storages: Vec<&Storage> =
            owners.iter().map(|&o| &**guards[o].as_ref().expect("the first holder locked it")).collect();
        f(&storages)
    }

    /// The storage, for an in-place write: bumps its version.
    /// Whether no other tensor shares this one's storage.
    pub(crate) fn storage_exclusive(&self) -> bool {
        Arc::strong_count(&self.0.storage) == 1
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Storage> {
        self.0.storage.version.fetch_add(1, Ordering::Relaxed);
        if crate::backend::gpu::capture::active() {
            // A replay rewrites it without coming here: it bumps again then.
            let cell = Arc::downgrade(&self.0.storage);
            crate::backend::gpu::capture::note_in_place(Box::new(move || {
                if let Some(cell) = cell.upgrade() {
                    cell.version.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        self.0.storage.data.write().unwrap_or_else(|e| e.into_inner())
    }

    /// How many in-place writes the storage has had (see [`StorageCell`]).
    pub(crate) fn version(&self) -> u64 {
        self.0.storage.version.load(Ordering::Relaxed)
    }

    /// A tensor of `shape` whose storage holds `error` instead of values.
    fn poisoned(error: Error, shape: Shape, device: &Device) -> Tensor {
        Tensor::from_storage(device.backend().poisoned(error), shape, device.clone())
    }

    /// Whether two handles share storage (a tensor and its reshapes).
    /// The identity of its storage (shared by reshapes and `detach`).
    pub(crate) fn storage_id(&self) -> usize {
        Arc::as_ptr(&self.0.storage) as usize
    }

    pub(crate) fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    // ----- creation -------------------------------------------------------

    /// A tensor of `shape` filled with `value`.
    ///
    /// Panics, naming the op and the shape, if the shape has more elements
    /// than memory can hold. If the device cannot allocate it, the tensor
    /// is poisoned: reading it (or anything computed from it) returns
    /// [`Error::OutOfMemory`] or [`Error::TooLarge`]. [`try_full`](Self::try_full)
    /// returns either error at once instead.
    pub fn full(shape: impl Into<Shape>, value: f32, device: &Device) -> Tensor {
        Self::filled("full", shape.into(), value, device)
    }

    fn filled(op: &str, shape: Shape, value: f32, device: &Device) -> Tensor {
        let shape = shape.checked(op);
        let storage = device.backend().full(shape.elem_count(), value);
        Tensor::from_storage(storage, shape, device.clone())
    }

    /// As [`full`](Self::full), but a shape too large to exist, or an
    /// allocation the device refuses, is an error instead of a panic or a
    /// poisoned tensor.
    ///
    /// ```
    /// use wgrad::{Device, Error, Tensor};
    /// let err = Tensor::try_full([1 << 40, 1 << 40], 0.0, &Device::Cpu).unwrap_err();
    /// assert!(matches!(err, Error::Shape { .. }), "{err}");
    /// ```
    pub fn try_full(shape: impl Into<Shape>, value: f32, device: &Device) -> Result<Tensor> {
        let shape = Self::check_size("try_full", shape.into())?;
        let storage = device.backend().full(shape.elem_count(), value);
        match device.backend().error(&storage) {
            Some(e) => Err(e),
            None => Ok(Tensor::from_storage(storage, shape, device.clone())),
        }
    }

    /// A tensor of zeros (see [`full`](Self::full) for what happens when it
    /// does not fit).
    pub fn zeros(shape: impl Into<Shape>, device: &Device) -> Tensor {
        Self::filled("zeros", shape.into(), 0.0, device)
    }

    /// A tensor of ones (see [`full`](Self::full) for what happens when it
    /// does not fit).
    pub fn ones(shape: impl Into<Shape>, device: &Device) -> Tensor {
        Self::filled("ones", shape.into(), 1.0, device)
    }

    /// A scalar (shape `[]`).
    pub fn scalar(value: f32, device: &Device) -> Tensor {
        Tensor::full((), value, device)
    }

    /// Zeros of `self`'s shape on `self`'s device.
    pub fn zeros_like(&self) -> Tensor {
        Tensor::zeros(self.shape().clone(), &self.device())
    }

    /// Ones of `self`'s shape on `self`'s device.
    pub fn ones_like(&self) -> Tensor {
        Tensor::ones(self.shape().clone(), &self.device())
    }

    /// A tensor holding `data` in row-major order. Fails if `data` does not
    /// have exactly as many elements as `shape`.
    pub fn from_vec(data: Vec<f32>, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = Self::check_len(data.len(), shape.into())?;
        Ok(Tensor::from_storage(device.backend().upload_vec(data), shape, device.clone()))
    }

    /// A tensor from nested arrays, vectors or slices of f32, shaped as
    /// they are nested, as PyTorch's `torch.tensor([[1., 2.], [3., 4.]])`.
    /// Rows of different lengths are an error.
    ///
    /// ```
    /// use wgrad::{Device, Tensor};
    /// let t = Tensor::new([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], &Device::Cpu).unwrap();
    /// assert_eq!(t.dims(), &[2, 3]);
    /// assert_eq!(t.to_vec2().unwrap(), vec![vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]]);
    /// assert!(Tensor::new(vec![vec![1.0], vec![2.0, 3.0]], &Device::Cpu).is_err());
    /// ```
    pub fn new(data: impl TensorData, device: &Device) -> Result<Tensor> {
        let shape = data.shape();
        let mut values = Vec::new();
        data.append(&shape, &mut values).map_err(|msg| Error::Shape {
            op: "Tensor::new",
            msg: format!("{msg} (the first row has shape {shape:?})"),
        })?;
        Tensor::from_vec(values, shape, device)
    }

    /// The elements of a 2-D tensor as rows (panics for another rank).
    pub fn to_vec2(&self) -> Result<Vec<Vec<f32>>> {
        assert!(self.rank() == 2, "to_vec2: tensor of shape {} is not 2-D", self.shape());
        let cols = self.dims()[1];
        let flat = self.to_vec()?;
        Ok((0..self.dims()[0]).map(|r| flat[r * cols..(r + 1) * cols].to_vec()).collect())
    }

    /// The elements of a 3-D tensor as matrices of rows (panics for another
    /// rank).
    pub fn to_vec3(&self) -> Result<Vec<Vec<Vec<f32>>>> {
        assert!(self.rank() == 3, "to_vec3: tensor of shape {} is not 3-D", self.shape());
        let (rows, cols) = (self.dims()[1], self.dims()[2]);
        let flat = self.to_vec()?;
        let row = |m: usize, r: usize| flat[(m * rows + r) * cols..(m * rows + r + 1) * cols].to_vec();
        Ok((0..self.dims()[0]).map(|m| (0..rows).map(|r| row(m, r)).collect()).collect())
    }

    /// As [`from_vec`](Self::from_vec), copying from a slice.
    pub fn from_slice(data: &[f32], shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = Self::check_len(data.len(), shape.into())?;
        Ok(Tensor::from_storage(device.backend().upload(data), shape, device.clone()))
    }

    fn check_len(len: usize, shape: Shape) -> Result<Shape> {
        let shape = Self::check_size("from_vec", shape)?;
        if len != shape.elem_count() {
            return Err(Error::Shape {
                op: "from_vec",
                msg: format!("{len} values do not fill shape {shape} ({} elements)", shape.elem_count()),
            });
        }
        Ok(shape)
    }

    /// `shape`, or an error if it has more elements than memory can hold.
    fn check_size(op: &'static str, shape: Shape) -> Result<Shape> {
        match shape.checked_elem_count() {
            Some(_) => Ok(shape),
            None => Err(Error::Shape { op, msg: format!("shape {shape} has more elements than memory can hold") }),
        }
    }

    /// A tensor of `shape` whose element `i` is `f(i)`, computed on the
    /// host; poisoned with [`Error::OutOfMemory`] if the host cannot hold it.
    pub(crate) fn generate(op: &str, shape: Shape, device: &Device, mut f: impl FnMut(usize) -> f32) -> Tensor {
        let shape = shape.checked(op);
        let n = shape.elem_count();
        let mut data = Vec::new();
        if data.try_reserve_exact(n).is_err() {
            let error = Error::OutOfMemory(format!("{op}: {n} elements of shape {shape} on the host"));
            return Tensor::poisoned(error, shape, device);
        }
        data.extend((0..n).map(&mut f));
        Tensor::from_storage(device.backend().upload_vec(data), shape, device.clone())
    }

    /// `[start, start+1, …]` below `end`, as a 1-D tensor.
    pub fn arange(start: f32, end: f32, device: &Device) -> Tensor {
        Tensor::arange_step(start, end, 1.0, device)
    }

    /// `[start, start+step, …]` up to (not including) `end`.
    pub fn arange_step(start: f32, end: f32, step: f32, device: &Device) -> Tensor {
        assert!(step != 0.0 && step.is_finite(), "arange: step must be finite and non-zero, got {step}");
        // A NaN bound gives an empty range; an infinite one, more elements
        // than memory can hold (saturated to usize::MAX, then refused).
        let n = ((end as f64 - start as f64) / step as f64).ceil().max(0.0) as usize;
        Tensor::generate("arange", Shape::from([n]), device, |i| start + i as f32 * step)
    }

    /// Samples from N(0, 1), drawn from the calling thread's default generator
    /// (see [`crate::manual_seed`]).
    pub fn randn(shape: impl Into<Shape>, device: &Device) -> Tensor {
        with_default_generator(|g| Tensor::randn_with(shape, 0.0, 1.0, g, device))
    }

    /// Samples from N(mean, std²) drawn from `generator`.
    pub fn randn_with(
        shape: impl Into<Shape>,
        mean: f32,
        std: f32,
        generator: &mut Generator,
        device: &Device,
    ) -> Tensor {
        Tensor::generate("randn", shape.into(), device, |_| mean + std * generator.normal())
    }

    /// Samples uniformly from `[low, high)`, drawn from the calling thread's
    /// default generator.
    pub fn rand_uniform(shape: impl Into<Shape>, low: f32, high: f32, device: &Device) -> Tensor {
        with_default_generator(|g| Tensor::rand_uniform_with(shape, low, high, g, device))
    }

    /// Samples uniformly from `[low, high)` drawn from `generator`.
    pub fn rand_uniform_with(
        shape: impl Into<Shape>,
        low: f32,
        high: f32,
        generator: &mut Generator,
        device: &Device,
    ) -> Tensor {
        Tensor::generate("rand_uniform", shape.into(), device, |_| low + (high - low) * generator.uniform())
    }

    // ----- inspection -------------------------------------------------------

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.0.shape
    }

    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        self.0.shape.dims()
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.shape.rank()
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.0.shape.elem_count()
    }

    /// The device the storage lives on.
    pub fn device(&self) -> Device {
        self.0.storage.device.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Moves the storage (shared with every view of it) to `device`, in
    /// place: the tensor keeps its identity, so an optimizer or a model
    /// holding it sees the move. For [`crate::nn::Module::to_device`].
    pub(crate) fn move_storage(&self, device: &Device) -> Result<()> {
        if &self.device() == device {
            return Ok(());
        }
        let data = self.to_vec()?;
        let storage = device.backend().upload_vec(data);
        if let Some(e) = device.backend().error(&storage) {
            return Err(e);
        }
        let mut guard = self.write();
        *guard = storage;
        *self.0.storage.device.write().unwrap_or_else(|e| e.into_inner()) = device.clone();
        Ok(())
    }

    /// A process-unique id: [`crate::Gradients`] keys gradients by it.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The elements in row-major order, copied to the host. On a GPU this
    /// waits for all queued work, and reports any GPU fault that hit this
    /// tensor's computation.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.device().backend().to_vec(&self.read(), self.elem_count())
    }

    /// The value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        assert!(
            self.elem_count() == 1,
            "item: tensor of shape {} has {} elements,
            not 1",
            self.shape(),
            self.elem_count()
        );
        Ok(self.to_vec()?[0])
    }

    /// A copy of this tensor on `device` (the same tensor if it is already
    /// there). The copy is differentiable: gradients flow back to `self`.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if &self.device() == device {
            return Ok(self.clone());
        }
        let data = self.to_vec()?;
        let out = Tensor::from_vec(data, self.shape().clone(), device)?;
        let from = self.device();
        Ok(out.record("to_device", &[self], move |c| {
            vec![Some(c.grad.to_device(&from).expect("to_device backward: copy failed"))]
        }))
    }

    // ----- autograd ---------------------------------------------------------

    /// This tensor as a variable: a leaf whose gradient `backward` computes,
    /// like PyTorch's `requires_grad_()`. The returned handle shares storage
    /// with `self`; optimizers update it in place. (A frozen variable is
    /// unfrozen.) On a tensor an op computed with gradient tracking it is a
    /// no-op, as PyTorch's: it stays in its graph, and `backward` reaches
    /// what it was computed from (a new leaf would cut the graph there);
    /// `t.detach().requires_grad()` makes a new variable of its values.
    pub fn requires_grad(self) -> Tensor {
        if self.is_variable() {
            self.set_requires_grad(true);
            return self;
        }
        if self.is_tracked() {
            return self;
        }
        Self::with_storage(self.0.storage.clone(), self.shape().clone(), true)
    }

    /// Freezes (`false`) or unfreezes (`true`) a variable in place, as
    /// PyTorch's `p.requires_grad_(False)`: a frozen variable is a constant
    /// to every op recorded after, so no gradient is computed for it and
    /// optimizers leave it alone. Every handle on the variable sees the
    /// change. Panics for a tensor that is not a variable.
    pub fn set_requires_grad(&self, on: bool) {
        match &self.0.grad {
            GradState::Variable(flag) => flag.store(on, Ordering::Relaxed),
            _ => panic!(
                "set_requires_grad: only a variable (a parameter, or the result of `requires_grad()`) can be \
                 frozen or unfrozen; this tensor of shape {} is {}",
                self.shape(),
                if self.is_tracked() { "computed by an op" } else { "a constant" }
            ),
        }
    }

    /// Whether this tensor is a variable (a leaf that can receive
    /// gradients), frozen or not.
    pub fn is_variable(&self) -> bool {
        matches!(self.0.grad, GradState::Variable(_))
    }

    /// Whether gradients flow through this tensor: it is a variable that is
    /// not frozen, or was computed from one while recording.
    pub fn is_tracked(&self) -> bool {
        match &self.0.grad {
            GradState::None => false,
            GradState::Variable(flag) => flag.load(Ordering::Relaxed),
            GradState::Node(_) => true,
        }
    }

    /// A handle on the same storage that gradients do not flow through.
    pub fn detach(&self) -> Tensor {
        self.share_storage(self.shape().clone())
    }

    /// Overwrites this tensor's elements with `src`'s, in place and without
    /// recording: the building block of hand-written update rules, like
    /// `with torch.no_grad(): w -= lr * g` in PyTorch. Every handle sharing
    /// the storage (clones, reshapes, the variable itself) sees the change.
    ///
    /// ```
    /// use wgrad::{Device, Tensor};
    /// let w = Tensor::ones([2], &Device::Cpu).requires_grad();
    /// let g = (&w * 3.0).sum().backward().remove(&w).unwrap();
    /// w.assign(&(&w.detach() - &(g * 0.1)));
    /// assert_eq!(w.to_vec().unwrap(), vec![0.7, 0.7]);
    /// ```
    pub fn assign(&self, src: &Tensor) {
        assert!(
            self.shape() == src.shape(),
            "assign: source shape {} does not match destination shape {}",
            src.shape(),
            self.shape()
        );
        crate::ops::same_device("assign", self, src);
        if self.same_storage(src) {
            return;
        }
        let layout = crate::shape::Strided::contiguous(self.shape());
        let src = src.read();
        self.device().backend().copy_into(&mut self.write(), &layout, &src);
    }
}

/// Data [`Tensor::new`] takes: an f32, or arrays, vectors or slices of
/// data, nested to any depth.
pub trait TensorData {
    /// The dimensions, read from the first element at each level.
    fn shape(&self) -> Vec<usize>;
    /// Appends the elements in row-major order, checking that every element
    /// at each level has the dimensions `dims` says.
    fn append(&self, dims: &[usize], out: &mut Vec<f32>) -> std::result::Result<(), String>;
}

impl TensorData for f32 {
    fn shape(&self) -> Vec<usize> {
        Vec::new()
    }
    fn append(&self, _: &[usize], out: &mut Vec<f32>) -> std::result::Result<(), String> {
        out.push(*self);
        Ok(())
    }
}

impl<T: TensorData> TensorData for [T] {
    fn shape(&self) -> Vec<usize> {
        let mut dims = vec![self.len()];
        if let Some(first) = self.first() {
            dims.extend(first.shape());
        }
        dims
    }
    fn append(&self, dims: &[usize], out: &mut Vec<f32>) -> std::result::Result<(), String> {
        if dims.first() != Some(&self.len()) {
            return Err(format!("ragged data: {} entries where {:?} were expected", self.len(), dims.first()));
        }
        self.iter().try_for_each(|e| e.append(&dims[1..], out))
    }
}

impl<T: TensorData, const N: usize> TensorData for [T; N] {
    fn shape(&self) -> Vec<usize> {
        self.as_slice().shape()
    }
    fn append(&self, dims: &[usize], out: &mut Vec<f32>) -> std::result::Result<(), String> {
        self.as_slice().append(dims, out)
    }
}

impl<T: TensorData> TensorData for Vec<T> {
    fn shape(&self) -> Vec<usize> {
        self.as_slice().shape()
    }
    fn append(&self, dims: &[usize], out: &mut Vec<f32>) -> std::result::Result<(), String> {
        self.as_slice().append(dims, out)
    }
}

impl<T: TensorData + ?Sized> TensorData for &T {
    fn shape(&self) -> Vec<usize> {
        (**self).shape()
    }
    fn append(&self, dims: &[usize], out: &mut Vec<f32>) -> std::result::Result<(), String> {
        (**self).append(dims, out)
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor{} {}", self.shape(), self.device())?;
        if self.is_variable() {
            write!(f, " variable")?;
        }
        const SHOWN: usize = 16;
        match self.to_vec() {
            Ok(v) if v.len() <= SHOWN => write!(f, " {v:?}"),
            Ok(v) => write!(f, " {:?} … ({} more)", &v[..SHOWN], v.len() - SHOWN),
            Err(e) => write!(f, " <{e}>"),
        }
    }
}
