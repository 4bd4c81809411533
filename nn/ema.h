// Exponential moving averages of a model's parameters: the evaluation EMAs (fixed decay, or EDM's
// half-life with ramp-up) and the consistency models' target network θ⁻ (decay μ(k) given per
// step). One model may have several at once; each is an Ema over the same source parameters.
//
// Design: an Ema holds a list of "shadow" tensors, one per source parameter, updated in place by
//   shadow = decay·shadow + (1 − decay)·source        (lerp_, under no-grad)
// The shadows are either the Ema's own copies (f32 for f16/bf16 sources, else the source dtype)
// or the parameters of a second instance of the model, bound at construction. Own copies are the
// lightest way to keep eval EMAs (copy_to() a module to sample from or save one). Binding is how
// the target network works: its module's parameters *are* the shadows, so the network that
// computes the consistency target is updated in place and needs no copy each step. Modules cannot
// be copied in cm, so the Ema never creates modules itself. The Ema keeps Tensor handles: bind
// after placing the modules on their device and dtype (Module::to replaces the tensors).
//
// Flat (nn/flat.h): when the source is a flattened module's parameters, the own shadows are flat
// buffers of its layout (for f32/f64 sources), and a bound target network flattened too pairs up
// with it; an update is then one lerp per buffer instead of one per tensor.
//
//   nn::Ema ema(net.parameters(), nn::EmaDecay::half_life(500, 0.05));   // EDM eval EMA
//   nn::Ema target(net.parameters(), target_net.parameters(), nn::EmaDecay::per_step(mu));
//   ... optimizer step ...
//   ema.step(batch_size);  target.step();                                 // or
//   target.update(mu(k))
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "nn/flat.h"
#include "nn/module.h"

namespace cm::nn {

// EDM's EMA decay (training/training_loop.py): for an update after images_seen images, with a
// batch of batch_size images,
//   halflife = halflife_kimg·1000, and with ramp-up halflife = min(halflife,
//   rampup_ratio·images_seen) β = 0.5^(batch_size / max(halflife, 1e-8))
// (so with ramp-up the first update, at images_seen = 0, copies the parameters: β = 0).
double edm_ema_beta(double batch_size, double images_seen, double halflife_kimg,
                    std::optional<double> rampup_ratio);

// How an Ema picks its decay at each step().
class EmaDecay {
 public:
  enum class Kind { Fixed, HalfLife, PerStep };
  // The same decay at every step (0.9999 of the consistency models' eval EMA).
  static EmaDecay fixed(double decay);
  // EDM's half-life in thousands of images, with ramp-up ratio (nullopt: no ramp-up).
  static EmaDecay half_life(double halflife_kimg, std::optional<double> rampup_ratio = 0.05);
  // decay_at(k) for the update with k earlier updates (k = 0 first): the target network's μ(k).
  static EmaDecay per_step(std::function<double(int64_t k)> decay_at);

  Kind kind() const { return kind_; }
  // The decay of the next update, given the updates and images seen before it and its batch size.
  double at(int64_t updates, double images_seen, double batch_size) const;

 private:
  Kind kind_ = Kind::Fixed;
  double decay_ = 0;
  double halflife_kimg_ = 0;
  std::optional<double> rampup_ratio_;
  std::function<double(int64_t)> decay_at_;
};

class Ema {
 public:
  // Own shadow copies of `source`, initialised to its current values.
  explicit Ema(std::vector<Tensor> source, EmaDecay rule = EmaDecay::fixed(0.9999));
  // Binds to existing tensors (a second model's parameters(), same count and shapes) and copies
  // the source into them: a fresh start, as EDM's deepcopy; load_state() afterwards to resume.
  Ema(std::vector<Tensor> source, std::vector<Tensor> shadow, EmaDecay rule);

  // shadow = decay·shadow + (1 − decay)·source for every tensor, under no-grad. decay in [0, 1];
  // decay 0 copies the source exactly (CD's μ = 0). Counts one update.
  void update(double decay);
  // One training step of batch_size images: the decay from the rule (at the current updates() and
  // images_seen()), then update(), then images_seen += batch_size. Returns the decay used.
  double step(int64_t batch_size = 1);

  // Sets the shadows to the source (shadow = source) without counting an update.
  void reset_to_source();
  // Writes the shadows into a module's parameters (same count and shapes), e.g. to sample from
  // the EMA or save it as a model checkpoint; converts dtype and device.
  void copy_to(Module& m) const;
  // Reads a module's parameters into the shadows (e.g. an EMA network loaded from a checkpoint).
  void copy_from(const Module& m);

  const std::vector<Tensor>& shadow() const { return shadow_; }
  const std::vector<Tensor>& source() const { return source_; }
  const EmaDecay& rule() const { return rule_; }
  int64_t updates() const { return updates_; }
  double images_seen() const { return images_seen_; }

  // "<i>.shadow" (copies), "updates" (0-d i64) and "images_seen" (0-d f64).
  std::map<std::string, Tensor> state() const;
  // Restores a state(): copies into the shadows in place (bound modules stay bound). Missing,
  // unexpected and mis-shaped entries are errors that list them.
  void load_state(const std::map<std::string, Tensor>& state);

 private:
  void copy_tensors(const std::vector<Tensor>& from, const char* op);
  // Records (shadow buffer, source buffer) per group when the two have one layout.
  void pair_groups(const FlatBuffers& source, const FlatBuffers& shadow);

  std::vector<Tensor> source_;
  std::vector<Tensor> shadow_;
  FlatBuffers own_;                               // the own shadows when flat
  std::vector<std::pair<Tensor, Tensor>> pairs_;  // (shadow, source) buffers when both flat
  EmaDecay rule_;
  int64_t updates_ = 0;
  double images_seen_ = 0;
};

}  // namespace cm::nn
