// Fuzz target: the command line of `cm` (runner/cli.h). The input is split at NUL bytes into the
// arguments after "cm" (at most 64), parsed by parse_command_line, which runs nothing; the seeds of
// a sample or eval command are then expanded when there are few. A usage error (cm::Error) or one
// of CLI11's exceptions is an accepted outcome; anything else, a crash or a sanitizer report is a
// finding.
#include <CLI/CLI.hpp>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "runner/cli.h"
#include "tensor/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  constexpr size_t kMaxArgs = 64;
  std::vector<std::string> args = {"cm"};
  std::string cur;
  for (size_t i = 0; i < size && args.size() <= kMaxArgs; ++i) {
    if (data[i] == 0) {
      args.push_back(cur);
      cur.clear();
    } else {
      cur += char(data[i]);
    }
  }
  if (size > 0 && data[size - 1] != 0 && args.size() <= kMaxArgs) args.push_back(cur);
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  try {
    const cm::runner::Command c = cm::runner::parse_command_line(int(argv.size()), argv.data());
    if (const auto* s = std::get_if<cm::runner::SampleCommand>(&c)) {
      if (s->n <= 4096 && cm::runner::parse_seeds(s->seeds).size() != size_t(s->n))
        __builtin_trap();
    } else if (const auto* e = std::get_if<cm::runner::EvalCommand>(&c)) {
      if (e->n <= 4096 && !e->ref_only && cm::runner::parse_seeds(e->seeds).size() != size_t(e->n))
        __builtin_trap();
    }
  } catch (const cm::Error&) {
  } catch (const CLI::Error&) {
  }
  return 0;
}
