//! burn on three of `examples/cpu_vs_gpu.rs`'s workloads — its wgpu backend
//! on the same adapter as wgrad's GPU, its ndarray backend on the CPU —
//! measured the same way (one cold run, one warm-up, the median of 7), printed as the
//! tab-separated records `benches/peers.py --format tsv` prints:
//! library, workload, size, seconds, cold seconds, GFLOP/s or `-`.
//!
//!     cargo run --release --manifest-path benches/burn_peer/Cargo.toml
//!
//! Run it right after `cargo run --release --example cpu_vs_gpu -- --only
//! matmul,elementwise_chain,conv2d`: the machine is too noisy to compare runs far
//! apart. Every timing ends with the result read back to the host.

use burn::prelude::{Device, Tensor};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DeviceKind, Distribution};
use std::time::Instant;

/// (cold, median) seconds of `f`.
fn measure(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    let t = Instant::now();
    f();
    let cold = t.elapsed().as_secs_f64();
    f();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (cold, times[times.len() / 2])
}

fn main() {
    peer("burn-wgpu", Device::wgpu(DeviceKind::DefaultDevice), true);
    // The CPU backend the peer table names; burn 0.22 deprecates it
    // in favour of `flex`.
    #[allow(deprecated)]
    peer("burn-ndarray", Device::ndarray(), false);
}

/// The records of `library` on `device`; `synced` adds the chain with a
/// sync after every op (a GPU backend's per-dispatch cost).
fn peer(library: &str, device: Device, synced: bool) {
    let n = 1024;
    let a = Tensor::<2>::random([n, n], Distribution::Default, &device);
    let b = Tensor::<2>::random([n, n], Distribution::Default, &device);
    let (cold, secs) = measure(7, || {
        let c = a.clone().matmul(b.clone()).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(c.len(), n * n);
        std::hint::black_box(c);
    });
    let gflops = 2.0 * (n * n * n) as f64 / secs / 1e9;
    println!("{library}\tmatmul\t1024\t{secs}\t{cold}\t{gflops}");

    // cpu_vs_gpu's conv2d: a ResNet-style 3x3 convolution, forward and
    // both gradients (input and weight), read back. burn's backward takes
    // a scalar, so the output gradient `g` enters as sum(y * g), whose
    // gradient with respect to y is g: one fused elementwise product and a
    // sum more than wgrad's `backward_with(g)` (0.05 of the 4.6 GFLOP).
    {
        let ad = device.clone().autodiff();
        let x = Tensor::<4>::random([32, 64, 28, 28], Distribution::Default, &ad).require_grad();
        let w = Tensor::<4>::random([64, 64, 3, 3], Distribution::Default, &ad).require_grad();
        let g = Tensor::<4>::random([32, 64, 28, 28], Distribution::Default, &ad);
        let (cold, secs) = measure(7, || {
            let y = conv2d(x.clone(), w.clone(), None, ConvOptions::new([1, 1], [1, 1], [1, 1], 1));
            let grads = (y * g.clone()).sum().backward();
            let gx = x.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
            let gw = w.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
            assert_eq!((gx.len(), gw.len()), (32 * 64 * 28 * 28, 64 * 64 * 9));
            std::hint::black_box((gx, gw));
        });
        let gflops = 3.0 * 2.0 * (32 * 64 * 28 * 28 * 64 * 9) as f64 / secs / 1e9;
        println!("{library}\tconv2d\t32x64x28x28, 64 3x3 pad 1, fwd+bwd\t{secs}\t{cold}\t{gflops}");
    }

    // burn fuses elementwise chains into few kernels on the GPU, as wgrad
    // does; the synced record forces a dispatch per op (wgrad's
    // `WGRAD_FUSION=0`).
    let x = Tensor::<1>::ones([1024], &device);
    let want = 1.0001f32.powi(1000);
    let variants: &[(&str, bool)] = if synced {
        &[("elementwise_chain", false), ("elementwise_chain_synced", true)]
    } else {
        &[("elementwise_chain", false)]
    };
    for &(workload, sync_each) in variants {
        let (cold, secs) = measure(if sync_each { 3 } else { 7 }, || {
            let mut y = x.clone();
            for _ in 0..1000 {
                y = y * 1.0001;
                if sync_each {
                    device.sync().unwrap();
                }
            }
            let v = y.into_data().try_to_vec::<f32>().unwrap();
            assert!((v[0] - want).abs() < 1e-3, "{} != {want}", v[0]);
        });
        println!("{library}\t{workload}\t1000 ops x 1024\t{secs}\t{cold}\t-");
    }
}
