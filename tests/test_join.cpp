// Joining and splitting: cat, stack, split, chunk and pad (constant with cropping, reflect,
// replicate) against f64 reference loops and hand-worked values, in all layouts; errors; gradcheck.
#include <doctest/doctest.h>

#include <algorithm>
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

// Names as std::string (doctest's INFO prints a const char* as a pointer).
std::string lname(Layout l) {
  return cm::test::layout_name(l);
}
std::string mname(PadMode m) {
  return m == PadMode::Constant ? "constant" : m == PadMode::Reflect ? "reflect" : "replicate";
}

int64_t prod(const Shape& s, size_t begin, size_t end) {
  int64_t p = 1;
  for (size_t i = begin; i < end; ++i) p *= s[i];
  return p;
}

// cat in row-major order: for each index of the dims before `dim`, each input's block in turn.
std::vector<double> ref_cat(const std::vector<Tensor>& xs, int64_t dim) {
  const Shape& s = xs[0].shape();
  const int64_t outer = prod(s, 0, size_t(dim)), inner = prod(s, size_t(dim) + 1, s.size());
  std::vector<std::vector<double>> vs;
  for (const Tensor& x : xs) vs.push_back(values(x));
  std::vector<double> out;
  for (int64_t o = 0; o < outer; ++o)
    for (size_t p = 0; p < xs.size(); ++p) {
      const int64_t block = xs[p].shape()[size_t(dim)] * inner;
      out.insert(out.end(), vs[p].begin() + o * block, vs[p].begin() + (o + 1) * block);
    }
  return out;
}

// stack: the same with blocks of one index of the new dim.
std::vector<double> ref_stack(const std::vector<Tensor>& xs, int64_t dim) {
  const Shape& s = xs[0].shape();
  const int64_t outer = prod(s, 0, size_t(dim)), inner = prod(s, size_t(dim), s.size());
  std::vector<double> out;
  for (int64_t o = 0; o < outer; ++o)
    for (const Tensor& x : xs) {
      const std::vector<double> v = values(x);
      out.insert(out.end(), v.begin() + o * inner, v.begin() + (o + 1) * inner);
    }
  return out;
}

// The values of x narrowed to [start, start + len) along dim.
std::vector<double> ref_narrow(const Tensor& x, int64_t dim, int64_t start, int64_t len) {
  const Shape& s = x.shape();
  const int64_t outer = prod(s, 0, size_t(dim)), inner = prod(s, size_t(dim) + 1, s.size());
  const int64_t n = s[size_t(dim)];
  const std::vector<double> v = values(x);
  std::vector<double> out;
  for (int64_t o = 0; o < outer; ++o)
    out.insert(out.end(), v.begin() + (o * n + start) * inner,
               v.begin() + (o * n + start + len) * inner);
  return out;
}

// torch.nn.functional.pad: output index i of a padded dim reads input index i − left, mapped back
// into range by the mode (constant: `value` outside; reflect: mirrored without repeating the edge;
// replicate: clamped). Negative pads crop.
std::vector<double> ref_pad(const Tensor& x, const Shape& pads, PadMode mode, double value,
                            Shape* out_shape) {
  const Shape s = x.shape();
  const int64_t nd = int64_t(s.size());
  Shape left(size_t(nd), 0), os = s;
  for (size_t k = 0; k < pads.size() / 2; ++k) {
    const size_t d = size_t(nd - 1 - int64_t(k));
    left[d] = pads[2 * k];
    os[d] = s[d] + pads[2 * k] + pads[2 * k + 1];
  }
  *out_shape = os;
  const std::vector<double> v = values(x);
  std::vector<double> out;
  const int64_t n_out = prod(os, 0, os.size());
  for (int64_t i = 0; i < n_out; ++i) {
    int64_t rem = i, src = 0, stride = 1;
    bool outside = false;
    for (int64_t d = nd - 1; d >= 0; --d) {
      const int64_t q = rem % os[size_t(d)], n = s[size_t(d)];
      rem /= os[size_t(d)];
      int64_t j = q - left[size_t(d)];
      if (mode == PadMode::Reflect) {
        if (j < 0) j = -j;
        if (j >= n) j = 2 * (n - 1) - j;
      } else if (mode == PadMode::Replicate) {
        j = std::clamp<int64_t>(j, 0, n - 1);
      } else if (j < 0 || j >= n) {
        outside = true;
      }
      src += j * stride;
      stride *= n;
    }
    out.push_back(outside ? value : v[size_t(src)]);
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
#define CHECK_ERROR_MENTIONS(expr, text)                                                          \
  do {                                                                                            \
    const std::string _msg = error_of([&] { (void)(expr); });                                     \
    CHECK_MESSAGE(_msg.find(text) != std::string::npos, "message: '", _msg, "' should mention '", \
                  text, "'");                                                                     \
  } while (0)

}  // namespace

TEST_SUITE("ops") {
  TEST_CASE("cat of several inputs along any dim, in all layouts") {
    for (int64_t dim : {0, 1, 2, -1, -2, -3}) {
      const int64_t d = dim < 0 ? dim + 3 : dim;
      for (Layout l0 : kLayouts)
        for (Layout l1 : kLayouts) {
          INFO("dim ", dim, " ", lname(l0), " ", lname(l1));
          // sizes 2, 3, 1 (and an empty piece) along the cat dim
          std::vector<Tensor> xs;
          int64_t k = 0;
          for (int64_t n : {2, 3, 0, 1}) {
            Shape s = {2, 3, 4};
            s[size_t(d)] = n;
            xs.push_back(randn_input(s, uint64_t(10 + k), k % 2 ? l1 : l0));
            ++k;
          }
          const Tensor y = cat(xs, dim);
          Shape want = {2, 3, 4};
          want[size_t(d)] = 6;
          CHECK(y.shape() == want);
          CHECK(values(y) == ref_cat(xs, d));
        }
    }
    // a single input is copied
    const Tensor x = randn_input({2, 3}, 1, Layout::Transposed);
    CHECK(values(cat({x}, 1)) == values(x));
  }

  TEST_CASE("cat promotes mixed dtypes") {
    const Tensor f32 = randn_input({2, 2}, 1, Layout::Contiguous, DType::f32);
    const Tensor f64 = randn_input({2, 3}, 2, Layout::Transposed);
    const Tensor i32 = from_vector<int32_t>({1, -2, 3, 4}, {2, 2});
    const Tensor i64 = from_vector<int64_t>({5, 6}, {2, 1});
    const Tensor f16 = to(from_vector<double>({0.5, 1.5}, {2, 1}), DType::f16);
    const Tensor bf16 = to(from_vector<double>({-2, 3}, {2, 1}), DType::bf16);
    const Tensor b8 = from_vector<bool>({true, false}, {2, 1});
    struct Case {
      std::vector<Tensor> xs;
      DType want;
    };
    for (const Case& c : std::vector<Case>{{{f32, f64}, DType::f64},
                                           {{i32, f32}, DType::f32},
                                           {{i32, i64}, DType::i64},
                                           {{f16, bf16}, DType::f32},
                                           {{b8, i32}, DType::i32},
                                           {{f16, i64, f16}, DType::f16}}) {
      INFO(std::string(dtype_name(c.want)));
      const Tensor y = cat(c.xs, -1);
      CHECK(y.dtype() == c.want);
      CHECK(values(y) == ref_cat(c.xs, 1));
    }
  }

  TEST_CASE("stack along any dim") {
    for (int64_t dim : {0, 1, 2, -1, -3})
      for (Layout layout : kLayouts) {
        INFO("dim ", dim, " ", lname(layout));
        const int64_t d = dim < 0 ? dim + 3 : dim;
        std::vector<Tensor> xs;
        for (uint64_t k = 0; k < 3; ++k)
          xs.push_back(randn_input({2, 4}, 20 + k, k == 1 ? layout : Layout::Contiguous));
        const Tensor y = stack(xs, dim);
        Shape want = {2, 4};
        want.insert(want.begin() + d, 3);
        CHECK(y.shape() == want);
        CHECK(values(y) == ref_stack(xs, d));
      }
    // stacking 0-d tensors makes a vector
    const Tensor v = stack({scalar_tensor(1.0), scalar_tensor(2.0)}, 0);
    CHECK(v.shape() == Shape{2});
    CHECK(values(v) == std::vector<double>{1, 2});
  }

  TEST_CASE("split by size, by sizes, and chunk") {
    for (Layout layout : kLayouts) {
      INFO(lname(layout));
      const Tensor x = randn_input({7, 5}, 30, layout);
      // by size 3 along dim 0: 3, 3, 1 (the last piece shorter)
      const std::vector<Tensor> a = split(x, 3, 0);
      REQUIRE(a.size() == 3);
      const int64_t lens[] = {3, 3, 1};
      for (size_t i = 0; i < 3; ++i) {
        CHECK(a[i].shape() == Shape{lens[i], 5});
        CHECK(values(a[i]) == ref_narrow(x, 0, int64_t(3 * i), lens[i]));
      }
      // by size along the last dim (negative): 2, 2, 1
      const std::vector<Tensor> b = split(x, 2, -1);
      REQUIRE(b.size() == 3);
      CHECK(b[2].shape() == Shape{7, 1});
      CHECK(values(b[1]) == ref_narrow(x, 1, 2, 2));
      CHECK(values(b[2]) == ref_narrow(x, 1, 4, 1));
      // by sizes, with an empty piece
      const std::vector<Tensor> c = split(x, Shape{2, 0, 5}, 0);
      REQUIRE(c.size() == 3);
      CHECK(c[1].shape() == Shape{0, 5});
      CHECK(values(c[0]) == ref_narrow(x, 0, 0, 2));
      CHECK(values(c[2]) == ref_narrow(x, 0, 2, 5));
      // a size larger than the dim gives one piece
      CHECK(split(x, 10, 1).size() == 1);
      // chunk: ceil(n / chunks) per piece, as torch.chunk (so 7 in 3 is 3, 3, 1 and 5 in 4 is 2, 2,
      // 1)
      const std::vector<Tensor> d = chunk(x, 3, 0);
      REQUIRE(d.size() == 3);
      CHECK(d[2].shape() == Shape{1, 5});
      CHECK(values(d[1]) == ref_narrow(x, 0, 3, 3));
      const std::vector<Tensor> e = chunk(x, 4, -1);
      REQUIRE(e.size() == 3);
      CHECK(e[0].shape() == Shape{7, 2});
      CHECK(values(e[2]) == ref_narrow(x, 1, 4, 1));
      CHECK(chunk(x, 7, 0).size() == 7);
      CHECK(chunk(x, 10, 0).size() == 7);
    }
    // split pieces are views of x
    const Tensor x = randn_input({4, 2}, 31);
    CHECK(split(x, 2, 0)[1].storage() == x.storage());
  }

  TEST_CASE("pad with hand-worked values") {
    const Tensor v = from_vector<double>({1, 2, 3}, {3});
    CHECK(values(pad(v, {2, 1}, PadMode::Constant, 9)) == std::vector<double>{9, 9, 1, 2, 3, 9});
    CHECK(values(pad(v, {2, 1})) == std::vector<double>{0, 0, 1, 2, 3, 0});
    CHECK(values(pad(v, {-1, 1})) == std::vector<double>{2, 3, 0});
    CHECK(values(pad(v, {0, -2})) == std::vector<double>{1});
    CHECK(values(pad(v, {-3, 0})).empty());
    CHECK(values(pad(v, {2, 1}, PadMode::Reflect)) == std::vector<double>{3, 2, 1, 2, 3, 2});
    CHECK(values(pad(v, {2, 1}, PadMode::Replicate)) == std::vector<double>{1, 1, 1, 2, 3, 3});
    const Tensor m = from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
    CHECK(values(pad(m, {1, 1, 1, 1}, PadMode::Reflect)) ==
          std::vector<double>{5, 4, 5, 6, 5, 2, 1, 2, 3, 2, 5, 4, 5, 6, 5, 2, 1, 2, 3, 2});
    CHECK(values(pad(m, {0, 1, 1, 0}, PadMode::Replicate)) ==
          std::vector<double>{1, 2, 3, 3, 1, 2, 3, 3, 4, 5, 6, 6});
    CHECK(values(pad(m, {1, -1, -1, 1}, PadMode::Constant, -1)) ==
          std::vector<double>{-1, 4, 5, -1, -1, -1});
    // integers keep their dtype
    const Tensor i = from_vector<int64_t>({4, 5}, {2});
    const Tensor pi = pad(i, {1, 0}, PadMode::Constant, 7);
    CHECK(pi.dtype() == DType::i64);
    CHECK(pi.to_vector<int64_t>() == std::vector<int64_t>{7, 4, 5});
  }

  TEST_CASE("pad matches the reference in all modes, layouts and 1-3 padded dims") {
    struct Case {
      PadMode mode;
      Shape pads;
    };
    const std::vector<Case> cases = {
        {PadMode::Constant, {1, 2}},
        {PadMode::Constant, {0, 0}},
        {PadMode::Constant, {-1, 2}},
        {PadMode::Constant, {2, -3}},
        {PadMode::Constant, {1, -2, 2, 0}},
        {PadMode::Constant, {0, 1, -1, -1}},
        {PadMode::Constant, {1, 1, -1, 1, 2, -1}},
        {PadMode::Constant, {-2, -1, 0, 0, 1, 1}},
        {PadMode::Reflect, {2, 1}},
        {PadMode::Reflect, {3, 3}},
        {PadMode::Reflect, {1, 2, 2, 1}},
        {PadMode::Reflect, {0, 3, 0, 2}},
        {PadMode::Reflect, {1, 1, 1, 1, 1, 0}},
        {PadMode::Replicate, {3, 2}},
        {PadMode::Replicate, {0, 5}},
        {PadMode::Replicate, {2, 0, 1, 3}},
        {PadMode::Replicate, {1, 2, 1, 1, 2, 1}},
    };
    for (const Case& c : cases)
      for (Layout layout : kLayouts)
        for (double value : {0.0, -2.5}) {
          INFO(mname(c.mode), " pads ", shape_str(c.pads), " ", lname(layout), " value ", value);
          const Tensor x = randn_input({2, 3, 4}, 40, layout);
          Shape want;
          const std::vector<double> ref = ref_pad(x, c.pads, c.mode, value, &want);
          const Tensor y = pad(x, c.pads, c.mode, value);
          CHECK(y.shape() == want);
          CHECK(values(y) == ref);
        }
    // f32 and f16 keep their dtype and values
    for (DType t : {DType::f32, DType::f16}) {
      const Tensor x = randn_input({3, 4}, 41, Layout::Transposed, t);
      for (PadMode mode : {PadMode::Constant, PadMode::Reflect, PadMode::Replicate}) {
        Shape want;
        const Tensor y = pad(x, {1, 2, 2, 1}, mode, 1.5);
        CHECK(y.dtype() == t);
        CHECK(values(y) == ref_pad(x, {1, 2, 2, 1}, mode, 1.5, &want));
      }
    }
  }

  TEST_CASE("join and pad errors") {
    const Tensor a = randn_input({2, 3}, 1), b = randn_input({3, 3}, 2);
    CHECK_THROWS_AS(cat({a, b}, 1), cm::Error);
    CHECK_ERROR_MENTIONS(cat({a, b}, 1), "cat");
    CHECK_ERROR_MENTIONS(cat({a, b}, 1), "[3, 3]");
    CHECK_ERROR_MENTIONS(cat({a, randn_input({2}, 3)}, 0), "rank");
    CHECK_ERROR_MENTIONS(cat({}, 0), "cat");
    CHECK_ERROR_MENTIONS(cat({a, a}, 2), "cat");
    CHECK_ERROR_MENTIONS(stack({a, b}, 0), "stack");
    CHECK_THROWS_AS(stack({a, a}, 3), cm::Error);
    CHECK_ERROR_MENTIONS(split(b, Shape{1, 1}, 0), "split");
    CHECK_ERROR_MENTIONS(split(b, 0, 0), "split");
    CHECK_THROWS_AS(split(b, 1, 2), cm::Error);
    CHECK_ERROR_MENTIONS(chunk(b, 0, 0), "chunk");
    // pad: reflect needs pads smaller than the dim; an even pad list, at most two per dim
    CHECK_THROWS_AS(pad(a, {3, 0}, PadMode::Reflect), cm::Error);
    CHECK_ERROR_MENTIONS(pad(a, {0, 3}, PadMode::Reflect), "pad");
    CHECK_ERROR_MENTIONS(pad(a, {0, 0, 2, 0}, PadMode::Reflect), "reflect");
    CHECK_ERROR_MENTIONS(pad(a, {1, 2, 3}), "pad");
    CHECK_THROWS_AS(pad(a, {1}, PadMode::Replicate), cm::Error);
    CHECK_THROWS_AS(pad(a, {1, 1, 1, 1, 1, 1}), cm::Error);
    CHECK_THROWS_AS(pad(a, {-1, 0}, PadMode::Reflect), cm::Error);
    CHECK_THROWS_AS(pad(a, {-1, 0}, PadMode::Replicate), cm::Error);
    CHECK_ERROR_MENTIONS(pad(a, {-2, -2}), "pad");  // a negative size
    CHECK_ERROR_MENTIONS(pad(zeros({2, 0}), {1, 1}, PadMode::Replicate), "pad");
  }

  TEST_CASE("gradcheck: cat, stack, split, chunk") {
    for (Layout layout : kLayouts) {
      INFO(lname(layout));
      const Tensor a = grad_input({2, 3}, 50, layout), b = grad_input({2, 2}, 51),
                   c = grad_input({2, 1}, 52, layout);
      CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return cat(in, -1); }, {a, b, c});
      const Tensor d = grad_input({1, 3}, 53, layout);
      CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return cat(in, 0); }, {a, d});
      for (int64_t dim : {0, 1, 2, -1})
        CHECK_GRADCHECK([dim](const std::vector<Tensor>& in) { return stack(in, dim); },
                        {a, grad_input({2, 3}, 54), grad_input({2, 3}, 55, layout)});
      const Tensor x = grad_input({5, 3}, 56, layout);
      for (size_t piece = 0; piece < 3; ++piece) {
        INFO("piece ", piece);
        CHECK_GRADCHECK(
            [piece](const std::vector<Tensor>& in) { return split(in[0], 2, 0)[piece]; }, {x});
        CHECK_GRADCHECK(
            [piece](const std::vector<Tensor>& in) {
              return split(in[0], Shape{1, 3, 1}, 0)[piece];
            },
            {x});
        CHECK_GRADCHECK(
            [piece](const std::vector<Tensor>& in) { return chunk(in[0], 3, 0)[piece]; }, {x});
      }
      // all pieces used at once, with different weights
      CHECK_GRADCHECK(
          [](const std::vector<Tensor>& in) {
            const std::vector<Tensor> p = chunk(in[0], 2, 1);
            return cat({mul(p[0], 2.0), square(p[1])}, 1);
          },
          {x});
    }
    // mixed dtypes: the gradient reaches the f64 input through the promotion
    const Tensor g = grad_input({2, 2}, 57);
    const Tensor f = randn_input({2, 1}, 58, Layout::Contiguous, DType::f32);
    CHECK_GRADCHECK([f](const std::vector<Tensor>& in) { return cat({f, in[0]}, 1); }, {g});
  }

  TEST_CASE("gradcheck: pad in all three modes") {
    struct Case {
      PadMode mode;
      Shape pads;
    };
    const std::vector<Case> cases = {
        {PadMode::Constant, {1, 2}},
        {PadMode::Constant, {-1, 1, 1, -1}},
        {PadMode::Constant, {1, 0, 0, 1, 1, 0}},
        {PadMode::Reflect, {2, 1}},
        {PadMode::Reflect, {1, 1, 1, 0}},
        {PadMode::Replicate, {2, 1}},
        {PadMode::Replicate, {1, 2, 1, 1}},
    };
    for (const Case& c : cases)
      for (Layout layout : kLayouts) {
        INFO(mname(c.mode), " pads ", shape_str(c.pads), " ", lname(layout));
        const Tensor x = grad_input({2, 2, 3}, 60, layout);
        CHECK_GRADCHECK(
            [&](const std::vector<Tensor>& in) { return pad(in[0], c.pads, c.mode, 0.5); }, {x});
      }
    // reflect and replicate add up the gradient of every copy of an element
    Tensor v = from_vector<double>({1, 2, 3}, {3});
    v.set_requires_grad(true);
    sum(pad(v, {2, 1}, PadMode::Reflect)).backward();
    CHECK(values(v.grad()) == std::vector<double>{1, 3, 2});
    v.zero_grad();
    sum(pad(v, {2, 1}, PadMode::Replicate)).backward();
    CHECK(values(v.grad()) == std::vector<double>{3, 1, 2});
    v.zero_grad();
    sum(pad(v, {-1, 1})).backward();
    CHECK(values(v.grad()) == std::vector<double>{0, 1, 1});
  }

}  // TEST_SUITE
