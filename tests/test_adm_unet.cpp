// ADM's U-Net against the reference: the exact parameter counts of the paper's ImageNet-64 and
// LSUN-256 networks, UNetModel's state-dict names, and outputs and gradients matching
// openai/consistency_models' own PyTorch UNetModel (golden files made by tools/gen_adm_golden.py
// from its cm/unet.py).

#include <filesystem>

#include "nn/adm_unet.h"
#include "runner/trainer.h"
#include "tests/golden_util.h"

using namespace cm;
using namespace cm::nn;
using namespace cm::test;

namespace {

struct Golden {
  AdmUNetConfig cfg;
  std::map<std::string, Tensor> tensors;
};

Golden load_golden(const std::string& flavour) {
  SafetensorsFile f(kGoldenDir + "adm_" + flavour + ".safetensors");
  Golden g;
  g.cfg = adm_config_from_json(f.metadata().at("config"));
  for (const std::string& n : f.names()) g.tensors[n] = f.get(n);
  return g;
}

// Runs the golden case in `dtype`; checks the output and gradients.
void check_against_reference(const std::string& flavour, DType dtype, double out_tol,
                             double grad_tol, const std::string& memory_format) {
  Golden g = load_golden(flavour);
  g.cfg.memory_format = memory_format;
  Generator gen(7);
  AdmUNet net(g.cfg, gen);
  const int checked = check_golden_case(net, g.tensors, dtype, out_tol, grad_tol, flavour);
  CHECK(checked >= 10);
}

// [indices.size(), n] f32 one-hot rows
Tensor one_hot_rows(const std::vector<int64_t>& indices, int64_t n) {
  std::vector<float> v(indices.size() * size_t(n), 0.0f);
  for (size_t i = 0; i < indices.size(); ++i) v[i * size_t(n) + size_t(indices[i])] = 1.0f;
  return from_vector(v, {int64_t(indices.size()), n});
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : values(t)) m = std::max(m, std::fabs(v));
  return m;
}

Tensor random_like_net(const AdmUNetConfig& c, int64_t n, DType dtype, uint64_t seed) {
  Generator gen(seed);
  return randn({n, c.in_channels, c.image_size, c.image_size}, {.dtype = dtype}, &gen);
}

}  // namespace

TEST_SUITE("nn") {
  TEST_CASE("ADM presets have the reference's exact parameter counts") {
    // UNetModel built with scripts/launch.sh's flags (tools/gen_adm_golden.py prints the counts)
    const std::vector<std::pair<std::string, int64_t>> expected = {
        {"adm-imagenet64", 295899267}, {"adm-lsun256", 526304771}, {"adm-tiny-16", 0}};
    for (const auto& [name, count] : expected) {
      Generator gen(0);
      AdmUNet net(adm_unet_preset(name), gen);
      if (count) {
        CHECK_MESSAGE(net.num_parameters() == count, name, ": ", net.num_parameters(),
                      " parameters, expected ", count);
      }
      CHECK(net.named_buffers().empty());  // no buffers: the state dict is the parameters
    }
    CHECK_THROWS_WITH_AS(adm_unet_preset("adm-imagenet128"), doctest::Contains("adm-imagenet64"),
                         Error);
  }

  TEST_CASE("ADM U-Net's parameter names and shapes are UNetModel's state-dict keys") {
    for (const std::string flavour : {"film", "plain"}) {
      Golden g = load_golden(flavour);
      Generator gen(0);
      AdmUNet net(g.cfg, gen);
      check_state_dict_names(net, g.tensors);
    }
  }

  TEST_CASE("ADM U-Net matches the reference UNetModel in f32 and f64, in both memory formats") {
    for (const std::string format : {"contiguous", "channels_last"})
      for (const std::string flavour : {"film", "plain"}) {
        INFO(format);
        check_against_reference(flavour, DType::f64, 1e-10, 1e-9, format);
        check_against_reference(flavour, DType::f32, 1e-4, 1e-4, format);
      }
  }

  TEST_CASE("ADM's legacy q/k/v split is the flash split with the qkv rows reordered") {
    // legacy lays the 3·C rows out as (head, three, d), flash as (three, head, d): a legacy
    // network whose qkv weights are the flash network's rows permuted computes the same function.
    AdmUNetConfig cfg = adm_unet_preset("adm-tiny-16");
    Generator gen(3);
    AdmUNet flash(cfg, gen);
    cfg.attention_split = "legacy";
    AdmUNet legacy(cfg, gen);
    flash.to(DType::f64);
    legacy.to(DType::f64);
    {
      NoGradGuard ng;
      for (auto& [n, p] : flash.named_parameters())  // no zero layers
        copy_(p, add(p, mul(randn(p.shape(), {.dtype = DType::f64}, &gen), 0.1)));
      std::map<std::string, Tensor> state = flash.state_dict();
      int permuted = 0;
      for (auto& [n, t] : state) {
        if (n.find(".qkv.") == std::string::npos) continue;
        const int64_t c = t.size(0) / 3, heads = c / 32, d = 32;
        // flash row (three i, head h, k) moves to legacy row (h, i, k)
        const Shape rest(t.shape().begin() + 1, t.shape().end());
        Shape split = {3, heads, d};
        split.insert(split.end(), rest.begin(), rest.end());
        Tensor r = transpose(reshape(t, split), 0, 1);
        t = contiguous(reshape(r, t.shape()));
        ++permuted;
      }
      CHECK(permuted == 4 * 2);  // weights and biases of the encoder, middle and decoder blocks
      legacy.load_state_dict(state, true);
    }
    flash.eval();
    legacy.eval();
    const Tensor x = random_like_net(cfg, 2, DType::f64, 11);
    const Tensor c_noise = from_vector(std::vector<double>{-300.0, 500.0}, {2});
    const Tensor labels = to(one_hot_rows({1, 7}, 10), DType::f64);
    const Tensor a = flash.forward(x, c_noise, labels), b = legacy.forward(x, c_noise, labels);
    CHECK(rel_err(b, a) <= 1e-13);
    // and the split matters: the flash weights read as legacy give another function
    std::map<std::string, Tensor> same = flash.state_dict();
    legacy.load_state_dict(same, true);
    CHECK(rel_err(legacy.forward(x, c_noise, labels), a) > 1e-3);
  }

  TEST_CASE("ADM's class embedding from one-hot rows picks the weight rows exactly") {
    Generator gen(5);
    Embedding e(7, 12, gen);
    const Tensor rows = one_hot_rows({3, 0, 6}, 7);
    const Tensor picked = e.forward_onehot(rows);
    const Tensor indexed = e.forward(from_vector(std::vector<int64_t>{3, 0, 6}, {3}));
    CHECK(max_abs_diff(picked, indexed) == 0);
    // a zero row ("no label") gives a zero embedding
    const Tensor none = e.forward_onehot(zeros({1, 7}));
    CHECK(max_abs(none) == 0);
  }

  TEST_CASE("ADM U-Net: dropout draws from the context's generator, replayable") {
    AdmUNetConfig cfg = adm_unet_preset("adm-tiny-16");
    cfg.dropout = 0.3;
    Generator init(1);
    AdmUNet net(cfg, init);
    {
      NoGradGuard ng;  // the zero-initialised output layers would hide the dropout
      for (auto& [n, p] : net.named_parameters())
        copy_(p, add(p, mul(randn(p.shape(), {}, &init), 0.1)));
    }
    net.train();
    const Tensor x = random_like_net(cfg, 2, DType::f32, 4);
    const Tensor c_noise = from_vector(std::vector<float>{1.0f, -2.0f}, {2});
    const Tensor labels = one_hot_rows({0, 9}, 10);
    Generator d1(42), d2(42), d3(43);
    const Tensor a = net.forward(x, c_noise, labels, {}, {.dropout = &d1});
    const Tensor b = net.forward(x, c_noise, labels, {}, {.dropout = &d2});
    const Tensor c = net.forward(x, c_noise, labels, {}, {.dropout = &d3});
    CHECK(max_abs_diff(a, b) == 0);
    CHECK(max_abs_diff(a, c) > 1e-4);
    net.eval();  // no dropout in eval mode
    const Tensor e1 = net.forward(x, c_noise, labels, {}, {.dropout = &d1});
    const Tensor e2 = net.forward(x, c_noise, labels, {}, {.dropout = &d3});
    CHECK(max_abs_diff(e1, e2) == 0);
  }

  TEST_CASE("ADM U-Net: bad configurations and inputs are clear errors") {
    AdmUNetConfig c = adm_unet_preset("adm-tiny-16");
    c.model_channels = 48;
    CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("multiple of 32"), Error);
    c = adm_unet_preset("adm-tiny-16");
    c.num_head_channels = 24;
    CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("num_head_channels 24"), Error);
    c = adm_unet_preset("adm-tiny-16");
    c.attention_split = "heads";
    CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("attention_split"), Error);
    c = adm_unet_preset("adm-tiny-16");
    c.image_size = 12;
    c.channel_mult = {1, 1, 1, 1};
    CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("cannot be halved"), Error);
    c = adm_unet_preset("adm-tiny-16");
    c.memory_format = "nhwc";
    CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("memory_format"), Error);

    Generator gen(0);
    AdmUNet net(adm_unet_preset("adm-tiny-16"), gen);
    const AdmUNetConfig& cfg = net.config();
    const Tensor x = random_like_net(cfg, 2, DType::f32, 1);
    const Tensor c_noise = zeros({2});
    CHECK_THROWS_WITH_AS(net.forward(x, c_noise),
                         doctest::Contains("class_labels of shape [2, 10]"), Error);
    CHECK_THROWS_WITH_AS(net.forward(narrow(x, 2, 0, 8), c_noise, one_hot_rows({0, 1}, 10)),
                         doctest::Contains("expected [N, 3, 16, 16]"), Error);
    AdmUNetConfig uncond = cfg;
    uncond.num_classes = 0;
    AdmUNet u(uncond, gen);
    CHECK_THROWS_WITH_AS(u.forward(x, c_noise, one_hot_rows({0, 1}, 10)),
                         doctest::Contains("unconditional"), Error);
  }

  TEST_CASE("a released openai checkpoint, converted, computes what the reference computes") {
    // tools/gen_convert_golden.py: a UNetModel with random weights saved by torch.save, converted
    // by tools/convert_openai_pt.py, and the reference KarrasDenoiser.denoise on it
    const std::string converted = kGoldenDir + "openai_converted_cd.safetensors";
    const runner::LoadedNetwork m = runner::load_network(converted, "ema", Device::cpu());
    CHECK(m.config.mode == "cd");
    CHECK(m.config.network.type == "adm");
    CHECK(m.config.network.noise_labels == consistency::NoiseLabels::Adm250);
    CHECK(m.weights.find("converted from cd_tiny.pt") != std::string::npos);
    SafetensorsFile e(kGoldenDir + "openai_converted_expected.safetensors");
    const Tensor x = e.get("x"), sigmas = e.get("sigmas"), y = e.get("y");
    NoGradGuard ng;
    const consistency::Denoiser f(*m.net, consistency::Parameterization::Consistency,
                                  m.config.network.noise_labels, m.config.noise);
    const double ecd = rel_err(f(x, sigmas, y), e.get("denoised_cd"));
    CHECK_MESSAGE(ecd <= 1e-5, "consistency denoiser: relative error ", ecd);
    const consistency::Denoiser d(*m.net, consistency::Parameterization::Edm,
                                  m.config.network.noise_labels, m.config.noise);
    const double eedm = rel_err(d(x, sigmas, y), e.get("denoised_edm"));
    CHECK_MESSAGE(eedm <= 1e-5, "EDM denoiser: relative error ", eedm);
  }

  TEST_CASE(
      "a foreign checkpoint with missing, extra or mis-shaped tensors is refused, listing them") {
    SafetensorsFile f(kGoldenDir + "openai_converted_cd.safetensors");
    std::map<std::string, Tensor> t;
    for (const std::string& n : f.names()) t[n] = f.get(n);
    t.erase("model.out.2.bias");                        // missing
    t["model.input_blocks.9.0.weight"] = zeros({4});    // unexpected
    t["model.time_embed.0.weight"] = zeros({128, 16});  // mis-shaped (was [128, 32])
    const std::string path = (std::filesystem::temp_directory_path() /
                              ("cm_test_foreign_" + std::to_string(::getpid()) + ".safetensors"))
                                 .string();
    save_safetensors(path, t, f.metadata());
    const std::string msg =
        error_message_of([&] { runner::load_network(path, "ema", Device::cpu()); });
    std::filesystem::remove(path);
    CHECK(msg.find(path) != std::string::npos);
    for (const char* piece : {"out.2.bias", "input_blocks.9.0.weight", "time_embed.0.weight"})
      CHECK_MESSAGE(msg.find(piece) != std::string::npos, piece, " not in: ", msg);
  }
}
