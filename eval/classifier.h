// A small image classifier for the small data sets (8×8 digits, 28×28 Fashion-MNIST) and the
// domain metric built on it: the Fréchet distance between the Gaussians of its penultimate
// features on generated and on real images (FID's formula and statistics, eval/fid.h, with a
// network cm trains itself instead of downloaded Inception weights).
//
//   network   blocks.0            3×3 conv (in → c0) → GroupNorm → SiLU
//             per stage s         [s > 0: 3×3 conv stride 2 (c_{s−1} → c_s) → GroupNorm → SiLU]
//                                 then blocks_per_stage × (3×3 conv c_s → c_s → GroupNorm → SiLU)
//             features            global average pool → Linear (c_last → feature_dim) → SiLU
//             head                Linear (feature_dim → num_classes): the logits
//             Convolutions pad by 1 (a stride-2 one maps H to ⌊(H − 1)/2⌋ + 1: 8 → 4 → 2,
//             28 → 14 → 7 → 4); blocks are numbered in order ("blocks.3.conv.weight").
//   input     u8 images x -> x/127.5 − 1, the [−1, 1] scale of the loader and the samplers.
//   training  cross-entropy (−mean Σ onehot·log_softmax(logits)) with Adam, batches from
//             data::Loader without flips, on the train split.
//   splits    "digits:train" / "digits:test": the shipped digits are one file, so a fixed 20% is
//             held out: the first ⌊N/5⌋ entries of data::Loader::epoch_order(N, kDigitsSplitSeed,
//             0) are the test split, the rest the train split (each kept in file order).
//             "fashion-mnist:train" / ":test": the data set's own splits.
//   checkpoint  a safetensors file (nn::save_module) whose metadata holds "format"
//             ("cm-classifier-1"), "config" (ClassifierConfig as JSON), "data", "steps",
//             "test_accuracy" and whatever else the trainer adds.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "datasets/dataset.h"
#include "eval/fid.h"
#include "nn/layers.h"

namespace cm::eval {

struct ClassifierConfig {
  int64_t in_channels = 1;
  int64_t resolution = 8;  // input height = width
  int64_t num_classes = 10;
  std::vector<int64_t> channels = {32, 64};  // one entry per stage
  int64_t blocks_per_stage = 1;              // stride-1 blocks of each stage
  int64_t feature_dim = 256;                 // the penultimate layer
  int64_t groups = 8;                        // GroupNorm groups (at least 4 channels each)

  // {"in_channels": 1, "resolution": 8, ...}; from_json checks every field and rejects unknown
  // keys, naming `source`.
  std::string to_json() const;
  static ClassifierConfig from_json(const std::string& text, const std::string& source);
};

// The configuration `cm classifier train` uses for a data set: "digits" (1×8×8, channels {32, 64})
// or "fashion-mnist" (1×28×28, channels {32, 64, 128}); feature_dim 256 for both.
ClassifierConfig classifier_preset(const std::string& data);

// conv 3×3 (padding 1, stride 1 or 2) → GroupNorm → SiLU.
class ConvBlock : public nn::Module {
 public:
  ConvBlock(int64_t in, int64_t out, int64_t stride, int64_t groups, Generator& gen);
  Tensor forward(const Tensor& x) const;  // [N, in, H, W] -> [N, out, H', W']
  std::string type_name() const override { return "ConvBlock"; }

  struct Conv : nn::Module {
    Conv(int64_t in, int64_t out, Generator& gen);
    std::string type_name() const override { return "Conv2d"; }
    Tensor weight, bias;  // [out, in, 3, 3] (kaiming normal), [out] (zeros)
  };
  std::shared_ptr<Conv> conv;
  std::shared_ptr<nn::GroupNorm> norm;
  int64_t stride;
};

class Classifier : public nn::Module {
 public:
  Classifier(const ClassifierConfig& c, Generator& gen);
  std::string type_name() const override { return "Classifier"; }

  struct Outputs {
    Tensor features;  // [N, feature_dim], after the SiLU: what the domain metric compares
    Tensor logits;    // [N, num_classes]
  };
  // x f32 [N, in_channels, resolution, resolution] in [−1, 1].
  Outputs forward(const Tensor& x) const;
  // u8 images [N, in_channels, resolution, resolution] (any device) -> forward(x/127.5 − 1) on the
  // parameters' device and in their dtype; shape errors name the expected size.
  Outputs forward_images(const Tensor& images_u8) const;
  const ClassifierConfig& config() const { return config_; }

 private:
  ClassifierConfig config_;
  std::vector<std::shared_ptr<ConvBlock>> blocks_;
  std::shared_ptr<nn::Linear> feature_, head_;
};

// ---- data ------------------------------------------------------------------------------------

inline constexpr uint64_t kDigitsSplitSeed = 20240601;
// "digits:train" | "digits:test" (the seeded 80/20 split above); anything else goes to
// data::load_dataset ("fashion-mnist:test", "cifar10:DIR:test", "folder:DIR", ...).
data::ImageDataset load_split(const std::string& spec);
// Rows `rows` of a data set (images and labels), as a new contiguous data set.
data::ImageDataset subset(const data::ImageDataset& d, const std::vector<int64_t>& rows);

// ---- training and evaluation -----------------------------------------------------------------

struct ClassifierTrainOptions {
  int64_t steps = 2000;
  int64_t batch = 64;
  double lr = 1e-3;   // Adam, β = (0.9, 0.999)
  uint64_t seed = 0;  // initial weights and batch order
  Device device = Device::cpu();
  // Called every `log_every` steps (and at the last) with the step and the mean loss since the
  // previous call; 0: never.
  int64_t log_every = 0;
  std::function<void(int64_t step, double loss)> log = nullptr;
};

// Trains a classifier of configuration `c` on `train` (labelled, of c's image size). Returns it in
// eval mode.
std::unique_ptr<Classifier> train_classifier(const ClassifierConfig& c,
                                             const data::ImageDataset& train,
                                             const ClassifierTrainOptions& o);

// Fraction of `d`'s images whose argmax logit is their label.
double classifier_accuracy(const Classifier& net, const data::ImageDataset& d, int64_t batch = 256);

// Writes the parameters with the metadata described at the top (format and config are added to
// `metadata`).
void save_classifier(const std::string& path, const Classifier& net,
                     std::map<std::string, std::string> metadata = {});

struct LoadedClassifier {
  std::unique_ptr<Classifier> net;  // in eval mode
  std::map<std::string, std::string> metadata;
};
// Reads a checkpoint written by save_classifier; errors name the file.
LoadedClassifier load_classifier(const std::string& path, Device device = Device::cpu());

// ---- the domain metric -----------------------------------------------------------------------

// Penultimate features f32 [N, feature_dim] (CPU) of u8 images, `batch` at a time, without grad.
Tensor classifier_features(const Classifier& net, const Tensor& images_u8, int64_t batch = 256);
// Their mean and covariance in f64 (FeatureStats), accumulated batch by batch.
FidStats classifier_stats(const Classifier& net, const Tensor& images_u8, int64_t batch = 256);

}  // namespace cm::eval
