//! Numerically hostile inputs on each device: softmax, log-softmax and
//! cross-entropy stay finite for logits of ±1e4 and for a one-hot spread of
//! 1e30; binary cross-entropy's logs are guarded at 0 and 1; anomaly
//! detection names the op that made a NaN.

mod common;

use wgrad::{Device, Tensor, detect_anomaly};

fn finite(name: &str, t: &Tensor) {
    for v in t.to_vec().unwrap() {
        assert!(v.is_finite(), "{name}: {v}");
    }
}

fn extreme_logits_stay_finite(dev: &Device) {
    let cases = [
        vec![1e4, -1e4, 0.0, -1e4, 1e4, 1e4],
        // One-hot spreads of 1e30: one huge logit, the rest 0.
        vec![1e30, 0.0, 0.0, 0.0, -1e30, 0.0],
    ];
    for values in cases {
        let x = Tensor::from_vec(values, [2, 3], dev).unwrap().requires_grad();
        let labels = Tensor::from_vec(vec![0.0, 1.0], [2], dev).unwrap();
        finite("softmax", &x.softmax(1));
        finite("log_softmax", &x.log_softmax(1));
        let loss = x.cross_entropy(&labels);
        finite("cross_entropy", &loss);
        finite("cross_entropy gradient", loss.backward().get(&x).unwrap());
        let ls = x.log_softmax(-1);
        finite("log_softmax gradient", ls.sum().backward().get(&x).unwrap());
    }
    // The one-hot case by hand: softmax is exactly one-hot, and the loss of
    // the right label is 0.
    let x = Tensor::from_vec(vec![1e30, 0.0, 0.0], [1, 3], dev).unwrap();
    assert_eq!(x.softmax(1).to_vec().unwrap(), vec![1.0, 0.0, 0.0]);
    let zero = Tensor::from_vec(vec![0.0], [1], dev).unwrap();
    assert_eq!(x.cross_entropy(&zero).item().unwrap(), 0.0);
}
test_device!(extreme_logits_stay_finite);

fn bce_is_guarded_at_zero_and_one(dev: &Device) {
    let p = Tensor::from_vec(vec![0.0, 1.0, 1.0, 0.0], [4], dev).unwrap().requires_grad();
    let t = Tensor::from_vec(vec![1.0, 0.0, 1.0, 0.0], [4], dev).unwrap();
    let loss = p.binary_cross_entropy(&t);
    common::assert_close(&[loss.item().unwrap()], &[50.0], 1e-3, 1e-6, "two logs at the -100 floor, over 4");
    finite("bce gradient", loss.backward().get(&p).unwrap());
}
test_device!(bce_is_guarded_at_zero_and_one);

fn anomaly_detection_names_the_op(dev: &Device) {
    let x = Tensor::from_vec(vec![4.0, -1.0], [2], dev).unwrap().requires_grad();
    let err = detect_anomaly(|| x.sqrt().mul_scalar(2.0).sum()).unwrap_err();
    assert!(err.to_string().contains("`sqrt`") && err.to_string().contains("NaN"), "{err}");
    let fine = detect_anomaly(|| x.exp().sum().item().unwrap()).unwrap();
    assert!(fine.is_finite());
}
test_device!(anomaly_detection_names_the_op);
