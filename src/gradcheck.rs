//! Gradient checking: compares the gradients autograd computes with central
//! finite differences, so users can check their own compositions as the test
//! suite checks every op.
//!
//! The function's output is reduced to a scalar with fixed random weights
//! (a vector-Jacobian product, which tests the whole Jacobian with high
//! probability) and the weighted sums are accumulated in f64 on the host, so
//! the only f32 rounding left is that of the function itself.
//!
//! ```
//! use wgrad::{Device, Tensor, gradcheck};
//! let x = Tensor::from_vec(vec![0.3, -1.2, 2.0], [3], &Device::Cpu).unwrap();
//! gradcheck(|v| v[0].tanh() * &v[0], &[x]).unwrap();
//! ```

use crate::rng::Generator;
use crate::{Tensor, no_grad};
use std::fmt;

/// Step and tolerances of a gradient check.
#[derive(Clone, Copy, Debug)]
pub struct GradcheckOptions {
    /// Finite-difference step.
    pub eps: f32,
    /// Absolute tolerance.
    pub atol: f32,
    /// Tolerance relative to the larger of the two gradients.
    pub rtol: f32,
}

impl Default for GradcheckOptions {
    /// `eps = 1e-2` keeps f32 rounding in `f` (relative 6e-8, divided by
    /// 2·eps) near 1e-5, while the central difference's truncation error
    /// (eps²·f'''/6) stays near 1e-5 for inputs of order 1. The tolerances
    /// leave a margin of about a hundred over both.
    fn default() -> Self {
        GradcheckOptions { eps: 1e-2, atol: 1e-3, rtol: 1e-2 }
    }
}

/// A gradient that disagrees with its finite-difference estimate.
#[derive(Clone, Debug, PartialEq)]
pub struct GradcheckError {
    /// Which input.
    pub input: usize,
    /// Which element of it (row-major).
    pub element: usize,
    /// The finite-difference estimate.
    pub numeric: f64,
    /// What autograd computed (0 if it computed no gradient at all).
    pub analytic: f64,
}

impl fmt::Display for GradcheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gradcheck: input {} element {}: autograd gives {:.6}, finite differences {:.6}",
            self.input, self.element, self.analytic, self.numeric
        )
    }
}

impl std::error::Error for GradcheckError {}

/// Checks autograd's gradient of `f` at `inputs` against central
/// differences, with [`GradcheckOptions::default`].
pub fn gradcheck(f: impl Fn(&[Tensor]) -> Tensor, inputs: &[Tensor]) -> Result<(), GradcheckError> {
    gradcheck_with(f, inputs, GradcheckOptions::default())
}

/// As [`gradcheck`], with explicit step and tolerances.
pub fn gradcheck_with(
    f: impl Fn(&[Tensor]) -> Tensor,
    inputs: &[Tensor],
    opts: GradcheckOptions,
) -> Result<(), GradcheckError> {
    let values: Vec<Vec<f32>> =
        inputs.iter().map(|t| t.to_vec().expect("gradcheck: reading an input failed")).collect();
    let make = |vals: &[Vec<f32>], variables: bool| -> Vec<Tensor> {
        inputs
            .iter()
            .zip(vals)
            .map(|(t, v)| {
                let x = Tensor::from_slice(v, t.shape().clone(), &t.device()).expect("gradcheck: same shape");
                if variables { x.requires_grad() } else { x }
            })
            .collect()
    };

    let vars = make(&values, true);
    let out = f(&vars);
    let mut generator = Generator::new(0x9c);
    let weights: Vec<f32> = (0..out.elem_count()).map(|_| generator.uniform() * 2.0 - 1.0).collect();
    let seed = Tensor::from_slice(&weights, out.shape().clone(), &out.device()).expect("gradcheck: same shape");
    let grads = out.backward_with(seed);

    // Σ f(x)·w in f64.
    let weighted = |vals: &[Vec<f32>]| -> f64 {
        let out = no_grad(|| f(&make(vals, false))).to_vec().expect("gradcheck: reading the output failed");
        out.iter().zip(&weights).map(|(&o, &w)| o as f64 * w as f64).sum()
    };

    let mut worst: Option<(f64, GradcheckError)> = None;
    for (i, var) in vars.iter().enumerate() {
        let analytic = match grads.get(var) {
            Some(g) => g.to_vec().expect("gradcheck: reading a gradient failed"),
            None => vec![0.0; var.elem_count()],
        };
        let mut vals = values.clone();
        for (j, &a) in analytic.iter().enumerate() {
            let x0 = vals[i][j];
            vals[i][j] = x0 + opts.eps;
            let plus = weighted(&vals);
            vals[i][j] = x0 - opts.eps;
            let minus = weighted(&vals);
            vals[i][j] = x0;
            let numeric = (plus - minus) / (2.0 * opts.eps as f64);
            let a = a as f64;
            let excess = (numeric - a).abs() - (opts.atol as f64 + opts.rtol as f64 * numeric.abs().max(a.abs()));
            if excess > 0.0 && worst.as_ref().is_none_or(|(w, _)| excess > *w) {
                worst = Some((excess, GradcheckError { input: i, element: j, numeric, analytic: a }));
            }
        }
    }
    match worst {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}
