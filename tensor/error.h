// Errors and checks. Every failure in cm is a cm::Error whose message names the operation (or the
// file and field) and the offending values; CM_CHECK adds the source location.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace cm {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void throw_error(const char* file, int line, const std::string& msg);
}  // namespace detail

}  // namespace cm

// CM_CHECK(cond, "op: message ", value, ...): throws cm::Error with the message and file:line.
#define CM_CHECK(cond, ...)                                                                        \
  do {                                                                                             \
    if (!(cond)) ::cm::detail::throw_error(__FILE__, __LINE__, ::cm::detail::concat(__VA_ARGS__)); \
  } while (0)

#define CM_FAIL(...) \
  ::cm::detail::throw_error(__FILE__, __LINE__, ::cm::detail::concat(__VA_ARGS__))
