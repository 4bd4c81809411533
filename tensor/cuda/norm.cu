// CUDA group normalisation, forward and backward (the CPU twin is tensor/cpu/norm.cpp, which states
// the closed form). x [N, C, *] is N·G groups of M = (C/G)·HW elements, contiguous (each group one
// run of memory) or channels-last (NHWC: a group's channels adjacent at every position; GnGeo maps
// (n, c, hw) to memory). Within a layout the sums run in a fixed order, so results are
// reproducible; contiguous and channels-last inputs may differ in the last bits.
//
// Forward: one block per (n, group) computes the statistics in two passes (mean, then the
// corrected Σ(x − mean)²) with fixed-tree block reductions in f32 (f64 for f64), then a grid-stride
// kernel writes (x − mean)·rstd·w[c] + b[c]. Backward: one block per (n, c) reduces Σ dy·x̂ and Σ dy
// over HW (for channels-last, one thread per (n, c) in position order, reads coalesced across c);
// one thread per (n, group) folds those into the group sums Σ w·dy and Σ w·dy·x̂ (in channel order);
// a grid-stride kernel writes dx; one block per c reduces the per-(n, c) sums over n for dweight
// and dbias (a deterministic two-stage reduction). No atomics anywhere: results are bit-for-bit
// reproducible.
//
// GroupNorm + SiLU (and its per-sample channel shift) run through the same kernels with two
// policies: how an element of the normalised input is read (InputOf: x, or x + shift[n, c] rounded
// to T as the separate Add rounds it) and whether the output is silu(h) with h rounded to T first
// (the composite's group_norm, then SiLU). The backward recomputes h from x and the statistics and
// takes dh = SiluBackward(dy, h) rounded to T where the composite reads its dh tensor: the fused
// path gives the composite's bits (tests/test_cuda_nn.cpp checks it), with two passes over the
// activations fewer forward and four fewer backward, and no temporaries.
#include <climits>

#include "tensor/cuda/block_reduce.cuh"
#include "tensor/cuda/cuda_backend.h"
#include "tensor/cuda/cuda_common.h"
#include "tensor/scalar_ops.h"

namespace cm::cuda_impl {
namespace {

// Where element (n, c, hw) of an [N, C, HW] operand lives in memory: contiguous (NCHW) or
// channels-last (NHWC); every activation operand of a call has the same layout.
struct GnGeo {
  int64_t C, Cg, HW;
  bool nhwc;
  __device__ __forceinline__ int64_t at(int64_t n, int64_t c, int64_t hw) const {
    return nhwc ? (n * HW + hw) * C + c : (n * C + c) * HW + hw;
  }
  // n·C + c of the element at memory index i
  __device__ __forceinline__ int64_t nc_of(int64_t i) const {
    return nhwc ? (i / (HW * C)) * C + i % C : i / HW;
  }
};

// Element at memory index i, of channel nc = n·C + c, of the normalised input: x[i], or x[i] +
// shift[n, c] rounded to T as the composite's separate Add (AddF with alpha 1) rounds it; shift is
// [N, C] contiguous.
template <class T>
struct InputOf {
  const T* x;
  const T* shift;  // null: no shift
  __device__ __forceinline__ acc_t<T> operator()(int64_t i, int64_t nc) const {
    if (!shift) return load(x, i);
    using C = compute_t<T>;
    const T v = convert<T>(sop::AddF<C>{C(1)}(static_cast<C>(x[i]), static_cast<C>(shift[nc])));
    return acc_t<T>(static_cast<C>(v));
  }
};

// The normalised value of input value xv in channel c of group ng, before rounding to T: one
// expression for the forward and for the backward's recomputation, so both round alike.
template <class T, class S>
__device__ __forceinline__ acc_t<T> gn_value(acc_t<T> xv, const T* w, const T* b, const S* mean,
                                             const S* rstd, int64_t c, int64_t ng) {
  using A = acc_t<T>;
  const A scale = A(rstd[ng]) * (w ? load(w, c) : A(1));
  const A shift = b ? load(b, c) : A(0);
  return (xv - A(mean[ng])) * scale + shift;
}

// The gradient the norm's backward sees at element i: dy itself, or (with SiLU) dh =
// SiluBackward(dy, h) rounded to T, h = the forward's output before SiLU, recomputed.
template <class T, class S, bool kSilu>
__device__ __forceinline__ acc_t<T> grad_at(const T* dy, acc_t<T> xv, int64_t i, const T* w,
                                            const T* b, const S* mean, const S* rstd, int64_t c,
                                            int64_t ng) {
  if constexpr (!kSilu) {
    return load(dy, i);
  } else {
    using C = compute_t<T>;
    const T h = convert<T>(gn_value<T, S>(xv, w, b, mean, rstd, c, ng));
    const T dh = convert<T>(sop::SiluBackwardF<C>{C(1)}(static_cast<C>(dy[i]), static_cast<C>(h)));
    return acc_t<T>(static_cast<C>(dh));
  }
}

// Element j of group ng (M = Cg·HW elements): its memory index and channel n·C + c. Contiguous
// groups are walked in memory order; channels-last ones position by position, the group's channels
// adjacent.
__device__ __forceinline__ void group_element(const GnGeo& g, int64_t ng, int64_t j, int64_t* mem,
                                              int64_t* nc) {
  const int64_t nc0 = ng * g.Cg;  // n·C + the group's first channel
  if (!g.nhwc) {
    *mem = nc0 * g.HW + j;
    *nc = nc0 + j / g.HW;
  } else {
    const int64_t n = nc0 / g.C, c = nc0 % g.C + j % g.Cg;
    *mem = g.at(n, c, j / g.Cg);
    *nc = n * g.C + c;
  }
}

// Grid N·G: the mean and rstd of group blockIdx.x, stored as S.
template <class T, class S>
__global__ void gn_stats_kernel(InputOf<T> in, GnGeo geo, double eps, S* mean, S* rstd) {
  using A = acc_t<T>;
  const int64_t ng = blockIdx.x, M = geo.Cg * geo.HW;
  int64_t mem, nc;
  A s = 0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    group_element(geo, ng, j, &mem, &nc);
    s += in(mem, nc);
  }
  const A mu = M > 0 ? block_sum(s) / A(M) : A(0);
  // Second pass: Σ e and Σ e² with e = x − mean; Σ e (zero in exact arithmetic) corrects the
  // rounding of the first pass (the corrected two-pass formula, as on the CPU).
  A s1 = 0, s2 = 0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    group_element(geo, ng, j, &mem, &nc);
    const A e = in(mem, nc) - mu;
    s1 += e;
    s2 += e * e;
  }
  if (M > 0) {
    s1 = block_sum(s1);
    s2 = block_sum(s2);
  }
  if (threadIdx.x == 0) {
    const A var = M > 0 ? max(A(0), (s2 - s1 * s1 / A(M)) / A(M)) : A(0);
    mean[ng] = S(M > 0 ? mu + s1 / A(M) : mu);
    rstd[ng] = S(A(1) / sqrt(var + A(eps)));
  }
}

// out[n, c, hw] = (x − mean[n, g])·rstd[n, g]·w[c] + b[c] over all N·C·HW elements; with kSilu,
// silu of that value rounded to T (the composite's SiLU over group_norm's output).
template <class T, class S, bool kSilu>
__global__ void gn_apply_kernel(InputOf<T> in, GnGeo geo, const T* w, const T* b, const S* mean,
                                const S* rstd, int64_t total, T* out) {
  using Cm = compute_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t nc = geo.nc_of(i), c = nc % geo.C, ng = nc / geo.Cg;  // n·G + c / Cg
    const T h = convert<T>(gn_value<T, S>(in(i, nc), w, b, mean, rstd, c, ng));
    if constexpr (kSilu)
      out[i] = convert<T>(sop::SiluF<Cm>{}(static_cast<Cm>(h)));
    else
      out[i] = h;
  }
}

// Grid N·C: sum_dy_xhat[n, c] = Σ_hw g·x̂ and sum_dy[n, c] = Σ_hw g, g = grad_at (dy, or dh).
template <class T, class S, bool kSilu>
__global__ void gn_backward_channel_kernel(const T* dy, InputOf<T> in, GnGeo geo, const T* w,
                                           const T* b, const S* mean, const S* rstd,
                                           acc_t<T>* sum_dy_xhat, acc_t<T>* sum_dy) {
  using A = acc_t<T>;
  const int64_t nc = blockIdx.x, n = nc / geo.C, c = nc % geo.C, ng = nc / geo.Cg;
  const A mu = A(mean[ng]);
  A sdx = 0, sd = 0;
  for (int64_t hw = threadIdx.x; hw < geo.HW; hw += blockDim.x) {
    const int64_t i = geo.at(n, c, hw);
    const A xv = in(i, nc);
    const A g = grad_at<T, S, kSilu>(dy, xv, i, w, b, mean, rstd, c, ng);
    sd += g;
    sdx += g * (xv - mu);
  }
  sdx = block_sum(sdx);
  sd = block_sum(sd);
  if (threadIdx.x == 0) {
    sum_dy_xhat[nc] = sdx * A(rstd[ng]);
    sum_dy[nc] = sd;
  }
}

// The same sums for channels-last activations, one thread per (n, c) walking the positions in
// order: neighbouring threads read neighbouring channels (the block-per-(n, c) kernel above would
// read one element per C-strided sector). Grid (ceil(C / blockDim), N).
template <class T, class S, bool kSilu>
__global__ void gn_backward_channel_nhwc_kernel(const T* dy, InputOf<T> in, GnGeo geo, const T* w,
                                                const T* b, const S* mean, const S* rstd,
                                                acc_t<T>* sum_dy_xhat, acc_t<T>* sum_dy) {
  using A = acc_t<T>;
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, n = blockIdx.y;
  if (c >= geo.C) return;
  const int64_t nc = n * geo.C + c, ng = nc / geo.Cg;
  const A mu = A(mean[ng]);
  A sdx = 0, sd = 0;
  for (int64_t hw = 0; hw < geo.HW; ++hw) {
    const int64_t i = geo.at(n, c, hw);
    const A xv = in(i, nc);
    const A g = grad_at<T, S, kSilu>(dy, xv, i, w, b, mean, rstd, c, ng);
    sd += g;
    sdx += g * (xv - mu);
  }
  sum_dy_xhat[nc] = sdx * A(rstd[ng]);
  sum_dy[nc] = sd;
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

// dx = rstd·(w[c]·g − coef0 − x̂·coef1) over all N·C·HW elements, g = grad_at (dy, or dh).
template <class T, class S, bool kSilu>
__global__ void gn_backward_input_kernel(const T* dy, InputOf<T> in, GnGeo geo, const T* w,
                                         const T* b, const S* mean, const S* rstd,
                                         const acc_t<T>* coef, int64_t total, T* dx) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t nc = geo.nc_of(i), c = nc % geo.C, ng = nc / geo.Cg;
    const A r = A(rstd[ng]);
    const A xv = in(i, nc);
    const A xhat = (xv - A(mean[ng])) * r;
    const A wc = w ? load(w, c) : A(1);
    const A g = grad_at<T, S, kSilu>(dy, xv, i, w, b, mean, rstd, c, ng);
    dx[i] = convert<T>(r * (wc * g - coef[2 * ng] - xhat * coef[2 * ng + 1]));
  }
}

struct GnDims {
  int64_t N, C, G, Cg, HW;
  bool nhwc = false;  // the activation operands are channels-last (and not also contiguous)
  GnGeo geo() const { return {C, Cg, HW, nhwc}; }
};

GnDims gn_dims(const Tensor& x, int64_t groups) {
  GnDims d{x.shape()[0], x.shape()[1], groups, x.shape()[1] / groups, 1};
  for (int64_t k = 2; k < x.dim(); ++k) d.HW *= x.shape()[size_t(k)];
  d.nhwc = !x.is_contiguous() && is_channels_last(x);
  return d;
}

void check_contiguous(std::initializer_list<Tensor> ts, const char* op) {
  for (const Tensor& t : ts)
    CM_CHECK(!t.defined() || t.is_contiguous(), op, ": operands must be contiguous");
}

// The activation operands: all contiguous, or all channels-last (the layout of x).
void check_layout(bool nhwc, std::initializer_list<Tensor> ts, const char* op) {
  for (const Tensor& t : ts)
    CM_CHECK(!t.defined() || (nhwc ? is_channels_last(t) : t.is_contiguous()), op,
             ": operands must be all contiguous or all channels-last (x is ",
             nhwc ? "channels-last" : "contiguous", ")");
}

template <class T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.data_ptr()) : nullptr;
}

// The operands of one call (undefined tensors where absent): weight, bias and shift as the
// Backend contract describes them.
struct GnArgs {
  Tensor x, shift, weight, bias, mean, rstd;
  GnDims d;
  double eps = 0;
  int dev = 0;
};

template <class T>
InputOf<T> input_of(const GnArgs& a) {
  return {static_cast<const T*>(a.x.data_ptr()), ptr_or_null<T>(a.shift)};
}

// The statistics kernel (unless `stats` is false: a.mean and a.rstd hold them already), then the
// apply kernel.
template <class T, class S, bool kSilu>
void group_norm_typed(const GnArgs& a, const Tensor& out, bool stats) {
  const GnDims& d = a.d;
  const int64_t NG = d.N * d.G, M = d.Cg * d.HW, total = a.x.numel();
  CM_CHECK(NG <= INT_MAX, "group_norm: too many groups (", NG, ")");
  cudaStream_t st = stream(a.dev);
  if (stats) {
    gn_stats_kernel<T, S><<<unsigned(NG), threads_for(M), 0, st>>>(
        input_of<T>(a), d.geo(), a.eps, static_cast<S*>(a.mean.data_ptr()),
        static_cast<S*>(a.rstd.data_ptr()));
    CUDA_CHECK_LAUNCH();
  }
  if (total == 0) return;
  gn_apply_kernel<T, S, kSilu><<<blocks_for(total), kThreads, 0, st>>>(
      input_of<T>(a), d.geo(), ptr_or_null<T>(a.weight), ptr_or_null<T>(a.bias),
      static_cast<const S*>(a.mean.data_ptr()), static_cast<const S*>(a.rstd.data_ptr()), total,
      static_cast<T*>(out.data_ptr()));
  CUDA_CHECK_LAUNCH();
}

template <class T, class S, bool kSilu>
void group_norm_backward_typed(const GnArgs& a, const Tensor& grad_out, const Tensor& grad_x,
                               const Tensor& grad_w, const Tensor& grad_b) {
  using A = acc_t<T>;
  const GnDims& d = a.d;
  const int64_t NC = d.N * d.C, NG = d.N * d.G, M = d.Cg * d.HW, total = a.x.numel();
  CM_CHECK(NC <= INT_MAX, "group_norm_backward: too many channels (", NC, ")");
  cudaStream_t st = stream(a.dev);
  const TensorOptions acc_opt{.dtype = dtype_v<A>, .device = a.x.device()};
  // Scratch: per-(n, c) sums, then per-(n, g) coefficients.
  Tensor sum_dy_xhat = empty({NC}, acc_opt), sum_dy = empty({NC}, acc_opt);
  A* sdx = static_cast<A*>(sum_dy_xhat.data_ptr());
  A* sd = static_cast<A*>(sum_dy.data_ptr());
  const T* dy = static_cast<const T*>(grad_out.data_ptr());
  const InputOf<T> in = input_of<T>(a);
  const T* w = ptr_or_null<T>(a.weight);
  const T* b = ptr_or_null<T>(a.bias);
  const S* mp = static_cast<const S*>(a.mean.data_ptr());
  const S* rp = static_cast<const S*>(a.rstd.data_ptr());
  if (d.nhwc && d.N <= 65535) {
    const unsigned t = threads_for(d.C);
    gn_backward_channel_nhwc_kernel<T, S, kSilu>
        <<<dim3(unsigned((d.C + t - 1) / t), unsigned(d.N)), t, 0, st>>>(dy, in, d.geo(), w, b, mp,
                                                                         rp, sdx, sd);
  } else {
    gn_backward_channel_kernel<T, S, kSilu>
        <<<unsigned(NC), threads_for(d.HW), 0, st>>>(dy, in, d.geo(), w, b, mp, rp, sdx, sd);
  }
  CUDA_CHECK_LAUNCH();
  if (grad_x.defined() && total > 0) {
    Tensor coef = empty({2 * NG}, acc_opt);
    A* cp = static_cast<A*>(coef.data_ptr());
    gn_backward_group_kernel<T>
        <<<blocks_for(NG), kThreads, 0, st>>>(w, sdx, sd, NG, d.G, d.Cg, M, cp);
    CUDA_CHECK_LAUNCH();
    gn_backward_input_kernel<T, S, kSilu><<<blocks_for(total), kThreads, 0, st>>>(
        dy, in, d.geo(), w, b, mp, rp, cp, total, static_cast<T*>(grad_x.data_ptr()));
    CUDA_CHECK_LAUNCH();
  }
  const unsigned tn = threads_for(d.N);
  if (grad_w.defined()) {
    sum_over_n_kernel<T>
        <<<unsigned(d.C), tn, 0, st>>>(sdx, d.N, d.C, static_cast<T*>(grad_w.data_ptr()));
    CUDA_CHECK_LAUNCH();
  }
  if (grad_b.defined()) {
    sum_over_n_kernel<T>
        <<<unsigned(d.C), tn, 0, st>>>(sd, d.N, d.C, static_cast<T*>(grad_b.data_ptr()));
    CUDA_CHECK_LAUNCH();
  }
}

void check_shift(const Tensor& x, const Tensor& shift, const char* op) {
  CM_CHECK(x.dim() >= 2 && shift.shape() == Shape({x.size(0), x.size(1)}), op,
           ": shift must be [N, C] = [", x.size(0), ", ", x.size(1), "], got ",
           shape_str(shift.shape()));
}

GnArgs gn_args(const Tensor& x, const Tensor& shift, const Tensor& weight, const Tensor& bias,
               const Tensor& mean, const Tensor& rstd, int64_t groups, double eps,
               std::initializer_list<Tensor> acts, std::initializer_list<Tensor> params,
               const char* op) {
  const GnDims d = gn_dims(x, groups);
  check_contiguous({shift, weight, bias, mean, rstd}, op);
  check_layout(d.nhwc, {x}, op);
  check_layout(d.nhwc, acts, op);
  check_contiguous(params, op);
  return GnArgs{x, shift, weight, bias, mean, rstd, d, eps, x.device().index};
}

void run_forward(const GnArgs& a, bool silu, const Tensor& out, const char* op, bool stats = true) {
  DeviceGuard g(a.dev);
  if (a.d.N * a.d.G == 0) return;
  CM_DISPATCH_FLOAT(a.x.dtype(), op, [&] {
    const bool f64 = a.mean.dtype() == DType::f64;
    if (silu) {
      f64 ? group_norm_typed<scalar_t, double, true>(a, out, stats)
          : group_norm_typed<scalar_t, float, true>(a, out, stats);
    } else {
      f64 ? group_norm_typed<scalar_t, double, false>(a, out, stats)
          : group_norm_typed<scalar_t, float, false>(a, out, stats);
    }
  });
}

// Returns false where there is nothing to run (no (n, c) pairs; the parameter gradients zeroed).
bool run_backward(CudaBackend& be, const GnArgs& a, bool silu, const Tensor& grad_out,
                  const Tensor& grad_x, const Tensor& grad_w, const Tensor& grad_b,
                  const char* op) {
  DeviceGuard g(a.dev);
  if (a.d.N * a.d.C == 0) {
    // No (n, c) pairs: the parameter gradients are sums over nothing.
    if (grad_w.defined()) be.fill(grad_w, 0);
    if (grad_b.defined()) be.fill(grad_b, 0);
    return false;
  }
  CM_DISPATCH_FLOAT(a.x.dtype(), op, [&] {
    const bool f64 = a.mean.dtype() == DType::f64;
    if (silu) {
      f64 ? group_norm_backward_typed<scalar_t, double, true>(a, grad_out, grad_x, grad_w, grad_b)
          : group_norm_backward_typed<scalar_t, float, true>(a, grad_out, grad_x, grad_w, grad_b);
    } else {
      f64 ? group_norm_backward_typed<scalar_t, double, false>(a, grad_out, grad_x, grad_w, grad_b)
          : group_norm_backward_typed<scalar_t, float, false>(a, grad_out, grad_x, grad_w, grad_b);
    }
  });
  return true;
}

}  // namespace

void CudaBackend::group_norm(const Tensor& x, const Tensor& weight, const Tensor& bias,
                             int64_t groups, double eps, const Tensor& out, const Tensor& mean,
                             const Tensor& rstd) {
  const char* op = "group_norm";
  run_forward(gn_args(x, {}, weight, bias, mean, rstd, groups, eps, {out}, {}, op), false, out, op);
}

void CudaBackend::group_norm_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                                      const Tensor& mean, const Tensor& rstd, int64_t groups,
                                      const Tensor& grad_x, const Tensor& grad_w,
                                      const Tensor& grad_b) {
  const char* op = "group_norm_backward";
  const GnArgs a =
      gn_args(x, {}, weight, {}, mean, rstd, groups, 0.0, {grad_out, grad_x}, {grad_w, grad_b}, op);
  run_backward(*this, a, false, grad_out, grad_x, grad_w, grad_b, op);
}

void CudaBackend::group_norm_silu(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                  int64_t groups, double eps, const Tensor& out, const Tensor& mean,
                                  const Tensor& rstd) {
  const char* op = "group_norm_silu";
  run_forward(gn_args(x, {}, weight, bias, mean, rstd, groups, eps, {out}, {}, op), true, out, op);
}

void CudaBackend::group_norm_silu_backward(const Tensor& grad_out, const Tensor& x,
                                           const Tensor& weight, const Tensor& bias,
                                           const Tensor& mean, const Tensor& rstd, int64_t groups,
                                           double eps, const Tensor& grad_x, const Tensor& grad_w,
                                           const Tensor& grad_b) {
  const char* op = "group_norm_silu_backward";
  const GnArgs a = gn_args(x, {}, weight, bias, mean, rstd, groups, eps, {grad_out, grad_x},
                           {grad_w, grad_b}, op);
  run_backward(*this, a, true, grad_out, grad_x, grad_w, grad_b, op);
}

void CudaBackend::group_norm_silu_shifted(const Tensor& x, const Tensor& shift,
                                          const Tensor& weight, const Tensor& bias, int64_t groups,
                                          double eps, const Tensor& out, const Tensor& mean,
                                          const Tensor& rstd) {
  const char* op = "group_norm_silu_shifted";
  check_shift(x, shift, op);
  run_forward(gn_args(x, shift, weight, bias, mean, rstd, groups, eps, {out}, {}, op), true, out,
              op);
}

void CudaBackend::group_norm_silu_shifted_backward(const Tensor& grad_out, const Tensor& x,
                                                   const Tensor& shift, const Tensor& weight,
                                                   const Tensor& bias, const Tensor& mean,
                                                   const Tensor& rstd, int64_t groups, double eps,
                                                   const Tensor& grad_x, const Tensor& grad_shift,
                                                   const Tensor& grad_w, const Tensor& grad_b) {
  const char* op = "group_norm_silu_shifted_backward";
  check_shift(x, shift, op);
  CM_CHECK(!grad_shift.defined() || grad_x.defined(), op,
           ": grad_shift is summed from grad_x, which must be given");
  const GnArgs a = gn_args(x, shift, weight, bias, mean, rstd, groups, eps, {grad_out, grad_x},
                           {grad_shift, grad_w, grad_b}, op);
  run_backward(*this, a, true, grad_out, grad_x, grad_w, grad_b, op);
  if (grad_shift.defined()) sum_shift_gradient(grad_x, grad_shift);  // the composite's bits
}

void CudaBackend::group_norm_recompute(const Tensor& x, const Tensor& shift, const Tensor& weight,
                                       const Tensor& bias, int64_t groups, double eps, bool silu,
                                       const Tensor& mean, const Tensor& rstd, const Tensor& out) {
  const char* op = "group_norm_recompute";
  if (shift.defined()) check_shift(x, shift, op);
  run_forward(gn_args(x, shift, weight, bias, mean, rstd, groups, eps, {out}, {}, op),
              silu || shift.defined(), out, op, /*stats=*/false);
}

}  // namespace cm::cuda_impl
