// Neural-network functions composed from differentiable primitives (matmul, index_select, views,
// elementwise ops, softmax), so each gets its gradient from theirs: no backward is written here.
// Each follows the PyTorch function of the same name; shapes are in the comments.
#include <algorithm>
#include <cmath>
#include <limits>

#include "autograd/ops/common.h"

namespace cm {
using namespace opdetail;

namespace {
void check_floating(const Tensor& t, const char* op, const char* what) {
  CM_CHECK(is_floating(t.dtype()), op, ": ", what, " must be floating, got ",
           dtype_name(t.dtype()));
}
void check_nchw(const Tensor& x, const char* op) {
  CM_CHECK(x.dim() == 4, op, ": x must be [N, C, H, W], got shape ", shape_str(x.shape()));
  check_floating(x, op, "x");
}
}  // namespace

// x [..., in] · w[out, in]ᵀ + b[out] -> [..., out]. The leading dims are flattened so that the
// product is one [rows, in] · [in, out] matrix product.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  CM_CHECK(w.dim() == 2, "linear: weight must be [out, in], got shape ", shape_str(w.shape()));
  CM_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1), "linear: x of shape ", shape_str(x.shape()),
           " does not end in the weight's in-features (weight shape ", shape_str(w.shape()), ")");
  CM_CHECK(!b.defined() || b.shape() == Shape{w.size(0)}, "linear: bias must have shape [",
           w.size(0), "], got ", shape_str(b.defined() ? b.shape() : Shape{}));
  common_device({x, w, b}, "linear");
  Shape out_shape = x.shape();
  out_shape.back() = w.size(0);
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
  Tensor y = matmul(reshape(x, {rows, x.size(-1)}), transpose(w, 0, 1));
  if (b.defined()) y = add(y, b);
  return reshape(y, out_shape);
}

// weight [V, D], indices (i64 or i32, any shape) -> [*indices.shape, D]: rows of weight picked by
// index_select (whose backward scatters the gradient rows back with index_add).
Tensor embedding(const Tensor& weight, const Tensor& indices) {
  CM_CHECK(weight.dim() == 2, "embedding: weight must be [V, D], got shape ",
           shape_str(weight.shape()));
  CM_CHECK(indices.dtype() == DType::i64 || indices.dtype() == DType::i32,
           "embedding: indices must be i64 or i32, got ", dtype_name(indices.dtype()));
  common_device({weight, indices}, "embedding");
  const int64_t V = weight.size(0);
  if (indices.numel() > 0) {
    const int64_t lo = amin(indices).item<int64_t>(), hi = amax(indices).item<int64_t>();
    CM_CHECK(lo >= 0 && hi < V, "embedding: index ", (lo < 0 ? lo : hi),
             " is out of range for a table of ", V, " rows");
  }
  Shape out_shape = indices.shape();
  out_shape.push_back(weight.size(1));
  return reshape(index_select(weight, 0, reshape(indices, {indices.numel()})), out_shape);
}

// out = x·m with m = Bernoulli(1 − p)/(1 − p) drawn from gen in x's dtype, device and memory
// format (memory order), so x, m and out are walked densely in one order; m is kept for the
// backward (dx = dy·m). One backend pass (Backend::dropout) where the draw starts on a Philox
// block, else the same values from bernoulli() and two products. p == 1 zeroes everything (no
// draw). With activation recomputation on (autograd/node.h), a one-pass draw keeps no mask: the
// backward draws it again (the same Philox blocks), and where x can be computed again so can
// the output.
Tensor dropout(const Tensor& x, double p, bool training, Generator& gen, Tensor* mask_out) {
  CM_CHECK(p >= 0 && p <= 1, "dropout: probability must be in [0, 1], got ", p);
  check_floating(x, "dropout", "x");
  if (mask_out) *mask_out = Tensor();
  if (!training || p == 0) return x;
  const TensorOptions opt{.dtype = x.dtype(), .device = x.device()};
  const MemoryFormat format = memory_format_of(x);
  if (p == 1) {
    if (mask_out) {
      *mask_out = empty(x.shape(), opt, format);
      backend_of(x).fill(*mask_out, 0.0);
    }
    return mul(x, 0.0);
  }
  const double keep = 1 - p, scale = 1.0 / (1 - p);
  const std::optional<uint64_t> first = reserve_draw(gen, x.shape(), x.dtype());
  if (!first) {
    Tensor mask = bernoulli(x.shape(), keep, opt, &gen, format);
    mul_(mask, scale);  // in place: the fresh mask becomes the scaled one, no third tensor
    if (mask_out) *mask_out = mask;
    return mul(x, mask);
  }
  const bool dense = is_channels_last(x) || x.is_contiguous();
  const Tensor xd = dense ? x : contiguous(x);
  const bool grad = needs_grad({x});
  // With activation recomputation on, the backward draws the mask again instead of keeping it.
  const bool redraw = grad && !mask_out && is_recompute_enabled();
  const uint64_t seed = gen.seed(), block = *first;
  const Tensor out = empty(x.shape(), opt, format);
  const Tensor mask = (grad && !redraw) || mask_out ? empty(x.shape(), opt, format) : Tensor();
  backend_of(x).dropout(detach(xd), keep, scale, seed, block, out, mask);
  if (grad && !redraw) {
    const SavedTensor sm(mask, "dropout");
    record("dropout", {x}, {out}, [sm](const Grads& g) { return Grads{mul(g[0], sm.get())}; });
  } else if (grad) {
    // t·m with this call's mask m drawn again (t dense in the draw's memory order): the fused
    // kernel gives the Mul of t and the mask, the bits of the product with a kept mask.
    const Shape shape = x.shape();
    const auto times_mask = [=](const Tensor& t) {
      const Tensor o = empty(shape, {.dtype = t.dtype(), .device = t.device()}, format);
      backend_of(t).dropout(t, keep, scale, seed, block, o, Tensor());
      return o;
    };
    record("dropout", {x}, {out}, [=](const Grads& g) {
      return Grads{times_mask(to_memory_format(g[0], format))};  // dx = dy·m
    });
    // and out, when x itself is computed again, is too
    if (const std::shared_ptr<const Recompute> rx = dense ? recompute_of(x) : nullptr)
      set_recompute(out, [=] { return times_mask(rx->fn()); });
  }
  if (mask_out) *mask_out = mask;
  return out;
}

Tensor dropout_replay(const Tensor& x, const Tensor& mask, Generator& gen) {
  check_floating(x, "dropout_replay", "x");
  if (!mask.defined()) return x;
  CM_CHECK(mask.shape() == x.shape() && mask.dtype() == x.dtype() && mask.device() == x.device(),
           "dropout_replay: the recorded mask (", shape_str(mask.shape()), " ",
           dtype_name(mask.dtype()), ") does not fit x (", shape_str(x.shape()), " ",
           dtype_name(x.dtype()), ")");
  if (!reserve_draw(gen, x.shape(), x.dtype()))  // a shard inside a block: the whole draw's blocks
    gen.reserve(x.numel() * gen.shard_count(), x.dtype());
  return mul(x, mask);
}

// x [N, C, H, W] -> [N, C, H·s, W·s]: x viewed as [N, C, H, 1, W, 1], expanded to
// [N, C, H, s, W, s] and flattened (the expand's backward sums each s×s block).
Tensor upsample_nearest2d(const Tensor& x, int64_t scale) {
  check_nchw(x, "upsample_nearest2d");
  CM_CHECK(scale >= 1, "upsample_nearest2d: scale must be a positive integer, got ", scale);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  if (scale == 1) return x;
  const Tensor e = expand(unsqueeze(unsqueeze(x, 3), 5), {N, C, H, scale, W, scale});
  return reshape(e, {N, C, H * scale, W * scale});
}

namespace {
// The two source indices and weights of each output position along one dim, computed as
// PyTorch's upsample_bilinear2d (area_pixel_compute_scale / area_pixel_compute_source_index):
//   align_corners: src = d·(in − 1)/(out − 1)   (0 when out == 1)
//   otherwise:     src = max((d + 0.5)·in/out − 0.5, 0)
//   i0 = ⌊src⌋, i1 = i0 + (i0 < in − 1), λ1 = src − i0, λ0 = 1 − λ1.
struct Interp {
  Tensor i0, i1;  // i64 [out]
  Tensor l0, l1;  // x's dtype [out]
};
Interp bilinear_taps(int64_t in, int64_t out, bool align_corners, DType dtype, Device device) {
  std::vector<int64_t> i0(static_cast<size_t>(out)), i1(static_cast<size_t>(out));
  std::vector<double> l0(static_cast<size_t>(out)), l1(static_cast<size_t>(out));
  const double scale =
      align_corners ? (out > 1 ? double(in - 1) / double(out - 1) : 0.0) : double(in) / double(out);
  for (int64_t d = 0; d < out; ++d) {
    if (in == out) {  // PyTorch's identity case
      i0[size_t(d)] = i1[size_t(d)] = d;
      l0[size_t(d)] = 1;
      l1[size_t(d)] = 0;
      continue;
    }
    double src = align_corners ? scale * double(d) : scale * (double(d) + 0.5) - 0.5;
    if (src < 0) src = 0;
    const int64_t k = int64_t(src);
    i0[size_t(d)] = k;
    i1[size_t(d)] = k + (k < in - 1 ? 1 : 0);
    l1[size_t(d)] = src - double(k);
    l0[size_t(d)] = 1.0 - l1[size_t(d)];
  }
  const TensorOptions iopt{.dtype = DType::i64, .device = device};
  const TensorOptions fopt{.dtype = dtype, .device = device};
  return {from_vector(i0, {out}, iopt), from_vector(i1, {out}, iopt), from_vector(l0, {out}, fopt),
          from_vector(l1, {out}, fopt)};
}
}  // namespace

// x [N, C, H, W] -> [N, C, out_h, out_w]: interpolation along W (two index_selects weighted by
// λ0, λ1), then along H on the result, which is PyTorch's
//   h0λ·(w0λ·x[h0, w0] + w1λ·x[h0, w1]) + h1λ·(w0λ·x[h1, w0] + w1λ·x[h1, w1]).
Tensor upsample_bilinear2d(const Tensor& x, int64_t out_h, int64_t out_w, bool align_corners) {
  check_nchw(x, "upsample_bilinear2d");
  CM_CHECK(out_h > 0 && out_w > 0, "upsample_bilinear2d: output size must be positive, got ", out_h,
           "x", out_w);
  CM_CHECK(x.size(2) > 0 && x.size(3) > 0, "upsample_bilinear2d: empty spatial dims in shape ",
           shape_str(x.shape()));
  const Interp tw = bilinear_taps(x.size(3), out_w, align_corners, x.dtype(), x.device());
  const Interp th = bilinear_taps(x.size(2), out_h, align_corners, x.dtype(), x.device());
  const Tensor t =
      add(mul(index_select(x, 3, tw.i0), tw.l0), mul(index_select(x, 3, tw.i1), tw.l1));
  const Tensor l0h = reshape(th.l0, {out_h, 1}), l1h = reshape(th.l1, {out_h, 1});
  return add(mul(index_select(t, 2, th.i0), l0h), mul(index_select(t, 2, th.i1), l1h));
}

namespace {
// The windows of a 2-D pooling: x padded with `pad_value` and the kernel² strided views
// xp[:, :, i::stride, j::stride] of the output's size, in row-major window order (the order in
// which PyTorch visits a window). Checks the geometry; errors name `op`.
struct PoolWindows {
  std::vector<Tensor> views;  // kernel² views [N, C, Ho, Wo]
  int64_t Ho = 0, Wo = 0;
};
PoolWindows pool_windows(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding,
                         double pad_value, const char* op) {
  check_nchw(x, op);
  CM_CHECK(kernel > 0 && stride > 0, op, ": kernel and stride must be positive, got kernel ",
           kernel, ", stride ", stride);
  CM_CHECK(padding >= 0 && 2 * padding <= kernel, op, ": padding ", padding,
           " must be in [0, kernel/2] for kernel ", kernel);
  const int64_t Hp = x.size(2) + 2 * padding, Wp = x.size(3) + 2 * padding;
  CM_CHECK(Hp >= kernel && Wp >= kernel, op, ": kernel ", kernel,
           " is larger than the padded input (shape ", shape_str(x.shape()), ", padding ", padding,
           ")");
  PoolWindows w;
  w.Ho = (Hp - kernel) / stride + 1;
  w.Wo = (Wp - kernel) / stride + 1;
  const Tensor xp =
      padding > 0 ? pad(x, {padding, padding, padding, padding}, PadMode::Constant, pad_value) : x;
  for (int64_t i = 0; i < kernel; ++i) {
    const Tensor rows = slice(xp, 2, i, i + stride * (w.Ho - 1) + 1, stride);
    for (int64_t j = 0; j < kernel; ++j)
      w.views.push_back(slice(rows, 3, j, j + stride * (w.Wo - 1) + 1, stride));
  }
  return w;
}

// The number of input elements (not padding) under each window along one dim: window o covers
// input positions [o·stride − padding, o·stride − padding + kernel) ∩ [0, in).
std::vector<double> window_counts(int64_t in, int64_t out, int64_t kernel, int64_t stride,
                                  int64_t padding) {
  std::vector<double> c(static_cast<size_t>(out));
  for (int64_t o = 0; o < out; ++o) {
    const int64_t lo = o * stride - padding;
    c[size_t(o)] = double(std::min(lo + kernel, in) - std::max<int64_t>(lo, 0));
  }
  return c;
}
}  // namespace

// x [N, C, H, W] -> [N, C, Ho, Wo], Ho = (H + 2·padding − kernel)/stride + 1: the sum of the
// kernel² strided views of the zero-padded x (added row by row, as PyTorch sums a window) divided
// by kernel² (padding counted; with floor-mode sizes no window reaches past the padding), or by
// the per-window count of input elements, count_h[o_h]·count_w[o_w] (padding not counted).
Tensor avg_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding,
                  bool count_include_pad) {
  if (stride == 0) stride = kernel;
  const PoolWindows w = pool_windows(x, kernel, stride, padding, 0.0, "avg_pool2d");
  Tensor acc;
  for (const Tensor& v : w.views) acc = acc.defined() ? add(acc, v) : v;
  if (count_include_pad || padding == 0) return div(acc, double(kernel * kernel));
  const std::vector<double> ch = window_counts(x.size(2), w.Ho, kernel, stride, padding);
  const std::vector<double> cw = window_counts(x.size(3), w.Wo, kernel, stride, padding);
  std::vector<double> counts(static_cast<size_t>(w.Ho * w.Wo));
  for (int64_t i = 0; i < w.Ho; ++i)
    for (int64_t j = 0; j < w.Wo; ++j) counts[size_t(i * w.Wo + j)] = ch[size_t(i)] * cw[size_t(j)];
  return div(acc, from_vector(counts, {w.Ho, w.Wo}, {.dtype = x.dtype(), .device = x.device()}));
}

// x [N, C, H, W] -> [N, C, Ho, Wo] (sizes as avg_pool2d): the maximum over the kernel² strided
// views of the −∞-padded x. Without a gradient to record, a running maximum (memory of two
// outputs); with one, amax over the views stacked on a last dim, whose backward sends the
// gradient to the window's maximum (shared evenly between ties).
Tensor max_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding) {
  if (stride == 0) stride = kernel;
  const PoolWindows w = pool_windows(x, kernel, stride, padding,
                                     -std::numeric_limits<double>::infinity(), "max_pool2d");
  if (needs_grad({x})) return amax(stack(w.views, -1), {-1});
  Tensor acc = w.views[0];
  for (size_t i = 1; i < w.views.size(); ++i) acc = maximum(acc, w.views[i]);
  return w.views.size() == 1 ? clone(acc) : acc;  // a 1×1 kernel: a copy, never an alias of x
}

}  // namespace cm
