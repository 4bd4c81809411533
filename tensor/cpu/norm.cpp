// CPU group normalisation, forward and backward. x [N, C, *] is walked as N·G contiguous groups of
// M = (C/G)·HW elements (HW = the product of the spatial dims); the pool runs over (n, group), so
// the order of every sum is fixed and results do not depend on the thread count. Channels-last x
// has its own loops (one item per sample, further down).
//
// Statistics are two-pass (the mean, then Σ(x − mean)² by the corrected two-pass formula of Chan,
// Golub and LeVeque), accumulated in f64 as the other CPU reductions, and stored as f32 (f64 for
// f64 x); the forward itself uses the f64 values. The backward is the closed form
//   x̂ = (x − mean)·rstd,  dx = rstd·(w[c]·dy − (Σ w·dy)/M − x̂·(Σ w·dy·x̂)/M),
//   dweight[c] = Σ_{n, hw} dy·x̂,  dbias[c] = Σ_{n, hw} dy,
// with the per-(n, c) sums Σ dy·x̂ and Σ dy computed once and shared by the three gradients.
// Every sum runs over kLanes interleaved f64 partial sums added in a fixed order at the end
// (LaneSums below): the same result on every run and thread count, and vectorisable, unlike one
// accumulator's chain of dependent additions.
#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "tensor/cpu/cpu_backend.h"
#include "tensor/cpu/loops.h"
#include "tensor/scalar_ops.h"

namespace cm::cpu {
namespace {

constexpr int kLanes = 8;

// Sums of f(i) for i in [0, n), each over kLanes interleaved partial sums (element i goes to lane
// i mod kLanes) combined pairwise in a fixed order. F returns K values at once (K sums in one
// pass).
template <int K>
struct LaneSums {
  double lane[K][kLanes] = {};
  template <class F>
  LaneSums(int64_t n, F f) {
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        const std::array<double, K> v = f(i + l);
        for (int k = 0; k < K; ++k) lane[k][l] += v[size_t(k)];
      }
    for (; i < n; ++i) {
      const std::array<double, K> v = f(i);
      for (int k = 0; k < K; ++k) lane[k][i % kLanes] += v[size_t(k)];
    }
  }
  double operator[](int k) const {
    const double* a = lane[k];
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  }
};

// The geometry of a group_norm call.
struct GnDims {
  int64_t N, C, G, Cg, HW;
  int64_t M() const { return Cg * HW; }
};

GnDims gn_dims(const Tensor& x, int64_t groups) {
  GnDims d{x.shape()[0], x.shape()[1], groups, x.shape()[1] / groups, 1};
  for (int64_t k = 2; k < x.dim(); ++k) d.HW *= x.shape()[size_t(k)];
  return d;
}

// weight[c] (1 when there is no weight) and bias[c] (0 when there is none), as doubles.
template <class T>
std::vector<double> per_channel(const Tensor& t, int64_t C, double dflt) {
  std::vector<double> v(size_t(C), dflt);
  if (!t.defined()) return v;
  const T* p = static_cast<const T*>(t.data_ptr());
  for (int64_t c = 0; c < C; ++c) v[size_t(c)] = double(static_cast<compute_t<T>>(p[c]));
  return v;
}

// SiLU fused after the normalisation: the output is silu(h) with h the normalised value rounded to
// T, evaluated as the elementwise kernel does (sop::SiluF in T's compute type); the backward
// recomputes h from x and the saved statistics and uses dh = SiluBackward(dy, h) rounded to T.
template <class T>
__attribute__((always_inline)) inline T silu_of(T h) {
  using C = compute_t<T>;
  return convert<T>(sop::SiluF<C>{C(0), C(0)}(static_cast<C>(h)));
}
template <class T>
__attribute__((always_inline)) inline T dsilu_of(T dy, T h) {
  using C = compute_t<T>;
  return convert<T>(sop::SiluBackwardF<C>{C(1)}(static_cast<C>(dy), static_cast<C>(h)));
}

// A per-thread scratch buffer of n elements (kept between calls: no allocation per item).
template <class T>
T* scratch(size_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

template <class T, class S, bool Silu = false>
void group_norm_typed(const Tensor& x, const Tensor& weight, const Tensor& bias, const GnDims& d,
                      double eps, const Tensor& out, const Tensor& mean, const Tensor& rstd) {
  const T* xp = static_cast<const T*>(x.data_ptr());
  T* op = static_cast<T*>(out.data_ptr());
  S* mp = static_cast<S*>(mean.data_ptr());
  S* rp = static_cast<S*>(rstd.data_ptr());
  const std::vector<double> w = per_channel<T>(weight, d.C, 1.0),
                            b = per_channel<T>(bias, d.C, 0.0);
  const int64_t M = d.M();
  parallel_for(d.N * d.G, 3 * M, [&](int64_t ng) {
    const T* xg = xp + ng * M;
    T* og = op + ng * M;
    double mu = 0, var = 0;
    if (M > 0) {
      mu = LaneSums<1>(M,
                       [&](int64_t i) {
                         return std::array<double, 1>{double(static_cast<compute_t<T>>(xg[i]))};
                       })[0] /
           double(M);
      // Second pass: Σ e and Σ e² with e = x − mean. Σ e (zero in exact arithmetic) corrects the
      // rounding of the first pass, for the mean and the variance alike.
      const LaneSums<2> e12(M, [&](int64_t i) {
        const double e = double(static_cast<compute_t<T>>(xg[i])) - mu;
        return std::array<double, 2>{e, e * e};
      });
      const double s1 = e12[0], s2 = e12[1];
      mu += s1 / double(M);
      var = std::max(0.0, (s2 - s1 * s1 / double(M)) / double(M));
    }
    const double r = 1.0 / std::sqrt(var + eps);
    mp[ng] = S(mu);
    rp[ng] = S(r);
    const int64_t c0 = (ng % d.G) * d.Cg;
    for (int64_t j = 0; j < d.Cg; ++j) {
      const double scale = r * w[size_t(c0 + j)], shift = b[size_t(c0 + j)];
      const T* xc = xg + j * d.HW;
      T* oc = og + j * d.HW;
      for (int64_t i = 0; i < d.HW; ++i)
        oc[i] = convert<T>((double(static_cast<compute_t<T>>(xc[i])) - mu) * scale + shift);
      if constexpr (Silu)
        for (int64_t i = 0; i < d.HW; ++i) oc[i] = silu_of(oc[i]);
    }
  });
}

// dweight or dbias (dst [C], when defined): the per-(n, c) sums added over n in order.
template <class T>
void sum_over_samples(const std::vector<double>& per_nc, const GnDims& d, const Tensor& dst) {
  if (!dst.defined()) return;
  T* p = static_cast<T*>(dst.data_ptr());
  for (int64_t c = 0; c < d.C; ++c) {
    double s = 0;
    for (int64_t n = 0; n < d.N; ++n) s += per_nc[size_t(n * d.C + c)];
    p[c] = convert<T>(s);
  }
}

template <class T, class S, bool Silu = false>
void group_norm_backward_typed(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                               const Tensor& bias, const Tensor& mean, const Tensor& rstd,
                               const GnDims& d, const Tensor& grad_x, const Tensor& grad_w,
                               const Tensor& grad_b) {
  const T* gp = static_cast<const T*>(grad_out.data_ptr());
  const T* xp = static_cast<const T*>(x.data_ptr());
  const S* mp = static_cast<const S*>(mean.data_ptr());
  const S* rp = static_cast<const S*>(rstd.data_ptr());
  T* gxp = grad_x.defined() ? static_cast<T*>(grad_x.data_ptr()) : nullptr;
  const std::vector<double> w = per_channel<T>(weight, d.C, 1.0),
                            b = Silu ? per_channel<T>(bias, d.C, 0.0) : std::vector<double>();
  const int64_t M = d.M();
  // Per (n, c): Σ_hw dy·x̂ and Σ_hw dy.
  std::vector<double> sum_dy_xhat(size_t(d.N * d.C)), sum_dy(size_t(d.N * d.C));
  parallel_for(d.N * d.G, 3 * M, [&](int64_t ng) {
    const double mu = double(mp[ng]), r = double(rp[ng]);
    const int64_t n = ng / d.G, c0 = (ng % d.G) * d.Cg;
    double a = 0, bsum = 0;  // Σ w·dy and Σ w·dy·x̂ over the group
    // The gradient of the normalised values: dy itself, or (fused SiLU) dh = SiluBackward(dy, h)
    // with h recomputed, once per group into a scratch buffer.
    const T* g = gp + ng * M;
    if constexpr (Silu) {
      T* dh = scratch<T>(size_t(M));
      for (int64_t j = 0; j < d.Cg; ++j) {
        const double scale = r * w[size_t(c0 + j)], shift = b[size_t(c0 + j)];
        const T* xc = xp + ng * M + j * d.HW;
        const T* gc = gp + ng * M + j * d.HW;
        for (int64_t i = 0; i < d.HW; ++i) {
          const T h = convert<T>((double(static_cast<compute_t<T>>(xc[i])) - mu) * scale + shift);
          dh[j * d.HW + i] = dsilu_of(gc[i], h);
        }
      }
      g = dh;
    }
    const auto dy_at = [&](int64_t idx) {
      return double(static_cast<compute_t<T>>(g[idx - ng * M]));
    };
    for (int64_t j = 0; j < d.Cg; ++j) {
      const int64_t off = ng * M + j * d.HW;
      const LaneSums<2> sums(d.HW, [&](int64_t i) {
        const double dy = dy_at(off + i);
        return std::array<double, 2>{dy,
                                     dy * (double(static_cast<compute_t<T>>(xp[off + i])) - mu)};
      });
      const double sd = sums[0], sdx = sums[1] * r;
      sum_dy_xhat[size_t(n * d.C + c0 + j)] = sdx;
      sum_dy[size_t(n * d.C + c0 + j)] = sd;
      a += w[size_t(c0 + j)] * sd;
      bsum += w[size_t(c0 + j)] * sdx;
    }
    if (!gxp || M == 0) return;
    const double ma = a / double(M), mb = bsum / double(M);
    for (int64_t j = 0; j < d.Cg; ++j) {
      const int64_t off = ng * M + j * d.HW;
      const double wc = w[size_t(c0 + j)];
      for (int64_t i = 0; i < d.HW; ++i) {
        const double dy = dy_at(off + i);
        const double xhat = (double(static_cast<compute_t<T>>(xp[off + i])) - mu) * r;
        gxp[off + i] = convert<T>(r * (wc * dy - ma - xhat * mb));
      }
    }
  });
  sum_over_samples<T>(sum_dy_xhat, d, grad_w);
  sum_over_samples<T>(sum_dy, d, grad_b);
}

// ---- channels-last: x [N, C, H, W] stored as [N, H·W, C] ----
//
// One item per sample n: the pixels are walked in memory order and every sum is kept per channel
// (f64 accumulators over the C contiguous channels of a pixel, a loop that vectorises), then the
// per-channel sums are added into group sums in channel order. The statistics are the same
// two-pass f64 values as above (summed in another order, so they may differ in the last bits of
// f64, which f32 outputs do not show); each output element uses the same formula.

// Element k (channel c) of a sample's input as the kernels read it: x itself, or with Shifted
// x + shift[c] rounded to T (the value the separate add, AddF with alpha 1, would store).
template <class T, bool Shifted>
__attribute__((always_inline)) inline double in_value(const T* xn, const T* sh, int64_t k,
                                                      int64_t c) {
  using C = compute_t<T>;
  if constexpr (Shifted)
    return double(static_cast<C>(
        convert<T>(sop::AddF<C>{C(1)}(static_cast<C>(xn[k]), static_cast<C>(sh[c])))));
  else
    return double(static_cast<C>(xn[k]));
}

// One sample n of the forward (the work of one parallel item), in AVX-512 and baseline clones
// (loops.h, CM_CPU_CLONES): the f64 arithmetic runs on twice the lanes where the machine has them.
// With Shifted, sh is the sample's channel shift, added to x first.
template <class T, class S, bool Silu, bool Shifted>
CM_CPU_CLONES void group_norm_nhwc_sample(const T* xn, const T* sh, T* on, S* mp, S* rp,
                                          const double* w, const double* b, const GnDims& d,
                                          double eps, int64_t n) {
  const int64_t C = d.C, HW = d.HW, M = d.M();
  const size_t nc = size_t(C);
  std::vector<double> s1(nc, 0.0), s2(nc, 0.0), mu_c(nc), scale(nc), shift(nc);
  for (int64_t i = 0; i < HW; ++i)
    for (int64_t c = 0; c < C; ++c) s1[size_t(c)] += in_value<T, Shifted>(xn, sh, i * C + c, c);
  for (int64_t g = 0; g < d.G; ++g) {  // first-pass group means, broadcast to the channels
    double sum = 0;
    for (int64_t j = 0; j < d.Cg; ++j) sum += s1[size_t(g * d.Cg + j)];
    for (int64_t j = 0; j < d.Cg; ++j) mu_c[size_t(g * d.Cg + j)] = M > 0 ? sum / double(M) : 0;
  }
  std::fill(s1.begin(), s1.end(), 0.0);
  for (int64_t i = 0; i < HW; ++i)
    for (int64_t c = 0; c < C; ++c) {
      const double e = in_value<T, Shifted>(xn, sh, i * C + c, c) - mu_c[size_t(c)];
      s1[size_t(c)] += e;
      s2[size_t(c)] += e * e;
    }
  for (int64_t g = 0; g < d.G; ++g) {
    double e1 = 0, e2 = 0;
    for (int64_t j = 0; j < d.Cg; ++j) {
      e1 += s1[size_t(g * d.Cg + j)];
      e2 += s2[size_t(g * d.Cg + j)];
    }
    double mu = mu_c[size_t(g * d.Cg)], var = 0;
    if (M > 0) {
      mu += e1 / double(M);
      var = std::max(0.0, (e2 - e1 * e1 / double(M)) / double(M));
    }
    const double r = 1.0 / std::sqrt(var + eps);
    mp[n * d.G + g] = S(mu);
    rp[n * d.G + g] = S(r);
    for (int64_t j = 0; j < d.Cg; ++j) {
      const size_t c = size_t(g * d.Cg + j);
      mu_c[c] = mu;
      scale[c] = r * w[c];
      shift[c] = b[c];
    }
  }
  for (int64_t i = 0; i < HW; ++i) {
    T* o = on + i * C;
    for (int64_t c = 0; c < C; ++c)
      o[c] = convert<T>((in_value<T, Shifted>(xn, sh, i * C + c, c) - mu_c[size_t(c)]) *
                            scale[size_t(c)] +
                        shift[size_t(c)]);
    if constexpr (Silu)
      for (int64_t c = 0; c < C; ++c) o[c] = silu_of(o[c]);
  }
}

// shift: [N, C] contiguous, added to x first (group_norm_silu_shifted), or undefined.
template <class T, class S, bool Silu = false>
void group_norm_nhwc(const Tensor& x, const Tensor& weight, const Tensor& bias, const GnDims& d,
                     double eps, const Tensor& out, const Tensor& mean, const Tensor& rstd,
                     const Tensor& shift = {}) {
  const T* xp = static_cast<const T*>(x.data_ptr());
  const T* shp = shift.defined() ? static_cast<const T*>(shift.data_ptr()) : nullptr;
  T* op = static_cast<T*>(out.data_ptr());
  S* mp = static_cast<S*>(mean.data_ptr());
  S* rp = static_cast<S*>(rstd.data_ptr());
  const std::vector<double> w = per_channel<T>(weight, d.C, 1.0),
                            b = per_channel<T>(bias, d.C, 0.0);
  const int64_t CHW = d.C * d.HW;
  parallel_for(d.N, 3 * CHW, [&](int64_t n) {
    if (shp)
      group_norm_nhwc_sample<T, S, Silu, true>(xp + n * CHW, shp + n * d.C, op + n * CHW, mp, rp,
                                               w.data(), b.data(), d, eps, n);
    else
      group_norm_nhwc_sample<T, S, Silu, false>(xp + n * CHW, nullptr, op + n * CHW, mp, rp,
                                                w.data(), b.data(), d, eps, n);
  });
}

// One sample n of the backward, in clones as the forward's: writes the per-(n, c) sums and, when
// gxn is not null, the sample's input gradient; with Shifted (sh: the sample's shift) also its
// shift gradient gsh[c] = Σ_hw gxn when gsh is not null.
template <class T, class S, bool Silu, bool Shifted>
CM_CPU_CLONES void group_norm_backward_nhwc_sample(const T* gn, const T* xn, const T* sh, T* gxn,
                                                   T* gsh, const S* mp, const S* rp,
                                                   const double* w, const double* b,
                                                   const GnDims& d, int64_t n, double* sum_dy_xhat,
                                                   double* sum_dy) {
  const int64_t C = d.C, HW = d.HW, M = d.M();
  const size_t nc = size_t(C);
  std::vector<double> mu_c(nc), r_c(nc), sd(nc, 0.0), sdx(nc, 0.0);
  for (int64_t c = 0; c < C; ++c) {
    mu_c[size_t(c)] = double(mp[n * d.G + c / d.Cg]);
    r_c[size_t(c)] = double(rp[n * d.G + c / d.Cg]);
  }
  // The gradient of the normalised values: dy itself, or (fused SiLU) dh = SiluBackward(dy, h)
  // with h recomputed, once per sample into a scratch buffer.
  const T* g = gn;
  if constexpr (Silu) {
    T* dh = scratch<T>(size_t(HW * C));
    std::vector<double> scale(nc);
    for (size_t k = 0; k < nc; ++k) scale[k] = r_c[k] * w[k];
    for (int64_t i = 0; i < HW; ++i)
      for (int64_t c = 0; c < C; ++c) {
        const size_t k = size_t(c);
        const T h =
            convert<T>((in_value<T, Shifted>(xn, sh, i * C + c, c) - mu_c[k]) * scale[k] + b[k]);
        dh[i * C + c] = dsilu_of(gn[i * C + c], h);
      }
    g = dh;
  }
  const auto dy_at = [&](int64_t i, int64_t c) {
    return double(static_cast<compute_t<T>>(g[i * C + c]));
  };
  for (int64_t i = 0; i < HW; ++i)
    for (int64_t c = 0; c < C; ++c) {
      const double dy = dy_at(i, c);
      sd[size_t(c)] += dy;
      sdx[size_t(c)] += dy * (in_value<T, Shifted>(xn, sh, i * C + c, c) - mu_c[size_t(c)]);
    }
  std::vector<double> ma(nc), mb(nc);
  for (int64_t gi = 0; gi < d.G; ++gi) {
    double a = 0, bs = 0;  // Σ w·dy and Σ w·dy·x̂ over the group
    for (int64_t j = 0; j < d.Cg; ++j) {
      const size_t c = size_t(gi * d.Cg + j);
      sdx[c] *= r_c[c];
      sum_dy_xhat[size_t(n * C) + c] = sdx[c];
      sum_dy[size_t(n * C) + c] = sd[c];
      a += w[c] * sd[c];
      bs += w[c] * sdx[c];
    }
    for (int64_t j = 0; j < d.Cg; ++j) {
      ma[size_t(gi * d.Cg + j)] = M > 0 ? a / double(M) : 0;
      mb[size_t(gi * d.Cg + j)] = M > 0 ? bs / double(M) : 0;
    }
  }
  if constexpr (Shifted)
    if (gsh && M == 0) std::fill(gsh, gsh + C, T(0));  // no pixels: an empty sum
  if (!gxn || M == 0) return;
  for (int64_t i = 0; i < HW; ++i)
    for (int64_t c = 0; c < C; ++c) {
      const size_t k = size_t(c);
      const double dy = dy_at(i, c);
      const double xhat = (in_value<T, Shifted>(xn, sh, i * C + c, c) - mu_c[k]) * r_c[k];
      gxn[i * C + c] = convert<T>(r_c[k] * (w[k] * dy - ma[k] - xhat * mb[k]));
    }
  if constexpr (Shifted) {  // Σ over the pixels in order, per channel, as the Sum reduction
    if (!gsh) return;
    std::vector<double> acc(nc, 0.0);
    for (int64_t i = 0; i < HW; ++i)
      for (int64_t c = 0; c < C; ++c)
        acc[size_t(c)] += double(static_cast<compute_t<T>>(gxn[i * C + c]));
    for (int64_t c = 0; c < C; ++c) gsh[c] = convert<T>(acc[size_t(c)]);
  }
}

template <class T, class S, bool Silu = false>
void group_norm_backward_nhwc(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                              const Tensor& bias, const Tensor& mean, const Tensor& rstd,
                              const GnDims& d, const Tensor& grad_x, const Tensor& grad_w,
                              const Tensor& grad_b, const Tensor& shift = {},
                              const Tensor& grad_shift = {}) {
  const T* shp = shift.defined() ? static_cast<const T*>(shift.data_ptr()) : nullptr;
  T* gshp = grad_shift.defined() ? static_cast<T*>(grad_shift.data_ptr()) : nullptr;
  const T* gp = static_cast<const T*>(grad_out.data_ptr());
  const T* xp = static_cast<const T*>(x.data_ptr());
  const S* mp = static_cast<const S*>(mean.data_ptr());
  const S* rp = static_cast<const S*>(rstd.data_ptr());
  T* gxp = grad_x.defined() ? static_cast<T*>(grad_x.data_ptr()) : nullptr;
  const std::vector<double> w = per_channel<T>(weight, d.C, 1.0),
                            b = Silu ? per_channel<T>(bias, d.C, 0.0) : std::vector<double>();
  const int64_t CHW = d.C * d.HW;
  std::vector<double> sum_dy_xhat(size_t(d.N * d.C)), sum_dy(size_t(d.N * d.C));
  parallel_for(d.N, 3 * CHW, [&](int64_t n) {
    T* gxn = gxp ? gxp + n * CHW : nullptr;
    if (shp)
      group_norm_backward_nhwc_sample<T, S, Silu, true>(
          gp + n * CHW, xp + n * CHW, shp + n * d.C, gxn, gshp ? gshp + n * d.C : nullptr, mp, rp,
          w.data(), b.data(), d, n, sum_dy_xhat.data(), sum_dy.data());
    else
      group_norm_backward_nhwc_sample<T, S, Silu, false>(gp + n * CHW, xp + n * CHW, nullptr, gxn,
                                                         nullptr, mp, rp, w.data(), b.data(), d, n,
                                                         sum_dy_xhat.data(), sum_dy.data());
  });
  sum_over_samples<T>(sum_dy_xhat, d, grad_w);
  sum_over_samples<T>(sum_dy, d, grad_b);
}

// The kernels take contiguous operands, or channels-last activations (the op layer makes them
// so). Returns true for the channels-last case.
bool check_layout(std::initializer_list<Tensor> activations, std::initializer_list<Tensor> others,
                  const char* op) {
  const Tensor& x = *activations.begin();
  const bool nhwc = memory_format_of(x) == MemoryFormat::ChannelsLast;
  for (const Tensor& t : activations)
    CM_CHECK(!t.defined() || (nhwc ? is_channels_last(t) : t.is_contiguous()), op,
             ": operands must all be contiguous or all channels-last");
  for (const Tensor& t : others)
    CM_CHECK(!t.defined() || t.is_contiguous(), op, ": operands must be contiguous");
  return nhwc;
}

}  // namespace

namespace {

// shift (group_norm_silu_shifted): channels-last only, the callers check.
template <bool Silu>
void group_norm_dispatch(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups,
                         double eps, const Tensor& out, const Tensor& mean, const Tensor& rstd,
                         const char* op, const Tensor& shift = {}) {
  const bool nhwc = check_layout({x, out}, {weight, bias, mean, rstd}, op);
  CM_CHECK(nhwc || !shift.defined(), op, ": a shift needs channels-last operands");
  const GnDims d = gn_dims(x, groups);
  CM_DISPATCH_FLOAT(x.dtype(), op, [&] {
    const auto run = [&]<class S>() {
      if (nhwc)
        group_norm_nhwc<scalar_t, S, Silu>(x, weight, bias, d, eps, out, mean, rstd, shift);
      else
        group_norm_typed<scalar_t, S, Silu>(x, weight, bias, d, eps, out, mean, rstd);
    };
    if (mean.dtype() == DType::f64)
      run.template operator()<double>();
    else
      run.template operator()<float>();
  });
}

template <bool Silu>
void group_norm_backward_dispatch(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                                  const Tensor& bias, const Tensor& mean, const Tensor& rstd,
                                  int64_t groups, const Tensor& grad_x, const Tensor& grad_w,
                                  const Tensor& grad_b, const char* op, const Tensor& shift = {},
                                  const Tensor& grad_shift = {}) {
  const bool nhwc =
      check_layout({x, grad_out, grad_x}, {weight, bias, mean, rstd, grad_w, grad_b}, op);
  CM_CHECK(nhwc || !shift.defined(), op, ": a shift needs channels-last operands");
  const GnDims d = gn_dims(x, groups);
  CM_DISPATCH_FLOAT(x.dtype(), op, [&] {
    const auto run = [&]<class S>() {
      if (nhwc)
        group_norm_backward_nhwc<scalar_t, S, Silu>(grad_out, x, weight, bias, mean, rstd, d,
                                                    grad_x, grad_w, grad_b, shift, grad_shift);
      else
        group_norm_backward_typed<scalar_t, S, Silu>(grad_out, x, weight, bias, mean, rstd, d,
                                                     grad_x, grad_w, grad_b);
    };
    if (mean.dtype() == DType::f64)
      run.template operator()<double>();
    else
      run.template operator()<float>();
  });
}

}  // namespace

void CpuBackend::group_norm(const Tensor& x, const Tensor& weight, const Tensor& bias,
                            int64_t groups, double eps, const Tensor& out, const Tensor& mean,
                            const Tensor& rstd) {
  group_norm_dispatch<false>(x, weight, bias, groups, eps, out, mean, rstd, "group_norm");
}

void CpuBackend::group_norm_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                                     const Tensor& mean, const Tensor& rstd, int64_t groups,
                                     const Tensor& grad_x, const Tensor& grad_w,
                                     const Tensor& grad_b) {
  group_norm_backward_dispatch<false>(grad_out, x, weight, Tensor(), mean, rstd, groups, grad_x,
                                      grad_w, grad_b, "group_norm_backward");
}

void CpuBackend::group_norm_silu(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                 int64_t groups, double eps, const Tensor& out, const Tensor& mean,
                                 const Tensor& rstd) {
  group_norm_dispatch<true>(x, weight, bias, groups, eps, out, mean, rstd, "group_norm_silu");
}

void CpuBackend::group_norm_silu_backward(const Tensor& grad_out, const Tensor& x,
                                          const Tensor& weight, const Tensor& bias,
                                          const Tensor& mean, const Tensor& rstd, int64_t groups,
                                          double, const Tensor& grad_x, const Tensor& grad_w,
                                          const Tensor& grad_b) {
  group_norm_backward_dispatch<true>(grad_out, x, weight, bias, mean, rstd, groups, grad_x, grad_w,
                                     grad_b, "group_norm_silu_backward");
}

namespace {
// The fused shifted kernels run on channels-last activations with a contiguous [N, C] shift of
// x's dtype; anything else takes the composite.
bool shifted_fusable(const Tensor& x, const Tensor& shift, std::initializer_list<Tensor> acts) {
  if (x.dim() != 4 || memory_format_of(x) != MemoryFormat::ChannelsLast) return false;
  for (const Tensor& t : acts)
    if (t.defined() &&
        (memory_format_of(t) != MemoryFormat::ChannelsLast || t.dtype() != x.dtype()))
      return false;
  return shift.dtype() == x.dtype() && shift.is_contiguous() &&
         shift.shape() == Shape{x.size(0), x.size(1)};
}
}  // namespace

void CpuBackend::group_norm_silu_shifted(const Tensor& x, const Tensor& shift, const Tensor& weight,
                                         const Tensor& bias, int64_t groups, double eps,
                                         const Tensor& out, const Tensor& mean,
                                         const Tensor& rstd) {
  if (!shifted_fusable(x, shift, {out}))
    return Backend::group_norm_silu_shifted(x, shift, weight, bias, groups, eps, out, mean, rstd);
  group_norm_dispatch<true>(x, weight, bias, groups, eps, out, mean, rstd,
                            "group_norm_silu_shifted", shift);
}

void CpuBackend::group_norm_silu_shifted_backward(const Tensor& grad_out, const Tensor& x,
                                                  const Tensor& shift, const Tensor& weight,
                                                  const Tensor& bias, const Tensor& mean,
                                                  const Tensor& rstd, int64_t groups, double eps,
                                                  const Tensor& grad_x, const Tensor& grad_shift,
                                                  const Tensor& grad_w, const Tensor& grad_b) {
  if (!shifted_fusable(x, shift, {grad_out, grad_x}) ||
      (grad_shift.defined() && !grad_x.defined()) ||
      (grad_shift.defined() &&
       !(grad_shift.is_contiguous() && grad_shift.shape() == shift.shape())))
    return Backend::group_norm_silu_shifted_backward(grad_out, x, shift, weight, bias, mean, rstd,
                                                     groups, eps, grad_x, grad_shift, grad_w,
                                                     grad_b);
  group_norm_backward_dispatch<true>(grad_out, x, weight, bias, mean, rstd, groups, grad_x, grad_w,
                                     grad_b, "group_norm_silu_shifted_backward", shift, grad_shift);
}

}  // namespace cm::cpu
