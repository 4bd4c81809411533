// The command line of `cm`, parsed in one place with CLI11 and nothing run: argv becomes one plain
// struct per command (train, sample, eval, classifier train, info, bench) or a help text. Numbers
// are parsed whole (decimal digits only; no prefixes such as "2x" = 2 or "1e3" = 1) and checked
// against their ranges, choices are checked against their lists, and every error names the option
// and the offending value. The fuzz target tests/fuzz/fuzz_cli.cpp calls parse_command_line.
//
//   cm train CONFIG [--set key=value ...] [--out DIR]       runner/train_command.h
//   cm train --resume RUN_DIR [--set train.steps=N ...]
//   cm sample RUN_DIR|CHECKPOINT [options]                  runner/main.cpp
//   cm eval RUN_DIR|CHECKPOINT | --data SPEC | --ref-only   runner/evaluate.h
//   cm classifier train --data digits|fashion-mnist         runner/evaluate.h
//   cm info CONFIG | --preset NAME | --presets              runner/main.cpp
//   cm bench [options]                                      runner/bench.h
//   cm report RUN_DIR [RUN_DIR ...] [--out FILE] [--watch S] runner/report.h
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "runner/edit_command.h"
#include "runner/report.h"
#include "runner/train_command.h"
#include "tensor/error.h"

namespace cm::runner {

// The most images `cm sample` and `cm eval` draw in one call: generate_images holds every image
// in memory (and `cm sample` writes each as a PNG); larger jobs are split over --seeds ranges.
inline constexpr int64_t kMaxImages = 10'000'000;
// The largest batch of sampling, evaluation, training a classifier and benchmarks.
inline constexpr int64_t kMaxBatch = 65'536;

// "0-63,100" -> 0, 1, ..., 63, 100 (at most kMaxImages seeds); errors name --seeds and the text.
std::vector<uint64_t> parse_seeds(const std::string& s);
// The number of seeds of such a list, checked as parse_seeds does, without making the list.
int64_t count_seeds(const std::string& s);
// "1.2,0.4" -> {1.2, 0.4}; errors name `what` (the option) and the bad entry.
std::vector<double> parse_numbers(const std::string& s, const char* what);

// `cm sample`: images from a model.
struct SampleCommand {
  std::string source;           // RUN_DIR or CHECKPOINT
  std::string seeds = "0-63";   // --seeds as given, or "0-<N−1>" from --n N
  int64_t n = 64;               // the number of seeds
  std::string steps = "1";      // "1" or "2"
  std::string sigmas;           // explicit time points, checked syntactically (empty: none)
  std::string weights = "ema";  // ema, ema:RATE, online, target
  std::string device = "cpu";
  std::optional<std::string> out;  // default RUN_DIR/samples (beside the checkpoint)
  std::string quantize = "floor";
  int64_t batch = 256;
  bool allow_nonfinite = false;
  // --class: every image of a class-conditional network in this class; nullopt ("random"): each
  // seed's own class, uniform (runner/evaluate.h image_classes)
  std::optional<int64_t> class_label;
  bool class_given = false;
};

// `cm eval`: a metric of a model's samples, of real images (--data), or reference statistics
// (--ref-only).
struct EvalCommand {
  std::optional<std::string> source;  // RUN_DIR or CHECKPOINT (absent with --data)
  std::string metric;                 // domain, fid, is (--ref-only: fid or domain)
  std::string seeds;                  // --seeds as given, or "0-<N−1>" from --n N
  int64_t n = 0;                      // images to draw (with --data: the first n real images)
  std::string steps = "1";
  bool steps_given = false;
  std::string sigmas;
  std::string weights = "ema";
  bool weights_given = false;
  std::string quantize = "floor";
  bool quantize_given = false;
  std::optional<std::string> classifier, inception, ref, data, out;
  std::string device = "cpu";
  int64_t batch = 64;
  bool ref_only = false;
  bool allow_nonfinite = false;
  std::optional<int64_t> class_label;  // as SampleCommand's
  bool class_given = false;
};

// `cm classifier train`: the domain metric's classifier.
struct ClassifierCommand {
  std::string data;   // digits or fashion-mnist
  int64_t steps = 0;  // 0: 2000 for digits, 3000 for fashion-mnist
  int64_t batch = 64;
  double lr = 1e-3;
  uint64_t seed = 0;
  std::string device = "cpu";
  std::optional<std::string> out;  // default classifier-<data>.safetensors
};

// `cm info`: a network's modules and parameter counts.
struct InfoCommand {
  std::optional<std::string> config;  // a configuration file, or
  std::optional<std::string> preset;  // a preset, or
  bool presets = false;               // the list of presets
};

// `cm bench`: speed of the forward pass, a CT step and one-step sampling.
struct BenchCommand {
  std::string network = "ddpmpp-small-28";
  std::string device = "cpu";
  int64_t batch = 0;                   // 0: 64 on the CPU, 128 on a GPU
  std::string precision = "f32";       // f32, tf32 (f32 with TF32 matmul/conv), bf16, f16
  std::string memory_format = "auto";  // network.memory_format: auto, contiguous, channels_last
  std::string recompute = "auto";      // network.recompute: auto, on, off
  std::string attention = "auto";      // network.attention: auto, fused, composite
  bool flat = true;                    // parameters, gradients and optimizer state in flat buffers
  std::vector<std::string> cases = {"forward", "ct", "sample"};
  int64_t repeats = 0;    // 0: 5 on the CPU, 20 on a GPU
  double bucket_mb = 25;  // ct under mpirun: the gradient reducer's bucket size (0: one call)
};

// `--help` of `cm` or of a command: the text to print, exit code 0.
struct Help {
  std::string text;
};

using Command = std::variant<Help, TrainCommand, SampleCommand, EvalCommand, ClassifierCommand,
                             InfoCommand, BenchCommand, EditCommand, ReportCommand>;

// A command line that does not parse or fails a check that needs no file: exit code 2.
class UsageError : public Error {
 public:
  UsageError(const std::string& command, const std::string& message)
      : Error(message), command_(command) {}
  const std::string& command() const { return command_; }  // "sample", "classifier train", ""

 private:
  std::string command_;
};

// Parses argv (argv[0] is the program) into a command without running or opening anything.
// Throws UsageError (a cm::Error) for every problem; never prints.
Command parse_command_line(int argc, const char* const* argv);

// The usage of every command, as `cm --help` prints it.
std::string usage();
// `cm --version`: the git revision, the build type, and whether CUDA, MPI and NCCL are built in
// (with the devices visible) and which CPU kernels run.
std::string version_text();

}  // namespace cm::runner
