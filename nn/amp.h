// Dynamic loss scaling for f16 training, as the consistency models' MixedPrecisionTrainer
// (openai/consistency_models cm/fp16_util.py): the loss is multiplied by 2^lg before backward so
// that small f16 gradients do not flush to zero; the f32 master gradients are checked and unscaled
// before the optimizer step.
//   - initial lg = 20;
//   - a good step (all gradients finite): the gradients are divided by 2^lg, the caller steps, and
//     lg grows by 0.001 (the scale doubles every 1000 good steps);
//   - inf or NaN in any gradient: the step is skipped, the gradients are dropped, and lg drops
//   by 1.
// (fp16_util tests the f32 norm of the gradients for inf/NaN; for gradients copied from f16 that
// norm cannot overflow, so this is the same test as grads_finite.)
//
//   nn::DynamicLossScaler scaler;
//   scaler.scale(loss).backward();                 // model grads (f16) ...
//   ... copy them into the f32 master params' grads ...
//   if (scaler.unscale_and_check(master_params)) opt.step();
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "autograd/ops.h"

namespace cm::nn {

struct LossScalerOptions {
  double initial_lg = 20;  // log2 of the first scale
  double growth = 1e-3;    // added to lg after each good step
  double backoff = 1;      // subtracted from lg at each skipped step
  double min_lg = -std::numeric_limits<double>::infinity();  // lg is clamped to [min_lg, max_lg]
  double max_lg = std::numeric_limits<double>::infinity();
};

class DynamicLossScaler {
 public:
  explicit DynamicLossScaler(LossScalerOptions opt = {});

  // loss·2^lg (differentiable). The loss must be f32 or f64: the gradient that backward sends
  // into the loss is 2^lg (about 10^6), beyond f16's range, so an f16/bf16 loss is refused (compute
  // it from the network output converted to f32, as the consistency models' code does).
  Tensor scale(const Tensor& loss) const;
  // Checks the gradients of params (the ones backward filled through scale()). All finite: divides
  // them by 2^lg in place, grows lg, counts a good step and returns true (the caller then steps the
  // optimizer). Any inf/NaN: drops every gradient of params (so a stray optimizer step does
  // nothing), lowers lg, counts a skipped step and returns false.
  bool unscale_and_check(const std::vector<Tensor>& params);

  double lg() const { return lg_; }
  double scale_factor() const;  // 2^lg
  int64_t good_steps() const { return good_steps_; }
  int64_t skipped_steps() const { return skipped_steps_; }
  // Times lg actually went up / down (differs from good / skipped steps at the clamps, or with
  // growth 0).
  int64_t scale_increases() const { return scale_increases_; }
  int64_t scale_decreases() const { return scale_decreases_; }
  const LossScalerOptions& options() const { return opt_; }

  // "lg" (0-d f64) and the four counters (0-d i64).
  std::map<std::string, Tensor> state() const;
  void load_state(const std::map<std::string, Tensor>& state);

 private:
  LossScalerOptions opt_;
  double lg_;
  int64_t good_steps_ = 0, skipped_steps_ = 0, scale_increases_ = 0, scale_decreases_ = 0;
};

}  // namespace cm::nn
