// Atomic file replacement: temporary file, fsync, rename, fsync of the directory.
#include "nn/atomic_file.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <regex>

#include "tensor/error.h"

namespace cm::nn {

namespace {

std::string errno_text(int err) {
  return std::strerror(err);
}

// The directory holding `path` ("." for a bare file name).
std::string parent_dir(const std::string& path) {
  const std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

// Makes the rename durable. Some file systems cannot fsync a directory (EINVAL): nothing to do
// there.
void fsync_dir(const std::string& path) {
  const std::string dir = parent_dir(path);
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  CM_CHECK(fd >= 0, "write_atomic: '", path, "' was written, but its directory '", dir,
           "' cannot be opened to sync it: ", errno_text(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  CM_CHECK(rc == 0 || err == EINVAL || err == EROFS, "write_atomic: '", path,
           "' was written, but syncing its directory '", dir, "' failed: ", errno_text(err));
}

std::atomic<uint64_t> g_counter{0};

}  // namespace

void write_all(std::FILE* f, const void* data, size_t n, const std::string& path) {
  if (n == 0) return;
  const size_t done = std::fwrite(data, 1, n, f);
  CM_CHECK(done == n, "write '", path, "': wrote ", done, " of ", n, " bytes: ", errno_text(errno));
}

void write_atomic(const std::string& path, const std::function<void(std::FILE*)>& write) {
  CM_CHECK(!path.empty(), "write_atomic: empty path");
  const std::string tmp =
      path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(g_counter.fetch_add(1));
  std::FILE* f = std::fopen(tmp.c_str(), "wbxe");  // x: never reuse an existing file; e: O_CLOEXEC
  CM_CHECK(f != nullptr, "write_atomic: cannot create the temporary file '", tmp, "' for '", path,
           "': ", errno_text(errno));

  // Any failure from here on: close and remove the temporary, then report.
  auto fail = [&](const std::string& what, int err) {
    if (f) std::fclose(f);
    f = nullptr;
    std::remove(tmp.c_str());
    CM_FAIL("write_atomic: cannot write '", path, "': ", what, ": ", errno_text(err));
  };
  try {
    write(f);
  } catch (...) {
    std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  // errno is read right after each call, before anything else can change it.
  if (std::ferror(f)) fail("write error on '" + tmp + "'", errno ? errno : EIO);
  if (std::fflush(f) != 0) {
    const int err = errno;
    fail("flushing '" + tmp + "'", err);
  }
  if (::fsync(::fileno(f)) != 0) {
    const int err = errno;
    fail("fsync of '" + tmp + "'", err);
  }
  const int rc = std::fclose(f);
  const int close_err = errno;
  f = nullptr;
  if (rc != 0) fail("closing '" + tmp + "'", close_err);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    fail("renaming '" + tmp + "' over it", err);
  }
  fsync_dir(path);
}

bool process_alive(long pid) {
  if (pid <= 0) return false;
  return ::kill(pid_t(pid), 0) == 0 || errno == EPERM;
}

std::vector<std::string> remove_stale_temporaries(const std::string& dir) {
  static const std::regex re(".*\\.tmp\\.([0-9]{1,10})\\.[0-9]+");
  std::vector<std::string> removed;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return removed;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (!std::regex_match(name, m, re) || !e.is_regular_file(ec)) continue;
    if (process_alive(std::stol(m[1]))) continue;
    if (std::filesystem::remove(e.path(), ec)) removed.push_back(e.path().string());
  }
  return removed;
}

void write_atomic(const std::string& path, std::string_view bytes) {
  write_atomic(path, [&](std::FILE* f) { write_all(f, bytes.data(), bytes.size(), path); });
}

}  // namespace cm::nn
