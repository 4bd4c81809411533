// The FID Inception-v3: TensorFlow's inception-2015-12-05 graph as pytorch-fid ports it
// (mseitzer/pytorch-fid src/pytorch_fid/inception.py, fid_inception_v3()): torchvision's Inception3
// layer layout (no auxiliary classifier, 1008 classes) with the FID patches of its mixed blocks:
//   FIDInceptionA/C, FIDInceptionE_1  the pooling branch averages a 3×3 window (stride 1, padding
//                                     1) without counting the padding (count_include_pad=False),
//                                     as TensorFlow's SAME-padded average pool does;
//   FIDInceptionE_2 (Mixed_7c)        the pooling branch takes a 3×3 maximum instead.
// Every convolution is torchvision's BasicConv2d: a bias-free convolution, batch normalisation in
// eval mode (running statistics, eps 1e-3) and ReLU. Parameter and buffer names are those of
// pytorch-fid's state dict (Conv2d_1a_3x3.conv.weight, Mixed_5b.branch_pool.bn.running_var,
// fc.weight, ...), so tools/convert_fid_inception.py turns pt_inception-2015-12-05-6726825d.pth
// into a safetensors file that loads here unchanged (its num_batches_tracked counters dropped).
//
// Sizes: 23,850,960 parameters (2,065,392 of them in fc) and 34,432 running-statistic buffers,
// 23,885,392 values in all. The forward pass is pytorch-fid's InceptionV3 up to block 3
// (the 2048-d pool3 features, what FID uses) plus the 1008-class logits of the fc layer.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "nn/module.h"

namespace cm::eval {

struct FidInceptionOptions {
  // Every channel count c of the network except the 3 image channels becomes ⌈c/width_divisor⌉.
  // 1 is the real network; tests use 32, which keeps every concatenation consistent (the golden
  // generator builds the same reduced network from pytorch-fid's own block classes).
  int64_t width_divisor = 1;
  int64_t num_classes = 1008;  // outputs of fc
};

// torchvision's BasicConv2d: conv (no bias) → batch norm (eval mode, eps 1e-3) → ReLU. In the
// forward pass the normalisation is folded into the convolution: weight w·s and bias β − μ·s with
// s = γ/√(σ² + eps), one pass over the activations instead of three.
class BasicConv2d : public nn::Module {
 public:
  // A kh×kw convolution from `in` to `out` channels.
  BasicConv2d(int64_t in, int64_t out, int64_t kh, int64_t kw, int64_t stride = 1,
              int64_t pad_h = 0, int64_t pad_w = 0);
  Tensor forward(const Tensor& x) const;
  std::string type_name() const override { return "BasicConv2d"; }

  struct Conv : nn::Module {
    Conv(int64_t in, int64_t out, int64_t kh, int64_t kw);
    std::string type_name() const override { return "Conv2d"; }
    Tensor weight;  // [out, in, kh, kw]
  };
  struct BatchNorm : nn::Module {
    explicit BatchNorm(int64_t channels);
    std::string type_name() const override { return "BatchNorm2d"; }
    Tensor weight, bias;               // γ, β [C] (parameters; ones, zeros)
    Tensor running_mean, running_var;  // μ, σ² [C] (buffers; zeros, ones)
  };
  static constexpr double kEps = 1e-3;
  std::shared_ptr<Conv> conv;
  std::shared_ptr<BatchNorm> bn;
  Conv2dParams params;
};

// A mixed block (torchvision's InceptionA..E with the FID patches): x [N, C, H, W] -> the
// concatenation of its branches along C.
class InceptionBlock : public nn::Module {
 public:
  virtual Tensor forward(const Tensor& x) const = 0;
};

class FidInceptionV3 : public nn::Module {
 public:
  // Parameters start as zeros (convolutions, fc) and identity batch norms: load real weights.
  explicit FidInceptionV3(const FidInceptionOptions& o = {});
  std::string type_name() const override { return "FidInceptionV3"; }

  struct Outputs {
    Tensor pool;    // [N, 2048] pool3 features (the mean over the final 8×8 map)
    Tensor logits;  // [N, num_classes] = pool·fc.weightᵀ (undefined unless asked for)
    // [N, 2023] sFID's spatial features (undefined unless asked for): the first 7 channels of
    // Mixed_6d's 1×1 branch (TF's mixed_6/conv, after its batch norm and ReLU) at 17×17,
    // flattened in (H, W, C) order, as openai's evaluator takes them (spatial[..., :7] of the NHWC
    // tensor; its PyTorch port evaluations/inception_v3.py does the same).
    Tensor spatial;
  };
  // x [N, 3, H, W] floating in [−1, 1], 299×299 for the reference numbers (inception_input in
  // eval/fid.h makes it from u8 images); any size ≥ 75×75 runs. Run it under NoGradGuard for
  // evaluation. The logits leave out fc.bias, as the Inception Scores of torch-fidelity
  // ("logits_unbiased") and of openai's evaluator (pool3 times the graph's softmax/logits/MatMul
  // weights) both do; logits(pool, true) adds it.
  Outputs forward(const Tensor& x, bool with_logits = true, bool with_spatial = false) const;
  // u8 images [N, 1 or 3, H, W] -> forward(inception_input(images)) in the parameters' dtype (the
  // resize and scaling of the reference tools; see eval/fid.h).
  Outputs forward_images(const Tensor& images_u8, bool with_logits = true,
                         bool with_spatial = false) const;
  // pool [N, 2048] -> pool·fc.weightᵀ (+ fc.bias).
  Tensor logits(const Tensor& pool, bool with_bias = false) const;

  int64_t feature_dim() const { return feature_dim_; }
  int64_t num_classes() const { return num_classes_; }

 private:
  struct Fc : nn::Module {
    Fc(int64_t in, int64_t out);
    std::string type_name() const override { return "Linear"; }
    Tensor weight, bias;  // [num_classes, 2048], [num_classes]
  };
  int64_t feature_dim_, num_classes_;
  std::vector<std::shared_ptr<BasicConv2d>> stem_;      // Conv2d_1a_3x3 .. Conv2d_4a_3x3
  std::vector<std::shared_ptr<InceptionBlock>> mixed_;  // Mixed_5b .. Mixed_7c
  std::shared_ptr<Fc> fc_;
  std::shared_ptr<BasicConv2d> spatial_conv_;  // Mixed_6d.branch1x1
};

// Reads a safetensors file made by tools/convert_fid_inception.py (strictly: every parameter and
// buffer, nothing else) into a full-width network on `device`, in eval mode.
std::shared_ptr<FidInceptionV3> load_fid_inception(const std::string& path,
                                                   Device device = Device::cpu());

}  // namespace cm::eval
