// LPIPS (eval/lpips.h): both variants against piq 0.7.0 and lpips 0.1.4 run with random
// reduced-width weights (tools/gen_lpips_goldens.py): distances and input gradients in f64 and f32,
// on every input layout, and through the 224×224 resize; the full network's names, shapes and
// parameter count; d(a, a) = 0 and symmetry; gradcheck of a tiny network; weight loading and its
// errors; LPIPS as the distance of a CT step and in the run configuration.
#include <filesystem>

#include "consistency/training.h"
#include "eval/lpips.h"
#include "nn/safetensors.h"
#include "runner/config.h"
#include "runner/trainer.h"
#include "tests/golden_util.h"
#include "tests/run_helpers.h"

using namespace cm;
using namespace cm::test;
namespace fs = std::filesystem;

namespace {

const std::string kGolden = kGoldenDir + "lpips.safetensors";
const std::vector<std::string> kVariants = {"piq", "original"};

// The network tensors of the golden file (not its inputs and outputs).
std::map<std::string, Tensor> golden_lpips_weights() {
  const nn::SafetensorsFile f(kGolden);
  std::map<std::string, Tensor> w;
  for (const std::string& n : f.names())
    if (n.rfind("features.", 0) == 0 || n.rfind("lin", 0) == 0) w[n] = f.get(n);
  return w;
}

std::shared_ptr<eval::Lpips> golden_lpips(const std::string& variant, DType dtype, bool resize) {
  const nn::SafetensorsFile f(kGolden);
  eval::LpipsOptions o = eval::LpipsOptions::variant(variant);
  o.widths = nlohmann::json::parse(f.metadata().at("widths")).get<std::vector<int64_t>>();
  if (!resize) o.resize_below = 0;
  auto m = std::make_shared<eval::Lpips>(o);
  m->load_state_dict(golden_lpips_weights());
  m->to(dtype);
  return m;
}

Tensor golden(const std::string& name, DType dtype = DType::f64) {
  return nn::SafetensorsFile(kGolden).get(name, dtype);
}

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() /
             ("cm_test_lpips_" + name + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

// The golden network alone, as tools/convert_lpips.py writes a weights file.
std::string write_golden_weights(const TempDir& dir) {
  const std::string p = (dir.path / "lpips_tiny.safetensors").string();
  nn::save_safetensors(p, golden_lpips_weights());
  return p;
}

// ‖a − b‖₂ / ‖b‖₂
double rel_err_norm(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  const std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num += (x[i] - y[i]) * (x[i] - y[i]);
    den += y[i] * y[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// Compares distance and input gradients with the golden entries "<prefix>.*" (relative error
// `tol`, gradients `grad_tol`, default tol): in f64 entry by entry (max |Δ| / max |ref|). In f32
// the gradients are compared in norm (‖Δ‖ / ‖ref‖): a ReLU input or a max-pool window within f32
// rounding of 0 or of a tie sends that entry's gradient elsewhere in any f32 implementation (on the
// smooth resized images such windows are common, and cm and PyTorch, each in f32, flip different
// ones), while a systematic error (a constant, a cast, a layer) shows in the norm as well.
void check_against_golden(const eval::Lpips& lp, const Tensor& a0, const Tensor& b0,
                          const std::string& prefix, Layout layout, double tol,
                          double grad_tol = 0) {
  if (grad_tol == 0) grad_tol = tol;
  Tensor a = with_layout(a0, layout), b = with_layout(b0, layout);
  a.set_requires_grad(true);
  b.set_requires_grad(true);
  const Tensor d = lp(a, b);
  const std::string what = prefix + " " + dtype_name(a.dtype()) + " " + layout_name(layout);
  CHECK_MESSAGE(rel_err(d, golden(prefix + ".distance")) < tol, what);
  sum(d).backward();
  auto err = a.dtype() == DType::f64 ? rel_err : rel_err_norm;
  CHECK_MESSAGE(err(a.grad(), golden(prefix + ".grad_a")) < grad_tol, what, " gradient of a");
  CHECK_MESSAGE(err(b.grad(), golden(prefix + ".grad_b")) < grad_tol, what, " gradient of b");
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A small 3-channel consistency model.
nn::SongUNetConfig tiny_unet() {
  nn::SongUNetConfig c = nn::songunet_preset("ddpmpp-digits-8");
  c.in_channels = c.out_channels = 3;
  c.model_channels = 8;
  c.channel_mult = {1, 2};
  c.num_blocks = 1;
  c.attn_resolutions = {4};
  c.dropout = 0;
  return c;
}

runner::json tiny_ct_config() {
  runner::json j = test::tiny_run_config("ct", 2);
  j["seed"] = 5;
  j["train"]["batch"] = 1;
  j["train"].erase("lr");
  j["train"].erase("log_every");
  j.erase("sample");
  j["consistency"] = {{"total_steps", 2}, {"distance", "lpips"}};
  return j;
}

std::string config_problems(const runner::json& user) {
  return error_of([&] { runner::resolve_config(user, "test.json"); });
}

}  // namespace

TEST_SUITE("eval") {
  TEST_CASE("LPIPS matches piq and lpips in f64 on every input layout") {
    for (const std::string& v : kVariants) {
      auto lp = golden_lpips(v, DType::f64, /*resize=*/false);
      for (Layout layout : kLayouts)
        check_against_golden(*lp, golden("input.a"), golden("input.b"), v, layout, 1e-9);
    }
  }

  TEST_CASE("LPIPS in f32 matches the references to f32 precision") {
    for (const std::string& v : kVariants) {
      auto lp = golden_lpips(v, DType::f32, /*resize=*/false);
      check_against_golden(*lp, golden("input.a", DType::f32), golden("input.b", DType::f32), v,
                           Layout::Contiguous, 1e-5);
      // f64 inputs are cast to the weights' dtype: an f32 result
      CHECK(lp->forward(golden("input.a"), golden("input.b")).dtype() == DType::f32);
    }
  }

  TEST_CASE("images narrower than 256 are resized to 224x224 first, as openai's code does") {
    // The rule, on small sizes: a width of resize_below or more is left as it is.
    {
      const nn::SafetensorsFile f(kGolden);
      eval::LpipsOptions o = eval::LpipsOptions::piq();
      o.widths = {6, 8, 10, 12, 14};
      o.resize_below = 20;  // the golden images are 32x20: not resized
      o.resize_to = 16;
      eval::Lpips at(o);
      o.resize_below = 21;  // resized to 16x16
      eval::Lpips below(o);
      o.resize_below = 0;
      eval::Lpips never(o);
      for (eval::Lpips* m : {&at, &below, &never}) {
        m->load_state_dict(golden_lpips_weights());
        m->to(DType::f64);
      }
      const Tensor a = golden("input.a"), b = golden("input.b");
      CHECK(rel_err(at(a, b), golden("piq.distance")) < 1e-9);
      CHECK(rel_err(below(a, b),
                    never(upsample_bilinear2d(a, 16, 16), upsample_bilinear2d(b, 16, 16))) < 1e-14);
    }
    for (const std::string& v : kVariants) {
      auto lp = golden_lpips(v, DType::f64, /*resize=*/true);
      CHECK(lp->options().resize_below == 256);
      CHECK(lp->options().resize_to == 224);
      check_against_golden(*lp, golden("input.up_a"), golden("input.up_b"), v + ".up",
                           Layout::Strided, 1e-9);
      // f32: with max pools on the smooth resized images, one window within rounding of a tie
      // carries ~6e-6 of the gradient's norm (measured); average pools have no ties.
      auto lp32 = golden_lpips(v, DType::f32, /*resize=*/true);
      check_against_golden(*lp32, golden("input.up_a", DType::f32),
                           golden("input.up_b", DType::f32), v + ".up", Layout::Contiguous, 1e-5,
                           v == "piq" ? 1e-5 : 1e-4);
    }
  }

  TEST_CASE("the full network: torchvision and lpips names, shapes and parameter count") {
    eval::Lpips full;
    // VGG16's features: 14,714,688 weights (torchvision's vgg16().features, counted by
    // tools/gen_lpips_goldens.py); the five heads 64 + 128 + 256 + 512 + 512 = 1,472.
    CHECK(full.num_parameters(/*include_buffers=*/true) == 14714688 + 1472);
    CHECK(full.num_parameters() == 0);  // frozen: nothing for an optimizer
    CHECK(full.parameters().empty());
    std::vector<std::string> expected;
    for (int i : {0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28})
      for (const char* s : {".weight", ".bias"})
        expected.push_back("features." + std::to_string(i) + s);
    for (int k = 0; k < 5; ++k) expected.push_back("lin" + std::to_string(k) + ".model.1.weight");
    std::vector<std::string> names;
    for (const auto& [n, t] : full.named_buffers()) names.push_back(n);
    std::sort(expected.begin(), expected.end());
    std::sort(names.begin(), names.end());
    CHECK(names == expected);
    const std::map<std::string, Tensor> sd = full.state_dict();
    CHECK(sd.at("features.0.weight").shape() == Shape{64, 3, 3, 3});
    CHECK(sd.at("features.7.weight").shape() == Shape{128, 128, 3, 3});
    CHECK(sd.at("features.17.weight").shape() == Shape{512, 256, 3, 3});
    CHECK(sd.at("features.28.bias").shape() == Shape{512});
    CHECK(sd.at("lin0.model.1.weight").shape() == Shape{1, 64, 1, 1});
    CHECK(sd.at("lin2.model.1.weight").shape() == Shape{1, 256, 1, 1});
    CHECK(sd.at("lin4.model.1.weight").shape() == Shape{1, 512, 1, 1});
  }

  TEST_CASE("d(a, a) = 0, d(a, b) = d(b, a) > 0, and the network stays frozen") {
    for (const std::string& v : kVariants) {
      auto lp = golden_lpips(v, DType::f64, /*resize=*/false);
      Tensor a = golden("input.a"), b = golden("input.b");
      a.set_requires_grad(true);
      const std::vector<double> self = lp->forward(a, a).to_vector<double>();
      CHECK(self == std::vector<double>{0.0, 0.0});
      const std::vector<double> ab = lp->forward(a, b).to_vector<double>();
      const std::vector<double> ba = lp->forward(b, a).to_vector<double>();
      for (size_t i = 0; i < ab.size(); ++i) {
        CHECK(ab[i] > 0.1);
        CHECK(ba[i] == doctest::Approx(ab[i]).epsilon(1e-13));
      }
      // grey images are the same image in the three channels
      const Tensor g1 = narrow(a, 1, 0, 1), g2 = narrow(b, 1, 1, 1);
      CHECK(rel_err(lp->forward(g1, g2),
                    lp->forward(expand(g1, {-1, 3, -1, -1}), expand(g2, {-1, 3, -1, -1}))) < 1e-15);
      sum(lp->forward(a, b)).backward();
      CHECK(a.grad().defined());
      for (const auto& [n, t] : lp->named_buffers()) {
        CHECK_MESSAGE(!t.requires_grad(), n);
        CHECK_MESSAGE(!t.grad().defined(), n);
      }
    }
  }

  TEST_CASE("gradcheck: a tiny network through the resize, both variants") {
    Generator gen(7);
    for (const std::string& v : kVariants) {
      eval::LpipsOptions o = eval::LpipsOptions::variant(v);
      o.widths = {2, 3, 2, 3, 2};
      o.resize_to = 16;  // the smallest size four pools allow
      eval::Lpips lp(o);
      std::map<std::string, Tensor> w;
      for (const auto& [n, t] : lp.state_dict()) {
        const Tensor r = randn(t.shape(), {.dtype = DType::f64}, &gen);
        w[n] = n.rfind("lin", 0) == 0 ? add(abs(r), 0.1) : mul(r, 0.6);
      }
      lp.load_state_dict(w);
      lp.to(DType::f64);
      const Tensor a = grad_input({1, 3, 3, 3}, 11, Layout::Transposed, 0.5);
      const Tensor b = grad_input({1, 3, 3, 3}, 12, Layout::Contiguous, 0.5);
      auto f = [&](const std::vector<Tensor>& x) { return lp(x[0], x[1]); };
      CHECK_GRADCHECK(f, {a, b});
    }
  }

  TEST_CASE("load_lpips: widths from the file, strict names, clear errors") {
    TempDir dir("load");
    const std::string path = write_golden_weights(dir);
    CHECK(eval::lpips_widths(path) == std::vector<int64_t>{6, 8, 10, 12, 14});
    eval::LpipsOptions o = eval::LpipsOptions::original();
    o.resize_below = 0;
    auto lp = eval::load_lpips(path, o);
    CHECK(lp->options().pooling == eval::LpipsPooling::Max);
    lp->to(DType::f64);
    CHECK(rel_err(lp->forward(golden("input.a"), golden("input.b")), golden("original.distance")) <
          1e-9);

    const std::string missing = (dir.path / "nope.safetensors").string();
    CHECK(error_of([&] { eval::load_lpips(missing); }).find("does not exist") != std::string::npos);
    const std::string not_lpips =
        error_of([&] { eval::load_lpips(kGoldenDir + "songunet_ddpmpp.safetensors"); });
    CHECK(not_lpips.find("is not an LPIPS weights file") != std::string::npos);
    std::map<std::string, Tensor> w = golden_lpips_weights();
    w.erase("lin3.model.1.weight");
    const std::string partial = (dir.path / "partial.safetensors").string();
    nn::save_safetensors(partial, w);
    const std::string e = error_of([&] { eval::load_lpips(partial); });
    CHECK(e.find("lin3.model.1.weight") != std::string::npos);
    CHECK(e.find(partial) != std::string::npos);
  }

  TEST_CASE("LPIPS errors name the problem") {
    auto lp = golden_lpips("piq", DType::f32, /*resize=*/false);
    const Tensor x = zeros({2, 3, 16, 16});
    CHECK(error_of([&] {
            lp->forward(zeros({2, 2, 16, 16}), zeros({2, 2, 16, 16}));
          }).find("Lpips: expected images") != std::string::npos);
    CHECK(error_of([&] {
            lp->forward(x, zeros({1, 3, 16, 16}));
          }).find("differ in shape") != std::string::npos);
    CHECK(error_of([&] {
            lp->forward(zeros({1, 3, 8, 16}), zeros({1, 3, 8, 16}));
          }).find("too small") != std::string::npos);
    CHECK_THROWS_AS(lp->forward(zeros({3, 16, 16}), zeros({3, 16, 16})), Error);
    CHECK(error_of([] { eval::LpipsOptions::variant("vgg"); }).find("unknown variant") !=
          std::string::npos);
    CHECK_THROWS_AS(eval::Lpips(eval::LpipsOptions{.widths = {64, 128, 256, 512}}), Error);
    CHECK_THROWS_AS(eval::Lpips(eval::LpipsOptions{.widths = {64, 0, 256, 512, 512}}), Error);
  }

  TEST_CASE("a CT step with the LPIPS distance runs and gives gradients") {
    using namespace cm::consistency;
    CHECK(parse_distance("lpips") == Distance::Lpips);
    std::shared_ptr<const eval::Lpips> lp = golden_lpips("piq", DType::f32, /*resize=*/true);
    Generator init(3);
    nn::SongUNet net(tiny_unet(), init);
    const Denoiser f(net, Parameterization::Consistency, NoiseLabels::EdmLog4, {});
    LossOptions o{.distance = Distance::Lpips};
    // without the network: a clear error
    const Tensor x = clamp(randn({2, 3, 8, 8}, {}, &init), -1, 1);
    const Tensor z = randn({2, 3, 8, 8}, {}, &init);
    const std::vector<double> sigmas = karras_sigmas(10, {});
    Generator dropout(4);
    CHECK(error_of([&] {
            ct_loss_at(f, f, x, {}, sigmas, {2, 6}, z, o, dropout);
          }).find("lpips needs the LPIPS network") != std::string::npos);

    o.learned_distance = [lp](const Tensor& a, const Tensor& b) { return lp->forward(a, b); };
    StepLoss r = ct_loss_at(f, f, x, {}, sigmas, {2, 6}, z, o, dropout);
    // oracle: LPIPS between the two consistency outputs, computed directly (λ ≡ 1)
    {
      NoGradGuard ng;
      const Tensor hi = from_vector(std::vector<double>{sigmas[2], sigmas[6]}, {2}, {});
      const Tensor lo = from_vector(std::vector<double>{sigmas[3], sigmas[7]}, {2}, {});
      const Tensor x_hi = add(x, mul(z, reshape(hi, {-1, 1, 1, 1})));
      const Tensor x_lo = add(x, mul(z, reshape(lo, {-1, 1, 1, 1})));
      const Tensor want = lp->forward(f(x_hi, hi), f(x_lo, lo));
      CHECK(rel_err(r.per_sample, want) < 1e-5);
    }
    const double loss = r.loss.item<double>();
    CHECK(std::isfinite(loss));
    CHECK(loss > 0);
    r.loss.backward();
    double total = 0;
    for (const auto& [n, p] : net.named_parameters()) {
      REQUIRE_MESSAGE(p.grad().defined(), n);
      const std::vector<double> g = p.grad().to_vector<double>();
      for (double e : g) {
        CHECK_MESSAGE(std::isfinite(e), n);
        total += std::fabs(e);
      }
    }
    CHECK(total > 0);
    for (const auto& [n, t] : lp->named_buffers()) CHECK_MESSAGE(!t.grad().defined(), n);
  }

  TEST_CASE("run configuration: consistency.lpips is validated and bound by the trainer") {
    TempDir dir("config");
    const std::string weights = write_golden_weights(dir);
    runner::json j = tiny_ct_config();
    const std::string no_weights = config_problems(j);
    CHECK(no_weights.find("/consistency/lpips/weights: missing") != std::string::npos);
    // an absent file is the trainer's error (it reads the file); the configuration itself stays
    // valid, so that a checkpoint of an LPIPS run samples where the weights are not
    j["consistency"]["lpips"] = {{"weights", (dir.path / "absent.safetensors").string()}};
    CHECK(config_problems(j).empty());
    check_error(
        [&] {
          runner::Trainer t(runner::typed_config(runner::resolve_config(j, "test.json")),
                            std::nullopt, nullptr);
        },
        {"/consistency/lpips/weights: no such file", "absent.safetensors", "convert_lpips.py"});
    j["consistency"]["lpips"] = {{"weights", weights}, {"variant", "vgg"}};
    CHECK(config_problems(j).find("/consistency/lpips/variant") != std::string::npos);
    runner::json l2 = j;
    l2["consistency"]["distance"] = "l2";
    l2["consistency"]["lpips"]["variant"] = "piq";
    CHECK(config_problems(l2).find("applies only to distance \"lpips\"") != std::string::npos);

    j["consistency"]["lpips"] = {{"weights", weights}};
    const runner::json resolved = runner::resolve_config(j, "test.json");
    CHECK(resolved["consistency"]["lpips"]["variant"] == "piq");  // the default
    j["consistency"]["lpips"]["variant"] = "original";
    const runner::RunConfig cfg = runner::typed_config(runner::resolve_config(j, "test.json"));
    CHECK(cfg.cons.loss.distance == consistency::Distance::Lpips);
    CHECK(cfg.cons.lpips_weights == weights);
    CHECK(cfg.cons.lpips_variant == "original");

    // digits are grey 8x8 images: repeated into RGB and resized to 224x224 for LPIPS
    runner::Trainer t(cfg, std::nullopt, nullptr);
    const runner::StepStats s = t.train_step();
    CHECK(std::isfinite(s.loss));
    CHECK(s.loss > 0);
    CHECK(s.grad_norm > 0);
  }
}
