#include "eval/inception.h"

#include "eval/fid.h"
#include "nn/safetensors.h"

namespace cm::eval {

// ---- BasicConv2d -----------------------------------------------------------------------------

BasicConv2d::Conv::Conv(int64_t in, int64_t out, int64_t kh, int64_t kw) {
  weight = zeros({out, in, kh, kw});
  register_parameter("weight", weight);
}

BasicConv2d::BatchNorm::BatchNorm(int64_t channels) {
  weight = ones({channels});
  bias = zeros({channels});
  running_mean = zeros({channels});
  running_var = ones({channels});
  register_parameter("weight", weight);
  register_parameter("bias", bias);
  register_buffer("running_mean", running_mean);
  register_buffer("running_var", running_var);
}

BasicConv2d::BasicConv2d(int64_t in, int64_t out, int64_t kh, int64_t kw, int64_t stride,
                         int64_t pad_h, int64_t pad_w) {
  conv = register_module("conv", std::make_shared<Conv>(in, out, kh, kw));
  bn = register_module("bn", std::make_shared<BatchNorm>(out));
  params.stride_h = params.stride_w = stride;
  params.pad_h = pad_h;
  params.pad_w = pad_w;
}

// relu(conv(x, w)·s + β − μ·s) = relu(conv(x, w·s) + (β − μ·s)), s = γ/√(σ² + eps) per channel.
Tensor BasicConv2d::forward(const Tensor& x) const {
  const Tensor s = mul(bn->weight, rsqrt(add(bn->running_var, kEps)));
  const Tensor w = mul(conv->weight, reshape(s, {s.size(0), 1, 1, 1}));
  const Tensor b = sub(bn->bias, mul(bn->running_mean, s));
  return relu(conv2d(x, cm::to(w, x.dtype()), cm::to(b, x.dtype()), params));
}

namespace {

// Channel counts of a network built with FidInceptionOptions::width_divisor.
struct Widths {
  int64_t divisor;
  int64_t operator()(int64_t c) const { return (c + divisor - 1) / divisor; }
};

std::shared_ptr<BasicConv2d> conv1x1(int64_t in, int64_t out) {
  return std::make_shared<BasicConv2d>(in, out, 1, 1);
}

// FIDInceptionA: 1×1 | 1×1 → 5×5 | 1×1 → 3×3 → 3×3 | avg 3×3 (padding not counted) → 1×1.
// Out: 64 + 64 + 96 + pool_features channels.
class FidInceptionA : public InceptionBlock {
 public:
  FidInceptionA(int64_t in, int64_t pool_features, Widths c) {
    branch1x1 = register_module("branch1x1", conv1x1(in, c(64)));
    branch5x5_1 = register_module("branch5x5_1", conv1x1(in, c(48)));
    branch5x5_2 =
        register_module("branch5x5_2", std::make_shared<BasicConv2d>(c(48), c(64), 5, 5, 1, 2, 2));
    branch3x3dbl_1 = register_module("branch3x3dbl_1", conv1x1(in, c(64)));
    branch3x3dbl_2 = register_module("branch3x3dbl_2",
                                     std::make_shared<BasicConv2d>(c(64), c(96), 3, 3, 1, 1, 1));
    branch3x3dbl_3 = register_module("branch3x3dbl_3",
                                     std::make_shared<BasicConv2d>(c(96), c(96), 3, 3, 1, 1, 1));
    branch_pool = register_module("branch_pool", conv1x1(in, pool_features));
  }
  std::string type_name() const override { return "FIDInceptionA"; }
  Tensor forward(const Tensor& x) const override {
    const Tensor b1 = branch1x1->forward(x);
    const Tensor b5 = branch5x5_2->forward(branch5x5_1->forward(x));
    const Tensor b3 = branch3x3dbl_3->forward(branch3x3dbl_2->forward(branch3x3dbl_1->forward(x)));
    const Tensor bp = branch_pool->forward(avg_pool2d(x, 3, 1, 1, /*count_include_pad=*/false));
    return cat({b1, b5, b3, bp}, 1);
  }
  std::shared_ptr<BasicConv2d> branch1x1, branch5x5_1, branch5x5_2, branch3x3dbl_1, branch3x3dbl_2,
      branch3x3dbl_3, branch_pool;
};

// InceptionB (Mixed_6a, unpatched): 3×3 stride 2 | 1×1 → 3×3 → 3×3 stride 2 | max 3×3 stride 2.
class InceptionB : public InceptionBlock {
 public:
  InceptionB(int64_t in, Widths c) {
    branch3x3 = register_module("branch3x3", std::make_shared<BasicConv2d>(in, c(384), 3, 3, 2));
    branch3x3dbl_1 = register_module("branch3x3dbl_1", conv1x1(in, c(64)));
    branch3x3dbl_2 = register_module("branch3x3dbl_2",
                                     std::make_shared<BasicConv2d>(c(64), c(96), 3, 3, 1, 1, 1));
    branch3x3dbl_3 =
        register_module("branch3x3dbl_3", std::make_shared<BasicConv2d>(c(96), c(96), 3, 3, 2));
  }
  std::string type_name() const override { return "InceptionB"; }
  Tensor forward(const Tensor& x) const override {
    const Tensor b3 = branch3x3->forward(x);
    const Tensor bd = branch3x3dbl_3->forward(branch3x3dbl_2->forward(branch3x3dbl_1->forward(x)));
    return cat({b3, bd, max_pool2d(x, 3, 2)}, 1);
  }
  std::shared_ptr<BasicConv2d> branch3x3, branch3x3dbl_1, branch3x3dbl_2, branch3x3dbl_3;
};

// FIDInceptionC: 1×1 | 1×1 → 1×7 → 7×1 | 1×1 → 7×1 → 1×7 → 7×1 → 1×7 | avg 3×3 (padding not
// counted) → 1×1. Out: 4·192 channels.
class FidInceptionC : public InceptionBlock {
 public:
  FidInceptionC(int64_t in, int64_t c7, Widths c) {
    auto k1x7 = [](int64_t i, int64_t o) {
      return std::make_shared<BasicConv2d>(i, o, 1, 7, 1, 0, 3);
    };
    auto k7x1 = [](int64_t i, int64_t o) {
      return std::make_shared<BasicConv2d>(i, o, 7, 1, 1, 3, 0);
    };
    branch1x1 = register_module("branch1x1", conv1x1(in, c(192)));
    branch7x7_1 = register_module("branch7x7_1", conv1x1(in, c7));
    branch7x7_2 = register_module("branch7x7_2", k1x7(c7, c7));
    branch7x7_3 = register_module("branch7x7_3", k7x1(c7, c(192)));
    branch7x7dbl_1 = register_module("branch7x7dbl_1", conv1x1(in, c7));
    branch7x7dbl_2 = register_module("branch7x7dbl_2", k7x1(c7, c7));
    branch7x7dbl_3 = register_module("branch7x7dbl_3", k1x7(c7, c7));
    branch7x7dbl_4 = register_module("branch7x7dbl_4", k7x1(c7, c7));
    branch7x7dbl_5 = register_module("branch7x7dbl_5", k1x7(c7, c(192)));
    branch_pool = register_module("branch_pool", conv1x1(in, c(192)));
  }
  std::string type_name() const override { return "FIDInceptionC"; }
  Tensor forward(const Tensor& x) const override {
    const Tensor b1 = branch1x1->forward(x);
    const Tensor b7 = branch7x7_3->forward(branch7x7_2->forward(branch7x7_1->forward(x)));
    Tensor bd = branch7x7dbl_1->forward(x);
    for (const auto& m : {branch7x7dbl_2, branch7x7dbl_3, branch7x7dbl_4, branch7x7dbl_5})
      bd = m->forward(bd);
    const Tensor bp = branch_pool->forward(avg_pool2d(x, 3, 1, 1, /*count_include_pad=*/false));
    return cat({b1, b7, bd, bp}, 1);
  }
  std::shared_ptr<BasicConv2d> branch1x1, branch7x7_1, branch7x7_2, branch7x7_3, branch7x7dbl_1,
      branch7x7dbl_2, branch7x7dbl_3, branch7x7dbl_4, branch7x7dbl_5, branch_pool;
};

// InceptionD (Mixed_7a, unpatched): 1×1 → 3×3 stride 2 | 1×1 → 1×7 → 7×1 → 3×3 stride 2 |
// max 3×3 stride 2.
class InceptionD : public InceptionBlock {
 public:
  InceptionD(int64_t in, Widths c) {
    branch3x3_1 = register_module("branch3x3_1", conv1x1(in, c(192)));
    branch3x3_2 =
        register_module("branch3x3_2", std::make_shared<BasicConv2d>(c(192), c(320), 3, 3, 2));
    branch7x7x3_1 = register_module("branch7x7x3_1", conv1x1(in, c(192)));
    branch7x7x3_2 = register_module("branch7x7x3_2",
                                    std::make_shared<BasicConv2d>(c(192), c(192), 1, 7, 1, 0, 3));
    branch7x7x3_3 = register_module("branch7x7x3_3",
                                    std::make_shared<BasicConv2d>(c(192), c(192), 7, 1, 1, 3, 0));
    branch7x7x3_4 =
        register_module("branch7x7x3_4", std::make_shared<BasicConv2d>(c(192), c(192), 3, 3, 2));
  }
  std::string type_name() const override { return "InceptionD"; }
  Tensor forward(const Tensor& x) const override {
    const Tensor b3 = branch3x3_2->forward(branch3x3_1->forward(x));
    Tensor b7 = branch7x7x3_1->forward(x);
    for (const auto& m : {branch7x7x3_2, branch7x7x3_3, branch7x7x3_4}) b7 = m->forward(b7);
    return cat({b3, b7, max_pool2d(x, 3, 2)}, 1);
  }
  std::shared_ptr<BasicConv2d> branch3x3_1, branch3x3_2, branch7x7x3_1, branch7x7x3_2,
      branch7x7x3_3, branch7x7x3_4;
};

// FIDInceptionE_1 (Mixed_7b, average pool without the padding) and FIDInceptionE_2 (Mixed_7c, max
// pool): 1×1 | 1×1 → (1×3, 3×1) | 1×1 → 3×3 → (1×3, 3×1) | pool 3×3 stride 1 → 1×1.
// Out: 320 + 2·384 + 2·384 + 192 = 2048 channels.
class FidInceptionE : public InceptionBlock {
 public:
  FidInceptionE(int64_t in, bool max_pool, Widths c) : max_pool_(max_pool) {
    auto k1x3 = [](int64_t i, int64_t o) {
      return std::make_shared<BasicConv2d>(i, o, 1, 3, 1, 0, 1);
    };
    auto k3x1 = [](int64_t i, int64_t o) {
      return std::make_shared<BasicConv2d>(i, o, 3, 1, 1, 1, 0);
    };
    branch1x1 = register_module("branch1x1", conv1x1(in, c(320)));
    branch3x3_1 = register_module("branch3x3_1", conv1x1(in, c(384)));
    branch3x3_2a = register_module("branch3x3_2a", k1x3(c(384), c(384)));
    branch3x3_2b = register_module("branch3x3_2b", k3x1(c(384), c(384)));
    branch3x3dbl_1 = register_module("branch3x3dbl_1", conv1x1(in, c(448)));
    branch3x3dbl_2 = register_module("branch3x3dbl_2",
                                     std::make_shared<BasicConv2d>(c(448), c(384), 3, 3, 1, 1, 1));
    branch3x3dbl_3a = register_module("branch3x3dbl_3a", k1x3(c(384), c(384)));
    branch3x3dbl_3b = register_module("branch3x3dbl_3b", k3x1(c(384), c(384)));
    branch_pool = register_module("branch_pool", conv1x1(in, c(192)));
  }
  std::string type_name() const override {
    return max_pool_ ? "FIDInceptionE_2" : "FIDInceptionE_1";
  }
  Tensor forward(const Tensor& x) const override {
    const Tensor b1 = branch1x1->forward(x);
    const Tensor t3 = branch3x3_1->forward(x);
    const Tensor td = branch3x3dbl_2->forward(branch3x3dbl_1->forward(x));
    const Tensor pooled =
        max_pool_ ? max_pool2d(x, 3, 1, 1) : avg_pool2d(x, 3, 1, 1, /*count_include_pad=*/false);
    return cat(
        {b1, branch3x3_2a->forward(t3), branch3x3_2b->forward(t3), branch3x3dbl_3a->forward(td),
         branch3x3dbl_3b->forward(td), branch_pool->forward(pooled)},
        1);
  }
  std::shared_ptr<BasicConv2d> branch1x1, branch3x3_1, branch3x3_2a, branch3x3_2b, branch3x3dbl_1,
      branch3x3dbl_2, branch3x3dbl_3a, branch3x3dbl_3b, branch_pool;

 private:
  bool max_pool_;
};

}  // namespace

// ---- FidInceptionV3 --------------------------------------------------------------------------

FidInceptionV3::Fc::Fc(int64_t in, int64_t out) {
  weight = zeros({out, in});
  bias = zeros({out});
  register_parameter("weight", weight);
  register_parameter("bias", bias);
}

FidInceptionV3::FidInceptionV3(const FidInceptionOptions& o) {
  CM_CHECK(o.width_divisor >= 1 && o.num_classes >= 1,
           "FidInceptionV3: width_divisor and num_classes must be positive, got ", o.width_divisor,
           " and ", o.num_classes);
  const Widths c{o.width_divisor};
  feature_dim_ = c(2048);
  num_classes_ = o.num_classes;
  // torchvision's Inception3 stem; pytorch-fid's block 0 and 1 max pools sit between them.
  stem_.push_back(
      register_module("Conv2d_1a_3x3", std::make_shared<BasicConv2d>(3, c(32), 3, 3, 2)));
  stem_.push_back(
      register_module("Conv2d_2a_3x3", std::make_shared<BasicConv2d>(c(32), c(32), 3, 3)));
  stem_.push_back(
      register_module("Conv2d_2b_3x3", std::make_shared<BasicConv2d>(c(32), c(64), 3, 3, 1, 1, 1)));
  stem_.push_back(register_module("Conv2d_3b_1x1", conv1x1(c(64), c(80))));
  stem_.push_back(
      register_module("Conv2d_4a_3x3", std::make_shared<BasicConv2d>(c(80), c(192), 3, 3)));
  // fid_inception_v3(): the mixed blocks with their FID patches.
  mixed_.push_back(register_module("Mixed_5b", std::make_shared<FidInceptionA>(c(192), c(32), c)));
  mixed_.push_back(register_module("Mixed_5c", std::make_shared<FidInceptionA>(c(256), c(64), c)));
  mixed_.push_back(register_module("Mixed_5d", std::make_shared<FidInceptionA>(c(288), c(64), c)));
  mixed_.push_back(register_module("Mixed_6a", std::make_shared<InceptionB>(c(288), c)));
  mixed_.push_back(register_module("Mixed_6b", std::make_shared<FidInceptionC>(c(768), c(128), c)));
  mixed_.push_back(register_module("Mixed_6c", std::make_shared<FidInceptionC>(c(768), c(160), c)));
  {
    auto m6d = register_module("Mixed_6d", std::make_shared<FidInceptionC>(c(768), c(160), c));
    spatial_conv_ = m6d->branch1x1;  // TF's mixed_6/conv, sFID's features
    mixed_.push_back(m6d);
  }
  mixed_.push_back(register_module("Mixed_6e", std::make_shared<FidInceptionC>(c(768), c(192), c)));
  mixed_.push_back(register_module("Mixed_7a", std::make_shared<InceptionD>(c(768), c)));
  mixed_.push_back(register_module("Mixed_7b", std::make_shared<FidInceptionE>(c(1280), false, c)));
  mixed_.push_back(register_module("Mixed_7c", std::make_shared<FidInceptionE>(c(2048), true, c)));
  fc_ = register_module("fc", std::make_shared<Fc>(feature_dim_, num_classes_));
  eval();
}

// pytorch-fid's InceptionV3 blocks 0–3: stem convs 1a, 2a, 2b, max pool 3/2, convs 3b, 4a, max
// pool 3/2, Mixed_5b .. Mixed_7c, then the mean over H and W (AdaptiveAvgPool2d(1)).
FidInceptionV3::Outputs FidInceptionV3::forward(const Tensor& x, bool with_logits,
                                                bool with_spatial) const {
  CM_CHECK(x.dim() == 4 && x.size(1) == 3 && is_floating(x.dtype()),
           "FidInceptionV3: input must be floating [N, 3, H, W], got ", dtype_name(x.dtype()), " ",
           shape_str(x.shape()));
  CM_CHECK(x.size(2) >= 75 && x.size(3) >= 75, "FidInceptionV3: input of ", shape_str(x.shape()),
           " is smaller than the network's 75×75 minimum (use 299×299)");
  Tensor h = x;
  for (size_t i = 0; i < stem_.size(); ++i) {
    h = stem_[i]->forward(h);
    if (i == 2 || i == 4) h = max_pool2d(h, 3, 2);
  }
  Outputs out;
  for (const auto& m : mixed_) {
    if (with_spatial && m.get() == mixed_[6].get()) {
      // the first 7 channels of Mixed_6d's 1×1 branch, flattened in (H, W, C) order as the
      // TensorFlow graph's NHWC tensor [N, 17, 17, 7] is
      const Tensor b = spatial_conv_->forward(h);
      const Tensor first = narrow(b, 1, 0, std::min<int64_t>(7, b.size(1)));
      out.spatial = reshape(contiguous(permute(first, {0, 2, 3, 1})), {b.size(0), -1});
    }
    h = m->forward(h);
  }
  out.pool = mean(h, {2, 3});
  if (with_logits) out.logits = logits(out.pool);
  return out;
}

FidInceptionV3::Outputs FidInceptionV3::forward_images(const Tensor& images_u8, bool with_logits,
                                                       bool with_spatial) const {
  return forward(cm::to(inception_input(images_u8), fc_->weight.dtype()), with_logits,
                 with_spatial);
}

Tensor FidInceptionV3::logits(const Tensor& pool, bool with_bias) const {
  return linear(pool, cm::to(fc_->weight, pool.dtype()),
                with_bias ? cm::to(fc_->bias, pool.dtype()) : Tensor());
}

std::shared_ptr<FidInceptionV3> load_fid_inception(const std::string& path, Device device) {
  auto net = std::make_shared<FidInceptionV3>();
  nn::load_module(path, *net, /*strict=*/true);
  net->to(device);
  net->eval();
  return net;
}

}  // namespace cm::eval
