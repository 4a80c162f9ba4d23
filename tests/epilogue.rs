//! Matmul epilogues on the GPU: elementwise work on a product (bias,
//! activation, dropout, a residual, a scale; the backward's masks) runs in
//! the product kernel itself, on both product kernels (subgroup and
//! workgroup-tiled), at every tile edge; a product several expressions use
//! is computed once; in-place writes to an operand never reach a pending
//! product; and a linear layer's weight and bias gradients come from one
//! kernel — each checked against the CPU.

mod common;

use common::{assert_close, rand};
use wgrad::{Device, GpuDevice, GpuOptions, Tensor};

/// Private GPU devices (dispatch counts are per device) with epilogues on
/// (whatever `WGRAD_EPILOGUES` says, as CI's OpenGL pass turns them off):
/// the adapter's product kernel, and the workgroup-tiled one.
fn devices() -> Vec<(GpuDevice, Device)> {
    if common::gpu().is_none() {
        return Vec::new();
    }
    [true, false]
        .into_iter()
        .map(|subgroups| {
            let gpu =
                GpuDevice::with_options(GpuOptions { subgroups, epilogues: Some(true), ..GpuOptions::from_env() })
                    .expect("the adapter opened once");
            (gpu.clone(), Device::Gpu(gpu))
        })
        .collect()
}

fn cpu(t: &Tensor) -> Tensor {
    t.to_device(&Device::Cpu).unwrap()
}

/// Dispatches `f` makes on `gpu` once its inputs are computed.
fn dispatches<R>(gpu: &GpuDevice, f: impl FnOnce() -> R) -> (R, u64) {
    gpu.synchronize().unwrap();
    let before = gpu.kernels_dispatched();
    let r = f();
    gpu.synchronize().unwrap();
    (r, gpu.kernels_dispatched() - before)
}

#[test]
fn epilogues_match_the_cpu_at_every_tile_edge_in_one_dispatch() {
    // Rows around the 16-row subgroup tile and the tiled kernel's 32;
    // columns around the 8 an invocation owns and the 4 of a vec4 store;
    // K around the step of 4 (and a K tail); batches.
    let shapes: &[(usize, usize, usize, usize)] = &[
        (1, 1, 1, 1),
        (1, 15, 7, 3),
        (1, 16, 8, 4),
        (1, 17, 9, 5),
        (2, 33, 65, 130),
        (3, 31, 12, 8),
        (1, 64, 10, 128),
        // Both operands aligned (vec4 loads), with and without a K tail.
        (2, 20, 16, 64),
        (1, 40, 32, 33),
    ];
    for (d, (gpu, dev)) in devices().into_iter().enumerate() {
        for (i, &(batch, m, n, k)) in shapes.iter().enumerate() {
            // The tiled kernel (d = 1) at three of them: each shape class
            // compiles pipelines of its own, slowly on a software driver.
            if d == 1 && ![0, 3, 4].contains(&i) {
                continue;
            }
            let seed = 100 + 10 * i as u64;
            let a = rand(&[batch, m, k], -1.0, 1.0, seed);
            let b = rand(&[k, n], -1.0, 1.0, seed + 1);
            let bias = rand(&[n], -0.5, 0.5, seed + 2);
            let residual = rand(&[batch, m, n], -1.0, 1.0, seed + 3);
            let on = |d: &Device| {
                let to = |t: &Tensor| t.to_device(d).unwrap();
                let (a, b, bias, residual) = (to(&a), to(&b), to(&bias), to(&residual));
                move || ((a.matmul(&b) + &bias).relu() * 0.5 - &residual).tanh()
            };
            let want = on(&Device::Cpu)().to_vec().unwrap();
            let f = on(&dev);
            let (got, count) = dispatches(&gpu, || f().to_vec().unwrap());
            let what = format!("{batch}x{m}x{n}x{k} on {}", gpu.info());
            assert_close(&got, &want, 1e-5, 1e-4, &what);
            assert_eq!(count, 1, "{what}: the product and its epilogue are one kernel");

            // A linear layer: the weight read transposed, bias and GELU.
            let w = rand(&[n, k], -1.0, 1.0, seed + 4);
            let x = rand(&[m, k], -1.0, 1.0, seed + 5);
            let want = x.linear(&w, Some(&bias)).gelu().to_vec().unwrap();
            let to = |t: &Tensor| t.to_device(&dev).unwrap();
            let (x, w, b) = (to(&x), to(&w), to(&bias));
            let (got, count) = dispatches(&gpu, || x.linear(&w, Some(&b)).gelu().to_vec().unwrap());
            assert_close(&got, &want, 1e-5, 1e-4, &format!("linear {what}"));
            assert_eq!(count, 1, "linear {what}");
        }
    }
}

#[test]
fn dropout_in_an_epilogue_keeps_the_cpu_mask() {
    for (gpu, dev) in devices() {
        let a = rand(&[37, 19], -1.0, 1.0, 1);
        let b = rand(&[19, 45], -1.0, 1.0, 2);
        let on = |a: &Tensor, b: &Tensor| {
            wgrad::manual_seed(7);
            a.matmul(b).relu().dropout(0.3, true).to_vec().unwrap()
        };
        let want = on(&a, &b);
        let (ag, bg) = (a.to_device(&dev).unwrap(), b.to_device(&dev).unwrap());
        let (got, count) = dispatches(&gpu, || on(&ag, &bg));
        assert_close(&got, &want, 1e-5, 1e-4, "matmul, relu, dropout");
        assert_eq!(count, 1, "matmul, relu and dropout in one kernel");
        // Dropped exactly where the CPU drops.
        assert!(got.iter().zip(&want).all(|(g, w)| (*g == 0.0) == (*w == 0.0)));
    }
}

#[test]
fn a_product_several_expressions_use_is_computed_once() {
    // Rows of 30 columns are stored element by element; rows of 32, in a
    // product large enough to take the aligned variant, as vec4s.
    for ((gpu, dev), (k, n)) in devices().into_iter().flat_map(|d| [(d.clone(), (24, 30)), (d, (64, 32))]) {
        let a = rand(&[40, k], -1.0, 1.0, 3).to_device(&dev).unwrap();
        let b = rand(&[k, n], -1.0, 1.0, 4).to_device(&dev).unwrap();
        let ((z, r, s), count) = dispatches(&gpu, || {
            let z = a.matmul(&b);
            let r = z.relu();
            let s = z.sigmoid() * 2.0;
            // The first computed runs the product with its epilogue and
            // writes the raw product, which `z` and `s` then read.
            let r = r.to_vec().unwrap();
            (z.to_vec().unwrap(), r, s.to_vec().unwrap())
        });
        assert_eq!(count, 2, "one product kernel writing relu(z) and z, then sigmoid over z");
        let zc = cpu(&a).matmul(&cpu(&b));
        assert_close(&z, &zc.to_vec().unwrap(), 1e-5, 1e-4, "z");
        assert_close(&r, &zc.relu().to_vec().unwrap(), 1e-5, 1e-4, "relu(z)");
        assert_close(&s, &(zc.sigmoid() * 2.0).to_vec().unwrap(), 1e-5, 1e-4, "2 sigmoid(z)");

        // Nothing else holds the product: no raw copy, and still one kernel.
        let (y, count) = dispatches(&gpu, || (a.matmul(&b) * 3.0).to_vec().unwrap());
        assert_eq!(count, 1);
        assert_close(&y, &(zc * 3.0).to_vec().unwrap(), 1e-5, 1e-4, "3z");
    }
}

#[test]
fn an_in_place_write_to_an_operand_waits_for_the_pending_product() {
    for (_, dev) in devices() {
        let a = rand(&[9, 13], -1.0, 1.0, 5).to_device(&dev).unwrap();
        let w = rand(&[13, 6], -1.0, 1.0, 6).to_device(&dev).unwrap();
        let want = cpu(&a).matmul(&cpu(&w)).relu().to_vec().unwrap();
        let y = a.matmul(&w).relu();
        w.assign(&Tensor::zeros([13, 6], &dev));
        assert_close(&y.to_vec().unwrap(), &want, 1e-5, 1e-4, "a product made before assign");
        let z = a.matmul(&w);
        assert_eq!(z.to_vec().unwrap(), vec![0.0; 9 * 6], "a product made after assign");
    }
}

#[test]
fn nan_and_infinity_propagate_through_an_epilogue() {
    for (_, dev) in devices() {
        let mut av = common::uniform(&[8, 5], -1.0, 1.0, 8);
        av[0] = f32::NAN;
        av[6] = f32::INFINITY;
        av[12] = f32::NEG_INFINITY;
        let a = Tensor::from_vec(av, [8, 5], &Device::Cpu).unwrap();
        let b = rand(&[5, 9], 0.1, 1.0, 9);
        let bias = rand(&[9], -1.0, 1.0, 10);
        let f = |d: &Device| {
            let to = |t: &Tensor| t.to_device(d).unwrap();
            ((to(&a).matmul(&to(&b)) + &to(&bias)).relu() - 1.0).to_vec().unwrap()
        };
        let (want, got) = (f(&Device::Cpu), f(&dev));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.is_nan() == w.is_nan() && (w.is_nan() || g == w || (g - w).abs() <= 1e-5 * (1.0 + w.abs())),
                "element {i}: gpu {g} vs cpu {w}"
            );
        }
        assert!(want.iter().any(|v| v.is_nan()) && want.iter().any(|v| v.is_infinite()));
    }
}

#[test]
fn a_linear_layers_weight_and_bias_gradients_are_one_kernel() {
    // Rows, outputs and inputs at tile edges, a 3-D input (rows folded),
    // and a bias-free layer.
    let shapes: &[(&[usize], usize, bool)] = &[
        (&[1, 1], 1, true),
        (&[33, 17], 9, true),
        (&[4, 5, 16], 31, true),
        (&[70, 130], 10, true),
        (&[12, 7], 5, false),
        // Inputs a multiple of 4, in a product past the small-product cut:
        // the weight gradient stored as vec4s, the ones column apart.
        (&[40, 64], 24, true),
    ];
    for (gpu, dev) in devices() {
        for (i, &(x_dims, outs, with_bias)) in shapes.iter().enumerate() {
            let ins = *x_dims.last().unwrap();
            let seed = 200 + 10 * i as u64;
            let x = rand(x_dims, -1.0, 1.0, seed);
            let w = rand(&[outs, ins], -1.0, 1.0, seed + 1);
            let b = rand(&[outs], -1.0, 1.0, seed + 2);
            let mut out_dims = x_dims.to_vec();
            *out_dims.last_mut().unwrap() = outs;
            let r = rand(&out_dims, -1.0, 1.0, seed + 3);
            let grads = |d: &Device| {
                let to = |t: &Tensor| t.to_device(d).unwrap();
                let (x, w, b) = (to(&x).requires_grad(), to(&w).requires_grad(), to(&b).requires_grad());
                let y = x.linear(&w, with_bias.then_some(&b));
                let g = ((y * &to(&r)).sum()).backward();
                let mut out = vec![g.get(&x).unwrap(), g.get(&w).unwrap()];
                if with_bias {
                    out.push(g.get(&b).unwrap());
                }
                out.iter().map(|t| t.to_vec().unwrap()).collect::<Vec<_>>()
            };
            let want = grads(&Device::Cpu);
            let got = grads(&dev);
            for (k, name) in ["x", "weight", "bias"].iter().enumerate().take(want.len()) {
                assert_close(&got[k], &want[k], 1e-5, 1e-4, &format!("d{name} {x_dims:?}→{outs} on {}", gpu.info()));
            }

            // On the device, the fused kernel gives what the product and the
            // column sum give separately, bit for bit.
            if with_bias {
                let rows: usize = x_dims[..x_dims.len() - 1].iter().product();
                let (xd, rd) = (x.to_device(&dev).unwrap(), r.to_device(&dev).unwrap());
                let g2 = rd.reshape([rows, outs]);
                let x2 = xd.reshape([rows, ins]);
                let dw = g2.t().matmul(&x2).to_vec().unwrap();
                let db = g2.sum_dim(0, false).to_vec().unwrap();
                assert_eq!(got[1], dw, "dweight vs gᵀx {x_dims:?}");
                assert_eq!(got[2], db, "dbias vs Σ g {x_dims:?}");
            }
        }
    }
}

#[test]
fn a_convolutions_bias_and_activation_are_its_epilogue() {
    use wgrad::Conv2dOptions;
    // (n, c_in, h, w, c_out, kernel, stride, padding, dilation, groups):
    // odd sizes, stride 2, dilation 2, groups and depthwise, non-square.
    type Case = (usize, usize, usize, usize, usize, (usize, usize), usize, usize, usize, usize);
    let cases: &[Case] = &[
        (2, 3, 9, 7, 5, (3, 3), 1, 1, 1, 1),
        (1, 4, 11, 10, 6, (3, 2), 2, 0, 1, 2),
        (3, 4, 8, 8, 4, (3, 3), 1, 2, 2, 4),
        (1, 1, 1, 1, 1, (1, 1), 1, 0, 1, 1),
    ];
    for (d, (gpu, dev)) in devices().into_iter().enumerate() {
        for (i, &(n, ci, h, w, co, k, stride, pad, dil, groups)) in cases.iter().enumerate() {
            if d == 1 && i > 1 {
                continue;
            }
            let seed = 300 + 10 * i as u64;
            let x = rand(&[n, ci, h, w], -1.0, 1.0, seed);
            let wt = rand(&[co, ci / groups, k.0, k.1], -1.0, 1.0, seed + 1);
            let b = rand(&[co], -0.5, 0.5, seed + 2);
            let opts = Conv2dOptions::default().stride(stride).padding(pad).dilation(dil).groups(groups);
            let want = x.conv2d(&wt, Some(&b), opts).relu().to_vec().unwrap();
            let to = |t: &Tensor| t.to_device(&dev).unwrap();
            let (xg, wg, bg) = (to(&x), to(&wt), to(&b));
            let (got, count) = dispatches(&gpu, || xg.conv2d(&wg, Some(&bg), opts).relu().to_vec().unwrap());
            let what = format!("conv case {i} on {}", gpu.info());
            assert_close(&got, &want, 1e-5, 1e-4, &what);
            assert_eq!(count, 1, "{what}: the convolution, its bias and ReLU are one kernel");
        }
    }
}

#[test]
fn a_shared_product_carries_only_its_own_checks() {
    // `z = h + bad` runs h's product with `+ bad` as its epilogue and, as
    // `relu(h)` still holds the product, writes it out raw: reading `h`
    // must not report the bad index that only `bad` (and so `z`) depends on.
    for (_, dev) in devices() {
        let x = rand(&[6, 5], -1.0, 1.0, 11);
        let w = rand(&[5, 4], -1.0, 1.0, 12);
        let table = rand(&[3, 4], -1.0, 1.0, 13);
        let to = |t: &Tensor| t.to_device(&dev).unwrap();
        let ids = Tensor::from_vec(vec![0.0, 1.0, 2.0, 7.0, 0.0, 1.0], [6], &dev).unwrap();
        let bad = to(&table).index_select(0, &ids);
        let h = to(&x).matmul(&to(&w));
        let hr = h.relu();
        let z = &h + &bad;
        assert!(matches!(z.to_vec(), Err(wgrad::Error::IndexOutOfRange { .. })), "{:?}", z.to_vec());
        let want = x.matmul(&w);
        assert_close(&h.to_vec().unwrap(), &want.to_vec().unwrap(), 1e-5, 1e-4, "h");
        assert_close(&hr.to_vec().unwrap(), &want.relu().to_vec().unwrap(), 1e-5, 1e-4, "relu(h)");
    }
}
