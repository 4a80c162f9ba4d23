//! Elementwise ops: arithmetic with NumPy broadcasting, scalar variants,
//! math functions and activations, and the `+ - * /` operators.

use super::same_device;
use crate::Tensor;
use crate::autograd::BackwardCtx;
use crate::backend::{BinaryOp, Cmp, UnaryOp};
use crate::shape::{Shape, Strided};

impl Tensor {
    /// Applies a unary kernel without recording anything.
    pub(crate) fn map_raw(&self, op: UnaryOp) -> Tensor {
        let storage = self.device().backend().unary(op, &self.read(), self.elem_count());
        Tensor::from_storage(storage, self.shape().clone(), self.device().clone())
    }

    /// Applies a binary kernel with broadcasting, without recording anything.
    pub(crate) fn zip_raw(&self, rhs: &Tensor, op: BinaryOp, name: &str) -> Tensor {
        let (shape, layouts) = broadcast(name, &[self, rhs]);
        let device = self.device();
        let storage = Tensor::with_storages(&[self, rhs], |s| {
            device.backend().binary(op, (s[0], &layouts[0]), (s[1], &layouts[1]))
        });
        Tensor::from_storage(storage, shape, device)
    }

    /// A recorded unary op whose gradient is `grad · dfdx`, with `dfdx`
    /// computed by `rule` from what it reads of the context (the input, or
    /// the output).
    fn unary_op(
        &self,
        name: &'static str,
        op: UnaryOp,
        rule: impl FnOnce(&BackwardCtx) -> Tensor + Send + Sync + 'static,
    ) -> Tensor {
        self.map_raw(op).record(name, &[self], move |c| vec![Some(c.grad * &rule(c))])
    }

    /// Elementwise `self + rhs`, broadcasting.
    pub fn add(&self, rhs: &Tensor) -> Tensor {
        self.zip_raw(rhs, BinaryOp::Add, "add").record("add", &[self, rhs], |c| {
            vec![c.needs[0].then(|| c.grad.sum_to(c.shape(0))), c.needs[1].then(|| c.grad.sum_to(c.shape(1)))]
        })
    }

    /// Elementwise `self - rhs`, broadcasting.
    pub fn sub(&self, rhs: &Tensor) -> Tensor {
        self.zip_raw(rhs, BinaryOp::Sub, "sub").record("sub", &[self, rhs], |c| {
            vec![c.needs[0].then(|| c.grad.sum_to(c.shape(0))), c.needs[1].then(|| c.grad.neg().sum_to(c.shape(1)))]
        })
    }

    /// Elementwise `self * rhs`, broadcasting.
    pub fn mul(&self, rhs: &Tensor) -> Tensor {
        self.zip_raw(rhs, BinaryOp::Mul, "mul").record("mul", &[self, rhs], |c| {
            vec![
                c.needs[0].then(|| (c.grad * c.input(1)).sum_to(c.shape(0))),
                c.needs[1].then(|| (c.grad * c.input(0)).sum_to(c.shape(1))),
            ]
        })
    }

    /// Elementwise `self / rhs`, broadcasting.
    pub fn div(&self, rhs: &Tensor) -> Tensor {
        self.zip_raw(rhs, BinaryOp::Div, "div").record("div", &[self, rhs], |c| {
            vec![
                c.needs[0].then(|| (c.grad / c.input(1)).sum_to(c.shape(0))),
                // d(a/b)/db = -a/b² = -out/b
                c.needs[1].then(|| (c.grad * c.output() / c.input(1)).neg().sum_to(c.shape(1))),
            ]
        })
    }

    /// Elementwise maximum, broadcasting. Where the two are equal each gets
    /// half the gradient, as in PyTorch (`maximum(x, 0)` is not `relu`
    /// there: 0.5 at 0).
    pub fn maximum(&self, rhs: &Tensor) -> Tensor {
        self.zip_raw(rhs, BinaryOp::Max, "maximum")
            .record("maximum", &[self, rhs], |c| tie_split(c, Cmp::Lt, "maximum"))
    }

    /// Elementwise minimum, broadcasting. Where the two are equal each gets
    /// half the gradient, as in PyTorch.
    pub fn minimum(&self, rhs: &Tensor) -> Tensor {
        self.zip_raw(rhs, BinaryOp::Min, "minimum")
            .record("minimum", &[self, rhs], |c| tie_split(c, Cmp::Gt, "minimum"))
    }

    /// 1 where `self == rhs` (broadcasting), else 0; not differentiable.
    /// With `argmax`, counts correct predictions: `pred.eq(&labels).sum()`.
    /// Comparisons with NaN are false (and `ne` true), as IEEE-754 says.
    pub fn eq(&self, rhs: &Tensor) -> Tensor {
        self.zip_raw(rhs, BinaryOp::Cmp(Cmp::Eq), "eq")
    }

    /// 1 where `self != rhs` (broadcasting), else 0.
    pub fn ne(&self, rhs: &Tensor) -> Tensor {
        self.zip_raw(rhs, BinaryOp::Cmp(Cmp::Ne), "ne")
    }

    /// 1 where `self < rhs` (broadcasting), else 0.
    pub fn lt(&self, rhs: &Tensor) -> Tensor {
        self.zip_raw(rhs, BinaryOp::Cmp(Cmp::Lt), "lt")
    }

    /// 1 where `self <= rhs` (broadcasting), else 0.
    pub fn le(&self, rhs: &Tensor) -> Tensor {
        self.zip_raw(rhs, BinaryOp::Cmp(Cmp::Le), "le")
    }

    /// 1 where `self > rhs` (broadcasting), else 0.
    pub fn gt(&self, rhs: &Tensor) -> Tensor {
        self.zip_raw(rhs, BinaryOp::Cmp(Cmp::Gt), "gt")
    }

    /// 1 where `self >= rhs` (broadcasting), else 0.
    pub fn ge(&self, rhs: &Tensor) -> Tensor {
        self.zip_raw(rhs, BinaryOp::Cmp(Cmp::Ge), "ge")
    }

    /// 1 where `self == s`, else 0.
    pub fn eq_scalar(&self, s: f32) -> Tensor {
        self.map_raw(UnaryOp::CmpScalar(Cmp::Eq, s))
    }

    /// 1 where `self != s`, else 0.
    pub fn ne_scalar(&self, s: f32) -> Tensor {
        self.map_raw(UnaryOp::CmpScalar(Cmp::Ne, s))
    }

    /// 1 where `self < s`, else 0.
    pub fn lt_scalar(&self, s: f32) -> Tensor {
        self.map_raw(UnaryOp::CmpScalar(Cmp::Lt, s))
    }

    /// 1 where `self <= s`, else 0.
    pub fn le_scalar(&self, s: f32) -> Tensor {
        self.map_raw(UnaryOp::CmpScalar(Cmp::Le, s))
    }

    /// 1 where `self > s`, else 0.
    pub fn gt_scalar(&self, s: f32) -> Tensor {
        self.map_raw(UnaryOp::CmpScalar(Cmp::Gt, s))
    }

    /// 1 where `self >= s`, else 0.
    pub fn ge_scalar(&self, s: f32) -> Tensor {
        self.map_raw(UnaryOp::CmpScalar(Cmp::Ge, s))
    }

    /// `on_true` where `self` (the condition) is non-zero, else `on_false`,
    /// all three broadcast together: PyTorch's `torch.where(self, a, b)`.
    /// Gradients go to the side each element was taken from; none to the
    /// condition. A NaN condition counts as true (it is not 0).
    ///
    /// ```
    /// use wgrad::{Device, Tensor};
    /// let x = Tensor::from_vec(vec![-2.0, 0.5, 3.0], [3], &Device::Cpu).unwrap();
    /// let y = x.gt_scalar(0.0).where_cond(&x, &Tensor::zeros([], &Device::Cpu));
    /// assert_eq!(y.to_vec().unwrap(), [0.0, 0.5, 3.0]);
    /// ```
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Tensor {
        let (shape, l) = broadcast("where_cond", &[self, on_true, on_false]);
        let device = self.device();
        let storage = Tensor::with_storages(&[self, on_true, on_false], |s| {
            device.backend().select((s[0], &l[0]), (s[1], &l[1]), (s[2], &l[2]))
        });
        // The condition is an input too (never differentiated), so that a
        // backward after it was modified in place refuses, as PyTorch's;
        // its handle is made before the output, as every input's is.
        let cond = self.detach();
        let out = Tensor::from_storage(storage, shape, device);
        out.record("where_cond", &[on_true, on_false, &cond], move |c| {
            let zero = Tensor::zeros([], &c.grad.device());
            let cond = c.input(2);
            vec![
                c.needs[0].then(|| cond.where_cond(c.grad, &zero).sum_to(c.shape(0))),
                c.needs[1].then(|| cond.where_cond(&zero, c.grad).sum_to(c.shape(1))),
                None,
            ]
        })
    }

    /// `value` where `mask` is non-zero, else `self` (PyTorch's
    /// `masked_fill`); `mask` broadcasts against `self`.
    pub fn masked_fill(&self, mask: &Tensor, value: f32) -> Tensor {
        mask.where_cond(&Tensor::full([], value, &self.device()), self)
    }

    /// `self + s`.
    pub fn add_scalar(&self, s: f32) -> Tensor {
        self.map_raw(UnaryOp::AddScalar(s)).record("add_scalar", &[self], |c| vec![Some(c.grad.clone())])
    }

    /// `self - s`.
    pub fn sub_scalar(&self, s: f32) -> Tensor {
        self.add_scalar(-s)
    }

    /// `self · s`.
    pub fn mul_scalar(&self, s: f32) -> Tensor {
        self.map_raw(UnaryOp::MulScalar(s)).record("mul_scalar", &[self], move |c| vec![Some(c.grad.mul_scalar(s))])
    }

    /// `self / s`.
    pub fn div_scalar(&self, s: f32) -> Tensor {
        self.mul_scalar(1.0 / s)
    }

    /// `-self`.
    pub fn neg(&self) -> Tensor {
        self.map_raw(UnaryOp::Neg).record("neg", &[self], |c| vec![Some(c.grad.neg())])
    }

    /// `eˣ`.
    pub fn exp(&self) -> Tensor {
        self.unary_op("exp", UnaryOp::Exp, |c| c.output().clone())
    }

    /// Natural logarithm (`-inf` at 0, NaN below).
    pub fn log(&self) -> Tensor {
        self.map_raw(UnaryOp::Log).record("log", &[self], |c| vec![Some(c.grad / c.input(0))])
    }

    /// Square root.
    pub fn sqrt(&self) -> Tensor {
        self.unary_op("sqrt", UnaryOp::Sqrt, |c| c.output().powf(-1.0).mul_scalar(0.5))
    }

    /// `xᵖ`. For `p = 0` the gradient is 0 everywhere, 0 included (as
    /// PyTorch's: not `0 · 0⁻¹`, which is NaN).
    pub fn powf(&self, p: f32) -> Tensor {
        self.unary_op("powf", UnaryOp::PowScalar(p), move |c| {
            let x = c.input(0);
            if p == 0.0 { Tensor::zeros(x.shape().clone(), &x.device()) } else { x.powf(p - 1.0).mul_scalar(p) }
        })
    }

    /// `1 / x`.
    pub fn recip(&self) -> Tensor {
        self.powf(-1.0)
    }

    /// `x²`.
    pub fn sqr(&self) -> Tensor {
        self.mul(self)
    }

    /// `|x|` (gradient 0 at 0).
    pub fn abs(&self) -> Tensor {
        self.unary_op("abs", UnaryOp::Abs, |c| c.input(0).map_raw(UnaryOp::Sign))
    }

    /// Elementwise `max(x, s)`.
    pub fn maximum_scalar(&self, s: f32) -> Tensor {
        self.unary_op("maximum_scalar", UnaryOp::MaxScalar(s), move |c| {
            c.input(0).map_raw(UnaryOp::InRange(s, f32::INFINITY))
        })
    }

    /// Elementwise `min(x, s)`.
    pub fn minimum_scalar(&self, s: f32) -> Tensor {
        self.unary_op("minimum_scalar", UnaryOp::MinScalar(s), move |c| {
            c.input(0).map_raw(UnaryOp::InRange(f32::NEG_INFINITY, s))
        })
    }

    /// Limits every element to `[lo, hi]`; the gradient passes where the
    /// input was inside the range (bounds included), as in PyTorch.
    pub fn clamp(&self, lo: f32, hi: f32) -> Tensor {
        assert!(lo <= hi, "clamp: lower bound {lo} above upper bound {hi}");
        let out = self.map_raw(UnaryOp::MaxScalar(lo)).map_raw(UnaryOp::MinScalar(hi));
        out.record("clamp", &[self], move |c| vec![Some(c.grad * &c.input(0).map_raw(UnaryOp::InRange(lo, hi)))])
    }

    /// `max(x, 0)`.
    pub fn relu(&self) -> Tensor {
        // The backward is one kernel, `grad · (x > 0)`, rather than a mask
        // and a product (two passes over the activations on the CPU).
        self.map_raw(UnaryOp::Relu).record("relu", &[self], |c| {
            let (g, x) = (c.grad, c.input(0));
            let device = g.device();
            let n = g.elem_count();
            let s = Tensor::with_storages(&[g, x], |s| device.backend().relu_backward(s[0], s[1], n));
            vec![Some(Tensor::from_storage(s, g.shape().clone(), device))]
        })
    }

    /// `1 / (1 + e⁻ˣ)`, computed without overflow.
    pub fn sigmoid(&self) -> Tensor {
        self.unary_op("sigmoid", UnaryOp::Sigmoid, |c| c.output() * &(1.0 - c.output()))
    }

    /// Hyperbolic tangent.
    pub fn tanh(&self) -> Tensor {
        self.unary_op("tanh", UnaryOp::Tanh, |c| 1.0 - &c.output().sqr())
    }

    /// GELU, `x·Φ(x)` with the exact normal CDF (PyTorch's default).
    pub fn gelu(&self) -> Tensor {
        self.unary_op("gelu", UnaryOp::Gelu, |c| c.input(0).map_raw(UnaryOp::GeluGrad))
    }

    /// GELU with the tanh approximation, `x/2 · (1 + tanh(√(2/π)·(x +
    /// 0.044715·x³)))`: PyTorch's `gelu(x, approximate='tanh')`, the
    /// activation GPT-2's weights were trained with (it differs from the
    /// exact [`gelu`](Self::gelu) by up to ~5e-4).
    pub fn gelu_tanh(&self) -> Tensor {
        self.unary_op("gelu_tanh", UnaryOp::GeluTanh, |c| c.input(0).map_raw(UnaryOp::GeluTanhGrad))
    }
}

/// The broadcast of `tensors`' shapes (checked), and each one's layout over
/// it; panics naming `op` when they do not broadcast or live on different
/// devices.
fn broadcast(op: &str, tensors: &[&Tensor]) -> (Shape, Vec<Strided>) {
    let first = tensors[0];
    let mut shape = first.shape().clone();
    for t in &tensors[1..] {
        same_device(op, first, t);
        shape = Shape::broadcast(&shape, t.shape()).unwrap_or_else(|| {
            let shapes: Vec<String> = tensors.iter().map(|t| t.shape().to_string()).collect();
            panic!("{op}: shapes {} cannot be broadcast together", shapes.join(" and "))
        });
    }
    let shape = shape.checked(op);
    let layouts = tensors
        .iter()
        .map(|t| Strided { dims: shape.dims().to_vec(), strides: t.shape().broadcast_strides(&shape), offset: 0 })
        .collect();
    (shape, layouts)
}

/// `impl Op<B> for A` for every combination of owned and borrowed tensors and
/// f32 scalars, delegating to the named methods.
macro_rules! operators {
    ($($trait:ident $method:ident $tensor_fn:ident $scalar_fn:ident;)*) => {$(
        impl std::ops::$trait<&Tensor> for &Tensor {
            type Output = Tensor;
            fn $method(self, rhs: &Tensor) -> Tensor { self.$tensor_fn(rhs) }
        }
        impl std::ops::$trait<Tensor> for Tensor {
            type Output = Tensor;
            fn $method(self, rhs: Tensor) -> Tensor { (&self).$tensor_fn(&rhs) }
        }
        impl std::ops::$trait<&Tensor> for Tensor {
            type Output = Tensor;
            fn $method(self, rhs: &Tensor) -> Tensor { (&self).$tensor_fn(rhs) }
        }
        impl std::ops::$trait<Tensor> for &Tensor {
            type Output = Tensor;
            fn $method(self, rhs: Tensor) -> Tensor { self.$tensor_fn(&rhs) }
        }
        impl std::ops::$trait<f32> for &Tensor {
            type Output = Tensor;
            fn $method(self, rhs: f32) -> Tensor { self.$scalar_fn(rhs) }
        }
        impl std::ops::$trait<f32> for Tensor {
            type Output = Tensor;
            fn $method(self, rhs: f32) -> Tensor { (&self).$scalar_fn(rhs) }
        }
    )*};
}

operators! {
    Add add add add_scalar;
    Sub sub sub sub_scalar;
    Mul mul mul mul_scalar;
    Div div div div_scalar;
}

impl std::ops::Add<&Tensor> for f32 {
    type Output = Tensor;
    fn add(self, rhs: &Tensor) -> Tensor {
        rhs.add_scalar(self)
    }
}

impl std::ops::Sub<&Tensor> for f32 {
    type Output = Tensor;
    fn sub(self, rhs: &Tensor) -> Tensor {
        rhs.neg().add_scalar(self)
    }
}

impl std::ops::Mul<&Tensor> for f32 {
    type Output = Tensor;
    fn mul(self, rhs: &Tensor) -> Tensor {
        rhs.mul_scalar(self)
    }
}

impl std::ops::Div<&Tensor> for f32 {
    type Output = Tensor;
    fn div(self, rhs: &Tensor) -> Tensor {
        rhs.recip().mul_scalar(self)
    }
}

impl std::ops::Neg for &Tensor {
    type Output = Tensor;
    fn neg(self) -> Tensor {
        Tensor::neg(self)
    }
}

impl std::ops::Neg for Tensor {
    type Output = Tensor;
    fn neg(self) -> Tensor {
        Tensor::neg(&self)
    }
}

/// The gradients of `maximum` (`loses` = `Lt`) or `minimum` (`Gt`) as
/// PyTorch computes them: the whole gradient to the side that was picked,
/// half to each where the two are equal, and none to a side that lost
/// (`self` loses where `self loses other`). With a NaN neither loses, so
/// both get it all, as in PyTorch.
fn tie_split(c: &BackwardCtx, loses: Cmp, name: &'static str) -> Vec<Option<Tensor>> {
    let (a, b) = (c.input(0), c.input(1));
    let half = a.zip_raw(b, BinaryOp::Cmp(Cmp::Eq), name).mul_scalar(-0.5).add_scalar(1.0);
    let share = c.grad * &half;
    let mirrored = match loses {
        Cmp::Lt => Cmp::Gt,
        _ => Cmp::Lt,
    };
    vec![
        c.needs[0].then(|| (&share * &(1.0 - &a.zip_raw(b, BinaryOp::Cmp(loses), name))).sum_to(a.shape())),
        c.needs[1].then(|| (&share * &(1.0 - &a.zip_raw(b, BinaryOp::Cmp(mirrored), name))).sum_to(b.shape())),
    ]
}
