//! The everyday ops, losses and image ops (convolutions, pooling, batch
//! normalisation) against PyTorch's own numbers, on every
//! device: `tests/fixtures/make_torch_reference.py` (PyTorch 2.15) wrote
//! each case's inputs, output, and the gradient of `(out · w).sum()` for
//! fixed weights `w` into `torch_reference.safetensors`.
//!
//! Bounds: 1e-5 absolute plus relative for elementwise work, 2e-5 where
//! sums of a few terms meet (losses, var, cumsum): both are a few f32 ulps
//! at these magnitudes; sort indices and comparisons must match exactly.

mod common;

use std::collections::HashMap;
use wgrad::{Conv2dOptions, CrossEntropyOptions, Device, Padding, Tensor};

type Op = fn(&[Tensor]) -> Tensor;

fn cases() -> Vec<(&'static str, Op, f32)> {
    vec![
        ("where", |v| v[0].gt_scalar(0.0).where_cond(&v[1], &v[2]), 1e-6),
        ("lt", |v| v[0].lt(&v[1]), 0.0),
        ("min_dim", |v| v[0].min_dim(1, false), 1e-6),
        ("argmin", |v| v[0].argmin(0, false), 0.0),
        ("var", |v| v[0].var_dim(1, false, 1), 2e-5),
        ("std", |v| v[0].std_dim(0, true, 1), 2e-5),
        ("var_pop", |v| v[0].var_dim(1, false, 0), 2e-5),
        ("cumsum", |v| v[0].cumsum(1), 2e-5),
        ("cumsum0", |v| v[0].cumsum(0), 2e-5),
        ("sort", |v| v[0].sort(1, false).0, 0.0),
        ("argsort", |v| v[0].argsort(1, false), 0.0),
        ("argsort_desc", |v| v[0].argsort(1, true), 0.0),
        ("topk", |v| v[0].topk(3, 1, true).0, 1e-6),
        ("l1", |v| v[0].l1_loss(&v[1]), 2e-5),
        ("huber", |v| v[0].huber_loss(&v[1], 0.7), 2e-5),
        ("smooth_l1", |v| v[0].smooth_l1_loss(&v[1], 0.5), 2e-5),
        ("bce_logits", |v| v[0].binary_cross_entropy_with_logits(&v[1]), 2e-5),
        (
            "ce_smooth",
            |v| {
                v[0].cross_entropy_with(
                    &v[1],
                    CrossEntropyOptions { label_smoothing: 0.1, weight: None, ignore_index: None },
                )
            },
            2e-5,
        ),
        (
            "ce_weight",
            |v| {
                v[0].cross_entropy_with(
                    &v[1],
                    CrossEntropyOptions { label_smoothing: 0.0, weight: Some(&v[2]), ignore_index: None },
                )
            },
            2e-5,
        ),
        (
            "ce_both",
            |v| {
                v[0].cross_entropy_with(
                    &v[1],
                    CrossEntropyOptions { label_smoothing: 0.2, weight: Some(&v[2]), ignore_index: None },
                )
            },
            2e-5,
        ),
        // Images. Convolutions sum up to 36 products of numbers up to 4 in
        // another order than PyTorch: 1e-4; batch norm divides by a batch
        // statistic: 1e-4; pools take or average a few elements: 2e-5.
        ("conv", |v| v[0].conv2d(&v[1], Some(&v[2]), Conv2dOptions::default().stride((2, 1)).padding((1, 0))), 1e-4),
        ("conv_same_even", |v| v[0].conv2d(&v[1], None, Conv2dOptions::default().padding(Padding::Same)), 1e-4),
        (
            "conv_groups_dilation",
            |v| v[0].conv2d(&v[1], None, Conv2dOptions::default().padding(2).dilation(2).groups(2)),
            1e-4,
        ),
        ("conv_depthwise", |v| v[0].conv2d(&v[1], None, Conv2dOptions::default().stride(2).padding(1).groups(3)), 1e-4),
        ("max_pool", |v| v[0].max_pool2d(3, 2, 1), 0.0),
        ("max_pool_2", |v| v[0].max_pool2d(2, 2, 0), 0.0),
        ("avg_pool", |v| v[0].avg_pool2d(3, 2, 1, true), 2e-5),
        ("avg_pool_exclude", |v| v[0].avg_pool2d((3, 2), (2, 1), 1, false), 2e-5),
        ("adaptive_avg", |v| v[0].adaptive_avg_pool2d((3, 4)), 2e-5),
        ("adaptive_avg_1", |v| v[0].adaptive_avg_pool2d(1), 2e-5),
        ("batch_norm", |v| v[0].batch_norm(Some(&v[3]), Some(&v[4]), Some(&v[1]), Some(&v[2]), true, 0.1, 1e-5), 1e-4),
        (
            "batch_norm_eval",
            |v| v[0].batch_norm(Some(&v[1]), Some(&v[2]), Some(&v[3]), Some(&v[4]), false, 0.1, 1e-5),
            1e-4,
        ),
        ("batch_norm_1d", |v| v[0].batch_norm(None, None, None, None, true, 0.1, 1e-5), 1e-4),
    ]
}

fn matches_pytorch(dev: &Device) {
    let file: HashMap<String, wgrad::io::HostTensor> =
        wgrad::io::read("tests/fixtures/torch_reference.safetensors").unwrap().into_iter().collect();
    let get = |name: &str| file.get(name).unwrap_or_else(|| panic!("{name} missing from the fixture"));
    let tensor = |name: &str| {
        let h = get(name);
        Tensor::from_vec(h.values.clone(), h.shape.clone(), dev).unwrap()
    };
    for (name, op, tol) in cases() {
        let count = (0..).take_while(|i| file.contains_key(&format!("{name}.in{i}"))).count();
        let inputs: Vec<Tensor> = (0..count)
            .map(|i| {
                let t = tensor(&format!("{name}.in{i}"));
                if file.contains_key(&format!("{name}.grad{i}")) { t.requires_grad() } else { t }
            })
            .collect();
        let out = op(&inputs);
        let want = get(&format!("{name}.out"));
        assert_eq!(out.dims(), want.shape.as_slice(), "{name}: shape");
        common::assert_close(&out.to_vec().unwrap(), &want.values, tol, tol, &format!("{name} on {dev:?}"));
        if inputs.iter().any(|t| t.is_variable()) {
            let grads = (&out * &tensor(&format!("{name}.w"))).sum().backward();
            for (i, x) in inputs.iter().enumerate().filter(|(_, t)| t.is_variable()) {
                let want = get(&format!("{name}.grad{i}"));
                let got = grads.get(x).map(|g| g.to_vec().unwrap()).unwrap_or_else(|| vec![0.0; x.elem_count()]);
                common::assert_close(&got, &want.values, tol, tol, &format!("{name} gradient {i} on {dev:?}"));
            }
        }
    }
}
test_device!(matches_pytorch);

/// Two training-mode calls leave the running statistics where PyTorch's
/// leave them (momentum 0.1, the unbiased variance).
fn batch_norm_running_statistics_match_pytorch(dev: &Device) {
    let file: HashMap<String, wgrad::io::HostTensor> =
        wgrad::io::read("tests/fixtures/torch_reference.safetensors").unwrap().into_iter().collect();
    let tensor = |name: &str| {
        let h = &file[name];
        Tensor::from_vec(h.values.clone(), h.shape.clone(), dev).unwrap()
    };
    let (x, w, b) = (tensor("batch_norm.in0"), tensor("batch_norm.in1"), tensor("batch_norm.in2"));
    let (rm, rv) = (tensor("batch_norm.in3"), tensor("batch_norm.in4"));
    x.batch_norm(Some(&rm), Some(&rv), Some(&w), Some(&b), true, 0.1, 1e-5);
    (&x * 2.0 + 1.0).batch_norm(Some(&rm), Some(&rv), Some(&w), Some(&b), true, 0.1, 1e-5);
    common::assert_close(&rm.to_vec().unwrap(), &file["batch_norm.running_mean"].values, 1e-5, 1e-5, "running_mean");
    common::assert_close(&rv.to_vec().unwrap(), &file["batch_norm.running_var"].values, 1e-5, 1e-5, "running_var");
}
test_device!(batch_norm_running_statistics_match_pytorch);
