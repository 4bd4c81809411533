// The autograd graph: a Node per recorded operation, edges to the nodes of its inputs, saved
// tensors with in-place-modification checks, and the grad-mode switch.
//
// How an op records itself (see any file in autograd/ops/):
//
//   Tensor exp(const Tensor& x) {
//     Tensor y = ...forward kernel...;
//     if (needs_grad({x})) {
//       SavedTensor sy(y, "exp");
//       record("exp", {x}, {y}, [sy](const Grads& g) { return Grads{mul(g[0], sy.get())}; });
//     }
//     return y;
//   }
//
// The backward function receives one gradient per output (never undefined: the engine fills in
// zeros) and returns one per input (undefined where the input needs none). Backward runs under
// no-grad, so gradients carry no history: cm computes first-order gradients.
#pragma once

#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace cm {

using Grads = std::vector<Tensor>;
using BackwardFn = std::function<Grads(const Grads& grad_outputs)>;

struct Edge {
  std::shared_ptr<Node> fn;  // null: this input needs no gradient
  uint32_t input_nr = 0;     // which output of fn the input is
};

class Node {
 public:
  explicit Node(std::string name);
  // Releases the graph behind this node iteratively (a chain of shared_ptr destructors would
  // overflow the stack on very deep graphs).
  virtual ~Node();

  const std::string& name() const { return name_; }
  uint64_t sequence_nr() const { return seq_; }

  // Input gradients from output gradients. Called once per backward pass by the engine.
  virtual Grads apply(const Grads& grad_outputs) = 0;
  // Frees the saved tensors (after backward unless the graph is retained).
  virtual void release() {}

  struct OutputMeta {
    Shape shape;
    DType dtype;
    Device device;
  };
  std::vector<Edge> next_edges;                  // one per input
  std::vector<OutputMeta> outputs;               // one per output
  std::vector<std::vector<GradHook>> pre_hooks;  // per output: hooks on its gradient

 private:
  std::string name_;
  uint64_t seq_;
};

// A node whose backward is a function (the usual case).
class FunctionNode final : public Node {
 public:
  FunctionNode(std::string name, BackwardFn fn) : Node(std::move(name)), fn_(std::move(fn)) {}
  Grads apply(const Grads& grad_outputs) override;
  void release() override { fn_ = nullptr; }

 private:
  BackwardFn fn_;
};

// The sink of a leaf that requires grad: runs the leaf's hooks and adds into its .grad.
class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(std::shared_ptr<TensorImpl> leaf);
  Grads apply(const Grads& grad_outputs) override;

 private:
  std::shared_ptr<TensorImpl> leaf_;
};

// A tensor kept for backward: a detached alias (so saving an op's own output makes no cycle) and
// the version it had when saved; get() fails if an in-place op has modified it since. A tensor
// with a recompute function (set_recompute) that it still matches is kept as that function
// instead: its memory is freed with the last other reference, and get() computes it again.
class SavedTensor {
 public:
  SavedTensor() = default;
  SavedTensor(const Tensor& t, const char* op);
  Tensor get() const;
  bool defined() const { return data_.defined() || recompute_ != nullptr; }

 private:
  Tensor data_;
  uint64_t version_ = 0;
  const char* op_ = "";
  std::shared_ptr<const Recompute> recompute_;  // set instead of data_
  std::shared_ptr<VersionCounter> counter_;     // the saved tensor's, with recompute_
  Shape shape_, strides_;                       // the saved tensor's, with recompute_
};

// ---- activation recomputation ----
//
// Off unless a scope turns it on (RecomputeGuard; a network does for its forward when its
// `recompute` option says so, nn/network.h). While on, ops whose output costs one cheap pass to
// compute again from what they keep for their own backward (group_norm and group_norm_silu from x
// and the statistics, dropout from its input and its Philox draw; checkpointed composites from
// their inputs, autograd/ops/checkpoint.cpp) attach that pass to the output (set_recompute), and
// the op that saves such an output for its backward (the next convolution) keeps the pass instead
// of the values. The gradients are bit for bit those without it: the pass is
// the same kernel on the same inputs. What it buys is memory: per U-Net block, the convolutions'
// inputs and the dropout masks are no longer stored between the forward and the backward.
bool is_recompute_enabled();
void set_recompute_enabled(bool on);

class RecomputeGuard {
 public:
  explicit RecomputeGuard(bool on) : prev_(is_recompute_enabled()) { set_recompute_enabled(on); }
  ~RecomputeGuard() { set_recompute_enabled(prev_); }
  RecomputeGuard(const RecomputeGuard&) = delete;
  RecomputeGuard& operator=(const RecomputeGuard&) = delete;

 private:
  bool prev_;
};

// Attaches fn to t (at t's current version): fn must give t's shape, strides, dtype and values
// exactly, from tensors that outlive t without holding t itself (an op's own saved tensors).
void set_recompute(const Tensor& t, std::function<Tensor()> fn);
// t's recompute function while t still matches it (not modified in place since), else null.
std::shared_ptr<const Recompute> recompute_of(const Tensor& t);

// ---- grad mode
// ------------------------------------------------------------------------------------
bool is_grad_enabled();
void set_grad_enabled(bool on);

// Disables gradient recording in a scope (the target network, the teacher, EMA and optimizer
// updates).
class NoGradGuard {
 public:
  NoGradGuard() : prev_(is_grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

class EnableGradGuard {
 public:
  EnableGradGuard() : prev_(is_grad_enabled()) { set_grad_enabled(true); }
  ~EnableGradGuard() { set_grad_enabled(prev_); }
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool prev_;
};

// ---- recording
// -------------------------------------------------------------------------------------- True when
// grad mode is on and any defined input requires grad.
bool needs_grad(std::initializer_list<Tensor> inputs);
bool needs_grad(const std::vector<Tensor>& inputs);

// Records an op: a FunctionNode with edges to the inputs, set as grad_fn of the outputs.
void record(const char* name, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs,
            BackwardFn backward);

// The edge through which a gradient reaches tensor t (its grad_fn, or its leaf accumulator).
Edge gradient_edge(const Tensor& t);

// ---- engine
// -----------------------------------------------------------------------------------------
// Backpropagates from `roots` with seed gradients `grads` (an undefined seed means ones, allowed
// for one-element roots). Gradients of leaves accumulate into .grad; saved tensors are freed unless
// retain_graph.
void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads = {},
              bool retain_graph = false);

}  // namespace cm
