// CUDA reductions: sum/mean/amax/amin over any dims, max/min with indices along one dim, softmax
// and log-softmax with their backward. Block reductions use a fixed tree in shared memory and long
// reductions are split into fixed chunks whose partials a second pass combines in order: no
// atomics, so results are bit-for-bit reproducible run to run. Floating types accumulate in f32
// (f64 for f64), integers in i64.
#include <cfloat>
#include <climits>
#include <vector>

#include "tensor/cuda/cuda_backend.h"
#include "tensor/cuda/cuda_common.h"

namespace cm::cuda_impl {
namespace {

template <class T>
using acc_t =
    std::conditional_t<std::is_same_v<T, double>, double,
                       std::conditional_t<std::is_floating_point_v<compute_t<T>>, float, int64_t>>;

// A set of dims walked by linear index (row-major), with strides for two tensors.
struct Walk {
  int nd = 0;
  int64_t shape[kMaxDims] = {};
  int64_t s0[kMaxDims] = {};
  int64_t s1[kMaxDims] = {};
  int64_t numel = 1;

  void add(int64_t size, int64_t st0, int64_t st1) {
    if (size == 1) return;
    if (nd > 0 && s0[nd - 1] == st0 * size && s1[nd - 1] == st1 * size) {
      shape[nd - 1] *= size;
      s0[nd - 1] = st0;
      s1[nd - 1] = st1;
    } else {
      shape[nd] = size;
      s0[nd] = st0;
      s1[nd] = st1;
      ++nd;
    }
    numel *= size;
  }
  __device__ void offsets(int64_t i, int64_t* o0, int64_t* o1) const {
    int64_t a = 0, b = 0;
    for (int d = nd - 1; d >= 0; --d) {
      const int64_t q = i % shape[d];
      i /= shape[d];
      a += q * s0[d];
      b += q * s1[d];
    }
    *o0 = a;
    *o1 = b;
  }
};

Walk walk_except(const Tensor& a, const Tensor& b, int64_t dim) {
  Walk w;
  for (int64_t d = 0; d < a.dim(); ++d)
    if (d != dim) w.add(a.shape()[size_t(d)], a.strides()[size_t(d)], b.strides()[size_t(d)]);
  return w;
}

template <class A>
struct Combine {
  ReduceOp op;
  __device__ A operator()(A acc, A v) const {
    switch (op) {
      case ReduceOp::Max:
        return (v != v || v > acc) ? v : acc;  // NaN propagates
      case ReduceOp::Min:
        return (v != v || v < acc) ? v : acc;
      default:
        return acc + v;
    }
  }
};

template <class A>
A reduce_init(ReduceOp op) {
  if constexpr (std::is_floating_point_v<A>) {
    if (op == ReduceOp::Max) return -std::numeric_limits<A>::infinity();
    if (op == ReduceOp::Min) return std::numeric_limits<A>::infinity();
  } else {
    if (op == ReduceOp::Max) return std::numeric_limits<A>::lowest();
    if (op == ReduceOp::Min) return std::numeric_limits<A>::max();
  }
  return A(0);
}

// Tree reduction of one value per thread; the result is valid in thread 0.
template <class A, class F>
__device__ A block_reduce(A v, F f) {
  __shared__ A smem[kThreads];
  smem[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) smem[threadIdx.x] = f(smem[threadIdx.x], smem[threadIdx.x + s]);
    __syncthreads();
  }
  A r = smem[0];
  __syncthreads();
  return r;
}

// Grid (n_out, nchunks): block (o, c) reduces chunk c of output o's reduced range. With one chunk
// the block writes the result; otherwise its partial.
template <class T, class A>
__global__ void reduce_kernel(Walk kept, Walk red, const T* x, T* out, A* partial, int64_t chunk,
                              int nchunks, ReduceOp op, A init, double scale) {
  const int64_t o = blockIdx.x;
  const int c = blockIdx.y;
  int64_t xo, oo;
  kept.offsets(o, &xo, &oo);
  const int64_t begin = c * chunk, end = min(red.numel, begin + chunk);
  Combine<A> f{op};
  A acc = init;
  for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
    int64_t ro, unused;
    red.offsets(j, &ro, &unused);
    acc = f(acc, A(static_cast<compute_t<T>>(x[xo + ro])));
  }
  acc = block_reduce(acc, f);
  if (threadIdx.x != 0) return;
  if (nchunks == 1) {
    out[oo] = convert<T>(op == ReduceOp::Mean ? A(double(acc) * scale) : acc);
  } else {
    partial[o * nchunks + c] = acc;
  }
}

template <class T, class A>
__global__ void reduce_partials_kernel(Walk kept, const A* partial, int nchunks, T* out,
                                       ReduceOp op, A init, double scale) {
  const int64_t o = blockIdx.x;
  Combine<A> f{op};
  A acc = init;
  for (int c = threadIdx.x; c < nchunks; c += blockDim.x) acc = f(acc, partial[o * nchunks + c]);
  acc = block_reduce(acc, f);
  if (threadIdx.x == 0) {
    int64_t xo, oo;
    kept.offsets(o, &xo, &oo);
    out[oo] = convert<T>(op == ReduceOp::Mean ? A(double(acc) * scale) : acc);
  }
}

template <class T>
void reduce_typed(ReduceOp op, const Tensor& x, const Tensor& out, int dev) {
  using A = acc_t<T>;
  Walk kept, red;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (out.shape()[size_t(d)] == x.shape()[size_t(d)])
      kept.add(x.shape()[size_t(d)], x.strides()[size_t(d)], out.strides()[size_t(d)]);
    else
      red.add(x.shape()[size_t(d)], x.strides()[size_t(d)], 0);
  }
  const int64_t n_out = kept.numel, n_red = red.numel;
  if (n_out == 0) return;
  const A init = reduce_init<A>(op);
  const double scale = 1.0 / double(n_red);
  // Enough blocks to fill the GPU: split long reductions when there are few outputs.
  int64_t chunk = n_red;
  if (n_out < 1024 && n_red > 16 * kThreads) {
    const int64_t want_chunks = std::min<int64_t>(4096 / std::max<int64_t>(n_out, 1) + 1, 4096);
    chunk = std::max<int64_t>((n_red + want_chunks - 1) / want_chunks, 4 * kThreads);
  }
  const int nchunks = int(std::max<int64_t>((n_red + chunk - 1) / std::max<int64_t>(chunk, 1), 1));
  CM_CHECK(n_out <= INT_MAX, "reduce: too many outputs (", n_out, ")");
  A* partial = nullptr;
  Tensor partial_buf;
  if (nchunks > 1) {
    partial_buf =
        empty({n_out * nchunks * int64_t(sizeof(A))}, {.dtype = DType::u8, .device = x.device()});
    partial = static_cast<A*>(partial_buf.data_ptr());
  }
  const T* xp = static_cast<const T*>(x.data_ptr());
  T* op_ = static_cast<T*>(out.data_ptr());
  reduce_kernel<T, A><<<dim3(unsigned(n_out), unsigned(nchunks)), kThreads, 0, stream(dev)>>>(
      kept, red, xp, op_, partial, chunk, nchunks, op, init, scale);
  CUDA_CHECK_LAUNCH();
  if (nchunks > 1) {
    reduce_partials_kernel<T, A><<<unsigned(n_out), kThreads, 0, stream(dev)>>>(
        kept, partial, nchunks, op_, op, init, scale);
    CUDA_CHECK_LAUNCH();
  }
}

template <class T>
__global__ void arg_reduce_kernel(Walk w, Walk wi, const T* x, int64_t n, int64_t xs, T* values,
                                  int64_t* indices, bool is_max) {
  using C = compute_t<T>;
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < w.numel;
       o += int64_t(gridDim.x) * blockDim.x) {
    int64_t xo, vo, xo2, io;
    w.offsets(o, &xo, &vo);
    wi.offsets(o, &xo2, &io);
    C best = static_cast<C>(x[xo]);
    int64_t bi = 0;
    for (int64_t k = 1; k < n && best == best; ++k) {
      const C v = static_cast<C>(x[xo + k * xs]);
      if (v != v || (is_max ? v > best : v < best)) {
        best = v;
        bi = k;
      }
    }
    values[vo] = convert<T>(best);
    indices[io] = bi;
  }
}

// One block per row along `dim`.
template <class T, class A>
__global__ void softmax_kernel(Walk w, const T* x, int64_t n, int64_t xs, T* out, int64_t os,
                               bool log) {
  int64_t xo, oo;
  w.offsets(blockIdx.x, &xo, &oo);
  A m = -std::numeric_limits<A>::infinity();
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x)
    m = max(m, A(static_cast<compute_t<T>>(x[xo + k * xs])));
  m = block_reduce(m, [](A a, A b) { return max(a, b); });
  if (isinf(m)) m = 0;
  A s = 0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x)
    s += exp(A(static_cast<compute_t<T>>(x[xo + k * xs])) - m);
  s = block_reduce(s, [](A a, A b) { return a + b; });
  const A ls = ::log(s), inv = A(1) / s;  // log-softmax as (x − m) − log s, as on the CPU
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    const A v = A(static_cast<compute_t<T>>(x[xo + k * xs]));
    out[oo + k * os] = convert<T>(log ? (v - m) - ls : exp(v - m) * inv);
  }
}

template <class T, class A>
__global__ void softmax_backward_kernel(Walk wg, Walk wo, const T* g, int64_t gs, const T* y,
                                        int64_t ys, int64_t n, T* gi, int64_t os, bool log) {
  int64_t go, yo, go2, oo;
  wg.offsets(blockIdx.x, &go, &yo);
  wo.offsets(blockIdx.x, &go2, &oo);
  A s = 0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    const A gv = A(static_cast<compute_t<T>>(g[go + k * gs]));
    s += log ? gv : gv * A(static_cast<compute_t<T>>(y[yo + k * ys]));
  }
  s = block_reduce(s, [](A a, A b) { return a + b; });
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    const A gv = A(static_cast<compute_t<T>>(g[go + k * gs]));
    const A yv = A(static_cast<compute_t<T>>(y[yo + k * ys]));
    gi[oo + k * os] = convert<T>(log ? gv - exp(yv) * s : yv * (gv - s));
  }
}

}  // namespace

void CudaBackend::reduce(ReduceOp op, const Tensor& x, const Tensor& out) {
  const int dev = out.device().index;
  DeviceGuard g(dev);
  CM_DISPATCH_NUMERIC(x.dtype(), reduce_op_name(op),
                      [&] { reduce_typed<scalar_t>(op, x, out, dev); });
}

void CudaBackend::arg_reduce(bool is_max, const Tensor& x, int64_t dim, const Tensor& values,
                             const Tensor& indices) {
  const int dev = x.device().index;
  DeviceGuard g(dev);
  Walk w = walk_except(x, values, dim), wi = walk_except(x, indices, dim);
  if (w.numel == 0) return;
  CM_DISPATCH_NUMERIC(x.dtype(), is_max ? "max" : "min", [&] {
    arg_reduce_kernel<scalar_t><<<blocks_for(w.numel), kThreads, 0, stream(dev)>>>(
        w, wi, static_cast<const scalar_t*>(x.data_ptr()), x.shape()[size_t(dim)],
        x.strides()[size_t(dim)], static_cast<scalar_t*>(values.data_ptr()),
        static_cast<int64_t*>(indices.data_ptr()), is_max);
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::softmax(const Tensor& x, int64_t dim, bool log, const Tensor& out) {
  const int dev = x.device().index;
  DeviceGuard g(dev);
  Walk w = walk_except(x, out, dim);
  if (w.numel == 0 || x.numel() == 0) return;
  CM_CHECK(w.numel <= INT_MAX, "softmax: too many rows (", w.numel, ")");
  CM_DISPATCH_FLOAT(x.dtype(), log ? "log_softmax" : "softmax", [&] {
    using A = acc_t<scalar_t>;
    softmax_kernel<scalar_t, A><<<unsigned(w.numel), kThreads, 0, stream(dev)>>>(
        w, static_cast<const scalar_t*>(x.data_ptr()), x.shape()[size_t(dim)],
        x.strides()[size_t(dim)], static_cast<scalar_t*>(out.data_ptr()),
        out.strides()[size_t(dim)], log);
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::softmax_backward(const Tensor& grad, const Tensor& y, int64_t dim, bool log,
                                   const Tensor& grad_in) {
  const int dev = y.device().index;
  DeviceGuard g(dev);
  Walk wg = walk_except(grad, y, dim), wo = walk_except(grad, grad_in, dim);
  if (wg.numel == 0 || y.numel() == 0) return;
  CM_CHECK(wg.numel <= INT_MAX, "softmax_backward: too many rows (", wg.numel, ")");
  CM_DISPATCH_FLOAT(y.dtype(), "softmax_backward", [&] {
    using A = acc_t<scalar_t>;
    softmax_backward_kernel<scalar_t, A><<<unsigned(wg.numel), kThreads, 0, stream(dev)>>>(
        wg, wo, static_cast<const scalar_t*>(grad.data_ptr()), grad.strides()[size_t(dim)],
        static_cast<const scalar_t*>(y.data_ptr()), y.strides()[size_t(dim)],
        y.shape()[size_t(dim)], static_cast<scalar_t*>(grad_in.data_ptr()),
        grad_in.strides()[size_t(dim)], log);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace cm::cuda_impl
