// Shared by the tests that read golden files made from the reference implementations: the SongUNet
// configuration a generator records in its metadata, and the relative error used to compare.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>

#include "nn/adm_unet.h"
#include "nn/dhariwal_unet.h"
#include "nn/safetensors.h"
#include "nn/songunet.h"
#include "tests/helpers.h"

namespace cm::test {

inline const std::string kGoldenDir = std::string(CM_SOURCE_DIR) + "/tests/golden/";

// The SongUNet keyword arguments of EDM's constructor, as tools/gen_songunet_golden.py records
// them.
inline nn::SongUNetConfig songunet_config_from_json(const std::string& text) {
  const nlohmann::json j = nlohmann::json::parse(text);
  nn::SongUNetConfig c;
  c.img_resolution = j.at("img_resolution");
  c.in_channels = j.at("in_channels");
  c.out_channels = j.at("out_channels");
  c.label_dim = j.value("label_dim", 0);
  c.model_channels = j.at("model_channels");
  c.channel_mult = j.at("channel_mult").get<std::vector<int64_t>>();
  c.num_blocks = j.at("num_blocks");
  c.attn_resolutions = j.at("attn_resolutions").get<std::vector<int64_t>>();
  c.dropout = j.at("dropout");
  c.embedding_type = j.at("embedding_type");
  c.channel_mult_noise = j.at("channel_mult_noise");
  c.encoder_type = j.at("encoder_type");
  c.decoder_type = j.at("decoder_type");
  c.resample_filter = j.at("resample_filter").get<std::vector<double>>();
  return c;
}

// DhariwalUNet's keyword arguments as tools/gen_songunet_golden.py records them.
inline nn::DhariwalUNetConfig dhariwal_config_from_json(const std::string& text) {
  const nlohmann::json j = nlohmann::json::parse(text);
  nn::DhariwalUNetConfig c;
  c.img_resolution = j.at("img_resolution");
  c.in_channels = j.at("in_channels");
  c.out_channels = j.at("out_channels");
  c.label_dim = j.value("label_dim", 0);
  c.augment_dim = j.value("augment_dim", 0);
  c.model_channels = j.at("model_channels");
  c.channel_mult = j.at("channel_mult").get<std::vector<int64_t>>();
  c.channel_mult_emb = j.value("channel_mult_emb", 4);
  c.num_blocks = j.at("num_blocks");
  c.attn_resolutions = j.at("attn_resolutions").get<std::vector<int64_t>>();
  c.dropout = j.at("dropout");
  return c;
}

// UNetModel's keyword arguments as tools/gen_adm_golden.py records them (attention resolutions in
// pixels).
inline nn::AdmUNetConfig adm_config_from_json(const std::string& text) {
  const nlohmann::json j = nlohmann::json::parse(text);
  nn::AdmUNetConfig c;
  c.image_size = j.at("image_size");
  c.in_channels = j.at("in_channels");
  c.model_channels = j.at("model_channels");
  c.out_channels = j.at("out_channels");
  c.num_res_blocks = j.at("num_res_blocks");
  c.attention_resolutions = j.at("attention_resolutions").get<std::vector<int64_t>>();
  c.dropout = j.at("dropout");
  c.channel_mult = j.at("channel_mult").get<std::vector<int64_t>>();
  c.conv_resample = j.value("conv_resample", true);
  const nlohmann::json classes = j.value("num_classes", nlohmann::json());
  c.num_classes = classes.is_null() ? 0 : classes.get<int64_t>();
  c.num_heads = j.value("num_heads", 1);
  c.num_head_channels = j.value("num_head_channels", -1);
  c.num_heads_upsample = j.value("num_heads_upsample", -1);
  c.use_scale_shift_norm = j.value("use_scale_shift_norm", false);
  c.resblock_updown = j.value("resblock_updown", false);
  return c;
}

// Whether a golden file's tensor is a network weight (not "input.*", "grad.*" or "output").
inline bool is_golden_weight(const std::string& n) {
  return n.rfind("input.", 0) != 0 && n.rfind("grad.", 0) != 0 && n != "output";
}

// The network weights of a golden file.
inline std::map<std::string, Tensor> golden_weights(const nn::SafetensorsFile& f) {
  std::map<std::string, Tensor> w;
  for (const std::string& n : f.names())
    if (is_golden_weight(n)) w[n] = f.get(n);
  return w;
}

// The network's state-dict names are exactly the golden file's weights, with their shapes.
inline void check_state_dict_names(const nn::Module& net,
                                   const std::map<std::string, Tensor>& golden) {
  std::set<std::string> ours, theirs;
  for (auto& [n, t] : net.state_dict()) ours.insert(n);
  for (auto& [n, t] : golden)
    if (is_golden_weight(n)) theirs.insert(n);
  CHECK(ours == theirs);
  for (auto& [n, t] : net.state_dict())
    if (golden.count(n)) CHECK_MESSAGE(t.shape() == golden.at(n).shape(), n);
}

// max |a − b| / max |b|
inline double rel_err(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  const std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num = std::max(num, std::fabs(x[i] - y[i]));
    den = std::max(den, std::fabs(y[i]));
  }
  return num / std::max(den, 1e-30);
}

// A network's golden case: loads the weights of `g` (a golden file's tensors) into `net`, runs it
// in eval mode and `dtype` on "input.x", "input.noise_labels" (and "input.class_labels" when
// present), and checks "output", then the gradients of sum(output · "input.weights") against
// "grad.x" and every "grad.<parameter>" the file holds. `what` starts the messages. Returns how
// many parameter gradients were checked.
inline int check_golden_case(nn::Network& net, const std::map<std::string, Tensor>& g, DType dtype,
                             double out_tol, double grad_tol, const std::string& what) {
  std::map<std::string, Tensor> weights;
  for (auto& [n, t] : g)
    if (is_golden_weight(n)) weights[n] = t;
  net.load_state_dict(weights, true);
  net.eval();
  net.to(dtype);
  Tensor x = to(g.at("input.x"), dtype);
  x.set_requires_grad(true);
  Tensor labels;
  if (g.count("input.class_labels")) labels = g.at("input.class_labels");
  Tensor augment;
  if (g.count("input.augment_labels")) augment = to(g.at("input.augment_labels"), dtype);
  Tensor out = net.forward(x, to(g.at("input.noise_labels"), dtype), labels, augment);
  const double e = rel_err(out, g.at("output"));
  CHECK_MESSAGE(e <= out_tol, what, " ", dtype_name(dtype), ": output relative error ", e);
  sum(mul(out, to(g.at("input.weights"), dtype))).backward();
  const double ex = rel_err(x.grad(), g.at("grad.x"));
  CHECK_MESSAGE(ex <= grad_tol, what, " ", dtype_name(dtype), ": input gradient relative error ",
                ex);
  int checked = 0;
  for (auto& [n, p] : net.named_parameters()) {
    auto it = g.find("grad." + n);
    if (it == g.end()) continue;
    REQUIRE_MESSAGE(p.grad().defined(), n, " has no gradient");
    const double ep = rel_err(p.grad(), it->second);
    CHECK_MESSAGE(ep <= grad_tol, what, " ", dtype_name(dtype), ": gradient of ", n,
                  " relative error ", ep);
    ++checked;
  }
  return checked;
}

}  // namespace cm::test
