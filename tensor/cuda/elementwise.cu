// CUDA elementwise kernels: copy (with dtype conversion), fill, unary, binary, where. Three paths
// per arity over a LoopPlan: operands that are all one unit-stride run and 16-byte aligned go
// through a vectorised kernel (16-byte loads and stores, 32-bit indices); other plans whose offsets
// fit in 32 bits go through a grid-stride kernel with 32-bit index arithmetic (64-bit division is
// several times slower on the GPU); the rest through the same kernel in 64 bits. The scalar math is
// tensor/scalar_ops.h, the same functors the CPU runs.
#include <climits>

#include "tensor/cuda/cuda_backend.h"
#include "tensor/cuda/cuda_common.h"
#include "tensor/scalar_ops.h"

namespace cm::cuda_impl {
namespace {

// N elements moved as one aligned vector (one 16-byte access where N * sizeof(T) == 16).
template <class T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Elements per vector: 16 bytes of the wider of the input and output types.
template <class TI, class TO>
constexpr int vec_width() {
  return int(16 / (sizeof(TI) > sizeof(TO) ? sizeof(TI) : sizeof(TO)));
}

template <class T, int N>
bool aligned_for_vec(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % alignof(Vec<T, N>) == 0;
}

// Element counts below this index in int32: a grid-stride loop's index then stays below INT_MAX
// even one whole grid (at most 2^28 threads, see blocks_for) past the end.
constexpr int64_t kInt32Limit = int64_t(1) << 30;

// Whether every element index and operand offset of the plan fits in an int32.
bool fits_int32(const LoopPlan& p) {
  if (p.numel >= kInt32Limit) return false;
  for (int k = 0; k < p.nops; ++k) {
    int64_t reach = 0;
    for (int d = 0; d < p.ndim; ++d)
      reach += (p.shape[d] - 1) * (p.strides[k][d] < 0 ? -p.strides[k][d] : p.strides[k][d]);
    if (reach >= INT_MAX) return false;
  }
  return true;
}

// One input element to one output element: a scalar functor of scalar_ops.h applied in the input's
// compute type (unary ops), or a plain conversion (copy).
template <class TI, class TO, class F>
struct ApplyInComputeType {
  F f;
  __device__ TO operator()(TI x) const { return convert<TO>(f(static_cast<compute_t<TI>>(x))); }
};
template <class TI, class TO>
struct Convert {
  __device__ TO operator()(TI x) const { return convert<TO>(x); }
};

// ---- vectorised kernels over contiguous, aligned operands (n < 2^30)

template <int N, class TI, class TO, class Op>
__global__ void unary_vec_kernel(int32_t n, TO* out, const TI* in, Op op) {
  const int32_t nv = n / N, step = int32_t(gridDim.x * blockDim.x);
  const int32_t first = int32_t(blockIdx.x * blockDim.x + threadIdx.x);
  for (int32_t v = first; v < nv; v += step) {
    const Vec<TI, N> x = reinterpret_cast<const Vec<TI, N>*>(in)[v];
    Vec<TO, N> r;
#pragma unroll
    for (int j = 0; j < N; ++j) r.v[j] = op(x.v[j]);
    reinterpret_cast<Vec<TO, N>*>(out)[v] = r;
  }
  for (int32_t i = nv * N + first; i < n; i += step) out[i] = op(in[i]);
}

template <int N, class TI, class TO, class F>
__global__ void map2_vec_kernel(int32_t n, TO* out, const TI* a, const TI* b, F f) {
  using C = compute_t<TI>;
  const int32_t nv = n / N, step = int32_t(gridDim.x * blockDim.x);
  const int32_t first = int32_t(blockIdx.x * blockDim.x + threadIdx.x);
  for (int32_t v = first; v < nv; v += step) {
    const Vec<TI, N> x = reinterpret_cast<const Vec<TI, N>*>(a)[v];
    const Vec<TI, N> y = reinterpret_cast<const Vec<TI, N>*>(b)[v];
    Vec<TO, N> r;
#pragma unroll
    for (int j = 0; j < N; ++j)
      r.v[j] = convert<TO>(f(static_cast<C>(x.v[j]), static_cast<C>(y.v[j])));
    reinterpret_cast<Vec<TO, N>*>(out)[v] = r;
  }
  for (int32_t i = nv * N + first; i < n; i += step)
    out[i] = convert<TO>(f(static_cast<C>(a[i]), static_cast<C>(b[i])));
}

template <int N, class T>
__global__ void fill_vec_kernel(int32_t n, T* out, T value) {
  const int32_t nv = n / N, step = int32_t(gridDim.x * blockDim.x);
  const int32_t first = int32_t(blockIdx.x * blockDim.x + threadIdx.x);
  Vec<T, N> r;
#pragma unroll
  for (int j = 0; j < N; ++j) r.v[j] = value;
  for (int32_t v = first; v < nv; v += step) reinterpret_cast<Vec<T, N>*>(out)[v] = r;
  for (int32_t i = nv * N + first; i < n; i += step) out[i] = value;
}

// ---- grid-stride kernels over any plan, indexing in I

template <class I, class TI, class TO, class Op>
__global__ void unary_kernel(OffsetCalc oc, I n, TO* out, const TI* in, Op op) {
  for (I i = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); i < n;
       i += I(gridDim.x) * blockDim.x) {
    I o[kMaxOperands];
    oc.offsets(i, o);
    out[o[0]] = op(in[o[1]]);
  }
}

template <class I, class TI, class TO, class F>
__global__ void map2_kernel(OffsetCalc oc, I n, TO* out, const TI* a, const TI* b, F f) {
  using C = compute_t<TI>;
  for (I i = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); i < n;
       i += I(gridDim.x) * blockDim.x) {
    I o[kMaxOperands];
    oc.offsets(i, o);
    out[o[0]] = convert<TO>(f(static_cast<C>(a[o[1]]), static_cast<C>(b[o[2]])));
  }
}

template <class I, class T>
__global__ void where_kernel(OffsetCalc oc, I n, T* out, const bool* c, const T* a, const T* b) {
  for (I i = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); i < n;
       i += I(gridDim.x) * blockDim.x) {
    I o[kMaxOperands];
    oc.offsets(i, o);
    out[o[0]] = c[o[1]] ? a[o[2]] : b[o[3]];
  }
}

template <class I, class T>
__global__ void fill_kernel(OffsetCalc oc, I n, T* out, T v) {
  for (I i = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); i < n;
       i += I(gridDim.x) * blockDim.x) {
    I o[kMaxOperands];
    oc.offsets(i, o);
    out[o[0]] = v;
  }
}

// Launches `generic.template operator()<I>()` with I = int32_t where the plan allows, else int64_t.
template <class G>
void with_index_type(const LoopPlan& p, G&& generic) {
  if (fits_int32(p))
    generic.template operator()<int32_t>();
  else
    generic.template operator()<int64_t>();
}

// Launch helpers over a plan on the output's device.
template <class TI, class TO, class Op>
void unary_launch(const LoopPlan& p, int dev, Op op) {
  if (p.numel == 0) return;
  const OffsetCalc oc(p);
  TO* out = reinterpret_cast<TO*>(p.base[0]);
  const TI* in = reinterpret_cast<const TI*>(p.base[1]);
  constexpr int N = vec_width<TI, TO>();
  if (oc.contiguous && p.numel < kInt32Limit && aligned_for_vec<TO, N>(out) &&
      aligned_for_vec<TI, N>(in)) {
    unary_vec_kernel<N, TI, TO, Op>
        <<<blocks_for((p.numel + N - 1) / N), kThreads, 0, stream(dev)>>>(int32_t(p.numel), out, in,
                                                                          op);
  } else {
    with_index_type(p, [&]<class I>() {
      unary_kernel<I, TI, TO, Op>
          <<<blocks_for(p.numel), kThreads, 0, stream(dev)>>>(oc, I(p.numel), out, in, op);
    });
  }
  CUDA_CHECK_LAUNCH();
}

template <class TI, class TO, class F>
void map1(const LoopPlan& p, int dev, F f) {
  unary_launch<TI, TO>(p, dev, ApplyInComputeType<TI, TO, F>{f});
}

template <class TI, class TO, class F>
void map2(const LoopPlan& p, int dev, F f) {
  if (p.numel == 0) return;
  const OffsetCalc oc(p);
  TO* out = reinterpret_cast<TO*>(p.base[0]);
  const TI* a = reinterpret_cast<const TI*>(p.base[1]);
  const TI* b = reinterpret_cast<const TI*>(p.base[2]);
  constexpr int N = vec_width<TI, TO>();
  if (oc.contiguous && p.numel < kInt32Limit && aligned_for_vec<TO, N>(out) &&
      aligned_for_vec<TI, N>(a) && aligned_for_vec<TI, N>(b)) {
    map2_vec_kernel<N, TI, TO, F><<<blocks_for((p.numel + N - 1) / N), kThreads, 0, stream(dev)>>>(
        int32_t(p.numel), out, a, b, f);
  } else {
    with_index_type(p, [&]<class I>() {
      map2_kernel<I, TI, TO, F>
          <<<blocks_for(p.numel), kThreads, 0, stream(dev)>>>(oc, I(p.numel), out, a, b, f);
    });
  }
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
      unary_launch<TI, TO>(p, dev, Convert<TI, TO>{});
    });
  });
}

void CudaBackend::fill(const Tensor& dst, double value) {
  const int dev = dst.device().index;
  DeviceGuard g(dev);
  if (dst.numel() == 0) return;
  LoopPlan p = make_plan({&dst});
  const OffsetCalc oc(p);
  CM_DISPATCH_ALL(dst.dtype(), "fill", [&] {
    using T = scalar_t;
    T* out = reinterpret_cast<T*>(p.base[0]);
    const T v = convert<T>(value);
    constexpr int N = vec_width<T, T>();
    if (oc.contiguous && p.numel < kInt32Limit && aligned_for_vec<T, N>(out)) {
      fill_vec_kernel<N, T><<<blocks_for((p.numel + N - 1) / N), kThreads, 0, stream(dev)>>>(
          int32_t(p.numel), out, v);
    } else {
      with_index_type(p, [&]<class I>() {
        fill_kernel<I, T>
            <<<blocks_for(p.numel), kThreads, 0, stream(dev)>>>(oc, I(p.numel), out, v);
      });
    }
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
  const OffsetCalc oc(p);
  CM_DISPATCH_ALL(out.dtype(), "where", [&] {
    using T = scalar_t;
    with_index_type(p, [&]<class I>() {
      where_kernel<I, T><<<blocks_for(p.numel), kThreads, 0, stream(dev)>>>(
          oc, I(p.numel), reinterpret_cast<T*>(p.base[0]), reinterpret_cast<const bool*>(p.base[1]),
          reinterpret_cast<const T*>(p.base[2]), reinterpret_cast<const T*>(p.base[3]));
    });
    CUDA_CHECK_LAUNCH();
  });
}

namespace {
template <class T>
__global__ void adam_step_kernel(int64_t n, T* p, T* m, T* v, const T* g, sop::AdamCoeffs<T> k) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    T pi = p[i], mi = m[i], vi = v[i];
    sop::adam_update(pi, mi, vi, g[i], k);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}
}  // namespace

void CudaBackend::adam_step(const Tensor& param, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                            const Tensor& grad, const AdamStep& s) {
  const int dev = param.device().index;
  DeviceGuard guard(dev);
  const int64_t n = param.numel();
  if (n == 0) return;
  auto launch = [&]<class T>() {
    adam_step_kernel<T><<<blocks_for(n), kThreads, 0, stream(dev)>>>(
        n, param.data<T>(), exp_avg.data<T>(), exp_avg_sq.data<T>(), grad.data<T>(),
        sop::AdamCoeffs<T>(s));
    CUDA_CHECK_LAUNCH();
  };
  if (param.dtype() == DType::f32)
    launch.template operator()<float>();
  else if (param.dtype() == DType::f64)
    launch.template operator()<double>();
  else
    CM_FAIL("adam_step: dtype ", dtype_name(param.dtype()), " (f32 or f64 only)");
}

}  // namespace cm::cuda_impl
