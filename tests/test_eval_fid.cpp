// FID and Inception Score (eval/fid.h, eval/inception.h) against the reference tools: max_pool2d
// and avg_pool2d(count_include_pad=false) against f64 loops and gradcheck; the TF1 resize against
// torch-fidelity, a NumPy transcription and openai's affine_grid emulation; pytorch-fid's FID
// Inception (reduced width) outputs and its full-width state-dict names and counts; eigh, the
// Fréchet distance against scipy's sqrtm (pytorch-fid) and closed forms; f64 feature statistics
// against numpy; .npz round trips and malformed files; the Inception Score against torch-fidelity
// and closed forms (golden files from tools/gen_fid_goldens.py).
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "datasets/npz.h"
#include "eval/fid.h"
#include "eval/inception.h"
#include "tests/golden_util.h"

using namespace cm;
using namespace cm::test;
using V = std::vector<Tensor>;

namespace {

std::map<std::string, Tensor> load_all(const std::string& file) {
  return nn::load_safetensors(kGoldenDir + file);
}

std::string temp_path(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / "cm_test_eval_fid";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

// ---- f64 reference loops for the pools ----------------------------------------------------------

// max or average (with or without the padding in the divisor) over kernel×kernel windows.
std::vector<double> pool_reference(const Tensor& x, int64_t k, int64_t s, int64_t p, bool is_max,
                                   bool count_pad, Shape* out_shape) {
  const std::vector<double> v = x.to_vector<double>();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
  *out_shape = {N, C, Ho, Wo};
  std::vector<double> out;
  for (int64_t nc = 0; nc < N * C; ++nc)
    for (int64_t i = 0; i < Ho; ++i)
      for (int64_t j = 0; j < Wo; ++j) {
        double acc = is_max ? -std::numeric_limits<double>::infinity() : 0.0;
        int64_t inside = 0;
        for (int64_t a = 0; a < k; ++a)
          for (int64_t b = 0; b < k; ++b) {
            const int64_t h = i * s - p + a, w = j * s - p + b;
            if (h < 0 || h >= H || w < 0 || w >= W) continue;
            const double e = v[size_t((nc * H + h) * W + w)];
            acc = is_max ? std::max(acc, e) : acc + e;
            ++inside;
          }
        out.push_back(is_max ? acc : acc / double(count_pad ? k * k : inside));
      }
  return out;
}

void check_close(const std::vector<double>& got, const std::vector<double>& want, double tol,
                 const std::string& what) {
  REQUIRE(got.size() == want.size());
  double err = 0;
  for (size_t i = 0; i < got.size(); ++i) err = std::max(err, std::fabs(got[i] - want[i]));
  CHECK_MESSAGE(err <= tol, what, ": max error ", err);
}

double rel(double got, double want) {
  return std::fabs(got - want) / std::max(std::fabs(want), 1e-300);
}

eval::FidStats stats_of(const std::map<std::string, Tensor>& g, const std::string& c, int which) {
  const std::string k = std::to_string(which);
  return {g.at(c + ".mu" + k), g.at(c + ".sigma" + k)};
}

}  // namespace

TEST_SUITE("eval") {
  // ---- the pools ------------------------------------------------------------------------------

  TEST_CASE("max_pool2d: matches an f64 loop in every layout, with and without recording") {
    struct P {
      int64_t k, s, p;
    };
    for (const P& q : {P{3, 2, 0}, P{3, 1, 1}, P{2, 2, 0}, P{3, 2, 1}, P{1, 1, 0}, P{2, 1, 1}})
      for (Layout layout : kLayouts) {
        const Tensor x = randn_input({2, 3, 7, 6}, 11, layout);
        Shape shape;
        const std::vector<double> want = pool_reference(x, q.k, q.s, q.p, true, true, &shape);
        {
          NoGradGuard ng;  // the running-maximum path
          const Tensor y = max_pool2d(x, q.k, q.s, q.p);
          CHECK(y.shape() == shape);
          check_close(values(y), want, 0, "max_pool2d no-grad");
        }
        Tensor xg = with_layout(x, layout);
        xg.set_requires_grad(true);
        const Tensor y = max_pool2d(xg, q.k, q.s, q.p);  // the stacked-amax path
        CHECK(y.shape() == shape);
        check_close(values(y), want, 0, "max_pool2d recorded");
      }
    // stride defaults to the kernel; f32 keeps its dtype.
    const Tensor x32 = randn_input({1, 2, 6, 6}, 3, Layout::Contiguous, DType::f32);
    CHECK(max_pool2d(x32, 2).shape() == Shape{1, 2, 3, 3});
    CHECK(max_pool2d(x32, 2).dtype() == DType::f32);
    // A 1×1 kernel copies: never an alias of its input.
    CHECK(max_pool2d(x32, 1).storage() != x32.storage());
    CHECK(max_abs_diff(max_pool2d(x32, 1), x32) == 0);
  }

  TEST_CASE("max_pool2d: gradcheck — tied maxima share the gradient — errors") {
    for (Layout layout : kLayouts) {
      CHECK_GRADCHECK([](const V& v) { return max_pool2d(v[0], 2); },
                      {grad_input({1, 2, 4, 4}, 21, layout)});
      CHECK_GRADCHECK([](const V& v) { return max_pool2d(v[0], 3, 2, 1); },
                      {grad_input({1, 1, 5, 5}, 22, layout)});
    }
    // A constant 2×2 input under a 2×2 window: four tied maxima, a quarter of the gradient each.
    Tensor c = full({1, 1, 2, 2}, 3.0, {.dtype = DType::f64});
    c.set_requires_grad(true);
    max_pool2d(c, 2).sum().backward();
    check_close(values(c.grad()), {0.25, 0.25, 0.25, 0.25}, 1e-15, "tied gradient");
    const Tensor x = randn_input({1, 1, 4, 4}, 1);
    check_error([&] { max_pool2d(x, 2, 1, 2); }, {"max_pool2d", "padding 2"});
    check_error([&] { max_pool2d(x, 5); }, {"max_pool2d", "larger than the padded input"});
    check_error([&] { max_pool2d(x, 0); }, {"max_pool2d", "positive"});
    check_error([&] { max_pool2d(randn_input({4, 4}, 1), 2); }, {"max_pool2d", "[N, C, H, W]"});
    check_error(
        [&] {
          max_pool2d(ones({1, 1, 4, 4}, {.dtype = DType::i64}), 2);
        },
        {"max_pool2d", "floating"});
  }

  TEST_CASE("avg_pool2d: count_include_pad=false divides by the window's input elements") {
    struct P {
      int64_t k, s, p;
    };
    for (const P& q : {P{3, 1, 1}, P{3, 2, 1}, P{2, 2, 1}, P{5, 2, 2}, P{3, 3, 0}})
      for (Layout layout : kLayouts) {
        const Tensor x = randn_input({2, 2, 7, 8}, 5, layout);
        Shape shape;
        const std::vector<double> want = pool_reference(x, q.k, q.s, q.p, false, false, &shape);
        const Tensor y = avg_pool2d(x, q.k, q.s, q.p, /*count_include_pad=*/false);
        CHECK(y.shape() == shape);
        check_close(values(y), want, 1e-14, "avg_pool2d count_include_pad=false");
        // The default still counts the padding.
        const std::vector<double> with_pad = pool_reference(x, q.k, q.s, q.p, false, true, &shape);
        check_close(values(avg_pool2d(x, q.k, q.s, q.p)), with_pad, 1e-14, "avg_pool2d default");
      }
    // Closed form on ones: 1 everywhere without the padding; 4/9 and 6/9 at corners and edges
    // with it.
    const Tensor o = ones({1, 1, 3, 3}, {.dtype = DType::f64});
    check_close(values(avg_pool2d(o, 3, 1, 1, false)), std::vector<double>(9, 1.0), 1e-15,
                "ones, padding not counted");
    CHECK(values(avg_pool2d(o, 3, 1, 1))[0] == doctest::Approx(4.0 / 9.0));
    for (Layout layout : kLayouts)
      CHECK_GRADCHECK([](const V& v) { return avg_pool2d(v[0], 3, 1, 1, false); },
                      {grad_input({1, 2, 3, 4}, 31, layout)});
  }

  // ---- the TF1 resize -------------------------------------------------------------------------

  TEST_CASE("resize_bilinear_tf1: torch-fidelity and NumPy bit for bit, affine_grid to 1e-3") {
    const auto g = load_all("fid_resize.safetensors");
    const nlohmann::json cases = nlohmann::json::parse(
        nn::SafetensorsFile(kGoldenDir + "fid_resize.safetensors").metadata().at("cases"));
    REQUIRE(cases.size() == 5);
    for (const auto& c : cases) {
      const std::string name = c.at("name");
      const int64_t oh = c.at("out")[0], ow = c.at("out")[1], stride = c.at("stride");
      CAPTURE(name);
      const Tensor in = g.at(name + ".input");
      // Every layout for the small cases; the 299×299 ones contiguous and strided.
      const std::vector<Layout> layouts =
          stride == 1 ? kLayouts : std::vector<Layout>{Layout::Contiguous, Layout::Strided};
      for (Layout layout : layouts) {
        Tensor y = eval::resize_bilinear_tf1(with_layout(in, layout), oh, ow);
        CHECK(y.dtype() == DType::f32);
        CHECK(y.shape() == Shape{in.size(0), in.size(1), oh, ow});
        if (stride > 1) y = slice(slice(y, 2, 0, oh, stride), 3, 0, ow, stride);
        CHECK(max_abs_diff(y, g.at(name + ".tf1")) == 0);
        CHECK(max_abs_diff(y, g.at(name + ".numpy")) == 0);
        CHECK(max_abs_diff(y, g.at(name + ".grid")) <= 1e-3);
      }
      // Floating input: the same arithmetic in f64 agrees with the f32 result to f32 rounding.
      const Tensor y64 = eval::resize_bilinear_tf1(to(in, DType::f64), oh, ow);
      CHECK(y64.dtype() == DType::f64);
      const Tensor y32 = eval::resize_bilinear_tf1(in, oh, ow);
      CHECK(max_abs_diff(y64, y32) <= 1e-4);
    }
    // The identity size is the input itself.
    const Tensor same = g.at("same.input");
    CHECK(max_abs_diff(eval::resize_bilinear_tf1(same, 9, 9), to(same, DType::f32)) == 0);
    check_error(
        [&] {
          eval::resize_bilinear_tf1(ones({2, 3, 4}), 5, 5);
        },
        {"resize_bilinear_tf1", "[N, C, H, W]"});
    check_error(
        [&] {
          eval::resize_bilinear_tf1(ones({1, 1, 4, 4}, {.dtype = DType::i64}), 5, 5);
        },
        {"resize_bilinear_tf1", "i64"});
    check_error(
        [&] {
          eval::resize_bilinear_tf1(ones({1, 1, 4, 4}), 0, 5);
        },
        {"resize_bilinear_tf1", "positive"});
  }

  TEST_CASE("inception_input: the resize to 299 then (x − 128)/128 — gray repeated to 3 channels") {
    const auto g = load_all("fid_resize.safetensors");
    for (const std::string name : {"cifar", "mnist"}) {
      const Tensor in = g.at(name + ".input");
      const Tensor x = eval::inception_input(in);
      CHECK(x.shape() == Shape{1, 3, 299, 299});
      const Tensor sub_x = slice(slice(x, 2, 0, 299, 13), 3, 0, 299, 13);
      const Tensor want = div(sub(g.at(name + ".tf1"), 128.0), 128.0);
      for (int64_t ch = 0; ch < 3; ++ch)
        CHECK(max_abs_diff(narrow(sub_x, 1, ch, 1), narrow(want, 1, in.size(1) == 1 ? 0 : ch, 1)) ==
              0);
    }
    check_error([&] { eval::inception_input(ones({1, 3, 8, 8})); }, {"inception_input", "u8"});
    check_error(
        [&] {
          eval::inception_input(ones({1, 2, 8, 8}, {.dtype = DType::u8}));
        },
        {"inception_input", "[N, 1 or 3, H, W]"});
  }

  // ---- the network ----------------------------------------------------------------------------

  TEST_CASE("FidInceptionV3: pool3 features and logits match pytorch-fid's network (1/32 width)") {
    nn::SafetensorsFile f(kGoldenDir + "fid_inception_small.safetensors");
    const int64_t divisor = std::stoll(f.metadata().at("width_divisor"));
    const int64_t classes = std::stoll(f.metadata().at("num_classes"));
    std::map<std::string, Tensor> weights;
    for (const std::string& n : f.names())
      if (n.rfind("Conv2d_", 0) == 0 || n.rfind("Mixed_", 0) == 0 || n.rfind("fc.", 0) == 0)
        weights[n] = f.get(n);
    eval::FidInceptionV3 net({.width_divisor = divisor, .num_classes = classes});
    CHECK(net.feature_dim() == 64);
    net.load_state_dict(weights, /*strict=*/true);  // every name and shape, nothing else
    CHECK(!net.is_training());
    NoGradGuard ng;
    const Tensor images = f.get("input.images"), gray = f.get("input.gray");
    // In f64 the only differences are summation orders and the folded batch norm.
    net.to(DType::f64);
    auto out = net.forward_images(images);
    CHECK(out.pool.shape() == Shape{3, 64});
    CHECK(out.logits.shape() == Shape{3, classes});
    CHECK(rel_err(out.pool, f.get("output.pool")) <= 1e-10);
    CHECK(rel_err(out.logits, f.get("output.logits")) <= 1e-10);
    CHECK(rel_err(net.logits(out.pool, true), f.get("output.logits_biased")) <= 1e-10);
    CHECK(rel_err(net.forward_images(gray, false).pool, f.get("gray.pool")) <= 1e-10);
    CHECK(!net.forward_images(gray, false).logits.defined());
    // In f32, as evaluation runs.
    net.to(DType::f32);
    out = net.forward_images(images);
    CHECK(out.pool.dtype() == DType::f32);
    CHECK(rel_err(out.pool, f.get("output.pool")) <= 2e-5);
    CHECK(rel_err(out.logits, f.get("output.logits")) <= 2e-5);
    check_error([&] { net.forward(ones({1, 3, 74, 80})); }, {"FidInceptionV3", "75×75"});
    check_error([&] { net.forward(ones({1, 1, 80, 80})); }, {"FidInceptionV3", "[N, 3, H, W]"});
  }

  TEST_CASE("FidInceptionV3: full-width names, shapes and counts are pytorch-fid's state dict") {
    std::ifstream in(kGoldenDir + "fid_inception_names.json");
    const nlohmann::json ref = nlohmann::json::parse(in);
    eval::FidInceptionV3 net;
    std::map<std::string, Shape> params, buffers;
    for (const auto& [n, t] : net.named_parameters()) params[n] = t.shape();
    for (const auto& [n, t] : net.named_buffers()) buffers[n] = t.shape();
    std::map<std::string, Shape> want_params, want_buffers;
    for (const auto& [n, s] : ref.at("parameters").items()) want_params[n] = s.get<Shape>();
    for (const auto& [n, s] : ref.at("buffers").items()) want_buffers[n] = s.get<Shape>();
    CHECK(params == want_params);
    CHECK(buffers == want_buffers);
    // 23,850,960 trained values; with the 34,432 batch-norm running statistics, 23,885,392 (the
    // size of pytorch-fid's state dict less its num_batches_tracked counters).
    CHECK(net.num_parameters() == 23'850'960);
    CHECK(net.num_parameters(/*include_buffers=*/true) == 23'885'392);
    CHECK(ref.at("num_parameters").get<int64_t>() == 23'850'960);
    CHECK(ref.at("num_buffer_values").get<int64_t>() == 34'432);
    CHECK(net.feature_dim() == 2048);
    CHECK(net.num_classes() == 1008);
    // The smallest input that runs gives the full-size outputs.
    NoGradGuard ng;
    const auto out = net.forward(zeros({1, 3, 75, 75}));
    CHECK(out.pool.shape() == Shape{1, 2048});
    CHECK(out.logits.shape() == Shape{1, 1008});
    // load_fid_inception is strict: the reduced golden network does not fit the full one.
    check_error([&] { eval::load_fid_inception(kGoldenDir + "fid_inception_small.safetensors"); },
                {"fid_inception_small.safetensors", "Conv2d_1a_3x3.conv.weight"});
  }

  // ---- the Fréchet distance -------------------------------------------------------------------

  TEST_CASE("eigh: the tridiagonal (−1, 2, −1) matrix's closed-form spectrum — reconstruction") {
    const int64_t n = 7;
    std::vector<double> a(size_t(n * n), 0.0);
    for (int64_t i = 0; i < n; ++i) {
      a[size_t(i * n + i)] = 2;
      if (i + 1 < n) a[size_t(i * n + i + 1)] = a[size_t((i + 1) * n + i)] = -1;
    }
    const Tensor A = from_vector(a, {n, n});
    for (Layout layout : kLayouts) {
      const eval::SymmetricEigen e = eval::eigh(with_layout(A, layout));
      std::vector<double> want;
      for (int64_t k = 1; k <= n; ++k)
        want.push_back(2 - 2 * std::cos(double(k) * M_PI / double(n + 1)));
      check_close(values(e.values), want, 1e-13, "eigenvalues");
      // Column k is ±sin(j·k·π/(n + 1)) normalised.
      const std::vector<double> vec = values(e.vectors);
      for (int64_t k = 1; k <= n; ++k) {
        double dot = 0, norm = 0;
        for (int64_t j = 0; j < n; ++j) {
          const double s = std::sin(double((j + 1) * k) * M_PI / double(n + 1));
          dot += s * vec[size_t(j * n + (k - 1))];
          norm += s * s;
        }
        CHECK(std::fabs(std::fabs(dot) / std::sqrt(norm) - 1) <= 1e-12);
      }
      const Tensor rebuilt = matmul(mul(e.vectors, e.values), transpose(e.vectors, 0, 1));
      CHECK(max_abs_diff(rebuilt, A) <= 1e-13);
    }
    CHECK(!eval::eigh(A, false).vectors.defined());
    // Only the lower triangle is read.
    Tensor garbage_upper = clone(A);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = i + 1; j < n; ++j) garbage_upper.data<double>()[i * n + j] = 99;
    CHECK(max_abs_diff(eval::eigh(garbage_upper).values, eval::eigh(A).values) <= 1e-13);
    check_error([&] { eval::eigh(ones({2, 3}, {.dtype = DType::f64})); }, {"eigh", "square"});
    // Singular values, descending: [[3, 0], [4, 5]] has AᵀA with eigenvalues 45 and 5.
    check_close(values(eval::singular_values(from_vector<double>({3, 0, 4, 5}, {2, 2}))),
                {std::sqrt(45.0), std::sqrt(5.0)}, 1e-14, "singular values 2×2");
    for (Layout layout : kLayouts)
      check_close(values(eval::singular_values(
                      with_layout(from_vector<double>({0, 2, 0, -1, 0, 0}, {2, 3}), layout))),
                  {2, 1}, 1e-15, "singular values 2×3");
    CHECK(eval::singular_values(zeros({3, 1})).shape() == Shape{1});
  }

  TEST_CASE("frechet_distance: pytorch-fid's scipy sqrtm values on random statistics") {
    const auto g = load_all("fid_frechet.safetensors");
    for (const std::string c : {"small", "mid", "lowrank"}) {
      CAPTURE(c);
      const eval::FidStats a = stats_of(g, c, 1), b = stats_of(g, c, 2);
      const double want = g.at(c + ".fid").item<double>();
      CHECK(rel(eval::frechet_distance(a, b), want) <= 1e-8);
      // Symmetric in its arguments; f32 statistics are widened.
      CHECK(rel(eval::frechet_distance(b, a), want) <= 1e-8);
      const eval::FidStats a32{to(a.mu, DType::f32), to(a.sigma, DType::f32)};
      CHECK(rel(eval::frechet_distance(a32, b), want) <= 1e-4);
      // Identical statistics: 0.
      CHECK(std::fabs(eval::frechet_distance(a, a)) <= 1e-9);
      CHECK(std::fabs(eval::frechet_distance(b, b)) <= 1e-9);
    }
  }

  TEST_CASE("frechet_distance: closed forms for commuting covariances and shifted means") {
    // Diagonal covariances (zero variances included): Σ (√a_i − √b_i)² + ‖μ1 − μ2‖².
    const std::vector<double> va = {4, 0, 1, 2.5, 0}, vb = {1, 9, 0, 0.1, 0};
    const std::vector<double> ma = {0, 1, 2, 3, 4}, mb = {1, 1, -2, 3, 4.5};
    auto diag = [](const std::vector<double>& v) {
      Tensor t = zeros({int64_t(v.size()), int64_t(v.size())}, {.dtype = DType::f64});
      for (size_t i = 0; i < v.size(); ++i) t.data<double>()[i * v.size() + i] = v[i];
      return t;
    };
    double want = 0;
    for (size_t i = 0; i < va.size(); ++i)
      want += std::pow(std::sqrt(va[i]) - std::sqrt(vb[i]), 2) + std::pow(ma[i] - mb[i], 2);
    const eval::FidStats a{from_vector(ma, {5}), diag(va)}, b{from_vector(mb, {5}), diag(vb)};
    CHECK(rel(eval::frechet_distance(a, b), want) <= 1e-12);
    // The same covariances in a rotated basis (Q·D·Qᵀ, one rotation for both) commute too. The
    // rotated zero variances come back from eigh as ±ε·‖Σ‖, whose roots (√ε·‖Σ‖^{1/2}, against
    // the other covariance's √9) move the trace term by ~1e-8 relative: the square root's own
    // sensitivity at a singular covariance, which any method inherits.

    const Tensor q =
        eval::eigh(add(matmul(transpose(randn_input({5, 5}, 3), 0, 1), randn_input({5, 5}, 3)),
                       eye(5, {.dtype = DType::f64})))
            .vectors;
    auto rotate = [&](const Tensor& d) { return matmul(matmul(q, d), transpose(q, 0, 1)); };
    const eval::FidStats ar{matmul(q, a.mu), rotate(a.sigma)}, br{matmul(q, b.mu), rotate(b.sigma)};
    CHECK(rel(eval::frechet_distance(ar, br), want) <= 1e-8);
    // Only the means differ: ‖μ1 − μ2‖².
    const auto g = load_all("fid_frechet.safetensors");
    const eval::FidStats s = stats_of(g, "mid", 1);
    const eval::FidStats shifted{add(s.mu, 0.5), s.sigma};
    CHECK(rel(eval::frechet_distance(s, shifted), 0.25 * 64) <= 1e-9);
    check_error([&] { eval::frechet_distance(s, a); }, {"frechet_distance", "64", "5"});
    const eval::FidStats bad{a.mu, full({5, 5}, std::nan(""), {.dtype = DType::f64})};
    check_error([&] { eval::frechet_distance(a, bad); }, {"frechet_distance", "non-finite"});
    check_error(
        [&] {
          eval::frechet_distance(a, {a.mu, ones({5, 4}, {.dtype = DType::f64})});
        },
        {"frechet_distance", "sigma must be [5, 5]"});
  }

  // ---- statistics and their files -------------------------------------------------------------

  TEST_CASE("FeatureStats: numpy's mean and cov, whatever the batching, far from the origin") {
    const auto g = load_all("fid_frechet.safetensors");
    const Tensor f = g.at("stats.features");  // [100, 16], offset by 1000
    const Tensor want_mu = g.at("stats.mu"), want_sigma = g.at("stats.sigma");
    for (const Shape& sizes : {Shape{100}, Shape{1, 99}, Shape{7, 30, 0, 13, 50}, Shape{50, 50}}) {
      eval::FeatureStats acc(16);
      int64_t at = 0;
      for (int64_t n : sizes) {
        acc.add(to(narrow(f, 0, at, n), DType::f64));
        at += n;
      }
      CHECK(acc.count() == 100);
      const eval::FidStats s = acc.stats();
      CHECK(rel_err(s.mu, want_mu) <= 1e-14);
      CHECK(rel_err(s.sigma, want_sigma) <= 1e-11);
      CHECK(max_abs_diff(s.sigma, transpose(s.sigma, 0, 1)) == 0);
    }
    // f32 batches in a strided layout are widened to f64.
    const eval::FidStats s32 = eval::compute_stats(with_layout(to(f, DType::f32), Layout::Strided));
    CHECK(rel_err(s32.mu, mean(to(to(f, DType::f32), DType::f64), {0})) <= 1e-14);
    eval::FeatureStats acc(16);
    check_error([&] { acc.add(ones({2, 15})); }, {"FeatureStats", "[B, 16]"});
    check_error([&] { acc.stats(); }, {"FeatureStats", "at least 2"});
    acc.add(ones({1, 16}));
    check_error([&] { acc.stats(); }, {"FeatureStats", "have 1"});
  }

  TEST_CASE("stats .npz: round trip, numpy's own file, malformed files") {
    const auto g = load_all("fid_frechet.safetensors");
    const eval::FidStats s = stats_of(g, "small", 1);
    const std::string path = temp_path("stats.npz");
    eval::save_stats_npz(path, s);
    const eval::FidStats r = eval::load_stats_npz(path);
    CHECK(max_abs_diff(r.mu, s.mu) == 0);
    CHECK(max_abs_diff(r.sigma, s.sigma) == 0);
    CHECK(r.sigma.dtype() == DType::f64);
    // numpy.savez(mu=, sigma=) of the same values.
    const eval::FidStats np = eval::load_stats_npz(kGoldenDir + "fid_stats_numpy.npz");
    CHECK(max_abs_diff(np.mu, s.mu) == 0);
    CHECK(max_abs_diff(np.sigma, s.sigma) == 0);
    // An archive with other entries besides mu and sigma (openai's reference batches hold images).
    const eval::FidStats extra = eval::load_stats_npz(kGoldenDir + "npz_not_npy.npz");
    CHECK(max_abs_diff(extra.sigma, eye(2, {.dtype = DType::f64})) == 0);
    // f32 statistics are widened.
    data::write_npz(path, {{"mu", to(s.mu, DType::f32)}, {"sigma", to(s.sigma, DType::f32)}});
    CHECK(eval::load_stats_npz(path).mu.dtype() == DType::f64);
    // Malformed: wrong keys, shapes, dtypes, values.
    data::write_npz(path, {{"mean", s.mu}, {"sigma", s.sigma}});
    check_error([&] { eval::load_stats_npz(path); }, {path, "'mu' and 'sigma'", "mean.npy"});
    data::write_npz(path, {{"mu", reshape(s.mu, {2, 4})}, {"sigma", s.sigma}});
    check_error([&] { eval::load_stats_npz(path); }, {path, "mu must be a vector", "[2, 4]"});
    data::write_npz(path, {{"mu", s.mu}, {"sigma", narrow(s.sigma, 0, 0, 7)}});
    check_error([&] { eval::load_stats_npz(path); }, {path, "sigma must be [8, 8]", "[7, 8]"});
    data::write_npz(path, {{"mu", to(s.mu, DType::i64)}, {"sigma", s.sigma}});
    check_error([&] { eval::load_stats_npz(path); }, {path, "floating", "i64"});
    data::write_npz(path, {{"mu", full({8}, INFINITY, {.dtype = DType::f64})}, {"sigma", s.sigma}});
    check_error([&] { eval::load_stats_npz(path); }, {path, "non-finite"});
    check_error([&] { eval::load_stats_npz(kGoldenDir + "npz_numpy_uint16.npz"); },
                {"npz_numpy_uint16.npz/mu.npy", "<u2"});
    check_error(
        [&] {
          eval::save_stats_npz(path, {s.mu, ones({8, 7})});
        },
        {"save_stats_npz", "sigma must be [8, 8]"});
    check_error([&] { eval::load_stats_npz(temp_path("missing.npz")); }, {"missing.npz"});
  }

  TEST_CASE("npz: every dtype round trips — numpy's compressed, Fortran-order archive reads") {
    const std::string path = temp_path("all.npz");
    const Tensor f64 = randn_input({3, 4}, 1);
    std::vector<std::pair<std::string, Tensor>> arrays = {
        {"f64", with_layout(f64, Layout::Transposed)},
        {"f32", to(f64, DType::f32)},
        {"f16", to(f64, DType::f16)},
        {"i32", from_vector<int32_t>({-1, 2, 2147483647}, {3})},
        {"i64", from_vector<int64_t>({-(int64_t(1) << 40), 0}, {2, 1})},
        {"u8", from_vector<uint8_t>({0, 255, 7}, {3})},
        {"b", gt(f64, 0.0)},
        {"scalar", scalar_tensor(2.5, {.dtype = DType::f64})},
        {"empty", zeros({0, 3})}};
    data::write_npz(path, arrays);
    const auto back = data::read_npz(path);
    REQUIRE(back.size() == arrays.size());
    for (const auto& [name, t] : arrays) {
      CAPTURE(name);
      const Tensor b = back.at(name);
      CHECK(b.dtype() == t.dtype());
      CHECK(b.shape() == t.shape());
      CHECK(values(b) == values(t));
    }
    // Only the keys asked for.
    CHECK(data::read_npz(path, {"u8", "nope"}).size() == 1);
    const auto np = data::read_npz(kGoldenDir + "npz_numpy_mixed.npz");
    CHECK(values(np.at("f32_fortran")) == std::vector<double>{0, 0.25, 0.5, 0.75, 1, 1.25});
    CHECK(np.at("f32_fortran").shape() == Shape{2, 3});
    CHECK(values(np.at("f64")) == std::vector<double>{0.1, -2.5, 1e300});
    CHECK(values(np.at("f16")) == std::vector<double>{1.5, -0.25});
    CHECK(values(np.at("u8")) == std::vector<double>{0, 255, 7, 8});
    CHECK(np.at("b").dtype() == DType::b8);
    CHECK(values(np.at("b")) == std::vector<double>{1, 0, 1});
    CHECK(values(np.at("i32")) == std::vector<double>{-3, 2147483647});
    CHECK(values(np.at("i64")) == std::vector<double>{-1099511627776.0, 5});
    CHECK(np.at("scalar").dim() == 0);
    CHECK(np.at("scalar").item<double>() == 3.25);
    check_error([&] { data::read_npz(kGoldenDir + "npz_not_npy.npz"); },
                {"npz_not_npy.npz/readme.txt", "not an .npy"});
    check_error(
        [&] {
          data::write_npz(path, {{"x", ones({2}, {.dtype = DType::bf16})}});
        },
        {"write_npz", "bf16"});
    check_error(
        [&] {
          data::write_npz(path, {{"x", ones({2})}, {"x", ones({2})}});
        },
        {"write_npz", "unique"});
  }

  // ---- the Inception Score --------------------------------------------------------------------

  TEST_CASE("inception_score: torch-fidelity's values — NumPy's legacy permutation") {
    std::ifstream in(kGoldenDir + "fid_is.json");
    const nlohmann::json j = nlohmann::json::parse(in);
    for (const auto& p : j.at("permutations")) {
      const auto perm = eval::numpy_legacy_permutation(p.at("n"), p.at("seed"));
      CHECK(perm == p.at("perm").get<std::vector<int64_t>>());
    }
    for (const auto& c : j.at("inception_score")) {
      CAPTURE(c.at("name").get<std::string>());
      const Shape shape = c.at("shape").get<Shape>();
      const Tensor logits = from_vector(c.at("logits").get<std::vector<double>>(), shape);
      for (Layout layout : kLayouts) {
        const eval::InceptionScore is = eval::inception_score(
            with_layout(logits, layout), c.at("splits"), c.at("shuffle"), c.at("seed"));
        CHECK(rel(is.mean, c.at("mean")) <= 1e-13);
        CHECK(rel(is.std, c.at("std")) <= 1e-11);
      }
    }
  }

  TEST_CASE("inception_score: closed forms on hand-made logits — errors") {
    // Sample i is confident in class i mod C: logit L there, 0 elsewhere. Unshuffled splits of 2·C
    // rows see every class twice, so p(y) is uniform and each split scores
    //   exp(p·log(p·C) + (C − 1)·q·log(q·C)),  p = e^L/(e^L + C − 1), q = 1/(e^L + C − 1).
    const int64_t C = 5, splits = 3;
    const double L = 4;
    std::vector<double> v;
    for (int64_t i = 0; i < 2 * C * splits; ++i)
      for (int64_t k = 0; k < C; ++k) v.push_back(k == i % C ? L : 0.0);
    const Tensor logits = from_vector(v, {2 * C * splits, C});
    const double p = std::exp(L) / (std::exp(L) + C - 1), q = 1 / (std::exp(L) + C - 1);
    const double want = std::exp(p * std::log(p * C) + (C - 1) * q * std::log(q * C));
    eval::InceptionScore is = eval::inception_score(logits, splits, /*shuffle=*/false);
    CHECK(rel(is.mean, want) <= 1e-13);
    CHECK(is.std <= 1e-13);
    // f32 logits are widened; the score is invariant to a constant added to every logit.
    is = eval::inception_score(to(add(logits, 100.0), DType::f32), splits, false);
    CHECK(rel(is.mean, want) <= 1e-6);
    // Identical predictions: p(y|x) = p(y), KL 0, IS 1; likewise for one class only.
    is = eval::inception_score(randn_input({1, 7}, 2).expand({30, 7}), 10);
    CHECK(std::fabs(is.mean - 1) <= 1e-14);
    CHECK(is.std <= 1e-14);
    check_error([&] { eval::inception_score(ones({5, 3}), 10); }, {"inception_score", "10 splits"});
    check_error([&] { eval::inception_score(ones({5}), 1); }, {"inception_score", "[N, C]"});
  }
}
