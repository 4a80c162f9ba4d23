//! Devices: where a tensor's storage lives and whose kernels compute on it.
//!
//! `Device` is a runtime value rather than a type parameter, so the same model
//! code runs on either device and a program can choose at start-up.
//!
//! ```
//! let dev = wgrad::Device::best(); // a GPU if wgpu finds one, else the CPU
//! println!("training on {}", dev.info());
//! ```

use crate::Result;
use crate::backend::Backend;
use crate::backend::cpu::Cpu;
use crate::backend::gpu::{DeviceInfo, GpuDevice};
use std::fmt;
use std::sync::OnceLock;

/// A compute device. `Device::default()` is the CPU.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU reference backend (the default).
    #[default]
    Cpu,
    /// A GPU through wgpu.
    Gpu(GpuDevice),
}

static DEFAULT_GPU: OnceLock<Result<GpuDevice>> = OnceLock::new();

impl Device {
    /// The process's shared GPU device, opened on first use (see
    /// [`GpuDevice::new`] for how the adapter is chosen and the environment
    /// variables that steer it), or the error saying why there is none.
    pub fn gpu() -> Result<Device> {
        DEFAULT_GPU.get_or_init(GpuDevice::new).clone().map(Device::Gpu)
    }

    /// The fastest device: a hardware GPU if wgpu finds one (discrete,
    /// then integrated), else the CPU — saying which and why on stderr,
    /// once. A software adapter (lavapipe, SwiftShader, WARP) emulates a GPU
    /// on the CPU and is slower than the CPU backend, so `best` takes one
    /// only when `WGPU_ADAPTER_NAME` asks for it; [`Device::gpu`] takes it
    /// when it is all there is.
    pub fn best() -> Device {
        // Decided once: opening adapters to look is slow.
        static BEST: OnceLock<Device> = OnceLock::new();
        BEST.get_or_init(|| {
            let choice = match DEFAULT_GPU.get() {
                Some(Ok(gpu)) if gpu.ctx_is_hardware() || std::env::var_os("WGPU_ADAPTER_NAME").is_some() => {
                    Ok(gpu.clone())
                }
                _ => {
                    let mut options = crate::GpuOptions::from_env();
                    options.software = options.adapter.is_some();
                    GpuDevice::with_options(options).inspect(|gpu| {
                        // The adapter `Device::gpu` would open too: share it.
                        let _ = DEFAULT_GPU.set(Ok(gpu.clone()));
                    })
                }
            };
            match choice {
                Ok(gpu) => {
                    eprintln!("wgrad: using the GPU: {}", gpu.info());
                    Device::Gpu(gpu)
                }
                Err(e) => {
                    let why = match e {
                        crate::Error::NoAdapter(why) => why,
                        other => other.to_string(),
                    };
                    eprintln!("wgrad: using the CPU: {why}");
                    Device::Cpu
                }
            }
        })
        .clone()
    }

    /// The kernels of this device.
    pub(crate) fn backend(&self) -> &dyn Backend {
        match self {
            Device::Cpu => &Cpu,
            Device::Gpu(g) => g,
        }
    }

    /// Whether this is the CPU.
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    /// What this device is: the adapter for a GPU, the processor for the CPU.
    pub fn info(&self) -> DeviceInfo {
        match self {
            Device::Cpu => DeviceInfo {
                name: cpu_name(),
                backend: "cpu".into(),
                device_type: format!("{} threads", crate::backend::cpu::threads()),
                driver: "wgrad CPU backend (gemm)".into(),
            },
            Device::Gpu(g) => g.info(),
        }
    }

    /// Finishes all work queued on this device, including fused elementwise
    /// results not yet computed (a no-op on the CPU).
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Gpu(g) => g.synchronize(),
        }
    }
}

/// The processor's model name where the OS says it, else the architecture.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|n| n.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Gpu(g) => write!(f, "{g:?}"),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
