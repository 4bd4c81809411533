// Elementwise binary ops (autograd/ops/binary.cpp): forward against f64 reference loops with NumPy
// broadcasting and non-contiguous inputs, dtype promotion, scalar forms and operators, comparisons,
// logic and where, gradchecks with broadcasting, maximum/minimum ties and NaNs, and shape errors.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "helpers.h"

using namespace cm;
using namespace cm::test;

namespace {

using BinaryFn = std::function<Tensor(const Tensor&, const Tensor&)>;
using RefFn = std::function<double(double, double)>;

struct BinaryCase {
  std::string name;
  BinaryFn op;
  RefFn ref;
  double a_scale = 1, a_shift = 0;  // a ~ N(a_shift, a_scale²)
  double b_scale = 1, b_shift = 0;
};

double ref_max(double x, double y) {
  return std::isnan(x) || std::isnan(y) ? NAN : std::max(x, y);
}
double ref_min(double x, double y) {
  return std::isnan(x) || std::isnan(y) ? NAN : std::min(x, y);
}

const std::vector<BinaryCase>& cases() {
  static const std::vector<BinaryCase> all = {
      {"add", [](const Tensor& a, const Tensor& b) { return add(a, b); },
       [](double x, double y) { return x + y; }},
      {"add(alpha=2.5)", [](const Tensor& a, const Tensor& b) { return add(a, b, 2.5); },
       [](double x, double y) { return x + 2.5 * y; }},
      {"sub", [](const Tensor& a, const Tensor& b) { return sub(a, b); },
       [](double x, double y) { return x - y; }},
      {"sub(alpha=-0.5)", [](const Tensor& a, const Tensor& b) { return sub(a, b, -0.5); },
       [](double x, double y) { return x + 0.5 * y; }},
      {"mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); },
       [](double x, double y) { return x * y; }},
      {"div", [](const Tensor& a, const Tensor& b) { return div(a, b); },
       [](double x, double y) { return x / y; }, 1, 0, 0.4, -2},
      {"pow", [](const Tensor& a, const Tensor& b) { return pow(a, b); },
       [](double x, double y) { return std::pow(x, y); }, 0.4, 2, 1.5, 0},
      {"maximum", [](const Tensor& a, const Tensor& b) { return maximum(a, b); }, ref_max},
      {"minimum", [](const Tensor& a, const Tensor& b) { return minimum(a, b); }, ref_min},
      {"lerp(0.3)", [](const Tensor& a, const Tensor& b) { return lerp(a, b, 0.3); },
       [](double x, double y) { return x + 0.3 * (y - x); }},
      {"lerp(0.75)", [](const Tensor& a, const Tensor& b) { return lerp(a, b, 0.75); },
       [](double x, double y) { return x + 0.75 * (y - x); }},
      {"add_scaled(sqrt 0.5)",
       [](const Tensor& a, const Tensor& b) { return add_scaled(a, b, std::sqrt(0.5)); },
       [](double x, double y) { return (x + y) * std::sqrt(0.5); }},
      {"operator+", [](const Tensor& a, const Tensor& b) { return a + b; },
       [](double x, double y) { return x + y; }},
      {"operator-", [](const Tensor& a, const Tensor& b) { return a - b; },
       [](double x, double y) { return x - y; }},
      {"operator*", [](const Tensor& a, const Tensor& b) { return a * b; },
       [](double x, double y) { return x * y; }},
      {"operator/", [](const Tensor& a, const Tensor& b) { return a / b; },
       [](double x, double y) { return x / y; }, 1, 0, 0.4, 2},
  };
  return all;
}

// The broadcast shapes under test: a, b and the expected result.
struct ShapeCase {
  Shape a, b, out;
};
const std::vector<ShapeCase> kShapes = {
    {{3, 4}, {3, 4}, {3, 4}},        // same shape
    {{3, 1}, {4}, {3, 4}},           // both sides broadcast
    {{}, {2, 3}, {2, 3}},            // 0-d tensor
    {{2, 3}, {}, {2, 3}},            // 0-d tensor on the right
    {{4}, {2, 3, 4}, {2, 3, 4}},     // leading dims
    {{2, 1, 4}, {3, 1}, {2, 3, 4}},  // middle and trailing ones
};

// Row-major index, in a tensor of shape s, of element i of its broadcast to `out`.
int64_t bcast_index(const Shape& s, const Shape& out, int64_t i) {
  int64_t idx = 0, stride = 1;
  const int64_t lead = int64_t(out.size()) - int64_t(s.size());
  for (int64_t d = int64_t(out.size()) - 1; d >= 0; --d) {
    const int64_t od = i % out[size_t(d)];
    i /= out[size_t(d)];
    const int64_t k = d - lead;
    if (k < 0) continue;
    if (s[size_t(k)] != 1) idx += od * stride;
    stride *= s[size_t(k)];
  }
  return idx;
}

std::vector<double> ref_broadcast(const RefFn& f, const Tensor& a, const Tensor& b,
                                  const Shape& out) {
  const std::vector<double> av = values(a), bv = values(b);
  std::vector<double> r(size_t(shape_numel(out)));
  for (int64_t i = 0; i < int64_t(r.size()); ++i)
    r[size_t(i)] =
        f(av[size_t(bcast_index(a.shape(), out, i))], bv[size_t(bcast_index(b.shape(), out, i))]);
  return r;
}

// |y − r| ≤ atol + rtol·|r| elementwise (NaNs equal); reports the first mismatch.
void check_values(const Tensor& y, const std::vector<double>& ref, double rtol, double atol,
                  const std::string& what) {
  const std::vector<double> v = values(y);
  REQUIRE_MESSAGE(v.size() == ref.size(), what, ": ", v.size(), " values vs ", ref.size());
  std::string bad;
  for (size_t i = 0; i < v.size() && bad.empty(); ++i) {
    if ((std::isnan(v[i]) && std::isnan(ref[i])) || v[i] == ref[i]) continue;
    if (!(std::fabs(v[i] - ref[i]) <= atol + rtol * std::fabs(ref[i]))) {
      std::ostringstream os;
      os.precision(17);
      os << what << ": element " << i << " is " << v[i] << ", expected " << ref[i];
      bad = os.str();
    }
  }
  CHECK_MESSAGE(bad.empty(), bad);
}

Tensor vec(const std::vector<double>& v, DType dt = DType::f64) {
  return to(from_vector(v, {int64_t(v.size())}), dt);
}
Tensor ivec(const std::vector<int64_t>& v, DType dt = DType::i64) {
  return from_vector(v, {int64_t(v.size())}, {.dtype = dt});
}
Tensor bvec(const std::vector<bool>& v) {
  return from_vector(v, {int64_t(v.size())}, {.dtype = DType::b8});
}
std::vector<int64_t> ints(const Tensor& t) {
  return t.to_vector<int64_t>();
}

// Non-contiguous layouts of a rank-0 or rank-1 tensor are Strided; of rank >= 2 either kind.
Layout layout_for(const Shape& s, Layout l) {
  return s.size() < 2 && l == Layout::Transposed ? Layout::Strided : l;
}

}  // namespace

TEST_SUITE("ops") {
  TEST_CASE(
      "binary forward matches the f64 reference with broadcasting, in every layout and f64/f32") {
    for (const BinaryCase& c : cases()) {
      for (const ShapeCase& sc : kShapes) {
        for (Layout layout : kLayouts) {
          for (DType dt : {DType::f64, DType::f32}) {
            const std::string what = c.name + " " + shape_str(sc.a) + " with " + shape_str(sc.b) +
                                     " " + dtype_name(dt) + " " + layout_name(layout);
            const Tensor a =
                randn_input(sc.a, 41, layout_for(sc.a, layout), dt, c.a_scale, c.a_shift);
            const Tensor b =
                randn_input(sc.b, 42, layout_for(sc.b, layout), dt, c.b_scale, c.b_shift);
            const Tensor y = c.op(a, b);
            CHECK_MESSAGE(y.shape() == sc.out, what);
            CHECK_MESSAGE(y.dtype() == dt, what);
            const std::vector<double> ref = ref_broadcast(c.ref, a, b, sc.out);
            if (dt == DType::f64)
              check_values(y, ref, 1e-14, 1e-15, what);
            else
              check_values(y, ref, 2e-6, 1e-6, what);
          }
        }
      }
    }
  }

  TEST_CASE("binary forward on an expanded (0-stride) non-contiguous operand") {
    // An operand that is itself a broadcast view (0 strides) and a transposed partner.
    const Tensor a = expand(randn_input({1, 4}, 43), {3, 4});
    const Tensor b = randn_input({3, 4}, 44, Layout::Transposed);
    for (const BinaryCase& c : cases()) {
      if (c.name == "pow" || c.name == "div" || c.name == "operator/")
        continue;  // need domains below
      check_values(c.op(a, b), ref_broadcast(c.ref, a, b, {3, 4}), 1e-14, 1e-15, c.name);
    }
    const Tensor pos =
        expand(randn_input({3, 1}, 45, Layout::Contiguous, DType::f64, 0.4, 2), {3, 4});
    check_values(pow(pos, b),
                 ref_broadcast([](double x, double y) { return std::pow(x, y); }, pos, b, {3, 4}),
                 1e-14, 0, "pow");
    check_values(div(b, pos),
                 ref_broadcast([](double x, double y) { return x / y; }, b, pos, {3, 4}), 1e-15, 0,
                 "div");
  }

  TEST_CASE("binary f16 and bf16 forward is the f32 result rounded to the dtype") {
    struct Half16 {
      DType dt;
      double rtol;
    };
    for (const Half16 h :
         {Half16{DType::f16, std::ldexp(1.0, -11)}, Half16{DType::bf16, std::ldexp(1.0, -8)}}) {
      for (const BinaryCase& c : cases()) {
        const std::string what = c.name + " " + dtype_name(h.dt);
        const Tensor a = randn_input({3, 1}, 46, Layout::Contiguous, h.dt, c.a_scale, c.a_shift);
        const Tensor b = randn_input({4}, 47, Layout::Strided, h.dt, c.b_scale, c.b_shift);
        const Tensor y = c.op(a, b);
        CHECK_MESSAGE(y.dtype() == h.dt, what);
        check_values(y, values(c.op(to(a, DType::f32), to(b, DType::f32))), h.rtol, 1e-7, what);
      }
    }
  }

  TEST_CASE("binary gradcheck with broadcasting and non-contiguous inputs") {
    // The gradient of a broadcast operand is summed back to its own shape.
    const std::vector<ShapeCase> shapes = {{{2, 3}, {2, 3}, {2, 3}},
                                           {{3, 1}, {4}, {3, 4}},
                                           {{2, 3}, {}, {2, 3}},
                                           {{2, 1, 3}, {2, 3}, {2, 2, 3}}};
    for (const BinaryCase& c : cases()) {
      for (const ShapeCase& sc : shapes) {
        for (Layout layout : kLayouts) {
          CAPTURE(c.name);
          CAPTURE(shape_str(sc.a));
          CAPTURE(shape_str(sc.b));
          CAPTURE(std::string(layout_name(layout)));
          const Tensor a = grad_input(sc.a, 51, layout_for(sc.a, layout), c.a_scale, c.a_shift);
          const Tensor b = grad_input(sc.b, 52, layout_for(sc.b, layout), c.b_scale, c.b_shift);
          auto f = [&c](const std::vector<Tensor>& in) { return c.op(in[0], in[1]); };
          CHECK_GRADCHECK(f, {a, b});
        }
      }
    }
  }

  TEST_CASE("binary gradient of a broadcast operand has its own shape and the summed values") {
    // y = a[3,1] * b[4]: da[i] = Σ_j b[j]·w[i,j], db[j] = Σ_i a[i]·w[i,j].
    Tensor a = grad_input({3, 1}, 53);
    Tensor b = grad_input({4}, 54, Layout::Strided);
    const Tensor w = randn_input({3, 4}, 55);
    sum(mul(mul(a, b), w)).backward();
    REQUIRE(a.grad().shape() == Shape{3, 1});
    REQUIRE(b.grad().shape() == Shape{4});
    const std::vector<double> av = values(a), bv = values(b), wv = values(w);
    std::vector<double> ga(3, 0.0), gb(4, 0.0);
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 4; ++j) {
        ga[size_t(i)] += bv[size_t(j)] * wv[size_t(i * 4 + j)];
        gb[size_t(j)] += av[size_t(i)] * wv[size_t(i * 4 + j)];
      }
    check_values(a.grad(), ga, 1e-14, 1e-15, "da");
    check_values(b.grad(), gb, 1e-14, 1e-15, "db");
    // A mixed-dtype operand gets its gradient in its own dtype.
    Tensor a32 = randn_input({2, 3}, 56, Layout::Contiguous, DType::f32);
    a32.set_requires_grad(true);
    Tensor b64 = grad_input({3}, 57);
    Tensor y = mul(a32, b64);
    CHECK(y.dtype() == DType::f64);
    sum(y).backward();
    CHECK(a32.grad().dtype() == DType::f32);
    CHECK(b64.grad().dtype() == DType::f64);
    std::vector<double> ga32(6);
    for (size_t i = 0; i < 6; ++i) ga32[i] = values(b64)[i % 3];
    check_values(a32.grad(), ga32, 1e-7, 0, "d a32");
  }

  TEST_CASE("maximum and minimum split the gradient evenly on ties and propagate NaN") {
    const Tensor w = vec({1.0, 2.0, 4.0, 8.0});
    for (bool is_max : {true, false}) {
      CAPTURE(is_max);
      Tensor a = vec({1.0, 2.0, 3.0, -1.0});
      Tensor b = vec({1.0, 5.0, 0.0, -1.0});
      a.set_requires_grad(true);
      b.set_requires_grad(true);
      const Tensor y = is_max ? maximum(a, b) : minimum(a, b);
      CHECK(values(y) ==
            (is_max ? std::vector<double>{1, 5, 3, -1} : std::vector<double>{1, 2, 0, -1}));
      sum(mul(y, w)).backward();
      // ties (elements 0 and 3) give half to each side
      CHECK(values(a.grad()) ==
            (is_max ? std::vector<double>{0.5, 0, 4, 4} : std::vector<double>{0.5, 2, 0, 4}));
      CHECK(values(b.grad()) ==
            (is_max ? std::vector<double>{0.5, 2, 0, 4} : std::vector<double>{0.5, 0, 4, 4}));
    }
    {
      // Ties under broadcasting: a[2,1] against b[3]; each gradient is summed over the broadcast.
      Tensor a = from_vector(std::vector<double>{1.0, 2.0}, {2, 1});
      Tensor b = vec({1.0, 2.0, 3.0});
      a.set_requires_grad(true);
      b.set_requires_grad(true);
      sum(maximum(a, b)).backward();
      // rows: [1 vs 1,2,3] -> a gets 0.5; [2 vs 1,2,3] -> a gets 1 + 0.5
      CHECK(values(a.grad()) == std::vector<double>{0.5, 1.5});
      CHECK(values(b.grad()) == std::vector<double>{0.5, 1.5, 2.0});
    }
    const double nan = NAN;
    for (DType dt : {DType::f64, DType::f32, DType::f16, DType::bf16}) {
      const std::string dt_name = dtype_name(dt);
      CAPTURE(dt_name);
      const Tensor a = vec({nan, 1.0, nan, 2.0}, dt);
      const Tensor b = vec({1.0, nan, nan, 3.0}, dt);
      check_values(maximum(a, b), {nan, nan, nan, 3}, 0, 0, "maximum");
      check_values(minimum(a, b), {nan, nan, nan, 2}, 0, 0, "minimum");
      check_values(maximum(a, 1.5), {nan, 1.5, nan, 2}, 0, 0, "maximum scalar");
      check_values(minimum(a, 1.5), {nan, 1, nan, 1.5}, 0, 0, "minimum scalar");
    }
  }

  TEST_CASE("scalar forms: forward in every layout, dtype kept, gradcheck") {
    struct ScalarCase {
      std::string name;
      std::function<Tensor(const Tensor&)> op;
      std::function<double(double)> ref;
      double scale = 1, shift = 0;
    };
    const double s = 1.75;
    const std::vector<ScalarCase> cs = {
        {"add", [=](const Tensor& a) { return add(a, s); }, [=](double x) { return x + s; }},
        {"sub", [=](const Tensor& a) { return sub(a, s); }, [=](double x) { return x - s; }},
        {"rsub", [=](const Tensor& a) { return rsub(s, a); }, [=](double x) { return s - x; }},
        {"mul", [=](const Tensor& a) { return mul(a, s); }, [=](double x) { return x * s; }},
        {"div", [=](const Tensor& a) { return div(a, s); }, [=](double x) { return x / s; }},
        {"rdiv", [=](const Tensor& a) { return rdiv(s, a); }, [=](double x) { return s / x; }, 0.4,
         2},
        {"maximum", [=](const Tensor& a) { return maximum(a, 0.25); },
         [=](double x) { return std::max(x, 0.25); }},
        {"minimum", [=](const Tensor& a) { return minimum(a, 0.25); },
         [=](double x) { return std::min(x, 0.25); }},
        {"tensor + double", [=](const Tensor& a) { return a + s; },
         [=](double x) { return x + s; }},
        {"double + tensor", [=](const Tensor& a) { return s + a; },
         [=](double x) { return s + x; }},
        {"tensor - double", [=](const Tensor& a) { return a - s; },
         [=](double x) { return x - s; }},
        {"double - tensor", [=](const Tensor& a) { return s - a; },
         [=](double x) { return s - x; }},
        {"tensor * double", [=](const Tensor& a) { return a * s; },
         [=](double x) { return x * s; }},
        {"double * tensor", [=](const Tensor& a) { return s * a; },
         [=](double x) { return s * x; }},
        {"tensor / double", [=](const Tensor& a) { return a / s; },
         [=](double x) { return x / s; }},
        {"double / tensor", [=](const Tensor& a) { return s / a; }, [=](double x) { return s / x; },
         0.4, -2},
        {"unary minus", [](const Tensor& a) { return -a; }, [](double x) { return -x; }},
    };
    for (const ScalarCase& c : cs) {
      for (Layout layout : kLayouts) {
        for (DType dt : {DType::f64, DType::f32}) {
          const std::string what = c.name + " " + dtype_name(dt) + " " + layout_name(layout);
          const Tensor a = randn_input({3, 4}, 61, layout, dt, c.scale, c.shift);
          const Tensor y = c.op(a);
          CHECK_MESSAGE(y.dtype() == dt, what);
          CHECK_MESSAGE((y.shape() == Shape{3, 4}), what);
          std::vector<double> ref = values(a);
          for (double& v : ref) v = c.ref(v);
          check_values(y, ref, dt == DType::f64 ? 4e-16 : 2.5e-7, 0, what);  // a few roundings
        }
        CAPTURE(c.name);
        CAPTURE(std::string(layout_name(layout)));
        const Tensor x = grad_input({2, 3}, 62, layout, c.scale, c.shift);
        auto f = [&c](const std::vector<Tensor>& in) { return c.op(in[0]); };
        CHECK_GRADCHECK(f, {x});
      }
    }
    // A 0-d tensor with a scalar stays 0-d.
    const Tensor z = scalar_tensor(2.0, {.dtype = DType::f64});
    CHECK((z * 3.0).shape() == Shape{});
    CHECK((z * 3.0).item<double>() == 6.0);
  }

  TEST_CASE("division by a scalar is a true division, bit for bit, not a product by 1/s") {
    // x · (1/s) differs from x / s in the last bit for many x when s is not a power of two (EDM's
    // positional embedding divides by half − 1 = 7, 15, ...): the oracle is the host's division.
    for (const double s : {3.0, 7.0, 15.0, 0.1, 1.7, 127.5}) {
      const Tensor a = randn_input({997}, 5, Layout::Strided, DType::f64, 10.0);
      const std::vector<double> x = values(a), y = values(div(a, s));
      const Tensor a32 = to(a, DType::f32);
      const std::vector<float> x32 = contiguous(a32).to_vector<float>(),
                               y32 = contiguous(div(a32, s)).to_vector<float>();
      size_t wrong64 = 0, wrong32 = 0, reciprocal_differs = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        wrong64 += y[i] != x[i] / s;
        wrong32 += y32[i] != x32[i] / float(s);
        reciprocal_differs += x[i] * (1.0 / s) != x[i] / s;
      }
      CAPTURE(s);
      CHECK(wrong64 == 0);
      CHECK(wrong32 == 0);
      // the oracle can tell the two apart for these divisors
      if (s != 0.1) CHECK(reciprocal_differs > 0);
    }
    // integers promote to f32 and divide there
    const Tensor i = from_vector(std::vector<int64_t>{1, 2, 3, 10}, {4}, {.dtype = DType::i64});
    const std::vector<float> q = div(i, 3.0).to_vector<float>();
    for (size_t k = 0; k < q.size(); ++k)
      CHECK(q[k] == float(std::vector<int>{1, 2, 3, 10}[k]) / 3.0f);
  }

  TEST_CASE("maximum and minimum with a scalar pass the whole gradient on ties, like clamp") {
    Tensor a = vec({-1.0, 0.25, 2.0});
    a.set_requires_grad(true);
    sum(maximum(a, 0.25)).backward();
    CHECK(values(a.grad()) == std::vector<double>{0, 1, 1});
    a.zero_grad();
    sum(minimum(a, 0.25)).backward();
    CHECK(values(a.grad()) == std::vector<double>{1, 1, 0});
  }

  TEST_CASE("dtype promotion of tensor-tensor arithmetic") {
    // f32 + f64 -> f64 (the f64 operand's digits survive)
    {
      const Tensor y = add(vec({1.0, 2.0}, DType::f32), vec({1e-12, 0.1}));
      CHECK(y.dtype() == DType::f64);
      check_values(y, {1.0 + 1e-12, 2.0 + 0.1}, 0, 0, "f32 + f64");
    }
    // i64 + f32 -> f32
    {
      const Tensor y = add(ivec({3, -4}), vec({0.5, 0.25}, DType::f32));
      CHECK(y.dtype() == DType::f32);
      check_values(y, {3.5, -3.75}, 0, 0, "i64 + f32");
    }
    // f16 + bf16 -> f32, exact sums of the rounded operands
    {
      const Tensor h = vec({1.0 + std::ldexp(1.0, -10), 3.0}, DType::f16);
      const Tensor b = vec({std::ldexp(1.0, -7), 0.5}, DType::bf16);
      const Tensor y = add(h, b);
      CHECK(y.dtype() == DType::f32);
      check_values(y, {1.0 + std::ldexp(1.0, -10) + std::ldexp(1.0, -7), 3.5}, 0, 0, "f16 + bf16");
      CHECK(mul(b, h).dtype() == DType::f32);
    }
    // bool arithmetic is i64
    {
      const Tensor t = bvec({true, true, false}), u = bvec({true, false, false});
      CHECK(add(t, u).dtype() == DType::i64);
      CHECK(ints(add(t, u)) == std::vector<int64_t>{2, 1, 0});
      CHECK(ints(sub(t, u)) == std::vector<int64_t>{0, 1, 0});
      CHECK(ints(mul(t, u)) == std::vector<int64_t>{1, 0, 0});
      CHECK(maximum(t, u).dtype() == DType::i64);
    }
    // int / int is true division in f32
    {
      const Tensor y = div(ivec({7, -7, 1}, DType::i32), ivec({2, 2, 3}, DType::i32));
      CHECK(y.dtype() == DType::f32);
      check_values(y, {3.5, -3.5, 1.0 / 3.0}, 1e-7, 0, "i32 / i32");
      CHECK(div(ivec({7}), ivec({2})).dtype() == DType::f32);
      CHECK(pow(ivec({2}), ivec({10})).dtype() == DType::f32);
      CHECK(pow(ivec({2}), ivec({10})).item<double>() == 1024.0);
    }
    // Integer arithmetic is exact in the wider type.
    {
      const int64_t big = (int64_t(1) << 53) + 1;  // not representable in f64
      const Tensor y = add(ivec({big, -big}), ivec({2, 0}, DType::i32));
      CHECK(y.dtype() == DType::i64);
      CHECK(ints(y) == std::vector<int64_t>{big + 2, -big});
      CHECK(ints(mul(ivec({big}), ivec({1}))) == std::vector<int64_t>{big});
      CHECK(ints(add(ivec({big}), ivec({1}), 3.0)) == std::vector<int64_t>{big + 3});
      CHECK(ints(maximum(ivec({big, 5}), ivec({big - 1, 6}))) == std::vector<int64_t>{big, 6});
      CHECK(ints(minimum(ivec({big, 5}), ivec({big - 1, 6}))) == std::vector<int64_t>{big - 1, 5});
      const Tensor u8 = from_vector(std::vector<uint8_t>{200, 7}, {2});
      const Tensor i32 = add(u8, ivec({100, -10}, DType::i32));
      CHECK(i32.dtype() == DType::i32);
      CHECK(ints(i32) == std::vector<int64_t>{300, -3});
    }
  }

  TEST_CASE("dtype of tensor-scalar arithmetic") {
    const Tensor i = ivec({3, -4}, DType::i32);
    // a fractional scalar promotes an integer tensor to f32
    CHECK(add(i, 2.5).dtype() == DType::f32);
    check_values(add(i, 2.5), {5.5, -1.5}, 0, 0, "i32 + 2.5");
    check_values(mul(i, 0.5), {1.5, -2.0}, 0, 0, "i32 * 0.5");
    check_values(rsub(0.5, i), {-2.5, 4.5}, 0, 0, "0.5 - i32");
    CHECK(maximum(i, 0.5).dtype() == DType::f32);
    check_values(maximum(i, 0.5), {3, 0.5}, 0, 0, "maximum(i32, 0.5)");
    // an integral scalar keeps the integer dtype, exactly
    const int64_t big = (int64_t(1) << 53) + 1;
    CHECK(add(i, 2.0).dtype() == DType::i32);
    CHECK(ints(add(i, 2.0)) == std::vector<int64_t>{5, -2});
    CHECK(ints(add(ivec({big}), 1.0)) == std::vector<int64_t>{big + 1});
    CHECK(ints(mul(ivec({big}), 1.0)) == std::vector<int64_t>{big});
    CHECK(ints(sub(ivec({big}), 2.0)) == std::vector<int64_t>{big - 2});
    CHECK(ints(rsub(10.0, i)) == std::vector<int64_t>{7, 14});
    CHECK(ints(maximum(i, 0.0)) == std::vector<int64_t>{3, 0});
    CHECK(ints(minimum(i, 0.0)) == std::vector<int64_t>{0, -4});
    CHECK(ints(-i) == std::vector<int64_t>{-3, 4});
    // division by a scalar is true division
    CHECK(div(i, 2.0).dtype() == DType::f32);
    check_values(div(i, 2.0), {1.5, -2.0}, 0, 0, "i32 / 2");
    CHECK(rdiv(1.0, i).dtype() == DType::f32);
    check_values(rdiv(1.0, i), {1.0 / 3.0, -0.25}, 1e-7, 0, "1 / i32");
    // bool with an integral scalar computes in i64
    CHECK(add(bvec({true, false}), 1.0).dtype() == DType::i64);
    CHECK(ints(add(bvec({true, false}), 1.0)) == std::vector<int64_t>{2, 1});
    // the 16-bit floats keep their dtype with a double
    CHECK(mul(vec({1.5}, DType::bf16), 3.0).dtype() == DType::bf16);
    CHECK(add(vec({1.5}, DType::f16), 0.1).dtype() == DType::f16);
  }

  TEST_CASE("comparisons with broadcasting, mixed dtypes and non-contiguous inputs") {
    using CmpFn = std::function<Tensor(const Tensor&, const Tensor&)>;
    using CmpScalarFn = std::function<Tensor(const Tensor&, double)>;
    struct Cmp {
      std::string name;
      CmpFn op;
      CmpScalarFn sop;
      std::function<bool(double, double)> ref;
    };
    const std::vector<Cmp> cs = {
        {"eq", [](auto& a, auto& b) { return eq(a, b); },
         [](auto& a, double s) { return eq(a, s); }, [](double x, double y) { return x == y; }},
        {"ne", [](auto& a, auto& b) { return ne(a, b); },
         [](auto& a, double s) { return ne(a, s); }, [](double x, double y) { return x != y; }},
        {"lt", [](auto& a, auto& b) { return lt(a, b); },
         [](auto& a, double s) { return lt(a, s); }, [](double x, double y) { return x < y; }},
        {"le", [](auto& a, auto& b) { return le(a, b); },
         [](auto& a, double s) { return le(a, s); }, [](double x, double y) { return x <= y; }},
        {"gt", [](auto& a, auto& b) { return gt(a, b); },
         [](auto& a, double s) { return gt(a, s); }, [](double x, double y) { return x > y; }},
        {"ge", [](auto& a, auto& b) { return ge(a, b); },
         [](auto& a, double s) { return ge(a, s); }, [](double x, double y) { return x >= y; }},
    };
    // Small integer-valued operands so that ties occur; NaN compares unequal to everything.
    const Tensor a = with_layout(from_vector(std::vector<double>{-1, 0, 1, 2, NAN, 1}, {3, 2}),
                                 Layout::Transposed);
    const Tensor b = with_layout(vec({0, 1}), Layout::Strided);
    const Tensor a32 = to(a, DType::f32), bi = to(b, DType::i64);
    for (const Cmp& c : cs) {
      CAPTURE(c.name);
      const RefFn ref = [&c](double x, double y) { return c.ref(x, y) ? 1.0 : 0.0; };
      for (const auto& [x, y] : {std::pair{a, b}, std::pair{a32, bi}, std::pair{b, a}}) {
        const Tensor r = c.op(x, y);
        CHECK(r.dtype() == DType::b8);
        CHECK(r.shape() == Shape{3, 2});
        check_values(r, ref_broadcast(ref, x, y, {3, 2}), 0, 0, c.name);
      }
      for (double s : {1.0, 0.5, double(NAN)}) {
        std::vector<double> want = values(a);
        for (double& v : want) v = c.ref(v, s) ? 1 : 0;
        check_values(c.sop(a, s), want, 0, 0, c.name + " scalar");
      }
      // Integer tensors against fractional scalars compare by value (0 < 0.5, 1 > 0.5).
      const Tensor iv = ivec({-1, 0, 1, 2}, DType::i32);
      for (double s : {0.5, -0.5, 1.0}) {
        std::vector<double> want(4);
        for (size_t k = 0; k < 4; ++k) want[k] = c.ref(double(k) - 1, s) ? 1 : 0;
        check_values(c.sop(iv, s), want, 0, 0, c.name + " i32 scalar " + std::to_string(s));
      }
      // No gradient flows through comparisons.
      const Tensor g = grad_input({3}, 71);
      CHECK_FALSE(c.op(g, g).requires_grad());
      CHECK_FALSE(c.sop(g, 0.0).requires_grad());
    }
    CHECK_THROWS_AS(eq(vec({1, 2}), vec({1, 2, 3})), cm::Error);
  }

  TEST_CASE("logical_and and logical_or treat nonzero as true and broadcast") {
    const Tensor a = with_layout(from_vector(std::vector<double>{0, 2.5, -1, 0, NAN, 0}, {2, 3}),
                                 Layout::Transposed);
    const Tensor b = bvec({true, false, true});
    const Tensor y_and = logical_and(a, b), y_or = logical_or(a, b);
    CHECK(y_and.dtype() == DType::b8);
    CHECK(y_and.shape() == Shape{2, 3});
    CHECK(ints(y_and) == std::vector<int64_t>{0, 0, 1, 0, 0, 0});
    CHECK(ints(y_or) == std::vector<int64_t>{1, 1, 1, 1, 1, 1});
    const Tensor i = ivec({0, 3, 0}, DType::i32);
    CHECK(ints(logical_or(i, bvec({false, false, false}))) == std::vector<int64_t>{0, 1, 0});
    CHECK(ints(logical_and(i, ivec({5, 5, 5}))) == std::vector<int64_t>{0, 1, 0});
    CHECK_THROWS_AS(logical_and(bvec({true, false}), bvec({true, false, true})), cm::Error);
  }

  TEST_CASE("where: forward with broadcasting, scalar forms, dtypes and gradients") {
    const Tensor cond = with_layout(bvec({true, false, true}), Layout::Strided).reshape({3, 1});
    const Tensor a = randn_input({4}, 81, Layout::Strided);
    const Tensor b = scalar_tensor(-7.0, {.dtype = DType::f64});
    {
      const Tensor y = where(cond, a, b);
      CHECK(y.shape() == Shape{3, 4});
      std::vector<double> want(12);
      const std::vector<double> av = values(a);
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 4; ++j) want[size_t(i * 4 + j)] = i != 1 ? av[size_t(j)] : -7.0;
      check_values(y, want, 0, 0, "where tensor/tensor");
    }
    {
      const Tensor x = randn_input({3, 4}, 82, Layout::Transposed);
      const Tensor c = gt(x, 0.0);
      const std::vector<double> xv = values(x);
      std::vector<double> w1(12), w2(12);
      for (size_t k = 0; k < 12; ++k) {
        w1[k] = xv[k] > 0 ? xv[k] : 0.5;
        w2[k] = xv[k] > 0 ? -2.0 : xv[k];
      }
      check_values(where(c, x, 0.5), w1, 0, 0, "where tensor/scalar");
      check_values(where(c, -2.0, x), w2, 0, 0, "where scalar/tensor");
      CHECK(where(c, x, 0.5).dtype() == DType::f64);
      CHECK(where(c, to(x, DType::f32), 0.5).dtype() == DType::f32);
      CHECK(where(c, to(x, DType::f32), x).dtype() == DType::f64);
      CHECK(where(c, ivec(std::vector<int64_t>(12, 3)).reshape({3, 4}), 0.5).dtype() == DType::f32);
      const Tensor bi = where(c, ivec(std::vector<int64_t>(12, 3)).reshape({3, 4}),
                              ivec(std::vector<int64_t>(12, -3)).reshape({3, 4}));
      CHECK(bi.dtype() == DType::i64);
    }
    {
      // gradients: a gets g where cond, b gets g elsewhere, each summed to its shape.
      const Tensor c = from_vector(std::vector<bool>{true, false, false, true, true, false}, {2, 3},
                                   {.dtype = DType::b8});
      const Tensor ga = grad_input({3}, 83, Layout::Strided);
      const Tensor gb = grad_input({2, 1}, 84);
      auto f = [&c](const std::vector<Tensor>& in) { return where(c, in[0], in[1]); };
      CHECK_GRADCHECK(f, {ga, gb});
      auto fs = [&c](const std::vector<Tensor>& in) { return where(c, in[0], 1.5); };
      CHECK_GRADCHECK(fs, {grad_input({2, 3}, 85, Layout::Transposed)});
      auto sf = [&c](const std::vector<Tensor>& in) { return where(c, 1.5, in[0]); };
      CHECK_GRADCHECK(sf, {grad_input({2, 3}, 86, Layout::Strided)});
      Tensor a1 = grad_input({3}, 87), b1 = grad_input({2, 1}, 88);
      sum(where(c, a1, b1)).backward();
      // a1[j] counts the rows where column j is true; b1[i] the false entries of row i.
      CHECK(values(a1.grad()) == std::vector<double>{2, 1, 0});
      CHECK(values(b1.grad()) == std::vector<double>{2, 1});
    }
    CHECK_THROWS_AS(where(vec({1, 0}), vec({1, 2}), vec({3, 4})),
                    cm::Error);  // condition must be bool
  }

  TEST_CASE("add_scaled is the composite mul(add(a, b), s), bit for bit in f32 and f64") {
    for (DType dt : {DType::f32, DType::f64}) {
      for (Layout l : {Layout::Contiguous, Layout::Transposed, Layout::ChannelsLast}) {
        CAPTURE(dtype_name(dt));
        const Tensor a = randn_input({2, 6, 5, 4}, 301, l, dt),
                     b = randn_input({2, 6, 5, 4}, 302, l, dt);
        const Tensor c = randn_input({6, 1, 1}, 303, Layout::Contiguous, dt);  // broadcast
        for (const Tensor& other : {b, c}) {
          const Tensor fused = add_scaled(a, other, std::sqrt(0.5));
          const Tensor composite = mul(add(a, other), std::sqrt(0.5));
          CHECK(fused.to_vector<double>() == composite.to_vector<double>());
        }
      }
    }
    // 16-bit: a + b stays in f32 before the scaling (one rounding, not two)
    const Tensor a = randn_input({64}, 304, Layout::Contiguous, DType::bf16),
                 b = randn_input({64}, 305, Layout::Contiguous, DType::bf16);
    const Tensor want = to(mul(add(to(a, DType::f32), to(b, DType::f32)), 0.3), DType::bf16);
    CHECK(add_scaled(a, b, 0.3).to_vector<double>() == want.to_vector<double>());
  }

  TEST_CASE("incompatible broadcast shapes are errors naming the op and both shapes") {
    const Tensor a = randn_input({2, 3}, 91), b = randn_input({4}, 92);
    const std::vector<std::pair<std::string, std::function<Tensor()>>> calls = {
        {"add", [&] { return add(a, b); }},
        {"sub", [&] { return sub(a, b); }},
        {"mul", [&] { return mul(a, b); }},
        {"div", [&] { return div(a, b); }},
        {"pow", [&] { return pow(a, b); }},
        {"maximum", [&] { return maximum(a, b); }},
        {"minimum", [&] { return minimum(a, b); }},
        {"lerp", [&] { return lerp(a, b, 0.5); }},
        {"add_scaled", [&] { return add_scaled(a, b, 0.5); }},
        {"where", [&] { return where(gt(a, 0.0), a, b); }},
    };
    for (const auto& [name, call] : calls) {
      CAPTURE(name);
      std::string msg;
      try {
        call();
      } catch (const cm::Error& e) {
        msg = e.what();
      }
      CHECK_MESSAGE(msg.find(name) != std::string::npos, msg);
      CHECK_MESSAGE(msg.find("[2, 3]") != std::string::npos, msg);
      CHECK_MESSAGE(msg.find("[4]") != std::string::npos, msg);
    }
    CHECK_THROWS_AS(add(randn_input({2, 3}, 93), randn_input({3, 2}, 94)), cm::Error);
    CHECK_THROWS_AS(a + randn_input({2, 1, 2}, 95), cm::Error);
  }
}
