// Flat buffers (see flat.h): the layout, and the registry through which FlatParameters::of finds
// the buffers of a list of parameters.
#include "nn/flat.h"

#include <map>
#include <mutex>

namespace cm::nn {

namespace {

constexpr int64_t kAlignBytes = 64;

int64_t align_up(int64_t n, int64_t to) {
  return (n + to - 1) / to * to;
}

// FlatParameters by the storage of their parameters' buffers (one entry per group).
std::mutex registry_mutex;
std::map<const Storage*, std::weak_ptr<const FlatParameters>>& registry() {
  static std::map<const Storage*, std::weak_ptr<const FlatParameters>> r;
  return r;
}

}  // namespace

// ---- FlatBuffers
// ----------------------------------------------------------------------------------------------------

FlatBuffers::FlatBuffers(const std::vector<Tensor>& like) {
  NoGradGuard ng;
  std::vector<int64_t> group_numel;
  for (size_t i = 0; i < like.size(); ++i) {
    const Tensor& t = like[i];
    CM_CHECK(t.defined(), "FlatBuffers: tensor ", i, " is undefined");
    size_t g = 0;
    while (g < groups_.size() &&
           !(groups_[g].data.dtype() == t.dtype() && groups_[g].data.device() == t.device()))
      ++g;
    if (g == groups_.size()) {
      // a placeholder for the group's dtype and device; the buffer is allocated below
      groups_.push_back({empty({0}, {.dtype = t.dtype(), .device = t.device()}), {}});
      group_numel.push_back(0);
    }
    const int64_t align = std::max<int64_t>(1, kAlignBytes / int64_t(dtype_size(t.dtype())));
    const int64_t off = align_up(group_numel[g], align);
    groups_[g].members.push_back(i);
    group_.push_back(g);
    offset_.push_back(off);
    group_numel[g] = off + t.numel();
  }
  for (size_t g = 0; g < groups_.size(); ++g) {
    Tensor& d = groups_[g].data;
    d = zeros({group_numel[g]}, {.dtype = d.dtype(), .device = d.device()});
  }
  for (size_t i = 0; i < like.size(); ++i) {
    const Tensor& d = groups_[group_[i]].data;
    views_.push_back(d.alias_with(like[i].shape(), contiguous_strides(like[i].shape()),
                                  d.offset() + offset_[i]));
  }
}

FlatBuffers FlatBuffers::with_values(const std::vector<Tensor>& values) {
  NoGradGuard ng;
  FlatBuffers f(values);
  for (size_t i = 0; i < values.size(); ++i) {
    Tensor v = f.views_[i];
    copy_(v, values[i]);
  }
  return f;
}

FlatBuffers FlatBuffers::zeros_like(const FlatBuffers& other) {
  return FlatBuffers(other.views_);
}

Tensor FlatBuffers::span(size_t first, size_t last) const {
  CM_CHECK(first <= last && last < views_.size() && group_[first] == group_[last],
           "FlatBuffers::span: tensors ", first, "..", last, " are not in one group of ",
           views_.size(), " tensors");
  const Tensor& d = groups_[group_[first]].data;
  const int64_t begin = offset_[first], end = offset_[last] + views_[last].numel();
  return d.alias_with({end - begin}, {1}, d.offset() + begin);
}

bool FlatBuffers::same_layout(const FlatBuffers& o) const {
  if (o.size() != size() || o.offset_ != offset_ || o.group_ != group_) return false;
  for (size_t i = 0; i < size(); ++i)
    if (o.views_[i].shape() != views_[i].shape() || o.views_[i].dtype() != views_[i].dtype() ||
        o.views_[i].device() != views_[i].device())
      return false;
  return true;
}

bool FlatBuffers::holds(const std::vector<Tensor>& ts) const {
  if (ts.size() != views_.size()) return false;
  for (size_t i = 0; i < ts.size(); ++i)
    if (!ts[i].defined() || ts[i].impl() != views_[i].impl()) return false;
  return true;
}

// ---- FlatParameters
// -------------------------------------------------------------------------------------------------

std::shared_ptr<const FlatParameters> FlatParameters::create(const std::vector<Tensor>& params,
                                                             bool grads) {
  for (size_t i = 0; i < params.size(); ++i) {
    CM_CHECK(params[i].defined() && is_floating(params[i].dtype()) && params[i].is_leaf(),
             "FlatParameters: parameter ", i, " is not a floating-point leaf");
  }
  std::shared_ptr<FlatParameters> f(new FlatParameters());
  f->params_ = FlatBuffers::with_values(params);
  if (grads) f->grads_ = FlatBuffers::zeros_like(f->params_);
  for (size_t i = 0; i < params.size(); ++i) {
    Tensor p = f->params_.view(i);  // shares the view's TensorImpl
    if (params[i].requires_grad()) p.set_requires_grad(true);
    if (grads) p.set_grad_slot(f->grads_.view(i));
  }
  std::lock_guard<std::mutex> lock(registry_mutex);
  for (const FlatBuffers::Group& g : f->params_.groups()) registry()[g.data.storage().get()] = f;
  return f;
}

FlatParameters::~FlatParameters() {
  std::lock_guard<std::mutex> lock(registry_mutex);
  for (const FlatBuffers::Group& g : params_.groups()) {
    auto it = registry().find(g.data.storage().get());
    if (it != registry().end() && it->second.expired()) registry().erase(it);
  }
}

std::shared_ptr<const FlatParameters> FlatParameters::of(const std::vector<Tensor>& ps) {
  if (ps.empty() || !ps.front().defined()) return nullptr;
  std::shared_ptr<const FlatParameters> f;
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    auto it = registry().find(ps.front().storage().get());
    if (it == registry().end()) return nullptr;
    f = it->second.lock();
  }
  return f && f->params_.holds(ps) ? f : nullptr;
}

bool FlatParameters::grad_in_slot(size_t i) const {
  if (grads_.size() != params_.size()) return false;
  const Tensor g = params_.view(i).grad();
  const Tensor& slot = grads_.view(i);
  return g.defined() && g.storage() == slot.storage() && g.offset() == slot.offset() &&
         g.strides() == slot.strides();
}

bool FlatParameters::grads_in_buffers() const {
  if (grads_.size() != params_.size() || params_.size() == 0) return false;
  for (size_t i = 0; i < params_.size(); ++i)
    if (!grad_in_slot(i)) return false;
  return true;
}

}  // namespace cm::nn
