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

std::string describe(const RunConfig& c) {
  std::string d = c.mode + "-" + c.network_preset;
  if (!c.name.empty()) d += "-" + c.name;
  return d;
}

std::string format_duration(double s) {
  char buf[32];
  if (s < 60)
    std::snprintf(buf, sizeof buf, "%.0fs", s);
  else if (s < 3600)
    std::snprintf(buf, sizeof buf, "%dm%02ds", int(s / 60), int(s) % 60);
  else
    std::snprintf(buf, sizeof buf, "%dh%02dm", int(s / 3600), int(s / 60) % 60);
  return buf;
}

int cmd_train(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"set", "out", "resume"}, {"help"});
  if (a.has("help")) {
    std::puts(kUsage);
    return 0;
  }
  const std::vector<std::string> sets =
      a.options.count("set") ? a.options["set"] : std::vector<std::string>{};
  RunDir run;
  RunConfig cfg;
  std::optional<std::string> checkpoint;
  if (a.has("resume")) {
    CM_CHECK(a.positional.empty(),
             "cm train --resume takes no CONFIG (the run's config.json is used)");
    run = RunDir::open(a.get("resume"));
    json user = read_json_file(run.config_path().string());
    for (const std::string& s : sets)
      CM_CHECK(
          s.rfind("train.steps=", 0) == 0 || s.rfind("train.log_every=", 0) == 0 ||
              s.rfind("train.checkpoint_every=", 0) == 0 || s.rfind("train.sample_every=", 0) == 0,
          "--set ", s,
          ": a resumed run can change only train.steps and the log/checkpoint/sample intervals");
    apply_overrides(user, sets);
    cfg = typed_config(resolve_config(user, run.config_path().string()));
    checkpoint = run.latest_checkpoint().string();
  } else {
    CM_CHECK(a.positional.size() == 1, "cm train needs exactly one CONFIG file\n", kUsage);
    json user = read_json_file(a.positional[0]);
    apply_overrides(user, sets);
    cfg = typed_config(resolve_config(user, a.positional[0]));
    run = RunDir::create(a.get("out", "runs"), describe(cfg));
  }
  {
    // the resolved configuration, with every default filled in
    std::ofstream out(run.config_path());
    out << cfg.resolved.dump(2) << "\n";
  }
  Logger log(run.path() / "log.txt");
  log.line("cm train: " + run.path().string() +
           (checkpoint ? " (resuming from " + *checkpoint + ")" : ""));
  Trainer trainer(cfg, checkpoint, &log);
  log.line("network " + cfg.network_preset + ": " +
           std::to_string(trainer.online().num_parameters()) + " parameters; mode " + cfg.mode +
           "; device " + cfg.device.str() + "; " + (cfg.tf32 ? "tf32" : dtype_name(cfg.precision)) +
           "; data " + cfg.data.dataset + " (" +
           std::to_string(trainer.loader().dataset().images.size(0)) + " images)");
  MetricsWriter metrics(run.path() / "metrics.jsonl", checkpoint.has_value());
  const auto t_start = std::chrono::steady_clock::now();
  auto last = t_start;
  const int64_t first = trainer.step();
  int64_t last_step = first;
  double loss_sum = 0;
  int64_t loss_count = 0;
  while (trainer.step() < cfg.train.steps) {
    const StepStats st = trainer.train_step();
    loss_sum += st.loss;
    ++loss_count;
    const int64_t k = trainer.step();
    CM_CHECK(std::isfinite(st.loss) || st.skipped, "step ", k, ": the loss is ", st.loss,
             " (non-finite); stopping instead of training on garbage");
    const auto now = std::chrono::steady_clock::now();
    const double elapsed = std::chrono::duration<double>(now - t_start).count();
    const double rate = double(k - first) / std::max(elapsed, 1e-9);
    if (log.interactive()) {
      const double frac = double(k) / double(cfg.train.steps);
      const int width = 30, filled = int(frac * width);
      char bar[160];
      std::snprintf(bar, sizeof bar, "[%s%s] %lld/%lld loss %.4g  %.1f it/s  ETA %s",
                    std::string(size_t(filled), '#').c_str(),
                    std::string(size_t(width - filled), '.').c_str(), (long long)k,
                    (long long)cfg.train.steps, st.loss, rate,
                    format_duration(double(cfg.train.steps - k) / std::max(rate, 1e-9)).c_str());
      log.progress(bar);
    }
    if (k % cfg.train.log_every == 0 || k == cfg.train.steps) {
      const double dt = std::chrono::duration<double>(now - last).count() / double(k - last_step);
      const MemoryStats mem = allocator_for(cfg.device).stats();
      json m = {{"step", k},
                {"loss", loss_sum / double(loss_count)},
                {"grad_norm", st.grad_norm},
                {"lr", st.lr},
                {"step_time_ms", dt * 1e3},
                {"images_per_s", double(cfg.train.batch) / dt},
                {"mem_allocated", mem.allocated},
                {"mem_peak", mem.peak_allocated},
                {"skipped_steps", trainer.skipped_steps()},
                {"elapsed_s", elapsed}};
      if (cfg.mode != "edm") {
        m["mu"] = st.mu;
        m["N"] = st.n;
      }
      metrics.write(m);
      char line[256];
      std::snprintf(line, sizeof line,
                    "step %7lld  loss %.5g  grad %.3g  lr %.3g%s  %.1f ms/step  %.0f img/s",
                    (long long)k, loss_sum / double(loss_count), st.grad_norm, st.lr,
                    cfg.mode == "edm"
                        ? ""
                        : ("  N " + std::to_string(st.n) + "  mu " + std::to_string(st.mu)).c_str(),
                    dt * 1e3, double(cfg.train.batch) / dt);
      log.line(line);
      loss_sum = 0;
      loss_count = 0;
      last = now;
      last_step = k;
    }
    if (cfg.train.layer_stats_every > 0 && k % cfg.train.layer_stats_every == 0)
      metrics.write({{"step", k}, {"layer_stats", trainer.layer_stats()}});
    if (k % cfg.train.checkpoint_every == 0 || k == cfg.train.steps) {
      const std::string p = run.checkpoint_path(k).string();
      trainer.save_checkpoint(p);
      log.line("checkpoint " + p);
      if (cfg.train.keep_checkpoints > 0) {
        auto all = run.checkpoints();
        for (size_t i = 0; i + size_t(cfg.train.keep_checkpoints) < all.size(); ++i)
          fs::remove(all[i].second);
      }
    }
    if (k % cfg.train.sample_every == 0 || k == cfg.train.steps)
      for (const std::string& p : trainer.write_sample_grids(run.sample_dir().string()))
        log.line("samples " + p);
  }
  log.line("done: " + std::to_string(trainer.step()) + " steps in " +
           format_duration(
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count()) +
           "; run directory " + run.path().string());
  return 0;
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
