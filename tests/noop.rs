//! wgpu's noop adapter (`WGPU_BACKEND=noop`): the whole host path of a
//! training step runs with no device work, to measure the host's cost per
//! dispatch; it is opened only when asked for by name.

mod common;

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

/// The seed's MNIST model (Flatten → Linear 784→128 → ReLU → Dropout 0.2 →
/// Linear 128→10, Adam, batch 32): its training step dispatches at most
/// the kernels the README states (8), counted on the noop adapter, whose
/// host path dispatches exactly what a GPU's would.
#[test]
fn an_mnist_step_dispatches_no_more_kernels_than_the_readme_says() {
    let gpu = noop();
    let dev = Device::Gpu(gpu.clone());
    wgrad::manual_seed(0);
    let model = common::seed_mlp(&dev);
    let mut opt = Adam::new(model.parameters(), 1e-3);
    let x = Tensor::randn([32, 28, 28], &dev);
    let y = Tensor::from_vec((0..32).map(|i| (i % 10) as f32).collect(), [32], &dev).unwrap();
    let mut step = || {
        let loss = model.forward(&x).cross_entropy(&y);
        opt.step(&loss.backward());
        gpu.synchronize().unwrap();
    };
    step();
    let before = gpu.kernels_dispatched();
    gpu.start_profiling();
    step();
    let dispatched = gpu.kernels_dispatched() - before;
    let profile = gpu.stop_profiling().unwrap();
    let kernels: Vec<String> = profile.events.iter().map(|e| format!("{} ({})", e.op, e.kernel)).collect();
    assert_eq!(kernels.len() as u64, dispatched);
    eprintln!("an MNIST training step: {dispatched} dispatches: {}", kernels.join(", "));
    assert!(dispatched <= 8, "an MNIST training step took {dispatched} dispatches; the README says 8");
}

/// A whole `fit` step of the same model, with the running loss and
/// accuracy `fit` keeps on the device: at most 10 dispatches a step, the
/// issue's target. Counted over a second epoch (the first also creates
/// Adam's state): the bare step's 8, the accuracy's one kernel (the
/// argmax, the comparison and the sum were three dispatches a step, and
/// the running total's add a fused one every few steps), the running
/// loss's accumulation every few steps, and the epoch's one readback.
#[test]
fn a_fit_step_with_its_running_metrics_dispatches_at_most_ten_kernels() {
    use wgrad::data::Dataset;
    use wgrad::train::{FitConfig, Metric, fit};
    let gpu = noop();
    let dev = Device::Gpu(gpu.clone());
    wgrad::manual_seed(0);
    let model = common::seed_mlp(&dev);
    let mut opt = Adam::new(model.parameters(), 1e-3);
    let steps = 20;
    let items = 32 * steps;
    let mut g = wgrad::Generator::new(3);
    let x: Vec<f32> = (0..items * 784).map(|_| g.normal()).collect();
    let y: Vec<f32> = (0..items).map(|i| (i % 10) as f32).collect();
    let data = Dataset::new(x, y, &[28, 28], 10);
    let config = FitConfig { epochs: 1, metrics: Some(vec![Metric::Accuracy]), verbose: false, ..FitConfig::default() };
    fit(&model, &mut opt, &data, &config).unwrap();
    let before = gpu.kernels_dispatched();
    gpu.start_profiling();
    fit(&model, &mut opt, &data, &config).unwrap();
    let dispatched = gpu.kernels_dispatched() - before;
    let profile = gpu.stop_profiling().unwrap();
    let mut kernels = std::collections::BTreeMap::new();
    for e in &profile.events {
        *kernels.entry(format!("{} ({})", e.op, e.kernel)).or_insert(0) += 1;
    }
    eprintln!("fit: {dispatched} dispatches in {steps} steps: {kernels:?}");
    assert!(dispatched <= 10 * steps as u64, "fit took {dispatched} dispatches in {steps} steps, over 10 a step");
}
