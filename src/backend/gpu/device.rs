//! Opening a device: options, adapter choice, the limits and kernel sizes
//! that follow from the adapter, and the device's health (lost, or an
//! uncaught wgpu error).

use super::lock;
use crate::{Error, Result};
use std::fmt;
use std::sync::{Arc, Mutex};

use super::pipelines::IMMEDIATE_BYTES;

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
    /// Workgroups a convolution's weight gradient aims for (split-K).
    pub conv_target_groups: usize,
    /// Update several parameters per optimizer dispatch (see
    /// [`GpuOptions::multi_tensor`]).
    pub multi_tensor: bool,
    /// Parameters of at least this many elements take an optimizer
    /// dispatch of their own even so. A multi-tensor kernel branches per
    /// parameter on its workgroup index: free on a GPU, where a workgroup
    /// takes one branch, but a SIMD-on-CPU driver (llvmpipe) runs every
    /// branch under a mask, so there each workgroup pays for every
    /// parameter's body, and only small parameters are worth batching.
    pub multi_tensor_large: usize,
    /// Matmuls and convolutions are pending and apply elementwise work as
    /// their epilogue (see [`GpuOptions::epilogues`]).
    pub epilogues: bool,
}

impl Tuning {
    fn for_adapter(info: &wgpu::AdapterInfo, subgroups: bool, options: &GpuOptions) -> Self {
        let (multi_tensor, epilogues) = (options.multi_tensor, options.epilogues);
        // The noop adapter reports itself as a CPU, but stands for a GPU.
        if info.device_type == wgpu::DeviceType::Cpu && info.backend != wgpu::Backend::Noop {
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
                conv_target_groups: 16,
                multi_tensor: multi_tensor.unwrap_or(true),
                multi_tensor_large: 1 << 14,
                epilogues: epilogues.unwrap_or(true),
            }
        } else {
            Tuning {
                elementwise_wg: 256,
                row_wg: 128,
                matmul_subgroup_wg: subgroups.then_some(info.subgroup_max_size.max(64)),
                matmul_wm: 16,
                matmul_wn: 16,
                matmul_bk: 16,
                conv_target_groups: 512,
                multi_tensor: multi_tensor.unwrap_or(true),
                multi_tensor_large: 1 << 20,
                epilogues: epilogues.unwrap_or(true),
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
    /// Accept a software adapter (lavapipe, SwiftShader, WARP: a GPU
    /// emulated on the CPU, slower than wgrad's own CPU backend) when no
    /// hardware one is found. [`crate::Device::best`] does not.
    pub software: bool,
    /// Update several parameters per optimizer dispatch (as PyTorch's
    /// fused multi-tensor optimizers), with the same results. `None`: on.
    /// Parameters of a million elements or more (16,384 on a software
    /// rasteriser, which runs every parameter's branch of the kernel in
    /// every workgroup) keep a dispatch of their own: on lavapipe the MNIST
    /// model's three small parameters measured 90.6 µs as one dispatch
    /// against 116.8 µs as three, and all four 1.13 ms as one against
    /// 0.82–1.05 ms as four. `WGRAD_MULTI_TENSOR=0|1` sets it.
    pub multi_tensor: Option<bool>,
    /// Matmul and convolution epilogues: a product is pending, and the
    /// elementwise work on it (a bias, an activation, dropout, the
    /// backward's masks) runs in the product kernel as it stores each
    /// element; a linear layer's weight and bias gradients are one kernel.
    /// `None`: on, where they save dispatches and a round trip of each
    /// product through memory. On lavapipe the MNIST step is 10.3
    /// dispatches with them against 15.9 without, and its steady epoch
    /// 0.40–0.46 s against 0.46–0.55 s (alternated three times). Each
    /// epilogue is a pipeline of its own; since the product kernel stores
    /// its tile by a loop over rows (the epilogue compiled twice, not 32
    /// times) lavapipe builds one in 25–60 ms, where it took 0.12–0.44 s
    /// before, when software adapters left them off. `WGRAD_EPILOGUES=0|1`
    /// sets it.
    pub epilogues: Option<bool>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            subgroups: true,
            adapter: None,
            backends: None,
            fusion: true,
            software: true,
            multi_tensor: None,
            epilogues: None,
        }
    }
}

impl GpuOptions {
    /// The defaults, with `adapter` from `WGPU_ADAPTER_NAME` and `backends`
    /// from `WGPU_BACKEND` (e.g. `gl` for OpenGL) where those are set, fusion
    /// off where `WGRAD_FUSION=0`, subgroups off where `WGRAD_SUBGROUPS=0`
    /// (the kernels an adapter without them runs), and `multi_tensor` and
    /// `epilogues` from `WGRAD_MULTI_TENSOR` and `WGRAD_EPILOGUES`.
    pub fn from_env() -> Self {
        GpuOptions {
            adapter: std::env::var("WGPU_ADAPTER_NAME").ok(),
            backends: std::env::var("WGPU_BACKEND").ok(),
            fusion: std::env::var("WGRAD_FUSION").map_or(true, |v| v != "0"),
            subgroups: std::env::var("WGRAD_SUBGROUPS").map_or(true, |v| v != "0"),
            multi_tensor: flag("WGRAD_MULTI_TENSOR"),
            epilogues: flag("WGRAD_EPILOGUES"),
            ..GpuOptions::default()
        }
    }
}

/// An on/off environment variable, if set.
fn flag(name: &str) -> Option<bool> {
    std::env::var(name).ok().map(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false" | "off" | "no"))
}

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

impl DeviceInfo {
    pub(crate) fn of(i: &wgpu::AdapterInfo) -> Self {
        let driver =
            if i.driver_info.is_empty() { i.driver.clone() } else { format!("{} {}", i.driver, i.driver_info) };
        DeviceInfo {
            name: i.name.clone(),
            backend: format!("{:?}", i.backend),
            device_type: format!("{:?}", i.device_type),
            driver,
        }
    }
}

/// Whether the device is still usable: filled in by wgpu's callbacks.
#[derive(Clone, Default)]
pub(crate) struct Health {
    /// Why the device was lost, once it has been.
    lost: Arc<Mutex<Option<String>>>,
    /// The first wgpu error no error scope caught.
    uncaptured: Arc<Mutex<Option<String>>>,
}

impl Health {
    fn watch(device: &wgpu::Device) -> Self {
        let health = Health::default();
        let lost = health.lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *lock(&lost) = Some(format!("{reason:?}: {msg}"));
        });
        let uncaptured = health.uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            lock(&uncaptured).get_or_insert_with(|| e.to_string());
        }));
        health
    }

    /// The error that poisons everything, if the device is gone.
    pub fn lost(&self) -> Option<Error> {
        lock(&self.lost).clone().map(Error::DeviceLost)
    }

    /// An error if the device was lost or wgpu reported one we did not catch.
    pub fn check(&self) -> Result<()> {
        if let Some(e) = self.lost() {
            return Err(e);
        }
        match lock(&self.uncaptured).clone() {
            Some(msg) => Err(Error::Gpu(msg)),
            None => Ok(()),
        }
    }
}

/// An opened device and what was learnt about its adapter.
pub(crate) struct Opened {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub tuning: Tuning,
    pub health: Health,
}

/// What the kernels need of an adapter beyond WebGPU's defaults, checked
/// once when a device opens (every Vulkan, Metal, DX12 and desktop-GL
/// adapter offers it; `tests/portability.rs` checks each kernel against
/// these numbers).
pub(crate) mod required {
    /// Bytes of immediate data (push constants): Vulkan's minimum and DX12's
    /// root-constant budget in wgpu.
    pub const IMMEDIATE_BYTES: u32 = super::IMMEDIATE_BYTES;
    /// Storage buffers one kernel binds at most (a fused kernel's six
    /// leaves, its output and its words buffer).
    pub const STORAGE_BUFFERS: u32 = 8;
    /// Invocations of the largest workgroup the tuning picks.
    pub const INVOCATIONS: u32 = 256;
    /// Workgroup memory of the workgroup-tiled kernels, in bytes.
    pub const WORKGROUP_BYTES: u32 = 16384;
}

/// The first limit of `limits` below what wgrad needs, described.
pub(crate) fn missing_limit(limits: &wgpu::Limits) -> Option<String> {
    let checks = [
        ("bytes of immediate data (push constants)", limits.max_immediate_size, required::IMMEDIATE_BYTES),
        ("storage buffers per shader stage", limits.max_storage_buffers_per_shader_stage, required::STORAGE_BUFFERS),
        ("invocations per workgroup", limits.max_compute_invocations_per_workgroup, required::INVOCATIONS),
        ("invocations along a workgroup's x", limits.max_compute_workgroup_size_x, required::INVOCATIONS),
        ("bytes of workgroup memory", limits.max_compute_workgroup_storage_size, required::WORKGROUP_BYTES),
    ];
    checks
        .iter()
        .find(|(_, have, need)| have < need)
        .map(|(what, have, need)| format!("offers {have} {what}, wgrad needs {need}"))
}

/// Opens a device on the best adapter that `options` allow: a discrete GPU
/// before an integrated one before a software one.
pub(crate) async fn open(options: &GpuOptions) -> Result<Opened> {
    let backends = options.backends.as_deref().map_or(wgpu::Backends::PRIMARY, wgpu::Backends::from_comma_list);
    let mut descriptor =
        wgpu::InstanceDescriptor { backends, ..wgpu::InstanceDescriptor::new_without_display_handle_from_env() };
    // The noop backend (WGPU_BACKEND=noop) runs only when asked for by name:
    // it computes nothing, and exists to measure the host's cost per dispatch.
    descriptor.backend_options.noop.enable = backends.contains(wgpu::Backends::NOOP);
    // It stands for a typical discrete GPU: 32-lane subgroups (its default,
    // 4 to 128, would select the kernels for adapters without subgroups) and
    // a GPU's tuning (`Tuning::for_adapter`), so the host path measured, and
    // the kernels built, are a real GPU's.
    descriptor.backend_options.noop.subgroup_min_size = Some(32);
    descriptor.backend_options.noop.subgroup_max_size = Some(32);
    let instance = wgpu::Instance::new(descriptor);
    let wanted = options.adapter.as_ref().map(|s| s.to_lowercase());
    let mut adapters = instance.enumerate_adapters(backends).await;
    let found: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
    let software: Vec<String> = adapters
        .iter()
        .map(|a| a.get_info())
        .filter(|i| i.device_type == wgpu::DeviceType::Cpu)
        .map(|i| i.name)
        .collect();
    adapters.retain(|a| {
        let info = a.get_info();
        wanted.as_ref().is_none_or(|w| info.name.to_lowercase().contains(w))
            && a.features().contains(wgpu::Features::IMMEDIATES)
            && (options.software || info.device_type != wgpu::DeviceType::Cpu)
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
            (_, true) => {
                format!("no adapter for backends {backends:?} (OpenGL is tried only when asked for: WGPU_BACKEND=gl)")
            }
            (None, false) if !options.software && software.len() == found.len() => format!(
                "the only GPU adapters, {software:?}, are software rasterizers (a GPU emulated on the CPU, slower \
                 than wgrad's CPU backend); Device::gpu() or WGPU_ADAPTER_NAME uses one anyway"
            ),
            (Some(w), false) => format!("none of {found:?} matches WGPU_ADAPTER_NAME={w:?} and supports immediates"),
            (None, false) => format!("none of {found:?} supports immediate data (push constants)"),
        };
        return Err(Error::NoAdapter(why));
    };
    let info = adapter.get_info();
    let limits = adapter.limits();
    if let Some(why) = missing_limit(&limits) {
        return Err(Error::NoAdapter(format!("{} ({:?}): {why}", info.name, info.backend)));
    }
    let subgroups =
        options.subgroups && adapter.features().contains(wgpu::Features::SUBGROUP) && info.subgroup_min_size >= 8;
    let mut features = wgpu::Features::IMMEDIATES;
    if subgroups {
        features |= wgpu::Features::SUBGROUP;
    }
    // For the profiler's GPU times, where the adapter has them (the noop
    // adapter claims every feature, and its timestamps would all be zero).
    if info.backend != wgpu::Backend::Noop {
        features |= adapter.features() & wgpu::Features::TIMESTAMP_QUERY;
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
    let health = Health::watch(&device);
    let tuning = Tuning::for_adapter(&info, subgroups, options);
    Ok(Opened { tuning, device, queue, info, limits, health })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapters_short_of_a_limit_are_refused_naming_it() {
        // WebGPU's defaults have no immediates at all.
        let why = missing_limit(&wgpu::Limits::default()).unwrap();
        assert!(why.contains("immediate") && why.contains("needs 128"), "{why}");
        let mut enough = wgpu::Limits { max_immediate_size: 128, ..wgpu::Limits::default() };
        assert_eq!(missing_limit(&enough), None);
        enough.max_compute_workgroup_storage_size = 8192;
        let why = missing_limit(&enough).unwrap();
        assert!(why.contains("offers 8192 bytes of workgroup memory"), "{why}");
        let few = wgpu::Limits { max_immediate_size: 256, max_storage_buffers_per_shader_stage: 4, ..enough };
        assert!(missing_limit(&few).unwrap().contains("4 storage buffers"));
    }
}
