#include "runner/train_command.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "runner/trainer.h"

namespace fs = std::filesystem;

namespace cm::runner {

namespace {

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

}  // namespace

int run_train(const TrainCommand& c) {
  const std::vector<std::string>& sets = c.sets;
  RunDir run;
  RunConfig cfg;
  std::optional<std::string> checkpoint;
  if (c.resume) {
    run = RunDir::open(*c.resume);
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
    CM_CHECK(c.config.has_value(), "cm train needs a CONFIG file or --resume RUN_DIR");
    json user = read_json_file(*c.config);
    apply_overrides(user, sets);
    cfg = typed_config(resolve_config(user, *c.config));
    run = RunDir::create(c.out, describe(cfg));
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

}  // namespace cm::runner
