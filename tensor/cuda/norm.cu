// CUDA group normalisation, forward and backward (the CPU twin is tensor/cpu/norm.cpp, which states
// the closed form). x [N, C, *] is N·G contiguous groups of M = (C/G)·HW elements.
//
// Forward: one block per (n, group) computes the statistics in two passes (mean, then the
// corrected Σ(x − mean)²) with fixed-tree block reductions in f32 (f64 for f64), then a grid-stride
// kernel writes (x − mean)·rstd·w[c] + b[c]. Backward: one block per (n, c) reduces Σ dy·x̂ and Σ dy
// over HW; one thread per (n, group) folds those into the group sums Σ w·dy and Σ w·dy·x̂ (in
// channel order); a grid-stride kernel writes dx; one block per c reduces the per-(n, c) sums over
// n for dweight and dbias (a deterministic two-stage reduction). No atomics anywhere: results are
// bit-for-bit reproducible.
#include <climits>

#include "tensor/cuda/cuda_backend.h"
#include "tensor/cuda/cuda_common.h"

namespace cm::cuda_impl {
namespace {

template <class T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <class T>
__device__ __forceinline__ acc_t<T> load(const T* p, int64_t i) {
  return acc_t<T>(static_cast<compute_t<T>>(p[i]));
}

// Sum of one value per thread over a block of power-of-two size ≤ kThreads, in a fixed tree; the
// result is returned to every thread.
template <class A>
__device__ A block_sum(A v) {
  __shared__ A smem[kThreads];
  smem[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) smem[threadIdx.x] += smem[threadIdx.x + s];
    __syncthreads();
  }
  const A r = smem[0];
  __syncthreads();
  return r;
}

// A power of two in [32, kThreads] covering n items per block where possible.
unsigned threads_for(int64_t n) {
  unsigned t = 32;
  while (t < unsigned(kThreads) && int64_t(t) < n) t *= 2;
  return t;
}

// Grid N·G: the mean and rstd of group blockIdx.x, stored as S.
template <class T, class S>
__global__ void gn_stats_kernel(const T* x, int64_t M, double eps, S* mean, S* rstd) {
  using A = acc_t<T>;
  const T* xg = x + int64_t(blockIdx.x) * M;
  A s = 0;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) s += load(xg, i);
  const A mu = M > 0 ? block_sum(s) / A(M) : A(0);
  // Second pass: Σ e and Σ e² with e = x − mean; Σ e (zero in exact arithmetic) corrects the
  // rounding of the first pass (the corrected two-pass formula, as on the CPU).
  A s1 = 0, s2 = 0;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
    const A e = load(xg, i) - mu;
    s1 += e;
    s2 += e * e;
  }
  if (M > 0) {
    s1 = block_sum(s1);
    s2 = block_sum(s2);
  }
  if (threadIdx.x == 0) {
    const A var = M > 0 ? max(A(0), (s2 - s1 * s1 / A(M)) / A(M)) : A(0);
    mean[blockIdx.x] = S(M > 0 ? mu + s1 / A(M) : mu);
    rstd[blockIdx.x] = S(A(1) / sqrt(var + A(eps)));
  }
}

// out[n, c, hw] = (x − mean[n, g])·rstd[n, g]·w[c] + b[c] over all N·C·HW elements.
template <class T, class S>
__global__ void gn_apply_kernel(const T* x, const T* w, const T* b, const S* mean, const S* rstd,
                                int64_t total, int64_t C, int64_t Cg, int64_t HW, T* out) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t nc = i / HW, c = nc % C, ng = (nc / C) * (C / Cg) + c / Cg;
    const A scale = A(rstd[ng]) * (w ? load(w, c) : A(1));
    const A shift = b ? load(b, c) : A(0);
    out[i] = convert<T>((load(x, i) - A(mean[ng])) * scale + shift);
  }
}

// Grid N·C: sum_dy_xhat[n, c] = Σ_hw dy·x̂ and sum_dy[n, c] = Σ_hw dy.
template <class T, class S>
__global__ void gn_backward_channel_kernel(const T* dy, const T* x, const S* mean, const S* rstd,
                                           int64_t C, int64_t Cg, int64_t HW, acc_t<T>* sum_dy_xhat,
                                           acc_t<T>* sum_dy) {
  using A = acc_t<T>;
  const int64_t nc = blockIdx.x, ng = (nc / C) * (C / Cg) + (nc % C) / Cg;
  const A mu = A(mean[ng]);
  const T* dyc = dy + nc * HW;
  const T* xc = x + nc * HW;
  A sdx = 0, sd = 0;
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
    const A g = load(dyc, i);
    sd += g;
    sdx += g * (load(xc, i) - mu);
  }
  sdx = block_sum(sdx);
  sd = block_sum(sd);
  if (threadIdx.x == 0) {
    sum_dy_xhat[nc] = sdx * A(rstd[ng]);
    sum_dy[nc] = sd;
  }
}

// One thread per (n, g): coef[2·ng] = Σ w·dy / M, coef[2·ng + 1] = Σ w·dy·x̂ / M over the group's
// channels, in channel order.
template <class T>
__global__ void gn_backward_group_kernel(const T* w, const acc_t<T>* sum_dy_xhat,
                                         const acc_t<T>* sum_dy, int64_t NG, int64_t G, int64_t Cg,
                                         int64_t M, acc_t<T>* coef) {
  using A = acc_t<T>;
  for (int64_t ng = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; ng < NG;
       ng += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c0 = (ng % G) * Cg, nc0 = ng * Cg;  // n·C + c0 == ng·Cg
    A a = 0, b = 0;
    for (int64_t j = 0; j < Cg; ++j) {
      const A wc = w ? load(w, c0 + j) : A(1);
      a += wc * sum_dy[nc0 + j];
      b += wc * sum_dy_xhat[nc0 + j];
    }
    coef[2 * ng] = a / A(M);
    coef[2 * ng + 1] = b / A(M);
  }
}

// dx = rstd·(w[c]·dy − coef0 − x̂·coef1) over all N·C·HW elements.
template <class T, class S>
__global__ void gn_backward_input_kernel(const T* dy, const T* x, const T* w, const S* mean,
                                         const S* rstd, const acc_t<T>* coef, int64_t total,
                                         int64_t C, int64_t Cg, int64_t HW, T* dx) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t nc = i / HW, c = nc % C, ng = (nc / C) * (C / Cg) + c / Cg;
    const A r = A(rstd[ng]);
    const A xhat = (load(x, i) - A(mean[ng])) * r;
    const A wc = w ? load(w, c) : A(1);
    dx[i] = convert<T>(r * (wc * load(dy, i) - coef[2 * ng] - xhat * coef[2 * ng + 1]));
  }
}

// Grid C: out[c] = Σ_n per_nc[n, c] (block tree over n).
template <class T>
__global__ void gn_sum_over_n_kernel(const acc_t<T>* per_nc, int64_t N, int64_t C, T* out) {
  using A = acc_t<T>;
  const int64_t c = blockIdx.x;
  A s = 0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) s += per_nc[n * C + c];
  s = block_sum(s);
  if (threadIdx.x == 0) out[c] = convert<T>(s);
}

struct GnDims {
  int64_t N, C, G, Cg, HW;
};

GnDims gn_dims(const Tensor& x, int64_t groups) {
  GnDims d{x.shape()[0], x.shape()[1], groups, x.shape()[1] / groups, 1};
  for (int64_t k = 2; k < x.dim(); ++k) d.HW *= x.shape()[size_t(k)];
  return d;
}

void check_contiguous(std::initializer_list<Tensor> ts, const char* op) {
  for (const Tensor& t : ts)
    CM_CHECK(!t.defined() || t.is_contiguous(), op, ": operands must be contiguous");
}

template <class T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.data_ptr()) : nullptr;
}

template <class T, class S>
void group_norm_typed(const Tensor& x, const Tensor& weight, const Tensor& bias, const GnDims& d,
                      double eps, const Tensor& out, const Tensor& mean, const Tensor& rstd,
                      int dev) {
  const int64_t NG = d.N * d.G, M = d.Cg * d.HW, total = x.numel();
  CM_CHECK(NG <= INT_MAX, "group_norm: too many groups (", NG, ")");
  cudaStream_t st = stream(dev);
  gn_stats_kernel<T, S><<<unsigned(NG), threads_for(M), 0, st>>>(
      static_cast<const T*>(x.data_ptr()), M, eps, static_cast<S*>(mean.data_ptr()),
      static_cast<S*>(rstd.data_ptr()));
  CUDA_CHECK_LAUNCH();
  if (total == 0) return;
  gn_apply_kernel<T, S><<<blocks_for(total), kThreads, 0, st>>>(
      static_cast<const T*>(x.data_ptr()), ptr_or_null<T>(weight), ptr_or_null<T>(bias),
      static_cast<const S*>(mean.data_ptr()), static_cast<const S*>(rstd.data_ptr()), total, d.C,
      d.Cg, d.HW, static_cast<T*>(out.data_ptr()));
  CUDA_CHECK_LAUNCH();
}

template <class T, class S>
void group_norm_backward_typed(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                               const Tensor& mean, const Tensor& rstd, const GnDims& d,
                               const Tensor& grad_x, const Tensor& grad_w, const Tensor& grad_b,
                               int dev) {
  using A = acc_t<T>;
  const int64_t NC = d.N * d.C, NG = d.N * d.G, M = d.Cg * d.HW, total = x.numel();
  CM_CHECK(NC <= INT_MAX, "group_norm_backward: too many channels (", NC, ")");
  cudaStream_t st = stream(dev);
  const TensorOptions acc_opt{.dtype = dtype_v<A>, .device = x.device()};
  // Scratch: per-(n, c) sums, then per-(n, g) coefficients.
  Tensor sum_dy_xhat = empty({NC}, acc_opt), sum_dy = empty({NC}, acc_opt);
  A* sdx = static_cast<A*>(sum_dy_xhat.data_ptr());
  A* sd = static_cast<A*>(sum_dy.data_ptr());
  const T* dy = static_cast<const T*>(grad_out.data_ptr());
  const T* xp = static_cast<const T*>(x.data_ptr());
  const T* w = ptr_or_null<T>(weight);
  const S* mp = static_cast<const S*>(mean.data_ptr());
  const S* rp = static_cast<const S*>(rstd.data_ptr());
  gn_backward_channel_kernel<T, S>
      <<<unsigned(NC), threads_for(d.HW), 0, st>>>(dy, xp, mp, rp, d.C, d.Cg, d.HW, sdx, sd);
  CUDA_CHECK_LAUNCH();
  if (grad_x.defined() && total > 0) {
    Tensor coef = empty({2 * NG}, acc_opt);
    A* cp = static_cast<A*>(coef.data_ptr());
    gn_backward_group_kernel<T>
        <<<blocks_for(NG), kThreads, 0, st>>>(w, sdx, sd, NG, d.G, d.Cg, M, cp);
    CUDA_CHECK_LAUNCH();
    gn_backward_input_kernel<T, S><<<blocks_for(total), kThreads, 0, st>>>(
        dy, xp, w, mp, rp, cp, total, d.C, d.Cg, d.HW, static_cast<T*>(grad_x.data_ptr()));
    CUDA_CHECK_LAUNCH();
  }
  const unsigned tn = threads_for(d.N);
  if (grad_w.defined()) {
    gn_sum_over_n_kernel<T>
        <<<unsigned(d.C), tn, 0, st>>>(sdx, d.N, d.C, static_cast<T*>(grad_w.data_ptr()));
    CUDA_CHECK_LAUNCH();
  }
  if (grad_b.defined()) {
    gn_sum_over_n_kernel<T>
        <<<unsigned(d.C), tn, 0, st>>>(sd, d.N, d.C, static_cast<T*>(grad_b.data_ptr()));
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

void CudaBackend::group_norm(const Tensor& x, const Tensor& weight, const Tensor& bias,
                             int64_t groups, double eps, const Tensor& out, const Tensor& mean,
                             const Tensor& rstd) {
  check_contiguous({x, weight, bias, out, mean, rstd}, "group_norm");
  const int dev = x.device().index;
  DeviceGuard g(dev);
  const GnDims d = gn_dims(x, groups);
  if (d.N * d.G == 0) return;
  CM_DISPATCH_FLOAT(x.dtype(), "group_norm", [&] {
    if (mean.dtype() == DType::f64)
      group_norm_typed<scalar_t, double>(x, weight, bias, d, eps, out, mean, rstd, dev);
    else
      group_norm_typed<scalar_t, float>(x, weight, bias, d, eps, out, mean, rstd, dev);
  });
}

void CudaBackend::group_norm_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                                      const Tensor& mean, const Tensor& rstd, int64_t groups,
                                      const Tensor& grad_x, const Tensor& grad_w,
                                      const Tensor& grad_b) {
  check_contiguous({grad_out, x, weight, mean, rstd, grad_x, grad_w, grad_b},
                   "group_norm_backward");
  const int dev = x.device().index;
  DeviceGuard g(dev);
  const GnDims d = gn_dims(x, groups);
  if (d.N * d.C == 0) {
    // No (n, c) pairs: the parameter gradients are sums over nothing.
    if (grad_w.defined()) fill(grad_w, 0);
    if (grad_b.defined()) fill(grad_b, 0);
    return;
  }
  CM_DISPATCH_FLOAT(x.dtype(), "group_norm_backward", [&] {
    if (mean.dtype() == DType::f64)
      group_norm_backward_typed<scalar_t, double>(grad_out, x, weight, mean, rstd, d, grad_x,
                                                  grad_w, grad_b, dev);
    else
      group_norm_backward_typed<scalar_t, float>(grad_out, x, weight, mean, rstd, d, grad_x, grad_w,
                                                 grad_b, dev);
  });
}

}  // namespace cm::cuda_impl
