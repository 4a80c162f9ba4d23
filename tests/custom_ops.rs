//! Custom ops: their backward rule is used, gradient-checks, runs on the
//! device of the forward, and a wrong rule is caught naming the op.

mod common;

use wgrad::{CustomOp, Device, GradcheckOptions, Tensor, gradcheck_with};

/// log(1 + eˣ) with its derivative σ(x) written out, the forward computed on
/// the host (through a read back), which a custom op may do.
struct Softplus;

impl CustomOp for Softplus {
    fn name(&self) -> &'static str {
        "softplus"
    }
    fn forward(&self, inputs: &[Tensor]) -> Tensor {
        let x = &inputs[0];
        let v: Vec<f32> = x.to_vec().unwrap().iter().map(|&v| (1.0 + v.exp()).ln()).collect();
        Tensor::from_vec(v, x.shape().clone(), &x.device()).unwrap()
    }
    fn backward(&self, inputs: &[Tensor], _: &Tensor, grad: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(grad * &inputs[0].sigmoid())]
    }
}

/// Forward `x·y`, backward only for `x`, and a marker that the rule ran.
struct Scale;

impl CustomOp for Scale {
    fn name(&self) -> &'static str {
        "scale"
    }
    fn forward(&self, inputs: &[Tensor]) -> Tensor {
        &inputs[0] * &inputs[1]
    }
    fn backward(&self, inputs: &[Tensor], _: &Tensor, grad: &Tensor) -> Vec<Option<Tensor>> {
        // Deliberately not the true gradient: 100 · y, so a test sees it ran.
        vec![Some(grad * &(&inputs[1] * 100.0)), None]
    }
}

struct WrongCount;

impl CustomOp for WrongCount {
    fn name(&self) -> &'static str {
        "wrong_count"
    }
    fn forward(&self, inputs: &[Tensor]) -> Tensor {
        inputs[0].clone()
    }
    fn backward(&self, _: &[Tensor], _: &Tensor, grad: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(grad.clone()), Some(grad.clone())]
    }
}

fn custom_ops_use_their_own_backward(dev: &Device) {
    let x = Tensor::from_vec(vec![-2.0, 0.3, 1.7], [3], dev).unwrap();
    let opts = GradcheckOptions { eps: 1e-2, atol: 2e-3, rtol: 1e-2 };
    gradcheck_with(|v| Tensor::apply(Softplus, &[&v[0]]), std::slice::from_ref(&x), opts).unwrap();
    // The rule given is the one used, and None means no gradient.
    let (a, b) = (x.clone().requires_grad(), Tensor::full([3], 2.0, dev).requires_grad());
    let grads = Tensor::apply(Scale, &[&a, &b]).sum().backward();
    assert_eq!(grads.get(&a).unwrap().device(), *dev, "the gradient is on the device of the forward");
    assert_eq!(grads.get(&a).unwrap().to_vec().unwrap(), [200.0; 3]);
    assert!(grads.get(&b).is_none());
    // Untracked inputs record nothing.
    assert!(!Tensor::apply(Softplus, &[&x]).is_tracked());
    // A rule returning the wrong number of gradients is named.
    let v = x.clone().requires_grad();
    let out = Tensor::apply(WrongCount, &[&v]).sum();
    let msg = common::panic_message_of(|| drop(out.backward()));
    assert!(msg.starts_with("backward of `wrong_count`: 2 gradients for 1 inputs"), "{msg}");
}
test_device!(custom_ops_use_their_own_backward);
