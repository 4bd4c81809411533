#include "tensor/backend.h"

#include "tensor/cpu/cpu_backend.h"

namespace cm {

void Backend::group_norm_silu(const Tensor& x, const Tensor& weight, const Tensor& bias,
                              int64_t groups, double eps, const Tensor& out, const Tensor& mean,
                              const Tensor& rstd) {
  group_norm(x, weight, bias, groups, eps, out, mean, rstd);
  unary(UnaryOp::Silu, out, out, 0, 0);
}

void Backend::group_norm_silu_backward(const Tensor& grad_out, const Tensor& x,
                                       const Tensor& weight, const Tensor& bias, const Tensor& mean,
                                       const Tensor& rstd, int64_t groups, double eps,
                                       const Tensor& grad_x, const Tensor& grad_w,
                                       const Tensor& grad_b) {
  const TensorOptions opt{.dtype = x.dtype(), .device = x.device()};
  const MemoryFormat f = memory_format_of(x);
  const Tensor h = empty(x.shape(), opt, f), dh = empty(x.shape(), opt, f);
  const Tensor m2 = empty(mean.shape(), {.dtype = mean.dtype(), .device = x.device()}),
               r2 = empty(rstd.shape(), {.dtype = rstd.dtype(), .device = x.device()});
  group_norm(x, weight, bias, groups, eps, h, m2, r2);  // h again (the statistics are the same)
  binary(BinaryOp::SiluBackward, grad_out, h, dh, 1.0);
  group_norm_backward(dh, x, weight, mean, rstd, groups, grad_x, grad_w, grad_b);
}

namespace {
// t [N, C] seen as `shape` ([N, C, ...]): zero strides over the dims after the first two.
Tensor per_sample_channel_view(const Tensor& t, const Shape& shape) {
  Shape st(shape.size(), 0);
  st[0] = t.stride(0);
  st[1] = t.stride(1);
  return t.alias_with(shape, st, t.offset());
}
// x + shift (shift [N, C] broadcast over the spatial dims), in x's memory format.
Tensor shifted_input(Backend& be, const Tensor& x, const Tensor& shift) {
  const Tensor xs =
      empty(x.shape(), {.dtype = x.dtype(), .device = x.device()}, memory_format_of(x));
  be.binary(BinaryOp::Add, x, per_sample_channel_view(shift, x.shape()), xs, 1.0);
  return xs;
}
}  // namespace

void Backend::group_norm_silu_shifted(const Tensor& x, const Tensor& shift, const Tensor& weight,
                                      const Tensor& bias, int64_t groups, double eps,
                                      const Tensor& out, const Tensor& mean, const Tensor& rstd) {
  group_norm_silu(shifted_input(*this, x, shift), weight, bias, groups, eps, out, mean, rstd);
}

void Backend::group_norm_silu_shifted_backward(const Tensor& grad_out, const Tensor& x,
                                               const Tensor& shift, const Tensor& weight,
                                               const Tensor& bias, const Tensor& mean,
                                               const Tensor& rstd, int64_t groups, double eps,
                                               const Tensor& grad_x, const Tensor& grad_shift,
                                               const Tensor& grad_w, const Tensor& grad_b) {
  group_norm_silu_backward(grad_out, shifted_input(*this, x, shift), weight, bias, mean, rstd,
                           groups, eps, grad_x, grad_w, grad_b);
  if (grad_shift.defined()) sum_shift_gradient(grad_x, grad_shift);
}

void Backend::group_norm_recompute(const Tensor& x, const Tensor& shift, const Tensor& weight,
                                   const Tensor& bias, int64_t groups, double eps, bool silu,
                                   const Tensor& mean, const Tensor& rstd, const Tensor& out) {
  const Tensor m2 = empty(mean.shape(), {.dtype = mean.dtype(), .device = x.device()}),
               r2 = empty(rstd.shape(), {.dtype = rstd.dtype(), .device = x.device()});
  if (shift.defined())
    group_norm_silu_shifted(x, shift, weight, bias, groups, eps, out, m2, r2);
  else if (silu)
    group_norm_silu(x, weight, bias, groups, eps, out, m2, r2);
  else
    group_norm(x, weight, bias, groups, eps, out, m2, r2);
}

void Backend::attention(const Tensor&, const Tensor&, const Tensor&, double, const Tensor&,
                        const Tensor&) {
  CM_FAIL("attention: the ", name(), " backend has no fused attention kernel");
}

void Backend::attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                 const Tensor&, const Tensor&, double, const Tensor&, const Tensor&,
                                 const Tensor&) {
  CM_FAIL("attention_backward: the ", name(), " backend has no fused attention kernel");
}

void Backend::sum_shift_gradient(const Tensor& grad_x, const Tensor& grad_shift) {
  Shape kept(grad_x.shape().size(), 1);  // [N, C, 1, ...]: the spatial dims summed
  kept[0] = grad_x.size(0);
  kept[1] = grad_x.size(1);
  reduce(ReduceOp::Sum, grad_x, per_sample_channel_view(grad_shift, kept));
}

void Backend::conv2d_bias(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dParams& p,
                          const Tensor& out) {
  conv2d(x, w, p, out);
  const Tensor bv = b.alias_with(out.shape(), {0, b.stride(0), 0, 0}, b.offset());
  binary(BinaryOp::Add, out, bv, out, 1.0);
}

void Backend::conv2d_backward_weight_bias(const Tensor& x, const Tensor& grad_out,
                                          const Conv2dParams& p, const Tensor& grad_w,
                                          const Tensor& grad_b) {
  conv2d_backward_weight(x, grad_out, p, grad_w);
  reduce(
      ReduceOp::Sum, grad_out,
      grad_b.alias_with({1, grad_b.size(0), 1, 1}, {0, grad_b.stride(0), 0, 0}, grad_b.offset()));
}

void Backend::dropout(const Tensor& x, double keep, double scale, uint64_t seed,
                      uint64_t first_block, const Tensor& out, const Tensor& mask) {
  const Tensor m = mask.defined() ? mask
                                  : empty(x.shape(), {.dtype = x.dtype(), .device = x.device()},
                                          memory_format_of(x));
  random(RandomKind::Bernoulli, m, seed, first_block, keep, 0.0);
  unary(UnaryOp::MulScalar, m, m, scale, 0.0);
  binary(BinaryOp::Mul, x, m, out, 1.0);
}

Backend& cuda_backend();  // tensor/cuda or tensor/no_cuda

Backend& backend_for(Device d) {
  if (d.is_cpu()) return cpu::cpu_backend();
  return cuda_backend();
}

namespace {
bool g_matmul_tf32 = false;
}  // namespace
void set_matmul_tf32(bool on) {
  g_matmul_tf32 = on;
}
bool matmul_tf32() {
  return g_matmul_tf32;
}

Allocator& allocator_for(Device d) {
  return backend_for(d).allocator(d.index);
}

const char* unary_op_name(UnaryOp op) {
  switch (op) {
#define CM_NAME(E, F) \
  case UnaryOp::E:    \
    return #E;
    // clang-format off
    CM_NAME(Neg, )
    CM_NAME(Abs, )
    CM_NAME(Exp, )
    CM_NAME(Log, )
    CM_NAME(Sqrt, )
    CM_NAME(Rsqrt, )
    CM_NAME(Square, )
    CM_NAME(Reciprocal, )
    CM_NAME(Sin, )
    CM_NAME(Cos, )
    CM_NAME(Tanh, )
    CM_NAME(Sigmoid, )
    CM_NAME(Silu, )
    CM_NAME(Relu, )
    CM_NAME(Gelu, )
    CM_NAME(Sign, )
    CM_NAME(Erf, )
    CM_NAME(Expm1, )
    CM_NAME(Log1p, )
    CM_NAME(Floor, )
    CM_NAME(Ceil, )
    CM_NAME(Round, )
    CM_NAME(PowScalar, )
    CM_NAME(RPowScalar, )
    CM_NAME(AddScalar, )
    CM_NAME(MulScalar, )
    CM_NAME(DivScalar, )
    CM_NAME(RSubScalar, )
    CM_NAME(RDivScalar, )
    CM_NAME(MaxScalar, )
    CM_NAME(MinScalar, )
    CM_NAME(Clamp, )
    CM_NAME(EqScalar, )
    CM_NAME(NeScalar, )
    CM_NAME(LtScalar, )
    CM_NAME(LeScalar, )
    CM_NAME(GtScalar, )
    CM_NAME(GeScalar, )
    CM_NAME(IsFinite, )
    CM_NAME(LogicalNot, )
    // clang-format on
#undef CM_NAME
  }
  return "unary?";
}

bool unary_op_is_predicate(UnaryOp op) {
  switch (op) {
    case UnaryOp::EqScalar:
    case UnaryOp::NeScalar:
    case UnaryOp::LtScalar:
    case UnaryOp::LeScalar:
    case UnaryOp::GtScalar:
    case UnaryOp::GeScalar:
    case UnaryOp::IsFinite:
    case UnaryOp::LogicalNot:
      return true;
    default:
      return false;
  }
}

const char* binary_op_name(BinaryOp op) {
  switch (op) {
#define CM_NAME(E)  \
  case BinaryOp::E: \
    return #E;
    // clang-format off
    CM_NAME(Add)
    CM_NAME(Sub)
    CM_NAME(Mul)
    CM_NAME(Div)
    CM_NAME(Pow)
    CM_NAME(Maximum)
    CM_NAME(Minimum)
    CM_NAME(Lerp)
    CM_NAME(AddScale)
    CM_NAME(Eq)
    CM_NAME(Ne)
    CM_NAME(Lt)
    CM_NAME(Le)
    CM_NAME(Gt)
    CM_NAME(Ge)
    CM_NAME(LogicalAnd)
    CM_NAME(LogicalOr)
    CM_NAME(ReluBackward)
    CM_NAME(SiluBackward)
    CM_NAME(GeluBackward)
    CM_NAME(SigmoidBackward)
    CM_NAME(TanhBackward)
    // clang-format on
#undef CM_NAME
  }
  return "binary?";
}

bool binary_op_is_predicate(BinaryOp op) {
  switch (op) {
    case BinaryOp::Eq:
    case BinaryOp::Ne:
    case BinaryOp::Lt:
    case BinaryOp::Le:
    case BinaryOp::Gt:
    case BinaryOp::Ge:
    case BinaryOp::LogicalAnd:
    case BinaryOp::LogicalOr:
      return true;
    default:
      return false;
  }
}

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return "sum";
    case ReduceOp::Mean:
      return "mean";
    case ReduceOp::Max:
      return "amax";
    case ReduceOp::Min:
      return "amin";
  }
  return "reduce?";
}

}  // namespace cm
