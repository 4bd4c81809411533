// Dynamic loss scaler (see amp.h).
#include "nn/amp.h"

#include <algorithm>
#include <cmath>

#include "nn/optim.h"

namespace cm::nn {

DynamicLossScaler::DynamicLossScaler(LossScalerOptions opt) : opt_(opt) {
  CM_CHECK(std::isfinite(opt_.initial_lg), "DynamicLossScaler: invalid initial_lg ",
           opt_.initial_lg);
  CM_CHECK(opt_.growth >= 0 && std::isfinite(opt_.growth), "DynamicLossScaler: invalid growth ",
           opt_.growth);
  CM_CHECK(opt_.backoff >= 0 && std::isfinite(opt_.backoff), "DynamicLossScaler: invalid backoff ",
           opt_.backoff);
  CM_CHECK(opt_.min_lg <= opt_.initial_lg && opt_.initial_lg <= opt_.max_lg,
           "DynamicLossScaler: initial_lg ", opt_.initial_lg, " is outside [min_lg, max_lg] = [",
           opt_.min_lg, ", ", opt_.max_lg, "]");
  lg_ = opt_.initial_lg;
}

double DynamicLossScaler::scale_factor() const {
  return std::exp2(lg_);
}

Tensor DynamicLossScaler::scale(const Tensor& loss) const {
  CM_CHECK(loss.dtype() == DType::f32 || loss.dtype() == DType::f64,
           "DynamicLossScaler::scale: the loss has dtype ", dtype_name(loss.dtype()),
           "; compute it in f32 (its scaled gradient 2^", lg_,
           " would overflow a low-precision loss)");
  return mul(loss, scale_factor());
}

bool DynamicLossScaler::unscale_and_check(const std::vector<Tensor>& params) {
  if (!grads_finite(params)) {
    for (const Tensor& p : params) p.zero_grad();
    const double next = std::max(lg_ - opt_.backoff, opt_.min_lg);
    if (next < lg_) ++scale_decreases_;
    lg_ = next;
    ++skipped_steps_;
    return false;
  }
  scale_grads(params, 1.0 / scale_factor());
  const double next = std::min(lg_ + opt_.growth, opt_.max_lg);
  if (next > lg_) ++scale_increases_;
  lg_ = next;
  ++good_steps_;
  return true;
}

std::map<std::string, Tensor> DynamicLossScaler::state() const {
  auto count = [](int64_t v) { return scalar_tensor(double(v), {.dtype = DType::i64}); };
  return {{"lg", scalar_tensor(lg_, {.dtype = DType::f64})},
          {"good_steps", count(good_steps_)},
          {"skipped_steps", count(skipped_steps_)},
          {"scale_increases", count(scale_increases_)},
          {"scale_decreases", count(scale_decreases_)}};
}

void DynamicLossScaler::load_state(const std::map<std::string, Tensor>& state) {
  const char* keys[] = {"lg", "good_steps", "skipped_steps", "scale_increases", "scale_decreases"};
  std::string problems;
  for (const char* k : keys) {
    auto it = state.find(k);
    if (it == state.end())
      problems += std::string(problems.empty() ? "" : ", ") + "missing \"" + k + "\"";
    else if (it->second.numel() != 1)
      problems += std::string(problems.empty() ? "" : ", ") + "\"" + k + "\" should hold one value";
  }
  for (const auto& [k, t] : state)
    if (std::find_if(std::begin(keys), std::end(keys),
                     [&k = k](const char* e) { return k == e; }) == std::end(keys))
      problems += std::string(problems.empty() ? "" : ", ") + "unexpected \"" + k + "\"";
  CM_CHECK(problems.empty(), "DynamicLossScaler::load_state: the state does not match: ", problems);
  const double lg = state.at("lg").item<double>();
  CM_CHECK(std::isfinite(lg), "DynamicLossScaler::load_state: invalid lg ", lg);
  lg_ = lg;
  good_steps_ = state.at("good_steps").item<int64_t>();
  skipped_steps_ = state.at("skipped_steps").item<int64_t>();
  scale_increases_ = state.at("scale_increases").item<int64_t>();
  scale_decreases_ = state.at("scale_decreases").item<int64_t>();
}

}  // namespace cm::nn
