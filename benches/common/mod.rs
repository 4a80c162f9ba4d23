//! Shared by the benchmarks: the devices to compare and a timing helper that
//! waits for the GPU, so a measurement covers the work, not its recording.
#![allow(dead_code)]

use criterion::Bencher;
use wgrad::Device;

/// The CPU, and the GPU when wgpu finds one.
pub fn devices() -> Vec<(&'static str, Device)> {
    let mut out = vec![("cpu", Device::Cpu)];
    match Device::gpu() {
        Ok(g) => out.push(("gpu", g)),
        Err(e) => eprintln!("benchmarking the CPU only: {e}"),
    }
    out
}

/// A second GPU device with elementwise fusion off (one dispatch per op), to
/// show what fusion saves.
pub fn gpu_unfused() -> Option<Device> {
    let options = wgrad::GpuOptions { fusion: false, ..wgrad::GpuOptions::from_env() };
    wgrad::GpuDevice::with_options(options).ok().map(Device::Gpu)
}

/// Times `f` followed by waiting for `dev` to finish.
pub fn iter_synced<T>(b: &mut Bencher, dev: &Device, mut f: impl FnMut() -> T) {
    b.iter(|| {
        let out = f();
        dev.synchronize().expect("the device failed");
        out
    });
}
