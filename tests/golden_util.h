// Shared by the tests that read golden files made from the reference implementations: the SongUNet
// configuration a generator records in its metadata, and the relative error used to compare.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>

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

// The network weights of a golden file (everything but "input.*", "grad.*" and "output").
inline std::map<std::string, Tensor> golden_weights(const nn::SafetensorsFile& f) {
  std::map<std::string, Tensor> w;
  for (const std::string& n : f.names())
    if (n.rfind("input.", 0) != 0 && n.rfind("grad.", 0) != 0 && n != "output") w[n] = f.get(n);
  return w;
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

}  // namespace cm::test
