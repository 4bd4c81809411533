// The fused attention kernel (Backend::attention, FlashAttention-2's algorithm) against the
// composite it replaces (matmul, softmax, matmul) and against an f64 reference: forward and the
// gradients of q, k and v, across the kernel's block and chunk edges (70 query rows, 300 keys),
// broadcast batch dims, transposed and strided operands, f64/f32/f16/bf16; f64 gradcheck; the L × L
// scores really never stored (the peak); non-finite inputs give non-finite outputs; saturated
// softmaxes stay finite; results do not depend on the thread count; each network family's
// `attention` option reaches its attention layers. Device-generic:
// CM_TEST_DEVICE=cuda runs it on the GPU (tools/gpu_device_run.sh), where the fused kernel takes
// f16/bf16 with head sizes that are multiples of 16 (others run the composite either way).
#include <doctest/doctest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "helpers.h"
#include "nn/adm_unet.h"
#include "nn/dhariwal_unet.h"
#include "nn/songunet.h"
#include "tensor/storage.h"

using namespace cm;
using cm::test::Layout;
using cm::test::randn_input;
using cm::test::test_device;

namespace {

struct Result {
  Tensor out, dq, dk, dv;
};

// out = attention(q, k, v) with `kernel`, and the gradients of Σ out·dy.
Result run(AttentionKernel kernel, const Tensor& q0, const Tensor& k0, const Tensor& v0,
           const Tensor& dy, std::optional<double> scale) {
  const AttentionKernelGuard guard(kernel);
  Tensor q = detach(q0), k = detach(k0), v = detach(v0);
  for (Tensor* t : {&q, &k, &v}) t->set_requires_grad(true);
  const Tensor out = scaled_dot_product_attention(q, k, v, scale);
  backward({out}, {dy});
  return {out, q.grad(), k.grad(), v.grad()};
}

// max |a − ref| / max |ref| (ref's magnitude 1 where it is 0). Not golden_util.h's rel_err, which
// divides by 1e-30 there: with one key, dq and dk vanish exactly and the kernels' rounding is
// compared absolutely.
double rel_err(const Tensor& a, const Tensor& ref) {
  REQUIRE(a.shape() == ref.shape());
  const std::vector<double> va = a.to_vector<double>(), vr = ref.to_vector<double>();
  double err = 0, mag = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    err = std::max(err, std::abs(va[i] - vr[i]));
    mag = std::max(mag, std::abs(vr[i]));
  }
  return err / (mag > 0 ? mag : 1);
}

// The rounding floor of a dtype's result: a few unit roundoffs.
double floor_of(DType t) {
  return t == DType::f64 ? 1e-13 : t == DType::f32 ? 2e-6 : t == DType::f16 ? 4e-3 : 3e-2;
}

std::vector<DType> dtypes() {
  return {DType::f64, DType::f32, DType::bf16, DType::f16};
}

struct Case {
  Shape q, k, v;
  Layout layout;  // of q
  std::optional<double> scale;
};

}  // namespace

TEST_SUITE("autograd") {
  TEST_CASE("fused attention: the composite's results within rounding, across blocks and layouts") {
    const std::vector<Case> cases = {
        {{3, 70, 64}, {3, 300, 64}, {3, 300, 32}, Layout::Contiguous, std::nullopt},
        {{3, 70, 64}, {3, 300, 64}, {3, 300, 32}, Layout::Transposed, 0.02},
        {{3, 70, 64}, {3, 300, 64}, {3, 300, 32}, Layout::Strided, 4.0},  // saturated softmax
        {{2, 2, 5, 16}, {1, 2, 9, 16}, {1, 2, 9, 16}, Layout::Transposed, std::nullopt},
        {{2, 3, 5, 8}, {2, 1, 9, 8}, {2, 1, 9, 3}, Layout::Contiguous, 0.7},
        {{1, 1, 4}, {1, 1, 4}, {1, 1, 4}, Layout::Contiguous, std::nullopt},
        {{6, 16}, {7, 16}, {7, 16}, Layout::Strided, std::nullopt},
    };
    for (const Case& c : cases)
      for (const DType t : dtypes()) {
        INFO(shape_str(c.q), " ", shape_str(c.k), " ", shape_str(c.v), " q ",
             std::string(cm::test::layout_name(c.layout)), " ", std::string(dtype_name(t)),
             " scale ", c.scale.value_or(0));
        const Tensor q64 = randn_input(c.q, 1, c.layout), k64 = randn_input(c.k, 2),
                     v64 = randn_input(c.v, 3);
        Shape ys = broadcast_shapes(Shape(c.q.begin(), c.q.end() - 2),
                                    Shape(c.v.begin(), c.v.end() - 2), "test");
        ys.push_back(c.q[c.q.size() - 2]);
        ys.push_back(c.v.back());
        const Tensor dy64 = randn_input(ys, 4);
        // the f64 composite on the same values: the reference
        const Result ref = run(AttentionKernel::Composite, q64, k64, v64, dy64, c.scale);
        const auto in = [&](const Tensor& x) { return to(x, t); };
        const Result fused =
            run(AttentionKernel::Fused, in(q64), in(k64), in(v64), in(dy64), c.scale);
        const Result comp =
            run(AttentionKernel::Composite, in(q64), in(k64), in(v64), in(dy64), c.scale);
        CHECK(fused.out.dtype() == t);
        CHECK(fused.out.shape() == ys);
        const char* names[] = {"out", "dq", "dk", "dv"};
        const Tensor Result::*parts[] = {&Result::out, &Result::dq, &Result::dk, &Result::dv};
        for (int i = 0; i < 4; ++i) {
          INFO(std::string(names[i]));
          const Tensor& f = fused.*parts[i];
          CHECK(f.dtype() == t);
          const double ef = rel_err(f, ref.*parts[i]), ec = rel_err(comp.*parts[i], ref.*parts[i]);
          // no worse than the composite beyond its own rounding
          CHECK_MESSAGE(ef <= 2 * ec + floor_of(t), "fused ", ef, " composite ", ec);
        }
      }
  }

  TEST_CASE("fused attention: f64 gradcheck across the block and chunk edges") {
    if (!backend_for(test_device()).fused_attention_supports(DType::f64, 3, 2)) return;
    const AttentionKernelGuard guard(AttentionKernel::Fused);
    using V = std::vector<Tensor>;
    CHECK_GRADCHECK([](const V& x) { return scaled_dot_product_attention(x[0], x[1], x[2]); },
                    {cm::test::grad_input({1, 70, 3}, 10, Layout::Transposed),
                     cm::test::grad_input({1, 260, 3}, 11), cm::test::grad_input({1, 260, 2}, 12)});
    CHECK_GRADCHECK([](const V& x) { return scaled_dot_product_attention(x[0], x[1], x[2], 1.3); },
                    {cm::test::grad_input({2, 1, 3, 3}, 13), cm::test::grad_input({1, 2, 4, 3}, 14),
                     cm::test::grad_input({1, 2, 4, 5}, 15, Layout::Strided)});
  }

  TEST_CASE("fused attention: the L x L scores are never stored") {
    // f32 on the CPU; on CUDA the fused kernel takes 16-bit operands
    const DType t = test_device().is_cuda() ? DType::bf16 : DType::f32;
    const int64_t B = 2, L = 1024, D = 32;
    const Tensor q = randn_input({B, L, D}, 20, Layout::Contiguous, t),
                 k = randn_input({B, L, D}, 21, Layout::Contiguous, t),
                 v = randn_input({B, L, D}, 22, Layout::Contiguous, t),
                 dy = randn_input({B, L, D}, 23, Layout::Contiguous, t);
    const int64_t scores = B * L * L * 4;  // one f32 score matrix per batch index
    const auto peak = [&](AttentionKernel kernel) {
      Allocator& a = allocator_for(test_device());
      backend_for(test_device()).synchronize();
      a.reset_peak();
      const int64_t before = a.stats().allocated;
      run(kernel, q, k, v, dy, std::nullopt);
      backend_for(test_device()).synchronize();
      return a.stats().peak_allocated - before;
    };
    const int64_t composite = peak(AttentionKernel::Composite);
    const int64_t fused = peak(AttentionKernel::Fused);
    INFO("composite ", composite, " B, fused ", fused, " B, one score matrix ", scores, " B");
    CHECK(composite >= scores);
    CHECK(fused < scores / 4);
    if (!test_device().is_cuda()) CHECK(peak(AttentionKernel::Auto) == fused);  // auto: fused
  }

  TEST_CASE("fused attention: a non-finite input row gives a non-finite output row") {
    for (const DType t : {DType::f32, DType::bf16}) {
      INFO(std::string(dtype_name(t)));
      std::vector<double> qv = randn_input({1, 8, 16}, 30).to_vector<double>();
      qv[3 * 16 + 5] = std::numeric_limits<double>::infinity();  // row 3
      const Tensor q = to(from_vector(qv, {1, 8, 16}, {.device = test_device()}), t);
      const Tensor k = randn_input({1, 20, 16}, 31, Layout::Contiguous, t),
                   v = randn_input({1, 20, 16}, 32, Layout::Contiguous, t);
      const AttentionKernelGuard guard(AttentionKernel::Fused);
      const std::vector<double> y = scaled_dot_product_attention(q, k, v).to_vector<double>();
      for (int64_t r = 0; r < 8; ++r)
        for (int64_t j = 0; j < 16; ++j) {
          INFO("row ", r, " col ", j);
          CHECK(std::isfinite(y[size_t(r * 16 + j)]) == (r != 3));
        }
    }
  }

  TEST_CASE("fused attention: the same bits on one thread and on all") {
    if (test_device().is_cuda()) return;  // the CPU's OpenMP split
    const Tensor q = randn_input({5, 130, 24}, 40), k = randn_input({5, 270, 24}, 41),
                 v = randn_input({5, 270, 8}, 42), dy = randn_input({5, 130, 8}, 43);
    for (const DType t : {DType::f32, DType::f64}) {
      const int threads = omp_get_max_threads();
      omp_set_num_threads(1);
      const Result one = run(AttentionKernel::Fused, to(q, t), to(k, t), to(v, t), to(dy, t), {});
      omp_set_num_threads(std::max(threads, 4));
      const Result all = run(AttentionKernel::Fused, to(q, t), to(k, t), to(v, t), to(dy, t), {});
      omp_set_num_threads(threads);
      for (const Tensor Result::*p : {&Result::out, &Result::dq, &Result::dk, &Result::dv})
        CHECK((one.*p).to_vector<double>() == (all.*p).to_vector<double>());
    }
  }

  TEST_CASE("fused attention: every network family's attention option reaches its layers") {
    // CUDA's fused kernel takes 16-bit operands only: the op-level cases above cover it there
    if (test_device().is_cuda()) return;
    for (const std::string family : {"songunet", "adm", "dhariwal"}) {
      INFO(family);
      std::vector<Tensor> outs;
      std::vector<std::vector<Tensor>> grads;
      for (const std::string kernel : {"composite", "fused"}) {
        Generator gen(0);
        std::unique_ptr<nn::Network> net;
        if (family == "songunet") {
          nn::SongUNetConfig cfg = nn::songunet_preset("ddpmpp-digits-8");
          cfg.attention = kernel;
          net = std::make_unique<nn::SongUNet>(cfg, gen);
        } else if (family == "adm") {
          nn::AdmUNetConfig cfg = nn::adm_unet_preset("adm-tiny-16");
          cfg.attention = kernel;
          net = std::make_unique<nn::AdmUNet>(cfg, gen);
        } else {
          nn::DhariwalUNetConfig cfg = nn::dhariwal_unet_preset("dhariwal-tiny-16");
          cfg.attention = kernel;
          net = std::make_unique<nn::DhariwalUNet>(cfg, gen);
        }
        {
          // every weight random, the zero-initialised projections after attention included
          NoGradGuard ng;
          Generator w(5);
          for (auto& [name, p] : net->named_parameters()) {
            Tensor t = p;
            copy_(t, mul(randn(p.shape(), {.dtype = p.dtype()}, &w), 0.2));
          }
        }
        net->eval();
        Generator data(3);
        const int64_t n = 2, c = net->in_channels(), r = net->img_resolution();
        const Tensor x = randn({n, c, r, r}, {}, &data), sigma = full({n}, 0.4);
        Tensor labels;
        if (net->label_dim() > 0) labels = zeros({n, net->label_dim()});
        const Tensor out = net->forward(x, sigma, labels, {}, {});
        sum(square(out)).backward();
        outs.push_back(out);
        grads.emplace_back();
        for (const auto& [name, p] : net->named_parameters()) grads.back().push_back(p.grad());
      }
      CHECK(rel_err(outs[1], outs[0]) < 1e-5);
      // the kernels differ in rounding: had the option not reached the layers, every bit would
      // match
      CHECK(outs[1].to_vector<double>() != outs[0].to_vector<double>());
      // gradients against the largest of them: the biases before a norm get only cancellation
      // noise (≈ 1e-6 of the rest), which no kernel can match digit for digit
      double diff = 0, scale = 0;
      for (size_t i = 0; i < grads[0].size(); ++i) {
        if (!grads[0][i].defined()) continue;
        const std::vector<double> a = grads[0][i].to_vector<double>(),
                                  b = grads[1][i].to_vector<double>();
        for (size_t e = 0; e < a.size(); ++e) {
          diff = std::max(diff, std::abs(a[e] - b[e]));
          scale = std::max(scale, std::abs(a[e]));
        }
      }
      CHECK(diff < 1e-5 * scale);
    }
  }
}
