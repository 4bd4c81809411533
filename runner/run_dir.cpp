#include "runner/run_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <regex>

#include "nn/atomic_file.h"
#include "nn/file_io.h"
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

// Holds an exclusive flock on <root>/.cm-runs.lock while the next run number is chosen and its
// directory made, so that two `cm train` started together never share a number. The lock dies
// with the process.
class RootLock {
 public:
  explicit RootLock(const fs::path& root) {
    const std::string p = (root / ".cm-runs.lock").string();
    fd_ = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    CM_CHECK(fd_ >= 0, root.string(), ": cannot create the lock file '", p,
             "': ", std::strerror(errno));
    while (::flock(fd_, LOCK_EX) != 0) {
      CM_CHECK(errno == EINTR, root.string(), ": cannot lock '", p, "': ", std::strerror(errno));
    }
  }
  ~RootLock() { ::close(fd_); }  // releases the lock
  RootLock(const RootLock&) = delete;
  RootLock& operator=(const RootLock&) = delete;

 private:
  int fd_ = -1;
};

// The run number of a directory name "NNNNN-...", or -1.
int64_t run_number(const std::string& name) {
  if (name.size() < 5 || !std::all_of(name.begin(), name.begin() + 5, ::isdigit)) return -1;
  int64_t v = 0;
  std::from_chars(name.data(), name.data() + 5, v);
  return v;
}

}  // namespace

RunDir RunDir::create(const std::string& root, const std::string& description,
                      const std::string& config_json) {
  std::error_code ec;
  fs::create_directories(root, ec);
  CM_CHECK(!ec, root, ": cannot create the runs directory (", ec.message(), ")");
  CM_CHECK(fs::is_directory(root), root, ": not a directory");
  const RootLock lock(root);
  int64_t next = 0;
  static const std::regex staging_re("\\.staging-([0-9]{1,10})-.*");
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string name = e.path().filename().string();
    next = std::max(next, run_number(name) + 1);
    std::smatch m;
    if (std::regex_match(name, m, staging_re) && !nn::process_alive(std::stol(m[1])))
      fs::remove_all(e.path(), ec);  // a creator killed before its directory was complete
  }
  // The directory is assembled under a staging name (config.json, checkpoints/, samples/) and
  // renamed into place, so that a run directory is never seen half made, even after a kill.
  const fs::path staging =
      fs::path(root) / (".staging-" + std::to_string(::getpid()) + "-" + sanitize(description));
  fs::remove_all(staging, ec);
  fs::create_directories(staging / "checkpoints", ec);
  CM_CHECK(!ec, staging.string(), ": cannot create the run directory (", ec.message(), ")");
  fs::create_directories(staging / "samples", ec);
  CM_CHECK(!ec, staging.string(), ": cannot create the run directory (", ec.message(), ")");
  if (!config_json.empty()) nn::write_atomic((staging / "config.json").string(), config_json);
  RunDir r;
  // Never onto an existing name (a writer that does not take the lock, an older cm): the next
  // number is tried instead.
  for (int attempt = 0;; ++attempt, ++next) {
    CM_CHECK(next <= 99999 && attempt < 1000, root, ": cannot claim a new run number (", next,
             " runs?)");
    char id[32];
    std::snprintf(id, sizeof id, "%05lld", static_cast<long long>(next));
    r.path_ = fs::path(root) / (std::string(id) + "-" + sanitize(description));
    int rc = ::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, r.path_.c_str(), RENAME_NOREPLACE);
    if (rc != 0 && errno == EINVAL) {  // a file system without RENAME_NOREPLACE: the lock guards
      if (fs::exists(r.path_)) continue;
      rc = std::rename(staging.c_str(), r.path_.c_str());
    }
    if (rc == 0) break;
    CM_CHECK(errno == EEXIST || errno == ENOTEMPTY, r.path_.string(),
             ": cannot create the run directory (", std::strerror(errno), ")");
  }
  return r;
}

RunDir RunDir::open(const std::string& path) {
  RunDir r;
  r.path_ = fs::path(path);
  CM_CHECK(fs::is_directory(r.path_), path, ": not a run directory (no such directory)");
  CM_CHECK(fs::exists(r.config_path()) || fs::is_directory(r.checkpoint_dir()), path,
           ": not a run directory (no config.json and no checkpoints/)");
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
    if (!std::regex_match(name, m, re)) continue;
    const std::string digits = m[1];
    int64_t step = 0;
    const auto [end, err] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
    CM_CHECK(err == std::errc() && end == digits.data() + digits.size() && step <= int64_t(1e12),
             e.path().string(), ": the step ", digits,
             " in the checkpoint's name is out of range (at most 10^12); rename or remove it");
    nn::require_regular_file(e.path().string(), "checkpoint");
    out.emplace_back(step, e.path());
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

std::vector<fs::path> RunDir::remove_stale_temporaries() const {
  std::vector<fs::path> removed;
  for (const fs::path& dir : {path_, checkpoint_dir(), sample_dir()})
    for (const std::string& p : nn::remove_stale_temporaries(dir.string())) removed.push_back(p);
  return removed;
}

void RunDir::truncate_metrics_after(int64_t step) const {
  const fs::path p = metrics_path();
  if (!fs::exists(p)) return;
  const std::string text = nn::read_file_text(p.string(), "metrics");
  std::string kept;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) break;  // a torn last line (killed mid-write): dropped
    const std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    nlohmann::json j;
    try {
      j = nn::parse_json(line, p.string());
    } catch (const Error&) {
      continue;  // not a whole JSON line
    }
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
        j["step"].get<int64_t>() > step)
      continue;  // logged after the checkpoint: that part of the run is done again
    kept += line + "\n";
  }
  if (kept != text) nn::write_atomic(p.string(), kept);
}

// ---- Logger
// ---------------------------------------------------------------------------------------
Logger::Logger(const fs::path& file) {
  open(file);
}

void Logger::open(const fs::path& file) {
  CM_CHECK(file_ == nullptr, "Logger: already writing to a file");
  file_ = std::fopen(file.c_str(), "a");
  CM_CHECK(file_ != nullptr, file.string(), ": cannot open the log file");
  // a line torn by a kill ends here, so that the next line starts on its own
  if (std::ftell(file_) > 0) {
    std::FILE* r = std::fopen(file.c_str(), "r");
    if (r && std::fseek(r, -1, SEEK_END) == 0 && std::fgetc(r) != '\n') std::fputc('\n', file_);
    if (r) std::fclose(r);
  }
  for (const std::string& s : pending_) std::fprintf(file_, "%s\n", s.c_str());
  pending_.clear();
  std::fflush(file_);
}

bool Logger::isatty_stdout() {
  return ::isatty(STDOUT_FILENO);
}

Logger::~Logger() {
  if (file_) std::fclose(file_);
}

void Logger::line(const std::string& s) {
  if (silent_) return;
  if (progress_shown_) {
    std::printf("\r\033[K");
    progress_shown_ = false;
  }
  std::printf("%s\n", s.c_str());
  std::fflush(stdout);
  if (file_) {
    std::fprintf(file_, "%s\n", s.c_str());
    std::fflush(file_);
  } else {
    pending_.push_back(s);
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
  // one write of the whole line, so that a kill leaves whole lines and at most one torn last line
  const std::string line = j.dump() + "\n";
  std::fwrite(line.data(), 1, line.size(), file_);
  std::fflush(file_);
}

}  // namespace cm::runner
