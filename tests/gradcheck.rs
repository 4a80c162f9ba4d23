//! Every differentiable op's backward rule against central finite
//! differences on the CPU backend, at several shapes including size-1 and
//! broadcast axes.
//!
//! Tolerances are `GradcheckOptions::default()` (eps 1e-2, atol 1e-3, rtol
//! 1e-2; see its docs for why) unless a check says otherwise. Inputs are
//! drawn well away from kinks (relu, abs, max, clamp) so that ±eps never
//! crosses one, and away from poles (log, div, sqrt, powf near 0).

// Input lists are built fresh for each check; `&[x.clone()]` reads better
// than `std::slice::from_ref(&x)` next to `&[a.clone(), b.clone()]`.
#![allow(clippy::cloned_ref_to_slice_refs)]

mod common;

use common::{away_from_zero, labels, rand};
use wgrad::{Device, GradcheckOptions, Tensor, gradcheck, gradcheck_with, manual_seed};

fn check(name: &str, f: impl Fn(&[Tensor]) -> Tensor, inputs: &[Tensor]) {
    if let Err(e) = gradcheck(f, inputs) {
        panic!("{name}: {e}");
    }
}

/// Shapes for unary ops: scalar-like, vector, size-1 axes, 3-D.
const SHAPES: &[&[usize]] = &[&[1], &[7], &[3, 1], &[2, 3, 4], &[1, 5, 1]];

#[test]
fn unary_math() {
    for (i, &s) in SHAPES.iter().enumerate() {
        let seed = i as u64;
        let x = rand(s, -1.5, 1.5, seed);
        let pos = rand(s, 0.5, 2.0, seed + 100);
        check("neg", |v| v[0].neg(), &[x.clone()]);
        check("exp", |v| v[0].exp(), &[x.clone()]);
        check("log", |v| v[0].log(), &[pos.clone()]);
        check("sqrt", |v| v[0].sqrt(), &[pos.clone()]);
        check("powf 3", |v| v[0].powf(3.0), &[x.clone()]);
        check("powf -1.5", |v| v[0].powf(-1.5), &[pos.clone()]);
        check("recip", |v| v[0].recip(), &[pos.clone()]);
        check("sqr", |v| v[0].sqr(), &[x.clone()]);
        check("abs", |v| v[0].abs(), &[away_from_zero(s, 0.05, seed)]);
        check("add_scalar", |v| v[0].add_scalar(2.5), &[x.clone()]);
        check("sub_scalar", |v| &v[0] - 2.5, &[x.clone()]);
        check("mul_scalar", |v| v[0].mul_scalar(-3.0), &[x.clone()]);
        check("div_scalar", |v| &v[0] / 4.0, &[x.clone()]);
        check("scalar - x", |v| 2.0 - &v[0], &[x.clone()]);
        check("scalar / x", |v| 2.0 / &v[0], &[pos.clone()]);
    }
}

#[test]
fn activations() {
    for (i, &s) in SHAPES.iter().enumerate() {
        let seed = 10 + i as u64;
        let x = rand(s, -3.0, 3.0, seed);
        check("relu", |v| v[0].relu(), &[away_from_zero(s, 0.05, seed)]);
        check("sigmoid", |v| v[0].sigmoid(), &[x.clone()]);
        check("tanh", |v| v[0].tanh(), &[x.clone()]);
        check("gelu", |v| v[0].gelu(), &[x.clone()]);
        check("gelu_tanh", |v| v[0].gelu_tanh(), &[x.clone()]);
    }
}

#[test]
fn scalar_bounds() {
    // Grid values (odd tenths) are 0.1 from every bound used here, so
    // ±eps = 0.01 never crosses one.
    let x = grid(&[4, 5], 0.1, 3);
    check("maximum_scalar", |v| v[0].maximum_scalar(0.0), &[x.clone()]);
    check("minimum_scalar", |v| v[0].minimum_scalar(0.0), &[x.clone()]);
    check("clamp", |v| v[0].clamp(-0.4, 0.6), &[x.clone()]);
}

#[test]
fn binary_with_broadcasting() {
    let pairs: &[(&[usize], &[usize])] = &[
        (&[5], &[5]),
        (&[3, 4], &[4]),
        (&[3, 4], &[3, 1]),
        (&[1], &[2, 3]),
        (&[2, 1, 4], &[3, 1]),
        (&[1, 3, 1], &[2, 1, 5]),
    ];
    for (i, &(sa, sb)) in pairs.iter().enumerate() {
        let seed = 20 + i as u64;
        let a = rand(sa, -2.0, 2.0, seed);
        let b = rand(sb, -2.0, 2.0, seed + 1);
        let pos_b = rand(sb, 0.5, 2.0, seed + 2);
        check("add", |v| &v[0] + &v[1], &[a.clone(), b.clone()]);
        check("sub", |v| &v[0] - &v[1], &[a.clone(), b.clone()]);
        check("mul", |v| &v[0] * &v[1], &[a.clone(), b.clone()]);
        check("div", |v| &v[0] / &v[1], &[a.clone(), pos_b.clone()]);
        // On interleaved grids (multiples of 0.2, and those plus 0.1) every
        // pair differs by at least 0.1, so ±eps never reaches a tie.
        let (ga, gb) = (grid(sa, 0.1, seed + 3), grid(sb, 0.0, seed + 4));
        check("maximum", |v| v[0].maximum(&v[1]), &[ga.clone(), gb.clone()]);
        check("minimum", |v| v[0].minimum(&v[1]), &[ga.clone(), gb.clone()]);
    }
}

/// Values `0.2·k + offset` for random integers k in -5..5.
fn grid(shape: &[usize], offset: f32, seed: u64) -> Tensor {
    let v: Vec<f32> = common::uniform(shape, -5.0, 5.0, seed).iter().map(|x| x.floor() * 0.2 + offset).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn maximum_and_minimum_pick_the_right_side() {
    // a and b interleave with a gap of at least 0.3 between them.
    let a = Tensor::from_vec(vec![0.0, 1.0, -1.0, 2.0], [4], &Device::Cpu).unwrap();
    let b = Tensor::from_vec(vec![0.5, 0.2, -0.5, 1.5], [4], &Device::Cpu).unwrap();
    check("maximum", |v| v[0].maximum(&v[1]), &[a.clone(), b.clone()]);
    check("minimum", |v| v[0].minimum(&v[1]), &[a.clone(), b.clone()]);
    let row = Tensor::from_vec(vec![0.5, -0.5], [2, 1], &Device::Cpu).unwrap();
    check("maximum broadcast", |v| v[0].maximum(&v[1]), &[a.clone(), row.clone()]);
}

#[test]
fn reductions() {
    for (i, &s) in [&[6][..], &[3, 4], &[2, 1, 5], &[2, 3, 4]].iter().enumerate() {
        let seed = 40 + i as u64;
        let x = rand(s, -2.0, 2.0, seed);
        check("sum", |v| v[0].sum(), &[x.clone()]);
        check("mean", |v| v[0].mean(), &[x.clone()]);
        check("max", |v| v[0].max(), &[x.clone()]);
        for axis in 0..s.len() {
            for keep in [false, true] {
                check("sum_dim", |v| v[0].sum_dim(axis, keep), &[x.clone()]);
                check("mean_dim", |v| v[0].mean_dim(axis, keep), &[x.clone()]);
                check("max_dim", |v| v[0].max_dim(axis, keep), &[x.clone()]);
            }
        }
        check("sum_dim -1", |v| v[0].sum_dim(-1, true), &[x.clone()]);
    }
}

#[test]
fn softmax_family() {
    for (i, &s) in [&[5][..], &[3, 4], &[2, 3, 4], &[4, 1]].iter().enumerate() {
        let seed = 50 + i as u64;
        let x = rand(s, -3.0, 3.0, seed);
        for axis in 0..s.len() {
            check("softmax", |v| v[0].softmax(axis), &[x.clone()]);
            check("log_softmax", |v| v[0].log_softmax(axis), &[x.clone()]);
        }
    }
}

#[test]
fn matmul_shapes() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 4], &[4, 5]),
        (&[1, 4], &[4, 1]),
        (&[5, 1], &[1, 3]),
        (&[2, 3, 4], &[2, 4, 5]),
        (&[2, 3, 4], &[4, 5]),
        (&[3, 4], &[2, 4, 5]),
        (&[2, 1, 3, 4], &[1, 3, 4, 2]),
        (&[4], &[4, 3]),
        (&[3, 4], &[4]),
        (&[4], &[4]),
    ];
    for (i, &(sa, sb)) in cases.iter().enumerate() {
        let a = rand(sa, -1.0, 1.0, 60 + i as u64);
        let b = rand(sb, -1.0, 1.0, 80 + i as u64);
        check(&format!("matmul {sa:?}x{sb:?}"), |v| v[0].matmul(&v[1]), &[a, b]);
    }
    // The same tensor on both sides: gradients from the two uses accumulate.
    let a = rand(&[4, 4], -1.0, 1.0, 99);
    check("matmul a·a", |v| v[0].matmul(&v[0]), &[a.clone()]);
    check("matmul a·aᵀ", |v| v[0].matmul(&v[0].t()), &[a]);
}

#[test]
fn shape_ops() {
    let x = rand(&[2, 3, 4], -1.0, 1.0, 70);
    check("reshape", |v| v[0].reshape([4, 6]).sqr(), &[x.clone()]);
    check("flatten", |v| v[0].flatten(1, 2).sqr(), &[x.clone()]);
    check("unsqueeze/squeeze", |v| v[0].unsqueeze(1).sqr().squeeze(1), &[x.clone()]);
    check("transpose", |v| v[0].transpose(0, 2).sqr(), &[x.clone()]);
    check("permute", |v| v[0].permute(&[2, 0, 1]).sqr(), &[x.clone()]);
    check("t", |v| v[0].t(), &[rand(&[3, 5], -1.0, 1.0, 71)]);
    check("broadcast_to", |v| v[0].broadcast_to([2, 3, 4]).sqr(), &[rand(&[3, 1], -1.0, 1.0, 72)]);
    check("broadcast_to rank", |v| v[0].broadcast_to([2, 3, 4]), &[rand(&[4], -1.0, 1.0, 73)]);
    for axis in 0..3 {
        let len = x.dims()[axis];
        check("narrow", |v| v[0].narrow(axis, 1, len - 1).sqr(), &[x.clone()]);
    }
    let y = rand(&[2, 1, 4], -1.0, 1.0, 74);
    check("cat", |v| Tensor::cat(&[&v[0], &v[1], &v[0]], 1).sqr(), &[x.clone(), y.clone()]);
    check("cat axis 0", |v| Tensor::cat(&[&v[0], &v[1]], 0).sqr(), &[y.clone(), y.clone()]);
}

#[test]
fn indexing_ops() {
    let x = rand(&[4, 3, 5], -1.0, 1.0, 75);
    let dev = Device::Cpu;
    let idx = Tensor::from_vec(vec![2.0, 0.0, 2.0, 1.0], [4], &dev).unwrap();
    // Repeated indices: their gradients must add up.
    check("index_select 0", |v| v[0].index_select(0, &idx).sqr(), &[x.clone()]);
    check("index_select 1", |v| v[0].index_select(1, &idx).sqr(), &[x.clone()]);
    check("index_select 2", |v| v[0].index_select(-1, &idx).sqr(), &[x.clone()]);
    let g = labels(4 * 2 * 5, 3, 7, &dev).reshape([4, 2, 5]);
    check("gather 1", |v| v[0].gather(1, &g).sqr(), &[x.clone()]);
    let g0 = labels(3 * 3 * 5, 4, 8, &dev).reshape([3, 3, 5]);
    check("gather 0", |v| v[0].gather(0, &g0).sqr(), &[x.clone()]);
}

#[test]
fn losses() {
    for (i, &s) in [&[1][..], &[6], &[3, 4]].iter().enumerate() {
        let seed = 90 + i as u64;
        let p = rand(s, 0.05, 0.95, seed);
        let t = rand(s, 0.0, 1.0, seed + 1);
        check("mse_loss", |v| v[0].mse_loss(&v[1]), &[p.clone(), t.clone()]);
        check("binary_cross_entropy", |v| v[0].binary_cross_entropy(&v[1]), &[p.clone(), t.clone()]);
    }
    for (n, c) in [(1, 2), (5, 3), (8, 10)] {
        let x = rand(&[n, c], -3.0, 3.0, 95 + n as u64);
        let y = labels(n, c, 96 + n as u64, &Device::Cpu);
        check("cross_entropy", |v| v[0].cross_entropy(&y), &[x.clone()]);
        check("cross_entropy_per_sample", |v| v[0].cross_entropy_per_sample(&y), &[x]);
    }
}

#[test]
fn dropout_uses_one_mask_forward_and_backward() {
    let x = rand(&[6, 7], -1.0, 1.0, 97);
    // Reseeding inside f gives every evaluation the same mask.
    check(
        "dropout",
        |v| {
            manual_seed(3);
            v[0].dropout(0.4, true)
        },
        &[x],
    );
}

#[test]
fn compositions_of_several_ops() {
    // A small MLP with every kind of op on the path, checked end to end.
    let x = rand(&[4, 3], -1.0, 1.0, 110);
    let w1 = rand(&[3, 5], -1.0, 1.0, 111);
    let b1 = rand(&[5], -0.5, 0.5, 112);
    let w2 = rand(&[5, 2], -1.0, 1.0, 113);
    let y = labels(4, 2, 114, &Device::Cpu);
    check("mlp", |v| (v[0].matmul(&v[1]) + &v[2]).tanh().matmul(&v[3]).cross_entropy(&y), &[x, w1, b1, w2]);
}

#[test]
fn gradcheck_catches_a_wrong_gradient() {
    // The check itself must fail on a wrong rule: here, a function whose
    // gradient is cut by detach() on one path.
    let x = rand(&[5], 0.5, 1.5, 120);
    let err = gradcheck(|v| &v[0] * &v[0].detach(), &[x]).unwrap_err();
    assert!((err.numeric - 2.0 * err.analytic).abs() < 1e-2 * err.numeric.abs(), "{err}");
}

#[test]
fn gradcheck_options_tighten_the_tolerance() {
    // exp's truncation error at eps=0.1 is ~ eps²/6·e ≈ 5e-3 relative, which a
    // 1e-4 tolerance catches and the default tolerance allows.
    let x = rand(&[3], 0.9, 1.0, 121);
    let coarse = GradcheckOptions { eps: 0.1, atol: 1e-4, rtol: 1e-4 };
    assert!(gradcheck_with(|v| v[0].exp(), &[x.clone()], coarse).is_err());
    assert!(gradcheck_with(|v| v[0].exp(), &[x], GradcheckOptions { eps: 0.1, ..Default::default() }).is_ok());
}

/// Convolutions and pooling are linear (max pooling piecewise, and no step
/// crosses a tie), so central differences carry no truncation error, only
/// f32 rounding (≈1e-5 here): a tolerance ten times tighter than the
/// default's still leaves a margin of ~100, and catches a gradient 1% off.
const LINEAR: GradcheckOptions = GradcheckOptions { eps: 1e-2, atol: 1e-4, rtol: 1e-3 };

fn check_linear(name: &str, f: impl Fn(&[Tensor]) -> Tensor, inputs: &[Tensor]) {
    if let Err(e) = gradcheck_with(f, inputs, LINEAR) {
        panic!("{name}: {e}");
    }
}

#[test]
fn convolutions() {
    use wgrad::{Conv2dOptions as O, Padding};
    let cases: Vec<(&[usize], &[usize], O)> = vec![
        (&[2, 2, 5, 6], &[3, 2, 3, 2], O::default().stride(2).padding((1, 0))),
        (&[1, 4, 7, 5], &[2, 2, 2, 3], O::default().groups(2).dilation(2).padding(1)),
        (&[2, 3, 5, 5], &[3, 1, 3, 3], O::default().groups(3).padding(1)),
        (&[1, 2, 4, 3], &[2, 2, 4, 3], O::default()),
        (&[1, 1, 6, 4], &[2, 1, 2, 3], O::default().padding(Padding::Same)),
        (&[2, 2, 7, 5], &[2, 2, 3, 3], O::default().stride((3, 2)).padding(1)),
    ];
    for (i, (xs, ws, opts)) in cases.into_iter().enumerate() {
        let x = rand(xs, -1.0, 1.0, 700 + i as u64);
        let w = rand(ws, -1.0, 1.0, 720 + i as u64);
        let b = rand(&ws[..1], -1.0, 1.0, 740 + i as u64);
        check_linear(&format!("conv2d {xs:?} {ws:?} {opts:?}"), |v| v[0].conv2d(&v[1], Some(&v[2]), opts), &[x, w, b]);
    }
}

/// Distinct values 0.1 apart in random order, so no ±eps step changes
/// which element of a window is the largest.
fn distinct(shape: &[usize], seed: u64) -> Tensor {
    let keys = common::uniform(shape, 0.0, 1.0, seed);
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
    let mut v = vec![0.0; keys.len()];
    for (rank, &i) in order.iter().enumerate() {
        v[i] = rank as f32 * 0.1 - 1.0;
    }
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn pooling() {
    let x = distinct(&[2, 2, 7, 6], 760);
    check_linear("max_pool2d", |v| v[0].max_pool2d(2, 2, 0), &[x.clone()]);
    check_linear("max_pool2d overlapping, padded", |v| v[0].max_pool2d((3, 2), (2, 1), 1), &[x.clone()]);
    check_linear("avg_pool2d", |v| v[0].avg_pool2d(3, 2, 1, true), &[x.clone()]);
    check_linear("avg_pool2d without the padding", |v| v[0].avg_pool2d(3, (1, 2), 1, false), &[x.clone()]);
    check_linear("adaptive_avg_pool2d 1", |v| v[0].adaptive_avg_pool2d(1), &[x.clone()]);
    check_linear("adaptive_avg_pool2d 3x4", |v| v[0].adaptive_avg_pool2d((3, 4)), &[x.clone()]);
    check_linear("max_pool2d unbatched", |v| v[0].max_pool2d(3, 3, 0), &[distinct(&[1, 6, 7], 761)]);
}

#[test]
fn batch_norm() {
    // Normalising divides by a batch statistic; keep the variance well
    // away from 0 so the differences stay smooth.
    let x = rand(&[4, 3, 2, 3], -2.0, 2.0, 780);
    let w = rand(&[3], 0.5, 1.5, 781);
    let b = rand(&[3], -0.5, 0.5, 782);
    check(
        "batch_norm 4-D",
        |v| v[0].batch_norm(None, None, Some(&v[1]), Some(&v[2]), true, 0.1, 1e-5),
        &[x.clone(), w.clone(), b.clone()],
    );
    let x2 = rand(&[6, 4], -2.0, 2.0, 783);
    check("batch_norm 2-D", |v| v[0].batch_norm(None, None, None, None, true, 0.1, 1e-5), &[x2]);
    // Evaluation mode: an affine map with fixed statistics.
    let (rm, rv) = (rand(&[3], -0.5, 0.5, 784), rand(&[3], 0.5, 2.0, 785));
    check(
        "batch_norm eval",
        |v| v[0].batch_norm(Some(&rm), Some(&rv), Some(&v[1]), Some(&v[2]), false, 0.1, 1e-5),
        &[x, w, b],
    );
}

/// Gradients at the points finite differences stay away from, against the
/// values PyTorch 2.x computes there (worked in its eager mode): BCE with
/// logits at a logit of 0, the standard deviation of equal values,
/// `pow(x, 0)` at 0, ties of a whole-tensor max/min (shared evenly) and of
/// `maximum`/`minimum` (halved), NaN taking a max's gradient, and a
/// variance whose correction leaves no degrees of freedom.
fn gradients_at_kinks_match_pytorch(dev: &Device) {
    let t = |v: &[f32]| Tensor::from_slice(v, [v.len()], dev).unwrap();
    let grad_of = |x: &Tensor, y: Tensor| y.backward().get(x).expect("a gradient").to_vec().unwrap();
    let grads2 = |a: &Tensor, b: &Tensor, y: Tensor| {
        let g = y.backward();
        (g.get(a).unwrap().to_vec().unwrap(), g.get(b).unwrap().to_vec().unwrap())
    };
    let x = t(&[0.0, 0.0]).requires_grad();
    assert_eq!(grad_of(&x, x.binary_cross_entropy_with_logits(&t(&[0.0, 1.0]))), [0.25, -0.25], "{dev:?}: bce");
    // Away from 0 too, and the target's gradient (-x / n).
    let (x, y) = (t(&[1.5, -2.0, 0.25]).requires_grad(), t(&[0.2, 1.0, 0.0]).requires_grad());
    let (gx, gy) = grads2(&x, &y, x.binary_cross_entropy_with_logits(&y));
    let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
    let want: Vec<f32> = [(1.5, 0.2), (-2.0, 1.0), (0.25, 0.0)].iter().map(|&(v, t)| (sig(v) - t) / 3.0).collect();
    common::assert_close(&gx, &want, 1e-6, 1e-5, "bce logits");
    common::assert_close(&gy, &[-0.5, 2.0 / 3.0, -0.25 / 3.0], 1e-6, 1e-5, "bce targets");
    let x = t(&[2.0, 2.0, 2.0]).requires_grad();
    assert_eq!(grad_of(&x, x.std()), [0.0; 3], "{dev:?}: std of equal values");
    let x = Tensor::from_slice(&[1.0, 1.0, 1.0, 3.0], [2, 2], dev).unwrap().requires_grad();
    let g = grad_of(&x, x.std_dim(1, false, 1).sum());
    common::assert_close(&g, &[0.0, 0.0, -0.70710677, 0.70710677], 1e-6, 1e-5, "std_dim");
    let x = t(&[0.0, 1.0]).requires_grad();
    assert_eq!(grad_of(&x, x.powf(0.0).sum()), [0.0, 0.0], "{dev:?}: pow 0");
    let x = t(&[1.0, 3.0, 3.0]).requires_grad();
    assert_eq!(grad_of(&x, x.max()), [0.0, 0.5, 0.5], "{dev:?}: max ties");
    let x = t(&[2.0, 1.0, 1.0, 5.0]).requires_grad();
    assert_eq!(grad_of(&x, x.min()), [0.0, 0.5, 0.5, 0.0], "{dev:?}: min ties");
    let x = t(&[1.0, f32::NAN, 2.0]).requires_grad();
    let m = x.max();
    assert!(m.item().unwrap().is_nan());
    assert_eq!(grad_of(&x, m), [0.0, 1.0, 0.0], "{dev:?}: NaN takes the max's gradient");
    for (nan, want_a, want_b) in [(false, [0.0, 0.5, 1.0], [1.0, 0.5, 0.0]), (true, [0.0, 1.0, 1.0], [1.0, 1.0, 0.0])] {
        let a = t(&[1.0, if nan { f32::NAN } else { 2.0 }, 3.0]).requires_grad();
        let b = t(&[2.0, 2.0, 2.0]).requires_grad();
        assert_eq!(grads2(&a, &b, a.maximum(&b).sum()), (want_a.to_vec(), want_b.to_vec()), "{dev:?}: maximum {nan}");
    }
    let (a, b) = (t(&[1.0, 2.0, 3.0]).requires_grad(), t(&[2.0, 2.0, 2.0]).requires_grad());
    assert_eq!(grads2(&a, &b, a.minimum(&b).sum()), (vec![1.0, 0.5, 0.0], vec![0.0, 0.5, 1.0]), "{dev:?}: minimum");
    assert_eq!(t(&[1.0, 3.0]).var_dim(0, false, 3).item().unwrap(), f32::INFINITY, "{dev:?}: var, correction > n");
}
test_device!(gradients_at_kinks_match_pytorch);

/// GELU's tanh approximation and its gradient against PyTorch's
/// `gelu(x, approximate='tanh')` (values from PyTorch 2.x, float32).
fn gelu_tanh_matches_pytorch(dev: &Device) {
    let x = Tensor::from_slice(&[-6.0, -3.0, -1.0, -0.5, 0.0, 0.3, 1.0, 2.5, 8.0], [9], dev).unwrap().requires_grad();
    let y = x.gelu_tanh();
    let want = [-0.0, -0.003637433, -0.158808, -0.154286, 0.0, 0.18537094, 0.841192, 2.4849157, 8.0];
    common::assert_close(&y.to_vec().unwrap(), &want, 1e-6, 1e-5, "gelu_tanh");
    let g = y.sum().backward().get(&x).unwrap().to_vec().unwrap();
    let want = [0.0, -0.011584297, -0.08296409, 0.1326301, 0.5, 0.7322955, 1.0829641, 1.0379517, 1.0];
    common::assert_close(&g, &want, 1e-6, 1e-5, "gelu_tanh gradient");
    // Far out the tanh is ±1: no overflow (x³, x²) on either device.
    let far = Tensor::from_slice(&[1e20, -1e20, 30.0, -30.0], [4], dev).unwrap().requires_grad();
    let y_far = far.gelu_tanh();
    let v = y_far.to_vec().unwrap();
    assert_eq!((v[0], v[1], v[2], v[3]), (1e20, 0.0, 30.0, 0.0), "{dev:?}: {v:?}");
    let g = y_far.sum().backward().get(&far).unwrap().to_vec().unwrap();
    assert_eq!(g, [1.0, 0.0, 1.0, 0.0], "{dev:?}: far gradients");
    // nn::GELUTanh is the same.
    use wgrad::nn::Module;
    assert_eq!(wgrad::nn::GELUTanh.forward(&x).to_vec().unwrap(), y.to_vec().unwrap());
}
test_device!(gelu_tanh_matches_pytorch);
