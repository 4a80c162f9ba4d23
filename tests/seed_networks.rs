//! The seed lessons' tiny networks, trained with plain gradient descent
//! written out by hand (`w -= lr · dL/dw`), as the lessons do in NumPy.

use wgrad::{Device, Gradients, Tensor, manual_seed, no_grad};

fn data(x: &[f32], y: &[f32]) -> (Tensor, Tensor) {
    let dev = Device::Cpu;
    (Tensor::from_vec(x.to_vec(), [4, 2], &dev).unwrap(), Tensor::from_vec(y.to_vec(), [4, 1], &dev).unwrap())
}

fn step(params: &[&Tensor], grads: &Gradients, lr: f32) {
    no_grad(|| {
        for p in params {
            let g = grads.get(p).expect("every parameter gets a gradient");
            p.assign(&(&p.detach() - &(g * lr)));
        }
    });
}

#[test]
fn a_sigmoid_neuron_learns_and() {
    manual_seed(0);
    let (x, y) = data(&[0., 0., 0., 1., 1., 0., 1., 1.], &[0., 0., 0., 1.]);
    let w = Tensor::randn([2, 1], &Device::Cpu).requires_grad();
    let b = Tensor::zeros([1], &Device::Cpu).requires_grad();
    let mut loss = f32::INFINITY;
    for _ in 0..5000 {
        let out = (x.matmul(&w) + &b).sigmoid();
        let l = out.mse_loss(&y);
        loss = l.item().unwrap();
        step(&[&w, &b], &l.backward(), 2.0);
    }
    assert!(loss < 0.01, "AND loss {loss}");
    let pred = (x.matmul(&w) + &b).sigmoid().to_vec().unwrap();
    assert_eq!(pred.iter().map(|&p| (p > 0.5) as u8).collect::<Vec<_>>(), vec![0, 0, 0, 1]);
}

#[test]
fn a_2_4_1_sigmoid_network_learns_xor() {
    manual_seed(1);
    let (x, y) = data(&[0., 0., 0., 1., 1., 0., 1., 1.], &[0., 1., 1., 0.]);
    let dev = Device::Cpu;
    let w1 = Tensor::randn([2, 4], &dev).requires_grad();
    let b1 = Tensor::zeros([4], &dev).requires_grad();
    let w2 = Tensor::randn([4, 1], &dev).requires_grad();
    let b2 = Tensor::zeros([1], &dev).requires_grad();
    let forward = || (x.matmul(&w1) + &b1).sigmoid().matmul(&w2).add(&b2).sigmoid();
    let mut loss = f32::INFINITY;
    for epoch in 0..20_000 {
        let l = forward().mse_loss(&y);
        loss = l.item().unwrap();
        if loss < 0.01 {
            eprintln!("XOR reached loss {loss} after {epoch} epochs");
            break;
        }
        step(&[&w1, &b1, &w2, &b2], &l.backward(), 2.0);
    }
    assert!(loss < 0.01, "XOR loss {loss}");
    let pred = forward().to_vec().unwrap();
    assert_eq!(pred.iter().map(|&p| (p > 0.5) as u8).collect::<Vec<_>>(), vec![0, 1, 1, 0]);
}
