// Indexing: index_select, gather, scatter_add and index_add against f64 reference loops (every dim,
// duplicate indices, i32 and i64 indices, non-contiguous operands), gradcheck in x and src, and
// errors that name the op and the bad value.
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

// Names as std::string (doctest's INFO prints a const char* as a pointer).
std::string lname(Layout l) {
  return cm::test::layout_name(l);
}
std::string tname(DType t) {
  return dtype_name(t);
}

// Row-major multi-index of linear index i in shape s, and back.
Shape unravel(int64_t i, const Shape& s) {
  Shape idx(s.size());
  for (size_t d = s.size(); d-- > 0;) {
    idx[d] = i % s[d];
    i /= s[d];
  }
  return idx;
}
int64_t ravel(const Shape& idx, const Shape& s) {
  int64_t i = 0;
  for (size_t d = 0; d < s.size(); ++d) i = i * s[d] + idx[d];
  return i;
}

// out[..., j, ...] = x[..., index[j], ...] along dim
std::vector<double> ref_index_select(const Tensor& x, int64_t dim,
                                     const std::vector<int64_t>& index, Shape* out_shape) {
  const std::vector<double> v = values(x);
  Shape os = x.shape();
  os[size_t(dim)] = int64_t(index.size());
  *out_shape = os;
  std::vector<double> out;
  for (int64_t i = 0; i < shape_numel(os); ++i) {
    Shape idx = unravel(i, os);
    idx[size_t(dim)] = index[size_t(idx[size_t(dim)])];
    out.push_back(v[size_t(ravel(idx, x.shape()))]);
  }
  return out;
}

// out[i] = x[i with i[dim] replaced by index[i]]; out has index's shape
std::vector<double> ref_gather(const Tensor& x, int64_t dim, const Tensor& index) {
  const std::vector<double> v = values(x);
  const std::vector<int64_t> iv = index.to_vector<int64_t>();
  std::vector<double> out;
  for (int64_t i = 0; i < index.numel(); ++i) {
    Shape idx = unravel(i, index.shape());
    idx[size_t(dim)] = iv[size_t(i)];
    out.push_back(v[size_t(ravel(idx, x.shape()))]);
  }
  return out;
}

// y = x; y[i with i[dim] replaced by index[i]] += src[i] for every i of index's shape
std::vector<double> ref_scatter_add(const Tensor& x, int64_t dim, const Tensor& index,
                                    const Tensor& src) {
  std::vector<double> y = values(x);
  const std::vector<double> sv = values(src);
  const std::vector<int64_t> iv = index.to_vector<int64_t>();
  for (int64_t i = 0; i < index.numel(); ++i) {
    Shape idx = unravel(i, index.shape());
    idx[size_t(dim)] = iv[size_t(i)];
    y[size_t(ravel(idx, x.shape()))] += sv[size_t(i)];
  }
  return y;
}

// y = x; y[..., index[j], ...] += src[..., j, ...] along dim
std::vector<double> ref_index_add(const Tensor& x, int64_t dim, const std::vector<int64_t>& index,
                                  const Tensor& src) {
  std::vector<double> y = values(x);
  const std::vector<double> sv = values(src);
  for (int64_t i = 0; i < src.numel(); ++i) {
    Shape idx = unravel(i, src.shape());
    idx[size_t(dim)] = index[size_t(idx[size_t(dim)])];
    y[size_t(ravel(idx, x.shape()))] += sv[size_t(i)];
  }
  return y;
}

// Close within a few f64 ulps (sums of duplicates may add in another order).
bool close(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::fabs(a[i] - b[i]) > 1e-14 * (1 + std::fabs(b[i]))) return false;
  return true;
}

// A random index tensor of shape s with values in [0, n), in the given layout and dtype.
Tensor random_index(const Shape& s, int64_t n, uint64_t seed, Layout layout, DType t = DType::i64) {
  Generator g(seed);
  return with_layout(randint(0, n, s, {.dtype = t}, &g), layout);
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
  TEST_CASE("index_select along every dim with duplicates, i32/i64 indices, any layout") {
    const Shape s = {4, 5, 3};
    for (Layout layout : kLayouts)
      for (DType it : {DType::i64, DType::i32})
        for (int64_t dim : {0, 1, 2, -1}) {
          INFO(lname(layout), " index ", tname(it), " dim ", dim);
          const int64_t d = dim < 0 ? dim + 3 : dim;
          const Tensor x = randn_input(s, 1, layout);
          const std::vector<int64_t> iv = {2, 0, 2, s[size_t(d)] - 1, 1, 2};  // duplicates
          const Tensor index = to(from_vector<int64_t>(iv, {6}), it);
          Shape want;
          const std::vector<double> ref = ref_index_select(x, d, iv, &want);
          const Tensor y = index_select(x, dim, index);
          CHECK(y.shape() == want);
          CHECK(values(y) == ref);
          // a strided index view
          const Tensor wide = to(
              from_vector<int64_t>({2, 9, 0, 9, 2, 9, s[size_t(d)] - 1, 9, 1, 9, 2, 9}, {12}), it);
          const Tensor sidx = slice(wide, 0, 0, 12, 2);
          CHECK(values(index_select(x, dim, sidx)) == ref);
        }
    // other dtypes, an empty index, a 0-d index
    const Tensor xi = from_vector<int32_t>({1, 2, 3, 4, 5, 6}, {3, 2});
    const Tensor yi = index_select(xi, 0, from_vector<int64_t>({2, 2, 0}, {3}));
    CHECK(yi.dtype() == DType::i32);
    CHECK(yi.to_vector<int64_t>() == std::vector<int64_t>{5, 6, 5, 6, 1, 2});
    CHECK(index_select(xi, 1, from_vector<int64_t>({}, {0})).shape() == Shape{3, 0});
    CHECK(index_select(xi, 1, scalar_tensor(1, {.dtype = DType::i64})).to_vector<int64_t>() ==
          std::vector<int64_t>{2, 4, 6});
    const Tensor xh = to(from_vector<double>({0.5, 1.5, 2.5}, {3}), DType::f16);
    CHECK(values(index_select(xh, 0, from_vector<int32_t>({2, 1}, {2}))) ==
          std::vector<double>{2.5, 1.5});
  }

  TEST_CASE("gather along dims 0..2, index smaller than x off the gather dim") {
    const Shape s = {3, 4, 5};
    for (Layout layout : kLayouts)
      for (Layout ilayout : {Layout::Contiguous, Layout::Transposed})
        for (int64_t dim : {0, 1, 2, -2}) {
          INFO(lname(layout), " index ", lname(ilayout), " dim ", dim);
          const int64_t d = dim < 0 ? dim + 3 : dim;
          const Tensor x = randn_input(s, 2, layout);
          // smaller in the other dims, longer than x along the gather dim (repeats are allowed)
          Shape is = {2, 3, 4};
          is[size_t(d)] = 6;
          for (DType it : {DType::i64, DType::i32}) {
            const Tensor index = random_index(is, s[size_t(d)], 3 + uint64_t(d), ilayout, it);
            const Tensor y = gather(x, dim, index);
            CHECK(y.shape() == is);
            CHECK(values(y) == ref_gather(x, d, index));
          }
        }
    // hand-worked: torch.gather(t, 1, [[0, 0], [1, 0]]) of [[1, 2], [3, 4]] is [[1, 1], [4, 3]]
    const Tensor t = from_vector<double>({1, 2, 3, 4}, {2, 2});
    CHECK(values(gather(t, 1, from_vector<int64_t>({0, 0, 1, 0}, {2, 2}))) ==
          std::vector<double>{1, 1, 4, 3});
  }

  TEST_CASE("scatter_add along dims 0..2: duplicates accumulate") {
    const Shape s = {3, 4, 5};
    for (Layout layout : kLayouts)
      for (int64_t dim : {0, 1, 2, -1}) {
        INFO(lname(layout), " dim ", dim);
        const int64_t d = dim < 0 ? dim + 3 : dim;
        const Tensor x = randn_input(s, 4, layout);
        Shape is = {2, 3, 4};
        is[size_t(d)] = 7;  // more entries than x's dim: duplicates for sure
        const Tensor index = random_index(is, s[size_t(d)], 5 + uint64_t(d), layout);
        const Tensor src = randn_input(is, 6, layout);
        const Tensor y = scatter_add(x, dim, index, src);
        CHECK(y.shape() == s);
        CHECK(close(values(y), ref_scatter_add(x, d, index, src)));
        CHECK(close(values(scatter_add(x, dim, to(index, DType::i32), src)), values(y)));
        // x is not modified (out of place)
        CHECK(values(x) == values(randn_input(s, 4, layout)));
      }
    // hand-worked: all of src lands on one element
    const Tensor z = zeros({2, 3}, {.dtype = DType::f64});
    const Tensor y = scatter_add(z, 1, from_vector<int64_t>({1, 1, 1, 0, 2, 0}, {2, 3}),
                                 from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3}));
    CHECK(values(y) == std::vector<double>{0, 6, 0, 10, 0, 5});
    // integer dtypes and a promoted src
    const Tensor zi = zeros({3}, {.dtype = DType::i64});
    const Tensor yi = scatter_add(zi, 0, from_vector<int64_t>({2, 2, 0}, {3}),
                                  from_vector<int32_t>({5, 6, 7}, {3}));
    CHECK(yi.dtype() == DType::i64);
    CHECK(yi.to_vector<int64_t>() == std::vector<int64_t>{7, 0, 11});
  }

  TEST_CASE("index_add along every dim: duplicates accumulate") {
    const Shape s = {4, 3, 5};
    for (Layout layout : kLayouts)
      for (DType it : {DType::i64, DType::i32})
        for (int64_t dim : {0, 1, 2, -1}) {
          INFO(lname(layout), " index ", tname(it), " dim ", dim);
          const int64_t d = dim < 0 ? dim + 3 : dim;
          const Tensor x = randn_input(s, 7, layout);
          const std::vector<int64_t> iv = {1, 0, 1, s[size_t(d)] - 1, 1};
          Shape ss = s;
          ss[size_t(d)] = 5;
          const Tensor src =
              randn_input(ss, 8, layout == Layout::Contiguous ? Layout::Transposed : layout);
          const Tensor y = index_add(x, dim, to(from_vector<int64_t>(iv, {5}), it), src);
          CHECK(y.shape() == s);
          CHECK(close(values(y), ref_index_add(x, d, iv, src)));
        }
    const Tensor y =
        index_add(zeros({3}, {.dtype = DType::f64}), 0, from_vector<int64_t>({0, 0, 2, 0}, {4}),
                  from_vector<double>({1, 2, 3, 4}, {4}));
    CHECK(values(y) == std::vector<double>{7, 0, 3});
  }

  TEST_CASE("gradcheck: index_select, gather, scatter_add, index_add (x and src)") {
    for (Layout layout : kLayouts) {
      INFO(lname(layout));
      const Tensor x = grad_input({3, 4, 2}, 10, layout);
      for (int64_t dim : {0, 1, -1}) {
        INFO("dim ", dim);
        const int64_t d = dim < 0 ? dim + 3 : dim;
        const int64_t n = x.shape()[size_t(d)];
        // index_select with duplicates: their gradients add up
        const Tensor isel = from_vector<int64_t>({n - 1, 0, n - 1}, {3});
        CHECK_GRADCHECK(
            [&](const std::vector<Tensor>& in) { return index_select(in[0], dim, isel); }, {x});
        // gather with an index smaller than x off the gather dim
        Shape is = {2, 3, 2};
        is[size_t(d)] = 3;
        const Tensor ig = random_index(is, n, 11 + uint64_t(d), layout);
        CHECK_GRADCHECK([&](const std::vector<Tensor>& in) { return gather(in[0], dim, ig); }, {x});
        // scatter_add in x and src
        const Tensor src = grad_input(is, 12, layout);
        CHECK_GRADCHECK(
            [&](const std::vector<Tensor>& in) { return scatter_add(in[0], dim, ig, in[1]); },
            {x, src});
        // index_add in x and src
        Shape ss = x.shape();
        ss[size_t(d)] = 3;
        const Tensor srca = grad_input(ss, 13, layout);
        CHECK_GRADCHECK(
            [&](const std::vector<Tensor>& in) { return index_add(in[0], dim, isel, in[1]); },
            {x, srca});
      }
    }
    // the gradient of index_select adds over duplicates: hand-worked
    Tensor v = from_vector<double>({1, 2, 3}, {3});
    v.set_requires_grad(true);
    index_select(v, 0, from_vector<int64_t>({2, 0, 2, 2}, {4}))
        .backward(from_vector<double>({1, 2, 3, 4}, {4}));
    CHECK(values(v.grad()) == std::vector<double>{2, 0, 8});
  }

  TEST_CASE("index errors name the op and the bad value") {
    const Tensor x = randn_input({3, 4}, 1);
    CHECK_THROWS_AS(index_select(x, 0, from_vector<int64_t>({0, 3}, {2})), cm::Error);
    CHECK_ERROR_MENTIONS(index_select(x, 0, from_vector<int64_t>({0, 3}, {2})), "index_select");
    CHECK_ERROR_MENTIONS(index_select(x, 0, from_vector<int64_t>({0, 7}, {2})), "7");
    CHECK_ERROR_MENTIONS(index_select(x, 1, from_vector<int64_t>({-1, 2}, {2})), "-1");
    CHECK_ERROR_MENTIONS(index_select(x, 1, from_vector<int32_t>({1, 9}, {2})), "9");
    CHECK_ERROR_MENTIONS(index_select(x, 0, from_vector<double>({0, 1}, {2})), "index_select");
    CHECK_ERROR_MENTIONS(index_select(x, 0, from_vector<int64_t>({0, 1}, {1, 2})), "index_select");
    CHECK_ERROR_MENTIONS(index_select(x, 2, from_vector<int64_t>({0}, {1})), "index_select");

    const Tensor ig = from_vector<int64_t>({0, 5, 1, 2}, {2, 2});
    CHECK_ERROR_MENTIONS(gather(x, 1, ig), "gather");
    CHECK_ERROR_MENTIONS(gather(x, 1, ig), "5");
    CHECK_ERROR_MENTIONS(gather(x, 0, from_vector<int64_t>({0, -2}, {1, 2})), "-2");
    CHECK_ERROR_MENTIONS(gather(x, 0, from_vector<int64_t>({0, 1}, {2})), "gather");     // rank
    CHECK_ERROR_MENTIONS(gather(x, 0, zeros({2, 5}, {.dtype = DType::i64})), "gather");  // too wide
    CHECK_ERROR_MENTIONS(scatter_add(x, 1, ig, randn_input({2, 2}, 2)), "scatter_add");
    CHECK_ERROR_MENTIONS(scatter_add(x, 1, ig, randn_input({2, 2}, 2)), "5");
    CHECK_ERROR_MENTIONS(
        scatter_add(x, 0, from_vector<int64_t>({-1, 0}, {1, 2}), randn_input({1, 2}, 2)), "-1");
    CHECK_ERROR_MENTIONS(
        scatter_add(x, 0, from_vector<int64_t>({0, 0}, {1, 2}), randn_input({2, 2}, 2)),
        "scatter_add");  // src shape
    CHECK_ERROR_MENTIONS(index_add(x, 0, from_vector<int64_t>({3}, {1}), randn_input({1, 4}, 3)),
                         "index_add");
    CHECK_ERROR_MENTIONS(index_add(x, 0, from_vector<int64_t>({6}, {1}), randn_input({1, 4}, 3)),
                         "6");
    CHECK_ERROR_MENTIONS(index_add(x, 1, from_vector<int64_t>({-4}, {1}), randn_input({3, 1}, 3)),
                         "-4");
    CHECK_ERROR_MENTIONS(index_add(x, 0, from_vector<int64_t>({0, 1}, {2}), randn_input({3, 4}, 3)),
                         "index_add");  // src shape
    // x is untouched by a failed call
    const std::vector<double> before = values(x);
    CHECK_THROWS_AS(index_add(x, 0, from_vector<int64_t>({9}, {1}), randn_input({1, 4}, 3)),
                    cm::Error);
    CHECK(values(x) == before);
  }

}  // TEST_SUITE
