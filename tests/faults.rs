//! GPU faults become errors, the process keeps running, and the CPU (and
//! other devices) keep working: no adapter, a tensor over the binding
//! limit, a lost device.
//!
//! An out-of-memory allocation is handled the same way (the pool is emptied
//! and the allocation retried once, then the tensor is poisoned with
//! `Error::OutOfMemory`), but it cannot be provoked on lavapipe short of
//! exhausting the host's memory: lavapipe reports a 2 GiB heap but does not
//! enforce it (5 GB of live buffers allocated fine here), and it lacks the
//! memory-budget extension wgpu would need to refuse earlier.

mod common;

use wgrad::{Device, Error, GpuDevice, GpuOptions, Tensor};

#[test]
fn no_matching_adapter_is_an_error_saying_what_to_do() {
    let options = GpuOptions { adapter: Some("no-such-adapter-anywhere".into()), ..GpuOptions::default() };
    let err = GpuDevice::with_options(options).unwrap_err();
    assert!(matches!(err, Error::NoAdapter(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("no-such-adapter-anywhere") || msg.contains("no adapter"), "{msg}");
    assert!(msg.contains("mesa-vulkan-drivers"), "{msg}");
    // The CPU is unaffected.
    assert_eq!(Tensor::ones([3], &Device::Cpu).sum().item().unwrap(), 3.0);
}

#[test]
fn a_tensor_over_the_binding_limit_is_an_error_not_a_crash() {
    let Some(dev) = common::gpu() else { return };
    let Device::Gpu(gpu) = &dev else { unreachable!() };
    let too_many = (gpu.max_tensor_bytes() / 4 + 1) as usize;
    let big = Tensor::zeros([too_many], &dev);
    // Everything computed from it carries the error to the host.
    let derived = (&big * 2.0).sum();
    for t in [&big, &derived] {
        let err = t.to_vec().unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("exceeds this adapter's largest storage binding"), "{err}");
    }
    // The device itself is fine.
    let small = Tensor::from_vec(vec![1.0, 2.0], [2], &dev).unwrap();
    assert_eq!(small.sum().item().unwrap(), 3.0);
}

#[test]
fn a_lost_device_poisons_its_tensors_and_nothing_else() {
    if common::gpu().is_none() {
        return;
    }
    let lost = GpuDevice::new().unwrap();
    let dev = Device::Gpu(lost.clone());
    let x = Tensor::from_vec(vec![1.0, 2.0, 3.0], [3], &dev).unwrap();
    let w = Tensor::ones([3], &dev).requires_grad();
    assert_eq!((&x * &w).sum().item().unwrap(), 6.0);

    lost.simulate_device_loss();
    let err = x.to_vec().unwrap_err();
    assert!(matches!(err, Error::DeviceLost(_)), "{err:?}");
    assert!(err.to_string().contains("create a new device"), "{err}");
    // New work on the lost device fails the same way, including a training step.
    let loss = (&x * &w).sum();
    assert!(matches!(loss.item().unwrap_err(), Error::DeviceLost(_)));
    let grads = loss.backward();
    let mut opt = wgrad::optim::Sgd::new(vec![w.clone()], 0.1);
    wgrad::optim::Optimizer::step(&mut opt, &grads);
    assert!(matches!(w.to_vec().unwrap_err(), Error::DeviceLost(_)));
    assert!(matches!(Tensor::ones([2], &dev).to_vec().unwrap_err(), Error::DeviceLost(_)));
    assert!(matches!(dev.synchronize().unwrap_err(), Error::DeviceLost(_)));

    // The CPU and the shared GPU device carry on.
    assert_eq!(Tensor::ones([3], &Device::Cpu).sum().item().unwrap(), 3.0);
    let shared = Device::gpu().unwrap();
    assert_eq!(Tensor::ones([3], &shared).sum().item().unwrap(), 3.0);
}

#[test]
fn best_takes_a_software_adapter_only_when_asked() {
    let Some(dev) = common::gpu() else { return };
    let Device::Gpu(gpu) = &dev else { unreachable!() };
    if gpu.info().device_type != "Cpu" {
        // A hardware GPU: best() is it.
        assert_eq!(Device::best(), dev);
        return;
    }
    // Only a software rasterizer (lavapipe here): slower than the CPU
    // backend, so best() is the CPU, and a hardware-only open says why.
    assert!(Device::best().is_cpu());
    let options = GpuOptions { software: false, ..GpuOptions::from_env() };
    let err = GpuDevice::with_options(options).unwrap_err().to_string();
    assert!(err.contains("software rasterizer") && err.contains(&gpu.info().name), "{err}");
    // Asked for by name or explicitly, it is used.
    let named = GpuOptions { adapter: Some(gpu.info().name), ..GpuOptions::from_env() };
    assert_eq!(GpuDevice::with_options(named).unwrap().info(), gpu.info());
}
