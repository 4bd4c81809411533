// ADM's U-Net (Dhariwal & Nichol 2021), the network of the consistency-model paper's ImageNet-64
// and LSUN-256 runs: the same options, module tree, parameter names and arithmetic as
// openai/consistency_models cm/unet.py::UNetModel (with cm/nn.py), so the released PyTorch state
// dicts convert to safetensors and load unchanged (shared/spec/consistency-models.md §4.3).
//
//   emb = time_embed(sinusoid(c_noise)) [+ label_emb(y)]
//   input_blocks:  conv3×3, then per level num_res_blocks × (ResBlock [+ attention]) and, between
//                  levels, a ResBlock(down) (resblock_updown) or a Downsample
//   middle_block:  ResBlock, attention, ResBlock
//   output_blocks: per level num_res_blocks + 1 × (ResBlock on [h, skip] [+ attention]), the
//                  last of each level but the top followed by a ResBlock(up) or an Upsample
//   out:           GroupNorm → SiLU → zero-initialised conv3×3
#pragma once

#include <string>
#include <vector>

#include "nn/network.h"

namespace cm::nn {

struct AdmUNetConfig {
  int64_t image_size = 64;
  int64_t in_channels = 3;
  int64_t model_channels = 192;
  int64_t out_channels = 3;
  int64_t num_res_blocks = 3;
  // Resolutions (in pixels) with self-attention, as the reference scripts' flag
  // attention_resolutions="32,16,8" (UNetModel itself takes the downsample rates image_size / r).
  std::vector<int64_t> attention_resolutions = {32, 16, 8};
  double dropout = 0;
  std::vector<int64_t> channel_mult = {1, 2, 3, 4};
  bool conv_resample = true;  // Downsample/Upsample with a convolution (without resblock_updown)
  int64_t num_classes = 0;    // 0: unconditional
  int64_t num_heads = 1;      // used where num_head_channels is -1
  int64_t num_head_channels = 64;
  int64_t num_heads_upsample =
      -1;  // -1: num_heads (the decoder's heads, with num_head_channels -1)
  bool use_scale_shift_norm = true;  // FiLM: GN(h)·(1 + scale) + shift
  bool resblock_updown = true;
  // How the attention's 1×1 convolution lays out q, k and v over its 3·C output channels:
  // "flash" (three, heads, head_dim), the flash-attention path the released checkpoints were
  // trained with; "legacy" (heads, three, head_dim), guided-diffusion's QKVAttentionLegacy.
  std::string attention_split = "flash";
  // The activations' memory format, as SongUNetConfig::memory_format.
  std::string memory_format = "auto";
  // Activation recomputation, as SongUNetConfig::recompute.
  std::string recompute = "auto";
  // The attention kernel, as SongUNetConfig::attention.
  std::string attention = "auto";

  // Checks every field; errors name the field and value.
  void validate() const;
};

// "adm-imagenet64" (295,899,267 parameters), "adm-lsun256" (526,304,771), "adm-tiny-16" (a small
// class-conditional one for CPU tests); errors list the known names.
AdmUNetConfig adm_unet_preset(const std::string& name);
std::vector<std::string> adm_unet_preset_names();

// torch's nn.Embedding: weight [num, dim], initialised N(0, 1).
class Embedding : public Module {
 public:
  Embedding(int64_t num, int64_t dim, Generator& gen);
  // indices (integers) -> [..., dim]
  Tensor forward(const Tensor& indices) const;
  // one-hot (or weighted) rows [N, num] -> [N, dim], i.e. rows·weight: a one-hot row picks its
  // weight row exactly, a zero row gives zeros.
  Tensor forward_onehot(const Tensor& rows) const;
  std::string type_name() const override { return "Embedding"; }
  Tensor weight;
};

// torch's Conv2d with padding kernel/2 and a stride (nn::Conv2d has stride 1 only); torch's
// default initialisation.
class StridedConv2d : public Module {
 public:
  StridedConv2d(int64_t in, int64_t out, int64_t kernel, int64_t stride, Generator& gen);
  Tensor forward(const Tensor& x) const;
  std::string type_name() const override { return "Conv2d"; }
  Tensor weight, bias;
  int64_t stride;
};

// The reference's Downsample (a conv3×3 of stride 2 as "op", or 2×2 average pooling) and
// Upsample (nearest ×2, then a conv3×3 as "conv"), used between levels without resblock_updown.
class AdmDownsample : public Module {
 public:
  AdmDownsample(int64_t channels, int64_t out_channels, bool use_conv, Generator& gen);
  Tensor forward(const Tensor& x) const;
  std::string type_name() const override { return "Downsample"; }
  std::shared_ptr<StridedConv2d> op;  // null: average pooling
};
class AdmUpsample : public Module {
 public:
  AdmUpsample(int64_t channels, int64_t out_channels, bool use_conv, Generator& gen);
  Tensor forward(const Tensor& x) const;
  std::string type_name() const override { return "Upsample"; }
  std::shared_ptr<Conv2d> conv;  // null: upsampling only
};

// The reference's ResBlock: GN → SiLU → [up/down on both paths] → conv3×3; + emb projection
// (added, or FiLM scale/shift around the second GN) → SiLU → dropout → zero-init conv3×3; plus
// the skip (identity, or a 1×1 convolution when the width changes).
class AdmResBlock : public Module {
 public:
  AdmResBlock(int64_t channels, int64_t emb_channels, double dropout, int64_t out_channels,
              bool use_scale_shift_norm, bool up, bool down, Generator& gen);
  Tensor forward(const Tensor& x, const Tensor& emb, const ForwardContext& ctx) const;
  std::string type_name() const override { return "ResBlock"; }
  int64_t channels, out_channels;
  double dropout;
  bool use_scale_shift_norm, up, down;
  std::shared_ptr<GroupNorm> in_norm, out_norm;     // in_layers.0, out_layers.0
  std::shared_ptr<Conv2d> in_conv, out_conv, skip;  // in_layers.2, out_layers.3, skip_connection
  std::shared_ptr<Linear> emb_linear;               // emb_layers.1
};

// The reference's AttentionBlock: x + proj_out(attention(qkv(GN(x)))) with heads of
// num_head_channels channels (or num_heads heads).
class AdmAttention : public Module {
 public:
  AdmAttention(int64_t channels, int64_t num_heads, int64_t num_head_channels, bool legacy_split,
               Generator& gen);
  Tensor forward(const Tensor& x) const;
  std::string type_name() const override { return "AttentionBlock"; }
  int64_t channels, num_heads;
  bool legacy_split;
  std::shared_ptr<GroupNorm> norm;
  std::shared_ptr<Conv2d> qkv, proj_out;
};

class AdmUNet : public Network {
 public:
  AdmUNet(const AdmUNetConfig& cfg, Generator& gen);
  Tensor forward(const Tensor& x, const Tensor& noise_labels, const Tensor& class_labels = {},
                 const Tensor& augment_labels = {}, const ForwardContext& ctx = {}) const override;
  std::string type_name() const override { return "UNetModel"; }
  const AdmUNetConfig& config() const { return cfg_; }
  int64_t img_resolution() const override { return cfg_.image_size; }
  int64_t in_channels() const override { return cfg_.in_channels; }
  int64_t out_channels() const override { return cfg_.out_channels; }
  int64_t label_dim() const override { return cfg_.num_classes; }

 private:
  // One layer of a TimestepEmbedSequential.
  enum class Kind { Conv, Res, Attention, Down, Up };
  struct Layer {
    Kind kind;
    std::shared_ptr<Module> module;
  };
  using Stage = std::vector<Layer>;
  Tensor run(const Stage& stage, Tensor h, const Tensor& emb, const ForwardContext& ctx) const;

  AdmUNetConfig cfg_;
  std::shared_ptr<Linear> time_embed0_, time_embed2_;
  std::shared_ptr<Embedding> label_emb_;
  std::vector<Stage> input_, output_;
  Stage middle_;
  std::vector<std::string> input_names_, output_names_;  // "input_blocks.3" (for observe)
  std::shared_ptr<GroupNorm> out_norm_;
  std::shared_ptr<Conv2d> out_conv_;
};

}  // namespace cm::nn
