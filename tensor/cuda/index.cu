// CUDA indexing kernels: index_select / index_add and gather / scatter_add. The accumulating
// kernels give each thread whole output rows (positions off the indexed dim) and walk the index in
// order, so duplicate indices accumulate deterministically without atomics.
#include "tensor/cuda/cuda_backend.h"
#include "tensor/cuda/cuda_common.h"
#include "tensor/indexer.h"

namespace cm::cuda_impl {
namespace {

#define CM_GRID_LOOP(i, n)                                                  \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

// out[..., j, ...] = x[..., index[j], ...]; one thread per output element (j outermost).
template <class T>
__global__ void index_select_kernel(Indexer w, int64_t n, const T* x, int64_t xs,
                                    const int64_t* idx, int64_t is, T* out, int64_t os) {
  CM_GRID_LOOP(t, n * w.numel) {
    const int64_t j = t / w.numel, i = t % w.numel;
    int64_t o[3];
    w.offsets(i, o);
    out[o[1] + j * os] = x[o[0] + idx[j * is] * xs];
  }
}

template <class T>
__global__ void index_add_kernel(Indexer w, int64_t n, T* out, int64_t os, const int64_t* idx,
                                 int64_t is, const T* src, int64_t ss) {
  using C = compute_t<T>;
  CM_GRID_LOOP(i, w.numel) {
    int64_t o[3];
    w.offsets(i, o);
    for (int64_t j = 0; j < n; ++j) {
      T& dst = out[o[1] + idx[j * is] * os];
      dst = convert<T>(static_cast<C>(dst) + static_cast<C>(src[o[0] + j * ss]));
    }
  }
}

template <class T>
__global__ void gather_kernel(Indexer w, int64_t n, const T* x, int64_t xs, const int64_t* idx,
                              int64_t is, T* out, int64_t os) {
  CM_GRID_LOOP(t, n * w.numel) {
    const int64_t j = t % n, i = t / n;
    int64_t o[3];
    w.offsets(i, o);
    out[o[0] + j * os] = x[o[2] + idx[o[1] + j * is] * xs];
  }
}

template <class T>
__global__ void scatter_add_kernel(Indexer w, int64_t n, T* out, int64_t os, const int64_t* idx,
                                   int64_t is, const T* src, int64_t ss) {
  using C = compute_t<T>;
  CM_GRID_LOOP(i, w.numel) {
    int64_t o[3];
    w.offsets(i, o);
    for (int64_t j = 0; j < n; ++j) {
      T& dst = out[o[2] + idx[o[1] + j * is] * os];
      dst = convert<T>(static_cast<C>(dst) + static_cast<C>(src[o[0] + j * ss]));
    }
  }
}

}  // namespace

void CudaBackend::index_select(const Tensor& x, int64_t dim, const Tensor& index,
                               const Tensor& out) {
  const int dev = out.device().index;
  DeviceGuard g(dev);
  Indexer w(out.shape(), dim, {&x.strides(), &out.strides()});
  const int64_t n = index.numel();
  if (n * w.numel == 0) return;
  CM_DISPATCH_ALL(x.dtype(), "index_select", [&] {
    index_select_kernel<scalar_t><<<blocks_for(n * w.numel), kThreads, 0, stream(dev)>>>(
        w, n, static_cast<const scalar_t*>(x.data_ptr()), x.strides()[size_t(dim)],
        static_cast<const int64_t*>(index.data_ptr()), index.strides()[0],
        static_cast<scalar_t*>(out.data_ptr()), out.strides()[size_t(dim)]);
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::index_add(const Tensor& out, int64_t dim, const Tensor& index,
                            const Tensor& src) {
  const int dev = out.device().index;
  DeviceGuard g(dev);
  Indexer w(src.shape(), dim, {&src.strides(), &out.strides()});
  const int64_t n = index.numel();
  if (n * w.numel == 0) return;
  CM_DISPATCH_NUMERIC(out.dtype(), "index_add", [&] {
    index_add_kernel<scalar_t><<<blocks_for(w.numel), kThreads, 0, stream(dev)>>>(
        w, n, static_cast<scalar_t*>(out.data_ptr()), out.strides()[size_t(dim)],
        static_cast<const int64_t*>(index.data_ptr()), index.strides()[0],
        static_cast<const scalar_t*>(src.data_ptr()), src.strides()[size_t(dim)]);
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::gather(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) {
  const int dev = out.device().index;
  DeviceGuard g(dev);
  Indexer w(out.shape(), dim, {&out.strides(), &index.strides(), &x.strides()});
  const int64_t n = out.shape()[size_t(dim)];
  if (n * w.numel == 0) return;
  CM_DISPATCH_ALL(x.dtype(), "gather", [&] {
    gather_kernel<scalar_t><<<blocks_for(n * w.numel), kThreads, 0, stream(dev)>>>(
        w, n, static_cast<const scalar_t*>(x.data_ptr()), x.strides()[size_t(dim)],
        static_cast<const int64_t*>(index.data_ptr()), index.strides()[size_t(dim)],
        static_cast<scalar_t*>(out.data_ptr()), out.strides()[size_t(dim)]);
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::scatter_add(const Tensor& out, int64_t dim, const Tensor& index,
                              const Tensor& src) {
  const int dev = out.device().index;
  DeviceGuard g(dev);
  Indexer w(src.shape(), dim, {&src.strides(), &index.strides(), &out.strides()});
  const int64_t n = src.shape()[size_t(dim)];
  if (n * w.numel == 0) return;
  CM_DISPATCH_NUMERIC(out.dtype(), "scatter_add", [&] {
    scatter_add_kernel<scalar_t><<<blocks_for(w.numel), kThreads, 0, stream(dev)>>>(
        w, n, static_cast<scalar_t*>(out.data_ptr()), out.strides()[size_t(dim)],
        static_cast<const int64_t*>(index.data_ptr()), index.strides()[size_t(dim)],
        static_cast<const scalar_t*>(src.data_ptr()), src.strides()[size_t(dim)]);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace cm::cuda_impl
