// SongUNet against the reference: exact parameter counts of the benchmark networks, EDM's
// state-dict names, and outputs and gradients matching EDM's own PyTorch implementation (golden
// files made by tools/gen_songunet_golden.py from NVlabs/edm's training/networks.py).

#include <optional>

#include "tests/golden_util.h"

using namespace cm;
using namespace cm::nn;
using namespace cm::test;

namespace {

struct Golden {
  SongUNetConfig cfg;
  std::map<std::string, Tensor> tensors;
};

Golden load_golden(const std::string& flavour) {
  const std::string path = kGoldenDir + "songunet_" + flavour + ".safetensors";
  SafetensorsFile f(path);
  Golden g;
  g.cfg = songunet_config_from_json(f.metadata().at("config"));
  for (const std::string& n : f.names()) g.tensors[n] = f.get(n);
  return g;
}

// Runs the golden case in `dtype`; checks the output and gradients.
void check_against_edm(const std::string& flavour, DType dtype, double out_tol, double grad_tol,
                       const std::string& memory_format = "auto") {
  Golden g = load_golden(flavour);
  g.cfg.memory_format = memory_format;
  Generator gen(7);
  SongUNet net(g.cfg, gen);
  const int checked = check_golden_case(net, g.tensors, dtype, out_tol, grad_tol, flavour);
  CHECK(checked >= 4);
}

}  // namespace

TEST_SUITE("nn") {
  TEST_CASE("SongUNet presets have the exact parameter counts of the benchmark table") {
    const std::vector<std::pair<std::string, int64_t>> expected = {
        {"ddpmpp-cifar10", 55732739},
        {"ncsnpp-cifar10", 56395523},
        {"ddpmpp-cifar10-cond", 55734147},
        {"ddpmpp-small-28", 6987585},
        {"ddpmpp-digits-8", 1032353}};
    for (const auto& [name, count] : expected) {
      Generator gen(0);
      SongUNet net(songunet_preset(name), gen);
      CHECK_MESSAGE(net.num_parameters() == count, name, ": ", net.num_parameters(),
                    " parameters, expected ", count);
      if (name == "ncsnpp-cifar10") {
        // the 128 frozen Fourier frequencies are a buffer, not a parameter
        bool found = false;
        for (auto& [n, b] : net.named_buffers())
          if (n == "map_noise.freqs") {
            found = true;
            CHECK(b.numel() == 128);
          }
        CHECK(found);
      }
    }
    CHECK_THROWS_WITH_AS(songunet_preset("ddpmpp-cifar100"), doctest::Contains("ddpmpp-cifar10"),
                         Error);
  }

  TEST_CASE("SongUNet's parameter and buffer names are EDM's state-dict keys") {
    for (const std::string flavour : {"ddpmpp", "ncsnpp", "skipcond"}) {
      Golden g = load_golden(flavour);
      Generator gen(0);
      SongUNet net(g.cfg, gen);
      check_state_dict_names(net, g.tensors);
    }
  }

  TEST_CASE("SongUNet matches EDM's PyTorch SongUNet in f32 and f64, in both memory formats") {
    for (const std::string format : {"contiguous", "channels_last"})
      for (const std::string flavour : {"ddpmpp", "ncsnpp", "skipcond"}) {
        INFO(format);
        check_against_edm(flavour, DType::f64, 1e-10, 1e-9, format);
        check_against_edm(flavour, DType::f32, 1e-5, 1e-4, format);
      }
  }

  TEST_CASE(
      "SongUNet in channels-last: the activations stay channels-last, the output is contiguous") {
    for (const std::string format : {"contiguous", "channels_last"}) {
      SongUNetConfig cfg = songunet_preset("ddpmpp-digits-8");
      cfg.memory_format = format;
      Generator gen(3);
      SongUNet net(cfg, gen);
      net.eval();
      int seen = 0, channels_last = 0;
      ForwardContext ctx;
      ctx.observe = [&](const std::string&, const Tensor& t) {
        ++seen;
        if (memory_format_of(t) == MemoryFormat::ChannelsLast) ++channels_last;
      };
      NoGradGuard ng;
      const Tensor x = randn({2, cfg.in_channels, cfg.img_resolution, cfg.img_resolution});
      const Tensor y = net.forward(x, full({2}, 0.3), {}, {}, ctx);
      CHECK(y.is_contiguous());
      REQUIRE(seen > 4);
      // every stage with more than one channel and pixel (a 1×1 stage is both formats at once)
      if (format == "channels_last")
        CHECK_MESSAGE(channels_last == seen, channels_last, " of ", seen, " stages channels-last");
      else
        CHECK(channels_last == 0);
    }
    SongUNetConfig bad = songunet_preset("ddpmpp-digits-8");
    bad.memory_format = "nhwc";
    CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains("memory_format"), Error);
  }

  TEST_CASE("Conv2d adds its bias inside its last convolution, in every resampling mode") {
    // mode: up, down, fused_resample. The layer with a bias against the same layer without one
    // (same seed: the same weights) plus the bias; the bias gradient is Σ_{n,h,w} of the output
    // gradient; the output's node is the convolution itself (no separate add).
    struct Mode {
      bool up, down, fused;
    };
    for (const Mode m :
         {Mode{false, false, false}, Mode{true, false, false}, Mode{false, true, false},
          Mode{true, false, true}, Mode{false, true, true}})
      for (const Layout layout : {Layout::Contiguous, Layout::ChannelsLast}) {
        INFO("up ", m.up, ", down ", m.down, ", fused ", m.fused, ", ", layout_name(layout));
        const InitOptions init{.mode = "kaiming_normal", .weight = 1, .bias = 1};
        Generator g1(5), g2(5);
        Conv2d with(3, 5, 3, true, m.up, m.down, {1, 3, 3, 1}, m.fused, init, g1);
        Conv2d without(3, 5, 3, false, m.up, m.down, {1, 3, 3, 1}, m.fused, init, g2);
        const Tensor x = with_layout(randn({2, 3, 8, 8}, {}, nullptr), layout);
        const Tensor y = with.forward(x);
        REQUIRE(y.grad_fn());
        CHECK(y.grad_fn()->name() == "conv2d");
        const Tensor expect = add(without.forward(x), reshape(detach(with.bias), {1, -1, 1, 1}));
        CHECK(amax(abs(sub(detach(y), detach(expect)))).item<double>() <= 1e-5);
        Generator gr(9);
        const Tensor r = randn(y.shape(), {}, &gr);
        sum(mul(y, r)).backward();
        REQUIRE(with.bias.grad().defined());
        CHECK(amax(abs(sub(with.bias.grad(), sum(r, {0, 2, 3})))).item<double>() <= 1e-4);
      }
  }

  TEST_CASE("the positional embedding's frequencies are EDM's: f32 i / (half - 1), divided") {
    // EDM: freqs = arange(half, f32) / (half − 1); freqs = (1 / max_positions) ** freqs; then
    // x.ger(freqs) and [cos, sin]. For every width a network may use (the goldens have 8 noise
    // channels, where multiplying by 1/(half − 1) happens to agree), f64 outputs are bit-exact.
    for (const int64_t channels : {8, 16, 32, 64, 128, 256}) {
      const PositionalEmbedding pe(channels, 10000, true);
      const std::vector<double> sigmas = {-3.1, -0.25, 0.0, 0.7, 1.2};
      const Tensor x = from_vector(sigmas, {5}, {.dtype = DType::f64});
      const std::vector<double> y = contiguous(pe.forward(x)).to_vector<double>();
      const int64_t half = channels / 2;
      size_t wrong = 0;
      for (size_t r = 0; r < sigmas.size(); ++r)
        for (int64_t i = 0; i < half; ++i) {
          const float f = std::pow(float(1.0 / 10000.0), float(i) / float(half - 1));
          const double o = sigmas[r] * double(f);
          wrong += y[r * size_t(channels) + size_t(i)] != std::cos(o);
          wrong += y[r * size_t(channels) + size_t(half + i)] != std::sin(o);
        }
      CAPTURE(channels);
      CHECK(wrong == 0);
    }
  }

  TEST_CASE("SongUNet rejects inputs of the wrong shape and bad configurations") {
    Generator gen(0);
    SongUNet net(songunet_preset("ddpmpp-digits-8"), gen);
    CHECK_THROWS_WITH_AS(net.forward(zeros({2, 1, 9, 9}), zeros({2})),
                         doctest::Contains("expected [N, 1, 8, 8]"), Error);
    SongUNetConfig bad = songunet_preset("ddpmpp-digits-8");
    bad.encoder_type = "fancy";
    CHECK_THROWS_WITH_AS(SongUNet(bad, gen), doctest::Contains("encoder_type"), Error);
    bad = songunet_preset("ddpmpp-digits-8");
    bad.img_resolution = 6;
    bad.channel_mult = {1, 2, 2};
    CHECK_THROWS_WITH_AS(SongUNet(bad, gen), doctest::Contains("img_resolution"), Error);
  }

  TEST_CASE("dropout in SongUNet replays with a generator in the same state") {
    Generator gen(0);
    SongUNetConfig cfg = songunet_preset("ddpmpp-digits-8");
    cfg.dropout = 0.3;
    SongUNet net(cfg, gen);
    net.train();
    Generator data(5);
    Tensor x = randn({2, 1, 8, 8}, {}, &data), s = randn({2}, {}, &data);
    Generator a(42, 10), b(42, 10), c(43, 10);
    NoGradGuard ng;
    Tensor ya = net.forward(x, s, {}, {}, {.dropout = &a});
    Tensor yb = net.forward(x, s, {}, {}, {.dropout = &b});
    Tensor yc = net.forward(x, s, {}, {}, {.dropout = &c});
    CHECK(max_abs_diff(ya, yb) == 0);
    CHECK(max_abs_diff(ya, yc) > 0);
    net.eval();
    Tensor e1 = net.forward(x, s, {}, {}, {.dropout = &a}),
           e2 = net.forward(x, s, {}, {}, {.dropout = &c});
    CHECK(max_abs_diff(e1, e2) == 0);
  }

  TEST_CASE("dropout masks recorded in one pass and replayed in another equal a fresh draw") {
    // The replayed pass (another input, the masks of the recorded pass) against a pass that draws
    // from a generator in the recorded pass's starting state: the same bits, the same generator
    // state after; a replaying pass with more dropouts than recorded is refused. Both layouts,
    // with and without gradients in the recording pass.
    for (const std::string format : {"contiguous", "channels_last"})
      for (const bool grad : {false, true}) {
        INFO(format, grad ? " with gradients" : " without");
        Generator gen(0);
        SongUNetConfig cfg = songunet_preset("ddpmpp-digits-8");
        cfg.dropout = 0.3;
        cfg.memory_format = format;
        SongUNet net(cfg, gen);
        net.train();
        Generator data(6);
        const Tensor x1 = randn({2, 1, 8, 8}, {}, &data), x2 = randn({2, 1, 8, 8}, {}, &data),
                     s = full({2}, 0.7);
        Generator rec(42, 10), rep(42, 10), fresh(42, 10);
        DropoutMasks masks;
        {
          std::optional<NoGradGuard> ng;
          if (!grad) ng.emplace();
          net.forward(x1, s, {}, {}, {.dropout = &rec, .masks = &masks});
        }
        REQUIRE(masks.masks.size() >= 4);
        masks.replay = true;
        NoGradGuard ng;
        const Tensor replayed = net.forward(x2, s, {}, {}, {.dropout = &rep, .masks = &masks});
        const Tensor drawn = net.forward(x2, s, {}, {}, {.dropout = &fresh});
        CHECK(max_abs_diff(replayed, drawn) == 0);
        CHECK(rep.offset() == fresh.offset());
        CHECK(rec.offset() == fresh.offset());
        CHECK(masks.next == masks.masks.size());
        CHECK_THROWS_WITH_AS(net.forward(x2, s, {}, {}, {.dropout = &rep, .masks = &masks}),
                             doctest::Contains("more dropouts"), Error);
      }
  }
}
