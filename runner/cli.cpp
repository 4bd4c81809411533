// The command line of `cm` (runner/cli.h): CLI11 finds the commands, options and values; the
// callbacks here turn each value into its type, whole and within its range, or fail naming the
// option and the value. Checks that need no file (combinations of options) are done here too, so
// that every usage error is found before anything runs.
#include "runner/cli.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <sstream>

#include "cm_revision.h"  // CM_GIT_REVISION (runner/revision.cmake)
#include "dist/communicator.h"
#include "nn/songunet.h"
#include "runner/config.h"
#include "tensor/backend.h"
#include "tensor/cpu/blas.h"
#include "tensor/cpu/conv_onednn.h"
#include "tensor/tensor.h"

namespace cm::runner {

namespace {

// A value as an error message shows it: as given when it is plain text, otherwise quoted with
// escapes (empty strings, spaces, control bytes), at most 80 characters.
std::string shown(const std::string& v) {
  bool plain = !v.empty() && v.size() <= 80;
  for (unsigned char ch : v)
    if (!std::isgraph(ch) || ch == '"') plain = false;
  if (plain) return v;
  std::string s = "\"";
  for (size_t i = 0; i < v.size() && i < 80; ++i) {
    const unsigned char ch = static_cast<unsigned char>(v[i]);
    if (ch == '"' || ch == '\\') {
      s += '\\';
      s += char(ch);
    } else if (std::isprint(ch)) {
      s += char(ch);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", unsigned(ch));
      s += buf;
    }
  }
  if (v.size() > 80) s += "...";
  return s + "\"";
}

// A value in quotes, as shown() writes it.
std::string in_quotes(const std::string& v) {
  const std::string s = shown(v);
  return s[0] == '"' ? s : "\"" + s + "\"";
}

// A whole string of decimal digits. nullopt for anything else (signs, spaces, "2x", "1e3", "0x10");
// `overflow` is set for digits beyond 2^64 − 1.
std::optional<uint64_t> parse_u64(const std::string& s, bool* overflow = nullptr) {
  if (overflow) *overflow = false;
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  uint64_t x = 0;
  for (char ch : s) {
    const uint64_t d = uint64_t(ch - '0');
    if (x > (UINT64_MAX - d) / 10) {
      if (overflow) *overflow = true;
      return std::nullopt;
    }
    x = x * 10 + d;
  }
  return x;
}

// An integer option in [lo, hi] (lo ≥ 0); `why` explains the upper bound.
int64_t parse_int(const std::string& opt, const std::string& v, int64_t lo, int64_t hi,
                  const std::string& why = "") {
  bool overflow = false;
  const auto x = parse_u64(v, &overflow);
  const char* expected = lo > 0 ? "a positive integer" : "a non-negative integer";
  CM_CHECK(x || overflow, opt, " ", shown(v), ": expected ", expected, " (decimal digits)");
  CM_CHECK(!overflow && *x <= uint64_t(hi), opt, " ", shown(v), ": at most ", hi, why);
  CM_CHECK(int64_t(*x) >= lo, opt, " ", shown(v), ": expected ", expected);
  return int64_t(*x);
}

// A whole-string finite number (no leading spaces, nothing after it).
std::optional<double> parse_double(const std::string& v) {
  if (v.empty() || std::isspace(static_cast<unsigned char>(v[0]))) return std::nullopt;
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (end != v.c_str() + v.size() || !std::isfinite(x)) return std::nullopt;
  return x;
}

std::string join(const std::vector<std::string>& v, const char* last) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i > 0) s += i + 1 == v.size() ? last : ", ";
    s += v[i];
  }
  return s;
}

std::string choice(const std::string& opt, const std::string& v,
                   const std::vector<std::string>& allowed) {
  CM_CHECK(std::find(allowed.begin(), allowed.end(), v) != allowed.end(), opt, " ", shown(v),
           ": expected ", join(allowed, " or "));
  return v;
}

// Removes the " [file:line]" that CM_CHECK appends: a usage error is about the command line.
std::string without_location(std::string msg) {
  const size_t open = msg.rfind(" [");
  if (open != std::string::npos && msg.back() == ']' &&
      msg.find(".cpp:", open) != std::string::npos)
    msg.erase(open);
  return msg;
}

// Re-throws a cm::Error of `f` (a library check of the value) with the option and value in front.
template <class F>
void checked(const std::string& opt, const std::string& v, F f) {
  try {
    f();
  } catch (const Error& e) {
    CM_FAIL(opt, " ", shown(v), ": ", without_location(e.what()));
  }
}

std::string device(const std::string& v) {
  checked("--device", v, [&] { Device::parse(v); });
  return v;
}

std::string weights(const std::string& v) {
  const bool rate = v.rfind("ema:", 0) == 0 && parse_double(v.substr(4)).has_value();
  CM_CHECK(v == "ema" || v == "online" || v == "target" || rate, "--weights ", shown(v),
           ": expected ema, ema:RATE (a rate of train.ema), online or target");
  return v;
}

const std::string kImagesWhy =
    " images (generate_images holds every image in memory and cm sample writes each as a PNG; "
    "split a larger job over --seeds ranges)";

std::string seeds_of(int64_t n) {
  return "0-" + std::to_string(n - 1);
}

// ---- building the commands -------------------------------------------------------------------

using Callback = std::function<void(const std::string&)>;

// A valued option that calls `f` with its (last) value; shown in --help as `--name TYPE [default]`.
CLI::Option* option(CLI::App* app, const std::string& name, const std::string& type,
                    const std::string& def, const std::string& help, Callback f) {
  // CLI11 takes the next argument as the value even when it is an option ("--out --n 5")
  Callback g = [name, f = std::move(f)](const std::string& v) {
    CM_CHECK(v.size() < 3 || v.compare(0, 2, "--") != 0 || !std::isalpha((unsigned char)v[2]),
             "option ", name, " needs a value (got the option ", shown(v), ")");
    f(v);
  };
  CLI::Option* o = app->add_option_function<std::string>(name, std::move(g), help);
  o->type_name(type)->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  if (!def.empty()) o->default_str(def);
  return o;
}

CLI::Option* string_option(CLI::App* app, const std::string& name, const std::string& type,
                           const std::string& def, const std::string& help, std::string& target) {
  return option(app, name, type, def, help, [&target](const std::string& v) { target = v; });
}

CLI::Option* optional_string(CLI::App* app, const std::string& name, const std::string& type,
                             const std::string& help, std::optional<std::string>& target) {
  return option(app, name, type, "", help, [&target](const std::string& v) { target = v; });
}

CLI::Option* int_option(CLI::App* app, const std::string& name, const std::string& def,
                        const std::string& help, int64_t& target, int64_t lo, int64_t hi,
                        const std::string& why = "") {
  return option(app, name, lo > 0 ? "INT>0" : "INT>=0", def, help,
                [&target, name, lo, hi, why](const std::string& v) {
                  target = parse_int(name, v, lo, hi, why);
                });
}

// The options that `cm sample` and `cm eval` share (the sampling of a model's images).
struct SamplingOptions {
  CLI::Option *n, *seeds, *steps, *sigmas, *weights, *quantize, *allow_nonfinite, *class_label;
};

template <class C>
SamplingOptions add_sampling(CLI::App* app, C& c, const std::string& n_default) {
  SamplingOptions s;
  s.n = int_option(app, "--n", n_default, "number of images, seeds 0..N-1", c.n, 1, kMaxImages,
                   kImagesWhy);
  s.seeds = option(app, "--seeds", "A-B,C,...", "", "the seeds of the images (instead of --n)",
                   [&c](const std::string& v) {
                     c.n = count_seeds(v);
                     c.seeds = v;
                   });
  s.steps = option(
      app, "--steps", "{1,2}", "1",
      "sampling steps (2: the run's sample.two_step_taus); EDM runs use their Heun steps",
      [&c](const std::string& v) {
        CM_CHECK(v == "1" || v == "2", "--steps ", shown(v), ": must be 1 or 2 (or give --sigmas)");
        c.steps = v;
      });
  s.sigmas =
      option(app, "--sigmas", "S1,S2,...", "",
             "explicit intermediate time points of multistep sampling", [&c](const std::string& v) {
               CM_CHECK(!parse_numbers(v, "--sigmas").empty(), "--sigmas ", shown(v),
                        ": expected time points like 1.2,0.4");
               c.sigmas = v;
             });
  s.weights = option(app, "--weights", "ema|ema:RATE|online|target", "ema",
                     "which weights of the checkpoint",
                     [&c](const std::string& v) { c.weights = weights(v); });
  s.quantize = option(app, "--quantize", "{floor,round}", "floor",
                      "u8 quantisation: floor = consistency-models code, round = EDM",
                      [&c](const std::string& v) {
                        CM_CHECK(v == "floor" || v == "round", "--quantize ", shown(v),
                                 ": unknown quantization (expected floor or round)");
                        c.quantize = v;
                      });
  s.allow_nonfinite =
      app->add_flag("--allow-nonfinite", c.allow_nonfinite,
                    "go on with non-finite weights or samples (forensics; NaN quantises to 0)");
  s.class_label =
      option(app, "--class", "K|random", "random",
             "class of a class-conditional model's images (random: each seed's own, uniform)",
             [&c](const std::string& v) {
               c.class_given = true;
               if (v == "random") {
                 c.class_label = std::nullopt;
                 return;
               }
               bool overflow = false;
               const auto k = parse_u64(v, &overflow);
               CM_CHECK(k && !overflow && *k < (uint64_t(1) << 30), "--class ", shown(v),
                        ": expected a class index (0, 1, ...) or random");
               c.class_label = int64_t(*k);
             });
  return s;
}

void add_device(CLI::App* app, std::string& target) {
  option(app, "--device", "cpu|cuda|cuda:N", "cpu", "device to run on",
         [&target](const std::string& v) { target = device(v); });
}

// Every argument CLI11 left over (allow_extras): an unknown option or a surplus argument.
void check_extras(const CLI::App* app) {
  const std::vector<std::string> extra = app->remaining();
  if (extra.empty()) return;
  const std::string& x = extra.front();
  if (x.size() > 1 && x[0] == '-') {
    const std::string name = x.substr(0, x.find('='));
    CM_FAIL("unknown option ", shown(name));
  }
  CM_FAIL("unexpected argument ", shown(x));
}

void configure(CLI::App* app) {
  app->allow_extras();
  app->positionals_at_end(false);
}

// ---- per-command checks after parsing ----------------------------------------------------------

void check_train(const TrainCommand& c) {
  if (c.resume)
    CM_CHECK(!c.config, "--resume takes no CONFIG (the run's config.json is used), got ",
             shown(*c.config));
  else
    CM_CHECK(c.config, "needs exactly one CONFIG file (or --resume RUN_DIR)");
  for (const std::string& s : c.sets)
    CM_CHECK(s.find('=') != std::string::npos && s.find('=') > 0, "--set ", shown(s),
             ": expected key=value (a.b=value, a JSON path and a value)");
}

constexpr int64_t kMinFidImages = 2048;

void check_eval(EvalCommand& c, const CLI::App* app, const SamplingOptions& s) {
  auto given = [&](const char* name) { return app->count(name) > 0; };
  CM_CHECK(!(given("--n") && given("--seeds")), "give --n or --seeds, not both");
  if (c.metric.empty()) c.metric = c.classifier || !c.inception ? "domain" : "fid";
  if (c.ref_only) {
    CM_CHECK(!c.source, "--ref-only takes no RUN_DIR (it reads --data), got ", shown(*c.source));
    CM_CHECK(c.data,
             "--ref-only needs --data SPEC (digits:test, fashion-mnist:test, "
             "cifar10:DIR:train, folder:DIR, zip:PATH, ...)");
    CM_CHECK(c.out, "--ref-only needs --out STATS.npz");
    CM_CHECK(c.metric != "is", "--metric is: the Inception Score has no reference statistics");
    CM_CHECK(c.metric != "prec-recall",
             "--metric prec-recall: precision and recall compare with the reference images "
             "themselves (--ref BATCH.npz), there are no reference statistics to write");
    for (const char* k :
         {"--n", "--seeds", "--steps", "--sigmas", "--weights", "--quantize", "--ref"})
      CM_CHECK(!given(k), k, " is not for --ref-only (it reads every image of --data)");
  } else {
    const bool real = c.data.has_value();
    CM_CHECK(!(real && c.source), "give a RUN_DIR/CHECKPOINT or --data, not both");
    CM_CHECK(real || c.source,
             "needs exactly one RUN_DIR or CHECKPOINT (or --data SPEC, or --ref-only)");
    if (real) {
      for (CLI::Option* o :
           {s.seeds, s.steps, s.sigmas, s.weights, s.quantize, s.allow_nonfinite, s.class_label})
        CM_CHECK(o->count() == 0, o->get_name(), " is for a model's samples, not for --data");
      CM_CHECK(c.out, "--data needs --out FILE (there is no run directory)");
    }
  }
  if (!given("--n") && !given("--seeds")) c.n = c.metric == "domain" ? 10000 : 50000;
  if (!given("--seeds")) c.seeds = seeds_of(c.n);
  if (c.metric == "domain") {
    CM_CHECK(c.classifier,
             "--metric domain needs --classifier PATH (made by `cm classifier train`)");
    CM_CHECK(!c.inception,
             "--inception is for the Inception metrics (fid, is, sfid, prec-recall), "
             "not domain");
  } else {
    CM_CHECK(c.inception, "--metric ", c.metric,
             " needs --inception PATH (the FID Inception weights converted by "
             "tools/convert_fid_inception.py)");
    CM_CHECK(!c.classifier, "--classifier is for --metric domain, not ", c.metric);
  }
  if (c.ref_only) return;
  if (c.metric == "domain")
    CM_CHECK(c.n >= 2, "--metric domain needs at least 2 images for a covariance, got ", c.n);
  if (c.metric == "fid") {
    CM_CHECK(c.ref,
             "--metric fid needs --ref STATS.npz (reference statistics: EDM's or clean-fid's .npz, "
             "or `cm eval --ref-only --data SPEC --inception PATH --out STATS.npz`)");
    CM_CHECK(c.n >= kMinFidImages, "--metric fid needs at least ", kMinFidImages,
             " images (fewer make a rank-deficient 2048×2048 covariance), got ", c.n);
  }
  if (c.metric == "sfid") {
    CM_CHECK(c.ref,
             "--metric sfid needs --ref STATS.npz with the spatial statistics mu_s and sigma_s "
             "(openai's reference batches hold them, or `cm eval --ref-only --metric sfid --data "
             "SPEC --inception PATH --out STATS.npz`)");
    CM_CHECK(c.n >= kMinFidImages, "--metric sfid needs at least ", kMinFidImages,
             " images (fewer make a rank-deficient 2023×2023 covariance), got ", c.n);
  }
  if (c.metric == "prec-recall") {
    CM_CHECK(c.ref,
             "--metric prec-recall needs --ref BATCH.npz, the reference images as arr_0 (u8 "
             "[N, H, W, C]: openai's reference batches, or a samples.npz)");
    CM_CHECK(c.n > 3, "--metric prec-recall needs more than 3 images (k = 3 neighbours), got ",
             c.n);
  }
  if (c.metric == "is") {
    CM_CHECK(!c.ref, "--ref: the Inception Score uses no reference statistics");
    CM_CHECK(c.n >= 10, "--metric is needs at least 10 images (10 splits), got ", c.n);
  }
}

void check_info(const InfoCommand& c) {
  const int given = int(c.config.has_value()) + int(c.preset.has_value()) + int(c.presets);
  CM_CHECK(given == 1, "needs exactly one of CONFIG, --preset NAME or --presets");
}

const char* kUsage =
    "usage:\n"
    "  cm train CONFIG [--set key=value ...] [--out DIR]\n"
    "  cm train --resume RUN_DIR [--set train.steps=N ...]\n"
    "  cm sample RUN_DIR|CHECKPOINT [--n N | --seeds A-B,...] [--steps 1|2 | --sigmas s1,...]\n"
    "            [--weights ema|ema:RATE|online|target] [--quantize floor|round] [--device D]\n"
    "            [--batch B] [--out DIR] [--allow-nonfinite]\n"
    "  cm eval RUN_DIR|CHECKPOINT [--metric domain|fid|is] [--n N | --seeds A-B] [--steps 1|2]\n"
    "          [--classifier PATH] [--inception PATH] [--ref STATS.npz] [--device D] [--batch B]\n"
    "  cm eval --data SPEC --out FILE [--n N] [--metric ...]    the metric of real images\n"
    "  cm eval --ref-only --data SPEC --out STATS.npz [--metric fid|domain] [--inception PATH]\n"
    "  cm classifier train --data digits|fashion-mnist [--steps N] [--out PATH]\n"
    "  cm edit RUN_DIR|CHECKPOINT --task inpaint|colorize|superres|stroke|denoise|interpolate\n"
    "          [--data SPEC --n N | --images A.png,...] [--mask builtin:NAME|PNG]\n"
    "          [--patch P] [--sigma S] [--sigmas s1,...] [--seeds ...] [--teacher-steps K]\n"
    "          [--out DIR]\n"
    "  cm info CONFIG | --preset NAME | --presets\n"
    "  cm bench [--network NAME] [--device D] [--batch B] [--precision f32|tf32|bf16|f16]\n"
    "           [--memory-format auto|contiguous|channels_last] [--recompute auto|on|off]\n"
    "           [--attention auto|fused|composite] [--flat on|off]\n"
    "           [--case forward|ct|sample|allreduce] [--repeats R] [--bucket-mb MB]\n"
    "  cm report RUN_DIR [RUN_DIR ...] [--out FILE] [--watch SECONDS]\n"
    "  cm --version\n"
    "run 'cm <command> --help' for the options and examples of a command; configs are documented "
    "in "
    "README.md and configs/.\n"
    "exit codes: 0 done, 1 the command failed (bad input: a config, data, checkpoint or file; or "
    "the\n"
    "environment: disk, memory), 2 a usage error (the command line), 3 an internal error (a bug:\n"
    "please report it); killed by a signal: 128 + its number.";

// The parser of one command line and the command it fills.
struct Parser {
  CLI::App app{"cm: consistency models from scratch", "cm"};
  CLI::App *train, *sample, *eval, *classifier, *classifier_train, *info, *bench, *edit, *report;
  EditCommand edit_c;
  ReportCommand report_c;
  TrainCommand train_c;
  SampleCommand sample_c;
  EvalCommand eval_c;
  ClassifierCommand classifier_c;
  InfoCommand info_c;
  BenchCommand bench_c;
  SamplingOptions sample_s, eval_s;

  Parser() {
    configure(&app);
    app.require_subcommand(0, 1);

    // cm train
    train =
        app.add_subcommand("train", "train a model (CT, CD or an EDM teacher), or resume a run");
    configure(train);
    train
        ->add_option_function<std::string>(
            "CONFIG", [this](const std::string& v) { train_c.config = v; },
            "configuration file (configs/*.json)")
        ->type_name("FILE");
    option(train, "--resume", "RUN_DIR", "", "continue the run in RUN_DIR where it stopped",
           [this](const std::string& v) { train_c.resume = v; });
    train
        ->add_option_function<std::vector<std::string>>(
            "--set",
            [this](const std::vector<std::string>& v) {
              train_c.sets.insert(train_c.sets.end(), v.begin(), v.end());
            },
            "override a field of the configuration (repeatable; a resumed run: train.steps and "
            "the intervals)")
        ->type_name("KEY=VALUE")
        ->allow_extra_args(false)
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
    string_option(train, "--out", "DIR", "runs", "where the run directory is made", train_c.out);

    // cm sample
    sample = app.add_subcommand("sample", "images (PNGs, grid.png, samples.npz) from a model");
    configure(sample);
    sample->add_option("SOURCE", sample_c.source, "a run directory or a checkpoint")
        ->type_name("RUN_DIR|CHECKPOINT");
    sample_s = add_sampling(sample, sample_c, "64");
    add_device(sample, sample_c.device);
    int_option(sample, "--batch", "256", "images drawn at a time", sample_c.batch, 1, kMaxBatch);
    optional_string(sample, "--out", "DIR",
                    "output directory (default: RUN_DIR/samples, or samples/ beside a CHECKPOINT)",
                    sample_c.out);

    // cm eval
    eval = app.add_subcommand("eval", "FID, Inception Score or the domain metric of a model");
    configure(eval);
    eval->add_option_function<std::string>(
            "SOURCE", [this](const std::string& v) { eval_c.source = v; },
            "a run directory or a checkpoint (none with --data or --ref-only)")
        ->type_name("RUN_DIR|CHECKPOINT");
    option(eval, "--metric", "{domain,fid,is,sfid,prec-recall}", "domain (fid with --inception)",
           "the metric", [this](const std::string& v) {
             eval_c.metric = choice("--metric", v, {"domain", "fid", "is", "sfid", "prec-recall"});
           });
    eval_s = add_sampling(eval, eval_c, "10000 (domain), 50000 (fid, is)");
    optional_string(eval, "--classifier", "PATH",
                    "the domain metric's classifier (cm classifier train)", eval_c.classifier);
    optional_string(eval, "--inception", "PATH",
                    "FID Inception weights (tools/convert_fid_inception.py)", eval_c.inception);
    optional_string(eval, "--ref", "STATS.npz",
                    "reference statistics (mu, sigma; sfid: mu_s, sigma_s) or, for prec-recall, a "
                    "reference batch of images (arr_0)",
                    eval_c.ref);
    optional_string(eval, "--data", "SPEC",
                    "score the first N real images of SPEC instead of a model's (the floor)",
                    eval_c.data);
    eval->add_flag("--ref-only", eval_c.ref_only,
                   "compute the reference statistics of --data into --out STATS.npz");
    add_device(eval, eval_c.device);
    int_option(eval, "--batch", "64", "images per batch", eval_c.batch, 1, kMaxBatch);
    optional_string(eval, "--out", "FILE",
                    "the record (default: RUN_DIR/eval-<step>-<metric>-<nfe>step.json)",
                    eval_c.out);

    // cm classifier train
    classifier = app.add_subcommand("classifier", "the domain metric's classifier");
    configure(classifier);
    classifier->require_subcommand(0, 1);
    classifier_train = classifier->add_subcommand(
        "train", "train the classifier on the train split and record its test accuracy");
    configure(classifier_train);
    option(classifier_train, "--data", "{digits,fashion-mnist}", "", "the data set",
           [this](const std::string& v) {
             CM_CHECK(v == "digits" || v == "fashion-mnist", "--data ", shown(v),
                      ": unknown data set ", in_quotes(v), " (expected digits or fashion-mnist)");
             classifier_c.data = v;
           });
    int_option(classifier_train, "--steps", "2000 (digits), 3000 (fashion-mnist)", "training steps",
               classifier_c.steps, 1, 100'000'000);
    int_option(classifier_train, "--batch", "64", "batch size", classifier_c.batch, 1, kMaxBatch);
    option(classifier_train, "--lr", "FLOAT>0", "0.001", "Adam's learning rate",
           [this](const std::string& v) {
             const auto x = parse_double(v);
             CM_CHECK(x && *x > 0, "--lr ", shown(v),
                      ": --lr must be positive (a number such as 1e-3)");
             classifier_c.lr = *x;
           });
    option(classifier_train, "--seed", "INT>=0", "0", "initial weights and batch order",
           [this](const std::string& v) {
             bool overflow = false;
             const auto x = parse_u64(v, &overflow);
             CM_CHECK(x, "--seed ", shown(v), ": expected a non-negative integer",
                      overflow ? " of at most 18446744073709551615" : " (decimal digits)");
             classifier_c.seed = *x;
           });
    add_device(classifier_train, classifier_c.device);
    optional_string(classifier_train, "--out", "PATH",
                    "the checkpoint (default: classifier-<data>.safetensors)", classifier_c.out);

    // cm edit
    edit = app.add_subcommand("edit", "zero-shot editing with a consistency model (Algorithm 4)");
    configure(edit);
    edit->add_option("SOURCE", edit_c.source, "a run directory or a checkpoint of a CT or CD run")
        ->type_name("RUN_DIR|CHECKPOINT");
    option(edit, "--task", "{inpaint,colorize,superres,stroke,denoise,interpolate}", "",
           "what to do", [this](const std::string& v) {
             edit_c.task =
                 choice("--task", v,
                        {"inpaint", "colorize", "superres", "stroke", "denoise", "interpolate"});
           });
    optional_string(edit, "--data", "SPEC", "the first --n images of a data set to edit",
                    edit_c.data);
    option(edit, "--images", "A.png,B.png,...", "", "PNG files to edit (or stroke paintings)",
           [this](const std::string& v) {
             edit_c.images.clear();
             size_t start = 0;
             while (start <= v.size()) {
               const size_t comma = v.find(',', start);
               const std::string part =
                   v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
               CM_CHECK(!part.empty(), "--images ", shown(v), ": an empty file name");
               edit_c.images.push_back(part);
               if (comma == std::string::npos) break;
               start = comma + 1;
             }
           });
    int_option(edit, "--n", "8", "images of --data; points of an interpolation", edit_c.n, 1,
               100'000);
    string_option(edit, "--mask", "builtin:center|left|top|letter[:X]|boxes[:K]|PNG",
                  "builtin:center",
                  "inpaint: the region to generate (letter: a capital, S by default; boxes: K "
                  "random boxes per image from its seed, 3 by default; a PNG: its white pixels)",
                  edit_c.mask);
    int_option(edit, "--teacher-steps", "18",
               "an EDM teacher run: Heun steps of the ODE solve from each time point (f of the "
               "algorithm; 1: the denoiser alone)",
               edit_c.teacher_steps, 1, 1000);
    int_option(edit, "--patch", "2", "superres: the factor (a divisor of the image size)",
               edit_c.patch, 2, 4096);
    option(edit, "--sigma", "S", "", "stroke: the starting sigma (20); denoise: the noise (0.5)",
           [this](const std::string& v) {
             const auto d = parse_double(v);
             CM_CHECK(d && *d > 0, "--sigma ", shown(v), ": expected a positive number");
             edit_c.sigma = *d;
           });
    option(edit, "--sigmas", "S1,S2,...", "", "the time points (default: the model's grid)",
           [this](const std::string& v) {
             CM_CHECK(!parse_numbers(v, "--sigmas").empty(), "--sigmas ", shown(v),
                      ": expected time points like 80,2,0.3");
             edit_c.sigmas = v;
           });
    option(edit, "--seeds", "A-B,C,...", "", "the noise seeds (default 0..N-1; interpolate: 0,1)",
           [this](const std::string& v) {
             (void)count_seeds(v);
             edit_c.seeds = v;
           });
    option(edit, "--weights", "ema|ema:RATE|online|target", "ema",
           "which weights of the checkpoint",
           [this](const std::string& v) { edit_c.weights = weights(v); });
    option(edit, "--class", "K|data|random", "data (a labelled --data), else random",
           "class-conditional models: one class, the images' labels, or each seed's own",
           [this](const std::string& v) {
             if (v != "data" && v != "random") {
               bool overflow = false;
               const auto k = parse_u64(v, &overflow);
               CM_CHECK(k && !overflow && *k < (uint64_t(1) << 30), "--class ", shown(v),
                        ": expected a class index (0, 1, ...), data or random");
             }
             edit_c.class_choice = v;
           });
    add_device(edit, edit_c.device);
    optional_string(edit, "--out", "DIR", "output directory (default: <run>/edits-<task>)",
                    edit_c.out);
    edit->add_flag("--allow-nonfinite", edit_c.allow_nonfinite,
                   "go on with non-finite weights or results (forensics)");

    // cm info
    info = app.add_subcommand("info", "a network's modules and parameter counts");
    configure(info);
    info->add_option_function<std::string>(
            "CONFIG", [this](const std::string& v) { info_c.config = v; }, "configuration file")
        ->type_name("FILE");
    option(info, "--preset", "NAME", "", "a network preset (see --presets)",
           [this](const std::string& v) {
             checked("--preset", v, [&] { network_from_preset(v); });
             info_c.preset = v;
           });
    info->add_flag("--presets", info_c.presets, "list the network presets");

    // cm bench
    bench = app.add_subcommand("bench", "speed of the forward pass, a CT step and sampling");
    configure(bench);
    option(bench, "--network", "NAME", bench_c.network, "a network preset (cm info --presets)",
           [this](const std::string& v) {
             checked("--network", v, [&] { network_from_preset(v); });
             bench_c.network = v;
           });
    add_device(bench, bench_c.device);
    int_option(bench, "--batch", "64 (CPU), 128 (GPU)", "batch size", bench_c.batch, 1, kMaxBatch);
    option(bench, "--precision", "{f32,tf32,bf16,f16}", "f32",
           "compute precision (tf32, bf16, f16 on a GPU)", [this](const std::string& v) {
             bench_c.precision = choice("--precision", v, {"f32", "tf32", "bf16", "f16"});
           });
    option(bench, "--memory-format", "{auto,contiguous,channels_last}", "auto",
           "the activations' memory format (network.memory_format)", [this](const std::string& v) {
             bench_c.memory_format =
                 choice("--memory-format", v, {"auto", "contiguous", "channels_last"});
           });
    option(bench, "--recompute", "{auto,on,off}", "auto",
           "activation recomputation in the backward (network.recompute)",
           [this](const std::string& v) {
             bench_c.recompute = choice("--recompute", v, {"auto", "on", "off"});
           });
    option(bench, "--attention", "{auto,fused,composite}", "auto",
           "the attention layers' kernel (network.attention)", [this](const std::string& v) {
             bench_c.attention = choice("--attention", v, {"auto", "fused", "composite"});
           });
    option(bench, "--flat", "{on,off}", "on",
           "parameters, gradients and optimizer state in flat buffers (off: tensor by tensor)",
           [this](const std::string& v) {
             bench_c.flat = choice("--flat", v, {"on", "off"}) == "on";
           });
    bench
        ->add_option_function<std::vector<std::string>>(
            "--case",
            [this](const std::vector<std::string>& v) {
              bench_c.cases.clear();
              for (const std::string& c : v) {
                choice("--case", c, {"forward", "ct", "sample", "allreduce"});
                if (std::find(bench_c.cases.begin(), bench_c.cases.end(), c) == bench_c.cases.end())
                  bench_c.cases.push_back(c);
              }
            },
            "the case to time (repeatable)")
        ->type_name("{forward,ct,sample,allreduce}")
        ->default_str("forward, ct and sample")
        ->allow_extra_args(false)
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
    int_option(bench, "--repeats", "5 (CPU), 20 (GPU)", "timed repeats after 2 warm-up runs",
               bench_c.repeats, 1, 1'000'000);
    option(bench, "--bucket-mb", "MB", "25",
           "under mpirun: the ct case is a data-parallel step, its gradients averaged over the "
           "ranks in buckets of MB MiB sent during backward (0: one all-reduce after backward)",
           [this](const std::string& v) {
             const auto d = parse_double(v);
             CM_CHECK(d && *d >= 0 && *d <= 1e6, "--bucket-mb ", shown(v),
                      ": expected a number of MiB from 0 to 1e6");
             bench_c.bucket_mb = *d;
           });
    add_report();
    add_footers();
  }

  void add_report() {
    report = app.add_subcommand(
        "report", "a run's training dynamics as one self-contained HTML page (plots, samples)");
    configure(report);
    report
        ->add_option_function<std::vector<std::string>>(
            "RUN_DIR",
            [this](const std::vector<std::string>& v) {
              report_c.runs.insert(report_c.runs.end(), v.begin(), v.end());
            },
            "run directories (several are overlaid on the same axes)")
        ->type_name("RUN_DIR ...");
    optional_string(report, "--out", "FILE", "the page to write (default: RUN_DIR/report.html)",
                    report_c.out);
    int_option(report, "--watch", "0",
               "rewrite the page every SECONDS until the runs end (the page reloads itself)",
               report_c.watch, 0, 86400);
  }

  // What each command writes and examples of it, below its options in --help.
  void add_footers() {
    train->footer(
        "Examples:\n"
        "  cm train configs/default.json                  CT on the shipped digits (minutes)\n"
        "  cm train configs/fashion-ict.json --set train.steps=2000 --set seed=1\n"
        "  cm train --resume runs/00000-ct-ddpmpp-digits-8-digits --set train.steps=3000\n"
        "  mpirun -np 4 cm train configs/cifar10-ct.json  data-parallel (docs/scaling.md)\n"
        "Writes runs/NNNNN-MODE-NETWORK-NAME/: config.json, log.txt, metrics.jsonl, checkpoints/,\n"
        "samples/ (docs/run-directory.md).");
    sample->footer(
        "Examples:\n"
        "  cm sample runs/00000-ct-ddpmpp-digits-8-digits --n 64\n"
        "  cm sample RUN --seeds 0-9999 --steps 2 --out /tmp/samples --batch 512\n"
        "  cm sample RUN/checkpoints/checkpoint-00001500.safetensors --weights online\n"
        "Writes one PNG per seed, grid.png, samples.npz (uint8 NHWC arr_0) and recipe.json.\n"
        "Image k depends only on its seed, not on the batch it was drawn in.");
    eval->footer(
        "Examples:\n"
        "  cm eval runs/00000-ct-ddpmpp-digits-8-digits --n 2000        the domain metric\n"
        "  cm eval RUN --metric fid --inception inception.safetensors --ref cifar10-ref.npz\n"
        "  cm eval --ref-only --data cifar10:/data/cifar10 --metric fid --inception "
        "inception.safetensors\n"
        "          --out cifar10-ref.npz\n"
        "Writes RUN/eval-STEP-METRIC-NFEstep.json (value, recipe, provenance), read by cm report.");
    classifier_train->footer(
        "Examples:\n"
        "  cm classifier train --data digits\n"
        "  cm classifier train --data fashion-mnist --out classifier-fashion-mnist.safetensors");
    edit->footer(
        "Examples:\n"
        "  cm edit RUN --task inpaint --data fashion-mnist:test --n 16 --mask builtin:center\n"
        "  cm edit RUN --task superres --patch 4 --data digits --n 8\n"
        "  cm edit RUN --task colorize --data tint:fashion-mnist:test --n 16\n"
        "  cm edit RUN --task stroke --images painting.png --sigma 20\n"
        "  cm edit RUN --task interpolate --seeds 3,7 --n 9\n"
        "Writes result-NNNN.png per image, grid.png (rows: reference, degraded, result), "
        "edits.npz\n"
        "(uint8 NHWC reference, degraded, result, mask: 1 = generated) and recipe.json.");
    info->footer(
        "Examples:\n"
        "  cm info --presets\n"
        "  cm info --preset ddpmpp-cifar10\n"
        "  cm info configs/fashion-ict.json               the resolved configuration's network");
    bench->footer(
        "Examples:\n"
        "  cm bench --network ddpmpp-small-28 --batch 64 --case ct\n"
        "  cm bench --device cuda --precision bf16 --batch 512 --case ct --case sample\n"
        "  mpirun -np 2 cm bench --case ct --bucket-mb 25\n"
        "Prints one JSON line per case: ms per step, images/s, peak memory, the kernels used.");
    report->footer(
        "Examples:\n"
        "  cm report runs/00000-ct-ddpmpp-digits-8-digits\n"
        "  cm report runs/00001-* runs/00002-* --out compare.html   overlaid, one colour per run\n"
        "  cm report runs/00003-ct-* --watch 60                     beside a live cm train\n"
        "Reads config.json, metrics.jsonl, samples/grid-*.png and eval-*.json; writes one HTML\n"
        "file with inline SVG plots and PNGs (no network, no external files).");
  }

  // The command selected, checked.
  Command finish() {
    check_extras(&app);
    if (train->parsed()) {
      check_extras(train);
      check_train(train_c);
      return train_c;
    }
    if (sample->parsed()) {
      check_extras(sample);
      CM_CHECK(!sample_c.source.empty(), "needs a RUN_DIR or a CHECKPOINT");
      CM_CHECK(!(sample->count("--n") && sample->count("--seeds")),
               "give --n or --seeds, not both");
      if (sample->count("--seeds") == 0) sample_c.seeds = seeds_of(sample_c.n);
      return sample_c;
    }
    if (eval->parsed()) {
      check_extras(eval);
      check_eval(eval_c, eval, eval_s);
      return eval_c;
    }
    if (classifier->parsed()) {
      const std::vector<std::string> extra = classifier->remaining();
      CM_CHECK(classifier_train->parsed() && extra.empty(), "expected the subcommand train",
               extra.empty() ? "" : ", got " + shown(extra.front()));
      check_extras(classifier_train);
      CM_CHECK(!classifier_c.data.empty(), "needs --data digits|fashion-mnist");
      if (classifier_c.steps == 0) classifier_c.steps = classifier_c.data == "digits" ? 2000 : 3000;
      return classifier_c;
    }
    if (edit->parsed()) {
      check_extras(edit);
      CM_CHECK(!edit_c.source.empty(), "needs a RUN_DIR or a CHECKPOINT");
      CM_CHECK(!edit_c.task.empty(),
               "needs --task inpaint|colorize|superres|stroke|denoise|interpolate");
      return edit_c;
    }
    if (report->parsed()) {
      check_extras(report);
      CM_CHECK(!report_c.runs.empty(), "needs at least one RUN_DIR");
      return report_c;
    }
    if (info->parsed()) {
      check_extras(info);
      check_info(info_c);
      return info_c;
    }
    if (bench->parsed()) {
      check_extras(bench);
      CM_CHECK(bench_c.precision == "f32" || Device::parse(bench_c.device).is_cuda(),
               "--precision ", bench_c.precision, " needs a GPU (--device cuda)");
      return bench_c;
    }
    CM_FAIL("expected a command\n", kUsage);
  }

  // The name of the command being parsed ("" before one is found), for messages.
  std::string command() const {
    if (classifier->parsed()) return classifier_train->parsed() ? "classifier train" : "classifier";
    for (const CLI::App* a : {train, sample, eval, info, bench, edit, report})
      if (a->parsed()) return a->get_name();
    return "";
  }
};

// CLI11's message for a value that is missing ("--n: 1 required INT>0 missing") in cm's words.
std::string usage_message(const CLI::ParseError& e) {
  std::string msg = e.what();
  const size_t colon = msg.find(": ");
  if (dynamic_cast<const CLI::ArgumentMismatch*>(&e) && colon != std::string::npos &&
      msg.find(" required ", colon) != std::string::npos &&
      msg.compare(msg.size() - 8, 8, " missing") == 0)
    return "option " + msg.substr(0, colon) + " needs a value";
  return msg;
}

}  // namespace

// ---- seeds and number lists --------------------------------------------------------------------

namespace {
// The ranges of a seed list, checked, with at most kMaxImages seeds in all.
std::vector<std::pair<uint64_t, uint64_t>> seed_ranges(const std::string& s) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  std::stringstream ss(s);
  std::string part;
  uint64_t total = 0;
  while (std::getline(ss, part, ',')) {
    const size_t dash = part.find('-');
    const auto a = parse_u64(part.substr(0, dash));
    const auto b = dash == std::string::npos ? a : parse_u64(part.substr(dash + 1));
    CM_CHECK(a && b, "--seeds ", shown(s), ": expected numbers and ranges like 0-63,100");
    CM_CHECK(*a <= *b, "--seeds ", shown(s), ": range ", part, " is empty");
    CM_CHECK(*b - *a < uint64_t(kMaxImages) && total + (*b - *a) < uint64_t(kMaxImages), "--seeds ",
             shown(s), ": more than ", kMaxImages, kImagesWhy);
    total += *b - *a + 1;
    out.emplace_back(*a, *b);
  }
  CM_CHECK(!out.empty(), "--seeds ", shown(s), ": no seeds");
  return out;
}
}  // namespace

std::vector<uint64_t> parse_seeds(const std::string& s) {
  std::vector<uint64_t> out;
  out.reserve(size_t(count_seeds(s)));
  for (const auto& [a, b] : seed_ranges(s))
    for (uint64_t x = a;; ++x) {
      out.push_back(x);
      if (x == b) break;
    }
  return out;
}

int64_t count_seeds(const std::string& s) {
  int64_t n = 0;
  for (const auto& [a, b] : seed_ranges(s)) n += int64_t(b - a) + 1;
  return n;
}

std::vector<double> parse_numbers(const std::string& s, const char* what) {
  std::vector<double> out;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, ',')) {
    const auto x = parse_double(part);
    CM_CHECK(x, what, " ", shown(s), ": ", in_quotes(part), " is not a number");
    out.push_back(*x);
  }
  return out;
}

// ---- the parser --------------------------------------------------------------------------------

std::string usage() {
  return kUsage;
}

std::string version_text() {
  std::string s = std::string("cm ") + CM_GIT_REVISION + " (" +
                  (std::string(CM_BUILD_TYPE).empty() ? "no build type" : CM_BUILD_TYPE) +
                  " build)\n";
#ifdef CM_WITH_CUDA
  s += std::string("  CUDA: on (built for sm_") + CM_CUDA_ARCHS + "; " +
       std::to_string(cuda::device_count()) + " device(s) visible)\n";
#else
  s += "  CUDA: off\n";
#endif
  s += std::string("  MPI: ") + (dist::has_mpi() ? "on" : "off") +
       ", NCCL: " + (CM_NCCL_BUILT ? "on" : "off") + "\n";
  s += "  CPU: convolutions " + cpu::onednn::conv_backend_name() + ", BLAS openblas " +
       cpu::blas::core_name() + "\n";
  return s;
}

Command parse_command_line(int argc, const char* const* argv) {
  if (argc < 2) throw UsageError("", std::string("expected a command\n") + kUsage);
  if (argc == 2 && std::string(argv[1]) == "--version") return Help{version_text()};
  Parser p;
  try {
    p.app.parse(argc, argv);
    return p.finish();
  } catch (const CLI::CallForHelp&) {
    if (p.command().empty()) return Help{kUsage};
    return Help{p.app.help()};
  } catch (const CLI::CallForAllHelp&) {
    return Help{p.app.help("", CLI::AppFormatMode::All)};
  } catch (const CLI::ParseError& e) {
    const std::string cmd = p.command();
    throw UsageError(cmd, usage_message(e) + "\n(cm " + (cmd.empty() ? "" : cmd + " ") +
                              "--help lists the options)");
  } catch (const Error& e) {
    const std::string cmd = p.command();
    const std::string msg = without_location(e.what());
    if (cmd.empty() && msg.rfind("unexpected argument ", 0) == 0)
      throw UsageError("", "unknown command " + msg.substr(20) + "\n" + kUsage);
    throw UsageError(
        cmd, msg + (msg.find("\nusage:") == std::string::npos
                        ? "\n(cm " + (cmd.empty() ? "" : cmd + " ") + "--help lists the options)"
                        : ""));
  }
}

}  // namespace cm::runner
