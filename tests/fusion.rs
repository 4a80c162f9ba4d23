//! Elementwise fusion on the GPU: fused chains compute what the CPU
//! reference and the unfused GPU compute, dispatch once per chain, never run
//! what nobody reads, survive shared subexpressions, and never let an
//! in-place write (assign, an optimizer step) leak into a result computed
//! before it; synchronize finishes what is pending.

mod common;

use common::{assert_close, rand};
use wgrad::optim::{Optimizer, Sgd};
use wgrad::{Device, Error, GpuDevice, GpuOptions, Tensor};

/// A private GPU device (dispatch counts are per device, and the shared one
/// is busy with other tests), with fusion on or off, and matmul epilogues
/// on (as on a hardware GPU).
fn device(fusion: bool) -> Option<(GpuDevice, Device)> {
    common::gpu()?;
    let gpu = GpuDevice::with_options(GpuOptions { fusion, epilogues: Some(true), ..GpuOptions::from_env() })
        .expect("the adapter opened once");
    Some((gpu.clone(), Device::Gpu(gpu)))
}

/// A long chain mixing unary ops, scalar ops and binary ops with a second
/// input and with earlier intermediates (so expressions share nodes and
/// leaves); values stay O(1) so every op is well conditioned.
fn chain(x: &Tensor, w: &Tensor, steps: usize) -> Tensor {
    let mut y = x.clone();
    let mut earlier = x.clone();
    for i in 0..steps {
        y = match i % 9 {
            0 => y.tanh() * 1.5,
            1 => &y + w,
            2 => y.sigmoid() - 0.25,
            3 => &y * &earlier,
            4 => (y.sqr() + 1.0).sqrt().log(),
            5 => y.maximum(&(w * -0.5)),
            6 => y.gelu() + &earlier,
            7 => {
                earlier = y.clone();
                y.exp().powf(0.5) - 1.0
            }
            _ => &(&y - w) / &(w.abs() + 2.0),
        };
    }
    y
}

#[test]
fn long_chains_match_the_cpu_and_the_unfused_gpu() {
    let Some((_, fused)) = device(true) else { return };
    let (_, unfused) = device(false).expect("a GPU was found above");
    for (n, steps) in [(1, 30), (5, 100), (1027, 200)] {
        let x = rand(&[n], -2.0, 2.0, 1);
        let w = rand(&[n], -1.0, 1.0, 2);
        let on = |d: &Device| chain(&x.to_device(d).unwrap(), &w.to_device(d).unwrap(), steps).to_vec().unwrap();
        let cpu = on(&Device::Cpu);
        let what = format!("{steps}-op chain over {n} elements");
        assert_close(&on(&fused), &cpu, 1e-5, 1e-4, &format!("fused {what}"));
        assert_close(&on(&fused), &on(&unfused), 1e-6, 1e-5, &format!("fused vs unfused {what}"));
    }
}

#[test]
fn gradients_through_fused_chains_match_the_cpu() {
    let Some((_, gpu)) = device(true) else { return };
    let x = rand(&[67], -2.0, 2.0, 3);
    let w = rand(&[67], -1.0, 1.0, 4);
    let grads = |d: &Device| {
        let (x, w) = (x.to_device(d).unwrap().requires_grad(), w.to_device(d).unwrap().requires_grad());
        let mut g = chain(&x, &w, 40).sum().backward();
        (g.remove(&x).unwrap().to_vec().unwrap(), g.remove(&w).unwrap().to_vec().unwrap())
    };
    let (cx, cw) = grads(&Device::Cpu);
    let (gx, gw) = grads(&gpu);
    assert_close(&gx, &cx, 1e-4, 1e-3, "d/dx");
    assert_close(&gw, &cw, 1e-4, 1e-3, "d/dw");
}

#[test]
fn a_chain_dispatches_once_per_kernel_not_once_per_op() {
    let Some((fused_dev, fused)) = device(true) else { return };
    let (unfused_dev, unfused) = device(false).expect("a GPU was found above");
    for (gpu, dev, fusion) in [(&fused_dev, &fused, true), (&unfused_dev, &unfused, false)] {
        let x = Tensor::ones([1000], dev);
        gpu.synchronize().unwrap();
        let before = gpu.kernels_dispatched();
        let mut y = x.clone();
        for _ in 0..100 {
            y = &y * 1.0001;
        }
        let got = y.to_vec().unwrap();
        let dispatched = gpu.kernels_dispatched() - before;
        if fusion {
            // Kernels of up to 24 ops: 5, whatever the exact split.
            assert!((1..=8).contains(&dispatched), "fused: {dispatched} kernels for 100 ops");
        } else {
            assert_eq!(dispatched, 100, "unfused: one kernel per op");
        }
        let expected = 1.0001f32.powi(100);
        assert!(got.iter().all(|&v| (v - expected).abs() < 1e-4), "fusion {fusion}: {} vs {expected}", got[0]);
    }
}

#[test]
fn results_nobody_reads_never_run() {
    let Some((gpu, dev)) = device(true) else { return };
    let x = rand(&[4096], -1.0, 1.0, 5).to_device(&dev).unwrap();
    gpu.synchronize().unwrap();
    let before = gpu.kernels_dispatched();
    for _ in 0..10 {
        let _unused = (x.exp() + 1.0).log();
    }
    gpu.synchronize().unwrap();
    assert_eq!(gpu.kernels_dispatched(), before, "dropped pending results dispatched kernels");
}

#[test]
fn synchronize_runs_pending_results_once() {
    let Some((gpu, dev)) = device(true) else { return };
    let x = rand(&[300], -1.0, 1.0, 9).to_device(&dev).unwrap();
    gpu.synchronize().unwrap();
    let before = gpu.kernels_dispatched();
    // Alive and pending: synchronize must finish it, as it finishes all
    // queued work (a benchmark timing up to synchronize relies on it).
    let y = (x.exp() + 1.0).log();
    gpu.synchronize().unwrap();
    assert_eq!(gpu.kernels_dispatched(), before + 1, "synchronize ran the pending chain as one kernel");
    let expected: Vec<f32> = x.to_vec().unwrap().iter().map(|v| (v.exp() + 1.0).ln()).collect();
    assert_close(&y.to_vec().unwrap(), &expected, 1e-6, 1e-5, "softplus");
    assert_eq!(gpu.kernels_dispatched(), before + 1, "reading it back did not compute it again");
}

#[test]
fn shared_subexpressions_stay_linear() {
    let Some((gpu, dev)) = device(true) else { return };
    // Without merging equal nodes each step would double the expression:
    // 2^1000 nodes. Each step is exact in f32, so the result is x itself.
    let x = rand(&[33], -1.0, 1.0, 6);
    let mut y = x.to_device(&dev).unwrap();
    for _ in 0..1000 {
        y = (&y + &y) * 0.5;
    }
    assert_eq!(y.to_vec().unwrap(), x.to_vec().unwrap());
    // Two different functions of one value, recombined: a diamond per step.
    let mut y = x.to_device(&dev).unwrap();
    let mut c = x.clone();
    for _ in 0..60 {
        y = &y.tanh() * 0.5 + &y.sigmoid() * 0.5;
        c = &c.tanh() * 0.5 + &c.sigmoid() * 0.5;
    }
    let before = gpu.kernels_dispatched();
    assert_close(&y.to_vec().unwrap(), &c.to_vec().unwrap(), 1e-5, 1e-5, "diamonds");
    assert!(gpu.kernels_dispatched() > before, "reading a pending result ran it");
}

#[test]
fn in_place_writes_do_not_reach_results_computed_before_them() {
    let Some((_, dev)) = device(true) else { return };
    let start = rand(&[130], -1.0, 1.0, 7);
    let old = start.to_vec().unwrap();
    let doubled: Vec<f32> = old.iter().map(|v| v * 2.0).collect();

    // assign: `y` is pending and reads `w` when `w` is overwritten.
    let w = start.to_device(&dev).unwrap();
    let y = &w * 2.0;
    w.assign(&Tensor::zeros([130], &dev));
    assert_eq!(y.to_vec().unwrap(), doubled, "a result computed before assign saw the new value");
    assert_eq!(w.to_vec().unwrap(), vec![0.0; 130]);

    // assign from an expression of the destination itself.
    let w = start.to_device(&dev).unwrap();
    w.assign(&(&w * 2.0));
    assert_eq!(w.to_vec().unwrap(), doubled);

    // An optimizer step writes parameters in place.
    let p = start.to_device(&dev).unwrap().requires_grad();
    let snapshot = (&p * 2.0).detach();
    let grads = p.sum().backward();
    let mut opt = Sgd::new(vec![p.clone()], 0.5);
    opt.step(&grads);
    assert_eq!(snapshot.to_vec().unwrap(), doubled, "a result computed before the step saw the update");
    let stepped: Vec<f32> = old.iter().map(|v| v - 0.5).collect();
    assert_close(&p.to_vec().unwrap(), &stepped, 1e-6, 1e-6, "the step itself");
}

/// Layer normalisation written out by hand: every op after the two
/// reductions broadcasts a row or a column.
fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Tensor {
    let mean = x.mean_dim(1, true);
    let centred = x - &mean;
    let std = (centred.sqr().mean_dim(1, true) + 1e-5).sqrt();
    (&(&centred / &std) * gamma + beta).relu()
}

#[test]
fn broadcasting_ops_fuse_and_match_the_cpu() {
    let Some((gpu, dev)) = device(true) else { return };
    let (_, unfused) = device(false).expect("a GPU was found above");
    for (rows, cols) in [(1, 1), (3, 5), (32, 128), (7, 257)] {
        let x = rand(&[rows, cols], -2.0, 2.0, 10);
        let gamma = rand(&[cols], 0.5, 1.5, 11);
        let beta = rand(&[cols], -0.5, 0.5, 12);
        let on = |d: &Device| {
            let to = |t: &Tensor| t.to_device(d).unwrap();
            layer_norm(&to(&x), &to(&gamma), &to(&beta)).to_vec().unwrap()
        };
        let cpu = on(&Device::Cpu);
        let what = format!("layer norm {rows}x{cols}");
        assert_close(&on(&dev), &cpu, 1e-5, 1e-4, &what);
        assert_close(&on(&dev), &on(&unfused), 1e-6, 1e-5, &format!("fused vs unfused {what}"));
    }

    // Given the row statistics, the rest is one kernel: five inputs, two of
    // them broadcast along rows and two along columns.
    let to = |t: Tensor| t.to_device(&dev).unwrap();
    let x = to(rand(&[32, 128], -2.0, 2.0, 13));
    let (gamma, beta) = (to(rand(&[128], 0.5, 1.5, 14)), to(rand(&[128], -0.5, 0.5, 15)));
    let mean = x.mean_dim(1, true);
    let std = (&x - &mean).sqr().mean_dim(1, true).sqrt();
    gpu.synchronize().unwrap();
    let before = gpu.kernels_dispatched();
    let y = (&(&(&x - &mean) / &std) * &gamma + &beta).relu();
    gpu.synchronize().unwrap();
    assert_eq!(gpu.kernels_dispatched() - before, 1, "normalise, scale, shift and relu in one kernel");
    drop(y);

    // A linear layer's bias and activation: the matmul's epilogue, one kernel.
    let w = to(rand(&[64, 128], -0.1, 0.1, 16));
    let b = to(rand(&[64], -0.1, 0.1, 17));
    gpu.synchronize().unwrap();
    let before = gpu.kernels_dispatched();
    let h = x.linear(&w, Some(&b)).relu();
    gpu.synchronize().unwrap();
    assert_eq!(gpu.kernels_dispatched() - before, 1, "matmul with bias + relu as its epilogue");
    let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
    let reference = cpu(&x).linear(&cpu(&w), Some(&cpu(&b))).relu();
    assert_close(&h.to_vec().unwrap(), &reference.to_vec().unwrap(), 1e-5, 1e-4, "linear + relu");
}

#[test]
fn expressions_over_different_shapes_still_combine_correctly() {
    let Some((_, dev)) = device(true) else { return };
    // `a` is pending over [4, 6] with a broadcast input; reshaped to
    // [6, 4] and combined with a broadcast over that shape, its index space
    // differs, so it is computed first instead of inlined.
    let x = rand(&[4, 6], -1.0, 1.0, 18);
    let r = rand(&[6], -1.0, 1.0, 19);
    let c = rand(&[4], -1.0, 1.0, 20);
    let on = |d: &Device| {
        let to = |t: &Tensor| t.to_device(d).unwrap();
        let a = (&to(&x) * &to(&r)).exp();
        (a.reshape([6, 4]) + &to(&c)).to_vec().unwrap()
    };
    assert_close(&on(&dev), &on(&Device::Cpu), 1e-6, 1e-5, "reshaped broadcast chain");
}

#[test]
fn a_narrowed_pending_result_matches_the_cpu() {
    // narrow is a copy kernel: it binds the pending result, which runs first.
    let Some((_, dev)) = device(true) else { return };
    let x = rand(&[4, 3], -1.0, 1.0, 8);
    let on = |d: &Device| {
        let y = x.to_device(d).unwrap().exp() * 3.0;
        (y.narrow(0, 0, 2) + Tensor::ones([2, 3], d)).to_vec().unwrap()
    };
    assert_close(&on(&dev), &on(&Device::Cpu), 1e-6, 1e-5, "narrowed pending result");
}

#[test]
fn a_pending_result_on_a_lost_device_reads_as_an_error() {
    let Some((gpu, dev)) = device(true) else { return };
    let x = Tensor::ones([64], &dev);
    let y = (x.exp() + 1.0).log();
    gpu.simulate_device_loss();
    match y.to_vec() {
        Err(Error::DeviceLost(_)) => {}
        other => panic!("expected DeviceLost, got {other:?}"),
    }
}
