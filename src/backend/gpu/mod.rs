//! The wgpu runtime: adapter and device, buffer pool, pipeline cache,
//! command batching and readback, and the WGSL kernels behind the
//! [`Backend`](super::Backend) interface (one module per kernel family).
//!
//! How it stays fast:
//! - Pipelines are compiled once per (shader, entry point, override
//!   constants) and cached; bind group layouts once per binding signature.
//! - Buffers come from a size-class pool ([`buffer`]).
//! - Dispatches are recorded into one long-lived compute pass and submitted
//!   in batches; only a read back to the host (or an upload into a reused
//!   buffer) submits early, and only a read back waits.
//! - Elementwise ops are fused: a chain of them runs as one generated
//!   kernel when its result is needed ([`fusion`]).
//! - Per-dispatch parameters (sizes, strides, scalars) travel as immediate
//!   data (push constants), so no uniform buffer is created or written per op.
//!
//! How it fails: a lost device, an allocation the driver refuses, or a tensor
//! over the adapter's binding limit poisons the buffers it affects (see
//! [`buffer::GpuBuffer`]); the error surfaces from `to_vec` as a
//! [`crate::Error`]. wgpu errors are captured by a handler, never panics.

mod buffer;
mod copy;
mod elementwise;
mod fusion;
mod matmul;
mod optim;
mod reduce;

pub(crate) use buffer::GpuBuffer;
pub use buffer::MemoryStats;

use super::{AxisView, Backend, BinaryOp, MatmulSpec, ReduceOp, Storage, UnaryOp, UpdateRule};
use crate::shape::Strided;
use crate::{Error, Result};
use buffer::{Pool, size_class};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Dispatches recorded before the batch is submitted without being asked:
/// often enough that the GPU starts on a long chain while the host is still
/// recording it, rarely enough that submission overhead stays small.
const SUBMIT_EVERY: u32 = 128;

/// The largest number of bytes of immediate data a kernel uses; the Vulkan
/// minimum of 128 bytes is enough.
const IMMEDIATE_BYTES: u32 = 128;

/// The WGSL sources, one file per kernel family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Shader {
    Copy,
    Fill,
    Reduce,
    Softmax,
    Gather,
    Dropout,
    Optim,
    Matmul,
    MatmulTiled,
}

impl Shader {
    fn source(self) -> &'static str {
        match self {
            Shader::Copy => include_str!("../../../shaders/copy.wgsl"),
            Shader::Fill => include_str!("../../../shaders/fill.wgsl"),
            Shader::Reduce => include_str!("../../../shaders/reduce.wgsl"),
            Shader::Softmax => include_str!("../../../shaders/softmax.wgsl"),
            Shader::Gather => include_str!("../../../shaders/gather.wgsl"),
            Shader::Dropout => include_str!("../../../shaders/dropout.wgsl"),
            Shader::Optim => include_str!("../../../shaders/optim.wgsl"),
            Shader::Matmul => include_str!("../../../shaders/matmul.wgsl"),
            Shader::MatmulTiled => include_str!("../../../shaders/matmul_tiled.wgsl"),
        }
    }
}

/// One entry point of a shader with its override constants.
pub(crate) struct Kernel<'a> {
    pub shader: Shader,
    pub entry: &'static str,
    pub constants: &'a [(&'static str, f64)],
}

/// A buffer bound at a binding slot, read-only or read-write.
pub(crate) struct Bind<'a> {
    pub slot: u32,
    pub buffer: &'a GpuBuffer,
    pub write: bool,
}

impl<'a> Bind<'a> {
    pub fn read(slot: u32, buffer: &'a GpuBuffer) -> Self {
        Bind { slot, buffer, write: false }
    }
    pub fn write(slot: u32, buffer: &'a GpuBuffer) -> Self {
        Bind { slot, buffer, write: true }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PipelineKey {
    shader: Shader,
    entry: &'static str,
    constants: Vec<(&'static str, u64)>,
    signature: Vec<(u32, bool)>,
}

struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// A bind group's identity: its layout and the buffer at each slot.
#[derive(PartialEq, Eq, Hash)]
struct BindKey {
    layout: wgpu::BindGroupLayout,
    buffers: Vec<(u32, wgpu::Buffer)>,
}

/// Bind groups kept for reuse. Pooled buffers recur from step to step, so
/// a training loop soon finds every bind group it needs here instead of
/// creating one per dispatch; the cap only guards against pathological
/// patterns.
const BIND_GROUP_CACHE: usize = 4096;

/// The encoder and compute pass currently recording.
#[derive(Default)]
struct Batch {
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    dispatches: u32,
}

/// Weak handles on pending buffers; pruned of computed and dropped ones
/// whenever it doubles.
struct Registry {
    cells: Vec<Weak<buffer::Cell>>,
    prune_at: usize,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { cells: Vec::new(), prune_at: 256 }
    }
}

/// Kernel sizes for one adapter (override constants).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tuning {
    /// Workgroup size of the elementwise and copy kernels.
    pub elementwise_wg: u32,
    /// Workgroup size of the one-workgroup-per-row kernels (a power of two).
    pub row_wg: u32,
    /// The subgroup matmul's workgroup size (a multiple of the subgroup
    /// size), or `None` to use the workgroup-tiled kernel instead.
    pub matmul_subgroup_wg: Option<u32>,
    /// The tiled matmul's invocations along M and N, and its K step.
    pub matmul_wm: u32,
    pub matmul_wn: u32,
    pub matmul_bk: u32,
}

impl Tuning {
    fn for_adapter(info: &wgpu::AdapterInfo, subgroups: bool) -> Self {
        if info.device_type == wgpu::DeviceType::Cpu {
            // Software rasterisers (lavapipe, WARP) run a workgroup on one CPU
            // thread, SIMD across invocations: barriers are dear, and small
            // workgroups spread a matmul evenly over the cores.
            Tuning {
                elementwise_wg: 256,
                row_wg: 32,
                matmul_subgroup_wg: subgroups.then_some(info.subgroup_max_size.max(8)),
                matmul_wm: 8,
                matmul_wn: 8,
                matmul_bk: 32,
            }
        } else {
            Tuning {
                elementwise_wg: 256,
                row_wg: 128,
                matmul_subgroup_wg: subgroups.then_some(info.subgroup_max_size.max(64)),
                matmul_wm: 16,
                matmul_wn: 16,
                matmul_bk: 16,
            }
        }
    }
}

/// Choices made when opening a GPU device.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Use subgroup operations where the adapter has them (subgroups of at
    /// least 8 lanes). They make matmul several times faster; turning them
    /// off selects the workgroup-tiled kernel every adapter can run.
    pub subgroups: bool,
    /// Take the first adapter whose name contains this (case-insensitive).
    pub adapter: Option<String>,
    /// Graphics APIs to try, as wgpu's comma list (`"vulkan"`, `"metal,dx12"`);
    /// `None` tries Vulkan, Metal and DX12.
    pub backends: Option<String>,
    /// Fuse chains of elementwise ops into one kernel each, run when their
    /// result is needed. Off, every op dispatches its own kernel at once
    /// (useful when profiling one op, or bisecting a suspected fusion bug).
    pub fusion: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions { subgroups: true, adapter: None, backends: None, fusion: true }
    }
}

impl GpuOptions {
    /// The defaults, with `adapter` from `WGPU_ADAPTER_NAME` and `backends`
    /// from `WGPU_BACKEND` where those are set, and fusion off where
    /// `WGRAD_FUSION=0`.
    pub fn from_env() -> Self {
        GpuOptions {
            adapter: std::env::var("WGPU_ADAPTER_NAME").ok(),
            backends: std::env::var("WGPU_BACKEND").ok(),
            fusion: std::env::var("WGRAD_FUSION").map_or(true, |v| v != "0"),
            ..GpuOptions::default()
        }
    }
}

/// The bind group layout of one binding signature, and its pipeline layout.
type Layout = (wgpu::BindGroupLayout, wgpu::PipelineLayout);

/// Everything one wgpu device owns.
pub(crate) struct Context {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    pub(crate) tuning: Tuning,
    modules: Mutex<HashMap<Shader, wgpu::ShaderModule>>,
    layouts: Mutex<HashMap<Vec<(u32, bool)>, Layout>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
    /// Pipelines of generated kernels, by source.
    generated: Mutex<HashMap<String, Arc<Pipeline>>>,
    /// Whether elementwise ops are fused.
    fusion: bool,
    /// Pending (fused, not yet computed) buffers, so that an in-place write
    /// can first compute those that read its target.
    pending: Mutex<Registry>,
    /// Kernels dispatched since the device was opened.
    dispatched: AtomicU64,
    bind_groups: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
    pool: Mutex<Pool>,
    /// Mappable buffers for reading back, by size class.
    staging: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    batch: Mutex<Batch>,
    /// Why the device was lost, once it has been.
    lost: Arc<Mutex<Option<String>>>,
    /// The first wgpu error no error scope caught.
    uncaptured: Arc<Mutex<Option<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

/// What a device is, for logs and benchmark tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The adapter's name, e.g. "NVIDIA GeForce RTX 4090" or "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub name: String,
    /// The graphics API: Vulkan, Metal, Dx12.
    pub backend: String,
    /// Discrete, integrated, virtual or CPU (software).
    pub device_type: String,
    /// The driver and its version.
    pub driver: String,
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {}, {})", self.name, self.backend, self.device_type, self.driver)
    }
}

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
        pollster::block_on(Self::open(options))
    }

    async fn open(options: GpuOptions) -> Result<GpuDevice> {
        let backends = options.backends.as_deref().map_or(wgpu::Backends::PRIMARY, wgpu::Backends::from_comma_list);
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
        });
        let wanted = options.adapter.as_ref().map(|s| s.to_lowercase());
        let mut adapters = instance.enumerate_adapters(backends).await;
        let found: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        adapters.retain(|a| {
            let info = a.get_info();
            wanted.as_ref().is_none_or(|w| info.name.to_lowercase().contains(w))
                && a.features().contains(wgpu::Features::IMMEDIATES)
        });
        let rank = |t: wgpu::DeviceType| match t {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        adapters.sort_by_key(|a| rank(a.get_info().device_type));
        let Some(adapter) = adapters.into_iter().next() else {
            let why = match (&wanted, found.is_empty()) {
                (_, true) => format!("no adapter for backends {backends:?}"),
                (Some(w), false) => {
                    format!("none of {found:?} matches WGPU_ADAPTER_NAME={w:?} and supports immediates")
                }
                (None, false) => format!("none of {found:?} supports immediate data (push constants)"),
            };
            return Err(Error::NoAdapter(why));
        };
        let info = adapter.get_info();
        let limits = adapter.limits();
        let subgroups =
            options.subgroups && adapter.features().contains(wgpu::Features::SUBGROUP) && info.subgroup_min_size >= 8;
        let mut features = wgpu::Features::IMMEDIATES;
        if subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wgrad"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::NoAdapter(format!("{}: {e}", info.name)))?;
        if limits.max_immediate_size < IMMEDIATE_BYTES {
            return Err(Error::NoAdapter(format!(
                "{} offers {} bytes of immediate data, wgrad needs {IMMEDIATE_BYTES}",
                info.name, limits.max_immediate_size
            )));
        }
        let lost = Arc::new(Mutex::new(None));
        let lost_cb = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *lock(&lost_cb) = Some(format!("{reason:?}: {msg}"));
        });
        let uncaptured = Arc::new(Mutex::new(None));
        let uncaptured_cb = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            lock(&uncaptured_cb).get_or_insert_with(|| e.to_string());
        }));
        Ok(GpuDevice {
            ctx: Arc::new(Context {
                tuning: Tuning::for_adapter(&info, subgroups),
                device,
                queue,
                info,
                limits,
                modules: Mutex::default(),
                layouts: Mutex::default(),
                pipelines: Mutex::default(),
                generated: Mutex::default(),
                fusion: options.fusion,
                pending: Mutex::default(),
                dispatched: AtomicU64::new(0),
                bind_groups: Mutex::default(),
                pool: Mutex::default(),
                staging: Mutex::default(),
                batch: Mutex::default(),
                lost,
                uncaptured,
            }),
        })
    }

    /// The adapter behind this device.
    pub fn info(&self) -> DeviceInfo {
        let i = &self.ctx.info;
        let driver =
            if i.driver_info.is_empty() { i.driver.clone() } else { format!("{} {}", i.driver, i.driver_info) };
        DeviceInfo {
            name: i.name.clone(),
            backend: format!("{:?}", i.backend),
            device_type: format!("{:?}", i.device_type),
            driver,
        }
    }

    /// Kernels dispatched since the device was opened: with fusion, a
    /// chain of elementwise ops counts once. For profiling, and for checking
    /// that a loop dispatches what you expect.
    pub fn kernels_dispatched(&self) -> u64 {
        self.ctx.dispatched.load(Ordering::Relaxed)
    }

    /// Bytes live, bytes pooled and allocations made so far.
    pub fn memory_stats(&self) -> MemoryStats {
        lock(&self.ctx.pool).stats
    }

    /// Frees the buffers waiting in the pool (as `torch.cuda.empty_cache`).
    pub fn empty_cache(&self) {
        self.ctx.clear_pool();
    }

    /// Finishes all work: runs every pending (fused, not yet computed)
    /// result still alive, submits everything recorded and waits for the
    /// GPU to finish it. Time GPU work up to here, or up to a read back.
    pub fn synchronize(&self) -> Result<()> {
        self.ctx.run_pending();
        let index = self.ctx.submit(&mut lock(&self.ctx.batch));
        self.ctx.wait(index)
    }

    /// The largest tensor, in bytes, a kernel can bind on this adapter.
    pub fn max_tensor_bytes(&self) -> u64 {
        self.ctx.max_binding()
    }

    /// Destroys the underlying wgpu device, as a driver reset would: every
    /// tensor on it becomes unreadable and reading one returns
    /// [`Error::DeviceLost`]. For testing how a program copes with a lost GPU.
    pub fn simulate_device_loss(&self) {
        // Let recorded work finish first, so the loss is reported the same
        // way (by the lost callback) whatever was in flight.
        let index = self.ctx.submit(&mut lock(&self.ctx.batch));
        let _ = self.ctx.wait(index);
        self.ctx.device.destroy();
        let _ = self.ctx.device.poll(wgpu::PollType::Poll);
    }
}

impl fmt::Debug for GpuDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gpu({})", self.ctx.info.name)
    }
}

impl Context {
    fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }

    /// The error that poisons everything, if the device is gone.
    fn lost_error(&self) -> Option<Error> {
        lock(&self.lost).clone().map(Error::DeviceLost)
    }

    /// A buffer for `n` f32s, from the pool when one of its class is free.
    pub(crate) fn alloc(self: &Arc<Self>, op: &'static str, n: usize) -> GpuBuffer {
        GpuBuffer::ready(self.alloc_pooled(op, n))
    }

    pub(crate) fn alloc_pooled(self: &Arc<Self>, op: &'static str, n: usize) -> Result<Arc<buffer::Pooled>> {
        if let Some(e) = self.lost_error() {
            return Err(e);
        }
        let bytes = (n as u64).saturating_mul(4);
        let limit = self.max_binding();
        if bytes > limit {
            return Err(Error::TooLarge { op, bytes, limit });
        }
        // Round up to the class, unless that would cross the limit.
        let class = size_class(bytes).min(limit.max(16) & !15);
        let pooled = lock(&self.pool).take(class);
        let buffer = match pooled {
            Some(buffer) => buffer,
            None => match self.create_buffer(class) {
                Ok(b) => b,
                Err(_) => {
                    // Give the pool's memory back to the driver and try once more.
                    self.clear_pool();
                    self.create_buffer(class)?
                }
            },
        };
        Ok(Arc::new(buffer::Pooled::new(buffer, class, self.clone())))
    }

    /// Remembers a pending buffer (see [`before_write`](Self::before_write)).
    fn register_pending(&self, cell: Weak<buffer::Cell>) {
        let mut registry = lock(&self.pending);
        registry.cells.push(cell);
        if registry.cells.len() >= registry.prune_at {
            registry.cells.retain(|c| c.upgrade().is_some_and(|c| c.is_pending()));
            registry.prune_at = (2 * registry.cells.len()).max(256);
        }
    }

    /// Computes every pending buffer that is still alive.
    fn run_pending(&self) {
        let cells = std::mem::take(&mut lock(&self.pending).cells);
        for cell in cells.iter().filter_map(Weak::upgrade) {
            cell.run();
        }
    }

    /// Makes `target` safe to write in place: computes it if it is pending,
    /// and computes every pending expression that reads it, so none of them
    /// later sees the new contents.
    pub(crate) fn before_write(&self, target: &GpuBuffer) {
        let Ok(buffer) = target.get() else { return };
        if Arc::strong_count(buffer) == 1 {
            return;
        }
        let cells: Vec<Arc<buffer::Cell>> = lock(&self.pending).cells.iter().filter_map(Weak::upgrade).collect();
        for cell in cells {
            cell.run_if_reads(buffer);
        }
    }

    /// Destroys the pooled buffers, and the cached bind groups that may
    /// refer to them.
    fn clear_pool(&self) {
        lock(&self.bind_groups).clear();
        lock(&self.pool).clear();
        for buffer in lock(&self.staging).drain().flat_map(|(_, v)| v) {
            buffer.destroy();
        }
    }

    fn create_buffer(&self, class: u64) -> Result<wgpu::Buffer> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: class,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            buffer.destroy();
            return Err(Error::OutOfMemory(format!("allocating {class} bytes: {e}")));
        }
        lock(&self.pool).created(class);
        Ok(buffer)
    }

    fn module(&self, shader: Shader) -> wgpu::ShaderModule {
        lock(&self.modules)
            .entry(shader)
            .or_insert_with(|| {
                self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&format!("{shader:?}")),
                    source: wgpu::ShaderSource::Wgsl(shader.source().into()),
                })
            })
            .clone()
    }

    fn pipeline(&self, kernel: &Kernel, signature: Vec<(u32, bool)>) -> Arc<Pipeline> {
        let key = PipelineKey {
            shader: kernel.shader,
            entry: kernel.entry,
            constants: kernel.constants.iter().map(|&(k, v)| (k, v.to_bits())).collect(),
            signature,
        };
        if let Some(p) = lock(&self.pipelines).get(&key) {
            return p.clone();
        }
        let module = self.module(kernel.shader);
        let p = Arc::new(self.build_pipeline(&module, kernel.entry, kernel.constants, &key.signature));
        lock(&self.pipelines).insert(key, p.clone());
        p
    }

    /// The pipeline of a generated kernel (entry point `main`, override `WG`).
    fn generated_pipeline(&self, source: String, signature: Vec<(u32, bool)>, wg: u32) -> Arc<Pipeline> {
        if let Some(p) = lock(&self.generated).get(&source) {
            return p.clone();
        }
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("generated"),
            source: wgpu::ShaderSource::Wgsl(source.as_str().into()),
        });
        let p = Arc::new(self.build_pipeline(&module, "main", &[("WG", wg as f64)], &signature));
        lock(&self.generated).insert(source, p.clone());
        p
    }

    fn build_pipeline(
        &self,
        module: &wgpu::ShaderModule,
        entry: &str,
        constants: &[(&str, f64)],
        signature: &[(u32, bool)],
    ) -> Pipeline {
        let (layout, pipeline_layout) = lock(&self.layouts)
            .entry(signature.to_vec())
            .or_insert_with(|| {
                let entries: Vec<wgpu::BindGroupLayoutEntry> = signature
                    .iter()
                    .map(|&(slot, write)| wgpu::BindGroupLayoutEntry {
                        binding: slot,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage { read_only: !write },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    })
                    .collect();
                let bgl = self
                    .device
                    .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries });
                let pl = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: None,
                    bind_group_layouts: &[Some(&bgl)],
                    immediate_size: IMMEDIATE_BYTES,
                });
                (bgl, pl)
            })
            .clone();
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&pipeline_layout),
            module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                // Every kernel writes its workgroup memory before reading it.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        Pipeline { pipeline, layout }
    }

    /// Records one dispatch. `params` is the immediate data (padded to the
    /// full immediate block). Returns the error that poisons the outputs
    /// instead, if an input is poisoned or the device is lost.
    pub(crate) fn dispatch(&self, kernel: &Kernel, binds: &[Bind], params: &[u32], groups: [u32; 3]) -> Result<()> {
        if let Some(e) = GpuBuffer::first_error(binds.iter().map(|b| b.buffer)) {
            return Err(e);
        }
        if let Some(e) = self.lost_error() {
            return Err(e);
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let mut signature: Vec<(u32, bool)> = binds.iter().map(|b| (b.slot, b.write)).collect();
        signature.sort_unstable();
        let pipeline = self.pipeline(kernel, signature);
        let buffers: Vec<(u32, &wgpu::Buffer)> =
            binds.iter().map(|b| (b.slot, b.buffer.wgpu().expect("not poisoned"))).collect();
        self.record(&pipeline, &buffers, params, groups);
        Ok(())
    }

    /// Records one dispatch of `pipeline` on `buffers` (slot, buffer).
    fn record(&self, pipeline: &Pipeline, buffers: &[(u32, &wgpu::Buffer)], params: &[u32], groups: [u32; 3]) {
        if groups.contains(&0) {
            return;
        }
        let bind_group = self.bind_group(&pipeline.layout, buffers);
        let mut block = [0u32; (IMMEDIATE_BYTES / 4) as usize];
        block[..params.len()].copy_from_slice(params);
        self.dispatched.fetch_add(1, Ordering::Relaxed);

        let mut batch = lock(&self.batch);
        let pass = self.pass(&mut batch);
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.set_immediates(0, bytemuck::cast_slice(&block));
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        batch.dispatches += 1;
        if batch.dispatches >= SUBMIT_EVERY {
            self.submit(&mut batch);
        }
    }

    /// The bind group of `buffers` (slot, buffer), from the cache or newly
    /// made.
    fn bind_group(&self, layout: &wgpu::BindGroupLayout, buffers: &[(u32, &wgpu::Buffer)]) -> wgpu::BindGroup {
        let key = BindKey {
            layout: layout.clone(),
            buffers: buffers.iter().map(|&(slot, buffer)| (slot, buffer.clone())).collect(),
        };
        let mut cache = lock(&self.bind_groups);
        if let Some(group) = cache.get(&key) {
            return group.clone();
        }
        let entries: Vec<wgpu::BindGroupEntry> = key
            .buffers
            .iter()
            .map(|(slot, buffer)| wgpu::BindGroupEntry { binding: *slot, resource: buffer.as_entire_binding() })
            .collect();
        let group =
            self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout, entries: &entries });
        if cache.len() >= BIND_GROUP_CACHE {
            cache.clear();
        }
        cache.insert(key, group.clone());
        group
    }

    /// The compute pass being recorded, opened if there is none.
    fn pass<'b>(&self, batch: &'b mut Batch) -> &'b mut wgpu::ComputePass<'static> {
        if batch.pass.is_none() {
            let encoder = batch.encoder.get_or_insert_with(|| {
                self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgrad") })
            });
            batch.pass = Some(
                encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None })
                    .forget_lifetime(),
            );
        }
        batch.pass.as_mut().expect("just opened")
    }

    /// Ends the pass and returns the encoder, for commands outside passes.
    fn encoder<'b>(&self, batch: &'b mut Batch) -> &'b mut wgpu::CommandEncoder {
        batch.pass = None;
        batch.encoder.get_or_insert_with(|| {
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgrad") })
        })
    }

    /// Submits what is recorded (if anything) and returns its index.
    fn submit(&self, batch: &mut Batch) -> Option<wgpu::SubmissionIndex> {
        batch.pass = None;
        let encoder = batch.encoder.take()?;
        batch.dispatches = 0;
        Some(self.queue.submit([encoder.finish()]))
    }

    /// Waits for a submission (or, with `None`, for everything) to finish.
    fn wait(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait { submission_index: index, timeout: None })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.health()
    }

    /// An error if the device was lost or wgpu reported one we did not catch.
    fn health(&self) -> Result<()> {
        if let Some(e) = self.lost_error() {
            return Err(e);
        }
        match lock(&self.uncaptured).clone() {
            Some(msg) => Err(Error::Gpu(msg)),
            None => Ok(()),
        }
    }

    /// Copies `data` into a new buffer.
    pub(crate) fn upload(self: &Arc<Self>, data: &[f32]) -> GpuBuffer {
        let out = self.alloc("upload", data.len());
        if let (Some(buffer), false) = (out.wgpu(), data.is_empty()) {
            // write_buffer lands before the next submission's commands, so a
            // pooled buffer that recorded (unsubmitted) commands still read
            // must not be overwritten before those commands are submitted.
            let mut batch = lock(&self.batch);
            self.submit(&mut batch);
            self.queue.write_buffer(buffer, 0, bytemuck::cast_slice(data));
        }
        out
    }

    /// Reads the first `n` f32s of `src` back to the host, after all work
    /// recorded before this call.
    pub(crate) fn download(&self, src: &GpuBuffer, n: usize) -> Result<Vec<f32>> {
        let src = match src.get() {
            Ok(p) => &p.buffer,
            Err(e) => return Err(e.clone()),
        };
        self.health()?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let bytes = n as u64 * 4;
        // Readback buffers are kept by size class too: a loop that reads its
        // loss every step would otherwise create one per step.
        let class = size_class(bytes);
        let staging = lock(&self.staging).get_mut(&class).and_then(Vec::pop).unwrap_or_else(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: class,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let index = {
            let mut batch = lock(&self.batch);
            self.encoder(&mut batch).copy_buffer_to_buffer(src, 0, &staging, 0, bytes);
            self.submit(&mut batch)
        };
        let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
        staging.map_async(wgpu::MapMode::Read, ..bytes, move |r| {
            let _ = sender.send(r);
        });
        self.wait(index)?;
        match pollster::block_on(receiver.receive()) {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                return Err(self.lost_error().unwrap_or_else(|| Error::Gpu(format!("reading back a tensor: {e}"))));
            }
            None => return Err(Error::Gpu("reading back a tensor: the map callback never ran".into())),
        }
        let data = {
            let view =
                staging.get_mapped_range(..bytes).map_err(|e| Error::Gpu(format!("reading back a tensor: {e}")))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        staging.unmap();
        lock(&self.staging).entry(class).or_default().push(staging);
        Ok(data)
    }

    /// Workgroup counts for `n` invocations in workgroups of `wg`, spread
    /// over x and y because each dimension is limited to 65535.
    pub(crate) fn groups_1d(&self, n: usize, wg: u32) -> [u32; 3] {
        let groups = n.div_ceil(wg as usize) as u64;
        self.spread(groups)
    }

    /// `count` workgroups as an x·y grid (kernels use `wid.x + wid.y·nwg.x`,
    /// skipping ids past the end).
    pub(crate) fn spread(&self, count: u64) -> [u32; 3] {
        let max = self.limits.max_compute_workgroups_per_dimension as u64;
        if count <= max {
            [count as u32, 1, 1]
        } else {
            let y = count.div_ceil(max);
            [count.div_ceil(y) as u32, y as u32, 1]
        }
    }
}

impl Backend for GpuDevice {
    fn upload(&self, data: &[f32]) -> Storage {
        Storage::Gpu(self.ctx.upload(data))
    }

    fn to_vec(&self, x: &Storage, n: usize) -> Result<Vec<f32>> {
        self.ctx.download(x.gpu(), n)
    }

    fn full(&self, n: usize, value: f32) -> Storage {
        Storage::Gpu(elementwise::fill(&self.ctx, n, value))
    }

    fn unary(&self, op: UnaryOp, x: &Storage, n: usize) -> Storage {
        Storage::Gpu(fusion::unary(&self.ctx, op, x.gpu(), n))
    }

    fn binary(&self, op: BinaryOp, a: (&Storage, &Strided), b: (&Storage, &Strided)) -> Storage {
        Storage::Gpu(fusion::binary(&self.ctx, op, (a.0.gpu(), a.1), (b.0.gpu(), b.1)))
    }

    fn reduce(&self, op: ReduceOp, x: &Storage, v: AxisView) -> Storage {
        Storage::Gpu(reduce::reduce(&self.ctx, op, x.gpu(), v))
    }

    fn matmul(&self, a: &Storage, b: &Storage, spec: MatmulSpec) -> Storage {
        Storage::Gpu(matmul::matmul(&self.ctx, a.gpu(), b.gpu(), spec))
    }

    fn softmax(&self, x: &Storage, v: AxisView, log: bool) -> Storage {
        Storage::Gpu(reduce::softmax(&self.ctx, x.gpu(), v, log))
    }

    fn copy_strided(&self, x: &Storage, src: &Strided) -> Storage {
        Storage::Gpu(copy::copy_strided(&self.ctx, x.gpu(), src))
    }

    fn copy_into(&self, out: &mut Storage, dst: &Strided, x: &Storage) {
        self.ctx.before_write(out.gpu());
        copy::copy_into(&self.ctx, out.gpu_mut(), dst, x.gpu());
    }

    fn gather(&self, x: &Storage, v: AxisView, idx: (&Storage, &Strided), m: usize) -> Storage {
        Storage::Gpu(copy::gather(&self.ctx, x.gpu(), v, (idx.0.gpu(), idx.1), m, false))
    }

    fn scatter_add(&self, g: &Storage, v: AxisView, idx: (&Storage, &Strided), m: usize) -> Storage {
        Storage::Gpu(copy::gather(&self.ctx, g.gpu(), v, (idx.0.gpu(), idx.1), m, true))
    }

    fn cross_entropy(&self, logits: &Storage, labels: &Storage, rows: usize, classes: usize) -> Storage {
        Storage::Gpu(reduce::cross_entropy(&self.ctx, logits.gpu(), labels.gpu(), None, rows, classes))
    }

    fn cross_entropy_backward(
        &self,
        logits: &Storage,
        labels: &Storage,
        grad_rows: &Storage,
        rows: usize,
        classes: usize,
    ) -> Storage {
        let g = Some(grad_rows.gpu());
        Storage::Gpu(reduce::cross_entropy(&self.ctx, logits.gpu(), labels.gpu(), g, rows, classes))
    }

    fn dropout(&self, x: &Storage, n: usize, p: f32, key: [u32; 2]) -> Storage {
        Storage::Gpu(elementwise::dropout(&self.ctx, x.gpu(), n, p, key))
    }

    fn update(&self, rule: UpdateRule, param: &mut Storage, grad: &Storage, state: &mut [&mut Storage], n: usize) {
        self.ctx.before_write(param.gpu());
        for s in state.iter() {
            self.ctx.before_write(s.gpu());
        }
        let state: Vec<&mut GpuBuffer> = state.iter_mut().map(|s| s.gpu_mut()).collect();
        optim::update(&self.ctx, rule, param.gpu_mut(), grad.gpu(), state, n);
    }
}

/// The fresh buffer a kernel writes: `n` f32s at binding `slot`; `op`
/// names the op in errors.
pub(crate) struct Output {
    pub op: &'static str,
    pub n: usize,
    pub slot: u32,
}

/// Runs `kernel` writing into a fresh buffer, which comes back poisoned if
/// any input was (or the allocation failed).
pub(crate) fn launch(
    ctx: &Arc<Context>,
    out: Output,
    kernel: &Kernel,
    inputs: &[Bind],
    params: &[u32],
    groups: [u32; 3],
) -> GpuBuffer {
    let buffer = ctx.alloc(out.op, out.n);
    if buffer.get().is_err() {
        return buffer;
    }
    let mut binds: Vec<Bind> = inputs.iter().map(|b| Bind { slot: b.slot, buffer: b.buffer, write: b.write }).collect();
    binds.push(Bind::write(out.slot, &buffer));
    match ctx.dispatch(kernel, &binds, params, groups) {
        Ok(()) => buffer,
        Err(e) => GpuBuffer::poisoned(e),
    }
}
