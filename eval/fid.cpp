#include "eval/fid.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "autograd/ops.h"
#include "datasets/npz.h"
#include "datasets/zip.h"
#include "tensor/cpu/blas.h"

namespace cm::eval {

// ---- the input path --------------------------------------------------------------------------

namespace {
// The taps of TF1's legacy bilinear resize along one dim: src = i·(in/out) in f32, i0 = ⌊src⌋,
// i1 = min(i0 + 1, in − 1), t = src − i0 (f32). TensorFlow takes i1 = min(⌈src⌉, in − 1), which
// differs only where t = 0 and then yields the same value.
struct Taps {
  Tensor i0, i1;  // i64 [out]
  Tensor t;       // [out] in the interpolation dtype
};
Taps tf1_taps(int64_t in, int64_t out, DType dtype, Device device) {
  const float scale = float(in) / float(out);
  std::vector<int64_t> i0(static_cast<size_t>(out)), i1(static_cast<size_t>(out));
  std::vector<float> t(static_cast<size_t>(out));
  for (int64_t i = 0; i < out; ++i) {
    const float src = float(i) * scale;
    const int64_t lo = int64_t(std::floor(src));
    i0[size_t(i)] = lo;
    i1[size_t(i)] = std::min(lo + 1, in - 1);
    t[size_t(i)] = src - float(lo);
  }
  const TensorOptions iopt{.dtype = DType::i64, .device = device};
  return {from_vector(i0, {out}, iopt), from_vector(i1, {out}, iopt),
          to(from_vector(t, {out}, {.dtype = DType::f32, .device = device}), dtype)};
}
// a + (b − a)·t, rounded after each operation as TensorFlow's float kernel.
Tensor lerp_tf(const Tensor& a, const Tensor& b, const Tensor& t) {
  return add(a, mul(sub(b, a), t));
}
}  // namespace

Tensor resize_bilinear_tf1(const Tensor& x0, int64_t out_h, int64_t out_w) {
  CM_CHECK(x0.dim() == 4 && (x0.dtype() == DType::u8 || is_floating(x0.dtype())),
           "resize_bilinear_tf1: expected u8 or floating [N, C, H, W], got ",
           dtype_name(x0.dtype()), " ", shape_str(x0.shape()));
  CM_CHECK(out_h > 0 && out_w > 0 && x0.size(2) > 0 && x0.size(3) > 0,
           "resize_bilinear_tf1: sizes must be positive, got input ", shape_str(x0.shape()),
           " and output ", out_h, "x", out_w);
  const Tensor x = x0.dtype() == DType::u8 ? to(x0, DType::f32) : x0;
  const Taps tw = tf1_taps(x.size(3), out_w, x.dtype(), x.device());
  const Taps th = tf1_taps(x.size(2), out_h, x.dtype(), x.device());
  // Along W on every input row, then along H (selecting rows commutes with the W step, so each
  // output is TensorFlow's top + (bottom − top)·t_h with top and bottom lerped along W).
  const Tensor xw = lerp_tf(index_select(x, 3, tw.i0), index_select(x, 3, tw.i1), tw.t);
  return lerp_tf(index_select(xw, 2, th.i0), index_select(xw, 2, th.i1), reshape(th.t, {out_h, 1}));
}

Tensor inception_input(const Tensor& images_u8) {
  CM_CHECK(images_u8.dim() == 4 && images_u8.dtype() == DType::u8 &&
               (images_u8.size(1) == 1 || images_u8.size(1) == 3),
           "inception_input: expected u8 images [N, 1 or 3, H, W], got ",
           dtype_name(images_u8.dtype()), " ", shape_str(images_u8.shape()));
  NoGradGuard ng;
  Tensor x = resize_bilinear_tf1(images_u8, kInceptionSize, kInceptionSize);
  x = div(sub(x, 128.0), 128.0);
  if (x.size(1) == 1) x = contiguous(expand(x, {x.size(0), 3, x.size(2), x.size(3)}));
  return x;
}

// ---- statistics ------------------------------------------------------------------------------

namespace {
Tensor symmetrised(const Tensor& s) {
  return mul(add(s, transpose(s, 0, 1)), 0.5);
}
}  // namespace

FeatureStats::FeatureStats(int64_t dim) : dim_(dim) {
  CM_CHECK(dim >= 1, "FeatureStats: the feature dimension must be positive, got ", dim);
}

void FeatureStats::add(const Tensor& features) {
  CM_CHECK(features.dim() == 2 && features.size(1) == dim_ && is_floating(features.dtype()),
           "FeatureStats::add: expected floating features [B, ", dim_, "], got ",
           dtype_name(features.dtype()), " ", shape_str(features.shape()));
  const int64_t nb = features.size(0);
  if (nb == 0) return;
  NoGradGuard ng;
  const Device device = n_ == 0 ? features.device() : mean_.device();
  const Tensor x = to(to(detach(features), device), DType::f64);
  const Tensor mb = mean(x, {0});
  const Tensor xc = sub(x, mb);
  const Tensor sb = matmul(transpose(xc, 0, 1), xc);
  if (n_ == 0) {
    mean_ = mb;
    scatter_ = sb;
  } else {
    const double n = double(n_), m = double(nb), total = n + m;
    const Tensor delta = sub(mb, mean_);
    mean_ = cm::add(mean_, mul(delta, m / total));
    const Tensor outer = mul(unsqueeze(delta, 1), unsqueeze(delta, 0));
    scatter_ = cm::add(cm::add(scatter_, sb), mul(outer, n * m / total));
  }
  n_ += nb;
}

FidStats FeatureStats::stats() const {
  CM_CHECK(n_ >= 2, "FeatureStats: a covariance needs at least 2 samples, have ", n_);
  NoGradGuard ng;
  FidStats s;
  s.mu = contiguous(to(mean_, Device::cpu()));
  s.sigma = contiguous(symmetrised(div(to(scatter_, Device::cpu()), double(n_ - 1))));
  return s;
}

FidStats compute_stats(const Tensor& features) {
  CM_CHECK(features.dim() == 2, "compute_stats: expected features [N, D], got ",
           shape_str(features.shape()));
  FeatureStats acc(features.size(1));
  acc.add(features);
  return acc.stats();
}

namespace {
// Checks mu [D] and sigma [D, D] (floating, finite) and returns them as contiguous CPU f64.
FidStats checked_stats(const Tensor& mu, const Tensor& sigma, const std::string& what) {
  CM_CHECK(is_floating(mu.dtype()) && is_floating(sigma.dtype()), what,
           ": mu and sigma must be floating, got ", dtype_name(mu.dtype()), " and ",
           dtype_name(sigma.dtype()));
  CM_CHECK(mu.dim() == 1 && mu.size(0) >= 1, what, ": mu must be a vector [D], got shape ",
           shape_str(mu.shape()));
  const int64_t d = mu.size(0);
  CM_CHECK(sigma.shape() == Shape({d, d}), what, ": sigma must be [", d, ", ", d,
           "] to match mu, got shape ", shape_str(sigma.shape()));
  NoGradGuard ng;
  FidStats s{contiguous(to(to(detach(mu), Device::cpu()), DType::f64)),
             contiguous(to(to(detach(sigma), Device::cpu()), DType::f64))};
  CM_CHECK(sum(logical_not(isfinite(s.mu))).item<int64_t>() == 0 &&
               sum(logical_not(isfinite(s.sigma))).item<int64_t>() == 0,
           what, ": mu or sigma holds non-finite values");
  return s;
}
}  // namespace

void save_stats_npz(const std::string& path, const FidStats& stats, const std::string& mu_key,
                    const std::string& sigma_key) {
  const FidStats s = checked_stats(stats.mu, stats.sigma, "save_stats_npz: '" + path + "'");
  data::write_npz(path, {{mu_key, s.mu}, {sigma_key, s.sigma}});
}

FidStats load_stats_npz(const std::string& path, const std::string& mu_key,
                        const std::string& sigma_key) {
  const std::map<std::string, Tensor> arrays = data::read_npz(path, {mu_key, sigma_key});
  if (!arrays.count(mu_key) || !arrays.count(sigma_key)) {
    std::string present;
    const data::ZipReader zip(path);
    for (const data::ZipEntry& e : zip.entries()) present += (present.empty() ? "" : ", ") + e.name;
    CM_FAIL("load_stats_npz: '", path, "' must hold the arrays '", mu_key, "' and '", sigma_key,
            "' (", mu_key, ".npy and ", sigma_key,
            ".npy), it holds: ", present.empty() ? "nothing" : present);
  }
  return checked_stats(arrays.at(mu_key), arrays.at(sigma_key), "load_stats_npz: '" + path + "'");
}

// ---- the Fréchet distance --------------------------------------------------------------------

SymmetricEigen eigh(const Tensor& a, bool vectors) {
  CM_CHECK(a.dim() == 2 && a.size(0) == a.size(1) && is_floating(a.dtype()),
           "eigh: expected a floating square matrix, got ", dtype_name(a.dtype()), " ",
           shape_str(a.shape()));
  NoGradGuard ng;
  const int64_t n = a.size(0);
  // dsyevd reads the lower triangle of its column-major input: the upper one of this row-major
  // copy. Transposing first makes it the lower one, as documented.
  Tensor work = clone(to(to(detach(transpose(a, 0, 1)), Device::cpu()), DType::f64));
  SymmetricEigen e;
  e.values = empty({n}, {.dtype = DType::f64});
  cpu::blas::dsyevd(vectors, n, work.data<double>(), e.values.data<double>(), "eigh");
  // Row i of the result (row-major) is the eigenvector of values[i]: columns after a transpose.
  if (vectors) e.vectors = contiguous(transpose(work, 0, 1));
  return e;
}

Tensor singular_values(const Tensor& a) {
  CM_CHECK(a.dim() == 2 && is_floating(a.dtype()),
           "singular_values: expected a floating matrix, got ", dtype_name(a.dtype()), " ",
           shape_str(a.shape()));
  NoGradGuard ng;
  Tensor work = clone(to(to(detach(a), Device::cpu()), DType::f64));
  Tensor s = empty({std::min(a.size(0), a.size(1))}, {.dtype = DType::f64});
  cpu::blas::dgesdd(a.size(0), a.size(1), work.data<double>(), s.data<double>(), "singular_values");
  return s;
}

namespace {
double trace(const Tensor& m) {
  const double* p = m.data<double>();
  double t = 0;
  for (int64_t i = 0; i < m.size(0); ++i) t += p[i * m.size(0) + i];
  return t;
}
// S^{1/2} = V·diag(√max(λ, 0))·Vᵀ of a symmetric positive semi-definite S.
Tensor psd_sqrt(const Tensor& s) {
  const SymmetricEigen e = eigh(s);
  return matmul(mul(e.vectors, sqrt(maximum(e.values, 0.0))), transpose(e.vectors, 0, 1));
}
}  // namespace

double frechet_distance(const FidStats& a0, const FidStats& b0) {
  const FidStats a = checked_stats(a0.mu, a0.sigma, "frechet_distance: first statistics");
  const FidStats b = checked_stats(b0.mu, b0.sigma, "frechet_distance: second statistics");
  CM_CHECK(a.dim() == b.dim(), "frechet_distance: the statistics have dimensions ", a.dim(),
           " and ", b.dim());
  NoGradGuard ng;
  const Tensor s1 = contiguous(symmetrised(a.sigma)), s2 = contiguous(symmetrised(b.sigma));
  const Tensor diff = sub(a.mu, b.mu);
  const double mean_term = sum(mul(diff, diff)).item<double>();
  const double tr_covmean = sum(singular_values(matmul(psd_sqrt(s1), psd_sqrt(s2)))).item<double>();
  return mean_term + trace(s1) + trace(s2) - 2 * tr_covmean;
}

// ---- Inception Score -------------------------------------------------------------------------

std::vector<int64_t> numpy_legacy_permutation(int64_t n, uint32_t seed) {
  CM_CHECK(n >= 0 && uint64_t(n) <= (uint64_t(1) << 32), "numpy_legacy_permutation: n = ", n,
           " must be in [0, 2^32]");
  std::vector<int64_t> a(static_cast<size_t>(n));
  std::iota(a.begin(), a.end(), int64_t(0));
  std::mt19937 mt(seed);  // init_genrand(seed), as NumPy's mt19937_seed
  for (int64_t i = n - 1; i >= 1; --i) {
    // random_interval(i): the smallest all-ones mask ≥ i, 32-bit draws until one is ≤ i.
    uint32_t mask = uint32_t(i);
    mask |= mask >> 1;
    mask |= mask >> 2;
    mask |= mask >> 4;
    mask |= mask >> 8;
    mask |= mask >> 16;
    uint32_t j;
    do {
      j = uint32_t(mt()) & mask;
    } while (j > uint32_t(i));
    std::swap(a[size_t(i)], a[size_t(j)]);
  }
  return a;
}

InceptionScore inception_score(const Tensor& logits, int64_t splits, bool shuffle, uint32_t seed) {
  CM_CHECK(logits.dim() == 2 && is_floating(logits.dtype()) && logits.size(1) >= 1,
           "inception_score: expected floating logits [N, C], got ", dtype_name(logits.dtype()),
           " ", shape_str(logits.shape()));
  const int64_t n = logits.size(0);
  CM_CHECK(splits >= 1 && n >= splits, "inception_score: ", n, " samples cannot make ", splits,
           " splits (need N ≥ splits ≥ 1)");
  NoGradGuard ng;
  const Tensor x = to(detach(logits), Device::cpu());
  // Row order: the permutation, or the identity. Each split gathers its rows and widens them to
  // f64 on its own, so that N×C f64 copies of all the logits are never made.
  std::vector<int64_t> order = shuffle ? numpy_legacy_permutation(n, seed) : std::vector<int64_t>();
  if (!shuffle) {
    order.resize(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), int64_t(0));
  }
  std::vector<double> scores;
  for (int64_t k = 0; k < splits; ++k) {
    const int64_t lo = k * n / splits, hi = (k + 1) * n / splits;
    const std::vector<int64_t> rows(order.begin() + lo, order.begin() + hi);
    const Tensor chunk = to(index_select(x, 0, from_vector(rows, {hi - lo})), DType::f64);
    const Tensor p = softmax(chunk, 1), log_p = log_softmax(chunk, 1);
    const Tensor log_q = log(mean(p, {0}, /*keepdim=*/true));
    const Tensor kl = sum(mul(p, sub(log_p, log_q)), {1});
    scores.push_back(std::exp(mean(kl).item<double>()));
  }
  InceptionScore is;
  for (double s : scores) is.mean += s;
  is.mean /= double(splits);
  for (double s : scores) is.std += (s - is.mean) * (s - is.mean);
  is.std = std::sqrt(is.std / double(splits));
  return is;
}

}  // namespace cm::eval
