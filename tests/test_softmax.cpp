// softmax and log_softmax: every dim (negative too) of 3-D inputs in all layouts and float dtypes
// against an f64 reference, rows summing to 1, stability with large and infinite entries,
// gradcheck.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "helpers.h"

using namespace cm;
using cm::test::grad_input;
using cm::test::kLayouts;
using cm::test::Layout;
using cm::test::randn_input;
using cm::test::values;
using cm::test::with_layout;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
const std::vector<DType> kFloatTypes = {DType::f64, DType::f32, DType::f16, DType::bf16};

// Names as std::string (doctest's INFO prints a const char* as a pointer).
std::string tname(DType t) {
  return dtype_name(t);
}
std::string lname(Layout l) {
  return cm::test::layout_name(l);
}
std::string fname(bool log) {
  return log ? "log_softmax" : "softmax";
}

// The spacing of dtype t's values near v (one unit in the last place).
double ulp(double v, DType t) {
  int mant = 52, emin = -1022;
  if (t == DType::f32) mant = 23, emin = -126;
  if (t == DType::f16) mant = 10, emin = -14;
  if (t == DType::bf16) mant = 7, emin = -126;
  const int e = (v == 0 || !std::isfinite(v)) ? emin : std::max(std::ilogb(v), emin);
  return std::ldexp(1.0, e - mant);
}

// softmax / log_softmax of x's values along `dim` (wrapped), in f64, row-major like x.
std::vector<double> ref_softmax(const Tensor& x, int64_t dim, bool log) {
  const std::vector<double> v = values(x);
  const Shape& s = x.shape();
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= s[size_t(d)];
  for (int64_t d = dim + 1; d < int64_t(s.size()); ++d) inner *= s[size_t(d)];
  const int64_t n = s[size_t(dim)];
  std::vector<double> out(v.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      auto at = [&](int64_t k) { return size_t((o * n + k) * inner + i); };
      double m = -kInf;
      for (int64_t k = 0; k < n; ++k) m = std::max(m, v[at(k)]);
      double sum = 0;
      for (int64_t k = 0; k < n; ++k) sum += std::exp(v[at(k)] - m);
      for (int64_t k = 0; k < n; ++k)
        out[at(k)] = log ? v[at(k)] - m - std::log(sum) : std::exp(v[at(k)] - m) / sum;
    }
  return out;
}

// y against ref: one ulp of y's dtype (the kernel works in f64 and rounds once) plus f64 slack;
// infinities must match exactly.
void check_softmax(const Tensor& y, const std::vector<double>& ref, const std::string& what) {
  INFO(what);
  const std::vector<double> got = values(y);
  REQUIRE(got.size() == ref.size());
  int64_t bad = -1;
  for (size_t i = 0; i < got.size() && bad < 0; ++i) {
    const double tol = ulp(ref[i], y.dtype()) + 1e-13 * std::fabs(ref[i]) + 1e-15;
    const bool ok = std::isinf(ref[i]) ? got[i] == ref[i] : std::fabs(got[i] - ref[i]) <= tol;
    if (!ok) bad = int64_t(i);
  }
  if (bad >= 0)
    FAIL_CHECK("element " << bad << ": got " << got[size_t(bad)] << ", expected "
                          << ref[size_t(bad)]);
  else
    CHECK(true);
}

// Sums of y's values along dim (wrapped), in f64.
std::vector<double> sums_along(const Tensor& y, int64_t dim, bool exp_first) {
  const std::vector<double> v = values(y);
  const Shape& s = y.shape();
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= s[size_t(d)];
  for (int64_t d = dim + 1; d < int64_t(s.size()); ++d) inner *= s[size_t(d)];
  const int64_t n = s[size_t(dim)];
  std::vector<double> out;
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      double sum = 0;
      for (int64_t k = 0; k < n; ++k) {
        const double e = v[size_t((o * n + k) * inner + i)];
        sum += exp_first ? std::exp(e) : e;
      }
      out.push_back(sum);
    }
  return out;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const cm::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_SUITE("ops") {
  TEST_CASE("softmax and log_softmax match f64 references along every dim, layout and dtype") {
    const Shape s = {3, 4, 5};
    for (DType t : kFloatTypes)
      for (Layout layout : kLayouts) {
        const Tensor x = randn_input(s, 3, layout, t, 2.0);
        for (int64_t dim : {0, 1, 2, -1, -2, -3})
          for (bool log : {false, true}) {
            const std::string what =
                fname(log) + " " + tname(t) + " " + lname(layout) + " dim " + std::to_string(dim);
            const Tensor y = log ? log_softmax(x, dim) : softmax(x, dim);
            CHECK(y.dtype() == t);
            CHECK(y.shape() == s);
            const int64_t d = dim < 0 ? dim + 3 : dim;
            check_softmax(y, ref_softmax(x, d, log), what);
            // each row sums to 1: every element is rounded once, relative error ≤ half an ulp
            INFO(what);
            for (double r : sums_along(y, d, log)) CHECK(std::fabs(r - 1) <= ulp(1, t) + 1e-13);
          }
      }
  }

  TEST_CASE("softmax is stable with large values and -inf entries") {
    for (DType t : kFloatTypes)
      for (Layout layout : kLayouts) {
        INFO(tname(t), " ", lname(layout));
        // values near ±1e4: exp would overflow without the max shift
        Tensor big = randn_input({2, 3, 4}, 8, layout, t, 3.0, 1e4);
        Tensor neg = randn_input({2, 3, 4}, 9, layout, t, 3.0, -1e4);
        for (const Tensor& x : {big, neg})
          for (bool log : {false, true}) {
            const Tensor y = log ? log_softmax(x, -1) : softmax(x, -1);
            check_softmax(y, ref_softmax(x, 2, log), fname(log) + " large");
            for (double v : values(y)) CHECK(std::isfinite(v));
          }
        // -inf entries: probability 0, log-probability -inf; the rest as if they were absent
        std::vector<double> v = values(randn_input({3, 4}, 10));
        v[0] = v[5] = v[6] = -kInf;
        const Tensor x = with_layout(to(from_vector<double>(v, {3, 4}), t), layout);
        for (int64_t dim : {0, 1})
          for (bool log : {false, true}) {
            const Tensor y = log ? log_softmax(x, dim) : softmax(x, dim);
            check_softmax(y, ref_softmax(x, dim, log),
                          fname(log) + " -inf dim " + std::to_string(dim));
          }
        const std::vector<double> p = values(softmax(x, 1));
        CHECK(p[0] == 0);
        CHECK(p[5] == 0);
        CHECK(p[6] == 0);
        // row 1 keeps two finite entries: they share the mass as a 2-way softmax
        const double a = values(x)[4], b = values(x)[7];
        CHECK(std::fabs(p[4] - 1 / (1 + std::exp(b - a))) <= ulp(p[4], t) + 1e-15);
      }
  }

  TEST_CASE("softmax of a row of -inf is NaN, as torch.softmax") {
    const Tensor x = from_vector<double>({-kInf, -kInf, -kInf, 1, 2, 3}, {2, 3});
    const std::vector<double> p = values(softmax(x, 1)), lp = values(log_softmax(x, 1));
    for (int k = 0; k < 3; ++k) {
      CHECK(std::isnan(p[size_t(k)]));
      CHECK(std::isnan(lp[size_t(k)]));
      CHECK(std::isfinite(p[size_t(k + 3)]));
    }
  }

  TEST_CASE("softmax closed forms, 0-d and 1-d inputs") {
    // equal logits: uniform; log_softmax is -log(n)
    const Tensor u = zeros({2, 4}, {.dtype = DType::f64});
    for (double v : values(softmax(u, 1))) CHECK(v == 0.25);
    for (double v : values(log_softmax(u, 0)))
      CHECK(v == doctest::Approx(-std::log(2.0)).epsilon(1e-15));
    // two logits: the logistic function
    const Tensor x = from_vector<double>({0.3, -1.2}, {2});
    CHECK(values(softmax(x, 0))[0] == doctest::Approx(1 / (1 + std::exp(-1.5))).epsilon(1e-15));
    // a 0-d input is a one-element distribution
    CHECK(softmax(scalar_tensor(3.0, {.dtype = DType::f64}), 0).item<double>() == 1);
    CHECK(log_softmax(scalar_tensor(3.0, {.dtype = DType::f64}), 0).item<double>() == 0);
  }

  TEST_CASE("softmax errors name the op") {
    const Tensor x = randn_input({2, 3}, 1);
    CHECK_THROWS_AS(softmax(x, 2), cm::Error);
    CHECK(error_of([&] { softmax(x, 2); }).find("softmax") != std::string::npos);
    CHECK(error_of([&] { log_softmax(x, -3); }).find("log_softmax") != std::string::npos);
  }

  TEST_CASE("gradcheck: softmax and log_softmax, contiguous and non-contiguous") {
    for (Layout layout : kLayouts) {
      const Tensor x = grad_input({2, 3, 4}, 12, layout);
      for (int64_t dim : {0, 1, 2, -1, -2})
        for (bool log : {false, true}) {
          INFO(fname(log), " ", lname(layout), " dim ", dim);
          CHECK_GRADCHECK(
              [&](const std::vector<Tensor>& in) {
                return log ? log_softmax(in[0], dim) : softmax(in[0], dim);
              },
              {x});
        }
    }
    // through a non-contiguous (expanded, transposed) view of the input
    const Tensor base = grad_input({3, 4}, 13);
    CHECK_GRADCHECK(
        [](const std::vector<Tensor>& in) {
          return softmax(transpose(expand(in[0], {2, 3, 4}), 0, 2), 1);
        },
        {base});
    // -inf entries get zero gradient; the others as usual
    std::vector<double> v = values(randn_input({2, 4}, 14));
    v[1] = v[6] = -kInf;
    Tensor xi = with_layout(from_vector<double>(v, {2, 4}), Layout::Transposed);
    xi.set_requires_grad(true);
    CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return softmax(in[0], 1); }, {xi});
    softmax(xi, 1).backward(from_vector<double>({1, 2, 3, 4, 5, 6, 7, 8}, {2, 4}));
    CHECK(values(xi.grad())[1] == 0);
    CHECK(values(xi.grad())[6] == 0);
  }

  TEST_CASE("softmax gradients match the closed form y·(g − Σ g·y)") {
    for (Layout layout : kLayouts) {
      INFO(lname(layout));
      Tensor x = grad_input({3, 5}, 15, layout);
      const Tensor g = randn_input({3, 5}, 16);
      softmax(x, 1).backward(g);
      const std::vector<double> y = ref_softmax(x, 1, false), gv = values(g), gx = values(x.grad());
      Tensor x2 = grad_input({3, 5}, 15, layout);
      log_softmax(x2, 1).backward(g);
      const std::vector<double> gx2 = values(x2.grad());
      for (int64_t r = 0; r < 3; ++r) {
        double dot = 0, gs = 0;
        for (int64_t k = 0; k < 5; ++k) {
          dot += gv[size_t(5 * r + k)] * y[size_t(5 * r + k)];
          gs += gv[size_t(5 * r + k)];
        }
        for (int64_t k = 0; k < 5; ++k) {
          const size_t i = size_t(5 * r + k);
          CHECK(gx[i] == doctest::Approx(y[i] * (gv[i] - dot)).epsilon(1e-12));
          CHECK(gx2[i] == doctest::Approx(gv[i] - y[i] * gs).epsilon(1e-12));
        }
      }
    }
  }

}  // TEST_SUITE
