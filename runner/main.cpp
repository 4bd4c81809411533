// The `cm` command.
//   cm train CONFIG [--set key=value ...] [--out DIR]   train (CT, CD or an EDM teacher)
//   cm train --resume RUN_DIR [--set train.steps=N]      continue a run exactly where it stopped
//   cm sample RUN_DIR|CHECKPOINT [options]               images (PNG, grid, .npz) from a model
//   cm eval RUN_DIR|CHECKPOINT [options]                 FID, IS or the domain metric of a model
//   cm classifier train --data digits|fashion-mnist      the domain metric's classifier
//   cm info CONFIG|--preset NAME                         network summary with parameter counts
//   cm bench [options]                                   speed of forward / CT step / sampling
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "consistency/sampling.h"
#include "datasets/png.h"
#include "runner/bench.h"
#include "runner/evaluate.h"
#include "runner/images.h"
#include "runner/train_command.h"
#include "runner/trainer.h"

namespace fs = std::filesystem;
using namespace cm;
using namespace cm::runner;

namespace {

const char* kUsage =
    "usage:\n"
    "  cm train CONFIG [--set key=value ...] [--out DIR]\n"
    "  cm train --resume RUN_DIR [--set train.steps=N ...]\n"
    "  cm sample RUN_DIR|CHECKPOINT [--n N] [--seeds A-B] [--steps 1|2] [--sigmas s1,s2,...]\n"
    "            [--weights ema|ema:RATE|online|target] [--device D] [--out DIR] [--quantize "
    "floor|round]\n"
    "  cm eval RUN_DIR|CHECKPOINT [--metric domain|fid|is] [--n N | --seeds A-B] [--steps 1|2]\n"
    "          [--classifier PATH] [--inception PATH] [--ref STATS.npz] [--device D] [--batch B]\n"
    "  cm eval --ref-only --data SPEC --out STATS.npz [--metric fid|domain] [--inception PATH]\n"
    "  cm classifier train --data digits|fashion-mnist [--steps N] [--out PATH]\n"
    "  cm info CONFIG | --preset NAME | --presets\n"
    "  cm bench [--network NAME] [--device D] [--batch B] [--precision f32|tf32|bf16] [--case "
    "forward|ct|sample]\n"
    "           [--repeats R]\n"
    "run 'cm <command> --help' for details; configs are documented in README.md and configs/.";

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::vector<std::string>> options;
  bool has(const std::string& k) const { return options.count(k) > 0; }
  std::string get(const std::string& k, const std::string& def = "") const {
    auto it = options.find(k);
    return it == options.end() ? def : it->second.back();
  }
};

// Parses "--key value" and "--flag" options; flags are the names in `flags`.
Args parse_args(int argc, char** argv, int first, const std::vector<std::string>& valued,
                const std::vector<std::string>& flags) {
  Args a;
  for (int i = first; i < argc; ++i) {
    const std::string s = argv[i];
    if (s.rfind("--", 0) == 0) {
      const std::string k = s.substr(2);
      if (std::find(flags.begin(), flags.end(), k) != flags.end()) {
        a.options[k].push_back("1");
      } else if (std::find(valued.begin(), valued.end(), k) != valued.end()) {
        CM_CHECK(i + 1 < argc, "option --", k, " needs a value");
        a.options[k].push_back(argv[++i]);
      } else {
        CM_FAIL("unknown option ", s, "\n", kUsage);
      }
    } else {
      a.positional.push_back(s);
    }
  }
  return a;
}

int cmd_train(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"set", "out", "resume"}, {"help"});
  if (a.has("help")) {
    std::puts(kUsage);
    return 0;
  }
  TrainCommand c;
  c.sets = a.options.count("set") ? a.options["set"] : std::vector<std::string>{};
  c.out = a.get("out", "runs");
  if (a.has("resume")) {
    CM_CHECK(a.positional.empty(),
             "cm train --resume takes no CONFIG (the run's config.json is used)");
    c.resume = a.get("resume");
  } else {
    CM_CHECK(a.positional.size() == 1, "cm train needs exactly one CONFIG file\n", kUsage);
    c.config = a.positional[0];
  }
  return run_train(c);
}

int cmd_sample(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2,
                      {"n", "seeds", "steps", "sigmas", "weights", "device", "out", "quantize"},
                      {"help"});
  if (a.has("help") || a.positional.size() != 1) {
    std::puts(kUsage);
    return a.has("help") ? 0 : 2;
  }
  const Device dev = Device::parse(a.get("device", "cpu"));
  LoadedNetwork m = load_network(a.positional[0], a.get("weights", "ema"), dev);
  std::vector<uint64_t> seeds =
      a.has("seeds") ? parse_seeds(a.get("seeds")) : std::vector<uint64_t>{};
  if (seeds.empty()) {
    const int64_t n = std::stoll(a.get("n", "64"));
    CM_CHECK(n > 0, "--n must be positive");
    for (int64_t i = 0; i < n; ++i) seeds.push_back(uint64_t(i));
  }
  const Quantization q = parse_quantization(a.get("quantize", "floor"));
  const Sampler sampler = choose_sampler(m.config, a.get("steps", "1"), a.get("sigmas"));
  const fs::path out = a.get("out", (fs::path(a.positional[0]).parent_path() / "samples").string());
  fs::create_directories(out);
  const Tensor u8 = generate_images(m, seeds, sampler, q, dev, 256);
  for (size_t i = 0; i < seeds.size(); ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "%06llu.png", (unsigned long long)seeds[i]);
    data::write_png((out / name).string(), select(u8, 0, int64_t(i)));
  }
  data::write_png((out / "grid.png").string(), make_grid(u8));
  write_npz((out / "samples.npz").string(), u8);
  json recipe = {{"weights", m.weights},
                 {"mode", m.config.mode},
                 {"n", seeds.size()},
                 {"seeds", a.get("seeds", "0-" + std::to_string(seeds.size() - 1))},
                 {"sampler", sampler.name},
                 {"sigmas", sampler.taus},
                 {"quantization", quantization_name(q)},
                 {"nfe", sampler.nfe}};
  std::ofstream(out / "recipe.json") << recipe.dump(2) << "\n";
  std::printf("wrote %zu images to %s (grid.png, samples.npz, recipe.json)\n", seeds.size(),
              out.c_str());
  return 0;
}

int cmd_info(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"preset"}, {"presets", "help"});
  if (a.has("presets")) {
    for (const std::string& n : nn::songunet_preset_names()) std::puts(n.c_str());
    return 0;
  }
  nn::SongUNetConfig net;
  std::string title;
  if (a.has("preset")) {
    net = nn::songunet_preset(a.get("preset"));
    title = a.get("preset");
  } else {
    CM_CHECK(a.positional.size() == 1, "cm info needs a CONFIG file or --preset NAME\n", kUsage);
    const RunConfig c =
        typed_config(resolve_config(read_json_file(a.positional[0]), a.positional[0]));
    net = c.network;
    title = a.positional[0];
  }
  Generator gen(0);
  nn::SongUNet model(net, gen);
  std::printf("%s: SongUNet %lldx%lld, %lld -> %lld channels\n%s", title.c_str(),
              (long long)net.img_resolution, (long long)net.img_resolution,
              (long long)net.in_channels, (long long)net.out_channels,
              nn::summary(model, 2).c_str());
  std::printf("trainable parameters: %lld; buffers: %lld\n", (long long)model.num_parameters(),
              (long long)(model.num_parameters(true) - model.num_parameters()));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::puts(kUsage);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "train") return cmd_train(argc, argv);
    if (cmd == "sample") return cmd_sample(argc, argv);
    if (cmd == "info") return cmd_info(argc, argv);
    if (cmd == "bench") return cmd_bench(argc, argv);
    if (cmd == "eval") return cmd_eval(argc, argv);
    if (cmd == "classifier") return cmd_classifier(argc, argv);
    std::fprintf(stderr, "cm: unknown command \"%s\"\n%s\n", cmd.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cm %s: %s\n", cmd.c_str(), e.what());
    return 1;
  }
}
