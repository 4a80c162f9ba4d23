//! The host's cost of GPU work, measured on wgpu's noop adapter (the whole
//! host path — wgrad, wgpu's validation and tracking, command encoding —
//! with no device work): µs per dispatch of a chain of unfused elementwise
//! ops, and µs of host time per MNIST training step (batch 32), with and
//! without fusion. On a real GPU a small model's step costs at least this.
//! The dispatches per step are printed once. The same step captured and
//! replayed (`CapturedStep`) is the last row.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use wgrad::nn::{self, Module};
use wgrad::optim::{Adam, Optimizer};
use wgrad::{CapturedStep, Device, GpuDevice, GpuOptions, Tensor};

fn noop(fusion: bool) -> GpuDevice {
    GpuDevice::with_options(GpuOptions { backends: Some("noop".into()), fusion, ..GpuOptions::default() })
        .expect("wgpu's noop backend")
}

fn host_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("host_cost");
    group.sample_size(20);
    for fusion in [false, true] {
        let gpu = noop(fusion);
        let dev = Device::Gpu(gpu.clone());
        let label = if fusion { "fused" } else { "unfused" };
        let x = Tensor::ones([1024], &dev);
        group.bench_function(BenchmarkId::new("chain of 100 ops", label), |b| {
            b.iter(|| {
                let mut y = x.clone();
                for _ in 0..100 {
                    y = &y * 1.0001;
                }
                gpu.synchronize().unwrap();
                y
            })
        });
        wgrad::manual_seed(0);
        let model = nn::Sequential::new()
            .add(nn::Linear::new(784, 128, &dev))
            .add(nn::ReLU)
            .add(nn::Linear::new(128, 10, &dev));
        let mut opt = Adam::new(model.parameters(), 1e-3);
        let xb = Tensor::randn([32, 784], &dev);
        let yb = Tensor::from_vec((0..32).map(|i| (i % 10) as f32).collect(), [32], &dev).unwrap();
        let mut step = || {
            let loss = model.forward(&xb).cross_entropy(&yb);
            opt.step(&loss.backward());
            gpu.synchronize().unwrap();
        };
        step();
        let before = gpu.kernels_dispatched();
        step();
        eprintln!("MNIST step ({label}): {} dispatches", gpu.kernels_dispatched() - before);
        group.bench_function(BenchmarkId::new("MNIST training step, batch 32", label), |b| b.iter(&mut step));

        // The same step captured once and replayed (`CapturedStep`).
        let opt = std::cell::RefCell::new(opt);
        let mut f = |xy: &[Tensor]| {
            let loss = model.forward(&xy[0]).cross_entropy(&xy[1]);
            opt.borrow_mut().step(&loss.backward());
            vec![loss]
        };
        let mut captured = CapturedStep::new(&mut f);
        let inputs = [xb.clone(), yb.clone()];
        let mut replay = || {
            captured.run(&inputs).unwrap();
            gpu.synchronize().unwrap();
        };
        replay();
        replay();
        let before = gpu.kernels_dispatched();
        replay();
        eprintln!("MNIST step ({label}), replayed: {} dispatches", gpu.kernels_dispatched() - before);
        group.bench_function(BenchmarkId::new("MNIST training step, batch 32, captured", label), |b| {
            b.iter(&mut replay)
        });
    }
    group.finish();
}

criterion_group!(benches, host_cost);
criterion_main!(benches);
