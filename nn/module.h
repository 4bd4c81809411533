// Module: a named tree of parameters, buffers and child modules with a train/eval flag.
//
// A module owns its tensors as member fields and registers them by name; names are joined with
// dots down the tree ("enc.32x32_block0.conv0.weight"), matching PyTorch's state-dict keys so that
// checkpoints convert without a mapping table. The registry keeps pointers to the member fields,
// so moving a module to another device or dtype updates the members themselves. Modules are
// neither copyable nor movable (the registry points into them).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/ops.h"

namespace cm::nn {

class FlatParameters;  // nn/flat.h

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // ---- the tree
  // ------------------------------------------------------------------------------------------------
  // Parameters (trainable, requires_grad) in registration order, children after the module's own.
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  std::vector<Tensor> parameters() const;
  // Buffers: state that is saved but not trained (EDM's resample filters, Fourier frequencies).
  std::vector<std::pair<std::string, Tensor>> named_buffers() const;
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const {
    return children_;
  }
  // Every module of the tree with its dotted name ("" for this one), pre-order.
  std::vector<std::pair<std::string, const Module*>> named_modules() const;
  // The class name shown in summaries ("UNetBlock", "Conv2d", ...).
  virtual std::string type_name() const { return "Module"; }

  // Number of parameter elements (trainable only, or buffers too).
  int64_t num_parameters(bool include_buffers = false) const;

  // ---- modes and placement
  // ---------------------------------------------------------------------------------
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  // Moves (or converts) every parameter and buffer; parameters stay leaves that require grad.
  void to(Device device);
  void to(DType dtype);
  Device device() const;
  void zero_grad();
  // Moves the parameters into flat buffers (nn/flat.h): one per dtype and device, each parameter a
  // view into it, and their gradients into buffers of the same layout; the optimizer, the EMAs
  // and the gradient utilities then work a buffer at a time. Values are kept, gradients dropped.
  // Flatten after placing the module (to() flattens a flattened module again after moving it)
  // and before giving its parameters() to an optimizer or an EMA, which keep tensor handles.
  // grads = false: no gradient buffers (a network never trained by backward, e.g. a target).
  void flatten_parameters(bool grads = true);
  // The buffers of a flattened module (null when not flattened, or when a child was moved since).
  std::shared_ptr<const FlatParameters> flat_parameters() const;

  // ---- state
  // -------------------------------------------------------------------------------------------------------
  // Parameters and buffers by dotted name.
  std::map<std::string, Tensor> state_dict() const;
  // Copies values into the module's tensors (converting dtype and device). With strict, any
  // missing, unexpected or mis-shaped entry is an error that lists all of them.
  void load_state_dict(const std::map<std::string, Tensor>& state, bool strict = true);
  // Copies another module's values (same structure) into this one, under no-grad.
  void copy_from(const Module& other);

 protected:
  // Registers a member tensor as a parameter (sets requires_grad) or buffer. Returns the member.
  Tensor& register_parameter(const std::string& name, Tensor& member);
  Tensor& register_buffer(const std::string& name, Tensor& member);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    check_name(name);
    children_.emplace_back(name, m);
    return m;
  }

 private:
  void check_name(const std::string& name) const;
  void for_each_tensor(const std::function<void(const std::string&, Tensor&, bool is_param)>& f,
                       const std::string& prefix = "") const;

  std::vector<std::pair<std::string, Tensor*>> params_;
  std::vector<std::pair<std::string, Tensor*>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
  std::shared_ptr<const FlatParameters> flat_;
};

// A table of a module tree: one row per module with its type, own and total parameter counts.
std::string summary(const Module& m, int max_depth = 2);

}  // namespace cm::nn
