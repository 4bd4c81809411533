// Elementwise unary ops: forward through Backend::unary, backward next to each forward.
#include <cmath>

#include "autograd/ops/common.h"

namespace cm {
using namespace opdetail;

namespace {

// y = op(x) (no history). Floating ops promote integer inputs to f32.
Tensor unary_raw(UnaryOp op, const Tensor& x, double a = 0, double b = 0) {
  Tensor y =
      new_empty(x.shape(), unary_op_is_predicate(op) ? DType::b8 : x.dtype(), x.device(), {x});
  backend_of(x).unary(op, x, y, a, b);
  return y;
}

Tensor as_float(const Tensor& x) {
  return is_floating(x.dtype()) ? x : to(x, DType::f32);
}

// A floating op whose gradient is a function of (g, x, y).
template <class Back>
Tensor float_unary(const char* name, UnaryOp op, const Tensor& x0, Back back, bool save_x,
                   bool save_y, double a = 0, double b = 0) {
  const Tensor x = as_float(x0);
  Tensor y = unary_raw(op, x, a, b);
  if (needs_grad({x})) {
    SavedTensor sx = save_x ? SavedTensor(x, name) : SavedTensor();
    SavedTensor sy = save_y ? SavedTensor(y, name) : SavedTensor();
    record(name, {x}, {y}, [=](const Grads& g) { return Grads{back(g[0], sx.get(), sy.get())}; });
  }
  return y;
}

// A piecewise-constant op: zero gradient.
Tensor flat_unary(const char* name, UnaryOp op, const Tensor& x) {
  Tensor y = unary_raw(op, x);
  if (needs_grad({x}))
    record(name, {x}, {y}, [](const Grads& g) { return Grads{zeros_like(g[0])}; });
  return y;
}

Tensor backward_kernel(BinaryOp op, const Tensor& g, const Tensor& saved) {
  Tensor out = new_empty(g.shape(), g.dtype(), g.device(), {g, saved});
  backend_of(g).binary(op, g, saved, out, 1.0);
  return out;
}

}  // namespace

Tensor neg(const Tensor& x) {
  Tensor y = unary_raw(UnaryOp::Neg, x.dtype() == DType::b8 ? to(x, DType::i64) : x);
  if (needs_grad({x})) record("neg", {x}, {y}, [](const Grads& g) { return Grads{neg(g[0])}; });
  return y;
}

Tensor abs(const Tensor& x) {
  Tensor y = unary_raw(UnaryOp::Abs, x);
  if (needs_grad({x})) {
    SavedTensor sx(x, "abs");
    record("abs", {x}, {y}, [sx](const Grads& g) { return Grads{mul(g[0], sign(sx.get()))}; });
  }
  return y;
}

Tensor exp(const Tensor& x) {
  return float_unary(
      "exp", UnaryOp::Exp, x,
      [](const Tensor& g, const Tensor&, const Tensor& y) { return mul(g, y); }, false, true);
}

Tensor log(const Tensor& x) {
  return float_unary(
      "log", UnaryOp::Log, x,
      [](const Tensor& g, const Tensor& x, const Tensor&) { return div(g, x); }, true, false);
}

Tensor sqrt(const Tensor& x) {
  // d sqrt(x) = 1 / (2 sqrt(x))
  return float_unary(
      "sqrt", UnaryOp::Sqrt, x,
      [](const Tensor& g, const Tensor&, const Tensor& y) { return div(mul(g, 0.5), y); }, false,
      true);
}

Tensor rsqrt(const Tensor& x) {
  // d x^(-1/2) = -1/2 · x^(-3/2) = -1/2 · y³
  return float_unary(
      "rsqrt", UnaryOp::Rsqrt, x,
      [](const Tensor& g, const Tensor&, const Tensor& y) {
        return mul(g, mul(pow(y, 3.0), -0.5));
      },
      false, true);
}

Tensor square(const Tensor& x) {
  Tensor y = unary_raw(UnaryOp::Square, x.dtype() == DType::b8 ? to(x, DType::i64) : x);
  if (needs_grad({x})) {
    SavedTensor sx(x, "square");
    record("square", {x}, {y},
           [sx](const Grads& g) { return Grads{mul(g[0], mul(sx.get(), 2.0))}; });
  }
  return y;
}

Tensor reciprocal(const Tensor& x) {
  // d 1/x = -1/x² = -y²
  return float_unary(
      "reciprocal", UnaryOp::Reciprocal, x,
      [](const Tensor& g, const Tensor&, const Tensor& y) { return neg(mul(g, square(y))); }, false,
      true);
}

Tensor sin(const Tensor& x) {
  return float_unary(
      "sin", UnaryOp::Sin, x,
      [](const Tensor& g, const Tensor& x, const Tensor&) { return mul(g, cos(x)); }, true, false);
}

Tensor cos(const Tensor& x) {
  return float_unary(
      "cos", UnaryOp::Cos, x,
      [](const Tensor& g, const Tensor& x, const Tensor&) { return neg(mul(g, sin(x))); }, true,
      false);
}

Tensor tanh(const Tensor& x) {
  return float_unary(
      "tanh", UnaryOp::Tanh, x,
      [](const Tensor& g, const Tensor&, const Tensor& y) {
        return backward_kernel(BinaryOp::TanhBackward, g, y);
      },
      false, true);
}

Tensor sigmoid(const Tensor& x) {
  return float_unary(
      "sigmoid", UnaryOp::Sigmoid, x,
      [](const Tensor& g, const Tensor&, const Tensor& y) {
        return backward_kernel(BinaryOp::SigmoidBackward, g, y);
      },
      false, true);
}

Tensor silu(const Tensor& x) {
  return float_unary(
      "silu", UnaryOp::Silu, x,
      [](const Tensor& g, const Tensor& x, const Tensor&) {
        return backward_kernel(BinaryOp::SiluBackward, g, x);
      },
      true, false);
}

Tensor relu(const Tensor& x) {
  Tensor y = unary_raw(UnaryOp::Relu, x);
  if (needs_grad({x})) {
    SavedTensor sx(x, "relu");
    record("relu", {x}, {y}, [sx](const Grads& g) {
      return Grads{backward_kernel(BinaryOp::ReluBackward, g[0], sx.get())};
    });
  }
  return y;
}

Tensor gelu(const Tensor& x) {
  return float_unary(
      "gelu", UnaryOp::Gelu, x,
      [](const Tensor& g, const Tensor& x, const Tensor&) {
        return backward_kernel(BinaryOp::GeluBackward, g, x);
      },
      true, false);
}

Tensor erf(const Tensor& x) {
  // d erf(x) = 2/√π · exp(−x²)
  return float_unary(
      "erf", UnaryOp::Erf, x,
      [](const Tensor& g, const Tensor& x, const Tensor&) {
        return mul(g, mul(exp(neg(square(x))), 1.1283791670955126));
      },
      true, false);
}

Tensor expm1(const Tensor& x) {
  return float_unary(
      "expm1", UnaryOp::Expm1, x,
      [](const Tensor& g, const Tensor&, const Tensor& y) { return mul(g, add(y, 1.0)); }, false,
      true);
}

Tensor log1p(const Tensor& x) {
  return float_unary(
      "log1p", UnaryOp::Log1p, x,
      [](const Tensor& g, const Tensor& x, const Tensor&) { return div(g, add(x, 1.0)); }, true,
      false);
}

Tensor pow(const Tensor& x, double e) {
  // d x^e = e · x^(e−1)
  return float_unary(
      "pow", UnaryOp::PowScalar, x,
      [e](const Tensor& g, const Tensor& x, const Tensor&) {
        if (e == 0) return zeros_like(g);
        return mul(g, mul(pow(x, e - 1), e));
      },
      true, false, e);
}

Tensor pow(double base, const Tensor& x) {
  // d base^x = base^x · ln(base)
  return float_unary(
      "pow", UnaryOp::RPowScalar, x,
      [base](const Tensor& g, const Tensor&, const Tensor& y) {
        return mul(g, mul(y, std::log(base)));
      },
      false, true, base);
}

Tensor clamp(const Tensor& x, std::optional<double> lo, std::optional<double> hi) {
  CM_CHECK(lo || hi, "clamp: at least one of lo and hi is required");
  const double l = lo.value_or(-INFINITY), h = hi.value_or(INFINITY);
  // A one-sided clamp is a max/min with the scalar: the omitted (infinite) bound never reaches
  // the kernel, where integer dtypes could not represent it.
  const UnaryOp op = lo && hi ? UnaryOp::Clamp : (lo ? UnaryOp::MaxScalar : UnaryOp::MinScalar);
  Tensor y = unary_raw(op, x, lo ? l : h, h);
  if (needs_grad({x})) {
    SavedTensor sx(x, "clamp");
    record("clamp", {x}, {y}, [sx, l, h](const Grads& g) {
      const Tensor x = sx.get();
      return Grads{where(logical_and(ge(x, l), le(x, h)), g[0], 0.0)};
    });
  }
  return y;
}

Tensor sign(const Tensor& x) {
  return flat_unary("sign", UnaryOp::Sign, x);
}
Tensor floor(const Tensor& x) {
  return is_floating(x.dtype()) ? flat_unary("floor", UnaryOp::Floor, x) : x;
}
Tensor ceil(const Tensor& x) {
  return is_floating(x.dtype()) ? flat_unary("ceil", UnaryOp::Ceil, x) : x;
}
Tensor round(const Tensor& x) {
  return is_floating(x.dtype()) ? flat_unary("round", UnaryOp::Round, x) : x;
}
Tensor isfinite(const Tensor& x) {
  return unary_raw(UnaryOp::IsFinite, x);
}
Tensor logical_not(const Tensor& x) {
  return unary_raw(UnaryOp::LogicalNot, x);
}

}  // namespace cm
