// Activation recomputation (autograd/node.h): a saved tensor with a recompute function is kept as
// the function, not the values; the gradients are bit for bit those that keep the values (the
// oracle: the same computation with recomputation off); the values are really not kept (the
// storage dies with the forward's last reference) and the peak memory of a U-Net's training step
// drops. Device-generic: CM_TEST_DEVICE=cuda runs it on the GPU (tools/gpu_device_run.sh), where
// CudaBackend::group_norm_recompute applies the stored statistics in one kernel.
#include <doctest/doctest.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "helpers.h"
#include "nn/adm_unet.h"
#include "nn/dhariwal_unet.h"
#include "nn/songunet.h"
#include "tensor/storage.h"

using namespace cm;
using cm::test::check_error;
using cm::test::Layout;
using cm::test::on_test_device;
using cm::test::randn_input;
using cm::test::test_device;

namespace {

// A leaf that requires grad, of dtype t, in layout l, on the test device.
Tensor leaf(const Shape& s, uint64_t seed, DType t, Layout l = Layout::Contiguous) {
  Tensor x = randn_input(s, seed, l, t);
  x.set_requires_grad(true);
  return x;
}

// Bitwise equality of two tensors of one shape (values as f64 carry every bit of f32/f16/bf16).
void check_same(const Tensor& a, const Tensor& b, const std::string& what) {
  INFO(what);
  REQUIRE(a.defined() == b.defined());
  if (!a.defined()) return;
  REQUIRE(a.shape() == b.shape());
  CHECK(a.dtype() == b.dtype());
  const std::vector<double> va = a.to_vector<double>(), vb = b.to_vector<double>();
  size_t diff = 0;
  for (size_t i = 0; i < va.size(); ++i)
    diff += va[i] != vb[i] && !(va[i] != va[i] && vb[i] != vb[i]);
  CHECK_MESSAGE(diff == 0, diff, " of ", va.size(), " elements differ");
}

// Bytes allocated on the test device above what was live at construction: the peak since then,
// and what is live now.
struct Meter {
  int64_t before;
  Meter() {
    backend_for(test_device()).synchronize();
    allocator_for(test_device()).reset_peak();
    before = allocator_for(test_device()).stats().allocated;
  }
  int64_t peak() const {
    backend_for(test_device()).synchronize();
    return allocator_for(test_device()).stats().peak_allocated - before;
  }
  int64_t live() const { return allocator_for(test_device()).stats().allocated - before; }
};

struct ChainResult {
  Tensor out;
  std::vector<Tensor> grads;
  bool kept = true;  // whether the convolution's input outlived the forward
};

// silu(group_norm(x [+ shift])) or group_norm(x), then dropout (p may be 0), then a 3×3
// convolution; the backward of Σ out·dy. With `recompute`, under a RecomputeGuard.
ChainResult chain(bool recompute, DType t, Layout layout, bool silu, bool shifted, double p) {
  const RecomputeGuard rg(recompute);
  const Tensor x = leaf({2, 8, 5, 5}, 1, t, layout);
  const Tensor w = leaf({8}, 2, t), b = leaf({8}, 3, t);
  const Tensor shift = shifted ? leaf({2, 8, 1, 1}, 4, t) : Tensor();
  const Tensor cw = leaf({6, 8, 3, 3}, 5, t), cb = leaf({6}, 6, t);
  const Tensor dy = randn_input({2, 6, 5, 5}, 7, Layout::Contiguous, t);
  Generator gen(11);
  ChainResult r;
  std::weak_ptr<Storage> conv_input;
  {
    const Tensor h = silu ? group_norm_silu(x, 4, w, b, 1e-5, shift) : group_norm(x, 4, w, b, 1e-5);
    const Tensor d = dropout(h, p, true, gen);
    CHECK((recompute_of(d) != nullptr) == recompute);
    conv_input = d.storage();
    r.out = conv2d(d, cw, cb, {.pad_h = 1, .pad_w = 1});
  }
  r.kept = !conv_input.expired();
  sum(mul(r.out, dy)).backward();
  for (const Tensor& l : {x, w, b, shift, cw, cb})
    r.grads.push_back(l.defined() ? l.grad() : Tensor());
  return r;
}

}  // namespace

TEST_SUITE("autograd") {
  TEST_CASE("recompute: group norm (+ SiLU, + shift) and dropout give the kept values' gradients") {
    const std::vector<DType> dtypes =
        test_device().is_cuda()
            ? std::vector<DType>{DType::f32, DType::f64, DType::bf16, DType::f16}
            : std::vector<DType>{DType::f32, DType::f64, DType::bf16};
    for (const DType t : dtypes)
      for (const Layout layout : {Layout::Contiguous, Layout::ChannelsLast})
        for (const int variant : {0, 1, 2})  // group_norm, group_norm_silu, shifted
          for (const double p : {0.0, 0.3}) {
            const bool silu = variant > 0, shifted = variant == 2;
            INFO(dtype_name(t), " ", cm::test::layout_name(layout), " variant ", variant, " p ", p);
            const ChainResult kept = chain(false, t, layout, silu, shifted, p);
            const ChainResult redone = chain(true, t, layout, silu, shifted, p);
            CHECK(kept.kept);
            CHECK_FALSE(redone.kept);  // the convolution kept the recipe, not the values
            check_same(redone.out, kept.out, "output");
            const char* names[] = {"x", "weight", "bias", "shift", "conv weight", "conv bias"};
            for (size_t i = 0; i < kept.grads.size(); ++i)
              check_same(redone.grads[i], kept.grads[i], std::string("grad ") + names[i]);
          }
  }

  TEST_CASE("recompute: the dropout backward draws the mask again, without keeping it") {
    for (const Layout layout : {Layout::Contiguous, Layout::ChannelsLast}) {
      INFO(cm::test::layout_name(layout));
      std::vector<Tensor> grads;
      for (const bool on : {false, true}) {
        const RecomputeGuard rg(on);
        const Tensor x = leaf({3, 4, 6, 6}, 21, DType::f32, layout);
        Generator gen(5);
        const Tensor y = dropout(x, 0.4, true, gen);
        CHECK(recompute_of(y) == nullptr);  // a leaf's dropout: x is kept anyway, no recipe
        // a gradient in another layout than the draw's memory order
        const Tensor dy =
            permute(randn_input({6, 6, 3, 4}, 22, Layout::Contiguous, DType::f32), {2, 3, 0, 1});
        sum(mul(y, dy)).backward();
        grads.push_back(x.grad());
      }
      check_same(grads[1], grads[0], "grad x");
    }
  }

  TEST_CASE("recompute: attention keeps q, k and v only and gives the composite's gradients") {
    // the composite is a checkpoint; the fused kernel keeps no L × L tensor either way and
    // ignores the guard (its backward recomputes the scores by construction)
    const std::vector<DType> dtypes = {DType::f64, DType::f32, DType::bf16};
    for (const AttentionKernel kernel : {AttentionKernel::Composite, AttentionKernel::Fused})
      for (const DType t : dtypes)
        for (const bool broadcast : {false, true}) {
          const bool composite = kernel == AttentionKernel::Composite;
          const std::string kname = composite ? "composite " : "fused ";
          const std::string what = kname + dtype_name(t) + (broadcast ? " broadcast k, v" : "");
          INFO(what);
          const AttentionKernelGuard kg(kernel);
          std::vector<Tensor> res;
          std::vector<int64_t> peaks;
          for (const bool on : {false, true}) {
            const RecomputeGuard rg(on);
            // q a transposed view (as in a U-Net block), k and v broadcast over q's batch dim
            const Tensor q = leaf({3, 24, 40}, 51, t, Layout::Transposed);
            const Tensor k = leaf({broadcast ? 1 : 3, 40, 24}, 52, t);
            const Tensor v = leaf({broadcast ? 1 : 3, 40, 16}, 53, t);
            const Tensor dy = randn_input({3, 40, 16}, 54, Layout::Contiguous, t);
            const Meter meter;
            const Tensor y = scaled_dot_product_attention(transpose(q, 1, 2), k, v, 0.3);
            peaks.push_back(meter.live());
            sum(mul(y, dy)).backward();
            for (const Tensor& r : {y, q.grad(), k.grad(), v.grad()}) res.push_back(r);
          }
          const char* names[] = {"output", "grad q", "grad k", "grad v"};
          for (size_t i = 0; i < 4; ++i) check_same(res[4 + i], res[i], names[i]);
          // the composite keeps the scaled q, the scores, the weights (L² per batch) and the
          // output without recomputation, the output alone with it
          MESSAGE(kname, std::string(dtype_name(t)), ": after the forward ", peaks[0],
                  " bytes live, ", peaks[1], " recomputed");
          if (composite)
            CHECK(peaks[1] < peaks[0] / 2);
          else
            CHECK(peaks[1] == peaks[0]);
        }
  }

  TEST_CASE("recompute: a checkpointed composite (the FiLM norm) gives the composite's gradients") {
    // silu(group_norm(x)·(1 + scale) + shift), an undefined bias, a scale that needs no gradient
    const CheckpointFn film = [](const std::vector<Tensor>& v) {
      return silu(add(mul(group_norm(v[0], 2, v[1], v[2], 1e-5), add(v[3], 1.0)), v[4]));
    };
    for (const Layout layout : {Layout::Contiguous, Layout::ChannelsLast}) {
      INFO(cm::test::layout_name(layout));
      std::vector<Tensor> res;
      for (const bool on : {false, true}) {
        const RecomputeGuard rg(on);
        const Tensor x = leaf({2, 4, 3, 3}, 61, DType::f32, layout), w = leaf({4}, 62, DType::f32);
        const Tensor scale = randn_input({2, 4, 1, 1}, 63, Layout::Contiguous, DType::f32);
        const Tensor shift = leaf({2, 4, 1, 1}, 64, DType::f32);
        const Tensor cw = leaf({3, 4, 1, 1}, 65, DType::f32);
        std::weak_ptr<Storage> kept;
        Tensor y;
        {
          const Tensor h = checkpoint("film", film, {x, w, Tensor(), scale, shift});
          CHECK((recompute_of(h) != nullptr) == on);
          kept = h.storage();
          y = conv2d(h, cw, {});
        }
        CHECK(kept.expired() == on);
        sum(mul(y, y)).backward();
        for (const Tensor& r : {y, x.grad(), w.grad(), shift.grad(), cw.grad()}) res.push_back(r);
        CHECK_FALSE(scale.grad().defined());
      }
      const char* names[] = {"output", "grad x", "grad w", "grad shift", "grad conv weight"};
      for (size_t i = 0; i < 5; ++i) check_same(res[5 + i], res[i], names[i]);
    }
  }

  TEST_CASE("recompute: in-place changes are caught, before and after saving") {
    const RecomputeGuard rg(true);
    const Tensor x = leaf({2, 4, 3, 3}, 31, DType::f64), cw = leaf({2, 4, 1, 1}, 32, DType::f64);
    // modified before it is saved: kept as values, the gradient is the modified one's
    Tensor h = group_norm_silu(x, 2, Tensor(), Tensor(), 1e-5);
    REQUIRE(recompute_of(h) != nullptr);
    Tensor h2 = mul(h, 1.0);
    {
      NoGradGuard ng;
      mul_(h, 2.0);  // h no longer matches its recipe
    }
    CHECK(recompute_of(h) == nullptr);
    const Tensor y = conv2d(h, cw, {});
    sum(y).backward();
    // the convolution saw 2·h: its weight gradient is Σ 2·h over positions
    const Tensor expect = sum(mul(detach(h2), 2.0), {0, 2, 3});
    CHECK(max_abs_diff(reshape(select(cw.grad(), 0, 0), {4}), expect) < 1e-12);

    // modified after it is saved (as a recipe): the backward refuses, naming the op
    Tensor g = group_norm_silu(x, 2, Tensor(), Tensor(), 1e-5);
    const Tensor y2 = conv2d(g, cw, {});
    {
      NoGradGuard ng;
      mul_(g, 3.0);
    }
    check_error([&] { sum(y2).backward(); }, {"conv2d", "in-place"});
  }

  TEST_CASE("recompute: a function that does not give its tensor back is an error, not garbage") {
    const Tensor a = leaf({2, 3}, 41, DType::f64);
    Tensor t = mul(a, 2.0);
    set_recompute(t, [] { return zeros({3, 2}, {.dtype = DType::f64, .device = test_device()}); });
    const Tensor y = mul(t, a);  // mul saves t for a's gradient
    check_error([&] { sum(y).backward(); }, {"mul", "recomputed", "[3, 2]", "[2, 3]"});
  }

  TEST_CASE("recompute: a SongUNet training step, with dropout and replayed masks, is bit-exact") {
    // The online pass records the dropout masks and the target pass replays them (as consistency
    // training does); with recomputation on, no mask is kept and the replay draws again.
    for (const std::string format : {"contiguous", "channels_last"}) {
      INFO(format);
      std::vector<std::vector<Tensor>> grads;
      std::vector<Tensor> outs;
      std::vector<int64_t> peaks;
      for (const std::string recompute : {"off", "on"}) {
        Generator gen(0);
        nn::SongUNetConfig cfg = nn::songunet_preset("ddpmpp-digits-8");
        cfg.dropout = 0.3;
        cfg.memory_format = format;
        cfg.recompute = recompute;
        nn::SongUNet net(cfg, gen);
        nn::SongUNet target(cfg, gen);
        net.to(test_device());
        target.to(test_device());
        net.train();
        target.train();
        Generator data(6);
        const Tensor x1 = on_test_device(randn({8, 1, 8, 8}, {}, &data)),
                     x2 = on_test_device(randn({8, 1, 8, 8}, {}, &data)),
                     s = on_test_device(full({8}, 0.7));
        Generator drop(42), replay(42);
        const Meter meter;
        nn::DropoutMasks masks;
        const Tensor out = net.forward(x1, s, {}, {}, {.dropout = &drop, .masks = &masks});
        masks.replay = true;
        Tensor tgt;
        {
          NoGradGuard ng;
          tgt = target.forward(x2, s, {}, {}, {.dropout = &replay, .masks = &masks});
        }
        CHECK(masks.next == masks.masks.size());
        sum(square(sub(out, tgt))).backward();
        peaks.push_back(meter.peak());
        outs.push_back(out);
        outs.push_back(tgt);
        std::vector<Tensor> g;
        for (const auto& [name, p] : net.named_parameters()) g.push_back(p.grad());
        grads.push_back(g);
      }
      check_same(outs[2], outs[0], "online output");
      check_same(outs[3], outs[1], "target output");
      REQUIRE(grads[0].size() == grads[1].size());
      for (size_t i = 0; i < grads[0].size(); ++i)
        check_same(grads[1][i], grads[0][i], "parameter gradient " + std::to_string(i));
      MESSAGE(format, ": step peak ", peaks[0], " bytes kept, ", peaks[1], " recomputed");
      CHECK(peaks[1] < peaks[0] * 0.9);  // the convolutions' inputs and the masks not kept
    }
  }

  TEST_CASE("recompute: ADM's and EDM's ImageNet U-Nets give the same gradients with it on") {
    // class-conditional, with dropout: FiLM scale-shift norms (ADM), attention with two heads
    for (const std::string family : {"adm", "dhariwal"}) {
      INFO(family);
      std::vector<std::vector<Tensor>> grads;
      std::vector<Tensor> outs;
      std::vector<int64_t> peaks;
      for (const std::string recompute : {"off", "on"}) {
        Generator gen(0);
        std::unique_ptr<nn::Network> net;
        if (family == "adm") {
          nn::AdmUNetConfig cfg = nn::adm_unet_preset("adm-tiny-16");
          cfg.dropout = 0.2;
          cfg.recompute = recompute;
          net = std::make_unique<nn::AdmUNet>(cfg, gen);
        } else {
          nn::DhariwalUNetConfig cfg = nn::dhariwal_unet_preset("dhariwal-tiny-16");
          cfg.dropout = 0.2;
          cfg.recompute = recompute;
          net = std::make_unique<nn::DhariwalUNet>(cfg, gen);
        }
        net->to(test_device());
        net->train();
        Generator data(3);
        const int64_t n = 2, c = net->in_channels(), r = net->img_resolution();
        const Tensor x = on_test_device(randn({n, c, r, r}, {}, &data)),
                     s = on_test_device(full({n}, 0.4));
        Tensor labels;
        if (net->label_dim() > 0) {
          NoGradGuard ng;
          labels = zeros({n, net->label_dim()});
          for (int64_t i = 0; i < n; ++i) {
            Tensor one = narrow(narrow(labels, 0, i, 1), 1, 3 * i, 1);
            fill_(one, 1.0);
          }
          labels = on_test_device(labels);
        }
        Generator drop(9);
        const Meter meter;
        const Tensor out = net->forward(x, s, labels, {}, {.dropout = &drop});
        sum(square(out)).backward();
        peaks.push_back(meter.peak());
        outs.push_back(out);
        std::vector<Tensor> g;
        for (const auto& [name, p] : net->named_parameters()) g.push_back(p.grad());
        grads.push_back(g);
      }
      check_same(outs[1], outs[0], "output");
      REQUIRE(grads[0].size() == grads[1].size());
      for (size_t i = 0; i < grads[0].size(); ++i)
        check_same(grads[1][i], grads[0][i], "parameter gradient " + std::to_string(i));
      MESSAGE(family, ": step peak ", peaks[0], " bytes kept, ", peaks[1], " recomputed");
      CHECK(peaks[1] < peaks[0]);
    }
  }

  TEST_CASE("recompute: the network option is checked and resolved per backend") {
    nn::SongUNetConfig cfg = nn::songunet_preset("ddpmpp-digits-8");
    cfg.recompute = "sometimes";
    check_error([&] { cfg.validate(); }, {"SongUNet", "recompute", "sometimes"});
    const Backend& cpu = backend_for(Device::cpu());
    CHECK_FALSE(nn::resolve_recompute("auto", cpu));
    CHECK(nn::resolve_recompute("on", cpu));
    CHECK_FALSE(nn::resolve_recompute("off", cpu));
    check_error([&] { nn::resolve_recompute("yes", cpu); }, {"recompute", "yes"});
  }
}
