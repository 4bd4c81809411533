// Optimizers over a flat list of parameters (the f32 master weights of a model): Adam, AdamW and
// RAdam with the exact semantics of torch 1.13's default (single-tensor) implementations, global
// gradient-norm clipping, the linear learning-rate warm-up, and the non-finite gradient check that
// the loss scaler (nn/amp.h) and the training loops use.
//
// An optimizer keeps one state per parameter, created at the parameter's first update: its own
// step count (as torch: a parameter that had no gradient in some step() is skipped and its count
// lags) and its moment tensors, of the parameter's dtype and device. state() / load_state() save
// and restore all of it, so a run resumed from a checkpoint continues bit for bit.
//
// Fused and flat (the default, AdamOptions::fused): each update is one kernel (Backend::adam_step)
// per parameter instead of about ten ops; and when the parameters are those of a flattened module
// (Module::flatten_parameters, nn/flat.h) the moments live in flat buffers of the same layout and
// one kernel updates every run of consecutive parameters that have their gradients in the flat
// gradient buffer and share a step count: a few kernels per step for the whole model. The
// composite (update(), op by op) runs for f16/bf16 parameters and with fused = false; the fused
// kernel computes the same operations in the same order.
//
//   nn::RAdam opt(model.parameters(), {.lr = 4e-4});
//   loss.backward();
//   opt.step();       // under no-grad, in place
//   opt.zero_grad();  // drops the gradients
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "nn/flat.h"

namespace cm::nn {

// The state of one parameter: how many updates it has had and its named tensors ("exp_avg", ...).
struct ParamState {
  int64_t step = 0;
  std::map<std::string, Tensor> tensors;
};

class Optimizer {
 public:
  // params: distinct floating-point leaves (they need not require grad: one without a gradient is
  // never updated). `name` prefixes error messages ("Adam", "RAdam").
  Optimizer(std::vector<Tensor> params, double lr, std::string name);
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // Updates, in place and under no-grad, every parameter whose gradient is defined; parameters
  // without a gradient are skipped and keep their state (their step count does not advance).
  void step();
  // Drops every parameter's gradient (sets it undefined, as torch's zero_grad(set_to_none=True)).
  void zero_grad();

  const std::vector<Tensor>& params() const { return params_; }
  const std::string& name() const { return name_; }
  double lr() const { return lr_; }
  void set_lr(double lr);
  // Number of step() calls so far.
  int64_t steps() const { return steps_; }
  // The state of parameter i (null before its first update).
  const ParamState* param_state(size_t i) const;

  // Everything needed to resume: "steps" and "lr" (0-d f64), and for every parameter that has
  // been updated "<i>.step" (0-d i64) and "<i>.<tensor name>" (the parameter's dtype and device).
  // The tensors are copies. As torch's load_state_dict, load_state restores the learning rate.
  std::map<std::string, Tensor> state() const;
  // Restores a state() of an optimizer of the same kind over parameters of the same shapes;
  // parameters absent from it start fresh. Unknown keys, missing tensors and shape mismatches are
  // errors that list the offending entries.
  void load_state(const std::map<std::string, Tensor>& state);

 protected:
  // Names of the per-parameter state tensors, in a fixed order.
  virtual std::vector<std::string> state_names() const = 0;
  // Updates param from grad (same shape, dtype and device); s.step already counts this update.
  // Runs under no-grad. The composite, op by op.
  virtual void update(Tensor& param, const Tensor& grad, ParamState& s) = 0;
  // The same update in one kernel, on param, grad and the state tensors (state_names() order),
  // for the step count `step`; false when it cannot (dtype, layout, fused off), and then nothing
  // was written. With keeps_zeros, the operands are spans of flat buffers that include padding:
  // it must also be false unless the update maps zeros to zeros (see nn/flat.h).
  virtual bool fused_update(const Tensor& param, const Tensor& grad,
                            const std::vector<Tensor>& state, int64_t step, bool keeps_zeros) {
    (void)param, (void)grad, (void)state, (void)step, (void)keeps_zeros;
    return false;
  }
  // The parameters' flat buffers when they are a flattened module's (else null).
  const std::shared_ptr<const FlatParameters>& flat() const { return flat_; }

 private:
  // The state of parameter i for its first update: zeros (views of the flat state buffers when
  // the parameters are flat).
  ParamState fresh_state(size_t i);

  std::vector<Tensor> params_;
  std::shared_ptr<const FlatParameters> flat_;
  std::vector<FlatBuffers> flat_state_;           // one per state name, the parameters' layout
  std::vector<std::optional<ParamState>> state_;  // empty until the parameter's first update
  double lr_;
  int64_t steps_ = 0;
  std::string name_;
};

// Hyperparameters of Adam, AdamW and RAdam (torch's defaults; note that torch's AdamW defaults to
// weight_decay = 1e-2, these options to 0).
struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0;
  // false: L2 penalty coupled into the gradient (grad += weight_decay·param), as torch's Adam and
  // RAdam. true: decoupled decay param *= 1 − lr·weight_decay before the update, as torch's AdamW
  // (and RAdam(decoupled_weight_decay=True) of torch ≥ 2.0).
  bool decoupled_weight_decay = false;
  // One kernel per update (and per run of flat parameters) instead of the op-by-op composite;
  // the same operations in the same order (see Optimizer).
  bool fused = true;
};

// Adam (torch.optim.Adam, amsgrad=False), for step t of a parameter:
//   g = grad (+ weight_decay·param when coupled)
//   m = β1·m + (1 − β1)·g;  v = β2·v + (1 − β2)·g²
//   param −= lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + eps)
// State "exp_avg" (m), "exp_avg_sq" (v).
class Adam : public Optimizer {
 public:
  Adam(std::vector<Tensor> params, AdamOptions opt = {});
  const AdamOptions& options() const { return opt_; }

 protected:
  Adam(std::vector<Tensor> params, AdamOptions opt, std::string name);
  std::vector<std::string> state_names() const override { return {"exp_avg", "exp_avg_sq"}; }
  void update(Tensor& param, const Tensor& grad, ParamState& s) override;
  bool fused_update(const Tensor& param, const Tensor& grad, const std::vector<Tensor>& state,
                    int64_t step, bool keeps_zeros) override;

 private:
  AdamOptions opt_;
};

// AdamW (torch.optim.AdamW): Adam with decoupled weight decay (decoupled_weight_decay is forced
// on).
class AdamW : public Adam {
 public:
  AdamW(std::vector<Tensor> params, AdamOptions opt = {});
};

// Rectified Adam (torch.optim.RAdam), the consistency models' optimizer. With m, v as in Adam,
//   ρ∞ = 2/(1 − β2) − 1,  ρt = ρ∞ − 2t·β2^t/(1 − β2^t),  m̂ = m/(1 − β1^t)
//   ρt > 5:  r = √((ρt − 4)(ρt − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρt))
//            param −= m̂·lr·(√(1 − β2^t) / (√v + eps))·r
//   else:    param −= m̂·lr   (the un-adapted update of the first steps)
// State "exp_avg", "exp_avg_sq".
class RAdam : public Optimizer {
 public:
  RAdam(std::vector<Tensor> params, AdamOptions opt = {});
  const AdamOptions& options() const { return opt_; }

 protected:
  std::vector<std::string> state_names() const override { return {"exp_avg", "exp_avg_sq"}; }
  void update(Tensor& param, const Tensor& grad, ParamState& s) override;
  bool fused_update(const Tensor& param, const Tensor& grad, const std::vector<Tensor>& state,
                    int64_t step, bool keeps_zeros) override;

 private:
  AdamOptions opt_;
};

// ---- gradient utilities
// ------------------------------------------------------------------------------------------
// Over the parameters of a flattened module whose gradients are all in the flat gradient buffer
// (nn/flat.h), each of these works a buffer at a time (a few kernels for the whole model).

// The L2 norm of all defined gradients of params taken together (as one concatenated vector),
// computed in f64 whatever their dtype; 0 when no parameter has a gradient.
double grad_norm(const std::vector<Tensor>& params);

// Scales the gradients so that their global L2 norm is at most max_norm, as
// torch.nn.utils.clip_grad_norm_: each gradient *= max_norm / (total + 1e-6) when that factor is
// below 1 (or NaN, as torch: non-finite gradients then become NaN). Returns the total norm before
// clipping. The norm is accumulated in f64 (torch uses the gradients' dtype).
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

// Multiplies every defined gradient by factor, in place (the loss scaler's unscaling).
void scale_grads(const std::vector<Tensor>& params, double factor);

// True when every element of every defined gradient is finite (no inf, no NaN).
bool grads_finite(const std::vector<Tensor>& params);

// For each tensor, the number of its elements that are NaN or infinite (0 for undefined and
// integer tensors), counted on the tensors' device with one transfer to the host. What a run
// reports when it finds non-finite values: which tensors, and how much of each.
std::vector<int64_t> count_nonfinite(const std::vector<Tensor>& tensors);

// The linear learning-rate warm-up of EDM (training_loop.py: lr·min(cur_nimg / rampup_nimg, 1)):
// base_lr·min(progress / warmup, 1), with progress and warmup in one unit (steps or images) and
// progress counted before the current step (so the first step has lr 0). warmup ≤ 0 means no
// warm-up (base_lr).
double warmup_lr(double base_lr, double progress, double warmup);

}  // namespace cm::nn
