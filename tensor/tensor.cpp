// Tensor metadata, views, host access and printing; Storage; Device parsing.
#include "tensor/tensor.h"

#include <cstdio>
#include <ostream>
#include <sstream>

#include "tensor/backend.h"

namespace cm {

// ---- Device
// ---------------------------------------------------------------------------------------
Device Device::parse(const std::string& s) {
  if (s == "cpu") return cpu();
  if (s == "cuda") return cuda(0);
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5) {
    try {
      size_t used = 0;
      int i = std::stoi(s.substr(5), &used);
      if (used == s.size() - 5 && i >= 0) return cuda(i);
    } catch (const std::exception&) {
    }
  }
  CM_FAIL("invalid device \"", s, "\" (expected cpu, cuda or cuda:N)");
}

// ---- Storage
// --------------------------------------------------------------------------------------
Storage::Storage(size_t nbytes, Device d) : nbytes_(nbytes), device_(d) {
  allocator_ = &allocator_for(d);
  data_ = allocator_->allocate(nbytes);
}

Storage::Storage(void* data, size_t nbytes, Device d, std::function<void(void*)> release)
    : data_(data), nbytes_(nbytes), device_(d), release_(std::move(release)) {}

Storage::~Storage() {
  if (allocator_)
    allocator_->deallocate(data_, nbytes_);
  else if (release_)
    release_(data_);
}

// ---- shape helpers
// ----------------------------------------------------------------------------------
int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s)
    CM_CHECK(!__builtin_mul_overflow(n, d, &n), "shape ", shape_str(s),
             " has more elements than a 64-bit count holds");
  return n;
}

// Row-major strides. The extent of every dimension counts (a zero-size dimension as 1), so that
// the strides of a shape such as [0, 2^62, 2^62] would overflow: refused, naming the shape.
Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = acc;
    CM_CHECK(!__builtin_mul_overflow(acc, std::max<int64_t>(s[i], 1), &acc), "shape ", shape_str(s),
             " is too large: its strides overflow 64 bits");
  }
  return st;
}

Shape channels_last_strides(const Shape& s) {
  CM_CHECK(s.size() == 4, "channels_last_strides: a 4-D [N, C, H, W] shape is required, got ",
           shape_str(s));
  const Shape nhwc = contiguous_strides({s[0], s[2], s[3], s[1]});
  return {nhwc[0], nhwc[3], nhwc[1], nhwc[2]};
}

bool is_channels_last(const Tensor& t) {
  if (t.dim() != 4) return false;
  if (t.numel() == 0) return true;
  const Shape& s = t.shape();
  const Shape& st = t.strides();
  int64_t expected = 1;
  for (int d : {1, 3, 2, 0}) {  // C, W, H, N: fastest to slowest
    if (s[size_t(d)] == 1) continue;
    if (st[size_t(d)] != expected) return false;
    expected *= s[size_t(d)];
  }
  return true;
}

const char* memory_format_name(MemoryFormat f) {
  return f == MemoryFormat::ChannelsLast ? "channels_last" : "contiguous";
}

MemoryFormat memory_format_of(const Tensor& t) {
  return is_channels_last(t) && !t.is_contiguous() ? MemoryFormat::ChannelsLast
                                                   : MemoryFormat::Contiguous;
}

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op) {
  const int64_t lo = ndim == 0 ? -1 : -ndim, hi = ndim == 0 ? 0 : ndim - 1;
  CM_CHECK(dim >= lo && dim <= hi, op, ": dim ", dim, " is out of range for a tensor of rank ",
           ndim, " (expected ", lo, "..", hi, ")");
  return dim < 0 ? dim + std::max<int64_t>(ndim, 1) : dim;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    CM_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", shape_str(a), " and ", shape_str(b),
             " cannot be broadcast (dim ", i, ": ", da, " vs ", db, ")");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// ---- TensorImpl
// -----------------------------------------------------------------------------------
TensorImpl::TensorImpl(std::shared_ptr<Storage> storage_, Shape shape_, Shape strides_,
                       int64_t offset_, DType dtype_, std::shared_ptr<VersionCounter> version_)
    : storage(std::move(storage_)),
      shape(std::move(shape_)),
      strides(std::move(strides_)),
      offset(offset_),
      dtype(dtype_),
      version(std::move(version_)) {
  CM_CHECK(shape.size() <= size_t(kMaxDims), "tensors have at most ", kMaxDims, " dims, got ",
           shape_str(shape));
  for (int64_t d : shape) CM_CHECK(d >= 0, "negative size in shape ", shape_str(shape));
}

TensorImpl::~TensorImpl() = default;

// ---- Tensor metadata
// --------------------------------------------------------------------------------
int64_t Tensor::size(int64_t d) const {
  return shape()[size_t(wrap_dim(d, dim(), "size"))];
}
int64_t Tensor::stride(int64_t d) const {
  return strides()[size_t(wrap_dim(d, dim(), "stride"))];
}
int64_t Tensor::numel() const {
  return shape_numel(shape());
}

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;  // no elements: any strides lay them out row-major (as PyTorch)
  int64_t expected = 1;
  const Shape& s = shape();
  const Shape& st = strides();
  for (size_t i = s.size(); i-- > 0;) {
    if (s[i] == 1) continue;
    if (st[i] != expected) return false;
    expected *= s[i];
  }
  return true;
}

void* Tensor::data_ptr() const {
  return static_cast<char*>(storage()->data()) + offset() * int64_t(element_size());
}

Tensor Tensor::alias_with(Shape shape_, Shape strides_, int64_t offset_) const {
  CM_CHECK(shape_.size() == strides_.size(), "view: shape ", shape_str(shape_), " and strides ",
           shape_str(strides_), " differ in rank");
  // The view must stay inside the storage: check its lowest and highest element.
  if (shape_numel(shape_) > 0) {
    int64_t lo = offset_, hi = offset_;
    for (size_t i = 0; i < shape_.size(); ++i) {
      const int64_t span = (shape_[i] - 1) * strides_[i];
      (span < 0 ? lo : hi) += span;
    }
    const int64_t capacity = int64_t(storage()->nbytes() / element_size());
    CM_CHECK(lo >= 0 && hi < capacity, "view: shape ", shape_str(shape_), " strides ",
             shape_str(strides_), " offset ", offset_, " reaches outside the storage of ", capacity,
             " elements");
  }
  return Tensor(std::make_shared<TensorImpl>(storage(), std::move(shape_), std::move(strides_),
                                             offset_, dtype(), impl_->version));
}

// ---- host access
// ------------------------------------------------------------------------------------
namespace {
// A contiguous CPU tensor of dtype `dt` holding t's values.
Tensor host_copy(const Tensor& t, DType dt) {
  Tensor src = t;
  if (!t.device().is_cpu()) {
    Tensor dev = t;
    if (!t.is_contiguous()) {
      dev = empty(t.shape(), {.dtype = t.dtype(), .device = t.device()});
      backend_of(t).copy(t, dev);
    }
    src = empty(t.shape(), {.dtype = t.dtype()});
    backend_of(t).copy_between_devices(dev, src);
  }
  if (src.dtype() == dt && src.is_contiguous()) return src;
  Tensor out = empty(t.shape(), {.dtype = dt});
  backend_for(Device::cpu()).copy(src, out);
  return out;
}
}  // namespace

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor h = host_copy(*this, dtype_v<T>);
  const T* p = static_cast<const T*>(h.data_ptr());
  return std::vector<T>(p, p + h.numel());
}

template <class T>
T Tensor::item() const {
  CM_CHECK(numel() == 1, "item: tensor of shape ", shape_str(shape()), " has ", numel(),
           " elements, expected one");
  return to_vector<T>()[0];
}

#define CM_INSTANTIATE(T)                               \
  template std::vector<T> Tensor::to_vector<T>() const; \
  template T Tensor::item<T>() const;
CM_INSTANTIATE(float)
CM_INSTANTIATE(double)
CM_INSTANTIATE(Half)
CM_INSTANTIATE(BFloat16)
CM_INSTANTIATE(int32_t)
CM_INSTANTIATE(int64_t)
CM_INSTANTIATE(uint8_t)
#undef CM_INSTANTIATE
// std::vector<bool> is bit-packed: convert element by element.
template <>
std::vector<bool> Tensor::to_vector<bool>() const {
  std::vector<uint8_t> v = host_copy(*this, DType::b8).to_vector<uint8_t>();
  return std::vector<bool>(v.begin(), v.end());
}
template <>
bool Tensor::item<bool>() const {
  return to_vector<bool>().at(0);
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  std::ostringstream os;
  const int64_t n = numel();
  const bool summarize = n > 64;
  std::vector<double> v = host_copy(*this, DType::f64).to_vector<double>();
  const bool integral = !is_floating(dtype());
  auto fmt = [&](double x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, integral ? "%.0f" : "%.6g", x);
    return std::string(buf);
  };
  os << "tensor(";
  // nested brackets, row-major
  const Shape& s = shape();
  if (s.empty()) {
    os << fmt(v[0]);
  } else {
    std::vector<int64_t> idx(s.size(), 0);
    int64_t shown = 0;
    for (int64_t i = 0; i < n; ++i) {
      size_t open = 0;
      for (size_t d = s.size(); d-- > 0 && idx[d] == 0;) ++open;
      for (size_t k = 0; k < open; ++k) os << "[";
      if (!summarize || shown < 8 || i >= n - 8) {
        os << fmt(v[size_t(i)]);
        ++shown;
      } else if (shown == 8) {
        os << "...";
        ++shown;
      }
      size_t close = 0;
      for (size_t d = s.size(); d-- > 0;) {
        if (++idx[d] < s[d]) break;
        idx[d] = 0;
        ++close;
      }
      for (size_t k = 0; k < close; ++k) os << "]";
      if (i + 1 < n && (!summarize || shown <= 8 || i + 1 >= n - 8)) os << ", ";
    }
    if (n == 0) os << "[]";
  }
  os << ", shape=" << shape_str(s) << ", dtype=" << dtype_name(dtype())
     << ", device=" << device().str() << ")";
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) {
  return os << t.str();
}

// ---- autograd metadata
// ------------------------------------------------------------------------------
AutogradMeta& Tensor::ensure_autograd_meta() const {
  auto& m = checked()->autograd;
  if (!m) m = std::make_unique<AutogradMeta>();
  return *m;
}

bool Tensor::requires_grad() const {
  const AutogradMeta* m = autograd_meta();
  return m && m->requires_grad;
}

Tensor& Tensor::set_requires_grad(bool on) {
  CM_CHECK(is_leaf(),
           "set_requires_grad: only leaf tensors can be marked; this tensor is the output of ",
           "an operation and follows its inputs (use detach() for a new leaf)");
  CM_CHECK(!on || is_floating(dtype()),
           "set_requires_grad: only floating tensors can require gradients, ", "this one is ",
           dtype_name(dtype()));
  ensure_autograd_meta().requires_grad = on;
  return *this;
}

bool Tensor::is_leaf() const {
  const AutogradMeta* m = autograd_meta();
  return !m || !m->grad_fn;
}

Tensor Tensor::grad() const {
  const AutogradMeta* m = autograd_meta();
  return m ? m->grad : Tensor();
}

void Tensor::set_grad(const Tensor& g) const {
  if (g.defined()) {
    CM_CHECK(g.shape() == shape(), "set_grad: gradient shape ", shape_str(g.shape()),
             " differs from the tensor's ", shape_str(shape()));
  }
  ensure_autograd_meta().grad = g;
}

void Tensor::set_grad_slot(const Tensor& slot) const {
  if (slot.defined()) {
    CM_CHECK(is_leaf(), "set_grad_slot: only leaves have gradient slots");
    CM_CHECK(slot.shape() == shape() && slot.dtype() == dtype() && slot.device() == device(),
             "set_grad_slot: the slot (", shape_str(slot.shape()), " ", dtype_name(slot.dtype()),
             " on ", slot.device().str(), ") does not match the tensor (", shape_str(shape()), " ",
             dtype_name(dtype()), " on ", device().str(), ")");
    CM_CHECK(!slot.requires_grad(), "set_grad_slot: the slot must not require grad");
  }
  ensure_autograd_meta().grad_slot = slot;
}

Tensor Tensor::grad_slot() const {
  const AutogradMeta* m = autograd_meta();
  return m ? m->grad_slot : Tensor();
}

void Tensor::zero_grad() const {
  if (AutogradMeta* m = autograd_meta()) m->grad = Tensor();
}

std::shared_ptr<Node> Tensor::grad_fn() const {
  const AutogradMeta* m = autograd_meta();
  return m ? m->grad_fn : nullptr;
}

}  // namespace cm
