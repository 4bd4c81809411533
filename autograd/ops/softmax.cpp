// Softmax and log-softmax along one dim (fused, numerically stable kernels), with their backward
// from the saved output: y·(g − Σ g·y) and g − exp(y)·Σ g.
#include "autograd/ops/common.h"

namespace cm {
using namespace opdetail;

namespace {
Tensor softmax_impl(const Tensor& x0, int64_t dim, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  const Tensor x = is_floating(x0.dtype()) ? x0 : to(x0, DType::f32);
  if (x.dim() == 0) return softmax_impl(reshape(x, {1}), 0, log).reshape({});
  dim = wrap_dim(dim, x.dim(), name);
  Tensor y = new_empty(x.shape(), x.dtype(), x.device());
  backend_of(x).softmax(x, dim, log, y);
  if (needs_grad({x})) {
    SavedTensor sy(y, name);
    record(name, {x}, {y}, [=](const Grads& g) {
      const Tensor yy = sy.get();
      Tensor gx = new_empty(yy.shape(), yy.dtype(), yy.device());
      backend_of(yy).softmax_backward(g[0], yy, dim, log, gx);
      return Grads{gx};
    });
  }
  return y;
}
}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) {
  return softmax_impl(x, dim, false);
}
Tensor log_softmax(const Tensor& x, int64_t dim) {
  return softmax_impl(x, dim, true);
}

}  // namespace cm
