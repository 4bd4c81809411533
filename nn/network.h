// The denoising networks that the EDM parameterisation wraps (consistency/edm.h): a module that
// maps a noisy image, its noise labels c_noise(σ) and optional class labels to an image of the
// same size. EDM's SongUNet (nn/songunet.h, the CIFAR-10 networks) and ADM's U-Net
// (nn/adm_unet.h, the ImageNet-64 and LSUN networks) are the two.
#pragma once

#include <string>

#include "nn/layers.h"

namespace cm::nn {

// A network's memory_format option ("auto", "contiguous" or "channels_last") for the backend
// that runs it: "auto" is the backend's preferred_conv_format (channels-last on a CPU with
// oneDNN, contiguous otherwise).
MemoryFormat resolve_memory_format(const std::string& option, const Backend& backend);
// A network's recompute option ("auto", "on" or "off"): whether its forward runs with activation
// recomputation on (autograd/node.h: the convolutions' inputs after a group norm or dropout, the
// dropout masks, and attention's and the FiLM norms' intermediates, computed again in the backward
// instead of kept; the same gradients, bit for bit, for less memory and more passes over those
// activations). "auto" is the backend's
// recompute_by_default (on for CUDA, where memory bounds the batch; off on the CPU).
bool resolve_recompute(const std::string& option, const Backend& backend);
// The check of that option, for the configs' validate(); `who` names the network.
void check_recompute_option(const std::string& option, const char* who);
// A network's attention option ("auto", "fused" or "composite"): which kernel its attention
// layers run (autograd/ops.h, AttentionKernel): the backend's fused kernel (FlashAttention-2, no
// L × L scores stored) or the composite (matmul, softmax, matmul); the two differ by rounding.
// "auto" is the fused kernel where the backend's is the default (the CPU's; CUDA's once verified
// on a card), "fused" wherever the backend's kernel takes the operands.
AttentionKernel resolve_attention(const std::string& option);
void check_attention_option(const std::string& option, const char* who);

class Network : public Module {
 public:
  // x [N, in_channels, R, R], noise_labels [N], class_labels [N, label_dim] one-hot rows (or
  // undefined for an unconditional network; a zero row means "no label"), augment_labels
  // [N, augment_dim] (or undefined; ignored by networks without augmentation) -> [N,
  // out_channels, R, R].
  virtual Tensor forward(const Tensor& x, const Tensor& noise_labels,
                         const Tensor& class_labels = {}, const Tensor& augment_labels = {},
                         const ForwardContext& ctx = {}) const = 0;
  virtual int64_t img_resolution() const = 0;
  virtual int64_t in_channels() const = 0;
  virtual int64_t out_channels() const = 0;
  virtual int64_t label_dim() const = 0;  // 0: unconditional
};

}  // namespace cm::nn
