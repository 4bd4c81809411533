// Reductions: sum, mean, var/std, amax/amin, max/min with indices, argmax/argmin, logsumexp.
// sum/mean/amax/amin and max/min run on Backend::reduce / arg_reduce; var, std and logsumexp are
// composites and get their gradients from the ops they are made of.
#include <cmath>

#include "autograd/ops/common.h"

namespace cm {
using namespace opdetail;

namespace {

// Runs a keepdim reduction kernel; returns the result in keepdim form.
Tensor reduce_raw(ReduceOp op, const Tensor& x, const std::vector<int64_t>& dims) {
  Tensor out = new_empty(keepdim_shape(x.shape(), dims), x.dtype(), x.device());
  backend_of(x).reduce(op, x, out);
  return out;
}

// keepdim form -> requested form
Tensor finish(const Tensor& y_keep, const Tensor& x, const std::vector<int64_t>& dims,
              bool keepdim) {
  return keepdim ? y_keep : reshape(y_keep, dropdim_shape(x.shape(), dims));
}

// gradient g of the requested form -> keepdim form, broadcast to x's shape (a view)
Tensor grad_to_input(const Tensor& g, const Shape& keep_shape, const Shape& x_shape) {
  return expand(reshape(g, keep_shape), x_shape);
}

int64_t reduced_count(const Shape& s, const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= s[size_t(d)];
  return n;
}

}  // namespace

Tensor sum(const Tensor& x0, const Shape& dims_, bool keepdim) {
  const Tensor x = is_floating(x0.dtype()) ? x0 : to(x0, DType::i64);
  const std::vector<int64_t> dims = reduce_dims(x, dims_, "sum");
  Tensor y = reduce_raw(ReduceOp::Sum, x, dims);
  if (needs_grad({x})) {
    const Shape ks = y.shape(), xs = x.shape();
    record("sum", {x}, {y},
           [ks, xs](const Grads& g) { return Grads{grad_to_input(g[0], ks, xs)}; });
  }
  return finish(y, x, dims, keepdim);
}

Tensor mean(const Tensor& x0, const Shape& dims_, bool keepdim) {
  const Tensor x = is_floating(x0.dtype()) ? x0 : to(x0, DType::f32);
  const std::vector<int64_t> dims = reduce_dims(x, dims_, "mean");
  Tensor y = reduce_raw(ReduceOp::Mean, x, dims);
  if (needs_grad({x})) {
    const Shape ks = y.shape(), xs = x.shape();
    const double inv = 1.0 / double(reduced_count(xs, dims));
    record("mean", {x}, {y},
           [=](const Grads& g) { return Grads{grad_to_input(mul(g[0], inv), ks, xs)}; });
  }
  return finish(y, x, dims, keepdim);
}

Tensor var(const Tensor& x0, const Shape& dims_, int64_t correction, bool keepdim) {
  const Tensor x = is_floating(x0.dtype()) ? x0 : to(x0, DType::f32);
  const std::vector<int64_t> dims = reduce_dims(x, dims_, "var");
  const Shape d(dims.begin(), dims.end());
  const int64_t n = reduced_count(x.shape(), dims);
  const Tensor centred = sub(x, mean(x, d, true));
  return div(sum(square(centred), d, keepdim), double(n - correction));
}

Tensor std(const Tensor& x, const Shape& dims, int64_t correction, bool keepdim) {
  return sqrt(var(x, dims, correction, keepdim));
}

namespace {
Tensor extreme(const Tensor& x, const Shape& dims_, bool keepdim, bool is_max) {
  const char* name = is_max ? "amax" : "amin";
  const std::vector<int64_t> dims = reduce_dims(x, dims_, name);
  for (int64_t d : dims)
    CM_CHECK(x.shape()[size_t(d)] > 0, name, ": cannot reduce over the empty dim ", d, " of shape ",
             shape_str(x.shape()));
  Tensor y = reduce_raw(is_max ? ReduceOp::Max : ReduceOp::Min, x, dims);
  if (needs_grad({x})) {
    // The gradient is shared evenly among the elements equal to the extremum.
    SavedTensor sx(x, name), sy(y, name);
    const Shape ks = y.shape(), xs = x.shape();
    const Shape d(dims.begin(), dims.end());
    record(name, {x}, {y}, [=](const Grads& g) {
      const Tensor mask = eq(sx.get(), sy.get());
      const Tensor count = sum(to(mask, g[0].dtype()), d, true);
      const Tensor share = div(reshape(g[0], ks), count);
      return Grads{where(mask, expand(share, xs), 0.0)};
    });
  }
  return finish(y, x, dims, keepdim);
}

ValuesIndices arg_extreme(const Tensor& x, int64_t dim, bool keepdim, bool is_max) {
  const char* name = is_max ? "max" : "min";
  dim = wrap_dim(dim, x.dim(), name);
  const Tensor xx = x.dim() == 0 ? reshape(x, {1}) : x;
  CM_CHECK(xx.shape()[size_t(dim)] > 0, name, ": cannot reduce over the empty dim ", dim,
           " of shape ", shape_str(x.shape()));
  const Shape ks = keepdim_shape(xx.shape(), {dim});
  Tensor values = new_empty(ks, x.dtype(), x.device());
  Tensor indices = new_empty(ks, DType::i64, x.device());
  backend_of(x).arg_reduce(is_max, xx, dim, values, indices);
  if (needs_grad({x})) {
    SavedTensor si(indices, name);
    const Shape xs = xx.shape();
    record(name, {xx}, {values}, [=](const Grads& g) {
      Tensor gx = zeros(xs, {.dtype = g[0].dtype(), .device = g[0].device()});
      backend_of(gx).scatter_add(gx, dim, si.get(), g[0]);
      return Grads{gx};
    });
  }
  if (x.dim() == 0) return {reshape(values, {}), reshape(indices, {})};
  if (keepdim) return {values, indices};
  return {squeeze(values, dim), squeeze(indices, dim)};
}
}  // namespace

Tensor amax(const Tensor& x, const Shape& dims, bool keepdim) {
  return extreme(x, dims, keepdim, true);
}
Tensor amin(const Tensor& x, const Shape& dims, bool keepdim) {
  return extreme(x, dims, keepdim, false);
}
ValuesIndices max(const Tensor& x, int64_t dim, bool keepdim) {
  return arg_extreme(x, dim, keepdim, true);
}
ValuesIndices min(const Tensor& x, int64_t dim, bool keepdim) {
  return arg_extreme(x, dim, keepdim, false);
}
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  return max(detach(x), dim, keepdim).indices;
}
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim) {
  return min(detach(x), dim, keepdim).indices;
}

Tensor logsumexp(const Tensor& x0, const Shape& dims_, bool keepdim) {
  const Tensor x = is_floating(x0.dtype()) ? x0 : to(x0, DType::f32);
  const std::vector<int64_t> dims = reduce_dims(x, dims_, "logsumexp");
  const Shape d(dims.begin(), dims.end());
  // m = max (without gradient; the result does not depend on it), 0 where it is infinite
  Tensor m = amax(detach(x), d, true);
  m = where(isfinite(m), m, 0.0);
  Tensor y = add(log(sum(exp(sub(x, m)), d, true)), m);
  return keepdim ? y : reshape(y, dropdim_shape(x.shape(), dims));
}

}  // namespace cm
