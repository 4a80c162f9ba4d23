//! Every op, forward and backward, on the GPU against the CPU reference, on
//! fresh random inputs at odd sizes (1, 3, 17, 63, 65, 129, 257: below,
//! at and past the kernels' tile and workgroup sizes), broadcast cases and
//! batched matmul.
//!
//! Each comparison is `|gpu - cpu| <= atol + rtol·|cpu|` per element. The
//! bounds, and where they come from:
//! - elementwise (`EXACTISH`): both sides evaluate the same formula in f32;
//!   GPU exp/log/pow may differ from the host libm by a few ulps → 1e-5.
//! - sums, softmax, losses (`REDUCTION`): summation order differs
//!   (tree vs sequential); error grows like √n·ε·Σ|x| → 1e-4 on O(1) data.
//! - matmul (`MATMUL`): k-long dot products accumulated in a different
//!   order, k ≤ 257, |x| ≤ 1 → a few k·ε ≈ 1e-4 absolute.

// Input lists are built fresh for each check; `&[x.clone()]` reads better
// than `std::slice::from_ref(&x)` next to `&[a.clone(), b.clone()]`.
#![allow(clippy::cloned_ref_to_slice_refs)]

mod common;

use common::{gpu, labels, uniform};
use wgrad::{Device, Tensor, manual_seed};

#[derive(Clone, Copy)]
struct Tol {
    atol: f32,
    rtol: f32,
}

const EXACTISH: Tol = Tol { atol: 1e-6, rtol: 1e-5 };
const REDUCTION: Tol = Tol { atol: 1e-4, rtol: 1e-4 };
const MATMUL: Tol = Tol { atol: 2e-4, rtol: 1e-4 };

const SIZES: &[usize] = &[1, 3, 17, 63, 65, 129, 257];

fn close(name: &str, what: &str, gpu: &[f32], cpu: &[f32], tol: Tol) {
    assert_eq!(gpu.len(), cpu.len(), "{name} {what}: lengths differ");
    let mut worst = (0usize, 0f32);
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let excess = (g - c).abs() - (tol.atol + tol.rtol * c.abs());
        let both_nan = g.is_nan() && c.is_nan();
        let same_inf = g.is_infinite() && g == c;
        // A NaN excess (one side NaN) counts as a failure.
        let fails = excess > 0.0 || excess.is_nan();
        if fails && !both_nan && !same_inf && (excess.is_nan() || excess >= worst.1) {
            worst = (i, excess.max(f32::MIN_POSITIVE));
        }
    }
    if worst.1 > 0.0 {
        let i = worst.0;
        panic!("{name} {what}: element {i}: gpu {} vs cpu {} (atol {}, rtol {})", gpu[i], cpu[i], tol.atol, tol.rtol);
    }
}

/// Runs `f` on the CPU and on the GPU with the same inputs; compares the
/// outputs and the gradients of every variable (seeded with the same random
/// weights on both devices).
fn parity(name: &str, tol: Tol, vars: &[Tensor], consts: &[Tensor], f: impl Fn(&[Tensor], &[Tensor]) -> Tensor) {
    let Some(dev) = gpu() else { return };
    let run = |d: &Device| -> (Vec<f32>, Vec<Vec<f32>>) {
        let vs: Vec<Tensor> = vars.iter().map(|t| t.to_device(d).unwrap().requires_grad()).collect();
        let cs: Vec<Tensor> = consts.iter().map(|t| t.to_device(d).unwrap()).collect();
        let out = f(&vs, &cs);
        let weights = uniform(out.dims(), -1.0, 1.0, 12345);
        let seed = Tensor::from_vec(weights, out.shape().clone(), d).unwrap();
        let grads = out.backward_with(seed);
        let gs = vs.iter().map(|v| grads.get(v).map(|g| g.to_vec().unwrap()).unwrap_or_default()).collect();
        (out.to_vec().unwrap(), gs)
    };
    let (out_c, grads_c) = run(&Device::Cpu);
    let (out_g, grads_g) = run(&dev);
    close(name, "forward", &out_g, &out_c, tol);
    for (i, (g, c)) in grads_g.iter().zip(&grads_c).enumerate() {
        close(name, &format!("gradient {i}"), g, c, tol);
    }
}

fn rand(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Tensor {
    common::rand(shape, lo, hi, seed)
}

#[test]
fn unary_ops() {
    for (i, &n) in SIZES.iter().enumerate() {
        let s = 1000 + i as u64;
        let x = rand(&[n], -3.0, 3.0, s);
        let pos = rand(&[n], 0.1, 4.0, s + 1);
        let t = EXACTISH;
        parity("neg", t, &[x.clone()], &[], |v, _| v[0].neg());
        parity("exp", t, &[x.clone()], &[], |v, _| v[0].exp());
        parity("log", t, &[pos.clone()], &[], |v, _| v[0].log());
        parity("sqrt", t, &[pos.clone()], &[], |v, _| v[0].sqrt());
        parity("powf 3", t, &[x.clone()], &[], |v, _| v[0].powf(3.0));
        parity("powf 2", t, &[x.clone()], &[], |v, _| v[0].powf(2.0));
        parity("powf -0.5", t, &[pos.clone()], &[], |v, _| v[0].powf(-0.5));
        parity("abs", t, &[x.clone()], &[], |v, _| v[0].abs());
        parity("relu", t, &[x.clone()], &[], |v, _| v[0].relu());
        parity("sigmoid", t, &[x.clone()], &[], |v, _| v[0].sigmoid());
        parity("tanh", t, &[x.clone()], &[], |v, _| v[0].tanh());
        parity("gelu", t, &[x.clone()], &[], |v, _| v[0].gelu());
        parity("gelu_tanh", t, &[x.clone()], &[], |v, _| v[0].gelu_tanh());
        parity("scalar ops", t, &[x.clone()], &[], |v, _| (&v[0] * 1.5 + 0.25) / 2.0 - 1.0);
        parity("clamp", t, &[x.clone()], &[], |v, _| v[0].clamp(-1.0, 0.5));
        parity("maximum_scalar", t, &[x.clone()], &[], |v, _| v[0].maximum_scalar(0.3));
        parity("minimum_scalar", t, &[x.clone()], &[], |v, _| v[0].minimum_scalar(0.3));
    }
}

#[test]
fn unary_ops_at_extremes() {
    let x = Tensor::from_vec(vec![-1e4, -88.0, -20.0, 0.0, 20.0, 88.0, 1e4], [7], &Device::Cpu).unwrap();
    parity("sigmoid extremes", EXACTISH, &[x.clone()], &[], |v, _| v[0].sigmoid());
    parity("tanh extremes", EXACTISH, &[x.clone()], &[], |v, _| v[0].tanh());
    parity("gelu extremes", EXACTISH, &[x.clone()], &[], |v, _| v[0].gelu());
    parity("gelu_tanh extremes", EXACTISH, &[x.clone()], &[], |v, _| v[0].gelu_tanh());
    parity("relu extremes", EXACTISH, &[x], &[], |v, _| v[0].relu());
}

#[test]
fn binary_ops_with_broadcasting() {
    let pairs: &[(&[usize], &[usize])] = &[
        (&[257], &[257]),
        (&[65, 17], &[17]),
        (&[63, 3], &[63, 1]),
        (&[1], &[3, 129]),
        (&[17, 1, 65], &[3, 1]),
        (&[2, 3, 1, 5, 1, 2], &[3, 4, 1, 7, 1]),
    ];
    for (i, &(sa, sb)) in pairs.iter().enumerate() {
        let s = 2000 + 10 * i as u64;
        let a = rand(sa, -2.0, 2.0, s);
        let b = rand(sb, -2.0, 2.0, s + 1);
        let pos = rand(sb, 0.5, 2.0, s + 2);
        let t = EXACTISH;
        let name = format!("{sa:?} op {sb:?}");
        parity(&format!("add {name}"), t, &[a.clone(), b.clone()], &[], |v, _| &v[0] + &v[1]);
        parity(&format!("sub {name}"), t, &[a.clone(), b.clone()], &[], |v, _| &v[0] - &v[1]);
        parity(&format!("mul {name}"), t, &[a.clone(), b.clone()], &[], |v, _| &v[0] * &v[1]);
        parity(&format!("div {name}"), t, &[a.clone(), pos.clone()], &[], |v, _| &v[0] / &v[1]);
        parity(&format!("maximum {name}"), t, &[a.clone(), b.clone()], &[], |v, _| v[0].maximum(&v[1]));
        parity(&format!("minimum {name}"), t, &[a.clone(), b.clone()], &[], |v, _| v[0].minimum(&v[1]));
    }
}

#[test]
fn reductions() {
    // Rows of up to 32 take one invocation each, longer ones a workgroup
    // (and a scan's chunks): [5, 32] and [4, 33] are either side.
    let shapes: &[&[usize]] =
        &[&[1], &[257], &[3, 129], &[65, 17], &[5, 32], &[4, 33], &[17, 63, 3], &[1, 5000], &[3000, 2]];
    for (i, &shape) in shapes.iter().enumerate() {
        let x = rand(shape, -1.0, 1.0, 3000 + i as u64);
        let t = REDUCTION;
        parity("sum", t, &[x.clone()], &[], |v, _| v[0].sum());
        parity("mean", t, &[x.clone()], &[], |v, _| v[0].mean());
        parity("max", t, &[x.clone()], &[], |v, _| v[0].max());
        for axis in 0..shape.len() {
            for keep in [false, true] {
                let name = format!("{shape:?} axis {axis} keepdim {keep}");
                parity(&format!("sum_dim {name}"), t, &[x.clone()], &[], |v, _| v[0].sum_dim(axis, keep));
                parity(&format!("mean_dim {name}"), t, &[x.clone()], &[], |v, _| v[0].mean_dim(axis, keep));
                parity(&format!("max_dim {name}"), t, &[x.clone()], &[], |v, _| v[0].max_dim(axis, keep));
                parity(&format!("argmax {name}"), t, &[], &[x.clone()], |_, c| c[0].argmax(axis, keep));
            }
            // Its backward is the scan from the end.
            parity(&format!("cumsum {shape:?} axis {axis}"), t, &[x.clone()], &[], |v, _| v[0].cumsum(axis));
        }
    }
}

#[test]
fn argmax_breaks_ties_like_the_cpu() {
    let x = Tensor::from_vec(vec![1.0, 3.0, 3.0, 0.0, 2.0, 2.0, 2.0, 2.0], [2, 4], &Device::Cpu).unwrap();
    parity("argmax ties rows", EXACTISH, &[], &[x.clone()], |_, c| c[0].argmax(1, false));
    parity("argmax ties cols", EXACTISH, &[], &[x.clone()], |_, c| c[0].argmax(0, false));
    parity("max_dim ties", EXACTISH, &[x], &[], |v, _| v[0].max_dim(1, false));
}

/// `argmax_hits` counts what `argmax(-1).eq(labels).sum()` counts, on both
/// devices, and on a GPU in one dispatch where it fits one workgroup:
/// scores full of ties and NaNs, labels right, wrong, out of range and NaN,
/// either side of the short-row cut (32 classes) and of the rows one
/// workgroup takes (256 invocations of 64 rows).
#[test]
fn argmax_hits_counts_what_argmax_eq_sum_counts() {
    if gpu().is_none() {
        return;
    }
    // A device of its own: the shared one counts the other tests' dispatches.
    let g = &wgrad::GpuDevice::with_options(wgrad::GpuOptions::from_env()).unwrap();
    let dev = Device::Gpu(g.clone());
    let cases: &[(&[usize], bool)] = &[
        (&[1, 1], true),
        (&[3, 2], true),
        (&[33, 10], true),
        (&[257, 32], true),
        (&[4, 5, 27], true),
        (&[16384, 10], true),
        (&[16385, 10], false),
        (&[65, 33], false),
        (&[0, 10], false),
    ];
    for (i, &(dims, one_kernel)) in cases.iter().enumerate() {
        let classes = dims[dims.len() - 1];
        let n: usize = dims.iter().product();
        let rows = n / classes;
        // Few distinct values: many ties; every 13th a NaN.
        let scores: Vec<f32> = uniform(&[n], 0.0, 4.0, 90 + i as u64)
            .into_iter()
            .enumerate()
            .map(|(j, v)| if j % 13 == 5 { f32::NAN } else { v.floor() })
            .collect();
        let x = Tensor::from_vec(scores, dims.to_vec(), &Device::Cpu).unwrap();
        let best = x.argmax(-1, false).to_vec().unwrap();
        // Right, wrong, past the classes, negative, NaN.
        let labels: Vec<f32> = best
            .iter()
            .enumerate()
            .map(|(r, &b)| match r % 7 {
                0..=2 => b,
                3 => (b + 1.0) % classes as f32,
                4 => classes as f32,
                5 => -1.0,
                _ => f32::NAN,
            })
            .collect();
        let y = Tensor::from_vec(labels, dims[..dims.len() - 1].to_vec(), &Device::Cpu).unwrap();
        let want = x.argmax(-1, false).eq(&y).sum().item().unwrap();
        assert_eq!(x.argmax_hits(&y).item().unwrap(), want, "cpu, {dims:?}");
        let (xg, yg) = (x.to_device(&dev).unwrap(), y.to_device(&dev).unwrap());
        dev.synchronize().unwrap();
        let before = g.kernels_dispatched();
        let hits = xg.argmax_hits(&yg);
        dev.synchronize().unwrap();
        let dispatched = g.kernels_dispatched() - before;
        assert_eq!(hits.item().unwrap(), want, "gpu, {dims:?} ({rows} rows)");
        if one_kernel {
            assert_eq!(dispatched, 1, "{dims:?}: argmax_hits took {dispatched} dispatches");
        }
    }
}

/// `fit`'s and `evaluate`'s running accuracy, which on a GPU adds each
/// batch's hits to the running total in the same kernel: the same count as
/// on the CPU, batch after batch (an identity layer passes the scores
/// through; they are whole numbers, so full of ties).
#[test]
fn the_running_accuracy_counts_the_same_on_both_devices() {
    use wgrad::data::Dataset;
    use wgrad::nn::{self, Module};
    use wgrad::train::{Loss, Metric, evaluate_with};
    let Some(dev) = gpu() else { return };
    let (items, classes) = (100, 10);
    let scores: Vec<f32> = uniform(&[items * classes], 0.0, 4.0, 7).into_iter().map(f32::floor).collect();
    let x = Tensor::from_vec(scores.clone(), [items, classes], &Device::Cpu).unwrap();
    let best = x.argmax(-1, false).to_vec().unwrap();
    let labels: Vec<f32> =
        best.iter().enumerate().map(|(r, &b)| if r % 3 == 0 { (b + 1.0) % 10.0 } else { b }).collect();
    let want = best.iter().zip(&labels).filter(|(b, l)| b == l).count() as f32 / items as f32;
    let data = Dataset::new(scores, labels, &[classes], classes);
    for d in [Device::Cpu, dev] {
        let identity = nn::Linear::new(classes, classes, &d);
        let params = identity.parameters();
        let eye: Vec<f32> = (0..classes * classes).map(|i| f32::from(i % (classes + 1) == 0)).collect();
        params[0].assign(&Tensor::from_vec(eye, [classes, classes], &d).unwrap());
        params[1].assign(&Tensor::zeros([classes], &d));
        let m = evaluate_with(&identity, &data, 7, &Loss::CrossEntropy, &[Metric::Accuracy]).unwrap();
        assert_eq!(m.accuracy(), want, "{d:?}");
    }
}

#[test]
fn layer_norm_family() {
    // Rows of 1, of fewer elements than a workgroup, and of more (300,
    // 3000: the GPU's strided loop over a row and its tree sum), with the
    // affine weight and bias as variables; one and two normalised axes.
    let shapes: &[(&[usize], usize)] = &[(&[7, 1], 1), (&[5, 300], 1), (&[3, 4, 129], 2), (&[2, 3000], 1)];
    for (i, &(shape, axes)) in shapes.iter().enumerate() {
        let x = rand(shape, -3.0, 3.0, 4100 + i as u64);
        let normalized = &shape[shape.len() - axes..];
        let (w, b) = (rand(normalized, 0.5, 1.5, 4200 + i as u64), rand(normalized, -1.0, 1.0, 4300 + i as u64));
        parity(&format!("layer_norm {shape:?}"), REDUCTION, &[x, w, b], &[], |v, _| {
            v[0].layer_norm(axes, Some(&v[1]), Some(&v[2]), 1e-5)
        });
    }
}

#[test]
fn softmax_family() {
    // Rows of up to 32 take the kernels' one-invocation-per-line path,
    // longer ones a workgroup per row: 32 and 33 are either side.
    let shapes: &[&[usize]] = &[&[1], &[3], &[257], &[65, 17], &[5, 32], &[4, 33], &[3, 129], &[17, 63, 3], &[2, 3000]];
    for (i, &shape) in shapes.iter().enumerate() {
        let x = rand(shape, -5.0, 5.0, 4000 + i as u64);
        for axis in 0..shape.len() {
            let name = format!("{shape:?} axis {axis}");
            parity(&format!("softmax {name}"), REDUCTION, &[x.clone()], &[], |v, _| v[0].softmax(axis));
            parity(&format!("log_softmax {name}"), REDUCTION, &[x.clone()], &[], |v, _| v[0].log_softmax(axis));
        }
    }
    let extreme = Tensor::from_vec(vec![1e4, -1e4, 0.0, 1e4, 1e4, -1e4], [2, 3], &Device::Cpu).unwrap();
    parity("softmax ±1e4", REDUCTION, &[extreme.clone()], &[], |v, _| v[0].softmax(1));
    parity("log_softmax ±1e4", REDUCTION, &[extreme], &[], |v, _| v[0].log_softmax(1));
}

#[test]
fn matmul_shapes() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[1, 1], &[1, 1]),
        (&[3, 17], &[17, 1]),
        (&[1, 63], &[63, 65]),
        (&[17, 3], &[3, 257]),
        (&[129, 65], &[65, 257]),
        (&[65, 129], &[129, 63]),
        (&[32, 784], &[784, 128]),
        (&[3, 17, 65], &[3, 65, 5]),
        (&[5, 63, 17], &[17, 129]),
        (&[17, 65], &[4, 65, 3]),
        (&[2, 1, 9, 7], &[1, 3, 7, 11]),
        (&[257], &[257, 3]),
        (&[17, 65], &[65]),
        // Aligned operands with a K tail (products of at least 32768
        // multiply-adds: smaller ones take the variant for any layout):
        // [17,64]·[64,48]'s weight gradient is a transposed, aligned A
        // (M = 64) over K = 17; [37,17]·[17,64] reads an aligned B over K = 17.
        (&[17, 64], &[64, 48]),
        (&[37, 17], &[17, 64]),
    ];
    for (i, &(sa, sb)) in cases.iter().enumerate() {
        let a = rand(sa, -1.0, 1.0, 5000 + i as u64);
        let b = rand(sb, -1.0, 1.0, 5100 + i as u64);
        parity(&format!("matmul {sa:?}x{sb:?}"), MATMUL, &[a, b], &[], |v, _| v[0].matmul(&v[1]));
    }
    // Transposed operands reach the kernel's transpose flags through backward.
    let a = rand(&[65, 129], -1.0, 1.0, 5200);
    parity("matmul a·aᵀ", MATMUL, &[a.clone()], &[], |v, _| v[0].matmul(&v[0].t()));
    parity("matmul aᵀ·a", MATMUL, &[a], &[], |v, _| v[0].t().matmul(&v[0]));
}

#[test]
fn shape_ops() {
    let x = rand(&[17, 3, 65], -1.0, 1.0, 6000);
    let t = EXACTISH;
    parity("reshape", t, &[x.clone()], &[], |v, _| v[0].reshape([51, 65]));
    parity("transpose", t, &[x.clone()], &[], |v, _| v[0].transpose(0, 2));
    parity("permute", t, &[x.clone()], &[], |v, _| v[0].permute(&[1, 2, 0]));
    parity("broadcast_to", t, &[rand(&[3, 1], -1.0, 1.0, 6001)], &[], |v, _| v[0].broadcast_to([17, 3, 65]));
    for axis in 0..3 {
        let len = x.dims()[axis];
        parity("narrow", t, &[x.clone()], &[], |v, _| v[0].narrow(axis, 1, len - 1));
        parity("narrow start", t, &[x.clone()], &[], |v, _| v[0].narrow(axis, 0, 1));
    }
    let y = rand(&[17, 5, 65], -1.0, 1.0, 6002);
    parity("cat", t, &[x.clone(), y], &[], |v, _| Tensor::cat(&[&v[0], &v[1], &v[0]], 1));
    let idx = Tensor::from_vec(vec![2.0, 0.0, 2.0, 1.0, 0.0], [5], &Device::Cpu).unwrap();
    parity("index_select 1", t, &[x.clone()], &[idx.clone()], |v, c| v[0].index_select(1, &c[0]));
    parity("index_select 0", t, &[x.clone()], &[idx.clone()], |v, c| v[0].index_select(0, &c[0]));
    parity("index_select 2", t, &[x.clone()], &[idx], |v, c| v[0].index_select(2, &c[0]));
    let g = labels(17 * 7 * 65, 3, 6003, &Device::Cpu).reshape([17, 7, 65]);
    parity("gather", t, &[x.clone()], &[g], |v, c| v[0].gather(1, &c[0]));
}

#[test]
fn losses() {
    for (i, &n) in SIZES.iter().enumerate() {
        let s = 7000 + 10 * i as u64;
        let p = rand(&[n, 3], 0.02, 0.98, s);
        let target = rand(&[n, 3], 0.0, 1.0, s + 1);
        parity("mse_loss", REDUCTION, &[p.clone(), target.clone()], &[], |v, _| v[0].mse_loss(&v[1]));
        parity("bce", REDUCTION, &[p.clone(), target.clone()], &[], |v, _| v[0].binary_cross_entropy(&v[1]));
        // Up to 32 classes, one invocation per row; more, a workgroup.
        for classes in [1, 10, 32, 33, 129] {
            let x = rand(&[n, classes], -4.0, 4.0, s + 2);
            let y = labels(n, classes, s + 3, &Device::Cpu);
            parity("cross_entropy", REDUCTION, &[x.clone()], &[y.clone()], |v, c| v[0].cross_entropy(&c[0]));
            parity("cross_entropy_per_sample", REDUCTION, &[x], &[y], |v, c| v[0].cross_entropy_per_sample(&c[0]));
        }
    }
}

#[test]
fn dropout_masks_are_identical_on_both_devices() {
    let x = rand(&[129, 65], 0.5, 1.5, 8000);
    parity("dropout", EXACTISH, &[x.clone()], &[], |v, _| {
        manual_seed(77);
        let first = v[0].dropout(0.3, true);
        // The second call uses the next counter: a different mask.
        first.dropout(0.5, true)
    });
    let Some(dev) = gpu() else { return };
    manual_seed(5);
    let cpu = x.dropout(0.2, true).to_vec().unwrap();
    manual_seed(5);
    let gpu = x.to_device(&dev).unwrap().dropout(0.2, true).to_vec().unwrap();
    assert_eq!(cpu, gpu, "one seed must give one mask, bit for bit");
    // On the GPU dropout is a node of the fused kernel: after a chain, on a
    // transposed (strided, one element per invocation) input, with an odd
    // count (a partial vec4), and with NaN and ∞ (a dropped one stays NaN).
    let mut values = x.to_vec().unwrap();
    values[3] = f32::NAN;
    values[10] = f32::INFINITY;
    let x = Tensor::from_vec(values, [129, 65], &Device::Cpu).unwrap();
    let chain = |x: &Tensor| {
        manual_seed(9);
        let a = (x * 2.0).relu().dropout(0.4, true);
        let b = x.t().dropout(0.5, true) + 1.0;
        let c = x.narrow(0, 0, 7).dropout(0.25, true);
        [a, b, c].map(|t| t.to_vec().unwrap())
    };
    let (cpu, gpu) = (chain(&x), chain(&x.to_device(&dev).unwrap()));
    for (c, g) in cpu.iter().zip(&gpu) {
        let same = c.iter().zip(g).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
        assert!(same, "fused dropout differs from the CPU's");
    }
    assert!(cpu[0].iter().any(|v| v.is_nan()), "a NaN survives or stays NaN when dropped");
}

#[test]
fn large_tensors_use_two_dimensional_grids() {
    // 70,000 workgroups of 256 exceed the 65,535 one dimension allows.
    let n = 256 * 70_000 + 3;
    let x = Tensor::from_vec((0..n).map(|i| (i % 1000) as f32).collect(), [n], &Device::Cpu).unwrap();
    parity("exp over 17.9M elements", EXACTISH, &[], &[x.clone()], |_, c| (&c[0] * 1e-3).exp());
    let rows = x.narrow(0, 0, 70_000 * 4).reshape([70_000 * 2, 2]);
    parity("row softmax over 140k rows", REDUCTION, &[], &[rows], |_, c| c[0].softmax(1));
}

#[test]
fn a_small_mlp_matches_end_to_end() {
    let x = rand(&[33, 20], -1.0, 1.0, 9000);
    let w1 = rand(&[20, 65], -0.3, 0.3, 9001);
    let b1 = rand(&[65], -0.1, 0.1, 9002);
    let w2 = rand(&[65, 10], -0.3, 0.3, 9003);
    let y = labels(33, 10, 9004, &Device::Cpu);
    parity("mlp", REDUCTION, &[w1, b1, w2], &[x, y], |v, c| {
        manual_seed(1);
        (c[0].matmul(&v[0]) + &v[1]).relu().dropout(0.2, true).matmul(&v[2]).cross_entropy(&c[1])
    });
}

#[test]
fn the_workgroup_tiled_matmul_matches_too() {
    // Adapters without subgroups get matmul_tiled.wgsl; lavapipe has
    // subgroups, so open a second device with them switched off.
    if gpu().is_none() {
        return;
    }
    let dev = Device::Gpu(
        wgrad::GpuDevice::with_options(wgrad::GpuOptions { subgroups: false, ..wgrad::GpuOptions::from_env() })
            .unwrap(),
    );
    let cases: &[(&[usize], &[usize])] =
        &[(&[1, 1], &[1, 1]), (&[129, 65], &[65, 257]), (&[3, 17, 65], &[3, 65, 5]), (&[17, 3], &[3, 63])];
    for (i, &(sa, sb)) in cases.iter().enumerate() {
        let a = rand(sa, -1.0, 1.0, 5300 + i as u64);
        let b = rand(sb, -1.0, 1.0, 5400 + i as u64);
        let run = |d: &Device| {
            let (va, vb) = (a.to_device(d).unwrap().requires_grad(), b.to_device(d).unwrap().requires_grad());
            let out = va.matmul(&vb);
            let g = out.sqr().sum().backward();
            [out.to_vec().unwrap(), g.get(&va).unwrap().to_vec().unwrap(), g.get(&vb).unwrap().to_vec().unwrap()]
        };
        let (c, t) = (run(&Device::Cpu), run(&dev));
        for (what, (x, y)) in ["forward", "grad a", "grad b"].iter().zip(t.iter().zip(&c)) {
            close(&format!("tiled matmul {sa:?}x{sb:?}"), what, x, y, MATMUL);
        }
    }
}

/// Convolutions at shapes that hit every edge: non-square kernels, inputs
/// and strides, padding, dilation, groups (depthwise too), a 1×1 output,
/// pointwise kernels, batch 1, and outputs past one tile (16 channels ×
/// 64 pixels with subgroups, 32 × 32 without). The weight gradient sums
/// over every pixel of the batch (K up to 3136 here): its tolerance is a
/// dot product's of that length, √K·ε·Σ|x·g| ≈ 1e-3 absolute on O(1) data.
const CONV: Tol = Tol { atol: 1e-3, rtol: 1e-4 };

fn conv_cases() -> Vec<(Vec<usize>, Vec<usize>, wgrad::Conv2dOptions)> {
    use wgrad::{Conv2dOptions as O, Padding};
    vec![
        (vec![2, 3, 9, 11], vec![5, 3, 3, 2], O::default().stride((2, 1)).padding((1, 0))),
        (vec![1, 4, 17, 13], vec![6, 2, 3, 3], O::default().groups(2).dilation(2).padding(2)),
        (vec![2, 6, 8, 8], vec![6, 1, 3, 3], O::default().groups(6).padding(1).stride(2)),
        (vec![3, 17, 10, 10], vec![33, 17, 1, 1], O::default()),
        (vec![1, 1, 5, 5], vec![1, 1, 5, 5], O::default()),
        (vec![4, 8, 28, 28], vec![20, 8, 3, 3], O::default().padding(Padding::Same)),
        (vec![2, 2, 7, 6], vec![3, 2, 4, 4], O::default().padding(Padding::Same)),
        (vec![2, 3, 10, 7], vec![4, 3, 3, 3], O::default().stride((3, 2)).padding(1)),
        // Past one row tile in every product, a multiple of no tile size
        // (4, 16, 32, 64): the forward's M = 67 channels over K = 630, the
        // input gradient's M = 70, the weight gradient's M = 67 by N = 630.
        (vec![2, 70, 7, 5], vec![67, 70, 3, 3], O::default().stride(2).padding(1)),
    ]
}

#[test]
fn convolutions() {
    for (i, (xs, ws, opts)) in conv_cases().into_iter().enumerate() {
        let x = rand(&xs, -1.0, 1.0, 9100 + i as u64);
        let w = rand(&ws, -1.0, 1.0, 9200 + i as u64);
        let b = rand(&ws[..1], -1.0, 1.0, 9300 + i as u64);
        parity(&format!("conv2d {xs:?} {ws:?} {opts:?}"), CONV, &[x, w, b], &[], |v, _| {
            v[0].conv2d(&v[1], Some(&v[2]), opts)
        });
    }
}

#[test]
fn the_workgroup_tiled_convolution_matches_too() {
    if gpu().is_none() {
        return;
    }
    let dev = Device::Gpu(
        wgrad::GpuDevice::with_options(wgrad::GpuOptions { subgroups: false, ..wgrad::GpuOptions::from_env() })
            .unwrap(),
    );
    for (i, (xs, ws, opts)) in conv_cases().into_iter().enumerate() {
        let x = rand(&xs, -1.0, 1.0, 9400 + i as u64);
        let w = rand(&ws, -1.0, 1.0, 9500 + i as u64);
        let run = |d: &Device| {
            let (vx, vw) = (x.to_device(d).unwrap().requires_grad(), w.to_device(d).unwrap().requires_grad());
            let out = vx.conv2d(&vw, None, opts);
            let g = out.sqr().sum().backward();
            [out.to_vec().unwrap(), g.get(&vx).unwrap().to_vec().unwrap(), g.get(&vw).unwrap().to_vec().unwrap()]
        };
        let (c, t) = (run(&Device::Cpu), run(&dev));
        for (what, (a, b)) in ["forward", "grad x", "grad w"].iter().zip(t.iter().zip(&c)) {
            close(&format!("tiled conv2d {xs:?} {ws:?}"), what, a, b, CONV);
        }
    }
}

#[test]
fn pooling() {
    let x = rand(&[2, 3, 9, 11], -1.0, 1.0, 9600);
    let c = [x.clone()];
    parity("max_pool2d 2", EXACTISH, &c, &[], |v, _| v[0].max_pool2d(2, 2, 0));
    parity("max_pool2d 3/2 pad 1", EXACTISH, &c, &[], |v, _| v[0].max_pool2d((3, 2), (2, 1), (1, 1)));
    parity("avg_pool2d", EXACTISH, &c, &[], |v, _| v[0].avg_pool2d(3, 2, 1, true));
    parity("avg_pool2d no pad", EXACTISH, &c, &[], |v, _| v[0].avg_pool2d((2, 3), (1, 2), (1, 1), false));
    parity("adaptive_avg_pool2d 1", EXACTISH, &c, &[], |v, _| v[0].adaptive_avg_pool2d(1));
    parity("adaptive_avg_pool2d 4x3", EXACTISH, &c, &[], |v, _| v[0].adaptive_avg_pool2d((4, 3)));
    // Ties: the gradient goes to the first maximum on both devices.
    let ties = Tensor::from_vec(vec![1.0, 1.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.0], [1, 1, 3, 3], &Device::Cpu).unwrap();
    parity("max_pool2d ties", EXACTISH, &[ties], &[], |v, _| v[0].max_pool2d(2, 1, 0));
}

#[test]
fn batch_norm() {
    let x = rand(&[5, 3, 4, 7], -2.0, 2.0, 9700);
    let w = rand(&[3], 0.5, 1.5, 9701);
    let b = rand(&[3], -0.5, 0.5, 9702);
    parity("batch_norm train", REDUCTION, &[x.clone(), w.clone(), b.clone()], &[], |v, _| {
        v[0].batch_norm(None, None, Some(&v[1]), Some(&v[2]), true, 0.1, 1e-5)
    });
    let x2 = rand(&[33, 65], -2.0, 2.0, 9703);
    parity("batch_norm 2-D", REDUCTION, &[x2], &[], |v, _| v[0].batch_norm(None, None, None, None, true, 0.1, 1e-5));
}
