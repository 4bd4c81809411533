// Views and copies: reshape/view, permute/transpose, narrow/slice/select, expand, squeeze,
// unsqueeze, flatten, contiguous/clone, detach, dtype and device conversion. Views alias the
// input's storage; each backward maps the gradient back to the input's shape.
#include <algorithm>
#include <numeric>
#include <optional>

#include "autograd/ops/common.h"

namespace cm {
namespace opdetail {

Tensor expand_raw(const Tensor& t, const Shape& shape, const char* op) {
  if (t.shape() == shape) return t;
  CM_CHECK(shape.size() >= t.shape().size(), op, ": cannot broadcast shape ", shape_str(t.shape()),
           " to ", shape_str(shape));
  const size_t lead = shape.size() - t.shape().size();
  Shape st(shape.size(), 0);
  for (size_t i = 0; i < t.shape().size(); ++i) {
    const int64_t have = t.shape()[i], want = shape[lead + i];
    CM_CHECK(have == want || have == 1, op, ": cannot broadcast shape ", shape_str(t.shape()),
             " to ", shape_str(shape));
    st[lead + i] = have == want ? t.strides()[i] : 0;
  }
  return t.alias_with(shape, st, t.offset());
}

namespace {
// True when t's strides order its dims as channels-last does (N, H, W, C from slowest to fastest,
// size-1 dims ignored) and not as contiguous does, dense or not: a channel slice of a channels-last
// tensor (the gradient a cat hands each input) is one.
bool channels_last_ordered(const Tensor& t) {
  if (t.dim() != 4) return false;
  const auto in_order = [&](std::initializer_list<int> order) {
    int64_t prev = -1;  // the stride of the previous (slower) dim of size > 1
    for (int d : order) {
      if (t.size(d) == 1) continue;
      if (t.stride(d) <= 0 || (prev >= 0 && t.stride(d) >= prev)) return false;
      prev = t.stride(d);
    }
    return true;
  };
  return in_order({0, 2, 3, 1}) && !in_order({0, 1, 2, 3});
}
}  // namespace

MemoryFormat output_format(const Shape& shape, std::initializer_list<Tensor> inputs) {
  if (shape.size() != 4) return MemoryFormat::Contiguous;
  for (const Tensor& t : inputs)
    if (t.defined() && t.shape() == shape &&
        (memory_format_of(t) == MemoryFormat::ChannelsLast || channels_last_ordered(t)))
      return MemoryFormat::ChannelsLast;
  return MemoryFormat::Contiguous;
}

Device common_device(std::initializer_list<Tensor> ts, const char* op) {
  std::optional<Device> d;
  for (const Tensor& t : ts) {
    if (!t.defined()) continue;
    if (!d) d = t.device();
    CM_CHECK(*d == t.device(), op, ": tensors on different devices (", d->str(), " and ",
             t.device().str(), ")");
  }
  return d.value_or(Device::cpu());
}

std::vector<int64_t> reduce_dims(const Tensor& x, const Shape& dims, const char* op) {
  std::vector<int64_t> out;
  if (dims.empty()) {
    out.resize(size_t(x.dim()));
    std::iota(out.begin(), out.end(), 0);
    return out;
  }
  for (int64_t d : dims) out.push_back(wrap_dim(d, x.dim(), op));
  std::sort(out.begin(), out.end());
  CM_CHECK(std::adjacent_find(out.begin(), out.end()) == out.end(), op, ": dim repeated in ",
           shape_str(dims));
  if (x.dim() == 0) out.clear();  // dim 0 / -1 of a 0-d tensor names the scalar: nothing to reduce
  return out;
}

Shape keepdim_shape(const Shape& s, const std::vector<int64_t>& dims) {
  Shape k = s;
  for (int64_t d : dims) k[size_t(d)] = 1;
  return k;
}

Shape dropdim_shape(const Shape& s, const std::vector<int64_t>& dims) {
  Shape k;
  for (size_t i = 0; i < s.size(); ++i)
    if (std::find(dims.begin(), dims.end(), int64_t(i)) == dims.end()) k.push_back(s[i]);
  return k;
}

}  // namespace opdetail

using namespace opdetail;

namespace {

// Resolves one -1 in a requested shape against numel.
Shape infer_shape(const Shape& req, int64_t numel, const char* op) {
  Shape s = req;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      CM_CHECK(infer < 0, op, ": only one dim may be -1 in ", shape_str(req));
      infer = int64_t(i);
    } else {
      CM_CHECK(s[i] >= 0, op, ": invalid size ", s[i], " in ", shape_str(req));
      known *= s[i];
    }
  }
  if (infer >= 0) {
    CM_CHECK(known != 0 && numel % known == 0, op, ": shape ", shape_str(req), " is invalid for ",
             numel, " elements");
    s[size_t(infer)] = numel / known;
  }
  CM_CHECK(shape_numel(s) == numel, op, ": shape ", shape_str(req), " is invalid for ", numel,
           " elements");
  return s;
}

// Strides that let `shape` view the data of (old_shape, old_strides) without a copy, if any.
// Walks the old dims from the innermost, grouping runs that are contiguous with each other; every
// new dim must fall inside one such run.
std::optional<Shape> view_strides(const Shape& old_shape, const Shape& old_strides,
                                  const Shape& shape) {
  if (shape_numel(shape) == 0 || old_shape.empty()) return contiguous_strides(shape);
  Shape st(shape.size(), 1);
  int64_t vd = int64_t(shape.size()) - 1;
  int64_t base = old_strides.back(), run = 1, vrun = 1;
  for (int64_t d = int64_t(old_shape.size()) - 1; d >= 0; --d) {
    run *= old_shape[size_t(d)];
    const bool run_ends =
        d == 0 || (old_shape[size_t(d - 1)] != 1 && old_strides[size_t(d - 1)] != run * base);
    if (!run_ends) continue;
    while (vd >= 0 && (vrun < run || shape[size_t(vd)] == 1)) {
      st[size_t(vd)] = vrun * base;
      vrun *= shape[size_t(vd)];
      --vd;
    }
    if (vrun != run) return std::nullopt;
    if (d > 0) {
      base = old_strides[size_t(d - 1)];
      run = 1;
      vrun = 1;
    }
  }
  if (vd != -1) return std::nullopt;
  return st;
}

// Records a view op whose backward maps g (of the view's shape) to the input's shape.
Tensor record_view(const char* name, const Tensor& x, Tensor y,
                   std::function<Tensor(const Tensor&)> back) {
  if (needs_grad({x})) record(name, {x}, {y}, [back](const Grads& g) { return Grads{back(g[0])}; });
  return y;
}

}  // namespace

Tensor view(const Tensor& x, const Shape& shape) {
  const Shape s = infer_shape(shape, x.numel(), "view");
  std::optional<Shape> st = view_strides(x.shape(), x.strides(), s);
  CM_CHECK(st.has_value(), "view: shape ", shape_str(s), " is not compatible with the strides ",
           shape_str(x.strides()), " of a tensor of shape ", shape_str(x.shape()),
           " (use reshape, which copies)");
  const Shape xs = x.shape();
  return record_view("view", x, x.alias_with(s, *st, x.offset()),
                     [xs](const Tensor& g) { return reshape(g, xs); });
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  const Shape s = infer_shape(shape, x.numel(), "reshape");
  if (view_strides(x.shape(), x.strides(), s)) return view(x, s);
  return view(contiguous(x), s);
}

Tensor permute(const Tensor& x, const Shape& dims) {
  CM_CHECK(int64_t(dims.size()) == x.dim(), "permute: ", dims.size(),
           " dims given for a tensor of rank ", x.dim());
  Shape perm(dims.size()), s(dims.size()), st(dims.size()), inv(dims.size());
  std::vector<bool> used(dims.size(), false);
  for (size_t i = 0; i < dims.size(); ++i) {
    const int64_t d = wrap_dim(dims[i], x.dim(), "permute");
    CM_CHECK(!used[size_t(d)], "permute: dim ", d, " repeated in ", shape_str(dims));
    used[size_t(d)] = true;
    perm[i] = d;
    s[i] = x.shape()[size_t(d)];
    st[i] = x.strides()[size_t(d)];
    inv[size_t(d)] = int64_t(i);
  }
  return record_view("permute", x, x.alias_with(s, st, x.offset()),
                     [inv](const Tensor& g) { return permute(g, inv); });
}

Tensor transpose(const Tensor& x, int64_t a, int64_t b) {
  Shape p(size_t(x.dim()));
  std::iota(p.begin(), p.end(), 0);
  if (x.dim() == 0) return x;
  std::swap(p[size_t(wrap_dim(a, x.dim(), "transpose"))],
            p[size_t(wrap_dim(b, x.dim(), "transpose"))]);
  return permute(x, p);
}

Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step) {
  dim = wrap_dim(dim, x.dim(), "slice");
  CM_CHECK(step > 0, "slice: step must be positive, got ", step);
  const int64_t n = x.shape()[size_t(dim)];
  auto clampi = [n](int64_t v) { return std::clamp(v < 0 ? v + n : v, int64_t(0), n); };
  start = clampi(start);
  end = std::max(clampi(end), start);
  Shape s = x.shape(), st = x.strides();
  s[size_t(dim)] = (end - start + step - 1) / step;
  st[size_t(dim)] *= step;
  const Shape xs = x.shape();
  const DType dt = x.dtype();
  const Device dev = x.device();
  Tensor y = x.alias_with(s, st, x.offset() + start * x.strides()[size_t(dim)]);
  return record_view("slice", x, y, [=](const Tensor& g) {
    Tensor gx = zeros(xs, {.dtype = dt, .device = dev});
    Tensor part = slice(gx, dim, start, end, step);
    backend_of(gx).copy(g, part);
    return gx;
  });
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  dim = wrap_dim(dim, x.dim(), "narrow");
  const int64_t n = x.shape()[size_t(dim)];
  if (start < 0) start += n;
  CM_CHECK(start >= 0 && length >= 0 && start + length <= n, "narrow: range [", start, ", ",
           start + length, ") is outside dim ", dim, " of size ", n);
  return slice(x, dim, start, start + length, 1);
}

Tensor select(const Tensor& x, int64_t dim, int64_t index) {
  dim = wrap_dim(dim, x.dim(), "select");
  const int64_t n = x.shape()[size_t(dim)];
  CM_CHECK(index >= -n && index < n, "select: index ", index, " is out of range for dim ", dim,
           " of size ", n);
  if (index < 0) index += n;
  return squeeze(narrow(x, dim, index, 1), dim);
}

Tensor expand(const Tensor& x, const Shape& shape) {
  Shape s = shape;
  const size_t lead = s.size() >= x.shape().size() ? s.size() - x.shape().size() : 0;
  CM_CHECK(s.size() >= x.shape().size(), "expand: cannot expand shape ", shape_str(x.shape()),
           " to ", shape_str(shape));
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      CM_CHECK(i >= lead, "expand: -1 is not allowed for the new leading dim ", i);
      s[i] = x.shape()[i - lead];
    }
  }
  const Shape xs = x.shape();
  // Always a new view: expand_raw returns x itself for an unchanged shape, and recording x as its
  // own output would give it a grad_fn.
  Tensor y = s == xs ? x.alias_with(xs, x.strides(), x.offset()) : expand_raw(x, s, "expand");
  return record_view("expand", x, y, [xs](const Tensor& g) { return sum_to_shape(g, xs); });
}

Tensor broadcast_to(const Tensor& x, const Shape& shape) {
  return expand(x, shape);
}

Tensor squeeze(const Tensor& x, int64_t dim) {
  if (x.dim() == 0) return x;
  dim = wrap_dim(dim, x.dim(), "squeeze");
  if (x.shape()[size_t(dim)] != 1) return x;
  Shape s = x.shape(), st = x.strides();
  s.erase(s.begin() + dim);
  st.erase(st.begin() + dim);
  const Shape xs = x.shape();
  return record_view("squeeze", x, x.alias_with(s, st, x.offset()),
                     [xs](const Tensor& g) { return reshape(g, xs); });
}

Tensor squeeze(const Tensor& x) {
  Shape s, st;
  for (size_t i = 0; i < x.shape().size(); ++i) {
    if (x.shape()[i] == 1) continue;
    s.push_back(x.shape()[i]);
    st.push_back(x.strides()[i]);
  }
  if (s.size() == x.shape().size()) return x;
  const Shape xs = x.shape();
  return record_view("squeeze", x, x.alias_with(s, st, x.offset()),
                     [xs](const Tensor& g) { return reshape(g, xs); });
}

Tensor unsqueeze(const Tensor& x, int64_t dim) {
  dim = wrap_dim(dim, x.dim() + 1, "unsqueeze");
  Shape s = x.shape(), st = x.strides();
  const int64_t inner = dim < x.dim() ? x.strides()[size_t(dim)] * x.shape()[size_t(dim)] : 1;
  s.insert(s.begin() + dim, 1);
  st.insert(st.begin() + dim, inner);
  const Shape xs = x.shape();
  return record_view("unsqueeze", x, x.alias_with(s, st, x.offset()),
                     [xs](const Tensor& g) { return reshape(g, xs); });
}

Tensor flatten(const Tensor& x, int64_t start, int64_t end) {
  if (x.dim() == 0) return reshape(x, {1});
  start = wrap_dim(start, x.dim(), "flatten");
  end = wrap_dim(end, x.dim(), "flatten");
  CM_CHECK(start <= end, "flatten: start dim ", start, " is after end dim ", end);
  Shape s(x.shape().begin(), x.shape().begin() + start);
  int64_t n = 1;
  for (int64_t d = start; d <= end; ++d) n *= x.shape()[size_t(d)];
  s.push_back(n);
  s.insert(s.end(), x.shape().begin() + end + 1, x.shape().end());
  return reshape(x, s);
}

Tensor unflatten(const Tensor& x, int64_t dim, const Shape& sizes) {
  dim = wrap_dim(dim, x.dim(), "unflatten");
  Shape s(x.shape().begin(), x.shape().begin() + dim);
  const Shape inner = infer_shape(sizes, x.shape()[size_t(dim)], "unflatten");
  s.insert(s.end(), inner.begin(), inner.end());
  s.insert(s.end(), x.shape().begin() + dim + 1, x.shape().end());
  return reshape(x, s);
}

Tensor clone(const Tensor& x) {
  Tensor y = new_empty(x.shape(), x.dtype(), x.device());
  backend_of(x).copy(x, y);
  if (needs_grad({x})) record("clone", {x}, {y}, [](const Grads& g) { return Grads{g[0]}; });
  return y;
}

Tensor contiguous(const Tensor& x) {
  return x.is_contiguous() ? x : clone(x);
}

Tensor to_memory_format(const Tensor& x, MemoryFormat format) {
  if (format == MemoryFormat::Contiguous) return contiguous(x);
  CM_CHECK(x.dim() == 4, "to_memory_format: channels_last needs a 4-D [N, C, H, W] tensor, got ",
           shape_str(x.shape()));
  if (is_channels_last(x)) return x;
  Tensor y = empty(x.shape(), {.dtype = x.dtype(), .device = x.device()}, format);
  backend_of(x).copy(x, y);
  if (needs_grad({x}))
    record("to_memory_format", {x}, {y}, [](const Grads& g) { return Grads{g[0]}; });
  return y;
}

Tensor detach(const Tensor& x) {
  return x.alias_with(x.shape(), x.strides(), x.offset());
}

Tensor to(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  Tensor y = new_empty(x.shape(), dtype, x.device(), {x});
  backend_of(x).copy(x, y);
  if (is_floating(dtype) && needs_grad({x})) {
    const DType from = x.dtype();
    record("to_dtype", {x}, {y}, [from](const Grads& g) { return Grads{to(g[0], from)}; });
  }
  return y;
}

Tensor to(const Tensor& x, Device device) {
  if (x.device() == device) return x;
  Tensor src = contiguous(detach(x));
  Tensor y = new_empty(x.shape(), x.dtype(), device);
  backend_for(device.is_cpu() ? x.device() : device).copy_between_devices(src, y);
  if (needs_grad({x})) {
    const Device from = x.device();
    record("to_device", {x}, {y}, [from](const Grads& g) { return Grads{to(g[0], from)}; });
  }
  return y;
}

Tensor sum_to_shape(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  const int64_t lead = g.dim() - int64_t(shape.size());
  CM_CHECK(lead >= 0, "sum_to_shape: cannot reduce shape ", shape_str(g.shape()), " to ",
           shape_str(shape));
  Shape dims;
  for (int64_t i = 0; i < g.dim(); ++i) {
    if (i < lead)
      dims.push_back(i);
    else if (shape[size_t(i - lead)] == 1 && g.shape()[size_t(i)] != 1)
      dims.push_back(i);
    else
      CM_CHECK(shape[size_t(i - lead)] == g.shape()[size_t(i)],
               "sum_to_shape: cannot reduce shape ", shape_str(g.shape()), " to ",
               shape_str(shape));
  }
  Tensor r = dims.empty() ? g : sum(g, dims, true);
  return reshape(r, shape);
}

// ---- Tensor method shorthands
// -------------------------------------------------------------------------------
Tensor Tensor::reshape(const Shape& s) const {
  return cm::reshape(*this, s);
}
Tensor Tensor::view(const Shape& s) const {
  return cm::view(*this, s);
}
Tensor Tensor::permute(const Shape& dims) const {
  return cm::permute(*this, dims);
}
Tensor Tensor::transpose(int64_t a, int64_t b) const {
  return cm::transpose(*this, a, b);
}
Tensor Tensor::narrow(int64_t d, int64_t s, int64_t l) const {
  return cm::narrow(*this, d, s, l);
}
Tensor Tensor::select(int64_t d, int64_t i) const {
  return cm::select(*this, d, i);
}
Tensor Tensor::expand(const Shape& s) const {
  return cm::expand(*this, s);
}
Tensor Tensor::squeeze(int64_t d) const {
  return cm::squeeze(*this, d);
}
Tensor Tensor::unsqueeze(int64_t d) const {
  return cm::unsqueeze(*this, d);
}
Tensor Tensor::flatten(int64_t s, int64_t e) const {
  return cm::flatten(*this, s, e);
}
Tensor Tensor::contiguous() const {
  return cm::contiguous(*this);
}
Tensor Tensor::clone() const {
  return cm::clone(*this);
}
Tensor Tensor::to(DType t) const {
  return cm::to(*this, t);
}
Tensor Tensor::to(Device d) const {
  return cm::to(*this, d);
}
Tensor Tensor::detach() const {
  return cm::detach(*this);
}
Tensor Tensor::sum() const {
  return cm::sum(*this);
}
Tensor Tensor::mean() const {
  return cm::mean(*this);
}

}  // namespace cm
