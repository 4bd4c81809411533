// `cm train`: a new run from a configuration, or a resumed one, driven to train.steps with its
// logs, metrics, checkpoints and sample grids (the run directory of runner/run_dir.h).
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace cm::runner {

struct TrainCommand {
  std::optional<std::string> config;  // a new run from this configuration file, or
  std::optional<std::string> resume;  // the run directory to resume
  std::vector<std::string> sets;      // --set key=value overrides
  std::string out = "runs";           // where a new run's directory is made
};

// Runs the command; returns the process exit code. Errors are thrown as cm::Error.
int run_train(const TrainCommand& command);

}  // namespace cm::runner
