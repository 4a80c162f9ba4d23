//! The matmul and convolution autotuner (src/backend/gpu/autotune.rs):
//! every candidate kernel computes the right product, a new shape class is
//! tuned once and then served from the cache, and the decision reaches the
//! disk cache.

mod common;

use wgrad::{Conv2dOptions, Device, Tensor};

/// `op(a) · op(b)` on the CPU and on `gpu`, compared.
fn check(gpu: &Device, dims: (usize, usize, usize, usize), ta: bool, tb: bool, what: &str) {
    let (batch, m, k, n) = dims;
    let a_dims = if ta { [batch, k, m] } else { [batch, m, k] };
    let b_dims = if tb { [batch, n, k] } else { [batch, k, n] };
    let a = common::rand(&a_dims, -1.0, 1.0, (m * 31 + k) as u64);
    let b = common::rand(&b_dims, -1.0, 1.0, (n * 17 + k) as u64);
    let prod = |x: &Tensor, y: &Tensor| {
        let x = if ta { x.transpose(1, 2) } else { x.clone() };
        let y = if tb { y.transpose(1, 2) } else { y.clone() };
        x.matmul(&y)
    };
    let want = prod(&a, &b).to_vec().unwrap();
    let got = prod(&a.to_device(gpu).unwrap(), &b.to_device(gpu).unwrap()).to_vec().unwrap();
    common::assert_close(&got, &want, 1e-4 * k as f32, 1e-4, &format!("{what}: {dims:?} ta {ta} tb {tb}"));
}

/// A convolution (forward, no gradient) on the CPU and on `gpu`, compared.
fn check_conv(gpu: &Device, (n, c_in, hw, c_out): (usize, usize, usize, usize), opts: Conv2dOptions, what: &str) {
    let x = common::rand(&[n, c_in, hw, hw], -1.0, 1.0, (c_in * 7 + hw) as u64);
    let w = common::rand(&[c_out, c_in / opts.groups, 3, 3], -1.0, 1.0, (c_out * 5 + 1) as u64);
    let want = x.conv2d(&w, None, opts).to_vec().unwrap();
    let got = x.to_device(gpu).unwrap().conv2d(&w.to_device(gpu).unwrap(), None, opts).to_vec().unwrap();
    common::assert_close(&got, &want, 1e-4 * (9 * c_in) as f32, 1e-4, &format!("{what}: conv {n}x{c_in}x{hw}→{c_out}"));
}

/// One test: it sets the environment before any device opens.
#[test]
fn candidates_are_correct_and_tuning_is_cached() {
    let dir = std::env::temp_dir().join(format!("wgrad-autotune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = dir.join("autotune.txt");
    // SAFETY: the only test of this binary, before any device (or thread of
    // ours) reads the environment. Tuning is on for software adapters too
    // (lavapipe), unless the environment turned it off.
    unsafe {
        std::env::set_var("WGRAD_AUTOTUNE_CACHE", &cache);
        if std::env::var_os("WGRAD_AUTOTUNE").is_none() {
            std::env::set_var("WGRAD_AUTOTUNE", "1");
        }
    }
    let Some(gpu) = common::gpu() else { return };
    let Device::Gpu(g) = &gpu else { unreachable!() };
    let tuning_off = std::env::var("WGRAD_AUTOTUNE").is_ok_and(|v| v.trim() == "0")
        || std::env::var_os("WGRAD_PROFILE").is_some_and(|p| !p.is_empty());
    let kernels = g.matmul_kernels();
    assert!(kernels.len() >= 3, "{kernels:?}");
    // Every candidate, at sizes off every tile edge, transposed and batched.
    for kernel in &kernels {
        g.force_matmul_kernel(Some(kernel));
        for (dims, ta, tb) in [
            ((1, 37, 29, 41), false, false),
            ((1, 64, 64, 64), true, false),
            ((3, 33, 70, 17), false, true),
            ((2, 5, 130, 9), true, true),
            ((1, 1, 1, 1), false, false),
        ] {
            check(&gpu, dims, ta, tb, kernel);
        }
        // Convolutions run the same kernel choices (their forward product;
        // its gradients are the same bodies with other loaders).
        check_conv(&gpu, (2, 6, 11, 10), Conv2dOptions::default().padding(1).stride(2).groups(2), kernel);
    }
    g.force_matmul_kernel(None);
    if tuning_off {
        eprintln!("autotuning is off in this environment (WGRAD_AUTOTUNE=0 or WGRAD_PROFILE): the rest is skipped");
        return;
    }
    // A new class above the threshold: tuned at its first product.
    let before = g.kernels_dispatched();
    check(&gpu, (1, 512, 256, 512), false, false, "tuned");
    let tuning = g.kernels_dispatched() - before;
    assert!(tuning > kernels.len() as u64, "the first 512×256×512 product dispatched {tuning} kernels: no tuning ran");
    let decided = g.matmul_autotuned();
    let (_, kernel) = decided.iter().find(|(class, _)| class == "512x512x256").expect("a decision for the class");
    assert!(kernels.contains(kernel), "{kernel} is not a candidate");
    // The same class again (other sizes, same powers of two): no tuning.
    let before = g.kernels_dispatched();
    check(&gpu, (1, 400, 200, 500), false, false, "cached");
    assert_eq!(g.kernels_dispatched() - before, 1, "a cached class dispatched more than its product");
    // And on disk, for the next run.
    let text = std::fs::read_to_string(&cache).expect("the disk cache was written");
    assert!(text.lines().any(|l| l.contains("\t512x512x256\t") && l.ends_with(kernel.as_str())), "{text}");
    // A convolution class above the threshold is tuned at its first
    // forward product, then served from the cache.
    let opts = Conv2dOptions::default().padding(1);
    let before = g.kernels_dispatched();
    check_conv(&gpu, (8, 16, 32, 32), opts, "conv tuned");
    assert!(g.kernels_dispatched() - before > kernels.len() as u64, "the first convolution was not tuned");
    let decided = g.matmul_autotuned();
    let (_, conv_kernel) =
        decided.iter().find(|(class, _)| class.starts_with("conv Forward")).expect("a conv decision");
    assert!(kernels.contains(conv_kernel), "{conv_kernel} is not a candidate");
    let before = g.kernels_dispatched();
    check_conv(&gpu, (7, 16, 30, 32), opts, "conv cached");
    assert_eq!(g.kernels_dispatched() - before, 1, "a cached convolution class dispatched more than its product");
    // A kernel the adapter does not offer is refused by name.
    let msg = common::panic_message_of(|| g.force_matmul_kernel(Some("tiled 3 3 3")));
    assert!(msg.contains("tiled 3 3 3") && msg.contains("is not one of"), "{msg}");
    let _ = std::fs::remove_dir_all(dir);
}
