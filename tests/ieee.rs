//! NaN and ±∞ propagate through every op on the GPU exactly as on the CPU
//! (IEEE-754, and PyTorch where IEEE is silent: NaN wins max/argmax, a NaN
//! row of a softmax is NaN). WGSL lets shader compilers assume floats are
//! finite and lavapipe does, so without explicit handling `x - x` gave 0 for
//! x = ∞, `clamp(NaN)` gave -1, and `maximum(NaN, 0)` gave 0.
//!
//! Each case runs on both devices and compares element by element: NaN
//! where the CPU has NaN, the same infinity where it has one, and finite
//! values within the elementwise parity bound (1e-6 + 1e-5 relative: GPU
//! exp, log and pow differ from the host's by a few ulps, and gelu's
//! gradient near -0.75 cancels two terms of 0.2 to leave 8e-4).

mod common;

use common::gpu;
use wgrad::{Device, Tensor, detect_anomaly};

const NAN: f32 = f32::NAN;
const INF: f32 = f32::INFINITY;

/// The values every case is built from.
const SPECIALS: [f32; 12] = [NAN, INF, -INF, 0.0, -0.0, 1.0, -1.0, 2.5, -0.75, 1e30, -1e30, 88.0];

fn same(what: &str, gpu: &[f32], cpu: &[f32], inputs: &[Vec<f32>]) {
    assert_eq!(gpu.len(), cpu.len(), "{what}");
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let ok = if c.is_nan() {
            g.is_nan()
        } else if c.is_infinite() {
            g == c
        } else {
            g.is_finite() && (g - c).abs() <= 1e-6 + 1e-5 * c.abs()
        };
        if !ok {
            let at: Vec<String> = inputs.iter().map(|v| format!("{}", v[i % v.len()])).collect();
            panic!("{what}: element {i} (inputs {}): gpu {g} vs cpu {c}", at.join(", "));
        }
    }
}

/// Runs `f` on CPU and GPU copies of `inputs` and compares the outputs.
fn check(what: &str, inputs: &[Vec<f32>], shape: &[usize], f: impl Fn(&[Tensor]) -> Tensor) {
    let Some(dev) = gpu() else { return };
    let run = |d: &Device| {
        let ts: Vec<Tensor> = inputs.iter().map(|v| Tensor::from_vec(v.clone(), shape, d).unwrap()).collect();
        f(&ts).to_vec().unwrap()
    };
    same(what, &run(&dev), &run(&Device::Cpu), inputs);
}

/// Every special value, as a column.
fn column() -> Vec<f32> {
    SPECIALS.to_vec()
}

/// All pairs of special values, as two columns.
fn pairs() -> (Vec<f32>, Vec<f32>) {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for &x in &SPECIALS {
        for &y in &SPECIALS {
            a.push(x);
            b.push(y);
        }
    }
    (a, b)
}

#[test]
fn unary_ops() {
    let x = vec![column()];
    let n = [SPECIALS.len()];
    type Op = fn(&Tensor) -> Tensor;
    let ops: [(&str, Op); 23] = [
        ("neg", |t| t.neg()),
        ("exp", |t| t.exp()),
        ("log", |t| t.log()),
        ("sqrt", |t| t.sqrt()),
        ("abs", |t| t.abs()),
        ("relu", |t| t.relu()),
        ("sigmoid", |t| t.sigmoid()),
        ("tanh", |t| t.tanh()),
        ("gelu", |t| t.gelu()),
        ("gelu_tanh", |t| t.gelu_tanh()),
        ("recip", |t| t.recip()),
        ("sqr", |t| t.sqr()),
        ("x - x", |t| t - &t.clone()),
        ("x / x", |t| t / &t.clone()),
        ("x * 0", |t| t * 0.0),
        ("x + -x", |t| t + &t.neg()),
        ("(x + 1) - (x + 1)", |t| {
            let u = t.clone();
            &(t + 1.0) - &(&u + 1.0)
        }),
        ("x == x", |t| t.eq(&t.clone())),
        ("clamp", |t| t.clamp(-1.0, 1.0)),
        ("maximum_scalar", |t| t.maximum_scalar(0.0)),
        ("minimum_scalar", |t| t.minimum_scalar(0.0)),
        ("maximum(x, 0)", |t| t.maximum(&t.zeros_like())),
        ("mul_scalar inf", |t| t * INF),
    ];
    for (name, op) in ops {
        check(name, &x, &n, |t| op(&t[0]));
    }
    for p in [0.0, 1.0, 2.0, 3.0, 0.5, -1.0, -2.0, -0.5, 1.5, INF, -INF, NAN] {
        check(&format!("powf({p})"), &x, &n, |t| t[0].powf(p));
    }
    for s in [NAN, INF, -INF, 0.0] {
        check(&format!("add_scalar({s})"), &x, &n, |t| t[0].add_scalar(s));
        check(&format!("maximum_scalar({s})"), &x, &n, |t| t[0].maximum_scalar(s));
        check(&format!("minimum_scalar({s})"), &x, &n, |t| t[0].minimum_scalar(s));
    }
}

#[test]
fn binary_ops() {
    let (a, b) = pairs();
    let n = [a.len()];
    let x = vec![a, b];
    type Op = fn(&Tensor, &Tensor) -> Tensor;
    let ops: [(&str, Op); 13] = [
        ("add", |a, b| a + b),
        ("sub", |a, b| a - b),
        ("mul", |a, b| a * b),
        ("div", |a, b| a / b),
        ("maximum", |a, b| a.maximum(b)),
        ("minimum", |a, b| a.minimum(b)),
        ("eq", |a, b| a.eq(b)),
        ("ne", |a, b| a.ne(b)),
        ("lt", |a, b| a.lt(b)),
        ("le", |a, b| a.le(b)),
        ("gt", |a, b| a.gt(b)),
        ("ge", |a, b| a.ge(b)),
        ("where", |a, b| a.where_cond(a, b)),
    ];
    for (name, op) in ops {
        check(name, &x, &n, |t| op(&t[0], &t[1]));
        // A broadcast operand takes the strided path of the fused kernel.
        check(&format!("{name} broadcast"), &x, &n, |t| {
            let row = t[1].reshape([SPECIALS.len(), SPECIALS.len()]).narrow(0, 3, 1);
            op(&t[0].reshape([SPECIALS.len(), SPECIALS.len()]), &row).flatten(0, 1)
        });
    }
}

#[test]
fn gradients_of_special_values() {
    let x = vec![column()];
    let n = [SPECIALS.len()];
    type Op = fn(&Tensor) -> Tensor;
    let ops: [(&str, Op); 10] = [
        ("relu", |t| t.relu()),
        ("abs", |t| t.abs()),
        ("clamp", |t| t.clamp(-1.0, 1.0)),
        ("sqrt", |t| t.sqrt()),
        ("tanh", |t| t.tanh()),
        ("sigmoid", |t| t.sigmoid()),
        ("maximum_scalar", |t| t.maximum_scalar(0.5)),
        ("gelu", |t| t.gelu()),
        ("gelu_tanh", |t| t.gelu_tanh()),
        ("powf", |t| t.powf(3.0)),
    ];
    for (name, op) in ops {
        check(&format!("d {name}"), &x, &n, |t| {
            let v = t[0].clone().requires_grad();
            op(&v).sum().backward().remove(&v).unwrap()
        });
    }
}

#[test]
fn reductions_softmax_and_losses() {
    // Rows of 7 holding one special value at every position, and clean rows.
    let mut rows = Vec::new();
    for &s in &SPECIALS {
        for at in 0..7 {
            let mut row = vec![0.5, -2.0, 3.0, 1.0, -1.0, 0.25, 2.0];
            row[at] = s;
            rows.extend(row);
        }
    }
    let mixed: Vec<f32> = [NAN, INF, 1.0, -INF, 2.0, NAN, -INF].to_vec();
    rows.extend(&mixed);
    rows.extend([-INF; 7]);
    rows.extend([INF; 7]);
    // Leading -∞s: the running maximum is -∞ when the next -∞ arrives.
    rows.extend([-INF, -INF, -INF, 0.5, -INF, 2.0, -1.0]);
    let r = rows.len() / 7;
    let x = vec![rows];
    let shape = [r, 7];
    check("sum", &x, &shape, |t| t[0].sum_dim(1, false));
    check("min", &x, &shape, |t| t[0].min_dim(1, false));
    check("argmin", &x, &shape, |t| t[0].argmin(1, false));
    check("argmin over columns", &x, &shape, |t| t[0].argmin(0, false));
    check("cumsum", &x, &shape, |t| t[0].cumsum(1));
    check("cumsum over columns", &x, &shape, |t| t[0].cumsum(0));
    check("argsort", &x, &shape, |t| t[0].argsort(1, false));
    check("argsort descending", &x, &shape, |t| t[0].argsort(1, true));
    check("argsort over columns", &x, &shape, |t| t[0].argsort(0, false));
    check("max", &x, &shape, |t| t[0].max_dim(1, false));
    check("argmax", &x, &shape, |t| t[0].argmax(1, false));
    check("max over columns", &x, &shape, |t| t[0].max_dim(0, false));
    check("argmax over columns", &x, &shape, |t| t[0].argmax(0, false));
    check("softmax", &x, &shape, |t| t[0].softmax(1));
    check("log_softmax", &x, &shape, |t| t[0].log_softmax(1));
    check("softmax over columns", &x, &shape, |t| t[0].softmax(0));
    check("cross_entropy", &x, &shape, |t| {
        let labels = Tensor::from_vec((0..r).map(|i| (i % 7) as f32).collect(), [r], &t[0].device()).unwrap();
        t[0].cross_entropy_per_sample(&labels)
    });
    check("cross_entropy gradient", &x, &shape, |t| {
        let v = t[0].clone().requires_grad();
        let labels = Tensor::from_vec((0..r).map(|i| (i % 7) as f32).collect(), [r], &t[0].device()).unwrap();
        v.cross_entropy(&labels).backward().remove(&v).unwrap()
    });
    // The mean loss (one kernel on the GPU for a small batch): NaN from the
    // rows above; +∞ from a row whose label's logit is -∞ among finite rows
    // (the sum must not turn it into NaN); finite rows with -∞ elsewhere.
    let labels_of = |n: usize, d: &Device| Tensor::from_vec((0..n).map(|i| (i % 7) as f32).collect(), [n], d).unwrap();
    check("mean cross_entropy", &x, &shape, |t| t[0].cross_entropy(&labels_of(r, &t[0].device())));
    let mut finite = Vec::new();
    for i in 0..5 {
        let mut row = vec![0.5, -2.0, 3.0, 1.0, -1.0, 0.25, 2.0];
        row[(i + 3) % 7] = -INF;
        finite.extend(row);
    }
    let finite = vec![finite];
    check("mean cross_entropy, -∞ off the labels", &finite, &[5, 7], |t| {
        t[0].cross_entropy(&labels_of(5, &t[0].device()))
    });
    let mut infinite = finite.clone();
    infinite[0][2 * 7 + 2] = -INF;
    check("mean cross_entropy, -∞ at a label", &infinite, &[5, 7], |t| {
        t[0].cross_entropy(&labels_of(5, &t[0].device()))
    });
}

#[test]
fn long_rows_with_leading_negative_infinity_or_nan_in_several_lanes() {
    // Rows of 263, past a workgroup (so each lane folds several elements):
    // all -∞ but for a few finite values near the end (every lane's running
    // maximum is -∞ long before it meets a finite value, and some lanes
    // meet none); the same with the label's logit at -∞ (an infinite
    // loss); NaN at 8 and 40 (two lanes, or one lane twice) among finite
    // values; and a clean row.
    const N: usize = 263;
    let mut rows = Vec::new();
    let mut tail = vec![-INF; N];
    tail[255] = 0.5;
    tail[258] = -1.0;
    tail[262] = 2.0;
    rows.extend(&tail);
    let mut lone = vec![-INF; N];
    lone[260] = 1.5;
    rows.extend(&lone);
    let clean: Vec<f32> = (0..N).map(|j| ((j * 37) % 23) as f32 * 0.25 - 2.5).collect();
    let mut nans = clean.clone();
    nans[8] = NAN;
    nans[40] = NAN;
    rows.extend(&nans);
    rows.extend(&clean);
    let labels = [262.0, 3.0, 100.0, 7.0];
    let r = labels.len();
    let x = vec![rows];
    let shape = [r, N];
    check("softmax, rows of 263", &x, &shape, |t| t[0].softmax(1));
    check("log_softmax, rows of 263", &x, &shape, |t| t[0].log_softmax(1));
    check("max, rows of 263", &x, &shape, |t| t[0].max_dim(1, false));
    check("argmax, rows of 263", &x, &shape, |t| t[0].argmax(1, false));
    let y = |d: &Device| Tensor::from_vec(labels.to_vec(), [r], d).unwrap();
    check("cross_entropy, rows of 263", &x, &shape, |t| t[0].cross_entropy_per_sample(&y(&t[0].device())));
    check("cross_entropy gradient, rows of 263", &x, &shape, |t| {
        let v = t[0].clone().requires_grad();
        v.cross_entropy_per_sample(&y(&t[0].device())).sum().backward().remove(&v).unwrap()
    });
    check("mean cross_entropy gradient, rows of 263", &x, &shape, |t| {
        let v = t[0].clone().requires_grad();
        v.cross_entropy(&y(&t[0].device())).backward().remove(&v).unwrap()
    });
    check("log_softmax gradient, rows of 263", &x, &shape, |t| {
        let v = t[0].clone().requires_grad();
        v.log_softmax(1).narrow(1, N - 3, 3).sum().backward().remove(&v).unwrap()
    });
    // The CPU reference is itself right: the -∞ entries get probability 0
    // and the finite ones share it all; a NaN row is NaN.
    let p = Tensor::from_vec(x[0].clone(), shape, &Device::Cpu).unwrap().softmax(1).to_vec2().unwrap();
    let e = [0.5f32.exp(), (-1.0f32).exp(), 2.0f32.exp()];
    let want = [e[0] / e.iter().sum::<f32>(), e[1] / e.iter().sum::<f32>(), e[2] / e.iter().sum::<f32>()];
    common::assert_close(&[p[0][255], p[0][258], p[0][262]], &want, 1e-6, 1e-5, "softmax of the -∞ row");
    assert_eq!(p[0].iter().filter(|&&v| v == 0.0).count(), N - 3);
    assert_eq!(p[1][260], 1.0);
    assert!(p[2].iter().all(|v| v.is_nan()), "a row with NaN is NaN");
    let loss = Tensor::from_vec(x[0].clone(), shape, &Device::Cpu).unwrap().cross_entropy_per_sample(&y(&Device::Cpu));
    let loss = loss.to_vec().unwrap();
    assert!(loss[0].is_finite() && loss[1] == INF && loss[2].is_nan() && loss[3].is_finite(), "{loss:?}");
}

#[test]
fn matmul_spreads_nan_and_infinity() {
    // K = 7 (not a multiple of 4: the K tail), a special value in each
    // position of A, B all ones but one column holding ∞ and 0.
    let (m, k, n) = (SPECIALS.len(), 7, 5);
    let a: Vec<f32> = (0..m * k).map(|i| if i % k == i / k % k { SPECIALS[i / k] } else { 0.5 }).collect();
    let mut b = vec![1.0; k * n];
    b[2] = INF;
    b[n + 3] = 0.0;
    let Some(dev) = gpu() else { return };
    let run = |d: &Device| {
        let ta = Tensor::from_vec(a.clone(), [m, k], d).unwrap();
        let tb = Tensor::from_vec(b.clone(), [k, n], d).unwrap();
        ta.matmul(&tb).to_vec().unwrap()
    };
    same("matmul", &run(&dev), &run(&Device::Cpu), std::slice::from_ref(&a));
}

#[test]
fn convolutions_and_pooling_spread_nan_and_infinity() {
    // A 2-channel 6×7 image holding every special value, convolved with a
    // finite weight (forward and both gradients: the weight gradient reads
    // the image, the input gradient a gradient with specials in it), and
    // pooled: a max window with NaN is NaN and its gradient goes to the
    // NaN, a window with ∞ is ∞, averages spread both.
    let Some(dev) = gpu() else { return };
    let x: Vec<f32> =
        (0..2 * 6 * 7).map(|i| if i % 5 == 0 { SPECIALS[i / 5 % 12] } else { (i % 7) as f32 * 0.25 }).collect();
    let gy: Vec<f32> = (0..3 * 6 * 7).map(|i| if i % 11 == 3 { SPECIALS[i / 11 % 12] } else { 0.5 }).collect();
    let w: Vec<f32> = (0..3 * 2 * 3 * 3).map(|i| (i % 5) as f32 * 0.5 - 1.0).collect();
    let run = |d: &Device| {
        let tx = Tensor::from_vec(x.clone(), [1, 2, 6, 7], d).unwrap().requires_grad();
        let tw = Tensor::from_vec(w.clone(), [3, 2, 3, 3], d).unwrap().requires_grad();
        let y = tx.conv2d(&tw, None, wgrad::Conv2dOptions::default().padding(1));
        let g = y.backward_with(Tensor::from_vec(gy.clone(), [1, 3, 6, 7], d).unwrap());
        let px = Tensor::from_vec(x.clone(), [1, 2, 6, 7], d).unwrap().requires_grad();
        let pooled = px.max_pool2d(2, 2, 0);
        let pg = pooled.sum().backward();
        let avg = px.avg_pool2d(3, 2, 1, true);
        [
            y.to_vec().unwrap(),
            g.get(&tx).unwrap().to_vec().unwrap(),
            g.get(&tw).unwrap().to_vec().unwrap(),
            pooled.to_vec().unwrap(),
            pg.get(&px).unwrap().to_vec().unwrap(),
            avg.to_vec().unwrap(),
        ]
    };
    let (g, c) = (run(&dev), run(&Device::Cpu));
    for (what, (a, b)) in
        ["conv2d", "conv2d input grad", "conv2d weight grad", "max_pool2d", "max_pool2d grad", "avg_pool2d"]
            .iter()
            .zip(g.iter().zip(&c))
    {
        same(what, a, b, std::slice::from_ref(&x));
    }
    assert!(c[3].iter().any(|v| v.is_nan()) && c[3].contains(&INF), "the cases must hold NaN and ∞ windows");
}

#[test]
fn optimizers_turn_parameters_nan_as_on_the_cpu() {
    use wgrad::optim::{Adam, Optimizer, Sgd};
    let Some(dev) = gpu() else { return };
    let run = |d: &Device, adam: bool| {
        let w = Tensor::from_vec(column(), [SPECIALS.len()], d).unwrap().requires_grad();
        let mut opt: Box<dyn Optimizer> = if adam {
            Box::new(Adam::new(vec![w.clone()], 0.1))
        } else {
            Box::new(Sgd::new(vec![w.clone()], 0.1).momentum(0.9))
        };
        for _ in 0..2 {
            opt.step(&(&w * &w).sum().backward());
        }
        w.to_vec().unwrap()
    };
    for adam in [false, true] {
        same(if adam { "adam" } else { "sgd" }, &run(&dev, adam), &run(&Device::Cpu, adam), &[column()]);
    }
}

#[test]
fn dropout_keeps_nan_visible() {
    let x = vec![[NAN, INF, -INF, 1.0].repeat(64)];
    check("dropout", &x, &[256], |t| {
        wgrad::manual_seed(3);
        t[0].dropout(0.5, true)
    });
}

fn anomaly_detection_finds_a_nan_born_in_a_fused_kernel(dev: &Device) {
    let x = Tensor::from_vec(vec![1.0, INF, 2.0], [3], dev).unwrap().requires_grad();
    let y = x.clone();
    let err = detect_anomaly(|| (&x - &y).sum()).unwrap_err();
    assert!(err.to_string().contains("`sub`") && err.to_string().contains("NaN"), "{err}");
}
test_device!(anomaly_detection_finds_a_nan_born_in_a_fused_kernel);
