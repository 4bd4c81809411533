// Helpers shared by the op files: output allocation, raw (history-free) broadcasting views, dtype
// promotion, and device checks. Internal to autograd/ops.
#pragma once

#include <optional>

#include "autograd/ops.h"

namespace cm::opdetail {

// A fresh contiguous tensor.
inline Tensor new_empty(const Shape& shape, DType dtype, Device device) {
  return empty(shape, {.dtype = dtype, .device = device});
}
// The memory format of an op's output, derived from its inputs' strides (STYLE.md, mend 4: the
// format starts where outputs are allocated, never a tensor field): channels-last when the output
// is 4-D and an input of the output's own shape is channels-last or has a channels-last stride
// order without being dense (a channel slice of a channels-last tensor), else contiguous.
// Broadcast operands (a bias, a per-sample scale) do not decide.
MemoryFormat output_format(const Shape& shape, std::initializer_list<Tensor> inputs);
// A fresh tensor in output_format(shape, inputs).
inline Tensor new_empty(const Shape& shape, DType dtype, Device device,
                        std::initializer_list<Tensor> inputs) {
  return empty(shape, {.dtype = dtype, .device = device}, output_format(shape, inputs));
}

// A history-free view of t broadcast to `shape` (0-strides on the expanded dims).
Tensor expand_raw(const Tensor& t, const Shape& shape, const char* op);

// f32 for integer/bool dtypes, the dtype itself for floating ones.
inline DType float_dtype(DType t) {
  return is_floating(t) ? t : DType::f32;
}

// Fails unless all defined tensors are on one device; returns it.
Device common_device(std::initializer_list<Tensor> ts, const char* op);

// The dims of x to reduce (all when dims is empty), wrapped, deduplicated, sorted.
std::vector<int64_t> reduce_dims(const Tensor& x, const Shape& dims, const char* op);
// x's shape with the reduced dims set to 1 (keepdim form).
Shape keepdim_shape(const Shape& s, const std::vector<int64_t>& dims);
// The shape with the reduced dims removed.
Shape dropdim_shape(const Shape& s, const std::vector<int64_t>& dims);

// The first Philox block of a draw of shape × dtype from g, reserved (g advances past the whole
// draw; for a batch shard, Generator::set_shard, the draw of all shards), where the draw or g's
// shard of it starts on a block boundary; nothing reserved and nullopt where a shard starts inside
// a block (ops/random.cpp then draws the whole batch and keeps the shard's rows).
std::optional<uint64_t> reserve_draw(Generator& g, const Shape& shape, DType dtype);

}  // namespace cm::opdetail
