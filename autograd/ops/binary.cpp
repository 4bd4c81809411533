// Elementwise binary ops with broadcasting and dtype promotion, their scalar forms, comparisons,
// where, and the arithmetic operators. Operands are first cast to the common dtype (a recorded,
// differentiable cast), then broadcast as raw views; each backward sums its gradient back to the
// operand's shape.
#include <cmath>

#include "autograd/ops/common.h"

namespace cm {
using namespace opdetail;

namespace {

// The dtype arithmetic runs in: the promoted type, bool → i64, and floating for ops that need it.
DType arith_dtype(const Tensor& a, const Tensor& b, bool floating) {
  DType t = promote_types(a.dtype(), b.dtype());
  if (t == DType::b8) t = DType::i64;
  return floating ? float_dtype(t) : t;
}

// out = op(a, b) over the broadcast shape, no history. a and b already share a dtype.
Tensor binary_raw(BinaryOp op, const Tensor& a, const Tensor& b, double alpha, const char* name) {
  common_device({a, b}, name);
  const Shape s = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out = new_empty(s, binary_op_is_predicate(op) ? DType::b8 : a.dtype(), a.device(), {a, b});
  backend_of(out).binary(op, expand_raw(a, s, name), expand_raw(b, s, name), out, alpha);
  return out;
}

struct Pair {
  Tensor a, b;
};
Pair promote(const Tensor& a, const Tensor& b, bool floating) {
  const DType t = arith_dtype(a, b, floating);
  return {to(a, t), to(b, t)};
}

// A scalar operand keeps the tensor's dtype unless it is fractional and the tensor is integral.
Tensor promote_for_scalar(const Tensor& a, double s, bool floating) {
  if (floating || (!is_floating(a.dtype()) && s != std::floor(s)))
    return to(a, float_dtype(a.dtype()));
  if (a.dtype() == DType::b8) return to(a, DType::i64);
  return a;
}

Tensor unary_raw(UnaryOp op, const Tensor& x, double a, double b = 0) {
  Tensor y =
      new_empty(x.shape(), unary_op_is_predicate(op) ? DType::b8 : x.dtype(), x.device(), {x});
  backend_of(x).unary(op, x, y, a, b);
  return y;
}

Tensor as_dtype_of(const Tensor& m, const Tensor& like) {
  return to(m, like.dtype());
}

}  // namespace

// ---- tensor ⊕ tensor
// -----------------------------------------------------------------------------------
Tensor add(const Tensor& a0, const Tensor& b0, double alpha) {
  auto [a, b] = promote(a0, b0, false);
  Tensor y = binary_raw(BinaryOp::Add, a, b, alpha, "add");
  if (needs_grad({a, b})) {
    const Shape sa = a.shape(), sb = b.shape();
    const bool na = a.requires_grad(), nb = b.requires_grad();
    record("add", {a, b}, {y}, [=](const Grads& g) {
      return Grads{na ? sum_to_shape(g[0], sa) : Tensor(),
                   nb ? sum_to_shape(alpha == 1 ? g[0] : mul(g[0], alpha), sb) : Tensor()};
    });
  }
  return y;
}

Tensor add_scaled(const Tensor& a0, const Tensor& b0, double scale) {
  auto [a, b] = promote(a0, b0, false);
  CM_CHECK(is_floating(a.dtype()), "add_scaled: floating-point operands only, got ",
           dtype_name(a.dtype()));
  Tensor y = binary_raw(BinaryOp::AddScale, a, b, scale, "add_scaled");
  if (needs_grad({a, b})) {
    const Shape sa = a.shape(), sb = b.shape();
    const bool na = a.requires_grad(), nb = b.requires_grad();
    record("add_scaled", {a, b}, {y}, [=](const Grads& g) {
      const Tensor gs = mul(g[0], scale);  // d/da = d/db = scale
      return Grads{na ? sum_to_shape(gs, sa) : Tensor(), nb ? sum_to_shape(gs, sb) : Tensor()};
    });
  }
  return y;
}

Tensor sub(const Tensor& a, const Tensor& b, double alpha) {
  broadcast_shapes(a.shape(), b.shape(), "sub");  // so that a shape error names sub, not add
  return add(a, b, -alpha);
}

Tensor mul(const Tensor& a0, const Tensor& b0) {
  auto [a, b] = promote(a0, b0, false);
  Tensor y = binary_raw(BinaryOp::Mul, a, b, 1, "mul");
  if (needs_grad({a, b})) {
    const bool na = a.requires_grad(), nb = b.requires_grad();
    SavedTensor sa = nb ? SavedTensor(a, "mul") : SavedTensor();
    SavedTensor sb = na ? SavedTensor(b, "mul") : SavedTensor();
    const Shape sha = a.shape(), shb = b.shape();
    record("mul", {a, b}, {y}, [=](const Grads& g) {
      return Grads{na ? sum_to_shape(mul(g[0], sb.get()), sha) : Tensor(),
                   nb ? sum_to_shape(mul(g[0], sa.get()), shb) : Tensor()};
    });
  }
  return y;
}

Tensor div(const Tensor& a0, const Tensor& b0) {
  auto [a, b] = promote(a0, b0, true);
  Tensor y = binary_raw(BinaryOp::Div, a, b, 1, "div");
  if (needs_grad({a, b})) {
    // d(a/b)/da = 1/b, d(a/b)/db = −a/b² = −y/b
    const bool na = a.requires_grad(), nb = b.requires_grad();
    SavedTensor sb(b, "div");
    SavedTensor sy = nb ? SavedTensor(y, "div") : SavedTensor();
    const Shape sha = a.shape(), shb = b.shape();
    record("div", {a, b}, {y}, [=](const Grads& g) {
      const Tensor bb = sb.get();
      return Grads{na ? sum_to_shape(div(g[0], bb), sha) : Tensor(),
                   nb ? sum_to_shape(neg(div(mul(g[0], sy.get()), bb)), shb) : Tensor()};
    });
  }
  return y;
}

Tensor pow(const Tensor& a0, const Tensor& b0) {
  auto [a, b] = promote(a0, b0, true);
  Tensor y = binary_raw(BinaryOp::Pow, a, b, 1, "pow");
  if (needs_grad({a, b})) {
    // d a^b / da = b·a^(b−1); d a^b / db = a^b·ln a (taken as 0 where a = 0 and b ≥ 0)
    const bool na = a.requires_grad(), nb = b.requires_grad();
    SavedTensor sa(a, "pow"), sb(b, "pow"), sy(y, "pow");
    const Shape sha = a.shape(), shb = b.shape();
    record("pow", {a, b}, {y}, [=](const Grads& g) {
      const Tensor aa = sa.get(), bb = sb.get();
      Tensor ga, gb;
      if (na) ga = sum_to_shape(mul(g[0], mul(bb, pow(aa, sub(bb, 1.0)))), sha);
      if (nb) {
        Tensor d = mul(g[0], mul(sy.get(), log(aa)));
        gb = sum_to_shape(where(logical_and(eq(aa, 0.0), ge(bb, 0.0)), 0.0, d), shb);
      }
      return Grads{ga, gb};
    });
  }
  return y;
}

namespace {
// maximum/minimum: the gradient goes to the larger (smaller) operand, split evenly on ties.
Tensor extremum(const Tensor& a0, const Tensor& b0, bool is_max) {
  const char* name = is_max ? "maximum" : "minimum";
  auto [a, b] = promote(a0, b0, false);
  Tensor y = binary_raw(is_max ? BinaryOp::Maximum : BinaryOp::Minimum, a, b, 1, name);
  if (needs_grad({a, b})) {
    SavedTensor sa(a, name), sb(b, name);
    const Shape sha = a.shape(), shb = b.shape();
    const bool na = a.requires_grad(), nb = b.requires_grad();
    record(name, {a, b}, {y}, [=](const Grads& g) {
      const Tensor aa = sa.get(), bb = sb.get();
      const Tensor wins = as_dtype_of(is_max ? gt(aa, bb) : lt(aa, bb), g[0]);
      const Tensor ties = mul(as_dtype_of(eq(aa, bb), g[0]), 0.5);
      const Tensor wa = add(wins, ties);
      return Grads{na ? sum_to_shape(mul(g[0], wa), sha) : Tensor(),
                   nb ? sum_to_shape(mul(g[0], rsub(1.0, wa)), shb) : Tensor()};
    });
  }
  return y;
}
}  // namespace

Tensor maximum(const Tensor& a, const Tensor& b) {
  return extremum(a, b, true);
}
Tensor minimum(const Tensor& a, const Tensor& b) {
  return extremum(a, b, false);
}

Tensor lerp(const Tensor& a0, const Tensor& b0, double w) {
  auto [a, b] = promote(a0, b0, true);
  Tensor y = binary_raw(BinaryOp::Lerp, a, b, w, "lerp");
  if (needs_grad({a, b})) {
    const Shape sha = a.shape(), shb = b.shape();
    record("lerp", {a, b}, {y}, [=](const Grads& g) {
      return Grads{sum_to_shape(mul(g[0], 1.0 - w), sha), sum_to_shape(mul(g[0], w), shb)};
    });
  }
  return y;
}

// ---- tensor ⊕ scalar
// -------------------------------------------------------------------------------------
Tensor add(const Tensor& a0, double s) {
  const Tensor a = promote_for_scalar(a0, s, false);
  Tensor y = unary_raw(UnaryOp::AddScalar, a, s);
  if (needs_grad({a})) record("add_scalar", {a}, {y}, [](const Grads& g) { return Grads{g[0]}; });
  return y;
}

Tensor sub(const Tensor& a, double s) {
  return add(a, -s);
}

Tensor rsub(double s, const Tensor& a0) {
  const Tensor a = promote_for_scalar(a0, s, false);
  Tensor y = unary_raw(UnaryOp::RSubScalar, a, s);
  if (needs_grad({a}))
    record("rsub_scalar", {a}, {y}, [](const Grads& g) { return Grads{neg(g[0])}; });
  return y;
}

Tensor mul(const Tensor& a0, double s) {
  const Tensor a = promote_for_scalar(a0, s, false);
  Tensor y = unary_raw(UnaryOp::MulScalar, a, s);
  if (needs_grad({a}))
    record("mul_scalar", {a}, {y}, [s](const Grads& g) { return Grads{mul(g[0], s)}; });
  return y;
}

// A true division x / s in the compute type (as PyTorch's CPU kernels and EDM's f64 code do), not
// x · (1/s): the two differ in the last bit for most s that are not powers of two.
Tensor div(const Tensor& a0, double s) {
  const Tensor a = promote_for_scalar(a0, s, true);
  Tensor y = unary_raw(UnaryOp::DivScalar, a, s);
  if (needs_grad({a}))
    record("div_scalar", {a}, {y}, [s](const Grads& g) { return Grads{div(g[0], s)}; });
  return y;
}

Tensor rdiv(double s, const Tensor& a0) {
  const Tensor a = promote_for_scalar(a0, s, true);
  Tensor y = unary_raw(UnaryOp::RDivScalar, a, s);
  if (needs_grad({a})) {
    // d (s/a) = −s/a² = −y/a
    SavedTensor sa(a, "rdiv"), sy(y, "rdiv");
    record("rdiv_scalar", {a}, {y},
           [=](const Grads& g) { return Grads{neg(div(mul(g[0], sy.get()), sa.get()))}; });
  }
  return y;
}

namespace {
// maximum(a, s) / minimum(a, s) are clamp(a, min = s) / clamp(a, max = s): ties pass the gradient.
Tensor extremum_scalar(const Tensor& a0, double s, bool is_max) {
  const char* name = is_max ? "maximum_scalar" : "minimum_scalar";
  const Tensor a = promote_for_scalar(a0, s, false);
  Tensor y = unary_raw(is_max ? UnaryOp::MaxScalar : UnaryOp::MinScalar, a, s);
  if (needs_grad({a})) {
    SavedTensor sa(a, name);
    record(name, {a}, {y}, [=](const Grads& g) {
      return Grads{where(is_max ? ge(sa.get(), s) : le(sa.get(), s), g[0], 0.0)};
    });
  }
  return y;
}
}  // namespace

Tensor maximum(const Tensor& a, double s) {
  return extremum_scalar(a, s, true);
}
Tensor minimum(const Tensor& a, double s) {
  return extremum_scalar(a, s, false);
}

// ---- comparisons
// ------------------------------------------------------------------------------------------
namespace {
Tensor compare(BinaryOp op, const Tensor& a0, const Tensor& b0) {
  const DType t = promote_types(a0.dtype(), b0.dtype());
  return binary_raw(op, to(detach(a0), t), to(detach(b0), t), 1, binary_op_name(op));
}
// An integer tensor meets a scalar that its compute type may not hold exactly (fractional,
// infinite, NaN or beyond the i32 range): they compare in f64.
Tensor compare_scalar(UnaryOp op, const Tensor& a, double s) {
  const bool exact = is_floating(a.dtype()) || (s == std::trunc(s) && std::fabs(s) <= 2147483647.0);
  return unary_raw(op, exact ? detach(a) : to(detach(a), DType::f64), s);
}
}  // namespace

Tensor eq(const Tensor& a, const Tensor& b) {
  return compare(BinaryOp::Eq, a, b);
}
Tensor ne(const Tensor& a, const Tensor& b) {
  return compare(BinaryOp::Ne, a, b);
}
Tensor lt(const Tensor& a, const Tensor& b) {
  return compare(BinaryOp::Lt, a, b);
}
Tensor le(const Tensor& a, const Tensor& b) {
  return compare(BinaryOp::Le, a, b);
}
Tensor gt(const Tensor& a, const Tensor& b) {
  return compare(BinaryOp::Gt, a, b);
}
Tensor ge(const Tensor& a, const Tensor& b) {
  return compare(BinaryOp::Ge, a, b);
}
Tensor eq(const Tensor& a, double s) {
  return compare_scalar(UnaryOp::EqScalar, a, s);
}
Tensor ne(const Tensor& a, double s) {
  return compare_scalar(UnaryOp::NeScalar, a, s);
}
Tensor lt(const Tensor& a, double s) {
  return compare_scalar(UnaryOp::LtScalar, a, s);
}
Tensor le(const Tensor& a, double s) {
  return compare_scalar(UnaryOp::LeScalar, a, s);
}
Tensor gt(const Tensor& a, double s) {
  return compare_scalar(UnaryOp::GtScalar, a, s);
}
Tensor ge(const Tensor& a, double s) {
  return compare_scalar(UnaryOp::GeScalar, a, s);
}
Tensor logical_and(const Tensor& a, const Tensor& b) {
  return binary_raw(BinaryOp::LogicalAnd, to(detach(a), DType::b8), to(detach(b), DType::b8), 1,
                    "logical_and");
}
Tensor logical_or(const Tensor& a, const Tensor& b) {
  return binary_raw(BinaryOp::LogicalOr, to(detach(a), DType::b8), to(detach(b), DType::b8), 1,
                    "logical_or");
}

// ---- where
// ----------------------------------------------------------------------------------------------------
Tensor where(const Tensor& cond, const Tensor& a0, const Tensor& b0) {
  CM_CHECK(cond.dtype() == DType::b8, "where: condition must be bool, got ",
           dtype_name(cond.dtype()));
  common_device({cond, a0, b0}, "where");
  Tensor a = a0, b = b0;  // same dtypes stay as they are (bool/bool included)
  if (a0.dtype() != b0.dtype()) {
    Pair p = promote(a0, b0, false);
    a = p.a;
    b = p.b;
  }
  const Shape s =
      broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  Tensor y = new_empty(s, a.dtype(), a.device(), {a, b, cond});
  backend_of(y).where(expand_raw(cond, s, "where"), expand_raw(a, s, "where"),
                      expand_raw(b, s, "where"), y);
  if (needs_grad({a, b})) {
    SavedTensor sc(cond, "where");
    const Shape sha = a.shape(), shb = b.shape();
    const bool na = a.requires_grad(), nb = b.requires_grad();
    record("where", {a, b}, {y}, [=](const Grads& g) {
      const Tensor c = sc.get();
      const Tensor z = zeros({}, {.dtype = g[0].dtype(), .device = g[0].device()});
      return Grads{na ? sum_to_shape(where(c, g[0], z), sha) : Tensor(),
                   nb ? sum_to_shape(where(c, z, g[0]), shb) : Tensor()};
    });
  }
  return y;
}

Tensor where(const Tensor& cond, const Tensor& a, double b) {
  return where(cond, a, full({}, b, {.dtype = float_dtype(a.dtype()), .device = a.device()}));
}
Tensor where(const Tensor& cond, double a, const Tensor& b) {
  return where(cond, full({}, a, {.dtype = float_dtype(b.dtype()), .device = b.device()}), b);
}

// ---- operators
// --------------------------------------------------------------------------------------------------
Tensor operator-(const Tensor& x) {
  return neg(x);
}
Tensor operator+(const Tensor& a, const Tensor& b) {
  return add(a, b);
}
Tensor operator-(const Tensor& a, const Tensor& b) {
  return sub(a, b);
}
Tensor operator*(const Tensor& a, const Tensor& b) {
  return mul(a, b);
}
Tensor operator/(const Tensor& a, const Tensor& b) {
  return div(a, b);
}
Tensor operator+(const Tensor& a, double s) {
  return add(a, s);
}
Tensor operator-(const Tensor& a, double s) {
  return sub(a, s);
}
Tensor operator*(const Tensor& a, double s) {
  return mul(a, s);
}
Tensor operator/(const Tensor& a, double s) {
  return div(a, s);
}
Tensor operator+(double s, const Tensor& a) {
  return add(a, s);
}
Tensor operator-(double s, const Tensor& a) {
  return rsub(s, a);
}
Tensor operator*(double s, const Tensor& a) {
  return mul(a, s);
}
Tensor operator/(double s, const Tensor& a) {
  return rdiv(s, a);
}

}  // namespace cm
