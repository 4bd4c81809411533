// CPU indexing kernels: index_select / index_add (rows chosen by a 1-D index along one dim) and
// gather / scatter_add (an index tensor of the output's shape). Index values were validated by
// the caller. Accumulating kernels never let two threads write the same element, so duplicates
// in the index add up in a fixed order.
#include "tensor/cpu/cpu_backend.h"
#include "tensor/cpu/loops.h"
#include "tensor/indexer.h"

namespace cm::cpu {
namespace {

template <class F>
void dispatch_index_dtype(DType t, const char* op, F&& f) {
  CM_DISPATCH_ALL(t, op, [&] { f(scalar_t{}); });
}

}  // namespace

void CpuBackend::index_select(const Tensor& x, int64_t dim, const Tensor& index,
                              const Tensor& out) {
  Indexer w(out.shape(), dim, {&x.strides(), &out.strides()});
  const int64_t n = index.numel(), is = index.strides()[0];
  const int64_t xs = x.strides()[dim], os = out.strides()[dim];
  const int64_t* ip = static_cast<const int64_t*>(index.data_ptr());
  dispatch_index_dtype(x.dtype(), "index_select", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x.data_ptr());
    T* op = static_cast<T*>(out.data_ptr());
    parallel_for(n, w.numel, [&](int64_t j) {
      const int64_t src = ip[j * is] * xs, dst = j * os;
      for (int64_t i = 0; i < w.numel; ++i) {
        int64_t o[3];
        w.offsets(i, o);
        op[o[1] + dst] = xp[o[0] + src];
      }
    });
  });
}

void CpuBackend::index_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  Indexer w(src.shape(), dim, {&src.strides(), &out.strides()});
  const int64_t n = index.numel(), is = index.strides()[0];
  const int64_t ss = src.strides()[dim], os = out.strides()[dim];
  const int64_t* ip = static_cast<const int64_t*>(index.data_ptr());
  CM_DISPATCH_NUMERIC(out.dtype(), "index_add", [&] {
    const scalar_t* sp = static_cast<const scalar_t*>(src.data_ptr());
    scalar_t* op = static_cast<scalar_t*>(out.data_ptr());
    parallel_for(w.numel, n, [&](int64_t i) {  // each thread owns whole output rows
      int64_t o[3];
      w.offsets(i, o);
      for (int64_t j = 0; j < n; ++j) {
        scalar_t& dst = op[o[1] + ip[j * is] * os];
        dst = convert<scalar_t>(static_cast<compute_t<scalar_t>>(dst) +
                                static_cast<compute_t<scalar_t>>(sp[o[0] + j * ss]));
      }
    });
  });
}

void CpuBackend::gather(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) {
  Indexer w(out.shape(), dim, {&out.strides(), &index.strides(), &x.strides()});
  const int64_t n = out.shape()[dim];
  const int64_t os = out.strides()[dim], is = index.strides()[dim], xs = x.strides()[dim];
  const int64_t* ip = static_cast<const int64_t*>(index.data_ptr());
  dispatch_index_dtype(x.dtype(), "gather", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x.data_ptr());
    T* op = static_cast<T*>(out.data_ptr());
    parallel_for(w.numel, n, [&](int64_t i) {
      int64_t o[3];
      w.offsets(i, o);
      for (int64_t j = 0; j < n; ++j) op[o[0] + j * os] = xp[o[2] + ip[o[1] + j * is] * xs];
    });
  });
}

void CpuBackend::scatter_add(const Tensor& out, int64_t dim, const Tensor& index,
                             const Tensor& src) {
  Indexer w(src.shape(), dim, {&src.strides(), &index.strides(), &out.strides()});
  const int64_t n = src.shape()[dim];
  const int64_t ss = src.strides()[dim], is = index.strides()[dim], os = out.strides()[dim];
  const int64_t* ip = static_cast<const int64_t*>(index.data_ptr());
  CM_DISPATCH_NUMERIC(out.dtype(), "scatter_add", [&] {
    const scalar_t* sp = static_cast<const scalar_t*>(src.data_ptr());
    scalar_t* op = static_cast<scalar_t*>(out.data_ptr());
    parallel_for(w.numel, n, [&](int64_t i) {  // a position off `dim` owns its output column
      int64_t o[3];
      w.offsets(i, o);
      for (int64_t j = 0; j < n; ++j) {
        scalar_t& dst = op[o[2] + ip[o[1] + j * is] * os];
        dst = convert<scalar_t>(static_cast<compute_t<scalar_t>>(dst) +
                                static_cast<compute_t<scalar_t>>(sp[o[0] + j * ss]));
      }
    });
  });
}

}  // namespace cm::cpu
