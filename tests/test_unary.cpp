// Elementwise unary ops (autograd/ops/unary.cpp): forward against f64 std:: references in every
// dtype and layout, integer promotion, gradchecks, zero gradients of the piecewise-constant ops,
// clamp's gradient mask, rounding ties and NaN/inf behaviour.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "helpers.h"

using namespace cm;
using namespace cm::test;

namespace {

// How an op treats integer inputs.
enum class IntMode {
  Promote,   // floating function: i32/i64 become f32
  Keep,      // exact integer arithmetic, dtype kept
  Identity,  // floor/ceil/round: integers are already integral
  Separate,  // tested in its own case (clamp)
};

struct UnaryCase {
  std::string name;
  std::function<Tensor(const Tensor&)> op;
  std::function<double(double)> ref;
  double scale = 1, shift = 0;  // input domain: N(shift, scale²)
  IntMode int_mode = IntMode::Promote;
  bool flat = false;  // piecewise constant: zero gradient
};

double ref_sigmoid(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}
double ref_gelu(double x) {
  return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
}
// Round half to even, written without the FPU rounding mode.
double ref_round(double x) {
  const double r = std::round(x);  // half away from zero
  if (std::fabs(x - std::trunc(x)) == 0.5) return 2.0 * std::round(x / 2.0);
  return r;
}
double ref_clamp(double x, double lo, double hi) {
  return std::isnan(x) ? x : std::min(std::max(x, lo), hi);
}
double ref_sign(double x) {
  return x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0);
}

const std::vector<UnaryCase>& cases() {
  static const std::vector<UnaryCase> all = {
      {"neg", [](const Tensor& x) { return neg(x); }, [](double x) { return -x; }, 1, 0,
       IntMode::Keep},
      {"abs", [](const Tensor& x) { return abs(x); }, [](double x) { return std::fabs(x); }, 1, 0,
       IntMode::Keep},
      {"exp", [](const Tensor& x) { return exp(x); }, [](double x) { return std::exp(x); }},
      {"log", [](const Tensor& x) { return log(x); }, [](double x) { return std::log(x); }, 0.4, 2},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }, [](double x) { return std::sqrt(x); }, 0.4,
       2},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); }, [](double x) { return 1 / std::sqrt(x); },
       0.4, 2},
      {"square", [](const Tensor& x) { return square(x); }, [](double x) { return x * x; }, 1, 0,
       IntMode::Keep},
      {"reciprocal", [](const Tensor& x) { return reciprocal(x); }, [](double x) { return 1 / x; },
       0.4, 2},
      {"sin", [](const Tensor& x) { return sin(x); }, [](double x) { return std::sin(x); }, 2},
      {"cos", [](const Tensor& x) { return cos(x); }, [](double x) { return std::cos(x); }, 2},
      {"tanh", [](const Tensor& x) { return tanh(x); }, [](double x) { return std::tanh(x); }, 1.5},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); }, ref_sigmoid, 2},
      {"silu", [](const Tensor& x) { return silu(x); }, [](double x) { return x * ref_sigmoid(x); },
       2},
      {"relu", [](const Tensor& x) { return relu(x); }, [](double x) { return x > 0 ? x : 0.0; }, 1,
       0, IntMode::Keep},
      {"gelu", [](const Tensor& x) { return gelu(x); }, ref_gelu, 2},
      {"erf", [](const Tensor& x) { return erf(x); }, [](double x) { return std::erf(x); }, 1.5},
      {"expm1", [](const Tensor& x) { return expm1(x); }, [](double x) { return std::expm1(x); }},
      {"log1p", [](const Tensor& x) { return log1p(x); }, [](double x) { return std::log1p(x); },
       0.25},
      {"pow(x, 2.5)", [](const Tensor& x) { return pow(x, 2.5); },
       [](double x) { return std::pow(x, 2.5); }, 0.4, 2},
      {"pow(x, 3)", [](const Tensor& x) { return pow(x, 3.0); },
       [](double x) { return x * x * x; }},
      {"pow(x, -1.5)", [](const Tensor& x) { return pow(x, -1.5); },
       [](double x) { return std::pow(x, -1.5); }, 0.4, 2},
      {"pow(x, 0)", [](const Tensor& x) { return pow(x, 0.0); }, [](double) { return 1.0; }},
      {"pow(2, x)", [](const Tensor& x) { return pow(2.0, x); },
       [](double x) { return std::exp2(x); }},
      {"pow(0.5, x)", [](const Tensor& x) { return pow(0.5, x); },
       [](double x) { return std::exp2(-x); }},
      {"clamp(lo)", [](const Tensor& x) { return clamp(x, -0.5, std::nullopt); },
       [](double x) { return ref_clamp(x, -0.5, INFINITY); }, 1, 0, IntMode::Separate},
      {"clamp(hi)", [](const Tensor& x) { return clamp(x, std::nullopt, 0.5); },
       [](double x) { return ref_clamp(x, -INFINITY, 0.5); }, 1, 0, IntMode::Separate},
      {"clamp(lo, hi)", [](const Tensor& x) { return clamp(x, -0.5, 0.5); },
       [](double x) { return ref_clamp(x, -0.5, 0.5); }, 1, 0, IntMode::Separate},
      {"sign", [](const Tensor& x) { return sign(x); }, ref_sign, 1, 0, IntMode::Keep, true},
      {"floor", [](const Tensor& x) { return floor(x); }, [](double x) { return std::floor(x); }, 3,
       0, IntMode::Identity, true},
      {"ceil", [](const Tensor& x) { return ceil(x); }, [](double x) { return std::ceil(x); }, 3, 0,
       IntMode::Identity, true},
      {"round", [](const Tensor& x) { return round(x); }, ref_round, 3, 0, IntMode::Identity, true},
  };
  return all;
}

// Checks y against reference values: |y − r| ≤ atol + rtol·|r|, NaNs equal, and reports the
// first mismatch.
void check_values(const Tensor& y, const std::vector<double>& ref, double rtol, double atol,
                  const std::string& what) {
  const std::vector<double> v = values(y);
  REQUIRE_MESSAGE(v.size() == ref.size(), what, ": ", v.size(), " values vs ", ref.size());
  std::string bad;
  for (size_t i = 0; i < v.size() && bad.empty(); ++i) {
    const bool both_nan = std::isnan(v[i]) && std::isnan(ref[i]);
    if (both_nan || v[i] == ref[i]) continue;
    if (!(std::fabs(v[i] - ref[i]) <= atol + rtol * std::fabs(ref[i]))) {
      std::ostringstream os;
      os.precision(17);
      os << what << ": element " << i << " is " << v[i] << ", expected " << ref[i];
      bad = os.str();
    }
  }
  CHECK_MESSAGE(bad.empty(), bad);
}

std::vector<double> apply_ref(const UnaryCase& c, const std::vector<double>& x) {
  std::vector<double> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = c.ref(x[i]);
  return r;
}

Tensor weighted_sum(const Tensor& y, uint64_t seed) {
  Tensor w = randn_input(y.shape(), seed);
  return sum(mul(y, w));
}

}  // namespace

TEST_SUITE("ops") {
  TEST_CASE("unary forward matches the f64 reference in f64 and f32, in every layout") {
    const Shape shape = {3, 5};
    for (const UnaryCase& c : cases()) {
      for (Layout layout : kLayouts) {
        for (DType dt : {DType::f64, DType::f32}) {
          const std::string what = c.name + " " + dtype_name(dt) + " " + layout_name(layout);
          const Tensor x = randn_input(shape, 11, layout, dt, c.scale, c.shift);
          const Tensor y = c.op(x);
          CHECK_MESSAGE(y.dtype() == dt, what);
          CHECK_MESSAGE(y.shape() == shape, what);
          const std::vector<double> ref = apply_ref(c, values(x));  // on the (rounded) input values
          if (dt == DType::f64)
            check_values(y, ref, 1e-13, 1e-15, what);
          else
            check_values(y, ref, 2e-6, 1e-6, what);
        }
      }
    }
  }

  TEST_CASE("unary forward on a 3-d transposed view") {
    // A rank-3 permuted input exercises the general strided loop.
    for (const UnaryCase& c : cases()) {
      const Tensor x = randn_input({2, 3, 4}, 12, Layout::Transposed, DType::f64, c.scale, c.shift);
      check_values(c.op(x), apply_ref(c, values(x)), 1e-13, 1e-15, c.name);
    }
  }

  TEST_CASE("unary f16 and bf16 forward is the f32 result rounded to the dtype") {
    // The 16-bit formats compute in f32 and round once: the result is within half an ulp of the f32
    // result on the same (already rounded) input.
    struct Half16 {
      DType dt;
      double rtol;
    };
    for (const Half16 h :
         {Half16{DType::f16, std::ldexp(1.0, -11)}, Half16{DType::bf16, std::ldexp(1.0, -8)}}) {
      for (const UnaryCase& c : cases()) {
        for (Layout layout : {Layout::Contiguous, Layout::Strided}) {
          const std::string what = c.name + " " + dtype_name(h.dt) + " " + layout_name(layout);
          const Tensor x = randn_input({4, 6}, 13, layout, h.dt, c.scale, c.shift);
          const Tensor y = c.op(x);
          CHECK_MESSAGE(y.dtype() == h.dt, what);
          const Tensor y32 = c.op(to(x, DType::f32));
          check_values(y, values(y32), h.rtol, 1e-7, what);
        }
      }
    }
  }

  TEST_CASE(
      "unary ops on integer inputs: floating functions promote to f32, exact ones keep the dtype") {
    const std::vector<int64_t> positive = {1, 2, 3, 4, 5, 6};
    const std::vector<int64_t> mixed = {
        -7, 0, 5, -(int64_t(1) << 40) - 1, 3037000499, (int64_t(1) << 53) + 1, -(int64_t(1) << 62)};
    for (const UnaryCase& c : cases()) {
      for (DType dt : {DType::i32, DType::i64}) {
        const std::string what = c.name + " " + dtype_name(dt);
        if (c.int_mode == IntMode::Promote) {
          const Tensor x = from_vector(positive, {2, 3}, {.dtype = dt});
          const Tensor y = c.op(x);
          CHECK_MESSAGE(y.dtype() == DType::f32, what);
          std::vector<double> xd(positive.begin(), positive.end());
          check_values(y, apply_ref(c, xd), 2e-6, 1e-6, what);
        } else if (c.int_mode == IntMode::Keep || c.int_mode == IntMode::Identity) {
          // Values that f32 (and for the squares, f64) cannot hold exactly; squares stay in range.
          std::vector<int64_t> xs;
          if (c.name == "square")
            xs = dt == DType::i64
                     ? std::vector<int64_t>{-7, 0, 5, -3037000499, 94906267, 3037000499}
                     : std::vector<int64_t>{-7, 0, 5, -46340, 46340, 4097};
          else
            xs = dt == DType::i64
                     ? mixed
                     : std::vector<int64_t>{-7, 0, 5, -46341, 2147483647, 16777217, -2147483647};
          const Tensor x = from_vector(xs, {int64_t(xs.size())}, {.dtype = dt});
          const Tensor y = c.op(x);
          CHECK_MESSAGE(y.dtype() == dt, what);
          const std::vector<int64_t> got = y.to_vector<int64_t>();
          std::vector<int64_t> want(xs.size());
          for (size_t i = 0; i < xs.size(); ++i) {
            const int64_t v = xs[i];
            if (c.name == "neg")
              want[i] = -v;
            else if (c.name == "abs")
              want[i] = v < 0 ? -v : v;
            else if (c.name == "square")
              want[i] = v * v;
            else if (c.name == "relu")
              want[i] = v > 0 ? v : 0;
            else if (c.name == "sign")
              want[i] = (v > 0) - (v < 0);
            else
              want[i] = v;  // floor / ceil / round
          }
          CHECK_MESSAGE(got == want, what);
        }
      }
    }
  }

  TEST_CASE("clamp on integer tensors keeps the dtype, with one or both bounds") {
    const std::vector<int64_t> xs = {-9, -3, -2, 0, 2, 3, 7, int64_t(1) << 40};
    for (DType dt : {DType::i32, DType::i64}) {
      std::vector<int64_t> in = xs;
      if (dt == DType::i32) in.back() = 2147483647;
      const Tensor x = from_vector(in, {int64_t(in.size())}, {.dtype = dt});
      struct Bounds {
        std::optional<double> lo, hi;
      };
      for (const Bounds b :
           {Bounds{-2.0, std::nullopt}, Bounds{std::nullopt, 3.0}, Bounds{-2.0, 3.0}}) {
        const Tensor y = clamp(x, b.lo, b.hi);
        CHECK(y.dtype() == dt);
        std::vector<int64_t> want(in.size());
        for (size_t i = 0; i < in.size(); ++i) {
          int64_t v = in[i];
          if (b.lo) v = std::max(v, int64_t(*b.lo));
          if (b.hi) v = std::min(v, int64_t(*b.hi));
          want[i] = v;
        }
        CHECK_MESSAGE(y.to_vector<int64_t>() == want, std::string(dtype_name(dt)), " lo ",
                      b.lo.value_or(NAN), " hi ", b.hi.value_or(NAN));
      }
    }
    CHECK_THROWS_AS(clamp(from_vector(std::vector<double>{1.0}, {1}), std::nullopt, std::nullopt),
                    cm::Error);
  }

  TEST_CASE("round is half to even, floor and ceil at the integers") {
    const std::vector<double> xs = {0.5,       1.5, 2.5,  -0.5, -1.5, -2.5,
                                    2.4999999, 3.5, -3.5, 4.0,  -0.0, 1e15 + 0.5};
    for (DType dt : {DType::f64, DType::f32}) {
      const Tensor x = to(from_vector(xs, {int64_t(xs.size())}), dt);
      const std::vector<double> xv = values(x);
      std::vector<double> want_round(xv.size()), want_floor(xv.size()), want_ceil(xv.size());
      for (size_t i = 0; i < xv.size(); ++i) {
        want_round[i] = ref_round(xv[i]);
        want_floor[i] = std::floor(xv[i]);
        want_ceil[i] = std::ceil(xv[i]);
      }
      check_values(round(x), want_round, 0, 0, std::string("round ") + dtype_name(dt));
      check_values(floor(x), want_floor, 0, 0, std::string("floor ") + dtype_name(dt));
      check_values(ceil(x), want_ceil, 0, 0, std::string("ceil ") + dtype_name(dt));
    }
    // The literal ties, spelled out.
    const Tensor t = from_vector(std::vector<double>{0.5, 1.5, 2.5, -0.5, -1.5, -2.5}, {6});
    CHECK(values(round(t)) == std::vector<double>{0, 2, 2, 0, -2, -2});
  }

  TEST_CASE("unary gradcheck on contiguous and non-contiguous inputs") {
    for (const UnaryCase& c : cases()) {
      if (c.flat) continue;
      for (Layout layout : kLayouts) {
        CAPTURE(c.name);
        CAPTURE(std::string(layout_name(layout)));
        const Tensor x = grad_input({3, 4}, 21, layout, c.scale, c.shift);
        auto f = [&c](const std::vector<Tensor>& in) { return c.op(in[0]); };
        CHECK_GRADCHECK(f, {x});
      }
    }
  }

  TEST_CASE("sign, floor, ceil and round have zero gradient") {
    for (const UnaryCase& c : cases()) {
      if (!c.flat) continue;
      CAPTURE(c.name);
      const Tensor x = grad_input({3, 4}, 22, Layout::Transposed, 3.0);
      const Tensor y = c.op(x);
      CHECK(y.requires_grad());
      weighted_sum(y, 23).backward();
      REQUIRE(x.grad().defined());
      CHECK(x.grad().shape() == x.shape());
      CHECK(values(x.grad()) == std::vector<double>(12, 0.0));
    }
  }

  TEST_CASE("clamp passes the gradient where lo <= x <= hi, bounds included") {
    const std::vector<double> xs = {-1.0, -0.5, -0.25, 0.0, 0.5, 0.75, 1.0};
    struct Case {
      std::optional<double> lo, hi;
      std::vector<double> mask;
    };
    const std::vector<Case> cs = {
        {-0.5, 0.5, {0, 1, 1, 1, 1, 0, 0}},
        {-0.5, std::nullopt, {0, 1, 1, 1, 1, 1, 1}},
        {std::nullopt, 0.5, {1, 1, 1, 1, 1, 0, 0}},
    };
    const std::vector<double> w = {1.5, -2.0, 3.0, 0.25, -1.0, 2.0, 4.0};
    for (const Case& c : cs) {
      Tensor x = with_layout(from_vector(xs, {7}), Layout::Strided);
      x.set_requires_grad(true);
      sum(mul(clamp(x, c.lo, c.hi), from_vector(w, {7}))).backward();
      std::vector<double> want(w.size());
      for (size_t i = 0; i < w.size(); ++i) want[i] = w[i] * c.mask[i];
      CHECK_MESSAGE(values(x.grad()) == want, "lo ", c.lo.value_or(NAN), " hi ",
                    c.hi.value_or(NAN));
    }
  }

  TEST_CASE("abs, relu and pow gradients at their special points") {
    // abs'(0) = sign(0) = 0 and relu'(0) = 0 (as PyTorch); pow(x, 0) has zero gradient everywhere.
    Tensor x = from_vector(std::vector<double>{-2.0, 0.0, 3.0}, {3});
    x.set_requires_grad(true);
    sum(abs(x)).backward();
    CHECK(values(x.grad()) == std::vector<double>{-1, 0, 1});
    x.zero_grad();
    sum(relu(x)).backward();
    CHECK(values(x.grad()) == std::vector<double>{0, 0, 1});
    x.zero_grad();
    sum(pow(x, 0.0)).backward();
    CHECK(values(x.grad()) == std::vector<double>{0, 0, 0});
    // d/dx 3^x = 3^x ln 3, checked in closed form.
    x.zero_grad();
    sum(pow(3.0, x)).backward();
    check_values(x.grad(), {std::pow(3.0, -2.0) * std::log(3.0), std::log(3.0), 27 * std::log(3.0)},
                 1e-14, 0, "pow(3, x) grad");
  }

  TEST_CASE("unary NaN and infinity behaviour") {
    const double inf = INFINITY, nan = NAN;
    for (DType dt : {DType::f64, DType::f32, DType::f16, DType::bf16}) {
      const std::string dt_name = dtype_name(dt);
      CAPTURE(dt_name);
      const Tensor x =
          to(from_vector(std::vector<double>{nan, -inf, inf, -1.0, 0.0, 2.0}, {6}), dt);
      // clamp propagates NaN and clips infinities, with either bound alone or both.
      check_values(clamp(x, -0.5, 0.5), {nan, -0.5, 0.5, -0.5, 0.0, 0.5}, 0, 0, "clamp(lo, hi)");
      check_values(clamp(x, -0.5, std::nullopt), {nan, -0.5, inf, -0.5, 0.0, 2.0}, 0, 0,
                   "clamp(lo)");
      check_values(clamp(x, std::nullopt, 0.5), {nan, -inf, 0.5, -1.0, 0.0, 0.5}, 0, 0,
                   "clamp(hi)");
      // relu propagates NaN like torch.relu.
      check_values(relu(x), {nan, 0, inf, 0, 0, 2}, 0, 0, "relu");
      check_values(exp(x), {nan, 0, inf, std::exp(-1.0), 1, std::exp(2.0)}, 4e-3, 0, "exp");
      check_values(sigmoid(x), {nan, 0, 1, ref_sigmoid(-1), 0.5, ref_sigmoid(2)}, 4e-3, 0,
                   "sigmoid");
      check_values(tanh(x), {nan, -1, 1, std::tanh(-1.0), 0, std::tanh(2.0)}, 4e-3, 0, "tanh");
      check_values(sign(x), {0, -1, 1, -1, 0, 1}, 0, 0, "sign");  // sign(NaN) = 0, as PyTorch
      CHECK(isfinite(x).dtype() == DType::b8);
      CHECK(isfinite(x).to_vector<int64_t>() == std::vector<int64_t>{0, 0, 0, 1, 1, 1});
      CHECK(logical_not(x).dtype() == DType::b8);
      CHECK(logical_not(x).to_vector<int64_t>() ==
            std::vector<int64_t>{0, 0, 0, 0, 1, 0});  // NaN is true
    }
    // log and sqrt at the edge of their domains.
    const Tensor e = from_vector(std::vector<double>{0.0, -1.0, inf}, {3});
    check_values(log(e), {-inf, nan, inf}, 0, 0, "log");
    check_values(sqrt(e), {0, nan, inf}, 0, 0, "sqrt");
    check_values(reciprocal(e), {inf, -1, 0}, 0, 0, "reciprocal");
    // Large arguments of sigmoid saturate instead of overflowing to NaN.
    check_values(sigmoid(from_vector(std::vector<double>{-1000.0, 1000.0}, {2})), {0, 1}, 0, 0,
                 "sigmoid saturation");
  }

  TEST_CASE("predicates on integer and bool inputs, without gradient") {
    const Tensor i = from_vector(std::vector<int32_t>{-3, 0, 7}, {3});
    CHECK(isfinite(i).to_vector<int64_t>() == std::vector<int64_t>{1, 1, 1});
    CHECK(logical_not(i).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 0});
    const Tensor b = from_vector(std::vector<bool>{true, false}, {2}, {.dtype = DType::b8});
    CHECK(logical_not(b).dtype() == DType::b8);
    CHECK(logical_not(b).to_vector<int64_t>() == std::vector<int64_t>{0, 1});
    const Tensor x = grad_input({2, 3}, 31, Layout::Transposed);
    CHECK_FALSE(isfinite(x).requires_grad());
    CHECK_FALSE(logical_not(x).requires_grad());
    // A non-contiguous predicate input.
    const Tensor s = with_layout(from_vector(std::vector<double>{1.0, INFINITY, 0.0, NAN}, {2, 2}),
                                 Layout::Transposed);
    CHECK(isfinite(s).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 1, 0});
    CHECK(logical_not(s).to_vector<int64_t>() == std::vector<int64_t>{0, 0, 1, 0});
  }

  TEST_CASE("bool inputs: neg and square compute in i64, floating functions promote to f32") {
    const Tensor b = from_vector(std::vector<bool>{true, false, true}, {3}, {.dtype = DType::b8});
    // neg and square of bool compute in i64; the floating functions promote to f32.
    CHECK(neg(b).dtype() == DType::i64);
    CHECK(neg(b).to_vector<int64_t>() == std::vector<int64_t>{-1, 0, -1});
    CHECK(square(b).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 1});
    CHECK(exp(b).dtype() == DType::f32);
    check_values(exp(b), {std::exp(1.0), 1.0, std::exp(1.0)}, 1e-6, 0, "exp(bool)");
  }
}
