//! wgrad: a tensor engine with reverse-mode autodiff whose GPU kernels are
//! WGSL compute shaders dispatched through `wgpu` (Vulkan, Metal, DX12), with
//! a CPU backend that computes every op too and is the reference every GPU
//! kernel and gradient is tested against.
//!
//! ```
//! use wgrad::{Device, Tensor};
//!
//! let dev = Device::Cpu;
//! wgrad::manual_seed(0);
//! let w = Tensor::randn([3, 2], &dev).requires_grad(); // a variable
//! let x = Tensor::from_vec(vec![1.0, 2.0, 3.0], [1, 3], &dev).unwrap();
//! let loss = x.matmul(&w).relu().sum();
//! let grads = loss.backward();
//! let dw = grads.get(&w).unwrap();
//! assert_eq!(dw.dims(), &[3, 2]);
//! ```
//!
//! - [`Tensor`] is a cheap-to-clone handle; ops take `&Tensor` and return new
//!   tensors. Shape mismatches panic naming the op and both shapes; anything
//!   that depends on the outside world returns [`Result`].
//! - Gradients are recorded only for variables ([`Tensor::requires_grad`])
//!   and what is computed from them, and never inside [`no_grad`].
//! - [`gradcheck`] compares autograd against finite differences.
//! - On a GPU, ops return before their work is done: kernels are queued
//!   and run asynchronously, and chains of elementwise ops are fused into one
//!   generated kernel that runs when its result is needed. Reading a tensor
//!   ([`Tensor::to_vec`], [`Tensor::item`]) or [`Device::synchronize`] waits
//!   for everything it depends on; time GPU work up to one of them.

#![warn(missing_docs)]

mod autograd;
mod backend;
pub mod capture;
pub mod data;
mod device;
#[cfg(feature = "mpi")]
pub mod distributed;
#[doc = include_str!("../docs/guide.md")]
pub mod guide {}
mod error;
mod gradcheck;
pub mod io;
pub mod models;
pub mod nn;
pub(crate) mod ops;
pub mod optim;
mod print;
pub mod rng;
mod shape;
mod tensor;
pub mod train;

pub use autograd::{CustomOp, Gradients, detect_anomaly, is_grad_enabled, live_nodes, no_grad};
pub use backend::gpu::{
    CompiledKernel, DeviceInfo, GpuDevice, GpuOptions, KernelAverage, KernelEvent, MemoryStats, Profile,
};
pub use capture::{CaptureStats, CapturedStep};
pub use device::Device;
pub use error::{Error, Result};
pub use gradcheck::{GradcheckError, GradcheckOptions, gradcheck, gradcheck_with};
pub use ops::{
    Conv2dOptions, CrossEntropyOptions, Padding, Sampling, Size2, multinomial, sample, sampling_probs,
    scaled_dot_product_attention,
};
pub use rng::{Generator, manual_seed};
pub use shape::{Dim, Shape};
pub use tensor::{Tensor, TensorData, live_tensors};

/// Frees the large CPU buffers wgrad keeps for reuse after their tensors
/// are dropped (up to `WGRAD_CPU_CACHE_MB`, default 1024, of them; see
/// `src/backend/cpu/cache.rs`), as `GpuDevice::empty_cache` does for GPU
/// memory.
pub fn empty_cpu_cache() {
    backend::cpu::clear_cache();
}

/// The bytes of freed CPU buffers wgrad holds for reuse.
pub fn cpu_cache_bytes() -> usize {
    backend::cpu::cached_bytes()
}
