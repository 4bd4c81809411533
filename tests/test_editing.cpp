// Zero-shot editing (consistency/editing.h, the paper's Algorithm 4): properties that hold exactly
// or to float precision whatever the network, checked with small randomly initialised networks —
// the maps are orthogonal with the documented first rows, inpainting keeps the known pixels,
// colorization the luma, super-resolution the patch means, an empty mask returns the reference,
// stroke-guided generation from σ_min returns its input, and a result depends only on its
// reference and seed.
#include <algorithm>
#include <cmath>

#include <filesystem>
#include <fstream>

#include "consistency/editing.h"
#include "datasets/npz.h"
#include "nn/songunet.h"
#include "runner/edit_command.h"
#include "runner/evaluate.h"
#include "runner/trainer.h"
#include "tests/helpers.h"
#include "tests/run_helpers.h"

using namespace cm;
using namespace cm::consistency;

namespace {

// A small consistency model on 8×8 images with `channels` channels (random weights, dropout 0).
struct Model {
  Generator gen{11};
  nn::SongUNet net;
  Denoiser f;
  explicit Model(int64_t channels)
      : net(config(channels), gen),
        f(net, Parameterization::Consistency, NoiseLabels::EdmLog4, NoiseConstants{}) {
    net.eval();
  }
  static nn::SongUNetConfig config(int64_t channels) {
    nn::SongUNetConfig c = nn::songunet_preset("ddpmpp-digits-8");
    c.in_channels = c.out_channels = channels;
    c.model_channels = 8;
    c.channel_mult = {1, 2};
    c.num_blocks = 1;
    c.attn_resolutions = {4};
    c.dropout = 0;
    return c;
  }
};

// References in [−1, 1].
Tensor references(int64_t n, int64_t channels, uint64_t seed) {
  Generator g(seed);
  return clamp(mul(randn({n, channels, 8, 8}, {}, &g), 0.6), -1.0, 1.0);
}

std::vector<double> matmul_rows(const std::vector<double>& a, size_t n) {  // A·Aᵀ
  std::vector<double> out(n * n, 0.0);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j)
      for (size_t k = 0; k < n; ++k) out[i * n + j] += a[i * n + k] * a[j * n + k];
  return out;
}

void check_orthogonal(const std::vector<double>& a, size_t n) {
  REQUIRE(a.size() == n * n);
  const std::vector<double> p = matmul_rows(a, n);
  double worst = 0;
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) worst = std::max(worst, std::fabs(p[i * n + j] - (i == j)));
  CHECK(worst < 1e-12);
}

const std::vector<double> kTaus = {80.0, 2.0, 0.3};

}  // namespace

TEST_SUITE("consistency") {
  TEST_CASE("editing maps are orthogonal, with the luma and the patch mean as first rows") {
    const std::vector<double> c = colorization_matrix();
    check_orthogonal(c, 3);
    const double norm = std::sqrt(0.2989 * 0.2989 + 0.5870 * 0.5870 + 0.1140 * 0.1140);
    CHECK(std::fabs(c[0] - 0.2989 / norm) < 1e-15);
    CHECK(std::fabs(c[1] - 0.5870 / norm) < 1e-15);
    CHECK(std::fabs(c[2] - 0.1140 / norm) < 1e-15);
    for (int64_t p : {1, 2, 4}) {
      CAPTURE(p);
      const std::vector<double> m = patch_matrix(p);
      check_orthogonal(m, size_t(p * p));
      for (int64_t k = 0; k < p * p; ++k) CHECK(std::fabs(m[size_t(k)] - 1.0 / double(p)) < 1e-15);
    }
    // the maps on images: Aᵀ(A x) = x and ‖A x‖ = ‖x‖ (f64)
    Generator g(3);
    const Tensor x = randn({2, 3, 8, 8}, {.dtype = DType::f64}, &g);
    for (const EditTransform& a : {identity_transform(), colorization_transform(),
                                   superres_transform(2), superres_transform(4)}) {
      CAPTURE(a.name);
      const Tensor ax = a.forward(x);
      CHECK(ax.shape() == x.shape());
      CHECK(max_abs_diff(a.inverse(ax), x) < 1e-12);
      CHECK(std::fabs(sum(square(ax)).item<double>() - sum(square(x)).item<double>()) < 1e-9);
    }
    // super-resolution's coefficient 0 of each patch is the patch mean times p
    const Tensor s = superres_transform(2).forward(x);
    const Tensor means = avg_pool2d(x, 2);
    CHECK(std::fabs(s.to_vector<double>()[0] - 2.0 * means.to_vector<double>()[0]) < 1e-12);
  }

  TEST_CASE("inpainting keeps the known pixels of the reference exactly") {
    Model m(1);
    const Tensor y = references(3, 1, 5);
    const Tensor omega = center_square_mask(1, 8, 8);
    const EditResult r = edit(m.f, y, identity_transform(), omega, {0, 1, 2}, {.taus = kTaus});
    const std::vector<float> res = r.result.to_vector<float>(), ref = y.to_vector<float>(),
                             deg = r.degraded.to_vector<float>(), om = omega.to_vector<float>();
    size_t known_wrong = 0, generated_changed = 0, fill_wrong = 0;
    for (size_t i = 0; i < res.size(); ++i) {
      const bool gen = om[i % om.size()] > 0.5f;
      if (!gen) known_wrong += res[i] != ref[i];
      if (gen) generated_changed += res[i] != ref[i];
      fill_wrong += deg[i] != (gen ? -1.0f : ref[i]);
    }
    CHECK(known_wrong == 0);
    CHECK(generated_changed > 0);  // the square is generated, not copied
    CHECK(fill_wrong == 0);
    CHECK(amax(abs(r.result)).item<double>() <= 1.0);
  }

  TEST_CASE("colorization keeps the reference's luma — super-resolution its patch means") {
    Model rgb(3);
    const Tensor y = references(2, 3, 6);
    const EditTransform col = colorization_transform();
    const EditResult c = edit(rgb.f, y, col, colorization_mask(8, 8), {4, 9}, {.taus = kTaus});
    const Tensor luma_result = select(col.forward(c.result), 1, 0);
    const Tensor luma_ref = select(col.forward(y), 1, 0);
    CHECK(max_abs_diff(luma_result, luma_ref) < 1e-5);
    CHECK(max_abs_diff(c.result, y) > 1e-3);  // the colours are generated
    Model grey(1);
    const Tensor g = references(2, 1, 7);
    for (int64_t p : {2, 4}) {
      CAPTURE(p);
      const EditResult s = edit(grey.f, g, superres_transform(p), superres_mask(1, 8, 8, p), {1, 2},
                                {.taus = kTaus});
      CHECK(max_abs_diff(avg_pool2d(s.result, p), avg_pool2d(g, p)) < 1e-5);
      // the degraded reference is the patch means with the rest filled
      CHECK(max_abs_diff(avg_pool2d(s.degraded, p), avg_pool2d(g, p)) > 0);
    }
  }

  TEST_CASE("an empty mask returns the reference — stroke-guided generation from σ_min its input") {
    Model m(3);
    const Tensor y = references(2, 3, 8);
    const Tensor none = zeros({1, 3, 8, 8});
    for (const EditTransform& a :
         {identity_transform(), colorization_transform(), superres_transform(2)}) {
      CAPTURE(a.name);
      const EditResult r = edit(m.f, y, a, none, {1, 2}, {.taus = kTaus});
      CHECK(max_abs_diff(r.result, y) < 1e-6);
    }
    // Ω = all ones, one step at τ_1 = σ_min: f(x, σ_min) = x (c_skip = 1, c_out = 0), so the
    // result is the input plus σ_min-sized noise
    const NoiseConstants nc;
    const EditResult s = edit(m.f, y, identity_transform(), ones({1, 3, 8, 8}), {1, 2},
                              {.taus = {nc.sigma_min}, .fill = std::nullopt});
    CHECK(max_abs_diff(s.degraded, y) == 0);
    CHECK(max_abs_diff(s.result, y) < nc.sigma_min * 6);
  }

  TEST_CASE("an edit depends only on its reference and its seed, not on the batch") {
    Model m(1);
    const Tensor y = references(3, 1, 9);
    const Tensor omega = box_mask(1, 8, 8, 0, 0, 8, 4);  // the left half
    const EditResult all = edit(m.f, y, identity_transform(), omega, {10, 11, 12}, {.taus = kTaus});
    const EditResult one = edit(m.f, narrow(y, 0, 1, 1).contiguous(), identity_transform(), omega,
                                {11}, {.taus = kTaus});
    CHECK(max_abs_diff(narrow(all.result, 0, 1, 1), one.result) < 1e-6);
    const EditResult other = edit(m.f, narrow(y, 0, 1, 1).contiguous(), identity_transform(), omega,
                                  {99}, {.taus = kTaus});
    CHECK(max_abs_diff(other.result, one.result) > 1e-3);
  }

  TEST_CASE("built-in masks: a bitmap letter, centred — random boxes from each image's seed") {
    // 'S' at 28×28: scale ⌊0.8·min(28/7, 28/5)⌋ = 3, 15 set bits of 9 pixels each, at (3, 6)
    const Tensor s = letter_mask(2, 28, 28, 'S');
    CHECK(s.shape() == Shape{1, 2, 28, 28});
    CHECK(sum(s).item<double>() == 2 * 15 * 9);
    CHECK(s.to_vector<float>()[size_t(3 * 28 + 6)] == 0.0f);   // row 0 of S is .XXXX
    CHECK(s.to_vector<float>()[size_t(3 * 28 + 9)] == 1.0f);   // its second column
    CHECK(s.to_vector<float>()[size_t(23 * 28 + 6)] == 1.0f);  // the last row XXXX.: its first
    CHECK(s.to_vector<float>()[size_t(2 * 28 + 9)] == 0.0f);   // above the letter
    CHECK(max_abs_diff(select(s, 1, 0), select(s, 1, 1)) == 0);
    // at 8×8 the font is drawn once, at (0, 1)
    const Tensor i8 = letter_mask(1, 8, 8, 'I');
    CHECK(sum(i8).item<double>() == 3 + 5 + 3);  // I: .XXX. then five ..X.. then .XXX.
    CHECK(max_abs_diff(letter_mask(1, 8, 8, 'O'), letter_mask(1, 8, 8, 'Q')) > 0);
    CHECK(test::error_message_of([] { letter_mask(1, 8, 8, 's'); }).find("capital") !=
          std::string::npos);
    CHECK(test::error_message_of([] { letter_mask(1, 6, 6, 'S'); }).find("smaller than") !=
          std::string::npos);

    const Tensor boxes = random_boxes_mask({3, 4, 3}, 2, 28, 28, 3);
    REQUIRE(boxes.shape() == Shape{3, 2, 28, 28});
    CHECK(max_abs_diff(select(boxes, 0, 0), select(boxes, 0, 2)) == 0);  // same seed, same mask
    CHECK(max_abs_diff(select(boxes, 0, 0), select(boxes, 0, 1)) > 0);
    CHECK(max_abs_diff(narrow(boxes, 0, 1, 1), random_boxes_mask({4}, 2, 28, 28, 3)) == 0);
    CHECK(max_abs_diff(select(boxes, 1, 0), select(boxes, 1, 1)) == 0);  // every channel alike
    for (int64_t k = 0; k < 3; ++k) {
      const double area = sum(select(select(boxes, 0, k), 0, 0)).item<double>();
      CHECK(area >= 4 * 4);      // at least one box of the smallest side (⌈28/8⌉ = 4)
      CHECK(area <= 3 * 9 * 9);  // at most three of the largest (⌊28/3⌋ = 9)
    }
    const std::vector<float> v = boxes.to_vector<float>();
    CHECK(std::all_of(v.begin(), v.end(), [](float x) { return x == 0.0f || x == 1.0f; }));
  }

  TEST_CASE("a per-image mask: inpainting keeps each image's own known pixels") {
    Model m(1);
    const Tensor y = references(3, 1, 8);
    const Tensor omega = random_boxes_mask({0, 1, 2}, 1, 8, 8, 2);
    const EditResult r = edit(m.f, y, identity_transform(), omega, {0, 1, 2}, {.taus = kTaus});
    const std::vector<float> res = r.result.to_vector<float>(), ref = y.to_vector<float>(),
                             om = omega.to_vector<float>();
    size_t known_wrong = 0, generated_changed = 0;
    for (size_t i = 0; i < res.size(); ++i) {
      if (om[i] < 0.5f) known_wrong += res[i] != ref[i];
      if (om[i] > 0.5f) generated_changed += res[i] != ref[i];
    }
    CHECK(known_wrong == 0);
    CHECK(generated_changed > 0);
  }

  TEST_CASE("the EDM teacher's f: its ODE from τ by Heun, EDM's sampler from σ_max") {
    Model m(1);  // its weights as a teacher's (the EDM parameterisation)
    const Denoiser d(m.net, Parameterization::Edm, NoiseLabels::EdmLog4, NoiseConstants{});
    Generator g(21);
    const Tensor latents = randn({2, 1, 8, 8}, {}, &g);
    const double smax = NoiseConstants{}.sigma_max;
    // from σ_max with K steps it is edm_heun_sample, bit for bit
    for (int64_t k : {2, 6}) {
      CAPTURE(k);
      const Tensor a = teacher_ode_function(d, k)(mul(latents, smax), smax);
      CHECK(max_abs_diff(a, edm_heun_sample(d, latents, {}, k)) == 0);
    }
    const Tensor x = mul(latents, 3.0);
    // one step: the denoiser at τ itself (x + (x − D)/τ·(0 − τ), up to its rounding)
    CHECK(max_abs_diff(teacher_ode_function(d, 1)(x, 3.0), d(x, full({2}, 3.0))) < 1e-5);
    // from σ_min the solve barely moves the input (the ODE's whole remaining path is σ_min)
    const Tensor ref = references(2, 1, 9);
    const double smin = NoiseConstants{}.sigma_min;
    CHECK(max_abs_diff(teacher_ode_function(d, 4)(ref, smin), ref) < 0.05);
    // through Algorithm 4: the known pixels stay the reference's
    const EditResult r =
        edit(teacher_ode_function(d, 2), NoiseConstants{}, ref, identity_transform(),
             center_square_mask(1, 8, 8), {5, 6}, {.taus = kTaus});
    const std::vector<float> res = r.result.to_vector<float>(), rv = ref.to_vector<float>(),
                             om = center_square_mask(1, 8, 8).to_vector<float>();
    size_t known_wrong = 0;
    for (size_t i = 0; i < res.size(); ++i)
      known_wrong += om[i % om.size()] < 0.5f && res[i] != rv[i];
    CHECK(known_wrong == 0);
  }

  TEST_CASE("editing errors name the argument and the value") {
    Model grey(1);
    const Tensor y = references(1, 1, 1);
    CHECK(test::error_message_of([&] {
            edit(grey.f, y, colorization_transform(), colorization_mask(8, 8), {0},
                 {.taus = kTaus});
          }).find("a grey model cannot be colorized") != std::string::npos);
    CHECK(test::error_message_of([&] {
            superres_mask(1, 8, 8, 3);
          }).find("the patch 3 does not divide") != std::string::npos);
    CHECK(test::error_message_of([&] {
            edit(grey.f, y, identity_transform(), zeros({1, 1, 4, 4}), {0}, {.taus = kTaus});
          }).find("the mask has shape [1, 1, 4, 4]") != std::string::npos);
    CHECK(test::error_message_of([&] {
            edit(grey.f, y, identity_transform(), zeros({1, 1, 8, 8}), {0}, {.taus = {100.0}});
          }).find("time point 0 = 100") != std::string::npos);
    CHECK(test::error_message_of([&] {
            edit(grey.f, y, identity_transform(), zeros({1, 1, 8, 8}), {0, 1}, {.taus = kTaus});
          }).find("1 reference images but 2 seeds") != std::string::npos);
    CHECK(test::error_message_of([&] { box_mask(1, 8, 8, 6, 0, 4, 4); }).find("leaves the image") !=
          std::string::npos);
  }

  TEST_CASE(
      "cm edit on a class-conditional model: the images' labels, one class, or each seed's own") {
    namespace fs = std::filesystem;
    const fs::path dir =
        fs::temp_directory_path() / ("cm_test_editing_cond_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    const std::string ckpt = (dir / "adm.safetensors").string();
    {
      nlohmann::json j = test::tiny_run_config("ct", 2);
      j["network"] = {{"preset", "adm-tiny-16"},
                      {"img_resolution", 8},
                      {"in_channels", 1},
                      {"out_channels", 1},
                      {"attention_resolutions", {4}}};  // 10 classes, as the digits
      j["data"]["labels"] = true;
      runner::Trainer t(runner::typed_config(runner::resolve_config(j, "t.json")), std::nullopt,
                        nullptr);
      for (int i = 0; i < 2; ++i) t.train_step();
      t.save_checkpoint(ckpt);
    }
    auto run = [&](const std::string& task, const std::string& cls, const std::string& out) {
      runner::EditCommand c;
      c.source = ckpt;
      c.task = task;
      c.data = "digits";
      c.n = 3;
      c.class_choice = cls;
      c.out = (dir / out).string();
      REQUIRE(runner::run_edit(c) == 0);
      return nlohmann::json::parse(std::ifstream(dir / out / "recipe.json"));
    };
    CHECK(run("inpaint", "", "auto")["class"] == "the images' own labels");
    CHECK(run("inpaint", "data", "data")["class"] == "the images' own labels");
    CHECK(run("inpaint", "4", "four")["class"] == 4);
    CHECK(run("inpaint", "random", "random")["class"] == "random (each seed's own)");
    const auto a = data::read_npz((dir / "auto" / "edits.npz").string());
    const auto d = data::read_npz((dir / "data" / "edits.npz").string());
    CHECK(max_abs_diff(to(a.at("result"), DType::f64), to(d.at("result"), DType::f64)) == 0);
    // an interpolation draws in one class, the first seed's own: its ends are cm sample's images
    // of the two seeds in that class
    const nlohmann::json ri = run("interpolate", "", "interp");
    const runner::LoadedNetwork m = runner::load_network(ckpt, "ema", Device::cpu());
    const int64_t k0 = runner::image_classes({0}, 10, std::nullopt)[0];
    CHECK(ri["class"] == k0);
    runner::Sampler one = runner::choose_sampler(m.config, "1", "");
    one.fixed_class = k0;
    const Tensor s =
        runner::generate_images(m, {0, 1}, one, runner::Quantization::Floor, Device::cpu(), 8);
    const Tensor points = data::read_npz((dir / "interp" / "edits.npz").string()).at("result");
    CHECK(max_abs_diff(to(select(points, 0, 0), DType::f64),
                       to(permute(select(s, 0, 0), {1, 2, 0}), DType::f64)) == 0);
    CHECK(max_abs_diff(to(select(points, 0, 2), DType::f64),
                       to(permute(select(s, 0, 1), {1, 2, 0}), DType::f64)) == 0);
    // errors: a class out of range, labels an interpolation does not have
    runner::EditCommand bad;
    bad.source = ckpt;
    bad.task = "inpaint";
    bad.data = "digits";
    bad.n = 2;
    bad.class_choice = "10";
    bad.out = (dir / "bad").string();
    CHECK(test::error_message_of([&] {
            runner::run_edit(bad);
          }).find("--class 10: the model has 10 classes") != std::string::npos);
    bad.task = "interpolate";
    bad.class_choice = "data";
    CHECK(test::error_message_of([&] { runner::run_edit(bad); }).find("no images") !=
          std::string::npos);
    fs::remove_all(dir);
  }

  TEST_CASE("cm edit: every task writes its files — inpainting and interpolation keep their ends") {
    namespace fs = std::filesystem;
    const fs::path dir =
        fs::temp_directory_path() / ("cm_test_editing_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    const std::string ckpt = (dir / "ct.safetensors").string();
    {
      runner::Trainer t(
          runner::typed_config(runner::resolve_config(test::tiny_run_config("ct", 2), "t.json")),
          std::nullopt, nullptr);
      for (int i = 0; i < 2; ++i) t.train_step();
      t.save_checkpoint(ckpt);
    }
    auto run = [&](const std::string& task) {
      runner::EditCommand c;
      c.source = ckpt;
      c.task = task;
      c.data = "digits";
      c.n = 3;
      c.out = (dir / task).string();
      return c;
    };
    for (const char* task : {"inpaint", "superres", "stroke", "denoise", "interpolate"}) {
      CAPTURE(task);
      REQUIRE(runner::run_edit(run(task)) == 0);
      for (const char* f : {"grid.png", "edits.npz", "recipe.json", "result-0000.png"})
        CHECK(fs::exists(dir / task / f));
    }
    // inpainting: the known pixels of the u8 result are the reference's
    const auto e = data::read_npz((dir / "inpaint" / "edits.npz").string());
    const std::vector<uint8_t> ref = e.at("reference").to_vector<uint8_t>(),
                               res = e.at("result").to_vector<uint8_t>(),
                               mask = e.at("mask").to_vector<uint8_t>();
    size_t wrong = 0;
    for (size_t i = 0; i < res.size(); ++i) wrong += mask[i % mask.size()] == 0 && res[i] != ref[i];
    CHECK(wrong == 0);
    // interpolation: the ends are cm sample's images of the two seeds (one step)
    const auto in = data::read_npz((dir / "interpolate" / "edits.npz").string());
    const Tensor points = in.at("result");  // [3, H, W, C]
    const runner::LoadedNetwork m = runner::load_network(ckpt, "ema", Device::cpu());
    const Tensor s = runner::generate_images(m, {0, 1}, runner::choose_sampler(m.config, "1", ""),
                                             runner::Quantization::Floor, Device::cpu(), 8);
    CHECK(max_abs_diff(to(select(points, 0, 0), DType::f64),
                       to(permute(select(s, 0, 0), {1, 2, 0}), DType::f64)) == 0);
    CHECK(max_abs_diff(to(select(points, 0, 2), DType::f64),
                       to(permute(select(s, 0, 1), {1, 2, 0}), DType::f64)) == 0);
    // bad arguments name themselves
    runner::EditCommand c = run("colorize");
    CHECK(test::error_message_of([&] {
            runner::run_edit(c);
          }).find("colorization needs an RGB model") != std::string::npos);
    c = run("superres");
    c.patch = 3;
    CHECK(test::error_message_of([&] { runner::run_edit(c); }).find("--patch 3") !=
          std::string::npos);
    c = run("denoise");
    c.sigma = 1000;
    CHECK(test::error_message_of([&] { runner::run_edit(c); }).find("--sigma 1000") !=
          std::string::npos);
    c = run("inpaint");
    c.class_choice = "1";
    CHECK(test::error_message_of([&] { runner::run_edit(c); }).find("unconditional") !=
          std::string::npos);
    c = run("inpaint");
    c.mask = "builtin:x";
    CHECK(test::error_message_of([&] { runner::run_edit(c); }).find("unknown built-in mask") !=
          std::string::npos);
    c.mask = "builtin:letter:s";
    CHECK(test::error_message_of([&] { runner::run_edit(c); }).find("one capital A-Z") !=
          std::string::npos);
    c.mask = "builtin:boxes:0";
    CHECK(test::error_message_of([&] { runner::run_edit(c); }).find("from 1 to 100") !=
          std::string::npos);
    c.mask = "builtin:letter";  // the digits are 8×8: the font drawn once
    CHECK(runner::run_edit(c) == 0);
    c.mask = "builtin:boxes:2";
    CHECK(runner::run_edit(c) == 0);
    const auto b = data::read_npz((dir / "inpaint" / "edits.npz").string());
    CHECK(b.at("mask").shape() == Shape{3, 8, 8, 1});  // one mask per image

    // an EDM teacher run through the same algorithm (its ODE from each time point)
    const std::string edm = (dir / "edm.safetensors").string();
    {
      runner::Trainer t(
          runner::typed_config(runner::resolve_config(test::tiny_run_config("edm", 2), "t.json")),
          std::nullopt, nullptr);
      t.train_step();
      t.save_checkpoint(edm);
    }
    c = run("inpaint");
    c.source = edm;
    c.teacher_steps = 2;
    c.out = (dir / "teacher").string();
    REQUIRE(runner::run_edit(c) == 0);
    const auto te = data::read_npz((dir / "teacher" / "edits.npz").string());
    const std::vector<uint8_t> tref = te.at("reference").to_vector<uint8_t>(),
                               tres = te.at("result").to_vector<uint8_t>(),
                               tmask = te.at("mask").to_vector<uint8_t>();
    size_t twrong = 0;
    for (size_t i = 0; i < tres.size(); ++i)
      twrong += tmask[i % tmask.size()] == 0 && tres[i] != tref[i];
    CHECK(twrong == 0);
    std::ifstream rf(dir / "teacher" / "recipe.json");
    const nlohmann::json recipe = nlohmann::json::parse(rf);
    CHECK(recipe["teacher_heun_steps"] == 2);
    fs::remove_all(dir);
  }
}
