//! Fused optimizer updates, in place: PyTorch's SGD (momentum, Nesterov)
//! and Adam/AdamW, one pass over a parameter, its gradient and its state.

use super::pool::{self, Chunks};
use super::simd::{CHUNK, PAR_MIN, simd};
use crate::backend::UpdateRule;

/// One update of `p` (and its state buffers) from `g`.
pub(super) fn update(rule: UpdateRule, p: &mut [f32], g: &[f32], state: &mut [&mut [f32]]) {
    match rule {
        UpdateRule::Sgd { lr, momentum, weight_decay, nesterov } => {
            if momentum == 0.0 {
                zip_chunks(
                    p,
                    g,
                    &mut [],
                    #[inline(always)]
                    |p, g, _| {
                        for (p, &g) in p.iter_mut().zip(g) {
                            *p -= lr * (g + weight_decay * *p);
                        }
                    },
                );
            } else {
                zip_chunks(
                    p,
                    g,
                    &mut state[..1],
                    #[inline(always)]
                    |p, g, s| {
                        let [buf] = s else { unreachable!("SGD with momentum has one state buffer") };
                        for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
                            let g = g + weight_decay * *p;
                            *b = momentum * *b + g;
                            *p -= lr * if nesterov { g + momentum * *b } else { *b };
                        }
                    },
                );
            }
        }
        UpdateRule::Adam { lr, beta1, beta2, eps, weight_decay, decoupled, bias1, bias2 } => {
            let step = lr / bias1;
            let inv_sqrt_bias2 = 1.0 / bias2.sqrt();
            let (decay, l2) = if decoupled { (1.0 - lr * weight_decay, 0.0) } else { (1.0, weight_decay) };
            zip_chunks(
                p,
                g,
                &mut state[..2],
                #[inline(always)]
                |p, g, s| {
                    let [m, v] = s else { unreachable!("Adam has two state buffers") };
                    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                        let g = g + l2 * *p;
                        *p *= decay;
                        *m = beta1 * *m + (1.0 - beta1) * g;
                        *v = beta2 * *v + (1.0 - beta2) * g * g;
                        *p -= step * *m / (v.sqrt() * inv_sqrt_bias2 + eps);
                    }
                },
            );
        }
    }
}

/// Runs `f` on matching chunks of a parameter, its gradient and its state
/// buffers (all of the parameter's length), over all cores when they are
/// large.
fn zip_chunks(
    p: &mut [f32],
    g: &[f32],
    state: &mut [&mut [f32]],
    f: impl Fn(&mut [f32], &[f32], &mut [&mut [f32]]) + Sync,
) {
    let n = p.len();
    assert!(g.len() == n && state.iter().all(|s| s.len() == n), "optimizer update: buffer lengths differ");
    if n < PAR_MIN {
        simd(
            #[inline(always)]
            || f(p, g, state),
        );
        return;
    }
    let p = Chunks::new(p, CHUNK);
    let state: Vec<Chunks> = state.iter_mut().map(|s| Chunks::new(s, CHUNK)).collect();
    pool::run(p.count(), &|c| {
        // SAFETY: task c takes piece c of each buffer only (`pool::run` runs
        // each task once), and all buffers have the same length, so piece c
        // of each covers the same range.
        let (p, mut s): (_, Vec<&mut [f32]>) = unsafe { (p.get(c), state.iter().map(|s| s.get(c)).collect()) };
        let g = &g[c * CHUNK..(c * CHUNK + p.len())];
        simd(
            #[inline(always)]
            || f(p, g, &mut s),
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_of_different_lengths_are_refused_before_the_unsafe_split() {
        // Long enough to take the parallel path, where piece c of each buffer
        // is taken by pointer: a shorter state buffer would be read past its end.
        let n = PAR_MIN + 5;
        let (mut p, g, mut short) = (vec![0.0; n], vec![1.0; n], vec![0.0; n - 1]);
        let rule = UpdateRule::Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0, nesterov: false };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| update(rule, &mut p, &g, &mut [&mut short])));
        assert!(r.is_err());
        let mut state = vec![0.0; n];
        update(rule, &mut p, &g, &mut [&mut state]);
        assert!(p.iter().all(|&v| (v + 0.1).abs() < 1e-7));
    }
}
