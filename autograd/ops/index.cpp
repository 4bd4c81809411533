// Indexing: index_select / index_add along one dim with a 1-D index, gather / scatter_add with an
// index tensor. Each is the other's backward: index_select ↔ index_add, gather ↔ scatter_add.
// Index values are checked on the host before any kernel runs.
#include "autograd/ops/common.h"

namespace cm {
using namespace opdetail;

namespace {

// i64 index, values checked to lie in [0, size).
Tensor checked_index(const Tensor& index, int64_t size, const char* op, const char* what) {
  CM_CHECK(index.dtype() == DType::i64 || index.dtype() == DType::i32, op, ": ", what,
           " must be i64 or i32, got ", dtype_name(index.dtype()));
  Tensor idx = to(index, DType::i64);
  if (idx.numel() > 0) {
    const int64_t lo = amin(idx).item<int64_t>(), hi = amax(idx).item<int64_t>();
    CM_CHECK(lo >= 0 && hi < size, op, ": ", what, " value ", (lo < 0 ? lo : hi),
             " is out of range for a dim of size ", size);
  }
  return idx;
}

// gather/scatter shape rule: same rank, index.size(d) <= x.size(d) for d != dim.
void check_gather_shapes(const Tensor& x, const Tensor& index, int64_t dim, const char* op) {
  CM_CHECK(index.dim() == x.dim(), op, ": index of rank ", index.dim(), " for a tensor of rank ",
           x.dim());
  for (int64_t d = 0; d < x.dim(); ++d)
    CM_CHECK(d == dim || index.shape()[size_t(d)] <= x.shape()[size_t(d)], op, ": index shape ",
             shape_str(index.shape()), " exceeds tensor shape ", shape_str(x.shape()), " in dim ",
             d);
}

}  // namespace

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index0) {
  if (x.dim() == 0) return index_select(reshape(x, {1}), 0, index0).reshape({});
  dim = wrap_dim(dim, x.dim(), "index_select");
  CM_CHECK(index0.dim() <= 1, "index_select: index must be 1-D, got shape ",
           shape_str(index0.shape()));
  common_device({x, index0}, "index_select");
  const Tensor index = reshape(
      checked_index(index0, x.shape()[size_t(dim)], "index_select", "index"), {index0.numel()});
  Shape s = x.shape();
  s[size_t(dim)] = index.numel();
  Tensor y = new_empty(s, x.dtype(), x.device());
  backend_of(x).index_select(x, dim, index, y);
  if (needs_grad({x})) {
    SavedTensor si(index, "index_select");
    const Shape xs = x.shape();
    record("index_select", {x}, {y}, [=](const Grads& g) {
      Tensor gx = zeros(xs, {.dtype = g[0].dtype(), .device = g[0].device()});
      backend_of(gx).index_add(gx, dim, si.get(), g[0]);
      return Grads{gx};
    });
  }
  return y;
}

Tensor index_add(const Tensor& x, int64_t dim, const Tensor& index0, const Tensor& src0) {
  dim = wrap_dim(dim, x.dim(), "index_add");
  CM_CHECK(index0.dim() == 1, "index_add: index must be 1-D, got shape ",
           shape_str(index0.shape()));
  common_device({x, index0, src0}, "index_add");
  const Tensor index = checked_index(index0, x.shape()[size_t(dim)], "index_add", "index");
  Shape want = x.shape();
  want[size_t(dim)] = index.numel();
  CM_CHECK(src0.shape() == want, "index_add: src has shape ", shape_str(src0.shape()),
           ", expected ", shape_str(want));
  const Tensor src = to(src0, x.dtype());
  Tensor y = clone(detach(x));
  backend_of(y).index_add(y, dim, index, src);
  if (needs_grad({x, src})) {
    SavedTensor si(index, "index_add");
    record("index_add", {x, src}, {y}, [=](const Grads& g) {
      return Grads{g[0], index_select(g[0], dim, si.get())};
    });
  }
  return y;
}

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index0) {
  dim = wrap_dim(dim, x.dim(), "gather");
  common_device({x, index0}, "gather");
  check_gather_shapes(x, index0, dim, "gather");
  const Tensor index = checked_index(index0, x.shape()[size_t(dim)], "gather", "index");
  Tensor y = new_empty(index.shape(), x.dtype(), x.device());
  backend_of(x).gather(x, dim, index, y);
  if (needs_grad({x})) {
    SavedTensor si(index, "gather");
    const Shape xs = x.shape();
    record("gather", {x}, {y}, [=](const Grads& g) {
      Tensor gx = zeros(xs, {.dtype = g[0].dtype(), .device = g[0].device()});
      backend_of(gx).scatter_add(gx, dim, si.get(), g[0]);
      return Grads{gx};
    });
  }
  return y;
}

Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index0, const Tensor& src0) {
  dim = wrap_dim(dim, x.dim(), "scatter_add");
  common_device({x, index0, src0}, "scatter_add");
  check_gather_shapes(x, index0, dim, "scatter_add");
  CM_CHECK(src0.shape() == index0.shape(), "scatter_add: src shape ", shape_str(src0.shape()),
           " differs from index shape ", shape_str(index0.shape()));
  const Tensor index = checked_index(index0, x.shape()[size_t(dim)], "scatter_add", "index");
  const Tensor src = to(src0, x.dtype());
  Tensor y = clone(detach(x));
  backend_of(y).scatter_add(y, dim, index, src);
  if (needs_grad({x, src})) {
    SavedTensor si(index, "scatter_add");
    record("scatter_add", {x, src}, {y}, [=](const Grads& g) {
      return Grads{g[0], gather(g[0], dim, si.get())};
    });
  }
  return y;
}

}  // namespace cm
