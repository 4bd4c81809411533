// LPIPS: the frozen VGG16 feature stack, the channel-normalised feature distances and the learned
// heads (see lpips.h). Everything is composed from differentiable ops, so the gradient with
// respect to the images comes from theirs.
#include "eval/lpips.h"

#include <filesystem>

#include "nn/layers.h"
#include "nn/safetensors.h"

namespace cm::eval {

namespace {

// torchvision's vgg16 "D" configuration: convolutions per block; a pool follows blocks 1–4 (the
// fifth pool comes after relu5_3, whose output LPIPS never reads).
constexpr int64_t kBlockConvs[5] = {2, 2, 3, 3, 3};
constexpr double kNormEps = 1e-10;  // both packages: f / (‖f‖ + 1e-10)

// A frozen convolution (or 1×1 head): weight [out, in, k, k] and optional bias [out] as buffers.
class FrozenConv : public nn::Module {
 public:
  FrozenConv(int64_t out, int64_t in, int64_t k, bool with_bias) {
    weight = zeros({out, in, k, k});
    register_buffer("weight", weight);
    if (with_bias) {
      bias = zeros({out});
      register_buffer("bias", bias);
    }
  }
  std::string type_name() const override { return "Conv2d"; }
  Tensor weight, bias;
};

// [1, 3, 1, 1] constants in `like`'s dtype and device.
Tensor channel_constants(const std::vector<double>& v, const Tensor& like) {
  return from_vector(v, {1, 3, 1, 1}, {.dtype = like.dtype(), .device = like.device()});
}

}  // namespace

LpipsOptions LpipsOptions::variant(const std::string& name) {
  if (name == "piq") return piq();
  if (name == "original") return original();
  CM_FAIL("lpips: unknown variant \"", name, "\" (expected piq or original)");
}

Lpips::Lpips(const LpipsOptions& o) : opt_(o) {
  CM_CHECK(o.widths.size() == 5, "Lpips: widths must list the 5 VGG block widths, got ",
           o.widths.size());
  for (int64_t w : o.widths) CM_CHECK(w > 0, "Lpips: block widths must be positive, got ", w);
  CM_CHECK(o.resize_below >= 0 && o.resize_to > 0, "Lpips: resize_below ", o.resize_below,
           " must be >= 0 and resize_to ", o.resize_to, " positive");
  auto features = register_module("features", std::make_shared<nn::ModuleDict>());
  int64_t index = 0, in = 3;
  for (int b = 0; b < 5; ++b) {
    const int64_t out = o.widths[size_t(b)];
    for (int64_t c = 0; c < kBlockConvs[b]; ++c) {
      auto conv =
          features->add(std::to_string(index), std::make_shared<FrozenConv>(out, in, 3, true));
      convs_.push_back({index, &conv->weight, &conv->bias});
      index += 2;  // Conv2d, ReLU
      in = out;
    }
    ++index;  // the pool
  }
  for (int b = 0; b < 5; ++b) {
    auto lin = register_module("lin" + std::to_string(b), std::make_shared<nn::ModuleDict>());
    auto model = lin->add("model", std::make_shared<nn::ModuleDict>());
    // "1": the lpips package's Sequential(Dropout, Conv2d(C, 1, 1, bias=False))
    auto head = model->add("1", std::make_shared<FrozenConv>(1, o.widths[size_t(b)], 1, false));
    heads_.push_back(&head->weight);
  }
  eval();
}

Tensor Lpips::prepare(const Tensor& x) const {
  CM_CHECK(x.dim() == 4 && (x.size(1) == 3 || x.size(1) == 1),
           "Lpips: expected images [N, 3, H, W] (or grey [N, 1, H, W]), got ",
           shape_str(x.shape()));
  Tensor h = x.dtype() == heads_[0]->dtype() ? x : cm::to(x, heads_[0]->dtype());
  if (h.size(1) == 1) h = expand(h, {-1, 3, -1, -1});  // grey: the same value in R, G and B
  if (opt_.resize_below > 0 && h.size(3) < opt_.resize_below)
    h = upsample_bilinear2d(h, opt_.resize_to, opt_.resize_to, /*align_corners=*/false);
  CM_CHECK(h.size(2) >= 16 && h.size(3) >= 16, "Lpips: images of ", h.size(2), "x", h.size(3),
           " are too small for four 2x2 pools (at least 16x16)");
  if (opt_.scaling == LpipsScaling::ImagenetMeanStd) {
    const Tensor u = div(add(h, 1.0), 2.0);  // [−1, 1] -> [0, 1]
    return div(sub(u, channel_constants({0.485, 0.456, 0.406}, h)),
               channel_constants({0.229, 0.224, 0.225}, h));
  }
  return div(sub(h, channel_constants({-0.030, -0.088, -0.188}, h)),
             channel_constants({0.458, 0.448, 0.450}, h));
}

std::vector<Tensor> Lpips::features(const Tensor& x) const {
  Tensor h = prepare(x);
  std::vector<Tensor> out;
  size_t conv = 0;
  for (int b = 0; b < 5; ++b) {
    for (int64_t c = 0; c < kBlockConvs[b]; ++c, ++conv) {
      const Conv& k = convs_[conv];
      h = relu(conv2d(h, *k.weight, *k.bias, {.pad_h = 1, .pad_w = 1}));
    }
    const Tensor norm = sqrt(sum(square(h), {1}, /*keepdim=*/true));
    out.push_back(div(h, add(norm, kNormEps)));
    if (b < 4) h = opt_.pooling == LpipsPooling::Avg ? avg_pool2d(h, 2) : max_pool2d(h, 2);
  }
  return out;
}

Tensor Lpips::forward(const Tensor& a, const Tensor& b) const {
  CM_CHECK(a.shape() == b.shape(), "Lpips: the two batches differ in shape: ", shape_str(a.shape()),
           " and ", shape_str(b.shape()));
  const int64_t n = a.size(0);
  // One pass over both batches.
  const std::vector<Tensor> f = features(cat({a, b}, 0));
  Tensor d;
  for (size_t l = 0; l < f.size(); ++l) {
    const Tensor diff = square(sub(narrow(f[l], 0, 0, n), narrow(f[l], 0, n, n)));
    // the 1×1 head, then the spatial mean: mean_hw Σ_c w_c·diff_c
    const Tensor layer = mean(sum(mul(diff, *heads_[l]), {1}), {1, 2});
    d = d.defined() ? add(d, layer) : layer;
  }
  return d;
}

std::vector<int64_t> lpips_widths(const std::string& path) {
  CM_CHECK(std::filesystem::is_regular_file(path), "lpips: weights file \"", path,
           "\" does not exist (make one with tools/convert_lpips.py)");
  const nn::SafetensorsFile f(path);
  std::vector<int64_t> widths;
  for (int64_t index : {0, 5, 10, 17, 24}) {
    const std::string name = "features." + std::to_string(index) + ".weight";
    CM_CHECK(f.contains(name), "lpips: \"", path, "\" is not an LPIPS weights file (no tensor ",
             name, "; make one with tools/convert_lpips.py)");
    const Shape& s = f.info(name).shape;
    CM_CHECK(s.size() == 4, "lpips: \"", path, "\": ", name, " has shape ", shape_str(s),
             ", expected [C_out, C_in, 3, 3]");
    widths.push_back(s[0]);
  }
  return widths;
}

std::shared_ptr<Lpips> load_lpips(const std::string& path, LpipsOptions o, Device device) {
  o.widths = lpips_widths(path);
  auto m = std::make_shared<Lpips>(o);
  try {
    m->load_state_dict(nn::load_safetensors(path), /*strict=*/true);
  } catch (const Error& e) {
    CM_FAIL("lpips: \"", path, "\": ", e.what());
  }
  m->to(device);
  return m;
}

}  // namespace cm::eval
