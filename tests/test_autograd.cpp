// The autograd engine (autograd/node.h, autograd/engine.cpp): accumulation into .grad, retained and
// freed graphs, grad mode, detach, requires_grad rules, shared inputs, multiple roots and seeds,
// hooks and retain_grad, saved-tensor version checks, gradient aliasing, sum_to_shape, deep chains
// and the memory held by a graph.
#include <pthread.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "helpers.h"

using namespace cm;
using namespace cm::test;

namespace {

Tensor vec(const std::vector<double>& v, bool requires_grad = false) {
  Tensor t = on_test_device(from_vector(v, {int64_t(v.size())}));
  if (requires_grad) t.set_requires_grad(true);
  return t;
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

int64_t allocated_bytes() {
  return allocator_for(test_device()).stats().allocated;
}

}  // namespace

TEST_SUITE("autograd") {
  TEST_CASE("gradients accumulate into .grad across backward calls") {
    Tensor x = vec({1, -2, 3}, true);
    CHECK(!x.grad().defined());
    (x * x).sum().backward();
    CHECK(values(x.grad()) == std::vector<double>{2, -4, 6});
    (x * 3.0).sum().backward();
    CHECK(values(x.grad()) == std::vector<double>{5, -1, 9});
    x.zero_grad();
    CHECK(!x.grad().defined());
    (x * 3.0).sum().backward();
    CHECK(values(x.grad()) == std::vector<double>{3, 3, 3});
    // set_grad replaces; shapes must match
    x.set_grad(vec({1, 1, 1}));
    (x * 2.0).sum().backward();
    CHECK(values(x.grad()) == std::vector<double>{3, 3, 3});
    CHECK_THROWS_WITH_AS(x.set_grad(vec({1, 1})), doctest::Contains("set_grad"), Error);
  }

  TEST_CASE("a second backward needs retain_graph") {
    Tensor x = vec({0.5, 1.5}, true);
    Tensor loss = exp(x).sum();
    loss.backward();
    const std::string msg = message_of([&] { loss.backward(); });
    CHECK(contains(msg, "a second time"));
    CHECK(contains(msg, "retain_graph"));

    x.zero_grad();
    Tensor loss2 = exp(x).sum();
    loss2.backward(Tensor(), true);
    loss2.backward(Tensor(), true);
    loss2.backward();
    const std::vector<double> g = values(x.grad());
    CHECK(g[0] == doctest::Approx(3 * std::exp(0.5)).epsilon(1e-14));
    CHECK(g[1] == doctest::Approx(3 * std::exp(1.5)).epsilon(1e-14));
    CHECK_THROWS_AS(loss2.backward(), Error);
  }

  TEST_CASE("grad mode: NoGradGuard, EnableGradGuard") {
    Tensor x = vec({1, 2}, true);
    CHECK(is_grad_enabled());
    {
      NoGradGuard ng;
      CHECK(!is_grad_enabled());
      Tensor y = x * 2.0;
      CHECK(!y.requires_grad());
      CHECK(y.is_leaf());
      CHECK(!y.grad_fn());
      CHECK(values(y) == std::vector<double>{2, 4});
      {
        EnableGradGuard eg;
        CHECK(is_grad_enabled());
        Tensor z = x * 2.0;
        CHECK(z.requires_grad());
        CHECK(!z.is_leaf());
        z.sum().backward();
        {
          NoGradGuard inner;
          CHECK(!is_grad_enabled());
        }
        CHECK(is_grad_enabled());
      }
      CHECK(!is_grad_enabled());
    }
    CHECK(is_grad_enabled());
    CHECK(values(x.grad()) == std::vector<double>{2, 2});
    // the guard restores on exceptions too
    try {
      NoGradGuard ng;
      throw Error("boom");
    } catch (const Error&) {
    }
    CHECK(is_grad_enabled());
    set_grad_enabled(false);
    CHECK(!(x * 2.0).requires_grad());
    set_grad_enabled(true);
  }

  TEST_CASE("detach and requires_grad propagation") {
    Tensor a = vec({1, 2, 3}, true);
    Tensor b = vec({4, 5, 6});
    CHECK(a.is_leaf());
    CHECK(b.is_leaf());
    CHECK(!b.requires_grad());
    Tensor c = a + b;
    CHECK(c.requires_grad());
    CHECK(!c.is_leaf());
    REQUIRE(c.grad_fn());
    CHECK(c.grad_fn()->name() == "add");
    CHECK(!(b * 2.0).requires_grad());
    CHECK(!(b * b).requires_grad());
    CHECK(exp(c).grad_fn()->name() == "exp");
    // comparisons carry no gradient
    CHECK(!gt(a, 1.0).requires_grad());

    Tensor d = c.detach();
    CHECK(!d.requires_grad());
    CHECK(d.is_leaf());
    Tensor loss = (c * d).sum();  // d is a constant: dloss/da = d = a + b
    loss.backward();
    CHECK(values(a.grad()) == std::vector<double>{5, 7, 9});

    SUBCASE("set_requires_grad on a non-leaf fails") {
      CHECK_THROWS_WITH_AS(c.set_requires_grad(true), doctest::Contains("leaf"), Error);
      CHECK_THROWS_AS(c.set_requires_grad(false), Error);
      b.set_requires_grad(true);
      CHECK(b.requires_grad());
      b.set_requires_grad(false);
      CHECK(!b.requires_grad());
    }
    SUBCASE("integer tensors cannot require grad") {
      for (DType dt : {DType::i32, DType::i64, DType::u8, DType::b8}) {
        Tensor t = on_test_device(zeros({2}, {.dtype = dt}));
        CHECK_THROWS_WITH_AS(t.set_requires_grad(true), doctest::Contains("floating"), Error);
        CHECK(!t.requires_grad());
      }
      Tensor f16 = on_test_device(zeros({2}, {.dtype = DType::f16}));
      f16.set_requires_grad(true);
      CHECK(f16.requires_grad());
    }
    SUBCASE("backward from a root that does not require grad fails") {
      CHECK_THROWS_WITH_AS((b * 2.0).sum().backward(), doctest::Contains("does not require grad"),
                           Error);
    }
  }

  TEST_CASE("shared inputs: diamonds and the same tensor twice") {
    SUBCASE("x used by two branches gets the summed gradient") {
      Tensor x = vec({0.5, -1.0, 2.0}, true);
      Tensor a = x * 2.0, b = sin(x);
      (a * b).sum().backward();  // d/dx 2x·sin x = 2 sin x + 2x cos x
      const std::vector<double> g = values(x.grad());
      for (size_t i = 0; i < 3; ++i) {
        const double v = values(x)[i];
        CHECK(g[i] == doctest::Approx(2 * std::sin(v) + 2 * v * std::cos(v)).epsilon(1e-14));
      }
      Tensor y = grad_input({4}, 3);
      CHECK_GRADCHECK([](const std::vector<Tensor>& v) { return exp(v[0]) * sin(v[0]) + v[0]; },
                      {y});
    }
    SUBCASE("mul(x, x)") {
      Tensor x = vec({1.5, -3.0}, true);
      mul(x, x).sum().backward();
      CHECK(values(x.grad()) == std::vector<double>{3, -6});
      Tensor y = vec({2.0}, true);
      Tensor z = y + y + y;
      z.backward();
      CHECK(values(y.grad()) == std::vector<double>{3});
    }
    SUBCASE("a leaf's hook sees the summed gradient once") {
      Tensor x = vec({1, 2}, true);
      int calls = 0;
      std::vector<double> seen;
      x.register_hook([&](const Tensor& g) {
        ++calls;
        seen = values(g);
        return Tensor();
      });
      (x * 2.0 + x * 5.0).sum().backward();
      CHECK(calls == 1);
      CHECK(seen == std::vector<double>{7, 7});
    }
  }

  TEST_CASE("multiple roots and seed gradients") {
    Tensor x = vec({1, 2, 3}, true);
    Tensor y1 = x * 2.0;
    Tensor y2 = x * x;
    backward({y1, y2}, {vec({1, 0, -1}), vec({0.5, 1, 2})});
    // 2·g1 + 2x·g2
    CHECK(values(x.grad()) == std::vector<double>{2 + 1, 0 + 4, -2 + 12});

    SUBCASE("an implicit seed only for one-element roots") {
      Tensor v = x * 2.0;
      CHECK_THROWS_WITH_AS(v.backward(), doctest::Contains("one-element"), Error);
      x.zero_grad();
      Tensor one = (x * 2.0).sum().reshape({1, 1});
      one.backward();
      CHECK(values(x.grad()) == std::vector<double>{2, 2, 2});
      x.zero_grad();
      v.backward(vec({1, 1, 1}));
      CHECK(values(x.grad()) == std::vector<double>{2, 2, 2});
    }
    SUBCASE("seed errors") {
      Tensor v = x * 2.0;
      CHECK_THROWS_WITH_AS(v.backward(vec({1, 1})), doctest::Contains("seed gradient"), Error);
      CHECK_THROWS_AS(backward({v, v}, {vec({1, 1, 1})}), Error);
    }
    SUBCASE("a root that is also an input of another root") {
      x.zero_grad();
      Tensor a = x * 3.0;
      Tensor b = a * a;
      backward({a, b}, {on_test_device(ones({3}, {.dtype = DType::f64})),
                        on_test_device(ones({3}, {.dtype = DType::f64}))});
      // 3 + 2a·3 = 3 + 18x
      CHECK(values(x.grad()) == std::vector<double>{21, 39, 57});
    }
  }

  TEST_CASE("hooks") {
    SUBCASE("a leaf hook that doubles the gradient") {
      Tensor x = vec({1, 2}, true);
      x.register_hook([](const Tensor& g) { return g * 2.0; });
      (x * 3.0).sum().backward();
      CHECK(values(x.grad()) == std::vector<double>{6, 6});
    }
    SUBCASE("a non-leaf hook changes what flows to its inputs") {
      Tensor x = vec({1, 2}, true);
      Tensor y = x * 3.0;
      y.register_hook([](const Tensor& g) { return g * 2.0; });
      (y * y).sum().backward();  // d/dy = 2y, doubled, times 3
      CHECK(values(x.grad()) == std::vector<double>{36, 72});
      CHECK(!y.grad().defined());  // non-leaves keep no gradient unless asked
    }
    SUBCASE("observing hooks leave the gradient alone") {
      Tensor x = vec({1, 2}, true);
      Tensor y = exp(x);
      std::vector<double> seen_y, seen_x;
      y.register_hook([&](const Tensor& g) {
        seen_y = values(g);
        return Tensor();
      });
      x.register_hook([&](const Tensor& g) {
        seen_x = values(g);
        return Tensor();
      });
      (y * 4.0).sum().backward();
      CHECK(seen_y == std::vector<double>{4, 4});
      CHECK(seen_x == values(x.grad()));
      CHECK(values(x.grad())[1] == doctest::Approx(4 * std::exp(2.0)).epsilon(1e-14));
    }
    SUBCASE("hooks run in order, each on the previous result") {
      Tensor x = vec({1}, true);
      x.register_hook([](const Tensor& g) { return g + 1.0; });
      x.register_hook([](const Tensor& g) { return g * 10.0; });
      (x * 2.0).sum().backward();
      CHECK(values(x.grad()) == std::vector<double>{30});
    }
    SUBCASE("a hook needs a tensor that requires grad") {
      Tensor c = vec({1});
      CHECK_THROWS_WITH_AS(c.register_hook([](const Tensor& g) { return g; }),
                           doctest::Contains("register_hook"), Error);
    }
    SUBCASE("post-accumulate hooks see .grad() holding the sum, once per backward") {
      Tensor x = vec({1, 2}, true);
      std::vector<std::vector<double>> seen;
      x.register_post_accumulate_grad_hook(
          [&](const Tensor& leaf) { seen.push_back(values(leaf.grad())); });
      x.register_hook([](const Tensor& g) { return g * 10.0; });  // runs before accumulation
      (x * 2.0 + x * x).sum().backward();  // both uses reach the leaf's one accumulation
      REQUIRE(seen.size() == 1);
      CHECK(seen[0] == std::vector<double>{40, 60});
      (x * 3.0).sum().backward();  // accumulates: the hook sees the running sum
      REQUIRE(seen.size() == 2);
      CHECK(seen[1] == std::vector<double>{70, 90});
      (exp(vec({1}, true))).sum().backward();  // x not in this graph: no call
      CHECK(seen.size() == 2);
      Tensor y = x * 2.0;
      CHECK_THROWS_WITH_AS(y.register_post_accumulate_grad_hook([](const Tensor&) {}),
                           doctest::Contains("only leaves"), Error);
      CHECK_THROWS_WITH_AS(vec({1}).register_post_accumulate_grad_hook([](const Tensor&) {}),
                           doctest::Contains("only leaves"), Error);
    }
  }

  TEST_CASE("retain_grad keeps a non-leaf's gradient") {
    Tensor x = vec({1, -2}, true);
    Tensor y = x * 3.0;
    Tensor w = y + 1.0;
    y.retain_grad();
    y.retain_grad();              // twice is once
    Tensor loss = (y * w).sum();  // d/dy = w + y = 2y + 1
    loss.backward(Tensor(), true);
    CHECK(values(y.grad()) == std::vector<double>{7, -11});
    CHECK(!w.grad().defined());
    CHECK(values(x.grad()) == std::vector<double>{21, -33});
    loss.backward();
    CHECK(values(y.grad()) == std::vector<double>{14, -22});  // accumulates
    x.retain_grad();                                          // a leaf keeps its gradient anyway
    CHECK_THROWS_AS(vec({1}).retain_grad(), Error);
  }

  TEST_CASE("modifying a saved tensor in place makes backward fail") {
    SUBCASE("an op's saved output") {
      Tensor x = vec({0.1, 0.2}, true);
      Tensor y = exp(x);  // saves y
      {
        NoGradGuard ng;
        add_(y, 1.0);
      }
      Tensor loss = y.sum();
      const std::string msg = message_of([&] { loss.backward(); });
      CHECK(contains(msg, "exp"));
      CHECK(contains(msg, "modified by an in-place operation"));
    }
    SUBCASE("a saved input that needs no gradient") {
      Tensor x = vec({1, 2}, true);
      Tensor w = vec({3, 4});
      Tensor loss = mul(x, w).sum();  // saves w for x's gradient
      add_(w, 1.0);                   // allowed: w does not require grad
      const std::string msg = message_of([&] { loss.backward(); });
      CHECK(contains(msg, "mul"));
      CHECK(contains(msg, "modified by an in-place operation"));
    }
    SUBCASE("a modification through a view is seen too") {
      Tensor x = vec({1, 2, 3}, true);
      Tensor w = vec({3, 4, 5});
      Tensor loss = mul(x, w).sum();
      Tensor part = w.narrow(0, 1, 1);
      fill_(part, 0.0);
      CHECK_THROWS_WITH_AS(loss.backward(), doctest::Contains("modified by an in-place operation"),
                           Error);
    }
    SUBCASE("modifying a tensor that was not saved is fine") {
      Tensor x = vec({1, 2}, true);
      Tensor y = x * 2.0;  // saves nothing that needs x
      Tensor z = y + 1.0;
      {
        NoGradGuard ng;
        add_(y, 5.0);
      }
      z.sum().backward();
      CHECK(values(x.grad()) == std::vector<double>{2, 2});
    }
  }

  TEST_CASE("leaf gradients are not aliased") {
    SUBCASE("one gradient tensor reaching two leaves") {
      Tensor a = vec({1, 2}, true), b = vec({3, 4}, true);
      (a + b).sum().backward();
      CHECK(a.grad().storage().get() != b.grad().storage().get());
      Tensor ga = a.grad();
      add_(ga, 10.0);
      CHECK(values(a.grad()) == std::vector<double>{11, 11});
      CHECK(values(b.grad()) == std::vector<double>{1, 1});
    }
    SUBCASE("a leaf used by several ops, and a leaf root") {
      Tensor a = vec({1, 2}, true), b = vec({5, 6}, true);
      (a * 1.0 + b * 1.0 + a).sum().backward();
      Tensor gb = b.grad();
      mul_(gb, 0.0);
      CHECK(values(a.grad()) == std::vector<double>{2, 2});
      Tensor seed = vec({1, 2});
      Tensor c = vec({0, 0}, true);
      c.backward(seed);
      add_(seed, 1.0);
      CHECK(values(c.grad()) == std::vector<double>{1, 2});
    }
  }

  TEST_CASE("sum_to_shape") {
    Tensor g = on_test_device(arange(0.0, 24.0, 1.0, {.dtype = DType::f64})).reshape({2, 3, 4});
    auto ref = [](int a, int b, int c) { return double(a * 12 + b * 4 + c); };
    {
      std::vector<double> want(3, 0.0);
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 3; ++b)
          for (int c = 0; c < 4; ++c) want[size_t(b)] += ref(a, b, c);
      Tensor r = sum_to_shape(g, {3, 1});
      CHECK(r.shape() == Shape{3, 1});
      CHECK(values(r) == want);
    }
    {
      std::vector<double> want(4, 0.0);
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 3; ++b)
          for (int c = 0; c < 4; ++c) want[size_t(c)] += ref(a, b, c);
      CHECK(values(sum_to_shape(g, {4})) == want);
      CHECK(values(sum_to_shape(g, {1, 1, 4})) == want);
    }
    {
      std::vector<double> want(2, 0.0);
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 3; ++b)
          for (int c = 0; c < 4; ++c) want[size_t(a)] += ref(a, b, c);
      CHECK(values(sum_to_shape(g, {2, 1, 1})) == want);
    }
    CHECK(sum_to_shape(g, {}).item<double>() == 276.0);
    CHECK(sum_to_shape(g, {1}).shape() == Shape{1});
    CHECK(sum_to_shape(g, {2, 3, 4}).same(g));
    // a non-contiguous gradient
    CHECK(values(sum_to_shape(g.transpose(0, 2), {1, 3, 2})) ==
          values(sum_to_shape(g, {2, 3, 1}).transpose(0, 2)));
    CHECK_THROWS_WITH_AS(sum_to_shape(g, {5}), doctest::Contains("sum_to_shape"), Error);
    CHECK_THROWS_AS(sum_to_shape(g, {2, 2, 4}), Error);
    CHECK_THROWS_AS(sum_to_shape(g, {1, 2, 3, 4}), Error);
    // the gradient of broadcasting uses it
    Tensor a = grad_input({3, 1}, 4), b = grad_input({2, 1, 4}, 5);
    CHECK_GRADCHECK([](const std::vector<Tensor>& v) { return v[0] * v[1]; }, {a, b});
  }

  TEST_CASE("deep chains do not overflow the stack") {
    Tensor x = vec({1.0, 2.0}, true);
    Tensor y = x;
    const int n = 10000;
    for (int i = 0; i < n; ++i) y = y * 1.0001;
    y.sum().backward();
    const double want = std::pow(1.0001, n);
    for (double g : values(x.grad())) CHECK(g == doctest::Approx(want).epsilon(1e-10));
    y = Tensor();  // frees the chain
    // a chain built from alternating ops, with the graph retained and freed
    Tensor z = x;
    for (int i = 0; i < n; ++i) z = (i % 2) ? z + 1.0 : z * 1.0;
    z.sum().backward(Tensor(), true);
    for (double g : values(x.grad())) CHECK(g == doctest::Approx(want + 1).epsilon(1e-10));
  }

  TEST_CASE("dropping a deep graph does not recurse") {
    const int64_t base = allocated_bytes();
    Tensor x = vec({1.0}, true);
    auto* chain = new Tensor(x);
    for (int i = 0; i < 20000; ++i) *chain = *chain * 1.0001;
    // Free the chain on a thread with a 256 KiB stack: one stack frame per node would not fit.
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_t thread;
    auto drop = [](void* p) -> void* {
      delete static_cast<Tensor*>(p);
      return nullptr;
    };
    REQUIRE(pthread_create(&thread, &attr, drop, chain) == 0);
    pthread_join(thread, nullptr);
    pthread_attr_destroy(&attr);
    x = Tensor();
    CHECK(allocated_bytes() == base);
  }

  TEST_CASE("the graph frees saved tensors after backward") {
    constexpr int64_t n = 512;
    const int64_t big = n * n * int64_t(sizeof(float));  // 1 MiB
    // Builds loss = sum(exp(x ⊗ x)) where exp's saved output (n×n) is held only by the graph;
    // returns the change in allocated bytes across backward.
    auto delta_over_backward = [&](bool retain) {
      Tensor x = on_test_device(rand({n}, {.requires_grad = true}));
      Tensor loss;
      {
        Tensor outer = x.unsqueeze(1) * x.unsqueeze(0);
        loss = exp(outer).sum();
      }
      const int64_t before = allocated_bytes();
      loss.backward(Tensor(), retain);
      const int64_t after = allocated_bytes();
      CHECK(x.grad().defined());
      return after - before;
    };
    const int64_t kept = delta_over_backward(true);
    const int64_t freed = delta_over_backward(false);
    CHECK(kept >= 0);  // the gradient of x, nothing else
    CHECK(kept < big / 4);
    CHECK(kept - freed >= big);  // without retain_graph the n×n saved output goes
    CHECK(freed < 0);

    SUBCASE("a graph that is dropped without backward frees everything (no cycles)") {
      const int64_t base = allocated_bytes();
      {
        Tensor x = on_test_device(rand({n}, {.requires_grad = true}));
        Tensor loss = exp(x.unsqueeze(1) * x.unsqueeze(0)).sum();
        CHECK(allocated_bytes() - base >= big);
      }
      CHECK(allocated_bytes() == base);
    }
  }

}  // TEST_SUITE
