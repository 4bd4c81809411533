// A run directory: <root>/<NNNNN>-<description>/ holding config.json (the resolved
// configuration), log.txt (everything the run printed), metrics.jsonl (one JSON object per logged
// step), checkpoints/checkpoint-<step>.safetensors and samples/grid-<step>-<kind>.png.
#pragma once

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace cm::runner {

class RunDir {
 public:
  // Creates the next numbered directory under `root` for a new run.
  static RunDir create(const std::string& root, const std::string& description);
  // Opens an existing run directory (for resume, sampling, evaluation); checks that it has a
  // config.json.
  static RunDir open(const std::string& path);

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path config_path() const { return path_ / "config.json"; }
  std::filesystem::path checkpoint_dir() const { return path_ / "checkpoints"; }
  std::filesystem::path sample_dir() const { return path_ / "samples"; }
  std::filesystem::path checkpoint_path(int64_t step) const;
  // Checkpoints present, by step, oldest first.
  std::vector<std::pair<int64_t, std::filesystem::path>> checkpoints() const;
  // The newest checkpoint; fails with a clear message when there is none.
  std::filesystem::path latest_checkpoint() const;

 private:
  std::filesystem::path path_;
};

// Prints to stdout and appends to a log file, line by line (flushed).
class Logger {
 public:
  Logger() = default;
  explicit Logger(const std::filesystem::path& file);
  ~Logger();
  Logger(const Logger&) = delete;
  Logger& operator=(const Logger&) = delete;
  void line(const std::string& s);
  // Writes `s` to the terminal only (a progress bar redrawn in place); nothing to the log file.
  void progress(const std::string& s);
  bool interactive() const { return interactive_; }

 private:
  std::FILE* file_ = nullptr;
  bool interactive_ = false;
  bool progress_shown_ = false;
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
