// Reductions (sum, mean, var, std, amax/amin, max/min with indices, argmax/argmin, logsumexp):
// forward against f64 reference loops in every layout and float dtype, integer sums, large chunked
// reductions and thread-count determinism, empty dims, errors, and gradients by gradcheck.
#include <doctest/doctest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "helpers.h"

using namespace cm;
using cm::test::grad_input;
using cm::test::kLayouts;
using cm::test::Layout;
using cm::test::layout_name;
using cm::test::randn_input;
using cm::test::values;
using cm::test::with_layout;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
const double kNaN = std::numeric_limits<double>::quiet_NaN();

const std::vector<DType> kFloatTypes = {DType::f64, DType::f32, DType::f16, DType::bf16};

// The spacing of dtype t's values near v (one unit in the last place).
double ulp(double v, DType t) {
  int mant = 52, emin = -1022;
  if (t == DType::f32) mant = 23, emin = -126;
  if (t == DType::f16) mant = 10, emin = -14;
  if (t == DType::bf16) mant = 7, emin = -126;
  const int e = (v == 0 || !std::isfinite(v)) ? emin : std::max(std::ilogb(v), emin);
  return std::ldexp(1.0, e - mant);
}

// The dims to reduce, wrapped and sorted (all dims when `dims` is empty).
std::vector<int64_t> wrapped(const Shape& dims, int64_t nd) {
  std::vector<int64_t> out;
  if (dims.empty())
    for (int64_t d = 0; d < nd; ++d) out.push_back(d);
  for (int64_t d : dims) out.push_back(d < 0 ? d + nd : d);
  std::sort(out.begin(), out.end());
  return out;
}

bool reduced(const std::vector<int64_t>& dims, int64_t d) {
  return std::find(dims.begin(), dims.end(), d) != dims.end();
}

Shape result_shape(const Shape& s, const std::vector<int64_t>& dims, bool keepdim) {
  Shape out;
  for (int64_t d = 0; d < int64_t(s.size()); ++d) {
    if (!reduced(dims, d))
      out.push_back(s[size_t(d)]);
    else if (keepdim)
      out.push_back(1);
  }
  return out;
}

// x's values grouped by output element (row-major over the kept dims); each group holds its values
// in row-major order of the reduced dims.
std::vector<std::vector<double>> groups(const Tensor& x, const std::vector<int64_t>& dims) {
  const std::vector<double> v = values(x);
  const Shape& s = x.shape();
  const int64_t nd = int64_t(s.size());
  Shape out_stride(size_t(nd), 0);
  int64_t n_out = 1;
  for (int64_t d = nd - 1; d >= 0; --d) {
    if (reduced(dims, d)) continue;
    out_stride[size_t(d)] = n_out;
    n_out *= s[size_t(d)];
  }
  std::vector<std::vector<double>> g(static_cast<size_t>(n_out));
  for (int64_t i = 0; i < int64_t(v.size()); ++i) {
    int64_t rem = i, o = 0;
    for (int64_t d = nd - 1; d >= 0; --d) {
      o += (rem % s[size_t(d)]) * out_stride[size_t(d)];
      rem /= s[size_t(d)];
    }
    g[size_t(o)].push_back(v[size_t(i)]);
  }
  return g;
}

double ref_sum(const std::vector<double>& g) {
  double s = 0;
  for (double v : g) s += v;
  return s;
}
double ref_mean(const std::vector<double>& g) {
  return ref_sum(g) / double(g.size());
}
double ref_var(const std::vector<double>& g, int64_t correction) {
  const double m = ref_mean(g);
  double s = 0;
  for (double v : g) s += (v - m) * (v - m);
  return s / double(int64_t(g.size()) - correction);
}
double ref_amax(const std::vector<double>& g) {
  double m = -kInf;
  for (double v : g)
    if (std::isnan(v) || v > m)
      m = v;
    else if (std::isnan(m))
      break;
  return m;
}
double ref_amin(const std::vector<double>& g) {
  std::vector<double> n;
  for (double v : g) n.push_back(-v);
  return -ref_amax(n);
}
double ref_logsumexp(const std::vector<double>& g) {
  const double m = ref_amax(g);
  if (std::isinf(m)) return m;
  double s = 0;
  for (double v : g) s += std::exp(v - m);
  return m + std::log(s);
}
double abs_sum(const std::vector<double>& g) {
  double s = 0;
  for (double v : g) s += std::fabs(v);
  return s;
}
// The index of the first maximum (the first NaN if any).
int64_t ref_argmax(const std::vector<double>& g, bool is_max) {
  int64_t best = 0;
  for (int64_t k = 0; k < int64_t(g.size()); ++k) {
    const double v = g[size_t(k)], b = g[size_t(best)];
    if (std::isnan(b)) break;
    if (std::isnan(v) || (is_max ? v > b : v < b)) best = k;
  }
  return best;
}

// Checks y's shape and values: |y − ref| ≤ tol[i]; NaNs and infinities must match exactly.
void check_close(const Tensor& y, const Shape& shape, const std::vector<double>& ref,
                 const std::vector<double>& tol, const std::string& what) {
  INFO(what);
  REQUIRE(y.shape() == shape);
  const std::vector<double> got = values(y);
  REQUIRE(got.size() == ref.size());
  int64_t bad = -1;
  for (size_t i = 0; i < got.size() && bad < 0; ++i) {
    const double a = got[i], b = ref[i];
    const bool ok = std::isnan(b)   ? std::isnan(a)
                    : std::isinf(b) ? a == b
                                    : std::fabs(a - b) <= tol[i];
    if (!ok) bad = int64_t(i);
  }
  if (bad >= 0)
    FAIL_CHECK("element " << bad << ": got " << got[size_t(bad)] << ", expected "
                          << ref[size_t(bad)] << " (tolerance " << tol[size_t(bad)] << ")");
  else
    CHECK(true);
}

// The message of the cm::Error thrown by f ("" if none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const cm::Error& e) {
    return e.what();
  }
  return "";
}
#define CHECK_ERROR_MENTIONS(expr, text)                                                          \
  do {                                                                                            \
    const std::string _msg = error_of([&] { (void)(expr); });                                     \
    CHECK_MESSAGE(_msg.find(text) != std::string::npos, "message: '", _msg, "' should mention '", \
                  text, "'");                                                                     \
  } while (0)

// A reduction under test: the op, its f64 reference, and its error allowance in output ulps
// (measured against the larger of |result| and `scale` of the group).
struct RedCase {
  std::string name;
  std::function<Tensor(const Tensor&, const Shape&, bool)> op;
  std::function<double(const std::vector<double>&)> ref;
  double ulps;
  std::function<double(const std::vector<double>&)> scale;
};

double zero_scale(const std::vector<double>&) {
  return 0;
}
double max_abs(const std::vector<double>& g) {
  double m = 0;
  for (double v : g) m = std::max(m, std::fabs(v));
  return m;
}

std::vector<RedCase> reduction_cases() {
  // sum/mean accumulate in f64 and round once: within one ulp of the output dtype; amax/amin are
  // exact. var/std round the centred values and squares to the input dtype before the f64 sum (a
  // composite: up to ~3 ulps), and logsumexp rounds exp, the sum, the log and the final add
  // (2 ulps of max|x|, the shift it adds back).
  return {
      {"sum", [](const Tensor& x, const Shape& d, bool k) { return sum(x, d, k); }, ref_sum, 1,
       zero_scale},
      {"mean", [](const Tensor& x, const Shape& d, bool k) { return mean(x, d, k); }, ref_mean, 1,
       zero_scale},
      {"var0", [](const Tensor& x, const Shape& d, bool k) { return var(x, d, 0, k); },
       [](const std::vector<double>& g) { return ref_var(g, 0); }, 4, zero_scale},
      {"var1", [](const Tensor& x, const Shape& d, bool k) { return var(x, d, 1, k); },
       [](const std::vector<double>& g) { return ref_var(g, 1); }, 4, zero_scale},
      {"std0", [](const Tensor& x, const Shape& d, bool k) { return cm::std(x, d, 0, k); },
       [](const std::vector<double>& g) { return std::sqrt(ref_var(g, 0)); }, 4, zero_scale},
      {"std1", [](const Tensor& x, const Shape& d, bool k) { return cm::std(x, d, 1, k); },
       [](const std::vector<double>& g) { return std::sqrt(ref_var(g, 1)); }, 4, zero_scale},
      {"amax", [](const Tensor& x, const Shape& d, bool k) { return amax(x, d, k); }, ref_amax, 0,
       zero_scale},
      {"amin", [](const Tensor& x, const Shape& d, bool k) { return amin(x, d, k); }, ref_amin, 0,
       zero_scale},
      {"logsumexp", [](const Tensor& x, const Shape& d, bool k) { return logsumexp(x, d, k); },
       ref_logsumexp, 2, max_abs},
  };
}

const std::vector<Shape> kDimSets = {{}, {0}, {1}, {2}, {-1}, {0, 2}, {-1, 0}, {1, -3}, {0, 1, 2}};

// Names as std::string (doctest's INFO prints a const char* as a pointer).
std::string tname(DType t) {
  return dtype_name(t);
}
std::string lname(Layout l) {
  return layout_name(l);
}
std::string kname(bool keepdim) {
  return keepdim ? " keepdim" : "";
}

std::string dims_str(const Shape& d) {
  return d.empty() ? "all" : shape_str(d);
}

// n pseudo-random values, uniform in [-1.7, 2.3) (a nonzero mean, so sums grow), made on the host:
// faster than randn for the multi-million-element tests.
Tensor host_uniform(int64_t n, uint64_t seed, DType dtype) {
  std::vector<double> v(static_cast<size_t>(n));
  uint64_t z = seed;
  for (double& x : v) {
    z += 0x9e3779b97f4a7c15ull;  // splitmix64
    uint64_t r = z;
    r = (r ^ (r >> 30)) * 0xbf58476d1ce4e5b9ull;
    r = (r ^ (r >> 27)) * 0x94d049bb133111ebull;
    r ^= r >> 31;
    x = double(r >> 11) * 0x1.0p-53 * 4.0 - 1.7;
  }
  return from_vector<double>(v, {n}, {.dtype = dtype});
}

}  // namespace

TEST_SUITE("ops") {
  TEST_CASE("reductions match f64 references over dims, layouts and float dtypes") {
    const Shape s = {3, 4, 5};
    for (const RedCase& rc : reduction_cases())
      for (DType t : kFloatTypes)
        for (Layout layout : kLayouts) {
          const Tensor x = randn_input(s, 11, layout, t, 1.5, 0.25);
          for (const Shape& dims : kDimSets)
            for (bool keepdim : {false, true}) {
              const std::vector<int64_t> wd = wrapped(dims, 3);
              const Tensor y = rc.op(x, dims, keepdim);
              CHECK(y.dtype() == t);
              std::vector<double> ref, tol;
              for (const auto& g : groups(x, wd)) {
                const double r = rc.ref(g);
                ref.push_back(r);
                // f64 reassociation slack, plus the output rounding allowance
                tol.push_back(rc.ulps * ulp(std::max(std::fabs(r), rc.scale(g)), t) +
                              1e-13 * (abs_sum(g) + 1));
              }
              check_close(y, result_shape(s, wd, keepdim), ref, tol,
                          rc.name + " " + tname(t) + " " + lname(layout) + " dims " +
                              dims_str(dims) + kname(keepdim));
            }
        }
  }

  TEST_CASE("reductions of 0-d and 1-d tensors") {
    const Tensor s = scalar_tensor(2.5, {.dtype = DType::f64});
    CHECK(sum(s).dim() == 0);
    CHECK(sum(s).item<double>() == 2.5);
    CHECK(mean(s).item<double>() == 2.5);
    CHECK(amax(s).item<double>() == 2.5);
    // dim 0 (or -1) of a 0-d tensor names the scalar itself, as in PyTorch
    CHECK(sum(s, {0}).dim() == 0);
    CHECK(sum(s, {0}).item<double>() == 2.5);
    CHECK(sum(s, {-1}, true).dim() == 0);
    CHECK(mean(s, {0}).item<double>() == 2.5);
    CHECK(amin(s, {-1}).item<double>() == 2.5);
    CHECK(var(s, {0}, 0).item<double>() == 0);
    CHECK(logsumexp(s, {0}).item<double>() == 2.5);
    CHECK_THROWS_AS(sum(s, {1}), cm::Error);
    CHECK_THROWS_AS(sum(s, {0, -1}), cm::Error);
    Tensor sg = scalar_tensor(2.5, {.dtype = DType::f64});
    sg.set_requires_grad(true);
    CHECK_GRADCHECK(
        [](const std::vector<Tensor>& in) { return mul(sum(in[0], {0}), amax(in[0], {-1})); },
        {sg});
    const ValuesIndices mx = max(s, 0);
    CHECK(mx.values.dim() == 0);
    CHECK(mx.values.item<double>() == 2.5);
    CHECK(mx.indices.item<int64_t>() == 0);

    const Tensor v = from_vector<double>({1, 2, 3, 4}, {4});
    CHECK(sum(v, {0}).item<double>() == 10);
    CHECK(sum(v, {-1}, true).shape() == Shape{1});
    CHECK(var(v).item<double>() == doctest::Approx(5.0 / 3.0));
    CHECK(var(v, {}, 0).item<double>() == doctest::Approx(1.25));
    CHECK(cm::std(v, {}, 0).item<double>() == doctest::Approx(std::sqrt(1.25)));
    CHECK(logsumexp(v, {0}).item<double>() ==
          doctest::Approx(std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0) + std::exp(4.0))));
  }

  TEST_CASE("16-bit sums accumulate in higher precision") {
    // In f16, 2048 + 1 rounds back to 2048, and in bf16, 256 + 1 to 256: a 16-bit accumulator
    // stalls.
    CHECK(sum(ones({4096}, {.dtype = DType::f16})).item<double>() == 4096);
    CHECK(sum(ones({1024}, {.dtype = DType::bf16})).item<double>() == 1024);
    CHECK(mean(ones({4096}, {.dtype = DType::f16})).item<double>() == 1);
    // 0.1 + 4095·1e-3 (f16 values) sums exactly in f64; the result is that sum rounded once.
    for (DType t : {DType::f16, DType::bf16}) {
      Tensor x = full({4096}, 1e-3, {.dtype = t});
      const double v = values(x)[0];
      const double y = sum(x).item<double>();
      CHECK(std::fabs(y - 4096 * v) <= 0.5 * ulp(4096 * v, t));
    }
  }

  TEST_CASE("integer sums are i64 and exact") {
    const Shape s = {3, 4, 5};
    Generator gen(5);
    const Tensor base = randint(-1000, 1000, s, {.dtype = DType::i32}, &gen);
    const Tensor base_u8 = randint(0, 256, s, {.dtype = DType::u8}, &gen);
    for (DType t : {DType::i32, DType::i64, DType::u8, DType::b8}) {
      const Tensor src = t == DType::u8 ? base_u8 : t == DType::b8 ? gt(base, 0.0) : to(base, t);
      for (Layout layout : kLayouts) {
        const Tensor x = with_layout(src, layout);
        CHECK(x.dtype() == t);
        for (const Shape& dims : kDimSets)
          for (bool keepdim : {false, true}) {
            const std::vector<int64_t> wd = wrapped(dims, 3);
            const Tensor y = sum(x, dims, keepdim);
            CHECK(y.dtype() == DType::i64);
            std::vector<int64_t> ref;
            for (const auto& g : groups(x, wd)) ref.push_back(int64_t(ref_sum(g)));
            REQUIRE(y.shape() == result_shape(s, wd, keepdim));
            CHECK(y.to_vector<int64_t>() == ref);
          }
      }
    }
    // i32 values whose sum overflows i32
    const int32_t big = std::numeric_limits<int32_t>::max();
    const Tensor xb = from_vector<int32_t>({big, big, big, -5}, {4});
    CHECK(sum(xb).item<int64_t>() == 3 * int64_t(big) - 5);
    const Tensor bools = from_vector<bool>({true, false, true, true}, {2, 2});
    CHECK(sum(bools).item<int64_t>() == 3);
    CHECK(sum(bools, {0}).to_vector<int64_t>() == std::vector<int64_t>{2, 1});
    // integer amax/amin keep the dtype
    const Tensor xi = from_vector<int32_t>({3, -7, 9, 2}, {2, 2});
    CHECK(amax(xi).dtype() == DType::i32);
    CHECK(amax(xi, {1}).to_vector<int64_t>() == std::vector<int64_t>{3, 9});
    CHECK(amin(xi, {0}).to_vector<int64_t>() == std::vector<int64_t>{3, -7});
  }

  TEST_CASE("max/min with indices, argmax/argmin: first extremum, all dims and dtypes") {
    const Shape s = {3, 4, 5};
    for (DType t : {DType::f64, DType::f32, DType::f16, DType::bf16, DType::i32})
      for (Layout layout : kLayouts) {
        // small integers: many ties, so "first index" is exercised
        Tensor x = round(randn_input(s, 21, Layout::Contiguous, DType::f64, 2.0));
        x = with_layout(to(x, t), layout);
        for (int64_t dim : {0, 1, 2, -1, -2, -3})
          for (bool keepdim : {false, true})
            for (bool is_max : {true, false}) {
              INFO(tname(t), " ", lname(layout), " dim ", dim, kname(keepdim),
                   std::string(is_max ? " max" : " min"));
              const std::vector<int64_t> wd = wrapped({dim}, 3);
              const ValuesIndices r = is_max ? max(x, dim, keepdim) : min(x, dim, keepdim);
              const Tensor arg = is_max ? argmax(x, dim, keepdim) : argmin(x, dim, keepdim);
              std::vector<double> ref_v;
              std::vector<int64_t> ref_i;
              for (const auto& g : groups(x, wd)) {
                ref_v.push_back(is_max ? ref_amax(g) : ref_amin(g));
                ref_i.push_back(ref_argmax(g, is_max));
              }
              const Shape rs = result_shape(s, wd, keepdim);
              CHECK(r.values.dtype() == t);
              CHECK(r.indices.dtype() == DType::i64);
              REQUIRE(r.values.shape() == rs);
              REQUIRE(r.indices.shape() == rs);
              REQUIRE(arg.shape() == rs);
              CHECK(values(r.values) == ref_v);
              CHECK(r.indices.to_vector<int64_t>() == ref_i);
              CHECK(arg.to_vector<int64_t>() == ref_i);
            }
      }
  }

  TEST_CASE("NaN propagates through amax/amin and max/min") {
    for (DType t : {DType::f64, DType::f32, DType::f16, DType::bf16}) {
      INFO(tname(t));
      // row 0: NaN after the maximum; row 1: NaN first; row 2: no NaN
      const Tensor x =
          to(from_vector<double>({1, 5, kNaN, 7, kNaN, 2, 9, 3, 4, -1, 8, 8}, {3, 4}), t);
      for (bool is_max : {true, false}) {
        const ValuesIndices r = is_max ? max(x, 1) : min(x, 1);
        const std::vector<double> v = values(r.values);
        CHECK(std::isnan(v[0]));
        CHECK(std::isnan(v[1]));
        CHECK(v[2] == (is_max ? 8 : -1));
        CHECK(r.indices.to_vector<int64_t>() == std::vector<int64_t>{2, 0, is_max ? 2 : 1});
        const Tensor a = is_max ? amax(x, {1}) : amin(x, {1});
        const std::vector<double> av = values(a);
        CHECK(std::isnan(av[0]));
        CHECK(std::isnan(av[1]));
        CHECK(av[2] == (is_max ? 8 : -1));
        // along dim 0: columns 0 and 2 hold a NaN
        const std::vector<double> c = values(is_max ? amax(x, {0}) : amin(x, {0}));
        CHECK(std::isnan(c[0]));
        CHECK(!std::isnan(c[1]));
        CHECK(std::isnan(c[2]));
        CHECK(!std::isnan(c[3]));
        CHECK(std::isnan((is_max ? amax(x) : amin(x)).item<double>()));
        CHECK(std::isnan(logsumexp(x, {0, 1}).item<double>()));
      }
    }
  }

  TEST_CASE("logsumexp with infinite entries") {
    // rows: one -inf entry; all -inf; a +inf entry
    const Tensor x = from_vector<double>({-kInf, 0, 0, -kInf, -kInf, -kInf, 1, kInf, 2}, {3, 3});
    const std::vector<double> y = values(logsumexp(x, {1}));
    CHECK(y[0] == doctest::Approx(std::log(2.0)));
    CHECK(y[1] == -kInf);
    CHECK(y[2] == kInf);
    // large values stay finite
    const Tensor big = from_vector<double>({1e4, 1e4, -1e4}, {3});
    CHECK(logsumexp(big, {0}).item<double>() == doctest::Approx(1e4 + std::log(2.0)));
    const Tensor big32 = to(big, DType::f32);
    CHECK(logsumexp(big32, {0}).item<double>() == doctest::Approx(1e4 + std::log(2.0)));
  }

  TEST_CASE("large reductions (chunked parallel path) against Kahan sums") {
    // 3M elements: reductions with few outputs split the reduced range into fixed chunks.
    const int64_t n = 3'000'000;
    const Tensor x64 = host_uniform(n, 99, DType::f64);
    const Tensor x32 = to(x64, DType::f32);
    // Kahan sums over [begin, end) with a step, and the sum of |v|.
    auto kahan = [](const std::vector<double>& v, int64_t begin, int64_t end, int64_t step) {
      double s = 0, c = 0;
      for (int64_t i = begin; i < end; i += step) {
        const double y = v[size_t(i)] - c, t = s + y;
        c = (t - s) - y;
        s = t;
      }
      return s;
    };
    for (const Tensor& x : {x64, x32}) {
      const DType t = x.dtype();
      INFO(tname(t));
      const std::vector<double> v = values(x);
      const double ref = kahan(v, 0, n, 1), mag = abs_sum(v);
      // f64 accumulation in chunks: its error is far below 1e-14·Σ|x|; the result is then rounded
      // once
      CHECK(std::fabs(sum(x).item<double>() - ref) <= ulp(ref, t) + 1e-14 * mag);
      const double m = ref / double(n);
      CHECK(std::fabs(mean(x).item<double>() - m) <= ulp(m, t) + 1e-14 * mag / double(n));

      // three long rows, contiguous ([3, 1M], dim 1) and strided (a transposed [1M, 3])
      const std::vector<double> rows = values(sum(reshape(x, {3, n / 3}), {1}));
      const std::vector<double> cols = values(sum(transpose(reshape(x, {n / 3, 3}), 0, 1), {1}));
      for (int64_t k = 0; k < 3; ++k) {
        const double r_row = kahan(v, k * (n / 3), (k + 1) * (n / 3), 1), r_col = kahan(v, k, n, 3);
        CHECK(std::fabs(rows[size_t(k)] - r_row) <= ulp(r_row, t) + 1e-14 * mag);
        CHECK(std::fabs(cols[size_t(k)] - r_col) <= ulp(r_col, t) + 1e-14 * mag);
      }
    }
    // smaller (still chunked: over 2·32768 elements) for the rest
    const int64_t n2 = 600'000;
    const Tensor y64 = host_uniform(n2, 5, DType::f64);
    {  // variance: two-pass f64 reference
      const Tensor y32 = to(y64, DType::f32);
      const std::vector<double> v = values(y32);
      const double m = kahan(v, 0, n2, 1) / double(n2);
      std::vector<double> sq(v.size());
      for (size_t i = 0; i < v.size(); ++i) sq[i] = (v[i] - m) * (v[i] - m);
      const double vref = kahan(sq, 0, n2, 1) / double(n2 - 1);
      CHECK(std::fabs(var(y32).item<double>() - vref) <= 4 * ulp(vref, DType::f32));
    }
    {  // extremes planted in late chunks
      Tensor ym = to(y64, DType::f32);
      Tensor hi = narrow(ym, 0, 500'001, 1), lo = narrow(ym, 0, 590'000, 1);
      fill_(hi, 100.0);
      fill_(lo, -100.0);
      CHECK(amax(ym).item<double>() == 100);
      CHECK(amin(ym).item<double>() == -100);
      CHECK(argmax(ym, 0).item<int64_t>() == 500'001);
      CHECK(argmin(ym, 0).item<int64_t>() == 590'000);
      CHECK(values(amax(reshape(ym, {3, n2 / 3}), {1}))[2] == 100);
    }
    // 16-bit: accumulated in f64, rounded once (zero-mean values, so that the sum fits f16)
    for (DType t : {DType::f16, DType::bf16}) {
      INFO(tname(t));
      const Tensor x = to(sub(y64, 0.3), t);
      const std::vector<double> v = values(x);
      const double ref = kahan(v, 0, n2, 1);
      CHECK(std::fabs(sum(x).item<double>() - ref) <= ulp(ref, t));
      CHECK(std::fabs(mean(x).item<double>() - ref / double(n2)) <= ulp(ref / double(n2), t));
      CHECK(std::fabs(values(sum(reshape(x, {2, n2 / 2}), {1}))[1] - kahan(v, n2 / 2, n2, 1)) <=
            ulp(kahan(v, n2 / 2, n2, 1), t));
    }
  }

  TEST_CASE("reductions give bit-identical results with 1 and 2 OpenMP threads") {
    const int64_t n = 3'000'000;
    const Tensor x32 = host_uniform(n, 7, DType::f32);
    const Tensor x64 = to(x32, DType::f64);
    auto run = [&](int threads) {
      omp_set_num_threads(threads);
      return std::vector<std::vector<double>>{
          values(sum(x32)),
          values(mean(x32)),
          values(amax(x32)),
          values(sum(x64)),
          values(sum(transpose(reshape(x32, {n / 3, 3}), 0, 1), {1})),  // strided chunked rows
          values(sum(reshape(x64, {3, n / 3}), {1})),                   // contiguous chunked rows
          values(mean(reshape(x32, {60, n / 60}), {1})),                // parallel over outputs
          values(amin(reshape(x32, {2, n / 2}), {1})),
      };
    };
    const int saved = omp_get_max_threads();
    const auto one = run(1);
    const auto two = run(2);
    omp_set_num_threads(saved);
    REQUIRE(one.size() == two.size());
    for (size_t i = 0; i < one.size(); ++i) {
      INFO("result ", i);
      REQUIRE(one[i].size() == two[i].size());
      CHECK(std::memcmp(one[i].data(), two[i].data(), one[i].size() * sizeof(double)) == 0);
    }
  }

  TEST_CASE("channels-last column reductions accumulate each output in reduced-index order") {
    // x is [N, C, H, W] stored as [N, H, W, C] (C fastest): summing over N, H, W (a bias gradient)
    // or H, W (a FiLM gradient) takes the column path. Oracle: the f64 sum of each output's values
    // added one by one in the order n, h, w, rounded once to f32 — the same bits, on any thread
    // count.
    const int64_t N = 3, C = 40, H = 5, W = 7;
    const Tensor nhwc = reshape(host_uniform(N * H * W * C, 11, DType::f32), {N, H, W, C});
    const Tensor x = permute(nhwc, {0, 3, 1, 2});
    const std::vector<double> xv = values(nhwc);  // index ((n * H + h) * W + w) * C + c
    auto at = [&](int64_t n, int64_t c, int64_t h, int64_t w) {
      return xv[size_t(((n * H + h) * W + w) * C + c)];
    };
    std::vector<float> bias(C), bias_max(C), film(N * C), film_mean(N * C);
    for (int64_t c = 0; c < C; ++c) {
      double acc = 0, mx = -kInf;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w) acc += at(n, c, h, w), mx = std::max(mx, at(n, c, h, w));
      bias[size_t(c)] = float(acc);
      bias_max[size_t(c)] = float(mx);
    }
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) {
        double acc = 0;
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w) acc += at(n, c, h, w);
        film[size_t(n * C + c)] = float(acc);
        film_mean[size_t(n * C + c)] = float(acc / double(H * W));
      }
    auto as_f32 = [](const std::vector<float>& v) {
      return std::vector<double>(v.begin(), v.end());
    };
    const int saved = omp_get_max_threads();
    for (int threads : {1, 2}) {
      omp_set_num_threads(threads);
      INFO("threads ", threads);
      CHECK(values(sum(x, {0, 2, 3})) == as_f32(bias));
      CHECK(values(amax(x, {0, 2, 3})) == as_f32(bias_max));
      CHECK(values(sum(x, {2, 3})) == as_f32(film));
      CHECK(values(mean(x, {2, 3}, true)) == as_f32(film_mean));
    }
    omp_set_num_threads(saved);
  }

  TEST_CASE("reductions over empty dims") {
    const Tensor x = zeros({3, 0, 2}, {.dtype = DType::f64});
    const Tensor s = sum(x, {1});
    CHECK(s.shape() == Shape{3, 2});
    CHECK(values(s) == std::vector<double>(6, 0.0));
    CHECK(sum(x, {1}, true).shape() == Shape{3, 1, 2});
    CHECK(sum(x).dim() == 0);
    CHECK(sum(x).item<double>() == 0);
    CHECK(sum(zeros({0, 4}, {.dtype = DType::i32}), {0}).to_vector<int64_t>() ==
          std::vector<int64_t>(4, 0));
    // reducing a non-empty dim of an empty tensor gives an empty result
    CHECK(sum(x, {0}).shape() == Shape{0, 2});
    CHECK(amax(x, {0}).shape() == Shape{0, 2});
    // the extremum of nothing is undefined
    CHECK_THROWS_AS(amax(x, {1}), cm::Error);
    CHECK_ERROR_MENTIONS(amax(x, {1}), "amax");
    CHECK_ERROR_MENTIONS(amin(x), "amin");
    CHECK_ERROR_MENTIONS(max(x, 1), "max");
    CHECK_ERROR_MENTIONS(argmin(x, -2), "min");
  }

  TEST_CASE("reduction errors: out-of-range and repeated dims") {
    const Tensor x = randn_input({2, 3, 4}, 1);
    CHECK_THROWS_AS(sum(x, {3}), cm::Error);
    CHECK_ERROR_MENTIONS(sum(x, {3}), "sum");
    CHECK_ERROR_MENTIONS(sum(x, {-4}), "sum");
    CHECK_ERROR_MENTIONS(mean(x, {0, 5}), "mean");
    CHECK_ERROR_MENTIONS(var(x, {7}), "var");
    CHECK_ERROR_MENTIONS(amax(x, {3}), "amax");
    CHECK_ERROR_MENTIONS(amin(x, {-5}), "amin");
    CHECK_ERROR_MENTIONS(logsumexp(x, {4}), "logsumexp");
    CHECK_ERROR_MENTIONS(max(x, 3), "max");
    CHECK_ERROR_MENTIONS(min(x, -4), "min");
    CHECK_THROWS_AS(argmax(x, 3), cm::Error);
    CHECK_ERROR_MENTIONS(sum(x, {0, 0}), "repeated");
    CHECK_ERROR_MENTIONS(sum(x, {1, -2}), "repeated");
    CHECK_ERROR_MENTIONS(mean(x, {2, -1}), "mean");
    CHECK_THROWS_AS(amax(x, {0, 2, 0}), cm::Error);
    CHECK_THROWS_AS(logsumexp(x, {-1, 2}), cm::Error);
  }

  TEST_CASE("gradcheck: sum, mean, var, std") {
    const std::vector<Shape> dim_sets = {{}, {1}, {0, 2}, {-1}};
    for (Layout layout : kLayouts) {
      const Tensor x = grad_input({2, 3, 4}, 31, layout);
      for (const Shape& dims : dim_sets)
        for (bool keepdim : {false, true}) {
          INFO(lname(layout), " dims ", dims_str(dims), kname(keepdim));
          CHECK_GRADCHECK([&](const std::vector<Tensor>& in) { return sum(in[0], dims, keepdim); },
                          {x});
          CHECK_GRADCHECK([&](const std::vector<Tensor>& in) { return mean(in[0], dims, keepdim); },
                          {x});
          for (int64_t c : {0, 1}) {
            INFO("correction ", c);
            CHECK_GRADCHECK(
                [&](const std::vector<Tensor>& in) { return var(in[0], dims, c, keepdim); }, {x});
            CHECK_GRADCHECK(
                [&](const std::vector<Tensor>& in) { return cm::std(in[0], dims, c, keepdim); },
                {x});
          }
        }
    }
  }

  TEST_CASE("gradcheck: amax, amin, max/min with indices, logsumexp") {
    for (Layout layout : kLayouts) {
      const Tensor x = grad_input({2, 3, 4}, 41, layout);  // distinct values: no ties
      for (const Shape& dims : std::vector<Shape>{{}, {1}, {-1, 0}})
        for (bool keepdim : {false, true}) {
          INFO(lname(layout), " dims ", dims_str(dims), kname(keepdim));
          CHECK_GRADCHECK([&](const std::vector<Tensor>& in) { return amax(in[0], dims, keepdim); },
                          {x});
          CHECK_GRADCHECK([&](const std::vector<Tensor>& in) { return amin(in[0], dims, keepdim); },
                          {x});
          CHECK_GRADCHECK(
              [&](const std::vector<Tensor>& in) { return logsumexp(in[0], dims, keepdim); }, {x});
        }
      for (int64_t dim : {0, 1, -1})
        for (bool keepdim : {false, true}) {
          INFO(lname(layout), " dim ", dim, kname(keepdim));
          CHECK_GRADCHECK(
              [&](const std::vector<Tensor>& in) { return max(in[0], dim, keepdim).values; }, {x});
          CHECK_GRADCHECK(
              [&](const std::vector<Tensor>& in) { return min(in[0], dim, keepdim).values; }, {x});
        }
    }
  }

  TEST_CASE("gradcheck: logsumexp with -inf entries") {
    Tensor base = randn_input({3, 4}, 51);
    {
      NoGradGuard ng;
      std::vector<double> v = values(base);
      v[1] = v[6] = v[7] = -kInf;  // rows 0 and 1 keep finite entries
      base = from_vector<double>(v, {3, 4});
    }
    for (Layout layout : kLayouts) {
      Tensor x = with_layout(base, layout);
      x.set_requires_grad(true);
      for (const Shape& dims : std::vector<Shape>{{1}, {0}, {}}) {
        INFO(lname(layout), " dims ", dims_str(dims));
        CHECK_GRADCHECK([&](const std::vector<Tensor>& in) { return logsumexp(in[0], dims); }, {x});
      }
      // the gradient is softmax along the reduced dim, zero at -inf
      Tensor y = sum(logsumexp(x, {1}));
      y.backward();
      const std::vector<double> g = values(x.grad()), v = values(base);
      for (int64_t r = 0; r < 3; ++r) {
        std::vector<double> row(v.begin() + 4 * r, v.begin() + 4 * r + 4);
        const double lse = ref_logsumexp(row);
        for (int64_t c = 0; c < 4; ++c)
          CHECK(g[size_t(4 * r + c)] ==
                doctest::Approx(std::exp(row[size_t(c)] - lse)).epsilon(1e-12));
      }
      CHECK(g[1] == 0);
      CHECK(g[6] == 0);
    }
  }

  TEST_CASE("amax/amin share the gradient evenly among tied extrema") {
    const std::vector<double> v = {1, 3, 3, 2, 3, 0};
    for (Layout layout : kLayouts) {
      INFO(lname(layout));
      auto input = [&] {
        Tensor x = with_layout(from_vector<double>(v, {2, 3}), layout);
        x.set_requires_grad(true);
        return x;
      };
      {  // all dims: three tied maxima
        Tensor x = input();
        amax(x).backward();
        const std::vector<double> g = values(x.grad());
        const std::vector<double> want = {0, 1.0 / 3, 1.0 / 3, 0, 1.0 / 3, 0};
        for (size_t i = 0; i < 6; ++i) CHECK(g[i] == doctest::Approx(want[i]).epsilon(1e-15));
      }
      {  // along dim 1 with upstream gradient (2, 5): row 0 has two tied maxima
        Tensor x = input();
        amax(x, {1}).backward(from_vector<double>({2, 5}, {2}));
        CHECK(values(x.grad()) == std::vector<double>{0, 1, 1, 0, 5, 0});
      }
      {  // amin along dim 0: column 1 is a tie (3, 3)
        Tensor x = input();
        amin(x, {0}, true).backward(from_vector<double>({1, 4, 1}, {1, 3}));
        CHECK(values(x.grad()) == std::vector<double>{1, 2, 0, 0, 2, 1});
      }
      {  // max with indices sends the whole gradient to the first maximum
        Tensor x = input();
        max(x, 1).values.backward(from_vector<double>({2, 5}, {2}));
        CHECK(values(x.grad()) == std::vector<double>{0, 2, 0, 0, 5, 0});
      }
      {
        Tensor x = input();
        min(x, 0).values.backward(from_vector<double>({1, 4, 1}, {3}));
        CHECK(values(x.grad()) == std::vector<double>{1, 4, 0, 0, 0, 1});
      }
    }
  }

}  // TEST_SUITE
