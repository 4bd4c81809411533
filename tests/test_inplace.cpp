// In-place updates (autograd/ops/inplace.cpp): add_/sub_/mul_/div_/lerp_/clamp_/copy_/zero_/fill_/
// addcmul_/addcdiv_ against f64 reference loops on contiguous and non-contiguous destinations with
// broadcast operands, version counter bumps, the grad-mode refusals, and shape errors.
#include <cmath>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "helpers.h"

using namespace cm;
using namespace cm::test;

namespace {

// The values of an operand of shape `os` broadcast (NumPy rules) to shape `xs`, row-major.
std::vector<double> broadcast_ref(const std::vector<double>& ov, const Shape& os, const Shape& xs) {
  const int64_t n = shape_numel(xs);
  const size_t lead = xs.size() - os.size();
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    int64_t rem = i, oi = 0, ostride = 1;
    for (size_t d = xs.size(); d-- > 0;) {
      const int64_t idx = rem % xs[d];
      rem /= xs[d];
      if (d >= lead) {
        const int64_t od = os[d - lead];
        oi += (od == 1 ? 0 : idx) * ostride;
        ostride *= od;
      }
    }
    out[size_t(i)] = ov[size_t(oi)];
  }
  return out;
}

void check_close(const std::vector<double>& got, const std::vector<double>& want,
                 double tol = 1e-12) {
  REQUIRE(got.size() == want.size());
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool ok = std::isnan(want[i])
                        ? std::isnan(got[i])
                        : std::fabs(got[i] - want[i]) <= tol * std::max(1.0, std::fabs(want[i]));
    if (!ok && bad++ < 3) MESSAGE("element ", i, ": got ", got[i], ", want ", want[i]);
  }
  CHECK(bad == 0);
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

using BinaryRef = std::function<double(double, double)>;
using TensorUpdate = std::function<void(Tensor&, const Tensor&)>;

// Runs `update(x, other)` for every destination layout and operand shape, and compares with
// ref(x, other) elementwise; checks the version bump and that the update stays in place.
void check_binary_update(const char* name, const TensorUpdate& update, const BinaryRef& ref,
                         double shift = 0) {
  const Shape xs = {2, 3, 4};
  for (Layout l : kLayouts) {
    for (const Shape& os : {Shape{2, 3, 4}, Shape{4}, Shape{3, 1}, Shape{1, 1, 1}, Shape{}}) {
      CAPTURE(std::string(name));
      CAPTURE(std::string(layout_name(l)));
      CAPTURE(shape_str(os));
      Tensor x = randn_input(xs, 1, l);
      Tensor o = randn_input(os, 2, os.size() >= 2 ? Layout::Transposed : Layout::Contiguous,
                             DType::f64, 1.0, shift);
      const std::vector<double> xv = values(x);
      const std::vector<double> ob = broadcast_ref(values(o), os, xs);
      const void* data = x.data_ptr();
      const Shape strides = x.strides();
      const uint64_t v0 = x.version();
      update(x, o);
      CHECK(x.version() == v0 + 1);
      CHECK(x.data_ptr() == data);
      CHECK(x.strides() == strides);
      std::vector<double> want(xv.size());
      for (size_t i = 0; i < xv.size(); ++i) want[i] = ref(xv[i], ob[i]);
      check_close(values(x), want);
    }
  }
}

}  // namespace

TEST_SUITE("autograd") {
  TEST_CASE("in-place binary updates match reference loops") {
    check_binary_update(
        "add_", [](Tensor& x, const Tensor& o) { add_(x, o); },
        [](double a, double b) { return a + b; });
    check_binary_update(
        "add_ alpha", [](Tensor& x, const Tensor& o) { add_(x, o, -0.75); },
        [](double a, double b) { return a - 0.75 * b; });
    check_binary_update(
        "sub_", [](Tensor& x, const Tensor& o) { sub_(x, o); },
        [](double a, double b) { return a - b; });
    check_binary_update(
        "sub_ alpha", [](Tensor& x, const Tensor& o) { sub_(x, o, 2.5); },
        [](double a, double b) { return a - 2.5 * b; });
    check_binary_update(
        "mul_", [](Tensor& x, const Tensor& o) { mul_(x, o); },
        [](double a, double b) { return a * b; });
    check_binary_update(
        "div_", [](Tensor& x, const Tensor& o) { div_(x, o); },
        [](double a, double b) { return a / b; }, 3.0);
    check_binary_update(
        "lerp_", [](Tensor& x, const Tensor& o) { lerp_(x, o, 0.3); },
        [](double a, double b) { return a + 0.3 * (b - a); });
    check_binary_update(
        "copy_", [](Tensor& x, const Tensor& o) { copy_(x, o); },
        [](double, double b) { return b; });
    check_binary_update(
        "addcmul_", [](Tensor& x, const Tensor& o) { addcmul_(x, o, o, 0.5); },
        [](double a, double b) { return a + 0.5 * b * b; });
    check_binary_update(
        "addcdiv_", [](Tensor& x, const Tensor& o) { addcdiv_(x, o, exp(o), -2.0); },
        [](double a, double b) { return a - 2.0 * b / std::exp(b); });
  }

  TEST_CASE("in-place scalar updates match reference loops") {
    struct Case {
      const char* name;
      std::function<void(Tensor&)> update;
      std::function<double(double)> ref;
    };
    const std::vector<Case> cases = {
        {"add_ scalar", [](Tensor& x) { add_(x, 1.25); }, [](double a) { return a + 1.25; }},
        {"mul_ scalar", [](Tensor& x) { mul_(x, -3.0); }, [](double a) { return a * -3.0; }},
        {"clamp_", [](Tensor& x) { clamp_(x, -0.5, 0.25); },
         [](double a) { return std::min(std::max(a, -0.5), 0.25); }},
        {"clamp_ lo", [](Tensor& x) { clamp_(x, 0.1, std::nullopt); },
         [](double a) { return std::max(a, 0.1); }},
        {"clamp_ hi", [](Tensor& x) { clamp_(x, std::nullopt, -0.2); },
         [](double a) { return std::min(a, -0.2); }},
        {"fill_", [](Tensor& x) { fill_(x, 4.5); }, [](double) { return 4.5; }},
        {"zero_", [](Tensor& x) { zero_(x); }, [](double) { return 0.0; }},
    };
    for (const Case& c : cases) {
      for (Layout l : kLayouts) {
        CAPTURE(std::string(c.name));
        CAPTURE(std::string(layout_name(l)));
        Tensor x = randn_input({3, 5}, 3, l);
        const std::vector<double> xv = values(x);
        const uint64_t v0 = x.version();
        c.update(x);
        CHECK(x.version() == v0 + 1);
        std::vector<double> want;
        for (double a : xv) want.push_back(c.ref(a));
        check_close(values(x), want);
      }
    }
    CHECK_THROWS_WITH_AS(
        [] {
          Tensor x = on_test_device(zeros({2}));
          clamp_(x, std::nullopt, std::nullopt);
        }(),
        doctest::Contains("clamp_"), Error);
    // clamp_ keeps NaN
    Tensor n = on_test_device(from_vector(std::vector<double>{NAN, 5.0}, {2}));
    clamp_(n, 0.0, 1.0);
    CHECK(std::isnan(values(n)[0]));
    CHECK(values(n)[1] == 1.0);
  }

  TEST_CASE("in-place updates write only the view's elements") {
    Tensor base = on_test_device(zeros({4, 6}, {.dtype = DType::f64}));
    Tensor cols = slice(base, 1, 1, 6, 2);  // columns 1, 3, 5
    fill_(cols, 3.0);
    Tensor rows = base.narrow(0, 1, 2).transpose(0, 1);  // rows 1, 2, transposed view
    add_(rows, on_test_device(from_vector(std::vector<double>{10, 20},
                                          {2})));  // broadcast along the view's last dim
    std::vector<double> want(24, 0.0);
    for (int r = 0; r < 4; ++r)
      for (int c = 0; c < 6; ++c) {
        double v = (c % 2 == 1) ? 3.0 : 0.0;
        if (r == 1) v += 10;
        if (r == 2) v += 20;
        want[size_t(r * 6 + c)] = v;
      }
    CHECK(values(base) == want);
    CHECK(base.version() == 2);
  }

  TEST_CASE("operand dtypes, integer destinations and self-aliasing") {
    SUBCASE("an f64 operand into f32 and f16 destinations") {
      Tensor x = on_test_device(from_vector(std::vector<float>{1, 2, 3}, {3}));
      add_(x, on_test_device(from_vector(std::vector<double>{0.1, 0.2, 0.3}, {3})));
      CHECK(x.dtype() == DType::f32);
      CHECK(x.to_vector<float>() == std::vector<float>{1 + 0.1f, 2 + 0.2f, 3 + 0.3f});
      Tensor h = on_test_device(zeros({2}, {.dtype = DType::f16}));
      add_(h, on_test_device(from_vector(std::vector<double>{1.0 / 3, 1e5}, {2})));
      CHECK(h.to_vector<Half>()[0].bits == Half(1.0f / 3).bits);
      CHECK(std::isinf(h.to_vector<float>()[1]));
    }
    SUBCASE("integer destinations") {
      Tensor i = on_test_device(from_vector(std::vector<int64_t>{1, -2, 3}, {3}));
      add_(i, on_test_device(from_vector(std::vector<int64_t>{10, 20, 30}, {3})), 2);
      CHECK(i.to_vector<int64_t>() == std::vector<int64_t>{21, 38, 63});
      mul_(i, 2.0);
      CHECK(i.to_vector<int64_t>() == std::vector<int64_t>{42, 76, 126});
      clamp_(i, 50, 100);
      CHECK(i.to_vector<int64_t>() == std::vector<int64_t>{50, 76, 100});
      fill_(i, 7.9);
      CHECK(i.to_vector<int64_t>() == std::vector<int64_t>(3, 7));
    }
    SUBCASE("the destination as its own operand") {
      Tensor x = on_test_device(from_vector(std::vector<double>{1, -2, 3}, {3}));
      add_(x, x);
      CHECK(values(x) == std::vector<double>{2, -4, 6});
      mul_(x, x);
      CHECK(values(x) == std::vector<double>{4, 16, 36});
      addcmul_(x, x, x, 1.0);
      CHECK(values(x) == std::vector<double>{20, 272, 1332});
    }
  }

  TEST_CASE("operands that overlap the destination are read before it is written") {
    auto m = [] {
      return on_test_device(arange(0.0, 9.0, 1.0, {.dtype = DType::f64})).reshape({3, 3});
    };
    auto at = [](int r, int c) { return double(r * 3 + c); };
    SUBCASE("a transposed view of the destination") {
      Tensor x = m();
      add_(x, x.transpose(0, 1));
      std::vector<double> want;
      for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 3; ++c) want.push_back(at(r, c) + at(c, r));
      CHECK(values(x) == want);
      Tensor y = m();
      copy_(y, y.transpose(0, 1));
      want.clear();
      for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 3; ++c) want.push_back(at(c, r));
      CHECK(values(y) == want);
    }
    SUBCASE("a row of the destination broadcast over it") {
      Tensor x = m();
      sub_(x, x.select(0, 0));
      std::vector<double> want;
      for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 3; ++c) want.push_back(at(r, c) - at(0, c));
      CHECK(values(x) == want);
      Tensor y = m();
      lerp_(y, y.select(1, 2).unsqueeze(1), 0.5);
      want.clear();
      for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 3; ++c) want.push_back(at(r, c) + 0.5 * (at(r, 2) - at(r, c)));
      CHECK(values(y) == want);
    }
    SUBCASE("a shifted view") {
      Tensor x = on_test_device(arange(0.0, 6.0, 1.0, {.dtype = DType::f64}));
      Tensor head = x.narrow(0, 1, 5);
      copy_(head, x.narrow(0, 0, 5));  // shift right by one
      CHECK(values(x) == std::vector<double>{0, 0, 1, 2, 3, 4});
    }
    SUBCASE("an expanded destination is refused") {
      Tensor b = on_test_device(zeros({3, 1}, {.dtype = DType::f64}));
      Tensor e = b.expand({3, 4});
      CHECK_THROWS_WITH_AS(add_(e, on_test_device(arange(0.0, 4.0, 1.0, {.dtype = DType::f64}))),
                           doctest::Contains("several elements at one memory location"), Error);
      CHECK_THROWS_WITH_AS(fill_(e, 1.0), doctest::Contains("fill_"), Error);
      CHECK_THROWS_AS(copy_(e, on_test_device(zeros({3, 4}))), Error);
      CHECK(values(b) == std::vector<double>(3, 0.0));
      // a size-1 expansion is not an overlap
      Tensor one = on_test_device(zeros({1})).expand({1, 1});
      fill_(one, 2.0);
      CHECK(one.item<float>() == 2.0f);
    }
  }

  TEST_CASE("copy_ converts, broadcasts and writes strided destinations") {
    SUBCASE("dtype conversion") {
      Tensor d = on_test_device(zeros({4}, {.dtype = DType::i32}));
      copy_(d, on_test_device(from_vector(std::vector<double>{1.9, -1.9, 0.5, 100.0}, {4})));
      CHECK(d.to_vector<int32_t>() == std::vector<int32_t>{1, -1, 0, 100});
      Tensor b = on_test_device(zeros({3}, {.dtype = DType::b8}));
      copy_(b, on_test_device(from_vector(std::vector<float>{0.0f, -0.5f, 2.0f}, {3})));
      CHECK(b.to_vector<bool>() == std::vector<bool>{false, true, true});
      Tensor f = on_test_device(zeros({3}));
      copy_(f, b);
      CHECK(f.to_vector<float>() == std::vector<float>{0, 1, 1});
      Tensor h = on_test_device(zeros({2}, {.dtype = DType::bf16}));
      copy_(h, on_test_device(
                   from_vector(std::vector<float>{1.0f + std::ldexp(1.0f, -8), 3.0f}, {2})));
      CHECK(h.to_vector<BFloat16>()[0].bits == 0x3F80);
    }
    SUBCASE("broadcast source into a non-contiguous destination") {
      for (Layout l : kLayouts) {
        CAPTURE(std::string(layout_name(l)));
        Tensor d = randn_input({3, 4}, 9, l, DType::f32);
        Tensor src = on_test_device(from_vector(std::vector<double>{1, 2, 3}, {3, 1}));
        copy_(d, src);
        check_close(values(d), broadcast_ref({1, 2, 3}, {3, 1}, {3, 4}));
        Tensor s2 = randn_input({3, 4}, 10, Layout::Transposed);
        copy_(d, s2);
        check_close(values(d), values(s2), 1e-7);
      }
    }
    SUBCASE("shape errors") {
      Tensor d = on_test_device(zeros({3, 4}));
      CHECK_THROWS_WITH_AS(copy_(d, on_test_device(zeros({4, 3}))), doctest::Contains("copy_"),
                           Error);
      CHECK_THROWS_WITH_AS(copy_(d, on_test_device(zeros({2, 3, 4}))),
                           doctest::Contains("does not broadcast"), Error);
    }
  }

  TEST_CASE("in-place updates refuse tensors that require grad while grad mode is on") {
    using Update = std::function<void(Tensor&, const Tensor&)>;
    const std::vector<std::pair<const char*, Update>> updates = {
        {"add_", [](Tensor& x, const Tensor& o) { add_(x, o); }},
        {"sub_", [](Tensor& x, const Tensor& o) { sub_(x, o); }},
        {"mul_", [](Tensor& x, const Tensor& o) { mul_(x, o); }},
        {"div_", [](Tensor& x, const Tensor& o) { div_(x, o); }},
        {"lerp_", [](Tensor& x, const Tensor& o) { lerp_(x, o, 0.5); }},
        {"copy_", [](Tensor& x, const Tensor& o) { copy_(x, o); }},
        {"addcmul_", [](Tensor& x, const Tensor& o) { addcmul_(x, o, o); }},
        {"addcdiv_", [](Tensor& x, const Tensor& o) { addcdiv_(x, o, o); }},
    };
    for (const auto& [name, update] : updates) {
      CAPTURE(std::string(name));
      Tensor w = on_test_device(from_vector(std::vector<double>{1, 2}, {2})).set_requires_grad();
      Tensor c = on_test_device(from_vector(std::vector<double>{3, 4}, {2}));
      Tensor plain = on_test_device(from_vector(std::vector<double>{5, 6}, {2}));
      // the destination requires grad
      std::string msg = message_of([&] { update(w, c); });
      CHECK(msg.find(name) != std::string::npos);
      CHECK(msg.find("requires grad") != std::string::npos);
      CHECK(w.version() == 0);
      CHECK(values(w) == std::vector<double>{1, 2});
      // an operand requires grad
      msg = message_of([&] { update(plain, w); });
      CHECK(msg.find(name) != std::string::npos);
      CHECK(msg.find("requires grad") != std::string::npos);
      CHECK(values(plain) == std::vector<double>{5, 6});
      // a non-leaf requires grad too
      Tensor y = w * 1.0;
      CHECK_THROWS_AS(update(y, c), Error);
      // under NoGradGuard all of them run
      {
        NoGradGuard ng;
        update(w, c);
        update(plain, w);
      }
      CHECK(w.version() == 1);
      CHECK(plain.version() == 1);
      CHECK(w.requires_grad());
      CHECK(w.is_leaf());
    }
    Tensor w = on_test_device(from_vector(std::vector<double>{1, 2}, {2})).set_requires_grad();
    for (auto f : std::vector<std::function<void()>>{[&] { add_(w, 1.0); }, [&] { mul_(w, 2.0); },
                                                     [&] { clamp_(w, 0.0, 1.0); },
                                                     [&] { fill_(w, 1.0); }, [&] { zero_(w); }}) {
      CHECK_THROWS_WITH_AS(f(), doctest::Contains("NoGradGuard"), Error);
    }
    CHECK(values(w) == std::vector<double>{1, 2});
  }

  TEST_CASE("an SGD-style update under NoGradGuard, then a fresh forward") {
    Tensor w = on_test_device(from_vector(std::vector<double>{1.0, -2.0}, {2})).set_requires_grad();
    (w * w).sum().backward();  // grad 2w
    {
      NoGradGuard ng;
      add_(w, w.grad(), -0.25);  // w ← w − 0.25·2w = w/2
    }
    CHECK(values(w) == std::vector<double>{0.5, -1.0});
    w.zero_grad();
    (w * w).sum().backward();
    CHECK(values(w.grad()) == std::vector<double>{1.0, -2.0});
  }

  TEST_CASE("operands must broadcast to the destination's shape") {
    Tensor x = on_test_device(zeros({2, 3}, {.dtype = DType::f64}));
    CHECK_THROWS_WITH_AS(add_(x, on_test_device(zeros({4}, {.dtype = DType::f64}))),
                         doctest::Contains("add_"), Error);
    CHECK_THROWS_WITH_AS(mul_(x, on_test_device(zeros({2, 2, 3}, {.dtype = DType::f64}))),
                         doctest::Contains("mul_"), Error);
    CHECK_THROWS_WITH_AS(sub_(x, on_test_device(zeros({2, 1, 1}, {.dtype = DType::f64}))),
                         doctest::Contains("sub_"), Error);
    CHECK_THROWS_WITH_AS(lerp_(x, on_test_device(zeros({3, 3}, {.dtype = DType::f64})), 0.5),
                         doctest::Contains("lerp_"), Error);
    CHECK_THROWS_AS(div_(x, on_test_device(zeros({2}, {.dtype = DType::f64}))), Error);
    CHECK_THROWS_AS(addcmul_(x, on_test_device(zeros({3}, {.dtype = DType::f64})),
                             on_test_device(zeros({4}, {.dtype = DType::f64}))),
                    Error);
    CHECK_THROWS_AS(addcdiv_(x, on_test_device(ones({2, 3, 1}, {.dtype = DType::f64})),
                             on_test_device(ones({3}, {.dtype = DType::f64}))),
                    Error);
    // the destination's shape never grows
    Tensor row = on_test_device(zeros({3}, {.dtype = DType::f64}));
    CHECK_THROWS_WITH_AS(add_(row, on_test_device(ones({2, 3}, {.dtype = DType::f64}))),
                         doctest::Contains("does not broadcast"), Error);
    CHECK(values(row) == std::vector<double>(3, 0.0));
    CHECK(row.version() == 0);
    CHECK(x.version() == 0);
  }

}  // TEST_SUITE
