#include "runner/config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <type_traits>

#include "consistency/sampling.h"
#include "nn/file_io.h"

namespace cm::runner {

namespace {

using Kind = Field::Kind;
const std::vector<std::string> kConsistencyModes = {"ct", "cd"};

std::vector<Field> build_schema() {
  const double inf = 1e300;
  std::vector<Field> s = {
      {"/mode",
       Kind::String,
       nullptr,
       -inf,
       inf,
       {"ct", "cd", "edm"},
       {},
       "what to train: ct (consistency training), cd (consistency distillation) or edm (an EDM "
       "teacher)"},
      {"/name",
       Kind::String,
       "",
       -inf,
       inf,
       {},
       {},
       "a short description used in the run directory's name"},
      {"/seed", Kind::Int, 0, 0, 9.0e15, {}, {}, "seed of every random draw of the run"},
      {"/device", Kind::String, "cpu", -inf, inf, {}, {}, "cpu, cuda or cuda:N"},
      {"/precision",
       Kind::String,
       "f32",
       -inf,
       inf,
       {"f32", "tf32", "bf16", "f16"},
       {},
       "compute dtype of the network (master weights stay f32); tf32 (f32 data, TF32 matrix "
       "products and convolutions), bf16 and f16 need a GPU"},

      {"/data", Kind::Object, json::object(), -inf, inf, {}, {}, "the training images"},
      {"/data/dataset",
       Kind::String,
       "digits",
       -inf,
       inf,
       {},
       {},
       "digits | fashion-mnist:train | idx:<images>,<labels> | cifar10:<dir>:train | folder:<dir> "
       "| zip:<path> | npz:<path>[,<path>...] | npz:<dir> | tint:<spec>"},
      {"/data/flip", Kind::Bool, false, -inf, inf, {}, {}, "random horizontal flips"},
      {"/data/random_crop",
       Kind::Bool,
       false,
       -inf,
       inf,
       {},
       {},
       "the reference's random_crop_arr: short side scaled to 1..1.25 of the image size, a random "
       "square crop (from the full image for openai:<dir>:<size> folders)"},
      {"/data/storage",
       Kind::String,
       "auto",
       -inf,
       inf,
       {"auto", "memory", "stream"},
       {},
       "memory: every image decoded at the start; stream: image folders, zips and several npz "
       "files read image by image as the batches need them (data sets larger than the memory); "
       "auto: stream folders and zips of more than 4 GiB decoded, and several npz files"},
      {"/data/read_threads",
       Kind::Int,
       4,
       1,
       256,
       {},
       {},
       "threads decoding each batch of a streamed data set (on the loader's prefetch thread)"},
      {"/data/labels",
       Kind::Bool,
       false,
       -inf,
       inf,
       {},
       {},
       "class-conditional training (needs network.label_dim)"},

      {"/network",
       Kind::Object,
       json::object(),
       -inf,
       inf,
       {},
       {},
       "the SongUNet (a preset plus overrides)"},
      {"/network/preset",
       Kind::String,
       "ddpmpp-digits-8",
       -inf,
       inf,
       {},
       {},
       "a network of cm info --presets"},
      {"/network/img_resolution", Kind::Int, nullptr, 1, 4096, {}, {}, "", true},
      {"/network/in_channels", Kind::Int, nullptr, 1, 64, {}, {}, "", true},
      {"/network/out_channels", Kind::Int, nullptr, 1, 64, {}, {}, "", true},
      {"/network/label_dim", Kind::Int, nullptr, 0, 100000, {}, {}, "", true},
      {"/network/augment_dim", Kind::Int, nullptr, 0, 1000, {}, {}, "", true},
      {"/network/model_channels", Kind::Int, nullptr, 1, 4096, {}, {}, "", true},
      {"/network/channel_mult", Kind::IntList, nullptr, 1, 64, {}, {}, "", true},
      {"/network/channel_mult_emb", Kind::Int, nullptr, 1, 64, {}, {}, "", true},
      {"/network/num_blocks", Kind::Int, nullptr, 1, 64, {}, {}, "", true},
      {"/network/attn_resolutions", Kind::IntList, nullptr, 1, 4096, {}, {}, "", true},
      {"/network/dropout", Kind::Number, nullptr, 0, 0.999, {}, {}, "", true},
      {"/network/label_dropout", Kind::Number, nullptr, 0, 0.999, {}, {}, "", true},
      {"/network/embedding_type",
       Kind::String,
       nullptr,
       -inf,
       inf,
       {"positional", "fourier"},
       {},
       "",
       true},
      {"/network/channel_mult_noise", Kind::Int, nullptr, 1, 64, {}, {}, "", true},
      {"/network/encoder_type",
       Kind::String,
       nullptr,
       -inf,
       inf,
       {"standard", "skip", "residual"},
       {},
       "",
       true},
      {"/network/decoder_type",
       Kind::String,
       nullptr,
       -inf,
       inf,
       {"standard", "skip"},
       {},
       "",
       true},
      {"/network/resample_filter", Kind::NumberList, nullptr, -inf, inf, {}, {}, "", true},
      {"/network/fourier_scale", Kind::Number, nullptr, 0, inf, {}, {}, "", true},
      {"/network/memory_format",
       Kind::String,
       nullptr,
       -inf,
       inf,
       {"auto", "contiguous", "channels_last"},
       {},
       "",
       true},
      {"/network/recompute",
       Kind::String,
       nullptr,
       -inf,
       inf,
       {"auto", "on", "off"},
       {},
       "activation recomputation: the convolutions' inputs after a group norm or dropout, the "
       "dropout masks, and attention's and the FiLM norms' intermediates, computed again in the "
       "backward instead of kept (the same gradients, less memory); auto: on for CUDA, off on "
       "the CPU",
       true},
      {"/network/attention",
       Kind::String,
       nullptr,
       -inf,
       inf,
       {"auto", "fused", "composite"},
       {},
       "the attention layers' kernel: fused (FlashAttention-2: no L x L scores stored, the "
       "backward recomputes them) or composite (matmul, softmax, matmul); the results differ by "
       "rounding only; auto: fused on the CPU, composite on CUDA until its kernel is verified on "
       "a card; fused where the backend's kernel takes the dtype and head size",
       true},
      {"/network/type",
       Kind::String,
       nullptr,
       -inf,
       inf,
       {"songunet", "adm", "dhariwal"},
       {},
       "the network family, given by the preset",
       true},
      {"/network/noise_labels",
       Kind::String,
       nullptr,
       -inf,
       inf,
       {"edm", "adm", "vp", "ve"},
       {},
       "c_noise: ln(sigma)/4 (edm, SongUNet's default), 250 ln(sigma) (adm, ADM's default); vp "
       "and ve go with those preconditionings",
       true},
      {"/network/preconditioning",
       Kind::String,
       nullptr,
       -inf,
       inf,
       {"edm", "vp", "ve"},
       {},
       "an EDM teacher's (mode edm) scalings: edm (EDM's, what cm trains), or vp / ve (EDM's "
       "VPPrecond / VEPrecond, for baselines converted by tools/convert_edm_pkl.py: they sample, "
       "evaluate, edit and teach, cm does not train them)",
       true},
      // ADM's U-Net (type "adm"), with the reference scripts' flag names
      {"/network/num_res_blocks", Kind::Int, nullptr, 1, 64, {}, {}, "", true},
      {"/network/attention_resolutions", Kind::IntList, nullptr, 1, 4096, {}, {}, "", true},
      {"/network/conv_resample", Kind::Bool, nullptr, -inf, inf, {}, {}, "", true},
      {"/network/num_heads", Kind::Int, nullptr, 1, 1024, {}, {}, "", true},
      {"/network/num_head_channels", Kind::Int, nullptr, -1, 4096, {}, {}, "", true},
      {"/network/num_heads_upsample", Kind::Int, nullptr, -1, 1024, {}, {}, "", true},
      {"/network/use_scale_shift_norm", Kind::Bool, nullptr, -inf, inf, {}, {}, "", true},
      {"/network/resblock_updown", Kind::Bool, nullptr, -inf, inf, {}, {}, "", true},
      {"/network/attention_split",
       Kind::String,
       nullptr,
       -inf,
       inf,
       {"flash", "legacy"},
       {},
       "",
       true},

      {"/train", Kind::Object, json::object(), -inf, inf, {}, {}, "the optimisation"},
      {"/train/steps", Kind::Int, 2000, 1, 1e12, {}, {}, "training iterations"},
      {"/train/batch", Kind::Int, 64, 1, 1e7, {}, {}, "images per iteration"},
      {"/train/lr", Kind::Number, 4e-4, 1e-12, 10, {}, {}, "learning rate"},
      {"/train/optimizer", Kind::String, "radam", -inf, inf, {"radam", "adam", "adamw"}, {}, ""},
      {"/train/beta1", Kind::Number, 0.9, 0, 0.999999, {}, {}, ""},
      {"/train/beta2", Kind::Number, 0.999, 0, 0.99999999, {}, {}, ""},
      {"/train/eps", Kind::Number, 1e-8, 0, 1, {}, {}, ""},
      {"/train/weight_decay", Kind::Number, 0.0, 0, 10, {}, {}, ""},
      {"/train/warmup_steps", Kind::Int, 0, 0, 1e12, {}, {}, "linear learning-rate warm-up"},
      {"/train/grad_clip",
       Kind::Number,
       0.0,
       0,
       inf,
       {},
       {},
       "global gradient-norm clipping (0: off)"},
      {"/train/ema",
       Kind::NumberList,
       json::array({0.9999}),
       0,
       0.99999999,
       {},
       {},
       "eval EMA decay rates"},
      {"/train/ema_halflife_kimg",
       Kind::Number,
       0.0,
       0,
       inf,
       {},
       {},
       "EDM's EMA half-life in thousands of images (> 0 replaces the fixed rates)"},
      {"/train/ema_rampup_ratio",
       Kind::Number,
       0.05,
       0,
       inf,
       {},
       {},
       "EDM's EMA ramp-up (0: none)"},
      {"/train/log_every", Kind::Int, 10, 1, 1e12, {}, {}, ""},
      {"/train/checkpoint_every", Kind::Int, 1000, 1, 1e12, {}, {}, ""},
      {"/train/sample_every", Kind::Int, 1000, 1, 1e12, {}, {}, ""},
      {"/train/layer_stats_every", Kind::Int, 0, 0, 1e12, {}, {}, "per-layer statistics (0: off)"},
      {"/train/keep_checkpoints", Kind::Int, 3, 0, 1e6, {}, {}, "checkpoints kept (0: all)"},
      {"/train/max_skipped_steps",
       Kind::Int,
       20,
       0,
       1e12,
       {},
       {},
       "consecutive steps with non-finite gradients after which the run stops with an error (0: "
       "never)"},
      {"/train/allreduce_bucket_mb",
       Kind::Number,
       25.0,
       0,
       1e6,
       {},
       {},
       "data-parallel runs: MiB of gradients per all-reduce bucket, each sent during backward as "
       "soon as its gradients are complete (0: one all-reduce per gradient buffer)"},

      {"/consistency",
       Kind::Object,
       json::object(),
       -inf,
       inf,
       {},
       kConsistencyModes,
       "CT/CD options"},
      {"/consistency/schedule",
       Kind::String,
       "adaptive",
       -inf,
       inf,
       {"adaptive", "adaptive_paper", "fixed", "exponential"},
       kConsistencyModes,
       "N(k) and mu(k)"},
      {"/consistency/s0", Kind::Number, 2.0, 1, 1e6, {}, kConsistencyModes, ""},
      {"/consistency/s1", Kind::Number, 150.0, 1, 1e6, {}, kConsistencyModes, ""},
      {"/consistency/mu0", Kind::Number, 0.9, 0, 0.999999, {}, kConsistencyModes, ""},
      {"/consistency/total_steps",
       Kind::Int,
       nullptr,
       1,
       1e12,
       {},
       kConsistencyModes,
       "K of the schedule (default: train.steps)",
       true},
      {"/consistency/n", Kind::Int, 18, 2, 1e6, {}, kConsistencyModes, "N of the fixed schedule"},
      {"/consistency/mu",
       Kind::Number,
       0.0,
       0,
       0.999999,
       {},
       kConsistencyModes,
       "mu of the fixed schedule"},
      {"/consistency/distance",
       Kind::String,
       "l2",
       -inf,
       inf,
       {"l2", "l1", "pseudo_huber", "lpips"},
       kConsistencyModes,
       "d of the loss; lpips needs consistency.lpips.weights"},
      {"/consistency/lpips",
       Kind::Object,
       nullptr,
       -inf,
       inf,
       {},
       kConsistencyModes,
       "the LPIPS network of distance lpips",
       true},
      {"/consistency/lpips/weights",
       Kind::String,
       nullptr,
       -inf,
       inf,
       {},
       kConsistencyModes,
       "an LPIPS weights file made by tools/convert_lpips.py (required for distance lpips)",
       true},
      {"/consistency/lpips/variant",
       Kind::String,
       "piq",
       -inf,
       inf,
       {"piq", "original"},
       kConsistencyModes,
       "piq: average pools and ImageNet mean/std (openai/consistency_models); original: max pools "
       "and the LPIPS scaling layer (the JAX code)"},
      {"/consistency/weighting",
       Kind::String,
       "uniform",
       -inf,
       inf,
       {"uniform", "snr", "snr+1", "karras", "truncated_snr", "ict"},
       kConsistencyModes,
       ""},
      {"/consistency/index_sampling",
       Kind::String,
       "uniform",
       -inf,
       inf,
       {"uniform", "lognormal"},
       kConsistencyModes,
       ""},
      {"/consistency/huber_c",
       Kind::Number,
       nullptr,
       0,
       inf,
       {},
       kConsistencyModes,
       "pseudo-Huber c (default 0.00054·sqrt(C·H·W))",
       true},
      {"/consistency/p_mean",
       Kind::Number,
       -1.1,
       -inf,
       inf,
       {},
       kConsistencyModes,
       "lognormal index sampling"},
      {"/consistency/p_std",
       Kind::Number,
       2.0,
       1e-6,
       inf,
       {},
       kConsistencyModes,
       "lognormal index sampling"},
      {"/consistency/solver",
       Kind::String,
       "heun",
       -inf,
       inf,
       {"heun", "euler"},
       {"cd"},
       "the teacher's ODE step"},
      {"/consistency/teacher",
       Kind::String,
       nullptr,
       -inf,
       inf,
       {},
       {"cd"},
       "an EDM teacher run directory or checkpoint"},

      {"/edm", Kind::Object, json::object(), -inf, inf, {}, {"edm"}, "EDM teacher loss"},
      {"/edm/p_mean", Kind::Number, -1.2, -inf, inf, {}, {"edm"}, ""},
      {"/edm/p_std", Kind::Number, 1.2, 1e-6, inf, {}, {"edm"}, ""},

      {"/noise", Kind::Object, json::object(), -inf, inf, {}, {}, "the noise levels"},
      {"/noise/sigma_min", Kind::Number, 0.002, 1e-9, inf, {}, {}, ""},
      {"/noise/sigma_max", Kind::Number, 80.0, 1e-9, inf, {}, {}, ""},
      {"/noise/sigma_data", Kind::Number, 0.5, 1e-9, inf, {}, {}, ""},
      {"/noise/rho", Kind::Number, 7.0, 1e-9, inf, {}, {}, ""},

      {"/sample",
       Kind::Object,
       json::object(),
       -inf,
       inf,
       {},
       {},
       "the sample grids written during training"},
      {"/sample/grid", Kind::Int, 64, 1, 4096, {}, {}, "images per grid"},
      {"/sample/two_step_sigma",
       Kind::Number,
       0.821,
       1e-9,
       inf,
       {},
       kConsistencyModes,
       "intermediate sigma of the two-step grids"},
      {"/sample/teacher_steps",
       Kind::Int,
       18,
       2,
       1000,
       {},
       {"edm"},
       "Heun steps of the teacher's grids"},
  };
  return s;
}

std::string kind_name(Kind k) {
  switch (k) {
    case Kind::Int:
      return "integer";
    case Kind::Number:
      return "number";
    case Kind::String:
      return "string";
    case Kind::Bool:
      return "boolean";
    case Kind::NumberList:
      return "list of numbers";
    case Kind::IntList:
      return "list of integers";
    case Kind::StringOrNull:
      return "string or null";
    case Kind::Object:
      return "object";
  }
  return "?";
}

std::string json_type(const json& v) {
  if (v.is_boolean()) return "boolean";
  if (v.is_number_integer()) return "integer";
  if (v.is_number()) return "number";
  return v.type_name();
}

bool is_int_value(const json& v) {
  if (v.is_boolean()) return false;
  if (v.is_number_integer()) return true;
  return v.is_number_float() && std::isfinite(v.get<double>()) &&
         std::floor(v.get<double>()) == v.get<double>();
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] =
          std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string parent_of(const std::string& path) {
  return path.substr(0, path.rfind('/'));
}
std::string leaf_of(const std::string& path) {
  return path.substr(path.rfind('/') + 1);
}

bool applies(const Field& f, const std::string& mode) {
  return f.modes.empty() || std::find(f.modes.begin(), f.modes.end(), mode) != f.modes.end();
}

std::string modes_str(const std::vector<std::string>& m) {
  std::string s;
  for (const std::string& x : m) s += (s.empty() ? "" : " or ") + x;
  return s;
}

// The value's problem against field f ("" when fine).
std::string check_value(const Field& f, const json& v) {
  auto range = [&](double x) -> std::string {
    if (x < f.min || x > f.max) {
      std::ostringstream os;
      os << "value " << x << " is out of range";
      if (f.min > -1e299 && f.max < 1e299)
        os << " [" << f.min << ", " << f.max << "]";
      else if (f.min > -1e299)
        os << " (minimum " << f.min << ")";
      else
        os << " (maximum " << f.max << ")";
      return os.str();
    }
    return "";
  };
  const std::string got = "got " + v.dump() + " (" + json_type(v) + ")";
  switch (f.kind) {
    case Kind::Int:
      if (!is_int_value(v)) return "expected an integer, " + got;
      return range(v.get<double>());
    case Kind::Number:
      if (!v.is_number() || v.is_boolean()) return "expected a number, " + got;
      return range(v.get<double>());
    case Kind::Bool:
      if (!v.is_boolean()) return "expected true or false, " + got;
      return "";
    case Kind::String:
    case Kind::StringOrNull:
      if (v.is_null() && f.kind == Kind::StringOrNull) return "";
      if (!v.is_string()) return "expected a string, " + got;
      if (!f.choices.empty() &&
          std::find(f.choices.begin(), f.choices.end(), v.get<std::string>()) == f.choices.end()) {
        std::string c;
        for (const std::string& x : f.choices) c += (c.empty() ? "" : ", ") + x;
        return "\"" + v.get<std::string>() + "\" is not one of " + c;
      }
      return "";
    case Kind::NumberList:
    case Kind::IntList: {
      if (!v.is_array()) return "expected a " + kind_name(f.kind) + ", " + got;
      for (size_t i = 0; i < v.size(); ++i) {
        const bool ok =
            f.kind == Kind::IntList ? is_int_value(v[i]) : (v[i].is_number() && !v[i].is_boolean());
        if (!ok)
          return "entry " + std::to_string(i) + " is not " +
                 (f.kind == Kind::IntList ? "an integer" : "a number");
        const std::string r = range(v[i].get<double>());
        if (!r.empty()) return "entry " + std::to_string(i) + ": " + r;
      }
      return "";
    }
    case Kind::Object:
      if (!v.is_object()) return "expected an object, " + got;
      return "";
  }
  return "";
}

}  // namespace

const std::vector<Field>& config_schema() {
  static const std::vector<Field> schema = build_schema();
  return schema;
}

json read_json_file(const std::string& path) {
  return nn::parse_json(nn::read_file_text(path, "configuration"), path);
}

void apply_overrides(json& user, const std::vector<std::string>& sets) {
  for (const std::string& s : sets) {
    const size_t eq = s.find('=');
    CM_CHECK(eq != std::string::npos && eq > 0, "--set ", s,
             ": expected key=value (e.g. train.lr=1e-4)");
    const std::string key = s.substr(0, eq), text = s.substr(eq + 1);
    // JSON when it is JSON; a bare word is a string; a number JSON cannot hold is an error.
    json value;
    try {
      value = nn::parse_json(text, "--set " + s);
    } catch (const Error& e) {
      static const std::regex number(R"(-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?)");
      CM_CHECK(!std::regex_match(text, number), "--set ", s, ": the number ", text,
               " is out of range");
      CM_CHECK(text.empty() || (text[0] != '[' && text[0] != '{' && text[0] != '"'), e.what());
      value = text;  // a bare word: a string
    }
    json* node = &user;
    std::stringstream parts(key);
    std::string part;
    std::vector<std::string> keys;
    while (std::getline(parts, part, '.')) keys.push_back(part);
    for (size_t i = 0; i < keys.size(); ++i) {
      CM_CHECK(!keys[i].empty(), "--set ", s, ": empty key component");
      if (!node->is_object()) *node = json::object();
      if (i + 1 == keys.size())
        (*node)[keys[i]] = value;
      else
        node = &(*node)[keys[i]];
    }
  }
}

namespace {
// Every option of a network family as (JSON key of /network, member): the one list that reads a
// configuration's network and writes it out whole. ADM's keys are the reference scripts' flag
// names, but for the options both families have (resolution, channels, classes).
template <class F>
void network_fields(nn::SongUNetConfig& c, F&& f) {
  f("img_resolution", c.img_resolution);
  f("in_channels", c.in_channels);
  f("out_channels", c.out_channels);
  f("label_dim", c.label_dim);
  f("augment_dim", c.augment_dim);
  f("model_channels", c.model_channels);
  f("channel_mult", c.channel_mult);
  f("channel_mult_emb", c.channel_mult_emb);
  f("num_blocks", c.num_blocks);
  f("attn_resolutions", c.attn_resolutions);
  f("dropout", c.dropout);
  f("label_dropout", c.label_dropout);
  f("embedding_type", c.embedding_type);
  f("channel_mult_noise", c.channel_mult_noise);
  f("encoder_type", c.encoder_type);
  f("decoder_type", c.decoder_type);
  f("resample_filter", c.resample_filter);
  f("fourier_scale", c.fourier_scale);
  f("memory_format", c.memory_format);
  f("recompute", c.recompute);
  f("attention", c.attention);
}
template <class F>
void network_fields(nn::AdmUNetConfig& c, F&& f) {
  f("img_resolution", c.image_size);
  f("in_channels", c.in_channels);
  f("out_channels", c.out_channels);
  f("label_dim", c.num_classes);
  f("model_channels", c.model_channels);
  f("channel_mult", c.channel_mult);
  f("num_res_blocks", c.num_res_blocks);
  f("attention_resolutions", c.attention_resolutions);
  f("dropout", c.dropout);
  f("conv_resample", c.conv_resample);
  f("num_heads", c.num_heads);
  f("num_head_channels", c.num_head_channels);
  f("num_heads_upsample", c.num_heads_upsample);
  f("use_scale_shift_norm", c.use_scale_shift_norm);
  f("resblock_updown", c.resblock_updown);
  f("attention_split", c.attention_split);
  f("memory_format", c.memory_format);
  f("recompute", c.recompute);
  f("attention", c.attention);
}

template <class F>
void network_fields(nn::DhariwalUNetConfig& c, F&& f) {
  f("img_resolution", c.img_resolution);
  f("in_channels", c.in_channels);
  f("out_channels", c.out_channels);
  f("label_dim", c.label_dim);
  f("augment_dim", c.augment_dim);
  f("model_channels", c.model_channels);
  f("channel_mult", c.channel_mult);
  f("channel_mult_emb", c.channel_mult_emb);
  f("num_blocks", c.num_blocks);
  f("attn_resolutions", c.attn_resolutions);
  f("dropout", c.dropout);
  f("label_dropout", c.label_dropout);
  f("memory_format", c.memory_format);
  f("recompute", c.recompute);
  f("attention", c.attention);
}

const std::vector<std::string> kNetworkTypes = {"songunet", "adm", "dhariwal"};

// The /network keys of a family.
std::vector<std::string> family_keys(const std::string& type) {
  std::vector<std::string> keys;
  const auto add = [&](const char* k, auto&) { keys.push_back(k); };
  if (type == "songunet") {
    nn::SongUNetConfig c;
    network_fields(c, add);
  } else if (type == "adm") {
    nn::AdmUNetConfig c;
    network_fields(c, add);
  } else {
    nn::DhariwalUNetConfig c;
    network_fields(c, add);
  }
  return keys;
}
// The family's class name, for messages.
std::string family_class(const std::string& type) {
  return type == "songunet" ? "SongUNet" : type == "adm" ? "ADM" : "DhariwalUNet";
}

std::vector<std::string> family_presets(const std::string& type) {
  return type == "songunet" ? nn::songunet_preset_names()
         : type == "adm"    ? nn::adm_unet_preset_names()
                            : nn::dhariwal_unet_preset_names();
}

// "songunet", "adm" or "dhariwal" for a preset name, "" for an unknown one.
std::string network_type_of(const std::string& preset) {
  for (const std::string& type : kNetworkTypes)
    for (const std::string& n : family_presets(type))
      if (n == preset) return type;
  return "";
}
std::string known_presets() {
  std::string known;
  for (const std::string& type : kNetworkTypes)
    for (const std::string& n : family_presets(type)) known += (known.empty() ? "" : ", ") + n;
  return known;
}
}  // namespace

int64_t NetworkConfig::img_resolution() const {
  return type == "adm"        ? adm.image_size
         : type == "dhariwal" ? dhariwal.img_resolution
                              : songunet.img_resolution;
}
int64_t NetworkConfig::in_channels() const {
  return type == "adm"        ? adm.in_channels
         : type == "dhariwal" ? dhariwal.in_channels
                              : songunet.in_channels;
}
int64_t NetworkConfig::out_channels() const {
  return type == "adm"        ? adm.out_channels
         : type == "dhariwal" ? dhariwal.out_channels
                              : songunet.out_channels;
}
int64_t NetworkConfig::label_dim() const {
  return type == "adm"        ? adm.num_classes
         : type == "dhariwal" ? dhariwal.label_dim
                              : songunet.label_dim;
}
NetworkConfig network_from_preset(const std::string& preset) {
  NetworkConfig c;
  c.preset = preset;
  c.type = network_type_of(preset);
  CM_CHECK(!c.type.empty(), "unknown network \"", preset, "\" (known: ", known_presets(), ")");
  if (c.type == "adm") {
    c.adm = nn::adm_unet_preset(preset);
    c.noise_labels = consistency::NoiseLabels::Adm250;
  } else if (c.type == "dhariwal") {
    c.dhariwal = nn::dhariwal_unet_preset(preset);
  } else {
    c.songunet = nn::songunet_preset(preset);
  }
  return c;
}

std::unique_ptr<nn::Network> NetworkConfig::make(Generator& gen) const {
  if (type == "adm") return std::make_unique<nn::AdmUNet>(adm, gen);
  if (type == "dhariwal") return std::make_unique<nn::DhariwalUNet>(dhariwal, gen);
  return std::make_unique<nn::SongUNet>(songunet, gen);
}

json resolve_config(const json& user, const std::string& source) {
  std::vector<std::string> errors;
  auto err = [&](const std::string& path, const std::string& msg) {
    errors.push_back(source + ": " + path + ": " + msg);
  };
  const auto& schema = config_schema();
  std::map<std::string, const Field*> by_path;
  for (const Field& f : schema) by_path[f.path] = &f;

  CM_CHECK(user.is_object(), source, ": the configuration must be a JSON object");
  std::string mode;
  if (!user.contains("mode")) {
    err("/mode", "missing (one of ct, cd, edm)");
  } else {
    const std::string e = check_value(*by_path["/mode"], user["mode"]);
    if (!e.empty())
      err("/mode", e);
    else
      mode = user["mode"].get<std::string>();
  }

  // Every key the user wrote: known, of the right type, applicable to the mode.
  std::function<void(const json&, const std::string&)> walk = [&](const json& obj,
                                                                  const std::string& prefix) {
    for (auto it = obj.begin(); it != obj.end(); ++it) {
      const std::string path = prefix + "/" + it.key();
      auto f = by_path.find(path);
      if (f == by_path.end()) {
        std::string best;
        size_t best_d = 4;
        for (const Field& k : schema) {
          if (parent_of(k.path) != prefix) continue;
          const size_t d = edit_distance(it.key(), leaf_of(k.path));
          if (d < best_d) {
            best_d = d;
            best = leaf_of(k.path);
          }
        }
        err(path,
            "unknown key" + (best.empty() ? std::string() : " (did you mean \"" + best + "\"?)"));
        continue;
      }
      if (!mode.empty() && !applies(*f->second, mode)) {
        err(path, "does not apply to mode \"" + mode + "\" (only to " +
                      modes_str(f->second->modes) + ")");
        continue;
      }
      const std::string e = check_value(*f->second, it.value());
      if (!e.empty()) {
        err(path, e);
        continue;
      }
      if (f->second->kind == Kind::Object) walk(it.value(), path);
    }
  };
  walk(user, "");

  // The resolved configuration: defaults for the applicable fields the user left out.
  json out = user;
  if (!mode.empty()) {
    for (const Field& f : schema) {
      if (!applies(f, mode)) continue;
      const json::json_pointer ptr(f.path);
      const json::json_pointer parent(parent_of(f.path));
      if (!parent.empty() && (!out.contains(parent) || !out[parent].is_object())) continue;
      if (out.contains(ptr)) continue;
      if (!f.default_value.is_null())
        out[ptr] = f.default_value;
      else if (!f.optional)
        err(f.path, "missing (" + f.help + ")");
    }
  }
  // Cross-field rules.
  if (errors.empty()) {
    try {
      Device::parse(out["device"].get<std::string>());
    } catch (const Error& e) {
      err("/device", e.what());
    }
    const json& z = out["noise"];
    if (z["sigma_min"].get<double>() >= z["sigma_max"].get<double>())
      err("/noise/sigma_min", "must be below noise.sigma_max (" + z["sigma_min"].dump() +
                                  " >= " + z["sigma_max"].dump() + ")");
    else if ((mode == "ct" || mode == "cd") &&
             !(out["sample"]["two_step_sigma"].get<double>() > z["sigma_min"].get<double>() &&
               out["sample"]["two_step_sigma"].get<double>() < z["sigma_max"].get<double>()))
      err("/sample/two_step_sigma", "must lie in (noise.sigma_min, noise.sigma_max) = (" +
                                        z["sigma_min"].dump() + ", " + z["sigma_max"].dump() +
                                        "), got " + out["sample"]["two_step_sigma"].dump());
    if (out["precision"] != "f32" && out["device"] == "cpu")
      err("/precision", "\"" + out["precision"].get<std::string>() +
                            "\" needs a GPU device (the CPU computes in f32)");
    if (mode == "ct" || mode == "cd") {
      const std::string sched = out["consistency"]["schedule"];
      if (sched == "exponential" && !user.contains(json::json_pointer("/consistency/s0"))) {
        out["consistency"]["s0"] = 10.0;  // iCT's curriculum starts at 10 steps and doubles to 1280
        if (!user.contains(json::json_pointer("/consistency/s1")))
          out["consistency"]["s1"] = 1280.0;
      }
      if (out["consistency"]["s1"].get<double>() < out["consistency"]["s0"].get<double>())
        err("/consistency/s1", "must be >= s0");
      const json& k = out["consistency"];
      if (k["distance"] == "lpips") {
        if (!k.contains("lpips") || !k["lpips"].contains("weights")) {
          err("/consistency/lpips/weights",
              "missing: distance \"lpips\" needs an LPIPS weights file (make one with "
              "tools/convert_lpips.py)");
        }
        // the file itself is checked by the trainer, which reads it: a checkpoint of an LPIPS
        // run samples and evaluates on a machine without it
      } else if (k.contains("lpips")) {
        err("/consistency/lpips", "applies only to distance \"lpips\" (distance is \"" +
                                      k["distance"].get<std::string>() + "\")");
      }
    }
    {
      // the preset names the family; each family takes its own keys
      const json& net = out["network"];
      const std::string preset = net["preset"];
      const std::string type = network_type_of(preset);
      if (type.empty()) {
        err("/network/preset",
            "unknown network \"" + preset + "\" (known: " + known_presets() + ")");
      } else {
        if (net.contains("type") && net["type"] != type)
          err("/network/type", "\"" + net["type"].get<std::string>() +
                                   "\" does not match preset \"" + preset + "\" (a " + type +
                                   " network)");
        const std::vector<std::string> own = family_keys(type);
        for (const std::string& other : kNetworkTypes) {
          if (other == type) continue;
          for (const std::string& k : family_keys(other)) {
            if (!net.contains(k) || std::find(own.begin(), own.end(), k) != own.end()) continue;
            std::string takers;  // every family that takes the key
            for (const std::string& t : kNetworkTypes) {
              const std::vector<std::string> keys = family_keys(t);
              if (std::find(keys.begin(), keys.end(), k) != keys.end())
                takers += (takers.empty() ? "" : " and ") + family_class(t);
            }
            err("/network/" + k, "applies only to " + takers + " networks (preset \"" + preset +
                                     "\" is a " + type + " network)");
          }
        }
      }
    }
    if (errors.empty()) {
      // every other rule the typed configuration checks (the network's channel multipliers and
      // attention resolutions, the schedule), reported here, before anything is created
      try {
        // the network written out whole (the preset's values included), so that a reader of
        // config.json needs no preset table; resolving a resolved file changes nothing
        NetworkConfig t = typed_config(out).network;
        json& net = out["network"];
        net["type"] = t.type;
        net["noise_labels"] = consistency::noise_labels_name(t.noise_labels);
        if (mode == "edm")
          net["preconditioning"] = consistency::parameterization_name(t.preconditioning);
        const auto write = [&](const char* k, const auto& v) { net[k] = v; };
        if (t.type == "adm")
          network_fields(t.adm, write);
        else if (t.type == "dhariwal")
          network_fields(t.dhariwal, write);
        else
          network_fields(t.songunet, write);
      } catch (const Error& e) {
        err("/", e.what());
      }
    }
  }
  if (!errors.empty()) {
    std::string msg = "invalid configuration (" + std::to_string(errors.size()) + " problem" +
                      (errors.size() > 1 ? "s" : "") + "):";
    for (const std::string& e : errors) msg += "\n  " + e;
    throw Error(msg);
  }
  return out;
}

RunConfig typed_config(const json& r) {
  RunConfig c;
  c.resolved = r;
  c.mode = r.at("mode");
  c.name = r.at("name");
  c.seed = r.at("seed").get<uint64_t>();
  c.device = Device::parse(r.at("device").get<std::string>());
  const std::string prec = r.at("precision");
  c.precision = prec == "bf16" ? DType::bf16 : prec == "f16" ? DType::f16 : DType::f32;
  c.tf32 = prec == "tf32";

  const json& d = r.at("data");
  c.data = {d.at("dataset"), d.at("flip"),    d.at("random_crop"),
            d.at("labels"),  d.at("storage"), d.at("read_threads").get<int>()};

  const json& n = r.at("network");
  NetworkConfig& network = c.network;
  network.preset = n.at("preset");
  network.type = network_type_of(network.preset);
  CM_CHECK(!network.type.empty(), "/network/preset: unknown network \"", network.preset,
           "\" (known: ", known_presets(), ")");
  network.preconditioning = consistency::parse_parameterization(n.value("preconditioning", "edm"));
  const bool baseline = network.preconditioning != consistency::Parameterization::Edm;
  CM_CHECK(!baseline || c.mode == "edm", "/network/preconditioning: \"",
           n.value("preconditioning", ""),
           "\" is a teacher's (mode edm); a consistency model uses ",
           "the consistency parameterisation (mode is \"", c.mode, "\")");
  const std::string default_labels = baseline                ? n.value("preconditioning", "")
                                     : network.type == "adm" ? "adm"
                                                             : "edm";
  network.noise_labels = consistency::parse_noise_labels(n.value("noise_labels", default_labels));
  {
    // VP and VE fix their noise labels, and those labels belong to them alone
    const std::string labels = consistency::noise_labels_name(network.noise_labels);
    const bool baseline_labels = labels == "vp" || labels == "ve";
    CM_CHECK(baseline == baseline_labels && (!baseline || labels == default_labels),
             "/network/noise_labels: \"", labels, "\" does not go with preconditioning \"",
             consistency::parameterization_name(network.preconditioning), "\" (",
             baseline ? "it fixes noise_labels \"" + default_labels + "\""
                      : "noise labels vp and ve belong to preconditioning vp and ve",
             ")");
  }
  // the preset's values, then the fields the configuration gives
  const auto read = [&](const char* k, auto& v) {
    if (n.contains(k)) v = n[k].get<std::decay_t<decltype(v)>>();
  };
  if (network.type == "adm") {
    network.adm = nn::adm_unet_preset(network.preset);
    network_fields(network.adm, read);
    network.adm.validate();
  } else if (network.type == "dhariwal") {
    network.dhariwal = nn::dhariwal_unet_preset(network.preset);
    network_fields(network.dhariwal, read);
    network.dhariwal.validate();
  } else {
    network.songunet = nn::songunet_preset(network.preset);
    network_fields(network.songunet, read);
    network.songunet.validate();
  }

  const json& t = r.at("train");
  TrainConfig& tc = c.train;
  tc.steps = t.at("steps").get<int64_t>();
  tc.batch = t.at("batch").get<int64_t>();
  tc.lr = t.at("lr");
  tc.optimizer = t.at("optimizer");
  tc.beta1 = t.at("beta1");
  tc.beta2 = t.at("beta2");
  tc.eps = t.at("eps");
  tc.weight_decay = t.at("weight_decay");
  tc.warmup_steps = t.at("warmup_steps").get<int64_t>();
  tc.grad_clip = t.at("grad_clip");
  tc.ema = t.at("ema").get<std::vector<double>>();
  tc.ema_halflife_kimg = t.at("ema_halflife_kimg");
  tc.ema_rampup_ratio = t.at("ema_rampup_ratio");
  tc.log_every = t.at("log_every").get<int64_t>();
  tc.checkpoint_every = t.at("checkpoint_every").get<int64_t>();
  tc.sample_every = t.at("sample_every").get<int64_t>();
  tc.layer_stats_every = t.at("layer_stats_every").get<int64_t>();
  tc.keep_checkpoints = t.at("keep_checkpoints").get<int64_t>();
  tc.max_skipped_steps = t.value("max_skipped_steps", int64_t(20));
  tc.allreduce_bucket_mb = t.value("allreduce_bucket_mb", 25.0);

  if (c.mode == "ct" || c.mode == "cd") {
    const json& k = r.at("consistency");
    consistency::Schedule& s = c.cons.schedule;
    s.kind = consistency::parse_schedule_kind(k.at("schedule"));
    s.s0 = k.at("s0");
    s.s1 = k.at("s1");
    s.mu0 = k.at("mu0");
    s.total_steps = k.contains("total_steps") ? k["total_steps"].get<int64_t>() : tc.steps;
    s.fixed_n = k.at("n").get<int64_t>();
    s.fixed_mu = k.at("mu");
    s.validate();
    consistency::LossOptions& o = c.cons.loss;
    o.distance = consistency::parse_distance(k.at("distance"));
    o.weighting = consistency::parse_weighting(k.at("weighting"));
    o.sampling = consistency::parse_index_sampling(k.at("index_sampling"));
    if (k.contains("huber_c")) o.huber_c = k["huber_c"].get<double>();
    if (k.contains("lpips")) {
      c.cons.lpips_weights = k["lpips"].at("weights");
      c.cons.lpips_variant = k["lpips"].at("variant");
    }
    o.p_mean = k.at("p_mean");
    o.p_std = k.at("p_std");
    if (c.mode == "cd") {
      c.cons.solver = consistency::parse_solver(k.at("solver"));
      c.cons.teacher = k.at("teacher");
    }
    c.sample.two_step_taus = {r.at("sample").at("two_step_sigma").get<double>()};
  } else {
    c.edm.p_mean = r.at("edm").at("p_mean");
    c.edm.p_std = r.at("edm").at("p_std");
    c.sample.teacher_steps = r.at("sample").at("teacher_steps").get<int64_t>();
  }
  const json& z = r.at("noise");
  c.noise = {z.at("sigma_data"), z.at("sigma_min"), z.at("sigma_max"), z.at("rho")};
  c.sample.grid = r.at("sample").at("grid").get<int64_t>();
  return c;
}

}  // namespace cm::runner
