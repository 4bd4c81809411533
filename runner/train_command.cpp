#include "runner/train_command.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>

#include "cm_revision.h"  // CM_GIT_REVISION (runner/revision.cmake)
#include "nn/atomic_file.h"
#include "nn/file_io.h"
#include "nn/safetensors.h"
#include "runner/progress.h"
#include "runner/sha256.h"
#include "runner/trainer.h"

namespace fs = std::filesystem;

namespace cm::runner {

namespace {

std::string describe(const RunConfig& c) {
  std::string d = c.mode + "-" + c.network.preset;
  if (!c.name.empty()) d += "-" + c.name;
  return d;
}

// The resolved configuration, written atomically, so that a kill leaves the old file or the new.
void write_config(const RunDir& run, const RunConfig& cfg) {
  nn::write_atomic(run.config_path().string(), cfg.resolved.dump(2) + "\n");
}

// A resumed run's configuration: config.json, or, when a kill or a disk error left it missing,
// empty or corrupt, the copy every checkpoint carries in its metadata.
json resumed_config(const RunDir& run, const fs::path& checkpoint, Logger& log) {
  std::string problem;
  if (fs::exists(run.config_path())) {
    try {
      return read_json_file(run.config_path().string());
    } catch (const Error& e) {
      problem = e.what();
    }
  } else {
    problem = run.config_path().string() + ": no such file";
  }
  const nn::SafetensorsFile f(checkpoint.string());
  auto it = f.metadata().find("config");
  CM_CHECK(it != f.metadata().end(), problem, "; and ", checkpoint.string(),
           " carries no configuration to recover it from");
  log.line("warning: " + problem + "; the configuration is recovered from " + checkpoint.string());
  return nn::parse_json(it->second, checkpoint.string() + " (metadata \"config\")");
}

// The step of a checkpoint, from its metadata, which must agree with its file name.
int64_t checkpoint_step(const std::pair<int64_t, fs::path>& named) {
  const nn::SafetensorsFile f(named.second.string());
  auto it = f.metadata().find("step");
  CM_CHECK(it != f.metadata().end(), named.second.string(),
           ": not a cm training checkpoint (metadata \"step\" missing)");
  CM_CHECK(it->second == std::to_string(named.first), named.second.string(),
           ": metadata \"step\" is \"", it->second, "\", but the file is named for step ",
           named.first);
  return named.first;
}

// Across ranks: every rank must run the same configuration (a different file or --set on one
// rank would train K different models that average their gradients). The ranks compare a hash of
// the resolved configuration with rank 0's; every rank fails with the same message.
void check_same_config(dist::Communicator& comm, const RunConfig& cfg) {
  if (comm.size() == 1) return;
  const std::string h = sha256_hex(cfg.resolved.dump());
  Tensor mine = from_vector<int64_t>({int64_t(std::stoull(h.substr(0, 15), nullptr, 16))}, {1},
                                     {.dtype = DType::i64});
  const std::vector<int64_t> all = comm.all_gather(mine).contiguous().to_vector<int64_t>();
  std::string differ;
  for (size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0]) differ += (differ.empty() ? "" : ", ") + std::to_string(r);
  CM_CHECK(differ.empty(), "the configuration of rank(s) ", differ,
           " differs from rank 0's (each rank resolved its CONFIG and --set options to a different "
           "run): start every rank with the same arguments");
}

}  // namespace

int run_train(const TrainCommand& c) {
  const std::vector<std::string>& sets = c.sets;
  dist::Communicator& comm = dist::world();
  const bool writer = comm.rank() == 0;  // rank 0 alone writes the run directory
  Logger log;  // lines before the run directory exists go into its log.txt once it does
  if (!writer) log.silence();
  RunDir run;
  RunConfig cfg;
  std::optional<std::string> checkpoint;
  std::unique_ptr<Trainer> trainer_ptr;
  if (c.resume) {
    run = RunDir::open(*c.resume);
    const auto all = run.checkpoints();
    int64_t at = 0;
    json user;
    if (all.empty()) {
      // stopped before its first checkpoint: the run starts again from step 0 (the same run)
      CM_CHECK(fs::exists(run.config_path()), run.path().string(),
               ": nothing to resume (no checkpoint and no config.json)");
      user = read_json_file(run.config_path().string());
      log.line("no checkpoint yet in " + run.checkpoint_dir().string() +
               ": the run starts again from step 0");
    } else {
      checkpoint = all.back().second.string();
      at = checkpoint_step(all.back());
      user = resumed_config(run, all.back().second, log);
    }
    for (const std::string& s : sets)
      CM_CHECK(
          s.rfind("train.steps=", 0) == 0 || s.rfind("train.log_every=", 0) == 0 ||
              s.rfind("train.checkpoint_every=", 0) == 0 || s.rfind("train.sample_every=", 0) == 0,
          "--set ", s,
          ": a resumed run can change only train.steps and the log/checkpoint/sample intervals");
    apply_overrides(user, sets);
    cfg = typed_config(resolve_config(user, run.config_path().string()));
    check_same_config(comm, cfg);
    CM_CHECK(cfg.train.steps >= at, run.path().string(), ": train.steps = ", cfg.train.steps,
             " is below the step of the latest checkpoint (", at, ", ", *checkpoint,
             "); a resumed run goes on from there to a later step");
    trainer_ptr = std::make_unique<Trainer>(cfg, checkpoint, &log);
    // every check passed: now the run directory changes
    if (writer) {
      log.open(run.log_path());
      for (const fs::path& p : run.remove_stale_temporaries())
        log.line("removed " + p.string() + " (left by a writer that was killed)");
      run.truncate_metrics_after(at);
      write_config(run, cfg);
    }
    log.line("cm train: " + run.path().string() +
             (checkpoint ? " (resuming from " + *checkpoint + ")" : " (from the start)"));
  } else {
    CM_CHECK(c.config.has_value(), "cm train needs a CONFIG file or --resume RUN_DIR");
    json user = read_json_file(*c.config);
    apply_overrides(user, sets);
    cfg = typed_config(resolve_config(user, *c.config));
    check_same_config(comm, cfg);
    // the data, the teacher and the networks are checked before the run directory is made
    trainer_ptr = std::make_unique<Trainer>(cfg, std::nullopt, &log);
    if (writer) {
      run = RunDir::create(c.out, describe(cfg), cfg.resolved.dump(2) + "\n");
      log.open(run.log_path());
      log.line("cm train: " + run.path().string());
    }
  }
  if (comm.size() > 1)
    log.line("data-parallel: " + std::to_string(comm.size()) + " ranks (" + comm.engine() + "), " +
             std::to_string(cfg.train.batch / comm.size()) + " of the batch's " +
             std::to_string(cfg.train.batch) + " images each");
  Trainer& trainer = *trainer_ptr;
  log.line("network " + cfg.network.preset + ": " +
           std::to_string(trainer.online().num_parameters()) + " parameters; mode " + cfg.mode +
           "; device " + cfg.device.str() + "; " + (cfg.tf32 ? "tf32" : dtype_name(cfg.precision)) +
           "; data " + cfg.data.dataset + " (" + std::to_string(trainer.loader().dataset().size()) +
           " images" + (trainer.loader().dataset().streamed() ? ", streamed)" : ")"));
  std::optional<MetricsWriter> metrics_file;  // rank 0's; the other ranks' writes go nowhere
  if (writer) metrics_file.emplace(run.path() / "metrics.jsonl", checkpoint.has_value());
  MetricsWriter nowhere;
  MetricsWriter& metrics = metrics_file ? *metrics_file : nowhere;
  {
    // provenance of this start (cm report's table): "from_step", not "step", so that the lines
    // with a "step" stay one per logged step
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
    const std::time_t now = std::time(nullptr);
    char date[32];
    std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    metrics.write({{"event", "start"},
                   {"from_step", trainer.step()},
                   {"date", date},
                   {"cm_revision", CM_GIT_REVISION},
                   {"device", cfg.device.str()},
                   {"world_size", comm.size()},
                   {"host", host}});
  }
  const auto t_start = std::chrono::steady_clock::now();
  auto last = t_start;
  const int64_t first = trainer.step();
  int64_t last_step = first;
  double loss_sum = 0;
  int64_t loss_count = 0;
  // A kill between a checkpoint and its sample grids: the grids of the step resumed from.
  if (checkpoint && writer) {
    const int64_t k = trainer.step();
    bool missing = false;
    for (const std::string& p : trainer.sample_grid_paths(run.sample_dir().string()))
      missing = missing || !fs::exists(p);
    if (missing && (k % cfg.train.sample_every == 0 || k == cfg.train.steps))
      for (const std::string& p : trainer.write_sample_grids(run.sample_dir().string()))
        log.line("samples " + p + " (missing after the stop)");
    if (k == cfg.train.steps) log.line("the run is complete at step " + std::to_string(k));
  }
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
      char loss_s[48];
      std::snprintf(loss_s, sizeof loss_s, "loss %.4g", st.loss);
      log.progress(progress_bar(k, cfg.train.steps, "steps", rate, loss_s));
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
    const bool save = k % cfg.train.checkpoint_every == 0 || k == cfg.train.steps;
    const bool sample = k % cfg.train.sample_every == 0 || k == cfg.train.steps;
    if (save && writer) {
      const std::string p = run.checkpoint_path(k).string();
      trainer.save_checkpoint(p);
      log.line("checkpoint " + p);
      if (cfg.train.keep_checkpoints > 0) {
        auto all = run.checkpoints();
        for (size_t i = 0; i + size_t(cfg.train.keep_checkpoints) < all.size(); ++i)
          fs::remove(all[i].second);
      }
    }
    if (sample && writer)
      for (const std::string& p : trainer.write_sample_grids(run.sample_dir().string()))
        log.line("samples " + p);
    if ((save || sample) && comm.size() > 1) comm.barrier();  // the others wait for rank 0's files
  }
  log.line("done: " + std::to_string(trainer.step()) + " steps in " +
           format_duration(
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count()) +
           "; run directory " + run.path().string());
  return 0;
}

}  // namespace cm::runner
