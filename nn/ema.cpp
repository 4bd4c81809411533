// EMA of parameters: decay rules (fixed, EDM half-life with ramp-up, per step) and in-place
// shadow updates.
#include "nn/ema.h"

#include <algorithm>
#include <cmath>
#include <set>

namespace cm::nn {

double edm_ema_beta(double batch_size, double images_seen, double halflife_kimg,
                    std::optional<double> rampup_ratio) {
  CM_CHECK(batch_size > 0 && images_seen >= 0 && halflife_kimg >= 0,
           "edm_ema_beta: invalid batch_size ", batch_size, ", images_seen ", images_seen,
           " or halflife_kimg ", halflife_kimg);
  double halflife_nimg = halflife_kimg * 1000;
  if (rampup_ratio) halflife_nimg = std::min(halflife_nimg, images_seen * *rampup_ratio);
  return std::pow(0.5, batch_size / std::max(halflife_nimg, 1e-8));
}

// ---- EmaDecay
// -------------------------------------------------------------------------------------------------------

EmaDecay EmaDecay::fixed(double decay) {
  CM_CHECK(decay >= 0 && decay <= 1, "EmaDecay::fixed: decay ", decay, " is outside [0, 1]");
  EmaDecay r;
  r.kind_ = Kind::Fixed;
  r.decay_ = decay;
  return r;
}

EmaDecay EmaDecay::half_life(double halflife_kimg, std::optional<double> rampup_ratio) {
  CM_CHECK(halflife_kimg >= 0, "EmaDecay::half_life: invalid halflife_kimg ", halflife_kimg);
  CM_CHECK(!rampup_ratio || *rampup_ratio >= 0, "EmaDecay::half_life: invalid rampup_ratio ",
           *rampup_ratio);
  EmaDecay r;
  r.kind_ = Kind::HalfLife;
  r.halflife_kimg_ = halflife_kimg;
  r.rampup_ratio_ = rampup_ratio;
  return r;
}

EmaDecay EmaDecay::per_step(std::function<double(int64_t)> decay_at) {
  CM_CHECK(decay_at != nullptr, "EmaDecay::per_step: no decay function");
  EmaDecay r;
  r.kind_ = Kind::PerStep;
  r.decay_at_ = std::move(decay_at);
  return r;
}

double EmaDecay::at(int64_t updates, double images_seen, double batch_size) const {
  switch (kind_) {
    case Kind::Fixed:
      return decay_;
    case Kind::HalfLife:
      return edm_ema_beta(batch_size, images_seen, halflife_kimg_, rampup_ratio_);
    case Kind::PerStep:
      return decay_at_(updates);
  }
  return decay_;
}

// ---- Ema
// ------------------------------------------------------------------------------------------------------------

namespace {
// An own shadow's dtype: f32 for f16/bf16 sources (their EMA would round away), else the source's.
DType shadow_dtype(DType source) {
  return source == DType::f16 || source == DType::bf16 ? DType::f32 : source;
}

void check_source(const std::vector<Tensor>& source) {
  std::set<const TensorImpl*> seen;
  for (size_t i = 0; i < source.size(); ++i) {
    CM_CHECK(source[i].defined(), "Ema: source tensor ", i, " is undefined");
    CM_CHECK(is_floating(source[i].dtype()), "Ema: source tensor ", i, " has dtype ",
             dtype_name(source[i].dtype()));
    CM_CHECK(seen.insert(source[i].impl()).second, "Ema: source tensor ", i,
             " appears twice in the list");
  }
}
}  // namespace

Ema::Ema(std::vector<Tensor> source, EmaDecay rule)
    : source_(std::move(source)), rule_(std::move(rule)) {
  check_source(source_);
  NoGradGuard ng;
  const std::shared_ptr<const FlatParameters> flat = FlatParameters::of(source_);
  const bool same_dtypes = std::all_of(source_.begin(), source_.end(), [](const Tensor& s) {
    return shadow_dtype(s.dtype()) == s.dtype();
  });
  if (flat && same_dtypes) {
    // flat shadows of the source's layout: one lerp per buffer
    own_ = FlatBuffers::with_values(source_);
    shadow_ = own_.views();
    pair_groups(flat->params(), own_);
    return;
  }
  for (const Tensor& s : source_) shadow_.push_back(to(clone(detach(s)), shadow_dtype(s.dtype())));
}

void Ema::pair_groups(const FlatBuffers& source, const FlatBuffers& shadow) {
  if (!source.same_layout(shadow)) return;
  for (size_t g = 0; g < source.groups().size(); ++g)
    pairs_.emplace_back(shadow.groups()[g].data, source.groups()[g].data);
}

Ema::Ema(std::vector<Tensor> source, std::vector<Tensor> shadow, EmaDecay rule)
    : source_(std::move(source)), shadow_(std::move(shadow)), rule_(std::move(rule)) {
  check_source(source_);
  CM_CHECK(shadow_.size() == source_.size(), "Ema: ", shadow_.size(), " shadow tensors for ",
           source_.size(), " source tensors");
  std::set<const TensorImpl*> seen;
  for (size_t i = 0; i < shadow_.size(); ++i) {
    const Tensor& t = shadow_[i];
    CM_CHECK(t.defined() && is_floating(t.dtype()), "Ema: shadow tensor ", i,
             " is undefined or not floating point");
    CM_CHECK(t.shape() == source_[i].shape(), "Ema: shadow tensor ", i, " has shape ",
             shape_str(t.shape()), ", source ", shape_str(source_[i].shape()));
    CM_CHECK(t.storage() != source_[i].storage(), "Ema: shadow tensor ", i,
             " shares memory with its source");
    CM_CHECK(seen.insert(t.impl()).second, "Ema: shadow tensor ", i, " appears twice in the list");
  }
  const std::shared_ptr<const FlatParameters> fs = FlatParameters::of(source_);
  const std::shared_ptr<const FlatParameters> fd = FlatParameters::of(shadow_);
  if (fs && fd) pair_groups(fs->params(), fd->params());  // two flattened modules of one layout
  reset_to_source();
}

void Ema::copy_tensors(const std::vector<Tensor>& from, const char* op) {
  CM_CHECK(from.size() == shadow_.size(), op, ": ", from.size(), " tensors for ", shadow_.size(),
           " shadows");
  for (size_t i = 0; i < from.size(); ++i)
    CM_CHECK(from[i].shape() == shadow_[i].shape(), op, ": tensor ", i, " has shape ",
             shape_str(from[i].shape()), ", shadow ", shape_str(shadow_[i].shape()));
  NoGradGuard ng;
  for (size_t i = 0; i < from.size(); ++i) copy_(shadow_[i], from[i]);
}

void Ema::reset_to_source() {
  copy_tensors(source_, "Ema::reset_to_source");
}

void Ema::update(double decay) {
  CM_CHECK(decay >= 0 && decay <= 1, "Ema::update: decay ", decay, " is outside [0, 1]");
  NoGradGuard ng;
  auto one = [&](Tensor& shadow, const Tensor& source) {
    if (decay == 0)
      copy_(shadow, source);  // exact, where lerp with weight 1 could round
    else if (decay != 1)
      lerp_(shadow, source, 1 - decay);
  };
  if (!pairs_.empty()) {
    for (auto& [shadow, source] : pairs_) one(shadow, source);  // whole buffers, padding included
  } else {
    for (size_t i = 0; i < shadow_.size(); ++i) one(shadow_[i], source_[i]);
  }
  ++updates_;
}

double Ema::step(int64_t batch_size) {
  CM_CHECK(batch_size > 0, "Ema::step: invalid batch_size ", batch_size);
  const double decay = rule_.at(updates_, images_seen_, double(batch_size));
  update(decay);
  images_seen_ += double(batch_size);
  return decay;
}

void Ema::copy_to(Module& m) const {
  std::vector<Tensor> dst = m.parameters();
  CM_CHECK(dst.size() == shadow_.size(), "Ema::copy_to: the module has ", dst.size(),
           " parameters, the EMA ", shadow_.size());
  for (size_t i = 0; i < dst.size(); ++i)
    CM_CHECK(dst[i].shape() == shadow_[i].shape(), "Ema::copy_to: parameter ", i, " has shape ",
             shape_str(dst[i].shape()), ", shadow ", shape_str(shadow_[i].shape()));
  NoGradGuard ng;
  for (size_t i = 0; i < dst.size(); ++i) copy_(dst[i], shadow_[i]);
}

void Ema::copy_from(const Module& m) {
  copy_tensors(m.parameters(), "Ema::copy_from");
}

std::map<std::string, Tensor> Ema::state() const {
  NoGradGuard ng;
  std::map<std::string, Tensor> out;
  for (size_t i = 0; i < shadow_.size(); ++i)
    out[std::to_string(i) + ".shadow"] = clone(shadow_[i]);
  out["updates"] = scalar_tensor(double(updates_), {.dtype = DType::i64});
  out["images_seen"] = scalar_tensor(images_seen_, {.dtype = DType::f64});
  return out;
}

void Ema::load_state(const std::map<std::string, Tensor>& state) {
  std::vector<std::string> problems;
  std::set<std::string> expected = {"updates", "images_seen"};
  for (size_t i = 0; i < shadow_.size(); ++i) expected.insert(std::to_string(i) + ".shadow");
  for (const std::string& k : expected)
    if (!state.count(k)) problems.push_back("missing \"" + k + "\"");
  for (const auto& [k, t] : state)
    if (!expected.count(k)) problems.push_back("unexpected \"" + k + "\"");
  for (size_t i = 0; i < shadow_.size(); ++i) {
    auto it = state.find(std::to_string(i) + ".shadow");
    if (it != state.end() && it->second.shape() != shadow_[i].shape())
      problems.push_back("\"" + it->first + "\" has shape " + shape_str(it->second.shape()) +
                         ", shadow " + shape_str(shadow_[i].shape()));
  }
  for (const char* k : {"updates", "images_seen"}) {
    auto it = state.find(k);
    if (it != state.end() && it->second.numel() != 1)
      problems.push_back(std::string("\"") + k + "\" should hold one value");
  }
  std::string msg;
  for (size_t i = 0; i < problems.size() && i < 20; ++i) msg += (i ? ", " : "") + problems[i];
  CM_CHECK(problems.empty(), "Ema::load_state: the state does not match this EMA: ", msg);
  NoGradGuard ng;
  for (size_t i = 0; i < shadow_.size(); ++i)
    copy_(shadow_[i], state.at(std::to_string(i) + ".shadow"));
  updates_ = state.at("updates").item<int64_t>();
  images_seen_ = state.at("images_seen").item<double>();
}

}  // namespace cm::nn
