// GPU parity for group_norm and the neural-network functions (linear, embedding, dropout,
// upsample_nearest2d, upsample_bilinear2d, avg_pool2d, scaled_dot_product_attention): CUDA against
// CPU, forward and backward, in every layout and float dtype; group_norm with large means and
// bit-for-bit repeatability; dropout masks identical on both devices. Each case exits with code 77
// (CTest "skipped") where no GPU is present.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "nn/ema.h"
#include "nn/module.h"
#include "nn/optim.h"
#include "tests/gpu_helpers.h"

using namespace cm;
using namespace cm::test;

namespace {

using V = const std::vector<Tensor>&;

// Parameters of odd sizes (the flat buffers' padding between them), on a device.
struct OddParams : nn::Module {
  std::vector<Tensor> ts;
  OddParams(Device d, DType dt) {
    const std::vector<Shape> shapes = {{3}, {5, 7}, {1}, {4, 3, 3, 3}, {17}};
    ts.resize(shapes.size());
    for (size_t i = 0; i < shapes.size(); ++i) {
      ts[i] = cm::to(cm::to(randn_input(shapes[i], 60 + i), dt), d).detach();
      std::string name = "p";
      name += std::to_string(i);
      register_parameter(name, ts[i]);
    }
  }
};

struct OpCase {
  std::string name;
  std::vector<Shape> shapes;
  std::function<Tensor(V)> f;
  double shift = 0;  // added to the inputs
  double scale = 1;  // multiplies the inputs
};

Tensor index_on(const std::vector<int64_t>& v, const Shape& s, const Tensor& like) {
  return from_vector(v, s, {.dtype = DType::i64, .device = like.device()});
}

std::vector<OpCase> op_cases() {
  return {
      {"group_norm_affine",
       {{2, 6, 3, 4}, {6}, {6}},
       [](V x) { return group_norm(x[0], 3, x[1], x[2]); }},
      {"group_norm_no_spatial",
       {{3, 4}, {4}, {4}},
       [](V x) { return group_norm(x[0], 2, x[1], x[2], 1e-3); }},
      {"group_norm_groups_eq_c", {{2, 8, 5}}, [](V x) { return group_norm(x[0], 8); }},
      {"group_norm_one_group_3d",
       {{1, 4, 2, 2, 3}, {4}},
       [](V x) { return group_norm(x[0], 1, x[1]); }},
      // more than one block's worth of elements per group and per channel, odd sizes
      {"group_norm_large_hw",
       {{2, 4, 33, 17}, {4}, {4}},
       [](V x) { return group_norm(x[0], 2, x[1], x[2]); }},
      // N above the block size of the dweight / dbias reduction over n
      {"group_norm_large_n",
       {{300, 4}, {4}, {4}},
       [](V x) { return group_norm(x[0], 2, x[1], x[2]); }},
      // a per-sample channel shift before the norm (the composite on the GPU, fused on the CPU)
      {"group_norm_silu_shifted",
       {{3, 8, 5, 4}, {8}, {8}, {3, 8, 1, 1}},
       [](V x) { return group_norm_silu(x[0], 4, x[1], x[2], 1e-5, x[3]); }},
      {"linear", {{3, 5, 4}, {6, 4}, {6}}, [](V x) { return linear(x[0], x[1], x[2]); }},
      {"linear_no_bias", {{7, 4}, {3, 4}}, [](V x) { return linear(x[0], x[1]); }},
      {"embedding",
       {{6, 5}},
       [](V x) {
         return embedding(x[0], index_on({5, 0, 2, 2, 5, 1}, {2, 3}, x[0]));
       }},
      {"dropout",
       {{9, 13}},
       [](V x) {
         Generator g(17, 3);
         return dropout(x[0], 0.3, true, g);
       }},
      {"upsample_nearest2d", {{2, 3, 4, 5}}, [](V x) { return upsample_nearest2d(x[0], 3); }},
      {"upsample_bilinear2d_up",
       {{2, 3, 4, 5}},
       [](V x) { return upsample_bilinear2d(x[0], 9, 7); }},
      {"upsample_bilinear2d_down",
       {{2, 3, 7, 9}},
       [](V x) { return upsample_bilinear2d(x[0], 3, 4); }},
      {"upsample_bilinear2d_align",
       {{2, 3, 4, 5}},
       [](V x) { return upsample_bilinear2d(x[0], 7, 3, true); }},
      {"avg_pool2d", {{2, 3, 6, 6}}, [](V x) { return avg_pool2d(x[0], 2); }},
      {"avg_pool2d_padded", {{2, 3, 7, 6}}, [](V x) { return avg_pool2d(x[0], 3, 2, 1); }},
      {"sdpa",
       {{2, 3, 5, 8}, {2, 3, 6, 8}, {2, 3, 6, 4}},
       [](V x) { return scaled_dot_product_attention(x[0], x[1], x[2]); }},
      {"sdpa_broadcast_scale",
       {{2, 1, 5, 8}, {1, 3, 6, 8}, {1, 3, 6, 4}},
       [](V x) { return scaled_dot_product_attention(x[0], x[1], x[2], 0.2); }},
      // group_norm near 100 ± 1 in f32 (near 1e6 ± 0.01 in f64 below): the statistics must not
      // cancel
      {"group_norm_large_mean",
       {{2, 4, 6, 5}, {4}},
       [](V x) { return group_norm(x[0], 2, x[1]); },
       100.0},
  };
}

// Runs case `oc` in dtype `dt` with inputs in `layout` on CPU and GPU; compares outputs and the
// gradients of sum(out · w).
void run_parity(const OpCase& oc, DType dt, Layout layout) {
  const std::string what = oc.name + " " + dtype_name(dt) + " " + layout_name(layout);
  std::vector<Tensor> xc, xg;
  for (size_t i = 0; i < oc.shapes.size(); ++i) {
    Tensor base = randn_input(oc.shapes[i], 100 + i, Layout::Contiguous, dt, oc.scale,
                              i == 0 ? oc.shift : 0.0);
    Tensor c = with_layout(base, layout), g = with_layout(to(base, kGpu), layout);
    c.set_requires_grad(true);
    g.set_requires_grad(true);
    xc.push_back(c);
    xg.push_back(g);
  }
  Tensor yc = oc.f(xc), yg = oc.f(xg);
  CHECK(yg.device() == kGpu);
  CHECK(yg.dtype() == dt);
  check_close(yc, yg, device_tol(dt), what + " forward");
  Tensor w = randn_input(yc.shape(), 7, Layout::Contiguous, dt);
  sum(mul(yc, w)).backward();
  sum(mul(yg, to(w, kGpu))).backward();
  for (size_t i = 0; i < xc.size(); ++i) {
    REQUIRE_MESSAGE(xc[i].grad().defined(), what, ": CPU gradient of input ", i, " missing");
    REQUIRE_MESSAGE(xg[i].grad().defined(), what, ": GPU gradient of input ", i, " missing");
    CHECK(xg[i].grad().device() == kGpu);
    check_close(xc[i].grad(), xg[i].grad(), 4 * device_tol(dt),
                what + " gradient of input " + std::to_string(i));
  }
}

}  // namespace

TEST_SUITE("gpu") {
  TEST_CASE("cuda nn: every function matches the CPU, forward and backward, in every layout") {
    require_gpu();
    for (const OpCase& oc : op_cases())
      for (DType dt : {DType::f32, DType::f64})
        for (Layout l : kLayouts) run_parity(oc, dt, l);
  }

  TEST_CASE("cuda nn: 16-bit dtypes match the CPU within their precision") {
    require_gpu();
    for (const OpCase& oc : op_cases()) {
      if (oc.name == "group_norm_large_mean") continue;  // 100 ± 1 is not a 16-bit regime
      for (DType dt : {DType::f16, DType::bf16}) run_parity(oc, dt, Layout::Transposed);
    }
  }

  TEST_CASE("cuda nn: group_norm statistics stay exact for f64 inputs near 1e6 ± 0.01") {
    require_gpu();
    Tensor x = randn_input({2, 4, 6, 5}, 5, Layout::Transposed, DType::f64, 1e-2, 1e6);
    Tensor xg = to(x, kGpu).set_requires_grad(true);
    x.set_requires_grad(true);
    Tensor yc = group_norm(x, 2), yg = group_norm(xg, 2);
    // x − mean is exact to ~ulp(1e6)/2 = 6e-11, i.e. 6e-9 of the 1e-2 spread
    check_close(yc, yg, 1e-7, "forward");
    Tensor w = randn_input(yc.shape(), 6);
    sum(mul(yc, w)).backward();
    sum(mul(yg, to(w, kGpu))).backward();
    check_close(x.grad(), xg.grad(), 1e-7, "gradient");
  }

  TEST_CASE("cuda nn: group_norm forward and backward are bit-for-bit repeatable") {
    require_gpu();
    Tensor x = to(randn_input({4, 32, 16, 16}, 8, Layout::Contiguous, DType::f32), kGpu);
    Tensor w = to(randn_input({32}, 9, Layout::Contiguous, DType::f32), kGpu);
    Tensor b = to(randn_input({32}, 10, Layout::Contiguous, DType::f32), kGpu);
    Tensor dy = to(randn_input({4, 32, 16, 16}, 11, Layout::Contiguous, DType::f32), kGpu);
    std::vector<std::vector<float>> runs[2];
    for (auto& r : runs) {
      Tensor xl = clone(x).set_requires_grad(true), wl = clone(w).set_requires_grad(true);
      Tensor bl = clone(b).set_requires_grad(true);
      Tensor y = group_norm(xl, 8, wl, bl);
      sum(mul(y, dy)).backward();
      for (const Tensor& t : {y, xl.grad(), wl.grad(), bl.grad()})
        r.push_back(t.to_vector<float>());
    }
    for (size_t i = 0; i < runs[0].size(); ++i)
      CHECK_MESSAGE(std::memcmp(runs[0][i].data(), runs[1][i].data(), runs[0][i].size() * 4) == 0,
                    "output ", i, " differs between two runs");
  }

  TEST_CASE("cuda nn: dropout draws the same mask on the GPU as on the CPU") {
    require_gpu();
    // a transposed view, and channels-last activations (masks drawn in memory order on both)
    for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16})
      for (const Tensor& x : {randn_input({33, 65}, 12, Layout::Transposed, dt),
                              randn_input({3, 10, 5, 7}, 13, Layout::ChannelsLast, dt)}) {
        Generator gc(41, 5), gg(41, 5);
        const Tensor xg = to_memory_format(to(x, kGpu), memory_format_of(x));  // same layout
        Tensor yc = dropout(x, 0.4, true, gc), yg = dropout(xg, 0.4, true, gg);
        CHECK(gc.offset() == gg.offset());
        CHECK(memory_format_of(yc) == memory_format_of(yg));
        CHECK_MESSAGE(yc.to_vector<double>() == yg.to_vector<double>(), dtype_name(dt));
      }
  }

  TEST_CASE(
      "cuda nn: fused Adam, AdamW, RAdam over flat buffers, the EMA and clipping match the CPU") {
    require_gpu();
    for (const char* kind : {"adam", "adamw", "radam"}) {
      for (DType dt : {DType::f32, DType::f64}) {
        CAPTURE(kind);
        CAPTURE(dtype_name(dt));
        OddParams c(Device::cpu(), dt), g(kGpu, dt);
        c.flatten_parameters();
        g.flatten_parameters();
        std::vector<Tensor> pc = c.parameters(), pg = g.parameters();
        const nn::AdamOptions o{.lr = 1e-2, .beta2 = 0.95, .weight_decay = 0.1};
        auto make = [&](std::vector<Tensor> ps) -> std::unique_ptr<nn::Optimizer> {
          if (std::string(kind) == "adam") return std::make_unique<nn::Adam>(ps, o);
          if (std::string(kind) == "adamw") return std::make_unique<nn::AdamW>(ps, o);
          return std::make_unique<nn::RAdam>(ps, o);
        };
        auto oc = make(pc), og = make(pg);
        nn::Ema ec(pc, nn::EmaDecay::fixed(0.9)), eg(pg, nn::EmaDecay::fixed(0.9));
        for (int k = 0; k < 8; ++k) {
          for (auto* ps : {&pc, &pg}) {
            Tensor loss;
            for (size_t i = 0; i < ps->size(); ++i) {
              if (k == 3 && i == 4) continue;  // no gradient: the run splits
              const Tensor w =
                  to(to(randn_input((*ps)[i].shape(), 100 * k + i), dt), (*ps)[i].device());
              const Tensor t = sum(mul((*ps)[i], w));
              loss = loss.defined() ? add(loss, t) : t;
            }
            loss.backward();
          }
          CHECK(nn::clip_grad_norm(pg, 3.0) ==
                doctest::Approx(nn::clip_grad_norm(pc, 3.0)).epsilon(1e-6));
          CHECK(nn::grads_finite(pg));
          oc->step();
          og->step();
          oc->zero_grad();
          og->zero_grad();
          ec.step();
          eg.step();
        }
        for (size_t i = 0; i < pc.size(); ++i) {
          check_close(pc[i], pg[i], device_tol(dt), "parameter " + std::to_string(i));
          check_close(ec.shadow()[i], eg.shadow()[i], device_tol(dt), "EMA " + std::to_string(i));
        }
      }
    }
  }
}
