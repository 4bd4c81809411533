// GPU parity for group_norm and the neural-network functions (linear, embedding, dropout,
// upsample_nearest2d, upsample_bilinear2d, avg_pool2d, scaled_dot_product_attention): CUDA against
// CPU, forward and backward, in every layout and float dtype; group_norm with large means and
// bit-for-bit repeatability; dropout masks identical on both devices; the fused kernels (GroupNorm
// + SiLU with and without the shift, dropout, the convolution's bias) against the composites they
// replace, on the GPU; the fused attention kernel against the CPU's. Each case exits with code 77
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

// Bit-for-bit equality of two tensors (NaNs equal), with the first difference in the message.
void check_same_bits(const Tensor& a, const Tensor& b, const std::string& what) {
  REQUIRE_MESSAGE(a.defined() == b.defined(), what, ": defined on one side only");
  if (!a.defined()) return;
  REQUIRE_MESSAGE(a.shape() == b.shape(), what, ": shapes differ");
  const std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < x.size(); ++i)
    if (!(x[i] == y[i] || (std::isnan(x[i]) && std::isnan(y[i])))) {
      if (bad++ == 0) first = i;
    }
  CHECK_MESSAGE(bad == 0, what, ": ", bad, " of ", x.size(), " elements differ, first at ", first,
                " (", bad ? x[first] : 0.0, " vs ", bad ? y[first] : 0.0, ")");
}

Tensor gpu_input(const Shape& s, uint64_t seed, DType dt, MemoryFormat f = MemoryFormat::Contiguous,
                 double scale = 1.0) {
  return to_memory_format(to(randn_input(s, seed, Layout::Contiguous, dt, scale), kGpu), f);
}

Tensor gpu_like(const Tensor& t) {
  return empty(t.shape(), {.dtype = t.dtype(), .device = t.device()}, memory_format_of(t));
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

  TEST_CASE("cuda nn: the fused GroupNorm + SiLU kernels give their composites' bits") {
    require_gpu();
    Backend& be = backend_for(kGpu);
    struct Shp {
      Shape x;
      int64_t groups;
    };
    // a small case, and one with more elements per channel and per group than a block has threads
    Backend& cpu = backend_for(Device::cpu());
    for (const Shp& sh : {Shp{{3, 8, 5, 4}, 4}, Shp{{4, 64, 17, 19}, 32}, Shp{{2, 6}, 3}})
      for (MemoryFormat f : {MemoryFormat::Contiguous, MemoryFormat::ChannelsLast})
        for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16})
          for (bool affine : {true, false})
            for (bool shifted : {false, true}) {
              if (f == MemoryFormat::ChannelsLast && sh.x.size() != 4) continue;
              const std::string what = shape_str(sh.x) + " " + memory_format_name(f) + " " +
                                       dtype_name(dt) + (affine ? " affine" : " plain") +
                                       (shifted ? " shifted" : "");
              CAPTURE(what);
              const int64_t N = sh.x[0], C = sh.x[1];
              const Tensor x = gpu_input(sh.x, 1, dt, f);
              const Tensor w = affine ? gpu_input({C}, 2, dt) : Tensor();
              const Tensor b = affine ? gpu_input({C}, 3, dt) : Tensor();
              const Tensor shift = shifted ? gpu_input({N, C}, 4, dt) : Tensor();
              const Tensor dy = gpu_input(sh.x, 5, dt, f);
              const DType st = dt == DType::f64 ? DType::f64 : DType::f32;
              Tensor out[2], mean[2], rstd[2], dx[2], dw[2], db[2], ds[2];
              for (int k = 0; k < 2; ++k) {  // 0: fused (CudaBackend), 1: composite (Backend's)
                out[k] = gpu_like(x);
                mean[k] = empty({N, sh.groups}, {.dtype = st, .device = kGpu});
                rstd[k] = empty({N, sh.groups}, {.dtype = st, .device = kGpu});
                dx[k] = gpu_like(x);
                if (affine) {
                  dw[k] = gpu_like(w);
                  db[k] = gpu_like(b);
                }
                if (shifted) ds[k] = gpu_like(shift);
                if (shifted && k == 0) {
                  be.group_norm_silu_shifted(x, shift, w, b, sh.groups, 1e-5, out[k], mean[k],
                                             rstd[k]);
                  be.group_norm_silu_shifted_backward(dy, x, shift, w, b, mean[k], rstd[k],
                                                      sh.groups, 1e-5, dx[k], ds[k], dw[k], db[k]);
                } else if (shifted) {
                  be.Backend::group_norm_silu_shifted(x, shift, w, b, sh.groups, 1e-5, out[k],
                                                      mean[k], rstd[k]);
                  be.Backend::group_norm_silu_shifted_backward(dy, x, shift, w, b, mean[k], rstd[k],
                                                               sh.groups, 1e-5, dx[k], ds[k], dw[k],
                                                               db[k]);
                } else if (k == 0) {
                  be.group_norm_silu(x, w, b, sh.groups, 1e-5, out[k], mean[k], rstd[k]);
                  be.group_norm_silu_backward(dy, x, w, b, mean[k], rstd[k], sh.groups, 1e-5, dx[k],
                                              dw[k], db[k]);
                } else {
                  be.Backend::group_norm_silu(x, w, b, sh.groups, 1e-5, out[k], mean[k], rstd[k]);
                  be.Backend::group_norm_silu_backward(dy, x, w, b, mean[k], rstd[k], sh.groups,
                                                       1e-5, dx[k], dw[k], db[k]);
                }
              }
              check_same_bits(out[1], out[0], what + " output");
              check_same_bits(mean[1], mean[0], what + " mean");
              check_same_bits(rstd[1], rstd[0], what + " rstd");
              check_same_bits(dx[1], dx[0], what + " grad x");
              check_same_bits(dw[1], dw[0], what + " grad weight");
              check_same_bits(db[1], db[0], what + " grad bias");
              check_same_bits(ds[1], ds[0], what + " grad shift");
              {  // and the CPU's fused kernels, in the same layout, within the dtype's precision
                auto c = [&](const Tensor& t) {
                  return t.defined() ? to_memory_format(to(t, Device::cpu()), memory_format_of(t))
                                     : Tensor();
                };
                auto like = [&](const Tensor& t) {
                  return t.defined() ? c(gpu_like(t)) : Tensor();
                };
                Tensor co = like(x), cm = like(mean[0]), cr = like(rstd[0]), cdx = like(x);
                Tensor cdw = like(w), cdb = like(b), cds = like(shift);
                if (shifted) {
                  cpu.group_norm_silu_shifted(c(x), c(shift), c(w), c(b), sh.groups, 1e-5, co, cm,
                                              cr);
                  cpu.group_norm_silu_shifted_backward(c(dy), c(x), c(shift), c(w), c(b), cm, cr,
                                                       sh.groups, 1e-5, cdx, cds, cdw, cdb);
                } else {
                  cpu.group_norm_silu(c(x), c(w), c(b), sh.groups, 1e-5, co, cm, cr);
                  cpu.group_norm_silu_backward(c(dy), c(x), c(w), c(b), cm, cr, sh.groups, 1e-5,
                                               cdx, cdw, cdb);
                }
                const double tol = device_tol(dt);
                check_close(co, out[0], tol, what + " output against the CPU");
                check_close(cdx, dx[0], 4 * tol, what + " grad x against the CPU");
                if (affine) {
                  check_close(cdw, dw[0], 4 * tol, what + " grad weight against the CPU");
                  check_close(cdb, db[0], 4 * tol, what + " grad bias against the CPU");
                }
                if (shifted) check_close(cds, ds[0], 4 * tol, what + " grad shift against the CPU");
              }
              if (!shifted && affine) {  // only the parameter gradients wanted: no grad_x
                Tensor dw2 = gpu_like(w), db2 = gpu_like(b);
                be.group_norm_silu_backward(dy, x, w, b, mean[0], rstd[0], sh.groups, 1e-5,
                                            Tensor(), dw2, db2);
                check_same_bits(dw[1], dw2, what + " grad weight without grad x");
                check_same_bits(db[1], db2, what + " grad bias without grad x");
              }
            }
  }

  TEST_CASE("cuda nn: the fused dropout kernel gives the composite's bits") {
    require_gpu();
    Backend& be = backend_for(kGpu);
    for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16})
      for (MemoryFormat f : {MemoryFormat::Contiguous, MemoryFormat::ChannelsLast}) {
        CAPTURE(dtype_name(dt));
        CAPTURE(int(f));
        const Tensor x = gpu_input({3, 10, 9, 7}, 21, dt, f);
        Tensor out0 = gpu_like(x), out1 = gpu_like(x), m0 = gpu_like(x), m1 = gpu_like(x);
        be.dropout(x, 0.7, 1 / 0.7, 77, 5, out0, m0);
        be.Backend::dropout(x, 0.7, 1 / 0.7, 77, 5, out1, m1);
        check_same_bits(out1, out0, "output");
        check_same_bits(m1, m0, "mask");
        Tensor out2 = gpu_like(x);  // without a mask tensor
        be.dropout(x, 0.7, 1 / 0.7, 77, 5, out2, Tensor());
        check_same_bits(out1, out2, "output without a mask");
        Tensor inplace = clone(x);
        if (f == MemoryFormat::ChannelsLast) inplace = to_memory_format(inplace, f);
        be.dropout(inplace, 0.7, 1 / 0.7, 77, 5, inplace, Tensor());
        check_same_bits(out1, inplace, "in place");
      }
    // a layout the kernel does not walk (a transposed view) goes to the composite: same values
    const Tensor xt = transpose(gpu_input({33, 65}, 22, DType::f32), 0, 1);
    Tensor o0 = gpu_like(xt), o1 = gpu_like(xt);
    be.dropout(xt, 0.4, 2.5, 9, 0, o0, Tensor());
    be.Backend::dropout(xt, 0.4, 2.5, 9, 0, o1, Tensor());
    check_same_bits(o1, o0, "transposed");
  }

  TEST_CASE("cuda nn: the convolution's bias kernels against the composite, in both layouts") {
    require_gpu();
    Backend& be = backend_for(kGpu);
    const Conv2dParams p{.pad_h = 1, .pad_w = 1};
    for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16})
      for (MemoryFormat f : {MemoryFormat::Contiguous, MemoryFormat::ChannelsLast})
        for (const Shape& xs : {Shape{2, 5, 6, 7}, Shape{70, 3, 20, 17}}) {
          CAPTURE(dtype_name(dt));
          CAPTURE(int(f));
          CAPTURE(shape_str(xs));
          const int64_t Co = 12;
          const Tensor x = gpu_input(xs, 31, dt, f);
          const Tensor w = gpu_input({Co, xs[1], 3, 3}, 32, dt, MemoryFormat::Contiguous, 0.3);
          const Tensor b = gpu_input({Co}, 33, dt);
          const Shape ys{xs[0], Co, xs[2], xs[3]};
          const TensorOptions o{.dtype = dt, .device = kGpu};
          Tensor y0 = empty(ys, o, f), y1 = empty(ys, o, f);
          be.conv2d_bias(x, w, b, p, y0);
          be.Backend::conv2d_bias(x, w, b, p, y1);
          check_same_bits(y1, y0, "forward");
          const Tensor dy = gpu_input(ys, 34, dt, f);
          Tensor dw0 = gpu_like(w), dw1 = gpu_like(w), db0 = gpu_like(b), db1 = gpu_like(b);
          be.conv2d_backward_weight_bias(x, dy, p, dw0, db0);
          be.Backend::conv2d_backward_weight_bias(x, dy, p, dw1, db1);
          check_same_bits(dw1, dw0, "weight gradient");
          // the bias gradient sums in another order: within accumulation error, and repeatable
          const double tol = dt == DType::f64 ? 1e-12 : dt == DType::f32 ? 1e-5 : device_tol(dt);
          check_close(db1, db0, tol, "bias gradient");
          Tensor dw2 = gpu_like(w), db2 = gpu_like(b);
          be.conv2d_backward_weight_bias(x, dy, p, dw2, db2);
          check_same_bits(db0, db2, "bias gradient, second run");
          // and against an f64 sum on the CPU
          const Tensor ref = sum(to(to(dy, Device::cpu()), DType::f64), {0, 2, 3});
          check_close(ref, db0,
                      dt == DType::f64   ? 1e-12
                      : dt == DType::f32 ? 1e-5
                                         : device_tol(dt),
                      "bias gradient against f64");
        }
  }

  TEST_CASE("cuda nn: the fused attention kernel matches the CPU, and repeats bit for bit") {
    require_gpu();
    // head sizes the tensor-core kernel takes: 64 (ADM's and EDM's ImageNet heads), 32, 16, and
    // 256 (EDM's CIFAR-10 SongUNet: one head of 256 channels); rows and keys past whole tiles
    const std::vector<OpCase> cases = {
        {"sdpa_fused_64",
         {{2, 3, 70, 64}, {2, 3, 130, 64}, {2, 3, 130, 32}},
         [](V x) { return scaled_dot_product_attention(x[0], x[1], x[2]); }},
        {"sdpa_fused_256",
         {{2, 80, 256}, {2, 80, 256}, {2, 80, 256}},
         [](V x) { return scaled_dot_product_attention(x[0], x[1], x[2], 0.0625); }},
        {"sdpa_fused_broadcast_16",
         {{2, 1, 9, 16}, {1, 2, 65, 16}, {1, 2, 65, 16}},
         [](V x) { return scaled_dot_product_attention(x[0], x[1], x[2]); }},
    };
    const AttentionKernelGuard fused(AttentionKernel::Fused);
    for (const OpCase& oc : cases)
      for (DType dt : {DType::f16, DType::bf16})
        for (Layout l : {Layout::Contiguous, Layout::Transposed}) run_parity(oc, dt, l);
    for (DType dt : {DType::f16, DType::bf16}) {
      std::vector<Tensor> runs;
      for (int rep = 0; rep < 2; ++rep) {
        Tensor q = gpu_input({4, 150, 64}, 1, dt), k = gpu_input({4, 200, 64}, 2, dt),
               v = gpu_input({4, 200, 64}, 3, dt);
        for (Tensor* t : {&q, &k, &v}) t->set_requires_grad(true);
        const Tensor y = scaled_dot_product_attention(q, k, v);
        sum(mul(y, gpu_input(y.shape(), 4, dt))).backward();
        for (const Tensor& t : {y, q.grad(), k.grad(), v.grad()}) runs.push_back(t);
      }
      for (size_t i = 0; i < 4; ++i)
        check_same_bits(runs[i], runs[4 + i],
                        std::string(dtype_name(dt)) + " repeat " + std::to_string(i));
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
