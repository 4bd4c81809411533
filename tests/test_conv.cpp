// conv2d and conv_transpose2d: outputs and gradients against f64 direct loops for every combination
// of stride, padding, dilation, groups and kernel size (batches, non-square and non-contiguous
// inputs, the CPU kernel's chunked, 1×1 and channel-wise paths), gradcheck of x, w and bias,
// f16/bf16 against f32, PyTorch goldens (tests/golden/conv.json) and the error paths.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "helpers.h"
#include "tensor/cpu/conv_onednn.h"
#include "tensor/cpu/cpu_backend.h"

using namespace cm;
using namespace cm::test;
using nlohmann::json;

namespace {

std::string lname(Layout l) {
  return layout_name(l);
}

// ---- f64 reference loops
// ----------------------------------------------------------------------------

// Outputs and the gradients of sum(y · gy) for each operand.
struct Ref {
  Shape y_shape;
  std::vector<double> y, dx, dw, db;
};

// y[n, g·Cog + co, oh, ow] = b[g·Cog + co]
//   + Σ_{ci, i, j} x[n, g·Cg + ci, oh·sh − ph + i·dh, ow·sw − pw + j·dw] · w[g·Cog + co, ci, i, j]
// (terms outside x are zero). gy (same shape as y) gives the gradients; empty means ones.
Ref ref_conv2d(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dParams& p,
               const Tensor& gy = {}) {
  const Shape xs = x.shape(), ws = w.shape();
  const int64_t N = xs[0], C = xs[1], H = xs[2], W = xs[3];
  const int64_t Co = ws[0], Cg = ws[1], kh = ws[2], kw = ws[3], G = p.groups, Cog = Co / G;
  const int64_t Ho = (H + 2 * p.pad_h - p.dil_h * (kh - 1) - 1) / p.stride_h + 1;
  const int64_t Wo = (W + 2 * p.pad_w - p.dil_w * (kw - 1) - 1) / p.stride_w + 1;
  const std::vector<double> xv = values(x), wv = values(w);
  const std::vector<double> bv = b.defined() ? values(b) : std::vector<double>(size_t(Co), 0.0);
  Ref r;
  r.y_shape = {N, Co, Ho, Wo};
  const std::vector<double> gv =
      gy.defined() ? values(gy) : std::vector<double>(size_t(N * Co * Ho * Wo), 1.0);
  r.y.assign(gv.size(), 0.0);
  r.dx.assign(xv.size(), 0.0);
  r.dw.assign(wv.size(), 0.0);
  r.db.assign(size_t(Co), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t co = 0; co < Co; ++co)
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow) {
          const size_t yi = size_t(((n * Co + co) * Ho + oh) * Wo + ow);
          double acc = bv[size_t(co)];
          const double g = gv[yi];
          r.db[size_t(co)] += g;
          for (int64_t ci = 0; ci < Cg; ++ci)
            for (int64_t i = 0; i < kh; ++i)
              for (int64_t j = 0; j < kw; ++j) {
                const int64_t ih = oh * p.stride_h - p.pad_h + i * p.dil_h;
                const int64_t iw = ow * p.stride_w - p.pad_w + j * p.dil_w;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                const int64_t c = (co / Cog) * Cg + ci;
                const size_t xi = size_t(((n * C + c) * H + ih) * W + iw);
                const size_t wi = size_t(((co * Cg + ci) * kh + i) * kw + j);
                acc += xv[xi] * wv[wi];
                r.dx[xi] += g * wv[wi];
                r.dw[wi] += g * xv[xi];
              }
          r.y[yi] = acc;
        }
  return r;
}

// y[n, g·Cog + co, ih·s − pad + i·d, iw·s − pad + j·d] += x[n, g·Cg + ci, ih, iw] · w[g·Cg + ci,
// co, i, j] for the positions inside y [N, G·Cog, Ho, Wo], Ho = (H − 1)·s − 2·pad + d·(kh − 1) +
// opad + 1.
Ref ref_conv_transpose2d(const Tensor& x, const Tensor& w, const Tensor& b, int64_t s, int64_t pad,
                         int64_t opad, int64_t G, int64_t d, const Tensor& gy = {}) {
  const Shape xs = x.shape(), ws = w.shape();
  const int64_t N = xs[0], C = xs[1], H = xs[2], W = xs[3];
  const int64_t Cg = C / G, Cog = ws[1], kh = ws[2], kw = ws[3], Co = Cog * G;
  const int64_t Ho = (H - 1) * s - 2 * pad + d * (kh - 1) + opad + 1;
  const int64_t Wo = (W - 1) * s - 2 * pad + d * (kw - 1) + opad + 1;
  const std::vector<double> xv = values(x), wv = values(w);
  Ref r;
  r.y_shape = {N, Co, Ho, Wo};
  const size_t ny = size_t(N * Co * Ho * Wo);
  const std::vector<double> gv = gy.defined() ? values(gy) : std::vector<double>(ny, 1.0);
  r.y.assign(ny, 0.0);
  r.dx.assign(xv.size(), 0.0);
  r.dw.assign(wv.size(), 0.0);
  r.db.assign(size_t(Co), 0.0);
  const std::vector<double> bv = b.defined() ? values(b) : std::vector<double>(size_t(Co), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t co = 0; co < Co; ++co)
      for (int64_t k = 0; k < Ho * Wo; ++k) {
        const size_t yi = size_t((n * Co + co) * Ho * Wo + k);
        r.y[yi] = bv[size_t(co)];
        r.db[size_t(co)] += gv[yi];
      }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t ih = 0; ih < H; ++ih)
        for (int64_t iw = 0; iw < W; ++iw)
          for (int64_t co = 0; co < Cog; ++co)
            for (int64_t i = 0; i < kh; ++i)
              for (int64_t j = 0; j < kw; ++j) {
                const int64_t oh = ih * s - pad + i * d, ow = iw * s - pad + j * d;
                if (oh < 0 || oh >= Ho || ow < 0 || ow >= Wo) continue;
                const int64_t oc = (c / Cg) * Cog + co;
                const size_t xi = size_t(((n * C + c) * H + ih) * W + iw);
                const size_t wi = size_t(((c * Cog + co) * kh + i) * kw + j);
                const size_t yi = size_t(((n * Co + oc) * Ho + oh) * Wo + ow);
                r.y[yi] += xv[xi] * wv[wi];
                r.dx[xi] += gv[yi] * wv[wi];
                r.dw[wi] += gv[yi] * xv[xi];
              }
  return r;
}

// max |got − want| ≤ tol · max(1, max |want|).
void check_close(const Tensor& got, const Shape& shape, const std::vector<double>& want, double tol,
                 const std::string& what) {
  REQUIRE_MESSAGE(got.defined(), what, ": undefined");
  REQUIRE_MESSAGE(got.shape() == shape, what, ": shape ", shape_str(got.shape()), ", expected ",
                  shape_str(shape));
  const std::vector<double> g = values(got);
  double scale = 1, worst = 0;
  size_t at = 0;
  for (double v : want) scale = std::max(scale, std::fabs(v));
  for (size_t i = 0; i < g.size(); ++i) {
    const double e = std::fabs(g[i] - want[i]);
    if (!(e <= worst)) {
      worst = e;
      at = i;
    }
  }
  CHECK_MESSAGE(worst <= tol * scale, what, ": max error ", worst, " at element ", at, " (got ",
                g.empty() ? 0 : g[at], ", want ", want.empty() ? 0 : want[at], ")");
}

// Runs y = f() with leaves x, w (and b), backpropagates gy, and compares everything with r.
void check_against_ref(const Tensor& y, const Tensor& gy, const Tensor& x, const Tensor& w,
                       const Tensor& b, const Ref& r, double tol, const std::string& what) {
  check_close(y, r.y_shape, r.y, tol, what + " forward");
  y.backward(gy);
  check_close(x.grad(), x.shape(), r.dx, tol, what + " dx");
  check_close(w.grad(), w.shape(), r.dw, tol, what + " dw");
  if (b.defined()) check_close(b.grad(), b.shape(), r.db, tol, what + " db");
}

std::string conv_name(const Shape& xs, const Shape& ws, const Conv2dParams& p) {
  std::ostringstream os;
  os << "x " << shape_str(xs) << " w " << shape_str(ws) << " stride (" << p.stride_h << ", "
     << p.stride_w << ") pad (" << p.pad_h << ", " << p.pad_w << ") dil (" << p.dil_h << ", "
     << p.dil_w << ") groups " << p.groups;
  return os.str();
}

// One conv2d case in dtype dt: x in layout lx, w in layout lw, optional bias, against ref_conv2d.
void run_conv2d_case(const Shape& xs, const Shape& ws, const Conv2dParams& p, bool bias, Layout lx,
                     Layout lw, uint64_t seed, DType dt = DType::f64) {
  const std::string what = conv_name(xs, ws, p) + (bias ? " bias " : " ") + lname(lx) + "/" +
                           lname(lw) + " " + dtype_name(dt);
  Tensor x = randn_input(xs, seed, lx, dt), w = randn_input(ws, seed + 1, lw, dt);
  Tensor b = bias ? randn_input({ws[0]}, seed + 2, Layout::Contiguous, dt) : Tensor();
  x.set_requires_grad(true);
  w.set_requires_grad(true);
  if (bias) b.set_requires_grad(true);
  Tensor y = conv2d(x, w, b, p);
  CHECK(y.dtype() == dt);
  const Ref r0 = ref_conv2d(x, w, b, p);
  Tensor gy = randn_input(r0.y_shape, seed + 3, Layout::Contiguous, dt);
  const Ref r = ref_conv2d(x, w, b, p, gy);
  check_against_ref(y, gy, x, w, b, r, dt == DType::f64 ? 1e-12 : 2e-5, what);
}

void run_conv_transpose2d_case(const Shape& xs, const Shape& ws, int64_t s, int64_t pad,
                               int64_t opad, int64_t G, int64_t d, bool bias, Layout lx,
                               uint64_t seed, DType dt = DType::f64) {
  std::ostringstream os;
  os << "conv_transpose2d x " << shape_str(xs) << " w " << shape_str(ws) << " stride " << s
     << " pad " << pad << " opad " << opad << " groups " << G << " dil " << d
     << (bias ? " bias " : " ") << lname(lx) << " " << dtype_name(dt);
  Tensor x = randn_input(xs, seed, lx, dt), w = randn_input(ws, seed + 1, Layout::Transposed, dt);
  Tensor b = bias ? randn_input({ws[1] * G}, seed + 2, Layout::Contiguous, dt) : Tensor();
  x.set_requires_grad(true);
  w.set_requires_grad(true);
  if (bias) b.set_requires_grad(true);
  Tensor y = conv_transpose2d(x, w, b, s, pad, opad, G, d);
  const Ref r0 = ref_conv_transpose2d(x, w, b, s, pad, opad, G, d);
  Tensor gy = randn_input(r0.y_shape, seed + 3, Layout::Contiguous, dt);
  const Ref r = ref_conv_transpose2d(x, w, b, s, pad, opad, G, d, gy);
  check_against_ref(y, gy, x, w, b, r, dt == DType::f64 ? 1e-12 : 2e-5, os.str());
}

// ---- 16-bit against f32
// ---------------------------------------------------------------------------

double ulp(double v, DType t) {
  const int mant = t == DType::f16 ? 10 : 7, emin = t == DType::f16 ? -14 : -126;
  const int e = v == 0 ? emin : std::max(std::ilogb(v), emin);
  return std::ldexp(1.0, e - mant);
}

// A 16-bit result computed in f32 and rounded once: within half an ulp (of the 16-bit format) of
// the f32 result on the same (16-bit) values, plus a hair for f32 rounding.
void check_rounded(const Tensor& got16, const Tensor& ref32, const std::string& what) {
  REQUIRE(got16.shape() == ref32.shape());
  const std::vector<double> g = values(got16), r = values(ref32);
  double scale = 0;
  for (double v : r) scale = std::max(scale, std::fabs(v));
  int bad = 0;
  std::string first;
  for (size_t i = 0; i < g.size(); ++i)
    if (!(std::fabs(g[i] - r[i]) <= 0.5 * ulp(r[i], got16.dtype()) + 1e-6 * scale)) {
      if (bad++ == 0)
        first = "element " + std::to_string(i) + ": " + std::to_string(g[i]) + " vs f32 " +
                std::to_string(r[i]);
    }
  CHECK_MESSAGE(bad == 0, what, ": ", bad, " elements off, first ", first);
}

// ---- goldens
// ----------------------------------------------------------------------------------------

const char* kGoldenPath = CM_SOURCE_DIR "/tests/golden/conv.json";

Tensor tensor_of(const json& t, Layout layout = Layout::Contiguous) {
  return with_layout(
      from_vector(t.at("data").get<std::vector<double>>(), t.at("shape").get<Shape>()), layout);
}

void check_golden(const Tensor& got, const json& want, const std::string& what) {
  const Shape s = want.at("shape").get<Shape>();
  REQUIRE_MESSAGE(got.shape() == s, what, ": shape ", shape_str(got.shape()), " vs ", shape_str(s));
  const std::vector<double> g = values(got), w = want.at("data").get<std::vector<double>>();
  std::string bad;
  for (size_t i = 0; i < g.size() && bad.empty(); ++i)
    if (!(std::fabs(g[i] - w[i]) <= 1e-10 * std::fabs(w[i]) + 1e-12)) {
      std::ostringstream os;
      os.precision(17);
      os << what << ": element " << i << " is " << g[i] << ", PyTorch gives " << w[i];
      bad = os.str();
    }
  CHECK_MESSAGE(bad.empty(), bad);
}

}  // namespace

TEST_SUITE("nn") {
  TEST_CASE("conv2d: every stride, padding, dilation, groups and kernel size against f64 loops") {
    // x [3, 4, 7, 10]; groups 1 and 2 with 6 output channels, depthwise with multiplier 1 or 2.
    const int64_t C = 4;
    uint64_t seed = 1;
    int n = 0;
    for (int64_t s : {1, 2})
      for (int64_t pad : {0, 1, 2})
        for (int64_t d : {1, 2})
          for (int64_t G : {int64_t(1), int64_t(2), C})
            for (int64_t k : {1, 2, 3, 4}) {
              const int64_t Co = G == C ? C * (k % 2 + 1) : 6;
              const Conv2dParams p{s, s, pad, pad, d, d, G};
              run_conv2d_case({3, C, 7, 10}, {Co, C / G, k, k}, p, n % 2 == 0,
                              kLayouts[size_t(n % 3)], kLayouts[size_t((n / 3) % 3)], seed);
              seed += 4;
              ++n;
            }
    CHECK(n == 144);
  }

  TEST_CASE("conv2d: non-square kernels and different parameters along H and W") {
    run_conv2d_case({2, 3, 9, 6}, {4, 3, 3, 1}, {2, 1, 1, 0, 1, 1, 1}, true, Layout::Contiguous,
                    Layout::Contiguous, 11);
    run_conv2d_case({2, 4, 8, 11}, {6, 2, 2, 3}, {1, 2, 0, 2, 2, 1, 2}, false, Layout::Transposed,
                    Layout::Strided, 12);
    run_conv2d_case({1, 3, 5, 12}, {3, 1, 1, 4}, {3, 2, 1, 1, 1, 3, 3}, true, Layout::Strided,
                    Layout::Contiguous, 13);
    run_conv2d_case({2, 2, 6, 5}, {4, 2, 5, 2}, {1, 1, 2, 0, 1, 1, 1}, true, Layout::Contiguous,
                    Layout::Transposed, 14);
  }

  TEST_CASE("conv2d: the CPU kernel's batch chunks, 1×1 products and f32 path against f64 loops") {
    // Few samples: one-sample items split into blocks of output rows (forward) and of input
    // channels (gradients); the weight gradient sums chunks of 3 samples, then 2 (P = 400).
    run_conv2d_case({5, 3, 20, 20}, {4, 3, 3, 3}, {1, 1, 1, 1, 1, 1, 1}, true, Layout::Contiguous,
                    Layout::Contiguous, 21);
    run_conv2d_case({5, 4, 20, 20}, {6, 2, 3, 3}, {1, 1, 1, 1, 1, 1, 2}, false, Layout::Transposed,
                    Layout::Contiguous, 22);
    // Many samples of a small plane: chunks of 2 samples side by side in one product, the last
    // chunk a single sample (17 samples; 9 with 2 groups).
    run_conv2d_case({17, 4, 5, 6}, {6, 4, 3, 3}, {1, 1, 1, 1, 1, 1, 1}, true, Layout::Contiguous,
                    Layout::Contiguous, 32);
    run_conv2d_case({9, 4, 6, 5}, {6, 2, 2, 3}, {2, 1, 1, 0, 1, 2, 2}, true, Layout::Strided,
                    Layout::Contiguous, 33);
    run_conv2d_case({17, 6, 5, 4}, {5, 6, 1, 1}, {}, true, Layout::Contiguous, Layout::Contiguous,
                    34);
    // 1×1: x itself is the column matrix (one-sample items, blocks of rows)
    run_conv2d_case({2, 3, 32, 40}, {5, 3, 1, 1}, {}, true, Layout::Contiguous, Layout::Contiguous,
                    23);
    run_conv2d_case({2, 4, 32, 40}, {6, 2, 1, 1}, {1, 1, 0, 0, 1, 1, 2}, true, Layout::Strided,
                    Layout::Contiguous, 24);
    run_conv2d_case({7, 6, 5, 4}, {3, 6, 1, 1}, {}, true, Layout::Transposed, Layout::Contiguous,
                    25);
    // 1×1 with stride or padding goes through im2col
    run_conv2d_case({3, 4, 9, 8}, {5, 4, 1, 1}, {2, 2, 1, 1, 1, 1, 1}, false, Layout::Contiguous,
                    Layout::Contiguous, 26);
    // channel-wise with a larger plane, and one input channel with several outputs
    run_conv2d_case({2, 5, 33, 31}, {5, 1, 4, 4}, {2, 2, 1, 1, 1, 1, 5}, true, Layout::Transposed,
                    Layout::Contiguous, 27);
    run_conv2d_case({3, 1, 12, 13}, {7, 1, 3, 3}, {1, 1, 1, 1, 1, 1, 1}, true, Layout::Contiguous,
                    Layout::Contiguous, 28);
    // stride 2 with an odd width and even, odd or zero padding (the interleaved phase split)
    for (int64_t pad : {0, 1, 2})
      run_conv2d_case({2, 3, 9, 11}, {3, 1, 3, 3}, {2, 2, pad, pad, 1, 1, 3}, true,
                      Layout::Contiguous, Layout::Contiguous, 40 + uint64_t(pad));
    // f32 through BLAS sgemm
    run_conv2d_case({4, 8, 16, 16}, {8, 8, 3, 3}, {1, 1, 1, 1, 1, 1, 1}, true, Layout::Contiguous,
                    Layout::Contiguous, 29, DType::f32);
    run_conv2d_case({3, 6, 11, 9}, {6, 1, 4, 4}, {2, 2, 1, 1, 1, 1, 6}, true, Layout::Transposed,
                    Layout::Contiguous, 30, DType::f32);
    run_conv2d_case({3, 6, 36, 36}, {4, 6, 1, 1}, {}, false, Layout::Contiguous, Layout::Contiguous,
                    31, DType::f32);
  }

  TEST_CASE(
      "conv2d (CPU f32): oneDNN's three passes against f64 loops and the im2col path, in every "
      "layout") {
    namespace dnn = cpu::onednn;
    if (!dnn::available()) {
      MESSAGE("built without oneDNN (CM_ONEDNN): only the im2col path exists");
      return;
    }
    struct Case {
      Shape xs, ws;
      Conv2dParams p;
    };
    const std::vector<Case> cases = {
        {{2, 8, 9, 9}, {16, 8, 3, 3}, {1, 1, 1, 1, 1, 1, 1}},   // the U-Net's 3×3
        {{3, 5, 11, 10}, {7, 5, 3, 3}, {2, 2, 1, 1, 1, 1, 1}},  // stride 2, odd sizes
        {{2, 4, 10, 10}, {4, 4, 3, 3}, {2, 2, 0, 0, 1, 1, 1}},  // the last input row unused
        {{1, 6, 12, 12}, {4, 6, 3, 3}, {1, 1, 2, 2, 2, 2, 1}},  // dilation 2
        {{2, 4, 9, 7}, {6, 4, 5, 3}, {1, 2, 2, 1, 1, 1, 1}},    // non-square, per-axis params
        {{2, 16, 6, 6}, {8, 16, 1, 1}, {1, 1, 0, 0, 1, 1, 1}},  // 1×1: channels-last only
        {{1, 3, 1, 5}, {2, 3, 3, 3}, {1, 1, 1, 1, 1, 1, 1}},    // H = 1
        // grouped: the U-Nets' resampling filters (depthwise 2×2 and 4×4, stride 2), a grouped
        // 3×3, several outputs per group
        {{2, 6, 10, 10}, {6, 1, 2, 2}, {2, 2, 0, 0, 1, 1, 6}},
        {{2, 5, 12, 12}, {5, 1, 4, 4}, {2, 2, 1, 1, 1, 1, 5}},
        {{2, 8, 9, 9}, {8, 2, 3, 3}, {1, 1, 1, 1, 1, 1, 4}},
        {{2, 4, 7, 7}, {6, 2, 3, 3}, {1, 1, 1, 1, 1, 1, 2}},
    };
    const TensorOptions f32{.dtype = DType::f32};
    uint64_t seed = 5000;
    for (const Case& c : cases) {
      const std::string name = conv_name(c.xs, c.ws, c.p);
      Generator gx(seed++), gw(seed++), gg(seed++);
      const Tensor x = randn(c.xs, f32, &gx), w = randn(c.ws, f32, &gw);
      const Ref r0 = ref_conv2d(x, w, Tensor(), c.p);
      const Tensor gy = randn(r0.y_shape, f32, &gg);
      const Ref r = ref_conv2d(x, w, Tensor(), c.p, gy);
      const dnn::ConvShape s{c.xs[0], c.xs[1], c.xs[2],      c.xs[3],      c.ws[0],
                             c.ws[2], c.ws[3], r.y_shape[2], r.y_shape[3], c.p};
      const bool pointwise = c.ws[2] * c.ws[3] == 1;
      // results per layout of the activations (x, gy) and of the outputs (y, gx)
      std::vector<std::vector<double>> ys, gxs, gws;
      std::vector<bool> on_onednn;
      for (Layout in :
           {Layout::Contiguous, Layout::ChannelsLast, Layout::Transposed, Layout::Strided})
        for (Layout outl : {Layout::Contiguous, Layout::ChannelsLast}) {
          const std::string what = name + " in " + lname(in) + ", out " + lname(outl);
          const Tensor xl = with_layout(x, in), gyl = with_layout(gy, in);
          const Tensor y = with_layout(zeros(r.y_shape, f32), outl),
                       dx = with_layout(zeros(c.xs, f32), outl), dw = zeros(c.ws, f32);
          const bool expect = !pointwise || (in == Layout::ChannelsLast);
          CHECK_MESSAGE(dnn::uses_onednn(dnn::ConvPass::Forward, s, xl, w, y) == expect, what);
          CHECK_MESSAGE(dnn::uses_onednn(dnn::ConvPass::BackwardInput, s, gyl, w, dx) == expect,
                        what);
          CHECK_MESSAGE(dnn::uses_onednn(dnn::ConvPass::BackwardWeight, s, xl, gyl, dw) == expect,
                        what);
          cpu::cpu_backend().conv2d(xl, w, c.p, y);
          cpu::cpu_backend().conv2d_backward_input(gyl, w, c.p, dx);
          cpu::cpu_backend().conv2d_backward_weight(xl, gyl, c.p, dw);
          CHECK(y.strides() == with_layout(zeros(r.y_shape, f32), outl).strides());
          check_close(y, r.y_shape, r.y, 2e-5, what + " forward");
          check_close(dx, c.xs, r.dx, 2e-5, what + " dx");
          check_close(dw, c.ws, r.dw, 2e-5, what + " dw");
          ys.push_back(values(y));
          gxs.push_back(values(dx));
          gws.push_back(values(dw));
          on_onednn.push_back(expect);
        }
      // Reorders are exact copies: every layout gives the same bits (on the same path; a 1×1
      // convolution runs on oneDNN only from channels-last activations).
      for (size_t i = 1; i < ys.size(); ++i) {
        if (on_onednn[i] != on_onednn[0]) continue;
        CHECK_MESSAGE(ys[i] == ys[0], name, ": forward differs between layouts (", i, ")");
        CHECK_MESSAGE(gxs[i] == gxs[0], name, ": dx differs between layouts (", i, ")");
        CHECK_MESSAGE(gws[i] == gws[0], name, ": dw differs between layouts (", i, ")");
      }
      // A channel slice of a channels-last tensor (what a cat's backward hands a convolution):
      // read by oneDNN's reorder in place of a copy, the same bits.
      if (!pointwise) {
        const Tensor wide_x = with_layout(cat({x, x}, 1), Layout::ChannelsLast),
                     wide_gy = with_layout(cat({gy, gy}, 1), Layout::ChannelsLast);
        const Tensor xs = narrow(wide_x, 1, c.xs[1], c.xs[1]),
                     gys = narrow(wide_gy, 1, r.y_shape[1], r.y_shape[1]);
        REQUIRE_FALSE(is_channels_last(xs));
        Tensor y = zeros(r.y_shape, f32), dx = zeros(c.xs, f32), dw = zeros(c.ws, f32);
        cpu::cpu_backend().conv2d(xs, w, c.p, y);
        cpu::cpu_backend().conv2d_backward_input(gys, w, c.p, dx);
        cpu::cpu_backend().conv2d_backward_weight(xs, gys, c.p, dw);
        CHECK_MESSAGE(values(y) == ys[0], name, ": forward from a channel slice");
        CHECK_MESSAGE(values(dx) == gxs[0], name, ": dx from a channel slice");
        CHECK_MESSAGE(values(dw) == gws[0], name, ": dw from a channel slice");
      }
      // The im2col path (the reference implementation) agrees to f32 accumulation order.
      dnn::set_enabled(false);
      Tensor y = zeros(r.y_shape, f32), dx = zeros(c.xs, f32), dw = zeros(c.ws, f32);
      CHECK_FALSE(dnn::uses_onednn(dnn::ConvPass::Forward, s, x, w, y));
      cpu::cpu_backend().conv2d(x, w, c.p, y);
      cpu::cpu_backend().conv2d_backward_input(gy, w, c.p, dx);
      cpu::cpu_backend().conv2d_backward_weight(x, gy, c.p, dw);
      dnn::set_enabled(true);
      check_close(y, r.y_shape, ys[0], 1e-5, name + " im2col forward");
      check_close(dx, c.xs, gxs[0], 1e-5, name + " im2col dx");
      check_close(dw, c.ws, gws[0], 1e-5, name + " im2col dw");
    }
    CHECK(dnn::conv_backend_name().rfind("onednn ", 0) == 0);
  }

  TEST_CASE("conv2d (CPU): the fused bias and bias gradient equal the composite kernels") {
    struct Case {
      Shape xs, ws;
      Conv2dParams p;
      DType dt;
      Layout l;
    };
    const std::vector<Case> cases = {
        {{2, 8, 9, 9}, {16, 8, 3, 3}, {1, 1, 1, 1, 1, 1, 1}, DType::f32, Layout::Contiguous},
        {{2, 8, 9, 9}, {16, 8, 3, 3}, {1, 1, 1, 1, 1, 1, 1}, DType::f32, Layout::ChannelsLast},
        {{3, 5, 11, 10}, {7, 5, 3, 3}, {2, 2, 1, 1, 1, 1, 1}, DType::f32, Layout::ChannelsLast},
        {{2, 16, 6, 6}, {8, 16, 1, 1}, {}, DType::f32, Layout::ChannelsLast},  // 1×1 on oneDNN
        {{2, 16, 6, 6}, {8, 16, 1, 1}, {}, DType::f32, Layout::Contiguous},    // 1×1 im2col
        {{2, 4, 6, 5}, {6, 2, 3, 3}, {1, 1, 1, 1, 1, 1, 2}, DType::f32, Layout::Contiguous},
        {{2, 4, 7, 7}, {5, 4, 3, 3}, {1, 1, 1, 1, 1, 1, 1}, DType::f64, Layout::Transposed},
    };
    uint64_t seed = 7000;
    for (const Case& c : cases) {
      const std::string what =
          conv_name(c.xs, c.ws, c.p) + " " + dtype_name(c.dt) + " " + lname(c.l);
      const TensorOptions opt{.dtype = c.dt};
      Generator g1(seed++), g2(seed++), g3(seed++), g4(seed++);
      const Tensor x = with_layout(randn(c.xs, opt, &g1), c.l), w = randn(c.ws, opt, &g2);
      const Tensor b = randn({c.ws[0]}, opt, &g3);
      const Ref r0 = ref_conv2d(x, w, b, c.p);
      const Tensor gy = with_layout(randn(r0.y_shape, opt, &g4), c.l);
      const Ref r = ref_conv2d(x, w, b, c.p, gy);
      Backend& be = cpu::cpu_backend();
      Tensor y = zeros(r.y_shape, opt), yc = zeros(r.y_shape, opt);
      be.conv2d_bias(x, w, b, c.p, y);
      be.Backend::conv2d_bias(x, w, b, c.p, yc);  // the composite: conv2d, then the bias added
      Tensor dw = zeros(c.ws, opt), db = zeros({c.ws[0]}, opt);
      Tensor dwc = zeros(c.ws, opt), dbc = zeros({c.ws[0]}, opt);
      be.conv2d_backward_weight_bias(x, gy, c.p, dw, db);
      be.Backend::conv2d_backward_weight_bias(x, gy, c.p, dwc, dbc);
      const double tol = c.dt == DType::f64 ? 1e-12 : 2e-5;
      check_close(y, r.y_shape, r.y, tol, what + " fused forward");
      check_close(y, r.y_shape, values(yc), tol, what + " fused forward vs composite");
      check_close(dw, c.ws, r.dw, tol, what + " fused dw");
      check_close(dw, c.ws, values(dwc), tol, what + " fused dw vs composite");
      check_close(db, {c.ws[0]}, r.db, tol, what + " fused db");
      check_close(db, {c.ws[0]}, values(dbc), tol, what + " fused db vs composite");
    }
    // through autograd: a conv2d with bias backpropagates the fused pair (gradcheck in f64 above)
    Tensor x = randn_input({2, 4, 6, 6}, 7100, Layout::ChannelsLast, DType::f32);
    Tensor w = randn_input({4, 4, 3, 3}, 7101, Layout::Contiguous, DType::f32);
    Tensor b = randn_input({4}, 7102, Layout::Contiguous, DType::f32);
    for (Tensor* t : {&x, &w, &b}) t->set_requires_grad(true);
    const Tensor gy = randn_input({2, 4, 6, 6}, 7103, Layout::Contiguous, DType::f32);
    const Ref r = ref_conv2d(x, w, b, {1, 1, 1, 1, 1, 1, 1}, gy);
    check_against_ref(conv2d(x, w, b, {1, 1, 1, 1, 1, 1, 1}), gy, x, w, b, r, 2e-5,
                      "autograd conv2d with bias, channels-last");
  }

  TEST_CASE(
      "conv_transpose2d: every stride, padding, output_padding, dilation, groups and kernel") {
    const int64_t C = 4;
    uint64_t seed = 1000;
    int n = 0;
    for (int64_t s : {1, 2, 3})
      for (int64_t pad : {0, 1})
        for (int64_t opad : {0, 1})
          for (int64_t d : {1, 2})
            for (int64_t G : {int64_t(1), int64_t(2), C})
              for (int64_t k : {1, 2, 3, 4}) {
                if (!(opad < s || opad < d)) continue;
                // groups 1, 2: 6 output channels; depthwise: 1 or 2 per group
                const int64_t Cog = G == C ? k % 2 + 1 : 6 / G;
                run_conv_transpose2d_case({2, C, 3, 5}, {C, Cog, k, k}, s, pad, opad, G, d,
                                          n % 2 == 0, kLayouts[size_t(n % 3)], seed);
                seed += 4;
                ++n;
              }
    CHECK(n == 264);
    // non-square kernel, f32
    run_conv_transpose2d_case({2, 3, 4, 3}, {3, 2, 3, 2}, 2, 1, 1, 1, 1, true, Layout::Contiguous,
                              7, DType::f32);
    run_conv_transpose2d_case({2, 6, 9, 10}, {6, 1, 4, 4}, 2, 1, 0, 6, 1, true, Layout::Transposed,
                              8, DType::f32);
    // depthwise stride 2 to an odd width (output_padding 1), padding 1 and 2
    run_conv_transpose2d_case({2, 3, 4, 5}, {3, 1, 4, 4}, 2, 1, 1, 3, 1, true, Layout::Contiguous,
                              9);
    run_conv_transpose2d_case({2, 3, 4, 5}, {3, 1, 4, 4}, 2, 2, 1, 3, 1, false, Layout::Strided,
                              10);
  }

  TEST_CASE("conv2d and conv_transpose2d: gradcheck of x, w and bias") {
    struct C2 {
      Shape xs, ws;
      Conv2dParams p;
    };
    const std::vector<C2> cases = {
        {{1, 2, 4, 3}, {2, 2, 2, 2}, {2, 2, 1, 1, 1, 1, 1}},  // stride 2, padding 1
        {{1, 4, 3, 3}, {2, 2, 2, 2}, {1, 1, 1, 1, 2, 2, 2}},  // groups 2, dilation 2
        {{1, 2, 4, 4}, {2, 1, 4, 4}, {2, 2, 1, 1, 1, 1, 2}},  // depthwise 4×4 stride 2 (EDM down)
        {{2, 2, 3, 3}, {2, 2, 1, 2}, {1, 2, 0, 1, 1, 1, 1}},  // batch 2, non-square
    };
    uint64_t seed = 500;
    for (const C2& c : cases)
      for (Layout l : {Layout::Contiguous, Layout::Transposed}) {
        INFO(conv_name(c.xs, c.ws, c.p), " ", lname(l));
        Tensor x = grad_input(c.xs, seed++, l), w = grad_input(c.ws, seed++, l),
               b = grad_input({c.ws[0]}, seed++);
        const Conv2dParams p = c.p;
        CHECK_GRADCHECK(
            [p](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], p); },
            {x, w, b});
      }
    struct T2 {
      Shape xs, ws;
      int64_t s, pad, opad, G, d;
    };
    const std::vector<T2> tcases = {
        {{2, 2, 2, 3}, {2, 2, 2, 2}, 2, 1, 1, 1, 1},  // stride 2, output_padding 1
        {{1, 2, 3, 3}, {2, 1, 4, 4}, 2, 1, 0, 2, 1},  // depthwise 4×4 stride 2 (EDM up)
        {{1, 2, 3, 3}, {2, 2, 2, 2}, 1, 0, 1, 1, 2},  // output_padding ≥ stride (< dilation)
        {{1, 4, 2, 2}, {4, 1, 3, 2}, 3, 1, 2, 2, 1},  // groups 2, stride 3
    };
    for (const T2& c : tcases)
      for (Layout l : {Layout::Contiguous, Layout::Transposed}) {
        INFO("conv_transpose2d x ", shape_str(c.xs), " w ", shape_str(c.ws), " ", lname(l));
        Tensor x = grad_input(c.xs, seed++, l), w = grad_input(c.ws, seed++, l),
               b = grad_input({c.ws[1] * c.G}, seed++);
        CHECK_GRADCHECK(
            [c](const std::vector<Tensor>& in) {
              return conv_transpose2d(in[0], in[1], in[2], c.s, c.pad, c.opad, c.G, c.d);
            },
            {x, w, b});
      }
  }

  TEST_CASE("conv2d and conv_transpose2d: f16 and bf16 are f32 results rounded once") {
    struct Case {
      Shape xs, ws;
      Conv2dParams p;
      bool transpose;
    };
    const std::vector<Case> cases = {
        {{2, 8, 9, 9}, {8, 8, 3, 3}, {1, 1, 1, 1, 1, 1, 1}, false},  // 3×3 padding 1
        {{2, 8, 9, 9}, {4, 8, 1, 1}, {}, false},                     // 1×1
        {{2, 4, 8, 8}, {4, 1, 4, 4}, {2, 2, 1, 1, 1, 1, 4}, false},  // depthwise down
        {{2, 4, 6, 5}, {6, 2, 3, 3}, {2, 1, 1, 0, 1, 2, 2}, false},  // grouped, asymmetric
        {{2, 4, 5, 5}, {4, 1, 4, 4}, {2, 2, 1, 1, 1, 1, 4}, true},   // depthwise up
        {{2, 4, 5, 5}, {4, 3, 3, 3}, {2, 2, 1, 1, 1, 1, 1}, true},
    };
    uint64_t seed = 900;
    for (DType dt : {DType::f16, DType::bf16})
      for (const Case& c : cases) {
        const std::string what =
            conv_name(c.xs, c.ws, c.p) + (c.transpose ? " transposed " : " ") + dtype_name(dt);
        Tensor x16 = randn_input(c.xs, seed++, Layout::Transposed, dt);
        Tensor w16 = randn_input(c.ws, seed++, Layout::Contiguous, dt);
        Tensor b16 = randn_input({c.transpose ? c.ws[1] * c.p.groups : c.ws[0]}, seed++,
                                 Layout::Contiguous, dt);
        Tensor x32 = to(x16, DType::f32), w32 = to(w16, DType::f32), b32 = to(b16, DType::f32);
        for (Tensor* t : {&x16, &w16, &b16, &x32, &w32, &b32}) t->set_requires_grad(true);
        auto f = [&](const Tensor& x, const Tensor& w, const Tensor& b) {
          return c.transpose ? conv_transpose2d(x, w, b, c.p.stride_h, c.p.pad_h, 1, c.p.groups)
                             : conv2d(x, w, b, c.p);
        };
        {  // without bias: one rounding (a bias is added to the rounded product, a second one)
          NoGradGuard ng;
          check_rounded(f(x16, w16, Tensor()), f(x32, w32, Tensor()), what + " forward");
        }
        Tensor y16 = f(x16, w16, b16), y32 = f(x32, w32, b32);
        CHECK(y16.dtype() == dt);
        Tensor gy16 = randn_input(y16.shape(), seed++, Layout::Contiguous, dt);
        y16.backward(gy16);
        y32.backward(to(gy16, DType::f32));
        check_rounded(x16.grad(), x32.grad(), what + " dx");
        check_rounded(w16.grad(), w32.grad(), what + " dw");
        check_rounded(b16.grad(), b32.grad(), what + " db");
      }
  }

  TEST_CASE("conv2d and conv_transpose2d: outputs and gradients match PyTorch (f64)") {
    std::ifstream f(kGoldenPath);
    REQUIRE_MESSAGE(f.good(), "cannot open ", kGoldenPath);
    const json doc = json::parse(f);
    int n = 0;
    for (const json& c : doc.at("cases")) {
      const std::string name = c.at("name").get<std::string>(), op = c.at("op").get<std::string>();
      for (Layout l : {Layout::Contiguous, Layout::Transposed}) {
        const std::string what = name + " (" + lname(l) + ")";
        Tensor x = tensor_of(c.at("x"), l), w = tensor_of(c.at("w"), l);
        Tensor b = c.at("b").is_null() ? Tensor() : tensor_of(c.at("b"));
        x.set_requires_grad(true);
        w.set_requires_grad(true);
        if (b.defined()) b.set_requires_grad(true);
        Tensor y;
        if (op == "conv2d") {
          const Shape s = c.at("stride").get<Shape>(), pad = c.at("padding").get<Shape>(),
                      d = c.at("dilation").get<Shape>();
          y = conv2d(x, w, b,
                     {s[0], s[1], pad[0], pad[1], d[0], d[1], c.at("groups").get<int64_t>()});
        } else {
          REQUIRE(op == "conv_transpose2d");
          y = conv_transpose2d(x, w, b, c.at("stride").get<int64_t>(),
                               c.at("padding").get<int64_t>(),
                               c.at("output_padding").get<int64_t>(), c.at("groups").get<int64_t>(),
                               c.at("dilation").get<int64_t>());
        }
        check_golden(y, c.at("y"), what + " output");
        sum(mul(y, tensor_of(c.at("weights")))).backward();
        check_golden(x.grad(), c.at("dx"), what + " dx");
        check_golden(w.grad(), c.at("dw"), what + " dw");
        if (b.defined()) check_golden(b.grad(), c.at("db"), what + " db");
      }
      ++n;
    }
    CHECK(n >= 8);
  }

  TEST_CASE("conv2d and conv_transpose2d: the input gradient takes the forward input's format") {
    // A channels-last network whose output gradient arrives contiguous (its output is made
    // contiguous; a 1-channel image is both layouts) keeps channels-last gradients, and the other
    // way round; the values are the same either way.
    for (const Layout in : {Layout::ChannelsLast, Layout::Contiguous})
      for (const bool transpose : {false, true}) {
        INFO(lname(in), transpose ? " conv_transpose2d" : " conv2d");
        const Layout other = in == Layout::ChannelsLast ? Layout::Contiguous : Layout::ChannelsLast;
        const Tensor w = transpose ? randn_input({6, 4, 3, 3}, 3, Layout::Contiguous, DType::f32)
                                   : randn_input({4, 6, 3, 3}, 3, Layout::Contiguous, DType::f32);
        std::vector<std::vector<double>> grads;
        for (const Layout gl : {in, other}) {
          const Tensor leaf = randn_input({2, 6, 5, 5}, 4, in, DType::f32);
          Tensor xl = detach(leaf);
          xl.set_requires_grad(true);
          const Tensor h = mul(xl, 1.0);  // a non-leaf in the input's layout
          const Tensor y = transpose ? conv_transpose2d(h, w, {}, 2, 1) : conv2d(h, w, {}, {});
          Tensor gh;
          h.register_hook([&](const Tensor& g) {
            gh = g;
            return g;
          });
          y.backward(with_layout(randn_input(y.shape(), 5, Layout::Contiguous, DType::f32), gl));
          REQUIRE(gh.defined());
          CHECK(memory_format_of(gh) == memory_format_of(h));
          grads.push_back(values(gh));
        }
        CHECK(grads[0] == grads[1]);
      }
  }

  TEST_CASE("conv2d and conv_transpose2d: mixed dtypes promote, undefined bias, no-grad") {
    Tensor x = randn_input({2, 3, 5, 5}, 1, Layout::Contiguous, DType::f32);
    Tensor w = randn_input({4, 3, 3, 3}, 2);  // f64
    Tensor y = conv2d(x, w);
    CHECK(y.dtype() == DType::f64);
    const Ref r = ref_conv2d(to(x, DType::f64), w, Tensor(), {});
    check_close(y, r.y_shape, r.y, 1e-12, "promoted conv2d");
    Tensor yt = conv_transpose2d(x, w.transpose(0, 1).contiguous());
    CHECK(yt.dtype() == DType::f64);
    CHECK(yt.shape() == Shape{2, 4, 7, 7});
    Tensor xg = grad_input({1, 3, 5, 5}, 3);
    {
      NoGradGuard ng;
      CHECK_FALSE(conv2d(xg, w).requires_grad());
    }
    CHECK(conv2d(xg, w).requires_grad());
  }

  TEST_CASE("conv2d and conv_transpose2d: errors name the op and the shapes") {
    const Tensor x = randn_input({2, 4, 6, 6}, 1), w = randn_input({6, 4, 3, 3}, 2);
    auto throws_with = [](const std::function<void()>& f, const std::string& needle) {
      try {
        f();
      } catch (const Error& e) {
        const std::string m = e.what();
        CHECK_MESSAGE(m.find(needle) != std::string::npos, "message '", m, "' lacks '", needle,
                      "'");
        return;
      }
      FAIL("no error thrown (expected '", needle, "')");
    };
    throws_with([&] { conv2d(randn_input({4, 6, 6}, 3), w); }, "conv2d: x must be [N, C, H, W]");
    throws_with([&] { conv2d(x, randn_input({6, 4, 3}, 3)); }, "conv2d: w must be");
    throws_with([&] { conv2d(x, randn_input({6, 3, 3, 3}, 3)); }, "[2, 4, 6, 6]");
    throws_with([&] { conv2d(x, randn_input({6, 1, 3, 3}, 3), {}, {.groups = 3}); }, "groups 3");
    throws_with([&] { conv2d(x, randn_input({3, 2, 3, 3}, 3), {}, {.groups = 2}); }, "conv2d");
    throws_with([&] { conv2d(x, w, randn_input({4}, 3)); }, "conv2d: bias must be [6]");
    throws_with([&] { conv2d(x, randn_input({6, 4, 7, 7}, 3)); }, "is too small");
    throws_with([&] { conv2d(x, w, {}, {.dil_h = 3, .dil_w = 3}); }, "is too small");
    throws_with([&] { conv2d(x, w, {}, {.stride_h = 0}); }, "conv2d: stride");
    throws_with([&] { conv2d(x, w, {}, {.pad_w = -1}); }, "padding");
    throws_with([&] { conv2d(x, w, {}, {.groups = 0}); }, "groups 0");
    throws_with([&] { conv2d(to(x, DType::i64), w); }, "conv2d: floating operands required");
    const Tensor wt = randn_input({4, 3, 3, 3}, 4);  // [C, Co/groups, kh, kw]
    throws_with(
        [&] {
          conv_transpose2d(x, randn_input({6, 3, 3, 3}, 3));
        },
        "and w [6, 3, 3, 3] do not match");
    throws_with([&] { conv_transpose2d(x, wt, {}, 2, 0, 2); }, "output_padding 2");
    throws_with([&] { conv_transpose2d(x, wt, {}, 1, 0, 1, 1, 1); }, "output_padding 1");
    throws_with([&] { conv_transpose2d(x, wt, {}, 1, 0, 0, 3); }, "groups 3");
    throws_with([&] { conv_transpose2d(x, wt, randn_input({4}, 3)); }, "bias must be [3]");
    throws_with(
        [&] {
          conv_transpose2d(randn_input({1, 4, 1, 1}, 3), randn_input({4, 1, 1, 1}, 5), {}, 1, 1);
        },
        "is not positive");
    throws_with([&] { conv_transpose2d(x, to(wt, DType::i32)); }, "floating operands required");
    // the kernel itself refuses an output of the wrong shape
    Tensor bad = empty({2, 6, 5, 5}, {.dtype = DType::f64});
    throws_with([&] { backend_of(x).conv2d(x, w, {}, bad); },
                "conv2d: out [2, 6, 5, 5] is not the output");
  }
}
