//! The ops a PyTorch user reaches for in the first week: comparisons,
//! `where_cond`/`masked_fill`, `min`/`argmin`, `var`/`std`, `cumsum`,
//! `sort`/`argsort`/`topk`, and the losses (L1, Huber, smooth L1, BCE with
//! logits, cross-entropy with label smoothing and class weights) — values
//! by hand, gradients against finite differences, and the GPU against the
//! CPU at sizes off every tile. (`tests/torch_reference.rs` checks them
//! against PyTorch's own numbers.)

#![allow(clippy::cloned_ref_to_slice_refs)]

mod common;

use common::{assert_close, gpu, labels, rand, uniform};
use wgrad::{CrossEntropyOptions, Device, GradcheckOptions, Tensor, gradcheck, gradcheck_with};

fn t(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
}

fn check(name: &str, f: impl Fn(&[Tensor]) -> Tensor, inputs: &[Tensor]) {
    if let Err(e) = gradcheck(f, inputs) {
        panic!("{name}: {e}");
    }
}

/// Runs `f` on the CPU and the GPU and compares outputs and the gradients
/// of `vars` (seeded with the same random weights); `tol` is absolute plus
/// relative (sums in another order: 1e-4).
fn parity(name: &str, tol: f32, vars: &[Tensor], consts: &[Tensor], f: impl Fn(&[Tensor], &[Tensor]) -> Tensor) {
    let Some(dev) = gpu() else { return };
    let run = |d: &Device| {
        let vs: Vec<Tensor> = vars.iter().map(|t| t.to_device(d).unwrap().requires_grad()).collect();
        let cs: Vec<Tensor> = consts.iter().map(|t| t.to_device(d).unwrap()).collect();
        let out = f(&vs, &cs);
        let seed = Tensor::from_vec(uniform(out.dims(), -1.0, 1.0, 77), out.shape().clone(), d).unwrap();
        let grads = if out.is_tracked() { out.backward_with(seed) } else { Default::default() };
        let gs: Vec<Vec<f32>> =
            vs.iter().map(|v| grads.get(v).map(|g| g.to_vec().unwrap()).unwrap_or_default()).collect();
        (out.to_vec().unwrap(), gs)
    };
    let (oc, gc) = run(&Device::Cpu);
    let (og, gg) = run(&dev);
    assert_close(&og, &oc, tol, tol, &format!("{name} forward"));
    for (i, (g, c)) in gg.iter().zip(&gc).enumerate() {
        assert_close(g, c, tol, tol, &format!("{name} gradient {i}"));
    }
}

const SIZES: &[usize] = &[1, 3, 17, 65, 129];

#[test]
fn comparisons_and_where() {
    let a = t(&[1.0, 2.0, 3.0, f32::NAN], &[4]);
    let b = t(&[2.0, 2.0, 2.0, 2.0], &[4]);
    assert_eq!(a.lt(&b).to_vec().unwrap(), [1.0, 0.0, 0.0, 0.0]);
    assert_eq!(a.le(&b).to_vec().unwrap(), [1.0, 1.0, 0.0, 0.0]);
    assert_eq!(a.gt(&b).to_vec().unwrap(), [0.0, 0.0, 1.0, 0.0]);
    assert_eq!(a.ge(&b).to_vec().unwrap(), [0.0, 1.0, 1.0, 0.0]);
    assert_eq!(a.eq(&b).to_vec().unwrap(), [0.0, 1.0, 0.0, 0.0]);
    assert_eq!(a.ne(&b).to_vec().unwrap(), [1.0, 0.0, 1.0, 1.0]);
    assert_eq!(a.gt_scalar(1.5).to_vec().unwrap(), [0.0, 1.0, 1.0, 0.0]);
    assert_eq!(a.ne_scalar(2.0).to_vec().unwrap(), [1.0, 0.0, 1.0, 1.0]);
    let x = t(&[-1.0, 5.0, 2.0, -3.0], &[2, 2]);
    assert_eq!(x.masked_fill(&x.lt_scalar(0.0), 0.0).to_vec().unwrap(), [0.0, 5.0, 2.0, 0.0]);
    // Broadcast condition, and the gradient goes to the side taken.
    let cond = t(&[1.0, 0.0], &[2]);
    let (on, off) = (t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]).requires_grad(), t(&[10.0], &[1]).requires_grad());
    let y = cond.where_cond(&on, &off);
    assert_eq!(y.to_vec().unwrap(), [1.0, 10.0, 3.0, 10.0]);
    let g = y.sum().backward();
    assert_eq!(g.get(&on).unwrap().to_vec().unwrap(), [1.0, 0.0, 1.0, 0.0]);
    assert_eq!(g.get(&off).unwrap().to_vec().unwrap(), [2.0]);
    check("where_cond", |v| cond.where_cond(&v[0], &v[1]), &[rand(&[3, 2], -1.0, 1.0, 1), rand(&[2], -1.0, 1.0, 2)]);
    for (i, &n) in SIZES.iter().enumerate() {
        let s = 100 + i as u64;
        let (x, y) = (rand(&[n, 3], -1.0, 1.0, s), rand(&[n, 3], -1.0, 1.0, s + 1));
        parity("lt", 0.0, &[], &[x.clone(), y.clone()], |_, c| c[0].lt(&c[1]));
        parity("ne broadcast", 0.0, &[], &[x.clone(), y.narrow(0, 0, 1)], |_, c| c[0].ne(&c[1]));
        parity("le_scalar", 0.0, &[], &[x.clone()], |_, c| c[0].le_scalar(0.25));
        parity("where", 0.0, &[x.clone(), y.clone()], &[], |v, _| v[0].gt_scalar(0.0).where_cond(&v[0], &v[1]));
        let row = rand(&[1, 3], -1.0, 1.0, s + 2);
        parity("where broadcast", 0.0, &[row, y.clone()], &[x.clone()], |v, c| c[0].gt(&v[1]).where_cond(&v[0], &v[1]));
    }
}

#[test]
fn min_var_std() {
    let x = t(&[3.0, -1.0, 2.0, -1.0, 5.0, 0.0], &[2, 3]);
    assert_eq!(x.min().item().unwrap(), -1.0);
    assert_eq!(x.min_dim(1, false).to_vec().unwrap(), [-1.0, -1.0]);
    assert_eq!(x.argmin(1, false).to_vec().unwrap(), [1.0, 0.0]);
    assert_eq!(x.argmin(0, true).to_vec().unwrap(), [1.0, 0.0, 1.0]);
    // The two minima share the gradient, as in PyTorch's `min()`.
    let v = x.clone().requires_grad();
    assert_eq!(v.min().backward().get(&v).unwrap().to_vec().unwrap(), [0.0, 0.5, 0.0, 0.5, 0.0, 0.0]);
    // Rows [3, -1, 2] and [-1, 5, 0], both of mean 4/3: Σd² = 78/9 and 186/9.
    assert_close(&x.var_dim(1, false, 1).to_vec().unwrap(), &[78.0 / 18.0, 186.0 / 18.0], 1e-5, 1e-6, "var");
    assert_close(&x.var_dim(1, true, 0).to_vec().unwrap(), &[78.0 / 27.0, 186.0 / 27.0], 1e-5, 1e-6, "var pop");
    let all = [3.0f32, -1.0, 2.0, -1.0, 5.0, 0.0];
    let mean = all.iter().sum::<f32>() / 6.0;
    let want = all.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 5.0;
    assert_close(&[x.var().item().unwrap()], &[want], 1e-5, 1e-6, "var all");
    assert_close(&[x.std().item().unwrap()], &[want.sqrt()], 1e-5, 1e-6, "std all");
    let away = t(&[0.3, -1.2, 2.0, 1.1, -0.4, 0.9, 1.7, -2.2], &[2, 4]);
    check("min_dim", |v| v[0].min_dim(1, false), &[away.clone()]);
    check("var_dim", |v| v[0].var_dim(1, false, 1), &[away.clone()]);
    check("std_dim", |v| v[0].std_dim(0, true, 0), &[away.clone()]);
    for (i, &n) in SIZES.iter().enumerate() {
        let x = rand(&[n, 17], -1.0, 1.0, 200 + i as u64);
        parity("min_dim rows", 0.0, &[x.clone()], &[], |v, _| v[0].min_dim(1, false));
        parity("min_dim cols", 0.0, &[x.clone()], &[], |v, _| v[0].min_dim(0, true));
        parity("argmin", 0.0, &[], &[x.clone()], |_, c| c[0].argmin(1, false));
        parity("var", 1e-4, &[x.clone()], &[], |v, _| v[0].var_dim(1, false, 1));
        parity("std", 1e-4, &[x.clone()], &[], |v, _| v[0].std_dim(0, false, 1));
    }
    // Rows of 300, past one workgroup (32 or 128 lanes), of small integers:
    // ties everywhere, and the first extreme (which takes the index and the
    // gradient) must win across lanes. The last row's only minimum and
    // maximum sit at its end.
    for (i, &n) in [1usize, 3, 5].iter().enumerate() {
        let mut v: Vec<f32> = uniform(&[n, 300], 0.0, 8.0, 250 + i as u64).into_iter().map(f32::floor).collect();
        v[(n - 1) * 300 + 298] = -1.0;
        v[(n - 1) * 300 + 299] = 9.0;
        let x = t(&v, &[n, 300]);
        // The reference itself: the first extreme of each row.
        let first = |pick: fn(f32, f32) -> bool| -> Vec<f32> {
            v.chunks(300)
                .map(|row| (0..300).fold(0, |best, j| if pick(row[j], row[best]) { j } else { best }) as f32)
                .collect()
        };
        assert_eq!(x.argmin(1, false).to_vec().unwrap(), first(|a, b| a < b), "argmin: the first minimum");
        assert_eq!(x.argmax(1, false).to_vec().unwrap(), first(|a, b| a > b), "argmax: the first maximum");
        parity("min_dim rows of 300", 0.0, &[x.clone()], &[], |v, _| v[0].min_dim(1, false));
        parity("argmin rows of 300", 0.0, &[], &[x.clone()], |_, c| c[0].argmin(1, false));
        parity("max_dim rows of 300", 0.0, &[x.clone()], &[], |v, _| v[0].max_dim(1, true));
        parity("argmax rows of 300", 0.0, &[], &[x.clone()], |_, c| c[0].argmax(1, true));
    }
}

#[test]
fn cumsum_both_ways() {
    let x = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    assert_eq!(x.cumsum(1).to_vec().unwrap(), [1.0, 3.0, 6.0, 4.0, 9.0, 15.0]);
    assert_eq!(x.cumsum(0).to_vec().unwrap(), [1.0, 2.0, 3.0, 5.0, 7.0, 9.0]);
    // d/dx_i Σ_j w_j cumsum_j = Σ_{j≥i} w_j.
    let v = x.clone().requires_grad();
    let w = t(&[1.0, 10.0, 100.0, 1.0, 10.0, 100.0], &[2, 3]);
    let g = (&v.cumsum(-1) * &w).sum().backward();
    assert_eq!(g.get(&v).unwrap().to_vec().unwrap(), [111.0, 110.0, 100.0, 111.0, 110.0, 100.0]);
    check("cumsum", |v| v[0].cumsum(1), &[rand(&[3, 5], -1.0, 1.0, 3)]);
    for (i, &n) in [1, 3, 17, 129, 2000].iter().enumerate() {
        let x = rand(&[3, n], -1.0, 1.0, 300 + i as u64);
        parity("cumsum rows", 1e-4 * (n as f32).sqrt(), &[x.clone()], &[], |v, _| v[0].cumsum(1));
        parity("cumsum columns", 1e-4, &[x.clone()], &[], |v, _| v[0].cumsum(0));
    }
}

#[test]
fn sorting_is_stable_and_sorts_nan_as_the_largest() {
    let x = t(&[3.0, f32::NAN, -1.0, 3.0, -0.0, 0.0, f32::NEG_INFINITY], &[7]);
    assert_eq!(x.argsort(0, false).to_vec().unwrap(), [6.0, 2.0, 4.0, 5.0, 0.0, 3.0, 1.0]);
    assert_eq!(x.argsort(0, true).to_vec().unwrap(), [1.0, 0.0, 3.0, 4.0, 5.0, 2.0, 6.0]);
    let (v, i) = t(&[5.0, 1.0, 4.0, 2.0, 8.0, 7.0], &[2, 3]).topk(2, 1, true);
    assert_eq!((v.to_vec().unwrap(), i.to_vec().unwrap()), (vec![5.0, 4.0, 8.0, 7.0], vec![0.0, 2.0, 1.0, 2.0]));
    let (v, _) = t(&[5.0, 1.0, 4.0, 2.0, 8.0, 7.0], &[2, 3]).topk(1, 0, false);
    assert_eq!(v.to_vec().unwrap(), [2.0, 1.0, 4.0]);
    // Gradients reach the elements picked.
    let w = t(&[0.5, -2.0, 1.5], &[3]).requires_grad();
    let (sorted, _) = w.sort(0, false);
    let g = (&sorted * &t(&[1.0, 10.0, 100.0], &[3])).sum().backward();
    assert_eq!(g.get(&w).unwrap().to_vec().unwrap(), [10.0, 1.0, 100.0]);
    check("sort values", |v| v[0].sort(1, true).0, &[rand(&[3, 6], -1.0, 1.0, 4)]);
    let with_ties: Vec<f32> = uniform(&[5, 129], 0.0, 8.0, 5).into_iter().map(f32::floor).collect();
    let ties = t(&with_ties, &[5, 129]);
    for desc in [false, true] {
        parity("argsort rows with ties", 0.0, &[], &[ties.clone()], |_, c| c[0].argsort(1, desc));
        parity("argsort columns with ties", 0.0, &[], &[ties.clone()], |_, c| c[0].argsort(0, desc));
        parity("sort values", 0.0, &[ties.clone()], &[], |v, _| v[0].sort(-1, desc).0);
        parity("topk", 0.0, &[ties.clone()], &[], |v, _| v[0].topk(7, 1, desc).0);
    }
}

#[test]
fn regression_and_binary_losses() {
    let p = t(&[0.5, -1.0, 3.0, 0.0], &[4]);
    let y = t(&[0.0, 1.0, 0.5, 0.0], &[4]);
    // |d| = 0.5, 2, 2.5, 0.
    assert_close(&[p.l1_loss(&y).item().unwrap()], &[5.0 / 4.0], 1e-6, 0.0, "l1");
    // Huber δ = 1: 0.125, 1.5, 2.0, 0.
    assert_close(&[p.huber_loss(&y, 1.0).item().unwrap()], &[3.625 / 4.0], 1e-6, 0.0, "huber");
    // Smooth L1 β = 2: 0.0625, 1.0, 1.5, 0.
    assert_close(&[p.smooth_l1_loss(&y, 2.0).item().unwrap()], &[2.5625 / 4.0], 1e-6, 0.0, "smooth l1");
    // BCE with logits: softplus(x) - x·t.
    let want: f32 = [(0.5f32, 0.0f32), (-1.0, 1.0), (3.0, 0.5), (0.0, 0.0)]
        .iter()
        .map(|&(x, t)| (1.0 + x.exp()).ln() - x * t)
        .sum::<f32>()
        / 4.0;
    assert_close(&[p.binary_cross_entropy_with_logits(&y).item().unwrap()], &[want], 1e-6, 1e-6, "bce logits");
    // Extreme logits stay finite.
    let big = t(&[100.0, -100.0], &[2]);
    let loss = big.binary_cross_entropy_with_logits(&t(&[0.0, 1.0], &[2])).item().unwrap();
    assert_close(&[loss], &[100.0], 1e-4, 0.0, "bce logits ±100");
    let away = t(&[0.3, -1.7, 2.2, 0.9, -0.6, 1.4], &[6]);
    let target = t(&[0.0, 0.2, 0.5, 1.0, 0.1, 0.4], &[6]);
    check("l1", |v| v[0].l1_loss(&v[1]), &[away.clone(), target.clone()]);
    check("huber", |v| v[0].huber_loss(&v[1], 1.0), &[away.clone(), target.clone()]);
    check("smooth_l1", |v| v[0].smooth_l1_loss(&v[1], 0.5), &[away.clone(), target.clone()]);
    check("bce logits", |v| v[0].binary_cross_entropy_with_logits(&v[1]), &[away.clone(), target.clone()]);
    for (i, &n) in SIZES.iter().enumerate() {
        let s = 400 + i as u64;
        let (x, y) = (rand(&[n, 3], -3.0, 3.0, s), rand(&[n, 3], 0.0, 1.0, s + 1));
        parity("l1", 1e-4, &[x.clone(), y.clone()], &[], |v, _| v[0].l1_loss(&v[1]));
        parity("huber", 1e-4, &[x.clone(), y.clone()], &[], |v, _| v[0].huber_loss(&v[1], 0.7));
        parity("bce logits", 1e-4, &[x.clone(), y.clone()], &[], |v, _| v[0].binary_cross_entropy_with_logits(&v[1]));
    }
}

#[test]
fn cross_entropy_with_smoothing_and_weights() {
    let logits = t(&[2.0, 0.5, -1.0, 0.0, 1.0, 3.0], &[2, 3]);
    let y = t(&[0.0, 2.0], &[2]);
    let logp: Vec<Vec<f32>> = logits.log_softmax(1).to_vec2().unwrap();
    // Smoothing ε = 0.1 over 3 classes: (1-ε)·nll + ε·mean_c(-log p).
    let eps = 0.1;
    let row = |r: usize, label: usize| (1.0 - eps) * -logp[r][label] + eps * -logp[r].iter().sum::<f32>() / 3.0;
    let want = (row(0, 0) + row(1, 2)) / 2.0;
    let opts = CrossEntropyOptions { label_smoothing: eps, ..Default::default() };
    assert_close(&[logits.cross_entropy_with(&y, opts).item().unwrap()], &[want], 1e-6, 1e-6, "smoothed");
    // Weights: Σ w_y·nll / Σ w_y.
    let w = t(&[1.0, 2.0, 0.5], &[3]);
    let want = (1.0 * -logp[0][0] + 0.5 * -logp[1][2]) / 1.5;
    let opts = CrossEntropyOptions { weight: Some(&w), ..Default::default() };
    assert_close(&[logits.cross_entropy_with(&y, opts).item().unwrap()], &[want], 1e-6, 1e-6, "weighted");
    // The defaults are the fused cross_entropy.
    let plain = logits.cross_entropy_with(&y, CrossEntropyOptions::default()).item().unwrap();
    assert_eq!(plain, logits.cross_entropy(&y).item().unwrap());
    let both = CrossEntropyOptions { label_smoothing: 0.2, weight: Some(&w), ignore_index: None };
    let x = rand(&[4, 3], -2.0, 2.0, 6);
    let labels4 = t(&[0.0, 2.0, 1.0, 2.0], &[4]);
    let opts = GradcheckOptions::default();
    gradcheck_with(|v| v[0].cross_entropy_with(&labels4, both), &[x], opts).unwrap();
    for (i, &n) in SIZES.iter().enumerate() {
        let x = rand(&[n, 10], -3.0, 3.0, 500 + i as u64);
        let l = labels(n, 10, 501 + i as u64, &Device::Cpu);
        let w = rand(&[10], 0.5, 2.0, 502);
        parity("ce smoothed weighted", 1e-4, &[x.clone()], &[l, w], |v, c| {
            v[0].cross_entropy_with(
                &c[0],
                CrossEntropyOptions { label_smoothing: 0.1, weight: Some(&c[1]), ignore_index: None },
            )
        });
    }
}

#[test]
fn construction_printing_and_shapes() {
    let dev = Device::Cpu;
    let x = Tensor::new([[1.0, 2.0], [3.0, 4.0]], &dev).unwrap();
    assert_eq!(x.to_string(), "tensor([[1., 2.],\n        [3., 4.]])");
    assert_eq!(Tensor::new(vec![[[1.0f32]; 2]; 3], &dev).unwrap().dims(), &[3, 2, 1]);
    assert_eq!(x.to_vec2().unwrap(), vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
    assert_eq!(x.reshape((1, 2, 2)).to_vec3().unwrap(), vec![vec![vec![1.0, 2.0], vec![3.0, 4.0]]]);
    assert_eq!(Tensor::zeros((2, 3, 4), &dev).dims(), &[2, 3, 4]);
    assert_eq!(x.unsqueeze(-1).dims(), &[2, 2, 1]);
    assert_eq!(x.unsqueeze(-3).dims(), &[1, 2, 2]);
    assert_eq!(x.permute(&[-1, 0]).to_vec().unwrap(), [1.0, 3.0, 2.0, 4.0]);
    if let Some(g) = gpu() {
        let s = x.to_device(&g).unwrap().requires_grad().to_string();
        assert!(s.ends_with(", device=gpu, requires_grad=true)"), "{s}");
    }
}
