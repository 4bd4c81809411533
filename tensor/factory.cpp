// Tensor creation: empty/zeros/ones/full, arange, linspace, eye, from host values, and the
// random generator state.
#include <cmath>

#include "tensor/backend.h"
#include "tensor/tensor.h"

namespace cm {

Tensor empty(const Shape& shape, TensorOptions opt) {
  for (int64_t d : shape) CM_CHECK(d >= 0, "empty: negative size in shape ", shape_str(shape));
  int64_t nbytes = 0;
  CM_CHECK(!__builtin_mul_overflow(shape_numel(shape), int64_t(dtype_size(opt.dtype)), &nbytes),
           "empty: shape ", shape_str(shape), " of ", dtype_name(opt.dtype),
           " is too large (its size in bytes overflows 64 bits)");
  const Shape strides = contiguous_strides(shape);
  auto storage = std::make_shared<Storage>(size_t(nbytes), opt.device);
  Tensor t(std::make_shared<TensorImpl>(std::move(storage), shape, strides, 0, opt.dtype,
                                        std::make_shared<VersionCounter>()));
  if (opt.requires_grad) t.set_requires_grad(true);
  return t;
}

Tensor empty(const Shape& shape, TensorOptions opt, MemoryFormat format) {
  if (format == MemoryFormat::Contiguous) return empty(shape, opt);
  CM_CHECK(shape.size() == 4,
           "empty: the channels_last format needs a 4-D [N, C, H, W] shape, got ",
           shape_str(shape));
  const bool rg = opt.requires_grad;
  opt.requires_grad = false;
  const Tensor nhwc = empty({shape[0], shape[2], shape[3], shape[1]}, opt);
  Tensor t = nhwc.alias_with(shape, channels_last_strides(shape), 0);
  if (rg) t.set_requires_grad(true);
  return t;
}

Tensor full(const Shape& shape, double value, TensorOptions opt) {
  const bool rg = opt.requires_grad;
  opt.requires_grad = false;
  Tensor t = empty(shape, opt);
  backend_of(t).fill(t, value);
  if (rg) t.set_requires_grad(true);
  return t;
}

Tensor zeros(const Shape& shape, TensorOptions opt) {
  return full(shape, 0.0, opt);
}
Tensor ones(const Shape& shape, TensorOptions opt) {
  return full(shape, 1.0, opt);
}
Tensor empty_like(const Tensor& t) {
  return empty(t.shape(), {.dtype = t.dtype(), .device = t.device()});
}
Tensor zeros_like(const Tensor& t) {
  return zeros(t.shape(), {.dtype = t.dtype(), .device = t.device()});
}
Tensor ones_like(const Tensor& t) {
  return ones(t.shape(), {.dtype = t.dtype(), .device = t.device()});
}
Tensor full_like(const Tensor& t, double v) {
  return full(t.shape(), v, {.dtype = t.dtype(), .device = t.device()});
}
Tensor scalar_tensor(double value, TensorOptions opt) {
  return full({}, value, opt);
}

namespace {
// Converts a contiguous CPU tensor to opt.dtype, moves it to opt.device, sets requires_grad.
Tensor finish_host(Tensor h, TensorOptions opt) {
  if (opt.dtype != h.dtype()) {
    Tensor c = empty(h.shape(), {.dtype = opt.dtype});
    backend_for(Device::cpu()).copy(h, c);
    h = c;
  }
  if (!opt.device.is_cpu()) {
    Tensor d = empty(h.shape(), {.dtype = opt.dtype, .device = opt.device});
    backend_for(opt.device).copy_between_devices(h, d);
    h = d;
  }
  if (opt.requires_grad) h.set_requires_grad(true);
  return h;
}
}  // namespace

template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, TensorOptions opt) {
  CM_CHECK(int64_t(values.size()) == shape_numel(shape), "from_vector: ", values.size(),
           " values do not fill shape ", shape_str(shape));
  Tensor h = empty(shape, {.dtype = dtype_v<T>});
  std::copy(values.begin(), values.end(), static_cast<T*>(h.data_ptr()));
  return finish_host(h, opt);
}
template Tensor from_vector(const std::vector<float>&, const Shape&, TensorOptions);
template Tensor from_vector(const std::vector<double>&, const Shape&, TensorOptions);
template Tensor from_vector(const std::vector<Half>&, const Shape&, TensorOptions);
template Tensor from_vector(const std::vector<BFloat16>&, const Shape&, TensorOptions);
template Tensor from_vector(const std::vector<int32_t>&, const Shape&, TensorOptions);
template Tensor from_vector(const std::vector<int64_t>&, const Shape&, TensorOptions);
template Tensor from_vector(const std::vector<uint8_t>&, const Shape&, TensorOptions);
template <>
Tensor from_vector(const std::vector<bool>& values, const Shape& shape, TensorOptions opt) {
  CM_CHECK(int64_t(values.size()) == shape_numel(shape), "from_vector: ", values.size(),
           " values do not fill shape ", shape_str(shape));
  Tensor h = empty(shape, {.dtype = DType::b8});
  bool* p = static_cast<bool*>(h.data_ptr());
  for (size_t i = 0; i < values.size(); ++i) p[i] = values[i];
  return finish_host(h, opt);
}

Tensor arange(double start, double end, double step, TensorOptions opt) {
  CM_CHECK(step != 0 && std::isfinite(start) && std::isfinite(end) && std::isfinite(step),
           "arange: invalid range start=", start, " end=", end, " step=", step);
  const double span = std::ceil((end - start) / step);
  const int64_t n = span > 0 ? int64_t(span) : 0;
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = start + double(i) * step;
  return from_vector(v, {n}, opt);
}

Tensor arange(int64_t end, TensorOptions opt) {
  return arange(0.0, double(end), 1.0, opt);
}

Tensor linspace(double start, double end, int64_t steps, TensorOptions opt) {
  CM_CHECK(steps >= 0, "linspace: steps must be >= 0, got ", steps);
  std::vector<double> v(static_cast<size_t>(steps));
  const double step = steps > 1 ? (end - start) / double(steps - 1) : 0.0;
  // symmetric evaluation (as PyTorch): the first half from start, the second half from end
  for (int64_t i = 0; i < steps; ++i)
    v[size_t(i)] = i < steps / 2 ? start + step * double(i) : end - step * double(steps - 1 - i);
  if (steps == 1) v[0] = start;  // one point is the start, as in PyTorch
  return from_vector(v, {steps}, opt);
}

Tensor eye(int64_t n, TensorOptions opt) {
  CM_CHECK(n >= 0, "eye: n must be >= 0, got ", n);
  const bool rg = opt.requires_grad;
  opt.requires_grad = false;
  Tensor t = zeros({n, n}, opt);
  if (n > 0) backend_of(t).fill(t.alias_with({n}, {n + 1}, 0), 1.0);
  if (rg) t.set_requires_grad(true);
  return t;
}

// ---- generator
// ---------------------------------------------------------------------------------------
uint64_t Generator::reserve(int64_t n, DType dtype) {
  const uint64_t per_block = uint64_t(values_per_block(dtype));
  const uint64_t first = offset_;
  offset_ += (uint64_t(n) + per_block - 1) / per_block;
  return first;
}

void Generator::set_shard(int64_t index, int64_t count) {
  CM_CHECK(count >= 1 && index >= 0 && index < count, "Generator::set_shard: invalid shard ", index,
           " of ", count);
  shard_index_ = index;
  shard_count_ = count;
}

Generator& default_generator() {
  static Generator g(0);
  return g;
}

void manual_seed(uint64_t seed) {
  default_generator().set_state(seed, 0);
}

}  // namespace cm
