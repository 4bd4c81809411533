// EDM's DhariwalUNet: NVlabs/edm's re-implementation of ADM's U-Net (training/networks.py), the
// network of EDM's released ImageNet-64 model (edm-imagenet-64x64-cond-adm.pkl), built from the
// same blocks as SongUNet (nn/layers.h) with EDM's parameter names, so a converted pickle
// (tools/convert_edm_pkl.py) loads unchanged. The architecture is ADM's (nn/adm_unet.h holds
// openai's own module tree, for openai's checkpoints); the differences from SongUNet are:
//
//   emb = silu(map_layer1(silu(map_layer0(pos(c_noise) [+ map_augment(a)]))) [+ map_label(y)])
//         (positional embedding without endpoint, no sin/cos swap, the label after the MLP)
//   enc:  a conv3×3 at the top level; between levels a UNetBlock(down); num_blocks UNetBlocks per
//         level, with attention at attn_resolutions (64 channels per head)
//   dec:  at the bottom UNetBlock(attention) and UNetBlock; elsewhere a UNetBlock(up); then
//         num_blocks + 1 UNetBlocks on [x, skip], with attention at attn_resolutions
//   out:  out_conv(silu(out_norm(x)))
// Blocks use adaptive scale (FiLM), skip scale 1, no resampling projection, GroupNorm eps 1e-5.
#pragma once

#include <string>
#include <vector>

#include "nn/network.h"

namespace cm::nn {

struct DhariwalUNetConfig {
  int64_t img_resolution = 64;
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  int64_t label_dim = 0;    // 0: unconditional
  int64_t augment_dim = 0;  // 0: no augmentation labels
  int64_t model_channels = 192;
  std::vector<int64_t> channel_mult = {1, 2, 3, 4};
  int64_t channel_mult_emb = 4;
  int64_t num_blocks = 3;
  std::vector<int64_t> attn_resolutions = {32, 16, 8};
  double dropout = 0.10;
  double label_dropout = 0;
  // The activations' memory format, as SongUNetConfig::memory_format.
  std::string memory_format = "auto";
  // Activation recomputation, as SongUNetConfig::recompute.
  std::string recompute = "auto";
  // The attention kernel, as SongUNetConfig::attention.
  std::string attention = "auto";

  // Checks every field; errors name the field and value.
  void validate() const;
};

// "dhariwal-imagenet64" (EDM's --arch=adm, class-conditional: 295,899,267 parameters, as openai's
// UNetModel) and "dhariwal-tiny-16" (a small class-conditional one for CPU tests); errors list the
// known names.
DhariwalUNetConfig dhariwal_unet_preset(const std::string& name);
std::vector<std::string> dhariwal_unet_preset_names();

class DhariwalUNet : public Network {
 public:
  DhariwalUNet(const DhariwalUNetConfig& cfg, Generator& gen);
  Tensor forward(const Tensor& x, const Tensor& noise_labels, const Tensor& class_labels = {},
                 const Tensor& augment_labels = {}, const ForwardContext& ctx = {}) const override;
  std::string type_name() const override { return "DhariwalUNet"; }
  const DhariwalUNetConfig& config() const { return cfg_; }
  int64_t img_resolution() const override { return cfg_.img_resolution; }
  int64_t in_channels() const override { return cfg_.in_channels; }
  int64_t out_channels() const override { return cfg_.out_channels; }
  int64_t label_dim() const override { return cfg_.label_dim; }

 private:
  struct Entry {
    std::string name;
    std::shared_ptr<Module> module;
    bool block;  // a UNetBlock (else the top level's Conv2d)
  };
  DhariwalUNetConfig cfg_;
  std::shared_ptr<PositionalEmbedding> map_noise_;
  std::shared_ptr<Linear> map_augment_, map_layer0_, map_layer1_, map_label_;
  std::shared_ptr<ModuleDict> enc_, dec_;
  std::vector<Entry> enc_entries_;
  std::vector<std::pair<std::string, std::shared_ptr<UNetBlock>>> dec_entries_;
  std::shared_ptr<GroupNorm> out_norm_;
  std::shared_ptr<Conv2d> out_conv_;
};

}  // namespace cm::nn
