//! Data-parallel training over MPI (cargo feature `mpi`): every process
//! ("rank") holds the whole model, trains on its own shard of every batch,
//! and averages gradients with the others each step — PyTorch's
//! `DistributedDataParallel`, Horovod, Keras's data-parallel distribution.
//!
//! ```no_run
//! # use wgrad::{Device, distributed::Distributed, nn::Module, train::{fit, FitConfig}};
//! # fn run(model: &dyn Module, opt: &mut dyn wgrad::optim::Optimizer, data: &wgrad::data::Dataset) -> wgrad::Result<()> {
//! let dist = std::sync::Arc::new(Distributed::init()?); // under `mpirun -np N`
//! dist.broadcast_parameters(model)?; // every rank starts from rank 0's weights
//! let config = FitConfig { batch_size: 128, distributed: Some(dist.clone()), ..FitConfig::default() };
//! fit(model, opt, data, &config)?; // each rank trains on its share of each batch of 128
//! # Ok(()) }
//! ```
//!
//! # Design
//! - **Buckets** (DDP's): the parameters' gradients are packed, latest
//!   created first (the order backward completes them), into flat buckets
//!   of about [`DEFAULT_BUCKET_BYTES`]. A bucket's non-blocking all-reduce
//!   (`MPI_Iallreduce`) starts the moment its last gradient is complete
//!   ([`Tensor::backward_hooked`]), and every later gradient the backward
//!   pass reports also tests the ones in flight, which is what makes MPI
//!   progress them while the earlier layers' gradients are computed; the
//!   step waits only for what is still in flight when backward ends. (A
//!   communication thread would compete for the cores with the CPU
//!   backend's workers: on this project's 2-core machine, handing buckets
//!   to one cost about a millisecond a step.)
//! - **Staging**: a bucket's gradients are concatenated on their device
//!   (one kernel on a GPU) and read back once; the averaged bucket is
//!   uploaded once and split into views. A GPU-direct transport
//!   (CUDA-aware MPI, NCCL) would skip both copies; wgpu exposes no device
//!   pointers to hand one, so every GPU runs through the host here.
//! - **Order**: buckets are reduced in a fixed order (bucket 0 first) on
//!   every rank, whatever order they complete in, so the collectives match
//!   across ranks. Each rank multiplies its gradients by what its loss is
//!   a mean over (its rows, or the targets an ignore index keeps) and
//!   sends that count along; the sums are divided by the summed count, so
//!   the result is the gradient of the global batch's mean loss (a plain
//!   average when the shards are equal). A flag per parameter travels too:
//!   a parameter no rank's loss reached (frozen, unused) gets no gradient,
//!   so optimizers leave it alone as they do in one process. The sum is `MPI_SUM` on
//!   `MPI_FLOAT` over the ranks: Open MPI's algorithms give every rank the
//!   same bits (its ring and recursive-doubling reductions hand each
//!   element's one sum to everyone), which the tests check; the sum's
//!   association differs from a one-process run's, so results agree with
//!   one process to rounding, not bit for bit.
//! - **Buffers** (BatchNorm's running statistics) follow each rank's own
//!   shards during an epoch (no synchronised BatchNorm);
//!   [`Distributed::broadcast_buffers`] gives every rank rank 0's, which
//!   `fit` does at the end of each epoch, before validation and saving.
//! - **Failure**: every collective but the communicator duplication of
//!   [`Distributed::gradient_sync`] waits at most [`Distributed::timeout`]
//!   (`WGRAD_DIST_TIMEOUT` seconds, default 300) for the other ranks; then
//!   it prints which rank, which collective and how long it waited, and
//!   calls `MPI_Abort`, which ends every rank of the job (a hung peer
//!   would otherwise hang everyone). A rank that exits makes `mpirun` end
//!   the job with its own message. Saves are atomic (written aside, then
//!   renamed), so no rank leaves a torn file.
//!
//! `docs/distributed.md` covers running on several machines and the cost
//! model of the all-reduce.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::nn::Module;
use crate::{Error, Gradients, Result, Tensor, no_grad};

/// The bucket size of [`Distributed::gradient_sync`] unless given: 4 MiB,
/// about DDP's first bucket (1 MB) and later ones (25 MB) in between — big
/// enough that per-message latency is small, small enough that the first
/// buckets leave while backward still has work to hide them behind.
pub const DEFAULT_BUCKET_BYTES: usize = 4 << 20;

/// This process's place in an MPI job, opened by [`Distributed::init`].
/// Keep it alive until the end of the program: dropping it finalizes MPI.
pub struct Distributed {
    world: SimpleCommunicator,
    /// Serialises this process's collectives on `world` across threads
    /// (the ranks must issue them in the same order).
    serial: std::sync::Mutex<()>,
    rank: usize,
    size: usize,
    timeout: Duration,
    bucket_bytes: usize,
    // Last: dropped after the communicators, it calls MPI_Finalize.
    _universe: Universe,
}

// SAFETY: MPI runs with MPI_THREAD_MULTIPLE (checked in `init`), so any
// thread may call it; the collectives on `world` take `serial`, so two
// threads of one rank never interleave theirs, and gradient syncs use
// communicators of their own. (Memory safety only: the *order* of
// collectives across ranks is the program's to keep — every rank must
// issue them in the same order, so a job calls them from one thread, as
// `fit` does; two threads racing on different ranks would pair a barrier
// with a broadcast, which MPI calls an erroneous program.)
unsafe impl Send for Distributed {}
unsafe impl Sync for Distributed {}

fn error(msg: String) -> Error {
    Error::Distributed(msg)
}

impl Distributed {
    /// Joins the MPI job this process was started in (`mpirun -np N …`; a
    /// process started without `mpirun` is a job of one). MPI must offer
    /// `MPI_THREAD_MULTIPLE` (a `Distributed` is shared between threads —
    /// `fit` on one, metrics or a barrier on another — and gradient syncs
    /// use their own communicators unlocked); Open MPI does. Errors if MPI
    /// was already initialised.
    pub fn init() -> Result<Distributed> {
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Multiple)
            .ok_or_else(|| error("MPI is already initialised in this process".into()))?;
        if threading != mpi::Threading::Multiple {
            return Err(error(format!(
                "this MPI offers {threading:?} threading; wgrad's gradient all-reduce needs MPI_THREAD_MULTIPLE"
            )));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let timeout = std::env::var("WGRAD_DIST_TIMEOUT")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(300));
        let bucket_bytes = std::env::var("WGRAD_DIST_BUCKET_KB")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&kb| kb > 0)
            .and_then(|kb| kb.checked_mul(1 << 10))
            .unwrap_or(DEFAULT_BUCKET_BYTES);
        crate::train::set_primary(rank == 0);
        Ok(Distributed {
            world,
            serial: std::sync::Mutex::new(()),
            rank,
            size,
            timeout,
            bucket_bytes,
            _universe: universe,
        })
    }

    /// This process's rank, `0..world_size()`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes in the job.
    pub fn world_size(&self) -> usize {
        self.size
    }

    /// Whether this is rank 0, the one that prints and saves.
    pub fn is_primary(&self) -> bool {
        self.rank == 0
    }

    /// How long a collective waits for the other ranks before the job is
    /// aborted (`WGRAD_DIST_TIMEOUT` seconds, default 300).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The part of a global batch of `len` items this rank trains on: a
    /// contiguous block, the blocks of consecutive ranks adjacent and their
    /// sizes differing by at most one. A short last batch (fewer than two
    /// items a rank) is dealt in blocks of at least two, so no rank trains
    /// on a single item, which BatchNorm's training statistics refuse
    /// where one process would train on the whole batch; ranks past the
    /// blocks get none.
    pub fn shard(&self, len: usize) -> std::ops::Range<usize> {
        crate::train::shard_range(len, self.rank, self.size)
    }

    /// Copies rank 0's parameters and buffers (running statistics) into
    /// every rank's `model`, so all start identical: one broadcast of the
    /// whole state. Every rank must call it with the same architecture.
    pub fn broadcast_parameters(&self, model: &dyn Module) -> Result<()> {
        let state = model.state_dict();
        let total: usize = state.iter().map(|(_, t)| t.elem_count()).sum();
        let mut flat = Vec::with_capacity(total);
        if self.is_primary() {
            for (_, t) in &state {
                flat.extend(t.to_vec()?);
            }
        } else {
            flat.resize(total, 0.0);
        }
        self.broadcast(&mut flat, "the parameter broadcast");
        if !self.is_primary() {
            let mut at = 0;
            for (_, t) in &state {
                let n = t.elem_count();
                let values = Tensor::from_slice(&flat[at..at + n], t.shape().clone(), &t.device())?;
                t.assign(&values);
                at += n;
            }
        }
        Ok(())
    }

    /// Copies rank 0's buffers (BatchNorm's running statistics) into every
    /// rank's `model`. Each rank's running statistics follow its own shards
    /// during training (there is no synchronised BatchNorm); `fit` calls
    /// this at the end of every epoch, before validation and callbacks, so
    /// every rank evaluates and saves rank 0's (what DDP's
    /// `broadcast_buffers` does before each forward).
    pub fn broadcast_buffers(&self, model: &dyn Module) -> Result<()> {
        let buffers = model.named_buffers();
        if buffers.is_empty() {
            return Ok(());
        }
        let total: usize = buffers.iter().map(|(_, t)| t.elem_count()).sum();
        let mut flat = Vec::with_capacity(total);
        for (_, t) in &buffers {
            flat.extend(t.to_vec()?);
        }
        self.broadcast(&mut flat, "the buffer broadcast");
        if !self.is_primary() {
            let mut at = 0;
            for (_, t) in &buffers {
                let n = t.elem_count();
                t.assign(&Tensor::from_slice(&flat[at..at + n], t.shape().clone(), &t.device())?);
                at += n;
            }
        }
        Ok(())
    }

    /// Rank 0's `values` into every rank's, waiting at most the timeout.
    fn broadcast(&self, values: &mut [f32], what: &str) {
        let _serial = self.serial();
        mpi::request::scope(|scope| {
            let request = self.world.process_at_rank(0).immediate_broadcast_into(scope, values);
            wait(request, self.timeout, self.rank, what, &self.world);
        });
    }

    /// Sums `values` element-wise over every rank, in place (metrics,
    /// counts), waiting at most [`timeout`](Self::timeout).
    pub fn all_reduce_sum(&self, values: &mut [f32]) {
        let send = values.to_vec();
        let _serial = self.serial();
        all_reduce(&self.world, &send, values, self.timeout, self.rank, "a metrics all-reduce");
    }

    /// Waits until every rank has arrived here (at most the timeout).
    pub fn barrier(&self) {
        let _serial = self.serial();
        let request = self.world.immediate_barrier();
        wait(request, self.timeout, self.rank, "a barrier", &self.world);
    }

    fn serial(&self) -> std::sync::MutexGuard<'_, ()> {
        self.serial.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gradient averaging for `params` (a model's `parameters()`, the
    /// same on every rank), in buckets of about
    /// `bucket_bytes` (for `None`: `WGRAD_DIST_BUCKET_KB` KiB, or
    /// [`DEFAULT_BUCKET_BYTES`]).
    pub fn gradient_sync(&self, params: &[Tensor], bucket_bytes: Option<usize>) -> GradientSync<'_> {
        GradientSync::new(self, params, bucket_bytes.unwrap_or(self.bucket_bytes))
    }
}

/// `MPI_Iallreduce(SUM)` of `send` into `recv`, polled until done or
/// `timeout`, after which the whole job is aborted with a message (a
/// collective cannot be cancelled, and a rank that left would hang every
/// later one).
fn all_reduce(comm: &SimpleCommunicator, send: &[f32], recv: &mut [f32], timeout: Duration, rank: usize, what: &str) {
    mpi::request::scope(|scope| {
        let request = comm.immediate_all_reduce_into(scope, send, recv, SystemOperation::sum());
        wait(request, timeout, rank, what, comm);
    });
}

/// Polls `request` until it completes, or aborts the job after `timeout`.
fn wait<'a, D: ?Sized, S: mpi::request::Scope<'a>>(
    request: mpi::request::Request<'a, D, S>,
    timeout: Duration,
    rank: usize,
    what: &str,
    comm: &SimpleCommunicator,
) {
    let mut request = Some(request);
    poll_until(timeout, rank, what, comm, || match request.take().map(|r| r.test()) {
        Some(Err(r)) => {
            request = Some(r);
            false
        }
        _ => true,
    });
}

/// Calls `done` until it is true, pausing between calls; after `timeout`
/// prints who waited for what and aborts the job (a collective cannot be
/// cancelled, and a rank that left would hang every later one).
fn poll_until(timeout: Duration, rank: usize, what: &str, comm: &SimpleCommunicator, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > timeout {
            // Not `eprintln!`, which panics if stderr is gone: unwinding
            // from here would free buffers a collective still writes.
            let _ = writeln!(
                std::io::stderr(),
                "wgrad distributed: rank {rank} waited {:.1} s for the other ranks in {what} \
                 (WGRAD_DIST_TIMEOUT): a rank has failed or hangs; aborting the job",
                started.elapsed().as_secs_f64()
            );
            comm.abort(1);
        }
        pause(started);
    }
}

/// Where a parameter's gradient goes: its bucket and its place there.
#[derive(Clone, Copy)]
struct Slot {
    bucket: usize,
    index: usize,
}

struct Bucket {
    /// The parameters packed here, in order.
    params: Vec<Tensor>,
    /// This step's gradients as they complete.
    grads: Vec<Option<Tensor>>,
    filled: usize,
    sent: bool,
    len: usize,
    /// The send and receive buffers, kept from step to step (fresh ones
    /// of this size cost page faults every step).
    buffers: (Vec<f32>, Vec<f32>),
}

/// A bucket's all-reduce in flight: its buffers stay put (their heap
/// storage does not move with the struct) until MPI reports it done.
struct InFlight {
    bucket: usize,
    send: Vec<f32>,
    recv: Vec<f32>,
    request: mpi::ffi::MPI_Request,
    started: Instant,
    /// When a test first found it complete.
    finished: Option<Instant>,
}

/// Timings of the gradient all-reduce, summed since the last
/// [`GradientSync::take_stats`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncStats {
    /// Steps synchronised.
    pub steps: usize,
    /// Wall time of the buckets' all-reduces, from their start to the
    /// first test that found them complete.
    pub comm_seconds: f64,
    /// Time the steps waited for all-reduces after their backward pass
    /// ended: the communication not hidden behind backward (waiting for a
    /// slower rank included).
    pub wait_seconds: f64,
    /// Bytes all-reduced per rank.
    pub bytes: usize,
}

impl SyncStats {
    /// The fraction of the communication time hidden behind the backward
    /// pass, `1 - wait / comm` (1 with no communication).
    pub fn hidden_fraction(&self) -> f64 {
        if self.comm_seconds <= 0.0 { 1.0 } else { (1.0 - self.wait_seconds / self.comm_seconds).clamp(0.0, 1.0) }
    }
}

/// Bucketed gradient averaging over the ranks, overlapped with the
/// backward pass (see the module docs). One per training loop.
pub struct GradientSync<'d> {
    dist: &'d Distributed,
    /// Its own communicator: its all-reduces never interleave with the
    /// metrics' on the world communicator.
    comm: SimpleCommunicator,
    slots: HashMap<u64, Slot>,
    buckets: Vec<Bucket>,
    /// Buckets packed and waiting for a lower-numbered one to start first.
    packed: BTreeMap<usize, Vec<f32>>,
    /// The next bucket to start: they start in index order on every rank.
    next: usize,
    in_flight: Vec<InFlight>,
    stats: SyncStats,
    /// A step failed part-way: the buckets no longer line up with the
    /// other ranks', so every later step is refused.
    poisoned: bool,
}

impl<'d> GradientSync<'d> {
    fn new(dist: &'d Distributed, params: &[Tensor], bucket_bytes: usize) -> Self {
        let cap = (bucket_bytes / 4).max(1);
        let mut buckets: Vec<Bucket> = Vec::new();
        let mut slots = HashMap::new();
        // Latest created first: backward completes gradients in decreasing
        // order of creation (the last layer's first), whatever order the
        // model lists its parameters in. A parameter listed twice is
        // packed once.
        let mut params: Vec<&Tensor> = params.iter().collect();
        params.sort_by_key(|p| std::cmp::Reverse(p.id()));
        params.dedup_by_key(|p| p.id());
        for p in params {
            let n = p.elem_count();
            let start_new = buckets.last().is_none_or(|b| b.len > 0 && b.len + n > cap);
            if start_new {
                buckets.push(Bucket {
                    params: Vec::new(),
                    grads: Vec::new(),
                    filled: 0,
                    sent: false,
                    len: 0,
                    buffers: Default::default(),
                });
            }
            let b = buckets.len() - 1;
            let bucket = &mut buckets[b];
            slots.insert(p.id(), Slot { bucket: b, index: bucket.params.len() });
            bucket.params.push(p.clone());
            bucket.grads.push(None);
            bucket.len += n;
        }
        let comm = {
            let _serial = dist.serial();
            dist.world.duplicate()
        };
        GradientSync {
            dist,
            comm,
            slots,
            buckets,
            packed: BTreeMap::new(),
            next: 0,
            in_flight: Vec::new(),
            stats: SyncStats::default(),
            poisoned: false,
        }
    }

    /// How many buckets the parameters were packed into.
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// One step's backward pass and gradient averaging: backpropagates
    /// `loss` (this rank's mean loss over `count` items of the global
    /// batch — its rows, or the targets an ignore index keeps; `None` with
    /// a count of 0 when the rank has none this step), sending each bucket
    /// as soon as its gradients are complete, and returns the gradient of
    /// the global batch's mean: `Σ count_r · grad_r / Σ count_r` over the
    /// ranks. A parameter gets a gradient where the loss reached it on some
    /// rank (the others count zeros for it); one no rank's loss reached
    /// (frozen, or unused this step) gets none, as in a one-process
    /// backward, so optimizers leave it alone.
    pub fn backward(&mut self, loss: Option<&Tensor>, count: f32) -> Result<Gradients> {
        if self.poisoned {
            return Err(error("an earlier step failed part-way; the gradient sync is out of step".into()));
        }
        // Poisoned until the step returns Ok: also if it panics and the
        // panic is caught, the sync's state is out of step with the others.
        self.poisoned = true;
        let result = self.step(loss, count);
        self.poisoned = result.is_err();
        result
    }

    fn step(&mut self, loss: Option<&Tensor>, count: f32) -> Result<Gradients> {
        let mut grads = match loss {
            Some(loss) => {
                let seed = no_grad(|| Tensor::ones(loss.shape().clone(), &loss.device()));
                let mut failed = None;
                let grads = loss.backward_hooked(seed, &mut |v, g| {
                    if failed.is_none()
                        && let Err(e) = self.ready(v, g, count)
                    {
                        failed = Some(e);
                    }
                });
                if let Some(e) = failed {
                    return Err(e);
                }
                grads
            }
            None => Gradients::default(),
        };
        let waited = Instant::now();
        // Buckets with a parameter the loss did not reach go now, zeros
        // standing in for the missing gradients.
        for b in 0..self.buckets.len() {
            if !self.buckets[b].sent {
                self.send(b, count)?;
            }
        }
        // Every bucket has started now (they were all packed); wait for
        // them in order, then unpack.
        for b in 0..self.buckets.len() {
            let done = self.finish(b);
            let finished = done.finished.unwrap_or_else(Instant::now);
            self.stats.comm_seconds += finished.duration_since(done.started).as_secs_f64();
            self.stats.bytes += done.recv.len() * 4;
            let bucket = &mut self.buckets[done.bucket];
            let InFlight { send, mut recv, .. } = done;
            // [Σ count·grad | Σ flags per parameter | Σ count]
            let (values, rest) = recv.split_at_mut(bucket.len);
            let (flags, total) = rest.split_at(bucket.params.len());
            let total = total[0];
            for v in values.iter_mut() {
                *v = if total > 0.0 { *v / total } else { 0.0 };
            }
            let device = bucket.params[0].device();
            // A GPU gets one upload and views of it; the CPU a copy each.
            let flat = if device.is_cpu() { None } else { Some(Tensor::from_slice(values, [bucket.len], &device)?) };
            let mut at = 0;
            for ((p, g), &flag) in bucket.params.iter().zip(&mut bucket.grads).zip(flags) {
                let n = p.elem_count();
                if flag > 0.0 {
                    let grad = match &flat {
                        Some(flat) => no_grad(|| flat.narrow(0, at, n).reshape(p.shape().clone())),
                        None => Tensor::from_slice(&values[at..at + n], p.shape().clone(), &device)?,
                    };
                    grads.insert(p, grad);
                } else {
                    grads.remove(p);
                }
                *g = None;
                at += n;
            }
            bucket.buffers = (send, recv);
            bucket.filled = 0;
            bucket.sent = false;
        }
        self.next = 0;
        self.stats.wait_seconds += waited.elapsed().as_secs_f64();
        self.stats.steps += 1;
        Ok(grads)
    }

    /// A variable's gradient is complete: into its bucket, and the bucket
    /// off to the all-reduce if it was the last.
    fn ready(&mut self, variable: &Tensor, grad: &Tensor, count: f32) -> Result<()> {
        let Some(&Slot { bucket, index }) = self.slots.get(&variable.id()) else { return Ok(()) };
        let b = &mut self.buckets[bucket];
        // backward_hooked reports each variable once; a bucket never goes twice.
        debug_assert!(!b.sent && b.grads[index].is_none(), "a gradient reported twice");
        if b.sent {
            return Ok(());
        }
        if b.grads[index].replace(grad.clone()).is_none() {
            b.filled += 1;
        }
        let result = if b.filled == b.params.len() { self.send(bucket, count) } else { Ok(()) };
        self.progress();
        result
    }

    /// Flattens bucket `b` on its device — `count ·` the gradients (zeros
    /// for missing ones), then a flag per parameter (1 if it had one) and
    /// `count` — reads it back (the CPU's straight from the gradients'
    /// memory) and starts every all-reduce whose turn has come.
    fn send(&mut self, b: usize, count: f32) -> Result<()> {
        let bucket = &mut self.buckets[b];
        let device = bucket.params[0].device();
        let mut data = std::mem::take(&mut bucket.buffers.0);
        data.clear();
        if device.is_cpu() {
            // Straight from each gradient's storage, scaled on the way.
            for (p, g) in bucket.params.iter().zip(&bucket.grads) {
                let Some(g) = g else {
                    data.resize(data.len() + p.elem_count(), 0.0);
                    continue;
                };
                let copied = Tensor::with_storages(&[g], |s| match s[0] {
                    crate::backend::Storage::Cpu(v) => {
                        // CPU storages hold exactly their elements.
                        debug_assert_eq!(v.len(), p.elem_count());
                        data.extend(v[..p.elem_count()].iter().map(|x| x * count));
                        true
                    }
                    _ => false,
                });
                if !copied {
                    // A poisoned gradient: its error.
                    data.extend(g.to_vec()?.into_iter().map(|x| x * count));
                }
            }
        } else {
            // One concatenation on the device, one read back.
            let flat = no_grad(|| {
                let parts: Vec<Tensor> = bucket
                    .params
                    .iter()
                    .zip(&bucket.grads)
                    .map(|(p, g)| match g {
                        Some(g) => g.reshape([p.elem_count()]),
                        None => Tensor::zeros([p.elem_count()], &device),
                    })
                    .collect();
                Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0).mul_scalar(count)
            });
            data.extend(flat.to_vec()?);
        }
        data.extend(bucket.grads.iter().map(|g| f32::from(g.is_some())));
        data.push(count);
        bucket.sent = true;
        self.packed.insert(b, data);
        // Start every bucket whose turn has come, in index order.
        while let Some(send) = self.packed.remove(&self.next) {
            self.start(self.next, send);
            self.next += 1;
        }
        Ok(())
    }

    /// Starts bucket `b`'s all-reduce (`MPI_Iallreduce`, sum).
    fn start(&mut self, bucket: usize, send: Vec<f32>) {
        let mut recv = std::mem::take(&mut self.buckets[bucket].buffers.1);
        recv.resize(send.len(), 0.0);
        // SAFETY: `null` is overwritten by MPI_Iallreduce before any use.
        let mut request: mpi::ffi::MPI_Request = unsafe { mpi::ffi::RSMPI_REQUEST_NULL };
        let count = i32::try_from(send.len()).expect("a bucket is far below 2³¹ floats");
        // SAFETY: both buffers hold `count` f32s and stay allocated, unmoved
        // (their heap storage), until the request completes: `finish` waits
        // for it, and `Drop` leaks them if it never did.
        unsafe {
            mpi::ffi::MPI_Iallreduce(
                send.as_ptr().cast(),
                recv.as_mut_ptr().cast(),
                count,
                f32::equivalent_datatype().as_raw(),
                SystemOperation::sum().as_raw(),
                self.comm.as_raw(),
                &mut request,
            );
        }
        self.in_flight.push(InFlight { bucket, send, recv, request, started: Instant::now(), finished: None });
    }

    /// Lets MPI progress the all-reduces in flight (a non-blocking test of
    /// each), noting when each completes. Called as backward reports
    /// gradients, so communication advances while it computes.
    fn progress(&mut self) {
        for f in &mut self.in_flight {
            if f.finished.is_none() && test(&mut f.request) {
                f.finished = Some(Instant::now());
            }
        }
    }

    /// Waits (at most the timeout, then aborts the job) for bucket `b`'s
    /// all-reduce and takes it out of the in-flight list.
    fn finish(&mut self, b: usize) -> InFlight {
        let at = self.in_flight.iter().position(|f| f.bucket == b).expect("every bucket was started");
        let mut f = self.in_flight.swap_remove(at);
        let what = format!("the gradient all-reduce of bucket {b}");
        poll_until(self.dist.timeout, self.dist.rank, &what, &self.comm, || {
            if f.finished.is_none() && test(&mut f.request) {
                f.finished = Some(Instant::now());
            }
            f.finished.is_some()
        });
        f
    }

    /// The timings since the last call, and resets them.
    pub fn take_stats(&mut self) -> SyncStats {
        std::mem::take(&mut self.stats)
    }

    /// The job this sync belongs to.
    pub fn distributed(&self) -> &'d Distributed {
        self.dist
    }
}

impl Drop for GradientSync<'_> {
    fn drop(&mut self) {
        // A step that failed part-way may leave all-reduces in flight: MPI
        // may still write their buffers, so they are leaked, not freed.
        for f in self.in_flight.drain(..) {
            std::mem::forget(f.send);
            std::mem::forget(f.recv);
        }
    }
}

/// Whether `request` has completed (a non-blocking `MPI_Test`).
fn test(request: &mut mpi::ffi::MPI_Request) -> bool {
    let mut flag = 0;
    // SAFETY: a live request from MPI_Iallreduce (MPI sets it to null once
    // complete, and testing a null request reports completion).
    unsafe { mpi::ffi::MPI_Test(request, &mut flag, mpi::ffi::RSMPI_STATUS_IGNORE) };
    flag != 0
}

/// Between polls of a collective: yield the core to any computation for
/// the first milliseconds (a peer about to arrive answers within
/// microseconds), then sleep between polls.
fn pause(since: Instant) {
    if since.elapsed() < Duration::from_millis(5) {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(100));
    }
}
