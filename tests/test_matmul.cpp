// matmul with torch.matmul semantics (1-D promotion, batch broadcasting) against an f64 triple
// loop: every shape case, layouts and arbitrary strides, the small-loop and BLAS paths, float
// dtypes, empty sizes, errors, and gradcheck for each shape case.
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

const std::vector<DType> kFloatTypes = {DType::f64, DType::f32, DType::f16, DType::bf16};

// Names as std::string (doctest's INFO prints a const char* as a pointer).
std::string tname(DType t) {
  return dtype_name(t);
}
std::string lname(Layout l) {
  return cm::test::layout_name(l);
}

double ulp(double v, DType t) {
  int mant = 52, emin = -1022;
  if (t == DType::f32) mant = 23, emin = -126;
  if (t == DType::f16) mant = 10, emin = -14;
  if (t == DType::bf16) mant = 7, emin = -126;
  const int e = (v == 0 || !std::isfinite(v)) ? emin : std::max(std::ilogb(v), emin);
  return std::ldexp(1.0, e - mant);
}

struct RefProduct {
  Shape shape;
  std::vector<double> value;
  std::vector<double> abs_bound;  // Σ_k |a_ik|·|b_kj|, for the rounding-error bound
  int64_t K = 0;
};

// torch.matmul in f64 loops: a 1-D left operand is a row, a 1-D right operand a column (the added
// dims are dropped from the result), and the batch dims broadcast.
RefProduct ref_matmul(const Tensor& a, const Tensor& b) {
  Shape sa = a.shape(), sb = b.shape();
  const bool vec_a = sa.size() == 1, vec_b = sb.size() == 1;
  if (vec_a) sa.insert(sa.begin(), 1);
  if (vec_b) sb.push_back(1);
  const int64_t M = sa[sa.size() - 2], K = sa.back(), N = sb.back();
  const Shape ba(sa.begin(), sa.end() - 2), bb(sb.begin(), sb.end() - 2);
  const size_t nb = std::max(ba.size(), bb.size());
  // right-aligned batch shapes, padded with 1
  Shape pa(nb - ba.size(), 1), pb(nb - bb.size(), 1), batch(nb);
  pa.insert(pa.end(), ba.begin(), ba.end());
  pb.insert(pb.end(), bb.begin(), bb.end());
  for (size_t d = 0; d < nb; ++d) batch[d] = std::max(pa[d], pb[d]);
  const std::vector<double> av = values(a), bv = values(b);
  RefProduct r;
  r.K = K;
  int64_t nbatch = 1;
  for (int64_t s : batch) nbatch *= s;
  for (int64_t i = 0; i < nbatch; ++i) {
    // batch offsets (in matrices) of a and b, size-1 dims repeating
    int64_t rem = i, oa = 0, ob = 0, ma = 1, mb = 1;
    for (size_t d = nb; d-- > 0;) {
      const int64_t q = rem % batch[d];
      rem /= batch[d];
      oa += (pa[d] == 1 ? 0 : q) * ma;
      ob += (pb[d] == 1 ? 0 : q) * mb;
      ma *= pa[d];
      mb *= pb[d];
    }
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double s = 0, bound = 0;
        for (int64_t k = 0; k < K; ++k) {
          const double x = av[size_t(oa * M * K + m * K + k)],
                       y = bv[size_t(ob * K * N + k * N + n)];
          s += x * y;
          bound += std::fabs(x * y);
        }
        r.value.push_back(s);
        r.abs_bound.push_back(bound);
      }
  }
  r.shape = batch;
  if (!vec_a) r.shape.push_back(M);
  if (!vec_b) r.shape.push_back(N);
  return r;
}

// c against the reference: one ulp of c's dtype for the final rounding, plus the classical bound
// K·u·Σ|a||b| for the accumulation (u = 2^-53 in f64, 2^-24 in f32, where f16/bf16 compute).
void check_product(const Tensor& c, const Tensor& a, const Tensor& b, const std::string& what) {
  INFO(what);
  const RefProduct r = ref_matmul(a, b);
  REQUIRE(c.shape() == r.shape);
  const double u = c.dtype() == DType::f64 ? 0x1.0p-53 : 0x1.0p-24;
  const std::vector<double> got = values(c);
  int64_t bad = -1;
  for (size_t i = 0; i < got.size() && bad < 0; ++i) {
    const double tol =
        ulp(r.value[i], c.dtype()) + double(r.K + 1) * (u + 0x1.0p-53) * r.abs_bound[i];
    if (!(std::fabs(got[i] - r.value[i]) <= tol)) bad = int64_t(i);
  }
  if (bad >= 0)
    FAIL_CHECK("element " << bad << ": got " << got[size_t(bad)] << ", expected "
                          << r.value[size_t(bad)]);
  else
    CHECK(true);
}

// A view of shape s whose last two dims have strides 2 and 3 times the natural ones (offset too).
Tensor odd_strides(const Shape& s, uint64_t seed, DType t) {
  Shape big = s;
  const size_t n = s.size();
  big[n - 1] = 3 * s[n - 1] + 1;
  if (n >= 2) big[n - 2] = 2 * s[n - 2] + 1;
  Tensor base = randn_input(big, seed, Layout::Contiguous, t);
  Tensor v = slice(base, -1, 1, 1 + 3 * s[n - 1], 3);
  if (n >= 2) v = slice(v, -2, 1, 1 + 2 * s[n - 2], 2);
  return v;
}

struct ShapeCase {
  std::string name;
  Shape a, b;
};
const std::vector<ShapeCase> kShapeCases = {
    {"1-D·1-D (dot)", {5}, {5}},
    {"1-D·2-D", {4}, {4, 3}},
    {"2-D·1-D", {3, 4}, {4}},
    {"2-D·2-D", {3, 4}, {4, 5}},
    {"3-D·3-D", {2, 3, 4}, {2, 4, 5}},
    {"broadcast batch [2,1,M,K]·[3,K,N]", {2, 1, 3, 4}, {3, 4, 5}},
    {"3-D·2-D", {2, 3, 4}, {4, 5}},
    {"2-D·3-D", {3, 4}, {2, 4, 5}},
    {"1-D·3-D", {4}, {2, 4, 5}},
    {"3-D·1-D", {2, 3, 4}, {4}},
};

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
  TEST_CASE("matmul shape cases match the f64 reference in all layouts and float dtypes") {
    for (const ShapeCase& sc : kShapeCases)
      for (DType t : kFloatTypes)
        for (Layout la : kLayouts)
          for (Layout lb : kLayouts) {
            const Tensor a = randn_input(sc.a, 1, la, t), b = randn_input(sc.b, 2, lb, t);
            const Tensor c = matmul(a, b);
            CHECK(c.dtype() == t);
            check_product(c, a, b, sc.name + " " + tname(t) + " " + lname(la) + "·" + lname(lb));
          }
  }

  TEST_CASE("matmul 1-D·1-D is a 0-d dot product") {
    const Tensor a = from_vector<double>({1, 2, 3}, {3}), b = from_vector<double>({4, -5, 6}, {3});
    const Tensor c = matmul(a, b);
    CHECK(c.dim() == 0);
    CHECK(c.item<double>() == 12);
    // small integer-valued matrices: exact in every dtype
    const Tensor m = from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
    const Tensor n = from_vector<double>({1, 0, -1, 2, 0, 1}, {3, 2});
    for (DType t : kFloatTypes)
      CHECK(values(matmul(to(m, t), to(n, t))) == std::vector<double>{-1, 7, -1, 16});
  }

  TEST_CASE("matmul with arbitrary strides") {
    for (DType t : kFloatTypes)
      for (const ShapeCase& sc : kShapeCases) {
        const Tensor a = odd_strides(sc.a, 3, t), b = odd_strides(sc.b, 4, t);
        check_product(matmul(a, b), a, b, sc.name + " odd strides " + tname(t));
        // one operand transposed by a view, the other strided
        const Tensor at = with_layout(a, Layout::Transposed);
        check_product(matmul(at, b), at, b, sc.name + " transposed·strided " + tname(t));
      }
    // a broadcast (stride-0) operand
    const Tensor row = randn_input({1, 4}, 5);
    const Tensor a = expand(row, {3, 4});
    const Tensor b = randn_input({4, 2}, 6);
    check_product(matmul(a, b), a, b, "expanded rows");
  }

  TEST_CASE("large products (BLAS path) against the f64 reference") {
    // M·N·K = 96·70·80 ≥ 48³: the BLAS path, directly on row-major and transposed views, through a
    // copy for other strides
    for (DType t : kFloatTypes)
      for (Layout la : kLayouts)
        for (Layout lb : {Layout::Contiguous, Layout::Transposed}) {
          const Tensor a = randn_input({96, 80}, 7, la, t), b = randn_input({80, 70}, 8, lb, t);
          check_product(matmul(a, b), a, b,
                        "96x80x70 " + tname(t) + " " + lname(la) + "·" + lname(lb));
        }
    // odd strides on both operands
    for (DType t : {DType::f32, DType::f64}) {
      const Tensor a = odd_strides({96, 80}, 9, t), b = odd_strides({80, 70}, 10, t);
      check_product(matmul(a, b), a, b, "96x80x70 odd strides " + tname(t));
    }
    // batched, with a broadcast right operand, and a 3-D transposed (copied) operand
    const Tensor a = randn_input({2, 64, 50}, 11, Layout::Contiguous, DType::f32);
    const Tensor b = randn_input({50, 60}, 12, Layout::Transposed, DType::f32);
    check_product(matmul(a, b), a, b, "batched 2x64x50·50x60");
    const Tensor a3 = randn_input({2, 64, 50}, 13, Layout::Transposed, DType::f64);
    const Tensor b3 = randn_input({1, 50, 60}, 14, Layout::Strided, DType::f64);
    check_product(matmul(a3, b3), a3, b3, "batched transposed·strided");
    // 1-D operands on the BLAS path
    const Tensor v = randn_input({120}, 15, Layout::Strided, DType::f32);
    const Tensor w = randn_input({120, 1000}, 16, Layout::Contiguous, DType::f32);
    check_product(matmul(v, w), v, w, "1-D·2-D large");
  }

  TEST_CASE("large products of small batches split into column or row blocks") {
    // ≥ 2²¹ multiply-adds with a batch below 8: each product runs as blocks of output columns
    // (N ≥ M) or rows (M > N), on row-major and transposed views of both operands
    for (DType t : {DType::f32, DType::f64})
      for (Layout la : {Layout::Contiguous, Layout::Transposed})
        for (Layout lb : {Layout::Contiguous, Layout::Transposed}) {
          const std::string what = tname(t) + " " + lname(la) + "·" + lname(lb);
          const Tensor a = randn_input({100, 150}, 31, la, t),
                       b = randn_input({150, 400}, 32, lb, t);
          check_product(matmul(a, b), a, b, "column blocks 100x150·150x400 " + what);
          const Tensor c = randn_input({2, 300, 100}, 33, la, t),
                       d = randn_input({100, 200}, 34, lb, t);
          check_product(matmul(c, d), c, d, "row blocks 2x300x100·100x200 " + what);
        }
  }

  TEST_CASE("matmul promotes mixed float dtypes") {
    const Tensor a = randn_input({3, 4}, 17, Layout::Contiguous, DType::f32);
    const Tensor b = randn_input({4, 2}, 18, Layout::Contiguous, DType::f64);
    const Tensor c = matmul(a, b);
    CHECK(c.dtype() == DType::f64);
    check_product(c, a, b, "f32·f64");
    CHECK(matmul(to(a, DType::f16), to(b, DType::bf16)).dtype() == DType::f32);
  }

  TEST_CASE("matmul with K = 0 gives zeros, empty batches and rows give empty results") {
    for (DType t : kFloatTypes) {
      INFO(tname(t));
      const Tensor c = matmul(zeros({3, 0}, {.dtype = t}), zeros({0, 4}, {.dtype = t}));
      CHECK(c.shape() == Shape{3, 4});
      CHECK(values(c) == std::vector<double>(12, 0.0));
      // a large M·N with K = 0
      const Tensor big = matmul(empty({100, 0}, {.dtype = t}), empty({0, 120}, {.dtype = t}));
      CHECK(big.shape() == Shape{100, 120});
      CHECK(values(amax(abs(big))) == std::vector<double>{0});
      CHECK(matmul(empty({0}, {.dtype = t}), empty({0}, {.dtype = t})).item<double>() == 0);
      CHECK(matmul(randn_input({0, 3, 4}, 1, Layout::Contiguous, t),
                   randn_input({4, 5}, 2, Layout::Contiguous, t))
                .shape() == Shape{0, 3, 5});
      CHECK(matmul(randn_input({2, 0, 4}, 1, Layout::Contiguous, t),
                   randn_input({4, 5}, 2, Layout::Contiguous, t))
                .shape() == Shape{2, 0, 5});
      CHECK(matmul(randn_input({2, 1, 3, 4}, 1, Layout::Contiguous, t),
                   randn_input({0, 4, 5}, 2, Layout::Contiguous, t))
                .shape() == Shape{2, 0, 3, 5});
    }
    // gradients through K = 0 are empty; through an empty batch, empty too
    Tensor a = zeros({3, 0}, {.dtype = DType::f64}), b = zeros({0, 2}, {.dtype = DType::f64});
    a.set_requires_grad(true);
    b.set_requires_grad(true);
    sum(matmul(a, b)).backward();
    CHECK(a.grad().shape() == Shape{3, 0});
    CHECK(b.grad().shape() == Shape{0, 2});
  }

  TEST_CASE("matmul errors") {
    const Tensor a = randn_input({3, 4}, 1), b = randn_input({5, 2}, 2);
    CHECK_THROWS_AS(matmul(a, b), cm::Error);
    const std::string inner = error_of([&] { matmul(a, b); });
    CHECK(inner.find("matmul") != std::string::npos);
    CHECK(inner.find("[3, 4]") != std::string::npos);
    CHECK(inner.find("[5, 2]") != std::string::npos);
    CHECK_THROWS_AS(matmul(randn_input({3}, 1), randn_input({4}, 2)), cm::Error);
    CHECK_THROWS_AS(matmul(randn_input({2, 3, 4}, 1), randn_input({2, 5, 2}, 2)), cm::Error);
    // batch dims that do not broadcast
    CHECK_THROWS_AS(matmul(randn_input({2, 3, 4}, 1), randn_input({3, 4, 2}, 2)), cm::Error);
    // integer operands
    const Tensor ai = arange(6, {.dtype = DType::i32}).reshape({2, 3});
    const Tensor bi = arange(6, {.dtype = DType::i64}).reshape({3, 2});
    CHECK(error_of([&] { matmul(ai, bi); }).find("matmul") != std::string::npos);
    CHECK_THROWS_AS(matmul(ai, randn_input({3, 2}, 1)), cm::Error);
    CHECK_THROWS_AS(matmul(randn_input({2, 3}, 1), bi), cm::Error);
    // 0-d operands
    const Tensor s = scalar_tensor(2.0, {.dtype = DType::f64});
    CHECK(error_of([&] { matmul(s, a); }).find("matmul") != std::string::npos);
    CHECK_THROWS_AS(matmul(a, s), cm::Error);
  }

  TEST_CASE("gradcheck: matmul for each shape case") {
    const std::vector<ShapeCase> cases = {
        {"1-D·1-D", {3}, {3}},
        {"1-D·2-D", {3}, {3, 2}},
        {"2-D·1-D", {2, 3}, {3}},
        {"2-D·2-D", {2, 3}, {3, 2}},
        {"3-D·3-D", {2, 2, 3}, {2, 3, 2}},
        {"broadcast batch", {2, 1, 2, 3}, {3, 3, 2}},
        {"3-D·2-D", {2, 2, 3}, {3, 2}},
        {"2-D·3-D", {2, 3}, {2, 3, 2}},
        {"1-D·3-D", {3}, {2, 3, 2}},
    };
    for (const ShapeCase& sc : cases)
      for (Layout la : kLayouts)
        for (Layout lb : {Layout::Contiguous, Layout::Transposed}) {
          INFO(sc.name, " ", lname(la), "·", lname(lb));
          const Tensor a = grad_input(sc.a, 21, la), b = grad_input(sc.b, 22, lb);
          CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); },
                          {a, b});
        }
    // only one operand requiring grad
    const Tensor a = grad_input({2, 3}, 23);
    const Tensor b = randn_input({2, 3, 2}, 24);
    CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }, {a, b});
    CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return matmul(in[1], in[0]); },
                    {grad_input({3, 2}, 25), randn_input({2, 2, 3}, 26)});
  }

  TEST_CASE("matmul gradients on the BLAS path") {
    // dA = dC·Bᵀ, dB = Aᵀ·dC, against the f64 reference of those products
    Tensor a = grad_input({60, 50}, 31, Layout::Transposed), b = grad_input({50, 40}, 32);
    const Tensor g = randn_input({60, 40}, 33);
    matmul(a, b).backward(g);
    const Tensor bt = transpose(detach(b), 0, 1), at = transpose(detach(a), 0, 1);
    const RefProduct ra = ref_matmul(g, bt), rb = ref_matmul(at, g);
    auto worst = [](const std::vector<double>& got, const RefProduct& r) {
      double w = 0;  // the largest error relative to the bound Σ|a||b|
      for (size_t i = 0; i < got.size(); ++i)
        w = std::max(w, std::fabs(got[i] - r.value[i]) / (r.abs_bound[i] + 1e-300));
      return w;
    };
    REQUIRE(a.grad().shape() == ra.shape);
    REQUIRE(b.grad().shape() == rb.shape);
    CHECK(worst(values(a.grad()), ra) <= 60 * 0x1.0p-52);
    CHECK(worst(values(b.grad()), rb) <= 60 * 0x1.0p-52);
  }

}  // TEST_SUITE
