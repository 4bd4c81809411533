// Group normalisation as one fused op: the forward kernel returns the output with the per-(n,
// group) mean and rstd, which are all the backward needs (with x and weight); the backward kernel
// gives dx, dweight and dbias in one pass (closed form in tensor/cpu/norm.cpp).
#include "autograd/ops/common.h"

namespace cm {
using namespace opdetail;

namespace {

// x [N, C, *], weight/bias [C] -> [N, C, *]; mean/rstd [N, G] in f32 (f64 for f64 x). With `silu`
// the output is silu(group_norm(x)) from one kernel (Backend::group_norm_silu), whose backward
// recomputes the normalised values instead of keeping them. With activation recomputation on
// (autograd/node.h), the output also carries how to compute it again.
Tensor group_norm_op(const Tensor& x0, int64_t groups, const Tensor& weight0, const Tensor& bias0,
                     double eps, bool silu, const Tensor& shift0 = {}) {
  const char* op = silu ? "group_norm_silu" : "group_norm";
  CM_CHECK(x0.dim() >= 2, "group_norm: x must be [N, C, *], got shape ", shape_str(x0.shape()));
  CM_CHECK(is_floating(x0.dtype()), "group_norm: x must be floating, got ", dtype_name(x0.dtype()));
  const int64_t N = x0.size(0), C = x0.size(1);
  CM_CHECK(groups > 0 && C % groups == 0, "group_norm: ", C, " channels (shape ",
           shape_str(x0.shape()), ") are not divisible into ", groups, " groups");
  CM_CHECK(eps >= 0, "group_norm: eps must be non-negative, got ", eps);
  common_device({x0, weight0, bias0, shift0}, "group_norm");
  if (shift0.defined()) {
    bool per_sample_channel =
        shift0.dim() >= 2 && shift0.dim() <= x0.dim() && shift0.size(0) == N && shift0.size(1) == C;
    for (int64_t k = 2; k < shift0.dim(); ++k) per_sample_channel &= shift0.size(k) == 1;
    CM_CHECK(per_sample_channel, "group_norm_silu: shift must be [", N, ", ", C,
             "] (or with trailing 1s), got ", shape_str(shift0.shape()));
    CM_CHECK(shift0.dtype() == x0.dtype(), "group_norm_silu: shift has dtype ",
             dtype_name(shift0.dtype()), ", x has ", dtype_name(x0.dtype()));
  }
  for (const Tensor* p : {&weight0, &bias0}) {
    if (!p->defined()) continue;
    const char* what = p == &weight0 ? "weight" : "bias";
    CM_CHECK(p->shape() == Shape{C}, "group_norm: ", what, " must have shape [", C, "], got ",
             shape_str(p->shape()));
    CM_CHECK(p->dtype() == x0.dtype(), "group_norm: ", what, " has dtype ", dtype_name(p->dtype()),
             ", x has ", dtype_name(x0.dtype()));
  }
  // The kernels take contiguous operands, or channels-last ones where the backend has those loops;
  // the copies carry no history (the node links x itself).
  const MemoryFormat format = memory_format_of(x0) == MemoryFormat::ChannelsLast &&
                                      backend_of(x0).group_norm_takes_channels_last()
                                  ? MemoryFormat::ChannelsLast
                                  : MemoryFormat::Contiguous;
  const Tensor x = to_memory_format(detach(x0), format);
  const Tensor weight = weight0.defined() ? contiguous(detach(weight0)) : Tensor();
  const Tensor bias = bias0.defined() ? contiguous(detach(bias0)) : Tensor();
  const Tensor shift = shift0.defined() ? contiguous(reshape(detach(shift0), {N, C})) : Tensor();
  const DType stat_dtype = x.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor y = empty(x.shape(), {.dtype = x.dtype(), .device = x.device()}, format);
  Tensor mean = new_empty({N, groups}, stat_dtype, x.device());
  Tensor rstd = new_empty({N, groups}, stat_dtype, x.device());
  if (shift.defined())
    backend_of(x).group_norm_silu_shifted(x, shift, weight, bias, groups, eps, y, mean, rstd);
  else if (silu)
    backend_of(x).group_norm_silu(x, weight, bias, groups, eps, y, mean, rstd);
  else
    backend_of(x).group_norm(x, weight, bias, groups, eps, y, mean, rstd);

  if (needs_grad({x0, weight0, bias0, shift0})) {
    const bool gs = shift0.defined() && shift0.requires_grad();
    const bool gx = x0.requires_grad() || gs;  // the shift's gradient is summed from x's
    const bool gw = weight0.defined() && weight0.requires_grad();
    const bool gb = bias0.defined() && bias0.requires_grad();
    SavedTensor sx(x, op);
    // the fused SiLU recomputes the normalised values: it needs the weight and bias for every
    // gradient, group_norm needs the weight for dx only
    SavedTensor sw = ((gx || silu) && weight.defined()) ? SavedTensor(weight, op) : SavedTensor();
    SavedTensor sb = (silu && bias.defined()) ? SavedTensor(bias, op) : SavedTensor();
    SavedTensor smean(mean, op), srstd(rstd, op);
    SavedTensor sshift = shift.defined() ? SavedTensor(shift, op) : SavedTensor();
    const Shape xs = x.shape(), shift_shape = shift0.defined() ? shift0.shape() : Shape{};
    const bool wants_x = x0.requires_grad();
    record(op, {x0, weight0, bias0, shift0}, {y}, [=](const Grads& g) {
      const Tensor dy = to_memory_format(g[0], format);
      const TensorOptions opt{.dtype = dy.dtype(), .device = dy.device()};
      Tensor dx = gx ? empty(xs, opt, format) : Tensor();
      Tensor dw = gw ? empty({C}, opt) : Tensor();
      Tensor db = gb ? empty({C}, opt) : Tensor();
      if (sshift.defined()) {
        Tensor ds = gs ? empty({N, C}, opt) : Tensor();
        backend_of(dy).group_norm_silu_shifted_backward(dy, sx.get(), sshift.get(), sw.get(),
                                                        sb.get(), smean.get(), srstd.get(), groups,
                                                        eps, dx, ds, dw, db);
        return Grads{wants_x ? dx : Tensor(), dw, db, gs ? reshape(ds, shift_shape) : Tensor()};
      }
      if (silu)
        backend_of(dy).group_norm_silu_backward(dy, sx.get(), sw.get(), sb.get(), smean.get(),
                                                srstd.get(), groups, eps, dx, dw, db);
      else
        backend_of(dy).group_norm_backward(dy, sx.get(), sw.get(), smean.get(), srstd.get(), groups,
                                           dx, dw, db);
      return Grads{dx, dw, db, Tensor()};
    });
    // With recomputation on, the next op that saves y (a convolution) keeps this instead: y
    // again from what this node keeps anyway (Backend::group_norm_recompute, the same bits).
    if (is_recompute_enabled()) {
      const SavedTensor rw(weight, op), rb(bias, op);
      set_recompute(y, [=] {
        const Tensor xv = sx.get();
        Tensor out = empty(xs, {.dtype = xv.dtype(), .device = xv.device()}, format);
        backend_of(xv).group_norm_recompute(xv, sshift.get(), rw.get(), rb.get(), groups, eps, silu,
                                            smean.get(), srstd.get(), out);
        return out;
      });
    }
  }
  return y;
}

}  // namespace

Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias,
                  double eps) {
  return group_norm_op(x, groups, weight, bias, eps, false);
}

Tensor group_norm_silu(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias,
                       double eps, const Tensor& shift) {
  return group_norm_op(x, groups, weight, bias, eps, true, shift);
}

}  // namespace cm
