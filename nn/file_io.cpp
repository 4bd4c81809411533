#include "nn/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "tensor/error.h"

namespace cm::nn {

namespace {

const char* kind_of(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  return "not a regular file";
}

[[noreturn]] void not_regular(const std::string& path, const std::string& what, mode_t m) {
  CM_FAIL(what, ": '", path, "' is ", kind_of(m), ", not a regular file");
}

// "[json.exception.parse_error.101] parse error at ..." -> "parse error at ...".
std::string strip_prefix(const char* what) {
  std::string s = what;
  if (!s.empty() && s[0] == '[') {
    const size_t close = s.find("] ");
    if (close != std::string::npos) s = s.substr(close + 2);
  }
  return s;
}

}  // namespace

int open_regular_file(const std::string& path, const std::string& what) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    const int err = errno;
    CM_FAIL(what, ": cannot open '", path, "': ", std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    CM_FAIL(what, ": cannot stat '", path, "': ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    not_regular(path, what, st.st_mode);
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

void require_regular_file(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    CM_FAIL(what, ": '", path,
            "': ", err == ENOENT ? std::string("no such file") : std::string(std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) not_regular(path, what, st.st_mode);
}

std::vector<uint8_t> read_file_bytes(const std::string& path, const std::string& what) {
  const int fd = open_regular_file(path, what);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  CM_CHECK(::fstat(fd, &st) == 0, what, ": cannot stat '", path, "': ", std::strerror(errno));
  std::vector<uint8_t> out;
  out.reserve(size_t(st.st_size));
  uint8_t buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      CM_FAIL(what, ": error reading '", path, "': ", std::strerror(errno));
    }
    if (n == 0) break;
    out.insert(out.end(), buf, buf + n);
  }
  return out;
}

std::string read_file_text(const std::string& path, const std::string& what) {
  const std::vector<uint8_t> b = read_file_bytes(path, what);
  return std::string(b.begin(), b.end());
}

nlohmann::json parse_json(std::string_view text, const std::string& source, int max_depth) {
  // The nesting depth, counted outside strings, before nlohmann builds (and recursively copies)
  // anything.
  int depth = 0;
  bool in_string = false;
  size_t line = 1;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '\n') ++line;
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      CM_CHECK(++depth <= max_depth, source, ": invalid JSON: arrays and objects nested more than ",
               max_depth, " levels deep (line ", line, ")");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    CM_FAIL(source, ": invalid JSON: ", strip_prefix(e.what()));
  }
}

}  // namespace cm::nn
