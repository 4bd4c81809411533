#include "nn/songunet.h"

#include <algorithm>
#include <cmath>

namespace cm::nn {

void SongUNetConfig::validate() const {
  auto positive = [](int64_t v, const char* field) {
    CM_CHECK(v > 0, "SongUNet: ", field, " must be positive, got ", v);
  };
  positive(img_resolution, "img_resolution");
  positive(in_channels, "in_channels");
  positive(out_channels, "out_channels");
  positive(model_channels, "model_channels");
  positive(channel_mult_emb, "channel_mult_emb");
  positive(num_blocks, "num_blocks");
  positive(channel_mult_noise, "channel_mult_noise");
  CM_CHECK(label_dim >= 0 && augment_dim >= 0, "SongUNet: label_dim and augment_dim must be >= 0");
  CM_CHECK(!channel_mult.empty(), "SongUNet: channel_mult is empty");
  for (int64_t m : channel_mult) positive(m, "channel_mult entry");
  CM_CHECK(
      (img_resolution >> (channel_mult.size() - 1)) << (channel_mult.size() - 1) == img_resolution,
      "SongUNet: img_resolution ", img_resolution, " cannot be halved ", channel_mult.size() - 1,
      " times");
  CM_CHECK(dropout >= 0 && dropout < 1, "SongUNet: dropout must be in [0, 1), got ", dropout);
  CM_CHECK(label_dropout >= 0 && label_dropout < 1,
           "SongUNet: label_dropout must be in [0, 1), got ", label_dropout);
  CM_CHECK(embedding_type == "positional" || embedding_type == "fourier",
           "SongUNet: embedding_type must be ", "\"positional\" or \"fourier\", got \"",
           embedding_type, "\"");
  CM_CHECK(encoder_type == "standard" || encoder_type == "skip" || encoder_type == "residual",
           "SongUNet: encoder_type must be \"standard\", \"skip\" or \"residual\", got \"",
           encoder_type, "\"");
  CM_CHECK(
      memory_format == "auto" || memory_format == "contiguous" || memory_format == "channels_last",
      "SongUNet: memory_format must be \"auto\", \"contiguous\" or \"channels_last\", got \"",
      memory_format, "\"");
  check_recompute_option(recompute, "SongUNet");
  check_attention_option(attention, "SongUNet");
  CM_CHECK(decoder_type == "standard" || decoder_type == "skip",
           "SongUNet: decoder_type must be \"standard\" or \"skip\", got \"", decoder_type, "\"");
  CM_CHECK(!resample_filter.empty(), "SongUNet: resample_filter is empty");
  CM_CHECK((model_channels * channel_mult_noise) % 2 == 0,
           "SongUNet: the noise embedding needs an even width");
}

std::vector<std::string> songunet_preset_names() {
  return {"ddpmpp-cifar10", "ncsnpp-cifar10", "ddpmpp-cifar10-cond", "ddpmpp-small-28",
          "ddpmpp-digits-8"};
}

MemoryFormat resolve_memory_format(const std::string& option, const Backend& backend) {
  if (option == "channels_last") return MemoryFormat::ChannelsLast;
  if (option == "contiguous") return MemoryFormat::Contiguous;
  CM_CHECK(option == "auto", "memory_format must be \"auto\", \"contiguous\" or ",
           "\"channels_last\", got \"", option, "\"");
  return backend.preferred_conv_format();
}

bool resolve_recompute(const std::string& option, const Backend& backend) {
  check_recompute_option(option, "network");
  return option == "auto" ? backend.recompute_by_default() : option == "on";
}

void check_recompute_option(const std::string& option, const char* who) {
  CM_CHECK(option == "auto" || option == "on" || option == "off", who,
           ": recompute must be \"auto\", \"on\" or \"off\", got \"", option, "\"");
}

AttentionKernel resolve_attention(const std::string& option) {
  check_attention_option(option, "network");
  return option == "fused"       ? AttentionKernel::Fused
         : option == "composite" ? AttentionKernel::Composite
                                 : AttentionKernel::Auto;
}

void check_attention_option(const std::string& option, const char* who) {
  CM_CHECK(option == "auto" || option == "fused" || option == "composite", who,
           ": attention must be \"auto\", \"fused\" or \"composite\", got \"", option, "\"");
}

MemoryFormat SongUNetConfig::activation_format(const Backend& backend) const {
  return resolve_memory_format(memory_format, backend);
}

SongUNetConfig songunet_preset(const std::string& name) {
  SongUNetConfig c;
  if (name == "ddpmpp-cifar10" || name == "ncsnpp-cifar10" || name == "ddpmpp-cifar10-cond") {
    c.img_resolution = 32;
    c.in_channels = c.out_channels = 3;
    c.model_channels = 128;
    c.channel_mult = {2, 2, 2};
    c.num_blocks = 4;
    c.attn_resolutions = {16};
    c.dropout = 0.13;
    if (name == "ncsnpp-cifar10") {
      c.embedding_type = "fourier";
      c.channel_mult_noise = 2;
      c.encoder_type = "residual";
      c.resample_filter = {1, 3, 3, 1};
    }
    if (name == "ddpmpp-cifar10-cond") c.label_dim = 10;
    return c;
  }
  if (name == "ddpmpp-small-28") {
    c.img_resolution = 28;
    c.in_channels = c.out_channels = 1;
    c.model_channels = 64;
    c.channel_mult = {1, 2, 2};
    c.num_blocks = 2;
    c.attn_resolutions = {7};
    c.dropout = 0.1;
    return c;
  }
  if (name == "ddpmpp-digits-8") {
    c.img_resolution = 8;
    c.in_channels = c.out_channels = 1;
    c.model_channels = 32;
    c.channel_mult = {1, 2};
    c.num_blocks = 2;
    c.attn_resolutions = {4};
    c.dropout = 0.1;
    return c;
  }
  std::string known;
  for (const std::string& n : songunet_preset_names()) known += (known.empty() ? "" : ", ") + n;
  CM_FAIL("unknown network \"", name, "\" (known: ", known, ")");
}

SongUNet::SongUNet(const SongUNetConfig& cfg, Generator& gen) : cfg_(cfg) {
  cfg.validate();
  const int64_t emb_channels = cfg.model_channels * cfg.channel_mult_emb;
  const int64_t noise_channels = cfg.model_channels * cfg.channel_mult_noise;
  const InitOptions init{.mode = "xavier_uniform"};
  const InitOptions init_zero{.mode = "xavier_uniform", .weight = 1e-5};
  const InitOptions init_attn{.mode = "xavier_uniform", .weight = std::sqrt(0.2)};
  UNetBlockOptions block;
  block.emb_channels = emb_channels;
  block.num_heads = 1;
  block.dropout = cfg.dropout;
  block.skip_scale = std::sqrt(0.5);
  block.eps = 1e-6;
  block.resample_filter = cfg.resample_filter;
  block.resample_proj = true;
  block.adaptive_scale = false;
  block.init = init;
  block.init_zero = init_zero;
  block.init_attn = init_attn;
  auto block_with = [&](bool up, bool down, bool attention) {
    UNetBlockOptions o = block;
    o.up = up;
    o.down = down;
    o.attention = attention;
    return o;
  };

  // Mapping.
  if (cfg.embedding_type == "positional")
    map_noise_positional_ = register_module(
        "map_noise", std::make_shared<PositionalEmbedding>(noise_channels, 10000, true));
  else
    map_noise_fourier_ = register_module(
        "map_noise", std::make_shared<FourierEmbedding>(noise_channels, cfg.fourier_scale, gen));
  if (cfg.label_dim)
    map_label_ = register_module(
        "map_label", std::make_shared<Linear>(cfg.label_dim, noise_channels, true, init, gen));
  if (cfg.augment_dim)
    map_augment_ = register_module(
        "map_augment", std::make_shared<Linear>(cfg.augment_dim, noise_channels, false, init, gen));
  map_layer0_ = register_module(
      "map_layer0", std::make_shared<Linear>(noise_channels, emb_channels, true, init, gen));
  map_layer1_ = register_module(
      "map_layer1", std::make_shared<Linear>(emb_channels, emb_channels, true, init, gen));

  // Encoder.
  enc_ = register_module("enc", std::make_shared<ModuleDict>());
  auto enc_add = [&](const std::string& name, Kind kind, std::shared_ptr<Module> m) {
    enc_->add(name, m);
    enc_entries_.push_back({name, kind, m});
  };
  int64_t cout = cfg.in_channels, caux = cfg.in_channels;
  std::vector<int64_t> skips;
  const auto has_attn = [&](int64_t res) {
    return std::find(cfg.attn_resolutions.begin(), cfg.attn_resolutions.end(), res) !=
           cfg.attn_resolutions.end();
  };
  for (size_t level = 0; level < cfg.channel_mult.size(); ++level) {
    const int64_t mult = cfg.channel_mult[level];
    const int64_t res = cfg.img_resolution >> level;
    const std::string r = std::to_string(res) + "x" + std::to_string(res);
    if (level == 0) {
      const int64_t cin = cout;
      cout = cfg.model_channels;
      enc_add(r + "_conv", Kind::Conv,
              std::make_shared<Conv2d>(cin, cout, 3, true, false, false, cfg.resample_filter, false,
                                       init, gen));
      skips.push_back(cout);
    } else {
      enc_add(r + "_down", Kind::Block,
              std::make_shared<UNetBlock>(cout, cout, block_with(false, true, false), gen));
      skips.push_back(cout);
      if (cfg.encoder_type == "skip") {
        enc_add(r + "_aux_down", Kind::AuxDown,
                std::make_shared<Conv2d>(caux, caux, 0, true, false, true, cfg.resample_filter,
                                         false, InitOptions{}, gen));
        enc_add(r + "_aux_skip", Kind::AuxSkip,
                std::make_shared<Conv2d>(caux, cout, 1, true, false, false, cfg.resample_filter,
                                         false, init, gen));
      }
      if (cfg.encoder_type == "residual") {
        enc_add(r + "_aux_residual", Kind::AuxResidual,
                std::make_shared<Conv2d>(caux, cout, 3, true, false, true, cfg.resample_filter,
                                         true, init, gen));
        caux = cout;
      }
    }
    for (int64_t idx = 0; idx < cfg.num_blocks; ++idx) {
      const int64_t cin = cout;
      cout = cfg.model_channels * mult;
      enc_add(r + "_block" + std::to_string(idx), Kind::Block,
              std::make_shared<UNetBlock>(cin, cout, block_with(false, false, has_attn(res)), gen));
      skips.push_back(cout);
    }
  }

  // Decoder.
  dec_ = register_module("dec", std::make_shared<ModuleDict>());
  auto dec_add = [&](const std::string& name, Kind kind, std::shared_ptr<Module> m) {
    dec_->add(name, m);
    dec_entries_.push_back({name, kind, m});
  };
  for (size_t level = cfg.channel_mult.size(); level-- > 0;) {
    const int64_t mult = cfg.channel_mult[level];
    const int64_t res = cfg.img_resolution >> level;
    const std::string r = std::to_string(res) + "x" + std::to_string(res);
    if (level == cfg.channel_mult.size() - 1) {
      dec_add(r + "_in0", Kind::Block,
              std::make_shared<UNetBlock>(cout, cout, block_with(false, false, true), gen));
      dec_add(r + "_in1", Kind::Block,
              std::make_shared<UNetBlock>(cout, cout, block_with(false, false, false), gen));
    } else {
      dec_add(r + "_up", Kind::Block,
              std::make_shared<UNetBlock>(cout, cout, block_with(true, false, false), gen));
    }
    for (int64_t idx = 0; idx <= cfg.num_blocks; ++idx) {
      const int64_t cin = cout + skips.back();
      skips.pop_back();
      cout = cfg.model_channels * mult;
      const bool attn = idx == cfg.num_blocks && has_attn(res);
      dec_add(r + "_block" + std::to_string(idx), Kind::Block,
              std::make_shared<UNetBlock>(cin, cout, block_with(false, false, attn), gen));
    }
    if (cfg.decoder_type == "skip" || level == 0) {
      if (cfg.decoder_type == "skip" && level < cfg.channel_mult.size() - 1)
        dec_add(r + "_aux_up", Kind::AuxUp,
                std::make_shared<Conv2d>(cfg.out_channels, cfg.out_channels, 0, true, true, false,
                                         cfg.resample_filter, false, InitOptions{}, gen));
      dec_add(r + "_aux_norm", Kind::AuxNorm, std::make_shared<GroupNorm>(cout, 32, 4, 1e-6));
      dec_add(r + "_aux_conv", Kind::AuxConv,
              std::make_shared<Conv2d>(cout, cfg.out_channels, 3, true, false, false,
                                       cfg.resample_filter, false, init_zero, gen));
    }
  }
}

Tensor SongUNet::forward(const Tensor& x_in, const Tensor& noise_labels, const Tensor& class_labels,
                         const Tensor& augment_labels, const ForwardContext& ctx) const {
  CM_CHECK(x_in.dim() == 4 && x_in.size(1) == cfg_.in_channels &&
               x_in.size(2) == cfg_.img_resolution && x_in.size(3) == cfg_.img_resolution,
           "SongUNet: input of shape ", shape_str(x_in.shape()), ", expected [N, ",
           cfg_.in_channels, ", ", cfg_.img_resolution, ", ", cfg_.img_resolution, "]");
  const int64_t n = x_in.size(0);
  CM_CHECK(noise_labels.dim() == 1 && noise_labels.size(0) == n, "SongUNet: noise_labels of shape ",
           shape_str(noise_labels.shape()), ", expected [", n, "]");
  // Mapping: the embedding's halves are swapped to [sin, cos], as EDM does.
  Tensor emb = map_noise_positional_ ? map_noise_positional_->forward(noise_labels)
                                     : map_noise_fourier_->forward(noise_labels);
  const int64_t half = emb.size(1) / 2;
  emb = cat({narrow(emb, 1, half, half), narrow(emb, 1, 0, half)}, 1);
  if (map_label_) {
    CM_CHECK(class_labels.defined() && class_labels.dim() == 2 && class_labels.size(0) == n &&
                 class_labels.size(1) == cfg_.label_dim,
             "SongUNet: a conditional network needs class_labels of shape [", n, ", ",
             cfg_.label_dim, "]");
    Tensor labels = cm::to(class_labels, emb.dtype());
    if (is_training() && cfg_.label_dropout > 0) {
      Generator& gen = ctx.dropout ? *ctx.dropout : default_generator();
      labels = mul(labels, bernoulli({n, 1}, 1 - cfg_.label_dropout,
                                     {.dtype = labels.dtype(), .device = labels.device()}, &gen));
    }
    emb = add(emb, map_label_->forward(mul(labels, std::sqrt(double(cfg_.label_dim)))));
  }
  if (map_augment_ && augment_labels.defined())
    emb = add(emb, map_augment_->forward(cm::to(augment_labels, emb.dtype())));
  emb = silu(map_layer0_->forward(emb));
  emb = silu(map_layer1_->forward(emb));

  // The activations' memory format: every op allocates its output in its input's format, so the
  // input is converted once, and each stage's output again where it is not in the format yet (a
  // [N, 1, H, W] tensor is contiguous and channels-last at once, so a 1-channel input does not
  // carry the format on, and attention's reshapes give either format).
  const MemoryFormat format = cfg_.activation_format(backend_of(x_in));
  const auto in_format = [format](const Tensor& t) { return to_memory_format(t, format); };
  const RecomputeGuard recompute(resolve_recompute(cfg_.recompute, backend_of(x_in)));
  const AttentionKernelGuard attention(resolve_attention(cfg_.attention));

  // Encoder.
  std::vector<Tensor> skips;
  Tensor x = in_format(x_in), aux = x;
  for (const Entry& e : enc_entries_) {
    switch (e.kind) {
      case Kind::AuxDown:
        aux = static_cast<const Conv2d&>(*e.module).forward(aux);
        break;
      case Kind::AuxSkip:
        x = skips.back() = add(x, static_cast<const Conv2d&>(*e.module).forward(aux));
        break;
      case Kind::AuxResidual:
        x = skips.back() = aux =
            div(add(x, static_cast<const Conv2d&>(*e.module).forward(aux)), std::sqrt(2.0));
        break;
      case Kind::Conv:
        x = in_format(static_cast<const Conv2d&>(*e.module).forward(x));
        skips.push_back(x);
        break;
      default:
        x = in_format(static_cast<const UNetBlock&>(*e.module).forward(x, emb, ctx));
        skips.push_back(x);
    }
    if (ctx.observe) ctx.observe("enc." + e.name, x);
  }

  // Decoder.
  Tensor out, tmp;
  aux = Tensor();
  for (const Entry& e : dec_entries_) {
    switch (e.kind) {
      case Kind::AuxUp:
        aux = static_cast<const Conv2d&>(*e.module).forward(aux);
        break;
      case Kind::AuxNorm:
        tmp = static_cast<const GroupNorm&>(*e.module).forward(x);
        break;
      case Kind::AuxConv:
        tmp = static_cast<const Conv2d&>(*e.module).forward(silu(tmp));
        aux = aux.defined() ? add(tmp, aux) : tmp;
        break;
      default: {
        const auto& block = static_cast<const UNetBlock&>(*e.module);
        if (x.size(1) != block.in_channels) {
          x = cat({x, skips.back()}, 1);
          skips.pop_back();
        }
        x = in_format(block.forward(x, emb, ctx));
        if (ctx.observe) ctx.observe("dec." + e.name, x);
      }
    }
  }
  return contiguous(aux);
}

}  // namespace cm::nn
