// Tensor: a strided view (shape, strides, offset, dtype) on a shared Storage, with a version
// counter shared by all views of the same data, and optional autograd metadata.
//
// A Tensor is a cheap handle (a shared pointer to TensorImpl); copying a Tensor aliases it.
// Differentiable operations are free functions in autograd/ops.h; the few methods below that are
// marked [op] are shorthands for them and live in the cm_autograd library.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "tensor/device.h"
#include "tensor/dtype.h"
#include "tensor/error.h"
#include "tensor/storage.h"

namespace cm {

using Shape = std::vector<int64_t>;
inline constexpr int kMaxDims = 10;

class Tensor;
class Node;  // autograd/node.h

struct TensorOptions {
  DType dtype = DType::f32;
  Device device = Device::cpu();
  bool requires_grad = false;
};

// Counts in-place writes to the data; shared by a tensor and all its views (and detached aliases).
struct VersionCounter {
  uint64_t value = 0;
};

using GradHook = std::function<Tensor(const Tensor&)>;
// Runs after backward has added a gradient into a leaf's .grad (the leaf is the argument).
using PostAccumulateHook = std::function<void(const Tensor& leaf)>;

struct AutogradMeta;

class TensorImpl {
 public:
  TensorImpl(std::shared_ptr<Storage> storage, Shape shape, Shape strides, int64_t offset,
             DType dtype, std::shared_ptr<VersionCounter> version);
  ~TensorImpl();

  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;   // in elements
  int64_t offset;  // in elements
  DType dtype;
  std::shared_ptr<VersionCounter> version;
  std::unique_ptr<AutogradMeta> autograd;  // null unless autograd touched this tensor
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

  // ---- metadata ---------------------------------------------------------------------------------
  const Shape& shape() const { return checked()->shape; }
  const Shape& strides() const { return checked()->strides; }
  int64_t dim() const { return int64_t(checked()->shape.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t stride(int64_t d) const;
  int64_t numel() const;
  int64_t offset() const { return checked()->offset; }
  DType dtype() const { return checked()->dtype; }
  Device device() const { return checked()->storage->device(); }
  size_t element_size() const { return dtype_size(dtype()); }
  size_t nbytes() const { return size_t(numel()) * element_size(); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return checked()->storage; }
  // Address of element [0, ..., 0] (on the tensor's device).
  void* data_ptr() const;
  // Typed address; checks the dtype.
  template <class T>
  T* data() const {
    CM_CHECK(dtype() == dtype_v<T>, "Tensor::data: tensor has dtype ", dtype_name(dtype()),
             ", asked for ", dtype_name(dtype_v<T>));
    return static_cast<T*>(data_ptr());
  }

  uint64_t version() const { return checked()->version->value; }
  void bump_version() const { ++checked()->version->value; }

  // A view sharing storage and version counter, with no autograd history. The primitive under every
  // view op; it checks that the view stays inside the storage.
  Tensor alias_with(Shape shape, Shape strides, int64_t offset) const;

  // ---- host access (copies to the CPU when needed)
  // ------------------------------------------------
  template <class T>
  std::vector<T> to_vector() const;  // row-major values, converted to T
  template <class T>
  T item() const;           // the value of a one-element tensor
  std::string str() const;  // printable form: shape, dtype, device, values

  // ---- autograd metadata
  // --------------------------------------------------------------------------
  bool requires_grad() const;
  // Marks a leaf as needing gradients (fails on non-leaves: their flag follows their inputs).
  Tensor& set_requires_grad(bool on = true);
  bool is_leaf() const;  // no grad_fn
  Tensor grad() const;   // accumulated gradient (undefined until backward)
  void set_grad(const Tensor& g) const;
  void zero_grad() const;  // drops the gradient (sets it undefined)
  // A leaf's gradient slot: where backward puts the leaf's first gradient (copied into it, and
  // .grad() then is the slot) instead of a new tensor; later gradients accumulate into it as
  // usual. How parameters get their gradients in one flat buffer (nn/flat.h). The slot has the
  // leaf's shape, dtype and device; an undefined one restores the default.
  void set_grad_slot(const Tensor& slot) const;
  Tensor grad_slot() const;
  std::shared_ptr<Node> grad_fn() const;
  AutogradMeta* autograd_meta() const { return checked()->autograd.get(); }
  AutogradMeta& ensure_autograd_meta() const;
  // Keeps the gradient of a non-leaf in .grad() after backward.
  void retain_grad() const;
  // Runs `hook` on this tensor's gradient during backward; a defined return value replaces it.
  void register_hook(GradHook hook) const;
  // Leaves: runs `hook` each time backward has accumulated a gradient into .grad() (so .grad()
  // holds it), in registration order. What the data-parallel reducer (dist/reducer.h) listens to
  // for a parameter whose gradient is complete.
  void register_post_accumulate_grad_hook(PostAccumulateHook hook) const;

  // ---- [op] shorthands for autograd/ops.h (link cm_autograd)
  // -------------------------------------
  Tensor reshape(const Shape& s) const;
  Tensor view(const Shape& s) const;
  Tensor permute(const Shape& dims) const;
  Tensor transpose(int64_t a, int64_t b) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor select(int64_t dim, int64_t index) const;
  Tensor expand(const Shape& s) const;
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor flatten(int64_t start = 0, int64_t end = -1) const;
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(DType t) const;
  Tensor to(Device d) const;
  Tensor detach() const;
  Tensor sum() const;
  Tensor mean() const;
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;

 private:
  TensorImpl* checked() const {
    CM_CHECK(impl_ != nullptr, "use of an undefined Tensor");
    return impl_.get();
  }
  std::shared_ptr<TensorImpl> impl_;
};

// How to compute a tensor's values again, bit for bit, from what the op that made it keeps for its
// own backward (activation recomputation, autograd/node.h), and the version the tensor had then:
// once modified in place it is no longer what the function gives.
struct Recompute {
  std::function<Tensor()> fn;
  uint64_t version = 0;
};

struct AutogradMeta {
  Tensor grad;
  std::shared_ptr<Node> grad_fn;
  uint32_t output_nr = 0;  // which output of grad_fn this tensor is
  bool requires_grad = false;
  bool retains_grad = false;
  std::vector<GradHook> hooks;  // leaf hooks (non-leaf hooks live on grad_fn)
  std::vector<PostAccumulateHook> post_accumulate_hooks;  // leaf: after each accumulation
  std::weak_ptr<Node> grad_accumulator;  // leaf: the node that accumulates into .grad
  Tensor grad_slot;                      // leaf: where the first gradient is written (or none)
  std::shared_ptr<const Recompute> recompute;  // null unless an op attached one (set_recompute)
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

// ---- shape helpers
// ----------------------------------------------------------------------------------
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);
// ---- memory formats: a stride order, never a tensor field (STYLE.md, mend 4) ----
// Channels-last: a 4-D [N, C, H, W] whose memory is [N, H, W, C] row-major (dense, C fastest).
// The strides of such a tensor, and whether t has them (size-1 dims may have any stride, as in
// is_contiguous; a tensor with C = 1 or H = W = 1 is both contiguous and channels-last).
Shape channels_last_strides(const Shape& s);
bool is_channels_last(const Tensor& t);
// The two memory formats an op's output can be allocated in. memory_format_of(t) is ChannelsLast
// when t is channels-last and not also contiguous (a tensor that is both counts as contiguous).
enum class MemoryFormat { Contiguous, ChannelsLast };
const char* memory_format_name(MemoryFormat f);
MemoryFormat memory_format_of(const Tensor& t);
std::string shape_str(const Shape& s);
// Wraps a possibly negative dim into [0, ndim); errors name `op`.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);
// NumPy broadcasting of two shapes; errors name `op` and both shapes.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

// ---- creation (leaves; no gradient history)
// ---------------------------------------------------------
Tensor empty(const Shape& shape, TensorOptions opt = {});
// empty in a memory format (ChannelsLast needs a 4-D shape).
Tensor empty(const Shape& shape, TensorOptions opt, MemoryFormat format);
Tensor zeros(const Shape& shape, TensorOptions opt = {});
Tensor ones(const Shape& shape, TensorOptions opt = {});
Tensor full(const Shape& shape, double value, TensorOptions opt = {});
Tensor empty_like(const Tensor& t);
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor full_like(const Tensor& t, double value);
// start, start+step, ... < end (like numpy.arange); dtype from opt.
Tensor arange(double start, double end, double step = 1, TensorOptions opt = {.dtype = DType::i64});
Tensor arange(int64_t end, TensorOptions opt = {.dtype = DType::i64});
// `steps` points from start to end inclusive.
Tensor linspace(double start, double end, int64_t steps, TensorOptions opt = {});
Tensor eye(int64_t n, TensorOptions opt = {});
// A tensor from host values (row-major), converted to opt.dtype and placed on opt.device.
template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape,
                   TensorOptions opt = {.dtype = dtype_v<T>});
template <>
Tensor from_vector(const std::vector<bool>& values, const Shape& shape, TensorOptions opt);
// A 0-d tensor.
Tensor scalar_tensor(double value, TensorOptions opt = {});

}  // namespace cm
