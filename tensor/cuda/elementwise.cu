// CUDA elementwise kernels: copy (with dtype conversion), fill, unary, binary, where. One
// grid-stride kernel per arity over a LoopPlan; contiguous operands index directly, others through
// OffsetCalc. The scalar math is tensor/scalar_ops.h, the same functors the CPU runs.
#include "tensor/cuda/cuda_backend.h"
#include "tensor/cuda/cuda_common.h"
#include "tensor/scalar_ops.h"

namespace cm::cuda_impl {
namespace {

template <class TI, class TO, class F>
__global__ void map1_kernel(OffsetCalc oc, int64_t n, TO* out, const TI* in, F f) {
  using C = compute_t<TI>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[kMaxOperands];
    oc.offsets(i, o);
    out[o[0]] = convert<TO>(f(static_cast<C>(in[o[1]])));
  }
}

template <class TI, class TO, class F>
__global__ void map2_kernel(OffsetCalc oc, int64_t n, TO* out, const TI* a, const TI* b, F f) {
  using C = compute_t<TI>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[kMaxOperands];
    oc.offsets(i, o);
    out[o[0]] = convert<TO>(f(static_cast<C>(a[o[1]]), static_cast<C>(b[o[2]])));
  }
}

template <class T>
__global__ void where_kernel(OffsetCalc oc, int64_t n, T* out, const bool* c, const T* a,
                             const T* b) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[kMaxOperands];
    oc.offsets(i, o);
    out[o[0]] = c[o[1]] ? a[o[2]] : b[o[3]];
  }
}

template <class TI, class TO>
__global__ void copy_kernel(OffsetCalc oc, int64_t n, TO* out, const TI* in) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[kMaxOperands];
    oc.offsets(i, o);
    out[o[0]] = convert<TO>(in[o[1]]);
  }
}

template <class T>
__global__ void fill_kernel(OffsetCalc oc, int64_t n, T* out, T v) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[kMaxOperands];
    oc.offsets(i, o);
    out[o[0]] = v;
  }
}

// Launch helpers over a plan on the output's device.
template <class TI, class TO, class F>
void map1(const LoopPlan& p, int dev, F f) {
  if (p.numel == 0) return;
  map1_kernel<TI, TO, F><<<blocks_for(p.numel), kThreads, 0, stream(dev)>>>(
      OffsetCalc(p), p.numel, reinterpret_cast<TO*>(p.base[0]),
      reinterpret_cast<const TI*>(p.base[1]), f);
  CUDA_CHECK_LAUNCH();
}

template <class TI, class TO, class F>
void map2(const LoopPlan& p, int dev, F f) {
  if (p.numel == 0) return;
  map2_kernel<TI, TO, F><<<blocks_for(p.numel), kThreads, 0, stream(dev)>>>(
      OffsetCalc(p), p.numel, reinterpret_cast<TO*>(p.base[0]),
      reinterpret_cast<const TI*>(p.base[1]), reinterpret_cast<const TI*>(p.base[2]), f);
  CUDA_CHECK_LAUNCH();
}

// Per-dtype switches over the op lists of scalar_ops.h (the same lists as the CPU backend).
#define CM_UNARY_CASE(E, F)                                \
  case UnaryOp::E:                                         \
    map1<T, TO>(p, dev, sop::F<compute_t<T>>{C(a), C(b)}); \
    return true;
#define CM_BINARY_CASE(E, F)                             \
  case BinaryOp::E:                                      \
    map2<T, TO>(p, dev, sop::F<compute_t<T>>{C(alpha)}); \
    return true;

template <class T, class TO = bool>
bool unary_pred(UnaryOp op, const LoopPlan& p, int dev, double a, double b) {
  using C = compute_t<T>;
  switch (op) {
    CM_FOR_EACH_PRED_UNARY(CM_UNARY_CASE)
    default:
      return false;
  }
}
template <class T, class TO = T>
bool unary_float(UnaryOp op, const LoopPlan& p, int dev, double a, double b) {
  using C = compute_t<T>;
  switch (op) {
    CM_FOR_EACH_FLOAT_UNARY(CM_UNARY_CASE)
    default:
      return false;
  }
}
template <class T, class TO = T>
bool unary_int(UnaryOp op, const LoopPlan& p, int dev, double a, double b) {
  using C = compute_t<T>;
  switch (op) {
    CM_FOR_EACH_INT_UNARY(CM_UNARY_CASE)
    default:
      return false;
  }
}
template <class T, class TO = bool>
bool binary_pred(BinaryOp op, const LoopPlan& p, int dev, double alpha) {
  using C = compute_t<T>;
  switch (op) {
    CM_FOR_EACH_PRED_BINARY(CM_BINARY_CASE)
    default:
      return false;
  }
}
template <class T, class TO = T>
bool binary_float(BinaryOp op, const LoopPlan& p, int dev, double alpha) {
  using C = compute_t<T>;
  switch (op) {
    CM_FOR_EACH_FLOAT_BINARY(CM_BINARY_CASE)
    default:
      return false;
  }
}
template <class T, class TO = T>
bool binary_int(BinaryOp op, const LoopPlan& p, int dev, double alpha) {
  using C = compute_t<T>;
  switch (op) {
    CM_FOR_EACH_INT_BINARY(CM_BINARY_CASE)
    default:
      return false;
  }
}
#undef CM_UNARY_CASE
#undef CM_BINARY_CASE

}  // namespace

void CudaBackend::copy(const Tensor& src, const Tensor& dst) {
  const int dev = dst.device().index;
  DeviceGuard g(dev);
  if (dst.numel() == 0) return;
  if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous() &&
      src.shape() == dst.shape()) {
    if (src.data_ptr() != dst.data_ptr())
      CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), dst.nbytes(),
                                 cudaMemcpyDeviceToDevice, stream(dev)));
    return;
  }
  LoopPlan p = make_plan({&dst, &src});
  CM_DISPATCH_ALL(dst.dtype(), "copy", [&] {
    using TO = scalar_t;
    CM_DISPATCH_ALL(src.dtype(), "copy", [&] {
      using TI = scalar_t;
      copy_kernel<TI, TO><<<blocks_for(p.numel), kThreads, 0, stream(dev)>>>(
          OffsetCalc(p), p.numel, reinterpret_cast<TO*>(p.base[0]),
          reinterpret_cast<const TI*>(p.base[1]));
      CUDA_CHECK_LAUNCH();
    });
  });
}

void CudaBackend::fill(const Tensor& dst, double value) {
  const int dev = dst.device().index;
  DeviceGuard g(dev);
  if (dst.numel() == 0) return;
  LoopPlan p = make_plan({&dst});
  CM_DISPATCH_ALL(dst.dtype(), "fill", [&] {
    fill_kernel<scalar_t><<<blocks_for(p.numel), kThreads, 0, stream(dev)>>>(
        OffsetCalc(p), p.numel, reinterpret_cast<scalar_t*>(p.base[0]), convert<scalar_t>(value));
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double a, double b) {
  const int dev = out.device().index;
  DeviceGuard g(dev);
  LoopPlan p = make_plan({&out, &x});
  const char* name = unary_op_name(op);
  bool done = false;
  if (unary_op_is_predicate(op)) {
    CM_DISPATCH_ALL(x.dtype(), name, [&] { done = unary_pred<scalar_t>(op, p, dev, a, b); });
  } else if (is_floating(x.dtype())) {
    CM_DISPATCH_FLOAT(x.dtype(), name, [&] { done = unary_float<scalar_t>(op, p, dev, a, b); });
  } else {
    CM_DISPATCH_NUMERIC(x.dtype(), name, [&] { done = unary_int<scalar_t>(op, p, dev, a, b); });
  }
  CM_CHECK(done, name, ": not defined for dtype ", dtype_name(x.dtype()));
}

void CudaBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out,
                         double alpha) {
  const int dev = out.device().index;
  DeviceGuard g(dev);
  LoopPlan p = make_plan({&out, &a, &b});
  const char* name = binary_op_name(op);
  bool done = false;
  if (binary_op_is_predicate(op)) {
    CM_DISPATCH_ALL(a.dtype(), name, [&] { done = binary_pred<scalar_t>(op, p, dev, alpha); });
  } else if (is_floating(a.dtype())) {
    CM_DISPATCH_FLOAT(a.dtype(), name, [&] { done = binary_float<scalar_t>(op, p, dev, alpha); });
  } else {
    CM_DISPATCH_NUMERIC(a.dtype(), name, [&] { done = binary_int<scalar_t>(op, p, dev, alpha); });
  }
  CM_CHECK(done, name, ": not defined for dtype ", dtype_name(a.dtype()));
}

void CudaBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  const int dev = out.device().index;
  DeviceGuard g(dev);
  if (out.numel() == 0) return;
  LoopPlan p = make_plan({&out, &cond, &a, &b});
  CM_DISPATCH_ALL(out.dtype(), "where", [&] {
    where_kernel<scalar_t><<<blocks_for(p.numel), kThreads, 0, stream(dev)>>>(
        OffsetCalc(p), p.numel, reinterpret_cast<scalar_t*>(p.base[0]),
        reinterpret_cast<const bool*>(p.base[1]), reinterpret_cast<const scalar_t*>(p.base[2]),
        reinterpret_cast<const scalar_t*>(p.base[3]));
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace cm::cuda_impl
