// Flat buffers: a model's parameters, their gradients and the optimizer's and EMAs' state each in
// one allocation per dtype and device, every tensor a view into it.
//
// Why: a training step touches every parameter a few times (gradient clipping, the non-finite
// check, the optimizer, the target and evaluation EMAs). Tensor by tensor that is a few kernels
// per parameter, thousands per step on the GPU; over flat buffers of one layout it is a few per
// buffer. The data-parallel all-reduce of the gradients is then one call over a buffer too.
//
// Layout: the tensors of a list, in order, grouped by (dtype, device) in order of first
// appearance; in its group's buffer each tensor is dense (contiguous) at an offset aligned to
// 64 bytes (the vector loads of the CPU and the GPU libraries want aligned operands). The padding
// between tensors is zero when the buffer is made and every whole-buffer operation keeps it zero
// (see the rule in FlatBuffers), so a reduction over a buffer equals one over its tensors.
//
//   net.to(device);
//   net.flatten_parameters();          // nn/module.h: parameters and gradients in flat buffers
//   nn::RAdam opt(net.parameters());   // finds them: its moments are flat, a few kernels a step
//   nn::Ema ema(net.parameters());     // flat shadows: one lerp per buffer
//
// Nothing changes in what is saved: state dicts, optimizer and EMA states keep their names and
// per-tensor shapes, and load into flat and non-flat models alike.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "autograd/ops.h"

namespace cm::nn {

class FlatBuffers {
 public:
  // One group: a 1-d buffer of one dtype and device and the tensors that live in it.
  struct Group {
    Tensor data;                  // 1-d, the whole buffer
    std::vector<size_t> members;  // indices of its tensors, increasing
  };

  FlatBuffers() = default;
  // Zeroed buffers laid out for tensors of the shapes, dtypes and devices of `like` (their values
  // are not read; see with_values).
  explicit FlatBuffers(const std::vector<Tensor>& like);
  // Buffers holding copies of `values` (one layout as FlatBuffers(values)).
  static FlatBuffers with_values(const std::vector<Tensor>& values);
  // Zeroed buffers of the same layout as `other`.
  static FlatBuffers zeros_like(const FlatBuffers& other);

  size_t size() const { return views_.size(); }
  // Tensor i: a dense view into its group's buffer (no autograd history).
  const Tensor& view(size_t i) const { return views_.at(i); }
  const std::vector<Tensor>& views() const { return views_; }
  const std::vector<Group>& groups() const { return groups_; }
  // Tensor i's group, and where it starts in the group's buffer (in elements).
  size_t group_of(size_t i) const { return group_.at(i); }
  int64_t offset_of(size_t i) const { return offset_.at(i); }
  // The elements of tensors [first, last] (consecutive members of one group) with the padding
  // between them: a 1-d view of the group's buffer from tensor first's offset to tensor last's end.
  Tensor span(size_t first, size_t last) const;
  // True when `other` has this layout (same count, shapes, dtypes, devices, offsets).
  bool same_layout(const FlatBuffers& other) const;
  // True when ts[i] is view(i) for every i: the same tensors (not copies), as many.
  bool holds(const std::vector<Tensor>& ts) const;

  // The padding rule: an operation over a whole buffer (or a span) must map 0 to 0 on the
  // padding, e.g. a multiplication by a finite factor, a lerp between two buffers of the same
  // layout, an Adam step with eps > 0 and finite hyperparameters; others go tensor by tensor.

 private:
  std::vector<Group> groups_;
  std::vector<Tensor> views_;
  std::vector<size_t> group_;
  std::vector<int64_t> offset_;
};

// A module's parameters in flat buffers and their gradient slots (Tensor::set_grad_slot) in
// buffers of the same layout: backward writes each gradient into its slot, so after a backward
// that reached every parameter `grads` holds all the gradients, padding zero.
class FlatParameters {
 public:
  // Copies `params` (floating-point leaves) into flat buffers. params().views() are then the new
  // parameter tensors: leaves that require grad (as the old ones did), with their gradient slots
  // set; the caller puts them where the old tensors were (Module::flatten_parameters does). The
  // old tensors' gradients are not carried over. Without grads (a network that is never trained
  // by backward, such as the consistency target), no gradient buffers and no slots.
  static std::shared_ptr<const FlatParameters> create(const std::vector<Tensor>& params,
                                                      bool grads = true);
  ~FlatParameters();
  FlatParameters(const FlatParameters&) = delete;
  FlatParameters& operator=(const FlatParameters&) = delete;

  const FlatBuffers& params() const { return params_; }
  // Empty (size 0) when made without gradients.
  const FlatBuffers& grads() const { return grads_; }
  // The FlatParameters whose parameters are exactly `ps` (the parameters() of a flattened module,
  // in order), or null: how the optimizer, the EMA and the gradient utilities find the buffers.
  static std::shared_ptr<const FlatParameters> of(const std::vector<Tensor>& ps);
  // True when every parameter's gradient is defined and is its slot: then the grads' buffers hold
  // exactly the gradients (a parameter without one leaves stale values in its slot).
  bool grads_in_buffers() const;
  // Whether parameter i's gradient is defined and in its slot.
  bool grad_in_slot(size_t i) const;

 private:
  FlatParameters() = default;
  FlatBuffers params_;
  FlatBuffers grads_;
};

}  // namespace cm::nn
