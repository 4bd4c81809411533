#include "eval/classifier.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "datasets/loader.h"
#include "nn/optim.h"
#include "nn/safetensors.h"

namespace cm::eval {

using json = nlohmann::json;

// ---- configuration ---------------------------------------------------------------------------

std::string ClassifierConfig::to_json() const {
  return json{{"in_channels", in_channels},
              {"resolution", resolution},
              {"num_classes", num_classes},
              {"channels", channels},
              {"blocks_per_stage", blocks_per_stage},
              {"feature_dim", feature_dim},
              {"groups", groups}}
      .dump();
}

ClassifierConfig ClassifierConfig::from_json(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    CM_FAIL(source, ": the classifier configuration is not valid JSON: ", e.what());
  }
  CM_CHECK(j.is_object(), source, ": the classifier configuration must be a JSON object");
  ClassifierConfig c;
  auto positive = [&](const std::string& key, const json& v) {
    CM_CHECK(v.is_number_integer() && v.get<int64_t>() >= 1, source, ": classifier config \"", key,
             "\" must be a positive integer, got ", v.dump());
    return v.get<int64_t>();
  };
  for (const auto& [key, v] : j.items()) {
    if (key == "in_channels") {
      c.in_channels = positive(key, v);
    } else if (key == "resolution") {
      c.resolution = positive(key, v);
    } else if (key == "num_classes") {
      c.num_classes = positive(key, v);
    } else if (key == "blocks_per_stage") {
      CM_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0, source, ": classifier config \"",
               key, "\" must be a non-negative integer, got ", v.dump());
      c.blocks_per_stage = v.get<int64_t>();
    } else if (key == "feature_dim") {
      c.feature_dim = positive(key, v);
    } else if (key == "groups") {
      c.groups = positive(key, v);
    } else if (key == "channels") {
      CM_CHECK(v.is_array() && !v.empty(), source,
               ": classifier config \"channels\" must be a non-empty list, got ", v.dump());
      c.channels.clear();
      for (const json& x : v) c.channels.push_back(positive(key, x));
    } else {
      CM_FAIL(source, ": unknown classifier config key \"", key, "\"");
    }
  }
  return c;
}

ClassifierConfig classifier_preset(const std::string& data) {
  ClassifierConfig c;
  if (data == "digits") return c;
  if (data == "fashion-mnist") {
    c.resolution = 28;
    c.channels = {32, 64, 128};
    return c;
  }
  CM_FAIL("classifier: unknown data set \"", data, "\" (expected digits or fashion-mnist)");
}

// ---- the network -----------------------------------------------------------------------------

ConvBlock::Conv::Conv(int64_t in, int64_t out, Generator& gen) {
  weight = nn::weight_init({out, in, 3, 3}, "kaiming_normal", in * 9, out * 9, gen);
  bias = zeros({out});
  register_parameter("weight", weight);
  register_parameter("bias", bias);
}

ConvBlock::ConvBlock(int64_t in, int64_t out, int64_t stride_, int64_t groups, Generator& gen)
    : stride(stride_) {
  conv = register_module("conv", std::make_shared<Conv>(in, out, gen));
  norm = register_module("norm", std::make_shared<nn::GroupNorm>(out, groups, 4));
}

Tensor ConvBlock::forward(const Tensor& x) const {
  const Conv2dParams p{.stride_h = stride, .stride_w = stride, .pad_h = 1, .pad_w = 1};
  return silu(norm->forward(conv2d(x, conv->weight, conv->bias, p)));
}

Classifier::Classifier(const ClassifierConfig& c, Generator& gen) : config_(c) {
  CM_CHECK(!c.channels.empty() && c.in_channels >= 1 && c.resolution >= 1 && c.num_classes >= 1 &&
               c.feature_dim >= 1 && c.blocks_per_stage >= 0 && c.groups >= 1,
           "Classifier: invalid configuration ", c.to_json());
  auto blocks = register_module("blocks", std::make_shared<nn::ModuleDict>());
  auto add = [&](int64_t in, int64_t out, int64_t stride) {
    blocks_.push_back(blocks->add(std::to_string(blocks_.size()),
                                  std::make_shared<ConvBlock>(in, out, stride, c.groups, gen)));
  };
  add(c.in_channels, c.channels[0], 1);
  for (size_t s = 0; s < c.channels.size(); ++s) {
    if (s > 0) add(c.channels[s - 1], c.channels[s], 2);
    for (int64_t b = 0; b < c.blocks_per_stage; ++b) add(c.channels[s], c.channels[s], 1);
  }
  const nn::InitOptions init{.mode = "kaiming_normal"};
  feature_ = register_module(
      "feature", std::make_shared<nn::Linear>(c.channels.back(), c.feature_dim, true, init, gen));
  head_ = register_module(
      "head", std::make_shared<nn::Linear>(c.feature_dim, c.num_classes, true, init, gen));
}

Classifier::Outputs Classifier::forward(const Tensor& x0) const {
  const ClassifierConfig& c = config_;
  CM_CHECK(x0.dim() == 4 && x0.size(1) == c.in_channels && x0.size(2) == c.resolution &&
               x0.size(3) == c.resolution,
           "Classifier: expected images [N, ", c.in_channels, ", ", c.resolution, ", ",
           c.resolution, "], got ", shape_str(x0.shape()));
  Tensor x = x0;
  for (const auto& b : blocks_) x = b->forward(x);
  Outputs out;
  out.features = silu(feature_->forward(mean(x, {2, 3})));
  out.logits = head_->forward(out.features);
  return out;
}

Classifier::Outputs Classifier::forward_images(const Tensor& images_u8) const {
  CM_CHECK(images_u8.dtype() == DType::u8, "Classifier: expected u8 images, got ",
           dtype_name(images_u8.dtype()));
  const Tensor& w = blocks_.front()->conv->weight;
  const Tensor x = cm::to(cm::to(images_u8, w.device()), w.dtype());
  return forward(sub(div(x, 127.5), 1.0));
}

// ---- data ------------------------------------------------------------------------------------

data::ImageDataset subset(const data::ImageDataset& d, const std::vector<int64_t>& rows) {
  const Tensor idx = from_vector(rows, {int64_t(rows.size())});
  data::ImageDataset out;
  out.images = contiguous(index_select(d.rows(0, d.size()), 0, idx));
  out.labels = contiguous(index_select(d.labels, 0, idx));
  out.num_classes = d.num_classes;
  out.source = d.source;
  return out;
}

data::ImageDataset load_split(const std::string& spec) {
  if (spec != "digits:train" && spec != "digits:test") return data::load_dataset(spec);
  const data::ImageDataset all = data::load_dataset("digits");
  const int64_t n = all.size(), n_test = n / 5;
  std::vector<int64_t> order = data::Loader::epoch_order(n, kDigitsSplitSeed, 0);
  const bool test = spec == "digits:test";
  std::vector<int64_t> rows(order.begin() + (test ? 0 : n_test),
                            test ? order.begin() + n_test : order.end());
  std::sort(rows.begin(), rows.end());
  data::ImageDataset out = subset(all, rows);
  out.source = spec;
  return out;
}

// ---- training and evaluation -----------------------------------------------------------------

std::unique_ptr<Classifier> train_classifier(const ClassifierConfig& c,
                                             const data::ImageDataset& train,
                                             const ClassifierTrainOptions& o) {
  CM_CHECK(train.channels() == c.in_channels && train.height() == c.resolution &&
               train.width() == c.resolution,
           "train_classifier: the data (", train.source, ") has images ", shape_str(train.shape()),
           "; the classifier takes [", c.in_channels, ", ", c.resolution, ", ", c.resolution, "]");
  CM_CHECK(train.num_classes == c.num_classes, "train_classifier: the data (", train.source,
           ") has ", train.num_classes, " classes; the classifier predicts ", c.num_classes);
  CM_CHECK(o.steps >= 1 && o.batch >= 1, "train_classifier: steps and batch must be positive");
  Generator gen(o.seed);
  auto net = std::make_unique<Classifier>(c, gen);
  net->to(o.device);
  net->train();
  data::Loader loader(train, {.batch_size = std::min(o.batch, train.size()),
                              .seed = o.seed,
                              .random_flip = false,
                              .labels = true,
                              .device = o.device});
  nn::Adam opt(net->parameters(), {.lr = o.lr});
  double loss_sum = 0;
  int64_t loss_count = 0;
  for (int64_t step = 1; step <= o.steps; ++step) {
    const data::Batch b = loader.next();
    const Tensor logits = net->forward(b.images).logits;
    // cross-entropy against the one-hot labels
    const Tensor loss = neg(mean(sum(mul(b.labels, log_softmax(logits, 1)), {1})));
    loss.backward();
    opt.step();
    opt.zero_grad();
    loss_sum += loss.item<double>();
    ++loss_count;
    if (o.log && o.log_every > 0 && (step % o.log_every == 0 || step == o.steps)) {
      o.log(step, loss_sum / double(loss_count));
      loss_sum = 0;
      loss_count = 0;
    }
  }
  net->eval();
  return net;
}

double classifier_accuracy(const Classifier& net, const data::ImageDataset& d, int64_t batch) {
  CM_CHECK(d.size() > 0 && batch > 0, "classifier_accuracy: empty data or batch");
  NoGradGuard ng;
  int64_t correct = 0;
  for (int64_t i = 0; i < d.size(); i += batch) {
    const int64_t len = std::min(batch, d.size() - i);
    const Tensor pred = to(argmax(net.forward_images(d.rows(i, len)).logits, 1), Device::cpu());
    correct += sum(eq(pred, narrow(d.labels, 0, i, len))).item<int64_t>();
  }
  return double(correct) / double(d.size());
}

void save_classifier(const std::string& path, const Classifier& net,
                     std::map<std::string, std::string> metadata) {
  metadata["format"] = "cm-classifier-1";
  metadata["config"] = net.config().to_json();
  nn::save_module(path, net, metadata);
}

LoadedClassifier load_classifier(const std::string& path, Device device) {
  const nn::SafetensorsFile f(path);
  const auto& meta = f.metadata();
  CM_CHECK(meta.count("format") && meta.at("format") == "cm-classifier-1" && meta.count("config"),
           path,
           ": not a cm classifier checkpoint (its metadata has no format \"cm-classifier-1\" ",
           "and config; make one with `cm classifier train`)");
  LoadedClassifier out;
  Generator unused(0);
  out.net =
      std::make_unique<Classifier>(ClassifierConfig::from_json(meta.at("config"), path), unused);
  out.net->to(device);
  nn::load_module(path, *out.net);
  out.net->eval();
  out.metadata = meta;
  return out;
}

// ---- the domain metric -----------------------------------------------------------------------

Tensor classifier_features(const Classifier& net, const Tensor& images_u8, int64_t batch) {
  CM_CHECK(images_u8.dim() == 4 && batch > 0,
           "classifier_features: expected u8 images [N, C, H, W] and a positive batch, got ",
           shape_str(images_u8.shape()), " and ", batch);
  NoGradGuard ng;
  std::vector<Tensor> parts;
  for (int64_t i = 0; i < images_u8.size(0); i += batch) {
    const int64_t len = std::min(batch, images_u8.size(0) - i);
    parts.push_back(to(net.forward_images(narrow(images_u8, 0, i, len)).features, Device::cpu()));
  }
  if (parts.empty()) return zeros({0, net.config().feature_dim});
  return cat(parts, 0);
}

FidStats classifier_stats(const Classifier& net, const Tensor& images_u8, int64_t batch) {
  CM_CHECK(images_u8.dim() == 4 && batch > 0,
           "classifier_stats: expected u8 images [N, C, H, W] and a positive batch, got ",
           shape_str(images_u8.shape()), " and ", batch);
  NoGradGuard ng;
  FeatureStats acc(net.config().feature_dim);
  for (int64_t i = 0; i < images_u8.size(0); i += batch) {
    const int64_t len = std::min(batch, images_u8.size(0) - i);
    acc.add(net.forward_images(narrow(images_u8, 0, i, len)).features);
  }
  return acc.stats();
}

}  // namespace cm::eval
