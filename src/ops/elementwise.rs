//! Elementwise ops: arithmetic with NumPy broadcasting, scalar variants,
//! math functions and activations, and the `+ - * /` operators.

use super::same_device;
use crate::Tensor;
use crate::autograd::BackwardCtx;
use crate::backend::{BinaryOp, UnaryOp};
use crate::shape::{Shape, Strided};

impl Tensor {
    /// Applies a unary kernel without recording anything.
    pub(crate) fn map_raw(&self, op: UnaryOp) -> Tensor {
        let storage = self.device().backend().unary(op, &self.read(), self.elem_count());
        Tensor::from_storage(storage, self.shape().clone(), self.device().clone())
    }

    /// Applies a binary kernel with broadcasting, without recording anything.
    pub(crate) fn zip_raw(&self, rhs: &Tensor, op: BinaryOp, name: &str) -> Tensor {
        same_device(name, self, rhs);
        let shape = Shape::broadcast(self.shape(), rhs.shape())
            .unwrap_or_else(|| {
                panic!("{name}: shapes {} and {} cannot be broadcast together", self.shape(), rhs.shape())
            })
            .checked(name);
        let la = Strided { dims: shape.dims().to_vec(), strides: self.shape().broadcast_strides(&shape), offset: 0 };
        let lb = Strided { dims: shape.dims().to_vec(), strides: rhs.shape().broadcast_strides(&shape), offset: 0 };
        let storage = if self.same_storage(rhs) {
            let s = self.read();
            self.device().backend().binary(op, (&s, &la), (&s, &lb))
        } else {
            let (a, b) = (self.read(), rhs.read());
            self.device().backend().binary(op, (&a, &la), (&b, &lb))
        };
        Tensor::from_storage(storage, shape, self.device().clone())
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

    /// Elementwise maximum, broadcasting. Where the two are equal the
    /// gradient goes to `self`.
    pub fn maximum(&self, rhs: &Tensor) -> Tensor {
        self.zip_raw(rhs, BinaryOp::Max, "maximum").record("maximum", &[self, rhs], |c| {
            let (a, b) = (c.input(0), c.input(1));
            let mask = a.zip_raw(b, BinaryOp::Ge, "maximum");
            vec![
                c.needs[0].then(|| (c.grad * &mask).sum_to(a.shape())),
                c.needs[1].then(|| (c.grad * &(1.0 - &mask)).sum_to(b.shape())),
            ]
        })
    }

    /// Elementwise minimum, broadcasting. Where the two are equal the
    /// gradient goes to `self`.
    pub fn minimum(&self, rhs: &Tensor) -> Tensor {
        self.zip_raw(rhs, BinaryOp::Min, "minimum").record("minimum", &[self, rhs], |c| {
            let (a, b) = (c.input(0), c.input(1));
            let mask = b.zip_raw(a, BinaryOp::Ge, "minimum");
            vec![
                c.needs[0].then(|| (c.grad * &mask).sum_to(a.shape())),
                c.needs[1].then(|| (c.grad * &(1.0 - &mask)).sum_to(b.shape())),
            ]
        })
    }

    /// 1 where `self == rhs` (broadcasting), else 0; not differentiable.
    /// With `argmax`, counts correct predictions: `pred.eq(&labels).sum()`.
    pub fn eq(&self, rhs: &Tensor) -> Tensor {
        self.zip_raw(rhs, BinaryOp::Eq, "eq")
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

    /// `xᵖ`.
    pub fn powf(&self, p: f32) -> Tensor {
        self.unary_op("powf", UnaryOp::PowScalar(p), move |c| c.input(0).powf(p - 1.0).mul_scalar(p))
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
        self.unary_op("relu", UnaryOp::Relu, |c| c.input(0).map_raw(UnaryOp::GtScalar(0.0)))
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
