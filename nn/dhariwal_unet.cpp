#include "nn/dhariwal_unet.h"

#include <algorithm>
#include <cmath>

namespace cm::nn {

void DhariwalUNetConfig::validate() const {
  auto positive = [](int64_t v, const char* field) {
    CM_CHECK(v > 0, "DhariwalUNet: ", field, " must be positive, got ", v);
  };
  positive(img_resolution, "img_resolution");
  positive(in_channels, "in_channels");
  positive(out_channels, "out_channels");
  positive(model_channels, "model_channels");
  positive(channel_mult_emb, "channel_mult_emb");
  positive(num_blocks, "num_blocks");
  CM_CHECK(label_dim >= 0, "DhariwalUNet: label_dim must be >= 0, got ", label_dim);
  CM_CHECK(augment_dim >= 0, "DhariwalUNet: augment_dim must be >= 0, got ", augment_dim);
  CM_CHECK(!channel_mult.empty(), "DhariwalUNet: channel_mult is empty");
  for (int64_t m : channel_mult) positive(m, "channel_mult entry");
  CM_CHECK(
      (img_resolution >> (channel_mult.size() - 1)) << (channel_mult.size() - 1) == img_resolution,
      "DhariwalUNet: img_resolution ", img_resolution, " cannot be halved ",
      channel_mult.size() - 1, " times");
  CM_CHECK(model_channels % 2 == 0, "DhariwalUNet: model_channels must be even (the noise ",
           "embedding's width), got ", model_channels);
  CM_CHECK(dropout >= 0 && dropout < 1, "DhariwalUNet: dropout must be in [0, 1), got ", dropout);
  CM_CHECK(label_dropout >= 0 && label_dropout < 1,
           "DhariwalUNet: label_dropout must be in [0, 1), got ", label_dropout);
  CM_CHECK(
      memory_format == "auto" || memory_format == "contiguous" || memory_format == "channels_last",
      "DhariwalUNet: memory_format must be \"auto\", \"contiguous\" or \"channels_last\", got \"",
      memory_format, "\"");
  check_recompute_option(recompute, "DhariwalUNet");
  check_attention_option(attention, "DhariwalUNet");
}

std::vector<std::string> dhariwal_unet_preset_names() {
  return {"dhariwal-imagenet64", "dhariwal-tiny-16"};
}

DhariwalUNetConfig dhariwal_unet_preset(const std::string& name) {
  DhariwalUNetConfig c;  // the defaults are EDM's --arch=adm
  if (name == "dhariwal-imagenet64") {
    c.label_dim = 1000;
    return c;
  }
  if (name == "dhariwal-tiny-16") {
    c.img_resolution = 16;
    c.model_channels = 64;
    c.channel_mult = {1, 2};
    c.num_blocks = 1;
    c.attn_resolutions = {8};
    c.label_dim = 10;
    return c;
  }
  std::string known;
  for (const std::string& n : dhariwal_unet_preset_names())
    known += (known.empty() ? "" : ", ") + n;
  CM_FAIL("unknown network \"", name, "\" (known: ", known, ")");
}

DhariwalUNet::DhariwalUNet(const DhariwalUNetConfig& cfg, Generator& gen) : cfg_(cfg) {
  cfg.validate();
  const int64_t emb_channels = cfg.model_channels * cfg.channel_mult_emb;
  const InitOptions init{
      .mode = "kaiming_uniform", .weight = std::sqrt(1.0 / 3), .bias = std::sqrt(1.0 / 3)};
  const InitOptions init_zero{.mode = "kaiming_uniform", .weight = 0, .bias = 0};
  UNetBlockOptions block;  // EDM's UNetBlock defaults: adaptive scale, skip scale 1, eps 1e-5
  block.emb_channels = emb_channels;
  block.channels_per_head = 64;
  block.dropout = cfg.dropout;
  block.init = init;
  block.init_zero = init_zero;
  auto block_with = [&](bool up, bool down, bool attention) {
    UNetBlockOptions o = block;
    o.up = up;
    o.down = down;
    o.attention = attention;
    return o;
  };
  const auto has_attn = [&](int64_t res) {
    return std::find(cfg.attn_resolutions.begin(), cfg.attn_resolutions.end(), res) !=
           cfg.attn_resolutions.end();
  };

  // Mapping.
  map_noise_ = register_module(
      "map_noise", std::make_shared<PositionalEmbedding>(cfg.model_channels, 10000, false));
  if (cfg.augment_dim)
    map_augment_ = register_module(
        "map_augment",
        std::make_shared<Linear>(cfg.augment_dim, cfg.model_channels, false, init_zero, gen));
  map_layer0_ = register_module(
      "map_layer0", std::make_shared<Linear>(cfg.model_channels, emb_channels, true, init, gen));
  map_layer1_ = register_module(
      "map_layer1", std::make_shared<Linear>(emb_channels, emb_channels, true, init, gen));
  if (cfg.label_dim)
    map_label_ = register_module(
        "map_label",
        std::make_shared<Linear>(
            cfg.label_dim, emb_channels, false,
            InitOptions{.mode = "kaiming_normal", .weight = std::sqrt(double(cfg.label_dim))},
            gen));

  // Encoder.
  enc_ = register_module("enc", std::make_shared<ModuleDict>());
  int64_t cout = cfg.in_channels;
  std::vector<int64_t> skips;
  for (size_t level = 0; level < cfg.channel_mult.size(); ++level) {
    const int64_t res = cfg.img_resolution >> level;
    const std::string r = std::to_string(res) + "x" + std::to_string(res);
    if (level == 0) {
      const int64_t cin = cout;
      cout = cfg.model_channels * cfg.channel_mult[level];
      auto conv = std::make_shared<Conv2d>(cin, cout, 3, true, false, false,
                                           std::vector<double>{1, 1}, false, init, gen);
      enc_->add(r + "_conv", conv);
      enc_entries_.push_back({r + "_conv", conv, false});
    } else {
      auto down = std::make_shared<UNetBlock>(cout, cout, block_with(false, true, false), gen);
      enc_->add(r + "_down", down);
      enc_entries_.push_back({r + "_down", down, true});
    }
    skips.push_back(cout);
    for (int64_t idx = 0; idx < cfg.num_blocks; ++idx) {
      const int64_t cin = cout;
      cout = cfg.model_channels * cfg.channel_mult[level];
      const std::string name = r + "_block" + std::to_string(idx);
      auto b = std::make_shared<UNetBlock>(cin, cout, block_with(false, false, has_attn(res)), gen);
      enc_->add(name, b);
      enc_entries_.push_back({name, b, true});
      skips.push_back(cout);
    }
  }

  // Decoder.
  dec_ = register_module("dec", std::make_shared<ModuleDict>());
  auto dec_add = [&](const std::string& name, int64_t cin, int64_t c, const UNetBlockOptions& o) {
    dec_entries_.emplace_back(name, dec_->add(name, std::make_shared<UNetBlock>(cin, c, o, gen)));
  };
  for (size_t level = cfg.channel_mult.size(); level-- > 0;) {
    const int64_t res = cfg.img_resolution >> level;
    const std::string r = std::to_string(res) + "x" + std::to_string(res);
    if (level == cfg.channel_mult.size() - 1) {
      dec_add(r + "_in0", cout, cout, block_with(false, false, true));
      dec_add(r + "_in1", cout, cout, block_with(false, false, false));
    } else {
      dec_add(r + "_up", cout, cout, block_with(true, false, false));
    }
    for (int64_t idx = 0; idx <= cfg.num_blocks; ++idx) {
      const int64_t cin = cout + skips.back();
      skips.pop_back();
      cout = cfg.model_channels * cfg.channel_mult[level];
      dec_add(r + "_block" + std::to_string(idx), cin, cout,
              block_with(false, false, has_attn(res)));
    }
  }
  out_norm_ = register_module("out_norm", std::make_shared<GroupNorm>(cout));
  out_conv_ = register_module(
      "out_conv", std::make_shared<Conv2d>(cout, cfg.out_channels, 3, true, false, false,
                                           std::vector<double>{1, 1}, false, init_zero, gen));
}

Tensor DhariwalUNet::forward(const Tensor& x_in, const Tensor& noise_labels,
                             const Tensor& class_labels, const Tensor& augment_labels,
                             const ForwardContext& ctx) const {
  CM_CHECK(x_in.dim() == 4 && x_in.size(1) == cfg_.in_channels &&
               x_in.size(2) == cfg_.img_resolution && x_in.size(3) == cfg_.img_resolution,
           "DhariwalUNet: input of shape ", shape_str(x_in.shape()), ", expected [N, ",
           cfg_.in_channels, ", ", cfg_.img_resolution, ", ", cfg_.img_resolution, "]");
  const int64_t n = x_in.size(0);
  CM_CHECK(noise_labels.dim() == 1 && noise_labels.size(0) == n,
           "DhariwalUNet: noise_labels of shape ", shape_str(noise_labels.shape()), ", expected [",
           n, "]");
  // Mapping.
  Tensor emb = map_noise_->forward(noise_labels);
  if (map_augment_ && augment_labels.defined())
    emb = add(emb, map_augment_->forward(cm::to(augment_labels, emb.dtype())));
  emb = silu(map_layer0_->forward(emb));
  emb = map_layer1_->forward(emb);
  if (map_label_) {
    CM_CHECK(class_labels.defined() && class_labels.dim() == 2 && class_labels.size(0) == n &&
                 class_labels.size(1) == cfg_.label_dim,
             "DhariwalUNet: a conditional network needs class_labels of shape [", n, ", ",
             cfg_.label_dim, "]");
    Tensor labels = cm::to(class_labels, emb.dtype());
    if (is_training() && cfg_.label_dropout > 0) {
      Generator& gen = ctx.dropout ? *ctx.dropout : default_generator();
      labels = mul(labels, bernoulli({n, 1}, 1 - cfg_.label_dropout,
                                     {.dtype = labels.dtype(), .device = labels.device()}, &gen));
    }
    emb = add(emb, map_label_->forward(labels));
  }
  emb = silu(emb);

  // The activations in the network's memory format (as SongUNet::forward).
  const MemoryFormat format = resolve_memory_format(cfg_.memory_format, backend_of(x_in));
  const auto in_format = [format](const Tensor& t) { return to_memory_format(t, format); };
  const RecomputeGuard recompute(resolve_recompute(cfg_.recompute, backend_of(x_in)));
  const AttentionKernelGuard attention(resolve_attention(cfg_.attention));

  // Encoder.
  std::vector<Tensor> skips;
  Tensor x = in_format(x_in);
  for (const Entry& e : enc_entries_) {
    x = in_format(e.block ? static_cast<const UNetBlock&>(*e.module).forward(x, emb, ctx)
                          : static_cast<const Conv2d&>(*e.module).forward(x));
    skips.push_back(x);
    if (ctx.observe) ctx.observe("enc." + e.name, x);
  }

  // Decoder.
  for (const auto& [name, block] : dec_entries_) {
    if (x.size(1) != block->in_channels) {
      x = cat({x, skips.back()}, 1);
      skips.pop_back();
    }
    x = in_format(block->forward(x, emb, ctx));
    if (ctx.observe) ctx.observe("dec." + name, x);
  }
  return contiguous(out_conv_->forward(out_norm_->forward_silu(x)));
}

}  // namespace cm::nn
