// EDM's building blocks (NVlabs/edm training/networks.py), with the same parameter names, shapes,
// initialisers and arithmetic: Linear, Conv2d with up/down resampling, GroupNorm, the positional
// and Fourier noise embeddings, and the U-Net block. Each layer casts its weights to the input's
// dtype, as EDM does, so f32 master weights serve a bf16/f16 forward pass.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nn/module.h"

namespace cm::nn {

// EDM's weight_init: "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal".
Tensor weight_init(const Shape& shape, const std::string& mode, int64_t fan_in, int64_t fan_out,
                   Generator& gen);

struct InitOptions {
  std::string mode = "kaiming_normal";
  double weight = 1;  // multiplier of the initial weight
  double bias = 0;    // multiplier of the initial bias
};

// Draws used by dropout inside a forward pass. A caller that must replay a pass (the online and
// target passes of consistency training) hands in generators in the same state.
// Dropout masks shared by two forward passes of one network: the first pass (record) keeps each
// dropout's scaled mask in order, the second (replay) applies them in the same order instead of
// drawing again: what a dropout generator in the same state would give (consistency training's
// target pass replays the online pass's masks), without the draws.
struct DropoutMasks {
  // One per dropout, in order: its scaled mask, or undefined where activation recomputation is on
  // (autograd/node.h): then the replaying pass draws again, from a generator in the recording
  // pass's state, and no mask is kept between the passes.
  std::vector<Tensor> masks;
  size_t next = 0;
  bool replay = false;
};

struct ForwardContext {
  Generator* dropout = nullptr;   // null: the default generator
  DropoutMasks* masks = nullptr;  // null: every dropout draws its own mask
  // Called with each U-Net stage's name and output (activation statistics for research); empty:
  // off.
  std::function<void(const std::string& name, const Tensor& output)> observe = nullptr;
};

// dropout(x, p, training) with ctx's generator, recording or replaying its mask in ctx.masks.
Tensor dropout(const Tensor& x, double p, bool training, const ForwardContext& ctx);

// y = x·wᵀ + b; weight [out, in], bias [out].
class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool bias, const InitOptions& init, Generator& gen);
  Tensor forward(const Tensor& x) const;
  std::string type_name() const override { return "Linear"; }
  Tensor weight, bias;
  int64_t in_features, out_features;
};

// EDM's Conv2d: an optional k×k convolution (kernel 0 = none) with optional 2× up- or downsampling
// by a separable FIR filter (resample_filter, normalised to sum 1 in 2-D), optionally fused with
// the convolution. Registers the buffer "resample_filter" [1, 1, f, f] when resampling.
class Conv2d : public Module {
 public:
  Conv2d(int64_t in, int64_t out, int64_t kernel, bool bias, bool up, bool down,
         const std::vector<double>& resample_filter, bool fused_resample, const InitOptions& init,
         Generator& gen);
  Tensor forward(const Tensor& x) const;
  std::string type_name() const override { return "Conv2d"; }
  Tensor weight, bias, resample_filter;
  int64_t in_channels, out_channels;
  bool up, down, fused_resample;
};

// groups = min(num_groups, C / min_channels_per_group); weight ones, bias zeros.
class GroupNorm : public Module {
 public:
  GroupNorm(int64_t channels, int64_t num_groups = 32, int64_t min_channels_per_group = 4,
            double eps = 1e-5);
  Tensor forward(const Tensor& x) const;
  // silu(forward(x + shift)) from one fused kernel (group_norm_silu); shift [N, C, 1, 1]
  // (optional) is a per-sample channel shift (a U-Net block's embedding).
  Tensor forward_silu(const Tensor& x, const Tensor& shift = {}) const;
  // then(forward(x), extra) as one checkpoint (autograd/ops.h): the FiLM scale-shift and SiLU
  // after the norm of ADM's and EDM's adaptive-scale blocks, whose intermediates (the norm's
  // output, the products) are then not kept with activation recomputation on. `then` must be
  // deterministic.
  using Then = std::function<Tensor(const Tensor& normed, const std::vector<Tensor>& extra)>;
  Tensor forward_then(const Tensor& x, const std::vector<Tensor>& extra, Then then) const;
  std::string type_name() const override { return "GroupNorm"; }
  Tensor weight, bias;
  int64_t num_groups;
  double eps;
};

// [cos(σ·f), sin(σ·f)] with f_j = (1/max_positions)^(j / (C/2 − endpoint)); no parameters.
class PositionalEmbedding : public Module {
 public:
  PositionalEmbedding(int64_t channels, int64_t max_positions = 10000, bool endpoint = false);
  Tensor forward(const Tensor& x) const;
  std::string type_name() const override { return "PositionalEmbedding"; }
  int64_t channels, max_positions;
  bool endpoint;
};

// [cos(2π·σ·f), sin(2π·σ·f)] with frozen f ~ N(0, scale²) (buffer "freqs").
class FourierEmbedding : public Module {
 public:
  FourierEmbedding(int64_t channels, double scale, Generator& gen);
  Tensor forward(const Tensor& x) const;
  std::string type_name() const override { return "FourierEmbedding"; }
  Tensor freqs;
};

struct UNetBlockOptions {
  int64_t emb_channels = 0;
  bool up = false, down = false, attention = false;
  int64_t num_heads = -1;  // -1: out_channels / channels_per_head
  int64_t channels_per_head = 64;
  double dropout = 0;
  double skip_scale = 1;
  double eps = 1e-5;
  std::vector<double> resample_filter = {1, 1};
  bool resample_proj = false;
  bool adaptive_scale = true;
  InitOptions init;
  InitOptions init_zero{.mode = "kaiming_normal", .weight = 0};
  std::optional<InitOptions> init_attn;
};

// EDM's UNetBlock: GN → SiLU → conv0 (with resampling) → + affine(emb) (or scale/shift) → GN →
// SiLU → dropout → conv1, plus the skip path, scaled; then optional self-attention.
class UNetBlock : public Module {
 public:
  UNetBlock(int64_t in, int64_t out, const UNetBlockOptions& o, Generator& gen);
  Tensor forward(const Tensor& x, const Tensor& emb, const ForwardContext& ctx) const;
  std::string type_name() const override { return "UNetBlock"; }
  int64_t in_channels, out_channels, num_heads;
  double dropout, skip_scale;
  bool adaptive_scale;
  std::shared_ptr<GroupNorm> norm0, norm1, norm2;
  std::shared_ptr<Conv2d> conv0, conv1, skip, qkv, proj;
  std::shared_ptr<Linear> affine;
};

// An ordered set of named children (PyTorch's ModuleDict).
class ModuleDict : public Module {
 public:
  template <class M>
  std::shared_ptr<M> add(const std::string& name, std::shared_ptr<M> m) {
    return register_module(name, std::move(m));
  }
  std::string type_name() const override { return "ModuleDict"; }
};

}  // namespace cm::nn
