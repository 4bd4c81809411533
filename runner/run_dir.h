// A run directory: <root>/<NNNNN>-<description>/ holding config.json (the resolved
// configuration), log.txt (everything the run printed), metrics.jsonl (one JSON object per logged
// step), checkpoints/checkpoint-<step>.safetensors and samples/grid-<step>-<kind>.png.
//
// What survives a kill -9 at any moment: config.json, checkpoints and grids are replaced
// atomically (nn/atomic_file.h), so each is the old or the new file, never a torn one; log.txt
// and metrics.jsonl are appended a whole line at a time and repaired on resume (a torn last line
// dropped, metrics logged after the checkpoint resumed from removed, since those steps are run
// again); temporaries of killed writers are removed when a run is resumed.
#pragma once

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace cm::runner {

class RunDir {
 public:
  // Creates the next numbered directory under `root` for a new run, with config.json holding
  // `config_json` (none when empty): it is assembled under a staging name and renamed into place
  // (never over an existing directory), under an flock on <root>/.cm-runs.lock, so that racing
  // runs never share a number and a kill never leaves a run directory without its config.json.
  static RunDir create(const std::string& root, const std::string& description,
                       const std::string& config_json = "");
  // Opens an existing run directory (for resume, sampling, evaluation); checks that it has a
  // config.json or a checkpoints/ folder (a lost config.json is recovered from a checkpoint).
  static RunDir open(const std::string& path);

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path config_path() const { return path_ / "config.json"; }
  std::filesystem::path checkpoint_dir() const { return path_ / "checkpoints"; }
  std::filesystem::path metrics_path() const { return path_ / "metrics.jsonl"; }
  std::filesystem::path log_path() const { return path_ / "log.txt"; }
  std::filesystem::path sample_dir() const { return path_ / "samples"; }
  std::filesystem::path checkpoint_path(int64_t step) const;
  // Checkpoints present, by step, oldest first.
  std::vector<std::pair<int64_t, std::filesystem::path>> checkpoints() const;
  // A name "checkpoint-<step>.safetensors" with a step beyond 10^12, or one that is not a regular
  // file, is an error naming it.
  // The newest checkpoint; fails with a clear message when there is none.
  std::filesystem::path latest_checkpoint() const;
  // Removes the temporaries "<name>.tmp.<pid>.<n>" that writers killed mid-write left in the run
  // directory, its checkpoints/ and samples/ (those of live processes are kept); returns them.
  std::vector<std::filesystem::path> remove_stale_temporaries() const;
  // Rewrites metrics.jsonl (atomically) without the lines of steps after `step` and without a
  // torn last line: what a run resumed from the checkpoint at `step` logs again.
  void truncate_metrics_after(int64_t step) const;

 private:
  std::filesystem::path path_;
};

// Prints to stdout and appends to a log file, line by line (flushed). Lines printed before a file
// is opened are kept and written to it when it is (a run logs while it is validated, before its
// directory exists).
class Logger {
 public:
  Logger() = default;
  explicit Logger(const std::filesystem::path& file);
  void open(const std::filesystem::path& file);
  ~Logger();
  Logger(const Logger&) = delete;
  Logger& operator=(const Logger&) = delete;
  void line(const std::string& s);
  // Writes `s` to the terminal only (a progress bar redrawn in place); nothing to the log file.
  void progress(const std::string& s);
  bool interactive() const { return interactive_; }
  // Drops every line from now on (the ranks other than 0 of a job, which write nothing).
  void silence() {
    silent_ = true;
    interactive_ = false;
    pending_.clear();
  }

 private:
  bool silent_ = false;
  std::FILE* file_ = nullptr;
  std::vector<std::string> pending_;
  bool interactive_ = isatty_stdout();
  bool progress_shown_ = false;
  static bool isatty_stdout();
};

// Appends one JSON object per line to metrics.jsonl (flushed, so a crash loses at most a line).
class MetricsWriter {
 public:
  MetricsWriter() = default;
  explicit MetricsWriter(const std::filesystem::path& file, bool append);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  void write(const nlohmann::json& j);

 private:
  std::FILE* file_ = nullptr;
};

}  // namespace cm::runner
