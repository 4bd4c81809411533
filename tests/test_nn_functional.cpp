// Neural-network functions (linear, embedding, dropout, upsample_nearest2d, upsample_bilinear2d,
// avg_pool2d, scaled_dot_product_attention): f64 reference loops in every layout, closed forms,
// gradcheck, dropout's generator replay, errors, and PyTorch goldens
// (tests/golden/nn_functional.json, written by tools/gen_nn_functional_goldens.py) for bilinear
// upsampling, average pooling, group_norm and attention, outputs and gradients to 1e-10 in f64.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "helpers.h"
#include "tensor/cpu/cpu_backend.h"

using namespace cm;
using cm::test::check_error;
using cm::test::grad_input;
using cm::test::kLayouts;
using cm::test::Layout;
using cm::test::randn_input;
using cm::test::values;
using nlohmann::json;

namespace {

using V = std::vector<Tensor>;

std::string lname(Layout l) {
  return cm::test::layout_name(l);
}

// max |got − ref| ≤ tol·max(1, max |ref|), with the first offending element in the message.
void check_values(const Tensor& got, const std::vector<double>& ref, double tol,
                  const std::string& what) {
  INFO(what);
  const std::vector<double> g = values(got);
  REQUIRE(g.size() == ref.size());
  double scale = 1;
  for (double r : ref) scale = std::max(scale, std::fabs(r));
  for (size_t i = 0; i < g.size(); ++i) {
    if (!(std::fabs(g[i] - ref[i]) <= tol * scale)) {
      FAIL_CHECK("element " << i << ": got " << g[i] << ", reference " << ref[i]);
      return;
    }
  }
}

// ---- reference loops (row-major values)
// ----------------------------------------------------------

std::vector<double> ref_linear(const std::vector<double>& x, int64_t rows, int64_t in,
                               const std::vector<double>& w, int64_t out,
                               const std::vector<double>& b) {
  std::vector<double> y(size_t(rows * out));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double s = b.empty() ? 0 : b[size_t(o)];
      for (int64_t i = 0; i < in; ++i) s += x[size_t(r * in + i)] * w[size_t(o * in + i)];
      y[size_t(r * out + o)] = s;
    }
  return y;
}

// PyTorch's source coordinate of output index d along a dim of size in -> out (clamped at 0
// unless align_corners).
double bilinear_src(int64_t d, int64_t in, int64_t out, bool align_corners) {
  if (align_corners) return out > 1 ? double(d) * double(in - 1) / double(out - 1) : 0.0;
  return std::max(0.0, (double(d) + 0.5) * double(in) / double(out) - 0.5);
}

std::vector<double> ref_bilinear(const std::vector<double>& x, const Shape& s, int64_t oh,
                                 int64_t ow, bool ac) {
  const int64_t NC = s[0] * s[1], H = s[2], W = s[3];
  std::vector<double> y(size_t(NC * oh * ow));
  for (int64_t p = 0; p < NC; ++p)
    for (int64_t i = 0; i < oh; ++i)
      for (int64_t j = 0; j < ow; ++j) {
        const double sh = bilinear_src(i, H, oh, ac), sw = bilinear_src(j, W, ow, ac);
        const int64_t h0 = int64_t(sh), w0 = int64_t(sw);
        const int64_t h1 = std::min(h0 + 1, H - 1), w1 = std::min(w0 + 1, W - 1);
        const double lh = sh - double(h0), lw = sw - double(w0);
        auto at = [&](int64_t h, int64_t w) { return x[size_t((p * H + h) * W + w)]; };
        y[size_t((p * oh + i) * ow + j)] = (1 - lh) * ((1 - lw) * at(h0, w0) + lw * at(h0, w1)) +
                                           lh * ((1 - lw) * at(h1, w0) + lw * at(h1, w1));
      }
  return y;
}

std::vector<double> ref_avg_pool(const std::vector<double>& x, const Shape& s, int64_t k,
                                 int64_t st, int64_t pad) {
  const int64_t NC = s[0] * s[1], H = s[2], W = s[3];
  const int64_t Ho = (H + 2 * pad - k) / st + 1, Wo = (W + 2 * pad - k) / st + 1;
  std::vector<double> y(size_t(NC * Ho * Wo));
  for (int64_t p = 0; p < NC; ++p)
    for (int64_t i = 0; i < Ho; ++i)
      for (int64_t j = 0; j < Wo; ++j) {
        double sum = 0;
        for (int64_t a = 0; a < k; ++a)
          for (int64_t b = 0; b < k; ++b) {
            const int64_t h = i * st - pad + a, w = j * st - pad + b;
            if (h >= 0 && h < H && w >= 0 && w < W) sum += x[size_t((p * H + h) * W + w)];
          }
        y[size_t((p * Ho + i) * Wo + j)] = sum / double(k * k);  // padding counted
      }
  return y;
}

// Attention over B batches of q [Lq, D], k [Lk, D], v [Lk, Dv] (no broadcasting).
std::vector<double> ref_attention(const std::vector<double>& q, const std::vector<double>& k,
                                  const std::vector<double>& v, int64_t B, int64_t Lq, int64_t Lk,
                                  int64_t D, int64_t Dv, double scale) {
  std::vector<double> y(size_t(B * Lq * Dv));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < Lq; ++i) {
      std::vector<double> p(static_cast<size_t>(Lk));
      double m = -1e300, z = 0;
      for (int64_t j = 0; j < Lk; ++j) {
        double s = 0;
        for (int64_t d = 0; d < D; ++d)
          s += q[size_t((b * Lq + i) * D + d)] * k[size_t((b * Lk + j) * D + d)];
        p[size_t(j)] = s * scale;
        m = std::max(m, p[size_t(j)]);
      }
      for (double& e : p) z += (e = std::exp(e - m));
      for (int64_t c = 0; c < Dv; ++c) {
        double s = 0;
        for (int64_t j = 0; j < Lk; ++j) s += p[size_t(j)] / z * v[size_t((b * Lk + j) * Dv + c)];
        y[size_t((b * Lq + i) * Dv + c)] = s;
      }
    }
  return y;
}

// ---- PyTorch goldens
// ------------------------------------------------------------------------------

const char* kGoldenPath = CM_SOURCE_DIR "/tests/golden/nn_functional.json";

const json& golden() {
  static const json doc = [] {
    std::ifstream f(kGoldenPath);
    REQUIRE_MESSAGE(f.good(), "cannot open ", kGoldenPath);
    return json::parse(f);
  }();
  return doc;
}

Tensor tensor_of(const json& t, Layout layout = Layout::Contiguous) {
  return cm::test::with_layout(
      from_vector(t.at("data").get<std::vector<double>>(), t.at("shape").get<Shape>()), layout);
}

// The cm call of a golden case, from its "op" and "params".
Tensor run_golden(const json& c, const V& x) {
  const std::string op = c.at("op");
  const json& p = c.at("params");
  if (op == "upsample_bilinear2d")
    return upsample_bilinear2d(x[0], p.at("out_h"), p.at("out_w"), p.at("align_corners"));
  if (op == "avg_pool2d") return avg_pool2d(x[0], p.at("kernel"), p.at("stride"), p.at("padding"));
  if (op == "group_norm") {
    const bool affine = p.at("affine");
    return group_norm(x[0], p.at("groups"), affine ? x[1] : Tensor(), affine ? x[2] : Tensor(),
                      p.at("eps"));
  }
  if (op == "sdpa") {
    std::optional<double> scale;
    if (!p.at("scale").is_null()) scale = p.at("scale").get<double>();
    return scaled_dot_product_attention(x[0], x[1], x[2], scale);
  }
  FAIL("unknown golden op " << op);
  return {};
}

// |got − want| ≤ 1e-10·|want| + 1e-13 elementwise.
void check_golden(const Tensor& got, const json& want, const std::string& what) {
  REQUIRE_MESSAGE(got.shape() == want.at("shape").get<Shape>(), what, ": shape ",
                  shape_str(got.shape()));
  const std::vector<double> g = values(got), w = want.at("data").get<std::vector<double>>();
  for (size_t i = 0; i < g.size(); ++i) {
    if (!(std::fabs(g[i] - w[i]) <= 1e-10 * std::fabs(w[i]) + 1e-13)) {
      std::ostringstream os;
      os.precision(17);
      os << what << ": element " << i << " is " << g[i] << ", PyTorch gives " << w[i];
      FAIL_CHECK(os.str());
      return;
    }
  }
}

}  // namespace

TEST_SUITE("nn") {
  // ---- linear
  // ----------------------------------------------------------------------------------------
  TEST_CASE("linear: matches the reference for 1-D, 2-D and 3-D x, with and without bias") {
    for (const Shape& xs : {Shape{4}, Shape{3, 4}, Shape{2, 3, 4}})
      for (Layout l : kLayouts)
        for (bool bias : {false, true}) {
          Tensor x = randn_input(xs, 1, l);
          Tensor w = randn_input({5, 4}, 2, l);
          Tensor b = bias ? randn_input({5}, 3, Layout::Strided) : Tensor();
          Tensor y = linear(x, w, b);
          Shape want = xs;
          want.back() = 5;
          CHECK(y.shape() == want);
          check_values(y,
                       ref_linear(values(x), x.numel() / 4, 4, values(w), 5,
                                  bias ? values(b) : std::vector<double>{}),
                       1e-14, shape_str(xs) + " " + lname(l) + (bias ? " bias" : ""));
        }
  }

  TEST_CASE("linear: gradcheck for x, weight and bias") {
    CHECK_GRADCHECK(
        [](const V& v) { return linear(v[0], v[1], v[2]); },
        {grad_input({2, 3}, 4, Layout::Transposed), grad_input({4, 3}, 5), grad_input({4}, 6)});
    CHECK_GRADCHECK([](const V& v) { return linear(v[0], v[1]); },
                    {grad_input({2, 1, 3}, 7), grad_input({2, 3}, 8, Layout::Strided)});
  }

  TEST_CASE("linear: errors") {
    Tensor x = randn_input({2, 4}, 1);
    check_error([&] { linear(x, randn_input({5, 3}, 2)); }, {"linear", "[2, 4]", "[5, 3]"});
    check_error([&] { linear(x, randn_input({4}, 2)); }, {"linear", "weight must be [out, in]"});
    check_error(
        [&] {
          linear(x, randn_input({5, 4}, 2), randn_input({4}, 3));
        },
        {"linear", "bias must have shape [5]"});
  }

  // ---- embedding
  // -------------------------------------------------------------------------------------
  TEST_CASE(
      "embedding: picks rows for i64 and i32 indices of any shape — repeated rows accumulate") {
    Tensor w = randn_input({6, 3}, 10, Layout::Transposed);
    const std::vector<int64_t> idx = {5, 0, 2, 2, 5, 5};
    for (DType it : {DType::i64, DType::i32}) {
      Tensor ind = to(from_vector(idx, {2, 3}), it);
      Tensor y = embedding(w, ind);
      CHECK(y.shape() == Shape{2, 3, 3});
      const std::vector<double> wv = values(w);
      std::vector<double> ref;
      for (int64_t i : idx)
        for (int64_t d = 0; d < 3; ++d) ref.push_back(wv[size_t(i * 3 + d)]);
      check_values(y, ref, 0, dtype_name(it));
    }
    // gradient: dW[r] = Σ over positions holding r of dy
    Tensor wl = clone(w).set_requires_grad(true);
    Tensor dy = randn_input({2, 3, 3}, 11);
    sum(mul(embedding(wl, from_vector(idx, {2, 3})), dy)).backward();
    std::vector<double> ref(18, 0.0);
    const std::vector<double> dv = values(dy);
    for (size_t p = 0; p < idx.size(); ++p)
      for (size_t d = 0; d < 3; ++d) ref[size_t(idx[p]) * 3 + d] += dv[p * 3 + d];
    check_values(wl.grad(), ref, 1e-15, "embedding gradient");
    CHECK_GRADCHECK([&](const V& v) { return embedding(v[0], from_vector(idx, {6})); },
                    {grad_input({6, 3}, 12)});
    // a 0-d index gives one row
    CHECK(embedding(w, scalar_tensor(4, {.dtype = DType::i64})).shape() == Shape{3});
  }

  TEST_CASE("embedding: errors name the table size") {
    Tensor w = randn_input({4, 2}, 1);
    check_error(
        [&] {
          embedding(w, from_vector<int64_t>({0, 4}, {2}));
        },
        {"embedding", "index 4", "4 rows"});
    check_error([&] { embedding(w, from_vector<int64_t>({-1}, {1})); }, {"embedding", "-1"});
    check_error([&] { embedding(w, from_vector<double>({1.0}, {1})); }, {"embedding", "i64"});
    check_error([&] { embedding(randn_input({4}, 1), from_vector<int64_t>({0}, {1})); },
                {"embedding", "[V, D]"});
  }

  // ---- dropout
  // ---------------------------------------------------------------------------------------
  TEST_CASE("dropout: mask is bernoulli(1 - p) from the given generator, kept values scaled") {
    const double p = 0.3;
    for (Layout l : kLayouts) {
      INFO(lname(l));
      Tensor x = randn_input({20, 30}, 20, l);
      Generator g(123, 7);
      Generator replay(g.seed(), g.offset());  // the same state
      Tensor y = dropout(x, p, true, g);
      CHECK(g.offset() > 7);  // the draw advanced the generator
      const std::vector<double> mask =
          values(bernoulli({20, 30}, 1 - p, {.dtype = DType::f64}, &replay));
      CHECK(replay.offset() == g.offset());
      const std::vector<double> xv = values(x), yv = values(y);
      for (size_t i = 0; i < xv.size(); ++i) {
        if (mask[i] == 1)
          REQUIRE(yv[i] == xv[i] * (1.0 / (1 - p)));
        else
          REQUIRE(yv[i] == 0);
      }
    }
  }

  TEST_CASE("dropout: a generator in the same state replays the mask — an advanced one does not") {
    Tensor x = randn_input({64, 64}, 21);
    Generator g1(99);
    Tensor a = dropout(x, 0.5, true, g1);
    Tensor b = dropout(x, 0.5, true, g1);  // g1 advanced: a different mask
    Generator g2(99);
    Tensor c = dropout(x, 0.5, true, g2);  // fresh generator, same seed: the first mask again
    g2.set_state(g1.seed(), g1.offset());
    Tensor d = dropout(x, 0.5, true, g2);
    Generator g3(99, 0);
    dropout(x, 0.5, true, g3);
    Tensor e = dropout(x, 0.5, true, g3);  // the second draw of the sequence
    CHECK(max_abs_diff(a, c) == 0);
    CHECK(max_abs_diff(b, e) == 0);
    CHECK(max_abs_diff(a, b) > 0);
    CHECK(max_abs_diff(d, a) > 0);
  }

  TEST_CASE("dropout: drop rate, identity cases, p = 1, gradients") {
    Tensor x = add(randn_input({200, 500}, 22, Layout::Contiguous, DType::f32), 5.0);  // no zeros
    Generator g(5);
    Tensor y = dropout(x, 0.3, true, g);
    const double frac = mean(to(eq(y, 0.0), DType::f64)).item<double>();
    CHECK(std::fabs(frac - 0.3) < 5 * std::sqrt(0.3 * 0.7 / 1e5));
    // identity: the input itself, and the generator untouched
    Generator g0(5);
    CHECK(dropout(x, 0.3, false, g0).same(x));
    CHECK(dropout(x, 0.0, true, g0).same(x));
    CHECK(g0.offset() == 0);
    CHECK(max_abs_diff(dropout(x, 1.0, true, g0), zeros_like(x)) == 0);
    // gradient = mask / (1 − p) · dy, and gradcheck with a replayed mask
    Tensor xl = grad_input({4, 5}, 23);
    Generator gg(8), gm(8);
    Tensor dy = randn_input({4, 5}, 24);
    sum(mul(dropout(xl, 0.25, true, gg), dy)).backward();
    const Tensor mask = bernoulli({4, 5}, 0.75, {.dtype = DType::f64}, &gm);
    check_values(xl.grad(), values(mul(mul(mask, 1 / 0.75), dy)), 0, "dropout gradient");
    CHECK_GRADCHECK(
        [](const V& v) {
          Generator gr(8);
          return dropout(v[0], 0.25, true, gr);
        },
        {grad_input({4, 5}, 25, Layout::Transposed)});
    // replaying a handed-out mask: the values of the draw, the generator advanced as by it
    Generator gr1(9, 3), gr2(9, 3), gr3(9, 3);
    Tensor handed;
    dropout(x, 0.3, true, gr1, &handed);
    REQUIRE(handed.defined());
    const Tensor x2 = add(x, 1.0);
    CHECK(max_abs_diff(dropout_replay(x2, handed, gr2), dropout(x2, 0.3, true, gr3)) == 0);
    CHECK(gr2.offset() == gr3.offset());
    Tensor none;
    CHECK(dropout(x, 0.3, false, gr1, &none).same(x));
    CHECK_FALSE(none.defined());
    CHECK(dropout_replay(x, none, gr1).same(x));
    check_error([&] { dropout_replay(x, randn({3}), gr1); }, {"dropout_replay", "does not fit"});
    check_error([&] { dropout(x, 1.5, true, g); }, {"dropout", "1.5"});
    check_error([&] { dropout(x, -0.1, true, g); }, {"dropout", "[0, 1]"});
    check_error([&] { dropout(from_vector<int64_t>({1}, {1}), 0.5, true, g); },
                {"dropout", "floating"});
  }

  TEST_CASE("dropout: the one-pass kernel gives the composite's bits in every dtype and layout") {
    // CpuBackend::dropout against Backend::dropout (Bernoulli draw, MulScalar, Mul), with and
    // without the mask written; sizes with a partial Philox block and a partial batch of blocks.
    Backend& be = cpu::cpu_backend();
    for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::f16})
      for (const Layout l : {Layout::Contiguous, Layout::ChannelsLast})
        for (const Shape& sh : {Shape{3, 5, 4, 6}, Shape{2, 7, 5, 3}, Shape{4, 16, 9, 8}}) {
          INFO(std::string(dtype_name(dt)), " ", lname(l), " ", shape_str(sh));
          const Tensor x = randn_input(sh, 31, l, dt);
          const MemoryFormat f = memory_format_of(x);
          const TensorOptions opt{.dtype = dt};
          const Tensor y = empty(sh, opt, f), m = empty(sh, opt, f), yc = empty(sh, opt, f),
                       mc = empty(sh, opt, f), y_nomask = empty(sh, opt, f);
          be.dropout(x, 0.7, 1 / 0.7, 19, 3, y, m);
          be.Backend::dropout(x, 0.7, 1 / 0.7, 19, 3, yc, mc);
          be.dropout(x, 0.7, 1 / 0.7, 19, 3, y_nomask, Tensor());
          CHECK(max_abs_diff(y, yc) == 0);
          CHECK(max_abs_diff(m, mc) == 0);
          CHECK(max_abs_diff(y_nomask, yc) == 0);
          const double kept = sum(to(ne(m, 0.0), DType::f64)).item<double>();
          CHECK(kept > 0);
          CHECK(kept < double(x.numel()));
        }
  }

  TEST_CASE("dropout: channels-last masks are drawn in memory order and the gradient is dy·mask") {
    const double p = 0.4;
    for (DType dt : {DType::f32, DType::f64}) {
      INFO(std::string(dtype_name(dt)));
      // no zeros in x, so y == 0 exactly where the mask dropped
      Tensor x = add(randn_input({2, 6, 3, 5}, 32, Layout::ChannelsLast, dt), 5.0);
      x = detach(x);
      x.set_requires_grad(true);
      REQUIRE(memory_format_of(x) == MemoryFormat::ChannelsLast);
      Generator g(55, 2), replay(55, 2);
      const Tensor y = dropout(x, p, true, g);
      CHECK(memory_format_of(y) == MemoryFormat::ChannelsLast);
      // the draw of the [N, H, W, C] storage, seen as [N, C, H, W]
      const Tensor keep =
          permute(bernoulli({2, 3, 5, 6}, 1 - p, {.dtype = dt}, &replay), {0, 3, 1, 2});
      CHECK(replay.offset() == g.offset());
      const std::vector<double> kv = values(keep), sv = values(mul(x, 1.0 / (1 - p))),
                                yv = values(y);
      for (size_t i = 0; i < kv.size(); ++i) REQUIRE(yv[i] == (kv[i] == 1 ? sv[i] : 0.0));
      const Tensor dy = randn_input(x.shape(), 33, Layout::ChannelsLast, dt);
      y.backward(dy);
      const Tensor expect = mul(mul(keep, 1.0 / (1 - p)), dy);
      CHECK(max_abs_diff(x.grad(), expect) == 0);
      // no gradient wanted: the same values, no graph
      Generator g2(55, 2);
      NoGradGuard ng;
      const Tensor y2 = dropout(x, p, true, g2);
      CHECK(!y2.grad_fn());
      CHECK(max_abs_diff(y2, y) == 0);
    }
  }

  TEST_CASE("dropout: a batch shard draws its rows of the whole batch's mask") {
    // 4·3·2·2 = 48 values a row pair (shards start on a Philox block: the one-pass kernel), and
    // 3·1·3 = 9 (shards start inside a block: bernoulli and two products).
    for (const Shape& row : {Shape{4, 3, 2}, Shape{3, 1, 3}})
      for (const Layout l : {Layout::Contiguous, Layout::ChannelsLast}) {
        INFO(shape_str(row), " ", lname(l));
        Shape local = {2};
        local.insert(local.end(), row.begin(), row.end());
        Shape global = local;
        global[0] *= 3;
        const Tensor x = randn_input(global, 34, l, DType::f32);
        Generator g0(12, 1);
        const Tensor whole = dropout(x, 0.5, true, g0);
        for (int64_t r = 0; r < 3; ++r) {
          Generator g(12, 1);
          g.set_shard(r, 3);
          const Tensor xr = narrow(x, 0, 2 * r, 2);
          const Tensor mine = dropout(xr, 0.5, true, g);
          CHECK(max_abs_diff(mine, narrow(whole, 0, 2 * r, 2)) == 0);
          CHECK(g.offset() == g0.offset());
        }
      }
  }

  // ---- upsample_nearest2d
  // ----------------------------------------------------------------------------
  TEST_CASE("upsample_nearest2d: each pixel repeated s×s times — gradcheck — errors") {
    for (int64_t s : {1, 2, 3})
      for (Layout l : kLayouts) {
        Tensor x = randn_input({2, 3, 2, 3}, 30, l);
        Tensor y = upsample_nearest2d(x, s);
        REQUIRE(y.shape() == Shape{2, 3, 2 * s, 3 * s});
        const std::vector<double> xv = values(x);
        std::vector<double> ref;
        for (int64_t p = 0; p < 6; ++p)
          for (int64_t i = 0; i < 2 * s; ++i)
            for (int64_t j = 0; j < 3 * s; ++j)
              ref.push_back(xv[size_t(p * 6 + (i / s) * 3 + j / s)]);
        check_values(y, ref, 0, "scale " + std::to_string(s) + " " + lname(l));
      }
    CHECK_GRADCHECK([](const V& v) { return upsample_nearest2d(v[0], 2); },
                    {grad_input({1, 2, 2, 3}, 31, Layout::Transposed)});
    check_error(
        [] {
          upsample_nearest2d(randn_input({2, 3, 4}, 1), 2);
        },
        {"upsample_nearest2d", "[N, C, H, W]"});
    check_error(
        [] {
          upsample_nearest2d(randn_input({1, 1, 2, 2}, 1), 0);
        },
        {"upsample_nearest2d", "scale"});
  }

  // ---- upsample_bilinear2d
  // ---------------------------------------------------------------------------
  TEST_CASE("upsample_bilinear2d: matches the reference up, down and at odd ratios") {
    const std::vector<std::pair<Shape, std::pair<int64_t, int64_t>>> cases = {
        {{2, 2, 3, 4}, {7, 9}}, {{1, 3, 5, 7}, {2, 3}}, {{1, 1, 4, 4}, {8, 8}},
        {{1, 2, 3, 5}, {3, 2}}, {{1, 1, 4, 3}, {1, 1}}, {{1, 1, 1, 1}, {3, 2}},
        {{1, 2, 6, 2}, {4, 5}}};
    for (const auto& [s, o] : cases)
      for (bool ac : {false, true})
        for (Layout l : kLayouts) {
          Tensor x = randn_input(s, 40, l);
          Tensor y = upsample_bilinear2d(x, o.first, o.second, ac);
          check_values(y, ref_bilinear(values(x), s, o.first, o.second, ac), 1e-14,
                       shape_str(s) + " -> " + std::to_string(o.first) + "x" +
                           std::to_string(o.second) + (ac ? " align_corners " : " ") + lname(l));
        }
  }

  TEST_CASE("upsample_bilinear2d: an affine ramp is reproduced exactly at the source coordinates") {
    // x[h, w] = 2h − 3w + 1 is bilinear, so the output is the ramp at the source coordinates:
    // align_corners maps the corners onto each other; otherwise the coordinate is clamped to
    // [0, size − 1] (below 0 by PyTorch's rule, above by the index clamp).
    const int64_t H = 4, W = 5;
    std::vector<double> xv;
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) xv.push_back(2.0 * double(h) - 3.0 * double(w) + 1);
    Tensor x = from_vector(xv, {1, 1, H, W});
    for (bool ac : {false, true})
      for (auto [oh, ow] : {std::pair<int64_t, int64_t>{9, 11}, {2, 3}, {7, 2}}) {
        auto src = [&](int64_t d, int64_t in, int64_t out) {
          if (ac) return out > 1 ? double(d) * double(in - 1) / double(out - 1) : 0.0;
          return std::clamp((double(d) + 0.5) * double(in) / double(out) - 0.5, 0.0,
                            double(in - 1));
        };
        std::vector<double> ref;
        for (int64_t i = 0; i < oh; ++i)
          for (int64_t j = 0; j < ow; ++j) ref.push_back(2 * src(i, H, oh) - 3 * src(j, W, ow) + 1);
        check_values(upsample_bilinear2d(x, oh, ow, ac), ref, 1e-14,
                     std::to_string(oh) + "x" + std::to_string(ow) + (ac ? " align_corners" : ""));
      }
    // same size: the identity in both modes
    Tensor r = randn_input({2, 3, 4, 5}, 41, Layout::Transposed);
    for (bool ac : {false, true}) CHECK(max_abs_diff(upsample_bilinear2d(r, 4, 5, ac), r) == 0);
  }

  TEST_CASE("upsample_bilinear2d: gradcheck up and down, both alignments — errors") {
    for (bool ac : {false, true}) {
      INFO("align_corners ", ac);
      CHECK_GRADCHECK([ac](const V& v) { return upsample_bilinear2d(v[0], 4, 5, ac); },
                      {grad_input({1, 2, 3, 2}, 42, Layout::Strided)});
      CHECK_GRADCHECK([ac](const V& v) { return upsample_bilinear2d(v[0], 2, 3, ac); },
                      {grad_input({1, 1, 5, 4}, 43, Layout::Transposed)});
    }
    check_error(
        [] {
          upsample_bilinear2d(randn_input({3, 4}, 1), 2, 2);
        },
        {"upsample_bilinear2d", "[N, C, H, W]"});
    check_error(
        [] {
          upsample_bilinear2d(randn_input({1, 1, 3, 4}, 1), 0, 2);
        },
        {"upsample_bilinear2d", "positive"});
  }

  // ---- avg_pool2d
  // ------------------------------------------------------------------------------------
  TEST_CASE("avg_pool2d: matches the reference with padding counted, floor-mode sizes") {
    struct P {
      int64_t k, s, pad;
    };
    for (const Shape& xs : {Shape{2, 3, 6, 6}, Shape{1, 2, 5, 7}})
      for (P p :
           {P{2, 2, 0}, P{2, 0, 0}, P{3, 1, 1}, P{3, 2, 1}, P{2, 3, 1}, P{4, 2, 2}, P{1, 2, 0}})
        for (Layout l : kLayouts) {
          Tensor x = randn_input(xs, 50, l);
          const int64_t st = p.s == 0 ? p.k : p.s;
          Tensor y = avg_pool2d(x, p.k, p.s, p.pad);
          const int64_t Ho = (xs[2] + 2 * p.pad - p.k) / st + 1,
                        Wo = (xs[3] + 2 * p.pad - p.k) / st + 1;
          CHECK(y.shape() == Shape{xs[0], xs[1], Ho, Wo});
          check_values(y, ref_avg_pool(values(x), xs, p.k, st, p.pad), 1e-15,
                       shape_str(xs) + " k" + std::to_string(p.k) + " s" + std::to_string(p.s) +
                           " p" + std::to_string(p.pad) + " " + lname(l));
        }
    // a constant input: 1 inside, smaller where the window covers padding (count_include_pad)
    Tensor y = avg_pool2d(ones({1, 1, 3, 3}, {.dtype = DType::f64}), 3, 1, 1);
    check_values(y, {4 / 9., 6 / 9., 4 / 9., 6 / 9., 1, 6 / 9., 4 / 9., 6 / 9., 4 / 9.}, 1e-15,
                 "constant");
  }

  TEST_CASE("avg_pool2d: gradcheck — errors") {
    CHECK_GRADCHECK([](const V& v) { return avg_pool2d(v[0], 2); },
                    {grad_input({1, 2, 4, 3}, 51, Layout::Transposed)});
    CHECK_GRADCHECK([](const V& v) { return avg_pool2d(v[0], 3, 2, 1); },
                    {grad_input({1, 1, 5, 4}, 52, Layout::Strided)});
    Tensor x = randn_input({1, 1, 4, 4}, 1);
    check_error([&] { avg_pool2d(x, 2, 1, 2); }, {"avg_pool2d", "padding 2"});
    check_error([&] { avg_pool2d(x, 5); }, {"avg_pool2d", "larger than the padded input"});
    check_error([&] { avg_pool2d(x, 0); }, {"avg_pool2d", "positive"});
    check_error([&] { avg_pool2d(randn_input({4, 4}, 1), 2); }, {"avg_pool2d", "[N, C, H, W]"});
  }

  // ---- scaled_dot_product_attention
  // -----------------------------------------------------------------
  TEST_CASE("scaled_dot_product_attention: matches the reference, default and explicit scale") {
    for (Layout l : kLayouts)
      for (std::optional<double> scale : {std::optional<double>{}, std::optional<double>{0.3}}) {
        Tensor q = randn_input({2, 3, 4}, 60, l), k = randn_input({2, 5, 4}, 61, l);
        Tensor v = randn_input({2, 5, 6}, 62, l);
        Tensor y = scaled_dot_product_attention(q, k, v, scale);
        CHECK(y.shape() == Shape{2, 3, 6});
        check_values(
            y, ref_attention(values(q), values(k), values(v), 2, 3, 5, 4, 6, scale.value_or(0.5)),
            1e-14, lname(l) + (scale ? " scale 0.3" : " default scale"));
      }
    // broadcast batch dims: q [2, 1, L, D] with k, v [1, 2, L, D] behaves as the expanded inputs
    Tensor q = randn_input({2, 1, 3, 4}, 63), k = randn_input({1, 2, 5, 4}, 64);
    Tensor v = randn_input({1, 2, 5, 2}, 65);
    Tensor y = scaled_dot_product_attention(q, k, v);
    Tensor ye = scaled_dot_product_attention(contiguous(expand(q, {2, 2, 3, 4})),
                                             contiguous(expand(k, {2, 2, 5, 4})),
                                             contiguous(expand(v, {2, 2, 5, 2})));
    CHECK(y.shape() == Shape{2, 2, 3, 2});
    CHECK(max_abs_diff(y, ye) < 1e-15);
  }

  TEST_CASE("scaled_dot_product_attention: 16-bit inputs give 16-bit results near the f64 ones") {
    for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
      INFO(dtype_name(dt));
      Tensor q = randn_input({2, 4, 8}, 66, Layout::Transposed, dt);
      Tensor k = randn_input({2, 6, 8}, 67, Layout::Contiguous, dt);
      Tensor v = randn_input({2, 6, 5}, 68, Layout::Contiguous, dt);
      Tensor y = scaled_dot_product_attention(q, k, v);
      CHECK(y.dtype() == dt);
      // unit roundoff u of dt times ~10 roundings (q·s, scores, weights, output)
      const double tol = dt == DType::f32 ? 2e-6 : dt == DType::f16 ? 5e-3 : 3e-2;
      check_values(
          y, ref_attention(values(q), values(k), values(v), 2, 4, 6, 8, 5, 1 / std::sqrt(8.0)), tol,
          "forward");
      // gradients flow back in the input dtype
      Tensor ql = clone(q).set_requires_grad(true);
      sum(scaled_dot_product_attention(ql, k, v)).backward();
      CHECK(ql.grad().dtype() == dt);
    }
  }

  TEST_CASE("scaled_dot_product_attention: gradcheck for q, k and v — errors") {
    CHECK_GRADCHECK([](const V& v) { return scaled_dot_product_attention(v[0], v[1], v[2]); },
                    {grad_input({1, 2, 3}, 70, Layout::Transposed), grad_input({1, 3, 3}, 71),
                     grad_input({1, 3, 2}, 72, Layout::Strided)});
    CHECK_GRADCHECK([](const V& v) { return scaled_dot_product_attention(v[0], v[1], v[2], 1.7); },
                    {grad_input({2, 3}, 73), grad_input({4, 3}, 74), grad_input({4, 2}, 75)});
    Tensor q = randn_input({2, 3, 4}, 1);
    check_error(
        [&] {
          scaled_dot_product_attention(q, randn_input({2, 5, 3}, 2), randn_input({2, 5, 4}, 3));
        },
        {"scaled_dot_product_attention", "[2, 5, 3]"});
    check_error(
        [&] {
          scaled_dot_product_attention(q, randn_input({2, 5, 4}, 2), randn_input({2, 6, 4}, 3));
        },
        {"scaled_dot_product_attention", "[2, 6, 4]"});
    check_error([&] { scaled_dot_product_attention(q, to(q, DType::f32), q); },
                {"scaled_dot_product_attention", "dtype"});
    check_error([&] { scaled_dot_product_attention(randn_input({4}, 1), q, q); },
                {"scaled_dot_product_attention", "[..., L, D]"});
  }

  // ---- PyTorch goldens
  // -------------------------------------------------------------------------------
  TEST_CASE("goldens: the file covers every function it should") {
    std::set<std::string> ops;
    for (const json& c : golden().at("cases")) ops.insert(c.at("op").get<std::string>());
    CHECK(ops == std::set<std::string>{"upsample_bilinear2d", "avg_pool2d", "group_norm", "sdpa"});
    std::set<bool> alignments;
    for (const json& c : golden().at("cases"))
      if (c.at("op") == "upsample_bilinear2d")
        alignments.insert(c.at("params").at("align_corners").get<bool>());
    CHECK(alignments.size() == 2);
  }

  TEST_CASE("goldens: outputs and gradients match PyTorch to 1e-10 (f64)") {
    for (const json& c : golden().at("cases")) {
      for (Layout layout : {Layout::Contiguous, Layout::Transposed}) {
        const std::string what = c.at("name").get<std::string>() + " (" + lname(layout) + ")";
        V inputs;
        for (const json& t : c.at("inputs"))
          inputs.push_back(tensor_of(t, layout).set_requires_grad(true));
        const Tensor y = run_golden(c, inputs);
        check_golden(y, c.at("output"), what + " output");
        sum(mul(y, tensor_of(c.at("weights")))).backward();
        const json& grads = c.at("grads");
        REQUIRE(grads.size() == inputs.size());
        for (size_t k = 0; k < inputs.size(); ++k) {
          REQUIRE_MESSAGE(inputs[k].grad().defined(), what, ": no gradient for input ", k);
          check_golden(inputs[k].grad(), grads[k], what + " grad " + std::to_string(k));
        }
      }
    }
  }
}
