//! wgpu's noop adapter (`WGPU_BACKEND=noop`): the whole host path of a
//! training step runs with no device work, to measure the host's cost per
//! dispatch; it is opened only when asked for by name.

use wgrad::nn::{self, Module};
use wgrad::optim::{Adam, Optimizer};
use wgrad::{Device, GpuDevice, GpuOptions, Tensor};

fn noop() -> GpuDevice {
    GpuDevice::with_options(GpuOptions { backends: Some("noop".into()), ..GpuOptions::default() })
        .expect("wgpu's noop backend is compiled in")
}

#[test]
fn a_training_step_runs_its_host_path_on_the_noop_adapter() {
    let gpu = noop();
    assert!(gpu.info().to_string().to_lowercase().contains("noop"), "{}", gpu.info());
    let dev = Device::Gpu(gpu.clone());
    wgrad::manual_seed(0);
    let model =
        nn::Sequential::new().add(nn::Linear::new(784, 128, &dev)).add(nn::ReLU).add(nn::Linear::new(128, 10, &dev));
    let mut opt = Adam::new(model.parameters(), 1e-3);
    let x = Tensor::randn([32, 784], &dev);
    let y = Tensor::from_vec((0..32).map(|i| (i % 10) as f32).collect(), [32], &dev).unwrap();
    let before = gpu.kernels_dispatched();
    for _ in 0..3 {
        let loss = model.forward(&x).cross_entropy(&y);
        opt.step(&loss.backward());
        // Reading back maps a buffer: it works, and holds no computed value.
        loss.item().unwrap();
    }
    let per_step = (gpu.kernels_dispatched() - before) / 3;
    assert!((10..=40).contains(&per_step), "{per_step} dispatches a step");
}

#[test]
fn device_best_never_picks_the_noop_adapter() {
    // SAFETY: no other thread of this test binary reads the environment
    // while this one writes it (the other test opens its device by options).
    unsafe { std::env::set_var("WGPU_BACKEND", "noop") };
    assert!(Device::best().is_cpu(), "Device::best() took the noop adapter, which computes nothing");
}
