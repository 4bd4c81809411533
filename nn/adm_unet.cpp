#include "nn/adm_unet.h"

#include <algorithm>
#include <cmath>

namespace cm::nn {

namespace {
// torch's default initialisation of Conv2d and Linear: weight and bias U(−1/√fan_in, 1/√fan_in)
// (kaiming_uniform with a = √5); EDM's kaiming_uniform is U(−√(3/fan_in), √(3/fan_in)).
const InitOptions kTorchDefault{
    .mode = "kaiming_uniform", .weight = 1 / std::sqrt(3.0), .bias = 1 / std::sqrt(3.0)};
// The reference's zero_module.
const InitOptions kZero{.mode = "kaiming_uniform", .weight = 0, .bias = 0};

std::shared_ptr<Conv2d> conv(int64_t in, int64_t out, int64_t kernel, const InitOptions& init,
                             Generator& gen) {
  return std::make_shared<Conv2d>(in, out, kernel, true, false, false, std::vector<double>{1, 1},
                                  false, init, gen);
}
// The reference's normalization(): GroupNorm32(32, C), eps 1e-5, statistics in f32.
std::shared_ptr<GroupNorm> norm(int64_t channels) {
  return std::make_shared<GroupNorm>(channels, 32, 1, 1e-5);
}
Tensor as_dtype_of(const Tensor& w, const Tensor& x) {
  return w.defined() ? cm::to(w, x.dtype()) : w;
}
// The reference's timestep_embedding: [cos(t·f), sin(t·f)] with f_j = exp(−ln(10000)·j/half),
// j < half = dim/2 (zero-padded for an odd dim). With c_noise = 250·ln σ the arguments t·f reach
// about ±1500, so the frequencies are computed as the reference computes them: in f32 the
// exponent −ln(10000)·j/half is rounded step by step as torch's f32 arange arithmetic rounds it
// (one ulp of a frequency moves an argument by about 1e-4); in f64, in f64 throughout.
Tensor timestep_embedding(const Tensor& t, int64_t dim) {
  const int64_t half = dim / 2;
  std::vector<double> f(static_cast<size_t>(half));
  for (int64_t j = 0; j < half; ++j) {
    if (t.dtype() == DType::f64) {
      f[size_t(j)] = std::exp(-std::log(10000.0) * double(j) / double(half));
    } else {
      const float a = (float(-std::log(10000.0)) * float(j)) / float(half);
      f[size_t(j)] = double(std::exp(a));
    }
  }
  const Tensor freqs = cm::to(cm::to(from_vector(f, {half}), t.device()), t.dtype());
  const Tensor args = mul(unsqueeze(t, 1), unsqueeze(freqs, 0));
  Tensor e = cat({cos(args), sin(args)}, 1);
  if (dim % 2) e = cat({e, zeros({t.size(0), 1}, {.dtype = t.dtype(), .device = t.device()})}, 1);
  return e;
}
}  // namespace

// ---- configuration
// ---------------------------------------------------------------------------------------
void AdmUNetConfig::validate() const {
  auto positive = [](int64_t v, const char* field) {
    CM_CHECK(v > 0, "ADM U-Net: ", field, " must be positive, got ", v);
  };
  positive(image_size, "image_size");
  positive(in_channels, "in_channels");
  positive(out_channels, "out_channels");
  positive(model_channels, "model_channels");
  positive(num_res_blocks, "num_res_blocks");
  CM_CHECK(num_classes >= 0, "ADM U-Net: num_classes must be >= 0, got ", num_classes);
  CM_CHECK(!channel_mult.empty(), "ADM U-Net: channel_mult is empty");
  const int64_t halvings = int64_t(channel_mult.size()) - 1;
  CM_CHECK((image_size >> halvings) << halvings == image_size, "ADM U-Net: image_size ", image_size,
           " cannot be halved ", halvings, " times");
  for (int64_t m : channel_mult) {
    positive(m, "channel_mult entry");
    // GroupNorm32 needs widths divisible by its 32 groups.
    CM_CHECK(m * model_channels % 32 == 0, "ADM U-Net: every width (model_channels ",
             model_channels, " × channel_mult ", m, ") must be a multiple of 32 (GroupNorm32)");
  }
  for (int64_t r : attention_resolutions) positive(r, "attention_resolutions entry");
  CM_CHECK(dropout >= 0 && dropout < 1, "ADM U-Net: dropout must be in [0, 1), got ", dropout);
  CM_CHECK(num_head_channels == -1 || num_head_channels > 0,
           "ADM U-Net: num_head_channels must be -1 or positive, got ", num_head_channels);
  if (num_head_channels == -1) {
    positive(num_heads, "num_heads");
    CM_CHECK(num_heads_upsample == -1 || num_heads_upsample > 0,
             "ADM U-Net: num_heads_upsample must be -1 or positive, got ", num_heads_upsample);
  }
  for (size_t level = 0; level < channel_mult.size(); ++level) {
    const int64_t res = image_size >> level;
    if (std::find(attention_resolutions.begin(), attention_resolutions.end(), res) ==
        attention_resolutions.end())
      continue;
    const int64_t ch = channel_mult[level] * model_channels;
    const int64_t heads = num_head_channels == -1 ? num_heads : ch / num_head_channels;
    CM_CHECK(num_head_channels == -1 || ch % num_head_channels == 0, "ADM U-Net: width ", ch,
             " at resolution ", res, " is not divisible by num_head_channels ", num_head_channels);
    CM_CHECK(ch % heads == 0, "ADM U-Net: width ", ch, " at resolution ", res,
             " is not divisible into ", heads, " heads");
  }
  CM_CHECK(attention_split == "flash" || attention_split == "legacy",
           "ADM U-Net: attention_split must be \"flash\" or \"legacy\", got \"", attention_split,
           "\"");
  CM_CHECK(
      memory_format == "auto" || memory_format == "contiguous" || memory_format == "channels_last",
      "ADM U-Net: memory_format must be \"auto\", \"contiguous\" or \"channels_last\", got \"",
      memory_format, "\"");
  check_recompute_option(recompute, "ADM U-Net");
  check_attention_option(attention, "ADM U-Net");
}

std::vector<std::string> adm_unet_preset_names() {
  return {"adm-imagenet64", "adm-lsun256", "adm-tiny-16"};
}

AdmUNetConfig adm_unet_preset(const std::string& name) {
  AdmUNetConfig c;  // the defaults are ImageNet-64's (scripts/launch.sh)
  if (name == "adm-imagenet64") {
    c.num_classes = 1000;
    return c;
  }
  if (name == "adm-lsun256") {
    c.image_size = 256;
    c.model_channels = 256;
    c.channel_mult = {1, 1, 2, 2, 4, 4};
    c.num_res_blocks = 2;
    c.use_scale_shift_norm = false;
    return c;
  }
  if (name == "adm-tiny-16") {
    c.image_size = 16;
    c.model_channels = 32;
    c.channel_mult = {1, 2};
    c.num_res_blocks = 1;
    c.attention_resolutions = {8};
    c.num_head_channels = 32;  // two heads at 8×8
    c.num_classes = 10;
    return c;
  }
  std::string known;
  for (const std::string& n : adm_unet_preset_names()) known += (known.empty() ? "" : ", ") + n;
  CM_FAIL("unknown ADM network \"", name, "\" (known: ", known, ")");
}

// ---- layers
// ---------------------------------------------------------------------------------------------
Embedding::Embedding(int64_t num, int64_t dim, Generator& gen) {
  {
    NoGradGuard ng;
    weight = detach(randn({num, dim}, {}, &gen));
  }
  register_parameter("weight", weight);
}
Tensor Embedding::forward(const Tensor& indices) const {
  return embedding(weight, indices);
}
Tensor Embedding::forward_onehot(const Tensor& rows) const {
  return matmul(rows, as_dtype_of(weight, rows));
}

StridedConv2d::StridedConv2d(int64_t in, int64_t out, int64_t kernel, int64_t stride_,
                             Generator& gen)
    : stride(stride_) {
  const int64_t fan_in = in * kernel * kernel;
  {
    NoGradGuard ng;
    weight = detach(mul(weight_init({out, in, kernel, kernel}, kTorchDefault.mode, fan_in,
                                    out * kernel * kernel, gen),
                        kTorchDefault.weight));
    bias =
        detach(mul(weight_init({out}, kTorchDefault.mode, fan_in, out, gen), kTorchDefault.bias));
  }
  register_parameter("weight", weight);
  register_parameter("bias", bias);
}
Tensor StridedConv2d::forward(const Tensor& x) const {
  const int64_t pad = weight.size(-1) / 2;
  return conv2d(x, as_dtype_of(weight, x), as_dtype_of(bias, x),
                {.stride_h = stride, .stride_w = stride, .pad_h = pad, .pad_w = pad});
}

AdmDownsample::AdmDownsample(int64_t channels, int64_t out_channels, bool use_conv,
                             Generator& gen) {
  if (use_conv)
    op = register_module("op", std::make_shared<StridedConv2d>(channels, out_channels, 3, 2, gen));
  else
    CM_CHECK(channels == out_channels, "Downsample: average pooling keeps the width (", channels,
             " -> ", out_channels, ")");
}
Tensor AdmDownsample::forward(const Tensor& x) const {
  return op ? op->forward(x) : avg_pool2d(x, 2);
}

AdmUpsample::AdmUpsample(int64_t channels, int64_t out_channels, bool use_conv, Generator& gen) {
  if (use_conv)
    conv = register_module("conv", nn::conv(channels, out_channels, 3, kTorchDefault, gen));
  else
    CM_CHECK(channels == out_channels, "Upsample: without a convolution the width stays (",
             channels, " -> ", out_channels, ")");
}
Tensor AdmUpsample::forward(const Tensor& x) const {
  const Tensor y = upsample_nearest2d(x, 2);
  return conv ? conv->forward(y) : y;
}

AdmResBlock::AdmResBlock(int64_t channels_, int64_t emb_channels, double dropout_,
                         int64_t out_channels_, bool scale_shift, bool up_, bool down_,
                         Generator& gen)
    : channels(channels_),
      out_channels(out_channels_),
      dropout(dropout_),
      use_scale_shift_norm(scale_shift),
      up(up_),
      down(down_) {
  auto in_layers = register_module("in_layers", std::make_shared<ModuleDict>());
  in_norm = in_layers->add("0", norm(channels));  // 1: SiLU
  in_conv = in_layers->add("2", conv(channels, out_channels, 3, kTorchDefault, gen));
  auto emb_layers = register_module("emb_layers", std::make_shared<ModuleDict>());  // 0: SiLU
  emb_linear = emb_layers->add(
      "1", std::make_shared<Linear>(emb_channels, scale_shift ? 2 * out_channels : out_channels,
                                    true, kTorchDefault, gen));
  auto out_layers = register_module("out_layers", std::make_shared<ModuleDict>());
  out_norm = out_layers->add("0", norm(out_channels));  // 1: SiLU, 2: dropout
  out_conv = out_layers->add("3", conv(out_channels, out_channels, 3, kZero, gen));
  if (out_channels != channels)
    skip = register_module("skip_connection", conv(channels, out_channels, 1, kTorchDefault, gen));
}

Tensor AdmResBlock::forward(const Tensor& x_in, const Tensor& emb,
                            const ForwardContext& ctx) const {
  Tensor x = x_in, h = in_norm->forward_silu(x_in);
  if (up) {
    h = upsample_nearest2d(h, 2);
    x = upsample_nearest2d(x, 2);
  } else if (down) {
    h = avg_pool2d(h, 2);
    x = avg_pool2d(x, 2);
  }
  h = in_conv->forward(h);
  const Tensor e = cm::to(unsqueeze(unsqueeze(emb_linear->forward(silu(emb)), 2), 3), h.dtype());
  if (use_scale_shift_norm) {
    const std::vector<Tensor> ss = chunk(e, 2, 1);  // scale, shift
    h = out_norm->forward_then(h, ss, [](const Tensor& n, const std::vector<Tensor>& e) {
      return silu(add(mul(n, add(e[0], 1.0)), e[1]));
    });
  } else {
    h = out_norm->forward_silu(add(h, e));
  }
  h = out_conv->forward(nn::dropout(h, dropout, is_training(), ctx));
  return add(skip ? skip->forward(x) : x, h);
}

AdmAttention::AdmAttention(int64_t channels_, int64_t heads, int64_t head_channels, bool legacy,
                           Generator& gen)
    : channels(channels_),
      num_heads(head_channels == -1 ? heads : channels_ / head_channels),
      legacy_split(legacy) {
  norm = register_module("norm", nn::norm(channels));
  qkv = register_module("qkv", conv(channels, 3 * channels, 1, kTorchDefault, gen));
  proj_out = register_module("proj_out", conv(channels, channels, 1, kZero, gen));
}

Tensor AdmAttention::forward(const Tensor& x) const {
  const int64_t n = x.size(0), c = x.size(1), d = c / num_heads;
  const int64_t length = x.size(2) * x.size(3);
  const Tensor t = qkv->forward(norm->forward(x));  // [n, 3c, H, W]
  // flash: channels (three, head, d); legacy: (head, three, d)
  const Tensor split = legacy_split ? reshape(t, {n, num_heads, 3, d, length})
                                    : reshape(t, {n, 3, num_heads, d, length});
  const int64_t three_dim = legacy_split ? 2 : 1;
  auto part = [&](int64_t i) {  // [n·heads, length, d]
    return transpose(reshape(select(split, three_dim, i), {n * num_heads, d, length}), 1, 2);
  };
  // softmax(q·kᵀ/√d)·v, the softmax in f32
  const Tensor a = scaled_dot_product_attention(part(0), part(1), part(2),
                                                1.0 / std::sqrt(double(d)));  // [n·h, L, d]
  // heads back to channels (head, d), as both reference paths return
  const Tensor h = reshape(transpose(a, 1, 2), {n, c, x.size(2), x.size(3)});
  return add(x, proj_out->forward(h));
}

// ---- the network
// -----------------------------------------------------------------------------------------
AdmUNet::AdmUNet(const AdmUNetConfig& cfg, Generator& gen) : cfg_(cfg) {
  cfg.validate();
  const int64_t mc = cfg.model_channels, emb_ch = 4 * mc;
  const bool legacy = cfg.attention_split == "legacy";
  const int64_t heads_up = cfg.num_heads_upsample == -1 ? cfg.num_heads : cfg.num_heads_upsample;
  const auto has_attn = [&](int64_t ds) {
    return std::find(cfg.attention_resolutions.begin(), cfg.attention_resolutions.end(),
                     cfg.image_size / ds) != cfg.attention_resolutions.end();
  };

  auto time_embed = register_module("time_embed", std::make_shared<ModuleDict>());
  time_embed0_ =
      time_embed->add("0", std::make_shared<Linear>(mc, emb_ch, true, kTorchDefault, gen));
  time_embed2_ =
      time_embed->add("2", std::make_shared<Linear>(emb_ch, emb_ch, true, kTorchDefault, gen));
  if (cfg.num_classes)
    label_emb_ =
        register_module("label_emb", std::make_shared<Embedding>(cfg.num_classes, emb_ch, gen));

  // A TimestepEmbedSequential: its layers registered as "0", "1", ... under `parent.index`.
  auto stage = [](ModuleDict& parent, std::vector<Stage>* list, std::vector<std::string>* names,
                  const std::string& prefix, Stage layers) {
    auto seq = parent.add(std::to_string(list->size()), std::make_shared<ModuleDict>());
    for (size_t i = 0; i < layers.size(); ++i) seq->add(std::to_string(i), layers[i].module);
    names->push_back(prefix + "." + std::to_string(list->size()));
    list->push_back(std::move(layers));
  };
  auto res = [&](int64_t in, int64_t out, bool up, bool down) {
    return Layer{Kind::Res, std::make_shared<AdmResBlock>(in, emb_ch, cfg.dropout, out,
                                                          cfg.use_scale_shift_norm, up, down, gen)};
  };
  auto attn = [&](int64_t ch, int64_t heads) {
    return Layer{Kind::Attention,
                 std::make_shared<AdmAttention>(ch, heads, cfg.num_head_channels, legacy, gen)};
  };

  // Encoder.
  auto input_blocks = register_module("input_blocks", std::make_shared<ModuleDict>());
  int64_t ch = cfg.channel_mult[0] * mc;
  const int64_t input_ch = ch;
  stage(*input_blocks, &input_, &input_names_, "input_blocks",
        Stage(1, Layer{Kind::Conv, conv(cfg.in_channels, ch, 3, kTorchDefault, gen)}));
  std::vector<int64_t> skip_channels = {ch};
  int64_t ds = 1;
  for (size_t level = 0; level < cfg.channel_mult.size(); ++level) {
    const int64_t mult = cfg.channel_mult[level];
    for (int64_t i = 0; i < cfg.num_res_blocks; ++i) {
      Stage layers;
      layers.reserve(2);
      layers.push_back(res(ch, mult * mc, false, false));
      ch = mult * mc;
      if (has_attn(ds)) layers.push_back(attn(ch, cfg.num_heads));
      stage(*input_blocks, &input_, &input_names_, "input_blocks", std::move(layers));
      skip_channels.push_back(ch);
    }
    if (level + 1 != cfg.channel_mult.size()) {
      stage(*input_blocks, &input_, &input_names_, "input_blocks",
            Stage(1, cfg.resblock_updown ? res(ch, ch, false, true)
                                         : Layer{Kind::Down, std::make_shared<AdmDownsample>(
                                                                 ch, ch, cfg.conv_resample, gen)}));
      skip_channels.push_back(ch);
      ds *= 2;
    }
  }

  // Middle.
  auto middle_block = register_module("middle_block", std::make_shared<ModuleDict>());
  middle_.push_back(res(ch, ch, false, false));
  middle_.push_back(attn(ch, cfg.num_heads));
  middle_.push_back(res(ch, ch, false, false));
  for (size_t i = 0; i < middle_.size(); ++i)
    middle_block->add(std::to_string(i), middle_[i].module);

  // Decoder.
  auto output_blocks = register_module("output_blocks", std::make_shared<ModuleDict>());
  for (size_t level = cfg.channel_mult.size(); level-- > 0;) {
    const int64_t mult = cfg.channel_mult[level];
    for (int64_t i = 0; i <= cfg.num_res_blocks; ++i) {
      const int64_t skip_ch = skip_channels.back();
      skip_channels.pop_back();
      Stage layers;
      layers.reserve(3);
      layers.push_back(res(ch + skip_ch, mc * mult, false, false));
      ch = mc * mult;
      if (has_attn(ds)) layers.push_back(attn(ch, heads_up));
      if (level > 0 && i == cfg.num_res_blocks) {
        layers.push_back(
            cfg.resblock_updown
                ? res(ch, ch, true, false)
                : Layer{Kind::Up, std::make_shared<AdmUpsample>(ch, ch, cfg.conv_resample, gen)});
        ds /= 2;
      }
      stage(*output_blocks, &output_, &output_names_, "output_blocks", std::move(layers));
    }
  }

  auto out = register_module("out", std::make_shared<ModuleDict>());
  out_norm_ = out->add("0", norm(ch));  // 1: SiLU
  out_conv_ = out->add("2", conv(input_ch, cfg.out_channels, 3, kZero, gen));
}

Tensor AdmUNet::run(const Stage& stage, Tensor h, const Tensor& emb,
                    const ForwardContext& ctx) const {
  for (const Layer& l : stage) {
    switch (l.kind) {
      case Kind::Conv:
        h = static_cast<const Conv2d&>(*l.module).forward(h);
        break;
      case Kind::Res:
        h = static_cast<const AdmResBlock&>(*l.module).forward(h, emb, ctx);
        break;
      case Kind::Attention:
        h = static_cast<const AdmAttention&>(*l.module).forward(h);
        break;
      case Kind::Down:
        h = static_cast<const AdmDownsample&>(*l.module).forward(h);
        break;
      case Kind::Up:
        h = static_cast<const AdmUpsample&>(*l.module).forward(h);
        break;
    }
  }
  return h;
}

Tensor AdmUNet::forward(const Tensor& x_in, const Tensor& noise_labels, const Tensor& class_labels,
                        const Tensor& /*augment_labels*/, const ForwardContext& ctx) const {
  CM_CHECK(x_in.dim() == 4 && x_in.size(1) == cfg_.in_channels && x_in.size(2) == cfg_.image_size &&
               x_in.size(3) == cfg_.image_size,
           "ADM U-Net: input of shape ", shape_str(x_in.shape()), ", expected [N, ",
           cfg_.in_channels, ", ", cfg_.image_size, ", ", cfg_.image_size, "]");
  const int64_t n = x_in.size(0);
  CM_CHECK(noise_labels.dim() == 1 && noise_labels.size(0) == n,
           "ADM U-Net: noise_labels of shape ", shape_str(noise_labels.shape()), ", expected [", n,
           "]");
  Tensor emb = timestep_embedding(noise_labels, cfg_.model_channels);
  emb = time_embed2_->forward(silu(time_embed0_->forward(emb)));
  if (label_emb_) {
    CM_CHECK(class_labels.defined() && class_labels.dim() == 2 && class_labels.size(0) == n &&
                 class_labels.size(1) == cfg_.num_classes,
             "ADM U-Net: a class-conditional network needs class_labels of shape [", n, ", ",
             cfg_.num_classes, "] (one-hot rows)");
    emb = add(emb, label_emb_->forward_onehot(cm::to(class_labels, emb.dtype())));
  } else {
    CM_CHECK(!class_labels.defined(),
             "ADM U-Net: class_labels given to an unconditional network (num_classes 0)");
  }

  // The activations' memory format, as in SongUNet::forward.
  const MemoryFormat format = resolve_memory_format(cfg_.memory_format, backend_of(x_in));
  const auto in_format = [format](const Tensor& t) { return to_memory_format(t, format); };
  const RecomputeGuard recompute(resolve_recompute(cfg_.recompute, backend_of(x_in)));
  const AttentionKernelGuard attention(resolve_attention(cfg_.attention));
  std::vector<Tensor> hs;
  Tensor h = in_format(x_in);
  for (size_t i = 0; i < input_.size(); ++i) {
    h = in_format(run(input_[i], h, emb, ctx));
    hs.push_back(h);
    if (ctx.observe) ctx.observe(input_names_[i], h);
  }
  h = in_format(run(middle_, h, emb, ctx));
  if (ctx.observe) ctx.observe("middle_block", h);
  for (size_t i = 0; i < output_.size(); ++i) {
    h = cat({h, hs.back()}, 1);
    hs.pop_back();
    h = in_format(run(output_[i], h, emb, ctx));
    if (ctx.observe) ctx.observe(output_names_[i], h);
  }
  return contiguous(out_conv_->forward(out_norm_->forward_silu(h)));
}

}  // namespace cm::nn
