// checkpoint: activation recomputation for a composite of differentiable ops (autograd/node.h).
// With recomputation on and a gradient to record, the composite runs without recording, one node
// keeps its inputs, and that node's backward runs the composite again, recording, and
// backpropagates through it: the same ops on the same inputs, so the same gradients bit for bit,
// and none of the composite's intermediates is kept between the forward and the backward. The
// output also carries how to compute it again (the composite once more, not recording), for the
// op that saves it (a convolution after it). Otherwise the composite runs and records as usual.
#include "autograd/ops/common.h"

namespace cm {

Tensor checkpoint(const char* name, const CheckpointFn& fn, const std::vector<Tensor>& inputs) {
  if (!is_recompute_enabled() || !needs_grad(inputs)) return fn(inputs);
  Tensor out;
  {
    NoGradGuard ng;
    out = fn(inputs);
  }
  std::vector<SavedTensor> saved;
  std::vector<bool> wants;
  for (const Tensor& t : inputs) {
    saved.emplace_back(t, name);
    wants.push_back(t.defined() && t.requires_grad());
  }
  // The inputs again, detached: leaves that require grad where the originals do (`grad`).
  const auto inputs_again = [saved, wants](bool grad) {
    std::vector<Tensor> v;
    for (size_t i = 0; i < saved.size(); ++i) {
      Tensor x = saved[i].defined() ? detach(saved[i].get()) : Tensor();
      if (grad && wants[i]) x.set_requires_grad(true);
      v.push_back(x);
    }
    return v;
  };
  record(name, inputs, {out}, [=](const Grads& g) {
    const RecomputeGuard off(false);  // the rerun records the composite's own nodes
    const std::vector<Tensor> in = inputs_again(true);
    Tensor o;
    {
      EnableGradGuard eg;
      o = fn(in);
    }
    backward({o}, {g[0]});
    Grads grads;
    for (size_t i = 0; i < in.size(); ++i) grads.push_back(wants[i] ? in[i].grad() : Tensor());
    return grads;
  });
  set_recompute(out, [=] {
    const RecomputeGuard off(false);
    return fn(inputs_again(false));
  });
  return out;
}

}  // namespace cm
