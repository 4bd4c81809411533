// GPU parity for conv2d and conv_transpose2d: CUDA (cuDNN) against the CPU in f64 on the same
// (rounded) values, forward and the gradients of x, w and bias, in f64/f32/f16/bf16 with contiguous
// and non-contiguous inputs, channels-last ones through cuDNN's NHWC path; TF32, reproducible
// gradients, expanded output gradients and errors.
// Each case exits with code 77 (CTest "skipped") where no GPU is present.
#include <cstdlib>
#include <cstring>

#include "tests/gpu_helpers.h"

using namespace cm;
using namespace cm::test;

namespace {

// Tolerance relative to the largest reference value, by dtype (f32: cuDNN may pick Winograd or FFT
// algorithms, exact to a few f32 ulps of the largest term rather than of each output).
double conv_tol(DType t) {
  switch (t) {
    case DType::f64:
      return 1e-10;
    case DType::f32:
      return 2e-4;
    case DType::f16:
      return 5e-3;
    case DType::bf16:
      return 3e-2;
    default:
      return 0;
  }
}

struct ConvCase {
  std::string name;
  Shape xs, ws;
  Conv2dParams p;
  bool transpose = false;
  int64_t output_padding = 0;

  int64_t out_channels() const { return transpose ? ws[1] * p.groups : ws[0]; }
  Tensor operator()(const Tensor& x, const Tensor& w, const Tensor& b) const {
    return transpose
               ? conv_transpose2d(x, w, b, p.stride_h, p.pad_h, output_padding, p.groups, p.dil_h)
               : conv2d(x, w, b, p);
  }
};

// The configurations of tests/test_conv.cpp that matter for EDM's SongUNet, and the odd ones.
std::vector<ConvCase> cases() {
  return {
      {"3x3 padding 1", {2, 8, 9, 7}, {8, 8, 3, 3}, {1, 1, 1, 1, 1, 1, 1}},
      {"1x1", {2, 8, 6, 6}, {12, 8, 1, 1}, {}},
      {"stride 2, dilation 2, groups 2", {2, 4, 11, 9}, {6, 2, 3, 3}, {2, 2, 1, 1, 2, 2, 2}},
      {"asymmetric kernel and parameters", {2, 4, 10, 8}, {4, 4, 3, 2}, {2, 1, 1, 0, 1, 2, 1}},
      {"depthwise 2x2 stride 2 (EDM down)", {2, 6, 8, 8}, {6, 1, 2, 2}, {2, 2, 0, 0, 1, 1, 6}},
      {"depthwise 4x4 stride 2 padding 1 (EDM down)",
       {2, 6, 8, 8},
       {6, 1, 4, 4},
       {2, 2, 1, 1, 1, 1, 6}},
      {"transposed depthwise 4x4 stride 2 padding 1 (EDM up)",
       {2, 6, 4, 4},
       {6, 1, 4, 4},
       {2, 2, 1, 1, 1, 1, 6},
       true},
      {"transposed grouped, output_padding 1",
       {2, 4, 3, 4},
       {4, 3, 3, 3},
       {2, 2, 1, 1, 1, 1, 2},
       true,
       1},
      {"transposed, output_padding >= stride",
       {1, 2, 3, 4},
       {2, 3, 2, 2},
       {1, 1, 0, 0, 2, 2, 1},
       true,
       1},
  };
}

// f64 values rounded to dt (so that CPU and GPU see the same numbers).
Tensor rounded(const Shape& s, uint64_t seed, DType dt) {
  return to(to(randn_input(s, seed), dt), DType::f64);
}

// Runs case c on the CPU in f64 and on the GPU in dt (inputs in `layout`), comparing the outputs
// and the gradients of sum(y · gy).
void run_parity(const ConvCase& c, DType dt, Layout layout, uint64_t seed) {
  const std::string what = c.name + " " + dtype_name(dt) + " " + layout_name(layout);
  const Tensor x = rounded(c.xs, seed, dt), w = rounded(c.ws, seed + 1, dt),
               b = rounded({c.out_channels()}, seed + 2, dt);
  Tensor xc = x.clone(), wc = w.clone(), bc = b.clone();
  Tensor xg = with_layout(to(to(x, dt), kGpu), layout),
         wg = with_layout(to(to(w, dt), kGpu), layout), bg = to(to(b, dt), kGpu);
  for (Tensor* t : {&xc, &wc, &bc, &xg, &wg, &bg}) t->set_requires_grad(true);
  const Tensor yc = c(xc, wc, bc), yg = c(xg, wg, bg);
  CHECK(yg.device() == kGpu);
  CHECK(yg.dtype() == dt);
  check_close(yc, yg, conv_tol(dt), what + " forward");
  const Tensor gy = rounded(yc.shape(), seed + 3, dt);
  yc.backward(gy);
  yg.backward(to(to(gy, dt), kGpu));
  check_close(xc.grad(), xg.grad(), 2 * conv_tol(dt), what + " dx");
  check_close(wc.grad(), wg.grad(), 2 * conv_tol(dt), what + " dw");
  check_close(bc.grad(), bg.grad(), 2 * conv_tol(dt), what + " db");
}

}  // namespace

TEST_SUITE("gpu") {
  TEST_CASE("cuda conv: every configuration matches the CPU in f64 and f32, in every layout") {
    require_gpu();
    uint64_t seed = 1;
    for (const ConvCase& c : cases())
      for (DType dt : {DType::f64, DType::f32})
        for (Layout l : kLayouts) run_parity(c, dt, l, seed += 4);
  }

  TEST_CASE("cuda conv: f16 and bf16 (f32 accumulation) match the CPU within their precision") {
    require_gpu();
    uint64_t seed = 1000;
    for (const ConvCase& c : cases())
      for (DType dt : {DType::f16, DType::bf16}) run_parity(c, dt, Layout::Transposed, seed += 4);
  }

  TEST_CASE("cuda conv: channels-last activations (cuDNN in NHWC, KRSC filters) match the CPU") {
    require_gpu();
    uint64_t seed = 2000;
    for (const ConvCase& c : cases())
      for (DType dt : {DType::f64, DType::f32, DType::f16, DType::bf16})
        run_parity(c, dt, Layout::ChannelsLast, seed += 4);
    // the layout travels: a channels-last input gives channels-last outputs and input gradients
    Tensor x =
        with_layout(to(to(randn_input({2, 8, 9, 7}, 5), DType::bf16), kGpu), Layout::ChannelsLast)
            .set_requires_grad(true);
    const Tensor w = to(to(randn_input({16, 8, 3, 3}, 6), DType::bf16), kGpu);
    const Tensor y = conv2d(x, w, {}, cases()[0].p);
    CHECK(memory_format_of(y) == MemoryFormat::ChannelsLast);
    sum(mul(y, y)).backward();
    CHECK(memory_format_of(x.grad()) == MemoryFormat::ChannelsLast);
  }

  TEST_CASE("cuda conv: TF32 only when asked, within TF32 precision") {
    require_gpu();
    const ConvCase c = cases()[0];
    const Tensor x = randn_input({4, 32, 12, 12}, 7), w = randn_input({32, 32, 3, 3}, 8);
    const Tensor ref = conv2d(x, w, {}, c.p);
    set_matmul_tf32(true);
    const Tensor y = conv2d(to(to(x, DType::f32), kGpu), to(to(w, DType::f32), kGpu), {}, c.p);
    set_matmul_tf32(false);
    check_close(ref, y, 5e-3, "conv2d tf32");
    // off again: exact f32 (a different cached algorithm choice)
    const Tensor y32 = conv2d(to(to(x, DType::f32), kGpu), to(to(w, DType::f32), kGpu), {}, c.p);
    check_close(ref, y32, conv_tol(DType::f32), "conv2d f32 after tf32");
  }

  TEST_CASE("cuda conv: gradients are reproducible run to run") {
    require_gpu();
    for (const ConvCase& c : cases()) {
      Tensor x = to(to(randn_input(c.xs, 11), DType::f32), kGpu),
             w = to(to(randn_input(c.ws, 12), DType::f32), kGpu);
      std::vector<std::vector<float>> runs;
      for (int r = 0; r < 2; ++r) {
        x.zero_grad();
        w.zero_grad();
        x.set_requires_grad(true);
        w.set_requires_grad(true);
        Tensor y = c(x, w, {});
        sum(mul(y, y)).backward();
        std::vector<float> v = x.grad().to_vector<float>(), vw = w.grad().to_vector<float>();
        v.insert(v.end(), vw.begin(), vw.end());
        runs.push_back(v);
      }
      CHECK_MESSAGE(runs[0] == runs[1], c.name, ": two identical backward passes differ");
    }
  }

  TEST_CASE("cuda conv: expanded (0-stride) output gradients and empty batches") {
    require_gpu();
    for (const ConvCase& c : cases()) {
      Tensor xc = randn_input(c.xs, 21), wc = randn_input(c.ws, 22);
      Tensor xg = to(xc, kGpu), wg = to(wc, kGpu);
      for (Tensor* t : {&xc, &wc, &xg, &wg}) t->set_requires_grad(true);
      sum(c(xc, wc, {})).backward();  // the gradient reaching the conv is ones expanded
      sum(c(xg, wg, {})).backward();
      check_close(xc.grad(), xg.grad(), conv_tol(DType::f64), c.name + " dx from sum");
      check_close(wc.grad(), wg.grad(), conv_tol(DType::f64), c.name + " dw from sum");
    }
    Shape empty_batch = cases()[0].xs;
    empty_batch[0] = 0;
    Tensor w = to(randn_input(cases()[0].ws, 23), kGpu);
    const Tensor y = conv2d(to(randn_input(empty_batch, 24), kGpu), w, {}, cases()[0].p);
    CHECK(y.shape()[0] == 0);
  }

  TEST_CASE("cuda conv: errors name the op and the devices") {
    require_gpu();
    const Tensor x = randn_input({1, 2, 5, 5}, 31), w = randn_input({3, 2, 3, 3}, 32);
    try {
      conv2d(to(x, kGpu), w);
      FAIL("conv2d across devices did not throw");
    } catch (const Error& e) {
      CHECK(std::string(e.what()).find("conv2d: tensors on different devices") !=
            std::string::npos);
    }
    CHECK_THROWS_AS(conv_transpose2d(x, to(w.transpose(0, 1).contiguous(), kGpu)), Error);
  }
}
