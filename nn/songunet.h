// EDM's SongUNet (DDPM++ / NCSN++), the network of the consistency-model paper's CIFAR-10 runs:
// the same options, module tree, parameter names and arithmetic as NVlabs/edm's
// training/networks.py, so a PyTorch state dict converted to safetensors loads unchanged.
#pragma once

#include <string>
#include <vector>

#include "nn/network.h"

namespace cm::nn {

struct SongUNetConfig {
  int64_t img_resolution = 32;
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  int64_t label_dim = 0;    // 0: unconditional
  int64_t augment_dim = 0;  // 0: no augmentation labels
  int64_t model_channels = 128;
  std::vector<int64_t> channel_mult = {1, 2, 2, 2};
  int64_t channel_mult_emb = 4;
  int64_t num_blocks = 4;
  std::vector<int64_t> attn_resolutions = {16};
  double dropout = 0.10;
  double label_dropout = 0;
  std::string embedding_type = "positional";     // "positional" (DDPM++) or "fourier" (NCSN++)
  int64_t channel_mult_noise = 1;                // 1 (DDPM++) or 2 (NCSN++)
  std::string encoder_type = "standard";         // "standard", "skip" or "residual" (NCSN++)
  std::string decoder_type = "standard";         // "standard" or "skip"
  std::vector<double> resample_filter = {1, 1};  // [1,1] (DDPM++) or [1,3,3,1] (NCSN++)
  double fourier_scale = 16;                     // NCSN++'s Fourier frequency scale (iCT uses 0.02)
  // The activations' memory format (not part of the architecture: the weights are the same):
  // "channels_last", "contiguous", or "auto" (the backend's preferred_conv_format: channels-last
  // on a CPU with oneDNN, contiguous otherwise). The output is contiguous in every case.
  std::string memory_format = "auto";
  // Activation recomputation in the backward: "auto", "on" or "off" (nn/network.h,
  // resolve_recompute). Not part of the architecture either: the gradients are the same bits.
  std::string recompute = "auto";
  // Which kernel the attention layers run: "auto", "fused" or "composite" (nn/network.h,
  // resolve_attention). Not part of the architecture: the results differ by rounding only.
  std::string attention = "auto";

  // Checks every field; errors name the field and value.
  void validate() const;
  // memory_format resolved for the backend that runs the network.
  MemoryFormat activation_format(const Backend& backend) const;
};

// The benchmark networks of shared/spec/benchmarks.md by name ("ddpmpp-cifar10", "ncsnpp-cifar10",
// "ddpmpp-cifar10-cond", "ddpmpp-small-28", "ddpmpp-digits-8"); errors list the known names.
SongUNetConfig songunet_preset(const std::string& name);
std::vector<std::string> songunet_preset_names();

class SongUNet : public Network {
 public:
  SongUNet(const SongUNetConfig& cfg, Generator& gen);
  // x [N, in, R, R], noise_labels [N], class_labels [N, label_dim] (or undefined),
  // augment_labels [N, augment_dim] (or undefined) -> [N, out, R, R].
  Tensor forward(const Tensor& x, const Tensor& noise_labels, const Tensor& class_labels = {},
                 const Tensor& augment_labels = {}, const ForwardContext& ctx = {}) const override;
  std::string type_name() const override { return "SongUNet"; }
  const SongUNetConfig& config() const { return cfg_; }
  int64_t img_resolution() const override { return cfg_.img_resolution; }
  int64_t in_channels() const override { return cfg_.in_channels; }
  int64_t out_channels() const override { return cfg_.out_channels; }
  int64_t label_dim() const override { return cfg_.label_dim; }

 private:
  enum class Kind { Conv, Block, AuxDown, AuxSkip, AuxResidual, AuxUp, AuxNorm, AuxConv };
  struct Entry {
    std::string name;
    Kind kind;
    std::shared_ptr<Module> module;
  };

  SongUNetConfig cfg_;
  std::shared_ptr<PositionalEmbedding> map_noise_positional_;  // one of these two
  std::shared_ptr<FourierEmbedding> map_noise_fourier_;
  std::shared_ptr<Linear> map_label_, map_augment_, map_layer0_, map_layer1_;
  std::shared_ptr<ModuleDict> enc_, dec_;
  std::vector<Entry> enc_entries_, dec_entries_;
};

}  // namespace cm::nn
