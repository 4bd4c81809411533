// group_norm: forward against an f64 reference loop (shapes with and without spatial dims, groups
// 1 / between / C, every layout, with and without weight and bias, several eps), 16-bit dtypes,
// numerical stability with large means, gradcheck for x, weight and bias, parameter gradients
// without dx, and the error paths.
#include <doctest/doctest.h>

#include <cmath>
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

std::string tname(DType t) {
  return dtype_name(t);
}
std::string lname(Layout l) {
  return cm::test::layout_name(l);
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

// Group normalisation of x's values (row-major, shape s) in long double, two-pass per group.
// w and b may be empty (no affine transform).
std::vector<double> ref_group_norm(const std::vector<double>& x, const Shape& s, int64_t G,
                                   const std::vector<double>& w, const std::vector<double>& b,
                                   double eps) {
  const int64_t N = s[0], C = s[1];
  int64_t HW = 1;
  for (size_t d = 2; d < s.size(); ++d) HW *= s[d];
  const int64_t M = C / G * HW;
  std::vector<double> y(x.size());
  for (int64_t ng = 0; ng < N * G; ++ng) {
    const size_t base = size_t(ng * M);
    long double mu = 0, var = 0;
    for (int64_t i = 0; i < M; ++i) mu += x[base + size_t(i)];
    mu /= M;
    for (int64_t i = 0; i < M; ++i) var += (x[base + size_t(i)] - mu) * (x[base + size_t(i)] - mu);
    var /= M;
    const long double r = 1 / std::sqrt(var + eps);
    for (int64_t i = 0; i < M; ++i) {
      const int64_t c = (ng % G) * (C / G) + i / HW;
      long double v = (x[base + size_t(i)] - mu) * r;
      if (!w.empty()) v *= w[size_t(c)];
      if (!b.empty()) v += b[size_t(c)];
      y[base + size_t(i)] = double(v);
    }
  }
  return y;
}

// |got − ref| ≤ ulps·ulp(ref) + abs everywhere; reports the first mismatch.
void check_values(const Tensor& got, const std::vector<double>& ref, double ulps, double abs,
                  const std::string& what) {
  INFO(what);
  const std::vector<double> g = values(got);
  REQUIRE(g.size() == ref.size());
  for (size_t i = 0; i < g.size(); ++i) {
    const double tol = ulps * ulp(ref[i], got.dtype()) + abs;
    if (!(std::fabs(g[i] - ref[i]) <= tol)) {
      FAIL_CHECK("element " << i << ": got " << g[i] << ", reference " << ref[i] << " (tol " << tol
                            << ")");
      return;
    }
  }
}

struct GnCase {
  Shape shape;
  int64_t groups;
};
const std::vector<GnCase> kCases = {
    {{2, 6, 3, 4}, 1}, {{2, 6, 3, 4}, 2}, {{2, 6, 3, 4}, 3}, {{2, 6, 3, 4}, 6},    {{3, 4}, 1},
    {{3, 4}, 2},       {{3, 4}, 4},       {{2, 4, 5}, 2},    {{1, 8, 2, 2, 3}, 4},
};

// Runs group_norm on a (dtype, layout) version of the case and checks it against the reference
// computed from the same (rounded) input values.
void check_forward(const GnCase& gc, DType dt, Layout layout, bool affine, double eps, double ulps,
                   double shift = 0, double scale = 1.5) {
  const std::string what = shape_str(gc.shape) + " groups " + std::to_string(gc.groups) + " " +
                           tname(dt) + " " + lname(layout) + (affine ? " affine" : "") + " eps " +
                           std::to_string(eps);
  const int64_t C = gc.shape[1];
  Tensor x = randn_input(gc.shape, 11, layout, dt, scale, shift);
  Tensor w = affine ? randn_input({C}, 12, Layout::Strided, dt, 0.5, 1.0) : Tensor();
  Tensor b = affine ? randn_input({C}, 13, Layout::Contiguous, dt, 0.5) : Tensor();
  Tensor y = group_norm(x, gc.groups, w, b, eps);
  CHECK(y.dtype() == dt);
  CHECK(y.shape() == gc.shape);
  const std::vector<double> ref =
      ref_group_norm(values(x), gc.shape, gc.groups, affine ? values(w) : std::vector<double>{},
                     affine ? values(b) : std::vector<double>{}, eps);
  check_values(y, ref, ulps, dt == DType::f64 ? 1e-14 : 0, what);
}

}  // namespace

TEST_SUITE("nn") {
  TEST_CASE(
      "group_norm: f64 forward matches the reference in every layout, shape and group count") {
    for (const GnCase& gc : kCases)
      for (Layout l : kLayouts)
        for (bool affine : {false, true})
          for (double eps : {1e-5, 0.1}) check_forward(gc, DType::f64, l, affine, eps, 64);
  }

  TEST_CASE("group_norm: f32, f16 and bf16 round the exact result once") {
    // The CPU kernel computes in f64 and rounds the output once: within one ulp of the dtype.
    for (DType dt : {DType::f32, DType::f16, DType::bf16})
      for (const GnCase& gc : kCases)
        for (bool affine : {false, true})
          check_forward(gc, dt, Layout::Transposed, affine, 1e-5, 1);
  }

  TEST_CASE(
      "group_norm: per-group outputs have mean 0 and variance 1/(1 + eps/var) without affine") {
    // A closed form independent of the reference loop.
    Tensor x = randn_input({2, 6, 5, 3}, 3, Layout::Contiguous, DType::f64, 3.0, -2.0);
    const double eps = 0.01;
    Tensor y = group_norm(x, 3, {}, {}, eps);
    const std::vector<double> xv = values(x), yv = values(y);
    const int64_t M = 2 * 15;
    for (int64_t ng = 0; ng < 6; ++ng) {
      double mx = 0, vx = 0, my = 0, vy = 0;
      for (int64_t i = 0; i < M; ++i) mx += xv[size_t(ng * M + i)] / M;
      for (int64_t i = 0; i < M; ++i) my += yv[size_t(ng * M + i)] / M;
      for (int64_t i = 0; i < M; ++i) vx += std::pow(xv[size_t(ng * M + i)] - mx, 2) / M;
      for (int64_t i = 0; i < M; ++i) vy += std::pow(yv[size_t(ng * M + i)] - my, 2) / M;
      CHECK(std::fabs(my) < 1e-14);
      CHECK(vy == doctest::Approx(vx / (vx + eps)).epsilon(1e-12));
    }
  }

  TEST_CASE("group_norm: large means with a small spread stay accurate (two-pass statistics)") {
    // E[x²] − E[x]² would cancel catastrophically here: for f64 at 1e6 ± 1e-2 it loses every
    // digit of the variance; for f32 at 1e4 ± 0.1 likewise in f32 arithmetic.
    const GnCase gc{{2, 4, 6, 5}, 2};
    for (Layout l : kLayouts) {
      // x − mean is exact to ~ulp(1e6) = 1.2e-10 relative to a spread of 1e-2: 1e-8 absolute.
      Tensor x = randn_input(gc.shape, 21, l, DType::f64, 1e-2, 1e6);
      Tensor y = group_norm(x, gc.groups, {}, {}, 1e-12);
      check_values(y, ref_group_norm(values(x), gc.shape, gc.groups, {}, {}, 1e-12), 0, 1e-7,
                   "f64 around 1e6 " + lname(l));
    }
    check_forward(gc, DType::f32, Layout::Contiguous, true, 1e-8, 1, 1e4, 0.1);
    check_forward(gc, DType::f32, Layout::Transposed, false, 1e-8, 1, -3e4, 0.5);
  }

  TEST_CASE("group_norm: gradcheck for x, weight and bias in every layout") {
    for (Layout l : kLayouts) {
      INFO(lname(l));
      Tensor x = grad_input({2, 4, 3}, 31, l, 1.5, 0.3);
      Tensor w = grad_input({4}, 32, Layout::Contiguous, 0.5, 1.0);
      Tensor b = grad_input({4}, 33, Layout::Strided);
      CHECK_GRADCHECK(
          [](const std::vector<Tensor>& v) { return group_norm(v[0], 2, v[1], v[2], 1e-3); },
          {x, w, b});
    }
    // no spatial dims, groups = C, and groups = 1
    Tensor x2 = grad_input({3, 4}, 34, Layout::Transposed);
    Tensor w2 = grad_input({4}, 35, Layout::Contiguous, 0.5, 1.0);
    Tensor b2 = grad_input({4}, 36);
    CHECK_GRADCHECK([](const std::vector<Tensor>& v) { return group_norm(v[0], 2, v[1], v[2]); },
                    {x2, w2, b2});
    Tensor x3 = grad_input({2, 3, 2, 2}, 37);
    CHECK_GRADCHECK([](const std::vector<Tensor>& v) { return group_norm(v[0], 3); }, {x3});
    CHECK_GRADCHECK([](const std::vector<Tensor>& v) { return group_norm(v[0], 1, v[1]); },
                    {grad_input({2, 3, 4}, 38), grad_input({3}, 39)});
    // x needs no gradient: only the parameters' columns of the Jacobian
    Tensor xc = randn_input({2, 4, 3}, 40);
    CHECK_GRADCHECK([xc](const std::vector<Tensor>& v) { return group_norm(xc, 2, v[0], v[1]); },
                    {grad_input({4}, 41), grad_input({4}, 42)});
    // a large mean with a small spread
    CHECK_GRADCHECK(
        [](const std::vector<Tensor>& v) { return group_norm(v[0], 2, v[1]); },
        {grad_input({2, 4, 3}, 43, Layout::Contiguous, 0.5, 100.0), grad_input({4}, 44)});
  }

  TEST_CASE(
      "group_norm: channels-last inputs give channels-last outputs, equal to the contiguous op") {
    struct Case {
      Shape s;
      int64_t groups;
    };
    for (const Case& c : std::vector<Case>{
             {{3, 8, 5, 4}, 4}, {{2, 6, 3, 7}, 6}, {{1, 4, 2, 2}, 1}, {{2, 64, 7, 7}, 32}})
      for (DType dt : {DType::f64, DType::f32}) {
        const std::string what = shape_str(c.s) + " " + dtype_name(dt);
        const Tensor x0 = randn_input(c.s, 60, Layout::Contiguous, dt, 1.5, 0.4);
        const Tensor dy0 = randn_input(c.s, 61, Layout::Contiguous, dt);
        const Tensor w0 = randn_input({c.s[1]}, 62, Layout::Contiguous, dt);
        const Tensor b0 = randn_input({c.s[1]}, 63, Layout::Contiguous, dt);
        std::vector<std::vector<double>> got[2];
        for (int cl = 0; cl < 2; ++cl) {
          const Layout l = cl ? Layout::ChannelsLast : Layout::Contiguous;
          Tensor x = with_layout(x0, l), w = clone(w0), b = clone(b0);
          for (Tensor* t : {&x, &w, &b}) t->set_requires_grad(true);
          const Tensor y = group_norm(x, c.groups, w, b, 1e-5);
          // the CPU keeps channels-last (its kernels take it); other backends give contiguous
          if (cl && backend_of(x).group_norm_takes_channels_last())
            CHECK_MESSAGE(memory_format_of(y) == MemoryFormat::ChannelsLast, what);
          y.backward(with_layout(dy0, l));
          got[cl] = {values(y), values(x.grad()), values(w.grad()), values(b.grad())};
        }
        const char* names[4] = {"y", "dx", "dw", "db"};
        for (int k = 0; k < 4; ++k) {
          double worst = 0, scale = 1;
          for (size_t i = 0; i < got[0][size_t(k)].size(); ++i) {
            worst = std::max(worst, std::fabs(got[0][size_t(k)][i] - got[1][size_t(k)][i]));
            scale = std::max(scale, std::fabs(got[0][size_t(k)][i]));
          }
          // The same f64 statistics summed in another order: equal up to f64 rounding, and f32
          // outputs round the same values (a rare last-bit tie aside).
          CHECK_MESSAGE(worst <= (dt == DType::f64 ? 1e-13 : 1e-6) * scale, what, " ", names[k],
                        ": channels-last differs from contiguous by ", worst);
        }
      }
    // gradcheck through the channels-last kernels
    CHECK_GRADCHECK(
        [](const std::vector<Tensor>& v) { return group_norm(v[0], 2, v[1], v[2], 1e-3); },
        {grad_input({2, 4, 3, 2}, 64, Layout::ChannelsLast, 1.5, 0.3),
         grad_input({4}, 65, Layout::Contiguous, 0.5, 1.0), grad_input({4}, 66)});
  }

  TEST_CASE("group_norm_silu: the fused op equals silu(group_norm(x)), forward and backward") {
    struct Case {
      Shape s;
      int64_t groups;
      bool affine;
    };
    const std::vector<Case> cases = {{{3, 8, 5, 4}, 4, true},
                                     {{2, 64, 7, 7}, 32, true},
                                     {{2, 6, 3, 7}, 3, false},
                                     {{2, 4, 9}, 2, true}};
    for (const Case& c : cases)
      for (DType dt : {DType::f64, DType::f32, DType::bf16})
        for (Layout l : {Layout::Contiguous, Layout::ChannelsLast}) {
          if (l == Layout::ChannelsLast && c.s.size() != 4) continue;
          const std::string what = shape_str(c.s) + " " + std::string(dtype_name(dt)) + " " +
                                   lname(l) + (c.affine ? " affine" : "");
          const Tensor x0 = randn_input(c.s, 70, l, dt, 1.5, 0.4);
          const Tensor dy = randn_input(c.s, 71, l, dt);
          const Tensor w0 = c.affine ? randn_input({c.s[1]}, 72, Layout::Contiguous, dt) : Tensor();
          const Tensor b0 = c.affine ? randn_input({c.s[1]}, 73, Layout::Contiguous, dt) : Tensor();
          std::vector<double> got[2][4];
          for (int fused = 0; fused < 2; ++fused) {
            Tensor x = clone(x0), w = c.affine ? clone(w0) : Tensor(),
                   b = c.affine ? clone(b0) : Tensor();
            if (l == Layout::ChannelsLast)
              x = detach(to_memory_format(x, MemoryFormat::ChannelsLast));
            for (Tensor* t : {&x, &w, &b})
              if (t->defined()) t->set_requires_grad(true);
            const Tensor y = fused ? group_norm_silu(x, c.groups, w, b, 1e-5)
                                   : silu(group_norm(x, c.groups, w, b, 1e-5));
            y.backward(dy);
            got[fused][0] = values(y);
            got[fused][1] = values(x.grad());
            if (c.affine) {
              got[fused][2] = values(w.grad());
              got[fused][3] = values(b.grad());
            }
          }
          // The forward rounds the same h and applies the same SiLU; the backward recomputes h
          // from the saved statistics (stored in f32 for f32 and 16-bit x), so dh may differ from
          // the composite's in the last bit of h's dtype.
          const double tol = dt == DType::f64 ? 1e-12 : dt == DType::f32 ? 2e-5 : 2e-2;
          const char* names[4] = {"y", "dx", "dw", "db"};
          for (int k = 0; k < (c.affine ? 4 : 2); ++k) {
            double worst = 0, scale = 1;
            for (size_t i = 0; i < got[0][k].size(); ++i) {
              worst = std::max(worst, std::fabs(got[0][k][i] - got[1][k][i]));
              scale = std::max(scale, std::fabs(got[0][k][i]));
            }
            CHECK_MESSAGE(worst <= (k == 0 && dt != DType::bf16 ? 1e-6 * tol : tol) * scale + 0.0,
                          what, " ", names[k], ": fused differs from the composite by ", worst);
          }
        }
    // gradcheck of the fused op in both layouts, with and without the affine parameters
    for (Layout l : {Layout::Contiguous, Layout::ChannelsLast}) {
      INFO(lname(l));
      CHECK_GRADCHECK(
          [](const std::vector<Tensor>& v) { return group_norm_silu(v[0], 2, v[1], v[2], 1e-3); },
          {grad_input({2, 4, 3, 2}, 74, l, 1.5, 0.3),
           grad_input({4}, 75, Layout::Contiguous, 0.5, 1.0), grad_input({4}, 76)});
      CHECK_GRADCHECK([](const std::vector<Tensor>& v) { return group_norm_silu(v[0], 4); },
                      {grad_input({2, 4, 3, 3}, 77, l)});
    }
  }

  TEST_CASE("group_norm: parameter gradients alone equal those computed with dx") {
    Tensor x = randn_input({3, 6, 4, 5}, 50);
    Tensor dy = randn_input({3, 6, 4, 5}, 51, Layout::Transposed);
    Tensor w1 = randn_input({6}, 52).set_requires_grad(true),
           b1 = randn_input({6}, 53).set_requires_grad(true);
    Tensor w2 = clone(detach(w1)).set_requires_grad(true);
    Tensor b2 = clone(detach(b1)).set_requires_grad(true);
    Tensor xg = clone(x).set_requires_grad(true);
    sum(mul(group_norm(xg, 3, w1, b1), dy)).backward();
    sum(mul(group_norm(x, 3, w2, b2), dy)).backward();
    CHECK(max_abs_diff(w1.grad(), w2.grad()) == 0);
    CHECK(max_abs_diff(b1.grad(), b2.grad()) == 0);
    // closed forms: dbias = Σ dy over n and spatial dims, dweight = Σ dy·x̂ (x̂ = the plain norm)
    Tensor xhat = group_norm(x, 3);
    CHECK(max_abs_diff(b2.grad(), sum(dy, {0, 2, 3})) < 1e-12);
    CHECK(max_abs_diff(w2.grad(), sum(mul(dy, xhat), {0, 2, 3})) < 1e-12);
    // only the bias needs a gradient
    Tensor b3 = clone(detach(b1)).set_requires_grad(true);
    sum(mul(group_norm(x, 3, detach(w1), b3), dy)).backward();
    CHECK(max_abs_diff(b3.grad(), b1.grad()) == 0);
  }

  TEST_CASE("group_norm: 16-bit gradients match the f64 op on the same values") {
    for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
      INFO(tname(dt));
      Tensor x = randn_input({2, 4, 3, 5}, 60, Layout::Transposed, dt, 2.0, 1.0);
      Tensor w = randn_input({4}, 61, Layout::Contiguous, dt, 0.5, 1.0);
      Tensor b = randn_input({4}, 62, Layout::Contiguous, dt);
      Tensor dy = randn_input({2, 4, 3, 5}, 63, Layout::Contiguous, dt);
      std::vector<Tensor> lo = {x, w, b}, hi;
      for (Tensor& t : lo) {
        hi.push_back(to(t, DType::f64).set_requires_grad(true));
        t.set_requires_grad(true);
      }
      Tensor ylo = group_norm(lo[0], 2, lo[1], lo[2]);
      Tensor yhi = group_norm(hi[0], 2, hi[1], hi[2]);
      sum(mul(ylo, dy)).backward();
      sum(mul(yhi, to(dy, DType::f64))).backward();
      for (size_t i = 0; i < 3; ++i) {
        INFO("input ", i);
        REQUIRE(lo[i].grad().dtype() == dt);
        // f64 arithmetic, f32 statistics, one rounding to dt; dweight/dbias sum 30 terms.
        check_values(lo[i].grad(), values(hi[i].grad()), 1, 1e-5, "gradient");
      }
    }
  }

  TEST_CASE("group_norm: large-mean f32 gradients are limited only by the f32 mean") {
    // The saved mean is f32: near 1e4 it is off by up to half an ulp (4.9e-4), which moves x̂ by
    // that much times rstd (here ~1). Gradients must agree with the f64 op to that order.
    Tensor x64 = randn_input({2, 4, 8}, 70, Layout::Contiguous, DType::f64, 1.0, 1e4);
    Tensor x32 = to(x64, DType::f32);
    x64 = to(x32, DType::f64).set_requires_grad(true);
    x32.set_requires_grad(true);
    Tensor dy = randn_input({2, 4, 8}, 71);
    sum(mul(group_norm(x32, 2), to(dy, DType::f32))).backward();
    sum(mul(group_norm(x64, 2), dy)).backward();
    const double scale = max_abs_diff(x64.grad(), zeros_like(x64.grad()));
    CHECK(max_abs_diff(to(x32.grad(), DType::f64), x64.grad()) <= 2e-3 * scale);
  }

  TEST_CASE("group_norm: no graph under no-grad, and saved x is protected from in-place edits") {
    Tensor x = grad_input({2, 4, 3}, 80);
    {
      NoGradGuard ng;
      CHECK_FALSE(group_norm(x, 2).requires_grad());
    }
    Tensor xs = mul(x, 1.0);
    Tensor y = group_norm(xs, 2);
    CHECK(y.requires_grad());
    {
      NoGradGuard ng;
      add_(xs, 1.0);
    }
    CHECK_THROWS_AS(sum(y).backward(), cm::Error);
  }

  TEST_CASE("group_norm_silu with a shift: the bits of add then group_norm_silu, and gradcheck") {
    // The fused kernel (channels-last on the CPU) and the composite path (contiguous) against the
    // composite written out: output and the four gradients bit for bit.
    for (DType dt : {DType::f32, DType::f64, DType::bf16})
      for (const Layout l : {Layout::ChannelsLast, Layout::Contiguous})
        for (const Shape& sh : {Shape{4, 8, 5, 3}, Shape{3, 12, 4, 4}}) {
          INFO(std::string(dtype_name(dt)), " ",
               l == Layout::ChannelsLast ? "channels-last" : "contiguous", " ", shape_str(sh));
          const Tensor x0 = randn_input(sh, 70, l, dt, 1.3, 0.2);
          const Tensor s0 = randn_input({sh[0], sh[1], 1, 1}, 71, Layout::Contiguous, dt);
          const Tensor w0 = randn_input({sh[1]}, 72, Layout::Contiguous, dt, 0.5, 1.0);
          const Tensor b0 = randn_input({sh[1]}, 73, Layout::Contiguous, dt);
          const Tensor dy = randn_input(sh, 74, l, dt);
          std::vector<std::vector<double>> got[2];
          for (int fused = 0; fused < 2; ++fused) {
            Tensor x = clone(x0), s = clone(s0), w = clone(w0), b = clone(b0);
            x = detach(with_layout(x0, l));
            for (Tensor* t : {&x, &s, &w, &b}) t->set_requires_grad(true);
            const Tensor y = fused ? group_norm_silu(x, 4, w, b, 1e-5, s)
                                   : group_norm_silu(add(x, s), 4, w, b, 1e-5);
            if (fused && l == Layout::ChannelsLast)
              CHECK(memory_format_of(y) == MemoryFormat::ChannelsLast);
            y.backward(dy);
            got[fused] = {values(y), values(x.grad()), values(s.grad()), values(w.grad()),
                          values(b.grad())};
          }
          const char* names[5] = {"y", "dx", "dshift", "dw", "db"};
          for (int k = 0; k < 5; ++k)
            CHECK_MESSAGE(got[0][size_t(k)] == got[1][size_t(k)], names[k], " differs");
        }
    // the shift alone wanting a gradient; a [N, C] shift
    {
      Tensor x = randn_input({2, 8, 3, 3}, 75, Layout::ChannelsLast, DType::f32);
      Tensor s = randn_input({2, 8}, 76, Layout::Contiguous, DType::f32);
      s.set_requires_grad(true);
      group_norm_silu(x, 2, {}, {}, 1e-5, s).backward(randn_input({2, 8, 3, 3}, 77));
      REQUIRE(s.grad().defined());
      CHECK(s.grad().shape() == Shape{2, 8});
      CHECK_FALSE(x.grad().defined());
    }
    // no pixels: an empty output and a zero shift gradient
    {
      Tensor x = with_layout(zeros({2, 4, 0, 3}), Layout::ChannelsLast);
      Tensor s = randn_input({2, 4, 1, 1}, 85, Layout::Contiguous, DType::f32);
      for (Tensor* t : {&x, &s}) t->set_requires_grad(true);
      const Tensor y = group_norm_silu(x, 2, {}, {}, 1e-5, s);
      CHECK(y.numel() == 0);
      sum(y).backward();
      REQUIRE(s.grad().defined());
      CHECK(values(s.grad()) == std::vector<double>(8, 0.0));
    }
    CHECK_GRADCHECK(
        [](const std::vector<Tensor>& v) {
          return group_norm_silu(v[0], 2, v[1], v[2], 1e-3, v[3]);
        },
        {grad_input({2, 4, 3, 2}, 78, Layout::ChannelsLast, 1.5, 0.3),
         grad_input({4}, 79, Layout::Contiguous, 0.5, 1.0), grad_input({4}, 80),
         grad_input({2, 4, 1, 1}, 81)});
    const Tensor x = randn_input({2, 8, 3, 3}, 82, Layout::Contiguous, DType::f32);
    CHECK_THROWS_WITH_AS(
        group_norm_silu(x, 2, {}, {}, 1e-5,
                        randn_input({2, 8, 3, 1}, 83, Layout::Contiguous, DType::f32)),
        doctest::Contains("shift must be [2, 8]"), Error);
    CHECK_THROWS_WITH_AS(group_norm_silu(x, 2, {}, {}, 1e-5, randn_input({2, 8}, 84)),
                         doctest::Contains("shift has dtype f64"), Error);
  }

  TEST_CASE("group_norm: errors name the op and the offending shapes") {
    Tensor x = randn_input({2, 6, 3}, 90);
    auto check_msg = [](auto&& f, const std::string& piece) {
      try {
        f();
        FAIL_CHECK("no error (expected one mentioning '" << piece << "')");
      } catch (const cm::Error& e) {
        const std::string msg = e.what();
        CHECK_MESSAGE(msg.find("group_norm") != std::string::npos, msg);
        CHECK_MESSAGE(msg.find(piece) != std::string::npos, msg);
      }
    };
    check_msg([&] { group_norm(x, 4); }, "not divisible into 4 groups");
    check_msg([&] { group_norm(x, 0); }, "0 groups");
    check_msg([&] { group_norm(randn_input({6}, 1), 1); }, "[N, C, *]");
    check_msg([&] { group_norm(x, 2, randn_input({5}, 1)); }, "weight must have shape [6]");
    check_msg([&] { group_norm(x, 2, {}, randn_input({6, 1}, 1)); }, "bias must have shape [6]");
    check_msg([&] { group_norm(x, 2, randn_input({6}, 1, Layout::Contiguous, DType::f32)); },
              "weight has dtype f32");
    check_msg([&] { group_norm(to(x, DType::i64), 2); }, "floating");
    check_msg([&] { group_norm(x, 2, {}, {}, -1.0); }, "eps");
  }
}
