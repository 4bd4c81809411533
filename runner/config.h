// Run configuration: a JSON file validated against a schema of every field cm knows. Unknown keys
// are rejected with the closest known key as a suggestion; wrong types and out-of-range values are
// reported with their JSON path; fields that do not apply to the chosen mode (a teacher under CT,
// say) are rejected. All problems are reported together. The resolved configuration (the file with
// every default filled in) is what a run saves and what a resume reads back.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

#include "consistency/training.h"
#include "nn/adm_unet.h"
#include "nn/dhariwal_unet.h"
#include "nn/songunet.h"

namespace cm::runner {

using json = nlohmann::json;

// One field of the schema.
struct Field {
  std::string path;  // "/train/lr"
  enum class Kind { Int, Number, String, Bool, NumberList, IntList, StringOrNull, Object } kind;
  json default_value;                // null: no default (required when applicable, unless optional)
  double min = -1e300, max = 1e300;  // numeric range (inclusive)
  std::vector<std::string> choices;  // allowed strings (empty: any)
  std::vector<std::string> modes;    // modes the field applies to (empty: all)
  std::string help;
  bool optional = false;  // may be absent without a default
};

// The schema of all run configurations (also printed by `cm train --help-config`).
const std::vector<Field>& config_schema();

// Validates `user` (read from `source`, named in messages) and returns it with every applicable
// default filled in. Throws cm::Error listing every problem.
json resolve_config(const json& user, const std::string& source);

// Applies "--set a.b.c=value" overrides (value parsed as JSON when it parses, else as a string).
void apply_overrides(json& user, const std::vector<std::string>& sets);

// Reads a JSON file with clear errors (missing file, parse error with line and column).
json read_json_file(const std::string& path);

// Typed views of a resolved configuration.
struct DataConfig {
  std::string dataset;
  bool flip = false;
  bool random_crop = false;  // the reference's random_crop_arr (data::LoaderOptions::random_crop)
  bool labels = false;
  std::string storage = "auto";  // "auto", "memory", "stream" (data::Residency)
  int read_threads = 4;
};

struct TrainConfig {
  int64_t steps = 0, batch = 0;
  double lr = 0;
  std::string optimizer;  // "radam", "adam", "adamw"
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  int64_t warmup_steps = 0;
  double grad_clip = 0;          // 0: off
  std::vector<double> ema;       // eval EMA decay rates
  double ema_halflife_kimg = 0;  // > 0: EDM's half-life EMA (with ramp) instead of fixed rates
  double ema_rampup_ratio = 0.05;
  int64_t log_every = 0, checkpoint_every = 0, sample_every = 0, layer_stats_every = 0;
  int64_t keep_checkpoints = 0;  // 0: keep all
  int64_t max_skipped_steps =
      20;  // consecutive skipped (non-finite) steps that stop a run; 0: never
  // data-parallel: gradient bucket size (dist/reducer.h); 0: one all-reduce per flat buffer
  double allreduce_bucket_mb = 25;
};

struct ConsistencyConfig {
  consistency::Schedule schedule;
  consistency::LossOptions loss;
  consistency::Solver solver = consistency::Solver::Heun;
  std::string teacher;  // CD: a teacher run directory or checkpoint file
  // distance lpips: the weights file (tools/convert_lpips.py) and "piq" or "original"; the
  // trainer binds the network as loss.learned_distance.
  std::string lpips_weights;
  std::string lpips_variant = "piq";
};

struct SampleConfig {
  int64_t grid = 64;                  // images per sample grid
  std::vector<double> two_step_taus;  // intermediate σ of the grid's multistep samples
  int64_t teacher_steps = 18;         // EDM Heun steps for teacher (mode edm) grids
};

// The network of a run: EDM's SongUNet, ADM's U-Net in openai's module tree, or in EDM's
// (DhariwalUNet) (network.type, given by the preset's family), with its noise-label convention.
struct NetworkConfig {
  std::string type = "songunet";  // "songunet", "adm" or "dhariwal"
  std::string preset;
  nn::SongUNetConfig songunet;      // type "songunet"
  nn::AdmUNetConfig adm;            // type "adm"
  nn::DhariwalUNetConfig dhariwal;  // type "dhariwal"
  // c_noise(σ): ln σ / 4 (EDM's, the default of SongUNet) or 250·ln σ (the reference's ImageNet
  // and LSUN code, the default of ADM); network.noise_labels "edm" or "adm".
  consistency::NoiseLabels noise_labels = consistency::NoiseLabels::EdmLog4;
  // An EDM teacher's scalings (mode edm): Edm (cm trains these), or Vp / Ve (EDM's baselines,
  // converted by tools/convert_edm_pkl.py; noise_labels VpTime / VeLog). network.preconditioning.
  consistency::Parameterization preconditioning = consistency::Parameterization::Edm;

  int64_t img_resolution() const;
  int64_t in_channels() const;
  int64_t out_channels() const;
  int64_t label_dim() const;  // classes of a class-conditional network, 0 otherwise
  std::unique_ptr<nn::Network> make(Generator& gen) const;
};

// A preset's network with its defaults ("ddpmpp-cifar10", "adm-imagenet64", ...); errors list the
// known names.
NetworkConfig network_from_preset(const std::string& preset);

struct RunConfig {
  std::string mode;  // "ct", "cd", "edm"
  std::string name;
  uint64_t seed = 0;
  Device device;
  DType precision = DType::f32;  // compute dtype of the network
  bool tf32 = false;             // f32 matrix products and convolutions in TF32 (precision "tf32")
  DataConfig data;
  NetworkConfig network;
  TrainConfig train;
  ConsistencyConfig cons;
  consistency::EdmLossOptions edm;
  consistency::NoiseConstants noise;
  SampleConfig sample;
  json resolved;
};

// Typed configuration from a resolved JSON (resolve_config's output).
RunConfig typed_config(const json& resolved);

}  // namespace cm::runner
