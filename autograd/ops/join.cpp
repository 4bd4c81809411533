// Joining and splitting: cat, stack, split, chunk, and pad (constant, reflect, replicate).
// cat copies each input into a slice of the output and hands each its slice of the gradient;
// split and chunk are narrow views; reflect/replicate padding is an index_select per padded dim.
#include "autograd/ops/common.h"

namespace cm {
using namespace opdetail;

Tensor cat(const std::vector<Tensor>& xs0, int64_t dim) {
  CM_CHECK(!xs0.empty(), "cat: no tensors given");
  const Tensor& first = xs0[0];
  dim = wrap_dim(dim, first.dim(), "cat");
  DType t = first.dtype();
  for (const Tensor& x : xs0) t = promote_types(t, x.dtype());
  std::vector<Tensor> xs;
  Shape out_shape = first.shape();
  out_shape[size_t(dim)] = 0;
  for (size_t i = 0; i < xs0.size(); ++i) {
    const Tensor& x = xs0[i];
    CM_CHECK(x.dim() == first.dim(), "cat: tensor ", i, " has rank ", x.dim(),
             ", tensor 0 has rank ", first.dim());
    CM_CHECK(x.device() == first.device(), "cat: tensor ", i, " is on ", x.device().str(),
             ", tensor 0 on ", first.device().str());
    for (int64_t d = 0; d < x.dim(); ++d)
      CM_CHECK(d == dim || x.shape()[size_t(d)] == first.shape()[size_t(d)], "cat: tensor ", i,
               " has shape ", shape_str(x.shape()), ", incompatible with ",
               shape_str(first.shape()), " along dim ", d);
    out_shape[size_t(dim)] += x.shape()[size_t(dim)];
    xs.push_back(to(x, t));
  }
  // Channels-last when the first input is (a U-Net's skip connections keep the network's format).
  const MemoryFormat format =
      out_shape.size() == 4 ? memory_format_of(first) : MemoryFormat::Contiguous;
  Tensor y = empty(out_shape, {.dtype = t, .device = first.device()}, format);
  std::vector<int64_t> starts;
  int64_t at = 0;
  for (const Tensor& x : xs) {
    starts.push_back(at);
    const int64_t n = x.shape()[size_t(dim)];
    backend_of(y).copy(x, narrow(y, dim, at, n));
    at += n;
  }
  if (needs_grad(xs)) {
    std::vector<int64_t> lens;
    for (const Tensor& x : xs) lens.push_back(x.shape()[size_t(dim)]);
    record("cat", xs, {y}, [=](const Grads& g) {
      Grads out;
      for (size_t i = 0; i < lens.size(); ++i) out.push_back(narrow(g[0], dim, starts[i], lens[i]));
      return out;
    });
  }
  return y;
}

Tensor stack(const std::vector<Tensor>& xs, int64_t dim) {
  CM_CHECK(!xs.empty(), "stack: no tensors given");
  dim = wrap_dim(dim, xs[0].dim() + 1, "stack");
  std::vector<Tensor> us;
  for (size_t i = 0; i < xs.size(); ++i) {
    CM_CHECK(xs[i].shape() == xs[0].shape(), "stack: tensor ", i, " has shape ",
             shape_str(xs[i].shape()), ", tensor 0 has ", shape_str(xs[0].shape()));
    us.push_back(unsqueeze(xs[i], dim));
  }
  return cat(us, dim);
}

std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim) {
  dim = wrap_dim(dim, x.dim(), "split");
  CM_CHECK(split_size > 0, "split: split_size must be positive, got ", split_size);
  std::vector<Tensor> out;
  const int64_t n = x.shape()[size_t(dim)];
  for (int64_t s = 0; s < n; s += split_size)
    out.push_back(narrow(x, dim, s, std::min(split_size, n - s)));
  if (n == 0) out.push_back(x);
  return out;
}

std::vector<Tensor> split(const Tensor& x, const Shape& sizes, int64_t dim) {
  dim = wrap_dim(dim, x.dim(), "split");
  int64_t total = 0;
  for (int64_t s : sizes) {
    CM_CHECK(s >= 0, "split: negative size in ", shape_str(sizes));
    total += s;
  }
  CM_CHECK(total == x.shape()[size_t(dim)], "split: sizes ", shape_str(sizes), " sum to ", total,
           ", dim ", dim, " has size ", x.shape()[size_t(dim)]);
  std::vector<Tensor> out;
  int64_t at = 0;
  for (int64_t s : sizes) {
    out.push_back(narrow(x, dim, at, s));
    at += s;
  }
  return out;
}

std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim) {
  CM_CHECK(chunks > 0, "chunk: chunks must be positive, got ", chunks);
  dim = wrap_dim(dim, x.dim(), "chunk");
  const int64_t n = x.shape()[size_t(dim)];
  return split(x, std::max<int64_t>((n + chunks - 1) / chunks, 1), dim);
}

namespace {

// Constant padding: the kept part of x goes into a filled output; the gradient is the matching
// part of g, placed back into zeros of x's shape (the cropped part gets zero).
Tensor pad_constant(const Tensor& x, const Shape& pads, double value) {
  const int64_t np = int64_t(pads.size()) / 2;
  Shape out_shape = x.shape();
  // per padded dim: source range in x and destination start in the output
  struct Range {
    int64_t dim, src_start, len, dst_start;
  };
  std::vector<Range> ranges;
  for (int64_t k = 0; k < np; ++k) {
    const int64_t d = x.dim() - 1 - k;
    const int64_t l = pads[size_t(2 * k)], r = pads[size_t(2 * k + 1)], n = x.shape()[size_t(d)];
    const int64_t out_n = n + l + r;
    CM_CHECK(out_n >= 0, "pad: pads ", shape_str(pads), " give a negative size for dim ", d,
             " of shape ", shape_str(x.shape()));
    out_shape[size_t(d)] = out_n;
    const int64_t src_start = std::max<int64_t>(0, -l);
    const int64_t len = std::max<int64_t>(0, n - src_start - std::max<int64_t>(0, -r));
    ranges.push_back({d, src_start, len, std::max<int64_t>(0, l)});
  }
  auto crop = [ranges](Tensor t, bool src) {  // by value: the backward keeps a copy
    for (const Range& rg : ranges) t = narrow(t, rg.dim, src ? rg.src_start : rg.dst_start, rg.len);
    return t;
  };
  Tensor y = full(out_shape, value, {.dtype = x.dtype(), .device = x.device()});
  backend_of(y).copy(crop(detach(x), true), crop(y, false));
  if (needs_grad({x})) {
    const Shape xs = x.shape();
    record("pad", {x}, {y}, [=](const Grads& g) {
      Tensor gx = zeros(xs, {.dtype = g[0].dtype(), .device = g[0].device()});
      backend_of(gx).copy(crop(g[0], false), crop(gx, true));
      return Grads{gx};
    });
  }
  return y;
}

}  // namespace

Tensor pad(const Tensor& x, const Shape& pads, PadMode mode, double value) {
  CM_CHECK(pads.size() % 2 == 0 && int64_t(pads.size()) / 2 <= x.dim(), "pad: ", pads.size(),
           " pad values for a tensor of rank ", x.dim(),
           " (need an even number, two per dim from the last)");
  if (mode == PadMode::Constant) return pad_constant(x, pads, value);
  Tensor y = x;
  for (size_t k = 0; k < pads.size() / 2; ++k) {
    const int64_t d = x.dim() - 1 - int64_t(k);
    const int64_t l = pads[2 * k], r = pads[2 * k + 1], n = x.shape()[size_t(d)];
    CM_CHECK(l >= 0 && r >= 0, "pad: reflect/replicate padding must be non-negative, got ",
             shape_str(pads));
    if (mode == PadMode::Reflect)
      CM_CHECK(l < n && r < n, "pad: reflect padding (", l, ", ", r, ") must be smaller than dim ",
               d, " of size ", n);
    else
      CM_CHECK(n > 0, "pad: cannot replicate-pad the empty dim ", d);
    std::vector<int64_t> idx;
    for (int64_t i = -l; i < n + r; ++i) {
      int64_t j = i;
      if (mode == PadMode::Reflect) {
        if (j < 0) j = -j;
        if (j >= n) j = 2 * (n - 1) - j;
      } else {
        j = std::clamp<int64_t>(j, 0, n - 1);
      }
      idx.push_back(j);
    }
    y = index_select(
        y, d, from_vector(idx, {int64_t(idx.size())}, {.dtype = DType::i64, .device = x.device()}));
  }
  return y;
}

}  // namespace cm
