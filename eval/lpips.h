// LPIPS (Zhang et al. 2018), the learned perceptual distance that the paper's best CD/CT runs use
// as their distance d (shared/spec/consistency-models.md §2.4), as a differentiable cm module.
//
//   d(a, b) = Σ_l mean_hw Σ_c w_lc·(f̂_l(a) − f̂_l(b))²_c,   f̂ = f / (‖f‖_channels + 1e-10)
//
// with f_l the VGG16 activations relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 and w_l the learned
// non-negative 1×1 channel weights. The two official code bases differ, and both are here:
//   Piq       openai/consistency_models: piq.LPIPS(replace_pooling=True): VGG's max pools replaced
//             by 2×2 average pools; input (x + 1)/2 standardised with the ImageNet mean and std.
//   Original  the JAX CIFAR-10 code and the lpips package: max pools; the "scaling layer"
//             (x − shift)/scale with shift (−0.030, −0.088, −0.188), scale (0.458, 0.448, 0.450),
//             applied to x in [−1, 1].
// Inputs are images in [−1, 1] (cm's data range). As openai's consistency_losses does, images
// narrower than 256 pixels are first resized bilinearly to 224×224 (align_corners=False).
//
// Parameter names (the converter tools/convert_lpips.py writes them):
//   features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.weight / .bias   torchvision's vgg16().features
//   lin{0..4}.model.1.weight [1, C_l, 1, 1]                          the lpips package's heads
// All are buffers: the network is frozen, a CD/CT step never trains it, and gradients flow only to
// the inputs. The full network has 14,714,688 VGG16 feature weights and 1,472 head weights.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "nn/module.h"

namespace cm::eval {

enum class LpipsPooling { Avg, Max };
enum class LpipsScaling {
  ImagenetMeanStd,  // ((x + 1)/2 − mean)/std, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)
  ScalingLayer,     // (x − shift)/scale (the original LPIPS)
};

struct LpipsOptions {
  LpipsPooling pooling = LpipsPooling::Avg;
  LpipsScaling scaling = LpipsScaling::ImagenetMeanStd;
  // Channels of the five VGG blocks (smaller for tests).
  std::vector<int64_t> widths = {64, 128, 256, 512, 512};
  // Images with width < resize_below are resized to resize_to × resize_to first (0: never).
  int64_t resize_below = 256;
  int64_t resize_to = 224;

  static LpipsOptions piq() { return {}; }
  static LpipsOptions original() {
    return {.pooling = LpipsPooling::Max, .scaling = LpipsScaling::ScalingLayer};
  }
  // "piq" or "original" (the run configuration's consistency.lpips.variant).
  static LpipsOptions variant(const std::string& name);
};

class Lpips : public nn::Module {
 public:
  // A network of zeros with the shapes of `o.widths`; load weights with load_state_dict or use
  // load_lpips.
  explicit Lpips(const LpipsOptions& o = {});

  // a, b [N, 3, H, W] in [−1, 1] -> per-sample distance [N], differentiable in both inputs (grey
  // images [N, 1, H, W] are repeated into the three channels, as is usual for LPIPS). Runs
  // in the dtype of the weights (f32 unless converted with to(DType)); inputs of another dtype are
  // cast to it. Resizes as the options say; without resizing H and W must be at least 16.
  Tensor forward(const Tensor& a, const Tensor& b) const;
  Tensor operator()(const Tensor& a, const Tensor& b) const { return forward(a, b); }

  // The five channel-normalised feature maps of one batch (after input scaling, before the
  // heads); for tests and inspection.
  std::vector<Tensor> features(const Tensor& x) const;

  const LpipsOptions& options() const { return opt_; }
  std::string type_name() const override { return "Lpips"; }

 private:
  Tensor prepare(const Tensor& x) const;  // resize and input scaling

  LpipsOptions opt_;
  struct Conv {
    int64_t index;  // position in torchvision's features Sequential
    Tensor* weight;
    Tensor* bias;
  };
  std::vector<Conv> convs_;
  std::vector<Tensor*> heads_;
};

// The VGG block widths of an LPIPS weights file (from the shapes of
// features.{0,5,10,17,24}.weight).
std::vector<int64_t> lpips_widths(const std::string& path);

// A network with the weights of the safetensors file at `path` (tools/convert_lpips.py), on
// `device`. The widths come from the file; `o.widths` is ignored. Every tensor must be there with
// its shape; a missing or unreadable file is an error that names it.
std::shared_ptr<Lpips> load_lpips(const std::string& path, LpipsOptions o = {},
                                  Device device = Device::cpu());

}  // namespace cm::eval
