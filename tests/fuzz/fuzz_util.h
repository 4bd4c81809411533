// Helpers shared by the fuzz targets: the input bytes as a file that the path-taking readers can
// open (an anonymous memfd, or files in a per-process directory under /dev/shm), and the rule of
// every target: a parser may succeed or throw cm::Error; any other exception escapes
// LLVMFuzzerTestOneInput and is a finding, as are crashes, sanitizer reports and hangs.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "tensor/error.h"

namespace cm::fuzz {

// The input as an in-memory regular file, reachable as /proc/self/fd/<fd> while the object lives.
class MemFile {
 public:
  MemFile(const uint8_t* data, size_t size) {
    fd_ = ::memfd_create("cm_fuzz", MFD_CLOEXEC);
    if (fd_ < 0) std::abort();
    for (size_t done = 0; done < size;) {
      const ssize_t n = ::write(fd_, data + done, size - done);
      if (n <= 0) std::abort();
      done += size_t(n);
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemFile() { ::close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

// A directory of this process under /dev/shm (or the temp dir), removed at exit.
inline const std::filesystem::path& scratch_dir(const char* target) {
  static const std::filesystem::path dir = [&] {
    std::filesystem::path base = "/dev/shm";
    std::error_code ec;
    if (!std::filesystem::is_directory(base, ec)) base = std::filesystem::temp_directory_path();
    const std::filesystem::path d =
        base / ("cm_fuzz_" + std::string(target) + "_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    static struct Remover {
      std::filesystem::path p;
      ~Remover() {
        std::error_code e;
        std::filesystem::remove_all(p, e);
      }
    } remover{d};
    return d;
  }();
  return dir;
}

inline void write_file(const std::filesystem::path& path, const uint8_t* data, size_t size) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
}

// Runs `f`; a cm::Error is an accepted outcome, anything else escapes.
template <class F>
void expect_cm_error_or_success(F&& f) {
  try {
    f();
  } catch (const cm::Error&) {
  }
}

}  // namespace cm::fuzz
