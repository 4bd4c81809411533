// In-place updates for optimizers and EMA. They write into x, bump its version counter (so a
// backward that saved x notices), and refuse to run where they would break a gradient: on a tensor
// that requires grad, or with an operand that does, while grad mode is on.
#include "autograd/ops/common.h"

namespace cm {
using namespace opdetail;

namespace {

void check_inplace(const Tensor& x, std::initializer_list<Tensor> others, const char* op) {
  for (size_t d = 0; d < x.shape().size(); ++d)
    CM_CHECK(x.strides()[d] != 0 || x.shape()[d] <= 1, op,
             ": the updated tensor has several elements at one ",
             "memory location (an expanded view, strides ", shape_str(x.strides()),
             "); clone it first");
  if (!is_grad_enabled()) return;
  CM_CHECK(!x.requires_grad(), op,
           ": in-place update of a tensor that requires grad while grad mode is ",
           "on (wrap the update in cm::NoGradGuard, or use the out-of-place op)");
  for (const Tensor& o : others)
    CM_CHECK(!o.defined() || !o.requires_grad(), op,
             ": an operand requires grad while grad mode is on ",
             "(wrap the update in cm::NoGradGuard)");
}

// True when o lies in x's storage without being the same view as x (a transposed or shifted view,
// a row broadcast over x): the kernel could read elements it has already overwritten.
bool partially_overlaps(const Tensor& x, const Tensor& o) {
  return o.storage() == x.storage() &&
         !(o.offset() == x.offset() && o.strides() == x.strides() && o.shape() == x.shape());
}

// `other` as an operand of x: same device, x's dtype, broadcast to x's shape.
Tensor operand_for(const Tensor& x, const Tensor& other, const char* op) {
  CM_CHECK(x.device() == other.device(), op, ": operand on ", other.device().str(), ", tensor on ",
           x.device().str());
  Tensor o = detach(other);
  if (o.dtype() != x.dtype()) o = to(o, x.dtype());
  if (partially_overlaps(x, o)) o = clone(o);
  const Shape s = broadcast_shapes(x.shape(), o.shape(), op);
  CM_CHECK(s == x.shape(), op, ": operand of shape ", shape_str(other.shape()),
           " does not broadcast to the updated tensor's shape ", shape_str(x.shape()));
  return expand_raw(o, x.shape(), op);
}

Tensor& binary_inplace(BinaryOp op, Tensor& x, const Tensor& other, double alpha,
                       const char* name) {
  check_inplace(x, {other}, name);
  backend_of(x).binary(op, x, operand_for(x, other, name), x, alpha);
  x.bump_version();
  return x;
}

Tensor& unary_inplace(UnaryOp op, Tensor& x, double a, double b, const char* name) {
  check_inplace(x, {}, name);
  backend_of(x).unary(op, x, x, a, b);
  x.bump_version();
  return x;
}

}  // namespace

Tensor& add_(Tensor& x, const Tensor& other, double alpha) {
  return binary_inplace(BinaryOp::Add, x, other, alpha, "add_");
}
Tensor& add_(Tensor& x, double s) {
  return unary_inplace(UnaryOp::AddScalar, x, s, 0, "add_");
}
Tensor& sub_(Tensor& x, const Tensor& other, double alpha) {
  return binary_inplace(BinaryOp::Sub, x, other, alpha, "sub_");
}
Tensor& mul_(Tensor& x, const Tensor& other) {
  return binary_inplace(BinaryOp::Mul, x, other, 1, "mul_");
}
Tensor& mul_(Tensor& x, double s) {
  return unary_inplace(UnaryOp::MulScalar, x, s, 0, "mul_");
}
Tensor& div_(Tensor& x, const Tensor& other) {
  return binary_inplace(BinaryOp::Div, x, other, 1, "div_");
}
Tensor& lerp_(Tensor& x, const Tensor& end, double w) {
  return binary_inplace(BinaryOp::Lerp, x, end, w, "lerp_");
}
Tensor& clamp_(Tensor& x, std::optional<double> lo, std::optional<double> hi) {
  CM_CHECK(lo || hi, "clamp_: at least one of lo and hi is required");
  return unary_inplace(UnaryOp::Clamp, x, lo.value_or(-INFINITY), hi.value_or(INFINITY), "clamp_");
}

Tensor& copy_(Tensor& x, const Tensor& src) {
  check_inplace(x, {src}, "copy_");
  Tensor s = detach(src);
  if (s.device() != x.device()) s = to(s, x.device());
  if (partially_overlaps(x, s)) s = clone(s);
  const Shape b = broadcast_shapes(x.shape(), s.shape(), "copy_");
  CM_CHECK(b == x.shape(), "copy_: source of shape ", shape_str(src.shape()),
           " does not broadcast to the destination shape ", shape_str(x.shape()));
  backend_of(x).copy(expand_raw(s, x.shape(), "copy_"), x);
  x.bump_version();
  return x;
}

Tensor& fill_(Tensor& x, double value) {
  check_inplace(x, {}, "fill_");
  backend_of(x).fill(x, value);
  x.bump_version();
  return x;
}

Tensor& zero_(Tensor& x) {
  return fill_(x, 0.0);
}

Tensor& addcmul_(Tensor& x, const Tensor& a, const Tensor& b, double value) {
  check_inplace(x, {a, b}, "addcmul_");
  return add_(x, mul(detach(a), detach(b)), value);
}

Tensor& addcdiv_(Tensor& x, const Tensor& a, const Tensor& b, double value) {
  check_inplace(x, {a, b}, "addcdiv_");
  return add_(x, div(detach(a), detach(b)), value);
}

}  // namespace cm
