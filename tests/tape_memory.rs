//! A training loop's memory stays flat: after every step the tape holds no
//! entries and the number of live tensors is what it was after the first.
//!
//! The counters are process-wide, so this file holds a single test and runs
//! in its own process.

use wgrad::{Device, Tensor, live_nodes, live_tensors, manual_seed, no_grad};

#[test]
fn ten_thousand_steps_keep_tape_and_tensor_count_flat() {
    manual_seed(0);
    let dev = Device::Cpu;
    let x = Tensor::randn([8, 4], &dev);
    let y = Tensor::from_vec((0..8).map(|i| (i % 3) as f32).collect(), [8], &dev).unwrap();
    let w1 = Tensor::randn([4, 16], &dev).mul_scalar(0.5).requires_grad();
    let b1 = Tensor::zeros([16], &dev).requires_grad();
    let w2 = Tensor::randn([16, 3], &dev).mul_scalar(0.5).requires_grad();
    let params = [&w1, &b1, &w2];
    let mut baseline = None;
    for step in 0..10_000 {
        let h = (x.matmul(&w1) + &b1).relu().dropout(0.1, true);
        let loss = h.matmul(&w2).cross_entropy(&y);
        // Used twice: once for the loss value, once for backward.
        let _ = loss.item().unwrap();
        let grads = loss.backward();
        // h and loss are still alive, but backward took the entries it walked.
        assert_eq!(live_nodes(), 0, "step {step}: backward left tape entries behind");
        no_grad(|| {
            for p in params {
                p.assign(&(&p.detach() - &(grads.get(p).unwrap() * 0.05)));
            }
        });
        drop((h, loss, grads));
        let now = (live_nodes(), live_tensors());
        match baseline {
            None => baseline = Some(now),
            Some(b) => assert_eq!(now, b, "step {step}: (tape entries, live tensors) changed"),
        }
    }
}
