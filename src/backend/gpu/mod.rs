//! The wgpu runtime and the WGSL kernels behind the
//! [`Backend`](super::Backend) interface.
//!
//! One concern per file, each owning its invariant:
//! - [`device`]: options, adapter choice, limits and kernel sizes, health;
//! - [`pipelines`]: shader sources (with the shared prelude) and the caches
//!   of modules, pipelines and bind groups; typed kernel parameters;
//! - [`queue`]: recording into one compute pass, batched submission,
//!   uploads and readback;
//! - [`pool`]: buffers by size class, returned when a tensor drops;
//! - [`lazy`]: a tensor's storage — computed, failed, or a pending fused
//!   expression — and the fusion graph; [`fusion`] writes its WGSL;
//! - [`taint`]: device-side asserts for errors only the data reveals;
//! - then one file per kernel family (`copy`, `gather`, `reduce`,
//!   `softmax`, `loss`, `matmul`, `elementwise`, `scan`, `sort`, `optim`), each with its
//!   parameter struct mirroring the WGSL `struct Params`.
//!
//! Every dispatch goes through [`Context::record`]. Small parameters travel
//! as immediate data (push constants), so no uniform buffer is created or
//! written per op.
//!
//! How it fails: a lost device, an allocation the driver refuses, or a
//! tensor over the adapter's binding limit poisons the buffers it affects
//! (see [`GpuBuffer`]); bad data (an index out of range) taints the results
//! computed from it ([`taint`]). Either surfaces from `to_vec` as a
//! [`crate::Error`]. wgpu errors are captured by a handler, never panics.

mod autotune;
pub(crate) mod capture;
mod conv;
mod copy;
mod device;
mod elementwise;
mod epilogue;
mod fusion;
mod gather;
mod lazy;
mod loss;
mod matmul;
mod norm;
mod optim;
mod pipelines;
mod pool;
mod profile;
mod queue;
mod reduce;
mod rnn;
mod scan;
mod softmax;
mod sort;
mod taint;

pub use device::{DeviceInfo, GpuOptions};
pub(crate) use lazy::GpuBuffer;
pub use pool::MemoryStats;
pub(crate) use pool::Pooled;

use super::{
    AxisView, Backend, BinaryOp, ConvSpec, Fault, MatmulSpec, PoolSpec, ReduceOp, Storage, UnaryOp, UpdateRule,
};
use crate::Result;
use crate::shape::Strided;
use device::{Health, Tuning};
pub use pipelines::CompiledKernel;
use pipelines::{BindGroups, Kernel, Pipelines};
use pool::Pool;
pub use profile::{KernelAverage, KernelEvent, Profile};
use queue::Queue;
use std::fmt;
use std::sync::Arc;
use taint::{Checks, Poison};

/// Locks `m`, taking the data over from a thread that panicked holding it:
/// every lock here guards caches and queues that stay consistent at each
/// unlock, so a panic elsewhere need not poison the device.
pub(super) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything one wgpu device owns, each part behind its own type.
pub(crate) struct Context {
    device: wgpu::Device,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    tuning: Tuning,
    health: Health,
    pipelines: Pipelines,
    bind_groups: BindGroups,
    queue: Queue,
    pool: Arc<Pool>,
    lazy: lazy::Lazy,
    checks: Checks,
    /// A matmul kernel this device uses for every product instead of the
    /// tuned or default one (`GpuDevice::force_matmul_kernel`).
    matmul_forced: std::sync::Mutex<Option<autotune::Choice>>,
}

/// A buffer bound at a binding slot, read-only or read-write.
pub(crate) struct Bind<'a> {
    pub slot: u32,
    pub buffer: &'a Arc<Pooled>,
    pub write: bool,
}

impl<'a> Bind<'a> {
    pub fn read(slot: u32, buffer: &'a Arc<Pooled>) -> Self {
        Bind { slot, buffer, write: false }
    }
    pub fn write(slot: u32, buffer: &'a Arc<Pooled>) -> Self {
        Bind { slot, buffer, write: true }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if self.queue.profiling() {
            profile::at_exit::on_drop(self);
        }
    }
}

impl Context {
    /// See [`GpuDevice::stop_profiling`].
    pub(crate) fn stop_profiling(&self) -> Result<Profile> {
        self.lazy.run_all();
        self.queue.stop_profiling(&self.health, DeviceInfo::of(&self.info).to_string())
    }

    /// Records one dispatch of `kernel` on `binds` with parameters `params`
    /// (the kernel's `struct Params`, as immediate data). Buffers written
    /// take on the taint of those read.
    pub(crate) fn record<P: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        binds: &[Bind],
        params: &P,
        groups: [u32; 3],
    ) -> Result<()> {
        self.record_patched(kernel, binds, params, groups, capture::Patches::default())
    }

    /// As [`record`](Self::record), telling a capture (if this thread is
    /// capturing) which parameters a replay must rewrite.
    pub(crate) fn record_patched<P: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        binds: &[Bind],
        params: &P,
        groups: [u32; 3],
        patches: capture::Patches,
    ) -> Result<()> {
        const { assert!(std::mem::size_of::<P>() <= pipelines::IMMEDIATE_BYTES as usize) };
        if let Some(e) = self.health.lost() {
            return Err(e);
        }
        // Every output depends on the checks of every input (of its group,
        // for a multi-tensor kernel).
        let output = |b: &Bind| b.write && !Arc::ptr_eq(b.buffer, &self.checks.buffer);
        for group in binds.chunks(patches.groups_of.unwrap_or(binds.len()).max(1)) {
            taint::Taint::spread(group.iter().map(|b| (&b.buffer.taint, output(b))));
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let started = self.queue.profiling().then(std::time::Instant::now);
        let mut signature: Vec<(u32, bool)> = binds.iter().map(|b| (b.slot, b.write)).collect();
        signature.sort_unstable();
        let pipeline = self.pipelines.get(kernel, signature);
        let buffers: Vec<(u32, &wgpu::Buffer)> = binds.iter().map(|b| (b.slot, &b.buffer.buffer)).collect();
        let bind_group = self.bind_groups.get(&pipeline.layout, &buffers);
        let info = started.map(|started| {
            let mut slots: Vec<(u32, u64)> = binds.iter().map(|b| (b.slot, b.buffer.buffer.size() / 4)).collect();
            slots.sort_unstable();
            profile::EventInfo {
                op: profile::current_op().unwrap_or_else(|| kernel.family()),
                kernel: kernel.name(),
                elements: slots.into_iter().map(|(_, n)| n).collect(),
                started,
            }
        });
        let immediates = bytemuck::bytes_of(params);
        self.queue.dispatch(
            queue::Dispatch { pipeline: &pipeline.pipeline, bind_group: &bind_group, immediates, groups },
            info,
        );
        if capture::active() {
            if capture::capturing(self) {
                capture::note_dispatch(self, &pipeline, &bind_group, binds, immediates, groups, kernel, patches);
            } else {
                capture::invalidate_any("the step dispatches on another device");
            }
        }
        Ok(())
    }

    /// A fresh buffer of `n` f32s that `fill` computes from `inputs` (it
    /// records the kernels writing it). Poisoned instead if an input is,
    /// or if allocating or `fill` fails; the poison keeps the inputs'
    /// checks, so a read reports the first cause, as the CPU does.
    pub(crate) fn compute(
        self: &Arc<Self>,
        op: &'static str,
        n: usize,
        inputs: &[&GpuBuffer],
        fill: impl FnOnce(&[&Arc<Pooled>], &Arc<Pooled>) -> Result<()>,
    ) -> GpuBuffer {
        let [out] = self.compute_many(op, [n], inputs, |ins, [out]| fill(ins, out));
        out
    }

    /// As [`compute`](Self::compute) for a kernel family with `N` outputs
    /// of `sizes` f32s; all are poisoned alike.
    pub(crate) fn compute_many<const N: usize>(
        self: &Arc<Self>,
        op: &'static str,
        sizes: [usize; N],
        inputs: &[&GpuBuffer],
        fill: impl FnOnce(&[&Arc<Pooled>], &[Arc<Pooled>; N]) -> Result<()>,
    ) -> [GpuBuffer; N] {
        let ready = match computed(inputs.iter().copied()) {
            Ok(ready) => ready,
            Err(poison) => return std::array::from_fn(|_| GpuBuffer::poisoned(poison.clone())),
        };
        let outs: Result<Vec<Arc<Pooled>>> = sizes.iter().map(|&n| self.alloc(op, n)).collect();
        let result = outs.and_then(|outs| {
            let outs: [Arc<Pooled>; N] = outs.try_into().unwrap_or_else(|_| unreachable!("N sizes, N buffers"));
            profile::with_op(op, || fill(&ready, &outs)).map(|()| outs)
        });
        match result {
            Ok(outs) => outs.map(|o| GpuBuffer::ready(Ok(o))),
            Err(e) => {
                let poison = Poison::new(ready.iter().map(|p| &p.taint), Fault::new(e));
                std::array::from_fn(|_| GpuBuffer::poisoned(poison.clone()))
            }
        }
    }

    /// Runs `f` on `targets` (written in place) and then `inputs`, all
    /// computed; poisons every target the way [`compute`](Self::compute)
    /// poisons its output if one of them is poisoned or `f` fails.
    pub(crate) fn modify(
        &self,
        targets: &mut [&mut GpuBuffer],
        inputs: &[&GpuBuffer],
        f: impl FnOnce(&[Arc<Pooled>]) -> Result<()>,
    ) {
        for t in targets.iter() {
            self.lazy.before_write(t);
        }
        let poison = match computed(targets.iter().map(|t| &**t).chain(inputs.iter().copied())) {
            Err(poison) => poison,
            Ok(ready) => {
                let ready: Vec<Arc<Pooled>> = ready.into_iter().cloned().collect();
                match f(&ready) {
                    Ok(()) => return,
                    Err(e) => Poison::new(ready.iter().map(|p| &p.taint), Fault::new(e)),
                }
            }
        };
        for t in targets.iter_mut() {
            **t = GpuBuffer::poisoned(poison.clone());
        }
    }

    /// A buffer for `n` f32s from the pool.
    pub(crate) fn alloc(&self, op: &'static str, n: usize) -> Result<Arc<Pooled>> {
        if let Some(e) = self.health.lost() {
            return Err(e);
        }
        let buffer = self.pool.alloc(op, n, || {
            self.release_memory();
            // Dropped buffers go back to the driver only once no submitted
            // work holds them, and the pool's were used by the last steps:
            // submit what is recorded and wait, or the retry fails as well
            // (not while a step is being captured: its work is recorded,
            // not run, and the retry then takes its chance).
            if !capture::active() {
                let _ = self.queue.wait(self.queue.submit(), &self.health);
            }
        })?;
        if capture::active() {
            capture::note_alloc(self, &buffer);
        }
        Ok(buffer)
    }

    /// A pooled buffer holding `words`: a view's dims and strides too many
    /// for the immediates, which its kernel reads from storage instead.
    pub(crate) fn upload_words(
        &self,
        op: &'static str,
        words: &[u32],
        patches: capture::Patches,
    ) -> Result<Arc<Pooled>> {
        let buffer = self.alloc(op, words.len())?;
        self.queue.write(&buffer.buffer, bytemuck::cast_slice(words));
        if capture::active() {
            capture::note_write(self, &buffer, bytemuck::cast_slice(words), patches);
        }
        Ok(buffer)
    }

    /// Gives memory back to the driver: the pool's free buffers, the bind
    /// groups (which hold buffers) and the readback buffers. Safe with work
    /// recorded and not submitted: buffers are dropped, never destroyed.
    fn release_memory(&self) {
        self.bind_groups.clear();
        self.pool.clear();
        self.queue.clear_staging();
    }

    /// The width of a kernel that runs as one workgroup over `rows` rows
    /// (a batch's mean loss, its hit count): as wide as they need, a power
    /// of two up to the elementwise width. Its barriers then wait for
    /// fewer invocations (on lavapipe each is a switch through every 8),
    /// and a tree of sums over it adds the same pairs as a wider one,
    /// whose extra slots hold zeros.
    pub(crate) fn one_group_width(&self, rows: usize) -> u32 {
        rows.next_power_of_two().min(self.tuning.elementwise_wg as usize) as u32
    }

    /// Workgroup counts for `n` invocations in workgroups of `wg`, spread
    /// over x and y because each dimension is limited to 65535.
    pub(crate) fn groups_1d(&self, n: usize, wg: u32) -> [u32; 3] {
        self.spread(n.div_ceil(wg as usize) as u64)
    }

    /// `count` workgroups as an x·y grid (kernels use `linear_id` or
    /// `group_id`, skipping ids past the end).
    pub(crate) fn spread(&self, count: u64) -> [u32; 3] {
        let max = self.limits.max_compute_workgroups_per_dimension as u64;
        if count <= max {
            [count as u32, 1, 1]
        } else {
            let y = count.div_ceil(max);
            [count.div_ceil(y) as u32, y as u32, 1]
        }
    }

    /// A new device-side check for a dispatch of `op` (see [`taint`]).
    pub(crate) fn check(&self, op: &'static str) -> Result<Arc<taint::Check>> {
        loop {
            if let Some(c) = self.checks.begin(op) {
                return Ok(c);
            }
            // The next slot is held by an unresolved check: resolve all that
            // can be (one begun by another thread and not yet recorded
            // resolves at the next read: try again).
            self.resolve_checks(&[])?;
        }
    }

    /// The error buffer, bound at `slot` of a kernel with checks.
    pub(crate) fn errors(&self, slot: u32) -> Bind<'_> {
        Bind::write(slot, &self.checks.buffer)
    }

    /// Reads back the first `n` f32s of `src`, after all work recorded
    /// before this call; fails with the error of any check it depends on.
    fn download(&self, src: &GpuBuffer, n: usize) -> Result<Vec<f32>> {
        capture::invalidate(self, "the step reads a tensor back");
        let src = match src.get() {
            Ok(p) => p,
            Err(poison) => {
                if poison.unresolved() {
                    self.resolve_checks(&[])?;
                }
                return Err(poison.outcome());
            }
        };
        self.health.check()?;
        let mut words = if src.taint.unresolved() {
            self.resolve_checks(&[(&src.buffer, n as u64 * 4)])?.pop().expect("one buffer read")
        } else if n == 0 {
            Vec::new()
        } else {
            self.queue.read(&[(&src.buffer, n as u64 * 4)], &self.health)?.pop().expect("one buffer read")
        };
        taint::outcome(&src.taint)?;
        words.truncate(n);
        Ok(bytemuck::allocation::cast_vec(words))
    }

    /// Reads back `sources` together with the error buffer and resolves
    /// every outstanding check.
    fn resolve_checks(&self, sources: &[(&wgpu::Buffer, u64)]) -> Result<Vec<Vec<u32>>> {
        let mut all = sources.to_vec();
        all.push((&self.checks.buffer.buffer, (taint::SLOTS * taint::WORDS_PER_SLOT * 4) as u64));
        // Before the submission: only checks already recorded are in it.
        let resolvable = self.checks.resolvable();
        let mut read = self.queue.read(&all, &self.health)?;
        let errors = read.pop().expect("the error buffer was read");
        self.checks.resolve(&resolvable, &errors);
        Ok(read)
    }

    fn upload(&self, data: &[f32]) -> GpuBuffer {
        let result = self.alloc("upload", data.len()).inspect(|out| {
            self.queue.write(&out.buffer, bytemuck::cast_slice(data));
            if capture::active() {
                capture::note_write(self, out, bytemuck::cast_slice(data), capture::Patches::default());
            }
        });
        GpuBuffer::ready(result.map_err(Poison::from))
    }
}

/// Every buffer of `inputs` computed, or the poisons among them combined
/// with the checks of the others.
fn computed<'a>(inputs: impl Iterator<Item = &'a GpuBuffer>) -> std::result::Result<Vec<&'a Arc<Pooled>>, Poison> {
    let mut ready = Vec::new();
    let mut poisons = Vec::new();
    for x in inputs {
        match x.get() {
            Ok(p) => ready.push(p),
            Err(p) => poisons.push(p),
        }
    }
    if poisons.is_empty() { Ok(ready) } else { Err(Poison::combine(&poisons, ready.iter().map(|p| &p.taint))) }
}

/// A GPU device: cheap to clone, shared by every tensor on it.
#[derive(Clone)]
pub struct GpuDevice {
    pub(crate) ctx: Arc<Context>,
}

impl PartialEq for GpuDevice {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ctx, &other.ctx)
    }
}

impl Eq for GpuDevice {}

impl GpuDevice {
    /// Opens a new device on the best adapter wgpu finds: a discrete GPU
    /// before an integrated one before a software one. `WGPU_BACKEND`
    /// (e.g. `vulkan`, `metal`, `dx12`) restricts the APIs tried, and
    /// `WGPU_ADAPTER_NAME` picks the first adapter whose name contains it
    /// (see [`GpuOptions::from_env`]).
    pub fn new() -> Result<GpuDevice> {
        Self::with_options(GpuOptions::from_env())
    }

    /// As [`new`](Self::new), with explicit options.
    pub fn with_options(options: GpuOptions) -> Result<GpuDevice> {
        let o = pollster::block_on(device::open(&options))?;
        let limit = o.limits.max_storage_buffer_binding_size.min(o.limits.max_buffer_size);
        let pool = Pool::new(o.device.clone(), limit);
        let errors = pool.alloc("device-side checks", (taint::SLOTS * taint::WORDS_PER_SLOT) as usize, || {})?;
        let gpu = GpuDevice {
            ctx: Arc::new(Context {
                pipelines: Pipelines::new(o.device.clone()),
                bind_groups: BindGroups::new(o.device.clone()),
                queue: Queue::new(o.device.clone(), o.queue),
                pool,
                lazy: lazy::Lazy::new(options.fusion),
                checks: Checks::new(errors),
                device: o.device,
                info: o.info,
                limits: o.limits,
                tuning: o.tuning,
                health: o.health,
                matmul_forced: std::sync::Mutex::new(None),
            }),
        };
        if let Some(path) = std::env::var_os("WGRAD_PROFILE").filter(|p| !p.is_empty()) {
            gpu.start_profiling();
            profile::at_exit::register(&gpu.ctx, path.into());
        }
        Ok(gpu)
    }

    /// Whether the adapter is a hardware GPU (not a software rasterizer).
    pub(crate) fn ctx_is_hardware(&self) -> bool {
        self.ctx.info.device_type != wgpu::DeviceType::Cpu && self.ctx.info.backend != wgpu::Backend::Noop
    }

    /// The adapter behind this device.
    pub fn info(&self) -> DeviceInfo {
        DeviceInfo::of(&self.ctx.info)
    }

    /// Kernels dispatched since the device was opened: with fusion, a
    /// chain of elementwise ops counts once. For profiling, and for checking
    /// that a loop dispatches what you expect.
    pub fn kernels_dispatched(&self) -> u64 {
        self.ctx.queue.dispatched()
    }

    /// Starts recording every kernel dispatched on this device (dropping a
    /// profile already being recorded); see [`Profile`]. The whole run can
    /// be profiled without code: `WGRAD_PROFILE=trace.json` profiles every
    /// device from when it opens, and at exit prints each one's table and
    /// writes its Chrome trace.
    pub fn start_profiling(&self) {
        self.ctx.lazy.run_all();
        self.ctx.queue.start_profiling();
    }

    /// Ends the profile: runs pending work, waits for the GPU and returns
    /// every kernel dispatched since [`start_profiling`](Self::start_profiling)
    /// (an empty profile if it was not called).
    pub fn stop_profiling(&self) -> Result<Profile> {
        self.ctx.stop_profiling()
    }

    /// Every compute pipeline this device has built, in build order: the
    /// WGSL source, entry point, override constants and bindings of each
    /// kernel the program has run, fused kernels included (as
    /// `TORCH_LOGS=output_code` shows PyTorch's). `tests/portability.rs`
    /// translates them for Metal, DX12 and OpenGL.
    pub fn compiled_kernels(&self) -> Vec<CompiledKernel> {
        self.ctx.pipelines.compiled()
    }

    /// Bytes live, bytes pooled and allocations made so far.
    pub fn memory_stats(&self) -> MemoryStats {
        self.ctx.pool.stats()
    }

    /// Frees the buffers waiting in the pool (as `torch.cuda.empty_cache`).
    /// Safe at any time, also with work recorded and not yet run.
    pub fn empty_cache(&self) {
        self.ctx.release_memory();
    }

    /// Finishes all work: runs every pending (fused, not yet computed)
    /// result still alive, submits everything recorded and waits for the
    /// GPU to finish it. Time GPU work up to here, or up to a read back.
    pub fn synchronize(&self) -> Result<()> {
        self.ctx.lazy.run_all();
        let index = self.ctx.queue.submit();
        self.ctx.queue.wait(index, &self.ctx.health)
    }

    /// The matmul kernel configurations this adapter can run (`subgroup
    /// 32`, `tiled 8 8 32`, …; the default first): what the autotuner
    /// chooses among (see `docs/gpu-performance.md`).
    pub fn matmul_kernels(&self) -> Vec<String> {
        autotune::candidates(&self.ctx).iter().map(|c| c.text()).collect()
    }

    /// The autotuner's decisions so far on this adapter, in this process
    /// or read from its disk cache: (shape class, kernel). Convolution
    /// classes start with `conv`.
    pub fn matmul_autotuned(&self) -> Vec<(String, String)> {
        autotune::decisions(&self.ctx)
    }

    /// Makes this device run every matmul and convolution product with
    /// `kernel` (one of
    /// [`matmul_kernels`](Self::matmul_kernels)), or return to the tuned
    /// choice with `None`: for testing and benchmarking the candidates.
    /// Panics on a kernel this adapter does not offer.
    pub fn force_matmul_kernel(&self, kernel: Option<&str>) {
        let choice = kernel.map(|k| {
            autotune::Choice::parse(k)
                .filter(|c| autotune::candidates(&self.ctx).contains(c))
                .unwrap_or_else(|| panic!("force_matmul_kernel: {k:?} is not one of {:?}", self.matmul_kernels()))
        });
        *lock(&self.ctx.matmul_forced) = choice;
    }

    /// The largest tensor, in bytes, a kernel can bind on this adapter.
    pub fn max_tensor_bytes(&self) -> u64 {
        self.ctx.pool.limit()
    }

    /// Destroys the underlying wgpu device, as a driver reset would: every
    /// tensor on it becomes unreadable and reading one returns
    /// [`crate::Error::DeviceLost`]. For testing how a program copes with a lost GPU.
    pub fn simulate_device_loss(&self) {
        // Let recorded work finish first, so the loss is reported the same
        // way (by the lost callback) whatever was in flight.
        let index = self.ctx.queue.submit();
        let _ = self.ctx.queue.wait(index, &self.ctx.health);
        self.ctx.device.destroy();
        let _ = self.ctx.device.poll(wgpu::PollType::Poll);
    }
}

impl fmt::Debug for GpuDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gpu({})", self.ctx.info.name)
    }
}

impl Backend for GpuDevice {
    fn upload(&self, data: &[f32]) -> Storage {
        Storage::Gpu(self.ctx.upload(data))
    }

    fn to_vec(&self, x: &Storage, n: usize) -> Result<Vec<f32>> {
        self.ctx.download(x.gpu(), n)
    }

    fn poisoned(&self, error: crate::Error) -> Storage {
        Storage::Gpu(GpuBuffer::poisoned(error))
    }

    fn error(&self, x: &Storage) -> Option<crate::Error> {
        x.gpu().get().err().map(|p| p.error().clone())
    }

    fn full(&self, n: usize, value: f32) -> Storage {
        Storage::Gpu(lazy::constant(&self.ctx, n, value))
    }

    fn unary(&self, op: UnaryOp, x: &Storage, n: usize) -> Storage {
        Storage::Gpu(lazy::unary(&self.ctx, op, x.gpu(), n))
    }

    fn binary(&self, op: BinaryOp, a: (&Storage, &Strided), b: (&Storage, &Strided)) -> Storage {
        Storage::Gpu(lazy::binary(&self.ctx, op, (a.0.gpu(), a.1), (b.0.gpu(), b.1)))
    }

    fn select(&self, c: (&Storage, &Strided), a: (&Storage, &Strided), b: (&Storage, &Strided)) -> Storage {
        Storage::Gpu(lazy::select(&self.ctx, (c.0.gpu(), c.1), (a.0.gpu(), a.1), (b.0.gpu(), b.1)))
    }

    fn reduce(&self, op: ReduceOp, x: &Storage, v: AxisView) -> Storage {
        Storage::Gpu(reduce::reduce(&self.ctx, op, x.gpu(), v))
    }

    fn matmul(&self, a: &Storage, b: &Storage, spec: MatmulSpec) -> Storage {
        Storage::Gpu(matmul::matmul(&self.ctx, a.gpu(), b.gpu(), spec))
    }

    fn linear_grads(&self, g: &Storage, x: &Storage, rows: usize, outs: usize, ins: usize) -> [Storage; 2] {
        if !self.ctx.tuning.epilogues {
            return super::linear_grads_unfused(self, g, x, rows, outs, ins);
        }
        matmul::linear_grads(&self.ctx, g.gpu(), x.gpu(), rows, outs, ins).map(Storage::Gpu)
    }

    fn softmax(&self, x: &Storage, v: AxisView, log: bool) -> Storage {
        Storage::Gpu(softmax::softmax(&self.ctx, x.gpu(), v, log))
    }

    fn layer_norm(&self, x: &Storage, w: &Storage, b: &Storage, rows: usize, cols: usize, eps: f32) -> [Storage; 2] {
        norm::layer_norm(&self.ctx, [x.gpu(), w.gpu(), b.gpu()], rows, cols, eps).map(Storage::Gpu)
    }

    fn layer_norm_backward(
        &self,
        x: &Storage,
        stats: &Storage,
        w: &Storage,
        gy: &Storage,
        rows: usize,
        cols: usize,
    ) -> [Storage; 3] {
        norm::layer_norm_backward(&self.ctx, [x.gpu(), stats.gpu(), w.gpu(), gy.gpu()], rows, cols).map(Storage::Gpu)
    }

    fn softmax_backward(&self, y: &Storage, g: &Storage, v: AxisView, log: bool) -> Storage {
        Storage::Gpu(softmax::softmax_backward(&self.ctx, y.gpu(), g.gpu(), v, log))
    }

    fn lstm_cell(&self, gates: &Storage, hc_prev: &Storage, batch: usize, hidden: usize) -> Storage {
        Storage::Gpu(rnn::lstm_cell(&self.ctx, gates.gpu(), hc_prev.gpu(), batch, hidden))
    }

    fn lstm_cell_backward(
        &self,
        gates: &Storage,
        hc_prev: &Storage,
        ghc: &Storage,
        batch: usize,
        hidden: usize,
    ) -> [Storage; 2] {
        rnn::lstm_cell_backward(&self.ctx, [gates.gpu(), hc_prev.gpu(), ghc.gpu()], batch, hidden).map(Storage::Gpu)
    }

    fn cumsum(&self, x: &Storage, v: AxisView, reverse: bool) -> Storage {
        Storage::Gpu(scan::cumsum(&self.ctx, x.gpu(), v, reverse))
    }

    fn argsort(&self, x: &Storage, v: AxisView, descending: bool) -> Storage {
        Storage::Gpu(sort::argsort(&self.ctx, x.gpu(), v, descending))
    }

    fn conv2d(&self, x: &Storage, weight: &Storage, spec: ConvSpec) -> Storage {
        Storage::Gpu(conv::conv2d(&self.ctx, x.gpu(), weight.gpu(), spec))
    }

    fn conv2d_input_grad(&self, gy: &Storage, weight: &Storage, spec: ConvSpec) -> Storage {
        Storage::Gpu(conv::conv2d_input_grad(&self.ctx, gy.gpu(), weight.gpu(), spec))
    }

    fn conv2d_weight_grad(&self, gy: &Storage, x: &Storage, spec: ConvSpec) -> Storage {
        Storage::Gpu(conv::conv2d_weight_grad(&self.ctx, gy.gpu(), x.gpu(), spec))
    }

    fn pool2d(&self, x: &Storage, spec: PoolSpec) -> Storage {
        Storage::Gpu(conv::pool2d(&self.ctx, x.gpu(), spec))
    }

    fn pool2d_backward(&self, x: &Storage, gy: &Storage, spec: PoolSpec) -> Storage {
        Storage::Gpu(conv::pool2d_backward(&self.ctx, x.gpu(), gy.gpu(), spec))
    }

    fn copy_strided(&self, x: &Storage, src: &Strided) -> Storage {
        Storage::Gpu(copy::copy_strided(&self.ctx, x.gpu(), src))
    }

    fn copy_into(&self, out: &mut Storage, dst: &Strided, x: &Storage) {
        copy::copy_into(&self.ctx, out.gpu_mut(), dst, x.gpu());
    }

    fn gather(&self, op: &'static str, x: &Storage, v: AxisView, idx: (&Storage, &Strided), m: usize) -> Storage {
        Storage::Gpu(gather::gather(&self.ctx, op, x.gpu(), v, (idx.0.gpu(), idx.1), m))
    }

    fn scatter_add(&self, op: &'static str, g: &Storage, v: AxisView, idx: (&Storage, &Strided), m: usize) -> Storage {
        Storage::Gpu(gather::scatter_add(&self.ctx, op, g.gpu(), v, (idx.0.gpu(), idx.1), m))
    }

    fn cross_entropy(&self, logits: &Storage, labels: &Storage, rows: usize, classes: usize) -> Storage {
        Storage::Gpu(loss::cross_entropy(&self.ctx, logits.gpu(), labels.gpu(), loss::Pass::Rows, rows, classes))
    }

    fn cross_entropy_mean(&self, logits: &Storage, labels: &Storage, rows: usize, classes: usize) -> Storage {
        match loss::cross_entropy_mean(&self.ctx, logits.gpu(), labels.gpu(), rows, classes) {
            Some(mean) => Storage::Gpu(mean),
            None => crate::backend::cross_entropy_mean_unfused(self, logits, labels, rows, classes),
        }
    }

    fn argmax_hits(&self, x: &Storage, labels: &Storage, base: Option<&Storage>, rows: usize, len: usize) -> Storage {
        match reduce::argmax_hits(&self.ctx, x.gpu(), labels.gpu(), base.map(Storage::gpu), rows, len) {
            Some(hits) => Storage::Gpu(hits),
            None => crate::backend::argmax_hits_unfused(self, x, labels, base, rows, len),
        }
    }

    fn cross_entropy_backward(
        &self,
        logits: &Storage,
        labels: &Storage,
        grad_rows: &Storage,
        rows: usize,
        classes: usize,
        grad_scale: Option<f32>,
    ) -> Storage {
        let pass = loss::Pass::Backward(grad_rows.gpu(), grad_scale);
        Storage::Gpu(loss::cross_entropy(&self.ctx, logits.gpu(), labels.gpu(), pass, rows, classes))
    }

    fn dropout(&self, x: &Storage, n: usize, p: f32, key: [u32; 2]) -> Storage {
        Storage::Gpu(lazy::dropout(&self.ctx, x.gpu(), n, p, key))
    }

    fn update(&self, rule: UpdateRule, param: &mut Storage, grad: &Storage, state: &mut [&mut Storage], n: usize) {
        let mut targets: Vec<&mut GpuBuffer> = vec![param.gpu_mut()];
        targets.extend(state.iter_mut().map(|s| s.gpu_mut()));
        let rule_of = optim::replay_rule(&self.ctx);
        optim::update(&self.ctx, rule, &mut targets, grad.gpu(), n, rule_of);
    }

    fn update_many(&self, rule: UpdateRule, updates: &mut [super::Update<'_>]) {
        optim::update_many(&self.ctx, rule, updates);
    }
}
