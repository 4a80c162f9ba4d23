//! The seed lesson's from-scratch network: a 2-4-1 sigmoid network learns
//! XOR with mean squared error and plain gradient descent, printing the loss
//! every 100 epochs as the lesson does.
//!
//!     cargo run --release --example xor

use wgrad::{Device, Tensor, manual_seed, no_grad};

fn main() -> wgrad::Result<()> {
    let dev = Device::Cpu;
    manual_seed(1);
    let x = Tensor::from_vec(vec![0., 0., 0., 1., 1., 0., 1., 1.], [4, 2], &dev)?;
    let y = Tensor::from_vec(vec![0., 1., 1., 0.], [4, 1], &dev)?;
    let w1 = Tensor::randn([2, 4], &dev).requires_grad();
    let b1 = Tensor::zeros([4], &dev).requires_grad();
    let w2 = Tensor::randn([4, 1], &dev).requires_grad();
    let b2 = Tensor::zeros([1], &dev).requires_grad();
    let params = [&w1, &b1, &w2, &b2];
    let forward = || (x.matmul(&w1) + &b1).sigmoid().matmul(&w2).add(&b2).sigmoid();
    let learning_rate = 2.0;
    for epoch in 0..1000 {
        // Forward pass and loss (mean squared error).
        let loss = forward().mse_loss(&y);
        if epoch % 100 == 0 {
            println!("Epoch {epoch}, Loss: {:.4}", loss.item()?);
        }
        // Backward pass, then weights -= learning_rate * gradient.
        let grads = loss.backward();
        no_grad(|| {
            for p in params {
                p.assign(&(&p.detach() - &(grads.get(p).expect("a gradient") * learning_rate)));
            }
        });
    }
    let out = forward().to_vec()?;
    println!("predictions for (0,0) (0,1) (1,0) (1,1): {:.3?}", out);
    Ok(())
}
