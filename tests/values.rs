//! Forward values and gradients against results derived by hand, so that
//! the gradient checker and the CPU reference are themselves checked.

mod common;

use common::assert_close;
use wgrad::{Device, Error, Tensor, no_grad};

fn t(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
}

fn var(v: &[f32], shape: &[usize]) -> Tensor {
    t(v, shape).requires_grad()
}

fn vals(x: &Tensor) -> Vec<f32> {
    x.to_vec().unwrap()
}

#[test]
fn derivative_of_a_polynomial() {
    // d/dx (x² + 5x) at x = 3 is 2·3 + 5 = 11.
    let x = var(&[3.0], &[]);
    let y = &x * &x + &x * 5.0;
    assert_eq!(y.item().unwrap(), 24.0);
    assert_eq!(vals(y.backward().get(&x).unwrap()), vec![11.0]);
}

#[test]
fn chain_rule_through_exp_and_log() {
    // y = log(exp(2x) + 1) at x = 0: dy/dx = 2·e^0 / (e^0 + 1) = 1.
    let x = var(&[0.0], &[1]);
    let y = ((&x * 2.0).exp() + 1.0).log().sum();
    assert_close(&[y.item().unwrap()], &[2f32.ln()], 1e-6, 0.0, "value");
    assert_close(&vals(y.backward().get(&x).unwrap()), &[1.0], 1e-6, 0.0, "grad");
}

#[test]
fn gradients_accumulate_over_uses() {
    // y = a·b + a with a = 2, b = 4: dy/da = b + 1 = 5, dy/db = a = 2.
    let a = var(&[2.0], &[1]);
    let b = var(&[4.0], &[1]);
    let y = (&a * &b + &a).sum();
    let g = y.backward();
    assert_eq!(vals(g.get(&a).unwrap()), vec![5.0]);
    assert_eq!(vals(g.get(&b).unwrap()), vec![2.0]);
}

#[test]
fn broadcast_gradient_sums_over_the_broadcast_axis() {
    // out[i][j] = x[i][j] + b[j]; d(sum out)/db[j] = number of rows = 3.
    let x = t(&[0.0; 6], &[3, 2]);
    let b = var(&[1.0, 2.0], &[2]);
    let g = (&x + &b).sum().backward();
    assert_eq!(vals(g.get(&b).unwrap()), vec![3.0, 3.0]);
}

#[test]
fn matmul_values_and_gradients() {
    // [[1,2],[3,4]] · [[5,6],[7,8]] = [[19,22],[43,50]]
    let a = var(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let b = var(&[5.0, 6.0, 7.0, 8.0], &[2, 2]);
    let c = a.matmul(&b);
    assert_eq!(vals(&c), vec![19.0, 22.0, 43.0, 50.0]);
    // d(sum C)/dA = 1·Bᵀ: rows of ones times Bᵀ = [[11,15],[11,15]];
    // d(sum C)/dB = Aᵀ·1 = [[4,4],[6,6]].
    let g = c.sum().backward();
    assert_eq!(vals(g.get(&a).unwrap()), vec![11.0, 15.0, 11.0, 15.0]);
    assert_eq!(vals(g.get(&b).unwrap()), vec![4.0, 4.0, 6.0, 6.0]);
}

#[test]
fn batched_matmul_broadcasts_the_batch() {
    let a = t(&[1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 2.0], &[2, 2, 2]); // I and 2I
    let b = t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    assert_eq!(vals(&a.matmul(&b)), vec![1.0, 2.0, 3.0, 4.0, 2.0, 4.0, 6.0, 8.0]);
    assert_eq!(a.matmul(&b).dims(), &[2, 2, 2]);
    let v = t(&[1.0, 1.0], &[2]);
    assert_eq!(vals(&b.matmul(&v)), vec![3.0, 7.0]);
    assert_eq!(vals(&v.matmul(&b)), vec![4.0, 6.0]);
    assert_eq!(v.matmul(&v).dims(), &[] as &[usize]);
}

#[test]
fn softmax_known_values() {
    let x = t(&[0.0, 2f32.ln(), 3f32.ln()], &[3]); // exp: 1, 2, 3
    assert_close(&vals(&x.softmax(0)), &[1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0], 1e-7, 1e-6, "softmax");
    assert_close(
        &vals(&x.log_softmax(-1)),
        &[(1f32 / 6.0).ln(), (2f32 / 6.0).ln(), 0.5f32.ln()],
        1e-6,
        1e-6,
        "log_softmax",
    );
    // Along axis 0 of a 2-D tensor: each column sums to 1.
    let m = t(&[1.0, 5.0, 3.0, -2.0], &[2, 2]);
    let s = vals(&m.softmax(0));
    assert_close(&[s[0] + s[2], s[1] + s[3]], &[1.0, 1.0], 1e-6, 0.0, "columns");
}

#[test]
fn softmax_is_finite_for_extreme_logits() {
    let x = t(&[1e4, -1e4, 0.0, 1e4, 1e4, -1e4], &[2, 3]);
    for v in vals(&x.softmax(1)).into_iter().chain(vals(&x.log_softmax(1))) {
        assert!(v.is_finite() || v == f32::NEG_INFINITY, "{v}");
    }
    let s = vals(&x.softmax(1));
    assert_close(&s, &[1.0, 0.0, 0.0, 0.5, 0.5, 0.0], 1e-6, 0.0, "softmax ±1e4");
    let ls = vals(&x.log_softmax(1));
    assert_close(&ls[..3], &[0.0, -2e4, -1e4], 1e-3, 1e-6, "log_softmax ±1e4");
    let y = t(&[1.0, 0.0], &[2]);
    let ce = x.cross_entropy(&y).item().unwrap();
    // Row 0, label 1: 1e4 - (-1e4) = 2e4. Row 1, label 0: ln 2.
    assert_close(&[ce], &[(2e4 + 2f32.ln()) / 2.0], 1e-2, 1e-6, "cross_entropy ±1e4");
}

#[test]
fn cross_entropy_value_and_gradient() {
    // Logits [0, ln 3] with label 1: p = [1/4, 3/4]; loss = -ln(3/4).
    let x = var(&[0.0, 3f32.ln()], &[1, 2]);
    let y = t(&[1.0], &[1]);
    let loss = x.cross_entropy(&y);
    assert_close(&[loss.item().unwrap()], &[-(0.75f32).ln()], 1e-6, 0.0, "loss");
    // Gradient softmax - onehot = [1/4, -1/4].
    assert_close(&vals(loss.backward().get(&x).unwrap()), &[0.25, -0.25], 1e-6, 0.0, "grad");
}

#[test]
fn binary_cross_entropy_is_finite_at_zero_and_one() {
    let p = var(&[0.0, 1.0, 0.5], &[3]);
    let t = t(&[1.0, 0.0, 1.0], &[3]);
    let loss = p.binary_cross_entropy(&t);
    // Two elements hit the -100 floor, one is ln 2.
    assert_close(&[loss.item().unwrap()], &[(100.0 + 100.0 + 2f32.ln()) / 3.0], 1e-4, 1e-6, "bce");
    for g in vals(loss.backward().get(&p).unwrap()) {
        assert!(g.is_finite(), "bce gradient {g}");
    }
}

#[test]
fn reductions_known_values() {
    let x = t(&[1.0, 5.0, 3.0, 4.0, 2.0, 6.0], &[2, 3]);
    assert_eq!(x.sum().item().unwrap(), 21.0);
    assert_eq!(x.mean().item().unwrap(), 3.5);
    assert_eq!(x.max().item().unwrap(), 6.0);
    assert_eq!(vals(&x.sum_dim(0, false)), vec![5.0, 7.0, 9.0]);
    assert_eq!(x.sum_dim(1, true).dims(), &[2, 1]);
    assert_eq!(vals(&x.max_dim(1, false)), vec![5.0, 6.0]);
    assert_eq!(vals(&x.argmax(1, false)), vec![1.0, 2.0]);
    assert_eq!(vals(&x.argmax(0, false)), vec![1.0, 0.0, 1.0]);
    // Ties: the first maximum is the arg-max and takes max_dim's gradient
    // (torch.max(dim)); the whole-tensor max shares it (torch's max()).
    let tie = var(&[2.0, 7.0, 7.0], &[3]);
    assert_eq!(tie.argmax(0, false).item().unwrap(), 1.0);
    assert_eq!(vals(tie.max_dim(0, false).backward().get(&tie).unwrap()), vec![0.0, 1.0, 0.0]);
    assert_eq!(vals(tie.max().backward().get(&tie).unwrap()), vec![0.0, 0.5, 0.5]);
}

#[test]
fn activations_known_values() {
    let x = t(&[-1.0, 0.0, 2.0], &[3]);
    assert_eq!(vals(&x.relu()), vec![0.0, 0.0, 2.0]);
    assert_close(&vals(&x.sigmoid()), &[0.268_941_4, 0.5, 0.880_797_1], 1e-6, 0.0, "sigmoid");
    assert_close(&vals(&x.tanh()), &[-0.761_594_2, 0.0, 0.964_027_6], 1e-6, 0.0, "tanh");
    // torch.nn.functional.gelu([-1, 0, 2])
    assert_close(&vals(&x.gelu()), &[-0.158_655_3, 0.0, 1.954_5], 1e-6, 0.0, "gelu");
    // Extreme inputs stay finite.
    let big = t(&[-1e4, 1e4], &[2]);
    assert_eq!(vals(&big.sigmoid()), vec![0.0, 1.0]);
    assert_eq!(vals(&big.tanh()), vec![-1.0, 1.0]);
}

#[test]
fn shape_ops_known_values() {
    let x = t(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], &[2, 3]);
    assert_eq!(vals(&x.t()), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    assert_eq!(vals(&x.narrow(1, 1, 2)), vec![1.0, 2.0, 4.0, 5.0]);
    assert_eq!(vals(&Tensor::cat(&[&x, &x.narrow(0, 0, 1)], 0)), vec![0., 1., 2., 3., 4., 5., 0., 1., 2.]);
    let idx = t(&[2.0, 0.0], &[2]);
    assert_eq!(vals(&x.index_select(1, &idx)), vec![2.0, 0.0, 5.0, 3.0]);
    let g = t(&[1.0, 0.0, 2.0, 2.0], &[2, 2]);
    assert_eq!(vals(&x.gather(1, &g)), vec![1.0, 0.0, 5.0, 5.0]);
    assert_eq!(vals(&t(&[1.0, 2.0], &[2, 1]).broadcast_to([2, 3])), vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
    let p = Tensor::arange(0.0, 24.0, &Device::Cpu).reshape([2, 3, 4]).permute(&[2, 0, 1]);
    assert_eq!(p.dims(), &[4, 2, 3]);
    assert_eq!(vals(&p)[..6], [0.0, 4.0, 8.0, 12.0, 16.0, 20.0]);
}

#[test]
fn creation_and_errors() {
    let dev = Device::Cpu;
    assert_eq!(vals(&Tensor::arange_step(1.0, 2.0, 0.25, &dev)), vec![1.0, 1.25, 1.5, 1.75]);
    assert_eq!(vals(&Tensor::full([2], 7.0, &dev)), vec![7.0, 7.0]);
    let err = Tensor::from_vec(vec![1.0; 6], [2, 4], &dev).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }));
    assert_eq!(err.to_string(), "from_vec: 6 values do not fill shape [2, 4] (8 elements)");
    wgrad::manual_seed(1);
    let r = vals(&Tensor::randn([10_000], &dev));
    let mean = r.iter().sum::<f32>() / r.len() as f32;
    let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / r.len() as f32;
    // N(0,1): the mean of 1e4 samples has sd 0.01, the variance sd ≈ 0.014.
    assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.07, "mean {mean} var {var}");
    let u = vals(&Tensor::rand_uniform([1000], -2.0, 3.0, &dev));
    assert!(u.iter().all(|&v| (-2.0..3.0).contains(&v)));
}

#[test]
fn no_grad_and_detach_stop_recording() {
    let w = var(&[1.0, 2.0], &[2]);
    assert!(!no_grad(|| &w * 2.0).is_tracked());
    assert!(!(&w.detach() * 2.0).is_tracked());
    assert!((&w * 2.0).is_tracked());
    // A detached branch contributes no gradient.
    let y = (&w * &w.detach()).sum();
    assert_eq!(vals(y.backward().get(&w).unwrap()), vec![1.0, 2.0]);
}

#[test]
fn assign_updates_every_handle_in_place() {
    let w = var(&[1.0, 2.0], &[2]);
    let view = w.reshape([2, 1]);
    w.assign(&t(&[5.0, 6.0], &[2]));
    assert_eq!(vals(&view), vec![5.0, 6.0]);
}

#[test]
fn dropout_scales_survivors_and_is_reproducible() {
    let x = Tensor::ones([10_000], &Device::Cpu);
    wgrad::manual_seed(4);
    let a = vals(&x.dropout(0.25, true));
    wgrad::manual_seed(4);
    let b = vals(&x.dropout(0.25, true));
    assert_eq!(a, b);
    let kept = a.iter().filter(|&&v| v != 0.0).count();
    assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    // Binomial(1e4, 0.75): sd ≈ 43.
    assert!((kept as i64 - 7500).abs() < 300, "kept {kept}");
    // A second call draws a different mask; eval mode is the identity.
    assert_ne!(vals(&x.dropout(0.25, true)), a);
    assert_eq!(vals(&x.dropout(0.25, false)), vec![1.0; 10_000]);
}

#[test]
fn anomaly_detection_names_the_first_bad_op() {
    let x = var(&[1.0, -1.0], &[2]);
    let err = wgrad::detect_anomaly(|| x.sqrt().sum().backward()).unwrap_err();
    assert!(err.to_string().contains("`sqrt`"), "{err}");
    // In the backward: d sqrt(x)/dx at 0 is infinite.
    let z = var(&[0.0], &[1]);
    let err = wgrad::detect_anomaly(|| z.sqrt().sum().backward()).unwrap_err();
    assert!(err.to_string().contains("backward of `sqrt`"), "{err}");
    // Clean code passes through.
    assert!(wgrad::detect_anomaly(|| x.exp().sum()).is_ok());
    // So do the infinities masks are made of: a causal attention trains
    // under anomaly detection (its -∞ bias is no anomaly; PyTorch checks
    // only backward outputs, for NaN).
    let q = wgrad::Tensor::randn([1, 2, 4, 8], &wgrad::Device::Cpu).requires_grad();
    let ok = wgrad::detect_anomaly(|| wgrad::scaled_dot_product_attention(&q, &q, &q, true).sum().backward());
    assert!(ok.is_ok(), "{:?}", ok.err());
    let masked = wgrad::detect_anomaly(|| x.masked_fill(&x.lt_scalar(0.0), f32::NEG_INFINITY).exp().sum().backward());
    assert!(masked.is_ok(), "{:?}", masked.err());
    // A backward rule that panics (a refused in-place change, caught) does
    // not leave later forward ops named as its backward.
    let after = wgrad::detect_anomaly(|| {
        let mask = x.gt_scalar(0.0);
        let loss = mask.where_cond(&x, &x.neg()).sum();
        mask.assign(&mask.neg());
        let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(loss.backward())));
        assert!(refused.is_err());
        x.masked_fill(&x.lt_scalar(0.0), f32::NEG_INFINITY).sum()
    });
    assert!(after.is_ok(), "{:?}", after.err());
}
