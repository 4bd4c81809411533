// Adam, AdamW, RAdam, gradient clipping and warm-up. The update formulas follow torch 1.13's
// _single_tensor_adam / _single_tensor_adamw / _single_tensor_radam operation by operation (same
// scalar expressions, same order of tensor ops), so f64 runs agree with PyTorch to rounding.
#include "nn/optim.h"

#include <algorithm>
#include <cmath>
#include <set>

namespace cm::nn {

namespace {

std::string list_names(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size() && i < 20; ++i) s += (i ? ", " : "") + v[i];
  if (v.size() > 20) s += ", ... (" + std::to_string(v.size()) + " in all)";
  return s;
}

// "<i>.<rest>" -> (i, rest); nullopt when the key has no numeric prefix.
std::optional<std::pair<size_t, std::string>> split_key(const std::string& key) {
  const size_t dot = key.find('.');
  if (dot == 0 || dot == std::string::npos) return std::nullopt;
  for (size_t c = 0; c < dot; ++c)
    if (key[c] < '0' || key[c] > '9') return std::nullopt;
  return std::make_pair(size_t(std::stoull(key.substr(0, dot))), key.substr(dot + 1));
}

double scalar_of(const std::map<std::string, Tensor>& state, const std::string& key,
                 const std::string& who) {
  const Tensor& t = state.at(key);
  CM_CHECK(t.numel() == 1, who, "::load_state: \"", key, "\" should hold one value, has shape ",
           shape_str(t.shape()));
  return t.item<double>();
}

void check_adam_options(const AdamOptions& o, const std::string& who) {
  CM_CHECK(o.lr >= 0, who, ": invalid learning rate ", o.lr);
  CM_CHECK(o.eps >= 0, who, ": invalid eps ", o.eps);
  CM_CHECK(o.beta1 >= 0 && o.beta1 < 1, who, ": invalid beta1 ", o.beta1, " (need 0 <= beta1 < 1)");
  CM_CHECK(o.beta2 >= 0 && o.beta2 < 1, who, ": invalid beta2 ", o.beta2, " (need 0 <= beta2 < 1)");
  CM_CHECK(o.weight_decay >= 0, who, ": invalid weight_decay ", o.weight_decay);
}

}  // namespace

// ---- Optimizer
// ------------------------------------------------------------------------------------------------------

Optimizer::Optimizer(std::vector<Tensor> params, double lr, std::string name)
    : params_(std::move(params)), state_(params_.size()), lr_(lr), name_(std::move(name)) {
  CM_CHECK(lr >= 0, name_, ": invalid learning rate ", lr);
  std::set<const TensorImpl*> seen;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i];
    CM_CHECK(p.defined(), name_, ": parameter ", i, " is undefined");
    CM_CHECK(is_floating(p.dtype()), name_, ": parameter ", i, " has dtype ", dtype_name(p.dtype()),
             " (parameters are floating point)");
    CM_CHECK(p.is_leaf(), name_, ": parameter ", i, " is not a leaf (it has a grad_fn)");
    CM_CHECK(seen.insert(p.impl()).second, name_, ": parameter ", i, " appears twice in the list");
  }
  flat_ = FlatParameters::of(params_);
}

ParamState Optimizer::fresh_state(size_t i) {
  const std::vector<std::string> names = state_names();
  if (flat_ && flat_state_.empty())
    for (size_t k = 0; k < names.size(); ++k)
      flat_state_.push_back(FlatBuffers::zeros_like(flat_->params()));
  ParamState s;
  for (size_t k = 0; k < names.size(); ++k) {
    if (flat_) {
      Tensor v = flat_state_[k].view(i);
      zero_(v);  // a parameter that starts again (load_state without it) may have old values
      s.tensors[names[k]] = v;
    } else {
      s.tensors[names[k]] = zeros_like(params_[i]);
    }
  }
  return s;
}

void Optimizer::set_lr(double lr) {
  CM_CHECK(lr >= 0, name_, ": invalid learning rate ", lr);
  lr_ = lr;
}

const ParamState* Optimizer::param_state(size_t i) const {
  CM_CHECK(i < params_.size(), name_, "::param_state: index ", i, " out of range (", params_.size(),
           " parameters)");
  return state_[i] ? &*state_[i] : nullptr;
}

void Optimizer::step() {
  NoGradGuard ng;
  std::vector<size_t> todo;  // the parameters with a gradient, in order
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i];
    const Tensor g = p.grad();
    if (!g.defined()) continue;
    CM_CHECK(g.shape() == p.shape() && g.dtype() == p.dtype() && g.device() == p.device(), name_,
             "::step: the gradient of parameter ", i, " (", shape_str(g.shape()), " ",
             dtype_name(g.dtype()), " on ", g.device().str(), ") does not match the parameter (",
             shape_str(p.shape()), " ", dtype_name(p.dtype()), " on ", p.device().str(), ")");
    if (!state_[i]) state_[i] = fresh_state(i);
    ++state_[i]->step;
    todo.push_back(i);
  }
  const std::vector<std::string> names = state_names();
  auto state_of = [&](size_t i) {
    std::vector<Tensor> v;
    for (const std::string& n : names) v.push_back(state_[i]->tensors.at(n));
    return v;
  };
  for (size_t k = 0; k < todo.size();) {
    const size_t i = todo[k];
    // A run of flat parameters: consecutive in one buffer, gradients in the flat gradient
    // buffer, one step count. One kernel over the spans of the four buffers.
    size_t last = k;
    if (flat_ && flat_->grad_in_slot(i)) {
      const FlatBuffers& fp = flat_->params();
      while (last + 1 < todo.size() && todo[last + 1] == todo[last] + 1 &&
             fp.group_of(todo[last + 1]) == fp.group_of(i) && flat_->grad_in_slot(todo[last + 1]) &&
             state_[todo[last + 1]]->step == state_[i]->step)
        ++last;
    }
    if (last > k) {
      const size_t j = todo[last];
      std::vector<Tensor> st;
      for (const FlatBuffers& b : flat_state_) st.push_back(b.span(i, j));
      if (fused_update(flat_->params().span(i, j), flat_->grads().span(i, j), st, state_[i]->step,
                       true)) {
        k = last + 1;
        continue;
      }
    }
    for (; k <= last; ++k) {  // one at a time
      const size_t q = todo[k];
      if (!fused_update(params_[q], params_[q].grad(), state_of(q), state_[q]->step, false))
        update(params_[q], params_[q].grad(), *state_[q]);
    }
  }
  ++steps_;
}

void Optimizer::zero_grad() {
  for (Tensor& p : params_) p.zero_grad();
}

std::map<std::string, Tensor> Optimizer::state() const {
  NoGradGuard ng;
  std::map<std::string, Tensor> out;
  out["steps"] = scalar_tensor(double(steps_), {.dtype = DType::f64});
  out["lr"] = scalar_tensor(lr_, {.dtype = DType::f64});
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!state_[i]) continue;
    const std::string prefix = std::to_string(i) + ".";
    out[prefix + "step"] = scalar_tensor(double(state_[i]->step), {.dtype = DType::i64});
    for (const auto& [n, t] : state_[i]->tensors) out[prefix + n] = clone(t);
  }
  return out;
}

void Optimizer::load_state(const std::map<std::string, Tensor>& state) {
  const std::vector<std::string> names = state_names();
  std::vector<std::string> problems;
  std::set<std::string> used;
  for (const char* k : {"steps", "lr"}) {
    if (state.count(k))
      used.insert(k);
    else
      problems.push_back(std::string("missing \"") + k + "\"");
  }
  // Parameters with a "<i>.step" entry must have all their tensors, of the parameter's shape.
  std::vector<bool> present(params_.size(), false);
  for (const auto& [key, t] : state) {
    if (used.count(key)) continue;
    auto parsed = split_key(key);
    if (!parsed || parsed->first >= params_.size() ||
        (parsed->second != "step" &&
         std::find(names.begin(), names.end(), parsed->second) == names.end())) {
      problems.push_back("unexpected \"" + key + "\"");
      continue;
    }
    used.insert(key);
    if (parsed->second == "step") present[parsed->first] = true;
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string prefix = std::to_string(i) + ".";
    for (const std::string& n : names) {
      auto it = state.find(prefix + n);
      if (!present[i]) {
        if (it != state.end())
          problems.push_back("\"" + prefix + n + "\" without \"" + prefix + "step\"");
        continue;
      }
      if (it == state.end())
        problems.push_back("missing \"" + prefix + n + "\"");
      else if (it->second.shape() != params_[i].shape())
        problems.push_back("\"" + prefix + n + "\" has shape " + shape_str(it->second.shape()) +
                           ", parameter " + shape_str(params_[i].shape()));
    }
  }
  CM_CHECK(problems.empty(), name_,
           "::load_state: the state does not match this optimizer: ", list_names(problems));

  NoGradGuard ng;
  const double lr = scalar_of(state, "lr", name_);
  const double steps = scalar_of(state, "steps", name_);
  CM_CHECK(lr >= 0 && steps >= 0, name_, "::load_state: invalid lr ", lr, " or steps ", steps);
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!present[i]) {
      state_[i].reset();
      continue;
    }
    const std::string prefix = std::to_string(i) + ".";
    ParamState s = fresh_state(i);
    s.step = int64_t(scalar_of(state, prefix + "step", name_));
    for (const std::string& n : names) copy_(s.tensors.at(n), state.at(prefix + n));  // converts
    state_[i] = std::move(s);
  }
  lr_ = lr;
  steps_ = int64_t(steps);
}

// ---- Adam / AdamW
// ---------------------------------------------------------------------------------------------------

Adam::Adam(std::vector<Tensor> params, AdamOptions opt) : Adam(std::move(params), opt, "Adam") {}

Adam::Adam(std::vector<Tensor> params, AdamOptions opt, std::string name)
    : Optimizer(std::move(params), opt.lr, std::move(name)), opt_(opt) {
  check_adam_options(opt_, this->name());
}

AdamW::AdamW(std::vector<Tensor> params, AdamOptions opt)
    : Adam(
          std::move(params),
          [&] {
            opt.decoupled_weight_decay = true;
            return opt;
          }(),
          "AdamW") {}

void Adam::update(Tensor& param, const Tensor& grad, ParamState& s) {
  const double lr = this->lr(), b1 = opt_.beta1, b2 = opt_.beta2, wd = opt_.weight_decay;
  Tensor& exp_avg = s.tensors.at("exp_avg");
  Tensor& exp_avg_sq = s.tensors.at("exp_avg_sq");
  Tensor g = grad;
  if (wd != 0) {
    if (opt_.decoupled_weight_decay)
      mul_(param, 1 - lr * wd);
    else
      g = add(grad, param, wd);
  }
  mul_(exp_avg, b1);
  add_(exp_avg, g, 1 - b1);
  mul_(exp_avg_sq, b2);
  addcmul_(exp_avg_sq, g, g, 1 - b2);

  const double t = double(s.step);
  const double bias_correction1 = 1 - std::pow(b1, t);
  const double bias_correction2 = 1 - std::pow(b2, t);
  const double step_size = lr / bias_correction1;
  const double bias_correction2_sqrt = std::sqrt(bias_correction2);
  Tensor denom = div(sqrt(exp_avg_sq), bias_correction2_sqrt);
  add_(denom, opt_.eps);
  addcdiv_(param, exp_avg, denom, -step_size);
}

namespace {

// AdamStep's scalars for the update of a parameter at its step `step` (RAdam's rectification is
// the caller's).
AdamStep adam_step_of(const AdamOptions& o, double lr, int64_t step, bool rectified) {
  const double t = double(step);
  return {.rectified = rectified,
          .lr = lr,
          .beta1 = o.beta1,
          .beta2 = o.beta2,
          .eps = o.eps,
          .weight_decay = o.weight_decay,
          .decoupled_weight_decay = o.decoupled_weight_decay,
          .bias_correction1 = 1 - std::pow(o.beta1, t),
          .bias_correction2 = 1 - std::pow(o.beta2, t)};
}

// The fused kernel's operands: f32 or f64, dense, one device. keeps_zeros: the update of zeros
// (padding) is zero: eps > 0 and finite hyperparameters (0/(√0 + eps) = 0, 0·lr = 0).
bool fused_adam(const Tensor& param, const Tensor& grad, const std::vector<Tensor>& state,
                bool keeps_zeros, const AdamStep& a) {
  if (param.dtype() != DType::f32 && param.dtype() != DType::f64) return false;
  for (const Tensor* t : {&param, &grad, &state[0], &state[1]})
    if (!t->is_contiguous() || t->dtype() != param.dtype() || t->device() != param.device() ||
        t->shape() != param.shape())
      return false;
  if (keeps_zeros) {
    const bool finite = std::isfinite(a.lr) && std::isfinite(a.weight_decay) &&
                        std::isfinite(a.eps) && std::isfinite(a.rect);
    if (!finite || !(a.eps > 0)) return false;
  }
  backend_of(param).adam_step(param, state[0], state[1], grad, a);
  param.bump_version();
  return true;
}

}  // namespace

bool Adam::fused_update(const Tensor& param, const Tensor& grad, const std::vector<Tensor>& state,
                        int64_t step, bool keeps_zeros) {
  if (!opt_.fused) return false;
  return fused_adam(param, grad, state, keeps_zeros, adam_step_of(opt_, lr(), step, false));
}

// ---- RAdam
// ----------------------------------------------------------------------------------------------------------

namespace {

// RAdam's rectification r at step t, or nullopt for the un-adapted steps (ρt ≤ 5).
std::optional<double> radam_rectification(double t, double b2) {
  const double rho_inf = 2 / (1 - b2) - 1;
  const double rho_t = rho_inf - 2 * t * std::pow(b2, t) / (1 - std::pow(b2, t));
  if (!(rho_t > 5)) return std::nullopt;
  return std::sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t));
}

}  // namespace

RAdam::RAdam(std::vector<Tensor> params, AdamOptions opt)
    : Optimizer(std::move(params), opt.lr, "RAdam"), opt_(opt) {
  check_adam_options(opt_, name());
}

void RAdam::update(Tensor& param, const Tensor& grad, ParamState& s) {
  const double lr = this->lr(), b1 = opt_.beta1, b2 = opt_.beta2, wd = opt_.weight_decay;
  Tensor& exp_avg = s.tensors.at("exp_avg");
  Tensor& exp_avg_sq = s.tensors.at("exp_avg_sq");
  const double t = double(s.step);
  const double bias_correction1 = 1 - std::pow(b1, t);
  const double bias_correction2 = 1 - std::pow(b2, t);
  Tensor g = grad;
  if (wd != 0) {
    if (opt_.decoupled_weight_decay)
      mul_(param, 1 - lr * wd);
    else
      g = add(grad, param, wd);
  }
  mul_(exp_avg, b1);
  add_(exp_avg, g, 1 - b1);
  mul_(exp_avg_sq, b2);
  addcmul_(exp_avg_sq, g, g, 1 - b2);

  Tensor bias_corrected_exp_avg = div(exp_avg, bias_correction1);
  if (const std::optional<double> r = radam_rectification(t, b2)) {
    const double rect = *r;
    Tensor exp_avg_sq_sqrt = sqrt(exp_avg_sq);
    add_(exp_avg_sq_sqrt, opt_.eps);
    Tensor adaptive_lr = rdiv(std::sqrt(bias_correction2), exp_avg_sq_sqrt);
    add_(param, mul(mul(mul(bias_corrected_exp_avg, lr), adaptive_lr), rect), -1.0);
  } else {
    add_(param, mul(bias_corrected_exp_avg, lr), -1.0);
  }
}

bool RAdam::fused_update(const Tensor& param, const Tensor& grad, const std::vector<Tensor>& state,
                         int64_t step, bool keeps_zeros) {
  if (!opt_.fused) return false;
  AdamStep a = adam_step_of(opt_, lr(), step, true);
  a.rect = radam_rectification(double(step), opt_.beta2).value_or(0.0);
  return fused_adam(param, grad, state, keeps_zeros, a);
}

// ---- gradient utilities
// ---------------------------------------------------------------------------------------------

namespace {

// The flat gradient buffers of params when they hold exactly params' gradients (a flattened
// module's parameters, every gradient in its slot; padding zero), else empty.
std::vector<Tensor> flat_grad_buffers(const std::vector<Tensor>& params) {
  const std::shared_ptr<const FlatParameters> f = FlatParameters::of(params);
  std::vector<Tensor> out;
  if (!f || !f->grads_in_buffers()) return out;
  for (const FlatBuffers::Group& g : f->grads().groups()) out.push_back(g.data);
  return out;
}

// f(g), a 0-dim tensor, for each gradient tensor g of params (each flat gradient buffer where
// they hold all the gradients, else each defined gradient; skipped where f returns an undefined
// tensor), stacked on the first one's device; undefined when there is none. The values stay on
// the device and reach the host in one transfer: one synchronisation per call, not one per
// parameter.
template <class F>
Tensor stacked_over_grads(const std::vector<Tensor>& params, F f) {
  std::vector<Tensor> grads = flat_grad_buffers(params);
  if (grads.empty())
    for (const Tensor& p : params)
      if (p.defined() && p.grad().defined()) grads.push_back(p.grad());
  std::vector<Tensor> v;
  for (const Tensor& g : grads) {
    Tensor r = f(g);
    if (r.defined()) v.push_back(v.empty() ? r : to(r, v.front().device()));
  }
  return v.empty() ? Tensor() : stack(v, 0);
}

}  // namespace

double grad_norm(const std::vector<Tensor>& params) {
  NoGradGuard ng;
  // As torch: the norm of each gradient (in f64), then the norm of those norms; over flat
  // buffers, the norm of each buffer (its padding is zero).
  const Tensor norms = stacked_over_grads(
      params, [](const Tensor& g) { return sqrt(sum(square(to(g, DType::f64)))); });
  return norms.defined() ? std::sqrt(sum(square(norms)).item<double>()) : 0.0;
}

void scale_grads(const std::vector<Tensor>& params, double factor) {
  NoGradGuard ng;
  std::vector<Tensor> flat = flat_grad_buffers(params);
  if (!flat.empty() && std::isfinite(factor)) {  // keeps the padding zero (nn/flat.h)
    for (Tensor& g : flat) mul_(g, factor);
    return;
  }
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (g.defined()) mul_(g, factor);
  }
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  CM_CHECK(max_norm >= 0, "clip_grad_norm: invalid max_norm ", max_norm);
  const double total = grad_norm(params);
  const double coef = max_norm / (total + 1e-6);
  // also when NaN, as torch (which multiplies by clamp(coef, max=1) always)
  if (!(coef >= 1.0)) scale_grads(params, coef);
  return total;
}

bool grads_finite(const std::vector<Tensor>& params) {
  NoGradGuard ng;
  // The count of non-finite elements of each floating-point gradient (or buffer).
  const Tensor bad = stacked_over_grads(params, [](const Tensor& g) {
    return is_floating(g.dtype()) ? sum(logical_not(isfinite(g))) : Tensor();
  });
  return !bad.defined() || sum(bad).item<int64_t>() == 0;
}

std::vector<int64_t> count_nonfinite(const std::vector<Tensor>& tensors) {
  NoGradGuard ng;
  std::vector<int64_t> out(tensors.size(), 0);
  std::vector<Tensor> counts;
  std::vector<size_t> which;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    if (!t.defined() || !is_floating(t.dtype()) || t.numel() == 0) continue;
    Tensor c = sum(logical_not(isfinite(t)));
    counts.push_back(counts.empty() ? c : to(c, counts.front().device()));
    which.push_back(i);
  }
  if (counts.empty()) return out;
  const std::vector<int64_t> v =
      to(to(stack(counts, 0), DType::i64), Device::cpu()).contiguous().to_vector<int64_t>();
  for (size_t k = 0; k < which.size(); ++k) out[which[k]] = v[k];
  return out;
}

double warmup_lr(double base_lr, double progress, double warmup) {
  if (!(warmup > 0)) return base_lr;
  return base_lr * std::min(progress / warmup, 1.0);
}

}  // namespace cm::nn
