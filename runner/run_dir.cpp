#include "runner/run_dir.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <regex>

#include "tensor/error.h"

namespace fs = std::filesystem;

namespace cm::runner {

namespace {
std::string sanitize(const std::string& s) {
  std::string out;
  for (char c : s)
    out +=
        (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.') ? c : '-';
  return out;
}
}  // namespace

RunDir RunDir::create(const std::string& root, const std::string& description) {
  std::error_code ec;
  fs::create_directories(root, ec);
  CM_CHECK(!ec, root, ": cannot create the runs directory (", ec.message(), ")");
  int next = 0;
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string name = e.path().filename().string();
    if (name.size() >= 5 && std::all_of(name.begin(), name.begin() + 5, ::isdigit))
      next = std::max(next, std::stoi(name.substr(0, 5)) + 1);
  }
  char id[16];
  std::snprintf(id, sizeof id, "%05d", next);
  RunDir r;
  r.path_ = fs::path(root) / (std::string(id) + "-" + sanitize(description));
  fs::create_directories(r.checkpoint_dir(), ec);
  CM_CHECK(!ec, r.path_.string(), ": cannot create the run directory (", ec.message(), ")");
  fs::create_directories(r.sample_dir(), ec);
  return r;
}

RunDir RunDir::open(const std::string& path) {
  RunDir r;
  r.path_ = fs::path(path);
  CM_CHECK(fs::is_directory(r.path_), path, ": not a run directory (no such directory)");
  CM_CHECK(fs::exists(r.config_path()), path, ": not a run directory (no config.json)");
  std::error_code ec;
  fs::create_directories(r.checkpoint_dir(), ec);
  fs::create_directories(r.sample_dir(), ec);
  return r;
}

fs::path RunDir::checkpoint_path(int64_t step) const {
  char name[64];
  std::snprintf(name, sizeof name, "checkpoint-%08lld.safetensors", static_cast<long long>(step));
  return checkpoint_dir() / name;
}

std::vector<std::pair<int64_t, fs::path>> RunDir::checkpoints() const {
  std::vector<std::pair<int64_t, fs::path>> out;
  if (!fs::is_directory(checkpoint_dir())) return out;
  static const std::regex re("checkpoint-([0-9]+)\\.safetensors");
  for (const auto& e : fs::directory_iterator(checkpoint_dir())) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (std::regex_match(name, m, re)) out.emplace_back(std::stoll(m[1]), e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

fs::path RunDir::latest_checkpoint() const {
  const auto all = checkpoints();
  CM_CHECK(!all.empty(), path_.string(), ": the run has no checkpoint yet (",
           checkpoint_dir().string(), " is empty)");
  return all.back().second;
}

// ---- Logger
// ---------------------------------------------------------------------------------------
Logger::Logger(const fs::path& file) {
  file_ = std::fopen(file.c_str(), "a");
  CM_CHECK(file_ != nullptr, file.string(), ": cannot open the log file");
  interactive_ = isatty(STDOUT_FILENO);
}

Logger::~Logger() {
  if (file_) std::fclose(file_);
}

void Logger::line(const std::string& s) {
  if (progress_shown_) {
    std::printf("\r\033[K");
    progress_shown_ = false;
  }
  std::printf("%s\n", s.c_str());
  std::fflush(stdout);
  if (file_) {
    std::fprintf(file_, "%s\n", s.c_str());
    std::fflush(file_);
  }
}

void Logger::progress(const std::string& s) {
  if (!interactive_) return;
  std::printf("\r\033[K%s", s.c_str());
  std::fflush(stdout);
  progress_shown_ = true;
}

// ---- MetricsWriter
// ----------------------------------------------------------------------------------
MetricsWriter::MetricsWriter(const fs::path& file, bool append) {
  file_ = std::fopen(file.c_str(), append ? "a" : "w");
  CM_CHECK(file_ != nullptr, file.string(), ": cannot open the metrics file");
}

MetricsWriter::~MetricsWriter() {
  if (file_) std::fclose(file_);
}

void MetricsWriter::write(const nlohmann::json& j) {
  if (!file_) return;
  std::fprintf(file_, "%s\n", j.dump().c_str());
  std::fflush(file_);
}

}  // namespace cm::runner
