// Random tensors drawn from a Philox generator (tensor/random.h): the generator reserves the
// counter blocks, the device kernel evaluates them. The same seed and offset give the same values
// on every device.
#include "autograd/ops/common.h"

namespace cm {
using namespace opdetail;

std::optional<uint64_t> opdetail::reserve_draw(Generator& g, const Shape& shape, DType dtype) {
  const int64_t n = shape_numel(shape), k = g.shard_count(), r = g.shard_index();
  if (k == 1 || shape.empty()) return g.reserve(n, dtype);
  const int64_t per_block = Generator::values_per_block(dtype);
  if ((n * r) % per_block != 0) return std::nullopt;
  return g.reserve(n * k, dtype) + uint64_t(n * r / per_block);
}

namespace {
Tensor draw(RandomKind kind, const Shape& shape, TensorOptions opt, Generator* gen, double a,
            double b, MemoryFormat format = MemoryFormat::Contiguous) {
  Generator& g = gen ? *gen : default_generator();
  const bool rg = opt.requires_grad;
  opt.requires_grad = false;
  Tensor t = empty(shape, opt, format);
  if (const std::optional<uint64_t> first = reserve_draw(g, shape, t.dtype())) {
    backend_of(t).random(kind, t, g.seed(), *first, a, b);
  } else {
    // A batch shard (Generator::set_shard) that starts inside a block: rows [r·b, (r + 1)·b) of
    // the draw of k·b rows, drawn whole.
    const int64_t k = g.shard_count(), r = g.shard_index();
    const uint64_t first_all = g.reserve(t.numel() * k, t.dtype());
    Shape all = shape;
    all[0] *= k;
    Tensor whole = empty(all, opt, format);
    backend_of(whole).random(kind, whole, g.seed(), first_all, a, b);
    backend_of(t).copy(whole.narrow(0, r * shape[0], shape[0]), t);
  }
  if (rg) t.set_requires_grad(true);
  return t;
}
}  // namespace

Tensor rand(const Shape& shape, TensorOptions opt, Generator* gen) {
  CM_CHECK(is_floating(opt.dtype), "rand: dtype must be floating, got ", dtype_name(opt.dtype));
  return draw(RandomKind::Uniform, shape, opt, gen, 0.0, 1.0);
}

Tensor randn(const Shape& shape, TensorOptions opt, Generator* gen) {
  CM_CHECK(is_floating(opt.dtype), "randn: dtype must be floating, got ", dtype_name(opt.dtype));
  return draw(RandomKind::Normal, shape, opt, gen, 0.0, 1.0);
}

Tensor randint(int64_t low, int64_t high, const Shape& shape, TensorOptions opt, Generator* gen) {
  CM_CHECK(low < high, "randint: empty range [", low, ", ", high, ")");
  // The integers the dtype holds exactly (so a 32-bit dtype never sees a range over 2^32, which
  // needs the 64-bit draw); the bounds also reach the kernel as doubles, exact to 2^53.
  const int64_t two53 = int64_t(1) << 53;
  int64_t lo_ok = -two53, hi_ok = two53;
  switch (opt.dtype) {
    case DType::i32:
      lo_ok = INT32_MIN;
      hi_ok = INT32_MAX;
      break;
    case DType::u8:
      lo_ok = 0;
      hi_ok = 255;
      break;
    case DType::b8:
      lo_ok = 0;
      hi_ok = 1;
      break;
    case DType::f32:
      lo_ok = -(int64_t(1) << 24);
      hi_ok = int64_t(1) << 24;
      break;
    case DType::f16:
      lo_ok = -(int64_t(1) << 11);
      hi_ok = int64_t(1) << 11;
      break;
    case DType::bf16:
      lo_ok = -(int64_t(1) << 8);
      hi_ok = int64_t(1) << 8;
      break;
    default:
      break;
  }
  CM_CHECK(low >= lo_ok && high - 1 <= hi_ok, "randint: range [", low, ", ", high, ") is outside [",
           lo_ok, ", ", hi_ok, "], the integers dtype ", dtype_name(opt.dtype), " holds exactly");
  return draw(RandomKind::Int, shape, opt, gen, double(low), double(high));
}

Tensor rand_like(const Tensor& t, Generator* gen) {
  return rand(t.shape(), {.dtype = t.dtype(), .device = t.device()}, gen);
}
Tensor randn_like(const Tensor& t, Generator* gen) {
  return randn(t.shape(), {.dtype = t.dtype(), .device = t.device()}, gen);
}

Tensor bernoulli(const Shape& shape, double p, TensorOptions opt, Generator* gen,
                 MemoryFormat format) {
  CM_CHECK(p >= 0 && p <= 1, "bernoulli: probability must be in [0, 1], got ", p);
  return draw(RandomKind::Bernoulli, shape, opt, gen, p, 0.0, format);
}

}  // namespace cm
